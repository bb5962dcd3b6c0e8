"""Hostile and unlucky clients, and an upstream that is not there: pgwarden
answers with a protocol error, closes what it must, and keeps serving."""

import socket
import struct
import time

import pytest

import pgwire
from harness import free_port, psql, wait_until


def client_backends(pg):
    return pg.sql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                  " AND pid <> pg_backend_pid()")[0][0]


def backend_exists(pg, pid):
    return bool(pg.sql("SELECT 1 FROM pg_stat_activity WHERE pid = %d" % pid))


def test_unreachable_upstream(start_proxy):
    closed_port = free_port()          # nothing listens there
    p = start_proxy(upstream="127.0.0.1:%d" % closed_port)

    r = psql(p, "-c", "SELECT 1", check=False)
    assert r.returncode != 0
    err = r.stderr.decode()
    assert "FATAL" in err, err
    assert "closed the connection unexpectedly" not in err, err
    assert any(w in err.lower() for w in ("upstream", "could not connect", "connect")), err

    with pgwire.connect(p.tcp_addrs[0]) as c:
        c.send(pgwire.startup_packet("postgres"))
        msgs = c.read_all_until_eof(10)
    assert msgs and msgs[-1][0] == "E", msgs
    fields = pgwire.parse_error_fields(msgs[-1][1])
    assert fields.get("S") == "FATAL" and fields.get("C", "").startswith("08"), fields
    assert fields.get("M"), fields
    assert p.alive()


@pytest.mark.parametrize("length", [3, 0, 2**31 - 1, 2**32 - 1], ids=["len3", "len0", "len2^31-1", "len2^32-1"])
def test_malformed_length_after_startup(pg, proxy, length):
    with proxy.connect() as bystander:
        with pgwire.connect(proxy.tcp_addrs[0]) as c:
            msgs = c.startup("postgres")
            assert msgs[-1][0] == "Z"
            rows, err = c.simple_query("SELECT pg_backend_pid()")
            pid = int(rows[0][0])
            c.send(b"Q" + struct.pack("!I", length) + b"SELECT 1\0")
            msgs = c.read_all_until_eof(10)
        types = [t for t, _ in msgs]
        assert "E" in types, "no ErrorResponse before the close: %r" % types
        fields = pgwire.parse_error_fields(msgs[types.index("E")][1])
        assert fields.get("S") in ("FATAL", "ERROR") and fields.get("M"), fields
        # The upstream session of the broken connection goes away too.
        wait_until(lambda: not backend_exists(pg, pid), 10, what="backend %d to exit" % pid)
        # Another session is unaffected.
        assert bystander.execute("SELECT 'still fine'").fetchone() == ("still fine",)


def padded_startup(total_len):
    """A well-formed StartupMessage of exactly total_len bytes (length word included)."""
    filler_len = total_len - len(pgwire.startup_packet("postgres", application_name=""))
    pkt = pgwire.startup_packet("postgres", application_name="a" * filler_len)
    assert len(pkt) == total_len
    return pkt


def test_oversized_startup_packet_refused(pg, proxy):
    before = client_backends(pg)
    # PostgreSQL's cap: the packet after its length word may be 10,000 bytes.
    with pgwire.connect(proxy.tcp_addrs[0]) as c:
        try:
            c.send(padded_startup(4 + 10_001))
        except (BrokenPipeError, ConnectionResetError):
            pass
        msgs = c.read_all_until_eof(10)
    types = [t for t, _ in msgs]
    assert "R" not in types and "Z" not in types, types
    assert types in ([], ["E"]), types

    # A length word claiming a huge startup packet is refused without waiting for the bytes.
    with pgwire.connect(proxy.tcp_addrs[0]) as c:
        c.send(struct.pack("!II", 1_000_000, pgwire.PROTOCOL_3_0))
        msgs = c.read_all_until_eof(5)
    assert [t for t, _ in msgs] in ([], ["E"])

    # Exactly at the cap is still a valid startup, as it is for PostgreSQL itself.
    at_cap = 4 + 10_000 - len(pgwire.startup_packet("postgres", application_name=""))
    for target in ((pg.host, pg.port), proxy.tcp_addrs[0]):
        with pgwire.connect(target) as c:
            msgs = c.startup("postgres", application_name="b" * at_cap)
            assert msgs[-1][0] == "Z", (target, msgs[-1])
    wait_until(lambda: client_backends(pg) <= before, 10, what="no leaked backends")


def test_clients_vanishing_mid_startup(pg, proxy):
    before = client_backends(pg)
    addr = proxy.tcp_addrs[0]
    full = pgwire.startup_packet("postgres")
    cutoffs = [0, 1, 3, 4, 7, 8, len(full) - 1]
    for _ in range(5):
        for n in cutoffs:
            s = socket.create_connection(addr, timeout=5)
            s.sendall(full[:n])
            s.close()
        # Half an SSLRequest, and an SSLRequest followed by a close.
        s = socket.create_connection(addr, timeout=5)
        s.sendall(pgwire.ssl_request()[:5])
        s.close()
        s = socket.create_connection(addr, timeout=5)
        s.sendall(pgwire.ssl_request())
        s.recv(1)
        s.close()
        # A reset instead of a FIN.
        s = socket.create_connection(addr, timeout=5)
        s.sendall(full[:3])
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        # A complete startup, gone before reading the answer.
        s = socket.create_connection(addr, timeout=5)
        s.sendall(full)
        s.close()
    assert proxy.alive()
    with proxy.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    wait_until(lambda: client_backends(pg) <= before, 10, what="no leaked backends")


def test_garbage_instead_of_startup(proxy):
    # An HTTP request is not a startup packet (its "length" is 'GET ').
    with pgwire.connect(proxy.tcp_addrs[0]) as c:
        try:
            c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        msgs = c.read_all_until_eof(10)
    assert [t for t, _ in msgs] in ([], ["E"])
    # An unknown protocol version gets an error or a NegotiateProtocolVersion,
    # never a hang.
    with pgwire.connect(proxy.tcp_addrs[0]) as c:
        body = struct.pack("!I", (9 << 16) | 0) + b"user\0postgres\0\0"
        c.send(struct.pack("!I", len(body) + 4) + body)
        c.sock.settimeout(10)
        m = c.recv_msg()
        assert m is None or m[0] in ("E", "v"), m


def test_slow_startup_bytes(proxy):
    # A startup packet that arrives one byte at a time still works.
    with pgwire.connect(proxy.tcp_addrs[0]) as c:
        for b in pgwire.startup_packet("postgres", application_name="dribble"):
            c.send(bytes([b]))
            time.sleep(0.002)
        msgs = c.read_until_ready()
        assert msgs[-1][0] == "Z"
        rows, err = c.simple_query("SELECT current_setting('application_name')")
        assert rows == [["dribble"]]


def test_max_message_size_flag(pg, start_proxy):
    p = start_proxy(upstream="127.0.0.1:%d" % pg.port, extra_args=["--max-message-size", "4096"])
    with p.connect() as conn:
        assert conn.execute("SELECT length(%s::text)", ("y" * 2000,)).fetchone() == (2000,)
    with pgwire.connect(p.tcp_addrs[0]) as c:
        assert c.startup("postgres")[-1][0] == "Z"
        c.send(pgwire.query_message("SELECT length('%s')" % ("z" * 9000)))
        msgs = c.read_all_until_eof(10)
    types = [t for t, _ in msgs]
    assert "E" in types and "D" not in types, types
    with p.connect() as conn:
        assert conn.execute("SELECT 'others unaffected'").fetchone() == ("others unaffected",)
