"""The access policy (--policy-file, docs/policy.md): connection rules and
statement rules, enforced or dry-run, with their denied events, through
real clients (psql, psycopg's extended protocol and pipeline mode) against
a dedicated PostgreSQL cluster that logs every statement it receives, so
that "the denied statement never reached the server" is checked on the
server's side."""

import json
import re
import signal
import struct
import subprocess
import time
import urllib.request
import uuid

import psycopg
import pytest
from psycopg import errors, pq

import pgwire
from harness import audit_events, free_port, running_cluster, wait_until
from harness import psql as _psql


def psql(*args, **kw):
    kw.setdefault("text", True)
    return _psql(*args, **kw)
from test_event_schema import assert_valid_audit_file

RULES = """\
# pgwarden access policy for the tests
group admins  boss
group bulk    loader

connection deny          name=no_mallory   user=mallory
connection max-sessions=2 name=two_each    user=limited
connection require-tls   name=tls_for_secure user=secure
connection deny          name=no_v4_for_six  user=six address=127.0.0.0/8
connection deny          name=no_v6_for_four user=four address=::1/128
connection deny          name=dry_conn     user=watched_login dry-run

statement allow      name=admins_anything  user=+admins
statement deny       name=no_drop          command="DROP TABLE",TRUNCATE
statement deny       name=no_program       command="COPY TO PROGRAM","COPY FROM PROGRAM"
statement deny       name=no_alter_system  command="ALTER SYSTEM"
statement deny       name=private_schema   relation=private.*
statement deny       name=ledger_writes    relation=public.ledger:write user=app,+bulk
statement require-where name=where_guard
statement read-only  name=reporting        user=report
statement deny       name=app_no_ddl       class=DDL,ROLE user=app
statement deny       name=watch_secrets    relation=public.watched dry-run
statement deny       name=odd_name         relation="odd'q\\$pgw$"
"""

ROLES = ["app", "report", "boss", "loader", "mallory", "limited", "secure", "six", "four",
         "watched_login", "nobody", "alice", "carol"]


@pytest.fixture(scope="module")
def lpg():
    """A cluster of its own that logs every statement it receives."""
    with running_cluster(extra_conf="log_statement = 'all'\nlog_min_messages = warning\n") as cluster:
        yield setup_lpg(cluster)


def setup_lpg(cluster):
    for r in ROLES:
        cluster.sql(f"CREATE ROLE {r} LOGIN")
    cluster.sql("CREATE SCHEMA private; CREATE TABLE private.keys (k text); "
                "CREATE TABLE ledger (id int, amount int); CREATE TABLE t (id int); "
                "CREATE TABLE watched (id int); INSERT INTO watched VALUES (1); "
                "CREATE TABLE \"odd'q\\$pgw$\" (id int); "
                "GRANT ALL ON ALL TABLES IN SCHEMA public, private TO PUBLIC; "
                "GRANT USAGE, CREATE ON SCHEMA private, public TO PUBLIC")
    return cluster


def server_saw(cluster, sql):
    """Whether the server received sql as a statement (simple protocol:
    "statement: ...", extended: "execute <name>: ...")."""
    text = cluster.logfile.read_text(errors="replace")
    return re.search(r"(statement|execute [^:]*): " + re.escape(sql) + r"\s*$", text, re.M) is not None


def events(path, kind=None):
    return audit_events(path, kind)


def wait_denied(p, rule, n=1):
    return wait_until(lambda: [e for e in events(p.audit_path, "denied") if e["rule"] == rule]
                      if len([e for e in events(p.audit_path, "denied") if e["rule"] == rule]) >= n
                      else None, 10, what=f"{n} denied event(s) of rule {rule}")


@pytest.fixture(scope="module")
def rules_file(run_dir):
    path = run_dir / "policy-rules.conf"
    path.write_text(RULES)
    return path


@pytest.fixture
def pol(lpg, rules_file, start_proxy, tmp_path):
    """pgwarden with the rules file, an audit file and metrics, listening
    on IPv4 and IPv6 loopback."""
    rules_file.write_text(RULES)
    audit = tmp_path / "audit.jsonl"
    mport = free_port()
    p = start_proxy(listen=["127.0.0.1:%d" % free_port(), "[::1]:%d" % free_port()],
                    upstream="127.0.0.1:%d" % lpg.port,
                    extra_args=["--policy-file", str(rules_file), "--audit-file", str(audit),
                                "--metrics-listen", "127.0.0.1:%d" % mport])
    p.audit_path = audit
    p.metrics_port = mport
    p.rules_file = rules_file
    yield p
    p.stop()
    assert_valid_audit_file(audit)


def connect(p, user, host=None, **kw):
    return psycopg.connect(p.dsn(user=user, host=host or p.host, **kw), autocommit=True,
                           connect_timeout=10)


def count(cluster, table):
    return cluster.sql(f"SELECT count(*) FROM {table}")[0][0]


# ---------------------------------------------------------------- the rules file

def test_bad_rules_file_is_refused_with_file_and_line(lpg, tmp_path):
    from harness import PGW_BINARY
    bad = tmp_path / "bad.conf"
    bad.write_text("# fine\nstatement deny name=x command=\"DROP TABLE\"\nstatement forbid user=a\n")
    r = subprocess.run([str(PGW_BINARY), "--upstream", "127.0.0.1:%d" % lpg.port,
                        "--listen", "127.0.0.1:%d" % free_port(), "--policy-file", str(bad),
                        "--check-config"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert f"{bad}:3:" in r.stderr and "expected allow, deny" in r.stderr
    for text, why in [("connection deny address=300.1.1.1/8\n", "IPv4 or IPv6"),
                      ("connection deny class=DDL\n", "statement rules only"),
                      ("statement deny relation=*\n", "needs a schema"),
                      ("statement deny name=a\nstatement deny name=a\n", "two rules are named"),
                      ("connection max-sessions=x\n", "max-sessions=N")]:
        bad.write_text(text)
        r = subprocess.run([str(PGW_BINARY), "--upstream", "127.0.0.1:%d" % lpg.port,
                            "--listen", "127.0.0.1:%d" % free_port(), "--policy-file", str(bad)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, text
        assert why in r.stderr and str(bad) in r.stderr, r.stderr


# ---------------------------------------------------------------- statements, simple protocol

def test_psql_denied_statement_never_reaches_server(pol, lpg):
    lpg.sql("CREATE TABLE IF NOT EXISTS victim_a (id int)")
    r = psql(pol, "-c", "DROP TABLE victim_a", user="app", check=False)
    assert r.returncode != 0
    assert 'pgwarden rule "no_drop"' in r.stderr
    assert lpg.sql("SELECT to_regclass('victim_a') IS NOT NULL")[0][0]
    assert not server_saw(lpg, "DROP TABLE victim_a")
    # the same session goes on: a script with the error in the middle
    r = psql(pol, "-v", "ON_ERROR_STOP=0", "-c", "TRUNCATE ledger", "-c", "SELECT 40 + 2",
             user="app", check=False)
    assert "no_drop" in r.stderr and "42" in r.stdout
    assert not server_saw(lpg, "TRUNCATE ledger")
    assert server_saw(lpg, "SELECT 40 + 2")
    (e,) = wait_denied(pol, "no_drop", 2)[:1]
    assert e["enforced"] is True and e["result"]["sqlstate"] == "42501"
    assert e["statement"]["command"] == "DROP TABLE" and e["statement"]["protocol"] == "simple"
    assert e["user"]["name"] == "app"
    metrics = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % pol.metrics_port, timeout=10).read().decode()
    m = re.search(r'^pgwarden_denied_total\{kind="statement"\} (\d+)$', metrics, re.M)
    assert m and int(m.group(1)) == 2, metrics


def test_psql_error_fields(pol, lpg):
    r = psql(pol, "-v", "VERBOSITY=verbose", "-c", "ALTER SYSTEM SET work_mem = '64MB'",
             user="app", check=False)
    assert "42501" in r.stderr and "no_alter_system" in r.stderr, r.stderr
    # the refusal is pgwarden's: no PL/pgSQL context or server source location
    assert "CONTEXT" not in r.stderr and "LOCATION" not in r.stderr, r.stderr
    assert not server_saw(lpg, "ALTER SYSTEM SET work_mem = '64MB'")
    with pgwire.connect((pol.host, pol.port)) as c:
        c.startup("app")
        for sql in ("TRUNCATE ledger", "SELECT 1; DROP TABLE t"):
            rows, err = c.simple_query(sql)
            assert err["C"] == "42501" and err["S"] == "ERROR" and "no_drop" in err["M"], err
            assert not {"W", "F", "L", "R"} & set(err), err
        # the server's own errors keep every field
        rows, err = c.simple_query("DO $$BEGIN RAISE EXCEPTION USING ERRCODE = '42501', "
                                   "MESSAGE = 'permission denied for the test'; END$$")
        assert err["W"].startswith("PL/pgSQL function inline_code_block") and "F" in err, err
        assert c.simple_query("SELECT 2") == ([["2"]], None)


def test_multi_statement_query_with_one_denied_runs_nothing(pol, lpg):
    before = count(lpg, "t")
    r = psql(pol, "-c", "INSERT INTO t VALUES (101); DROP TABLE ledger; INSERT INTO t VALUES (102)",
             user="app", check=False)
    assert r.returncode != 0 and "no_drop" in r.stderr
    assert count(lpg, "t") == before
    assert lpg.sql("SELECT to_regclass('ledger') IS NOT NULL")[0][0]
    (e,) = wait_denied(pol, "no_drop")[-1:]
    assert e["statement"]["index"] == 2 and e["statement"]["count"] == 3


def test_denied_inside_transaction_block_fails_it(pol, lpg):
    script = ("BEGIN;\nINSERT INTO t VALUES (201);\nDELETE FROM t;\nSELECT 'after';\n"
              "COMMIT;\nSELECT 'next transaction';\n")
    r = psql(pol, "-v", "ON_ERROR_STOP=0", user="app", input=script, check=False)
    out = r.stdout + r.stderr
    assert "where_guard" in out
    assert "current transaction is aborted" in out          # as PostgreSQL does
    assert "ROLLBACK" in r.stdout                          # COMMIT of a failed block
    assert "next transaction" in r.stdout
    assert lpg.sql("SELECT count(*) FROM t WHERE id = 201")[0][0] == 0
    assert not server_saw(lpg, "DELETE FROM t")


def test_psycopg_transaction_status_after_denial(pol, lpg):
    with psycopg.connect(pol.dsn(user="app"), autocommit=False) as conn:
        conn.execute("INSERT INTO t VALUES (301)")
        with pytest.raises(errors.InsufficientPrivilege) as ei:
            conn.execute("UPDATE t SET id = 0")
        assert "where_guard" in str(ei.value)
        assert conn.info.transaction_status == pq.TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
        conn.execute("UPDATE t SET id = 302 WHERE id = 301")   # allowed: has WHERE
        conn.commit()
    assert lpg.sql("SELECT count(*) FROM t WHERE id IN (301, 302)")[0][0] == 0


# ---------------------------------------------------------------- extended protocol and pipelines

def test_extended_protocol_denied_and_allowed(pol, lpg):
    with connect(pol, "app") as conn:
        with pytest.raises(errors.InsufficientPrivilege) as ei:
            conn.execute("INSERT INTO ledger VALUES (%s, %s)", (1, 100))
        assert "ledger_writes" in str(ei.value)
        assert conn.execute("SELECT count(*) FROM ledger WHERE id = %s", (1,)).fetchone() == (0,)
        conn.execute("INSERT INTO t VALUES (%s)", (401,))
        # prepared: the refusal holds for every execution of the statement
        for i in range(6):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute("DELETE FROM ledger WHERE id = %s", (i,), prepare=True)
        assert conn.execute("SELECT %s::int + 1", (1,), prepare=True).fetchone() == (2,)
    assert count(lpg, "ledger") == 0
    assert lpg.sql("SELECT count(*) FROM t WHERE id = 401")[0][0] == 1
    assert not server_saw(lpg, "INSERT INTO ledger VALUES ($1, $2)")
    assert not server_saw(lpg, "DELETE FROM ledger WHERE id = $1")
    assert server_saw(lpg, "INSERT INTO t VALUES ($1)")
    ev = wait_denied(pol, "ledger_writes")     # the file writer may not have them yet
    assert all(e["statement"]["protocol"] == "extended" for e in ev)
    assert any(o["name"] == "ledger" and o["access"] == "write" for o in ev[0]["statement"]["objects"])


def test_pipeline_with_denied_execute_in_the_middle(pol, lpg):
    with connect(pol, "app") as conn:
        cur = conn.cursor()
        with pytest.raises(errors.InsufficientPrivilege):
            with conn.pipeline() as p:
                cur.execute("INSERT INTO t VALUES (%s)", (501,))
                cur.execute("TRUNCATE t")
                cur.execute("INSERT INTO t VALUES (%s)", (502,))
                p.sync()
        # the pipeline is in sync again: later statements work
        with conn.pipeline():
            cur.execute("INSERT INTO t VALUES (%s)", (503,))
            cur.execute("SELECT count(*) FROM t WHERE id = %s", (503,))
            assert cur.fetchone() == (1,)
    got = {r[0] for r in lpg.sql("SELECT id FROM t WHERE id BETWEEN 501 AND 503")}
    assert 503 in got and 502 not in got   # after the error the batch was skipped until Sync
    assert not server_saw(lpg, "TRUNCATE t")


def test_pipeline_waiting_on_a_long_parse_keeps_its_order(pol, lpg):
    """One write holding a short Parse/Bind/Execute, a Parse over 4 KiB that
    misses the analysis cache (parsed off the loop while the rest waits at
    the gate), a refused statement and more after it, then Sync: everything
    reaches the server in order, the refused one and what follows it are
    skipped until Sync, and the next batch works."""
    tag = uuid.uuid4().int % 1000000
    long_in = ",".join(str(tag * 10000 + i) for i in range(900))
    with connect(pol, "app") as conn:
        cur = conn.cursor()
        with conn.pipeline() as p:
            cur.execute("INSERT INTO t VALUES (%s)", (tag,))
            cur.execute(f"SELECT count(*) FROM t WHERE id IN ({long_in}) OR id = %s", (tag,))
            p.sync()
            assert cur.fetchone() == (1,)
        with pytest.raises(errors.InsufficientPrivilege):
            with conn.pipeline() as p:
                cur.execute(f"SELECT count(*) FROM t WHERE id IN ({long_in}, 1) OR id = %s", (tag,))
                cur.execute("INSERT INTO ledger VALUES (%s, 1)", (tag,))
                cur.execute("INSERT INTO t VALUES (%s)", (tag + 1,))
                p.sync()
        with conn.pipeline():
            cur.execute("SELECT count(*) FROM t WHERE id IN (%s, %s)", (tag, tag + 1))
            assert cur.fetchone() == (1,)
    assert count(lpg, "ledger") == 0
    assert wait_denied(pol, "ledger_writes")


def test_pgbench_pipeline_stays_in_sync(pol, lpg, tmp_path):
    script = tmp_path / "denied.sql"
    script.write_text("\\startpipeline\nSELECT 1;\nDELETE FROM watched;\nSELECT 2;\n\\endpipeline\n")
    from harness import pg_tool, run
    r = run([pg_tool("pgbench"), "-h", pol.host, "-p", str(pol.port), "-U", "app", "-n", "-M",
             "extended", "-t", "3", "-f", str(script), "postgres"], check=False, text=True)
    out = r.stdout + r.stderr
    assert "where_guard" in out, out
    assert count(lpg, "watched") == 1
    with connect(pol, "app") as conn:       # and the proxy still serves
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_copy_program_and_relations(pol, lpg):
    with connect(pol, "app") as conn:
        with pytest.raises(errors.InsufficientPrivilege) as ei:
            conn.execute("COPY t TO PROGRAM 'cat > /dev/null'")
        assert "no_program" in str(ei.value)
        with pytest.raises(errors.InsufficientPrivilege) as ei:
            conn.execute("SELECT * FROM private.keys")
        assert "private_schema" in str(ei.value)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE app_table (x int)")
        # allowed for others: the same relation read by its schema-less name is fine
        assert conn.execute("SELECT count(*) FROM ledger").fetchone() == (0,)


def test_refusal_message_with_quotes_backslash_and_dollars(pol, lpg):
    """The refusal names the relation; its quote, backslash and $pgw$ must
    not break out of the statement that carries the refusal to the server."""
    with connect(pol, "app") as conn:
        with pytest.raises(errors.InsufficientPrivilege) as ei:
            conn.execute("SELECT * FROM \"odd'q\\$pgw$\"")
        assert ei.value.diag.message_primary.endswith("on odd'q\\$pgw$ (read)"), ei.value.diag.message_primary
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_read_only_identity_and_groups(pol, lpg):
    with connect(pol, "report") as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] >= 0
        with pytest.raises(errors.InsufficientPrivilege) as ei:
            conn.execute("INSERT INTO t VALUES (601)")
        assert "reporting" in str(ei.value)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE report_table (x int)")
    with connect(pol, "loader") as conn:        # +bulk
        with pytest.raises(errors.InsufficientPrivilege) as ei:
            conn.execute("INSERT INTO ledger VALUES (1, 1)")
        assert "ledger_writes" in str(ei.value)
    with connect(pol, "boss") as conn:          # +admins: allowed anything
        conn.execute("CREATE TABLE boss_table (x int)")
        conn.execute("DROP TABLE boss_table")
    assert server_saw(lpg, "DROP TABLE boss_table")
    assert lpg.sql("SELECT count(*) FROM t WHERE id = 601")[0][0] == 0


def test_function_call_is_checked(pol, lpg):
    """A FunctionCall (PQfn) is a statement of class FUNCTION for the rules:
    a read-only identity's call is refused with 42501 and the session goes
    on; another identity's call runs."""
    oid = int(lpg.sql("SELECT 'pg_backend_pid'::regproc::oid")[0][0])
    with pgwire.connect((pol.host, pol.port)) as c:
        c.startup("report")
        msgs = c.function_call(oid)
        errs = [pgwire.parse_error_fields(b) for t, b in msgs if t == "E"]
        assert [t for t, _ in msgs][-1] == "Z" and "V" not in [t for t, _ in msgs]
        assert errs and errs[0]["C"] == "42501" and "reporting" in errs[0]["M"], msgs
        assert c.simple_query("SELECT 1") == ([["1"]], None)      # still usable
    with pgwire.connect((pol.host, pol.port)) as c:
        c.startup("nobody")
        msgs = c.function_call(oid)
        (v,) = [b for t, b in msgs if t == "V"]
        assert struct.unpack("!i", v[:4])[0] > 0 and int(v[4:]) == c.backend_pid
    (d,) = wait_denied(pol, "reporting")
    assert d["statement"] == {"command": "FUNCTION CALL", "class": "FUNCTION", "protocol": "function_call",
                              "text": "FUNCTION CALL OID %d ()" % oid, "redacted": True, "truncated": False}
    assert d["enforced"] is True and d["result"]["sqlstate"] == "42501"
    def calls_recorded():
        calls = [e for e in events(pol.audit_path, "statement")
                 if e["statement"]["protocol"] == "function_call"]
        return calls if len(calls) >= 2 else None
    calls = wait_until(calls_recorded, 10, what="the function calls' statement events")
    assert sorted(e["result"]["status"] for e in calls) == ["error", "ok"]


def test_function_rules(lpg, start_proxy, tmp_path):
    """function= refuses a statement that calls one of the functions, by
    either protocol (psycopg's extended, psql's simple) and wherever the
    call sits (FROM, a subquery, nested arguments, a CTE); psql's
    \\lo_export, which reads the object by FunctionCall (loread), is
    refused too; other calls run."""
    rules = tmp_path / "functions.conf"
    rules.write_text("statement deny name=server_files function=pg_catalog.pg_read_file,pg_ls_dir,loread\n"
                     "statement deny name=no_sleep_dry function=pg_sleep dry-run\n")
    audit = tmp_path / "audit.jsonl"
    p = start_proxy(upstream="127.0.0.1:%d" % lpg.port,
                    extra_args=["--policy-file", str(rules), "--audit-file", str(audit)])
    refused = ["SELECT pg_read_file('postgresql.conf')",
               "SELECT count(*) FROM pg_ls_dir('.')",
               "SELECT 1 WHERE 'x' IN (SELECT upper(pg_read_file('PG_VERSION')))",
               "WITH f AS (SELECT * FROM pg_catalog.pg_ls_dir('base')) SELECT count(*) FROM f"]
    with psycopg.connect(p.dsn(user="postgres"), autocommit=True) as conn:
        for sql in refused:
            with pytest.raises(errors.InsufficientPrivilege) as ei:
                conn.execute(sql)
            assert 'rule "server_files"' in str(ei.value) and "calls pg_" in str(ei.value), sql
        with pytest.raises(errors.InsufficientPrivilege):       # extended protocol, parameters
            conn.execute("SELECT pg_read_file(%s)", ("PG_VERSION",), prepare=True)
        assert conn.execute("SELECT lower(%s)", ("A",)).fetchone() == ("a",)
        assert conn.execute("SELECT pg_sleep(0)").fetchone() == ("",)       # dry run: recorded
        oid = conn.execute("SELECT lo_from_bytea(0, 'secret bytes')").fetchone()[0]
    r = psql(p, "-c", "SELECT count(*) FROM pg_ls_dir('.')", check=False, capture_output=True)  # simple
    assert r.returncode != 0 and 'rule "server_files"' in r.stderr and "calls pg_ls_dir" in r.stderr, r.stderr
    out = tmp_path / "exported"
    r = psql(p, "-c", "\\lo_export %d %s" % (oid, out), check=False, capture_output=True)
    assert r.returncode != 0 and 'rule "server_files"' in r.stderr and "loread" in r.stderr, r.stderr
    assert not out.exists() or out.read_bytes() != b"secret bytes"
    lpg.sql("SELECT lo_unlink(%d)" % oid)
    denied = wait_until(lambda: (lambda d: d if len(d) >= 8 else None)(audit_events(audit, "denied")), 10,
                        what="the denied events")
    assert [d["rule"] for d in denied] == ["server_files"] * 5 + ["no_sleep_dry"] + ["server_files"] * 2
    assert [d["enforced"] for d in denied] == [True] * 5 + [False, True, True]
    assert denied[-2]["statement"]["protocol"] == "simple"
    assert denied[-1]["statement"]["protocol"] == "function_call"
    assert denied[-1]["statement"]["text"].startswith("SELECT pg_catalog.loread(")
    p.stop()
    assert_valid_audit_file(audit)


def test_dry_run_records_without_blocking(pol, lpg):
    with connect(pol, "nobody") as conn:
        assert conn.execute("SELECT id FROM watched").fetchall() == [(1,)]
    (e,) = wait_denied(pol, "watch_secrets")[:1]
    assert e["enforced"] is False
    assert e["statement"]["objects"][0]["name"] == "watched"
    assert server_saw(lpg, "SELECT id FROM watched")
    # a dry-run connection rule: recorded, the session is served
    with connect(pol, "watched_login") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    (e,) = wait_denied(pol, "dry_conn")[:1]
    assert e["enforced"] is False and "statement" not in e


# ---------------------------------------------------------------- connections

def refused(p, user, host=None, **kw):
    with pytest.raises(psycopg.OperationalError) as ei:
        connect(p, user, host=host, **kw).close()
    return str(ei.value)


def test_connection_deny_and_limits(pol, lpg):
    err = refused(pol, "mallory")
    assert 'pgwarden rule "no_mallory" refuses the connection' in err
    (e,) = wait_denied(pol, "no_mallory")
    assert e["enforced"] is True and e["result"]["sqlstate"] == "28000"
    assert not [x for x in events(pol.audit_path) if x["kind"] == "auth_failure"
                and x.get("user", {}).get("name") == "mallory"]
    a, b = connect(pol, "limited"), connect(pol, "limited")
    err = refused(pol, "limited")
    assert "too many sessions" in err and "two_each" in err
    a.close()
    wait_until(lambda: _try(pol, "limited"), 10, what="a slot of limited freed")
    b.close()
    (e,) = wait_denied(pol, "two_each")[:1]
    assert e["result"]["sqlstate"] == "53300"
    err = refused(pol, "secure")
    assert "tls_for_secure" in err and "requires TLS" in err
    metrics = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % pol.metrics_port, timeout=10).read().decode()
    m = re.search(r'^pgwarden_denied_total\{kind="connection"\} (\d+)$', metrics, re.M)
    assert m and int(m.group(1)) >= 3


def _try(p, user):
    try:
        connect(p, user).close()
        return True
    except psycopg.OperationalError:
        return False


def test_cidr_rules_ipv4_and_ipv6(pol, lpg):
    (v4, port4), (v6, port6) = pol.tcp_addrs
    err = refused(pol, "six", host="127.0.0.1")
    assert "no_v4_for_six" in err
    with psycopg.connect(f"host=::1 port={port6} user=six dbname=postgres sslmode=disable",
                         connect_timeout=10) as conn:
        assert conn.execute("SELECT inet_client_addr() IS NOT NULL").fetchone() == (True,)
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(f"host=::1 port={port6} user=four dbname=postgres sslmode=disable",
                        connect_timeout=10)
    assert "no_v6_for_four" in str(ei.value)
    with connect(pol, "four") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# ---------------------------------------------------------------- reload

def test_reload_applies_to_the_next_statement_of_open_sessions(pol, lpg):
    with connect(pol, "nobody") as conn, connect(pol, "app") as conn_app:
        assert conn.execute("SELECT count(*) FROM watched").fetchone() == (1,)
        pol.rules_file.write_text(RULES + "statement deny name=freeze_watched relation=public.watched\n")
        pol.signal(signal.SIGHUP)
        wait_until(lambda: "access policy" in pol.log_tail() and "loaded" in pol.log_tail(), 10,
                   what="the reload")
        with pytest.raises(errors.InsufficientPrivilege) as ei:
            conn.execute("SELECT count(*) FROM watched")
        assert "freeze_watched" in str(ei.value)
        with pytest.raises(errors.InsufficientPrivilege):
            conn_app.execute("SELECT count(*) FROM watched")
        # a file with an error changes nothing and says where
        pol.rules_file.write_text(RULES + "statement deny relation=\n")
        pol.signal(signal.SIGHUP)
        wait_until(lambda: "keeping the current access policy" in pol.log_tail(), 10, what="the error")
        assert f"{pol.rules_file}:{RULES.count(chr(10)) + 1}:" in pol.log_tail()
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM watched")
        # and the rule gone again: served
        pol.rules_file.write_text(RULES)
        pol.signal(signal.SIGHUP)
        time.sleep(0.5)
        wait_until(lambda: _select_ok(conn), 10, what="the rule lifted")
    with connect(pol, "mallory_not") if False else connect(pol, "nobody") as c2:
        assert c2.execute("SELECT count(*) FROM watched").fetchone() == (1,)


def _select_ok(conn):
    try:
        return conn.execute("SELECT count(*) FROM watched").fetchone() == (1,)
    except errors.InsufficientPrivilege:
        return False


def test_long_statement_is_analysed_off_the_loop(pol, lpg):
    values = ",".join("(%d)" % i for i in range(3000))
    with connect(pol, "app") as conn:
        conn.execute("INSERT INTO t VALUES " + values + " ; DELETE FROM t WHERE id >= 0 AND id < 3000")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("INSERT INTO ledger VALUES " + ",".join("(%d, 1)" % i for i in range(3000)))
        assert conn.execute("SELECT 7").fetchone() == (7,)
    assert count(lpg, "ledger") == 0


# ---------------------------------------------------------------- certificates, plain path

from test_tls import dsn as tls_dsn  # noqa: E402
from test_tls import make_ca, make_cert, tls_proxy  # noqa: E402


@pytest.fixture(scope="module")
def certs(run_dir):
    d = run_dir / "policy-certs"
    d.mkdir()
    make_ca(d, "server-ca", "pgwarden test server CA")
    make_ca(d, "client-ca", "pgwarden test client CA")
    make_cert(d, "server", "localhost", "server-ca")
    make_cert(d, "client", "alice", "client-ca")
    make_cert(d, "carol", "carol@example.com", "client-ca")
    return d

TLS_RULES = """\
connection require-cert name=cert_for_alice user=alice
connection deny         name=no_carol_cert  cn=carol@example.com
statement read-only     name=ro_by_cn       cn=alice
"""


def test_certificate_rules(lpg, certs, start_proxy, tmp_path):
    rules = tmp_path / "tls-rules.conf"
    rules.write_text(TLS_RULES)
    p = tls_proxy(start_proxy, certs, "127.0.0.1:%d" % lpg.port, "--policy-file", str(rules),
                  tmp_path=tmp_path)
    with psycopg.connect(tls_dsn(p, certs), autocommit=True, connect_timeout=10) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("alice",)
        with pytest.raises(errors.InsufficientPrivilege) as ei:
            conn.execute("INSERT INTO t VALUES (701)")
        assert "ro_by_cn" in str(ei.value)
    for kw, rule in [({"cert": None}, "cert_for_alice"),
                     ({"sslmode": "disable"}, "cert_for_alice"),
                     ({"user": "carol", "cert": "carol"}, "no_carol_cert")]:
        with pytest.raises(psycopg.OperationalError) as ei:
            psycopg.connect(tls_dsn(p, certs, **kw), connect_timeout=10)
        assert rule in str(ei.value), (kw, str(ei.value))
    assert lpg.sql("SELECT count(*) FROM t WHERE id = 701")[0][0] == 0
    denied = wait_until(lambda: (lambda d: d if len(d) >= 4 else None)(events(p.audit_path, "denied")), 10,
                        what="4 denied events")
    by_rule = {}
    for e in denied:
        by_rule.setdefault(e["rule"], []).append(e)
    assert by_rule["ro_by_cn"][0]["user"]["cert"]["cn"] == "alice"
    assert len(by_rule["cert_for_alice"]) == 2 and by_rule["no_carol_cert"][0]["result"]["sqlstate"] == "28000"
    p.stop()
    assert_valid_audit_file(p.audit_path)


def test_sessions_without_statement_rules_keep_the_plain_path(lpg, start_proxy, tmp_path):
    rules = tmp_path / "app-only.conf"
    rules.write_text("statement deny name=app_no_drop command=DROP user=app\n")
    p = start_proxy(upstream="127.0.0.1:%d" % lpg.port, extra_args=["--policy-file", str(rules)])
    with connect(p, "nobody") as conn:
        conn.execute("CREATE TABLE nobody_table (x int)")
        conn.execute("DROP TABLE nobody_table")
    assert "policy gate" not in p.log_tail(200000)
    with connect(p, "app") as conn:
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("DROP TABLE t")
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert "client messages pass the policy gate" in p.log_tail(200000)
    # a reload that gives "nobody" a rule reaches its open session between two messages
    with connect(p, "nobody") as conn:
        conn.execute("SELECT 1")
        rules.write_text("statement deny name=nobody_no_select class=READ user=nobody\n")
        p.signal(signal.SIGHUP)
        wait_until(lambda: "access policy" in p.log_tail() and "loaded" in p.log_tail(), 10, what="reload")
        with pytest.raises(errors.InsufficientPrivilege) as ei:
            conn.execute("SELECT 2")
        assert "nobody_no_select" in str(ei.value)
        conn.execute("SET application_name = 'still here'")   # MISC_SET: allowed


def test_gated_session_audits_like_the_plain_path(lpg, start_proxy, tmp_path):
    """The gate analyses each Query and hands that analysis to the audit:
    the events of a session behind the gate (app) are those of a session
    on the plain path (nobody) for the same Query strings, field by field:
    one and several statements, more than 16 in one string, over 4 KiB,
    text that does not parse, a role password."""
    rules = tmp_path / "app-only.conf"
    rules.write_text("statement deny name=app_no_drop command=DROP user=app\n")
    audit = tmp_path / "audit.jsonl"
    p = start_proxy(upstream="127.0.0.1:%d" % lpg.port,
                    extra_args=["--policy-file", str(rules), "--audit-file", str(audit)])
    big = "INSERT INTO t VALUES " + ",".join("(%d)" % i for i in range(1500))
    queries = [
        "SELECT id FROM t WHERE id = 42",
        "SELECT 1; SELECT 'two', 2; UPDATE t SET id = id WHERE id = -1",
        "; ".join("SELECT %d AS n%d" % (i, i) for i in range(20)),
        big + "; DELETE FROM t WHERE id >= 0 AND id < 1500",
        "WITH w AS (SELECT * FROM watched) SELECT * FROM w JOIN t USING (id)",
        "SELEC broken FROM",
        "ALTER ROLE CURRENT_USER PASSWORD 'hunter2'",
    ]
    by_user = {}
    for user in ("nobody", "app"):
        with connect(p, user) as conn:
            for q in queries:
                conn.pgconn.send_query(q.encode())
                while conn.pgconn.get_result() is not None:
                    pass
            assert conn.execute("SELECT 'done'").fetchone() == ("done",)
    assert "client messages pass the policy gate" in p.log_tail(200000)
    p.stop()
    for e in events(audit, "statement"):
        st = e["statement"]
        if st.get("protocol") != "simple":
            continue
        by_user.setdefault(e["user"]["name"], []).append(
            {k: st.get(k) for k in ("text", "redacted", "truncated", "fingerprint", "command", "class",
                                    "objects", "parse_error", "index", "count")}
            | {"status": e["result"]["status"], "rows": e["result"].get("rows")})
    assert len(by_user["app"]) >= 1 + 3 + 20 + 2 + 1 + 1 + 1
    # (a statement over 4 KiB is parsed off the loop: its event may come later)
    assert sorted(by_user["app"], key=json.dumps) == sorted(by_user["nobody"], key=json.dumps)
    assert "hunter2" not in audit.read_text()


# ---------------------------------------------------------------- the durable sink

from test_kafka import assert_sessions_complete, events_of, kafka, kafka_args, topic  # noqa: E402,F401


def test_kafka_spool_with_the_gate(kafka, topic, lpg, rules_file, start_proxy, tmp_path):
    """With the Kafka sink, a statement's begin record is spooled before its
    bytes leave: the gate's output follows the same rule, and denied events
    reach the topic in each session's seq order."""
    rules_file.write_text(RULES)
    p = start_proxy(upstream="127.0.0.1:%d" % lpg.port,
                    extra_args=["--policy-file", str(rules_file)]
                    + kafka_args(kafka, topic, tmp_path / "spool"))
    with connect(p, "app") as conn:
        conn.execute("INSERT INTO t VALUES (%s)", (801,))
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("DELETE FROM t")
        with conn.pipeline():
            cur = conn.cursor()
            cur.execute("SELECT count(*) FROM t WHERE id = %s", (801,))
            assert cur.fetchone() == (1,)
    r = psql(p, "-c", "SELECT 1; TRUNCATE t", user="app", check=False)
    assert "no_drop" in r.stderr
    evs = wait_until(lambda: (lambda e: e if len([x for x in e if x["kind"] == "session_end"]) >= 2 else None)(
        events_of(kafka, topic, timeout=5)), 60, interval=1, what="both sessions in Kafka")
    denied = [e for e in evs if e["kind"] == "denied"]
    assert {e["rule"] for e in denied} == {"where_guard", "no_drop"}
    assert all(e["enforced"] for e in denied)
    assert_sessions_complete(evs)
    assert lpg.sql("SELECT count(*) FROM t WHERE id = 801")[0][0] == 1
