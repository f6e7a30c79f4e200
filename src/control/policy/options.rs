//! Policy-file options about what the database trusts: the tenant context the generated
//! policies read (sealed or the bare setting), where the seal secret comes from, and
//! which cross-session functions `apply` leaves usable by the shared app role.

use std::path::PathBuf;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// `[tenant] context`: what the generated policies and column defaults compare with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantContext {
    /// `(SELECT rlsgate.tenant())`: the tenant only when rlsgate's seal verifies (needs
    /// pgcrypto; `apply` installs `policies/sealed.sql`). The default.
    #[default]
    Sealed,
    /// `current_setting('<setting>')`: trusts the proxy's statement guard alone.
    Setting,
}

/// Where the seal secret is read from: never the command line, never a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealSecret {
    /// An environment variable holding it.
    Env(String),
    /// A file holding it (a trailing newline is stripped).
    File(PathBuf),
}

/// The seal secret could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("seal secret ({source_name}): {reason}")]
pub struct SecretError {
    pub source_name: String,
    pub reason: String,
}

impl SealSecret {
    /// `env RLSGATE_SEAL_SECRET` / `file /run/secrets/seal`: where it comes from.
    pub fn describe(&self) -> String {
        match self {
            SealSecret::Env(var) => format!("env {var}"),
            SealSecret::File(path) => format!("file {}", path.display()),
        }
    }

    /// Reads the secret (at least 16 bytes, as the proxy requires).
    pub fn read(&self) -> Result<String, SecretError> {
        let fail = |reason: String| SecretError {
            source_name: self.describe(),
            reason,
        };
        let secret = match self {
            SealSecret::Env(var) => {
                std::env::var(var).map_err(|_| fail("not set (or not UTF-8)".into()))?
            }
            SealSecret::File(path) => std::fs::read_to_string(path)
                .map_err(|e| fail(e.to_string()))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        };
        if secret.len() < 16 {
            return Err(fail("shorter than 16 bytes".into()));
        }
        Ok(secret)
    }
}

/// A check value of the secret that reveals nothing about it: HMAC-SHA256(secret, a
/// fixed label), hex. `apply` records it when it stores the secret, so `plan` and
/// `verify` can tell whether the stored secret is the configured one.
pub fn fingerprint(secret: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(b"rlsgate seal secret fingerprint v1");
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Revoke a group of functions from the shared app role, or leave them usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    #[default]
    Revoke,
    Allow,
}

/// `[hardening]`: which cross-session objects `apply` revokes (see
/// [`super::hardening`]). Session views and statement statistics are always revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hardening {
    /// Large-object functions: all tenants share one owner role, so any tenant can read,
    /// change or delete any tenant's large objects. `allow` keeps them.
    pub large_objects: Keep,
    /// `pg_cancel_backend` / `pg_terminate_backend`: same role, so any tenant can signal
    /// any tenant's backend. `allow` keeps them (the proxy then scopes only the calls it
    /// can see; calls hidden in views, operators or dynamic SQL are not scoped).
    pub backend_signals: Keep,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_is_stable_and_depends_on_the_secret() {
        let a = fingerprint("a-seal-secret-of-sufficient-length");
        assert_eq!(a.len(), 64);
        assert_eq!(a, fingerprint("a-seal-secret-of-sufficient-length"));
        assert_ne!(a, fingerprint("another-seal-secret-of-enough-length"));
        assert!(!a.contains("seal"));
    }

    #[test]
    fn short_or_missing_secrets_are_refused_with_their_source() {
        let e = SealSecret::Env("RLSGATE_TEST_SURELY_UNSET_VAR".into())
            .read()
            .unwrap_err();
        assert_eq!(e.source_name, "env RLSGATE_TEST_SURELY_UNSET_VAR");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seal");
        std::fs::write(&path, "short\n").unwrap();
        let e = SealSecret::File(path.clone()).read().unwrap_err();
        assert!(e.reason.contains("16 bytes"), "{e}");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        assert_eq!(
            SealSecret::File(path).read().unwrap(),
            "0123456789abcdef0123"
        );
    }
}
