//! PL/pgSQL bodies: wraps them for `pg_query::parse_plpgsql` and collects the SQL they
//! embed (every `PLpgSQL_expr`, with the raw parse mode PL/pgSQL itself would use),
//! marking the strings that `EXECUTE` runs as dynamic SQL.

use pg_query::protobuf::{a_const, AExprKind, Node};
use pg_query::{NodeEnum, ParserOptions};
use serde_json::Value;

/// One piece of SQL inside a body.
pub(super) struct Fragment {
    pub(super) query: String,
    /// Raw parse mode: 0 a statement, 2 an expression, 3..=5 an assignment (`x := ...`).
    pub(super) mode: i32,
    /// The expression computes SQL text that `EXECUTE` runs.
    pub(super) dynamic: bool,
}

/// What a function returns decides how its body can be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FunctionKind {
    Plain,
    Trigger,
    EventTrigger,
}

impl FunctionKind {
    /// From a CreateFunctionStmt in its JSON form.
    pub(super) fn of(stmt: &Value) -> FunctionKind {
        let name = stmt
            .pointer("/return_type/names")
            .and_then(Value::as_array)
            .and_then(|names| names.last())
            .and_then(|n| n.pointer("/node/String/sval"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_lowercase();
        match name.as_str() {
            "trigger" => FunctionKind::Trigger,
            "event_trigger" => FunctionKind::EventTrigger,
            _ => FunctionKind::Plain,
        }
    }
}

/// Statements whose expression in the given field is SQL text to run.
const DYNAMIC: [(&str, &str); 4] = [
    ("PLpgSQL_stmt_dynexecute", "query"),
    ("PLpgSQL_stmt_dynfors", "query"),
    ("PLpgSQL_stmt_return_query", "dynquery"),
    ("PLpgSQL_stmt_open", "dynquery"),
];

/// The SQL in a `DO` body; `None` if PL/pgSQL cannot parse it.
pub(super) fn do_block(body: &str) -> Option<Vec<Fragment>> {
    fragments(&wrap(body, "void"))
}

/// The SQL in a function body; `statement` is the whole CREATE FUNCTION, whose parameters
/// and return type PL/pgSQL needs (`RETURN x` is an error in a void function).
pub(super) fn function(statement: &str, body: &str, kind: FunctionKind) -> Option<Vec<Fragment>> {
    match kind {
        FunctionKind::Plain => fragments(statement).or_else(|| fragments(&wrap(body, "void"))),
        FunctionKind::EventTrigger => fragments(&wrap(body, "void")),
        // libpg_query 18 writes malformed JSON for trigger functions (its NEW/OLD and TG_*
        // datums; pganalyze/libpg_query#337), so parse the body inside a record function
        // that declares NEW and OLD itself. The body is a block that may or may not end in
        // ';', and PL/pgSQL has no empty statement: exactly one of the endings parses.
        FunctionKind::Trigger => ["\nEND", "\n;END"]
            .iter()
            .find_map(|end| fragments(&wrap_trigger(body, end))),
    }
}

fn wrap(body: &str, returns: &str) -> String {
    format!(
        "CREATE FUNCTION rlsgate_body() RETURNS {returns} LANGUAGE plpgsql AS {}",
        dollar_quote(body)
    )
}

fn wrap_trigger(body: &str, end: &str) -> String {
    let block = format!("DECLARE new record; old record;\nBEGIN\n{body}{end}");
    wrap(&block, "record")
}

/// `$tag$body$tag$` with a tag that does not occur in the body, so the body cannot end the
/// quote early.
fn dollar_quote(body: &str) -> String {
    let tag = (0u32..)
        .map(|n| format!("rlsgate{n}"))
        .find(|tag| !body.contains(&format!("${tag}")))
        .unwrap_or_default();
    format!("${tag}${body}${tag}$")
}

fn fragments(source: &str) -> Option<Vec<Fragment>> {
    let tree = pg_query::parse_plpgsql(source).ok()?;
    // No function found means nothing was checked: treat it as a failure, not as clean.
    if tree.as_array().is_none_or(Vec::is_empty) {
        return None;
    }
    let mut out = Vec::new();
    collect(&tree, false, &mut out);
    Some(out)
}

fn collect(value: &Value, dynamic: bool, out: &mut Vec<Fragment>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| collect(item, dynamic, out)),
        Value::Object(map) => {
            for (key, child) in map {
                if key == "PLpgSQL_expr" {
                    out.extend(fragment(child, dynamic));
                } else if let Some((_, field)) = DYNAMIC.iter().find(|(stmt, _)| stmt == key) {
                    collect_statement(child, field, out);
                } else {
                    collect(child, false, out);
                }
            }
        }
        _ => {}
    }
}

fn collect_statement(stmt: &Value, dynamic_field: &str, out: &mut Vec<Fragment>) {
    if let Some(map) = stmt.as_object() {
        for (field, child) in map {
            collect(child, field == dynamic_field, out);
        }
    }
}

fn fragment(expr: &Value, dynamic: bool) -> Option<Fragment> {
    let query = expr.get("query")?.as_str()?.to_owned();
    let mode = expr.get("parseMode").and_then(Value::as_i64).unwrap_or(0);
    Some(Fragment {
        query,
        mode: i32::try_from(mode).unwrap_or(-1),
        dynamic,
    })
}

/// The SQL an `EXECUTE` expression denotes when it is a string literal or literals joined
/// with `||` (`EXECUTE 'SET app.' || 'current_tenant = 1'`).
pub(super) fn literal_sql(expr: &str) -> Option<String> {
    let parsed = pg_query::parse(expr, ParserOptions::PLPGSQL_EXPR).ok()?;
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return None;
    };
    let NodeEnum::SelectStmt(select) = raw.stmt.as_ref()?.node.as_ref()? else {
        return None;
    };
    let [target] = select.target_list.as_slice() else {
        return None;
    };
    let NodeEnum::ResTarget(target) = target.node.as_ref()? else {
        return None;
    };
    fold_string(target.val.as_deref()?)
}

fn fold_string(node: &Node) -> Option<String> {
    match node.node.as_ref()? {
        NodeEnum::AConst(c) => match c.val.as_ref()? {
            a_const::Val::Sval(s) => Some(s.sval.clone()),
            _ => None,
        },
        NodeEnum::TypeCast(cast) => fold_string(cast.arg.as_deref()?),
        NodeEnum::AExpr(e) if e.kind == AExprKind::AexprOp as i32 && is_concat(&e.name) => {
            let left = fold_string(e.lexpr.as_deref()?)?;
            Some(left + &fold_string(e.rexpr.as_deref()?)?)
        }
        _ => None,
    }
}

fn is_concat(name: &[Node]) -> bool {
    matches!(name.last().and_then(|n| n.node.as_ref()), Some(NodeEnum::String(s)) if s.sval == "||")
}
