//! Upstream connection pool: a deadpool managed pool per (database, upstream role),
//! liveness and age checks on recycle, and the check-in cleanup that makes a server
//! safe for the next client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool::managed::{
    self, Metrics as DpMetrics, Object, PoolError, RecycleError, RecycleResult, Timeouts,
};
use tracing::{debug, warn};

use crate::config::PoolConfig;
use crate::metrics::Metrics;
use crate::upstream::conn::{BackendError, Connector, ServerConn};
use crate::wire::protocol::TxStatus;

/// deadpool manager that creates and recycles [`ServerConn`]s.
pub struct Manager {
    connector: Arc<Connector>,
    cfg: PoolConfig,
    metrics: Arc<Metrics>,
    /// `upstream.allow_unsafe_role`: hand out connections of a role RLS does not apply to.
    allow_unsafe_role: bool,
}

impl managed::Manager for Manager {
    type Type = ServerConn;
    type Error = BackendError;

    async fn create(&self) -> Result<ServerConn, BackendError> {
        Metrics::inc(&self.metrics.upstream_connects);
        let timeout = self.connector.target.connect_timeout;
        let connect = async {
            let mut conn = ServerConn::connect(&self.connector).await?;
            self.check_role(&mut conn).await?;
            Ok(conn)
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(conn)) => {
                debug!(pid = conn.pid(), "upstream connection opened");
                Ok(conn)
            }
            Ok(Err(e)) => {
                Metrics::inc(&self.metrics.upstream_connect_errors);
                Err(e)
            }
            Err(_) => {
                Metrics::inc(&self.metrics.upstream_connect_errors);
                Err(BackendError::Timeout)
            }
        }
    }

    async fn recycle(&self, conn: &mut ServerConn, _: &DpMetrics) -> RecycleResult<BackendError> {
        let now = Instant::now();
        let reason = if conn.broken || conn.tx != TxStatus::Idle {
            Some("broken")
        } else if now.duration_since(conn.created) > self.cfg.max_lifetime {
            Some("max_lifetime")
        } else if now.duration_since(conn.last_used) > self.cfg.idle_timeout {
            Some("idle_timeout")
        } else if !conn.is_alive() {
            Some("closed by server")
        } else {
            None
        };
        match reason {
            Some(r) => {
                Metrics::inc(&self.metrics.upstream_discarded);
                debug!(
                    pid = conn.pid(),
                    reason = r,
                    "upstream connection discarded"
                );
                Err(RecycleError::message(r))
            }
            None => Ok(()),
        }
    }
}

impl Manager {
    /// Refuses a connection whose role bypasses row-level security (every connection,
    /// not once at start: the role may change, or PostgreSQL was down at start).
    async fn check_role(&self, conn: &mut ServerConn) -> Result<(), BackendError> {
        let Some(why) = conn.rls_exemption().await? else {
            return Ok(());
        };
        let role = self.connector.target.user.clone();
        if self.allow_unsafe_role {
            warn!(role = %role, why, "UNSAFE: upstream role bypasses row-level security (--allow-unsafe-upstream)");
            return Ok(());
        }
        Metrics::inc(&self.metrics.upstream_connect_errors);
        warn!(role = %role, why, "upstream connection refused: its role bypasses row-level security");
        Err(BackendError::UnsafeRole { role, why })
    }
}

/// Why a checkout failed, as the client will be told.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("pool exhausted: no upstream connection became free within {0:?}")]
    Exhausted(Duration),
    #[error("upstream unreachable: {0}")]
    Upstream(BackendError),
    #[error("pool closed (shutting down)")]
    Closed,
}

impl CheckoutError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            CheckoutError::Exhausted(_) => "53300",
            CheckoutError::Upstream(BackendError::UnsafeRole { .. }) => "42501",
            CheckoutError::Upstream(_) => "08006",
            CheckoutError::Closed => "57P01",
        }
    }
}

/// A pool of upstream connections for one (database, role).
#[derive(Clone)]
pub struct Pool {
    inner: managed::Pool<Manager>,
    cfg: PoolConfig,
    metrics: Arc<Metrics>,
    pub connector: Arc<Connector>,
}

impl Pool {
    pub fn new(
        connector: Connector,
        cfg: PoolConfig,
        metrics: Arc<Metrics>,
        allow_unsafe_role: bool,
    ) -> Pool {
        let connector = Arc::new(connector);
        let manager = Manager {
            connector: connector.clone(),
            cfg: cfg.clone(),
            metrics: metrics.clone(),
            allow_unsafe_role,
        };
        let inner = managed::Pool::builder(manager)
            .max_size(cfg.size)
            // Most recently used first (PgBouncer's default too): a client's next
            // transaction usually lands on the server that still holds its context, and
            // servers beyond the working set stay idle until the reaper closes them.
            .queue_mode(managed::QueueMode::Lifo)
            .runtime(deadpool::Runtime::Tokio1)
            .wait_timeout(Some(cfg.acquire_timeout))
            .create_timeout(Some(connector.target.connect_timeout))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .expect("runtime and max size are set");
        Pool {
            inner,
            cfg,
            metrics,
            connector,
        }
    }

    /// Waits for a connection (up to `pool.acquire_timeout`).
    pub async fn checkout(&self) -> Result<Object<Manager>, CheckoutError> {
        let timeouts = Timeouts {
            wait: Some(self.cfg.acquire_timeout),
            create: Some(self.connector.target.connect_timeout),
            recycle: Some(Duration::from_secs(5)),
        };
        match self.inner.timeout_get(&timeouts).await {
            Ok(obj) => {
                Metrics::inc(&self.metrics.checkouts);
                Ok(obj)
            }
            Err(PoolError::Timeout(managed::TimeoutType::Wait)) => {
                Metrics::inc(&self.metrics.pool_timeouts);
                Err(CheckoutError::Exhausted(self.cfg.acquire_timeout))
            }
            Err(PoolError::Timeout(_)) => Err(CheckoutError::Upstream(BackendError::Timeout)),
            Err(PoolError::Backend(e)) => Err(CheckoutError::Upstream(e)),
            Err(PoolError::Closed) => Err(CheckoutError::Closed),
            Err(e) => Err(CheckoutError::Upstream(BackendError::Protocol(
                e.to_string(),
            ))),
        }
    }

    /// Returns a server to the pool after making it clean: `ROLLBACK` if a transaction is
    /// open, then the reset query. A server that is not at a message boundary, or whose
    /// cleanup fails, is closed instead.
    pub async fn checkin(&self, mut obj: Object<Manager>, at_boundary: bool) {
        if !at_boundary || obj.broken {
            self.discard(obj, "not at a protocol boundary").await;
            return;
        }
        if obj.tx != TxStatus::Idle {
            if let Err(e) = obj.simple_query("ROLLBACK").await {
                self.discard(obj, &e.to_string()).await;
                return;
            }
        }
        obj.context = None;
        obj.dirty = false;
        obj.statements.clear();
        // The reset, then what it does not cover: temporary buffers frozen at another
        // size, and `random()`'s seed (`tenant::TEMP_BUFFERS_CHECK`, `reseed_sql`).
        let after = format!(
            "{}; {}",
            crate::tenant::TEMP_BUFFERS_CHECK,
            crate::tenant::reseed_sql()
        );
        let results = obj
            .query_rows_many(&[&self.cfg.reset_query, &after])
            .await
            .and_then(|r| r.into_iter().try_for_each(|r| r.map(drop)));
        if let Err(e) = results {
            warn!(error = %e, "reset query failed; closing upstream connection");
            self.discard(obj, "reset failed").await;
            return;
        }
        drop(obj);
    }

    /// Returns a server at a transaction boundary (transaction pooling) without resetting
    /// it: it keeps the context it holds, which the next client may reuse for free.
    pub fn release(&self, mut obj: Object<Manager>) {
        obj.last_used = Instant::now();
        drop(obj);
    }

    /// Closes a server instead of returning it.
    pub async fn discard(&self, obj: Object<Manager>, reason: &str) {
        Metrics::inc(&self.metrics.upstream_discarded);
        debug!(pid = obj.pid(), reason, "upstream connection discarded");
        Object::take(obj).terminate().await;
    }

    /// Opens `pool.min_idle` connections ahead of demand.
    pub async fn prefill(&self) -> Result<(), CheckoutError> {
        let mut held = Vec::new();
        for _ in 0..self.cfg.min_idle {
            held.push(self.checkout().await?);
        }
        drop(held);
        Ok(())
    }

    /// Drops idle connections past `idle_timeout` / `max_lifetime`; called periodically.
    pub fn reap(&self) {
        let (idle, life) = (self.cfg.idle_timeout, self.cfg.max_lifetime);
        let min_idle = self.cfg.min_idle;
        let mut kept = 0usize;
        let now = Instant::now();
        self.inner.retain(|conn, _| {
            let expired = now.duration_since(conn.created) > life
                || (now.duration_since(conn.last_used) > idle && kept >= min_idle);
            if !expired {
                kept += 1;
            }
            !expired
        });
    }

    pub fn status(&self) -> managed::Status {
        self.inner.status()
    }

    pub fn close(&self) {
        self.inner.close();
    }
}
