//! The shape of a statement: its text with every numeric constant replaced by `0`, so
//! `UPDATE t SET x = x + 5 WHERE id = 7` and `... + 9 WHERE id = 12` share one cached
//! analysis instead of one parse each (pgbench's simple protocol, ORMs that inline
//! numbers).
//!
//! Why this is safe: a rule's verdict never depends on the value of a numeric constant
//! (rules look at statement kinds, setting and relation names, function names and
//! bodies). Only texts the small lexer below models exactly get a shape: anything with a
//! backslash, `E'...'`, `U&`, `$` (dollar quotes, parameters), comments or an unterminated
//! quote gets none and takes the exact-text path. Digits inside quoted strings and quoted
//! identifiers, and digits that are part of an identifier (`t1`), are kept.

/// The shape of `sql`, or `None` when the text has no numeric constant or contains
/// something the lexer does not model.
pub fn shape(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    if b.iter().any(|&c| c == b'\\' || c == b'$') {
        return None;
    }
    let mut out = String::with_capacity(sql.len());
    let mut changed = false;
    let mut i = 0;
    let mut last = 0; // start of the not yet copied text
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' | b'"' => {
                if c == b'\'' && i > 0 && matches!(b[i - 1], b'e' | b'E') && !after_word(b, i - 1) {
                    return None; // E'...': backslash escapes
                }
                i = skip_quoted(b, i)?;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => return None,
            b'/' if b.get(i + 1) == Some(&b'*') => return None,
            b'&' if i > 0 && matches!(b[i - 1], b'u' | b'U') => return None,
            b'0'..=b'9' | b'.' if starts_number(b, i) => {
                let end = number_end(b, i)?;
                out.push_str(&sql[last..i]);
                out.push('0');
                last = end;
                changed = true;
                i = end;
            }
            _ => i += 1,
        }
    }
    if !changed {
        return None;
    }
    out.push_str(&sql[last..]);
    Some(out)
}

/// True when the byte before `i` (if any) continues an identifier or a number.
fn after_word(b: &[u8], i: usize) -> bool {
    i > 0 && is_word(b[i - 1])
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

/// A numeric constant starts here: a digit (or `.digit`) not inside a word.
fn starts_number(b: &[u8], i: usize) -> bool {
    if after_word(b, i) || (i > 0 && b[i - 1] == b'.') {
        return false;
    }
    match b[i] {
        b'0'..=b'9' => true,
        b'.' => b.get(i + 1).is_some_and(u8::is_ascii_digit),
        _ => false,
    }
}

/// End of the numeric constant starting at `i`: `0x1F`/`0o17`/`0b101`, or digits with
/// `_` separators, an optional fraction and an optional exponent. `None` when a letter,
/// digit or `.` follows directly (`1from t`, `1x`): PostgreSQL splits such text into a
/// number and a word, and replacing only part of it could make two different
/// statements share a shape.
fn number_end(b: &[u8], i: usize) -> Option<usize> {
    let digits = |mut j: usize, ok: fn(&u8) -> bool| {
        while b.get(j).is_some_and(|c| ok(c) || *c == b'_') {
            j += 1;
        }
        j
    };
    let mut j = i;
    if b[i] == b'0' && b.get(i + 1).is_some_and(|c| b"xXoObB".contains(c)) {
        j = digits(i + 2, u8::is_ascii_hexdigit);
    } else {
        j = digits(j, u8::is_ascii_digit);
        if b.get(j) == Some(&b'.') {
            j = digits(j + 1, u8::is_ascii_digit);
        }
        if b.get(j).is_some_and(|c| *c == b'e' || *c == b'E') {
            let mut k = j + 1;
            if b.get(k).is_some_and(|c| *c == b'+' || *c == b'-') {
                k += 1;
            }
            if b.get(k).is_some_and(u8::is_ascii_digit) {
                j = digits(k, u8::is_ascii_digit);
            }
        }
    }
    match b.get(j) {
        Some(&c) if is_word(c) || c == b'.' => None,
        _ => Some(j),
    }
}

/// Index after the quoted string or identifier starting at `i` (a doubled quote is an
/// escaped one); `None` when it does not end.
fn skip_quoted(b: &[u8], i: usize) -> Option<usize> {
    let q = b[i];
    let mut j = i + 1;
    loop {
        match *b.get(j)? {
            c if c == q && b.get(j + 1) == Some(&q) => j += 2,
            c if c == q => return Some(j + 1),
            _ => j += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::shape;

    #[test]
    fn numbers_become_zero_outside_strings_and_words() {
        assert_eq!(
            shape("UPDATE pgbench_accounts SET abalance = abalance + -4519 WHERE aid = 83627;")
                .as_deref(),
            Some("UPDATE pgbench_accounts SET abalance = abalance + -0 WHERE aid = 0;")
        );
        assert_eq!(
            shape("SELECT 1.5, .5, 1e-3, 0x1F, 1_000 FROM t1 WHERE \"c 2\" = 'x 3'").as_deref(),
            Some("SELECT 0, 0, 0, 0, 0 FROM t1 WHERE \"c 2\" = 'x 3'")
        );
        assert_eq!(
            shape("SELECT 'it''s 5', 7").as_deref(),
            Some("SELECT 'it''s 5', 0")
        );
        assert_eq!(
            shape("SELECT b'101', x'1f', 2").as_deref(),
            Some("SELECT b'101', x'1f', 0")
        );
        // Same shape: only the numbers differ.
        assert_eq!(
            shape("INSERT INTO h VALUES (1, 2, 3)"),
            shape("INSERT INTO h VALUES (40, 50, 60)")
        );
    }

    #[test]
    fn texts_the_lexer_does_not_model_have_no_shape() {
        for sql in [
            "SELECT 1 -- 2",
            "SELECT /* 1 */ 2",
            "SELECT E'\\x' , 1",
            "SELECT e'a', 1",
            "SELECT U&'d\\0061t' , 1",
            "SELECT u&\"x\", 1",
            "SELECT $1, 2",
            "DO $$ BEGIN PERFORM 1; END $$",
            "SELECT 'unterminated, 1",
            "SELECT 'a\\', 1",
            "SELECT x FROM t", // no number: exact-text cache
            // A number glued to a word: `1from secret` reads a table, `1 secret` is an
            // alias; they must never share a shape.
            "SELECT 1from secret",
            "SELECT 1secret",
            "SELECT 1.2.3",
            "SELECT 0x1G",
        ] {
            assert_eq!(shape(sql), None, "{sql}");
        }
        // `e` ending an identifier is not an escape-string prefix.
        assert_eq!(
            shape("SELECT 1 FROM t WHERE type='x'").as_deref(),
            Some("SELECT 0 FROM t WHERE type='x'")
        );
    }
}
