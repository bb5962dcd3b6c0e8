"""Limits and timeouts: connections per address and in total, the startup
timeout against slow (slowloris) clients, the idle-session timeout, and a
connection flood after which memory comes back. Each ends with the proxy
serving a normal session."""

import os
import socket
import struct
import time

import psycopg
import pytest

import pgwire
from harness import audit_events, free_port, wait_until


# AddressSanitizer keeps freed memory in quarantine (up to 256 MiB): under
# scripts/test.sh's sanitizer run, memory bounds are looser.
SANITIZED = bool(os.environ.get("PGW_SANITIZED"))
RSS_SLACK_KIB = (256 if SANITIZED else 8) * 1024


def rss_kib(proc):
    with open("/proc/%d/status" % proc.pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fatal_of(sock, timeout=10):
    """Reads until the server closes; returns (sqlstate, message) of the first
    ErrorResponse, or None if the connection closed without one."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    while len(data) >= 5:
        kind, length = data[0:1], struct.unpack("!I", data[1:5])[0]
        body = data[5:1 + length]
        if kind == b"E":
            fields = dict((f[0:1], f[1:].decode()) for f in body.split(b"\0") if f)
            return fields.get(b"C"), fields.get(b"M")
        data = data[1 + length:]
    return None


def test_connections_per_address_and_in_total(pg, start_proxy):
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port,
                    extra_args=["--max-connections-per-address", "3"])
    held = [p.connect() for _ in range(3)]
    with pytest.raises(psycopg.OperationalError) as e:
        p.connect()
    assert "too many connections from 127.0.0.1" in str(e.value)
    held.pop().close()
    wait_until(lambda: _connects(p), 5, what="a slot to free up")
    for c in held:
        c.close()

    q = start_proxy(upstream="127.0.0.1:%d" % pg.port, extra_args=["--max-client-connections", "2"])
    a, b = q.connect(), q.connect()
    with pytest.raises(psycopg.OperationalError) as e:
        q.connect()
    assert "sorry, too many clients already" in str(e.value)
    a.close()
    b.close()
    wait_until(lambda: _connects(q), 5, what="slots to free up")


def _connects(p):
    try:
        with p.connect() as c:
            return c.execute("SELECT 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


def test_startup_timeout_drops_slowloris_and_serves_others(pg, start_proxy):
    """1,000 connections that send one byte of a startup packet per second
    are dropped at the startup timeout; a normal client meanwhile connects
    and queries without delay; memory comes back afterwards."""
    port = free_port()
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port,
                    extra_args=["--startup-timeout", "3", "--metrics-listen", "127.0.0.1:%d" % port],
                    log_level="info")
    rss0 = rss_kib(p.proc)
    packet = pgwire.startup_packet("postgres")
    addr = p.tcp_addrs[0]
    slow = []
    for _ in range(1000):
        s = socket.create_connection(addr)
        s.setblocking(False)
        slow.append(s)
    t0 = time.monotonic()
    sent = 0
    closed = set()
    worst = 0.0
    while len(closed) < len(slow) and time.monotonic() - t0 < 15:
        for i, s in enumerate(slow):
            if i in closed:
                continue
            try:
                s.send(packet[sent:sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                closed.add(i)
                continue
            except BlockingIOError:
                pass
            try:
                if s.recv(4096) == b"":
                    closed.add(i)
            except BlockingIOError:
                pass
            except ConnectionResetError:
                closed.add(i)
        sent = min(sent + 1, len(packet) - 1)    # never the whole packet
        # A normal client is served at once, slowloris or not.
        q0 = time.monotonic()
        with p.connect() as c:
            assert c.execute("SELECT 1").fetchone() == (1,)
        worst = max(worst, time.monotonic() - q0)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - q0)))
    elapsed = time.monotonic() - t0
    for s in slow:
        s.close()
    assert len(closed) == len(slow), "%d of %d slow connections still open" % (
        len(slow) - len(closed), len(slow))
    assert 2.5 < elapsed < 8, elapsed
    assert worst < 1.0, "a normal session took %.2f s during the slowloris" % worst
    from test_metrics import http_get, samples
    m = samples(http_get(port, "/metrics")[2])
    assert m['pgwarden_client_connections_refused_total{reason="startup_timeout"}'] >= 1000
    wait_until(lambda: samples(http_get(port, "/metrics")[2])["pgwarden_client_connections"] == 0, 5,
               what="every connection to be gone")
    assert rss_kib(p.proc) < rss0 + 2 * RSS_SLACK_KIB, (rss0, rss_kib(p.proc))


def test_startup_timeout_fatal_to_a_silent_client(pg, start_proxy):
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port, extra_args=["--startup-timeout", "1"])
    s = socket.create_connection(p.tcp_addrs[0])
    s.sendall(pgwire.startup_packet("postgres")[:7])
    t0 = time.monotonic()
    err = fatal_of(s)
    s.close()
    assert err is not None and err[0] == "08006" and "did not complete" in err[1]
    assert time.monotonic() - t0 < 4


def test_idle_timeout_closes_idle_sessions_only(pg, start_proxy, run_dir):
    audit = run_dir / "idle.jsonl"
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port,
                    extra_args=["--idle-timeout", "2", "--audit-file", str(audit)])
    idle = p.connect()
    idle.execute("SELECT 1")
    busy = p.connect()
    # A statement running longer than the timeout is not idleness.
    assert busy.execute("SELECT pg_sleep(3.2), 'still here'").fetchone()[1] == "still here"
    time.sleep(0.5)
    with pytest.raises(psycopg.OperationalError) as e:
        idle.execute("SELECT 1")
    assert "idle-session timeout" in str(e.value)
    idle.close()
    busy.close()

    def ended():
        return [e for e in audit_events(audit, "session_end") if e.get("reason") == "timeout"]
    wait_until(lambda: ended(), 5, what="a session_end with reason timeout")
    with p.connect() as c:
        assert c.execute("SELECT 2").fetchone() == (2,)


def test_connection_flood_leaves_memory_where_it_was(pg, start_proxy):
    """5,000 connections opened and closed as fast as possible, half of them
    after a startup packet (so an upstream connection is made and dropped):
    RSS returns near its starting point and the proxy serves as before."""
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port, log_level="warn")
    with p.connect() as c:                  # warm the pools once
        c.execute("SELECT 1")
    rss0 = rss_kib(p.proc)
    addr = p.tcp_addrs[0]
    packet = pgwire.startup_packet("postgres")
    peak = rss0
    for i in range(5000):
        s = socket.create_connection(addr)
        if i % 2:
            s.sendall(packet)
        s.close()
        if i % 500 == 0:
            peak = max(peak, rss_kib(p.proc))
    with p.connect() as c:
        assert c.execute("SELECT 3").fetchone() == (3,)
    time.sleep(1)
    rss1 = rss_kib(p.proc)
    print("flood RSS KiB: start %d, peak %d, end %d" % (rss0, peak, rss1))
    assert rss1 < rss0 + RSS_SLACK_KIB, (rss0, peak, rss1)
