//! Ninth red-team pass (commits e561131..7fb9210): statement copies that keep their
//! shape, the no-rows Describe answered from the shape, the skipped proxy Close, and
//! `DEALLOCATE ALL` / `DISCARD ALL` whose statements come back unless it ran.
//!
//! Every test compares the raw replies through rlsgate (transaction pooling) with those
//! of a direct connection given the same messages. `finding_*` tests failed on 7fb9210
//! and pass since the fixes of session 7: a simple Query that deallocates holds the
//! client's later messages until its outcome is known (`Session::await_server`); an
//! extended Parse of `DEALLOCATE ALL` takes nothing, its Execute's CommandComplete does;
//! the no-rows Describe is answered from the shape only on a clean server; the release
//! count that finds fewer statements than rlsgate made (a dynamic `DEALLOCATE ALL`)
//! clears the client's statements too. The others are attacks that held.

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

fn describe_s(name: &str) -> BytesMut {
    let mut b = BytesMut::new();
    frontend::describe(b'S', name, &mut b).unwrap();
    sync(b)
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

/// A Bind of the client's statement pipelined (same write) behind a simple Query whose
/// `DEALLOCATE ALL` does not run (an error before it in the Query): directly the
/// statement is there and runs; through rlsgate its statements are taken out when the
/// Query's text is seen and only come back at the Query's ReadyForQuery, so the Bind
/// already stepped behind it finds no statement (26000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_a_bind_behind_a_deallocate_that_does_not_run() {
    let env = env(1).await;
    let mut a = Raw::connect(env.port(), "a", &env.token("acme")).await;
    let mut d = direct(&env).await;
    same(&mut a, &mut d, &prepare("s1", "SELECT 42"), 1, "prepare").await;
    let mut m = query("SELECT 1/0; DEALLOCATE ALL");
    m.extend_from_slice(&run("s1"));
    let (t, dd, _, dm) = both(&mut a, &mut d, &m, 2).await;
    assert_eq!(
        dd,
        ["E 22012 division by zero", "Z I", "2", "D", "C", "Z I"],
        "directly"
    );
    assert_eq!(data_rows(&dm), [["42"]]);
    assert_eq!(t, dd, "through rlsgate");
}

/// Same window, with a Describe of a no-rows statement and a Parse reusing the name:
/// directly the Parse fails (42P05, the statement is still there) and the old text keeps
/// running; through rlsgate the Parse succeeds (the name looked free), and the restore
/// (`or_insert`) keeps the new text: the client's `s1` now runs another statement than
/// directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_a_parse_behind_a_deallocate_that_does_not_run() {
    let env = env(1).await;
    let mut a = Raw::connect(env.port(), "a", &env.token("acme")).await;
    let mut d = direct(&env).await;
    same(&mut a, &mut d, &prepare("s1", "SELECT 42"), 1, "prepare").await;
    let mut m = query("SELECT 1/0; DEALLOCATE ALL");
    let mut p = BytesMut::new();
    parse(&mut p, "s1", "SELECT 43");
    bind_execute(&mut p, "s1");
    m.extend_from_slice(&sync(p));
    let (t, dd, _, _) = both(&mut a, &mut d, &m, 2).await;
    assert_eq!(
        dd,
        [
            "E 22012 division by zero",
            "Z I",
            "E 42P05 prepared statement \"s1\" already exists",
            "Z I"
        ],
        "directly"
    );
    let (t2, dd2, tm, dm) = both(&mut a, &mut d, &run("s1"), 1).await;
    assert_eq!(data_rows(&dm), [["42"]], "directly the old text");
    assert_eq!(
        (t, t2, data_rows(&tm)),
        (dd, dd2, data_rows(&dm)),
        "through rlsgate"
    );
}

/// An extended-protocol Parse of `DEALLOCATE ALL` that never runs (not bound, or failed
/// in an aborted transaction): directly nothing is deallocated (only its Execute
/// would); through rlsgate the PARSE branch takes it as run (`drop(take_deallocated())`)
/// and the client's statements are gone (26000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_an_unexecuted_extended_deallocate_all_drops_the_statements() {
    let env = env(1).await;
    let mut a = Raw::connect(env.port(), "a", &env.token("acme")).await;
    let mut d = direct(&env).await;
    same(&mut a, &mut d, &prepare("s1", "SELECT 42"), 1, "prepare").await;
    // Parsed only.
    let mut p = BytesMut::new();
    parse(&mut p, "", "DEALLOCATE ALL");
    same(&mut a, &mut d, &sync(p), 1, "parse only").await;
    let (t, dd, _, dm) = both(&mut a, &mut d, &run("s1"), 1).await;
    assert_eq!(dd, ["2", "D", "C", "Z I"], "directly");
    assert_eq!(data_rows(&dm), [["42"]]);
    assert_eq!(t, dd, "after a Parse of DEALLOCATE ALL");
    // In an aborted transaction the Parse fails (25P02), nothing runs.
    same(&mut a, &mut d, &query("BEGIN"), 1, "begin").await;
    same(&mut a, &mut d, &query("SELECT 1/0"), 1, "abort").await;
    let mut p = BytesMut::new();
    parse(&mut p, "", "DEALLOCATE ALL");
    bind_execute(&mut p, "");
    same(&mut a, &mut d, &sync(p), 1, "parse in aborted txn").await;
    same(&mut a, &mut d, &query("ROLLBACK"), 1, "rollback").await;
    let (t, dd, _, _) = both(&mut a, &mut d, &run("s1"), 1).await;
    assert_eq!(dd, ["2", "D", "C", "Z I"], "directly");
    assert_eq!(t, dd, "after a failed Parse of DEALLOCATE ALL");
}

/// Change 2 lies after a dynamic `DEALLOCATE ALL` (a DO block; the guard lets it pass and
/// redteam5 only fixed its effect on other clients): in the same transaction directly
/// the no-rows statement is gone and its Describe fails 26000; rlsgate answers it from
/// the shape (ParameterDescription + NoData). A row-returning one goes to the server and
/// fails as directly. After the transaction, directly both are gone; through rlsgate the
/// client keeps running them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_no_rows_describe_after_a_dynamic_deallocate_all() {
    let env = env(1).await;
    let mut a = Raw::connect(env.port(), "a", &env.token("acme")).await;
    let mut d = direct(&env).await;
    let ins = "INSERT INTO shapes (id, v) VALUES (100, 1)";
    same(&mut a, &mut d, &prepare("ins", ins), 1, "prepare ins").await;
    same(
        &mut a,
        &mut d,
        &prepare("sel", "SELECT 42"),
        1,
        "prepare sel",
    )
    .await;
    same(&mut a, &mut d, &query("BEGIN"), 1, "begin").await;
    same(
        &mut a,
        &mut d,
        &query("DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$"),
        1,
        "do",
    )
    .await;
    let (t, dd, _, _) = both(&mut a, &mut d, &describe_s("sel"), 1).await;
    assert!(dd[0].starts_with("E 26000"), "directly: {dd:?}");
    let sel_in_txn = t;
    let (t, dd, _, _) = both(&mut a, &mut d, &describe_s("ins"), 1).await;
    assert!(dd[0].starts_with("E 26000"), "directly: {dd:?}");
    let ins_in_txn = (t.clone(), dd.clone());
    same(&mut a, &mut d, &query("ROLLBACK"), 1, "rollback").await;
    let (t, dd, _, _) = both(&mut a, &mut d, &run("sel"), 1).await;
    assert!(dd[0].starts_with("E 26000"), "directly: {dd:?}");
    let sel_after = (t, dd);
    assert_eq!(
        (ins_in_txn.0, sel_after.0, sel_in_txn.len()),
        (ins_in_txn.1, sel_after.1, 2),
        "no-rows Describe in the transaction; run after it"
    );
}

/// Cross-tenant through a named extended `DEALLOCATE ALL`: acme prepares it in one
/// transaction and executes it in a later one, after globex prepared its statement on
/// the same (only) server. The Execute drops globex's `rlsgate_…` copy behind the
/// record's back; the Bind marks the server dirty (`check_bound_statement`), so the
/// release count notices and globex's next run re-prepares: globex sees its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_extended_deallocate_all_run_later_leaves_other_tenants_statements() {
    for size in [1, 2] {
        let env = env(size).await;
        let mut a = Raw::connect(env.port(), "a", &env.token("acme")).await;
        let mut g = Raw::connect(env.port(), "g", &env.token("globex")).await;
        let mut d = direct(&env).await;
        let mut dg = direct(&env).await;
        same(
            &mut a,
            &mut d,
            &prepare("dd", "DEALLOCATE ALL"),
            1,
            "prepare dd",
        )
        .await;
        same(&mut a, &mut d, &prepare("s1", "SELECT 42"), 1, "prepare s1").await;
        let sel = "SELECT id, v FROM shapes ORDER BY id";
        same(&mut g, &mut dg, &prepare("g1", sel), 1, "prepare g1").await;
        let got = exchange(&mut g, &run("g1"), 1).await;
        assert_eq!(data_rows(&got), [["3", "30"]], "g1 before");
        for i in 0..size {
            // A run deallocates dd itself too (as directly): prepared again each time.
            if i > 0 {
                same(
                    &mut a,
                    &mut d,
                    &prepare("dd", "DEALLOCATE ALL"),
                    1,
                    "dd again",
                )
                .await;
            }
            same(&mut a, &mut d, &run("dd"), 1, "run dd").await;
        }
        for _ in 0..size {
            let got = exchange(&mut g, &run("g1"), 1).await;
            assert_eq!(summarize(&got), ["2", "D", "C", "Z I"], "size {size}: g1");
            assert_eq!(data_rows(&got), [["3", "30"]], "globex rows");
        }
    }
}

/// A named statement `DEALLOCATE ALL`, parsed before the client's other statements and
/// executed later: directly its Execute drops every statement of the session (itself
/// too); through rlsgate only its Parse took the client's statements out, so those
/// prepared after it (and itself) keep running where directly they fail 26000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_executing_a_named_deallocate_all_keeps_the_statements() {
    let env = env(1).await;
    let mut a = Raw::connect(env.port(), "a", &env.token("acme")).await;
    let mut d = direct(&env).await;
    same(
        &mut a,
        &mut d,
        &prepare("dd", "DEALLOCATE ALL"),
        1,
        "prepare dd",
    )
    .await;
    same(&mut a, &mut d, &prepare("s1", "SELECT 42"), 1, "prepare s1").await;
    same(&mut a, &mut d, &run("dd"), 1, "run dd").await;
    let (t, dd, _, _) = both(&mut a, &mut d, &run("s1"), 1).await;
    assert!(dd[0].starts_with("E 26000"), "directly: {dd:?}");
    assert_eq!(t, dd, "s1 after the DEALLOCATE ALL ran");
    let (t, dd, _, _) = both(&mut a, &mut d, &run("dd"), 1).await;
    assert!(dd[0].starts_with("E 26000"), "directly: {dd:?}");
    assert_eq!(t, dd, "dd deallocated itself");
}

/// The no-rows Describe answered from the shape, in pipelines: behind an extended error
/// in the same write (skipped, no reply, as directly), behind a `DEALLOCATE ALL` that
/// runs (26000), behind a Close of the name and a Parse of a row-returning text under it
/// (described by the server), and in an aborted transaction (NoData, as directly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_rows_describe_in_pipelines_answers_as_directly() {
    let env = env(1).await;
    let mut a = Raw::connect(env.port(), "a", &env.token("acme")).await;
    let mut d = direct(&env).await;
    let ins = "INSERT INTO shapes (id, v) VALUES ($1, $2)";
    same(&mut a, &mut d, &prepare("ins", ins), 1, "prepare").await;
    // Behind an error.
    let mut m = BytesMut::new();
    parse(&mut m, "", "SELECT no_such_column FROM shapes");
    frontend::describe(b'S', "ins", &mut m).unwrap();
    same(&mut a, &mut d, &sync(m), 1, "behind an error").await;
    // Re-parsed under the same name with rows, in one write.
    let mut m = BytesMut::new();
    frontend::close(b'S', "ins", &mut m).unwrap();
    parse(&mut m, "ins", "SELECT 1 AS x");
    frontend::describe(b'S', "ins", &mut m).unwrap();
    let (t, dd, _, _) = both(&mut a, &mut d, &sync(m), 1).await;
    assert_eq!(dd, ["3", "1", "t", "T", "Z I"], "directly");
    assert_eq!(t, dd, "re-parsed");
    let mut m = BytesMut::new();
    frontend::close(b'S', "ins", &mut m).unwrap();
    same(&mut a, &mut d, &sync(m), 1, "close").await;
    same(&mut a, &mut d, &prepare("ins", ins), 1, "prepare again").await;
    // Aborted transaction.
    same(&mut a, &mut d, &query("BEGIN"), 1, "begin").await;
    same(&mut a, &mut d, &query("SELECT 1/0"), 1, "abort").await;
    same(&mut a, &mut d, &describe_s("ins"), 1, "aborted").await;
    same(&mut a, &mut d, &query("ROLLBACK"), 1, "rollback").await;
    // Behind a DEALLOCATE ALL that runs, same write.
    let mut m = query("DEALLOCATE ALL");
    m.extend_from_slice(&describe_s("ins"));
    let (t, dd, _, _) = both(&mut a, &mut d, &m, 2).await;
    assert!(dd[2].starts_with("E 26000"), "directly: {dd:?}");
    assert_eq!(t, dd, "behind DEALLOCATE ALL");
}
