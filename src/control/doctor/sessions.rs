//! Cross-session reach of the shared app role: every tenant's session runs as one role,
//! so a function that role may call on "its own" sessions (cancel or end a backend),
//! a view that shows them (pids, prepared statements, cursors, locks) or a large object
//! it owns is one tenant's way into another's. `rlsgate policy apply` revokes them;
//! this reports what is still usable. `pg_stat_activity` and `pg_stat_statements` are
//! reported by `stats`.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use super::{Context, Finding, Severity};
use crate::control::policy::catalog::{grants, GrantState};
use crate::control::policy::hardening::{revokes_with, Group, Kind, TARGETS};
use crate::control::policy::sql::quote_ident;
use crate::control::policy::DbError;

pub async fn check(client: &Client, ctx: &Context) -> Result<Vec<Finding>, DbError> {
    let Some(app) = ctx.app_name() else {
        return Ok(Vec::new());
    };
    let mut open: BTreeMap<Group, Vec<GrantState>> = BTreeMap::new();
    for g in grants(client, TARGETS, Some(app)).await? {
        let group = g.target.group;
        let ours = matches!(
            group,
            Group::Signals | Group::Sessions | Group::LargeObjects
        );
        if ours && g.app_effective && revokes_with(&ctx.settings.hardening, group) {
            open.entry(group).or_default().push(g);
        }
    }
    Ok(open
        .into_iter()
        .map(|(group, objects)| finding(app, group, &objects))
        .collect())
}

fn finding(app: &str, group: Group, objects: &[GrantState]) -> Finding {
    let (check, object, why) = match group {
        Group::Signals => (
            "backend-signals-executable",
            "function pg_catalog.pg_terminate_backend",
            format!(
                "`{app}` may call pg_cancel_backend / pg_terminate_backend: every tenant's \
                 session is a backend of that same role, so any tenant can cancel or end any \
                 other's (a pid from pg_stat_ssl or pg_locks, a call hidden in a view or an \
                 operator is enough)"
            ),
        ),
        Group::LargeObjects => (
            "large-objects-usable",
            "function pg_catalog.lo_get",
            format!(
                "`{app}` may use the large-object functions: all tenants share one owner \
                 role, so any tenant can read, change or delete any tenant's large objects \
                 (set [hardening] large_objects = \"allow\" in the policy file to accept this)"
            ),
        ),
        _ => (
            "session-views-readable",
            "view pg_catalog.pg_locks",
            format!(
                "`{app}` may read views and functions that show other sessions of its role \
                 (pids to signal, prepared statements and cursors of a shared server \
                 session, locks, prepared transactions, progress): every tenant's"
            ),
        ),
    };
    let mut fix =
        vec!["-- in every database, as a superuser (or `rlsgate policy apply`):".to_owned()];
    for kind in [Kind::Function, Kind::View] {
        let list: Vec<&str> = objects
            .iter()
            .filter(|g| g.target.kind == kind)
            .map(|g| g.object.as_str())
            .collect();
        if !list.is_empty() {
            fix.push(format!(
                "REVOKE {} ON {} {} FROM PUBLIC, {};",
                kind.privilege(),
                kind.keyword(),
                list.join(", "),
                quote_ident(app)
            ));
        }
    }
    let names: Vec<&str> = objects
        .iter()
        .map(|g| {
            g.object
                .rsplit_once('.')
                .map_or(g.object.as_str(), |(_, n)| n)
        })
        .collect();
    Finding::new(
        Severity::Error,
        check,
        object,
        format!("{why}; still open: {}", names.join(", ")),
        fix.join("\n"),
    )
}
