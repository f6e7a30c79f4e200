//! `policy rollback`: the reverse plan. Drops rlsgate's policies, disables row-level
//! security, revokes the app role's table privileges (without RLS it would see every
//! tenant's rows), drops the indexes and checks rlsgate created, narrows widened unique
//! keys and their foreign keys back, and drops the tenant column's NOT NULL and default
//! (the column and its values stay unless `--drop-column`), and grants back exactly the
//! cross-session privileges `apply` revoked (`rlsgate.revoked`). The sealed context
//! (`rlsgate` schema, stored secret) stays. One checked transaction.

use std::io::Write;

use super::apply::{checked_transaction, confirm, Expect};
use super::catalog::inspect;
use super::checks::snapshot;
use super::db::{pg, Database};
use super::file::Policy;
use super::plan::{self, Builder, Phase, Plan, Refused, Step};
use super::render::{self, Heading};
use super::sql::{quote_ident, QualifiedName};
use super::{Outcome, PolicyError};

/// `rollback` switches.
#[derive(Debug, Clone, Copy, Default)]
pub struct RollbackOptions {
    pub yes: bool,
    /// Drop the tenant column too (its values are lost).
    pub drop_column: bool,
}

/// Builds the plan that undoes what `apply` did (nothing when there is nothing to undo).
pub fn build(
    policy: &Policy,
    state: &super::catalog::DbState,
    drop_column: bool,
) -> Result<Plan, Refused> {
    let mut b = Builder::new(policy, state);
    if !state.roles.current_bypasses_rls {
        b.problem(format!(
            "the connecting role `{}` is not a superuser and has no BYPASSRLS: it would not \
             see every row, so counts and checksums would be wrong",
            state.roles.current_user
        ));
    }
    security_steps(&mut b);
    super::hardening::restore_steps(&mut b);
    super::uniques::narrow(&mut b);
    column_steps(&mut b, drop_column);
    if let Some(app) = &state.roles.app {
        let role = quote_ident(&app.name);
        for view in state
            .views
            .iter()
            .filter(|v| !v.materialized && v.app_select)
        {
            b.step(
                Phase::Transaction,
                &view.name,
                &format!("{} may no longer read the view", app.name),
                format!("REVOKE SELECT ON {} FROM {role};", view.name),
            );
        }
    }
    b.finish()
}

fn security_steps(b: &mut Builder<'_>) {
    let ours = plan::our_policy_names(b.policy);
    for (spec, t) in b.tables() {
        let table = &spec.name;
        for p in t.policies.iter().filter(|p| ours.contains(&p.name)) {
            b.step(
                Phase::Transaction,
                table,
                &format!("drop policy {}", p.name),
                format!("DROP POLICY {} ON {table};", quote_ident(&p.name)),
            );
        }
        if t.rls_forced {
            b.step(
                Phase::Transaction,
                table,
                "row-level security no longer forced",
                format!("ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY;"),
            );
        }
        if t.rls_enabled {
            b.step(
                Phase::Transaction,
                table,
                "row-level security disabled",
                format!("ALTER TABLE {table} DISABLE ROW LEVEL SECURITY;"),
            );
        }
        if let Some(app) = &b.state.roles.app {
            let held: Vec<&str> = b
                .policy
                .privileges
                .iter()
                .filter(|p| t.app_privileges.contains(p))
                .map(|p| p.keyword())
                .collect();
            if !held.is_empty() {
                b.step(
                    Phase::Transaction,
                    table,
                    &format!("{} may no longer {}", app.name, held.join(", ")),
                    format!(
                        "REVOKE {} ON {table} FROM {};",
                        held.join(", "),
                        quote_ident(&app.name)
                    ),
                );
            }
        }
        let mut names = vec![plan::index_name(spec, &[])];
        names.extend(spec.indexes.iter().map(|cols| plan::index_name(spec, cols)));
        for name in names
            .into_iter()
            .filter(|n| t.indexes.iter().any(|i| &i.name == n))
        {
            let index = QualifiedName::new(table.schema.clone(), name.clone());
            b.step(
                Phase::Transaction,
                table,
                &format!("drop index {name}"),
                format!("DROP INDEX {index};"),
            );
        }
    }
}

fn column_steps(b: &mut Builder<'_>, drop_column: bool) {
    for (spec, t) in b.tables() {
        let (table, col) = (&spec.name, quote_ident(&spec.column));
        let check = plan::not_empty_name(spec);
        if t.check_constraints.contains(&check) {
            b.step(
                Phase::Transaction,
                table,
                &format!("drop check {check}"),
                format!(
                    "ALTER TABLE {table} DROP CONSTRAINT {};",
                    quote_ident(&check)
                ),
            );
        }
        let Some(column) = &t.column else {
            continue;
        };
        if drop_column {
            b.step(
                Phase::Transaction,
                table,
                &format!("drop column {}", spec.column),
                format!("ALTER TABLE {table} DROP COLUMN {col};"),
            );
            continue;
        }
        if column
            .default
            .as_deref()
            .is_some_and(|d| plan::reads_tenant(d, &b.policy.setting))
        {
            b.step(
                Phase::Transaction,
                table,
                &format!("{} has no default", spec.column),
                format!("ALTER TABLE {table} ALTER COLUMN {col} DROP DEFAULT;"),
            );
        }
        if column.not_null {
            b.step(
                Phase::Transaction,
                table,
                &format!("{} allows NULL", spec.column),
                format!("ALTER TABLE {table} ALTER COLUMN {col} DROP NOT NULL;"),
            );
        }
    }
}

/// Plans, confirms and runs the rollback; prints everything to `out`.
pub async fn rollback(
    db: &Database,
    policy: &Policy,
    policy_label: &str,
    opts: RollbackOptions,
    out: &mut dyn Write,
) -> Result<Outcome, PolicyError> {
    let mut client = db.client().await?;
    let state = inspect(pg(&client), policy).await?;
    let plan = build(policy, &state, opts.drop_column)?;
    let heading = Heading {
        title: "rlsgate policy rollback",
        database: db.label(),
        policy: policy_label,
        batch_size: policy.apply.batch_size,
        lock_timeout: policy.apply.lock_timeout,
        checks:
            "row counts and checksums unchanged, no rlsgate policy left, row-level security off",
    };
    render::plan(out, &heading, &plan)?;
    if plan.is_empty() {
        return Ok(Outcome::Ok);
    }
    confirm(
        opts.yes,
        &format!("Roll back row-level security on {}?", db.label()),
    )
    .await?;
    let before = snapshot(pg(&client), policy).await?;
    let steps: Vec<&Step> = plan.steps_in(Phase::Transaction).collect();
    let expect = Expect::RolledBack {
        drop_column: opts.drop_column,
    };
    let checked = checked_transaction(&mut client, policy, &steps, None, &before, expect).await?;
    writeln!(out, "\n-- Data before and after:")?;
    render::snapshots(out, &before, &checked.after)?;
    if checked.problems.is_empty() {
        writeln!(out, "\nOK: rolled back; counts and checksums unchanged.")?;
        Ok(Outcome::Ok)
    } else {
        render::problems(
            out,
            "\nFAILED: the checks before COMMIT found differences; nothing was changed:",
            &checked.problems,
        )?;
        Ok(Outcome::Failed)
    }
}
