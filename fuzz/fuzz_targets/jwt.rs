//! JWT verification: header parsing, signature check and claim extraction.
//!
//! Input: `[mode][bytes...]`. To get past the signature the target signs what the
//! fuzzer wrote with fixed test keys (the HS256 secret below, the EC fixture key of
//! `integration/fixtures/keys`), so the mutations reach the claim checks:
//! - 0: the bytes are the token (the password as a client sends it);
//! - 1: `header 0x00 claims`, signed with HS256 (the header's `alg` is the fuzzer's);
//! - 2: claims under `{"alg":"HS256"}`; 3: claims under `{"alg":"ES256"}` (EC key);
//! - 4: a header over fixed valid claims, signed with HS256.
//!
//! Invariants: verification is deterministic; a token signed with one key family
//! never verifies under the other (no HS/ES confusion); an accepted token's identity is
//! exactly its signed claims (claims object, tenant from the tenant claim, `sub`, role,
//! `iss`, unexpired `exp`, the startup user when `match_user`); malformed shapes are
//! refused as malformed.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use rlsgate::auth::jwt::AuthError;
use rlsgate::auth::{JwtVerifier, TenantId};
use rlsgate::config::JwtConfig;
use serde_json::Value;

const SECRET_ENV: &str = "RLSGATE_FUZZ_JWT_SECRET";
const SECRET: &str = "fuzz-secret-fuzz-secret-fuzz-secret-0123";
const EC_PRIVATE: &[u8] = include_bytes!("../../integration/fixtures/keys/ec_private.pem");
const EC_PUBLIC: &[u8] = include_bytes!("../../integration/fixtures/keys/ec_public.pem");
const LEEWAY: u64 = 30;
const USER: &str = "alice";

struct Keys {
    /// HS256, tenant in `tenant_id`, role claim `role`.
    plain: JwtVerifier,
    /// HS256 with issuer, audience, `match_user` and a JSON-pointer tenant claim.
    strict: JwtVerifier,
    /// ES256 with the fixture public key.
    ec: JwtVerifier,
    hs_key: EncodingKey,
    ec_key: EncodingKey,
}

fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| {
        std::env::set_var(SECRET_ENV, SECRET);
        let hs = JwtConfig {
            secret_env: Some(SECRET_ENV.into()),
            leeway: Duration::from_secs(LEEWAY),
            ..JwtConfig::default()
        };
        let pem = common::scratch_dir().join("ec_public.pem");
        std::fs::write(&pem, EC_PUBLIC).unwrap();
        Keys {
            plain: JwtVerifier::from_config(&JwtConfig {
                role_claim: Some("role".into()),
                ..hs.clone()
            })
            .unwrap(),
            strict: JwtVerifier::from_config(&JwtConfig {
                issuer: Some("https://issuer.example".into()),
                audience: vec!["rlsgate".into()],
                match_user: true,
                tenant_claim: "/app/tenant".into(),
                ..hs
            })
            .unwrap(),
            ec: JwtVerifier::from_config(&JwtConfig {
                algorithms: vec!["ES256".into()],
                public_key_file: Some(pem),
                leeway: Duration::from_secs(LEEWAY),
                ..JwtConfig::default()
            })
            .unwrap(),
            hs_key: EncodingKey::from_secret(SECRET.as_bytes()),
            ec_key: EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(),
        }
    })
}

fn sign(header: &[u8], claims: &[u8], key: &EncodingKey, alg: Algorithm) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap();
    format!("{input}.{sig}")
}

#[derive(Clone, Copy, PartialEq)]
enum Signer {
    None,
    Hs,
    Ec,
}

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else {
        return;
    };
    let k = keys();
    const VALID: &[u8] = br#"{"tenant_id":"acme","sub":"alice","exp":4102444800}"#;
    let (token, claims, signer) = match mode % 5 {
        0 => match std::str::from_utf8(rest) {
            Ok(t) => (t.to_owned(), None, Signer::None),
            Err(_) => return,
        },
        1 => {
            let (h, c) = match rest.iter().position(|&b| b == 0) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &b"{}"[..]),
            };
            (sign(h, c, &k.hs_key, Algorithm::HS256), Some(c), Signer::Hs)
        }
        2 => (
            sign(
                br#"{"alg":"HS256","typ":"JWT"}"#,
                rest,
                &k.hs_key,
                Algorithm::HS256,
            ),
            Some(rest),
            Signer::Hs,
        ),
        3 => (
            sign(
                br#"{"alg":"ES256","typ":"JWT"}"#,
                rest,
                &k.ec_key,
                Algorithm::ES256,
            ),
            Some(rest),
            Signer::Ec,
        ),
        _ => (
            sign(rest, VALID, &k.hs_key, Algorithm::HS256),
            Some(VALID),
            Signer::Hs,
        ),
    };
    let user = if mode & 0x80 == 0 { Some(USER) } else { None };
    for (verifier, family, tenant_claim, strict) in [
        (&k.plain, Signer::Hs, "tenant_id", false),
        (&k.strict, Signer::Hs, "/app/tenant", true),
        (&k.ec, Signer::Ec, "tenant_id", false),
    ] {
        let got = verifier.verify(&token, user);
        assert_eq!(
            format!("{got:?}"),
            format!("{:?}", verifier.verify(&token, user)),
            "verification is not deterministic"
        );
        if signer == Signer::None {
            raw_shape(&token, &got);
        }
        let Ok(id) = got else {
            continue;
        };
        assert!(
            signer == Signer::None || signer == family,
            "a token signed with the other key family verified"
        );
        let claims: Value = match claims {
            Some(c) => serde_json::from_slice(c).expect("accepted claims that are not JSON"),
            None => id.claims.clone(),
        };
        assert_eq!(
            id.claims, claims,
            "identity claims differ from the signed claims"
        );
        let tenant = if let Some(pointer) = tenant_claim.strip_prefix('/') {
            claims.pointer(&format!("/{pointer}"))
        } else {
            claims.get(tenant_claim)
        };
        let tenant = TenantId::from_claim(tenant.expect("accepted without a tenant claim"))
            .expect("accepted an invalid tenant");
        assert_eq!(id.tenant, tenant);
        assert_eq!(id.sub.as_deref(), claims.get("sub").and_then(Value::as_str));
        assert_eq!(id.jti.as_deref(), claims.get("jti").and_then(Value::as_str));
        if let Some(role) = &id.role {
            assert_eq!(
                claims.get("role").and_then(Value::as_str),
                Some(role.as_str())
            );
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            id.exp + LEEWAY + 1 >= now,
            "accepted an expired token (exp {})",
            id.exp
        );
        if strict {
            assert_eq!(id.sub.as_deref(), Some(USER));
            assert_eq!(user, Some(USER));
            assert_eq!(
                claims.get("iss").and_then(Value::as_str),
                Some("https://issuer.example")
            );
        }
    }
});

/// A password that is not three dot-separated parts never gets past the shape check.
fn raw_shape(token: &str, got: &Result<rlsgate::auth::Identity, AuthError>) {
    if token.is_empty() {
        assert!(matches!(got, Err(AuthError::Empty)));
    } else if token.len() > 8192 {
        assert!(matches!(got, Err(AuthError::TooLarge)));
    } else if token.split('.').count() != 3 {
        assert!(matches!(got, Err(AuthError::Malformed)), "{got:?}");
    }
}
