//! Red-team tests against the proxy's own machinery (issue 11 follow-up): the context
//! statement, renamed statement names, reply accounting. Each asserts the *secure*
//! outcome; tests marked `#[ignore = "FINDING: ..."]` fail today.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use postgres_protocol::message::frontend;
use rlsgate::config::PoolMode;

use crate::harness::{bind, data_rows, scalar, summarize, visible_customers, Env, Raw, RawMessage};

const MODES: [PoolMode; 2] = [PoolMode::Session, PoolMode::Transaction];

async fn one_server(mode: PoolMode) -> Env {
    Env::with(|c| {
        c.pool.mode = mode;
        c.pool.size = 1;
        c.pool.acquire_timeout = Duration::from_secs(3);
    })
    .await
}

fn parse(buf: &mut BytesMut, name: &str, sql: &str) {
    frontend::parse(name, sql, [], buf).unwrap();
}

fn pbe(buf: &mut BytesMut, sql: &str) {
    parse(buf, "", sql);
    bind(buf, "", &[]);
    frontend::execute("", 0, buf).unwrap();
}

fn execute(buf: &mut BytesMut) {
    frontend::execute("", 0, buf).unwrap();
}

fn sync(buf: &mut BytesMut) {
    frontend::sync(buf);
}

fn query(buf: &mut BytesMut, sql: &str) {
    frontend::query(sql, buf).unwrap();
}

/// FunctionCall of `oid` with text arguments.
fn function_call(buf: &mut BytesMut, oid: u32, args: &[&str]) {
    let start = buf.len();
    buf.put_u8(b'F');
    buf.put_i32(0);
    buf.put_u32(oid);
    buf.put_i16(0);
    buf.put_i16(args.len() as i16);
    for a in args {
        buf.put_i32(a.len() as i32);
        buf.put_slice(a.as_bytes());
    }
    buf.put_i16(0);
    let len = (buf.len() - start - 1) as i32;
    buf[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// (tenant setting, distinct tenants of the visible customers, transaction status).
async fn raw_view(raw: &mut Raw) -> (String, String) {
    let mut buf = BytesMut::new();
    query(
        &mut buf,
        "SELECT current_setting('app.current_tenant', true), \
         coalesce(string_agg(DISTINCT tenant_id, ',' ORDER BY tenant_id), '') FROM customers",
    );
    raw.send(&buf).await;
    let msgs = raw.until_ready(1).await;
    let rows = data_rows(&msgs);
    assert_eq!(rows.len(), 1, "{:?}", summarize(&msgs));
    (rows[0][0].clone(), rows[0][1].clone())
}

async fn exchange(raw: &mut Raw, bytes: &BytesMut, readies: usize) -> Vec<RawMessage> {
    raw.send(bytes).await;
    raw.until_ready(readies).await
}

/// Messages read within `ms` (nothing more arriving ends it too).
async fn read_for(raw: &mut Raw, ms: u64) -> Vec<RawMessage> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(ms), async {
        while let Some(m) = raw.try_read().await {
            out.push(m);
        }
    })
    .await;
    out
}

/// What a fresh tokio-postgres client of `tenant` sees (bounded): its tenant setting,
/// whether it is outside any transaction block, and its visible customers.
async fn next_tenant(env: &Env, tenant: &str) -> (String, bool, Vec<(String, String)>) {
    let conninfo = env.conninfo("next", &env.token(tenant), "disable");
    let fut = async move {
        let (c, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
            .await
            .expect("the next tenant gets a server");
        tokio::spawn(conn);
        let setting: String =
            scalar(&c, "SELECT current_setting('app.current_tenant', true)").await;
        let not_in_txn = c
            .simple_query("SAVEPOINT probe")
            .await
            .err()
            .and_then(|e| e.code().cloned())
            .is_some_and(|c| c.code() == "25P01");
        (setting, not_in_txn, visible_customers(&c).await)
    };
    tokio::time::timeout(Duration::from_secs(15), fut)
        .await
        .expect("the next tenant is served within 15 s")
}

async fn assert_next_tenants_clean(env: &Env, what: &str) {
    let (t, not_in_txn, rows) = next_tenant(env, "globex").await;
    assert_eq!(t, "globex", "{what}: globex setting");
    assert!(
        not_in_txn,
        "{what}: globex not inside the attacker's transaction"
    );
    assert!(
        rows.len() == 2 && rows.iter().all(|(t, _)| t == "globex"),
        "{what}: globex rows {rows:?}"
    );
    let (t, not_in_txn, rows) = next_tenant(env, "acme").await;
    assert_eq!(t, "acme", "{what}: acme setting");
    assert!(
        not_in_txn,
        "{what}: acme not inside the attacker's transaction"
    );
    assert!(
        rows.len() == 3 && rows.iter().all(|(t, _)| t == "acme"),
        "{what}: acme rows {rows:?}"
    );
}

/// Makes the only server hold globex's context, so the attacker's next binding sends
/// the context statement ahead of its bytes (transaction mode).
async fn globex_was_here(env: &Env) {
    let c = env.connect("globex").await;
    assert_eq!(visible_customers(&c).await.len(), 2);
}

/// Bind("") of the context statement with the attacker's parameters, pipelined right
/// behind the first message of a transaction (the context goes ahead of it), behind
/// RESET ALL / DISCARD ALL (the context is re-applied right after), inside an explicit
/// transaction, with Flush instead of Sync, and Execute/Describe of the unnamed portal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_context_statement_unreachable_in_pipelines() {
    let evil = ["app.current_tenant", "globex"];
    let mut cases: Vec<(&str, BytesMut, usize)> = Vec::new();
    for lead in ["SELECT 1", "RESET ALL", "DISCARD ALL"] {
        let mut b = BytesMut::new();
        query(&mut b, lead);
        bind(&mut b, "", &evil);
        execute(&mut b);
        sync(&mut b);
        cases.push((lead, b, 2));
    }
    {
        let mut b = BytesMut::new();
        query(&mut b, "RESET ALL");
        frontend::describe(b'P', "", &mut b).unwrap();
        execute(&mut b);
        sync(&mut b);
        cases.push(("reset, portal", b, 2));
    }
    {
        let mut b = BytesMut::new();
        pbe(&mut b, "RESET ALL");
        sync(&mut b);
        bind(&mut b, "", &evil);
        execute(&mut b);
        sync(&mut b);
        cases.push(("extended reset then bind", b, 2));
    }
    {
        let mut b = BytesMut::new();
        query(&mut b, "BEGIN");
        query(&mut b, "RESET ALL");
        bind(&mut b, "", &evil);
        execute(&mut b);
        sync(&mut b);
        query(&mut b, "COMMIT");
        cases.push(("in transaction", b, 4));
    }
    for mode in MODES {
        for (what, bytes, readies) in &cases {
            let env = one_server(mode).await;
            if mode == PoolMode::Transaction {
                globex_was_here(&env).await;
            }
            let mut attacker = Raw::connect(env.port(), "mallory", &env.token("acme")).await;
            if mode == PoolMode::Transaction {
                // The server holds globex again: the context statement precedes the bytes.
                globex_was_here(&env).await;
            }
            let msgs = exchange(&mut attacker, bytes, *readies).await;
            let rows = data_rows(&msgs);
            assert!(
                !rows.iter().flatten().any(|v| v.contains("globex")),
                "{mode:?} {what}: {:?} {rows:?}",
                summarize(&msgs)
            );
            assert_eq!(
                raw_view(&mut attacker).await,
                ("acme".into(), "acme".into()),
                "{mode:?} {what}: {:?}",
                summarize(&msgs)
            );
            // Flush variant: the same Bind, answered before any Sync.
            let mut b = BytesMut::new();
            query(&mut b, "RESET ALL");
            bind(&mut b, "", &evil);
            execute(&mut b);
            frontend::flush(&mut b);
            attacker.send(&b).await;
            let msgs = read_for(&mut attacker, 1500).await;
            assert!(
                !data_rows(&msgs)
                    .iter()
                    .flatten()
                    .any(|v| v.contains("globex")),
                "{mode:?} flush: {:?}",
                summarize(&msgs)
            );
            let mut b = BytesMut::new();
            sync(&mut b);
            attacker.send(&b).await;
            attacker.until_ready(1).await;
            assert_eq!(
                raw_view(&mut attacker).await,
                ("acme".into(), "acme".into()),
                "{mode:?} flush"
            );
            drop(attacker);
            assert_next_tenants_clean(&env, &format!("{mode:?} {what}")).await;
        }
    }
}

/// RESET ALL run in extended protocol and committed by a pipelined COMMIT (an Execute of
/// a transaction-control statement commits at once), then an error, so that the Query
/// the proxy re-applies the context behind is skipped by the server, and the re-applied
/// context with it (its Parse/Bind/Execute come before its Sync). The server keeps the
/// reset tenant setting ('') while the proxy believes it holds the attacker's context;
/// in transaction mode the next client of the same tenant reuses it as is.
/// `split`: the error is Flush-ed and the Query + Sync come in a later write.
async fn reapply_skipped(mode: PoolMode, split: bool) {
    let env = one_server(mode).await;
    let mut attacker = Raw::connect(env.port(), "mallory", &env.token("acme")).await;
    let mut b = BytesMut::new();
    pbe(&mut b, "RESET ALL");
    pbe(&mut b, "COMMIT");
    parse(&mut b, "", "SELEC 1");
    let mut first = Vec::new();
    if split {
        frontend::flush(&mut b);
        attacker.send(&b).await;
        first = read_for(&mut attacker, 1500).await;
        b = BytesMut::new();
    }
    query(&mut b, "SELECT 1");
    sync(&mut b);
    let msgs = exchange(&mut attacker, &b, 1).await;
    let view = raw_view(&mut attacker).await;
    assert_eq!(
        view,
        ("acme".into(), "acme".into()),
        "{mode:?}: the attacker keeps its tenant ({:?} {:?})",
        summarize(&first),
        summarize(&msgs)
    );
    if mode == PoolMode::Session {
        drop(attacker);
    }
    assert_next_tenants_clean(&env, &format!("{mode:?}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_reapply_skipped_after_committed_reset_session() {
    reapply_skipped(PoolMode::Session, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_reapply_skipped_after_committed_reset_transaction() {
    reapply_skipped(PoolMode::Transaction, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_reapply_skipped_across_writes_session() {
    reapply_skipped(PoolMode::Session, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_reapply_skipped_across_writes_transaction() {
    reapply_skipped(PoolMode::Transaction, true).await;
}

/// Statement-name bookkeeping in transaction mode: every ordering answers as PostgreSQL
/// does directly (same message summary), and nothing of another client is reachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_statement_names_as_directly() {
    let env = one_server(PoolMode::Transaction).await;
    let mut cases: Vec<(&str, Vec<BytesMut>)> = Vec::new();
    let bind_s1 = |b: &mut BytesMut| {
        bind(b, "s1", &[]);
        execute(b);
        sync(b);
    };
    // Parse that fails, then Bind.
    cases.push(("failed parse", {
        let mut a = BytesMut::new();
        parse(&mut a, "s1", "SELEC 1");
        sync(&mut a);
        let mut b = BytesMut::new();
        bind_s1(&mut b);
        vec![a, b]
    }));
    // Parse skipped after an error.
    cases.push(("skipped parse", {
        let mut a = BytesMut::new();
        parse(&mut a, "", "SELEC 1");
        parse(&mut a, "s1", "SELECT 1");
        sync(&mut a);
        let mut b = BytesMut::new();
        bind_s1(&mut b);
        vec![a, b]
    }));
    // Close then Bind in the same pipeline.
    cases.push(("close then bind", {
        let mut a = BytesMut::new();
        parse(&mut a, "s1", "SELECT 1");
        sync(&mut a);
        let mut b = BytesMut::new();
        frontend::close(b'S', "s1", &mut b).unwrap();
        bind_s1(&mut b);
        let mut c = BytesMut::new();
        bind_s1(&mut c);
        vec![a, b, c]
    }));
    // The same name parsed twice (second with other text).
    cases.push(("parsed twice", {
        let mut a = BytesMut::new();
        parse(&mut a, "s1", "SELECT 1");
        sync(&mut a);
        let mut b = BytesMut::new();
        parse(&mut b, "s1", "SELECT 2");
        sync(&mut b);
        let mut c = BytesMut::new();
        bind_s1(&mut c);
        vec![a, b, c]
    }));
    // Parse twice in one pipeline.
    cases.push(("parsed twice, one pipeline", {
        let mut a = BytesMut::new();
        parse(&mut a, "s1", "SELECT 1");
        parse(&mut a, "s1", "SELECT 2");
        bind(&mut a, "s1", &[]);
        execute(&mut a);
        sync(&mut a);
        let mut c = BytesMut::new();
        bind_s1(&mut c);
        vec![a, c]
    }));
    // DEALLOCATE, DEALLOCATE ALL, DISCARD ALL.
    for sql in ["DEALLOCATE ALL", "DISCARD ALL"] {
        cases.push((sql, {
            let mut a = BytesMut::new();
            parse(&mut a, "s1", "SELECT 1");
            sync(&mut a);
            let mut b = BytesMut::new();
            query(&mut b, sql);
            let mut c = BytesMut::new();
            bind_s1(&mut c);
            vec![a, b, c]
        }));
    }
    // SQL PREPARE / EXECUTE, then protocol Bind of the same name.
    cases.push(("sql prepare", {
        let mut a = BytesMut::new();
        query(&mut a, "PREPARE s1 AS SELECT 1");
        let mut b = BytesMut::new();
        query(&mut b, "EXECUTE s1");
        let mut c = BytesMut::new();
        bind_s1(&mut c);
        let mut d = BytesMut::new();
        query(&mut d, "DEALLOCATE s1");
        vec![a, b, c, d]
    }));
    for (what, steps) in &cases {
        let mut through = Raw::connect(env.port(), "mallory", &env.token("acme")).await;
        let mut direct = Raw::connect(env.pg.port(), "postgres", "").await;
        for (i, step) in steps.iter().enumerate() {
            let a = summarize(&exchange(&mut through, step, 1).await);
            let b = summarize(&exchange(&mut direct, step, 1).await);
            // SQL PREPARE may be refused/pinned by the guard; then only check isolation.
            if *what != "sql prepare" {
                assert_eq!(a, b, "{what} step {i}: as directly");
            }
        }
        assert_eq!(
            raw_view(&mut through).await,
            ("acme".into(), "acme".into()),
            "{what}"
        );
        drop(through);
        assert_next_tenants_clean(&env, what).await;
    }
}

/// Transaction mode: a Close of a named statement that the server would skip (after an
/// error, before the Sync) is answered by the proxy, which forgets the statement at
/// once; directly the Close is skipped and the statement still exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_skipped_close_keeps_the_statement() {
    let env = one_server(PoolMode::Transaction).await;
    let mut through = Raw::connect(env.port(), "mallory", &env.token("acme")).await;
    let mut direct = Raw::connect(env.pg.port(), "postgres", "").await;
    let mut a = BytesMut::new();
    parse(&mut a, "s1", "SELECT 1");
    sync(&mut a);
    let mut b = BytesMut::new();
    parse(&mut b, "", "SELEC 1");
    frontend::close(b'S', "s1", &mut b).unwrap();
    sync(&mut b);
    let mut c = BytesMut::new();
    bind(&mut c, "s1", &[]);
    execute(&mut c);
    sync(&mut c);
    for (i, step) in [a, b, c].iter().enumerate() {
        let x = summarize(&exchange(&mut through, step, 1).await);
        let y = summarize(&exchange(&mut direct, step, 1).await);
        assert_eq!(x, y, "step {i}: as directly");
    }
}

/// Transaction mode: SQL `DEALLOCATE name` of a protocol-level statement (pgx and
/// database/sql drop cached statements this way) deallocates it as directly: the name is
/// free again, a Bind of it fails with 26000, a new Parse of it works; inside a
/// transaction block too, and after the statement moved servers; in an aborted
/// transaction it fails as directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_sql_deallocate_of_protocol_statement() {
    let env = one_server(PoolMode::Transaction).await;
    let parse_s1 = |sql: &str| {
        let mut a = BytesMut::new();
        parse(&mut a, "S1", sql);
        sync(&mut a);
        a
    };
    let q = |sql: &str| {
        let mut b = BytesMut::new();
        query(&mut b, sql);
        b
    };
    let bind_s1 = || {
        let mut c = BytesMut::new();
        bind(&mut c, "S1", &[]);
        execute(&mut c);
        sync(&mut c);
        c
    };
    let cases: Vec<(&str, Vec<BytesMut>)> = vec![
        (
            "deallocate then bind",
            vec![parse_s1("SELECT 1"), q("DEALLOCATE \"S1\""), bind_s1()],
        ),
        (
            "deallocate prepare then parse again",
            vec![
                parse_s1("SELECT 1"),
                q("deallocate prepare \"S1\";"),
                parse_s1("SELECT 2"),
                bind_s1(),
            ],
        ),
        (
            "in a transaction block",
            vec![
                parse_s1("SELECT 1"),
                q("BEGIN"),
                q("DEALLOCATE \"S1\""),
                q("COMMIT"),
                bind_s1(),
            ],
        ),
        (
            "in an aborted transaction",
            vec![
                parse_s1("SELECT 1"),
                q("BEGIN"),
                q("SELECT 1/0"),
                q("DEALLOCATE \"S1\""),
                q("ROLLBACK"),
                bind_s1(),
            ],
        ),
        ("unknown name", vec![q("DEALLOCATE \"S1\""), bind_s1()]),
    ];
    for (what, steps) in &cases {
        let mut through = Raw::connect(env.port(), "mallory", &env.token("acme")).await;
        let mut direct = Raw::connect(env.pg.port(), "postgres", "").await;
        for (i, step) in steps.iter().enumerate() {
            let x = summarize(&exchange(&mut through, step, 1).await);
            let y = summarize(&exchange(&mut direct, step, 1).await);
            assert_eq!(x, y, "{what} step {i}: as directly");
        }
        assert_eq!(
            raw_view(&mut through).await,
            ("acme".into(), "acme".into()),
            "{what}"
        );
        drop(through);
        assert_next_tenants_clean(&env, what).await;
    }
}

/// Two tenants prepare the same text under the same name on the same server (the
/// server-side name is shared): each sees only its own rows, also when binding in a
/// later transaction without parsing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_shared_statement_text_keeps_tenants_apart() {
    let env = one_server(PoolMode::Transaction).await;
    let sql = "SELECT tenant_id FROM customers ORDER BY id";
    let mut acme = Raw::connect(env.port(), "a", &env.token("acme")).await;
    let mut globex = Raw::connect(env.port(), "g", &env.token("globex")).await;
    for raw in [&mut acme, &mut globex] {
        let mut b = BytesMut::new();
        parse(&mut b, "s1", sql);
        sync(&mut b);
        exchange(raw, &b, 1).await;
    }
    for _ in 0..2 {
        for (raw, tenant, n) in [(&mut acme, "acme", 3), (&mut globex, "globex", 2)] {
            let mut b = BytesMut::new();
            bind(&mut b, "s1", &[]);
            execute(&mut b);
            sync(&mut b);
            let rows = data_rows(&exchange(raw, &b, 1).await);
            assert_eq!(rows.len(), n, "{tenant}: {rows:?}");
            assert!(rows.iter().all(|r| r[0] == tenant), "{tenant}: {rows:?}");
        }
    }
}

/// Transaction mode: a lone Flush (no reply owed) when the server already holds the
/// client's context binds a server that nothing releases: the client holds the only
/// server outside any transaction, and the next tenant cannot get one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_lone_flush_does_not_hold_the_server() {
    for lone in [b'd', b'H'] {
        let env = one_server(PoolMode::Transaction).await;
        let mut attacker = Raw::connect(env.port(), "mallory", &env.token("acme")).await;
        assert_eq!(
            raw_view(&mut attacker).await,
            ("acme".into(), "acme".into())
        );
        let mut b = BytesMut::new();
        if lone == b'H' {
            frontend::flush(&mut b);
        } else {
            b.put_u8(b'd');
            b.put_i32(5);
            b.put_u8(b'x');
        }
        attacker.send(&b).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_next_tenants_clean(&env, &format!("lone {}", lone as char)).await;
        drop(attacker);
    }
}

/// Transaction mode: Close of a named statement is answered by the proxy itself; with a
/// Flush behind it (no Sync) the CloseComplete must still arrive, as directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_close_then_flush_is_answered() {
    let env = one_server(PoolMode::Transaction).await;
    let mut attacker = Raw::connect(env.port(), "mallory", &env.token("acme")).await;
    let mut b = BytesMut::new();
    parse(&mut b, "s1", "SELECT 1");
    sync(&mut b);
    exchange(&mut attacker, &b, 1).await;
    let mut b = BytesMut::new();
    frontend::close(b'S', "s1", &mut b).unwrap();
    frontend::flush(&mut b);
    attacker.send(&b).await;
    let got = summarize(&read_for(&mut attacker, 2000).await);
    assert_eq!(got, ["3"], "CloseComplete after Flush");
    let mut b = BytesMut::new();
    sync(&mut b);
    exchange(&mut attacker, &b, 1).await;
    drop(attacker);
    assert_next_tenants_clean(&env, "close flush").await;
}

/// Reply accounting after errors: BEGIN in a Query behind an error, refusals interleaved
/// with errors (markers skipped with their refusal), FunctionCalls while skipping, a
/// Flush-ed error with messages in a later write. The attacker sees what PostgreSQL
/// would say (refusals aside), keeps its tenant, and the next tenants are outside any
/// transaction with their own rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_accounting_after_errors() {
    let mut cases: Vec<(&str, Vec<BytesMut>, Vec<&str>)> = Vec::new();
    cases.push((
        "begin behind error",
        {
            let mut a = BytesMut::new();
            parse(&mut a, "", "SELEC 1");
            query(&mut a, "BEGIN");
            sync(&mut a);
            vec![a]
        },
        vec!["E 42601 syntax error at or near \"SELEC\"", "Z I"],
    ));
    cases.push((
        "refusals interleaved with errors",
        {
            let mut a = BytesMut::new();
            parse(&mut a, "", "SELEC 1");
            query(&mut a, "SET app.current_tenant = 'globex'");
            parse(&mut a, "", "SET app.current_tenant = 'globex'");
            sync(&mut a);
            let mut b = BytesMut::new();
            query(&mut b, "BEGIN");
            let mut c = BytesMut::new();
            parse(&mut c, "", "SET app.current_tenant = 'globex'");
            query(&mut c, "SELECT 1");
            sync(&mut c);
            let mut d = BytesMut::new();
            query(&mut d, "SET app.current_tenant = 'globex'");
            let mut e = BytesMut::new();
            query(&mut e, "ROLLBACK");
            vec![a, b, c, d, e]
        },
        vec![],
    ));
    cases.push((
        "function calls while skipping",
        {
            let mut a = BytesMut::new();
            parse(&mut a, "", "SELEC 1");
            function_call(&mut a, 2078, &["app.current_tenant", "globex", "false"]);
            query(&mut a, "BEGIN");
            sync(&mut a);
            let mut b = BytesMut::new();
            function_call(&mut b, 2078, &["app.current_tenant", "globex", "false"]);
            vec![a, b]
        },
        vec![],
    ));
    cases.push((
        "flushed error, begin in a later write",
        {
            let mut a = BytesMut::new();
            bind(&mut a, "nosuch", &[]);
            frontend::flush(&mut a);
            query(&mut a, "BEGIN");
            query(&mut a, "SELECT 1");
            sync(&mut a);
            vec![a]
        },
        vec![],
    ));
    cases.push((
        "error inside explicit transaction then sync",
        {
            let mut a = BytesMut::new();
            pbe(&mut a, "BEGIN");
            pbe(&mut a, "SELEC");
            pbe(&mut a, "COMMIT");
            sync(&mut a);
            let mut b = BytesMut::new();
            query(&mut b, "ROLLBACK");
            vec![a, b]
        },
        vec![],
    ));
    for mode in MODES {
        for (what, steps, expect_first) in &cases {
            let env = one_server(mode).await;
            let mut attacker = Raw::connect(env.port(), "mallory", &env.token("acme")).await;
            for (i, step) in steps.iter().enumerate() {
                let got = summarize(&exchange(&mut attacker, step, 1).await);
                if i == 0 && !expect_first.is_empty() {
                    assert_eq!(&got, expect_first, "{mode:?} {what}");
                }
                assert!(
                    !got.iter().any(|l| l.contains("rlsgate_refused")),
                    "{mode:?} {what} step {i}: marker leaked {got:?}"
                );
            }
            // Whatever the attacker left: ROLLBACK it, then the view.
            let mut b = BytesMut::new();
            query(&mut b, "ROLLBACK");
            exchange(&mut attacker, &b, 1).await;
            assert_eq!(
                raw_view(&mut attacker).await,
                ("acme".into(), "acme".into()),
                "{mode:?} {what}"
            );
            drop(attacker);
            assert_next_tenants_clean(&env, &format!("{mode:?} {what}")).await;
        }
    }
}

/// COPY FROM STDIN in extended protocol with a Sync before CopyFail (the server ignores
/// it), and COPY TO STDOUT: the session goes on, nothing is copied, the next tenant is
/// served and not inside anything of the attacker's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_copy_fail_and_copy_out() {
    for mode in MODES {
        let env = one_server(mode).await;
        let admin = env.admin().await;
        admin
            .batch_execute("CREATE TABLE copy_sink (v text); GRANT ALL ON copy_sink TO app_rls")
            .await
            .unwrap();
        let mut attacker = Raw::connect(env.port(), "mallory", &env.token("acme")).await;
        let mut b = BytesMut::new();
        pbe(&mut b, "COPY copy_sink (v) FROM STDIN");
        sync(&mut b);
        attacker.send(&b).await;
        let first = read_for(&mut attacker, 1000).await;
        assert!(
            summarize(&first).iter().any(|l| l == "G"),
            "{mode:?}: {:?}",
            summarize(&first)
        );
        let mut b = BytesMut::new();
        b.put_u8(b'd');
        b.put_i32(4 + 2);
        b.put_slice(b"x\n");
        frontend::copy_fail("nope", &mut b).unwrap();
        sync(&mut b);
        let got = summarize(&exchange(&mut attacker, &b, 1).await);
        assert!(got[0].starts_with("E 57014"), "{mode:?}: {got:?}");
        // COPY TO STDOUT, simple and extended.
        let mut b = BytesMut::new();
        query(&mut b, "COPY (SELECT tenant_id FROM customers) TO STDOUT");
        pbe(&mut b, "COPY (SELECT tenant_id FROM customers) TO STDOUT");
        sync(&mut b);
        let msgs = exchange(&mut attacker, &b, 2).await;
        let copied: Vec<String> = msgs
            .iter()
            .filter(|(t, _)| *t == b'd')
            .map(|(_, body)| String::from_utf8_lossy(body).into_owned())
            .collect();
        assert_eq!(copied.len(), 6, "{mode:?}: {copied:?}");
        assert!(copied.iter().all(|l| l == "acme\n"), "{mode:?}: {copied:?}");
        assert_eq!(
            raw_view(&mut attacker).await,
            ("acme".into(), "acme".into())
        );
        drop(attacker);
        let n: i64 = scalar(&admin, "SELECT count(*) FROM copy_sink").await;
        assert_eq!(n, 0, "{mode:?}");
        assert_next_tenants_clean(&env, &format!("{mode:?} copy")).await;
    }
}

/// A transaction left open at disconnect (also with a pipeline in flight, and with an
/// unsynced extended batch): the next tenant is not inside it and sees none of its
/// changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_open_transaction_at_disconnect() {
    let mut variants: Vec<(&str, BytesMut)> = Vec::new();
    {
        let mut b = BytesMut::new();
        query(&mut b, "BEGIN");
        query(&mut b, "UPDATE customers SET name = 'pwned'");
        variants.push(("open txn", b));
    }
    {
        let mut b = BytesMut::new();
        query(&mut b, "BEGIN");
        query(&mut b, "UPDATE customers SET name = 'pwned'");
        query(&mut b, "SELECT pg_sleep(0.5)");
        variants.push(("in flight", b));
    }
    {
        let mut b = BytesMut::new();
        pbe(&mut b, "BEGIN");
        pbe(&mut b, "UPDATE customers SET name = 'pwned'");
        frontend::flush(&mut b);
        variants.push(("unsynced", b));
    }
    for mode in MODES {
        for (what, bytes) in &variants {
            let env = one_server(mode).await;
            let mut attacker = Raw::connect(env.port(), "mallory", &env.token("acme")).await;
            attacker.send(bytes).await;
            let _ = read_for(&mut attacker, 200).await;
            drop(attacker);
            assert_next_tenants_clean(&env, &format!("{mode:?} {what}")).await;
            let admin = env.admin().await;
            let n: i64 = scalar(
                &admin,
                "SELECT count(*) FROM customers WHERE name = 'pwned'",
            )
            .await;
            assert_eq!(n, 0, "{mode:?} {what}");
        }
    }
}

/// A cancel request mid-pipeline (transaction mode): it hits the attacker's own
/// statement or nothing; the next tenant's statement is never cancelled and is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_cancel_mid_pipeline() {
    let env = one_server(PoolMode::Transaction).await;
    let mut attacker = Raw::connect(env.port(), "mallory", &env.token("acme")).await;
    let (pid, secret) = attacker.key.unwrap();
    let mut b = BytesMut::new();
    query(&mut b, "SELECT pg_sleep(0.3)");
    query(&mut b, "SELECT 1");
    attacker.send(&b).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cancel = |pid: i32, secret: i32| {
        let port = env.port();
        async move {
            use tokio::io::AsyncWriteExt;
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let mut m = BytesMut::new();
            frontend::cancel_request(pid, secret, &mut m);
            s.write_all(&m).await.unwrap();
            let _ = s.shutdown().await;
        }
    };
    cancel(pid, secret).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), attacker.until_ready(2)).await;
    // The victim runs a slow statement; the attacker fires cancels at it meanwhile.
    let victim = {
        let conninfo = env.conninfo("v", &env.token("globex"), "disable");
        tokio::spawn(async move {
            let (c, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            c.simple_query("SELECT pg_sleep(0.5)").await.map(|_| ())
        })
    };
    for _ in 0..10 {
        cancel(pid, secret).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = tokio::time::timeout(Duration::from_secs(15), victim)
        .await
        .expect("victim served")
        .unwrap();
    assert!(r.is_ok(), "the victim's statement was cancelled: {r:?}");
    assert_eq!(
        raw_view(&mut attacker).await,
        ("acme".into(), "acme".into())
    );
}
