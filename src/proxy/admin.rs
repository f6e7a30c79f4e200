//! The admin HTTP endpoint (`[admin] addr`): `GET /metrics` in the Prometheus text
//! format (the counters of `metrics.rs` and the pool's gauges) and `GET /health` (200,
//! or 503 once shutdown has begun). HTTP/1.1 by hyper; no authentication, so it belongs
//! on loopback or a private interface.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::metrics::Metrics;
use crate::proxy::server::State;

/// A request's headers must arrive within this; a whole connection lives at most
/// `CONNECTION_LIMIT` (scrapers open one per scrape or keep one alive briefly).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_LIMIT: Duration = Duration::from_secs(60);

/// Serves the endpoint on `listener` until the task is aborted (at the very end of the
/// server's run, so `/health` answers 503 while sessions drain after `shutdown`).
pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: CancellationToken) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                debug!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let response = respond(&state, shutdown.is_cancelled(), &req);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIMIT, conn).await {
                Ok(Err(e)) => debug!(%peer, error = %e, "admin connection failed"),
                Err(_) => debug!(%peer, "admin connection closed after the time limit"),
                Ok(Ok(())) => {}
            }
        });
    }
}

fn respond(state: &State, shutting_down: bool, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            render(state),
        ),
        (&Method::GET, "/health") if shutting_down => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "shutting down\n".into(),
        ),
        (&Method::GET, "/health") => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, _) => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics or /health\n".into(),
        ),
        _ => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// One counter: name (after `rlsgate_`), help text, value.
type Counter<'m> = (&'static str, &'static str, &'m AtomicU64);
/// One gauge from an atomic.
type Gauge<'m> = (&'static str, &'static str, &'m AtomicI64);

/// The Prometheus text exposition of every counter and gauge.
pub fn render(state: &State) -> String {
    let m: &Metrics = &state.metrics;
    let counters: [Counter<'_>; 19] = [
        (
            "clients_total",
            "Client connections accepted.",
            &m.clients_total,
        ),
        (
            "clients_rejected_total",
            "Client connections refused at listen.max_clients.",
            &m.clients_rejected_max,
        ),
        ("auth_ok_total", "Tokens accepted.", &m.auth_ok),
        (
            "auth_failed_total",
            "Tokens refused (28P01).",
            &m.auth_failed,
        ),
        (
            "upstream_connects_total",
            "Server connections opened.",
            &m.upstream_connects,
        ),
        (
            "upstream_connect_errors_total",
            "Server connections that failed to open.",
            &m.upstream_connect_errors,
        ),
        (
            "upstream_discarded_total",
            "Server connections closed instead of pooled (state in doubt, pinned, broken).",
            &m.upstream_discarded,
        ),
        (
            "pool_timeouts_total",
            "Checkouts that waited pool.acquire_timeout in vain (53300).",
            &m.pool_timeouts,
        ),
        (
            "checkouts_total",
            "Server connections taken from the pool.",
            &m.checkouts,
        ),
        (
            "context_applied_total",
            "Tenant contexts applied to a server connection.",
            &m.context_applied,
        ),
        (
            "context_reused_total",
            "Transaction-mode binds where the server already held the client's context.",
            &m.context_reused,
        ),
        (
            "context_round_trips_total",
            "Round trips spent waiting for the proxy's own statements.",
            &m.context_round_trips,
        ),
        (
            "guard_refusals_total",
            "Statements refused by the tenant guard.",
            &m.guard_refusals,
        ),
        (
            "cancels_forwarded_total",
            "Cancel requests delivered to PostgreSQL.",
            &m.cancels_forwarded,
        ),
        (
            "cancels_ignored_total",
            "Cancel requests with an unknown key or no running query.",
            &m.cancels_ignored,
        ),
        (
            "pins_total",
            "Transaction-mode clients pinned to their server.",
            &m.pins,
        ),
        (
            "idle_timeouts_total",
            "Clients closed by a pool idle limit.",
            &m.idle_timeouts,
        ),
        (
            "statement_copies_total",
            "Transaction-mode prepared statements prepared again on another server and compared.",
            &m.statement_copies,
        ),
        (
            "statement_copies_changed_total",
            "Copies whose result type had changed (the client got 0A000, as directly).",
            &m.statement_copies_changed,
        ),
    ];
    let gauges: [Gauge<'_>; 2] = [
        (
            "clients_active",
            "Client sessions open now.",
            &m.clients_active,
        ),
        (
            "pinned_active",
            "Transaction-mode clients pinned now.",
            &m.pinned_active,
        ),
    ];
    let status = state.pool.status();
    let pool: [(&str, &str, usize); 4] = [
        ("pool_max_size", "pool.size.", status.max_size),
        ("pool_size", "Server connections open now.", status.size),
        (
            "pool_idle",
            "Server connections idle in the pool now.",
            status.available,
        ),
        (
            "pool_waiting",
            "Clients waiting for a server connection now.",
            status.waiting,
        ),
    ];
    let mut out = String::with_capacity(4096);
    for (name, help, value) in counters {
        metric(
            &mut out,
            name,
            help,
            "counter",
            value.load(Ordering::Relaxed),
        );
    }
    for (name, help, value) in gauges {
        metric(&mut out, name, help, "gauge", value.load(Ordering::Relaxed));
    }
    for (name, help, value) in pool {
        metric(&mut out, name, help, "gauge", value);
    }
    out
}

fn metric(out: &mut String, name: &str, help: &str, kind: &str, value: impl std::fmt::Display) {
    let _ = write!(
        out,
        "# HELP rlsgate_{name} {help}\n# TYPE rlsgate_{name} {kind}\nrlsgate_{name} {value}\n"
    );
}
