"""The harness of the end-to-end tests: a throwaway PostgreSQL 15 cluster and
pgwarden processes in front of it, plus helpers shared by the tests.

Environment:
  PGW_BINARY   the proxy to test (default: <repo>/build/pgwarden)
  PGW_PG_BIN   PostgreSQL 15 binaries (default: /usr/lib/postgresql/15/bin)
  PGW_PG_USER  the OS user that runs postgres when the tests run as root
               (default: postgres, created if missing)
  PGW_KEEP_TMP keep the cluster's temp dir after the run (for debugging)
"""

import json
import os
import re
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from ports import free_port  # noqa: F401  (re-exported to the tests)

REPO = Path(__file__).resolve().parents[2]
PG_BIN = Path(os.environ.get("PGW_PG_BIN", "/usr/lib/postgresql/15/bin"))
PGW_BINARY = Path(os.environ.get("PGW_BINARY", REPO / "build" / "pgwarden")).absolute()

SCRAM_USER, SCRAM_PASSWORD = "scram_user", "correct horse battery staple"
MD5_USER, MD5_PASSWORD = "md5_user", "md5 s3cret"
SUPERUSER = "postgres"


# ---------------------------------------------------------------- helpers

def client_env(**extra):
    """The environment for client programs: none of the caller's PG* settings
    leak in, and no client can hang forever on a connect."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGCONNECT_TIMEOUT="10", LC_ALL="C.UTF-8", PGTZ="UTC", PGCLIENTENCODING="UTF8")
    env.update(extra)
    return env


def pg_tool(name):
    return str(PG_BIN / name)


def run(cmd, check=True, timeout=300, **kw):
    kw.setdefault("env", client_env())
    kw.setdefault("capture_output", True)
    r = subprocess.run(cmd, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(
            "command failed (exit %d): %s\nstdout:\n%s\nstderr:\n%s"
            % (r.returncode, " ".join(map(str, cmd)), _tail(r.stdout), _tail(r.stderr)))
    return r


def _tail(data, n=4000):
    if data is None:
        return ""
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    return data[-n:]


def file_tail(path, nbytes, missing):
    """The last nbytes of a log file, or missing when it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - nbytes))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return missing


def wait_for_socket(addr, timeout, proc=None):
    """Waits until addr ((host, port) or unix path) accepts a connection."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited with %s before %r accepted" % (proc.returncode, addr))
        try:
            if isinstance(addr, str):
                fam = socket.AF_UNIX
            else:
                fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
            with socket.socket(fam, socket.SOCK_STREAM) as s:
                s.settimeout(1)
                s.connect(addr)
                return
        except OSError as e:
            last = e
            time.sleep(0.05)
    raise TimeoutError("%r did not accept within %ss: %s" % (addr, timeout, last))


# ---------------------------------------------------------------- endpoints

class Endpoint:
    """Where a client connects: a TCP host or a unix socket directory, and a port."""

    def __init__(self, host, port):
        self.host, self.port = host, port

    def dsn(self, dbname="postgres", user=SUPERUSER, **kw):
        parts = {"host": self.host, "port": self.port, "user": user, "dbname": dbname,
                 "sslmode": "disable"}
        parts.update(kw)
        return " ".join(f"{k}='{v}'" for k, v in parts.items())

    def connect(self, dbname="postgres", autocommit=True, **dsn_kw):
        return psycopg.connect(self.dsn(dbname, **dsn_kw), autocommit=autocommit,
                               connect_timeout=10)

    def conn_args(self, user=SUPERUSER):
        """Connection options for psql, pgbench, pg_dump... (libpq's default
        sslmode, as a user would run them)."""
        return ["-h", self.host, "-p", str(self.port), "-U", user]


# ---------------------------------------------------------------- PostgreSQL

class PgCluster(Endpoint):
    """A PostgreSQL 15 cluster in a temp dir. As root, postgres runs as an
    unprivileged OS user (it refuses to run as root)."""

    def __init__(self, extra_conf="", extra_hba=""):
        """extra_conf is appended to postgresql.conf; extra_hba lines come
        before the default pg_hba.conf lines (the first match wins)."""
        self.port = free_port()
        self.host = "127.0.0.1"
        self.extra_conf, self.extra_hba = extra_conf, extra_hba
        self.os_user = None
        if os.geteuid() == 0:
            self.os_user = os.environ.get("PGW_PG_USER", "postgres")
            try:
                pwd.getpwnam(self.os_user)
            except KeyError:
                subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                                "/usr/sbin/nologin", self.os_user], check=True)
        self.base = Path(tempfile.mkdtemp(prefix="pgwarden-it-"))
        self.datadir = self.base / "data"
        self.sockdir = self.base / "sock"
        self.logfile = self.base / "postgresql.log"
        self.sockdir.mkdir()
        os.chmod(self.base, 0o755)
        os.chmod(self.sockdir, 0o755)
        if self.os_user:
            pw = pwd.getpwnam(self.os_user)
            for p in (self.base, self.sockdir):
                os.chown(p, pw.pw_uid, pw.pw_gid)

    @property
    def socket_path(self):
        return str(self.sockdir / (".s.PGSQL.%d" % self.port))

    def give(self, path):
        """Makes a file postgres reads (e.g. a key) belong to its OS user."""
        os.chmod(path, 0o600)
        if self.os_user:
            pw = pwd.getpwnam(self.os_user)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _as_pg_user(self, cmd):
        if self.os_user:
            return ["runuser", "-u", self.os_user, "--"] + cmd
        return cmd

    def start(self):
        run(self._as_pg_user([pg_tool("initdb"), "-D", str(self.datadir), "-U", SUPERUSER,
                              "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"]),
            cwd=self.base)
        conf = f"""
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.sockdir}'
max_connections = 300
shared_buffers = 128MB
fsync = off
synchronous_commit = off
full_page_writes = off
password_encryption = 'scram-sha-256'
timezone = 'UTC'
log_min_messages = warning
log_connections = off
""" + self.extra_conf
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write(conf)
        hba = self.extra_hba + f"""
local all all                      trust
host  all {SCRAM_USER} 127.0.0.1/32 scram-sha-256
host  all {MD5_USER}   127.0.0.1/32 md5
host  all all          127.0.0.1/32 trust
host  all all          ::1/128      trust
"""
        with open(self.datadir / "pg_hba.conf", "w") as f:
            f.write(hba)
        run(self._as_pg_user([pg_tool("pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
                              "-w", "-t", "60", "start"]), cwd=self.base)
        self.sql(f"CREATE ROLE {SCRAM_USER} LOGIN PASSWORD '{SCRAM_PASSWORD}'")
        self.sql(f"SET password_encryption = 'md5'; CREATE ROLE {MD5_USER} LOGIN PASSWORD '{MD5_PASSWORD}'")
        return self

    def halt(self):
        """Stops the server, keeping the cluster for resume()."""
        run(self._as_pg_user([pg_tool("pg_ctl"), "-D", str(self.datadir), "-m", "fast",
                              "-w", "-t", "60", "stop"]), cwd=self.base)

    def resume(self):
        run(self._as_pg_user([pg_tool("pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
                              "-w", "-t", "60", "start"]), cwd=self.base)

    def restart(self):
        """pg_ctl restart -m fast: every session is terminated."""
        run(self._as_pg_user([pg_tool("pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
                              "-m", "fast", "-w", "-t", "60", "restart"]), cwd=self.base)

    def stop(self):
        if self.datadir.exists():
            run(self._as_pg_user([pg_tool("pg_ctl"), "-D", str(self.datadir), "-m", "fast",
                                  "-w", "-t", "60", "stop"]), check=False, cwd=self.base)
        if not os.environ.get("PGW_KEEP_TMP"):
            shutil.rmtree(self.base, ignore_errors=True)

    def sql(self, sql, dbname="postgres"):
        """Runs SQL directly on the server; returns all rows of the last result."""
        with self.connect(dbname) as conn:
            cur = conn.execute(sql)
            rows = cur.fetchall() if cur.description else []
            while cur.nextset():
                rows = cur.fetchall() if cur.description else []
            return rows

    def log_tail(self, nbytes=4000):
        return file_tail(self.logfile, nbytes, "")


# ---------------------------------------------------------------- pgwarden

ALL_PROXIES = []


@contextmanager
def running_cluster(extra_conf="", extra_hba="", files=(), setup_sql=None):
    """A started PgCluster, stopped and removed on exit. files: paths copied
    into the cluster's base dir and given to postgres (keys, certificates)
    before it starts; setup_sql runs once it is up. On a failed start the
    server's log is printed before the error propagates."""
    cluster = PgCluster(extra_conf=extra_conf, extra_hba=extra_hba)
    try:
        for f in files:
            dst = cluster.base / Path(f).name
            shutil.copy(f, dst)
            cluster.give(dst)
        try:
            cluster.start()
        except Exception:
            print(cluster.log_tail())
            raise
        if setup_sql:
            cluster.sql(setup_sql)
        yield cluster
    finally:
        cluster.stop()


class Proxy(Endpoint):
    """One pgwarden process. stderr and stdout go to files in workdir."""

    def __init__(self, listen, upstream, workdir, extra_args=(), threads=2, log_level="debug"):
        self.listen = list(listen)
        self.upstream = upstream
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.args = [str(PGW_BINARY)]
        for listen_arg in self.listen:
            self.args += ["--listen", listen_arg]
        self.args += ["--upstream", upstream, "--threads", str(threads), "--log-level", log_level]
        self.args += list(extra_args)
        self.stderr_path = self.workdir / "pgwarden.stderr"
        self.stdout_path = self.workdir / "pgwarden.stdout"
        self.proc = None
        ALL_PROXIES.append(self)

    # Addresses clients use, derived from the --listen arguments exactly as
    # the contract defines them.
    @property
    def tcp_addrs(self):
        out = []
        for a in self.listen:
            if not a.startswith("/"):
                host, port = a.rsplit(":", 1)
                out.append((host.strip("[]"), int(port)))
        return out

    @property
    def metrics_addrs(self):
        """The --metrics-listen endpoint, which opens after the listeners:
        waited for too, so that a test's first request never races it."""
        out = []
        for i, a in enumerate(self.args[:-1]):
            if a == "--metrics-listen":
                host, _, port = self.args[i + 1].rpartition(":")
                out.append((host.strip("[]"), int(port)))
        return out

    @property
    def unix_port(self):
        tcp = self.tcp_addrs
        return tcp[0][1] if tcp else 5432

    @property
    def unix_dirs(self):
        return [a for a in self.listen if a.startswith("/")]

    @property
    def unix_paths(self):
        return [os.path.join(d, ".s.PGSQL.%d" % self.unix_port) for d in self.unix_dirs]

    @property
    def host(self):
        return self.tcp_addrs[0][0] if self.tcp_addrs else self.unix_dirs[0]

    @property
    def port(self):
        return self.tcp_addrs[0][1] if self.tcp_addrs else self.unix_port

    def start(self, timeout=15):
        if not PGW_BINARY.exists():
            pytest.fail(f"pgwarden binary not found at {PGW_BINARY} (build it with "
                        f"scripts/build.sh or set PGW_BINARY)", pytrace=False)
        self.err_f = open(self.stderr_path, "ab")
        self.out_f = open(self.stdout_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=self.out_f, stderr=self.err_f,
                                     stdin=subprocess.DEVNULL, cwd=self.workdir)
        try:
            for addr in self.tcp_addrs + self.unix_paths + self.metrics_addrs:
                wait_for_socket(addr, timeout, self.proc)
        except Exception as e:
            self.kill()
            pytest.fail(f"pgwarden did not start: {e}\n{' '.join(self.args)}\n"
                        f"--- stderr tail ---\n{self.log_tail()}", pytrace=False)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout):
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout=15):
        """SIGTERM, then SIGKILL if it does not exit in time. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_files()
        return self.proc.returncode

    def sanitizer_report(self):
        """What AddressSanitizer, LeakSanitizer or UBSan said on stderr (a
        build with -DPGW_ASAN=ON), or "" when they said nothing."""
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        hits = [i for i, line in enumerate(text.splitlines())
                if "ERROR: AddressSanitizer" in line or "ERROR: LeakSanitizer" in line
                or "runtime error:" in line]
        if not hits:
            return ""
        lines = text.splitlines()
        return "\n".join(lines[hits[0]:hits[0] + 40])

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_files()

    def _close_files(self):
        for f in (getattr(self, "err_f", None), getattr(self, "out_f", None)):
            if f and not f.closed:
                f.close()

    def log_tail(self, nbytes=6000):
        return file_tail(self.stderr_path, nbytes, "(no stderr file)")

    def unix_endpoint(self, i=0):
        """Where clients reach the i-th unix listener."""
        return Endpoint(self.unix_dirs[i], self.unix_port)

    def describe(self):
        return "pgwarden %s (pid %s, %s)" % (
            " ".join(self.args[1:]), self.proc.pid if self.proc else None,
            "running" if self.alive() else "exit %s" % (self.proc.returncode if self.proc else None))

    def endpoints(self):
        return ([Endpoint(h, port) for h, port in self.tcp_addrs]
                + [Endpoint(d, self.unix_port) for d in self.unix_dirs])

    def assert_healthy(self):
        """The process is alive and each listener serves a brand-new session."""
        assert self.alive(), "pgwarden died (exit %s)\n%s" % (self.proc.returncode, self.log_tail())
        for ep in self.endpoints():
            try:
                with ep.connect() as conn:
                    assert conn.execute("SELECT 1").fetchone() == (1,)
            except Exception as e:
                raise AssertionError("pgwarden no longer serves a fresh session on %s:%s: %r\n%s"
                                     % (ep.host, ep.port, e, self.log_tail())) from e
        assert self.alive(), "pgwarden died (exit %s)\n%s" % (self.proc.returncode, self.log_tail())


# ---------------------------------------------------------------- shared test helpers

def audit_events(path, kind=None):
    """The events of a live audit file: its complete lines only (the writer
    may be in the middle of a line when the test reads), of `kind` if
    given; [] before the file exists."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in data.split(b"\n")[:-1]:
        if line.strip():
            e = json.loads(line)
            if kind is None or e["kind"] == kind:
                out.append(e)
    return out


SPOOL_EVENT, SPOOL_BEGIN, SPOOL_VOID, SPOOL_DELTA = 1, 2, 3, 4


def spool_records(path):
    """The records of a spool segment (sinks/spool.h) as (type, token,
    value), in order; a DELTA's value is the event it stands for, rebuilt
    from its BEGIN earlier in the segment (None if that is missing)."""
    data = Path(path).read_bytes()
    assert data[:8] == b"PGWSPL4\n", data[:8]
    out, begins, off = [], {}, 8
    while off + 8 <= len(data):
        plen = int.from_bytes(data[off:off + 4], "little")
        if plen == 0:
            break                       # the preallocated rest of the segment
        p = data[off + 8:off + 8 + plen]
        typ, token = p[0], int.from_bytes(p[4:12], "little")
        klen = int.from_bytes(p[12:16], "little")
        value = p[16 + klen:]
        if typ == SPOOL_BEGIN:
            begins[token] = value
        elif typ == SPOOL_DELTA:
            shared = int.from_bytes(value[:4], "little")
            b = begins.get(token)
            value = b[:shared] + value[4:] if b is not None and shared <= len(b) else None
        out.append((typ, token, value))
        off += 8 + plen
    return out


def wait_until(pred, timeout, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))


def psql(target, *args, dbname="postgres", user=SUPERUSER, check=True, **kw):
    """Runs psql against target (a PgCluster or a Proxy) with -X (no psqlrc)
    and ON_ERROR_STOP."""
    cmd = ([pg_tool("psql"), "-X", "-v", "ON_ERROR_STOP=1"] + target.conn_args(user)
           + ["-d", dbname] + list(args))
    return run(cmd, check=check, **kw)


def pgbench(target, *args, dbname="postgres", check=True, **kw):
    cmd = [pg_tool("pgbench")] + target.conn_args() + list(args) + [dbname]
    return run(cmd, check=check, **kw)


def pgaudit_count(cluster, pattern):
    """Statements pgAudit logged in cluster's server log whose text matches
    pattern (the oracle of the crash tests)."""
    rx = re.compile(r"AUDIT: SESSION,\d+,\d+,[A-Z_]+,[^,]*,[^,]*,[^,]*,(.*)")
    want = re.compile(pattern, re.I)
    n = 0
    for line in cluster.logfile.read_text(errors="replace").splitlines():
        m = rx.search(line)
        if m and want.search(m.group(1).strip('"')):
            n += 1
    return n


def kill_during_pgbench(cluster, proxy, rate):
    """Runs pgbench's default script on cluster's crashbench database
    through proxy (4 clients, `rate` transactions a second), SIGKILLs the
    proxy after 4 s, and returns how many UPDATEs of pgbench_accounts and
    INSERTs into pgbench_history the server ran meanwhile, as pgAudit
    logged them (the oracle of the crash tests)."""
    before_upd = pgaudit_count(cluster, r"^UPDATE pgbench_accounts")
    before_ins = pgaudit_count(cluster, r"^INSERT INTO pgbench_history")
    proc = subprocess.Popen([pg_tool("pgbench")] + proxy.conn_args()
                            + ["-n", "-c", "4", "-j", "2", "-T", "20", "-R", str(rate), "crashbench"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=client_env())
    time.sleep(4)
    proxy.kill()
    proc.wait(timeout=60)           # its connections are gone: pgbench fails
    time.sleep(1)                   # the server finishes what it was running
    return (pgaudit_count(cluster, r"^UPDATE pgbench_accounts") - before_upd,
            pgaudit_count(cluster, r"^INSERT INTO pgbench_history") - before_ins)


def tool(name, target, *args, check=True, **kw):
    """Runs another client program (pg_dump, pg_restore...) against target;
    args must name the database."""
    cmd = [pg_tool(name)] + target.conn_args() + list(args)
    return run(cmd, check=check, **kw)
