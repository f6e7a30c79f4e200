//! What a session starts from and shares with the others: the authenticated client the
//! handshake hands over, and the process-wide state (config, pool, inspector, cancel
//! registry, metrics), built by `proxy::server`.

use std::sync::Arc;

use bytes::BytesMut;
use pgwire::tokio::server::MaybeTls;

use crate::auth::Identity;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::session::cancel::CancelRegistry;
use crate::session::prepared::StatementNamer;
use crate::sql::inspect::Inspector;
use crate::tenant::{OwnedSettings, Sealer};
use crate::upstream::pool::Pool;

/// An authenticated client whose startup is not yet answered with AuthenticationOk.
pub struct Authenticated {
    pub stream: MaybeTls,
    /// Bytes the client sent after its password (pipelined), to be forwarded first.
    pub leftover: BytesMut,
    pub identity: Identity,
    pub user: String,
    pub database: String,
    /// Startup parameters other than user/database, in the order received.
    pub startup: Vec<(String, String)>,
    pub tls: bool,
}

/// Everything a client session needs, shared read-only (plus atomics and the pool).
pub struct Shared {
    pub config: Config,
    /// The sealed context's secret and counter (`[tenant] sealed`), one per process.
    pub sealer: Option<Arc<Sealer>>,
    pub owned: OwnedSettings,
    pub inspector: Inspector,
    pub pool: Pool,
    pub cancel: CancelRegistry,
    pub metrics: Arc<Metrics>,
    /// Keys the server-side names of clients' prepared statements (transaction mode).
    pub statement_names: StatementNamer,
}
