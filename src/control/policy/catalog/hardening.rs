//! Catalog queries for the database-side hardening: who may use the cross-session
//! functions and views (PUBLIC, the app role explicitly, the app role in effect), what
//! `apply` recorded as revoked, the app role's memberships in predefined roles that
//! reach other sessions, and the sealed context (`rlsgate.tenant()`, pgcrypto, the
//! recorded seal-secret fingerprint).

use tokio_postgres::GenericClient;

use crate::control::policy::db::DbError;
use crate::control::policy::hardening::{
    Kind, Target, MEMBERSHIPS, RECORD_TABLE, SEAL_CHECK_TABLE,
};
use crate::control::policy::sql::quote_ident;

/// Who holds the privilege on one hardening target that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantState {
    pub target: &'static Target,
    /// As written in GRANT/REVOKE after `ON FUNCTION` / `ON` (schema-qualified).
    pub object: String,
    /// PUBLIC holds it (explicitly, or by the default ACL of a function).
    pub public: bool,
    /// The app role holds it by a grant of its own.
    pub app_explicit: bool,
    /// The app role may use it, by any route (PUBLIC, a grant, a role it is in).
    pub app_effective: bool,
}

/// One privilege `apply` revoked (a row of `rlsgate.revoked`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// `FUNCTION pg_catalog.lo_get(oid)` or `TABLE pg_catalog.pg_locks`.
    pub object: String,
    pub privilege: String,
    /// `PUBLIC` or the quoted role name.
    pub grantee: String,
    /// The object still exists (an extension may have been dropped since).
    pub exists: bool,
}

/// The hardening as the catalog has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HardeningState {
    pub grants: Vec<GrantState>,
    /// Rows of `rlsgate.revoked`; `None` when the table does not exist.
    pub recorded: Option<Vec<Revoked>>,
    /// Predefined roles from [`MEMBERSHIPS`] the app role is a member of.
    pub memberships: Vec<String>,
}

/// The sealed context as the catalog has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealState {
    /// `rlsgate.tenant()` exists.
    pub tenant_fn: bool,
    /// The pgcrypto extension can be created (or is).
    pub pgcrypto_available: bool,
    /// The fingerprint `apply` recorded when it last stored a seal secret.
    pub stored_fingerprint: Option<String>,
    /// The fingerprint of the configured secret (policy file or CLI), if any.
    pub wanted_fingerprint: Option<String>,
    /// Where the configured secret comes from (`env X`, `file Y`).
    pub secret_source: Option<String>,
}

/// Reads who holds each target's privilege; `app` is the app role if it exists.
pub async fn grants<C: GenericClient + Sync>(
    client: &C,
    targets: &'static [Target],
    app: Option<&str>,
) -> Result<Vec<GrantState>, DbError> {
    let statements_schema: Option<String> = client
        .query_opt(
            "SELECT n.nspname::text FROM pg_extension e \
             JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_stat_statements'",
            &[],
        )
        .await?
        .map(|r| r.get(0));
    let mut kinds = Vec::new();
    let mut names = Vec::new();
    let mut wanted = Vec::new();
    for t in targets {
        let schema = match t.extension {
            None => "pg_catalog".to_owned(),
            Some(_) => match &statements_schema {
                Some(s) => quote_ident(s),
                None => continue,
            },
        };
        kinds.push(t.kind.code().to_owned());
        names.push(format!("{schema}.{}", t.name));
        wanted.push(t);
    }
    let rows = client
        .query(
            "WITH app AS (SELECT oid FROM pg_roles WHERE rolname = $3::text), \
             t AS (SELECT u.i, u.k, CASE u.k WHEN 'f' THEN to_regprocedure(u.n)::oid \
                                        ELSE to_regclass(u.n)::oid END AS o \
                   FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(k, n, i)), \
             acl AS (SELECT t.i, a.grantee FROM t JOIN pg_proc p ON t.k = 'f' AND p.oid = t.o, \
                         aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a \
                     WHERE a.privilege_type = 'EXECUTE' \
                     UNION ALL \
                     SELECT t.i, a.grantee FROM t JOIN pg_class c ON t.k = 'v' AND c.oid = t.o, \
                         aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a \
                     WHERE a.privilege_type = 'SELECT') \
             SELECT t.i, \
                    EXISTS (SELECT 1 FROM acl WHERE acl.i = t.i AND acl.grantee = 0), \
                    EXISTS (SELECT 1 FROM acl, app WHERE acl.i = t.i AND acl.grantee = app.oid), \
                    coalesce((SELECT CASE t.k WHEN 'f' THEN has_function_privilege(app.oid, t.o, 'EXECUTE') \
                                      ELSE has_table_privilege(app.oid, t.o, 'SELECT') END FROM app), false) \
             FROM t WHERE t.o IS NOT NULL ORDER BY t.i",
            &[&kinds, &names, &app],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let i = usize::try_from(r.get::<_, i64>(0) - 1).unwrap_or(0);
            GrantState {
                target: wanted[i],
                object: names[i].clone(),
                public: r.get(1),
                app_explicit: r.get(2),
                app_effective: r.get(3),
            }
        })
        .collect())
}

/// The rows of `rlsgate.revoked`, `None` when the table does not exist.
pub async fn recorded<C: GenericClient + Sync>(
    client: &C,
) -> Result<Option<Vec<Revoked>>, DbError> {
    let exists: bool = client
        .query_one(
            &format!("SELECT to_regclass('{RECORD_TABLE}') IS NOT NULL"),
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let rows = client
        .query(
            &format!(
                "SELECT object, privilege, grantee, \
                        CASE WHEN object LIKE 'FUNCTION %' \
                             THEN to_regprocedure(substr(object, 10)) IS NOT NULL \
                             ELSE to_regclass(substr(object, 7)) IS NOT NULL END \
                 FROM {RECORD_TABLE} ORDER BY object, grantee"
            ),
            &[],
        )
        .await?;
    Ok(Some(
        rows.iter()
            .map(|r| Revoked {
                object: r.get(0),
                privilege: r.get(1),
                grantee: r.get(2),
                exists: r.get(3),
            })
            .collect(),
    ))
}

/// Predefined roles from [`MEMBERSHIPS`] that `app` is a member of (directly or not).
pub async fn memberships<C: GenericClient + Sync>(
    client: &C,
    app: &str,
) -> Result<Vec<String>, DbError> {
    let names: Vec<&str> = MEMBERSHIPS.to_vec();
    let rows = client
        .query(
            "SELECT r.rolname::text FROM pg_roles r \
             WHERE r.rolname = ANY($2) AND pg_has_role($1::text::name, r.oid, 'MEMBER') \
             ORDER BY 1",
            &[&app, &names],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// `rlsgate.tenant()`, pgcrypto and the recorded seal fingerprint.
pub async fn seal<C: GenericClient + Sync>(client: &C) -> Result<SealState, DbError> {
    let row = client
        .query_one(
            &format!(
                "SELECT to_regprocedure('rlsgate.tenant()') IS NOT NULL, \
                        EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pgcrypto'), \
                        to_regclass('{SEAL_CHECK_TABLE}') IS NOT NULL"
            ),
            &[],
        )
        .await?;
    let stored_fingerprint = if row.get(2) {
        client
            .query_opt(&format!("SELECT fingerprint FROM {SEAL_CHECK_TABLE}"), &[])
            .await?
            .map(|r| r.get(0))
    } else {
        None
    };
    Ok(SealState {
        tenant_fn: row.get(0),
        pgcrypto_available: row.get(1),
        stored_fingerprint,
        ..SealState::default()
    })
}

impl Kind {
    /// The code the grant query uses.
    fn code(self) -> &'static str {
        match self {
            Kind::Function => "f",
            Kind::View => "v",
        }
    }
}
