-- Point select on pgbench_accounts for tenant t1 (rows with tenant_id = 't1' are aid = 8k+1).
-- The tenant is NOT set here: direct PostgreSQL gets it from PGOPTIONS, rlsgate from the JWT.
-- RLS (tenant_id = current_setting('app.current_tenant', true)) filters every row.
\set k random(0, 12500 * :scale - 1)
\set aid 8 * :k + 1
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
