//! A guard bug is not a breach: with the statement guard off (`[guard] enabled =
//! false`, a test-only switch) and the demo's sealed policies, a client that may run any
//! SQL it likes still sees no row of another tenant, and the clients after it on the
//! same pooled server see exactly their own rows. Real PostgreSQL, both pool modes,
//! pools of one or two servers so that whatever an attack leaves behind carries over.

use rlsgate::config::{Config, PoolMode};
use tokio_postgres::Client;

use crate::harness::{db_error, scalar, visible_customers, Env};

/// The demo's tenants: the attacker is acme, the victim globex.
const ACME_ROWS: usize = 3;
const GLOBEX_ROWS: usize = 2;

async fn guard_off(mode: PoolMode, servers: usize) -> Env {
    Env::with(move |c: &mut Config| {
        c.guard.enabled = false;
        c.pool.mode = mode;
        c.pool.size = servers;
    })
    .await
}

/// `tenant`'s seal for backend `pid` at `seq`, as the proxy makes it: what a leak of
/// that seal (a log, a trigger) would give an attacker.
fn leaked_seal(env: &Env, tenant: &str, pid: i32, seq: i64) -> String {
    let key = env.config.tenant.seal_secret().unwrap().expect("sealed");
    rlsgate::tenant::hmac_hex(&key, format!("{tenant}:{pid}:{seq}").as_bytes())
}

/// Asserts that `client` sees no row of globex (an error counts as nothing seen).
async fn sees_no_globex(client: &Client, what: &str) {
    if let Ok(rows) = client.query("SELECT tenant_id FROM customers", &[]).await {
        let tenants: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        assert!(
            tenants.iter().all(|t| t == "acme"),
            "{what}: the attacker sees {tenants:?}"
        );
    }
    if let Ok(rows) = client.query("SELECT tenant_id FROM invoices", &[]).await {
        assert!(
            rows.iter().all(|r| r.get::<_, String>(0) == "acme"),
            "{what}: the attacker sees other invoices"
        );
    }
}

/// The next client of each tenant sees exactly its own rows.
async fn next_clients_are_right(env: &Env, what: &str) {
    for (tenant, n) in [("acme", ACME_ROWS), ("globex", GLOBEX_ROWS)] {
        let c = env.connect(tenant).await;
        let rows = visible_customers(&c).await;
        assert_eq!(rows.len(), n, "{what}: next {tenant} client sees {rows:?}");
        assert!(
            rows.iter().all(|(t, _)| t == tenant),
            "{what}: next {tenant} client sees {rows:?}"
        );
    }
}

/// The battery: each entry is run statement by statement by an acme client (errors are
/// expected for most; they do not stop the attack). `{pid}` is the attacker's backend,
/// `{seal}`/`{seq}` a valid globex seal for another backend.
const ATTACKS: &[&[&str]] = &[
    &["SET app.current_tenant = 'globex'"],
    &["SELECT set_config('app.current_tenant', 'globex', false)"],
    &["SET app.current_tenant = 'globex'", "RESET ALL"],
    &["SET app.current_tenant = 'globex'", "DISCARD ALL"],
    &["DISCARD TEMP", "SET app.current_tenant = 'globex'"],
    &[
        "SET rlsgate.seal = '{seal}'",
        "SELECT set_config('rlsgate.seal', '{seal}', false)",
        "SET app.current_tenant = 'globex'",
    ],
    &["SELECT rlsgate.enter('globex', {seq}, '{seal}')"],
    &["SELECT rlsgate.enter('globex', 1, '{old_seal}')"],
    &[
        "SET ROLE app_owner",
        "SET ROLE postgres",
        "SET SESSION AUTHORIZATION postgres",
    ],
    &["SELECT * FROM rlsgate.seal_key"],
    &[
        "SELECT rlsgate.set_seal_secret('attacker-chosen-secret-0123')",
        "SELECT rlsgate.enter('globex', {seq}, '{attacker_seal}')",
    ],
    &[
        "UPDATE rlsgate.backend_context SET tenant = 'globex'",
        "DELETE FROM rlsgate.backend_context",
        "TRUNCATE rlsgate.backend_context",
        "INSERT INTO rlsgate.backend_context VALUES ({pid}, NULL, NULL, 'globex', 9e15)",
    ],
    &[
        "CREATE TEMP TABLE backend_context (pid int, client_addr inet, client_port int, \
         tenant text, seq bigint)",
        "INSERT INTO pg_temp.backend_context VALUES ({pid}, NULL, NULL, 'globex', 1)",
        "CREATE TEMP TABLE rlsgate_context (tenant text, seq bigint)",
        "INSERT INTO pg_temp.rlsgate_context VALUES ('globex', 1)",
        "SET search_path = pg_temp, public",
    ],
    &[
        "CREATE FUNCTION pg_temp.pg_backend_pid() RETURNS int LANGUAGE sql AS 'SELECT {other_pid}'",
        "CREATE FUNCTION pg_temp.sha256(bytea) RETURNS bytea LANGUAGE sql AS 'SELECT $1'",
        "CREATE FUNCTION pg_temp.inet_client_port() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "SET search_path = pg_temp, pg_catalog, public",
        "SELECT rlsgate.enter('globex', {seq}, '{seal}')",
    ],
    &[
        "DO $$ BEGIN EXECUTE format('SELECT %s(%L, %L, false)', 'set_config', \
         'app.current_tenant', 'globex'); END $$",
    ],
];

/// Runs the battery with a pool of one server: every attack's leftovers meet the next
/// clients.
async fn battery(mode: PoolMode) {
    let env = guard_off(mode, 1).await;
    for (i, attack) in ATTACKS.iter().enumerate() {
        let what = format!("{mode:?} attack {i} {:?}", attack[0]);
        let attacker = env.connect("acme").await;
        let pid: i32 = scalar(&attacker, "SELECT pg_backend_pid()").await;
        let (other_pid, seq) = (pid + 1, i64::MAX / 2);
        let attacker_key = b"attacker-chosen-secret-0123";
        for sql in attack.iter() {
            let sql = sql
                .replace("{pid}", &pid.to_string())
                .replace("{other_pid}", &other_pid.to_string())
                .replace("{seq}", &seq.to_string())
                .replace("{seal}", &leaked_seal(&env, "globex", other_pid, seq))
                .replace("{old_seal}", &leaked_seal(&env, "globex", pid, 1))
                .replace(
                    "{attacker_seal}",
                    &rlsgate::tenant::hmac_hex(
                        attacker_key,
                        format!("globex:{pid}:{seq}").as_bytes(),
                    ),
                );
            // In one Query with the probe (same transaction, same server), then alone.
            let probe = format!("{sql}; SELECT 'probe', tenant_id FROM customers");
            if let Ok(msgs) = attacker.simple_query(&probe).await {
                let seen = crate::harness::rows(&msgs);
                let seen: Vec<_> = seen.iter().filter(|r| r[0] == "probe").collect();
                assert!(seen.iter().all(|r| r[1] == "acme"), "{what}: {seen:?}");
            }
            let _ = attacker.simple_query(&sql).await;
            sees_no_globex(&attacker, &what).await;
        }
        drop(attacker);
        next_clients_are_right(&env, &what).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_off_attacks_leak_nothing_in_session_mode() {
    battery(PoolMode::Session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_off_attacks_leak_nothing_in_transaction_mode() {
    battery(PoolMode::Transaction).await;
}

/// The (pid, seq) globex's last seal used on its backend, read from the database the
/// way a leak would reveal it.
async fn globex_entry(env: &Env) -> (i32, i64) {
    let row = env
        .admin()
        .await
        .query_one(
            "SELECT pid, seq FROM rlsgate.backend_context WHERE tenant = 'globex' \
             ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Seals globex really used, replayed by acme on the same server and on another one,
/// after every way of wiping session state: refused every time (stale on the same
/// backend, not verifying on another), no globex row. In transaction mode a statement
/// may run on either server, so the loop goes on until a replay met globex's own
/// backend (a "stale" refusal).
async fn replay(mode: PoolMode) {
    let env = guard_off(mode, 2).await;
    let globex = env.connect("globex").await;
    assert_eq!(visible_customers(&globex).await.len(), GLOBEX_ROWS);
    let (gpid, gseq) = globex_entry(&env).await;
    let seal = leaked_seal(&env, "globex", gpid, gseq);
    // Session mode: globex keeps its server, so this client is on the other one.
    let other = env.connect("acme").await;
    assert_eq!(visible_customers(&other).await.len(), ACME_ROWS);
    drop(globex);
    let mut refusals = Vec::new();
    for _ in 0..20 {
        let attacker = env.connect("acme").await;
        assert_eq!(visible_customers(&attacker).await.len(), ACME_ROWS);
        for wipe in ["SELECT 1", "DISCARD ALL", "DISCARD TEMP", "RESET ALL"] {
            let _ = attacker.simple_query(wipe).await;
            let sql = format!("SELECT rlsgate.enter('globex', {gseq}, '{seal}')");
            let err = attacker.simple_query(&sql).await.err().expect("refused");
            let (code, message) = db_error(&err);
            assert_eq!(code, "28000", "{message}");
            assert!(
                message.contains("stale") || message.contains("does not verify"),
                "{message}"
            );
            refusals.push(message);
            sees_no_globex(&attacker, &format!("{mode:?} replay after {wipe}")).await;
        }
        let stale = refusals.iter().any(|m| m.contains("stale"));
        if stale && refusals.iter().any(|m| m.contains("does not verify")) {
            drop((attacker, other));
            next_clients_are_right(&env, &format!("{mode:?} after replays")).await;
            return;
        }
        if mode == PoolMode::Session && stale {
            // Now replay it on the other server: hold this one, take the other.
            let _hold = attacker;
            drop(other);
            let attacker = env.connect("acme").await;
            let sql = format!("SELECT rlsgate.enter('globex', {gseq}, '{seal}')");
            let err = attacker.simple_query(&sql).await.err().expect("refused");
            assert!(db_error(&err).1.contains("does not verify"));
            sees_no_globex(&attacker, "replay on the other server").await;
            drop((_hold, attacker));
            next_clients_are_right(&env, "session mode after replays").await;
            return;
        }
    }
    panic!("{mode:?}: refusals {refusals:?}, globex's backend {gpid} never met");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_seals_do_not_replay_in_session_mode() {
    replay(PoolMode::Session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_seals_do_not_replay_in_transaction_mode() {
    let env = guard_off(PoolMode::Transaction, 2).await;
    let globex = env.connect("globex").await;
    assert_eq!(visible_customers(&globex).await.len(), GLOBEX_ROWS);
    let (gpid, gseq) = globex_entry(&env).await;
    let seal = leaked_seal(&env, "globex", gpid, gseq);
    drop(globex);
    let attacker = env.connect("acme").await;
    // Two open transactions hold both servers; which one is globex's is then known,
    // and the attacker's next statements run on whichever server is let go.
    let (first, second) = (occupy(&env).await, occupy(&env).await);
    let ((on_globex, _), (elsewhere, other_pid)) = if first.1 == gpid {
        (first, second)
    } else {
        (second, first)
    };
    assert_ne!(other_pid, gpid);
    let replays = |expect: &'static str| {
        let attacker = &attacker;
        let seal = seal.clone();
        async move {
            for wipe in ["SELECT 1", "DISCARD ALL", "DISCARD TEMP", "RESET ALL"] {
                let _ = attacker.simple_query(wipe).await;
                let sql = format!("SELECT rlsgate.enter('globex', {gseq}, '{seal}')");
                let err = attacker.simple_query(&sql).await.err().expect("refused");
                let (code, message) = db_error(&err);
                assert_eq!(code, "28000", "{message}");
                assert!(message.contains(expect), "after {wipe}: {message}");
                sees_no_globex(attacker, &format!("replay after {wipe}")).await;
            }
        }
    };
    // On globex's own backend: stale.
    on_globex.batch_execute("COMMIT").await.unwrap();
    replays("stale").await;
    // On the other backend: the seal does not verify.
    let (held, pid) = occupy(&env).await;
    assert_eq!(pid, gpid, "the only free server is globex's");
    elsewhere.batch_execute("COMMIT").await.unwrap();
    replays("does not verify").await;
    held.batch_execute("COMMIT").await.unwrap();
    drop((attacker, held, elsewhere, on_globex));
    next_clients_are_right(&env, "Transaction after replays").await;
}

/// A client holding a server in an open transaction, and that server's backend pid.
async fn occupy(env: &Env) -> (tokio_postgres::Client, i32) {
    let c = env.connect("acme").await;
    c.batch_execute("BEGIN").await.unwrap();
    let pid: i32 = scalar(&c, "SELECT pg_backend_pid()").await;
    (c, pid)
}

/// The seal is the default: the demo config has a secret, so it is sealed, and the
/// proxy's context runs `rlsgate.enter`; with the guard on nothing changes for clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_is_sealed_by_default() {
    let env = Env::start().await;
    assert_eq!(env.config.tenant.sealed, None);
    assert!(env.config.tenant.is_sealed());
    let c = env.connect("globex").await;
    let t: Option<String> = scalar(&c, "SELECT rlsgate.tenant()").await;
    assert_eq!(t.as_deref(), Some("globex"));
    assert_eq!(visible_customers(&c).await.len(), GLOBEX_ROWS);
}

/// The verified tenant survives the client's own `RESET ALL`/`DISCARD ALL` (it lives in
/// `rlsgate.backend_context`), even in the same Query, and re-applying the settings
/// inside the client's transaction neither commits nor breaks it. A read-only session
/// default (pgJDBC's `setReadOnly`) does not stop the context from being applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_survives_client_resets_and_read_only_defaults() {
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let env = guard_off(mode, 1).await;
        let c = env.connect("acme").await;
        c.batch_execute("BEGIN; INSERT INTO customers (name) VALUES ('in tx')")
            .await
            .unwrap();
        let msgs = c
            .simple_query("RESET ALL; SELECT count(*) FROM customers")
            .await
            .unwrap();
        assert_eq!(crate::harness::rows(&msgs), [["4"]], "{mode:?}");
        c.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(visible_customers(&c).await.len(), ACME_ROWS, "{mode:?}");
        c.batch_execute("DISCARD ALL").await.unwrap();
        assert_eq!(visible_customers(&c).await.len(), ACME_ROWS, "{mode:?}");
        c.batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            .await
            .unwrap();
        drop(c);
        let ro = env.connect("acme").await;
        ro.batch_execute("SET default_transaction_read_only = on")
            .await
            .unwrap();
        assert_eq!(visible_customers(&ro).await.len(), ACME_ROWS, "{mode:?}");
        // Another tenant takes the server over (transaction mode: while `ro` is idle).
        let ro = (mode == PoolMode::Transaction).then_some(ro);
        let g = env.connect("globex").await;
        g.batch_execute("SET default_transaction_read_only = on")
            .await
            .unwrap();
        assert_eq!(visible_customers(&g).await.len(), GLOBEX_ROWS, "{mode:?}");
        if let Some(ro) = ro {
            assert_eq!(visible_customers(&ro).await.len(), ACME_ROWS, "{mode:?}");
        }
    }
}
