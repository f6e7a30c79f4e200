-- rlsgate sealed tenant context: the database does not trust a bare setting.
--
-- With `[tenant] sealed = true`, rlsgate sets two settings on every pooled connection,
-- through bound parameters (so neither value appears in pg_stat_activity):
--
--     app.current_tenant = <tenant>
--     rlsgate.seal       = hex(HMAC-SHA256(<seal secret>, <tenant>))
--
-- rlsgate.tenant() returns the tenant only when the seal verifies against the secret,
-- which lives in a table that only this function (SECURITY DEFINER, owned by the
-- installing superuser) can read. Anything that changes app.current_tenant without
-- rlsgate -- dynamic SQL in a function the client created, which the statement guard
-- cannot see -- breaks the seal, and rlsgate.tenant() returns NULL: policies written as
--
--     USING (tenant_id = (SELECT rlsgate.tenant()))
--
-- then match no row. `(SELECT ...)` makes PostgreSQL evaluate the function once per
-- statement (an InitPlan) rather than once per row.
--
-- Install (as a superuser, into each application database), then store the secret:
--
--     psql -d app -f policies/sealed.sql
--     psql -d app -c "SELECT rlsgate.set_seal_secret('<same secret as RLSGATE seal_secret>')"
--
-- Requires the pgcrypto extension (package postgresql-contrib).

BEGIN;

CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE SCHEMA IF NOT EXISTS rlsgate;
REVOKE ALL ON SCHEMA rlsgate FROM PUBLIC;
GRANT USAGE ON SCHEMA rlsgate TO PUBLIC;

-- The shared secret. No grants: only the owner (and so the SECURITY DEFINER
-- functions below) can read it.
CREATE TABLE IF NOT EXISTS rlsgate.seal_key (
    id     boolean PRIMARY KEY DEFAULT true CHECK (id),
    secret bytea NOT NULL
);
REVOKE ALL ON rlsgate.seal_key FROM PUBLIC;

CREATE OR REPLACE FUNCTION rlsgate.set_seal_secret(secret text) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO rlsgate.seal_key (id, secret) VALUES (true, convert_to(secret, 'UTF8'))
    ON CONFLICT (id) DO UPDATE SET secret = EXCLUDED.secret;
$$;
REVOKE ALL ON FUNCTION rlsgate.set_seal_secret(text) FROM PUBLIC;

-- The verified tenant, or NULL. STABLE: same result within a statement.
CREATE OR REPLACE FUNCTION rlsgate.tenant() RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t    text := current_setting('app.current_tenant', true);
    seal text := current_setting('rlsgate.seal', true);
    key  bytea;
BEGIN
    IF t IS NULL OR t = '' OR seal IS NULL OR seal = '' THEN
        RETURN NULL;
    END IF;
    SELECT k.secret INTO key FROM rlsgate.seal_key k;
    IF key IS NULL THEN
        RETURN NULL;
    END IF;
    IF encode(public.hmac(convert_to(t, 'UTF8'), key, 'sha256'), 'hex') = seal THEN
        RETURN t;
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION rlsgate.tenant() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION rlsgate.tenant() TO PUBLIC;

COMMIT;

-- Example (see policies/demo.sql for the plain variant):
--
--   CREATE POLICY tenant_isolation ON customers
--       USING (tenant_id = (SELECT rlsgate.tenant()))
--       WITH CHECK (tenant_id = (SELECT rlsgate.tenant()));
