//! `rlsgate demo`: a throwaway PostgreSQL with the sample multi-tenant schema, the proxy
//! in front of it (TLS with a self-signed certificate), and tokens to try.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::auth::jwt::{mint, MintKey, MintOptions};
use crate::config::{
    AuthConfig, Config, JwtConfig, ListenConfig, PoolConfig, SslMode, TenantConfig, TlsConfig,
    TlsMode, UpstreamConfig,
};
use crate::dev::pgtemp::{TempPostgres, TempPostgresOptions, DEMO_SQL};
use crate::proxy::server::{RunningServer, Server};

/// `rlsgate demo` options.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Port for the proxy (0 picks a free one).
    #[arg(long, default_value_t = 6432)]
    pub port: u16,
    /// Run the printed psql lines once, check the rows each tenant sees, and exit.
    #[arg(long)]
    pub smoke: bool,
}

/// Everything the demo started; dropping it stops the proxy's database.
pub struct Demo {
    pub pg: TempPostgres,
    pub server: RunningServer,
    pub secret: String,
    pub dir: tempfile::TempDir,
}

/// Starts PostgreSQL, loads the schema and starts the proxy.
pub async fn start(port: u16) -> anyhow::Result<Demo> {
    let pg = tokio::task::spawn_blocking(|| TempPostgres::start(TempPostgresOptions::default()))
        .await?
        .context("starting the demo PostgreSQL")?;
    pg.psql("postgres", "CREATE DATABASE app")?;
    pg.psql("app", DEMO_SQL)?;
    let dir = tempfile::Builder::new().prefix("rlsgate-demo-").tempdir()?;
    let secret = random_secret();
    let config = demo_config(&pg, dir.path(), &secret, port)?;
    config.validate()?;
    store_seal_secret(&pg, &config)?;
    let server = Server::bind(config).await?.spawn();
    Ok(Demo {
        pg,
        server,
        secret,
        dir,
    })
}

impl Demo {
    /// A token for `tenant`, signed with the demo secret.
    pub fn token(&self, tenant: &str, sub: &str) -> anyhow::Result<String> {
        Ok(mint(&MintOptions {
            alg: jsonwebtoken::Algorithm::HS256,
            key: MintKey::Secret(self.secret.as_bytes().to_vec()),
            tenant: Some(serde_json::Value::String(tenant.into())),
            tenant_claim: "tenant_id".into(),
            sub: Some(sub.into()),
            role: None,
            ttl: Duration::from_secs(8 * 3600),
            extra_claims: Vec::new(),
            issuer: None,
            audience: None,
            kid: None,
        })?)
    }

    /// A ready-to-paste psql command line for a token.
    pub fn psql_line(&self, user: &str, token: &str) -> String {
        format!(
            "PGPASSWORD='{token}' psql \"host=127.0.0.1 port={} dbname=app user={user} sslmode=require\"",
            self.server.addr.port()
        )
    }
}

/// Stores the seal secret of `config` (when sealed) in `pg`'s `app` database with
/// `rlsgate.set_seal_secret` (policies/sealed.sql must be installed there).
pub fn store_seal_secret(pg: &TempPostgres, config: &Config) -> anyhow::Result<()> {
    let Some(key) = config.tenant.seal_secret()? else {
        return Ok(());
    };
    let key = String::from_utf8(key).context("the seal secret is not UTF-8")?;
    pg.psql(
        "app",
        &format!(
            "SELECT rlsgate.set_seal_secret('{}')",
            key.replace('\'', "''")
        ),
    )?;
    Ok(())
}

/// The demo's configuration: proxy on 127.0.0.1:`port` in front of `pg`'s `app`
/// database as `app_rls`, HS256 tokens signed with `secret`, TLS preferred with a fresh
/// self-signed certificate, and the sealed tenant context with a fresh seal secret
/// (store it with [`store_seal_secret`]). Files (secrets, password, certificate) are
/// written to `dir`.
pub fn demo_config(
    pg: &TempPostgres,
    dir: &Path,
    secret: &str,
    port: u16,
) -> anyhow::Result<Config> {
    let secret_file = write_file(dir, "jwt_secret", secret)?;
    let password_file = write_file(dir, "upstream_password", "app_rls_pw")?;
    let seal_secret_file = write_file(dir, "seal_secret", &random_secret())?;
    let (cert_file, key_file) = self_signed(dir)?;
    Ok(Config {
        listen: ListenConfig {
            addr: ([127, 0, 0, 1], port).into(),
            ..ListenConfig::default()
        },
        tls: TlsConfig {
            mode: TlsMode::Prefer,
            cert_file: Some(cert_file),
            key_file: Some(key_file),
            allow_plaintext_auth: false,
        },
        auth: AuthConfig {
            jwt: JwtConfig {
                algorithms: vec!["HS256".into()],
                secret_file: Some(secret_file),
                ..JwtConfig::default()
            },
        },
        upstream: UpstreamConfig {
            url: format!("postgres://app_rls@127.0.0.1:{}/app", pg.port()),
            password_env: None,
            password_file: Some(password_file),
            sslmode: SslMode::Disable,
            root_cert_file: None,
            connect_timeout: Duration::from_secs(5),
            allow_unsafe_role: false,
        },
        pool: PoolConfig {
            size: 4,
            ..PoolConfig::default()
        },
        tenant: TenantConfig {
            setting: "app.current_tenant".into(),
            claims: BTreeMap::from([("app.user_id".to_owned(), "sub".to_owned())]),
            seal_secret_file: Some(seal_secret_file),
            ..TenantConfig::default()
        },
        guard: Default::default(),
        admin: Default::default(),
    })
}

/// Runs the demo until Ctrl-C (or once, with `--smoke`).
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let demo = start(args.port).await?;
    let acme = demo.token("acme", "alice")?;
    let globex = demo.token("globex", "bob")?;
    println!("rlsgate demo is running");
    println!(
        "  PostgreSQL (throwaway): 127.0.0.1:{} (data in {})",
        demo.pg.port(),
        demo.pg.data_dir().display()
    );
    println!(
        "  rlsgate:                127.0.0.1:{} (TLS with a self-signed certificate)",
        demo.server.addr.port()
    );
    println!(
        "  schema:                 policies/demo.sql (customers, invoices; RLS on tenant_id,\n                          sealed context from policies/sealed.sql)\n"
    );
    println!(
        "Tenant acme (alice):\n  {}\n",
        demo.psql_line("alice", &acme)
    );
    println!(
        "Tenant globex (bob):\n  {}\n",
        demo.psql_line("bob", &globex)
    );
    println!("Try:  SELECT tenant_id, name FROM customers;   -- only your tenant's rows");
    println!("      SHOW app.current_tenant;  SELECT rlsgate.tenant();  -- the verified tenant");
    println!("      INSERT INTO customers(name) VALUES ('new') RETURNING tenant_id;");
    println!("Mint more tokens with:  RLSGATE_JWT_SECRET='{}' rlsgate token --secret-env RLSGATE_JWT_SECRET --tenant acme --sub carol\n", demo.secret);
    if args.smoke {
        let result = smoke(&demo, &acme, &globex).await;
        demo.server.stop().await;
        return result;
    }
    println!("Press Ctrl-C to stop and remove everything.");
    crate::shutdown::wait_for_signal().await;
    demo.server.stop().await;
    Ok(())
}

/// Runs psql through the proxy as each tenant and checks what each sees.
async fn smoke(demo: &Demo, acme: &str, globex: &str) -> anyhow::Result<()> {
    let port = demo.server.addr.port();
    for (user, token, want) in [("alice", acme, "acme|3"), ("bob", globex, "globex|2")] {
        let out = tokio::process::Command::new("psql")
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1"])
            .arg(format!(
                "host=127.0.0.1 port={port} dbname=app user={user} sslmode=require"
            ))
            .args(["-c", "SELECT tenant_id, count(*) FROM customers GROUP BY 1"])
            .env("PGPASSWORD", token)
            .output()
            .await
            .context("running psql (install the postgresql-client package)")?;
        let got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        anyhow::ensure!(
            out.status.success() && got == want,
            "smoke check for {user}: expected {want:?}, got {got:?} ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        println!("smoke: {user} sees {got}");
    }
    Ok(())
}

pub fn random_secret() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn write_file(dir: &Path, name: &str, content: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, content)?;
    Ok(path)
}

/// Writes a self-signed certificate for `localhost`/127.0.0.1 and returns (cert, key) paths.
pub fn self_signed(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let cert = rcgen::generate_simple_self_signed(names)?;
    let cert_path = write_file(dir, "server.crt", &cert.cert.pem())?;
    let key_path = write_file(dir, "server.key", &cert.key_pair.serialize_pem())?;
    Ok((cert_path, key_path))
}
