//! `rlsgate policy plan|apply|rollback|verify`: takes a single-tenant database to
//! row-level security as a policy file describes, safely (dry run, batched backfill,
//! checked transaction, verification, rollback).
//!
//! Exit codes: 0 done (or nothing to do, or verified), 1 the database does not match or
//! cannot be changed as described (the reasons are printed), 2 could not run (bad
//! arguments or policy file, connection failure, no confirmation).

pub mod apply;
pub mod backfill;
pub mod catalog;
pub mod checks;
pub mod command;
pub mod db;
pub mod file;
pub mod hardening;
pub mod options;
pub mod plan;
mod render;
pub mod rollback;
pub mod sealed;
pub mod sql;
mod steps;
mod uniques;
pub mod verify;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

pub use apply::ApplyOptions;
pub use db::{pg, Database, DbError};
pub use file::{Policy, PolicyFileError};
pub use plan::Refused;
pub use rollback::RollbackOptions;

/// `rlsgate policy ...`
#[derive(clap::Args, Debug)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum PolicyCommand {
    /// Print the SQL that `apply` would run, with row counts. Changes nothing.
    Plan(Target),
    /// Run the plan: add and backfill tenant columns, then one checked transaction.
    Apply(ApplyArgs),
    /// Undo `apply`: drop the policies, disable RLS, restore unique keys.
    Rollback(RollbackArgs),
    /// Check that the database matches the policy (for CI). Changes nothing.
    Verify(Target),
}

/// The policy file and the database it applies to.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// Policy file (TOML; see policies/example-policy.toml).
    #[arg(long, env = "RLSGATE_POLICY")]
    pub policy: PathBuf,
    /// Database URL of a superuser (or the owner with BYPASSRLS), e.g.
    /// postgres://postgres@db:5432/app?sslmode=require
    #[arg(long, env = "RLSGATE_DATABASE_URL")]
    pub database: String,
    /// Environment variable holding the seal secret `apply` stores (overrides the policy
    /// file's `[tenant] seal_secret_env`/`seal_secret_file`). Never pass the secret itself.
    #[arg(long, conflicts_with = "seal_secret_file")]
    pub seal_secret_env: Option<String>,
    /// File holding the seal secret (overrides the policy file's).
    #[arg(long)]
    pub seal_secret_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub target: Target,
    /// Do not ask for confirmation (for scripts). Without it, apply asks on the terminal
    /// and refuses when stdin is not one.
    #[arg(long)]
    pub yes: bool,
    /// Rows per backfill batch (overrides `[apply] batch_size`).
    #[arg(long)]
    pub batch_size: Option<u32>,
    /// Backfill with user triggers disabled (session_replication_role = replica;
    /// superuser only).
    #[arg(long)]
    pub disable_triggers: bool,
    /// Pause between backfill batches, e.g. `50ms` (for tests and throttling).
    #[arg(long, hide = true, default_value = "0s", value_parser = humantime::parse_duration)]
    pub batch_delay: Duration,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub target: Target,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Drop the tenant column as well (its values are lost).
    #[arg(long)]
    pub drop_column: bool,
}

/// How a policy command ended (see the module doc for exit codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed,
}

/// Why a policy command could not finish.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    File(#[from] PolicyFileError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("the database cannot be changed as the policy says:\n{0}")]
    Refused(#[from] Refused),
    #[error("refusing to run: {0}")]
    NotConfirmed(String),
    #[error("{0}")]
    Usage(String),
    #[error("{object}: {what}: {error}\n  statement: {sql}\n  (the transaction was rolled back)")]
    Step {
        object: String,
        what: String,
        sql: String,
        error: String,
    },
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
}

impl PolicyError {
    /// 1 when the database is the reason, 2 when the command could not run.
    pub fn exit_code(&self) -> u8 {
        match self {
            PolicyError::Refused(_) | PolicyError::Step { .. } => 1,
            _ => 2,
        }
    }
}

/// Entry point for `rlsgate policy`: runs the command, prints errors, returns the exit
/// code.
pub fn run(args: PolicyArgs) -> ExitCode {
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(PolicyError::Io)
        .and_then(|rt| rt.block_on(execute(args, &mut std::io::stdout())));
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(1),
        Err(e) => {
            let _ = std::io::stdout().flush();
            eprintln!("rlsgate policy: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs one policy command, writing its report to `out`.
pub async fn execute(args: PolicyArgs, out: &mut dyn Write) -> Result<Outcome, PolicyError> {
    crate::wire::tls::install_default_provider();
    let target = match &args.command {
        PolicyCommand::Plan(t) | PolicyCommand::Verify(t) => t,
        PolicyCommand::Apply(a) => &a.target,
        PolicyCommand::Rollback(r) => &r.target,
    };
    let mut policy = Policy::load(&target.policy)?;
    if let Some(var) = &target.seal_secret_env {
        policy.seal_secret = Some(options::SealSecret::Env(var.clone()));
    } else if let Some(path) = &target.seal_secret_file {
        policy.seal_secret = Some(options::SealSecret::File(path.clone()));
    }
    let db = Database::from_url(&target.database)?;
    let label = target.policy.display().to_string();
    match &args.command {
        PolicyCommand::Plan(_) => plan_command(&db, &policy, &label, out).await,
        PolicyCommand::Verify(_) => {
            let client = db.client().await?;
            let v = verify::verify(pg(&client), &policy).await?;
            writeln!(out, "rlsgate policy verify: {} ({label})", db.label())?;
            Ok(verify::print(out, &policy, &v)?)
        }
        PolicyCommand::Apply(a) => {
            let opts = ApplyOptions {
                yes: a.yes,
                batch_size: a.batch_size,
                batch_delay: a.batch_delay,
                disable_triggers: a.disable_triggers,
            };
            apply::apply(&db, &policy, &label, &opts, out).await
        }
        PolicyCommand::Rollback(r) => {
            let opts = RollbackOptions {
                yes: r.yes,
                drop_column: r.drop_column,
            };
            rollback::rollback(&db, &policy, &label, opts, out).await
        }
    }
}

/// `policy plan`: prints the plan; changes nothing.
pub async fn plan_command(
    db: &Database,
    policy: &Policy,
    label: &str,
    out: &mut dyn Write,
) -> Result<Outcome, PolicyError> {
    let client = db.client().await?;
    let state = catalog::inspect(pg(&client), policy).await?;
    let plan = plan::build(policy, &state)?;
    let heading = render::Heading {
        title: "rlsgate policy plan (nothing is changed)",
        database: db.label(),
        policy: label,
        batch_size: policy.apply.batch_size,
        lock_timeout: policy.apply.lock_timeout,
        checks: render::APPLY_CHECKS,
    };
    render::plan(out, &heading, &plan)?;
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod hardening_tests;
#[cfg(test)]
mod plan_tests;
