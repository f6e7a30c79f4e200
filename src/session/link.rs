//! The bound server link: checking a server out for the session with the client's
//! context on it (at login and at the start of each transaction), and handing it back
//! at a boundary where nothing is owed.

use bytes::BytesMut;
use deadpool::managed::Object;

use super::Session;
use crate::config::PoolMode;
use crate::metrics::Metrics;
use crate::session::cancel::CancelTarget;
use crate::session::error::ClientError;
use crate::session::shared::Shared;
use crate::tenant::SessionContext;
use crate::upstream::pool::Manager;
use crate::wire::protocol::{self, TxStatus};

/// Checks out a server and applies the full context, replacing servers that turn out
/// to be dead (for example after a PostgreSQL restart).
pub(super) async fn bind_with_context(
    state: &Shared,
    ctx: &SessionContext,
) -> Result<Object<Manager>, ClientError> {
    let want = ctx.fingerprint();
    let mut last = None;
    for _ in 0..3 {
        let mut obj = state.pool.checkout().await?;
        Metrics::inc(&state.metrics.context_round_trips);
        // A server released by another client in transaction mode may hold that client's
        // session settings: reset them first (same round trip).
        let mut buf = BytesMut::new();
        let mut replies = 1;
        if obj.context.is_some_and(|c| c.client != want.client) || obj.dirty {
            protocol::put_query(&mut buf, &reset_for(&obj));
            obj.dirty = false;
            replies += 1;
        } else if obj.context.is_some_and(|c| c.all != want.all) {
            // Another tenant, same settings: its `lastval`/`currval` must not show.
            protocol::put_query(&mut buf, crate::tenant::SEQUENCES_RESET);
            replies += 1;
        }
        ctx.encode(&mut buf, obj.pid());
        // Only notices about this client's own startup settings reach it.
        obj.notices.clear();
        match obj.exchange(&buf, replies).await {
            Ok(()) => {
                Metrics::inc(&state.metrics.context_applied);
                obj.context = Some(want);
                return Ok(obj);
            }
            Err(e) if obj.broken => {
                state.pool.discard(obj, "dead at checkout").await;
                last = Some(e);
            }
            Err(e) => {
                // The server refused a startup parameter value: report it like PostgreSQL.
                state.pool.checkin(obj, true).await;
                return Err(e.into());
            }
        }
    }
    Err(last.map(ClientError::from).unwrap_or(ClientError::Closed))
}

/// The reset a server needs before another session: everything a session can leave
/// behind when its last session was dirty (with `random()` reseeded), else only the
/// settings.
fn reset_for(server: &crate::upstream::conn::ServerConn) -> String {
    if server.dirty {
        format!(
            "{}; {}",
            crate::tenant::SWITCH_RESET,
            crate::tenant::reseed_sql()
        )
    } else {
        crate::tenant::SETTINGS_RESET.to_owned()
    }
}

impl Session<'_> {
    /// Checks out a server for the client and queues whatever it needs to hold the
    /// client's context: nothing when it already does, else the tenant `set_config`
    /// (and the client's own settings when they differ), ahead of the client's bytes.
    pub(super) async fn bind(&mut self) -> Result<(), ClientError> {
        let mut obj = self.state.pool.checkout().await?;
        self.statements.transaction_started();
        let held = crate::sql::encoding::of_settings(self.ctx.client_settings(), &self.ctx.replay);
        self.encoding.on_bind(held, obj.params()); // encoding
                                                   // Whatever unnamed statement this server holds is not the client's.
        self.unnamed_here = false;
        let want = self.ctx.fingerprint();
        if obj.context != Some(want) || obj.dirty {
            let replay = obj.context.map(|c| c.client) != Some(want.client) || obj.dirty;
            if replay {
                // Other settings, or the last session may have left state behind that
                // rlsgate cannot see: nothing of it may remain.
                if obj.context.is_some() || obj.dirty {
                    protocol::put_query(&mut self.to_server, &reset_for(&obj));
                    // A failed reset leaves the other session's state: fail closed.
                    self.pipeline.proxy_query(true);
                    obj.dirty = false;
                }
                if self.ctx.encode_client(&mut self.to_server) {
                    self.pipeline.proxy(false);
                }
            } else if obj.context.is_some_and(|c| c.all != want.all) {
                // Another tenant, same settings: its `lastval`/`currval` must not show.
                protocol::put_query(&mut self.to_server, crate::tenant::SEQUENCES_RESET);
                self.pipeline.proxy_query(true);
            }
            self.ctx.encode_tenant(&mut self.to_server, obj.pid());
            self.pipeline.proxy(true);
            if replay {
                // After the tenant context: a remembered `default_transaction_read_only`
                // or `statement_timeout` applies to the client's statements, not to the
                // proxy's `rlsgate.enter`.
                for _ in 0..self.ctx.encode_replay(&mut self.to_server) {
                    self.pipeline.proxy_query(false);
                }
            }
            obj.context = Some(want);
            Metrics::inc(&self.state.metrics.context_applied);
        } else {
            Metrics::inc(&self.state.metrics.context_reused);
        }
        let target = CancelTarget {
            server_pid: obj.pid(),
            server_secret: obj.secret(),
        };
        self.state
            .cancel
            .retarget(self.key.0, self.key.1, Some(target));
        self.server = Some(obj);
        Ok(())
    }

    /// Transaction mode: returns the server once the client is idle at a boundary.
    pub(super) async fn maybe_release(&mut self) -> Result<(), ClientError> {
        if self.mode != PoolMode::Transaction
            || self.pinned.is_some()
            || !self.at_boundary()
            || self.tx != TxStatus::Idle
        {
            return Ok(());
        }
        if let Some(mut obj) = self.server.take() {
            let gate = self.cancel_gate.clone();
            let _held = gate.lock().await;
            self.state.cancel.retarget(self.key.0, self.key.1, None);
            if self.pipeline.in_doubt() {
                // It may still owe replies nobody expects: never hand it on.
                self.pipeline.reset();
                self.state
                    .pool
                    .discard(obj, "replies in doubt after a failed COPY")
                    .await;
                return Ok(());
            }
            if obj.dirty {
                // It ran something that may have changed session settings (a SET in a
                // transaction, `set_config`, a function): the session holds what the
                // server now reports, on whichever server its next transaction runs.
                // Its prepared statements are counted in the same round trip.
                let sql = self.settings.snapshot_sql();
                let counts = match self.ctx.seal {
                    Some(_) => crate::tenant::STATEMENT_COUNTS_SEALED,
                    None => crate::tenant::STATEMENT_COUNTS,
                };
                let queries = [&sql[..], counts, crate::tenant::TEMP_BUFFERS_CHECK];
                let mut read = obj.query_rows_many(&queries).await;
                if read.as_ref().is_ok_and(|r| r[0].is_err()) && !obj.broken {
                    // A cancel the client sent just before the release may have hit it.
                    read = obj.query_rows_many(&queries).await;
                }
                let (rows, counts, temp) = match read {
                    Ok(mut r) => {
                        let temp = r.pop().expect("three results");
                        let counts = r.pop().expect("three results");
                        (r.pop().expect("three results"), counts, temp)
                    }
                    Err(e) => (Err(e), Ok(Vec::new()), Ok(Vec::new())),
                };
                match rows {
                    Ok(rows) => self.ctx.adopt_session_settings(&self.state.owned, &rows),
                    Err(e) => {
                        let why = e.to_string();
                        self.state
                            .pool
                            .discard(obj, "session settings unreadable")
                            .await;
                        return Err(ClientError::ContextFailed(why));
                    }
                }
                if temp.is_err() {
                    // Its temporary buffers are frozen at another size: no other session
                    // could set `temp_buffers` there.
                    self.state.pool.discard(obj, "temp_buffers frozen").await;
                    return Ok(());
                }
                match self.check_statements(&mut obj, counts).await {
                    Held::Release => {}
                    Held::Pinned => {
                        obj.context = Some(self.ctx.fingerprint());
                        self.server = Some(obj);
                        return Ok(());
                    }
                    Held::Discard(why) => {
                        self.state.pool.discard(obj, why).await;
                        return Ok(());
                    }
                }
            }
            // The server now holds the client's context including any SET it just ran.
            obj.context = Some(self.ctx.fingerprint());
            self.state.pool.release(obj);
        }
        Ok(())
    }

    /// A dirty server's prepared statements against what rlsgate made there. SQL-level
    /// ones were made by dynamic SQL (a top-level `PREPARE` pins): they are the client's
    /// session state, so the client keeps the server (pinned, as for `PREPARE`) or, where
    /// it cannot pin, the server is discarded; never handed to another client. Fewer
    /// protocol-level ones than rlsgate prepared (a dynamic `DEALLOCATE ALL`): what the
    /// server holds is no longer known (every Parse is preceded by a Close). Unreadable
    /// counts: all are deallocated.
    async fn check_statements(
        &mut self,
        obj: &mut crate::upstream::conn::ServerConn,
        counts: Result<Vec<Vec<Option<String>>>, crate::upstream::conn::BackendError>,
    ) -> Held {
        let parsed = counts.ok().and_then(|rows| {
            let row = rows.first()?;
            let n = |i: usize| row.get(i)?.as_deref()?.parse::<usize>().ok();
            Some((n(0)?, n(1)?))
        });
        let Some((from_sql, protocol)) = parsed else {
            if obj.broken || obj.simple_query("DEALLOCATE ALL").await.is_err() {
                return Held::Discard("prepared statements unreadable");
            }
            obj.statements.clear();
            return Held::Release;
        };
        if from_sql > 0 {
            return match self.pin("SQL-level PREPARE (in dynamic SQL)") {
                Ok(()) => Held::Pinned,
                Err(_) => {
                    tracing::warn!(
                        "a transaction left SQL-level prepared statements (dynamic SQL) on \
                         its server, and the client cannot be pinned: server discarded"
                    );
                    Held::Discard("SQL-level prepared statements from dynamic SQL")
                }
            };
        }
        if protocol < obj.statements.len() {
            // Fewer than rlsgate made: the client's transaction deallocated them (a
            // dynamic DEALLOCATE ALL), and its own statements are gone, as directly
            // (but those parsed in the transaction, maybe after it).
            self.statements.clear_before_transaction();
        }
        if protocol != obj.statements.len() {
            obj.statements.forget_all();
        }
        Held::Release
    }

    /// True when nothing is in flight between client and server.
    pub(super) fn at_boundary(&self) -> bool {
        self.pipeline.is_empty()
            && !self.pipeline.batch_open()
            && !self.extended_open
            && !self.reapply_after_sync
            && self.reapply_names.is_empty()
            && self.up.at_boundary()
            && self.down.at_boundary()
            && self.to_server.is_empty()
            && self.server.as_ref().is_none_or(|s| s.rbuf.is_empty())
    }
}

/// What becomes of a dirty server after its prepared statements were checked.
enum Held {
    Release,
    /// The client keeps it for the rest of its session.
    Pinned,
    Discard(&'static str),
}
