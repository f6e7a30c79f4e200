//! Reading pg_query's parse tree in its serde (JSON) form: node shapes and small accessors.

use pg_query::protobuf::RawStmt;
use serde_json::{Map, Value};

/// Node kinds recognised by their fields, wherever they appear.
pub(super) enum Shape {
    FuncCall,
    RangeVar,
    VariableSet,
}

/// The first argument of `set_config`, or the value of a SET, as far as the guard can tell.
pub(super) enum Arg {
    Text(String),
    OtherConstant,
    Dynamic,
}

/// Recognises FuncCall, RangeVar and VariableSetStmt by fields only they have, so they are
/// found both as tagged nodes and as plain struct fields (an INSERT target, ALTER ROLE's SET).
pub(super) fn shape(map: &Map<String, Value>) -> Option<Shape> {
    if map.contains_key("funcname") && map.contains_key("agg_within_group") {
        Some(Shape::FuncCall)
    } else if map.contains_key("relname") && map.contains_key("relpersistence") {
        Some(Shape::RangeVar)
    } else if map.contains_key("jumble_args") && map.contains_key("is_local") {
        Some(Shape::VariableSet)
    } else {
        None
    }
}

/// The source text of one statement of a multi-statement string (for `parse_plpgsql`,
/// which needs the whole CREATE FUNCTION).
pub(super) fn statement_text<'s>(sql: &'s str, raw: &RawStmt) -> &'s str {
    let start = usize::try_from(raw.stmt_location).unwrap_or(0);
    let end = match usize::try_from(raw.stmt_len) {
        Ok(0) | Err(_) => sql.len(),
        Ok(len) => start.saturating_add(len),
    };
    sql.get(start..end).unwrap_or(sql)
}

/// `{"node": {"Tag": body}}` → `("Tag", body)`.
pub(super) fn node_of(value: &Value) -> Option<(&str, &Value)> {
    let (tag, body) = value.get("node")?.as_object()?.iter().next()?;
    Some((tag.as_str(), body))
}

pub(super) fn classify(arg: &Value) -> Arg {
    match node_of(arg) {
        Some(("AConst", c)) => match c.pointer("/val/Sval/sval").and_then(Value::as_str) {
            Some(text) => Arg::Text(text.to_owned()),
            None => Arg::OtherConstant,
        },
        Some(("TypeCast", c)) => c.get("arg").map_or(Arg::Dynamic, classify),
        _ => Arg::Dynamic,
    }
}

pub(super) fn str_field<'v>(map: &'v Map<String, Value>, key: &str) -> &'v str {
    map.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// Lower-cased last part of a qualified name list (`pg_catalog.set_config` → `set_config`).
pub(super) fn last_name(names: Option<&Value>) -> String {
    names
        .and_then(Value::as_array)
        .and_then(|names| names.last())
        .and_then(|n| n.pointer("/node/String/sval"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_lowercase()
}

/// The `arg` of the DefElem called `name` in a list of options.
pub(super) fn def_elem<'v>(options: Option<&'v Value>, name: &str) -> Option<&'v Value> {
    options?.as_array()?.iter().find_map(|option| {
        let (_, elem) = node_of(option).filter(|(tag, _)| *tag == "DefElem")?;
        let defname = elem.get("defname").and_then(Value::as_str)?;
        defname
            .eq_ignore_ascii_case(name)
            .then(|| elem.get("arg"))?
    })
}

/// The strings of a DefElem argument: one String node or a List of them.
pub(super) fn strings_of(arg: &Value) -> Vec<String> {
    match node_of(arg) {
        Some(("String", s)) => s
            .get("sval")
            .and_then(Value::as_str)
            .into_iter()
            .map(str::to_owned)
            .collect(),
        Some(("List", list)) => list
            .get("items")
            .and_then(Value::as_array)
            .map(|items| items.iter().flat_map(strings_of).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}
