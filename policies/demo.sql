-- rlsgate demo schema: a small multi-tenant database protected by row-level security.
--
-- Used by `rlsgate demo` and the integration tests. Run it as a superuser into the
-- database `app` (create that first), after policies/sealed.sql, then store the seal
-- secret that rlsgate has in `[tenant] seal_secret_file`:
--
--     createdb app && psql -v ON_ERROR_STOP=1 -d app \
--         -f policies/sealed.sql -f policies/demo.sql \
--         -c "SELECT rlsgate.set_seal_secret('<seal secret>')"
--
-- Re-running it is safe: roles are created only if missing (their passwords and
-- attributes are reset), and the demo tables are dropped and re-seeded.
--
-- What rlsgate expects from a database, and why:
--
--   * Every tenant-owned table has a tenant column and ENABLE + FORCE ROW LEVEL SECURITY.
--     ENABLE alone does not apply policies to the table's owner; FORCE does, so even a
--     connection that happens to run as the owner is filtered. (Superusers and roles with
--     BYPASSRLS always skip RLS, FORCE or not.)
--   * rlsgate connects upstream as an ordinary role (here `app_rls`): LOGIN, NOSUPERUSER,
--     NOBYPASSRLS, and it does not own the tables. If it could bypass RLS, the tenant
--     setting would filter nothing.
--   * Policies compare the tenant column with (SELECT rlsgate.tenant()): the tenant the
--     database itself verified (policies/sealed.sql), not the bare app.current_tenant
--     setting, which any SQL that gets past rlsgate's statement guard could change.
--     rlsgate.tenant() is NULL in a session rlsgate did not enter, so such a session
--     sees no rows at all. `(SELECT ...)` evaluates it once per statement.
--   * The CHECK constraints below forbid an empty tenant_id.
--   * The column DEFAULT reads the bare setting, current_setting('app.current_tenant')
--     *without* missing_ok: an INSERT that does not name the tenant takes it from the
--     session, and fails loudly if there is none. The default only fills the column in;
--     the policy's WITH CHECK, on rlsgate.tenant(), decides whether the row may be
--     written, so a forged setting gets a policy violation, never a row under another
--     tenant. (DEFAULT rlsgate.tenant() would be as safe but runs once per row: about
--     5x the cost of current_setting() per inserted row in COPY and bulk INSERTs.)

BEGIN;

-- ---------------------------------------------------------------------------------------
-- Roles (cluster-wide, so create them only if missing; then pin their attributes).
-- ---------------------------------------------------------------------------------------

-- Owns the tables. NOLOGIN: nobody connects as the owner.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app_owner') THEN
        CREATE ROLE app_owner NOLOGIN;
    END IF;
END
$$;

-- The upstream role rlsgate logs in as (SCRAM-SHA-256 over TCP, see pg_hba.conf).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app_rls') THEN
        CREATE ROLE app_rls LOGIN;
    END IF;
END
$$;
ALTER ROLE app_rls WITH LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB
    PASSWORD 'app_rls_pw';

-- Same rights as app_rls, but its password is stored as an MD5 hash so rlsgate's MD5
-- upstream authentication can be tested (pg_hba.conf uses `md5` for this role).
SET LOCAL password_encryption = 'md5';
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app_md5') THEN
        CREATE ROLE app_md5 LOGIN;
    END IF;
END
$$;
ALTER ROLE app_md5 WITH LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB
    PASSWORD 'app_md5_pw';
SET LOCAL password_encryption = 'scram-sha-256';

-- Same rights again, for cleartext `password` authentication in pg_hba.conf.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app_plain') THEN
        CREATE ROLE app_plain LOGIN;
    END IF;
END
$$;
ALTER ROLE app_plain WITH LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB
    PASSWORD 'app_plain_pw';

-- ---------------------------------------------------------------------------------------
-- Schema privileges. App roles may use the schema but not create objects in it: a table
-- created by the shared upstream role would have no RLS and be readable by every tenant.
-- (They keep the default TEMP privilege; rlsgate resets sessions between tenants.)
-- The owner needs USAGE too: foreign-key checks run as the referenced table's owner.
-- ---------------------------------------------------------------------------------------
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO app_owner, app_rls, app_md5, app_plain;

-- ---------------------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------------------
DROP TABLE IF EXISTS invoices, customers CASCADE;

CREATE TABLE customers (
    id          bigserial PRIMARY KEY,
    tenant_id   text NOT NULL DEFAULT current_setting('app.current_tenant')
                CONSTRAINT customers_tenant_id_not_empty CHECK (tenant_id <> ''),
    name        text NOT NULL,
    email       text,
    created_at  timestamptz DEFAULT now(),
    -- Uniqueness is per tenant: two tenants may have a customer with the same email.
    UNIQUE (tenant_id, email)
);

CREATE TABLE invoices (
    id           bigserial PRIMARY KEY,
    tenant_id    text NOT NULL DEFAULT current_setting('app.current_tenant')
                 CONSTRAINT invoices_tenant_id_not_empty CHECK (tenant_id <> ''),
    customer_id  bigint REFERENCES customers (id),
    amount       numeric(12, 2),
    status       text,
    issued_on    date,
    data         bytea
);
CREATE INDEX invoices_tenant_id_idx ON invoices (tenant_id);

-- The owner is a NOLOGIN role, not the superuser running this script. ALTER TABLE ...
-- OWNER also moves the bigserial sequences the tables own.
ALTER TABLE customers OWNER TO app_owner;
ALTER TABLE invoices OWNER TO app_owner;

-- ---------------------------------------------------------------------------------------
-- Row-level security: one policy per table, for every command.
-- USING filters the rows a statement can see (SELECT, UPDATE, DELETE);
-- WITH CHECK rejects new or updated rows that belong to another tenant.
-- ---------------------------------------------------------------------------------------
ALTER TABLE customers ENABLE ROW LEVEL SECURITY;
ALTER TABLE customers FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON customers
    FOR ALL
    USING (tenant_id = (SELECT rlsgate.tenant()))
    WITH CHECK (tenant_id = (SELECT rlsgate.tenant()));

ALTER TABLE invoices ENABLE ROW LEVEL SECURITY;
ALTER TABLE invoices FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON invoices
    FOR ALL
    USING (tenant_id = (SELECT rlsgate.tenant()))
    WITH CHECK (tenant_id = (SELECT rlsgate.tenant()));

-- ---------------------------------------------------------------------------------------
-- Grants to the app roles. RLS only narrows what these privileges allow.
-- ---------------------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE, DELETE ON customers, invoices TO app_rls, app_md5, app_plain;
GRANT USAGE ON SEQUENCE customers_id_seq, invoices_id_seq TO app_rls, app_md5, app_plain;

-- ---------------------------------------------------------------------------------------
-- Seed data, inserted by the superuser running this script (superusers bypass RLS, so
-- tenant_id is given explicitly). acme: 3 customers, 5 invoices; globex: 2 and 4.
-- ---------------------------------------------------------------------------------------
INSERT INTO customers (tenant_id, name, email) VALUES
    ('acme',   'Wile E. Coyote',   'wile@acme.test'),
    ('acme',   'Road Runner',      'beep@acme.test'),
    ('acme',   'Elmer Fudd',       'elmer@acme.test'),
    ('globex', 'Hank Scorpio',     'hank@globex.test'),
    ('globex', 'Homer Simpson',    'homer@globex.test');

INSERT INTO invoices (tenant_id, customer_id, amount, status, issued_on, data)
SELECT v.tenant_id, c.id, v.amount, v.status, v.issued_on, v.data
FROM (VALUES
    ('acme',   'wile@acme.test',    120.00, 'paid',    date '2024-01-15', '\x01'::bytea),
    ('acme',   'wile@acme.test',     75.50, 'open',    date '2024-02-01', NULL),
    ('acme',   'beep@acme.test',    310.25, 'paid',    date '2024-02-10', '\xdeadbeef'::bytea),
    ('acme',   'elmer@acme.test',    42.00, 'void',    date '2024-03-05', NULL),
    ('acme',   'elmer@acme.test',   999.99, 'open',    date '2024-03-20', '\x00ff'::bytea),
    ('globex', 'hank@globex.test', 5000.00, 'paid',    date '2024-01-31', NULL),
    ('globex', 'hank@globex.test', 1250.00, 'open',    date '2024-02-29', '\xcafe'::bytea),
    ('globex', 'homer@globex.test',  19.95, 'overdue', date '2024-03-01', NULL),
    ('globex', 'homer@globex.test',   7.49, 'paid',    date '2024-03-15', NULL)
) AS v (tenant_id, email, amount, status, issued_on, data)
JOIN customers c ON c.tenant_id = v.tenant_id AND c.email = v.email;

COMMIT;
