//! Which reply from the server belongs to whom: one entry per message sent that the
//! server answers, in order. Lets the proxy consume replies to its own injected
//! messages, synthesize replies to messages it did not send (a Parse the server already
//! has), and know when nothing is in flight. No I/O.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;

use crate::session::prepared::Statement;
use crate::wire::protocol::backend as be;

/// What kind of reply a forwarded client message gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Query, FunctionCall: everything up to and including ReadyForQuery.
    UntilReady,
    /// Sync: the same, but a Sync the server reads in copy-in mode is ignored.
    Sync,
    Parse,
    Bind,
    Close,
    Describe,
    Execute,
}

impl Reply {
    fn is_terminal(self, tag: u8) -> bool {
        match self {
            Reply::UntilReady | Reply::Sync => tag == be::READY_FOR_QUERY,
            Reply::Parse => tag == b'1',
            Reply::Bind => tag == b'2',
            Reply::Close => tag == b'3',
            Reply::Describe => tag == b'T' || tag == b'n',
            Reply::Execute => tag == b'C' || tag == b'I' || tag == b's',
        }
    }

    fn ends_at_ready(self) -> bool {
        self == Reply::UntilReady || self == Reply::Sync
    }
}

/// A Parse of a named statement the server may fail or skip (after an earlier error).
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The server-side statement name.
    pub server: String,
    /// The client's statement, for a client's own Parse.
    pub client: Option<Arc<Statement>>,
}

/// One expected reply.
#[derive(Debug)]
enum Expect {
    /// A client message: replies are forwarded. Parse entries of named statements say
    /// which statement, so a failed Parse can be forgotten.
    Client(Reply, Option<Parsed>),
    /// A proxy message answered up to ReadyForQuery: replies are consumed. `simple`: a
    /// simple Query (skipped whole by a server that skips to the next Sync), else an
    /// extended sequence ending in its own Sync.
    Proxy { critical: bool, simple: bool },
    /// A proxy message answered by one message (ParseComplete/CloseComplete): consumed.
    SwallowOne(Reply, Option<Parsed>),
    /// A reply the proxy produces itself, in order (the server never sees the message);
    /// for a Close of a client statement, that statement (restored if it is skipped).
    Synthetic(BytesMut, Option<(String, Arc<Statement>)>),
    /// A refused client message, replaced by a marker statement that fails at the same
    /// point: its ErrorResponse is swapped for this SQLSTATE and message. Tied to its
    /// place in the pipeline, so a marker the server skips takes its refusal with it.
    Refused(Reply, &'static str, String, ErrorExtras),
    /// Not a reply: the client's CopyDone/CopyFail, sent before the server's
    /// CopyInResponse arrived (Syncs queued before it are ignored by the server).
    CopyEnd,
    /// The client's simple Query that deallocates every statement (`DEALLOCATE ALL`,
    /// `DISCARD ALL`), answered like any Query; the statements it takes away come back
    /// if it does not run (its CommandComplete not seen: an error before it, a
    /// transaction block, skipped after an extended error).
    Deallocating(Vec<(String, Arc<Statement>)>, bool),
    /// The proxy's Describe of a client statement (ParameterDescription, then
    /// RowDescription or NoData): consumed, and read for the statement's shape.
    Shape(Arc<Statement>, Described),
}

/// Why the proxy described a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Described {
    /// Behind the client's own Parse: the shape the client's statement has.
    Parsed,
    /// Behind a copy prepared afresh on another server: compared with that shape.
    Copy,
}

/// Fields of an ErrorResponse the proxy writes beyond severity, SQLSTATE and message
/// (e.g. `R`, the routine PostgreSQL names: drivers such as asyncpg act on it).
pub type ErrorExtras = &'static [(u8, &'static str)];

/// What to do with one server message.
#[derive(Debug, PartialEq, Eq)]
pub enum Disposition {
    Forward,
    Swallow,
    /// The marker error of a refused message: send this refusal instead.
    Refuse(&'static str, String, ErrorExtras),
    /// An ErrorResponse answering a proxy statement.
    ProxyError {
        critical: bool,
    },
    /// Part of the proxy's Describe of this statement: consumed, read for its shape.
    Shape(Arc<Statement>, Described),
}

/// The queue of expected replies.
#[derive(Debug, Default)]
pub struct Pipeline {
    q: VecDeque<Expect>,
    /// Parses the server failed or skipped after an error.
    failed_parses: Vec<Parsed>,
    /// The server is in copy-in mode and the client has not ended the copy yet.
    copy_in: bool,
    /// A COPY FROM STDIN is running on the server (CopyInResponse seen, no
    /// CommandComplete or ErrorResponse yet), and whether Syncs were taken as ignored.
    copy_active: bool,
    copy_dropped: bool,
    /// A COPY failed after Syncs were taken as ignored: the server may have answered
    /// some of them after leaving copy mode, so its replies cannot be trusted to match.
    in_doubt: bool,
    /// After an error in an extended-protocol message the server ignores every message
    /// but Sync (PostgreSQL's `ignore_till_sync`, simple Queries included): messages sent
    /// while it does get no reply, whenever the client sent them.
    skipping: bool,
    /// The client sent something the proxy cannot follow reply by reply (messages other
    /// than COPY data into a running COPY FROM STDIN, which the server takes as the
    /// copy's error and consumes): the session must end and the server be closed.
    desync: Option<&'static str>,
    /// A proxy statement (Parse/Bind/Execute/.../Sync) that the server skips but for its
    /// Sync, so it did not take effect; whether it was critical.
    skipped_proxy: Option<bool>,
    /// Statements a skipped Close of the client's did not close after all.
    unclosed: Vec<(String, Arc<Statement>)>,
    /// The running COPY was started by an extended-protocol Execute.
    copy_extended: bool,
    /// A Close of the proxy's own (ahead of a Parse, of an evicted statement) that the
    /// server skipped: it may still hold statements rlsgate thinks are gone.
    skipped_close: bool,
    /// A Sync of an extended COPY's batch was ignored in copy mode: the server keeps the
    /// batch (and its implicit transaction) open until the client's next Sync, even
    /// when every reply has come.
    batch_open: bool,
}

impl Pipeline {
    /// True when the server owes nothing and is not skipping to a Sync.
    pub fn is_empty(&self) -> bool {
        !self.skipping && self.q.iter().all(|e| matches!(e, Expect::CopyEnd))
    }

    /// Why the replies can no longer be followed, if they cannot (see `desync`).
    pub fn desync(&self) -> Option<&'static str> {
        self.desync
    }

    /// Messages read by the server in copy-in mode other than CopyData, CopyDone,
    /// CopyFail, Flush and Sync end the copy with an error and are consumed.
    fn sent_into_copy(&mut self) {
        self.desync =
            Some("messages other than COPY data were sent while a COPY FROM STDIN was running");
    }

    /// Queues `e` unless the server skips it (after an error, until the next Sync).
    /// Returns false when it was skipped.
    fn push(&mut self, e: Expect) -> bool {
        if self.copy_in {
            self.sent_into_copy();
        }
        if self.skipping {
            match e {
                // As directly: a skipped Parse creates nothing, a skipped Close closes nothing.
                Expect::Client(_, Some(parsed)) | Expect::SwallowOne(_, Some(parsed)) => {
                    self.failed_parses.push(parsed)
                }
                Expect::Synthetic(_, Some(closed)) => self.unclosed.push(closed),
                Expect::SwallowOne(Reply::Close, _) => self.skipped_close = true,
                Expect::Deallocating(stmts, _) => self.unclosed.extend(stmts),
                _ => {}
            }
            return false;
        }
        self.q.push_back(e);
        true
    }

    /// The client's Sync. PostgreSQL ignores a Sync it reads in copy-in mode (drivers
    /// such as tokio-postgres send one right behind the Execute of a `COPY FROM
    /// STDIN`): no reply is expected for it.
    pub fn sync(&mut self) {
        if self.copy_in {
            self.copy_dropped = true;
            self.batch_open |= self.copy_extended;
        } else {
            // A Sync ends the skipping and the batch, and is answered.
            self.skipping = false;
            self.batch_open = false;
            self.q.push_back(Expect::Client(Reply::Sync, None));
        }
    }

    /// True while the server holds an extended batch open that only the client's next
    /// Sync ends (see `batch_open`): not a boundary, though nothing is owed.
    pub fn batch_open(&self) -> bool {
        self.batch_open
    }

    /// True when the server's replies may no longer match what is expected (see
    /// `in_doubt`): the server must be closed, not reused.
    pub fn in_doubt(&self) -> bool {
        self.in_doubt
    }

    /// Forgets everything owed: the server it was owed by is gone.
    pub fn reset(&mut self) {
        *self = Pipeline::default();
    }

    /// The client's CopyDone or CopyFail.
    pub fn copy_end(&mut self) {
        if self.copy_in {
            self.copy_in = false;
        } else if !self.is_empty() {
            // The CopyInResponse is still to come (or there is no copy, and PostgreSQL
            // ignores the message; the marker then goes with the entries before it).
            self.q.push_back(Expect::CopyEnd);
        }
    }

    /// CopyInResponse: Syncs the client sent since the COPY started, up to its
    /// CopyDone/CopyFail, are ignored by the server.
    fn on_copy_in(&mut self) {
        self.copy_in = true;
        self.copy_active = true;
        self.copy_dropped = false;
        self.copy_extended = matches!(self.q.front(), Some(Expect::Client(Reply::Execute, _)));
        let mut i = 1;
        while i < self.q.len() {
            match self.q[i] {
                Expect::Client(Reply::Sync, _) => {
                    self.q.remove(i);
                    self.copy_dropped = true;
                    self.batch_open |= self.copy_extended;
                }
                Expect::CopyEnd => {
                    self.q.remove(i);
                    self.copy_in = false;
                    return;
                }
                // Sent before the CopyInResponse arrived, read by the server as copy data.
                _ => {
                    self.sent_into_copy();
                    i += 1;
                }
            }
        }
    }

    /// Drops CopyEnd markers at the front (their copy ended or never started).
    fn skip_markers(&mut self) {
        while matches!(self.q.front(), Some(Expect::CopyEnd)) {
            self.q.pop_front();
        }
    }

    pub fn client(&mut self, reply: Reply) {
        self.push(Expect::Client(reply, None));
    }

    /// A refused message's marker (see `Expect::Refused`).
    pub fn refused(&mut self, reply: Reply, code: &'static str, message: String) {
        self.push(Expect::Refused(reply, code, message, &[]));
    }

    /// A refused message's marker whose error carries `extras` too.
    pub fn refused_as(
        &mut self,
        reply: Reply,
        code: &'static str,
        message: String,
        extras: ErrorExtras,
    ) {
        self.push(Expect::Refused(reply, code, message, extras));
    }

    /// The client's simple Query that deallocates `stmts` (see `Expect::Deallocating`).
    pub fn deallocating(&mut self, stmts: Vec<(String, Arc<Statement>)>) {
        self.push(Expect::Deallocating(stmts, false));
    }

    /// A CommandComplete of `DEALLOCATE ALL` / `DISCARD ALL`: the Query answered now
    /// ran it. False when no such Query is being answered (an extended Execute ran one).
    pub fn deallocated(&mut self) -> bool {
        if let Some(Expect::Deallocating(_, ran)) = self.q.front_mut() {
            *ran = true;
            return true;
        }
        false
    }

    /// True while a `DEALLOCATE ALL` Query is unanswered (the session holds the client's
    /// later messages until its outcome is known).
    pub fn deallocating_pending(&self) -> bool {
        // Not once a COPY FROM STDIN runs (the Query's text went on to one): the server
        // now waits for the client's data.
        !self.copy_active && self.q.iter().any(|e| matches!(e, Expect::Deallocating(..)))
    }

    /// The client's Parse of its named statement `stmt`.
    pub fn client_parse(&mut self, stmt: Arc<Statement>) {
        let parsed = Parsed {
            server: stmt.server_name.clone(),
            client: Some(stmt),
        };
        self.push(Expect::Client(Reply::Parse, Some(parsed)));
    }

    /// A proxy statement sent as Parse/Bind/Execute/.../Sync. Its Sync ends any
    /// skipping, so it is always answered (by a lone ReadyForQuery when skipped).
    pub fn proxy(&mut self, critical: bool) {
        if self.copy_in {
            self.sent_into_copy();
        }
        if std::mem::take(&mut self.skipping) {
            // Its Parse/Bind/Execute are skipped; only its Sync is answered.
            self.skipped_proxy = Some(critical || self.skipped_proxy == Some(true));
        }
        self.q.push_back(Expect::Proxy {
            critical,
            simple: false,
        });
    }

    /// A proxy statement sent as a simple Query. Skipped whole by a server skipping to a
    /// Sync: a critical one (a reset) that would be skipped means the server's state
    /// can no longer be vouched for.
    pub fn proxy_query(&mut self, critical: bool) {
        let queued = self.push(Expect::Proxy {
            critical,
            simple: true,
        });
        if !queued && critical {
            self.desync = Some("a reset of the server would have been skipped");
        }
    }

    /// A proxy Close whose CloseComplete is consumed.
    pub fn swallow_close(&mut self) {
        self.push(Expect::SwallowOne(Reply::Close, None));
    }

    /// A proxy Parse (of statement `name`) whose ParseComplete is consumed.
    pub fn swallow_parse(&mut self, name: String) {
        let parsed = Parsed {
            server: name,
            client: None,
        };
        self.push(Expect::SwallowOne(Reply::Parse, Some(parsed)));
    }

    /// The proxy's Describe of statement `stmt` (see [`Described`]).
    pub fn describe(&mut self, stmt: Arc<Statement>, why: Described) {
        self.push(Expect::Shape(stmt, why));
    }

    /// True while a copy's Describe is unanswered (the session holds the client's
    /// messages until it compares).
    pub fn comparing(&self) -> bool {
        self.q
            .iter()
            .any(|e| matches!(e, Expect::Shape(_, Described::Copy)))
    }

    /// True while the server skips every message up to the next Sync.
    pub fn skipping(&self) -> bool {
        self.skipping
    }

    /// True once after a proxy Close was skipped (see `skipped_close`).
    pub fn take_skipped_close(&mut self) -> bool {
        std::mem::take(&mut self.skipped_close)
    }

    /// Statements that the server did not prepare after all.
    pub fn take_failed_parses(&mut self) -> Vec<Parsed> {
        std::mem::take(&mut self.failed_parses)
    }

    /// A reply the proxy gives itself (nothing when the server would have skipped the
    /// message, as directly).
    pub fn synthetic(&mut self, bytes: BytesMut) {
        self.push(Expect::Synthetic(bytes, None));
    }

    /// The CloseComplete for a Close of the client's statement `name`, which the proxy
    /// answers itself. False when the server skips the message (the statement stays).
    pub fn synthetic_close(&mut self, bytes: BytesMut, name: String, stmt: Arc<Statement>) -> bool {
        self.push(Expect::Synthetic(bytes, Some((name, stmt))))
    }

    /// A proxy statement the server skipped (see `skipped_proxy`), once.
    pub fn take_skipped_proxy(&mut self) -> Option<bool> {
        self.skipped_proxy.take()
    }

    /// Client statements whose Close the server skipped (they exist after all).
    pub fn take_unclosed(&mut self) -> Vec<(String, Arc<Statement>)> {
        std::mem::take(&mut self.unclosed)
    }

    /// True when the next server message belongs to the proxy (and must be read whole).
    /// True when a proxy statement is queued (not necessarily at the front): its
    /// replies may still change settings the client is about to be told.
    pub fn proxy_queued(&self) -> bool {
        self.q.iter().any(|e| matches!(e, Expect::Proxy { .. }))
    }

    pub fn front_is_proxy(&self) -> bool {
        matches!(
            self.q.iter().find(|e| !matches!(e, Expect::CopyEnd)),
            Some(Expect::Proxy { .. } | Expect::SwallowOne(..) | Expect::Shape(..))
        )
    }

    /// Synthetic replies that are due now (nothing the server owes comes before them).
    pub fn take_synthetic(&mut self) -> Option<BytesMut> {
        self.skip_markers();
        if let Some(Expect::Synthetic(..)) = self.q.front() {
            if let Some(Expect::Synthetic(b, _)) = self.q.pop_front() {
                return Some(b);
            }
        }
        None
    }

    /// Accounts for one server message with `tag` and says what to do with it.
    pub fn on_message(&mut self, tag: u8) -> Disposition {
        self.skip_markers();
        let Some(front) = self.q.front() else {
            // Unsolicited (NoticeResponse, ParameterStatus, NotificationResponse).
            return Disposition::Forward;
        };
        let disposition = match front {
            Expect::Refused(_, code, message, extras) if tag == be::ERROR_RESPONSE => {
                Disposition::Refuse(code, message.clone(), extras)
            }
            Expect::Client(..)
            | Expect::Refused(..)
            | Expect::Synthetic(..)
            | Expect::CopyEnd
            | Expect::Deallocating(..) => Disposition::Forward,
            Expect::Proxy { critical, .. } if tag == be::ERROR_RESPONSE => {
                Disposition::ProxyError {
                    critical: *critical,
                }
            }
            Expect::Proxy { .. } => Disposition::Swallow,
            // A failing injected Parse/Close: the client must see why its statement failed.
            Expect::SwallowOne(..) if tag == be::ERROR_RESPONSE => Disposition::Forward,
            Expect::SwallowOne(..) => Disposition::Swallow,
            // The statement's own error came first; this one is the client's to see.
            Expect::Shape(..) if tag == be::ERROR_RESPONSE => Disposition::Forward,
            Expect::Shape(..) if is_async(tag) => Disposition::Forward,
            Expect::Shape(stmt, why) => Disposition::Shape(stmt.clone(), *why),
        };
        if is_async(tag) {
            return disposition;
        }
        if tag == be::ERROR_RESPONSE {
            if std::mem::take(&mut self.copy_active) {
                // The error ends the copy: later messages are read outside copy mode.
                self.copy_in = false;
                if self.copy_dropped {
                    // Syncs read after the server left copy mode are answered after all.
                    self.in_doubt = true;
                }
            }
            self.on_error();
        } else {
            match tag {
                be::COPY_IN_RESPONSE => self.on_copy_in(),
                be::COMMAND_COMPLETE => self.copy_active = false,
                _ => {}
            }
            self.on_reply(tag);
        }
        disposition
    }

    fn on_reply(&mut self, tag: u8) {
        let done = match self.q.front() {
            Some(Expect::Client(r, _) | Expect::SwallowOne(r, _) | Expect::Refused(r, ..)) => {
                r.is_terminal(tag)
            }
            Some(Expect::Shape(..)) => Reply::Describe.is_terminal(tag),
            Some(Expect::Deallocating(..)) if tag == be::READY_FOR_QUERY => {
                if let Some(Expect::Deallocating(stmts, false)) = self.q.pop_front() {
                    self.unclosed.extend(stmts);
                }
                false
            }
            Some(Expect::Proxy { .. }) => tag == be::READY_FOR_QUERY,
            _ => false,
        };
        if done {
            self.q.pop_front();
        }
    }

    /// An ErrorResponse: within a simple Query (or proxy statement) it does not end the
    /// entry; in extended protocol the server now skips every message up to the next
    /// Sync, simple Queries included, so the entries of skipped messages (synthetic
    /// replies too) are dropped, and when no Sync is queued yet the messages the client
    /// sends later are skipped as well (`skipping`).
    fn on_error(&mut self) {
        match self.q.front() {
            None => {} // unsolicited
            Some(Expect::Client(r, _) | Expect::Refused(r, ..)) if r.ends_at_ready() => {}
            Some(Expect::Deallocating(..)) => {}
            Some(Expect::Proxy { .. }) => {}
            Some(_) => {
                while let Some(e) = self.q.front() {
                    if matches!(e, Expect::Client(Reply::Sync, _)) {
                        return;
                    }
                    if let Expect::Proxy {
                        simple: false,
                        critical,
                    } = e
                    {
                        // Its own Sync ends the skipping, but its statements are skipped.
                        self.skipped_proxy = Some(*critical || self.skipped_proxy == Some(true));
                        return;
                    }
                    match self.q.pop_front() {
                        Some(
                            Expect::Client(_, Some(parsed)) | Expect::SwallowOne(_, Some(parsed)),
                        ) => self.failed_parses.push(parsed),
                        Some(Expect::Proxy { critical: true, .. }) => {
                            self.desync = Some("a reset of the server was skipped");
                        }
                        Some(Expect::Synthetic(_, Some(closed))) => self.unclosed.push(closed),
                        Some(Expect::SwallowOne(Reply::Close, _)) => self.skipped_close = true,
                        Some(Expect::Deallocating(stmts, _)) => self.unclosed.extend(stmts),
                        _ => {}
                    }
                }
                self.skipping = true;
            }
        }
    }
}

/// Messages the server may send at any time, not as a reply.
fn is_async(tag: u8) -> bool {
    tag == be::NOTICE_RESPONSE || tag == be::PARAMETER_STATUS || tag == b'A'
}

#[cfg(test)]
mod tests;
