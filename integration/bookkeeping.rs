//! The proxy's own bookkeeping is attack surface (issue 11): its context statement, the
//! server-side names of clients' statements, and its accounting of the replies a server
//! owes. Each test drives raw protocol messages no driver sends and asserts on what the
//! attacker *and the next tenant on the same server* see: rows, tenant settings,
//! transaction state. Pools of one server, so state would carry over.

use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use rlsgate::config::PoolMode;

use crate::harness::{bind, data_rows, scalar, summarize, visible_customers, Env, Raw};

const MODES: [PoolMode; 2] = [PoolMode::Session, PoolMode::Transaction];

async fn one_server(mode: PoolMode, guard: bool) -> Env {
    Env::with(|c| {
        c.pool.mode = mode;
        c.pool.size = 1;
        c.pool.acquire_timeout = Duration::from_secs(5);
        c.guard.enabled = guard;
    })
    .await
}

fn query(buf: &mut BytesMut, sql: &str) {
    frontend::query(sql, buf).unwrap();
}

/// What a raw session holds: its tenant setting, and the tenants of the customers it
/// sees (distinct, sorted).
async fn raw_view(raw: &mut Raw) -> (String, String) {
    let mut buf = BytesMut::new();
    query(
        &mut buf,
        "SELECT current_setting('app.current_tenant'), \
         coalesce(string_agg(DISTINCT tenant_id, ',' ORDER BY tenant_id), '') FROM customers",
    );
    raw.send(&buf).await;
    let rows = data_rows(&raw.until_ready(1).await);
    (rows[0][0].clone(), rows[0][1].clone())
}

/// Sends `bytes` and returns the summary up to the next ReadyForQuery.
async fn exchange(raw: &mut Raw, bytes: &BytesMut) -> Vec<String> {
    raw.send(bytes).await;
    summarize(&raw.until_ready(1).await)
}

/// Messages until the server closes the connection or `secs` pass.
async fn until_closed(raw: &mut Raw, secs: u64) -> Vec<String> {
    let mut out = Vec::new();
    let read = async {
        loop {
            let m = raw.try_read().await;
            match m {
                Some(m) => out.extend(summarize(&[m])),
                None => return,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(secs), read).await;
    out
}

/// The proxy's context statement (unnamed, on every server) cannot be bound, described or
/// executed by the client with its own parameters: 26000/34000 as directly, and neither
/// the attacker nor the next client of the same tenant on that server changes tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_context_statement_is_out_of_reach() {
    for mode in MODES {
        let env = one_server(mode, true).await;
        let mut attacker = Raw::connect(env.port(), "mallory", &env.token("acme")).await;
        let mut direct = Raw::connect(env.pg.port(), "postgres", "").await;
        let attempts: Vec<(&str, BytesMut)> = vec![
            ("bind", {
                let mut b = BytesMut::new();
                bind(&mut b, "", &["app.current_tenant", "globex"]);
                frontend::execute("", 0, &mut b).unwrap();
                frontend::sync(&mut b);
                b
            }),
            ("describe", {
                let mut b = BytesMut::new();
                frontend::describe(b'S', "", &mut b).unwrap();
                frontend::sync(&mut b);
                b
            }),
            ("execute portal", {
                let mut b = BytesMut::new();
                frontend::execute("", 0, &mut b).unwrap();
                frontend::sync(&mut b);
                b
            }),
        ];
        for (what, bytes) in &attempts {
            let through = exchange(&mut attacker, bytes).await;
            let straight = exchange(&mut direct, bytes).await;
            assert_eq!(through, straight, "{mode:?} {what}: as directly");
            assert!(through[0].starts_with("E 26000") || through[0].starts_with("E 34000"));
            assert_eq!(
                raw_view(&mut attacker).await,
                ("acme".into(), "acme".into()),
                "{mode:?} {what}: the attacker stays acme"
            );
        }
        if mode == PoolMode::Session {
            drop(attacker);
        }
        // The next sessions on the same (only) server.
        let victim = env.connect("acme").await;
        let rows = visible_customers(&victim).await;
        assert_eq!(rows.len(), 3, "{mode:?}: {rows:?}");
        assert!(rows.iter().all(|(t, _)| t == "acme"));
        drop(victim);
        let other = env.connect("globex").await;
        let rows = visible_customers(&other).await;
        assert!(rows.len() == 2 && rows.iter().all(|(t, _)| t == "globex"));
    }
}

/// Transaction mode renames clients' statements on the servers. Even a client that
/// learns a server-side name (here with the guard off, from `pg_prepared_statement()`;
/// a read of `pg_prepared_statements` lists only its own statements)
/// cannot describe, bind or execute another client's statement through it: the proxy
/// answers every name the client did not prepare itself with 26000, as directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_of_other_clients_are_out_of_reach() {
    let env = one_server(PoolMode::Transaction, false).await;
    let mut victim = Raw::connect(env.port(), "victim", &env.token("acme")).await;
    let mut b = BytesMut::new();
    frontend::parse("s1", "SELECT 'acme-secret'::text", [], &mut b).unwrap();
    frontend::sync(&mut b);
    assert_eq!(exchange(&mut victim, &b).await, ["1", "Z I"]);

    let mut attacker = Raw::connect(env.port(), "mallory", &env.token("globex")).await;
    let mut b = BytesMut::new();
    query(&mut b, "SELECT name FROM pg_prepared_statements");
    attacker.send(&b).await;
    let own = data_rows(&attacker.until_ready(1).await);
    assert!(
        own.is_empty(),
        "the view lists the attacker's own statements only: {own:?}"
    );
    let mut b = BytesMut::new();
    query(
        &mut b,
        "SELECT name FROM pg_catalog.pg_prepared_statement()",
    );
    attacker.send(&b).await;
    let names: Vec<String> = data_rows(&attacker.until_ready(1).await)
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("rlsgate_")),
        "the server holds the renamed statement: {names:?}"
    );
    for name in names.iter().map(String::as_str).chain(["s1", ""]) {
        for attempt in ["bind", "describe"] {
            let mut b = BytesMut::new();
            if attempt == "bind" {
                bind(&mut b, name, &[]);
                frontend::execute("", 0, &mut b).unwrap();
            } else {
                frontend::describe(b'S', name, &mut b).unwrap();
            }
            frontend::sync(&mut b);
            attacker.send(&b).await;
            let msgs = attacker.until_ready(1).await;
            let got = summarize(&msgs);
            assert!(got[0].starts_with("E 26000"), "{attempt} {name:?}: {got:?}");
            assert!(data_rows(&msgs).is_empty(), "{attempt} {name:?}");
        }
    }
    assert_eq!(
        raw_view(&mut attacker).await,
        ("globex".into(), "globex".into())
    );
    // The victim's own statement still works under its own name.
    let mut b = BytesMut::new();
    bind(&mut b, "s1", &[]);
    frontend::execute("", 0, &mut b).unwrap();
    frontend::sync(&mut b);
    victim.send(&b).await;
    assert_eq!(
        data_rows(&victim.until_ready(1).await),
        [["acme-secret".to_owned()]]
    );
}

/// A COPY FROM STDIN left open with other messages behind it: the server takes them as
/// the copy's error and consumes them, so the proxy cannot follow the replies. The
/// session ends (08P01) and the server is closed, never handed to the next tenant in
/// the middle of the attacker's pipeline or transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_left_open_never_hands_its_server_on() {
    let simple = {
        let mut b = BytesMut::new();
        query(&mut b, "COPY copy_sink (v) FROM STDIN");
        query(&mut b, "SELECT pg_sleep(0.3)");
        query(&mut b, "BEGIN");
        query(&mut b, "SELECT 1");
        b
    };
    let extended = {
        let mut b = BytesMut::new();
        frontend::parse("", "COPY copy_sink (v) FROM STDIN", [], &mut b).unwrap();
        bind(&mut b, "", &[]);
        frontend::execute("", 0, &mut b).unwrap();
        frontend::sync(&mut b);
        frontend::sync(&mut b);
        query(&mut b, "BEGIN");
        b
    };
    let cases = MODES.iter().flat_map(|m| {
        [
            (*m, "simple", simple.clone()),
            (*m, "extended", extended.clone()),
        ]
    });
    for (mode, what, bytes) in cases {
        let what = format!("{mode:?} {what}");
        let env = one_server(mode, true).await;
        let admin = env.admin().await;
        // COPY FROM is refused on tables with RLS; a plain table takes it.
        admin
            .batch_execute("CREATE TABLE copy_sink (v text); GRANT ALL ON copy_sink TO app_rls")
            .await
            .unwrap();
        let before: i64 = scalar(&admin, "SELECT count(*) FROM copy_sink").await;
        let mut attacker = Raw::connect(env.port(), "mallory", &env.token("acme")).await;
        // The next tenant waits for the only server while the attacker's pipeline runs.
        let victim = {
            let env_conninfo = env.conninfo("victim", &env.token("globex"), "disable");
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let (c, conn) = tokio_postgres::connect(&env_conninfo, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                let row = c
                    .query_one(
                        "SELECT current_setting('app.current_tenant'), \
                         (SELECT count(*) FROM customers WHERE tenant_id <> 'globex')",
                        &[],
                    )
                    .await
                    .unwrap();
                // Outside a transaction block a SAVEPOINT fails (25P01).
                let not_in_txn = c
                    .simple_query("SAVEPOINT probe")
                    .await
                    .err()
                    .and_then(|e| e.code().cloned())
                    .is_some_and(|c| c.code() == "25P01");
                let rows = visible_customers(&c).await;
                (
                    row.get::<_, String>(0),
                    not_in_txn,
                    row.get::<_, i64>(1),
                    rows,
                )
            })
        };
        attacker.send(&bytes).await;
        let seen = until_closed(&mut attacker, 10).await;
        assert!(
            seen.iter().any(|l| l.starts_with("E 08P01")),
            "{what}: the session ends with a protocol error: {seen:?}"
        );
        let (tenant, not_in_txn, foreign, rows) =
            tokio::time::timeout(Duration::from_secs(20), victim)
                .await
                .expect("the victim gets a server")
                .unwrap();
        assert_eq!(tenant, "globex", "{what}");
        assert!(not_in_txn, "{what}: not inside the attacker's transaction");
        assert_eq!(foreign, 0, "{what}");
        assert!(rows.len() == 2 && rows.iter().all(|(t, _)| t == "globex"));
        let after: i64 = scalar(&admin, "SELECT count(*) FROM copy_sink").await;
        assert_eq!(before, after, "{what}: nothing was copied");
        // An acme client afterwards is acme, outside any transaction.
        let next = env.connect("acme").await;
        let rows = visible_customers(&next).await;
        assert!(rows.len() == 3 && rows.iter().all(|(t, _)| t == "acme"));
    }
}

/// Messages sent after an error, in a later write, are skipped by the server up to the
/// next Sync (simple Queries too) and owe no reply: the session gets exactly what it
/// would directly, and its server goes back to the pool at the Sync (a pool of one
/// server stays usable for the next tenant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_after_an_error_owe_no_phantom_replies() {
    for mode in MODES {
        phantom_replies(mode).await;
    }
}

async fn phantom_replies(mode: PoolMode) {
    let env = Env::with(|c| {
        c.pool.mode = mode;
        c.pool.size = 1;
        c.pool.acquire_timeout = Duration::from_secs(3);
    })
    .await;
    let mut through = Raw::connect(env.port(), "mallory", &env.token("acme")).await;
    let mut direct = Raw::connect(env.pg.port(), "postgres", "").await;
    let mut first = BytesMut::new();
    frontend::parse("", "SELEC 1", [], &mut first).unwrap();
    frontend::flush(&mut first);
    let mut later = BytesMut::new();
    bind(&mut later, "", &[]);
    frontend::execute("", 0, &mut later).unwrap();
    query(&mut later, "SELECT 1");
    frontend::describe(b'S', "nosuch", &mut later).unwrap();
    frontend::close(b'S', "other", &mut later).unwrap();
    frontend::sync(&mut later);
    query(&mut later, "SELECT 2");
    let mut got = (Vec::new(), Vec::new());
    for (raw, out) in [(&mut through, &mut got.0), (&mut direct, &mut got.1)] {
        raw.send(&first).await;
        out.extend(summarize(&[raw.read().await]));
        raw.send(&later).await;
        out.extend(summarize(&raw.until_ready(2).await));
    }
    assert_eq!(got.0, got.1, "{mode:?}: as directly");
    // E; Z for the Sync; T D C Z.
    assert_eq!(got.0.len(), 6, "{:?}", got.0);
    assert_eq!(raw_view(&mut through).await, ("acme".into(), "acme".into()));
    if mode == PoolMode::Session {
        drop(through);
    }
    // The only server is free again: another tenant gets it at once.
    let other = env.connect("globex").await;
    let rows = visible_customers(&other).await;
    assert!(rows.len() == 2 && rows.iter().all(|(t, _)| t == "globex"));
}

/// A `DISCARD ALL` that fails (inside a transaction block) leaves the server's prepared
/// statements in place: the proxy no longer knows what the server holds, and its next
/// Parse of the same text (by any client) closes first instead of failing with 42P05.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_discard_all_does_not_confuse_the_statement_map() {
    let env = one_server(PoolMode::Transaction, true).await;
    let mut a = Raw::connect(env.port(), "a", &env.token("acme")).await;
    let mut b = BytesMut::new();
    frontend::parse("s1", "SELECT 41 + 1", [], &mut b).unwrap();
    frontend::sync(&mut b);
    assert_eq!(exchange(&mut a, &b).await, ["1", "Z I"]);
    let mut b = BytesMut::new();
    query(&mut b, "BEGIN");
    assert_eq!(exchange(&mut a, &b).await, ["C", "Z T"]);
    let mut b = BytesMut::new();
    query(&mut b, "DISCARD ALL");
    assert!(exchange(&mut a, &b).await[0].starts_with("E 25001"));
    let mut b = BytesMut::new();
    query(&mut b, "ROLLBACK");
    assert_eq!(exchange(&mut a, &b).await, ["C", "Z I"]);
    let mut other = Raw::connect(env.port(), "b", &env.token("globex")).await;
    let mut b = BytesMut::new();
    frontend::parse("mine", "SELECT 41 + 1", [], &mut b).unwrap();
    bind(&mut b, "mine", &[]);
    frontend::execute("", 0, &mut b).unwrap();
    frontend::sync(&mut b);
    other.send(&b).await;
    let msgs = other.until_ready(1).await;
    assert_eq!(summarize(&msgs), ["1", "2", "D", "C", "Z I"]);
    assert_eq!(data_rows(&msgs), [["42".to_owned()]]);
}
