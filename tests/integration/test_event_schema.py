"""The audit event JSON Schema (docs/events.schema.json) against the encoder.

The C unit test tests/unit/test_json.c writes sample events of every kind
(in their fullest and sparest forms, plus hostile statement text) to the file
named by PGW_EVENT_SAMPLES. Here every sample must validate, and mutations
of them that break the contract (EVENTS.md) must not: the schema has to be
strict enough to catch a tracker's mistakes. The encoder's UTF-8 repair is
also checked against Python's own decoder on random bytes.

Other integration tests can validate the events they produce with
`assert_valid_events(lines)` from this module.

Environment: PGW_TEST_JSON, the test_json binary (default: tests/test_json
beside PGW_BINARY's directory, i.e. build/tests/test_json).
"""

import copy
import json
import os
import random
import subprocess
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema")

REPO = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO / "docs" / "events.schema.json"
KINDS = {"session_start", "auth_failure", "statement", "denied", "cancel", "session_end", "audit_gap"}


def _test_json_binary():
    if os.environ.get("PGW_TEST_JSON"):
        return Path(os.environ["PGW_TEST_JSON"])
    binary = Path(os.environ.get("PGW_BINARY", REPO / "build" / "pgwarden")).absolute()
    return binary.parent / "tests" / "test_json"


def load_validator():
    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.Draft202012Validator
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _errors(validator, event):
    return sorted(validator.iter_errors(event), key=lambda e: list(e.path))


def assert_valid_events(lines, validator=None):
    """Every line (str or bytes) is one JSON object valid against schema v1."""
    validator = validator or load_validator()
    count = 0
    for n, line in enumerate(lines, 1):
        if isinstance(line, bytes):
            line = line.decode("utf-8")          # the encoder never writes invalid UTF-8
        if not line.strip():
            continue
        event = json.loads(line)
        errs = _errors(validator, event)
        assert not errs, "event %d invalid: %s\n%s" % (
            n, "; ".join("%s: %s" % (list(e.path), e.message) for e in errs), line)
        count += 1
    return count


def _shape(v):
    """The structure of a JSON value with the types of its leaves, and the
    values of the enumerated fields the schema's conditions look at."""
    if isinstance(v, dict):
        return tuple(sorted((k, v[k] if k in _ENUMS and isinstance(v[k], str) else _shape(v[k]))
                            for k in v))
    if isinstance(v, list):
        return ("list", tuple(sorted(set(_shape(x) for x in v), key=repr)))
    return type(v).__name__


_ENUMS = {"kind", "status", "protocol", "class", "access", "direction", "reason", "type",
          "redacted", "truncated"}


def assert_valid_audit_file(path, validator=None):
    """Every line of an audit file parses as JSON; one event of each distinct
    shape (structure, leaf types, enumerated values) is validated against the
    schema, so that a run of a million identical events stays fast while
    every variant the proxy produced is checked. Returns the event count."""
    validator = validator or load_validator()
    seen = set()
    count = 0
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            event = json.loads(line.decode("utf-8"))
            count += 1
            shape = _shape(event)
            if shape in seen:
                continue
            seen.add(shape)
            errs = _errors(validator, event)
            assert not errs, "%s: event %d invalid: %s\n%s" % (
                path, n, "; ".join("%s: %s" % (list(e.path), e.message) for e in errs), line)
    return count


@pytest.fixture(scope="module")
def validator():
    return load_validator()


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    binary = _test_json_binary()
    if not binary.exists():
        pytest.fail(f"{binary} not found: build the C tests (scripts/build.sh) "
                    f"or set PGW_TEST_JSON", pytrace=False)
    out = tmp_path_factory.mktemp("events") / "samples.jsonl"
    r = subprocess.run([str(binary)], env=dict(os.environ, PGW_EVENT_SAMPLES=str(out)),
                       capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-4000:]
    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b"", "the last event must end with a newline"
    return [json.loads(line.decode("utf-8")) for line in lines[:-1]]


def test_every_sample_validates(samples, validator):
    assert {e["kind"] for e in samples} == KINDS
    assert assert_valid_events([json.dumps(e) for e in samples], validator) == len(samples)
    ids = [e["event_id"] for e in samples]
    assert len(set(ids)) == len(ids)


def _first(samples, kind, pred=lambda e: True):
    for e in samples:
        if e["kind"] == kind and pred(e):
            return copy.deepcopy(e)
    raise AssertionError("no %s sample" % kind)


def _set(path, value):
    def f(e):
        *parents, last = path.split(".")
        for p in parents:
            e = e[p]
        e[last] = value
    return f


def _del(path):
    def f(e):
        *parents, last = path.split(".")
        for p in parents:
            e = e[p]
        del e[last]
    return f


def _stmt(e):
    return "statement" in e and e["statement"].get("protocol") == "extended"


# (kind, which sample, mutation, why it must be refused)
MUTATIONS = [
    ("statement", _stmt, _del("v"), "v is required"),
    ("statement", _stmt, _set("v", 2), "only version 1"),
    ("statement", _stmt, _set("extra", 1), "unknown top-level field"),
    ("statement", _stmt, _set("event_id", "4f8a2b1c-1d2e-4f3a-8b4c-5d6e7f8a9b0c"), "a v4 UUID"),
    ("statement", _stmt, _set("time", "2027-01-01T00:00:00Z"), "time without microseconds"),
    ("statement", _stmt, _set("time", "2027-01-01T00:00:00.000000+01:00"), "time not in UTC"),
    ("statement", _stmt, _set("kind", "query"), "unknown kind"),
    ("statement", _stmt, _set("statement.class", "SELECT"), "class outside pgAudit's"),
    ("statement", _stmt, _set("statement.protocol", "binary"), "unknown protocol"),
    ("statement", _stmt, _set("result.status", "done"), "unknown status"),
    ("statement", _stmt, _del("statement.fingerprint"), "parsed text without fingerprint"),
    ("statement", _stmt, _set("statement.fingerprint", "ABC"), "fingerprint not 16 hex"),
    ("statement", _stmt, _del("statement.statement_name"), "extended without statement name"),
    ("statement", _stmt, _set("statement.objects", [{"name": "t", "access": "readwrite"}]), "bad access"),
    ("statement", _stmt, _set("statement.objects", [{"name": "t"}]), "object without access"),
    ("statement", _stmt, _set("statement.nonsense", True), "unknown statement field"),
    ("statement", _stmt, _set("statement.params", {"values": []}), "params without count"),
    ("statement", _stmt, _set("statement.redacted", "yes"), "redacted not a boolean"),
    ("statement", _stmt, _del("result.duration_us"), "a statement that ran has a duration"),
    ("statement", _stmt, _set("result.rows", -1), "negative rows"),
    ("statement", _stmt, _set("result.sqlstate", "2201"), "SQLSTATE of 4 characters"),
    ("statement", _stmt, _del("statement"), "statement event without statement"),
    ("statement", _stmt, _del("session.backend_pid"), "statement without backend pid"),
    ("statement", _stmt, _del("user.database"), "statement without database"),
    ("statement", _stmt, _set("client.application", None), "null where the field is optional"),
    ("statement", _stmt, _set("client.socket", "/tmp/.s.PGSQL.5432"), "client with ip and socket"),
    ("statement", _stmt, _del("client.port"), "client ip without port"),
    ("statement", _stmt, _set("client.ip", "not-an-ip"), "client ip not an address"),
    ("statement", _stmt, _set("server.application", "x"), "application is a client field"),
    ("statement", _stmt, _set("session.seq", 0), "seq starts at 1"),
    ("statement", _stmt, _set("user.cert.sha256", "AB:CD"), "fingerprint format"),
    ("statement", _stmt, _del("user.cert.not_after"), "certificate without validity"),
    ("statement", _stmt, _set("tls.version", "SSLv3"), "unknown TLS version"),
    ("statement", _stmt, _set("reason", "client_closed"), "a session_end field on a statement"),
    ("statement", _stmt, _set("rule", "r"), "a denied field on a statement"),
    ("statement", lambda e: e["statement"]["protocol"] == "simple" and "index" in e["statement"],
     _set("statement.statement_name", ""), "simple protocol has no statement names"),
    ("statement", lambda e: e["statement"]["protocol"] == "simple" and "index" in e["statement"],
     _del("statement.count"), "index without count"),
    ("statement", lambda e: e["result"]["status"] == "error",
     _del("result.sqlstate"), "error without SQLSTATE"),
    ("statement", lambda e: "copy" in e, _set("copy.direction", "both"), "copy direction"),
    ("session_start", lambda e: True, _del("server_version"), "session_start without server_version"),
    ("session_start", lambda e: True, _del("auth_method"), "session_start without auth_method"),
    ("session_start", lambda e: True, _set("statement", {"protocol": "simple"}), "statement on session_start"),
    ("auth_failure", lambda e: True, _del("result.sqlstate"), "auth_failure without SQLSTATE"),
    ("auth_failure", lambda e: True, _set("result.status", "ok"), "auth_failure that is ok"),
    ("denied", lambda e: True, _del("rule"), "denied without rule"),
    ("cancel", lambda e: "target" in e, _set("target", {}), "empty target"),
    ("cancel", lambda e: True, _set("copy", {"direction": "in"}), "copy on cancel"),
    ("session_end", lambda e: True, _set("reason", "bye"), "unknown end reason"),
    ("session_end", lambda e: True, _del("bytes_out"), "session_end without bytes_out"),
    ("session_end", lambda e: True, _set("statement", {"protocol": "simple"}), "statement on session_end"),
    ("audit_gap", lambda e: True, _set("dropped", 0), "a gap of nothing"),
    ("audit_gap", lambda e: True, _del("to"), "a gap without its end"),
    ("audit_gap", lambda e: True, _del("observer"), "observer is required"),
]


@pytest.mark.parametrize("kind,pick,mutate,why", MUTATIONS, ids=[m[3] for m in MUTATIONS])
def test_schema_refuses(samples, validator, kind, pick, mutate, why):
    event = _first(samples, kind, pick)
    assert not _errors(validator, event), "the unmutated sample must be valid"
    mutate(event)
    assert _errors(validator, event), "schema accepted: " + why


def test_utf8_repair_matches_python(tmp_path):
    """Whatever the bytes, the encoder's string is what Python's decoder with
    errors="replace" reads (one U+FFFD per maximal ill-formed subpart)."""
    binary = _test_json_binary()
    if not binary.exists():
        pytest.fail(f"{binary} not found", pytrace=False)
    rng = random.Random(20261127)
    tricky = [0x00, 0x0A, 0x1F, 0x22, 0x5C, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0,
              0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xED, 0xEF, 0xF0, 0xF1, 0xF4, 0xF5, 0xFF, 0x61]
    cases = [bytes(range(256)), "caf\u00e9 \U0001F600 \u2028".encode()]
    for _ in range(150):
        n = rng.randrange(0, 3000)
        cases.append(bytes(rng.choice(tricky) if rng.random() < 0.7 else rng.randrange(256)
                           for _ in range(n)))
    for data in cases:
        r = subprocess.run([str(binary), "--sanitize"], input=data, capture_output=True, timeout=60)
        assert r.returncode == 0
        out = r.stdout.decode("utf-8")           # must be valid UTF-8
        assert json.loads(out) == data.decode("utf-8", "replace"), data[:80]
