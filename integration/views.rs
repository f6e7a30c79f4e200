//! Tenant-scoped system views (issue 12): reads of `pg_stat_activity`, `pg_locks`,
//! `pg_stat_ssl` and `pg_stat_gssapi` through rlsgate show the caller's tenant's
//! backends only (its own among them, so `pg_backend_pid()` agrees), in both pool modes,
//! by simple and extended protocol, qualified or not; another tenant's sessions, locks
//! and statement text never appear. With the raw views revoked from the app role (what
//! `rlsgate policy apply` does), the scoped views still work and dynamic SQL that
//! names the raw ones is refused by the database even with the guard off.

use std::time::Duration;

use rlsgate::config::PoolMode;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::harness::{db_error, rows, Env};

const MODES: [PoolMode; 2] = [PoolMode::Session, PoolMode::Transaction];

/// What `policy apply` revokes of these views (the raw rows stay closed to the app role).
pub(crate) const REVOKE_RAW: &str = "\
    REVOKE SELECT ON pg_catalog.pg_stat_activity, pg_catalog.pg_locks, pg_catalog.pg_stat_ssl, \
        pg_catalog.pg_stat_gssapi FROM PUBLIC; \
    REVOKE EXECUTE ON FUNCTION pg_catalog.pg_stat_get_activity(integer), \
        pg_catalog.pg_lock_status() FROM PUBLIC;";

async fn env(mode: PoolMode, guard: bool) -> Env {
    let env = Env::with(|c| {
        c.pool.mode = mode;
        c.pool.size = 6;
        c.pool.acquire_timeout = Duration::from_secs(5);
        c.guard.enabled = guard;
    })
    .await;
    env.pg
        .psql("app", REVOKE_RAW)
        .expect("revoke the raw views");
    env
}

pub(crate) async fn simple_rows(c: &Client, sql: &str) -> Vec<Vec<String>> {
    rows(
        &c.simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}")),
    )
}

/// The backends that hold `tenant` right now, as the superuser sees them.
pub(crate) async fn backends_of(env: &Env, tenant: &str) -> Vec<i32> {
    let admin = env.admin().await;
    admin
        .query(
            "SELECT pid FROM rlsgate.backend_context WHERE tenant = $1 ORDER BY pid",
            &[&tenant],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_views_show_only_the_tenants_own_backends() {
    for mode in MODES {
        let env = env(mode, true).await;
        let acme = env.connect("acme").await;
        let acme2 = env.connect("acme").await;
        let globex = env.connect("globex").await;
        // globex: a statement text of its own and a lock held in an open transaction.
        globex
            .batch_execute(
                "BEGIN; LOCK TABLE customers IN ROW EXCLUSIVE MODE; SELECT 'globex-secret-marker'",
            )
            .await
            .unwrap();
        acme2.simple_query("SELECT 'acme-marker'").await.unwrap();
        // The raw view holds globex's text (so the assertions below can fail).
        let raw = env.admin().await;
        let seen: i64 = raw
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%globex-secret-marker%' \
                 AND query NOT LIKE '%count(*)%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(seen, 1, "{mode:?}: globex's statement is in the raw view");
        let globex_pids = backends_of(&env, "globex").await;
        assert!(!globex_pids.is_empty());

        for sql in [
            "SELECT pid, coalesce(query, '') FROM pg_stat_activity",
            "SELECT pid, coalesce(query, '') FROM pg_catalog.pg_stat_activity a WHERE a.pid IS NOT NULL",
            "SELECT pid, '' FROM pg_locks WHERE pid IS NOT NULL",
            "SELECT pid, '' FROM PG_CATALOG.\"pg_stat_ssl\"",
            "SELECT pid, '' FROM pg_stat_gssapi",
        ] {
            // Simple protocol, then extended (prepared), in the same transaction as
            // pg_backend_pid() so transaction mode reads one server.
            let text = simple_rows(
                &acme,
                &format!("SELECT pg_backend_pid()::text; {sql}"),
            )
            .await;
            let own: i32 = text[0][0].parse().unwrap();
            let acme_pids = backends_of(&env, "acme").await;
            let listed: Vec<i32> = text[1..].iter().map(|r| r[0].parse().unwrap()).collect();
            let texts: Vec<&str> = text[1..].iter().map(|r| r[1].as_str()).collect();
            for pid in &listed {
                assert!(acme_pids.contains(pid), "{mode:?} {sql}: pid {pid} is not acme's {acme_pids:?}");
                assert!(!globex_pids.contains(pid), "{mode:?} {sql}: globex's pid {pid}");
            }
            assert!(
                !texts.iter().any(|t| t.contains("globex-secret-marker")),
                "{mode:?} {sql}: globex's statement text leaked: {texts:?}"
            );
            if !sql.contains("pg_stat_gssapi") && !sql.contains("pg_locks") {
                assert!(listed.contains(&own), "{mode:?} {sql}: own backend {own} missing: {listed:?}");
            }
            let prepared = acme.prepare(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            for row in acme.query(&prepared, &[]).await.unwrap() {
                let pid: i32 = row.get(0);
                assert!(!globex_pids.contains(&pid), "{mode:?} {sql} (prepared): globex's pid {pid}");
            }
        }
        // The other acme session is visible to acme, with its text (as directly).
        if mode == PoolMode::Session {
            let texts = simple_rows(&acme, "SELECT query FROM pg_stat_activity").await;
            assert!(
                texts.iter().any(|r| r[0].contains("acme-marker")),
                "{mode:?}: acme sees its own other session: {texts:?}"
            );
        }
        // globex sees itself, not acme.
        let listed = simple_rows(&globex, "SELECT pid FROM pg_stat_activity").await;
        let acme_pids = backends_of(&env, "acme").await;
        for r in &listed {
            let pid: i32 = r[0].parse().unwrap();
            assert!(
                !acme_pids.contains(&pid),
                "{mode:?}: globex sees acme's pid {pid}"
            );
        }
        assert!(!listed.is_empty(), "{mode:?}: globex sees its own backend");
        globex.batch_execute("COMMIT").await.unwrap();
    }
}

/// An ORM test fixture's query (find other idle sessions of this database before
/// dropping tables) works and sees only the tenant's sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orm_fixture_reading_pg_stat_activity_works() {
    for mode in MODES {
        let env = env(mode, true).await;
        let acme = env.connect("acme").await;
        let _globex = env.connect("globex").await;
        let fixture = "SELECT pid, state, backend_type FROM pg_stat_activity \
                       WHERE datname = current_database() AND pid <> pg_backend_pid() \
                       AND state = 'idle in transaction'";
        let found = acme.query(fixture, &[]).await.unwrap();
        let globex_pids = backends_of(&env, "globex").await;
        for row in &found {
            let pid: i32 = row.get(0);
            assert!(!globex_pids.contains(&pid), "{mode:?}: globex's pid {pid}");
        }
        let n: i64 = acme
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "{mode:?}: the client's own backend is in the view");
    }
}

/// Dynamic SQL cannot reach the raw rows: the guard refuses what it can see; with the
/// guard off, the database refuses (the raw views are revoked) while the rewritten reads
/// still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_sql_cannot_reach_the_raw_views() {
    for guard in [true, false] {
        let env = env(PoolMode::Session, guard).await;
        let acme = env.connect("acme").await;
        let _globex = env.connect("globex").await;
        for sql in [
            "DO $$ BEGIN PERFORM count(*) FROM pg_catalog.pg_stat_activity; END $$",
            "DO $$ BEGIN EXECUTE 'SELECT count(*) FROM pg_' || 'stat_activity'; END $$",
            "SELECT count(*) FROM pg_catalog.pg_stat_get_activity(NULL)",
            "SELECT * FROM pg_catalog.pg_lock_status()",
        ] {
            let e = acme
                .simple_query(sql)
                .await
                .err()
                .unwrap_or_else(|| panic!("guard {guard}: {sql} ran"));
            let (code, msg) = db_error(&e);
            assert_eq!(code, "42501", "guard {guard}: {sql}: {msg}");
        }
        let n = simple_rows(&acme, "SELECT count(*) FROM pg_stat_activity").await;
        assert_eq!(n[0][0], "1", "guard {guard}: one acme session");
        let messages = acme
            .simple_query("SELECT count(*) FROM rlsgate.pg_stat_activity")
            .await
            .unwrap();
        assert!(matches!(
            messages[0],
            SimpleQueryMessage::Row(_) | SimpleQueryMessage::RowDescription(_)
        ));
    }
}
