//! Typed, validated configuration: TOML file, environment-variable overrides, secrets.
//!
//! Loading is [`Config::load`]: read the file, apply `RLSGATE_<SECTION>__<KEY>` environment
//! overrides (see [`Config::from_toml_with_env`]), deserialize (unknown keys are refused)
//! and [`Config::validate`]. Secrets are never stored in the config itself, only where to
//! find them: [`JwtConfig::secret`] and [`UpstreamConfig::target`] read them on demand.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod env;
mod secret;
#[cfg(test)]
mod tests;
mod upstream;
mod validate;

pub use env::ENV_PREFIX;
pub use upstream::{UpstreamHost, UpstreamTarget};

/// Everything that can go wrong while loading or using the configuration.
///
/// Every variant names the config key (or environment variable) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file `{}`", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key or wrong type; the message names the key.
    #[error("invalid config: {0}")]
    Parse(String),
    /// A value is well-formed but not acceptable.
    #[error("invalid config: `{key}`: {reason}")]
    Invalid { key: String, reason: String },
    /// An `RLSGATE_*__*` environment override is malformed or does not fit its key.
    #[error("invalid environment override `{var}`: {reason}")]
    Env { var: String, reason: String },
    /// A secret (JWT secret, upstream password) could not be obtained.
    #[error("cannot read secret for `{key}`: {reason}")]
    Secret { key: String, reason: String },
}

impl ConfigError {
    /// Shorthand for [`ConfigError::Invalid`].
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl Config {
    /// Reads `path`, applies `RLSGATE_*__*` overrides from the process environment,
    /// deserializes and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let env = env::process_overrides()?;
        Self::from_toml_with_env(&text, env).map_err(|e| match e {
            ConfigError::Parse(msg) => ConfigError::Parse(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Parses `text`, applies the overrides found in `env` (variables not of the form
    /// `RLSGATE_<SECTION>__<KEY>` are ignored), deserializes and validates.
    ///
    /// Override scheme: the name after `RLSGATE_` is split at `__` into a lowercased key
    /// path (`RLSGATE_AUTH__JWT__ISSUER` → `auth.jwt.issuer`). The value is taken as TOML
    /// when it reads as an integer, float, boolean, array or inline table
    /// (`RLSGATE_AUTH__JWT__ALGORITHMS=["RS256","ES256"]`), otherwise as a string; a scalar
    /// taken as TOML that does not fit its key is retried as a string, so
    /// `RLSGATE_AUTH__JWT__ISSUER=1234` still works.
    pub fn from_toml_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let config = env::deserialize(text, env)?;
        config.validate()?;
        Ok(config)
    }
}

/// Top-level configuration (`rlsgate.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where clients connect.
    #[serde(default)]
    pub listen: ListenConfig,
    /// Client-facing TLS.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Client authentication (JWT).
    pub auth: AuthConfig,
    /// The PostgreSQL server behind the proxy.
    pub upstream: UpstreamConfig,
    /// Upstream connection pool.
    #[serde(default)]
    pub pool: PoolConfig,
    /// Which settings carry the tenant context.
    #[serde(default)]
    pub tenant: TenantConfig,
    /// The statement guard.
    #[serde(default)]
    pub guard: GuardSection,
    /// The admin HTTP endpoint (metrics, health).
    #[serde(default)]
    pub admin: AdminConfig,
}

/// `[admin]`: an HTTP endpoint for operators: `GET /metrics` (Prometheus text format)
/// and `GET /health`. Off unless `addr` is set.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Where the endpoint listens (port 0 picks one); unset = no endpoint. It has no
    /// authentication: bind it to loopback or a private interface.
    pub addr: Option<SocketAddr>,
}

/// `[guard]`: the statement guard (parser-based refusal of tenant tampering).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardSection {
    /// Inspect every Query and Parse (default true). **Tests and diagnostics only**:
    /// `false` leaves only RLS and the sealed context to enforce the tenant (the
    /// integration tests use it to prove that a guard bug is not a breach), refuses
    /// nothing, and is logged as UNSAFE at start. Never turn it off in production.
    pub enabled: bool,
    /// Refuse every `DO` block instead of inspecting its PL/pgSQL body.
    pub refuse_do_blocks: bool,
    /// Relations no client may read (default: pg_stat_activity, pg_stat_statements,
    /// pg_stat_statements_info: they show other sessions' query text).
    pub deny_relations: Vec<String>,
    /// Allow `SET ROLE` / `SET SESSION AUTHORIZATION`.
    pub allow_set_role: bool,
    /// Allow the large-object functions (SQL and FunctionCall). Large objects belong to
    /// the shared upstream role, so every tenant can read every tenant's objects.
    pub allow_large_objects: bool,
}

impl Default for GuardSection {
    fn default() -> Self {
        Self {
            enabled: true,
            refuse_do_blocks: false,
            deny_relations: default_deny_relations(),
            allow_set_role: false,
            allow_large_objects: false,
        }
    }
}

/// `[listen]`: where clients connect.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// TCP address, e.g. `127.0.0.1:6432`.
    pub addr: SocketAddr,
    /// Directory for the unix socket `.s.PGSQL.<port>` (port of `addr`).
    pub unix_socket_dir: Option<PathBuf>,
    /// Maximum concurrent client connections; more get `53300`.
    pub max_clients: usize,
    /// Time a client has to finish TLS, startup and authentication.
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// On SIGTERM/SIGINT: how long sessions may go on before they are closed with `57P01`.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:6432".parse().expect("valid default address"),
            unix_socket_dir: None,
            max_clients: 1000,
            startup_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// `[tls] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TCP clients must use TLS (unix sockets are exempt).
    Require,
    /// TLS offered when a certificate is configured; plaintext accepted.
    #[default]
    Prefer,
    /// No TLS.
    Disable,
}

/// `[tls]`: client-facing TLS.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// `require`, `prefer` or `disable`.
    pub mode: TlsMode,
    /// PEM certificate chain presented to clients (set together with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key for `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Accept a JWT over plaintext TCP from non-loopback peers.
    pub allow_plaintext_auth: bool,
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Token verification settings.
    pub jwt: JwtConfig,
}

/// `[auth.jwt]`: how tokens are verified and what is taken from them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Accepted algorithms, e.g. `["HS256"]` or `["RS256", "ES256"]`. `none` is never accepted.
    pub algorithms: Vec<String>,
    /// Environment variable holding the HS* secret.
    pub secret_env: Option<String>,
    /// File holding the HS* secret (trailing newline stripped).
    pub secret_file: Option<PathBuf>,
    /// PEM public key (RS*, PS*, ES*, EdDSA).
    pub public_key_file: Option<PathBuf>,
    /// JWKS document (keys selected by `kid`).
    pub jwks_file: Option<PathBuf>,
    /// JWKS fetched over HTTPS (http only to loopback) at the first login, refreshed
    /// after `jwks_refresh` and when a token names an unknown `kid`.
    pub jwks_url: Option<String>,
    /// Age after which the fetched JWKS is refreshed (in the background).
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// Shortest time between two fetches caused by unknown `kid`s or failures.
    #[serde(with = "humantime_serde")]
    pub jwks_min_interval: Duration,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Required `aud` (any of these).
    pub audience: Vec<String>,
    /// Clock skew allowed for `exp`/`nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// How long an open session may outlive its token's `exp` (after `leeway`): the
    /// first message after that ends the session with FATAL 28P01 "token expired".
    #[serde(with = "humantime_serde")]
    pub session_grace: Duration,
    /// Claim name or JSON pointer (`/app_metadata/tenant_id`) holding the tenant.
    pub tenant_claim: String,
    /// Optional claim name or JSON pointer holding the role.
    pub role_claim: Option<String>,
    /// When true the startup `user` must equal the token's `sub`.
    pub match_user: bool,
    /// Largest token accepted, in bytes.
    pub max_token_bytes: usize,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            algorithms: vec!["HS256".into()],
            secret_env: None,
            secret_file: None,
            public_key_file: None,
            jwks_file: None,
            jwks_url: None,
            jwks_refresh: Duration::from_secs(600),
            jwks_min_interval: Duration::from_secs(30),
            issuer: None,
            audience: Vec::new(),
            leeway: Duration::from_secs(30),
            session_grace: Duration::ZERO,
            tenant_claim: "tenant_id".into(),
            role_claim: None,
            match_user: false,
            max_token_bytes: 8192,
        }
    }
}

/// `[upstream] sslmode` (defined with the TLS code that acts on it).
pub use crate::wire::tls::SslMode;

/// `[upstream]`: the PostgreSQL server behind the proxy.
///
/// `Debug` masks a password embedded in `url`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `postgres://user@host:port/db` (host may be a unix socket directory via `?host=/dir`).
    ///
    /// A password embedded in the URL (`postgres://user:pw@host/db`) is accepted, but
    /// `password_env` / `password_file` take precedence and are the recommended way:
    /// URLs end up in shell history, process lists and logs.
    pub url: String,
    /// Environment variable holding the upstream password.
    pub password_env: Option<String>,
    /// File holding the upstream password.
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub sslmode: SslMode,
    /// CA bundle for `verify-full` (default: webpki roots).
    pub root_cert_file: Option<PathBuf>,
    /// Timeout for TCP connect + startup of one upstream connection.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Start even when the upstream role is a superuser or has BYPASSRLS (RLS then
    /// filters nothing). Also `rlsgate serve --allow-unsafe-upstream`. Default false.
    #[serde(default)]
    pub allow_unsafe_role: bool,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("url", &upstream::redact_url(&self.url))
            .field("password_env", &self.password_env)
            .field("password_file", &self.password_file)
            .field("sslmode", &self.sslmode)
            .field("root_cert_file", &self.root_cert_file)
            .field("connect_timeout", &self.connect_timeout)
            .field("allow_unsafe_role", &self.allow_unsafe_role)
            .finish()
    }
}

/// `[pool] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A client keeps its upstream connection for the whole session.
    #[default]
    Session,
    /// A client holds an upstream connection only during a transaction.
    Transaction,
}

/// `[pool] session_features`: what transaction pooling does with a statement that needs
/// one server for the rest of the session (LISTEN, temporary objects outliving their
/// transaction, `DECLARE ... WITH HOLD`, session advisory locks, SQL `PREPARE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SessionFeatures {
    /// The client keeps its server until it disconnects (up to `pool.max_pinned`
    /// clients at once; beyond that the statement is refused); the server is then
    /// closed, never returned to the pool.
    #[default]
    Pin,
    /// The statement is refused with 0A000.
    Refuse,
}

/// `[pool]`: upstream connection pool, one per (database, upstream role).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// `session` or `transaction`.
    pub mode: PoolMode,
    /// Maximum upstream connections.
    pub size: usize,
    /// Connections kept open even when idle (opened at start).
    pub min_idle: usize,
    /// How long a client waits for a connection before `53300`.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// Idle connections older than this are closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections older than this are closed at check-in.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// Sent at check-in (after `ROLLBACK` if needed) so the next client starts clean.
    pub reset_query: String,
    /// Transaction mode: `pin` or `refuse` statements that need one server for the
    /// rest of the session.
    pub session_features: SessionFeatures,
    /// Transaction mode: most clients pinned to a server at once (default: half of
    /// `size`, rounded down, so a pool of one never pins), so pinned clients cannot
    /// take the whole pool.
    pub max_pinned: Option<usize>,
    /// Close a client that has sent nothing and been sent nothing for this long outside
    /// a transaction (FATAL 57P05). `0s` (default) = never.
    #[serde(with = "humantime_serde")]
    pub client_idle_timeout: Duration,
    /// Close a client that sits idle this long inside a transaction (or between an
    /// extended-protocol message and its Sync) while holding a server (FATAL 25P03).
    /// `0s` (default) = never.
    #[serde(with = "humantime_serde")]
    pub idle_transaction_timeout: Duration,
    /// Transaction mode: close a pinned client (it holds a server of its own) idle this
    /// long outside a transaction (FATAL 57P05). `0s` (default) = never.
    #[serde(with = "humantime_serde")]
    pub pinned_idle_timeout: Duration,
}

impl PoolConfig {
    /// `max_pinned` with its default applied.
    pub fn pin_limit(&self) -> usize {
        self.max_pinned.unwrap_or(self.size / 2)
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            mode: PoolMode::Session,
            size: 10,
            min_idle: 0,
            acquire_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            reset_query: "DISCARD ALL".into(),
            session_features: SessionFeatures::Pin,
            max_pinned: None,
            client_idle_timeout: Duration::ZERO,
            idle_transaction_timeout: Duration::ZERO,
            pinned_idle_timeout: Duration::ZERO,
        }
    }
}

/// `[tenant]`: which settings carry the tenant context.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    /// Setting that receives the tenant claim.
    pub setting: String,
    /// Extra settings: setting name → claim name / JSON pointer, or `"*"` for all claims as JSON.
    pub claims: BTreeMap<String, String>,
    /// Sealed context (policies/sealed.sql): every time rlsgate applies the tenant on a
    /// server connection it also calls `rlsgate.enter(tenant, seq, seal)`, seal =
    /// HMAC-SHA256(secret, `tenant:backend_pid:seq`) with a fresh `seq`; the database
    /// records the tenant only when the seal verifies and is newer than the last one
    /// on that backend, and `rlsgate.tenant()` returns it. Default (unset): on when a
    /// seal secret is configured, off (with a warning at start) without one. `true`
    /// without a secret is a configuration error.
    pub sealed: Option<bool>,
    /// A setting name reserved for the seal: clients cannot set it (startup options,
    /// `SET`, `set_config`). rlsgate no longer writes it (the seal travels as an
    /// argument of `rlsgate.enter`); kept so existing files load and old names stay
    /// protected.
    pub seal_setting: String,
    /// Environment variable holding the seal secret (shared with the database).
    pub seal_secret_env: Option<String>,
    /// File holding the seal secret.
    pub seal_secret_file: Option<PathBuf>,
    /// LISTEN/NOTIFY channels: `tenant` (each tenant has its own channel namespace,
    /// see `src/channels.rs`) or `shared` (as in PostgreSQL: database-wide, so tenants
    /// can read each other's notifications).
    pub channels: ChannelScope,
}

/// `[tenant] channels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ChannelScope {
    /// Channel names get a per-tenant suffix on the way up; a client receives only
    /// notifications of its own tenant's channels.
    #[default]
    Tenant,
    /// Channels are passed through untouched (database-wide, across tenants).
    Shared,
}

impl Default for TenantConfig {
    fn default() -> Self {
        Self {
            setting: "app.current_tenant".into(),
            claims: BTreeMap::new(),
            sealed: None,
            seal_setting: "rlsgate.seal".into(),
            seal_secret_env: None,
            seal_secret_file: None,
            channels: ChannelScope::Tenant,
        }
    }
}

impl TenantConfig {
    /// Whether the context is sealed: `sealed` when given, else whether a seal secret
    /// is configured.
    pub fn is_sealed(&self) -> bool {
        self.sealed
            .unwrap_or(self.seal_secret_env.is_some() || self.seal_secret_file.is_some())
    }

    /// The seal secret when the context is sealed (trailing newline of a file stripped).
    pub fn seal_secret(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        if !self.is_sealed() {
            return Ok(None);
        }
        let secret = match (&self.seal_secret_env, &self.seal_secret_file) {
            (Some(var), None) => std::env::var(var).map_err(|_| ConfigError::Secret {
                key: "tenant.seal_secret_env".into(),
                reason: format!("environment variable {var} is not set"),
            })?,
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| ConfigError::Secret {
                    key: "tenant.seal_secret_file".into(),
                    reason: format!("{}: {e}", path.display()),
                })?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
            _ => {
                return Err(ConfigError::invalid(
                    "tenant.sealed",
                    "needs exactly one of tenant.seal_secret_env / tenant.seal_secret_file",
                ))
            }
        };
        if secret.len() < 16 {
            return Err(ConfigError::invalid(
                "tenant.seal_secret_env",
                "seal secret must be at least 16 bytes",
            ));
        }
        Ok(Some(secret.into_bytes()))
    }
}

/// `guard.deny_relations` by default: relations that show other tenants' query text
/// under the shared upstream role.
pub fn default_deny_relations() -> Vec<String> {
    [
        "pg_stat_activity",
        "pg_stat_statements",
        "pg_stat_statements_info",
    ]
    .map(str::to_owned)
    .to_vec()
}
