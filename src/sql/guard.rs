//! Statement guard: decides, with the real PostgreSQL parser, whether a client's SQL may
//! change or escape the tenant context (issue 4), and caches the verdict per statement text.
//!
//! The guard is pure: it never talks to a server. The proxy calls [`Guard::check`] for every
//! simple Query and every Parse and answers a [`Verdict::Refuse`] with an `ErrorResponse`
//! (SQLSTATE [`Refusal::SQLSTATE`]) instead of forwarding the message.
//!
//! What it cannot see, by design: SQL built at run time (`EXECUTE` of a computed string in
//! PL/pgSQL, functions that already exist in the database). The sealed tenant context is the
//! defence for those.

mod cache;
mod json;
mod plpgsql;
mod policy;
mod walk;

#[cfg(test)]
mod tests;

use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use cache::VerdictCache;
use policy::Policy;
use walk::{Finding, Scope, Walker};

/// Texts longer than this are checked but never cached (bulk INSERTs would only churn it).
const MAX_CACHED_LEN: usize = 64 * 1024;

/// Number of verdicts the cache holds at most.
const CACHE_CAPACITY: usize = 10_000;

/// What the guard protects. All names are compared case-insensitively.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardConfig {
    /// Settings the proxy owns (the tenant setting and every claim setting), e.g.
    /// `app.current_tenant`, `app.user_id`, `request.jwt.claims`.
    pub owned: Vec<String>,
    /// Relations no client may read (matched by relation name in any schema; a
    /// schema-qualified entry is reduced to its last part). Also refused when called as a
    /// function of the same name (`pg_stat_statements(true)`).
    pub deny_relations: Vec<String>,
    /// Refuse every `DO` block instead of inspecting its PL/pgSQL body.
    pub refuse_do_blocks: bool,
    /// Let clients use `SET ROLE` / `SET SESSION AUTHORIZATION` (a role mapping allows it).
    pub allow_set_role: bool,
    /// Let clients use the large-object functions (`lo_get`, `lo_open`, ...). Large
    /// objects belong to the shared upstream role, not to a tenant.
    pub allow_large_objects: bool,
    /// Top-level `pg_cancel_backend`/`pg_terminate_backend` calls are let through,
    /// because the proxy scopes their pid to the tenant's own backends (`backend_calls`);
    /// everywhere else (DO, function bodies, dynamic SQL) they are refused.
    pub scoped_backend_calls: bool,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            owned: vec!["app.current_tenant".to_owned()],
            deny_relations: default_deny_relations(),
            refuse_do_blocks: false,
            allow_set_role: false,
            allow_large_objects: false,
            scoped_backend_calls: false,
        }
    }
}

/// The default deny list: the views that show other sessions' query text.
/// Functions the guard refuses by name (see `policy::DENIED_FUNCTIONS`); the inspector
/// parses every text that names one.
pub fn denied_functions() -> &'static [&'static str] {
    &policy::DENIED_FUNCTIONS
}

pub use crate::config::default_deny_relations;

/// The guard's decision for one SQL string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Forward unchanged.
    Allow,
    /// `RESET ALL` / `DISCARD ALL` appear: forward, then re-apply the tenant context right after.
    AllowReapply,
    /// Do not forward; answer with an `ErrorResponse`.
    Refuse(Refusal),
}

/// Why a statement was refused; `message` is safe to show to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub rule: Rule,
    /// Names the rule and the setting or relation, never a value,
    /// e.g. `rlsgate: changing app.current_tenant is not allowed (rule: protected-setting)`.
    pub message: String,
}

impl Refusal {
    /// SQLSTATE for every guard refusal: `insufficient_privilege`.
    pub const SQLSTATE: &'static str = "42501";
}

/// The rule that refused a statement (also a log field and a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    ProtectedSetting,
    SetConfigCall,
    DynamicSetConfig,
    RoleChange,
    AlterRoleSetting,
    DoBlock,
    FunctionBody,
    DeniedRelation,
    Unparsable,
    LargeObject,
}

/// What a built-in that takes SQL or a name as text reaches (see [`sql_text_function`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Runs the query text in argument `n` (0-based).
    Query(usize),
    /// Reads the relation named by its first argument (`regclass`).
    Relation,
    /// Reads every table and view of the schema named by its first argument.
    Schema,
}

/// Built-ins of `pg_catalog` that run SQL given as text or read what a text names, by
/// lower-case name and argument count: the guard checks that text as it checks SQL
/// (`database_to_xml*` leaves out `pg_*` and `information_schema` by itself,
/// `cursor_to_xml` reads a cursor the client declared).
pub fn sql_text_function(name: &str, args: usize) -> Option<Reach> {
    match name {
        "query_to_xml" | "query_to_xmlschema" | "query_to_xml_and_xmlschema" | "ts_stat" => {
            Some(Reach::Query(0))
        }
        // ts_rewrite(tsquery, text): the second argument is a SELECT.
        "ts_rewrite" if args == 2 => Some(Reach::Query(1)),
        "table_to_xml" | "table_to_xmlschema" | "table_to_xml_and_xmlschema" => {
            Some(Reach::Relation)
        }
        "schema_to_xml" | "schema_to_xmlschema" | "schema_to_xml_and_xmlschema" => {
            Some(Reach::Schema)
        }
        _ => None,
    }
}

/// The server-side large-object functions of `pg_catalog` (lower case).
pub const LARGE_OBJECT_FUNCTIONS: [&str; 18] = [
    "lo_open",
    "lo_close",
    "loread",
    "lowrite",
    "lo_lseek",
    "lo_lseek64",
    "lo_tell",
    "lo_tell64",
    "lo_truncate",
    "lo_truncate64",
    "lo_creat",
    "lo_create",
    "lo_unlink",
    "lo_import",
    "lo_export",
    "lo_get",
    "lo_put",
    "lo_from_bytea",
];

/// The catalogs of large objects (denied with them).
pub const LARGE_OBJECT_RELATIONS: [&str; 2] = ["pg_largeobject", "pg_largeobject_metadata"];

/// True for a large-object function name (lower case).
pub fn is_large_object_function(name: &str) -> bool {
    LARGE_OBJECT_FUNCTIONS.contains(&name)
}

impl Rule {
    /// Every rule, e.g. to pre-register metric labels.
    pub const ALL: [Rule; 10] = [
        Rule::ProtectedSetting,
        Rule::SetConfigCall,
        Rule::DynamicSetConfig,
        Rule::RoleChange,
        Rule::AlterRoleSetting,
        Rule::DoBlock,
        Rule::FunctionBody,
        Rule::DeniedRelation,
        Rule::Unparsable,
        Rule::LargeObject,
    ];

    /// Kebab-case label for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Rule::ProtectedSetting => "protected-setting",
            Rule::SetConfigCall => "set-config-call",
            Rule::DynamicSetConfig => "dynamic-set-config",
            Rule::RoleChange => "role-change",
            Rule::AlterRoleSetting => "alter-role-setting",
            Rule::DoBlock => "do-block",
            Rule::FunctionBody => "function-body",
            Rule::DeniedRelation => "denied-relation",
            Rule::Unparsable => "unparsable",
            Rule::LargeObject => "large-object",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counters since the guard was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardStats {
    pub checks: u64,
    pub cache_hits: u64,
    pub refusals: u64,
}

/// The statement guard: configuration plus a verdict cache. Share it behind an `Arc`.
pub struct Guard {
    policy: Policy,
    cache: VerdictCache,
    checks: AtomicU64,
    cache_hits: AtomicU64,
    refusals: AtomicU64,
}

impl Guard {
    pub fn new(cfg: GuardConfig) -> Guard {
        Guard {
            policy: Policy::new(&cfg),
            cache: VerdictCache::new(CACHE_CAPACITY),
            checks: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
        }
    }

    /// Verdict for one SQL string (a simple Query may hold many statements; a Parse holds one).
    ///
    /// Text after a NUL byte is ignored: the server reads a Query/Parse string only up to
    /// its terminator, so what it would run is exactly the part checked here.
    pub fn check(&self, sql: &str) -> Verdict {
        self.checks.fetch_add(1, Ordering::Relaxed);
        let sql = sql.split('\0').next().unwrap_or_default();
        let verdict = if sql.len() > MAX_CACHED_LEN {
            self.analyze(sql)
        } else {
            self.check_cached(sql)
        };
        if matches!(verdict, Verdict::Refuse(_)) {
            self.refusals.fetch_add(1, Ordering::Relaxed);
        }
        verdict
    }

    pub fn stats(&self) -> GuardStats {
        GuardStats {
            checks: self.checks.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            refusals: self.refusals.load(Ordering::Relaxed),
        }
    }

    fn check_cached(&self, sql: &str) -> Verdict {
        let hash = self.cache.hasher().hash_one(sql);
        if let Some(verdict) = self.cache.get(hash, sql) {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return verdict;
        }
        let verdict = self.analyze(sql);
        self.cache.insert(hash, sql, verdict.clone());
        verdict
    }

    /// The uncached decision: parse and walk every statement.
    fn analyze(&self, sql: &str) -> Verdict {
        let mut walker = Walker::new(&self.policy, Scope::Session, 0);
        match walker.check_text(sql, 0) {
            Err(finding) => Verdict::Refuse(refusal(finding)),
            Ok(()) if walker.reapply => Verdict::AllowReapply,
            Ok(()) => Verdict::Allow,
        }
    }
}

fn refusal(finding: Finding) -> Refusal {
    let message = format!("rlsgate: {} (rule: {})", finding.detail, finding.rule);
    Refusal {
        rule: finding.rule,
        message,
    }
}

/// A fingerprint of the statement for logs (`pg_query::fingerprint`): equal for statements
/// that differ only in constant values, and never containing those values.
pub fn fingerprint(sql: &str) -> Option<String> {
    pg_query::fingerprint(sql, 0, 0).ok().map(|f| f.hex)
}
