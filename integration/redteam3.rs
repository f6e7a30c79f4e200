//! Red team 3: attacks on the pipeline's ignore-till-Sync model, COPY in transaction
//! mode, messages arriving with no server bound, and token expiry mid-pipeline.
//! Passing tests are regressions; `#[ignore = "FINDING: ..."]` ones are open findings.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use rlsgate::config::PoolMode;
use rlsgate::wire::protocol;

use crate::harness::{collect, rows, scalar, summarize, visible_customers, Env, Raw};

async fn txn_env() -> Env {
    Env::with(|c| {
        c.pool.mode = PoolMode::Transaction;
        c.pool.size = 1;
        c.pool.acquire_timeout = Duration::from_secs(5);
        c.auth.jwt.leeway = Duration::ZERO;
        c.auth.jwt.session_grace = Duration::ZERO;
    })
    .await
}

async fn raw(env: &Env, tenant: &str) -> Raw {
    Raw::connect(env.port(), &format!("user-{tenant}"), &env.token(tenant)).await
}

fn msg(buf: &mut BytesMut, tag: u8, body: &[u8]) {
    buf.put_u8(tag);
    buf.put_i32(body.len() as i32 + 4);
    buf.put_slice(body);
}

/// Parse/Bind/Execute of the unnamed statement, no Close, no Sync.
fn pbe(buf: &mut BytesMut, sql: &str) {
    let mut b = Vec::new();
    b.push(0);
    b.extend_from_slice(sql.as_bytes());
    b.extend_from_slice(&[0, 0, 0]);
    msg(buf, b'P', &b);
    msg(buf, b'B', &[0, 0, 0, 0, 0, 0, 0, 0]);
    msg(buf, b'E', &[0, 0, 0, 0, 0]);
}

async fn next_tenants_clean(env: &Env, what: &str) {
    for (tenant, n) in [("acme", 3), ("globex", 2)] {
        let c = tokio::time::timeout(Duration::from_secs(15), env.connect(tenant))
            .await
            .unwrap_or_else(|_| panic!("{what}: connect {tenant} timed out"));
        let got = tokio::time::timeout(Duration::from_secs(15), visible_customers(&c))
            .await
            .unwrap_or_else(|_| panic!("{what}: query as {tenant} timed out"));
        assert_eq!(got.len(), n, "{what}: next {tenant} sees {got:?}");
        assert!(got.iter().all(|(t, _)| t == tenant), "{what}: {got:?}");
        let r = rows(
            &c.simple_query(
                "SELECT rlsgate.tenant(), pg_catalog.txid_current_if_assigned() IS NULL",
            )
            .await
            .unwrap(),
        );
        assert_eq!(r, vec![vec![tenant.to_owned(), "t".to_owned()]], "{what}");
    }
}

/// Extended `COPY ... FROM STDIN` whose Sync the server ignored in copy mode, then
/// CopyDone and no second Sync: PostgreSQL sends CommandComplete and leaves the implicit
/// transaction open until a Sync. The proxy must not hand that server to the next tenant
/// (whose context and Sync would run and commit inside the attacker's transaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_copy_without_final_sync_hands_on_open_transaction() {
    let env = txn_env().await;
    let admin = env.admin().await;
    admin
        .batch_execute(
            "CREATE TABLE copy_parent (x int PRIMARY KEY); \
             CREATE TABLE copy_sink (x int REFERENCES copy_parent DEFERRABLE INITIALLY DEFERRED); \
             GRANT ALL ON copy_parent, copy_sink TO app_rls",
        )
        .await
        .unwrap();
    let mut a = raw(&env, "acme").await;
    let mut m = BytesMut::new();
    pbe(&mut m, "COPY copy_sink FROM STDIN");
    protocol::put_sync(&mut m);
    a.send(&m).await;
    let got = tokio::time::timeout(Duration::from_secs(10), a.read()).await;
    let got: Vec<u8> = got.map(|m| vec![m.0]).unwrap_or_default();
    eprintln!(
        "after Execute: {:?}",
        got.iter().map(|t| *t as char).collect::<Vec<_>>()
    );
    // ParseComplete, BindComplete, CopyInResponse.
    let mut seen = got;
    while !seen.contains(&b'G') {
        match tokio::time::timeout(Duration::from_secs(10), a.read()).await {
            Ok(m) => seen.push(m.0),
            Err(_) => panic!("no CopyInResponse: {seen:?}"),
        }
    }
    let mut m = BytesMut::new();
    msg(&mut m, b'd', b"5\n"); // violates the deferred FK at commit
    msg(&mut m, b'c', &[]); // CopyDone, no Sync after it
    msg(&mut m, b'H', &[]); // Flush: the server sends its CommandComplete
    a.send(&m).await;
    let cc = tokio::time::timeout(Duration::from_secs(10), a.read()).await;
    eprintln!(
        "after CopyDone: {:?}",
        cc.as_ref().map(|m| summarize(std::slice::from_ref(m)))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Where is the attacker's transaction?
    let states: Vec<String> = admin
        .query(
            "SELECT state FROM pg_stat_activity WHERE usename = 'app_rls' AND backend_type = 'client backend'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
        .collect();
    eprintln!("upstream backends: {states:?}");
    // The other tenant, on the only server.
    let b = tokio::time::timeout(
        Duration::from_secs(15),
        env.connect_token("user-globex", &env.token("globex")),
    )
    .await
    .expect("globex connect timed out");
    // Secure: acme keeps the server its open batch is on (as directly, a client in a
    // transaction holds its backend): globex waits for a server, and gets a fresh one
    // once acme leaves (the half-done batch is closed with its server, never committed).
    let mut a = Some(a);
    let b = match b {
        Ok(b) => b,
        Err(e) => {
            assert_eq!(crate::harness::db_error(&e).0, "53300", "{e}");
            drop(a.take());
            env.connect("globex").await
        }
    };
    let got = tokio::time::timeout(
        Duration::from_secs(15),
        b.simple_query("SELECT name FROM customers"),
    )
    .await;
    eprintln!("globex: {got:?}");
    let got = got.expect("globex query timed out");
    assert!(
        got.is_ok(),
        "globex's session was broken by acme's transaction: {got:?}"
    );
    drop(a.take());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n: i64 = scalar(&admin, "SELECT count(*) FROM copy_sink").await;
    assert_eq!(
        n, 0,
        "acme's never-synced COPY was committed by someone else"
    );
}

/// Flush, CopyDone, CopyFail and CopyData with no server bound are dropped; pipelined
/// in one write around a Query and right behind its ReadyForQuery, nothing binds or
/// holds the only server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_flush_and_copy_messages_hold_no_server() {
    let env = txn_env().await;
    let mut a = raw(&env, "acme").await;
    let mut m = BytesMut::new();
    msg(&mut m, b'H', &[]);
    msg(&mut m, b'c', &[]);
    msg(&mut m, b'f', b"x\0");
    msg(&mut m, b'd', b"junk");
    protocol::put_query(&mut m, "SELECT 1");
    msg(&mut m, b'H', &[]);
    msg(&mut m, b'c', &[]);
    msg(&mut m, b'f', b"x\0");
    msg(&mut m, b'd', b"junk");
    a.send(&m).await;
    let got = summarize(&collect(&mut a, 1).await);
    assert!(got.iter().any(|s| s.starts_with('Z')), "{got:?}");
    // A CopyData split across writes, behind the ReadyForQuery.
    let mut m = BytesMut::new();
    m.put_u8(b'd');
    m.put_i32(4 + 10);
    m.put_slice(b"abc");
    a.send(&m).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.send(b"defghij").await;
    next_tenants_clean(&env, "stray messages").await;
    // The attacker's session still works (framing kept).
    let mut m = BytesMut::new();
    protocol::put_query(&mut m, "SELECT count(*) FROM customers");
    a.send(&m).await;
    let got = collect(&mut a, 1).await;
    assert!(
        summarize(&got).iter().any(|s| s.starts_with('Z')),
        "{:?}",
        summarize(&got)
    );
}

/// An error, then many RESET ALL / DISCARD ALL the server skips, then Sync: the context
/// is re-sent once per skip, nothing loops, and the tenant holds after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_behind_an_error_keep_the_context() {
    let env = txn_env().await;
    let mut a = raw(&env, "acme").await;
    let mut m = BytesMut::new();
    pbe(&mut m, "SELECT 1/0");
    for _ in 0..20 {
        protocol::put_query(&mut m, "RESET ALL");
        protocol::put_query(&mut m, "DISCARD ALL");
        pbe(&mut m, "RESET ALL");
    }
    protocol::put_sync(&mut m);
    protocol::put_query(&mut m, "RESET ALL");
    protocol::put_query(&mut m, "SELECT rlsgate.tenant(), count(*) FROM customers");
    a.send(&m).await;
    let got = collect(&mut a, 3).await;
    let s = summarize(&got);
    eprintln!("{s:?}");
    assert!(
        s.iter().filter(|x| x.starts_with('Z')).count() == 3,
        "{s:?}"
    );
    assert!(
        got.iter()
            .any(|(t, b)| *t == b'D' && String::from_utf8_lossy(b).contains("acme")),
        "{s:?}"
    );
    next_tenants_clean(&env, "resets behind an error").await;
}

/// A Close of a named statement and a Parse of the same name, both skipped after an
/// error: the statement still exists (as directly) and names nothing of another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "KNOWN LIMIT (docs/isolation.md): a Close and a Parse of the same name both skipped after an error, then a Bind of that name pipelined behind the Sync: the proxy had already renamed the Bind to the skipped Parse (26000 naming s1) where PostgreSQL runs the old s1; the attacker's own session only"]
async fn skipped_close_then_parse_of_same_name() {
    let env = txn_env().await;
    let mut a = raw(&env, "acme").await;
    let mut m = BytesMut::new();
    protocol::put_parse(&mut m, "s1", "SELECT rlsgate.tenant()");
    protocol::put_sync(&mut m);
    a.send(&m).await;
    let _ = collect(&mut a, 1).await;
    let mut m = BytesMut::new();
    pbe(&mut m, "SELECT 1/0");
    msg(&mut m, b'C', b"Ss1\0");
    protocol::put_parse(&mut m, "s1", "SELECT 'other'");
    protocol::put_sync(&mut m);
    // s1 still holds the first text.
    msg(&mut m, b'B', b"\0s1\0\0\0\0\0\0\0");
    msg(&mut m, b'E', &[0, 0, 0, 0, 0]);
    protocol::put_sync(&mut m);
    a.send(&m).await;
    let got = collect(&mut a, 2).await;
    let s = summarize(&got);
    eprintln!("{s:?}");
    assert!(
        got.iter()
            .any(|(t, b)| *t == b'D' && String::from_utf8_lossy(b).contains("acme")),
        "{s:?}"
    );
    next_tenants_clean(&env, "skipped close/parse").await;
}

/// The token expires between a Parse/Bind/Execute and its Sync: the session ends and the
/// half-done pipeline's server is never handed to the next tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_between_execute_and_sync() {
    let env = txn_env().await;
    let admin = env.admin().await;
    admin
        .batch_execute("CREATE TABLE exp_sink (x int); GRANT ALL ON exp_sink TO app_rls")
        .await
        .unwrap();
    let mut opts = env.mint_options("acme");
    opts.ttl = Duration::from_secs(2);
    let token = rlsgate::auth::jwt::mint(&opts).unwrap();
    let mut a = Raw::connect(env.port(), "user-acme", &token).await;
    let mut m = BytesMut::new();
    pbe(&mut m, "INSERT INTO exp_sink VALUES (1)");
    msg(&mut m, b'H', &[]);
    a.send(&m).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut m = BytesMut::new();
    protocol::put_sync(&mut m);
    a.send(&m).await;
    let got = summarize(&collect(&mut a, 1).await);
    eprintln!("{got:?}");
    assert!(
        !got.iter().any(|s| s.starts_with('Z')),
        "expired session synced: {got:?}"
    );
    next_tenants_clean(&env, "expiry mid-pipeline").await;
    let n: i64 = scalar(&admin, "SELECT count(*) FROM exp_sink").await;
    assert_eq!(n, 0, "the expired client's unsynced INSERT was committed");
}
