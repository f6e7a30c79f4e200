//! Unit tests for asymmetric keys: PEM public keys of each type, JWKS selection by
//! `kid`, and HS/RS key confusion.

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey};
use serde_json::json;

use super::tests::{now, opts, temp_file, SECRET};
use super::*;
use crate::config::JwtConfig;

const RSA_PRIVATE: &[u8] = include_bytes!("../../../integration/fixtures/keys/rsa_private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../../../integration/fixtures/keys/rsa_public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("../../../integration/fixtures/keys/ec_private.pem");
const EC_PUBLIC: &[u8] = include_bytes!("../../../integration/fixtures/keys/ec_public.pem");
const ED_PRIVATE: &[u8] = include_bytes!("../../../integration/fixtures/keys/ed25519_private.pem");
const ED_PUBLIC: &[u8] = include_bytes!("../../../integration/fixtures/keys/ed25519_public.pem");
const JWKS: &[u8] = include_bytes!("../../../integration/fixtures/keys/jwks.json");

fn config(algorithms: &[&str]) -> JwtConfig {
    JwtConfig {
        algorithms: algorithms.iter().map(|a| a.to_string()).collect(),
        ..JwtConfig::default()
    }
}

fn pem_verifier(algorithms: &[&str], public_pem: &[u8]) -> Result<JwtVerifier, JwtSetupError> {
    let file = temp_file(public_pem);
    let cfg = JwtConfig {
        public_key_file: Some(file.path().into()),
        ..config(algorithms)
    };
    JwtVerifier::from_config(&cfg)
}

fn jwks_verifier(algorithms: &[&str], jwks: &[u8]) -> Result<JwtVerifier, JwtSetupError> {
    let file = temp_file(jwks);
    let cfg = JwtConfig {
        jwks_file: Some(file.path().into()),
        ..config(algorithms)
    };
    JwtVerifier::from_config(&cfg)
}

fn signed(alg: Algorithm, private_pem: &[u8], kid: Option<&str>) -> String {
    let mut o = opts(alg, MintKey::PemPrivateKey(private_pem.to_vec()));
    o.kid = kid.map(Into::into);
    mint(&o).expect("mint")
}

fn round_trip(alg: Algorithm, private_pem: &[u8], public_pem: &[u8]) {
    let name = format!("{alg:?}");
    let v = pem_verifier(&[name.as_str()], public_pem).expect("verifier");
    let id = v
        .verify(&signed(alg, private_pem, None), None)
        .expect("round trip");
    assert_eq!(
        (id.tenant.as_str(), id.sub.as_deref()),
        ("acme", Some("alice"))
    );
    // Same claims signed by another key of the same type, or a tampered payload: refused.
    let other = match alg.family() {
        AlgorithmFamily::Ec => Some(&rcgen::PKCS_ECDSA_P256_SHA256),
        AlgorithmFamily::Ed => Some(&rcgen::PKCS_ED25519),
        _ => None,
    };
    if let Some(other) = other.map(|a| rcgen::KeyPair::generate_for(a).expect("key")) {
        let forged = signed(alg, other.serialize_pem().as_bytes(), None);
        assert_eq!(v.verify(&forged, None), Err(AuthError::SignatureInvalid));
    }
    let token = signed(alg, private_pem, None);
    let parts: Vec<&str> = token.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], parts[0], parts[2]);
    assert_eq!(v.verify(&tampered, None), Err(AuthError::SignatureInvalid));
}

#[test]
fn rs256_round_trip() {
    round_trip(Algorithm::RS256, RSA_PRIVATE, RSA_PUBLIC);
}

#[test]
fn ps256_round_trip() {
    round_trip(Algorithm::PS256, RSA_PRIVATE, RSA_PUBLIC);
}

#[test]
fn es256_round_trip() {
    round_trip(Algorithm::ES256, EC_PRIVATE, EC_PUBLIC);
    let fresh = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let (private, public) = (fresh.serialize_pem(), fresh.public_key_pem());
    round_trip(Algorithm::ES256, private.as_bytes(), public.as_bytes());
}

#[test]
fn eddsa_round_trip() {
    round_trip(Algorithm::EdDSA, ED_PRIVATE, ED_PUBLIC);
    let fresh = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
    let (private, public) = (fresh.serialize_pem(), fresh.public_key_pem());
    round_trip(Algorithm::EdDSA, private.as_bytes(), public.as_bytes());
}

#[test]
fn rsa_key_accepts_several_rsa_algorithms_only_if_pinned() {
    let v = pem_verifier(&["RS256", "PS256"], RSA_PUBLIC).expect("verifier");
    v.verify(&signed(Algorithm::RS256, RSA_PRIVATE, None), None)
        .expect("RS256");
    v.verify(&signed(Algorithm::PS256, RSA_PRIVATE, None), None)
        .expect("PS256");
    let err = v
        .verify(&signed(Algorithm::RS512, RSA_PRIVATE, None), None)
        .expect_err("RS512");
    assert_eq!(err.to_string(), "algorithm RS512 not allowed");
}

#[test]
fn hs256_signed_with_public_key_is_refused() {
    // Classic confusion: the attacker signs HS256 using the (public) PEM bytes as secret.
    let v = pem_verifier(&["RS256"], RSA_PUBLIC).expect("verifier");
    let mut o = opts(Algorithm::HS256, MintKey::Secret(RSA_PUBLIC.to_vec()));
    o.kid = Some("test-rsa".into());
    let token = mint(&o).expect("mint");
    let err = v.verify(&token, None).expect_err("confusion");
    assert_eq!(err.to_string(), "algorithm HS256 not allowed");
    let jwks = jwks_verifier(&["RS256"], JWKS).expect("jwks verifier");
    assert_eq!(
        jwks.verify(&token, None),
        Err(AuthError::AlgorithmNotAllowed(Algorithm::HS256))
    );
}

#[test]
fn pem_key_type_must_fit_algorithms() {
    let msg = pem_verifier(&["ES256"], RSA_PUBLIC)
        .expect_err("rsa for es256")
        .to_string();
    assert!(
        msg.contains("auth.jwt.public_key_file") && msg.contains("RSA key"),
        "{msg}"
    );
    let msg = pem_verifier(&["ES384"], EC_PUBLIC)
        .expect_err("p256 for es384")
        .to_string();
    assert!(msg.contains("ES384"), "{msg}");
    let msg = pem_verifier(&["RS256", "ES256"], RSA_PUBLIC)
        .expect_err("mixed")
        .to_string();
    assert!(msg.contains("one key type"), "{msg}");
    let msg = pem_verifier(&["RS256"], RSA_PRIVATE)
        .expect_err("private key")
        .to_string();
    assert!(msg.contains("private key"), "{msg}");
    let msg = pem_verifier(&["RS256"], b"garbage")
        .expect_err("garbage")
        .to_string();
    assert!(msg.contains("not a PEM public key"), "{msg}");
    let file = temp_file(SECRET);
    let cfg = JwtConfig {
        public_key_file: Some("/x.pem".into()),
        secret_file: Some(file.path().into()),
        ..config(&["RS256"])
    };
    let msg = JwtVerifier::from_config(&cfg)
        .expect_err("secret with RS256")
        .to_string();
    assert!(msg.contains("asymmetric"), "{msg}");
    let msg = JwtVerifier::from_config(&config(&["RS256"]))
        .expect_err("no key")
        .to_string();
    assert!(
        msg.contains("public_key_file, jwks_file or jwks_url"),
        "{msg}"
    );
}

#[test]
fn jwks_selects_key_by_kid() {
    let v = jwks_verifier(&["RS256"], JWKS).expect("verifier");
    let id = v.verify(
        &signed(Algorithm::RS256, RSA_PRIVATE, Some("test-rsa")),
        None,
    );
    assert_eq!(id.expect("kid test-rsa").tenant.as_str(), "acme");
    // A single key is used for tokens without kid.
    v.verify(&signed(Algorithm::RS256, RSA_PRIVATE, None), None)
        .expect("no kid, one key");
    let err = v.verify(
        &signed(Algorithm::RS256, RSA_PRIVATE, Some("rotated")),
        None,
    );
    let err = err.expect_err("unknown kid");
    assert_eq!(err.to_string(), "unknown key id");
    assert_eq!(err.kind(), "unknown_kid");
}

/// The fixture JWKS plus the EC fixture key as `test-ec` (and extra JWKs).
fn mixed_jwks(extra: Vec<serde_json::Value>) -> Vec<u8> {
    let mut set: JwkSet = serde_json::from_slice(JWKS).expect("fixture jwks");
    let ec = EncodingKey::from_ec_pem(EC_PRIVATE).expect("ec key");
    let mut jwk = Jwk::from_encoding_key(&ec, Algorithm::ES256).expect("ec jwk");
    jwk.common.key_id = Some("test-ec".into());
    set.keys.push(jwk);
    let mut value = serde_json::to_value(&set).expect("jwks json");
    if let Some(keys) = value["keys"].as_array_mut() {
        keys.extend(extra);
    }
    value.to_string().into_bytes()
}

#[test]
fn jwks_with_mixed_key_types() {
    let v = jwks_verifier(&["RS256", "PS256", "ES256"], &mixed_jwks(vec![])).expect("verifier");
    v.verify(
        &signed(Algorithm::RS256, RSA_PRIVATE, Some("test-rsa")),
        None,
    )
    .expect("rsa");
    v.verify(&signed(Algorithm::ES256, EC_PRIVATE, Some("test-ec")), None)
        .expect("ec");
    let no_kid = v.verify(&signed(Algorithm::ES256, EC_PRIVATE, None), None);
    assert_eq!(
        no_kid.expect_err("ambiguous").to_string(),
        "token has no key id"
    );
    // EC token pointing at the RSA key, and PS256 on a key whose JWK says RS256.
    let wrong_key = v.verify(
        &signed(Algorithm::ES256, EC_PRIVATE, Some("test-rsa")),
        None,
    );
    assert_eq!(wrong_key, Err(AuthError::KeyMismatch));
    let wrong_alg = v.verify(
        &signed(Algorithm::PS256, RSA_PRIVATE, Some("test-rsa")),
        None,
    );
    assert_eq!(wrong_alg, Err(AuthError::KeyMismatch));
    // The alg is pinned even when the JWKS has a key for it.
    let only_rsa = jwks_verifier(&["RS256"], &mixed_jwks(vec![])).expect("verifier");
    let err = only_rsa.verify(&signed(Algorithm::ES256, EC_PRIVATE, Some("test-ec")), None);
    assert_eq!(err, Err(AuthError::AlgorithmNotAllowed(Algorithm::ES256)));
}

#[test]
fn jwks_skips_symmetric_and_encryption_keys() {
    let oct =
        json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"});
    let enc = json!({"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"});
    let v = jwks_verifier(&["RS256"], &mixed_jwks(vec![oct, enc])).expect("verifier");
    let err = v.verify(&signed(Algorithm::RS256, RSA_PRIVATE, Some("hmac")), None);
    assert_eq!(err, Err(AuthError::UnknownKeyId));
    let err = v.verify(&signed(Algorithm::RS256, RSA_PRIVATE, Some("enc")), None);
    assert_eq!(err, Err(AuthError::UnknownKeyId));
}

#[test]
fn jwks_setup_errors() {
    let dup = serde_json::from_slice::<serde_json::Value>(JWKS).expect("json")["keys"][0].clone();
    let msg = jwks_verifier(&["RS256"], &mixed_jwks(vec![dup]))
        .expect_err("dup")
        .to_string();
    assert!(
        msg.contains("auth.jwt.jwks_file") && msg.contains("two keys"),
        "{msg}"
    );
    let msg = jwks_verifier(&["EdDSA"], JWKS)
        .expect_err("no ed key")
        .to_string();
    assert!(msg.contains("no signing key"), "{msg}");
    let msg = jwks_verifier(&["RS256"], b"{}")
        .expect_err("not a set")
        .to_string();
    assert!(msg.contains("not a JWK set"), "{msg}");
    let bad_ec = json!({"kty": "EC", "kid": "bad", "crv": "P-384", "x": "AQAB", "y": "AQAB"});
    let msg = jwks_verifier(&["ES256"], &mixed_jwks(vec![bad_ec]))
        .expect_err("bad")
        .to_string();
    assert!(msg.contains("key bad"), "{msg}");
}

#[test]
fn asymmetric_tokens_still_get_claim_checks() {
    let file = temp_file(EC_PUBLIC);
    let cfg = JwtConfig {
        public_key_file: Some(file.path().into()),
        issuer: Some("https://idp.example".into()),
        match_user: true,
        ..config(&["ES256"])
    };
    let v = JwtVerifier::from_config(&cfg).expect("verifier");
    let mut o = opts(
        Algorithm::ES256,
        MintKey::PemPrivateKey(EC_PRIVATE.to_vec()),
    );
    o.issuer = Some("https://idp.example".into());
    v.verify(&mint(&o).expect("mint"), Some("alice"))
        .expect("valid");
    o.extra_claims = vec![("exp".into(), json!(now() - 3600))];
    assert_eq!(
        v.verify(&mint(&o).expect("mint"), Some("alice")),
        Err(AuthError::Expired)
    );
    o.extra_claims.clear();
    o.issuer = None;
    let err = v
        .verify(&mint(&o).expect("mint"), Some("alice"))
        .expect_err("no iss");
    assert_eq!(err.to_string(), "missing claim iss");
}

#[test]
fn jwks_url_must_be_https_or_loopback_http() {
    let cfg = |url: &str| JwtConfig {
        algorithms: vec!["RS256".into()],
        jwks_url: Some(url.into()),
        ..JwtConfig::default()
    };
    for ok in [
        "https://idp.example.com/.well-known/jwks.json",
        "http://127.0.0.1:8080/jwks.json",
        "http://localhost/jwks.json",
        "http://[::1]:9/jwks.json",
    ] {
        crate::wire::tls::install_default_provider();
        let v = JwtVerifier::from_config(&cfg(ok)).unwrap_or_else(|e| panic!("{ok}: {e}"));
        // Nothing is fetched before the first login.
        assert!(format!("{v:?}").contains("kids: None"), "{v:?}");
    }
    for bad in [
        "http://idp.example.com/jwks.json",
        "ftp://127.0.0.1/jwks.json",
        "not a url",
    ] {
        let err = JwtVerifier::from_config(&cfg(bad)).unwrap_err().to_string();
        assert!(err.starts_with("auth.jwt.jwks_url:"), "{bad}: {err}");
    }
    let mut both = cfg("https://idp.example.com/jwks.json");
    both.jwks_file = Some("jwks.json".into());
    assert!(JwtVerifier::from_config(&both).is_err());
}
