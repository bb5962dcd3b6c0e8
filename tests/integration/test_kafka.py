"""The Kafka sink against a real Apache Kafka broker (KRaft, started by the
tests from Maven Central's jars): delivery, keys and order, broker outages,
a SIGKILLed proxy replaying its spool (pgAudit in the server as the
oracle), a torn spool tail, the spool-full policies and a wrong broker."""

import json
import os
import re
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import psycopg
import pytest

from harness import (PGW_BINARY, SPOOL_DELTA, client_env, free_port, kill_during_pgbench, pg_tool,
                     pgbench, psql, spool_records, wait_until)
from kafka_broker import KafkaBroker
from test_event_schema import _shape, assert_valid_events, load_validator

# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def kafka():
    broker = KafkaBroker()
    try:
        broker.start()
    except Exception as e:
        broker.cleanup()
        pytest.fail("the Kafka broker for the tests did not start: %s" % e, pytrace=False)
    yield broker
    broker.cleanup()


@pytest.fixture(scope="module")
def bench_db(pg):
    """A database with pgbench's tables (scale 1), made directly on the server."""
    pg.sql("DROP DATABASE IF EXISTS kafkabench")
    pg.sql("CREATE DATABASE kafkabench")
    pgbench(pg, "-i", "-q", "-s", "1", dbname="kafkabench")
    return "kafkabench"


@pytest.fixture
def topic(kafka):
    name = "audit-%s" % uuid.uuid4().hex[:12]
    kafka.create_topic(name, partitions=4)
    return name


def kafka_args(kafka, topic, spool, *extra, brokers=None):
    args = ["--kafka-brokers", brokers or kafka.bootstrap, "--kafka-topic", topic]
    if spool is not None:
        args += ["--spool-dir", str(spool)]
    return args + list(extra)


def events_of(kafka, topic, min_count=0, timeout=60):
    """Every event in the topic, schema-checked, with its Kafka key."""
    msgs = kafka.consume(topic, min_count=min_count, timeout=timeout)
    out, shapes = [], set()
    for key, value, part, off in msgs:
        ev = json.loads(value)
        # One event of each distinct shape is validated, as for audit files:
        # fast on tens of thousands of events, and every variant is checked.
        shape = _shape(ev)
        if shape not in shapes:
            shapes.add(shape)
            assert_valid_events([value], VALIDATOR)
        ev["_key"] = key.decode() if key else None
        ev["_partition"] = part
        ev["_offset"] = off
        out.append(ev)
    return out


def unique(events):
    """At-least-once: consumers drop duplicates by event_id."""
    seen, out = set(), []
    for ev in events:
        if ev["event_id"] not in seen:
            seen.add(ev["event_id"])
            out.append(ev)
    return out


def statements(events, pattern):
    rx = re.compile(pattern, re.I)
    return [e for e in events if e["kind"] == "statement" and rx.search(e["statement"]["text"])]


def assert_sessions_complete(events):
    """Per session: key = session id, seq 1..n with no gap, and in each
    partition a session's events in seq order."""
    by_session = defaultdict(list)
    for e in events:
        if e["kind"] == "audit_gap":
            continue
        assert e["_key"] == e["session"]["id"], e
        by_session[e["session"]["id"]].append(e)
    for sid, evs in by_session.items():
        seqs = sorted(set(e["session"]["seq"] for e in evs))
        assert seqs == list(range(1, len(seqs) + 1)), "session %s: seq gaps: %s" % (sid, seqs[:50])
        assert len(set(e["_partition"] for e in evs)) == 1, "session %s spread over partitions" % sid
        in_order = [e["session"]["seq"] for e in sorted(evs, key=lambda e: e["_offset"])]
        firsts = []
        for s in in_order:
            if s not in firsts:
                firsts.append(s)
        assert firsts == sorted(firsts), "session %s out of order in its partition" % sid
    return by_session


VALIDATOR = load_validator()


def pgbench_tx(result):
    m = re.search(r"number of transactions actually processed: (\d+)", result.stdout.decode())
    assert m, result.stdout.decode()
    return int(m.group(1))


def record_bytes(path):
    """A segment's length up to its last record: the segment being filled
    is preallocated, zeros after its records."""
    return len(Path(path).read_bytes().rstrip(b"\0"))


def spool_bytes(spool):
    return sum(record_bytes(p) for p in Path(spool).glob("*.seg"))


# ---------------------------------------------------------------- tests


def test_mixed_workload_reaches_kafka(kafka, topic, pg, bench_db, start_proxy, tmp_path):
    """psql, pgbench and psycopg (extended protocol, pipeline): every
    statement arrives once, valid, keyed by session, seq in order."""
    spool = tmp_path / "spool"
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port, extra_args=kafka_args(kafka, topic, spool))
    psql(p, "-c", "CREATE TABLE IF NOT EXISTS kt(a int)", "-c", "INSERT INTO kt VALUES (1),(2)",
         "-c", "SELECT count(*) FROM kt", dbname=bench_db)
    r = pgbench(p, "-n", "-c", "4", "-j", "2", "-t", "50", "-M", "prepared", dbname=bench_db)
    ntx = pgbench_tx(r)
    with p.connect(bench_db) as conn:
        with conn.pipeline():
            for i in range(20):
                conn.execute("SELECT %s::int AS v", (i,))
    assert p.stop(timeout=30) == 0, p.log_tail()
    assert not list(spool.glob("*.seg")) or spool_bytes(spool) < 100, \
        "acknowledged segments are deleted"

    evs = unique(events_of(kafka, topic, min_count=ntx * 7))
    assert_sessions_complete(evs)
    assert len(statements(evs, r"^UPDATE pgbench_accounts")) == ntx
    assert len(statements(evs, r"^INSERT INTO pgbench_history")) == ntx
    assert len(statements(evs, r"^SELECT \$1::int AS v")) == 20
    assert len(statements(evs, r"INSERT INTO kt")) == 1
    assert all(e["result"]["status"] == "ok" for e in statements(evs, "pgbench_accounts"))
    kinds = {e["kind"] for e in evs}
    assert {"session_start", "statement", "session_end"} <= kinds
    # The consumer script for SIEM pipelines agrees: no gaps, right keys.
    r = subprocess.run([os.sys.executable, str(Path(__file__).resolve().parents[2] / "scripts"
                                               / "kafka-check-seq.py"),
                        "--brokers", kafka.bootstrap, "--topic", topic, "--idle", "2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 session(s) with gaps" in r.stdout and "0 wrong key(s)" in r.stdout, r.stdout


def test_events_larger_than_a_kafka_message(kafka, topic, pg, start_proxy, tmp_path):
    """Kafka takes no message over message.max.bytes (librdkafka's default
    1,000,000). Events that would be larger arrive all the same, and
    nothing stays stuck in the spool: the statement text within an eighth
    of that even when configured longer, parameter values over it left out
    (their count stays), a server message quoting a 2 MB value cut."""
    spool = tmp_path / "spool"
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port,
                    extra_args=kafka_args(kafka, topic, spool, "--statement-max-bytes", "4000000",
                                          "--log-parameters", "--parameter-max-bytes", "1048576"))
    app = "pgw-big-%s" % uuid.uuid4().hex[:8]
    rows = ",".join("(%d, 'value number %d')" % (i, i) for i in range(60000))
    with p.connect(application_name=app) as conn:
        conn.execute("CREATE TEMP TABLE kb (i int, s text)")
        conn.execute("INSERT INTO kb VALUES " + rows)                     # 1.5 MB of text
        v = "y" * 700_000
        assert conn.execute("SELECT length(%s::text) + length(%s::text)", (v, v)).fetchone() == (1_400_000,)
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            conn.execute("SELECT repeat('x', 2000000)::int")
        conn.execute("SELECT 'after'")
    assert p.stop(timeout=30) == 0, p.log_tail()
    assert not list(spool.glob("*.seg")) or spool_bytes(spool) < 100, "every event was acknowledged"
    assert "over the sink's largest" in p.log_tail()

    evs = [e for e in unique(events_of(kafka, topic, min_count=7)) if e["client"].get("application") == app]
    assert_sessions_complete(evs)
    st = {e["statement"]["text"][:20]: e for e in evs if e["kind"] == "statement"}
    ins = st["INSERT INTO kb VALUES"[:20]]
    assert ins["statement"]["truncated"] is True and ins["result"]["rows"] == 60000
    assert 100_000 < len(ins["statement"]["text"]) <= (1_000_000 - 1024) // 8
    bind = st["SELECT length($1::te"]
    assert bind["statement"]["params"] == {"count": 2} and bind["result"]["status"] == "ok"
    err = st["SELECT repeat($1, $2"]
    assert err["result"]["sqlstate"] == "22P02" and len(err["result"]["message"]) == 1024
    assert st["SELECT $1"]["result"]["status"] == "ok"
    assert max(len(json.dumps(e)) for e in evs) < 1_000_000


def test_broker_outage_loses_nothing(kafka, topic, pg, bench_db, start_proxy, tmp_path):
    """The broker is stopped for 20 s in the middle of a pgbench run, then
    started again: pgbench sees no failure and every transaction it ran has
    its events in Kafka."""
    spool = tmp_path / "spool"
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port, extra_args=kafka_args(kafka, topic, spool))
    pg.sql("TRUNCATE pgbench_history", dbname=bench_db)
    out = {}

    def bench():
        out["r"] = pgbench(p, "-n", "-c", "4", "-j", "2", "-T", "30", "-R", "150", dbname=bench_db,
                           check=False)

    t = threading.Thread(target=bench)
    t.start()
    time.sleep(4)
    kafka.stop()
    time.sleep(int(os.environ.get("PGW_KAFKA_OUTAGE_S", "20")))
    assert spool_bytes(spool) > 0, "events wait in the spool during the outage"
    kafka.start()
    wait_until(lambda: p.log_tail(200000).count("kafka: delivering to") >= 1, 60,
               what="the proxy delivering again after the outage")
    t.join(120)
    r = out["r"]
    assert r.returncode == 0, r.stderr.decode()
    ntx = pgbench_tx(r)
    assert ntx == pg.sql("SELECT count(*) FROM pgbench_history", dbname=bench_db)[0][0]
    assert p.stop(timeout=60) == 0, p.log_tail()
    assert "not acknowledged" not in p.log_tail(200000), p.log_tail()
    evs = unique(events_of(kafka, topic, min_count=ntx * 7, timeout=90))
    assert_sessions_complete(evs)
    hist = [e for e in statements(evs, r"^INSERT INTO pgbench_history") if e["result"]["status"] == "ok"]
    assert len(hist) == ntx, "%d INSERT events for %d transactions" % (len(hist), ntx)


@pytest.mark.skipif("asan" in str(PGW_BINARY),
                    reason="runs in the normal build only, to keep the suite's time")
def test_broker_outage_drop_policy(kafka, topic, pg, bench_db, start_proxy, tmp_path):
    """The same outage with a small spool under `drop`: pgbench sees no
    failure and no delay, and an audit_gap event counts what did not fit."""
    spool = tmp_path / "spool"
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port, extra_args=kafka_args(
        kafka, topic, spool, "--spool-max-bytes", "262144", "--spool-full-policy", "drop"))
    pg.sql("TRUNCATE pgbench_history", dbname=bench_db)
    out = {}

    def bench():
        out["r"] = pgbench(p, "-n", "-c", "4", "-j", "2", "-T", "20", "-R", "150", dbname=bench_db,
                           check=False)

    t = threading.Thread(target=bench)
    t.start()
    time.sleep(3)
    kafka.stop()
    try:
        wait_until(lambda: "dropping events" in p.log_tail(200000), 30, what="drops")
        time.sleep(3)
    finally:
        kafka.start()
    t.join(120)
    r = out["r"]
    assert r.returncode == 0, r.stderr.decode()
    ntx = pgbench_tx(r)
    assert ntx >= 20 * 150 * 0.8, "pgbench was held up: %d transactions" % ntx
    wait_until(lambda: "audit_gap event sent" in p.log_tail(200000), 60, what="the gap event")
    assert p.stop(timeout=60) == 0, p.log_tail()
    evs = unique(events_of(kafka, topic, min_count=100, timeout=90))
    gaps = [e for e in evs if e["kind"] == "audit_gap"]
    dropped = sum(g["dropped"] for g in gaps)
    assert dropped > 0
    hist = statements(evs, r"^INSERT INTO pgbench_history")
    assert len(hist) < ntx <= len(hist) + dropped


def test_wrong_broker_then_right_one_and_torn_tail(kafka, topic, pg, start_proxy, tmp_path):
    """A wrong broker address: a clear error at start, clients are served,
    the spool grows. Restarted with the right broker, the spool is sent; a
    torn last record (cut by hand, as a crash mid-write would) is logged
    and skipped, and everything before it arrives."""
    spool = tmp_path / "spool"
    bad = "127.0.0.1:%d" % free_port()
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port,
                    extra_args=kafka_args(kafka, topic, spool, brokers=bad))
    wait_until(lambda: re.search(r"kafka: .*(refused|ALL_BROKERS_DOWN|TRANSPORT)", p.log_tail(20000)),
               15, what="an error line about the unreachable broker")
    with p.connect() as conn:
        for i in range(50):
            assert conn.execute("SELECT %s::int + 1" % i).fetchone() == (i + 1,)
    wait_until(lambda: spool_bytes(spool) > 50 * 300, 10, what="the spool to grow")
    p.kill()                        # a crash: nothing is flushed
    segs = sorted(spool.glob("*.seg"))
    assert segs
    last = segs[-1]
    os.truncate(last, record_bytes(last) - 7)   # the last record loses its end

    q = start_proxy(upstream="127.0.0.1:%d" % pg.port, extra_args=kafka_args(kafka, topic, spool))
    wait_until(lambda: "torn record" in q.log_tail(20000), 10, what="the torn tail log line")
    assert q.stop(timeout=30) == 0, q.log_tail()
    evs = unique(events_of(kafka, topic, min_count=50))
    selects = statements(evs, r"^SELECT \$1::int \+ \$2|^SELECT \d+::int \+ \d+")
    # The cut record is the last one written: at most one statement is
    # missing, and only if the session's last record was a statement.
    assert len(selects) >= 49, len(selects)
    assert_valid_events([json.dumps({k: v for k, v in e.items() if not k.startswith("_")})
                         for e in evs], VALIDATOR)


def _slow_psql(p, n, dbname="postgres"):
    script = "".join("SELECT %d;\n" % i for i in range(n))
    return subprocess.Popen([pg_tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1"] + p.conn_args()
                            + ["-d", dbname], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=client_env()), script


def test_spool_full_drop_emits_gap(kafka, topic, pg, start_proxy, tmp_path):
    """Spool full under `drop`: clients are not held up, the events that do
    not fit are counted, and once Kafka is back an audit_gap event says how
    many: the events in Kafka plus the gap's count are all the proxy made."""
    spool = tmp_path / "spool"
    kafka.stop()
    try:
        p = start_proxy(upstream="127.0.0.1:%d" % pg.port, extra_args=kafka_args(
            kafka, topic, spool, "--spool-max-bytes", "65536", "--spool-full-policy", "drop"))
        proc, script = _slow_psql(p, 400)
        _, err = proc.communicate(script.encode(), timeout=60)
        assert proc.returncode == 0, err
        wait_until(lambda: "dropping events" in p.log_tail(50000), 10, what="the drop log line")
    finally:
        kafka.start()
    wait_until(lambda: "audit_gap event sent" in p.log_tail(50000), 60, what="the gap event")
    assert p.stop(timeout=30) == 0, p.log_tail()
    evs = unique(events_of(kafka, topic, min_count=10))
    gaps = [e for e in evs if e["kind"] == "audit_gap"]
    assert len(gaps) >= 1
    dropped = sum(g["dropped"] for g in gaps)
    others = [e for e in evs if e["kind"] != "audit_gap"]
    # one psql session: session_start, 400 statements, session_end
    assert len(others) + dropped == 402, (len(others), dropped)
    assert dropped > 0


def test_spool_full_block_waits(kafka, topic, pg, start_proxy, tmp_path):
    """Spool full under `block`: statements wait while Kafka is away and
    complete once it is back, and nothing is lost."""
    spool = tmp_path / "spool"
    kafka.stop()
    try:
        p = start_proxy(upstream="127.0.0.1:%d" % pg.port, extra_args=kafka_args(
            kafka, topic, spool, "--spool-max-bytes", "65536", "--spool-full-policy", "block"))
        proc, script = _slow_psql(p, 400)
        proc.stdin.write(script.encode())
        proc.stdin.close()
        time.sleep(4)
        assert proc.poll() is None, "psql finished although the spool is full"
        assert spool_bytes(spool) <= 65536 + 16384
        assert "spool full" in p.log_tail(50000)
    finally:
        kafka.start()
    assert proc.wait(timeout=90) == 0, proc.stderr.read()
    assert p.stop(timeout=30) == 0, p.log_tail()
    evs = unique(events_of(kafka, topic, min_count=402))
    assert_sessions_complete(evs)
    assert len([e for e in evs if e["kind"] == "statement"]) == 400


# ---------------------------------------------------------------- crash, with pgAudit as the oracle


def test_sigkill_replays_spool(kafka, topic, audited_pg, start_proxy, tmp_path):
    """pgwarden is SIGKILLed in the middle of a pgbench run and restarted on
    the same spool: every statement the server executed (as pgAudit logged
    it) has its event in Kafka, those never answered with status unknown."""
    c = audited_pg
    spool = tmp_path / "spool"
    p = start_proxy(upstream="127.0.0.1:%d" % c.port, extra_args=kafka_args(kafka, topic, spool))
    upd, ins = kill_during_pgbench(c, p, 200)
    assert upd > 0
    deltas = [v for seg in spool.glob("*.seg") for t, _, v in spool_records(seg) if t == SPOOL_DELTA]
    assert None not in deltas, "a delta without its begin"

    q = start_proxy(upstream="127.0.0.1:%d" % c.port, extra_args=kafka_args(kafka, topic, spool))
    wait_until(lambda: "sent again" in q.log_tail(50000), 15, what="the replay")
    assert q.stop(timeout=30) == 0, q.log_tail()
    evs = unique(events_of(kafka, topic, min_count=upd))
    k_upd = statements(evs, r"^UPDATE pgbench_accounts")
    k_ins = statements(evs, r"^INSERT INTO pgbench_history")
    assert len(k_upd) >= upd, "server ran %d UPDATEs, Kafka has %d" % (upd, len(k_upd))
    assert len(k_ins) >= ins, "server ran %d INSERTs, Kafka has %d" % (ins, len(k_ins))
    statuses = {e["result"]["status"] for e in statements(evs, "pgbench")}
    assert statuses <= {"ok", "unknown", "error"}, statuses
    # A statement is there once: either completed or, if pgwarden died
    # before its result, as begun (unknown), never both.
    per_seq = defaultdict(set)
    for e in evs:
        if e["kind"] == "statement":
            per_seq[(e["session"]["id"], e["session"]["seq"])].add(e["result"]["status"])
    both = [k for k, v in per_seq.items() if "unknown" in v and len(v) > 1]
    assert not both, "completed statements also replayed as unknown: %s" % both[:5]
    # What the restart rebuilt from the deltas is what the topic got.
    by_id = {e["event_id"]: {k: v for k, v in e.items() if not k.startswith("_")} for e in evs}
    for d in deltas:
        e = json.loads(d)
        assert by_id.get(e["event_id"]) == e, "a delta rebuilt is not its event"


def test_long_statement_pins_no_completed_ones(kafka, topic, pg, bench_db, start_proxy, tmp_path):
    """A statement that runs while the spool rolls over many segments keeps
    the segment of its begin; the statements in flight when that segment
    was sealed complete in the next one, which goes once Kafka has their
    events. After a SIGKILL the restart sends the long statement again
    (unknown), but none of those: no event_id reaches Kafka both as ok and
    as unknown."""
    spool = tmp_path / "spool"
    # one loop thread, 64 KiB segments: the long statement's segment is
    # sealed while the other sessions' statements are in flight
    args = kafka_args(kafka, topic, spool, "--threads", "1", "--spool-max-bytes", "524288")
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port, extra_args=args)

    def long_one():
        try:
            with p.connect(application_name="long-one") as c:
                c.execute("SELECT pg_sleep(120)")
        except psycopg.Error:
            pass                        # the proxy is killed under it
    # the long statement begins while pgbench's statements are in flight
    bench = subprocess.Popen([pg_tool("pgbench")] + p.conn_args()
                             + ["-n", "-S", "-c", "4", "-j", "2", "-T", "4", bench_db],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=client_env())
    time.sleep(1)
    t = threading.Thread(target=long_one, daemon=True)
    t.start()
    wait_until(lambda: pg.sql("SELECT count(*) FROM pg_stat_activity WHERE query = "
                              "'SELECT pg_sleep(120)' AND state = 'active'")[0][0] == 1, 10,
               what="the long statement running")
    out, err = bench.communicate(timeout=60)
    assert bench.returncode == 0, err
    done = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))
    assert done > 1000, out
    # delivered: what pgbench did is in Kafka before the crash, and the
    # segments that held it are gone
    events_of(kafka, topic, min_count=done)
    p.kill()
    pg.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(120)'")
    t.join(timeout=10)

    q = start_proxy(upstream="127.0.0.1:%d" % pg.port, extra_args=args)
    wait_until(lambda: "sent again" in q.log_tail(50000), 15, what="the replay")
    assert q.stop(timeout=30) == 0, q.log_tail()
    evs = events_of(kafka, topic, min_count=done + 1)
    status = defaultdict(set)
    for e in evs:
        if e["kind"] == "statement":
            status[e["event_id"]].add(e["result"]["status"])
    both = [k for k, v in status.items() if "unknown" in v and len(v) > 1]
    assert not both, "%d completed statements sent again as unknown" % len(both)
    (sleep,) = [e for e in evs if e["kind"] == "statement" and "pg_sleep" in e["statement"]["text"]]
    assert sleep["result"]["status"] == "unknown"


def test_readyz_reports_the_kafka_sink(kafka, topic, pg, start_proxy, tmp_path):
    """/readyz says 503 with the audit sink as the reason while the broker is
    down, and 200 again once events are delivered."""
    from test_metrics import http_get, status_or_none
    port = free_port()
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port, extra_args=kafka_args(
        kafka, topic, tmp_path / "spool", "--metrics-listen", "127.0.0.1:%d" % port))
    with p.connect() as c:
        c.execute("SELECT 1")
    wait_until(lambda: status_or_none(port, "/readyz") == 200, 30, what="readyz 200")
    kafka.stop()
    try:
        with p.connect() as c:
            c.execute("SELECT 2")            # an event that cannot be delivered now
        wait_until(lambda: status_or_none(port, "/readyz") == 503, 60, what="readyz 503")
        status, _, body = http_get(port, "/readyz")
        assert status == 503 and "audit sink" in body, body
    finally:
        kafka.start()
    wait_until(lambda: status_or_none(port, "/readyz") == 200, 60, what="readyz 200 again")
    with p.connect() as c:
        assert c.execute("SELECT 3").fetchone() == (3,)


def _kafka_metrics(port):
    from test_metrics import http_get, promtool_check, samples
    status, _, text = http_get(port, "/metrics")
    assert status == 200
    promtool_check(text)
    return text, samples(text)


def _scraped_when(port, cond):
    """The samples of a scrape for which cond(samples) holds, else None
    (also while the endpoint does not answer yet)."""
    try:
        s = _kafka_metrics(port)[1]
    except OSError:
        return None
    return s if cond(s) else None


def test_broker_and_spool_metrics_follow_an_outage(kafka, topic, pg, start_proxy, tmp_path):
    """librdkafka's statistics (every 500 ms here) give the broker's
    round-trip time, state and errors and the producer queue; the spool
    gives the age of its oldest unacknowledged event. While the broker is
    stopped that age grows and the broker is down with errors counted; a
    restart with the broker still down replays the spool and reports its
    age at once; once the broker is back everything is acknowledged and the
    age is 0 again. promtool accepts every scrape."""
    from test_metrics import REPO
    spool = tmp_path / "spool"
    port = free_port()
    args = kafka_args(kafka, topic, spool, "--metrics-listen", "127.0.0.1:%d" % port,
                      "--kafka-property", "statistics.interval.ms=500")
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port, extra_args=args)
    broker = '{broker="%s/1"' % kafka.bootstrap
    up = "pgwarden_kafka_broker_up%s}" % broker
    p50 = 'pgwarden_kafka_broker_rtt_seconds%s,quantile="0.5"}' % broker
    age = "pgwarden_spool_oldest_unacknowledged_age_seconds"

    def errors(s):
        return sum(v for k, v in s.items() if k.startswith("pgwarden_kafka_broker_errors_total" + broker))

    # A workload until a statistics interval saw requests answered.
    def rtt_seen():
        with p.connect() as c:
            for i in range(20):
                c.execute("SELECT %s::int" % i)
        return _scraped_when(port, lambda s: s.get(p50, float("nan")) > 0)

    s = wait_until(rtt_seen, 60, interval=0.2, what="a broker round-trip time in the metrics")
    assert 0 < s[p50] < 1.0, s[p50]
    assert s[p50] <= s['pgwarden_kafka_broker_rtt_seconds%s,quantile="0.99"}' % broker] < 5.0
    assert s["pgwarden_kafka_broker_rtt_seconds_count%s}" % broker] > 0
    assert 0 < s["pgwarden_kafka_broker_rtt_seconds_sum%s}" % broker] < \
        s["pgwarden_kafka_broker_rtt_seconds_count%s}" % broker]
    assert s[up] == 1
    assert s["pgwarden_kafka_broker_connects_total%s}" % broker] >= 1
    assert "pgwarden_kafka_producer_queue_messages" in s and "pgwarden_kafka_producer_queue_bytes" in s
    s = wait_until(lambda: _scraped_when(port, lambda s: s[age] == 0 and
                                         s["pgwarden_kafka_unacknowledged_events"] == 0),
                   30, interval=0.2, what="everything acknowledged, age 0")
    errors_before = errors(s)

    # The Grafana dashboard's Kafka panels ask for metrics exported here.
    text, s = _kafka_metrics(port)
    exported = {re.sub(r"\{.*", "", k) for k in s} | set(re.findall(r"^# TYPE (\w+) ", text, re.M))
    dash = json.load(open(REPO / "packaging" / "grafana-dashboard.json"))
    used = {n for panel in dash["panels"] for t in panel["targets"]
            for n in re.findall(r"\bpgwarden_\w+", t["expr"])}
    assert {"pgwarden_kafka_broker_rtt_seconds", "pgwarden_spool_oldest_unacknowledged_age_seconds"} <= used
    assert used <= exported, "dashboard uses %s, not exported" % (used - exported)

    kafka.stop()
    try:
        with p.connect() as c:
            for i in range(30):
                c.execute("SELECT %s::int + 100" % i)      # events that cannot be delivered now
        s = wait_until(lambda: _scraped_when(port, lambda s: s[up] == 0 and errors(s) > errors_before),
                       60, interval=0.25, what="the broker reported down, with errors")
        a1 = wait_until(lambda: _scraped_when(port, lambda s: s[age] > 0), 10,
                        what="an unacknowledged age")[age]
        time.sleep(3)
        s = _kafka_metrics(port)[1]
        assert s[age] >= a1 + 2, (a1, s[age])
        assert s[age] < 120
        assert s["pgwarden_kafka_unacknowledged_events"] >= 30
        assert s["pgwarden_kafka_producer_queue_messages"] >= 1 or s["pgwarden_kafka_resent_total"] > 0

        # A crash with the broker still down: the next start replays the
        # spool, and its events are at least as old as the segment's file.
        p.kill()
        q = start_proxy(upstream="127.0.0.1:%d" % pg.port, extra_args=args)
        s = wait_until(lambda: _scraped_when(port, lambda s: s.get(age, 0) > 0), 15,
                       what="the replayed events' age")
        assert s["pgwarden_kafka_replayed_total"] >= 30
        assert s[age] < 120
    finally:
        kafka.start()
    s = wait_until(lambda: _scraped_when(port, lambda s: s[age] == 0 and s.get(up) == 1 and
                                         s["pgwarden_kafka_unacknowledged_events"] == 0),
                   90, interval=0.25, what="the age back to 0 with the broker up")
    assert q.stop(timeout=30) == 0, q.log_tail()
    assert not list(spool.glob("*.seg")) or spool_bytes(spool) < 100
    evs = unique(events_of(kafka, topic, min_count=50))
    assert len(statements(evs, r"^SELECT \$1::int \+ \$2|^SELECT \d+::int \+ 100")) == 30


def test_broker_metrics_by_default_and_off(kafka, topic, pg, start_proxy, tmp_path):
    """The statistics are on by default (every 5 s) and off with
    statistics.interval.ms=0: no broker or producer-queue families then,
    while the sink's own metrics and the spool age stay."""
    on, off = free_port(), free_port()
    start_proxy(upstream="127.0.0.1:%d" % pg.port, extra_args=kafka_args(
        kafka, topic, tmp_path / "spool-on", "--metrics-listen", "127.0.0.1:%d" % on))
    q = start_proxy(upstream="127.0.0.1:%d" % pg.port, extra_args=kafka_args(
        kafka, topic, tmp_path / "spool-off", "--metrics-listen", "127.0.0.1:%d" % off,
        "--kafka-property", "statistics.interval.ms=0"))
    with q.connect() as c:
        c.execute("SELECT 1")
    t0 = time.monotonic()
    s = wait_until(lambda: _scraped_when(on, lambda s: any(k.startswith("pgwarden_kafka_broker_up{")
                                                           for k in s)), 30, interval=0.25,
                   what="broker metrics with the default interval")
    assert time.monotonic() - t0 < 15
    assert "pgwarden_kafka_producer_queue_messages" in s
    s = wait_until(lambda: _scraped_when(off, lambda s: s["pgwarden_kafka_unacknowledged_events"] == 0
                                         and s["pgwarden_audit_events_delivered_total"] >= 2),
                   30, interval=0.25, what="the events delivered")
    text = _kafka_metrics(off)[0]
    assert "pgwarden_kafka_broker" not in text and "pgwarden_kafka_producer_queue" not in text
    assert s["pgwarden_spool_oldest_unacknowledged_age_seconds"] == 0
