//! Row-level security on tenant tables: disabled, enabled but not forced, enabled
//! without any policy, and tables the app role owns.

use super::{object, Context, Finding, Severity, TenantTable};
use crate::control::policy::sql::{quote_ident, quote_literal};

pub fn check(ctx: &Context) -> Vec<Finding> {
    let mut out = Vec::new();
    if ctx.tables.is_empty() {
        out.push(Finding::new(
            Severity::Warning,
            "no-tenant-tables",
            format!("database {}", ctx.database),
            format!(
                "no table has a `{}` column (and no policy file names any): nothing is \
                 isolated per tenant, or doctor is looking for the wrong column",
                ctx.settings.column
            ),
            "-- pass --tenant-column NAME or --policy FILE, or add tenant columns with \
             `rlsgate policy plan/apply`",
        ));
    }
    for t in &ctx.tables {
        rls(ctx, t, &mut out);
        if t.app_owns {
            out.push(owned_by_app(ctx, t));
        }
    }
    out
}

fn rls(ctx: &Context, t: &TenantTable, out: &mut Vec<Finding>) {
    let table = &t.name;
    if !t.rls_enabled {
        out.push(Finding::new(
            Severity::Error,
            "rls-disabled",
            object("table", table),
            format!(
                "{table} has a tenant column but row-level security is disabled: every \
                 tenant reads and writes every row",
                table = table.plain()
            ),
            format!(
                "ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;\n\
                 ALTER TABLE {table} FORCE ROW LEVEL SECURITY;\n{}",
                policy_sql(ctx, t)
            ),
        ));
        return;
    }
    if !t.rls_forced {
        let (severity, why) = if t.app_owns {
            (
                Severity::Error,
                format!(
                    "row-level security is enabled but not forced, and the app role `{}` owns \
                     the table: owners skip the policies, so every tenant sees every row",
                    ctx.settings.app_role
                ),
            )
        } else {
            (
                Severity::Warning,
                format!(
                    "row-level security is enabled but not forced: connections as the owner \
                     `{}` (migrations, jobs, a misconfigured app) skip the policies",
                    t.owner
                ),
            )
        };
        out.push(Finding::new(
            severity,
            "rls-not-forced",
            object("table", table),
            why,
            format!("ALTER TABLE {table} FORCE ROW LEVEL SECURITY;"),
        ));
    }
    if t.policies.is_empty() {
        out.push(Finding::new(
            Severity::Warning,
            "rls-no-policy",
            object("table", table),
            "row-level security is on but the table has no policy: every query of the app \
             role returns no rows and every write fails",
            policy_sql(ctx, t),
        ));
    }
}

fn owned_by_app(ctx: &Context, t: &TenantTable) -> Finding {
    let app = &ctx.settings.app_role;
    let (who, fix) = if &t.owner == app {
        (
            format!("the app role `{app}` owns the table"),
            format!(
                "-- give the table to a NOLOGIN owner role the app role is not a member of:\n\
                 ALTER TABLE {} OWNER TO app_owner;",
                t.name
            ),
        )
    } else {
        (
            format!(
                "the app role `{app}` is a member of the table's owner `{}`",
                t.owner
            ),
            format!(
                "REVOKE {} FROM {};",
                quote_ident(&t.owner),
                quote_ident(app)
            ),
        )
    };
    Finding::new(
        Severity::Error,
        "app-role-owns-table",
        object("table", &t.name),
        format!(
            "{who}: it can ALTER TABLE ... DISABLE ROW LEVEL SECURITY and drop policies, and \
             unless RLS is forced it skips them"
        ),
        fix,
    )
}

/// A tenant-isolation policy for `t`, as `rlsgate policy` would create it.
pub fn policy_sql(ctx: &Context, t: &TenantTable) -> String {
    let mut value = if ctx.settings.sealed {
        "(SELECT rlsgate.tenant())".to_owned()
    } else {
        format!(
            "NULLIF(current_setting({}, true), '')",
            quote_literal(&ctx.settings.setting)
        )
    };
    if t.column_type != "text" {
        value = format!("{value}::{}", t.column_type);
    }
    let cond = format!("{} = {value}", quote_ident(&t.column));
    format!(
        "CREATE POLICY tenant_isolation ON {} FOR ALL USING ({cond}) WITH CHECK ({cond});",
        t.name
    )
}
