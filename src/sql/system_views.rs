//! Tenant-scoped system views: a client's read of `pg_stat_activity`, `pg_locks`,
//! `pg_stat_ssl`, `pg_stat_gssapi`, `pg_prepared_statements` or `pg_cursors` is
//! rewritten to read what the client would see if it had the database to itself.
//!
//! - With the sealed context, `rlsgate.<same name>` (policies/sealed.sql): the backends
//!   that hold the caller's sealed tenant (`rlsgate.backend_context`) for the first
//!   four; the caller's own backend's statements and cursors for the last two.
//! - Transaction mode, `pg_prepared_statements`: the pooled server holds the statements
//!   of every client of the tenant under keyed names (`prepared`), so the read becomes a
//!   list of the client's own statements, under its own names, built by the proxy
//!   ([`Scope::Rows`], [`prepared_statements_rows`]), sealed or not.
//!
//! Every backend runs as rlsgate's one upstream role, so the raw views would show every
//! tenant's sessions and statement text. The rewrite touches relation references in the
//! parse tree (unqualified or `pg_catalog.`-qualified); anything else that names the raw
//! views (dynamic SQL, function bodies) is still refused by the guard, and `rlsgate
//! policy apply` revokes the raw views and the functions behind them from the app role,
//! so the database refuses what both miss.

use std::fmt::Write as _;

use pg_query::protobuf::{self, Token};
use serde_json::Value;

use crate::sql::channels::{apply, Edit, Refusal};

/// The views rewritten to their tenant-scoped versions in schema `rlsgate`.
pub const SCOPED: [&str; 6] = [
    "pg_stat_activity",
    "pg_locks",
    "pg_stat_ssl",
    "pg_stat_gssapi",
    "pg_prepared_statements",
    "pg_cursors",
];

/// What a read of one of the [`SCOPED`] views becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// `rlsgate.<name>`.
    Schema,
    /// A parenthesised query with the view's columns (named as the view is unless the
    /// client gave an alias).
    Rows(String),
}

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

/// True when `sql` parses and reads one of the raw [`SCOPED`] views (unqualified or in
/// `pg_catalog`): text the rewrite cannot reach (an argument of `query_to_xml`).
pub fn reads_raw_view(sql: &str) -> bool {
    pg_query::parse(sql, pg_query::ParserOptions::DEFAULT)
        .is_ok_and(|parsed| !references(&parsed.protobuf).is_empty())
}

/// A reference to a scoped view: where its name is, whether it was qualified and
/// whether the client gave it an alias.
struct Reference {
    location: usize,
    relname: String,
    qualified: bool,
    aliased: bool,
}

/// `sql` with every reference to a raw scoped view replaced as `scope` says (`None`:
/// left as it is), or `None` when nothing was replaced.
pub fn scope_sql(
    sql: &str,
    scope: impl Fn(&str) -> Option<Scope>,
) -> Result<Option<String>, Refusal> {
    let Ok(parsed) = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) else {
        return Ok(None); // the guard and the server refuse it
    };
    let mut refs = references(&parsed.protobuf);
    let scopes: Vec<Scope> = refs.iter().filter_map(|r| scope(&r.relname)).collect();
    refs.retain(|r| scope(&r.relname).is_some());
    if refs.is_empty() {
        return Ok(None);
    }
    if sql.contains('\\') {
        // With standard_conforming_strings off the server would read the text otherwise.
        return Err(refusal("the statement contains a backslash"));
    }
    let tokens = pg_query::scan_tokens(sql).map_err(|e| refusal(&e.to_string()))?;
    let mut edits = Vec::new();
    for (r, how) in refs.iter().zip(&scopes) {
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
        let (mut start, end) = (tokens[first].start as usize, name.end as usize);
        let written = sql.get(name.start as usize..end).unwrap_or_default();
        if written.trim_matches('"').to_ascii_lowercase() != r.relname {
            return Err(refusal("the view is named in a way rlsgate cannot rewrite"));
        }
        let text = match how {
            Scope::Schema => format!("rlsgate.{}", r.relname),
            Scope::Rows(query) => {
                let alias = if r.aliased {
                    String::new()
                } else {
                    format!(" AS {}", r.relname)
                };
                // `TABLE v` is `SELECT * FROM v`, which a subquery needs spelled out.
                let table = first
                    .checked_sub(1)
                    .map(|i| &tokens[i])
                    .filter(|t| t.token == Token::Table as i32);
                let select = match table {
                    Some(t) => {
                        start = t.start as usize;
                        "SELECT * FROM "
                    }
                    None => "",
                };
                format!("{select}({query}){alias}")
            }
        };
        edits.push(Edit { start, end, text });
    }
    let rewritten = apply(sql, edits);
    let again = pg_query::parse(&rewritten, pg_query::ParserOptions::DEFAULT)
        .map_err(|_| refusal("the view is read in a way rlsgate cannot rewrite"))?;
    if references(&again.protobuf)
        .iter()
        .any(|r| scope(&r.relname).is_some())
    {
        return Err(refusal("the rewritten text still reads a raw view"));
    }
    Ok(Some(rewritten))
}

/// One prepared statement of the client's, as `pg_prepared_statements` shows it.
pub struct PreparedRow<'a> {
    pub name: &'a str,
    pub statement: &'a str,
    pub prepare_time: std::time::SystemTime,
    /// The parameter types the client gave (0: left to the server to infer).
    pub parameter_types: &'a [u32],
}

/// A query with `pg_prepared_statements`' columns (PostgreSQL 15) listing `rows`:
/// protocol-level statements (`from_sql` false), plan counts 0 (the pooled servers'
/// counts are not the client's).
pub fn prepared_statements_rows<'a>(rows: impl Iterator<Item = PreparedRow<'a>>) -> String {
    let mut sql = String::from(
        "SELECT * FROM (VALUES (NULL::pg_catalog.text, NULL::pg_catalog.text, \
         NULL::pg_catalog.timestamptz, NULL::pg_catalog.regtype[], NULL::pg_catalog.bool, \
         NULL::pg_catalog.int8, NULL::pg_catalog.int8)",
    );
    for row in rows {
        let time = humantime::format_rfc3339_micros(row.prepare_time);
        let types = row
            .parameter_types
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let _ = write!(
            sql,
            ", ({}, {}, '{time}', '{{{types}}}'::pg_catalog.oid[]::pg_catalog.regtype[], false, 0, 0)",
            dollar_quoted(row.name),
            dollar_quoted(row.statement),
        );
    }
    sql.push_str(
        ") AS prepared(name, statement, prepare_time, parameter_types, from_sql, \
         generic_plans, custom_plans) WHERE name IS NOT NULL",
    );
    sql
}

/// `text` as a dollar-quoted literal (read the same whatever
/// `standard_conforming_strings` is) with a tag that does not occur in it.
fn dollar_quoted(text: &str) -> String {
    let mut tag = String::from("$rlsgate$");
    let mut n = 0u32;
    while text.contains(&tag[..tag.len() - 1]) {
        n += 1;
        tag = format!("$rlsgate{n}$");
    }
    format!("{tag}{text}{tag}")
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
                        aliased: map.get("alias").is_some_and(|a| !a.is_null()),
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

    fn to_schema(_: &str) -> Option<Scope> {
        Some(Scope::Schema)
    }

    fn scoped(sql: &str) -> String {
        scope_sql(sql, to_schema).unwrap().unwrap()
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
        assert_eq!(
            scope_sql("SELECT 'pg_stat_activity'", to_schema).unwrap(),
            None
        );
        assert_eq!(
            scope_sql("SELECT * FROM rlsgate.pg_stat_activity", to_schema).unwrap(),
            None
        );
        assert_eq!(
            scope_sql("SELECT * FROM other.pg_locks", to_schema).unwrap(),
            None
        );
        assert_eq!(
            scope_sql("not sql at all pg_locks", to_schema).unwrap(),
            None
        );
        assert!(scope_sql("SELECT E'\\x' FROM pg_stat_activity", to_schema).is_err());
        // A Unicode-escaped name is not rewritten in place: refused, not passed raw.
        assert!(scope_sql("SELECT * FROM U&\"pg_stat_activit\\0079\"", to_schema).is_err());
    }

    #[test]
    fn views_left_alone_by_the_choice_stay_raw() {
        let only_locks = |v: &str| (v == "pg_locks").then_some(Scope::Schema);
        assert_eq!(
            scope_sql("SELECT * FROM pg_cursors, pg_locks", only_locks).unwrap(),
            Some("SELECT * FROM pg_cursors, rlsgate.pg_locks".into())
        );
        assert_eq!(
            scope_sql("SELECT * FROM pg_cursors", only_locks).unwrap(),
            None
        );
    }

    #[test]
    fn rows_replace_the_view_keeping_its_name_or_the_clients_alias() {
        let rows = |_: &str| Some(Scope::Rows("SELECT 1 AS name".into()));
        let scoped = |sql: &str| scope_sql(sql, rows).unwrap().unwrap();
        assert_eq!(
            scoped("SELECT name FROM pg_prepared_statements"),
            "SELECT name FROM (SELECT 1 AS name) AS pg_prepared_statements"
        );
        assert_eq!(
            scoped("SELECT p.name FROM pg_catalog.pg_prepared_statements p"),
            "SELECT p.name FROM (SELECT 1 AS name) p"
        );
        assert_eq!(
            scoped("SELECT x FROM pg_prepared_statements AS p(x)"),
            "SELECT x FROM (SELECT 1 AS name) AS p(x)"
        );
        assert_eq!(
            scoped("table pg_prepared_statements"),
            "SELECT * FROM (SELECT 1 AS name) AS pg_prepared_statements"
        );
        // A form a subquery cannot take is refused, never sent raw.
        assert!(scope_sql("SELECT * FROM ONLY pg_prepared_statements", rows).is_err());
    }

    #[test]
    fn the_statement_list_quotes_any_text() {
        let now = std::time::SystemTime::UNIX_EPOCH;
        let sql = prepared_statements_rows(
            [PreparedRow {
                name: "s'1",
                statement: "SELECT '$rlsgate$', $1 -- \\",
                prepare_time: now,
                parameter_types: &[23, 0],
            }]
            .into_iter(),
        );
        assert!(
            sql.contains("$rlsgate1$SELECT '$rlsgate$', $1 -- \\$rlsgate1$"),
            "{sql}"
        );
        assert!(sql.contains("$rlsgate$s'1$rlsgate$"), "{sql}");
        assert!(sql.contains("'1970-01-01T00:00:00.000000Z'"), "{sql}");
        assert!(sql.contains("'{23,0}'::pg_catalog.oid[]"), "{sql}");
        pg_query::parse(&sql, pg_query::ParserOptions::DEFAULT).expect("parses");
        let empty = prepared_statements_rows(std::iter::empty());
        pg_query::parse(&empty, pg_query::ParserOptions::DEFAULT).expect("parses");
    }
}
