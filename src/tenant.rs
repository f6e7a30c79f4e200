//! Tenant context: which settings the proxy owns, their values for one identity, and
//! how they are applied (one bound `set_config` statement, values never in SQL text;
//! with the sealed context, `rlsgate.enter` in the same statement).

mod seal;

use std::sync::Arc;

use bytes::BytesMut;

pub use seal::{hmac_hex, SealHandle, Sealer};

use crate::auth::Identity;
use crate::config::TenantConfig;
use crate::wire::protocol;

/// Startup parameters that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// Why a client's startup cannot be honoured.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContextError {
    #[error("setting \"{0}\" is owned by rlsgate and cannot be set by the client")]
    Protected(String),
    #[error("replication connections are not supported through rlsgate")]
    Replication,
    #[error("invalid startup options: {0}")]
    BadOptions(String),
    #[error("client_encoding {0:?} is not allowed through rlsgate (not an encoding PostgreSQL knows, or one whose multi-byte characters can hide quotes from the statement guard, see rlsgate::sql::encoding); use UTF8")]
    UnsafeEncoding(String),
}

/// The settings rlsgate owns (lower-cased names).
#[derive(Debug, Clone)]
pub struct OwnedSettings {
    names: Vec<String>,
}

impl OwnedSettings {
    pub fn from_config(cfg: &TenantConfig) -> Self {
        let mut names = vec![
            cfg.setting.to_ascii_lowercase(),
            cfg.seal_setting.to_ascii_lowercase(),
        ];
        names.extend(cfg.claims.keys().map(|k| k.to_ascii_lowercase()));
        names.sort();
        names.dedup();
        Self { names }
    }

    /// True if `name` (any case) is owned by the proxy.
    pub fn contains(&self, name: &str) -> bool {
        self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// Session settings for one client: its startup parameters, then the tenant context.
/// Applied in this order so the tenant context always wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionContext {
    pub settings: Vec<(String, String)>,
    /// Number of trailing entries that are the tenant context (the rest are startup params).
    pub tenant_len: usize,
    /// Remembered client `SET` statements (name, text), transaction pooling.
    pub replay: Vec<(String, String)>,
    /// The sealed context (`[tenant] sealed`): every application of the tenant settings
    /// also calls `rlsgate.enter` with a fresh seal for the server's backend pid.
    pub seal: Option<SealHandle>,
}

/// Sent (pipelined, replies consumed, failure closes the session) before a session runs
/// on a server whose last session may have left state behind (`ServerConn::dirty`). A
/// session can change state the proxy never sees: `set_config` of any setting (in a
/// function, too), temporary objects created through `search_path = pg_temp` or the
/// `pg_temp_N` schema name, a LISTEN, a lock or a held cursor taken by dynamic SQL. None
/// of it may reach the next client.
///
/// Everything `DISCARD ALL` clears except prepared statements and plans: the server
/// keeps rlsgate's renamed statements, so after DDL a client re-executing one gets
/// PostgreSQL's own "cached plan must not change result type" (which drivers handle by
/// preparing again) instead of a silently re-prepared statement whose rows no longer
/// match the description the client holds. `SET SESSION AUTHORIZATION` needs no reset:
/// rlsgate refuses a superuser upstream role, and nobody else can change it.
/// (Measured on PostgreSQL 15 here: ~70 µs of server time, paid only after a dirty
/// session; `DISCARD ALL` alone costs ~12 µs but drops the statements.)
pub const SWITCH_RESET: &str = "RESET ALL; RESET ROLE; CLOSE ALL; UNLISTEN *; \
    SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES";

/// The settings the session itself set (by SET or `set_config`, in any transaction that
/// committed), as (name, hex of the UTF-8 value): hex so the text survives any client
/// encoding the server connection is in.
pub const SESSION_SETTINGS: &str =
    "SELECT name, pg_catalog.encode(pg_catalog.convert_to(setting, 'UTF8'), 'hex') \
    FROM pg_catalog.pg_settings WHERE source OPERATOR(pg_catalog.=) 'session'";

/// The prepared statements a server holds, as (SQL-level, protocol-level) counts, read at
/// the release of a dirty server (transaction mode): dynamic SQL (`EXECUTE 'PREPARE
/// ...'` or `'DEALLOCATE ALL'` in a DO block or function) changes them unseen. Sealed:
/// through `rlsgate.statement_counts()` (policies/sealed.sql), since `policy apply`
/// revokes the raw view from the app role.
///
/// Every proxy statement that runs after client SQL on the same server runs under the
/// client's `search_path` and temporary objects: no type name, function or operator in
/// them may resolve to one the client made (a `pg_temp.text` domain whose CHECK runs the
/// client's code inside the proxy's query, red-team pass 6). So: no casts, functions
/// and operators qualified with `pg_catalog`.
pub const STATEMENT_COUNTS_SEALED: &str =
    "SELECT from_sql, protocol FROM rlsgate.statement_counts()";
/// [`STATEMENT_COUNTS_SEALED`] without the sealed context's functions.
pub const STATEMENT_COUNTS: &str = "SELECT pg_catalog.count(*) FILTER (WHERE from_sql), \
    pg_catalog.count(*) FILTER (WHERE NOT from_sql) FROM pg_catalog.pg_prepared_statements";

/// Sent before a session runs on a clean server holding other client settings: the
/// settings, and the sequence state (`lastval`/`currval`: a clean INSERT can call
/// `nextval` through a column default).
pub const SETTINGS_RESET: &str = "RESET ALL; DISCARD SEQUENCES";

/// Tries the server's default `temp_buffers` (as `SET`): PostgreSQL fixes a backend's
/// temporary buffers at the first temporary table it touches, after which any other
/// size fails, so a session that froze them at another size would make the next
/// sessions' `temp_buffers` settings fail (red-team pass 7). Fails exactly then: the
/// server is discarded. Local to its own implicit transaction, so it leaves no session
/// setting behind (the read-back would take one for the client's).
pub const TEMP_BUFFERS_CHECK: &str =
    "SELECT pg_catalog.set_config('temp_buffers', s.reset_val, true) \
     FROM pg_catalog.pg_settings s WHERE s.name OPERATOR(pg_catalog.=) 'temp_buffers'";

/// Reseeds `random()` with a secret value, as a fresh backend is seeded: a session's
/// `setseed()` would otherwise choose the next session's random values.
pub fn reseed_sql() -> String {
    format!("SELECT pg_catalog.setseed({})", rand::random::<f64>())
}

/// Sent before a session of another tenant runs on a clean server with the same client
/// settings.
pub const SEQUENCES_RESET: &str = "DISCARD SEQUENCES";

impl SessionContext {
    /// Builds the context for `identity`, with the client's startup parameters.
    pub fn build(
        cfg: &TenantConfig,
        owned: &OwnedSettings,
        identity: &Identity,
        startup: &[(String, String)],
        sealer: Option<&Arc<Sealer>>,
    ) -> Result<SessionContext, ContextError> {
        let mut settings = vec![(cfg.setting.clone(), identity.tenant.as_str().to_owned())];
        for (setting, claim) in &cfg.claims {
            settings.push((setting.clone(), claim_value(identity, claim)));
        }
        let seal = sealer.map(|sealer| SealHandle {
            sealer: sealer.clone(),
            tenant: identity.tenant.as_str().to_owned(),
        });
        let tenant_len = settings.len();
        // `options -c` first: as in PostgreSQL, an explicit startup parameter wins.
        for (_, value) in startup.iter().filter(|(n, _)| n == "options") {
            for (n, v) in parse_options(value)? {
                push_client_setting(&mut settings, owned, n, v)?;
            }
        }
        for (name, value) in startup {
            if name == "replication" {
                return Err(ContextError::Replication);
            }
            if NOT_SETTINGS.contains(&name.as_str()) || name.starts_with("_pq_.") {
                continue;
            }
            push_client_setting(&mut settings, owned, name.clone(), value.clone())?;
        }
        if !settings[tenant_len..]
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("application_name"))
        {
            // As directly: a client that names no application has none (the pooled
            // connection's own `rlsgate` is for the operator's idle servers).
            push_client_setting(
                &mut settings,
                owned,
                "application_name".into(),
                String::new(),
            )?;
        }
        // Client settings first, tenant context last: rotate the tenant block to the end.
        settings.rotate_left(tenant_len);
        Ok(SessionContext {
            settings,
            tenant_len,
            replay: Vec::new(),
            seal,
        })
    }

    /// The tenant-owned settings alone.
    pub fn tenant_settings(&self) -> &[(String, String)] {
        &self.settings[self.settings.len() - self.tenant_len..]
    }

    /// The client's own settings (startup parameters and remembered `SET`s).
    pub fn client_settings(&self) -> &[(String, String)] {
        &self.settings[..self.settings.len() - self.tenant_len]
    }

    /// Appends Parse/Bind/Execute/Sync running `SELECT set_config($1,$2,false), ...` for
    /// every setting (and `rlsgate.enter` when sealed) on the backend `pid`, which must
    /// be outside a transaction (a server just checked out). The statement text holds
    /// only placeholders, so values are not visible in `pg_stat_activity.query` of
    /// other sessions.
    pub fn encode(&self, buf: &mut BytesMut, pid: i32) {
        encode_settings(buf, &self.settings, self.enter_args(pid).as_ref());
    }

    /// Appends the bound `set_config` statement for every setting, without
    /// `rlsgate.enter`: the re-application after the client's `RESET ALL`/`DISCARD
    /// ALL`, which may come inside the client's transaction. The tenant the database
    /// verified lives in `rlsgate.backend_context`, which neither of them touches.
    pub fn encode_reapply(&self, buf: &mut BytesMut) {
        encode_settings(buf, &self.settings, None);
    }

    /// Appends the bound `set_config` statement for the client settings named in
    /// `names` (after the client's `RESET name` of a startup setting, which PostgreSQL
    /// resets to the startup value, the pooled connection to its own). Returns whether
    /// anything was appended.
    pub fn encode_reapply_names(&self, buf: &mut BytesMut, names: &[String]) -> bool {
        let chosen: Vec<(String, String)> = self
            .client_settings()
            .iter()
            .filter(|(n, _)| names.iter().any(|m| m.eq_ignore_ascii_case(n)))
            .cloned()
            .collect();
        if chosen.is_empty() {
            return false;
        }
        encode_settings(buf, &chosen, None);
        true
    }

    /// True when `name` is one of the client's startup settings.
    pub fn is_client_setting(&self, name: &str) -> bool {
        self.client_settings()
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// Appends the bound `set_config` statement for the tenant settings alone (with
    /// `rlsgate.enter` when sealed) on the backend `pid`, outside a transaction.
    pub fn encode_tenant(&self, buf: &mut BytesMut, pid: i32) {
        encode_settings(buf, self.tenant_settings(), self.enter_args(pid).as_ref());
    }

    /// A fresh seal for backend `pid` (each call takes the next seq).
    fn enter_args(&self, pid: i32) -> Option<[String; 3]> {
        self.seal
            .as_ref()
            .map(|s| s.sealer.enter_args(&s.tenant, pid))
    }

    /// Appends the bound `set_config` statement for the client settings alone (nothing
    /// when there are none). Returns whether anything was appended.
    pub fn encode_client(&self, buf: &mut BytesMut) -> bool {
        let client = self.client_settings();
        if client.is_empty() {
            return false;
        }
        encode_settings(buf, client, None);
        true
    }

    /// Identity of the whole context (what a server must hold for this client).
    pub fn fingerprint(&self) -> ContextFingerprint {
        let client = hash(&(self.client_settings(), &self.replay));
        ContextFingerprint {
            all: hash(&(&self.settings, client)),
            client,
        }
    }

    /// Remembers a session-level `SET` the client ran outside a transaction (its text,
    /// replayed on the next server that does not hold it; transaction pooling).
    pub fn remember_set(&mut self, name: &str, sql: &str) {
        self.replay.retain(|(n, _)| n != name);
        self.replay.push((name.to_owned(), sql.to_owned()));
    }

    /// `RESET name`: the remembered `SET` is dropped.
    pub fn forget(&mut self, name: &str) {
        self.replay.retain(|(n, _)| n != name);
    }

    /// `RESET ALL` / `DISCARD ALL`: every remembered `SET` is dropped.
    pub fn forget_all(&mut self) {
        self.replay.clear();
    }

    /// Transaction pooling, after a transaction that may have changed session settings
    /// in ways the proxy cannot follow (a SET inside a transaction that committed or
    /// rolled back, to a savepoint or not; `set_config` in a function; ...): the
    /// remembered statements become the settings the server itself reports as set in
    /// the session (`rows` of [`SESSION_SETTINGS`]), so the client's next transaction,
    /// on whichever server, holds what it would hold directly. Owned settings are left
    /// out (the proxy applies them), and so are the client's startup settings where the
    /// server holds them unchanged.
    pub fn adopt_session_settings(&mut self, owned: &OwnedSettings, rows: &[Vec<Option<String>>]) {
        let mut replay = Vec::new();
        for row in rows {
            let (Some(Some(name)), Some(Some(hex))) = (row.first(), row.get(1)) else {
                continue;
            };
            let Some(value) = hex::decode(hex)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
            else {
                continue;
            };
            // `transaction_isolation`, `_read_only`, `_deferrable` live for one
            // transaction (after `SET TRANSACTION` they stay listed with source
            // 'session'); outside one they cannot be set at all.
            if owned.contains(name)
                || name.starts_with("rlsgate.")
                || name.starts_with("transaction_")
            {
                continue;
            }
            let startup = self
                .client_settings()
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case(name) && *v == value);
            if startup {
                continue;
            }
            let sql = if name == "client_encoding" {
                // A plain SET, which the encoding tracking reads (`encoding::of_settings`).
                format!("SET client_encoding TO {}", protocol::quote_literal(&value))
            } else {
                format!(
                    "SELECT pg_catalog.set_config({}, {}, false)",
                    protocol::quote_literal(name),
                    protocol::quote_literal(&value)
                )
            };
            replay.push((name.clone(), sql));
        }
        self.replay = replay;
    }

    /// Appends one simple Query per remembered `SET`; returns how many.
    pub fn encode_replay(&self, buf: &mut BytesMut) -> usize {
        for (_, sql) in &self.replay {
            protocol::put_query(buf, sql);
        }
        self.replay.len()
    }
}

/// Hashes of a context, compared to decide what a server needs re-applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextFingerprint {
    pub all: u64,
    pub client: u64,
}

fn hash<T: std::hash::Hash>(value: &T) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// `SELECT pg_catalog.set_config($1, $2, false), ...[, rlsgate.enter($n, $n+1, $n+2)]`.
/// A failing `enter` fails the whole statement, so no setting of it stays either.
/// Sealed, the statement runs in `BEGIN READ WRITE` ... `COMMIT` (one Sync): `enter`
/// writes `rlsgate.backend_context`, which a client's `default_transaction_read_only`
/// (pgJDBC's `setReadOnly`) would otherwise forbid.
fn encode_settings(buf: &mut BytesMut, settings: &[(String, String)], enter: Option<&[String; 3]>) {
    let mut sql = String::from("SELECT ");
    let mut params: Vec<&str> = Vec::with_capacity(settings.len() * 2 + 3);
    for (i, (name, value)) in settings.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!(
            "pg_catalog.set_config(${}, ${}, false)",
            2 * i + 1,
            2 * i + 2
        ));
        params.push(name);
        params.push(value);
    }
    if let Some(args) = enter {
        let n = params.len();
        sql.push_str(&format!(
            ", rlsgate.enter(${}, ${}::pg_catalog.int8, ${})",
            n + 1,
            n + 2,
            n + 3
        ));
        params.extend(args.iter().map(String::as_str));
    }
    if enter.is_none() {
        protocol::put_bound_query(buf, &sql, &params);
        return;
    }
    protocol::put_bound_statement(buf, "BEGIN READ WRITE", &[]);
    protocol::put_bound_statement(buf, &sql, &params);
    protocol::put_bound_statement(buf, "COMMIT", &[]);
    protocol::put_sync(buf);
}

fn push_client_setting(
    settings: &mut Vec<(String, String)>,
    owned: &OwnedSettings,
    name: String,
    value: String,
) -> Result<(), ContextError> {
    if owned.contains(&name)
        || name.eq_ignore_ascii_case("role")
        || name.eq_ignore_ascii_case("session_authorization")
    {
        return Err(ContextError::Protected(name));
    }
    // One table for every way of naming an encoding (crate::sql::encoding).
    if name.eq_ignore_ascii_case("client_encoding")
        && crate::sql::encoding::allowed(&value).is_err()
    {
        return Err(ContextError::UnsafeEncoding(value));
    }
    settings.push((name, value));
    Ok(())
}

/// Value of a mapped claim as a setting: strings as-is, `*` the whole claims object as
/// JSON, other JSON values in their JSON form; a missing claim is the empty string.
fn claim_value(identity: &Identity, claim: &str) -> String {
    if claim == "*" {
        return identity.claims.to_string();
    }
    match identity.claim(claim) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}

/// Parses the libpq `options` startup parameter: `-c name=value`, `-cname=value` and
/// `--name=value`, separated by spaces, with `\` escaping the next character.
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, ContextError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    let mut in_word = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                    in_word = true;
                }
            }
            c if c.is_ascii_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let assignment = if w == "-c" {
            it.next()
                .ok_or_else(|| ContextError::BadOptions("-c without a setting".into()))?
        } else if let Some(rest) = w.strip_prefix("-c") {
            rest.to_owned()
        } else if let Some(rest) = w.strip_prefix("--") {
            rest.to_owned()
        } else {
            return Err(ContextError::BadOptions(format!(
                "unsupported option {w:?}; use -c name=value"
            )));
        };
        let (n, v) = assignment
            .split_once('=')
            .ok_or_else(|| ContextError::BadOptions(format!("{assignment:?} is not name=value")))?;
        out.push((n.replace('-', "_"), v.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parsing() {
        let got = parse_options(
            "-c search_path=a,b  -cwork_mem=64MB --statement-timeout=5s -c x.y=a\\ b",
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                ("search_path".into(), "a,b".into()),
                ("work_mem".into(), "64MB".into()),
                ("statement_timeout".into(), "5s".into()),
                ("x.y".into(), "a b".into()),
            ]
        );
        assert!(parse_options("-x").is_err());
        assert!(parse_options("-c").is_err());
    }

    #[test]
    fn owned_names_are_case_insensitive() {
        let cfg = TenantConfig::default();
        let owned = OwnedSettings::from_config(&cfg);
        assert!(owned.contains("APP.Current_Tenant"));
        assert!(!owned.contains("search_path"));
    }
}
