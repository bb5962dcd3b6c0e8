#!/usr/bin/env python3
"""Soak test: a mixed workload through pgwarden for a long time, with the
proxy's RSS sampled every 10 s. Fails when memory keeps growing.

    .venv/bin/python tests/soak.py                # 10 minutes (the default)
    .venv/bin/python tests/soak.py --minutes 2    # shorter
    .venv/bin/python tests/soak.py --spool        # the audit file with its spool

The workload: pgbench (TPC-B-like, extended protocol, 4 clients, reconnecting
every transaction with -C half of the time) plus psycopg sessions that open,
run a few statements (one failing, one COPY) and close, in a loop. pgwarden
runs with the file sink and the metrics endpoint. Verdict: after a warm-up
(the first third), the RSS samples must not trend upwards by more than
--max-growth-mib over the rest, and the last sample must be within that of
the first sample after warm-up. Exit status 0 on success."""

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "integration"))

import psycopg                      # noqa: E402

from harness import PgCluster, Proxy, free_port, pg_tool  # noqa: E402


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def sessions_loop(proxy, stop, counts):
    while not stop.is_set():
        try:
            with proxy.connect() as c:
                c.autocommit = True
                c.execute("SELECT count(*) FROM pgbench_accounts WHERE aid < %s", (1000,)).fetchone()
                try:
                    c.execute("SELECT 1/0")
                except psycopg.errors.DivisionByZero:
                    pass
                with c.cursor().copy("COPY (SELECT * FROM pgbench_branches) TO STDOUT") as cp:
                    for _ in cp:
                        pass
            counts["sessions"] += 1
        except psycopg.Error as e:
            counts["errors"] += 1
            counts["last_error"] = str(e)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--interval", type=float, default=10, help="seconds between RSS samples")
    ap.add_argument("--max-growth-mib", type=float, default=8)
    ap.add_argument("--spool", action="store_true",
                    help="the audit file with a spool (--spool-dir); it must be empty at the end")
    args = ap.parse_args()

    pg = PgCluster().start()
    work = Path(pg.base) / "soak"
    proxy = None
    stop = threading.Event()
    try:
        subprocess.run([pg_tool("pgbench"), "-i", "-q", "-s", "5", "-h", "127.0.0.1", "-p", str(pg.port),
                        "-U", "postgres", "postgres"], check=True, capture_output=True)
        proxy = Proxy(["127.0.0.1:%d" % free_port()], "127.0.0.1:%d" % pg.port, work,
                      ["--audit-file", str(work / "audit.jsonl"),
                       "--metrics-listen", "127.0.0.1:%d" % free_port()]
                      + (["--spool-dir", str(work / "spool")] if args.spool else []), log_level="warn")
        proxy.start()
        seconds = int(args.minutes * 60)
        host, port = proxy.tcp_addrs[0]
        bench = []
        for connect_each in (False, True):
            cmd = [pg_tool("pgbench"), "-n", "-c", "2", "-j", "1", "-T", str(seconds), "-M", "extended",
                   "-h", host, "-p", str(port), "-U", "postgres", "postgres"]
            if connect_each:
                cmd.insert(1, "-C")
            bench.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        counts = {"sessions": 0, "errors": 0, "last_error": ""}
        workers = [threading.Thread(target=sessions_loop, args=(proxy, stop, counts)) for _ in range(2)]
        for w in workers:
            w.start()
        samples = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            time.sleep(args.interval)
            assert proxy.alive(), proxy.log_tail()
            samples.append(rss_kib(proxy.proc.pid))
            print("%5.0f s  RSS %6.1f MiB  sessions %d  errors %d" % (
                time.monotonic() - t0, samples[-1] / 1024, counts["sessions"], counts["errors"]), flush=True)
        stop.set()
        for w in workers:
            w.join()
        for b in bench:
            out, _ = b.communicate(timeout=120)
            tps = [l for l in out.splitlines() if l.startswith("tps")]
            print("pgbench%s: %s" % (" -C" if "-C" in b.args else "", tps[-1] if tps else out[-300:]))
            if b.returncode != 0:
                print("soak: pgbench failed", file=sys.stderr)
                return 1
        rc = proxy.stop(timeout=60)
        report = proxy.sanitizer_report()
        if report:
            print("soak: sanitizer report:\n" + report, file=sys.stderr)
            return 1
        if rc != 0:
            print("soak: pgwarden exited with %s" % rc, file=sys.stderr)
            return 1
        left = [f for f in (work / "spool").glob("*.seg") if f.read_bytes().rstrip(b"\0")[8:]]
        if left:
            print("soak: records left in the spool: %s" % left, file=sys.stderr)
            return 1
        if counts["errors"]:
            print("soak: %d session errors, last: %s" % (counts["errors"], counts["last_error"]), file=sys.stderr)
            return 1
        steady = samples[len(samples) // 3:]
        if len(steady) < 3:
            print("soak: too few samples for a verdict; run longer", file=sys.stderr)
            return 1
        growth = (steady[-1] - steady[0]) / 1024
        half = len(steady) // 2
        trend = (statistics.mean(steady[half:]) - statistics.mean(steady[:half])) / 1024
        print("RSS after warm-up: first %.1f MiB, last %.1f MiB, max %.1f MiB; growth %.1f MiB, "
              "trend %.1f MiB (limit %.1f)" % (steady[0] / 1024, steady[-1] / 1024, max(steady) / 1024,
                                               growth, trend, args.max_growth_mib))
        if growth > args.max_growth_mib or trend > args.max_growth_mib:
            print("soak: memory keeps growing", file=sys.stderr)
            return 1
        print("soak: OK (%d psycopg sessions, %d RSS samples)" % (counts["sessions"], len(samples)))
        return 0
    finally:
        stop.set()
        if proxy:
            proxy.kill()
        pg.stop()


if __name__ == "__main__":
    sys.exit(main())
