"""Authentication passes through pgwarden untouched, and without TLS
configured it answers SSLRequest/GSSENCRequest with 'N' itself."""

import socket
import struct

import psycopg
import pytest

import pgwire
from harness import (MD5_PASSWORD, MD5_USER, SCRAM_PASSWORD, SCRAM_USER, client_env, pg_tool,
                     psql, run)


@pytest.mark.parametrize("user,password", [(SCRAM_USER, SCRAM_PASSWORD), (MD5_USER, MD5_PASSWORD)])
def test_password_auth_psycopg(proxy, user, password):
    with proxy.connect(user=user, password=password) as conn:
        assert conn.execute("SELECT current_user, session_user").fetchone() == (user, user)
    with pytest.raises(psycopg.OperationalError) as ei:
        proxy.connect(user=user, password=password + "-wrong")
    assert "password authentication failed" in str(ei.value)


def test_scram_sqlstates_raw(proxy):
    """Our own SCRAM-SHA-256 client through the proxy: the right password
    reaches ReadyForQuery, a wrong one gets ErrorResponse 28P01."""
    with pgwire.connect(proxy.tcp_addrs[0]) as c:
        msgs = c.startup(SCRAM_USER, password=SCRAM_PASSWORD)
        types = [t for t, _ in msgs]
        assert types[0] == "R" and struct.unpack("!I", msgs[0][1][:4])[0] == 10  # SASL
        assert "K" in types and types[-1] == "Z"
        rows, err = c.simple_query("SELECT current_user")
        assert err is None and rows == [[SCRAM_USER]]

    with pgwire.connect(proxy.tcp_addrs[0]) as c:
        msgs = c.startup(SCRAM_USER, password="not the password")
        assert msgs[-1][0] == "E", msgs
        fields = pgwire.parse_error_fields(msgs[-1][1])
        assert fields["C"] == "28P01" and fields["S"] == "FATAL"
        assert c.read_all_until_eof(5) == []

    with pgwire.connect(proxy.tcp_addrs[0]) as c:
        msgs = c.startup(MD5_USER, password="not the password")
        fields = pgwire.parse_error_fields(msgs[-1][1])
        assert msgs[-1][0] == "E" and fields["C"] == "28P01"


def test_psql_password_via_env(proxy):
    r = psql(proxy, "-At", "-c", "SELECT current_user", user=SCRAM_USER,
             env=client_env(PGPASSWORD=SCRAM_PASSWORD))
    assert r.stdout == SCRAM_USER.encode() + b"\n"


def test_sslmode_prefer_works_and_require_fails(proxy):
    base = "host=%s port=%d user=postgres dbname=postgres" % (proxy.host, proxy.port)
    r = run([pg_tool("psql"), "-X", "-At", base + " sslmode=prefer", "-c",
             "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"])
    assert r.stdout == b"f\n"
    r = run([pg_tool("psql"), "-X", "-At", base + " sslmode=require", "-c", "SELECT 1"], check=False)
    assert r.returncode != 0
    assert b"server does not support SSL" in r.stderr, r.stderr.decode()
    # psycopg (its own libpq build) agrees.
    with psycopg.connect(base + " sslmode=prefer", connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.info.pgconn.ssl_in_use is False
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(base + " sslmode=require", connect_timeout=10)
    assert "SSL" in str(ei.value)


@pytest.mark.parametrize("request_bytes", [pgwire.ssl_request(), pgwire.gssenc_request()],
                         ids=["SSLRequest", "GSSENCRequest"])
def test_encryption_request_answered_n_raw(proxy, request_bytes):
    with pgwire.connect(proxy.tcp_addrs[0]) as c:
        c.send(request_bytes)
        assert c.recv_exact(1) == b"N"
        # Exactly one byte: nothing else follows until we speak.
        c.sock.settimeout(0.3)
        with pytest.raises(socket.timeout):
            c.sock.recv(1)
        c.sock.settimeout(10)
        # The same connection then carries a normal startup.
        msgs = c.startup("postgres")
        assert msgs[-1][0] == "Z"
        rows, err = c.simple_query("SELECT 'plain after N'")
        assert err is None and rows == [["plain after N"]]
