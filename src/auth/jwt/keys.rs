//! Verification keys: the HS* secret, a PEM public key, a JWKS file or a JWKS URL, and
//! which key verifies a given token header.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Header};

use super::remote::RemoteJwks;
use super::AuthError;
use crate::config::JwtConfig;

/// Shortest HS* secret accepted: RFC 7518 §3.2 requires a key at least as long as the
/// hash output (32 bytes for HS256).
pub const MIN_SECRET_BYTES: usize = 32;

/// A problem with `[auth.jwt]` found while building the verifier; names the config key.
#[derive(Debug, thiserror::Error)]
pub enum JwtSetupError {
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("auth.jwt.algorithms: unknown algorithm {0:?}")]
    UnknownAlgorithm(String),
    #[error("auth.jwt.secret_env: environment variable {0} is not set or not valid UTF-8")]
    SecretEnvMissing(String),
    #[error("{key}: cannot read {}: {source}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key}: the HS* secret must be at least {MIN_SECRET_BYTES} bytes (got {len})")]
    SecretTooShort { key: &'static str, len: usize },
    #[error("{key}: {} {reason}", path.display())]
    BadKeyFile {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
}

impl JwtSetupError {
    pub(super) fn invalid(key: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key,
            reason: reason.into(),
        }
    }
}

/// One asymmetric public key and what it may verify.
pub(super) struct PublicKey {
    kid: Option<String>,
    /// The JWK's `alg`, when it declares one.
    alg: Option<Algorithm>,
    family: AlgorithmFamily,
    /// EC keys only: ES256 needs P-256, ES384 needs P-384.
    curve: Option<EllipticCurve>,
    key: DecodingKey,
}

impl PublicKey {
    fn accepts(&self, alg: Algorithm) -> bool {
        let curve_ok = match (alg, &self.curve) {
            (Algorithm::ES256, Some(curve)) => *curve == EllipticCurve::P256,
            (Algorithm::ES384, Some(curve)) => *curve == EllipticCurve::P384,
            _ => true,
        };
        alg.family() == self.family && self.alg.is_none_or(|a| a == alg) && curve_ok
    }
}

/// Where verification keys come from; chosen once at setup.
pub(super) enum KeySet {
    /// HS* shared secret.
    Secret(DecodingKey),
    /// `public_key_file`: one key, the header's `kid` is ignored.
    Pem(PublicKey),
    /// `jwks_file`: keys selected by the header's `kid`.
    Jwks(Vec<PublicKey>),
    /// `jwks_url`: like `Jwks`, fetched and refreshed over HTTP(S).
    Remote(Arc<RemoteJwks>),
}

impl fmt::Debug for KeySet {
    /// Never prints key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Secret(_) => f.write_str("Secret([redacted])"),
            Self::Pem(key) => write!(f, "Pem({:?})", key.family),
            Self::Jwks(keys) => {
                let kids: Vec<_> = keys
                    .iter()
                    .map(|k| k.kid.as_deref().unwrap_or("-"))
                    .collect();
                write!(f, "Jwks({kids:?})")
            }
            Self::Remote(remote) => write!(f, "Remote({remote:?})"),
        }
    }
}

impl KeySet {
    /// Loads the key source that fits the (already validated) algorithm list.
    pub(super) fn load(cfg: &JwtConfig, algorithms: &[Algorithm]) -> Result<Self, JwtSetupError> {
        let hmac = algorithms
            .iter()
            .all(|a| a.family() == AlgorithmFamily::Hmac);
        let has_secret = cfg.secret_env.is_some() || cfg.secret_file.is_some();
        if hmac {
            if cfg.public_key_file.is_some() || cfg.jwks_file.is_some() || cfg.jwks_url.is_some() {
                return Err(JwtSetupError::invalid(
                    "auth.jwt.algorithms",
                    "HS* algorithms use secret_env/secret_file, not public_key_file/jwks_file/jwks_url",
                ));
            }
            let (key, secret) = read_secret(cfg)?;
            if secret.len() < MIN_SECRET_BYTES {
                return Err(JwtSetupError::SecretTooShort {
                    key,
                    len: secret.len(),
                });
            }
            return Ok(Self::Secret(DecodingKey::from_secret(&secret)));
        }
        if has_secret {
            return Err(JwtSetupError::invalid(
                "auth.jwt.algorithms",
                "a secret is configured but the algorithms are asymmetric (RS*/PS*/ES*/EdDSA)",
            ));
        }
        match (&cfg.public_key_file, &cfg.jwks_file, &cfg.jwks_url) {
            (Some(path), None, None) => load_pem(path, algorithms).map(Self::Pem),
            (None, Some(path), None) => load_jwks(path, algorithms).map(Self::Jwks),
            (None, None, Some(url)) => {
                RemoteJwks::new(url, cfg, algorithms).map(|r| Self::Remote(Arc::new(r)))
            }
            (None, None, None) => Err(JwtSetupError::invalid(
                "auth.jwt.public_key_file",
                "asymmetric algorithms need public_key_file, jwks_file or jwks_url",
            )),
            _ => Err(JwtSetupError::invalid(
                "auth.jwt.public_key_file",
                "set only one of public_key_file, jwks_file, jwks_url",
            )),
        }
    }

    /// The key that verifies a token with this header (whose `alg` is already pinned).
    pub(super) fn select(&self, header: &Header) -> Result<Cow<'_, DecodingKey>, AuthError> {
        let alg = header.alg;
        let key = match self {
            Self::Secret(key) if alg.family() == AlgorithmFamily::Hmac => {
                return Ok(Cow::Borrowed(key))
            }
            Self::Secret(_) => return Err(AuthError::KeyMismatch),
            Self::Pem(key) => key,
            Self::Jwks(keys) => by_kid(keys, header)?,
            Self::Remote(remote) => {
                let keys = remote.keys().ok_or(AuthError::KeysUnavailable)?;
                let key = by_kid(&keys, header)?;
                return if key.accepts(alg) {
                    Ok(Cow::Owned(key.key.clone()))
                } else {
                    Err(AuthError::KeyMismatch)
                };
            }
        };
        if key.accepts(alg) {
            Ok(Cow::Borrowed(&key.key))
        } else {
            Err(AuthError::KeyMismatch)
        }
    }

    /// The fetched key set, when the keys come from `jwks_url`.
    pub(super) fn remote(&self) -> Option<&Arc<RemoteJwks>> {
        match self {
            Self::Remote(remote) => Some(remote),
            _ => None,
        }
    }
}

/// The key of a JWK set named by the header's `kid` (or the only key when there is no
/// `kid` and the set has one).
fn by_kid<'k>(keys: &'k [PublicKey], header: &Header) -> Result<&'k PublicKey, AuthError> {
    match header.kid.as_deref() {
        Some(kid) => keys
            .iter()
            .find(|k| k.kid.as_deref() == Some(kid))
            .ok_or(AuthError::UnknownKeyId),
        None if keys.len() == 1 => Ok(&keys[0]),
        None => Err(AuthError::MissingKeyId),
    }
}

/// Reads the HS* secret from exactly one of `secret_env` / `secret_file`.
/// Returns the config key it came from (for error messages) and the bytes.
fn read_secret(cfg: &JwtConfig) -> Result<(&'static str, Vec<u8>), JwtSetupError> {
    match (&cfg.secret_env, &cfg.secret_file) {
        (Some(var), None) => std::env::var(var)
            .map(|s| ("auth.jwt.secret_env", s.into_bytes()))
            .map_err(|_| JwtSetupError::SecretEnvMissing(var.clone())),
        (None, Some(path)) => {
            let key = "auth.jwt.secret_file";
            let mut bytes = read_file(key, path)?;
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            Ok((key, bytes))
        }
        (Some(_), Some(_)) => Err(JwtSetupError::invalid(
            "auth.jwt.secret_env",
            "set either secret_env or secret_file, not both",
        )),
        (None, None) => Err(JwtSetupError::invalid(
            "auth.jwt.secret_env",
            "HS* algorithms need secret_env or secret_file",
        )),
    }
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, JwtSetupError> {
    std::fs::read(path).map_err(|source| JwtSetupError::Read {
        key,
        path: path.into(),
        source,
    })
}

fn family_name(family: AlgorithmFamily) -> &'static str {
    match family {
        AlgorithmFamily::Hmac => "HMAC",
        AlgorithmFamily::Rsa => "RSA",
        AlgorithmFamily::Ec => "EC",
        AlgorithmFamily::Ed => "Ed25519",
    }
}

/// Loads `public_key_file`; its key type must fit every configured algorithm.
fn load_pem(path: &Path, algorithms: &[Algorithm]) -> Result<PublicKey, JwtSetupError> {
    const KEY: &str = "auth.jwt.public_key_file";
    let bad = |reason: String| JwtSetupError::BadKeyFile {
        key: KEY,
        path: path.into(),
        reason,
    };
    let pem = read_file(KEY, path)?;
    if pem.windows(11).any(|w| w == b"PRIVATE KEY") {
        return Err(bad(
            "holds a private key; configure the public key only".into()
        ));
    }
    let family = algorithms[0].family();
    if algorithms.iter().any(|a| a.family() != family) {
        return Err(JwtSetupError::invalid(
            "auth.jwt.algorithms",
            "with public_key_file all algorithms must use one key type (RS*/PS*, ES* or EdDSA)",
        ));
    }
    let key = pem_decoding_key(family, &pem).map_err(|_| {
        let found = [
            AlgorithmFamily::Rsa,
            AlgorithmFamily::Ec,
            AlgorithmFamily::Ed,
        ]
        .into_iter()
        .find(|f| pem_decoding_key(*f, &pem).is_ok());
        match found {
            Some(f) => bad(format!(
                "holds an {} key but the algorithms need {}",
                family_name(f),
                family_name(family)
            )),
            None => bad("is not a PEM public key".into()),
        }
    })?;
    // Parses the key material now so a bad key fails at startup, not on every login.
    let jwk = Jwk::from_decoding_key(&key, None).map_err(|e| {
        bad(format!(
            "is not a valid {} public key: {e}",
            family_name(family)
        ))
    })?;
    let public = PublicKey {
        kid: None,
        alg: None,
        family,
        curve: ec_curve(&jwk),
        key,
    };
    if let Some(alg) = algorithms.iter().find(|a| !public.accepts(**a)) {
        return Err(bad(format!("key does not fit algorithm {alg:?}")));
    }
    Ok(public)
}

fn pem_decoding_key(
    family: AlgorithmFamily,
    pem: &[u8],
) -> jsonwebtoken::errors::Result<DecodingKey> {
    match family {
        AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem),
        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem),
        AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem),
        AlgorithmFamily::Hmac => Err(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat.into()),
    }
}

fn ec_curve(jwk: &Jwk) -> Option<EllipticCurve> {
    match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => Some(p.curve.clone()),
        _ => None,
    }
}

/// Loads `jwks_file` (see [`parse_jwks`]).
fn load_jwks(path: &Path, algorithms: &[Algorithm]) -> Result<Vec<PublicKey>, JwtSetupError> {
    const KEY: &str = "auth.jwt.jwks_file";
    let text = read_file(KEY, path)?;
    parse_jwks(&text, algorithms).map_err(|reason| JwtSetupError::BadKeyFile {
        key: KEY,
        path: path.into(),
        reason,
    })
}

/// A JWK set document as verification keys. Keys that can never verify a signature
/// here are skipped: `use: enc`, symmetric (`oct`) keys, unknown key types, non-signing
/// `alg`s. Fails on duplicate `kid`s and when no key fits `algorithms`.
pub(super) fn parse_jwks(text: &[u8], algorithms: &[Algorithm]) -> Result<Vec<PublicKey>, String> {
    let set: JwkSet = serde_json::from_slice(text).map_err(|e| format!("is not a JWK set: {e}"))?;
    let mut keys: Vec<PublicKey> = Vec::new();
    for jwk in &set.keys {
        let Some(public) = jwk_public_key(jwk)? else {
            continue;
        };
        if public.kid.is_some() && keys.iter().any(|k| k.kid == public.kid) {
            let kid = public.kid.unwrap_or_default();
            return Err(format!("has two keys with kid {kid:?}"));
        }
        keys.push(public);
    }
    if !keys
        .iter()
        .any(|k| algorithms.iter().any(|a| k.accepts(*a)))
    {
        return Err("has no signing key for any of auth.jwt.algorithms".into());
    }
    Ok(keys)
}

/// The `kid`s of a key set, for logs.
pub(super) fn kids(keys: &[PublicKey]) -> Vec<&str> {
    keys.iter()
        .map(|k| k.kid.as_deref().unwrap_or("-"))
        .collect()
}

/// One JWK as a verification key; `Ok(None)` when it is not a usable signing key.
fn jwk_public_key(jwk: &Jwk) -> Result<Option<PublicKey>, String> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return Ok(None);
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(ka) => match ka.to_string().parse::<Algorithm>() {
            Ok(alg) => Some(alg),
            Err(_) => return Ok(None),
        },
    };
    let kid = jwk.common.key_id.clone();
    let name = kid.as_deref().unwrap_or("(no kid)");
    let (family, curve) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (AlgorithmFamily::Rsa, None),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 | EllipticCurve::P384 => {
                (AlgorithmFamily::Ec, Some(p.curve.clone()))
            }
            _ => return Ok(None),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            (AlgorithmFamily::Ed, None)
        }
        _ => return Ok(None),
    };
    if alg.is_some_and(|a| a.family() != family) {
        return Err(format!("key {name}: alg does not match its key type"));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {name}: {e}"))?;
    // Checks the key material (EC point size must match the curve, RSA must parse).
    let parsed = Jwk::from_decoding_key(&key, None).map_err(|e| format!("key {name}: {e}"))?;
    if ec_curve(&parsed) != curve {
        return Err(format!("key {name}: EC point does not match its curve"));
    }
    Ok(Some(PublicKey {
        kid,
        alg,
        family,
        curve,
        key,
    }))
}
