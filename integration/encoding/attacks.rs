//! The multi-byte-backslash attack through every way of choosing a client encoding, in
//! both pool modes; asserts on the tenant and rows the attacker and the next client see.

use super::*;

/// Spellings PostgreSQL accepts for encodings rlsgate refuses.
const REFUSED: &[&str] = &[
    "SHIFT_JIS_2004",
    "Shift-JIS-2004",
    "shift jis 2004.",
    "big-5.",
    "BIG5",
    "JOHAB",
    "GB18030",
    "no such encoding",
];

/// Spellings of the decoded encodings (SJIS and GBK: 0x95 0x5C is one character).
const DECODED: &[&str] = &[
    "sjis.",
    "s j i s",
    "WINDOWS932",
    "GBK ",
    "windows-936",
    "SJIS",
];

const MODES: [PoolMode; 2] = [PoolMode::Session, PoolMode::Transaction];

fn options(name: &str) -> String {
    format!("-c client_encoding={}", name.replace(' ', "\\ "))
}

fn code(msgs: &[RawMessage]) -> String {
    summarize(msgs)
        .into_iter()
        .find(|m| m.starts_with("E "))
        .unwrap_or_default()
}

/// The next client of the pool sees its own tenant only.
async fn next_tenant_is_clean(env: &Env) {
    let mut next = Client::connect(env, "globex", &[]).await.unwrap();
    assert_eq!(
        next.tenant_and_rows().await,
        ("globex".into(), "globex".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_encodings_fail_at_startup() {
    for mode in MODES {
        let env = Env::with(|c| c.pool.mode = mode).await;
        for name in REFUSED {
            for params in [
                vec![("client_encoding", name.to_string())],
                vec![("options", options(name))],
            ] {
                let params: Vec<(&str, &str)> =
                    params.iter().map(|(n, v)| (*n, v.as_str())).collect();
                let err = Client::connect(&env, "acme", &params).await.err();
                let err = err.unwrap_or_else(|| panic!("{mode:?} {params:?}: login succeeded"));
                assert!(
                    err.starts_with("E 22023") && err.contains("use UTF8") && err.contains(name),
                    "{mode:?} {params:?}: {err}"
                );
            }
        }
        next_tenant_is_clean(&env).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_encodings_cannot_be_set() {
    for mode in MODES {
        let env = Env::with(|c| c.pool.mode = mode).await;
        let mut c = Client::connect(&env, "acme", &[]).await.unwrap();
        for name in REFUSED {
            for sql in [
                format!("SET client_encoding = '{name}'"),
                format!("SET NAMES '{name}'"),
                format!("SET LOCAL client_encoding TO '{name}'"),
                format!("SELECT set_config('client_encoding', '{name}', false)"),
            ] {
                let got = code(&c.query(sql.as_bytes()).await);
                assert!(got.starts_with("E 42501"), "{mode:?} {sql}: {got}");
            }
        }
        assert_eq!(c.value(b"SHOW client_encoding").await, b"UTF8");
        // Still UTF8: the trick bytes are invalid there, the server refuses them too.
        let got = code(&c.query(TRICK).await);
        assert!(got.starts_with("E 22021"), "{mode:?}: {got}");
        assert_eq!(c.tenant_and_rows().await, ("acme".into(), "acme".into()));
        drop(c);
        next_tenant_is_clean(&env).await;
    }
}

/// Each way of choosing a decoded encoding: the guard reads the trick as the server
/// does, finds the live `set_config` and refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decoded_encodings_reveal_the_hidden_set_config() {
    for mode in MODES {
        let env = Env::with(|c| c.pool.mode = mode).await;
        for name in DECODED {
            for how in ["startup", "options", "SET", "SET NAMES", "set_config"] {
                let opts = options(name);
                let params: Vec<(&str, &str)> = match how {
                    "startup" => vec![("client_encoding", name)],
                    "options" => vec![("options", &opts)],
                    _ => vec![],
                };
                let mut c = Client::connect(&env, "acme", &params).await.unwrap();
                let set = match how {
                    "SET" => Some(format!("SET client_encoding = '{name}'")),
                    "SET NAMES" => Some(format!("SET NAMES '{name}'")),
                    "set_config" => Some(format!(
                        "SELECT set_config('client_encoding', '{name}', false)"
                    )),
                    _ => None,
                };
                if let Some(set) = set {
                    let got = code(&c.query(set.as_bytes()).await);
                    assert_eq!(got, "", "{mode:?} {how} {name}");
                }
                let got = code(&c.query(TRICK).await);
                // Transaction mode carries a committed set_config to the next server too
                // (read back from the server at release), so the guard reads SJIS there.
                let want = "E 42501";
                assert!(got.starts_with(want), "{mode:?} {how} {name:?}: {got}");
                assert_eq!(
                    c.tenant_and_rows().await,
                    ("acme".into(), "acme".into()),
                    "{mode:?} {how} {name:?}"
                );
            }
        }
        next_tenant_is_clean(&env).await;
    }
}

/// Japanese text in SJIS (with 0x5C trail bytes: 表 is 0x95 0x5C) goes through intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sjis_text_round_trips() {
    let text = "表示と能力、日本語";
    let (sjis, _, bad) = encoding_rs::SHIFT_JIS.encode(text);
    assert!(!bad && sjis.contains(&0x5C));
    for mode in MODES {
        let env = Env::with(|c| c.pool.mode = mode).await;
        let mut c = Client::connect(&env, "acme", &[("client_encoding", "SJIS")])
            .await
            .unwrap();
        let mut sql =
            b"BEGIN; CREATE TEMP TABLE t (x text) ON COMMIT DROP; INSERT INTO t VALUES ('".to_vec();
        sql.extend_from_slice(&sjis);
        sql.extend_from_slice(b"'); SELECT x FROM t; COMMIT");
        assert_eq!(c.value(&sql).await, sjis.to_vec(), "{mode:?}");
        let mut sql = b"SELECT encode(convert_to('".to_vec();
        sql.extend_from_slice(&sjis);
        sql.extend_from_slice(b"', 'UTF8'), 'hex')");
        let hex: String = text.bytes().map(|b| format!("{b:02x}")).collect();
        assert_eq!(c.value(&sql).await, hex.into_bytes(), "{mode:?}");
        assert_eq!(c.tenant_and_rows().await, ("acme".into(), "acme".into()));
    }
}

/// Text sent behind a change of encoding, before its reply: only ASCII is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_behind_an_unconfirmed_change_is_refused() {
    for mode in MODES {
        let env = Env::with(|c| c.pool.mode = mode).await;
        let mut c = Client::connect(&env, "acme", &[]).await.unwrap();
        let msgs = c.queries(&[b"SET client_encoding = 'SJIS'", TRICK]).await;
        let got: Vec<_> = summarize(&msgs)
            .into_iter()
            .filter(|m| m.starts_with("E "))
            .collect();
        assert_eq!(got.len(), 1, "{mode:?}: {got:?}");
        assert!(got[0].starts_with("E 55000"), "{mode:?}: {got:?}");
        assert_eq!(c.value(b"SHOW client_encoding").await, b"SJIS");
        assert_eq!(c.tenant_and_rows().await, ("acme".into(), "acme".into()));
    }
}

/// A change the guard cannot see (inside a function) ends the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unseen_change_ends_the_session() {
    for mode in MODES {
        let env = Env::with(|c| {
            c.pool.mode = mode;
            c.pool.size = 1;
        })
        .await;
        env.admin()
            .await
            .batch_execute(
                "CREATE FUNCTION public.to_sjis() RETURNS void LANGUAGE sql
                 AS $$ SELECT set_config('client_encoding', 'SJIS', false) $$",
            )
            .await
            .unwrap();
        let mut c = Client::connect(&env, "acme", &[]).await.unwrap();
        let got = code(&c.query(b"SELECT public.to_sjis()").await);
        assert!(
            got.starts_with("E 08P01") && got.contains("did not see"),
            "{mode:?}: {got}"
        );
        next_tenant_is_clean(&env).await;
        let mut next = Client::connect(&env, "globex", &[]).await.unwrap();
        assert_eq!(
            next.value(b"SHOW client_encoding").await,
            b"UTF8",
            "{mode:?}"
        );
    }
}
