//! PostgreSQL wire framing and the few messages the proxy reads or writes itself. No I/O.
//!
//! Messages are forwarded byte-exact; this module only finds message boundaries
//! (1-byte tag + 4-byte big-endian length that counts itself) and decodes the
//! handful the proxy must act on.

use bytes::{BufMut, BytesMut};

/// Largest message accepted from either side (PostgreSQL's own limit for most messages is 1 GB;
/// the proxy caps what it must buffer whole).
pub const MAX_MESSAGE_LEN: usize = 1 << 30;

/// Length of the tag + length header.
pub const HEADER_LEN: usize = 5;

/// Frontend message tags the proxy cares about.
pub mod frontend {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const EXECUTE: u8 = b'E';
    pub const DESCRIBE: u8 = b'D';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const TERMINATE: u8 = b'X';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
}

/// Backend message tags the proxy cares about.
pub mod backend {
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const AUTHENTICATION: u8 = b'R';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
}

/// Transaction status carried by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    Idle,
    InTransaction,
    Failed,
}

impl TxStatus {
    pub fn from_byte(b: u8) -> Option<TxStatus> {
        match b {
            b'I' => Some(TxStatus::Idle),
            b'T' => Some(TxStatus::InTransaction),
            b'E' => Some(TxStatus::Failed),
            _ => None,
        }
    }

    pub fn as_byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }
}

/// Framing error: the peer sent something that is not a PostgreSQL message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {0}")]
    BadLength(u32),
}

/// Header of the message starting at `buf[0]`, if the 5 header bytes are there.
#[inline]
pub fn header(buf: &[u8]) -> Result<Option<(u8, usize)>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 || len as usize > MAX_MESSAGE_LEN {
        return Err(FrameError::BadLength(len));
    }
    Ok(Some((buf[0], 1 + len as usize)))
}

/// What a [`Scanner`] found at the current position of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A whole message the caller asked to see: `tag`, and `buf[start..end]` is the full
    /// message including its header.
    Message { tag: u8, start: usize, end: usize },
    /// Bytes `start..end` belong to messages the caller does not need to see; pass them on.
    Pass { start: usize, end: usize },
    /// Everything from `start` on is an incomplete header or an incomplete message the caller
    /// wants whole: read more bytes first.
    NeedMore { start: usize },
}

/// Finds message boundaries in a stream of bytes without copying: messages whose tag
/// `want(tag)` returns false are passed through as they arrive, even when they are
/// larger than the buffer (a 100 MB DataRow streams through in chunks).
#[derive(Debug, Default)]
pub struct Scanner {
    /// Bytes of an uninteresting message that still have to pass before the next header.
    skip: usize,
}

impl Scanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// True when the scanner sits exactly on a message boundary.
    pub fn at_boundary(&self) -> bool {
        self.skip == 0
    }

    /// Looks at `buf[pos..]` and returns the next step. Call repeatedly with the `end`
    /// of the previous step until `NeedMore`.
    #[inline]
    pub fn step(
        &mut self,
        buf: &[u8],
        pos: usize,
        want: impl Fn(u8) -> bool,
    ) -> Result<Step, FrameError> {
        let avail = buf.len() - pos;
        if self.skip > 0 {
            if avail == 0 {
                return Ok(Step::NeedMore { start: pos });
            }
            let n = self.skip.min(avail);
            self.skip -= n;
            return Ok(Step::Pass {
                start: pos,
                end: pos + n,
            });
        }
        // Coalesce runs of uninteresting whole messages into one Pass.
        let mut end = pos;
        loop {
            match header(&buf[end..])? {
                None => break,
                Some((tag, len)) => {
                    if want(tag) {
                        if end > pos {
                            break;
                        }
                        if buf.len() - end >= len {
                            return Ok(Step::Message {
                                tag,
                                start: end,
                                end: end + len,
                            });
                        }
                        return Ok(Step::NeedMore { start: end });
                    }
                    let have = buf.len() - end;
                    if have >= len {
                        end += len;
                    } else {
                        self.skip = len - have;
                        end = buf.len();
                        break;
                    }
                }
            }
        }
        if end > pos {
            Ok(Step::Pass { start: pos, end })
        } else {
            Ok(Step::NeedMore { start: pos })
        }
    }
}

/// Reads a NUL-terminated string starting at `buf[*pos]`, advancing `pos` past the NUL.
pub fn read_cstr<'a>(buf: &'a [u8], pos: &mut usize) -> Option<&'a str> {
    let rest = buf.get(*pos..)?;
    let nul = rest.iter().position(|&b| b == 0)?;
    let s = std::str::from_utf8(&rest[..nul]).ok()?;
    *pos += nul + 1;
    Some(s)
}

/// Body of a whole message (after the 5-byte header).
#[inline]
pub fn body(msg: &[u8]) -> &[u8] {
    &msg[HEADER_LEN..]
}

/// Decodes a ParameterStatus body into (name, value).
pub fn parse_parameter_status(msg: &[u8]) -> Option<(&str, &str)> {
    let b = body(msg);
    let mut pos = 0;
    let name = read_cstr(b, &mut pos)?;
    let value = read_cstr(b, &mut pos)?;
    Some((name, value))
}

/// Fields of an ErrorResponse / NoticeResponse the proxy looks at.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

/// Decodes an ErrorResponse or NoticeResponse body.
pub fn parse_error_fields(msg: &[u8]) -> ErrorFields {
    let b = body(msg);
    let mut out = ErrorFields::default();
    let mut pos = 0;
    while pos < b.len() && b[pos] != 0 {
        let field = b[pos];
        pos += 1;
        let Some(value) = read_cstr(b, &mut pos) else {
            break;
        };
        match field {
            b'V' => out.severity = value.to_owned(),
            b'S' if out.severity.is_empty() => out.severity = value.to_owned(),
            b'C' => out.code = value.to_owned(),
            b'M' => out.message = value.to_owned(),
            _ => {}
        }
    }
    out
}

/// An ErrorResponse/NoticeResponse with `from` replaced by `to` in every field; `None`
/// when the message is malformed.
pub fn replace_in_error(msg: &[u8], from: &str, to: &str) -> Option<BytesMut> {
    let b = body(msg);
    let mut out = BytesMut::with_capacity(msg.len() + to.len());
    let start = begin(&mut out, *msg.first()?);
    let mut pos = 0;
    while *b.get(pos)? != 0 {
        let field = b[pos];
        pos += 1;
        let value = read_cstr(b, &mut pos)?;
        out.put_u8(field);
        put_cstr(&mut out, &value.replace(from, to));
    }
    out.put_u8(0);
    finish(&mut out, start);
    Some(out)
}

/// Severity of an ErrorResponse the proxy sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// Appends an ErrorResponse with severity, SQLSTATE and message.
pub fn put_error(buf: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    put_error_with(buf, severity, code, message, &[]);
}

/// Appends ErrorResponse with more fields after the message (`(b'F', "plancache.c")`).
pub fn put_error_with(
    buf: &mut BytesMut,
    severity: Severity,
    code: &str,
    message: &str,
    extras: &[(u8, &str)],
) {
    let start = begin(buf, b'E');
    let fields = [
        (b'S', severity.as_str()),
        (b'V', severity.as_str()),
        (b'C', code),
        (b'M', message),
    ];
    for (field, value) in fields.iter().chain(extras) {
        buf.put_u8(*field);
        put_cstr(buf, value);
    }
    buf.put_u8(0);
    finish(buf, start);
}

/// Appends ReadyForQuery.
pub fn put_ready_for_query(buf: &mut BytesMut, status: TxStatus) {
    buf.put_u8(backend::READY_FOR_QUERY);
    buf.put_i32(5);
    buf.put_u8(status.as_byte());
}

/// Appends AuthenticationOk.
pub fn put_auth_ok(buf: &mut BytesMut) {
    buf.put_u8(backend::AUTHENTICATION);
    buf.put_i32(8);
    buf.put_i32(0);
}

/// Appends ParameterStatus.
pub fn put_parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    let start = begin(buf, backend::PARAMETER_STATUS);
    put_cstr(buf, name);
    put_cstr(buf, value);
    finish(buf, start);
}

/// Appends BackendKeyData.
pub fn put_backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    buf.put_u8(backend::BACKEND_KEY_DATA);
    buf.put_i32(12);
    buf.put_i32(pid);
    buf.put_i32(secret);
}

/// Appends NegotiateProtocolVersion (newest minor version we speak, unrecognised options).
pub fn put_negotiate_protocol_version(buf: &mut BytesMut, minor: i32, options: &[&str]) {
    let start = begin(buf, b'v');
    buf.put_i32(minor);
    buf.put_i32(options.len() as i32);
    for o in options {
        put_cstr(buf, o);
    }
    finish(buf, start);
}

/// Appends a simple Query.
pub fn put_query(buf: &mut BytesMut, sql: &str) {
    let start = begin(buf, frontend::QUERY);
    put_cstr(buf, sql);
    finish(buf, start);
}

/// Appends Parse(unnamed) + Bind(unnamed, text params) + Execute + Close of both + Sync for `sql`
/// with `params` bound as text: values never appear in the statement text (and so not in
/// `pg_stat_activity.query`).
pub fn put_bound_query(buf: &mut BytesMut, sql: &str, params: &[&str]) {
    put_bound_statement(buf, sql, params);
    put_sync(buf);
}

/// Parse/Bind/Execute of `sql` with text `params` (unnamed statement and portal), then
/// Close of both, no Sync: several of them before one Sync run in one transaction.
pub fn put_bound_statement(buf: &mut BytesMut, sql: &str, params: &[&str]) {
    // Parse: name, query, no declared types.
    let start = begin(buf, frontend::PARSE);
    put_cstr(buf, "");
    put_cstr(buf, sql);
    buf.put_i16(0);
    finish(buf, start);
    // Bind: portal, statement, all params text, values, results default format.
    let start = begin(buf, frontend::BIND);
    put_cstr(buf, "");
    put_cstr(buf, "");
    buf.put_i16(0);
    buf.put_i16(params.len() as i16);
    for p in params {
        buf.put_i32(p.len() as i32);
        buf.put_slice(p.as_bytes());
    }
    buf.put_i16(0);
    finish(buf, start);
    // Execute: unnamed portal, all rows.
    let start = begin(buf, frontend::EXECUTE);
    put_cstr(buf, "");
    buf.put_i32(0);
    finish(buf, start);
    // Nothing of it stays on the server: a client's later Bind/Describe/Execute of the
    // unnamed statement or portal fails as directly (26000/34000) instead of re-running
    // the proxy's statement with the client's own parameters.
    for kind in [b'S', b'P'] {
        let start = begin(buf, frontend::CLOSE);
        buf.put_u8(kind);
        put_cstr(buf, "");
        finish(buf, start);
    }
}

/// Appends Parse of `sql` as statement `name`, no declared parameter types.
pub fn put_parse(buf: &mut BytesMut, name: &str, sql: &str) {
    let start = begin(buf, frontend::PARSE);
    put_cstr(buf, name);
    put_cstr(buf, sql);
    buf.put_i16(0);
    finish(buf, start);
}

/// `msg` (a Query or Parse) with its SQL text replaced by `sql`; a Parse keeps its
/// statement name and parameter types. `None` when `msg` is malformed.
pub fn with_sql(msg: &[u8], sql: &str) -> Option<BytesMut> {
    let tag = *msg.first()?;
    let body = msg.get(HEADER_LEN..)?;
    let mut pos = 0;
    let mut out = BytesMut::with_capacity(msg.len() + sql.len());
    let start = begin(&mut out, tag);
    if tag == frontend::PARSE {
        put_cstr(&mut out, read_cstr(body, &mut pos)?);
    }
    read_cstr(body, &mut pos)?; // the old text
    put_cstr(&mut out, sql);
    out.put_slice(&body[pos..]); // Parse: parameter types
    finish(&mut out, start);
    Some(out)
}

/// Appends CommandComplete with `tag` (e.g. `DEALLOCATE`).
pub fn put_command_complete(buf: &mut BytesMut, tag: &str) {
    let start = begin(buf, backend::COMMAND_COMPLETE);
    put_cstr(buf, tag);
    finish(buf, start);
}

/// Appends Sync.
pub fn put_sync(buf: &mut BytesMut) {
    buf.put_u8(frontend::SYNC);
    buf.put_i32(4);
}

/// Appends Flush (the server sends what it has, no Sync needed).
pub fn put_flush(buf: &mut BytesMut) {
    buf.put_u8(frontend::FLUSH);
    buf.put_i32(4);
}

/// Appends ParameterDescription with `types`.
pub fn put_parameter_description(buf: &mut BytesMut, types: &[u32]) {
    let start = begin(buf, backend::PARAMETER_DESCRIPTION);
    buf.put_u16(types.len() as u16);
    for t in types {
        buf.put_u32(*t);
    }
    finish(buf, start);
}

/// Appends Terminate.
pub fn put_terminate(buf: &mut BytesMut) {
    buf.put_u8(frontend::TERMINATE);
    buf.put_i32(4);
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
}

fn begin(buf: &mut BytesMut, tag: u8) -> usize {
    buf.put_u8(tag);
    let start = buf.len();
    buf.put_i32(0);
    start
}

fn finish(buf: &mut BytesMut, start: usize) {
    let len = (buf.len() - start) as i32;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Quotes a string as a SQL literal (`E'...'` when it contains a backslash), the way
/// libpq's `PQescapeLiteral` does. Used only where a bound parameter is impossible.
pub fn quote_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 3);
    if s.contains('\\') {
        out.push_str(" E");
    }
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn scanner_passes_runs_and_stops_at_wanted() {
        let mut buf = msg(b'D', b"row1");
        buf.extend(msg(b'D', b"row2"));
        buf.extend(msg(b'Z', b"I"));
        let mut s = Scanner::new();
        let want = |t| t == b'Z';
        assert_eq!(
            s.step(&buf, 0, want).unwrap(),
            Step::Pass { start: 0, end: 18 }
        );
        assert_eq!(
            s.step(&buf, 18, want).unwrap(),
            Step::Message {
                tag: b'Z',
                start: 18,
                end: 24
            }
        );
        assert_eq!(
            s.step(&buf, 24, want).unwrap(),
            Step::NeedMore { start: 24 }
        );
    }

    #[test]
    fn scanner_streams_large_uninteresting_message() {
        let big = msg(b'D', &[7u8; 100]);
        let mut s = Scanner::new();
        let want = |t| t == b'Z';
        // First 20 bytes arrive.
        assert_eq!(
            s.step(&big[..20], 0, want).unwrap(),
            Step::Pass { start: 0, end: 20 }
        );
        assert!(!s.at_boundary());
        // The rest arrives in a new buffer together with a ReadyForQuery.
        let mut rest = big[20..].to_vec();
        rest.extend(msg(b'Z', b"T"));
        assert_eq!(
            s.step(&rest, 0, want).unwrap(),
            Step::Pass { start: 0, end: 85 }
        );
        assert!(s.at_boundary());
        assert_eq!(
            s.step(&rest, 85, want).unwrap(),
            Step::Message {
                tag: b'Z',
                start: 85,
                end: 91
            }
        );
    }

    #[test]
    fn scanner_waits_for_whole_wanted_message_and_partial_header() {
        let z = msg(b'Z', b"I");
        let mut s = Scanner::new();
        let want = |t| t == b'Z';
        assert_eq!(
            s.step(&z[..3], 0, want).unwrap(),
            Step::NeedMore { start: 0 }
        );
        assert_eq!(
            s.step(&z[..5], 0, want).unwrap(),
            Step::NeedMore { start: 0 }
        );
        assert_eq!(
            s.step(&z, 0, want).unwrap(),
            Step::Message {
                tag: b'Z',
                start: 0,
                end: 6
            }
        );
    }

    #[test]
    fn bad_length_is_an_error() {
        let mut s = Scanner::new();
        let bad = [b'Q', 0, 0, 0, 2];
        assert_eq!(s.step(&bad, 0, |_| true), Err(FrameError::BadLength(2)));
    }

    #[test]
    fn error_response_round_trip() {
        let mut buf = BytesMut::new();
        put_error(&mut buf, Severity::Fatal, "28P01", "token expired");
        let f = parse_error_fields(&buf);
        assert_eq!(f.severity, "FATAL");
        assert_eq!(f.code, "28P01");
        assert_eq!(f.message, "token expired");
    }

    #[test]
    fn parameter_status_round_trip() {
        let mut buf = BytesMut::new();
        put_parameter_status(&mut buf, "server_version", "15.18");
        assert_eq!(
            parse_parameter_status(&buf),
            Some(("server_version", "15.18"))
        );
    }

    #[test]
    fn literal_quoting() {
        assert_eq!(quote_literal("a'b"), "'a''b'");
        assert_eq!(quote_literal("a\\b"), " E'a\\\\b'");
    }
}
