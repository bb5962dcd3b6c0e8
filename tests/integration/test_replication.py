"""Replication connections through pgwarden (startup parameter
replication): pg_basebackup, pg_receivewal and pg_recvlogical send the
walsender's own commands, which are not SQL. The copy that comes through
must be byte for byte the server's (pg_verifybackup checks every file
against the server's manifest), and each command must leave an event that
names it: a whole-cluster copy is the first thing an audit must show."""

import json
import subprocess

import pytest

from harness import SUPERUSER, client_env, pg_tool, running_cluster, wait_until
from test_event_schema import assert_valid_audit_file


@pytest.fixture(scope="module")
def rpg():
    """A cluster that accepts replication connections, logical too."""
    with running_cluster(extra_conf="wal_level = logical\nmax_wal_senders = 10\n"
                                    "max_replication_slots = 10\n",
                         extra_hba="host replication all 127.0.0.1/32 trust\n") as c:
        c.sql("CREATE TABLE ledger (id int PRIMARY KEY, note text)")
        yield c


def audited_proxy(start_proxy, rpg, tmp_path, *extra):
    audit = tmp_path / "audit.jsonl"
    p = start_proxy(upstream="127.0.0.1:%d" % rpg.port,
                    extra_args=["--audit-file", str(audit)] + list(extra))
    return p, audit


def run_tool(name, *args, timeout=180):
    return subprocess.run([pg_tool(name)] + list(args), env=client_env(), capture_output=True,
                          text=True, timeout=timeout)


def stopped_events(p, audit):
    assert p.stop() == 0, p.log_tail()
    assert_valid_audit_file(audit)
    return [json.loads(line) for line in audit.read_bytes().splitlines()]


def by_command(evs, command, kind="statement"):
    return [e for e in evs if e["kind"] == kind and e["statement"].get("command") == command]


def tree_bytes(root, skip=()):
    return sum(f.stat().st_size for f in root.rglob("*")
               if f.is_file() and not any(part in skip for part in f.relative_to(root).parts))


def wal_range(backup):
    """The first and last WAL position the backup needs, from its manifest."""
    def lsn(text):
        hi, lo = text.split("/")
        return (int(hi, 16) << 32) | int(lo, 16)
    ranges = json.loads((backup / "backup_manifest").read_text())["WAL-Ranges"]
    return lsn(ranges[0]["Start-LSN"]), lsn(ranges[-1]["End-LSN"])


def test_pg_basebackup_is_copied_intact_and_audited(rpg, start_proxy, tmp_path):
    p, audit = audited_proxy(start_proxy, rpg, tmp_path)
    host, port = p.tcp_addrs[0]
    target = tmp_path / "backup"
    r = run_tool("pg_basebackup", "-h", host, "-p", str(port), "-U", SUPERUSER, "-D", str(target),
                 "-X", "stream", "-c", "fast", "-l", "nightly 'secret-label'")
    assert r.returncode == 0, r.stderr
    # Every file against the checksums of the manifest the server wrote,
    # and the WAL the backup needs: nothing changed on the way.
    v = run_tool("pg_verifybackup", str(target))
    assert v.returncode == 0, v.stdout + v.stderr

    evs = stopped_events(p, audit)
    bb = by_command(evs, "BASE_BACKUP")
    assert len(bb) == 1, [e["statement"].get("command") for e in evs if e["kind"] == "statement"]
    e = bb[0]
    assert e["statement"]["class"] == "READ" and e["statement"]["protocol"] == "simple"
    assert e["statement"]["text"].startswith("BASE_BACKUP (") and "$1" in e["statement"]["text"]
    assert "parse_error" not in e["statement"] and len(e["statement"]["fingerprint"]) == 16
    assert e["result"]["status"] == "ok" and e["result"]["tag"] == "BASE_BACKUP"
    # The archive streams as one COPY: at least every byte of the files that
    # came in it (tar headers and the stream's framing come on top).
    files = tree_bytes(target, skip=("pg_wal",))
    assert e["copy"]["direction"] == "out" and "rows" not in e["copy"]
    assert files <= e["copy"]["bytes"] <= files * 1.5 + (4 << 20), (files, e["copy"])
    assert e["result"]["bytes"] >= e["copy"]["bytes"]

    # The WAL streamed beside it, and the slot made for it.
    sr = by_command(evs, "START_REPLICATION")
    assert len(sr) == 1 and sr[0]["statement"]["class"] == "READ"
    assert sr[0]["result"]["status"] == "ok" and sr[0]["copy"]["direction"] == "out"
    # pg_basebackup streams from the start of the segment holding the
    # backup's first WAL position to at least its last (the manifest's
    # WAL range); the segment files it wrote are padded to 16 MiB, so they
    # bound the stream only from above (message framing on top).
    start, end = wal_range(target)
    streamed = sr[0]["copy"]["bytes"]
    assert end - (start - start % (16 << 20)) <= streamed, (start, end, streamed)
    assert streamed <= tree_bytes(target / "pg_wal") * 1.01 + (64 << 10), streamed
    assert "$1" in sr[0]["statement"]["text"]          # the WAL position
    slot = by_command(evs, "CREATE_REPLICATION_SLOT")
    assert len(slot) == 1 and slot[0]["statement"]["class"] == "DDL"
    assert len(by_command(evs, "IDENTIFY_SYSTEM")) >= 1
    assert not [x for x in evs if x["kind"] == "statement" and "parse_error" in x["statement"]]
    assert b"secret-label" not in audit.read_bytes()


def test_pg_recvlogical_streams_the_changes(rpg, start_proxy, tmp_path):
    """A logical replication session (replication=database): the decoded
    changes arrive as the server sent them; the slot's creation and the
    stream are audited, the session's SQL as SQL."""
    p, audit = audited_proxy(start_proxy, rpg, tmp_path)
    host, port = p.tcp_addrs[0]
    conn = ["-h", host, "-p", str(port), "-U", SUPERUSER, "-d", "postgres"]
    r = run_tool("pg_recvlogical", *conn, "--slot", "audit_slot", "--plugin", "test_decoding",
                 "--create-slot")
    assert r.returncode == 0, r.stderr
    try:
        rpg.sql("INSERT INTO ledger SELECT g, 'row ' || g FROM generate_series(1, 50) g")
        end = rpg.sql("SELECT pg_current_wal_insert_lsn()")[0][0]
        out = tmp_path / "changes.txt"
        r = run_tool("pg_recvlogical", *conn, "--slot", "audit_slot", "--start", "--no-loop",
                     "--endpos", str(end), "-f", str(out), timeout=60)
        assert r.returncode == 0, r.stderr
        changes = out.read_text()
        for g in (1, 25, 50):
            assert ("table public.ledger: INSERT: id[integer]:%d note[text]:'row %d'" % (g, g)) in changes
    finally:
        rpg.sql("SELECT pg_drop_replication_slot('audit_slot')")

    evs = stopped_events(p, audit)
    slot = by_command(evs, "CREATE_REPLICATION_SLOT")
    assert len(slot) == 1 and slot[0]["result"]["status"] == "ok"
    assert slot[0]["statement"]["text"].startswith('CREATE_REPLICATION_SLOT "audit_slot" LOGICAL')
    sr = by_command(evs, "START_REPLICATION")
    assert len(sr) == 1 and sr[0]["statement"]["class"] == "READ"
    assert sr[0]["copy"]["direction"] == "out" and sr[0]["copy"]["bytes"] > 50 * 60
    assert sr[0]["result"]["status"] in ("ok", "unknown")   # the client may just hang up
    assert not [x for x in evs if x["kind"] == "statement" and "parse_error" in x["statement"]]


def test_subscription_through_pgwarden(rpg, start_proxy, tmp_path):
    """Another cluster subscribes to a publication through pgwarden: the
    initial copy and the changes after it arrive, and the audit shows the
    subscriber's slot, its table copy and its stream."""
    p, audit = audited_proxy(start_proxy, rpg, tmp_path)
    host, port = p.tcp_addrs[0]
    rpg.sql("CREATE TABLE pubt (id int PRIMARY KEY, v text)")
    rpg.sql("INSERT INTO pubt SELECT g, 'before ' || g FROM generate_series(1, 100) g")
    rpg.sql("CREATE PUBLICATION pub FOR TABLE pubt")
    try:
        with running_cluster() as sub:
            sub.sql("CREATE TABLE pubt (id int PRIMARY KEY, v text)")
            sub.sql("CREATE SUBSCRIPTION s CONNECTION 'host=%s port=%d user=%s dbname=postgres' "
                    "PUBLICATION pub" % (host, port, SUPERUSER))
            wait_until(lambda: sub.sql("SELECT count(*) FROM pubt")[0][0] == 100, 60,
                       what="the initial copy")
            rpg.sql("INSERT INTO pubt SELECT g, 'after ' || g FROM generate_series(101, 150) g")
            rpg.sql("UPDATE pubt SET v = 'changed' WHERE id = 7")
            wait_until(lambda: sub.sql("SELECT count(*), max(v) FILTER (WHERE id = 7) FROM pubt")[0]
                       == (150, "changed"), 60, what="the changes")
            # drops its slot on the publisher, through pgwarden too
            sub.sql("DROP SUBSCRIPTION s")
    finally:
        wait_until(lambda: not rpg.sql("SELECT 1 FROM pg_replication_slots WHERE active"), 30,
                   what="the slots released")
        rpg.sql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots")
        rpg.sql("DROP PUBLICATION pub")
    evs = stopped_events(p, audit)
    slots = by_command(evs, "CREATE_REPLICATION_SLOT")
    assert slots and all(e["statement"]["class"] == "DDL" for e in slots)
    assert any('"s" LOGICAL pgoutput' in e["statement"]["text"] for e in slots)
    copies = [e for e in evs if e["kind"] == "statement" and e["statement"].get("command") == "COPY"]
    assert any(e["copy"] == {"direction": "out", "rows": 100, "bytes": e["copy"]["bytes"]}
               and e["result"]["status"] == "ok" for e in copies), copies
    sr = by_command(evs, "START_REPLICATION")
    assert sr and all(e["statement"]["class"] == "READ" for e in sr)
    assert any(e["copy"]["bytes"] > 50 * 20 for e in sr)
    drop = by_command(evs, "DROP_REPLICATION_SLOT")
    # the table copy's temporary slot, then the subscription's own
    assert all(e["result"]["status"] == "ok" and e["statement"]["class"] == "DDL" for e in drop)
    assert drop[-1]["statement"]["text"] == "DROP_REPLICATION_SLOT s WAIT"
    assert not [x for x in evs if x["kind"] == "statement" and "parse_error" in x["statement"]]


def test_policy_refuses_a_base_backup(rpg, start_proxy, tmp_path):
    """A rule naming BASE_BACKUP stops pg_basebackup before the server
    sends anything: the command was a parse error to the policy before, and
    so passed."""
    rules = tmp_path / "rules.conf"
    rules.write_text("statement deny name=no_backup command=BASE_BACKUP\n")
    p, audit = audited_proxy(start_proxy, rpg, tmp_path, "--policy-file", str(rules))
    host, port = p.tcp_addrs[0]
    target = tmp_path / "backup"
    r = run_tool("pg_basebackup", "-h", host, "-p", str(port), "-U", SUPERUSER, "-D", str(target),
                 "-X", "none", "-c", "fast")
    assert r.returncode != 0
    assert "could not initiate base backup" in r.stderr, r.stderr
    assert not target.exists() or not any(target.iterdir())

    evs = stopped_events(p, audit)
    denied = by_command(evs, "BASE_BACKUP", kind="denied")
    assert len(denied) == 1 and denied[0]["rule"] == "no_backup" and denied[0]["enforced"] is True
    assert not [e for e in by_command(evs, "BASE_BACKUP") if e["result"]["status"] == "ok"]
    # Other replication commands of the same session went through.
    assert by_command(evs, "IDENTIFY_SYSTEM")[0]["result"]["status"] == "ok"
