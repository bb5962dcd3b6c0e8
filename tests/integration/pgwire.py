"""A minimal PostgreSQL wire-protocol client for tests that need to send bytes
no well-behaved driver would send (bad lengths, half a startup packet) or to
see exactly what comes back (SSLRequest answers, SQLSTATEs of auth failures).

Only what the tests need: frames, startup, trust/MD5/SCRAM-SHA-256 auth,
simple queries, ErrorResponse fields.
"""

import base64
import hashlib
import hmac
import os
import socket
import struct
import time

PROTOCOL_3_0 = 196608
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102


class ProtocolError(Exception):
    pass


def startup_packet(user, database="postgres", **params):
    body = struct.pack("!I", PROTOCOL_3_0)
    kv = {"user": user, "database": database}
    kv.update(params)
    for k, v in kv.items():
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def ssl_request():
    return struct.pack("!II", 8, SSL_REQUEST_CODE)


def gssenc_request():
    return struct.pack("!II", 8, GSSENC_REQUEST_CODE)


def message(mtype, body=b""):
    return mtype + struct.pack("!I", len(body) + 4) + body


def query_message(sql):
    return message(b"Q", sql.encode() + b"\0")


def parse_error_fields(body):
    """ErrorResponse/NoticeResponse body -> {field code: value}."""
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def connect(addr, timeout=10.0):
    """addr is (host, port) for TCP or a filesystem path for a unix socket."""
    if isinstance(addr, str):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(addr)
    return RawConn(s)


class RawConn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.backend_pid = None
        self.secret_key = None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, n):
        """Reads until the buffer holds n bytes; False at EOF."""
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return False
            self.buf += chunk
        return True

    def recv_exact(self, n):
        if not self._fill(n):
            raise ProtocolError("EOF after %d of %d bytes" % (len(self.buf), n))
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_msg(self):
        """Next backend message as (type char, body bytes), or None at EOF."""
        if not self._fill(5):
            if self.buf:
                raise ProtocolError("EOF inside a message header: %r" % self.buf)
            return None
        mtype = chr(self.buf[0])
        (length,) = struct.unpack("!I", self.buf[1:5])
        if length < 4:
            raise ProtocolError("bad length %d from server" % length)
        if not self._fill(1 + length):
            raise ProtocolError("EOF inside a %r message" % mtype)
        body = self.buf[5:1 + length]
        self.buf = self.buf[1 + length:]
        return mtype, body

    def read_all_until_eof(self, deadline_s=10.0):
        """All messages up to EOF. Raises socket.timeout if the peer keeps
        the connection open past the deadline."""
        msgs = []
        end = time.monotonic() + deadline_s
        while True:
            self.sock.settimeout(max(0.05, end - time.monotonic()))
            m = self.recv_msg()
            if m is None:
                return msgs
            msgs.append(m)
            if time.monotonic() > end:
                raise socket.timeout("connection still open after %.1fs" % deadline_s)

    def read_until_ready(self):
        """Messages up to and including ReadyForQuery. ErrorResponse does not
        stop it (a query error is followed by ReadyForQuery)."""
        msgs = []
        while True:
            m = self.recv_msg()
            if m is None:
                raise ProtocolError("EOF before ReadyForQuery; got %r" % [t for t, _ in msgs])
            msgs.append(m)
            if m[0] == "K":
                self.backend_pid, self.secret_key = struct.unpack("!II", m[1][:8])
            if m[0] == "Z":
                return msgs
            if m[0] == "E" and parse_error_fields(m[1]).get("S") in ("FATAL", "PANIC"):
                # The server ends the connection after a FATAL.
                return msgs

    def startup(self, user, database="postgres", password=None, **params):
        """Runs the startup phase. Returns the list of messages received up to
        ReadyForQuery (or up to the FATAL error)."""
        self.send(startup_packet(user, database, **params))
        msgs = []
        while True:
            m = self.recv_msg()
            if m is None:
                raise ProtocolError("EOF during authentication; got %r" % msgs)
            if m[0] != "R":
                self.buf = message(m[0].encode(), m[1]) + self.buf
                break
            (code,) = struct.unpack("!I", m[1][:4])
            msgs.append(m)
            if code == 0:                       # AuthenticationOk
                break
            if code == 5:                       # MD5Password
                if password is None:
                    raise ProtocolError("server asks for an MD5 password")
                salt = m[1][4:8]
                inner = hashlib.md5((password + user).encode()).hexdigest()
                outer = hashlib.md5(inner.encode() + salt).hexdigest()
                self.send(message(b"p", b"md5" + outer.encode() + b"\0"))
            elif code == 3:                     # CleartextPassword
                if password is None:
                    raise ProtocolError("server asks for a password")
                self.send(message(b"p", password.encode() + b"\0"))
            elif code == 10:                    # SASL
                if password is None:
                    raise ProtocolError("server asks for SASL")
                mechs = [x for x in m[1][4:].split(b"\0") if x]
                if b"SCRAM-SHA-256" not in mechs:
                    raise ProtocolError("no SCRAM-SHA-256 in %r" % mechs)
                msgs.extend(self._scram(password))
                if msgs[-1][0] == "E":
                    return msgs
                # SASLFinal is followed by AuthenticationOk (or an error).
            else:
                raise ProtocolError("unsupported auth request %d" % code)
        msgs.extend(self.read_until_ready())
        return msgs

    def _scram(self, password):
        nonce = base64.b64encode(os.urandom(18)).decode()
        client_first_bare = "n=,r=" + nonce
        client_first = "n,," + client_first_bare
        body = b"SCRAM-SHA-256\0" + struct.pack("!i", len(client_first)) + client_first.encode()
        self.send(message(b"p", body))
        out = []
        m = self.recv_msg()
        if m is None:
            raise ProtocolError("EOF after SASLInitialResponse")
        out.append(m)
        if m[0] == "E":
            return out
        code = struct.unpack("!I", m[1][:4])[0]
        if m[0] != "R" or code != 11:
            raise ProtocolError("expected SASLContinue, got %r" % (m,))
        server_first = m[1][4:].decode()
        attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
        if not attrs["r"].startswith(nonce):
            raise ProtocolError("server nonce does not extend ours")
        salt = base64.b64decode(attrs["s"])
        iterations = int(attrs["i"])
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        final_wo_proof = "c=biws,r=" + attrs["r"]
        auth_message = ",".join([client_first_bare, server_first, final_wo_proof])
        signature = hmac.new(stored_key, auth_message.encode(), hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        final = final_wo_proof + ",p=" + base64.b64encode(proof).decode()
        self.send(message(b"p", final.encode()))
        m = self.recv_msg()
        if m is None:
            raise ProtocolError("EOF after SASLResponse")
        out.append(m)
        return out

    def function_call(self, oid, args=()):
        """A FunctionCall with text arguments (bytes); the answer's messages
        up to ReadyForQuery."""
        body = struct.pack("!IHH", oid, 0, len(args))
        for a in args:
            body += struct.pack("!i", len(a)) + a
        self.send(message(b"F", body + struct.pack("!H", 0)))
        return self.read_until_ready()

    def simple_query(self, sql):
        """Sends a Query; returns (rows as lists of str|None, error fields or None)."""
        self.send(query_message(sql))
        rows, err = [], None
        for mtype, body in self.read_until_ready():
            if mtype == "D":
                (n,) = struct.unpack("!H", body[:2])
                pos, row = 2, []
                for _ in range(n):
                    (ln,) = struct.unpack("!i", body[pos:pos + 4])
                    pos += 4
                    if ln < 0:
                        row.append(None)
                    else:
                        row.append(body[pos:pos + ln].decode())
                        pos += ln
                rows.append(row)
            elif mtype == "E":
                err = parse_error_fields(body)
        return rows, err
