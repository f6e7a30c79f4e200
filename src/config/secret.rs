//! Reading secrets (JWT secret, upstream password) from environment variables or files, on demand.

use std::path::Path;

use super::{ConfigError, JwtConfig};

impl JwtConfig {
    /// The HS* secret from `secret_env` or `secret_file`; `None` when neither is set.
    ///
    /// A missing or empty variable or file is an error naming the key.
    pub fn secret(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        self.secret_with(process_env)
    }

    /// [`JwtConfig::secret`] with environment variables looked up through `env`.
    pub fn secret_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Vec<u8>>, ConfigError> {
        if let Some(var) = &self.secret_env {
            return from_env("auth.jwt.secret_env", var, &env).map(|s| Some(s.into_bytes()));
        }
        if let Some(path) = &self.secret_file {
            return from_file("auth.jwt.secret_file", path).map(Some);
        }
        Ok(None)
    }
}

/// Looks a variable up in the process environment (`None` if unset or not UTF-8).
pub(super) fn process_env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

/// The non-empty value of environment variable `var`, named by config key `key`.
pub(super) fn from_env(
    key: &str,
    var: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    match env(var) {
        Some(value) if !value.is_empty() => Ok(value),
        Some(_) => Err(secret_error(
            key,
            format!("environment variable `{var}` is empty"),
        )),
        None => Err(secret_error(
            key,
            format!("environment variable `{var}` is not set (or not valid UTF-8)"),
        )),
    }
}

/// The contents of `path` without trailing line endings; empty is an error.
pub(super) fn from_file(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let mut bytes = std::fs::read(path)
        .map_err(|e| secret_error(key, format!("cannot read `{}`: {e}", path.display())))?;
    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(secret_error(key, format!("`{}` is empty", path.display())));
    }
    Ok(bytes)
}

fn secret_error(key: &str, reason: String) -> ConfigError {
    ConfigError::Secret {
        key: key.into(),
        reason,
    }
}
