#!/usr/bin/env python3
"""TLS benchmark: pgbench -S over TLS straight to PostgreSQL (ssl=on) against
pgbench over TLS to pgwarden, which speaks plain or TLS to the server; and
pgwarden's TLS handshakes per CPU-second of its one loop thread.

Run from the repository root with the test venv (it reuses the integration
harness to start PostgreSQL and pgwarden, and makes its certificates with
the openssl CLI as the tests do):

    .venv/bin/python bench/tls_bench.py [--seconds 10] [--rounds 3] [--clients 8]

Targets (clients always use sslmode=require over TCP):
  direct-tls       PostgreSQL itself terminates TLS
  pgwarden-tls     pgwarden --threads 1 terminates TLS, plain to the server
  pgwarden-tls2    the same, TLS to the server too (--upstream-sslmode require)

Handshakes: client processes open direct-TLS connections (ALPN postgresql)
to pgwarden and close them after the handshake; pgwarden's CPU time from
/proc gives handshakes per second of one core (RSA-2048 certificate, X25519).
A measurement, not a test: it prints numbers and never fails on them.
"""

import argparse
import multiprocessing
import os
import re
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from harness import PgCluster, Proxy, client_env, free_port, pg_tool  # noqa: E402


def openssl(cwd, *args):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, capture_output=True)


def make_certs(d):
    openssl(d, "req", "-sha256", "-new", "-x509", "-days", "365", "-nodes", "-subj", "/CN=bench CA",
            "-out", "ca.crt", "-keyout", "ca.key")
    openssl(d, "req", "-sha256", "-new", "-nodes", "-subj", "/CN=localhost",
            "-out", "server.csr", "-keyout", "server.key")
    openssl(d, "x509", "-req", "-sha256", "-days", "365", "-in", "server.csr", "-CA", "ca.crt",
            "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.crt")


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pgbench(port, seconds, clients, mode):
    cmd = [pg_tool("pgbench"), "-n", "-S", "-M", mode, "-c", str(clients), "-j", "2", "-T", str(seconds),
           "-h", "localhost", "-p", str(port), "-U", "postgres", "postgres"]
    r = subprocess.run(cmd, env=client_env(PGSSLMODE="require"), capture_output=True, text=True,
                       timeout=seconds + 60)
    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", r.stdout)
    if r.returncode or not m:
        raise RuntimeError("pgbench failed: %s %s" % (r.stdout[-500:], r.stderr[-500:]))
    return float(m.group(1))


def handshake_worker(port, cafile, deadline, q):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["postgresql"])
    n = 0
    while time.monotonic() < deadline:
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost"):
                n += 1
    q.put(n)


def handshakes(proxy, cafile, seconds, procs):
    q = multiprocessing.Queue()
    deadline = time.monotonic() + seconds
    cpu0 = cpu_seconds(proxy.proc.pid)
    ps = [multiprocessing.Process(target=handshake_worker, args=(proxy.port, cafile, deadline, q))
          for _ in range(procs)]
    for p in ps:
        p.start()
    total = sum(q.get() for _ in ps)
    for p in ps:
        p.join()
    cpu = cpu_seconds(proxy.proc.pid) - cpu0
    return total / seconds, total / cpu if cpu else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--modes", default="simple,prepared")
    ap.add_argument("--handshake-procs", type=int, default=2)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pgwarden-tlsbench-"))
    os.chmod(tmp, 0o755)
    make_certs(tmp)
    pg = PgCluster(extra_conf="ssl = on\nssl_cert_file = '../server.crt'\nssl_key_file = '../server.key'\n"
                              "log_min_messages = error\n")
    for n in ("server.crt", "server.key"):
        (pg.base / n).write_bytes((tmp / n).read_bytes())
        pg.give(pg.base / n)
    pg.start()
    proxies = []
    try:
        subprocess.run([pg_tool("pgbench"), "-i", "-q", "-s", "10", "-h", "127.0.0.1", "-p", str(pg.port),
                        "-U", "postgres", "postgres"], env=client_env(), check=True, capture_output=True)
        tls = ["--tls-cert", str(tmp / "server.crt"), "--tls-key", str(tmp / "server.key")]
        targets = {"direct-tls": pg.port}
        for name, upstream, extra in (("pgwarden-tls", "127.0.0.1:%d" % pg.port, []),
                                      ("pgwarden-tls2", "localhost:%d" % pg.port,
                                       ["--upstream-sslmode", "require"])):
            p = Proxy(["127.0.0.1:%d" % free_port()], upstream, tmp / name, tls + extra,
                      threads=1, log_level="error").start()
            proxies.append(p)
            targets[name] = p.port

        modes = args.modes.split(",")
        results = {(t, m): [] for t in targets for m in modes}
        names = list(targets)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for m in (modes if r % 2 == 0 else modes[::-1]):
                for t in order:
                    tps = pgbench(targets[t], args.seconds, args.clients, m)
                    results[(t, m)].append(tps)
                    print("round %d %-14s %-8s %10.0f tps" % (r + 1, t, m, tps), flush=True)

        print("\nmedian tps over %d round(s) of %ds, pgbench -S -c %d -j 2, sslmode=require:"
              % (args.rounds, args.seconds, args.clients))
        for m in modes:
            d = statistics.median(results[("direct-tls", m)])
            for t in names:
                v = statistics.median(results[(t, m)])
                print("  %-8s %-14s %10.0f  (%.2f of direct-tls)" % (m, t, v, v / d))

        rate, per_core = handshakes(proxies[0], str(tmp / "ca.crt"), args.seconds, args.handshake_procs)
        print("\nTLS handshakes (direct TLS, ALPN, RSA-2048, %d client processes, pgwarden --threads 1):"
              % args.handshake_procs)
        print("  %.0f handshakes/s achieved; %.0f handshakes per CPU-second of pgwarden" % (rate, per_core))
    finally:
        for p in proxies:
            p.stop()
        pg.stop()


if __name__ == "__main__":
    main()
