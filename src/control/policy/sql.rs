//! SQL text building blocks: identifier and literal quoting, qualified table names.
//!
//! Everything that ends up in generated SQL goes through [`quote_ident`] or
//! [`quote_literal`]; nothing from a policy file or the catalog is formatted in raw.

use std::fmt;

/// Reserved key words (PostgreSQL's "reserved" and "reserved (can be function or type)"
/// columns): an identifier spelled like one of these must be quoted.
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

/// Quotes `name` as an SQL identifier when it needs it (like PostgreSQL's
/// `quote_ident`): lower-case names of letters, digits and `_` that are not reserved
/// words stay bare; anything else is double-quoted with `"` doubled.
pub fn quote_ident(name: &str) -> String {
    let simple = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if simple && !RESERVED.contains(&name) {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Quotes `value` as an SQL string literal (`E'...'` when it holds a backslash, so the
/// result means the same whatever `standard_conforming_strings` is).
pub fn quote_literal(value: &str) -> String {
    let doubled = value.replace('\'', "''");
    if doubled.contains('\\') {
        format!("E'{}'", doubled.replace('\\', "\\\\"))
    } else {
        format!("'{doubled}'")
    }
}

/// Quotes each name and joins them with `, `.
pub fn ident_list<S: AsRef<str>>(names: &[S]) -> String {
    names
        .iter()
        .map(|n| quote_ident(n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A schema-qualified relation name, as spelled in the catalog (case-sensitive).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl QualifiedName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// Parses `schema.name` or `name` (schema `public`). Names are taken literally:
    /// no quoting, no case folding; a name containing `.` is not supported.
    pub fn parse(text: &str) -> Option<Self> {
        let parts: Vec<&str> = text.split('.').collect();
        match parts.as_slice() {
            [name] if !name.is_empty() => Some(Self::new("public", *name)),
            [schema, name] if !schema.is_empty() && !name.is_empty() => {
                Some(Self::new(*schema, *name))
            }
            _ => None,
        }
    }

    /// `schema.name` without quoting, for messages.
    pub fn plain(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// Quoted `schema.name`, ready for SQL text.
impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            quote_ident(&self.schema),
            quote_ident(&self.name)
        )
    }
}

/// An object name of at most 63 bytes (PostgreSQL truncates longer names), built from
/// `parts` joined with `_`, cut at a character boundary.
pub fn object_name(parts: &[&str]) -> String {
    let mut name = parts.join("_");
    if name.len() > 63 {
        let mut cut = 63;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_only_when_needed() {
        assert_eq!(quote_ident("customers"), "customers");
        assert_eq!(quote_ident("tenant_id2"), "tenant_id2");
        assert_eq!(quote_ident("Customers"), "\"Customers\"");
        assert_eq!(quote_ident("user"), "\"user\"");
        assert_eq!(quote_ident("order"), "\"order\"");
        assert_eq!(quote_ident("2fa"), "\"2fa\"");
        assert_eq!(quote_ident("a b"), "\"a b\"");
        assert_eq!(quote_ident("x\"; DROP"), "\"x\"\"; DROP\"");
        assert_eq!(quote_ident(""), "\"\"");
    }

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(quote_literal("acme"), "'acme'");
        assert_eq!(quote_literal("o'brien"), "'o''brien'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
        assert_eq!(
            quote_literal("'; DROP TABLE x; --"),
            "'''; DROP TABLE x; --'"
        );
    }

    #[test]
    fn qualified_names_parse_and_quote() {
        let t = QualifiedName::parse("sales.Order").unwrap();
        assert_eq!(t, QualifiedName::new("sales", "Order"));
        assert_eq!(t.to_string(), "sales.\"Order\"");
        assert_eq!(
            QualifiedName::parse("customers").unwrap().to_string(),
            "public.customers"
        );
        assert!(QualifiedName::parse("a.b.c").is_none());
        assert!(QualifiedName::parse(".x").is_none());
        assert!(QualifiedName::parse("").is_none());
    }

    #[test]
    fn object_names_are_truncated_to_63_bytes() {
        let long = "x".repeat(70);
        assert_eq!(object_name(&[&long, "idx"]).len(), 63);
        assert_eq!(object_name(&["a", "b", "idx"]), "a_b_idx");
        let multibyte = "é".repeat(40);
        assert!(object_name(&[&multibyte]).len() <= 63);
    }
}
