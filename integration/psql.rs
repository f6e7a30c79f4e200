//! psql itself through the proxy: meta-commands, \copy, multi-statement strings, errors.

use crate::harness::Env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_meta_commands_copy_multistatement_and_errors() {
    let env = Env::start().await;
    let token = env.token("globex");
    let csv = env.dir.path().join("out.csv");
    let csv2 = env.dir.path().join("in.csv");
    std::fs::write(&csv2, "x\n").unwrap();
    let script = format!(
        "\\d customers\n\
         \\copy (SELECT tenant_id, name FROM customers ORDER BY id) TO '{}' CSV\n\
         SELECT 1 AS one; SELECT current_setting('app.current_tenant') AS t;\n\
         SELECT * FROM no_such_table;\n\
         \\copy customers (name) FROM '{csv2}'\n\
         SELECT count(*) AS n FROM invoices;\n",
        csv.display(),
        csv2 = csv2.display()
    );
    let script_path = env.dir.path().join("script.sql");
    std::fs::write(&script_path, script).unwrap();
    let out = env.psql(
        "bob",
        &token,
        "require",
        &["-A", "-f", script_path.to_str().unwrap()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("Table \"public.customers\""),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("tenant_id"), "{stdout}");
    assert!(
        stdout.contains("globex"),
        "multi-statement result: {stdout}"
    );
    assert!(
        stderr.contains("relation \"no_such_table\" does not exist"),
        "{stderr}"
    );
    // PostgreSQL refuses COPY FROM into an RLS table; the refusal reaches psql intact.
    assert!(
        stderr.contains("COPY FROM not supported with row-level security"),
        "{stderr}"
    );
    assert!(
        stdout.contains("n\n4\n"),
        "query after the errors works: {stdout}"
    );
    let copied = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(copied.lines().count(), 2, "{copied}");
    assert!(copied.lines().all(|l| l.starts_with("globex,")), "{copied}");
}
