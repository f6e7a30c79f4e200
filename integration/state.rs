//! No session state crosses clients (issue 12): for every ParameterStatus-reported
//! setting (and a few that are not reported), and every way of setting it (SET in and
//! out of a transaction, in one Query or several, `set_config`, a function with a SET
//! clause, RESET, DISCARD ALL, savepoints), in both pool modes:
//! - the client that set it sees, in its next transaction, what it would see directly
//!   (the same sequence run straight against PostgreSQL is the oracle), and was told
//!   (ParameterStatus) what it would be told directly;
//! - the next client on the same server is told at login, and its server holds, exactly
//!   what a fresh client is told and holds.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use rlsgate::config::PoolMode;

use crate::harness::{data_rows, wait_for, Env, Raw, RawMessage};

/// (name, a value other than the default). The first seven are reported by PostgreSQL
/// 15 (GUC_REPORT); the rest are not, so only the remembered statements carry them.
const SETTINGS: &[(&str, &str)] = &[
    ("DateStyle", "SQL, DMY"),
    ("IntervalStyle", "postgres_verbose"),
    ("TimeZone", "Asia/Tokyo"),
    ("standard_conforming_strings", "off"),
    ("application_name", "mallory-app"),
    ("default_transaction_read_only", "on"),
    ("client_encoding", "LATIN1"),
    ("work_mem", "7MB"),
    ("statement_timeout", "123s"),
    ("myapp.flavour", "mint"),
];

/// Ways a client changes a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Set,
    SetInCommittedTx,
    SetInRolledBackTx,
    OneQueryCommit,
    OneQueryRollback,
    SetConfig,
    SetConfigInCommittedTx,
    SetThenReset,
    SetThenResetAll,
    SetThenDiscard,
    FunctionSetClause,
    SavepointRolledBack,
    SavepointReleased,
    SetLocal,
}

const WAYS: &[Way] = &[
    Way::Set,
    Way::SetInCommittedTx,
    Way::SetInRolledBackTx,
    Way::OneQueryCommit,
    Way::OneQueryRollback,
    Way::SetConfig,
    Way::SetConfigInCommittedTx,
    Way::SetThenReset,
    Way::SetThenResetAll,
    Way::SetThenDiscard,
    Way::FunctionSetClause,
    Way::SavepointRolledBack,
    Way::SavepointReleased,
    Way::SetLocal,
];

fn literal(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// The simple Queries of `way` for (`name`, `value`); `func` is the function with the
/// SET clause.
fn statements(way: Way, name: &str, value: &str, func: &str) -> Vec<String> {
    let set = format!("SET {name} TO {}", literal(value));
    let set_session = format!("SET SESSION {name} TO {}", literal(value));
    let set_config = format!(
        "SELECT pg_catalog.set_config({}, {}, false)",
        literal(name),
        literal(value)
    );
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match way {
        Way::Set => vec![set],
        Way::SetInCommittedTx => s(&["BEGIN", &set_session, "COMMIT"]),
        Way::SetInRolledBackTx => s(&["BEGIN", &set_session, "ROLLBACK"]),
        Way::OneQueryCommit => vec![format!("BEGIN; {set}; COMMIT")],
        Way::OneQueryRollback => vec![format!("BEGIN; {set}; ROLLBACK")],
        Way::SetConfig => vec![set_config],
        Way::SetConfigInCommittedTx => s(&["BEGIN", &set_config, "COMMIT"]),
        Way::SetThenReset => vec![set, format!("RESET {name}")],
        Way::SetThenResetAll => vec![set, "RESET ALL".into()],
        Way::SetThenDiscard => vec![set, "DISCARD ALL".into()],
        Way::FunctionSetClause => vec![format!("SELECT {func}()")],
        Way::SavepointRolledBack => s(&[
            "BEGIN",
            "SAVEPOINT s1",
            &set_session,
            "ROLLBACK TO SAVEPOINT s1",
            "COMMIT",
        ]),
        Way::SavepointReleased => s(&[
            "BEGIN",
            "SAVEPOINT s1",
            &set_session,
            "RELEASE SAVEPOINT s1",
            "COMMIT",
        ]),
        Way::SetLocal => s(&[
            "BEGIN",
            &format!("SET LOCAL {name} TO {}", literal(value)),
            "COMMIT",
        ]),
    }
}

/// Functions `public.with_setting_<i>()` with `SET <setting i> = <value>`, created by the
/// superuser, executable by the app role.
fn create_functions(env: &Env) {
    let mut sql = String::new();
    for (i, (name, value)) in SETTINGS.iter().enumerate() {
        sql.push_str(&format!(
            "CREATE FUNCTION public.with_setting_{i}() RETURNS text LANGUAGE sql \
             SET {name} = {} AS $$ SELECT current_setting('{name}') $$;\n\
             GRANT EXECUTE ON FUNCTION public.with_setting_{i}() TO PUBLIC;\n",
            literal(value)
        ));
    }
    env.pg
        .psql("app", &sql)
        .expect("create the SET-clause functions");
}

/// One connection and the last value each reported setting was announced with.
struct Peer {
    raw: Raw,
    told: BTreeMap<String, String>,
}

impl Peer {
    async fn connect(port: u16, user: &str, password: &str) -> Peer {
        let (raw, reported) = Raw::connect_with(port, user, password, &[]).await;
        Peer {
            raw,
            told: reported.into_iter().collect(),
        }
    }

    /// Sends one simple Query; returns its messages (ParameterStatus recorded).
    async fn query(&mut self, sql: &str) -> Vec<RawMessage> {
        let mut buf = BytesMut::new();
        frontend::query(sql, &mut buf).unwrap();
        self.raw.send(&buf).await;
        let msgs = self.raw.until_ready(1).await;
        for (tag, body) in &msgs {
            if *tag == b'S' {
                let mut parts = body.split(|b| *b == 0);
                let n = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                let v = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                self.told.insert(n, v);
            }
        }
        msgs
    }

    /// Error (SQLSTATE, message) of the messages, if any.
    fn error(msgs: &[RawMessage]) -> Option<(String, String)> {
        msgs.iter().find(|(t, _)| *t == b'E').map(|(_, body)| {
            let mut msg = vec![b'E', 0, 0, 0, 0];
            msg.extend_from_slice(body);
            let f = rlsgate::wire::protocol::parse_error_fields(&msg);
            (f.code, f.message)
        })
    }

    /// The setting's value as the session holds it ('' when it does not exist).
    async fn value(&mut self, name: &str) -> String {
        let msgs = self
            .query(&format!(
                "SELECT coalesce(current_setting('{name}', true), '')"
            ))
            .await;
        if let Some(e) = Peer::error(&msgs) {
            panic!("reading {name} failed: {e:?}");
        }
        data_rows(&msgs)[0][0].clone()
    }

    /// Every setting's value, plus the tenant when `tenant` (through the proxy).
    async fn snapshot(&mut self, tenant: bool) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (name, _) in SETTINGS {
            out.insert(name.to_string(), self.value(name).await);
        }
        if tenant {
            out.insert(
                "app.current_tenant".into(),
                self.value("app.current_tenant").await,
            );
        }
        out
    }

    /// What the peer was told of the settings in [`SETTINGS`].
    fn told_settings(&self) -> BTreeMap<String, String> {
        self.told
            .iter()
            .filter(|(n, _)| SETTINGS.iter().any(|(s, _)| s == n))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    }
}

async fn env_for(mode: PoolMode, size: usize) -> Env {
    let env = Env::with(|c| {
        c.pool.mode = mode;
        c.pool.size = size;
        c.pool.acquire_timeout = Duration::from_secs(5);
    })
    .await;
    create_functions(&env);
    env
}

/// A refusal by the guard where PostgreSQL would accept: client_encoding may change only
/// through a top-level SET (the guard must read the text in the encoding the server will).
fn refusal_expected(name: &str, way: Way) -> bool {
    name == "client_encoding"
        && matches!(
            way,
            Way::SetConfig
                | Way::SetConfigInCommittedTx
                | Way::OneQueryCommit
                | Way::OneQueryRollback
        )
}

/// Runs `way` for setting `i` as tenant `acme` through the proxy and directly, and
/// compares: the attacker's own view (values and announcements) with the direct one,
/// and what the next client (tenant `globex`) is told and holds with a fresh client's.
async fn check_way(env: &Env, mode: PoolMode, i: usize, way: Way, fresh: &Fresh) {
    let (name, value) = SETTINGS[i];
    let func = format!("public.with_setting_{i}");
    let case = format!("{mode:?} {name} {way:?}");
    let mut through = Peer::connect(env.port(), "mallory", &env.token("acme")).await;
    let mut direct = Peer::connect(env.pg.port(), "postgres", "").await;
    let mut refused = false;
    for sql in statements(way, name, value, &func) {
        let t = through.query(&sql).await;
        let d = direct.query(&sql).await;
        match (Peer::error(&t), Peer::error(&d)) {
            (None, None) => {}
            (Some(e), None) if refusal_expected(name, way) => {
                assert!(
                    e.0 == "42501" || e.0 == "0A000",
                    "{case}: {sql}: unexpected error {e:?}"
                );
                refused = true;
                // Leave the transaction the refusal aborted, as the direct one ends.
                if !matches!(way, Way::OneQueryCommit | Way::OneQueryRollback) {
                    through.query("ROLLBACK").await;
                    direct.query("ROLLBACK").await;
                }
                break;
            }
            (t, d) => panic!("{case}: {sql}: through {t:?}, directly {d:?}"),
        }
    }
    if !refused {
        let mine = through.snapshot(true).await;
        let oracle = direct.snapshot(false).await;
        for (n, v) in &oracle {
            assert_eq!(mine.get(n), Some(v), "{case}: the client's own {n}");
        }
        assert_eq!(
            through.told_settings(),
            direct.told_settings(),
            "{case}: what the client was told"
        );
    }
    assert_eq!(
        through.value("app.current_tenant").await,
        "acme",
        "{case}: attacker's tenant"
    );
    if mode == PoolMode::Session {
        through.raw.send(&terminate()).await;
    }
    // The next client: on the attacker's server (pool of one).
    let mut next = Peer::connect(env.port(), "bob", &env.token("globex")).await;
    assert_eq!(
        next.told_settings(),
        fresh.told,
        "{case}: next client told at login"
    );
    let holds = next.snapshot(true).await;
    assert_eq!(holds, fresh.holds, "{case}: next client's server holds");
    if mode == PoolMode::Transaction && !refused {
        // And the attacker, after the next client used the server, still holds its own.
        let again = through.snapshot(false).await;
        let oracle = direct.snapshot(false).await;
        assert_eq!(
            again, oracle,
            "{case}: attacker's settings after another client"
        );
        through.raw.send(&terminate()).await;
    }
    next.raw.send(&terminate()).await;
    direct.raw.send(&terminate()).await;
}

fn terminate() -> BytesMut {
    let mut b = BytesMut::new();
    frontend::terminate(&mut b);
    b
}

/// What a fresh client of tenant `globex` is told and holds.
struct Fresh {
    told: BTreeMap<String, String>,
    holds: BTreeMap<String, String>,
}

async fn fresh(env: &Env) -> Fresh {
    let mut p = Peer::connect(env.port(), "bob", &env.token("globex")).await;
    let f = Fresh {
        told: p.told_settings(),
        holds: p.snapshot(true).await,
    };
    p.raw.send(&terminate()).await;
    f
}

async fn every_way(mode: PoolMode, settings: std::ops::Range<usize>) {
    let env = env_for(mode, 1).await;
    let fresh = fresh(&env).await;
    assert_eq!(fresh.holds.get("app.current_tenant").unwrap(), "globex");
    for i in settings {
        for way in WAYS {
            check_way(&env, mode, i, *way, &fresh).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_settings_never_cross_clients_session_mode() {
    every_way(PoolMode::Session, 0..7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_settings_never_cross_clients_transaction_mode() {
    every_way(PoolMode::Transaction, 0..7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreported_settings_never_cross_clients_session_mode() {
    every_way(PoolMode::Session, 7..SETTINGS.len()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreported_settings_never_cross_clients_transaction_mode() {
    every_way(PoolMode::Transaction, 7..SETTINGS.len()).await;
}

/// Transaction mode: a session setting committed inside a transaction is carried to the
/// client's next transaction on *another* server, as directly (it stays with the
/// session); one rolled back (also to a savepoint) is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_settings_follow_the_client_to_another_server() {
    let env = env_for(PoolMode::Transaction, 2).await;
    for (i, (name, value)) in SETTINGS.iter().enumerate() {
        if *name == "client_encoding" {
            continue; // covered by the encoding tests; changes how the client's bytes read
        }
        for way in WAYS {
            if refusal_expected(name, *way) {
                continue;
            }
            let case = format!("{name} {way:?}");
            let func = format!("public.with_setting_{i}");
            let mut me = Peer::connect(env.port(), "mallory", &env.token("acme")).await;
            let mut direct = Peer::connect(env.pg.port(), "postgres", "").await;
            for sql in statements(*way, name, value, &func) {
                let t = me.query(&sql).await;
                assert_eq!(Peer::error(&t), None, "{case}: {sql}");
                direct.query(&sql).await;
            }
            let before = pid(&mut me).await;
            // Another client holds the server just used, so the next transaction gets a
            // different one. The pool hands out the most recently released server: wait
            // until the proxy has released it (after its own replies and, for a dirty
            // server, one more round trip) so nothing is released after it.
            wait_for("every server back in the pool", || async {
                let status = env.proxy.state.pool.status();
                status.size == status.available
            })
            .await;
            let mut other = Peer::connect(env.port(), "bob", &env.token("globex")).await;
            other.query("BEGIN").await;
            let opid = pid(&mut other).await;
            let mine = me.snapshot(true).await;
            let after = pid(&mut me).await;
            assert_ne!(after, opid, "{case}: two clients on one server");
            assert_eq!(
                before, opid,
                "{case}: the other client took the used server"
            );
            let oracle = direct.snapshot(false).await;
            for (n, v) in &oracle {
                assert_eq!(mine.get(n), Some(v), "{case}: {n} on the other server");
            }
            assert_eq!(mine.get("app.current_tenant").unwrap(), "acme", "{case}");
            other.query("COMMIT").await;
            for p in [&mut me, &mut other, &mut direct] {
                p.raw.send(&terminate()).await;
            }
        }
    }
}

async fn pid(p: &mut Peer) -> String {
    let msgs = p.query("SELECT pg_backend_pid()").await;
    data_rows(&msgs)[0][0].clone()
}

/// `RESET x` and `RESET ALL` of settings the client gave at startup go back to the
/// startup values, as directly (PostgreSQL's reset value is the startup value; the
/// pooled connection's is its own), and the client is told the same values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_return_to_the_startup_values() {
    let startup = [
        ("client_encoding", "LATIN1"),
        ("DateStyle", "SQL, DMY"),
        ("application_name", "startup-app"),
    ];
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let env = env_for(mode, 1).await;
        for resets in [
            vec![
                "RESET client_encoding",
                "RESET DateStyle",
                "RESET application_name",
            ],
            vec!["RESET ALL"],
            vec!["DISCARD ALL"],
        ] {
            let case = format!("{mode:?} {resets:?}");
            let (raw, told) =
                Raw::connect_with(env.port(), "mallory", &env.token("acme"), &startup).await;
            let mut me = Peer {
                raw,
                told: told.into_iter().collect(),
            };
            let (raw, told) = Raw::connect_with(env.pg.port(), "postgres", "", &startup).await;
            let mut direct = Peer {
                raw,
                told: told.into_iter().collect(),
            };
            for sql in [
                "SET client_encoding TO 'UTF8'",
                "SET DateStyle TO 'ISO, YMD'",
                "SET application_name TO 'changed'",
            ]
            .iter()
            .chain(resets.iter())
            {
                let t = me.query(sql).await;
                assert_eq!(Peer::error(&t), None, "{case}: {sql}");
                direct.query(sql).await;
            }
            let mine = me.snapshot(true).await;
            let oracle = direct.snapshot(false).await;
            for (n, v) in &oracle {
                assert_eq!(mine.get(n), Some(v), "{case}: {n}");
            }
            assert_eq!(me.told_settings(), direct.told_settings(), "{case}: told");
            assert_eq!(mine.get("app.current_tenant").unwrap(), "acme", "{case}");
            me.raw.send(&terminate()).await;
            direct.raw.send(&terminate()).await;
        }
    }
}
