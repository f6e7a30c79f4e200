//! The statement inspector and guard on Query/Parse text in every client encoding the
//! proxy allows.
//!
//! Input: `[encoding][flags][prefix text] 0xFF [statement text]` (no 0xFF: no prefix).
//! The statement becomes a Query and a Parse read in the chosen encoding (or while the
//! encoding is unknown) and goes through `Inspector::inspect_message` as the session
//! calls it, built like `proxy::server` builds it. Invariants:
//! - the verdict is deterministic: an inspector that analysed `prefix` first (warm
//!   caches, the shape cache included) decides exactly as a fresh one, and the Query and
//!   Parse forms of one text get the same verdict and analysis;
//! - the inspector's fast path (no trigger word: no parse) never lets through a text
//!   the guard itself refuses (except as unparsable, which the server refuses too);
//! - the guard is deterministic (cached and uncached verdicts agree);
//! - `encoding::read` keeps every ASCII byte where the server sees it.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rlsgate::config::{default_deny_relations, PoolMode, TenantConfig};
use rlsgate::sql::encoding::{self, Class, Encoding, Reading};
use rlsgate::sql::guard::{self, Guard, GuardConfig, Rule};
use rlsgate::sql::inspect::{Analysis, Inspector, Verdict};
use rlsgate::tenant::OwnedSettings;
use rlsgate::wire::protocol::frontend as fe;

struct Setup {
    /// Every encoding a session may read text in (the refused ones never get that far).
    encodings: Vec<Encoding>,
    owned: Vec<String>,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let mut tenant = TenantConfig::default();
        tenant.claims.insert("app.user_id".into(), "sub".into());
        tenant
            .claims
            .insert("request.jwt.claims".into(), "*".into());
        Setup {
            encodings: Encoding::ALL
                .iter()
                .copied()
                .filter(|e| e.class() != Class::Refused)
                .collect(),
            owned: OwnedSettings::from_config(&tenant).names().to_vec(),
        }
    })
}

/// The guard configuration and trigger names `proxy::server::State::new` uses with the
/// default `[guard]` section.
fn guard_config(mode: PoolMode) -> (GuardConfig, Vec<String>) {
    let s = setup();
    let mut deny_relations = default_deny_relations();
    if mode == PoolMode::Transaction {
        deny_relations
            .extend(["pg_prepared_statements", "pg_prepared_statement"].map(str::to_owned));
    }
    let mut triggers: Vec<String> = guard::denied_functions()
        .iter()
        .map(|f| (*f).to_owned())
        .collect();
    triggers.extend(guard::LARGE_OBJECT_RELATIONS.map(str::to_owned));
    triggers.extend(guard::LARGE_OBJECT_FUNCTIONS.map(str::to_owned));
    let cfg = GuardConfig {
        owned: s.owned.clone(),
        deny_relations: deny_relations.clone(),
        refuse_do_blocks: false,
        allow_set_role: false,
        allow_large_objects: false,
        scoped_backend_calls: true,
    };
    let names = [&s.owned[..], &deny_relations[..], &triggers[..]].concat();
    (cfg, names)
}

fn inspector(mode: PoolMode) -> Inspector {
    let (cfg, names) = guard_config(mode);
    Inspector::new(Some(Guard::new(cfg)), mode, &names)
}

fn message(tag: u8, name: Option<&[u8]>, text: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    if let Some(n) = name {
        body.extend_from_slice(n);
        body.push(0);
    }
    body.extend_from_slice(text);
    body.push(0);
    if tag == fe::PARSE {
        body.extend_from_slice(&0u16.to_be_bytes());
    }
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(&body);
    m
}

fn same(a: &Analysis, b: &Analysis) -> bool {
    a.guard == b.guard
        && a.effects == b.effects
        && a.session_only == b.session_only
        && a.channels == b.channels
        && a.clean == b.clean
        && a.encoding == b.encoding
}

fuzz_target!(|data: &[u8]| {
    let [enc, flags, rest @ ..] = data else {
        return;
    };
    let s = setup();
    let (prefix, text) = match rest.iter().position(|&b| b == 0xFF) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&[][..], rest),
    };
    // The server reads a Query/Parse string up to its NUL.
    let text = &text[..text.iter().position(|&b| b == 0).unwrap_or(text.len())];
    let prefix = &prefix[..prefix.iter().position(|&b| b == 0).unwrap_or(prefix.len())];
    let reading = match *enc as usize {
        i if i < s.encodings.len() => Reading::Known(s.encodings[i]),
        _ => Reading::Unknown("client_encoding not known yet".into()),
    };
    let mode = if flags & 1 == 0 {
        PoolMode::Session
    } else {
        PoolMode::Transaction
    };

    let query = message(fe::QUERY, None, text);
    let parse = message(fe::PARSE, Some(b"s1"), text);
    let warm = inspector(mode);
    let _ = warm.inspect_message(fe::QUERY, &message(fe::QUERY, None, prefix), &reading);
    let (v_warm, a_warm) = warm.inspect_message(fe::QUERY, &query, &reading);
    let fresh = inspector(mode);
    let (v_fresh, a_fresh) = fresh.inspect_message(fe::QUERY, &query, &reading);
    assert_eq!(
        v_warm, v_fresh,
        "verdict depends on what was analysed before"
    );
    let (v_parse, a_parse) = inspector(mode).inspect_message(fe::PARSE, &parse, &reading);
    assert_eq!(
        v_fresh, v_parse,
        "Query and Parse of one text decided differently"
    );
    match (&a_warm, &a_fresh, &a_parse) {
        (Some(w), Some(f), Some(p)) => {
            assert!(same(w, f), "analysis depends on the cache:\n{w:?}\n{f:?}");
            assert!(same(f, p), "Query and Parse analysed differently");
        }
        (None, None, None) => {}
        _ => panic!("analysis present for some forms only"),
    }

    let enc = match &reading {
        Reading::Known(e) => *e,
        Reading::Unknown(_) if text.is_ascii() => Encoding::Utf8,
        Reading::Unknown(_) => {
            assert!(matches!(v_fresh, Verdict::Refuse { code: "55000", .. }));
            return;
        }
    };
    let Ok(sql) = encoding::read(text, enc) else {
        assert!(matches!(v_fresh, Verdict::Refuse { code: "22021", .. }));
        return;
    };
    check_reading(text, enc, &sql);

    // The fast path must not skip a statement the guard refuses.
    let (cfg, _) = guard_config(mode);
    let g = Guard::new(cfg.clone());
    let verdict = g.check(&sql.text);
    assert_eq!(
        verdict,
        g.check(&sql.text),
        "guard cache changed the verdict"
    );
    assert_eq!(
        verdict,
        Guard::new(cfg).check(&sql.text),
        "guard is not deterministic"
    );
    if let guard::Verdict::Refuse(r) = &verdict {
        if r.rule != Rule::Unparsable {
            assert!(
                matches!(v_fresh, Verdict::Refuse { .. }),
                "inspector allowed what the guard refuses ({}): {:?}",
                r.rule,
                sql.text
            );
        }
    }
});

/// Reading text in an ASCII-safe encoding keeps every byte in place (one char a byte
/// when it is not UTF-8); every reading keeps the ASCII characters in their order.
fn check_reading(bytes: &[u8], enc: Encoding, sql: &encoding::SqlText<'_>) {
    if bytes.is_ascii() || sql.utf8 {
        assert_eq!(sql.text.as_bytes(), bytes);
        return;
    }
    match enc.class() {
        Class::AsciiSafe => {
            let chars: Vec<char> = sql.text.chars().collect();
            assert_eq!(chars.len(), bytes.len());
            for (c, b) in chars.iter().zip(bytes) {
                assert_eq!(*c as u32, *b as u32);
            }
        }
        // Decoded with encoding_rs (SJIS, GBK, UHC): proven against the server in
        // integration/encoding.rs, nothing more to compare here.
        Class::Decoded(_) => {}
        Class::Refused => unreachable!("refused encodings are never read"),
    }
}
