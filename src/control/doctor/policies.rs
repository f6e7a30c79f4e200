//! Policy expressions on tenant tables: permissive policies that allow everything, that
//! do not read the tenant setting, and writable policies with USING but no WITH CHECK.

use super::{Context, Finding, Severity, TenantTable};
use crate::control::policy::catalog::PolicyState;
use crate::control::policy::plan::reads_setting;
use crate::control::policy::sql::quote_ident;

pub fn check(ctx: &Context) -> Vec<Finding> {
    let mut out = Vec::new();
    for t in &ctx.tables {
        for p in &t.policies {
            if let Some(f) = permissive_true(t, p).or_else(|| no_setting(ctx, t, p)) {
                out.push(f);
            }
            if let Some(f) = missing_check(t, p) {
                out.push(f);
            }
        }
    }
    out
}

/// `policy tenant_isolation on public.customers`
fn object(t: &TenantTable, p: &PolicyState) -> String {
    format!("policy {} on {}", p.name, t.name.plain())
}

fn command(p: &PolicyState) -> &'static str {
    match p.cmd {
        'r' => "SELECT",
        'a' => "INSERT",
        'w' => "UPDATE",
        'd' => "DELETE",
        _ => "ALL",
    }
}

/// Whether the policy takes part in `cmd`'s USING / WITH CHECK.
fn has_using(p: &PolicyState) -> bool {
    p.cmd != 'a'
}

fn has_check(p: &PolicyState) -> bool {
    matches!(p.cmd, '*' | 'a' | 'w')
}

fn permissive_true(t: &TenantTable, p: &PolicyState) -> Option<Finding> {
    if !p.permissive {
        return None;
    }
    let is_true = |e: &Option<String>| e.as_deref().map(str::trim) == Some("true");
    // An INSERT policy without WITH CHECK accepts every row.
    let open = (has_using(p) && is_true(&p.using))
        || (has_check(p) && is_true(&p.check))
        || (p.cmd == 'a' && p.check.is_none());
    open.then(|| {
        Finding::new(
            Severity::Error,
            "policy-permissive-true",
            object(t, p),
            format!(
                "permissive {} policy that allows every row; permissive policies are OR-ed, \
                 so this one opens the table to every tenant whatever the others say",
                command(p)
            ),
            format!("DROP POLICY {} ON {};", quote_ident(&p.name), t.name),
        )
    })
}

fn no_setting(ctx: &Context, t: &TenantTable, p: &PolicyState) -> Option<Finding> {
    if !p.permissive {
        // Restrictive policies only narrow what permissive ones allow.
        return None;
    }
    let setting = &ctx.settings.setting;
    let reads = |e: &str| reads_setting(e, setting) || e.contains("rlsgate.tenant(");
    let exprs: Vec<&str> = [&p.using, &p.check]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    if exprs.is_empty() || exprs.iter().all(|e| reads(e)) {
        return None;
    }
    Some(Finding::new(
        Severity::Error,
        "policy-no-tenant-setting",
        object(t, p),
        format!(
            "the policy does not compare with current_setting('{setting}') (or \
             rlsgate.tenant()): it is not tied to the session's tenant, and permissive \
             policies are OR-ed, so it may expose other tenants' rows ({})",
            exprs.join(" / ")
        ),
        format!(
            "DROP POLICY {} ON {};\n{}",
            quote_ident(&p.name),
            t.name,
            super::tables::policy_sql(ctx, t)
        ),
    ))
}

fn missing_check(t: &TenantTable, p: &PolicyState) -> Option<Finding> {
    if !matches!(p.cmd, '*' | 'w') || p.using.is_none() || p.check.is_some() {
        return None;
    }
    let using = p.using.as_deref().unwrap_or_default();
    Some(Finding::new(
        Severity::Warning,
        "policy-using-without-check",
        object(t, p),
        format!(
            "{} policy with USING but no WITH CHECK: PostgreSQL then checks new rows with \
             USING, which is easy to loosen by accident later; state the check that keeps \
             written rows in the session's tenant",
            command(p)
        ),
        format!(
            "ALTER POLICY {} ON {} WITH CHECK ({using});",
            quote_ident(&p.name),
            t.name
        ),
    ))
}
