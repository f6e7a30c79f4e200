//! Data and keys of tenant tables: NULL tenant values (and a tenant column that allows
//! them), large tables whose indexes do not lead with the tenant column, and unique keys
//! that span tenants.

use tokio_postgres::Client;

use super::{object, Context, Finding, Severity, TenantTable};
use crate::control::policy::catalog::{indexes, IndexState};
use crate::control::policy::sql::{ident_list, quote_ident};
use crate::control::policy::DbError;

pub async fn check(client: &Client, ctx: &Context) -> Result<Vec<Finding>, DbError> {
    let mut out = Vec::new();
    if !ctx.tables.is_empty() && !ctx.current_bypasses_rls {
        out.push(Finding::new(
            Severity::Info,
            "null-tenant-unchecked",
            format!("role {}", ctx.current_user),
            "doctor connects as a role that row-level security applies to, so it cannot \
             count NULL tenant values (it would see only its own tenant's rows)",
            "-- run doctor with --database and a superuser or BYPASSRLS role",
        ));
    }
    for t in &ctx.tables {
        if ctx.current_bypasses_rls {
            out.extend(null_tenants(client, t).await?);
        }
        if !t.column_not_null {
            out.push(Finding::new(
                Severity::Warning,
                "tenant-column-nullable",
                format!("column {}.{}", t.name.plain(), t.column),
                "the tenant column allows NULL: a row without a tenant matches no policy and is \
                 invisible to everyone, or, with a careless policy, visible to everyone",
                format!(
                    "ALTER TABLE {} ALTER COLUMN {} SET NOT NULL;",
                    t.name,
                    quote_ident(&t.column)
                ),
            ));
        }
        let idx = indexes(client, t.oid).await?;
        out.extend(unique_keys(t, &idx));
        if t.estimated_rows >= ctx.settings.large_table_rows as f64 {
            out.extend(leading_indexes(t, &idx));
        }
    }
    Ok(out)
}

async fn null_tenants(client: &Client, t: &TenantTable) -> Result<Option<Finding>, DbError> {
    let col = quote_ident(&t.column);
    let sql = format!("SELECT count(*) FROM {} WHERE {col} IS NULL", t.name);
    let nulls: i64 = client.query_one(&sql, &[]).await?.get(0);
    Ok((nulls > 0).then(|| {
        Finding::new(
            Severity::Error,
            "null-tenant",
            format!("column {}.{}", t.name.plain(), t.column),
            format!("{nulls} rows have no tenant: no tenant owns them, and they are lost to the app (or leak through a policy that treats NULL as a match)"),
            format!(
                "-- give them their tenant, then forbid NULL:\n\
                 UPDATE {table} SET {col} = '<tenant>' WHERE {col} IS NULL;\n\
                 ALTER TABLE {table} ALTER COLUMN {col} SET NOT NULL;",
                table = t.name
            ),
        )
    }))
}

fn unique_keys(t: &TenantTable, idx: &[IndexState]) -> Vec<Finding> {
    idx.iter()
        .filter(|i| i.unique && !i.primary && i.valid)
        .filter(|i| {
            !i.columns
                .iter()
                .any(|c| c.as_deref() == Some(t.column.as_str()))
        })
        .map(|i| {
            let cols: Vec<String> = i
                .columns
                .iter()
                .map(|c| c.clone().unwrap_or_else(|| "<expression>".into()))
                .collect();
            let mut wide = vec![t.column.clone()];
            wide.extend(cols.iter().cloned());
            let fix = match &i.constraint {
                Some((name, _)) => format!(
                    "ALTER TABLE {} DROP CONSTRAINT {name}, ADD CONSTRAINT {name} UNIQUE ({});\n\
                     -- (foreign keys referencing it must include the tenant too: `rlsgate policy` \
                     with tenant_unique does both)",
                    t.name,
                    ident_list(&wide),
                    name = quote_ident(name)
                ),
                None => format!(
                    "-- recreate index {} with {} as its first column",
                    i.name, t.column
                ),
            };
            Finding::new(
                Severity::Warning,
                "unique-not-tenant-scoped",
                format!("index {}.{}", t.name.schema, i.name),
                format!(
                    "unique across all tenants on ({}): a tenant's insert fails when another \
                     tenant already has the value, which tells it that value exists",
                    cols.join(", ")
                ),
                fix,
            )
        })
        .collect()
}

fn leading_indexes(t: &TenantTable, idx: &[IndexState]) -> Vec<Finding> {
    let mut out = Vec::new();
    if !idx.iter().any(|i| i.valid && i.leads_with(&t.column)) {
        out.push(Finding::new(
            Severity::Warning,
            "index-not-tenant-leading",
            object("table", &t.name),
            format!(
                "a large table (~{} rows) with no index that starts with {}: every query is \
                 filtered by tenant, so they scan other tenants' rows",
                t.estimated_rows as i64, t.column
            ),
            format!(
                "CREATE INDEX CONCURRENTLY ON {} ({});",
                t.name,
                quote_ident(&t.column)
            ),
        ));
    }
    for i in idx
        .iter()
        .filter(|i| !i.unique && i.valid && !i.leads_with(&t.column))
    {
        let cols: Vec<String> = i.columns.iter().flatten().cloned().collect();
        let mut wide = vec![t.column.clone()];
        wide.extend(cols.iter().cloned());
        out.push(Finding::new(
            Severity::Warning,
            "index-not-tenant-leading",
            format!("index {}.{}", t.name.schema, i.name),
            format!(
                "an index of a large table (~{} rows) that does not start with {}: \
                 tenant-filtered queries read other tenants' entries too",
                t.estimated_rows as i64, t.column
            ),
            format!(
                "CREATE INDEX CONCURRENTLY ON {} ({});\nDROP INDEX CONCURRENTLY {}.{};",
                t.name,
                ident_list(&wide),
                quote_ident(&t.name.schema),
                quote_ident(&i.name)
            ),
        ));
    }
    out
}
