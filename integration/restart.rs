//! PostgreSQL restarted under the proxy: sessions of the old server get an error, new
//! sessions afterwards work (dead pooled connections are replaced).

use crate::harness::{wait_for, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_errors_old_sessions_and_new_ones_work() {
    let mut env = Env::with(|c| c.pool.size = 2).await;
    // Warm the pool with two connections, then release one of them back to idle.
    let a = env.connect("acme").await;
    let b = env.connect("globex").await;
    a.simple_query("SELECT 1").await.unwrap();
    drop(b);
    wait_for("b's server to return to the pool", || async {
        env.idle_servers() == 1
    })
    .await;

    tokio::task::block_in_place(|| {
        env.pg.stop().unwrap();
        env.pg.start_again().unwrap();
    });
    assert!(
        a.simple_query("SELECT 1").await.is_err(),
        "session of the old server sees an error"
    );

    for tenant in ["acme", "globex", "acme"] {
        let c = env.connect(tenant).await;
        let rows = crate::harness::visible_customers(&c).await;
        assert!(
            !rows.is_empty() && rows.iter().all(|(t, _)| t == tenant),
            "{rows:?}"
        );
    }
}
