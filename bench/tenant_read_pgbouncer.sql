-- tenant_read.sql as an app behind PgBouncer must run it: the app sets the tenant itself.
-- set_config(..., true) is transaction-local and is sent in the same Query message
-- (one implicit transaction, one round trip), so it is correct in session AND
-- transaction pooling and costs no extra round trip. Simple protocol only (\;).
\set k random(0, 12500 * :scale - 1)
\set aid 8 * :k + 1
SELECT set_config('app.current_tenant', 't1', true) \;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
