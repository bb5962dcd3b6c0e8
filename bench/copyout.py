#!/usr/bin/env python3
"""Bulk throughput: COPY OUT of ~1 GB and a large SELECT, through each target, as
MB/s and the ratio to direct (DESIGN.md: COPY OUT 1 GB ÷ direct ≥ 0.9).

  copy    psql -c "COPY (SELECT repeat('x', ROW) FROM generate_series(1, N)) TO STDOUT"
          piped into wc -c: N rows of ROW bytes plus a newline, streamed as CopyData
  select  pgbench -n -c 1 -t K -f (SELECT repeat('x', ROW) FROM generate_series(1, N/K)):
          K results of N/K DataRows each, read whole by libpq

MB/s = bytes received (copy: counted by wc; select: the rows' payload) ÷ wall
time of the client process, 10^6 bytes per MB. The server generates the rows
(no table, no disk), so the cost of the server is the same on every target.
Each round runs every (kind, target) once in a rotated order; medians of the
rounds. Also the proxy's CPU seconds per GB and its peak RSS (VmHWM). A
measurement: it never fails on a figure.

    bench/copyout.py [--mbytes 1024] [--rounds 3] [--targets direct,fwdlimit-tcp,pgwarden-audit-tcp]
"""

import argparse
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402  (start_targets)
from benchlib import (CLEANUP, DB, DBUSER, CpuWindow, build, check_pg_tools, client_env,  # noqa: E402
                      common_args, createdb, install_handlers, log, main_wrapper, make_tmp, pick_runas,
                      proc_cpu_ns, proc_status_kib, run_checked, start_postgres, stop_process, wait_quiet)

ALL_TARGETS = ["direct", "fwdlimit-tcp", "fwdlimit-unix", "pgbouncer", "pgwarden-tcp", "pgwarden-unix",
               "pgwarden-audit-tcp", "pgwarden-audit-unix"]
DEFAULT_TARGETS = ["direct", "fwdlimit-tcp", "pgwarden-tcp", "pgwarden-audit-tcp"]


def copy_run(args, t, env):
    """(bytes, seconds, note) of one COPY OUT through target t."""
    sql = f"COPY (SELECT repeat('x', {args.row_bytes}) FROM generate_series(1, {args.rows})) TO STDOUT"
    cmd = [os.path.join(args.pg_bindir, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
           "-p", str(t.port), "-U", DBUSER, "-d", DB, "-c", sql]
    t0 = time.monotonic()
    psql = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    CLEANUP.add("psql", psql, signal.SIGINT)
    wc = subprocess.Popen(["wc", "-c"], stdin=psql.stdout, stdout=subprocess.PIPE, text=True)
    psql.stdout.close()
    try:
        out, _ = wc.communicate(timeout=args.timeout)
        err = psql.communicate(timeout=30)[1]
    except subprocess.TimeoutExpired:
        stop_process(psql, signal.SIGINT, grace=2)
        wc.kill()
        wc.wait()
        return None, None, "timed out"
    finally:
        CLEANUP.forget(psql)
    secs = time.monotonic() - t0
    n = int(out.strip() or 0)
    want = args.rows * (args.row_bytes + 1)
    if psql.returncode != 0 or n != want:
        return None, None, f"psql rc={psql.returncode}, {n:,} of {want:,} bytes: {err.decode(errors='replace')[-200:]}"
    return n, secs, None


def select_run(args, t, env):
    """(payload bytes, seconds, note) of K large SELECTs through target t."""
    per = args.rows // args.selects
    script = os.path.join(CLEANUP.tmpdir, f"select-{per}.sql")
    if not os.path.exists(script):
        with open(script, "w") as f:
            f.write(f"SELECT repeat('x', {args.row_bytes}) FROM generate_series(1, {per});\n")
    cmd = [os.path.join(args.pg_bindir, "pgbench"), "-n", "-c", "1", "-j", "1", "-t", str(args.selects),
           "-f", script, "-h", "127.0.0.1", "-p", str(t.port), "-U", DBUSER, DB]
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return None, None, "timed out"
    secs = time.monotonic() - t0
    m = run.TXNS_RE.search(r.stdout)
    if r.returncode != 0 or not m or int(m.group(1)) != args.selects:
        return None, None, f"pgbench rc={r.returncode}: {(r.stdout + r.stderr)[-200:]}"
    return args.selects * per * args.row_bytes, secs, None


def parse_args(argv):
    env = os.environ.get
    p = argparse.ArgumentParser(prog="bench/copyout.py", description=__doc__.split("\n")[0])
    p.add_argument("--mbytes", type=int, default=int(env("BENCH_COPY_MBYTES", 1024)),
                   help="MB (10^6 bytes) per run [BENCH_COPY_MBYTES] (1024)")
    p.add_argument("--row-bytes", type=int, default=1000, help="bytes per row (1000)")
    p.add_argument("--selects", type=int, default=10, help="SELECTs per select run, splitting the rows (10)")
    p.add_argument("--kinds", default="copy,select", help="copy, select or both (copy,select)")
    p.add_argument("--rounds", type=int, default=int(env("BENCH_ROUNDS", 3)), help="[BENCH_ROUNDS] (3)")
    p.add_argument("--targets", default=env("BENCH_COPY_TARGETS", ",".join(DEFAULT_TARGETS)),
                   help=f"comma-separated subset of {','.join(ALL_TARGETS)} ({','.join(DEFAULT_TARGETS)})")
    p.add_argument("--threads", type=int, default=int(env("BENCH_PROXY_THREADS", 2)),
                   help="loop threads of pgwarden and fwdlimit [BENCH_PROXY_THREADS] (2)")
    p.add_argument("--pgwarden-args", default=env("PGWARDEN_ARGS", ""), help="extra pgwarden arguments")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round of 64 MB")
    p.add_argument("--quiet-wait", type=float, default=15, help="longest wait for a quiet machine, s (15)")
    p.add_argument("--max-other-cpu", type=float, default=15, help="%% of all CPUs others may use (15)")
    p.add_argument("--timeout", type=int, default=600, help="seconds one run may take (600)")
    p.add_argument("--output", help="also write the table (Markdown) to this file")
    common_args(p)
    a = p.parse_args(argv)
    if a.quick:
        a.rounds, a.mbytes, a.quiet_wait = 1, min(a.mbytes, 64), min(a.quiet_wait, 3)
    a.targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    a.kinds = [k.strip() for k in a.kinds.split(",") if k.strip()]
    if (any(t not in ALL_TARGETS for t in a.targets) or any(k not in ("copy", "select") for k in a.kinds)
            or a.rounds < 1 or a.mbytes < 1 or a.row_bytes < 1 or a.selects < 1):
        p.error("bad --targets / --kinds / --rounds / --mbytes / --row-bytes / --selects")
    if "direct" not in a.targets:
        a.targets.insert(0, "direct")
    a.rows = max(a.selects, a.mbytes * 1000 * 1000 // a.row_bytes)
    a.build_dir = os.path.abspath(a.build_dir)
    a.clients, a.scale = [1], 1            # for start_targets (pool sizes) and the probe's tables
    return a


def main(argv):
    args = parse_args(argv)
    install_handlers()
    runas = pick_runas(args)
    env = client_env()
    check_pg_tools(args)
    skipped = {}
    pgw_bin, fwd_bin, notes = build(args, any(t.startswith("pgwarden") for t in args.targets),
                                     any(t.startswith("fwdlimit") for t in args.targets))
    for t in args.targets:
        if t.startswith("pgwarden") and not pgw_bin:
            skipped[t] = notes[-1] if notes else "no pgwarden binary"
    tmp = make_tmp(args, runas, prefix="pgwarden-copy-")
    direct, sockdir = start_postgres(args, tmp, runas, env, extra=("work_mem=64MB",))
    createdb(args, direct.port, env)
    run_checked([os.path.join(args.pg_bindir, "pgbench"), "-i", "-q", "-s", "1", "-h", "127.0.0.1",
                 "-p", str(direct.port), "-U", DBUSER, DB], env=env)     # the probe's table
    targets = run.start_targets(args, tmp, runas, env, direct, sockdir, pgw_bin, fwd_bin, skipped, None)
    order = [t for t in args.targets if t in targets]
    roots = sorted({t.proc.pid for t in targets.values()})
    rows = args.rows                       # warm-up: an eighth of a run of each kind through each target
    args.rows = max(args.selects, rows // 8)
    for kind in args.kinds:
        for name in order:
            (copy_run(args, targets[name], env) if kind == "copy" else
             select_run(args, targets[name], env))
    args.rows = rows
    res = []
    log(f"{args.rounds} round(s) × {len(order)} targets × {len(args.kinds)} kinds × {args.mbytes} MB")
    for rnd in range(args.rounds):
        rot = order[rnd % len(order):] + order[:rnd % len(order)]
        for kind in (args.kinds if rnd % 2 == 0 else args.kinds[::-1]):
            for name in rot:
                t = targets[name]
                wait_quiet(args, roots)
                win = CpuWindow(roots)
                cpu0 = proc_cpu_ns(t.proc.pid) if t.cmd else None
                if kind == "copy":
                    n, secs, note = copy_run(args, t, env)
                else:
                    n, secs, note = select_run(args, t, env)
                cpu1 = proc_cpu_ns(t.proc.pid) if t.cmd else None
                rec = {"round": rnd + 1, "kind": kind, "target": name, "bytes": n, "seconds": secs, "note": note,
                       "mbps": n / secs / 1e6 if n else None, "other": win.other_pct(),
                       "cpu_s_per_gb": (cpu1 - cpu0) / 1e9 / (n / 1e9) if n and cpu0 is not None else None}
                res.append(rec)
                if n:
                    log(f"round {rnd + 1} {kind:<6} {name:<20} {n / 1e6:,.0f} MB in {secs:.2f} s = "
                        f"{rec['mbps']:,.0f} MB/s, other CPU {rec['other']:.0f}%")
                else:
                    log(f"round {rnd + 1} {kind:<6} {name:<20} FAILED: {note}")
    hwm = {n: proc_status_kib(targets[n].proc.pid, "VmHWM") for n in order if targets[n].cmd}
    lines = [f"Bulk throughput, {time.strftime('%Y-%m-%d %H:%M %Z')}, "
             f"`{shlex.join(['bench/copyout.py'] + argv)}`: {args.mbytes:,} MB per run "
             f"({args.rows:,} rows of {args.row_bytes} bytes), medians of {args.rounds} round(s):", "",
             "| kind | target | MB/s | ÷ direct | proxy CPU s/GB | proxy peak RSS (MiB) | runs |",
             "|---|---|---:|---:|---:|---:|---:|"]
    summary = {}
    for kind in args.kinds:
        for name in order:
            rs = [r for r in res if r["kind"] == kind and r["target"] == name and r["mbps"]]
            summary[(kind, name)] = statistics.median([r["mbps"] for r in rs]) if rs else None
        d = summary.get((kind, "direct"))
        for name in order:
            v = summary[(kind, name)]
            rs = [r for r in res if r["kind"] == kind and r["target"] == name and r["mbps"]]
            cpu = [r["cpu_s_per_gb"] for r in rs if r["cpu_s_per_gb"] is not None]
            lines.append(f"| {kind} | {name} | {f'{v:,.0f}' if v else 'failed'} "
                         f"| {f'{v / d:.2f}' if v and d else '—'} "
                         f"| {f'{statistics.median(cpu):.2f}' if cpu else '—'} "
                         f"| {f'{hwm[name] / 1024:.1f}' if hwm.get(name) else '—'} | {len(rs)}/{args.rounds} |")
    others = [r["other"] for r in res]
    lines += ["", f"CPU used by other processes during the runs: median {statistics.median(others):.0f}%, "
                  f"max {max(others):.0f}% of {os.cpu_count()} CPUs"
                  + (" — the machine was not idle; treat the ratios as noisy"
                     if max(others) > args.max_other_cpu else "")]
    lines += [f"- skipped {n}: {why.splitlines()[0]}" for n, why in skipped.items()]
    print("\n" + "\n".join(lines))
    if args.output:
        with open(args.output, "w") as f:
            f.write("\n".join(lines) + "\n")
    for t in targets.values():
        if t.cmd:
            stop_process(t.proc, signal.SIGTERM)
            CLEANUP.forget(t.proc)
    return 0 if all(summary.values()) else 1


if __name__ == "__main__":
    main_wrapper(main)
