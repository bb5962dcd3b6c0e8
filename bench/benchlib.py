"""The benchmark's plumbing, shared by run.py, idle.py and copyout.py: processes
we start and their cleanup, the throwaway PostgreSQL cluster, the proxies
(fwdlimit, PgBouncer, pgwarden), certificates, the Kafka broker, and the CPU
accounting that tells a quiet machine from a busy one. Python 3 standard
library only (the Kafka broker needs confluent-kafka from the repository's .venv).
"""

import atexit
import os
import platform
import pwd
import re
import shlex
import shutil
import signal
import socket
import resource
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
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


# The tests' helpers: the port picker here, the Kafka broker in start_kafka.
sys.path.insert(0, os.path.join(REPO_DIR, "tests", "integration"))
from ports import free_port  # noqa: E402,F401  (shared with the tests)


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

def build(args, want_pgwarden, want_fwdlimit=True):
    """Builds build/pgwarden and build/fwdlimit if missing (fwdlimit only when a
    selected target needs it: its source lives outside the repository, and
    without it the fwdlimit targets are skipped with a note), and brings
    existing ones up to date with the sources (an incremental build: a
    binary left by an older checkout would otherwise be measured under the
    current commit's name). Returns (pgwarden path or None, fwdlimit path or
    None, notes)."""
    bdir = args.build_dir
    pgw = os.path.join(bdir, "pgwarden")
    fwd = os.path.join(bdir, "fwdlimit")
    notes = []
    fwd_src = os.path.abspath(args.fwdlimit_src)
    wanted = [p for p in ([pgw] if want_pgwarden else []) +
              ([fwd] if want_fwdlimit and os.path.isfile(fwd_src) else [])]
    missing = [p for p in wanted if args.rebuild or not os.access(p, os.X_OK)]
    if (not missing and wanted and shutil.which("cmake") and
            os.path.isfile(os.path.join(bdir, "CMakeCache.txt"))):
        names = [os.path.basename(p) for p in wanted
                 if os.path.isdir(os.path.join(bdir, "CMakeFiles", os.path.basename(p) + ".dir"))]
        r = subprocess.run(["cmake", "--build", bdir, "-j"] + sum((["--target", n] for n in names), []),
                           capture_output=True, text=True) if names else None
        if r and r.returncode != 0:
            err = [l for l in (r.stdout + r.stderr).splitlines() if "error" in l]
            raise RuntimeError(f"cannot bring {', '.join(names)} in {bdir} up to date: " +
                               (err[0] if err else r.stderr.strip()[-300:]))
        relinked = [n for n in names if re.search(r"Linking \S+ executable " + re.escape(n) + r"\b",
                                                   r.stdout if r else "")]
        if relinked:
            log(f"rebuilt in {bdir}: {', '.join(relinked)} (sources changed since the last build)")
    if missing and shutil.which("cmake"):
        log(f"building in {bdir} (missing: {', '.join(os.path.basename(m) for m in missing)})")
        cfg = ["cmake", "-S", REPO_DIR, "-B", bdir, "-DCMAKE_BUILD_TYPE=Release", f"-DPGW_FWDLIMIT_SRC={fwd_src}"]
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
    if not want_fwdlimit:
        fwd = None
    elif not os.access(fwd, os.X_OK):
        src = args.fwdlimit_src
        if not os.path.isfile(src):
            notes.append(f"fwdlimit's source {src} not found (--fwdlimit-src, FWDLIMIT_SRC): "
                         "fwdlimit targets skipped")
            log(notes[-1])
            fwd = None
        else:
            os.makedirs(bdir, exist_ok=True)
            log(f"compiling fwdlimit directly from {src}")
            r = subprocess.run(["cc", "-O2", "-o", fwd, src, "-luv", "-lpthread"], capture_output=True,
                               text=True)
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


def start_postgres(args, tmp, runas, env, max_connections=100, tls_dir=None, extra=()):
    """A throwaway cluster: initdb in tmp, a free loopback port and a socket dir.
    tls_dir: ssl=on with the server.crt/server.key made there by make_certs (clients
    that do not ask for TLS are not affected). extra: more -c settings."""
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
           "-c", f"max_connections={max_connections}", "-c", "shared_buffers=128MB", "-c", "fsync=off",
           "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
           "-c", "logging_collector=off", "-c", "log_min_messages=warning"]
    if tls_dir:
        for n in ("server.crt", "server.key"):      # the server checks the key's owner and mode
            dst = os.path.join(tmp, "pg-" + n)
            shutil.copyfile(os.path.join(tls_dir, n), dst)
            os.chmod(dst, 0o600)
            os.chown(dst, runas.uid, runas.gid)
        cmd += ["-c", "ssl=on", "-c", f"ssl_cert_file={tmp}/pg-server.crt",
                "-c", f"ssl_key_file={tmp}/pg-server.key"]
    for kv in extra:
        cmd += ["-c", kv]
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


def write_pgbouncer_ini(tmp, name, port, upstream_host, pg_port, runas, clients=8, extra=""):
    """Session mode, pool sized for the most clients a run uses: every client holds a
    server connection for its whole session."""
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
max_client_conn = {max(100, clients + 20)}
default_pool_size = {max(20, clients)}
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
{extra}""")
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


def client_env():
    """libpq's environment for the clients: plain TCP unless a target asks for TLS."""
    env = dict(os.environ)
    env.setdefault("PGSSLMODE", "disable")      # same startup on every target, no SSLRequest round trip
    env.setdefault("PGGSSENCMODE", "disable")
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    for k in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGSERVICE", "PGOPTIONS"):
        env.pop(k, None)
    env["LC_ALL"] = "C"
    return env



KAFKA_TOPIC = "pgwarden-bench"


def start_kafka(tmp):
    """The broker of the Kafka target, with its topic. (broker, None) or (None, why)."""
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




# --------------------------------------------------------------------------- shared setup

def openssl(cwd, *args):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, capture_output=True)


def make_certs(d):
    """A CA and a server certificate for CN=localhost (RSA-2048), made with the openssl
    CLI exactly as the tests make theirs: ca.crt, server.crt, server.key in d."""
    os.makedirs(d, exist_ok=True)
    openssl(d, "req", "-sha256", "-new", "-x509", "-days", "365", "-nodes", "-subj", "/CN=bench CA",
            "-newkey", "rsa:2048", "-out", "ca.crt", "-keyout", "ca.key")
    openssl(d, "req", "-sha256", "-new", "-nodes", "-subj", "/CN=localhost", "-newkey", "rsa:2048",
            "-out", "server.csr", "-keyout", "server.key")
    openssl(d, "x509", "-req", "-sha256", "-days", "365", "-in", "server.csr", "-CA", "ca.crt",
            "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.crt")
    for n in os.listdir(d):
        os.chmod(os.path.join(d, n), 0o644)      # pgwarden may run as another user; a temp dir


def install_handlers():
    signal.signal(signal.SIGINT, signal.default_int_handler)   # even if started with SIGINT ignored
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    atexit.register(CLEANUP.run)


def pick_runas(args):
    """PostgreSQL and PgBouncer refuse to run as root: as root they run as --run-as."""
    name = None
    if os.geteuid() == 0:
        name = args.run_as or "postgres"
        try:
            pwd.getpwnam(name)
        except KeyError:
            name = "nobody"
        log(f"running as root: postgres and pgbouncer run as '{name}'")
    return RunAs(name)


def check_pg_tools(args, tools=("initdb", "postgres", "pg_isready", "createdb", "pgbench", "psql")):
    for tool in tools:
        if not os.access(os.path.join(args.pg_bindir, tool), os.X_OK):
            raise RuntimeError(f"{args.pg_bindir}/{tool} not found (--pg-bindir / PG_BINDIR)")


def make_tmp(args, runas, prefix="pgwarden-bench-"):
    tmp = tempfile.mkdtemp(prefix=prefix)
    CLEANUP.tmpdir, CLEANUP.keep_tmp = tmp, getattr(args, "keep_tmp", False)
    os.chmod(tmp, 0o755)
    os.chown(tmp, runas.uid, runas.gid)
    return tmp


def createdb(args, port, env, name=DB):
    run_checked([os.path.join(args.pg_bindir, "createdb"), "-h", "127.0.0.1", "-p", str(port),
                 "-U", DBUSER, name], env=env)


def raise_nofile(want):
    """Raises RLIMIT_NOFILE (ulimit -n) for this process and the ones it starts, up to
    want; as root the hard limit too. Returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft
    if hard < want and os.geteuid() == 0:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            pass
    new = min(want, hard) if hard != resource.RLIM_INFINITY else want
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return new


def proc_status_kib(pid, field="VmRSS"):
    """A memory figure of /proc/PID/status in KiB (VmRSS, VmHWM, RssAnon...), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def common_args(p, env=os.environ.get):
    """The options every benchmark script shares."""
    p.add_argument("--build-dir", default=env("BENCH_BUILD_DIR", os.path.join(REPO_DIR, "build")),
                   help="[BENCH_BUILD_DIR] (<repo>/build)")
    p.add_argument("--rebuild", action="store_true", help="run the cmake build even if the binaries exist")
    p.add_argument("--fwdlimit-src", default=env("FWDLIMIT_SRC",
                                                 os.path.join(os.path.dirname(REPO_DIR), "shared", "tools",
                                                              "fwdlimit.c")),
                   help="[FWDLIMIT_SRC] (<repo>/../shared/tools/fwdlimit.c)")
    p.add_argument("--pg-bindir", default=env("PG_BINDIR", "/usr/lib/postgresql/15/bin"), help="[PG_BINDIR]")
    p.add_argument("--pgbouncer", default=env("PGBOUNCER", shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"),
                   help="[PGBOUNCER]")
    p.add_argument("--run-as", default=env("BENCH_RUN_AS"),
                   help="unprivileged user for postgres/pgbouncer when run as root [BENCH_RUN_AS] (postgres)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (cluster, logs) for inspection")


def main_wrapper(main):
    """Runs main(argv) with the cleanup on every way out; exits with its code."""
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
