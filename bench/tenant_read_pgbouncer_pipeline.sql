-- tenant_read.sql for PgBouncer with -M extended / -M prepared: the two statements go in
-- one pipeline (no Sync between them = one implicit transaction, one round trip), so the
-- transaction-local set_config applies to the SELECT in both pooling modes.
\set k random(0, 12500 * :scale - 1)
\set aid 8 * :k + 1
\startpipeline
SELECT set_config('app.current_tenant', 't1', true);
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
\endpipeline
