-- TPC-B-like write transaction restricted to tenant t1's rows
-- (tenant of account/teller/branch x is 't' || ((x - 1) % 8 + 1), so t1 owns x = 8k+1).
-- pgbench_history.tenant_id defaults to current_setting('app.current_tenant').
-- The tenant is NOT set here: direct PostgreSQL gets it from PGOPTIONS, rlsgate from the JWT.
\set k random(0, 12500 * :scale - 1)
\set aid 8 * :k + 1
\set bid 8 * random(0, (:scale - 1) / 8) + 1
\set tid 8 * random(0, (10 * :scale - 1) / 8) + 1
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
