//! CancelRequest: cancels the client's own query; a wrong key cancels nothing.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::harness::{db_error, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_own_query_and_wrong_key_cancels_nothing() {
    let env = Env::start().await;
    let c = env.connect("acme").await;
    let token = c.cancel_token();
    let started = Instant::now();
    let sleeper =
        tokio::spawn(async move { c.simple_query("SELECT pg_sleep(30)").await.map(|_| c) });
    tokio::time::sleep(Duration::from_millis(300)).await;
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
    tokio::time::sleep(Duration::from_millis(300)).await;
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
    sleeper
        .await
        .unwrap()
        .expect("query with a wrongly-keyed cancel completes");
    let m = &env.proxy.state.metrics;
    assert_eq!(rlsgate::metrics::Metrics::get(&m.cancels_forwarded), 1);
    assert!(rlsgate::metrics::Metrics::get(&m.cancels_ignored) >= 1);
}
