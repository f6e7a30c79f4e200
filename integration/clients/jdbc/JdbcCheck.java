// pgJDBC through rlsgate: the driver features apps rely on, each with assertions.
//
// Run: java -cp /usr/share/java/postgresql.jar JdbcCheck.java
// Env: JDBC_URL (jdbc:postgresql://host:port/db?sslmode=disable), JDBC_USER, JDBC_PASSWORD
//      (the JWT through rlsgate), CHECK_MODE (label only).
// Prints one line per check: "PASS name", "FAIL name: why" or "SKIP name: why", then
// "ALL CHECKS DONE"; exits 1 if a check failed.

import java.math.BigDecimal;
import java.sql.*;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.time.temporal.ChronoUnit;
import java.util.*;
import java.util.concurrent.*;
import java.io.*;

import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyManager;
import org.postgresql.util.PGobject;
import org.postgresql.util.PSQLException;

public class JdbcCheck {
    static final String URL = env("JDBC_URL");
    static final String USER = env("JDBC_USER");
    static final String PASSWORD = env("JDBC_PASSWORD");
    static int failures = 0;

    interface Check { void run() throws Exception; }

    static String env(String k) {
        String v = System.getenv(k);
        if (v == null) throw new IllegalStateException(k + " not set");
        return v;
    }

    static Connection connect(String... extra) throws SQLException {
        Properties p = new Properties();
        p.setProperty("user", USER);
        p.setProperty("password", PASSWORD);
        p.setProperty("connectTimeout", "10");
        p.setProperty("socketTimeout", "60");
        for (int i = 0; i + 1 < extra.length; i += 2) p.setProperty(extra[i], extra[i + 1]);
        return DriverManager.getConnection(URL, p);
    }

    static void check(String name, Check c) {
        try {
            c.run();
            System.out.println("PASS " + name);
        } catch (SkipException s) {
            System.out.println("SKIP " + name + ": " + s.getMessage());
        } catch (Throwable t) {
            failures++;
            String msg = String.valueOf(t.getMessage()).replace('\n', ' ');
            System.out.println("FAIL " + name + ": " + t.getClass().getSimpleName() + ": " + msg);
            t.printStackTrace(System.out);
        }
    }

    static class SkipException extends Exception { SkipException(String m) { super(m); } }

    static void eq(Object want, Object got, String what) {
        if (!Objects.equals(want, got)) throw new AssertionError(what + ": want <" + want + "> got <" + got + ">");
    }

    static void yes(boolean cond, String what) {
        if (!cond) throw new AssertionError(what);
    }

    static long count(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(sql)) {
            rs.next();
            return rs.getLong(1);
        }
    }

    public static void main(String[] args) throws Exception {
        Class.forName("org.postgresql.Driver");
        System.out.println("# pgJDBC " + org.postgresql.util.DriverInfo.DRIVER_VERSION + " via " + System.getenv("CHECK_MODE"));

        check("connect_and_select", () -> {
            try (Connection c = connect(); Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT 1, 'x'::text")) {
                yes(rs.next(), "one row");
                eq(1, rs.getInt(1), "int");
                eq("x", rs.getString(2), "text");
                yes(!rs.next(), "only one row");
            }
        });

        check("schema_setup", () -> {
            try (Connection c = connect(); Statement s = c.createStatement()) {
                s.execute("DROP TABLE IF EXISTS jt, jbatch, jkeys, jtypes, jcopy");
                s.execute("CREATE TABLE jt (id int PRIMARY KEY, v text)");
                s.execute("CREATE TABLE jbatch (id int, v text)");
                s.execute("CREATE TABLE jkeys (id serial PRIMARY KEY, v text)");
                s.execute("CREATE TABLE jtypes (u uuid, j jsonb, ts timestamptz, n numeric, b bytea, a int[])");
                s.execute("CREATE TABLE jcopy (id int, v text)");
                s.execute("INSERT INTO jt SELECT g, 'row ' || g FROM generate_series(1, 1000) g");
            }
        });

        // prepareThreshold=1: the second execution uses a named server-side statement.
        for (String threshold : new String[]{"1", "5", "-1"}) {
            check("server_prepared_threshold_" + threshold, () -> {
                try (Connection c = connect("prepareThreshold", threshold);
                     PreparedStatement ps = c.prepareStatement("SELECT v, ?::int * 2 FROM jt WHERE id = ?")) {
                    for (int i = 1; i <= 12; i++) {
                        ps.setInt(1, i);
                        ps.setInt(2, i);
                        try (ResultSet rs = ps.executeQuery()) {
                            yes(rs.next(), "row " + i);
                            eq("row " + i, rs.getString(1), "v");
                            eq(i * 2, rs.getInt(2), "computed");
                        }
                    }
                    PGStatement pgs = ps.unwrap(PGStatement.class);
                    yes(pgs.isUseServerPrepare(), "statement should be server-prepared by now");
                }
            });
        }

        check("server_prepared_many_statements", () -> {
            // More distinct statements than the driver's cache: forces Close + re-Parse.
            try (Connection c = connect("prepareThreshold", "1", "preparedStatementCacheQueries", "4")) {
                for (int round = 0; round < 3; round++) {
                    for (int k = 0; k < 10; k++) {
                        try (PreparedStatement ps = c.prepareStatement("SELECT ?::int + " + k)) {
                            ps.setInt(1, round);
                            try (ResultSet rs = ps.executeQuery()) {
                                rs.next();
                                eq(round + k, rs.getInt(1), "sum");
                            }
                        }
                    }
                }
            }
        });

        check("prepared_statement_after_schema_change", () -> {
            try (Connection c = connect("prepareThreshold", "1"); Statement s = c.createStatement()) {
                s.execute("DROP TABLE IF EXISTS jchg; CREATE TABLE jchg (a int); INSERT INTO jchg VALUES (1)");
                try (PreparedStatement ps = c.prepareStatement("SELECT * FROM jchg")) {
                    for (int i = 0; i < 3; i++) try (ResultSet rs = ps.executeQuery()) { rs.next(); }
                    s.execute("ALTER TABLE jchg ADD COLUMN b int DEFAULT 7");
                    // pgJDBC retries "cached plan must not change result type" transparently.
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        eq(7, rs.getInt(2), "new column");
                    }
                }
            }
        });

        for (String rewrite : new String[]{"false", "true"}) {
            check("batch_insert_rewrite_" + rewrite, () -> {
                try (Connection c = connect("reWriteBatchedInserts", rewrite)) {
                    c.setAutoCommit(false);
                    try (Statement s = c.createStatement()) { s.execute("TRUNCATE jbatch"); }
                    try (PreparedStatement ps = c.prepareStatement("INSERT INTO jbatch (id, v) VALUES (?, ?)")) {
                        for (int i = 0; i < 250; i++) {
                            ps.setInt(1, i);
                            ps.setString(2, "b" + i);
                            ps.addBatch();
                        }
                        int[] res = ps.executeBatch();
                        yes(res.length == 250, "250 results, got " + res.length);
                        for (int r : res) yes(r == 1 || r == Statement.SUCCESS_NO_INFO, "update count " + r);
                    }
                    c.commit();
                    eq(250L, count(c, "SELECT count(*) FROM jbatch"), "rows");
                    eq(31125L, count(c, "SELECT sum(id) FROM jbatch"), "sum");
                }
            });
        }

        check("batch_with_error", () -> {
            try (Connection c = connect()) {
                c.setAutoCommit(false);
                try (PreparedStatement ps = c.prepareStatement("INSERT INTO jt (id, v) VALUES (?, 'dup')")) {
                    ps.setInt(1, 5001); ps.addBatch();
                    ps.setInt(1, 1); ps.addBatch();     // duplicate key
                    ps.setInt(1, 5002); ps.addBatch();
                    try {
                        ps.executeBatch();
                        throw new AssertionError("expected BatchUpdateException");
                    } catch (BatchUpdateException e) {
                        eq("23505", ((SQLException) e.getNextException() != null ? e.getNextException() : e).getSQLState(), "sqlstate");
                    }
                }
                c.rollback();
                eq(0L, count(c, "SELECT count(*) FROM jt WHERE id > 5000"), "rolled back");
            }
        });

        check("statement_batch_mixed", () -> {
            try (Connection c = connect(); Statement s = c.createStatement()) {
                s.addBatch("CREATE TEMP TABLE jtmp (x int)");
                s.addBatch("INSERT INTO jtmp VALUES (1), (2)");
                s.addBatch("UPDATE jtmp SET x = x + 10");
                int[] r = s.executeBatch();
                eq(3, r.length, "results");
                eq(2, r[1], "inserted");
                eq(2, r[2], "updated");
                eq(23L, count(c, "SELECT sum(x) FROM jtmp"), "sum");
            }
        });

        for (int fetch : new int[]{1, 7, 100}) {
            check("fetch_size_cursor_" + fetch, () -> {
                try (Connection c = connect()) {
                    c.setAutoCommit(false); // portal-based fetching needs a transaction
                    try (PreparedStatement ps = c.prepareStatement("SELECT id, v FROM jt ORDER BY id")) {
                        ps.setFetchSize(fetch);
                        long n = 0, sum = 0;
                        try (ResultSet rs = ps.executeQuery()) {
                            while (rs.next()) { n++; sum += rs.getInt(1); }
                        }
                        eq(1000L, n, "rows");
                        eq(500500L, sum, "sum");
                    }
                    c.commit();
                }
            });
        }

        check("two_interleaved_cursors", () -> {
            try (Connection c = connect()) {
                c.setAutoCommit(false);
                try (PreparedStatement a = c.prepareStatement("SELECT id FROM jt WHERE id <= 300 ORDER BY id");
                     PreparedStatement b = c.prepareStatement("SELECT id FROM jt WHERE id <= 300 ORDER BY id DESC")) {
                    a.setFetchSize(10);
                    b.setFetchSize(13);
                    try (ResultSet ra = a.executeQuery(); ResultSet rb = b.executeQuery()) {
                        int n = 0;
                        while (ra.next()) {
                            yes(rb.next(), "b has rows");
                            eq(ra.getInt(1), 301 - rb.getInt(1), "mirror");
                            n++;
                        }
                        eq(300, n, "rows");
                    }
                }
                c.commit();
            }
        });

        check("generated_keys", () -> {
            try (Connection c = connect();
                 PreparedStatement ps = c.prepareStatement("INSERT INTO jkeys (v) VALUES (?)", Statement.RETURN_GENERATED_KEYS)) {
                List<Integer> ids = new ArrayList<>();
                for (int i = 0; i < 3; i++) {
                    ps.setString(1, "k" + i);
                    eq(1, ps.executeUpdate(), "inserted");
                    try (ResultSet rs = ps.getGeneratedKeys()) {
                        yes(rs.next(), "a key");
                        ids.add(rs.getInt("id"));
                    }
                }
                eq(Arrays.asList(1, 2, 3), ids, "keys");
            }
        });

        check("generated_keys_batch", () -> {
            try (Connection c = connect();
                 PreparedStatement ps = c.prepareStatement("INSERT INTO jkeys (v) VALUES (?)", new String[]{"id"})) {
                for (int i = 0; i < 4; i++) { ps.setString(1, "bk" + i); ps.addBatch(); }
                ps.executeBatch();
                int n = 0;
                try (ResultSet rs = ps.getGeneratedKeys()) { while (rs.next()) { n++; yes(rs.getInt(1) > 3, "key"); } }
                eq(4, n, "keys");
            }
        });

        for (String threshold : new String[]{"5", "-1"}) {
            check("setobject_uuid_jsonb_timestamptz_threshold_" + threshold, () -> {
                try (Connection c = connect("prepareThreshold", threshold)) {
                    try (Statement s = c.createStatement()) { s.execute("TRUNCATE jtypes"); }
                    UUID u = UUID.fromString("0f8fad5b-d9cb-469f-a165-70867728950e");
                    PGobject j = new PGobject();
                    j.setType("jsonb");
                    j.setValue("{\"tenant\": \"x\", \"n\": [1, 2, 3]}");
                    OffsetDateTime ts = OffsetDateTime.of(2024, 2, 29, 23, 59, 58, 123456000, ZoneOffset.ofHours(5));
                    try (PreparedStatement ps = c.prepareStatement("INSERT INTO jtypes VALUES (?, ?, ?, ?, ?, ?)")) {
                        for (int i = 0; i < 6; i++) {
                            ps.setObject(1, u);
                            ps.setObject(2, j);
                            ps.setObject(3, ts);
                            ps.setBigDecimal(4, new BigDecimal("12345678901234567890.000000001"));
                            ps.setBytes(5, new byte[]{0, 1, 2, (byte) 255});
                            ps.setArray(6, c.createArrayOf("int4", new Integer[]{1, null, 3}));
                            ps.executeUpdate();
                        }
                    }
                    try (PreparedStatement ps = c.prepareStatement("SELECT u, j, ts, n, b, a, j->>'tenant' FROM jtypes WHERE u = ?")) {
                        for (int i = 0; i < 6; i++) {
                            ps.setObject(1, u);
                            int rows = 0;
                            try (ResultSet rs = ps.executeQuery()) {
                                while (rs.next()) {
                                    rows++;
                                    eq(u, rs.getObject(1, UUID.class), "uuid");
                                    eq("{\"n\": [1, 2, 3], \"tenant\": \"x\"}", rs.getString(2), "jsonb");
                                    eq(ts.toInstant(), rs.getObject(3, OffsetDateTime.class).toInstant(), "timestamptz");
                                    eq(new BigDecimal("12345678901234567890.000000001"), rs.getBigDecimal(4), "numeric");
                                    yes(Arrays.equals(new byte[]{0, 1, 2, (byte) 255}, rs.getBytes(5)), "bytea");
                                    eq(Arrays.asList(1, null, 3), Arrays.asList((Integer[]) rs.getArray(6).getArray()), "int[]");
                                    eq("x", rs.getString(7), "jsonb ->>");
                                }
                            }
                            eq(6, rows, "rows");
                        }
                    }
                }
            });
        }

        check("transaction_commit_rollback_savepoint", () -> {
            try (Connection c = connect("prepareThreshold", "1")) {
                c.setAutoCommit(false);
                try (PreparedStatement ins = c.prepareStatement("INSERT INTO jt VALUES (?, ?)")) {
                    ins.setInt(1, 2001); ins.setString(2, "committed"); ins.executeUpdate();
                    c.commit();
                    ins.setInt(1, 2002); ins.setString(2, "rolled back"); ins.executeUpdate();
                    c.rollback();
                    ins.setInt(1, 2003); ins.setString(2, "kept"); ins.executeUpdate();
                    Savepoint sp = c.setSavepoint("sp1");
                    ins.setInt(1, 2004); ins.setString(2, "to savepoint"); ins.executeUpdate();
                    c.rollback(sp);
                    c.commit();
                }
                eq(2L, count(c, "SELECT count(*) FROM jt WHERE id BETWEEN 2001 AND 2004"), "rows kept");
                eq(1L, count(c, "SELECT count(*) FROM jt WHERE id = 2003"), "savepoint kept the earlier row");
                c.commit();
            }
        });

        check("transaction_error_then_rollback", () -> {
            try (Connection c = connect()) {
                c.setAutoCommit(false);
                try (Statement s = c.createStatement()) {
                    s.execute("INSERT INTO jt VALUES (3001, 'x')");
                    try {
                        s.execute("SELECT 1/0");
                        throw new AssertionError("expected division by zero");
                    } catch (PSQLException e) {
                        eq("22012", e.getSQLState(), "sqlstate");
                    }
                    try {
                        s.execute("SELECT 1");
                        throw new AssertionError("expected 25P02");
                    } catch (PSQLException e) {
                        eq("25P02", e.getSQLState(), "aborted transaction");
                    }
                    c.rollback();
                    eq(0L, count(c, "SELECT count(*) FROM jt WHERE id = 3001"), "rolled back");
                }
                c.commit();
            }
        });

        check("autosave_always", () -> {
            // pgJDBC's autosave wraps each statement in SAVEPOINT / RELEASE.
            try (Connection c = connect("autosave", "always")) {
                c.setAutoCommit(false);
                try (Statement s = c.createStatement()) {
                    s.execute("INSERT INTO jt VALUES (3101, 'x')");
                    try { s.execute("SELECT 1/0"); } catch (PSQLException e) { eq("22012", e.getSQLState(), "sqlstate"); }
                    s.execute("INSERT INTO jt VALUES (3102, 'y')");
                }
                c.commit();
                eq(2L, count(c, "SELECT count(*) FROM jt WHERE id IN (3101, 3102)"), "both rows");
                c.commit();
            }
        });

        check("isolation_and_read_only", () -> {
            try (Connection c = connect()) {
                c.setAutoCommit(false);
                c.setTransactionIsolation(Connection.TRANSACTION_SERIALIZABLE);
                c.setReadOnly(true);
                try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SHOW transaction_isolation")) {
                    rs.next();
                    eq("serializable", rs.getString(1), "isolation");
                }
                try (Statement s = c.createStatement()) {
                    s.execute("INSERT INTO jt VALUES (4001, 'ro')");
                    throw new AssertionError("expected read-only error");
                } catch (PSQLException e) {
                    eq("25006", e.getSQLState(), "sqlstate");
                }
                c.rollback();
            }
        });

        check("error_then_connection_usable", () -> {
            try (Connection c = connect("prepareThreshold", "1"); Statement s = c.createStatement()) {
                for (int i = 0; i < 3; i++) {
                    try {
                        s.execute("INSERT INTO jt VALUES (1, 'dup')");
                        throw new AssertionError("expected unique violation");
                    } catch (PSQLException e) {
                        eq("23505", e.getSQLState(), "sqlstate");
                        eq("jt_pkey", e.getServerErrorMessage().getConstraint(), "constraint");
                    }
                    eq(1000L, count(c, "SELECT count(*) FROM jt WHERE id <= 1000"), "still usable");
                }
            }
        });

        check("multiple_result_sets", () -> {
            try (Connection c = connect(); Statement s = c.createStatement()) {
                yes(s.execute("SELECT 1; SELECT 2, 3; UPDATE jt SET v = v WHERE id = 1"), "first is a result set");
                try (ResultSet rs = s.getResultSet()) { rs.next(); eq(1, rs.getInt(1), "first"); }
                yes(s.getMoreResults(), "second is a result set");
                try (ResultSet rs = s.getResultSet()) { rs.next(); eq(3, rs.getInt(2), "second"); }
                yes(!s.getMoreResults(), "third is an update count");
                eq(1, s.getUpdateCount(), "update count");
            }
        });

        check("copy_in_and_out", () -> {
            try (Connection c = connect()) {
                CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
                StringBuilder sb = new StringBuilder();
                for (int i = 0; i < 5000; i++) sb.append(i).append('\t').append("copy ").append(i).append('\n');
                long n = cm.copyIn("COPY jcopy FROM STDIN", new StringReader(sb.toString()));
                eq(5000L, n, "copied in");
                StringWriter w = new StringWriter();
                long out = cm.copyOut("COPY (SELECT * FROM jcopy ORDER BY id) TO STDOUT", w);
                eq(5000L, out, "copied out");
                eq(sb.toString(), w.toString(), "round trip");
                try {
                    cm.copyIn("COPY jcopy FROM STDIN", new StringReader("not a number\tx\n"));
                    throw new AssertionError("expected bad COPY data to fail");
                } catch (PSQLException e) {
                    eq("22P02", e.getSQLState(), "sqlstate");
                }
                eq(5000L, count(c, "SELECT count(*) FROM jcopy"), "usable after failed COPY");
            }
        });

        check("cancel_statement", () -> {
            try (Connection c = connect(); Statement s = c.createStatement()) {
                ScheduledExecutorService ex = Executors.newSingleThreadScheduledExecutor();
                ex.schedule(() -> { try { s.cancel(); } catch (SQLException e) { throw new RuntimeException(e); } }, 500, TimeUnit.MILLISECONDS);
                long t0 = System.nanoTime();
                try {
                    s.execute("SELECT pg_sleep(20)");
                    throw new AssertionError("expected the query to be cancelled");
                } catch (PSQLException e) {
                    eq("57014", e.getSQLState(), "sqlstate");
                } finally {
                    ex.shutdown();
                }
                yes(System.nanoTime() - t0 < 10_000_000_000L, "cancelled promptly");
                eq(1L, count(c, "SELECT 1"), "usable after cancel");
            }
        });

        check("query_timeout", () -> {
            try (Connection c = connect(); Statement s = c.createStatement()) {
                s.setQueryTimeout(1);
                try {
                    s.execute("SELECT pg_sleep(20)");
                    throw new AssertionError("expected a timeout");
                } catch (PSQLException e) {
                    eq("57014", e.getSQLState(), "sqlstate");
                }
                s.setQueryTimeout(0);
                eq(1L, count(c, "SELECT 1"), "usable after timeout");
            }
        });

        check("listen_notify", () -> {
            try (Connection listener = connect(); Connection sender = connect()) {
                try (Statement s = listener.createStatement()) { s.execute("LISTEN jdbc_chan"); }
                try (Statement s = sender.createStatement()) { s.execute("NOTIFY jdbc_chan, 'hello'"); }
                PGNotification[] got = null;
                for (int i = 0; i < 50 && (got == null || got.length == 0); i++) {
                    got = listener.unwrap(PGConnection.class).getNotifications(100);
                }
                yes(got != null && got.length == 1, "one notification");
                eq("jdbc_chan", got[0].getName(), "channel");
                eq("hello", got[0].getParameter(), "payload");
            }
        });

        check("metadata", () -> {
            try (Connection c = connect()) {
                DatabaseMetaData md = c.getMetaData();
                int n = 0;
                try (ResultSet rs = md.getTables(null, "public", "j%", new String[]{"TABLE"})) { while (rs.next()) n++; }
                yes(n >= 5, "at least 5 tables, got " + n);
                try (ResultSet rs = md.getColumns(null, "public", "jtypes", null)) {
                    List<String> cols = new ArrayList<>();
                    while (rs.next()) cols.add(rs.getString("COLUMN_NAME"));
                    eq(Arrays.asList("u", "j", "ts", "n", "b", "a"), cols, "columns");
                }
                yes(md.getDatabaseProductVersion().startsWith("15"), "server version " + md.getDatabaseProductVersion());
            }
        });

        check("many_connections_in_parallel", () -> {
            ExecutorService ex = Executors.newFixedThreadPool(8);
            List<Future<Long>> fs = new ArrayList<>();
            for (int t = 0; t < 16; t++) {
                final int k = t;
                fs.add(ex.submit(() -> {
                    try (Connection c = connect("prepareThreshold", "1");
                         PreparedStatement ps = c.prepareStatement("SELECT sum(id) + ? FROM jt WHERE id <= ?")) {
                        long last = 0;
                        for (int i = 0; i < 20; i++) {
                            ps.setInt(1, k);
                            ps.setInt(2, 100);
                            try (ResultSet rs = ps.executeQuery()) { rs.next(); last = rs.getLong(1); }
                        }
                        return last;
                    }
                }));
            }
            for (int t = 0; t < 16; t++) eq(5050L + t, fs.get(t).get(60, TimeUnit.SECONDS), "thread " + t);
            ex.shutdown();
        });

        System.out.println("ALL CHECKS DONE (" + failures + " failed)");
        System.exit(failures == 0 ? 0 : 1);
    }
}
