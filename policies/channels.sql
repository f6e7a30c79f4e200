-- rlsgate per-tenant notification channels: notify a tenant's listeners from the database.
--
-- LISTEN/NOTIFY channels are database-wide in PostgreSQL and RLS does not apply to
-- them. With `[tenant] channels = "tenant"` (the default) rlsgate gives every tenant its
-- own channels: a client's `LISTEN orders` becomes `LISTEN "orders@<h>"`, its
-- `NOTIFY orders` and `pg_notify('orders', ...)` go to `orders@<h>`, where <h> is the
-- first 16 hex digits of sha256(tenant); and a client receives only notifications of
-- channels ending in its own `@<h>` (shown to it without the suffix).
--
-- Code that runs inside the database (a trigger, a function) is not rewritten by the
-- proxy. To reach the listeners of the tenant whose session runs the code, name the
-- channel with rlsgate.channel():
--
--     PERFORM pg_notify(rlsgate.channel('orders'), row_to_json(NEW)::text);
--
-- A notification on a plain `orders` channel reaches no client of rlsgate.
-- Install (as the schema owner or a superuser, into each application database):
--
--     psql -d app -f policies/channels.sql

BEGIN;

CREATE SCHEMA IF NOT EXISTS rlsgate;

-- The channel `name` of `tenant` (default: the current session's tenant), as rlsgate
-- names it on the server. Change app.current_tenant here if [tenant] setting differs.
CREATE OR REPLACE FUNCTION rlsgate.channel(
    name text,
    tenant text DEFAULT current_setting('app.current_tenant')
) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT name || '@' || left(encode(sha256(convert_to(tenant, 'UTF8')), 'hex'), 16)
$$;

GRANT USAGE ON SCHEMA rlsgate TO PUBLIC;
GRANT EXECUTE ON FUNCTION rlsgate.channel(text, text) TO PUBLIC;

COMMIT;
