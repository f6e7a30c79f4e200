//! The doctor's report: a readable table (default) or JSON.

use std::io::{self, Write};

use serde::Serialize;

use super::{Context, Finding, Format, Severity};

/// Everything doctor found, with what it looked at.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub database: String,
    pub connected_as: String,
    pub app_role: String,
    pub setting: String,
    pub tenant_tables: Vec<String>,
    pub findings: Vec<Finding>,
    pub summary: Summary,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub errors: usize,
    pub warnings: usize,
    pub info: usize,
}

impl Report {
    pub fn new(database: &str, ctx: &Context, findings: Vec<Finding>) -> Report {
        let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
        let summary = Summary {
            errors: count(Severity::Error),
            warnings: count(Severity::Warning),
            info: count(Severity::Info),
        };
        Report {
            database: database.to_owned(),
            connected_as: ctx.current_user.clone(),
            app_role: ctx.settings.app_role.clone(),
            setting: ctx.settings.setting.clone(),
            tenant_tables: ctx.tables.iter().map(|t| t.name.plain()).collect(),
            findings,
            summary,
        }
    }

    pub fn errors(&self) -> usize {
        self.summary.errors
    }

    /// Finding check ids, for tests and scripts.
    pub fn checks(&self) -> Vec<&'static str> {
        self.findings.iter().map(|f| f.check).collect()
    }

    pub fn print(&self, format: Format, out: &mut dyn Write) -> Result<(), super::DoctorError> {
        match format {
            Format::Json => {
                serde_json::to_writer_pretty(&mut *out, self).map_err(io::Error::from)?;
                writeln!(out)?;
            }
            Format::Table => self.print_table(out)?,
        }
        Ok(())
    }

    fn print_table(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "rlsgate doctor: {}", self.database)?;
        writeln!(
            out,
            "app role: {}   tenant setting: {}   tenant tables: {}",
            self.app_role,
            self.setting,
            self.tenant_tables.len()
        )?;
        writeln!(out)?;
        if self.findings.is_empty() {
            writeln!(out, "No problems found.")?;
            return Ok(());
        }
        let width = self
            .findings
            .iter()
            .map(|f| f.check.len())
            .max()
            .unwrap_or(0)
            .max(5);
        writeln!(out, "{:<8}  {:<width$}  OBJECT", "SEVERITY", "CHECK")?;
        for f in &self.findings {
            let severity = match f.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
                Severity::Info => "info",
            };
            writeln!(out, "{severity:<8}  {:<width$}  {}", f.check, f.object)?;
            let indent = " ".repeat(10);
            writeln!(out, "{indent}why: {}", f.why)?;
            for (i, line) in f.fix.lines().enumerate() {
                let label = if i == 0 { "fix: " } else { "     " };
                writeln!(out, "{indent}{label}{line}")?;
            }
        }
        let s = self.summary;
        writeln!(
            out,
            "\n{} error{}, {} warning{}, {} info",
            s.errors,
            plural(s.errors),
            s.warnings,
            plural(s.warnings),
            s.info
        )
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
