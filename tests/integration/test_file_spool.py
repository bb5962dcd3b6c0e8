"""The audit file with a spool (--spool-dir): statements are recorded on
disk before they are forwarded and events are kept until they are in the
file, so a SIGKILLed pgwarden loses no statement the server ran (pgAudit in
the server is the oracle); a clean run leaves the spool empty and the file
holds no begin records."""

import json
import urllib.request
from collections import defaultdict
from pathlib import Path

from harness import (SPOOL_DELTA, client_env, free_port, kill_during_pgbench, psql, spool_records,
                     wait_until)
from test_event_schema import assert_valid_audit_file


def file_events(path):
    """The events of the audit file (and its rotated files), each once (a
    replay after a crash may write an event again, with its event_id)."""
    seen, out = set(), []
    for p in sorted(Path(path).parent.glob(Path(path).name + "*")):
        for line in p.read_bytes().splitlines():
            e = json.loads(line)
            if e["event_id"] not in seen:
                seen.add(e["event_id"])
                out.append(e)
    return out


def statements(evs, prefix):
    return [e for e in evs if e["kind"] == "statement"
            and e["statement"].get("text", "").startswith(prefix)]


def record_bytes(path):
    """A segment's length up to its last record (the segment being filled
    is preallocated: zeros after its records)."""
    return len(Path(path).read_bytes().rstrip(b"\0"))


def test_sigkill_loses_no_statement(audited_pg, start_proxy, tmp_path):
    """pgwarden is SIGKILLed in the middle of a pgbench run and restarted on
    the same spool: every statement the server executed (as pgAudit logged
    it) has its event in the file, those never answered with status
    unknown, and no session's seq numbers have a gap."""
    c = audited_pg
    audit, spool = tmp_path / "audit.jsonl", tmp_path / "spool"
    args = ["--audit-file", str(audit), "--spool-dir", str(spool)]
    p = start_proxy(upstream="127.0.0.1:%d" % c.port, extra_args=args)
    upd, ins = kill_during_pgbench(c, p, 300)
    assert upd > 500
    assert list(spool.glob("*.seg")), "the killed process left its spool"
    # Completions spooled as deltas against their begins, each rebuilt
    # below into the very line the file got.
    deltas = [v for seg in spool.glob("*.seg") for t, _, v in spool_records(seg) if t == SPOOL_DELTA]
    assert deltas and None not in deltas, "completions written against their begins"

    q = start_proxy(upstream="127.0.0.1:%d" % c.port, extra_args=args)
    wait_until(lambda: "written again" in q.log_tail(50000), 15, what="the replay")
    assert q.stop(timeout=30) == 0, q.log_tail()
    assert_valid_audit_file(audit)
    evs = file_events(audit)
    # The events written just before the kill are still in the spool; the
    # restart finds them in the file and does not write them again.
    assert len(audit.read_bytes().splitlines()) == len(evs), "an event written twice"
    assert "found in the file already" in q.log_tail(50000)
    lines = {json.loads(line)["event_id"]: line for line in audit.read_bytes().splitlines()}
    for d in deltas:
        assert lines[json.loads(d)["event_id"]] == d, "a delta rebuilt is not its event"
    f_upd = statements(evs, "UPDATE pgbench_accounts")
    f_ins = statements(evs, "INSERT INTO pgbench_history")
    assert len(f_upd) >= upd, "server ran %d UPDATEs, the file has %d" % (upd, len(f_upd))
    assert len(f_ins) >= ins, "server ran %d INSERTs, the file has %d" % (ins, len(f_ins))
    assert {e["result"]["status"] for e in statements(evs, "")} <= {"ok", "unknown", "error"}

    per_seq = defaultdict(set)
    for e in evs:
        if e["session"]["id"] and e["kind"] in ("session_start", "statement", "session_end"):
            per_seq[e["session"]["id"]].add(e["session"]["seq"])
    killed = [sid for sid in per_seq
              if any(e["session"]["id"] == sid and e["client"].get("application") == "pgbench"
                     for e in evs)]
    assert len(killed) >= 4
    for sid in killed:
        seqs = sorted(per_seq[sid])
        assert seqs == list(range(1, len(seqs) + 1)), "session %s: seq gaps %s" % (sid, seqs[-20:])
    # A statement is there once: completed, or begun (unknown), never both.
    status = defaultdict(set)
    for e in statements(evs, ""):
        status[(e["session"]["id"], e["session"]["seq"])].add(e["result"]["status"])
    both = [k for k, v in status.items() if "unknown" in v and len(v) > 1]
    assert not both, "completed statements also written as unknown: %s" % both[:5]
    # Replayed and delivered: the spool holds nothing more.
    assert sum(record_bytes(s) for s in spool.glob("*.seg")) < 100


def test_clean_run_empties_the_spool(pg, start_proxy, tmp_path):
    """Without a crash, every statement has one event, none unknown, begin
    records never reach the file, the spool is empty at the end and the
    metrics show it."""
    audit, spool = tmp_path / "audit.jsonl", tmp_path / "spool"
    mport = free_port()
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port,
                    extra_args=["--audit-file", str(audit), "--spool-dir", str(spool),
                                "--metrics-listen", "127.0.0.1:%d" % mport])
    psql(p, "-c", "CREATE TABLE IF NOT EXISTS spooled (i int)",
         "-c", "INSERT INTO spooled SELECT generate_series(1, 10)",
         "-c", "SELECT count(*) FROM spooled", "-c", "DROP TABLE spooled",
         env=client_env(PGAPPNAME="spooled"))
    metrics = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=5).read().decode()
    assert "pgwarden_audit_file_spool_bytes " in metrics
    assert "pgwarden_audit_file_replayed_total 0" in metrics
    assert list(spool.glob("*.seg")), "statements went through the spool"
    assert p.stop(timeout=20) == 0, p.log_tail()

    assert assert_valid_audit_file(audit) >= 6
    evs = [json.loads(line) for line in audit.read_bytes().splitlines()]
    assert len({e["event_id"] for e in evs}) == len(evs), "an event written twice"
    mine = [e for e in evs if e.get("client", {}).get("application") == "spooled"]
    assert [e["kind"] for e in mine] == ["session_start"] + ["statement"] * 4 + ["session_end"]
    assert [e["result"]["status"] for e in mine if e["kind"] == "statement"] == ["ok"] * 4
    assert [e["session"]["seq"] for e in mine] == list(range(1, 7))
    assert not list(spool.glob("*.seg")) or sum(record_bytes(s) for s in spool.glob("*.seg")) < 100


def _workload(proxy, app):
    """Statements whose events a durable sink builds in each of its ways:
    from the begin record's head (one statement, extended or simple), and
    encoded again (a Query's later statements, which start after their
    begin; EXECUTE and FETCH; after application_name changes; a pipeline
    longer than the heads a session keeps)."""
    import psycopg
    with proxy.connect(application_name=app) as conn:
        conn.execute("CREATE TEMP TABLE sp (i int, t text)")
        conn.execute("INSERT INTO sp SELECT g, 'r' || g FROM generate_series(1, 50) g")
        conn.execute("SELECT count(*) FROM sp WHERE i > 10; SELECT 2; SELECT max(t) FROM sp")
        try:
            conn.execute("SELECT 1; SELECT 1/0; SELECT 3")
        except psycopg.errors.DivisionByZero:
            pass
        with conn.pipeline():
            for i in range(400):
                conn.execute("SELECT t FROM sp WHERE i = %s", (i % 50,))
            conn.execute("SET application_name = %s" % psycopg.sql.quote(app + "-2"))
            conn.execute("UPDATE sp SET t = %s WHERE i = %s", ("x", 3))
        conn.execute("PREPARE q AS SELECT t FROM sp WHERE i = $1")
        conn.execute("EXECUTE q(4)")
        with conn.pipeline():       # EXECUTE begins before PREPARE completes
            conn.execute("PREPARE q2 AS SELECT t FROM sp WHERE i = $1")
            conn.execute("EXECUTE q2(5)")
        with conn.transaction():
            conn.execute("DECLARE c CURSOR FOR SELECT * FROM sp")
            conn.execute("FETCH 5 FROM c")
        for i in range(5):
            conn.execute("SELECT t FROM sp WHERE i > %s", (i,), prepare=True)
        with conn.cursor().copy("COPY sp TO STDOUT") as cp:
            for _ in cp:
                pass


def _normalized(events, app):
    out = []
    for e in events:
        if e["kind"] != "statement" or not e["client"].get("application", "").startswith(app):
            continue
        e = json.loads(json.dumps(e))
        for k in ("event_id", "time", "session", "observer"):
            e.pop(k)
        e["client"].pop("port")
        e["result"].pop("duration_us", None)
        out.append(e)
    return out


def test_spooled_events_equal_unspooled(pg, start_proxy, tmp_path):
    """A durable sink's completion copies the head of its begin record
    when nothing before `result` can have changed, and encodes the event
    again otherwise: either way the file holds the events an unspooled
    pgwarden writes, each begin's event once."""
    app = "spool-eq"
    got = {}
    for name, extra in (("plain", []), ("spooled", ["--spool-dir", str(tmp_path / "spool")])):
        audit = tmp_path / (name + ".jsonl")
        p = start_proxy(upstream="127.0.0.1:%d" % pg.port,
                        extra_args=["--audit-file", str(audit), "--log-parameters"] + extra)
        _workload(p, app)
        assert p.stop(timeout=20) == 0, p.log_tail()
        assert_valid_audit_file(audit)
        evs = [json.loads(line) for line in audit.read_bytes().splitlines()]
        assert len({e["event_id"] for e in evs}) == len(evs), "an event written twice"
        got[name] = _normalized(evs, app)
        # a Query's later statements start when the one before ends, after
        # the Query's arrival, which their begin records carry
        q = [e for e in evs if e["kind"] == "statement" and e["statement"].get("count") == 3][:3]
        assert [e["statement"]["index"] for e in q] == [1, 2, 3]
        assert q[0]["time"] < q[1]["time"] <= q[2]["time"], [e["time"] for e in q]
    assert len(got["plain"]) > 400
    assert [e["result"]["status"] for e in got["spooled"]].count("unknown") == 0
    for a, b in zip(got["plain"], got["spooled"]):
        assert a == b
    assert len(got["plain"]) == len(got["spooled"])
    apps = {e["client"]["application"] for e in got["spooled"]}
    assert apps == {app, app + "-2"}
    (ex,) = [e for e in got["spooled"] if e["statement"]["text"].startswith("EXECUTE q2")]
    assert ex["statement"]["objects"] == [{"name": "sp", "type": "table", "access": "read"}]


def test_statements_sent_with_the_startup_packet(pg, start_proxy, tmp_path):
    """A Query in the same write as the startup packet is spooled before
    the session has started (before the startup packet is forwarded).
    Once it starts, the events still go in the order of their seq
    (session_start first) and carry the backend's pid; when the login
    fails, the auth_failure is the session's seq 1 too."""
    import pgwire
    audit, spool = tmp_path / "audit.jsonl", tmp_path / "spool"
    args = ["--audit-file", str(audit), "--spool-dir", str(spool)]
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port, extra_args=args)
    with pgwire.connect((p.host, p.port)) as c:
        c.send(pgwire.startup_packet("postgres", application_name="early-ok")
               + pgwire.query_message("SELECT 42"))
        kinds = []
        while kinds.count("Z") < 2:
            m = c.recv_msg()
            assert m is not None, kinds
            kinds.append(m[0])
        assert "D" in kinds and "E" not in kinds, kinds
    with pgwire.connect((p.host, p.port)) as c:
        c.send(pgwire.startup_packet("no_such_role", application_name="early-bad")
               + pgwire.query_message("SELECT 43"))
        kinds = [m[0] for m in c.read_all_until_eof()]
        assert kinds[-1] == "E" and "D" not in kinds, kinds
    assert p.stop(timeout=20) == 0, p.log_tail()
    evs = [json.loads(line) for line in audit.read_bytes().splitlines()]
    assert_valid_audit_file(audit)
    ok = [e for e in evs if e.get("client", {}).get("application") == "early-ok"]
    assert [(e["kind"], e["session"]["seq"]) for e in ok] == [
        ("session_start", 1), ("statement", 2), ("session_end", 3)]
    pid = ok[0]["session"]["backend_pid"]
    assert pid > 0 and ok[1]["session"]["backend_pid"] == pid
    assert ok[1]["statement"]["text"] == "SELECT $1" and ok[1]["result"]["rows"] == 1
    bad = [e for e in evs if e.get("client", {}).get("application") == "early-bad"]
    assert [(e["kind"], e["session"]["seq"], e["result"]["status"]) for e in bad] == [
        ("auth_failure", 1, "error")]
    assert bad[0]["result"]["sqlstate"] == "28000"
    # The failed session's begun statement never ran: nothing of it stays
    # in the spool, and a restart has nothing to write again.
    assert sorted(f.name for f in spool.iterdir()) == []
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port, extra_args=args)
    assert p.stop(timeout=20) == 0, p.log_tail()
    again = [json.loads(line) for line in audit.read_bytes().splitlines()]
    assert again == evs
