//! Guard tests: a battery of escape attempts, the benign ORM corpus, cache behaviour.

use std::time::Instant;

use super::*;

const OWNED: [&str; 3] = ["app.current_tenant", "app.user_id", "request.jwt.claims"];

/// The corpus the integration tests replay through the proxy.
const ORM_CORPUS: &str = include_str!("../../../integration/fixtures/orm_statements.sql");

fn config() -> GuardConfig {
    GuardConfig {
        owned: OWNED.map(str::to_owned).to_vec(),
        ..GuardConfig::default()
    }
}

fn guard() -> Guard {
    Guard::new(config())
}

fn rule_of(guard: &Guard, sql: &str) -> Option<Rule> {
    match guard.check(sql) {
        Verdict::Refuse(refusal) => Some(refusal.rule),
        Verdict::Allow | Verdict::AllowReapply => None,
    }
}

use Rule::*;

/// Escape attempts and the rule each must be refused under.
const HOSTILE: &[(&str, Rule)] = &[
    // SET / SET LOCAL / RESET of owned settings
    ("SET app.current_tenant = 'b'", ProtectedSetting),
    ("set app.current_tenant to 'b'", ProtectedSetting),
    ("SeT App.Current_Tenant = 'b'", ProtectedSetting),
    ("SET LOCAL app.current_tenant = 'b'", ProtectedSetting),
    ("SET SESSION app.current_tenant = 'b'", ProtectedSetting),
    ("RESET app.current_tenant", ProtectedSetting),
    ("reset APP.CURRENT_TENANT", ProtectedSetting),
    ("SET app.current_tenant TO DEFAULT", ProtectedSetting),
    ("SET \"app\".\"current_tenant\" = 'b'", ProtectedSetting),
    ("SET \"app.current_tenant\" = 'b'", ProtectedSetting),
    ("SET \"App\".\"Current_Tenant\" = 'b'", ProtectedSetting),
    ("SET app . current_tenant = 'b'", ProtectedSetting),
    ("SET U&\"app.current\\005Ftenant\" = 'b'", ProtectedSetting),
    ("SET app.current_tenant FROM CURRENT", ProtectedSetting),
    ("/* x */ SET app.current_tenant = 'b'", ProtectedSetting),
    ("-- hello\nSET app.current_tenant = 'b'", ProtectedSetting),
    ("SELECT 1; SET app.current_tenant='b'", ProtectedSetting),
    ("BEGIN; SET LOCAL app.current_tenant = 'b'; SELECT * FROM orders; COMMIT", ProtectedSetting),
    ("SET app.user_id = '7'", ProtectedSetting),
    ("SET request.jwt.claims = '{\"tenant\":\"b\"}'", ProtectedSetting),
    ("SET client_encoding = 'SHIFT_JIS_2004'", ProtectedSetting),
    ("SET client_encoding = 'Shift-JIS-2004'", ProtectedSetting),
    ("SET client_encoding = 'JOHAB'", ProtectedSetting),
    ("SET client_encoding = 'no such encoding'", ProtectedSetting),
    ("SELECT set_config('client_encoding', 'big-5.', false)", ProtectedSetting),
    ("SELECT set_config('client_encoding', 'GB18030', true)", ProtectedSetting),
    // A change of client_encoding the session cannot follow (it runs later or inside
    // code): even to an allowed encoding (red-team: PREPARE then EXECUTE in a pipeline).
    ("PREPARE p AS SELECT pg_catalog.set_config('client_encoding', 'SJIS', false)", ProtectedSetting),
    ("PREPARE p AS SELECT set_config('client_encoding', 'UTF8', false)", ProtectedSetting),
    ("DO $$ BEGIN PERFORM set_config('client_encoding', 'SJIS', false); END $$", ProtectedSetting),
    ("DO $$ BEGIN SET client_encoding = 'LATIN1'; END $$", ProtectedSetting),
    ("CREATE VIEW v AS SELECT set_config('client_encoding', 'SJIS', false)", ProtectedSetting),
    ("DECLARE c CURSOR FOR SELECT set_config('client_encoding', 'GBK', false)", ProtectedSetting),
    ("CREATE RULE r AS ON INSERT TO t DO ALSO SELECT set_config('client_encoding', 'UHC', false)", ProtectedSetting),
    ("CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$ SELECT set_config('client_encoding', 'SJIS', false) $$", FunctionBody),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql SET client_encoding = 'SJIS' AS 'SELECT 1'", FunctionBody),
    ("CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN SET client_encoding TO 'SJIS'; END $$", FunctionBody),
    ("SET NAMES 'BIG5'", ProtectedSetting),
    // A backslash hides the SET from a reader with standard_conforming_strings on.
    ("SELECT 'a\\' -- '; SET app.current_tenant = 'B'; --'", ProtectedSetting),
    // set_config of an owned setting, anywhere in the tree
    ("SELECT set_config('app.current_tenant', 'b', false)", SetConfigCall),
    ("SeLeCt SET_CONFIG('app.current_tenant', 'b', false)", SetConfigCall),
    ("SELECT pg_catalog.set_config('app.current_tenant', 'b', false)", SetConfigCall),
    ("SELECT \"pg_catalog\".\"set_config\"('APP.CURRENT_TENANT', 'b', false)", SetConfigCall),
    ("SELECT set_config('app.current_tenant'::text, 'b', false)", SetConfigCall),
    ("SELECT set_config(E'app.current_tenant', 'b', false)", SetConfigCall),
    ("SELECT set_config(U&'app.current\\005Ftenant', 'b', false)", SetConfigCall),
    ("SELECT set_config(' App.Current_Tenant ', 'b', false)", SetConfigCall),
    ("SELECT set_config($q$app.current_tenant$q$, 'b', false)", SetConfigCall),
    ("SELECT set_config('request.jwt.claims', '{}', true)", SetConfigCall),
    ("WITH x AS (SELECT set_config('app.current_tenant','b',false)) SELECT * FROM orders, x", SetConfigCall),
    ("SELECT * FROM orders WHERE tenant_id = (SELECT set_config('app.current_tenant','b',true))::int", SetConfigCall),
    ("VALUES (set_config('app.current_tenant','b',false))", SetConfigCall),
    ("SELECT length(set_config('app.current_tenant','b',false))", SetConfigCall),
    ("SELECT 1 LIMIT (SELECT length(set_config('app.current_tenant','b',false)))", SetConfigCall),
    ("SELECT x FROM t ORDER BY set_config('app.current_tenant','b',false)", SetConfigCall),
    ("SELECT 1 FROM t GROUP BY 1 HAVING set_config('app.current_tenant','b',false) = 'b'", SetConfigCall),
    ("SELECT CASE WHEN true THEN set_config('app.current_tenant','b',false) END", SetConfigCall),
    ("SELECT count(*) FILTER (WHERE set_config('app.current_tenant','b',false) > '') FROM t", SetConfigCall),
    ("INSERT INTO t (x) VALUES (set_config('app.current_tenant','b',false)) RETURNING x", SetConfigCall),
    ("UPDATE t SET x = 1 WHERE set_config('app.current_tenant','b',false) IS NOT NULL", SetConfigCall),
    ("SELECT * FROM set_config('app.current_tenant','b',false)", SetConfigCall),
    ("PREPARE p AS SELECT set_config('app.current_tenant', $1, false)", SetConfigCall),
    ("EXPLAIN ANALYZE SELECT set_config('app.current_tenant','b',false)", SetConfigCall),
    ("CALL p(set_config('app.current_tenant','b',false))", SetConfigCall),
    ("CREATE VIEW v AS SELECT set_config('app.current_tenant','b',false)", SetConfigCall),
    ("CREATE TABLE t (x text DEFAULT set_config('app.current_tenant','b',false))", SetConfigCall),
    ("CREATE RULE r AS ON INSERT TO t DO ALSO SELECT set_config('app.current_tenant', NEW.x, false)", SetConfigCall),
    ("CREATE AGGREGATE agg(text, boolean) (SFUNC = set_config, STYPE = text, INITCOND = 'app.current_tenant')", SetConfigCall),
    ("UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'", SetConfigCall),
    ("WITH u AS (UPDATE pg_catalog.pg_settings SET setting = 'x' WHERE name = 'search_path' RETURNING 1) SELECT 1", SetConfigCall),
    ("CREATE VIEW s AS SELECT * FROM pg_settings", SetConfigCall),
    // set_config whose setting name the guard cannot know
    ("SELECT set_config($1, $2, false)", DynamicSetConfig),
    ("SELECT set_config('app.' || 'current_tenant', 'b', false)", DynamicSetConfig),
    ("SELECT set_config(name, 'b', false) FROM settings_to_change", DynamicSetConfig),
    ("SELECT set_config(lower('APP.CURRENT_TENANT'), 'b', false)", DynamicSetConfig),
    ("SELECT set_config(current_setting('x.name'), 'b', false)", DynamicSetConfig),
    ("SELECT set_config(setting_name => 'app.current_tenant', new_value => 'b', is_local => false)", DynamicSetConfig),
    // role changes
    ("SET ROLE postgres", RoleChange),
    ("set role none", RoleChange),
    ("SET LOCAL ROLE admin", RoleChange),
    ("RESET ROLE", RoleChange),
    ("SET SESSION AUTHORIZATION 'tenant_b'", RoleChange),
    ("SET SESSION AUTHORIZATION DEFAULT", RoleChange),
    ("RESET SESSION AUTHORIZATION", RoleChange),
    ("SELECT set_config('role', 'admin', false)", RoleChange),
    // stored defaults
    ("ALTER ROLE app SET app.current_tenant = 'b'", AlterRoleSetting),
    ("ALTER USER app SET app.current_tenant TO 'b'", AlterRoleSetting),
    ("ALTER ROLE app IN DATABASE db SET app.current_tenant = 'b'", AlterRoleSetting),
    ("ALTER ROLE ALL RESET app.current_tenant", AlterRoleSetting),
    ("ALTER DATABASE app SET app.current_tenant = 'b'", AlterRoleSetting),
    ("ALTER DATABASE app RESET \"app.current_tenant\"", AlterRoleSetting),
    ("ALTER SYSTEM SET app.current_tenant = 'b'", AlterRoleSetting),
    ("ALTER ROLE app SET role = 'admin'", AlterRoleSetting),
    ("ALTER ROLE app SET session_authorization = 'admin'", AlterRoleSetting),
    // Any stored default reaches every tenant's future connections.
    ("ALTER ROLE CURRENT_USER SET default_transaction_read_only = on", AlterRoleSetting),
    ("ALTER ROLE app SET search_path = evil, public", AlterRoleSetting),
    ("ALTER ROLE app RESET ALL", AlterRoleSetting),
    ("alter user current_user set statement_timeout to 1", AlterRoleSetting),
    ("ALTER DATABASE app SET work_mem = '1MB'", AlterRoleSetting),
    ("ALTER DATABASE app RESET ALL", AlterRoleSetting),
    ("ALTER SYSTEM SET max_connections = 1", AlterRoleSetting),
    ("SELECT 1; ALTER ROLE app IN DATABASE app SET lock_timeout = 1", AlterRoleSetting),
    ("DO $$ BEGIN ALTER ROLE app SET search_path = x; END $$", AlterRoleSetting),
    ("CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'ALTER DATABASE app SET work_mem = 1'", FunctionBody),
    // Large objects belong to the shared role: every tenant could read them.
    ("SELECT lo_get(16401)", LargeObject),
    ("SELECT pg_catalog.lo_open(16401, 262144)", LargeObject),
    ("select LOREAD(0, 10)", LargeObject),
    ("SELECT lo_from_bytea(0, 'x')", LargeObject),
    ("WITH x AS (SELECT lo_export(1, '/tmp/x')) SELECT 1", LargeObject),
    ("SELECT oid FROM pg_largeobject_metadata", DeniedRelation),
    // DO blocks: the same rule as the statement inside
    ("DO $$ BEGIN PERFORM set_config('app.current_tenant', 'b', false); END $$", SetConfigCall),
    ("do $$ begin set app.current_tenant = 'b'; end $$", ProtectedSetting),
    ("DO $$ DECLARE t text := set_config('app.current_tenant','b',false); BEGIN NULL; END $$", SetConfigCall),
    ("DO $$ DECLARE x text; BEGIN x := set_config('app.current_tenant','b',false); END $$", SetConfigCall),
    ("DO $$ BEGIN IF set_config('app.current_tenant','b',false) IS NOT NULL THEN NULL; END IF; END $$", SetConfigCall),
    ("DO $$ BEGIN PERFORM set_config($q$app.current_tenant$q$, 'b', false); END $$", SetConfigCall),
    ("DO $$ BEGIN PERFORM $rlsgate0$x$rlsgate0$; PERFORM set_config('app.current_tenant','b',false); END $$", SetConfigCall),
    ("DO $$ BEGIN EXECUTE 'SET app.current_tenant = ''b'''; END $$", ProtectedSetting),
    ("DO $$ BEGIN EXECUTE 'SET app.' || 'current_tenant = 1'; END $$", ProtectedSetting),
    ("DO $$ DECLARE r record; BEGIN FOR r IN EXECUTE 'SELECT set_config(''app.current_tenant'',''b'',false)' LOOP END LOOP; END $$", SetConfigCall),
    ("DO $$ BEGIN EXECUTE format('SELECT set_config(%L, %L, false)', 'app.current_tenant', 'b'); END $$", DynamicSetConfig),
    ("DO $$ DECLARE n text := 'app.current_tenant'; BEGIN PERFORM set_config(n, 'b', false); END $$", DynamicSetConfig),
    ("DO $$ BEGIN SET ROLE admin; END $$", RoleChange),
    ("DO $$ BEGIN PERFORM 1 FROM pg_stat_activity; END $$", DeniedRelation),
    ("DO LANGUAGE plpython3u $$ plpy.execute(\"select set_config('app.current_tenant','b',false)\") $$", DoBlock),
    // functions and procedures the client creates
    ("CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$ SELECT set_config('app.current_tenant','b',false) $$", FunctionBody),
    ("CREATE OR REPLACE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN PERFORM set_config('app.current_tenant','b',false); END $$", FunctionBody),
    ("CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN SET app.current_tenant = 'b'; END $$", FunctionBody),
    ("CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS 'BEGIN EXECUTE ''SET app.current_tenant = 1''; END'", FunctionBody),
    ("CREATE FUNCTION f(t text) RETURNS int LANGUAGE plpgsql AS $$ BEGIN PERFORM set_config($1, t, false); RETURN 1; END $$", FunctionBody),
    ("CREATE FUNCTION f() RETURNS text LANGUAGE sql SET app.current_tenant = 'b' AS $$ SELECT 1 $$", FunctionBody),
    ("CREATE FUNCTION f() RETURNS text LANGUAGE sql BEGIN ATOMIC SELECT set_config('app.current_tenant','b',false); END", FunctionBody),
    ("CREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN PERFORM set_config('app.current_tenant','b',false); COMMIT; END $$", FunctionBody),
    ("CREATE FUNCTION trg() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM set_config('app.current_tenant', NEW.tenant, false); RETURN NEW; END $$", FunctionBody),
    ("CREATE FUNCTION trg() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.x := 1; SET app.current_tenant = 'b'; RETURN NEW; END; $$", FunctionBody),
    ("CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN RESET ALL; END $$", FunctionBody),
    ("CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN SET ROLE admin; END $$", FunctionBody),
    ("CREATE FUNCTION f() RETURNS text LANGUAGE plpython3u AS $$ return plpy.execute(\"select set_config('app.current_tenant','b',false)\") $$", FunctionBody),
    ("ALTER FUNCTION f() SET app.current_tenant = 'b'", FunctionBody),
    ("DO $$ BEGIN EXECUTE 'CREATE FUNCTION g() RETURNS text LANGUAGE sql AS ''SELECT set_config(''''app.current_tenant'''',''''b'''',false)'''; END $$", FunctionBody),
    // relations on the deny list
    ("SELECT * FROM pg_stat_activity", DeniedRelation),
    ("SELECT query FROM pg_catalog.pg_stat_activity WHERE usename = current_user", DeniedRelation),
    ("SELECT * FROM orders WHERE EXISTS (SELECT 1 FROM pg_stat_activity)", DeniedRelation),
    ("select * from PG_STAT_STATEMENTS", DeniedRelation),
    ("SELECT * FROM public.pg_stat_statements", DeniedRelation),
    ("SELECT * FROM extensions.pg_stat_statements", DeniedRelation),
    ("SELECT * FROM pg_stat_statements_info", DeniedRelation),
    ("SELECT * FROM pg_stat_statements(true)", DeniedRelation),
    ("SELECT * FROM pg_stat_get_activity(NULL)", DeniedRelation),
    ("SELECT pg_stat_get_backend_activity(1)", DeniedRelation),
    ("TABLE pg_stat_activity", DeniedRelation),
    ("COPY (SELECT query FROM pg_stat_activity) TO STDOUT", DeniedRelation),
    ("WITH a AS (SELECT * FROM pg_stat_activity) SELECT * FROM a", DeniedRelation),
    ("CREATE VIEW v AS SELECT * FROM pg_stat_activity", DeniedRelation),
    ("CREATE FUNCTION f() RETURNS SETOF text LANGUAGE sql AS $$ SELECT query FROM pg_stat_activity $$", DeniedRelation),
    // text the parser rejects but that names protected things
    ("SET app.current_tenant = 'b' garbage garbage", Unparsable),
    ("SELECT set_config('app.current_tenant'", Unparsable),
    ("SELEC * FROM pg_stat_activity", Unparsable),
];

#[test]
fn hostile_statements_are_refused_under_their_rule() {
    let guard = guard();
    assert!(HOSTILE.len() >= 50, "battery too small: {}", HOSTILE.len());
    let wrong: Vec<String> = HOSTILE
        .iter()
        .filter_map(|(sql, expected)| {
            let got = rule_of(&guard, sql);
            (got != Some(*expected))
                .then(|| format!("{sql}\n    expected {expected:?}, got {got:?}"))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} wrong verdicts:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// The fixture's statements, one per non-comment line.
fn orm_corpus() -> Vec<&'static str> {
    ORM_CORPUS
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("--"))
        .collect()
}

#[test]
fn orm_corpus_is_allowed() {
    let guard = guard();
    let corpus = orm_corpus();
    assert!(corpus.len() >= 60, "corpus too small: {}", corpus.len());
    let wrong: Vec<String> = corpus
        .iter()
        .filter_map(|sql| {
            let resets =
                sql.eq_ignore_ascii_case("RESET ALL") || sql.eq_ignore_ascii_case("DISCARD ALL");
            let expected = if resets {
                Verdict::AllowReapply
            } else {
                Verdict::Allow
            };
            let got = guard.check(sql);
            (got != expected).then(|| format!("{sql}\n    got {got:?}"))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} false refusals:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn edge_cases_that_must_pass() {
    let guard = guard();
    for sql in [
        "",
        "   ",
        ";",
        "-- only a comment",
        "SELECT t.set_config FROM t",
        "SELECT set_config('search_path', 'x', false)",
        "SELECT set_config(NULL, 'x', false)",
        "SELECT 'set app.current_tenant = 1' AS text_not_sql",
        "SHOW app.current_tenant",
        "SELEC 1",
        "DO $$ BEGIN EXECUTE 'SELECT ' || 1; END $$",
        "DO $$ BEGIN RAISE NOTICE 'tenant is %', current_setting('app.current_tenant'); END $$",
        "CREATE FUNCTION t() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN RAISE NOTICE '%', tg_tag; END $$",
        "CREATE FUNCTION t() RETURNS trigger LANGUAGE plpgsql AS $$ <<outer>> DECLARE n int; BEGIN IF TG_OP = 'DELETE' THEN RETURN OLD; END IF; RETURN NEW; END outer $$",
        "CREATE FUNCTION f(OUT a int, OUT b text) LANGUAGE plpgsql AS $$ BEGIN a := 1; b := 'x'; END $$",
        "SELECT 1\0SET app.current_tenant = 'b'",
        "SELECT 'C:\\' AS dir",
        "SELECT set_config('client_encoding', 'UTF8', false)",
        "SET client_encoding = 'SJIS'",
        "SET NAMES 'GBK'",
        "SELECT pg_catalog.set_config('client_encoding', 'LATIN1', false)",
    ] {
        assert_eq!(guard.check(sql), Verdict::Allow, "{sql:?}");
    }
}

#[test]
fn resets_ask_for_the_context_to_be_reapplied() {
    let guard = guard();
    for sql in [
        "RESET ALL",
        "reset all",
        "DISCARD ALL",
        "SELECT 1; RESET ALL",
        "DO $$ BEGIN RESET ALL; END $$",
        "BEGIN; DISCARD ALL",
    ] {
        assert_eq!(guard.check(sql), Verdict::AllowReapply, "{sql:?}");
    }
    // A refusal anywhere wins over a reset.
    assert_eq!(
        rule_of(&guard, "RESET ALL; SET app.current_tenant = 'b'"),
        Some(ProtectedSetting)
    );
}

#[test]
fn configuration_switches() {
    let lenient = Guard::new(GuardConfig {
        allow_set_role: true,
        ..config()
    });
    assert_eq!(lenient.check("SET ROLE reporting"), Verdict::Allow);
    assert_eq!(lenient.check("RESET SESSION AUTHORIZATION"), Verdict::Allow);
    assert_eq!(
        rule_of(&lenient, "ALTER ROLE app SET role = 'x'"),
        Some(AlterRoleSetting)
    );

    let objects = Guard::new(GuardConfig {
        allow_large_objects: true,
        ..config()
    });
    assert_eq!(objects.check("SELECT lo_get(16401)"), Verdict::Allow);

    let strict = Guard::new(GuardConfig {
        refuse_do_blocks: true,
        ..config()
    });
    assert_eq!(rule_of(&strict, "DO $$ BEGIN NULL; END $$"), Some(DoBlock));

    let custom = Guard::new(GuardConfig {
        deny_relations: vec!["audit.secrets".to_owned()],
        ..config()
    });
    assert_eq!(
        rule_of(&custom, "COPY audit.secrets TO STDOUT"),
        Some(DeniedRelation)
    );
    assert_eq!(
        custom.check("SELECT * FROM pg_stat_activity_x"),
        Verdict::Allow
    );
}

#[test]
fn refusal_message_names_rule_and_setting() {
    let guard = guard();
    let Verdict::Refuse(refusal) = guard.check("SET app.current_tenant = 'b'") else {
        panic!("not refused");
    };
    assert_eq!(
        refusal.message,
        "rlsgate: changing app.current_tenant is not allowed (rule: protected-setting)"
    );
    let Verdict::Refuse(refusal) = guard.check("SELECT * FROM pg_stat_activity") else {
        panic!("not refused");
    };
    assert!(
        refusal.message.contains("pg_stat_activity"),
        "{}",
        refusal.message
    );
    assert!(!refusal.message.contains("'b'"));
    assert_eq!(Rule::ALL.map(|r| r.as_str()).len(), 10);
}

#[test]
fn cache_hit_returns_the_same_verdict_and_is_counted() {
    let guard = guard();
    let sql = "SELECT set_config('app.current_tenant', 'b', false)";
    let first = guard.check(sql);
    assert_eq!(guard.stats().cache_hits, 0);
    let second = guard.check(sql);
    assert_eq!(first, second);
    assert_eq!(
        guard.stats(),
        GuardStats {
            checks: 2,
            cache_hits: 1,
            refusals: 2
        }
    );
    assert_eq!(guard.check("SELECT 1"), Verdict::Allow);
    assert_eq!(guard.check("SELECT 1"), Verdict::Allow);
    assert_eq!(guard.stats().cache_hits, 2);
}

#[test]
fn cache_stays_bounded() {
    let cache = cache::VerdictCache::new(64);
    for i in 0..1_000u64 {
        cache.insert(
            i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            &format!("SELECT {i}"),
            Verdict::Allow,
        );
    }
    assert!(cache.len() <= 64, "{}", cache.len());
    let hash = 7u64.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    cache.insert(hash, "SELECT a", Verdict::Allow);
    assert_eq!(
        cache.get(hash, "SELECT b"),
        None,
        "a hash collision must not return another text's verdict"
    );
}

#[test]
fn cache_text_is_bounded_by_bytes() {
    let cache = cache::VerdictCache::new(CACHE_CAPACITY);
    let filler = "x".repeat(60 * 1024);
    for i in 0..2_000u64 {
        let text = format!("SELECT {i} /* {filler} */");
        cache.insert(i.wrapping_mul(0x9E37_79B9_7F4A_7C15), &text, Verdict::Allow);
    }
    assert!(
        cache.text_bytes() <= 32 * 1024 * 1024,
        "{}",
        cache.text_bytes()
    );
}

#[test]
fn guard_can_be_shared_between_tasks() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Guard>();
}

#[test]
fn long_texts_are_checked_but_not_cached() {
    let guard = guard();
    let long = format!(
        "SELECT 1 /* {} */; SET app.current_tenant = 'b'",
        "x".repeat(MAX_CACHED_LEN)
    );
    assert_eq!(rule_of(&guard, &long), Some(ProtectedSetting));
    assert_eq!(rule_of(&guard, &long), Some(ProtectedSetting));
    assert_eq!(guard.stats().cache_hits, 0);
}

#[test]
fn deep_nesting_does_not_crash() {
    let guard = guard();
    for depth in [50, 500, 5_000] {
        let sql = format!("SELECT {}1{}", "(".repeat(depth), ")".repeat(depth));
        let _ = guard.check(&sql);
        let hostile = format!(
            "SELECT {}set_config('app.current_tenant','b',false){}",
            "(".repeat(depth),
            ")".repeat(depth)
        );
        assert!(
            matches!(guard.check(&hostile), Verdict::Refuse(_)),
            "depth {depth}"
        );
    }
}

#[test]
fn fingerprint_hides_values() {
    let a = fingerprint("SELECT * FROM orders WHERE tenant_id = 'a'").unwrap();
    let b = fingerprint("SELECT * FROM orders WHERE tenant_id = 'b'").unwrap();
    assert_eq!(a, b);
    assert_eq!(a.len(), 16);
    assert!(fingerprint("SELEC 1").is_none());
}

/// `cargo test --release --lib guard::tests::timing -- --ignored --nocapture`
/// Best of several rounds, so a busy machine disturbs it less.
#[test]
#[ignore = "prints timings; run by hand"]
fn timing() {
    let corpus = orm_corpus();
    let per_check = |elapsed: std::time::Duration, checks: usize| elapsed / checks as u32;
    let best = |f: &dyn Fn() -> std::time::Duration| (0..7).map(|_| f()).min().unwrap_or_default();
    let miss = best(&|| {
        let guard = guard();
        let start = Instant::now();
        corpus.iter().for_each(|sql| drop(guard.check(sql)));
        per_check(start.elapsed(), corpus.len())
    });
    let warm = guard();
    corpus.iter().for_each(|sql| drop(warm.check(sql)));
    let hit = best(&|| {
        let start = Instant::now();
        for _ in 0..200 {
            corpus.iter().for_each(|sql| drop(warm.check(sql)));
        }
        per_check(start.elapsed(), 200 * corpus.len())
    });
    let parse = best(&|| {
        let start = Instant::now();
        corpus.iter().for_each(|sql| drop(pg_query::parse(sql, 0)));
        per_check(start.elapsed(), corpus.len())
    });
    println!(
        "{} statements, mean per check: miss {miss:?}, hit {hit:?}; bare pg_query::parse {parse:?}",
        corpus.len()
    );
}

/// Built-ins that run SQL given as text (or read a relation or schema named by text) are
/// checked as the SQL they run: their text cannot change an owned setting or read what
/// the guard denies, and a computed text cannot be verified.
#[test]
fn sql_given_as_text_to_builtins_is_checked() {
    let g = guard();
    for sql in [
        "SELECT query_to_xml('SELECT set_config(''app.current_tenant'', ''b'', false)', true, false, '')",
        "SELECT pg_catalog.query_to_xmlschema('SELECT set_config(''app.current_tenant'', ''b'', false)', true, false, '')",
        "SELECT query_to_xml_and_xmlschema('SELECT 1; SET app.current_tenant = ''b''', true, false, '')",
        "SELECT * FROM ts_stat('SELECT set_config(''app.current_tenant'', ''b'', false)::tsvector')",
        "SELECT ts_rewrite('a'::tsquery, 'SELECT set_config(''app.current_tenant'', ''b'', false)::tsquery, ''b''::tsquery')",
        "SELECT query_to_xml('SELECT * FROM pg_stat_activity', true, false, '')",
        "SELECT query_to_xml(convert_from(decode('00', 'hex'), 'UTF8'), true, false, '')",
        "SELECT query_to_xml(VARIADIC ARRAY['SELECT 1'])",
        "SELECT table_to_xml('pg_catalog.pg_stat_activity', true, false, '')",
        "SELECT table_to_xml('\"pg_prepared_statements\"'::regclass, true, false, '')",
        "SELECT table_to_xml(12345, true, false, '')",
        "SELECT table_to_xmlschema('pg_locks', true, false, '')",
        "SELECT schema_to_xml('pg_catalog', true, false, '')",
        "SELECT schema_to_xml_and_xmlschema('information_schema', true, false, '')",
        "SELECT schema_to_xml('rlsgate', true, false, '')",
        "SELECT U&\"query_to_xml\"('SELECT set_config(''app.current_tenant'', ''b'', false)', true, false, '')",
    ] {
        assert!(rule_of(&g, sql).is_some(), "allowed: {sql}");
    }
    for sql in [
        "SELECT query_to_xml('SELECT * FROM orders', true, false, '')",
        "SELECT table_to_xml('public.orders', true, false, '')",
        "SELECT schema_to_xml('public', true, false, '')",
        "SELECT * FROM ts_stat('SELECT body_tsv FROM documents')",
        "SELECT ts_rewrite('a & b'::tsquery, 'a'::tsquery, 'c'::tsquery)",
    ] {
        assert_eq!(rule_of(&g, sql), None, "refused: {sql}");
    }
}
