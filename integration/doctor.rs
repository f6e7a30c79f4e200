//! `rlsgate doctor` against real PostgreSQL: a correctly isolated schema is reported
//! clean; each planted problem (one test each) is found, with its severity and object,
//! and nothing else is reported. Exit codes and output formats through the binary.

use std::process::{Command, Stdio};

use rlsgate::control::doctor::{audit, DoctorArgs, Report, Severity};
use rlsgate::dev::pgtemp::{TempPostgres, TempPostgresOptions};

use crate::harness::Env;

mod hardening;

/// A small multi-tenant project tracker done right: owner is a NOLOGIN role, RLS enabled
/// and forced with tenant policies, tenant-scoped unique keys and indexes, an invoker
/// view, a shared lookup table, statement views closed to the app role.
const CLEAN: &str = r#"
CREATE ROLE app_owner NOLOGIN;
CREATE ROLE app_rls LOGIN PASSWORD 'app_rls_pw';
GRANT USAGE ON SCHEMA public TO app_owner, app_rls;

CREATE TABLE plans (code text PRIMARY KEY, name text NOT NULL);
CREATE TABLE projects (
    id        bigserial PRIMARY KEY,
    tenant_id text NOT NULL DEFAULT current_setting('app.current_tenant') CHECK (tenant_id <> ''),
    name      text NOT NULL,
    plan      text REFERENCES plans (code),
    UNIQUE (tenant_id, name)
);
CREATE TABLE tasks (
    id         bigserial PRIMARY KEY,
    tenant_id  text NOT NULL DEFAULT current_setting('app.current_tenant') CHECK (tenant_id <> ''),
    project_id bigint NOT NULL REFERENCES projects (id),
    title      text NOT NULL,
    done       boolean NOT NULL DEFAULT false
);
CREATE INDEX tasks_tenant_project_idx ON tasks (tenant_id, project_id);
CREATE VIEW open_tasks WITH (security_invoker = true) AS
    SELECT id, tenant_id, project_id, title FROM tasks WHERE NOT done;

ALTER TABLE plans OWNER TO app_owner;
ALTER TABLE projects OWNER TO app_owner;
ALTER TABLE tasks OWNER TO app_owner;
ALTER VIEW open_tasks OWNER TO app_owner;

ALTER TABLE projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE projects FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON projects
    USING (tenant_id = NULLIF(current_setting('app.current_tenant', true), ''))
    WITH CHECK (tenant_id = NULLIF(current_setting('app.current_tenant', true), ''));
ALTER TABLE tasks ENABLE ROW LEVEL SECURITY;
ALTER TABLE tasks FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tasks
    USING (tenant_id = NULLIF(current_setting('app.current_tenant', true), ''))
    WITH CHECK (tenant_id = NULLIF(current_setting('app.current_tenant', true), ''));

GRANT SELECT ON plans TO app_rls;
GRANT SELECT, INSERT, UPDATE, DELETE ON projects, tasks, open_tasks TO app_rls;
GRANT USAGE ON SEQUENCE projects_id_seq, tasks_id_seq TO app_rls;

REVOKE SELECT ON pg_catalog.pg_stat_activity FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg_catalog.pg_stat_get_activity(integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg_catalog.pg_stat_get_backend_activity(integer) FROM PUBLIC;

INSERT INTO plans VALUES ('free', 'Free'), ('pro', 'Pro');
INSERT INTO projects (tenant_id, name, plan)
    SELECT t, 'project ' || g, 'pro' FROM unnest(ARRAY['acme', 'globex']) t, generate_series(1, 20) g;
INSERT INTO tasks (tenant_id, project_id, title, done)
    SELECT p.tenant_id, p.id, 'task ' || p.id || '-' || g, g % 3 = 0
    FROM projects p, generate_series(1, 100) g;
ANALYZE;
"#;

/// What `rlsgate policy apply` revokes from PUBLIC, as part of a clean schema: the
/// functions and views through which one session of the shared role reaches another.
fn hardening_sql() -> String {
    use rlsgate::control::policy::hardening::{Kind, TARGETS};
    TARGETS
        .iter()
        .filter(|t| t.extension.is_none())
        .map(|t| {
            let on = match t.kind {
                Kind::Function => "FUNCTION",
                Kind::View => "TABLE",
            };
            format!(
                "REVOKE {} ON {on} pg_catalog.{} FROM PUBLIC;\n",
                t.kind.privilege(),
                t.name
            )
        })
        .collect()
}

/// A cluster with the clean schema in database `app`, then `plant` run as superuser.
fn cluster(plant: &str) -> TempPostgres {
    let pg = TempPostgres::start(TempPostgresOptions::default())
        .unwrap_or_else(|e| panic!("cannot start PostgreSQL for the test: {e}"));
    pg.psql("postgres", "CREATE DATABASE app").unwrap();
    pg.psql("app", CLEAN).expect("clean schema");
    pg.psql("app", &hardening_sql()).expect("hardening");
    if !plant.is_empty() {
        pg.psql("app", plant).expect("plant the problem");
    }
    pg
}

fn args(pg: &TempPostgres, extra: &[&str]) -> DoctorArgs {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        doctor: DoctorArgs,
    }
    let url = pg.superuser_url("app");
    let mut argv = vec!["doctor", "--database", &url];
    if !extra.contains(&"--app-role") {
        argv.extend(["--app-role", "app_rls"]);
    }
    argv.extend_from_slice(extra);
    Cli::parse_from(argv).doctor
}

/// Plants `sql` into the clean schema and audits it.
async fn doctor(plant: &str, extra: &[&str]) -> Report {
    let plant = plant.to_owned();
    let pg = tokio::task::spawn_blocking(move || cluster(&plant))
        .await
        .unwrap();
    let report = audit(&args(&pg, extra)).await.expect("doctor runs");
    drop(pg);
    report
}

/// Asserts the report holds exactly these (check, object, severity) findings.
fn assert_findings(report: &Report, expected: &[(&str, &str, Severity)]) {
    let mut got: Vec<(&str, &str, Severity)> = report
        .findings
        .iter()
        .map(|f| (f.check, f.object.as_str(), f.severity))
        .collect();
    let mut want = expected.to_vec();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{:#?}", report.findings);
    for f in &report.findings {
        assert!(!f.why.is_empty() && !f.fix.is_empty(), "{f:?}");
    }
}

use Severity::{Error, Warning};

#[tokio::test]
async fn a_clean_schema_is_reported_clean() {
    let report = doctor("", &[]).await;
    assert_findings(&report, &[]);
    assert_eq!(report.tenant_tables, ["public.projects", "public.tasks"]);
}

#[tokio::test]
async fn rls_disabled() {
    let r = doctor("ALTER TABLE tasks DISABLE ROW LEVEL SECURITY", &[]).await;
    assert_findings(&r, &[("rls-disabled", "table public.tasks", Error)]);
    assert!(r.findings[0]
        .fix
        .contains("ALTER TABLE public.tasks ENABLE ROW LEVEL SECURITY;"));
}

#[tokio::test]
async fn rls_not_forced() {
    let r = doctor("ALTER TABLE tasks NO FORCE ROW LEVEL SECURITY", &[]).await;
    assert_findings(&r, &[("rls-not-forced", "table public.tasks", Warning)]);
    assert_eq!(
        r.findings[0].fix,
        "ALTER TABLE public.tasks FORCE ROW LEVEL SECURITY;"
    );
}

#[tokio::test]
async fn rls_not_forced_on_a_table_the_app_role_owns() {
    let r = doctor(
        "ALTER TABLE tasks NO FORCE ROW LEVEL SECURITY; ALTER TABLE tasks OWNER TO app_rls",
        &[],
    )
    .await;
    assert_findings(
        &r,
        &[
            ("rls-not-forced", "table public.tasks", Error),
            ("app-role-owns-table", "table public.tasks", Error),
            ("app-role-truncate", "table public.tasks", Error),
        ],
    );
}

#[tokio::test]
async fn rls_without_any_policy() {
    let r = doctor("DROP POLICY tenant_isolation ON projects", &[]).await;
    assert_findings(&r, &[("rls-no-policy", "table public.projects", Warning)]);
}

#[tokio::test]
async fn app_role_member_of_the_owner() {
    let r = doctor("GRANT app_owner TO app_rls", &[]).await;
    assert_findings(
        &r,
        &[
            ("app-role-owns-table", "table public.projects", Error),
            ("app-role-owns-table", "table public.tasks", Error),
            ("app-role-truncate", "table public.projects", Error),
            ("app-role-truncate", "table public.tasks", Error),
        ],
    );
    assert_eq!(r.findings[0].fix, "REVOKE app_owner FROM app_rls;");
}

#[tokio::test]
async fn app_role_superuser() {
    let r = doctor("ALTER ROLE app_rls SUPERUSER", &[]).await;
    let checks = r.checks();
    assert!(checks.contains(&"app-role-superuser"), "{checks:?}");
    assert_eq!(r.findings[0].severity, Error);
}

#[tokio::test]
async fn app_role_bypassrls() {
    let r = doctor("ALTER ROLE app_rls BYPASSRLS", &[]).await;
    assert_findings(&r, &[("app-role-bypassrls", "role app_rls", Error)]);
}

#[tokio::test]
async fn app_role_missing() {
    let r = doctor("", &["--app-role", "no_such_role"]).await;
    assert_findings(&r, &[("app-role-missing", "role no_such_role", Error)]);
}

#[tokio::test]
async fn app_role_may_truncate() {
    let r = doctor("GRANT TRUNCATE ON tasks TO app_rls", &[]).await;
    assert_findings(&r, &[("app-role-truncate", "table public.tasks", Error)]);
}

#[tokio::test]
async fn app_role_may_create_in_the_schema() {
    let r = doctor("GRANT CREATE ON SCHEMA public TO app_rls", &[]).await;
    assert_findings(&r, &[("app-role-can-create", "schema public", Warning)]);
}

#[tokio::test]
async fn policy_not_reading_the_tenant_setting() {
    let r = doctor(
        "CREATE POLICY by_role ON tasks FOR SELECT USING (current_user = 'app_rls')",
        &[],
    )
    .await;
    assert_findings(
        &r,
        &[(
            "policy-no-tenant-setting",
            "policy by_role on public.tasks",
            Error,
        )],
    );
}

#[tokio::test]
async fn permissive_true_policy() {
    let r = doctor(
        "CREATE POLICY open_read ON projects FOR SELECT USING (true)",
        &[],
    )
    .await;
    assert_findings(
        &r,
        &[(
            "policy-permissive-true",
            "policy open_read on public.projects",
            Error,
        )],
    );
}

#[tokio::test]
async fn insert_policy_without_check_is_permissive_true() {
    let r = doctor("CREATE POLICY any_insert ON projects FOR INSERT", &[]).await;
    assert_findings(
        &r,
        &[(
            "policy-permissive-true",
            "policy any_insert on public.projects",
            Error,
        )],
    );
}

#[tokio::test]
async fn policy_using_without_with_check() {
    let r = doctor(
        "DROP POLICY tenant_isolation ON tasks; CREATE POLICY tenant_isolation ON tasks \
         USING (tenant_id = current_setting('app.current_tenant', true))",
        &[],
    )
    .await;
    assert_findings(
        &r,
        &[(
            "policy-using-without-check",
            "policy tenant_isolation on public.tasks",
            Warning,
        )],
    );
    assert!(r.findings[0]
        .fix
        .starts_with("ALTER POLICY tenant_isolation ON public.tasks WITH CHECK ("));
}

#[tokio::test]
async fn views_without_security_invoker() {
    let r = doctor(
        "CREATE VIEW done_tasks AS SELECT * FROM tasks WHERE done; \
         CREATE VIEW project_names AS SELECT name FROM projects; \
         ALTER VIEW project_names OWNER TO app_owner",
        &[],
    )
    .await;
    assert_findings(
        &r,
        &[
            // Owned by the superuser that created it: RLS never applies to the owner.
            ("view-not-security-invoker", "view public.done_tasks", Error),
            // Owned by the (forced-RLS) table owner: filtered today, fragile.
            (
                "view-not-security-invoker",
                "view public.project_names",
                Warning,
            ),
        ],
    );
}

#[tokio::test]
async fn security_definer_function_reading_tenant_tables() {
    let r = doctor(
        "CREATE FUNCTION count_tasks() RETURNS bigint LANGUAGE sql SECURITY DEFINER \
         AS 'SELECT count(*) FROM public.tasks'; \
         CREATE FUNCTION harmless() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1'",
        &[],
    )
    .await;
    assert_findings(
        &r,
        &[(
            "security-definer-function",
            "function public.count_tasks()",
            Error,
        )],
    );
    assert_eq!(
        r.findings[0].fix,
        "ALTER FUNCTION public.count_tasks() SECURITY INVOKER;"
    );
}

#[tokio::test]
async fn materialized_view_over_tenant_tables() {
    let r = doctor(
        "CREATE MATERIALIZED VIEW task_counts AS SELECT tenant_id, count(*) FROM tasks GROUP BY 1; \
         GRANT SELECT ON task_counts TO app_rls",
        &[],
    )
    .await;
    assert_findings(
        &r,
        &[(
            "materialized-view",
            "materialized view public.task_counts",
            Error,
        )],
    );
}

#[tokio::test]
async fn null_tenant_values() {
    let r = doctor(
        "ALTER TABLE tasks ALTER COLUMN tenant_id DROP NOT NULL; \
         INSERT INTO tasks (tenant_id, project_id, title) VALUES (NULL, 1, 'orphan')",
        &[],
    )
    .await;
    assert_findings(
        &r,
        &[
            ("null-tenant", "column public.tasks.tenant_id", Error),
            (
                "tenant-column-nullable",
                "column public.tasks.tenant_id",
                Warning,
            ),
        ],
    );
    assert!(r.findings[0].why.starts_with("1 rows have no tenant"));
}

#[tokio::test]
async fn nullable_tenant_column() {
    let r = doctor(
        "ALTER TABLE projects ALTER COLUMN tenant_id DROP NOT NULL",
        &[],
    )
    .await;
    assert_findings(
        &r,
        &[(
            "tenant-column-nullable",
            "column public.projects.tenant_id",
            Warning,
        )],
    );
}

#[tokio::test]
async fn index_not_leading_with_the_tenant_on_a_large_table() {
    let plant = "CREATE INDEX tasks_title_idx ON tasks (title); ANALYZE tasks";
    let r = doctor(plant, &["--large-table-rows", "1000"]).await;
    assert_findings(
        &r,
        &[(
            "index-not-tenant-leading",
            "index public.tasks_title_idx",
            Warning,
        )],
    );
    let small = doctor(plant, &[]).await;
    assert_findings(&small, &[]);
}

#[tokio::test]
async fn large_table_without_any_tenant_index() {
    let r = doctor(
        "DROP INDEX tasks_tenant_project_idx",
        &["--large-table-rows", "1000"],
    )
    .await;
    assert_findings(
        &r,
        &[("index-not-tenant-leading", "table public.tasks", Warning)],
    );
}

#[tokio::test]
async fn unique_key_across_tenants() {
    let r = doctor(
        "ALTER TABLE tasks ADD CONSTRAINT tasks_title_key UNIQUE (title)",
        &[],
    )
    .await;
    assert_findings(
        &r,
        &[(
            "unique-not-tenant-scoped",
            "index public.tasks_title_key",
            Warning,
        )],
    );
}

#[tokio::test]
async fn pg_stat_activity_readable() {
    let r = doctor("GRANT SELECT ON pg_catalog.pg_stat_activity TO PUBLIC", &[]).await;
    assert_findings(
        &r,
        &[(
            "pg-stat-activity-readable",
            "view pg_catalog.pg_stat_activity",
            Error,
        )],
    );
}

#[tokio::test]
async fn pg_stat_statements_readable() {
    let r = doctor("CREATE EXTENSION pg_stat_statements", &[]).await;
    assert_findings(
        &r,
        &[(
            "pg-stat-statements-readable",
            "view public.pg_stat_statements",
            Error,
        )],
    );
}

#[tokio::test]
async fn no_tenant_tables_found() {
    let r = doctor("", &["--tenant-column", "org_id"]).await;
    assert_findings(&r, &[("no-tenant-tables", "database app", Warning)]);
}

/// Runs the binary; returns (exit code, stdout).
fn binary(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rlsgate"))
        .arg("doctor")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn exit_codes_and_formats() {
    let pg = tokio::task::spawn_blocking(|| cluster("")).await.unwrap();
    let url = pg.superuser_url("app");
    let (code, out) = binary(&["--database", &url, "--app-role", "app_rls"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("No problems found."), "{out}");

    pg.psql(
        "app",
        "ALTER TABLE tasks NO FORCE ROW LEVEL SECURITY; GRANT TRUNCATE ON tasks TO app_rls",
    )
    .unwrap();
    let (code, out) = binary(&["--database", &url, "--app-role", "app_rls"]);
    assert_eq!(code, 1, "errors found: {out}");
    assert!(out.contains("error     app-role-truncate"), "{out}");
    assert!(out.contains("REVOKE TRUNCATE ON public.tasks FROM PUBLIC, app_rls;"));
    assert!(out.contains("1 error, 1 warning, 0 info"), "{out}");

    let (code, out) = binary(&[
        "--database",
        &url,
        "--app-role",
        "app_rls",
        "--format",
        "json",
    ]);
    assert_eq!(code, 1);
    let json: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    assert_eq!(json["summary"]["errors"], 1);
    assert_eq!(json["summary"]["warnings"], 1);
    let first = &json["findings"][0];
    assert_eq!(first["severity"], "error");
    assert_eq!(first["check"], "app-role-truncate");
    assert_eq!(first["object"], "table public.tasks");

    let dead = format!(
        "postgres://postgres@127.0.0.1:{}/app?connect_timeout=3",
        pg.port()
    );
    drop(pg);
    let (code, out) = binary(&["--database", &dead, "--format", "json"]);
    assert_eq!(code, 2, "could not run");
    let json: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    assert!(
        json["error"].as_str().unwrap().contains("cannot connect"),
        "{json}"
    );
}

#[tokio::test]
async fn doctor_reads_the_proxy_config() {
    // The demo schema behind a running proxy; doctor connects as the proxy does.
    let env = Env::start().await;
    let config = env.dir.path().join("rlsgate.toml");
    std::fs::write(
        &config,
        format!(
            "[auth.jwt]\nalgorithms = [\"HS256\"]\nsecret_file = \"{dir}/jwt_secret\"\n\
             [upstream]\nurl = \"postgres://app_rls@127.0.0.1:{port}/app\"\n\
             password_file = \"{dir}/upstream_password\"\n\
             [tenant]\nsetting = \"app.current_tenant\"\n",
            dir = env.dir.path().display(),
            port = env.pg.port()
        ),
    )
    .unwrap();
    let (code, out) = binary(&["--config", config.to_str().unwrap(), "--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    assert_eq!(json["connected_as"], "app_rls", "{json}");
    assert_eq!(json["app_role"], "app_rls");
    assert_eq!(
        json["tenant_tables"],
        serde_json::json!(["public.customers", "public.invoices"])
    );
    let checks: Vec<&str> = json["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["check"].as_str().unwrap())
        .collect();
    // As app_rls (subject to RLS) doctor cannot count NULL tenants, and says so.
    assert!(checks.contains(&"null-tenant-unchecked"), "{json}");
    for check in [
        "rls-disabled",
        "rls-not-forced",
        "app-role-superuser",
        "policy-no-tenant-setting",
    ] {
        assert!(
            !checks.contains(&check),
            "the demo schema is isolated: {json}"
        );
    }
    let errors = json["summary"]["errors"].as_u64().unwrap();
    assert_eq!(code, if errors > 0 { 1 } else { 0 });
}
