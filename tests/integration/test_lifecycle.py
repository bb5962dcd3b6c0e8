"""Stopping pgwarden: SIGTERM/SIGINT stop new connections at once, let open
sessions finish (up to --drain-timeout), and exit 0."""

import signal
import socket
import subprocess
import time

import psycopg
import pytest

import pgwire
from harness import PGW_BINARY, wait_until


def refuses_new_sessions(addr):
    """True when a new client cannot get a session: the TCP connect is
    refused, or the proxy answers the startup with an error / a close."""
    try:
        c = pgwire.connect(addr, timeout=2)
    except (ConnectionRefusedError, ConnectionResetError, FileNotFoundError):
        # Reset: the connect landed in the backlog of a listener being closed.
        return True
    with c:
        try:
            c.send(pgwire.startup_packet("postgres"))
            m = c.recv_msg()
        except socket.timeout:
            return False            # accepted and left hanging: not a refusal
        except (OSError, pgwire.ProtocolError):
            return True
        return m is None or m[0] == "E"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_drains_open_session(pg, start_proxy, sig):
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port, extra_args=["--drain-timeout", "30"])
    addr = p.tcp_addrs[0]
    conn = p.connect()
    try:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        t0 = time.monotonic()
        p.signal(sig)
        wait_until(lambda: refuses_new_sessions(addr), 1.5, interval=0.05,
                   what="new connections to be refused")
        # The open session is still served while draining.
        time.sleep(0.5)
        assert p.alive(), "exited with a session still open\n" + p.log_tail()
        assert conn.execute("SELECT 'draining'").fetchone() == ("draining",)
        assert refuses_new_sessions(addr)
    finally:
        conn.close()
    rc = p.wait(timeout=10)
    assert rc == 0, "exit status %s\n%s" % (rc, p.log_tail())
    assert time.monotonic() - t0 < 15


def test_drain_timeout_ends_lingering_sessions(pg, start_proxy):
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port, extra_args=["--drain-timeout", "2"])
    conn = p.connect()
    try:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        t0 = time.monotonic()
        p.signal(signal.SIGTERM)
        try:
            rc = p.wait(timeout=12)
        except subprocess.TimeoutExpired:
            pytest.fail("still running 12 s after SIGTERM with --drain-timeout 2\n" + p.log_tail())
        elapsed = time.monotonic() - t0
        assert rc == 0, "exit status %s\n%s" % (rc, p.log_tail())
        assert 1.5 <= elapsed < 12, elapsed
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        # The upstream session was closed as well.
        wait_until(lambda: not pg.sql("SELECT 1 FROM pg_stat_activity WHERE pid = %d" % pid), 10,
                   what="upstream backend to exit")
    finally:
        conn.close()


def test_stop_with_no_sessions_is_quick(pg, start_proxy):
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port)
    with p.connect() as conn:
        conn.execute("SELECT 1")
    t0 = time.monotonic()
    p.signal(signal.SIGTERM)
    assert p.wait(timeout=10) == 0, p.log_tail()
    assert time.monotonic() - t0 < 3


def test_second_instance_on_same_port_is_refused(pg, proxy):
    """Every listener uses SO_REUSEPORT (one socket per thread); a second
    pgwarden started on an address that one already serves must fail at
    start, not quietly take a share of the connections."""
    host, port = proxy.tcp_addrs[0]
    r = subprocess.run([str(PGW_BINARY), "--listen", "%s:%d" % (host, port),
                        "--upstream", "127.0.0.1:%d" % pg.port, "--threads", "2"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode != 0
    assert "cannot listen on %s:%d" % (host, port) in r.stderr
    assert "in use" in r.stderr
    with proxy.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("spooled", [False, True], ids=["file", "file-spool"])
def test_sigterm_during_pgbench_flushes_every_event(pg, start_proxy, tmp_path, spooled):
    """SIGTERM in the middle of a pgbench run: the running sessions finish
    within the drain timeout, pgwarden exits 0, and the audit file holds one
    event per statement pgbench ran, each session closed by a session_end.
    With a spool, no begin record reaches the file and the spool ends empty."""
    import json
    import re
    import threading
    from harness import client_env, pgbench

    dbname = "pgw_drain_bench"
    if not pg.sql("SELECT 1 FROM pg_database WHERE datname = '%s'" % dbname):
        pg.sql("CREATE DATABASE %s" % dbname)
        pgbench(pg, "-i", "-s", "1", "-q", dbname=dbname)
    audit = tmp_path / "drain-pgbench.jsonl"
    spool = tmp_path / "spool"
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port,
                    extra_args=["--audit-file", str(audit), "--drain-timeout", "30"]
                    + (["--spool-dir", str(spool)] if spooled else []))
    result = {}

    def bench():
        result["r"] = pgbench(p, "-n", "-S", "-c", "4", "-T", "4", "-M", "prepared", dbname=dbname,
                              env=client_env(PGAPPNAME="drain-bench"), check=False)

    t = threading.Thread(target=bench)
    t.start()
    time.sleep(1.5)
    p.signal(signal.SIGTERM)
    t.join(60)
    rc = p.wait(timeout=40)
    assert rc == 0, "exit status %s\n%s" % (rc, p.log_tail())
    out = result["r"].stdout.decode()
    assert result["r"].returncode == 0, out + result["r"].stderr.decode()
    done = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))
    assert done > 0
    with open(audit) as f:
        evs = [json.loads(line) for line in f]
    mine = [e for e in evs if e.get("client", {}).get("application") == "drain-bench"]
    selects = [e for e in mine if e["kind"] == "statement"
               and e["statement"].get("command") == "SELECT"
               and e["statement"]["text"].startswith("SELECT abalance FROM pgbench_accounts")]
    assert len(selects) == done
    assert all(e["result"]["status"] == "ok" for e in selects)
    # pgbench's 4 clients (and its own first connection): every session ended.
    starts = sum(e["kind"] == "session_start" for e in mine)
    assert starts >= 4
    assert sum(e["kind"] == "session_end" for e in mine) == starts
    assert len({e["event_id"] for e in evs}) == len(evs)
    if spooled:
        assert "spooled in" in p.log_tail(50000)
        left = [f for f in spool.glob("*.seg") if f.read_bytes().rstrip(b"\0")[8:]]
        assert not left, "records left in the spool: %s" % left


def test_sigterm_while_starting_is_a_clean_stop(pg, start_proxy, tmp_path):
    """SIGTERM the moment the listener accepts, while the Kafka sink is
    still starting (an unreachable broker, its spool being opened): the
    signal is kept and the stop is the usual drain, exit 0, not death by
    the signal's default action."""
    from harness import free_port
    for i in range(10):
        p = start_proxy(upstream="127.0.0.1:%d" % pg.port, wait=False, extra_args=[
            "--kafka-brokers", "127.0.0.1:%d" % free_port(), "--kafka-topic", "t",
            "--spool-dir", str(tmp_path / ("spool%d" % i))])
        with open(tmp_path / ("stderr%d" % i), "wb") as err:
            proc = subprocess.Popen(p.args, stdout=subprocess.DEVNULL, stderr=err)
            try:
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    try:
                        socket.create_connection(p.tcp_addrs[0], timeout=1).close()
                        break
                    except OSError:
                        time.sleep(0.001)
                proc.send_signal(signal.SIGTERM)
                rc = proc.wait(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        text = (tmp_path / ("stderr%d" % i)).read_text(errors="replace")
        assert rc == 0, "run %d: exit %s\n%s" % (i, rc, text)
        assert "Sanitizer" not in text and "runtime error:" not in text, text
