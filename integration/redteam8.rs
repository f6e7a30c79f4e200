//! Eighth red-team pass: statement copies that keep their shape (commits e561131,
//! e419388): the proxy's own Describe behind each client Parse, the Close + typed Parse +
//! Describe + Flush it queues before a Bind/Describe whose copy on the bound server is
//! not the client's, and the wait (`await_copy`) for that Describe.
//!
//! Every test compares the raw replies through rlsgate (transaction pooling, one or two
//! servers) with those of a direct connection given the same messages. Tests named
//! `finding_*` failed on e419388; all pass since the fixes below; the others are attacks that held.
//!
//! The findings:
//! - A Close the proxy queues ahead of its own Parse (a re-prepare of a name the server
//!   holds, a copy replacing another shape, or the LRU's eviction) that the server skips
//!   after an earlier error leaves the statement on the server, while the proxy's
//!   record (`ServerStatements`) has dropped it. Every later Parse of that server name
//!   goes without a Close and fails with 42P05 "already exists": the client's statement
//!   is unusable on that server, for every client of the tenant, until the server is
//!   closed. Through the LRU eviction, another tenant's batch does it to a victim tenant.
//!   Fixed: a skipped proxy Close makes the server's record uncertain
//!   (`ServerStatements::forget_all`: every later Parse of the proxy's is preceded by a
//!   Close), `Pipeline::take_skipped_close`.
//! - A copy needed by a Describe in an aborted transaction fails with 25P02, where
//!   PostgreSQL describes a statement that returns no rows.
//! - A `DISCARD ALL` / `DEALLOCATE ALL` that does not run (inside a transaction block, or
//!   behind an error in the same Query) drops the client's statements all the same.
//!   Fixed: the Query's pipeline entry holds them until its CommandComplete shows it ran
//!   (`Expect::Deallocating`).
//! - Fixed too: a no-rows statement's Describe is answered from its shape.

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;

use crate::harness::{bind, data_rows, summarize, wait_for, Env, Raw, RawMessage};

/// Transaction pooling over `size` servers, with a tenant table under forced RLS.
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

/// Parse + Describe + Sync.
fn prepare(name: &str, sql: &str) -> BytesMut {
    let mut b = BytesMut::new();
    parse(&mut b, name, sql);
    frontend::describe(b'S', name, &mut b).unwrap();
    sync(b)
}

/// Bind + Execute (no Sync).
fn bind_execute(b: &mut BytesMut, name: &str) {
    bind(b, name, &[]);
    frontend::execute("", 0, b).unwrap();
}

/// Bind + Execute + Sync.
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

/// A message that fails at once in extended protocol (the server then skips to Sync).
/// A plain SELECT: the guard finds it clean, so the server is not dirty and its
/// statements are not counted at release (`check_statements`), which would notice.
fn failing_parse(b: &mut BytesMut) {
    parse(b, "", "SELECT no_such_column FROM shapes");
}

const FAILED: &str = "E 42703 column \"no_such_column\" does not exist";

async fn exchange(r: &mut Raw, bytes: &BytesMut, syncs: usize) -> Vec<RawMessage> {
    r.send(bytes).await;
    r.until_ready(syncs).await
}

/// `bytes` to both, answered up to `syncs` ReadyForQuery; both replies summarized.
async fn both(
    through: &mut Raw,
    direct: &mut Raw,
    bytes: &BytesMut,
    syncs: usize,
) -> (Vec<String>, Vec<String>, Vec<RawMessage>) {
    let t = exchange(through, bytes, syncs).await;
    let d = exchange(direct, bytes, syncs).await;
    (summarize(&t), summarize(&d), t)
}

async fn direct(env: &Env) -> Raw {
    Raw::connect(env.pg.port(), "postgres", "").await
}

const CHANGED: &str = "E 0A000 cached plan must not change result type";

/// acme re-prepares a name behind an error in the same batch: the server skips the
/// proxy's Close and Parse alike, so it still holds the statement, but the proxy's
/// record of the server drops it (`take_failed_parses` → `ServerStatements::remove`).
/// Directly the skipped Close closed nothing and `s1` still runs. Through rlsgate the
/// next use of `s1` prepares a copy without a Close (42P05 "already exists"), and so
/// does every client of the tenant that prepares the same text on this server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_a_skipped_reprepare_leaves_the_statement_on_the_server() {
    let env = env(1).await;
    let sql = "SELECT 1 AS x";
    let mut a = Raw::connect(env.port(), "a", &env.token("acme")).await;
    let mut d = direct(&env).await;
    let (t, dd, _) = both(&mut a, &mut d, &prepare("s1", sql), 1).await;
    assert_eq!(t, dd);
    // Error; Close s1; Parse s1 (the same text); Sync: the server skips all but the Sync.
    let mut b = BytesMut::new();
    failing_parse(&mut b);
    frontend::close(b'S', "s1", &mut b).unwrap();
    parse(&mut b, "s1", sql);
    let (t, dd, _) = both(&mut a, &mut d, &sync(b), 1).await;
    assert_eq!(dd, [FAILED, "Z I"]);
    assert_eq!(t, dd);
    // Directly s1 is still there (its Close was skipped).
    let (t, dd, msgs) = both(&mut a, &mut d, &run("s1"), 1).await;
    assert_eq!(dd, ["2", "D", "C", "Z I"]);
    assert_eq!(t, dd, "s1 after the skipped Close");
    assert_eq!(data_rows(&msgs), [["1"]]);
    // Another client of the tenant prepares the same text on the same server.
    let mut b2 = Raw::connect(env.port(), "b", &env.token("acme")).await;
    let mut m = BytesMut::new();
    parse(&mut m, "t1", sql);
    bind_execute(&mut m, "t1");
    let got = summarize(&exchange(&mut b2, &sync(m), 1).await);
    assert_eq!(
        got,
        ["1", "2", "D", "C", "Z I"],
        "another client of the tenant"
    );
}

/// The same hole through the copy of `Session::copy_for`: after DDL changed a
/// statement's result, a Describe and a Bind of it in one batch. The Describe's copy
/// (Close + typed Parse + Describe) compares as changed and becomes the 0A000 marker;
/// the Bind behind it queues another copy, which the server skips after the marker's
/// error, Close included. The server holds the name, the proxy's record does not: the
/// statement's next run, and the Parse of another client of the tenant, fail with 42P05
/// where directly they give 0A000 and rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_a_describe_and_bind_after_ddl_in_one_batch_break_the_statement() {
    let env = env(1).await;
    let sql = "SELECT id, v FROM shapes WHERE id < 3 ORDER BY id";
    let mut a = Raw::connect(env.port(), "a", &env.token("acme")).await;
    let mut b = Raw::connect(env.port(), "b", &env.token("acme")).await;
    let mut d = direct(&env).await;
    let mut db = direct(&env).await;
    let (t, dd, _) = both(&mut a, &mut d, &prepare("s1", sql), 1).await;
    assert_eq!(t, dd);
    env.pg
        .psql("app", "ALTER TABLE shapes ALTER COLUMN v TYPE text")
        .unwrap();
    // b prepares the text after the change: the server's copy has the new shape.
    let (t, dd, _) = both(&mut b, &mut db, &prepare("b1", sql), 1).await;
    assert_eq!(t, dd);
    let mut m = BytesMut::new();
    frontend::describe(b'S', "s1", &mut m).unwrap();
    bind_execute(&mut m, "s1");
    let (t, dd, _) = both(&mut a, &mut d, &sync(m), 1).await;
    assert_eq!(dd, ["t", CHANGED, "Z I"], "directly");
    assert_eq!(t, dd, "describe + bind in one batch");
    let (t, dd, _) = both(&mut a, &mut d, &run("s1"), 1).await;
    assert_eq!(dd, [CHANGED, "Z I"], "directly");
    assert_eq!(t, dd, "the next run of s1");
    let (t, dd, msgs) = both(&mut b, &mut db, &run("b1"), 1).await;
    assert_eq!(dd, ["2", "D", "D", "C", "Z I"], "directly");
    assert_eq!(t, dd, "b's own statement of the new shape");
    assert_eq!(data_rows(&msgs), [["1", "10"], ["2", "20"]]);
}

/// Cross-tenant: the server's LRU (512 names, shared by every tenant on the server)
/// evicts globex's statement while acme's batch is being skipped after an error: the
/// eviction's Close is skipped, the proxy forgets the name, the server keeps it. globex's
/// next run of its own statement, and its re-prepare, then fail with 42P05 on that
/// server (directly: its rows), for as long as the server lives. acme chooses when.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_another_tenants_skipped_eviction_breaks_a_statement() {
    let env = env(1).await;
    let mut g = Raw::connect(env.port(), "g", &env.token("globex")).await;
    let sql = "SELECT id, v FROM shapes ORDER BY id";
    assert_eq!(
        summarize(&exchange(&mut g, &prepare("g1", sql), 1).await),
        ["1", "t", "T", "Z I"]
    );
    assert_eq!(
        data_rows(&exchange(&mut g, &run("g1"), 1).await),
        [["3", "30"]]
    );
    // acme fills the server's record up to its size (globex's name is the oldest) ...
    let mut a = Raw::connect(env.port(), "a", &env.token("acme")).await;
    let cap = rlsgate::upstream::held::SERVER_CACHE_SIZE;
    let mut m = BytesMut::new();
    for i in 0..cap - 1 {
        parse(&mut m, &format!("a{i}"), &format!("SELECT {i}"));
    }
    let got = exchange(&mut a, &sync(m), 1).await;
    assert_eq!(got.len(), cap, "{:?}", summarize(&got[..3]));
    // ... then one more statement behind an error: its eviction Close is skipped.
    let mut m = BytesMut::new();
    failing_parse(&mut m);
    parse(&mut m, "extra", "SELECT 'extra'");
    let got = summarize(&exchange(&mut a, &sync(m), 1).await);
    assert_eq!(got, [FAILED, "Z I"]);
    // globex, directly: its statement runs, as before.
    let got = exchange(&mut g, &run("g1"), 1).await;
    assert_eq!(
        summarize(&got),
        ["2", "D", "C", "Z I"],
        "globex's statement"
    );
    assert_eq!(data_rows(&got), [["3", "30"]]);
    let mut m = BytesMut::new();
    frontend::close(b'S', "g1", &mut m).unwrap();
    parse(&mut m, "g1", sql);
    bind_execute(&mut m, "g1");
    let got = exchange(&mut g, &sync(m), 1).await;
    assert_eq!(
        summarize(&got),
        ["3", "1", "2", "D", "C", "Z I"],
        "re-prepared"
    );
}

/// Two clients of another tenant that take servers in turn (`BEGIN` holds one), so a
/// test's client lands on a known server whatever the pool's order.
struct Servers {
    one: tokio_postgres::Client,
    two: tokio_postgres::Client,
}

impl Servers {
    async fn new(env: &Env) -> Servers {
        Servers {
            one: env.connect("globex").await,
            two: env.connect("globex").await,
        }
    }
}

/// A statement prepared under `search_path = sa` and run after `SET search_path = sb`:
/// PostgreSQL re-parses it under the new path (since 9.3), so directly it reads `sb.t`;
/// a copy on the other server, parsed under the client's current path, reads the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_reads_what_the_current_search_path_reads_directly() {
    let env = env(2).await;
    env.pg
        .psql(
            "app",
            "CREATE SCHEMA sa; CREATE SCHEMA sb;
             CREATE TABLE sa.t (v int); CREATE TABLE sb.t (v int);
             INSERT INTO sa.t VALUES (1); INSERT INTO sb.t VALUES (2);
             GRANT USAGE ON SCHEMA sa, sb TO app_rls;
             GRANT SELECT ON sa.t, sb.t TO app_rls;",
        )
        .unwrap();
    let hold = Servers::new(&env).await;
    let mut a = Raw::connect(env.port(), "a", &env.token("acme")).await;
    let mut d = direct(&env).await;
    // One server is taken: a prepares on the other (P) under sa.
    hold.one.simple_query("BEGIN").await.unwrap();
    for m in [
        query("SET search_path = sa, public"),
        prepare("s1", "SELECT v FROM t"),
    ] {
        let (t, dd, _) = both(&mut a, &mut d, &m, 1).await;
        assert_eq!(t, dd);
    }
    let (t, dd, msgs) = both(&mut a, &mut d, &run("s1"), 1).await;
    assert_eq!(t, dd);
    assert_eq!(data_rows(&msgs), [["1"]]);
    let (t, dd, _) = both(&mut a, &mut d, &query("SET search_path = sb, public"), 1).await;
    assert_eq!(t, dd);
    // P taken too, then the first server freed: a's next transaction runs on it.
    hold.two.simple_query("BEGIN").await.unwrap();
    hold.one.simple_query("COMMIT").await.unwrap();
    a.send(&run("s1")).await;
    d.send(&run("s1")).await;
    let (t, dd) = (a.until_ready(1).await, d.until_ready(1).await);
    assert_eq!(summarize(&t), summarize(&dd));
    assert_eq!(data_rows(&dd), [["2"]], "directly: re-parsed under sb");
    assert_eq!(data_rows(&t), data_rows(&dd), "through rlsgate");
    hold.two.simple_query("COMMIT").await.unwrap();
}

/// Two clients of one tenant on one server under different search paths prepare the
/// same text: one server name (tenant, text, types), b's Parse replaces a's copy with
/// the same shape; a's next run still reads `sa.t` (PostgreSQL re-parses a statement
/// whose saved path is not the session's), as its own statement would directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_tenant_sharing_a_copy_keep_their_search_paths() {
    let env = env(1).await;
    env.pg
        .psql(
            "app",
            "CREATE SCHEMA sa; CREATE SCHEMA sb;
             CREATE TABLE sa.t (v int); CREATE TABLE sb.t (v int);
             INSERT INTO sa.t VALUES (1); INSERT INTO sb.t VALUES (2);
             GRANT USAGE ON SCHEMA sa, sb TO app_rls;
             GRANT SELECT ON sa.t, sb.t TO app_rls;",
        )
        .unwrap();
    let sql = "SELECT v FROM t";
    let mut a = Raw::connect(env.port(), "a", &env.token("acme")).await;
    let mut b = Raw::connect(env.port(), "b", &env.token("acme")).await;
    for (r, path) in [(&mut a, "sa"), (&mut b, "sb")] {
        exchange(r, &query(&format!("SET search_path = {path}, public")), 1).await;
        exchange(r, &prepare("s1", sql), 1).await;
        let rows = data_rows(&exchange(r, &run("s1"), 1).await);
        assert_eq!(rows, [[if path == "sa" { "1" } else { "2" }]], "{path}");
    }
    let rows = data_rows(&exchange(&mut a, &run("s1"), 1).await);
    assert_eq!(rows, [["1"]], "a's statement reads sa.t");
}

/// PostgreSQL describes a statement that returns no rows inside an aborted transaction
/// (drivers describe blindly, even their ROLLBACK); the copy's Parse there fails with
/// 25P02 instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_describe_in_an_aborted_transaction_needs_no_parse() {
    let env = env(2).await;
    let hold = Servers::new(&env).await;
    let mut a = Raw::connect(env.port(), "a", &env.token("acme")).await;
    let mut d = direct(&env).await;
    hold.one.simple_query("BEGIN").await.unwrap();
    let ins = "INSERT INTO shapes (id, v) VALUES ($1, $2)";
    let (t, dd, _) = both(&mut a, &mut d, &prepare("ins", ins), 1).await;
    assert_eq!(t, dd);
    hold.two.simple_query("BEGIN").await.unwrap();
    hold.one.simple_query("COMMIT").await.unwrap();
    for (m, n) in [(query("BEGIN"), 1), (query("SELECT 1/0"), 1)] {
        let (t, dd, _) = both(&mut a, &mut d, &m, n).await;
        assert_eq!(t, dd);
    }
    let mut m = BytesMut::new();
    frontend::describe(b'S', "ins", &mut m).unwrap();
    let (t, dd, _) = both(&mut a, &mut d, &sync(m), 1).await;
    assert_eq!(dd, ["t", "n", "Z E"], "directly");
    assert_eq!(t, dd, "describe in an aborted transaction");
    let (t, dd, _) = both(&mut a, &mut d, &query("ROLLBACK"), 1).await;
    assert_eq!(t, dd);
    hold.two.simple_query("COMMIT").await.unwrap();
}

/// `DISCARD ALL` inside a transaction block fails (25001), and a `DEALLOCATE ALL` behind
/// an error in the same Query never runs: directly the client's statements stay. The
/// proxy drops them as the text goes by (`Effect::DeallocateAll`), so the next run of
/// `s1` fails with 26000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_a_deallocate_that_did_not_run_keeps_the_statements() {
    let env = env(1).await;
    let mut a = Raw::connect(env.port(), "a", &env.token("acme")).await;
    let mut d = direct(&env).await;
    let (t, dd, _) = both(&mut a, &mut d, &prepare("s1", "SELECT 42"), 1).await;
    assert_eq!(t, dd);
    for m in [
        "BEGIN",
        "DISCARD ALL",
        "ROLLBACK",
        "SELECT 1/0; DEALLOCATE ALL",
    ] {
        let (t, dd, _) = both(&mut a, &mut d, &query(m), 1).await;
        assert_eq!(t, dd, "{m}");
    }
    let (t, dd, msgs) = both(&mut a, &mut d, &run("s1"), 1).await;
    assert_eq!(dd, ["2", "D", "C", "Z I"], "directly");
    assert_eq!(t, dd, "s1 is still there");
    assert_eq!(data_rows(&msgs), [["42"]]);
    // One that runs takes them, also when the Query fails after it (it is not
    // transactional), and a name freed so is prepared again, as directly.
    for m in ["DEALLOCATE ALL; SELECT 1/0", "DISCARD ALL"] {
        let (t, dd, _) = both(&mut a, &mut d, &query(m), 1).await;
        assert_eq!(t, dd, "{m}");
        let (t, dd, _) = both(&mut a, &mut d, &run("s1"), 1).await;
        assert!(dd[0].starts_with("E 26000"), "directly: {dd:?}");
        assert_eq!(t, dd, "{m}: s1 is gone");
        let (t, dd, _) = both(&mut a, &mut d, &prepare("s1", "SELECT 42"), 1).await;
        assert_eq!(t, dd, "{m}: prepared again");
    }
}

/// A statement whose copy is needed (DDL changed it; another client of the tenant holds
/// the new shape on the only server) while another session holds an exclusive lock on
/// the table: the copy's Parse waits for the lock, as the Bind of the statement would
/// directly. A cancel reaches it during the wait (57014, as directly), the session goes
/// on, and the same sequence compares as changed once the lock is gone. A client that
/// disconnects during a second wait leaves nothing behind: the next tenant on the
/// server sees only its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_waiting_on_a_lock_is_cancelled_and_abandoned_cleanly() {
    let env = env(1).await;
    let sql = "SELECT id, v FROM shapes WHERE id < 3 ORDER BY id";
    let mut a = Raw::connect(env.port(), "a", &env.token("acme")).await;
    let mut d = direct(&env).await;
    let (t, dd, _) = both(&mut a, &mut d, &prepare("s1", sql), 1).await;
    assert_eq!(t, dd);
    env.pg
        .psql("app", "ALTER TABLE shapes ALTER COLUMN v TYPE text")
        .unwrap();
    let mut b = Raw::connect(env.port(), "b", &env.token("acme")).await;
    exchange(&mut b, &prepare("b1", sql), 1).await;
    let locker = env.admin().await;
    let admin = env.admin().await;
    let waiting = || async {
        let n: i64 = admin
            .query_one("SELECT count(*) FROM pg_locks WHERE NOT granted", &[])
            .await
            .unwrap()
            .get(0);
        n > 0
    };
    for (who, raw) in [("through", &mut a), ("directly", &mut d)] {
        locker
            .batch_execute("BEGIN; LOCK TABLE shapes IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        // A sleep ahead of the Bind in the same write: the copy waits behind it too.
        let mut m = query("SELECT pg_sleep(0.2)");
        m.extend_from_slice(&run("s1"));
        raw.send(&m).await;
        wait_for("a backend waiting for the lock", waiting).await;
        let (pid, secret) = raw.key.unwrap();
        let port = if who == "through" {
            env.port()
        } else {
            env.pg.port()
        };
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut c = BytesMut::new();
        frontend::cancel_request(pid, secret, &mut c);
        s.write_all(&c).await.unwrap();
        let got = summarize(&raw.until_ready(2).await);
        assert_eq!(
            got,
            [
                "T",
                "D",
                "C",
                "Z I",
                "E 57014 canceling statement due to user request",
                "Z I"
            ],
            "{who}"
        );
        locker.batch_execute("COMMIT").await.unwrap();
    }
    let (t, dd, _) = both(&mut a, &mut d, &run("s1"), 1).await;
    assert_eq!(dd, [CHANGED, "Z I"]);
    assert_eq!(t, dd, "after the cancel");
    // A fresh statement that needs a copy, abandoned while its copy waits.
    let other = "SELECT v, id FROM shapes ORDER BY id";
    exchange(&mut a, &prepare("s2", other), 1).await;
    env.pg
        .psql(
            "app",
            "ALTER TABLE shapes ALTER COLUMN v TYPE int USING v::int",
        )
        .unwrap();
    exchange(&mut b, &prepare("b2", other), 1).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE shapes IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    a.send(&run("s2")).await;
    wait_for("the copy waiting for the lock", waiting).await;
    drop(a);
    locker.batch_execute("COMMIT").await.unwrap();
    let mut g = Raw::connect(env.port(), "g", &env.token("globex")).await;
    let got = exchange(&mut g, &query("SELECT id, v, tenant_id FROM shapes"), 1).await;
    assert_eq!(data_rows(&got), [["3", "30", "globex"]]);
    let got = exchange(&mut b, &run("b2"), 1).await;
    assert_eq!(data_rows(&got), [["10", "1"], ["20", "2"]], "b's statement");
}

/// Pipelines around a copy, after DDL: simple Queries, Flushes, Describes, Closes and
/// re-Parses of the same name, an error before the copy's Bind (the copy is skipped
/// with it, as the Bind is directly), the same text under several names, all in one
/// write; then each statement once more. Every reply sequence is the direct one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_around_a_copy_answer_as_directly() {
    let env = env(2).await;
    let sql = "SELECT id, v FROM shapes WHERE id < 3 ORDER BY id";
    let hold = Servers::new(&env).await;
    let mut a = Raw::connect(env.port(), "a", &env.token("acme")).await;
    let mut d = direct(&env).await;
    hold.one.simple_query("BEGIN").await.unwrap();
    for name in ["s1", "s2", "s3"] {
        let (t, dd, _) = both(&mut a, &mut d, &prepare(name, sql), 1).await;
        assert_eq!(t, dd);
    }
    env.pg
        .psql("app", "ALTER TABLE shapes ALTER COLUMN v TYPE bigint")
        .unwrap();
    hold.two.simple_query("BEGIN").await.unwrap();
    hold.one.simple_query("COMMIT").await.unwrap();
    // On the server that never had them: the copies of s1 and s2 compare as changed.
    let mut m = query("SELECT 1");
    frontend::flush(&mut m);
    bind_execute(&mut m, "s1");
    frontend::flush(&mut m);
    frontend::sync(&mut m);
    frontend::close(b'S', "s3", &mut m).unwrap();
    parse(&mut m, "s3", sql);
    bind_execute(&mut m, "s3");
    frontend::sync(&mut m);
    frontend::describe(b'S', "s2", &mut m).unwrap();
    frontend::sync(&mut m);
    failing_parse(&mut m);
    bind_execute(&mut m, "s3");
    frontend::sync(&mut m);
    m.extend_from_slice(&query("SELECT 2"));
    let (t, dd, msgs) = both(&mut a, &mut d, &m, 6).await;
    assert_eq!(t, dd, "one write");
    assert_eq!(dd.iter().filter(|l| *l == CHANGED).count(), 2, "{dd:?}");
    assert_eq!(
        data_rows(&msgs).len(),
        4,
        "SELECT 1, s3 (two rows), SELECT 2"
    );
    for name in ["s1", "s2", "s3"] {
        let (t, dd, _) = both(&mut a, &mut d, &run(name), 1).await;
        assert_eq!(t, dd, "{name} again");
    }
    hold.two.simple_query("COMMIT").await.unwrap();
    // Either server (one is taken in the second round), twice each.
    for round in 0..4 {
        if round % 2 == 1 {
            hold.one.simple_query("BEGIN").await.unwrap();
        }
        for name in ["s1", "s3", "s1"] {
            let (t, dd, _) = both(&mut a, &mut d, &run(name), 1).await;
            assert_eq!(t, dd, "round {round}: {name}");
        }
        if round % 2 == 1 {
            hold.one.simple_query("COMMIT").await.unwrap();
        }
    }
    let g = env.connect("globex").await;
    let rows = g.query("SELECT id FROM shapes", &[]).await.unwrap();
    assert_eq!(rows.len(), 1);
}
