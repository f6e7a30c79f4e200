//! Statistics views that show statement text: every tenant connects upstream as the same
//! app role, so whatever that role may read of its own sessions' statements, each tenant
//! reads of every other tenant's (with literal values in them).

use tokio_postgres::Client;

use super::{Context, Finding, Severity};
use crate::control::policy::sql::{quote_ident, QualifiedName};
use crate::control::policy::DbError;

pub async fn check(client: &Client, ctx: &Context) -> Result<Vec<Finding>, DbError> {
    let Some(app) = ctx.app_name() else {
        return Ok(Vec::new());
    };
    let role = quote_ident(app);
    let mut out = Vec::new();
    let row = client
        .query_one(
            "SELECT has_table_privilege($1::text, 'pg_catalog.pg_stat_activity', 'SELECT') \
                 OR has_function_privilege($1::text, 'pg_catalog.pg_stat_get_activity(integer)', 'EXECUTE') \
                 OR has_function_privilege($1::text, \
                        'pg_catalog.pg_stat_get_backend_activity(integer)', 'EXECUTE')",
            &[&app],
        )
        .await?;
    if row.get(0) {
        out.push(Finding::new(
            Severity::Error,
            "pg-stat-activity-readable",
            "view pg_catalog.pg_stat_activity",
            format!(
                "`{app}` can read pg_stat_activity (or the functions behind it): it shows the \
                 current statement of every session of its own role, so each tenant sees the \
                 queries, with their values, that other tenants run through rlsgate"
            ),
            format!(
                "-- in every database, as a superuser:\n\
                 REVOKE SELECT ON pg_catalog.pg_stat_activity FROM PUBLIC, {role};\n\
                 REVOKE EXECUTE ON FUNCTION pg_catalog.pg_stat_get_activity(integer) FROM PUBLIC, {role};\n\
                 REVOKE EXECUTE ON FUNCTION pg_catalog.pg_stat_get_backend_activity(integer) FROM PUBLIC, {role};"
            ),
        ));
    }
    if let Some(schema) = stat_statements_schema(client).await? {
        let view = QualifiedName::new(schema, "pg_stat_statements");
        let row = client
            .query_one(
                "SELECT has_table_privilege($1::text, $2::text::regclass, 'SELECT')",
                &[&app, &view.to_string()],
            )
            .await?;
        if row.get(0) {
            out.push(Finding::new(
                Severity::Error,
                "pg-stat-statements-readable",
                format!("view {}", view.plain()),
                format!(
                    "`{app}` can read pg_stat_statements: it lists the statements of its own \
                     role, i.e. those of every tenant, with their text"
                ),
                format!(
                    "REVOKE ALL ON {view} FROM PUBLIC, {role};\n\
                     REVOKE EXECUTE ON FUNCTION {}.pg_stat_statements(boolean) FROM PUBLIC, {role};",
                    quote_ident(&view.schema)
                ),
            ));
        }
    }
    Ok(out)
}

async fn stat_statements_schema(client: &Client) -> Result<Option<String>, DbError> {
    Ok(client
        .query_opt(
            "SELECT n.nspname::text FROM pg_extension e \
             JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_stat_statements'",
            &[],
        )
        .await?
        .map(|r| r.get(0)))
}
