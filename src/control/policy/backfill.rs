//! Batched backfill of the tenant column: each batch is its own short transaction, so a
//! large table is never locked for long, and a killed run resumes where it stopped
//! (only rows whose tenant is still NULL are touched).
//!
//! Tables with a primary key are walked in key order (keyset pagination, the last key of
//! a batch carried to the next as text parameters); tables without one take the next
//! batch of NULL rows by `ctid`.

use std::time::Duration;

use tokio_postgres::types::ToSql;

use super::catalog::TableState;
use super::db::{Database, DbError};
use super::file::TableSpec;
use super::sql::{ident_list, quote_ident, QualifiedName};

/// One table to backfill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backfill {
    pub table: QualifiedName,
    pub column: String,
    /// SQL literal with cast, e.g. `'acme'::text`.
    pub value: String,
    /// Rows without a tenant when the plan was made.
    pub rows: i64,
    /// Primary key columns and types (empty: batches by ctid).
    pub key: Vec<(String, String)>,
}

/// How batches run.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    pub batch_size: u32,
    /// Pause between batches (lets other work through; used by tests to interrupt).
    pub delay: Duration,
    /// `SET LOCAL session_replication_role = replica` in each batch (superuser only):
    /// user triggers do not fire.
    pub disable_triggers: bool,
}

impl Backfill {
    pub fn new(spec: &TableSpec, table: &TableState, value: String) -> Self {
        Backfill {
            table: spec.name.clone(),
            column: spec.column.clone(),
            value,
            rows: table.null_tenants,
            key: table.primary_key.clone(),
        }
    }

    /// The statement of one batch. With a primary key, `resume` adds the lower bound
    /// `($1, ...)` = the last key of the previous batch; it returns the number of rows
    /// updated and the batch's last key (no row: the table is done). Without a primary
    /// key it returns the number of rows updated (0: done).
    pub fn batch_sql(&self, limit: u32, resume: bool) -> String {
        let (table, col, value) = (&self.table, quote_ident(&self.column), &self.value);
        if self.key.is_empty() {
            return format!(
                "WITH done AS (UPDATE {table} SET {col} = {value} WHERE ctid = ANY (ARRAY(\
                 SELECT ctid FROM {table} WHERE {col} IS NULL LIMIT {limit})) RETURNING 1) \
                 SELECT count(*) FROM done"
            );
        }
        let names: Vec<&str> = self.key.iter().map(|(n, _)| n.as_str()).collect();
        let keys = ident_list(&names);
        let qualified = |prefix: &str| {
            names
                .iter()
                .map(|n| format!("{prefix}.{}", quote_ident(n)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let bound = if resume {
            let params: Vec<String> = self
                .key
                .iter()
                .enumerate()
                .map(|(i, (_, ty))| format!("${}::text::{ty}", i + 1))
                .collect();
            format!(" WHERE ({keys}) > ({})", params.join(", "))
        } else {
            String::new()
        };
        // Qualified on purpose: in `SELECT id::text ... ORDER BY id`, a bare `id` names the
        // output column (the cast keeps the name), so the batch's "last" key would be its
        // greatest as text ('99' > '100'); the next batch would then start below the end of
        // this one and revisit rows already filled. `batch.id` is always the typed column.
        let last: Vec<String> = names
            .iter()
            .map(|n| format!("batch.{}::text", quote_ident(n)))
            .collect();
        let desc: Vec<String> = names
            .iter()
            .map(|n| format!("batch.{} DESC", quote_ident(n)))
            .collect();
        format!(
            "WITH batch AS (SELECT {keys} FROM {table}{bound} ORDER BY {keys} LIMIT {limit}), \
             done AS (UPDATE {table} AS t SET {col} = {value} FROM batch \
             WHERE ({}) = ({}) AND t.{col} IS NULL RETURNING 1) \
             SELECT (SELECT count(*) FROM done), {} FROM batch ORDER BY {} LIMIT 1",
            qualified("t"),
            qualified("batch"),
            last.join(", "),
            desc.join(", ")
        )
    }
}

/// Runs the backfill of one table to the end; `progress` gets the running total of rows
/// updated after every batch. Returns that total.
pub async fn run(
    db: &Database,
    job: &Backfill,
    opts: &BackfillOptions,
    mut progress: impl FnMut(u64),
) -> Result<u64, DbError> {
    let mut client = db.client().await?;
    let mut after: Option<Vec<String>> = None;
    let mut total = 0u64;
    loop {
        let sql = job.batch_sql(opts.batch_size, after.is_some());
        let params: Vec<&(dyn ToSql + Sync)> = after
            .iter()
            .flatten()
            .map(|v| v as &(dyn ToSql + Sync))
            .collect();
        let txn = client.transaction().await?;
        if opts.disable_triggers {
            txn.batch_execute("SET LOCAL session_replication_role = replica")
                .await?;
        }
        let row = txn.query_opt(&sql, &params).await?;
        txn.commit().await?;
        let (updated, next) = match row {
            None => (0, None),
            Some(row) if job.key.is_empty() => (row.get::<_, i64>(0), None),
            Some(row) => {
                let key: Vec<String> = (1..=job.key.len()).map(|i| row.get(i)).collect();
                (row.get::<_, i64>(0), Some(key))
            }
        };
        total += u64::try_from(updated).unwrap_or(0);
        progress(total);
        let finished = if job.key.is_empty() {
            updated == 0
        } else {
            next.is_none()
        };
        if finished {
            return Ok(total);
        }
        after = next;
        if !opts.delay.is_zero() {
            tokio::time::sleep(opts.delay).await;
        }
    }
}
