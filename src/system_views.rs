//! Tenant-scoped system views: a client's read of `pg_stat_activity`, `pg_locks`,
//! `pg_stat_ssl` or `pg_stat_gssapi` is rewritten to read `rlsgate.<same name>`
//! (policies/sealed.sql), which shows only the backends that hold the caller's sealed
//! tenant (`rlsgate.backend_context`), as if the client had the database to itself.
//!
//! Every backend runs as rlsgate's one upstream role, so the raw views would show every
//! tenant's sessions and statement text. The rewrite touches relation references in the
//! parse tree (unqualified or `pg_catalog.`-qualified); anything else that names the raw
//! views (dynamic SQL, function bodies) is still refused by the guard, and `rlsgate
//! policy apply` revokes the raw views and the functions behind them from the app role,
//! so the database refuses what both miss.

use pg_query::protobuf::{self, Token};
use serde_json::Value;

use crate::channels::{apply, Edit, Refusal};

/// The views rewritten to their tenant-scoped versions in schema `rlsgate`.
pub const SCOPED: [&str; 4] = [
    "pg_stat_activity",
    "pg_locks",
    "pg_stat_ssl",
    "pg_stat_gssapi",
];

/// True when `sql` may name one of [`SCOPED`] (quick lexical test, no allocation: it
/// runs on every statement; `u&` for Unicode-escaped identifiers).
pub fn mentioned(sql: &str) -> bool {
    let b = sql.as_bytes();
    (0..b.len()).any(|i| {
        let rest = &b[i..];
        let at =
            |word: &[u8]| rest.len() >= word.len() && rest[..word.len()].eq_ignore_ascii_case(word);
        (rest[0] | 0x20 == b'p' && SCOPED.iter().any(|v| at(v.as_bytes()))) || at(b"u&")
    })
}

/// A reference to a scoped view: where its name is, and whether it was qualified.
struct Reference {
    location: usize,
    relname: String,
    qualified: bool,
}

/// `sql` with every reference to a raw scoped view moved to `rlsgate`, or `None` when
/// it has none.
pub fn scope_sql(sql: &str) -> Result<Option<String>, Refusal> {
    let Ok(parsed) = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) else {
        return Ok(None); // the guard and the server refuse it
    };
    let refs = references(&parsed.protobuf);
    if refs.is_empty() {
        return Ok(None);
    }
    if sql.contains('\\') {
        // With standard_conforming_strings off the server would read the text otherwise.
        return Err(refusal("the statement contains a backslash"));
    }
    let tokens = pg_query::scan_tokens(sql).map_err(|e| refusal(&e.to_string()))?;
    let mut edits = Vec::new();
    for r in &refs {
        let Some(first) = tokens.iter().position(|t| t.start as usize == r.location) else {
            return Err(refusal("the view name was not found"));
        };
        let last = if r.qualified {
            let dot = tokens.get(first + 1);
            if dot.is_none_or(|t| t.token != Token::Ascii46 as i32) {
                return Err(refusal("unexpected qualified name"));
            }
            first + 2
        } else {
            first
        };
        let Some(name) = tokens.get(last) else {
            return Err(refusal("the view name was not found"));
        };
        let (start, end) = (tokens[first].start as usize, name.end as usize);
        let written = sql.get(name.start as usize..end).unwrap_or_default();
        if written.trim_matches('"').to_ascii_lowercase() != r.relname {
            return Err(refusal("the view is named in a way rlsgate cannot rewrite"));
        }
        edits.push(Edit {
            start,
            end,
            text: format!("rlsgate.{}", r.relname),
        });
    }
    let rewritten = apply(sql, edits);
    let again = pg_query::parse(&rewritten, pg_query::ParserOptions::DEFAULT)
        .map_err(|_| refusal("the rewritten text does not parse"))?;
    if !references(&again.protobuf).is_empty() {
        return Err(refusal("the rewritten text still reads a raw view"));
    }
    Ok(Some(rewritten))
}

fn refusal(why: &str) -> Refusal {
    Refusal {
        code: "0A000",
        message: format!(
            "rlsgate: cannot scope this read of a session view to this tenant's sessions \
             ({why})"
        ),
    }
}

/// References to the raw scoped views (unqualified or in `pg_catalog`).
fn references(parsed: &protobuf::ParseResult) -> Vec<Reference> {
    let mut out = Vec::new();
    for raw in &parsed.stmts {
        if let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) {
            if let Ok(tree) = serde_json::to_value(node) {
                find(&tree, &mut out);
            }
        }
    }
    out.sort_by_key(|r| r.location);
    out.dedup_by_key(|r| r.location);
    out
}

fn find(value: &Value, out: &mut Vec<Reference>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| find(v, out)),
        Value::Object(map) => {
            if map.contains_key("relname") && map.contains_key("relpersistence") {
                let field = |k: &str| map.get(k).and_then(Value::as_str).unwrap_or_default();
                let relname = field("relname").to_owned();
                let schema = field("schemaname");
                let raw_schema = schema.is_empty() || schema == "pg_catalog";
                if SCOPED.contains(&relname.as_str())
                    && raw_schema
                    && field("catalogname").is_empty()
                {
                    let location = map.get("location").and_then(Value::as_i64).unwrap_or(0);
                    out.push(Reference {
                        location: location.max(0) as usize,
                        relname,
                        qualified: !schema.is_empty(),
                    });
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

    fn scoped(sql: &str) -> String {
        scope_sql(sql).unwrap().unwrap()
    }

    #[test]
    fn references_move_to_the_scoped_views() {
        assert_eq!(
            scoped("SELECT pid, state FROM pg_stat_activity WHERE datname = current_database()"),
            "SELECT pid, state FROM rlsgate.pg_stat_activity WHERE datname = current_database()"
        );
        assert_eq!(
            scoped(
                "select count(*) from PG_CATALOG . \"pg_locks\" l join pg_stat_ssl s using (pid)"
            ),
            "select count(*) from rlsgate.pg_locks l join rlsgate.pg_stat_ssl s using (pid)"
        );
        assert_eq!(
            scoped("SELECT 1 WHERE EXISTS (SELECT FROM pg_stat_gssapi); TABLE pg_stat_activity"),
            "SELECT 1 WHERE EXISTS (SELECT FROM rlsgate.pg_stat_gssapi); TABLE rlsgate.pg_stat_activity"
        );
        // Column references through the relation name keep working: same relation name.
        assert_eq!(
            scoped("SELECT pg_stat_activity.pid FROM pg_stat_activity"),
            "SELECT pg_stat_activity.pid FROM rlsgate.pg_stat_activity"
        );
    }

    #[test]
    fn mentions_are_found_in_any_case() {
        assert!(mentioned("select * from PG_Locks"));
        assert!(mentioned("select * from U&\"x\""));
        assert!(!mentioned("select * from pg_class"));
        assert!(!mentioned(""));
    }

    #[test]
    fn other_texts_are_left_alone_or_refused() {
        assert_eq!(scope_sql("SELECT 'pg_stat_activity'").unwrap(), None);
        assert_eq!(
            scope_sql("SELECT * FROM rlsgate.pg_stat_activity").unwrap(),
            None
        );
        assert_eq!(scope_sql("SELECT * FROM other.pg_locks").unwrap(), None);
        assert_eq!(scope_sql("not sql at all pg_locks").unwrap(), None);
        assert!(scope_sql("SELECT E'\\x' FROM pg_stat_activity").is_err());
        // A Unicode-escaped name is not rewritten in place: refused, not passed raw.
        assert!(scope_sql("SELECT * FROM U&\"pg_stat_activit\\0079\"").is_err());
    }
}
