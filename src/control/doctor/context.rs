//! What every check needs: the roles involved and the tenant tables (tables with a
//! tenant column, or named by a policy file), read once from the catalog.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use crate::control::policy::catalog::{self, PolicyState, RoleState};
use crate::control::policy::sql::QualifiedName;
use crate::control::policy::DbError;

/// What the audit is about (from flags, the proxy config and/or a policy file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The role rlsgate connects upstream as.
    pub app_role: String,
    /// The tenant setting (`app.current_tenant`).
    pub setting: String,
    /// Tenant column name: every table with a column of this name is a tenant table.
    pub column: String,
    /// Tables named by a policy file, with their tenant column.
    pub policy_tables: Vec<(QualifiedName, String)>,
    /// Tables deliberately shared by all tenants (never tenant tables).
    pub exempt: Vec<QualifiedName>,
    /// Estimated rows from which a table counts as large (index checks).
    pub large_table_rows: i64,
    /// The proxy seals the tenant context: policies should read `rlsgate.tenant()`.
    pub sealed: bool,
    /// Which cross-session function groups are deliberately left usable.
    pub hardening: crate::control::policy::options::Hardening,
}

/// One table that holds rows of many tenants.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantTable {
    pub oid: u32,
    pub name: QualifiedName,
    pub column: String,
    pub column_type: String,
    pub column_not_null: bool,
    pub owner: String,
    /// The owner is a superuser or has BYPASSRLS.
    pub owner_bypasses_rls: bool,
    pub rls_enabled: bool,
    pub rls_forced: bool,
    /// The app role owns the table or is a member of its owner.
    pub app_owns: bool,
    /// `pg_class.reltuples` (0 when never analyzed).
    pub estimated_rows: f64,
    pub policies: Vec<PolicyState>,
}

/// The catalog facts shared by all checks.
#[derive(Debug, Clone)]
pub struct Context {
    pub settings: Settings,
    pub database: String,
    pub current_user: String,
    /// The connecting role sees every row (superuser or BYPASSRLS).
    pub current_bypasses_rls: bool,
    /// `None` when the app role does not exist.
    pub app: Option<RoleState>,
    pub tables: Vec<TenantTable>,
}

impl Context {
    /// The app role's name when it exists (for privilege checks).
    pub fn app_name(&self) -> Option<&str> {
        self.app.as_ref().map(|a| a.name.as_str())
    }

    pub fn table_oids(&self) -> Vec<u32> {
        self.tables.iter().map(|t| t.oid).collect()
    }

    pub fn table(&self, oid: u32) -> Option<&TenantTable> {
        self.tables.iter().find(|t| t.oid == oid)
    }
}

/// Reads the roles and tenant tables.
pub async fn load(client: &Client, settings: Settings) -> Result<Context, DbError> {
    let me = client
        .query_one(
            "SELECT current_database()::text, current_user::text, rolsuper OR rolbypassrls \
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    let app = client
        .query_opt(
            "SELECT rolname::text, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1",
            &[&settings.app_role],
        )
        .await?
        .map(|r| RoleState {
            name: r.get(0),
            superuser: r.get(1),
            bypassrls: r.get(2),
        });
    let app_name = app.as_ref().map(|a| a.name.clone());
    let mut tables = Vec::new();
    let mut columns: BTreeSet<&str> = BTreeSet::from([settings.column.as_str()]);
    columns.extend(settings.policy_tables.iter().map(|(_, c)| c.as_str()));
    for column in columns {
        for mut table in tables_with_column(client, column, app_name.as_deref()).await? {
            if is_tenant_table(&settings, &table.name, column) {
                table.policies = catalog::policies(client, table.oid).await?;
                tables.push(table);
            }
        }
    }
    tables.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Context {
        database: me.get(0),
        current_user: me.get(1),
        current_bypasses_rls: me.get(2),
        app,
        tables,
        settings,
    })
}

fn is_tenant_table(settings: &Settings, name: &QualifiedName, column: &str) -> bool {
    if settings.exempt.contains(name) {
        return false;
    }
    match settings.policy_tables.iter().find(|(t, _)| t == name) {
        Some((_, policy_column)) => policy_column == column,
        None => column == settings.column,
    }
}

async fn tables_with_column(
    client: &Client,
    column: &str,
    app: Option<&str>,
) -> Result<Vec<TenantTable>, DbError> {
    let rows = client
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text, format_type(a.atttypid, a.atttypmod), \
                    a.attnotnull, pg_get_userbyid(c.relowner)::text, \
                    o.rolsuper OR o.rolbypassrls, c.relrowsecurity, c.relforcerowsecurity, \
                    CASE WHEN $2::text IS NULL THEN false \
                         ELSE pg_has_role($2::text::name, c.relowner, 'MEMBER') END, \
                    greatest(c.reltuples, 0)::float8 \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_roles o ON o.oid = c.relowner \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = $1 \
                  AND a.attnum > 0 AND NOT a.attisdropped \
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'",
            &[&column, &app],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| TenantTable {
            oid: r.get(0),
            name: QualifiedName::new(r.get::<_, String>(1), r.get::<_, String>(2)),
            column: column.to_owned(),
            column_type: r.get(3),
            column_not_null: r.get(4),
            owner: r.get(5),
            owner_bypasses_rls: r.get(6),
            rls_enabled: r.get(7),
            rls_forced: r.get(8),
            app_owns: r.get(9),
            estimated_rows: r.get(10),
            policies: Vec::new(),
        })
        .collect())
}
