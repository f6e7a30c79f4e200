//! Client handshake with pgwire: TLS negotiation (SSLRequest and PG17 direct TLS), the
//! startup packet, cleartext-password authentication carrying the JWT, then hand-over
//! of the raw stream to the session.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::BytesMut;
use futures::StreamExt;
use pgwire::api::auth::cleartext::CleartextPasswordAuth;
use pgwire::api::auth::driver::AuthOutcome;
use pgwire::api::auth::mechanism::AuthMechanismFactory;
use pgwire::api::auth::{
    AuthDriver, AuthSource, DefaultServerParameterProvider, LoginInfo, Password,
};
use pgwire::api::{ClientInfo, DefaultClient, PgWireConnectionState};
use pgwire::error::PgWireResult;
use pgwire::messages::PgWireFrontendMessage;
use pgwire::tokio::server::{MaybeTls, PgWireMessageServerCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::codec::Framed;

use crate::auth::{AuthError, Identity, JwtVerifier};
use crate::config::TlsMode;
use crate::session::error::ClientError;
use crate::wire::protocol;

type ClientFramed = Framed<MaybeTls, PgWireMessageServerCodec<()>>;

/// A client connection as accepted by a listener.
pub enum Incoming {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Outcome of the handshake.
pub enum Accepted {
    /// Authenticated client, ready for its session.
    Session(Box<Authenticated>),
    /// A CancelRequest (the connection carries nothing else). `conn` is closed only
    /// after the cancel was delivered upstream: clients (asyncpg, libpq's PQcancel) wait
    /// for that close, as PostgreSQL closes it once the backend was signalled, before
    /// they run their next statement.
    Cancel {
        pid: i32,
        secret: i32,
        conn: Box<dyn Send>,
    },
}

pub use crate::session::shared::Authenticated;

/// What the handshake needs from the proxy.
pub struct HandshakeConfig {
    pub tls_mode: TlsMode,
    pub acceptor: Option<tokio_rustls::TlsAcceptor>,
    pub allow_plaintext_auth: bool,
    pub database: String,
    pub verifier: Arc<JwtVerifier>,
}

/// pgwire auth source: verifies the JWT and keeps the verdict as the identity, so the
/// proxy can report the exact failed check itself.
#[derive(Debug)]
struct JwtSource {
    verifier: Arc<JwtVerifier>,
}

#[async_trait]
impl AuthSource<Result<Identity, AuthError>> for JwtSource {
    async fn get_password(&self, _login: &LoginInfo) -> PgWireResult<Password> {
        // Never used: verify_password is overridden.
        Ok(Password::new(None, Vec::new()))
    }

    async fn verify_password(
        &self,
        login: &LoginInfo,
        presented: &[u8],
    ) -> PgWireResult<Option<Result<Identity, AuthError>>> {
        let verdict = match std::str::from_utf8(presented) {
            Ok("") => Err(AuthError::Empty),
            Ok(token) => self.verifier.verify_fetching(token, login.user()).await,
            Err(_) => Err(AuthError::Malformed),
        };
        Ok(Some(verdict))
    }
}

/// Runs the handshake on a new connection.
pub async fn handshake(incoming: Incoming, cfg: &HandshakeConfig) -> Result<Accepted, ClientError> {
    let (mut framed, peer) = match incoming {
        Incoming::Tcp(tcp) => {
            let peer = tcp.peer_addr().ok();
            match pgwire::tokio::server::negotiate_tls::<()>(tcp, cfg.acceptor.clone()).await? {
                Some(f) => (f, peer),
                None => return Err(ClientError::Closed),
            }
        }
        Incoming::Unix(unix) => {
            let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
            let codec = PgWireMessageServerCodec::new(DefaultClient::new(addr, false));
            let mut f = Framed::new(MaybeTls::Unix(unix), codec);
            f.set_state(PgWireConnectionState::AwaitingStartup);
            (f, None)
        }
    };
    let startup = match framed.next().await {
        Some(Ok(PgWireFrontendMessage::Startup(s))) => s,
        Some(Ok(PgWireFrontendMessage::CancelRequest(c))) => {
            // Keys are always 4 bytes here: the proxy negotiates protocol 3.0.
            let Some(secret) = c.secret_key.as_i32() else {
                return Err(ClientError::Protocol(
                    "cancel key of unexpected length".into(),
                ));
            };
            return Ok(Accepted::Cancel {
                pid: c.pid,
                secret,
                conn: Box::new(framed),
            });
        }
        Some(Ok(_)) => return Err(ClientError::Protocol("expected a startup message".into())),
        Some(Err(e)) => return Err(ClientError::Protocol(e.to_string())),
        None => return Err(ClientError::Closed),
    };
    let secure = framed.is_secure();
    let is_tcp = peer.is_some();
    if is_tcp && !secure {
        if cfg.tls_mode == TlsMode::Require {
            return fail(framed, ClientError::TlsRequired).await;
        }
        let loopback = peer.is_some_and(|p| p.ip().is_loopback());
        if !loopback && !cfg.allow_plaintext_auth {
            return fail(framed, ClientError::PlaintextRefused).await;
        }
    }
    // Protocol 3.x above 3.0 and `_pq_.` options are negotiated down: the upstream speaks 3.0.
    let unsupported: Vec<&str> = startup
        .parameters
        .keys()
        .filter(|k| k.starts_with("_pq_."))
        .map(String::as_str)
        .collect();
    if startup.protocol_number_major != 3 {
        return fail(
            framed,
            ClientError::Protocol("unsupported frontend protocol".into()),
        )
        .await;
    }
    if startup.protocol_number_minor > 0 || !unsupported.is_empty() {
        let mut buf = BytesMut::new();
        protocol::put_negotiate_protocol_version(&mut buf, 0, &unsupported);
        framed.get_mut().write_all(&buf).await?;
    }
    let user = startup.parameters.get("user").cloned().unwrap_or_default();
    let database = startup
        .parameters
        .get("database")
        .cloned()
        .unwrap_or_else(|| user.clone());
    if user.is_empty() {
        return fail(
            framed,
            ClientError::Protocol("no PostgreSQL user name specified in startup packet".into()),
        )
        .await;
    }
    if database != cfg.database {
        return fail(
            framed,
            ClientError::UnknownDatabase {
                asked: database,
                served: cfg.database.clone(),
            },
        )
        .await;
    }
    pgwire::api::auth::save_startup_parameters_to_metadata(&mut framed, &startup);

    let driver: AuthDriver<DefaultServerParameterProvider, Result<Identity, AuthError>> =
        AuthDriver::new(DefaultServerParameterProvider::default());
    let factory = CleartextPasswordAuth::new(Arc::new(JwtSource {
        verifier: cfg.verifier.clone(),
    }));
    driver
        .begin_authentication(&mut framed, factory.create())
        .await?;
    match password_header(&mut framed).await {
        Ok(true) => {}
        Ok(false) => return fail(framed, ClientError::Auth(AuthError::Empty)).await,
        // The client is told why (08P01), as for any other malformed message.
        Err(e @ ClientError::Protocol(_)) => return fail(framed, e).await,
        Err(e) => return Err(e),
    }
    let message = match framed.next().await {
        Some(Ok(PgWireFrontendMessage::PasswordMessageFamily(m))) => m,
        Some(Ok(_)) => return fail(framed, ClientError::Auth(AuthError::Empty)).await,
        // pgwire caps the password message at 10000 bytes.
        Some(Err(pgwire::error::PgWireError::MessageTooLarge(..))) => {
            return fail(framed, ClientError::Auth(AuthError::TooLarge)).await
        }
        Some(Err(e)) => return Err(ClientError::Protocol(e.to_string())),
        None => return Err(ClientError::Closed),
    };
    let identity = match driver.advance_authentication(&mut framed, message).await {
        Ok(AuthOutcome::Authenticated {
            identity: Some(Ok(id)),
            ..
        }) => id,
        Ok(AuthOutcome::Authenticated {
            identity: Some(Err(e)),
            ..
        }) => return fail(framed, ClientError::Auth(e)).await,
        Ok(_) => return fail(framed, ClientError::Auth(AuthError::Empty)).await,
        Err(e) => return Err(ClientError::Protocol(e.to_string())),
    };
    let startup_params = startup
        .parameters
        .iter()
        .filter(|(k, _)| {
            k.as_str() != "user" && k.as_str() != "database" && !k.starts_with("_pq_.")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let parts = framed.into_parts();
    Ok(Accepted::Session(Box::new(Authenticated {
        stream: parts.io,
        leftover: parts.read_buf,
        identity,
        user,
        database,
        startup: startup_params,
        tls: secure,
    })))
}

/// Looks at the next message's header before pgwire decodes it: `false` when it is not
/// a password message (refused like before), an error when its length field is below 4.
/// pgwire 0.42 decodes whatever message comes fully and panics on malformed ones (a
/// password message `p\0\0\0\0` underflows `length - 4`, a short Parse advances past
/// its end: both found by the `startup` fuzz target); only the password family, which
/// it takes as raw bytes, is safe to hand it.
async fn password_header(framed: &mut ClientFramed) -> Result<bool, ClientError> {
    while framed.read_buffer().len() < protocol::HEADER_LEN {
        let mut more = [0u8; protocol::HEADER_LEN];
        let want = protocol::HEADER_LEN - framed.read_buffer().len();
        let n = framed.get_mut().read(&mut more[..want]).await?;
        if n == 0 {
            return Ok(true); // end of stream: pgwire reports it
        }
        framed.read_buffer_mut().extend_from_slice(&more[..n]);
    }
    let b = framed.read_buffer();
    let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]);
    if len < 4 {
        return Err(ClientError::Protocol(format!(
            "invalid message length {len}"
        )));
    }
    Ok(b[0] == b'p')
}

/// Sends the FATAL ErrorResponse for `err` and returns it.
async fn fail(mut framed: ClientFramed, err: ClientError) -> Result<Accepted, ClientError> {
    Err(crate::session::error::fatal(framed.get_mut(), err).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JwtConfig;

    /// The `startup` fuzz target's crashes: pgwire panicked on a password message with
    /// length 0 and on a truncated Parse sent instead of the password.
    #[tokio::test]
    async fn password_message_shorter_than_its_length_field_is_refused() {
        std::env::set_var("RLSGATE_TEST_HANDSHAKE_SECRET", "x".repeat(32));
        let verifier = JwtVerifier::from_config(&JwtConfig {
            secret_env: Some("RLSGATE_TEST_HANDSHAKE_SECRET".into()),
            ..JwtConfig::default()
        })
        .unwrap();
        let cfg = HandshakeConfig {
            tls_mode: TlsMode::Prefer,
            acceptor: None,
            allow_plaintext_auth: false,
            database: "app".into(),
            verifier: Arc::new(verifier),
        };
        let mut startup = vec![0, 3, 0, 0];
        for s in ["user", "alice", "database", "app", ""] {
            startup.extend_from_slice(s.as_bytes());
            startup.push(0);
        }
        let mut input = ((startup.len() + 4) as u32).to_be_bytes().to_vec();
        input.extend_from_slice(&startup);
        for (next, refused) in [
            (
                &b"p\0\0\0\0"[..],
                "protocol violation: invalid message length 0",
            ),
            // A Parse whose body ends inside its statement name.
            (
                &b"P\0\0\0\x05A"[..],
                "authentication failed: no password supplied",
            ),
        ] {
            let (mut client, server) = UnixStream::pair().unwrap();
            client
                .write_all(&[&input[..], next].concat())
                .await
                .unwrap();
            client.shutdown().await.unwrap();
            match handshake(Incoming::Unix(server), &cfg).await {
                Err(e) => assert_eq!(e.to_string(), refused),
                Ok(_) => panic!("accepted a malformed password message"),
            }
            // The client is told why: the FATAL ErrorResponse (08P01 / 28P01) is last.
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            let code = if refused.starts_with("protocol") {
                "C08P01"
            } else {
                "C28P01"
            };
            let at = got
                .iter()
                .rposition(|b| *b == b'E')
                .expect("an ErrorResponse");
            let fatal = String::from_utf8_lossy(&got[at..]);
            assert!(
                fatal.contains("SFATAL") && fatal.contains(code),
                "{fatal:?}"
            );
        }
    }
}
