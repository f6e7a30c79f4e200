//! `pg_cancel_backend` / `pg_terminate_backend`, scoped to the tenant's own backends.
//!
//! Every backend runs as rlsgate's one upstream role, and PostgreSQL lets a role cancel
//! or end its own backends: unscoped, a tenant could cancel or end any other tenant's
//! session. Drivers and test suites end a connection of their own this way, so such
//! calls in client SQL are rewritten: the pid argument `x` becomes
//! `(SELECT p FROM (SELECT (x)::int4 AS p) s WHERE p = ANY(<pids>))`, where `<pids>` are,
//! in session mode, the backends of this tenant's open sessions right now and, in
//! transaction mode, the one server bound for this transaction (so
//! `pg_terminate_backend(pg_backend_pid())` works, a pid from an earlier transaction
//! does not). Any other pid becomes NULL, and both functions return NULL for NULL without
//! doing anything. Calls in DO bodies, functions or dynamic SQL are refused by the guard.

use pg_query::protobuf;
use serde_json::Value;

use crate::sql::channels::{apply, first_argument, Edit, Refusal};

/// The functions this module scopes.
pub const FUNCTIONS: [&str; 2] = ["pg_cancel_backend", "pg_terminate_backend"];

/// True when `sql` may call one of [`FUNCTIONS`] (quick lexical test).
pub fn mentioned(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    lower.contains("_backend") || lower.contains("u&")
}

/// `sql` with the pid argument of every call scoped to `pids`, or `None` when it makes no
/// such call.
pub fn scope_sql(sql: &str, pids: &[i32]) -> Result<Option<String>, Refusal> {
    let Ok(parsed) = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) else {
        return Ok(None);
    };
    let calls = call_sites(&parsed.protobuf);
    if calls.is_empty() {
        return Ok(None);
    }
    if sql.contains('\\') {
        return Err(refusal("the statement contains a backslash"));
    }
    let tokens = pg_query::scan_tokens(sql).map_err(|e| refusal(&e.to_string()))?;
    let list = format!(
        "'{{{}}}'::int4[]",
        pids.iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut edits = Vec::new();
    for location in &calls {
        let Some((start, end, _)) = first_argument(&tokens, *location) else {
            return Err(refusal("no pid argument"));
        };
        edits.push(Edit {
            start,
            end: start,
            text: "(SELECT p FROM (SELECT (".into(),
        });
        edits.push(Edit {
            start: end,
            end,
            text: format!(")::int4 AS p) rlsgate_s WHERE p = ANY({list}))"),
        });
    }
    let rewritten = apply(sql, edits);
    // The edits must leave the same calls, each now with the scoped argument.
    let again = pg_query::parse(&rewritten, pg_query::ParserOptions::DEFAULT)
        .map_err(|_| refusal("the rewritten text does not parse"))?;
    if call_sites(&again.protobuf).len() != calls.len() {
        return Err(refusal("the rewritten text differs"));
    }
    Ok(Some(rewritten))
}

fn refusal(why: &str) -> Refusal {
    Refusal {
        code: "0A000",
        message: format!(
            "rlsgate: cannot scope pg_cancel_backend/pg_terminate_backend to this tenant's \
             sessions ({why})"
        ),
    }
}

/// Locations of the calls, one per call site (the parser may share an expression).
fn call_sites(parsed: &protobuf::ParseResult) -> Vec<usize> {
    let mut out = Vec::new();
    for raw in &parsed.stmts {
        if let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) {
            if let Ok(tree) = serde_json::to_value(node) {
                find(&tree, &mut out);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn find(value: &Value, out: &mut Vec<usize>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| find(v, out)),
        Value::Object(map) => {
            if map.contains_key("funcname") && map.contains_key("agg_within_group") {
                let name = map["funcname"]
                    .as_array()
                    .and_then(|n| n.last())
                    .and_then(|n| n.pointer("/node/String/sval"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if FUNCTIONS.contains(&name) {
                    let location = map.get("location").and_then(Value::as_i64).unwrap_or(0);
                    out.push(location.max(0) as usize);
                }
            }
            map.values().for_each(|v| find(v, out));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_arguments_are_scoped_to_the_given_backends() {
        assert_eq!(
            scope_sql("SELECT pg_terminate_backend($1)", &[11, 12]).unwrap(),
            Some(
                "SELECT pg_terminate_backend((SELECT p FROM (SELECT ($1)::int4 AS p) \
                 rlsgate_s WHERE p = ANY('{11,12}'::int4[])))"
                    .into()
            )
        );
        let got = scope_sql(
            "select pg_catalog.pg_cancel_backend(pid) from t; SELECT pg_terminate_backend(f(1, 2), 5000)",
            &[],
        )
        .unwrap()
        .unwrap();
        assert!(
            got.contains("pg_cancel_backend((SELECT p FROM (SELECT (pid)::int4"),
            "{got}"
        );
        assert!(
            got.contains(
                "(SELECT (f(1, 2))::int4 AS p) rlsgate_s WHERE p = ANY('{}'::int4[])), 5000)"
            ),
            "{got}"
        );
        assert_eq!(scope_sql("SELECT 1", &[1]).unwrap(), None);
        assert!(scope_sql("SELECT pg_terminate_backend()", &[1]).is_err());
    }
}
