//! Whether a statement text provably leaves no session state behind on its server: the
//! test that lets transaction pooling hand a server to the next session without a
//! full reset (`tenant::SWITCH_RESET`).
//!
//! Clean means: every statement is a SELECT, INSERT, UPDATE, DELETE, MERGE, COPY, SHOW,
//! NOTIFY, transaction control or EXPLAIN of those, without `SELECT ... INTO`, and every function
//! it calls by name is a built-in on the list below (none of which can change a setting,
//! take a session lock, listen, or create an object). Anything else (SET, DDL, DO,
//! user-defined or unknown functions, texts that do not parse) is not clean. Functions a
//! statement reaches without naming them (triggers, column defaults, operators, views)
//! are the database owner's code; a tenant role without CREATE on a persistent schema
//! cannot plant one (`rlsgate doctor` checks that).

use pg_query::protobuf::node::Node;
use serde_json::Value;

/// Built-in functions that cannot change session state.
const PURE_FUNCTIONS: &[&str] = &[
    "abs",
    "age",
    "array_agg",
    "array_length",
    "array_position",
    "array_to_string",
    "avg",
    "bool_and",
    "bool_or",
    "btrim",
    "ceil",
    "ceiling",
    "char_length",
    "character_length",
    "concat",
    "concat_ws",
    "count",
    "cume_dist",
    "current_date",
    "date_part",
    "date_trunc",
    "dense_rank",
    "every",
    "exp",
    "extract",
    "first_value",
    "floor",
    "format",
    "gen_random_uuid",
    "generate_series",
    "greatest",
    "initcap",
    "jsonb_agg",
    "jsonb_array_elements",
    "jsonb_array_length",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "jsonb_object_agg",
    "jsonb_set",
    "jsonb_typeof",
    "json_agg",
    "json_array_elements",
    "json_build_array",
    "json_build_object",
    "json_extract_path",
    "json_extract_path_text",
    "json_object_agg",
    "lag",
    "last_value",
    "lead",
    "least",
    "left",
    "length",
    "ln",
    "log",
    "lower",
    "lpad",
    "ltrim",
    "make_date",
    "make_interval",
    "make_timestamp",
    "make_timestamptz",
    "max",
    "md5",
    "min",
    "mod",
    "now",
    "nth_value",
    "ntile",
    "nullif",
    "octet_length",
    "percent_rank",
    "percentile_cont",
    "percentile_disc",
    "position",
    "power",
    "random",
    "rank",
    "regexp_match",
    "regexp_matches",
    "regexp_replace",
    "regexp_split_to_array",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "row_number",
    "row_to_json",
    "rpad",
    "rtrim",
    "sign",
    "split_part",
    "sqrt",
    "statement_timestamp",
    "stddev",
    "string_agg",
    "string_to_array",
    "strpos",
    "substr",
    "substring",
    "sum",
    "timezone",
    "to_char",
    "to_date",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "transaction_timestamp",
    "trim",
    "trunc",
    "unnest",
    "upper",
    "variance",
    "clock_timestamp",
    "coalesce",
    "date",
    "int4",
    "int8",
    "numeric",
    "text",
    // Read-only catalog and session information.
    "current_setting",
    "current_database",
    "current_schema",
    "current_schemas",
    "pg_backend_pid",
    // Queues a notification sent at commit (LISTEN, which does leave state, is not here).
    "pg_notify",
    "version",
    "pg_typeof",
    "to_regclass",
    "to_regtype",
    "format_type",
    "array_lower",
    "array_upper",
    "cardinality",
    "encode",
    "decode",
    "sha256",
    "has_table_privilege",
    "has_schema_privilege",
    "pg_get_expr",
    "obj_description",
    "col_description",
    "pg_postmaster_start_time",
    "txid_current",
    "pg_current_xact_id",
];

/// Without parsing: one statement (no `;` but trailing ones) that starts with a keyword
/// of a clean kind and contains no `(`, so it calls no function by name. Anything else
/// goes to [`is_clean`].
pub fn plain_dml(sql: &str) -> bool {
    const FIRST: &[&str] = &[
        "select",
        "insert",
        "update",
        "delete",
        "values",
        "table",
        "show",
        "begin",
        "start",
        "commit",
        "end",
        "rollback",
        "abort",
        "savepoint",
        "release",
        "fetch",
        "move",
        "close",
    ];
    let body = sql.trim_end_matches(|c: char| c == ';' || c.is_ascii_whitespace());
    if body.contains(['(', ';']) {
        return false;
    }
    let first: String = body
        .trim_start()
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    FIRST.contains(&first.as_str())
}

/// See the module documentation.
pub fn is_clean(sql: &str) -> bool {
    let Ok(parsed) = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) else {
        return false;
    };
    parsed.protobuf.stmts.iter().all(|raw| {
        raw.stmt
            .as_ref()
            .and_then(|s| s.node.as_ref())
            .is_some_and(|node| clean_kind(node) && calls_only_pure_functions(node))
    })
}

fn clean_kind(node: &Node) -> bool {
    match node {
        Node::SelectStmt(s) => s.into_clause.is_none(),
        Node::InsertStmt(_)
        | Node::UpdateStmt(_)
        | Node::DeleteStmt(_)
        | Node::MergeStmt(_)
        | Node::CopyStmt(_)
        | Node::VariableShowStmt(_)
        | Node::NotifyStmt(_)
        | Node::TransactionStmt(_) => true,
        Node::ExplainStmt(e) => e
            .query
            .as_ref()
            .and_then(|q| q.node.as_ref())
            .is_some_and(clean_kind),
        _ => false,
    }
}

fn calls_only_pure_functions(node: &Node) -> bool {
    serde_json::to_value(node).is_ok_and(|tree| pure(&tree))
}

fn pure(value: &Value) -> bool {
    match value {
        Value::Array(items) => items.iter().all(pure),
        Value::Object(map) => {
            if map.contains_key("funcname") && map.contains_key("agg_within_group") {
                let names: Vec<&str> = map["funcname"]
                    .as_array()
                    .map(|names| {
                        names
                            .iter()
                            .filter_map(|n| n.pointer("/node/String/sval").and_then(Value::as_str))
                            .collect()
                    })
                    .unwrap_or_default();
                let known = match names[..] {
                    [name] | ["pg_catalog", name] => PURE_FUNCTIONS.contains(&name),
                    _ => false,
                };
                if !known {
                    return false;
                }
            }
            map.values().all(pure)
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::{is_clean, plain_dml};

    #[test]
    fn the_fast_test_takes_only_single_plain_statements() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            "  update t set x = 1 where id = 2;",
            "BEGIN",
            "END;",
        ] {
            assert!(plain_dml(sql), "{sql}");
        }
        for sql in [
            "CREATE VIEW customers AS SELECT * FROM public.customers",
            "SELECT 1; CREATE VIEW v AS SELECT 1",
            "SELECT count(*) FROM t",
            "LOAD 'x'",
            "-- comment\nSELECT 1",
        ] {
            assert!(!plain_dml(sql), "{sql}");
        }
    }

    #[test]
    fn plain_statements_are_clean_and_anything_else_is_not() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
             VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP)",
            "BEGIN; SELECT count(*), lower(name) FROM customers; COMMIT",
            "SELECT $1::int + 1",
            "SELECT coalesce(max(id), 0) FROM t WHERE x IN (1, 2) LIMIT 5",
            "SHOW search_path",
            "EXPLAIN SELECT 1",
            "NOTIFY jobs, 'x'",
            "SELECT pg_notify('jobs', $1)",
        ] {
            assert!(is_clean(sql), "{sql}");
        }
        for sql in [
            "SET search_path = pg_temp",
            "SELECT set_config('search_path', 'pg_temp', false)",
            "SELECT my_function()",
            "SELECT public.lower('x')",
            "SELECT 1 LIMIT (SELECT count(*) FROM f())",
            "CREATE VIEW v AS SELECT 1",
            "CREATE TABLE pg_temp_3.t (a int)",
            "SELECT 1 INTO t",
            "DO $$ BEGIN END $$",
            "LISTEN x",
            "SELECT pg_advisory_lock(1)",
            "not sql",
        ] {
            assert!(!is_clean(sql), "{sql}");
        }
    }
}
