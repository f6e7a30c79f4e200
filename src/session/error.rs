//! Errors a client session can end with: what the client is told (SQLSTATE + a message
//! a person can act on) versus what is logged.

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::auth::AuthError;
use crate::tenant::ContextError;
use crate::upstream::conn::BackendError;
use crate::upstream::pool::CheckoutError;
use crate::wire::protocol::{self, Severity};

/// Sends the FATAL ErrorResponse for `err`, closes the stream, and returns `err`.
pub async fn fatal<S: AsyncWrite + Unpin>(stream: &mut S, err: ClientError) -> ClientError {
    let mut buf = BytesMut::new();
    protocol::put_error(
        &mut buf,
        Severity::Fatal,
        err.sqlstate(),
        &err.client_message(),
    );
    let _ = stream.write_all(&buf).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
    err
}

/// Why a client connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("client I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed by client")]
    Closed,
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("TLS required")]
    TlsRequired,
    #[error("plaintext token refused")]
    PlaintextRefused,
    #[error("authentication failed: {0}")]
    Auth(#[from] AuthError),
    #[error("unknown database {asked:?}")]
    UnknownDatabase { asked: String, served: String },
    #[error("startup refused: {0}")]
    Context(#[from] ContextError),
    #[error(transparent)]
    Checkout(#[from] CheckoutError),
    #[error(transparent)]
    Upstream(#[from] BackendError),
    #[error("too many clients")]
    TooManyClients,
    #[error("startup timed out")]
    StartupTimeout,
    #[error("shutting down")]
    Shutdown,
    #[error("tenant context could not be applied: {0}")]
    ContextFailed(String),
    #[error("terminating connection due to {} timeout (pool.{} = {})", .0.what(), .0.key(), humantime::format_duration(*.1))]
    IdleTimeout(IdleTimeout, std::time::Duration),
}

/// Which idle limit closed a client (`[pool]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleTimeout {
    /// `client_idle_timeout`.
    Client,
    /// `idle_transaction_timeout`.
    Transaction,
    /// `pinned_idle_timeout`.
    Pinned,
}

impl IdleTimeout {
    fn what(self) -> &'static str {
        match self {
            IdleTimeout::Transaction => "idle-in-transaction",
            IdleTimeout::Client | IdleTimeout::Pinned => "idle-session",
        }
    }

    fn key(self) -> &'static str {
        match self {
            IdleTimeout::Client => "client_idle_timeout",
            IdleTimeout::Transaction => "idle_transaction_timeout",
            IdleTimeout::Pinned => "pinned_idle_timeout",
        }
    }
}

impl From<pgwire::error::PgWireError> for ClientError {
    fn from(e: pgwire::error::PgWireError) -> Self {
        match e {
            pgwire::error::PgWireError::IoError(io) => ClientError::Io(io),
            other => ClientError::Protocol(other.to_string()),
        }
    }
}

impl ClientError {
    /// SQLSTATE sent to the client.
    pub fn sqlstate(&self) -> &str {
        match self {
            ClientError::Io(_) | ClientError::Closed => "08006",
            ClientError::Protocol(_) => "08P01",
            ClientError::TlsRequired | ClientError::PlaintextRefused => "28000",
            ClientError::Auth(_) => "28P01",
            ClientError::UnknownDatabase { .. } => "3D000",
            ClientError::Context(ContextError::Protected(_)) => "42501",
            ClientError::Context(ContextError::Replication) => "0A000",
            ClientError::Context(ContextError::BadOptions(_)) => "22023",
            ClientError::Context(ContextError::UnsafeEncoding(_)) => "22023",
            ClientError::Checkout(c) => c.sqlstate(),
            ClientError::Upstream(BackendError::Server(f)) if !f.code.is_empty() => &f.code,
            ClientError::Upstream(_) => "08006",
            ClientError::TooManyClients => "53300",
            ClientError::StartupTimeout => "08006",
            ClientError::Shutdown => "57P01",
            ClientError::ContextFailed(_) => "08006",
            // As PostgreSQL's idle_in_transaction_session_timeout / idle_session_timeout.
            ClientError::IdleTimeout(IdleTimeout::Transaction, _) => "25P03",
            ClientError::IdleTimeout(..) => "57P05",
        }
    }

    /// Message sent to the client: safe (no token, no secrets) and actionable.
    pub fn client_message(&self) -> String {
        match self {
            ClientError::TlsRequired => {
                "TLS is required: connect with sslmode=require (the token is the password)".into()
            }
            ClientError::PlaintextRefused => "refusing to receive a token over an unencrypted \
                 non-loopback connection: connect with sslmode=require"
                .into(),
            ClientError::Auth(e) => format!("JWT authentication failed: {e}"),
            ClientError::UnknownDatabase { asked, served } => format!(
                "database \"{asked}\" does not exist on this rlsgate (it serves \"{served}\")"
            ),
            ClientError::Upstream(BackendError::Server(f)) => f.message.clone(),
            ClientError::Upstream(e) => format!("upstream server unavailable: {e}"),
            ClientError::TooManyClients => "sorry, too many clients already".into(),
            ClientError::Shutdown => {
                "terminating connection due to administrator command (rlsgate shutting down)".into()
            }
            other => other.to_string(),
        }
    }

    /// Whether this ending is routine (not worth a warning in the log).
    pub fn is_routine(&self) -> bool {
        matches!(self, ClientError::Closed | ClientError::Io(_))
    }
}
