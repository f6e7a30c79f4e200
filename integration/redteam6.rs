//! Sixth red-team pass: the release-time statement count of transaction pooling
//! (`session/link.rs` `check_statements`, `tenant::STATEMENT_COUNTS*`), the guard's
//! reading of SQL-text built-ins (`guard::sql_text_function`) and what counts as clean
//! (`inspect/clean.rs`).
//!
//! Tests named `finding_*` failed on commit 00ef208 (each asserts the secure outcome for
//! the attacker and for the next tenant on the same server) and pass since the fixes of
//! session 6 (proxy statements without casts and with qualified names, `tenant.rs`; OID
//! and raw-view refusals for SQL-text built-ins, `guard/walk.rs`; `DISCARD SEQUENCES`
//! on a tenant switch, `session/link.rs`); the others are attacks that held.
//!
//! The main finding: the count query runs on the attacker's server under the attacker's
//! session state, and its `::text` casts are not schema-qualified. PostgreSQL looks type
//! names up in `pg_temp` *before* `pg_catalog` (it skips `pg_temp` only for functions and
//! operators), so a temporary domain `pg_temp.text` over `int8` whose CHECK calls a
//! temporary function runs attacker code inside rlsgate's own count, after the rows were
//! counted: the PREPARE / DEALLOCATE it runs is not in the count, and the server goes
//! to the next tenant with it (`SWITCH_RESET` keeps prepared statements by design).

use std::time::Duration;

use rlsgate::config::PoolMode;
use tokio_postgres::Client;

use crate::harness::{db_error, rows, Env};
use crate::redteam5::{on_every_server, pid};
use crate::views::{simple_rows, REVOKE_RAW};

/// Transaction mode, `size` servers; `revoke`: the raw session views are revoked as
/// `rlsgate policy apply` does (sealed: the count goes through
/// `rlsgate.statement_counts()`; unsealed: the raw view, which must then stay readable or
/// the count falls back to `DEALLOCATE ALL`).
async fn env(sealed: bool, revoke: bool, size: usize) -> Env {
    let env = Env::with(|c| {
        c.pool.mode = PoolMode::Transaction;
        c.pool.size = size;
        c.pool.acquire_timeout = Duration::from_secs(5);
        c.tenant.sealed = Some(sealed);
    })
    .await;
    if revoke {
        env.pg
            .psql("app", REVOKE_RAW)
            .expect("revoke the raw views");
    }
    env
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// A DO block that runs each of `statements` as dynamic SQL built at run time (hex
/// decoded), so the guard sees neither the statements nor the names they mention (it
/// checks only what a literal EXECUTE runs; the sealed context is meant to cover the
/// rest), and `inspect::session_only` does not see the temporary objects.
pub(crate) fn hidden_do(statements: &[&str]) -> String {
    let body: String = statements
        .iter()
        .map(|s| {
            format!(
                "EXECUTE pg_catalog.convert_from(pg_catalog.decode('{}', 'hex'), 'UTF8'); ",
                hex(s)
            )
        })
        .collect();
    format!("DO $$ BEGIN {body}END $$")
}

/// The temporary objects that hook rlsgate's release-time count: `pg_temp.text`, a
/// domain over `int8` whose CHECK runs `hook_body` (PL/pgSQL statements, no unqualified
/// `text` in them: while the domain exists `text` means it). The count's
/// `count(*)::text` (unsealed) or `from_sql::text` (sealed) casts to the domain after
/// counting, so the hook runs inside the count, and its effects are not counted.
fn count_hook(hook_body: &str) -> String {
    let function = format!(
        "CREATE FUNCTION pg_temp.rt6_hook(v pg_catalog.int8) RETURNS pg_catalog.bool \
         LANGUAGE plpgsql AS $f$ BEGIN {hook_body} RETURN true; END $f$"
    );
    hidden_do(&[
        &function,
        "CREATE DOMAIN pg_temp.text AS pg_catalog.int8 CHECK (pg_temp.rt6_hook(VALUE))",
    ])
}

/// Plants a SQL-level statement `acme_planted` from inside the count (idempotent: the
/// hook runs once per counted column).
const PLANT: &str = "BEGIN EXECUTE 'PREPARE acme_planted AS SELECT \
    ''planted-by-acme''::pg_catalog.text AS t, rlsgate.tenant() AS tenant'; \
    EXCEPTION WHEN duplicate_prepared_statement THEN NULL; END;";

/// What globex sees of a statement acme planted on every server (redteam5's checks).
async fn planted_problems(globex: &Client, what: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let listed = simple_rows(
        globex,
        "SELECT name, statement FROM rlsgate.pg_prepared_statements",
    )
    .await;
    if !listed.is_empty() {
        problems.push(format!(
            "{what}: globex's rlsgate.pg_prepared_statements lists acme's statement: {listed:?}"
        ));
    }
    match globex
        .simple_query(
            "PREPARE acme_planted AS SELECT 'globex-own'::text AS t, rlsgate.tenant()::text",
        )
        .await
    {
        Ok(_) => {}
        Err(e) => problems.push(format!(
            "{what}: globex cannot PREPARE the name acme left on the server: {:?}",
            db_error(&e)
        )),
    }
    match globex.simple_query("EXECUTE acme_planted").await {
        Ok(m) => {
            let r = rows(&m);
            if r.iter().any(|r| r[0] == "planted-by-acme") {
                problems.push(format!(
                    "{what}: globex's EXECUTE ran acme's statement in globex's session: {r:?}"
                ));
            }
        }
        Err(e) => problems.push(format!("{what}: EXECUTE: {:?}", db_error(&e))),
    }
    problems
}

/// FINDING, fixed (cross-tenant statement, redteam5 finding 1 again): the PREPARE runs inside
/// rlsgate's own release-time count (through a temporary domain named `text`), after the
/// counting: the count says 0 SQL-level statements, the server is released, and the next
/// tenant sees acme's statement, cannot prepare its name, and its `EXECUTE` runs acme's
/// SQL in globex's session. Sealed with the raw views revoked (count through
/// `rlsgate.statement_counts()`) and unsealed with the raw view readable (the count
/// reads it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_prepare_inside_the_release_count_survives_for_the_next_tenant() {
    let mut problems = Vec::new();
    for (sealed, revoke) in [(true, true), (false, false)] {
        let what = format!("sealed {sealed}, raw views revoked {revoke}");
        // Pool of two: `max_pinned` is one, so globex's PREPARE/EXECUTE may pin.
        let env = env(sealed, revoke, 2).await;
        let _acme = on_every_server(&env, "acme", 2, &count_hook(PLANT)).await;
        let globex = env.connect("globex").await;
        problems.extend(planted_problems(&globex, &what).await);
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// FINDING, fixed (disturbing other tenants, redteam5 finding 2 again): a `DEALLOCATE ALL` run
/// inside the count drops globex's `rlsgate_…` statements after they were counted; the
/// proxy keeps binding them by name and globex's prepared statement fails with 26000 on
/// every retry (its clean executions never make the server dirty, so nothing recounts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_deallocate_all_inside_the_release_count_breaks_other_tenants() {
    let env = env(true, true, 1).await;
    let globex = env.connect("globex").await;
    let acme = env.connect("acme").await;
    let st = globex.prepare("SELECT 'globex-stmt'::text").await.unwrap();
    let first: String = globex.query_one(&st, &[]).await.unwrap().get(0);
    assert_eq!(first, "globex-stmt");
    assert_eq!(pid(&acme).await, pid(&globex).await, "one server");

    acme.batch_execute(&count_hook("EXECUTE 'DEALLOCATE ALL';"))
        .await
        .expect("acme's DO block runs");
    // acme's session goes on normally.
    assert_eq!(simple_rows(&acme, "SELECT 1").await, [["1"]]);

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

/// FINDING, fixed (cross-tenant write): with the raw `pg_prepared_statements` readable by the
/// app role (the harness's and the demo's default; unsealed deployments need it for the
/// count), the hook reads the server's protocol-level statements (other tenants'
/// `rlsgate_…` names), deallocates each and prepares a SQL-level statement of the same
/// name with the same result type. The count ran before, so the proxy still believes
/// globex's statement is there, binds it by name, and globex's own `query_one` runs
/// acme's UPDATE under globex's tenant: globex's customers are renamed, no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_hook_in_the_release_count_hijacks_other_tenants_statement() {
    let env = env(true, false, 1).await;
    let globex = env.connect("globex").await;
    let acme = env.connect("acme").await;
    let st = globex
        .prepare("SELECT count(*) FROM customers")
        .await
        .unwrap();
    let first: i64 = globex.query_one(&st, &[]).await.unwrap().get(0);
    assert_eq!(first, 2, "globex's two customers");
    assert_eq!(pid(&acme).await, pid(&globex).await, "one server");

    let hook = "DECLARE r record; BEGIN \
        FOR r IN SELECT p.name FROM pg_catalog.pg_prepared_statements p WHERE NOT p.from_sql LOOP \
        EXECUTE 'DEALLOCATE ' || pg_catalog.quote_ident(r.name); \
        EXECUTE 'PREPARE ' || pg_catalog.quote_ident(r.name) || ' AS WITH w AS (UPDATE \
        public.customers SET name = ''pwned-by-acme'' RETURNING 1) SELECT pg_catalog.count(*) FROM w'; \
        END LOOP; END;";
    acme.batch_execute(&count_hook(hook))
        .await
        .expect("acme's DO block runs");
    // acme itself changed nothing of its own.
    let own = simple_rows(
        &acme,
        "SELECT count(*) FROM customers WHERE name = 'pwned-by-acme'",
    )
    .await;
    assert_eq!(own, [["0"]]);

    // globex runs its own statement, as it did before.
    let second = globex.query_one(&st, &[]).await;
    let names = simple_rows(&globex, "SELECT name FROM customers ORDER BY id").await;
    assert!(
        !names.iter().flatten().any(|n| n == "pwned-by-acme"),
        "globex's statement ran acme's UPDATE on globex's rows (it returned {:?}): {names:?}",
        second.map(|r| r.get::<_, i64>(0)).map_err(|e| db_error(&e))
    );
}

/// FINDING, fixed (guard gap, cross-tenant read where the raw views are not revoked):
/// `table_to_xml` takes a `regclass`, and regclass input accepts a relation's OID as a
/// string. The guard compares the text with the denied and scoped view names only, so
/// `table_to_xml('<oid of pg_stat_activity>', ...)` reads every session's last query text
/// (globex's literal included) and, in transaction mode, `<oid of
/// pg_prepared_statements>` reads the shared server's statements: globex's texts and
/// their keyed `rlsgate_…` names. The names themselves are refused (42501), which shows
/// the intent. The OID is one guard-allowed query away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_table_to_xml_by_oid_reads_denied_and_scoped_views() {
    let mut problems = Vec::new();
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let env = Env::with(|c| {
            c.pool.mode = mode;
            c.pool.size = 2;
            c.pool.acquire_timeout = Duration::from_secs(5);
        })
        .await;
        let globex = env.connect("globex").await;
        let _st = globex
            .prepare("SELECT 'globex-secret-stmt'::text")
            .await
            .unwrap();
        simple_rows(&globex, "SELECT 'globex-secret-query'").await;
        let acme = env.connect("acme").await;
        for view in ["pg_stat_activity", "pg_prepared_statements"] {
            let by_name =
                format!("SELECT table_to_xml('pg_catalog.{view}', true, false, '')::text");
            let e = acme.simple_query(&by_name).await.err();
            assert_eq!(
                e.as_ref().map(|e| db_error(e).0),
                Some("42501".into()),
                "{mode:?}: {by_name}"
            );
            let oid = simple_rows(
                &acme,
                &format!("SELECT 'pg_catalog.{view}'::regclass::oid::text"),
            )
            .await[0][0]
                .clone();
            let by_oid = format!("SELECT table_to_xml('{oid}', true, false, '')::text");
            match acme.simple_query(&by_oid).await {
                Ok(m) => {
                    let xml = rows(&m).concat().concat();
                    if xml.contains("globex-secret") {
                        problems.push(format!(
                            "{mode:?}: acme read globex's text through {by_oid} ({view}): {}",
                            &xml[xml.find("globex-secret").unwrap().saturating_sub(200)..]
                                .chars()
                                .take(400)
                                .collect::<String>()
                        ));
                    } else if xml.contains("rlsgate_") {
                        problems.push(format!(
                            "{mode:?}: acme read the server's keyed statement names through \
                             {by_oid} ({view})"
                        ));
                    }
                }
                Err(e) => {
                    // Refused: what should happen.
                    let _ = db_error(&e);
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// FINDING, fixed (guard gap, where the raw views are not revoked): the SQL given to
/// `query_to_xml` is checked against the denied relations only; the scoped session views
/// (`pg_locks`, `pg_stat_ssl`, ...) are rewritten to their tenant-scoped `rlsgate.*`
/// versions at the top level, but not inside the text, so the text reads the raw,
/// cluster-wide view: here globex's advisory lock (its backend pid and key).
/// `table_to_xml('pg_locks')` is refused for exactly that reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_query_to_xml_reads_raw_scoped_views() {
    let env = Env::with(|c| {
        c.pool.mode = PoolMode::Session;
        c.pool.size = 2;
    })
    .await;
    let globex = env.connect("globex").await;
    globex
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(4242424)")
        .await
        .unwrap();
    let acme = env.connect("acme").await;
    let top = simple_rows(
        &acme,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242424",
    )
    .await;
    assert_eq!(top, [["0"]], "the top-level read is scoped to acme");
    let sql = "SELECT query_to_xml('SELECT pid, objid FROM pg_locks \
               WHERE locktype = ''advisory'' AND objid = 4242424', true, false, '')::text";
    let seen = match acme.simple_query(sql).await {
        Ok(m) => rows(&m).concat().concat(),
        Err(e) => format!("refused {:?}", db_error(&e)),
    };
    assert!(
        !seen.contains("4242424"),
        "acme sees globex's advisory lock through query_to_xml: {seen}"
    );
    globex.batch_execute("COMMIT").await.unwrap();
}

/// FINDING, fixed (low, another tenant's session state): a plain `INSERT` into a table with a
/// `bigserial` key is clean (no reset at release), but `nextval` leaves `lastval()` /
/// `currval()` in the server session, and `RESET ALL` (all a clean server gets) does
/// not clear it (`DISCARD SEQUENCES` is only in the dirty reset). The next tenant on the
/// server reads the id globex's row got; directly it would get 55000 ("not yet defined
/// in this session").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_lastval_of_the_previous_tenant() {
    let env = env(true, true, 1).await;
    let globex = env.connect("globex").await;
    let id: i64 = globex
        .query_one(
            "INSERT INTO customers (name, email) VALUES ('Globex Secret', 'sec@globex.test') \
             RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    drop(globex);
    let acme = env.connect("acme").await;
    let mut problems = Vec::new();
    for sql in [
        "SELECT lastval()::text",
        "SELECT currval('customers_id_seq')::text",
    ] {
        match acme.simple_query(sql).await {
            Ok(m) => problems.push(format!(
                "{sql} gave acme {:?} (globex's new row has id {id})",
                rows(&m)
            )),
            Err(e) => assert_eq!(db_error(&e).0, "55000", "{sql}"),
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Held: the same hook planted where rlsgate does not count through a cast (unsealed
/// with the raw views revoked: the count fails on the revoke before any cast, so every
/// statement is deallocated) leaves nothing for the next tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_hook_with_unreadable_counts_leaves_nothing() {
    let env = env(false, true, 2).await;
    let _acme = on_every_server(&env, "acme", 2, &count_hook(PLANT)).await;
    let globex = env.connect("globex").await;
    let problems = planted_problems(&globex, "unsealed, revoked").await;
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Held: spellings of the SQL-text built-ins and of `set_config` that could hide the text
/// or the name from the guard (named arguments in any order, quoted, qualified and
/// Unicode-escaped names, comments between name and parenthesis, dollar quotes, casts
/// around the text) are refused, both pool modes, sealed and not; the bare tenant
/// setting stays the client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_spellings_of_sql_text_builtins_are_refused() {
    const SWITCH: &str = "SELECT set_config(''app.current_tenant'', ''globex'', false)";
    let sqls = [
        format!("SELECT query_to_xml(query => '{SWITCH}', nulls => true, tableforest => false, targetns => '')"),
        format!("SELECT query_to_xml(targetns => 'SELECT 1', query => '{SWITCH}', nulls => true, tableforest => false)"),
        "SELECT set_config(setting_name => 'app.current_tenant', new_value => 'globex', is_local => false)".to_owned(),
        "SELECT set_config(new_value => 'globex', setting_name => 'app.current_tenant', is_local => false)".to_owned(),
        format!("SELECT \"query_to_xml\"('{SWITCH}', true, false, '')"),
        format!("SELECT pg_catalog.query_to_xml('{SWITCH}', true, false, '')"),
        format!("SELECT U&\"query\\005fto\\005fxml\"('{SWITCH}', true, false, '')"),
        format!("SELECT query_to_xml/**/('{SWITCH}', true, false, '')"),
        "SELECT query_to_xml($q$SELECT set_config('app.current_tenant', 'globex', false)$q$, true, false, '')".to_owned(),
        format!("SELECT query_to_xml('{SWITCH}'::name::text, true, false, '')"),
        format!("SELECT * FROM ts_stat('{SWITCH}::tsvector', 'a')"),
        "SELECT table_to_xml('pg_catalog.pg_stat_activity'::regclass, true, false, '')".to_owned(),
        "SELECT table_to_xml(tbl => 'pg_stat_activity', nulls => true, tableforest => false, targetns => '')".to_owned(),
    ];
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        for sealed in [true, false] {
            let env = Env::with(|c| {
                c.pool.mode = mode;
                c.pool.size = 1;
                c.tenant.sealed = Some(sealed);
            })
            .await;
            let acme = env.connect("acme").await;
            for sql in &sqls {
                let got = acme.simple_query(sql).await.err().map(|e| db_error(&e).0);
                assert_eq!(
                    got.as_deref(),
                    Some("42501"),
                    "{mode:?} sealed {sealed}: {sql}"
                );
                let t = simple_rows(&acme, "SELECT current_setting('app.current_tenant')").await;
                assert_eq!(t, [["acme"]], "{mode:?} sealed {sealed}: {sql}");
            }
        }
    }
}
