//! Applies the guard's rules to parsed SQL.
//!
//! Each statement's protobuf tree is walked in its serde (JSON) form, so every node and
//! every field is visited whatever its type. `pg_query`'s own `ParseResult::nodes()` is not
//! enough for a security check: it skips, among others, LIMIT/OFFSET expressions and VALUES
//! lists. Nodes of interest are recognised by shape where they can appear as plain struct
//! fields (a `RangeVar` as an INSERT target, the `VariableSetStmt` inside ALTER ROLE, the
//! `FuncCall` of CALL), and by their node tag otherwise.

use std::mem;

use pg_query::protobuf::{DiscardMode, ParseResult, VariableSetKind};
use pg_query::ParserOptions;
use serde_json::{Map, Value};

use super::json::{
    classify, def_elem, last_name, shape, statement_text, str_field, strings_of, Arg, Shape,
};
use super::plpgsql::{self, Fragment, FunctionKind};
use super::policy::{self, Mention, Policy};
use super::Rule;

/// Bodies inside bodies (a DO block that EXECUTEs a literal that creates a function ...)
/// are followed this deep; deeper nesting is refused rather than half-checked.
const MAX_DEPTH: u8 = 6;

/// A refusal before it is turned into the client-facing message.
#[derive(Debug)]
pub(super) struct Finding {
    pub(super) rule: Rule,
    pub(super) detail: String,
}

/// When the SQL being walked will run, which decides the rule a finding is reported under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scope {
    /// Now, in the client's session: top level, DO bodies, EXECUTE of a literal there.
    Session,
    /// Later, stored in a function or procedure: its body and its SET clause.
    Definition,
    /// As a role, database or system default (ALTER ROLE/DATABASE/SYSTEM ... SET).
    Stored,
}

pub(super) struct Walker<'p> {
    policy: &'p Policy,
    scope: Scope,
    depth: u8,
    /// Inside CREATE VIEW: a view over pg_settings can be updated to change settings.
    in_view: bool,
    /// Inside SQL that runs later, not as this statement (PREPARE, CREATE RULE,
    /// DECLARE CURSOR, CREATE VIEW).
    deferred: bool,
    /// RESET ALL / DISCARD ALL will run: the proxy must re-apply the tenant context.
    pub(super) reapply: bool,
}

impl<'p> Walker<'p> {
    pub(super) fn new(policy: &'p Policy, scope: Scope, depth: u8) -> Self {
        Walker {
            policy,
            scope,
            depth,
            in_view: false,
            deferred: false,
            reapply: false,
        }
    }

    /// Parses `sql` in raw parse `mode` (0 for top-level SQL, 2..=5 for PL/pgSQL
    /// expressions and assignments) and checks every statement in it.
    pub(super) fn check_text(&mut self, sql: &str, mode: i32) -> Result<(), Finding> {
        match pg_query::parse(sql, mode) {
            Ok(parsed) => self.check_statements(sql, &parsed.protobuf)?,
            // Nothing will run: the server uses the same grammar and rejects the text with its
            // own syntax error. Only if its grammar differs (another major version) could it
            // run something, so text that touches protected things is refused.
            Err(_) => self.unverifiable(sql)?,
        }
        if sql.contains('\\') {
            // With standard_conforming_strings = off (a client SET, pg_settings, or the server
            // default) a backslash escapes a quote in '' literals and the server splits the
            // text differently. Check that reading as well; if it does not parse, a server in
            // that mode rejects the text too.
            let off =
                ParserOptions::from(mode) | ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS;
            if let Ok(parsed) = pg_query::parse(sql, off) {
                self.check_statements(sql, &parsed.protobuf)?;
            }
        }
        Ok(())
    }

    fn check_statements(&mut self, sql: &str, parsed: &ParseResult) -> Result<(), Finding> {
        for raw in &parsed.stmts {
            let Some(stmt) = raw.stmt.as_deref() else {
                continue;
            };
            // Fails only on a serializer bug; fail closed.
            let tree = serde_json::to_value(stmt)
                .map_err(|_| self.refuse(Rule::Unparsable, "cannot verify statement"))?;
            self.visit(&tree, statement_text(sql, raw))?;
        }
        Ok(())
    }

    fn visit(&mut self, value: &Value, text: &str) -> Result<(), Finding> {
        match value {
            Value::Array(items) => items.iter().try_for_each(|item| self.visit(item, text)),
            Value::Object(map) => self.visit_object(map, text),
            _ => Ok(()),
        }
    }

    fn visit_object(&mut self, map: &Map<String, Value>, text: &str) -> Result<(), Finding> {
        let shape = shape(map);
        match shape {
            Some(Shape::FuncCall) => self.func_call(map)?,
            Some(Shape::RangeVar) => self.range_var(map)?,
            Some(Shape::VariableSet) => self.variable_set(map)?,
            None => {}
        }
        for (key, child) in map {
            // A called function's name was judged by func_call; it is no bare reference.
            if matches!(shape, Some(Shape::FuncCall)) && key == "funcname" {
                continue;
            }
            self.visit_entry(key, child, text)?;
        }
        Ok(())
    }

    fn visit_entry(&mut self, key: &str, child: &Value, text: &str) -> Result<(), Finding> {
        match key {
            // Column names are no function references (`SELECT t.set_config FROM t`).
            "ColumnRef" => Ok(()),
            "String" => self.identifier(child),
            "DoStmt" => self.do_stmt(child),
            "DiscardStmt" => self.discard(child),
            "CreateFunctionStmt" => self.create_function(child, text),
            "AlterFunctionStmt" => self.scoped(Scope::Definition, child, text),
            // Any setting: a role's or database's defaults reach every tenant's future
            // connections (`default_transaction_read_only`, `search_path`, ...).
            "AlterRoleSetStmt" | "AlterDatabaseSetStmt" | "AlterSystemStmt" => Err(self.refuse(
                Rule::AlterRoleSetting,
                "changing the settings of a role, a database or the server is not allowed \
                     (they would apply to every tenant's connections)",
            )),
            "UpdateStmt" | "MergeStmt" | "InsertStmt" | "DeleteStmt" => {
                self.settings_target(child)?;
                self.visit(child, text)
            }
            "ViewStmt" => {
                let outer = mem::replace(&mut self.in_view, true);
                let deferred = mem::replace(&mut self.deferred, true);
                let result = self.visit(child, text);
                self.in_view = outer;
                self.deferred = deferred;
                result
            }
            "PrepareStmt" | "RuleStmt" | "DeclareCursorStmt" => {
                let outer = mem::replace(&mut self.deferred, true);
                let result = self.visit(child, text);
                self.deferred = outer;
                result
            }
            _ => self.visit(child, text),
        }
    }

    /// Walks `child` as SQL stored for later; a definition stays a definition.
    fn scoped(&mut self, scope: Scope, child: &Value, text: &str) -> Result<(), Finding> {
        let outer = self.scope;
        if outer != Scope::Definition {
            self.scope = scope;
        }
        let result = self.visit(child, text);
        self.scope = outer;
        result
    }

    /// SET / SET LOCAL / RESET / SET ROLE / SET SESSION AUTHORIZATION, and the SET inside
    /// ALTER ROLE/DATABASE/SYSTEM and CREATE/ALTER FUNCTION.
    fn variable_set(&mut self, map: &Map<String, Value>) -> Result<(), Finding> {
        let kind = map.get("kind").and_then(Value::as_i64).unwrap_or_default();
        let name = str_field(map, "name").to_lowercase();
        if kind == VariableSetKind::VarResetAll as i64 {
            return self.reset_all("RESET ALL");
        }
        if self.policy.is_owned(&name) {
            return Err(self.refuse(
                Rule::ProtectedSetting,
                format!("changing {name} is not allowed"),
            ));
        }
        if policy::is_role_setting(&name) {
            return self.role_change(&name);
        }
        let value = map.get("args").and_then(|args| args.get(0));
        if name == "client_encoding" && kind == VariableSetKind::VarSetValue as i64 {
            return self.client_encoding(value);
        }
        Ok(())
    }

    fn reset_all(&mut self, what: &str) -> Result<(), Finding> {
        match self.scope {
            Scope::Session => {
                self.reapply = true;
                Ok(())
            }
            // Resets role defaults, not the session.
            Scope::Stored => Ok(()),
            Scope::Definition => Err(self.refuse(
                Rule::ProtectedSetting,
                format!("{what} inside a function would drop the tenant context"),
            )),
        }
    }

    fn role_change(&self, name: &str) -> Result<(), Finding> {
        if self.policy.allow_set_role && self.scope != Scope::Stored {
            return Ok(());
        }
        let what = name.replace('_', " ");
        Err(self.refuse(Rule::RoleChange, format!("changing {what} is not allowed")))
    }

    fn client_encoding(&self, value: Option<&Value>) -> Result<(), Finding> {
        // Only where the session sees it happen: a statement of its own, now (not in a
        // function, DO block, view, rule, cursor or PREPARE that runs later, unseen, and
        // would make the server read the next message in an encoding the guard does not).
        if self.scope != Scope::Session || self.depth > 0 || self.deferred {
            return Err(self.refuse(
                Rule::ProtectedSetting,
                "changing client_encoding is allowed only as a statement of its own (SET \
                 client_encoding, SET NAMES, SELECT set_config(...)), not inside functions, \
                 DO blocks, views, rules, cursors or PREPARE",
            ));
        }
        // Only a constant naming an allowed encoding: the session predicts the change
        // from the constants of the statement (crate::sql::encoding::changes_of).
        match value.map(classify) {
            Some(Arg::Text(encoding)) if policy::is_unsafe_encoding(&encoding) => {}
            Some(Arg::Text(_)) | None => return Ok(()),
            Some(Arg::OtherConstant | Arg::Dynamic) => {}
        }
        Err(self.refuse(
            Rule::ProtectedSetting,
            "changing client_encoding to an encoding that can hide quotes (or to a value that \
             is not a constant encoding name) is not allowed; use UTF8",
        ))
    }

    fn func_call(&mut self, map: &Map<String, Value>) -> Result<(), Finding> {
        let name = last_name(map.get("funcname"));
        let lower = name.to_lowercase();
        if crate::sql::backend_calls::FUNCTIONS.contains(&lower.as_str())
            && self.policy.scoped_backend_calls
            && self.depth == 0
            && self.scope == Scope::Session
        {
            return Ok(()); // the proxy scopes the pid argument (backend_calls)
        }
        if self.policy.is_denied_function(&name) {
            let what = if super::denied_functions().contains(&name.to_lowercase().as_str()) {
                format!(
                    "calling {name} is not allowed: every backend belongs to the shared \
                     upstream role, so it would reach other tenants' sessions"
                )
            } else {
                format!("reading {name} is not allowed")
            };
            return Err(self.refuse(Rule::DeniedRelation, what));
        }
        if !self.policy.allow_large_objects && super::is_large_object_function(&lower) {
            return Err(self.refuse(
                Rule::LargeObject,
                format!(
                    "calling {name} is not allowed: large objects belong to the shared upstream \
                     role, so every tenant could read and change them (guard.allow_large_objects)"
                ),
            ));
        }
        let args = map.get("args").and_then(Value::as_array);
        let variadic = map.get("func_variadic").and_then(Value::as_bool) == Some(true);
        if let Some(reach) = super::sql_text_function(&lower, args.map_or(0, Vec::len)) {
            return self.sql_text_call(&name, reach, args, variadic);
        }
        if name != "set_config" {
            return Ok(());
        }
        let first = args.and_then(|a| a.first()).map(classify);
        match first {
            Some(Arg::Text(setting)) if !variadic => {
                self.set_config_of(&setting, args.and_then(|a| a.get(1)))
            }
            Some(Arg::OtherConstant) if !variadic => Ok(()),
            _ => Err(self.refuse(
                Rule::DynamicSetConfig,
                "set_config with a setting name that is not a constant cannot be verified",
            )),
        }
    }

    /// A built-in that runs SQL it is given as text (`query_to_xml`, `ts_stat`, ...) or
    /// reads a relation or schema it is given by name (`table_to_xml`, `schema_to_xml`):
    /// a constant is checked as the statement it runs (so the guard and the rewrites'
    /// refusals apply: the rewrite of session views does not reach into the text); a
    /// computed argument cannot be verified.
    fn sql_text_call(
        &mut self,
        name: &str,
        reach: super::Reach,
        args: Option<&Vec<Value>>,
        variadic: bool,
    ) -> Result<(), Finding> {
        let (index, what) = match reach {
            super::Reach::Query(i) => (i, "query"),
            super::Reach::Relation => (0, "relation"),
            super::Reach::Schema => (0, "schema"),
        };
        let arg = args.and_then(|a| a.get(index)).map(classify);
        let Some(Arg::Text(text)) = arg.filter(|_| !variadic) else {
            return Err(self.refuse(
                Rule::DynamicSetConfig,
                format!("{name} with a {what} that is not a constant cannot be verified"),
            ));
        };
        match reach {
            super::Reach::Query(_) => {
                // The rewrite of session views does not reach into the text: a raw one
                // there would show other tenants' sessions where the database does not
                // revoke it.
                if crate::sql::system_views::reads_raw_view(&text) {
                    return Err(self.refuse(
                        Rule::DeniedRelation,
                        format!("{name} of a query that reads a session view is not allowed"),
                    ));
                }
                self.deeper(|w| w.check_text(&text, 0))
            }
            super::Reach::Relation if text.trim().bytes().all(|b| b.is_ascii_digit()) => {
                // A relation by OID cannot be checked by name.
                Err(self.refuse(
                    Rule::DeniedRelation,
                    format!("{name} of a relation given by OID cannot be verified"),
                ))
            }
            super::Reach::Relation => {
                let relname = text
                    .rsplit('.')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .trim_matches('"')
                    .to_lowercase();
                let scoped = crate::sql::system_views::SCOPED.contains(&relname.as_str());
                if scoped || self.policy.is_denied_relation(&relname) {
                    return Err(self.refuse(
                        Rule::DeniedRelation,
                        format!("reading {relname} through {name} is not allowed"),
                    ));
                }
                Ok(())
            }
            super::Reach::Schema => {
                let schema = text.trim().trim_matches('"').to_lowercase();
                let system = schema.starts_with("pg_")
                    || schema == "information_schema"
                    || schema == "rlsgate";
                if system {
                    return Err(self.refuse(
                        Rule::DeniedRelation,
                        format!("reading schema {schema} through {name} is not allowed"),
                    ));
                }
                Ok(())
            }
        }
    }

    fn set_config_of(&mut self, setting: &str, value: Option<&Value>) -> Result<(), Finding> {
        let setting = setting.trim().to_lowercase();
        if self.policy.is_owned(&setting) {
            return Err(self.refuse(
                Rule::SetConfigCall,
                format!("set_config of {setting} is not allowed"),
            ));
        }
        if policy::is_role_setting(&setting) {
            return self.role_change(&setting);
        }
        if setting == "client_encoding" {
            return self.client_encoding(value);
        }
        Ok(())
    }

    /// A function named by an identifier rather than called: `CREATE AGGREGATE ...
    /// (SFUNC = set_config, INITCOND = 'app.current_tenant')` calls it with any value.
    fn identifier(&self, string: &Value) -> Result<(), Finding> {
        let name = string
            .get("sval")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !name.eq_ignore_ascii_case("set_config") {
            return Ok(());
        }
        Err(self.refuse(
            Rule::SetConfigCall,
            "referring to set_config other than by calling it is not allowed",
        ))
    }

    fn range_var(&self, map: &Map<String, Value>) -> Result<(), Finding> {
        let relname = str_field(map, "relname").to_lowercase();
        let scoped = str_field(map, "schemaname") == "rlsgate"
            && crate::sql::system_views::SCOPED.contains(&relname.as_str());
        if self.policy.is_denied_relation(&relname) && !scoped {
            return Err(self.refuse(
                Rule::DeniedRelation,
                format!("reading {relname} is not allowed"),
            ));
        }
        if self.in_view && relname == "pg_settings" {
            return Err(self.refuse(
                Rule::SetConfigCall,
                "a view over pg_settings can change settings and is not allowed",
            ));
        }
        Ok(())
    }

    /// `UPDATE pg_settings SET setting = ...` runs set_config through the view's rule.
    fn settings_target(&self, stmt: &Value) -> Result<(), Finding> {
        let relname = stmt.pointer("/relation/relname").and_then(Value::as_str);
        if !relname.is_some_and(|r| r.eq_ignore_ascii_case("pg_settings")) {
            return Ok(());
        }
        Err(self.refuse(Rule::SetConfigCall, "changing pg_settings is not allowed"))
    }

    fn discard(&mut self, stmt: &Value) -> Result<(), Finding> {
        let target = stmt.get("target").and_then(Value::as_i64);
        if target == Some(DiscardMode::DiscardAll as i64) {
            return self.reset_all("DISCARD ALL");
        }
        Ok(())
    }

    fn do_stmt(&mut self, stmt: &Value) -> Result<(), Finding> {
        if self.policy.refuse_do_blocks {
            return Err(self.refuse(Rule::DoBlock, "DO blocks are not allowed"));
        }
        let args = stmt.get("args");
        let body = def_elem(args, "as")
            .map(strings_of)
            .unwrap_or_default()
            .join("\n");
        let language = def_elem(args, "language")
            .map(strings_of)
            .unwrap_or_default();
        match language.first().map(|l| l.to_lowercase()).as_deref() {
            None | Some("plpgsql") => self.check_body(&body, plpgsql::do_block(&body)),
            Some(_) => self.opaque_body(&body, Rule::DoBlock),
        }
    }

    fn create_function(&mut self, stmt: &Value, text: &str) -> Result<(), Finding> {
        let outer = mem::replace(&mut self.scope, Scope::Definition);
        let result = self
            .visit(stmt, text)
            .and_then(|()| self.function_body(stmt, text));
        self.scope = outer;
        result
    }

    /// The body given as a string (`AS '...'`); a standard SQL body (`BEGIN ATOMIC`) is
    /// part of the tree and already walked.
    fn function_body(&mut self, stmt: &Value, text: &str) -> Result<(), Finding> {
        let options = stmt.get("options");
        let Some(body) = def_elem(options, "as").map(strings_of) else {
            return Ok(());
        };
        let body = body.join("\n");
        let language = def_elem(options, "language")
            .map(strings_of)
            .unwrap_or_default();
        match language.first().map(|l| l.to_lowercase()).as_deref() {
            None | Some("sql") => self.deeper(|w| w.check_text(&body, 0)),
            Some("plpgsql") => {
                let kind = FunctionKind::of(stmt);
                self.check_body(&body, plpgsql::function(text, &body, kind))
            }
            Some(_) => self.opaque_body(&body, Rule::Unparsable),
        }
    }

    /// Checks the SQL embedded in a PL/pgSQL body; `None` when the body did not parse.
    fn check_body(&mut self, body: &str, fragments: Option<Vec<Fragment>>) -> Result<(), Finding> {
        let Some(fragments) = fragments else {
            return self.unverifiable(body);
        };
        if body.contains('\\') {
            // PL/pgSQL scans the body with the server's standard_conforming_strings; the
            // guard parsed it with the setting on. See check_text.
            self.unverifiable(body)?;
        }
        self.deeper(|w| fragments.iter().try_for_each(|f| w.fragment(f)))
    }

    fn fragment(&mut self, fragment: &Fragment) -> Result<(), Finding> {
        if !matches!(fragment.mode, 0 | 2..=5) {
            return Ok(()); // a type name
        }
        self.check_text(&fragment.query, fragment.mode)?;
        if fragment.dynamic {
            self.dynamic_sql(&fragment.query)?;
        }
        Ok(())
    }

    /// `EXECUTE <expr>`: a literal (or literals joined with `||`) is checked as SQL;
    /// anything computed is invisible here, which the sealed context covers, unless it
    /// plainly mentions something protected.
    fn dynamic_sql(&mut self, expr: &str) -> Result<(), Finding> {
        if let Some(sql) = plpgsql::literal_sql(expr) {
            return self.deeper(|w| w.check_text(&sql, 0));
        }
        match self.policy.mention(expr) {
            None => Ok(()),
            Some(Mention::Setting(word)) => Err(self.refuse(
                Rule::DynamicSetConfig,
                format!("dynamic SQL that mentions {word} cannot be verified"),
            )),
            Some(Mention::Relation(word)) => Err(self.refuse(
                Rule::DeniedRelation,
                format!("dynamic SQL that mentions {word} is not allowed"),
            )),
        }
    }

    /// A body in a language the guard cannot parse (plpython, C ...).
    fn opaque_body(&self, body: &str, rule: Rule) -> Result<(), Finding> {
        match self.policy.mention(body) {
            None => Ok(()),
            Some(Mention::Setting(word) | Mention::Relation(word)) => Err(self.refuse(
                rule,
                format!("cannot verify code in another language that mentions {word}"),
            )),
        }
    }

    fn unverifiable(&self, text: &str) -> Result<(), Finding> {
        match self.policy.mention(text) {
            None => Ok(()),
            Some(Mention::Setting(word) | Mention::Relation(word)) => Err(self.refuse(
                Rule::Unparsable,
                format!("cannot verify a statement that mentions {word}"),
            )),
        }
    }

    fn deeper(&mut self, f: impl FnOnce(&mut Self) -> Result<(), Finding>) -> Result<(), Finding> {
        if self.depth >= MAX_DEPTH {
            return Err(self.refuse(Rule::Unparsable, "cannot verify SQL nested this deep"));
        }
        self.depth += 1;
        let result = f(self);
        self.depth -= 1;
        result
    }

    /// A finding under the rule that fits where the SQL will run.
    fn refuse(&self, rule: Rule, detail: impl Into<String>) -> Finding {
        let detail = detail.into();
        match (self.scope, rule) {
            (Scope::Definition, rule) if rule != Rule::DeniedRelation => Finding {
                rule: Rule::FunctionBody,
                detail: format!("function definition: {detail}"),
            },
            (Scope::Stored, Rule::ProtectedSetting | Rule::RoleChange) => Finding {
                rule: Rule::AlterRoleSetting,
                detail: format!("ALTER ROLE/DATABASE/SYSTEM: {detail}"),
            },
            _ => Finding { rule, detail },
        }
    }
}
