//! Database-side hardening against the shared upstream role: every tenant's session runs
//! as the same role, so whatever that role may do to or read of its own other sessions,
//! one tenant may do to another (signal its backend, read its statement text, prepared
//! statements, cursors, locks, large objects). `apply` revokes those functions and views
//! from PUBLIC and from the app role's own grants, records each revoke in
//! `rlsgate.revoked`, and `rollback` grants exactly the recorded ones back.
//!
//! Superusers and the objects' owner keep everything; a monitoring role gets back what
//! it needs with explicit grants (see docs/policy.md).

use std::collections::BTreeMap;

use super::catalog::GrantState;
use super::file::Policy;
use super::options::{Hardening, Keep};
use super::plan::{Builder, Phase, Step};
use super::sql::{quote_ident, quote_literal};

/// Function (EXECUTE) or view (SELECT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Function,
    View,
}

impl Kind {
    pub fn privilege(self) -> &'static str {
        match self {
            Kind::Function => "EXECUTE",
            Kind::View => "SELECT",
        }
    }

    /// The keyword before the object in GRANT/REVOKE.
    pub fn keyword(self) -> &'static str {
        match self {
            Kind::Function => "FUNCTION",
            Kind::View => "TABLE",
        }
    }
}

/// Why a target is revoked; also the unit of doctor findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    /// Cancel or end another session's backend.
    Signals,
    /// `pg_stat_activity` and the functions behind it: statement text of every session.
    Activity,
    /// Other views and functions that show other sessions: pids (to signal), TLS and
    /// GSS details, prepared statements and cursors of a shared server session, locks,
    /// prepared transactions, progress.
    Sessions,
    /// Large objects: one owner role, so every tenant's objects are every tenant's.
    LargeObjects,
    /// `pg_stat_statements`: statement text of the role's statements.
    Statements,
}

impl Group {
    /// What the app role can no longer do once the group is revoked (plan wording).
    pub fn effect(self) -> &'static str {
        match self {
            Group::Signals => "may no longer cancel or end other sessions' backends",
            Group::Activity => "may no longer read other sessions' current statements",
            Group::Sessions => {
                "may no longer see other sessions (pids, prepared statements, cursors, locks)"
            }
            Group::LargeObjects => "may no longer use large objects (shared by all tenants)",
            Group::Statements => "may no longer read pg_stat_statements",
        }
    }
}

/// One function or view the shared role should not reach.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub group: Group,
    pub kind: Kind,
    /// Name (functions with their argument types, as `regprocedure` prints them),
    /// without the schema.
    pub name: &'static str,
    /// `Some(extension)`: in that extension's schema, only when it is installed; `None`:
    /// in `pg_catalog`.
    pub extension: Option<&'static str>,
}

const fn f(group: Group, name: &'static str) -> Target {
    Target {
        group,
        kind: Kind::Function,
        name,
        extension: None,
    }
}

const fn v(group: Group, name: &'static str) -> Target {
    Target {
        group,
        kind: Kind::View,
        name,
        extension: None,
    }
}

const fn statements(kind: Kind, name: &'static str) -> Target {
    Target {
        group: Group::Statements,
        kind,
        name,
        extension: Some("pg_stat_statements"),
    }
}

use Group::{Activity, LargeObjects, Sessions, Signals};

/// Everything `apply` revokes (checked against PostgreSQL 15's catalog; a name missing
/// from another version is skipped).
pub static TARGETS: &[Target] = &[
    f(Signals, "pg_cancel_backend(integer)"),
    f(Signals, "pg_terminate_backend(integer,bigint)"),
    v(Activity, "pg_stat_activity"),
    f(Activity, "pg_stat_get_activity(integer)"),
    f(Activity, "pg_stat_get_backend_activity(integer)"),
    v(Sessions, "pg_stat_ssl"),
    v(Sessions, "pg_stat_gssapi"),
    v(Sessions, "pg_prepared_statements"),
    f(Sessions, "pg_prepared_statement()"),
    v(Sessions, "pg_cursors"),
    f(Sessions, "pg_cursor()"),
    v(Sessions, "pg_locks"),
    f(Sessions, "pg_lock_status()"),
    v(Sessions, "pg_prepared_xacts"),
    f(Sessions, "pg_prepared_xact()"),
    f(Sessions, "pg_blocking_pids(integer)"),
    f(Sessions, "pg_safe_snapshot_blocking_pids(integer)"),
    v(Sessions, "pg_stat_progress_analyze"),
    v(Sessions, "pg_stat_progress_basebackup"),
    v(Sessions, "pg_stat_progress_cluster"),
    v(Sessions, "pg_stat_progress_copy"),
    v(Sessions, "pg_stat_progress_create_index"),
    v(Sessions, "pg_stat_progress_vacuum"),
    f(Sessions, "pg_stat_get_progress_info(text)"),
    f(Sessions, "pg_stat_get_backend_idset()"),
    f(Sessions, "pg_stat_get_backend_pid(integer)"),
    f(Sessions, "pg_stat_get_backend_dbid(integer)"),
    f(Sessions, "pg_stat_get_backend_userid(integer)"),
    f(Sessions, "pg_stat_get_backend_start(integer)"),
    f(Sessions, "pg_stat_get_backend_activity_start(integer)"),
    f(Sessions, "pg_stat_get_backend_xact_start(integer)"),
    f(Sessions, "pg_stat_get_backend_client_addr(integer)"),
    f(Sessions, "pg_stat_get_backend_client_port(integer)"),
    f(Sessions, "pg_stat_get_backend_wait_event(integer)"),
    f(Sessions, "pg_stat_get_backend_wait_event_type(integer)"),
    f(LargeObjects, "lo_open(oid,integer)"),
    f(LargeObjects, "lo_close(integer)"),
    f(LargeObjects, "loread(integer,integer)"),
    f(LargeObjects, "lowrite(integer,bytea)"),
    f(LargeObjects, "lo_lseek(integer,integer,integer)"),
    f(LargeObjects, "lo_lseek64(integer,bigint,integer)"),
    f(LargeObjects, "lo_tell(integer)"),
    f(LargeObjects, "lo_tell64(integer)"),
    f(LargeObjects, "lo_truncate(integer,integer)"),
    f(LargeObjects, "lo_truncate64(integer,bigint)"),
    f(LargeObjects, "lo_creat(integer)"),
    f(LargeObjects, "lo_create(oid)"),
    f(LargeObjects, "lo_unlink(oid)"),
    f(LargeObjects, "lo_get(oid)"),
    f(LargeObjects, "lo_get(oid,bigint,integer)"),
    f(LargeObjects, "lo_put(oid,bigint,bytea)"),
    f(LargeObjects, "lo_from_bytea(oid,bytea)"),
    f(LargeObjects, "lo_import(text)"),
    f(LargeObjects, "lo_import(text,oid)"),
    f(LargeObjects, "lo_export(oid,text)"),
    statements(Kind::View, "pg_stat_statements"),
    statements(Kind::View, "pg_stat_statements_info"),
    statements(Kind::Function, "pg_stat_statements(boolean)"),
    statements(Kind::Function, "pg_stat_statements_info()"),
];

/// Predefined roles whose members reach other sessions: signal any backend
/// (`pg_signal_backend`), read every statement (`pg_read_all_stats`, `pg_monitor`),
/// read every table ignoring row-level security's grants (`pg_read_all_data`).
pub const MEMBERSHIPS: [&str; 4] = [
    "pg_signal_backend",
    "pg_read_all_stats",
    "pg_monitor",
    "pg_read_all_data",
];

/// Where `apply` records what it revoked (superuser-only).
pub const RECORD_TABLE: &str = "rlsgate.revoked";
/// Where `apply` records the fingerprint of the seal secret it stored.
pub const SEAL_CHECK_TABLE: &str = "rlsgate.seal_check";

/// Whether the policy has `apply` revoke this group.
pub fn revokes(policy: &Policy, group: Group) -> bool {
    revokes_with(&policy.hardening, group)
}

/// Whether `[hardening]` says to revoke this group.
pub fn revokes_with(hardening: &Hardening, group: Group) -> bool {
    match group {
        Group::LargeObjects => hardening.large_objects == Keep::Revoke,
        Group::Signals => hardening.backend_signals == Keep::Revoke,
        _ => true,
    }
}

/// The revokes still to do: per group and kind, one REVOKE of every object still held by
/// PUBLIC or granted to the app role, and the rows recording them.
pub(super) fn revoke_steps(b: &mut Builder<'_>) {
    let Some(app) = &b.state.roles.app else {
        return;
    };
    let role = quote_ident(&app.name);
    let mut batches: BTreeMap<(Group, Kind, Vec<String>), Vec<&GrantState>> = BTreeMap::new();
    for g in &b.state.hardening.grants {
        if !revokes(b.policy, g.target.group) {
            continue;
        }
        let mut from = Vec::new();
        if g.public {
            from.push("PUBLIC".to_owned());
        }
        if g.app_explicit {
            from.push(role.clone());
        }
        if from.is_empty() {
            if g.app_effective {
                b.plan.warnings.push(format!(
                    "{} {} is still usable by {} through a role it is a member of; revoke \
                     it from that role",
                    g.target.kind.keyword(),
                    g.object,
                    app.name
                ));
            }
            continue;
        }
        let key = (g.target.group, g.target.kind, from);
        batches.entry(key).or_default().push(g);
    }
    if !batches.is_empty() && b.state.hardening.recorded.is_none() {
        b.plan.steps.push(Step {
            phase: Phase::Transaction,
            object: "schema rlsgate".into(),
            what: "record of the privileges apply revokes (for rollback)".into(),
            sql: record_table_sql(),
        });
    }
    for ((group, kind, from), objects) in batches {
        b.plan
            .steps
            .push(revoke_step(&app.name, group, kind, &from, &objects));
    }
    for role in &b.state.hardening.memberships {
        b.plan.warnings.push(format!(
            "{} is a member of {role}, which reaches every session or row whatever is \
             revoked here: REVOKE {} FROM {};",
            app.name,
            quote_ident(role),
            quote_ident(&app.name)
        ));
    }
}

fn revoke_step(
    app: &str,
    group: Group,
    kind: Kind,
    from: &[String],
    objects: &[&GrantState],
) -> Step {
    let (privilege, keyword) = (kind.privilege(), kind.keyword());
    let list: Vec<&str> = objects.iter().map(|g| g.object.as_str()).collect();
    let mut sql = format!(
        "REVOKE {privilege} ON {keyword} {} FROM {};\n",
        list.join(", "),
        from.join(", ")
    );
    let rows: Vec<String> = objects
        .iter()
        .flat_map(|g| {
            from.iter().map(move |grantee| {
                format!(
                    "({}, '{privilege}', {})",
                    quote_literal(&format!("{keyword} {}", g.object)),
                    quote_literal(grantee)
                )
            })
        })
        .collect();
    sql.push_str(&format!(
        "INSERT INTO {RECORD_TABLE} (object, privilege, grantee) VALUES\n    {}\n    ON CONFLICT DO NOTHING;",
        rows.join(",\n    ")
    ));
    let names: Vec<&str> = objects
        .iter()
        .map(|g| {
            g.object
                .rsplit_once('.')
                .map_or(g.object.as_str(), |(_, n)| n)
        })
        .collect();
    Step {
        phase: Phase::Transaction,
        object: format!("{}: {}", group_label(group), names.join(", ")),
        what: format!("{app} {}", group.effect()),
        sql,
    }
}

fn group_label(group: Group) -> &'static str {
    match group {
        Group::Signals => "backend signals",
        Group::Activity => "pg_stat_activity",
        Group::Sessions => "session views",
        Group::LargeObjects => "large objects",
        Group::Statements => "pg_stat_statements",
    }
}

fn record_table_sql() -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS rlsgate;\n\
         CREATE TABLE IF NOT EXISTS {RECORD_TABLE} (\n    \
             object     text NOT NULL,\n    \
             privilege  text NOT NULL,\n    \
             grantee    text NOT NULL,\n    \
             revoked_at timestamptz NOT NULL DEFAULT now(),\n    \
             PRIMARY KEY (object, privilege, grantee));\n\
         REVOKE ALL ON {RECORD_TABLE} FROM PUBLIC;"
    )
}

/// Rollback: grants back exactly what `apply` recorded (objects that still exist), then
/// drops the record.
pub(super) fn restore_steps(b: &mut Builder<'_>) {
    let Some(recorded) = &b.state.hardening.recorded else {
        return;
    };
    let mut batches: BTreeMap<(&str, &str, &str), Vec<&str>> = BTreeMap::new();
    for r in recorded.iter().filter(|r| r.exists) {
        let (keyword, object) = r.object.split_once(' ').unwrap_or(("TABLE", &r.object));
        batches
            .entry((r.privilege.as_str(), keyword, r.grantee.as_str()))
            .or_default()
            .push(object);
    }
    for ((privilege, keyword, grantee), objects) in batches {
        b.plan.steps.push(Step {
            phase: Phase::Transaction,
            object: format!("{} objects", objects.len()),
            what: format!("{grantee} may {privilege} them again (as before apply)"),
            sql: format!(
                "GRANT {privilege} ON {keyword} {} TO {grantee};",
                objects.join(", ")
            ),
        });
    }
    b.plan.steps.push(Step {
        phase: Phase::Transaction,
        object: "schema rlsgate".into(),
        what: "drop the record of revoked privileges".into(),
        sql: format!("DROP TABLE {RECORD_TABLE};"),
    });
}
