"""Faults around the proxy: a client too slow for its result, clients that
vanish in the middle of a COPY or a result, and a PostgreSQL whose backend
is terminated, that restarts under load, or that is down. Each test ends
with the proxy serving a normal session and the audit file holding exactly
the statements that ran, each with the status the client saw.

Environment (the slow-client test):
  PGW_SLOW_CLIENT_SECONDS  how long the client reads at 1 MB/s before it
                           drains the rest of the 1 GB result at full speed
                           (default 15)
  PGW_SLOW_CLIENT_FULL=1   read the whole 1 GB at 1 MB/s (about 17 minutes)
"""

import fcntl
import os
import socket
import struct
import termios
import threading
import time

import psycopg
import pytest

import pgwire
from harness import audit_events, free_port, running_cluster, wait_until
from test_event_schema import assert_valid_audit_file
from test_metrics import http_get, samples, status_or_none

SANITIZED = bool(os.environ.get("PGW_SANITIZED"))
MIB = 1024 * 1024


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def unread(sock):
    """Bytes waiting in sock's receive buffer."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def backend_gone(pg, pid):
    return not pg.sql("SELECT 1 FROM pg_stat_activity WHERE pid = %d" % pid)


# ---------------------------------------------------------------- the audit file

def read_audit(path):
    return audit_events(path)


def audit_sessions(path):
    """{session id: [events in seq order]}."""
    out = {}
    for e in read_audit(path):
        out.setdefault(e["session"]["id"], []).append(e)
    for evs in out.values():
        evs.sort(key=lambda e: e["session"]["seq"])
    return out


def started_sessions(path):
    """{session id: events} of the sessions that started (refused ones are a
    lone auth_failure)."""
    return {k: v for k, v in audit_sessions(path).items() if v[0]["kind"] == "session_start"}


def wait_sessions_ended(path, n=None, timeout=15):
    """Waits until every started session has its session_end (and, with n,
    until there are n of them); returns started_sessions."""
    def ended():
        s = started_sessions(path)
        if n is not None and len(s) < n:
            return None
        return s if all(evs[-1]["kind"] == "session_end" for evs in s.values()) else None
    return wait_until(ended, timeout, what="session_end events in %s" % path)


def session_of(sessions, pid):
    """The events of the session whose backend was pid."""
    found = [evs for evs in sessions.values()
             if any(e["session"].get("backend_pid") == pid for e in evs)]
    assert len(found) == 1, "%d sessions with backend %d" % (len(found), pid)
    return found[0]


def started_pid(path):
    """The backend_pid of the one session_start in the audit, once it is there."""
    def pid():
        starts = [e for e in read_audit(path) if e["kind"] == "session_start"]
        assert len(starts) <= 1, starts
        return starts[0]["session"]["backend_pid"] if starts else None
    return wait_until(pid, 10, what="session_start in %s" % path)


def statements(evs):
    return [e for e in evs if e["kind"] == "statement"]


def assert_well_formed(evs):
    """One session's events: seq 1..n without a gap, session_start first,
    session_end last, nothing after it."""
    assert [e["session"]["seq"] for e in evs] == list(range(1, len(evs) + 1)), evs
    assert evs[0]["kind"] == "session_start", evs[0]
    assert evs[-1]["kind"] == "session_end", evs[-1]
    assert sum(e["kind"] == "session_end" for e in evs) == 1


def assert_session(evs, expected, reason):
    """The session's statements are exactly expected, a list of (text,
    status) in order, and it ended for reason."""
    assert_well_formed(evs)
    got = [(e["statement"]["text"], e["result"]["status"]) for e in statements(evs)]
    assert got == expected, got
    assert evs[-1]["reason"] == reason, evs[-1]
    assert evs[-1]["statements"] == len(expected), evs[-1]


def normal_session(p, audit):
    """The proxy serves a fresh session, and the audit gains exactly that
    session with its one statement, ok."""
    before = set(audit_sessions(audit))
    with p.connect() as c:
        assert c.execute("SELECT pg_backend_pid()").fetchone()[0] > 0

    def new():
        s = {k: v for k, v in audit_sessions(audit).items() if k not in before}
        return s if s and all(v[-1]["kind"] == "session_end" for v in s.values()) else None
    s = wait_until(new, 15, what="the new session's events")
    assert len(s) == 1, s
    assert_session(list(s.values())[0], [("SELECT pg_backend_pid()", "ok")], "client_closed")
    assert_valid_audit_file(audit)


def raw_client(addr, rcvbuf=None):
    """A started pgwire connection; with rcvbuf, a small receive buffer set
    before connecting, so that the client's TCP window stays small."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(30)
    s.connect(addr)
    c = pgwire.RawConn(s)
    msgs = c.startup("postgres")
    assert msgs[-1][0] == "Z", msgs
    assert c.backend_pid
    return c


class ResultCounter:
    """Counts the DataRows of a result stream as it arrives, without keeping
    them; every other message is kept whole."""

    def __init__(self, initial=b""):
        self.hdr = b""
        self.left = 0               # body bytes of the current message still to come
        self.kind = None
        self.body = None
        self.rows = 0
        self.row_bytes = 0          # whole DataRow messages, type byte included
        self.other = []             # (type, body) of everything but DataRow
        self.feed(initial)

    def done(self):
        return bool(self.other) and self.other[-1][0] == "Z"

    def feed(self, data):
        mv = memoryview(data)
        i, n = 0, len(data)
        while i < n:
            if self.left:
                take = min(self.left, n - i)
                if self.body is not None:
                    self.body += mv[i:i + take]
                self.left -= take
                i += take
                if not self.left:
                    self._end()
                continue
            take = min(5 - len(self.hdr), n - i)
            self.hdr += bytes(mv[i:i + take])
            i += take
            if len(self.hdr) < 5:
                return
            self.kind = chr(self.hdr[0])
            (length,) = struct.unpack("!I", self.hdr[1:5])
            self.hdr = b""
            if self.kind == "D":
                self.rows += 1
                self.row_bytes += length + 1
                self.body = None
            else:
                self.body = bytearray()
            self.left = length - 4
            if not self.left:
                self._end()

    def _end(self):
        if self.kind != "D":
            self.other.append((self.kind, bytes(self.body)))
        self.kind, self.body = None, None


class RssSampler(threading.Thread):
    """VmRSS of pid every interval seconds until stopped; with pg and
    backend, also the backend's wait event each time."""

    def __init__(self, pid, interval=0.5, pg=None, backend=None):
        super().__init__(daemon=True)
        self.pid, self.interval, self.pg, self.backend = pid, interval, pg, backend
        self.samples, self.waits = [], []
        self.stop_evt = threading.Event()

    def run(self):
        conn = self.pg.connect() if self.pg else None
        try:
            while not self.stop_evt.is_set():
                self.samples.append(rss_kib(self.pid))
                if conn is not None:
                    row = conn.execute("SELECT state, wait_event FROM pg_stat_activity WHERE pid = %s",
                                       (self.backend,)).fetchone()
                    self.waits.append(row)
                self.stop_evt.wait(self.interval)
        finally:
            if conn is not None:
                conn.close()

    def stop(self):
        self.stop_evt.set()
        self.join(10)


# ---------------------------------------------------------------- 1. slow client

SLOW_ROWS = 1_000_000
SLOW_SQL = "SELECT repeat('x', 1000) FROM generate_series(1, %d)" % SLOW_ROWS
SLOW_ROW_BYTES = 1 + 4 + 2 + 4 + 1000           # one DataRow message
SLOW_FULL = os.environ.get("PGW_SLOW_CLIENT_FULL") == "1"
SLOW_SECONDS = float(os.environ.get("PGW_SLOW_CLIENT_SECONDS", "15"))
SLOW_RATE = 1_000_000                           # bytes per second
RSS_LIMIT_KIB = 64 * 1024


@pytest.mark.timeout(1800 if SLOW_FULL else 240)
def test_slow_client_reading_a_1_gb_result(pg, start_proxy, run_dir):
    """A client reads a 1 GB result at 1 MB/s (for PGW_SLOW_CLIENT_SECONDS,
    then as fast as it can, or all of it with PGW_SLOW_CLIENT_FULL=1):
    backpressure reaches the server (its backend waits in ClientWrite),
    pgwarden's RSS stays under 64 MiB throughout, the result arrives whole,
    and the audit records all its rows and bytes."""
    audit = run_dir / ("slow-client-%d.jsonl" % free_port())
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port, extra_args=["--audit-file", str(audit)],
                    log_level="info")
    c = raw_client(p.tcp_addrs[0], rcvbuf=16384)
    pid = c.backend_pid
    # A sanitizer build carries its own shadow memory and allocator: there
    # the bound applies to what the proxy adds to its starting RSS.
    base = rss_kib(p.proc.pid) if SANITIZED else 0
    sampler = RssSampler(p.proc.pid, 0.5, pg, pid)
    sampler.start()
    counter = ResultCounter(c.buf)
    c.buf = b""
    c.send(pgwire.query_message(SLOW_SQL))
    sock = c.sock
    buf = bytearray(1 << 20)
    slow_for = float("inf") if SLOW_FULL else SLOW_SECONDS
    t0 = time.monotonic()
    received = 0
    try:
        # 1 MB/s: never more than the rate allows so far.
        while not counter.done() and time.monotonic() - t0 < slow_for:
            allowed = int((time.monotonic() - t0) * SLOW_RATE) - received
            if allowed <= 0:
                time.sleep(0.01)
                continue
            n = sock.recv_into(buf, min(allowed, 65536))
            assert n, "the proxy closed the connection mid-result"
            received += n
            counter.feed(memoryview(buf)[:n])
        slow_elapsed = time.monotonic() - t0
        slow_received = received
        slow_waits = list(sampler.waits)
        # Then the rest, as fast as possible.
        while not counter.done():
            n = sock.recv_into(buf)
            assert n, "the proxy closed the connection mid-result"
            received += n
            counter.feed(memoryview(buf)[:n])
        total_elapsed = time.monotonic() - t0
        c.send(pgwire.message(b"X"))
    finally:
        sampler.stop()
        c.close()
    rss = sampler.samples
    print("slow client: %.1f s at 1 MB/s (%d bytes), %.1f s in all; pgwarden RSS KiB: "
          "first %d, max %d, last %d (%d samples, base %d)"
          % (slow_elapsed, slow_received, total_elapsed, rss[0], max(rss), rss[-1], len(rss), base))
    assert slow_received <= SLOW_RATE * (slow_elapsed + 1)
    assert max(rss) - base < RSS_LIMIT_KIB, "pgwarden RSS reached %d KiB (base %d)" % (max(rss), base)
    # Backpressure held: the server waited for pgwarden to take its rows.
    assert ("active", "ClientWrite") in slow_waits, slow_waits
    assert counter.rows == SLOW_ROWS and counter.row_bytes == SLOW_ROWS * SLOW_ROW_BYTES, (
        counter.rows, counter.row_bytes)
    kinds = [k for k, _ in counter.other]
    assert kinds == ["T", "C", "Z"], kinds
    assert counter.other[1][1] == b"SELECT %d\0" % SLOW_ROWS

    s = wait_sessions_ended(audit, 1)
    evs = session_of(s, pid)
    assert len(read_audit(audit)) == len(evs), "events of other sessions: %r" % read_audit(audit)
    assert_session(evs, [("SELECT repeat($1, $2) FROM generate_series($3, $4)", "ok")], "client_closed")
    res = statements(evs)[0]["result"]
    assert res["rows"] == SLOW_ROWS and res["bytes"] == SLOW_ROWS * SLOW_ROW_BYTES, res
    assert res["tag"] == "SELECT %d" % SLOW_ROWS, res
    normal_session(p, audit)


# ---------------------------------------------------------------- 2. clients that vanish

def test_client_vanishes_mid_copy_in(pg, start_proxy, run_dir):
    """A client sends part of a COPY FROM STDIN and closes its socket
    without CopyDone or CopyFail: the server's backend goes away, nothing
    is inserted, and the audit records the COPY as not completed with the
    data it carried, then the session's end."""
    pg.sql("DROP TABLE IF EXISTS faults_copy_in; CREATE TABLE faults_copy_in (n int)")
    audit = run_dir / ("copy-in-%d.jsonl" % free_port())
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port, extra_args=["--audit-file", str(audit)])
    c = raw_client(p.tcp_addrs[0])
    pid = started_pid(audit)
    assert pid == c.backend_pid
    c.send(pgwire.query_message("COPY faults_copy_in FROM STDIN"))
    m = c.recv_msg()
    assert m[0] == "G", m
    sent = 0
    for i in range(1000):
        line = b"%d\n" % i
        c.send(pgwire.message(b"d", line))
        sent += len(line)
    # The rows reach the server before the close does.
    wait_until(lambda: pg.sql("SELECT wait_event FROM pg_stat_activity WHERE pid = %d" % pid)
               == [("ClientRead",)], 10, what="the backend to wait for more COPY data")
    c.sock.close()
    wait_until(lambda: backend_gone(pg, pid), 15, what="backend %d to exit" % pid)
    assert pg.sql("SELECT count(*) FROM faults_copy_in") == [(0,)]

    s = wait_sessions_ended(audit, 1)
    evs = session_of(s, pid)
    assert len(read_audit(audit)) == len(evs), "events of other sessions: %r" % read_audit(audit)
    assert_well_formed(evs)
    st = statements(evs)
    assert [e["statement"]["text"] for e in st] == ["COPY faults_copy_in FROM STDIN"]
    res = st[0]["result"]
    assert res["status"] != "ok", res
    assert st[0]["copy"]["direction"] == "in" and st[0]["copy"]["bytes"] == sent, st[0]
    print("COPY IN cut by the client: %s, session_end %s" % (res, evs[-1]["reason"]))
    assert evs[-1]["reason"] == "client_closed", evs[-1]
    normal_session(p, audit)


def test_client_vanishes_mid_result(pg, start_proxy, run_dir):
    """A client reads about 1 MB of a 1 GB result and closes its socket
    with more rows unread: the backend goes away and the audit records the
    SELECT as not completed (unknown: pgwarden never saw how it ended), then
    the session's end, closed by the client."""
    audit = run_dir / ("mid-result-%d.jsonl" % free_port())
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port, extra_args=["--audit-file", str(audit)])
    c = raw_client(p.tcp_addrs[0], rcvbuf=16384)
    pid = started_pid(audit)
    assert pid == c.backend_pid
    c.send(pgwire.query_message(SLOW_SQL))
    counter = ResultCounter()
    got = 0
    while got < MIB:
        chunk = c.sock.recv(65536)
        assert chunk
        got += len(chunk)
        counter.feed(chunk)
    # Rows keep coming: the close with unread data resets the connection,
    # which is still the client ending its session.
    wait_until(lambda: unread(c.sock) > 0, 10, what="more rows to arrive")
    c.sock.close()
    wait_until(lambda: backend_gone(pg, pid), 15, what="backend %d to exit" % pid)

    s = wait_sessions_ended(audit, 1)
    evs = session_of(s, pid)
    assert len(read_audit(audit)) == len(evs), "events of other sessions: %r" % read_audit(audit)
    assert_well_formed(evs)
    st = statements(evs)
    assert [e["statement"]["text"] for e in st] == ["SELECT repeat($1, $2) FROM generate_series($3, $4)"]
    res = st[0]["result"]
    assert res["status"] != "ok", res
    assert "tag" not in res, res
    # What was forwarded before the close: at least the rows the client
    # read whole (the counter counts a row from its header on).
    assert (counter.rows - 1) * SLOW_ROW_BYTES <= res["bytes"] < SLOW_ROWS * SLOW_ROW_BYTES, res
    assert counter.rows - 1 <= res["rows"] < SLOW_ROWS, res
    print("result cut by the client: %s, session_end %s" % (res, evs[-1]["reason"]))
    assert evs[-1]["reason"] == "client_closed", evs[-1]
    normal_session(p, audit)


# ---------------------------------------------------------------- 3. upstream failures

@pytest.fixture(scope="module")
def own_pg():
    """A cluster of this module's own, which its tests stop and restart."""
    with running_cluster() as cluster:
        yield cluster


def test_backend_terminated(own_pg, start_proxy, run_dir):
    """pg_terminate_backend on a proxied session running a pg_sleep: the
    client gets PostgreSQL's FATAL 57P01 and the connection closes; the
    sleep is recorded as an error, then session_end."""
    audit = run_dir / ("terminate-%d.jsonl" % free_port())
    p = start_proxy(upstream="127.0.0.1:%d" % own_pg.port, extra_args=["--audit-file", str(audit)])
    c = raw_client(p.tcp_addrs[0])
    pid = c.backend_pid
    c.send(pgwire.query_message("SELECT pg_sleep(60)"))
    wait_until(lambda: own_pg.sql("SELECT wait_event FROM pg_stat_activity WHERE pid = %d" % pid)
               == [("PgSleep",)], 10, what="the backend to sleep")
    assert own_pg.sql("SELECT pg_terminate_backend(%d)" % pid) == [(True,)]
    msgs = c.read_all_until_eof(10)       # then EOF: the connection is closed
    c.close()
    errors = [pgwire.parse_error_fields(b) for t, b in msgs if t == "E"]
    assert [(e["S"], e["C"]) for e in errors] == [("FATAL", "57P01")], msgs
    assert "terminating connection due to administrator command" in errors[0]["M"]
    wait_until(lambda: backend_gone(own_pg, pid), 10, what="backend %d to exit" % pid)

    s = wait_sessions_ended(audit, 1)
    evs = session_of(s, pid)
    assert len(read_audit(audit)) == len(evs), "events of other sessions: %r" % read_audit(audit)
    assert_session(evs, [("SELECT pg_sleep($1)", "error")], "server_closed")
    res = statements(evs)[0]["result"]
    assert res["sqlstate"] == "57P01", res
    normal_session(p, audit)


def _insert_loop(p, worker, stop, ok, failed):
    """Inserts (worker, n) rows through p, one statement at a time,
    reconnecting after any failure; ok gets what the client saw succeed."""
    n = 0
    conn = None
    while not stop.is_set():
        try:
            if conn is None:
                conn = p.connect()
            n += 1
            conn.execute("INSERT INTO faults_load (worker, n) VALUES (%s, %s)", (str(worker), str(n)))
            ok.append((worker, n))
        except psycopg.Error:
            failed.append((worker, n))
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(0.05)
    if conn is not None:
        conn.close()


def test_postgres_restarted_under_load(own_pg, start_proxy, run_dir):
    """pg_ctl restart -m fast while three clients insert through pgwarden:
    they see errors and reconnect, pgwarden runs on, and the audit holds
    every insert a client saw succeed as ok, the rows in the table are
    exactly the audit's ok inserts, and nothing else claims success."""
    own_pg.sql("DROP TABLE IF EXISTS faults_load; CREATE TABLE faults_load (worker int, n int)")
    audit = run_dir / ("restart-%d.jsonl" % free_port())
    p = start_proxy(upstream="127.0.0.1:%d" % own_pg.port,
                    extra_args=["--audit-file", str(audit), "--log-parameters"], log_level="info")
    stop = threading.Event()
    ok, failed = [], []
    workers = [threading.Thread(target=_insert_loop, args=(p, w, stop, ok, failed)) for w in range(3)]
    for w in workers:
        w.start()
    try:
        wait_until(lambda: len(ok) >= 50, 20, what="inserts before the restart")
        before = len(ok)
        own_pg.restart()
        wait_until(lambda: len(ok) >= before + 50, 30, what="inserts after the restart")
    finally:
        stop.set()
        for w in workers:
            w.join(30)
    assert p.alive(), p.log_tail()
    assert failed, "no client saw the restart"
    sessions = wait_sessions_ended(audit, timeout=20)
    # Sessions refused while the server was away are a lone auth_failure.
    for sid, evs in audit_sessions(audit).items():
        if sid not in sessions:
            assert [e["kind"] for e in evs] == ["auth_failure"], evs

    rows = {(w, n) for w, n in own_pg.sql("SELECT worker, n FROM faults_load")}
    text = "INSERT INTO faults_load (worker, n) VALUES ($1, $2)"
    audited_ok, audited_not_ok = set(), []
    for evs in sessions.values():
        assert_well_formed(evs)
        for e in statements(evs):
            assert e["statement"]["text"] == text, e
            key = tuple(int(v) for v in e["statement"]["params"]["values"])
            if e["result"]["status"] == "ok":
                assert key not in audited_ok, "audited twice: %r" % (key,)
                audited_ok.add(key)
            else:
                audited_not_ok.append((key, e["result"]))
    print("restart under load: %d inserts seen ok by clients, %d failures seen, %d audited not ok: %s"
          % (len(ok), len(failed), len(audited_not_ok), audited_not_ok[:3]))
    assert set(ok) <= audited_ok, "ok for the client but not in the audit: %r" % (set(ok) - audited_ok)
    assert audited_ok == rows, (audited_ok ^ rows)
    assert not {k for k, _ in audited_not_ok} & rows
    # The sessions the restart cut ended with a reason.
    ends = [evs[-1]["reason"] for evs in sessions.values()]
    assert "server_closed" in ends, ends
    normal_session(p, audit)


def _refused(p):
    """A startup through p; the ErrorResponse fields that end it."""
    with pgwire.connect(p.tcp_addrs[0]) as c:
        c.send(pgwire.startup_packet("postgres"))
        msgs = c.read_all_until_eof(10)
    assert msgs and msgs[-1][0] == "E", msgs
    return pgwire.parse_error_fields(msgs[-1][1])


def test_postgres_stopped_then_back(own_pg, start_proxy, run_dir):
    """With PostgreSQL down, new connections get a FATAL 08006 naming the
    upstream, counted as refused (upstream_unavailable), and /readyz says
    503; pgwarden keeps running and serves sessions again once PostgreSQL
    is back."""
    audit = run_dir / ("stopped-%d.jsonl" % free_port())
    mport = free_port()
    p = start_proxy(upstream="127.0.0.1:%d" % own_pg.port,
                    extra_args=["--audit-file", str(audit), "--metrics-listen", "127.0.0.1:%d" % mport])
    key = 'pgwarden_client_connections_refused_total{reason="upstream_unavailable"}'
    # The metrics endpoint may start listening after the proxy's listeners.
    wait_until(lambda: status_or_none(mport, "/readyz") == 200, 15, what="/readyz 200")
    assert samples(http_get(mport, "/metrics")[2])[key] == 0
    held = p.connect()
    held_pid = held.execute("SELECT pg_backend_pid()").fetchone()[0]
    own_pg.halt()
    try:
        with pytest.raises(psycopg.OperationalError):
            held.execute("SELECT 1")
        held.close()
        for _ in range(3):
            f = _refused(p)
            assert (f["S"], f["C"]) == ("FATAL", "08006"), f
            assert "could not connect to the upstream server 127.0.0.1:%d" % own_pg.port in f["M"], f
        with pytest.raises(psycopg.OperationalError) as e:
            p.connect()
        assert "could not connect to the upstream server" in str(e.value)
        assert samples(http_get(mport, "/metrics")[2])[key] == 4
        status, _, body = http_get(mport, "/readyz")
        assert status == 503 and "upstream" in body, (status, body)
        assert p.alive()
    finally:
        own_pg.resume()
    wait_until(lambda: status_or_none(mport, "/readyz") == 200, 15, what="/readyz to turn 200")

    # Audit: the cut session's SELECT 1 never reached a server; the four
    # refusals are auth_failure events with 08006.
    evs = read_audit(audit)
    fails = [e for e in evs if e["kind"] == "auth_failure"]
    assert len(fails) == 4 and all(e["result"]["sqlstate"] == "08006" for e in fails), fails
    s = wait_sessions_ended(audit)
    assert len(s) == 1, s
    assert_session(session_of(s, held_pid), [("SELECT pg_backend_pid()", "ok")], "server_closed")
    normal_session(p, audit)
