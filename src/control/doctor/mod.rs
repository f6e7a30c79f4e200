//! `rlsgate doctor`: audits a live database for the ways row-level-security isolation
//! silently fails. Each finding has a severity, the object, why it matters and the SQL
//! that fixes it. Output is a readable table or JSON; exit code 0 (no errors), 1 (errors
//! found), 2 (could not run).
//!
//! One file per group of checks: `tables` (RLS on tenant tables), `roles` (the app
//! role), `policies` (policy expressions), `views` (views, materialized views, SECURITY
//! DEFINER functions), `data` (NULL tenants, indexes, unique keys), `stats` (statistics
//! views that show other tenants' statements), `sessions` (functions and views that reach
//! other sessions of the shared role, large objects), `defaults` (setting defaults every
//! session inherits, predefined-role memberships), `sealed` (the sealed context).

mod context;
mod data;
mod defaults;
mod policies;
mod report;
mod roles;
mod sealed;
mod sessions;
mod stats;
mod tables;
mod views;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

pub use context::{Context, Settings, TenantTable};
pub use report::Report;

use crate::config::{Config, ConfigError};
use crate::control::policy::options::TenantContext;
use crate::control::policy::{pg, Database, DbError, Policy, PolicyFileError};

/// `rlsgate doctor` options.
#[derive(clap::Args, Debug, Clone)]
pub struct DoctorArgs {
    /// Proxy config: the upstream connection (unless --database), the app role (its
    /// user) and the tenant setting are taken from it.
    #[arg(long, short, required_unless_present = "database")]
    pub config: Option<PathBuf>,
    /// Database URL to audit. Use a superuser (or a BYPASSRLS role) so the NULL-tenant
    /// check can see every row.
    #[arg(long)]
    pub database: Option<String>,
    /// The role rlsgate connects as (default: the config's upstream user, the policy's
    /// app role, else the --database user).
    #[arg(long)]
    pub app_role: Option<String>,
    /// The tenant setting (default: the config's or policy's, else app.current_tenant).
    #[arg(long)]
    pub setting: Option<String>,
    /// Tenant column: every table with a column of this name is a tenant table.
    #[arg(long, default_value = "tenant_id")]
    pub tenant_column: String,
    /// Policy file: its tables (with their columns), exempt tables, app role, setting.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Estimated row count from which a table counts as large (index checks).
    #[arg(long, default_value_t = 10_000)]
    pub large_table_rows: i64,
    /// The proxy seals the tenant context (as `[tenant] sealed = true`; implied by a
    /// config that says so or a policy file with `context = "sealed"`).
    #[arg(long)]
    pub sealed: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// How bad a finding is. Only errors make the exit code 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Isolation is broken or can be broken by a tenant.
    Error,
    /// A weakness, a likely mistake, or a cost.
    Warning,
    /// Something that could not be checked, or worth knowing.
    Info,
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// Stable identifier of the check (`rls-not-forced`, ...).
    pub check: &'static str,
    /// The object, e.g. `table public.invoices`.
    pub object: String,
    /// Why it matters.
    pub why: String,
    /// SQL that fixes it (or the steps, as SQL comments).
    pub fix: String,
}

impl Finding {
    pub fn new(
        severity: Severity,
        check: &'static str,
        object: impl Into<String>,
        why: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            severity,
            check,
            object: object.into(),
            why: why.into(),
            fix: fix.into(),
        }
    }
}

/// Why doctor could not run (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Policy(#[from] PolicyFileError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Usage(String),
}

/// Entry point for `rlsgate doctor`: prints the report, returns 0, 1 or 2.
pub fn run(args: DoctorArgs) -> ExitCode {
    let format = args.format;
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(DoctorError::Io)
        .and_then(|rt| rt.block_on(audit(&args)));
    let mut out = std::io::stdout();
    match result.and_then(|r| r.print(format, &mut out).map(|()| r)) {
        Ok(report) if report.errors() > 0 => ExitCode::from(1),
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            if format == Format::Json {
                let _ = writeln!(out, "{}", serde_json::json!({ "error": e.to_string() }));
            }
            eprintln!("rlsgate doctor: could not run: {e}");
            ExitCode::from(2)
        }
    }
}

/// Connects as `args` say and runs every check.
pub async fn audit(args: &DoctorArgs) -> Result<Report, DoctorError> {
    crate::wire::tls::install_default_provider();
    let config = args.config.as_deref().map(Config::load).transpose()?;
    let policy = args.policy.as_deref().map(Policy::load).transpose()?;
    let (db, url_user) = match (&args.database, &config) {
        (Some(url), _) => (Database::from_url(url)?, url_user(url)),
        (None, Some(c)) => (Database::from_target(&c.upstream.target()?)?, None),
        (None, None) => return Err(DoctorError::Usage("give --config or --database".into())),
    };
    let settings = settings(args, config.as_ref(), policy.as_ref(), url_user);
    let client = db.client().await?;
    let ctx = context::load(pg(&client), settings).await?;
    let findings = check_all(pg(&client), &ctx).await?;
    Ok(Report::new(db.label(), &ctx, findings))
}

/// Runs every check group against a loaded context.
pub async fn check_all(
    client: &tokio_postgres::Client,
    ctx: &Context,
) -> Result<Vec<Finding>, DbError> {
    let mut findings = Vec::new();
    findings.extend(roles::check(client, ctx).await?);
    findings.extend(tables::check(ctx));
    findings.extend(policies::check(ctx));
    findings.extend(views::check(client, ctx).await?);
    findings.extend(data::check(client, ctx).await?);
    findings.extend(stats::check(client, ctx).await?);
    findings.extend(sessions::check(client, ctx).await?);
    findings.extend(defaults::check(client, ctx).await?);
    findings.extend(sealed::check(client, ctx).await?);
    findings
        .sort_by(|a, b| (a.severity, a.check, &a.object).cmp(&(b.severity, b.check, &b.object)));
    Ok(findings)
}

fn settings(
    args: &DoctorArgs,
    config: Option<&Config>,
    policy: Option<&Policy>,
    url_user: Option<String>,
) -> Settings {
    let config_user = config
        .and_then(|c| c.upstream.target().ok())
        .map(|t| t.user);
    let app_role = args
        .app_role
        .clone()
        .or(config_user)
        .or_else(|| policy.map(|p| p.app_role.clone()))
        .or(url_user)
        .unwrap_or_else(|| "app_rls".into());
    let setting = args
        .setting
        .clone()
        .or_else(|| config.map(|c| c.tenant.setting.clone()))
        .or_else(|| policy.map(|p| p.setting.clone()))
        .unwrap_or_else(|| "app.current_tenant".into());
    Settings {
        app_role,
        setting,
        column: args.tenant_column.clone(),
        policy_tables: policy
            .map(|p| {
                p.tables
                    .iter()
                    .map(|t| (t.name.clone(), t.column.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        exempt: policy
            .map(|p| p.exempt.iter().map(|e| e.name.clone()).collect())
            .unwrap_or_default(),
        large_table_rows: args.large_table_rows,
        sealed: args.sealed
            || config.is_some_and(|c| c.tenant.is_sealed())
            || policy.is_some_and(|p| p.context == TenantContext::Sealed),
        hardening: policy.map(|p| p.hardening).unwrap_or_default(),
    }
}

fn url_user(url: &str) -> Option<String> {
    url.parse::<tokio_postgres::Config>()
        .ok()
        .and_then(|c| c.get_user().map(str::to_owned))
}

/// `table public.invoices`-style object names.
pub(crate) fn object(kind: &str, name: &crate::control::policy::sql::QualifiedName) -> String {
    format!("{kind} {}", name.plain())
}
