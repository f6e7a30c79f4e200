//! What the proxy must know about a client's SQL before forwarding it: the tenant
//! guard's verdict, the session effects (`SET`, `RESET`, `RESET ALL`, `DISCARD ALL`)
//! and, for transaction pooling, features that cannot work across transactions.
//! Results are cached by statement text, so a repeated statement costs one hash lookup.
//! The text is the message's bytes read as the server reads them, in the session's
//! client encoding ([`crate::sql::encoding`]): decoded (SJIS, GBK, UHC) before it is parsed
//! and cached, or byte-for-char in the ASCII-safe encodings.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pg_query::protobuf::{self, OnCommitAction, VariableSetKind};
use pg_query::NodeRef;

use crate::config::PoolMode;
use crate::sql::encoding::{Changes, Encoding, Malformed, Reading};
use crate::sql::guard::{self, Guard};
use crate::wire::protocol::{self, frontend as fe};

mod clean;
mod shape;

/// Cached analyses kept before the cache is emptied (a crude but bounded policy).
const CACHE_LIMIT: usize = 20_000;

/// Statements longer than this are analysed but not cached.
const CACHE_MAX_SQL: usize = 64 * 1024;

/// Decision for one Query or Parse message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Allowed, but the tenant context must be re-applied right after it.
    AllowReapply,
    /// Refused with this SQLSTATE and message.
    Refuse {
        code: &'static str,
        message: String,
    },
}

/// A session-level change the statement makes (outside `SET LOCAL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `SET name ...`: the statement text, to replay on another server.
    Set {
        name: String,
        sql: String,
    },
    Reset(String),
    ResetAll,
    /// `DISCARD ALL` / `DEALLOCATE ALL`: the server drops every prepared statement.
    DeallocateAll,
}

/// Everything known about one SQL text.
#[derive(Debug)]
pub struct Analysis {
    pub guard: guard::Verdict,
    pub effects: Vec<Effect>,
    /// A feature that needs one server for the whole session.
    pub session_only: Option<&'static str>,
    /// The text may name a LISTEN/NOTIFY channel (see `crate::sql::channels`).
    pub channels: bool,
    /// Provably leaves no session state on its server ([`clean::is_clean`]); a server
    /// that ran anything else is reset before another session gets it.
    pub clean: bool,
    /// The client encodings the text may switch the session to.
    pub encoding: Changes,
}

/// Lower-case substrings without which a statement can neither touch a setting, a role
/// or session state, nor read a denied relation: every guard rule, session effect and
/// session-only feature needs one of them in its text (`set` covers `SET`, `RESET`,
/// `set_config`, `SET ROLE`, `pg_settings`; `u&` Unicode-escaped identifiers; a
/// backslash the `standard_conforming_strings` trick). A statement with none of them,
/// owned setting names and denied relations included, is allowed without parsing.
const TRIGGERS: &[&str] = &[
    "set",
    "do",
    "function",
    "procedure",
    "alter",
    "role",
    "authorization",
    "discard",
    "deallocate",
    "listen",
    "notify",
    "hold",
    "advisory",
    "temp",
    "prepare",
    "execute",
    "pg_stat",
    // Built-ins that run SQL given as text or read what a text names (`guard`).
    "_to_xml",
    "ts_stat",
    "ts_rewrite",
    "u&",
    "\\",
];

/// The guard plus the analysis cache.
pub struct Inspector {
    guard: Option<Guard>,
    mode: PoolMode,
    cache: Mutex<HashMap<Box<str>, Arc<Analysis>>>,
    /// Analyses without session effects by statement shape (numbers replaced, see
    /// [`shape`]); kept apart from `cache`, whose effects carry the exact text.
    shapes: Mutex<HashMap<Box<str>, Arc<Analysis>>>,
    /// Extra trigger words: owned setting names and denied relations (lower-case).
    names: Vec<String>,
    /// The shared "nothing to see" analysis of the fast path.
    plain: Arc<Analysis>,
}

impl Inspector {
    /// `guard` is `None` when `[guard] enabled = false`.
    /// `names`: owned setting names and denied relations (any case).
    pub fn new(guard: Option<Guard>, mode: PoolMode, names: &[String]) -> Inspector {
        Inspector {
            guard,
            mode,
            cache: Mutex::new(HashMap::new()),
            shapes: Mutex::new(HashMap::new()),
            names: names.iter().map(|n| n.to_ascii_lowercase()).collect(),
            plain: Arc::new(Analysis {
                guard: guard::Verdict::Allow,
                effects: Vec::new(),
                session_only: None,
                channels: false,
                clean: true,
                encoding: Changes::default(),
            }),
        }
    }

    /// True when `sql` contains any trigger word and must be parsed.
    fn needs_parse(&self, sql: &str) -> bool {
        let lower = sql.to_ascii_lowercase();
        TRIGGERS.iter().any(|t| lower.contains(t))
            || self.names.iter().any(|n| lower.contains(n.as_str()))
    }

    pub fn guard(&self) -> Option<&Guard> {
        self.guard.as_ref()
    }

    /// Analyses `sql` (cached).
    pub fn analyse(&self, sql: &str) -> Arc<Analysis> {
        if let Some(a) = self.cache.lock().expect("inspect cache poisoned").get(sql) {
            return a.clone();
        }
        let full = self.needs_parse(sql);
        if !full && clean::plain_dml(sql) {
            // No trigger word, one DML statement, no function call: nothing to check.
            // Not cached: statements with inlined literals would only churn the cache.
            return self.plain.clone();
        }
        let shape = shape::shape(sql).filter(|s| s.len() <= CACHE_MAX_SQL);
        if let Some(key) = &shape {
            let shapes = self.shapes.lock().expect("inspect cache poisoned");
            if let Some(a) = shapes.get(key.as_str()) {
                return a.clone();
            }
        }
        // Without a trigger word only cleanliness needs the parser (function calls).
        let effects_of = if full { effects(sql) } else { Vec::new() };
        let analysis = Arc::new(Analysis {
            guard: match &self.guard {
                Some(g) if full => g.check(sql),
                _ => guard::Verdict::Allow,
            },
            effects: effects_of.clone(),
            session_only: if full && self.mode == PoolMode::Transaction {
                session_only(sql)
            } else {
                None
            },
            channels: full && mentions_channels(sql),
            clean: self.mode != PoolMode::Transaction || clean::is_clean(sql),
            encoding: if full {
                encoding_changes(sql, &effects_of)
            } else {
                Changes::default()
            },
        });
        let plain = analysis.effects.is_empty() && analysis.encoding.is_empty();
        if let (Some(key), true) = (shape, plain) {
            // Texts of one shape differ only in numbers: same statements, same verdict.
            insert_bounded(&self.shapes, key.into(), &analysis);
        } else if sql.len() <= CACHE_MAX_SQL {
            insert_bounded(&self.cache, sql.into(), &analysis);
        }
        analysis
    }

    /// The guard's verdict for one Query or Parse message, plus its analysis (whose
    /// `session_only` feature the session pins or refuses, see `pool.session_features`).
    /// The text is read as the server will read it, in the session's client encoding
    /// (`reading`, see [`crate::sql::encoding`]): bytes invalid in it are refused as PostgreSQL
    /// refuses them, and only ASCII text is accepted while the encoding is not known.
    pub fn inspect_message(
        &self,
        tag: u8,
        msg: &[u8],
        reading: &Reading,
    ) -> (Verdict, Option<Arc<Analysis>>) {
        let Some(bytes) = sql_bytes(tag, msg) else {
            // No text: not a Query/Parse, or malformed (PostgreSQL rejects it).
            return (Verdict::Allow, None);
        };
        let enc = match reading {
            Reading::Known(enc) => *enc,
            Reading::Unknown(_) if bytes.is_ascii() => Encoding::Utf8,
            Reading::Unknown(why) => return (refuse("55000", why.clone()), None),
        };
        let sql = match crate::sql::encoding::read(bytes, enc) {
            Ok(sql) => sql,
            Err(bad) => return (refuse(Malformed::SQLSTATE, bad.message()), None),
        };
        let a = self.analyse(&sql.text);
        let verdict = match &a.guard {
            guard::Verdict::Refuse(r) => Verdict::Refuse {
                code: "42501",
                message: r.message.clone(),
            },
            // The remembered text would be replayed in another encoding.
            _ if !sql.utf8
                && self.mode == PoolMode::Transaction
                && a.effects.iter().any(|e| matches!(e, Effect::Set { .. })) =>
            {
                Verdict::Refuse {
                    code: "0A000",
                    message: "rlsgate: a SET whose text is not UTF-8 cannot be carried across \
                              transactions in transaction pooling mode; use client_encoding \
                              UTF8 or ASCII-only SET statements"
                        .into(),
                }
            }
            guard::Verdict::AllowReapply => Verdict::AllowReapply,
            _ if a.effects.contains(&Effect::ResetAll) => Verdict::AllowReapply,
            _ => Verdict::Allow,
        };
        (verdict, Some(a))
    }
}

fn refuse(code: &'static str, message: String) -> Verdict {
    Verdict::Refuse { code, message }
}

/// What `sql` (with session `effects`) may do to `client_encoding`.
fn encoding_changes(sql: &str, effects: &[Effect]) -> Changes {
    let mut changes = crate::sql::encoding::changes_of(sql);
    changes.to_startup = effects.contains(&Effect::ResetAll);
    changes
}

/// True when `sql` may name a notification channel: `LISTEN`, `UNLISTEN`, `NOTIFY`
/// or `pg_notify` (all contain one of the two words, in any case), or a Unicode-escaped
/// identifier (`U&"pg_!006eotify"` spells `pg_notify` without the word).
fn mentions_channels(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    lower.contains("listen") || lower.contains("notify") || lower.contains("u&")
}

/// Inserts into a cache that is emptied when full (a crude but bounded policy).
fn insert_bounded(
    cache: &Mutex<HashMap<Box<str>, Arc<Analysis>>>,
    key: Box<str>,
    a: &Arc<Analysis>,
) {
    let mut cache = cache.lock().expect("inspect cache poisoned");
    if cache.len() >= CACHE_LIMIT {
        cache.clear();
    }
    cache.insert(key, a.clone());
}

pub use crate::sql::encoding::SqlText;

/// The SQL text of a Query or Parse message read in the client encoding `enc` (see
/// [`crate::sql::encoding::read`]); `None` for other messages, malformed ones (no NUL
/// terminator) and bytes invalid in `enc` (which [`Inspector::inspect_message`] refuses).
pub fn sql_of(tag: u8, msg: &[u8], enc: Encoding) -> Option<SqlText<'_>> {
    crate::sql::encoding::read(sql_bytes(tag, msg)?, enc).ok()
}

/// The bytes of the SQL text of a Query or Parse message.
fn sql_bytes(tag: u8, msg: &[u8]) -> Option<&[u8]> {
    let body = protocol::body(msg);
    let start = match tag {
        fe::QUERY => 0,
        fe::PARSE => body.iter().position(|&b| b == 0)? + 1,
        _ => return None,
    };
    let rest = body.get(start..)?;
    Some(&rest[..rest.iter().position(|&b| b == 0)?])
}

/// Top-level statements of `sql` with their source text.
fn statements(sql: &str) -> Vec<(protobuf::node::Node, &str)> {
    let Ok(parsed) = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for raw in parsed.protobuf.stmts {
        let Some(node) = raw.stmt.and_then(|n| n.node) else {
            continue;
        };
        let start = raw.stmt_location.max(0) as usize;
        let end = if raw.stmt_len == 0 {
            sql.len()
        } else {
            start + raw.stmt_len as usize
        };
        let text = sql.get(start..end.min(sql.len())).unwrap_or("").trim();
        out.push((node, text));
    }
    out
}

/// The statement name when `sql` is exactly one `DEALLOCATE [PREPARE] name` (not ALL).
pub fn single_deallocate(sql: &str) -> Option<String> {
    if !sql.to_ascii_lowercase().contains("deallocate") {
        return None;
    }
    let stmts = statements(sql);
    match stmts.as_slice() {
        [(protobuf::node::Node::DeallocateStmt(d), _)] if !d.isall && !d.name.is_empty() => {
            Some(d.name.clone())
        }
        _ => None,
    }
}

/// Session-level effects of the statements in `sql`.
pub fn effects(sql: &str) -> Vec<Effect> {
    let mut out = Vec::new();
    for (node, text) in statements(sql) {
        match node {
            protobuf::node::Node::VariableSetStmt(v) if !v.is_local => {
                let name = v.name.to_ascii_lowercase();
                match VariableSetKind::try_from(v.kind) {
                    Ok(VariableSetKind::VarSetValue | VariableSetKind::VarSetCurrent) => {
                        out.push(Effect::Set {
                            name,
                            sql: text.to_owned(),
                        })
                    }
                    Ok(VariableSetKind::VarSetDefault | VariableSetKind::VarReset) => {
                        out.push(Effect::Reset(name))
                    }
                    Ok(VariableSetKind::VarResetAll) => out.push(Effect::ResetAll),
                    // SET SESSION CHARACTERISTICS AS TRANSACTION ...: the session
                    // defaults default_transaction_{isolation,read_only,deferrable}.
                    Ok(VariableSetKind::VarSetMulti) if name == "session characteristics" => {
                        out.extend(v.args.iter().filter_map(transaction_default));
                    }
                    _ => {}
                }
            }
            protobuf::node::Node::DiscardStmt(d)
                if d.target == protobuf::DiscardMode::DiscardAll as i32 =>
            {
                out.push(Effect::ResetAll);
                out.push(Effect::DeallocateAll);
            }
            protobuf::node::Node::DeallocateStmt(d) if d.isall => out.push(Effect::DeallocateAll),
            _ => {}
        }
    }
    out
}

/// One item of `SET SESSION CHARACTERISTICS AS TRANSACTION` as the equivalent `SET` of
/// its session default (`ISOLATION LEVEL x`, `READ ONLY|WRITE`, `[NOT] DEFERRABLE`).
fn transaction_default(item: &protobuf::Node) -> Option<Effect> {
    let protobuf::node::Node::DefElem(d) = item.node.as_ref()? else {
        return None;
    };
    let protobuf::node::Node::AConst(c) = d.arg.as_ref()?.node.as_ref()? else {
        return None;
    };
    let value = match c.val.as_ref()? {
        protobuf::a_const::Val::Sval(s) => s.sval.clone(),
        protobuf::a_const::Val::Ival(i) => if i.ival != 0 { "on" } else { "off" }.to_owned(),
        protobuf::a_const::Val::Boolval(b) => if b.boolval { "on" } else { "off" }.to_owned(),
        _ => return None,
    };
    let name = match d.defname.as_str() {
        n @ ("transaction_isolation" | "transaction_read_only" | "transaction_deferrable") => {
            format!("default_{n}")
        }
        _ => return None,
    };
    // Values come from the grammar's keywords (no quotes inside).
    let sql = format!("SET {name} = '{value}'");
    Some(Effect::Set { name, sql })
}

/// Name of a feature in `sql` that cannot work when each transaction may run on a
/// different server connection.
pub fn session_only(sql: &str) -> Option<&'static str> {
    let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).ok()?;
    for (node, _, _, _) in parsed.protobuf.nodes() {
        let found = match node {
            NodeRef::ListenStmt(_) => Some("LISTEN"),
            // Dynamic SQL in a DO body cannot be read; a LISTEN anywhere in it pins.
            NodeRef::DoStmt(_) if sql.to_ascii_lowercase().contains("listen") => Some("LISTEN"),
            NodeRef::DeclareCursorStmt(d) if d.options & 0x0020 != 0 => {
                Some("DECLARE ... WITH HOLD")
            }
            NodeRef::PrepareStmt(_) | NodeRef::ExecuteStmt(_) => {
                Some("SQL-level PREPARE/EXECUTE (use protocol-level prepared statements)")
            }
            NodeRef::CreateStmt(c)
                if is_temp(c.relation.as_ref()) && !drops_on_commit(c.oncommit) =>
            {
                Some("a temporary table that outlives its transaction (use ON COMMIT DROP)")
            }
            NodeRef::CreateTableAsStmt(c)
                if c.into
                    .as_ref()
                    .is_some_and(|i| is_temp(i.rel.as_ref()) && !drops_on_commit(i.on_commit)) =>
            {
                Some("a temporary table that outlives its transaction (use ON COMMIT DROP)")
            }
            NodeRef::SelectStmt(sel)
                if sel
                    .into_clause
                    .as_ref()
                    .is_some_and(|i| is_temp(i.rel.as_ref()) && !drops_on_commit(i.on_commit)) =>
            {
                Some("a temporary table that outlives its transaction (use ON COMMIT DROP)")
            }
            NodeRef::ViewStmt(v) if is_temp(v.view.as_ref()) => Some(TEMP_OBJECT),
            NodeRef::CompositeTypeStmt(t) if is_temp(t.typevar.as_ref()) => Some(TEMP_OBJECT),
            NodeRef::CreateEnumStmt(t) if in_pg_temp(&t.type_name) => Some(TEMP_OBJECT),
            NodeRef::CreateRangeStmt(t) if in_pg_temp(&t.type_name) => Some(TEMP_OBJECT),
            NodeRef::DefineStmt(d) if in_pg_temp(&d.defnames) => Some(TEMP_OBJECT),
            NodeRef::CreateSeqStmt(c) if is_temp(c.sequence.as_ref()) => Some(TEMP_OBJECT),
            NodeRef::CreateDomainStmt(d) if in_pg_temp(&d.domainname) => Some(TEMP_OBJECT),
            NodeRef::CreateFunctionStmt(f) if in_pg_temp(&f.funcname) => Some(TEMP_OBJECT),
            NodeRef::FuncCall(f) if is_session_advisory_lock(f) => {
                Some("a session-level advisory lock (use pg_advisory_xact_lock)")
            }
            _ => None,
        };
        if found.is_some() {
            return found;
        }
    }
    // nodes() skips subtrees (VALUES, ARRAY[], RETURNING, LIMIT, FILTER, window
    // clauses) and cannot see into DO bodies: any mention of a session-level lock
    // function pins. A false positive (the name in a string) only costs a pin.
    mentions_session_advisory_lock(sql)
        .then_some("a session-level advisory lock (use pg_advisory_xact_lock)")
}

/// True when `sql` names `pg_advisory_lock[_shared]` or `pg_try_advisory_lock[_shared]`
/// anywhere (the transaction-level `pg_advisory_xact_lock` family does not match).
fn mentions_session_advisory_lock(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    lower.contains("pg_advisory_lock") || lower.contains("pg_try_advisory_lock")
}

const TEMP_OBJECT: &str = "a temporary object (in pg_temp) that outlives its transaction";

/// Temporary: `TEMP`/`TEMPORARY`, or created in the `pg_temp` schema.
fn is_temp(rel: Option<&protobuf::RangeVar>) -> bool {
    rel.is_some_and(|r| r.relpersistence == "t" || r.schemaname.eq_ignore_ascii_case("pg_temp"))
}

/// A qualified name (`pg_temp.x`) in the temporary schema.
fn in_pg_temp(name: &[protobuf::Node]) -> bool {
    name.len() > 1
        && matches!(name.first().and_then(|n| n.node.as_ref()),
            Some(protobuf::node::Node::String(s)) if s.sval.eq_ignore_ascii_case("pg_temp"))
}

fn drops_on_commit(action: i32) -> bool {
    action == OnCommitAction::OncommitDrop as i32
}

fn is_session_advisory_lock(f: &protobuf::FuncCall) -> bool {
    let Some(last) = f.funcname.last().and_then(|n| n.node.as_ref()) else {
        return false;
    };
    let protobuf::node::Node::String(s) = last else {
        return false;
    };
    matches!(
        s.sval.to_ascii_lowercase().as_str(),
        "pg_advisory_lock"
            | "pg_advisory_lock_shared"
            | "pg_try_advisory_lock"
            | "pg_try_advisory_lock_shared"
    )
}

#[cfg(test)]
mod tests;
