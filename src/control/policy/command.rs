//! Table commands a row-level-security policy covers (`SELECT`, ..., or all four).

use std::collections::BTreeSet;

use super::file::{invalid, PolicyFileError};

/// A command a row-level-security policy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Command {
    Select,
    Insert,
    Update,
    Delete,
}

impl Command {
    pub const ALL: [Command; 4] = [
        Command::Select,
        Command::Insert,
        Command::Update,
        Command::Delete,
    ];

    pub fn keyword(self) -> &'static str {
        match self {
            Self::Select => "SELECT",
            Self::Insert => "INSERT",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
        }
    }

    pub(super) fn parse(text: &str) -> Option<Command> {
        Command::ALL
            .into_iter()
            .find(|c| c.keyword().eq_ignore_ascii_case(text))
    }
}

/// The commands a table's policy covers (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commands(pub BTreeSet<Command>);

impl Commands {
    pub fn all() -> Self {
        Self(Command::ALL.into_iter().collect())
    }

    pub fn is_all(&self) -> bool {
        self.0.len() == Command::ALL.len()
    }

    pub(super) fn parse(key: &str, items: &[String]) -> Result<Self, PolicyFileError> {
        let mut set = BTreeSet::new();
        for item in items {
            if item.eq_ignore_ascii_case("ALL") {
                set.extend(Command::ALL);
            } else {
                let cmd = Command::parse(item).ok_or_else(|| {
                    invalid(
                        key,
                        format!("unknown command `{item}` (ALL, SELECT, INSERT, UPDATE, DELETE)"),
                    )
                })?;
                set.insert(cmd);
            }
        }
        if set.is_empty() {
            return Err(invalid(key, "list at least one command"));
        }
        Ok(Self(set))
    }
}
