//! Tenth red-team pass (on 11fa559): the DEALLOCATE ALL wait, the extended DEALLOCATE
//! ALL, the dynamic one noticed at release, the no-rows Describe on a dirty server.
//! Its two findings pass since the fixes of session 7: the wait ends when a COPY FROM
//! STDIN starts behind the DEALLOCATE ALL (it deadlocked: the server waited for the
//! client's data, the session for the Query's end); a dynamic DEALLOCATE ALL noticed at
//! release clears only statements parsed before the transaction.

use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;

use crate::harness::{bind, data_rows, summarize, Env, Raw, RawMessage};

async fn env(size: usize) -> Env {
    crate::shapes::txn_env(size).await
}

fn parse(b: &mut BytesMut, name: &str, sql: &str) {
    frontend::parse(name, sql, std::iter::empty(), b).unwrap();
}

fn sync(mut b: BytesMut) -> BytesMut {
    frontend::sync(&mut b);
    b
}

fn prepare(name: &str, sql: &str) -> BytesMut {
    let mut b = BytesMut::new();
    parse(&mut b, name, sql);
    frontend::describe(b'S', name, &mut b).unwrap();
    sync(b)
}

fn bind_execute(b: &mut BytesMut, name: &str) {
    bind(b, name, &[]);
    frontend::execute("", 0, b).unwrap();
}

fn run(name: &str) -> BytesMut {
    let mut b = BytesMut::new();
    bind_execute(&mut b, name);
    sync(b)
}

fn query(sql: &str) -> BytesMut {
    let mut b = BytesMut::new();
    frontend::query(sql, &mut b).unwrap();
    b
}

async fn exchange(r: &mut Raw, bytes: &BytesMut, syncs: usize) -> Vec<RawMessage> {
    r.send(bytes).await;
    r.until_ready(syncs).await
}

async fn both(
    through: &mut Raw,
    direct: &mut Raw,
    bytes: &BytesMut,
    syncs: usize,
) -> (Vec<String>, Vec<String>, Vec<RawMessage>, Vec<RawMessage>) {
    let t = exchange(through, bytes, syncs).await;
    let d = exchange(direct, bytes, syncs).await;
    (summarize(&t), summarize(&d), t, d)
}

async fn direct(env: &Env) -> Raw {
    Raw::connect(env.pg.port(), "postgres", "").await
}

async fn same(a: &mut Raw, d: &mut Raw, bytes: &BytesMut, syncs: usize, what: &str) {
    let (t, dd, _, _) = both(a, d, bytes, syncs).await;
    assert_eq!(t, dd, "{what}");
}

/// A simple Query `DEALLOCATE ALL; COPY copy_sink FROM STDIN`: the server answers
/// CopyInResponse before the Query's ReadyForQuery and waits for the client's CopyData.
/// Directly the copy runs. Through rlsgate the session waits for that ReadyForQuery
/// without reading the client (`await_server(Pipeline::deallocating_pending)`): the
/// CopyData is never read, neither side moves (deadlock, server held).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_copy_from_stdin_behind_deallocate_all_deadlocks() {
    let env = env(1).await;
    env.pg
        .psql(
            "app",
            "CREATE TABLE copy_sink (x int); GRANT ALL ON copy_sink TO app_rls",
        )
        .unwrap();
    let mut a = Raw::connect(env.port(), "a", &env.token("acme")).await;
    let mut d = direct(&env).await;
    same(&mut a, &mut d, &prepare("s1", "SELECT 42"), 1, "prepare").await;
    let q = query("DEALLOCATE ALL; COPY copy_sink FROM STDIN");
    let mut data = BytesMut::new();
    frontend::CopyData::new(&b"1\n"[..])
        .unwrap()
        .write(&mut data);
    frontend::copy_done(&mut data);
    for (who, r) in [("directly", &mut d), ("through rlsgate", &mut a)] {
        r.send(&q).await;
        let first = tokio::time::timeout(Duration::from_secs(5), async {
            vec![r.read().await, r.read().await]
        })
        .await
        .unwrap_or_else(|_| panic!("{who}: CommandComplete + CopyInResponse"));
        assert_eq!(summarize(&first), ["C", "G"], "{who}");
        r.send(&data).await;
        let rest = tokio::time::timeout(Duration::from_secs(5), r.until_ready(1))
            .await
            .unwrap_or_else(|_| panic!("{who}: the copy's end within 5 s"));
        assert_eq!(summarize(&rest), ["C", "Z I"], "{who}");
    }
    let (t, dd, _, _) = both(&mut a, &mut d, &run("s1"), 1).await;
    assert!(dd[0].starts_with("E 26000"), "directly: {dd:?}");
    assert_eq!(t, dd);
}

/// A dynamic `DEALLOCATE ALL` (DO block) followed, in the same transaction, by a Parse of
/// a new statement: directly the new statement survives (made after the deallocation);
/// through rlsgate the release count finds fewer statements than its record (the old
/// ones are gone) and clears every statement of the client, the new one too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_statement_parsed_after_a_dynamic_deallocate_all_is_cleared() {
    let env = env(1).await;
    let mut a = Raw::connect(env.port(), "a", &env.token("acme")).await;
    let mut d = direct(&env).await;
    same(&mut a, &mut d, &prepare("s1", "SELECT 42"), 1, "prepare s1").await;
    same(&mut a, &mut d, &query("BEGIN"), 1, "begin").await;
    same(
        &mut a,
        &mut d,
        &query("DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$"),
        1,
        "do",
    )
    .await;
    same(&mut a, &mut d, &prepare("s2", "SELECT 43"), 1, "prepare s2").await;
    same(&mut a, &mut d, &query("COMMIT"), 1, "commit").await;
    let (t, dd, _, dm) = both(&mut a, &mut d, &run("s2"), 1).await;
    assert_eq!(dd, ["2", "D", "C", "Z I"], "directly");
    assert_eq!(data_rows(&dm), [["43"]]);
    assert_eq!(t, dd, "s2 after the transaction");
    let (t, dd, _, _) = both(&mut a, &mut d, &run("s1"), 1).await;
    assert!(dd[0].starts_with("E 26000"), "directly: {dd:?}");
    assert_eq!(t, dd, "s1 after the transaction");
}

/// `DEALLOCATE ALL` only in a string literal or a comment takes nothing (the statement
/// keeps running); a real one inside an explicit transaction stays done after ROLLBACK
/// (DEALLOCATE is not transactional), as directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_all_in_literals_and_rolled_back_transactions_as_directly() {
    let env = env(1).await;
    let mut a = Raw::connect(env.port(), "a", &env.token("acme")).await;
    let mut d = direct(&env).await;
    same(&mut a, &mut d, &prepare("s1", "SELECT 42"), 1, "prepare").await;
    for q in [
        "SELECT 'DEALLOCATE ALL'",
        "/* DEALLOCATE ALL */ SELECT 1",
        "SELECT 1 -- DISCARD ALL",
        "SELECT $$DISCARD ALL$$",
    ] {
        same(&mut a, &mut d, &query(q), 1, q).await;
        let (t, dd, _, _) = both(&mut a, &mut d, &run("s1"), 1).await;
        assert_eq!(dd, ["2", "D", "C", "Z I"], "directly after {q}");
        assert_eq!(t, dd, "after {q}");
    }
    same(&mut a, &mut d, &query("BEGIN"), 1, "begin").await;
    same(&mut a, &mut d, &query("DEALLOCATE ALL"), 1, "dealloc").await;
    same(&mut a, &mut d, &query("ROLLBACK"), 1, "rollback").await;
    let (t, dd, _, _) = both(&mut a, &mut d, &run("s1"), 1).await;
    assert!(dd[0].starts_with("E 26000"), "directly: {dd:?}");
    assert_eq!(t, dd, "after rollback");
}

/// `DISCARD ALL` resets the client's settings; the tenant context comes back (acme sees
/// its rows only), and globex, next on the only server, sees only its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_all_keeps_the_tenant_and_resets_settings() {
    let env = env(1).await;
    let mut a = Raw::connect(env.port(), "a", &env.token("acme")).await;
    let mut d = direct(&env).await;
    same(&mut a, &mut d, &query("SET work_mem = '1234kB'"), 1, "set").await;
    let mut m = query("DISCARD ALL");
    m.extend_from_slice(&query("SHOW work_mem"));
    let (t, dd, tm, dm) = both(&mut a, &mut d, &m, 2).await;
    assert_eq!(t, dd);
    assert_eq!(data_rows(&tm), data_rows(&dm));
    let got = exchange(&mut a, &query("SELECT id FROM shapes ORDER BY id"), 1).await;
    assert_eq!(data_rows(&got), [["1"], ["2"]]);
    let mut g = Raw::connect(env.port(), "g", &env.token("globex")).await;
    let got = exchange(&mut g, &query("SELECT id FROM shapes ORDER BY id"), 1).await;
    assert_eq!(data_rows(&got), [["3"]]);
    let got = exchange(&mut g, &query("SHOW work_mem"), 1).await;
    assert_eq!(data_rows(&got), [["4MB"]]);
}

/// A cancel reaching a Query `SELECT pg_sleep(5); DEALLOCATE ALL` during the proxy's
/// wait: 57014, the DEALLOCATE ALL never ran, the statement is still there, as directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_the_deallocate_wait_keeps_the_statements() {
    let env = env(1).await;
    let mut a = Raw::connect(env.port(), "a", &env.token("acme")).await;
    let mut d = direct(&env).await;
    same(&mut a, &mut d, &prepare("s1", "SELECT 42"), 1, "prepare").await;
    let mut m = query("SELECT pg_sleep(5); DEALLOCATE ALL");
    m.extend_from_slice(&run("s1"));
    let mut out = Vec::new();
    for (r, port) in [(&mut d, env.pg.port()), (&mut a, env.port())] {
        r.send(&m).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let (pid, secret) = r.key.unwrap();
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut b = BytesMut::new();
        frontend::cancel_request(pid, secret, &mut b);
        tokio::io::AsyncWriteExt::write_all(&mut c, &b)
            .await
            .unwrap();
        let got = r.until_ready(2).await;
        out.push(summarize(&got));
    }
    assert!(out[0][1].starts_with("E 57014"), "directly: {:?}", out[0]);
    assert_eq!(
        out[0][3..],
        ["2", "D", "C", "Z I"],
        "directly the statement ran"
    );
    assert_eq!(out[1], out[0]);
}
