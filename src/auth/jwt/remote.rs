//! A JWK set fetched from `auth.jwt.jwks_url` (an identity provider's
//! `.well-known/jwks.json`) and kept fresh, so signing-key rotation needs no restart:
//! - fetched at the first login (not at start: the provider may be down then);
//! - refreshed in the background once it is older than `jwks_refresh`, while logins go
//!   on with the keys they have;
//! - fetched again at once when a token names a `kid` the set lacks (a new key), at most
//!   once per `jwks_min_interval`, so tokens with made-up `kid`s cannot turn rlsgate into
//!   a request flood against the provider;
//! - a failed fetch keeps the last good keys (logged); with none yet, logins fail with
//!   "signing keys unavailable".

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{info, warn};

use super::keys::{kids, parse_jwks, JwtSetupError, PublicKey};
use crate::config::JwtConfig;

/// Largest JWK set accepted (real ones are a few kB).
const MAX_BODY: usize = 1024 * 1024;
/// Whole-request limit for one fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a fetch was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Need {
    /// Keys are needed and there are none, or they are older than `jwks_refresh`.
    Fresh,
    /// A token named a `kid` the set does not have.
    UnknownKid,
}

pub struct RemoteJwks {
    url: String,
    client: reqwest::Client,
    algorithms: Vec<Algorithm>,
    keys: RwLock<Option<Arc<Vec<PublicKey>>>>,
    /// Serialises fetches; holds when the last attempt and the last success were.
    fetches: Mutex<Fetches>,
    refresh: Duration,
    min_interval: Duration,
}

#[derive(Default)]
struct Fetches {
    attempted: Option<Instant>,
    succeeded: Option<Instant>,
}

impl fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids = self
            .keys()
            .map(|k| kids(&k).iter().map(|s| s.to_string()).collect::<Vec<_>>());
        f.debug_struct("RemoteJwks")
            .field("url", &self.url)
            .field("kids", &kids)
            .finish_non_exhaustive()
    }
}

impl RemoteJwks {
    /// Checks the URL (https, or http to a loopback host) and builds the HTTP client.
    pub(super) fn new(
        url: &str,
        cfg: &JwtConfig,
        algorithms: &[Algorithm],
    ) -> Result<Self, JwtSetupError> {
        const KEY: &str = "auth.jwt.jwks_url";
        let parsed = url::Url::parse(url)
            .map_err(|e| JwtSetupError::invalid(KEY, format!("not a URL: {e}")))?;
        let loopback = match parsed.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        match parsed.scheme() {
            "https" => {}
            "http" if loopback => {}
            _ => {
                return Err(JwtSetupError::invalid(
                    KEY,
                    "must be an https:// URL (http:// only to a loopback host)",
                ))
            }
        }
        if cfg.jwks_min_interval > cfg.jwks_refresh {
            return Err(JwtSetupError::invalid(
                "auth.jwt.jwks_min_interval",
                "must not be longer than auth.jwt.jwks_refresh",
            ));
        }
        let tls = crate::wire::tls::https_client_config()
            .map_err(|e| JwtSetupError::invalid(KEY, e.to_string()))?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("rlsgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| JwtSetupError::invalid(KEY, e.to_string()))?;
        Ok(Self {
            url: url.to_owned(),
            client,
            algorithms: algorithms.to_vec(),
            keys: RwLock::new(None),
            fetches: Mutex::new(Fetches::default()),
            refresh: cfg.jwks_refresh,
            min_interval: cfg.jwks_min_interval,
        })
    }

    /// The current keys, `None` before the first successful fetch.
    pub(super) fn keys(&self) -> Option<Arc<Vec<PublicKey>>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Before a verification: the first fetch happens here (the login waits for it);
    /// keys older than `jwks_refresh` are refreshed in the background.
    pub(super) async fn prepare(self: &Arc<Self>) {
        if self.keys().is_none() {
            self.fetch(Need::Fresh).await;
            return;
        }
        let stale = {
            let f = self.fetches.try_lock();
            f.is_ok_and(|f| {
                f.succeeded.is_none_or(|t| t.elapsed() >= self.refresh)
                    && f.attempted.is_none_or(|t| t.elapsed() >= self.min_interval)
            })
        };
        if stale {
            let me = self.clone();
            tokio::spawn(async move { me.fetch(Need::Fresh).await });
        }
    }

    /// Fetches the set unless another fetch just ran: returns true when the keys may
    /// have changed (a fetch succeeded, now or while this one waited for the lock).
    pub(super) async fn fetch(&self, need: Need) -> bool {
        let started = Instant::now();
        let mut f = self.fetches.lock().await;
        if f.succeeded.is_some_and(|t| t >= started) {
            return true; // fetched while we waited
        }
        let fresh = f.succeeded.is_some_and(|t| t.elapsed() < self.refresh);
        if need == Need::Fresh && fresh {
            return false;
        }
        // At most one attempt per jwks_min_interval, whatever asks for it.
        if f.attempted.is_some_and(|t| t.elapsed() < self.min_interval) {
            return false;
        }
        f.attempted = Some(Instant::now());
        match self.download().await {
            Ok(keys) => {
                info!(url = %self.url, kids = ?kids(&keys), reason = ?need, "JWKS fetched");
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(keys));
                f.succeeded = Some(Instant::now());
                true
            }
            Err(e) => {
                warn!(url = %self.url, error = %e, reason = ?need,
                      "JWKS fetch failed; keeping the keys already known");
                false
            }
        }
    }

    async fn download(&self) -> Result<Vec<PublicKey>, String> {
        let mut response = self
            .client
            .get(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("HTTP status {}", response.status()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY as u64)
        {
            return Err(format!("response larger than {MAX_BODY} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("reading the response: {e}"))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(format!("response larger than {MAX_BODY} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        parse_jwks(&body, &self.algorithms).map_err(|reason| format!("the document {reason}"))
    }
}
