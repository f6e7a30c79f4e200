//! Unit tests for loading, environment overrides, validation, secrets and upstream URLs.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use super::validate::is_custom_setting_name;
use super::*;

mod upstream;

const MINIMAL: &str = r#"
[auth.jwt]
secret_env = "JWT_SECRET"

[upstream]
url = "postgres://app@127.0.0.1:5432/app"
"#;

fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_toml_with_env(
        text,
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

fn minimal() -> Config {
    parse_env(MINIMAL, &[]).expect("minimal config parses")
}

/// The key of an `Invalid` or `Secret` error, the variable of an `Env` error.
fn key_of(err: ConfigError) -> String {
    match err {
        ConfigError::Invalid { key, .. } | ConfigError::Secret { key, .. } => key,
        ConfigError::Env { var, .. } => var,
        other => panic!("expected a keyed error, got {other}"),
    }
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn temp_file(contents: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(contents.as_bytes()).expect("write temp file");
    f
}

#[test]
fn minimal_config_uses_defaults() {
    let c = minimal();
    assert_eq!(c.listen.addr, "127.0.0.1:6432".parse().unwrap());
    assert_eq!(c.listen.max_clients, 1000);
    assert_eq!(c.listen.startup_timeout, Duration::from_secs(10));
    assert_eq!(c.tls.mode, TlsMode::Prefer);
    assert_eq!(c.auth.jwt.algorithms, ["HS256"]);
    assert_eq!(c.auth.jwt.leeway, Duration::from_secs(30));
    assert_eq!(c.auth.jwt.tenant_claim, "tenant_id");
    assert_eq!(c.upstream.sslmode, SslMode::Disable);
    assert_eq!(c.upstream.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.pool.mode, PoolMode::Session);
    assert_eq!((c.pool.size, c.pool.min_idle), (10, 0));
    assert_eq!(c.pool.reset_query, "DISCARD ALL");
    assert_eq!(c.tenant.setting, "app.current_tenant");
    assert!(c.tenant.claims.is_empty());
}

#[test]
fn unknown_keys_are_rejected_with_their_name() {
    let err = parse_env(&format!("{MINIMAL}\n[pool]\nsizee = 3\n"), &[]).unwrap_err();
    assert!(matches!(err, ConfigError::Parse(_)));
    let msg = err.to_string();
    assert!(
        msg.contains("unknown field `sizee`") && msg.contains("line"),
        "{msg}"
    );

    let err = parse_env(&format!("{MINIMAL}\n[poool]\n"), &[]).unwrap_err();
    assert!(err.to_string().contains("unknown field `poool`"), "{err}");

    let text = MINIMAL.replace("secret_env", "secret_envv = \"x\"\nsecret_env");
    let err = parse_env(&text, &[]).unwrap_err();
    assert!(err.to_string().contains("secret_envv"), "{err}");
}

#[test]
fn missing_sections_are_named() {
    let err = parse_env("[auth.jwt]\nsecret_env = \"S\"\n", &[]).unwrap_err();
    assert!(
        err.to_string().contains("missing field `upstream`"),
        "{err}"
    );
}

#[test]
fn invalid_error_display_names_the_key() {
    let mut c = minimal();
    c.pool.size = 0;
    let err = c.validate().unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid config: `pool.size`: must be at least 1"
    );
}

#[test]
fn each_validation_error_names_its_key() {
    type Mutation = fn(&mut Config);
    let cases: &[(&str, Mutation)] = &[
        ("pool.size", |c| c.pool.size = 0),
        ("pool.min_idle", |c| c.pool.min_idle = 11),
        ("pool.reset_query", |c| c.pool.reset_query = "  ".into()),
        ("pool.acquire_timeout", |c| {
            c.pool.acquire_timeout = Duration::ZERO
        }),
        ("listen.max_clients", |c| c.listen.max_clients = 0),
        ("listen.startup_timeout", |c| {
            c.listen.startup_timeout = Duration::ZERO
        }),
        ("tls.cert_file", |c| c.tls.mode = TlsMode::Require),
        ("tls.key_file", |c| c.tls.cert_file = Some("c.pem".into())),
        ("tls.cert_file", |c| c.tls.key_file = Some("k.pem".into())),
        ("auth.jwt.algorithms", |c| c.auth.jwt.algorithms.clear()),
        ("auth.jwt.algorithms", |c| {
            c.auth.jwt.algorithms = vec!["none".into()]
        }),
        ("auth.jwt.algorithms", |c| {
            c.auth.jwt.algorithms = vec!["hs256".into()]
        }),
        ("auth.jwt.algorithms", |c| {
            c.auth.jwt.algorithms = vec!["XS1".into()]
        }),
        ("auth.jwt.algorithms", |c| {
            c.auth.jwt.algorithms = vec!["HS256".into(), "RS256".into()];
            c.auth.jwt.public_key_file = Some("k.pem".into());
        }),
        ("auth.jwt.secret_env", |c| c.auth.jwt.secret_env = None),
        ("auth.jwt.secret_env", |c| {
            c.auth.jwt.secret_env = Some(String::new())
        }),
        ("auth.jwt.secret_file", |c| {
            c.auth.jwt.secret_file = Some("s".into())
        }),
        ("auth.jwt.public_key_file", |c| {
            c.auth.jwt.algorithms = vec!["ES256".into()]
        }),
        ("auth.jwt.leeway", |c| {
            c.auth.jwt.leeway = Duration::from_secs(3601)
        }),
        ("auth.jwt.tenant_claim", |c| c.auth.jwt.tenant_claim.clear()),
        ("auth.jwt.role_claim", |c| {
            c.auth.jwt.role_claim = Some(String::new())
        }),
        ("auth.jwt.max_token_bytes", |c| {
            c.auth.jwt.max_token_bytes = 0
        }),
        ("upstream.url", |c| c.upstream.url = "mysql://a@b/c".into()),
        ("upstream.url", |c| c.upstream.url = "postgres://a@b".into()),
        ("upstream.password_file", |c| {
            c.upstream.password_env = Some("P".into());
            c.upstream.password_file = Some("p".into());
        }),
        ("upstream.connect_timeout", |c| {
            c.upstream.connect_timeout = Duration::ZERO
        }),
        ("tenant.setting", |c| c.tenant.setting = "tenant".into()),
        ("tenant.setting", |c| c.tenant.setting = "app.1x".into()),
        ("tenant.claims.\"user_id\"", |c| {
            c.tenant.claims.insert("user_id".into(), "sub".into());
        }),
        ("tenant.claims.\"app.user_id\"", |c| {
            c.tenant.claims.insert("app.user_id".into(), String::new());
        }),
        ("tenant.claims.\"App.Current_Tenant\"", |c| {
            c.tenant
                .claims
                .insert("App.Current_Tenant".into(), "sub".into());
        }),
    ];
    for (key, mutate) in cases {
        let mut c = minimal();
        mutate(&mut c);
        let err = c.validate().expect_err(key);
        assert_eq!(key_of(err), *key);
    }
}

#[test]
fn algorithm_messages_explain_themselves() {
    let mut c = minimal();
    c.auth.jwt.algorithms = vec!["none".into()];
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("never accepted"));
    c.auth.jwt.algorithms = vec!["HS256".into(), "ES256".into()];
    c.auth.jwt.jwks_file = Some("jwks.json".into());
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("algorithm confusion"));
    c.auth.jwt.algorithms = vec![
        "RS256".into(),
        "PS512".into(),
        "ES384".into(),
        "EdDSA".into(),
    ];
    c.auth.jwt.secret_env = None;
    c.validate().expect("public-key algorithms with a JWKS");
}

#[test]
fn valid_variants_pass() {
    let mut c = minimal();
    c.tls.mode = TlsMode::Require;
    c.tls.cert_file = Some("c.pem".into());
    c.tls.key_file = Some("k.pem".into());
    c.pool.min_idle = c.pool.size;
    c.tenant.claims.insert("app.user_id".into(), "sub".into());
    c.tenant
        .claims
        .insert("request.jwt.claims".into(), "*".into());
    c.upstream.url = "postgres://app:embedded@db/app".into();
    c.validate().expect("valid");
}

#[test]
fn custom_setting_names() {
    for ok in ["app.current_tenant", "request.jwt.claims", "_a.b1", "A.B"] {
        assert!(is_custom_setting_name(ok), "{ok}");
    }
    for bad in [
        "", "tenant", "app.", ".x", "app..x", "app.1x", "1app.x", "app.x-y", "app.x y",
    ] {
        assert!(!is_custom_setting_name(bad), "{bad}");
    }
}

#[test]
fn env_overrides_scalars_nested_and_arrays() {
    let c = parse_env(
        MINIMAL,
        &[
            ("RLSGATE_POOL__SIZE", "4"),
            ("RLSGATE_LISTEN__ADDR", "127.0.0.1:7000"),
            ("RLSGATE_AUTH__JWT__ISSUER", "https://issuer.example"),
            ("RLSGATE_TLS__ALLOW_PLAINTEXT_AUTH", "true"),
            ("RLSGATE_POOL__MODE", "transaction"),
            ("RLSGATE_UPSTREAM__URL", "postgres://other@db:5433/other"),
        ],
    )
    .unwrap();
    assert_eq!(c.pool.size, 4);
    assert_eq!(c.listen.addr, "127.0.0.1:7000".parse().unwrap());
    assert_eq!(c.auth.jwt.issuer.as_deref(), Some("https://issuer.example"));
    assert!(c.tls.allow_plaintext_auth);
    assert_eq!(c.pool.mode, PoolMode::Transaction);
    assert_eq!(c.upstream.url, "postgres://other@db:5433/other");

    let text = MINIMAL.replace("secret_env = \"JWT_SECRET\"", "");
    let c = parse_env(
        &text,
        &[
            ("RLSGATE_AUTH__JWT__ALGORITHMS", r#"["RS256","ES256"]"#),
            ("RLSGATE_AUTH__JWT__JWKS_FILE", "/etc/rlsgate/jwks.json"),
            ("RLSGATE_AUTH__JWT__AUDIENCE", r#"["api", "admin"]"#),
        ],
    )
    .unwrap();
    assert_eq!(c.auth.jwt.algorithms, ["RS256", "ES256"]);
    assert_eq!(c.auth.jwt.audience, ["api", "admin"]);
    assert_eq!(
        c.auth.jwt.jwks_file,
        Some(PathBuf::from("/etc/rlsgate/jwks.json"))
    );
}

#[test]
fn env_overrides_keep_strings_strings() {
    let c = parse_env(
        MINIMAL,
        &[
            ("RLSGATE_TENANT__SETTING", "app.x"),
            ("RLSGATE_UPSTREAM__PASSWORD_ENV", "PGPASS"),
            ("RLSGATE_AUTH__JWT__ISSUER", "1234"),
            ("RLSGATE_AUTH__JWT__TENANT_CLAIM", "true"),
            ("RLSGATE_TENANT__CLAIMS__APP.USER_ID", "sub"),
            ("RLSGATE_POOL__ACQUIRE_TIMEOUT", "5m"),
        ],
    )
    .unwrap();
    assert_eq!(c.tenant.setting, "app.x");
    assert_eq!(c.upstream.password_env.as_deref(), Some("PGPASS"));
    assert_eq!(c.auth.jwt.issuer.as_deref(), Some("1234"));
    assert_eq!(c.auth.jwt.tenant_claim, "true");
    assert_eq!(
        c.tenant.claims.get("app.user_id").map(String::as_str),
        Some("sub")
    );
    assert_eq!(c.pool.acquire_timeout, Duration::from_secs(300));
}

#[test]
fn env_overrides_whole_tables_then_keys_inside() {
    let c = parse_env(
        MINIMAL,
        &[
            ("RLSGATE_TENANT__CLAIMS__APP.ROLE", "role"),
            ("RLSGATE_TENANT__CLAIMS", r#"{ "app.user_id" = "sub" }"#),
        ],
    )
    .unwrap();
    let claims: Vec<_> = c
        .tenant
        .claims
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(claims, [("app.role", "role"), ("app.user_id", "sub")]);
}

#[test]
fn env_vars_that_are_not_overrides_are_ignored() {
    let env = [
        ("RLSGATE_LOG", "debug"),
        ("RLSGATE_JWT_SECRET", "s3cret"),
        ("PATH", "/usr/bin"),
        ("POOL__SIZE", "0"),
    ];
    assert_eq!(parse_env(MINIMAL, &env).unwrap().pool.size, 10);
}

#[test]
fn bad_env_overrides_name_the_variable() {
    for (var, value) in [
        ("RLSGATE_POOL__SIZE", "many"),
        ("RLSGATE_POOL__SIZ", "3"),
        ("RLSGATE_NOPE__X", "1"),
        ("RLSGATE_POOL__ACQUIRE_TIMEOUT", "5"),
        ("RLSGATE_POOL____SIZE", "3"),
        ("RLSGATE_POOL__SIZE__X", "3"),
        ("RLSGATE_AUTH__JWT__ALGORITHMS", "HS256"),
    ] {
        let err = parse_env(MINIMAL, &[(var, value)]).expect_err(var);
        assert!(matches!(err, ConfigError::Env { .. }), "{var}: {err}");
        assert_eq!(key_of(err), var);
    }
    // Validation failures caused by an override still name the key.
    let err = parse_env(MINIMAL, &[("RLSGATE_POOL__SIZE", "0")]).unwrap_err();
    assert_eq!(key_of(err), "pool.size");
}

#[test]
fn durations_are_human_strings() {
    let text = format!(
        "{MINIMAL}\n[pool]\nacquire_timeout = \"30s\"\nidle_timeout = \"5m\"\nmax_lifetime = \"1h 30m\"\n"
    );
    let c = parse_env(&text, &[]).unwrap();
    assert_eq!(c.pool.acquire_timeout, Duration::from_secs(30));
    assert_eq!(c.pool.idle_timeout, Duration::from_secs(300));
    assert_eq!(c.pool.max_lifetime, Duration::from_secs(5400));
    let err = parse_env(&format!("{MINIMAL}\n[pool]\nidle_timeout = 5\n"), &[]).unwrap_err();
    assert!(err.to_string().contains("idle_timeout"), "{err}");
}

#[test]
fn load_reads_the_file() {
    let file = temp_file(MINIMAL);
    assert_eq!(Config::load(file.path()).unwrap().pool.size, 10);
    let err = Config::load(std::path::Path::new("/nonexistent/rlsgate.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }), "{err}");
    let bad = temp_file("[auth.jwt\n");
    let msg = Config::load(bad.path()).unwrap_err().to_string();
    assert!(msg.contains(&bad.path().display().to_string()), "{msg}");
}

#[test]
fn example_file_parses() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/rlsgate.example.toml");
    let text = std::fs::read_to_string(path).expect("example config");
    let env = HashMap::from([
        (
            "RLSGATE_JWT_SECRET".to_string(),
            "a-long-random-secret".to_string(),
        ),
        (
            "RLSGATE_UPSTREAM_PASSWORD".to_string(),
            "upstream-password".to_string(),
        ),
    ]);
    let c = Config::from_toml_with_env(&text, env.clone()).expect("example config is valid");
    assert_eq!(c.listen.addr, "127.0.0.1:6432".parse().unwrap());
    assert_eq!(c.tenant.setting, "app.current_tenant");
    let url = super::upstream::parse_url(&c.upstream.url).unwrap();
    assert_eq!(url.password, None, "the example must not embed a password");
    let secret = c.auth.jwt.secret_with(|k| env.get(k).cloned()).unwrap();
    assert_eq!(secret, Some(b"a-long-random-secret".to_vec()));
    let t = c.upstream.target_with(|k| env.get(k).cloned()).unwrap();
    assert_eq!(
        t.host,
        UpstreamHost::Tcp {
            host: "127.0.0.1".into(),
            port: 5432
        }
    );
    assert_eq!((t.user.as_str(), t.database.as_str()), ("app_rls", "app"));
    assert_eq!(t.password.as_deref(), Some("upstream-password"));
}

#[test]
fn sealed_defaults_to_whether_a_seal_secret_is_set() {
    let plain = minimal();
    assert_eq!(plain.tenant.sealed, None);
    assert!(!plain.tenant.is_sealed());
    assert_eq!(plain.tenant.seal_secret().unwrap(), None);

    let secret = temp_file("a-seal-secret-of-sufficient-length\n");
    let text = format!(
        "{MINIMAL}\n[tenant]\nseal_secret_file = {:?}\n",
        secret.path().display().to_string()
    );
    let sealed = parse_env(&text, &[]).unwrap();
    assert!(sealed.tenant.is_sealed());
    assert_eq!(
        sealed.tenant.seal_secret().unwrap().as_deref(),
        Some(&b"a-seal-secret-of-sufficient-length"[..])
    );

    let opted_out = parse_env(&format!("{text}sealed = false\n"), &[]).unwrap();
    assert!(!opted_out.tenant.is_sealed());
    assert_eq!(opted_out.tenant.seal_secret().unwrap(), None);

    let no_secret = parse_env(&format!("{MINIMAL}\n[tenant]\nsealed = true\n"), &[]).unwrap();
    assert_eq!(
        key_of(no_secret.tenant.seal_secret().unwrap_err()),
        "tenant.sealed"
    );
}
