//! Doctor's checks of what the shared app role reaches across sessions (signal
//! functions, session views, large objects), the setting defaults every session inherits,
//! predefined-role memberships, and the sealed context. Each planted problem is found,
//! and its fix, run as a superuser, makes doctor clean again.

use super::{args, assert_findings, cluster};
use rlsgate::control::doctor::{audit, Severity};

use Severity::{Error, Warning};

/// Plants `sql`, audits with `extra`, checks the findings, runs every fix, audits again.
async fn found_and_fixed(plant: &str, extra: &[&str], expected: &[(&str, &str, Severity)]) {
    let plant = plant.to_owned();
    let pg = tokio::task::spawn_blocking(move || cluster(&plant))
        .await
        .unwrap();
    let report = audit(&args(&pg, extra)).await.expect("doctor runs");
    assert_findings(&report, expected);
    for f in &report.findings {
        pg.psql("app", &f.fix)
            .unwrap_or_else(|e| panic!("fix of {}: {e}\n{}", f.check, f.fix));
    }
    let report = audit(&args(&pg, extra)).await.expect("doctor runs");
    assert_findings(&report, &[]);
}

#[tokio::test]
async fn signal_functions_session_views_and_large_objects_still_usable() {
    found_and_fixed(
        "GRANT EXECUTE ON FUNCTION pg_catalog.pg_terminate_backend(integer, bigint) TO PUBLIC; \
         GRANT SELECT ON pg_catalog.pg_prepared_statements TO app_rls; \
         GRANT EXECUTE ON FUNCTION pg_catalog.pg_prepared_statement() TO app_rls; \
         GRANT EXECUTE ON FUNCTION pg_catalog.lo_get(oid) TO PUBLIC",
        &[],
        &[
            (
                "backend-signals-executable",
                "function pg_catalog.pg_terminate_backend",
                Error,
            ),
            ("session-views-readable", "view pg_catalog.pg_locks", Error),
            ("large-objects-usable", "function pg_catalog.lo_get", Error),
        ],
    )
    .await;
}

#[tokio::test]
async fn large_objects_allowed_by_the_policy_file_are_not_reported() {
    let pg = tokio::task::spawn_blocking(|| {
        cluster("GRANT EXECUTE ON FUNCTION pg_catalog.lo_get(oid) TO PUBLIC")
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[tenant]\nsetting = \"app.current_tenant\"\ntype = \"text\"\ncontext = \"setting\"\n\
         [roles]\napp = \"app_rls\"\n[hardening]\nlarge_objects = \"allow\"\n\
         [[table]]\nname = \"projects\"\n[[table]]\nname = \"tasks\"\n\
         [[exempt]]\nname = \"plans\"\n",
    )
    .unwrap();
    let report = audit(&args(&pg, &["--policy", policy.to_str().unwrap()]))
        .await
        .expect("doctor runs");
    assert_findings(&report, &[]);
}

#[tokio::test]
async fn setting_defaults_of_the_app_role_and_the_database() {
    found_and_fixed(
        "ALTER ROLE app_rls SET default_transaction_read_only = on; \
         ALTER ROLE app_rls IN DATABASE app SET app.current_tenant = 'acme'; \
         ALTER DATABASE app SET work_mem = '8MB'; \
         CREATE DATABASE other; ALTER ROLE app_rls IN DATABASE other SET search_path = x",
        &[],
        &[
            ("setting-default", "role app_rls", Error),
            ("setting-default", "role app_rls in database app", Error),
            ("setting-default", "database app", Warning),
        ],
    )
    .await;
}

#[tokio::test]
async fn app_role_member_of_predefined_roles() {
    found_and_fixed(
        "GRANT pg_signal_backend TO app_rls; GRANT pg_read_all_data TO app_rls",
        &[],
        &[
            ("app-role-predefined-role", "role app_rls", Error),
            ("app-role-predefined-role", "role app_rls", Error),
            // pg_read_all_data reads every view, these included, whatever PUBLIC lost.
            (
                "pg-stat-activity-readable",
                "view pg_catalog.pg_stat_activity",
                Error,
            ),
            ("session-views-readable", "view pg_catalog.pg_locks", Error),
        ],
    )
    .await;
}

#[tokio::test]
async fn sealed_context_missing_and_policies_on_the_bare_setting() {
    let sealed_sql = rlsgate::control::policy::sealed::SEALED_SQL;
    let pg = tokio::task::spawn_blocking(|| cluster("")).await.unwrap();
    let report = audit(&args(&pg, &["--sealed"])).await.expect("doctor runs");
    assert_findings(
        &report,
        &[
            ("sealed-context-missing", "function rlsgate.tenant()", Error),
            (
                "policy-bare-setting",
                "policy tenant_isolation on public.projects",
                Warning,
            ),
            (
                "policy-bare-setting",
                "policy tenant_isolation on public.tasks",
                Warning,
            ),
        ],
    );
    pg.psql("app", sealed_sql).unwrap();
    for f in report
        .findings
        .iter()
        .filter(|f| f.check == "policy-bare-setting")
    {
        pg.psql("app", &f.fix).unwrap();
    }
    assert_findings(&audit(&args(&pg, &["--sealed"])).await.unwrap(), &[]);
    let expr = pg
        .psql(
            "app",
            "SELECT pg_get_expr(polqual, polrelid) FROM pg_policy WHERE polrelid = 'tasks'::regclass",
        )
        .unwrap();
    assert!(expr.contains("rlsgate.tenant()"), "{expr}");
}
