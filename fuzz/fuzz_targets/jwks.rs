//! JWK set documents (`auth.jwt.jwks_file`; `jwks_url` downloads go through the same
//! `parse_jwks`), loaded through `JwtVerifier::from_config` as at start.
//!
//! Input: `[algorithm set][document...]`. Invariants: loading is deterministic (same
//! keys or the same error); a loaded set verifies the fixture tokens consistently, and
//! never an HS256 token (symmetric keys are skipped, HS cannot be pinned beside
//! asymmetric algorithms); the verifier's `Debug` never prints key material.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::sync::OnceLock;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use rlsgate::auth::JwtVerifier;
use rlsgate::config::JwtConfig;

const RSA_PRIVATE: &[u8] = include_bytes!("../../integration/fixtures/keys/rsa_private.pem");
const EC_PRIVATE: &[u8] = include_bytes!("../../integration/fixtures/keys/ec_private.pem");
const ED_PRIVATE: &[u8] = include_bytes!("../../integration/fixtures/keys/ed25519_private.pem");

const SETS: &[&[&str]] = &[
    &["RS256"],
    &["ES256"],
    &["EdDSA"],
    &["RS256", "ES256", "EdDSA"],
    &["ES384", "PS256"],
];

/// Tokens signed with the fixture keys, with and without the fixture `kid`s.
fn tokens() -> &'static Vec<String> {
    static T: OnceLock<Vec<String>> = OnceLock::new();
    T.get_or_init(|| {
        let claims = serde_json::json!({"tenant_id": "acme", "sub": "alice", "exp": 4102444800u64});
        let mut out = Vec::new();
        for (alg, key, kid) in [
            (
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
                "test-rsa",
            ),
            (
                Algorithm::ES256,
                EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(),
                "test-ec",
            ),
            (
                Algorithm::EdDSA,
                EncodingKey::from_ed_pem(ED_PRIVATE).unwrap(),
                "test-ed",
            ),
            (
                Algorithm::HS256,
                EncodingKey::from_secret(b"a-secret-of-at-least-32-bytes-long"),
                "oct",
            ),
        ] {
            for kid in [Some(kid), None] {
                let mut h = Header::new(alg);
                h.kid = kid.map(str::to_owned);
                out.push(jsonwebtoken::encode(&h, &claims, &key).unwrap());
            }
        }
        out
    })
}

fn load(algorithms: &[&str], path: &std::path::Path) -> Result<JwtVerifier, String> {
    JwtVerifier::from_config(&JwtConfig {
        algorithms: algorithms.iter().map(|a| (*a).to_owned()).collect(),
        jwks_file: Some(path.into()),
        ..JwtConfig::default()
    })
    .map_err(|e| e.to_string())
}

fuzz_target!(|data: &[u8]| {
    let [set, doc @ ..] = data else {
        return;
    };
    let algorithms = SETS[*set as usize % SETS.len()];
    let path = common::scratch_dir().join("jwks.json");
    std::fs::write(&path, doc).unwrap();
    let first = load(algorithms, &path);
    let second = load(algorithms, &path);
    match (&first, &second) {
        (Ok(a), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}")),
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("loading the same JWK set twice differs"),
    }
    let Ok(verifier) = first else {
        return;
    };
    let shown = format!("{verifier:?}");
    for field in ["\"n\"", "\"x\"", "\"y\"", "\"k\""] {
        // A key value would follow its field name; the Debug output names kids only.
        assert!(!shown.contains(field), "Debug shows key material: {shown}");
    }
    for (i, token) in tokens().iter().enumerate() {
        let got = verifier.verify(token, None);
        let again = second.as_ref().unwrap().verify(token, None);
        assert_eq!(got, again, "two loads of one set verify differently");
        if i >= 6 {
            assert!(got.is_err(), "an HS256 token verified against a JWK set");
        }
        if let Ok(id) = got {
            assert_eq!(id.tenant.as_str(), "acme");
        }
    }
});
