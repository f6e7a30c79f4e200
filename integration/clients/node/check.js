// node-postgres through rlsgate: pool, parameterized queries, named prepared statements,
// pg-cursor, COPY via pg-copy-streams, errors, notifications — each with assertions.
//
// Run: NODE_PATH=<dir with node_modules> node check.js
// Env: PGHOST PGPORT PGUSER PGPASSWORD (the JWT through rlsgate) PGDATABASE, CHECK_MODE.
// Prints "PASS name" / "FAIL name: why" per check, then "ALL CHECKS DONE"; exit 1 on failure.
'use strict';

const assert = require('assert/strict');
const { pipeline } = require('stream/promises');
const { Readable, Writable } = require('stream');
const pg = require('pg');
const Cursor = require('pg-cursor');
const copyStreams = require('pg-copy-streams');

const base = {
  host: process.env.PGHOST,
  port: Number(process.env.PGPORT),
  user: process.env.PGUSER,
  password: process.env.PGPASSWORD,
  database: process.env.PGDATABASE,
  ssl: false,
  connectionTimeoutMillis: 10000,
};

let failures = 0;

async function check(name, fn) {
  try {
    await fn();
    console.log(`PASS ${name}`);
  } catch (e) {
    failures++;
    console.log(`FAIL ${name}: ${String(e && e.message).replace(/\s+/g, ' ').slice(0, 250)}`);
    console.log(e && e.stack);
  }
}

async function withClient(fn, extra = {}) {
  const c = new pg.Client({ ...base, ...extra });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

async function expectError(promise, code) {
  try {
    await promise;
  } catch (e) {
    assert.equal(e.code, code, `expected SQLSTATE ${code}, got ${e.code} (${e.message})`);
    return e;
  }
  throw new Error(`expected an error with SQLSTATE ${code}`);
}

async function main() {
  console.log(`# node-postgres ${require('pg/package.json').version} via ${process.env.CHECK_MODE}`);

  await check('setup', () => withClient(async (c) => {
    await c.query('DROP TABLE IF EXISTS nt, ncopy');
    await c.query('CREATE TABLE nt (id int PRIMARY KEY, v text, j jsonb, ts timestamptz)');
    await c.query("INSERT INTO nt SELECT g, 'row ' || g, jsonb_build_object('g', g), '2024-01-01T00:00:00Z'::timestamptz + g * interval '1 hour' FROM generate_series(1, 1000) g");
    await c.query('CREATE TABLE ncopy (id int, v text)');
  }));

  await check('simple_and_multi_statement', () => withClient(async (c) => {
    const r = await c.query('SELECT 1 AS a; SELECT 2 AS b, 3 AS c');
    assert.equal(r.length, 2);
    assert.deepEqual(r[0].rows, [{ a: 1 }]);
    assert.deepEqual(r[1].rows, [{ b: 2, c: 3 }]);
    const empty = await c.query('');
    assert.equal(empty.rows.length, 0);
  }));

  await check('parameterized_queries', () => withClient(async (c) => {
    const r = await c.query('SELECT $1::int + $2::int AS s, $3::text AS t, $4::jsonb AS j, $5::int[] AS a, $6::text IS NULL AS n, $7::bigint AS big',
      [40, 2, 'héllo', { tenant: 'x' }, [1, 2, 3], null, '9007199254740993']);
    assert.deepEqual(r.rows[0], { s: 42, t: 'héllo', j: { tenant: 'x' }, a: [1, 2, 3], n: true, big: '9007199254740993' });
    const rows = await c.query('SELECT id, v, j, ts FROM nt WHERE id = ANY($1) ORDER BY id', [[3, 5, 999]]);
    assert.deepEqual(rows.rows.map((x) => x.id), [3, 5, 999]);
    assert.equal(rows.rows[1].j.g, 5);
    assert.equal(rows.rows[0].ts.toISOString(), '2024-01-01T03:00:00.000Z');
    const arr = await c.query({ text: 'SELECT id, v FROM nt WHERE id <= $1 ORDER BY id', values: [2], rowMode: 'array' });
    assert.deepEqual(arr.rows, [[1, 'row 1'], [2, 'row 2']]);
    assert.deepEqual(arr.fields.map((f) => f.name), ['id', 'v']);
  }));

  await check('binary_results', () => withClient(async (c) => {
    const r = await c.query({ text: 'SELECT $1::int4 AS i, $2::text AS t', values: [7, 'x'], binary: true });
    assert.equal(r.rows.length, 1);
    assert.equal(r.rows[0].t, 'x');
  }));

  await check('named_prepared_statements', () => withClient(async (c) => {
    for (let i = 1; i <= 20; i++) {
      const r = await c.query({ name: 'by-id', text: 'SELECT v FROM nt WHERE id = $1', values: [i] });
      assert.equal(r.rows[0].v, `row ${i}`);
      const s = await c.query({ name: 'sum-upto', text: 'SELECT sum(id)::int AS s FROM nt WHERE id <= $1', values: [i] });
      assert.equal(s.rows[0].s, (i * (i + 1)) / 2);
    }
    // An error inside a named statement's execution leaves the statement usable.
    await expectError(c.query({ name: 'div', text: 'SELECT 10 / $1::int AS q', values: [0] }), '22012');
    const q = await c.query({ name: 'div', text: 'SELECT 10 / $1::int AS q', values: [5] });
    assert.equal(q.rows[0].q, 2);
  }));

  await check('named_statements_in_pg_prepared_statements', () => withClient(async (c) => {
    // The statements exist on the server under the client's names (session semantics).
    await c.query({ name: 'by-id', text: 'SELECT v FROM nt WHERE id = $1', values: [1] });
    await c.query({ name: 'sum-upto', text: 'SELECT sum(id)::int AS s FROM nt WHERE id <= $1', values: [1] });
    const ps = await c.query("SELECT name FROM pg_prepared_statements WHERE name IN ('by-id', 'sum-upto') ORDER BY name");
    assert.deepEqual(ps.rows.map((x) => x.name), ['by-id', 'sum-upto']);
  }));

  await check('named_prepared_statement_parse_error', () => withClient(async (c) => {
    await expectError(c.query({ name: 'bad', text: 'SELEKT 1', values: [] }), '42601');
    const r = await c.query('SELECT 1 AS ok');
    assert.equal(r.rows[0].ok, 1);
  }));

  await check('transactions', () => withClient(async (c) => {
    await c.query('BEGIN');
    await c.query('INSERT INTO nt (id, v) VALUES ($1, $2)', [5001, 'in tx']);
    await expectError(c.query('SELECT 1/0'), '22012');
    await expectError(c.query('SELECT 1'), '25P02');
    await c.query('ROLLBACK');
    assert.equal((await c.query('SELECT count(*)::int AS n FROM nt WHERE id = 5001')).rows[0].n, 0);
    await c.query('BEGIN');
    await c.query('INSERT INTO nt (id, v) VALUES ($1, $2)', [5002, 'kept']);
    await c.query('SAVEPOINT s');
    await expectError(c.query('INSERT INTO nt (id, v) VALUES (1, $1)', ['dup']), '23505');
    await c.query('ROLLBACK TO SAVEPOINT s');
    await c.query('COMMIT');
    assert.equal((await c.query('SELECT count(*)::int AS n FROM nt WHERE id = 5002')).rows[0].n, 1);
  }));

  await check('errors_have_fields', () => withClient(async (c) => {
    const e = await expectError(c.query('SELECT * FROM no_such_table'), '42P01');
    assert.equal(e.severity, 'ERROR');
    assert.equal(e.position, '15');
    const d = await expectError(c.query('INSERT INTO nt (id, v) VALUES (1, $1)', ['dup']), '23505');
    assert.equal(d.constraint, 'nt_pkey');
    assert.equal(d.table, 'nt');
    assert.match(d.detail, /Key \(id\)=\(1\) already exists/);
    const s = await expectError(c.query('SELEC 1'), '42601');
    assert.equal(s.position, '1');
    assert.equal((await c.query('SELECT 2 AS two')).rows[0].two, 2);
  }));

  await check('notices', () => withClient(async (c) => {
    const notices = [];
    c.on('notice', (n) => notices.push(n.message));
    await c.query("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$");
    assert.deepEqual(notices, ['hello 42']);
  }));

  await check('statement_timeout_startup_option', () => withClient(async (c) => {
    const r = await c.query('SHOW statement_timeout');
    assert.equal(r.rows[0].statement_timeout, '300ms');
    await expectError(c.query('SELECT pg_sleep(3)'), '57014');
    assert.equal((await c.query('SELECT 1 AS ok')).rows[0].ok, 1);
  }, { statement_timeout: 300 }));

  await check('application_name', () => withClient(async (c) => {
    const r = await c.query("SELECT current_setting('application_name') AS a");
    assert.equal(r.rows[0].a, 'node-check');
  }, { application_name: 'node-check' }));

  await check('pool_concurrent', async () => {
    const pool = new pg.Pool({ ...base, max: 5, idleTimeoutMillis: 1000 });
    try {
      const work = [];
      for (let i = 0; i < 40; i++) {
        work.push(pool.query({ name: 'pool-q', text: 'SELECT $1::int * 2 AS d, pg_backend_pid() AS pid', values: [i] }));
      }
      const res = await Promise.all(work);
      res.forEach((r, i) => assert.equal(r.rows[0].d, i * 2));
      const pids = new Set(res.map((r) => r.rows[0].pid));
      assert.ok(pids.size >= 1 && pids.size <= 5, `pids ${pids.size}`);
      // A checked-out client keeps its session across statements.
      const client = await pool.connect();
      try {
        await client.query('BEGIN');
        await client.query("SET LOCAL application_name = 'pooled'");
        assert.equal((await client.query("SELECT current_setting('application_name') AS a")).rows[0].a, 'pooled');
        await client.query('COMMIT');
      } finally {
        client.release();
      }
      assert.equal(pool.totalCount <= 5, true);
    } finally {
      await pool.end();
    }
  });

  await check('pool_error_recovery', async () => {
    const pool = new pg.Pool({ ...base, max: 3 });
    try {
      const results = await Promise.allSettled(Array.from({ length: 12 }, (_, i) =>
        pool.query(i % 3 === 0 ? 'SELECT 1/0' : 'SELECT $1::int AS i', i % 3 === 0 ? [] : [i])));
      results.forEach((r, i) => {
        if (i % 3 === 0) {
          assert.equal(r.status, 'rejected');
          assert.equal(r.reason.code, '22012');
        } else {
          assert.equal(r.status, 'fulfilled');
          assert.equal(r.value.rows[0].i, i);
        }
      });
    } finally {
      await pool.end();
    }
  });

  await check('cursor_batches', () => withClient(async (c) => {
    await c.query('BEGIN');
    const cursor = c.query(new Cursor('SELECT id FROM nt WHERE id <= $1 ORDER BY id', [1000]));
    let total = 0;
    let sum = 0;
    let batches = 0;
    for (;;) {
      const rows = await cursor.read(37);
      if (rows.length === 0) break;
      batches++;
      total += rows.length;
      rows.forEach((r) => { sum += r.id; });
    }
    await cursor.close();
    await c.query('COMMIT');
    assert.equal(total, 1000);
    assert.equal(sum, 500500);
    assert.equal(batches, Math.ceil(1000 / 37));
  }));

  await check('cursor_close_early_then_query', () => withClient(async (c) => {
    const cursor = c.query(new Cursor('SELECT id FROM nt ORDER BY id'));
    const first = await cursor.read(5);
    assert.deepEqual(first.map((r) => r.id), [1, 2, 3, 4, 5]);
    await cursor.close();
    const r = await c.query('SELECT count(*)::int AS n FROM nt WHERE id <= 1000');
    assert.equal(r.rows[0].n, 1000);
  }));

  await check('cursor_error', () => withClient(async (c) => {
    const cursor = c.query(new Cursor('SELECT 1 / (g - 10) AS q FROM generate_series(1, 100) g'));
    const first = await cursor.read(5);
    assert.equal(first.length, 5);
    await expectError(cursor.read(10), '22012');
    assert.equal((await c.query('SELECT 1 AS ok')).rows[0].ok, 1);
  }));

  await check('copy_from_stdin', () => withClient(async (c) => {
    await c.query('TRUNCATE ncopy');
    const lines = [];
    for (let i = 0; i < 20000; i++) lines.push(`${i}\tcopy ${i}\n`);
    const stream = c.query(copyStreams.from('COPY ncopy FROM STDIN'));
    await pipeline(Readable.from(lines), stream);
    assert.equal(stream.rowCount, 20000);
    const r = await c.query('SELECT count(*)::int AS n, sum(id)::bigint AS s FROM ncopy');
    assert.equal(r.rows[0].n, 20000);
    assert.equal(r.rows[0].s, String((19999 * 20000) / 2));
  }));

  await check('copy_to_stdout', () => withClient(async (c) => {
    const chunks = [];
    const stream = c.query(copyStreams.to('COPY (SELECT id, v FROM nt WHERE id <= 3 ORDER BY id) TO STDOUT'));
    await pipeline(stream, new Writable({ write(chunk, _e, cb) { chunks.push(chunk); cb(); } }));
    assert.equal(Buffer.concat(chunks).toString(), '1\trow 1\n2\trow 2\n3\trow 3\n');
  }));

  await check('copy_from_bad_data', () => withClient(async (c) => {
    const stream = c.query(copyStreams.from('COPY ncopy FROM STDIN'));
    let err = null;
    try {
      await pipeline(Readable.from(['1\tok\n', 'not-a-number\tbad\n']), stream);
    } catch (e) {
      err = e;
    }
    assert.ok(err, 'COPY with bad data must fail');
    assert.equal(err.code, '22P02');
    assert.equal((await c.query('SELECT 1 AS ok')).rows[0].ok, 1);
  }));

  await check('listen_notify', async () => {
    const listener = new pg.Client(base);
    await listener.connect();
    try {
      const got = new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('no notification within 5s')), 5000);
        listener.on('notification', (m) => { clearTimeout(t); resolve(m); });
      });
      await listener.query('LISTEN node_chan');
      await withClient((c) => c.query("NOTIFY node_chan, 'payload-1'"));
      const m = await got;
      assert.equal(m.channel, 'node_chan');
      assert.equal(m.payload, 'payload-1');
    } finally {
      await listener.end();
    }
  });

  console.log(`ALL CHECKS DONE (${failures} failed)`);
  process.exit(failures === 0 ? 0 : 1);
}

main().catch((e) => {
  console.log(`FAIL main: ${e && e.stack}`);
  process.exit(1);
});
