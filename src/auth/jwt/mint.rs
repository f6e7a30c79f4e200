//! Token minting for `rlsgate token` and tests: signs a claims object shaped the way
//! the verifier reads it (tenant at a claim name or JSON pointer).

use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use serde_json::{Map, Value};

/// What to put in a minted token and how to sign it.
#[derive(Debug, Clone)]
pub struct MintOptions {
    pub alg: Algorithm,
    pub key: MintKey,
    /// Tenant value (string or integer); `None` leaves the tenant claim out.
    pub tenant: Option<Value>,
    /// Claim name or JSON pointer (`/app_metadata/tenant_id` makes nested objects).
    pub tenant_claim: String,
    pub sub: Option<String>,
    /// Written to the `role` claim.
    pub role: Option<String>,
    /// `exp` = now + ttl.
    pub ttl: Duration,
    /// Added last, so they may override any claim above (names or JSON pointers).
    pub extra_claims: Vec<(String, Value)>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub kid: Option<String>,
}

/// Signing key for [`mint`].
#[derive(Clone)]
pub enum MintKey {
    /// HS* shared secret.
    Secret(Vec<u8>),
    /// PKCS#8 (or PKCS#1 for RSA) private key in PEM; type must fit the algorithm.
    PemPrivateKey(Vec<u8>),
}

impl std::fmt::Debug for MintKey {
    /// Never prints key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Secret(_) => f.write_str("Secret([redacted])"),
            Self::PemPrivateKey(_) => f.write_str("PemPrivateKey([redacted])"),
        }
    }
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("key does not fit algorithm {alg:?}: {reason}")]
    Key { alg: Algorithm, reason: String },
    #[error("claim path {0:?} is empty or runs through a non-object claim")]
    ClaimPath(String),
    #[error("ttl is too large")]
    Ttl,
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Signs a token: `iat` = now, `exp` = now + ttl, plus the claims in `opts`.
pub fn mint(opts: &MintOptions) -> Result<String, MintError> {
    let key = encoding_key(opts.alg, &opts.key)?;
    let now = jsonwebtoken::get_current_timestamp();
    let exp = now.checked_add(opts.ttl.as_secs()).ok_or(MintError::Ttl)?;
    let mut claims = Map::new();
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), exp.into());
    let optional = [
        ("sub", &opts.sub),
        ("role", &opts.role),
        ("iss", &opts.issuer),
        ("aud", &opts.audience),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            claims.insert(name.into(), Value::String(value.clone()));
        }
    }
    if let Some(tenant) = &opts.tenant {
        set_claim(&mut claims, &opts.tenant_claim, tenant.clone())?;
    }
    for (name, value) in &opts.extra_claims {
        set_claim(&mut claims, name, value.clone())?;
    }
    let mut header = Header::new(opts.alg);
    header.kid = opts.kid.clone();
    jsonwebtoken::encode(&header, &Value::Object(claims), &key)
        .map_err(|e| MintError::Sign(e.to_string()))
}

fn encoding_key(alg: Algorithm, key: &MintKey) -> Result<EncodingKey, MintError> {
    let err = |reason: &str| MintError::Key {
        alg,
        reason: reason.into(),
    };
    match (alg.family(), key) {
        (AlgorithmFamily::Hmac, MintKey::Secret(secret)) => Ok(EncodingKey::from_secret(secret)),
        (AlgorithmFamily::Hmac, MintKey::PemPrivateKey(_)) => Err(err("HS* needs a secret")),
        (_, MintKey::Secret(_)) => Err(err("asymmetric algorithms need a PEM private key")),
        (AlgorithmFamily::Rsa, MintKey::PemPrivateKey(pem)) => {
            EncodingKey::from_rsa_pem(pem).map_err(|_| err("not an RSA private key in PEM format"))
        }
        (AlgorithmFamily::Ec, MintKey::PemPrivateKey(pem)) => EncodingKey::from_ec_pem(pem)
            .map_err(|_| err("not a PKCS#8 EC private key in PEM format")),
        (AlgorithmFamily::Ed, MintKey::PemPrivateKey(pem)) => EncodingKey::from_ed_pem(pem)
            .map_err(|_| err("not a PKCS#8 Ed25519 private key in PEM format")),
    }
}

/// Sets a claim by name, or by JSON pointer creating the intermediate objects.
fn set_claim(claims: &mut Map<String, Value>, path: &str, value: Value) -> Result<(), MintError> {
    let conflict = || MintError::ClaimPath(path.into());
    let Some(pointer) = path.strip_prefix('/') else {
        if path.is_empty() {
            return Err(conflict());
        }
        claims.insert(path.into(), value);
        return Ok(());
    };
    let tokens: Vec<String> = pointer
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    let Some((last, parents)) = tokens.split_last() else {
        return Err(conflict());
    };
    let mut object = claims;
    for token in parents {
        let entry = object
            .entry(token.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        object = entry.as_object_mut().ok_or_else(conflict)?;
    }
    object.insert(last.clone(), value);
    Ok(())
}
