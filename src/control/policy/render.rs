//! Printing plans and reports: SQL a person can read, review and run by hand (every
//! line that is not SQL is an SQL comment).

use std::io::{self, Write};
use std::time::Duration;

use super::checks::Snapshot;
use super::plan::{Phase, Plan};
use super::sql::quote_literal;

/// What a plan is printed for.
pub struct Heading<'a> {
    pub title: &'a str,
    pub database: &'a str,
    pub policy: &'a str,
    pub batch_size: u32,
    pub lock_timeout: Duration,
    /// What the transaction is checked for before COMMIT.
    pub checks: &'a str,
}

/// What `apply` checks before COMMIT.
pub const APPLY_CHECKS: &str = "row counts and checksums unchanged, no NULL tenant, \
     row-level security enabled and forced, policies present";

/// Prints a plan: table summary, then each phase's SQL in order, then warnings.
pub fn plan(out: &mut dyn Write, h: &Heading<'_>, plan: &Plan) -> io::Result<()> {
    writeln!(out, "-- {}", h.title)?;
    writeln!(out, "-- database: {}", h.database)?;
    writeln!(out, "-- policy:   {}", h.policy)?;
    writeln!(out, "--")?;
    writeln!(
        out,
        "-- {:<40} {:>10} {:>15}",
        "table", "rows", "without tenant"
    )?;
    for t in &plan.tables {
        writeln!(
            out,
            "-- {:<40} {:>10} {:>15}",
            t.table.plain(),
            t.rows,
            t.without_tenant
        )?;
    }
    if plan.is_empty() {
        writeln!(out, "--\n-- Nothing to do: the database already matches.")?;
    }
    let mut n = 0;
    let mut section = |out: &mut dyn Write, text: &str| -> io::Result<()> {
        n += 1;
        writeln!(out, "--\n-- Step {n}: {text}")
    };
    if plan.steps_in(Phase::Prepare).next().is_some() {
        section(
            out,
            "before the backfill, each statement commits on its own (tenant columns, the \
             sealed context)",
        )?;
        statements(out, plan, Phase::Prepare)?;
    }
    if !plan.backfills.is_empty() {
        section(
            out,
            &format!(
                "backfill in batches of {} rows, each batch its own transaction",
                h.batch_size
            ),
        )?;
        backfills(out, plan, h.batch_size)?;
    }
    if plan.steps_in(Phase::Transaction).next().is_some() || plan.seal.is_some() {
        section(
            out,
            &format!("one transaction, checked before COMMIT: {}", h.checks),
        )?;
        writeln!(out, "BEGIN;")?;
        let ms = h.lock_timeout.as_millis().to_string() + "ms";
        writeln!(out, "SET LOCAL lock_timeout = {};", quote_literal(&ms))?;
        statements(out, plan, Phase::Transaction)?;
        if let Some(store) = &plan.seal {
            super::sealed::render(out, store)?;
        }
        writeln!(out, "COMMIT;")?;
    }
    if plan.steps_in(Phase::Concurrent).next().is_some() {
        section(out, "indexes built concurrently, after COMMIT")?;
        statements(out, plan, Phase::Concurrent)?;
    }
    for w in &plan.warnings {
        writeln!(out, "--\n-- WARNING: {w}")?;
    }
    Ok(())
}

fn statements(out: &mut dyn Write, plan: &Plan, phase: Phase) -> io::Result<()> {
    for step in plan.steps_in(phase) {
        writeln!(out, "-- {}: {}", step.object, step.what)?;
        writeln!(out, "{}", step.sql)?;
    }
    Ok(())
}

fn backfills(out: &mut dyn Write, plan: &Plan, batch_size: u32) -> io::Result<()> {
    for job in &plan.backfills {
        writeln!(
            out,
            "-- {}: {} rows get {} = {}",
            job.table.plain(),
            job.rows,
            job.column,
            job.value
        )?;
        if job.key.is_empty() {
            writeln!(
                out,
                "-- (no primary key: batches by ctid, repeated until 0 rows)"
            )?;
            writeln!(out, "{};", job.batch_sql(batch_size, false))?;
        } else {
            writeln!(
                out,
                "-- (repeated until it returns no row; $1.. = the last key of the previous \
                 batch; the first batch has no WHERE)"
            )?;
            writeln!(out, "{};", job.batch_sql(batch_size, true))?;
        }
    }
    Ok(())
}

/// Prints before/after counts and checksums per table.
pub fn snapshots(out: &mut dyn Write, before: &Snapshot, after: &Snapshot) -> io::Result<()> {
    writeln!(
        out,
        "{:<40} {:>10} {:>10}  checksum (all columns but the tenant)",
        "table", "rows", "after"
    )?;
    for (table, b) in before {
        let (rows, sum) = match after.get(table) {
            Some(a) => (a.rows.to_string(), a.checksum.as_str()),
            None => ("-".into(), "-"),
        };
        let verdict = if after.get(table) == Some(b) {
            "unchanged"
        } else {
            "CHANGED"
        };
        writeln!(
            out,
            "{:<40} {:>10} {:>10}  {} {verdict}",
            table.plain(),
            b.rows,
            rows,
            if b.checksum == sum { sum } else { "differs" }
        )?;
    }
    Ok(())
}

/// Prints a list of failures under a heading.
pub fn problems(out: &mut dyn Write, heading: &str, items: &[String]) -> io::Result<()> {
    writeln!(out, "{heading}")?;
    for item in items {
        writeln!(out, "  - {item}")?;
    }
    Ok(())
}
