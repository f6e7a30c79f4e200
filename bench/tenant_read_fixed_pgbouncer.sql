-- Diagnostic: tenant_read_fixed.sql for PgBouncer (tenant set by the app, same round trip).
SELECT set_config('app.current_tenant', 't1', true) \;
SELECT abalance FROM pgbench_accounts WHERE aid = 1;
