//! One client session (session pooling): bind a server with the client's tenant
//! context applied, answer the startup with the real server's parameters, then forward
//! messages byte-exact both ways until either side ends.

use bytes::{Buf, BytesMut};
use deadpool::managed::Object;
use pgwire::tokio::server::MaybeTls;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::backend::BackendError;
use crate::cancel::CancelTarget;
use crate::error::ClientError;
use crate::handshake::Authenticated;
use crate::metrics::Metrics;
use crate::pool::Manager;
use crate::protocol::{self, backend as be, frontend as fe, Scanner, Severity, Step, TxStatus};
use crate::server::State;
use crate::tenant::SessionContext;

/// Read-buffer growth step; large enough to batch many small messages per syscall.
const READ_CHUNK: usize = 16 * 1024;

/// How forwarding ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Client sent Terminate.
    Terminate,
    /// Client closed its socket.
    ClientEof,
    /// Server closed its socket (its FATAL, if any, was forwarded).
    ServerEof,
    /// The proxy is shutting down.
    Shutdown,
}

/// Client → server direction state.
#[derive(Default)]
struct Upward {
    scanner: Scanner,
    /// Messages sent that each produce one ReadyForQuery (Query, Sync, FunctionCall).
    sync_points: u64,
    /// Extended-protocol messages sent since the last Sync.
    extended_open: bool,
}

/// Server → client direction state.
struct Downward {
    scanner: Scanner,
    ready: u64,
    tx: TxStatus,
    params: Vec<(String, String)>,
}

/// Runs an authenticated client's session to its end.
pub async fn run_session(
    state: &State,
    mut client: Authenticated,
    terminate: CancellationToken,
) -> Result<(), ClientError> {
    let ctx = match SessionContext::build(
        &state.config.tenant,
        &state.owned,
        &client.identity,
        &client.startup,
    ) {
        Ok(ctx) => ctx,
        Err(e) => return fatal(&mut client.stream, e.into()).await,
    };
    let mut server = match bind_server(state, &ctx).await {
        Ok(s) => s,
        Err(e) => return fatal(&mut client.stream, e).await,
    };
    let target = CancelTarget {
        server_pid: server.pid(),
        server_secret: server.secret(),
    };
    let secret = state.cancel.issue(server.pid(), target);
    let _key = KeyGuard {
        state,
        pid: server.pid(),
        secret,
    };

    let mut out = BytesMut::with_capacity(512);
    protocol::put_auth_ok(&mut out);
    for (name, value) in server.params() {
        protocol::put_parameter_status(&mut out, name, value);
    }
    protocol::put_backend_key_data(&mut out, server.pid(), secret);
    protocol::put_ready_for_query(&mut out, TxStatus::Idle);
    client.stream.write_all(&out).await?;

    let mut up = Upward::default();
    let mut down = Downward {
        scanner: Scanner::new(),
        ready: 0,
        tx: server.tx,
        params: Vec::new(),
    };
    let end = forward(
        &mut client.stream,
        &mut client.leftover,
        &mut server,
        &mut up,
        &mut down,
        &terminate,
    )
    .await;
    for (n, v) in std::mem::take(&mut down.params) {
        server.note_parameter(&n, &v);
    }
    server.tx = down.tx;
    let at_boundary = up.sync_points == down.ready
        && !up.extended_open
        && up.scanner.at_boundary()
        && down.scanner.at_boundary()
        && server.rbuf.is_empty();
    debug!(end = ?end, at_boundary, "session ended");
    match end {
        Ok(End::Terminate) | Ok(End::ClientEof) => {
            state.pool.checkin(server, at_boundary).await;
            Ok(())
        }
        Ok(End::ServerEof) => {
            state
                .pool
                .discard(server, "server closed the connection")
                .await;
            let err = ClientError::Upstream(BackendError::Protocol(
                "server closed the connection unexpectedly".into(),
            ));
            fatal(&mut client.stream, err).await
        }
        Ok(End::Shutdown) => {
            state.pool.checkin(server, at_boundary).await;
            fatal(&mut client.stream, ClientError::Shutdown).await
        }
        Err(e) => {
            state.pool.discard(server, "forwarding failed").await;
            Err(e)
        }
    }
}

/// Checks out a server and applies the session context on it, replacing servers that
/// turn out to be dead (for example after a PostgreSQL restart).
async fn bind_server(state: &State, ctx: &SessionContext) -> Result<Object<Manager>, ClientError> {
    let mut buf = BytesMut::new();
    ctx.encode(&mut buf);
    let mut last = None;
    for _ in 0..3 {
        let mut obj = state.pool.checkout().await?;
        match obj.exchange(&buf, 1).await {
            Ok(()) => {
                Metrics::inc(&state.metrics.context_applied);
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

/// Forwards both directions concurrently until one side ends.
async fn forward(
    client: &mut MaybeTls,
    client_buf: &mut BytesMut,
    server: &mut Object<Manager>,
    up: &mut Upward,
    down: &mut Downward,
    terminate: &CancellationToken,
) -> Result<End, ClientError> {
    let server = &mut **server;
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut sr, mut sw) = tokio::io::split(&mut server.stream);
    let server_buf = &mut server.rbuf;
    tokio::select! {
        r = pump_up(&mut cr, &mut sw, client_buf, up) => r,
        r = pump_down(&mut sr, &mut cw, server_buf, down) => r,
        _ = terminate.cancelled() => Ok(End::Shutdown),
    }
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
    )
}

/// Client → server: forwards everything, stops at Terminate, counts sync points.
async fn pump_up<R, W>(
    cr: &mut R,
    sw: &mut W,
    buf: &mut BytesMut,
    st: &mut Upward,
) -> Result<End, ClientError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let mut pos = 0;
        loop {
            match st
                .scanner
                .step(buf, pos, wanted_up)
                .map_err(|e| ClientError::Protocol(e.to_string()))?
            {
                Step::Pass { end, .. } => pos = end,
                Step::Message { tag, start, end } => {
                    match tag {
                        fe::TERMINATE => {
                            if start > 0 {
                                sw.write_all(&buf[..start]).await?;
                            }
                            return Ok(End::Terminate);
                        }
                        fe::QUERY | fe::FUNCTION_CALL => st.sync_points += 1,
                        fe::SYNC => {
                            st.sync_points += 1;
                            st.extended_open = false;
                        }
                        _ => st.extended_open = true,
                    }
                    pos = end;
                }
                Step::NeedMore { start } => {
                    pos = start;
                    break;
                }
            }
        }
        if pos > 0 {
            sw.write_all(&buf[..pos]).await?;
            buf.advance(pos);
        }
        buf.reserve(READ_CHUNK);
        if cr.read_buf(buf).await? == 0 {
            return Ok(End::ClientEof);
        }
    }
}

fn wanted_down(tag: u8) -> bool {
    tag == be::READY_FOR_QUERY || tag == be::PARAMETER_STATUS
}

/// Server → client: forwards everything, tracks ReadyForQuery and ParameterStatus.
async fn pump_down<R, W>(
    sr: &mut R,
    cw: &mut W,
    buf: &mut BytesMut,
    st: &mut Downward,
) -> Result<End, ClientError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let mut pos = 0;
        loop {
            match st
                .scanner
                .step(buf, pos, wanted_down)
                .map_err(|e| ClientError::Protocol(e.to_string()))?
            {
                Step::Pass { end, .. } => pos = end,
                Step::Message { tag, start, end } => {
                    let msg = &buf[start..end];
                    if tag == be::READY_FOR_QUERY {
                        st.ready += 1;
                        st.tx = TxStatus::from_byte(msg[protocol::HEADER_LEN])
                            .unwrap_or(TxStatus::Failed);
                    } else if let Some((n, v)) = protocol::parse_parameter_status(msg) {
                        st.params.push((n.to_owned(), v.to_owned()));
                    }
                    pos = end;
                }
                Step::NeedMore { start } => {
                    pos = start;
                    break;
                }
            }
        }
        if pos > 0 {
            cw.write_all(&buf[..pos]).await?;
            buf.advance(pos);
        }
        buf.reserve(READ_CHUNK);
        if sr.read_buf(buf).await? == 0 {
            return Ok(End::ServerEof);
        }
    }
}

/// Sends a FATAL ErrorResponse for `err` and returns it.
pub async fn fatal<S: AsyncWrite + Unpin>(
    stream: &mut S,
    err: ClientError,
) -> Result<(), ClientError> {
    let mut buf = BytesMut::new();
    protocol::put_error(
        &mut buf,
        Severity::Fatal,
        err.sqlstate(),
        &err.client_message(),
    );
    let _ = stream.write_all(&buf).await;
    let _ = stream.shutdown().await;
    Err(err)
}

/// Removes the client's cancel key when the session ends.
struct KeyGuard<'a> {
    state: &'a State,
    pid: i32,
    secret: i32,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        self.state.cancel.remove(self.pid, self.secret);
    }
}
