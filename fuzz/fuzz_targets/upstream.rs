//! An upstream server connection reading what a (hostile or broken) server sends:
//! `upstream::conn::ServerConn` end to end over a unix socket whose server side
//! replays the input. Covers the startup exchange (authentication requests, SCRAM,
//! MD5, ParameterStatus, BackendKeyData, ErrorResponse) and the proxy's own queries
//! (`rls_exemption`, `query_rows`, `query_rows_many`, `simple_query`: DataRow,
//! ReadyForQuery, errors, COPY refusal).
//!
//! Input: the server's bytes. Invariants: every call ends once the server's bytes end
//! (no hang, no panic); a FATAL server error marks the connection broken.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rlsgate::config::{SslMode, UpstreamHost, UpstreamTarget};
use rlsgate::upstream::conn::{Connector, ServerConn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

const PORT: u16 = 5432;
const LIMIT: Duration = Duration::from_secs(10);

struct Setup {
    listener: UnixListener,
    connector: Connector,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let dir = common::scratch_dir().to_path_buf();
        let path = dir.join(format!(".s.PGSQL.{PORT}"));
        let _ = std::fs::remove_file(&path);
        let listener = common::runtime().block_on(async { UnixListener::bind(&path).unwrap() });
        Setup {
            listener,
            connector: Connector {
                target: UpstreamTarget {
                    host: UpstreamHost::Unix { dir, port: PORT },
                    user: "rlsgate".into(),
                    database: "app".into(),
                    password: Some("pencil".into()),
                    sslmode: SslMode::Disable,
                    root_cert_file: None,
                    connect_timeout: LIMIT,
                },
                tls: None,
            },
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let s = setup();
    let input = data.to_vec();
    common::runtime().block_on(async {
        // The fake server: says everything at once, then half-closes and drains.
        let server = async {
            let (stream, _) = s.listener.accept().await.unwrap();
            let (mut r, mut w) = stream.into_split();
            let write = async move {
                let _ = w.write_all(&input).await;
                let _ = w.shutdown().await;
                w
            };
            let drain = async move {
                let mut sink = Vec::new();
                let _ = r.read_to_end(&mut sink).await;
            };
            let _ = tokio::join!(write, drain);
        };
        let proxy = async {
            let mut conn = match ServerConn::connect(&s.connector).await {
                Ok(c) => c,
                Err(_) => return,
            };
            let _ = conn.rls_exemption().await;
            if let Err(e) = conn.query_rows("SELECT 1").await {
                if e.is_fatal_for_connection()
                    && matches!(e, rlsgate::upstream::conn::BackendError::Server(_))
                {
                    assert!(conn.broken, "FATAL error left the connection usable");
                }
            }
            let _ = conn.query_rows_many(&["SELECT 1", "SELECT 2"]).await;
            let _ = conn.simple_query("SELECT 3").await;
            conn.terminate().await;
        };
        tokio::time::timeout(LIMIT, async { tokio::join!(server, proxy) })
            .await
            .expect("upstream connection hangs on a server that closed");
    });
});
