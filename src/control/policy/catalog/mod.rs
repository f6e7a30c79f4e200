//! Reads the live catalog: everything `plan`, `verify` and `rollback` need to know about
//! the tables a policy names (tenant column, RLS, policies, uniques, foreign keys,
//! indexes, grants) and about the roles involved. Read-only.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::GenericClient;

use super::db::DbError;
use super::file::{Command, Policy};
use super::sql::QualifiedName;

mod hardening;
mod table;

pub use hardening::{grants, memberships, GrantState, HardeningState, Revoked, SealState};
use table::table_state;
pub use table::{indexes, policies};

/// The connecting role and the app role.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roles {
    pub current_user: String,
    /// The connecting role is a superuser or has BYPASSRLS (it sees every row).
    pub current_bypasses_rls: bool,
    pub current_is_superuser: bool,
    /// `None` when the app role does not exist.
    pub app: Option<RoleState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleState {
    pub name: String,
    pub superuser: bool,
    pub bypassrls: bool,
}

/// What the catalog says about the tenant column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnState {
    /// As `format_type()` spells it (`text`, `integer`, `uuid`, ...).
    pub type_name: String,
    pub not_null: bool,
    pub default: Option<String>,
}

/// One row-level-security policy (`pg_policy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyState {
    pub name: String,
    /// `*` (ALL), `r` (SELECT), `a` (INSERT), `w` (UPDATE), `d` (DELETE).
    pub cmd: char,
    pub permissive: bool,
    /// Role names; `public` when it applies to everybody.
    pub roles: Vec<String>,
    pub using: Option<String>,
    pub check: Option<String>,
}

/// A unique or primary-key index, with the constraint it backs (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexState {
    pub oid: u32,
    pub name: String,
    /// Key columns in order; `None` for an expression.
    pub columns: Vec<Option<String>>,
    pub unique: bool,
    pub primary: bool,
    pub valid: bool,
    pub predicate: Option<String>,
    /// The constraint this index backs, when it is one (`p`, `u` or `x`).
    pub constraint: Option<(String, char)>,
}

impl IndexState {
    /// Key columns when all are plain columns.
    pub fn plain_columns(&self) -> Option<Vec<String>> {
        self.columns.iter().cloned().collect()
    }

    pub fn leads_with(&self, column: &str) -> bool {
        self.columns.first().and_then(|c| c.as_deref()) == Some(column)
    }
}

/// A foreign key that references a table of the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    pub name: String,
    /// The referencing table.
    pub table: QualifiedName,
    pub columns: Vec<String>,
    pub ref_columns: Vec<String>,
    /// The unique index the key points at.
    pub index_oid: u32,
    pub on_update: char,
    pub on_delete: char,
    /// Columns of `ON DELETE SET NULL (...)` / `SET DEFAULT (...)`; empty for all.
    pub delete_set_columns: Vec<String>,
    pub match_full: bool,
    pub deferrable: bool,
    pub deferred: bool,
}

/// A sequence a serial column of the table draws from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceState {
    pub name: QualifiedName,
    pub app_usage: bool,
}

/// Everything about one table of the policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableState {
    pub oid: u32,
    pub owner: String,
    /// The app role owns the table or is a member of its owner.
    pub app_owns: bool,
    pub rows: i64,
    /// Rows whose tenant column is NULL (all rows when the column is missing).
    pub null_tenants: i64,
    pub column: Option<ColumnState>,
    pub rls_enabled: bool,
    pub rls_forced: bool,
    pub policies: Vec<PolicyState>,
    pub indexes: Vec<IndexState>,
    /// Foreign keys from any table that reference this one.
    pub referenced_by: Vec<ForeignKey>,
    pub check_constraints: Vec<String>,
    /// Primary key columns and their types, in key order (empty: no primary key).
    pub primary_key: Vec<(String, String)>,
    /// Enabled user triggers that fire on UPDATE.
    pub update_triggers: Vec<String>,
    pub sequences: Vec<SequenceState>,
    /// Table privileges the app role holds.
    pub app_privileges: BTreeSet<Command>,
}

/// A view or materialized view that reads (directly or through other views) policy tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewState {
    pub name: QualifiedName,
    pub materialized: bool,
    pub security_invoker: bool,
    pub owner: String,
    pub app_select: bool,
    pub base_tables: Vec<u32>,
}

/// A snapshot of the catalog as far as a policy is concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbState {
    pub database: String,
    pub server_version: i32,
    pub roles: Roles,
    /// Tables of the policy that exist.
    pub tables: BTreeMap<QualifiedName, TableState>,
    /// Exempt tables that exist, with whether the app role may SELECT them.
    pub exempt: BTreeMap<QualifiedName, bool>,
    /// Schemas of the policy's tables, with whether the app role has USAGE.
    pub schemas: BTreeMap<String, bool>,
    /// Ordinary tables in those schemas that the policy does not mention.
    pub uncovered: Vec<QualifiedName>,
    pub views: Vec<ViewState>,
    /// Cross-session functions and views, and what `apply` revoked.
    pub hardening: HardeningState,
    /// The sealed tenant context.
    pub seal: SealState,
}

/// Reads the state of everything `policy` names.
pub async fn inspect<C: GenericClient + Sync>(
    client: &C,
    policy: &Policy,
) -> Result<DbState, DbError> {
    let row = client
        .query_one(
            "SELECT current_database()::text, current_setting('server_version_num')::int",
            &[],
        )
        .await?;
    let mut state = DbState {
        database: row.get(0),
        server_version: row.get(1),
        roles: roles(client, &policy.app_role).await?,
        ..DbState::default()
    };
    if state.server_version < 150_000 {
        // The queries below need PostgreSQL 15 catalogs; the plan refuses older servers.
        return Ok(state);
    }
    let app = state.roles.app.as_ref().map(|r| r.name.as_str());
    for spec in &policy.tables {
        if let Some(oid) = table_oid(client, &spec.name).await? {
            let table = table_state(client, oid, &spec.column, app).await?;
            state.tables.insert(spec.name.clone(), table);
        }
    }
    for spec in &policy.exempt {
        if let Some(oid) = table_oid(client, &spec.name).await? {
            let select = match app {
                Some(app) => has_privileges(client, oid, app).await?,
                None => BTreeSet::new(),
            };
            state
                .exempt
                .insert(spec.name.clone(), select.contains(&Command::Select));
        }
    }
    let named: BTreeSet<&QualifiedName> = policy
        .tables
        .iter()
        .map(|t| &t.name)
        .chain(policy.exempt.iter().map(|e| &e.name))
        .collect();
    for schema in named.iter().map(|n| n.schema.clone()) {
        let usage = match app {
            Some(app) => schema_usage(client, &schema, app).await?,
            None => false,
        };
        state.schemas.insert(schema, usage);
    }
    state.uncovered = tables_in_schemas(client, &state.schemas)
        .await?
        .into_iter()
        .filter(|t| !named.contains(t))
        .collect();
    let oids: Vec<u32> = state.tables.values().map(|t| t.oid).collect();
    state.views = dependent_views(client, &oids, app).await?;
    state.hardening = HardeningState {
        grants: grants(client, crate::control::policy::hardening::TARGETS, app).await?,
        recorded: hardening::recorded(client).await?,
        memberships: match app {
            Some(app) => memberships(client, app).await?,
            None => Vec::new(),
        },
    };
    state.seal = hardening::seal(client).await?;
    if let Some(source) = &policy.seal_secret {
        let secret = source.read()?;
        state.seal.wanted_fingerprint = Some(crate::control::policy::options::fingerprint(&secret));
        state.seal.secret_source = Some(source.describe());
    }
    Ok(state)
}

async fn roles<C: GenericClient + Sync>(client: &C, app: &str) -> Result<Roles, DbError> {
    let me = client
        .query_one(
            "SELECT current_user::text, rolsuper, rolsuper OR rolbypassrls \
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    let app = client
        .query_opt(
            "SELECT rolname::text, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1",
            &[&app],
        )
        .await?
        .map(|r| RoleState {
            name: r.get(0),
            superuser: r.get(1),
            bypassrls: r.get(2),
        });
    Ok(Roles {
        current_user: me.get(0),
        current_is_superuser: me.get(1),
        current_bypasses_rls: me.get(2),
        app,
    })
}

/// The OID of an ordinary or partitioned table, `None` if there is none by that name.
pub async fn table_oid<C: GenericClient + Sync>(
    client: &C,
    name: &QualifiedName,
) -> Result<Option<u32>, DbError> {
    Ok(client
        .query_opt(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&name.schema, &name.name],
        )
        .await?
        .map(|r| r.get(0)))
}

/// The table privileges among SELECT, INSERT, UPDATE, DELETE that `role` holds on `oid`.
pub async fn has_privileges<C: GenericClient + Sync>(
    client: &C,
    oid: u32,
    role: &str,
) -> Result<BTreeSet<Command>, DbError> {
    let row = client
        .query_one(
            "SELECT has_table_privilege($2::text, $1::oid, 'SELECT'), \
                    has_table_privilege($2::text, $1::oid, 'INSERT'), \
                    has_table_privilege($2::text, $1::oid, 'UPDATE'), \
                    has_table_privilege($2::text, $1::oid, 'DELETE')",
            &[&oid, &role],
        )
        .await?;
    Ok(Command::ALL
        .into_iter()
        .enumerate()
        .filter(|(i, _)| row.get::<_, bool>(*i))
        .map(|(_, c)| c)
        .collect())
}

async fn schema_usage<C: GenericClient + Sync>(
    client: &C,
    schema: &str,
    role: &str,
) -> Result<bool, DbError> {
    let row = client
        .query_one(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1::text) \
                    THEN has_schema_privilege($2::text, $1::text, 'USAGE') ELSE false END",
            &[&schema, &role],
        )
        .await?;
    Ok(row.get(0))
}

async fn tables_in_schemas<C: GenericClient + Sync>(
    client: &C,
    schemas: &BTreeMap<String, bool>,
) -> Result<Vec<QualifiedName>, DbError> {
    let names: Vec<&String> = schemas.keys().collect();
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = ANY($1) AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
             ORDER BY 1, 2",
            &[&names],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect())
}

/// Views and materialized views that read any of `tables`, directly or through other
/// views; `app_select` tells whether `app` may SELECT them.
pub async fn dependent_views<C: GenericClient + Sync>(
    client: &C,
    tables: &[u32],
    app: Option<&str>,
) -> Result<Vec<ViewState>, DbError> {
    let rows = client
        .query(
            "WITH RECURSIVE deps(view_oid, base_oid) AS ( \
                 SELECT r.ev_class, d.refobjid FROM pg_depend d \
                 JOIN pg_rewrite r ON r.oid = d.objid \
                 WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass \
                   AND d.refobjid = ANY($1) AND r.ev_class <> d.refobjid \
                 UNION \
                 SELECT r.ev_class, deps.base_oid FROM deps \
                 JOIN pg_depend d ON d.refobjid = deps.view_oid \
                      AND d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass \
                 JOIN pg_rewrite r ON r.oid = d.objid WHERE r.ev_class <> d.refobjid) \
             SELECT n.nspname::text, v.relname::text, v.relkind = 'm', \
                    coalesce(EXISTS (SELECT 1 FROM unnest(v.reloptions) AS o \
                        WHERE lower(o) IN ('security_invoker=true', 'security_invoker=on', \
                                           'security_invoker=1', 'security_invoker=yes')), false), \
                    pg_get_userbyid(v.relowner)::text, \
                    $2::text IS NOT NULL AND has_table_privilege($2::text, v.oid, 'SELECT'), \
                    array_agg(DISTINCT deps.base_oid) \
             FROM deps JOIN pg_class v ON v.oid = deps.view_oid \
             JOIN pg_namespace n ON n.oid = v.relnamespace \
             WHERE v.relkind IN ('v', 'm') \
             GROUP BY v.oid, n.nspname, v.relname, v.relkind, v.reloptions, v.relowner \
             ORDER BY 1, 2",
            &[&tables, &app],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ViewState {
            name: QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
            materialized: r.get(2),
            security_invoker: r.get(3),
            owner: r.get(4),
            app_select: r.get(5),
            base_tables: r.get(6),
        })
        .collect())
}
