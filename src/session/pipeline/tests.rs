//! Pipeline accounting tests: reply ownership, skipping after errors, COPY.
use super::*;

#[test]
fn extended_sequence_and_release_point() {
    let mut p = Pipeline::default();
    p.client(Reply::Parse);
    p.client(Reply::Bind);
    p.client(Reply::Execute);
    p.client(Reply::UntilReady);
    for tag in [b'1', b'2', b'D', b'D', b'C'] {
        assert_eq!(p.on_message(tag), Disposition::Forward);
        assert!(!p.is_empty());
    }
    assert_eq!(p.on_message(b'Z'), Disposition::Forward);
    assert!(p.is_empty());
}

#[test]
fn proxy_statement_replies_are_swallowed_and_errors_reported() {
    let mut p = Pipeline::default();
    p.proxy(true);
    p.client(Reply::UntilReady);
    for tag in [b'1', b'2', b'D', b'C'] {
        assert_eq!(p.on_message(tag), Disposition::Swallow);
    }
    assert_eq!(
        p.on_message(b'E'),
        Disposition::ProxyError { critical: true }
    );
    assert_eq!(p.on_message(b'Z'), Disposition::Swallow);
    assert_eq!(p.on_message(b'T'), Disposition::Forward);
    assert_eq!(p.on_message(b'Z'), Disposition::Forward);
    assert!(p.is_empty());
}

#[test]
fn synthetic_parse_complete_is_dropped_after_an_earlier_error() {
    let mut p = Pipeline::default();
    p.client(Reply::Bind);
    p.synthetic(BytesMut::from(&b"1\0\0\0\x04"[..]));
    p.client(Reply::Execute);
    p.sync();
    assert!(p.take_synthetic().is_none());
    assert_eq!(p.on_message(b'E'), Disposition::Forward);
    assert!(
        p.take_synthetic().is_none(),
        "skipped with the rest of the pipeline"
    );
    assert_eq!(p.on_message(b'Z'), Disposition::Forward);
    assert!(p.is_empty());
}

#[test]
fn synthetic_reply_is_due_after_previous_replies() {
    let mut p = Pipeline::default();
    p.client(Reply::Parse);
    p.synthetic(BytesMut::from(&b"1\0\0\0\x04"[..]));
    p.client(Reply::UntilReady);
    assert!(p.take_synthetic().is_none());
    p.on_message(b'1');
    assert!(p.take_synthetic().is_some());
    p.on_message(b'Z');
    assert!(p.is_empty());
}

#[test]
fn syncs_sent_during_copy_in_expect_no_reply() {
    // tokio-postgres: Bind, Execute, Sync; CopyInResponse; data; CopyDone, Sync.
    let mut p = Pipeline::default();
    p.client(Reply::Bind);
    p.client(Reply::Execute);
    p.sync();
    p.on_message(b'2');
    p.on_message(be::COPY_IN_RESPONSE);
    p.sync(); // also ignored: still in copy-in mode
    p.copy_end();
    p.sync();
    p.on_message(b'C');
    assert!(!p.is_empty());
    p.on_message(b'Z');
    assert!(p.is_empty());
    // Everything pipelined before the CopyInResponse arrives (simple Query).
    let mut p = Pipeline::default();
    p.client(Reply::UntilReady);
    p.copy_end();
    p.client(Reply::UntilReady);
    p.on_message(be::COPY_IN_RESPONSE);
    p.on_message(b'C');
    p.on_message(b'Z');
    assert!(!p.is_empty(), "the second query is still owed");
    p.on_message(b'Z');
    assert!(p.is_empty());
    // A COPY that fails after a Sync was taken as ignored leaves the server in doubt.
    let mut p = Pipeline::default();
    p.client(Reply::UntilReady);
    p.sync();
    p.on_message(be::COPY_IN_RESPONSE);
    assert!(!p.in_doubt());
    p.on_message(be::ERROR_RESPONSE);
    assert!(p.in_doubt());
    // A stray CopyDone outside a copy is ignored by PostgreSQL.
    let mut p = Pipeline::default();
    p.copy_end();
    assert!(p.is_empty());
    p.sync();
    p.on_message(b'Z');
    assert!(p.is_empty());
}

#[test]
fn injected_parse_is_swallowed_but_its_error_forwarded() {
    let mut p = Pipeline::default();
    p.swallow_parse("s".into());
    p.client(Reply::Bind);
    p.client(Reply::UntilReady);
    assert_eq!(p.on_message(b'1'), Disposition::Swallow);
    assert_eq!(p.on_message(b'2'), Disposition::Forward);
    let mut p = Pipeline::default();
    p.swallow_parse("s".into());
    p.client(Reply::Bind);
    p.sync();
    assert_eq!(p.on_message(b'E'), Disposition::Forward);
    let failed = p.take_failed_parses();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].server, "s");
    assert_eq!(p.on_message(b'Z'), Disposition::Forward);
    assert!(p.is_empty());
}

#[test]
fn after_an_extended_error_everything_but_sync_is_skipped() {
    // Already queued: a simple Query behind the failing Parse gets no reply either.
    let mut p = Pipeline::default();
    p.client(Reply::Parse);
    p.client(Reply::UntilReady);
    p.client(Reply::Bind);
    p.sync();
    assert_eq!(p.on_message(b'E'), Disposition::Forward);
    assert!(!p.is_empty());
    assert_eq!(p.on_message(b'Z'), Disposition::Forward);
    assert!(p.is_empty(), "one ReadyForQuery, for the Sync");

    // Sent in a later write: the server is still skipping, nothing is owed until Sync.
    let mut p = Pipeline::default();
    p.client(Reply::Parse);
    assert_eq!(p.on_message(b'E'), Disposition::Forward);
    assert!(!p.is_empty(), "the server waits for a Sync");
    p.client(Reply::Bind);
    p.client(Reply::Execute);
    p.client(Reply::UntilReady);
    p.synthetic(BytesMut::from(&b"3\0\0\0\x04"[..]));
    assert!(p.take_synthetic().is_none());
    p.sync();
    assert_eq!(p.on_message(b'Z'), Disposition::Forward);
    assert!(p.is_empty(), "no phantom replies left");
    // After the Sync everything is answered again.
    p.client(Reply::UntilReady);
    assert!(!p.is_empty());

    // A named Parse the server skips does not exist afterwards.
    let mut p = Pipeline::default();
    p.client(Reply::Bind);
    p.on_message(b'E');
    p.swallow_parse("s".into());
    assert_eq!(p.take_failed_parses()[0].server, "s");

    // The proxy's own extended statement ends the skipping with its Sync.
    let mut p = Pipeline::default();
    p.client(Reply::Execute);
    p.on_message(b'E');
    p.proxy(false);
    assert_eq!(p.on_message(b'Z'), Disposition::Swallow);
    assert!(p.is_empty());
    // A reset sent as a simple Query would be skipped: the server is not trusted.
    let mut p = Pipeline::default();
    p.client(Reply::Execute);
    p.on_message(b'E');
    p.proxy_query(true);
    assert!(p.desync().is_some());
}

#[test]
fn messages_sent_into_a_copy_cannot_be_followed() {
    // Queued before the CopyInResponse arrived.
    let mut p = Pipeline::default();
    p.client(Reply::UntilReady); // COPY ... FROM STDIN
    p.client(Reply::UntilReady); // SELECT pg_sleep(1)
    p.client(Reply::UntilReady); // BEGIN
    p.on_message(be::COPY_IN_RESPONSE);
    assert!(p.desync().is_some());
    // Sent after it.
    let mut p = Pipeline::default();
    p.client(Reply::Bind);
    p.client(Reply::Execute);
    p.sync();
    p.on_message(b'2');
    p.on_message(be::COPY_IN_RESPONSE);
    assert!(
        p.desync().is_none(),
        "the Sync is ignored, as PostgreSQL does"
    );
    p.client(Reply::Parse);
    assert!(p.desync().is_some());
    // A copy that ends normally leaves nothing in doubt.
    let mut p = Pipeline::default();
    p.client(Reply::UntilReady);
    p.on_message(be::COPY_IN_RESPONSE);
    p.copy_end();
    p.client(Reply::UntilReady);
    p.on_message(b'C');
    p.on_message(b'Z');
    p.on_message(b'Z');
    assert!(p.is_empty() && p.desync().is_none() && !p.in_doubt());
    // The server's error ends the copy: what the client sends next is answered.
    let mut p = Pipeline::default();
    p.client(Reply::UntilReady);
    p.on_message(be::COPY_IN_RESPONSE);
    p.on_message(be::ERROR_RESPONSE);
    p.on_message(b'Z');
    p.client(Reply::UntilReady);
    assert!(p.desync().is_none());
    p.on_message(b'Z');
    assert!(p.is_empty());
}

#[test]
fn a_proxy_statement_behind_an_error_is_reported_skipped() {
    // Queued before the error arrived: its Parse/Bind/Execute are skipped.
    let mut p = Pipeline::default();
    p.client(Reply::Parse);
    p.client(Reply::UntilReady);
    p.proxy(false);
    p.sync();
    p.on_message(b'E');
    assert_eq!(p.take_skipped_proxy(), Some(false));
    assert_eq!(p.on_message(b'Z'), Disposition::Swallow);
    assert_eq!(p.on_message(b'Z'), Disposition::Forward);
    assert!(p.is_empty());
    // Queued while the server skips.
    let mut p = Pipeline::default();
    p.client(Reply::Bind);
    p.on_message(b'E');
    p.proxy(true);
    assert_eq!(p.take_skipped_proxy(), Some(true));
    assert_eq!(p.on_message(b'Z'), Disposition::Swallow);
    assert!(p.is_empty());
}

#[test]
fn a_skipped_close_leaves_the_statement() {
    use crate::session::prepared::ClientStatements;
    let mut parse = BytesMut::new();
    crate::wire::protocol::put_parse(&mut parse, "s1", "SELECT 1");
    let stmt = ClientStatements::default().on_parse(&parse, None).unwrap();
    let mut p = Pipeline::default();
    p.client(Reply::Parse);
    assert!(p.synthetic_close(BytesMut::new(), "s1".into(), stmt.clone()));
    p.sync();
    p.on_message(b'E');
    let unclosed = p.take_unclosed();
    assert_eq!(unclosed.len(), 1);
    assert_eq!(unclosed[0].0, "s1");
    // While skipping (no Sync queued yet), not even queued.
    let mut p = Pipeline::default();
    p.client(Reply::Parse);
    p.on_message(b'E');
    assert!(!p.synthetic_close(BytesMut::new(), "s1".into(), stmt));
    assert_eq!(p.take_unclosed().len(), 1);
}

#[test]
fn an_extended_copy_whose_sync_was_ignored_keeps_its_batch_open() {
    // Bind, Execute (COPY ... FROM STDIN), Sync; CopyInResponse; CopyDone; no Sync yet.
    let mut p = Pipeline::default();
    p.client(Reply::Bind);
    p.client(Reply::Execute);
    p.sync();
    p.on_message(b'2');
    p.on_message(be::COPY_IN_RESPONSE);
    p.copy_end();
    p.on_message(b'C');
    assert!(p.is_empty(), "nothing is owed");
    assert!(
        p.batch_open(),
        "but the server waits for a Sync, inside the transaction"
    );
    p.sync();
    assert!(!p.batch_open());
    p.on_message(b'Z');
    assert!(p.is_empty());
    // A simple-Query COPY ends with its own ReadyForQuery: nothing stays open.
    let mut p = Pipeline::default();
    p.client(Reply::UntilReady);
    p.sync();
    p.on_message(be::COPY_IN_RESPONSE);
    p.copy_end();
    p.on_message(b'C');
    p.on_message(b'Z');
    assert!(p.is_empty() && !p.batch_open());
}

fn statement(text: &str) -> Arc<Statement> {
    let mut parse = BytesMut::new();
    crate::wire::protocol::put_parse(&mut parse, "s1", text);
    crate::session::prepared::ClientStatements::default()
        .on_parse(&parse, None)
        .expect("named")
}

#[test]
fn the_proxys_describe_is_read_for_the_shape_and_consumed() {
    let mut p = Pipeline::default();
    let s = statement("SELECT 1");
    p.client_parse(s.clone());
    p.describe(s.clone(), Described::Parsed);
    p.sync();
    assert!(!p.comparing(), "a client Parse's Describe holds nothing");
    assert_eq!(p.on_message(b'1'), Disposition::Forward);
    assert!(p.front_is_proxy(), "the ParameterDescription is read whole");
    assert_eq!(
        p.on_message(b't'),
        Disposition::Shape(s.clone(), Described::Parsed)
    );
    // A notice amid it is the client's.
    assert_eq!(p.on_message(b'N'), Disposition::Forward);
    assert_eq!(p.on_message(b'T'), Disposition::Shape(s, Described::Parsed));
    assert_eq!(p.on_message(b'Z'), Disposition::Forward);
    assert!(p.is_empty());
}

#[test]
fn a_failed_parse_takes_its_describe_along() {
    let mut p = Pipeline::default();
    let s = statement("SELECT nothing");
    p.client_parse(s.clone());
    p.describe(s, Described::Parsed);
    p.client(Reply::Bind);
    p.sync();
    assert_eq!(p.on_message(b'E'), Disposition::Forward);
    assert_eq!(p.take_failed_parses().len(), 1);
    assert_eq!(p.on_message(b'Z'), Disposition::Forward);
    assert!(p.is_empty());
}

#[test]
fn a_copy_compares_until_answered_or_skipped() {
    // Answered: ParseComplete and the shape are consumed.
    let mut p = Pipeline::default();
    let s = statement("SELECT 1");
    p.swallow_parse(s.server_name.clone());
    p.describe(s.clone(), Described::Copy);
    assert!(p.comparing());
    assert_eq!(p.on_message(b'1'), Disposition::Swallow);
    assert_eq!(
        p.on_message(b't'),
        Disposition::Shape(s.clone(), Described::Copy)
    );
    assert!(p.comparing());
    assert_eq!(
        p.on_message(b'n'),
        Disposition::Shape(s.clone(), Described::Copy)
    );
    assert!(!p.comparing());
    assert!(p.is_empty());
    // Behind a client message that fails: skipped with it, the server skips to a Sync.
    let mut p = Pipeline::default();
    p.client(Reply::Execute);
    p.swallow_parse(s.server_name.clone());
    p.describe(s.clone(), Described::Copy);
    assert_eq!(p.on_message(b'E'), Disposition::Forward);
    assert!(!p.comparing());
    assert!(p.skipping());
    assert_eq!(p.take_failed_parses().len(), 1);
    // The copy's own Parse fails (the table is gone): the client sees why.
    let mut p = Pipeline::default();
    p.swallow_parse(s.server_name.clone());
    p.describe(s, Described::Copy);
    assert_eq!(p.on_message(b'E'), Disposition::Forward);
    assert!(!p.comparing() && p.skipping());
}

#[test]
fn a_skipped_proxy_close_is_reported_once() {
    // Dropped behind an error.
    let mut p = Pipeline::default();
    p.client(Reply::Execute);
    p.swallow_close();
    p.swallow_parse("rlsgate_x".into());
    assert_eq!(p.on_message(b'E'), Disposition::Forward);
    assert!(p.take_skipped_close());
    assert!(!p.take_skipped_close());
    // Queued while the server skips.
    p.swallow_close();
    assert!(p.take_skipped_close());
    // Answered: nothing to report.
    let mut p = Pipeline::default();
    p.swallow_close();
    assert_eq!(p.on_message(b'3'), Disposition::Swallow);
    assert!(!p.take_skipped_close());
}

#[test]
fn a_deallocate_all_that_did_not_run_gives_the_statements_back() {
    let s = statement("SELECT 1");
    // Ran: its CommandComplete came; nothing back.
    let mut p = Pipeline::default();
    p.deallocating(vec![("s1".into(), s.clone())]);
    assert_eq!(p.on_message(b'C'), Disposition::Forward);
    p.deallocated();
    assert_eq!(p.on_message(b'Z'), Disposition::Forward);
    assert!(p.take_unclosed().is_empty() && p.is_empty());
    // Failed before it: back at its ReadyForQuery.
    let mut p = Pipeline::default();
    p.deallocating(vec![("s1".into(), s.clone())]);
    assert_eq!(p.on_message(b'E'), Disposition::Forward);
    assert!(p.take_unclosed().is_empty(), "not before its ReadyForQuery");
    assert_eq!(p.on_message(b'Z'), Disposition::Forward);
    assert_eq!(p.take_unclosed().len(), 1);
    // Skipped behind an extended error: back at once.
    let mut p = Pipeline::default();
    p.client(Reply::Bind);
    p.deallocating(vec![("s1".into(), s)]);
    assert_eq!(p.on_message(b'E'), Disposition::Forward);
    assert_eq!(p.take_unclosed().len(), 1);
}
