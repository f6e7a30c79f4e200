//! A throwaway PostgreSQL cluster built from the local server binaries, for `rlsgate demo` and tests.
//!
//! [`TempPostgres::start`] runs `initdb` into a fresh temporary directory, writes a
//! `postgresql.conf` tuned for speed (no fsync) and a `pg_hba.conf` that exercises every
//! upstream authentication method rlsgate supports, then `pg_ctl start -w`. Dropping the
//! value stops the server (`-m immediate`) and removes the directory.
//!
//! PostgreSQL refuses to run as root, so when this process is root the server binaries run
//! as the `postgres` OS user and the temporary directory is chowned to it.

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::{chown, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

/// The demo schema and seed data (`policies/demo.sql`), run as superuser into database `app`.
/// policies/sealed.sql: `rlsgate.enter`, `rlsgate.tenant()`, `rlsgate.set_seal_secret`.
pub const SEALED_SQL: &str = include_str!("../../policies/sealed.sql");

/// The demo schema, after [`SEALED_SQL`] (its policies are on `rlsgate.tenant()`).
/// The seal secret still has to be stored: [`crate::dev::demo::store_seal_secret`].
pub const DEMO_SQL: &str = concat!(
    include_str!("../../policies/sealed.sql"),
    "\n",
    include_str!("../../policies/demo.sql")
);

const SERVER_BINARIES: [&str; 3] = ["initdb", "pg_ctl", "postgres"];
const HOST: &str = "127.0.0.1";
const START_ATTEMPTS: usize = 3;

/// The `pg_hba.conf` every temporary cluster gets: one role per upstream auth method.
const PG_HBA: &str = "\
# Written by rlsgate pgtemp: one line per upstream authentication method under test.
local all all trust
host all postgres 127.0.0.1/32 trust
host all app_md5 127.0.0.1/32 md5
host all app_plain 127.0.0.1/32 password
host all all 127.0.0.1/32 scram-sha-256
";

/// Why a temporary PostgreSQL could not be prepared, started, queried or stopped.
#[derive(Debug, thiserror::Error)]
pub enum PgTempError {
    #[error("PostgreSQL server binaries not found (looked in {looked_in}): install them with `apt-get install -y postgresql` or set PG_BIN_DIR")]
    BinariesNotFound { looked_in: String },
    #[error("running as root, but there is no `postgres` OS user in /etc/passwd to run the server as: create one with `useradd --system --home /var/lib/postgresql postgres` (or install the `postgresql` package)")]
    NoPostgresUser,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("initdb failed ({status}); check that the data directory is writable by the server's OS user:\n{stderr}")]
    Initdb { status: String, stderr: String },
    #[error("could not find a free TCP port on 127.0.0.1 after {attempts} attempts; pass an explicit port or free some ports")]
    NoFreePort { attempts: usize },
    #[error(
        "PostgreSQL did not start on port {port} ({stderr}); last lines of {log}:\n{log_tail}"
    )]
    Start {
        port: u16,
        stderr: String,
        log: String,
        log_tail: String,
    },
    #[error("pg_ctl stop failed ({stderr}); the server may still be running from {data_dir}")]
    Stop { stderr: String, data_dir: String },
    #[error("psql on database `{db}` failed ({status}); is the server running and the SQL valid?\n{stderr}")]
    Psql {
        db: String,
        status: String,
        stderr: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PgTempError {
    let what = what.into();
    move |source| PgTempError::Io { what, source }
}

/// Options for [`TempPostgres::start`].
#[derive(Default, Clone, Debug)]
pub struct TempPostgresOptions {
    /// Fixed port; `None` picks a free one (and retries on a lost race).
    pub port: Option<u16>,
    /// Lines appended to `postgresql.conf` after ours, so they win.
    pub extra_conf: Vec<String>,
}

/// The OS account the server binaries run as, when it differs from ours.
#[derive(Clone, Debug)]
struct OsUser {
    uid: u32,
    gid: u32,
}

/// A running throwaway PostgreSQL cluster; stopped and deleted on drop.
#[derive(Debug)]
pub struct TempPostgres {
    dir: Option<TempDir>,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    port: u16,
    bin_dir: PathBuf,
    run_as: Option<OsUser>,
    running: bool,
}

impl TempPostgres {
    /// Creates, configures and starts a new cluster. Blocking (initdb takes a second or two).
    pub fn start(opts: TempPostgresOptions) -> Result<TempPostgres, PgTempError> {
        let bin_dir = find_bin_dir()?;
        let run_as = server_os_user()?;
        let dir = tempfile::Builder::new()
            .prefix("rlsgate-pg-")
            .tempdir_in(std::env::temp_dir())
            .map_err(io_err("creating a temporary directory under $TMPDIR"))?;
        let root = dir.path().to_path_buf();
        let socket_dir = root.join("socket");
        fs::create_dir(&socket_dir).map_err(io_err("creating the socket directory"))?;
        if let Some(user) = &run_as {
            for path in [&root, &socket_dir] {
                chown(path, Some(user.uid), Some(user.gid)).map_err(io_err(format!(
                    "chown {} to the postgres user",
                    path.display()
                )))?;
            }
        }
        let data_dir = root.join("data");
        let mut pg = TempPostgres {
            dir: Some(dir),
            log_file: data_dir.join("postgres.log"),
            data_dir,
            socket_dir,
            port: 0,
            bin_dir,
            run_as,
            running: false,
        };
        pg.initdb()?;
        let base_conf = fs::read_to_string(pg.data_dir.join("postgresql.conf"))
            .map_err(io_err("reading postgresql.conf written by initdb"))?;
        fs::write(pg.data_dir.join("pg_hba.conf"), PG_HBA)
            .map_err(io_err("writing pg_hba.conf"))?;

        let attempts = if opts.port.is_some() {
            1
        } else {
            START_ATTEMPTS
        };
        for attempt in 1..=attempts {
            pg.port = match opts.port {
                Some(port) => port,
                None => free_port()?,
            };
            pg.write_conf(&base_conf, &opts.extra_conf)?;
            match pg.pg_ctl_start() {
                Ok(()) => return Ok(pg),
                Err(PgTempError::Start { log_tail, .. })
                    if attempt < attempts && log_tail.contains("could not bind") => {}
                Err(e) => return Err(e),
            }
        }
        Err(PgTempError::NoFreePort { attempts })
    }

    /// The TCP port the server listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the server listens on: always `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The directory holding the server's unix socket (`unix_socket_directories`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The cluster's data directory (also holds `postgres.log`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory the server binaries were taken from.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// A URL for the `postgres` superuser over loopback TCP (trust auth, no password).
    pub fn superuser_url(&self, db: &str) -> String {
        format!("postgres://postgres@{HOST}:{}/{db}", self.port)
    }

    /// Runs `sql` (one or more statements) with psql as superuser; returns stdout with the
    /// trailing newline trimmed (unaligned, tuples only: `select 1` gives `"1"`).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, PgTempError> {
        self.run_psql(db, "postgres", None, PsqlInput::Sql(sql))
    }

    /// Like [`psql`](Self::psql) but as `user` over TCP, with `password` if given.
    pub fn psql_as(
        &self,
        db: &str,
        user: &str,
        password: Option<&str>,
        sql: &str,
    ) -> Result<String, PgTempError> {
        self.run_psql(db, user, password, PsqlInput::Sql(sql))
    }

    /// Runs an SQL file with psql as superuser, stopping at the first error.
    pub fn run_sql_file(&self, db: &str, path: &Path) -> Result<(), PgTempError> {
        self.run_psql(db, "postgres", None, PsqlInput::File(path))
            .map(drop)
    }

    /// Stops the server (`pg_ctl stop -m fast`), keeping the data directory.
    pub fn stop(&mut self) -> Result<(), PgTempError> {
        self.pg_ctl_stop("fast")
    }

    /// Starts the server again on the same data directory and port.
    pub fn start_again(&mut self) -> Result<(), PgTempError> {
        if self.running {
            return Ok(());
        }
        self.pg_ctl_start()
    }

    fn server_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        // A directory the server user can enter: initdb and pg_ctl complain otherwise.
        cmd.current_dir(self.data_dir.parent().unwrap_or(&self.data_dir));
        cmd.stdin(Stdio::null());
        if let Some(user) = &self.run_as {
            cmd.uid(user.uid).gid(user.gid);
        }
        cmd
    }

    fn initdb(&self) -> Result<(), PgTempError> {
        let mut last = None;
        // C.UTF-8 is missing on some minimal systems; plain C still allows UTF8 encoding.
        for locale in ["C.UTF-8", "C"] {
            let out = self
                .server_command("initdb")
                .arg("-D")
                .arg(&self.data_dir)
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
                .arg(format!("--locale={locale}"))
                .output()
                .map_err(io_err("running initdb"))?;
            if out.status.success() {
                return Ok(());
            }
            // initdb removes what it created on failure, so the retry starts clean.
            last = Some(out);
        }
        let out = last.expect("at least one initdb attempt");
        Err(PgTempError::Initdb {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    fn write_conf(&self, base: &str, extra: &[String]) -> Result<(), PgTempError> {
        let socket = self.socket_dir.display().to_string().replace('\'', "''");
        let mut conf = format!(
            "{base}\n# --- rlsgate pgtemp ---\n\
             listen_addresses = '{HOST}'\n\
             port = {port}\n\
             unix_socket_directories = '{socket}'\n\
             fsync = off\n\
             full_page_writes = off\n\
             synchronous_commit = off\n\
             max_connections = 200\n\
             shared_buffers = 128MB\n\
             logging_collector = off\n\
             password_encryption = 'scram-sha-256'\n",
            port = self.port
        );
        for line in extra {
            conf.push_str(line);
            conf.push('\n');
        }
        fs::write(self.data_dir.join("postgresql.conf"), conf)
            .map_err(io_err("writing postgresql.conf"))
    }

    fn pg_ctl_start(&mut self) -> Result<(), PgTempError> {
        // Only the log lines of this attempt matter when reporting a failure.
        let log_start = fs::metadata(&self.log_file).map_or(0, |m| m.len());
        let out = self
            .server_command("pg_ctl")
            .arg("start")
            .args(["-w", "-t", "60", "-D"])
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file)
            .output()
            .map_err(io_err("running pg_ctl start"))?;
        if out.status.success() {
            self.running = true;
            return Ok(());
        }
        // A half-started postmaster would hold the data directory; make sure it is gone.
        let _ = self.pg_ctl_stop("immediate");
        Err(PgTempError::Start {
            port: self.port,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            log: self.log_file.display().to_string(),
            log_tail: log_tail(&self.log_file, log_start),
        })
    }

    fn pg_ctl_stop(&mut self, mode: &str) -> Result<(), PgTempError> {
        let out = self
            .server_command("pg_ctl")
            .args(["stop", "-w", "-t", "60", "-m", mode, "-D"])
            .arg(&self.data_dir)
            .output()
            .map_err(io_err("running pg_ctl stop"))?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        // "PID file does not exist" means it is already stopped, which is what we want.
        if out.status.success() || stderr.contains("PID file") {
            self.running = false;
            return Ok(());
        }
        Err(PgTempError::Stop {
            stderr,
            data_dir: self.data_dir.display().to_string(),
        })
    }

    fn run_psql(
        &self,
        db: &str,
        user: &str,
        password: Option<&str>,
        input: PsqlInput<'_>,
    ) -> Result<String, PgTempError> {
        let psql = self.bin_dir.join("psql");
        let mut cmd = Command::new(if psql.exists() { psql } else { "psql".into() });
        cmd.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", HOST, "-p"])
            .arg(self.port.to_string())
            .args(["-U", user, "-d", db]);
        for var in [
            "PGPASSWORD",
            "PGSERVICE",
            "PGOPTIONS",
            "PGSSLMODE",
            "PGPASSFILE",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("PGCONNECT_TIMEOUT", "10");
        if let Some(password) = password {
            cmd.env("PGPASSWORD", password);
        }
        let out = match input {
            PsqlInput::File(path) => cmd
                .arg("-f")
                .arg(path)
                .stdin(Stdio::null())
                .output()
                .map_err(io_err("running psql (is it on PATH?)"))?,
            PsqlInput::Sql(sql) => run_with_stdin(cmd.args(["-f", "-"]), sql)?,
        };
        if !out.status.success() {
            return Err(PgTempError::Psql {
                db: db.to_string(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        let mut stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        while stdout.ends_with('\n') {
            stdout.pop();
        }
        Ok(stdout)
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if self.running && self.pg_ctl_stop("immediate").is_err() {
            kill_postmaster(&self.data_dir);
        }
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                eprintln!("rlsgate pgtemp: could not remove {}: {e}", path.display());
            }
        }
    }
}

enum PsqlInput<'a> {
    Sql(&'a str),
    File(&'a Path),
}

/// Feeds `input` on stdin from a thread, so a large script cannot deadlock against output.
fn run_with_stdin(cmd: &mut Command, input: &str) -> Result<Output, PgTempError> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err("running psql (is it on PATH?)"))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = input.to_owned();
    // A write error means psql exited early; its status and stderr tell why.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child
        .wait_with_output()
        .map_err(io_err("waiting for psql"))?;
    let _ = writer.join();
    Ok(out)
}

/// Last resort when `pg_ctl stop` failed in drop: SIGKILL the pid in `postmaster.pid`.
fn kill_postmaster(data_dir: &Path) {
    let pid = fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()));
    if let Some(pid) = pid {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

fn log_tail(log: &Path, from: u64) -> String {
    let Ok(bytes) = fs::read(log) else {
        return "(log file missing)".to_string();
    };
    let start = usize::try_from(from).unwrap_or(0).min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn free_port() -> Result<u16, PgTempError> {
    let listener =
        TcpListener::bind((HOST, 0)).map_err(io_err("binding 127.0.0.1:0 to find a free port"))?;
    let port = listener
        .local_addr()
        .map_err(io_err("reading the free port"))?
        .port();
    Ok(port)
}

/// `Some(postgres user)` when we are root (the server refuses to run as root), else `None`.
fn server_os_user() -> Result<Option<OsUser>, PgTempError> {
    let euid = fs::metadata("/proc/self")
        .map_err(io_err("reading /proc/self to find our uid"))?
        .uid();
    if euid != 0 {
        return Ok(None);
    }
    let passwd = fs::read_to_string("/etc/passwd").map_err(io_err("reading /etc/passwd"))?;
    passwd_entry(&passwd, "postgres")
        .map(Some)
        .ok_or(PgTempError::NoPostgresUser)
}

fn passwd_entry(passwd: &str, name: &str) -> Option<OsUser> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some(OsUser { uid, gid })
    })
}

fn has_server_binaries(dir: &Path) -> bool {
    SERVER_BINARIES.iter().all(|b| dir.join(b).is_file())
}

/// Finds the PostgreSQL server binaries: `$PG_BIN_DIR`, else `pg_config --bindir` if it has
/// `initdb`, `pg_ctl` and `postgres`, else the highest `/usr/lib/postgresql/*/bin`.
pub fn find_bin_dir() -> Result<PathBuf, PgTempError> {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
        let dir = PathBuf::from(dir);
        return check_bin_dir(&dir, format!("PG_BIN_DIR={}", dir.display()));
    }
    let mut looked = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if has_server_binaries(&dir) {
                return Ok(dir);
            }
            looked.push(format!("{} (from pg_config --bindir)", dir.display()));
        }
    }
    if let Some(dir) = highest_versioned_bin_dir(Path::new("/usr/lib/postgresql")) {
        return Ok(dir);
    }
    looked.push("/usr/lib/postgresql/*/bin".to_string());
    Err(PgTempError::BinariesNotFound {
        looked_in: looked.join(", "),
    })
}

fn check_bin_dir(dir: &Path, described: String) -> Result<PathBuf, PgTempError> {
    if has_server_binaries(dir) {
        Ok(dir.to_path_buf())
    } else {
        Err(PgTempError::BinariesNotFound {
            looked_in: described,
        })
    }
}

/// The `<version>/bin` under `root` with the highest numeric version holding the binaries.
fn highest_versioned_bin_dir(root: &Path) -> Option<PathBuf> {
    let mut candidates: Vec<(Vec<u32>, PathBuf)> = fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version: Option<Vec<u32>> = name.split('.').map(|p| p.parse().ok()).collect();
            let bin = entry.path().join("bin");
            Some((version?, bin)).filter(|(_, bin)| has_server_binaries(bin))
        })
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, bin)| bin)
}

#[cfg(test)]
#[path = "pgtemp_tests.rs"]
mod tests;
