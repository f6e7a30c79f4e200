//! Red team 2: attacks on the sealed context (guard off), on the guard's reading of
//! client encodings (guard on) and on what the shared app role can still observe.
//! Passing tests are regressions; `#[ignore = "FINDING: ..."]` ones are open findings.

use std::time::Duration;

use bytes::BytesMut;
use rlsgate::config::{Config, PoolMode};
use rlsgate::wire::protocol;

use crate::harness::{collect, rows, summarize, visible_customers, Env, Raw, RawMessage};

/// UTF-8 "さ\" is E3 81 95 5C; SJIS reads it as [E3 81][95 5C]: the backslash is the
/// trail byte of 表. Valid UTF-8, so a guard that believes UTF8 reads it and sees one
/// E'' literal (the `\'` an escaped quote); PostgreSQL in SJIS sees the literal end at
/// the quote and a live set_config after it.
const HIDDEN_SET: &str = "SELECT E'\u{3055}\\' , pg_catalog.set_config($$app.current_tenant$$, \
                          $$globex$$, false) --'";

/// HIDDEN_SET that also sleeps 3 s, so the admin can watch it run.
const HIDDEN_SLEEP: &str = "SELECT E'\u{3055}\\' , pg_catalog.set_config($$app.current_tenant$$, \
                            $$globex$$, false), pg_catalog.pg_sleep(3) --'";

async fn raw(env: &Env, tenant: &str) -> Raw {
    Raw::connect(env.port(), &format!("user-{tenant}"), &env.token(tenant)).await
}

/// The text of every DataRow column in `msgs`.
fn data(msgs: &[RawMessage]) -> Vec<String> {
    let mut out = Vec::new();
    for (tag, body) in msgs {
        if *tag != b'D' || body.len() < 2 {
            continue;
        }
        let n = i16::from_be_bytes([body[0], body[1]]);
        let mut pos = 2;
        for _ in 0..n {
            let len = i32::from_be_bytes(body[pos..pos + 4].try_into().unwrap());
            pos += 4;
            if len >= 0 {
                let l = len as usize;
                out.push(String::from_utf8_lossy(&body[pos..pos + l]).into_owned());
                pos += l;
            }
        }
    }
    out
}

async fn simple(r: &mut Raw, sql: &str) -> Vec<RawMessage> {
    let mut buf = BytesMut::new();
    protocol::put_query(&mut buf, sql);
    r.send(&buf).await;
    collect(r, 1).await
}

/// Parse/Bind/Execute of each statement, one Sync, all in one write.
fn pipeline(sqls: &[&str]) -> BytesMut {
    let mut buf = BytesMut::new();
    for sql in sqls {
        protocol::put_bound_statement(&mut buf, sql, &[]);
    }
    protocol::put_sync(&mut buf);
    buf
}

/// The next clients of both tenants see their own rows and their own bare setting.
async fn next_tenants_clean(env: &Env, what: &str) {
    for (tenant, n) in [("acme", 3), ("globex", 2)] {
        let c = env.connect(tenant).await;
        let got = visible_customers(&c).await;
        assert_eq!(got.len(), n, "{what}: next {tenant} sees {got:?}");
        assert!(got.iter().all(|(t, _)| t == tenant), "{what}: {got:?}");
        let r = rows(
            &c.simple_query("SELECT current_setting('app.current_tenant'), rlsgate.tenant()")
                .await
                .unwrap(),
        );
        assert_eq!(
            r,
            vec![vec![tenant.to_owned(), tenant.to_owned()]],
            "{what}"
        );
    }
}

/// Asserts that no reply of the attack carries the forged tenant.
fn no_forged_tenant(msgs: &[RawMessage], what: &str) {
    let d = data(msgs);
    eprintln!("{what}: rows {d:?} messages {:?}", summarize(msgs));
    assert!(
        // The hidden text itself, returned as the literal the guard read, is harmless.
        !d.iter()
            .any(|v| v.contains("globex") && !v.contains("set_config")),
        "{what}: the forged bare setting reached PostgreSQL: rows {d:?}, messages {:?}",
        summarize(msgs)
    );
}

// ---------------------------------------------------------------- client encodings

/// FINDING (fixed: the guard now allows client_encoding changes only as a statement of
/// their own). SQL-level PREPARE of a client_encoding change: the constant 'SJIS' was only
/// seen while the PREPARE was in flight; a later `EXECUTE p` names no encoding, so the statements
/// pipelined behind it (no Sync between) are read as UTF8, while PostgreSQL converts
/// them from SJIS (ParameterStatus only comes at ReadyForQuery).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_encoding_change_hides_set_config() {
    let env = Env::with(|c: &mut Config| c.pool.mode = PoolMode::Session).await;
    let mut a = raw(&env, "acme").await;
    let prep = simple(
        &mut a,
        "PREPARE p AS SELECT pg_catalog.set_config('client_encoding', 'SJIS', false)",
    )
    .await;
    // Refused now (42501: a client_encoding change only as a statement of its own);
    // the attack runs either way, and must not reach PostgreSQL.
    assert!(
        summarize(&prep)
            .iter()
            .all(|m| !m.starts_with('E') || m.starts_with("E 42501")),
        "{:?}",
        summarize(&prep)
    );
    let admin = env.admin().await;
    a.send(&pipeline(&["EXECUTE p", HIDDEN_SLEEP])).await;
    // Did PostgreSQL run the statement the guard read as one literal? It sleeps if so.
    let mut ran = Vec::new();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ran = rows(
            &admin
                .simple_query(
                    "SELECT query FROM pg_stat_activity WHERE state = 'active' \
             AND query LIKE '%globex%' AND pid <> pg_backend_pid()",
                )
                .await
                .unwrap(),
        );
        if !ran.is_empty() {
            break;
        }
    }
    let got = collect(&mut a, 1).await;
    eprintln!("ran: {ran:?}");
    no_forged_tenant(&got, "PREPARE/EXECUTE");
    assert!(
        ran.is_empty(),
        "PostgreSQL ran the hidden set_config: {ran:?}"
    );
    next_tenants_clean(&env, "PREPARE/EXECUTE").await;
}

/// The same through a temporary function whose body changes client_encoding. Checks the
/// replies only (the attacker gets 08P01 and no row); whether PostgreSQL ran the hidden
/// statement is checked in the PREPARE variant only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_function_encoding_change_hides_set_config() {
    let env = Env::with(|c: &mut Config| c.pool.mode = PoolMode::Session).await;
    let mut a = raw(&env, "acme").await;
    let create = simple(
        &mut a,
        "CREATE FUNCTION pg_temp.to_sjis() RETURNS text LANGUAGE sql \
         AS $$ SELECT pg_catalog.set_config('client_encoding', 'SJIS', false) $$",
    )
    .await;
    let created = summarize(&create).iter().all(|m| !m.starts_with('E'));
    eprintln!("create: {:?}", summarize(&create));
    if created {
        a.send(&pipeline(&[
            "SELECT pg_temp.to_sjis()",
            HIDDEN_SET,
            "SELECT pg_catalog.current_setting('app.current_tenant')",
        ]))
        .await;
        let got = collect(&mut a, 1).await;
        no_forged_tenant(&got, "pg_temp function");
    }
    next_tenants_clean(&env, "pg_temp function").await;
}

/// The same through a (temporary) view over set_config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_view_encoding_change_hides_set_config() {
    let env = Env::with(|c: &mut Config| c.pool.mode = PoolMode::Session).await;
    let mut a = raw(&env, "acme").await;
    let create = simple(
        &mut a,
        "CREATE TEMP VIEW to_sjis AS \
         SELECT pg_catalog.set_config('client_encoding', 'SJIS', false) AS v",
    )
    .await;
    if summarize(&create).iter().all(|m| !m.starts_with('E')) {
        a.send(&pipeline(&[
            "SELECT v FROM pg_temp.to_sjis",
            HIDDEN_SET,
            "SELECT pg_catalog.current_setting('app.current_tenant')",
        ]))
        .await;
        let got = collect(&mut a, 1).await;
        no_forged_tenant(&got, "temp view");
    }
    next_tenants_clean(&env, "temp view").await;
}

/// Simple-query pipelining of the PREPARE/EXECUTE variant (three Query messages in one
/// write): the server reads the second Query after its ReadyForQuery for the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_encoding_change_simple_pipeline() {
    let env = Env::with(|c: &mut Config| c.pool.mode = PoolMode::Session).await;
    let mut a = raw(&env, "acme").await;
    simple(
        &mut a,
        "PREPARE p AS SELECT pg_catalog.set_config('client_encoding', 'SJIS', false)",
    )
    .await;
    let mut buf = BytesMut::new();
    protocol::put_query(&mut buf, "EXECUTE p");
    protocol::put_query(&mut buf, HIDDEN_SET);
    protocol::put_query(
        &mut buf,
        "SELECT pg_catalog.current_setting('app.current_tenant')",
    );
    a.send(&buf).await;
    let got = collect(&mut a, 3).await;
    no_forged_tenant(&got, "simple pipeline");
    next_tenants_clean(&env, "simple pipeline").await;
}

// ------------------------------------------------------------- sealed context, guard off

async fn guard_off(mode: PoolMode) -> Env {
    Env::with(move |c: &mut Config| {
        c.guard.enabled = false;
        c.pool.mode = mode;
        c.pool.size = 1;
    })
    .await
}

/// `rlsgate.enter` with crafted arguments (NULLs, extremes, colon tenants, an attacker
/// transaction around it) never changes the recorded tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_enter_arguments_change_nothing() {
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let env = guard_off(mode).await;
        let c = env.connect("acme").await;
        for sql in [
            "SELECT rlsgate.enter(NULL, NULL, NULL)",
            "SELECT rlsgate.enter('globex', NULL, NULL)",
            "SELECT rlsgate.enter('globex', 9223372036854775807, '')",
            "SELECT rlsgate.enter('globex', -9223372036854775808, repeat('0', 64))",
            "SELECT rlsgate.enter('globex:' || pg_backend_pid(), 1, 'x')",
            "SELECT rlsgate.enter(E'globex\\n', 1, NULL)",
            "BEGIN; SELECT rlsgate.enter('globex', 1, 'x'); ROLLBACK",
            "BEGIN; SAVEPOINT s; SELECT rlsgate.enter('globex', 1, 'x'); ROLLBACK TO s; COMMIT",
            "SELECT rlsgate.tenant() FROM rlsgate.backend_context FOR UPDATE",
            "LOCK TABLE rlsgate.backend_context",
            "SELECT pg_advisory_lock(hashtext('rlsgate'))",
        ] {
            let _ = c.batch_execute(sql).await;
            let _ = c.batch_execute("ROLLBACK").await;
            let r = rows(
                &c.simple_query("SELECT coalesce(rlsgate.tenant(), 'NULL')")
                    .await
                    .unwrap(),
            );
            assert_eq!(r, vec![vec!["acme".to_owned()]], "{mode:?} {sql}");
            let got = visible_customers(&c).await;
            assert!(
                got.iter().all(|(t, _)| t == "acme"),
                "{mode:?} {sql}: {got:?}"
            );
        }
        drop(c);
        next_tenants_clean(&env, &format!("{mode:?} crafted enter")).await;
    }
}

/// Settings that would make the proxy's next `enter` fail or time out on the same
/// pooled server (transaction mode, one server): the next tenant gets its own rows or
/// an error, never the attacker's tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_that_break_the_next_enter() {
    let env = guard_off(PoolMode::Transaction).await;
    for attack in [
        "SET statement_timeout = 1",
        "SET lock_timeout = 1",
        "SET idle_in_transaction_session_timeout = 1",
        "SET default_transaction_read_only = on",
        "SET default_transaction_isolation = 'serializable'",
        "SET search_path = pg_temp, public",
        "SET session_replication_role = replica",
        "SET client_min_messages = log",
        "SET debug_print_plan = on",
        "SET row_security = off",
        "SELECT set_config('transaction_read_only', 'on', false)",
        "SET plan_cache_mode = force_generic_plan",
        "SELECT pg_advisory_lock(1)",
        "CREATE TEMP TABLE backend_context AS SELECT 1",
    ] {
        let a = env.connect("acme").await;
        let _ = a.batch_execute(attack).await;
        drop(a);
        tokio::time::sleep(Duration::from_millis(50)).await;
        for (tenant, n) in [("globex", 2), ("acme", 3)] {
            let Ok(c) = env
                .connect_token(&format!("user-{tenant}"), &env.token(tenant))
                .await
            else {
                continue; // failing closed is fine
            };
            if let Ok(r) = c.query("SELECT tenant_id FROM customers", &[]).await {
                let t: Vec<String> = r.iter().map(|r| r.get(0)).collect();
                assert!(
                    t.iter().all(|x| x == tenant) && t.len() == n,
                    "after {attack:?}: next {tenant} sees {t:?}"
                );
            }
        }
    }
    next_tenants_clean(&env, "leftovers").await;
}

/// The proxy's context statement and its seal never reach the client: LOG-level plan
/// dumps (debug_print_plan is user-settable) of the proxy's bound statement would show
/// the seal as a constant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_dumps_do_not_show_the_seal() {
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let env = guard_off(mode).await;
        let mut a = raw(&env, "acme").await;
        let mut seen = Vec::new();
        seen.extend(simple(&mut a, "SET client_min_messages = log").await);
        seen.extend(simple(&mut a, "SET debug_print_plan = on").await);
        seen.extend(simple(&mut a, "SET debug_print_parse = on").await);
        seen.extend(simple(&mut a, "DISCARD ALL").await);
        seen.extend(simple(&mut a, "SET client_min_messages = log").await);
        seen.extend(simple(&mut a, "SET debug_print_plan = on").await);
        seen.extend(simple(&mut a, "RESET ALL").await);
        seen.extend(simple(&mut a, "SELECT 1").await);
        for (tag, body) in &seen {
            let text = String::from_utf8_lossy(body);
            assert!(
                !(matches!(tag, b'N' | b'E') && text.contains("enter")),
                "{mode:?}: the client saw the proxy's context statement: {text}"
            );
        }
    }
}

// ---------------------------------------------------------- what the shared role observes

/// A PostgreSQL holding only acme's data would report acme's 3 customers in its
/// statistics and sequence; the shared tables report every tenant's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "KNOWN LIMIT (docs/isolation.md; side channel, also after policy apply): pg_class.reltuples, pg_stat_user_tables.n_live_tup/n_tup_ins, pg_relation_size and nextval of the shared bigserial reveal other tenants' row counts and insert activity"]
async fn statistics_reveal_other_tenants_row_counts() {
    let env = Env::start().await;
    env.admin()
        .await
        .batch_execute("ANALYZE customers")
        .await
        .unwrap();
    let c = env.connect("acme").await;
    let mut leaks = Vec::new();
    for (sql, alone) in [
        (
            "SELECT reltuples::int::text FROM pg_class WHERE relname = 'customers'",
            "3",
        ),
        (
            "SELECT n_live_tup::text FROM pg_stat_user_tables WHERE relname = 'customers'",
            "3",
        ),
        ("SELECT nextval('customers_id_seq')::text", "4"),
    ] {
        if let Ok(m) = c.simple_query(sql).await {
            let r = rows(&m);
            if r != vec![vec![alone.to_owned()]] {
                leaks.push(format!("{sql} -> {r:?} (alone: {alone})"));
            }
        }
    }
    assert!(leaks.is_empty(), "{leaks:#?}");
}
