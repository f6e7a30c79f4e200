//! Transaction pooling: many clients on few servers, tenant context per transaction at
//! no extra round trip, prepared statements, and no cross-tenant leaks under errors,
//! cancels and clients dropping mid-transaction.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rlsgate::config::PoolMode;
use rlsgate::metrics::Metrics;

use crate::harness::{rows, scalar, visible_customers, wait_for, Env};

async fn txn_env(size: usize) -> Env {
    Env::with(|c| {
        c.pool.mode = PoolMode::Transaction;
        c.pool.size = size;
        // Generous: CI runs many tests at once on two cores.
        c.pool.acquire_timeout = Duration::from_secs(30);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_share_one_server_and_context_costs_nothing_when_it_matches() {
    let env = txn_env(1).await;
    let m = &env.proxy.state.metrics;
    let acme = env.connect("acme").await;
    let globex = env.connect("globex").await;
    // Two clients, one server: each transaction sees exactly its tenant.
    for _ in 0..5 {
        assert_eq!(
            visible_customers(&acme)
                .await
                .iter()
                .filter(|(t, _)| t == "acme")
                .count(),
            3
        );
        assert_eq!(
            visible_customers(&globex)
                .await
                .iter()
                .filter(|(t, _)| t == "globex")
                .count(),
            2
        );
        assert_eq!(visible_customers(&acme).await.len(), 3);
        assert_eq!(visible_customers(&globex).await.len(), 2);
    }
    assert_eq!(env.upstream_connects(), 1);

    // Same client, consecutive transactions on a server that already holds its context:
    // no proxy statement at all (context_reused), zero extra messages. (tokio-postgres
    // queues a Close + Sync for each dropped statement; that Sync takes the server and
    // applies its client's context. A round trip on each client comes back only after
    // its queued Closes, so none is left to interleave with the counts below.)
    globex.simple_query("SELECT 1").await.unwrap();
    acme.simple_query("SELECT 1").await.unwrap();
    let applied = Metrics::get(&m.context_applied);
    let reused = Metrics::get(&m.context_reused);
    for _ in 0..10 {
        let r = rows(
            &acme
                .simple_query("SELECT current_setting('app.current_tenant')")
                .await
                .unwrap(),
        );
        assert_eq!(r, vec![vec!["acme".to_owned()]]);
    }
    assert_eq!(
        Metrics::get(&m.context_applied),
        applied,
        "matching context: nothing sent"
    );
    assert!(Metrics::get(&m.context_reused) >= reused + 10);

    // Alternating tenants: the context is applied on every switch, pipelined with the
    // client's query; the proxy never waits for its own statement (no extra round trip):
    // its round-trip counter only moves at client startup.
    let trips = Metrics::get(&m.context_round_trips);
    let applied = Metrics::get(&m.context_applied);
    for i in 0..10 {
        let (c, want) = if i % 2 == 0 {
            (&globex, "globex")
        } else {
            (&acme, "acme")
        };
        let r = rows(
            &c.simple_query("SELECT DISTINCT tenant_id FROM customers")
                .await
                .unwrap(),
        );
        assert_eq!(r, vec![vec![want.to_owned()]]);
    }
    assert_eq!(Metrics::get(&m.context_applied), applied + 10);
    assert_eq!(
        Metrics::get(&m.context_round_trips),
        trips,
        "no round trip for context switches"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_prepared_statements_move_between_servers() {
    let env = txn_env(2).await;
    let acme = env.connect("acme").await;
    let globex = env.connect("globex").await;
    // tokio-postgres prepares named statements (Parse/Describe/Sync), then runs them
    // later (Bind/Execute/Sync), possibly on another server.
    let s_acme = acme
        .prepare("SELECT tenant_id, name FROM customers WHERE id > $1 ORDER BY id")
        .await
        .unwrap();
    let s_globex = globex
        .prepare("SELECT tenant_id, name FROM customers WHERE id > $1 ORDER BY id")
        .await
        .unwrap();
    let hold = env.connect("acme").await;
    let tx_hold = hold.simple_query("BEGIN").await.unwrap();
    drop(tx_hold);
    for i in 0..50i64 {
        let (c, s, want, n) = if i % 2 == 0 {
            (&acme, &s_acme, "acme", 3)
        } else {
            (&globex, &s_globex, "globex", 2)
        };
        let r = c.query(s, &[&0i64]).await.unwrap();
        assert_eq!(r.len(), n, "iteration {i}");
        assert!(r.iter().all(|row| row.get::<_, String>(0) == want));
    }
    hold.simple_query("COMMIT").await.unwrap();
    // Statement errors inside a pipeline do not poison the cache.
    let bad = acme.prepare("SELECT no_such_column FROM customers").await;
    assert!(bad.is_err());
    let again = acme
        .query("SELECT count(*) FROM customers", &[])
        .await
        .unwrap();
    assert_eq!(again[0].get::<_, i64>(0), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_mid_transaction_rolls_back_before_reuse() {
    let env = txn_env(1).await;
    let a = env.connect("acme").await;
    a.batch_execute(
        "BEGIN; INSERT INTO customers(name) VALUES ('uncommitted'); SET LOCAL work_mem = '77MB'",
    )
    .await
    .unwrap();
    drop(a);
    // b must get the very server a left mid-transaction, after the proxy rolled it back.
    wait_for(
        "a's server to be rolled back and back in the pool",
        || async { env.idle_servers() == 1 },
    )
    .await;
    let b = env.connect("globex").await;
    let r = rows(&b.simple_query("SELECT current_setting('work_mem'), current_setting('app.current_tenant'), (SELECT count(*) FROM customers)").await.unwrap());
    assert_eq!(
        r,
        vec![vec!["4MB".to_owned(), "globex".to_owned(), "2".to_owned()]]
    );
    assert_eq!(env.upstream_connects(), 1, "b reused a's server");
    let admin = env.admin().await;
    let n: i64 = scalar(
        &admin,
        "SELECT count(*) FROM customers WHERE name = 'uncommitted'",
    )
    .await;
    assert_eq!(n, 0);
}

/// Pool of 2, 40 concurrent clients of 8 tenants, 500 random transactions each: reads,
/// writes, failing transactions, cancels, clients dropping mid-transaction. Every row
/// read belongs to the reader's tenant; final per-tenant counts match the commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_clients_eight_tenants_random_transactions() {
    let env = std::sync::Arc::new(ledger_env().await);
    let leaks = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for client_no in 0..40 {
        let (env, leaks) = (env.clone(), leaks.clone());
        tasks.push(tokio::spawn(async move {
            let tenant = format!("t{}", client_no % 8);
            let mut rng = rand::rngs::StdRng::seed_from_u64(client_no as u64);
            let mut committed = 0i64;
            let mut c = env.connect(&tenant).await;
            for _ in 0..500 {
                match rng.random_range(0..100) {
                    0..=39 => {
                        if let Ok(m) = c.simple_query("SELECT DISTINCT tenant_id FROM ledger").await {
                            if rows(&m).iter().any(|row| row[0] != tenant) {
                                leaks.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    40..=69 => {
                        // A cancel aimed at an earlier statement can land here (PostgreSQL
                        // delivers cancels asynchronously, directly as well): then nothing
                        // commits.
                        let sql = format!("BEGIN; INSERT INTO ledger(client, n) VALUES ({client_no}, 1), ({client_no}, 2); COMMIT");
                        match c.batch_execute(&sql).await {
                            Ok(()) => committed += 2,
                            Err(e) => {
                                assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e}");
                                c.batch_execute("ROLLBACK").await.unwrap();
                            }
                        }
                    }
                    70..=79 => {
                        // Fails inside the transaction: nothing commits.
                        let sql = format!("BEGIN; INSERT INTO ledger(client, n) VALUES ({client_no}, 9); SELECT 1/0; COMMIT");
                        assert!(c.batch_execute(&sql).await.is_err());
                        c.batch_execute("ROLLBACK").await.unwrap();
                    }
                    80..=84 => {
                        // Writing another tenant's row is refused by the policy.
                        let sql = format!("INSERT INTO ledger(tenant_id, client, n) VALUES ('t{}', {client_no}, 5)", (client_no + 1) % 8);
                        assert!(c.batch_execute(&sql).await.is_err());
                    }
                    85..=89 => {
                        // A read-only query cancelled while it runs.
                        let token = c.cancel_token();
                        let canceller = tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            let _ = token.cancel_query(tokio_postgres::NoTls).await;
                        });
                        let _ = c.simple_query("SELECT pg_sleep(0.05), count(*) FROM ledger").await;
                        let _ = canceller.await;
                        let _ = c.simple_query("ROLLBACK").await;
                    }
                    90..=94 => {
                        // Drop the connection mid-transaction with an uncommitted write.
                        let _ = c.batch_execute(&format!("BEGIN; INSERT INTO ledger(client, n) VALUES ({client_no}, 7)")).await;
                        drop(c);
                        c = env.connect(&tenant).await;
                    }
                    _ => {
                        if let Ok(m) = c.simple_query("SELECT current_setting('app.current_tenant')").await {
                            if rows(&m)[0][0] != tenant {
                                leaks.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
            (tenant, committed)
        }));
    }
    let expected = collect_commits(tasks).await;
    assert_eq!(
        leaks.load(Ordering::Relaxed),
        0,
        "rows or context of another tenant were seen"
    );
    assert_ledger(&env, expected).await;
    assert!(
        env.proxy
            .state
            .metrics
            .clients_active
            .load(Ordering::Relaxed)
            >= 0
    );
}

/// A client's SET outside a transaction follows it to every later transaction (on any
/// server), and never reaches another client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_follow_the_client_and_only_it() {
    let env = txn_env(2).await;
    let a = env.connect("acme").await;
    let b = env.connect("globex").await;
    a.batch_execute("SET search_path TO pg_catalog, public")
        .await
        .unwrap();
    a.batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    a.batch_execute("SET LOCAL work_mem = '99MB'")
        .await
        .unwrap(); // outside a txn: no effect
                   // What pgJDBC's setTransactionIsolation / setReadOnly send.
    a.batch_execute(
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY",
    )
    .await
    .unwrap();
    let hold = env.connect("globex").await;
    for i in 0..20 {
        // Keep one server busy half of the time so transactions land on different servers.
        if i % 2 == 0 {
            hold.batch_execute("BEGIN").await.unwrap();
        }
        let r = rows(
            &a.simple_query(
                "SHOW search_path; SHOW TimeZone; SHOW work_mem; SHOW transaction_isolation; \
                 SHOW transaction_read_only",
            )
            .await
            .unwrap(),
        );
        assert_eq!(
            r,
            vec![
                vec!["pg_catalog, public".to_owned()],
                vec!["Asia/Tokyo".to_owned()],
                vec!["4MB".to_owned()],
                vec!["serializable".to_owned()],
                vec!["on".to_owned()]
            ],
            "a, {i}"
        );
        let r = rows(
            &b.simple_query("SHOW search_path; SHOW TimeZone; SHOW transaction_isolation")
                .await
                .unwrap(),
        );
        assert_eq!(r[0][0], "\"$user\", public", "b, {i}");
        assert_ne!(r[1][0], "Asia/Tokyo", "b, {i}");
        assert_eq!(r[2][0], "read committed", "b, {i}");
        if i % 2 == 0 {
            hold.batch_execute("COMMIT").await.unwrap();
        }
    }
    // RESET forgets; RESET ALL keeps the tenant.
    a.batch_execute("RESET TimeZone").await.unwrap();
    a.batch_execute("RESET ALL").await.unwrap();
    let r = rows(
        &a.simple_query("SHOW search_path; SHOW app.current_tenant")
            .await
            .unwrap(),
    );
    assert_eq!(
        r,
        vec![
            vec!["\"$user\", public".to_owned()],
            vec!["acme".to_owned()]
        ]
    );
}

/// pgbench through rlsgate in transaction mode, on pgbench's own tables with RLS on a
/// tenant column: simple, extended and prepared protocol, zero errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_all_protocols_through_transaction_mode() {
    // Four servers: the read-only runs (8 clients) still queue for them; the TPC-B runs
    // (4 clients) get one each. With two servers, the TPC-B -M prepared run once saw two
    // clients wait 30 s for a server in a fresh-clone CI run (not reproduced in 9 local
    // runs; see docs/next-steps.md).
    let env = txn_env(4).await;
    let pgbench = env.pg.bin_dir().join("pgbench");
    let init = std::process::Command::new(&pgbench)
        .args([
            "-i",
            "-s",
            "1",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &env.pg.port().to_string(),
            "-U",
            "postgres",
            "app",
        ])
        .output()
        .expect("pgbench is installed (postgresql-contrib)");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    env.pg
        .psql(
            "app",
            "ALTER TABLE pgbench_accounts ADD COLUMN tenant_id text NOT NULL DEFAULT 'acme';
             UPDATE pgbench_accounts SET tenant_id = 'globex' WHERE aid % 2 = 0;
             ALTER TABLE pgbench_accounts ENABLE ROW LEVEL SECURITY; ALTER TABLE pgbench_accounts FORCE ROW LEVEL SECURITY;
             CREATE POLICY t ON pgbench_accounts USING (tenant_id = current_setting('app.current_tenant', true));
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app_rls;",
        )
        .unwrap();
    for mode in ["simple", "extended", "prepared"] {
        let out = std::process::Command::new(&pgbench)
            .args(["-n", "-c", "8", "-j", "2", "-t", "200", "-M", mode, "-S"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &env.port().to_string(),
                "-U",
                "bench",
                "app",
            ])
            .env("PGPASSWORD", env.token("acme"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "-M {mode}: {stdout}\n{stderr}");
        assert!(
            stdout.contains("number of transactions actually processed: 1600/1600"),
            "-M {mode}: {stdout}"
        );
        assert!(
            !stdout.contains("number of failed transactions: 1") && !stderr.contains("ERROR"),
            "-M {mode}: {stderr}"
        );
    }
    // And a write workload (TPC-B-like) in all modes.
    for mode in ["simple", "extended", "prepared"] {
        let out = std::process::Command::new(&pgbench)
            .args(["-n", "-c", "4", "-j", "2", "-t", "100", "-M", mode])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &env.port().to_string(),
                "-U",
                "bench",
                "app",
            ])
            .env("PGPASSWORD", env.token("acme"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "-M {mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every account update went to the token's tenant's rows or none (RLS): globex untouched.
    let admin = env.admin().await;
    let changed: i64 = scalar(
        &admin,
        "SELECT count(*) FROM pgbench_accounts WHERE tenant_id = 'globex' AND abalance <> 0",
    )
    .await;
    assert_eq!(changed, 0);
}

/// The same random workload with named prepared statements (tokio-postgres prepares
/// each statement once per connection; executions land on whichever server is free).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_clients_prepared_statements_random_transactions() {
    let env = std::sync::Arc::new(ledger_env().await);
    let leaks = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for client_no in 0..40i32 {
        let (env, leaks) = (env.clone(), leaks.clone());
        tasks.push(tokio::spawn(async move {
            let tenant = format!("t{}", client_no % 8);
            let other = format!("t{}", (client_no + 1) % 8);
            let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + client_no as u64);
            let mut committed = 0i64;
            let mut c = env.connect(&tenant).await;
            let mut read = c
                .prepare("SELECT DISTINCT tenant_id FROM ledger")
                .await
                .unwrap();
            let mut ins = c
                .prepare("INSERT INTO ledger (client, n) VALUES ($1, $2)")
                .await
                .unwrap();
            for _ in 0..500 {
                match rng.random_range(0..100) {
                    0..=44 => {
                        let rows = c.query(&read, &[]).await.unwrap();
                        if rows.iter().any(|r| r.get::<_, String>(0) != tenant) {
                            leaks.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    45..=74 => {
                        c.batch_execute("BEGIN").await.unwrap();
                        c.execute(&ins, &[&client_no, &1i32]).await.unwrap();
                        c.execute(&ins, &[&client_no, &2i32]).await.unwrap();
                        c.batch_execute("COMMIT").await.unwrap();
                        committed += 2;
                    }
                    75..=84 => {
                        // An error inside the transaction: nothing commits.
                        c.batch_execute("BEGIN").await.unwrap();
                        c.execute(&ins, &[&client_no, &9i32]).await.unwrap();
                        assert!(c.execute("SELECT 1/0", &[]).await.is_err());
                        c.batch_execute("ROLLBACK").await.unwrap();
                    }
                    85..=89 => {
                        let err = c
                            .execute(
                                "INSERT INTO ledger (tenant_id, client, n) VALUES ($1, $2, 5)",
                                &[&other, &client_no],
                            )
                            .await
                            .unwrap_err();
                        assert_eq!(err.code().map(|c| c.code()), Some("42501"));
                    }
                    _ => {
                        // Drop mid-transaction, reconnect and prepare again.
                        c.batch_execute("BEGIN").await.unwrap();
                        c.execute(&ins, &[&client_no, &7i32]).await.unwrap();
                        drop((c, read, ins));
                        c = env.connect(&tenant).await;
                        read = c
                            .prepare("SELECT DISTINCT tenant_id FROM ledger")
                            .await
                            .unwrap();
                        ins = c
                            .prepare("INSERT INTO ledger (client, n) VALUES ($1, $2)")
                            .await
                            .unwrap();
                    }
                }
            }
            (tenant, committed)
        }));
    }
    let expected = collect_commits(tasks).await;
    assert_eq!(
        leaks.load(Ordering::Relaxed),
        0,
        "rows or context of another tenant were seen"
    );
    assert_ledger(&env, expected).await;
}

/// A client's own Parse is always a fresh prepare, even when the server holds the same
/// text from before a schema change (as it would be directly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reparse_after_ddl_sees_the_new_shape() {
    let env = txn_env(1).await;
    env.pg
        .psql(
            "app",
            "CREATE TABLE shapes (id int PRIMARY KEY, a int); INSERT INTO shapes VALUES (1, 10);
             GRANT SELECT ON shapes TO app_rls;",
        )
        .unwrap();
    let c = env.connect("acme").await;
    let s1 = c.prepare("SELECT * FROM shapes").await.unwrap();
    assert_eq!(c.query(&s1, &[]).await.unwrap()[0].len(), 2);
    drop(s1);
    env.pg
        .psql("app", "ALTER TABLE shapes ADD COLUMN b text DEFAULT 'x'")
        .unwrap();
    let s2 = c.prepare("SELECT * FROM shapes").await.unwrap();
    assert_eq!(s2.columns().len(), 3, "fresh prepare after ALTER TABLE");
    let rows = c.query(&s2, &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, String>(2), "x");
}

/// Transaction-mode environment (pool of 2) with a `ledger` table under forced RLS.
async fn ledger_env() -> Env {
    let env = txn_env(2).await;
    env.pg
        .psql(
            "app",
            "CREATE TABLE ledger (id bigserial PRIMARY KEY,
                 tenant_id text NOT NULL DEFAULT current_setting('app.current_tenant'),
                 client int NOT NULL, n int NOT NULL);
             ALTER TABLE ledger ENABLE ROW LEVEL SECURITY; ALTER TABLE ledger FORCE ROW LEVEL SECURITY;
             CREATE POLICY t ON ledger USING (tenant_id = current_setting('app.current_tenant', true))
                 WITH CHECK (tenant_id = current_setting('app.current_tenant', true));
             GRANT SELECT, INSERT ON ledger TO app_rls; GRANT USAGE ON SEQUENCE ledger_id_seq TO app_rls;",
        )
        .unwrap();
    env
}

/// Waits (bounded) for the client tasks and sums the rows each tenant committed.
async fn collect_commits(
    tasks: Vec<tokio::task::JoinHandle<(String, i64)>>,
) -> HashMap<String, i64> {
    let mut expected: HashMap<String, i64> = HashMap::new();
    for t in tasks {
        let (tenant, n) = tokio::time::timeout(Duration::from_secs(240), t)
            .await
            .expect("bounded")
            .unwrap();
        *expected.entry(tenant).or_default() += n;
    }
    expected
}

/// Per-tenant row counts equal the commits; no failed, refused or abandoned row exists.
async fn assert_ledger(env: &Env, expected: HashMap<String, i64>) {
    let admin = env.admin().await;
    for (tenant, n) in expected {
        let got: i64 = admin
            .query_one(
                "SELECT count(*) FROM ledger WHERE tenant_id = $1",
                &[&tenant],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(got, n, "tenant {tenant}");
    }
    let bad: i64 = scalar(&admin, "SELECT count(*) FROM ledger WHERE n IN (5, 7, 9)").await;
    assert_eq!(bad, 0, "no failed, refused or abandoned write committed");
}
