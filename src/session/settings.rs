//! The client's view of its session settings: what it has been told (ParameterStatus),
//! so a value the proxy's own statements changed is announced as directly; and the
//! custom (placeholder) setting names it used, which `pg_settings` does not list, so the
//! transaction-mode snapshot (`tenant::SESSION_SETTINGS`) reads them back too.

use crate::wire::protocol;

/// Placeholder names kept at most (a client naming more loses the rest across servers).
const MAX_CUSTOM: usize = 64;

#[derive(Debug, Default)]
pub struct ClientSettings {
    told: Vec<(String, String)>,
    /// Values the server reported in replies the proxy consumed, newest last: announced
    /// before the next message the client gets, where they differ from what it was told
    /// (so a reset and re-application that end where they began announce nothing).
    pending: Vec<(String, String)>,
    custom: Vec<String>,
}

impl ClientSettings {
    /// What the login told the client.
    pub fn new(told: &[(String, String)]) -> ClientSettings {
        ClientSettings {
            told: told.to_vec(),
            pending: Vec::new(),
            custom: Vec::new(),
        }
    }

    /// A ParameterStatus in a reply the proxy consumes.
    pub fn consumed(&mut self, name: &str, value: &str) {
        self.pending.retain(|(n, _)| n != name);
        self.pending.push((name.to_owned(), value.to_owned()));
    }

    /// A ParameterStatus forwarded to the client.
    pub fn forwarded(&mut self, name: &str, value: &str) {
        self.pending.retain(|(n, _)| n != name);
        self.tell(name, value);
    }

    /// ParameterStatus messages for the consumed values that differ from what the
    /// client was told (recorded as told); empty when there are none.
    pub fn take_announcements(&mut self) -> bytes::BytesMut {
        let mut out = bytes::BytesMut::new();
        for (n, v) in std::mem::take(&mut self.pending) {
            if self.tell(&n, &v) {
                protocol::put_parameter_status(&mut out, &n, &v);
            }
        }
        out
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Records a value the client was told; returns whether it changed what the client
    /// had been told.
    fn tell(&mut self, name: &str, value: &str) -> bool {
        match self.told.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) if v == value => false,
            Some((_, v)) => {
                value.clone_into(v);
                true
            }
            None => {
                self.told.push((name.to_owned(), value.to_owned()));
                true
            }
        }
    }

    /// Notes the custom setting names (`a.b`) a statement may set: the names of its
    /// `SET`s, and quoted first arguments of `set_config(` calls.
    pub fn note_statement<'a>(&mut self, sql: &str, set_names: impl Iterator<Item = &'a str>) {
        for name in set_names {
            self.note(name);
        }
        let lower = sql.to_ascii_lowercase();
        let mut rest = lower.as_str();
        while let Some(at) = rest.find("set_config") {
            rest = &rest[at + "set_config".len()..];
            let arg = rest.trim_start().strip_prefix('(').map(str::trim_start);
            if let Some(name) = arg
                .and_then(|a| a.strip_prefix('\''))
                .and_then(|a| a.split('\'').next())
            {
                self.note(name);
            }
        }
    }

    fn note(&mut self, name: &str) {
        let name = name.to_ascii_lowercase();
        if name.contains('.') && self.custom.len() < MAX_CUSTOM && !self.custom.contains(&name) {
            self.custom.push(name);
        }
    }

    /// The snapshot query: the session-set settings `pg_settings` lists, plus the
    /// custom names this client used where the server has a value for them.
    pub fn snapshot_sql(&self) -> String {
        let mut sql = crate::tenant::SESSION_SETTINGS.to_owned();
        if !self.custom.is_empty() {
            let names: Vec<String> = self
                .custom
                .iter()
                .map(|n| protocol::quote_literal(n))
                .collect();
            sql.push_str(&format!(
                " UNION ALL SELECT n, pg_catalog.encode(pg_catalog.convert_to(v, 'UTF8'), 'hex') \
                 FROM (SELECT n, pg_catalog.current_setting(n, true) AS v \
                 FROM pg_catalog.unnest(ARRAY[{}]::pg_catalog.text[]) AS n) s WHERE v IS NOT NULL",
                names.join(", ")
            ));
        }
        sql
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_names_come_from_sets_and_set_config_calls() {
        let mut s = ClientSettings::default();
        s.note_statement(
            "SELECT set_config('MyApp.Flavour', 'x', false), SET_CONFIG ( 'work_mem','1MB',false)",
            ["other.name", "datestyle"].into_iter(),
        );
        assert_eq!(s.custom, ["other.name", "myapp.flavour"]);
        let sql = s.snapshot_sql();
        assert!(
            sql.contains("ARRAY['other.name', 'myapp.flavour']"),
            "{sql}"
        );
        assert!(ClientSettings::default().snapshot_sql() == crate::tenant::SESSION_SETTINGS);
    }

    #[test]
    fn only_consumed_values_that_differ_are_announced() {
        let mut s = ClientSettings::new(&[("application_name".into(), String::new())]);
        // A reset and a re-application that end where they began: nothing to say.
        s.consumed("application_name", "rlsgate");
        s.consumed("application_name", "");
        assert!(s.has_pending());
        assert!(s.take_announcements().is_empty());
        assert!(!s.has_pending());
        // A value the client was not told is announced once.
        s.consumed("TimeZone", "UTC");
        let mut want = bytes::BytesMut::new();
        protocol::put_parameter_status(&mut want, "TimeZone", "UTC");
        assert_eq!(s.take_announcements(), want);
        s.consumed("TimeZone", "UTC");
        assert!(s.take_announcements().is_empty());
        // A forwarded value replaces a pending one.
        s.consumed("DateStyle", "SQL, DMY");
        s.forwarded("DateStyle", "ISO, MDY");
        assert!(!s.has_pending());
    }
}
