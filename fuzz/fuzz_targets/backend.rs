//! Server → proxy messages: framing and every decoder the proxy runs on replies.
//!
//! Input: `[chunk size][server bytes...]`. The bytes are scanned whole and in chunks
//! (`common::scan_both`), every message goes through the proxy's own decoders
//! (ErrorResponse fields and their rewriting, ParameterStatus, ReadyForQuery,
//! NotificationResponse unscoping, statement-name unrenaming), and the same bytes go
//! through postgres-protocol's `Message::parse`, which `upstream::conn` uses during
//! startup: both parsers must agree on framing and on ParameterStatus.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use libfuzzer_sys::fuzz_target;
use postgres_protocol::message::backend::Message;
use rlsgate::session::prepared::ClientStatements;
use rlsgate::sql::channels;
use rlsgate::wire::protocol::{self, backend as be, ErrorFields, TxStatus, HEADER_LEN};

/// Stands for the server name of statement `s1` in the input (same length, so frames
/// stay valid when it is substituted): server names are keyed per process.
const PLACEHOLDER: &[u8] = b"rlsgate_################";

fuzz_target!(|data: &[u8]| {
    let [chunk, stream @ ..] = data else {
        return;
    };
    let scan = common::scan_both(stream, *chunk as usize + 1, |_| true);
    let mut statements = ClientStatements::default();
    let mut parse = BytesMut::new();
    protocol::put_parse(&mut parse, "s1", "SELECT $1");
    let server_name = statements
        .on_parse(&parse, None)
        .unwrap()
        .server_name
        .clone();
    assert_eq!(server_name.len(), PLACEHOLDER.len());
    for msg in &scan.messages {
        ours(msg, &statements, &server_name);
        theirs(msg);
    }
});

/// The proxy's decoders (wire::protocol, sql::channels, session::prepared).
fn ours(msg: &[u8], statements: &ClientStatements, server_name: &str) {
    match msg[0] {
        be::ERROR_RESPONSE | be::NOTICE_RESPONSE => {
            let fields = protocol::parse_error_fields(msg);
            replace_round_trip(msg, &fields, "rlsgate_", "s1");
            let renamed = substitute(msg, PLACEHOLDER, server_name.as_bytes());
            if let Some(out) = statements.unrename_error(&renamed) {
                assert_eq!(protocol::header(&out), Ok(Some((msg[0], out.len()))));
                let before = protocol::parse_error_fields(&renamed);
                let after = protocol::parse_error_fields(&out);
                assert_eq!(after.message, before.message.replace(server_name, "s1"));
            }
        }
        be::PARAMETER_STATUS => {
            let _ = protocol::parse_parameter_status(msg);
        }
        be::READY_FOR_QUERY => {
            // As upstream::conn reads it.
            let status = TxStatus::from_byte(msg.get(5).copied().unwrap_or(0));
            if let Some(s) = status {
                assert_eq!(TxStatus::from_byte(s.as_byte()), Some(s));
            }
        }
        be::NOTIFICATION_RESPONSE => unscope(msg),
        _ => {}
    }
}

/// `replace_in_error` keeps the framing and changes exactly the field values.
fn replace_round_trip(msg: &[u8], fields: &ErrorFields, from: &str, to: &str) {
    let Some(out) = protocol::replace_in_error(msg, from, to) else {
        return;
    };
    assert_eq!(protocol::header(&out), Ok(Some((msg[0], out.len()))));
    let expected = ErrorFields {
        severity: fields.severity.replace(from, to),
        code: fields.code.replace(from, to),
        message: fields.message.replace(from, to),
    };
    assert_eq!(protocol::parse_error_fields(&out), expected);
    if !msg.windows(from.len()).any(|w| w == from.as_bytes()) {
        // Nothing to replace: the same fields, re-encoded up to the terminator.
        assert_eq!(protocol::parse_error_fields(&out), *fields);
    }
}

/// A NotificationResponse in the client's namespace loses the suffix and nothing else.
fn unscope(msg: &[u8]) {
    let suffix = channels::suffix("acme");
    let Some(out) = channels::unscope_notification(msg, &suffix) else {
        return;
    };
    assert_eq!(
        protocol::header(&out),
        Ok(Some((be::NOTIFICATION_RESPONSE, out.len())))
    );
    let (a, b) = (protocol::body(msg), protocol::body(&out));
    assert_eq!(a[..4], b[..4], "pid changed");
    let (mut pa, mut pb) = (4, 4);
    let channel = common::cstr_bytes(a, &mut pa).expect("unscoped without a channel");
    let own = common::cstr_bytes(b, &mut pb).expect("unscoped output without a channel");
    assert_eq!([own, suffix.as_bytes()].concat(), channel);
    assert_eq!(a[pa..], b[pb..], "payload changed");
}

/// postgres-protocol's parser, as `upstream::conn` drives it at startup.
fn theirs(msg: &[u8]) {
    let mut buf = BytesMut::from(msg);
    let parsed = match Message::parse(&mut buf) {
        Ok(Some(m)) => m,
        Ok(None) => panic!("postgres-protocol wants more of a whole message"),
        Err(_) => return,
    };
    assert!(
        buf.is_empty(),
        "the two parsers disagree on the message length"
    );
    match parsed {
        Message::ParameterStatus(body) => {
            if let (Ok(name), Ok(value)) = (body.name(), body.value()) {
                if let Some(ours) = protocol::parse_parameter_status(msg) {
                    assert_eq!(ours, (name, value), "ParameterStatus read differently");
                }
            }
        }
        Message::AuthenticationSasl(body) => {
            let mut mechs = body.mechanisms();
            while let Ok(Some(_)) = mechs.next() {}
        }
        Message::AuthenticationSaslContinue(body) => scram(body.data()),
        Message::AuthenticationMd5Password(body) => {
            let _ = postgres_protocol::authentication::md5_hash(b"u", b"p", body.salt());
        }
        Message::BackendKeyData(body) => {
            assert_eq!(msg.len(), HEADER_LEN + 8);
            let _ = (body.process_id(), body.secret_key());
        }
        Message::ErrorResponse(body) => {
            let mut f = body.fields();
            while let Ok(Some(field)) = f.next() {
                let _ = (field.type_(), field.value_bytes());
            }
        }
        Message::NoticeResponse(body) => {
            let mut f = body.fields();
            while let Ok(Some(field)) = f.next() {
                let _ = (field.type_(), field.value_bytes());
            }
        }
        Message::RowDescription(body) => {
            let mut f = body.fields();
            while let Ok(Some(field)) = f.next() {
                let _ = (field.name(), field.type_oid(), field.format());
            }
        }
        Message::DataRow(body) => {
            let mut r = body.ranges();
            while let Ok(Some(range)) = r.next() {
                if let Some(range) = range {
                    assert!(range.end <= body.buffer().len());
                }
            }
        }
        Message::ReadyForQuery(body) => {
            let _ = TxStatus::from_byte(body.status());
        }
        _ => {}
    }
}

/// The SCRAM client step `upstream::conn` runs on the server's first message.
fn scram(server_first: &[u8]) {
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    let mut s = ScramSha256::new(b"password", ChannelBinding::unsupported());
    if s.update(server_first).is_ok() {
        let _ = s.message();
        let _ = s.finish(b"v=AAAA");
    }
}

fn substitute(msg: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = msg.to_vec();
    let mut i = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
            i += from.len();
        } else {
            i += 1;
        }
    }
    out
}
