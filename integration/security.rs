//! Defence in depth: the upstream role check and the sealed tenant context.

use rlsgate::config::PoolMode;
use rlsgate::proxy::server::{Server, ServerError};

use crate::harness::{scalar, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn superuser_or_bypassrls_upstream_role_is_refused() {
    let env = Env::start().await;
    env.pg
        .psql(
            "app",
            "CREATE ROLE app_super LOGIN SUPERUSER PASSWORD 'super_pw_123';
             CREATE ROLE app_bypass LOGIN BYPASSRLS PASSWORD 'bypass_pw_123';",
        )
        .unwrap();
    for (role, pw, why) in [
        ("app_super", "super_pw_123", "superuser"),
        ("app_bypass", "bypass_pw_123", "BYPASSRLS"),
    ] {
        let mut config = env.config.clone();
        config.listen.addr = "127.0.0.1:0".parse().unwrap();
        config.upstream.url = format!("postgres://{role}@127.0.0.1:{}/app", env.pg.port());
        let pw_file = env.dir.path().join(format!("{role}.pw"));
        std::fs::write(&pw_file, pw).unwrap();
        config.upstream.password_file = Some(pw_file);
        let err = Server::bind(config.clone())
            .await
            .err()
            .expect("refused to start");
        assert!(matches!(err, ServerError::UnsafeUpstream { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(role) && text.contains(why) && text.contains("row-level security"),
            "{text}"
        );
        // The explicit override starts (with a loud warning).
        config.upstream.allow_unsafe_role = true;
        let server = Server::bind(config).await.expect("override accepted");
        drop(server);
    }
}

/// With the sealed context (the harness default) even SQL the guard cannot see
/// (dynamic SQL in a function the client created) cannot read another tenant's rows:
/// the bare setting changes, the tenant the database verified does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_context_defeats_dynamic_sql_tenant_switch() {
    let env = Env::start().await;
    assert!(env.config.tenant.is_sealed(), "the harness runs sealed");
    env.pg
        .psql(
            "app",
            "CREATE TABLE docs (id serial PRIMARY KEY, tenant_id text NOT NULL, body text);
             ALTER TABLE docs OWNER TO app_owner;
             ALTER TABLE docs ENABLE ROW LEVEL SECURITY; ALTER TABLE docs FORCE ROW LEVEL SECURITY;
             CREATE POLICY sealed ON docs USING (tenant_id = (SELECT rlsgate.tenant()));
             GRANT SELECT ON docs TO app_rls;
             INSERT INTO docs (tenant_id, body) VALUES ('acme', 'a1'), ('acme', 'a2'), ('globex', 'g1');",
        )
        .unwrap();
    let c = env.connect("acme").await;
    let n: i64 = scalar(&c, "SELECT count(*) FROM docs").await;
    assert_eq!(n, 2, "sealed context verifies: own rows visible");
    // The example is already refused by the guard (dynamic SQL naming the setting).
    let err = c
        .batch_execute(
            "CREATE FUNCTION pg_temp.sneaky() RETURNS void LANGUAGE plpgsql AS $f$
             BEGIN
               EXECUTE 'SELECT set_config(' || quote_literal('app.current_tenant') || ', ''globex'', false)';
             END $f$;",
        )
        .await
        .unwrap_err();
    assert_eq!(crate::harness::db_error(&err).0, "42501");
    // A function whose body the guard cannot judge (function and setting names computed
    // at run time) switches the tenant.
    c.batch_execute(
        "CREATE FUNCTION pg_temp.sneaky() RETURNS void LANGUAGE plpgsql AS $f$
         BEGIN
           EXECUTE format('SELECT %s(%L, %L, false)', reverse('gifnoc_tes'), reverse('tnanet_tnerruc.ppa'), 'globex');
         END $f$;",
    )
    .await
    .unwrap();
    c.batch_execute("SELECT pg_temp.sneaky()").await.unwrap();
    let tenant: String = scalar(&c, "SELECT current_setting('app.current_tenant')").await;
    assert_eq!(
        tenant, "globex",
        "the bare setting was changed behind the guard's back"
    );
    let rows: Vec<String> = c
        .query("SELECT tenant_id FROM docs", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        rows,
        ["acme", "acme"],
        "but the verified tenant is still acme: its own rows, none of globex"
    );
}

/// A Query message with raw `sql` bytes (any client encoding).
fn raw_query(sql: &[u8]) -> Vec<u8> {
    let mut m = vec![b'Q'];
    m.extend_from_slice(&((4 + sql.len() + 1) as u32).to_be_bytes());
    m.extend_from_slice(sql);
    m.push(0);
    m
}

/// A LATIN1 client: its statements are not UTF-8, and the guard still reads them (a
/// text it could not decode used to pass unread). Non-ASCII text itself works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latin1_text_is_inspected_like_any_other() {
    use crate::harness::{summarize, Raw};
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let env = Env::with(|c| c.pool.mode = mode).await;
        let mut raw = Raw::connect(env.port(), "u", &env.token("acme")).await;
        raw.send(&raw_query(b"SET client_encoding TO 'LATIN1'"))
            .await;
        raw.until_ready(1).await;

        // The 0xE9 in the comment makes the text invalid UTF-8.
        raw.send(&raw_query(
            b"SELECT set_config('app.current_tenant', 'globex', false) /* caf\xe9 */",
        ))
        .await;
        let got = summarize(&raw.until_ready(1).await);
        assert!(
            got[0].starts_with("E 42501 rlsgate: set_config of app.current_tenant is not allowed"),
            "{mode:?}: {got:?}"
        );
        raw.send(&raw_query(
            b"SELECT string_agg(DISTINCT tenant_id, ',') || ' caf\xe9' FROM customers",
        ))
        .await;
        let msgs = raw.until_ready(1).await;
        let row = msgs.iter().find(|(t, _)| *t == b'D').expect("a row");
        assert!(
            row.1.ends_with(b"acme caf\xe9"),
            "{mode:?}: tenant and LATIN1 text round-trip: {:?}",
            String::from_utf8_lossy(&row.1)
        );

        // Per-tenant channels cannot rewrite non-UTF-8 text: refused, not run unscoped.
        raw.send(&raw_query(b"LISTEN jobs /* \xe9 */")).await;
        let got = summarize(&raw.until_ready(1).await);
        assert!(got[0].starts_with("E 0A000"), "{mode:?}: {got:?}");

        if mode == PoolMode::Transaction {
            // Statement names are renamed by their text: raw bytes would stay on a pooled
            // server under the client's own name. The session ends with a clear FATAL.
            let mut parse = vec![b'P'];
            let body = b"s\xe9\0SELECT 1\0\0\0";
            parse.extend_from_slice(&((4 + body.len()) as u32).to_be_bytes());
            parse.extend_from_slice(body);
            parse.extend_from_slice(b"S\0\0\0\x04");
            raw.send(&parse).await;
            let got = summarize(&[raw.read().await]);
            assert_eq!(
                got,
                [
                    "E 08P01 protocol violation: statement names must be UTF-8 in transaction \
                  pooling mode"
                ]
            );
        }
    }
}
