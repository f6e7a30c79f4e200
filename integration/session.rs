//! Tenant isolation through the proxy in session mode: simple and extended protocol,
//! text and binary results, context not leaking between sessions.

use crate::harness::{scalar, visible_customers, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_sees_only_its_rows_simple_and_extended() {
    let env = Env::start().await;
    let acme = env.connect("acme").await;
    let globex = env.connect("globex").await;

    // Extended protocol (tokio-postgres `query` uses Parse/Bind/Execute), binary results.
    let rows = visible_customers(&acme).await;
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|(t, _)| t == "acme"), "{rows:?}");
    let rows = visible_customers(&globex).await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|(t, _)| t == "globex"), "{rows:?}");

    // Binary-format numeric and bytea via extended protocol.
    let total: i64 = scalar(&acme, "SELECT count(*) FROM invoices").await;
    assert_eq!(total, 5);
    let total: i64 = scalar(&globex, "SELECT count(*) FROM invoices").await;
    assert_eq!(total, 4);

    // Simple protocol, text results.
    let msgs = acme
        .simple_query("SELECT tenant_id, count(*) FROM customers GROUP BY 1")
        .await
        .unwrap();
    let rows: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((r.get(0).unwrap().to_owned(), r.get(1).unwrap().to_owned()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(rows, vec![("acme".to_owned(), "3".to_owned())]);

    // The setting itself, and the claim mapping app.user_id <- sub.
    let row = acme
        .query_one(
            "SELECT current_setting('app.current_tenant'), current_setting('app.user_id')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("acme".into(), "user-acme".into())
    );

    // Writes get the session's tenant from the column default, and cannot target another tenant.
    let t: String = scalar(
        &acme,
        "INSERT INTO customers(name, email) VALUES ('Zed', 'z@acme') RETURNING tenant_id",
    )
    .await;
    assert_eq!(t, "acme");
    let err = acme
        .execute(
            "INSERT INTO customers(tenant_id, name) VALUES ('globex', 'Mallory')",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(crate::harness::db_error(&err).0, "42501");
    assert_eq!(visible_customers(&globex).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_server_parameters_and_backend_pid() {
    let env = Env::start().await;
    let c = env.connect("acme").await;
    let version: String = scalar(&c, "SHOW server_version").await;
    assert!(
        version.starts_with("15") || version.chars().next().unwrap().is_ascii_digit(),
        "{version}"
    );
    // The backend pid the client sees is the real one (session mode).
    let pid: i32 = scalar(&c, "SELECT pg_backend_pid()").await;
    let admin = env.admin().await;
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND usename = 'app_rls'",
            &[&pid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_are_applied_and_owned_settings_refused() {
    let env = Env::start().await;
    let token = env.token("acme");
    let conninfo = format!(
        "{} application_name=myapp options='-c search_path=pg_catalog,public -c work_mem=7MB'",
        env.conninfo("u", &token, "disable")
    );
    let (c, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = c
        .query_one("SELECT current_setting('application_name'), current_setting('work_mem'), current_setting('search_path')", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "myapp");
    assert_eq!(row.get::<_, String>(1), "7MB");
    assert_eq!(row.get::<_, String>(2), "pg_catalog,public");

    // Trying to set the tenant through startup options is refused before any query.
    let conninfo = format!(
        "{} options='-c app.current_tenant=globex'",
        env.conninfo("u", &token, "disable")
    );
    let err = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .err()
        .expect("refused");
    let (code, msg) = crate::harness::db_error(&err);
    assert_eq!(code, "42501");
    assert!(msg.contains("app.current_tenant"), "{msg}");
}

/// Pool of one server, 200 sessions alternating tenants: each sees only its rows and
/// nothing a previous session changed (settings, temp tables, prepared statements,
/// an open transaction) survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_of_one_200_sessions_no_leaks() {
    let env = Env::with(|c| c.pool.size = 1).await;
    for i in 0..200 {
        let tenant = if i % 2 == 0 { "acme" } else { "globex" };
        let want = if i % 2 == 0 { 3 } else { 2 };
        let c = env.connect(tenant).await;
        let rows = visible_customers(&c).await;
        assert_eq!(rows.len(), want, "session {i}");
        assert!(
            rows.iter().all(|(t, _)| t == tenant),
            "session {i}: {rows:?}"
        );
        // Nothing from the previous session.
        let row = c
            .query_one(
                "SELECT current_setting('search_path'), current_setting('work_mem'),
                        (SELECT count(*) FROM pg_prepared_statements WHERE name = 'leak'),
                        to_regclass('pg_temp.leak') IS NULL",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "\"$user\", public", "session {i}");
        assert_eq!(row.get::<_, String>(1), "4MB", "session {i}");
        assert_eq!(row.get::<_, i64>(2), 0, "session {i}");
        assert!(row.get::<_, bool>(3), "session {i}: temp table leaked");
        // Leave state behind for the next session.
        c.batch_execute(
            "SET search_path = pg_catalog; SET work_mem = '64MB';
             CREATE TEMP TABLE leak(x int); PREPARE leak AS SELECT 1;
             BEGIN; INSERT INTO leak VALUES (1);",
        )
        .await
        .unwrap();
        drop(c);
    }
    assert_eq!(
        env.upstream_connects(),
        1,
        "one upstream connection served all sessions"
    );
}

/// PostgreSQL's warnings about startup settings reach the client (here: an
/// application_name longer than 63 bytes is truncated), and an explicit startup
/// parameter wins over the same setting in `options`, as in PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_notices_and_parameter_precedence() {
    let env = Env::start().await;
    let long = "x".repeat(80);
    let conninfo = format!(
        "{} application_name={long} options='-c statement_timeout=1000 -c application_name=from_options'",
        env.conninfo("u", &env.token("acme"), "disable")
    );
    let (c, mut conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
    tokio::spawn(async move {
        use futures::StreamExt;
        futures::pin_mut!(stream);
        while let Some(Ok(m)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notice(n) = m {
                let _ = tx.send(n.message().to_owned());
            }
        }
    });
    let row = c
        .query_one(
            "SELECT current_setting('application_name'), current_setting('statement_timeout')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        "x".repeat(63),
        "explicit parameter wins over options"
    );
    assert_eq!(row.get::<_, String>(1), "1s");
    let notice = rx.recv().await.expect("startup notice delivered");
    assert!(notice.contains("truncated"), "{notice}");
}
