//! Unit tests for HS* verification, header checks, claim checks and setup errors.
//! Asymmetric keys and JWKS are in `tests_keys.rs`.

use std::io::Write as _;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use tempfile::NamedTempFile;

use super::*;
use crate::config::JwtConfig;

pub(super) const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-secret";

pub(super) fn temp_file(bytes: &[u8]) -> NamedTempFile {
    let mut file = NamedTempFile::new().expect("temp file");
    file.write_all(bytes).expect("write temp file");
    file
}

pub(super) fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// An HS256 verifier with `SECRET` (from a file) and the default config, then `edit`.
fn hs_verifier(edit: impl FnOnce(&mut JwtConfig)) -> JwtVerifier {
    let file = temp_file(SECRET);
    let mut cfg = JwtConfig {
        secret_file: Some(file.path().into()),
        ..JwtConfig::default()
    };
    edit(&mut cfg);
    JwtVerifier::from_config(&cfg).expect("verifier")
}

fn hs_setup_error(edit: impl FnOnce(&mut JwtConfig)) -> String {
    let file = temp_file(SECRET);
    let mut cfg = JwtConfig {
        secret_file: Some(file.path().into()),
        ..JwtConfig::default()
    };
    edit(&mut cfg);
    JwtVerifier::from_config(&cfg)
        .expect_err("setup must fail")
        .to_string()
}

/// Mint options: tenant `acme` in `tenant_id`, sub `alice`, 5 minutes.
pub(super) fn opts(alg: Algorithm, key: MintKey) -> MintOptions {
    MintOptions {
        alg,
        key,
        tenant: Some(json!("acme")),
        tenant_claim: "tenant_id".into(),
        sub: Some("alice".into()),
        role: None,
        ttl: Duration::from_secs(300),
        extra_claims: Vec::new(),
        issuer: None,
        audience: None,
        kid: None,
    }
}

fn hs_token(edit: impl FnOnce(&mut MintOptions)) -> String {
    let mut o = opts(Algorithm::HS256, MintKey::Secret(SECRET.to_vec()));
    edit(&mut o);
    mint(&o).expect("mint")
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// A token with a hand-written header, HMAC-signed with `secret` as `alg`.
fn raw_token(header: Value, claims: Value, alg: Algorithm, secret: &[u8]) -> String {
    let message = format!("{}.{}", b64(&header), b64(&claims));
    let key = EncodingKey::from_secret(secret);
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, alg).expect("sign");
    format!("{message}.{signature}")
}

fn fail(verifier: &JwtVerifier, token: &str) -> AuthError {
    verifier
        .verify(token, None)
        .expect_err("token must be refused")
}

#[test]
fn hs256_valid_token() {
    let v = hs_verifier(|c| c.role_claim = Some("role".into()));
    let token = hs_token(|o| {
        o.role = Some("reader".into());
        o.extra_claims = vec![
            ("jti".into(), json!("j-1")),
            ("/meta/plan".into(), json!("pro")),
        ];
    });
    let id = v.verify(&token, Some("anyone")).expect("valid");
    assert_eq!(id.tenant.as_str(), "acme");
    assert_eq!(id.tenant.to_string(), "acme");
    assert_eq!(id.sub.as_deref(), Some("alice"));
    assert_eq!(id.role.as_deref(), Some("reader"));
    assert_eq!(id.jti.as_deref(), Some("j-1"));
    assert!(id.exp >= now() + 290 && id.exp <= now() + 300);
    assert_eq!(id.claim("sub"), Some(&json!("alice")));
    assert_eq!(id.claim("/meta/plan"), Some(&json!("pro")));
    assert_eq!(id.claim("/meta/missing"), None);
    assert_eq!(id.claims["tenant_id"], json!("acme"));
}

#[test]
fn expired_and_leeway() {
    let v = hs_verifier(|c| c.leeway = Duration::from_secs(30));
    let old = hs_token(|o| o.extra_claims = vec![("exp".into(), json!(now() - 3600))]);
    let err = fail(&v, &old);
    assert_eq!(err, AuthError::Expired);
    assert_eq!(err.to_string(), "token expired");
    assert_eq!(err.kind(), "expired");
    let within = hs_token(|o| o.extra_claims = vec![("exp".into(), json!(now() - 10))]);
    v.verify(&within, None).expect("within leeway");
}

#[test]
fn not_before_is_honoured() {
    let v = hs_verifier(|c| c.leeway = Duration::from_secs(30));
    let future = hs_token(|o| o.extra_claims = vec![("nbf".into(), json!(now() + 3600))]);
    let err = fail(&v, &future);
    assert_eq!(err.to_string(), "token not yet valid");
    let within = hs_token(|o| o.extra_claims = vec![("nbf".into(), json!(now() + 10))]);
    v.verify(&within, None).expect("nbf within leeway");
    let bad = hs_token(|o| o.extra_claims = vec![("nbf".into(), json!("soon"))]);
    assert_eq!(
        fail(&v, &bad).to_string(),
        "claim nbf must be a NumericDate"
    );
}

#[test]
fn missing_exp() {
    let v = hs_verifier(|_| {});
    let token = hs_token(|o| o.extra_claims = vec![("exp".into(), Value::Null)]);
    assert_eq!(fail(&v, &token).to_string(), "missing claim exp");
}

#[test]
fn bad_signature() {
    let v = hs_verifier(|_| {});
    let other = hs_token(|o| o.key = MintKey::Secret(b"another-secret-another-secret-xx".to_vec()));
    let err = fail(&v, &other);
    assert_eq!(err.to_string(), "signature invalid");
    assert_eq!(err.kind(), "signature");
    // Payload swapped for one with another tenant, signature kept.
    let good = hs_token(|_| {});
    let forged_claims = json!({"tenant_id": "other", "exp": now() + 300});
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], b64(&forged_claims), parts[2]);
    assert_eq!(fail(&v, &forged), AuthError::SignatureInvalid);
}

#[test]
fn algorithm_not_in_pinned_list() {
    let v = hs_verifier(|_| {});
    let token = hs_token(|o| o.alg = Algorithm::HS384);
    let err = fail(&v, &token);
    assert_eq!(err.to_string(), "algorithm HS384 not allowed");
    assert_eq!(err.kind(), "alg_not_allowed");
    let unknown = raw_token(json!({"alg": "XS999"}), json!({}), Algorithm::HS256, SECRET);
    assert_eq!(fail(&v, &unknown), AuthError::UnsupportedAlgorithm);
}

#[test]
fn alg_none_is_refused() {
    let v = hs_verifier(|_| {});
    let claims = json!({"tenant_id": "acme", "sub": "alice", "exp": now() + 300});
    for alg in ["none", "None", "NONE"] {
        let token = format!(
            "{}.{}.",
            b64(&json!({"alg": alg, "typ": "JWT"})),
            b64(&claims)
        );
        let err = fail(&v, &token);
        assert_eq!(err.to_string(), "token uses alg none");
        assert_eq!(err.kind(), "alg_none");
    }
    assert!(hs_setup_error(|c| c.algorithms = vec!["none".into()]).contains("never accepted"));
}

#[test]
fn critical_header_is_refused() {
    let v = hs_verifier(|_| {});
    let claims = json!({"tenant_id": "acme", "exp": now() + 300});
    let header = json!({"alg": "HS256", "crit": ["b64"], "b64": false});
    let token = raw_token(header, claims, Algorithm::HS256, SECRET);
    assert_eq!(fail(&v, &token), AuthError::UnsupportedCrit);
}

#[test]
fn malformed_tokens() {
    let v = hs_verifier(|_| {});
    assert_eq!(fail(&v, ""), AuthError::Empty);
    assert_eq!(fail(&v, "").to_string(), "no password supplied");
    let good = hs_token(|_| {});
    let not_json = format!("{}.e30.sig", URL_SAFE_NO_PAD.encode("nope"));
    let payload_not_json = format!("{}.{}", good.split('.').next().unwrap_or(""), "bm9wZQ.sig");
    for token in [
        "secret-password",
        "a.b",
        "a.b.c.d",
        "!!!.e30.sig",
        not_json.as_str(),
        payload_not_json.as_str(),
        &format!("{good}.extra"),
    ] {
        let err = fail(&v, token);
        assert!(
            matches!(err, AuthError::Malformed | AuthError::SignatureInvalid),
            "{token}: {err:?}"
        );
    }
    assert_eq!(fail(&v, "secret-password").to_string(), "malformed token");
}

#[test]
fn oversized_token_fails_before_parsing() {
    let v = hs_verifier(|c| c.max_token_bytes = 64);
    let token = hs_token(|_| {});
    assert!(token.len() > 64);
    assert_eq!(fail(&v, &token).to_string(), "token too large");
    // Garbage that is too large is refused by size, not by parsing.
    assert_eq!(fail(&v, &"x".repeat(65)), AuthError::TooLarge);
    let v = hs_verifier(|_| {});
    let huge = hs_token(|o| o.extra_claims = vec![("pad".into(), json!("p".repeat(9000)))]);
    assert_eq!(fail(&v, &huge).kind(), "too_large");
}

#[test]
fn issuer_checked_when_configured() {
    let v = hs_verifier(|c| c.issuer = Some("https://idp.example".into()));
    let good = hs_token(|o| o.issuer = Some("https://idp.example".into()));
    v.verify(&good, None).expect("right issuer");
    let wrong = hs_token(|o| o.issuer = Some("https://evil.example".into()));
    assert_eq!(fail(&v, &wrong).to_string(), "wrong issuer");
    let missing = hs_token(|_| {});
    assert_eq!(fail(&v, &missing).to_string(), "missing claim iss");
    let array = hs_token(|o| {
        o.extra_claims = vec![(
            "iss".into(),
            json!(["https://evil.example", "https://idp.example"]),
        )];
    });
    assert_eq!(fail(&v, &array), AuthError::WrongIssuer);
    // Not configured: any issuer is accepted.
    hs_verifier(|_| {})
        .verify(&wrong, None)
        .expect("issuer not checked");
}

#[test]
fn audience_checked_when_configured() {
    let v = hs_verifier(|c| c.audience = vec!["app".into(), "psql".into()]);
    v.verify(&hs_token(|o| o.audience = Some("psql".into())), None)
        .expect("one of the list");
    let list = hs_token(|o| o.extra_claims = vec![("aud".into(), json!(["other", "app"]))]);
    v.verify(&list, None).expect("list containing one of ours");
    let wrong = hs_token(|o| o.audience = Some("billing".into()));
    assert_eq!(fail(&v, &wrong).to_string(), "wrong audience");
    assert_eq!(fail(&v, &hs_token(|_| {})).to_string(), "missing claim aud");
    // Not configured: tokens without aud pass, tokens naming an audience do not.
    let unconfigured = hs_verifier(|_| {});
    unconfigured
        .verify(&hs_token(|_| {}), None)
        .expect("no aud");
    let err = fail(&unconfigured, &wrong);
    assert_eq!(err, AuthError::UnexpectedAudience);
    assert_eq!(err.kind(), "audience");
}

#[test]
fn tenant_claim_rules() {
    let v = hs_verifier(|_| {});
    let with = |tenant: Value| hs_token(|o| o.tenant = Some(tenant));
    assert_eq!(
        v.verify(&with(json!(42)), None)
            .expect("int")
            .tenant
            .as_str(),
        "42"
    );
    assert_eq!(
        v.verify(&with(json!(-7)), None)
            .expect("neg")
            .tenant
            .as_str(),
        "-7"
    );
    let max = "t".repeat(MAX_TENANT_BYTES);
    assert_eq!(
        v.verify(&with(json!(max)), None)
            .expect("256 bytes")
            .tenant
            .as_str(),
        max
    );

    let missing = hs_token(|o| o.tenant = None);
    assert_eq!(fail(&v, &missing).to_string(), "missing claim tenant_id");
    assert_eq!(
        fail(&v, &with(Value::Null)).to_string(),
        "missing claim tenant_id"
    );
    let wrong_type = "claim tenant_id must be a string or integer";
    for bad in [json!(true), json!(1.5), json!(["a"]), json!({"id": 1})] {
        assert_eq!(fail(&v, &with(bad)).to_string(), wrong_type);
    }
    assert_eq!(
        fail(&v, &with(json!(""))).to_string(),
        "claim tenant_id must not be empty"
    );
    let long = json!("t".repeat(MAX_TENANT_BYTES + 1));
    assert_eq!(
        fail(&v, &with(long)).to_string(),
        "claim tenant_id must be at most 256 bytes"
    );
    let nul = fail(&v, &with(json!("a\u{0}b")));
    assert_eq!(nul.kind(), "tenant");
    assert_eq!(
        nul.to_string(),
        "claim tenant_id must not contain a NUL byte"
    );
}

#[test]
fn tenant_claim_as_json_pointer() {
    let v = hs_verifier(|c| c.tenant_claim = "/app_metadata/tenant_id".into());
    let token = hs_token(|o| {
        o.tenant_claim = "/app_metadata/tenant_id".into();
        o.tenant = Some(json!(7));
    });
    let id = v.verify(&token, None).expect("nested tenant");
    assert_eq!(id.tenant.as_str(), "7");
    assert_eq!(id.claims["app_metadata"]["tenant_id"], json!(7));
    let flat = hs_token(|_| {});
    assert_eq!(
        fail(&v, &flat).to_string(),
        "missing claim /app_metadata/tenant_id"
    );
}

#[test]
fn role_claim_rules() {
    let v = hs_verifier(|c| c.role_claim = Some("/app_metadata/role".into()));
    let token = hs_token(|o| o.extra_claims = vec![("/app_metadata/role".into(), json!("admin"))]);
    assert_eq!(
        v.verify(&token, None).expect("role").role.as_deref(),
        Some("admin")
    );
    assert_eq!(
        v.verify(&hs_token(|_| {}), None).expect("no role").role,
        None
    );
    let bad = hs_token(|o| o.extra_claims = vec![("/app_metadata/role".into(), json!(5))]);
    assert_eq!(
        fail(&v, &bad).to_string(),
        "claim /app_metadata/role is not a valid role name"
    );
    // Without role_claim the `role` claim is not taken.
    let plain = hs_verifier(|_| {});
    assert_eq!(
        plain
            .verify(&hs_token(|o| o.role = Some("x".into())), None)
            .expect("ok")
            .role,
        None
    );
}

#[test]
fn sub_and_jti_must_be_strings() {
    let v = hs_verifier(|_| {});
    let token = hs_token(|o| o.extra_claims = vec![("sub".into(), json!(12))]);
    assert_eq!(fail(&v, &token).to_string(), "claim sub must be a string");
    let token = hs_token(|o| o.extra_claims = vec![("jti".into(), json!({}))]);
    assert_eq!(fail(&v, &token).to_string(), "claim jti must be a string");
}

#[test]
fn match_user_requires_subject() {
    let v = hs_verifier(|c| c.match_user = true);
    let token = hs_token(|_| {});
    v.verify(&token, Some("alice")).expect("user = sub");
    let msg = "user does not match token subject";
    assert_eq!(
        v.verify(&token, Some("bob"))
            .expect_err("other user")
            .to_string(),
        msg
    );
    assert_eq!(
        v.verify(&token, None).expect_err("no user").to_string(),
        msg
    );
    let no_sub = hs_token(|o| o.sub = None);
    assert_eq!(
        v.verify(&no_sub, Some("alice")).expect_err("no sub").kind(),
        "user_mismatch"
    );
    // Without match_user the startup user is not compared.
    hs_verifier(|_| {})
        .verify(&token, Some("bob"))
        .expect("not matched");
}

#[test]
fn errors_never_contain_the_token() {
    let v = hs_verifier(|c| c.match_user = true);
    let tokens = [
        hs_token(|o| o.extra_claims = vec![("exp".into(), json!(now() - 3600))]),
        hs_token(|o| o.tenant = Some(json!(true))),
        hs_token(|o| o.key = MintKey::Secret(b"another-secret-another-secret-xx".to_vec())),
        hs_token(|o| o.alg = Algorithm::HS512),
        hs_token(|_| {}),
    ];
    for token in &tokens {
        let err = v.verify(token, Some("mallory")).expect_err("refused");
        for part in token.split('.').filter(|p| p.len() > 8) {
            assert!(!err.to_string().contains(part), "{err}");
            assert!(!format!("{err:?}").contains(part), "{err:?}");
        }
    }
    assert!(
        !format!("{v:?}").contains("0123456789abcdef"),
        "Debug must not show the secret"
    );
}

#[test]
fn secret_file_strips_trailing_newline() {
    let file = temp_file(&[SECRET, b"\n"].concat());
    let cfg = JwtConfig {
        secret_file: Some(file.path().into()),
        ..JwtConfig::default()
    };
    let v = JwtVerifier::from_config(&cfg).expect("verifier");
    v.verify(&hs_token(|_| {}), None).expect("newline stripped");
}

#[test]
fn setup_errors_name_the_key() {
    type Edit = Box<dyn FnOnce(&mut JwtConfig)>;
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|c| c.algorithms.clear()), "auth.jwt.algorithms"),
        (
            Box::new(|c| c.algorithms = vec!["XS256".into()]),
            "unknown algorithm \"XS256\"",
        ),
        (
            Box::new(|c| c.algorithms = vec!["HS256".into(), "RS256".into()]),
            "cannot be mixed",
        ),
        (Box::new(|c| c.secret_file = None), "auth.jwt.secret_env"),
        (
            Box::new(|c| c.secret_env = Some("RLSGATE_TEST_UNSET_VAR_4711".into())),
            "not both",
        ),
        (
            Box::new(|c| c.public_key_file = Some("/x.pem".into())),
            "not public_key_file",
        ),
        (
            Box::new(|c| c.tenant_claim = String::new()),
            "auth.jwt.tenant_claim",
        ),
        (
            Box::new(|c| c.role_claim = Some("/".into())),
            "auth.jwt.role_claim",
        ),
        (
            Box::new(|c| c.max_token_bytes = 0),
            "auth.jwt.max_token_bytes",
        ),
        (
            Box::new(|c| c.leeway = Duration::from_secs(7200)),
            "auth.jwt.leeway",
        ),
        (
            Box::new(|c| c.audience = vec![String::new()]),
            "auth.jwt.audience",
        ),
        (
            Box::new(|c| c.secret_file = Some("/nonexistent/secret".into())),
            "cannot read",
        ),
    ];
    for (edit, expected) in cases {
        let msg = hs_setup_error(edit);
        assert!(
            msg.contains(expected),
            "{msg:?} should contain {expected:?}"
        );
    }
    let short = temp_file(b"short");
    let cfg = JwtConfig {
        secret_file: Some(short.path().into()),
        ..JwtConfig::default()
    };
    let msg = JwtVerifier::from_config(&cfg)
        .expect_err("short secret")
        .to_string();
    assert!(
        msg.contains("auth.jwt.secret_file") && msg.contains("at least 32"),
        "{msg}"
    );
    let cfg = JwtConfig {
        secret_env: Some("RLSGATE_TEST_UNSET_VAR_4711".into()),
        ..JwtConfig::default()
    };
    let msg = JwtVerifier::from_config(&cfg)
        .expect_err("unset env")
        .to_string();
    assert!(msg.contains("auth.jwt.secret_env") && msg.contains("RLSGATE_TEST_UNSET_VAR_4711"));
}

#[test]
fn tenant_id_and_error_labels() {
    assert_eq!("t1".parse::<TenantId>().expect("valid").as_str(), "t1");
    assert_eq!(TenantId::new(""), Err(TenantIdError::Empty));
    assert_eq!(
        TenantId::from_claim(&json!(u64::MAX))
            .expect("u64")
            .as_str(),
        u64::MAX.to_string()
    );
    assert_eq!(
        TenantId::from_claim(&json!(false)),
        Err(TenantIdError::WrongType)
    );
    assert_eq!(AuthError::Expired.sqlstate(), "28P01");
    assert_eq!(
        AuthError::AlgorithmNotAllowed(Algorithm::EdDSA).to_string(),
        "algorithm EdDSA not allowed"
    );
    assert_eq!(
        AuthError::MissingClaim("tenant_id".into()).kind(),
        "missing_claim"
    );
}

#[test]
fn mint_builds_nested_claims_and_rejects_conflicts() {
    let mut o = opts(Algorithm::HS256, MintKey::Secret(SECRET.to_vec()));
    o.tenant_claim = "/a/b~1c/d".into();
    o.extra_claims = vec![("/a/x".into(), json!(1))];
    let token = mint(&o).expect("mint");
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(&token).expect("claims");
    assert_eq!(claims["a"]["b/c"]["d"], json!("acme"));
    assert_eq!(claims["a"]["x"], json!(1));
    assert!(claims["iat"].is_u64());
    o.extra_claims = vec![("/a/b~1c/d/e".into(), json!(1))];
    assert!(matches!(mint(&o), Err(MintError::ClaimPath(_))));
    let mut o = opts(Algorithm::RS256, MintKey::Secret(SECRET.to_vec()));
    assert!(matches!(mint(&o), Err(MintError::Key { .. })));
    o.key = MintKey::PemPrivateKey(b"not a pem".to_vec());
    assert!(matches!(mint(&o), Err(MintError::Key { .. })));
}
