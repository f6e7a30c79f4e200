//! `policy apply`: runs a plan. Tenant columns are added, existing rows backfilled in
//! batches, then the schema changes run in one transaction whose result is checked
//! (counts, checksums, NULL tenants, RLS, policies) before COMMIT; on any mismatch it is
//! rolled back and the differences are printed. Concurrent index builds come last.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use deadpool_postgres::Object;

use super::backfill::{self, BackfillOptions};
use super::catalog::{inspect, DbState};
use super::checks::{compare, snapshot, Snapshot};
use super::db::{describe, pg, Database, DbError};
use super::file::Policy;
use super::plan::{self, Phase, Plan, Step};
use super::render::{self, Heading};
use super::sql::quote_literal;
use super::{Outcome, PolicyError};

/// `apply` switches.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// Do not ask for confirmation.
    pub yes: bool,
    /// Overrides `[apply] batch_size`.
    pub batch_size: Option<u32>,
    /// Pause between backfill batches.
    pub batch_delay: Duration,
    /// Backfill with user triggers off (superuser only).
    pub disable_triggers: bool,
}

/// What the checks inside the schema-change transaction expect to find.
#[derive(Debug, Clone, Copy)]
pub(super) enum Expect {
    /// The apply plan is empty (but for concurrent index builds).
    Applied,
    /// The rollback plan is empty.
    RolledBack { drop_column: bool },
}

/// Result of the checked transaction.
pub(super) struct Checked {
    pub problems: Vec<String>,
    pub after: Snapshot,
}

/// Plans, confirms and applies `policy`; prints everything to `out`.
pub async fn apply(
    db: &Database,
    policy: &Policy,
    policy_label: &str,
    opts: &ApplyOptions,
    out: &mut dyn Write,
) -> Result<Outcome, PolicyError> {
    let mut client = db.client().await?;
    let state = inspect(pg(&client), policy).await?;
    let plan = plan::build(policy, &state)?;
    let batch_size = opts.batch_size.unwrap_or(policy.apply.batch_size).max(1);
    let heading = Heading {
        title: "rlsgate policy apply",
        database: db.label(),
        policy: policy_label,
        batch_size,
        lock_timeout: policy.apply.lock_timeout,
        checks: render::APPLY_CHECKS,
    };
    render::plan(out, &heading, &plan)?;
    if plan.is_empty() {
        return Ok(Outcome::Ok);
    }
    if opts.disable_triggers && !state.roles.current_is_superuser {
        return Err(PolicyError::Usage(
            "--disable-triggers needs a superuser connection (session_replication_role)".into(),
        ));
    }
    confirm(opts.yes, &format!("Apply this plan to {}?", db.label())).await?;
    let before = snapshot(pg(&client), policy).await?;
    run_each(&client, plan.steps_in(Phase::Prepare)).await?;
    let bopts = BackfillOptions {
        batch_size,
        delay: opts.batch_delay,
        disable_triggers: opts.disable_triggers,
    };
    backfill_all(db, &plan, &bopts, out).await?;
    let steps: Vec<&Step> = plan.steps_in(Phase::Transaction).collect();
    let secret = match (&plan.seal, &policy.seal_secret) {
        (Some(_), Some(source)) => Some(source.read().map_err(DbError::from)?),
        _ => None,
    };
    let checked = checked_transaction(
        &mut client,
        policy,
        &steps,
        secret.as_deref(),
        &before,
        Expect::Applied,
    )
    .await?;
    writeln!(out, "\n-- Data before and after:")?;
    render::snapshots(out, &before, &checked.after)?;
    if !checked.problems.is_empty() {
        render::problems(
            out,
            "\nFAILED: the checks before COMMIT found differences; the transaction was rolled \
             back (columns added and rows backfilled before it are kept; run `policy rollback` \
             to undo them):",
            &checked.problems,
        )?;
        return Ok(Outcome::Failed);
    }
    run_each(&client, plan.steps_in(Phase::Concurrent)).await?;
    finish(&client, policy, &state, out).await
}

async fn finish(
    client: &Object,
    policy: &Policy,
    earlier: &DbState,
    out: &mut dyn Write,
) -> Result<Outcome, PolicyError> {
    let state = inspect(pg(client), policy).await?;
    let missing = match plan::build(policy, &state) {
        Ok(plan) => plan.missing(),
        Err(refused) => refused.0,
    };
    if missing.is_empty() {
        writeln!(
            out,
            "\nOK: applied; {} tables tenant-scoped, row-level security enabled and forced, \
             counts and checksums unchanged.",
            earlier.tables.len()
        )?;
        Ok(Outcome::Ok)
    } else {
        render::problems(out, "\nFAILED: after COMMIT, still missing:", &missing)?;
        Ok(Outcome::Failed)
    }
}

/// Asks on the terminal unless `yes`; refuses when stdin is not a terminal.
pub(super) async fn confirm(yes: bool, question: &str) -> Result<(), PolicyError> {
    if yes {
        return Ok(());
    }
    let question = question.to_owned();
    tokio::task::spawn_blocking(move || {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Err(PolicyError::NotConfirmed(
                "stdin is not a terminal; pass --yes to run without asking".into(),
            ));
        }
        eprint!("{question} Type `yes` to go on: ");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        stdin.read_line(&mut answer)?;
        if answer.trim() == "yes" {
            Ok(())
        } else {
            Err(PolicyError::NotConfirmed("not confirmed".into()))
        }
    })
    .await
    .map_err(|e| PolicyError::NotConfirmed(e.to_string()))?
}

/// Runs statements one by one, each committing on its own.
async fn run_each<'s>(
    client: &Object,
    steps: impl Iterator<Item = &'s Step>,
) -> Result<(), PolicyError> {
    for step in steps {
        client
            .batch_execute(&step.sql)
            .await
            .map_err(|e| step_error(step, &e))?;
    }
    Ok(())
}

pub(super) fn step_error(step: &Step, e: &tokio_postgres::Error) -> PolicyError {
    PolicyError::Step {
        object: step.object.clone(),
        what: step.what.clone(),
        sql: step.sql.clone(),
        error: describe(e),
    }
}

async fn backfill_all(
    db: &Database,
    plan: &Plan,
    opts: &BackfillOptions,
    out: &mut dyn Write,
) -> Result<(), PolicyError> {
    for job in &plan.backfills {
        let started = Instant::now();
        let mut last_report = Instant::now();
        let table = job.table.plain();
        let total = backfill::run(db, job, opts, |done| {
            if last_report.elapsed() >= Duration::from_secs(2) {
                eprintln!("rlsgate: backfill {table}: {done}/{} rows", job.rows);
                last_report = Instant::now();
            }
        })
        .await?;
        writeln!(
            out,
            "-- backfilled {table}: {total} rows in {:.1}s",
            started.elapsed().as_secs_f64()
        )?;
    }
    Ok(())
}

/// Runs `steps` (then stores `seal_secret`, if any) in one transaction, then checks the
/// result inside it (catalog state as `expect`ed, counts and checksums equal to
/// `before`); commits only when nothing differs, else rolls back.
pub(super) async fn checked_transaction(
    client: &mut Object,
    policy: &Policy,
    steps: &[&Step],
    seal_secret: Option<&str>,
    before: &Snapshot,
    expect: Expect,
) -> Result<Checked, PolicyError> {
    let txn = client.transaction().await.map_err(DbError::from)?;
    let ms = policy.apply.lock_timeout.as_millis().to_string() + "ms";
    txn.batch_execute(&format!("SET LOCAL lock_timeout = {}", quote_literal(&ms)))
        .await
        .map_err(DbError::from)?;
    for step in steps {
        txn.batch_execute(&step.sql)
            .await
            .map_err(|e| step_error(step, &e))?;
    }
    if let Some(secret) = seal_secret {
        super::sealed::store(&*txn, secret)
            .await
            .map_err(|e| PolicyError::Step {
                object: "schema rlsgate".into(),
                what: "store the seal secret".into(),
                sql: "SELECT rlsgate.set_seal_secret($1)".into(),
                error: describe(&e),
            })?;
    }
    let state = inspect(&*txn, policy).await?;
    let mut problems = remaining(policy, &state, expect);
    let after = snapshot(&*txn, policy).await?;
    problems.extend(compare(before, &after));
    if problems.is_empty() {
        txn.commit().await.map_err(DbError::from)?;
    } else {
        txn.rollback().await.map_err(DbError::from)?;
    }
    Ok(Checked { problems, after })
}

fn remaining(policy: &Policy, state: &DbState, expect: Expect) -> Vec<String> {
    let plan = match expect {
        Expect::Applied => plan::build(policy, state),
        Expect::RolledBack { drop_column } => super::rollback::build(policy, state, drop_column),
    };
    match plan {
        Err(refused) => refused.0,
        Ok(mut plan) => {
            plan.steps.retain(|s| s.phase != Phase::Concurrent);
            plan.missing()
        }
    }
}
