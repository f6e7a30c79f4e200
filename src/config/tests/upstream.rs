//! Unit tests for upstream URL parsing and secret sources (JWT secret, upstream password).

use std::collections::HashMap;
use std::path::PathBuf;

use super::{key_of, minimal, no_env, temp_file};
use crate::config::ConfigError;
use crate::config::{UpstreamHost, UpstreamTarget};

fn target(url: &str) -> Result<UpstreamTarget, ConfigError> {
    let mut up = minimal().upstream;
    up.url = url.into();
    up.target_with(no_env)
}

#[test]
fn upstream_tcp_urls() {
    let t = target("postgres://app@db.internal/app").unwrap();
    assert_eq!(
        t.host,
        UpstreamHost::Tcp {
            host: "db.internal".into(),
            port: 5432
        }
    );
    assert_eq!(
        (t.user.as_str(), t.database.as_str(), t.password),
        ("app", "app", None)
    );
    let t = target("postgresql://a%40b@10.0.0.1:6543/my%20db").unwrap();
    assert_eq!(
        t.host,
        UpstreamHost::Tcp {
            host: "10.0.0.1".into(),
            port: 6543
        }
    );
    assert_eq!((t.user.as_str(), t.database.as_str()), ("a@b", "my db"));
    let t = target("postgres://app@[::1]:5433/app").unwrap();
    assert_eq!(
        t.host,
        UpstreamHost::Tcp {
            host: "::1".into(),
            port: 5433
        }
    );
    assert_eq!(t.host.to_string(), "[::1]:5433");
    let t = target("postgres://db/app?user=app&port=5434").unwrap();
    assert_eq!((t.user.as_str(), t.host.port()), ("app", 5434));
}

#[test]
fn upstream_unix_urls() {
    let t = target("postgres://u@%2Ftmp%2Fpg:5433/db").unwrap();
    assert_eq!(
        t.host,
        UpstreamHost::Unix {
            dir: "/tmp/pg".into(),
            port: 5433
        }
    );
    assert_eq!(
        t.host.socket_path(),
        Some(PathBuf::from("/tmp/pg/.s.PGSQL.5433"))
    );
    for url in [
        "postgres://u@/db?host=/tmp",
        "postgres://u@localhost/db?host=/tmp",
        "postgres:///db?host=%2Ftmp&user=u",
    ] {
        let t = target(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(
            t.host,
            UpstreamHost::Unix {
                dir: "/tmp".into(),
                port: 5432
            },
            "{url}"
        );
        assert_eq!((t.user.as_str(), t.database.as_str()), ("u", "db"), "{url}");
    }
}

#[test]
fn upstream_url_errors() {
    for (url, needle) in [
        ("postgres://u@host", "no database"),
        ("postgres://u@host/", "no database"),
        ("postgres://host/db", "no user"),
        ("postgres://u@/db", "no host"),
        ("http://u@host/db", "postgres://"),
        ("postgres://u@h1,h2/db", "multiple hosts"),
        (
            "postgres://u@host/db?sslmode=require",
            "unsupported parameter `sslmode`",
        ),
        ("postgres://u@host:0/db", "port"),
        ("postgres://u@host/db?port=x", "port"),
    ] {
        let err = target(url).expect_err(url);
        let msg = err.to_string();
        assert!(
            msg.starts_with("invalid config: `upstream.url`: ") && msg.contains(needle),
            "{url}: {msg}"
        );
    }
}

#[test]
fn upstream_password_sources() {
    let mut up = minimal().upstream;
    up.url = "postgres://app:from%20url@db/app".into();
    assert_eq!(
        up.target_with(no_env).unwrap().password.as_deref(),
        Some("from url")
    );
    let shown = format!("{up:?} {:?}", up.target_with(no_env).unwrap());
    assert!(!shown.contains("from") && shown.contains("***"), "{shown}");

    up.password_env = Some("PGPASS".into());
    let env = HashMap::from([("PGPASS".to_string(), "p1".to_string())]);
    let t = up.target_with(|k| env.get(k).cloned()).unwrap();
    assert_eq!(t.password.as_deref(), Some("p1"));
    assert_eq!(
        key_of(up.target_with(no_env).unwrap_err()),
        "upstream.password_env"
    );

    let file = temp_file("p2\n");
    up.password_env = None;
    up.password_file = Some(file.path().into());
    assert_eq!(
        up.target_with(no_env).unwrap().password.as_deref(),
        Some("p2")
    );
    up.password_file = Some("/nonexistent/rlsgate-password".into());
    assert_eq!(
        key_of(up.target_with(no_env).unwrap_err()),
        "upstream.password_file"
    );
}

#[test]
fn jwt_secret_sources() {
    let mut jwt = minimal().auth.jwt;
    let env = HashMap::from([("JWT_SECRET".to_string(), "s1".to_string())]);
    assert_eq!(
        jwt.secret_with(|k| env.get(k).cloned()).unwrap(),
        Some(b"s1".to_vec())
    );
    assert_eq!(
        key_of(jwt.secret_with(no_env).unwrap_err()),
        "auth.jwt.secret_env"
    );
    let err = jwt.secret_with(|_| Some(String::new())).unwrap_err();
    assert!(err.to_string().contains("is empty"), "{err}");

    let file = temp_file("s2\r\n\n");
    jwt.secret_env = None;
    jwt.secret_file = Some(file.path().into());
    assert_eq!(jwt.secret_with(no_env).unwrap(), Some(b"s2".to_vec()));
    let empty = temp_file("\n");
    jwt.secret_file = Some(empty.path().into());
    assert_eq!(
        key_of(jwt.secret_with(no_env).unwrap_err()),
        "auth.jwt.secret_file"
    );
    jwt.secret_file = None;
    assert_eq!(jwt.secret_with(no_env).unwrap(), None);
}
