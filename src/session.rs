//! One client session in either pool mode: the startup answer, then one event loop that
//! binds a server (for the whole session, or per transaction), makes sure the server
//! holds the client's context before any client message reaches it, and forwards
//! messages byte-exact both ways.
//!
//! Messages the proxy injects (context, re-applied context) travel pipelined in the same
//! write as the client's messages, each with its own Sync boundary; their replies are
//! consumed by the proxy (see [`crate::session::pipeline`]), so they cost no extra round trip.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use deadpool::managed::Object;
use pgwire::tokio::server::MaybeTls;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::io::poll_read_buf;
use tokio_util::sync::CancellationToken;

use crate::config::{ChannelScope, PoolMode};
use crate::metrics::Metrics;
use crate::session::cancel::CancelTarget;
use crate::session::error::{fatal, ClientError, IdleTimeout};
use crate::session::pipeline::Pipeline;
use crate::session::prepared::ClientStatements;
use crate::session::shared::Authenticated;
use crate::session::shared::Shared;
use crate::sql::encoding::ClientEncoding;
use crate::tenant::SessionContext;
use crate::upstream::pool::Manager;
use crate::wire::protocol::{self, frontend as fe, Scanner, Step, TxStatus};

pub mod cancel;
pub mod error;
mod link;
mod messages;
pub mod pipeline;
pub mod prepared;
mod replies;
mod settings;
pub mod shared;
mod statements;

/// Read-buffer growth step; large enough to batch many small messages per syscall.
const READ_CHUNK: usize = 16 * 1024;

/// How the session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Terminate,
    ClientEof,
    ServerEof,
    Shutdown,
    /// A `[pool]` idle limit passed (the limit and its value).
    Idle(IdleTimeout, Duration),
}

/// Event from the sockets.
enum Event {
    ClientData,
    ServerData,
    ServerWritten,
    Terminate,
    ClientEof,
    ServerEof,
}

/// Per-client session state.
struct Session<'s> {
    state: &'s Shared,
    mode: PoolMode,
    client: MaybeTls,
    cbuf: BytesMut,
    up: Scanner,
    down: Scanner,
    server: Option<Object<Manager>>,
    /// Bytes queued for the bound server.
    to_server: BytesMut,
    /// Replies the bound server owes, and to whom.
    pipeline: Pipeline,
    /// Error seen in the proxy-owned reply being consumed.
    proxy_error: Option<protocol::ErrorFields>,
    /// The client's named statements (transaction mode).
    statements: ClientStatements,
    /// Extended-protocol messages sent since the last Sync.
    extended_open: bool,
    /// Transaction status of the client as last reported.
    tx: TxStatus,
    ctx: SessionContext,
    key: (i32, i32),
    marker: String,
    /// Re-apply the context after the client's next sync point.
    reapply_after_sync: bool,
    /// Startup settings the client RESET: their startup values are set again after the
    /// client's next sync point (a full re-application covers them).
    reapply_names: Vec<String>,
    /// The client's last unnamed Parse (transaction mode), and whether the bound server
    /// has it (parsed by this client since the server was bound).
    unnamed: Option<BytesMut>,
    unnamed_here: bool,
    /// A FATAL ErrorResponse from the server was forwarded (no second FATAL of ours).
    server_fatal: bool,
    /// Held while the session leaves a backend, so no cancel of ours is in flight.
    cancel_gate: crate::session::cancel::CancelGate,
    /// Transaction mode: the client keeps its server until it disconnects.
    pinned: Option<Pinned<'s>>,
    /// This tenant's notification channel suffix (`tenant.channels = "tenant"`).
    channel_suffix: Option<String>,
    /// The tenant (session mode: scopes `pg_cancel_backend`/`pg_terminate_backend`).
    tenant: String,
    /// When the token stops vouching for the session (`exp` + leeway + session grace).
    expires: std::time::SystemTime,
    /// The client encoding the server reads each message in (`crate::sql::encoding`).
    encoding: ClientEncoding,
    /// What the client was told of its settings, and the custom names it used.
    settings: settings::ClientSettings,
    /// Statement copies prepared afresh on another server, being compared with the
    /// shape the client's statement was prepared with (transaction mode).
    copies: statements::Copies,
}

/// One of the `pool.max_pinned` slots, held by a pinned client; freed on drop.
struct Pinned<'m>(&'m Metrics);

impl<'m> Pinned<'m> {
    /// Takes a slot when fewer than `limit` are taken.
    fn take(metrics: &'m Metrics, limit: usize) -> Option<Pinned<'m>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        metrics
            .pinned_active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Metrics::inc(&metrics.pins);
        Some(Pinned(metrics))
    }
}

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        self.0.pinned_active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs an authenticated client's session to its end.
pub async fn run_session(
    state: &Shared,
    mut client: Authenticated,
    terminate: CancellationToken,
) -> Result<(), ClientError> {
    let ctx = match SessionContext::build(
        &state.config.tenant,
        &state.owned,
        &client.identity,
        &client.startup,
        state.sealer.as_ref(),
    ) {
        Ok(ctx) => ctx,
        Err(e) => return Err(fatal(&mut client.stream, e.into()).await),
    };
    let mode = state.config.pool.mode;
    let mut server = match link::bind_with_context(state, &ctx).await {
        Ok(s) => s,
        Err(e) => return Err(fatal(&mut client.stream, e).await),
    };
    // Session mode: the client sees its backend's real pid. Transaction mode: a virtual
    // pid, since the backend changes per transaction.
    let pid = match mode {
        PoolMode::Session => server.pid(),
        PoolMode::Transaction => rand::random::<i32>().abs().max(1),
    };
    let target = CancelTarget {
        server_pid: server.pid(),
        server_secret: server.secret(),
    };
    let (secret, cancel_gate) = state.cancel.issue_with_gate(pid, Some(target));
    let _key = KeyGuard { state, pid, secret };
    if mode == PoolMode::Session {
        state
            .cancel
            .register_tenant(pid, client.identity.tenant.as_ref());
    }

    let told = settings::ClientSettings::new(server.params());
    let mut out = BytesMut::with_capacity(512);
    protocol::put_auth_ok(&mut out);
    for (name, value) in server.params() {
        protocol::put_parameter_status(&mut out, name, value);
    }
    protocol::put_backend_key_data(&mut out, pid, secret);
    // Warnings the server gave while the startup settings were applied.
    for notice in std::mem::take(&mut server.notices) {
        out.extend_from_slice(&notice);
    }
    protocol::put_ready_for_query(&mut out, TxStatus::Idle);
    client.stream.write_all(&out).await?;
    client.stream.flush().await?;
    let server = match mode {
        PoolMode::Session => Some(server),
        PoolMode::Transaction => {
            state.cancel.retarget(pid, secret, None);
            state.pool.release(server);
            None
        }
    };
    let held = crate::sql::encoding::of_settings(ctx.client_settings(), &ctx.replay);
    let encoding = ClientEncoding::new(held, server.as_ref().map(|s| s.params()));
    let mut session = Session {
        encoding,
        state,
        mode,
        client: client.stream,
        cbuf: client.leftover,
        up: Scanner::new(),
        down: Scanner::new(),
        server,
        to_server: BytesMut::with_capacity(READ_CHUNK),
        pipeline: Pipeline::default(),
        statements: ClientStatements::new(
            state.statement_names.clone(),
            client.identity.tenant.as_ref(),
        ),
        proxy_error: None,
        extended_open: false,
        tx: TxStatus::Idle,
        ctx,
        key: (pid, secret),
        marker: format!("rlsgate_refused_{:08x}", rand::random::<u32>()),
        reapply_after_sync: false,
        reapply_names: Vec::new(),
        unnamed: None,
        unnamed_here: false,
        server_fatal: false,
        cancel_gate,
        pinned: None,
        channel_suffix: (state.config.tenant.channels == ChannelScope::Tenant)
            .then(|| crate::sql::channels::suffix(client.identity.tenant.as_ref())),
        tenant: client.identity.tenant.as_ref().to_owned(),
        expires: session_deadline(&state.config.auth.jwt, client.identity.exp),
        settings: told,
        copies: Default::default(),
    };
    let end = session.run(&terminate).await;
    session.finish(end).await
}

impl Session<'_> {
    /// The event loop.
    async fn run(&mut self, terminate: &CancellationToken) -> Result<End, ClientError> {
        let mut cancelled = pin!(terminate.cancelled());
        // Bytes the client pipelined behind its password are already buffered.
        if !self.cbuf.is_empty() && self.on_client_data().await? {
            return Ok(End::Terminate);
        }
        loop {
            let event = match self.idle_limit() {
                None => self.next_event(Some(cancelled.as_mut())).await?,
                Some((kind, limit)) => {
                    match tokio::time::timeout(limit, self.next_event(Some(cancelled.as_mut())))
                        .await
                    {
                        Ok(event) => event?,
                        Err(_) => return Ok(End::Idle(kind, limit)),
                    }
                }
            };
            match event {
                Event::Terminate => return Ok(End::Shutdown),
                Event::ClientEof => return Ok(End::ClientEof),
                Event::ServerEof => return Ok(End::ServerEof),
                Event::ServerWritten => {}
                Event::ClientData => {
                    if self.on_client_data().await? {
                        return Ok(End::Terminate);
                    }
                }
                Event::ServerData => self.on_server_data().await?,
            }
        }
    }

    /// The `[pool]` idle limit that applies while the session waits for its client with
    /// nothing owed by the server: inside a transaction (or an unsynced extended batch)
    /// `idle_transaction_timeout`, pinned `pinned_idle_timeout`, else
    /// `client_idle_timeout`; `None` when the server owes replies or the limit is 0.
    fn idle_limit(&self) -> Option<(IdleTimeout, Duration)> {
        if !self.pipeline.is_empty() || !self.to_server.is_empty() {
            return None;
        }
        let pool = &self.state.config.pool;
        let open = self.extended_open || self.pipeline.batch_open();
        let (kind, limit) = if self.tx != TxStatus::Idle || open {
            (IdleTimeout::Transaction, pool.idle_transaction_timeout)
        } else if self.pinned.is_some() && !pool.pinned_idle_timeout.is_zero() {
            (IdleTimeout::Pinned, pool.pinned_idle_timeout)
        } else {
            (IdleTimeout::Client, pool.client_idle_timeout)
        };
        (!limit.is_zero()).then_some((kind, limit))
    }

    /// Waits for the next thing to do: write queued bytes to the server, read the
    /// server, read the client (only when nothing is queued for the server, which gives
    /// backpressure), or shutdown.
    ///
    /// Without `cancelled` (`await_server`: a statement copy, a DEALLOCATE ALL) the client is
    /// not read and shutdown waits for the server's answer.
    async fn next_event(
        &mut self,
        mut cancelled: Option<std::pin::Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>>,
    ) -> Result<Event, ClientError> {
        let read_client = cancelled.is_some();
        let Session {
            client,
            cbuf,
            server,
            to_server,
            ..
        } = self;
        poll_fn(|cx| {
            if let Some(cancelled) = cancelled.as_mut() {
                if cancelled.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(Event::Terminate));
                }
            }
            if let Some(srv) = server.as_mut() {
                let srv = &mut **srv;
                if !to_server.is_empty() {
                    match std::pin::Pin::new(&mut srv.stream).poll_write(cx, to_server) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Ok(Event::ServerEof)),
                        Poll::Ready(Ok(n)) => {
                            to_server.advance(n);
                            if to_server.is_empty() {
                                let _ = std::pin::Pin::new(&mut srv.stream).poll_flush(cx);
                            }
                            return Poll::Ready(Ok(Event::ServerWritten));
                        }
                        Poll::Ready(Err(e)) => {
                            srv.broken = true;
                            return Poll::Ready(Err(ClientError::Upstream(e.into())));
                        }
                        Poll::Pending => {}
                    }
                }
                srv.rbuf.reserve(READ_CHUNK);
                match poll_read_buf(std::pin::Pin::new(&mut srv.stream), cx, &mut srv.rbuf) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Ok(Event::ServerEof)),
                    Poll::Ready(Ok(_)) => return Poll::Ready(Ok(Event::ServerData)),
                    Poll::Ready(Err(e)) => {
                        srv.broken = true;
                        return Poll::Ready(Err(ClientError::Upstream(e.into())));
                    }
                    Poll::Pending => {}
                }
            }
            if to_server.is_empty() && read_client {
                cbuf.reserve(READ_CHUNK);
                match poll_read_buf(std::pin::Pin::new(&mut *client), cx, cbuf) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Ok(Event::ClientEof)),
                    Poll::Ready(Ok(_)) => return Poll::Ready(Ok(Event::ClientData)),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Processes complete client messages: binds a server if needed, inspects SQL,
    /// queues everything for the server. Returns true on Terminate. Positions are
    /// relative to the start of `cbuf`, which `queue` advances.
    async fn on_client_data(&mut self) -> Result<bool, ClientError> {
        if std::time::SystemTime::now() > self.expires && self.cbuf.len() >= protocol::HEADER_LEN {
            // Nothing the client sends after its token's expiry reaches a server.
            return Err(ClientError::Auth(crate::auth::AuthError::Expired));
        }
        let mut pos = 0;
        loop {
            let (tag, start, end) = match self.up.step(&self.cbuf, pos, wanted_up).map_err(proto)? {
                Step::Pass { end, .. } if self.server.is_none() => {
                    // CopyData between transactions: ignored by PostgreSQL outside a COPY.
                    self.cbuf.advance(end);
                    pos = 0;
                    continue;
                }
                Step::Pass { end, .. } => {
                    pos = end;
                    continue;
                }
                Step::NeedMore { start } => {
                    pos = start;
                    break;
                }
                Step::Message { tag, start, end } => (tag, start, end),
            };
            if tag == fe::TERMINATE {
                self.queue(start);
                return Ok(true);
            }
            if self.server.is_none() && owes_nothing(tag) {
                // Transaction mode between transactions: a Flush, or COPY messages outside
                // a COPY, do nothing on a server (as directly); binding one for them would
                // hold it with nothing owed, never released.
                self.cbuf.advance(end);
                pos = 0;
                continue;
            }
            if self.server.is_none() {
                // Nothing precedes the first message of a transaction (start == 0 here):
                // the context goes first, then the client's bytes.
                self.bind().await?;
            }
            if let Some(copy) = self.copy_for(tag, start, end) {
                // The statement is prepared afresh on this server and compared with the
                // shape the client prepared it with before the message goes on: what
                // came before it goes first, then the same message is stepped again.
                self.queue(start);
                self.to_server.extend_from_slice(&copy);
                self.extended_open = true;
                self.await_server(Pipeline::comparing).await?;
                pos = 0;
                continue;
            }
            let replacement = match self.after_copy(tag) {
                Some(changed) => Some(changed),
                None => self.on_client_message(tag, start, end)?,
            };
            self.check_sync()?;
            pos = match replacement {
                Some(replacement) => {
                    self.queue(start);
                    self.cbuf.advance(end - start);
                    self.to_server.extend_from_slice(&replacement);
                    0
                }
                None => end,
            };
            // Only where the server cannot be skipping to a Sync: after a Sync, or after a
            // Query with no unsynced extended message before it. Its own Sync would end
            // the server's skipping early and run messages PostgreSQL would skip.
            let settled = tag == fe::SYNC || (tag == fe::QUERY && !self.extended_open);
            if self.reapply_after_sync && settled {
                self.reapply_after_sync = false;
                self.reapply_names.clear();
                self.queue(pos);
                pos = 0;
                self.reapply();
            } else if !self.reapply_names.is_empty() && settled {
                self.queue(pos);
                pos = 0;
                let names = std::mem::take(&mut self.reapply_names);
                if self.ctx.encode_reapply_names(&mut self.to_server, &names) {
                    self.pipeline.proxy(false);
                    self.unnamed_here = false;
                }
            }
            self.after_accounting()?;
            if self.pipeline.deallocating_pending() {
                // A DEALLOCATE ALL / DISCARD ALL (and the re-applied context behind it):
                // what follows waits for its outcome (are the client's statements still
                // there?), as directly.
                self.queue(pos);
                pos = 0;
                self.await_server(Pipeline::deallocating_pending).await?;
            }
        }
        if pos > 0 {
            if self.server.is_none() {
                self.bind().await?;
            }
            self.queue(pos);
        }
        self.emit_due_replies().await?;
        Ok(false)
    }

    /// Sends what is queued and reads the server while `pending` (a copy's Describe, a
    /// DEALLOCATE ALL, not answered or skipped yet): the client's messages wait behind it.
    async fn await_server(&mut self, pending: fn(&Pipeline) -> bool) -> Result<(), ClientError> {
        while pending(&self.pipeline) {
            // Writes and reads together: the server may be sending replies to what came
            // before while it reads the rest.
            match self.next_event(None).await? {
                Event::ServerData => self.on_server_data().await?,
                Event::ServerWritten => {}
                Event::ServerEof => {
                    return Err(ClientError::Upstream(
                        crate::upstream::conn::BackendError::Protocol(
                            "server closed the connection unexpectedly".into(),
                        ),
                    ))
                }
                // Not produced without `cancelled`: the client is not read meanwhile.
                Event::ClientData | Event::ClientEof | Event::Terminate => {}
            }
        }
        Ok(())
    }

    /// Queues the settings again (after the client's RESET ALL / DISCARD ALL).
    fn reapply(&mut self) {
        self.ctx.encode_reapply(&mut self.to_server);
        self.pipeline.proxy(false);
        // The context's own unnamed Parse replaced the client's.
        self.unnamed_here = false;
    }

    /// Acts on what the pipeline learned from the last message: statements whose Close
    /// the server skipped exist again; a proxy statement the server skipped did not take
    /// effect: the tenant context ends the session, a re-applied context is sent again
    /// at the client's next settled point (see `on_client_data`; re-applied contexts are
    /// only sent where the server is not skipping, so this is a safety net).
    pub(super) fn after_accounting(&mut self) -> Result<(), ClientError> {
        for (name, stmt) in self.pipeline.take_unclosed() {
            self.statements.restore(name, stmt);
        }
        if self.pipeline.take_skipped_close() {
            // A Close of the proxy's skipped (queued while the server skips to a Sync).
            if let Some(server) = self.server.as_mut() {
                server.statements.forget_all();
            }
        }
        match self.pipeline.take_skipped_proxy() {
            None => Ok(()),
            Some(true) => Err(ClientError::ContextFailed(
                "the server skipped the tenant context (an earlier error in the pipeline)".into(),
            )),
            Some(false) => {
                self.reapply_after_sync = true;
                Ok(())
            }
        }
    }

    /// Writes replies the proxy gives itself that are due (nothing the server owes comes
    /// before them), e.g. the CloseComplete of a Close followed by a Flush.
    async fn emit_due_replies(&mut self) -> Result<(), ClientError> {
        let mut wrote = false;
        while let Some(bytes) = self.pipeline.take_synthetic() {
            self.client.write_all(&bytes).await?;
            wrote = true;
        }
        if wrote {
            self.client.flush().await?;
        }
        Ok(())
    }

    /// Ends the session (the server is closed, not pooled) once the replies the server
    /// owes can no longer be followed one by one.
    fn check_sync(&self) -> Result<(), ClientError> {
        self.pipeline
            .desync()
            .map_or(Ok(()), |why| Err(desync_error(why)))
    }

    /// Moves `cbuf[..n]` to the server queue (one copy into a reused buffer).
    fn queue(&mut self, n: usize) {
        if n > 0 {
            self.to_server.extend_from_slice(&self.cbuf[..n]);
            self.cbuf.advance(n);
        }
    }
}

/// The end of a session's validity: the token's `exp`, plus `auth.jwt.leeway` (as at
/// login) and `auth.jwt.session_grace`.
fn session_deadline(jwt: &crate::config::JwtConfig, exp: u64) -> std::time::SystemTime {
    let after = Duration::from_secs(exp).saturating_add(jwt.leeway + jwt.session_grace);
    // An `exp` beyond what the clock can represent never expires in practice.
    std::time::UNIX_EPOCH
        .checked_add(after)
        .unwrap_or_else(|| std::time::UNIX_EPOCH + Duration::from_secs(i32::MAX as u64 * 16))
}

/// The error that ends a session whose replies can no longer be followed.
fn desync_error(why: &str) -> ClientError {
    ClientError::Protocol(format!(
        "rlsgate cannot follow this message sequence ({why}); the connection is closed"
    ))
}

fn proto(e: protocol::FrameError) -> ClientError {
    ClientError::Protocol(e.to_string())
}

/// Client messages that get no reply and change nothing on a server outside a COPY.
fn owes_nothing(tag: u8) -> bool {
    matches!(tag, fe::FLUSH | fe::COPY_DONE | fe::COPY_FAIL)
}

fn wanted_up(tag: u8) -> bool {
    matches!(
        tag,
        fe::TERMINATE
            | fe::QUERY
            | fe::SYNC
            | fe::FUNCTION_CALL
            | fe::PARSE
            | fe::BIND
            | fe::EXECUTE
            | fe::DESCRIBE
            | fe::CLOSE
            | fe::FLUSH
            | fe::COPY_DONE
            | fe::COPY_FAIL
    )
}

/// Removes the client's cancel key when the session ends.
struct KeyGuard<'a> {
    state: &'a Shared,
    pid: i32,
    secret: i32,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        self.state.cancel.remove(self.pid, self.secret);
        self.state.cancel.forget_tenant(self.pid);
    }
}
