#!/usr/bin/env python3
"""pgwarden throughput benchmark: pgbench -S through each proxy, as ratios in one run.

Targets (all on loopback, the clients always speak TCP to the target):
  direct          pgbench straight to PostgreSQL (TCP)
  fwdlimit-tcp    the bare libuv forwarder (../shared/tools/fwdlimit.c), TCP upstream
  fwdlimit-unix   the same, unix-socket upstream
  pgbouncer       PgBouncer in session mode, TCP upstream
  pgbouncer-unix  the same, unix-socket upstream          (not in the default set)
  pgwarden-tcp    build/pgwarden, TCP upstream
  pgwarden-unix   build/pgwarden, unix-socket upstream (--upstream SOCKDIR)
  pgwarden-kafka-tcp  build/pgwarden with full audit to the Kafka sink and its spool, TCP
                  upstream; a single KRaft broker on this machine (tests/integration/
                  kafka_broker.py, needs the JDK, Maven's cache and confluent-kafka:
                  bench/run.sh uses the repository's .venv when there is one)

Every round runs every (target, mode) pair once; the order of targets rotates
from round to round and the order of the modes alternates, so slow drift (CPU
frequency, page cache, a neighbour's build) spreads over all targets. The
table reports medians over the rounds. It is a measurement, not a test: it
never fails on ratios. Python 3 standard library only, except for the Kafka
target.
"""

import argparse
import atexit
import datetime
import os
import platform
import pwd
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import urllib.request
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)

ALL_TARGETS = ["direct", "fwdlimit-tcp", "fwdlimit-unix", "pgbouncer", "pgbouncer-unix",
               "pgwarden-tcp", "pgwarden-unix", "pgwarden-audit-tcp", "pgwarden-audit-unix",
               "pgwarden-audit-scraped-tcp", "pgwarden-kafka-tcp", "pgwarden-policy-tcp"]
DEFAULT_TARGETS = ["direct", "fwdlimit-tcp", "fwdlimit-unix", "pgbouncer",
                   "pgwarden-tcp", "pgwarden-unix", "pgwarden-audit-tcp", "pgwarden-audit-unix"]
# 20 statement rules for the pgwarden-policy-tcp target, none of which
# matches a pgbench statement (the acceptance ratio is policy / audit >= 0.95).
POLICY_RULES = "".join(
    [f"statement deny name=secret_{i} relation=secret_{i}.*\n" for i in range(10)]
    + [f"statement deny name=cmd_{i} command=\"{c}\"\n" for i, c in enumerate(
        ["DROP TABLE", "TRUNCATE", "ALTER SYSTEM", "COPY TO PROGRAM", "COPY FROM PROGRAM",
         "CREATE ROLE", "DROP DATABASE"])]
    + ["statement deny name=no_roles class=ROLE\n", "statement require-where name=where_guard\n",
       "statement read-only name=reporting user=report_only\n"])
DB = "bench"
DBUSER = "bench"


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- cleanup

class Cleanup:
    """Every process we start and the temp dir; torn down once, on any exit."""

    def __init__(self):
        self.procs = []          # (name, Popen, stop_signal)
        self.tmpdir = None
        self.keep_tmp = False
        self.done = False

    def add(self, name, proc, stop_signal=signal.SIGTERM):
        self.procs.append((name, proc, stop_signal))

    def forget(self, proc):
        self.procs = [p for p in self.procs if p[1] is not proc]

    def run(self):
        if self.done:
            return
        self.done = True
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for name, proc, sig in reversed(self.procs):
                stop_process(proc, sig)
            self.procs = []
            if self.tmpdir and os.path.isdir(self.tmpdir):
                if self.keep_tmp:
                    log(f"keeping {self.tmpdir} (--keep-tmp)")
                else:
                    shutil.rmtree(self.tmpdir, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, old_int)


def stop_process(proc, sig, grace=10.0):
    """Stops one process we started, then what is left of its process group (it leads
    its own: start_new_session), by id. The leader is reaped only after the group
    kill, so the group id cannot have been reused by then."""
    if proc.returncode is not None:
        return                                  # already reaped
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass
    deadline = time.time() + grace
    while time.time() < deadline:
        try:
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                break
        except ChildProcessError:
            break
        time.sleep(0.02)
    try:
        os.killpg(proc.pid, signal.SIGKILL)     # PostgreSQL backends, a hung proxy, pgbench threads
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


CLEANUP = Cleanup()


def on_signal(signum, frame):
    log(f"got {signal.Signals(signum).name}; cleaning up")
    raise SystemExit(128 + signum)


# --------------------------------------------------------------------------- helpers

class RunAs:
    """Who runs PostgreSQL and PgBouncer: both refuse root."""

    def __init__(self, name):
        self.name = name
        if name is None:
            self.uid, self.gid = os.getuid(), os.getgid()
        else:
            pw = pwd.getpwnam(name)
            self.uid, self.gid = pw.pw_uid, pw.pw_gid

    def popen_kwargs(self):
        if self.name is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


_used_ports = set()


def free_port():
    for _ in range(100):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in _used_ports:
            _used_ports.add(port)
            return port
    raise RuntimeError("no free port")


def wait_port(port, proc, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            lines = f.readlines()
        return "".join(lines[-n:]).rstrip()
    except OSError:
        return "(no log)"


def run_checked(cmd, logfile=None, runas=None, timeout=600, env=None):
    out = open(logfile, "ab") if logfile else subprocess.DEVNULL
    try:
        kwargs = runas.popen_kwargs() if runas else {}
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, **kwargs)
        CLEANUP.add(shlex.join(cmd[:1]), proc, signal.SIGTERM)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_process(proc, signal.SIGTERM, grace=2)
            rc = -1
        CLEANUP.forget(proc)
    finally:
        if logfile:
            out.close()
    if rc != 0:
        msg = f"command failed (rc={rc}): {shlex.join(cmd)}"
        if logfile:
            msg += "\n" + tail(logfile)
        raise RuntimeError(msg)


def cmd_output(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    for line in cmd_output(["lscpu"]).splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


# --------------------------------------------------------------------------- build

def build(args, want_pgwarden):
    """Builds build/pgwarden and build/fwdlimit if missing. Returns (pgwarden path or
    None, fwdlimit path, notes)."""
    bdir = args.build_dir
    pgw = os.path.join(bdir, "pgwarden")
    fwd = os.path.join(bdir, "fwdlimit")
    notes = []
    missing = [p for p in ([pgw] if want_pgwarden else []) + [fwd]
               if args.rebuild or not os.access(p, os.X_OK)]
    if missing and shutil.which("cmake"):
        log(f"building in {bdir} (missing: {', '.join(os.path.basename(m) for m in missing)})")
        cfg = ["cmake", "-S", REPO_DIR, "-B", bdir, "-DCMAKE_BUILD_TYPE=Release"]
        r = subprocess.run(cfg, capture_output=True, text=True)
        if r.returncode != 0:
            notes.append("cmake configure failed: " + (r.stderr.strip().splitlines() or ["?"])[-1])
            log(notes[-1])
        else:
            r = subprocess.run(["cmake", "--build", bdir, "-j"], capture_output=True, text=True)
            if r.returncode != 0:
                log("full build failed; trying the targets the benchmark needs one by one")
                for t in [os.path.basename(m) for m in missing]:
                    r2 = subprocess.run(["cmake", "--build", bdir, "-j", "--target", t],
                                        capture_output=True, text=True)
                    if r2.returncode != 0:
                        err = [l for l in (r2.stdout + r2.stderr).splitlines() if "error" in l]
                        notes.append(f"cmake --build --target {t} failed: " + (err[0] if err else "?"))
                        log(notes[-1])
    if not os.access(fwd, os.X_OK):
        src = args.fwdlimit_src
        if not os.path.isfile(src):
            raise RuntimeError(f"fwdlimit missing and its source {src} not found")
        os.makedirs(bdir, exist_ok=True)
        log(f"compiling fwdlimit directly from {src}")
        r = subprocess.run(["cc", "-O2", "-o", fwd, src, "-luv", "-lpthread"], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("cannot build fwdlimit:\n" + r.stderr)
    if want_pgwarden and not os.access(pgw, os.X_OK):
        notes.append(f"{pgw} missing or did not build: pgwarden targets skipped")
        log(notes[-1])
        pgw = None
    return pgw, fwd, notes


def build_type(bdir):
    try:
        with open(os.path.join(bdir, "CMakeCache.txt")) as f:
            for line in f:
                if line.startswith("CMAKE_BUILD_TYPE:"):
                    return line.split("=", 1)[1].strip() or "(empty)"
    except OSError:
        pass
    return "unknown (no CMakeCache.txt)"


# --------------------------------------------------------------------------- servers

class Target:
    def __init__(self, name, port, proc=None, logfile=None):
        self.name, self.port, self.proc, self.logfile = name, port, proc, logfile
        self.dead_note = None

    def alive(self):
        if self.proc is None or self.proc.poll() is None:
            return True
        if not self.dead_note:
            self.dead_note = (f"{self.name} exited with code {self.proc.returncode}; log tail:\n"
                              + tail(self.logfile))
            log(self.dead_note)
        return False


def start_postgres(args, tmp, runas, env):
    pgdata = os.path.join(tmp, "pgdata")
    sockdir = os.path.join(tmp, "sock")
    os.makedirs(sockdir)
    os.chown(sockdir, runas.uid, runas.gid)
    pglog = os.path.join(tmp, "postgres.log")
    port = free_port()
    log(f"initdb {pgdata}")
    run_checked([os.path.join(args.pg_bindir, "initdb"), "-D", pgdata, "-U", DBUSER, "--auth=trust",
                 "-E", "UTF8", "--no-locale", "--no-sync"],
                logfile=os.path.join(tmp, "initdb.log"), runas=runas, env=env)
    cmd = [os.path.join(args.pg_bindir, "postgres"), "-D", pgdata, "-p", str(port),
           "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={sockdir}",
           "-c", "max_connections=100", "-c", "shared_buffers=128MB", "-c", "fsync=off",
           "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
           "-c", "logging_collector=off", "-c", "log_min_messages=warning"]
    out = open(pglog, "ab")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, start_new_session=True, **runas.popen_kwargs())
    out.close()
    CLEANUP.add("postgres", proc, signal.SIGINT)   # SIGINT: fast shutdown
    deadline = time.time() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError("postgres exited:\n" + tail(pglog))
        r = subprocess.run([os.path.join(args.pg_bindir, "pg_isready"), "-q", "-h", "127.0.0.1",
                            "-p", str(port), "-U", DBUSER, "-d", "postgres"], env=env)
        if r.returncode == 0:
            break
        if time.time() > deadline:
            raise RuntimeError("postgres did not become ready:\n" + tail(pglog))
        time.sleep(0.2)
    log(f"postgres 15 up on 127.0.0.1:{port} and {sockdir}")
    return Target("direct", port, proc, pglog), sockdir


def start_proxy(name, cmd, port, tmp, env, runas=None):
    logfile = os.path.join(tmp, f"{name}.log")
    out = open(logfile, "ab")
    try:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True,
                                **(runas.popen_kwargs() if runas else {}))
    finally:
        out.close()
    CLEANUP.add(name, proc, signal.SIGTERM)
    t = Target(name, port, proc, logfile)
    t.cmd = cmd
    if not wait_port(port, proc):
        first = next((l for l in tail(logfile, 200).splitlines() if l.strip()), "no output")
        return t, f"{name} did not start: {first}\ncommand: {shlex.join(cmd)}\nlog tail:\n" + tail(logfile)
    return t, None


def write_pgbouncer_ini(tmp, name, port, upstream_host, pg_port, runas):
    d = os.path.join(tmp, name)
    os.makedirs(d)
    users = os.path.join(d, "users.txt")
    with open(users, "w") as f:
        f.write(f'"{DBUSER}" ""\n')
    ini = os.path.join(d, "pgbouncer.ini")
    with open(ini, "w") as f:
        f.write(f"""[databases]
{DB} = host={upstream_host} port={pg_port} dbname={DB}
postgres = host={upstream_host} port={pg_port} dbname=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {users}
pool_mode = session
max_client_conn = 100
default_pool_size = 20
ignore_startup_parameters = extra_float_digits
pidfile = {d}/pgbouncer.pid
logfile =
syslog = 0
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
log_stats = 0
stats_period = 3600
verbose = 0
""")
    for p in (d, users, ini):
        os.chown(p, runas.uid, runas.gid)
    return ini


def probe(args, target, env):
    """One real query through the target."""
    try:
        r = subprocess.run([os.path.join(args.pg_bindir, "psql"), "-X", "-q", "-At", "-h", "127.0.0.1",
                            "-p", str(target.port), "-U", DBUSER, "-d", DB, "-c",
                            "select count(*) from pgbench_branches"],
                           capture_output=True, text=True, timeout=15, env=env)
    except subprocess.TimeoutExpired:
        return "psql probe timed out"
    if r.returncode != 0 or not r.stdout.strip().isdigit():
        return f"psql probe failed (rc={r.returncode}): {r.stderr.strip()}"
    return None


# --------------------------------------------------------------------------- CPU accounting

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_ticks():
    """(busy, steal) ticks of all CPUs. busy = user nice system; not irq/softirq: with IRQ
    time accounting the loopback traffic of the benchmark itself lands there and is
    charged to no process. steal = time the hypervisor gave to someone else."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2], (v[7] if len(v) > 7 else 0)


def _proc_stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
    except OSError:
        return None
    fields = st[st.rindex(")") + 2:].split()
    return int(fields[1]), [int(x) for x in fields[11:15]]   # ppid, utime stime cutime cstime


def _our_ticks(roots):
    """CPU ticks used by the benchmark itself: the processes in roots (postmaster, proxies),
    their children (backends), including the reaped ones, and our reaped children
    (pgbench runs)."""
    ru = os.times()
    total = (ru.children_user + ru.children_system) * CLK_TCK
    roots = set(roots)
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        st = _proc_stat(int(d))
        if not st:
            continue
        ppid, t = st
        if int(d) in roots:
            total += sum(t)                # own time + reaped children's
        elif ppid in roots:
            total += t[0] + t[1]
    return total


class CpuWindow:
    """How much CPU the rest of the machine used while a run was measured, in % of all
    CPUs: the other sessions on a shared box are the main source of noise here; and
    the steal time of the VM, the other."""

    def __init__(self, roots):
        self.roots = roots
        self.t0, (self.busy0, self.steal0), self.ours0 = time.time(), _cpu_ticks(), _our_ticks(roots)

    def _pct(self, ticks):
        return max(0.0, 100.0 * ticks / ((time.time() - self.t0) * CLK_TCK * (os.cpu_count() or 1)))

    def other_pct(self):
        busy, _ = _cpu_ticks()
        return self._pct(busy - self.busy0 - (_our_ticks(self.roots) - self.ours0))

    def steal_pct(self):
        return self._pct(_cpu_ticks()[1] - self.steal0)


def wait_quiet(args, roots):
    """Before a run, waits (at most --quiet-wait s) until the rest of the machine uses
    less than --max-other-cpu % over one second."""
    if args.quiet_wait <= 0:
        return
    deadline = time.time() + args.quiet_wait
    while True:
        win = CpuWindow(roots)
        time.sleep(1.0)
        if win.other_pct() <= args.max_other_cpu or time.time() >= deadline:
            return


# --------------------------------------------------------------------------- pgbench

TPS_RE = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
LAT_RE = re.compile(r"^latency average = ([0-9.]+) ms", re.M)
FAILED_RE = re.compile(r"^number of failed transactions: (\d+)", re.M)
TXNS_RE = re.compile(r"^number of transactions actually processed: (\d+)", re.M)


def pgbench(args, target, mode, seconds, env):
    cmd = [os.path.join(args.pg_bindir, "pgbench"), "-n", "-S", "-c", str(args.clients), "-j", str(args.jobs),
           "-T", str(seconds), "-M", mode, "-h", "127.0.0.1", "-p", str(target.port), "-U", DBUSER, DB]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, env=env, start_new_session=True)
    CLEANUP.add("pgbench", proc, signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=seconds + 60)
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
    if proc.returncode != 0 or not m_tps or not m_lat:
        lines = [l for l in text.splitlines() if l.strip()]
        return None, None, f"pgbench rc={proc.returncode}: " + " | ".join(lines[-3:])
    note = None
    if m_failed and int(m_failed.group(1)) > 0:
        note = f"{m_failed.group(1)} failed transactions"
    m_txns = TXNS_RE.search(text)
    target.last_txns = int(m_txns.group(1)) if m_txns else None
    return float(m_tps.group(1)), float(m_lat.group(1)), note


def proc_cpu_ns(pid):
    """CPU time of one process's threads in ns, from the scheduler's own accounting
    (/proc/PID/task/*/schedstat): exact, unlike utime/stime, which are sampled at
    the timer tick and miss most of a proxy's short bursts. None when gone."""
    try:
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        return total
    except (OSError, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------- report

def fwd_for(name):
    return "fwdlimit-unix" if name.endswith("-unix") else "fwdlimit-tcp"


def fmt_ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}"


def summarize(targets, modes, results):
    """results: list of dicts round/pos/target/mode/tps/lat/note. Returns {(t, m): (tps, lat, lo, hi, n)}."""
    summary = {}
    for m in modes:
        for t in targets:
            rs = [r for r in results if r["target"] == t and r["mode"] == m and r["tps"] is not None]
            if rs:
                tps = [r["tps"] for r in rs]
                cpu = [r["cpu_us"] for r in rs if r.get("cpu_us") is not None]
                summary[(t, m)] = (statistics.median(tps), statistics.median([r["lat"] for r in rs]),
                                   min(tps), max(tps), len(rs), statistics.median(cpu) if cpu else None)
            else:
                summary[(t, m)] = None
    return summary


def table(targets, modes, summary, rounds):
    med = lambda t, m: summary.get((t, m))[0] if summary.get((t, m)) else None
    lines = ["| target | mode | median TPS | median latency (ms) | ÷ direct | ÷ fwdlimit (same upstream) "
             "| ÷ pgbouncer | proxy CPU µs/txn | TPS min–max (runs) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for m in modes:
        for t in targets:
            s = summary.get((t, m))
            if not s:
                lines.append(f"| {t} | {m} | failed | — | — | — | — | — | 0/{rounds} |")
                continue
            tps, lat, lo, hi, n, cpu = s
            cpu_cell = f"{cpu:.1f}" if cpu is not None else "—"
            lines.append(f"| {t} | {m} | {tps:,.0f} | {lat:.3f} | {fmt_ratio(tps, med('direct', m))} "
                         f"| {fmt_ratio(tps, med(fwd_for(t), m))} | {fmt_ratio(tps, med('pgbouncer', m))} "
                         f"| {cpu_cell} | {lo:,.0f}–{hi:,.0f} ({n}/{rounds}) |")
    return "\n".join(lines)


def paired(results, a, b, m):
    """Per-round ratios a/b for mode m (the runs of one round are close in time)."""
    out = []
    for rnd in sorted({r["round"] for r in results}):
        ra = [r for r in results if r["round"] == rnd and r["target"] == a and r["mode"] == m and r["tps"]]
        rb = [r for r in results if r["round"] == rnd and r["target"] == b and r["mode"] == m and r["tps"]]
        if ra and rb:
            out.append(ra[0]["tps"] / rb[0]["tps"])
    return out


def key_ratios(targets, modes, summary, results, skipped):
    med = lambda t, m: summary.get((t, m))[0] if summary.get((t, m)) else None
    pairs = [("pgwarden-tcp", "fwdlimit-tcp"), ("pgwarden-unix", "fwdlimit-unix"),
             ("pgwarden-tcp", "pgbouncer"), ("pgwarden-unix", "pgbouncer"),
             ("pgwarden-audit-tcp", "fwdlimit-tcp"), ("pgwarden-audit-unix", "fwdlimit-unix"),
             ("pgwarden-audit-tcp", "pgbouncer"), ("pgwarden-audit-tcp", "pgwarden-tcp"),
             ("pgwarden-audit-scraped-tcp", "pgwarden-audit-tcp"),
             ("pgwarden-policy-tcp", "pgwarden-audit-tcp")]
    if "pgwarden-kafka-tcp" in targets:
        pairs += [("pgwarden-kafka-tcp", "fwdlimit-tcp"), ("pgwarden-kafka-tcp", "pgwarden-audit-tcp")]
    if "pgbouncer-unix" in targets:
        pairs.append(("pgwarden-unix", "pgbouncer-unix"))
    pairs += [("fwdlimit-tcp", "direct"), ("fwdlimit-unix", "direct"), ("pgbouncer", "direct")]
    lines = ["Key ratios (ratio of median TPS; in brackets the per-round paired ratios, min–max):", ""]
    w = max(len(f"{a} / {b}") for a, b in pairs)
    for a, b in pairs:
        cells = []
        for m in modes:
            if a not in targets or b not in targets:
                cells.append(f"{m} n/a ({'skipped' if a in skipped or b in skipped else 'not selected'})")
                continue
            pr = paired(results, a, b, m)
            rng = f" [{min(pr):.2f}–{max(pr):.2f}]" if pr else ""
            cells.append(f"{m} {fmt_ratio(med(a, m), med(b, m))}{rng}")
        lines.append(f"    {f'{a} / {b}':<{w}}   " + "   ".join(cells))
    return "\n".join(lines)


# --------------------------------------------------------------------------- main

def parse_args(argv):
    env = os.environ.get
    p = argparse.ArgumentParser(prog=os.environ.get("BENCH_PROG", "bench/run.py"),
                                description="pgbench -S through direct, fwdlimit, PgBouncer and pgwarden; "
                                            "prints medians and ratios, writes bench/results-latest.md. "
                                            "Every option also reads an environment variable (in brackets).")
    p.add_argument("--rounds", type=int, default=int(env("BENCH_ROUNDS", 3)), help="rounds [BENCH_ROUNDS] (3)")
    p.add_argument("--seconds", type=int, default=int(env("BENCH_SECONDS", 10)),
                   help="seconds per measured run [BENCH_SECONDS] (10)")
    p.add_argument("--warmup", type=int, default=int(env("BENCH_WARMUP", 2)),
                   help="seconds of warm-up before each measured run, 0 for none [BENCH_WARMUP] (2)")
    p.add_argument("--quick", action="store_true", default=env("BENCH_QUICK", "") not in ("", "0"),
                   help="smoke run: 1 round of 3 s, 1 s warm-up [BENCH_QUICK=1]")
    p.add_argument("--clients", type=int, default=int(env("BENCH_CLIENTS", 8)), help="pgbench -c [BENCH_CLIENTS] (8)")
    p.add_argument("--jobs", type=int, default=int(env("BENCH_JOBS", 2)), help="pgbench -j [BENCH_JOBS] (2)")
    p.add_argument("--scale", type=int, default=int(env("BENCH_SCALE", 10)), help="pgbench -i -s [BENCH_SCALE] (10)")
    p.add_argument("--threads", type=int, default=int(env("BENCH_PROXY_THREADS", 2)),
                   help="loop threads of pgwarden and fwdlimit [BENCH_PROXY_THREADS] (2)")
    p.add_argument("--modes", default=env("BENCH_MODES", "simple,prepared"),
                   help="pgbench -M modes [BENCH_MODES] (simple,prepared)")
    p.add_argument("--targets", default=env("BENCH_TARGETS", ",".join(DEFAULT_TARGETS)),
                   help=f"comma-separated subset of {','.join(ALL_TARGETS)} [BENCH_TARGETS] "
                        f"(default: all but pgbouncer-unix)")
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
    p.add_argument("--build-dir", default=env("BENCH_BUILD_DIR", os.path.join(REPO_DIR, "build")),
                   help="[BENCH_BUILD_DIR] (<repo>/build)")
    p.add_argument("--rebuild", action="store_true", help="run the cmake build even if the binaries exist")
    p.add_argument("--fwdlimit-src", default=env("FWDLIMIT_SRC",
                                                 os.path.join(os.path.dirname(REPO_DIR), "shared", "tools", "fwdlimit.c")),
                   help="[FWDLIMIT_SRC] (<repo>/../shared/tools/fwdlimit.c)")
    p.add_argument("--pg-bindir", default=env("PG_BINDIR", "/usr/lib/postgresql/15/bin"), help="[PG_BINDIR]")
    p.add_argument("--pgbouncer", default=env("PGBOUNCER", shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"),
                   help="[PGBOUNCER]")
    p.add_argument("--run-as", default=env("BENCH_RUN_AS"),
                   help="unprivileged user for postgres/pgbouncer when run as root [BENCH_RUN_AS] (postgres)")
    p.add_argument("--output", default=env("BENCH_OUTPUT", os.path.join(BENCH_DIR, "results-latest.md")),
                   help="[BENCH_OUTPUT] (bench/results-latest.md)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (cluster, logs) for inspection")
    a = p.parse_args(argv)
    if a.quick:
        a.rounds, a.seconds, a.warmup, a.quiet_wait, a.retries = 1, 3, 1, min(a.quiet_wait, 3), 0
    a.modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [m for m in a.modes if m not in ("simple", "extended", "prepared")]
    a.targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    badt = [t for t in a.targets if t not in ALL_TARGETS]
    if bad or badt or a.rounds < 1 or a.seconds < 1:
        p.error(f"bad modes {bad} / targets {badt} / rounds / seconds")
    if "direct" not in a.targets:
        a.targets.insert(0, "direct")
    if a.no_pgwarden:
        a.targets = [t for t in a.targets if not t.startswith("pgwarden")]
    a.build_dir = os.path.abspath(a.build_dir)
    ARGS_CLIENTS[0] = a.clients
    return a


def client_env():
    env = dict(os.environ)
    env.setdefault("PGSSLMODE", "disable")      # same startup on every target, no SSLRequest round trip
    env.setdefault("PGGSSENCMODE", "disable")
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    for k in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGSERVICE", "PGOPTIONS"):
        env.pop(k, None)
    env["LC_ALL"] = "C"
    return env


def start_targets(args, tmp, runas, env, direct, sockdir, pgw_bin, fwd_bin, skipped):
    """Starts every selected proxy; one that does not start or fails a real query is
    skipped (reason in skipped). Returns {name: Target}, direct included."""
    pg_port = direct.port
    upsock = os.path.join(sockdir, f".s.PGSQL.{pg_port}")
    targets = {"direct": direct}
    direct.cmd = None
    pgw_common = ["--threads", str(args.threads), "--log-level", "error"] + shlex.split(args.pgwarden_args)
    for name in args.targets:
        if name == "direct" or name in skipped:
            continue
        port = free_port()
        ra = None
        if name == "fwdlimit-tcp":
            cmd = [fwd_bin, str(port), str(pg_port), str(args.threads)]
        elif name == "fwdlimit-unix":
            cmd = [fwd_bin, str(port), upsock, str(args.threads)]
        elif name == "pgwarden-tcp":
            cmd = [pgw_bin, "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{pg_port}"] + pgw_common
        elif name == "pgwarden-unix":
            cmd = [pgw_bin, "--listen", f"127.0.0.1:{port}", "--upstream", sockdir] + pgw_common
        elif name == "pgwarden-kafka-tcp":
            broker, err = start_kafka(tmp)
            if err:
                skipped[name] = err
                log(f"skipping {name}: {err}")
                continue
            targets["_kafka"] = broker
            cmd = [pgw_bin, "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{pg_port}",
                   "--kafka-brokers", broker.bootstrap, "--kafka-topic", KAFKA_TOPIC,
                   "--spool-dir", os.path.join(tmp, "spool")] + pgw_common + ["--log-level", "info"]
        elif name == "pgwarden-policy-tcp":
            # Full audit plus 20 statement rules that never match pgbench's
            # statements: every statement is held for its analysis and checked.
            rules = os.path.join(tmp, "policy-rules.conf")
            with open(rules, "w") as f:
                f.write(POLICY_RULES)
            cmd = [pgw_bin, "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{pg_port}",
                   "--audit-file", os.path.join(tmp, name + ".jsonl"), "--policy-file", rules] + pgw_common
        elif name in ("pgwarden-audit-tcp", "pgwarden-audit-unix", "pgwarden-audit-scraped-tcp"):
            # Full audit: every statement analysed and written by the file sink.
            up = f"127.0.0.1:{pg_port}" if name.endswith("tcp") else sockdir
            cmd = [pgw_bin, "--listen", f"127.0.0.1:{port}", "--upstream", up,
                   "--audit-file", os.path.join(tmp, name + ".jsonl")] + pgw_common
            if "scraped" in name:
                # The same, with /metrics scraped every second during the runs.
                metrics_port = free_port()
                cmd += ["--metrics-listen", f"127.0.0.1:{metrics_port}"]
        else:   # pgbouncer, pgbouncer-unix
            host = "127.0.0.1" if name == "pgbouncer" else sockdir
            cmd, ra = [args.pgbouncer, "-q", write_pgbouncer_ini(tmp, name, port, host, pg_port, runas)], runas
        t, err = start_proxy(name, cmd, port, tmp, env, ra)
        err = err or probe(args, t, env)
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


KAFKA_TOPIC = "pgwarden-bench"


def start_kafka(tmp):
    """The broker of the Kafka target, with its topic. (broker, None) or (None, why)."""
    sys.path.insert(0, os.path.join(REPO_DIR, "tests", "integration"))
    try:
        import confluent_kafka  # noqa: F401  (the broker's readiness probe and the topic)
        from kafka_broker import KafkaBroker
    except ImportError as e:
        return None, f"needs confluent-kafka (run bench/run.sh after scripts/install-deps.sh): {e}"
    broker = KafkaBroker(os.path.join(tmp, "kafka"))
    try:
        broker.start()
    except Exception as e:      # noqa: BLE001: reported as the target's skip reason
        broker.stop()
        return None, f"the Kafka broker did not start: {e}"
    CLEANUP.add("kafka broker", broker.proc)
    broker.create_topic(KAFKA_TOPIC, partitions=4)
    log(f"Kafka broker up on {broker.bootstrap}")
    return broker, None


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
    # Each pgbench run: its clients' sessions, plus one first connection that
    # runs two setup queries (the scale, the partitioning of pgbench_accounts);
    # the probe: one session, one statement. Every session: start and end.
    sessions = runs * (ARGS_CLIENTS[0] + 1) + 1
    expected = tx + 2 * runs + 1 + 2 * sessions
    lines = [f"Kafka target: pgbench ran {tx:,} transactions (one statement each) in {getattr(t, 'runs', 0)} runs; "
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


ARGS_CLIENTS = [8]


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


def measure(args, t, mode, roots, env, label):
    """One measured run (after the quiet wait and the warm-up); a run disturbed by
    other processes is repeated up to --retries times and the quietest one kept."""
    rec = {"tps": None, "lat": None, "note": None, "other": None, "steal": None}
    attempts = 0
    for attempt in range(1 + args.retries):
        attempts = attempt + 1
        wait_quiet(args, roots)
        if args.warmup > 0:
            pgbench(args, t, mode, args.warmup, env)
        win = CpuWindow(roots)
        own0 = proc_cpu_ns(t.proc.pid) if t.cmd else None
        scraper = Scraper(t.metrics_port) if getattr(t, "metrics_port", None) else None
        tps, lat, note = pgbench(args, t, mode, args.seconds, env)
        if scraper:
            scrapes = scraper.stop()
            if not scrapes:
                note = "; ".join(filter(None, [note, "no successful scrape"]))
        other, steal = win.other_pct(), win.steal_pct()
        own1 = proc_cpu_ns(t.proc.pid) if t.cmd else None
        cpu_us = None
        if own0 is not None and own1 is not None and getattr(t, "last_txns", None):
            cpu_us = (own1 - own0) / 1e3 / t.last_txns
        if attempt and tps is not None and other >= rec["other"]:
            continue                           # the earlier, quieter run stands
        rec.update(tps=tps, lat=lat, note=note, other=other, steal=steal, cpu_us=cpu_us)
        if tps is None or other <= args.max_other_cpu or attempt == args.retries:
            break
        log(f"{label} {tps:,.0f} tps but other CPU {other:.0f}%: run again")
    if attempts > 1:
        rec["note"] = "; ".join(filter(None, [f"quietest of {attempts} attempts", rec["note"]]))
    return rec


def run_rounds(args, targets, order, env):
    roots = [t.proc.pid for t in targets.values()]
    results = []
    for rnd in range(args.rounds):
        k = rnd % len(order)
        rot = order[k:] + order[:k]                                   # rotate the targets
        modes = args.modes if rnd % 2 == 0 else list(reversed(args.modes))   # alternate the modes
        for mode in modes:
            for pos, name in enumerate(rot):
                t = targets[name]
                label = f"round {rnd + 1}/{args.rounds} {mode:<8} {name:<14}"
                if t.alive():
                    rec = measure(args, t, mode, roots, env, label)
                else:
                    rec = {"tps": None, "lat": None, "other": None, "steal": None,
                           "note": "target process is gone"}
                rec.update({"round": rnd + 1, "pos": pos + 1, "target": name, "mode": mode})
                results.append(rec)
                if rec["tps"] is not None:
                    cpu = f", proxy {rec['cpu_us']:.1f} µs CPU/txn" if rec.get("cpu_us") is not None else ""
                    log(f"{label} {rec['tps']:,.0f} tps, {rec['lat']:.3f} ms{cpu}, other CPU {rec['other']:.0f}%, "
                        f"steal {rec['steal']:.0f}%"
                        + (f" ({rec['note']})" if rec["note"] else ""))
                else:
                    log(f"{label} FAILED ({rec['note']})")
                    t.alive()
    return results


def write_report(args, ctx, targets, order, results, skipped, build_notes, tbl, keys, noise):
    now = datetime.datetime.now().astimezone()
    git = cmd_output(["git", "-C", REPO_DIR, "rev-parse", "--short", "HEAD"]) or "no commit"
    dirty = cmd_output(["git", "-C", REPO_DIR, "status", "--porcelain"])
    pg_version = cmd_output([os.path.join(args.pg_bindir, "postgres"), "--version"])
    pgb_version = (cmd_output([args.pgbouncer, "--version"]).splitlines() or ["?"])[0]
    md = [f"# pgwarden benchmark — {now.strftime('%Y-%m-%d %H:%M:%S %Z')}", "",
          f"- command: `{ctx['cmdline']}` (cwd `{os.getcwd()}`)",
          f"- uname -a: `{' '.join(os.uname())}`",
          f"- CPU: {cpu_model()}, {os.cpu_count()} online CPUs",
          f"- load average before / after: {ctx['load_before'][0]:.2f} / {ctx['load_after'][0]:.2f}",
          f"- repo: {git}{' + uncommitted changes' if dirty else ''}; pgwarden build type: "
          f"{build_type(args.build_dir) if ctx['pgw_bin'] else 'n/a'}",
          f"- {pg_version}; {pgb_version}",
          f"- server: max_connections=100, shared_buffers=128MB, fsync=off, synchronous_commit=off; "
          f"`pgbench -i -s {args.scale}`",
          f"- each run: `pgbench -n -S -c {args.clients} -j {args.jobs} -T {args.seconds} -M <mode>` "
          f"after a {args.warmup} s warm-up on the same target; {args.rounds} round(s), target order rotated "
          f"each round, mode order alternated; PGSSLMODE={ctx['env']['PGSSLMODE']}",
          f"- quiet machine: before each run wait ≤ {args.quiet_wait:g} s for other processes to use "
          f"≤ {args.max_other_cpu:g}% CPU; a run above that is repeated ≤ {args.retries} time(s), quietest kept",
          f"- proxies: {args.threads} loop threads (pgwarden, fwdlimit); PgBouncer session mode, "
          f"default_pool_size=20; clients always reach the target over TCP, `-unix` = unix-socket upstream",
          ]
    md += [f"- {n}: `{shlex.join(targets[n].cmd)}`" for n in order if n != "direct"]
    if noise:
        md.append(f"- {noise}")
    md += ["", "## Medians", "", tbl, "", "```", keys, "```", ""]
    if skipped or build_notes:
        md += ["## Skipped / notes", ""]
        md += [f"- {n}: " + why.replace("\n", "\n  ") for n, why in skipped.items()]
        md += [f"- build: {n}" for n in build_notes if n not in skipped.values()]
        md += [""]
    md += ["## Rounds", "",
           "`other CPU` = CPU time of processes outside the benchmark during the run, `steal` = CPU time "
           "the hypervisor gave to other guests, both in % of all CPUs.", "",
           "| round | # in round | mode | target | TPS | latency (ms) | proxy CPU µs/txn | other CPU | steal | note |",
           "|---:|---:|---|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        tps = f"{r['tps']:.1f}" if r["tps"] else "—"
        lat = f"{r['lat']:.3f}" if r["lat"] else "—"
        other = f"{r['other']:.0f}%" if r["other"] is not None else "—"
        steal = f"{r['steal']:.0f}%" if r["steal"] is not None else "—"
        cpu = f"{r['cpu_us']:.1f}" if r.get("cpu_us") is not None else "—"
        md.append(f"| {r['round']} | {r['pos']} | {r['mode']} | {r['target']} | {tps} | {lat} | {cpu} | {other} "
                  f"| {steal} | {r['note'] or ''} |")
    md.append("")
    with open(args.output, "w") as f:
        f.write("\n".join(md))


def main(argv):
    args = parse_args(argv)
    ctx = {"cmdline": shlex.join([os.environ.get("BENCH_PROG", "bench/run.py")] + argv)}
    signal.signal(signal.SIGINT, signal.default_int_handler)   # even if started with SIGINT ignored
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    atexit.register(CLEANUP.run)

    runas_name = None
    if os.geteuid() == 0:
        runas_name = args.run_as or "postgres"
        try:
            pwd.getpwnam(runas_name)
        except KeyError:
            runas_name = "nobody"
        log(f"running as root: postgres and pgbouncer run as '{runas_name}'")
    runas = RunAs(runas_name)
    env = ctx["env"] = client_env()

    for tool in ("initdb", "postgres", "pg_isready", "createdb", "pgbench", "psql"):
        if not os.access(os.path.join(args.pg_bindir, tool), os.X_OK):
            raise RuntimeError(f"{args.pg_bindir}/{tool} not found (--pg-bindir / PG_BINDIR)")
    want_pgwarden = any(t.startswith("pgwarden") for t in args.targets)
    skipped = {}
    pgw_bin, fwd_bin, build_notes = build(args, want_pgwarden)
    ctx["pgw_bin"] = pgw_bin
    if pgw_bin and build_type(args.build_dir) != "Release":
        log(f"warning: {pgw_bin} is a {build_type(args.build_dir)} build; the reference is "
            f"cmake -B build -DCMAKE_BUILD_TYPE=Release (or --rebuild)")
    for t in args.targets:
        if t.startswith("pgwarden") and not pgw_bin:
            skipped[t] = build_notes[-1]
        if t.startswith("pgbouncer") and not os.access(args.pgbouncer, os.X_OK):
            skipped[t] = f"{args.pgbouncer} not found (apt-get install -y pgbouncer)"

    tmp = tempfile.mkdtemp(prefix="pgwarden-bench-")
    CLEANUP.tmpdir, CLEANUP.keep_tmp = tmp, args.keep_tmp
    os.chmod(tmp, 0o755)
    os.chown(tmp, runas.uid, runas.gid)

    ctx["load_before"] = os.getloadavg()
    direct, sockdir = start_postgres(args, tmp, runas, env)
    run_checked([os.path.join(args.pg_bindir, "createdb"), "-h", "127.0.0.1", "-p", str(direct.port),
                 "-U", DBUSER, DB], env=env)
    log(f"pgbench -i -s {args.scale}")
    run_checked([os.path.join(args.pg_bindir, "pgbench"), "-i", "-q", "-s", str(args.scale), "-h", "127.0.0.1",
                 "-p", str(direct.port), "-U", DBUSER, DB], logfile=os.path.join(tmp, "pgbench-init.log"), env=env)

    targets = start_targets(args, tmp, runas, env, direct, sockdir, pgw_bin, fwd_bin, skipped)
    order = [t for t in args.targets if t in targets]
    if len(order) < len(args.targets):
        log(f"benchmarking {', '.join(order)}; skipped: {', '.join(t for t in args.targets if t not in targets)}")

    log("warming up the server (direct)")          # buffers, catalog caches, once
    pgbench(args, direct, args.modes[0], max(2, args.warmup * 2), env)
    total = args.rounds * len(order) * len(args.modes) * (args.seconds + args.warmup + 1)
    log(f"{args.rounds} round(s) × {len(order)} targets × {len(args.modes)} modes × "
        f"({args.seconds} s + {args.warmup} s warm-up) ≈ {total // 60} min {total % 60} s, "
        f"more if other processes keep the machine busy (--max-other-cpu {args.max_other_cpu:g}%)")
    results = run_rounds(args, targets, order, env)      # the broker's CPU counts as ours
    ctx["load_after"] = os.getloadavg()
    kafka_lines = kafka_check(targets)

    summary = summarize(order, args.modes, results)
    tbl = table(order, args.modes, summary, args.rounds)
    keys = key_ratios(order, args.modes, summary, results, skipped)
    if kafka_lines:
        keys += "\n\n" + "\n".join(kafka_lines)
    others = [r["other"] for r in results if r["other"] is not None]
    noise = ""
    if others:
        noise = (f"CPU used by other processes during the measured runs: median {statistics.median(others):.0f}%, "
                 f"max {max(others):.0f}% of {os.cpu_count()} CPUs")
        steals = [r["steal"] for r in results if r["steal"] is not None]
        noise += f"; VM steal time: median {statistics.median(steals):.0f}%, max {max(steals):.0f}%"
        if max(others) > args.max_other_cpu or max(steals) > 5:
            noise += " — the machine was not idle; treat the ratios as noisy"

    print()
    print(tbl)
    print()
    print(keys)
    if noise:
        print()
        print(noise)
    if skipped:
        print()
        for n, why in skipped.items():
            print(f"skipped {n}: {why.splitlines()[0]}")
    write_report(args, ctx, targets, order, results, skipped, build_notes, tbl, keys, noise)
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    try:
        rc = main(sys.argv[1:])
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        rc = 130
    except (RuntimeError, OSError) as e:
        log(f"error: {e}")
        rc = 1
    finally:
        CLEANUP.run()
    sys.exit(rc)
