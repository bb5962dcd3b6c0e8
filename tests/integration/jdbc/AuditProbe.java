// A JDBC client for the audit tests: server-side prepared statements (after
// prepareThreshold), a batch of inserts, a result fetched 40 rows at a time,
// and a failing statement, through pgwarden. Arguments: host port
// application_name.
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;

public class AuditProbe {
    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://" + args[0] + ":" + args[1] + "/postgres?user=postgres"
                + "&sslmode=disable&prepareThreshold=3&ApplicationName=" + args[2];
        try (Connection c = DriverManager.getConnection(url)) {
            try (PreparedStatement ps = c.prepareStatement("SELECT ?::int * 2")) {
                for (int i = 0; i < 6; i++) {
                    ps.setInt(1, i);
                    try (ResultSet rs = ps.executeQuery()) {
                        if (!rs.next() || rs.getInt(1) != i * 2)
                            throw new AssertionError("wrong result for " + i);
                    }
                }
            }
            try (Statement st = c.createStatement()) {
                st.execute("CREATE TEMP TABLE j (i int, s text)");
            }
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO j VALUES (?, ?)")) {
                for (int i = 0; i < 10; i++) {
                    ps.setInt(1, i);
                    ps.setString(2, "secret-" + i);
                    ps.addBatch();
                }
                ps.executeBatch();
            }
            // A fetch size inside a transaction: the driver runs the portal
            // with a row limit, and the server suspends it after each 40 rows.
            c.setAutoCommit(false);
            try (PreparedStatement ps = c.prepareStatement("SELECT g FROM generate_series(1, ?) g")) {
                ps.setFetchSize(40);
                ps.setInt(1, 130);
                int n = 0;
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next())
                        n++;
                }
                if (n != 130)
                    throw new AssertionError("fetched " + n + " rows");
            }
            c.commit();
            c.setAutoCommit(true);
            try (Statement st = c.createStatement()) {
                st.execute("SELECT 1/0");
                throw new AssertionError("no error");
            } catch (SQLException e) {
                if (!"22012".equals(e.getSQLState()))
                    throw e;
            }
        }
        System.out.println("ok");
    }
}
