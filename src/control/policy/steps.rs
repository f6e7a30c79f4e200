//! The steps of the apply plan, one function per concern: the tenant column (add,
//! backfill, default, NOT NULL, not empty), tenant indexes, row-level security and
//! policies, grants, shared tables and views. Each adds only what is missing.

use super::backfill::Backfill;
use super::catalog::{PolicyState, TableState};
use super::file::{Command, Policy, TableSpec};
use super::plan::{
    column_default, expected_policies, index_name, not_empty_name, our_policy_names, reads_context,
    reads_tenant, session_tenant, Builder, Phase, Step,
};
use super::sql::{ident_list, quote_ident, quote_literal, QualifiedName};

pub(super) fn column_steps(b: &mut Builder<'_>, spec: &TableSpec, t: &TableState) {
    let policy = b.policy;
    let (table, col) = (&spec.name, quote_ident(&spec.column));
    let ty = policy.tenant_type.sql_name();
    match &t.column {
        None => b.step(
            Phase::Prepare,
            table,
            &format!("add tenant column {}", spec.column),
            format!("ALTER TABLE {table} ADD COLUMN {col} {ty};"),
        ),
        Some(c) if c.type_name != ty => b.problem(format!(
            "{}.{} has type {}, the policy says {ty}",
            table.plain(),
            spec.column,
            c.type_name
        )),
        Some(_) => {}
    }
    backfill_steps(b, spec, t);
    let column = t.column.as_ref();
    if !column
        .and_then(|c| c.default.as_deref())
        .is_some_and(|d| reads_context(d, policy))
    {
        let default = column_default(policy);
        b.step(
            Phase::Transaction,
            table,
            &format!("{} defaults to the session's tenant", spec.column),
            format!("ALTER TABLE {table} ALTER COLUMN {col} SET DEFAULT {default};"),
        );
    }
    if !column.is_some_and(|c| c.not_null) {
        b.step(
            Phase::Transaction,
            table,
            &format!("{} is NOT NULL", spec.column),
            format!("ALTER TABLE {table} ALTER COLUMN {col} SET NOT NULL;"),
        );
    }
    let check = not_empty_name(spec);
    if spec.forbid_empty && !t.check_constraints.contains(&check) {
        b.step(
            Phase::Transaction,
            table,
            &format!("{} may not be empty", spec.column),
            format!(
                "ALTER TABLE {table} ADD CONSTRAINT {} CHECK ({col} <> '');",
                quote_ident(&check)
            ),
        );
    }
}

/// Existing rows without a tenant: the batched backfill, plus a catch-up UPDATE in the
/// transaction for rows written meanwhile.
fn backfill_steps(b: &mut Builder<'_>, spec: &TableSpec, t: &TableState) {
    if t.null_tenants == 0 {
        return;
    }
    let (table, col) = (&spec.name, quote_ident(&spec.column));
    let Some(value) = &spec.backfill else {
        b.problem(format!(
            "{}: {} rows have no tenant and `backfill` is not set for this table",
            table.plain(),
            t.null_tenants
        ));
        return;
    };
    let value = format!(
        "{}::{}",
        quote_literal(value),
        b.policy.tenant_type.sql_name()
    );
    if !t.update_triggers.is_empty() {
        b.plan.warnings.push(format!(
            "{} has UPDATE triggers ({}): the backfill fires them; if they change rows the \
             checksum check fails (apply --disable-triggers skips them)",
            table.plain(),
            t.update_triggers.join(", ")
        ));
    }
    b.step(
        Phase::Transaction,
        table,
        "rows written since the backfill get the backfill tenant",
        format!("UPDATE {table} SET {col} = {value} WHERE {col} IS NULL;"),
    );
    b.plan.backfills.push(Backfill::new(spec, t, value));
}

pub(super) fn index_steps(b: &mut Builder<'_>, spec: &TableSpec, t: &TableState) {
    let mut wanted: Vec<Vec<String>> = spec.indexes.clone();
    let leads = t
        .indexes
        .iter()
        .any(|i| i.valid && i.leads_with(&spec.column));
    if spec.tenant_index && !leads && spec.tenant_unique.is_empty() && spec.indexes.is_empty() {
        wanted.push(Vec::new());
    }
    let concurrent = b.policy.apply.concurrent_indexes;
    for cols in wanted {
        let mut key = vec![spec.column.clone()];
        key.extend(cols.iter().cloned());
        let name = index_name(spec, &cols);
        let exists = t.indexes.iter().find(|i| i.name == name);
        let good = exists.is_some_and(|i| i.valid && i.plain_columns().as_ref() == Some(&key));
        if good {
            continue;
        }
        let qualified = QualifiedName::new(spec.name.schema.clone(), name.clone());
        let what = format!("index on ({})", key.join(", "));
        let (phase, create) = if concurrent {
            (Phase::Concurrent, "CREATE INDEX CONCURRENTLY")
        } else {
            (Phase::Transaction, "CREATE INDEX")
        };
        if let Some(old) = exists {
            let drop = if concurrent {
                "DROP INDEX CONCURRENTLY"
            } else {
                "DROP INDEX"
            };
            let why = if old.valid {
                "replace index with other columns"
            } else {
                "drop invalid index (interrupted build)"
            };
            b.step(phase, &spec.name, why, format!("{drop} {qualified};"));
        }
        b.step(
            phase,
            &spec.name,
            &what,
            format!(
                "{create} {} ON {} ({});",
                quote_ident(&name),
                spec.name,
                ident_list(&key)
            ),
        );
    }
}

pub(super) fn rls_steps(b: &mut Builder<'_>, spec: &TableSpec, t: &TableState) {
    let table = &spec.name;
    if !t.rls_enabled {
        b.step(
            Phase::Transaction,
            table,
            "row-level security enabled",
            format!("ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;"),
        );
    }
    if !t.rls_forced {
        b.step(
            Phase::Transaction,
            table,
            "row-level security forced (applies to the owner too)",
            format!("ALTER TABLE {table} FORCE ROW LEVEL SECURITY;"),
        );
    }
    let expected = expected_policies(b.policy, spec);
    for name in our_policy_names(b.policy) {
        let stale =
            t.policies.iter().any(|p| p.name == name) && !expected.iter().any(|(n, _)| *n == name);
        if stale {
            b.step(
                Phase::Transaction,
                table,
                &format!("drop policy {name} (commands changed)"),
                format!("DROP POLICY {} ON {table};", quote_ident(&name)),
            );
        }
    }
    for (name, cmd) in expected {
        let existing = t.policies.iter().find(|p| p.name == name);
        if existing.is_some_and(|p| policy_matches(p, cmd, &spec.column, b.policy)) {
            continue;
        }
        if existing.is_some() {
            b.step(
                Phase::Transaction,
                table,
                &format!("replace policy {name} (it differs)"),
                format!("DROP POLICY {} ON {table};", quote_ident(&name)),
            );
        }
        let sql = create_policy(b.policy, spec, &name, cmd);
        b.step(Phase::Transaction, table, &format!("policy {name}"), sql);
    }
    for p in &t.policies {
        let ours = our_policy_names(b.policy).contains(&p.name);
        let reads = [&p.using, &p.check]
            .into_iter()
            .flatten()
            .all(|e| reads_tenant(e, &b.policy.setting));
        if !ours && p.permissive && !reads {
            b.plan.warnings.push(format!(
                "{}: permissive policy {} does not read {}; permissive policies are OR-ed, so it may expose other tenants' rows",
                table.plain(), p.name, b.policy.setting
            ));
        }
    }
}

/// `CREATE POLICY` for one command (`None`: all commands).
pub fn create_policy(
    policy: &Policy,
    spec: &TableSpec,
    name: &str,
    cmd: Option<Command>,
) -> String {
    let cond = format!("{} = {}", quote_ident(&spec.column), session_tenant(policy));
    let (keyword, using, check) = match cmd {
        None => ("ALL", true, true),
        Some(Command::Select) => ("SELECT", true, false),
        Some(Command::Insert) => ("INSERT", false, true),
        Some(Command::Update) => ("UPDATE", true, true),
        Some(Command::Delete) => ("DELETE", true, false),
    };
    let mut sql = format!(
        "CREATE POLICY {} ON {} AS PERMISSIVE FOR {keyword} TO PUBLIC",
        quote_ident(name),
        spec.name
    );
    if using {
        sql.push_str(&format!(" USING ({cond})"));
    }
    if check {
        sql.push_str(&format!(" WITH CHECK ({cond})"));
    }
    sql.push(';');
    sql
}

/// Whether an existing policy is the one rlsgate would create (reading the tenant in
/// the configured form, sealed or setting).
pub fn policy_matches(
    p: &PolicyState,
    cmd: Option<Command>,
    column: &str,
    policy: &Policy,
) -> bool {
    let (code, using, check) = match cmd {
        None => ('*', true, true),
        Some(Command::Select) => ('r', true, false),
        Some(Command::Insert) => ('a', false, true),
        Some(Command::Update) => ('w', true, true),
        Some(Command::Delete) => ('d', true, false),
    };
    let column = quote_ident(column);
    let good = |expr: &Option<String>, wanted: bool| match expr {
        Some(e) => wanted && reads_context(e, policy) && e.contains(&column),
        None => !wanted,
    };
    p.cmd == code
        && p.permissive
        && p.roles == ["public"]
        && good(&p.using, using)
        && good(&p.check, check)
}

pub(super) fn grant_steps(b: &mut Builder<'_>, spec: &TableSpec, t: &TableState) {
    let app = quote_ident(&b.policy.app_role);
    if b.state.roles.app.is_none() {
        return;
    }
    let missing: Vec<&str> = b
        .policy
        .privileges
        .iter()
        .filter(|p| !t.app_privileges.contains(p))
        .map(|p| p.keyword())
        .collect();
    if !missing.is_empty() {
        let what = format!("{} may {}", b.policy.app_role, missing.join(", "));
        b.step(
            Phase::Transaction,
            &spec.name,
            &what,
            format!("GRANT {} ON {} TO {app};", missing.join(", "), spec.name),
        );
    }
    let writes = b.policy.privileges.contains(&Command::Insert);
    for seq in t.sequences.iter().filter(|s| writes && !s.app_usage) {
        let what = format!(
            "{} may use sequence {}",
            b.policy.app_role,
            seq.name.plain()
        );
        b.step(
            Phase::Transaction,
            &spec.name,
            &what,
            format!("GRANT USAGE ON SEQUENCE {} TO {app};", seq.name),
        );
    }
}

pub(super) fn exempt_and_view_steps(b: &mut Builder<'_>) {
    if b.state.roles.app.is_none() {
        return;
    }
    let app = quote_ident(&b.policy.app_role);
    let (state, policy) = (b.state, b.policy);
    for (schema, usage) in &state.schemas {
        if !usage {
            b.plan.steps.push(Step {
                phase: Phase::Transaction,
                object: format!("schema {schema}"),
                what: format!("{} may use schema {schema}", policy.app_role),
                sql: format!("GRANT USAGE ON SCHEMA {} TO {app};", quote_ident(schema)),
            });
        }
    }
    for (name, select) in &state.exempt {
        if !select {
            b.step(
                Phase::Transaction,
                name,
                &format!("{} may read the shared table", policy.app_role),
                format!("GRANT SELECT ON {name} TO {app};"),
            );
        }
    }
    for view in &state.views {
        if view.materialized {
            b.plan.warnings.push(format!(
                "materialized view {} reads tenant tables: it holds every tenant's rows and has no row-level security; do not grant it to {}",
                view.name.plain(), policy.app_role
            ));
            continue;
        }
        if !policy.secure_views {
            continue;
        }
        if !view.security_invoker {
            b.step(
                Phase::Transaction,
                &view.name,
                "view runs with the caller's rights (security_invoker)",
                format!("ALTER VIEW {} SET (security_invoker = true);", view.name),
            );
        }
        if !view.app_select {
            b.step(
                Phase::Transaction,
                &view.name,
                &format!("{} may read the view", policy.app_role),
                format!("GRANT SELECT ON {} TO {app};", view.name),
            );
        }
    }
}
