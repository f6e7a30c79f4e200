//! The sealed tenant context in the plan: with `context = "sealed"` (the default) the
//! generated policies read `rlsgate.tenant()`, so `apply` installs `policies/sealed.sql`
//! when that function does not exist yet, and stores the seal secret the policy file or
//! the command line names (from an environment variable or a file, passed to the server
//! as a bound parameter: it never appears in SQL text, plans or logs).
//!
//! Only the interface of `sealed.sql` is relied on: `rlsgate.tenant() RETURNS text`
//! (STABLE, NULL when the context is not proven) and `rlsgate.set_seal_secret(text)`.

use std::io::{self, Write};

use tokio_postgres::GenericClient;

use super::hardening::SEAL_CHECK_TABLE;
use super::options::{fingerprint, TenantContext};
use super::plan::{Builder, Phase, Step};

/// `policies/sealed.sql`, as built into this binary.
pub const SEALED_SQL: &str = include_str!("../../../policies/sealed.sql");

/// The seal secret `apply` stores in the checked transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealStore {
    /// Where the secret is read from (`env X`, `file Y`).
    pub source: String,
}

/// Adds the install step, the secret store, and the problems and warnings about them.
pub(super) fn steps(b: &mut Builder<'_>) {
    if b.policy.context != TenantContext::Sealed {
        return;
    }
    let seal = &b.state.seal;
    if !seal.tenant_fn {
        if !seal.pgcrypto_available {
            b.problem(
                "context = \"sealed\" needs the pgcrypto extension, which this server does not \
                 have (install postgresql-contrib), or set [tenant] context = \"setting\" to \
                 keep policies that trust the bare setting"
                    .into(),
            );
            return;
        }
        b.plan.steps.push(Step {
            phase: Phase::Prepare,
            object: "schema rlsgate".into(),
            what: "the sealed tenant context rlsgate.tenant() (policies/sealed.sql)".into(),
            sql: SEALED_SQL.trim_end().to_owned(),
        });
    }
    match (&seal.wanted_fingerprint, &seal.stored_fingerprint) {
        (Some(wanted), stored) if stored.as_ref() != Some(wanted) => {
            b.plan.seal = Some(SealStore {
                source: seal.secret_source.clone().unwrap_or_default(),
            });
        }
        (None, None) => b.plan.warnings.push(
            "no seal secret configured ([tenant] seal_secret_env / seal_secret_file or \
             --seal-secret-env / --seal-secret-file) and none stored by apply: \
             rlsgate.tenant() is NULL, and every tenant sees no row, until the proxy's \
             secret is stored (SELECT rlsgate.set_seal_secret(...))"
                .into(),
        ),
        _ => {}
    }
}

/// What `missing()` says about a pending secret store.
pub fn missing(store: &SealStore) -> String {
    format!(
        "schema rlsgate: the seal secret from {} is not the one apply last stored",
        store.source
    )
}

/// Prints the secret store as it runs (the secret itself is a bound parameter).
pub fn render(out: &mut dyn Write, store: &SealStore) -> io::Result<()> {
    writeln!(
        out,
        "-- schema rlsgate: store the seal secret (read from {}; sent as $1, never shown)",
        store.source
    )?;
    for line in STORE_SQL.lines() {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

const STORE_SQL: &str = "CREATE TABLE IF NOT EXISTS rlsgate.seal_check (\n    \
     id          boolean PRIMARY KEY DEFAULT true CHECK (id),\n    \
     fingerprint text NOT NULL,\n    \
     stored_at   timestamptz NOT NULL DEFAULT now());\n\
     REVOKE ALL ON rlsgate.seal_check FROM PUBLIC;\n\
     SELECT rlsgate.set_seal_secret($1);\n\
     INSERT INTO rlsgate.seal_check (id, fingerprint) VALUES (true, $2)\n    \
     ON CONFLICT (id) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, stored_at = now();";

/// Stores `secret` and records its fingerprint (inside the caller's transaction).
pub async fn store<C: GenericClient + Sync>(
    client: &C,
    secret: &str,
) -> Result<(), tokio_postgres::Error> {
    debug_assert!(STORE_SQL.contains(SEAL_CHECK_TABLE));
    let (ddl, _) = STORE_SQL
        .split_once("SELECT rlsgate.set_seal_secret")
        .expect("STORE_SQL shape");
    client.batch_execute(ddl).await?;
    client
        .execute("SELECT rlsgate.set_seal_secret($1)", &[&secret])
        .await?;
    client
        .execute(
            "INSERT INTO rlsgate.seal_check (id, fingerprint) VALUES (true, $1) \
             ON CONFLICT (id) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, stored_at = now()",
            &[&fingerprint(secret)],
        )
        .await?;
    Ok(())
}
