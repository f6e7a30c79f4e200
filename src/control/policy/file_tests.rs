//! Unit tests of the policy file parser.

use super::*;

const MINIMAL: &str = r#"
[tenant]
setting = "app.current_tenant"
type = "text"
[roles]
app = "app_rls"
[[table]]
name = "customers"
"#;

fn with(extra: &str) -> String {
    format!("{MINIMAL}{extra}")
}

fn invalid_key(text: &str) -> String {
    match Policy::parse(text) {
        Err(PolicyFileError::Invalid { key, .. }) => key,
        other => panic!("expected an invalid key, got {other:?}"),
    }
}

#[test]
fn the_example_policy_parses() {
    let text = include_str!("../../../policies/example-policy.toml");
    let p = Policy::parse(text).expect("example policy is valid");
    assert_eq!(p.setting, "app.current_tenant");
    assert_eq!(p.tenant_type, TenantType::Text);
    assert_eq!(p.app_role, "app_rls");
    assert_eq!(p.privileges, Command::ALL.to_vec());
    assert_eq!(p.policy_name, "tenant_isolation");
    assert_eq!(p.apply.batch_size, 5000);
    assert_eq!(p.apply.lock_timeout, Duration::from_secs(10));
    let names: Vec<String> = p.tables.iter().map(|t| t.name.plain()).collect();
    assert_eq!(
        names,
        [
            "public.customers",
            "public.products",
            "public.invoices",
            "public.invoice_lines",
            "public.payments"
        ]
    );
    let lines = p
        .table(&QualifiedName::new("public", "invoice_lines"))
        .unwrap();
    assert_eq!(
        lines.tenant_unique,
        vec![vec!["invoice_id".to_owned(), "product_sku".to_owned()]]
    );
    assert_eq!(lines.backfill.as_deref(), Some("acme"));
    assert!(lines.commands.is_all());
    assert!(lines.forbid_empty);
    assert_eq!(p.exempt.len(), 1);
    assert_eq!(p.exempt[0].name, QualifiedName::new("public", "currencies"));
}

#[test]
fn defaults_apply_when_keys_are_left_out() {
    let p = Policy::parse(MINIMAL).unwrap();
    let t = &p.tables[0];
    assert_eq!(t.column, "tenant_id");
    assert!(t.backfill.is_none());
    assert!(t.commands.is_all());
    assert!(t.tenant_index && t.forbid_empty);
    assert!(p.secure_views);
    assert!(!p.apply.concurrent_indexes);
}

#[test]
fn per_table_overrides_and_command_subsets() {
    let p = Policy::parse(&with(
        "column = \"org\"\ncommands = [\"select\", \"INSERT\"]\nforbid_empty = false\n",
    ))
    .unwrap();
    let t = &p.tables[0];
    assert_eq!(t.column, "org");
    assert!(!t.commands.is_all());
    assert_eq!(
        t.commands.0.iter().copied().collect::<Vec<_>>(),
        [Command::Select, Command::Insert]
    );
    assert!(!t.forbid_empty);
}

#[test]
fn backfill_values_are_checked_against_the_type() {
    let uuid = MINIMAL.replace("type = \"text\"", "type = \"uuid\"");
    assert!(Policy::parse(&format!("{uuid}backfill = \"not-a-uuid\"\n")).is_err());
    let ok = Policy::parse(&format!(
        "{uuid}backfill = \"9f1c2a8e-3b4d-4e5f-8a6b-7c8d9e0f1a2b\"\n"
    ))
    .unwrap();
    assert!(!ok.tables[0].forbid_empty, "CHECK <> '' is for text only");
    let int = MINIMAL.replace("type = \"text\"", "type = \"bigint\"");
    let p = Policy::parse(&format!("{int}backfill = 42\n")).unwrap();
    assert_eq!(p.tables[0].backfill.as_deref(), Some("42"));
    assert_eq!(
        invalid_key(&format!("{int}backfill = \"x\"\n")),
        "table[0].backfill"
    );
    assert_eq!(invalid_key(&with("backfill = \"\"\n")), "table[0].backfill");
}

#[test]
fn mistakes_name_their_key() {
    assert_eq!(
        invalid_key(&MINIMAL.replace("app.current_tenant", "tenant")),
        "tenant.setting"
    );
    assert_eq!(
        invalid_key(&with("commands = [\"MERGE\"]\n")),
        "table[0].commands"
    );
    assert_eq!(
        invalid_key(&with("tenant_unique = [[\"tenant_id\", \"email\"]]\n")),
        "table[0].tenant_unique"
    );
    assert_eq!(invalid_key(&with("indexes = [[]]\n")), "table[0].indexes");
    assert_eq!(
        invalid_key(&with("[[table]]\nname = \"public.customers\"\n")),
        "table[1].name"
    );
    assert_eq!(
        invalid_key(&with("[[exempt]]\nname = \"customers\"\n")),
        "exempt[0].name"
    );
    assert_eq!(
        invalid_key(&MINIMAL.replace(
            "app = \"app_rls\"",
            "app = \"a\"\nprivileges = [\"TRUNCATE\"]"
        )),
        "roles.privileges"
    );
    assert_eq!(
        invalid_key(&format!("{MINIMAL}[apply]\nbatch_size = 0\n")),
        "apply.batch_size"
    );
}

#[test]
fn unknown_keys_and_missing_tables_are_errors() {
    assert!(matches!(
        Policy::parse(&with("backfil = \"acme\"\n")),
        Err(PolicyFileError::Parse { .. })
    ));
    let no_tables = MINIMAL.replace("[[table]]\nname = \"customers\"\n", "");
    assert_eq!(invalid_key(&no_tables), "table");
}
