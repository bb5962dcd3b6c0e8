"""The benchmark's report: medians over the rounds, ratios, latency percentiles at
one client, the Markdown file and the PNG plot of TPS by clients."""

import datetime
import math
import os
import shlex
import statistics

from benchlib import REPO_DIR, build_type, cmd_output, cpu_model, log

TLS_TARGETS = ("direct-tls", "pgwarden-tls", "pgwarden-tls2", "pgwarden-audit-tls")


def fwd_for(name):
    return "fwdlimit-unix" if name.endswith("-unix") else "fwdlimit-tcp"


def direct_for(name, targets):
    """The direct run a target is compared with: over TLS for the TLS targets when
    direct-tls was measured (the clients pay the same handshake and encryption)."""
    if name in TLS_TARGETS and "direct-tls" in targets:
        return "direct-tls"
    return "direct"


def fmt_ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}"


def percentiles(values, ps=(50, 99)):
    """Nearest-rank percentiles (the smallest value with at least p % of the values at
    or below it) of a list of numbers; None for an empty list."""
    if not values:
        return tuple(None for _ in ps)
    v = sorted(values)
    return tuple(v[max(0, math.ceil(p / 100 * len(v)) - 1)] for p in ps)


def read_pgbench_log(paths):
    """Per-transaction latencies in µs from pgbench --log files (the third column of
    'client_id transaction_no time script_no time_epoch time_us')."""
    lat = []
    for path in paths:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    lat.append(int(parts[2]))
    return lat


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(targets, modes, clients, results):
    """{(target, mode, clients): {tps, lat, lo, hi, n, cpu, p50, p99}} or None if no run succeeded."""
    summary = {}
    for c in clients:
        for m in modes:
            for t in targets:
                rs = [r for r in results if r["target"] == t and r["mode"] == m and r["clients"] == c
                      and r["tps"] is not None]
                if not rs:
                    summary[(t, m, c)] = None
                    continue
                tps = [r["tps"] for r in rs]
                summary[(t, m, c)] = {
                    "tps": statistics.median(tps), "lat": med([r["lat"] for r in rs]),
                    "lo": min(tps), "hi": max(tps), "n": len(rs),
                    "cpu": med([r.get("cpu_us") for r in rs]),
                    "p50": med([r.get("p50_us") for r in rs]), "p99": med([r.get("p99_us") for r in rs])}
    return summary


def _get(summary, t, m, c, key="tps"):
    s = summary.get((t, m, c))
    return s[key] if s else None


def table(targets, modes, clients, summary, rounds):
    """One row per (clients, mode, target): medians and the ratios of median TPS."""
    lines = ["| clients | target | mode | median TPS | median latency (ms) | ÷ direct (TLS targets: ÷ direct-tls) | ÷ fwdlimit (same upstream) "
             "| ÷ pgbouncer | proxy CPU µs/txn | TPS min–max (runs) |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for c in clients:
        for m in modes:
            for t in targets:
                s = summary.get((t, m, c))
                if not s:
                    lines.append(f"| {c} | {t} | {m} | failed | — | — | — | — | — | 0/{rounds} |")
                    continue
                cpu_cell = f"{s['cpu']:.1f}" if s["cpu"] is not None else "—"
                lines.append(
                    f"| {c} | {t} | {m} | {s['tps']:,.0f} | {s['lat']:.3f} "
                    f"| {fmt_ratio(s['tps'], _get(summary, direct_for(t, targets), m, c))} "
                    f"| {fmt_ratio(s['tps'], _get(summary, fwd_for(t), m, c))} "
                    f"| {fmt_ratio(s['tps'], _get(summary, 'pgbouncer', m, c))} "
                    f"| {cpu_cell} | {s['lo']:,.0f}–{s['hi']:,.0f} ({s['n']}/{rounds}) |")
    return "\n".join(lines)


def tps_by_clients(targets, modes, clients, summary):
    """The plot's numbers as a table: median TPS per target and mode, one column per
    client count."""
    lines = ["| target | mode | " + " | ".join(f"{c} clients" for c in clients) + " |",
             "|---|---|" + "---:|" * len(clients)]
    for m in modes:
        for t in targets:
            cells = [f"{v:,.0f}" if (v := _get(summary, t, m, c)) is not None else "—" for c in clients]
            lines.append(f"| {t} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def latency_table(targets, modes, summary):
    """p50/p99 of the per-transaction latency at 1 client (medians over the rounds), and
    what each target adds to the direct connection's."""
    lines = ["| target | mode | p50 µs | p99 µs | added p50 µs | added p99 µs | vs |",
             "|---|---|---:|---:|---:|---:|---|"]
    for m in modes:
        for t in targets:
            s = summary.get((t, m, 1))
            if not s or s["p50"] is None:
                lines.append(f"| {t} | {m} | — | — | — | — | |")
                continue
            ref = direct_for(t, targets)
            r = summary.get((ref, m, 1))
            if t == ref or not r or r["p50"] is None:
                a50 = a99 = "—"
            else:
                a50, a99 = f"{s['p50'] - r['p50']:+.0f}", f"{s['p99'] - r['p99']:+.0f}"
            lines.append(f"| {t} | {m} | {s['p50']:.0f} | {s['p99']:.0f} | {a50} | {a99} | "
                         f"{ref if t != ref else ''} |")
    return "\n".join(lines)


def paired(results, a, b, m, c):
    """Per-round ratios a/b for mode m and c clients (the runs of one round are close in time)."""
    out = []
    for rnd in sorted({r["round"] for r in results}):
        sel = lambda t: [r for r in results if r["round"] == rnd and r["target"] == t and r["mode"] == m
                         and r["clients"] == c and r["tps"]]
        ra, rb = sel(a), sel(b)
        if ra and rb:
            out.append(ra[0]["tps"] / rb[0]["tps"])
    return out


def key_ratios(targets, modes, clients, summary, results, skipped):
    pairs = [("pgwarden-tcp", "fwdlimit-tcp"), ("pgwarden-unix", "fwdlimit-unix"),
             ("pgwarden-tcp", "pgbouncer"), ("pgwarden-unix", "pgbouncer"),
             ("pgwarden-audit-tcp", "fwdlimit-tcp"), ("pgwarden-audit-unix", "fwdlimit-unix"),
             ("pgwarden-audit-tcp", "pgbouncer"), ("pgwarden-audit-tcp", "pgwarden-tcp"),
             ("pgwarden-audit-tcp", "direct"),
             ("pgwarden-audit-scraped-tcp", "pgwarden-audit-tcp"),
             ("pgwarden-policy-tcp", "pgwarden-audit-tcp")]
    if "pgwarden-spool-tcp" in targets:
        pairs += [("pgwarden-spool-tcp", "fwdlimit-tcp"), ("pgwarden-spool-tcp", "pgwarden-audit-tcp")]
    if "pgwarden-kafka-tcp" in targets:
        pairs += [("pgwarden-kafka-tcp", "fwdlimit-tcp"), ("pgwarden-kafka-tcp", "pgwarden-audit-tcp")]
    if "pgbouncer-unix" in targets:
        pairs.append(("pgwarden-unix", "pgbouncer-unix"))
    for t in ("pgwarden-tls", "pgwarden-tls2", "pgwarden-audit-tls"):
        if t in targets:
            pairs.append((t, "direct-tls"))
    if "pgwarden-audit-tls" in targets:
        pairs.append(("pgwarden-audit-tls", "pgwarden-audit-tcp"))
    pairs += [("fwdlimit-tcp", "direct"), ("fwdlimit-unix", "direct"), ("pgbouncer", "direct")]
    pairs = [(a, b) for a, b in pairs if (a in targets or a in skipped) and (b in targets or b in skipped)]
    lines = ["Key ratios (ratio of median TPS; in brackets the per-round paired ratios, min–max):"]
    if not pairs:
        return lines[0] + "\n\n    (no pair of the selected targets)"
    w = max(len(f"{a} / {b}") for a, b in pairs)
    for c in clients:
        lines += ["", f"  {c} client{'s' if c != 1 else ''}:"]
        for a, b in pairs:
            cells = []
            for m in modes:
                if a not in targets or b not in targets:
                    cells.append(f"{m} n/a ({'skipped' if a in skipped or b in skipped else 'not selected'})")
                    continue
                pr = paired(results, a, b, m, c)
                rng = f" [{min(pr):.2f}–{max(pr):.2f}]" if pr else ""
                cells.append(f"{m} {fmt_ratio(_get(summary, a, m, c), _get(summary, b, m, c))}{rng}")
            lines.append(f"    {f'{a} / {b}':<{w}}   " + "   ".join(cells))
    return "\n".join(lines)


def plot(path, targets, modes, clients, summary, title):
    """TPS by clients, one line per target, one panel per mode (matplotlib, PNG).
    Returns None, or why no plot was written."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return f"no plot: matplotlib is missing ({e}); scripts/install-deps.sh puts it into .venv"
    fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes) + 2.5, 5), squeeze=False)
    styles = ["-", "--", "-.", ":"]
    palette = plt.get_cmap("tab20")
    for ax, m in zip(axes[0], modes):
        for i, t in enumerate(targets):
            pts = [(c, _get(summary, t, m, c)) for c in clients]
            pts = [(c, v) for c, v in pts if v is not None]
            if not pts:
                continue
            xs, ys = zip(*pts)
            # 20 distinct colours: the default cycle has 10, and an 11th target
            # would share direct's colour
            ax.plot(xs, ys, marker="o", color=palette(i % 20), linestyle=styles[(i // 20) % len(styles)],
                    label=t)
        ax.set_xscale("log", base=2)
        ax.set_xticks(clients)
        ax.set_xticklabels([str(c) for c in clients])
        ax.set_xlabel("pgbench clients (-c)")
        ax.set_title(f"pgbench -S, -M {m}")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("median TPS")
    axes[0][-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig.suptitle(title, fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def write_report(args, ctx, targets, order, results, sections, skipped, build_notes, noise):
    now = datetime.datetime.now().astimezone()
    git = cmd_output(["git", "-C", REPO_DIR, "rev-parse", "--short", "HEAD"]) or "no commit"
    dirty = cmd_output(["git", "-C", REPO_DIR, "status", "--porcelain"])
    pg_version = cmd_output([os.path.join(args.pg_bindir, "postgres"), "--version"])
    pgb_version = (cmd_output([args.pgbouncer, "--version"]).splitlines() or ["?"])[0]
    jobs = ", ".join(f"-c {c} -j {min(c, args.jobs)}" for c in args.clients)
    md = [f"# pgwarden benchmark — {now.strftime('%Y-%m-%d %H:%M:%S %Z')}", "",
          f"- command: `{ctx['cmdline']}` (cwd `{os.getcwd()}`)",
          f"- uname -a: `{' '.join(os.uname())}`",
          f"- CPU: {cpu_model()}, {os.cpu_count()} online CPUs",
          f"- load average before / after: {ctx['load_before'][0]:.2f} / {ctx['load_after'][0]:.2f}",
          f"- repo: {git}{' + uncommitted changes' if dirty else ''}; pgwarden build type: "
          f"{build_type(args.build_dir) if ctx['pgw_bin'] else 'n/a'}",
          f"- {pg_version}; {pgb_version}",
          f"- server: max_connections={ctx['max_connections']}, shared_buffers=128MB, fsync=off, "
          f"synchronous_commit=off{', ssl=on' if ctx.get('tls') else ''}; `pgbench -i -s {args.scale}`",
          f"- each run: `pgbench -n -S -c <clients> -j <jobs> -T {args.seconds} -M <mode>` ({jobs}) "
          f"after a {args.warmup} s warm-up on the same target; at 1 client also `--log`, whose "
          f"per-transaction latencies give p50/p99; {args.rounds} round(s), target order rotated each "
          f"round, mode and client-count order alternated; PGSSLMODE=disable (require for the TLS targets)",
          f"- quiet machine: before each run wait ≤ {args.quiet_wait:g} s for other processes to use "
          f"≤ {args.max_other_cpu:g}% CPU; a run above that is repeated ≤ {args.retries} time(s), quietest kept",
          f"- proxies: {args.threads} loop threads (pgwarden, fwdlimit); PgBouncer session mode, "
          f"default_pool_size={max(20, max(args.clients))}; clients always reach the target over TCP, "
          f"`-unix` = unix-socket upstream",
          ]
    md += [f"- {n}: `{shlex.join(targets[n].cmd)}`" for n in order if getattr(targets[n], "cmd", None)]
    if noise:
        md.append(f"- {noise}")
    md.append("")
    for title, body in sections:
        md += [f"## {title}", "", body, ""]
    if skipped or build_notes:
        md += ["## Skipped / notes", ""]
        md += [f"- {n}: " + why.replace("\n", "\n  ") for n, why in skipped.items()]
        md += [f"- build: {n}" for n in build_notes if n not in skipped.values()]
        md += [""]
    md += ["## Rounds", "",
           "`other CPU` = CPU time of processes outside the benchmark during the run, `steal` = CPU time "
           "the hypervisor gave to other guests, both in % of all CPUs.", "",
           "| round | # in round | clients | mode | target | TPS | latency (ms) | p50 µs | p99 µs "
           "| proxy CPU µs/txn | other CPU | steal | note |",
           "|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    f1 = lambda v, fmt: format(v, fmt) if v is not None else "—"
    for r in results:
        md.append(f"| {r['round']} | {r['pos']} | {r['clients']} | {r['mode']} | {r['target']} "
                  f"| {f1(r['tps'], '.1f')} | {f1(r['lat'], '.3f')} | {f1(r.get('p50_us'), '.0f')} "
                  f"| {f1(r.get('p99_us'), '.0f')} | {f1(r.get('cpu_us'), '.1f')} "
                  f"| {f1(r['other'], '.0f')}{'%' if r['other'] is not None else ''} "
                  f"| {f1(r['steal'], '.0f')}{'%' if r['steal'] is not None else ''} | {r['note'] or ''} |")
    md.append("")
    with open(args.output, "w") as f:
        f.write("\n".join(md))
    log(f"written to {args.output}")
