//! Named prepared statements under transaction pooling: the client's names map to
//! server-side names derived from the statement text and parameter types, so any server
//! can hold them; each server keeps an LRU-bounded set of what it has prepared.
//!
//! The server names are keyed with a per-process secret ([`StatementNamer`]): a client
//! cannot compute another client's name, and it never needs to, since a client only
//! reaches the statements it prepared itself (the session answers any other name with
//! 26000, as PostgreSQL would).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::{BufMut, BytesMut};

use crate::upstream::held::Shape;
use crate::wire::protocol::{self, frontend as fe};

/// One statement as the server knows it.
#[derive(Debug)]
pub struct Statement {
    /// Unique in the process: tells this Parse from another of the same text.
    pub id: u64,
    pub server_name: String,
    /// The Parse message under the server name.
    pub parse: BytesMut,
    /// When the client prepared it (`pg_prepared_statements.prepare_time`).
    pub prepared_at: std::time::SystemTime,
    /// The client's own Parse, when rlsgate rewrote its text (scoped views, channels).
    pub original: Option<BytesMut>,
    /// What the server said of it when the client prepared it (the proxy's own
    /// Describe behind the client's Parse): any server's copy must match it.
    pub shape: OnceLock<Arc<Shape>>,
}

/// A statement is its Parse: two are the same when they are one Parse.
impl PartialEq for Statement {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Statement {}

/// Statement ids (0 is never one).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Statement {
    /// The Parse as the client sent it (its name is the client's or the server's).
    pub fn client_parse(&self) -> &[u8] {
        self.original.as_deref().unwrap_or(&self.parse)
    }

    /// The Parse under the server name with the parameter types given explicitly: a
    /// copy prepared on another server takes the types this one was prepared with.
    pub fn parse_with_types(&self, types: &[u32]) -> BytesMut {
        let body = protocol::body(&self.parse);
        let mut pos = 0;
        let _ = protocol::read_cstr(body, &mut pos);
        let start = pos;
        let query_end = body[pos..]
            .iter()
            .position(|b| *b == 0)
            .map_or(body.len(), |n| pos + n + 1);
        let query = &body[start..query_end];
        let len = 4 + self.server_name.len() + 1 + query.len() + 2 + 4 * types.len();
        let mut out = BytesMut::with_capacity(1 + len);
        out.put_u8(fe::PARSE);
        out.put_i32(len as i32);
        out.put_slice(self.server_name.as_bytes());
        out.put_u8(0);
        out.put_slice(query);
        out.put_u16(types.len() as u16);
        for t in types {
            out.put_u32(*t);
        }
        out
    }
}

/// The parameter types a Parse gives (0: the server infers it).
pub fn parameter_types(msg: &[u8]) -> Vec<u32> {
    let body = protocol::body(msg);
    let mut pos = 0;
    let (Some(_), Some(_)) = (
        protocol::read_cstr(body, &mut pos),
        protocol::read_cstr(body, &mut pos),
    ) else {
        return Vec::new();
    };
    let rest = &body[pos..];
    let Some(n) = rest
        .get(..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    else {
        return Vec::new();
    };
    rest[2..]
        .chunks_exact(4)
        .take(n)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Derives server-side statement names: SipHash-1-3 under a random per-process key
/// (`RandomState`) over the tenant, the text and the parameter types, so names are
/// stable within one rlsgate process (a server shares a statement between the clients
/// of one tenant, never between tenants, so its plan counts are the tenant's own) and
/// unguessable from outside it.
#[derive(Debug, Clone, Default)]
pub struct StatementNamer(std::hash::RandomState);

impl StatementNamer {
    /// Server-side statement name: stable for the same text and parameter types.
    fn name(&self, tenant: &str, query_and_types: &[u8]) -> String {
        use std::hash::BuildHasher;
        let key = self.0.hash_one((tenant, query_and_types));
        format!("{SERVER_PREFIX}{key:016x}")
    }
}

/// The client's named statements.
#[derive(Debug, Default)]
pub struct ClientStatements {
    map: HashMap<String, Arc<Statement>>,
    namer: StatementNamer,
    tenant: String,
    /// Recently forgotten (client name, server name) pairs: a message pipelined behind a
    /// Parse that failed may still name the server name in its error.
    forgotten: std::collections::VecDeque<(String, String)>,
    /// Taken out by a `DEALLOCATE ALL` whose outcome is not known yet.
    deallocated: Vec<(String, Arc<Statement>)>,
    /// The first statement id of the current transaction.
    transaction_from: u64,
}

/// Forgotten names kept for error messages.
const FORGOTTEN_KEPT: usize = 32;

impl ClientStatements {
    pub fn new(namer: StatementNamer, tenant: &str) -> ClientStatements {
        ClientStatements {
            map: HashMap::new(),
            namer,
            tenant: tenant.to_owned(),
            forgotten: Default::default(),
            deallocated: Vec::new(),
            transaction_from: 0,
        }
    }

    /// Records a Parse (`original`: the client's, when rlsgate rewrote it); returns the
    /// statement when it is named.
    pub fn on_parse(&mut self, msg: &[u8], original: Option<&[u8]>) -> Option<Arc<Statement>> {
        let body = protocol::body(msg);
        let mut pos = 0;
        let name = protocol::read_cstr(body, &mut pos)?;
        if name.is_empty() {
            return None;
        }
        let rest = &body[pos..];
        let server_name = self.namer.name(&self.tenant, rest);
        let mut parse = BytesMut::with_capacity(msg.len() + 24);
        parse.put_u8(fe::PARSE);
        parse.put_i32((4 + server_name.len() + 1 + rest.len()) as i32);
        parse.put_slice(server_name.as_bytes());
        parse.put_u8(0);
        parse.put_slice(rest);
        let stmt = Arc::new(Statement {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            server_name,
            parse,
            prepared_at: std::time::SystemTime::now(),
            original: original.map(BytesMut::from),
            shape: OnceLock::new(),
        });
        self.map.insert(name.to_owned(), stmt.clone());
        Some(stmt)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Statement>> {
        self.map.get(name)
    }

    /// Every statement the client holds, by its name (unordered, as PostgreSQL lists them).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Statement)> {
        self.map.iter().map(|(name, s)| (name.as_str(), s.as_ref()))
    }

    pub fn close(&mut self, name: &str) {
        self.map.remove(name);
    }

    /// A Close of `name` that the server skipped: the statement is there again, unless
    /// the name was parsed anew since.
    pub fn restore(&mut self, name: String, stmt: Arc<Statement>) {
        self.map.entry(name).or_insert(stmt);
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Takes every statement out for a `DEALLOCATE ALL` on its way; they wait in
    /// [`ClientStatements::take_deallocated`] (restored if it does not run).
    pub fn deallocate_all(&mut self) {
        let all: Vec<_> = self.map.drain().collect();
        self.deallocated.extend(all);
    }

    /// A server was bound for a transaction: statements parsed from now on are this
    /// transaction's (see [`ClientStatements::clear_before_transaction`]).
    pub fn transaction_started(&mut self) {
        self.transaction_from = NEXT_ID.load(Ordering::Relaxed);
    }

    /// A dynamic `DEALLOCATE ALL` ran in the transaction: the statements parsed before
    /// it began are gone (those parsed in it may have come after it, and stay).
    pub fn clear_before_transaction(&mut self) {
        let from = self.transaction_from;
        self.map.retain(|_, s| s.id >= from);
    }

    /// The statements the last `DEALLOCATE ALL` took out.
    pub fn take_deallocated(&mut self) -> Vec<(String, Arc<Statement>)> {
        std::mem::take(&mut self.deallocated)
    }

    /// Forgets `stmt` (its Parse failed), unless the name was parsed again since.
    pub fn forget(&mut self, stmt: &Arc<Statement>) {
        let forgotten = &mut self.forgotten;
        self.map.retain(|name, s| {
            let keep = !Arc::ptr_eq(s, stmt);
            if !keep {
                if forgotten.len() == FORGOTTEN_KEPT {
                    forgotten.pop_front();
                }
                forgotten.push_back((name.clone(), s.server_name.clone()));
            }
            keep
        });
    }
}

/// Prefix of every server-side statement name.
pub const SERVER_PREFIX: &str = "rlsgate_";

impl ClientStatements {
    /// A server error naming one of the client's statements by its server name (e.g.
    /// `prepared statement "rlsgate_…" requires 4`), rewritten to the client's name as
    /// PostgreSQL would have said it; `None` when nothing needs rewriting.
    pub fn unrename_error(&self, msg: &[u8]) -> Option<BytesMut> {
        let prefix = SERVER_PREFIX.as_bytes();
        let at = msg.windows(prefix.len()).position(|w| w == prefix)?;
        let len = SERVER_PREFIX.len() + 16;
        let server = std::str::from_utf8(msg.get(at..at + len)?).ok()?;
        let client = self
            .map
            .iter()
            .find(|(_, s)| s.server_name == server)
            .map(|(c, _)| c)
            .or_else(|| {
                let mut recent = self.forgotten.iter().rev();
                recent.find(|(_, s)| s == server).map(|(c, _)| c)
            })?;
        protocol::replace_in_error(msg, server, client)
    }
}

/// The statement a Bind refers to, and the Bind rewritten to `server_name`.
pub fn bind_statement(msg: &[u8]) -> Option<(&str, &str)> {
    let body = protocol::body(msg);
    let mut pos = 0;
    let portal = protocol::read_cstr(body, &mut pos)?;
    let stmt = protocol::read_cstr(body, &mut pos)?;
    Some((portal, stmt))
}

/// Rebuilds a Bind for `server_name`.
pub fn rewrite_bind(msg: &[u8], server_name: &str, out: &mut BytesMut) {
    let body = protocol::body(msg);
    let mut pos = 0;
    let portal = protocol::read_cstr(body, &mut pos).unwrap_or("");
    let _ = protocol::read_cstr(body, &mut pos);
    let rest = &body[pos..];
    out.put_u8(fe::BIND);
    out.put_i32((4 + portal.len() + 1 + server_name.len() + 1 + rest.len()) as i32);
    out.put_slice(portal.as_bytes());
    out.put_u8(0);
    out.put_slice(server_name.as_bytes());
    out.put_u8(0);
    out.put_slice(rest);
}

/// Describe/Close target: (`b'S'` or `b'P'`, name).
pub fn target(msg: &[u8]) -> Option<(u8, &str)> {
    let body = protocol::body(msg);
    let kind = *body.first()?;
    let mut pos = 1;
    let name = protocol::read_cstr(body, &mut pos)?;
    Some((kind, name))
}

/// Appends a Describe or Close (`tag`) of statement `name`.
pub fn put_statement_message(out: &mut BytesMut, tag: u8, name: &str) {
    out.put_u8(tag);
    out.put_i32((4 + 1 + name.len() + 1) as i32);
    out.put_u8(b'S');
    out.put_slice(name.as_bytes());
    out.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_same_server_name_and_rewrites() {
        let mut a = BytesMut::new();
        protocol::put_parse(&mut a, "s1", "SELECT $1");
        let mut b = BytesMut::new();
        protocol::put_parse(&mut b, "other", "SELECT $1");
        let namer = StatementNamer::default();
        let mut cs = ClientStatements::new(namer.clone(), "acme");
        let sa = cs.on_parse(&a, None).unwrap();
        let sb = ClientStatements::new(namer.clone(), "acme")
            .on_parse(&b, None)
            .unwrap();
        assert_eq!(sa.server_name, sb.server_name);
        // Another tenant's client prepares the same text under another server name.
        let sg = ClientStatements::new(namer, "globex")
            .on_parse(&b, None)
            .unwrap();
        assert_ne!(sa.server_name, sg.server_name);
        // Another process (another key) names the same text differently.
        let sc = ClientStatements::default().on_parse(&a, None).unwrap();
        assert_ne!(sa.server_name, sc.server_name);
        assert_eq!(
            crate::sql::inspect::sql_of(fe::PARSE, &sa.parse, crate::sql::encoding::Encoding::Utf8)
                .map(|s| s.text),
            Some("SELECT $1".into())
        );
        let mut unnamed = BytesMut::new();
        protocol::put_parse(&mut unnamed, "", "SELECT 1");
        assert!(cs.on_parse(&unnamed, None).is_none());
        assert_ne!(sa.id, sb.id, "each Parse is its own statement");
    }

    #[test]
    fn parse_with_types_keeps_name_and_text() {
        let mut a = BytesMut::new();
        protocol::put_parse(&mut a, "s1", "INSERT INTO t VALUES ($1, $2)");
        let stmt = ClientStatements::default().on_parse(&a, None).unwrap();
        let typed = stmt.parse_with_types(&[23, 25]);
        assert_eq!(parameter_types(&typed), vec![23, 25]);
        let body = protocol::body(&typed);
        let mut pos = 0;
        assert_eq!(
            protocol::read_cstr(body, &mut pos),
            Some(&stmt.server_name[..])
        );
        assert_eq!(
            protocol::read_cstr(body, &mut pos),
            Some("INSERT INTO t VALUES ($1, $2)")
        );
        assert_eq!(
            i32::from_be_bytes(typed[1..5].try_into().unwrap()) as usize,
            typed.len() - 1
        );
    }
}
