//! One upstream server connection: connect, TLS, startup, SCRAM/MD5/cleartext auth,
//! the proxy's own queries, and the transaction status seen so far.

use std::time::Instant;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use futures::FutureExt;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::config::{UpstreamHost, UpstreamTarget};
use crate::wire::protocol::{self, ErrorFields, TxStatus};
use crate::wire::stream::UpstreamStream;

/// Failure on an upstream connection.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("upstream I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("upstream TLS: {0}")]
    Tls(String),
    #[error("upstream server error {}: {}", .0.code, .0.message)]
    Server(ErrorFields),
    #[error("upstream protocol: {0}")]
    Protocol(String),
    #[error("upstream authentication: {0}")]
    Auth(String),
    #[error("upstream connect timed out")]
    Timeout,
    #[error("upstream role {role} is {why}: row-level security does not apply to it, so rlsgate will not hand its connections to clients (fix the role, or start with --allow-unsafe-upstream)")]
    UnsafeRole { role: String, why: &'static str },
}

impl BackendError {
    /// True when the connection can no longer be trusted and must be discarded.
    pub fn is_fatal_for_connection(&self) -> bool {
        !matches!(self, BackendError::Server(f) if f.severity != "FATAL" && f.severity != "PANIC")
    }
}

/// Where and how to reach the upstream, resolved once from config.
pub struct Connector {
    pub target: UpstreamTarget,
    pub tls: Option<tokio_rustls::TlsConnector>,
}

/// An authenticated connection to PostgreSQL, at a ReadyForQuery boundary when idle.
pub struct ServerConn {
    pub stream: UpstreamStream,
    /// Bytes read from the server and not yet consumed.
    pub rbuf: BytesMut,
    pid: i32,
    secret: i32,
    /// ParameterStatus values reported by the server, in arrival order, updated in place.
    params: Vec<(String, String)>,
    pub tx: TxStatus,
    pub created: Instant,
    pub last_used: Instant,
    /// Set when the connection is in an unknown protocol state; it is then discarded.
    pub broken: bool,
    /// Named statements prepared on this server by the proxy (transaction pooling).
    pub statements: crate::upstream::held::ServerStatements,
    /// NoticeResponses to the proxy's own statements, for the client (startup warnings
    /// such as a truncated application_name).
    pub notices: Vec<BytesMut>,
    /// The context this server holds (set by the proxy), if known.
    pub context: Option<crate::tenant::ContextFingerprint>,
    /// A client ran something on it whose effect on session state rlsgate cannot rule
    /// out (see `inspect::Analysis::clean`): the next other session gets a
    /// `tenant::SWITCH_RESET` first.
    pub dirty: bool,
    /// Fields of the last ErrorResponse seen during startup.
    last_error_fields: ErrorFields,
}

impl ServerConn {
    /// Opens, (optionally) encrypts and authenticates a new connection.
    pub async fn connect(c: &Connector) -> Result<ServerConn, BackendError> {
        let t = &c.target;
        let stream = match &t.host {
            UpstreamHost::Tcp { host, port } => {
                let tcp = TcpStream::connect((host.as_str(), *port)).await?;
                tcp.set_nodelay(true)?;
                match &c.tls {
                    Some(tls) => UpstreamStream::Tls(Box::new(start_tls(tcp, tls, host).await?)),
                    None => UpstreamStream::Tcp(tcp),
                }
            }
            UpstreamHost::Unix { dir, port } => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                UpstreamStream::Unix(UnixStream::connect(path).await?)
            }
        };
        let now = Instant::now();
        let mut conn = ServerConn {
            stream,
            rbuf: BytesMut::with_capacity(16 * 1024),
            pid: 0,
            secret: 0,
            params: Vec::new(),
            tx: TxStatus::Idle,
            created: now,
            last_used: now,
            broken: false,
            last_error_fields: ErrorFields::default(),
            context: None,
            dirty: false,
            notices: Vec::new(),
            statements: Default::default(),
        };
        conn.startup(t).await?;
        Ok(conn)
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn secret(&self) -> i32 {
        self.secret
    }

    /// ParameterStatus values as the server reported them.
    pub fn params(&self) -> &[(String, String)] {
        &self.params
    }

    /// Records a ParameterStatus seen while forwarding.
    pub fn note_parameter(&mut self, name: &str, value: &str) {
        match self.params.iter_mut().find(|(n, _)| n == name) {
            Some(p) => value.clone_into(&mut p.1),
            None => self.params.push((name.to_owned(), value.to_owned())),
        }
    }

    async fn startup(&mut self, t: &UpstreamTarget) -> Result<(), BackendError> {
        let mut buf = BytesMut::new();
        let params = [
            ("user", t.user.as_str()),
            ("database", t.database.as_str()),
            ("application_name", "rlsgate"),
            ("client_encoding", "UTF8"),
        ];
        frontend::startup_message(params.iter().copied(), &mut buf)?;
        self.stream.write_all(&buf).await?;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let msg = self.read_message().await?;
            buf.clear();
            match msg {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    let pw = password(t)?;
                    frontend::password_message(pw.as_bytes(), &mut buf)?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let pw = password(t)?;
                    let hash = md5_hash(t.user.as_bytes(), pw.as_bytes(), body.salt());
                    frontend::password_message(hash.as_bytes(), &mut buf)?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechs = body.mechanisms();
                    let mut found = false;
                    while let Some(m) = mechs.next().map_err(proto)? {
                        found |= m == SCRAM_SHA_256;
                    }
                    if !found {
                        return Err(BackendError::Auth("server offers no SCRAM-SHA-256".into()));
                    }
                    let s =
                        ScramSha256::new(password(t)?.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut buf)?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| proto_msg("unexpected SASL continue"))?;
                    s.update(body.data())
                        .map_err(|e| BackendError::Auth(e.to_string()))?;
                    frontend::sasl_response(s.message(), &mut buf)?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| proto_msg("unexpected SASL final"))?;
                    s.finish(body.data())
                        .map_err(|e| BackendError::Auth(e.to_string()))?;
                }
                Message::ParameterStatus(body) => {
                    let name = body.name().map_err(proto)?.to_owned();
                    let value = body.value().map_err(proto)?.to_owned();
                    self.note_parameter(&name, &value);
                }
                Message::BackendKeyData(body) => {
                    self.pid = body.process_id();
                    self.secret = body.secret_key();
                }
                Message::ReadyForQuery(body) => {
                    self.tx = TxStatus::from_byte(body.status()).unwrap_or(TxStatus::Idle);
                    return Ok(());
                }
                Message::ErrorResponse(_) => return Err(self.last_error()),
                Message::NoticeResponse(_) => {}
                _ => return Err(proto_msg("unexpected message during startup")),
            }
            if !buf.is_empty() {
                self.stream.write_all(&buf).await?;
            }
        }
    }

    /// The error fields of the ErrorResponse that `read_message` just returned.
    fn last_error(&mut self) -> BackendError {
        BackendError::Server(std::mem::take(&mut self.last_error_fields))
    }

    /// Reads one whole message with postgres-protocol's parser (startup phase only).
    async fn read_message(&mut self) -> Result<Message, BackendError> {
        loop {
            if let Some((tag, len)) =
                protocol::header(&self.rbuf).map_err(|e| proto_msg(&e.to_string()))?
            {
                if tag == protocol::backend::ERROR_RESPONSE && self.rbuf.len() >= len {
                    self.last_error_fields = protocol::parse_error_fields(&self.rbuf[..len]);
                }
            }
            if let Some(msg) = Message::parse(&mut self.rbuf).map_err(proto)? {
                return Ok(msg);
            }
            self.fill().await?;
        }
    }

    /// Reads one whole message (the proxy's own exchanges; forwarding streams instead).
    async fn next_message(&mut self) -> Result<(u8, BytesMut), BackendError> {
        loop {
            if let Some((tag, len)) =
                protocol::header(&self.rbuf).map_err(|e| proto_msg(&e.to_string()))?
            {
                if self.rbuf.len() >= len {
                    return Ok((tag, self.rbuf.split_to(len)));
                }
            }
            self.fill().await?;
        }
    }

    /// Reads more bytes into `rbuf`; EOF is an error.
    pub async fn fill(&mut self) -> Result<(), BackendError> {
        self.rbuf.reserve(8192);
        let n = self.stream.read_buf(&mut self.rbuf).await?;
        if n == 0 {
            self.broken = true;
            return Err(BackendError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }

    /// Sends `out` (the proxy's own messages, ending in Sync or a simple Query) and
    /// consumes the replies up to `expected` ReadyForQuery messages. The first server
    /// error is returned after the stream is back at a boundary. ParameterStatus values
    /// are recorded so clients can be told about them.
    pub async fn exchange(&mut self, out: &[u8], expected: usize) -> Result<(), BackendError> {
        if let Err(e) = self.stream.write_all(out).await {
            self.broken = true;
            return Err(e.into());
        }
        let mut first_error: Option<ErrorFields> = None;
        let mut seen = 0;
        while seen < expected {
            let (tag, msg) = self.next_message().await?;
            match tag {
                protocol::backend::READY_FOR_QUERY => {
                    self.tx = TxStatus::from_byte(msg.get(5).copied().unwrap_or(0))
                        .ok_or_else(|| proto_msg("bad ReadyForQuery"))?;
                    seen += 1;
                }
                protocol::backend::ERROR_RESPONSE => {
                    let fields = protocol::parse_error_fields(&msg);
                    if fields.severity == "FATAL" || fields.severity == "PANIC" {
                        self.broken = true;
                        return Err(BackendError::Server(fields));
                    }
                    first_error.get_or_insert(fields);
                }
                protocol::backend::PARAMETER_STATUS => {
                    if let Some((n, v)) = protocol::parse_parameter_status(&msg) {
                        let (n, v) = (n.to_owned(), v.to_owned());
                        self.note_parameter(&n, &v);
                    }
                }
                protocol::backend::NOTICE_RESPONSE => self.notices.push(msg),
                protocol::backend::COPY_IN_RESPONSE | protocol::backend::COPY_BOTH_RESPONSE => {
                    self.broken = true;
                    return Err(proto_msg("unexpected COPY in proxy query"));
                }
                _ => {}
            }
        }
        self.last_used = Instant::now();
        match first_error {
            Some(f) => Err(BackendError::Server(f)),
            None => Ok(()),
        }
    }

    /// Runs one simple query and returns the text columns of its first row.
    pub async fn query_row(&mut self, sql: &str) -> Result<Vec<Option<String>>, BackendError> {
        self.query_rows(sql)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| proto_msg("query returned no row"))
    }

    /// Runs one simple query and returns the text columns of its rows.
    pub async fn query_rows(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, BackendError> {
        let mut buf = BytesMut::new();
        protocol::put_query(&mut buf, sql);
        if let Err(e) = self.stream.write_all(&buf).await {
            self.broken = true;
            return Err(e.into());
        }
        self.read_rows().await?
    }

    /// Runs simple queries in one write (one round trip); each has its own result.
    pub async fn query_rows_many(&mut self, queries: &[&str]) -> Result<Vec<Rows>, BackendError> {
        let mut buf = BytesMut::new();
        for q in queries {
            protocol::put_query(&mut buf, q);
        }
        if let Err(e) = self.stream.write_all(&buf).await {
            self.broken = true;
            return Err(e.into());
        }
        let mut out = Vec::with_capacity(queries.len());
        for _ in queries {
            out.push(self.read_rows().await?);
        }
        Ok(out)
    }

    /// Reads one simple query's result up to its ReadyForQuery: the rows, or the error.
    async fn read_rows(&mut self) -> Result<Rows, BackendError> {
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (tag, msg) = self.next_message().await?;
            match tag {
                b'D' => rows.push(parse_data_row(&msg)),
                protocol::backend::ERROR_RESPONSE => {
                    let fields = protocol::parse_error_fields(&msg);
                    if fields.severity == "FATAL" || fields.severity == "PANIC" {
                        self.broken = true;
                        return Err(BackendError::Server(fields));
                    }
                    error.get_or_insert(fields);
                }
                protocol::backend::PARAMETER_STATUS => {
                    // What the server now holds (a reset reports the values it restored).
                    if let Some((n, v)) = protocol::parse_parameter_status(&msg) {
                        let (n, v) = (n.to_owned(), v.to_owned());
                        self.note_parameter(&n, &v);
                    }
                }
                protocol::backend::COPY_IN_RESPONSE | protocol::backend::COPY_BOTH_RESPONSE => {
                    self.broken = true;
                    return Err(proto_msg("unexpected COPY in proxy query"));
                }
                protocol::backend::READY_FOR_QUERY => {
                    self.tx = TxStatus::from_byte(msg.get(5).copied().unwrap_or(0))
                        .ok_or_else(|| proto_msg("bad ReadyForQuery"))?;
                    break;
                }
                _ => {}
            }
        }
        self.last_used = Instant::now();
        Ok(match error {
            Some(e) => Err(BackendError::Server(e)),
            None => Ok(rows),
        })
    }

    /// Runs one simple query and waits for its ReadyForQuery.
    pub async fn simple_query(&mut self, sql: &str) -> Result<(), BackendError> {
        let mut buf = BytesMut::new();
        protocol::put_query(&mut buf, sql);
        self.exchange(&buf, 1).await
    }

    /// True if the idle connection still looks usable: no EOF and no unsolicited bytes
    /// (an idle server that says something is about to close, e.g. on shutdown).
    pub fn is_alive(&mut self) -> bool {
        if self.broken || !self.rbuf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        match self.stream.read(&mut probe).now_or_never() {
            None => true,
            Some(Ok(_)) | Some(Err(_)) => false,
        }
    }

    /// Why row-level security would not apply to this connection's role, if it would
    /// not: the startup's `is_superuser` report, else `rolsuper`/`rolbypassrls` of the
    /// current user (one round trip). Run on every new connection, so a role that became
    /// unsafe after rlsgate started (or could not be checked at start) is never used.
    pub async fn rls_exemption(&mut self) -> Result<Option<&'static str>, BackendError> {
        if self
            .params
            .iter()
            .any(|(n, v)| n == "is_superuser" && v == "on")
        {
            return Ok(Some("a superuser"));
        }
        let row = self
            .query_row(
                "SELECT rolsuper::pg_catalog.text, rolbypassrls::pg_catalog.text \
                 FROM pg_catalog.pg_roles \
                 WHERE rolname OPERATOR(pg_catalog.=) current_user",
            )
            .await?;
        Ok(match (row.first(), row.get(1)) {
            (Some(Some(s)), _) if s == "true" => Some("a superuser"),
            (_, Some(Some(b))) if b == "true" => Some("BYPASSRLS"),
            (Some(Some(_)), Some(Some(_))) => None,
            _ => Some("not found in pg_roles"),
        })
    }

    /// Sends Terminate and closes (best effort).
    pub async fn terminate(mut self) {
        let mut buf = BytesMut::new();
        protocol::put_terminate(&mut buf);
        let _ = self.stream.write_all(&buf).await;
        let _ = self.stream.shutdown().await;
    }
}

/// The rows of one query of [`ServerConn::query_rows_many`] (text values), or its error.
pub type Rows = Result<Vec<Vec<Option<String>>>, BackendError>;

/// Sends a CancelRequest for `pid`/`secret` on a fresh connection.
pub async fn send_cancel(c: &Connector, pid: i32, secret: i32) -> Result<(), BackendError> {
    let mut buf = BytesMut::new();
    frontend::cancel_request(pid, secret, &mut buf);
    match &c.target.host {
        UpstreamHost::Tcp { host, port } => {
            let tcp = TcpStream::connect((host.as_str(), *port)).await?;
            match &c.tls {
                Some(tls) => {
                    let mut s = start_tls(tcp, tls, host).await?;
                    s.write_all(&buf).await?;
                    let _ = s.read(&mut [0u8; 1]).await;
                }
                None => {
                    let mut s = tcp;
                    s.write_all(&buf).await?;
                    let _ = s.read(&mut [0u8; 1]).await;
                }
            }
        }
        UpstreamHost::Unix { dir, port } => {
            let mut s = UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).await?;
            s.write_all(&buf).await?;
            let _ = s.read(&mut [0u8; 1]).await;
        }
    }
    Ok(())
}

async fn start_tls(
    mut tcp: TcpStream,
    tls: &tokio_rustls::TlsConnector,
    host: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, BackendError> {
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    tcp.write_all(&buf).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        return Err(BackendError::Tls(
            "server does not support SSL but sslmode requires it".into(),
        ));
    }
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| BackendError::Tls(format!("invalid server name {host}: {e}")))?;
    tls.connect(name, tcp)
        .await
        .map_err(|e| BackendError::Tls(e.to_string()))
}

fn parse_data_row(msg: &[u8]) -> Vec<Option<String>> {
    // Malformed rows end early instead of panicking.
    let body = protocol::body(msg);
    let mut out = Vec::new();
    let Some(n) = body.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
        return out;
    };
    let mut pos = 2;
    for _ in 0..n {
        let Some(len) = body
            .get(pos..pos + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        else {
            break;
        };
        pos += 4;
        if len < 0 {
            out.push(None);
            continue;
        }
        let Some(value) = body.get(pos..pos + len as usize) else {
            break;
        };
        out.push(Some(String::from_utf8_lossy(value).into_owned()));
        pos += len as usize;
    }
    out
}

fn password(t: &UpstreamTarget) -> Result<&str, BackendError> {
    t.password.as_deref().ok_or_else(|| {
        BackendError::Auth(
            "server asks for a password; set upstream.password_env or upstream.password_file"
                .into(),
        )
    })
}

fn proto(e: std::io::Error) -> BackendError {
    BackendError::Protocol(e.to_string())
}

fn proto_msg(m: &str) -> BackendError {
    BackendError::Protocol(m.to_owned())
}
