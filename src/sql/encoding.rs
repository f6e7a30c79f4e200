//! Client encodings: the one table of every encoding name PostgreSQL accepts, how each
//! encoding is read by the statement guard (or refused), and the decoding of a message's
//! SQL text exactly as the server will see it.
//!
//! PostgreSQL looks a name up after dropping every character that is not a letter or a
//! digit and lower-casing the rest (`clean_encoding_name` in `src/common/encnames.c`), so
//! `Shift-JIS-2004`, `s j i s` and `GBK ` are all names. [`Encoding::from_name`] does the
//! same over the same alias table (`pg_encname_tbl`); `integration/encoding.rs` checks
//! every entry against the server (`pg_char_to_encoding`).
//!
//! Each encoding is in one of three classes ([`Class`]):
//! - **ASCII-safe**: every byte of a multi-byte character is ≥ 0x80, so reading the bytes
//!   one char per byte keeps every ASCII character (quote, backslash, keyword) where the
//!   server sees it. Checked against the server for every allowed encoding: converting
//!   any non-ASCII byte, and any two-byte sequence of bytes ≥ 0x80 (three bytes for the
//!   `0x8F` plane of EUC_JP/EUC_JIS_2004), to UTF-8 never yields an ASCII character
//!   (`integration/encoding.rs::ascii_safe_encodings_never_convert_to_ascii`; EUC_TW's
//!   four-byte characters for CNS planes 1-2 only; MULE_INTERNAL has no conversion to
//!   UTF8, so a UTF8 database refuses it by itself).
//! - **Decoded**: multi-byte characters may end in an ASCII byte (`0x95 0x5C` is one SJIS
//!   character), so the text is decoded with `encoding_rs` before the guard parses it.
//!   Allowed only where a test against the real server proved, for every byte and every
//!   two-byte sequence with a lead ≥ 0x80, that whenever `encoding_rs` decodes it
//!   PostgreSQL's `convert_from` gives the same text or fails, and that both agree on
//!   which bytes start a two-byte character
//!   (`integration/encoding.rs::decoded_encodings_match_the_server`). Proven on
//!   PostgreSQL 15 (all 128 bytes and 32,768 two-byte sequences each): SJIS (= WIN932,
//!   MSKANJI) with `Shift_JIS`, GBK (= WIN936) with `GBK`, UHC (= WIN949) with `EUC-KR`,
//!   no disagreement. Disproven, so refused: BIG5 (267 characters convert to other
//!   Unicode characters, e.g. `A1 45`), SHIFT_JIS_2004 (2,650, JIS X 0213), JOHAB
//!   (7,692), GB18030 (20, and its four-byte characters are not covered). Decoded
//!   encodings only on a UTF8 database (another server encoding would lex the client's
//!   bytes, or a conversion of them, not Unicode).
//! - **Refused**: everything else (`SHIFT_JIS_2004`, `JOHAB`, `GB18030` whose four-byte
//!   characters contain ASCII digits, any encoding not proven, any unknown name): as a
//!   startup parameter the connection fails, in SQL the guard refuses the statement.

use std::borrow::Cow;

mod session;

pub use session::{of_settings, Changes, ClientEncoding, EncodingError, Reading};

/// Names longer than this are refused by PostgreSQL (`NAMEDATALEN - 1`).
const MAX_NAME: usize = 63;

macro_rules! encodings {
    ($($variant:ident = $name:literal,)*) => {
        /// A PostgreSQL encoding (`pg_enc`), by its canonical name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Encoding { $($variant,)* }

        impl Encoding {
            /// Every encoding PostgreSQL knows.
            pub const ALL: &'static [Encoding] = &[$(Encoding::$variant,)*];

            /// The canonical name (`pg_encoding_to_char`), as `ParameterStatus` reports it.
            pub fn name(self) -> &'static str {
                match self { $(Encoding::$variant => $name,)* }
            }
        }
    };
}

encodings! {
    SqlAscii = "SQL_ASCII", EucJp = "EUC_JP", EucCn = "EUC_CN", EucKr = "EUC_KR",
    EucTw = "EUC_TW", EucJis2004 = "EUC_JIS_2004", Utf8 = "UTF8",
    MuleInternal = "MULE_INTERNAL", Latin1 = "LATIN1", Latin2 = "LATIN2",
    Latin3 = "LATIN3", Latin4 = "LATIN4", Latin5 = "LATIN5", Latin6 = "LATIN6",
    Latin7 = "LATIN7", Latin8 = "LATIN8", Latin9 = "LATIN9", Latin10 = "LATIN10",
    Win1256 = "WIN1256", Win1258 = "WIN1258", Win866 = "WIN866", Win874 = "WIN874",
    Koi8r = "KOI8R", Win1251 = "WIN1251", Win1252 = "WIN1252", Iso8859_5 = "ISO_8859_5",
    Iso8859_6 = "ISO_8859_6", Iso8859_7 = "ISO_8859_7", Iso8859_8 = "ISO_8859_8",
    Win1250 = "WIN1250", Win1253 = "WIN1253", Win1254 = "WIN1254", Win1255 = "WIN1255",
    Win1257 = "WIN1257", Koi8u = "KOI8U", Sjis = "SJIS", Big5 = "BIG5", Gbk = "GBK",
    Uhc = "UHC", Gb18030 = "GB18030", Johab = "JOHAB", ShiftJis2004 = "SHIFT_JIS_2004",
}

use Encoding as E;

/// PostgreSQL's `pg_encname_tbl`: every accepted name, normalised, and its encoding
/// (sorted, for the binary search).
#[rustfmt::skip]
pub const ALIASES: &[(&str, Encoding)] = &[
    ("abc", E::Win1258), ("alt", E::Win866), ("big5", E::Big5), ("euccn", E::EucCn),
    ("eucjis2004", E::EucJis2004), ("eucjp", E::EucJp), ("euckr", E::EucKr),
    ("euctw", E::EucTw), ("gb18030", E::Gb18030), ("gbk", E::Gbk),
    ("iso88591", E::Latin1), ("iso885910", E::Latin6), ("iso885913", E::Latin7),
    ("iso885914", E::Latin8), ("iso885915", E::Latin9), ("iso885916", E::Latin10),
    ("iso88592", E::Latin2), ("iso88593", E::Latin3), ("iso88594", E::Latin4),
    ("iso88595", E::Iso8859_5), ("iso88596", E::Iso8859_6), ("iso88597", E::Iso8859_7),
    ("iso88598", E::Iso8859_8), ("iso88599", E::Latin5), ("johab", E::Johab),
    ("koi8", E::Koi8r), ("koi8r", E::Koi8r), ("koi8u", E::Koi8u), ("latin1", E::Latin1),
    ("latin10", E::Latin10), ("latin2", E::Latin2), ("latin3", E::Latin3),
    ("latin4", E::Latin4), ("latin5", E::Latin5), ("latin6", E::Latin6),
    ("latin7", E::Latin7), ("latin8", E::Latin8), ("latin9", E::Latin9),
    ("mskanji", E::Sjis), ("muleinternal", E::MuleInternal), ("shiftjis", E::Sjis),
    ("shiftjis2004", E::ShiftJis2004), ("sjis", E::Sjis), ("sqlascii", E::SqlAscii),
    ("tcvn", E::Win1258), ("tcvn5712", E::Win1258), ("uhc", E::Uhc),
    ("unicode", E::Utf8), ("utf8", E::Utf8), ("vscii", E::Win1258), ("win", E::Win1251),
    ("win1250", E::Win1250), ("win1251", E::Win1251), ("win1252", E::Win1252),
    ("win1253", E::Win1253), ("win1254", E::Win1254), ("win1255", E::Win1255),
    ("win1256", E::Win1256), ("win1257", E::Win1257), ("win1258", E::Win1258),
    ("win866", E::Win866), ("win874", E::Win874), ("win932", E::Sjis), ("win936", E::Gbk),
    ("win949", E::Uhc), ("win950", E::Big5), ("windows1250", E::Win1250),
    ("windows1251", E::Win1251), ("windows1252", E::Win1252), ("windows1253", E::Win1253),
    ("windows1254", E::Win1254), ("windows1255", E::Win1255), ("windows1256", E::Win1256),
    ("windows1257", E::Win1257), ("windows1258", E::Win1258), ("windows866", E::Win866),
    ("windows874", E::Win874), ("windows932", E::Sjis), ("windows936", E::Gbk),
    ("windows949", E::Uhc), ("windows950", E::Big5),
];

/// Encodings the guard decodes, each with the `encoding_rs` codec proven identical to
/// PostgreSQL's conversion to UTF-8 (see the module doc and `integration/encoding.rs`).
pub const DECODED: &[(Encoding, &encoding_rs::Encoding)] = &[
    (E::Sjis, encoding_rs::SHIFT_JIS),
    (E::Gbk, encoding_rs::GBK),
    (E::Uhc, encoding_rs::EUC_KR),
];

/// Encodings whose text no reading of the guard matches (see the module doc).
const REFUSED: &[Encoding] = &[E::Big5, E::Gb18030, E::Johab, E::ShiftJis2004];

/// How the guard reads text in an encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    AsciiSafe,
    Decoded(&'static encoding_rs::Encoding),
    Refused,
}

impl Encoding {
    /// The encoding PostgreSQL means by `name` (`pg_char_to_encoding`), if any.
    pub fn from_name(name: &str) -> Option<Encoding> {
        if name.len() > MAX_NAME || !name.is_ascii() {
            // Non-ASCII bytes: whether PostgreSQL drops them depends on its locale.
            return None;
        }
        let clean: String = name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        ALIASES
            .binary_search_by(|(alias, _)| alias.cmp(&clean.as_str()))
            .ok()
            .map(|i| ALIASES[i].1)
    }

    pub fn class(self) -> Class {
        if let Some((_, codec)) = DECODED.iter().find(|(e, _)| *e == self) {
            return Class::Decoded(codec);
        }
        if REFUSED.contains(&self) {
            Class::Refused
        } else {
            Class::AsciiSafe
        }
    }

    /// Whether the guard reads both encodings the same way.
    pub fn reads_like(self, other: Encoding) -> bool {
        self.class() == other.class()
    }
}

/// The encoding `value` names when rlsgate allows it as `client_encoding`, else `Err`
/// with the reason (unknown name, or an encoding whose text the guard cannot read).
pub fn allowed(value: &str) -> Result<Encoding, String> {
    match Encoding::from_name(value) {
        None => Err(format!("{value:?} is not an encoding PostgreSQL knows")),
        Some(e) if e.class() == Class::Refused => Err(format!(
            "{} ({value:?}) has multi-byte characters that can hide quotes from the guard",
            e.name()
        )),
        Some(e) => Ok(e),
    }
}

/// The SQL text of a message, as the server will read it.
#[derive(Debug)]
pub struct SqlText<'m> {
    /// The text. Bytes that are not UTF-8 in an ASCII-safe encoding: each byte as the
    /// char of the same number (every ASCII character stays where it is). In a decoded
    /// encoding: the decoded text.
    pub text: Cow<'m, str>,
    /// Whether `text` is exactly the message's bytes (valid UTF-8, read as such).
    pub utf8: bool,
}

/// A byte sequence invalid in the client encoding (PostgreSQL fails the same way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub Encoding);

impl Malformed {
    pub const SQLSTATE: &'static str = "22021";

    pub fn message(&self) -> String {
        format!("invalid byte sequence for encoding \"{}\"", self.0.name())
    }
}

/// Reads `bytes` in `enc` (which must not be refused: read byte-for-char then).
pub fn read(bytes: &[u8], enc: Encoding) -> Result<SqlText<'_>, Malformed> {
    if bytes.is_ascii() {
        // Identical in every client encoding rlsgate allows.
        return Ok(borrowed(bytes));
    }
    match enc.class() {
        Class::Decoded(codec) => codec
            .decode_without_bom_handling_and_without_replacement(bytes)
            .map(|text| SqlText {
                text: Cow::Owned(text.into_owned()),
                utf8: false,
            })
            .ok_or(Malformed(enc)),
        Class::AsciiSafe | Class::Refused => Ok(match std::str::from_utf8(bytes) {
            Ok(_) => borrowed(bytes),
            Err(_) => SqlText {
                text: Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()),
                utf8: false,
            },
        }),
    }
}

/// The encodings `sql` may switch `client_encoding` to: none when no statement in it
/// names the setting; else UTF8 (`RESET`, `DEFAULT`) and every string constant in it that
/// names an encoding (a superset of the values it sets: the guard refuses a value that is
/// not a constant). Read from the parse tree, so `U&"..."` and `E'\x..'` spellings count.
pub fn changes_of(sql: &str) -> Changes {
    let lower = sql.to_ascii_lowercase();
    if !["client_encoding", "names", "u&", "\\"]
        .iter()
        .any(|w| lower.contains(w))
    {
        return Changes::default();
    }
    let Ok(parsed) = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) else {
        return Changes::default(); // the server fails it as well
    };
    let tree = serde_json::to_value(&parsed.protobuf).unwrap_or_default();
    let mut strings = Vec::new();
    collect_strings(&tree, &mut strings);
    if !strings
        .iter()
        .any(|s| s.trim().eq_ignore_ascii_case("client_encoding"))
    {
        return Changes::default();
    }
    let mut targets = vec![Encoding::Utf8];
    for e in strings.iter().filter_map(|s| Encoding::from_name(s)) {
        if !targets.contains(&e) {
            targets.push(e);
        }
    }
    Changes {
        targets,
        to_startup: false,
    }
}

fn collect_strings<'v>(v: &'v serde_json::Value, out: &mut Vec<&'v str>) {
    match v {
        serde_json::Value::String(s) => out.push(s),
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        serde_json::Value::Object(m) => m.values().for_each(|x| collect_strings(x, out)),
        _ => {}
    }
}

fn borrowed(bytes: &[u8]) -> SqlText<'_> {
    SqlText {
        text: Cow::Borrowed(std::str::from_utf8(bytes).expect("checked")),
        utf8: true,
    }
}

#[cfg(test)]
mod tests;
