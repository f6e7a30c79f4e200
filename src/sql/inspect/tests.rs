use super::*;

#[test]
fn set_reset_and_discard_effects() {
    assert_eq!(
        effects("SET search_path TO a, \"B\"; SET LOCAL work_mem = '1MB'; RESET TimeZone"),
        vec![
            Effect::Set {
                name: "search_path".into(),
                sql: "SET search_path TO a, \"B\"".into()
            },
            Effect::Reset("timezone".into()),
        ]
    );
    assert_eq!(
        effects("DISCARD ALL"),
        vec![Effect::ResetAll, Effect::DeallocateAll]
    );
    assert_eq!(effects("DEALLOCATE ALL"), vec![Effect::DeallocateAll]);
    assert_eq!(effects("reset all"), vec![Effect::ResetAll]);
    assert_eq!(
        effects("SET TIME ZONE 'UTC'"),
        vec![Effect::Set {
            name: "timezone".into(),
            sql: "SET TIME ZONE 'UTC'".into()
        }]
    );
    assert!(effects("SELECT 1").is_empty());
    let set = |name: &str, sql: &str| Effect::Set {
        name: name.into(),
        sql: sql.into(),
    };
    assert_eq!(
        effects(
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY, NOT DEFERRABLE"
        ),
        vec![
            set(
                "default_transaction_isolation",
                "SET default_transaction_isolation = 'repeatable read'"
            ),
            set("default_transaction_read_only", "SET default_transaction_read_only = 'on'"),
            set("default_transaction_deferrable", "SET default_transaction_deferrable = 'off'"),
        ]
    );
    // Only the current transaction: nothing to remember.
    assert!(effects("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").is_empty());
}

#[test]
fn fast_path_only_for_statements_without_trigger_words() {
    let names = vec![
        "app.current_tenant".to_owned(),
        "pg_stat_activity".to_owned(),
    ];
    let i = Inspector::new(None, PoolMode::Transaction, &names);
    assert!(!i.needs_parse("SELECT abalance FROM pgbench_accounts WHERE aid = 42"));
    assert!(!i.needs_parse("INSERT INTO t (a) VALUES (1) RETURNING id"));
    for sql in [
        "UPDATE t SET a = 1",
        "SELECT SET_CONFIG('x', 'y', false)",
        "SELECT current_setting('APP.CURRENT_TENANT')",
        "select * from U&\"\\0070g_stat_activity\"",
        "LISTEN x",
        "SELECT pg_advisory_lock(1)",
        "CREATE TEMPORARY TABLE x (a int)",
        "DO $$ BEGIN END $$",
        "SELECT 'a\\' -- '",
    ] {
        assert!(i.needs_parse(sql), "{sql}");
    }
}

#[test]
fn session_only_features() {
    for sql in [
        "LISTEN jobs",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        "SELECT pg_advisory_lock(1)",
        "select pg_catalog.pg_try_advisory_lock(1, 2)",
        "CREATE TEMP TABLE t (x int)",
        "CREATE TEMPORARY TABLE t AS SELECT 1",
        "CREATE TABLE pg_temp.t (x int)",
        "CREATE DOMAIN pg_temp.d AS int",
        "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE TEMP VIEW v AS SELECT 1",
        "CREATE TEMP SEQUENCE s",
        "CREATE TYPE pg_temp.item AS (name text, price numeric)",
        "CREATE TYPE pg_temp.mood AS ENUM ('sad', 'ok')",
        "CREATE TYPE pg_temp.r AS RANGE (subtype = int4)",
        "CREATE TYPE pg_temp.shell",
        "SELECT 1 AS x INTO TEMP t",
        "PREPARE p AS SELECT 1",
        "EXECUTE p",
        // Session locks where pg_query's nodes() does not look, and in DO bodies.
        "INSERT INTO t VALUES (pg_advisory_lock(1))",
        "VALUES (pg_advisory_lock(1))",
        "SELECT ARRAY[pg_advisory_lock_shared(1)]",
        "UPDATE jobs SET x = 1 RETURNING pg_try_advisory_lock(id)",
        "SELECT count(*) FILTER (WHERE pg_try_advisory_lock(1)) FROM t",
        "SELECT x FROM t LIMIT ALL OFFSET pg_advisory_lock(1)::int",
        "DECLARE c CURSOR FOR SELECT pg_advisory_lock(1)",
        "DO $$ BEGIN PERFORM pg_advisory_lock(7); END $$",
        "DO $$ BEGIN EXECUTE 'LISTEN ' || quote_ident('x'); END $$",
    ] {
        assert!(session_only(sql).is_some(), "{sql}");
    }
    for sql in [
        "SELECT pg_advisory_xact_lock(1)",
        "SELECT pg_try_advisory_xact_lock_shared(1), pg_advisory_unlock_all()",
        "CREATE TEMP TABLE t (x int) ON COMMIT DROP",
        "DECLARE c CURSOR FOR SELECT 1",
        "CREATE TABLE t (x int)",
        "CREATE TABLE pg_temp.t (x int) ON COMMIT DROP",
        "CREATE DOMAIN d AS int",
        "CREATE TYPE item AS (name text)",
        "SELECT 1 AS x INTO t",
        "SELECT * FROM pg_temp.t",
        "SELECT 1",
        "NOTIFY jobs",
    ] {
        assert!(session_only(sql).is_none(), "{sql}");
    }
}

#[test]
fn shapes_share_verdicts_but_never_effects() {
    let guard = Guard::new(guard::GuardConfig {
        owned: vec!["app.current_tenant".into()],
        deny_relations: vec!["secret".into()],
        ..guard::GuardConfig::default()
    });
    let i = Inspector::new(Some(guard), PoolMode::Transaction, &["secret".into()]);
    let a = i.analyse("UPDATE t SET x = x + 5 WHERE id = 7");
    let b = i.analyse("UPDATE t SET x = x + 900 WHERE id = 12");
    assert!(Arc::ptr_eq(&a, &b), "one parse for one shape");
    // Effects carry the exact text: never shared between shapes.
    let set = |sql: &str| i.analyse(sql).effects.clone();
    assert_eq!(
        set("SET work_mem = 64"),
        vec![Effect::Set {
            name: "work_mem".into(),
            sql: "SET work_mem = 64".into()
        }]
    );
    assert_eq!(
        set("SET work_mem = 128"),
        vec![Effect::Set {
            name: "work_mem".into(),
            sql: "SET work_mem = 128".into()
        }]
    );
    // `1 secret` is an alias, `1from secret` reads the denied relation.
    assert_eq!(i.analyse("SELECT 1 secret").guard, guard::Verdict::Allow);
    assert!(matches!(
        i.analyse("SELECT 1from secret").guard,
        guard::Verdict::Refuse(_)
    ));
    // A refused shape stays refused for every number.
    assert!(matches!(
        i.analyse("SELECT 1 FROM secret").guard,
        guard::Verdict::Refuse(_)
    ));
    assert!(matches!(
        i.analyse("SELECT 2 FROM secret").guard,
        guard::Verdict::Refuse(_)
    ));
}
