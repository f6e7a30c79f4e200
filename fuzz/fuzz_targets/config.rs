//! The config loader: TOML text plus `RLSGATE_<SECTION>__<KEY>` overrides, deserialized
//! and validated (`Config::from_toml_with_env`, what `Config::load` runs), then the
//! pure steps that start-up takes from it: the upstream URL (`UpstreamConfig::target_with`)
//! and the JWT verifier when it needs no file.
//!
//! Input: TOML, optionally followed by a line `%%env` and `NAME=value` lines.
//! Invariants: loading is deterministic; an accepted config validates again; an
//! accepted upstream URL names a user and a database.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rlsgate::auth::JwtVerifier;
use rlsgate::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (toml, env) = match text.split_once("\n%%env\n") {
        Some((t, e)) => (t, e),
        None => (text, ""),
    };
    let env: Vec<(String, String)> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let first = Config::from_toml_with_env(toml, env.clone());
    let second = Config::from_toml_with_env(toml, env);
    let cfg = match (first, second) {
        (Ok(a), Ok(b)) => {
            assert_eq!(
                format!("{a:?}"),
                format!("{b:?}"),
                "loading is not deterministic"
            );
            a
        }
        (Err(a), Err(b)) => {
            assert_eq!(a.to_string(), b.to_string(), "loading is not deterministic");
            return;
        }
        _ => panic!("loading the same text twice differs"),
    };
    cfg.validate().expect("an accepted config fails validation");

    // Never read files the fuzzer named (a path may be /dev/zero).
    if cfg.upstream.password_file.is_none() {
        if let Ok(target) = cfg.upstream.target_with(|_| Some("pw".into())) {
            assert!(!target.user.is_empty(), "upstream target without a user");
            assert!(
                !target.database.is_empty(),
                "upstream target without a database"
            );
        }
    }
    let jwt = &cfg.auth.jwt;
    if jwt.secret_file.is_none()
        && jwt.public_key_file.is_none()
        && jwt.jwks_file.is_none()
        && jwt.jwks_url.is_none()
    {
        let _ = JwtVerifier::from_config(jwt);
    }
});
