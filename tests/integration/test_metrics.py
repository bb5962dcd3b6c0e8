"""The metrics endpoint: Prometheus text that promtool accepts and whose
counters agree with the workload, a real Prometheus scraping it, readiness
that follows the upstream, and an HTTP parser that shrugs off bad requests
while SQL keeps flowing."""

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import psycopg
import pytest

from harness import REPO, free_port, running_cluster, wait_until


def http_get(port, path, method="GET", timeout=5):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def status_or_none(port, path):
    try:
        return http_get(port, path)[0]
    except OSError:
        return None


def samples(text):
    """{'name{labels}': value} of every sample line."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def promtool_check(text):
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0, "promtool: %s %s" % (r.stdout, r.stderr)


@pytest.fixture
def metered(pg, start_proxy, run_dir):
    port = free_port()
    audit = run_dir / ("metrics-audit-%d.jsonl" % port)
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port,
                    extra_args=["--metrics-listen", "127.0.0.1:%d" % port, "--audit-file", str(audit)])
    p.metrics_port = port
    return p


def test_metrics_agree_with_the_workload(pg, metered):
    pg.sql("DROP TABLE IF EXISTS metered; CREATE TABLE metered (id int primary key, v text)")
    status, headers, before = http_get(metered.metrics_port, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    promtool_check(before)
    b = samples(before)

    with metered.connect() as conn:
        conn.autocommit = True
        for i in range(25):
            conn.execute("INSERT INTO metered VALUES (%s, 'x')", (i,))     # 25 WRITE ok
        for i in range(10):
            conn.execute("SELECT v FROM metered WHERE id = %s", (i,)).fetchall()  # 10 READ ok
        for _ in range(3):
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute("SELECT 1/0")                                  # 3 READ error, class 22
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM no_such_table")                     # 1 READ error, class 42
    for _ in range(2):                                                      # 100 READ ok, 2 sessions
        with metered.connect() as conn:
            for i in range(50):
                conn.execute("SELECT v FROM metered WHERE id = %s", (i % 25,), prepare=True).fetchall()

    def after():
        return samples(http_get(metered.metrics_port, "/metrics")[2])

    # Sessions are counted as closed when their sockets are; let them settle.
    wait_until(lambda: after()["pgwarden_client_connections"] == 0, 5, what="sessions to close")
    status, _, text = http_get(metered.metrics_port, "/metrics")
    promtool_check(text)
    a = samples(text)

    def d(key):
        return a.get(key, 0) - b.get(key, 0)

    assert d('pgwarden_statements_total{class="WRITE",status="ok"}') == 25
    assert d('pgwarden_statements_total{class="READ",status="ok"}') == 110
    assert d('pgwarden_statements_total{class="READ",status="error"}') == 4
    assert d('pgwarden_statement_errors_total{sqlstate_class="22"}') == 3
    assert d('pgwarden_statement_errors_total{sqlstate_class="42"}') == 1
    assert d("pgwarden_client_connections_total") == 3
    assert d("pgwarden_server_connections_total") == 3
    assert a["pgwarden_server_connections"] == 0
    assert d('pgwarden_bytes_total{direction="client_to_server"}') > 25 * 20
    assert d('pgwarden_bytes_total{direction="server_to_client"}') > 0
    assert d('pgwarden_messages_total{direction="client_to_server"}') >= 25 + 10 + 4 + 100 * 3
    assert a['pgwarden_statement_duration_seconds_bucket{le="+Inf"}'] == a["pgwarden_statement_duration_seconds_count"]
    assert a["pgwarden_audit_sink_up"] == 1
    assert a["pgwarden_analysis_cache_hits_total"] > 0
    assert a["pgwarden_analysis_cache_misses_total"] > 0
    assert a["pgwarden_analysis_parse_seconds_total"] > 0
    # Every event written is counted delivered; the audit file agrees with the statements.
    wait_until(lambda: after()["pgwarden_audit_events_delivered_total"] ==
               after()["pgwarden_audit_events_emitted_total"], 5, what="the sink to catch up")
    total_statements = sum(v for k, v in after().items() if k.startswith("pgwarden_statements_total"))
    audit_file = [x for x in metered.args if x.endswith(".jsonl")][0]
    with open(audit_file) as f:
        kinds = [json.loads(line)["kind"] for line in f]
    assert kinds.count("statement") == total_statements
    assert after()["pgwarden_audit_events_emitted_total"] == len(kinds)
    # No user names or SQL in any label.
    assert "postgres" not in "".join(k for k in a if "{" in k)
    assert "metered" not in text


def test_healthz_readyz_and_unknown_paths(metered):
    port = metered.metrics_port
    assert http_get(port, "/healthz")[:1] == (200,)
    assert http_get(port, "/readyz")[0] == 200
    assert http_get(port, "/nothing")[0] == 404
    assert http_get(port, "/metrics", method="POST")[0] == 405
    assert http_get(port, "/metrics?name[]=x")[0] == 200


def test_readyz_follows_the_upstream(start_proxy):
    with running_cluster() as own:
        port = free_port()
        p = start_proxy(upstream="127.0.0.1:%d" % own.port,
                        extra_args=["--metrics-listen", "127.0.0.1:%d" % port])
        assert http_get(port, "/readyz")[0] == 200
        own.halt()
        status, _, body = http_get(port, "/readyz")
        assert status == 503
        assert "upstream" in body and "127.0.0.1:%d" % own.port in body
        assert http_get(port, "/healthz")[0] == 200      # alive all the same
        own.resume()
        wait_until(lambda: status_or_none(port, "/readyz") == 200, 10, what="readyz to turn 200")
        with p.connect() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def raw_http(port, payload, read_timeout=8):
    """Sends payload; returns what came back before the server closed (b'' if nothing)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=read_timeout)
    data = b""
    with s:
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass                        # closed before all was sent: what came back counts
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass                        # a close with our bytes unread is a reset
    return data


def test_malformed_requests_are_refused_and_sql_goes_on(metered):
    port = metered.metrics_port
    assert raw_http(port, b"\x00\x01garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw_http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n") \
        .startswith(b"HTTP/1.1 400")
    huge = b"GET /metrics HTTP/1.1\r\nX-Filler: " + b"a" * 20000 + b"\r\n\r\n"
    reply = raw_http(port, huge)
    assert reply == b"" or reply.startswith(b"HTTP/1.1 431") or reply.startswith(b"HTTP/1.1 400")
    long_url = b"GET /" + b"m" * 1000 + b" HTTP/1.1\r\n\r\n"
    assert raw_http(port, long_url).startswith(b"HTTP/1.1 414")

    # A request that never completes is dropped, and does not hold up others.
    slow = socket.create_connection(("127.0.0.1", port), timeout=15)
    slow.sendall(b"GET /metr")
    assert http_get(port, "/healthz")[0] == 200
    t0 = time.monotonic()
    slow.settimeout(15)
    assert slow.recv(100) == b""
    assert time.monotonic() - t0 < 12
    slow.close()

    # Many connections at once: the extra ones are closed, the endpoint recovers.
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
    for s in socks:
        s.close()
    wait_until(lambda: status_or_none(port, "/healthz") == 200, 10, what="the endpoint to answer")
    with metered.connect() as conn:
        assert conn.execute("SELECT 42").fetchone() == (42,)


def test_prometheus_scrapes_pgwarden(metered, tmp_path):
    prom = shutil.which("prometheus")
    assert prom, "prometheus is not installed (scripts/install-deps.sh installs it)"
    key = 'pgwarden_statements_total{class="READ",status="ok"}'

    def read_ok():
        return samples(http_get(metered.metrics_port, "/metrics")[2]).get(key, 0)

    before = read_ok()
    with metered.connect() as conn:
        for _ in range(7):
            conn.execute("SELECT 1").fetchall()
    # A statement is counted right after its answer is forwarded.
    expected = wait_until(lambda: read_ok() == before + 7 and before + 7, 5, what="the 7 statements counted")
    web = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: pgwarden\n    static_configs:\n"
        "      - targets: ['127.0.0.1:%d']\n" % metered.metrics_port)
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([prom, "--config.file=%s" % (tmp_path / "prometheus.yml"),
                             "--storage.tsdb.path=%s" % (tmp_path / "data"),
                             "--web.listen-address=127.0.0.1:%d" % web],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        def scraped():
            q = "http://127.0.0.1:%d/api/v1/query?query=%s" % (
                web, urllib.request.quote('pgwarden_statements_total{class="READ",status="ok"}'))
            try:
                with urllib.request.urlopen(q, timeout=2) as r:
                    res = json.load(r)["data"]["result"]
            except (OSError, ValueError, KeyError):
                return None
            return float(res[0]["value"][1]) if res else None

        wait_until(lambda: scraped() is not None, 60, interval=0.5, what="Prometheus to scrape pgwarden")
        assert scraped() == expected
        up = "http://127.0.0.1:%d/api/v1/query?query=up" % web
        with urllib.request.urlopen(up, timeout=2) as r:
            assert json.load(r)["data"]["result"][0]["value"][1] == "1"

        # The Grafana dashboard shipped in packaging/ asks Prometheus only for
        # metrics pgwarden exports, in queries Prometheus accepts.
        text = http_get(metered.metrics_port, "/metrics")[2]
        exported = {re.sub(r"\{.*", "", k) for k in samples(text)}
        exported |= set(re.findall(r"^# TYPE (\w+) ", text, re.M))     # families with no sample yet
        dash = json.load(open(REPO / "packaging" / "grafana-dashboard.json"))
        exprs = [t["expr"] for panel in dash["panels"] for t in panel["targets"]]
        assert len(exprs) >= 15
        for expr in exprs:
            for name in re.findall(r"\bpgwarden_\w+", expr):
                if re.match(r"pgwarden_(kafka|spool)_", name):
                    continue        # exported with the Kafka sink: test_kafka checks them
                assert name in exported, "dashboard uses %s, which pgwarden does not export" % name
            q = expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
            url = "http://127.0.0.1:%d/api/v1/query?query=%s" % (web, urllib.request.quote(q))
            with urllib.request.urlopen(url, timeout=5) as r:
                assert json.load(r)["status"] == "success", q
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def test_metrics_port_in_use_is_an_error(pg, metered, start_proxy):
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port,
                    extra_args=["--metrics-listen", "127.0.0.1:%d" % metered.metrics_port], wait=False)
    r = subprocess.run(p.args, capture_output=True, text=True, timeout=20)
    assert r.returncode != 0
    assert re.search(r"cannot listen on 127\.0\.0\.1:%d for metrics" % metered.metrics_port, r.stderr)
