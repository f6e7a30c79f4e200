//! Environment overrides (`RLSGATE_<SECTION>__<KEY>`) applied to the parsed TOML before it is deserialized.

use toml::{Table, Value};

use super::{Config, ConfigError};

/// Prefix of every override variable. Variables with this prefix but without `__`
/// (`RLSGATE_LOG`, `RLSGATE_CONFIG`, secret variables such as `RLSGATE_JWT_SECRET`) are
/// not overrides and are ignored here.
pub const ENV_PREFIX: &str = "RLSGATE_";

/// Separator between key-path segments in a variable name.
const SEPARATOR: &str = "__";

/// One `RLSGATE_A__B=value` variable.
#[derive(Debug)]
struct Override {
    var: String,
    /// Lowercased key path, e.g. `["auth", "jwt", "issuer"]`.
    path: Vec<String>,
    raw: String,
    /// True when `raw` is taken as a TOML scalar (integer, float, boolean) rather than a
    /// string; cleared when that scalar does not fit the key and the string is tried.
    scalar_from_toml: bool,
}

impl Override {
    fn parse(var: String, raw: String) -> Result<Option<Self>, ConfigError> {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            return Ok(None);
        };
        if !rest.contains(SEPARATOR) {
            return Ok(None);
        }
        let path: Vec<String> = rest.split(SEPARATOR).map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var,
                reason: "empty key segment (expected RLSGATE_<SECTION>__<KEY>, segments separated by `__`)".into(),
            });
        }
        let scalar_from_toml = matches!(
            toml_value(&raw),
            Some(Value::Integer(_) | Value::Float(_) | Value::Boolean(_))
        );
        Ok(Some(Self {
            var,
            path,
            raw,
            scalar_from_toml,
        }))
    }

    /// The value to store: TOML integer/float/boolean/array/inline table, else the raw string.
    fn value(&self) -> Value {
        match toml_value(&self.raw) {
            Some(v @ (Value::Array(_) | Value::Table(_))) => v,
            Some(v) if self.scalar_from_toml => v,
            _ => Value::String(self.raw.clone()),
        }
    }

    /// The key path as `toml` prints it in error messages (segments joined by `.`).
    fn dotted(&self) -> String {
        self.path.join(".")
    }

    /// Whether a deserialization error at `err_path` with `message` is caused by this override.
    fn is_blamed_for(&self, err_path: &str, message: &str) -> bool {
        let own = self.dotted();
        if err_path == own || err_path.starts_with(&format!("{own}.")) {
            return true;
        }
        // `RLSGATE_POOL__SIZE__X=1` made a table where a scalar belongs.
        let inside = (1..self.path.len()).any(|i| err_path == self.path[..i].join("."));
        if inside && message.starts_with("invalid type: map") {
            return true;
        }
        // An unknown key is reported at its enclosing table; any segment may be the unknown one.
        (0..self.path.len()).any(|i| {
            err_path == self.path[..i].join(".")
                && message.starts_with(&format!("unknown field `{}`", self.path[i]))
        })
    }

    fn apply(&self, root: &mut Table) -> Result<(), ConfigError> {
        let (last, parents) = self
            .path
            .split_last()
            .expect("path has at least two segments");
        let mut table = root;
        for (depth, segment) in parents.iter().enumerate() {
            let entry = table
                .entry(segment.clone())
                .or_insert_with(|| Value::Table(Table::new()));
            table = match entry {
                Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Env {
                        var: self.var.clone(),
                        reason: format!("`{}` is not a table", parents[..=depth].join(".")),
                    })
                }
            };
        }
        table.insert(last.clone(), self.value());
        Ok(())
    }
}

/// Parses `raw` as a TOML value (`v = <raw>`), `None` when it is not one.
fn toml_value(raw: &str) -> Option<Value> {
    let mut table: Table = format!("v = {raw}").parse().ok()?;
    table.remove("v")
}

/// The override variables of the process environment, as `(name, value)` pairs.
pub(super) fn process_overrides() -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Ok(name) = name.into_string() else {
            continue;
        };
        if !(name.starts_with(ENV_PREFIX) && name.contains(SEPARATOR)) {
            continue;
        }
        match value.into_string() {
            Ok(value) => out.push((name, value)),
            Err(_) => {
                return Err(ConfigError::Env {
                    var: name,
                    reason: "value is not valid UTF-8".into(),
                })
            }
        }
    }
    Ok(out)
}

/// Parses `text`, applies the overrides in `env` and deserializes (no validation).
pub(super) fn deserialize(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let mut overrides = Vec::new();
    for (var, raw) in env {
        overrides.extend(Override::parse(var, raw)?);
    }
    if overrides.is_empty() {
        // Straight from the text: errors then point at the line in the file.
        return toml::from_str(text).map_err(parse_error);
    }
    // Sorted so that `RLSGATE_TENANT__CLAIMS` (a whole table) comes before
    // `RLSGATE_TENANT__CLAIMS__APP.X` (one key inside it), whatever the environment order.
    overrides.sort_by(|a, b| a.var.cmp(&b.var));
    let base: Table = text.parse().map_err(parse_error)?;
    loop {
        let mut table = base.clone();
        for o in &overrides {
            o.apply(&mut table)?;
        }
        let err = match table.try_into::<Config>() {
            Ok(config) => return Ok(config),
            Err(err) => err,
        };
        let err_path = error_path(&err);
        let message = err.message();
        // `RLSGATE_AUTH__JWT__ISSUER=1234` was read as an integer: try it as a string.
        if let Some(o) = overrides
            .iter_mut()
            .find(|o| o.scalar_from_toml && o.dotted() == err_path)
        {
            o.scalar_from_toml = false;
            continue;
        }
        if let Some(o) = overrides
            .iter()
            .find(|o| o.is_blamed_for(&err_path, message))
        {
            let at = if err_path.is_empty() {
                String::new()
            } else {
                format!(" (at `{err_path}`)")
            };
            return Err(ConfigError::Env {
                var: o.var.clone(),
                reason: format!("{message}{at}"),
            });
        }
        return Err(parse_error(err));
    }
}

fn parse_error(err: toml::de::Error) -> ConfigError {
    ConfigError::Parse(err.to_string().trim_end().to_string())
}

/// The key path of a deserialization error. `toml` reports it only in its `Display`
/// output, as a last line "in `a.b.c`"; empty when the error is at the top level.
fn error_path(err: &toml::de::Error) -> String {
    let text = err.to_string();
    text.trim_end()
        .rsplit_once("\nin `")
        .and_then(|(_, rest)| rest.strip_suffix('`'))
        .unwrap_or_default()
        .to_string()
}
