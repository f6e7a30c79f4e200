//! The client handshake on raw bytes: SSLRequest / direct-TLS detection (TCP), the
//! startup packet and its parameters, CancelRequest, protocol negotiation, the password
//! message carrying the JWT, and the tenant context built from the startup parameters
//! (`options -c ...` included). Runs the real `proxy::handshake::handshake` (pgwire's
//! codec underneath) on a socket the target writes the input into.
//!
//! Input: `[mode][client bytes...]`; mode 0-2: unix socket (TLS not required there),
//! mode 3: loopback TCP with `tls.mode = "prefer"`, mode 4: TCP with `"require"`.
//! Invariants: the handshake ends once the client's bytes end (no hang); a refusal the
//! proxy reports is a FATAL ErrorResponse with the error's SQLSTATE, and everything it
//! writes is whole messages; an authenticated session has a user, the served database,
//! no `user`/`database`/`_pq_.*` among its parameters, and receives exactly the bytes
//! that followed the password message; TLS-required TCP never authenticates without
//! TLS; a session context never lets a startup parameter set an owned setting, a role
//! or the session authorization, and carries the token's tenant.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rlsgate::auth::JwtVerifier;
use rlsgate::config::{JwtConfig, TenantConfig, TlsMode};
use rlsgate::proxy::handshake::{handshake, Accepted, HandshakeConfig, Incoming};
use rlsgate::session::error::ClientError;
use rlsgate::tenant::{OwnedSettings, SessionContext};
use rlsgate::wire::protocol::{self, backend as be};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

const SECRET_ENV: &str = "RLSGATE_FUZZ_JWT_SECRET";
/// The secret of the tokens in `fuzz/corpus/startup` (the same as the `jwt` target's).
const SECRET: &str = "fuzz-secret-fuzz-secret-fuzz-secret-0123";
const LIMIT: Duration = Duration::from_secs(10);

struct Setup {
    prefer: HandshakeConfig,
    require: HandshakeConfig,
    tenant: TenantConfig,
    owned: OwnedSettings,
    tcp: TcpListener,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        std::env::set_var(SECRET_ENV, SECRET);
        let verifier = Arc::new(
            JwtVerifier::from_config(&JwtConfig {
                secret_env: Some(SECRET_ENV.into()),
                ..JwtConfig::default()
            })
            .unwrap(),
        );
        let cfg = |tls_mode| HandshakeConfig {
            tls_mode,
            acceptor: None,
            allow_plaintext_auth: false,
            database: "app".into(),
            verifier: verifier.clone(),
        };
        let mut tenant = TenantConfig::default();
        tenant.claims.insert("app.user_id".into(), "sub".into());
        let owned = OwnedSettings::from_config(&tenant);
        let tcp = common::runtime()
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        Setup {
            prefer: cfg(TlsMode::Prefer),
            require: cfg(TlsMode::Require),
            tenant,
            owned,
            tcp,
        }
    })
}

/// Writes `input` then half-closes, and reads everything the proxy says until it closes.
async fn client<S>(stream: S, input: Vec<u8>) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let write = async move {
        let _ = w.write_all(&input).await;
        let _ = w.shutdown().await;
        w
    };
    let read = async move {
        let mut out = Vec::new();
        let _ = r.read_to_end(&mut out).await;
        out
    };
    let (_w, out) = tokio::join!(write, read);
    out
}

fuzz_target!(|data: &[u8]| {
    let [mode, input @ ..] = data else {
        return;
    };
    let s = setup();
    common::runtime().block_on(async {
        let (incoming, peer, cfg, unix) = match mode % 5 {
            m @ (3 | 4) => {
                let (Ok(c), Ok((server, _))) = tokio::join!(
                    TcpStream::connect(s.tcp.local_addr().unwrap()),
                    s.tcp.accept()
                ) else {
                    return; // out of ephemeral ports for a moment: not the proxy's fault
                };
                let cfg = if m == 3 { &s.prefer } else { &s.require };
                (
                    Incoming::Tcp(server),
                    tokio::spawn(client(c, input.to_vec())),
                    cfg,
                    false,
                )
            }
            _ => {
                let (c, server) = UnixStream::pair().unwrap();
                (
                    Incoming::Unix(server),
                    tokio::spawn(client(c, input.to_vec())),
                    &s.prefer,
                    true,
                )
            }
        };
        let outcome = tokio::time::timeout(LIMIT, handshake(incoming, cfg))
            .await
            .expect("handshake did not end after the client's bytes ended");
        let mut session_bytes = None;
        let refusal = match outcome {
            Ok(Accepted::Session(auth)) => {
                let auth = *auth;
                assert!(
                    unix || cfg.tls_mode != TlsMode::Require || auth.tls,
                    "authenticated over plaintext TCP with TLS required"
                );
                assert!(!auth.user.is_empty());
                assert_eq!(auth.database, cfg.database);
                for (name, _) in &auth.startup {
                    assert!(name != "user" && name != "database" && !name.starts_with("_pq_."));
                }
                context(s, &auth);
                // Everything after the password message reaches the session, once.
                let mut stream = auth.stream;
                let mut rest = auth.leftover.to_vec();
                tokio::time::timeout(LIMIT, stream.read_to_end(&mut rest))
                    .await
                    .expect("session stream does not end")
                    .ok();
                session_bytes = Some(rest);
                None
            }
            Ok(Accepted::Cancel { pid, secret, conn }) => {
                drop(conn);
                // CancelRequest: length 16, code 80877102, pid, secret.
                let mut req = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
                req.extend_from_slice(&pid.to_be_bytes());
                req.extend_from_slice(&secret.to_be_bytes());
                assert!(
                    input.windows(16).any(|w| w == req),
                    "cancel keys that the input does not hold"
                );
                None
            }
            Err(e) => Some(e),
        };
        let output = tokio::time::timeout(LIMIT, peer)
            .await
            .expect("the proxy kept the connection open")
            .unwrap();
        if let Some(rest) = session_bytes {
            assert!(
                input.ends_with(&rest),
                "bytes after the password lost or changed"
            );
        }
        if unix {
            check_output(&output, refusal.as_ref());
        }
    });
});

/// What the proxy wrote on a unix socket: whole messages; a refusal it reported ends
/// in a FATAL ErrorResponse with the error's SQLSTATE.
fn check_output(output: &[u8], refusal: Option<&ClientError>) {
    let scan = common::scan(output, output.len(), |_| true);
    assert_eq!(scan.error, None, "the proxy wrote a malformed message");
    assert_eq!(
        scan.forwarded.len(),
        output.len(),
        "the proxy wrote half a message"
    );
    let reported = matches!(
        refusal,
        Some(
            ClientError::Auth(_)
                | ClientError::UnknownDatabase { .. }
                | ClientError::TlsRequired
                | ClientError::PlaintextRefused
        )
    );
    if let (true, Some(e)) = (reported, refusal) {
        let last = scan
            .messages
            .last()
            .expect("refused without an ErrorResponse");
        assert_eq!(last[0], be::ERROR_RESPONSE, "refusal not reported: {e:?}");
        let fields = protocol::parse_error_fields(last);
        assert_eq!(fields.severity, "FATAL");
        assert_eq!(fields.code, e.sqlstate());
    }
}

/// The tenant context from the startup parameters, as the session builds it.
fn context(s: &Setup, auth: &rlsgate::session::shared::Authenticated) {
    let Ok(ctx) = SessionContext::build(&s.tenant, &s.owned, &auth.identity, &auth.startup, None)
    else {
        return;
    };
    for (name, _) in ctx.client_settings() {
        assert!(
            !s.owned.contains(name)
                && !name.eq_ignore_ascii_case("role")
                && !name.eq_ignore_ascii_case("session_authorization"),
            "a startup parameter sets {name}"
        );
    }
    let tenant = ctx.tenant_settings();
    assert_eq!(
        tenant[0],
        (
            s.tenant.setting.clone(),
            auth.identity.tenant.as_str().to_owned()
        )
    );
}
