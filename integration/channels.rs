//! Per-tenant LISTEN/NOTIFY channels (`tenant.channels`): a client receives the
//! notifications of its own tenant only (statements, `pg_notify` calls and database
//! triggers using `rlsgate.channel()`), never another tenant's, not even when it listens
//! on the other tenant's server-side channel by dynamic SQL; `shared` restores
//! PostgreSQL's database-wide channels.

use std::time::Duration;

use rlsgate::config::{ChannelScope, PoolMode};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::harness::{db_error, listener, Env};

type Notes = UnboundedReceiver<(i32, String, String)>;

async fn env_for(mode: PoolMode, channels: ChannelScope) -> Env {
    let env = Env::with(|c| {
        c.pool.mode = mode;
        c.pool.size = 8;
        c.tenant.channels = channels;
    })
    .await;
    let sql = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/policies/channels.sql"
    ))
    .unwrap();
    env.pg
        .psql("app", &sql)
        .expect("install policies/channels.sql");
    // A trigger that notifies the inserting session's tenant, as an app would.
    env.pg
        .psql(
            "app",
            "CREATE FUNCTION invoice_notify() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN PERFORM pg_notify(rlsgate.channel('invoices'), NEW.status); RETURN NEW; END $$; \
             CREATE TRIGGER invoice_notify AFTER INSERT ON invoices \
             FOR EACH ROW EXECUTE FUNCTION invoice_notify();",
        )
        .expect("create trigger");
    env
}

/// (channel, payload) of every notification up to and including the first with payload
/// `end`; fails after 10 s.
async fn until_end(notes: &mut Notes) -> Vec<(String, String)> {
    let mut got = Vec::new();
    loop {
        let (_, channel, payload) = tokio::time::timeout(Duration::from_secs(10), notes.recv())
            .await
            .unwrap_or_else(|_| panic!("no 'end' notification within 10 s; got {got:?}"))
            .expect("listener connection open");
        let end = payload == "end";
        got.push((channel, payload));
        if end {
            return got;
        }
    }
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(c, p)| ((*c).to_owned(), (*p).to_owned()))
        .collect()
}

async fn notifications_stay_within_their_tenant(mode: PoolMode) {
    let env = env_for(mode, ChannelScope::Tenant).await;
    let (a, mut a_notes) = listener(&env, "acme").await;
    let (g, mut g_notes) = listener(&env, "globex").await;
    let (snoop, mut snoop_notes) = listener(&env, "globex").await;
    a.batch_execute("LISTEN jobs; LISTEN invoices")
        .await
        .unwrap();
    g.batch_execute("LISTEN jobs; LISTEN invoices")
        .await
        .unwrap();

    // The snoop listens on acme's server-side channel in both ways a client can name
    // it: the statement is scoped again (to globex), the dynamic SQL is not, and only
    // the delivery filter stands between it and acme's notifications.
    let acme_jobs = format!("jobs{}", rlsgate::sql::channels::suffix("acme"));
    snoop
        .batch_execute(&format!("LISTEN \"{acme_jobs}\"; LISTEN jobs"))
        .await
        .unwrap();
    snoop
        .batch_execute(&format!(
            "DO $$ BEGIN EXECUTE 'LISTEN ' || quote_ident('{acme_jobs}'); END $$"
        ))
        .await
        .unwrap();
    let listening: Vec<String> = snoop
        .query("SELECT pg_listening_channels()", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        listening.contains(&acme_jobs),
        "the dynamic LISTEN took effect on the server: {listening:?}"
    );

    let na = env.connect("acme").await;
    let ng = env.connect("globex").await;
    na.batch_execute("NOTIFY jobs, 'acme-1'").await.unwrap();
    ng.batch_execute("NOTIFY jobs, 'globex-1'").await.unwrap();
    na.execute("SELECT pg_notify($1, $2)", &[&"jobs", &"acme-2"])
        .await
        .unwrap();
    ng.execute("SELECT pg_notify($1, $2)", &[&"jobs", &"globex-2"])
        .await
        .unwrap();
    na.batch_execute("INSERT INTO invoices (status) VALUES ('acme-invoice')")
        .await
        .unwrap();
    ng.batch_execute("INSERT INTO invoices (status) VALUES ('globex-invoice')")
        .await
        .unwrap();
    // Unscoped channels (a direct session, or code not using rlsgate.channel()) reach
    // no client of rlsgate.
    let admin = env.admin().await;
    admin
        .batch_execute(&format!(
            "NOTIFY jobs, 'plain'; NOTIFY \"{acme_jobs}\", 'acme-3'"
        ))
        .await
        .unwrap();
    na.batch_execute("NOTIFY jobs, 'end'").await.unwrap();
    ng.batch_execute("NOTIFY jobs, 'end'").await.unwrap();

    assert_eq!(
        until_end(&mut a_notes).await,
        pairs(&[
            ("jobs", "acme-1"),
            ("jobs", "acme-2"),
            ("invoices", "acme-invoice"),
            ("jobs", "acme-3"),
            ("jobs", "end"),
        ])
    );
    let globex = pairs(&[
        ("jobs", "globex-1"),
        ("jobs", "globex-2"),
        ("invoices", "globex-invoice"),
        ("jobs", "end"),
    ]);
    assert_eq!(until_end(&mut g_notes).await, globex);
    let jobs_only: Vec<_> = globex.into_iter().filter(|(c, _)| c == "jobs").collect();
    assert_eq!(until_end(&mut snoop_notes).await, jobs_only);

    // A name that leaves no room for the suffix is refused, not truncated.
    let err = a
        .batch_execute(&format!("LISTEN {}", "c".repeat(47)))
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "42622");
    // The session goes on.
    na.batch_execute("NOTIFY jobs, 'end'").await.unwrap();
    assert_eq!(until_end(&mut a_notes).await, pairs(&[("jobs", "end")]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_stay_within_their_tenant_in_session_mode() {
    notifications_stay_within_their_tenant(PoolMode::Session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_stay_within_their_tenant_in_transaction_mode() {
    notifications_stay_within_their_tenant(PoolMode::Transaction).await;
}

/// `channels = "shared"`: channels are PostgreSQL's, database-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_channels_cross_tenants_as_in_postgresql() {
    let env = env_for(PoolMode::Session, ChannelScope::Shared).await;
    let (a, mut a_notes) = listener(&env, "acme").await;
    a.batch_execute("LISTEN jobs").await.unwrap();
    let g = env.connect("globex").await;
    g.batch_execute("NOTIFY jobs, 'globex-1'; NOTIFY jobs, 'end'")
        .await
        .unwrap();
    assert_eq!(
        until_end(&mut a_notes).await,
        pairs(&[("jobs", "globex-1"), ("jobs", "end")])
    );
}
