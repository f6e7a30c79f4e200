//! What the proxy must know about a client's SQL before forwarding it: the tenant
//! guard's verdict (and, in transaction mode, session effects).

use crate::protocol::{self, frontend as fe};
use crate::server::State;

/// Decision for one Query or Parse message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Allowed, but the tenant context must be re-applied right after it.
    AllowReapply,
    /// Refused; the message the client gets.
    Refuse(String),
}

/// Inspects a whole Query or Parse message.
pub fn inspect_message(state: &State, tag: u8, msg: &[u8]) -> Verdict {
    let Some(sql) = sql_of(tag, msg) else {
        return Verdict::Allow;
    };
    let _ = (state, sql);
    Verdict::Allow
}

/// The SQL text of a Query or Parse message.
pub fn sql_of(tag: u8, msg: &[u8]) -> Option<&str> {
    let body = protocol::body(msg);
    let mut pos = 0;
    match tag {
        fe::QUERY => protocol::read_cstr(body, &mut pos),
        fe::PARSE => {
            protocol::read_cstr(body, &mut pos)?;
            protocol::read_cstr(body, &mut pos)
        }
        _ => None,
    }
}
