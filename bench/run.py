#!/usr/bin/env python3
"""pgwarden throughput benchmark: pgbench -S through each proxy, as ratios in one run.

Targets (all on loopback, the clients always speak TCP to the target):
  direct          pgbench straight to PostgreSQL (TCP)
  direct-tls      the same over TLS (PostgreSQL with ssl=on, PGSSLMODE=require)
  fwdlimit-tcp    the bare libuv forwarder (../shared/tools/fwdlimit.c), TCP upstream
  fwdlimit-unix   the same, unix-socket upstream
  pgbouncer       PgBouncer in session mode, TCP upstream
  pgbouncer-unix  the same, unix-socket upstream          (not in the default set)
  pgwarden-tcp    build/pgwarden, TCP upstream
  pgwarden-unix   build/pgwarden, unix-socket upstream (--upstream SOCKDIR)
  pgwarden-audit-tcp, pgwarden-audit-unix
                  full audit to the file sink (--audit-file), TCP or unix upstream
  pgwarden-audit-scraped-tcp
                  the same with /metrics scraped every second
  pgwarden-spool-tcp  full audit to the file sink with its durable spool (--spool-dir:
                  statements spooled before they are forwarded), TCP upstream
  pgwarden-kafka-tcp  full audit to the Kafka sink and its spool, TCP upstream; a
                  single KRaft broker on this machine (tests/integration/kafka_broker.py,
                  needs the JDK, Maven's cache and confluent-kafka: bench/run.sh uses
                  the repository's .venv when there is one)
  pgwarden-policy-tcp  full audit to the file sink plus an access policy of 20
                  statement rules that never match pgbench's statements
  pgwarden-tls    pgwarden terminates the clients' TLS, plain TCP upstream, no audit
  pgwarden-tls2   the same with TLS to the server too (--upstream-sslmode require)
  pgwarden-audit-tls  client TLS and full audit to the file sink, plain TCP upstream

Every round runs every (clients, mode, target) once; the order of targets rotates
from round to round and the orders of the modes and client counts alternate, so
slow drift (CPU frequency, page cache, a neighbour's build) spreads over all
targets. The tables report medians over the rounds. At 1 client, pgbench's
per-transaction log gives the latency percentiles. --matrix runs every target at
1, 8, 64 and 256 clients and plots TPS by clients (matplotlib). It is a
measurement, not a test: it never fails on ratios.
"""

import argparse
import glob
import multiprocessing
import os
import re
import shlex
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import report  # noqa: E402
from benchlib import (BENCH_DIR, CLEANUP, DB, DBUSER, KAFKA_TOPIC, CpuWindow, build,  # noqa: E402
                      build_type, check_pg_tools, client_env, common_args, createdb, free_port,
                      install_handlers,
                      log, main_wrapper, make_certs, make_tmp, pick_runas, probe, proc_cpu_ns, raise_nofile,
                      run_checked, start_kafka, start_postgres, start_proxy, stop_process, tail, wait_quiet,
                      write_pgbouncer_ini, Target)

ALL_TARGETS = ["direct", "direct-tls", "fwdlimit-tcp", "fwdlimit-unix", "pgbouncer", "pgbouncer-unix",
               "pgwarden-tcp", "pgwarden-unix", "pgwarden-audit-tcp", "pgwarden-audit-unix",
               "pgwarden-audit-scraped-tcp", "pgwarden-spool-tcp", "pgwarden-kafka-tcp", "pgwarden-policy-tcp",
               "pgwarden-tls",
               "pgwarden-tls2", "pgwarden-audit-tls"]
DEFAULT_TARGETS = ["direct", "fwdlimit-tcp", "fwdlimit-unix", "pgbouncer",
                   "pgwarden-tcp", "pgwarden-unix", "pgwarden-audit-tcp", "pgwarden-audit-unix"]
MATRIX_TARGETS = ["direct", "direct-tls", "fwdlimit-tcp", "fwdlimit-unix", "pgbouncer",
                  "pgwarden-tcp", "pgwarden-unix", "pgwarden-audit-tcp", "pgwarden-audit-unix",
                  "pgwarden-kafka-tcp", "pgwarden-audit-tls"]
MATRIX_CLIENTS = [1, 8, 64, 256]
# 20 statement rules for the pgwarden-policy-tcp target, none of which
# matches a pgbench statement (the acceptance ratio is policy / audit >= 0.95).
POLICY_RULES = "".join(
    [f"statement deny name=secret_{i} relation=secret_{i}.*\n" for i in range(10)]
    + [f"statement deny name=cmd_{i} command=\"{c}\"\n" for i, c in enumerate(
        ["DROP TABLE", "TRUNCATE", "ALTER SYSTEM", "COPY TO PROGRAM", "COPY FROM PROGRAM",
         "CREATE ROLE", "DROP DATABASE"])]
    + ["statement deny name=no_roles class=ROLE\n", "statement require-where name=where_guard\n",
       "statement read-only name=reporting user=report_only\n"])


# --------------------------------------------------------------------------- pgbench

TPS_RE = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
LAT_RE = re.compile(r"^latency average = ([0-9.]+) ms", re.M)
FAILED_RE = re.compile(r"^number of failed transactions: (\d+)", re.M)
TXNS_RE = re.compile(r"^number of transactions actually processed: (\d+)", re.M)


def pgbench(args, target, mode, clients, seconds, env, latency_log=None):
    """One pgbench -S run. latency_log: a path prefix for --log (per-transaction
    latencies). Returns (tps, average latency ms, note)."""
    jobs = max(1, min(clients, args.jobs))
    cmd = [os.path.join(args.pg_bindir, "pgbench"), "-n", "-S", "-c", str(clients), "-j", str(jobs),
           "-T", str(seconds), "-M", mode, "-h", "127.0.0.1", "-p", str(target.port), "-U", DBUSER]
    if latency_log:
        cmd += ["--log", f"--log-prefix={latency_log}"]
    cmd.append(DB)
    env = dict(env, **getattr(target, "env", {}))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, env=env, start_new_session=True)
    CLEANUP.add("pgbench", proc, signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=seconds + 120)
    except subprocess.TimeoutExpired:
        stop_process(proc, signal.SIGINT, grace=2)
        out, err = proc.communicate()
        err = "pgbench timed out\n" + (err or "")
    CLEANUP.forget(proc)
    text = (out or "") + (err or "")
    m_tps, m_lat = TPS_RE.search(text), LAT_RE.search(text)
    m_failed = FAILED_RE.search(text)
    m_tx = TXNS_RE.search(text)
    if m_tx:                        # totals, for the Kafka target's count check
        target.tx = getattr(target, "tx", 0) + int(m_tx.group(1))
        target.runs = getattr(target, "runs", 0) + 1
        # its clients' sessions, plus one first connection for pgbench's two setup queries
        target.sessions = getattr(target, "sessions", 0) + clients + 1
    if proc.returncode != 0 or not m_tps or not m_lat:
        lines = [l for l in text.splitlines() if l.strip()]
        return None, None, f"pgbench rc={proc.returncode}: " + " | ".join(lines[-3:])
    note = None
    if m_tx and int(m_tx.group(1)) == 0:
        # pgbench's -T clock starts before its clients connect
        return None, None, (f"no transaction in {seconds} s: connecting {clients} clients took longer "
                            f"(a longer --seconds helps)")
    if m_failed and int(m_failed.group(1)) > 0:
        note = f"{m_failed.group(1)} failed transactions"
    target.last_txns = int(m_tx.group(1)) if m_tx else None
    return float(m_tps.group(1)), float(m_lat.group(1)), note


def latency_percentiles(prefix):
    """p50, p99 in µs from the log files of one pgbench --log run; removes them."""
    files = glob.glob(prefix + ".*")
    try:
        return report.percentiles(report.read_pgbench_log(files))
    finally:
        for f in files:
            os.unlink(f)


# --------------------------------------------------------------------------- targets

def start_targets(args, tmp, runas, env, direct, sockdir, pgw_bin, fwd_bin, skipped, tls_dir):
    """Starts every selected proxy; one that does not start or fails a real query is
    skipped (reason in skipped). Returns {name: Target}, direct included."""
    pg_port = direct.port
    upsock = os.path.join(sockdir, f".s.PGSQL.{pg_port}")
    targets = {"direct": direct}
    direct.cmd = None
    tls_env = {"PGSSLMODE": "require"}
    pgw_common = ["--threads", str(args.threads), "--log-level", "error"] + shlex.split(args.pgwarden_args)
    tls_opts = (["--tls-cert", os.path.join(tls_dir, "server.crt"), "--tls-key", os.path.join(tls_dir, "server.key")]
                if tls_dir else [])
    up_tcp = f"127.0.0.1:{pg_port}"
    for name in args.targets:
        if name == "direct" or name in skipped:
            continue
        if name == "direct-tls":
            t = Target(name, pg_port, direct.proc, direct.logfile)
            t.cmd, t.env = None, tls_env
            err = probe(args, t, dict(env, **tls_env))
            if err:
                skipped[name] = err
                log(f"skipping {name}: {err}")
            else:
                targets[name] = t
            continue
        port = free_port()
        ra = None
        listen = ["--listen", f"127.0.0.1:{port}"]
        if name == "fwdlimit-tcp":
            cmd = [fwd_bin, str(port), str(pg_port), str(args.threads)]
        elif name == "fwdlimit-unix":
            cmd = [fwd_bin, str(port), upsock, str(args.threads)]
        elif name == "pgwarden-tcp":
            cmd = [pgw_bin] + listen + ["--upstream", up_tcp] + pgw_common
        elif name == "pgwarden-unix":
            cmd = [pgw_bin] + listen + ["--upstream", sockdir] + pgw_common
        elif name == "pgwarden-spool-tcp":
            cmd = [pgw_bin] + listen + ["--upstream", up_tcp, "--audit-file", os.path.join(tmp, name + ".jsonl"),
                                        "--spool-dir", os.path.join(tmp, "file-spool")] + pgw_common
        elif name == "pgwarden-kafka-tcp":
            broker, err = start_kafka(tmp)
            if err:
                skipped[name] = err
                log(f"skipping {name}: {err}")
                continue
            targets["_kafka"] = broker
            cmd = [pgw_bin] + listen + ["--upstream", up_tcp,
                                        "--kafka-brokers", broker.bootstrap, "--kafka-topic", KAFKA_TOPIC,
                                        "--spool-dir", os.path.join(tmp, "spool")] + pgw_common + ["--log-level",
                                                                                                    "info"]
        elif name == "pgwarden-policy-tcp":
            # Full audit plus 20 statement rules that never match pgbench's
            # statements: every statement is held for its analysis and checked.
            rules = os.path.join(tmp, "policy-rules.conf")
            with open(rules, "w") as f:
                f.write(POLICY_RULES)
            cmd = [pgw_bin] + listen + ["--upstream", up_tcp, "--audit-file", os.path.join(tmp, name + ".jsonl"),
                                        "--policy-file", rules] + pgw_common
        elif name in ("pgwarden-audit-tcp", "pgwarden-audit-unix", "pgwarden-audit-scraped-tcp"):
            # Full audit: every statement analysed and written by the file sink.
            up = up_tcp if name.endswith("tcp") else sockdir
            cmd = [pgw_bin] + listen + ["--upstream", up, "--audit-file", os.path.join(tmp, name + ".jsonl")] \
                + pgw_common
            if "scraped" in name:
                # The same, with /metrics scraped every second during the runs.
                metrics_port = free_port()
                cmd += ["--metrics-listen", f"127.0.0.1:{metrics_port}"]
        elif name == "pgwarden-tls":
            cmd = [pgw_bin] + listen + ["--upstream", up_tcp] + tls_opts + pgw_common
        elif name == "pgwarden-tls2":
            cmd = [pgw_bin] + listen + ["--upstream", up_tcp, "--upstream-sslmode", "require"] + tls_opts \
                + pgw_common
        elif name == "pgwarden-audit-tls":
            cmd = [pgw_bin] + listen + ["--upstream", up_tcp, "--audit-file", os.path.join(tmp, name + ".jsonl")] \
                + tls_opts + pgw_common
        else:   # pgbouncer, pgbouncer-unix
            host = "127.0.0.1" if name == "pgbouncer" else sockdir
            cmd, ra = [args.pgbouncer, "-q", write_pgbouncer_ini(tmp, name, port, host, pg_port, runas,
                                                                 clients=max(args.clients))], runas
        t, err = start_proxy(name, cmd, port, tmp, env, ra)
        if name in report.TLS_TARGETS:
            t.env = tls_env
        err = err or probe(args, t, dict(env, **getattr(t, "env", {})))
        if err:
            skipped[name] = err
            log(f"skipping {name}: {err}")
            stop_process(t.proc, signal.SIGTERM, grace=3)
            CLEANUP.forget(t.proc)
            continue
        log(f"{name} up on 127.0.0.1:{port}: {shlex.join(cmd)}")
        if "scraped" in name:
            t.metrics_port = metrics_port
        targets[name] = t
    return targets


def kafka_check(targets):
    """After the rounds: stops the Kafka target (SIGTERM flushes) and compares
    what reached the topic with what pgbench ran. A few lines for the report."""
    t, broker = targets.get("pgwarden-kafka-tcp"), targets.get("_kafka")
    if not t or not broker:
        return []
    stop_process(t.proc, signal.SIGTERM, grace=60)
    CLEANUP.forget(t.proc)
    text = tail(t.logfile, 400)
    m = re.search(r"kafka: closed \((\d+) delivered.*spool: (\d+) bytes in (\d+) writes", text)
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "bench-count"})
    md = c.list_topics(KAFKA_TOPIC, timeout=30)
    in_topic = 0
    for p in md.topics[KAFKA_TOPIC].partitions:
        lo, hi = c.get_watermark_offsets(TopicPartition(KAFKA_TOPIC, p), timeout=30)
        in_topic += hi - lo
    c.close()
    tx = getattr(t, "tx", 0)
    runs = getattr(t, "runs", 0)
    # Each pgbench run: its clients' sessions and one first connection that runs
    # two setup queries (the scale, the partitioning of pgbench_accounts); the
    # probe: one session, one statement. Every session: start and end.
    sessions = getattr(t, "sessions", 0) + 1
    expected = tx + 2 * runs + 1 + 2 * sessions
    lines = [f"Kafka target: pgbench ran {tx:,} transactions (one statement each) in {runs} runs; "
             f"expected events {expected:,} (with each connection's session_start/session_end and "
             f"pgbench's setup queries); "
             f"messages in the topic {in_topic:,}"
             + (" — equal" if in_topic == expected else " — NOT equal")]
    if m:
        delivered, sbytes, swrites = map(int, m.groups())
        lines.append(f"Kafka target: pgwarden reported {delivered:,} delivered; spool {sbytes:,} bytes in "
                     f"{swrites:,} writes = {sbytes / max(delivered, 1):.0f} bytes per event "
                     f"(begin + completion records), {delivered / max(swrites, 1):.1f} events per write")
    if "not acknowledged" in text:
        lines.append("Kafka target: some events were not acknowledged at shutdown (see its log)")
    return lines


# --------------------------------------------------------------------------- TLS handshakes

def _handshake_worker(port, cafile, deadline, q):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["postgresql"])
    n = 0
    while time.monotonic() < deadline:
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost"):
                n += 1
    q.put(n)


def handshakes(t, cafile, seconds, procs):
    """Direct-TLS handshakes (ALPN postgresql, no resumption) against a TLS target
    from procs client processes: (achieved per second, per CPU-second of the proxy)."""
    q = multiprocessing.Queue()
    deadline = time.monotonic() + seconds
    cpu0 = proc_cpu_ns(t.proc.pid)
    ps = [multiprocessing.Process(target=_handshake_worker, args=(t.port, cafile, deadline, q))
          for _ in range(procs)]
    for p in ps:
        p.start()
    total = sum(q.get() for _ in ps)
    for p in ps:
        p.join()
    cpu = (proc_cpu_ns(t.proc.pid) - cpu0) / 1e9
    return total / seconds, (total / cpu if cpu else float("nan"))


# --------------------------------------------------------------------------- rounds

class Scraper:
    """GET /metrics once a second in a thread, as Prometheus would, while a run goes on."""

    def __init__(self, port):
        self.port, self.ok = port, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done.wait(1.0):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                    r.read()
                    self.ok += 1
            except OSError:
                pass

    def stop(self):
        self.done.set()
        self.thread.join()
        return self.ok


def measure(args, t, mode, clients, roots, env, label, tmp):
    """One measured run (after the quiet wait and the warm-up); a run disturbed by
    other processes is repeated up to --retries times and the quietest one kept.
    At 1 client the run logs every transaction's latency (p50, p99)."""
    rec = {"tps": None, "lat": None, "note": None, "other": None, "steal": None}
    attempts = 0
    for attempt in range(1 + args.retries):
        attempts = attempt + 1
        wait_quiet(args, roots)
        if args.warmup > 0:
            pgbench(args, t, mode, clients, args.warmup, env)
        prefix = os.path.join(tmp, "latency", f"{t.name}-{mode}") if clients == 1 else None
        win = CpuWindow(roots)
        own0 = proc_cpu_ns(t.proc.pid) if t.cmd else None
        scraper = Scraper(t.metrics_port) if getattr(t, "metrics_port", None) else None
        tps, lat, note = pgbench(args, t, mode, clients, args.seconds, env, latency_log=prefix)
        if scraper:
            scrapes = scraper.stop()
            if not scrapes:
                note = "; ".join(filter(None, [note, "no successful scrape"]))
        other, steal = win.other_pct(), win.steal_pct()
        own1 = proc_cpu_ns(t.proc.pid) if t.cmd else None
        p50 = p99 = None
        if prefix:
            p50, p99 = latency_percentiles(prefix)
        cpu_us = None
        if own0 is not None and own1 is not None and getattr(t, "last_txns", None):
            cpu_us = (own1 - own0) / 1e3 / t.last_txns
        if attempt and tps is not None and other >= rec["other"]:
            continue                           # the earlier, quieter run stands
        rec.update(tps=tps, lat=lat, note=note, other=other, steal=steal, cpu_us=cpu_us, p50_us=p50, p99_us=p99)
        if tps is None or other <= args.max_other_cpu or attempt == args.retries:
            break
        log(f"{label} {tps:,.0f} tps but other CPU {other:.0f}%: run again")
    if attempts > 1:
        rec["note"] = "; ".join(filter(None, [f"quietest of {attempts} attempts", rec["note"]]))
    return rec


def run_rounds(args, targets, order, env, tmp):
    roots = sorted({t.proc.pid for t in targets.values()})
    os.makedirs(os.path.join(tmp, "latency"), exist_ok=True)
    results = []
    for rnd in range(args.rounds):
        k = rnd % len(order)
        rot = order[k:] + order[:k]                                   # rotate the targets
        modes = args.modes if rnd % 2 == 0 else list(reversed(args.modes))   # alternate the modes
        counts = args.clients if rnd % 2 == 0 else list(reversed(args.clients))   # and the client counts
        for mode in modes:
            for clients in counts:
                for pos, name in enumerate(rot):
                    t = targets[name]
                    label = f"round {rnd + 1}/{args.rounds} {mode:<8} c={clients:<3} {name:<18}"
                    if t.alive():
                        rec = measure(args, t, mode, clients, roots, env, label, tmp)
                    else:
                        rec = {"tps": None, "lat": None, "other": None, "steal": None,
                               "note": "target process is gone"}
                    rec.update({"round": rnd + 1, "pos": pos + 1, "target": name, "mode": mode,
                                "clients": clients})
                    results.append(rec)
                    if rec["tps"] is not None:
                        cpu = f", proxy {rec['cpu_us']:.1f} µs CPU/txn" if rec.get("cpu_us") is not None else ""
                        pct = (f", p50 {rec['p50_us']} µs p99 {rec['p99_us']} µs"
                               if rec.get("p50_us") is not None else "")
                        log(f"{label} {rec['tps']:,.0f} tps, {rec['lat']:.3f} ms{pct}{cpu}, "
                            f"other CPU {rec['other']:.0f}%, steal {rec['steal']:.0f}%"
                            + (f" ({rec['note']})" if rec["note"] else ""))
                    else:
                        log(f"{label} FAILED ({rec['note']})")
                        t.alive()
    return results


# --------------------------------------------------------------------------- main

def parse_args(argv):
    env = os.environ.get
    p = argparse.ArgumentParser(prog=os.environ.get("BENCH_PROG", "bench/run.py"),
                                description="pgbench -S through direct, fwdlimit, PgBouncer and pgwarden; "
                                            "prints medians and ratios, writes bench/results-latest.md "
                                            "(and a PNG plot of TPS by clients). Every option also reads "
                                            "an environment variable (in brackets).")
    p.add_argument("--matrix", action="store_true", default=env("BENCH_MATRIX", "") not in ("", "0"),
                   help="the whole matrix: every target of the matrix set at 1, 8, 64 and 256 clients, both "
                        "modes, unless --targets / --clients say otherwise [BENCH_MATRIX=1]")
    p.add_argument("--rounds", type=int, default=int(env("BENCH_ROUNDS", 3)), help="rounds [BENCH_ROUNDS] (3)")
    p.add_argument("--seconds", type=int, default=int(env("BENCH_SECONDS", 10)),
                   help="seconds per measured run [BENCH_SECONDS] (10)")
    p.add_argument("--warmup", type=int, default=int(env("BENCH_WARMUP", 2)),
                   help="seconds of warm-up before each measured run, 0 for none [BENCH_WARMUP] (2)")
    p.add_argument("--quick", action="store_true", default=env("BENCH_QUICK", "") not in ("", "0"),
                   help="smoke run: 1 round of 3 s, 1 s warm-up [BENCH_QUICK=1]")
    p.add_argument("--clients", default=env("BENCH_CLIENTS"),
                   help="pgbench -c, comma-separated client counts [BENCH_CLIENTS] (8; --matrix: 1,8,64,256)")
    p.add_argument("--jobs", type=int, default=int(env("BENCH_JOBS", min(2, os.cpu_count() or 1))),
                   help="pgbench -j, at most; never more than the clients [BENCH_JOBS] (2 or nproc)")
    p.add_argument("--scale", type=int, default=int(env("BENCH_SCALE", 10)), help="pgbench -i -s [BENCH_SCALE] (10)")
    p.add_argument("--threads", type=int, default=int(env("BENCH_PROXY_THREADS", 2)),
                   help="loop threads of pgwarden and fwdlimit [BENCH_PROXY_THREADS] (2)")
    p.add_argument("--modes", default=env("BENCH_MODES", "simple,prepared"),
                   help="pgbench -M modes [BENCH_MODES] (simple,prepared)")
    p.add_argument("--targets", default=env("BENCH_TARGETS"),
                   help=f"comma-separated subset of {','.join(ALL_TARGETS)} [BENCH_TARGETS] "
                        f"(default: {','.join(DEFAULT_TARGETS)}; --matrix: {','.join(MATRIX_TARGETS)})")
    p.add_argument("--handshakes", type=int, default=int(env("BENCH_HANDSHAKES", 0)),
                   help="after the rounds, seconds of direct-TLS handshakes against the first pgwarden TLS "
                        "target, counted per CPU-second of pgwarden; 0: none [BENCH_HANDSHAKES] (0)")
    p.add_argument("--handshake-procs", type=int, default=int(env("BENCH_HANDSHAKE_PROCS", 2)),
                   help="client processes for --handshakes [BENCH_HANDSHAKE_PROCS] (2)")
    p.add_argument("--max-other-cpu", type=float, default=float(env("BENCH_MAX_OTHER_CPU", 15)),
                   help="%% of all CPUs that processes outside the benchmark may use: before each run "
                        "wait for it (see --quiet-wait), after a run above it run again (see --retries) "
                        "[BENCH_MAX_OTHER_CPU] (15)")
    p.add_argument("--quiet-wait", type=float, default=float(env("BENCH_QUIET_WAIT", 15)),
                   help="longest wait for a quiet machine before each run, s, 0 for none [BENCH_QUIET_WAIT] (15)")
    p.add_argument("--retries", type=int, default=int(env("BENCH_RETRIES", 1)),
                   help="extra attempts for a run disturbed by other processes; the quietest attempt "
                        "is kept [BENCH_RETRIES] (1)")
    p.add_argument("--no-pgwarden", action="store_true", default=env("BENCH_NO_PGWARDEN", "") not in ("", "0"),
                   help="leave the pgwarden targets out [BENCH_NO_PGWARDEN=1]")
    p.add_argument("--pgwarden-args", default=env("PGWARDEN_ARGS", ""),
                   help="extra pgwarden arguments, e.g. the audit sink [PGWARDEN_ARGS]")
    p.add_argument("--output", default=env("BENCH_OUTPUT", os.path.join(BENCH_DIR, "results-latest.md")),
                   help="[BENCH_OUTPUT] (bench/results-latest.md)")
    p.add_argument("--plot", default=env("BENCH_PLOT"),
                   help="PNG of TPS by clients, 'none' for no plot [BENCH_PLOT] (the output's name with .png)")
    common_args(p)
    a = p.parse_args(argv)
    if a.quick:
        a.rounds, a.seconds, a.warmup, a.quiet_wait, a.retries = 1, 3, 1, min(a.quiet_wait, 3), 0
        a.handshakes = min(a.handshakes, 2)
    a.modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [m for m in a.modes if m not in ("simple", "extended", "prepared")]
    a.targets = [t.strip() for t in (a.targets or ",".join(MATRIX_TARGETS if a.matrix else DEFAULT_TARGETS))
                 .split(",") if t.strip()]
    badt = [t for t in a.targets if t not in ALL_TARGETS]
    try:
        a.clients = sorted({int(c) for c in (a.clients or ("1,8,64,256" if a.matrix else "8")).split(",")
                            if c.strip()})
    except ValueError:
        p.error(f"--clients: comma-separated numbers, not {a.clients!r}")
    if bad or badt or a.rounds < 1 or a.seconds < 1 or not a.clients or a.clients[0] < 1 or a.jobs < 1:
        p.error(f"bad modes {bad} / targets {badt} / rounds / seconds / clients / jobs")
    if "direct" not in a.targets:
        a.targets.insert(0, "direct")
    if a.no_pgwarden:
        a.targets = [t for t in a.targets if not t.startswith("pgwarden")]
    a.build_dir = os.path.abspath(a.build_dir)
    if a.plot is None:
        a.plot = os.path.splitext(a.output)[0] + ".png"
    return a


def main(argv):
    args = parse_args(argv)
    ctx = {"cmdline": shlex.join([os.environ.get("BENCH_PROG", "bench/run.py")] + argv)}
    install_handlers()
    runas = pick_runas(args)
    env = ctx["env"] = client_env()
    check_pg_tools(args)
    want_pgwarden = any(t.startswith("pgwarden") for t in args.targets)
    skipped = {}
    pgw_bin, fwd_bin, build_notes = build(args, want_pgwarden,
                                           any(t.startswith("fwdlimit") for t in args.targets))
    ctx["pgw_bin"] = pgw_bin
    if pgw_bin and build_type(args.build_dir) != "Release":
        log(f"warning: {pgw_bin} is a {build_type(args.build_dir)} build; the reference is "
            f"cmake -B build -DCMAKE_BUILD_TYPE=Release (or --rebuild)")
    for t in args.targets:
        if t.startswith("pgwarden") and not pgw_bin:
            skipped[t] = build_notes[-1]
        if t.startswith("fwdlimit") and not fwd_bin:
            skipped[t] = [n for n in build_notes if n.startswith("fwdlimit")][0]
        if t.startswith("pgbouncer") and not os.access(args.pgbouncer, os.X_OK):
            skipped[t] = f"{args.pgbouncer} not found (apt-get install -y pgbouncer)"

    most = max(args.clients)
    # pgbench opens its clients at once; each PgBouncer pool keeps its server
    # connections after a run; pgbench -j threads and proxies need descriptors.
    n_bouncers = sum(1 for t in args.targets if t.startswith("pgbouncer"))
    ctx["max_connections"] = max(100, most * (1 + n_bouncers) + 30)
    raise_nofile(4 * most + 1024)
    tmp = make_tmp(args, runas)
    tls_dir = None
    if any(t in report.TLS_TARGETS for t in args.targets):
        tls_dir = os.path.join(tmp, "tls")
        make_certs(tls_dir)
        ctx["tls"] = True

    ctx["load_before"] = os.getloadavg()
    direct, sockdir = start_postgres(args, tmp, runas, env, max_connections=ctx["max_connections"], tls_dir=tls_dir)
    createdb(args, direct.port, env)
    log(f"pgbench -i -s {args.scale}")
    run_checked([os.path.join(args.pg_bindir, "pgbench"), "-i", "-q", "-s", str(args.scale), "-h", "127.0.0.1",
                 "-p", str(direct.port), "-U", DBUSER, DB], logfile=os.path.join(tmp, "pgbench-init.log"), env=env)

    targets = start_targets(args, tmp, runas, env, direct, sockdir, pgw_bin, fwd_bin, skipped, tls_dir)
    order = [t for t in args.targets if t in targets]
    if len(order) < len(args.targets):
        log(f"benchmarking {', '.join(order)}; skipped: {', '.join(t for t in args.targets if t not in targets)}")

    log("warming up the server (direct)")          # buffers, catalog caches, once
    pgbench(args, direct, args.modes[0], 8, max(2, args.warmup * 2), env)
    per_run = args.seconds + args.warmup + 1
    total = args.rounds * len(order) * len(args.modes) * len(args.clients) * per_run
    log(f"{args.rounds} round(s) × {len(order)} targets × {len(args.modes)} modes × {len(args.clients)} client "
        f"counts × ({args.seconds} s + {args.warmup} s warm-up) ≈ {total // 60} min {total % 60} s, "
        f"more if other processes keep the machine busy (--max-other-cpu {args.max_other_cpu:g}%)")
    results = run_rounds(args, targets, order, env, tmp)      # the broker's CPU counts as ours
    ctx["load_after"] = os.getloadavg()

    extra_lines = []
    if args.handshakes > 0:
        t = next((targets[n] for n in ("pgwarden-tls", "pgwarden-audit-tls", "pgwarden-tls2") if n in targets), None)
        if t:
            rate, per_cpu = handshakes(t, os.path.join(tls_dir, "ca.crt"), args.handshakes, args.handshake_procs)
            extra_lines.append(f"TLS handshakes against {t.name} (--threads {args.threads}; direct TLS, ALPN, "
                               f"RSA-2048, X25519, no resumption, {args.handshake_procs} Python client processes, "
                               f"{args.handshakes} s): {rate:,.0f}/s achieved, {per_cpu:,.0f} per CPU-second "
                               f"of pgwarden")
        else:
            extra_lines.append("TLS handshakes: no pgwarden TLS target selected")
    extra_lines += kafka_check(targets)

    summary = report.summarize(order, args.modes, args.clients, results)
    tbl = report.table(order, args.modes, args.clients, summary, args.rounds)
    keys = report.key_ratios(order, args.modes, args.clients, summary, results, skipped)
    if extra_lines:
        keys += "\n\n" + "\n".join(extra_lines)
    sections = [("Medians", tbl + "\n\n```\n" + keys + "\n```")]
    if len(args.clients) > 1:
        sections.append(("TPS by clients (medians)", report.tps_by_clients(order, args.modes, args.clients, summary)))
    if 1 in args.clients:
        sections.append(("Latency at 1 client (per-transaction, pgbench --log; medians over the rounds)",
                         report.latency_table(order, args.modes, summary)
                         + "\n\n`added` = this target's percentile minus that of the direct connection "
                           "(`vs`), in µs; DESIGN.md's target for the added p50 is ≤ 30 µs."))
    if args.plot != "none":
        why = report.plot(args.plot, order, args.modes, args.clients, summary,
                          f"pgwarden benchmark, {args.rounds} round(s) × {args.seconds} s, medians")
        if why:
            log(why)
            build_notes.append(why)
        else:
            log(f"plot written to {args.plot}")
            rel = os.path.relpath(args.plot, os.path.dirname(os.path.abspath(args.output)))
            sections.insert(1, ("Plot", f"![TPS by clients]({rel})"))

    others = [r["other"] for r in results if r["other"] is not None]
    noise = ""
    if others:
        noise = (f"CPU used by other processes during the measured runs: median {statistics.median(others):.0f}%, "
                 f"max {max(others):.0f}% of {os.cpu_count()} CPUs")
        steals = [r["steal"] for r in results if r["steal"] is not None]
        noise += f"; VM steal time: median {statistics.median(steals):.0f}%, max {max(steals):.0f}%"
        if max(others) > args.max_other_cpu or max(steals) > 5:
            noise += " — the machine was not idle; treat the ratios as noisy"

    for title, body in sections:
        if title != "Plot":
            print(f"\n{title}\n\n{body}")
    if noise:
        print()
        print(noise)
    if skipped:
        print()
        for n, why in skipped.items():
            print(f"skipped {n}: {why.splitlines()[0]}")
    report.write_report(args, ctx, targets, order, results, sections, skipped, build_notes, noise)
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    main_wrapper(main)
