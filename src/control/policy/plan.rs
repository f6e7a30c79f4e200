//! The plan: from a policy and the live catalog, the exact SQL that is still missing
//! (nothing when the database already matches: the plan of an applied policy is empty).
//! Pure functions over [`DbState`], so every rule is unit-tested without a server.

use super::backfill::Backfill;
use super::catalog::{DbState, TableState};
use super::file::{Command, Policy, TableSpec, TenantType};
use super::options::TenantContext;
use super::sql::{object_name, quote_ident, quote_literal, QualifiedName};
use super::steps;

/// When a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Before the backfill, each statement its own transaction (adding columns).
    Prepare,
    /// In the one schema-change transaction, checked before COMMIT.
    Transaction,
    /// After COMMIT, outside any transaction (`CREATE INDEX CONCURRENTLY`).
    Concurrent,
}

/// One SQL statement of a plan, with what it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub phase: Phase,
    /// The object it changes, unquoted (`public.customers`).
    pub object: String,
    /// What it fixes, in words (also what `verify` reports as missing).
    pub what: String,
    pub sql: String,
}

/// Rows per table when the plan was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSummary {
    pub table: QualifiedName,
    pub rows: i64,
    /// Rows whose tenant column is NULL or missing.
    pub without_tenant: i64,
}

/// What `apply` (or `rollback`) would run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub tables: Vec<TableSummary>,
    pub steps: Vec<Step>,
    pub backfills: Vec<Backfill>,
    /// The seal secret to store in the schema-change transaction.
    pub seal: Option<super::sealed::SealStore>,
    /// Things worth knowing that do not stop the plan.
    pub warnings: Vec<String>,
}

impl Plan {
    /// Nothing to change.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.backfills.is_empty() && self.seal.is_none()
    }

    pub fn steps_in(&self, phase: Phase) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(move |s| s.phase == phase)
    }

    /// Everything still to do, in words (`verify`'s list of failures).
    pub fn missing(&self) -> Vec<String> {
        let backfills = self.backfills.iter().map(|b| {
            format!(
                "{}: {} rows without a tenant in {}",
                b.table.plain(),
                b.rows,
                b.column
            )
        });
        backfills
            .chain(
                self.steps
                    .iter()
                    .map(|s| format!("{}: {}", s.object, s.what)),
            )
            .chain(self.seal.iter().map(super::sealed::missing))
            .collect()
    }
}

/// The database cannot be taken to the policy's state as things are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", list(.0))]
pub struct Refused(pub Vec<String>);

fn list(problems: &[String]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Collects steps, warnings and problems while a plan is built.
pub(super) struct Builder<'a> {
    pub policy: &'a Policy,
    pub state: &'a DbState,
    pub plan: Plan,
    pub problems: Vec<String>,
}

impl<'a> Builder<'a> {
    pub fn new(policy: &'a Policy, state: &'a DbState) -> Self {
        let tables = policy
            .tables
            .iter()
            .filter_map(|spec| {
                state.tables.get(&spec.name).map(|t| TableSummary {
                    table: spec.name.clone(),
                    rows: t.rows,
                    without_tenant: t.null_tenants,
                })
            })
            .collect();
        Builder {
            policy,
            state,
            plan: Plan {
                tables,
                ..Plan::default()
            },
            problems: Vec::new(),
        }
    }

    pub fn step(&mut self, phase: Phase, object: &QualifiedName, what: &str, sql: String) {
        self.plan.steps.push(Step {
            phase,
            object: object.plain(),
            what: what.to_owned(),
            sql,
        });
    }

    pub fn problem(&mut self, text: String) {
        self.problems.push(text);
    }

    /// Tenant tables that exist, with their spec.
    pub fn tables(&self) -> Vec<(&'a TableSpec, &'a TableState)> {
        let state = self.state;
        self.policy
            .tables
            .iter()
            .filter_map(|spec| state.tables.get(&spec.name).map(|t| (spec, t)))
            .collect()
    }

    pub fn finish(self) -> Result<Plan, Refused> {
        if self.problems.is_empty() {
            Ok(self.plan)
        } else {
            Err(Refused(self.problems))
        }
    }
}

/// What the policies compare the tenant column with. Sealed (the default):
/// `(SELECT rlsgate.tenant())[::type]`, the tenant only when rlsgate's seal verifies,
/// evaluated once per statement. Setting: `NULLIF(current_setting('<setting>', true),
/// '')[::type]`. Both are NULL when there is no tenant, which matches no row.
pub fn session_tenant(policy: &Policy) -> String {
    let value = match policy.context {
        TenantContext::Sealed => SEALED_TENANT.to_owned(),
        TenantContext::Setting => format!(
            "NULLIF(current_setting({}, true), '')",
            quote_literal(&policy.setting)
        ),
    };
    cast(value, policy.tenant_type)
}

/// The tenant column's default: the session's tenant. Sealed: `rlsgate.tenant()`, NULL
/// without a proven context, so the NOT NULL column refuses the row loudly. Setting:
/// `current_setting('<setting>')`, an error when unset.
pub fn column_default(policy: &Policy) -> String {
    let value = match policy.context {
        TenantContext::Sealed => "rlsgate.tenant()".to_owned(),
        TenantContext::Setting => format!("current_setting({})", quote_literal(&policy.setting)),
    };
    cast(value, policy.tenant_type)
}

const SEALED_TENANT: &str = "(SELECT rlsgate.tenant())";

fn cast(value: String, ty: TenantType) -> String {
    match ty {
        TenantType::Text => value,
        other => format!("{value}::{}", other.sql_name()),
    }
}

/// Whether an expression (as `pg_get_expr` prints it) reads the tenant setting.
pub fn reads_setting(expr: &str, setting: &str) -> bool {
    expr.contains(&format!("current_setting({}", quote_literal(setting)))
}

/// Whether an expression reads the sealed context (`rlsgate.tenant()`).
pub fn reads_sealed(expr: &str) -> bool {
    expr.contains("rlsgate.tenant()")
}

/// Whether an expression reads the tenant the way `policy` is configured to.
pub fn reads_context(expr: &str, policy: &Policy) -> bool {
    match policy.context {
        TenantContext::Sealed => reads_sealed(expr),
        TenantContext::Setting => reads_setting(expr, &policy.setting),
    }
}

/// Whether an expression reads the tenant in either form (for rollback and warnings).
pub fn reads_tenant(expr: &str, setting: &str) -> bool {
    reads_sealed(expr) || reads_setting(expr, setting)
}

/// The policies a table should have: `(name, None)` for one `FOR ALL` policy, else one
/// per command.
pub fn expected_policies(policy: &Policy, spec: &TableSpec) -> Vec<(String, Option<Command>)> {
    if spec.commands.is_all() {
        return vec![(policy.policy_name.clone(), None)];
    }
    spec.commands
        .0
        .iter()
        .map(|c| {
            let suffix = c.keyword().to_ascii_lowercase();
            (object_name(&[&policy.policy_name, &suffix]), Some(*c))
        })
        .collect()
}

/// Every policy name rlsgate may have created on a table (for rollback).
pub fn our_policy_names(policy: &Policy) -> Vec<String> {
    let mut names = vec![policy.policy_name.clone()];
    for c in Command::ALL {
        let suffix = c.keyword().to_ascii_lowercase();
        names.push(object_name(&[&policy.policy_name, &suffix]));
    }
    names
}

/// Name of the plain tenant index and of the extra index on `[tenant] + columns`.
pub fn index_name(spec: &TableSpec, columns: &[String]) -> String {
    let mut parts: Vec<&str> = vec![&spec.name.name, &spec.column];
    parts.extend(columns.iter().map(String::as_str));
    parts.push("idx");
    object_name(&parts)
}

/// Name of the CHECK constraint that forbids an empty tenant.
pub fn not_empty_name(spec: &TableSpec) -> String {
    object_name(&[&spec.name.name, &spec.column, "not_empty"])
}

/// Builds the plan that takes the database to the policy.
pub fn build(policy: &Policy, state: &DbState) -> Result<Plan, Refused> {
    let mut b = Builder::new(policy, state);
    preflight(&mut b);
    super::sealed::steps(&mut b);
    for (spec, table) in b.tables() {
        steps::column_steps(&mut b, spec, table);
    }
    super::uniques::widen(&mut b);
    for (spec, table) in b.tables() {
        steps::index_steps(&mut b, spec, table);
    }
    for (spec, table) in b.tables() {
        steps::rls_steps(&mut b, spec, table);
        steps::grant_steps(&mut b, spec, table);
    }
    steps::exempt_and_view_steps(&mut b);
    super::hardening::revoke_steps(&mut b);
    for name in &state.uncovered {
        b.plan.warnings.push(format!(
            "{} is in the policy's schemas but not listed: add it as a [[table]] or \
             [[exempt]] (it is not protected by row-level security)",
            name.plain()
        ));
    }
    b.finish()
}

/// Checks that must hold before anything is planned.
pub(super) fn preflight(b: &mut Builder<'_>) {
    let (state, policy) = (b.state, b.policy);
    if state.server_version < 150_000 {
        b.problem(format!(
            "PostgreSQL 15 or later is needed (server_version_num {})",
            state.server_version
        ));
        return;
    }
    if !state.roles.current_bypasses_rls {
        b.problem(format!(
            "the connecting role `{}` is not a superuser and has no BYPASSRLS: it would not \
             see every row, so counts and checksums would be wrong; connect as a superuser \
             (or the tables' owner with BYPASSRLS)",
            state.roles.current_user
        ));
    }
    match &state.roles.app {
        None => b.problem(format!(
            "app role `{0}` does not exist: CREATE ROLE {1} LOGIN PASSWORD '...';",
            policy.app_role,
            quote_ident(&policy.app_role)
        )),
        Some(app) if app.superuser || app.bypassrls => b.problem(format!(
            "app role `{}` is a superuser or has BYPASSRLS: row-level security never applies \
             to it (ALTER ROLE {} NOSUPERUSER NOBYPASSRLS;)",
            app.name,
            quote_ident(&app.name)
        )),
        Some(_) => {}
    }
    for spec in &policy.tables {
        match state.tables.get(&spec.name) {
            None => b.problem(format!("table {} does not exist", spec.name.plain())),
            Some(t) if t.app_owns => b.problem(format!(
                "app role `{}` owns {} (or is a member of its owner `{}`): an owner can turn \
                 row-level security off; give the table to another role (ALTER TABLE {} OWNER TO ...)",
                policy.app_role,
                spec.name.plain(),
                t.owner,
                spec.name
            )),
            Some(_) => {}
        }
    }
    for spec in &policy.exempt {
        if !state.exempt.contains_key(&spec.name) {
            b.problem(format!("exempt table {} does not exist", spec.name.plain()));
        }
    }
}
