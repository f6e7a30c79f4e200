//! Which client encoding the server uses for each message of one session: predicted from
//! the statements the guard reads, confirmed by the server's `ParameterStatus`.
//!
//! The server converts a message's text with the `client_encoding` it holds when it
//! reads the message, that is after every earlier message has run (a failed statement, a
//! rolled-back transaction or savepoint undoes a change; extended-protocol messages after
//! `RESET ALL` run in UTF8, the proxy's own upstream setting, until rlsgate re-applies the
//! client's settings at the next Sync). Rather than replaying all of that, the session
//! keeps the set of encodings the server may hold for the next message:
//! - nothing in flight (every reply read): exactly what the server last reported
//!   (PostgreSQL reports each change before its ReadyForQuery);
//! - otherwise every encoding the server held or may have been switched to since the last
//!   idle point outside a transaction block: the reported ones, the values of statements
//!   that may change `client_encoding` (every constant in them that names an encoding,
//!   since the guard refuses non-constant values), UTF8 and the startup value after
//!   `RESET ALL`/`DISCARD ALL`, and those of any statement ever prepared (a Bind can run
//!   it later). Text is read in their common way; when they read differently, only
//!   ASCII text (identical in all of them) is accepted until the replies are in.
//!
//! A server that reports an encoding outside that set (a change rlsgate did not see, for
//! example inside a function) or one that rlsgate refuses ends the session.

use crate::sql::encoding::{allowed, Class, Encoding};
use crate::wire::protocol::{frontend as fe, TxStatus};

/// Why a session cannot go on (sent as FATAL 08P01, the server is discarded).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodingError {
    #[error(
        "rlsgate: the server switched client_encoding to {0}, which rlsgate does not allow: {1}"
    )]
    Refused(String, String),
    #[error("rlsgate: the server switched client_encoding to {0}, a change rlsgate did not see (for example inside a function); the statements that follow cannot be checked")]
    Unexpected(&'static str),
}

/// How the guard must read the next message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    Known(Encoding),
    /// Only ASCII text can be read; anything else is refused with this message.
    Unknown(String),
}

/// Encodings a statement may switch the session to (see [`ClientEncoding`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub targets: Vec<Encoding>,
    /// `RESET ALL` / `DISCARD ALL`: UTF8, then the client's startup setting.
    pub to_startup: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty() && !self.to_startup
    }
}

/// The client encoding of one session, as the server uses it.
#[derive(Debug, Clone)]
pub struct ClientEncoding {
    /// The client's startup setting (what the proxy's context applies), else UTF8.
    startup: Encoding,
    /// What the proxy's context makes a freshly bound server hold.
    bound: Encoding,
    /// The server's last report (or `bound`): exact once every reply is read.
    reported: Encoding,
    /// What the server may hold when it reads the next message.
    possible: Vec<Encoding>,
    /// Values of statements ever prepared.
    prepared: Vec<Encoding>,
    /// The bound server's database is UTF8 (decoded encodings need it).
    server_utf8: bool,
    /// The encoding of the last [`Reading::Known`].
    last: Encoding,
}

impl ClientEncoding {
    /// `startup`: see [`of_settings`]. `server`: the bound server's startup parameters,
    /// when a server is bound for the whole session (then call no [`Self::on_bind`]).
    pub fn new(startup: Encoding, server: Option<&[(String, String)]>) -> Self {
        let mut s = ClientEncoding {
            startup,
            bound: startup,
            reported: startup,
            possible: vec![startup],
            prepared: Vec::new(),
            server_utf8: false,
            last: startup,
        };
        if let Some(params) = server {
            s.on_bind(startup, params);
        }
        s
    }

    /// A server was bound and the proxy's context makes it hold `held` (see
    /// [`of_settings`]) before any client message; `params` are its startup parameters.
    pub fn on_bind(&mut self, held: Encoding, params: &[(String, String)]) {
        self.bound = held;
        self.reported = held;
        self.possible = vec![held];
        self.server_utf8 = params
            .iter()
            .any(|(n, v)| n == "server_encoding" && Encoding::from_name(v) == Some(Encoding::Utf8));
    }

    /// How to read the next client message. `idle`: no reply is owed (nothing in flight),
    /// `tx`: the session's transaction status.
    pub fn reading(&mut self, idle: bool, tx: TxStatus) -> Reading {
        if idle {
            if tx == TxStatus::Idle {
                self.possible = vec![self.reported];
            }
            return self.known(self.reported);
        }
        let first = self.possible[0];
        if let Some(other) = self
            .possible
            .iter()
            .chain(&self.prepared)
            .find(|e| !e.reads_like(first))
        {
            return Reading::Unknown(format!(
                "rlsgate: text that is not ASCII cannot be checked while a client_encoding \
                 change is in flight (the server may use {} or {}); wait for the reply to \
                 the change before sending it",
                first.name(),
                other.name()
            ));
        }
        self.known(first)
    }

    fn known(&mut self, enc: Encoding) -> Reading {
        if matches!(enc.class(), Class::Decoded(_)) && !self.server_utf8 {
            return Reading::Unknown(format!(
                "rlsgate: client_encoding {} is supported only on a database whose encoding \
                 is UTF8; use UTF8",
                enc.name()
            ));
        }
        self.last = enc;
        Reading::Known(enc)
    }

    /// The encoding of the last message read (its other uses read it the same way).
    pub fn current(&self) -> Encoding {
        self.last
    }

    /// A client Query or Parse (`tag`) about to be forwarded may make these changes.
    pub fn on_statement(&mut self, tag: u8, changes: &Changes) {
        let mut add = changes.targets.clone();
        if changes.to_startup {
            add.extend([Encoding::Utf8, self.startup]);
        }
        for e in add {
            push(&mut self.possible, e);
            if tag == fe::PARSE {
                push(&mut self.prepared, e);
            }
        }
    }

    /// A `ParameterStatus` from the bound server; `proxy`: it belongs to a reply the
    /// proxy consumes (its own context statements). Err: the session must end.
    pub fn on_parameter_status(
        &mut self,
        name: &str,
        value: &str,
        proxy: bool,
    ) -> Result<(), EncodingError> {
        if !name.eq_ignore_ascii_case("client_encoding") {
            return Ok(());
        }
        let enc = allowed(value).map_err(|why| EncodingError::Refused(value.to_owned(), why))?;
        let proxy_own = proxy && [Encoding::Utf8, self.startup, self.bound].contains(&enc);
        if !proxy_own && !self.possible.contains(&enc) && !self.prepared.contains(&enc) {
            return Err(EncodingError::Unexpected(enc.name()));
        }
        self.reported = enc;
        if !proxy {
            push(&mut self.possible, enc);
        }
        Ok(())
    }
}

fn push(v: &mut Vec<Encoding>, e: Encoding) {
    if !v.contains(&e) {
        v.push(e);
    }
}

/// The encoding a server holds after the proxy applied a context: the last
/// `client_encoding` among the client's settings (startup parameters) and then the
/// remembered `SET` statements (`(name, sql)`, replayed in order), else UTF8 (what the
/// proxy's own upstream startup sends).
pub fn of_settings(settings: &[(String, String)], replay: &[(String, String)]) -> Encoding {
    let mut enc = Encoding::Utf8;
    for (n, v) in settings {
        if n.eq_ignore_ascii_case("client_encoding") {
            enc = Encoding::from_name(v).unwrap_or(enc);
        }
    }
    for (n, sql) in replay {
        if n.eq_ignore_ascii_case("client_encoding") {
            enc = super::changes_of(sql)
                .targets
                .iter()
                .rev()
                .find(|e| **e != Encoding::Utf8)
                .copied()
                .unwrap_or(Encoding::Utf8);
        }
    }
    enc
}

#[cfg(test)]
mod tests;
