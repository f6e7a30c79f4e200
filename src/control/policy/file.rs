//! The policy file (TOML): which tables become tenant-scoped and how. Parsed into a
//! validated [`Policy`]; every error names the key it is about.
//!
//! The format is documented in `policies/example-policy.toml` and `docs/policy.md`.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub use super::command::{Command, Commands};
use super::options::{Hardening, SealSecret, TenantContext};
use super::sql::QualifiedName;

/// Why a policy file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyFileError {
    #[error("cannot read policy file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("policy file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("policy file: `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

pub(super) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> PolicyFileError {
    PolicyFileError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// SQL type of the tenant column (and of the setting's value once cast).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantType {
    Text,
    #[serde(alias = "integer")]
    Int,
    Bigint,
    Uuid,
}

impl TenantType {
    /// The name `format_type()` gives the type in the catalog.
    pub fn sql_name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Int => "integer",
            Self::Bigint => "bigint",
            Self::Uuid => "uuid",
        }
    }

    /// Checks that a backfill value is valid for the type; returns it as text.
    fn check_value(self, value: &toml::Value) -> Result<String, String> {
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            _ => return Err("must be a string or an integer".into()),
        };
        let ok = match self {
            Self::Text => !text.is_empty(),
            Self::Int => text.parse::<i32>().is_ok(),
            Self::Bigint => text.parse::<i64>().is_ok(),
            Self::Uuid => is_uuid(&text),
        };
        if ok {
            Ok(text)
        } else {
            Err(format!("`{text}` is not a valid {}", self.sql_name()))
        }
    }
}

fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// `[apply]`: how `policy apply` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplySettings {
    /// Rows per backfill batch; each batch is its own transaction.
    pub batch_size: u32,
    /// Build tenant indexes with `CREATE INDEX CONCURRENTLY` (outside the transaction).
    pub concurrent_indexes: bool,
    /// `lock_timeout` for the schema-change transaction.
    pub lock_timeout: Duration,
}

/// One tenant-scoped table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    pub name: QualifiedName,
    /// The tenant column.
    pub column: String,
    /// Tenant value for rows that have none yet (text form; cast to the tenant type).
    pub backfill: Option<String>,
    /// Unique constraints/indexes (their columns, tenant column excluded) to widen.
    pub tenant_unique: Vec<Vec<String>>,
    /// Extra indexes to create with the tenant column first (columns after it).
    pub indexes: Vec<Vec<String>>,
    pub commands: Commands,
    /// `CHECK (<column> <> '')` on text tenant columns.
    pub forbid_empty: bool,
    /// Create an index on the tenant column when no index leads with it.
    pub tenant_index: bool,
}

/// A table shared by all tenants (no tenant column, no RLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExemptSpec {
    pub name: QualifiedName,
    pub reason: String,
}

/// A validated policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The custom setting holding the current tenant (`app.current_tenant`).
    pub setting: String,
    pub tenant_type: TenantType,
    /// What the policies compare with: the sealed context (default) or the setting.
    pub context: TenantContext,
    /// Where `apply` reads the seal secret it stores (`None`: it stores none).
    pub seal_secret: Option<SealSecret>,
    /// Which cross-session functions stay usable by the app role.
    pub hardening: Hardening,
    /// The role rlsgate connects upstream as.
    pub app_role: String,
    /// Table privileges the app role gets on tenant tables.
    pub privileges: Vec<Command>,
    /// Name of the generated policies (`<name>` for ALL, else `<name>_<command>`).
    pub policy_name: String,
    /// Make views over tenant tables `security_invoker` and grant SELECT on them.
    pub secure_views: bool,
    pub apply: ApplySettings,
    pub tables: Vec<TableSpec>,
    pub exempt: Vec<ExemptSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    tenant: RawTenant,
    roles: RawRoles,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    apply: RawApply,
    #[serde(default)]
    hardening: Hardening,
    #[serde(default, rename = "table")]
    tables: Vec<RawTable>,
    #[serde(default, rename = "exempt")]
    exempt: Vec<RawExempt>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    setting: String,
    #[serde(rename = "type")]
    ty: TenantType,
    #[serde(default = "default_column")]
    column: String,
    #[serde(default)]
    context: TenantContext,
    seal_secret_env: Option<String>,
    seal_secret_file: Option<std::path::PathBuf>,
}

fn default_column() -> String {
    "tenant_id".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoles {
    app: String,
    #[serde(default = "default_privileges")]
    privileges: Vec<String>,
}

fn default_privileges() -> Vec<String> {
    ["SELECT", "INSERT", "UPDATE", "DELETE"]
        .map(String::from)
        .into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDefaults {
    commands: Vec<String>,
    policy_name: String,
    forbid_empty: bool,
    tenant_index: bool,
    secure_views: bool,
}

impl Default for RawDefaults {
    fn default() -> Self {
        Self {
            commands: vec!["ALL".into()],
            policy_name: "tenant_isolation".into(),
            forbid_empty: true,
            tenant_index: true,
            secure_views: true,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawApply {
    batch_size: u32,
    concurrent_indexes: bool,
    #[serde(with = "humantime_serde")]
    lock_timeout: Duration,
}

impl Default for RawApply {
    fn default() -> Self {
        Self {
            batch_size: 5000,
            concurrent_indexes: false,
            lock_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    name: String,
    column: Option<String>,
    backfill: Option<toml::Value>,
    #[serde(default)]
    tenant_unique: Vec<Vec<String>>,
    #[serde(default)]
    indexes: Vec<Vec<String>>,
    commands: Option<Vec<String>>,
    forbid_empty: Option<bool>,
    tenant_index: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExempt {
    name: String,
    #[serde(default)]
    reason: String,
}

impl Policy {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyFileError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            PolicyFileError::Parse { message, .. } => PolicyFileError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates policy TOML.
    pub fn parse(text: &str) -> Result<Policy, PolicyFileError> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| PolicyFileError::Parse {
            path: "<text>".into(),
            message: e.to_string(),
        })?;
        raw.validate()
    }

    /// The tenant table spec for `name`, if the policy scopes it.
    pub fn table(&self, name: &QualifiedName) -> Option<&TableSpec> {
        self.tables.iter().find(|t| &t.name == name)
    }
}

impl RawPolicy {
    fn validate(self) -> Result<Policy, PolicyFileError> {
        check_setting(&self.tenant.setting)?;
        check_name("tenant.column", &self.tenant.column)?;
        check_name("roles.app", &self.roles.app)?;
        check_name("defaults.policy_name", &self.defaults.policy_name)?;
        if self.apply.batch_size == 0 {
            return Err(invalid("apply.batch_size", "must be at least 1"));
        }
        let privileges = parse_privileges(&self.roles.privileges)?;
        let seal_secret = self.tenant.seal_secret()?;
        let default_commands = Commands::parse("defaults.commands", &self.defaults.commands)?;
        let mut seen = HashSet::new();
        let mut tables = Vec::new();
        for (i, raw) in self.tables.into_iter().enumerate() {
            let spec = raw.validate(i, &self.tenant, &self.defaults, &default_commands)?;
            if !seen.insert(spec.name.clone()) {
                return Err(invalid(format!("table[{i}].name"), "listed twice"));
            }
            tables.push(spec);
        }
        let mut exempt = Vec::new();
        for (i, raw) in self.exempt.into_iter().enumerate() {
            let key = format!("exempt[{i}].name");
            let name = parse_table_name(&key, &raw.name)?;
            if !seen.insert(name.clone()) {
                return Err(invalid(key, "already listed as a table or exempt"));
            }
            exempt.push(ExemptSpec {
                name,
                reason: raw.reason,
            });
        }
        if tables.is_empty() {
            return Err(invalid("table", "list at least one [[table]]"));
        }
        Ok(Policy {
            setting: self.tenant.setting,
            tenant_type: self.tenant.ty,
            context: self.tenant.context,
            seal_secret,
            hardening: self.hardening,
            app_role: self.roles.app,
            privileges,
            policy_name: self.defaults.policy_name,
            secure_views: self.defaults.secure_views,
            apply: ApplySettings {
                batch_size: self.apply.batch_size,
                concurrent_indexes: self.apply.concurrent_indexes,
                lock_timeout: self.apply.lock_timeout,
            },
            tables,
            exempt,
        })
    }
}

impl RawTenant {
    fn seal_secret(&self) -> Result<Option<SealSecret>, PolicyFileError> {
        match (&self.seal_secret_env, &self.seal_secret_file) {
            (Some(_), Some(_)) => Err(invalid(
                "tenant.seal_secret_env",
                "give seal_secret_env or seal_secret_file, not both",
            )),
            (Some(var), None) if var.is_empty() => {
                Err(invalid("tenant.seal_secret_env", "is empty"))
            }
            (Some(var), None) => Ok(Some(SealSecret::Env(var.clone()))),
            (None, Some(path)) => Ok(Some(SealSecret::File(path.clone()))),
            (None, None) => Ok(None),
        }
        .and_then(|secret| {
            if secret.is_some() && self.context == TenantContext::Setting {
                Err(invalid(
                    "tenant.context",
                    "a seal secret is set but context = \"setting\" never reads the seal",
                ))
            } else {
                Ok(secret)
            }
        })
    }
}

impl RawTable {
    fn validate(
        self,
        i: usize,
        tenant: &RawTenant,
        defaults: &RawDefaults,
        default_commands: &Commands,
    ) -> Result<TableSpec, PolicyFileError> {
        let key = |field: &str| format!("table[{i}].{field}");
        let name = parse_table_name(&key("name"), &self.name)?;
        let column = self.column.unwrap_or_else(|| tenant.column.clone());
        check_name(&key("column"), &column)?;
        let backfill = self
            .backfill
            .map(|v| tenant.ty.check_value(&v))
            .transpose()
            .map_err(|reason| invalid(key("backfill"), reason))?;
        for (field, lists) in [
            ("tenant_unique", &self.tenant_unique),
            ("indexes", &self.indexes),
        ] {
            for cols in lists {
                check_columns(&key(field), cols, &column)?;
            }
        }
        let commands = match self.commands {
            Some(list) => Commands::parse(&key("commands"), &list)?,
            None => default_commands.clone(),
        };
        Ok(TableSpec {
            name,
            column,
            backfill,
            tenant_unique: self.tenant_unique,
            indexes: self.indexes,
            commands,
            forbid_empty: self.forbid_empty.unwrap_or(defaults.forbid_empty)
                && tenant.ty == TenantType::Text,
            tenant_index: self.tenant_index.unwrap_or(defaults.tenant_index),
        })
    }
}

fn parse_table_name(key: &str, text: &str) -> Result<QualifiedName, PolicyFileError> {
    QualifiedName::parse(text).ok_or_else(|| {
        invalid(
            key,
            format!("`{text}` is not `table` or `schema.table` (names are taken literally)"),
        )
    })
}

fn check_name(key: &str, name: &str) -> Result<(), PolicyFileError> {
    if name.is_empty() || name.len() > 63 || name.contains('\0') {
        return Err(invalid(key, "must be 1 to 63 bytes"));
    }
    Ok(())
}

fn check_columns(key: &str, cols: &[String], tenant_column: &str) -> Result<(), PolicyFileError> {
    if cols.is_empty() {
        return Err(invalid(key, "an entry has no columns"));
    }
    for c in cols {
        check_name(key, c)?;
        if c == tenant_column {
            return Err(invalid(
                key,
                format!("list the columns besides the tenant column `{tenant_column}`"),
            ));
        }
    }
    Ok(())
}

fn check_setting(setting: &str) -> Result<(), PolicyFileError> {
    let valid = setting.contains('.')
        && !setting.starts_with('.')
        && !setting.ends_with('.')
        && setting
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if valid {
        Ok(())
    } else {
        Err(invalid(
            "tenant.setting",
            "must be a custom setting name with a prefix, like `app.current_tenant`",
        ))
    }
}

fn parse_privileges(items: &[String]) -> Result<Vec<Command>, PolicyFileError> {
    let mut out = Vec::new();
    for item in items {
        let cmd = Command::parse(item).ok_or_else(|| {
            invalid(
                "roles.privileges",
                format!(
                    "`{item}` is not one of SELECT, INSERT, UPDATE, DELETE \
                     (TRUNCATE ignores row-level security and is never granted)"
                ),
            )
        })?;
        if !out.contains(&cmd) {
            out.push(cmd);
        }
    }
    Ok(out)
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
