"""Hostile bytes from either side: malformed frames, odd protocol versions
and request codes, startup packets built to hurt, a CancelRequest with a
wrong key, a Bind whose count lies, and a backend that talks garbage. Each
test ends with the proxy serving a normal session (the autouse fixture of
conftest.py checks the shared proxy after every test), and the shared
proxy's audit file is checked against the schema at the end of the module."""

import socket
import struct
import threading
import time

import pytest

import pgwire


def refused_with(addr, payload, timeout=10):
    """Sends payload on a fresh connection; returns the SQLSTATE of the
    ErrorResponse that came back before the close ('' if none came)."""
    with pgwire.connect(addr, timeout=timeout) as c:
        c.send(payload)
        try:
            while True:
                m = c.recv_msg()
                if m is None:
                    return ""
                if m[0] == "E":
                    return pgwire.parse_error_fields(m[1]).get("C", "?")
        except (OSError, pgwire.ProtocolError):
            return ""


def versioned_startup(major, minor, user="postgres"):
    body = struct.pack("!HH", major, minor) + b"user\0" + user.encode() + b"\0database\0postgres\0\0"
    return struct.pack("!I", len(body) + 4) + body


@pytest.mark.parametrize("version", [(2, 0), (4, 0)], ids=["2.0", "4.0"])
def test_unsupported_protocol_versions(proxy, version):
    assert refused_with(proxy.tcp_addrs[0], versioned_startup(*version)) == "0A000"


@pytest.mark.parametrize("minor", [1, 2])
def test_newer_minor_versions_are_negotiated(proxy, minor):
    """3.1 and 3.2 go to the server, which answers NegotiateProtocolVersion
    and goes on in 3.0, exactly as without the proxy."""
    with pgwire.connect(proxy.tcp_addrs[0]) as c:
        c.send(versioned_startup(3, minor))
        kinds = []
        while True:
            m = c.recv_msg()
            assert m is not None, "closed during startup"
            kinds.append(m[0])
            if m[0] in ("Z", "E"):
                break
        assert kinds[0] == "v" and kinds[-1] == "Z", kinds
        c.send(pgwire.query_message("SELECT 1"))
        assert "Z" in [k for k, _ in c.read_until_ready()]


@pytest.mark.parametrize("code", [(1234, 5677), (1234, 5681), (1234, 0), (1234, 65535)],
                         ids=["1234.5677", "1234.5681", "1234.0", "1234.65535"])
def test_unknown_request_codes(proxy, code):
    assert refused_with(proxy.tcp_addrs[0], struct.pack("!IHH", 8, *code)) == "0A000"


def startup_raw(params_blob):
    body = struct.pack("!I", pgwire.PROTOCOL_3_0) + params_blob
    return struct.pack("!I", len(body) + 4) + body


def test_startup_packets_built_to_hurt(proxy):
    addr = proxy.tcp_addrs[0]
    # No user at all.
    assert refused_with(addr, startup_raw(b"database\0postgres\0\0")) == "28000"
    # Strings that never end: a name, then a value.
    assert refused_with(addr, startup_raw(b"user\0postgres")) == "08P01"
    assert refused_with(addr, startup_raw(b"user")) == "08P01"
    # An odd number of strings.
    assert refused_with(addr, startup_raw(b"user\0postgres\0database\0\0")) in ("08P01", "3D000")
    # 1,000 parameters (under the 10,000-byte cap): the server decides about
    # the options it does not know; pgwarden neither crashes nor truncates.
    many = b"user\0postgres\0" + b"".join(b"x%d\0%d\0" % (i, i) for i in range(1000)) + b"\0"
    assert len(many) < 10000
    code = refused_with(addr, startup_raw(many))
    assert code in ("42704", "08P01", ""), code
    # Over 10,000 bytes: refused by pgwarden as PostgreSQL does.
    big = b"user\0postgres\0" + b"options\0" + b"a" * 11000 + b"\0\0"
    assert refused_with(addr, startup_raw(big)) == "08P01"


def logged_in(addr):
    c = pgwire.connect(addr)
    c.startup("postgres")
    return c


def test_query_of_length_4(proxy):
    """A Query with no text at all is a well-formed frame: it goes to the
    server, which decides (PostgreSQL 15 waits for more); pgwarden's
    tracker skips what it cannot read, and the session closes cleanly."""
    with logged_in(proxy.tcp_addrs[0]) as c:
        c.send(b"Q" + struct.pack("!i", 4))
        c.sock.settimeout(1)
        try:
            c.recv_msg()
        except OSError:
            pass


@pytest.mark.parametrize("length", [-1, -2**31], ids=["negative", "min-int"])
def test_lengths_after_startup(proxy, length):
    addr = proxy.tcp_addrs[0]
    with logged_in(addr) as c:
        c.send(b"Q" + struct.pack("!i", length))
        try:
            msgs = c.read_all_until_eof(deadline_s=5)
        except OSError:
            msgs = []
        codes = [pgwire.parse_error_fields(b).get("C") for k, b in msgs if k == "E"]
        assert "08P01" in codes, codes


def test_a_malformed_message_keeps_its_whole_read_from_the_server(proxy):
    """A good Query and a malformed frame in one read of an established
    session: pgwarden refuses the read before anything of it reaches the
    server, so the good Query is never answered; the error is pgwarden's."""
    addr = proxy.tcp_addrs[0]
    with logged_in(addr) as c:
        c.send(pgwire.query_message("SELECT 4242 AS never_answered") + b"Q" + struct.pack("!i", -1))
        try:
            msgs = c.read_all_until_eof(deadline_s=5)
        except OSError:
            msgs = []
        kinds = [k for k, _ in msgs]
        assert "D" not in kinds and "C" not in kinds, kinds
        errors = [pgwire.parse_error_fields(b) for k, b in msgs if k == "E"]
        assert [e.get("C") for e in errors] == ["08P01"], errors
        assert "invalid message from client" in errors[0].get("M", ""), errors


def test_unknown_message_types(proxy):
    addr = proxy.tcp_addrs[0]
    for mtype in (b"z", b"\x00", b"\xff", b"A"):
        with logged_in(addr) as c:
            c.send(pgwire.message(mtype, b"junk"))
            msgs = c.read_all_until_eof(deadline_s=5)
            codes = [pgwire.parse_error_fields(b).get("C") for k, b in msgs if k == "E"]
            assert "08P01" in codes, (mtype, codes)


def test_truncated_messages_then_close(proxy):
    addr = proxy.tcp_addrs[0]
    for cut in (1, 3, 5, 20):
        c = logged_in(addr)
        c.send(pgwire.query_message("SELECT 'a fairly long statement text'")[:cut])
        c.close()
    c = pgwire.connect(addr)
    c.send(pgwire.startup_packet("postgres")[:9])
    c.close()


def test_cancel_request_with_a_wrong_key(proxy):
    addr = proxy.tcp_addrs[0]
    with logged_in(addr) as c:
        c.send(pgwire.query_message("SELECT pg_sleep(1.5)"))
        time.sleep(0.2)
        with pgwire.connect(addr) as k:
            k.send(struct.pack("!IIII", 16, pgwire.CANCEL_REQUEST_CODE, c.backend_pid or 1,
                               (c.secret_key or 0) ^ 0x5A5A5A5A))
            assert k.recv_msg() is None          # closed, nothing said: as PostgreSQL
        msgs = c.read_until_ready()
        assert not any(k == "E" for k, _ in msgs), "the wrong key cancelled the query"


def test_bind_whose_count_disagrees_with_its_data(proxy):
    addr = proxy.tcp_addrs[0]
    with logged_in(addr) as c:
        c.send(pgwire.message(b"P", b"s1\0SELECT $1::int\0\0\0"))
        # Says 3 parameters, carries one.
        bind = b"\0s1\0" + struct.pack("!H", 0) + struct.pack("!H", 3) + struct.pack("!i", 1) + b"7"
        bind += struct.pack("!H", 0)
        c.send(pgwire.message(b"B", bind) + pgwire.message(b"E", b"\0" + struct.pack("!I", 0))
               + pgwire.message(b"S"))
        msgs = c.read_until_ready()
        codes = [pgwire.parse_error_fields(b).get("C") for k, b in msgs if k == "E"]
        assert codes == ["08P01"], codes          # the server's own refusal, passed on
        # The session goes on.
        c.send(pgwire.query_message("SELECT 1"))
        assert [k for k, _ in c.read_until_ready()][-2:] == ["C", "Z"]


# ---- a backend that talks garbage ------------------------------------------

def _be(kind, body=b""):
    return kind + struct.pack("!I", len(body) + 4) + body


NORMAL_STARTUP = (_be(b"R", struct.pack("!I", 0)) + _be(b"S", b"server_version\x0015.0\0")
                  + _be(b"K", struct.pack("!II", 4242, 99)) + _be(b"Z", b"I"))
GARBAGE = {
    "garbage-len": NORMAL_STARTUP + b"T\x00\x00\x00\x02",                # length 2
    "garbage-huge": NORMAL_STARTUP + b"D\x7f\xff\xff\xff" + b"x" * 100,  # length 2^31-1, then close
    "garbage-auth": _be(b"R", struct.pack("!I", 12345)) + b"\x00" * 40,    # unknown auth, then zeros
    "garbage-noise": bytes(range(256)) * 8,
}


class FakeBackend:
    """Answers each connection by the startup packet's user: 'normal' gets a
    working minimal session (SELECT 1 answered), the GARBAGE users their
    bytes."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            conn.settimeout(10)
            try:
                n = struct.unpack("!I", conn.recv(4))[0]
                body = b""
                while len(body) < n - 4:
                    body += conn.recv(n - 4 - len(body))
                parts = body[4:].split(b"\0")
                user = parts[parts.index(b"user") + 1].decode()
                if user in GARBAGE:
                    conn.sendall(GARBAGE[user])
                    return
                conn.sendall(NORMAL_STARTUP)
                while True:
                    head = conn.recv(5)
                    if len(head) < 5 or head[0:1] == b"X":
                        return
                    rest = struct.unpack("!I", head[1:5])[0] - 4
                    while rest > 0:
                        rest -= len(conn.recv(rest))
                    conn.sendall(_be(b"T", struct.pack("!H", 1) + b"c\0" + struct.pack("!IHIhih", 0, 0, 23, 4, -1, 0))
                                 + _be(b"D", struct.pack("!Hi", 1, 1) + b"1") + _be(b"C", b"SELECT 1\0")
                                 + _be(b"Z", b"I"))
            except (OSError, ValueError, struct.error):
                return

    def close(self):
        self.stop = True
        self.sock.close()


def test_garbage_from_the_server(start_proxy):
    fake = FakeBackend()
    try:
        p = start_proxy(upstream="127.0.0.1:%d" % fake.port, extra_args=["--audit-file", "-"])
        addr = p.tcp_addrs[0]
        for user in GARBAGE:
            with pgwire.connect(addr) as c:
                c.send(pgwire.startup_packet(user))
                try:
                    c.read_all_until_eof(deadline_s=5)
                except (OSError, pgwire.ProtocolError):
                    pass                 # garbage may reach the client; the session ends
            assert p.alive(), p.log_tail()
        # The proxy goes on serving the sessions the backend serves properly.
        with pgwire.connect(addr) as c:
            c.startup("normal")
            c.send(pgwire.query_message("SELECT 1"))
            msgs = c.read_until_ready()
            assert [k for k, _ in msgs][-2:] == ["C", "Z"]
        assert "invalid message from server" in p.log_tail()
    finally:
        fake.close()
