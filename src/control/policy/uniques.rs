//! Tenant-scoped uniqueness: `UNIQUE (email)` becomes `UNIQUE (tenant_id, email)`, and
//! the foreign keys that reference a widened key are rewritten to include the tenant on
//! both sides (so a row can only reference a row of its own tenant). Rollback narrows
//! them back. Constraint and index names are kept, so both directions are found again.

use super::catalog::{ForeignKey, IndexState, TableState};
use super::file::TableSpec;
use super::plan::{Builder, Phase};
use super::sql::{ident_list, quote_ident, QualifiedName};

/// Statements grouped so that foreign keys are dropped before and re-added after the
/// keys they reference change.
#[derive(Default)]
struct Changes {
    drop_fks: Vec<(QualifiedName, String, String)>,
    keys: Vec<(QualifiedName, String, String)>,
    add_fks: Vec<(QualifiedName, String, String)>,
}

impl Changes {
    fn emit(self, b: &mut Builder<'_>) {
        for (table, what, sql) in self
            .drop_fks
            .into_iter()
            .chain(self.keys)
            .chain(self.add_fks)
        {
            b.step(Phase::Transaction, &table, &what, sql);
        }
    }
}

/// Plans widening every `tenant_unique` entry that is not tenant-scoped yet.
pub(super) fn widen(b: &mut Builder<'_>) {
    let mut changes = Changes::default();
    for (spec, table) in b.tables() {
        for cols in &spec.tenant_unique {
            let mut wide = vec![spec.column.clone()];
            wide.extend(cols.iter().cloned());
            if find(table, &wide).is_some() {
                continue;
            }
            let Some(index) = find(table, cols) else {
                b.problem(format!(
                    "{}: no unique constraint or unique index on ({}) to make tenant-scoped",
                    spec.name.plain(),
                    cols.join(", ")
                ));
                continue;
            };
            widen_one(b, &mut changes, spec, table, index, &wide);
        }
    }
    changes.emit(b);
}

fn widen_one(
    b: &mut Builder<'_>,
    changes: &mut Changes,
    spec: &TableSpec,
    table: &TableState,
    index: &IndexState,
    wide: &[String],
) {
    for fk in table
        .referenced_by
        .iter()
        .filter(|fk| fk.index_oid == index.oid)
    {
        let Some(from) = b.policy.table(&fk.table) else {
            b.problem(format!(
                "foreign key {} on {} references {} ({}), which becomes tenant-scoped, but {} \
                 is not a [[table]] of the policy: add it, or leave this unique key global",
                fk.name,
                fk.table.plain(),
                spec.name.plain(),
                fk.ref_columns.join(", "),
                fk.table.plain()
            ));
            continue;
        };
        if matches!(fk.on_update, 'n' | 'd') {
            b.problem(format!(
                "foreign key {} on {} uses ON UPDATE SET NULL/SET DEFAULT, which cannot be \
                 rewritten to include the tenant: change it first",
                fk.name,
                fk.table.plain()
            ));
            continue;
        }
        let mut cols = vec![from.column.clone()];
        cols.extend(fk.columns.iter().cloned());
        let mut set_cols = fk.delete_set_columns.clone();
        if set_cols.is_empty() && matches!(fk.on_delete, 'n' | 'd') {
            // Setting the tenant column to NULL would break NOT NULL: name the others.
            set_cols = fk.columns.clone();
        }
        push_fk(
            changes,
            fk,
            &cols,
            &spec.name,
            wide,
            &set_cols,
            "tenant-scoped",
        );
    }
    let sql = replace_key(&spec.name, index, wide);
    let what = format!("unique key {} on ({})", index.name, wide.join(", "));
    changes.keys.push((spec.name.clone(), what, sql));
}

/// Plans narrowing every widened `tenant_unique` entry back (rollback).
pub(super) fn narrow(b: &mut Builder<'_>) {
    let mut changes = Changes::default();
    for (spec, table) in b.tables() {
        for cols in &spec.tenant_unique {
            let mut wide = vec![spec.column.clone()];
            wide.extend(cols.iter().cloned());
            let Some(index) = find(table, &wide) else {
                continue;
            };
            for fk in table
                .referenced_by
                .iter()
                .filter(|fk| fk.index_oid == index.oid)
            {
                let from_column = b.policy.table(&fk.table).map(|t| t.column.as_str());
                let (Some(from_column), true) = (from_column, fk.columns.len() > 1) else {
                    continue;
                };
                if fk.columns[0] != from_column {
                    continue;
                }
                let set_cols = if fk.delete_set_columns == fk.columns[1..] {
                    Vec::new()
                } else {
                    fk.delete_set_columns.clone()
                };
                push_fk(
                    &mut changes,
                    fk,
                    &fk.columns[1..],
                    &spec.name,
                    cols,
                    &set_cols,
                    "global",
                );
            }
            let sql = replace_key(&spec.name, index, cols);
            let what = format!("unique key {} back on ({})", index.name, cols.join(", "));
            changes.keys.push((spec.name.clone(), what, sql));
        }
    }
    changes.emit(b);
}

/// A unique (or primary key) index whose key is exactly `columns`.
fn find<'t>(table: &'t TableState, columns: &[String]) -> Option<&'t IndexState> {
    table
        .indexes
        .iter()
        .find(|i| i.unique && i.valid && i.plain_columns().is_some_and(|c| c == columns))
}

/// Drops a unique constraint/index and creates it again, same name, on `columns`.
fn replace_key(table: &QualifiedName, index: &IndexState, columns: &[String]) -> String {
    match &index.constraint {
        Some((name, kind)) => {
            let keyword = if *kind == 'p' {
                "PRIMARY KEY"
            } else {
                "UNIQUE"
            };
            let name = quote_ident(name);
            format!(
                "ALTER TABLE {table} DROP CONSTRAINT {name}, ADD CONSTRAINT {name} {keyword} ({});",
                ident_list(columns)
            )
        }
        None => {
            let qualified = QualifiedName::new(table.schema.clone(), index.name.clone());
            let predicate = index
                .predicate
                .as_ref()
                .map(|p| format!(" WHERE {p}"))
                .unwrap_or_default();
            format!(
                "DROP INDEX {qualified}; CREATE UNIQUE INDEX {} ON {table} ({}){predicate};",
                quote_ident(&index.name),
                ident_list(columns)
            )
        }
    }
}

fn push_fk(
    changes: &mut Changes,
    fk: &ForeignKey,
    cols: &[String],
    ref_table: &QualifiedName,
    ref_cols: &[String],
    set_cols: &[String],
    how: &str,
) {
    let name = quote_ident(&fk.name);
    changes.drop_fks.push((
        fk.table.clone(),
        format!("drop foreign key {} (re-added {how})", fk.name),
        format!("ALTER TABLE {} DROP CONSTRAINT {name};", fk.table),
    ));
    let mut sql = format!(
        "ALTER TABLE {} ADD CONSTRAINT {name} FOREIGN KEY ({}) REFERENCES {ref_table} ({})",
        fk.table,
        ident_list(cols),
        ident_list(ref_cols)
    );
    if fk.match_full {
        sql.push_str(" MATCH FULL");
    }
    sql.push_str(&format!(" ON UPDATE {}", action(fk.on_update)));
    sql.push_str(&format!(" ON DELETE {}", action(fk.on_delete)));
    if matches!(fk.on_delete, 'n' | 'd') && !set_cols.is_empty() {
        sql.push_str(&format!(" ({})", ident_list(set_cols)));
    }
    if fk.deferrable {
        sql.push_str(" DEFERRABLE");
        if fk.deferred {
            sql.push_str(" INITIALLY DEFERRED");
        }
    }
    sql.push(';');
    changes.add_fks.push((
        fk.table.clone(),
        format!("foreign key {} ({how})", fk.name),
        sql,
    ));
}

fn action(code: char) -> &'static str {
    match code {
        'r' => "RESTRICT",
        'c' => "CASCADE",
        'n' => "SET NULL",
        'd' => "SET DEFAULT",
        _ => "NO ACTION",
    }
}
