use super::*;

fn utf8_server() -> Vec<(String, String)> {
    vec![("server_encoding".into(), "UTF8".into())]
}

#[test]
fn idle_reading_is_what_the_server_reported() {
    let params = utf8_server();
    let mut s = ClientEncoding::new(Encoding::Utf8, Some(&params));
    assert_eq!(
        s.reading(true, TxStatus::Idle),
        Reading::Known(Encoding::Utf8)
    );
    s.on_statement(
        fe::QUERY,
        &crate::sql::encoding::changes_of("SET client_encoding='SJIS'"),
    );
    // Pipelined behind the change: UTF8 or SJIS, which read differently.
    assert!(matches!(
        s.reading(false, TxStatus::Idle),
        Reading::Unknown(_)
    ));
    s.on_parameter_status("client_encoding", "SJIS", false)
        .unwrap();
    assert_eq!(
        s.reading(true, TxStatus::Idle),
        Reading::Known(Encoding::Sjis)
    );
    assert_eq!(s.current(), Encoding::Sjis);
    // Settled: pipelining is fine again.
    assert_eq!(
        s.reading(false, TxStatus::Idle),
        Reading::Known(Encoding::Sjis)
    );
}

#[test]
fn a_failed_change_leaves_the_reported_encoding() {
    let params = utf8_server();
    let mut s = ClientEncoding::new(Encoding::Utf8, Some(&params));
    s.reading(true, TxStatus::Idle);
    s.on_statement(
        fe::QUERY,
        &crate::sql::encoding::changes_of("SET client_encoding='SJIS'; SELECT 1/0"),
    );
    // No ParameterStatus came: the server still uses UTF8.
    assert_eq!(
        s.reading(true, TxStatus::Idle),
        Reading::Known(Encoding::Utf8)
    );
}

#[test]
fn a_transaction_keeps_what_a_rollback_may_return_to() {
    let params = utf8_server();
    let mut s = ClientEncoding::new(Encoding::Utf8, Some(&params));
    s.reading(true, TxStatus::Idle);
    s.on_statement(
        fe::QUERY,
        &crate::sql::encoding::changes_of("SET client_encoding='SJIS'"),
    );
    s.on_parameter_status("client_encoding", "SJIS", false)
        .unwrap();
    // Idle inside the block: exact. Pipelined: a ROLLBACK may go back to UTF8.
    assert_eq!(
        s.reading(true, TxStatus::InTransaction),
        Reading::Known(Encoding::Sjis)
    );
    assert!(matches!(
        s.reading(false, TxStatus::InTransaction),
        Reading::Unknown(_)
    ));
}

#[test]
fn unexpected_or_refused_reports_end_the_session() {
    let params = utf8_server();
    let mut s = ClientEncoding::new(Encoding::Utf8, Some(&params));
    assert_eq!(
        s.on_parameter_status("client_encoding", "SJIS", false),
        Err(EncodingError::Unexpected("SJIS"))
    );
    assert!(matches!(
        s.on_parameter_status("client_encoding", "SHIFT_JIS_2004", false),
        Err(EncodingError::Refused(..))
    ));
    // The proxy's own reset and context.
    assert!(s
        .on_parameter_status("client_encoding", "UTF8", true)
        .is_ok());
    assert!(s.on_parameter_status("DateStyle", "ISO", false).is_ok());
}

#[test]
fn decoded_encodings_need_a_utf8_database() {
    let params = vec![("server_encoding".to_owned(), "SQL_ASCII".to_owned())];
    let mut s = ClientEncoding::new(Encoding::Sjis, Some(&params));
    assert!(matches!(
        s.reading(true, TxStatus::Idle),
        Reading::Unknown(_)
    ));
    let mut s = ClientEncoding::new(Encoding::Latin1, Some(&params));
    assert_eq!(
        s.reading(true, TxStatus::Idle),
        Reading::Known(Encoding::Latin1)
    );
}

#[test]
fn context_encoding_follows_startup_then_replayed_sets() {
    let settings = vec![("client_encoding".to_owned(), "sjis".to_owned())];
    assert_eq!(of_settings(&settings, &[]), Encoding::Sjis);
    let replay = vec![(
        "client_encoding".to_owned(),
        "SET client_encoding = 'LATIN1'".to_owned(),
    )];
    assert_eq!(of_settings(&settings, &replay), Encoding::Latin1);
    assert_eq!(of_settings(&[], &[]), Encoding::Utf8);
}
