//! `policy verify`: the post-checks alone, for CI pipelines. Passes when the plan is
//! empty (every tenant column present, NOT NULL with the session default, no NULL
//! tenant, unique keys tenant-scoped, RLS enabled and forced, the policies present and
//! reading the tenant in the configured form (sealed `rlsgate.tenant()` or the setting),
//! grants in place, the cross-session functions and views revoked, the configured seal
//! secret stored) and the roles are safe.

use std::io::Write;

use tokio_postgres::GenericClient;

use super::catalog::{inspect, DbState};
use super::db::DbError;
use super::file::Policy;
use super::plan;
use super::Outcome;

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub state: DbState,
    /// Each failed check, in words.
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

impl Verification {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Runs every check against the live database.
pub async fn verify<C: GenericClient + Sync>(
    client: &C,
    policy: &Policy,
) -> Result<Verification, DbError> {
    let state = inspect(client, policy).await?;
    let (problems, warnings) = match plan::build(policy, &state) {
        Ok(plan) => (plan.missing(), plan.warnings),
        Err(refused) => (refused.0, Vec::new()),
    };
    Ok(Verification {
        state,
        problems,
        warnings,
    })
}

/// Prints a verification: one line per table, then the failures.
pub fn print(out: &mut dyn Write, policy: &Policy, v: &Verification) -> std::io::Result<Outcome> {
    writeln!(
        out,
        "{:<40} {:>10} {:>9} {:>6} {:>7}  policies",
        "table", "rows", "no tenant", "rls", "forced"
    )?;
    for spec in &policy.tables {
        let Some(t) = v.state.tables.get(&spec.name) else {
            writeln!(out, "{:<40} missing", spec.name.plain())?;
            continue;
        };
        let names: Vec<&str> = t.policies.iter().map(|p| p.name.as_str()).collect();
        writeln!(
            out,
            "{:<40} {:>10} {:>9} {:>6} {:>7}  {}",
            spec.name.plain(),
            t.rows,
            t.null_tenants,
            yes_no(t.rls_enabled),
            yes_no(t.rls_forced),
            if names.is_empty() {
                "-".into()
            } else {
                names.join(", ")
            }
        )?;
    }
    for w in &v.warnings {
        writeln!(out, "warning: {w}")?;
    }
    if v.passed() {
        writeln!(out, "OK: the database matches the policy.")?;
        Ok(Outcome::Ok)
    } else {
        writeln!(out, "FAILED: {} problems:", v.problems.len())?;
        for p in &v.problems {
            writeln!(out, "  - {p}")?;
        }
        Ok(Outcome::Failed)
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}
