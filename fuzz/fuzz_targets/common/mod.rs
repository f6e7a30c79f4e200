//! Helpers shared by the fuzz targets: feeding a byte stream through the proxy's
//! `Scanner` the way the session does, and framing raw messages.
#![allow(dead_code)]

use rlsgate::wire::protocol::{self, FrameError, Scanner, Step, HEADER_LEN};

/// What a scan of a byte stream produced, normalised so that scans of the same bytes
/// fed in different chunk sizes compare equal.
#[derive(Debug, PartialEq, Eq, Default)]
pub struct Scan {
    /// Whole messages the caller wanted, in order.
    pub messages: Vec<Vec<u8>>,
    /// Every byte handed on (passed or wanted), in order; without a framing error this
    /// is the stream minus an incomplete tail.
    pub forwarded: Vec<u8>,
    /// The framing error that stopped the scan, if any.
    pub error: Option<FrameError>,
}

/// Feeds `stream` in chunks of `chunk` bytes (the last may be shorter) to a `Scanner`,
/// as the session's read loop does: append what arrived, step until `NeedMore`, keep
/// the unconsumed tail. Asserts the `Step` contract on every step.
pub fn scan(stream: &[u8], chunk: usize, want: impl Fn(u8) -> bool + Copy) -> Scan {
    let chunk = chunk.max(1);
    let mut out = Scan::default();
    let mut scanner = Scanner::new();
    let mut buf: Vec<u8> = Vec::new();
    // A step either consumes bytes or asks for more: bounded by bytes + chunks.
    let mut budget = 2 * stream.len() + 2 * (stream.len() / chunk) + 8;
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        let mut pos = 0;
        loop {
            budget = budget.checked_sub(1).expect("Scanner made no progress");
            let at_boundary = scanner.at_boundary();
            match scanner.step(&buf, pos, want) {
                Ok(Step::Message { tag, start, end }) => {
                    assert!(at_boundary, "Message while inside a passed message");
                    assert_eq!(start, pos, "Message must start where asked");
                    assert!(end <= buf.len(), "Message past the buffer");
                    assert!(end - start >= HEADER_LEN, "Message shorter than a header");
                    assert!(want(tag), "Message of an unwanted tag");
                    assert_eq!(tag, buf[start]);
                    assert_eq!(
                        protocol::header(&buf[start..]),
                        Ok(Some((tag, end - start))),
                        "Message length differs from its header"
                    );
                    assert!(scanner.at_boundary());
                    out.messages.push(buf[start..end].to_vec());
                    out.forwarded.extend_from_slice(&buf[start..end]);
                    pos = end;
                }
                Ok(Step::Pass { start, end }) => {
                    assert_eq!(start, pos, "Pass must start where asked");
                    assert!(end > start, "empty Pass: no progress");
                    assert!(end <= buf.len(), "Pass past the buffer");
                    out.forwarded.extend_from_slice(&buf[start..end]);
                    pos = end;
                }
                Ok(Step::NeedMore { start }) => {
                    assert_eq!(start, pos, "NeedMore must start where asked");
                    buf.drain(..start);
                    break;
                }
                Err(e) => {
                    assert!(at_boundary, "framing error inside a passed message");
                    out.error = Some(e);
                    return out;
                }
            }
        }
    }
    out
}

/// `scan` of the whole stream at once and in `chunk`-byte pieces must agree: wanted
/// messages, framing errors and (without an error) every forwarded byte.
pub fn scan_both(stream: &[u8], chunk: usize, want: impl Fn(u8) -> bool + Copy) -> Scan {
    let whole = scan(stream, stream.len(), want);
    let pieces = scan(stream, chunk, want);
    assert_eq!(
        whole.messages, pieces.messages,
        "chunking changed the messages"
    );
    assert_eq!(
        whole.error, pieces.error,
        "chunking changed the framing error"
    );
    if whole.error.is_none() {
        assert_eq!(
            whole.forwarded, pieces.forwarded,
            "chunking changed the bytes forwarded"
        );
        assert!(
            stream.starts_with(&whole.forwarded),
            "forwarded bytes are not the stream"
        );
    }
    whole
}

/// A message with `tag` and `body`, its length header computed.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + HEADER_LEN);
    v.push(tag);
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// Reads the NUL-terminated byte string at `body[*pos..]` (any bytes, not only UTF-8).
pub fn cstr_bytes<'a>(body: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let rest = body.get(*pos..)?;
    let nul = rest.iter().position(|&b| b == 0)?;
    *pos += nul + 1;
    Some(&rest[..nul])
}

/// A single-threaded tokio runtime for the targets that drive async code.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// A private directory for files a target must hand the proxy by path.
pub fn scratch_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("rlsgate-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    })
}
