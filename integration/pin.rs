//! Transaction pooling and session-only features (`pool.session_features`): a client that
//! needs one server for the rest of its session (temporary tables, LISTEN, WITH HOLD
//! cursors, session advisory locks, SQL PREPARE) is pinned to it, up to
//! `pool.max_pinned` clients; the server is closed when the client leaves. With
//! `session_features = "refuse"`, or past the limit, the statement gets 0A000.

use std::time::Duration;

use rlsgate::config::{PoolMode, SessionFeatures};
use rlsgate::metrics::Metrics;

use crate::harness::{db_error, listener, scalar, Env, Raw};

async fn txn_env(size: usize, features: SessionFeatures, max_pinned: Option<usize>) -> Env {
    Env::with(|c| {
        c.pool.mode = PoolMode::Transaction;
        c.pool.size = size;
        c.pool.session_features = features;
        c.pool.max_pinned = max_pinned;
        c.pool.acquire_timeout = Duration::from_secs(30);
    })
    .await
}

/// One pinned client keeps every kind of session state across its transactions while
/// another tenant's client runs transactions on the rest of the pool and never sees
/// it; a notification sent while the pinned client is idle reaches it; when it leaves,
/// its server is closed, so nothing it created is handed to anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_client_keeps_session_state_and_nothing_leaks() {
    let env = txn_env(2, SessionFeatures::Pin, None).await;
    let metrics = &env.proxy.state.metrics;
    let (a, mut notes) = listener(&env, "acme").await;
    let b = env.connect("globex").await;

    a.batch_execute("CREATE TEMP TABLE scratch (x int)")
        .await
        .unwrap();
    assert_eq!(Metrics::get(&metrics.pins), 1);
    let pid: i32 = scalar(&a, "SELECT pg_backend_pid()").await;
    a.batch_execute("INSERT INTO scratch VALUES (1), (2)")
        .await
        .unwrap();
    a.batch_execute("BEGIN; DECLARE held CURSOR WITH HOLD FOR SELECT x FROM scratch; COMMIT")
        .await
        .unwrap();
    a.batch_execute("PREPARE two AS SELECT 2; LISTEN jobs")
        .await
        .unwrap();
    let locked: bool = scalar(&a, "SELECT pg_try_advisory_lock(42)").await;
    assert!(locked);

    for i in 0..20 {
        // The other tenant's transactions run on the other server and see nothing.
        let r = b
            .query_one(
                "SELECT to_regclass('pg_temp.scratch') IS NULL, pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        assert!(
            r.get::<_, bool>(0),
            "temp table visible to another client ({i})"
        );
        assert_ne!(
            r.get::<_, i32>(1),
            pid,
            "another client ran on the pinned server"
        );
        let other_lock: bool = scalar(&b, "SELECT pg_try_advisory_xact_lock(42)").await;
        assert!(
            !other_lock,
            "the pinned client's session lock is still held"
        );
        // The pinned client stays on its server with all of its state.
        let r = a
            .query_one("SELECT count(*)::int, pg_backend_pid() FROM scratch", &[])
            .await
            .unwrap();
        assert_eq!((r.get::<_, i32>(0), r.get::<_, i32>(1)), (2, pid));
    }
    let fetched = a
        .simple_query("FETCH ALL FROM held; EXECUTE two")
        .await
        .unwrap();
    let rows = fetched
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(rows, 3);

    // Notified while idle: the pinned server's notification reaches the client, naming
    // the notifier by the pid its BackendKeyData gave it (not a pooled server's pid).
    // The other tenant's notification on the same channel name does not reach it.
    b.batch_execute("NOTIFY jobs, 'from globex'").await.unwrap();
    let mut notifier = Raw::connect(env.proxy.addr.port(), "n", &env.token("acme")).await;
    let mut q = bytes::BytesMut::new();
    postgres_protocol::message::frontend::query("NOTIFY jobs, 'from acme'", &mut q).unwrap();
    notifier.send(&q).await;
    notifier.until_ready(1).await;
    let note = tokio::time::timeout(Duration::from_secs(10), notes.recv())
        .await
        .expect("notification within 10 s")
        .expect("notification");
    let notifier_pid = notifier.key.expect("BackendKeyData").0;
    assert_eq!(
        note,
        (notifier_pid, "jobs".to_owned(), "from acme".to_owned())
    );

    // The pinned client leaves: its server is closed, not returned.
    let discarded = Metrics::get(&metrics.upstream_discarded);
    drop(a);
    let admin = env.admin().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let alive: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        if alive == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pinned server still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(Metrics::get(&metrics.upstream_discarded), discarded + 1);
    assert_eq!(
        metrics
            .pinned_active
            .load(std::sync::atomic::Ordering::Acquire),
        0
    );
    // Everyone after it starts clean and the lock is free.
    let c = env.connect("acme").await;
    let r = c
        .query_one(
            "SELECT to_regclass('pg_temp.scratch') IS NULL, pg_try_advisory_xact_lock(42)",
            &[],
        )
        .await
        .unwrap();
    assert!(r.get::<_, bool>(0) && r.get::<_, bool>(1));
}

/// Pinned clients cannot take the whole pool: past `pool.max_pinned` the statement is
/// refused with 0A000 naming the limit; a slot frees when its client leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinning_stops_at_max_pinned() {
    let env = txn_env(3, SessionFeatures::Pin, Some(1)).await;
    let a = env.connect("acme").await;
    a.batch_execute("LISTEN jobs").await.unwrap();
    let b = env.connect("globex").await;
    let err = b
        .batch_execute("CREATE TEMP TABLE t (x int)")
        .await
        .unwrap_err();
    let (code, msg) = db_error(&err);
    assert_eq!(code, "0A000", "{msg}");
    assert!(
        msg.contains("temporary table") && msg.contains("pool.max_pinned"),
        "{msg}"
    );
    // The refused client goes on with ordinary transactions.
    b.batch_execute("SELECT 1").await.unwrap();
    drop(a);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match b.batch_execute("CREATE TEMP TABLE t (x int)").await {
            Ok(()) => break,
            Err(e) => {
                assert_eq!(db_error(&e).0, "0A000");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "slot not freed: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    b.batch_execute("INSERT INTO t VALUES (1)").await.unwrap();
}

/// With `session_features = "refuse"` every such feature is refused with 0A000 in
/// transaction mode, naming the feature and pointing at session mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_only_features_are_refused_with_0a000() {
    let env = txn_env(2, SessionFeatures::Refuse, None).await;
    let c = env.connect("acme").await;
    for (sql, names) in [
        ("LISTEN jobs", "LISTEN"),
        (
            "BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT 1; COMMIT",
            "WITH HOLD",
        ),
        ("SELECT pg_advisory_lock(42)", "advisory lock"),
        ("CREATE TEMP TABLE scratch (x int)", "temporary table"),
        ("PREPARE p AS SELECT 1", "PREPARE"),
    ] {
        let err = c.batch_execute(sql).await.unwrap_err();
        let (code, msg) = db_error(&err);
        assert_eq!(code, "0A000", "{sql}: {msg}");
        assert!(
            msg.contains(names) && msg.contains("session"),
            "{sql}: {msg}"
        );
        let _ = c.batch_execute("ROLLBACK").await;
    }
    assert_eq!(Metrics::get(&env.proxy.state.metrics.pins), 0);
    // The transaction-scoped variants work.
    c.batch_execute("BEGIN; SELECT pg_advisory_xact_lock(42); CREATE TEMP TABLE t (x int) ON COMMIT DROP; COMMIT")
        .await
        .unwrap();
    // Session mode allows all of them.
    let env = Env::start().await;
    let c = env.connect("acme").await;
    c.batch_execute("LISTEN jobs; SELECT pg_advisory_lock(42); CREATE TEMP TABLE scratch (x int); PREPARE p AS SELECT 1")
        .await
        .unwrap();
}

/// A session-level advisory lock taken where the statement tree does not show it (a DO
/// block, a RETURNING list) still pins: the lock stays with the client's own server and
/// is released with it, never left on a pooled server for the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_session_advisory_locks_pin() {
    let env = txn_env(4, SessionFeatures::Pin, None).await;
    let metrics = &env.proxy.state.metrics;
    let a = env.connect("acme").await;
    a.batch_execute("DO $$ BEGIN PERFORM pg_advisory_lock(99); END $$")
        .await
        .unwrap();
    assert_eq!(Metrics::get(&metrics.pins), 1);
    let c = env.connect("acme").await;
    let locked: bool = scalar(
        &c,
        "UPDATE customers SET name = name WHERE id = (SELECT min(id) FROM customers) \
             RETURNING pg_try_advisory_lock(100)",
    )
    .await;
    assert!(locked);
    assert_eq!(Metrics::get(&metrics.pins), 2);

    // Every other server is free of both locks, for every transaction of another client.
    let b = env.connect("globex").await;
    for _ in 0..10 {
        assert_eq!(locks_free(&b).await, (false, false));
    }
    drop(a);
    drop(c);
    crate::harness::wait_for("the locks released with their servers", || async {
        locks_free(&b).await == (true, true)
    })
    .await;
}

/// Whether advisory locks 99 and 100 are free for `client`'s next transaction.
async fn locks_free(client: &tokio_postgres::Client) -> (bool, bool) {
    let r = client
        .query_one(
            "SELECT pg_try_advisory_xact_lock(99), pg_try_advisory_xact_lock(100)",
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}
