//! What the session does with each client message it must understand: accounting in
//! the reply pipeline, the statement guard, prepared-statement renaming under
//! transaction pooling, and marker-based refusals.

use bytes::BytesMut;

use super::Pinned;
use super::Session;
use crate::config::{PoolMode, SessionFeatures};

use crate::metrics::Metrics;
use crate::session::error::ClientError;
use crate::session::pipeline::Reply;
use crate::session::prepared;
use crate::sql::inspect::{Effect, Verdict};
use crate::wire::protocol::{self, frontend as fe, TxStatus};

/// What the inspection of a Query/Parse decided.
enum Checked {
    /// Send as the client sent it.
    Forward,
    /// A refusal's marker message goes instead (the client sees the refusal).
    Replace(BytesMut),
    /// The same statement with its text rewritten (per-tenant channels).
    Rewrite(BytesMut),
}

impl Session<'_> {
    /// Accounts for one client message. Returns replacement bytes (possibly empty) when
    /// the message must not go to the server as sent.
    pub(super) fn on_client_message(
        &mut self,
        tag: u8,
        start: usize,
        end: usize,
    ) -> Result<Option<BytesMut>, ClientError> {
        let txn = self.mode == PoolMode::Transaction;
        if txn && !statement_name_is_utf8(tag, &self.cbuf[start..end]) {
            // Names are renamed by their text; raw bytes would pass unrenamed and stay on a
            // pooled server for the next client.
            return Err(ClientError::Protocol(
                "statement names must be UTF-8 in transaction pooling mode".into(),
            ));
        }
        match tag {
            fe::QUERY => {
                // A simple Query destroys the unnamed statement.
                self.unnamed = None;
                let checked = self.check_sql(tag, start, end);
                // A DEALLOCATE ALL / DISCARD ALL took the statements out: they come back
                // if it does not run (refused, an error before it, a transaction block).
                let deallocated = self.statements.take_deallocated();
                let replacement = match checked {
                    Checked::Forward if txn => {
                        if let Some(out) = self.deallocate_protocol_statement(start, end) {
                            return Ok(Some(out));
                        }
                        None
                    }
                    Checked::Forward => None,
                    Checked::Replace(bytes) => {
                        for (name, stmt) in deallocated {
                            self.statements.restore(name, stmt);
                        }
                        return Ok(Some(bytes));
                    }
                    Checked::Rewrite(bytes) => Some(bytes),
                };
                if deallocated.is_empty() {
                    self.pipeline.client(Reply::UntilReady);
                } else {
                    self.pipeline.deallocating(deallocated);
                }
                Ok(replacement)
            }
            fe::PARSE => {
                self.extended_open = true;
                let checked = self.check_sql(tag, start, end);
                // Prepared, not run: the statements go when an Execute of it completes
                // (`replies.rs`); what the server holds is no longer known either way.
                for (name, stmt) in self.statements.take_deallocated() {
                    self.statements.restore(name, stmt);
                }
                let rewritten = match checked {
                    Checked::Forward => None,
                    Checked::Rewrite(bytes) => Some(bytes),
                    Checked::Replace(bytes) => return Ok(Some(bytes)),
                };
                if !txn {
                    self.pipeline.client(Reply::Parse);
                    return Ok(rewritten);
                }
                let parse = match &rewritten {
                    Some(bytes) => &bytes[..],
                    None => &self.cbuf[start..end],
                };
                if let Some(name) =
                    parse_statement_name(parse).filter(|n| self.statements.get(n).is_some())
                {
                    // As directly: the name must be closed before it is parsed again. The
                    // marker Parse goes under its own name: the server may hold `name`.
                    let message = format!("prepared statement \"{name}\" already exists");
                    let own = Some(self.marker.clone());
                    return Ok(Some(self.marker_statement(tag, own, "42P05", message)));
                }
                let original = rewritten.is_some().then(|| &self.cbuf[start..end]);
                let Some(stmt) = self.statements.on_parse(parse, original) else {
                    // Unnamed: remembered so a Bind in a later transaction (maybe on
                    // another server) runs this client's statement, not another's.
                    self.unnamed = Some(BytesMut::from(parse));
                    self.unnamed_here = true;
                    self.pipeline.client(Reply::Parse);
                    return Ok(rewritten);
                };
                let mut out = BytesMut::new();
                let held = crate::upstream::held::Held::Pending(stmt.id);
                if self.server_mut().statements.has(&stmt.server_name) {
                    // The client's own Parse is always a fresh prepare (as it would be
                    // directly): a cached copy may predate DDL (stale result or
                    // parameter types). Close it first; the CloseComplete is consumed.
                    prepared::put_statement_message(&mut out, fe::CLOSE, &stmt.server_name);
                    self.pipeline.swallow_close();
                    self.server_mut()
                        .statements
                        .replace(&stmt.server_name, held);
                } else {
                    self.add_server_statement(&stmt.server_name, held, &mut out);
                }
                out.extend_from_slice(&stmt.parse);
                self.pipeline.client_parse(stmt.clone());
                // The proxy's own Describe: the shape every copy of it on another
                // server must have (`Session::copy_for`); consumed.
                prepared::put_statement_message(&mut out, fe::DESCRIBE, &stmt.server_name);
                self.pipeline
                    .describe(stmt, crate::session::pipeline::Described::Parsed);
                Ok(Some(out))
            }
            fe::BIND => {
                self.extended_open = true;
                if !txn {
                    self.pipeline.client(Reply::Bind);
                    return Ok(None);
                }
                let name = prepared::bind_statement(&self.cbuf[start..end]).map(|(_, n)| n);
                let unnamed = name == Some("");
                if let Some(missing) = name.and_then(|n| self.unreachable_statement(n)) {
                    return Ok(Some(self.missing_statement(missing)));
                }
                self.check_bound_statement(start, end);
                let replacement = if unnamed {
                    self.with_unnamed(start, end)
                } else {
                    self.rewrite_bind(start, end)
                };
                self.pipeline.client(Reply::Bind);
                Ok(replacement)
            }
            fe::DESCRIBE | fe::CLOSE => {
                self.extended_open = true;
                self.statement_target(tag, start, end)
            }
            fe::EXECUTE => {
                self.extended_open = true;
                self.pipeline.client(Reply::Execute);
                Ok(None)
            }
            fe::SYNC => {
                self.extended_open = false;
                self.pipeline.sync();
                Ok(None)
            }
            fe::COPY_DONE | fe::COPY_FAIL => {
                self.pipeline.copy_end();
                Ok(None)
            }
            fe::FUNCTION_CALL => {
                self.mark_dirty();
                let oid = function_oid(&self.cbuf[start..end]);
                let large_object = oid.is_some_and(|o| LARGE_OBJECT_FUNCTIONS.contains(&o));
                if large_object && self.state.config.guard.allow_large_objects {
                    self.pipeline.client(Reply::UntilReady);
                    return Ok(None);
                }
                // Any other function could be set_config by OID, unseen by the guard.
                let message = if large_object {
                    format!(
                        "rlsgate: large-object functions are refused: large objects belong to the \
                         shared upstream role, so every tenant could read them (function oid {}; \
                         guard.allow_large_objects) (rule: large-object)",
                        oid.unwrap_or(0)
                    )
                } else {
                    format!(
                        "rlsgate: FunctionCall messages are refused except for large-object \
                         functions (function oid {}) (rule: function-call)",
                        oid.unwrap_or(0)
                    )
                };
                Ok(Some(self.refusal_message(
                    fe::QUERY,
                    start,
                    end,
                    "42501",
                    message,
                )))
            }
            _ => Ok(None), // Flush: no reply
        }
    }

    /// The bound server may now hold session state rlsgate cannot see.
    pub(super) fn mark_dirty(&mut self) {
        if let Some(server) = self.server.as_mut() {
            server.dirty = true;
        }
    }

    /// Runs the guard on a Query/Parse, scopes its notification channels to the tenant,
    /// records session effects (transaction mode, outside a transaction).
    fn check_sql(&mut self, tag: u8, start: usize, end: usize) -> Checked {
        // Reads of the session views go to their tenant-scoped versions; the guard reads
        // the text as it will be sent.
        let views = match self.scope_views(tag, start, end) {
            Ok(views) => views,
            Err(r) => {
                return Checked::Replace(self.refusal_message(tag, start, end, r.code, r.message))
            }
        };
        let reading = self.encoding.reading(self.pipeline.is_empty(), self.tx); // encoding
        let msg: &[u8] = views.as_deref().unwrap_or(&self.cbuf[start..end]);
        let (verdict, analysis) = self.state.inspector.inspect_message(tag, msg, &reading);
        if let Verdict::Refuse { code, message } = verdict {
            return Checked::Replace(self.refusal_message(tag, start, end, code, message));
        }
        if let Some(a) = &analysis {
            self.encoding.on_statement(tag, &a.encoding); // encoding
        }
        if let Some(a) = analysis.as_ref().filter(|a| !a.clean) {
            self.mark_dirty();
            if self.mode == PoolMode::Transaction {
                // Custom settings it may set, for the snapshot at release (`settings`).
                let names = a.effects.iter().filter_map(|e| match e {
                    Effect::Set { name, .. } => Some(name.as_str()),
                    _ => None,
                });
                let msg: &[u8] = views.as_deref().unwrap_or(&self.cbuf[start..end]);
                if let Some(sql) = crate::sql::inspect::sql_of(tag, msg, self.encoding.current()) {
                    self.settings.note_statement(&sql.text, names);
                }
            }
        }
        let rewritten = match self.scope_channels(tag, start, end, views, analysis.as_deref()) {
            Ok(rewritten) => rewritten,
            Err(r) => {
                return Checked::Replace(self.refusal_message(tag, start, end, r.code, r.message))
            }
        };
        let rewritten = match self.scope_backend_calls(tag, start, end, rewritten) {
            Ok(rewritten) => rewritten,
            Err(r) => {
                return Checked::Replace(self.refusal_message(tag, start, end, r.code, r.message))
            }
        };
        if let Some(feature) = analysis.as_ref().and_then(|a| a.session_only) {
            if let Err(message) = self.pin(feature) {
                return Checked::Replace(self.refusal_message(tag, start, end, "0A000", message));
            }
        }
        let checked = rewritten.map_or(Checked::Forward, Checked::Rewrite);
        if verdict == Verdict::AllowReapply {
            self.reapply_after_sync = true;
        }
        for effect in analysis.iter().flat_map(|a| a.effects.iter()) {
            if let Effect::Reset(name) = effect {
                if self.ctx.is_client_setting(name) && !self.reapply_names.contains(name) {
                    self.reapply_names.push(name.clone());
                }
            }
        }
        if self.mode != PoolMode::Transaction {
            return checked;
        }
        let idle = self.tx == TxStatus::Idle;
        for effect in analysis.iter().flat_map(|a| a.effects.iter()) {
            match effect {
                Effect::Set { name, sql } if idle => self.ctx.remember_set(name, sql),
                Effect::Reset(name) if idle => self.ctx.forget(name),
                Effect::ResetAll if idle => self.ctx.forget_all(),
                Effect::DeallocateAll => {
                    self.statements.deallocate_all();
                    // Whether it ran is known only later (DISCARD ALL fails inside a
                    // transaction block): what the server holds is no longer known.
                    self.server_mut().statements.forget_all();
                }
                _ => {}
            }
        }
        checked
    }

    /// `pg_cancel_backend`/`pg_terminate_backend` calls with their pid scoped to this
    /// tenant's backends (`backend_calls`), applied to `rewritten` when an earlier
    /// rewrite made one, else to the client's message.
    fn scope_backend_calls(
        &self,
        tag: u8,
        start: usize,
        end: usize,
        rewritten: Option<BytesMut>,
    ) -> Result<Option<BytesMut>, crate::sql::channels::Refusal> {
        let msg: &[u8] = rewritten.as_deref().unwrap_or(&self.cbuf[start..end]);
        let Some(sql) = crate::sql::inspect::sql_of(tag, msg, self.encoding.current()) else {
            return Ok(rewritten);
        };
        if !crate::sql::backend_calls::mentioned(&sql.text) {
            return Ok(rewritten);
        }
        // Session mode: the tenant's sessions. Transaction mode: the server bound for
        // this transaction only (`pg_terminate_backend(pg_backend_pid())`); a pid seen
        // in an earlier transaction may belong to another tenant's session by now.
        let pids = match self.mode {
            PoolMode::Session => self.state.cancel.tenant_pids(&self.tenant),
            PoolMode::Transaction => self.server.iter().map(|s| s.pid()).collect(),
        };
        let Some(scoped) = crate::sql::backend_calls::scope_sql(&sql.text, &pids)? else {
            return Ok(rewritten);
        };
        scoped_message(
            msg,
            &scoped,
            sql.utf8,
            "pg_cancel_backend/pg_terminate_backend in text that is not UTF-8 cannot be scoped \
             to this tenant",
        )
    }

    /// The Query/Parse with its reads of the session views (`system_views::SCOPED`)
    /// moved to what this client would see with the database to itself, `None` when it
    /// reads none. With the sealed context, the `rlsgate.*` views built on it; in
    /// transaction mode, `pg_prepared_statements` is the list of the client's own
    /// statements (the pooled server holds its tenant's other clients' too), as of now:
    /// a statement prepared now lists itself, and lists what it listed when it is
    /// executed again later.
    fn scope_views(
        &self,
        tag: u8,
        start: usize,
        end: usize,
    ) -> Result<Option<BytesMut>, crate::sql::channels::Refusal> {
        use crate::sql::system_views::Scope;
        let sealed = self.ctx.seal.is_some();
        let txn = self.mode == PoolMode::Transaction;
        if !sealed && !txn {
            return Ok(None);
        }
        let msg = &self.cbuf[start..end];
        let Some(sql) = crate::sql::inspect::sql_of(tag, msg, self.encoding.current()) else {
            return Ok(None);
        };
        if !crate::sql::system_views::mentioned(&sql.text) {
            return Ok(None);
        }
        let statements = match txn {
            true => Some(self.statement_list(tag, msg, &sql.text)?),
            false => None,
        };
        let scope = |view: &str| match (view, &statements) {
            ("pg_prepared_statements", Some(rows)) => Some(Scope::Rows(rows.clone())),
            _ if sealed => Some(Scope::Schema),
            _ => None,
        };
        let Some(scoped) = crate::sql::system_views::scope_sql(&sql.text, scope)? else {
            return Ok(None);
        };
        scoped_message(
            msg,
            &scoped,
            sql.utf8,
            "reads of session views in text that is not UTF-8 cannot be scoped to this tenant",
        )
    }

    /// Transaction mode: the client's prepared statements as `pg_prepared_statements`
    /// rows, with the one `msg` prepares (a named Parse whose text is `text`).
    fn statement_list(
        &self,
        tag: u8,
        msg: &[u8],
        text: &str,
    ) -> Result<String, crate::sql::channels::Refusal> {
        let encoding = self.encoding.current();
        let mut held = Vec::new();
        for (name, stmt) in self.statements.iter() {
            let parse = stmt.client_parse();
            let Some(sql) = crate::sql::inspect::sql_of(fe::PARSE, parse, encoding) else {
                continue;
            };
            if !sql.utf8 {
                return Err(crate::sql::channels::Refusal {
                    code: "0A000",
                    message: "rlsgate: pg_prepared_statements cannot be listed while a \
                              statement's text is not UTF-8"
                        .into(),
                });
            }
            held.push((name, sql.text.into_owned(), stmt.prepared_at, parse));
        }
        let this = (tag == fe::PARSE)
            .then(|| parse_statement_name(msg))
            .flatten()
            .filter(|n| !n.is_empty() && self.statements.get(n).is_none())
            .map(|name| (name, text.to_owned(), std::time::SystemTime::now(), msg));
        held.extend(this);
        let types: Vec<Vec<u32>> = held
            .iter()
            .map(|(_, _, _, parse)| prepared::parameter_types(parse))
            .collect();
        let rows = held.iter().zip(&types).map(|((name, text, at, _), types)| {
            crate::sql::system_views::PreparedRow {
                name,
                statement: text,
                prepare_time: *at,
                parameter_types: types,
            }
        });
        Ok(crate::sql::system_views::prepared_statements_rows(rows))
    }

    /// The Query/Parse with its LISTEN/NOTIFY channels moved into this tenant's
    /// namespace (`tenant.channels = "tenant"`), `None` when it names no channel.
    fn scope_channels(
        &self,
        tag: u8,
        start: usize,
        end: usize,
        rewritten: Option<BytesMut>,
        analysis: Option<&crate::sql::inspect::Analysis>,
    ) -> Result<Option<BytesMut>, crate::sql::channels::Refusal> {
        let (Some(suffix), true) = (&self.channel_suffix, analysis.is_some_and(|a| a.channels))
        else {
            return Ok(rewritten);
        };
        let msg: &[u8] = rewritten.as_deref().unwrap_or(&self.cbuf[start..end]);
        let Some(sql) = crate::sql::inspect::sql_of(tag, msg, self.encoding.current()) else {
            return Ok(rewritten);
        };
        if !sql.utf8 {
            // The rewrite works on UTF-8 text; bytes in another encoding would be mangled.
            return Err(crate::sql::channels::Refusal {
                code: "0A000",
                message: "rlsgate: LISTEN/NOTIFY/pg_notify statements whose text is not \
                          UTF-8 are not supported with per-tenant channels (tenant.channels)"
                    .into(),
            });
        }
        let Some(scoped) = crate::sql::channels::scope_sql(&sql.text, suffix)? else {
            return Ok(rewritten);
        };
        scoped_message(msg, &scoped, true, "")
    }

    /// Transaction mode: `feature` needs one server for the rest of the session. With
    /// `session_features = "pin"` and a free pin slot the client keeps its server until
    /// it disconnects (the server is then closed); otherwise the refusal message.
    pub(super) fn pin(&mut self, feature: &'static str) -> Result<(), String> {
        if self.pinned.is_some() {
            return Ok(());
        }
        let pool = &self.state.config.pool;
        let limit = pool.pin_limit();
        let refused = |why: String| {
            format!(
                "{feature} is not supported in transaction pooling mode (the next transaction may \
                 run on another server connection){why}; use pool mode \"session\" for this client"
            )
        };
        if pool.session_features == SessionFeatures::Refuse {
            return Err(refused(String::new()));
        }
        match Pinned::take(&self.state.metrics, limit) {
            Some(p) => {
                tracing::info!(
                    feature,
                    "client pinned to its server for the rest of the session"
                );
                self.pinned = Some(p);
                Ok(())
            }
            None => Err(refused(format!(
                " and the limit of {limit} pinned clients (pool.max_pinned) is reached"
            ))),
        }
    }

    /// A Query/Parse that makes the server fail with a marker error at the same point
    /// of the pipeline; the marker error is replaced by the refusal on the way back, so
    /// ordering, transaction status and pipeline error handling stay PostgreSQL's own.
    fn refusal_message(
        &mut self,
        tag: u8,
        start: usize,
        end: usize,
        code: &'static str,
        message: String,
    ) -> BytesMut {
        Metrics::inc(&self.state.metrics.guard_refusals);
        // Logged with the statement's fingerprint, never its text or values.
        let msg = &self.cbuf[start..end];
        let fingerprint = crate::sql::inspect::sql_of(msg[0], msg, self.encoding.current())
            .and_then(|s| crate::sql::guard::fingerprint(&s.text));
        tracing::info!(
            sqlstate = code,
            reason = %message,
            fingerprint = fingerprint.as_deref().unwrap_or("-"),
            "statement refused"
        );
        self.marker_message(tag, start, end, code, message)
    }

    /// The marker Query/Parse standing in for a client message that fails with `code`
    /// and `message` (see `refusal_message`).
    /// A refused Parse keeps the client's statement name, so the name does not exist
    /// afterwards, as directly.
    fn marker_message(
        &mut self,
        tag: u8,
        start: usize,
        end: usize,
        code: &'static str,
        message: String,
    ) -> BytesMut {
        let name = (tag == fe::PARSE)
            .then(|| parse_statement_name(&self.cbuf[start..end]).map(str::to_owned))
            .flatten();
        self.marker_statement(tag, name, code, message)
    }

    /// The marker Query, or Parse under `name`, whose error is swapped for `code`/`message`.
    pub(super) fn marker_statement(
        &mut self,
        tag: u8,
        name: Option<String>,
        code: &'static str,
        message: String,
    ) -> BytesMut {
        self.marker_statement_as(tag, name, code, message, &[])
    }

    /// [`Session::marker_statement`] whose error carries `extras` too.
    pub(super) fn marker_statement_as(
        &mut self,
        tag: u8,
        name: Option<String>,
        code: &'static str,
        message: String,
        extras: crate::session::pipeline::ErrorExtras,
    ) -> BytesMut {
        let reply = if tag == fe::QUERY {
            Reply::UntilReady
        } else {
            Reply::Parse
        };
        self.pipeline.refused_as(reply, code, message, extras);
        let sql = format!("SELECT {}.refused", self.marker);
        let mut out = BytesMut::new();
        if tag == fe::QUERY {
            protocol::put_query(&mut out, &sql);
        } else {
            protocol::put_parse(&mut out, name.as_deref().unwrap_or(""), &sql);
        }
        out
    }
}

/// `msg` with its SQL text replaced by a scoped rewrite; refused when the text was not
/// UTF-8 (`why` says what cannot be scoped), since the rewrite works on UTF-8 text.
fn scoped_message(
    msg: &[u8],
    scoped: &str,
    utf8: bool,
    why: &str,
) -> Result<Option<BytesMut>, crate::sql::channels::Refusal> {
    if !utf8 {
        return Err(crate::sql::channels::Refusal {
            code: "0A000",
            message: format!("rlsgate: {why}"),
        });
    }
    protocol::with_sql(msg, scoped)
        .map(Some)
        .ok_or(crate::sql::channels::Refusal {
            code: "08P01",
            message: "rlsgate: malformed message".into(),
        })
}

/// False when a Parse, Bind, or statement Describe/Close names a statement with bytes
/// that are not UTF-8 (malformed messages pass: PostgreSQL rejects them itself).
fn statement_name_is_utf8(tag: u8, msg: &[u8]) -> bool {
    let body = protocol::body(msg);
    let name_at = match tag {
        fe::PARSE => Some(0),
        // After the portal name.
        fe::BIND => body.iter().position(|&b| b == 0).map(|p| p + 1),
        fe::DESCRIBE | fe::CLOSE if body.first() == Some(&b'S') => Some(1),
        _ => None,
    };
    let Some(rest) = name_at.and_then(|at| body.get(at..)) else {
        return true;
    };
    let name = rest
        .iter()
        .position(|&b| b == 0)
        .map_or(rest, |nul| &rest[..nul]);
    std::str::from_utf8(name).is_ok()
}

fn parse_statement_name(msg: &[u8]) -> Option<&str> {
    let mut pos = 0;
    protocol::read_cstr(protocol::body(msg), &mut pos)
}

/// pg_catalog large-object functions (fixed OIDs), which libpq calls with FunctionCall.
const LARGE_OBJECT_FUNCTIONS: [u32; 13] = [
    715, 952, 953, 954, 955, 956, 957, 958, 964, 1004, 3170, 3171, 3172,
];

fn function_oid(msg: &[u8]) -> Option<u32> {
    let b = protocol::body(msg);
    Some(u32::from_be_bytes([
        *b.first()?,
        *b.get(1)?,
        *b.get(2)?,
        *b.get(3)?,
    ]))
}

/// CloseComplete, for a Close the proxy answers itself.
pub(super) const CLOSE_COMPLETE: [u8; 5] = [b'3', 0, 0, 0, 4];
