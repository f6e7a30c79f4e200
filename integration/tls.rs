//! TLS towards clients: sslmode=require works with the test certificate; a token over
//! plaintext TCP is refused when TLS is required.

use crate::harness::{db_error, Env};
use rlsgate::config::TlsMode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_over_tls_and_plaintext_refused_when_required() {
    let env = Env::with(|c| c.tls.mode = TlsMode::Require).await;
    let token = env.token("acme");
    let out = env.psql(
        "alice",
        &token,
        "require",
        &[
            "-At",
            "-c",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            "-c",
            "SELECT count(*) FROM customers",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // pg_stat_ssl describes the proxy->server leg (plaintext here); the client leg is TLS,
    // which the next psql call proves by failing without it.
    assert!(stdout.trim_end().ends_with('3'), "{stdout}");

    let connects = env.upstream_connects();
    let err = env
        .connect_token("alice", &token)
        .await
        .err()
        .expect("plaintext refused");
    let (code, msg) = db_error(&err);
    assert_eq!(code, "28000");
    assert!(msg.contains("TLS is required"), "{msg}");

    let out = env.psql("alice", &token, "disable", &["-c", "SELECT 1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TLS is required"));
    assert_eq!(
        env.upstream_connects(),
        connects,
        "refused clients open no upstream connection"
    );
}
