//! Control-plane connections (tokio-postgres + deadpool-postgres), shared by `policy` and
//! `doctor`: from a `--database` URL or from the proxy's upstream settings.

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::{Host, SslMode as PgSslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{SslMode, UpstreamHost, UpstreamTarget};

const POOL_SIZE: usize = 4;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the database could not be reached or a statement failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {0}")]
    Url(String),
    #[error("TLS set-up: {0}")]
    Tls(#[from] crate::wire::tls::TlsError),
    #[error("cannot connect to {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("{0}")]
    Postgres(String),
    #[error(transparent)]
    Secret(#[from] crate::control::policy::options::SecretError),
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        DbError::Postgres(describe(&e))
    }
}

/// A server error as `ERROR: message (SQLSTATE xxxxx) DETAIL: ... HINT: ...`.
pub fn describe(e: &tokio_postgres::Error) -> String {
    let Some(db) = e.as_db_error() else {
        return e.to_string();
    };
    let mut text = format!(
        "{}: {} (SQLSTATE {})",
        db.severity(),
        db.message(),
        db.code().code()
    );
    if let Some(detail) = db.detail() {
        text.push_str(&format!("; DETAIL: {detail}"));
    }
    if let Some(hint) = db.hint() {
        text.push_str(&format!("; HINT: {hint}"));
    }
    text
}

/// A small connection pool to one database, plus a printable name for it.
#[derive(Clone)]
pub struct Database {
    pool: Pool,
    label: String,
}

impl Database {
    /// From a libpq-style URL or key/value string (`sslmode=disable|prefer|require`; as
    /// with libpq, `prefer` and `require` encrypt without verifying the certificate).
    pub fn from_url(url: &str) -> Result<Database, DbError> {
        let mut config =
            tokio_postgres::Config::from_str(url).map_err(|e| DbError::Url(e.to_string()))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        let connector = crate::wire::tls::upstream_connector(SslMode::Require, None)?;
        Self::build(config, connector)
    }

    /// From the proxy's resolved `[upstream]` settings (the same TLS rules as the proxy).
    pub fn from_target(target: &UpstreamTarget) -> Result<Database, DbError> {
        let mut config = tokio_postgres::Config::new();
        match &target.host {
            UpstreamHost::Tcp { host, port } => config.host(host).port(*port),
            UpstreamHost::Unix { dir, port } => config.host_path(dir).port(*port),
        };
        config
            .user(&target.user)
            .dbname(&target.database)
            .connect_timeout(target.connect_timeout)
            .application_name("rlsgate-control");
        if let Some(password) = &target.password {
            config.password(password);
        }
        let connector = match target.sslmode {
            SslMode::Disable => {
                config.ssl_mode(PgSslMode::Disable);
                crate::wire::tls::upstream_connector(SslMode::Require, None)?
            }
            mode => {
                config.ssl_mode(PgSslMode::Require);
                crate::wire::tls::upstream_connector(mode, target.root_cert_file.as_deref())?
            }
        };
        Self::build(config, connector)
    }

    fn build(
        config: tokio_postgres::Config,
        connector: Option<tokio_rustls::TlsConnector>,
    ) -> Result<Database, DbError> {
        let label = label(&config);
        let client_config = connector
            .map(|c| (**c.config()).clone())
            .ok_or_else(|| DbError::Url("no TLS configuration".into()))?;
        let manager = Manager::from_config(
            config,
            MakeRustlsConnect::new(client_config),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| DbError::Url(e.to_string()))?;
        Ok(Database { pool, label })
    }

    /// A pooled connection.
    pub async fn client(&self) -> Result<Object, DbError> {
        self.pool.get().await.map_err(|e| DbError::Connect {
            target: self.label.clone(),
            reason: match &e {
                deadpool_postgres::PoolError::Backend(pg) => describe(pg),
                other => other.to_string(),
            },
        })
    }

    /// `user@host:port/database` (never the password).
    pub fn label(&self) -> &str {
        &self.label
    }
}

fn label(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        config.get_user().unwrap_or("?"),
        config.get_dbname().unwrap_or("?")
    )
}

/// The tokio-postgres client inside a pooled connection (for functions generic over
/// [`tokio_postgres::GenericClient`]).
pub fn pg(conn: &Object) -> &tokio_postgres::Client {
    conn
}
