"""TLS on both legs: pgwarden terminates the client's TLS (SSLRequest or
direct), verifies client certificates, enforces the certificate identity,
speaks TLS to a PostgreSQL with ssl=on, and rotates certificates on SIGHUP.

Every certificate is made here with the openssl CLI exactly as the
guidance does (self-signed CAs from `openssl req -x509`, CSRs from
`openssl req -new`, signed with `openssl x509 -req -CA`): a server CA, a
separate client CA, server certificates for "localhost", client
certificates with CN=alice (also from another CA, and an expired one) and
CN=carol@example.com."""

import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time

import psycopg
import pytest

import pgwire
from harness import audit_events, free_port, pg_tool, run, running_cluster, wait_until
from test_event_schema import assert_valid_audit_file

BOB_PASSWORD = "bob scram secret"


# ---------------------------------------------------------------- certificates

def openssl(cwd, *args):
    run(["openssl"] + list(args), cwd=cwd)


def make_ca(d, name, cn):
    openssl(d, "req", "-sha256", "-new", "-x509", "-days", "365", "-nodes", "-subj", "/CN=" + cn,
            "-out", name + ".crt", "-keyout", name + ".key")


def make_cert(d, name, cn, ca, days="365", subj=None):
    openssl(d, "req", "-sha256", "-new", "-nodes", "-subj", subj or "/CN=" + cn,
            "-out", name + ".csr", "-keyout", name + ".key")
    openssl(d, "x509", "-req", "-sha256", "-days", days, "-in", name + ".csr", "-CA", ca + ".crt",
            "-CAkey", ca + ".key", "-CAcreateserial", "-out", name + ".crt")
    os.chmod(d / (name + ".key"), 0o600)   # libpq refuses keys others can read


def cert_serial(path):
    out = subprocess.run(["openssl", "x509", "-in", str(path), "-noout", "-serial"],
                         capture_output=True, check=True, text=True).stdout
    return int(out.strip().split("=", 1)[1], 16)


def cert_sha256(path):
    out = subprocess.run(["openssl", "x509", "-in", str(path), "-noout", "-fingerprint", "-sha256"],
                         capture_output=True, check=True, text=True).stdout
    return out.strip().split("=", 1)[1].replace(":", "").lower()


@pytest.fixture(scope="module")
def certs(run_dir):
    d = run_dir / "certs"
    d.mkdir()
    make_ca(d, "server-ca", "pgwarden test server CA")
    make_ca(d, "client-ca", "pgwarden test client CA")
    make_ca(d, "other-ca", "some other CA")
    make_cert(d, "server", "localhost", "server-ca")
    make_cert(d, "server2", "localhost", "server-ca")
    make_cert(d, "client", "alice", "client-ca")
    make_cert(d, "carol", "carol@example.com", "client-ca")
    make_cert(d, "other", "alice", "other-ca")
    make_cert(d, "expired", "alice", "client-ca", days="-1")
    make_cert(d, "nocn", None, "client-ca", subj="/O=pgwarden tests/OU=no common name")
    return d


@pytest.fixture(scope="module")
def tls_pg(certs):
    """A PostgreSQL 15 with ssl=on (the guidance's settings), roles alice,
    bob (SCRAM password) and carol, and every connection logged."""
    with running_cluster(extra_conf="""
ssl = on
ssl_cert_file = '../server.crt'
ssl_key_file = '../server.key'
ssl_ca_file = '../client-ca.crt'
ssl_prefer_server_ciphers = on
ssl_min_protocol_version = 'TLSv1.3'
log_connections = on
""", extra_hba="host all bob 127.0.0.1/32 scram-sha-256\n",
                         files=[certs / n for n in ("server.crt", "server.key", "client-ca.crt")],
                         setup_sql="CREATE ROLE alice LOGIN; CREATE ROLE carol LOGIN; "
                                   "CREATE ROLE bob LOGIN PASSWORD '%s'"
                                   % BOB_PASSWORD.replace("'", "''")) as cluster:
        yield cluster


# ---------------------------------------------------------------- helpers

def tls_proxy(start_proxy, certs, upstream, *extra, tmp_path, client_ca=True, files=None):
    """pgwarden with TLS on the client leg, auditing to a file."""
    files = files or certs
    audit = tmp_path / ("audit-%d.jsonl" % free_port())
    args = ["--tls-cert", str(files / "server.crt"), "--tls-key", str(files / "server.key"),
            "--audit-file", str(audit)]
    if client_ca:
        args += ["--tls-client-ca", str(certs / "client-ca.crt")]
    p = start_proxy(upstream=upstream, extra_args=args + list(extra))
    p.audit_path = audit
    return p


def dsn(proxy, certs, user="alice", cert="client", **kw):
    parts = {"host": "localhost", "hostaddr": "127.0.0.1", "port": proxy.port, "user": user,
             "dbname": "postgres", "sslmode": "verify-full",
             "sslrootcert": certs / "server-ca.crt"}
    if cert:
        parts.update(sslcert=certs / (cert + ".crt"), sslkey=certs / (cert + ".key"))
    parts.update(kw)
    return " ".join("%s='%s'" % (k, v) for k, v in parts.items())


def connect(proxy, certs, **kw):
    return psycopg.connect(dsn(proxy, certs, **kw), autocommit=True, connect_timeout=10)


def events(path):
    return audit_events(path)


def wait_events(path, pred, n=1, what="events"):
    return wait_until(lambda: (lambda evs: evs if len(evs) >= n else None)(
        [e for e in events(path) if pred(e)]), 10, what=what)


def refused(proxy, certs, **kw):
    """Connects expecting a refusal; returns the error text."""
    with pytest.raises(psycopg.OperationalError) as ei:
        connect(proxy, certs, **kw).close()
    return str(ei.value)


def assert_serves(proxy, certs, user="alice", **kw):
    """Alive, and a brand-new TLS session works end to end."""
    assert proxy.alive(), proxy.log_tail()
    with connect(proxy, certs, user=user, **kw) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (user,)
        assert conn.pgconn.ssl_in_use
    assert proxy.alive(), proxy.log_tail()


def finish(proxy):
    """Stops the proxy cleanly and validates every event it wrote."""
    assert proxy.stop(timeout=20) == 0, proxy.log_tail()
    return assert_valid_audit_file(proxy.audit_path)


def server_connections(cluster):
    return cluster.log_tail(1 << 20).count("connection received:")


def ssl_context(certs, cert=None, alpn=None, max_version=None):
    ctx = ssl.create_default_context(cafile=str(certs / "server-ca.crt"))
    if cert:
        ctx.load_cert_chain(str(certs / (cert + ".crt")), str(certs / (cert + ".key")))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if max_version:
        ctx.maximum_version = max_version
    return ctx


def ssl_request_socket(proxy, certs, **ctx_kw):
    """SSLRequest, 'S', then a TLS socket to pgwarden (verified)."""
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    raw.sendall(pgwire.ssl_request())
    assert raw.recv(1) == b"S"
    return ssl_context(certs, **ctx_kw).wrap_socket(raw, server_hostname="localhost")


# ---------------------------------------------------------------- client leg

def test_psql_verify_full_with_client_cert(tls_pg, certs, start_proxy, tmp_path):
    """The guidance's psql command through pgwarden: verify-full, client
    certificate; TLS 1.3 negotiated; every event of the session carries
    alice's certificate and the TLS version and cipher."""
    p = tls_proxy(start_proxy, certs, "127.0.0.1:%d" % tls_pg.port, "--tls-client-cert", "require",
                  "--tls-user-must-match-cn", tmp_path=tmp_path)
    conninfo = dsn(p, certs, application_name="psql-verify-full")
    r = run([pg_tool("psql"), "-X", "-At", conninfo, "-c", "SELECT current_user", "-c", "SELECT 2"])
    assert r.stdout == b"alice\n2\n"

    with ssl_request_socket(p, certs, cert="client") as s:
        assert s.version() == "TLSv1.3"

    evs = wait_events(p.audit_path, lambda e: e.get("client", {}).get("application") == "psql-verify-full"
                      and e["kind"] == "session_end", what="psql session_end")
    sid = evs[0]["session"]["id"]
    session = [e for e in events(p.audit_path) if e.get("session", {}).get("id") == sid]
    assert [e["kind"] for e in session] == ["session_start", "statement", "statement", "session_end"]
    serial, sha = cert_serial(certs / "client.crt"), cert_sha256(certs / "client.crt")
    for e in session:
        assert e["tls"]["version"] == "TLSv1.3"
        assert e["tls"]["cipher"].startswith("TLS_")
        c = e["user"]["cert"]
        assert c["cn"] == "alice" and c["subject"] == "CN=alice"
        assert c["issuer"] == "CN=pgwarden test client CA"
        assert int(c["serial"], 16) == serial and c["sha256"] == sha
        assert c["not_before"] < c["not_after"]
    assert_serves(p, certs)
    assert finish(p) >= 4


def test_refused_client_certificates(tls_pg, certs, start_proxy, tmp_path):
    """Under --tls-client-cert require: a certificate from another CA, an
    expired one, and none at all are refused, each with an auth_failure
    event, and nothing reaches the server."""
    p = tls_proxy(start_proxy, certs, "127.0.0.1:%d" % tls_pg.port, "--tls-client-cert", "require",
                  tmp_path=tmp_path)
    before = server_connections(tls_pg)
    err = refused(p, certs, cert="other")
    assert "unknown ca" in err or "certificate" in err, err
    err = refused(p, certs, cert="expired")
    assert "expired" in err, err
    err = refused(p, certs, cert=None)
    assert "connection requires a valid client certificate" in err, err

    fails = wait_events(p.audit_path, lambda e: e["kind"] == "auth_failure", n=3, what="3 auth_failure")
    # in the order of the connections: two loop threads hand their batches
    # to the file independently, so the file's order across sessions is not it
    fails.sort(key=lambda e: e["time"])
    msgs = [e["result"]["message"] for e in fails]
    assert all(e["result"]["sqlstate"] == "28000" for e in fails), fails
    assert "unable to get local issuer certificate" in msgs[0], msgs
    assert "certificate has expired" in msgs[1], msgs
    assert msgs[2] == "connection requires a valid client certificate"
    assert fails[2]["user"]["name"] == "alice" and fails[2]["tls"]["version"] == "TLSv1.3"
    assert server_connections(tls_pg) == before
    assert_serves(p, certs)
    finish(p)


def test_optional_client_certificate(tls_pg, certs, start_proxy, tmp_path):
    """optional (the default with a client CA): with or without a
    certificate; events carry the certificate only when there is one."""
    p = tls_proxy(start_proxy, certs, "127.0.0.1:%d" % tls_pg.port, tmp_path=tmp_path)
    with connect(p, certs, cert=None, application_name="no-cert") as conn:
        conn.execute("SELECT 1")
    with connect(p, certs, application_name="with-cert") as conn:
        conn.execute("SELECT 1")
    ends = wait_events(p.audit_path, lambda e: e["kind"] == "session_end", n=2, what="2 session_end")
    by_app = {e["client"]["application"]: e for e in ends}
    assert "cert" not in by_app["no-cert"]["user"] and by_app["no-cert"]["tls"]["version"] == "TLSv1.3"
    assert by_app["with-cert"]["user"]["cert"]["cn"] == "alice"
    assert_serves(p, certs, cert=None)
    finish(p)


def test_cn_must_match_user(tls_pg, certs, start_proxy, tmp_path):
    """CN alice connecting as bob is refused (28000, auth_failure) before a
    byte reaches the server."""
    p = tls_proxy(start_proxy, certs, "127.0.0.1:%d" % tls_pg.port, "--tls-user-must-match-cn",
                  tmp_path=tmp_path)
    before = server_connections(tls_pg)
    err = refused(p, certs, user="bob", password=BOB_PASSWORD)
    assert 'certificate authentication failed for user "bob"' in err, err
    f = wait_events(p.audit_path, lambda e: e["kind"] == "auth_failure", what="auth_failure")[0]
    assert f["result"]["sqlstate"] == "28000" and f["user"]["name"] == "bob"
    assert f["user"]["cert"]["cn"] == "alice"
    time.sleep(0.3)
    assert server_connections(tls_pg) == before, tls_pg.log_tail()
    assert_serves(p, certs)
    finish(p)


def test_certificate_without_cn(tls_pg, certs, start_proxy, tmp_path):
    """A verified certificate without a CN cannot stand for any user, not
    even through a map line that matches everything; its event has the
    subject and no cn."""
    m = tmp_path / "ident.conf"
    m.write_text("certs  /^.*$  alice\n")
    p = tls_proxy(start_proxy, certs, "127.0.0.1:%d" % tls_pg.port, "--tls-ident-map", str(m),
                  tmp_path=tmp_path)
    err = refused(p, certs, cert="nocn")
    assert "no usable common name" in err, err
    f = wait_events(p.audit_path, lambda e: e["kind"] == "auth_failure", what="auth_failure")[0]
    assert "cn" not in f["user"]["cert"]
    assert f["user"]["cert"]["subject"] == "OU=no common name,O=pgwarden tests"
    assert_serves(p, certs)
    finish(p)


def test_ident_map(tls_pg, certs, start_proxy, tmp_path):
    """An identity map in pg_ident.conf format: a plain line maps CN alice
    to bob, a regex line maps CN carol@example.com to carol (\\1); with a
    map, the map alone decides (as PostgreSQL's cert method)."""
    m = tmp_path / "ident.conf"
    m.write_text("# MAPNAME  SYSTEM-USERNAME  PG-USERNAME\n"
                 "certs  alice  alice\n"
                 "certs  alice  bob\n"
                 'certs  "/^(.*)@example\\.com$"  \\1\n')
    p = tls_proxy(start_proxy, certs, "127.0.0.1:%d" % tls_pg.port, "--tls-ident-map", str(m),
                  tmp_path=tmp_path)
    with connect(p, certs, user="bob", password=BOB_PASSWORD) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("bob",)
    with connect(p, certs, user="carol", cert="carol") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("carol",)
    err = refused(p, certs, user="carol")               # alice's certificate
    assert "identity map" in err, err
    err = refused(p, certs, user="alice", cert="carol")
    assert "identity map" in err, err
    assert_serves(p, certs)
    finish(p)


def test_min_protocol_version(tls_pg, certs, start_proxy, tmp_path):
    """--tls-min-version TLSv1.3: a TLS 1.2-only client is refused (an
    auth_failure records it); TLS 1.3 works."""
    p = tls_proxy(start_proxy, certs, "127.0.0.1:%d" % tls_pg.port, "--tls-min-version", "TLSv1.3",
                  tmp_path=tmp_path)
    err = refused(p, certs, ssl_max_protocol_version="TLSv1.2")
    assert "protocol version" in err or "SSL error" in err, err
    f = wait_events(p.audit_path, lambda e: e["kind"] == "auth_failure", what="auth_failure")[0]
    assert "unsupported protocol" in f["result"]["message"], f
    with pytest.raises(ssl.SSLError):
        ssl_request_socket(p, certs, max_version=ssl.TLSVersion.TLSv1_2)
    assert_serves(p, certs)
    finish(p)


def test_plaintext_refused_when_tls_required(tls_pg, certs, start_proxy, tmp_path):
    """--tls-require: sslmode=disable gets a clear FATAL (like hostssl)."""
    p = tls_proxy(start_proxy, certs, "127.0.0.1:%d" % tls_pg.port, "--tls-require",
                  tmp_path=tmp_path)
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect("host=127.0.0.1 port=%d user=alice dbname=postgres sslmode=disable" % p.port,
                        connect_timeout=10)
    assert "pgwarden requires TLS" in str(ei.value), str(ei.value)
    f = wait_events(p.audit_path, lambda e: e["kind"] == "auth_failure", what="auth_failure")[0]
    assert f["result"]["sqlstate"] == "28000" and "tls" not in f
    assert_serves(p, certs)
    finish(p)


def test_tls_require_per_listener(tls_pg, certs, start_proxy, tmp_path):
    """--tls-require-on LISTEN: only that listener refuses plaintext. (Also:
    a restricted group list and TLS 1.2 cipher list still serve TLS 1.3.)"""
    a, b = "127.0.0.1:%d" % free_port(), "127.0.0.1:%d" % free_port()
    p = start_proxy(listen=[a, b], upstream="127.0.0.1:%d" % tls_pg.port, extra_args=[
        "--tls-cert", str(certs / "server.crt"), "--tls-key", str(certs / "server.key"),
        "--tls-require-on", b, "--tls-groups", "P-256", "--tls-ciphers", "ECDHE-RSA-AES256-GCM-SHA384"])
    plain = "host=127.0.0.1 port=%d user=alice dbname=postgres sslmode=disable"
    with psycopg.connect(plain % int(a.split(":")[1]), connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(plain % int(b.split(":")[1]), connect_timeout=10)
    assert "pgwarden requires TLS on " + b in str(ei.value)
    assert_serves(p, certs, cert=None)


def test_plaintext_after_sslrequest_refused(tls_pg, certs, start_proxy, tmp_path):
    """A StartupMessage pipelined behind the SSLRequest (as a man in the
    middle would inject it) is refused before any 'S'."""
    p = tls_proxy(start_proxy, certs, "127.0.0.1:%d" % tls_pg.port, tmp_path=tmp_path)
    with pgwire.connect(("127.0.0.1", p.port)) as c:
        c.send(pgwire.ssl_request() + pgwire.startup_packet("alice"))
        mtype, body = c.recv_msg()
        fields = pgwire.parse_error_fields(body)
        assert mtype == "E" and fields["C"] == "08P01", fields
        assert "unencrypted data after SSL request" in fields["M"]
        assert c.read_all_until_eof(5) == []
    assert_serves(p, certs)
    finish(p)


def test_garbage_during_handshake_harms_no_one(tls_pg, certs, start_proxy, tmp_path):
    """Garbage where a ClientHello belongs, and a handshake cut short, end
    those connections only: an established session goes on."""
    p = tls_proxy(start_proxy, certs, "127.0.0.1:%d" % tls_pg.port, tmp_path=tmp_path)
    with connect(p, certs) as conn:
        for payload in (b"\x16\x03\x01\x00\x05hello" + os.urandom(2000), os.urandom(4096),
                        b"GET / HTTP/1.0\r\n\r\n"):
            with pgwire.connect(("127.0.0.1", p.port)) as c:
                c.send(pgwire.ssl_request())
                assert c.recv_exact(1) == b"S"
                c.send(payload)
                c.sock.settimeout(5)
                try:
                    while c.sock.recv(65536):
                        pass
                except (ConnectionResetError, socket.timeout):
                    pass
        raw = socket.create_connection(("127.0.0.1", p.port), timeout=10)   # direct, then silence
        raw.sendall(b"\x16\x03\x01")
        raw.close()
        assert conn.execute("SELECT 'still here'").fetchone() == ("still here",)
    assert_serves(p, certs)
    finish(p)


def test_direct_tls_with_alpn(tls_pg, certs, start_proxy, tmp_path):
    """PostgreSQL 17's sslnegotiation=direct: a ClientHello as the first
    bytes, ALPN "postgresql"; then the usual startup inside TLS."""
    p = tls_proxy(start_proxy, certs, "127.0.0.1:%d" % tls_pg.port, tmp_path=tmp_path)
    raw = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    s = ssl_context(certs, cert="client", alpn=["postgresql"]).wrap_socket(raw, server_hostname="localhost")
    assert s.selected_alpn_protocol() == "postgresql" and s.version() == "TLSv1.3"
    with pgwire.RawConn(s) as c:
        msgs = c.startup("alice", application_name="direct")
        assert msgs[-1][0] == "Z", msgs
        rows, err = c.simple_query("SELECT current_user")
        assert err is None and rows == [["alice"]]
    ev = wait_events(p.audit_path, lambda e: e["kind"] == "session_start", what="session_start")[0]
    assert ev["client"]["application"] == "direct" and ev["user"]["cert"]["cn"] == "alice"

    # Without ALPN, direct TLS is refused, as PostgreSQL 17 does.
    raw = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    s = ssl_context(certs).wrap_socket(raw, server_hostname="localhost")
    with pgwire.RawConn(s) as c:
        mtype, body = c.recv_msg()
        assert mtype == "E" and "ALPN" in pgwire.parse_error_fields(body)["M"]
    # Another protocol in ALPN: the handshake fails.
    raw = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    with pytest.raises(ssl.SSLError):
        ssl_context(certs, alpn=["http/1.1"]).wrap_socket(raw, server_hostname="localhost")
    raw.close()
    assert_serves(p, certs)
    finish(p)


def test_bulk_both_ways_over_tls(tls_pg, certs, start_proxy, tmp_path):
    """Large results and a large COPY IN through TLS on both legs: reads
    paused by backpressure resume with what was already decrypted, and
    every byte arrives (checked by length and md5 on both sides)."""
    p = tls_proxy(start_proxy, certs, "localhost:%d" % tls_pg.port, *upstream_args(certs),
                  tmp_path=tmp_path)
    with connect(p, certs) as conn:
        rows = conn.execute("SELECT i, repeat(md5(i::text), 30000) FROM generate_series(1, 40) i").fetchall()
        assert len(rows) == 40 and all(len(r[1]) == 960000 for r in rows)
        conn.execute("CREATE TEMP TABLE t (line text)")
        lines = [("%06d " % i) + "y" * 2000 for i in range(8000)]
        with conn.cursor().copy("COPY t FROM STDIN") as cp:
            for line in lines:
                cp.write_row((line,))
        import hashlib
        want = hashlib.md5("".join(lines).encode()).hexdigest()
        got = conn.execute("SELECT count(*), md5(string_agg(line, '' ORDER BY line)) FROM t").fetchone()
        assert got == (8000, want)
    # A client that reads nothing for a while: the server leg is paused
    # with records still undecrypted in its TLS buffers, then resumes.
    s = ssl_request_socket(p, certs, cert="client")
    with pgwire.RawConn(s) as c:
        assert c.startup("alice")[-1][0] == "Z"
        c.send(pgwire.query_message("SELECT repeat('z', 100000) FROM generate_series(1, 300)"))
        time.sleep(1.5)
        rows = 0
        while True:
            mtype, body = c.recv_msg()
            if mtype == "D":
                rows += 1
                assert len(body) == 2 + 4 + 100000
            elif mtype == "Z":
                break
        assert rows == 300
    assert_serves(p, certs)
    finish(p)


# ---------------------------------------------------------------- server leg

def upstream_args(certs, mode="verify-full", ca="server-ca.crt"):
    return ["--upstream-sslmode", mode, "--upstream-ca", str(certs / ca)]


def test_upstream_verify_full(tls_pg, certs, start_proxy, tmp_path):
    """pgwarden to a PostgreSQL with ssl=on under verify-full: the server
    sees a TLS connection; the client leg is TLS too."""
    p = tls_proxy(start_proxy, certs, "localhost:%d" % tls_pg.port, *upstream_args(certs),
                  tmp_path=tmp_path)
    with connect(p, certs) as conn:
        row = conn.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row == (True, "TLSv1.3")
    # Plaintext clients may still use a TLS upstream.
    with psycopg.connect("host=127.0.0.1 port=%d user=alice dbname=postgres sslmode=disable" % p.port,
                         connect_timeout=10) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
    assert_serves(p, certs)
    finish(p)


@pytest.mark.parametrize("mode,ca,host,why", [
    ("verify-full", "client-ca.crt", "localhost", "certificate verify failed"),
    ("verify-full", "server-ca.crt", "127.0.0.1", "certificate verify failed"),
    ("verify-ca", "other-ca.crt", "localhost", "certificate verify failed"),
])
def test_upstream_wrong_ca_refused(tls_pg, certs, start_proxy, tmp_path, mode, ca, host, why):
    """A server certificate that does not verify (wrong CA, or a name that
    does not match under verify-full): the client gets a clear FATAL."""
    p = tls_proxy(start_proxy, certs, "%s:%d" % (host, tls_pg.port), *upstream_args(certs, mode, ca),
                  tmp_path=tmp_path)
    t0 = time.monotonic()
    err = refused(p, certs)
    assert time.monotonic() - t0 < 5
    assert "could not establish TLS with the upstream server" in err and why in err, err
    # Still serving: the next session gets the same clear answer.
    assert why in refused(p, certs)
    assert p.alive()
    finish(p)


def test_upstream_verify_ca_and_require(tls_pg, certs, start_proxy, tmp_path):
    """verify-ca accepts the right CA whatever the host name; require does
    not verify at all."""
    for args in (upstream_args(certs, "verify-ca"), ["--upstream-sslmode", "require"]):
        p = tls_proxy(start_proxy, certs, "127.0.0.1:%d" % tls_pg.port, *args, tmp_path=tmp_path)
        assert_serves(p, certs)
        finish(p)


def test_upstream_client_certificate(tls_pg, certs, start_proxy, tmp_path):
    """pgwarden presents its own client certificate to the server."""
    p = tls_proxy(start_proxy, certs, "localhost:%d" % tls_pg.port, *upstream_args(certs),
                  "--upstream-cert", str(certs / "client.crt"), "--upstream-key", str(certs / "client.key"),
                  tmp_path=tmp_path)
    with connect(p, certs) as conn:
        row = conn.execute("SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row == ("/CN=alice",)
    assert_serves(p, certs)
    finish(p)


def test_scram_channel_binding_plain_upstream(tls_pg, certs, start_proxy, tmp_path):
    """bob's SCRAM with the client leg over TLS and a plaintext server leg:
    channel_binding=prefer authenticates with plain SCRAM, =require fails
    at once with a clear error."""
    p = tls_proxy(start_proxy, certs, "127.0.0.1:%d" % tls_pg.port, tmp_path=tmp_path)
    with connect(p, certs, user="bob", password=BOB_PASSWORD, channel_binding="prefer") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("bob",)
    t0 = time.monotonic()
    err = refused(p, certs, user="bob", password=BOB_PASSWORD, channel_binding="require")
    assert time.monotonic() - t0 < 5
    assert "channel binding" in err, err
    assert_serves(p, certs)
    finish(p)


def test_scram_channel_binding_tls_upstream(tls_pg, certs, start_proxy, tmp_path):
    """TLS on both legs: the server offers SCRAM-SHA-256-PLUS and pgwarden
    removes it from what the client sees (the rewritten message is
    checked raw). A client that could bind (channel_binding=prefer) is then
    one the server must refuse as a downgrade: pgwarden says so at once,
    with the remedy; channel_binding=disable works; =require fails fast."""
    p = tls_proxy(start_proxy, certs, "localhost:%d" % tls_pg.port, *upstream_args(certs),
                  tmp_path=tmp_path)
    s = ssl_request_socket(p, certs, cert="client")
    with pgwire.RawConn(s) as c:
        c.send(pgwire.startup_packet("bob"))
        mtype, body = c.recv_msg()
        assert mtype == "R" and struct.unpack("!I", body[:4])[0] == 10
        assert body[4:] == b"SCRAM-SHA-256\0\0"
    with connect(p, certs, user="bob", password=BOB_PASSWORD, channel_binding="disable") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("bob",)
    for mode, want in (("prefer", "channel_binding=disable"), ("require", "channel binding")):
        t0 = time.monotonic()
        err = refused(p, certs, user="bob", password=BOB_PASSWORD, channel_binding=mode)
        assert time.monotonic() - t0 < 5
        assert want in err, err
    f = wait_events(p.audit_path, lambda e: e["kind"] == "auth_failure", what="auth_failure")[0]
    assert f["result"]["sqlstate"] == "28000" and "channel binding" in f["result"]["message"]
    assert_serves(p, certs)
    finish(p)


# ---------------------------------------------------------------- rotation

def test_sighup_rotates_certificates(tls_pg, certs, start_proxy, tmp_path):
    """SIGHUP with a new server certificate: a new connection gets the new
    serial, an established session keeps working; a broken file then keeps
    the current certificate in service."""
    live = tmp_path / "live"
    live.mkdir()
    for n in ("server.crt", "server.key"):
        shutil.copy(certs / n, live / n)
    p = tls_proxy(start_proxy, certs, "127.0.0.1:%d" % tls_pg.port, files=live, tmp_path=tmp_path)

    def served_serial():
        with ssl_request_socket(p, certs) as s:
            return int(s.getpeercert()["serialNumber"], 16)

    old = connect(p, certs)
    assert served_serial() == cert_serial(certs / "server.crt")
    for n in ("crt", "key"):
        shutil.copy(certs / ("server2." + n), live / ("server." + n))
    p.signal(signal.SIGHUP)
    wait_until(lambda: "certificates reloaded" in p.log_tail(), 10, what="reload logged")
    assert served_serial() == cert_serial(certs / "server2.crt")
    assert old.execute("SELECT 'old session'").fetchone() == ("old session",)

    (live / "server.key").write_text("not a key\n")
    p.signal(signal.SIGHUP)
    wait_until(lambda: "keeping the current certificates" in p.log_tail(), 10, what="reload error logged")
    assert served_serial() == cert_serial(certs / "server2.crt")
    assert old.execute("SELECT 'still old'").fetchone() == ("still old",)
    old.close()
    assert_serves(p, certs)
    finish(p)


def test_tls_flags_checked(certs, tls_pg):
    """Inconsistent TLS flags are refused at start with a clear message."""
    from harness import PGW_BINARY
    base = [str(PGW_BINARY), "--listen", "127.0.0.1:%d" % free_port(), "--upstream",
            "127.0.0.1:%d" % tls_pg.port]
    cases = [
        (["--tls-cert", str(certs / "server.crt")], "go together"),
        (["--tls-client-ca", str(certs / "client-ca.crt")], "need --tls-cert"),
        (["--tls-cert", str(certs / "server.crt"), "--tls-key", str(certs / "server.key"),
          "--tls-client-cert", "require"], "needs --tls-client-ca"),
        (["--upstream-sslmode", "verify-full"], "needs --upstream-ca"),
        (["--upstream-sslmode", "bogus"], "not one of"),
        (["--tls-cert", str(certs / "server.crt"), "--tls-key", str(certs / "client.key")],
         "--tls-key"),
        (["--tls-cert", str(certs / "server.crt"), "--tls-key", str(certs / "server.key"),
          "--tls-groups", "no-such-group"], "--tls-groups"),
        (["--tls-cert", str(certs / "server.crt"), "--tls-key", str(certs / "server.key"),
          "--tls-require-on", "127.0.0.1:1"], "no such --listen"),
    ]
    for args, want in cases:
        r = subprocess.run(base + args, capture_output=True, text=True, timeout=10)
        assert r.returncode != 0 and want in r.stderr, (args, r.stderr)


def test_tls_metrics(tls_pg, certs, start_proxy, tmp_path):
    """/metrics: seconds until each configured certificate expires, and the
    client leg's handshakes by result."""
    import urllib.request
    mport = free_port()
    p = tls_proxy(start_proxy, certs, "localhost:%d" % tls_pg.port, *upstream_args(certs),
                  "--upstream-cert", str(certs / "client.crt"), "--upstream-key", str(certs / "client.key"),
                  "--tls-client-cert", "require", "--metrics-listen", "127.0.0.1:%d" % mport,
                  tmp_path=tmp_path)
    assert_serves(p, certs)
    refused(p, certs, cert="other")
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=10).read().decode()
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    for which in ("tls-cert", "upstream-cert"):
        left = float(values['pgwarden_tls_certificate_expiry_seconds{certificate="%s"}' % which])
        assert 363 * 86400 < left <= 365 * 86400, (which, left)
    assert float(values['pgwarden_tls_handshakes_total{result="ok"}']) >= 1
    assert float(values['pgwarden_tls_handshakes_total{result="failed"}']) >= 1
    assert float(values['pgwarden_client_connections_refused_total{reason="authentication"}']) >= 1
    assert_serves(p, certs)
    finish(p)


def test_cancel_reaches_a_tls_session(tls_pg, certs, start_proxy, tmp_path):
    """A CancelRequest (sent by libpq in plaintext on its own connection)
    reaches a session whose client leg is TLS, even where plaintext
    sessions are refused: it is not a session."""
    p = tls_proxy(start_proxy, certs, "localhost:%d" % tls_pg.port, *upstream_args(certs),
                  "--tls-require", "--tls-user-must-match-cn", tmp_path=tmp_path)
    with connect(p, certs) as conn:
        import threading
        threading.Timer(0.5, conn.cancel).start()
        t0 = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(20)")
        assert time.monotonic() - t0 < 10
        assert conn.execute("SELECT 'after cancel'").fetchone() == ("after cancel",)
    assert_serves(p, certs)
    finish(p)


def test_stalled_handshake_ends_at_startup_timeout(tls_pg, certs, start_proxy, tmp_path):
    """A client that asks for TLS and then says nothing (or stops in the
    middle of the handshake) holds its session only until the startup
    timeout; others are served meanwhile."""
    p = tls_proxy(start_proxy, certs, "127.0.0.1:%d" % tls_pg.port, "--startup-timeout", "1",
                  tmp_path=tmp_path)
    silent = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    silent.sendall(pgwire.ssl_request())
    assert silent.recv(1) == b"S"
    partial = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    partial.sendall(b"\x16\x03\x01\x02\x00\x01")          # the start of a ClientHello
    assert_serves(p, certs)
    t0 = time.monotonic()
    for s in (silent, partial):
        s.settimeout(10)
        try:
            while s.recv(4096):
                pass
        except ConnectionResetError:
            pass
        s.close()
    assert time.monotonic() - t0 < 5
    wait_until(lambda: p.log_tail().count("did not complete within 1 s") >= 2, 5, what="two timeouts logged")
    assert_serves(p, certs)
    finish(p)
