//! Tests for `pgtemp` against the real local PostgreSQL server binaries (never skipped).

use super::*;

fn start() -> TempPostgres {
    TempPostgres::start(TempPostgresOptions::default()).expect("start temporary PostgreSQL")
}

#[test]
fn starts_and_answers_select_1() {
    let pg = start();
    assert_eq!(pg.psql("postgres", "select 1").unwrap(), "1");
    assert_eq!(pg.host(), "127.0.0.1");
    assert!(pg.port() > 0);
    assert!(pg.data_dir().join("PG_VERSION").is_file());
    assert!(pg
        .socket_dir()
        .join(format!(".s.PGSQL.{}", pg.port()))
        .exists());
    assert!(pg.bin_dir().join("pg_ctl").is_file());
    assert_eq!(
        pg.superuser_url("app"),
        format!("postgres://postgres@127.0.0.1:{}/app", pg.port())
    );
    let settings = pg
        .psql(
            "postgres",
            "select current_setting('fsync'), current_setting('max_connections'), \
             current_setting('password_encryption'), current_setting('server_encoding')",
        )
        .unwrap();
    assert_eq!(settings, "off|200|scram-sha-256|UTF8");
}

#[test]
fn extra_conf_lines_win_and_errors_carry_stderr() {
    let opts = TempPostgresOptions {
        port: None,
        extra_conf: vec!["work_mem = '7MB'".into()],
    };
    let pg = TempPostgres::start(opts).unwrap();
    assert_eq!(pg.psql("postgres", "show work_mem").unwrap(), "7MB");
    let err = pg
        .psql("postgres", "select * from no_such_table")
        .unwrap_err();
    assert!(err.to_string().contains("no_such_table"), "{err}");
    // Several statements in one call, each separately (CREATE DATABASE cannot share a query).
    let out = pg
        .psql(
            "postgres",
            "create database app; select datname from pg_database where datname = 'app';",
        )
        .unwrap();
    assert_eq!(out, "app");
}

#[test]
fn stop_and_start_again_keep_data_and_port() {
    let mut pg = start();
    let port = pg.port();
    pg.psql(
        "postgres",
        "create table kept(v int); insert into kept values (42);",
    )
    .unwrap();
    pg.stop().unwrap();
    assert!(pg.psql("postgres", "select 1").is_err());
    pg.start_again().unwrap();
    assert_eq!(pg.port(), port);
    assert_eq!(pg.psql("postgres", "select v from kept").unwrap(), "42");
}

#[test]
fn drop_stops_the_server_and_removes_the_directory() {
    let pg = start();
    let root = pg.data_dir().parent().unwrap().to_path_buf();
    let port = pg.port();
    assert!(root.is_dir());
    drop(pg);
    assert!(!root.exists(), "{} still exists", root.display());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn run_sql_file_reports_the_failing_statement() {
    let pg = start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.sql");
    fs::write(
        &file,
        "create table t(x int);\nselect nonsense_column from t;\n",
    )
    .unwrap();
    let err = pg.run_sql_file("postgres", &file).unwrap_err().to_string();
    assert!(err.contains("nonsense_column"), "{err}");
    // ON_ERROR_STOP: the first statement ran, nothing after the error did.
    assert_eq!(pg.psql("postgres", "select count(*) from t").unwrap(), "0");
}

#[test]
fn missing_binaries_are_a_loud_error() {
    let err = check_bin_dir(
        Path::new("/nonexistent/pg/bin"),
        "PG_BIN_DIR=/nonexistent/pg/bin".into(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("PostgreSQL server binaries not found"),
        "{err}"
    );
    assert!(err.contains("/nonexistent/pg/bin"), "{err}");
    assert!(err.contains("apt-get install -y postgresql"), "{err}");
    assert!(
        find_bin_dir().is_ok(),
        "this machine must have server binaries"
    );
}

#[test]
fn parses_passwd_entries() {
    let passwd = "root:x:0:0:root:/root:/bin/bash\npostgres:x:101:104:PostgreSQL:/var/lib/postgresql:/bin/bash\n";
    let user = passwd_entry(passwd, "postgres").unwrap();
    assert_eq!((user.uid, user.gid), (101, 104));
    assert!(passwd_entry(passwd, "nobody").is_none());
}

/// `policies/demo.sql` end to end: RLS filters by tenant for the non-superuser upstream
/// role over TCP with a password, and every hba auth method accepts its role.
#[test]
fn demo_sql_enforces_tenant_isolation() {
    let pg = start();
    pg.psql("postgres", "create database app").unwrap();
    pg.psql("app", DEMO_SQL).unwrap();
    // Running it twice must work too (idempotent roles, reset data).
    pg.psql("app", DEMO_SQL).unwrap();

    // What rlsgate does on every connection, as a test-only helper that may read the
    // secret: `enter(t)` seals tenant t for this backend and sets the bare setting.
    pg.psql(
        "app",
        "SELECT rlsgate.set_seal_secret('demo-seal-secret-0123456789');
         CREATE FUNCTION public.enter(t text) RETURNS void LANGUAGE sql SECURITY DEFINER AS $$
           SELECT set_config('app.current_tenant', t, false),
                  rlsgate.enter(t, s, encode(sha256(k.opad || sha256(k.ipad ||
                      convert_to(t || ':' || pg_backend_pid() || ':' || s, 'UTF8'))), 'hex'))
           FROM rlsgate.seal_key k,
                (SELECT (extract(epoch FROM clock_timestamp()) * 1e6)::bigint AS s) n $$;
         GRANT EXECUTE ON FUNCTION public.enter(text) TO app_rls;",
    )
    .unwrap();
    let rls = |sql: &str| pg.psql_as("app", "app_rls", Some("app_rls_pw"), sql);
    let count = "select count(*) from customers";
    assert_eq!(
        rls(&format!("select enter('acme'); {count}")).unwrap(),
        "\n3"
    );
    assert_eq!(
        rls(&format!("select enter('globex'); {count}")).unwrap(),
        "\n2"
    );
    assert_eq!(rls(count).unwrap(), "0");
    // The bare setting is not trusted: no rows for it alone, none for a forged one.
    assert_eq!(
        rls(&format!("set app.current_tenant = 'acme'; {count}")).unwrap(),
        "0"
    );
    assert_eq!(
        rls(&format!(
            "select enter('acme'); set app.current_tenant = 'globex'; {count}"
        ))
        .unwrap(),
        "\n3"
    );
    assert_eq!(
        rls("select enter('acme'); select count(*) from invoices").unwrap(),
        "\n5"
    );
    assert_eq!(
        rls("select enter('globex'); select count(*), sum(amount) > 0 from invoices").unwrap(),
        "\n4|t"
    );
    // Inserts take the tenant from the setting; writing another tenant's rows is refused.
    let inserted = rls("select enter('globex'); \
         insert into customers(name, email) values ('New', 'new@globex.test') returning tenant_id")
    .unwrap();
    assert_eq!(inserted, "\nglobex");
    // The foreign-key check runs as the table owner, which needs USAGE on the schema.
    let invoice = rls("select enter('globex'); \
         insert into invoices(customer_id, amount) \
         select id, 1.50 from customers where email = 'new@globex.test' returning tenant_id")
    .unwrap();
    assert_eq!(invoice, "\nglobex");
    for sneaky in [
        "insert into customers(tenant_id, name) values ('globex', 'Sneaky')",
        // The default reads the bare setting; the policy checks the sealed tenant.
        "set app.current_tenant = 'globex'; insert into customers(name) values ('Sneaky')",
    ] {
        let err = rls(&format!("select enter('acme'); {sneaky}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("row-level security"), "{err}");
    }
    // The upstream role cannot skip RLS: not superuser, no BYPASSRLS.
    assert_eq!(
        rls("select rolsuper, rolbypassrls from pg_roles where rolname = current_user").unwrap(),
        "f|f"
    );

    let md5 = pg.psql_as("app", "app_md5", Some("app_md5_pw"), "select current_user");
    assert_eq!(md5.unwrap(), "app_md5");
    let stored = pg
        .psql(
            "app",
            "select left(rolpassword, 3) from pg_authid where rolname = 'app_md5'",
        )
        .unwrap();
    assert_eq!(stored, "md5");
    let plain = pg.psql_as(
        "app",
        "app_plain",
        Some("app_plain_pw"),
        "select current_user",
    );
    assert_eq!(plain.unwrap(), "app_plain");
    let wrong = pg.psql_as("app", "app_rls", Some("wrong"), "select 1");
    assert!(wrong
        .unwrap_err()
        .to_string()
        .contains("password authentication failed"));
}

#[test]
fn a_taken_fixed_port_fails_with_the_log_tail() {
    let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let opts = TempPostgresOptions {
        port: Some(port),
        extra_conf: Vec::new(),
    };
    let err = TempPostgres::start(opts).unwrap_err();
    assert!(matches!(err, PgTempError::Start { .. }), "{err:?}");
    assert!(err.to_string().contains("could not bind"), "{err}");
}
