//! Unit tests of plan and rollback building over hand-made catalog states.

use std::collections::{BTreeMap, BTreeSet};

use super::catalog::*;
use super::file::{Command, Policy};
use super::plan::{self, Phase, Plan};
use super::rollback;
use super::sql::QualifiedName;

const POLICY: &str = r#"
[tenant]
setting = "app.current_tenant"
type = "text"
context = "setting"
[roles]
app = "app_rls"
[[table]]
name = "customers"
backfill = "acme"
tenant_unique = [["email"]]
[[table]]
name = "orders"
backfill = "acme"
"#;

const USING: &str =
    "(tenant_id = NULLIF(current_setting('app.current_tenant'::text, true), ''::text))";

fn policy() -> Policy {
    Policy::parse(POLICY).unwrap()
}

fn name(t: &str) -> QualifiedName {
    QualifiedName::new("public", t)
}

fn index(oid: u32, name: &str, cols: &[&str], unique: bool, primary: bool) -> IndexState {
    let kind = if primary { 'p' } else { 'u' };
    IndexState {
        oid,
        name: name.into(),
        columns: cols.iter().map(|c| Some(c.to_string())).collect(),
        unique,
        primary,
        valid: true,
        predicate: None,
        constraint: unique.then(|| (name.to_owned(), kind)),
    }
}

fn fk(cols: &[&str], refs: &[&str]) -> ForeignKey {
    ForeignKey {
        name: "orders_customer_email_fkey".into(),
        table: name("orders"),
        columns: cols.iter().map(|c| c.to_string()).collect(),
        ref_columns: refs.iter().map(|c| c.to_string()).collect(),
        index_oid: 11,
        on_update: 'a',
        on_delete: 'a',
        delete_set_columns: Vec::new(),
        match_full: false,
        deferrable: false,
        deferred: false,
    }
}

/// Two single-tenant tables: customers (email unique, referenced by orders).
fn fresh() -> DbState {
    let base = TableState {
        rows: 10,
        null_tenants: 10,
        owner: "shop".into(),
        primary_key: vec![("id".into(), "bigint".into())],
        ..TableState::default()
    };
    let customers = TableState {
        oid: 1,
        indexes: vec![
            index(10, "customers_pkey", &["id"], true, true),
            index(11, "customers_email_key", &["email"], true, false),
        ],
        referenced_by: vec![fk(&["customer_email"], &["email"])],
        sequences: vec![SequenceState {
            name: name("customers_id_seq"),
            app_usage: false,
        }],
        ..base.clone()
    };
    let orders = TableState {
        oid: 2,
        indexes: vec![index(20, "orders_pkey", &["id"], true, true)],
        ..base
    };
    DbState {
        database: "shop".into(),
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
        tables: BTreeMap::from([(name("customers"), customers), (name("orders"), orders)]),
        schemas: BTreeMap::from([("public".into(), true)]),
        ..DbState::default()
    }
}

/// The same database after `apply`.
fn applied() -> DbState {
    let mut state = fresh();
    for t in state.tables.values_mut() {
        t.null_tenants = 0;
        t.column = Some(ColumnState {
            type_name: "text".into(),
            not_null: true,
            default: Some("current_setting('app.current_tenant'::text)".into()),
        });
        t.rls_enabled = true;
        t.rls_forced = true;
        t.policies = vec![PolicyState {
            name: "tenant_isolation".into(),
            cmd: '*',
            permissive: true,
            roles: vec!["public".into()],
            using: Some(USING.into()),
            check: Some(USING.into()),
        }];
        t.app_privileges = Command::ALL.into_iter().collect::<BTreeSet<_>>();
        t.sequences.iter_mut().for_each(|s| s.app_usage = true);
    }
    let c = state.tables.get_mut(&name("customers")).unwrap();
    c.indexes[1] = index(
        11,
        "customers_email_key",
        &["tenant_id", "email"],
        true,
        false,
    );
    c.referenced_by = vec![fk(
        &["tenant_id", "customer_email"],
        &["tenant_id", "email"],
    )];
    c.check_constraints = vec!["customers_tenant_id_not_empty".into()];
    let o = state.tables.get_mut(&name("orders")).unwrap();
    o.indexes.push(index(
        21,
        "orders_tenant_id_idx",
        &["tenant_id"],
        false,
        false,
    ));
    o.check_constraints = vec!["orders_tenant_id_not_empty".into()];
    state
}

fn sql(plan: &Plan) -> Vec<&str> {
    plan.steps.iter().map(|s| s.sql.as_str()).collect()
}

fn position(plan: &Plan, needle: &str) -> usize {
    sql(plan)
        .iter()
        .position(|s| s.contains(needle))
        .unwrap_or_else(|| panic!("no step contains {needle:?}:\n{:#?}", sql(plan)))
}

#[test]
fn a_single_tenant_schema_gets_the_full_plan() {
    let plan = plan::build(&policy(), &fresh()).unwrap();
    let prepare: Vec<_> = plan.steps_in(Phase::Prepare).map(|s| &s.sql).collect();
    assert_eq!(
        prepare,
        [
            "ALTER TABLE public.customers ADD COLUMN tenant_id text;",
            "ALTER TABLE public.orders ADD COLUMN tenant_id text;"
        ]
    );
    assert_eq!(plan.backfills.len(), 2);
    assert_eq!(plan.backfills[0].value, "'acme'::text");
    assert_eq!(plan.backfills[0].rows, 10);
    for needle in [
        "ALTER TABLE public.customers ALTER COLUMN tenant_id SET DEFAULT current_setting('app.current_tenant');",
        "ALTER TABLE public.customers ALTER COLUMN tenant_id SET NOT NULL;",
        "ALTER TABLE public.customers ADD CONSTRAINT customers_tenant_id_not_empty CHECK (tenant_id <> '');",
        "CREATE INDEX orders_tenant_id_idx ON public.orders (tenant_id);",
        "ALTER TABLE public.orders ENABLE ROW LEVEL SECURITY;",
        "ALTER TABLE public.orders FORCE ROW LEVEL SECURITY;",
        "CREATE POLICY tenant_isolation ON public.customers AS PERMISSIVE FOR ALL TO PUBLIC \
         USING (tenant_id = NULLIF(current_setting('app.current_tenant', true), '')) \
         WITH CHECK (tenant_id = NULLIF(current_setting('app.current_tenant', true), ''));",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON public.customers TO app_rls;",
        "GRANT USAGE ON SEQUENCE public.customers_id_seq TO app_rls;",
    ] {
        position(&plan, needle);
    }
    assert!(!sql(&plan)
        .iter()
        .any(|s| s.contains("customers_tenant_id_idx")));
    let drop_fk = position(
        &plan,
        "ALTER TABLE public.orders DROP CONSTRAINT orders_customer_email_fkey;",
    );
    let widen = position(
        &plan,
        "ALTER TABLE public.customers DROP CONSTRAINT customers_email_key, \
         ADD CONSTRAINT customers_email_key UNIQUE (tenant_id, email);",
    );
    let add_fk = position(
        &plan,
        "ALTER TABLE public.orders ADD CONSTRAINT orders_customer_email_fkey FOREIGN KEY \
         (tenant_id, customer_email) REFERENCES public.customers (tenant_id, email) \
         ON UPDATE NO ACTION ON DELETE NO ACTION;",
    );
    assert!(drop_fk < widen && widen < add_fk);
    assert!(plan.steps.iter().all(|s| s.phase != Phase::Concurrent));
}

#[test]
fn an_applied_schema_plans_nothing_and_rolls_back_fully() {
    let (policy, state) = (policy(), applied());
    let plan = plan::build(&policy, &state).unwrap();
    assert!(plan.is_empty(), "{:#?}", plan.steps);
    let back = rollback::build(&policy, &state, false).unwrap();
    for needle in [
        "DROP POLICY tenant_isolation ON public.customers;",
        "ALTER TABLE public.customers NO FORCE ROW LEVEL SECURITY;",
        "ALTER TABLE public.customers DISABLE ROW LEVEL SECURITY;",
        "REVOKE SELECT, INSERT, UPDATE, DELETE ON public.orders FROM app_rls;",
        "DROP INDEX public.orders_tenant_id_idx;",
        "ADD CONSTRAINT customers_email_key UNIQUE (email);",
        "FOREIGN KEY (customer_email) REFERENCES public.customers (email)",
        "ALTER TABLE public.orders DROP CONSTRAINT orders_tenant_id_not_empty;",
        "ALTER TABLE public.orders ALTER COLUMN tenant_id DROP DEFAULT;",
        "ALTER TABLE public.orders ALTER COLUMN tenant_id DROP NOT NULL;",
    ] {
        position(&back, needle);
    }
    assert!(!sql(&back).iter().any(|s| s.contains("DROP COLUMN")));
    let dropping = rollback::build(&policy, &state, true).unwrap();
    let drop_col = position(
        &dropping,
        "ALTER TABLE public.customers DROP COLUMN tenant_id;",
    );
    assert!(position(&dropping, "UNIQUE (email)") < drop_col);
    assert!(rollback::build(&policy, &fresh(), false)
        .unwrap()
        .is_empty());
}

#[test]
fn refusals_name_the_reason() {
    let no_backfill = Policy::parse(&POLICY.replacen("backfill = \"acme\"\n", "", 1)).unwrap();
    let err = plan::build(&no_backfill, &fresh()).unwrap_err();
    assert!(
        err.0[0].contains("public.customers: 10 rows have no tenant"),
        "{err}"
    );

    let only_customers =
        Policy::parse(&POLICY.replace("[[table]]\nname = \"orders\"\nbackfill = \"acme\"\n", ""))
            .unwrap();
    let err = plan::build(&only_customers, &fresh()).unwrap_err();
    assert!(
        err.to_string()
            .contains("orders is not a [[table]] of the policy"),
        "{err}"
    );

    let mut state = fresh();
    state.roles.app.as_mut().unwrap().bypassrls = true;
    state.roles.current_bypasses_rls = false;
    state.tables.get_mut(&name("orders")).unwrap().app_owns = true;
    let err = plan::build(&policy(), &state).unwrap_err().to_string();
    for needle in [
        "has BYPASSRLS",
        "`postgres` is not a superuser",
        "owns public.orders",
    ] {
        assert!(err.contains(needle), "{needle} not in {err}");
    }
    let old = DbState {
        server_version: 140_011,
        tables: BTreeMap::new(),
        ..fresh()
    };
    let err = plan::build(&policy(), &old).unwrap_err();
    assert_eq!(
        err.0,
        ["PostgreSQL 15 or later is needed (server_version_num 140011)"]
    );

    state.roles.app = None;
    state.tables.remove(&name("orders"));
    let err = plan::build(&policy(), &state).unwrap_err().to_string();
    assert!(err.contains("app role `app_rls` does not exist"));
    assert!(err.contains("table public.orders does not exist"));
}

#[test]
fn command_subsets_get_one_policy_per_command() {
    let p = Policy::parse(&POLICY.replace(
        "name = \"orders\"\n",
        "name = \"orders\"\ncommands = [\"SELECT\", \"INSERT\"]\n",
    ))
    .unwrap();
    let plan = plan::build(&p, &fresh()).unwrap();
    let select = &sql(&plan)[position(&plan, "tenant_isolation_select ON public.orders")];
    assert!(
        select.contains("FOR SELECT") && select.contains("USING") && !select.contains("WITH CHECK")
    );
    let insert = &sql(&plan)[position(&plan, "tenant_isolation_insert ON public.orders")];
    assert!(
        insert.contains("FOR INSERT") && !insert.contains("USING") && insert.contains("WITH CHECK")
    );
    // The applied ALL policy is replaced by the two.
    let plan = plan::build(&p, &applied()).unwrap();
    position(&plan, "DROP POLICY tenant_isolation ON public.orders;");
}

#[test]
fn uuid_tenants_are_cast_and_changed_policies_replaced() {
    let p = Policy::parse(
        &POLICY
            .replace("type = \"text\"", "type = \"uuid\"")
            .replace("\"acme\"", "\"9f1c2a8e-3b4d-4e5f-8a6b-7c8d9e0f1a2b\""),
    )
    .unwrap();
    let plan = plan::build(&p, &fresh()).unwrap();
    position(
        &plan,
        "SET DEFAULT current_setting('app.current_tenant')::uuid;",
    );
    position(
        &plan,
        "NULLIF(current_setting('app.current_tenant', true), '')::uuid)",
    );
    assert!(
        !sql(&plan).iter().any(|s| s.contains("<> ''")),
        "no empty check for uuid"
    );
    assert_eq!(
        plan.backfills[0].value,
        "'9f1c2a8e-3b4d-4e5f-8a6b-7c8d9e0f1a2b'::uuid"
    );

    let mut state = applied();
    state.tables.get_mut(&name("orders")).unwrap().policies[0].using = Some("true".into());
    let plan = plan::build(&policy(), &state).unwrap();
    let drop = position(&plan, "DROP POLICY tenant_isolation ON public.orders;");
    assert!(drop < position(&plan, "CREATE POLICY tenant_isolation ON public.orders"));
}

#[test]
fn set_null_keys_keep_the_tenant_and_concurrent_indexes_come_last() {
    let mut state = fresh();
    let c = state.tables.get_mut(&name("customers")).unwrap();
    c.referenced_by[0].on_delete = 'n';
    let mut p = policy();
    p.apply.concurrent_indexes = true;
    let o = state.tables.get_mut(&name("orders")).unwrap();
    o.indexes.push(IndexState {
        valid: false,
        ..index(21, "orders_tenant_id_idx", &["tenant_id"], false, false)
    });
    let plan = plan::build(&p, &state).unwrap();
    position(&plan, "ON DELETE SET NULL (customer_email);");
    let concurrent: Vec<_> = plan
        .steps_in(Phase::Concurrent)
        .map(|s| s.sql.as_str())
        .collect();
    assert_eq!(
        concurrent,
        [
            "DROP INDEX CONCURRENTLY public.orders_tenant_id_idx;",
            "CREATE INDEX CONCURRENTLY orders_tenant_id_idx ON public.orders (tenant_id);"
        ]
    );
}

#[test]
fn backfill_batches_walk_the_primary_key() {
    let plan = plan::build(&policy(), &fresh()).unwrap();
    let job = &plan.backfills[0];
    assert_eq!(
        job.batch_sql(100, true),
        "WITH batch AS (SELECT id FROM public.customers WHERE (id) > ($1::text::bigint) \
         ORDER BY id LIMIT 100), done AS (UPDATE public.customers AS t SET tenant_id = \
         'acme'::text FROM batch WHERE (t.id) = (batch.id) AND t.tenant_id IS NULL RETURNING 1) \
         SELECT (SELECT count(*) FROM done), batch.id::text FROM batch \
         ORDER BY batch.id DESC LIMIT 1"
    );
    assert!(!job.batch_sql(100, false).contains("$1"));
    let mut keyless = job.clone();
    keyless.key.clear();
    assert!(keyless
        .batch_sql(5, false)
        .contains("ctid = ANY (ARRAY(SELECT ctid"));
}
