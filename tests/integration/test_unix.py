"""pgwarden on unix sockets: listening on a socket directory and using
PostgreSQL's socket directory as the upstream."""

import os
import signal

import pgwire
from harness import pgbench, psql


def test_unix_listen_creates_socket_named_after_tcp_port(unix_proxy):
    (path,) = unix_proxy.unix_paths
    assert path.endswith(".s.PGSQL.%d" % unix_proxy.tcp_addrs[0][1])
    assert os.path.exists(path)


def test_queries_over_unix_listener(pg, unix_proxy):
    ux = unix_proxy.unix_endpoint()
    with ux.connect() as conn:
        row = conn.execute("SELECT inet_client_addr() IS NULL, %s::int + 1", (41,)).fetchone()
        # Upstream is PostgreSQL's unix socket: the backend sees a local client.
        assert row == (True, 42)
        cur = conn.execute("SELECT 1; SELECT 2")
        assert cur.fetchall() == [(1,)] and cur.nextset() and cur.fetchall() == [(2,)]
    r = psql(ux, "-At", "-c", "SELECT count(*) FROM generate_series(1, 12345)")
    assert r.stdout == b"12345\n"
    # The TCP listener of the same proxy also reaches the unix upstream.
    with unix_proxy.connect() as conn:
        assert conn.execute("SELECT inet_client_addr() IS NULL").fetchone() == (True,)


def test_pgbench_over_unix(pg, unix_proxy):
    pg.sql("DROP DATABASE IF EXISTS pgw_unix_bench")
    pg.sql("CREATE DATABASE pgw_unix_bench")
    ux = unix_proxy.unix_endpoint()
    pgbench(ux, "-i", "-s", "1", "-q", dbname="pgw_unix_bench")
    for mode in ("simple", "prepared"):
        r = pgbench(ux, "-M", mode, "-c", "4", "-j", "2", "-T", "2", "-n", dbname="pgw_unix_bench")
        out = r.stdout.decode()
        assert "number of failed transactions: 0 " in out, out
        processed = int(out.split("number of transactions actually processed: ")[1].split()[0])
        assert processed > 0


def test_unix_listen_only_defaults_to_5432(pg, start_proxy, run_dir):
    sockdir = run_dir / "unix-only"
    sockdir.mkdir()
    p = start_proxy(listen=[str(sockdir)], upstream=str(pg.sockdir))
    assert p.unix_paths == [str(sockdir / ".s.PGSQL.5432")]
    r = psql(p, "-At", "-c", "SELECT 'unix only'")
    assert r.stdout == b"unix only\n"
    with pgwire.connect(p.unix_paths[0]) as c:
        c.send(pgwire.ssl_request())
        assert c.recv_exact(1) == b"N"
    p.signal(signal.SIGTERM)
    assert p.wait(timeout=10) == 0, p.log_tail()
    # A clean exit removes the socket file, so the next start is not blocked.
    assert not os.path.exists(p.unix_paths[0])


def test_tcp_listen_with_unix_upstream_socket_file(pg, start_proxy):
    # --upstream may also name the socket file itself.
    p = start_proxy(upstream=pg.socket_path)
    assert psql(p, "-At", "-c", "SELECT 7").stdout == b"7\n"
