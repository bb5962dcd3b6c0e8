#!/usr/bin/env python3
"""Memory per idle client connection (DESIGN.md: ≤ 16 KiB RSS each, 10,000 at once).

Two kinds of idle connection, each measured on a freshly started proxy:

  pre-startup    --connections TCP connections (10,000) accepted by the proxy that
                 send nothing: no startup packet, no upstream connection yet
  authenticated  --sessions sessions (500) that completed their startup through
                 the proxy (StartupMessage, AuthenticationOk, ReadyForQuery) and
                 then sit idle; each holds a PostgreSQL backend, so their number
                 is bounded by what the cluster can hold (max_connections is set
                 to --sessions + 30)

per connection = (proxy RSS with the connections open − RSS before) ÷ count,
from /proc/PID/status (VmRSS: the proxy's own memory; the kernel's socket
buffers are not in it). Targets: pgwarden without audit, pgwarden with full
audit to the file sink, PgBouncer (session mode) for comparison. RLIMIT_NOFILE
is raised as needed (as root, the hard limit too). A measurement: it never
fails on a figure.

    bench/idle.py [--connections 10000] [--sessions 500] [--targets ...] [--json FILE]
"""

import argparse
import json
import os
import shlex
import signal
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import (CLEANUP, DB, DBUSER, build, check_pg_tools, client_env, common_args,  # noqa: E402
                      createdb, free_port, install_handlers, log, main_wrapper, make_tmp, pick_runas,
                      proc_status_kib, raise_nofile, start_postgres, start_proxy, stop_process,
                      write_pgbouncer_ini)

ALL_TARGETS = ["pgwarden", "pgwarden-audit", "pgbouncer"]


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def wait_fds(pid, want, timeout):
    """Waits until the process has at least want descriptors open; returns the count."""
    deadline = time.monotonic() + timeout
    n = fd_count(pid)
    while n < want and time.monotonic() < deadline:
        time.sleep(0.02)
        n = fd_count(pid)
    return n


def settled_rss(pid, quiet=0.5, timeout=10.0):
    """VmRSS once it has stopped moving for `quiet` seconds (or after timeout)."""
    deadline = time.monotonic() + timeout
    last = proc_status_kib(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = proc_status_kib(pid)
        if now == last:
            break
        last = now
    return last


def startup(port, timeout=30.0):
    """A complete protocol-3.0 startup (trust authentication) on a new socket; returns
    the socket after ReadyForQuery. Raises on an ErrorResponse."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    params = b"".join(k + b"\0" + v + b"\0" for k, v in
                      ((b"user", DBUSER.encode()), (b"database", DB.encode()),
                       (b"application_name", b"idle-bench"))) + b"\0"
    body = struct.pack("!I", 196608) + params
    s.sendall(struct.pack("!I", len(body) + 4) + body)
    buf = b""
    while True:
        while len(buf) < 5 or len(buf) < 1 + struct.unpack("!I", buf[1:5])[0]:
            chunk = s.recv(65536)
            if not chunk:
                s.close()
                raise RuntimeError("connection closed during startup")
            buf += chunk
        kind, n = buf[0:1], struct.unpack("!I", buf[1:5])[0]
        msg, buf = buf[5:1 + n], buf[1 + n:]
        if kind == b"E":
            s.close()
            raise RuntimeError("startup refused: " + msg.decode("utf-8", "replace"))
        if kind == b"Z":
            return s


def terminate(s):
    try:
        s.sendall(b"X\0\0\0\4")
    except OSError:
        pass
    s.close()


def start_target(args, name, tmp, env, runas, pg, sockdir, pgw_bin, serial):
    port = free_port()
    tag = f"{name}-{serial}"
    if name == "pgbouncer":
        # client_login_timeout: PgBouncer closes connections without a startup after 60 s by default
        ini = write_pgbouncer_ini(tmp, tag, port, "127.0.0.1", pg.port, runas,
                                  clients=max(args.connections, args.sessions), extra="client_login_timeout = 0\n")
        cmd, ra = [args.pgbouncer, "-q", ini], runas
    else:
        cmd, ra = [pgw_bin, "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{pg.port}",
                   "--threads", str(args.threads), "--log-level", "error", "--startup-timeout", "0",
                   "--max-client-connections", "0"], None
        if name == "pgwarden-audit":
            cmd += ["--audit-file", os.path.join(tmp, tag + ".jsonl")]
    t, err = start_proxy(tag, cmd, port, tmp, env, ra)
    if err:
        raise RuntimeError(err)
    return t


def measure(args, name, kind, tmp, env, runas, pg, sockdir, pgw_bin, serial):
    """One (target, kind) on a fresh proxy: a dict of figures."""
    t = start_target(args, name, tmp, env, runas, pg, sockdir, pgw_bin, serial)
    pid = t.proc.pid
    try:
        terminate(startup(t.port))              # one session first: pools, caches, TLS-free paths warmed
        time.sleep(0.5)
        base_fds = fd_count(pid)
        base = settled_rss(pid)
        socks = []
        count = args.connections if kind == "pre-startup" else args.sessions
        t0 = time.monotonic()
        if kind == "pre-startup":
            batch = 100      # under the smallest listen backlog (PgBouncer: 128): no dropped handshake ACKs
            for i in range(0, count, batch):
                for _ in range(min(batch, count - i)):
                    socks.append(socket.create_connection(("127.0.0.1", t.port), timeout=30))
                # (a descriptor of the warm-up session may still be closing: a little slack)
                got = wait_fds(pid, base_fds + len(socks) - 2, 60)
                if got < base_fds + len(socks) - 2:
                    raise RuntimeError(f"{name}: only {got - base_fds} of {len(socks)} connections accepted")
        else:
            for _ in range(count):
                socks.append(startup(t.port))
        opened = time.monotonic() - t0
        time.sleep(1.0)
        if t.proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {t.proc.returncode}")
        # still open: a proxy that dropped idle connections would have fewer descriptors
        fds = fd_count(pid) - base_fds
        rss = settled_rss(pid)
        hwm = proc_status_kib(pid, "VmHWM")
        alive = sum(1 for s in socks if _still_open(s))
        for s in socks:
            terminate(s) if kind == "authenticated" else s.close()
        return {"target": name, "kind": kind, "count": count, "open_after": alive, "proxy_fds": fds,
                "rss_before_kib": base, "rss_kib": rss, "hwm_kib": hwm,
                "per_conn_kib": (rss - base) / count, "open_seconds": opened}
    finally:
        stop_process(t.proc, signal.SIGTERM, grace=10)
        CLEANUP.forget(t.proc)


def _still_open(s):
    """True if the peer has not closed the socket (nothing to read, no EOF)."""
    s.setblocking(False)
    try:
        return s.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        s.setblocking(True)


def parse_args(argv):
    env = os.environ.get
    p = argparse.ArgumentParser(prog="bench/idle.py", description=__doc__.split("\n")[0])
    p.add_argument("--connections", type=int, default=int(env("BENCH_IDLE_CONNECTIONS", 10000)),
                   help="pre-startup idle connections [BENCH_IDLE_CONNECTIONS] (10000)")
    p.add_argument("--sessions", type=int, default=int(env("BENCH_IDLE_SESSIONS", 500)),
                   help="authenticated idle sessions, each with a backend [BENCH_IDLE_SESSIONS] (500)")
    p.add_argument("--targets", default=env("BENCH_IDLE_TARGETS", ",".join(ALL_TARGETS)),
                   help=f"comma-separated subset of {','.join(ALL_TARGETS)} (all)")
    p.add_argument("--threads", type=int, default=int(env("BENCH_PROXY_THREADS", 2)),
                   help="pgwarden loop threads [BENCH_PROXY_THREADS] (2)")
    p.add_argument("--json", help="also write the figures as JSON to this file")
    common_args(p)
    a = p.parse_args(argv)
    a.targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    if any(t not in ALL_TARGETS for t in a.targets) or a.connections < 1 or a.sessions < 1:
        p.error("bad --targets / --connections / --sessions")
    a.build_dir = os.path.abspath(a.build_dir)
    return a


def main(argv):
    args = parse_args(argv)
    install_handlers()
    runas = pick_runas(args)
    env = client_env()
    check_pg_tools(args, ("initdb", "postgres", "pg_isready", "createdb"))
    want = args.connections + args.sessions + 1024
    nofile = raise_nofile(want)
    if nofile < want:
        log(f"RLIMIT_NOFILE is {nofile} (< {want}): fewer connections")
        args.connections = max(1, nofile - args.sessions - 1024)
    pgw_bin, _, notes = build(args, any(t.startswith("pgwarden") for t in args.targets), False)
    tmp = make_tmp(args, runas, prefix="pgwarden-idle-")
    pg, sockdir = start_postgres(args, tmp, runas, env, max_connections=args.sessions + 30)
    createdb(args, pg.port, env)
    rows, serial, failed = [], 0, []
    for name in args.targets:
        if name.startswith("pgwarden") and not pgw_bin:
            log(f"skipping {name}: {notes[-1] if notes else 'no pgwarden binary'}")
            continue
        if name == "pgbouncer" and not os.access(args.pgbouncer, os.X_OK):
            log(f"skipping {name}: {args.pgbouncer} not found")
            continue
        for kind in ("pre-startup", "authenticated"):
            serial += 1
            try:
                r = measure(args, name, kind, tmp, env, runas, pg, sockdir, pgw_bin, serial)
            except (RuntimeError, OSError) as e:
                log(f"{name} {kind}: FAILED: {e}")
                failed.append(f"{name} {kind}: {e}")
                continue
            log(f"{name:<15} {kind:<13} {r['count']:>6} open ({r['open_after']} still open after 1 s, "
                f"{r['open_seconds']:.1f} s to open): RSS {r['rss_before_kib']:,} → {r['rss_kib']:,} KiB, "
                f"{r['per_conn_kib']:.1f} KiB per connection")
            rows.append(r)
    lines = [f"Idle connections, {time.strftime('%Y-%m-%d %H:%M %Z')}, `{shlex.join(['bench/idle.py'] + argv)}`, "
             f"pgwarden --threads {args.threads}:", "",
             "| target | idle connections | count | still open | RSS before (KiB) | RSS with them (KiB) "
             "| per connection (KiB) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['target']} | {r['kind']} | {r['count']:,} | {r['open_after']:,} "
                     f"| {r['rss_before_kib']:,} | {r['rss_kib']:,} | {r['per_conn_kib']:.1f} |")
    lines += [f"- FAILED {f}" for f in failed]
    print("\n" + "\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    main_wrapper(main)
