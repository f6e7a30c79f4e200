//! Reusable test harness: a real PostgreSQL (from the local server binaries) with the demo
//! schema, rlsgate in front of it, tokens, and clients (tokio-postgres, psql).
//!
//! Every test gets its own PostgreSQL and proxy, so tests can run in parallel and may
//! restart or break their server.

#![allow(dead_code)]

use std::future::Future;
use std::process::Output;
use std::time::Duration;

use futures::StreamExt;

use rlsgate::auth::jwt::{mint, MintKey, MintOptions};
use rlsgate::config::Config;
use rlsgate::dev::pgtemp::{TempPostgres, TempPostgresOptions, DEMO_SQL};
use rlsgate::proxy::server::{RunningServer, Server};
use tokio_postgres::{Client, NoTls};

/// One PostgreSQL + one rlsgate.
pub struct Env {
    pub pg: TempPostgres,
    pub proxy: RunningServer,
    pub secret: String,
    pub dir: tempfile::TempDir,
    pub config: Config,
}

impl Env {
    /// Default environment: session mode, pool size 4.
    pub async fn start() -> Env {
        Env::with(|_| {}).await
    }

    /// Environment with a modified config (`c.upstream`, `c.pool`, ... are the demo's).
    /// The tenant context is sealed (the demo's policies are on `rlsgate.tenant()`);
    /// the seal secret `modify` leaves in the config is stored in the database.
    pub async fn with(modify: impl FnOnce(&mut Config)) -> Env {
        Env::build(DEMO_SQL, modify).await
    }

    /// A fresh PostgreSQL with database `app` holding `schema_sql`, and the proxy.
    /// When the config is sealed, `schema_sql` must install policies/sealed.sql.
    async fn build(schema_sql: &str, modify: impl FnOnce(&mut Config)) -> Env {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
        let pg =
            tokio::task::spawn_blocking(|| TempPostgres::start(TempPostgresOptions::default()))
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("cannot start PostgreSQL for the test: {e}"));
        pg.psql("postgres", "CREATE DATABASE app")
            .expect("create database");
        pg.psql("app", schema_sql).expect("load the test schema");
        let dir = tempfile::Builder::new()
            .prefix("rlsgate-test-")
            .tempdir()
            .unwrap();
        let secret = rlsgate::dev::demo::random_secret();
        let mut config = rlsgate::dev::demo::demo_config(&pg, dir.path(), &secret, 0).unwrap();
        config.listen.shutdown_timeout = Duration::from_secs(2);
        modify(&mut config);
        config.validate().expect("test config is valid");
        rlsgate::dev::demo::store_seal_secret(&pg, &config).expect("store the seal secret");
        let proxy = Server::bind(config.clone())
            .await
            .expect("bind proxy")
            .spawn();
        Env {
            pg,
            proxy,
            secret,
            dir,
            config,
        }
    }

    /// Like [`Env::start`], but database `app` gets `schema_sql` (run as superuser)
    /// instead of the demo schema. The proxy logs in as `app_rls` with password
    /// `app_rls_pw`, so `schema_sql` should create that role for clients to get through.
    /// Not sealed: `schema_sql` need not install policies/sealed.sql.
    pub async fn with_schema(schema_sql: &str) -> Env {
        Env::build(schema_sql, |c| c.tenant.sealed = Some(false)).await
    }

    pub fn port(&self) -> u16 {
        self.proxy.addr.port()
    }

    /// Mint options for `tenant` with the environment's secret; tweak before minting.
    pub fn mint_options(&self, tenant: &str) -> MintOptions {
        MintOptions {
            alg: jsonwebtoken::Algorithm::HS256,
            key: MintKey::Secret(self.secret.as_bytes().to_vec()),
            tenant: Some(serde_json::Value::String(tenant.into())),
            tenant_claim: "tenant_id".into(),
            sub: Some(format!("user-{tenant}")),
            role: None,
            ttl: Duration::from_secs(600),
            extra_claims: Vec::new(),
            issuer: None,
            audience: None,
            kid: None,
        }
    }

    pub fn token(&self, tenant: &str) -> String {
        mint(&self.mint_options(tenant)).unwrap()
    }

    /// libpq-style connection string to the proxy.
    pub fn conninfo(&self, user: &str, token: &str, sslmode: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname=app user={user} password='{token}' sslmode={sslmode}",
            self.port()
        )
    }

    /// A tokio-postgres client through the proxy for `tenant` (plaintext over loopback).
    pub async fn connect(&self, tenant: &str) -> Client {
        self.connect_token(&format!("user-{tenant}"), &self.token(tenant))
            .await
            .unwrap_or_else(|e| panic!("connect as {tenant}: {e}"))
    }

    pub async fn connect_token(
        &self,
        user: &str,
        token: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        let (client, conn) =
            tokio_postgres::connect(&self.conninfo(user, token, "disable"), NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Direct superuser client (bypasses the proxy).
    pub async fn admin(&self) -> Client {
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} dbname=app user=postgres",
                self.pg.port()
            ),
            NoTls,
        )
        .await
        .expect("admin connect");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// Runs `psql` through the proxy with `token`; `args` after the connection string.
    pub fn psql(&self, user: &str, token: &str, sslmode: &str, args: &[&str]) -> Output {
        std::process::Command::new("psql")
            .arg("-X")
            .arg(format!(
                "host=127.0.0.1 port={} dbname=app user={user} sslmode={sslmode}",
                self.port()
            ))
            .args(args)
            .env("PGPASSWORD", token)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("psql is installed (apt-get install -y postgresql-client)")
    }

    /// Number of upstream connections the proxy has opened so far.
    pub fn upstream_connects(&self) -> u64 {
        rlsgate::metrics::Metrics::get(&self.proxy.state.metrics.upstream_connects)
    }

    /// Upstream connections idle in the pool (checked in, ready for the next client).
    pub fn idle_servers(&self) -> usize {
        self.proxy.state.pool.status().available
    }

    /// Waits until a backend is executing a query that starts with `prefix`
    /// (`pg_stat_activity.state = 'active'`): the moment a cancel has something to hit.
    pub async fn wait_for_active_query(&self, prefix: &str) {
        const ACTIVE: &str = "SELECT count(*) FROM pg_stat_activity \
                              WHERE state = 'active' AND starts_with(query, $1)";
        let admin = self.admin().await;
        let admin = &admin;
        let what = format!("a backend running `{prefix}...`");
        wait_for(&what, move || async move {
            let n: i64 = admin.query_one(ACTIVE, &[&prefix]).await.unwrap().get(0);
            n > 0
        })
        .await;
    }

    /// Sessions of `app_rls` currently connected to PostgreSQL.
    pub async fn upstream_backends(&self) -> i64 {
        self.admin()
            .await
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app_rls'",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }
}

/// How long [`wait_for`] waits before failing: generous, since CI runs many tests at
/// once on two cores.
pub const WAIT_DEADLINE: Duration = Duration::from_secs(10);

/// A client through the proxy for `tenant` whose notifications (pid, channel, payload)
/// arrive on the returned channel.
pub async fn listener(
    env: &Env,
    tenant: &str,
) -> (
    Client,
    tokio::sync::mpsc::UnboundedReceiver<(i32, String, String)>,
) {
    let conninfo = env.conninfo("u", &env.token(tenant), "disable");
    let (c, mut conn) = tokio_postgres::connect(&conninfo, NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let stream = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        futures::pin_mut!(stream);
        while let Some(Ok(m)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send((
                    n.process_id(),
                    n.channel().to_owned(),
                    n.payload().to_owned(),
                ));
            }
        }
    });
    (c, rx)
}

/// Polls `f` every 20 ms until it returns true; panics naming `what` once
/// [`WAIT_DEADLINE`] has passed (a slow `f` counts against the deadline too). Use it
/// instead of a fixed sleep, which is too short on a loaded machine and too long on an
/// idle one.
pub async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT_DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, f()).await {
            Ok(true) => return,
            Ok(false) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => panic!("timed out after {WAIT_DEADLINE:?} waiting for {what}"),
        }
    }
}

/// SQLSTATE and message of a tokio-postgres error (panics if it is not a server error).
pub fn db_error(e: &tokio_postgres::Error) -> (String, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("expected a server error, got: {e}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

/// Tenants and names of all customers visible to `client`.
pub async fn visible_customers(client: &Client) -> Vec<(String, String)> {
    client
        .query("SELECT tenant_id, name FROM customers ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// A raw protocol client (messages built with `postgres-protocol`), for sequences no
/// driver sends: pipelines with errors, Flush orderings, FunctionCall.
pub struct Raw {
    s: tokio::net::TcpStream,
    /// BackendKeyData: (pid, secret).
    pub key: Option<(i32, i32)>,
}

/// One backend message: tag and body.
pub type RawMessage = (u8, Vec<u8>);

impl Raw {
    /// Starts up as `user` on database `app`, answering a cleartext password request
    /// with `password`, and reads up to the first ReadyForQuery.
    pub async fn connect(port: u16, user: &str, password: &str) -> Raw {
        Raw::connect_with(port, user, password, &[]).await.0
    }

    /// Like [`Raw::connect`] with extra startup parameters; also returns the
    /// ParameterStatus values the login reported, in order.
    pub async fn connect_with(
        port: u16,
        user: &str,
        password: &str,
        startup: &[(&str, &str)],
    ) -> (Raw, Vec<(String, String)>) {
        use postgres_protocol::message::frontend;
        let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("raw connect");
        let mut raw = Raw { s, key: None };
        let mut buf = bytes::BytesMut::new();
        let params = [("user", user), ("database", "app")]
            .into_iter()
            .chain(startup.iter().copied());
        frontend::startup_message(params, &mut buf).unwrap();
        raw.send(&buf).await;
        let mut reported = Vec::new();
        loop {
            let (tag, body) = raw.read().await;
            match (tag, body.get(..4)) {
                (b'R', Some([0, 0, 0, 3])) => {
                    let mut buf = bytes::BytesMut::new();
                    frontend::password_message(password.as_bytes(), &mut buf).unwrap();
                    raw.send(&buf).await;
                }
                (b'K', Some(pid)) => {
                    let secret = body.get(4..8).expect("BackendKeyData secret");
                    raw.key = Some((
                        i32::from_be_bytes(pid.try_into().unwrap()),
                        i32::from_be_bytes(secret.try_into().unwrap()),
                    ));
                }
                (b'S', _) => {
                    let mut parts = body.split(|b| *b == 0);
                    let name = String::from_utf8_lossy(parts.next().unwrap_or_default());
                    let value = String::from_utf8_lossy(parts.next().unwrap_or_default());
                    reported.push((name.into_owned(), value.into_owned()));
                }
                (b'E', _) => panic!("raw login failed: {}", String::from_utf8_lossy(&body)),
                (b'Z', _) => return (raw, reported),
                _ => {}
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.s.write_all(bytes).await.unwrap();
    }

    /// The next backend message.
    pub async fn read(&mut self) -> RawMessage {
        use tokio::io::AsyncReadExt;
        let mut head = [0u8; 5];
        self.s.read_exact(&mut head).await.unwrap();
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        self.s.read_exact(&mut body).await.unwrap();
        (head[0], body)
    }

    /// The next backend message, or `None` once the connection is closed.
    pub async fn try_read(&mut self) -> Option<RawMessage> {
        use tokio::io::AsyncReadExt;
        let mut head = [0u8; 5];
        self.s.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len.checked_sub(4)?];
        self.s.read_exact(&mut body).await.ok()?;
        Some((head[0], body))
    }

    /// Messages up to and including the `n`th ReadyForQuery (10 s at most).
    pub async fn until_ready(&mut self, n: usize) -> Vec<RawMessage> {
        let read = async {
            let mut out = Vec::new();
            let mut seen = 0;
            while seen < n {
                let m = self.read().await;
                seen += usize::from(m.0 == b'Z');
                out.push(m);
            }
            out
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("ReadyForQuery within 10 s")
    }
}

/// Messages as comparable lines: the tag, plus SQLSTATE and message for errors and the
/// status for ReadyForQuery (other bodies vary between servers: pids, timings).
pub fn summarize(msgs: &[RawMessage]) -> Vec<String> {
    msgs.iter()
        .map(|(tag, body)| match tag {
            b'E' => {
                let mut msg = vec![*tag, 0, 0, 0, 0];
                msg.extend_from_slice(body);
                let f = rlsgate::wire::protocol::parse_error_fields(&msg);
                format!("E {} {}", f.code, f.message)
            }
            b'Z' => format!("Z {}", body.first().map_or('?', |b| *b as char)),
            t => (*t as char).to_string(),
        })
        .collect()
}

/// The rows of a simple-query reply as text (NULL as "NULL").
pub fn rows(msgs: &[tokio_postgres::SimpleQueryMessage]) -> Vec<Vec<String>> {
    msgs.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// The text values of the DataRows in `msgs` (NULL as "NULL").
pub fn data_rows(msgs: &[RawMessage]) -> Vec<Vec<String>> {
    msgs.iter()
        .filter(|(tag, _)| *tag == b'D')
        .map(|(_, body)| {
            let n = u16::from_be_bytes([body[0], body[1]]) as usize;
            let mut pos = 2;
            let mut row = Vec::with_capacity(n);
            for _ in 0..n {
                let len = i32::from_be_bytes(body[pos..pos + 4].try_into().unwrap());
                pos += 4;
                if len < 0 {
                    row.push("NULL".to_owned());
                    continue;
                }
                let end = pos + len as usize;
                row.push(String::from_utf8_lossy(&body[pos..end]).into_owned());
                pos = end;
            }
            row
        })
        .collect()
}

/// Bind of `stmt` to the unnamed portal with text parameters.
pub fn bind(buf: &mut bytes::BytesMut, stmt: &str, params: &[&str]) {
    let r = postgres_protocol::message::frontend::bind(
        "",
        stmt,
        [],
        params.iter(),
        |p, b| {
            b.extend_from_slice(p.as_bytes());
            Ok(postgres_protocol::IsNull::No)
        },
        [],
        buf,
    );
    assert!(r.is_ok());
}

/// Everything until `n` ReadyForQuery, the end of the session or 10 s.
pub async fn collect(r: &mut Raw, n: usize) -> Vec<RawMessage> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let mut seen = 0;
        while seen < n {
            match r.try_read().await {
                Some(m) => {
                    seen += usize::from(m.0 == b'Z');
                    out.push(m);
                }
                None => return,
            }
        }
    })
    .await;
    out
}

/// The one value of a one-row, one-column query without parameters (panics naming the
/// SQL on an error).
pub async fn scalar<T>(client: &Client, sql: &str) -> T
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}
