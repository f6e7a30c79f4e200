use super::*;

#[test]
fn aliases_are_sorted_and_normalised() {
    for w in ALIASES.windows(2) {
        assert!(w[0].0 < w[1].0, "{} before {}", w[0].0, w[1].0);
    }
    for (alias, _) in ALIASES {
        assert!(alias
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    }
    // Every canonical name is reachable through the table.
    for e in Encoding::ALL {
        assert_eq!(Encoding::from_name(e.name()), Some(*e), "{}", e.name());
    }
}

#[test]
fn names_are_cleaned_as_postgresql_does() {
    for (name, want) in [
        ("sjis.", Encoding::Sjis),
        ("s j i s", Encoding::Sjis),
        ("big-5.", Encoding::Big5),
        ("GBK ", Encoding::Gbk),
        ("WINDOWS932", Encoding::Sjis),
        ("windows-936", Encoding::Gbk),
        ("Shift-JIS-2004", Encoding::ShiftJis2004),
        ("ISO_8859-1", Encoding::Latin1),
        ("Unicode", Encoding::Utf8),
    ] {
        assert_eq!(Encoding::from_name(name), Some(want), "{name:?}");
    }
    for name in ["cp932", "", "utf-8é", "auto", &"u".repeat(70)] {
        assert_eq!(Encoding::from_name(name), None, "{name:?}");
    }
}

#[test]
fn refused_and_allowed() {
    for name in [
        "SHIFT_JIS_2004",
        "shiftjis2004",
        "JOHAB",
        "GB18030",
        "big-5.",
        "nonsense",
    ] {
        assert!(allowed(name).is_err(), "{name}");
    }
    for name in [
        "UTF8",
        "latin1",
        "EUC_JIS_2004",
        "SJIS",
        "win932",
        "GBK ",
        "windows-936",
        "UHC",
    ] {
        assert!(allowed(name).is_ok(), "{name}");
    }
}

#[test]
fn reading_in_the_client_encoding() {
    let trick = b"SELECT E'\x95\\'; SELECT set_config($$app.current_tenant$$,$$2$$,false); --'";
    // Byte for char: the backslash escapes the quote, all one literal.
    let latin = read(trick, Encoding::Latin1).unwrap();
    assert!(!latin.utf8);
    assert!(latin.text.contains("\u{95}\\'"));
    // SJIS: 0x95 0x5C is one character, the literal ends, set_config is live.
    let sjis = read(trick, Encoding::Sjis).unwrap();
    let rest = sjis.text.strip_prefix("SELECT E'").unwrap();
    let mut chars = rest.chars();
    assert!(!chars.next().unwrap().is_ascii());
    assert!(chars.as_str().starts_with("'; SELECT set_config"));
    assert!(!sjis.utf8);
    // Malformed SJIS is refused as PostgreSQL would.
    assert_eq!(
        read(b"SELECT '\x81'", Encoding::Sjis).unwrap_err(),
        Malformed(Encoding::Sjis)
    );
    // ASCII is the same everywhere, borrowed.
    assert!(read(b"SELECT 1", Encoding::Sjis).unwrap().utf8);
}

#[test]
fn changes_found_in_the_parse_tree() {
    let c = changes_of("SET client_encoding = 'sjis'");
    assert_eq!(c.targets, vec![Encoding::Utf8, Encoding::Sjis]);
    let c = changes_of("SET NAMES 'LATIN1'");
    assert_eq!(c.targets, vec![Encoding::Utf8, Encoding::Latin1]);
    let c = changes_of("SELECT set_config(U&'client_encodin\\0067', 'BIG5', false)");
    assert_eq!(c.targets, vec![Encoding::Utf8, Encoding::Big5]);
    let c = changes_of("RESET client_encoding");
    assert_eq!(c.targets, vec![Encoding::Utf8]);
    assert!(changes_of("SELECT 'sjis'").is_empty());
    assert!(changes_of("SET search_path = names").is_empty());
}
