//! `rlsgate policy` against real PostgreSQL: the single-tenant invoicing app of
//! `fixtures/single_tenant.sql` (5 related tables, natural-key foreign keys, a view,
//! ~40k rows) taken to RLS with `policies/example-policy.toml`, then used through the
//! proxy by two tenants. Every command runs as the built binary, as a user would run it.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{db_error, scalar, Env};

mod hardening;

const FIXTURE: &str = include_str!("fixtures/single_tenant.sql");
const APP_ROLE: &str = "CREATE ROLE app_rls LOGIN PASSWORD 'app_rls_pw';";
const POLICY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/example-policy.toml");
const TABLES: [(&str, i64); 5] = [
    ("customers", 2000),
    ("products", 300),
    ("invoices", 8000),
    ("invoice_lines", 24000),
    ("payments", 5000),
];

/// The seal secret every test's `apply` stores (from a file, never the command line).
const SEAL_SECRET: &str = "test-seal-secret-0123456789abcdef";

/// The single-tenant app plus the role rlsgate will log in as, and the proxy in front.
async fn shop() -> Env {
    let env = Env::with_schema(&format!("{FIXTURE}\n{APP_ROLE}")).await;
    std::fs::write(seal_file(&env), SEAL_SECRET).unwrap();
    env
}

fn seal_file(env: &Env) -> std::path::PathBuf {
    env.dir.path().join("seal-secret")
}

/// Runs `rlsgate policy <args> --policy <file> --database <superuser url>
/// --seal-secret-file <file>`.
fn policy_cmd(env: &Env, policy: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rlsgate"));
    cmd.arg("policy")
        .args(args)
        .args([
            "--policy",
            policy,
            "--database",
            &env.pg.superuser_url("app"),
            "--seal-secret-file",
            seal_file(env).to_str().unwrap(),
        ])
        .env_remove("RLSGATE_POLICY")
        .env_remove("RLSGATE_DATABASE_URL")
        .stdin(Stdio::null());
    cmd
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(env: &Env, args: &[&str]) -> Run {
    run_with(env, POLICY, args)
}

fn run_with(env: &Env, policy: &str, args: &[&str]) -> Run {
    let out: Output = policy_cmd(env, policy, args).output().expect("run rlsgate");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(env: &Env, args: &[&str]) -> String {
    let r = run(env, args);
    assert_eq!(
        r.code, 0,
        "policy {args:?} failed:\n{}\n{}",
        r.stdout, r.stderr
    );
    r.stdout
}

fn sql(env: &Env, q: &str) -> String {
    env.pg.psql("app", q).unwrap_or_else(|e| panic!("{q}: {e}"))
}

/// Per table: row count and an md5 over every column but `tenant_id`, in id order.
/// Computed here, independently of rlsgate's own checksum.
fn fingerprints(env: &Env) -> Vec<String> {
    TABLES
        .iter()
        .map(|(t, _)| {
            sql(
                env,
                &format!(
                    "SELECT '{t}', count(*), md5(string_agg((to_jsonb(x) - 'tenant_id')::text, '|' ORDER BY id)) FROM {t} x"
                ),
            )
        })
        .collect()
}

/// Constraint and index definitions of the public schema, for before/after comparison.
fn schema_defs(env: &Env) -> String {
    sql(
        env,
        "SELECT conrelid::regclass, conname, pg_get_constraintdef(oid) FROM pg_constraint \
         WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2; \
         SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1",
    )
}

fn rls_state(env: &Env) -> String {
    sql(
        env,
        "SELECT string_agg(relname || '=' || relrowsecurity || '/' || relforcerowsecurity, ' ' ORDER BY relname) \
         FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'",
    )
}

async fn count(client: &tokio_postgres::Client, table: &str) -> i64 {
    scalar(client, &format!("SELECT count(*) FROM {table}")).await
}

#[tokio::test]
async fn plan_apply_verify_then_two_tenants_are_isolated() {
    let env = shop().await;
    let before = fingerprints(&env);
    plan_shows_sql_and_counts_and_changes_nothing(&env);

    let applied = ok(&env, &["apply", "--yes", "--batch-size", "3000"]);
    assert!(applied.contains("OK: applied"), "{applied}");
    assert!(ok(&env, &["verify"]).contains("OK: the database matches the policy."));
    assert_eq!(
        fingerprints(&env),
        before,
        "data unchanged but for the tenant column"
    );
    for (t, _) in TABLES {
        let q = format!("SELECT count(*) FROM {t} WHERE tenant_id IS DISTINCT FROM 'acme'");
        assert_eq!(sql(&env, &q), "0", "{t}: every row backfilled to acme");
    }
    assert!(rls_state(&env).contains("invoices=true/true"));
    assert!(
        ok(&env, &["plan"]).contains("Nothing to do"),
        "apply is idempotent"
    );
    assert!(
        ok(&env, &["apply"]).contains("Nothing to do"),
        "no prompt when nothing to do"
    );

    let proxy = hardening::sealed_proxy(&env).await;
    tenants_are_isolated_through_the_proxy(&env, &proxy).await;

    // doctor on the result: apply closed the statement views as well.
    let report = doctor(&env).await;
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
}

fn plan_shows_sql_and_counts_and_changes_nothing(env: &Env) {
    let defs = schema_defs(env);
    let plan = ok(env, &["plan"]);
    for line in [
        "ALTER TABLE public.customers ADD COLUMN tenant_id text;",
        "ALTER TABLE public.invoices DROP CONSTRAINT invoices_number_key, ADD CONSTRAINT invoices_number_key UNIQUE (tenant_id, number);",
        "ALTER TABLE public.payments ADD CONSTRAINT payments_invoice_number_fkey FOREIGN KEY (tenant_id, invoice_number) REFERENCES public.invoices (tenant_id, number)",
        "REFERENCES public.products (tenant_id, sku) ON UPDATE CASCADE ON DELETE NO ACTION;",
        "CREATE POLICY tenant_isolation ON public.invoice_lines AS PERMISSIVE FOR ALL TO PUBLIC",
        "ALTER VIEW public.invoice_totals SET (security_invoker = true);",
        "GRANT SELECT ON public.currencies TO app_rls;",
        "CREATE INDEX payments_tenant_id_idx ON public.payments (tenant_id);",
    ] {
        assert!(plan.contains(line), "plan lacks {line:?}:\n{plan}");
    }
    let counts = regex_free_counts(&plan);
    assert_eq!(
        counts,
        TABLES
            .iter()
            .map(|(t, n)| (format!("public.{t}"), *n, *n))
            .collect::<Vec<_>>()
    );
    assert_eq!(schema_defs(env), defs, "plan changed nothing");
    assert_eq!(
        sql(
            env,
            "SELECT count(*) FROM pg_attribute WHERE attname = 'tenant_id'"
        ),
        "0"
    );
}

/// Two tenants through the proxy: each sees only its rows; INSERTs take the session's
/// tenant from the column default; cross-tenant writes and references fail.
async fn tenants_are_isolated_through_the_proxy(
    env: &Env,
    proxy: &rlsgate::proxy::server::RunningServer,
) {
    let acme = hardening::connect(env, proxy, "acme").await;
    let globex = hardening::connect(env, proxy, "globex").await;
    for (t, n) in TABLES {
        assert_eq!(count(&acme, t).await, n, "acme sees all of {t}");
        assert_eq!(count(&globex, t).await, 0, "globex sees none of {t}");
    }
    assert_eq!(count(&acme, "invoice_totals").await, 8000);
    assert_eq!(
        count(&globex, "invoice_totals").await,
        0,
        "the view runs as the caller"
    );
    assert_eq!(count(&globex, "currencies").await, 4, "shared table");

    // INSERT without the tenant column: the default takes the session's tenant, and the
    // widened unique key lets globex reuse an email acme has.
    let row = globex
        .query_one(
            "INSERT INTO customers (email, name) VALUES ('customer1@example.test', 'G') RETURNING tenant_id, id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "globex");
    let id: i64 = row.get(1);
    assert_eq!(count(&globex, "customers").await, 1);
    assert_eq!(count(&acme, "customers").await, 2000);
    let visible: Vec<String> = globex
        .query("SELECT tenant_id FROM customers", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(visible, ["globex"]);

    // Cross-tenant writes fail: another tenant's tenant value, another tenant's product.
    let err = globex
        .execute(
            "INSERT INTO customers (tenant_id, email, name) VALUES ('acme', 'x@y', 'X')",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "42501");
    globex
        .execute(
            &format!("INSERT INTO invoices (number, customer_id, currency, issued_on, status) VALUES ('G-1', {id}, 'EUR', '2024-01-01', 'open')"),
            &[],
        )
        .await
        .unwrap();
    let gid: i64 = scalar(&globex, "SELECT id FROM invoices").await;
    let err = globex
        .execute(
            &format!("INSERT INTO invoice_lines (invoice_id, product_sku, quantity, unit_price) VALUES ({gid}, 'SKU-00001', 1, 1)"),
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(
        db_error(&err).0,
        "23503",
        "acme's product is not globex's: {err}"
    );
}

async fn doctor(env: &Env) -> rlsgate::control::doctor::Report {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        doctor: rlsgate::control::doctor::DoctorArgs,
    }
    let url = env.pg.superuser_url("app");
    let args = Cli::parse_from(["doctor", "--database", &url, "--policy", POLICY]).doctor;
    rlsgate::control::doctor::audit(&args)
        .await
        .expect("doctor runs")
}

/// `(table, rows, without tenant)` from the plan's summary lines.
fn regex_free_counts(plan: &str) -> Vec<(String, i64, i64)> {
    plan.lines()
        .filter_map(|l| l.strip_prefix("-- public."))
        .filter_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            match parts.as_slice() {
                [t, rows, without] => Some((
                    format!("public.{t}"),
                    rows.parse().ok()?,
                    without.parse().ok()?,
                )),
                _ => None,
            }
        })
        .collect()
}

/// Starts `apply` with small, slow batches and SIGKILLs it once the first batch of
/// customers has committed.
fn kill_apply_mid_backfill(env: &Env) {
    let mut child = policy_cmd(
        env,
        POLICY,
        &[
            "apply",
            "--yes",
            "--batch-size",
            "100",
            "--batch-delay",
            "40ms",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // The column appears first; then batches fill it.
        let filled = env.pg.psql("app", "SELECT count(tenant_id) FROM customers");
        if filled
            .as_deref()
            .is_ok_and(|n| n.parse::<i64>().unwrap_or(0) > 0)
        {
            break;
        }
        assert!(Instant::now() < deadline, "backfill never started");
        assert!(
            child.try_wait().unwrap().is_none(),
            "apply ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn an_apply_killed_mid_backfill_resumes_when_run_again() {
    let env = shop().await;
    let before = fingerprints(&env);
    kill_apply_mid_backfill(&env);

    let nulls: i64 = sql(
        &env,
        "SELECT count(*) FROM customers WHERE tenant_id IS NULL",
    )
    .parse()
    .unwrap();
    let filled: i64 = sql(&env, "SELECT count(tenant_id) FROM customers")
        .parse()
        .unwrap();
    assert!(
        nulls > 0 && filled > 0,
        "killed mid-backfill ({filled} filled, {nulls} left)"
    );
    assert!(
        !rls_state(&env).contains("=true"),
        "the schema transaction never ran"
    );
    // Every customer had no tenant and the keys are contiguous, so each committed batch
    // filled exactly 100 rows. (A run once saw 199: the batch's last key was taken in text
    // order, '99' > '100', so the second batch restarted at id 100 and filled only 99.)
    assert_eq!(
        filled % 100,
        0,
        "each batch committed whole ({filled} filled)"
    );

    let plan = ok(&env, &["plan"]);
    assert!(
        !plan.contains("ADD COLUMN"),
        "the columns were added before the backfill"
    );
    assert!(
        plan.contains(&format!(
            "-- public.customers: {nulls} rows get tenant_id = 'acme'::text"
        )),
        "{plan}"
    );

    let applied = ok(&env, &["apply", "--yes"]);
    assert!(applied.contains("OK: applied"), "{applied}");
    assert!(ok(&env, &["verify"]).contains("OK"));
    assert_eq!(fingerprints(&env), before);
    assert_eq!(
        sql(
            &env,
            "SELECT count(*) FROM customers WHERE tenant_id <> 'acme'"
        ),
        "0"
    );
}

/// The backfill walks the primary key in key order, not text order: with 2,000 contiguous
/// ids and batches of 100, every batch fills 100 new rows and ends 100 ids further on
/// (ids 1..100 end at 100, not at '99', the greatest id as text).
#[tokio::test]
async fn backfill_batches_are_whole_and_follow_the_key_order() {
    use rlsgate::control::policy::backfill::{self, Backfill, BackfillOptions};
    use rlsgate::control::policy::db::Database;
    use rlsgate::control::policy::sql::QualifiedName;

    let env = shop().await;
    sql(&env, "ALTER TABLE customers ADD COLUMN tenant_id text");
    rlsgate::wire::tls::install_default_provider();
    let db = Database::from_url(&env.pg.superuser_url("app")).unwrap();
    let job = Backfill {
        table: QualifiedName::new("public", "customers"),
        column: "tenant_id".into(),
        value: "'acme'::text".into(),
        rows: 2000,
        key: vec![("id".into(), "bigint".into())],
    };

    // The first batch by hand: its last key is the greatest id of the batch.
    let client = db.client().await.unwrap();
    let row = client
        .query_one(&job.batch_sql(100, false), &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 100);
    assert_eq!(row.get::<_, String>(1), "100");
    let row = client
        .query_one(&job.batch_sql(100, true), &[&"100"])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, String>(1)),
        (100, "200".to_string()),
        "the second batch is ids 101..200, all still without a tenant"
    );
    drop(client);

    // Then `run`, which (like a resumed apply) walks from the first key: ids 1..200 are
    // filled already, then every batch fills 100 rows, then one finds no row.
    let mut totals = Vec::new();
    let opts = BackfillOptions {
        batch_size: 100,
        delay: Duration::ZERO,
        disable_triggers: false,
    };
    let total = backfill::run(&db, &job, &opts, |t| totals.push(t))
        .await
        .unwrap();
    assert_eq!(total, 1800);
    let expected: Vec<u64> = [0, 0]
        .into_iter()
        .chain((1..=18).map(|k| k * 100))
        .chain([1800])
        .collect();
    assert_eq!(totals, expected, "whole batches of 100");
    assert_eq!(
        sql(
            &env,
            "SELECT count(*) FROM customers WHERE tenant_id IS NULL"
        ),
        "0"
    );
}

#[tokio::test]
async fn rollback_restores_the_schema_and_keeps_the_data() {
    let env = shop().await;
    let before = fingerprints(&env);
    let defs = schema_defs(&env);
    let rls = rls_state(&env);
    ok(&env, &["apply", "--yes"]);

    let out = ok(&env, &["rollback", "--yes"]);
    assert!(out.contains("OK: rolled back"), "{out}");
    assert_eq!(rls_state(&env), rls, "RLS off again");
    assert_eq!(sql(&env, "SELECT count(*) FROM pg_policy"), "0");
    assert_eq!(fingerprints(&env), before);
    assert_eq!(
        sql(&env, "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'payments_invoice_number_fkey'"),
        "FOREIGN KEY (invoice_number) REFERENCES invoices(number)"
    );
    assert_eq!(
        sql(&env, "SELECT attnotnull, count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
                   WHERE attname = 'tenant_id' AND c.relkind = 'r' GROUP BY 1"),
        "f|5",
        "the column stays, nullable"
    );
    assert_eq!(
        sql(
            &env,
            "SELECT has_table_privilege('app_rls', 'customers', 'SELECT')"
        ),
        "f"
    );
    assert!(ok(&env, &["rollback", "--yes"]).contains("Nothing to do"));
    assert!(
        run(&env, &["verify"]).code == 1,
        "verify fails after rollback"
    );

    ok(&env, &["rollback", "--yes", "--drop-column"]);
    assert_eq!(
        schema_defs(&env),
        defs,
        "constraints and indexes as before apply"
    );
    assert_eq!(fingerprints(&env), before);
}

#[tokio::test]
async fn apply_stops_and_rolls_back_when_a_trigger_changes_rows() {
    let env = shop().await;
    sql(
        &env,
        "ALTER TABLE products ADD COLUMN updated_at timestamptz; \
         CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS \
         'BEGIN NEW.updated_at := clock_timestamp(); RETURN NEW; END'; \
         CREATE TRIGGER products_touch BEFORE UPDATE ON products FOR EACH ROW EXECUTE FUNCTION touch();",
    );
    let defs = schema_defs(&env);
    assert!(ok(&env, &["plan"])
        .contains("WARNING: public.products has UPDATE triggers (products_touch)"));

    let r = run(&env, &["apply", "--yes"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("FAILED: the checks before COMMIT found differences"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("public.products: before 300 rows, checksum"),
        "{}",
        r.stdout
    );
    assert!(
        !r.stdout.contains("public.customers: before"),
        "only products differs"
    );
    assert!(
        !rls_state(&env).contains("=true"),
        "the schema transaction was rolled back"
    );
    assert_eq!(sql(&env, "SELECT count(*) FROM pg_policy"), "0");
    assert_eq!(schema_defs(&env), defs, "no constraint or index changed");

    // The documented way out: backfill with triggers off.
    let out = ok(&env, &["apply", "--yes", "--disable-triggers"]);
    assert!(out.contains("OK: applied"), "{out}");
}

#[tokio::test]
async fn apply_without_yes_refuses_when_stdin_is_not_a_terminal() {
    let env = shop().await;
    let r = run(&env, &["apply"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("pass --yes"), "{}", r.stderr);
    assert_eq!(
        sql(
            &env,
            "SELECT count(*) FROM pg_attribute WHERE attname = 'tenant_id'"
        ),
        "0"
    );
}

#[tokio::test]
async fn verify_fails_when_rls_is_no_longer_forced() {
    let env = shop().await;
    ok(&env, &["apply", "--yes"]);
    sql(&env, "ALTER TABLE invoices NO FORCE ROW LEVEL SECURITY");
    let r = run(&env, &["verify"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout
            .contains("public.invoices: row-level security forced"),
        "{}",
        r.stdout
    );
    let plan = ok(&env, &["plan"]);
    assert!(plan.contains("ALTER TABLE public.invoices FORCE ROW LEVEL SECURITY;"));
}

#[tokio::test]
async fn plan_refuses_what_it_cannot_do_safely() {
    let env = shop().await;
    let text = std::fs::read_to_string(POLICY).unwrap();
    let without_payments =
        text.replace("[[table]]\nname = \"payments\"\nbackfill = \"acme\"\n", "");
    assert_ne!(text, without_payments);
    let file = env.dir.path().join("partial.toml");
    std::fs::write(&file, without_payments).unwrap();
    let r = run_with(&env, file.to_str().unwrap(), &["plan"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("foreign key payments_invoice_number_fkey on public.payments references public.invoices (number)"), "{}", r.stderr);

    sql(&env, "ALTER ROLE app_rls BYPASSRLS");
    let r = run(&env, &["apply", "--yes"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("app role `app_rls` is a superuser or has BYPASSRLS"),
        "{}",
        r.stderr
    );
    assert_eq!(
        sql(
            &env,
            "SELECT count(*) FROM pg_attribute WHERE attname = 'tenant_id'"
        ),
        "0"
    );
}
