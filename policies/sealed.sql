-- rlsgate sealed tenant context: the database does not trust a bare setting.
--
-- What rlsgate sends. Each time rlsgate applies the tenant context on a server
-- connection (at checkout in session mode, on every tenant switch in transaction mode)
-- it takes the next value `seq` of a per-process counter and runs, through bound
-- parameters (values never in the SQL text, so never in pg_stat_activity), one
-- statement in its own READ WRITE transaction:
--
--     SELECT pg_catalog.set_config('app.current_tenant', $tenant, false), ...,
--            rlsgate.enter($tenant, $seq, $seal)
--     seal = hex(HMAC-SHA256(secret, tenant || ':' || backend_pid || ':' || seq))
--
-- backend_pid is the server's pid from its BackendKeyData. seq starts from the wall
-- clock in microseconds and is max(previous + 1, now) afterwards: it grows within one
-- proxy process, and a restarted (or another) proxy with a sane clock starts above
-- every value already used.
--
-- What the database checks. rlsgate.enter (SECURITY DEFINER, owned by the installing
-- superuser) recomputes the HMAC with pg_backend_pid(), and records (tenant, seq) for
-- this pid in rlsgate.backend_context only if seq is greater than the seq recorded
-- there before; otherwise it raises an error (SQLSTATE 28000), and rlsgate treats a
-- failed context as fatal: it closes the session. rlsgate.tenant() returns the recorded
-- tenant of this backend, or NULL -- never the bare setting. Policies are written as
--
--     USING (tenant_id = (SELECT rlsgate.tenant()))
--
-- (`(SELECT ...)` is an InitPlan: one call per statement, not one per row).
--
-- Why a seal cannot be replayed. A seal is bound to one backend (pid) and one moment
-- (seq). Captured from a log, a trigger or a column default, it does not verify on any
-- other backend, and on its own backend it is below the floor: rlsgate enters a newer
-- one before any statement of the next client runs there, and the floor lives in a
-- table the app role cannot write, so neither DISCARD ALL/TEMP, RESET ALL nor a
-- reconnect lowers it. A client that can set any setting it likes (a guard bug) gains
-- nothing: rlsgate.tenant() ignores app.current_tenant and every `rlsgate.*` setting,
-- and a new valid seal needs the secret.
--
-- Why a table keyed by pid rather than a TEMP table (the first design). A temp table is
-- dropped by DISCARD TEMP, and with it the floor: after `DISCARD TEMP` a captured older
-- seal of the same backend would verify again. Creating one costs catalog writes and
-- a WAL flush at every session start and every server reset. backend_context is
-- UNLOGGED (no WAL; emptied by crash recovery, when every backend is new anyway) and
-- written with one HOT update per application.
--
-- Hardening: `SET search_path = pg_catalog, pg_temp` and every name qualified (functions
-- are never looked up in pg_temp, so a temp `pg_backend_pid()` or `sha256()` shadows
-- nothing, and no relation is read unqualified). The HMAC is computed with the
-- built-in sha256() from key pads stored by set_seal_secret -- no pgcrypto, so no
-- extension schema to shadow. Verification compares hashes of the two seals, so its
-- timing says nothing about the expected value. The app role has no privilege on
-- rlsgate.seal_key, rlsgate.backend_context or rlsgate.set_seal_secret().
--
-- Limits:
--   * Only the tenant is sealed. Other mapped claims (`[tenant.claims]`, e.g.
--     app.user_id) are bare settings that a guard bug could change: policies that must
--     hold against that should rely on rlsgate.tenant() only.
--   * A backend that reuses the pid of a dead rlsgate backend, and comes from the same
--     client address and port, would see that backend's tenant until rlsgate enters on
--     it. rlsgate always enters before a client's first statement, so only connections
--     that bypass rlsgate with the app role's own password could meet this.
--   * rlsgate must talk to PostgreSQL itself: behind another pooler (PgBouncer in
--     transaction mode) pg_backend_pid() is not the pid rlsgate was given, and every
--     context fails (closed, not open). A hot standby cannot record anything: the
--     sealed context needs a primary (use `[tenant] sealed = false` for replicas,
--     with policies on the bare setting there).
--   * Several proxies in front of one database rely on roughly synchronised clocks
--     only for the floor of a pid that a dead backend of another proxy used: a seq
--     below it is refused, so a proxy whose clock lags far behind fails closed.
--   * The secret is as good as its storage: superusers (and the owner of the rlsgate
--     schema) can read rlsgate.seal_key. The app role must be neither.
--
-- Install (as a superuser, into each application database), then store the secret:
--
--     psql -d app -f policies/sealed.sql
--     psql -d app -c "SELECT rlsgate.set_seal_secret('<same secret as [tenant] seal_secret_*>')"
--
-- Re-running it is safe, and upgrades the earlier setting-based (pgcrypto) version in
-- place: policies on rlsgate.tenant() keep working.

BEGIN;
SET LOCAL client_min_messages = warning;

CREATE SCHEMA IF NOT EXISTS rlsgate;
REVOKE ALL ON SCHEMA rlsgate FROM PUBLIC;
GRANT USAGE ON SCHEMA rlsgate TO PUBLIC;

-- The shared secret and its HMAC pads (key XOR 0x36.., key XOR 0x5c..). No grants:
-- only the owner (and so the SECURITY DEFINER functions below) can read it.
CREATE TABLE IF NOT EXISTS rlsgate.seal_key (
    id     boolean PRIMARY KEY DEFAULT true CHECK (id),
    secret bytea NOT NULL
);
ALTER TABLE rlsgate.seal_key ADD COLUMN IF NOT EXISTS ipad bytea,
                             ADD COLUMN IF NOT EXISTS opad bytea;
REVOKE ALL ON rlsgate.seal_key FROM PUBLIC;

-- HMAC-SHA256 inner and outer pads of `key` (RFC 2104: keys over 64 bytes are hashed).
CREATE OR REPLACE FUNCTION rlsgate.hmac_pads(key bytea, OUT ipad bytea, OUT opad bytea)
LANGUAGE plpgsql IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k bytea := key;
BEGIN
    IF pg_catalog.length(k) > 64 THEN
        k := pg_catalog.sha256(k);
    END IF;
    k := k || pg_catalog.decode(pg_catalog.repeat('00', 64 - pg_catalog.length(k)), 'hex');
    ipad := k;
    opad := k;
    FOR i IN 0..63 LOOP
        ipad := pg_catalog.set_byte(ipad, i, pg_catalog.get_byte(k, i) # 54);
        opad := pg_catalog.set_byte(opad, i, pg_catalog.get_byte(k, i) # 92);
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION rlsgate.hmac_pads(bytea) FROM PUBLIC;

-- Pads for a secret stored by an earlier version of this file.
UPDATE rlsgate.seal_key k
SET (ipad, opad) = (SELECT p.ipad, p.opad FROM rlsgate.hmac_pads(k.secret) p)
WHERE k.ipad IS NULL OR k.opad IS NULL;

CREATE OR REPLACE FUNCTION rlsgate.set_seal_secret(secret text) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO rlsgate.seal_key (id, secret, ipad, opad)
    SELECT true, pg_catalog.convert_to(secret, 'UTF8'), p.ipad, p.opad
    FROM rlsgate.hmac_pads(pg_catalog.convert_to(secret, 'UTF8')) p
    ON CONFLICT (id) DO UPDATE
        SET secret = EXCLUDED.secret, ipad = EXCLUDED.ipad, opad = EXCLUDED.opad;
$$;
REVOKE ALL ON FUNCTION rlsgate.set_seal_secret(text) FROM PUBLIC;

-- What each backend holds: the tenant of the last seal it accepted, and that seal's seq
-- (the floor the next one must exceed). UNLOGGED: no WAL, emptied after a crash (when
-- every backend is new anyway). No grants: only the functions below read or write it.
-- Keyed by pid, so it outlives DISCARD and the floor holds across backends that reuse
-- a pid; client_addr/client_port tell a later backend with the same pid from the one
-- that entered.
CREATE UNLOGGED TABLE IF NOT EXISTS rlsgate.backend_context (
    pid         integer PRIMARY KEY,
    client_addr inet,
    client_port integer,
    tenant      text NOT NULL,
    seq         bigint NOT NULL
);
REVOKE ALL ON rlsgate.backend_context FROM PUBLIC;
-- When the tenant entered (clock time): the scoped session views count a backend's
-- status as the tenant's only if it is newer than this.
ALTER TABLE rlsgate.backend_context ADD COLUMN IF NOT EXISTS entered_at timestamptz;

-- Verifies a seal made by rlsgate for this backend and records the tenant.
CREATE OR REPLACE FUNCTION rlsgate.enter(tenant text, seq bigint, seal text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ipad bytea;
    opad bytea;
    want bytea;
BEGIN
    SELECT s.ipad, s.opad INTO ipad, opad FROM rlsgate.seal_key s;
    IF ipad IS NULL OR opad IS NULL THEN
        RAISE EXCEPTION 'rlsgate: no seal secret in this database'
            USING ERRCODE = '28000',
                  HINT = 'run SELECT rlsgate.set_seal_secret(''...'') as a superuser';
    END IF;
    want := pg_catalog.sha256(opad || pg_catalog.sha256(ipad || pg_catalog.convert_to(
        tenant || ':' || pg_catalog.pg_backend_pid() || ':' || seq, 'UTF8')));
    -- Compares hashes: the time it takes says nothing about the expected seal.
    IF seal IS NULL OR pg_catalog.sha256(pg_catalog.convert_to(seal, 'UTF8'))
        IS DISTINCT FROM pg_catalog.sha256(pg_catalog.convert_to(pg_catalog.encode(want, 'hex'), 'UTF8'))
    THEN
        RAISE EXCEPTION 'rlsgate: tenant seal does not verify' USING ERRCODE = '28000';
    END IF;
    INSERT INTO rlsgate.backend_context AS c
        (pid, client_addr, client_port, tenant, seq, entered_at)
    VALUES (pg_catalog.pg_backend_pid(), pg_catalog.inet_client_addr(),
            pg_catalog.inet_client_port(), enter.tenant, enter.seq,
            pg_catalog.clock_timestamp())
    ON CONFLICT (pid) DO UPDATE
        SET client_addr = EXCLUDED.client_addr, client_port = EXCLUDED.client_port,
            tenant = EXCLUDED.tenant, seq = EXCLUDED.seq, entered_at = EXCLUDED.entered_at
        WHERE c.seq < EXCLUDED.seq;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'rlsgate: tenant seal is stale (replayed)' USING ERRCODE = '28000';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION rlsgate.enter(text, bigint, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION rlsgate.enter(text, bigint, text) TO PUBLIC;

-- The tenant recorded by the last verified rlsgate.enter on this backend, or NULL.
-- STABLE: same result within a statement. PL/pgSQL rather than SQL: it keeps its plan
-- for the session (a non-inlinable SQL function is planned on every call, ~2x slower).
CREATE OR REPLACE FUNCTION rlsgate.tenant() RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t text;
BEGIN
    SELECT c.tenant INTO t FROM rlsgate.backend_context c
    WHERE c.pid = pg_catalog.pg_backend_pid()
      AND c.client_addr IS NOT DISTINCT FROM pg_catalog.inet_client_addr()
      AND c.client_port IS NOT DISTINCT FROM pg_catalog.inet_client_port();
    RETURN t;
END
$$;
REVOKE ALL ON FUNCTION rlsgate.tenant() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION rlsgate.tenant() TO PUBLIC;


-- Tenant-scoped session views (issue 12). rlsgate rewrites a client's reads of
-- pg_stat_activity, pg_locks, pg_stat_ssl and pg_stat_gssapi to these (and of
-- pg_prepared_statements and pg_cursors to the two below them): rows of the
-- backends that hold the caller's sealed tenant only, as if the client had the database
-- to itself (session mode: the tenant's sessions; transaction mode: the servers holding
-- the tenant's context, the caller's own among them, so pg_backend_pid() is in it).
-- SECURITY DEFINER functions read the raw rows as this file's owner, so the raw views
-- and the functions behind them can stay revoked from the app role (policy apply).
--
-- A backend's status and its tenant change independently (PostgreSQL copies all
-- backends' status once per transaction; backend_context is read under a snapshot), so
-- the order is: a fresh status copy first, locks next, the tenant map last in its own
-- statement (READ COMMITTED: a fresh snapshot), and a status row counts only if all of
-- its activity is newer than the tenant's enter on that backend, and the backend is
-- older (a reused pid does not count). Other isolation levels would read an old tenant
-- map beside live status: refused there.
DROP VIEW IF EXISTS rlsgate.pg_stat_activity, rlsgate.pg_locks, rlsgate.pg_stat_ssl,
    rlsgate.pg_stat_gssapi, rlsgate.pg_prepared_statements, rlsgate.pg_cursors;
DROP FUNCTION IF EXISTS rlsgate.stat_activity(), rlsgate.locks(), rlsgate.stat_ssl(),
    rlsgate.stat_gssapi(), rlsgate.tenant_backends(), rlsgate.prepared_statements(),
    rlsgate.cursors(), rlsgate.statement_counts();

CREATE OR REPLACE FUNCTION rlsgate.fresh_status() RETURNS pg_catalog.pg_stat_activity[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'rlsgate: session views can only be read at READ COMMITTED'
            USING ERRCODE = '0A000';
    END IF;
    PERFORM pg_catalog.pg_stat_clear_snapshot();
    RETURN ARRAY(SELECT a FROM pg_catalog.pg_stat_activity a);
END
$$;

-- The pids among `status` whose rows are the caller's tenant's (read after `status`).
CREATE OR REPLACE FUNCTION rlsgate.tenant_pids(status pg_catalog.pg_stat_activity[])
RETURNS integer[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN ARRAY(
        SELECT (a).pid FROM pg_catalog.unnest(status) a
        JOIN rlsgate.backend_context c ON c.pid = (a).pid
        WHERE c.tenant = rlsgate.tenant()
          AND (a).backend_type = 'client backend'
          AND (a).client_addr IS NOT DISTINCT FROM c.client_addr
          AND ((a).client_port IS NOT DISTINCT FROM c.client_port
               OR ((a).client_port = -1 AND c.client_port IS NULL))
          AND c.entered_at IS NOT NULL
          AND (a).backend_start <= c.entered_at
          AND (a).state_change >= c.entered_at
          AND ((a).query_start IS NULL OR (a).query_start >= c.entered_at)
          AND ((a).xact_start IS NULL OR (a).xact_start >= c.entered_at));
END
$$;

CREATE OR REPLACE FUNCTION rlsgate.stat_activity() RETURNS SETOF pg_catalog.pg_stat_activity
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    status pg_catalog.pg_stat_activity[] := rlsgate.fresh_status();
    pids integer[] := rlsgate.tenant_pids(status);
BEGIN
    RETURN QUERY SELECT (a).* FROM pg_catalog.unnest(status) a WHERE (a).pid = ANY (pids);
END
$$;
CREATE OR REPLACE FUNCTION rlsgate.locks() RETURNS SETOF pg_catalog.pg_locks
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    status pg_catalog.pg_stat_activity[] := rlsgate.fresh_status();
    locks pg_catalog.pg_locks[] := ARRAY(SELECT l FROM pg_catalog.pg_locks l);
    pids integer[] := rlsgate.tenant_pids(status);
BEGIN
    RETURN QUERY SELECT (l).* FROM pg_catalog.unnest(locks) l WHERE (l).pid = ANY (pids);
END
$$;
CREATE OR REPLACE FUNCTION rlsgate.stat_ssl() RETURNS SETOF pg_catalog.pg_stat_ssl
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    status pg_catalog.pg_stat_activity[] := rlsgate.fresh_status();
    rows pg_catalog.pg_stat_ssl[] := ARRAY(SELECT s FROM pg_catalog.pg_stat_ssl s);
    pids integer[] := rlsgate.tenant_pids(status);
BEGIN
    RETURN QUERY SELECT (s).* FROM pg_catalog.unnest(rows) s WHERE (s).pid = ANY (pids);
END
$$;
CREATE OR REPLACE FUNCTION rlsgate.stat_gssapi() RETURNS SETOF pg_catalog.pg_stat_gssapi
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    status pg_catalog.pg_stat_activity[] := rlsgate.fresh_status();
    rows pg_catalog.pg_stat_gssapi[] := ARRAY(SELECT s FROM pg_catalog.pg_stat_gssapi s);
    pids integer[] := rlsgate.tenant_pids(status);
BEGIN
    RETURN QUERY SELECT (s).* FROM pg_catalog.unnest(rows) s WHERE (s).pid = ANY (pids);
END
$$;
-- The caller's own backend's prepared statements and cursors. Session mode: the
-- client's own. Transaction mode: rlsgate lists a client's statements itself (the
-- pooled server holds its tenant's other clients' too, under keyed names beginning
-- `rlsgate_`, which this view leaves out); cursors live in one transaction, the caller's.
CREATE OR REPLACE FUNCTION rlsgate.prepared_statements()
RETURNS SETOF pg_catalog.pg_prepared_statements
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM pg_catalog.pg_prepared_statements p
    WHERE pg_catalog.left(p.name, 8) OPERATOR(pg_catalog.<>) 'rlsgate_'
$$;
CREATE OR REPLACE FUNCTION rlsgate.cursors() RETURNS SETOF pg_catalog.pg_cursors
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM pg_catalog.pg_cursors
$$;
-- How many SQL-level and protocol-level prepared statements the caller's backend holds:
-- rlsgate reads it when it releases a pooled server after a transaction that ran code
-- it cannot see into (dynamic SQL can PREPARE or DEALLOCATE ALL unseen).
CREATE OR REPLACE FUNCTION rlsgate.statement_counts(OUT from_sql bigint, OUT protocol bigint)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT count(*) FILTER (WHERE p.from_sql), count(*) FILTER (WHERE NOT p.from_sql)
    FROM pg_catalog.pg_prepared_statements p
$$;
CREATE VIEW rlsgate.pg_prepared_statements AS SELECT * FROM rlsgate.prepared_statements();
CREATE VIEW rlsgate.pg_cursors AS SELECT * FROM rlsgate.cursors();
CREATE VIEW rlsgate.pg_stat_activity AS SELECT * FROM rlsgate.stat_activity();
CREATE VIEW rlsgate.pg_locks AS SELECT * FROM rlsgate.locks();
CREATE VIEW rlsgate.pg_stat_ssl AS SELECT * FROM rlsgate.stat_ssl();
CREATE VIEW rlsgate.pg_stat_gssapi AS SELECT * FROM rlsgate.stat_gssapi();
REVOKE ALL ON FUNCTION rlsgate.fresh_status(),
    rlsgate.tenant_pids(pg_catalog.pg_stat_activity[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION rlsgate.stat_activity(), rlsgate.locks(), rlsgate.stat_ssl(),
    rlsgate.stat_gssapi(), rlsgate.prepared_statements(), rlsgate.cursors(),
    rlsgate.statement_counts() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION rlsgate.stat_activity(), rlsgate.locks(), rlsgate.stat_ssl(),
    rlsgate.stat_gssapi(), rlsgate.prepared_statements(), rlsgate.cursors(),
    rlsgate.statement_counts() TO PUBLIC;
REVOKE ALL ON rlsgate.pg_stat_activity, rlsgate.pg_locks, rlsgate.pg_stat_ssl,
    rlsgate.pg_stat_gssapi, rlsgate.pg_prepared_statements, rlsgate.pg_cursors FROM PUBLIC;
GRANT SELECT ON rlsgate.pg_stat_activity, rlsgate.pg_locks, rlsgate.pg_stat_ssl,
    rlsgate.pg_stat_gssapi, rlsgate.pg_prepared_statements, rlsgate.pg_cursors TO PUBLIC;

COMMIT;

-- Example (policies/demo.sql uses exactly this):
--
--   CREATE POLICY tenant_isolation ON customers
--       USING (tenant_id = (SELECT rlsgate.tenant()))
--       WITH CHECK (tenant_id = (SELECT rlsgate.tenant()));
