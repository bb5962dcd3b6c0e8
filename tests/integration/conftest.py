"""Fixtures for the end-to-end tests (see harness.py for the environment
variables): a session-wide PostgreSQL 15 cluster, module-wide pgwarden
instances in front of it, and a factory for dedicated ones."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from harness import ALL_PROXIES, Proxy, free_port, pgbench, running_cluster
from test_event_schema import assert_valid_audit_file


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def pg():
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def audited_pg():
    """A cluster of its own with pgAudit logging every statement it runs
    (the oracle of the crash tests), and pgbench's tables in crashbench."""
    with running_cluster(extra_conf="shared_preload_libraries = 'pgaudit'\npgaudit.log = 'all'\n"
                                    "log_min_messages = warning\n",
                         setup_sql="CREATE EXTENSION IF NOT EXISTS pgaudit") as c:
        c.sql("CREATE DATABASE crashbench")
        pgbench(c, "-i", "-q", "-s", "1", dbname="crashbench")
        yield c


@pytest.fixture(scope="session")
def run_dir():
    """A root-owned (or caller-owned) scratch dir for proxy logs and sockets."""
    d = Path(tempfile.mkdtemp(prefix="pgwarden-run-"))
    os.chmod(d, 0o755)
    yield d
    if not os.environ.get("PGW_KEEP_TMP"):
        shutil.rmtree(d, ignore_errors=True)


_counter = [0]


def _new_workdir(run_dir, name):
    _counter[0] += 1
    return run_dir / ("%02d-%s" % (_counter[0], name))


def _module_proxy(request, run_dir, listen, upstream):
    """A shared pgwarden that audits everything to a file: once it has
    stopped, every event it wrote must be valid against the schema."""
    workdir = _new_workdir(run_dir, request.module.__name__)
    audit = workdir / "audit.jsonl"
    p = Proxy(listen, upstream, workdir, ["--audit-file", str(audit)])
    p.audit_path = audit
    p.start()
    yield p
    try:
        assert p.alive(), "pgwarden died during %s (exit %s)\n%s" % (
            request.module.__name__, p.proc.returncode, p.log_tail())
    finally:
        rc = p.stop(timeout=20)
    # Every session of the module is closed by now, so SIGTERM ends it cleanly.
    assert rc == 0, "pgwarden exited with %s on SIGTERM after %s\n%s" % (
        rc, request.module.__name__, p.log_tail())
    report = p.sanitizer_report()
    assert not report, "sanitizer report:\n" + report
    n = assert_valid_audit_file(audit)
    assert n > 0, "no audit events from %s" % request.module.__name__


@pytest.fixture(scope="module")
def proxy(request, pg, run_dir):
    """pgwarden on a free loopback port in front of the cluster's TCP port."""
    yield from _module_proxy(request, run_dir, ["127.0.0.1:%d" % free_port()],
                             "127.0.0.1:%d" % pg.port)


@pytest.fixture(scope="module")
def unix_proxy(request, pg, run_dir):
    """pgwarden listening on TCP and on a unix socket dir, with the cluster's
    unix socket directory as its upstream."""
    sockdir = _new_workdir(run_dir, "unix-listen")
    sockdir.mkdir(parents=True)
    yield from _module_proxy(request, run_dir,
                             ["127.0.0.1:%d" % free_port(), str(sockdir)], str(pg.sockdir))


@pytest.fixture
def start_proxy(request, run_dir):
    """Factory for dedicated pgwarden instances, stopped after the test."""
    started = []

    def factory(listen=None, upstream=None, extra_args=(), wait=True, **kw):
        if listen is None:
            listen = ["127.0.0.1:%d" % free_port()]
        p = Proxy(listen, upstream, _new_workdir(run_dir, request.node.name[:40]), extra_args, **kw)
        started.append(p)
        return p.start() if wait else p

    yield factory
    for p in started:
        p.stop(timeout=5)
    # A sanitizer build (scripts/test.sh runs the suite on one) reports
    # memory errors and leaks on stderr, at the latest when the process exits.
    reports = [r for r in (p.sanitizer_report() for p in started) if r]
    assert not reports, "sanitizer report:\n" + reports[0]


@pytest.fixture(autouse=True)
def _proxy_still_serves(request):
    """After each test that used a shared proxy: it is still alive and serves
    a fresh session."""
    shared = [request.getfixturevalue(n) for n in ("proxy", "unix_proxy")
              if n in request.fixturenames]
    yield
    for p in shared:
        p.assert_healthy()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item.stash[_start_key] = len(ALL_PROXIES)


_start_key = pytest.StashKey[int]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    first_new = item.stash.get(_start_key, len(ALL_PROXIES))
    for i, p in enumerate(ALL_PROXIES):
        if p.alive() or i >= first_new:
            rep.sections.append(("pgwarden stderr tail: " + p.describe(), p.log_tail()))


