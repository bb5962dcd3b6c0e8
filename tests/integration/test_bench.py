"""The benchmark is a product feature: its three commands run end to end on a
tiny configuration against real PostgreSQL, pgwarden (plain, audited, TLS) and
PgBouncer, and report what they promise. The figures themselves are not
checked (a busy machine moves them); their presence and consistency are."""

import json
import os
import re
import subprocess
import sys


from harness import PGW_BINARY, REPO

BENCH = REPO / "bench"
BUILD_DIR = str(PGW_BINARY.parent)


def bench(script, *args, timeout=400, build_dir=True):
    """Runs a bench script with this interpreter (the venv has matplotlib)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "BENCH_"))}
    r = subprocess.run([sys.executable, str(BENCH / script)] + (["--build-dir", BUILD_DIR] if build_dir else [])
                       + list(args),
                       capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"{script} exited {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-5000:]}"
    return r


def md_rows(text, first_cell=None):
    """The cells of the Markdown table rows in text (optionally those whose first cell matches)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if first_cell is None or cells[0] == first_cell:
                rows.append(cells)
    return rows


def number(cell):
    return float(cell.replace(",", "").replace("+", ""))


def test_run_py_clients_tls_latency_and_plot(tmp_path):
    out = tmp_path / "results.md"
    png = tmp_path / "results.png"
    targets = ["direct", "direct-tls", "pgwarden-audit-tcp", "pgwarden-audit-tls", "pgbouncer"]
    r = bench("run.py", "--targets", ",".join(targets), "--clients", "1,3", "--modes", "simple",
              "--rounds", "1", "--seconds", "1", "--warmup", "0", "--quiet-wait", "0", "--retries", "0",
              "--scale", "1", "--output", str(out))
    text = out.read_text()
    assert "skipped" not in r.stdout, r.stdout
    # every target measured at both client counts, with a TPS and ratios
    medians = text.split("## Medians", 1)[1].split("## ", 1)[0]
    for c in ("1", "3"):
        rows = {row[1]: row for row in md_rows(medians, c)}
        assert set(rows) == set(targets), medians
        for t, row in rows.items():
            assert number(row[3]) > 0, row
            assert row[9].endswith("(1/1)"), row
        # the TLS targets are compared with direct-tls, the others with direct
        assert rows["direct-tls"][5] == "1.00" and rows["direct"][5] == "1.00"
        tls_ratio = number(rows["pgwarden-audit-tls"][3]) / number(rows["direct-tls"][3])
        assert abs(number(rows["pgwarden-audit-tls"][5]) - tls_ratio) < 0.011, rows["pgwarden-audit-tls"]
        # pgwarden's CPU per transaction is measured; direct has no proxy
        assert number(rows["pgwarden-audit-tcp"][8]) > 0 and rows["direct"][8] == "—"
    # p50 ≤ p99 for every target at 1 client, and the added latency is the difference to direct
    lat = text.split("## Latency at 1 client", 1)[1].split("## ", 1)[0]
    rows = {row[0]: row for row in md_rows(lat) if row[0] in targets}
    assert set(rows) == set(targets), lat
    for t, row in rows.items():
        assert 0 < number(row[2]) <= number(row[3]), row
    assert number(rows["pgwarden-audit-tcp"][4]) == number(rows["pgwarden-audit-tcp"][2]) - number(rows["direct"][2])
    assert rows["pgwarden-audit-tls"][6] == "direct-tls"
    # TPS by clients and the plot
    assert md_rows(text.split("## TPS by clients", 1)[1], "pgwarden-audit-tls")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![TPS by clients](results.png)" in text
    # every round is recorded with its client count
    assert len([row for row in md_rows(text.split("## Rounds", 1)[1]) if row[0] == "1"]) == 2 * len(targets)


def test_run_py_without_the_forwarders_source_skips_it(tmp_path):
    """A clone without the bare forwarder's source (it lives outside the
    repository) still runs: the fwdlimit targets are skipped and said so."""
    out = tmp_path / "results.md"
    bdir = tmp_path / "b"           # pgwarden built, no fwdlimit
    bdir.mkdir()
    (bdir / "pgwarden").symlink_to(PGW_BINARY)
    r = bench("run.py", "--targets", "direct,fwdlimit-tcp,pgwarden-tcp", "--clients", "2", "--modes", "simple",
              "--rounds", "1", "--seconds", "1", "--warmup", "0", "--quiet-wait", "0", "--retries", "0",
              "--scale", "1", "--output", str(out), "--plot", "none",
              "--fwdlimit-src", str(tmp_path / "absent" / "fwdlimit.c"), "--build-dir", str(bdir),
              build_dir=False)
    assert "skipped fwdlimit-tcp: fwdlimit's source" in r.stdout, r.stdout
    medians = out.read_text().split("## Medians", 1)[1].split("## ", 1)[0]
    assert {row[1] for row in md_rows(medians, "2")} == {"direct", "pgwarden-tcp"}, medians


def test_idle_py_counts_every_connection(tmp_path):
    js = tmp_path / "idle.json"
    bench("idle.py", "--connections", "400", "--sessions", "20", "--targets", "pgwarden-audit", "--json", str(js))
    rows = {r["kind"]: r for r in json.loads(js.read_text())}
    assert set(rows) == {"pre-startup", "authenticated"}
    pre, auth = rows["pre-startup"], rows["authenticated"]
    assert pre["count"] == pre["open_after"] == 400
    assert auth["count"] == auth["open_after"] == 20
    # every connection holds a descriptor in pgwarden; a session two (client and server)
    assert pre["proxy_fds"] >= 400 - 2
    assert auth["proxy_fds"] >= 2 * 20 - 2
    for r in rows.values():
        assert r["rss_kib"] > 0
        # a loose bound: an idle connection must not hold a 64 KiB read buffer
        assert r["per_conn_kib"] < 64, r


def test_copyout_py_reports_throughput_and_ratio(tmp_path):
    out = tmp_path / "copy.md"
    r = bench("copyout.py", "--mbytes", "8", "--rounds", "1", "--quiet-wait", "0",
              "--targets", "direct,pgwarden-audit-tcp", "--output", str(out))
    text = out.read_text()
    assert text in r.stdout
    rows = {(row[0], row[1]): row for row in md_rows(text) if row[0] in ("copy", "select")}
    assert set(rows) == {(k, t) for k in ("copy", "select") for t in ("direct", "pgwarden-audit-tcp")}
    for (k, t), row in rows.items():
        assert number(row[2]) > 0 and row[6] == "1/1", row
    assert rows[("copy", "direct")][3] == "1.00"
    ratio = number(rows[("copy", "pgwarden-audit-tcp")][2]) / number(rows[("copy", "direct")][2])
    assert abs(number(rows[("copy", "pgwarden-audit-tcp")][3]) - ratio) < 0.02
    assert float(rows[("copy", "pgwarden-audit-tcp")][5]) > 0          # the proxy's peak RSS
    assert re.search(r"8 MB per run \(8,000 rows of 1000 bytes\)", text)
