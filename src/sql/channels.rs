//! Per-tenant LISTEN/NOTIFY channels (`tenant.channels = "tenant"`, the default).
//!
//! Notification channels are database-wide in PostgreSQL and RLS does not apply to them:
//! a client of tenant A listening on `orders` would receive what tenant B's sessions
//! notify on `orders`, payload included. rlsgate therefore gives every tenant its own
//! channel namespace:
//! - On the way up, the channel of `LISTEN`, `UNLISTEN` and `NOTIFY` statements and the
//!   first argument of `pg_notify(...)` calls in a client's SQL get the suffix
//!   `@<first 16 hex digits of sha256(tenant)>` (see [`suffix`]); the rewritten text is
//!   parsed again and must name exactly the suffixed channels, or it is refused.
//! - On the way down (the enforcing half), a NotificationResponse reaches a client only
//!   when its channel ends with the client's own suffix, which is removed. Everything
//!   else is dropped, so a session that listens on another tenant's channel by any other
//!   route (dynamic SQL in a DO block, say) still receives nothing of it.
//!
//! The suffix is a hash so that every tenant's suffix has the same length and no
//! channel/tenant pair can be read as another (`a@b` + `c` versus `a` + `b@c`). It is
//! not a secret: what keeps tenants apart is that the proxy always appends the client's
//! own suffix and delivers only that suffix. Database code notifies a tenant's listeners
//! with `pg_notify('orders@' || rlsgate.channel_suffix(), ...)` (policies/channels.sql).

use bytes::BytesMut;
use pg_query::protobuf::{self, Token};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::wire::protocol::{self, backend as be};

/// PostgreSQL's longest identifier (NAMEDATALEN - 1), and so the longest channel name.
const MAX_CHANNEL: usize = 63;

/// Hex digits of the tenant hash in a suffix (64 bits: no collision among any
/// realistic number of tenants).
const HASH_DIGITS: usize = 16;

/// The channel suffix of `tenant`: `@` and the first 16 hex digits of its SHA-256.
pub fn suffix(tenant: &str) -> String {
    let digest = Sha256::digest(tenant.as_bytes());
    let mut out = String::with_capacity(1 + HASH_DIGITS);
    out.push('@');
    for byte in &digest[..HASH_DIGITS / 2] {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// Longest channel name a client can use: the suffix takes the rest.
pub const fn max_client_channel() -> usize {
    MAX_CHANNEL - 1 - HASH_DIGITS
}

/// Why a statement cannot be given per-tenant channels.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

fn refuse(code: &'static str, message: String) -> Refusal {
    Refusal { code, message }
}

/// One change to the SQL text: replace `start..end` with `text`.
pub(crate) struct Edit {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) text: String,
}

/// `sql` with every channel it names moved into the namespace of `suffix`, or `None`
/// when it names none.
pub fn scope_sql(sql: &str, suffix: &str) -> Result<Option<String>, Refusal> {
    let Ok(parsed) = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) else {
        return Ok(None); // PostgreSQL reports the syntax error itself.
    };
    let before = channels_of(&parsed.protobuf)?;
    if before.is_empty() {
        return Ok(None);
    }
    if sql.contains('\\') {
        // With standard_conforming_strings off a backslash changes where literals end,
        // and so where the edits below would land.
        return Err(refuse(
            "0A000",
            "rlsgate: LISTEN/NOTIFY/pg_notify statements that contain a backslash are not \
             supported with per-tenant channels (tenant.channels)"
                .into(),
        ));
    }
    let tokens = pg_query::scan_tokens(sql).map_err(|e| unverifiable(&e.to_string()))?;
    let mut edits = Vec::new();
    for channel in &before {
        match channel {
            Channel::Statement { name, location } => {
                if name.len() > max_client_channel() {
                    return Err(refuse(
                        "42622",
                        format!(
                            "rlsgate: channel name \"{name}\" is too long: with per-tenant \
                             channels (tenant.channels) names have at most {} bytes",
                            max_client_channel()
                        ),
                    ));
                }
                edits.push(statement_edit(&tokens, *location, name, suffix)?);
            }
            Channel::All => {}
            Channel::Call { location } => edits.extend(call_edits(&tokens, *location, suffix)?),
        }
    }
    if edits.is_empty() {
        return Ok(None); // UNLISTEN * only
    }
    let rewritten = apply(sql, edits);
    verify(&rewritten, &before, suffix)?;
    Ok(Some(rewritten))
}

/// A channel reference found in the parse tree.
#[derive(Debug, PartialEq, Eq)]
enum Channel {
    /// LISTEN/UNLISTEN/NOTIFY `name` as a top-level statement starting at `location`.
    Statement { name: String, location: usize },
    /// `UNLISTEN *`.
    All,
    /// A `pg_notify(...)` call whose name starts at `location`.
    Call { location: usize },
}

/// Channel references of the top-level statements, in order (one per `pg_notify` call
/// site: the parser shares one expression among the columns of `SET (a, b) = (...)`).
/// LISTEN/NOTIFY nested in a rule action or a `BEGIN ATOMIC` body is refused: it would
/// run later, in whichever session fires it, under no tenant's suffix.
fn channels_of(parsed: &protobuf::ParseResult) -> Result<Vec<Channel>, Refusal> {
    use protobuf::node::Node;
    let mut out = Vec::new();
    for raw in &parsed.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            continue;
        };
        let location = raw.stmt_location.max(0) as usize;
        match node {
            Node::ListenStmt(s) => out.push(Channel::Statement {
                name: s.conditionname.clone(),
                location,
            }),
            Node::NotifyStmt(s) => out.push(Channel::Statement {
                name: s.conditionname.clone(),
                location,
            }),
            Node::UnlistenStmt(s) if s.conditionname.is_empty() => out.push(Channel::All),
            Node::UnlistenStmt(s) => out.push(Channel::Statement {
                name: s.conditionname.clone(),
                location,
            }),
            _ => {
                // The whole tree in its serde form: pg_query's nodes() skips subtrees.
                let tree = serde_json::to_value(node)
                    .map_err(|_| unverifiable("cannot read the statement tree"))?;
                let mut calls = Vec::new();
                find_calls(&tree, &mut calls)?;
                calls.sort_unstable();
                calls.dedup();
                out.extend(calls.into_iter().map(|location| Channel::Call { location }));
            }
        }
    }
    Ok(out)
}

/// Locations of the `pg_notify` calls anywhere in a statement tree (unqualified or
/// `pg_catalog.`; a function of that name in another schema is someone else's).
fn find_calls(value: &Value, out: &mut Vec<usize>) -> Result<(), Refusal> {
    match value {
        Value::Array(items) => items.iter().try_for_each(|v| find_calls(v, out)),
        Value::Object(map) => {
            if ["ListenStmt", "UnlistenStmt", "NotifyStmt"]
                .iter()
                .any(|k| map.contains_key(*k))
            {
                return Err(refuse(
                    "0A000",
                    "rlsgate: LISTEN/NOTIFY inside a rule or a BEGIN ATOMIC body is not \
                     supported with per-tenant channels (tenant.channels); use \
                     pg_notify(rlsgate.channel('name'), ...) in a function instead"
                        .into(),
                ));
            }
            if map.contains_key("funcname") && map.contains_key("agg_within_group") {
                let names: Vec<&str> = map["funcname"]
                    .as_array()
                    .map(|names| {
                        names
                            .iter()
                            .filter_map(|n| n.pointer("/node/String/sval").and_then(Value::as_str))
                            .collect()
                    })
                    .unwrap_or_default();
                if matches!(names[..], ["pg_notify"] | ["pg_catalog", "pg_notify"]) {
                    let location = map.get("location").and_then(Value::as_i64).unwrap_or(-1);
                    out.push(location.max(0) as usize);
                }
            }
            map.values().try_for_each(|v| find_calls(v, out))
        }
        _ => Ok(()),
    }
}

fn unverifiable(why: &str) -> Refusal {
    refuse(
        "0A000",
        format!(
            "rlsgate: cannot scope this statement's notification channels to the tenant ({why})"
        ),
    )
}

fn is_comment(t: &protobuf::ScanToken) -> bool {
    t.token == Token::SqlComment as i32 || t.token == Token::CComment as i32
}

/// Tokens (comments skipped) that start at or after `from`.
fn tokens_from(
    tokens: &[protobuf::ScanToken],
    from: usize,
) -> impl Iterator<Item = &protobuf::ScanToken> + Clone {
    tokens
        .iter()
        .filter(move |t| t.start as usize >= from && !is_comment(t))
}

/// The channel identifier right after LISTEN/UNLISTEN/NOTIFY, replaced by the quoted,
/// suffixed name (a `UESCAPE '...'` clause of a `U&"..."` name goes with it).
fn statement_edit(
    tokens: &[protobuf::ScanToken],
    location: usize,
    name: &str,
    suffix: &str,
) -> Result<Edit, Refusal> {
    let mut it = tokens_from(tokens, location);
    let keyword = it.next().ok_or_else(|| unverifiable("no keyword"))?;
    if ![Token::Listen, Token::Unlisten, Token::Notify]
        .iter()
        .any(|k| *k as i32 == keyword.token)
    {
        return Err(unverifiable("statement does not start with its keyword"));
    }
    let ident = it.next().ok_or_else(|| unverifiable("no channel name"))?;
    let mut end = ident.end as usize;
    if ident.token == Token::Uident as i32
        && it.next().is_some_and(|t| t.token == Token::Uescape as i32)
    {
        end = it.next().ok_or_else(|| unverifiable("UESCAPE"))?.end as usize;
    }
    Ok(Edit {
        start: ident.start as usize,
        end,
        text: quote_ident(&format!("{name}{suffix}")),
    })
}

/// `pg_notify(ch, payload)` → `pg_notify((ch)||'<suffix>', payload)`.
fn call_edits(
    tokens: &[protobuf::ScanToken],
    location: usize,
    suffix: &str,
) -> Result<[Edit; 2], Refusal> {
    match first_argument(tokens, location) {
        Some((start, end, true)) => Ok([
            Edit {
                start,
                end: start,
                text: "(".into(),
            },
            Edit {
                start: end,
                end,
                text: format!(")||'{suffix}'"),
            },
        ]),
        _ => Err(refuse(
            "0A000",
            "rlsgate: pg_notify needs its channel and payload as two separate arguments with \
             per-tenant channels (tenant.channels)"
                .into(),
        )),
    }
}

/// The byte range of the first argument of the call whose name starts at `location`,
/// and whether a comma (another argument) follows it; `None` without arguments.
pub(crate) fn first_argument(
    tokens: &[protobuf::ScanToken],
    location: usize,
) -> Option<(usize, usize, bool)> {
    let mut it = tokens_from(tokens, location).skip_while(|t| t.token != Token::Ascii40 as i32);
    let open = it.next()?;
    let start = open.end as usize;
    let mut depth = 0usize;
    for t in it {
        match t.token {
            x if x == Token::Ascii40 as i32 || x == Token::Ascii91 as i32 => depth += 1,
            x if x == Token::Ascii41 as i32 || x == Token::Ascii93 as i32 => {
                if depth == 0 {
                    let end = t.start as usize;
                    return (end > start).then_some((start, end, false));
                }
                depth -= 1;
            }
            x if x == Token::Ascii44 as i32 && depth == 0 => {
                return Some((start, t.start as usize, true));
            }
            _ => {}
        }
    }
    None
}

pub(crate) fn apply(sql: &str, mut edits: Vec<Edit>) -> String {
    edits.sort_by_key(|e| (e.start, e.end));
    let mut out = String::with_capacity(sql.len() + edits.len() * 24);
    let mut at = 0;
    for e in edits {
        out.push_str(&sql[at..e.start]);
        out.push_str(&e.text);
        at = e.end;
    }
    out.push_str(&sql[at..]);
    out
}

/// The rewritten text must parse to the same statements with every statement channel
/// suffixed and the same number of `pg_notify` calls; otherwise the edits went wrong.
fn verify(rewritten: &str, before: &[Channel], suffix: &str) -> Result<(), Refusal> {
    let parsed = pg_query::parse(rewritten, pg_query::ParserOptions::DEFAULT)
        .map_err(|_| unverifiable("rewritten text does not parse"))?;
    let after = channels_of(&parsed.protobuf)?;
    let same = after.len() == before.len()
        && before.iter().zip(&after).all(|(b, a)| match (b, a) {
            (Channel::Statement { name: b, .. }, Channel::Statement { name: a, .. }) => {
                a.strip_suffix(suffix) == Some(b.as_str())
            }
            (Channel::All, Channel::All) => true,
            (Channel::Call { .. }, Channel::Call { .. }) => true,
            _ => false,
        });
    if same {
        Ok(())
    } else {
        Err(unverifiable("rewritten text differs"))
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// What the client receives for a NotificationResponse: the message with the channel's
/// suffix removed when the channel is in the client's namespace, otherwise `None`
/// (dropped).
pub fn unscope_notification(msg: &[u8], suffix: &str) -> Option<BytesMut> {
    // Bytes, not str: channel and payload are in the server encoding.
    let body = protocol::body(msg);
    let pid = body.get(..4)?;
    let rest = &body[4..];
    let nul = rest.iter().position(|&b| b == 0)?;
    let (channel, payload) = (&rest[..nul], &rest[nul + 1..]);
    let own = channel.strip_suffix(suffix.as_bytes())?;
    let len = 4 + 4 + own.len() + 1 + payload.len();
    let mut out = BytesMut::with_capacity(1 + len);
    out.extend_from_slice(&[be::NOTIFICATION_RESPONSE]);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(pid);
    out.extend_from_slice(own);
    out.extend_from_slice(&[0]);
    out.extend_from_slice(payload); // ends with its own NUL
    Some(out)
}

#[cfg(test)]
mod tests;
