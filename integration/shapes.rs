//! A prepared statement keeps the shape it was prepared with (parameter types and
//! result columns), on whichever server its next transaction runs, as directly: after
//! DDL changed its result, PostgreSQL answers `0A000` "cached plan must not change
//! result type" until the client prepares it again; its parameter types never change.
//! In transaction mode rlsgate prepares a statement afresh on a server that lacks it,
//! and servers share statements of the same text within a tenant, so a server's copy
//! may have been prepared before or after the DDL: every test runs its statements on
//! both servers of a pool of two (a holder takes one of them in turn), and compares the
//! raw replies with those of a direct connection given the same messages.

use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use rlsgate::config::PoolMode;
use rlsgate::metrics::Metrics;

use crate::harness::{bind, data_rows, summarize, Env, Raw, RawMessage};

const MODES: [PoolMode; 2] = [PoolMode::Session, PoolMode::Transaction];

async fn two_servers(mode: PoolMode) -> Env {
    let env = Env::with(|c| {
        c.pool.mode = mode;
        c.pool.size = if mode == PoolMode::Session { 5 } else { 2 };
        c.pool.acquire_timeout = Duration::from_secs(30);
    })
    .await;
    shapes_table(&env);
    env
}

/// Transaction mode with `size` servers and the `shapes` table (the red-team passes on
/// statement copies use it too).
pub async fn txn_env(size: usize) -> Env {
    let env = Env::with(|c| {
        c.pool.mode = PoolMode::Transaction;
        c.pool.size = size;
        c.pool.acquire_timeout = Duration::from_secs(30);
    })
    .await;
    shapes_table(&env);
    env
}

/// A tenant table under forced RLS (the demo's pattern), granted to the proxy's role:
/// rows 1 and 2 are acme's, row 3 globex's.
fn shapes_table(env: &Env) {
    env.pg
        .psql(
            "app",
            "CREATE TABLE shapes (id int PRIMARY KEY, tenant_id text NOT NULL
                 DEFAULT current_setting('app.current_tenant'), v int);
             ALTER TABLE shapes OWNER TO app_owner;
             ALTER TABLE shapes ENABLE ROW LEVEL SECURITY;
             ALTER TABLE shapes FORCE ROW LEVEL SECURITY;
             CREATE POLICY tenant ON shapes USING (tenant_id = (SELECT rlsgate.tenant()));
             GRANT SELECT, INSERT, UPDATE, DELETE ON shapes TO app_rls;
             INSERT INTO shapes VALUES (1, 'acme', 10), (2, 'acme', 20), (3, 'globex', 30);",
        )
        .unwrap();
}

fn parse(buf: &mut BytesMut, name: &str, sql: &str) {
    frontend::parse(name, sql, std::iter::empty(), buf).unwrap();
}

/// Parse + Describe + Sync of `name`.
fn prepare(name: &str, sql: &str) -> BytesMut {
    let mut b = BytesMut::new();
    parse(&mut b, name, sql);
    frontend::describe(b'S', name, &mut b).unwrap();
    frontend::sync(&mut b);
    b
}

/// Bind (text parameters) + Execute + Sync of `name`.
fn run(name: &str, params: &[&str]) -> BytesMut {
    let mut b = BytesMut::new();
    bind(&mut b, name, params);
    frontend::execute("", 0, &mut b).unwrap();
    frontend::sync(&mut b);
    b
}

fn describe(name: &str) -> BytesMut {
    let mut b = BytesMut::new();
    frontend::describe(b'S', name, &mut b).unwrap();
    frontend::sync(&mut b);
    b
}

fn close(name: &str) -> BytesMut {
    let mut b = BytesMut::new();
    frontend::close(b'S', name, &mut b).unwrap();
    frontend::sync(&mut b);
    b
}

/// Sends `bytes` (answered up to `syncs` ReadyForQuery) to both and returns both replies.
async fn both(
    through: &mut Raw,
    direct: &mut Raw,
    bytes: &BytesMut,
    syncs: usize,
) -> (Vec<RawMessage>, Vec<RawMessage>) {
    through.send(bytes).await;
    direct.send(bytes).await;
    (
        through.until_ready(syncs).await,
        direct.until_ready(syncs).await,
    )
}

/// The column type OIDs of the RowDescription in `msgs`, if any.
fn column_types(msgs: &[RawMessage]) -> Vec<u32> {
    let Some((_, body)) = msgs.iter().find(|(t, _)| *t == b'T') else {
        return Vec::new();
    };
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut pos = 2;
    let mut out = Vec::new();
    for _ in 0..n {
        pos += body[pos..].iter().position(|b| *b == 0).unwrap() + 1;
        out.push(u32::from_be_bytes(
            body[pos + 6..pos + 10].try_into().unwrap(),
        ));
        pos += 18;
    }
    out
}

/// The parameter type OIDs of the ParameterDescription in `msgs`, if any.
fn parameter_types(msgs: &[RawMessage]) -> Vec<u32> {
    let Some((_, body)) = msgs.iter().find(|(t, _)| *t == b't') else {
        return Vec::new();
    };
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    (0..n)
        .map(|i| u32::from_be_bytes(body[2 + 4 * i..6 + 4 * i].try_into().unwrap()))
        .collect()
}

/// The file and routine fields of an ErrorResponse body.
fn origin(body: &[u8]) -> Vec<String> {
    body.split(|b| *b == 0)
        .filter(|f| matches!(f.first(), Some(b'F' | b'R')))
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect()
}

const CHANGED: &str = "E 0A000 cached plan must not change result type";

/// After `ALTER TABLE ... TYPE` changed a prepared statement's result, every run and
/// every Describe of it fails with 0A000, as directly, on a server that never had it,
/// on one that holds the old copy, and on one where another client of the tenant
/// prepared the same text after the change; the client's new Parse sees the new type.
/// Another tenant on the same servers sees only its rows throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_result_fails_as_directly_on_every_server() {
    for mode in MODES {
        let env = two_servers(mode).await;
        // Rows 1 and 2 are acme's: the direct connection (no RLS) sees the same rows.
        let sql = "SELECT id, v FROM shapes WHERE id < 3 ORDER BY id";
        let mut a = Raw::connect(env.port(), "a", &env.token("acme")).await;
        let mut b = Raw::connect(env.port(), "b", &env.token("acme")).await;
        let mut direct = Raw::connect(env.pg.port(), "postgres", "").await;
        let (t, d) = both(&mut a, &mut direct, &prepare("s1", sql), 1).await;
        assert_eq!(summarize(&t), summarize(&d), "{mode:?}: prepare");
        b.send(&prepare("s1", sql)).await;
        b.until_ready(1).await;
        // Both servers get the old copy: a's statement runs on each in turn.
        let holder = env.connect("globex").await;
        for round in 0..2 {
            if round == 1 {
                holder.simple_query("BEGIN").await.unwrap();
            }
            let (t, _) = both(&mut a, &mut direct, &run("s1", &[]), 1).await;
            assert_eq!(data_rows(&t), vec![vec!["1", "10"], vec!["2", "20"]]);
            if round == 1 {
                holder.simple_query("COMMIT").await.unwrap();
            }
        }
        env.pg
            .psql("app", "ALTER TABLE shapes ALTER COLUMN v TYPE text")
            .unwrap();
        for round in 0..6 {
            if round % 3 == 2 {
                // Another client of the tenant prepares the same text after the change.
                let name = format!("b{round}");
                b.send(&prepare(&name, sql)).await;
                let got = b.until_ready(1).await;
                assert_eq!(column_types(&got), vec![23, 25], "{mode:?}: b's new shape");
                b.send(&run(&name, &[])).await;
                let rows = data_rows(&b.until_ready(1).await);
                assert_eq!(rows, vec![vec!["1", "10"], vec!["2", "20"]]);
            }
            let held = round % 2 == 1;
            if held {
                holder.simple_query("BEGIN").await.unwrap();
            }
            let (t, d) = both(&mut a, &mut direct, &run("s1", &[]), 1).await;
            assert_eq!(summarize(&d), vec![CHANGED, "Z I"], "directly");
            assert_eq!(summarize(&t), summarize(&d), "{mode:?} round {round}: run");
            // Drivers read where the error comes from (asyncpg re-prepares on it).
            assert_eq!(origin(&t[0].1), origin(&d[0].1), "{mode:?} round {round}");
            let (t, d) = both(&mut a, &mut direct, &describe("s1"), 1).await;
            assert_eq!(summarize(&d), vec!["t", CHANGED, "Z I"], "directly");
            assert_eq!(
                summarize(&t),
                summarize(&d),
                "{mode:?} round {round}: describe"
            );
            // Pipelined: two runs and a describe in one write.
            let mut many = run("s1", &[]);
            many.extend_from_slice(&run("s1", &[]));
            many.extend_from_slice(&describe("s1"));
            let (t, d) = both(&mut a, &mut direct, &many, 3).await;
            assert_eq!(
                summarize(&t),
                summarize(&d),
                "{mode:?} round {round}: pipelined"
            );
            if held {
                holder.simple_query("COMMIT").await.unwrap();
            }
        }
        // Prepared again, it has the new shape, everywhere.
        let mut again = close("s1");
        again.extend_from_slice(&prepare("s1", sql));
        let (t, d) = both(&mut a, &mut direct, &again, 2).await;
        assert_eq!(summarize(&t), summarize(&d), "{mode:?}: prepared again");
        assert_eq!(column_types(&t), vec![23, 25]);
        for round in 0..2 {
            if round == 1 {
                holder.simple_query("BEGIN").await.unwrap();
            }
            let (t, d) = both(&mut a, &mut direct, &run("s1", &[]), 1).await;
            assert_eq!(
                summarize(&t),
                summarize(&d),
                "{mode:?} round {round}: new shape"
            );
            assert_eq!(data_rows(&t), vec![vec!["1", "10"], vec!["2", "20"]]);
            if round == 1 {
                holder.simple_query("COMMIT").await.unwrap();
            }
        }
        if mode == PoolMode::Transaction {
            let m = &env.proxy.state.metrics;
            assert!(
                Metrics::get(&m.statement_copies) > 0,
                "copies were compared"
            );
            assert!(
                Metrics::get(&m.statement_copies_changed) > 0,
                "and found changed"
            );
        }
        // The next tenant on these servers: its own rows, its own shape.
        let mut g = Raw::connect(env.port(), "g", &env.token("globex")).await;
        g.send(&prepare("s1", sql)).await;
        assert_eq!(column_types(&g.until_ready(1).await), vec![23, 25]);
        g.send(&run("s1", &[])).await;
        assert!(
            data_rows(&g.until_ready(1).await).is_empty(),
            "{mode:?}: globex"
        );
        g.send(&prepare("all", "SELECT id, v FROM shapes")).await;
        g.until_ready(1).await;
        g.send(&run("all", &[])).await;
        assert_eq!(data_rows(&g.until_ready(1).await), vec![vec!["3", "30"]]);
    }
}

/// A statement's parameter types are those it was prepared with, as directly, even
/// where the server holds the same text prepared before the table was recreated with
/// another column type (the client encodes its binary parameters by the types it was
/// told: a server copy with other types read them as garbage or refused them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_types_stay_as_prepared_on_every_server() {
    for mode in MODES {
        let env = two_servers(mode).await;
        let sql = "INSERT INTO shapes (id, v) VALUES ($1, $2)";
        let c = env.connect("acme").await;
        let holder = env.connect("globex").await;
        let old = c.prepare(sql).await.unwrap();
        assert_eq!(old.params()[1], tokio_postgres::types::Type::INT4);
        // The old statement on both servers.
        for (round, id) in [(0, 100i32), (1, 101)] {
            if round == 1 {
                holder.simple_query("BEGIN").await.unwrap();
            }
            c.execute(&old, &[&id, &7i32]).await.unwrap();
            if round == 1 {
                holder.simple_query("COMMIT").await.unwrap();
            }
        }
        env.pg
            .psql(
                "app",
                "ALTER TABLE shapes ALTER COLUMN v TYPE bigint;
                 ALTER TABLE shapes ALTER COLUMN id TYPE bigint",
            )
            .unwrap();
        let new = c.prepare(sql).await.unwrap();
        assert_eq!(new.params()[1], tokio_postgres::types::Type::INT8);
        let mut id = 200i64;
        for round in 0..6 {
            let held = round % 2 == 1;
            if held {
                holder.simple_query("BEGIN").await.unwrap();
            }
            c.execute(&new, &[&id, &(1i64 << 40)])
                .await
                .unwrap_or_else(|e| panic!("{mode:?} round {round}: new statement: {e:?}"));
            // The old one keeps int4 parameters (the column takes them by assignment).
            c.execute(&old, &[&((id + 1) as i32), &8i32])
                .await
                .unwrap_or_else(|e| panic!("{mode:?} round {round}: old statement: {e:?}"));
            id += 2;
            if held {
                holder.simple_query("COMMIT").await.unwrap();
            }
        }
        let sum: i64 = c
            .query_one("SELECT sum(v)::bigint FROM shapes WHERE id >= 100", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(sum, 7 * 2 + 6 * ((1i64 << 40) + 8));
        // Another tenant sees none of it.
        let g = env.connect("globex").await;
        let n: i64 = g
            .query_one("SELECT count(*) FROM shapes", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
        // Raw: the parameter types told to a second client of the tenant are its own.
        let mut r = Raw::connect(env.port(), "r", &env.token("acme")).await;
        r.send(&prepare("p", sql)).await;
        assert_eq!(parameter_types(&r.until_ready(1).await), vec![20, 20]);
    }
}
