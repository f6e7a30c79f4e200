//! `policy apply` hardens the database against the shared upstream role: as the app role,
//! every revoked function and view fails with 42501 afterwards (and did not before);
//! rollback grants exactly those back. The sealed policies filter rows: a bare
//! `app.current_tenant` without a proven seal sees nothing and cannot insert.

use rlsgate::control::policy::hardening::{Kind, TARGETS};
use rlsgate::proxy::server::{RunningServer, Server};
use tokio_postgres::{Client, NoTls};

use super::{count, ok, shop, sql, SEAL_SECRET};
use crate::harness::{db_error, Env};

/// A second proxy in front of the same database, sealing the context with the secret
/// `apply` stored.
pub async fn sealed_proxy(env: &Env) -> RunningServer {
    let mut config = env.config.clone();
    config.tenant.sealed = Some(true);
    config.tenant.seal_secret_file = Some(super::seal_file(env));
    config.validate().expect("sealed config");
    Server::bind(config).await.expect("bind").spawn()
}

/// A client through `proxy` for `tenant`.
pub async fn connect(env: &Env, proxy: &RunningServer, tenant: &str) -> Client {
    let info = format!(
        "host=127.0.0.1 port={} dbname=app user=user-{tenant} password='{}' sslmode=disable",
        proxy.addr.port(),
        env.token(tenant)
    );
    let (client, conn) = tokio_postgres::connect(&info, NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Straight to PostgreSQL as the app role (what a tenant's session is, upstream).
async fn as_app_role(env: &Env) -> Client {
    let info = format!(
        "host=127.0.0.1 port={} dbname=app user=app_rls password=app_rls_pw sslmode=disable",
        env.pg.port()
    );
    let (client, conn) = tokio_postgres::connect(&info, NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A harmless call of each target (no NULL argument: a strict function called with a
/// NULL constant is folded away by the planner before any privilege check).
fn probe(schema: &str, name: &str, kind: Kind) -> String {
    match kind {
        Kind::View => format!("SELECT 1 FROM {schema}.{name} LIMIT 0"),
        Kind::Function => {
            let (fname, args) = name.trim_end_matches(')').split_once('(').unwrap();
            let values: Vec<String> = args
                .split(',')
                .filter(|a| !a.is_empty())
                .map(|ty| match ty {
                    "text" => "'/nonexistent'::text".into(),
                    "bytea" => "''::bytea".into(),
                    "boolean" => "false".into(),
                    other => format!("0::{other}"),
                })
                .collect();
            format!("SELECT {schema}.{fname}({})", values.join(", "))
        }
    }
}

/// The SQLSTATE of each target's probe as the app role (`ok` when it ran).
async fn probe_all(env: &Env) -> Vec<(String, String)> {
    let client = as_app_role(env).await;
    let mut out = Vec::new();
    for t in TARGETS {
        let schema = if t.extension.is_some() {
            "public"
        } else {
            "pg_catalog"
        };
        let sql = probe(schema, t.name, t.kind);
        let state = match client.batch_execute(&sql).await {
            Ok(()) => "ok".to_owned(),
            Err(e) => db_error(&e).0,
        };
        out.push((t.name.to_owned(), state));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_revokes_cross_session_access_and_rollback_grants_it_back() {
    let env = shop().await;
    sql(&env, "CREATE EXTENSION pg_stat_statements");
    let before = probe_all(&env).await;
    for (name, state) in &before {
        // lo_import / lo_export are superuser-only out of the box (listed for servers
        // where someone granted them): everything else is open to PUBLIC.
        let superuser_only = name.starts_with("lo_import") || name.starts_with("lo_export");
        assert_eq!(
            state == "42501",
            superuser_only,
            "{name} before apply: {before:?}"
        );
    }
    let report = super::doctor(&env).await;
    for check in [
        "backend-signals-executable",
        "session-views-readable",
        "large-objects-usable",
        "pg-stat-activity-readable",
        "pg-stat-statements-readable",
    ] {
        assert!(report.checks().contains(&check), "{:#?}", report.findings);
    }

    let plan = ok(&env, &["plan"]);
    assert!(plan.contains("REVOKE EXECUTE ON FUNCTION pg_catalog.pg_cancel_backend(integer), pg_catalog.pg_terminate_backend(integer,bigint) FROM PUBLIC;"), "{plan}");
    assert!(!plan.contains(SEAL_SECRET), "the secret never shows");
    let applied = ok(&env, &["apply", "--yes"]);
    assert!(applied.contains("OK: applied"), "{applied}");
    assert!(!applied.contains(SEAL_SECRET));
    let after = probe_all(&env).await;
    for (name, state) in &after {
        assert_eq!(state, "42501", "{name} as app_rls after apply: {after:?}");
    }
    let report = super::doctor(&env).await;
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
    assert!(ok(&env, &["plan"]).contains("Nothing to do"), "idempotent");

    let out = ok(&env, &["rollback", "--yes"]);
    assert!(out.contains("OK: rolled back"), "{out}");
    assert_eq!(probe_all(&env).await, before, "exactly as before apply");
    assert_eq!(
        sql(&env, "SELECT to_regclass('rlsgate.revoked') IS NULL"),
        "t"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_allow_keeps_them_and_explicit_app_grants_are_revoked_too() {
    let env = shop().await;
    sql(
        &env,
        "GRANT EXECUTE ON FUNCTION pg_catalog.pg_cancel_backend(integer) TO app_rls",
    );
    let text = std::fs::read_to_string(super::POLICY).unwrap();
    let allow = text.replace("large_objects = \"revoke\"", "large_objects = \"allow\"");
    assert_ne!(allow, text);
    let file = env.dir.path().join("lo.toml");
    std::fs::write(&file, allow).unwrap();
    let r = super::run_with(&env, file.to_str().unwrap(), &["apply", "--yes"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let states = probe_all(&env).await;
    for (name, state) in states.iter().filter(|(_, s)| s != "42P01" && s != "42883") {
        let superuser_only = name.starts_with("lo_import") || name.starts_with("lo_export");
        let lo = name.starts_with("lo") && !superuser_only;
        assert_eq!(state == "42501", !lo, "{name}: {state}");
    }
    assert_eq!(
        sql(&env, "SELECT has_function_privilege('app_rls', 'pg_catalog.pg_cancel_backend(integer)', 'EXECUTE')"),
        "f"
    );
    ok(&env, &["rollback", "--yes"]);
    assert_eq!(
        sql(&env, "SELECT has_function_privilege('app_rls', 'pg_catalog.pg_cancel_backend(integer)', 'EXECUTE')"),
        "t",
        "the explicit grant is back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_policies_see_nothing_with_a_bare_setting() {
    let env = shop().await;
    ok(&env, &["apply", "--yes"]);
    let def = sql(
        &env,
        "SELECT pg_get_expr(polqual, polrelid) FROM pg_policy WHERE polrelid = 'customers'::regclass",
    );
    assert!(def.contains("SELECT rlsgate.tenant()"), "{def}");

    // Upstream as the app role, with only the bare setting: no proven context.
    let app = as_app_role(&env).await;
    app.batch_execute("SELECT set_config('app.current_tenant', 'acme', false)")
        .await
        .unwrap();
    assert_eq!(
        count(&app, "customers").await,
        0,
        "bare setting sees nothing"
    );
    let err = app
        .batch_execute("INSERT INTO customers (email, name) VALUES ('x@y', 'X')")
        .await
        .unwrap_err();
    // The default rlsgate.tenant() is NULL: the policy's WITH CHECK refuses the row
    // (before the NOT NULL constraint would).
    assert_eq!(
        db_error(&err).0,
        "42501",
        "NULL tenant refused loudly: {err}"
    );
    let default = app
        .query_one("SELECT rlsgate.tenant() IS NULL", &[])
        .await
        .unwrap();
    assert!(default.get::<_, bool>(0), "no proven context");

    // Through a sealing proxy, with the secret apply stored: the tenant's own rows.
    let proxy = sealed_proxy(&env).await;
    let acme = connect(&env, &proxy, "acme").await;
    assert_eq!(count(&acme, "customers").await, 2000);
    let globex = connect(&env, &proxy, "globex").await;
    assert_eq!(count(&globex, "customers").await, 0);
}
