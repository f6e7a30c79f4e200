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

use crate::harness::{db_error, rows, scalar, Env};

const MODES: [PoolMode; 2] = [PoolMode::Session, PoolMode::Transaction];

/// What `policy apply` revokes of these views (the raw rows stay closed to the app role).
pub(crate) const REVOKE_RAW: &str = "\
    REVOKE SELECT ON pg_catalog.pg_stat_activity, pg_catalog.pg_locks, pg_catalog.pg_stat_ssl, \
        pg_catalog.pg_stat_gssapi, pg_catalog.pg_prepared_statements, pg_catalog.pg_cursors \
        FROM PUBLIC; \
    REVOKE EXECUTE ON FUNCTION pg_catalog.pg_stat_get_activity(integer), \
        pg_catalog.pg_lock_status(), pg_catalog.pg_prepared_statement(), \
        pg_catalog.pg_cursor() FROM PUBLIC;";

async fn env(mode: PoolMode, guard: bool) -> Env {
    env_sized(mode, guard, 6).await
}

pub(crate) async fn env_sized(mode: PoolMode, guard: bool, size: usize) -> Env {
    let env = Env::with(|c| {
        c.pool.mode = mode;
        c.pool.size = size;
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
        let seen: i64 = scalar(
            &raw,
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%globex-secret-marker%' \
                 AND query NOT LIKE '%count(*)%'",
        )
        .await;
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
        let n: i64 = scalar(
            &acme,
            "SELECT count(*) FROM pg_stat_activity WHERE pid = pg_backend_pid()",
        )
        .await;
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

/// `(name, statement, parameter_types)` of `pg_prepared_statements` as `c` reads it.
async fn statements_seen(c: &Client, sql: &str) -> Vec<(String, String, String)> {
    simple_rows(c, sql)
        .await
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
        .collect()
}

/// `pg_prepared_statements` and `pg_cursors` show the client's own statements and
/// cursors under its own names, never another client's (another tenant's or its own
/// tenant's other session), although in transaction mode they all share one server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_and_cursors_are_the_clients_own() {
    for mode in MODES {
        // Transaction mode: one server, so every client's statements are on it.
        let size = if mode == PoolMode::Transaction { 1 } else { 6 };
        let env = env_sized(mode, true, size).await;
        let acme = env.connect("acme").await;
        let acme2 = env.connect("acme").await;
        let globex = env.connect("globex").await;
        let secret = globex.prepare("SELECT 'globex-secret-stmt'").await.unwrap();
        let other = acme2.prepare("SELECT 'acme2-stmt'").await.unwrap();
        let own = acme
            .prepare_typed(
                "SELECT 'acme-own-stmt', $1::int",
                &[tokio_postgres::types::Type::INT4],
            )
            .await
            .unwrap();
        if mode == PoolMode::Transaction {
            let a = simple_rows(&acme, "SELECT pg_backend_pid()").await;
            let g = simple_rows(&globex, "SELECT pg_backend_pid()").await;
            assert_eq!(a, g, "one server holds both tenants' statements");
        }
        for sql in [
            "SELECT name, statement, parameter_types::text FROM pg_prepared_statements",
            "SELECT p.name, p.statement, p.parameter_types::text \
             FROM pg_catalog.pg_prepared_statements p WHERE NOT from_sql OR from_sql",
            "SELECT pg_prepared_statements.name, statement, parameter_types::text \
             FROM pg_prepared_statements ORDER BY prepare_time",
        ] {
            let seen = statements_seen(&acme, sql).await;
            let texts: Vec<&str> = seen.iter().map(|s| s.1.as_str()).collect();
            assert!(
                seen.iter()
                    .any(|s| s.1.contains("acme-own-stmt") && s.2 == "{integer}"),
                "{mode:?} {sql}: acme's own statement is listed: {seen:?}"
            );
            for leaked in ["globex-secret-stmt", "acme2-stmt"] {
                assert!(
                    !texts.iter().any(|t| t.contains(leaked)),
                    "{mode:?} {sql}: another client's statement leaked: {seen:?}"
                );
            }
            assert!(
                !seen.iter().any(|s| s.0.starts_with("rlsgate")),
                "{mode:?} {sql}: a server-side name leaked: {seen:?}"
            );
        }
        // A prepared read lists itself (as directly: it is prepared when it runs).
        let listed = acme
            .query("SELECT statement FROM pg_prepared_statements", &[])
            .await
            .unwrap();
        let listed: Vec<String> = listed.iter().map(|r| r.get(0)).collect();
        // Transaction mode lists the client's text; session mode the server's, which is
        // the text as rewritten (a known limit, docs/architecture.md).
        let itself = match mode {
            PoolMode::Transaction => "SELECT statement FROM pg_prepared_statements",
            PoolMode::Session => "SELECT statement FROM rlsgate.pg_prepared_statements",
        };
        assert!(
            listed.iter().any(|t| t == itself),
            "{mode:?}: the prepared read lists itself: {listed:?}"
        );
        assert!(
            !listed.iter().any(|t| t.contains("globex")),
            "{mode:?}: {listed:?}"
        );
        // TABLE form; a closed statement is gone from the list.
        let n_before = simple_rows(&acme, "SELECT count(*) FROM pg_prepared_statements").await;
        drop(own);
        let n_after = simple_rows(&acme, "SELECT count(*) FROM pg_prepared_statements").await;
        let before: i64 = n_before[0][0].parse().unwrap();
        let after: i64 = n_after[0][0].parse().unwrap();
        assert_eq!(after, before - 1, "{mode:?}: the closed statement is gone");
        let table = simple_rows(&acme, "TABLE pg_prepared_statements").await;
        assert_eq!(
            table.len() as i64,
            after,
            "{mode:?}: TABLE pg_prepared_statements"
        );
        // The next tenant on the same server sees its own statement, not acme's.
        let seen = statements_seen(
            &globex,
            "SELECT name, statement, parameter_types::text FROM pg_prepared_statements",
        )
        .await;
        assert!(
            seen.iter().any(|s| s.1.contains("globex-secret-stmt")),
            "{mode:?}: {seen:?}"
        );
        assert!(
            !seen.iter().any(|s| s.1.contains("acme")),
            "{mode:?}: {seen:?}"
        );

        // Cursors: each client's own, in its own transaction.
        globex
            .batch_execute("BEGIN; DECLARE globex_cur CURSOR FOR SELECT 1")
            .await
            .unwrap();
        let cursors = simple_rows(&globex, "SELECT name FROM pg_cursors").await;
        assert_eq!(cursors, vec![vec!["globex_cur".to_owned()]], "{mode:?}");
        globex.batch_execute("COMMIT").await.unwrap();
        let cursors = simple_rows(
            &acme,
            "BEGIN; DECLARE acme_cur CURSOR FOR SELECT 2; SELECT name FROM pg_cursors",
        )
        .await;
        assert_eq!(cursors, vec![vec!["acme_cur".to_owned()]], "{mode:?}");
        acme.batch_execute("COMMIT").await.unwrap();
        let none = simple_rows(&acme, "SELECT count(*) FROM pg_cursors").await;
        assert_eq!(
            none[0][0], "0",
            "{mode:?}: no cursor outlives its transaction"
        );
        drop((secret, other));
    }
}

/// Transaction mode without the sealed context: `pg_prepared_statements` is still the
/// client's own list (rlsgate builds it), never the pooled server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsealed_transaction_mode_lists_only_the_clients_statements() {
    let env = Env::with(|c| {
        c.pool.mode = PoolMode::Transaction;
        c.pool.size = 1;
        c.tenant.sealed = Some(false);
    })
    .await;
    let globex = env.connect("globex").await;
    let _secret = globex.prepare("SELECT 'globex-secret-stmt'").await.unwrap();
    let acme = env.connect("acme").await;
    let _own = acme.prepare("SELECT 'acme-own-stmt'").await.unwrap();
    let seen = simple_rows(&acme, "SELECT statement FROM pg_prepared_statements").await;
    assert_eq!(seen, vec![vec!["SELECT 'acme-own-stmt'".to_owned()]]);
    // The raw rows stay closed: the guard refuses what it can see.
    let e = acme
        .simple_query("DO $$ BEGIN PERFORM * FROM pg_catalog.pg_prepared_statements; END $$")
        .await
        .unwrap_err();
    assert_eq!(db_error(&e).0, "42501");
}
