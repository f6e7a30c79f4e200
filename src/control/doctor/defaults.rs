//! What every tenant's session inherits: per-role and per-database setting defaults
//! (`ALTER ROLE ... SET`, `ALTER DATABASE ... SET`, kept in `pg_db_role_setting`) apply to
//! every future connection of the shared app role, so one such default changes every
//! tenant's sessions; and predefined roles whose members reach every session or row.

use tokio_postgres::Client;

use super::{Context, Finding, Severity};
use crate::control::policy::catalog::memberships;
use crate::control::policy::sql::{quote_ident, quote_literal};
use crate::control::policy::DbError;

/// Settings whose default, if any, breaks isolation or the proxy's assumptions.
const DANGEROUS: [&str; 4] = [
    "default_transaction_read_only",
    "search_path",
    "role",
    "session_authorization",
];

pub async fn check(client: &Client, ctx: &Context) -> Result<Vec<Finding>, DbError> {
    let Some(app) = ctx.app_name() else {
        return Ok(Vec::new());
    };
    let mut out = role_settings(client, ctx, app).await?;
    for role in memberships(client, app).await? {
        out.push(Finding::new(
            Severity::Error,
            "app-role-predefined-role",
            format!("role {app}"),
            format!(
                "`{app}` is a member of {role}: {}; every tenant connects as it",
                match role.as_str() {
                    "pg_signal_backend" => "it may cancel or end any non-superuser backend",
                    "pg_read_all_data" => "it may read every table, whatever the grants",
                    _ => "it may read every session's statements and statistics",
                }
            ),
            format!("REVOKE {} FROM {};", quote_ident(&role), quote_ident(app)),
        ));
    }
    Ok(out)
}

async fn role_settings(client: &Client, ctx: &Context, app: &str) -> Result<Vec<Finding>, DbError> {
    let rows = client
        .query(
            "SELECT s.setrole <> 0, s.setdatabase <> 0, d.datname::text, cfg \
             FROM pg_db_role_setting s LEFT JOIN pg_database d ON d.oid = s.setdatabase, \
                  unnest(s.setconfig) AS cfg \
             WHERE (s.setrole = (SELECT oid FROM pg_roles WHERE rolname = $1::text) \
                    AND (s.setdatabase = 0 OR d.datname = current_database())) \
                OR (s.setrole = 0 AND d.datname = current_database()) \
             ORDER BY 1, 2, 4",
            &[&app],
        )
        .await?;
    let mut out = Vec::new();
    for r in rows {
        let (for_role, for_db): (bool, bool) = (r.get(0), r.get(1));
        let db: Option<String> = r.get(2);
        let cfg: String = r.get(3);
        let name = cfg
            .split_once('=')
            .map_or(cfg.as_str(), |(n, _)| n)
            .to_owned();
        let (object, alter) = match (for_role, for_db, db.as_deref()) {
            (true, false, _) => (
                format!("role {app}"),
                format!("ALTER ROLE {}", quote_ident(app)),
            ),
            (true, true, Some(db)) => (
                format!("role {app} in database {db}"),
                format!(
                    "ALTER ROLE {} IN DATABASE {}",
                    quote_ident(app),
                    quote_ident(db)
                ),
            ),
            (_, _, db) => {
                let db = db.unwrap_or(&ctx.database);
                (
                    format!("database {db}"),
                    format!("ALTER DATABASE {}", quote_ident(db)),
                )
            }
        };
        let lower = name.to_ascii_lowercase();
        let owned =
            lower == ctx.settings.setting.to_ascii_lowercase() || lower.starts_with("rlsgate.");
        let severity = if owned || DANGEROUS.contains(&lower.as_str()) {
            Severity::Error
        } else {
            Severity::Warning
        };
        out.push(Finding::new(
            severity,
            "setting-default",
            object,
            format!(
                "default {} applies to every new connection of the shared app role, i.e. to \
                 every tenant's sessions{}",
                quote_literal(&cfg),
                if severity == Severity::Error {
                    " (it is a setting rlsgate owns or one that changes whose rows or which \
                     objects a session sees, or whether it may write)"
                } else {
                    ""
                }
            ),
            format!("{alter} RESET {};", quote_ident(&name)),
        ));
    }
    Ok(out)
}
