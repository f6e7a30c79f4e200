//! CancelRequest: cancels the client's own query; a wrong key cancels nothing.

use std::time::{Duration, Instant};

use rlsgate::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{db_error, scalar, summarize, wait_for, Env, Raw};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_own_query_and_wrong_key_cancels_nothing() {
    let env = Env::start().await;
    let c = env.connect("acme").await;
    let token = c.cancel_token();
    let started = Instant::now();
    let sleeper =
        tokio::spawn(async move { c.simple_query("SELECT pg_sleep(30)").await.map(|_| c) });
    env.wait_for_active_query("SELECT pg_sleep(30)").await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = sleeper.await.unwrap().err().expect("cancelled");
    assert_eq!(db_error(&err).0, "57014");
    assert!(started.elapsed() < Duration::from_secs(20));

    // A CancelRequest with the right pid but a wrong secret is ignored.
    let c = env.connect("globex").await;
    let pid: i32 = scalar(&c, "SELECT pg_backend_pid()").await;
    let sleeper =
        tokio::spawn(async move { c.simple_query("SELECT pg_sleep(1.5)").await.map(|_| ()) });
    env.wait_for_active_query("SELECT pg_sleep(1.5)").await;
    let mut s = tokio::net::TcpStream::connect(env.proxy.addr)
        .await
        .unwrap();
    let mut msg = Vec::new();
    msg.extend_from_slice(&16i32.to_be_bytes());
    msg.extend_from_slice(&80877102i32.to_be_bytes());
    msg.extend_from_slice(&pid.to_be_bytes());
    msg.extend_from_slice(&12345i32.to_be_bytes());
    s.write_all(&msg).await.unwrap();
    drop(s);
    // Nothing answers a CancelRequest: the proxy's counter says when it was handled.
    let m = &env.proxy.state.metrics;
    wait_for("the proxy to ignore the wrongly-keyed cancel", || async {
        Metrics::get(&m.cancels_ignored) >= 1
    })
    .await;
    sleeper
        .await
        .unwrap()
        .expect("query with a wrongly-keyed cancel completes");
    assert_eq!(Metrics::get(&m.cancels_forwarded), 1);
}

/// PostgreSQL closes a cancel connection once it has signalled the backend, and clients
/// (asyncpg, libpq's PQcancel) wait for that close before their next statement; rlsgate
/// closes it only after delivering the cancel upstream, else the cancel could land on
/// the client's next statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_connection_closes_after_delivery() {
    let env = Env::start().await;
    let mut raw = Raw::connect(env.proxy.addr.port(), "u", &env.token("acme")).await;
    let (pid, secret) = raw.key.expect("BackendKeyData");
    let mut q = bytes::BytesMut::new();
    postgres_protocol::message::frontend::query("SELECT pg_sleep(30)", &mut q).unwrap();
    raw.send(&q).await;
    env.wait_for_active_query("SELECT pg_sleep(30)").await;
    let mut s = tokio::net::TcpStream::connect(env.proxy.addr)
        .await
        .unwrap();
    let mut buf = bytes::BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(pid, secret, &mut buf);
    s.write_all(&buf).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("cancel connection closed within 10 s")
        .unwrap();
    assert!(rest.is_empty());
    assert_eq!(
        Metrics::get(&env.proxy.state.metrics.cancels_forwarded),
        1,
        "closed before the cancel was delivered"
    );
    let replies = summarize(&raw.until_ready(1).await);
    assert!(
        replies.iter().any(|r| r.starts_with("E 57014")),
        "{replies:?}"
    );
}
