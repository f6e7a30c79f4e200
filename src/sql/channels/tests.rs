use super::*;

const S: &str = "@0123456789abcdef";

fn scoped(sql: &str) -> String {
    scope_sql(sql, S).expect("scoped").expect("names a channel")
}

fn refused(sql: &str) -> Refusal {
    scope_sql(sql, S).expect_err("refused")
}

#[test]
fn suffix_is_a_fixed_length_hash_of_the_tenant() {
    let a = suffix("tenant-a");
    assert_eq!(a.len(), 17);
    assert!(a.starts_with('@'));
    assert_ne!(a, suffix("tenant-b"));
    // sha256("t1") starts with 628b49d96dcde97a (`printf t1 | sha256sum`).
    assert_eq!(suffix("t1"), "@628b49d96dcde97a");
}

#[test]
fn statements_get_the_suffixed_quoted_channel() {
    assert_eq!(scoped("LISTEN orders"), format!("LISTEN \"orders{S}\""));
    assert_eq!(scoped("LISTEN Orders"), format!("LISTEN \"orders{S}\""));
    assert_eq!(
        scoped("listen \"Mixed\"\"q\""),
        format!("listen \"Mixed\"\"q{S}\"")
    );
    assert_eq!(
        scoped("NOTIFY orders, 'x 1'"),
        format!("NOTIFY \"orders{S}\", 'x 1'")
    );
    assert_eq!(scoped("UNLISTEN orders"), format!("UNLISTEN \"orders{S}\""));
    // A keyword as a channel name, comments, several statements.
    assert_eq!(
        scoped("/* c */ LISTEN /* d */ action; SELECT 1; unlisten action"),
        format!("/* c */ LISTEN /* d */ \"action{S}\"; SELECT 1; unlisten \"action{S}\"")
    );
    // Unicode escapes with UESCAPE: the whole name goes.
    assert_eq!(
        scoped("LISTEN U&\"d!0061t\" UESCAPE '!'"),
        format!("LISTEN \"dat{S}\"")
    );
}

#[test]
fn pg_notify_calls_get_the_suffix_on_their_channel_argument() {
    assert_eq!(
        scoped("SELECT pg_notify('orders', 'p')"),
        format!("SELECT pg_notify(('orders')||'{S}', 'p')")
    );
    assert_eq!(
        scoped("select pg_catalog.pg_notify(f(a, b[1]), 'p') from t where x = 1"),
        format!("select pg_catalog.pg_notify((f(a, b[1]))||'{S}', 'p') from t where x = 1")
    );
    // Anywhere in the tree, also where pg_query's nodes() does not look.
    assert_eq!(
        scoped("SELECT 1 LIMIT (SELECT count(*) FROM (SELECT pg_notify($1, $2)) s)"),
        format!("SELECT 1 LIMIT (SELECT count(*) FROM (SELECT pg_notify(($1)||'{S}', $2)) s)")
    );
}

#[test]
fn texts_without_channels_are_left_alone() {
    assert_eq!(scope_sql("UNLISTEN *", S), Ok(None));
    assert_eq!(scope_sql("SELECT 'listen notify'", S), Ok(None));
    assert_eq!(scope_sql("SELECT notify FROM listen", S), Ok(None));
    assert_eq!(scope_sql("not sql at all", S), Ok(None));
}

#[test]
fn what_cannot_be_scoped_safely_is_refused() {
    let long = "c".repeat(max_client_channel() + 1);
    assert_eq!(refused(&format!("LISTEN {long}")).code, "42622");
    assert!(scope_sql(&format!("LISTEN {}", &long[1..]), S).is_ok());
    assert_eq!(refused("SELECT pg_notify('a\\', 'b')").code, "0A000");
    assert_eq!(
        refused("SELECT pg_notify(VARIADIC ARRAY['a','b'])").code,
        "0A000"
    );
}

fn notification(channel: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut m = vec![b'A'];
    let len = 4 + 4 + channel.len() + 1 + payload.len() + 1;
    m.extend_from_slice(&(len as u32).to_be_bytes());
    m.extend_from_slice(&42i32.to_be_bytes());
    m.extend_from_slice(channel);
    m.push(0);
    m.extend_from_slice(payload);
    m.push(0);
    m
}

#[test]
fn notifications_reach_only_their_own_tenant_without_the_suffix() {
    let own = notification(format!("orders{S}").as_bytes(), b"p\xe9");
    assert_eq!(
        unscope_notification(&own, S).as_deref(),
        Some(&notification(b"orders", b"p\xe9")[..])
    );
    let other = notification(b"orders@fedcba9876543210", b"secret");
    assert_eq!(unscope_notification(&other, S), None);
    assert_eq!(
        unscope_notification(&notification(b"orders", b"x"), S),
        None
    );
    assert_eq!(unscope_notification(b"A\0\0\0\x06\0", S), None);
}

#[test]
fn review_findings_stay_fixed() {
    // One call site shared by several SET columns gets one suffix, not one per column.
    assert_eq!(
        scoped("UPDATE t SET (a, b) = (SELECT pg_notify('x', 'p'), 1)"),
        format!("UPDATE t SET (a, b) = (SELECT pg_notify(('x')||'{S}', 'p'), 1)")
    );
    // A pg_notify of another schema is left alone; pg_catalog's is scoped.
    assert_eq!(scope_sql("SELECT myschema.pg_notify(1, 2)", S), Ok(None));
    // Unicode-escaped name: the parse tree has the real name.
    assert_eq!(
        scoped("SELECT U&\"pg_!006eotify\" UESCAPE '!'('jobs', 'x')"),
        format!("SELECT U&\"pg_!006eotify\" UESCAPE '!'(('jobs')||'{S}', 'x')")
    );
    // LISTEN/NOTIFY that would run later, in someone else's session: refused.
    for sql in [
        "CREATE RULE r AS ON INSERT TO t DO ALSO NOTIFY orders",
        "CREATE RULE r AS ON INSERT TO t DO ALSO (NOTIFY a; NOTIFY b)",
    ] {
        assert_eq!(refused(sql).code, "0A000", "{sql}");
    }
}
