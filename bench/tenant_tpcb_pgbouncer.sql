-- tenant_tpcb.sql as an app behind PgBouncer must run it: the transaction-local tenant
-- setting rides in the same Query message as BEGIN (no extra round trip).
\set k random(0, 12500 * :scale - 1)
\set aid 8 * :k + 1
\set bid 8 * random(0, (:scale - 1) / 8) + 1
\set tid 8 * random(0, (10 * :scale - 1) / 8) + 1
\set delta random(-5000, 5000)
BEGIN \;
SELECT set_config('app.current_tenant', 't1', true);
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
