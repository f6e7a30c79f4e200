//! Fifth red-team pass: the tenant-scoped `pg_prepared_statements` / `pg_cursors`
//! (`system_views.rs`, `rlsgate.*` views in `policies/sealed.sql`) and the keyed server
//! statement names of transaction pooling.
//!
//! The two findings (tests `dynamic_prepare_*` and `dynamic_deallocate_*`) failed on
//! commit 6f19ce6 and are fixed: at the release of a dirty server the proxy counts its
//! prepared statements (`session/link.rs`, `check_statements`; `tenant::STATEMENT_COUNTS*`).
//! The others are attacks that held, kept as regression tests.

use std::time::Duration;

use rlsgate::config::PoolMode;
use tokio_postgres::Client;

use crate::harness::{db_error, Env};
use crate::views::{simple_rows, REVOKE_RAW};

async fn env(mode: PoolMode, size: usize, guard: bool) -> Env {
    crate::views::env_sized(mode, guard, size).await
}

pub(crate) async fn pid(c: &Client) -> String {
    simple_rows(c, "SELECT pg_backend_pid()::text").await[0][0].clone()
}

/// Runs `sql` (by simple protocol) on every server of a pool of `size`: `size` clients
/// of `tenant` each hold a server in an open transaction, so each runs it on its own;
/// the COMMIT releases each (dirty) server, which is when rlsgate counts its statements.
/// Returns the clients (still connected).
pub(crate) async fn on_every_server(
    env: &Env,
    tenant: &str,
    size: usize,
    sql: &str,
) -> Vec<Client> {
    let mut held = Vec::new();
    for _ in 0..size {
        let c = env.connect(tenant).await;
        c.batch_execute("BEGIN").await.unwrap();
        held.push(c);
    }
    let mut pids = Vec::new();
    for c in &held {
        pids.push(pid(c).await);
        c.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {:?}", db_error(&e)));
    }
    for c in &held {
        c.batch_execute("COMMIT").await.unwrap();
    }
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), size, "one client per server");
    held
}

/// Finding 1, fixed (transaction mode): a SQL-level `PREPARE` run as dynamic SQL (`DO ...
/// EXECUTE 'PREPARE ...'`) is not seen by the pin check (`inspect::session_only` looks
/// at the top-level parse tree only) and is not dropped by the reset between clients
/// (`tenant::SWITCH_RESET` deliberately keeps prepared statements). So the statement
/// stays on the pooled server under the attacker's own, non-`rlsgate_` name, and the
/// next tenant on that server:
/// - sees it (name and text, literals included) in `rlsgate.pg_prepared_statements`,
///   which is documented as "the caller's own backend's statements" / "sees nothing of
///   others";
/// - cannot `PREPARE` that name itself (42P05 "already exists"), and an app that treats
///   42P05 as "already prepared" (a common idempotent-prepare idiom) then `EXECUTE`s the
///   attacker's SQL inside its own session, under its own tenant (the attacker chooses
///   the text: it could e.g. `pg_notify` the rows onto the attacker's own suffixed
///   channel, which rlsgate would deliver to the attacker's listener).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_prepare_does_not_survive_for_the_next_tenant() {
    // Pool of two: `max_pinned` is one, so globex's PREPARE/EXECUTE may pin.
    let env = env(PoolMode::Transaction, 2, true).await;
    on_every_server(
        &env,
        "acme",
        2,
        "DO $$ BEGIN EXECUTE $q$PREPARE acme_planted AS \
         SELECT 'planted-by-acme'::text AS t, rlsgate.tenant() AS tenant$q$; END $$",
    )
    .await;

    let globex = env.connect("globex").await;
    let mut problems = Vec::new();
    let listed = simple_rows(
        &globex,
        "SELECT name, statement FROM rlsgate.pg_prepared_statements",
    )
    .await;
    if !listed.is_empty() {
        problems.push(format!(
            "globex's rlsgate.pg_prepared_statements lists acme's statement: {listed:?}"
        ));
    }
    // The proxy-built list (what `pg_prepared_statements` becomes) is globex's own: empty.
    let own = simple_rows(&globex, "SELECT name FROM pg_prepared_statements").await;
    assert!(own.is_empty(), "{own:?}");

    // globex's own statement of that name (it pins globex to the server it is on).
    match globex
        .simple_query("PREPARE acme_planted AS SELECT 'globex-own'::text AS t, rlsgate.tenant()")
        .await
    {
        Ok(_) => {}
        Err(e) => problems.push(format!(
            "globex cannot PREPARE the name acme left on the server: {:?}",
            db_error(&e)
        )),
    }
    match globex.simple_query("EXECUTE acme_planted").await {
        Ok(m) => {
            let r = crate::harness::rows(&m);
            if r.iter().any(|r| r[0] == "planted-by-acme") {
                problems.push(format!(
                    "globex's EXECUTE ran acme's statement in globex's session: {r:?}"
                ));
            }
        }
        Err(e) => problems.push(format!("EXECUTE: {:?}", db_error(&e))),
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Finding 2, fixed (transaction mode, any tenant): dynamic SQL `DEALLOCATE ALL` drops every
/// statement the pooled server holds, other tenants' `rlsgate_…` statements included,
/// behind the proxy's back. A direct `DEALLOCATE ALL` makes the proxy forget the
/// server's statements (`ServerStatements::forget_all`); through `DO ... EXECUTE` it is
/// unseen, so the proxy keeps binding the other clients' statements by name and they
/// fail with 26000 on that server, again on every retry (the proxy never re-prepares
/// them: its per-server list still says they are there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_deallocate_all_does_not_break_other_tenants_statements() {
    let env = env(PoolMode::Transaction, 1, true).await;
    let globex = env.connect("globex").await;
    let acme = env.connect("acme").await;
    let st = globex.prepare("SELECT 'globex-stmt'::text").await.unwrap();
    let first: String = globex.query_one(&st, &[]).await.unwrap().get(0);
    assert_eq!(first, "globex-stmt");
    assert_eq!(pid(&acme).await, pid(&globex).await, "one server");

    acme.batch_execute("DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$")
        .await
        .expect("acme's DO block runs");

    let mut failures = Vec::new();
    for attempt in 0..3 {
        if let Err(e) = globex.query_one(&st, &[]).await {
            failures.push(format!("attempt {attempt}: {:?}", db_error(&e)));
        }
    }
    assert!(
        failures.is_empty(),
        "globex's prepared statement was dropped by acme: {failures:#?}"
    );
}

/// Held: names and texts built to break out of the proxy-built `VALUES` list (the tag
/// `$rlsgate$` and its numbered successors, quotes, backslashes with
/// `standard_conforming_strings` off, a trailing `$`, a long name) come back exactly as
/// the client prepared them, one row each, and the next tenant on the same server sees
/// none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_list_quoting_holds() {
    use crate::harness::Raw;
    let env = env(PoolMode::Transaction, 1, true).await;
    let mut raw = Raw::connect(env.port(), "user-acme", &env.token("acme")).await;
    let names: Vec<String> = vec![
        "a$rlsgate$b".into(),
        "$rlsgate1$x$rlsgate$".into(),
        "q'\"\\".into(),
        "trail$".into(),
        format!("long{}", "n".repeat(300)),
    ];
    let texts: Vec<String> = vec![
        "SELECT '$rlsgate$) , (1) --'::text".into(),
        "SELECT $rlsgate1$x$rlsgate1$::text /* $rlsgate$ */".into(),
        "SELECT 'a\\'::text".into(),
        "SELECT 1 -- $rlsgate2".into(),
        "SELECT 'é€'::text".into(),
    ];
    let mut out = bytes::BytesMut::new();
    for (n, t) in names.iter().zip(&texts) {
        rlsgate::wire::protocol::put_parse(&mut out, n, t);
    }
    rlsgate::wire::protocol::put_sync(&mut out);
    raw.send(&out).await;
    let _ = raw.until_ready(1).await;
    for sql in [
        "SET standard_conforming_strings = off",
        "SELECT name, statement FROM pg_prepared_statements ORDER BY prepare_time",
    ] {
        let mut q = bytes::BytesMut::new();
        rlsgate::wire::protocol::put_query(&mut q, sql);
        raw.send(&q).await;
        let msgs = raw.until_ready(1).await;
        if sql.starts_with("SELECT") {
            let mut got = crate::harness::data_rows(&msgs);
            got.sort();
            let mut want: Vec<Vec<String>> = names
                .iter()
                .zip(&texts)
                .map(|(n, t)| vec![n.clone(), t.clone()])
                .collect();
            want.sort();
            assert_eq!(got, want, "{:?}", crate::harness::summarize(&msgs));
        }
    }
    let globex = env.connect("globex").await;
    let seen = simple_rows(&globex, "SELECT name FROM pg_prepared_statements").await;
    assert!(seen.is_empty(), "{seen:?}");
    let seen = simple_rows(&globex, "SELECT name FROM rlsgate.pg_prepared_statements").await;
    assert!(seen.is_empty(), "{seen:?}");
}

/// Held: forms of naming the raw views that the rewrite misses or refuses, in
/// transaction mode with one shared server, with the guard on and off: each is refused
/// (by the rewrite, the guard, or the database's revokes) or shows only the client's
/// own statements; none shows globex's statement text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn around_the_statement_list_nothing_of_globex() {
    for guard in [true, false] {
        let env = env(PoolMode::Transaction, 1, guard).await;
        let globex = env.connect("globex").await;
        let _secret = globex
            .prepare("SELECT 'globex-secret-stmt'::text")
            .await
            .unwrap();
        let acme = env.connect("acme").await;
        for sql in [
            "SELECT statement FROM app.pg_catalog.pg_prepared_statements",
            "SELECT statement FROM pg_catalog.pg_prepared_statement()",
            "SELECT (pg_prepared_statement()).statement",
            "SELECT statement FROM ONLY pg_prepared_statements",
            "SELECT statement FROM pg_prepared_statements *",
            "SELECT statement FROM pg_prepared_statements TABLESAMPLE system (100)",
            "SELECT query_to_xml('select statement from pg_prepared_statements', true, true, '')::text",
            "SELECT statement FROM U&\"pg_prepared_statement\\0073\"",
            "SELECT statement FROM U&\"pg_prepared_statement!0073\" UESCAPE '!'",
            "SELECT statement FROM rlsgate.pg_prepared_statements",
            "SELECT statement FROM rlsgate.prepared_statements()",
            "EXPLAIN (ANALYZE, VERBOSE, COSTS OFF) SELECT statement FROM pg_prepared_statements",
            "DO $$ DECLARE r text; BEGIN SELECT string_agg(statement, ',') INTO r FROM pg_catalog.pg_prepared_statements; RAISE EXCEPTION '%', r; END $$",
            "SELECT statement FROM app.pg_catalog.pg_cursors",
            "SELECT name FROM pg_cursor()",
            "BEGIN; DECLARE c CURSOR FOR SELECT statement FROM pg_prepared_statements; FETCH ALL c; COMMIT",
        ] {
            let _ = acme.simple_query("ROLLBACK").await;
            match acme.simple_query(sql).await {
                Ok(m) => {
                    let r = crate::harness::rows(&m);
                    assert!(
                        !r.iter().flatten().any(|c| c.contains("globex-secret")),
                        "guard {guard}: {sql}: {r:?}"
                    );
                }
                Err(e) => {
                    let text = format!("{e:?}");
                    assert!(!text.contains("globex-secret"), "guard {guard}: {sql}: {text}");
                }
            }
        }
        let _ = acme.simple_query("ROLLBACK").await;
        for sql in [
            "COPY (SELECT statement FROM pg_prepared_statements) TO STDOUT",
            "COPY (SELECT statement FROM rlsgate.pg_prepared_statements) TO STDOUT",
        ] {
            use futures::StreamExt;
            let mut copied = Vec::new();
            if let Ok(s) = acme.copy_out(sql).await {
                futures::pin_mut!(s);
                while let Some(Ok(b)) = s.next().await {
                    copied.extend_from_slice(&b);
                }
            }
            let copied = String::from_utf8_lossy(&copied);
            assert!(
                !copied.contains("globex-secret"),
                "guard {guard}: {sql}: {copied}"
            );
        }
    }
}

/// Held: a `WITH HOLD` cursor opened by dynamic SQL (unseen by the pin check) does not
/// reach the next tenant on the same server: the DO block marks the server dirty and
/// the reset before the next client closes every cursor (`CLOSE ALL`), so globex's
/// `pg_cursors` (`rlsgate.pg_cursors`) is empty and the name is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_held_cursor_does_not_reach_the_next_tenant() {
    let env = env(PoolMode::Transaction, 1, true).await;
    let acme = env.connect("acme").await;
    acme.batch_execute(
        "DO $$ BEGIN EXECUTE $q$DECLARE acme_held CURSOR WITH HOLD FOR \
         SELECT 'acme-held'::text$q$; END $$",
    )
    .await
    .unwrap();
    let globex = env.connect("globex").await;
    assert_eq!(pid(&acme).await, pid(&globex).await, "one server");
    let seen = simple_rows(&globex, "SELECT name, statement FROM pg_cursors").await;
    assert!(seen.is_empty(), "{seen:?}");
    let e = globex
        .simple_query("BEGIN; FETCH ALL acme_held")
        .await
        .err()
        .expect("acme's cursor is gone");
    assert_eq!(db_error(&e).0, "34000");
    globex.batch_execute("ROLLBACK").await.unwrap();
}

/// The fix, varied: with pinning (the client that made a statement by dynamic SQL keeps
/// its server, and its statement, as directly), without pinning (the server is
/// discarded), unsealed (the raw view is read), and unsealed with the raw view revoked
/// (the counts are unreadable: every statement is deallocated). In every case the next
/// tenant on the server sees none of it, can prepare the same name, and its own
/// protocol-level statements keep working, also after a dynamic `DEALLOCATE ALL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_prepare_and_deallocate_in_every_configuration() {
    use rlsgate::config::SessionFeatures;
    struct Case {
        name: &'static str,
        sealed: bool,
        pin: bool,
        revoke: bool,
    }
    let cases = [
        Case {
            name: "sealed, pin",
            sealed: true,
            pin: true,
            revoke: true,
        },
        Case {
            name: "sealed, refuse",
            sealed: true,
            pin: false,
            revoke: true,
        },
        Case {
            name: "unsealed",
            sealed: false,
            pin: true,
            revoke: false,
        },
        Case {
            name: "unsealed, revoked",
            sealed: false,
            pin: true,
            revoke: true,
        },
    ];
    for case in cases {
        let name = case.name;
        let env = Env::with(|c| {
            c.pool.mode = PoolMode::Transaction;
            c.pool.size = 2;
            c.pool.acquire_timeout = Duration::from_secs(5);
            if !case.pin {
                c.pool.session_features = SessionFeatures::Refuse;
            }
            if !case.sealed {
                c.tenant.sealed = Some(false);
            }
        })
        .await;
        if case.revoke {
            env.pg
                .psql("app", REVOKE_RAW)
                .expect("revoke the raw views");
        }
        let globex = env.connect("globex").await;
        let own = globex
            .prepare("SELECT 'globex-own-stmt'::text")
            .await
            .unwrap();
        let acme = env.connect("acme").await;
        acme.batch_execute(
            "DO $$ BEGIN EXECUTE $q$PREPARE planted AS SELECT 'planted-by-acme'::text$q$; END $$",
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {:?}", db_error(&e)));
        let acme_pid = pid(&acme).await;
        // Unreadable counts (unsealed, raw view revoked): everything was deallocated.
        let kept = case.pin && (case.sealed || !case.revoke);
        if kept {
            // acme keeps its server and its statement, as it would directly.
            let got = match acme.simple_query("EXECUTE planted").await {
                Ok(m) => crate::harness::rows(&m),
                Err(e) => panic!("{name}: EXECUTE: {:?}", db_error(&e)),
            };
            assert_eq!(got, vec![vec!["planted-by-acme".to_owned()]], "{name}");
            assert_eq!(pid(&acme).await, acme_pid, "{name}: acme is pinned");
        }
        // Every server globex can get: the statement is not there.
        for _ in 0..2 {
            globex.batch_execute("BEGIN").await.unwrap();
            let here = pid(&globex).await;
            assert!(
                !(kept && here == acme_pid),
                "{name}: globex got acme's pinned server"
            );
            // Refused (EXECUTE would pin, and acme holds the one pin) or, where globex
            // may pin, absent on its server.
            let e = globex.simple_query("EXECUTE planted").await.unwrap_err();
            let code = db_error(&e).0;
            assert!(
                ["0A000", "26000"].contains(&code.as_str()),
                "{name}: {code}"
            );
            globex.batch_execute("ROLLBACK").await.unwrap();
            let got: String = globex.query_one(&own, &[]).await.unwrap().get(0);
            assert_eq!(got, "globex-own-stmt", "{name}");
        }
        // A dynamic DEALLOCATE ALL by acme (on its server, pinned or not) leaves globex's
        // statement working wherever globex runs next.
        acme.batch_execute("DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$")
            .await
            .unwrap();
        drop(acme);
        for attempt in 0..4 {
            let got: String = globex
                .query_one(&own, &[])
                .await
                .unwrap_or_else(|e| panic!("{name}: attempt {attempt}: {:?}", db_error(&e)))
                .get(0);
            assert_eq!(got, "globex-own-stmt", "{name}");
        }
    }
}

/// Found by the same pass: built-ins that run SQL given as text (`query_to_xml` and its
/// siblings, `ts_stat`, `ts_rewrite`) or read a relation or schema named by text
/// (`table_to_xml`, `schema_to_xml`) were not read by the guard, so their text could
/// change the bare tenant setting (unsealed: a tenant switch) or read the raw session
/// views where the database does not revoke them. Now their constant text is checked as
/// SQL and a computed one is refused; reads of the client's own tables still work and
/// show its own rows. Both modes, sealed and not; the next tenant is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_text_builtins_cannot_change_or_read_what_the_guard_denies() {
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        for sealed in [true, false] {
            let env = Env::with(|c| {
                c.pool.mode = mode;
                c.pool.size = 1;
                c.pool.acquire_timeout = Duration::from_secs(5);
                c.tenant.sealed = Some(sealed);
            })
            .await;
            let acme = env.connect("acme").await;
            let _own = acme.prepare("SELECT 'acme-own-stmt'").await.unwrap();
            for sql in [
                "SELECT query_to_xml('SELECT set_config(''app.current_tenant'', ''globex'', false)', true, false, '')",
                "SELECT * FROM ts_stat('SELECT set_config(''app.current_tenant'', ''globex'', false)::tsvector')",
                "SELECT query_to_xml(pg_catalog.chr(83) || 'ELECT 1', true, false, '')",
                "SELECT query_to_xml('SELECT * FROM pg_stat_activity', true, false, '')",
                "SELECT table_to_xml('pg_catalog.pg_stat_activity', true, false, '')",
                "SELECT schema_to_xml('pg_catalog', true, false, '')",
            ] {
                let e = acme
                    .simple_query(sql)
                    .await
                    .err()
                    .unwrap_or_else(|| panic!("{mode:?} sealed {sealed}: {sql} ran"));
                assert_eq!(db_error(&e).0, "42501", "{mode:?} sealed {sealed}: {sql}");
            }
            let tenant = simple_rows(&acme, "SELECT current_setting('app.current_tenant')").await;
            assert_eq!(tenant[0][0], "acme", "{mode:?} sealed {sealed}");
            // A legitimate use: the client's own rows, through RLS.
            let xml = simple_rows(
                &acme,
                "SELECT query_to_xml('SELECT tenant_id FROM customers', true, false, '')::text",
            )
            .await;
            if sealed {
                assert!(xml[0][0].contains("acme"), "{mode:?}: {xml:?}");
            }
            assert!(
                !xml[0][0].contains("globex"),
                "{mode:?} sealed {sealed}: {xml:?}"
            );
            // The next tenant on the same server holds its own context.
            drop(acme);
            let globex = env.connect("globex").await;
            let tenant = simple_rows(&globex, "SELECT current_setting('app.current_tenant')").await;
            assert_eq!(tenant[0][0], "globex", "{mode:?} sealed {sealed}");
        }
    }
}
