//! Command line: `serve`, `token`, `check-config`, `demo`, `policy`, `doctor`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::auth::jwt::{mint, MintKey, MintOptions};
use crate::config::Config;
use crate::logging::{self, LogFormat};
use crate::proxy::server::Server;

#[derive(Parser)]
#[command(
    name = "rlsgate",
    version,
    about = "PostgreSQL row-level-security enforcement proxy"
)]
struct Cli {
    /// Log output format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "RLSGATE_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        #[arg(long, short, env = "RLSGATE_CONFIG")]
        config: PathBuf,
        /// Start even if the upstream role is superuser or has BYPASSRLS (RLS would then
        /// filter nothing): for migrations and emergencies only.
        #[arg(long)]
        allow_unsafe_upstream: bool,
    },
    /// Validate a configuration file (and its environment overrides) and exit.
    CheckConfig {
        #[arg(long, short, env = "RLSGATE_CONFIG")]
        config: PathBuf,
    },
    /// Mint a JWT for testing (prints it on stdout).
    Token(Box<TokenArgs>),
    /// Throwaway PostgreSQL + sample multi-tenant schema + the proxy in front of it.
    #[cfg(feature = "dev")]
    Demo(crate::dev::demo::DemoArgs),
    /// Take a database to row-level security as a policy file says: plan, apply,
    /// rollback, verify.
    Policy(crate::control::policy::PolicyArgs),
    /// Audit a live database for the ways tenant isolation silently fails
    /// (exit 0: no errors, 1: errors found, 2: could not run).
    Doctor(crate::control::doctor::DoctorArgs),
}

#[derive(Args)]
struct TokenArgs {
    /// Environment variable holding the HS* secret.
    #[arg(long, conflicts_with = "key")]
    secret_env: Option<String>,
    /// PEM private key file (RS*, PS*, ES*, EdDSA).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Signing algorithm.
    #[arg(long, default_value = "HS256")]
    alg: String,
    /// Tenant claim value.
    #[arg(long)]
    tenant: Option<String>,
    /// Claim (name or JSON pointer) the tenant goes into.
    #[arg(long, default_value = "tenant_id")]
    tenant_claim: String,
    #[arg(long)]
    sub: Option<String>,
    #[arg(long)]
    role: Option<String>,
    /// Lifetime, e.g. `1h`, `15m`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Extra claim `name=value` (value parsed as JSON when it is valid JSON).
    #[arg(long = "claim", value_parser = parse_claim)]
    claims: Vec<(String, serde_json::Value)>,
    #[arg(long)]
    issuer: Option<String>,
    #[arg(long)]
    audience: Option<String>,
    /// Key id header (for JWKS).
    #[arg(long)]
    kid: Option<String>,
}

fn parse_claim(s: &str) -> Result<(String, serde_json::Value), String> {
    let (k, v) = s.split_once('=').ok_or("expected name=value")?;
    let value = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_owned()));
    Ok((k.to_owned(), value))
}

/// Entry point used by `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let result = match cli.command {
        Command::Serve {
            config,
            allow_unsafe_upstream,
        } => serve(config, allow_unsafe_upstream),
        Command::CheckConfig { config } => check_config(config),
        Command::Token(args) => token(*args),
        #[cfg(feature = "dev")]
        Command::Demo(args) => runtime().and_then(|rt| rt.block_on(crate::dev::demo::run(args))),
        // These report their own errors and choose their exit codes.
        Command::Policy(args) => return crate::control::policy::run(args),
        Command::Doctor(args) => return crate::control::doctor::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rlsgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn serve(path: PathBuf, allow_unsafe_upstream: bool) -> anyhow::Result<()> {
    let mut config = Config::load(&path)?;
    config.upstream.allow_unsafe_role |= allow_unsafe_upstream;
    runtime()?.block_on(async move {
        let server = Server::bind(config).await?;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            crate::shutdown::wait_for_signal().await;
            tracing::info!("signal received: shutting down");
            trigger.cancel();
        });
        server.run(shutdown).await;
        Ok(())
    })
}

fn check_config(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    crate::wire::tls::install_default_provider();
    crate::proxy::server::State::new(config)?;
    println!("{}: configuration is valid", path.display());
    Ok(())
}

fn token(a: TokenArgs) -> anyhow::Result<()> {
    let alg: jsonwebtoken::Algorithm = a
        .alg
        .parse()
        .map_err(|_| anyhow::anyhow!("unknown algorithm {}", a.alg))?;
    let key = match (&a.secret_env, &a.key) {
        (Some(var), None) => {
            let secret = std::env::var(var)
                .map_err(|_| anyhow::anyhow!("environment variable {var} is not set"))?;
            MintKey::Secret(secret.into_bytes())
        }
        (None, Some(path)) => MintKey::PemPrivateKey(std::fs::read(path)?),
        _ => anyhow::bail!("give --secret-env NAME (HS*) or --key FILE (RS/PS/ES/EdDSA)"),
    };
    let opts = MintOptions {
        alg,
        key,
        tenant: a.tenant.map(serde_json::Value::String),
        tenant_claim: a.tenant_claim,
        sub: a.sub,
        role: a.role,
        ttl: a.ttl,
        extra_claims: a.claims,
        issuer: a.issuer,
        audience: a.audience,
        kid: a.kid,
    };
    println!("{}", mint(&opts)?);
    Ok(())
}
