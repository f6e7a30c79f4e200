//! The sealed tenant context, when the proxy seals it (`[tenant] sealed = true`, a
//! policy file with the default `context = "sealed"`, or `--sealed`): `rlsgate.tenant()`
//! must exist, and policies should read it rather than the bare setting, which any SQL
//! the guard misses can change.

use tokio_postgres::Client;

use super::{Context, Finding, Severity, TenantTable};
use crate::control::policy::catalog::PolicyState;
use crate::control::policy::plan::{reads_sealed, reads_setting};
use crate::control::policy::sql::quote_ident;
use crate::control::policy::DbError;

pub async fn check(client: &Client, ctx: &Context) -> Result<Vec<Finding>, DbError> {
    if !ctx.settings.sealed {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let present: bool = client
        .query_one(
            "SELECT to_regprocedure('rlsgate.tenant()') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !present {
        out.push(Finding::new(
            Severity::Error,
            "sealed-context-missing",
            "function rlsgate.tenant()",
            "the seal is configured but rlsgate.tenant() does not exist: policies cannot \
             check the seal, so they either fail or trust the bare setting",
            "-- as a superuser: rlsgate policy apply (installs it), or\n\
             -- psql -d <database> -f policies/sealed.sql, then\n\
             -- SELECT rlsgate.set_seal_secret(<the proxy's seal secret>);",
        ));
    }
    for t in &ctx.tables {
        for p in t.policies.iter().filter(|p| bare(ctx, p)) {
            out.push(Finding::new(
                Severity::Warning,
                "policy-bare-setting",
                format!("policy {} on {}", p.name, t.name.plain()),
                format!(
                    "the policy compares with current_setting('{}') although the context is \
                     sealed: SQL the guard does not see (dynamic SQL, a function a tenant \
                     created) can change that setting; use (SELECT rlsgate.tenant()), which \
                     is NULL unless the seal verifies",
                    ctx.settings.setting
                ),
                alter_sql(t, p),
            ));
        }
    }
    Ok(out)
}

fn bare(ctx: &Context, p: &PolicyState) -> bool {
    let exprs: Vec<&String> = [&p.using, &p.check].into_iter().flatten().collect();
    exprs
        .iter()
        .any(|e| reads_setting(e, &ctx.settings.setting))
        && !exprs.iter().all(|e| reads_sealed(e))
}

fn alter_sql(t: &TenantTable, p: &PolicyState) -> String {
    let mut value = "(SELECT rlsgate.tenant())".to_owned();
    if t.column_type != "text" {
        value = format!("{value}::{}", t.column_type);
    }
    let cond = format!("{} = {value}", quote_ident(&t.column));
    let mut sql = format!("ALTER POLICY {} ON {}", quote_ident(&p.name), t.name);
    if p.using.is_some() {
        sql.push_str(&format!(" USING ({cond})"));
    }
    if p.check.is_some() {
        sql.push_str(&format!(" WITH CHECK ({cond})"));
    }
    sql.push(';');
    sql
}
