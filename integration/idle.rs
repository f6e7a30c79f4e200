//! `[pool]` idle limits: `idle_transaction_timeout` (25P03) closes a client that holds a
//! server inside a transaction and sends nothing, rolling its work back;
//! `client_idle_timeout` and `pinned_idle_timeout` (57P05) close idle clients, which
//! frees the server a session-mode or pinned client holds. Every limit is off by default.

use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use rlsgate::config::PoolMode;

use crate::harness::{scalar, summarize, wait_for, Env, Raw};

const LIMIT: Duration = Duration::from_millis(300);

fn query(sql: &str) -> BytesMut {
    let mut q = BytesMut::new();
    frontend::query(sql, &mut q).unwrap();
    q
}

/// The FATAL the proxy sends when `raw` has been idle too long (within 10 s).
async fn closed_with(raw: &mut Raw) -> String {
    let msg = tokio::time::timeout(Duration::from_secs(10), raw.read())
        .await
        .expect("closed within 10 s");
    summarize(&[msg]).remove(0)
}

fn pinned_active(env: &Env) -> i64 {
    let metrics = &env.proxy.state.metrics;
    metrics
        .pinned_active
        .load(std::sync::atomic::Ordering::Acquire)
}

async fn visible_names(env: &Env, tenant: &str) -> Vec<String> {
    env.connect(tenant)
        .await
        .query("SELECT name FROM customers ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Transaction mode: an open transaction left idle is rolled back and its server
/// returns to the pool; a pinned client left idle is closed and its slot freed; an
/// ordinary idle client stays (client_idle_timeout is off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_limits_in_transaction_mode() {
    let env = Env::with(|c| {
        c.pool.mode = PoolMode::Transaction;
        c.pool.size = 2;
        c.pool.idle_transaction_timeout = LIMIT;
        c.pool.pinned_idle_timeout = LIMIT;
    })
    .await;
    let before = visible_names(&env, "acme").await;
    let token = env.token("acme");

    let mut open = Raw::connect(env.port(), "u", &token).await;
    open.send(&query(
        "BEGIN; INSERT INTO customers (name) VALUES ('never committed')",
    ))
    .await;
    open.until_ready(1).await;
    assert_eq!(
        closed_with(&mut open).await,
        "E 25P03 terminating connection due to idle-in-transaction timeout \
         (pool.idle_transaction_timeout = 300ms)"
    );
    wait_for("the server back in the pool", || async {
        env.idle_servers() >= 1
    })
    .await;
    assert_eq!(visible_names(&env, "acme").await, before);

    let mut pinned = Raw::connect(env.port(), "u", &token).await;
    pinned.send(&query("LISTEN jobs")).await;
    pinned.until_ready(1).await;
    assert_eq!(pinned_active(&env), 1);
    assert_eq!(
        closed_with(&mut pinned).await,
        "E 57P05 terminating connection due to idle-session timeout \
         (pool.pinned_idle_timeout = 300ms)"
    );
    wait_for("the pin slot freed", || async { pinned_active(&env) == 0 }).await;

    // Not pinned, not in a transaction: no limit applies.
    let idle = env.connect("acme").await;
    tokio::time::sleep(LIMIT * 3).await;
    let one: i32 = scalar(&idle, "SELECT 1").await;
    assert_eq!(one, 1);
}

/// Session mode holds a server per client: `client_idle_timeout` frees it, so the next
/// client of a one-server pool gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_frees_a_session_mode_server() {
    let env = Env::with(|c| {
        c.pool.mode = PoolMode::Session;
        c.pool.size = 1;
        c.pool.acquire_timeout = Duration::from_secs(10);
        c.pool.client_idle_timeout = LIMIT;
    })
    .await;
    let mut first = Raw::connect(env.port(), "u", &env.token("acme")).await;
    first.send(&query("SELECT 1")).await;
    first.until_ready(1).await;
    assert_eq!(
        closed_with(&mut first).await,
        "E 57P05 terminating connection due to idle-session timeout \
         (pool.client_idle_timeout = 300ms)"
    );
    // The one server went back to the pool (not discarded) and serves the next tenant.
    let connects = env.upstream_connects();
    let names = visible_names(&env, "globex").await;
    assert!(!names.is_empty());
    assert_eq!(env.upstream_connects(), connects);
}
