//! Objects that read tenant tables with someone else's rights: views without
//! `security_invoker`, materialized views (no RLS at all), SECURITY DEFINER functions.
//!
//! Such an object is an error when its owner is not subject to the tables' row-level
//! security (a superuser, a BYPASSRLS role, or the owner of a table whose RLS is not
//! forced): then every caller sees every tenant. Otherwise it is a warning: it works
//! only as long as its owner stays an ordinary, forced-RLS role.

use std::collections::HashMap;

use tokio_postgres::Client;

use super::{object, Context, Finding, Severity};
use crate::control::policy::catalog::dependent_views;
use crate::control::policy::sql::quote_ident;
use crate::control::policy::DbError;

pub async fn check(client: &Client, ctx: &Context) -> Result<Vec<Finding>, DbError> {
    let oids = ctx.table_oids();
    if oids.is_empty() {
        return Ok(Vec::new());
    }
    let bypassing = bypassing_roles(client).await?;
    let mut out = Vec::new();
    for view in dependent_views(client, &oids, ctx.app_name()).await? {
        let escapes = bypassing.get(&view.owner).copied().unwrap_or(false)
            || view
                .base_tables
                .iter()
                .filter_map(|o| ctx.table(*o))
                .any(|t| t.owner == view.owner && !t.rls_forced);
        if view.materialized {
            let severity = if view.app_select {
                Severity::Error
            } else {
                Severity::Warning
            };
            out.push(Finding::new(
                severity,
                "materialized-view",
                object("materialized view", &view.name),
                format!(
                    "a materialized view over tenant tables stores every tenant's rows and has no \
                     row-level security{}",
                    if view.app_select { "; the app role can read it" } else { "" }
                ),
                format!(
                    "REVOKE ALL ON {} FROM PUBLIC, {};\n-- or replace it by a view WITH (security_invoker = true)",
                    view.name,
                    quote_ident(&ctx.settings.app_role)
                ),
            ));
        } else if !view.security_invoker {
            out.push(Finding::new(
                if escapes { Severity::Error } else { Severity::Warning },
                "view-not-security-invoker",
                object("view", &view.name),
                format!(
                    "the view reads tenant tables with the rights of its owner `{}`{}",
                    view.owner,
                    if escapes {
                        ", whom row-level security does not restrict: every caller sees every tenant"
                    } else {
                        ", not the caller's; it isolates tenants only while that owner stays subject to forced RLS"
                    }
                ),
                format!("ALTER VIEW {} SET (security_invoker = true);", view.name),
            ));
        }
    }
    out.extend(definer_functions(client, ctx, &bypassing).await?);
    Ok(out)
}

/// Role name → superuser or BYPASSRLS.
async fn bypassing_roles(client: &Client) -> Result<HashMap<String, bool>, DbError> {
    let rows = client
        .query(
            "SELECT rolname::text, rolsuper OR rolbypassrls FROM pg_roles",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

async fn definer_functions(
    client: &Client,
    ctx: &Context,
    bypassing: &HashMap<String, bool>,
) -> Result<Vec<Finding>, DbError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, p.proname::text, pg_get_function_identity_arguments(p.oid), \
                    pg_get_userbyid(p.proowner)::text, lower(pg_get_functiondef(p.oid)), \
                    $1::text IS NOT NULL AND has_function_privilege($1::text, p.oid, 'EXECUTE') \
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE p.prosecdef AND p.prokind IN ('f', 'p') \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             ORDER BY 1, 2",
            &[&ctx.app_name()],
        )
        .await?;
    let mut out = Vec::new();
    for r in &rows {
        let (schema, name, args, owner, body): (String, String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let executable: bool = r.get(5);
        let read: Vec<_> = ctx
            .tables
            .iter()
            .filter(|t| mentions(&body, &t.name.name))
            .collect();
        if read.is_empty() {
            continue;
        }
        let escapes = bypassing.get(&owner).copied().unwrap_or(false)
            || read.iter().any(|t| t.owner == owner && !t.rls_forced);
        let signature = format!("{}.{}({args})", quote_ident(&schema), quote_ident(&name));
        let tables: Vec<String> = read.iter().map(|t| t.name.plain()).collect();
        out.push(Finding::new(
            if escapes && executable { Severity::Error } else { Severity::Warning },
            "security-definer-function",
            format!("function {schema}.{name}({args})"),
            format!(
                "SECURITY DEFINER function reading tenant tables ({}) with the rights of `{owner}`{}",
                tables.join(", "),
                if escapes {
                    ", whom row-level security does not restrict: callers see every tenant's rows"
                } else {
                    "; it isolates tenants only while that owner stays subject to forced RLS"
                }
            ),
            format!("ALTER FUNCTION {signature} SECURITY INVOKER;"),
        ));
    }
    Ok(out)
}

/// Whether `body` (lower-cased) names `table` as a whole word.
fn mentions(body: &str, table: &str) -> bool {
    let table = table.to_lowercase();
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    body.match_indices(&table).any(|(i, _)| {
        !word(body[..i].chars().next_back()) && !word(body[i + table.len()..].chars().next())
    })
}

#[cfg(test)]
mod tests {
    use super::mentions;

    #[test]
    fn table_names_match_as_whole_words() {
        assert!(mentions("select * from public.invoices where", "invoices"));
        assert!(mentions("from \"invoices\";", "Invoices"));
        assert!(!mentions("select * from invoices_archive", "invoices"));
        assert!(!mentions("select my_invoices from x", "invoices"));
        assert!(mentions("invoices", "invoices"));
        assert!(mentions(
            "as $function$select 1 from tasks$function$",
            "tasks"
        ));
    }
}
