"""Everyday traffic through pgwarden: psql, multi-statement queries, errors in
transactions, LISTEN/NOTIFY, cancel, pipeline mode, big query texts and many
concurrent sessions."""

import hashlib
import threading
import time

import pytest
from psycopg import errors

from harness import psql, wait_until

PSQL_SCRIPT = r"""
CREATE TEMP TABLE t (id int PRIMARY KEY, name text, price numeric(10,2), note text);
INSERT INTO t VALUES (1, 'apple', 1.25, NULL), (2, 'bäcker', 2.50, 'tab	inside'),
                     (3, '日本語', 3.75, E'back\\slash'), (4, '', 0, 'quote''s');
INSERT INTO t SELECT g, 'gen' || g, g / 7.0, repeat('n', g % 13) FROM generate_series(5, 300) g
  RETURNING id % 50 = 0 AS round;
UPDATE t SET price = price * 2 WHERE id % 3 = 0;
DELETE FROM t WHERE id > 290;
SELECT * FROM t ORDER BY id;
SELECT count(*), sum(price), max(name), min(note) FROM t;
DO $$ BEGIN RAISE NOTICE 'notice from the server: %', 42; END $$;
SELECT 1 AS a, NULL::text AS b, true AS c, '{1,2,3}'::int[] AS d, '{"k": [1, "v"]}'::jsonb AS e;
\echo end of script
"""


def test_psql_simple_queries(pg, proxy, tmp_path):
    script = tmp_path / "script.sql"
    script.write_text(PSQL_SCRIPT)
    via_proxy = psql(proxy, "-f", str(script))
    direct = psql(pg, "-f", str(script))
    assert via_proxy.stdout == direct.stdout
    assert via_proxy.stderr == direct.stderr
    out = via_proxy.stdout.decode()
    assert "日本語" in out and "(290 rows)" in out and "end of script" in out
    assert b"notice from the server: 42" in via_proxy.stderr

    r = psql(proxy, "-At", "-c", "SELECT 40 + 2")
    assert r.stdout == b"42\n"


def test_multi_statement_psql(pg, proxy):
    r = psql(proxy, "-At", "-c", "SELECT 1; SELECT 2;")
    assert r.stdout.split() == [b"1", b"2"]
    assert r.stdout == psql(pg, "-At", "-c", "SELECT 1; SELECT 2;").stdout

    # A statement list with an error in the middle: the rest is not run, and
    # the error reaches the client.
    r = psql(proxy, "-At", "-c", "SELECT 1; SELECT 1/0; SELECT 3;", check=False)
    assert r.returncode != 0
    assert b"division by zero" in r.stderr
    assert b"3" not in r.stdout.split()


def test_multi_statement_psycopg(proxy):
    with proxy.connect() as conn:
        cur = conn.cursor()
        cur.execute("SELECT 1; SELECT 2, 'two'; CREATE TEMP TABLE m(x int); INSERT INTO m VALUES (7), (8)")
        assert cur.fetchall() == [(1,)]
        assert cur.nextset()
        assert cur.fetchall() == [(2, "two")]
        assert cur.nextset()          # CREATE TABLE
        assert cur.nextset()          # INSERT
        assert cur.rowcount == 2
        assert not cur.nextset()
        assert conn.execute("SELECT sum(x) FROM m").fetchone() == (15,)


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_error_in_transaction_then_rollback(proxy, protocol):
    # psycopg sends a statement without parameters as a simple Query, and one
    # with parameters through Parse/Bind/Execute/Sync.
    def q(conn, sql, value):
        if protocol == "simple":
            return conn.execute(sql.replace("%s", str(value)))
        return conn.execute(sql, (value,))

    with proxy.connect(autocommit=False) as conn:
        q(conn, "CREATE TEMP TABLE tx AS SELECT %s::int AS v", 1)
        with pytest.raises(errors.DivisionByZero) as ei:
            q(conn, "SELECT %s::int / 0", 1)
        assert ei.value.sqlstate == "22012"
        with pytest.raises(errors.InFailedSqlTransaction) as ei:
            q(conn, "SELECT %s::int", 1)
        assert ei.value.sqlstate == "25P02"
        conn.rollback()
        assert q(conn, "SELECT %s::int", 1).fetchone() == (1,)
        # The temp table was created in the rolled-back transaction.
        with pytest.raises(errors.UndefinedTable):
            q(conn, "SELECT v + %s FROM tx", 1)
        conn.rollback()
        q(conn, "CREATE TEMP TABLE tx2 AS SELECT g AS v FROM generate_series(1, %s) g", 4)
        conn.commit()
        assert q(conn, "SELECT sum(v) + %s FROM tx2", 0).fetchone() == (10,)


def test_error_in_transaction_psql(proxy):
    script = "BEGIN;\nSELECT 1/0;\nSELECT 'unreached';\nROLLBACK;\nSELECT 'after rollback';\n"
    r = psql(proxy, "-At", "-v", "ON_ERROR_STOP=0", input=script.encode())
    assert b"division by zero" in r.stderr
    assert b"current transaction is aborted" in r.stderr
    assert r.stdout.strip().splitlines()[-1] == b"after rollback"


def test_listen_notify(proxy):
    with proxy.connect() as listener, proxy.connect() as notifier:
        listener.execute("LISTEN pgw_channel")
        notifier.execute("NOTIFY pgw_channel, 'hello through the proxy'")
        notifier.execute("SELECT pg_notify('pgw_channel', %s)", ("second",))
        got = list(listener.notifies(timeout=10, stop_after=2))
        assert [n.payload for n in got] == ["hello through the proxy", "second"]
        assert all(n.channel == "pgw_channel" for n in got)
        notifier_pid = notifier.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert all(n.pid == notifier_pid for n in got)


@pytest.mark.parametrize("how", ["cancel", "cancel_safe"])
def test_cancel_running_query(pg, proxy, how):
    with proxy.connect(options="-c statement_timeout=15000") as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        errors_seen = []

        def canceller():
            try:
                # Cancel only once the sleep is running, or the cancel is a no-op.
                wait_until(lambda: pg.sql(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %d AND state = 'active' "
                    "AND query LIKE 'SELECT pg_sleep%%'" % pid), 10, what="pg_sleep to start")
                t0 = time.monotonic()
                getattr(conn, how)()
                errors_seen.append(("sent", t0))
            except Exception as e:  # reported by the main thread
                errors_seen.append(("error", e))

        th = threading.Thread(target=canceller)
        th.start()
        with pytest.raises(errors.QueryCanceled) as ei:
            conn.execute("SELECT pg_sleep(30)")
        returned = time.monotonic()
        th.join()
        assert errors_seen and errors_seen[0][0] == "sent", errors_seen
        assert ei.value.sqlstate == "57014"
        assert "statement timeout" not in str(ei.value), "cancel never arrived: the statement timed out"
        assert returned - errors_seen[0][1] < 2.0
        # The session is still usable.
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_pipeline_1000_statements(proxy):
    with proxy.connect() as conn:
        conn.execute("CREATE TEMP TABLE p (i int, s text)")
        cursors = []
        with conn.pipeline():
            for i in range(1000):
                cur = conn.cursor()
                if i % 10 == 9:
                    cur.execute("INSERT INTO p VALUES (%s, %s) RETURNING i", (i, "row%d" % i))
                else:
                    cur.execute("SELECT %s::int * 2, %s::text || '!'", (i, "v%d" % i))
                cursors.append(cur)
        for i, cur in enumerate(cursors):
            if i % 10 == 9:
                assert cur.fetchone() == (i,)
            else:
                assert cur.fetchone() == (i * 2, "v%d!" % i)
        assert conn.execute("SELECT count(*), sum(i) FROM p").fetchone() == (100, sum(range(9, 1000, 10)))


def test_one_megabyte_query_text(proxy):
    n = 1_000_000
    big = "x" * n
    with proxy.connect() as conn:
        # Simple protocol: the literal is in a ~1 MB Query message.
        assert conn.execute("SELECT length('%s')" % big).fetchone() == (n,)
        # Extended protocol: a ~1 MB Bind parameter, and a ~1 MB result back.
        payload = "".join(chr(ord("a") + i % 26) for i in range(n))
        row = conn.execute("SELECT length(%s::text), md5(%s::text), %s::text",
                           (payload, payload, payload)).fetchone()
        assert row[0] == n
        assert row[1] == hashlib.md5(payload.encode()).hexdigest()
        assert row[2] == payload


def test_200_concurrent_sessions(pg, proxy):
    n = 200
    barrier = threading.Barrier(n, timeout=90)
    results = [None] * n

    def worker(i):
        try:
            with proxy.connect(application_name="pgw-conc-%d" % i) as conn:
                pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
                barrier.wait()            # all n sessions are open at once here
                got = [conn.execute("SELECT %s::int + %s::int", (i, k)).fetchone()[0] for k in range(4)]
                got.append(conn.execute("SELECT %d * 3" % i).fetchone()[0])
                with conn.transaction():
                    conn.execute("CREATE TEMP TABLE c (v int)")
                    conn.execute("INSERT INTO c SELECT generate_series(1, %s)", (i + 1,))
                    got.append(conn.execute("SELECT sum(v) FROM c").fetchone()[0])
                results[i] = (pid, got)
        except Exception as e:
            barrier.abort()
            results[i] = e

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    failures = [(i, r) for i, r in enumerate(results) if not isinstance(r, tuple)]
    assert not failures, "%d sessions failed, first: %r" % (len(failures), failures[:3])
    pids = {r[0] for r in results}
    assert len(pids) == n
    for i, (_, got) in enumerate(results):
        assert got == [i, i + 1, i + 2, i + 3, i * 3, (i + 1) * (i + 2) // 2]
