//! Checks that guard isolation run on every connection they guard (issue 11): the
//! upstream role on every new server connection, the token on every message after its
//! expiry; and the statements whose effect reaches every tenant (role and database
//! defaults, large objects) refused by default.

use std::time::Duration;

use rlsgate::config::PoolMode;
use rlsgate::proxy::server::Server;

use crate::harness::{db_error, scalar, visible_customers, Env};

/// A role that became BYPASSRLS after rlsgate started: its next new server connection
/// is refused (42501), no client runs on it; fixed role, service resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_new_server_connection_is_checked_for_rls_exemption() {
    let env = Env::with(|c| c.pool.size = 1).await;
    let c = env.connect("acme").await;
    assert_eq!(visible_customers(&c).await.len(), 3);
    drop(c);
    let admin = env.admin().await;
    for (grant, revoke, why) in [
        (
            "ALTER ROLE app_rls BYPASSRLS",
            "ALTER ROLE app_rls NOBYPASSRLS",
            "BYPASSRLS",
        ),
        (
            "ALTER ROLE app_rls SUPERUSER",
            "ALTER ROLE app_rls NOSUPERUSER",
            "superuser",
        ),
    ] {
        admin.batch_execute(grant).await.unwrap();
        // Pooled connections end; the next checkout opens a new one.
        admin
            .batch_execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app_rls'",
            )
            .await
            .unwrap();
        crate::harness::wait_for("app_rls backends gone", || async {
            env.upstream_backends().await == 0
        })
        .await;
        let err = env
            .connect_token("u", &env.token("acme"))
            .await
            .err()
            .expect("refused");
        let (code, message) = db_error(&err);
        assert_eq!(code, "42501", "{message}");
        assert!(
            message.contains(why) && message.contains("row-level security"),
            "{message}"
        );
        admin.batch_execute(revoke).await.unwrap();
        let c = env.connect("globex").await;
        let rows = visible_customers(&c).await;
        assert!(rows.len() == 2 && rows.iter().all(|(t, _)| t == "globex"));
    }
}

/// PostgreSQL was down when rlsgate started (docker-compose / Kubernetes start order),
/// so the start-up check could only warn; once PostgreSQL is up, a superuser upstream
/// role is still never used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsafe_role_is_refused_when_postgres_was_down_at_start() {
    let mut env = Env::start().await;
    env.pg
        .psql(
            "app",
            "CREATE ROLE app_super LOGIN SUPERUSER PASSWORD 'super_pw_123'",
        )
        .unwrap();
    let mut config = env.config.clone();
    config.listen.addr = "127.0.0.1:0".parse().unwrap();
    config.upstream.url = format!("postgres://app_super@127.0.0.1:{}/app", env.pg.port());
    let pw_file = env.dir.path().join("super.pw");
    std::fs::write(&pw_file, "super_pw_123").unwrap();
    config.upstream.password_file = Some(pw_file);
    env.pg.stop().unwrap();
    let proxy = Server::bind(config)
        .await
        .expect("starts: the role cannot be checked yet")
        .spawn();
    env.pg.start_again().unwrap();
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname=app user=u password='{}' sslmode=disable",
        proxy.addr.port(),
        env.token("acme")
    );
    let err = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .err()
        .expect("refused");
    let (code, message) = db_error(&err);
    assert_eq!(code, "42501");
    assert!(message.contains("superuser"), "{message}");
}

/// A session ends at its token's `exp` (plus leeway and `auth.jwt.session_grace`): the
/// first message after it gets FATAL 28P01 "token expired", in both pool modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_when_their_token_expires() {
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        for grace in [Duration::ZERO, Duration::from_secs(60)] {
            let env = Env::with(|c| {
                c.pool.mode = mode;
                c.auth.jwt.leeway = Duration::ZERO;
                c.auth.jwt.session_grace = grace;
            })
            .await;
            let mut opts = env.mint_options("acme");
            opts.ttl = Duration::from_secs(2);
            let token = rlsgate::auth::jwt::mint(&opts).unwrap();
            let c = env.connect_token("u", &token).await.unwrap();
            assert_eq!(visible_customers(&c).await.len(), 3);
            tokio::time::sleep(Duration::from_millis(3500)).await;
            let got = c.simple_query("SELECT count(*) FROM customers").await;
            if grace.is_zero() {
                let err = got.err().expect("expired");
                let (code, message) = db_error(&err);
                assert_eq!(code, "28P01", "{mode:?}");
                assert!(message.contains("expired"), "{message}");
                assert!(c.simple_query("SELECT 1").await.is_err(), "closed");
            } else {
                assert!(got.is_ok(), "{mode:?}: within the grace period");
            }
        }
    }
}

/// Role and database defaults reach every tenant's future connections: refused for
/// any setting, and the role's defaults stay empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_and_database_defaults_are_refused() {
    let env = Env::start().await;
    let c = env.connect("acme").await;
    for sql in [
        "ALTER ROLE CURRENT_USER SET default_transaction_read_only = on",
        "ALTER USER app_rls SET search_path = pg_temp, public",
        "ALTER ROLE app_rls IN DATABASE app SET statement_timeout = 1",
        "ALTER DATABASE app SET default_transaction_read_only = on",
        "ALTER ROLE app_rls RESET ALL",
    ] {
        let err = c.simple_query(sql).await.err().expect(sql);
        assert_eq!(db_error(&err).0, "42501", "{sql}");
    }
    let admin = env.admin().await;
    let n: i64 = scalar(&admin, "SELECT count(*) FROM pg_db_role_setting").await;
    assert_eq!(n, 0);
    // Another tenant's new session is writable as before.
    let other = env.connect("globex").await;
    other
        .batch_execute("UPDATE customers SET name = name")
        .await
        .unwrap();
}

/// Large objects belong to the shared upstream role, so any tenant could read any
/// tenant's objects: refused unless `guard.allow_large_objects`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_are_refused_unless_allowed() {
    let env = Env::start().await;
    let admin = env.admin().await;
    let oid: u32 = scalar(&admin, "SELECT lo_from_bytea(0, 'globex-secret')::oid").await;
    admin
        .batch_execute(&format!("ALTER LARGE OBJECT {oid} OWNER TO app_rls"))
        .await
        .unwrap();
    let c = env.connect("acme").await;
    for sql in [
        format!("SELECT lo_get({oid})"),
        format!("SELECT convert_from(lo_get({oid}), 'UTF8')"),
        format!("SELECT loread(lo_open({oid}, 262144), 100)"),
        "SELECT lo_from_bytea(0, 'x')".to_owned(),
        "SELECT oid FROM pg_largeobject_metadata".to_owned(),
    ] {
        let err = c.simple_query(&sql).await.err().expect(&sql);
        assert_eq!(db_error(&err).0, "42501", "{sql}");
    }
    let env = Env::with(|c| c.guard.allow_large_objects = true).await;
    let c = env.connect("acme").await;
    let rows = c.simple_query("SELECT lo_from_bytea(0, 'mine')").await;
    assert!(rows.is_ok(), "allowed when configured");
}
