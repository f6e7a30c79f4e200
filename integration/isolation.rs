//! Transaction pooling hands one server to many client sessions. Whatever a session
//! leaves on it that rlsgate cannot see in the SQL (settings changed by `set_config` or
//! inside a transaction, temporary objects created through `search_path = pg_temp` or the
//! `pg_temp_N` name, a LISTEN or a lock taken by dynamic SQL, held cursors) must be gone
//! before the next session runs: `tenant::SWITCH_RESET` on every change of session.
//! And the functions that reach other backends of the shared role are refused.

use std::time::Duration;

use rlsgate::config::PoolMode;

use crate::harness::{db_error, rows, scalar, visible_customers, Env};

/// Transaction mode with one server, so every session uses the same backend.
async fn one_server() -> Env {
    Env::with(|c| {
        c.pool.mode = PoolMode::Transaction;
        c.pool.size = 1;
        c.pool.acquire_timeout = Duration::from_secs(30);
    })
    .await
}

/// A view named like the victim's table, created in the temp schema without the word
/// TEMP, would capture the next tenant's rows: it is dropped before the next session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_objects_never_reach_the_next_session() {
    let env = one_server().await;
    let a = env.connect("acme").await;
    let b = env.connect("globex").await;
    let globex_before = visible_customers(&b).await;

    a.batch_execute("SET search_path = pg_temp, public")
        .await
        .unwrap();
    // A lone statement without a function call or a trigger word still dirties.
    a.batch_execute("CREATE VIEW customers AS SELECT * FROM public.customers WHERE false")
        .await
        .unwrap();
    assert_eq!(visible_customers(&b).await, globex_before);
    a.batch_execute("DROP VIEW IF EXISTS pg_temp.customers")
        .await
        .unwrap();
    a.batch_execute(
        "CREATE TABLE loot (tenant_id text, name text); \
         CREATE FUNCTION steal(t text, n text) RETURNS bool LANGUAGE sql \
           AS 'INSERT INTO pg_temp.loot VALUES (t, n); SELECT true'; \
         CREATE VIEW customers AS SELECT c.* FROM public.customers c \
           WHERE pg_temp.steal(c.tenant_id, c.name)",
    )
    .await
    .unwrap();
    // The same through the temp schema's own name, without search_path.
    let ns = rows(
        &a.simple_query(
            "BEGIN; CREATE TEMP TABLE x (a int) ON COMMIT DROP; \
             SELECT pg_my_temp_schema()::regnamespace::text; COMMIT",
        )
        .await
        .unwrap(),
    )[0][0]
        .clone();
    a.batch_execute(&format!(
        "CREATE TABLE {ns}.invoices (id bigint, tenant_id text, status text)"
    ))
    .await
    .unwrap();

    // The victim's unqualified names resolve to its own tables.
    assert_eq!(visible_customers(&b).await, globex_before);
    b.batch_execute("INSERT INTO invoices (status) VALUES ('globex-secret')")
        .await
        .unwrap();
    let n: i64 = scalar(
        &b,
        "SELECT count(*) FROM public.invoices WHERE status = 'globex-secret'",
    )
    .await;
    assert_eq!(n, 1, "the victim's row went into the real table");

    // The attacker's objects were dropped when the server changed sessions.
    let err = a
        .simple_query("SELECT * FROM pg_temp.loot")
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "42P01");
}

/// Session state that is not a remembered SET does not reach the next session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_listens_and_locks_never_reach_the_next_session() {
    let env = one_server().await;
    let a = env.connect("acme").await;
    let b = env.connect("globex").await;
    a.batch_execute("SELECT set_config('statement_timeout', '4242', false)")
        .await
        .unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute("SET search_path = pg_temp, pg_catalog; SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    a.batch_execute("SELECT set_config('standard_conforming_strings', 'off', false)")
        .await
        .unwrap();
    // Dynamic SQL that the guard cannot read: a LISTEN and a session lock.
    a.batch_execute(
        "DO $$ BEGIN EXECUTE 'LIS' || 'TEN snoop'; \
         EXECUTE 'SELECT pg_' || 'advisory_lock(77)'; END $$",
    )
    .await
    .unwrap();

    let got = rows(
        &b.simple_query(
            "SHOW statement_timeout; SHOW search_path; SHOW TimeZone; \
             SHOW standard_conforming_strings; \
             SELECT count(*) FROM pg_listening_channels(); \
             SELECT pg_try_advisory_xact_lock(77); \
             SELECT current_setting('app.current_tenant')",
        )
        .await
        .unwrap(),
    );
    let defaults = rows(
        &env.admin()
            .await
            .simple_query("SHOW statement_timeout; SHOW search_path; SHOW TimeZone")
            .await
            .unwrap(),
    );
    assert_eq!(&got[..3], &defaults[..], "settings reset: {got:?}");
    assert_eq!(
        &got[3..],
        &[
            vec!["on".to_owned()],
            vec!["0".to_owned()],
            vec!["t".to_owned()],
            vec!["globex".to_owned()]
        ][..]
    );
}

/// Functions that reach the other backends of the shared upstream role are refused or
/// scoped: listing them is refused, cancelling or ending reaches only the server of the
/// same transaction, the pooled server's prepared statements (other sessions' statement
/// texts) cannot be read: the view lists the client's own, the function is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_that_reach_other_backends_are_refused() {
    let env = Env::with(|c| c.pool.mode = PoolMode::Transaction).await;
    let a = env.connect("acme").await;
    // Cancel/terminate reach only the server of this very transaction.
    let r = a
        .query_one(
            "SELECT pg_cancel_backend(1), pg_terminate_backend(1, 10)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, Option<bool>>(0), None);
    assert_eq!(r.get::<_, Option<bool>>(1), None);
    // Its own server's pid passes: the statement cancels itself.
    let err = a
        .simple_query("SELECT pg_cancel_backend(pg_backend_pid()), pg_sleep(5)")
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "57014");
    for sql in [
        "SELECT s FROM pg_stat_get_backend_idset() s",
        "SELECT pg_stat_get_backend_pid(1)",
        "SELECT * FROM pg_prepared_statement()",
        "DO $$ BEGIN PERFORM pg_terminate_backend(1); END $$",
    ] {
        let err = a.simple_query(sql).await.unwrap_err();
        assert_eq!(db_error(&err).0, "42501", "{sql}");
    }
    let _own = a.prepare("SELECT 'acme-own'").await.unwrap();
    let b = env.connect("globex").await;
    let _other = b.prepare("SELECT 'globex-other'").await.unwrap();
    let listed = a
        .query("SELECT name, statement FROM pg_prepared_statements", &[])
        .await
        .unwrap();
    let texts: Vec<String> = listed.iter().map(|r| r.get(1)).collect();
    assert!(texts.iter().any(|t| t == "SELECT 'acme-own'"), "{texts:?}");
    assert!(!texts.iter().any(|t| t.contains("globex")), "{texts:?}");
    for r in &listed {
        let name: String = r.get(0);
        assert!(!name.starts_with("rlsgate_"), "{name}");
    }
}

/// Session mode: a client's backend pid is real, and a tenant may cancel or end its own
/// sessions (drivers and tests do); another tenant's pid is turned into NULL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_cancel_and_terminate_reach_only_the_own_tenant() {
    let env = Env::start().await;
    let victim = env.connect("acme").await;
    let victim_pid: i32 = scalar(&victim, "SELECT pg_backend_pid()").await;
    let other = env.connect("globex").await;
    for sql in [
        "SELECT pg_cancel_backend($1)",
        "SELECT pg_terminate_backend($1)",
    ] {
        let r = other.query_one(sql, &[&victim_pid]).await.unwrap();
        assert_eq!(
            r.get::<_, Option<bool>>(0),
            None,
            "{sql}: not this tenant's backend"
        );
    }
    let one: i32 = scalar(&victim, "SELECT 1").await;
    assert_eq!(one, 1, "the other tenant's session is untouched");

    // The same tenant's other session may end it.
    let same = env.connect("acme").await;
    let ended: Option<bool> =
        scalar(&same, &format!("SELECT pg_terminate_backend({victim_pid})")).await;
    assert_eq!(ended, Some(true));
    crate::harness::wait_for("the victim's session ended", || async {
        victim.query_one("SELECT 1", &[]).await.is_err()
    })
    .await;
    // Nested calls cannot be scoped: refused.
    let err = same
        .simple_query("DO $$ BEGIN PERFORM pg_cancel_backend(1); END $$")
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "42501");
}
