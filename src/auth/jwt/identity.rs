//! The verified identity: [`TenantId`] and [`Identity`] (claims and lookups).

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

/// Longest tenant id accepted, in bytes.
pub const MAX_TENANT_BYTES: usize = 256;

/// The tenant a session is scoped to, taken from the token's tenant claim.
///
/// Never empty, at most [`MAX_TENANT_BYTES`] bytes, no NUL byte (it ends up in a
/// PostgreSQL setting, which cannot hold NUL).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

/// Why a value is not a valid [`TenantId`]; displayed after "claim <name> ".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TenantIdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most 256 bytes")]
    TooLong,
    #[error("must not contain a NUL byte")]
    Nul,
    #[error("must be a string or integer")]
    WrongType,
}

impl TenantId {
    /// Validates a tenant id given as text.
    pub fn new(value: impl Into<String>) -> Result<Self, TenantIdError> {
        let value = value.into();
        if value.is_empty() {
            Err(TenantIdError::Empty)
        } else if value.len() > MAX_TENANT_BYTES {
            Err(TenantIdError::TooLong)
        } else if value.contains('\0') {
            Err(TenantIdError::Nul)
        } else {
            Ok(Self(value))
        }
    }

    /// Builds a tenant id from a claim value: a string, or an integer (as its decimal text).
    pub fn from_claim(value: &Value) -> Result<Self, TenantIdError> {
        match value {
            Value::String(s) => Self::new(s.as_str()),
            Value::Number(n) if n.is_i64() || n.is_u64() => Self::new(n.to_string()),
            _ => Err(TenantIdError::WrongType),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TenantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for TenantId {
    type Err = TenantIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// Who the client is, as established by a verified token.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// `sub`, when the token has one.
    pub sub: Option<String>,
    /// From the configured tenant claim.
    pub tenant: TenantId,
    /// From the configured role claim, when configured and present.
    pub role: Option<String>,
    /// The whole claims object (for claim → setting mappings).
    pub claims: Value,
    /// `exp`, seconds since the Unix epoch.
    pub exp: u64,
    /// `jti`, when the token has one.
    pub jti: Option<String>,
}

impl Identity {
    /// A claim by name (`"sub"`) or by JSON pointer (`"/app_metadata/tenant_id"`).
    pub fn claim(&self, name_or_pointer: &str) -> Option<&Value> {
        lookup_claim(&self.claims, name_or_pointer)
    }
}

/// A claim by name, or by JSON pointer when it starts with `/`.
pub(super) fn lookup_claim<'a>(claims: &'a Value, name_or_pointer: &str) -> Option<&'a Value> {
    if name_or_pointer.starts_with('/') {
        claims.pointer(name_or_pointer)
    } else {
        claims.get(name_or_pointer)
    }
}
