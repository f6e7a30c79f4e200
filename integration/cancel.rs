//! CancelRequest: cancels the client's own query; a wrong key cancels nothing.

use std::time::{Duration, Instant};

use rlsgate::metrics::Metrics;
use tokio::io::AsyncWriteExt;

use crate::harness::{db_error, wait_for, Env};

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
    let pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
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
