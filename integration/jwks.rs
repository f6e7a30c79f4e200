//! `auth.jwt.jwks_url`: the JWK set comes from an HTTP endpoint (here a loopback server
//! standing in for an identity provider). Keys rotate in without a restart, unknown
//! `kid`s trigger at most one fetch per `jwks_min_interval`, and a provider that is
//! down gives a clear refusal without a request flood.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use rlsgate::auth::jwt::{mint, MintKey};

use crate::harness::{db_error, visible_customers, Env};

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/integration/fixtures/keys");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{KEYS}/{name}")).unwrap()
}

/// The fixture RSA key (kid `test-rsa`) and, when `with_ec`, the EC key as `test-ec`.
fn jwks(with_rsa: bool, with_ec: bool) -> String {
    let mut set: JwkSet = serde_json::from_slice(&fixture("jwks.json")).unwrap();
    if !with_rsa {
        set.keys.clear();
    }
    if with_ec {
        let key = DecodingKey::from_ec_pem(&fixture("ec_public.pem")).unwrap();
        let mut jwk = Jwk::from_decoding_key(&key, Some(Algorithm::ES256)).unwrap();
        jwk.common.key_id = Some("test-ec".into());
        set.keys.push(jwk);
    }
    serde_json::to_string(&set).unwrap()
}

/// A loopback HTTP server answering every request with `(status, body)`, counting hits.
struct Provider {
    url: String,
    reply: Arc<Mutex<(u16, String)>>,
    hits: Arc<AtomicUsize>,
}

impl Provider {
    async fn start(status: u16, body: String) -> Provider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let reply = Arc::new(Mutex::new((status, body)));
        let hits = Arc::new(AtomicUsize::new(0));
        let (r, h) = (reply.clone(), hits.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (r, h) = (r.clone(), h.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| {
                        h.fetch_add(1, Ordering::SeqCst);
                        let (status, body) = r.lock().unwrap().clone();
                        let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                        *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        async move { Ok::<_, std::convert::Infallible>(resp) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Provider { url, reply, hits }
    }

    fn set(&self, status: u16, body: String) {
        *self.reply.lock().unwrap() = (status, body);
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn env_for(provider: &Provider, min_interval: Duration) -> Env {
    let url = provider.url.clone();
    Env::with(move |c| {
        let jwt = &mut c.auth.jwt;
        jwt.algorithms = vec!["RS256".into(), "ES256".into()];
        jwt.secret_file = None;
        jwt.secret_env = None;
        jwt.jwks_url = Some(url);
        jwt.jwks_refresh = Duration::from_secs(3600);
        jwt.jwks_min_interval = min_interval;
    })
    .await
}

/// A token for `tenant` signed with the fixture key of `alg` under `kid`.
fn token(env: &Env, tenant: &str, alg: Algorithm, kid: &str) -> String {
    let mut o = env.mint_options(tenant);
    o.alg = alg;
    o.kid = Some(kid.into());
    o.key = MintKey::PemPrivateKey(fixture(match alg {
        Algorithm::ES256 => "ec_private.pem",
        _ => "rsa_private.pem",
    }));
    mint(&o).unwrap()
}

async fn login(env: &Env, tenant: &str, token: &str) -> Result<tokio_postgres::Client, String> {
    env.connect_token(&format!("user-{tenant}"), token)
        .await
        .map_err(|e| {
            let (code, msg) = db_error(&e);
            format!("{code} {msg}")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_in_without_a_restart() {
    let provider = Provider::start(200, jwks(true, false)).await;
    let env = env_for(&provider, Duration::ZERO).await;
    assert_eq!(
        provider.hits(),
        0,
        "fetched at the first login, not at start"
    );

    let rsa = token(&env, "acme", Algorithm::RS256, "test-rsa");
    let client = login(&env, "acme", &rsa).await.unwrap();
    let rows = visible_customers(&client).await;
    assert!(
        !rows.is_empty() && rows.iter().all(|(t, _)| t == "acme"),
        "{rows:?}"
    );
    assert_eq!(provider.hits(), 1);

    // A key the provider has not published yet: one fetch, still unknown.
    let ec = token(&env, "globex", Algorithm::ES256, "test-ec");
    let err = login(&env, "globex", &ec).await.unwrap_err();
    assert_eq!(err, "28P01 JWT authentication failed: unknown key id");
    assert_eq!(provider.hits(), 2);

    // Published: the next login with it fetches the set again and gets in.
    provider.set(200, jwks(true, true));
    let client = login(&env, "globex", &ec).await.unwrap();
    let rows = visible_customers(&client).await;
    assert!(
        !rows.is_empty() && rows.iter().all(|(t, _)| t == "globex"),
        "{rows:?}"
    );
    assert_eq!(provider.hits(), 3);

    // Known keys need no fetch (the set is fresh for jwks_refresh).
    login(&env, "acme", &rsa).await.unwrap();
    login(&env, "globex", &ec).await.unwrap();
    assert_eq!(provider.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_are_rate_limited_when_the_provider_fails_or_kids_are_unknown() {
    let provider = Provider::start(503, "down".into()).await;
    let env = env_for(&provider, Duration::from_secs(3600)).await;
    let rsa = token(&env, "acme", Algorithm::RS256, "test-rsa");
    for _ in 0..3 {
        let err = login(&env, "acme", &rsa).await.unwrap_err();
        assert_eq!(
            err,
            "28P01 JWT authentication failed: signing keys unavailable \
             (auth.jwt.jwks_url could not be fetched)"
        );
    }
    assert_eq!(provider.hits(), 1, "one attempt per jwks_min_interval");

    let provider = Provider::start(200, jwks(true, false)).await;
    let env = env_for(&provider, Duration::from_secs(3600)).await;
    let rsa = token(&env, "acme", Algorithm::RS256, "test-rsa");
    login(&env, "acme", &rsa).await.unwrap();
    for i in 0..5 {
        let made_up = token(&env, "acme", Algorithm::RS256, &format!("made-up-{i}"));
        let err = login(&env, "acme", &made_up).await.unwrap_err();
        assert_eq!(err, "28P01 JWT authentication failed: unknown key id");
    }
    assert_eq!(
        provider.hits(),
        1,
        "made-up kids cause no fetch within the interval"
    );
}
