//! `Config::validate`: the checks serde cannot express, each failing with the key's name.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{upstream, Config, ConfigError, JwtConfig, TlsConfig, TlsMode};

/// HMAC algorithms: verified with a shared secret.
const HMAC_ALGORITHMS: [&str; 3] = ["HS256", "HS384", "HS512"];
/// Public-key algorithms: verified with a public key or a JWKS.
const PUBLIC_KEY_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];
/// Largest accepted `auth.jwt.leeway`.
const MAX_LEEWAY: Duration = Duration::from_secs(3600);

impl Config {
    /// Checks the values serde accepted; the first problem found is returned, naming its key.
    ///
    /// Reads no files and no environment variables: secrets are checked when they are
    /// read ([`JwtConfig::secret`], [`super::UpstreamConfig::target`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_listen()?;
        validate_tls(&self.tls)?;
        validate_jwt(&self.auth.jwt)?;
        self.validate_upstream()?;
        self.validate_pool()?;
        self.validate_tenant()
    }

    fn validate_listen(&self) -> Result<(), ConfigError> {
        if self.listen.max_clients < 1 {
            return Err(ConfigError::invalid(
                "listen.max_clients",
                "must be at least 1",
            ));
        }
        non_zero("listen.startup_timeout", self.listen.startup_timeout)
    }

    fn validate_upstream(&self) -> Result<(), ConfigError> {
        let up = &self.upstream;
        upstream::parse_url(&up.url)?;
        if up.password_env.is_some() && up.password_file.is_some() {
            return Err(ConfigError::invalid(
                "upstream.password_file",
                "set only one of `upstream.password_env` and `upstream.password_file`",
            ));
        }
        non_empty_opt("upstream.password_env", up.password_env.as_deref())?;
        non_zero("upstream.connect_timeout", up.connect_timeout)
    }

    fn validate_pool(&self) -> Result<(), ConfigError> {
        let pool = &self.pool;
        if pool.size < 1 {
            return Err(ConfigError::invalid("pool.size", "must be at least 1"));
        }
        if pool.min_idle > pool.size {
            return Err(ConfigError::invalid(
                "pool.min_idle",
                format!("must not exceed `pool.size` ({})", pool.size),
            ));
        }
        if pool.reset_query.trim().is_empty() {
            return Err(ConfigError::invalid(
                "pool.reset_query",
                "must not be empty (e.g. \"DISCARD ALL\")",
            ));
        }
        if pool.max_pinned.is_some_and(|m| m > pool.size) {
            return Err(ConfigError::invalid(
                "pool.max_pinned",
                format!("must not exceed `pool.size` ({})", pool.size),
            ));
        }
        non_zero("pool.acquire_timeout", pool.acquire_timeout)
    }

    fn validate_tenant(&self) -> Result<(), ConfigError> {
        let tenant = &self.tenant;
        check_setting_name("tenant.setting", &tenant.setting)?;
        // PostgreSQL folds setting names to lower case: `App.X` and `app.x` are one setting.
        let mut seen = BTreeMap::from([(
            tenant.setting.to_ascii_lowercase(),
            "tenant.setting".to_string(),
        )]);
        for (name, claim) in &tenant.claims {
            let key = format!("tenant.claims.\"{name}\"");
            check_setting_name(&key, name)?;
            if claim.is_empty() {
                return Err(ConfigError::invalid(
                    key,
                    "claim must not be empty (a claim name, a JSON pointer such as /a/b, or \"*\")",
                ));
            }
            if let Some(other) = seen.insert(name.to_ascii_lowercase(), key.clone()) {
                return Err(ConfigError::invalid(
                    key,
                    format!("same setting as `{other}` (setting names are case-insensitive)"),
                ));
            }
        }
        Ok(())
    }
}

fn validate_tls(tls: &TlsConfig) -> Result<(), ConfigError> {
    match (&tls.cert_file, &tls.key_file) {
        (Some(_), None) => Err(ConfigError::invalid(
            "tls.key_file",
            "required when `tls.cert_file` is set",
        )),
        (None, Some(_)) => Err(ConfigError::invalid(
            "tls.cert_file",
            "required when `tls.key_file` is set",
        )),
        (None, None) if tls.mode == TlsMode::Require => Err(ConfigError::invalid(
            "tls.cert_file",
            "`tls.mode = \"require\"` needs `tls.cert_file` and `tls.key_file`",
        )),
        _ => Ok(()),
    }
}

fn validate_jwt(jwt: &JwtConfig) -> Result<(), ConfigError> {
    const KEY: &str = "auth.jwt.algorithms";
    if jwt.algorithms.is_empty() {
        return Err(ConfigError::invalid(
            KEY,
            "must list at least one algorithm, e.g. [\"HS256\"]",
        ));
    }
    for alg in &jwt.algorithms {
        check_algorithm(alg)?;
    }
    let hmac = jwt
        .algorithms
        .iter()
        .find(|a| HMAC_ALGORITHMS.contains(&a.as_str()));
    let public = jwt
        .algorithms
        .iter()
        .find(|a| PUBLIC_KEY_ALGORITHMS.contains(&a.as_str()));
    match (hmac, public) {
        (Some(h), Some(p)) => {
            return Err(ConfigError::invalid(
                KEY,
                format!(
                    "mixes {h} (shared secret) with {p} (public key); one list must use one \
                     family, or a token could be verified with the wrong kind of key \
                     (algorithm confusion)"
                ),
            ))
        }
        (Some(h), None) => match (&jwt.secret_env, &jwt.secret_file) {
            (None, None) => {
                return Err(ConfigError::invalid(
                    "auth.jwt.secret_env",
                    format!("{h} needs `auth.jwt.secret_env` or `auth.jwt.secret_file`"),
                ))
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "auth.jwt.secret_file",
                    "set only one of `auth.jwt.secret_env` and `auth.jwt.secret_file`",
                ))
            }
            _ => non_empty_opt("auth.jwt.secret_env", jwt.secret_env.as_deref())?,
        },
        (None, Some(p)) => {
            let sources = [
                jwt.public_key_file.is_some(),
                jwt.jwks_file.is_some(),
                jwt.jwks_url.is_some(),
            ];
            match sources.iter().filter(|s| **s).count() {
                0 => {
                    return Err(ConfigError::invalid(
                        "auth.jwt.public_key_file",
                        format!(
                            "{p} needs `auth.jwt.public_key_file`, `auth.jwt.jwks_file` or \
                             `auth.jwt.jwks_url`"
                        ),
                    ))
                }
                1 => {}
                _ => {
                    return Err(ConfigError::invalid(
                        "auth.jwt.public_key_file",
                        "set only one of `auth.jwt.public_key_file`, `auth.jwt.jwks_file` and \
                         `auth.jwt.jwks_url`",
                    ))
                }
            }
            non_empty_opt("auth.jwt.jwks_url", jwt.jwks_url.as_deref())?;
            if jwt.jwks_refresh.is_zero() {
                return Err(ConfigError::invalid(
                    "auth.jwt.jwks_refresh",
                    "must be longer than 0s",
                ));
            }
        }
        (None, None) => unreachable!("every algorithm was checked to be in one family"),
    }
    if jwt.leeway > MAX_LEEWAY {
        return Err(ConfigError::invalid(
            "auth.jwt.leeway",
            "must be at most 1h",
        ));
    }
    if jwt.tenant_claim.is_empty() {
        return Err(ConfigError::invalid(
            "auth.jwt.tenant_claim",
            "must not be empty (a claim name or a JSON pointer such as /app_metadata/tenant_id)",
        ));
    }
    non_empty_opt("auth.jwt.role_claim", jwt.role_claim.as_deref())?;
    non_empty_opt("auth.jwt.issuer", jwt.issuer.as_deref())?;
    if jwt.audience.iter().any(String::is_empty) {
        return Err(ConfigError::invalid(
            "auth.jwt.audience",
            "entries must not be empty",
        ));
    }
    if jwt.max_token_bytes < 1 {
        return Err(ConfigError::invalid(
            "auth.jwt.max_token_bytes",
            "must be at least 1",
        ));
    }
    Ok(())
}

fn check_algorithm(alg: &str) -> Result<(), ConfigError> {
    const KEY: &str = "auth.jwt.algorithms";
    if alg.eq_ignore_ascii_case("none") {
        return Err(ConfigError::invalid(
            KEY,
            "`none` (unsigned tokens) is never accepted: anyone could forge a token",
        ));
    }
    if HMAC_ALGORITHMS.contains(&alg) || PUBLIC_KEY_ALGORITHMS.contains(&alg) {
        return Ok(());
    }
    let known = || HMAC_ALGORITHMS.iter().chain(&PUBLIC_KEY_ALGORITHMS);
    let reason = match known().find(|k| k.eq_ignore_ascii_case(alg)) {
        Some(k) => format!("unknown algorithm `{alg}` (names are case-sensitive: `{k}`)"),
        None => {
            let all: Vec<&str> = known().copied().collect();
            format!("unknown algorithm `{alg}` (one of {})", all.join(", "))
        }
    };
    Err(ConfigError::invalid(KEY, reason))
}

/// A PostgreSQL custom setting name: two or more dot-separated parts of ASCII letters,
/// digits and underscores, no part empty or starting with a digit (as `app.current_tenant`).
pub(super) fn is_custom_setting_name(name: &str) -> bool {
    name.contains('.')
        && name.split('.').all(|part| {
            part.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
}

fn check_setting_name(key: &str, name: &str) -> Result<(), ConfigError> {
    if is_custom_setting_name(name) {
        return Ok(());
    }
    Err(ConfigError::invalid(
        key,
        format!(
            "`{name}` is not a custom setting name (prefix.name: letters, digits and \
             underscores, at least one dot, no part starting with a digit)"
        ),
    ))
}

fn non_zero(key: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::invalid(key, "must be greater than 0s"));
    }
    Ok(())
}

fn non_empty_opt(key: &str, value: Option<&str>) -> Result<(), ConfigError> {
    if value.is_some_and(str::is_empty) {
        return Err(ConfigError::invalid(
            key,
            "must not be empty (leave it out instead)",
        ));
    }
    Ok(())
}
