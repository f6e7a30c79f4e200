//! The guard configuration turned into lookups: owned settings, denied relations and
//! functions, and the text heuristics used where the parser cannot help.

use std::collections::HashSet;

use super::GuardConfig;

/// Settings that change who the session is.
pub(super) const ROLE_SETTINGS: [&str; 2] = ["role", "session_authorization"];

/// Functions that return other sessions' query text whatever the deny list says.
/// Functions no client may call: other sessions' query text, the list of backends of
/// the shared upstream role (so another tenant's backend pid), cancelling or ending
/// another backend (every backend runs as the same role, so PostgreSQL allows it).
/// (Transaction mode also denies `pg_prepared_statement(s)`, see `server::State::new`.)
pub(crate) const DENIED_FUNCTIONS: [&str; 8] = [
    "pg_stat_get_activity",
    "pg_stat_get_backend_activity",
    "pg_stat_get_backend_idset",
    "pg_stat_get_backend_pid",
    "pg_cancel_backend",
    "pg_terminate_backend",
    "pg_stat_get_backend_activity_start",
    // rlsgate's own count of a pooled server's statements (policies/sealed.sql).
    "statement_counts",
];

/// What a text heuristic found.
pub(super) enum Mention {
    /// An owned setting, a role setting, or `set_config`.
    Setting(String),
    /// A denied relation or function.
    Relation(String),
}

pub(super) struct Policy {
    owned: HashSet<String>,
    deny_relations: HashSet<String>,
    pub(super) refuse_do_blocks: bool,
    pub(super) allow_set_role: bool,
    pub(super) allow_large_objects: bool,
    /// See `GuardConfig::scoped_backend_calls`.
    pub(super) scoped_backend_calls: bool,
    /// Owned names without blanks, for the text heuristics.
    owned_words: Vec<String>,
    /// Denied relations and functions, for the text heuristics.
    denied_words: Vec<String>,
}

impl Policy {
    pub(super) fn new(cfg: &GuardConfig) -> Self {
        let owned: HashSet<String> = cfg.owned.iter().map(|n| n.trim().to_lowercase()).collect();
        let mut deny_relations: HashSet<String> = cfg
            .deny_relations
            .iter()
            .map(|n| n.rsplit('.').next().unwrap_or(n).trim().to_lowercase())
            .collect();
        if !cfg.allow_large_objects {
            deny_relations.extend(super::LARGE_OBJECT_RELATIONS.map(str::to_owned));
        }
        let owned_words = by_specificity(owned.iter().map(|n| squeeze(n)).collect());
        let denied_words = by_specificity(
            deny_relations
                .iter()
                .cloned()
                .chain(DENIED_FUNCTIONS.map(str::to_owned))
                .collect(),
        );
        Policy {
            owned,
            deny_relations,
            refuse_do_blocks: cfg.refuse_do_blocks,
            allow_set_role: cfg.allow_set_role,
            allow_large_objects: cfg.allow_large_objects,
            scoped_backend_calls: cfg.scoped_backend_calls,
            owned_words,
            denied_words,
        }
    }

    /// `name` as the server would look it up (GUC names are case-insensitive).
    pub(super) fn is_owned(&self, name: &str) -> bool {
        self.owned.contains(&name.trim().to_lowercase())
    }

    pub(super) fn is_denied_relation(&self, relname: &str) -> bool {
        self.deny_relations.contains(&relname.to_lowercase())
    }

    pub(super) fn is_denied_function(&self, name: &str) -> bool {
        let name = name.to_lowercase();
        DENIED_FUNCTIONS.contains(&name.as_str()) || self.deny_relations.contains(&name)
    }

    /// Whether `text` mentions something the guard protects. Used only where the parser
    /// cannot give an answer (unparsable text, dynamic SQL, a body the PL/pgSQL parser
    /// rejects). Quotes and blanks are ignored so `"app" . "current_tenant"` still counts.
    pub(super) fn mention(&self, text: &str) -> Option<Mention> {
        let text = squeeze(text);
        let setting = self
            .owned_words
            .iter()
            .map(String::as_str)
            .chain(["set_config", "session_authorization"])
            .find(|word| text.contains(word));
        if let Some(word) = setting {
            return Some(Mention::Setting(word.to_owned()));
        }
        self.denied_words
            .iter()
            .find(|word| text.contains(word.as_str()))
            .map(|word| Mention::Relation(word.clone()))
    }
}

pub(super) fn is_role_setting(name: &str) -> bool {
    ROLE_SETTINGS.contains(&name.trim().to_lowercase().as_str())
}

/// Whether switching `client_encoding` to `value` would let the server see a different
/// statement than the guard does: any name not in `crate::sql::encoding`'s table as allowed.
pub(super) fn is_unsafe_encoding(value: &str) -> bool {
    crate::sql::encoding::allowed(value).is_err()
}

/// The heuristics' words in a fixed order, longest first: `mention` names the first
/// word found, which must not depend on `HashSet` order (found by the `sql` fuzz target:
/// a text with `pg_prepared_statements` was refused naming either it or
/// `pg_prepared_statement`, varying between guards), and the longest is the one meant.
fn by_specificity(mut words: Vec<String>) -> Vec<String> {
    words.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    words.dedup();
    words
}

/// Lower case, without double quotes and blanks.
fn squeeze(text: &str) -> String {
    text.chars()
        .filter(|c| *c != '"' && !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reproduces the `sql` fuzz target's finding: the word named in a refusal was
    /// whichever the `HashSet` of deny relations yielded first.
    #[test]
    fn mention_names_the_longest_word_whatever_the_set_order() {
        let mut deny = crate::config::default_deny_relations();
        deny.extend(["pg_prepared_statements", "pg_prepared_statement"].map(str::to_owned));
        for _ in 0..20 {
            let policy = Policy::new(&GuardConfig {
                deny_relations: deny.clone(),
                ..GuardConfig::default()
            });
            let text = "$\u{a7}\u{a7}]\u{a7}]pg_prepared_statements";
            match policy.mention(text) {
                Some(Mention::Relation(word)) => assert_eq!(word, "pg_prepared_statements"),
                _ => panic!("no mention found"),
            }
        }
    }
}
