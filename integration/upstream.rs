//! The upstream side: MD5, cleartext and SCRAM authentication, TLS to PostgreSQL, and
//! graceful shutdown of sessions.

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;

use rlsgate::config::SslMode;
use rlsgate::proxy::server::Server;

use crate::harness::{db_error, scalar, visible_customers, wait_for, Env};

/// Starts a second proxy in front of `env`'s PostgreSQL with a modified config.
async fn proxy_with(env: &Env, modify: impl FnOnce(&mut rlsgate::config::Config)) -> Env2 {
    let mut config = env.config.clone();
    config.listen.addr = "127.0.0.1:0".parse().unwrap();
    modify(&mut config);
    let proxy = Server::bind(config).await.expect("bind").spawn();
    Env2 { proxy }
}

struct Env2 {
    proxy: rlsgate::proxy::server::RunningServer,
}

async fn connect(env: &Env, proxy: &Env2, tenant: &str) -> tokio_postgres::Client {
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname=app user=u password='{}'",
        proxy.proxy.addr.port(),
        env.token(tenant)
    );
    let (c, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_and_cleartext_upstream_authentication() {
    let env = Env::start().await;
    for (role, pw) in [("app_md5", "app_md5_pw"), ("app_plain", "app_plain_pw")] {
        let pw_file = env.dir.path().join(role);
        std::fs::write(&pw_file, pw).unwrap();
        let p = proxy_with(&env, |c| {
            c.upstream.url = format!("postgres://{role}@127.0.0.1:{}/app", env.pg.port());
            c.upstream.password_file = Some(pw_file.clone());
        })
        .await;
        let c = connect(&env, &p, "globex").await;
        let user: String = scalar(&c, "SELECT current_user::text").await;
        assert_eq!(user, role);
        assert_eq!(visible_customers(&c).await.len(), 2);
    }
    // A wrong upstream password: the client gets 08006, nothing hangs.
    let bad = env.dir.path().join("bad");
    std::fs::write(&bad, "wrong").unwrap();
    let p = proxy_with(&env, |c| c.upstream.password_file = Some(bad)).await;
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname=app user=u password='{}'",
        p.proxy.addr.port(),
        env.token("acme")
    );
    let err = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .err()
        .expect("refused");
    let (code, msg) = db_error(&err);
    assert!(code == "08006" || code == "28P01", "{code} {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_postgres_with_sslmode_require() {
    let env = Env::start().await;
    // Give PostgreSQL a certificate (owned by the server's OS user) and turn SSL on.
    let data = env.pg.data_dir().to_path_buf();
    let (cert, key) = rlsgate::dev::demo::self_signed(&data).unwrap();
    let owner = std::fs::metadata(&data).unwrap();
    for f in [&cert, &key] {
        std::os::unix::fs::chown(f, Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    env.pg
        .psql(
            "postgres",
            &format!(
                "ALTER SYSTEM SET ssl_cert_file = '{}'; ALTER SYSTEM SET ssl_key_file = '{}';
                 ALTER SYSTEM SET ssl = on; SELECT pg_reload_conf();",
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
    // pg_reload_conf() only signals the postmaster; new backends inherit its settings,
    // so a fresh connection showing ssl = on means the reload (and its TLS setup) is done.
    wait_for("PostgreSQL to reload with ssl = on", || async {
        let ssl: String = scalar(&env.admin().await, "SHOW ssl").await;
        ssl == "on"
    })
    .await;
    let p = proxy_with(&env, |c| c.upstream.sslmode = SslMode::Require).await;
    let c = connect(&env, &p, "acme").await;
    let ssl: bool = scalar(
        &c,
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .await;
    assert!(ssl, "the proxy's server connection is encrypted");
    assert_eq!(visible_customers(&c).await.len(), 3);
    // Cancel over the TLS upstream works too.
    let token = c.cancel_token();
    let sleeper =
        tokio::spawn(async move { c.simple_query("SELECT pg_sleep(20)").await.map(|_| ()) });
    env.wait_for_active_query("SELECT pg_sleep(20)").await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = sleeper.await.unwrap().unwrap_err();
    assert_eq!(db_error(&err).0, "57014");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_then_closes_sessions_with_57p01() {
    let env = Env::start().await; // listen.shutdown_timeout = 2s in the harness
    let c = env.connect("acme").await;
    c.simple_query("SELECT 1").await.unwrap();
    let addr = env.proxy.addr;
    let state = env.proxy.state.clone();
    env.proxy.shutdown.cancel();
    // New connections are refused as soon as the proxy sees the shutdown.
    wait_for("the listener to close (connections refused)", || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    // The open session keeps working during the grace period...
    c.simple_query("SELECT 2").await.unwrap();
    // ...and is closed with 57P01 when it ends (the proxy answers, then drops the session).
    wait_for(
        "the session to be closed after the 2 s grace period",
        || async { state.metrics.clients_active.load(Ordering::Relaxed) == 0 },
    )
    .await;
    let err = c.simple_query("SELECT 3").await.unwrap_err();
    let closed = err
        .as_db_error()
        .map(|d| d.code().code() == "57P01")
        .unwrap_or(false)
        || err.is_closed();
    assert!(closed, "{err}");
}
