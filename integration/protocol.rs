//! Raw protocol sequences no driver sends, compared message by message with the same
//! sequence sent directly to PostgreSQL (transaction mode, where statements are renamed
//! and servers change between transactions).

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use rlsgate::config::PoolMode;

use crate::harness::{bind, summarize, Env, Raw};

fn parse(buf: &mut BytesMut, name: &str, sql: &str) {
    frontend::parse(name, sql, [], buf).unwrap();
}

fn execute(buf: &mut BytesMut) {
    frontend::execute("", 0, buf).unwrap();
}

/// Runs `steps` (bytes to send, ReadyForQuery count to wait for; 0 = read exactly one
/// message) on a direct connection and through rlsgate; returns both summaries.
async fn run_both(env: &Env, steps: &[(BytesMut, usize)]) -> (Vec<String>, Vec<String>) {
    let mut direct = Raw::connect(env.pg.port(), "postgres", "").await;
    let mut proxied = Raw::connect(env.proxy.addr.port(), "u", &env.token("acme")).await;
    let mut out = (Vec::new(), Vec::new());
    for (bytes, readies) in steps {
        for (raw, lines) in [(&mut direct, &mut out.0), (&mut proxied, &mut out.1)] {
            raw.send(bytes).await;
            let msgs = if *readies == 0 {
                vec![
                    tokio::time::timeout(std::time::Duration::from_secs(10), raw.read())
                        .await
                        .expect("reply to Flush within 10 s"),
                ]
            } else {
                raw.until_ready(*readies).await
            };
            lines.extend(summarize(&msgs));
        }
    }
    (out.0, out.1)
}

async fn txn_env() -> Env {
    Env::with(|c| {
        c.pool.mode = PoolMode::Transaction;
        c.pool.size = 2;
    })
    .await
}

/// Errors mid-pipeline: a named statement whose Parse the server skipped does not
/// exist afterwards; a Bind with the wrong parameter count and a re-Parse of an
/// existing name get PostgreSQL's errors, naming the client's statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_errors_match_postgres() {
    let env = txn_env().await;
    let mut steps = Vec::new();
    let mut b = BytesMut::new();
    parse(&mut b, "ok1", "SELECT 1");
    bind(&mut b, "ok1", &[]);
    execute(&mut b);
    parse(&mut b, "bad", "SELECT 1/0");
    bind(&mut b, "bad", &[]);
    execute(&mut b);
    parse(&mut b, "skipped", "SELECT 3");
    bind(&mut b, "skipped", &[]);
    execute(&mut b);
    frontend::sync(&mut b);
    steps.push((b, 1));
    let mut b = BytesMut::new();
    frontend::describe(b'S', "skipped", &mut b).unwrap();
    frontend::sync(&mut b);
    bind(&mut b, "ok1", &[]);
    execute(&mut b);
    frontend::sync(&mut b);
    steps.push((b, 2));
    let mut b = BytesMut::new();
    parse(&mut b, "p", "SELECT $1::int + $2::int");
    frontend::sync(&mut b);
    bind(&mut b, "p", &["1"]);
    execute(&mut b);
    frontend::sync(&mut b);
    bind(&mut b, "p", &["1", "2"]);
    execute(&mut b);
    frontend::sync(&mut b);
    steps.push((b, 3));
    let mut b = BytesMut::new();
    parse(&mut b, "p", "SELECT 2");
    frontend::sync(&mut b);
    bind(&mut b, "p", &["40", "2"]);
    execute(&mut b);
    frontend::sync(&mut b);
    steps.push((b, 2));
    let (direct, proxied) = run_both(&env, &steps).await;
    assert!(
        direct.iter().any(|l| l.contains("26000")) && direct.iter().any(|l| l.contains("42P05")),
        "{direct:#?}"
    );
    assert_eq!(proxied, direct);
}

/// Flush makes the server answer what it has: each reply arrives at its Flush, through
/// rlsgate as directly, including the first Parse of a named statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_answers_at_once() {
    let env = txn_env().await;
    let mut steps = Vec::new();
    let mut b = BytesMut::new();
    parse(&mut b, "f1", "SELECT 42 AS answer");
    frontend::flush(&mut b);
    steps.push((b, 0));
    let mut b = BytesMut::new();
    bind(&mut b, "f1", &[]);
    frontend::flush(&mut b);
    steps.push((b, 0));
    let mut b = BytesMut::new();
    frontend::describe(b'P', "", &mut b).unwrap();
    frontend::flush(&mut b);
    steps.push((b, 0));
    let mut b = BytesMut::new();
    execute(&mut b);
    frontend::sync(&mut b);
    steps.push((b, 1));
    let (direct, proxied) = run_both(&env, &steps).await;
    assert_eq!(direct, ["1", "2", "T", "D", "C", "Z I"]);
    assert_eq!(proxied, direct);
}

/// The unnamed statement follows its client: Parse+Describe+Sync in one transaction,
/// Bind+Execute+Sync in the next (lib/pq, asyncpg introspection), with another
/// client's unnamed statement and context on the only server in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_statement_follows_its_client() {
    let env = Env::with(|c| {
        c.pool.mode = PoolMode::Transaction;
        c.pool.size = 1;
    })
    .await;
    let port = env.proxy.addr.port();
    let mut a = Raw::connect(port, "a", &env.token("acme")).await;
    let mut b = Raw::connect(port, "b", &env.token("globex")).await;
    for i in 0..5 {
        let mut m = BytesMut::new();
        parse(&mut m, "", "SELECT $1::int + 1");
        frontend::describe(b'S', "", &mut m).unwrap();
        frontend::sync(&mut m);
        a.send(&m).await;
        assert_eq!(summarize(&a.until_ready(1).await), ["1", "t", "T", "Z I"]);
        let mut m = BytesMut::new();
        parse(&mut m, "", "SELECT $1::text || $2::text");
        bind(&mut m, "", &["x", "y"]);
        execute(&mut m);
        frontend::sync(&mut m);
        b.send(&m).await;
        assert_eq!(
            summarize(&b.until_ready(1).await),
            ["1", "2", "D", "C", "Z I"]
        );
        let mut m = BytesMut::new();
        bind(&mut m, "", &[&i.to_string()]);
        execute(&mut m);
        frontend::sync(&mut m);
        a.send(&m).await;
        let replies = a.until_ready(1).await;
        assert_eq!(summarize(&replies), ["2", "D", "C", "Z I"], "{i}");
        let row = String::from_utf8_lossy(&replies[1].1).into_owned();
        assert!(row.ends_with(&(i + 1).to_string()), "{row}");
    }
}
