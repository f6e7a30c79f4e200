//! Client encodings against the real server: rlsgate's table of names and its readings
//! are checked against PostgreSQL's own (`pg_char_to_encoding`, `convert_from`), and the
//! multi-byte-backslash attack is tried through every way of choosing an encoding.

use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use rlsgate::config::PoolMode;
use rlsgate::sql::encoding::{Class, Encoding, ALIASES, DECODED};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{summarize, Env, RawMessage};

/// The attack: in an encoding where 0x95 0x5C is one character, the literal ends there
/// and the `set_config` is live; read byte for byte, it is all one string literal.
const TRICK: &[u8] =
    b"SELECT E'\x95\\'; SELECT set_config($$app.current_tenant$$,$$globex$$,false); --'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_match_the_server() {
    let env = Env::start().await;
    let admin = env.admin().await;
    let spellings = [
        "sjis.",
        "s j i s",
        "big-5.",
        "GBK ",
        "WINDOWS932",
        "windows-936",
    ];
    let names = ALIASES
        .iter()
        .map(|(a, _)| a.to_string())
        .chain(Encoding::ALL.iter().map(|e| e.name().to_owned()))
        .chain(spellings.iter().map(|s| s.to_string()))
        .chain(["Shift-JIS-2004", "cp932", "auto", "utf-8x"].map(String::from));
    for name in names {
        let row = admin
            .query_one(
                "SELECT pg_catalog.pg_encoding_to_char(pg_catalog.pg_char_to_encoding($1))",
                &[&name],
            )
            .await
            .unwrap();
        let server: String = row.get(0);
        let ours = Encoding::from_name(&name).map_or("", |e| e.name());
        assert_eq!(ours, server, "{name:?}: rlsgate and PostgreSQL disagree");
    }
}

/// Converts each byte string with `convert_from(b, enc)` on the server; NULL where it
/// fails. One round trip per call.
async fn convert_all(
    admin: &tokio_postgres::Client,
    enc: &str,
    seqs: &[Vec<u8>],
) -> Vec<Option<String>> {
    admin
        .batch_execute(
            "CREATE OR REPLACE FUNCTION pg_temp.conv(bs bytea[], enc name) RETURNS text[]
             LANGUAGE plpgsql AS $$
             DECLARE r text[] := '{}'; b bytea;
             BEGIN
               FOREACH b IN ARRAY bs LOOP
                 BEGIN r := r || convert_from(b, enc);
                 EXCEPTION WHEN others THEN r := r || NULL::text; END;
               END LOOP;
               RETURN r;
             END $$",
        )
        .await
        .unwrap();
    let row = admin
        .query_one("SELECT pg_temp.conv($1, $2)", &[&seqs, &enc])
        .await
        .unwrap();
    row.get(0)
}

/// Every byte ≥ 0x80, then every two-byte sequence with a lead ≥ 0x80 and any trail.
fn singles_and_pairs() -> Vec<Vec<u8>> {
    let mut seqs: Vec<Vec<u8>> = (0x80..=0xFFu8).map(|b| vec![b]).collect();
    for lead in 0x80..=0xFFu8 {
        seqs.extend((0..=0xFFu8).map(|t| vec![lead, t]));
    }
    seqs
}

/// For each decoded encoding: wherever `encoding_rs` decodes a byte or a two-byte
/// sequence, PostgreSQL gives the same text or fails; and both agree on which lead bytes
/// start a two-byte character. Also reports (without asserting) refused candidates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decoded_encodings_match_the_server() {
    let env = Env::start().await;
    let admin = env.admin().await;
    let seqs = singles_and_pairs();
    let candidates: Vec<(&str, &'static encoding_rs::Encoding)> = DECODED
        .iter()
        .map(|(e, c)| (e.name(), *c))
        .chain([
            ("SHIFT_JIS_2004", encoding_rs::SHIFT_JIS),
            ("GB18030", encoding_rs::GB18030),
            ("JOHAB", encoding_rs::EUC_KR),
            ("BIG5", encoding_rs::BIG5),
        ])
        .collect();
    let mut failed = Vec::new();
    for (name, codec) in candidates {
        let pg = convert_all(&admin, name, &seqs).await;
        let problems = compare(codec, &seqs, &pg);
        let decoded = Encoding::from_name(name).unwrap().class() != Class::Refused;
        eprintln!(
            "{name} ~ {}: {} disagreements",
            codec.name(),
            problems.len()
        );
        if decoded && !problems.is_empty() {
            failed.push(format!("{name}: {:?}", &problems[..problems.len().min(10)]));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

/// Disagreements between `codec` and the server's results `pg` for `seqs`.
fn compare(
    codec: &'static encoding_rs::Encoding,
    seqs: &[Vec<u8>],
    pg: &[Option<String>],
) -> Vec<String> {
    let mut problems = Vec::new();
    let rs = |b: &[u8]| {
        codec
            .decode_without_bom_handling_and_without_replacement(b)
            .map(|c| c.into_owned())
    };
    let mut pg_pairs = [false; 256]; // lead starts a two-byte character on the server
    let mut rs_pairs = [false; 256];
    for (seq, pg) in seqs.iter().zip(pg) {
        let ours = rs(seq);
        if let (Some(a), Some(b)) = (&ours, pg) {
            if a != b {
                problems.push(format!("{seq:02x?}: rlsgate {a:?}, server {b:?}"));
            }
        }
        if seq.len() == 2 {
            pg_pairs[seq[0] as usize] |= pg.as_ref().is_some_and(|t| t.chars().count() == 1);
            rs_pairs[seq[0] as usize] |= ours.is_some_and(|t| t.chars().count() == 1);
        }
    }
    for lead in 0x80..=0xFFusize {
        let single = |v: &Option<String>| v.is_some();
        let pg_single = single(&pg[lead - 0x80]);
        let rs_single = rs(&[lead as u8]).is_some();
        if (rs_single && pg_pairs[lead]) || (pg_single && rs_pairs[lead]) {
            problems.push(format!(
                "lead {lead:02x}: one side reads it alone, the other pairs it"
            ));
        }
    }
    problems
}

/// In every ASCII-safe encoding, no byte ≥ 0x80 and no multi-byte sequence of such
/// bytes converts to text containing an ASCII character (so byte-for-char reading keeps
/// every quote and backslash where the server sees it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ascii_safe_encodings_never_convert_to_ascii() {
    let env = Env::start().await;
    let admin = env.admin().await;
    let mut high: Vec<Vec<u8>> = (0x80..=0xFFu8).map(|b| vec![b]).collect();
    for a in 0x80..=0xFFu8 {
        high.extend((0x80..=0xFFu8).map(|b| vec![a, b]));
    }
    for enc in Encoding::ALL
        .iter()
        .filter(|e| e.class() == Class::AsciiSafe)
    {
        // Single-byte encodings: two bytes are two characters.
        let multibyte = [
            Encoding::EucJp,
            Encoding::EucCn,
            Encoding::EucKr,
            Encoding::EucTw,
            Encoding::EucJis2004,
            Encoding::MuleInternal,
            Encoding::Utf8,
        ];
        let mut seqs = if multibyte.contains(enc) {
            high.clone()
        } else {
            high[..128].to_vec()
        };
        match enc {
            // Three-byte characters of JIS X 0212 / 0213 plane 2.
            Encoding::EucJp | Encoding::EucJis2004 => {
                for a in 0x80..=0xFFu8 {
                    seqs.extend((0x80..=0xFFu8).map(|b| vec![0x8F, a, b]));
                }
            }
            // Four-byte CNS 11643 planes 1 and 2 (of 16), bounded in time.
            Encoding::EucTw => {
                for plane in [0xA1u8, 0xA2] {
                    for a in 0xA1..=0xFEu8 {
                        seqs.extend((0xA1..=0xFEu8).map(|b| vec![0x8E, plane, a, b]));
                    }
                }
            }
            _ => {}
        }
        let pg = convert_all(&admin, enc.name(), &seqs).await;
        let converted = pg.iter().filter(|t| t.is_some()).count();
        let bad: Vec<_> = seqs
            .iter()
            .zip(&pg)
            .filter(|(_, t)| t.as_ref().is_some_and(|t| t.chars().any(|c| c.is_ascii())))
            .map(|(s, t)| format!("{s:02x?} -> {t:?}"))
            .take(10)
            .collect();
        eprintln!(
            "{}: {converted} of {} convert, {} to ASCII",
            enc.name(),
            seqs.len(),
            bad.len()
        );
        assert!(bad.is_empty(), "{}: {bad:?}", enc.name());
    }
}

/// A raw client with its own startup parameters (no driver re-encodes anything).
struct Client {
    s: tokio::net::TcpStream,
}

impl Client {
    /// Starts up with `params`; Err with the summarized error when the login fails.
    async fn connect(env: &Env, tenant: &str, params: &[(&str, &str)]) -> Result<Client, String> {
        let s = tokio::net::TcpStream::connect(("127.0.0.1", env.port()))
            .await
            .unwrap();
        let mut c = Client { s };
        let mut buf = BytesMut::new();
        let all = [("user", "u"), ("database", "app")]
            .into_iter()
            .chain(params.iter().copied());
        frontend::startup_message(all, &mut buf).unwrap();
        c.s.write_all(&buf).await.unwrap();
        loop {
            let (tag, body) = c.read().await;
            match (tag, body.get(..4)) {
                (b'R', Some([0, 0, 0, 3])) => {
                    let mut buf = BytesMut::new();
                    frontend::password_message(env.token(tenant).as_bytes(), &mut buf).unwrap();
                    c.s.write_all(&buf).await.unwrap();
                }
                (b'E', _) => return Err(summarize(&[(tag, body)]).remove(0)),
                (b'Z', _) => return Ok(c),
                _ => {}
            }
        }
    }

    async fn read(&mut self) -> RawMessage {
        let mut head = [0u8; 5];
        self.s.read_exact(&mut head).await.unwrap();
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        self.s.read_exact(&mut body).await.unwrap();
        (head[0], body)
    }

    /// Sends one simple Query with raw bytes; the replies up to ReadyForQuery (or the
    /// end of the session).
    async fn query(&mut self, sql: &[u8]) -> Vec<RawMessage> {
        let mut m = vec![b'Q'];
        m.extend_from_slice(&((4 + sql.len() + 1) as u32).to_be_bytes());
        m.extend_from_slice(sql);
        m.push(0);
        self.s.write_all(&m).await.unwrap();
        let read = async {
            let mut out = Vec::new();
            loop {
                let m = self.read().await;
                let done = m.0 == b'Z' || is_fatal(&m);
                out.push(m);
                if done {
                    return out;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("reply within 10 s")
    }

    /// Sends Query messages in one write; the replies up to the last ReadyForQuery.
    async fn queries(&mut self, sqls: &[&[u8]]) -> Vec<RawMessage> {
        let mut m = Vec::new();
        for sql in sqls {
            m.push(b'Q');
            m.extend_from_slice(&((4 + sql.len() + 1) as u32).to_be_bytes());
            m.extend_from_slice(sql);
            m.push(0);
        }
        self.s.write_all(&m).await.unwrap();
        let mut out = Vec::new();
        while out.iter().filter(|(t, _)| *t == b'Z').count() < sqls.len() {
            let m = tokio::time::timeout(Duration::from_secs(10), self.read()).await;
            out.push(m.expect("reply within 10 s"));
        }
        out
    }

    /// The first column of the first row of `sql`'s reply, as bytes.
    async fn value(&mut self, sql: &[u8]) -> Vec<u8> {
        let msgs = self.query(sql).await;
        let (_, row) = msgs.iter().find(|(t, _)| *t == b'D').unwrap_or_else(|| {
            panic!(
                "{:?}: no row: {:?}",
                String::from_utf8_lossy(sql),
                summarize(&msgs)
            )
        });
        let len = i32::from_be_bytes(row[2..6].try_into().unwrap());
        row[6..6 + len as usize].to_vec()
    }

    /// The tenant the server holds for this session, and the tenants of rows it sees.
    async fn tenant_and_rows(&mut self) -> (String, String) {
        let t = self
            .value(b"SELECT current_setting('app.current_tenant')")
            .await;
        let r = self
            .value(b"SELECT coalesce(string_agg(DISTINCT tenant_id, ','), '') FROM customers")
            .await;
        (String::from_utf8(t).unwrap(), String::from_utf8(r).unwrap())
    }
}

/// A FATAL ErrorResponse (the session ends after it).
fn is_fatal((tag, body): &RawMessage) -> bool {
    let mut msg = vec![*tag, 0, 0, 0, 0];
    msg.extend_from_slice(body);
    *tag == b'E' && rlsgate::wire::protocol::parse_error_fields(&msg).severity == "FATAL"
}

mod attacks;
