//! JWT verification: pinned algorithms, key selection, time/issuer/audience checks, and
//! the tenant, role and subject taken from the claims into an [`Identity`].
//!
//! Checks run cheapest first: size, shape, the header's `alg` against the pinned list,
//! key selection, signature, then claims. The token itself never appears in an error,
//! a `Debug` output or a log line.

mod identity;
mod keys;
mod mint;
mod remote;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_keys;

pub use identity::{Identity, TenantId, TenantIdError, MAX_TENANT_BYTES};
pub use keys::JwtSetupError;
pub use mint::{mint, MintError, MintKey, MintOptions};

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, Header, Validation};
use serde_json::Value;

use crate::config::JwtConfig;
use identity::lookup_claim;
use keys::KeySet;

/// Longest role name accepted, in bytes (PostgreSQL's `NAMEDATALEN - 1`).
pub const MAX_ROLE_BYTES: usize = 63;
/// Largest clock-skew allowance `from_config` accepts.
const MAX_LEEWAY_SECS: u64 = 3600;

/// Why a token was refused. `Display` is the reason the client is told; it never
/// contains the token. [`AuthError::kind`] is a stable label for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no password supplied")]
    Empty,
    #[error("token too large")]
    TooLarge,
    #[error("malformed token")]
    Malformed,
    #[error("token uses alg none")]
    AlgNone,
    #[error("algorithm {0:?} not allowed")]
    AlgorithmNotAllowed(Algorithm),
    #[error("token algorithm not supported")]
    UnsupportedAlgorithm,
    #[error("token has unsupported critical header parameters")]
    UnsupportedCrit,
    #[error("unknown key id")]
    UnknownKeyId,
    #[error("token has no key id")]
    MissingKeyId,
    #[error("token algorithm does not match the key")]
    KeyMismatch,
    #[error("signature invalid")]
    SignatureInvalid,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("wrong audience (token has aud, none is configured)")]
    UnexpectedAudience,
    #[error("missing claim {0}")]
    MissingClaim(String),
    #[error("claim {claim} must be {expected}")]
    InvalidClaim {
        claim: String,
        expected: &'static str,
    },
    #[error("claim {claim} {reason}")]
    InvalidTenant {
        claim: String,
        reason: TenantIdError,
    },
    #[error("claim {0} is not a valid role name")]
    InvalidRole(String),
    #[error("user does not match token subject")]
    UserMismatch,
    #[error("signing keys unavailable (auth.jwt.jwks_url could not be fetched)")]
    KeysUnavailable,
    #[error("token verification failed")]
    Internal,
}

impl AuthError {
    /// Short stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Empty => "no_password",
            Self::TooLarge => "too_large",
            Self::Malformed => "malformed",
            Self::AlgNone => "alg_none",
            Self::AlgorithmNotAllowed(_) => "alg_not_allowed",
            Self::UnsupportedAlgorithm => "alg_unsupported",
            Self::UnsupportedCrit => "crit",
            Self::UnknownKeyId => "unknown_kid",
            Self::MissingKeyId => "missing_kid",
            Self::KeyMismatch => "key_mismatch",
            Self::SignatureInvalid => "signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "issuer",
            Self::WrongAudience | Self::UnexpectedAudience => "audience",
            Self::MissingClaim(_) => "missing_claim",
            Self::InvalidClaim { .. } => "invalid_claim",
            Self::InvalidTenant { .. } => "tenant",
            Self::InvalidRole(_) => "role",
            Self::UserMismatch => "user_mismatch",
            Self::KeysUnavailable => "keys_unavailable",
            Self::Internal => "internal",
        }
    }

    /// SQLSTATE for the `ErrorResponse`: `28P01` (invalid_password) for every refusal,
    /// `XX000` for an internal failure.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Self::Internal => "XX000",
            _ => "28P01",
        }
    }
}

/// Verifies tokens against the configured keys and rules. Cheap to share (`Arc`).
pub struct JwtVerifier {
    /// The pinned list; a token's header `alg` must be one of these.
    algorithms: Vec<Algorithm>,
    /// One `Validation` per pinned algorithm: jsonwebtoken requires all algorithms of a
    /// `Validation` to share the key's family, and a JWKS may mix RSA and EC keys.
    validations: Vec<(Algorithm, Validation)>,
    keys: KeySet,
    issuer: Option<String>,
    audience_configured: bool,
    tenant_claim: String,
    role_claim: Option<String>,
    match_user: bool,
    max_token_bytes: usize,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.algorithms)
            .field("keys", &self.keys)
            .field("issuer", &self.issuer)
            .field("tenant_claim", &self.tenant_claim)
            .field("role_claim", &self.role_claim)
            .field("match_user", &self.match_user)
            .field("max_token_bytes", &self.max_token_bytes)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Builds a verifier from `[auth.jwt]`, loading the secret, PEM public key or JWKS.
    pub fn from_config(cfg: &JwtConfig) -> Result<Self, JwtSetupError> {
        let algorithms = parse_algorithms(&cfg.algorithms)?;
        check_claim_path("auth.jwt.tenant_claim", &cfg.tenant_claim)?;
        if let Some(role_claim) = &cfg.role_claim {
            check_claim_path("auth.jwt.role_claim", role_claim)?;
        }
        if cfg.max_token_bytes == 0 {
            return Err(JwtSetupError::invalid(
                "auth.jwt.max_token_bytes",
                "must be at least 1",
            ));
        }
        let leeway = cfg.leeway.as_secs();
        if leeway > MAX_LEEWAY_SECS {
            return Err(JwtSetupError::invalid(
                "auth.jwt.leeway",
                "must be at most 1h",
            ));
        }
        if cfg.issuer.as_deref() == Some("") {
            return Err(JwtSetupError::invalid(
                "auth.jwt.issuer",
                "must not be empty",
            ));
        }
        if cfg.audience.iter().any(String::is_empty) {
            return Err(JwtSetupError::invalid(
                "auth.jwt.audience",
                "entries must not be empty",
            ));
        }
        let keys = KeySet::load(cfg, &algorithms)?;
        let validations = algorithms
            .iter()
            .map(|&alg| (alg, build_validation(cfg, alg, leeway)))
            .collect();
        Ok(Self {
            algorithms,
            validations,
            keys,
            issuer: cfg.issuer.clone(),
            audience_configured: !cfg.audience.is_empty(),
            tenant_claim: cfg.tenant_claim.clone(),
            role_claim: cfg.role_claim.clone(),
            match_user: cfg.match_user,
            max_token_bytes: cfg.max_token_bytes,
        })
    }

    /// The pinned algorithm list.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// [`verify`](Self::verify), fetching the JWK set first when it comes from
    /// `jwks_url` and is missing or stale, and once more when the token names a `kid`
    /// it lacks (a rotated key; rate-limited by `jwks_min_interval`).
    pub async fn verify_fetching(
        &self,
        token: &str,
        startup_user: Option<&str>,
    ) -> Result<Identity, AuthError> {
        let Some(remote) = self.keys.remote() else {
            return self.verify(token, startup_user);
        };
        remote.prepare().await;
        match self.verify(token, startup_user) {
            Err(AuthError::UnknownKeyId | AuthError::KeysUnavailable)
                if remote.fetch(remote::Need::UnknownKid).await =>
            {
                self.verify(token, startup_user)
            }
            other => other,
        }
    }

    /// Verifies `token` (the client's password) and returns who it identifies.
    /// `startup_user` is the `user` from the startup packet (checked when `match_user`).
    pub fn verify(&self, token: &str, startup_user: Option<&str>) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Empty);
        }
        // Before any parsing or crypto: bounds the work an unauthenticated client can cause.
        if token.len() > self.max_token_bytes {
            return Err(AuthError::TooLarge);
        }
        let header = self.parse_header(token)?;
        let key = self.keys.select(&header)?;
        let validation = self
            .validations
            .iter()
            .find(|(alg, _)| *alg == header.alg)
            .map(|(_, v)| v)
            .ok_or(AuthError::AlgorithmNotAllowed(header.alg))?;
        let data = jsonwebtoken::decode::<Value>(token, &key, validation)
            .map_err(|e| self.map_decode_error(e.kind()))?;
        self.identity_from_claims(data.claims, startup_user)
    }

    /// Decodes the header ourselves (before jsonwebtoken does) so that `alg: none` and
    /// algorithms outside the pinned list get a clear reason instead of a JSON error.
    fn parse_header(&self, token: &str) -> Result<Header, AuthError> {
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| AuthError::Malformed)?;
        let raw: Value = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
        let alg = raw
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(AuthError::Malformed)?;
        if alg.eq_ignore_ascii_case("none") {
            return Err(AuthError::AlgNone);
        }
        // The alg text is attacker-chosen: only known names are echoed back.
        let alg = Algorithm::from_str(alg).map_err(|_| AuthError::UnsupportedAlgorithm)?;
        if !self.algorithms.contains(&alg) {
            return Err(AuthError::AlgorithmNotAllowed(alg));
        }
        let header: Header = serde_json::from_value(raw).map_err(|_| AuthError::Malformed)?;
        // RFC 7515 §4.1.11: extensions listed in `crit` must be understood; we know none.
        if header.crit.is_some() {
            return Err(AuthError::UnsupportedCrit);
        }
        Ok(header)
    }

    fn map_decode_error(&self, kind: &ErrorKind) -> AuthError {
        match kind {
            ErrorKind::InvalidToken
            | ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_) => AuthError::Malformed,
            ErrorKind::InvalidSignature => AuthError::SignatureInvalid,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey => AuthError::KeyMismatch,
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
            ErrorKind::InvalidAudience if self.audience_configured => AuthError::WrongAudience,
            ErrorKind::InvalidAudience => AuthError::UnexpectedAudience,
            ErrorKind::InvalidSubject => AuthError::UserMismatch,
            ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim.clone()),
            ErrorKind::InvalidClaimFormat(claim) => AuthError::InvalidClaim {
                claim: claim.clone(),
                expected: "a NumericDate",
            },
            _ => AuthError::Internal,
        }
    }

    /// Takes subject, tenant, role and jti from verified claims and applies `match_user`.
    fn identity_from_claims(
        &self,
        claims: Value,
        startup_user: Option<&str>,
    ) -> Result<Identity, AuthError> {
        if !claims.is_object() {
            return Err(AuthError::Malformed);
        }
        let exp = claims
            .get("exp")
            .and_then(numeric_date)
            .ok_or_else(|| AuthError::MissingClaim("exp".into()))?;
        // jsonwebtoken accepts an `iss` array if any entry matches; RFC 7519 says a string.
        if self.issuer.is_some() && !claims.get("iss").is_some_and(Value::is_string) {
            return Err(AuthError::WrongIssuer);
        }
        let sub = optional_string(&claims, "sub")?;
        let jti = optional_string(&claims, "jti")?;
        let tenant = self.tenant_from(&claims)?;
        let role = self.role_from(&claims)?;
        if self.match_user && (sub.is_none() || startup_user != sub.as_deref()) {
            return Err(AuthError::UserMismatch);
        }
        Ok(Identity {
            sub,
            tenant,
            role,
            claims,
            exp,
            jti,
        })
    }

    fn tenant_from(&self, claims: &Value) -> Result<TenantId, AuthError> {
        let name = &self.tenant_claim;
        let value = lookup_claim(claims, name)
            .filter(|v| !v.is_null())
            .ok_or_else(|| AuthError::MissingClaim(name.clone()))?;
        TenantId::from_claim(value).map_err(|reason| AuthError::InvalidTenant {
            claim: name.clone(),
            reason,
        })
    }

    fn role_from(&self, claims: &Value) -> Result<Option<String>, AuthError> {
        let Some(name) = &self.role_claim else {
            return Ok(None);
        };
        match lookup_claim(claims, name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(role)) if is_valid_role(role) => Ok(Some(role.clone())),
            Some(_) => Err(AuthError::InvalidRole(name.clone())),
        }
    }
}

/// Parses the configured algorithm names; `none` and unknown names are setup errors, and
/// HS* cannot be mixed with asymmetric algorithms (the classic key-confusion setup).
fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, JwtSetupError> {
    let mut algorithms = Vec::with_capacity(names.len());
    for name in names {
        if name.eq_ignore_ascii_case("none") {
            return Err(JwtSetupError::invalid(
                "auth.jwt.algorithms",
                "\"none\" is never accepted",
            ));
        }
        let alg =
            Algorithm::from_str(name).map_err(|_| JwtSetupError::UnknownAlgorithm(name.clone()))?;
        if !algorithms.contains(&alg) {
            algorithms.push(alg);
        }
    }
    if algorithms.is_empty() {
        return Err(JwtSetupError::invalid(
            "auth.jwt.algorithms",
            "at least one is required",
        ));
    }
    let hmac = |a: &Algorithm| a.family() == AlgorithmFamily::Hmac;
    if algorithms.iter().any(hmac) && !algorithms.iter().all(hmac) {
        return Err(JwtSetupError::invalid(
            "auth.jwt.algorithms",
            "HS* algorithms cannot be mixed with RS*/PS*/ES*/EdDSA",
        ));
    }
    Ok(algorithms)
}

fn check_claim_path(key: &'static str, path: &str) -> Result<(), JwtSetupError> {
    if path.is_empty() || path == "/" {
        return Err(JwtSetupError::invalid(
            key,
            "must be a claim name or a JSON pointer",
        ));
    }
    Ok(())
}

fn build_validation(cfg: &JwtConfig, alg: Algorithm, leeway: u64) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = leeway;
    v.validate_exp = true;
    v.validate_nbf = true;
    // Stays on even with no audience configured: a token that names an audience is then
    // refused (RFC 7519 §4.1.3), so tokens minted for another service are not accepted.
    v.validate_aud = true;
    let mut required = vec!["exp"];
    if let Some(issuer) = &cfg.issuer {
        v.set_issuer(&[issuer]);
        required.push("iss");
    }
    if !cfg.audience.is_empty() {
        v.set_audience(&cfg.audience);
        required.push("aud");
    }
    v.set_required_spec_claims(&required);
    v
}

/// A NumericDate as jsonwebtoken reads it: a non-negative integer, or a float rounded.
fn numeric_date(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f.round() as u64)
    })
}

fn optional_string(claims: &Value, name: &str) -> Result<Option<String>, AuthError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(AuthError::InvalidClaim {
            claim: name.into(),
            expected: "a string",
        }),
    }
}

fn is_valid_role(role: &str) -> bool {
    !role.is_empty() && role.len() <= MAX_ROLE_BYTES && !role.contains('\0')
}
