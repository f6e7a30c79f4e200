//! The admin HTTP endpoint (`[admin] addr`): Prometheus metrics that follow what
//! clients do, and a health check that turns 503 when shutdown begins.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{wait_for, Env};

/// Status code and body of one HTTP/1.1 request.
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut raw))
        .await
        .expect("response within 10 s")
        .unwrap();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// The value of metric `rlsgate_<name>` in a scrape.
fn value(scrape: &str, name: &str) -> i64 {
    let prefix = format!("rlsgate_{name} ");
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no rlsgate_{name} in:\n{scrape}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_clients_and_health_turns_503_on_shutdown() {
    let env = Env::with(|c| {
        c.admin.addr = Some(([127, 0, 0, 1], 0).into());
        c.listen.shutdown_timeout = Duration::from_secs(30);
    })
    .await;
    let admin = env.proxy.admin_addr.expect("admin endpoint bound");

    let (status, scrape) = http(admin, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        scrape.contains("# TYPE rlsgate_clients_total counter"),
        "{scrape}"
    );
    assert_eq!(value(&scrape, "clients_total"), 0);
    assert_eq!(value(&scrape, "pool_max_size"), 4);

    let client = env.connect("acme").await;
    client.batch_execute("SELECT 1").await.unwrap();
    let refused = env.connect_token("x", "not-a-token").await;
    assert!(refused.is_err());
    let err = client
        .batch_execute("SET app.current_tenant = 'globex'")
        .await;
    assert!(err.is_err());

    let (_, scrape) = http(admin, "GET", "/metrics").await;
    assert_eq!(value(&scrape, "clients_total"), 2);
    assert_eq!(value(&scrape, "clients_active"), 1);
    assert_eq!(value(&scrape, "auth_ok_total"), 1);
    assert_eq!(value(&scrape, "auth_failed_total"), 1);
    assert_eq!(value(&scrape, "guard_refusals_total"), 1);
    assert!(value(&scrape, "checkouts_total") >= 1);
    assert_eq!(
        value(&scrape, "pool_size"),
        1,
        "session mode: one server held"
    );

    assert_eq!(http(admin, "GET", "/health").await, (200, "ok\n".into()));
    assert_eq!(http(admin, "GET", "/nope").await.0, 404);
    assert_eq!(http(admin, "POST", "/metrics").await.0, 405);

    // Shutdown begins; the open session keeps the proxy draining, and health says so.
    env.proxy.shutdown.cancel();
    wait_for("health 503 while draining", || async {
        http(admin, "GET", "/health").await.0 == 503
    })
    .await;
    drop(client);
}
