//! The upstream target: `upstream.url` (a libpq-style URI) resolved into host, user, database and password.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use url::{Host, Url};

use super::secret::{from_env, from_file, process_env};
use super::{ConfigError, SslMode, UpstreamConfig};

const KEY: &str = "upstream.url";
const DEFAULT_PORT: u16 = 5432;

/// Where the upstream server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamHost {
    /// Host name or IP address (IPv6 without brackets).
    Tcp { host: String, port: u16 },
    /// Directory holding the socket `.s.PGSQL.<port>`.
    Unix { dir: PathBuf, port: u16 },
}

impl UpstreamHost {
    /// The server port (for unix sockets: the number in the socket file name).
    pub fn port(&self) -> u16 {
        match self {
            Self::Tcp { port, .. } | Self::Unix { port, .. } => *port,
        }
    }

    /// The socket file for [`UpstreamHost::Unix`], `None` for TCP.
    pub fn socket_path(&self) -> Option<PathBuf> {
        match self {
            Self::Tcp { .. } => None,
            Self::Unix { dir, port } => Some(dir.join(format!(".s.PGSQL.{port}"))),
        }
    }
}

impl fmt::Display for UpstreamHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Self::Tcp { host, port } => write!(f, "{host}:{port}"),
            Self::Unix { .. } => {
                let path = self.socket_path().unwrap_or_default();
                write!(f, "{}", path.display())
            }
        }
    }
}

/// Everything needed to open one upstream connection. `Debug` masks the password.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    pub host: UpstreamHost,
    pub user: String,
    pub database: String,
    pub password: Option<String>,
    pub sslmode: SslMode,
    pub root_cert_file: Option<PathBuf>,
    pub connect_timeout: Duration,
}

impl fmt::Debug for UpstreamTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTarget")
            .field("host", &self.host)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("sslmode", &self.sslmode)
            .field("root_cert_file", &self.root_cert_file)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl UpstreamConfig {
    /// Parses `url` and resolves the password: `password_env` (the variable must be set),
    /// else `password_file` (trailing newline stripped), else a password embedded in the URL.
    pub fn target(&self) -> Result<UpstreamTarget, ConfigError> {
        self.target_with(process_env)
    }

    /// [`UpstreamConfig::target`] with environment variables looked up through `env`.
    pub fn target_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<UpstreamTarget, ConfigError> {
        let parsed = parse_url(&self.url)?;
        let password = if let Some(var) = &self.password_env {
            Some(from_env("upstream.password_env", var, &env)?)
        } else if let Some(path) = &self.password_file {
            let bytes = from_file("upstream.password_file", path)?;
            Some(String::from_utf8(bytes).map_err(|_| ConfigError::Secret {
                key: "upstream.password_file".into(),
                reason: format!("`{}` is not valid UTF-8", path.display()),
            })?)
        } else {
            parsed.password
        };
        Ok(UpstreamTarget {
            host: parsed.host,
            user: parsed.user,
            database: parsed.database,
            password,
            sslmode: self.sslmode,
            root_cert_file: self.root_cert_file.clone(),
            connect_timeout: self.connect_timeout,
        })
    }
}

/// `upstream.url` taken apart.
#[derive(Debug)]
pub(super) struct ParsedUrl {
    pub host: UpstreamHost,
    pub user: String,
    pub database: String,
    pub password: Option<String>,
}

/// Parses `postgres[ql]://[user[:password]@][host][:port][/dbname][?host=..&port=..&user=..&dbname=..]`.
///
/// The host is a unix socket directory when it starts with `/` (percent-encoded in the
/// authority, `postgres://u@%2Ftmp/db`, or as `?host=/tmp`, which wins over the authority).
pub(super) fn parse_url(text: &str) -> Result<ParsedUrl, ConfigError> {
    let (fixed, empty_host) = fill_empty_host(text)?;
    let url = Url::parse(&fixed).map_err(|e| invalid(format!("not a valid URL: {e}")))?;

    let mut host = match url.host() {
        _ if empty_host => None,
        Some(Host::Domain(d)) => Some(decode(d, "host")?),
        Some(Host::Ipv4(a)) => Some(a.to_string()),
        Some(Host::Ipv6(a)) => Some(a.to_string()),
        None => None,
    };
    let mut port = url.port();
    let mut user = Some(decode(url.username(), "user name")?).filter(|u| !u.is_empty());
    let password = url.password().map(|p| decode(p, "password")).transpose()?;
    let path = url.path().strip_prefix('/').unwrap_or(url.path());
    let mut database = Some(decode(path, "database name")?).filter(|d| !d.is_empty());

    for (name, value) in url.query_pairs() {
        let value = value.into_owned();
        match name.as_ref() {
            "host" => host = Some(value),
            "port" => {
                port = Some(
                    value
                        .parse()
                        .map_err(|_| invalid(format!("bad port `{value}`")))?,
                )
            }
            "user" => user = Some(value),
            "dbname" => database = Some(value),
            other => {
                return Err(invalid(format!(
                    "unsupported parameter `{other}` (only host, port, user and dbname; \
                     TLS and timeouts have their own `upstream.*` keys)"
                )))
            }
        }
    }

    let port = port.unwrap_or(DEFAULT_PORT);
    if port == 0 {
        return Err(invalid("port 0 is not valid"));
    }
    let host =
        match host.filter(|h| !h.is_empty()) {
            None => return Err(invalid(
                "no host (postgres://user@host:5432/db, or ?host=/socket/dir for a unix socket)",
            )),
            Some(h) if h.contains(',') => return Err(invalid("multiple hosts are not supported")),
            Some(h) if h.starts_with('/') => UpstreamHost::Unix {
                dir: PathBuf::from(h),
                port,
            },
            Some(h) => UpstreamHost::Tcp { host: h, port },
        };
    let user = user
        .filter(|u| !u.is_empty())
        .ok_or_else(|| invalid("no user name (postgres://USER@host:5432/db)"))?;
    let database = database
        .filter(|d| !d.is_empty())
        .ok_or_else(|| invalid("no database name (postgres://user@host:5432/DATABASE)"))?;
    if database.contains('/') {
        return Err(invalid(format!("bad database name `{database}`")));
    }
    Ok(ParsedUrl {
        host,
        user,
        database,
        password,
    })
}

/// `url` refuses `postgres://user@/db` ("empty host"), which libpq accepts (the host then
/// comes from `?host=`). Puts a placeholder host in; the flag says to ignore it.
fn fill_empty_host(text: &str) -> Result<(String, bool), ConfigError> {
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(invalid("must start with postgres:// or postgresql://"));
    };
    if scheme != "postgres" && scheme != "postgresql" {
        return Err(invalid("must start with postgres:// or postgresql://"));
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if !(hostport.is_empty() || hostport.starts_with(':')) {
        return Ok((text.to_string(), false));
    }
    let userinfo = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    Ok((
        format!("{scheme}://{userinfo}placeholder{hostport}{tail}"),
        true,
    ))
}

/// `url` with the password of its user info (if any) replaced by `***`, for logs.
pub(super) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{hostport}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Percent-decodes one URL component; `what` names it in errors (never its text: it may
/// be a password).
fn decode(text: &str, what: &str) -> Result<String, ConfigError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
            let Some(hex) = hex else {
                return Err(invalid(format!("bad percent-encoding in the {what}")));
            };
            let hex = std::str::from_utf8(hex).expect("ASCII hex digits");
            out.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| invalid(format!("the {what} does not decode to UTF-8")))
}

fn invalid(reason: impl Into<String>) -> ConfigError {
    ConfigError::invalid(KEY, reason)
}
