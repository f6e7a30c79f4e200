//! Statements by name under transaction pooling: a client reaches only the statements
//! it prepared itself (anything else is answered with 26000, as directly), renamed to
//! their server-side names; statements missing on the bound server are prepared ahead.

use std::sync::Arc;

use bytes::BytesMut;

use super::Session;
use crate::config::PoolMode;
use crate::session::error::ClientError;
use crate::session::pipeline::{Described, Reply};
use crate::session::prepared::{self, Statement};
use crate::sql::encoding::Reading;
use crate::upstream::held::{Held, ServerStatements, Shape};
use crate::wire::protocol::{self, frontend as fe};

/// The proxy's Describes of statements (transaction mode): the shape each client
/// statement was prepared with, and copies prepared afresh on another server compared
/// with it (see [`Session::copy_for`]).
#[derive(Debug, Default)]
pub(super) struct Copies {
    /// The ParameterDescription body of the Describe being read.
    pub params: Option<Vec<u8>>,
    /// The copy just compared, and whether its shape is the statement's.
    pub compared: Option<(Arc<Statement>, bool)>,
}

/// NoData.
const NO_DATA: &[u8] = b"n\0\0\0\x04";

/// SQLSTATE and message of PostgreSQL for a statement whose result DDL changed, and
/// where it says it comes from (asyncpg re-prepares on `R` = RevalidateCachedQuery,
/// treating any other 0A000 as a plain error).
const RESULT_CHANGED: (&str, &str) = ("0A000", "cached plan must not change result type");
const RESULT_CHANGED_FROM: crate::session::pipeline::ErrorExtras =
    &[(b'F', "plancache.c"), (b'R', "RevalidateCachedQuery")];

/// The proxy's Describe of `stmt` on the bound server was answered with `shape`.
pub(super) fn on_shape(
    copies: &mut Copies,
    server: &mut ServerStatements,
    stmt: &Arc<Statement>,
    why: Described,
    shape: Option<Arc<Shape>>,
) {
    match (why, shape) {
        (Described::Parsed, Some(shape)) => {
            server.described(&stmt.server_name, stmt.id, &shape);
            let _ = stmt.shape.set(shape);
        }
        // Unreadable (not from PostgreSQL): nothing to compare it with later.
        (Described::Parsed, None) => {}
        (Described::Copy, shape) => {
            let same = match (&shape, stmt.shape.get()) {
                (Some(copy), Some(own)) => copy == own,
                _ => true,
            };
            if let Some(shape) = shape {
                server.replace(&stmt.server_name, Held::Known(shape));
            }
            copies.compared = Some((stmt.clone(), same));
        }
    }
}

impl Session<'_> {
    /// A Bind runs a statement parsed maybe in an earlier transaction, on another
    /// server: that server is dirty when the statement is not clean.
    pub(super) fn check_bound_statement(&mut self, start: usize, end: usize) {
        let Some((_, name)) = prepared::bind_statement(&self.cbuf[start..end]) else {
            return;
        };
        let parse: &[u8] = match (name.is_empty(), &self.unnamed) {
            (true, Some(unnamed)) => unnamed,
            (true, None) => return,
            (false, _) => match self.statements.get(name) {
                Some(stmt) => &stmt.parse,
                None => return,
            },
        };
        // A cache hit: the text was analysed when it was parsed.
        let reading = Reading::Known(self.encoding.current()); // encoding
        let (_, analysis) = self
            .state
            .inspector
            .inspect_message(fe::PARSE, parse, &reading);
        if analysis.is_none_or(|a| !a.clean) {
            self.mark_dirty();
        }
    }

    pub(super) fn server_mut(&mut self) -> &mut crate::upstream::conn::ServerConn {
        self.server.as_mut().expect("bound server")
    }

    /// Records a statement as prepared on the bound server, closing an evicted one.
    pub(super) fn add_server_statement(
        &mut self,
        server_name: &str,
        held: Held,
        out: &mut BytesMut,
    ) {
        if self.server_mut().statements.uncertain() {
            // It may be there after all (a DEALLOCATE ALL that failed): Close first.
            prepared::put_statement_message(out, fe::CLOSE, server_name);
            self.pipeline.swallow_close();
        }
        if let Some(evicted) = self.server_mut().statements.add(server_name, held) {
            prepared::put_statement_message(out, fe::CLOSE, &evicted);
            self.pipeline.swallow_close();
        }
    }

    /// Transaction mode: SQL `DEALLOCATE name` (alone in a simple Query) of a statement
    /// the client prepared by protocol (pgx, database/sql drop their cached statements
    /// this way). The server holds it, if at all, under its server name: the Query goes
    /// as Close of that name + Sync, the CloseComplete is answered as the DEALLOCATE's
    /// CommandComplete, the ReadyForQuery is the server's, and the name is free again,
    /// as directly. Not in an aborted transaction (PostgreSQL refuses DEALLOCATE there
    /// but would take the Close) and not where an unsynced extended message may have
    /// the server skipping (its Sync would end that early): there the text goes as it is.
    pub(super) fn deallocate_protocol_statement(
        &mut self,
        start: usize,
        end: usize,
    ) -> Option<BytesMut> {
        if self.extended_open || self.tx == crate::wire::protocol::TxStatus::Failed {
            return None;
        }
        let sql = crate::sql::inspect::sql_of(
            fe::QUERY,
            &self.cbuf[start..end],
            self.encoding.current(),
        )?;
        let name = crate::sql::inspect::single_deallocate(&sql.text)?;
        let stmt = self.statements.get(&name)?.clone();
        self.statements.close(&name);
        self.server_mut().statements.remove(&stmt.server_name);
        let mut out = BytesMut::new();
        prepared::put_statement_message(&mut out, fe::CLOSE, &stmt.server_name);
        crate::wire::protocol::put_sync(&mut out);
        self.pipeline.swallow_close();
        let mut done = BytesMut::new();
        crate::wire::protocol::put_command_complete(&mut done, "DEALLOCATE");
        self.pipeline.synthetic(done);
        self.pipeline.client(Reply::Sync);
        Some(out)
    }

    /// Makes sure the bound server has statement `stmt` (queues its Parse ahead if not).
    /// Where its shape is known, [`Session::copy_for`] has made sure already; this is
    /// for statements of unknown shape and servers skipping to a Sync.
    pub(super) fn ensure_statement(&mut self, stmt: &prepared::Statement, out: &mut BytesMut) {
        if !self.server_mut().statements.has(&stmt.server_name) {
            self.add_server_statement(&stmt.server_name, Held::Pending(stmt.id), out);
            out.extend_from_slice(&stmt.parse);
            self.pipeline.swallow_parse(stmt.server_name.clone());
        }
    }

    /// Transaction mode: a Bind or Describe of a named statement whose copy on the
    /// bound server may not be the statement the client prepared: the server lacks it,
    /// or holds the text with another shape (prepared by another client of the tenant
    /// before or after DDL changed it). PostgreSQL keeps a statement's parameter types
    /// and fails it with 0A000 once its result changed; so the copy is prepared afresh
    /// with the statement's parameter types and described, and the message waits until
    /// the Describe compares (`Copies::compared`): the messages returned here go first,
    /// then the session steps the same message again.
    pub(super) fn copy_for(&mut self, tag: u8, start: usize, end: usize) -> Option<BytesMut> {
        if self.mode != PoolMode::Transaction || self.pipeline.skipping() {
            // A server skipping to a Sync skips the message and its copy alike.
            return None;
        }
        let msg = &self.cbuf[start..end];
        let name = match tag {
            fe::BIND => prepared::bind_statement(msg)?.1,
            fe::DESCRIBE => match prepared::target(msg)? {
                (b'S', name) => name,
                _ => return None,
            },
            _ => return None,
        };
        if name.is_empty() {
            return None;
        }
        let stmt = self.statements.get(name)?.clone();
        if self
            .copies
            .compared
            .as_ref()
            .is_some_and(|(s, _)| Arc::ptr_eq(s, &stmt))
        {
            return None; // compared just now
        }
        let shape = stmt.shape.get()?.clone();
        if tag == fe::DESCRIBE && shape.columns.is_none() {
            return None; // answered from its shape (`statement_target`)
        }
        let mut out = BytesMut::new();
        let server = &mut self.server_mut().statements;
        match server.get(&stmt.server_name) {
            Some(Held::Pending(id)) if *id == stmt.id => return None,
            // Most often the very shape (the same reply), else an equal one.
            Some(Held::Known(held)) if Arc::ptr_eq(held, &shape) || **held == *shape => {
                return None
            }
            Some(_) => {
                prepared::put_statement_message(&mut out, fe::CLOSE, &stmt.server_name);
                self.pipeline.swallow_close();
                self.server_mut()
                    .statements
                    .replace(&stmt.server_name, Held::Pending(0));
            }
            None => self.add_server_statement(&stmt.server_name, Held::Pending(0), &mut out),
        }
        out.extend_from_slice(&stmt.parse_with_types(&shape.params));
        self.pipeline.swallow_parse(stmt.server_name.clone());
        prepared::put_statement_message(&mut out, fe::DESCRIBE, &stmt.server_name);
        self.pipeline.describe(stmt, Described::Copy);
        protocol::put_flush(&mut out);
        crate::metrics::Metrics::inc(&self.state.metrics.statement_copies);
        Some(out)
    }

    /// The message stepped again after its copy compared: `None` when it goes on as
    /// usual, else what PostgreSQL answers for a statement whose result changed (a
    /// Describe tells the parameters first, as directly).
    pub(super) fn after_copy(&mut self, tag: u8) -> Option<BytesMut> {
        let (stmt, same) = self.copies.compared.take()?;
        if same {
            return None;
        }
        crate::metrics::Metrics::inc(&self.state.metrics.statement_copies_changed);
        self.extended_open = true;
        if tag == fe::DESCRIBE {
            let mut t = BytesMut::new();
            let params = stmt.shape.get().map(|s| &s.params[..]).unwrap_or(&[]);
            protocol::put_parameter_description(&mut t, params);
            self.pipeline.synthetic(t);
        }
        let own = Some(self.marker.clone());
        let (code, message) = RESULT_CHANGED;
        Some(self.marker_statement_as(
            fe::PARSE,
            own,
            code,
            message.to_owned(),
            RESULT_CHANGED_FROM,
        ))
    }

    /// Transaction mode: a client reaches only the statements it prepared itself, under
    /// the names it gave, as directly. The error PostgreSQL would give for any other
    /// name (the server may hold it: another client's statement, or nothing of the
    /// client's own unnamed one).
    pub(super) fn unreachable_statement(&self, name: &str) -> Option<String> {
        if name.is_empty() {
            (!self.unnamed_here && self.unnamed.is_none())
                .then(|| "unnamed prepared statement does not exist".to_owned())
        } else {
            self.statements
                .get(name)
                .is_none()
                .then(|| format!("prepared statement \"{name}\" does not exist"))
        }
    }

    /// The marker Parse (under its own name, so the client's unnamed statement is left
    /// alone) that fails where the message naming a missing statement would have.
    pub(super) fn missing_statement(&mut self, message: String) -> BytesMut {
        let own = Some(self.marker.clone());
        self.marker_statement(fe::PARSE, own, "26000", message)
    }

    /// A Bind or Describe of the unnamed statement on a server where this client has not
    /// parsed it in the current binding: the client's last unnamed Parse goes first.
    pub(super) fn with_unnamed(&mut self, start: usize, end: usize) -> Option<BytesMut> {
        if self.unnamed_here {
            return None;
        }
        let parse = self.unnamed.clone()?;
        self.unnamed_here = true;
        let mut out = parse;
        self.pipeline.swallow_parse(String::new());
        out.extend_from_slice(&self.cbuf[start..end]);
        Some(out)
    }

    pub(super) fn rewrite_bind(&mut self, start: usize, end: usize) -> Option<BytesMut> {
        let (_, name) = prepared::bind_statement(&self.cbuf[start..end])?;
        let stmt = self.statements.get(name)?.clone();
        let mut out = BytesMut::new();
        self.ensure_statement(&stmt, &mut out);
        prepared::rewrite_bind(&self.cbuf[start..end], &stmt.server_name, &mut out);
        Some(out)
    }

    /// Describe/Close of a named statement in transaction mode: renamed, or (Close)
    /// answered by the proxy since the server keeps the statement cached.
    pub(super) fn statement_target(
        &mut self,
        tag: u8,
        start: usize,
        end: usize,
    ) -> Result<Option<BytesMut>, ClientError> {
        let reply = if tag == fe::DESCRIBE {
            Reply::Describe
        } else {
            Reply::Close
        };
        let named = match prepared::target(&self.cbuf[start..end]) {
            Some((b'S', name)) if self.mode == PoolMode::Transaction => name.to_owned(),
            _ => {
                self.pipeline.client(reply);
                return Ok(None);
            }
        };
        if tag == fe::CLOSE {
            if named.is_empty() {
                self.unnamed = None;
                if std::mem::take(&mut self.unnamed_here) {
                    self.pipeline.client(reply);
                    return Ok(None);
                }
            }
            let done = BytesMut::from(&super::messages::CLOSE_COMPLETE[..]);
            match self.statements.get(&named).cloned() {
                // Closed now; restored if the server skips the Close (`take_unclosed`).
                Some(stmt) if !named.is_empty() => {
                    self.statements.close(&named);
                    self.pipeline.synthetic_close(done, named, stmt);
                }
                _ => self.pipeline.synthetic(done),
            }
            return Ok(Some(BytesMut::new()));
        }
        if let Some(missing) = self.unreachable_statement(&named) {
            return Ok(Some(self.missing_statement(missing)));
        }
        if named.is_empty() {
            let replacement = self.with_unnamed(start, end);
            self.pipeline.client(reply);
            return Ok(replacement);
        }
        let Some(stmt) = self.statements.get(&named).cloned() else {
            self.pipeline.client(reply);
            return Ok(None);
        };
        let clean = self.server.as_ref().is_some_and(|s| !s.dirty);
        if let Some(shape) = stmt.shape.get().filter(|s| clean && s.columns.is_none()) {
            // A statement that returns no rows is described without the catalog (also
            // in an aborted transaction, or after its table was dropped): its parameter
            // types and NoData, as PostgreSQL answers, with no copy needed. Not once the
            // transaction ran what rlsgate cannot see (a dynamic DEALLOCATE ALL): the
            // server answers.
            let mut described = BytesMut::new();
            protocol::put_parameter_description(&mut described, &shape.params);
            described.extend_from_slice(NO_DATA);
            self.pipeline.synthetic(described);
            return Ok(Some(BytesMut::new()));
        }
        let mut out = BytesMut::new();
        self.ensure_statement(&stmt, &mut out);
        prepared::put_statement_message(&mut out, fe::DESCRIBE, &stmt.server_name);
        self.pipeline.client(reply);
        Ok(Some(out))
    }
}
