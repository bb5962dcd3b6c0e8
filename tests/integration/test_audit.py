"""The audit trail: one event per statement, by every protocol path, with the
identity of the session, written by the file sink and valid against the
schema (docs/events.schema.json)."""

import json
import os
import subprocess
from pathlib import Path
import re
import signal
import threading
import time
import urllib.request
import uuid

import psycopg
import pytest

import pgwire

from test_event_schema import assert_valid_audit_file
from harness import SUPERUSER, audit_events, client_env, free_port, pgbench, psql, wait_until


@pytest.fixture(scope="module")
def audited(request, pg, run_dir):
    """A pgwarden with the file sink, and a reader of what it wrote."""
    from conftest import _new_workdir
    from harness import Proxy

    workdir = _new_workdir(run_dir, "audited")
    path = workdir / "audit.jsonl"
    p = Proxy(["127.0.0.1:%d" % free_port()], "127.0.0.1:%d" % pg.port, workdir,
              ["--audit-file", str(path)])
    p.start()
    p.audit_path = path
    yield p
    rc = p.stop(timeout=20)
    assert rc == 0, p.log_tail()
    assert assert_valid_audit_file(path) > 100


def events_in(path):
    return audit_events(path)


def events(proxy):
    return events_in(proxy.audit_path)


def session_events(proxy, app, want_end=True, timeout=10):
    """The events of the sessions with application_name app, once their
    session_end is written."""
    def done():
        evs = [e for e in events(proxy) if e.get("client", {}).get("application") == app]
        ended = [e for e in evs if e["kind"] == "session_end"]
        return evs if (ended or not want_end) and evs else None
    return wait_until(done, timeout, what="audit events of %s" % app)


def statements(evs):
    return [e for e in evs if e["kind"] == "statement"]


def app_name():
    return "pgw-test-" + uuid.uuid4().hex[:8]


def test_simple_query_events_and_identity(pg, audited):
    app = app_name()
    with audited.connect(application_name=app) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        conn.execute("CREATE TEMP TABLE t (id int, secret text)")
        conn.execute("INSERT INTO t VALUES (1, 'hunter-literal'), (2, 'x')")
        conn.execute("SELECT * FROM t WHERE id = 1")
    evs = session_events(audited, app)
    kinds = [e["kind"] for e in evs]
    assert kinds[0] == "session_start" and kinds[-1] == "session_end"
    assert [e["session"]["seq"] for e in evs] == list(range(1, len(evs) + 1))
    assert len({e["session"]["id"] for e in evs}) == 1
    assert len({e["event_id"] for e in evs}) == len(evs)
    st = statements(evs)
    assert [s["statement"]["command"] for s in st][-3:] == ["CREATE TABLE", "INSERT", "SELECT"]
    ins = st[-2]
    assert ins["statement"]["class"] == "WRITE"
    assert ins["result"]["status"] == "ok" and ins["result"]["tag"] == "INSERT 0 2"
    assert ins["result"]["rows"] == 2
    assert ins["statement"]["objects"] == [{"name": "t", "type": "table", "access": "write"}]
    assert "hunter-literal" not in json.dumps(evs)
    assert "$1" in ins["statement"]["text"]
    sel = st[-1]
    assert sel["result"]["rows"] == 1 and sel["result"]["bytes"] > 0
    for e in evs:
        assert e["user"] == {"name": SUPERUSER, "database": "postgres"}
        assert e["client"]["ip"] == "127.0.0.1" and e["client"]["port"] > 0
        assert e["server"]["port"] == pg.port
        assert e["session"]["backend_pid"] == pid or e["kind"] == "session_start"
    start = evs[0]
    assert start["server_version"].startswith("15")
    assert evs[-1]["reason"] == "client_closed"
    assert evs[-1]["statements"] == len(st)


def test_sql_prepared_statements_name_their_relations(audited):
    """EXECUTE of a statement made with SQL's PREPARE reads and writes what
    the PREPARE named: its event lists those relations (class stays MISC, as
    pgAudit files EXECUTE), until DEALLOCATE, DEALLOCATE ALL or DISCARD ALL;
    by either protocol, in the Query of its PREPARE or later."""
    app = app_name()
    with audited.connect(application_name=app) as conn:
        conn.execute("CREATE TEMP TABLE acct (id int, bal int)")
        conn.execute("CREATE TEMP TABLE ledger (id int)")
        # one Query: PREPARE and EXECUTE in the simple protocol
        conn.pgconn.exec_(b"PREPARE bump (int) AS UPDATE acct SET bal = bal + 1 WHERE id = $1 "
                          b"RETURNING (SELECT count(*) FROM ledger); EXECUTE bump(7)")
        conn.execute("PREPARE look AS SELECT * FROM acct")
        conn.execute("EXECUTE look", prepare=True)       # the extended protocol
        conn.execute("EXECUTE bump(8)")
        conn.execute("DEALLOCATE bump")
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            conn.execute("EXECUTE bump(9)")
        conn.execute("EXECUTE look")
        conn.execute("DEALLOCATE ALL")
        conn.execute("PREPARE look AS SELECT id FROM ledger")   # the name again, another statement
        conn.execute("EXECUTE look")
        conn.execute("DISCARD ALL")
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            conn.execute("EXECUTE look")
    st = statements(session_events(audited, app))
    ex = [s for s in st if s["statement"]["command"] == "EXECUTE"]
    bump = [{"name": "acct", "type": "table", "access": "write"},
            {"name": "ledger", "type": "table", "access": "read"}]
    acct = [{"name": "acct", "type": "table", "access": "read"}]
    ledger = [{"name": "ledger", "type": "table", "access": "read"}]
    assert [(s["statement"]["text"], s["result"]["status"], s["statement"]["objects"]) for s in ex] == [
        ("EXECUTE bump($1)", "ok", bump),
        ("EXECUTE look", "ok", acct),
        ("EXECUTE bump($1)", "ok", bump),
        ("EXECUTE bump($1)", "error", []),               # after DEALLOCATE
        ("EXECUTE look", "ok", acct),
        ("EXECUTE look", "ok", ledger),                  # after DEALLOCATE ALL and a new PREPARE
        ("EXECUTE look", "error", []),                   # after DISCARD ALL
    ]
    assert all(s["statement"]["class"] == "MISC" for s in ex)
    assert ex[0]["statement"]["protocol"] == "simple" and ex[1]["statement"]["protocol"] == "extended"


def test_cursor_fetches_name_their_relations(audited):
    """FETCH and MOVE read through a cursor what its DECLARE named: their
    events list those relations until CLOSE, CLOSE ALL or DISCARD ALL, or
    until the name is declared again for another query. psycopg's
    server-side cursors are made of exactly these statements."""
    app = app_name()
    with audited.connect(application_name=app) as conn:
        conn.execute("CREATE TEMP TABLE acct (id int, bal int)")
        conn.execute("CREATE TEMP TABLE ledger (id int)")
        conn.execute("INSERT INTO acct SELECT g, g FROM generate_series(1, 25) g")
        conn.execute("INSERT INTO ledger SELECT generate_series(1, 5)")
        with conn.transaction(), conn.cursor(name="Big Scan") as cur:   # DECLARE, FETCH, CLOSE
            cur.itersize = 10
            cur.execute("SELECT * FROM acct WHERE bal > %s", (0,))
            assert sum(1 for _ in cur) == 25
        conn.execute("BEGIN")
        conn.execute("DECLARE c1 CURSOR WITH HOLD FOR SELECT a.id FROM acct a JOIN ledger l USING (id)")
        conn.execute("COMMIT")                            # a held cursor outlives it
        assert len(conn.execute("FETCH 2 FROM c1").fetchall()) == 2
        conn.execute("MOVE FORWARD 1 IN c1")
        conn.execute("CLOSE c1")
        with pytest.raises(psycopg.errors.InvalidCursorName):
            conn.execute("FETCH 1 FROM c1")
        conn.execute("BEGIN")
        conn.execute("DECLARE c1 CURSOR FOR SELECT id FROM ledger")  # the name again
        conn.execute("FETCH ALL FROM c1")
        conn.execute("CLOSE ALL")
        with pytest.raises(psycopg.errors.InvalidCursorName):
            conn.execute("FETCH 1 FROM c1")
        conn.execute("ROLLBACK")
        conn.execute("DECLARE c2 CURSOR WITH HOLD FOR SELECT bal FROM acct")
        conn.execute("DISCARD ALL")
        with pytest.raises(psycopg.errors.InvalidCursorName):
            conn.execute("FETCH 1 FROM c2")
    st = statements(session_events(audited, app))
    acct = [{"name": "acct", "type": "table", "access": "read"}]
    ledger = [{"name": "ledger", "type": "table", "access": "read"}]
    fetched = [(s["statement"]["text"], s["result"]["status"], s["result"].get("rows"),
                s["statement"]["objects"]) for s in st
               if s["statement"]["command"] in ("FETCH", "MOVE")]
    assert fetched == [
        ('FETCH FORWARD 10 FROM "Big Scan"', "ok", 10, acct),
        ('FETCH FORWARD 10 FROM "Big Scan"', "ok", 10, acct),
        ('FETCH FORWARD 10 FROM "Big Scan"', "ok", 5, acct),
        ("FETCH 2 FROM c1", "ok", 2, acct + ledger),
        ("MOVE FORWARD 1 IN c1", "ok", 1, acct + ledger),
        ("FETCH 1 FROM c1", "error", None, []),          # after CLOSE
        ("FETCH ALL FROM c1", "ok", 5, ledger),           # declared again
        ("FETCH 1 FROM c1", "error", None, []),          # after CLOSE ALL
        ("FETCH 1 FROM c2", "error", None, []),          # after DISCARD ALL
    ], fetched
    declared = [s for s in st if s["statement"]["command"] == "DECLARE CURSOR"]
    assert [d["statement"]["objects"] for d in declared] == [acct, acct + ledger, ledger, acct]
    assert all(s["statement"]["class"] == "MISC" for s in st
               if s["statement"]["command"] in ("FETCH", "MOVE", "CLOSE CURSOR", "CLOSE CURSOR ALL"))


def test_execute_and_fetch_wait_for_a_long_prepare_parsed_off_the_loop(audited):
    """A PREPARE or DECLARE too long to parse on the loop (over 4 KiB, a
    shape not seen before) is analysed in the thread pool; the EXECUTE or
    FETCH right behind it in the same Query must still name its
    relations."""
    app = app_name()
    n = 1500 + int(uuid.uuid4().int % 500)         # a shape the cache has not seen
    ids = ", ".join(str(i) for i in range(n))
    with audited.connect(application_name=app) as conn:
        conn.execute("CREATE TEMP TABLE acct (id int, bal int)")
        conn.execute("INSERT INTO acct SELECT g, g FROM generate_series(1, 10) g")
        conn.pgconn.exec_(("PREPARE big AS SELECT bal FROM acct WHERE id IN (%s); EXECUTE big"
                           % ids).encode())
        conn.pgconn.exec_(("BEGIN; DECLARE bigc CURSOR FOR SELECT id FROM acct WHERE bal IN (%s, -1); "
                           "FETCH 3 FROM bigc; COMMIT" % ids).encode())
        # pipelined, by the extended protocol: the EXECUTE's analysis is
        # its unnamed statement's memo, which is gone before the wait ends
        with conn.pipeline():
            conn.execute("PREPARE big2 AS SELECT bal FROM acct WHERE id IN (%s, -2)" % ids)
            conn.execute("EXECUTE big2")
            conn.execute("SELECT 1")
    evs = session_events(audited, app)
    assert [e["session"]["seq"] for e in evs] == list(range(1, len(evs) + 1)), "in the order of seq"
    st = statements(evs)
    acct = [{"name": "acct", "type": "table", "access": "read"}]
    by = {}
    for s in st:
        by.setdefault(s["statement"]["command"], []).append(s)
    assert [len(p["statement"]["text"]) > 4096 for p in by["PREPARE"]] == [True, True]
    assert [(e["statement"]["text"], e["statement"]["protocol"], e["statement"]["objects"], e["result"]["rows"])
            for e in by["EXECUTE"]] == [("EXECUTE big", "simple", acct, 10),
                                        ("EXECUTE big2", "extended", acct, 10)]
    (f,) = by["FETCH"]
    assert f["statement"]["objects"] == acct and f["result"]["rows"] == 3


def test_multi_statement_with_error_and_skipped(audited):
    app = app_name()
    with audited.connect(application_name=app) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1; SELECT 1/0; SELECT 3")
    st = statements(session_events(audited, app))
    assert [(s["statement"]["index"], s["statement"]["count"], s["result"]["status"]) for s in st] == [
        (1, 3, "ok"), (2, 3, "error"), (3, 3, "skipped")]
    assert st[1]["result"]["sqlstate"] == "22012"
    assert all(s["statement"]["protocol"] == "simple" for s in st)


def test_extended_protocol_and_pipeline(audited):
    app = app_name()
    with audited.connect(application_name=app) as conn:
        conn.execute("CREATE TEMP TABLE p (i int)")
        with conn.pipeline():
            for i in range(20):
                conn.execute("INSERT INTO p VALUES (%s)", (i,))
        with pytest.raises(psycopg.errors.DivisionByZero):
            with conn.pipeline():
                conn.execute("SELECT %s::int", (1,))
                conn.execute("SELECT 1 / %s::int", (0,))
                conn.execute("SELECT %s::int", (3,))
        # Server-side prepared: the text is carried from Parse to each Execute.
        for i in range(8):
            conn.execute("SELECT count(*) FROM p WHERE i > %s", (i,), prepare=True)
    st = statements(session_events(audited, app))
    inserts = [s for s in st if s["statement"]["command"] == "INSERT"]
    assert len(inserts) == 20
    assert all(s["statement"]["protocol"] == "extended" and s["result"]["status"] == "ok"
               and s["statement"]["params"]["count"] == 1 for s in inserts)
    statuses = [s["result"]["status"] for s in st if "SELECT" in s["statement"]["text"]
                and "FROM p" not in s["statement"]["text"]]
    assert statuses == ["ok", "error", "skipped"]
    prepared = [s for s in st if "FROM p WHERE" in s["statement"]["text"]]
    assert len(prepared) == 8
    assert all(s["result"]["rows"] == 1 for s in prepared)
    assert len({s["statement"]["fingerprint"] for s in prepared}) == 1


def test_failed_implicit_commit_is_the_statements_error(audited):
    """A deferred foreign key fails at the implicit commit, after the
    INSERT's CommandComplete: the extended protocol's event is the error
    that rolled it back (the server commits at Sync), like the simple
    protocol's, where the commit comes before CommandComplete. An INSERT
    that commits is ok, and one inside a transaction block is reported as
    executed."""
    app = app_name()
    with audited.connect(application_name=app) as conn:
        conn.execute("CREATE TEMP TABLE parent (id int PRIMARY KEY)")
        conn.execute("CREATE TEMP TABLE child (id int REFERENCES parent DEFERRABLE INITIALLY DEFERRED)")
        conn.execute("INSERT INTO parent VALUES (%s)", (1,))
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO child VALUES (%s)", (2,))               # extended
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute(b"INSERT INTO child VALUES (3)", prepare=True)      # extended, a named statement
        res = conn.pgconn.exec_(b"INSERT INTO child VALUES (4)")              # simple
        assert res.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"23503"
        conn.execute("INSERT INTO child VALUES (%s)", (1,))
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            with conn.transaction():                                          # a block: fails at COMMIT
                conn.execute("INSERT INTO child VALUES (%s)", (5,))
    st = statements(session_events(audited, app))
    inserts = [s for s in st if s["statement"]["command"] == "INSERT"
               and "child" in s["statement"]["text"]]
    got = [(s["statement"]["protocol"], s["result"]["status"], s["result"].get("sqlstate"),
            s["result"].get("tag")) for s in inserts]
    assert got == [("extended", "error", "23503", None),
                   ("extended", "error", "23503", None),
                   ("simple", "error", "23503", None),
                   ("extended", "ok", None, "INSERT 0 1"),
                   ("extended", "ok", None, "INSERT 0 1")], got
    commit = [s for s in st if s["statement"]["command"] == "COMMIT"]
    assert [(c["result"]["status"], c["result"].get("sqlstate")) for c in commit] == [("error", "23503")]
    seqs = [e["session"]["seq"] for e in st]
    assert seqs == sorted(seqs)


def _execute_without_sync(pgconn, sql):
    """Sends Parse/Bind/Describe/Execute and a Flush, no Sync; returns the
    Execute's result once the server answered it."""
    if pgconn.pipeline_status == psycopg.pq.PipelineStatus.OFF:
        pgconn.enter_pipeline_mode()
    pgconn.send_query_params(sql, None)
    pgconn.send_flush_request()
    pgconn.flush()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pgconn.consume_input()
        if not pgconn.is_busy():
            res = pgconn.get_result()
            if res is not None:
                assert res.status == psycopg.pq.ExecStatus.COMMAND_OK, pgconn.error_message
                while pgconn.get_result() is not None:   # the end of this query's results
                    pass
                return res
        time.sleep(0.01)
    raise AssertionError("no answer to %r" % sql)


def test_session_cut_between_execute_and_sync(pg, audited):
    """The server terminates a backend after CommandComplete and before
    Sync. A COMMIT, a CREATE DATABASE and a CREATE INDEX CONCURRENTLY
    committed when their Execute completed (PostgreSQL ends their
    transaction there): ok. An INSERT and a plain CREATE INDEX in the
    implicit transaction that only its Sync would have committed: the
    FATAL's error, and neither the row nor that index exists."""
    table = "cut_" + uuid.uuid4().hex[:8]
    dbname = "cutdb_" + uuid.uuid4().hex[:8]
    pg.sql("CREATE TABLE %s (a int)" % table)
    app = app_name()
    conn = audited.connect(application_name=app)
    pgconn = conn.pgconn
    for sql in ("BEGIN", "INSERT INTO %s VALUES (1)" % table):
        assert pgconn.exec_(sql.encode()).status == psycopg.pq.ExecStatus.COMMAND_OK
    assert _execute_without_sync(pgconn, b"COMMIT").command_status == b"COMMIT"
    assert _execute_without_sync(pgconn, b"CREATE DATABASE " + dbname.encode()).command_status == b"CREATE DATABASE"
    assert _execute_without_sync(pgconn, ("CREATE INDEX CONCURRENTLY %s_conc ON %s (a)" % (table, table)).encode()
                                 ).command_status == b"CREATE INDEX"
    _execute_without_sync(pgconn, ("INSERT INTO %s VALUES (2)" % table).encode())
    _execute_without_sync(pgconn, ("CREATE INDEX %s_plain ON %s (a)" % (table, table)).encode())
    pg.sql("SELECT pg_terminate_backend(%d)" % pgconn.backend_pid)
    with pytest.raises(psycopg.OperationalError):
        for _ in range(100):
            pgconn.consume_input()
            time.sleep(0.05)
    conn.close()
    try:
        assert pg.sql("SELECT a FROM %s ORDER BY a" % table) == [(1,)]
        assert pg.sql("SELECT 1 FROM pg_database WHERE datname = '%s'" % dbname) == [(1,)]
        assert pg.sql("SELECT indexname FROM pg_indexes WHERE tablename = '%s'" % table) == [(table + "_conc",)]
    finally:
        pg.sql("DROP DATABASE IF EXISTS %s" % dbname)
        pg.sql("DROP TABLE %s" % table)
    st = statements(session_events(audited, app))
    got = [(s["statement"]["command"], s["statement"]["protocol"], s["result"]["status"],
            s["result"].get("sqlstate"), s["result"].get("tag")) for s in st]
    assert got == [("BEGIN", "simple", "ok", None, "BEGIN"),
                   ("INSERT", "simple", "ok", None, "INSERT 0 1"),
                   ("COMMIT", "extended", "ok", None, "COMMIT"),
                   ("CREATE DATABASE", "extended", "ok", None, "CREATE DATABASE"),
                   ("CREATE INDEX", "extended", "ok", None, "CREATE INDEX"),
                   ("INSERT", "extended", "error", "57P01", None),
                   ("CREATE INDEX", "extended", "error", "57P01", None)], got


def test_function_call_whose_commit_fails(pg, audited):
    """A FunctionCall (libpq's PQfn) is committed after its answer: when
    that commit fails (a deferred foreign key), the call has one event, the
    error, not an ok for the answer and then an error; a call that commits
    has one ok event."""
    tag = uuid.uuid4().hex[:8]
    pg.sql("CREATE TABLE fc_parent_%s (id int PRIMARY KEY);"
           "CREATE TABLE fc_child_%s (id int REFERENCES fc_parent_%s DEFERRABLE INITIALLY DEFERRED);"
           "CREATE FUNCTION fc_bad_%s() RETURNS int LANGUAGE sql AS 'INSERT INTO fc_child_%s VALUES (7) RETURNING id';"
           "CREATE FUNCTION fc_good_%s() RETURNS int LANGUAGE sql AS 'SELECT 8'"
           % ((tag,) * 6))
    bad = int(pg.sql("SELECT 'fc_bad_%s'::regproc::oid" % tag)[0][0])
    good = int(pg.sql("SELECT 'fc_good_%s'::regproc::oid" % tag)[0][0])
    app = app_name()
    try:
        with pgwire.connect((audited.host, audited.port)) as c:
            c.startup(SUPERUSER, application_name=app)
            for oid in (bad, good):
                msgs = c.function_call(oid)
                kinds = [t for t, _ in msgs]
                if oid == bad:      # the answer, then the commit's error
                    assert kinds == ["V", "E", "Z"], kinds
                    assert pgwire.parse_error_fields(msgs[1][1])["C"] == "23503"
                else:
                    assert kinds == ["V", "Z"], kinds
        assert pg.sql("SELECT count(*) FROM fc_child_%s" % tag) == [(0,)]
    finally:
        pg.sql("DROP FUNCTION fc_bad_%s; DROP FUNCTION fc_good_%s; DROP TABLE fc_child_%s; DROP TABLE fc_parent_%s"
               % ((tag,) * 4))
    calls = [s for s in statements(session_events(audited, app))
             if s["statement"]["protocol"] == "function_call"]
    assert [(s["result"]["status"], s["result"].get("sqlstate")) for s in calls] == [
        ("error", "23503"), ("ok", None)], calls


def test_large_object_calls_name_their_function_and_bytes(audited, tmp_path):
    """psql's \\lo_import and \\lo_export (libpq's large-object API) work
    through FunctionCalls by OID: each call's event names the function,
    counts its arguments (values only with parameter logging) and the bytes
    of its answer, so an export of a large object shows every byte read."""
    blob = os.urandom(300_000)
    src, out = tmp_path / "blob.bin", tmp_path / "blob.out"
    src.write_bytes(blob)
    imp, exp = app_name(), app_name()
    r = psql(audited, "-c", "\\lo_import %s" % src, env=client_env(PGAPPNAME=imp))
    oid = int(r.stdout.split()[1])
    psql(audited, "-c", "\\lo_export %d %s" % (oid, out), "-c", "\\lo_unlink %d" % oid,
         env=client_env(PGAPPNAME=exp))
    assert out.read_bytes() == blob

    def calls(app):
        return [s for s in statements(session_events(audited, app))
                if s["statement"]["protocol"] == "function_call"]
    written, read = calls(imp), calls(exp)
    for c in written + read:
        st = c["statement"]
        assert st["command"] == "FUNCTION CALL" and st["class"] == "FUNCTION" and st["redacted"] is True
        assert "values" not in st["params"] and c["result"]["status"] == "ok"
    texts = [c["statement"]["text"] for c in written]
    assert texts[0] == "SELECT pg_catalog.lo_creat($1)" and texts[-1] == "SELECT pg_catalog.lo_close($1)"
    writes = [c for c in written if c["statement"]["text"] == "SELECT pg_catalog.lowrite($1, $2)"]
    assert writes and all(c["statement"]["params"]["count"] == 2 for c in writes)
    reads = [c for c in read if c["statement"]["text"] == "SELECT pg_catalog.loread($1, $2)"]
    # every byte of the object came back in the answers (5 bytes of framing
    # and a 4-byte length each)
    assert len(blob) <= sum(c["result"]["bytes"] for c in reads) <= len(blob) + 9 * len(reads)
    assert [c["statement"]["text"] for c in read][-1] == "SELECT pg_catalog.lo_unlink($1)"


PGBENCH_TPCB = ["BEGIN", "UPDATE", "SELECT", "UPDATE", "UPDATE", "INSERT", "COMMIT"]


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_exactly_one_event_per_statement(pg, audited, mode):
    dbname = "pgw_audit_bench"
    if not pg.sql("SELECT 1 FROM pg_database WHERE datname = '%s'" % dbname):
        pg.sql("CREATE DATABASE %s" % dbname)
        pgbench(pg, "-i", "-s", "1", "-q", dbname=dbname)
    app = "pgbench-" + mode
    clients, per_client = 4, 25
    r = pgbench(audited, "-n", "-c", str(clients), "-t", str(per_client), "-M", mode,
                dbname=dbname, env=client_env(PGAPPNAME=app))
    out = r.stdout.decode()
    done = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))
    assert done == clients * per_client
    def all_ended():
        # pgbench's own first connection is a session too: every session
        # that started must have ended, not just as many as the clients
        evs = [e for e in events(audited) if e.get("client", {}).get("application") == app]
        ends = sum(e["kind"] == "session_end" for e in evs)
        return evs if ends >= clients and ends == sum(e["kind"] == "session_start" for e in evs) else None
    evs = wait_until(all_ended, 15, what="pgbench sessions ended")
    st = [s for s in statements(evs)
          if s["statement"].get("objects") and s["statement"]["objects"][0]["name"].startswith("pgbench_")
          or s["statement"]["command"] in ("BEGIN", "COMMIT")]
    by_cmd = {}
    for s in st:
        assert s["result"]["status"] == "ok", s
        by_cmd[s["statement"]["command"]] = by_cmd.get(s["statement"]["command"], 0) + 1
    assert by_cmd.get("BEGIN") == done and by_cmd.get("COMMIT") == done
    assert by_cmd.get("UPDATE") == 3 * done and by_cmd.get("INSERT") == done
    assert by_cmd.get("SELECT", 0) >= done
    ups = [s for s in st if s["statement"]["command"] == "UPDATE"]
    assert all(s["result"]["rows"] == 1 for s in ups)


def test_repeated_shapes_report_their_own_text(pg, audited, tmp_path):
    """Events of a repeated query shape reuse its encoded analysis fields
    (a per-thread table of 256 slots). Hits must report exactly what a first
    sight reports: more shapes than slots (so slots are shared and
    replaced), each sent again with other literals, and variants that share
    the analysis but not the text (white space, a comment) must each show
    their own text."""
    pg.sql("CREATE TABLE IF NOT EXISTS fragt (id int, note text)")
    shapes = 300
    lines, expected = [], []
    for rnd in range(3):
        for i in range(shapes):
            lit = (i * 7919 + rnd * 104729) % 100000
            if rnd == 2 and i % 2:
                text = "SELECT id AS c%d  FROM fragt /* r%d */ WHERE id = %%s" % (i, rnd)
            elif rnd == 1 and i % 3 == 0:    # same length, other text
                text = "SELECT id  AS c%d FROM fragt WHERE id =%%s" % i
            else:
                text = "SELECT id AS c%d FROM fragt WHERE id = %%s" % i
            lines.append((text % lit) + ";")
            expected.append(text % "$1")
        lines.append("SELECT note FROM fragt WHERE note = 'x%d';" % rnd)
        expected.append("SELECT note FROM fragt WHERE note = $1")
    script = tmp_path / "shapes.sql"
    script.write_text("\n".join(lines) + "\n")
    app = app_name()
    psql(audited, "-q", "-f", str(script), env=client_env(PGAPPNAME=app))
    st = statements(session_events(audited, app))
    assert [s["statement"]["text"] for s in st] == expected
    fingerprints = {}
    for s, text in zip(st, expected):
        stmt = s["statement"]
        assert stmt["command"] == "SELECT" and stmt["class"] == "READ", s
        assert stmt["objects"] == [{"name": "fragt", "type": "table", "access": "read"}], s
        assert stmt["redacted"] is True and stmt["truncated"] is False, s
        assert s["result"]["status"] == "ok", s
        shape = re.sub(r"/\*.*?\*/ |  |=\$", lambda m: {"  ": " ", "=$": "= $"}.get(m.group(0), ""), text)
        assert fingerprints.setdefault(shape, stmt["fingerprint"]) == stmt["fingerprint"], s
    assert len(fingerprints) == shapes + 1


def test_passwords_never_logged(audited):
    app = app_name()
    with audited.connect(application_name=app) as conn:
        conn.execute("CREATE ROLE pgw_alice LOGIN")
        conn.execute("ALTER ROLE pgw_alice PASSWORD 'hunter2'")
        conn.execute("CREATE USER pgw_bob WITH PASSWORD 'xyzzy-secret'")
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute("ALTER ROLE pgw_alice PASSWORD 'hunter2' garbage")
        # what psql's \\password sends: the verifier libpq computed, which
        # is as good as the password to an offline attack
        scram = conn.pgconn.encrypt_password(b"s3cret-scram", b"pgw_alice", b"scram-sha-256")
        md5 = conn.pgconn.encrypt_password(b"s3cret-md5", b"pgw_alice", b"md5")
        conn.execute(b"ALTER USER pgw_alice PASSWORD '" + scram + b"'")
        conn.execute(b"ALTER ROLE pgw_alice WITH LOGIN ENCRYPTED PASSWORD E'" + md5 + b"' VALID UNTIL 'infinity'")
        conn.execute("DROP ROLE pgw_alice")
        conn.execute("DROP USER pgw_bob")
    evs = session_events(audited, app)
    blob = open(audited.audit_path, "rb").read()
    assert b"hunter2" not in blob and b"xyzzy-secret" not in blob
    assert scram.startswith(b"SCRAM-SHA-256$") and md5.startswith(b"md5")
    for secret in (scram, md5, scram.split(b"$")[2].split(b":")[0], md5[3:]):
        assert secret not in blob
    roles = [s for s in statements(evs) if s["statement"].get("class") == "ROLE"]
    assert len(roles) >= 4
    bad = [s for s in statements(evs) if s["result"]["status"] == "error"]
    assert bad and bad[0]["result"]["sqlstate"] == "42601"


def test_copy_events(pg, audited, tmp_path):
    app = app_name()
    src = tmp_path / "rows.txt"
    src.write_text("".join("%d\trow%d\n" % (i, i) for i in range(1000)))
    script = ("CREATE TEMP TABLE c (i int, s text);\n"
              "\\copy c FROM '%s'\n"
              "\\copy c TO '%s'\n" % (src, tmp_path / "out.txt"))
    psql(audited, "-v", "ON_ERROR_STOP=1", input=script.encode(), env=client_env(PGAPPNAME=app))
    st = statements(session_events(audited, app))
    cin = [s for s in st if s.get("copy", {}).get("direction") == "in"]
    cout = [s for s in st if s.get("copy", {}).get("direction") == "out"]
    assert len(cin) == 1 and len(cout) == 1
    assert cin[0]["copy"]["rows"] == 1000 and cin[0]["copy"]["bytes"] == src.stat().st_size
    assert cin[0]["statement"]["class"] == "WRITE"
    assert cout[0]["copy"]["rows"] == 1000 and cout[0]["copy"]["bytes"] == src.stat().st_size
    assert cout[0]["statement"]["class"] == "READ"


def test_large_result_rows_and_bytes(audited):
    app = app_name()
    with audited.connect(application_name=app) as conn:
        n = sum(1 for _ in conn.execute("SELECT repeat('x', 1000) FROM generate_series(1, 50000)"))
    assert n == 50000
    st = statements(session_events(audited, app))
    big = [s for s in st if "generate_series" in s["statement"]["text"]][0]
    assert big["result"]["rows"] == 50000
    assert big["result"]["bytes"] > 50_000_000


def test_auth_failure_event(pg, audited):
    app = app_name()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host=audited.host, port=audited.port, user="pgw_no_such_user",
                        dbname="postgres", application_name=app, connect_timeout=5)
    evs = session_events(audited, app, want_end=False)
    fail = [e for e in evs if e["kind"] == "auth_failure"]
    assert len(fail) == 1 and fail[0]["result"]["sqlstate"] == "28000"
    assert fail[0]["user"]["name"] == "pgw_no_such_user"
    assert not [e for e in evs if e["kind"] in ("session_start", "session_end")]


def test_concurrent_sessions_each_complete(audited):
    app = app_name()
    errors = []

    def work(i):
        try:
            with audited.connect(application_name=app) as conn:
                for j in range(10):
                    conn.execute("SELECT %s::int + %s::int", (i, j))
        except Exception as e:
            errors.append(e)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors

    def all_ended():
        evs = [e for e in events(audited) if e.get("client", {}).get("application") == app]
        return evs if sum(e["kind"] == "session_end" for e in evs) == 20 else None
    evs = wait_until(all_ended, 15, what="20 sessions ended")
    per_session = {}
    for e in evs:
        per_session.setdefault(e["session"]["id"], []).append(e)
    assert len(per_session) == 20
    for sid, es in per_session.items():
        assert [e["session"]["seq"] for e in es] == list(range(1, len(es) + 1))
        assert sum(e["kind"] == "statement" for e in es) == 10


def test_big_statement_does_not_stall_other_sessions(pg, start_proxy, tmp_path):
    """A 2 MB INSERT ... VALUES takes the parser half a second: it is parsed
    off the loop, so another session on the same (only) loop thread keeps
    its usual latency meanwhile, and the big statement still gets its
    event: the analysis of the whole statement, its text cut at the
    default 64 KiB."""
    audit = tmp_path / "audit.jsonl"
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port, threads=1,
                    extra_args=["--audit-file", str(audit)])
    p.audit_path = audit
    rows = ",".join("(%d, 'value number %d')" % (i, i) for i in range(60000))
    big_sql = "INSERT INTO big_ins VALUES " + rows
    assert len(big_sql) > 1_500_000
    with p.connect() as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS big_ins (i int, s text)")
    lat, stop = [], threading.Event()

    def pinger():
        with p.connect(application_name="pinger") as c:
            while not stop.is_set():
                t0 = time.monotonic()
                c.execute("SELECT 1")
                lat.append(time.monotonic() - t0)
    th = threading.Thread(target=pinger)
    th.start()
    try:
        time.sleep(0.3)
        app = app_name()
        with p.connect(application_name=app) as conn:
            for _ in range(3):
                conn.execute(big_sql)
        time.sleep(0.3)
    finally:
        stop.set()
        th.join()
    assert len(lat) > 50
    # The parse of one of these statements takes ~0.4 s (seconds under
    # AddressSanitizer); what stays on the loop (framing, the lexer's split)
    # is linear and fast, several times slower under the sanitizer.
    limit = 1.0 if os.environ.get("PGW_SANITIZED") else 0.2
    assert max(lat) < limit, "a session stalled for %.3f s while big statements were analysed" % max(lat)
    evs = session_events(p, app)
    assert evs[-1]["kind"] == "session_end", "session_end must follow the statements parsed off the loop"
    assert [e["session"]["seq"] for e in evs] == list(range(1, len(evs) + 1)), "in the order of seq"
    st = statements(evs)
    big = [s for s in st if s["statement"]["command"] == "INSERT"]
    assert len(big) == 3
    for s in big:
        assert s["result"]["rows"] == 60000
        assert s["statement"]["objects"] == [{"name": "big_ins", "type": "table", "access": "write"}]
        assert "value number" not in s["statement"]["text"]
        text = s["statement"]["text"]
        assert s["statement"]["truncated"] is True and 65536 - 8 < len(text.encode()) <= 65536
        assert text.startswith("INSERT INTO big_ins VALUES ($1, $2),($3, $4)")
    with p.connect() as setup:
        setup.execute("DROP TABLE big_ins")


def test_statement_text_cut_at_the_configured_length(pg, start_proxy, tmp_path):
    """--statement-max-bytes: a longer text is cut there, never inside a
    character, and marked truncated; the analysis is of the whole statement
    (the relation named after the cut is listed); shorter texts are whole."""
    audit = tmp_path / "audit.jsonl"
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port,
                    extra_args=["--audit-file", str(audit), "--statement-max-bytes", "1024"])
    p.audit_path = audit
    app = app_name()
    # 1023 bytes of SQL (no literal: the text is the client's), a two-byte
    # character across the cut, then relations only the full text names
    head = "SELECT c.relname AS k" + "k" * 986 + ", c.relname AS \""
    sql = head + "é\" FROM pg_namespace n, pg_class c"
    assert len(head.encode()) == 1023
    with p.connect(application_name=app) as conn:
        conn.execute(sql)
        conn.execute("SELECT 'short'")
    long_, short = statements(session_events(p, app))
    st = long_["statement"]
    assert st["truncated"] is True and st["text"] == head
    assert [o["name"] for o in st["objects"]] == ["pg_namespace", "pg_class"]
    assert short["statement"]["truncated"] is False and short["statement"]["text"] == "SELECT $1"


def with_asyncpg(proxy, app, body):
    """Runs the coroutine body(conn) on an asyncpg connection through the
    proxy, with application_name app."""
    asyncpg = pytest.importorskip("asyncpg")
    import asyncio

    async def run():
        conn = await asyncpg.connect(host=proxy.host, port=proxy.port, user=SUPERUSER,
                                     database="postgres", server_settings={"application_name": app},
                                     ssl=False)
        try:
            await body(conn)
        finally:
            await conn.close()
    asyncio.run(run())


def test_asyncpg_binary_parameters(audited):
    app = app_name()

    async def body(conn):
        assert await conn.fetchval("SELECT $1::int8 + $2::int8", 40, 2) == 42
        stmt = await conn.prepare("SELECT $1::bytea || $2::bytea")
        for i in range(5):
            assert await stmt.fetchval(b"\x00\x01", bytes([i])) == b"\x00\x01" + bytes([i])
        await conn.executemany("SELECT $1::text", [("a",), ("b",), ("c",)])
    with_asyncpg(audited, app, body)
    st = statements(session_events(audited, app))
    add = [s for s in st if "int8 + " in s["statement"]["text"]]
    assert len(add) == 1
    assert add[0]["statement"]["protocol"] == "extended"
    assert add[0]["statement"]["params"]["count"] == 2
    assert add[0]["statement"]["statement_name"].startswith("__asyncpg_stmt_")
    assert add[0]["result"]["rows"] == 1
    cat = [s for s in st if "bytea ||" in s["statement"]["text"]]
    assert len(cat) == 5 and len({s["statement"]["statement_name"] for s in cat}) == 1
    assert all(s["result"]["status"] == "ok" and s["statement"]["params"]["count"] == 2 for s in cat)
    many = [s for s in st if s["statement"]["text"].startswith("SELECT $1::text")]
    assert len(many) == 3


def test_asyncpg_cursor_fetches_sum_their_rows(audited):
    """A cursor read in pieces is one execution of one portal, suspended
    between fetches: one event, whose rows are every row the client got, not
    the count of the last piece that the server's tag carries."""
    app = app_name()

    async def body(conn):
        async with conn.transaction():
            cur = await conn.cursor("SELECT g FROM generate_series(1, 25) g WHERE g > $1", 0)
            got = [len(await cur.fetch(10)) for _ in range(3)]
            assert got == [10, 10, 5]
        async with conn.transaction():
            # Iteration prefetches 50 rows at a time: the last fetch finds
            # nothing left, and the server's tag says "SELECT 0".
            n = 0
            async for _ in conn.cursor("SELECT g, 'x' FROM generate_series(1, 250) g"):
                n += 1
            assert n == 250
        async with conn.transaction():
            cur = await conn.cursor("SELECT g, 'y' FROM generate_series(1, 100) g")
            assert len(await cur.fetch(30)) == 30
    with_asyncpg(audited, app, body)
    st = statements(session_events(audited, app))
    runs = [s for s in st if "generate_series" in s["statement"]["text"]]
    assert len(runs) == 3, [s["statement"]["text"] for s in runs]
    assert all(s["result"]["status"] == "ok" and s["statement"]["portal_name"].startswith("__asyncpg_portal_")
               for s in runs)
    assert [s["result"]["rows"] for s in runs] == [25, 250, 30]
    assert runs[0]["result"]["tag"] == "SELECT 5" and runs[1]["result"]["tag"] == "SELECT 0"
    # The portal closed by COMMIT before it was exhausted carries no tag.
    assert "tag" not in runs[2]["result"]


PGJDBC = "org.postgresql:postgresql:42.7.14"


def _pgjdbc_jar():
    group, artifact, version = PGJDBC.split(":")
    return (Path.home() / ".m2" / "repository" / group.replace(".", "/") / artifact / version
            / ("%s-%s.jar" % (artifact, version)))


def test_jdbc_prepared_batch_and_error(audited, tmp_path):
    jar = _pgjdbc_jar()
    assert jar.exists(), "%s missing: scripts/install-deps.sh fetches it with Maven" % jar
    src = Path(__file__).parent / "jdbc" / "AuditProbe.java"
    subprocess.run(["javac", "-d", str(tmp_path), "-cp", str(jar), str(src)], check=True)
    app = app_name()
    r = subprocess.run(["java", "-cp", "%s:%s" % (tmp_path, jar), "AuditProbe",
                        audited.host, str(audited.port), app],
                       capture_output=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == b"ok", r.stderr.decode()[-3000:]
    st = statements(session_events(audited, app))
    mult = [s for s in st if "::int *" in s["statement"]["text"]]
    assert len(mult) == 6
    assert all(s["statement"]["protocol"] == "extended" and s["result"]["rows"] == 1
               and s["statement"]["params"]["count"] == 1 for s in mult)
    # pgjdbc switches to a named server-side statement after prepareThreshold uses.
    assert mult[0]["statement"]["statement_name"] == ""
    assert mult[-1]["statement"]["statement_name"].startswith("S_")
    ins = [s for s in st if s["statement"]["command"] == "INSERT"]
    assert len(ins) == 10 and all(s["result"]["rows"] == 1 for s in ins)
    assert all(s["statement"]["params"]["count"] == 2 for s in ins)
    # One execution fetched 40 rows at a time: one event, every row counted
    # (the server's last tag says only "SELECT 10").
    fetched = [s for s in st if "generate_series" in s["statement"]["text"]]
    assert len(fetched) == 1, fetched
    assert fetched[0]["result"]["rows"] == 130 and fetched[0]["result"]["status"] == "ok"
    assert fetched[0]["result"]["tag"] == "SELECT 10"
    err = [s for s in st if s["result"]["status"] == "error"]
    assert len(err) == 1 and err[0]["result"]["sqlstate"] == "22012"
    assert b"secret-" not in open(audited.audit_path, "rb").read()


def test_audit_file_rotation_by_size(pg, start_proxy, tmp_path):
    """--audit-file-max-bytes: every file stays under the limit and ends on
    a whole event, --audit-file-keep files are kept, and the kept files,
    oldest first, hold one session's events with consecutive seq up to its
    session_end. With --audit-file-fsync-ms the file is fdatasync'ed."""
    path = tmp_path / "audit.jsonl"
    limit = 8192
    metrics_port = free_port()
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port,
                    extra_args=["--audit-file", str(path), "--audit-file-max-bytes", str(limit),
                                "--audit-file-keep", "3", "--audit-file-fsync-ms", "20",
                                "--metrics-listen", "127.0.0.1:%d" % metrics_port])
    p.audit_path = path
    app = app_name()
    with p.connect(application_name=app) as conn:
        for i in range(80):
            conn.execute("SELECT %s::int AS n, repeat('x', 100)", (i,))
    session_events(p, app)
    files = [Path("%s.%d" % (path, i)) for i in (3, 2, 1)] + [path]
    assert all(f.exists() for f in files), sorted(os.listdir(tmp_path))
    assert not Path("%s.4" % path).exists()
    seqs = []
    for f in files:
        data = f.read_bytes()
        assert 0 < len(data) <= limit and data.endswith(b"\n"), (f, len(data))
        assert_valid_audit_file(f)
        seqs += [e["session"]["seq"] for e in events_in(f) if e["client"].get("application") == app]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    assert seqs[0] > 1          # the oldest files were rotated away
    assert events_in(path)[-1]["kind"] == "session_end"
    # Writes are synced within the interval: fdatasync was called.
    metrics = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % metrics_port, timeout=10).read().decode()
    rotations = int(re.search(r"\npgwarden_audit_file_rotations_total (\d+)\n", metrics).group(1))
    assert rotations >= 4, metrics
    assert int(re.search(r"\npgwarden_audit_file_fsyncs_total (\d+)\n", metrics).group(1)) >= 1


def test_sighup_reopens_the_audit_file(pg, start_proxy, tmp_path):
    """logrotate's way: the file is moved away, SIGHUP makes pgwarden create
    a new one at its path; the moved file keeps what came before, the new
    one (mode 0600) what came after, and no event is lost or doubled."""
    path = tmp_path / "audit.jsonl"
    metrics_port = free_port()
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port,
                    extra_args=["--audit-file", str(path), "--metrics-listen", "127.0.0.1:%d" % metrics_port])
    p.audit_path = path
    before, after = app_name(), app_name()
    with p.connect(application_name=before) as conn:
        conn.execute("SELECT 1")
    session_events(p, before)
    moved = tmp_path / "audit.jsonl.1"
    os.rename(path, moved)
    p.signal(signal.SIGHUP)
    wait_until(path.exists, 10, what="the audit file reopened at its path")
    with p.connect(application_name=after) as conn:
        conn.execute("SELECT 2")
    new = session_events(p, after)
    old = events_in(moved)
    assert [e["kind"] for e in new] == ["session_start", "statement", "session_end"]
    assert not [e for e in old if e["client"].get("application") == after]
    assert [e["kind"] for e in old if e["client"].get("application") == before] == [
        "session_start", "statement", "session_end"]
    assert not [e for e in events_in(path) if e["client"].get("application") == before]
    assert (path.stat().st_mode & 0o777) == 0o600
    assert "audit file %s reopened" % path in p.stderr_path.read_text()
    metrics = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % metrics_port, timeout=10).read().decode()
    assert "\npgwarden_audit_file_reopens_total 1\n" in metrics, metrics
    assert "\npgwarden_audit_file_rotations_total 0\n" in metrics


NODE_DIR = Path(__file__).parent / "node"


def test_node_postgres_named_statement_and_error(audited):
    """node-postgres (tests/integration/node): a query without parameters
    goes as a simple Query, one with parameters as Parse/Bind/Execute; a
    named statement is parsed once and its next executions carry only its
    name, which must still give its text."""
    assert (NODE_DIR / "node_modules" / "pg").exists(), \
        "node-postgres missing: scripts/install-deps.sh installs it with npm ci"
    app = app_name()
    r = subprocess.run(["node", str(NODE_DIR / "audit_probe.js"), audited.host, str(audited.port), app],
                       capture_output=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == b"ok", r.stderr.decode()[-3000:]
    st = statements(session_events(audited, app))
    got = [(s["statement"]["protocol"], s["statement"]["text"], s["statement"].get("statement_name"),
            s["statement"].get("params", {}).get("count"), s["result"]["status"],
            s["result"].get("rows"), s["result"].get("sqlstate")) for s in st]
    ins = ("extended", "INSERT INTO n VALUES ($1, $2)", "probe_insert", 2, "ok", 1, None)
    assert got == [
        ("simple", "SELECT $1 + $2 AS answer", None, None, "ok", 1, None),
        ("simple", "CREATE TEMP TABLE n (i int, s text)", None, None, "ok", None, None),
        ins, ins, ins,
        ("extended", "SELECT i, s FROM n WHERE i >= $1 ORDER BY i", "", 1, "ok", 2, None),
        ("simple", "BEGIN", None, None, "ok", None, None),
        ("extended", "SELECT $1::int / $2", "", 1, "error", None, "22012"),
        ("simple", "ROLLBACK", None, None, "ok", None, None),
        ("simple", "SELECT count(*)::int AS n FROM n", None, None, "ok", 1, None),
    ], got
    assert b"node-secret-" not in open(audited.audit_path, "rb").read()


def test_parameter_values_only_when_enabled(pg, audited, start_proxy, tmp_path):
    import base64
    # Off by default: the count, never the values.
    app = app_name()
    with audited.connect(application_name=app) as conn:
        conn.execute("SELECT %s::text, %s::int", ("visible-only-if-enabled", 7))
    st = statements(session_events(audited, app))
    assert st[-1]["statement"]["params"] == {"count": 2}
    assert b"visible-only-if-enabled" not in open(audited.audit_path, "rb").read()

    audit = tmp_path / "audit.jsonl"
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port,
                    extra_args=["--audit-file", str(audit), "--log-parameters",
                                "--parameter-max-bytes", "8"])
    p.audit_path = audit
    app = app_name()
    with p.connect(application_name=app) as conn:
        conn.execute("SELECT %s::text, %s::int, %s::text", ("abc", 7, None))
        conn.execute("SELECT %b::bytea", (b"\x00\xff\x10",), binary=True)
        conn.execute("SELECT %s::text", ("0123456789abcdef",))
    st = statements(session_events(p, app))
    # psycopg sends the int in binary (int2 7): base64 of its two bytes
    assert st[-3]["statement"]["params"] == {"count": 3, "values": ["abc", base64.b64encode(b"\x00\x07").decode(), None]}
    assert st[-2]["statement"]["params"]["values"] == [base64.b64encode(b"\x00\xff\x10").decode()]
    assert st[-1]["statement"]["params"]["values"] == ["01234567"]
