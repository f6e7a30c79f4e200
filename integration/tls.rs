//! TLS towards clients: sslmode=require works with the test certificate; a token over
//! plaintext TCP is refused when TLS is required.

use crate::harness::{db_error, Env};
use rlsgate::config::TlsMode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_over_tls_and_plaintext_refused_when_required() {
    let env = Env::with(|c| c.tls.mode = TlsMode::Require).await;
    let token = env.token("acme");
    let out = env.psql(
        "alice",
        &token,
        "require",
        &[
            "-At",
            "-c",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            "-c",
            "SELECT count(*) FROM customers",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // pg_stat_ssl describes the proxy->server leg (plaintext here); the client leg is TLS,
    // which the next psql call proves by failing without it.
    assert!(stdout.trim_end().ends_with('3'), "{stdout}");

    let connects = env.upstream_connects();
    let err = env
        .connect_token("alice", &token)
        .await
        .err()
        .expect("plaintext refused");
    let (code, msg) = db_error(&err);
    assert_eq!(code, "28000");
    assert!(msg.contains("TLS is required"), "{msg}");

    let out = env.psql("alice", &token, "disable", &["-c", "SELECT 1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TLS is required"));
    assert_eq!(
        env.upstream_connects(),
        connects,
        "refused clients open no upstream connection"
    );
}

/// PostgreSQL 17 direct TLS: the client starts TLS at once (ALPN "postgresql"), no
/// SSLRequest. psql 15 cannot do this, so a raw rustls client stands in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_with_alpn() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Env::with(|c| c.tls.mode = TlsMode::Require).await;
    let cert_pem = std::fs::read(env.config.tls.cert_file.as_ref().unwrap()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(&cert_pem) {
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    let tcp = tokio::net::TcpStream::connect(env.proxy.addr)
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    // Startup, then the token as the cleartext password, then a query.
    let mut startup = 196608i32.to_be_bytes().to_vec();
    for part in ["user", "alice", "database", "app", ""] {
        startup.extend_from_slice(part.as_bytes());
        startup.push(0);
    }
    let mut msg = ((startup.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend(startup);
    s.write_all(&msg).await.unwrap();
    let mut auth = [0u8; 9];
    s.read_exact(&mut auth).await.unwrap();
    assert_eq!(
        (auth[0], auth[8]),
        (b'R', 3),
        "AuthenticationCleartextPassword"
    );
    let token = env.token("acme");
    let mut pw = vec![b'p'];
    pw.extend_from_slice(&((token.len() + 5) as i32).to_be_bytes());
    pw.extend_from_slice(token.as_bytes());
    pw.push(0);
    let q = b"SELECT count(*) FROM customers\0";
    pw.push(b'Q');
    pw.extend_from_slice(&((q.len() + 4) as i32).to_be_bytes());
    pw.extend_from_slice(q);
    s.write_all(&pw).await.unwrap();
    let mut seen = Vec::new();
    let mut ready = 0;
    while ready < 2 {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await.unwrap();
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).await.unwrap();
        if head[0] == b'Z' {
            ready += 1;
        }
        if head[0] == b'D' {
            seen = body;
        }
    }
    // DataRow: 1 column, length 1, "3".
    assert_eq!(&seen[..], &[0, 1, 0, 0, 0, 1, b'3']);
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .map(|c| c.unwrap())
        .collect()
}
