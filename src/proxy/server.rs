//! The proxy process: shared state, TCP and unix listeners, the connection limit, one
//! task per client with its tracing span, cancel requests, and graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, field, info, info_span, warn, Instrument};

use crate::auth::JwtVerifier;
use crate::config::{Config, ConfigError, PoolMode, TlsMode};
use crate::metrics::Metrics;
use crate::proxy::handshake::{self, Accepted, HandshakeConfig, Incoming};
use crate::session::cancel::CancelRegistry;
use crate::session::error::{fatal, ClientError};
use crate::session::shared::Shared;
use crate::sql::guard::{Guard, GuardConfig};
use crate::sql::inspect::Inspector;
use crate::tenant::{OwnedSettings, Sealer};
use crate::upstream::conn::{self, Connector};
use crate::upstream::pool::Pool;
use crate::wire::tls;

/// Failure to start the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("auth.jwt: {0}")]
    Jwt(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {what}: {source}")]
    Listen {
        what: String,
        source: std::io::Error,
    },
    #[error(
        "upstream role \"{role}\" is {why}: row-level security never applies to it, so \
         rlsgate could not isolate tenants. Connect as an ordinary role (NOSUPERUSER \
         NOBYPASSRLS), or start with --allow-unsafe-upstream if you really mean it"
    )]
    UnsafeUpstream { role: String, why: &'static str },
}

/// Everything a client task needs: what its session shares with the others
/// ([`Shared`], reached through `Deref`) and what the handshake needs.
pub struct State {
    pub shared: Shared,
    pub handshake: HandshakeConfig,
}

impl std::ops::Deref for State {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl State {
    /// Builds the state from a validated config (reads keys, certificates, secrets).
    pub fn new(config: Config) -> Result<State, ServerError> {
        tls::install_default_provider();
        let verifier = JwtVerifier::from_config(&config.auth.jwt)
            .map_err(|e| ServerError::Jwt(e.to_string()))?;
        let target = config.upstream.target()?;
        let upstream_tls =
            tls::upstream_connector(target.sslmode, target.root_cert_file.as_deref())?;
        let acceptor = match (config.tls.mode, &config.tls.cert_file, &config.tls.key_file) {
            (TlsMode::Disable, _, _) => None,
            (_, Some(cert), Some(key)) => Some(tls::server_acceptor(cert, key)?),
            _ => None,
        };
        let metrics = Arc::new(Metrics::default());
        let handshake = HandshakeConfig {
            tls_mode: config.tls.mode,
            acceptor,
            allow_plaintext_auth: config.tls.allow_plaintext_auth,
            database: target.database.clone(),
            verifier: Arc::new(verifier),
        };
        let pool = Pool::new(
            Connector {
                target,
                tls: upstream_tls,
            },
            config.pool.clone(),
            metrics.clone(),
            config.upstream.allow_unsafe_role,
        );
        let owned = OwnedSettings::from_config(&config.tenant);
        let mut deny_relations = config.guard.deny_relations.clone();
        if config.pool.mode == PoolMode::Transaction {
            // The pooled servers' prepared statements are shared between sessions (with
            // their texts and literals); in session mode they are the client's own.
            deny_relations
                .extend(["pg_prepared_statements", "pg_prepared_statement"].map(str::to_owned));
        }
        let mut trigger_names = crate::sql::guard::denied_functions()
            .iter()
            .map(|f| (*f).to_owned())
            .collect::<Vec<_>>();
        if !config.guard.allow_large_objects {
            trigger_names.extend(crate::sql::guard::LARGE_OBJECT_RELATIONS.map(str::to_owned));
            trigger_names.extend(crate::sql::guard::LARGE_OBJECT_FUNCTIONS.map(str::to_owned));
        }
        let guard = config.guard.enabled.then(|| {
            Guard::new(GuardConfig {
                owned: owned.names().to_vec(),
                deny_relations: deny_relations.clone(),
                refuse_do_blocks: config.guard.refuse_do_blocks,
                allow_set_role: config.guard.allow_set_role,
                allow_large_objects: config.guard.allow_large_objects,
                scoped_backend_calls: true,
            })
        });
        let shared = Shared {
            statement_names: Default::default(),
            sealer: config
                .tenant
                .seal_secret()?
                .map(|key| Arc::new(Sealer::new(key))),
            inspector: Inspector::new(
                guard,
                config.pool.mode,
                &[owned.names(), &deny_relations[..], &trigger_names[..]].concat(),
            ),
            owned,
            pool,
            cancel: CancelRegistry::default(),
            metrics,
            config,
        };
        Ok(State { shared, handshake })
    }
}

/// A bound, not yet running proxy.
pub struct Server {
    state: Arc<State>,
    tcp: TcpListener,
    unix: Option<(UnixListener, PathBuf)>,
    /// `[admin] addr`: the metrics and health endpoint.
    admin: Option<TcpListener>,
}

/// Handle to a proxy running in the background (tests, `rlsgate demo`).
pub struct RunningServer {
    pub addr: SocketAddr,
    /// Where the admin endpoint listens, when `[admin] addr` is set.
    pub admin_addr: Option<SocketAddr>,
    pub state: Arc<State>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// Stops accepting, lets sessions finish up to `listen.shutdown_timeout`, then waits.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Loud warnings for settings that leave isolation to fewer layers than it should.
fn warn_unsafe_settings(config: &Config) {
    if !config.guard.enabled {
        warn!("UNSAFE: [guard] enabled = false: client SQL is not inspected; this is for tests and diagnostics only, never for production");
    }
    if !config.tenant.is_sealed() {
        warn!(setting = %config.tenant.setting, "tenant context is not sealed: the database can only trust the bare setting; configure [tenant] seal_secret_file or seal_secret_env and install policies/sealed.sql");
    }
}

impl Server {
    /// Checks the upstream role, then binds the listeners.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let state = Arc::new(State::new(config)?);
        warn_unsafe_settings(&state.config);
        check_upstream_role(&state).await?;
        let addr = state.config.listen.addr;
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Listen {
                what: addr.to_string(),
                source,
            })?;
        let port = tcp.local_addr().map(|a| a.port()).unwrap_or(addr.port());
        let unix = match &state.config.listen.unix_socket_dir {
            Some(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                let _ = std::fs::remove_file(&path);
                let l = UnixListener::bind(&path).map_err(|source| ServerError::Listen {
                    what: path.display().to_string(),
                    source,
                })?;
                Some((l, path))
            }
            None => None,
        };
        let admin = match state.config.admin.addr {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| ServerError::Listen {
                            what: format!("admin {addr}"),
                            source,
                        })?,
                )
            }
            None => None,
        };
        Ok(Server {
            state,
            tcp,
            unix,
            admin,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.tcp
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    /// Runs in the background until `shutdown` is cancelled.
    pub fn spawn(self) -> RunningServer {
        let shutdown = CancellationToken::new();
        let addr = self.local_addr();
        let admin_addr = self.admin.as_ref().and_then(|l| l.local_addr().ok());
        let state = self.state.clone();
        let token = shutdown.clone();
        let task = tokio::spawn(async move { self.run(token).await });
        RunningServer {
            addr,
            admin_addr,
            state,
            shutdown,
            task,
        }
    }

    /// Accepts clients until `shutdown` is cancelled, then drains sessions.
    pub async fn run(self, shutdown: CancellationToken) {
        let Server {
            state,
            tcp,
            unix,
            admin,
        } = self;
        let admin = admin.map(|listener| {
            info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                  "admin endpoint listening (/metrics, /health)");
            tokio::spawn(crate::proxy::admin::serve(
                listener,
                state.clone(),
                shutdown.clone(),
            ))
        });
        info!(addr = %tcp.local_addr().map(|a| a.to_string()).unwrap_or_default(),
              unix = ?unix.as_ref().map(|u| u.1.display().to_string()),
              mode = ?state.config.pool.mode, "rlsgate listening");
        if let Err(e) = state.pool.prefill().await {
            warn!(error = %e, "could not open pool.min_idle connections at start");
        }
        let limit = Arc::new(Semaphore::new(state.config.listen.max_clients));
        let terminate = CancellationToken::new();
        let mut sessions = JoinSet::new();
        let mut reap = tokio::time::interval(Duration::from_secs(10));
        let mut next_id: u64 = 0;
        loop {
            let incoming = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = reap.tick() => { state.pool.reap(); continue; }
                Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
                r = tcp.accept() => match r {
                    Ok((s, peer)) => { let _ = s.set_nodelay(true); (Incoming::Tcp(s), Some(peer)) }
                    Err(e) => { warn!(error = %e, "accept failed"); continue; }
                },
                r = accept_unix(&unix) => match r {
                    Ok(s) => (Incoming::Unix(s), None),
                    Err(e) => { warn!(error = %e, "unix accept failed"); continue; }
                },
            };
            next_id += 1;
            let span = info_span!("conn", id = next_id, peer = %peer_label(incoming.1), sub = field::Empty, tenant = field::Empty);
            let permit = limit.clone().try_acquire_owned().ok();
            let (state, terminate) = (state.clone(), terminate.clone());
            sessions.spawn(
                async move {
                    let Some(_permit) = permit else {
                        Metrics::inc(&state.metrics.clients_rejected_max);
                        reject(incoming.0, ClientError::TooManyClients).await;
                        return;
                    };
                    serve_client(&state, incoming.0, terminate).await;
                }
                .instrument(span),
            );
        }
        // Stop listening at once: new clients get "connection refused", not a hang.
        drop(tcp);
        let unix_path = unix.map(|(listener, path)| {
            drop(listener);
            path
        });
        info!(
            sessions = sessions.len(),
            "shutting down: no new connections"
        );
        let grace = state.config.listen.shutdown_timeout;
        let drained = tokio::time::timeout(grace, async {
            while sessions.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            info!(
                sessions = sessions.len(),
                "shutdown timeout reached: closing remaining sessions"
            );
            terminate.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while sessions.join_next().await.is_some() {}
            })
            .await;
        }
        state.pool.close();
        if let Some(path) = unix_path {
            let _ = std::fs::remove_file(path);
        }
        if let Some(task) = admin {
            task.abort();
        }
        info!("rlsgate stopped");
    }
}

/// Refuses an upstream role that RLS does not apply to (superuser, BYPASSRLS).
async fn check_upstream_role(state: &State) -> Result<(), ServerError> {
    let connector = &state.pool.connector;
    let role = connector.target.user.clone();
    let conn = tokio::time::timeout(
        connector.target.connect_timeout,
        conn::ServerConn::connect(connector),
    )
    .await;
    let mut conn = match conn {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            warn!(error = %e, "could not check the upstream role at start (upstream unreachable?)");
            return Ok(());
        }
        Err(_) => {
            warn!("could not check the upstream role at start: connect timed out");
            return Ok(());
        }
    };
    let why = conn.rls_exemption().await;
    conn.terminate().await;
    let why = match why {
        Ok(why) => why,
        Err(e) => {
            warn!(error = %e, "could not check the upstream role");
            return Ok(());
        }
    };
    match why {
        None => Ok(()),
        Some(why) if state.config.upstream.allow_unsafe_role => {
            warn!(role = %role, why, "UNSAFE: upstream role bypasses row-level security; tenants are NOT isolated (--allow-unsafe-upstream)");
            Ok(())
        }
        Some(why) => Err(ServerError::UnsafeUpstream { role, why }),
    }
}

fn peer_label(peer: Option<SocketAddr>) -> String {
    peer.map(|p| p.to_string()).unwrap_or_else(|| "unix".into())
}

async fn accept_unix(
    unix: &Option<(UnixListener, PathBuf)>,
) -> std::io::Result<tokio::net::UnixStream> {
    match unix {
        Some((l, _)) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

/// Refuses a connection before its startup with a FATAL error.
async fn reject(incoming: Incoming, err: ClientError) {
    match incoming {
        Incoming::Tcp(mut s) => fatal(&mut s, err).await,
        Incoming::Unix(mut s) => fatal(&mut s, err).await,
    };
}

/// One client connection from accept to close.
async fn serve_client(state: &State, incoming: Incoming, terminate: CancellationToken) {
    let m = &state.metrics;
    Metrics::inc(&m.clients_total);
    m.clients_active.fetch_add(1, Ordering::Relaxed);
    let timeout = state.config.listen.startup_timeout;
    let result =
        match tokio::time::timeout(timeout, handshake::handshake(incoming, &state.handshake)).await
        {
            Err(_) => Err(ClientError::StartupTimeout),
            Ok(r) => r,
        };
    let result = match result {
        Ok(Accepted::Cancel { pid, secret, conn }) => {
            handle_cancel(state, pid, secret).await;
            drop(conn);
            Ok(())
        }
        Ok(Accepted::Session(client)) => {
            Metrics::inc(&m.auth_ok);
            let span = tracing::Span::current();
            span.record("sub", client.identity.sub.as_deref().unwrap_or(""));
            span.record("tenant", client.identity.tenant.as_str());
            info!(user = %client.user, tls = client.tls, "client authenticated");
            crate::session::run_session(state, *client, terminate).await
        }
        Err(e) => Err(e),
    };
    m.clients_active.fetch_sub(1, Ordering::Relaxed);
    match result {
        Ok(()) => debug!("client disconnected"),
        Err(ClientError::Auth(e)) => {
            Metrics::inc(&m.auth_failed);
            warn!(reason = %e, kind = e.kind(), "authentication failed");
        }
        Err(e) if e.is_routine() => debug!(reason = %e, "client disconnected"),
        Err(e) => info!(sqlstate = e.sqlstate(), reason = %e, "client session ended with an error"),
    }
}

async fn handle_cancel(state: &State, pid: i32, secret: i32) {
    // Deliver under the key's gate, and look the target up again once inside it: the
    // session may have left its backend meanwhile (see `cancel::CancelGate`).
    let gate = state.cancel.gate(pid, secret);
    let _held = match &gate {
        Some(g) => Some(g.lock().await),
        None => None,
    };
    match state.cancel.lookup(pid, secret) {
        Some(t) => {
            match conn::send_cancel(&state.pool.connector, t.server_pid, t.server_secret).await {
                // Counted once PostgreSQL closed the cancel connection (backend signalled).
                Ok(()) => Metrics::inc(&state.metrics.cancels_forwarded),
                Err(e) => warn!(error = %e, "forwarding cancel request failed"),
            }
        }
        None => {
            Metrics::inc(&state.metrics.cancels_ignored);
            debug!("cancel request with unknown key ignored");
        }
    }
}
