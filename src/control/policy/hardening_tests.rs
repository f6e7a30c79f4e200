//! Unit tests of the sealed context and the hardening steps over hand-made catalog
//! states (the plan_tests fixtures use `context = "setting"`; these use the default).

use super::catalog::*;
use super::file::Policy;
use super::hardening::{Group, Kind, TARGETS};
use super::plan::{self, Phase};
use super::rollback;

const POLICY: &str = r#"
[tenant]
setting = "app.current_tenant"
type = "uuid"
[roles]
app = "app_rls"
[[table]]
name = "customers"
"#;

fn state() -> DbState {
    DbState {
        server_version: 150_004,
        roles: Roles {
            current_user: "postgres".into(),
            current_bypasses_rls: true,
            current_is_superuser: true,
            app: Some(RoleState {
                name: "app_rls".into(),
                superuser: false,
                bypassrls: false,
            }),
        },
        seal: SealState {
            pgcrypto_available: true,
            ..SealState::default()
        },
        tables: std::collections::BTreeMap::from([(
            super::sql::QualifiedName::new("public", "customers"),
            TableState {
                oid: 1,
                ..TableState::default()
            },
        )]),
        ..DbState::default()
    }
}

fn grant(name: &str, public: bool, app: bool) -> GrantState {
    let target = TARGETS.iter().find(|t| t.name == name).unwrap();
    GrantState {
        target,
        object: format!("pg_catalog.{name}"),
        public,
        app_explicit: app,
        app_effective: public || app,
    }
}

#[test]
fn sealed_policies_read_rlsgate_tenant_cast_to_the_column_type() {
    let policy = Policy::parse(POLICY).unwrap();
    assert_eq!(
        plan::session_tenant(&policy),
        "(SELECT rlsgate.tenant())::uuid"
    );
    assert_eq!(plan::column_default(&policy), "rlsgate.tenant()::uuid");
    let printed = "(tenant_id = (( SELECT rlsgate.tenant() AS tenant))::uuid)";
    assert!(plan::reads_context(printed, &policy));
    assert!(!plan::reads_context(
        "(tenant_id = (NULLIF(current_setting('app.current_tenant'::text, true), ''::text))::uuid)",
        &policy
    ));
    let setting =
        Policy::parse(&POLICY.replace("type = \"uuid\"", "type = \"uuid\"\ncontext = \"setting\""))
            .unwrap();
    assert!(plan::session_tenant(&setting).starts_with("NULLIF(current_setting("));
}

#[test]
fn sealed_sql_is_installed_before_the_backfill_unless_present_and_needs_pgcrypto() {
    let policy = Policy::parse(POLICY).unwrap();
    let plan = plan::build(&policy, &state()).unwrap();
    let install = plan.steps_in(Phase::Prepare).next().unwrap();
    assert!(install.sql.contains("FUNCTION rlsgate.tenant()"));
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains("no seal secret configured")),
        "{:#?}",
        plan.warnings
    );
    let mut s = state();
    s.seal.tenant_fn = true;
    let plan = plan::build(&policy, &s).unwrap();
    assert!(!plan
        .steps_in(Phase::Prepare)
        .any(|st| st.sql.contains("rlsgate.tenant()")));
    s.seal.tenant_fn = false;
    s.seal.pgcrypto_available = false;
    let refused = plan::build(&policy, &s).unwrap_err();
    assert!(refused.0[0].contains("pgcrypto"), "{refused}");
}

#[test]
fn the_secret_is_stored_when_its_fingerprint_differs_and_never_shown() {
    let policy = Policy::parse(POLICY).unwrap();
    let mut s = state();
    s.seal.tenant_fn = true;
    s.seal.wanted_fingerprint = Some("aa".into());
    s.seal.secret_source = Some("env RLSGATE_SEAL_SECRET".into());
    let plan = plan::build(&policy, &s).unwrap();
    let store = plan.seal.as_ref().expect("secret to store");
    assert_eq!(store.source, "env RLSGATE_SEAL_SECRET");
    assert!(plan.missing().iter().any(|m| m.contains("seal secret")));
    s.seal.stored_fingerprint = Some("aa".into());
    assert!(plan::build(&policy, &s).unwrap().seal.is_none());
}

#[test]
fn hardening_revokes_what_public_or_the_app_role_holds_and_records_it() {
    let policy = Policy::parse(POLICY).unwrap();
    let mut s = state();
    s.seal.tenant_fn = true;
    s.hardening.grants = vec![
        grant("pg_terminate_backend(integer,bigint)", true, false),
        grant("pg_cancel_backend(integer)", true, true),
        grant("pg_locks", true, false),
        grant("lo_get(oid)", true, false),
        grant("pg_cursor()", false, false),
    ];
    s.hardening.memberships = vec!["pg_monitor".into()];
    let plan = plan::build(&policy, &s).unwrap();
    let sql: Vec<&str> = plan.steps.iter().map(|s| s.sql.as_str()).collect();
    let record = sql
        .iter()
        .position(|s| s.contains("CREATE TABLE IF NOT EXISTS rlsgate.revoked"))
        .expect("the record table");
    let first_revoke = sql.iter().position(|s| s.starts_with("REVOKE ")).unwrap();
    assert!(record < first_revoke, "{sql:#?}");
    let joined = sql.join("\n");
    for line in [
        "REVOKE EXECUTE ON FUNCTION pg_catalog.pg_terminate_backend(integer,bigint) FROM PUBLIC;",
        "REVOKE EXECUTE ON FUNCTION pg_catalog.pg_cancel_backend(integer) FROM PUBLIC, app_rls;",
        "REVOKE SELECT ON TABLE pg_catalog.pg_locks FROM PUBLIC;",
        "REVOKE EXECUTE ON FUNCTION pg_catalog.lo_get(oid) FROM PUBLIC;",
        "('FUNCTION pg_catalog.pg_cancel_backend(integer)', 'EXECUTE', 'app_rls')",
    ] {
        assert!(joined.contains(line), "no {line:?} in\n{joined}");
    }
    assert!(!joined.contains("pg_cursor"), "nothing to revoke there");
    assert!(plan
        .warnings
        .iter()
        .any(|w| w.contains("member of pg_monitor")));

    // large_objects = "allow" keeps the large-object functions.
    let allow = Policy::parse(&format!(
        "{POLICY}\n[hardening]\nlarge_objects = \"allow\"\n"
    ))
    .unwrap();
    let plan = plan::build(&allow, &s).unwrap();
    assert!(!plan.steps.iter().any(|st| st.sql.contains("lo_get")));

    // Applied: nothing held, the record exists: nothing to do.
    s.hardening.grants.iter_mut().for_each(|g| {
        g.public = false;
        g.app_explicit = false;
        g.app_effective = false;
    });
    s.hardening.recorded = Some(Vec::new());
    let plan = plan::build(&policy, &s).unwrap();
    assert!(
        !plan
            .steps
            .iter()
            .any(|st| st.sql.contains("REVOKE") || st.sql.contains("rlsgate.revoked")),
        "{:#?}",
        plan.steps
    );
}

#[test]
fn rollback_grants_back_exactly_what_was_recorded() {
    let policy = Policy::parse(POLICY).unwrap();
    let mut s = state();
    let rec = |object: &str, privilege: &str, grantee: &str, exists: bool| Revoked {
        object: object.into(),
        privilege: privilege.into(),
        grantee: grantee.into(),
        exists,
    };
    s.hardening.recorded = Some(vec![
        rec(
            "FUNCTION pg_catalog.pg_cancel_backend(integer)",
            "EXECUTE",
            "PUBLIC",
            true,
        ),
        rec(
            "FUNCTION pg_catalog.pg_cancel_backend(integer)",
            "EXECUTE",
            "app_rls",
            true,
        ),
        rec("FUNCTION pg_catalog.lo_get(oid)", "EXECUTE", "PUBLIC", true),
        rec("TABLE pg_catalog.pg_locks", "SELECT", "PUBLIC", true),
        rec("TABLE public.pg_stat_statements", "SELECT", "PUBLIC", false),
    ]);
    let plan = rollback::build(&policy, &s, false).unwrap();
    let sql: Vec<&str> = plan.steps.iter().map(|s| s.sql.as_str()).collect();
    assert_eq!(
        sql,
        [
            "GRANT EXECUTE ON FUNCTION pg_catalog.pg_cancel_backend(integer), pg_catalog.lo_get(oid) TO PUBLIC;",
            "GRANT EXECUTE ON FUNCTION pg_catalog.pg_cancel_backend(integer) TO app_rls;",
            "GRANT SELECT ON TABLE pg_catalog.pg_locks TO PUBLIC;",
            "DROP TABLE rlsgate.revoked;",
        ]
    );
}

#[test]
fn every_target_is_named_once_and_revoked_as_its_kind_says() {
    let mut seen = std::collections::BTreeSet::new();
    for t in TARGETS {
        assert!(seen.insert(t.name), "{} twice", t.name);
        assert_eq!(
            t.kind == Kind::Function,
            t.name.ends_with(')'),
            "{}",
            t.name
        );
    }
    for g in [
        Group::Signals,
        Group::Activity,
        Group::Sessions,
        Group::LargeObjects,
        Group::Statements,
    ] {
        assert!(TARGETS.iter().any(|t| t.group == g));
    }
}
