-- Diagnostic (not in the default run): tenant_read.sql with a constant statement text.
-- In -M simple every tenant_read.sql query has a different text (pgbench interpolates the
-- aid), so a per-text cache cannot help; here the text never changes.
SELECT abalance FROM pgbench_accounts WHERE aid = 1;
