//! The app role: it must exist, must not be a superuser or have BYPASSRLS (row-level
//! security never applies to those), must not hold TRUNCATE on tenant tables (TRUNCATE
//! ignores RLS) and should not create objects in the tenant tables' schemas.

use tokio_postgres::Client;

use super::{object, Context, Finding, Severity};
use crate::control::policy::sql::quote_ident;
use crate::control::policy::DbError;

pub async fn check(client: &Client, ctx: &Context) -> Result<Vec<Finding>, DbError> {
    let name = &ctx.settings.app_role;
    let role = quote_ident(name);
    let mut out = Vec::new();
    let Some(app) = &ctx.app else {
        out.push(Finding::new(
            Severity::Error,
            "app-role-missing",
            format!("role {name}"),
            "the app role does not exist, so its rights could not be checked (pass \
             --app-role with the role rlsgate connects as)",
            format!("CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD '...';"),
        ));
        return Ok(out);
    };
    if app.superuser {
        out.push(Finding::new(
            Severity::Error,
            "app-role-superuser",
            format!("role {name}"),
            "the app role is a superuser: row-level security never applies to it, every \
             tenant sees every row (and rlsgate refuses to use it)",
            format!("ALTER ROLE {role} NOSUPERUSER;"),
        ));
    }
    if app.bypassrls {
        out.push(Finding::new(
            Severity::Error,
            "app-role-bypassrls",
            format!("role {name}"),
            "the app role has BYPASSRLS: row-level security never applies to it, every \
             tenant sees every row",
            format!("ALTER ROLE {role} NOBYPASSRLS;"),
        ));
    }
    out.extend(truncate(client, ctx, name).await?);
    out.extend(create_in_schema(client, ctx, name).await?);
    Ok(out)
}

async fn truncate(client: &Client, ctx: &Context, app: &str) -> Result<Vec<Finding>, DbError> {
    let mut out = Vec::new();
    for t in &ctx.tables {
        let row = client
            .query_one(
                "SELECT has_table_privilege($1::text, $2::oid, 'TRUNCATE')",
                &[&app, &t.oid],
            )
            .await?;
        if row.get(0) {
            out.push(Finding::new(
                Severity::Error,
                "app-role-truncate",
                object("table", &t.name),
                format!(
                    "`{app}` may TRUNCATE the table, and TRUNCATE ignores row-level security: \
                     one tenant can delete every tenant's rows"
                ),
                format!(
                    "REVOKE TRUNCATE ON {} FROM PUBLIC, {};",
                    t.name,
                    quote_ident(app)
                ),
            ));
        }
    }
    Ok(out)
}

async fn create_in_schema(
    client: &Client,
    ctx: &Context,
    app: &str,
) -> Result<Vec<Finding>, DbError> {
    let mut schemas: Vec<&str> = ctx.tables.iter().map(|t| t.name.schema.as_str()).collect();
    schemas.sort_unstable();
    schemas.dedup();
    let mut out = Vec::new();
    for schema in schemas {
        let row = client
            .query_one(
                "SELECT has_schema_privilege($1::text, $2::text, 'CREATE')",
                &[&app, &schema],
            )
            .await?;
        if row.get(0) {
            out.push(Finding::new(
                Severity::Warning,
                "app-role-can-create",
                format!("schema {schema}"),
                format!(
                    "`{app}` may create tables, views and functions in the schema of tenant \
                     tables: objects it creates have no row-level security and are shared by \
                     every tenant that connects as it"
                ),
                format!(
                    "REVOKE CREATE ON SCHEMA {} FROM PUBLIC, {};",
                    quote_ident(schema),
                    quote_ident(app)
                ),
            ));
        }
    }
    Ok(out)
}
