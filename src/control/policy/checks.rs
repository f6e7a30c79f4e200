//! Data checks around a change: per table, the row count and a checksum over every
//! column except the tenant column, taken before and after; they must match.
//!
//! The checksum is the sum of a 64-bit hash of each row's text form: independent of row
//! order, sensitive to any changed value, and cheap in memory on large tables.

use std::collections::BTreeMap;
use std::fmt;

use tokio_postgres::GenericClient;

use super::catalog::table_oid;
use super::db::DbError;
use super::file::Policy;
use super::sql::{quote_ident, QualifiedName};

/// Row count and checksum of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSnapshot {
    pub rows: i64,
    pub checksum: String,
}

impl fmt::Display for TableSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rows, checksum {}", self.rows, self.checksum)
    }
}

/// Snapshots of every existing tenant table of a policy.
pub type Snapshot = BTreeMap<QualifiedName, TableSnapshot>;

/// Takes the snapshot of every tenant table of `policy` that exists.
pub async fn snapshot<C: GenericClient + Sync>(
    client: &C,
    policy: &Policy,
) -> Result<Snapshot, DbError> {
    let mut out = Snapshot::new();
    for spec in &policy.tables {
        let Some(oid) = table_oid(client, &spec.name).await? else {
            continue;
        };
        let rows = client
            .query(
                "SELECT attname::text FROM pg_attribute \
                 WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attname <> $2 \
                 ORDER BY attnum",
                &[&oid, &spec.column],
            )
            .await?;
        let columns: Vec<String> = rows
            .iter()
            .map(|r| format!("t.{}", quote_ident(r.get::<_, &str>(0))))
            .collect();
        let sql = format!(
            "SELECT count(*), coalesce(sum(hashtextextended(ROW({})::text, 0)::numeric), 0)::text \
             FROM {} AS t",
            columns.join(", "),
            spec.name
        );
        let row = client.query_one(&sql, &[]).await?;
        out.insert(
            spec.name.clone(),
            TableSnapshot {
                rows: row.get(0),
                checksum: row.get(1),
            },
        );
    }
    Ok(out)
}

/// One line per table whose count or checksum differs (empty: everything matches).
pub fn compare(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for (table, b) in before {
        match after.get(table) {
            None => out.push(format!("{}: before {b}, now missing", table.plain())),
            Some(a) if a != b => out.push(format!("{}: before {b}, after {a}", table.plain())),
            Some(_) => {}
        }
    }
    for table in after.keys().filter(|t| !before.contains_key(*t)) {
        out.push(format!("{}: appeared during the change", table.plain()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(rows: i64, sum: &str) -> TableSnapshot {
        TableSnapshot {
            rows,
            checksum: sum.into(),
        }
    }

    #[test]
    fn compare_lists_each_differing_table() {
        let a = QualifiedName::new("public", "a");
        let b = QualifiedName::new("public", "b");
        let before = Snapshot::from([(a.clone(), snap(3, "10")), (b.clone(), snap(1, "5"))]);
        assert!(compare(&before, &before.clone()).is_empty());
        let after = Snapshot::from([(a, snap(3, "11")), (b, snap(1, "5"))]);
        assert_eq!(
            compare(&before, &after),
            ["public.a: before 3 rows, checksum 10, after 3 rows, checksum 11"]
        );
    }
}
