//! Pool limits: exhaustion gives 53300 after the acquire timeout; release lets the next
//! client in.

use std::time::Duration;

use crate::harness::{db_error, scalar, wait_for, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_pool_gives_53300_then_recovers() {
    let env = Env::with(|c| {
        c.pool.size = 1;
        c.pool.acquire_timeout = Duration::from_millis(300);
    })
    .await;
    let holder = env.connect("acme").await;
    holder.simple_query("SELECT 1").await.unwrap();
    let err = env
        .connect_token("bob", &env.token("globex"))
        .await
        .err()
        .expect("pool exhausted");
    let (code, msg) = db_error(&err);
    assert_eq!(code, "53300");
    assert!(msg.contains("pool exhausted"), "{msg}");
    drop(holder);
    // The holder's connection returns to the pool once its Terminate is processed.
    wait_for("the holder's server to return to the pool", || async {
        env.idle_servers() == 1
    })
    .await;
    let c = env
        .connect_token("bob", &env.token("globex"))
        .await
        .expect("next client proceeds after release");
    let n: i64 = scalar(&c, "SELECT count(*) FROM customers").await;
    assert_eq!(n, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_clients_gets_53300() {
    let env = Env::with(|c| c.listen.max_clients = 1).await;
    let _first = env.connect("acme").await;
    let err = env
        .connect_token("bob", &env.token("globex"))
        .await
        .err()
        .expect("refused");
    assert_eq!(db_error(&err).0, "53300");
}
