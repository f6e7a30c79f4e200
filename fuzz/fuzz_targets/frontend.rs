//! Client → proxy framing and the per-message decoders the session runs on it.
//!
//! Input: `[want selector][chunk size][client bytes...]`. The bytes are scanned whole
//! and in chunks (`common::scan_both`: same messages, same errors, `Step` contract),
//! then every whole message goes through the decoder the session uses for its tag:
//! Parse (`parameter_types`, `ClientStatements::on_parse`, `with_sql`), Bind
//! (`bind_statement`, `rewrite_bind`), Describe/Close (`target`), Query (`sql_of`).
#![no_main]

#[path = "common/mod.rs"]
mod common;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rlsgate::session::prepared::{self, ClientStatements, StatementNamer, SERVER_PREFIX};
use rlsgate::sql::encoding::Encoding;
use rlsgate::sql::inspect::sql_of;
use rlsgate::wire::protocol::{self, frontend as fe, HEADER_LEN};

/// The tags the session reads whole (the rest it forwards as they come).
const SESSION_TAGS: &[u8] = b"QPBEDCSHFXdcf";

fn wants(selector: u8, tag: u8) -> bool {
    match selector % 4 {
        0 => true,
        1 => SESSION_TAGS.contains(&tag),
        2 => matches!(tag, fe::PARSE | fe::BIND | fe::SYNC),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let [selector, chunk, stream @ ..] = data else {
        return;
    };
    let (selector, chunk) = (*selector, *chunk as usize + 1);
    let scan = common::scan_both(stream, chunk, |t| wants(selector, t));
    let mut statements = ClientStatements::new(StatementNamer::default(), "acme");
    for msg in &scan.messages {
        decode(msg, &mut statements);
    }
});

fn decode(msg: &[u8], statements: &mut ClientStatements) {
    match msg[0] {
        fe::PARSE => parse(msg, statements),
        fe::BIND => bind(msg),
        fe::DESCRIBE | fe::CLOSE => describe_or_close(msg),
        fe::QUERY => query(msg),
        _ => {}
    }
}

/// Every encoding `sql_of` may be asked to read in.
fn encodings() -> impl Iterator<Item = Encoding> {
    [
        Encoding::Utf8,
        Encoding::SqlAscii,
        Encoding::Latin1,
        Encoding::Sjis,
        Encoding::Gbk,
        Encoding::Uhc,
    ]
    .into_iter()
}

fn query(msg: &[u8]) {
    for enc in encodings() {
        if let Some(text) = sql_of(fe::QUERY, msg, enc) {
            // The text stops at the first NUL: the server reads no further.
            assert!(!text.text.contains('\0'));
        }
    }
    with_sql_round_trip(msg);
}

fn parse(msg: &[u8], statements: &mut ClientStatements) {
    let types = prepared::parameter_types(msg);
    let body = protocol::body(msg);
    assert!(types.len() * 4 <= body.len(), "more types than bytes");

    let mut pos = 0;
    let client_name = protocol::read_cstr(body, &mut pos).map(str::to_owned);
    let rest = &body[pos..];
    match statements.on_parse(msg, None) {
        None => assert!(
            client_name.as_deref().is_none_or(str::is_empty),
            "a named Parse was not recorded"
        ),
        Some(stmt) => {
            let name = client_name.expect("recorded without a name");
            assert!(!name.is_empty());
            assert!(stmt.server_name.starts_with(SERVER_PREFIX));
            assert!(statements.get(&name).is_some());
            // The rewritten Parse is framed, names the server statement and keeps the
            // text and parameter types byte for byte.
            let p = &stmt.parse[..];
            assert_eq!(protocol::header(p), Ok(Some((fe::PARSE, p.len()))));
            let mut at = 0;
            let pbody = protocol::body(p);
            assert_eq!(
                protocol::read_cstr(pbody, &mut at),
                Some(stmt.server_name.as_str())
            );
            assert_eq!(&pbody[at..], rest, "Parse text/types changed by renaming");
            assert_eq!(prepared::parameter_types(p), types);
            for enc in encodings() {
                assert_eq!(
                    sql_of(fe::PARSE, p, enc).map(|t| t.text.into_owned()),
                    sql_of(fe::PARSE, msg, enc).map(|t| t.text.into_owned()),
                    "renamed Parse reads differently in {enc:?}"
                );
            }
            // Same text, same types: same server name (shared by the tenant's clients).
            let again = statements.on_parse(msg, None).expect("parsed twice");
            assert_eq!(again.server_name, stmt.server_name);
            statements.close(&name);
            assert!(statements.get(&name).is_none());
        }
    }
    with_sql_round_trip(msg);
}

/// `with_sql` (the rewrites of scoped views and channels) keeps the framing, the
/// statement name and the parameter types, and the new text reads back exactly.
fn with_sql_round_trip(msg: &[u8]) {
    const NEW: &str = "SELECT 'rewritten', $1";
    let tag = msg[0];
    let Some(out) = protocol::with_sql(msg, NEW) else {
        return;
    };
    assert_eq!(protocol::header(&out), Ok(Some((tag, out.len()))));
    assert_eq!(
        sql_of(tag, &out, Encoding::Utf8).map(|t| t.text.into_owned()),
        Some(NEW.to_owned())
    );
    if tag == fe::PARSE {
        let (mut a, mut b) = (0, 0);
        assert_eq!(
            protocol::read_cstr(protocol::body(msg), &mut a),
            protocol::read_cstr(protocol::body(&out), &mut b),
            "with_sql changed the statement name"
        );
        assert_eq!(
            prepared::parameter_types(&out),
            prepared::parameter_types(msg)
        );
    }
}

fn bind(msg: &[u8]) {
    const SERVER: &str = "rlsgate_00112233445566ff";
    let Some((portal, stmt)) = prepared::bind_statement(msg) else {
        return;
    };
    let (portal, stmt) = (portal.to_owned(), stmt.to_owned());
    let mut out = BytesMut::new();
    prepared::rewrite_bind(msg, SERVER, &mut out);
    // Re-parses to the same portal, the server name, and the same parameters/formats.
    assert_eq!(protocol::header(&out), Ok(Some((fe::BIND, out.len()))));
    assert_eq!(
        prepared::bind_statement(&out),
        Some((portal.as_str(), SERVER))
    );
    let old_rest = &msg[HEADER_LEN + portal.len() + 1 + stmt.len() + 1..];
    let new_rest = &out[HEADER_LEN + portal.len() + 1 + SERVER.len() + 1..];
    assert_eq!(old_rest, new_rest, "rewrite_bind changed the parameters");
    // And back: rewriting to the client's name gives the original message.
    let mut back = BytesMut::new();
    prepared::rewrite_bind(&out, &stmt, &mut back);
    assert_eq!(&back[..], msg, "rewrite_bind is not reversible");
}

fn describe_or_close(msg: &[u8]) {
    let Some((kind, name)) = prepared::target(msg) else {
        return;
    };
    let mut out = BytesMut::new();
    prepared::put_statement_message(&mut out, msg[0], name);
    assert_eq!(protocol::header(&out), Ok(Some((msg[0], out.len()))));
    assert_eq!(prepared::target(&out), Some((b'S', name)));
    if kind == b'S' && msg.len() == HEADER_LEN + 1 + name.len() + 1 {
        assert_eq!(
            &out[..],
            msg,
            "Describe/Close of a statement rebuilt differently"
        );
    }
}
