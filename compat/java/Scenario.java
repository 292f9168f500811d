// The compat scenario (compat/README.md) with the PostgreSQL JDBC driver
// (Debian's libpostgresql-jdbc-java): SCRAM with and without TLS,
// server-side prepared statements (prepareThreshold=1), a transaction
// across two shards, COPY through CopyManager, errors then recovery, and
// Statement.cancel() from another thread. Parameters come from the
// COMPAT_* environment variables set by compat/run.sh. Prints one "ok"
// line per passed step; exits 1 with a "FAIL" line at the first failed
// check. compat/run.sh compiles it with javac against
// /usr/share/java/postgresql.jar.
import java.io.IOException;
import java.io.StringReader;
import java.io.StringWriter;
import java.net.InetAddress;
import java.net.Socket;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicInteger;
import javax.net.ssl.SSLSocket;
import javax.net.ssl.SSLSocketFactory;
import org.postgresql.PGConnection;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyManager;
import org.postgresql.ssl.NonValidatingFactory;

public class Scenario {
    static String host, port, user, password, db, rootCert, client;
    static int a, b, tid;

    static void fail(String msg) {
        System.out.println("FAIL " + msg);
        System.out.flush();
        System.exit(1);
    }

    static final java.util.List<String> failures = new java.util.ArrayList<>();

    /** Records a failed check; the scenario goes on and exits 1 at the end. */
    static void failLater(String msg) {
        System.out.println("FAIL " + msg);
        System.out.flush();
        failures.add(msg);
    }

    static void ok(String msg) {
        System.out.println("ok " + msg);
        System.out.flush();
    }

    static String need(String name) {
        String v = System.getenv(name);
        if (v == null || v.isEmpty()) {
            fail("environment variable " + name + " is not set (compat/run.sh sets it)");
        }
        return v;
    }

    static void eq(String what, Object got, Object want) {
        if (!String.valueOf(got).equals(String.valueOf(want))) {
            fail(what + ": got " + got + ", want " + want);
        }
    }

    /**
     * sslmode=require without checking the certificate (the dev cert is
     * self-signed), counting the TLS sockets it makes: JDBC has no public
     * API telling whether a connection uses TLS.
     */
    public static class TrackingFactory extends SSLSocketFactory {
        static final AtomicInteger handshakes = new AtomicInteger();
        static volatile String protocol = "";
        private final SSLSocketFactory inner;

        public TrackingFactory() throws Exception {
            inner = new NonValidatingFactory(null);
        }

        private Socket track(Socket s) throws IOException {
            // The driver sets the client mode and starts the handshake.
            ((SSLSocket) s).addHandshakeCompletedListener(ev -> {
                protocol = ev.getSession().getProtocol();
                handshakes.incrementAndGet();
            });
            return s;
        }

        @Override public Socket createSocket(Socket s, String h, int p, boolean autoClose) throws IOException {
            return track(inner.createSocket(s, h, p, autoClose));
        }
        @Override public Socket createSocket(String h, int p) throws IOException { return track(inner.createSocket(h, p)); }
        @Override public Socket createSocket(String h, int p, InetAddress la, int lp) throws IOException {
            return track(inner.createSocket(h, p, la, lp));
        }
        @Override public Socket createSocket(InetAddress h, int p) throws IOException { return track(inner.createSocket(h, p)); }
        @Override public Socket createSocket(InetAddress h, int p, InetAddress la, int lp) throws IOException {
            return track(inner.createSocket(h, p, la, lp));
        }
        @Override public String[] getDefaultCipherSuites() { return inner.getDefaultCipherSuites(); }
        @Override public String[] getSupportedCipherSuites() { return inner.getSupportedCipherSuites(); }
    }

    static Connection connect(String sslmode, Properties extra) throws SQLException {
        Properties p = new Properties();
        p.setProperty("user", user);
        p.setProperty("password", password);
        p.setProperty("sslmode", sslmode);
        p.setProperty("connectTimeout", "10");
        p.setProperty("prepareThreshold", "1");
        if (extra != null) {
            p.putAll(extra);
        }
        return DriverManager.getConnection("jdbc:postgresql://" + host + ":" + port + "/" + db, p);
    }

    static String sqlstate(Statement st, String sql) {
        try {
            st.execute(sql);
        } catch (SQLException e) {
            return e.getSQLState();
        }
        return "no error";
    }

    static int queryInt(Connection c, String sql, int arg) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            ps.setInt(1, arg);
            try (ResultSet rs = ps.executeQuery()) {
                if (!rs.next()) {
                    fail("no row for " + sql + " with " + arg);
                }
                return rs.getInt(1);
            }
        }
    }

    static String balances(Connection c) throws SQLException {
        String q = "SELECT abalance FROM pgbench_accounts WHERE aid = ?";
        return queryInt(c, q, a) + "," + queryInt(c, q, b);
    }

    public static void main(String[] args) throws Exception {
        host = need("COMPAT_HOST");
        port = need("COMPAT_PORT");
        user = need("COMPAT_USER");
        password = need("COMPAT_PASSWORD");
        db = need("COMPAT_DB");
        rootCert = System.getenv("COMPAT_SSLROOTCERT");
        client = System.getenv("COMPAT_CLIENT") == null ? "jdbc" : System.getenv("COMPAT_CLIENT");
        a = Integer.parseInt(need("COMPAT_AID_A"));
        b = Integer.parseInt(need("COMPAT_AID_B"));
        tid = Integer.parseInt(need("COMPAT_TID"));
        try {
            run();
        } catch (SQLException e) {
            e.printStackTrace(System.out);
            fail("SQLSTATE " + e.getSQLState() + ": " + e.getMessage());
        } catch (Exception e) {
            e.printStackTrace(System.out);
            fail(e.toString());
        }
        if (!failures.isEmpty()) {
            System.out.println("FAIL " + client + ": " + failures.size() + " failed check(s)");
            System.exit(1);
        }
        System.out.println("PASS " + client);
    }

    static void run() throws Exception {
        // 1. SCRAM with TLS and without.
        Properties tracking = new Properties();
        tracking.setProperty("sslfactory", TrackingFactory.class.getName());
        Connection conn = connect("require", tracking);
        if (TrackingFactory.handshakes.get() != 1) {
            fail("sslmode=require: " + TrackingFactory.handshakes.get() + " TLS handshakes, want 1");
        }
        ok("connect tls: sslmode=require, SCRAM, " + TrackingFactory.protocol);
        if (rootCert != null && !rootCert.isEmpty()) {
            Properties verify = new Properties();
            verify.setProperty("sslrootcert", rootCert);
            try (Connection v = connect("verify-full", verify)) {
                eq("verify-full SELECT 1", queryInt(v, "SELECT ?::int", 1), 1);
            }
            ok("connect tls verify-full: the proxy presented the dev certificate");
        }
        int before = TrackingFactory.handshakes.get();
        try (Connection plain = connect("disable", tracking)) {
            eq("plain SELECT 1", queryInt(plain, "SELECT ?::int", 1), 1);
        }
        if (TrackingFactory.handshakes.get() != before) {
            fail("sslmode=disable: the connection used TLS");
        }
        ok("connect plain: sslmode=disable, SCRAM, no TLS");
        try {
            Properties wrong = new Properties();
            wrong.setProperty("password", "wrong");
            connect("disable", wrong).close();
            fail("wrong password accepted");
        } catch (SQLException e) {
            eq("wrong password SQLSTATE", e.getSQLState(), "28P01");
        }
        ok("auth: a wrong password is refused (28P01)");

        // 2. Server-side prepared statements (prepareThreshold=1: a named
        // statement from the first execution on).
        try (PreparedStatement ps = conn.prepareStatement(
                "SELECT aid, bid, abalance FROM pgbench_accounts WHERE aid = ?")) {
            for (int round = 0; round < 3; round++) {
                for (int aid : new int[] {a, b}) {
                    ps.setInt(1, aid);
                    try (ResultSet rs = ps.executeQuery()) {
                        if (!rs.next()) {
                            fail("prepared read aid " + aid + ": no row");
                        }
                        eq("prepared read aid " + aid, rs.getInt(1) + "," + rs.getInt(2) + "," + rs.getInt(3),
                                aid + ",1," + (3 * aid));
                    }
                }
                if (!ps.unwrap(PGStatement.class).isUseServerPrepare()) {
                    fail("prepared statement is not server-prepared");
                }
            }
        }
        ok("prepared: server-side statement (prepareThreshold=1) read aids " + a + " and " + b + " on both shards");
        // A read over both shards in one statement. Checked on its own
        // connection, and the scenario goes on if it fails, so one failure
        // does not hide the other steps' results.
        try (Connection fan = connect("disable", null);
                PreparedStatement ps = fan.prepareStatement(
                        "SELECT count(*), sum(abalance) FROM pgbench_accounts WHERE aid = ANY(?)")) {
            ps.setArray(1, fan.createArrayOf("int4", new Integer[] {a, b}));
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                String got = rs.getLong(1) + "," + rs.getLong(2);
                if (got.equals("2," + (3 * a + 3 * b))) {
                    ok("prepared: = ANY(?) over both shards (Parse/Bind/Describe portal/Execute/Sync)");
                } else {
                    failLater("prepared read = ANY(?) over both shards: got " + got);
                }
            }
        } catch (Exception e) {
            failLater("prepared read = ANY(?) over both shards (Parse/Bind/Describe portal/Execute/Sync): " + e);
        }

        // 3. A transaction across two shards: commit, then rollback.
        conn.setAutoCommit(false);
        try (PreparedStatement ps = conn.prepareStatement(
                "UPDATE pgbench_accounts SET abalance = abalance + ? WHERE aid = ?")) {
            ps.setInt(1, 11);
            ps.setInt(2, a);
            eq("update aid A", ps.executeUpdate(), 1);
            ps.setInt(1, 22);
            ps.setInt(2, b);
            eq("update aid B", ps.executeUpdate(), 1);
        }
        conn.commit();
        String want = (3 * a + 11) + "," + (3 * b + 22);
        eq("balances after commit", balances(conn), want);
        conn.commit();
        ok("transaction: BEGIN; UPDATE aid " + a + "; UPDATE aid " + b + "; COMMIT -> both visible");
        try (PreparedStatement ps = conn.prepareStatement(
                "UPDATE pgbench_accounts SET abalance = abalance + 1000 WHERE aid = ?")) {
            for (int aid : new int[] {a, b}) {
                ps.setInt(1, aid);
                ps.executeUpdate();
            }
        }
        conn.rollback();
        eq("balances after rollback", balances(conn), want);
        conn.commit();
        ok("transaction: BEGIN; UPDATE both; ROLLBACK -> both unchanged");

        // 4. COPY FROM STDIN and TO STDOUT with CopyManager.
        conn.setAutoCommit(true);
        CopyManager cm = conn.unwrap(PGConnection.class).getCopyAPI();
        String marker = "compat " + client;
        StringBuilder data = new StringBuilder();
        for (int i = 1; i <= 20; i++) {
            data.append(tid).append("\t1\t").append(i).append('\t').append(i)
                    .append("\t2020-01-01 00:00:00\t").append(marker).append('\n');
        }
        long copied = cm.copyIn("COPY pgbench_history (tid, bid, aid, delta, mtime, filler) FROM STDIN",
                new StringReader(data.toString()));
        eq("copyIn rows", copied, 20);
        StringWriter out = new StringWriter();
        long read = cm.copyOut("COPY (SELECT aid, delta FROM pgbench_history WHERE filler = '" + marker
                + "') TO STDOUT", out);
        eq("copyOut rows", read, 20);
        eq("copyOut lines", out.toString().split("\n").length, 20);
        ok("copy: CopyManager.copyIn 20 rows into pgbench_history, copyOut reads 20 back");
        // count(*) over both shards: on its own connection, as the = ANY read.
        try (Connection fan = connect("disable", null);
                PreparedStatement ps = fan.prepareStatement(
                        "SELECT count(*), sum(delta) FROM pgbench_history WHERE filler = ?")) {
            ps.setString(1, marker);
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                String got = rs.getLong(1) + "," + rs.getLong(2);
                if (got.equals("20,210")) {
                    ok("copy: count(*), sum(delta) over both shards after COPY: 20 rows");
                } else {
                    failLater("count after COPY over both shards: got " + got + ", want 20,210");
                }
            }
        } catch (Exception e) {
            failLater("count after COPY over both shards (Parse/Bind/Describe portal/Execute/Sync): " + e);
        }

        // 5. Errors, then the same connection works; in a transaction too.
        try (Statement st = conn.createStatement()) {
            eq("SELECT 1/0", sqlstate(st, "SELECT 1/0"), "22012");
            eq("syntax error", sqlstate(st, "selec 1"), "42601");
            eq("SELECT 1 after errors", queryInt(conn, "SELECT ?::int", 1), 1);
            conn.setAutoCommit(false);
            st.executeUpdate("UPDATE pgbench_accounts SET abalance = abalance + 5000 WHERE aid = " + a);
            eq("SELECT 1/0 in transaction", sqlstate(st, "SELECT 1/0"), "22012");
            eq("SELECT 1 in aborted transaction", sqlstate(st, "SELECT 1"), "25P02");
            conn.rollback();
            eq("balances after failed transaction", balances(conn), want);
            conn.commit();
            conn.setAutoCommit(true);
        }
        ok("error: 22012 and 42601 reported, SELECT works after; in a transaction 22012, then 25P02, "
                + "ROLLBACK, the UPDATE is undone");

        // 6. Statement.cancel() from another thread sends a CancelRequest.
        try (Statement st = conn.createStatement()) {
            Thread canceller = new Thread(() -> {
                try {
                    Thread.sleep(1000);
                    st.cancel();
                } catch (Exception e) {
                    System.out.println("cancel thread: " + e);
                }
            });
            long start = System.nanoTime();
            canceller.start();
            String state = sqlstate(st, "SELECT pg_sleep(30)");
            long ms = (System.nanoTime() - start) / 1_000_000;
            canceller.join();
            eq("cancelled SELECT pg_sleep(30) SQLSTATE", state, "57014");
            if (ms > 6000) {
                fail("cancel took " + ms + " ms");
            }
            eq("SELECT 1 after cancel", queryInt(conn, "SELECT ?::int", 1), 1);
            ok("cancel: Statement.cancel() from a thread during SELECT pg_sleep(30) -> 57014 after " + ms
                    + " ms; the connection works");
        }
        conn.close();
    }
}
