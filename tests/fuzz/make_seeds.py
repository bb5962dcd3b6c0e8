#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets written after the framer ones
(tests/fuzz/corpus/fuzz_{startup,analysis,event_encode,http,config_args,session}).
Run from the repository root; it rewrites only the seeds it names (regression
seeds added by hand, named crash-*, stay). The seeds are checked in: this is
how they were made, and how to make more of the same kind."""
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def cstr(s):
    return (s.encode() if isinstance(s, str) else s) + b"\0"


def startup(params, version=196608):
    body = b"".join(cstr(k) + cstr(v) for k, v in params) + b"\0"
    return struct.pack("!II", 8 + len(body), version) + body


def msg(t, body=b""):
    return t.encode() + struct.pack("!I", 4 + len(body)) + body


SSL = struct.pack("!II", 8, 80877103)
GSS = struct.pack("!II", 8, 80877104)
CANCEL = struct.pack("!IIII", 16, 80877102, 12345, 0x12345678)
PSQL = startup([("user", "alice"), ("database", "bench"), ("application_name", "psql"),
                ("client_encoding", "UTF8")])
PGBENCH = startup([("user", "bench"), ("database", "bench"), ("application_name", "pgbench")])

# ---------------------------------------------------------------- startup
put("fuzz_startup", "psql", PSQL)
put("fuzz_startup", "gss_ssl_startup", GSS + SSL + PSQL)
put("fuzz_startup", "cancel", CANCEL)
put("fuzz_startup", "cancel_long", struct.pack("!IIIII", 20, 80877102, 1, 2, 3))
put("fuzz_startup", "v2", startup([("user", "a")], 2 << 16))
put("fuzz_startup", "v3_2", startup([("user", "a"), ("_pq_.x", "1")], 196610))
put("fuzz_startup", "v4", startup([("user", "a")], 4 << 16))
put("fuzz_startup", "odd_codes", struct.pack("!II", 8, 80877101) + struct.pack("!II", 8, 80877105))
put("fuzz_startup", "no_user", startup([("database", "x")]))
put("fuzz_startup", "empty_user", startup([("user", "")]))
put("fuzz_startup", "repeated_user", startup([("user", "a"), ("user", "b"), ("options", "-c x=y"),
                                              ("replication", "database")]))
put("fuzz_startup", "unterminated", struct.pack("!II", 8 + 9, 196608) + b"user\0bob\0x")
put("fuzz_startup", "many_params",
    startup([("user", "u")] + [("p%d" % i, "v%d" % i) for i in range(1000)])[:9000])
put("fuzz_startup", "too_long", startup([("user", "u"), ("x", "y" * 10100)]))
put("fuzz_startup", "tiny", struct.pack("!I", 4) + b"\0\0\0\0")

# ---------------------------------------------------------------- analysis
SQL = {
    "pgbench_select": "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;",
    "pgbench_tpcb": "BEGIN;UPDATE pgbench_accounts SET abalance = abalance + -4001 WHERE aid = 3;"
                    "SELECT abalance FROM pgbench_accounts WHERE aid = 3;"
                    "UPDATE pgbench_tellers SET tbalance = tbalance + -4001 WHERE tid = 7;"
                    "UPDATE pgbench_branches SET bbalance = bbalance + -4001 WHERE bid = 1;"
                    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
                    "VALUES (7, 1, 3, -4001, CURRENT_TIMESTAMP);END;",
    "pgbench_prepared": "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    "psql_describe": "SELECT n.nspname as \"Schema\", c.relname as \"Name\" FROM pg_catalog.pg_class c "
                     "LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                     "WHERE c.relkind IN ('r','p','') ORDER BY 1,2;",
    "password": "CREATE ROLE bob LOGIN PASSWORD 'hunter2'; ALTER ROLE bob PASSWORD 'x''y'",
    "user_mapping": "CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'b', password 'secret')",
    "dollar": "DO $body$ BEGIN RAISE NOTICE 'x;y'; END $body$; SELECT $$a;b$$, $q$ $$ $q$",
    "comments": "/* a ; /* nested ' */ */ SELECT 1 -- ; ' \n; SELECT 'it''s' /* ' */",
    "escape_strings": "SELECT E'\\\\'';', U&'d\\0061t\\+000061' UESCAPE '!', B'101', X'1F', 1.5e3, .5",
    "parse_error": "SELEC 1; SELECT 2",
    "cte_write": "WITH d AS (DELETE FROM t WHERE x RETURNING *) SELECT * FROM d, s.u FOR UPDATE",
    "copy": "COPY public.t (a, b) FROM STDIN WITH (FORMAT csv); COPY (SELECT 1) TO '/tmp/x'",
    "merge": "MERGE INTO a USING b ON a.id = b.id WHEN MATCHED THEN UPDATE SET v = b.v "
             "WHEN NOT MATCHED THEN INSERT VALUES (b.id, b.v)",
    "ddl": "CREATE TABLE IF NOT EXISTS s.t (id int PRIMARY KEY, v varchar(10) DEFAULT 'x');"
           "CREATE INDEX i ON s.t (v); ALTER TABLE s.t ADD COLUMN w text; DROP VIEW v CASCADE",
    "misc": "SET search_path = a, b; SHOW all; VACUUM ANALYZE t; EXPLAIN ANALYZE INSERT INTO t "
            "VALUES (1); PREPARE p (int) AS SELECT $1; EXECUTE p(1); DEALLOCATE p; CALL f(1, 'a');"
            "GRANT SELECT ON t TO bob; NOTIFY c, 'payload'; LISTEN c; CHECKPOINT",
    "begin_function": "CREATE FUNCTION begin() RETURNS int LANGUAGE sql RETURN 1; SELECT 2",
    "unterminated": "SELECT 'abc; SELECT \"x; SELECT $$",
    "empty": ";;; -- nothing\n",
    "nul": "SELECT 1\0; DROP TABLE t",
    "invalid_utf8": "SELECT '\xff\xfe' FROM \xc3\x28",
    "subscription": "CREATE SUBSCRIPTION s CONNECTION 'host=x password=p' PUBLICATION p",
    "replication": "BASE_BACKUP ( LABEL 'a ''b'' c', WAIT 0, MAX_RATE 32768); IDENTIFY_SYSTEM;"
                   "START_REPLICATION SLOT \"s\" LOGICAL 1A/FF000028 (proto_version '4');"
                   "CREATE_REPLICATION_SLOT s2 TEMPORARY PHYSICAL (RESERVE_WAL); TIMELINE_HISTORY 2",
}
for name, text in SQL.items():
    put("fuzz_analysis", name, text.encode("latin-1"))

# ---------------------------------------------------------------- event
# The target reads its fields in order from the bytes: any bytes are an
# event; these give one of each kind with a few long, odd strings.
for kind in range(0, 9):
    b = bytes([kind]) + bytes(range(16)) + b"\x02" + struct.pack("!q", 1764000000000000)
    b += b"\x02\x04host" + b"\x02\x24" + b"0" * 36 + b"\x02\x050.1.0"
    b += b"\x02\x10sess\xff\xfe\"\\\n\x00\x7f\xc3\x28\xe2\x82" + b"\x04" * 3
    b += (b"\x02\x09127.0.0.1" + b"\x02" + struct.pack("!q", 5432) + b"\x00\x02\x04psql") * 2
    b += b"\x02\x05alice\x02\x05bench" + b"\x01" + b"\x02\x03CN=\x02\x01x" * 2 + b"\x02\x02ab" * 2
    b += b"\x05\x02\x03a.b\x02\x03c.d" + b"\x01\x02" + struct.pack("!q", -1) + b"\x00"
    b += b"\x02\x07TLSv1.3\x02\x16TLS_AES_256_GCM_SHA384"
    b += b"\x02\x30SELECT abalance FROM pgbench_accounts WHERE aid=$1"
    b += bytes([kind % 3, (kind + 1) % 3, 1]) + b"\x02" + struct.pack("!Q", 0xdeadbeefcafef00d)
    b += b"\x02\x06SELECT" + bytes([kind % 8])
    b += b"\x05" + (b"\x02\x06public\x02\x10pgbench_accounts\x02\x05table\x01") * 2
    b += bytes([kind % 4]) + b"\x02\x02s1\x01\x00" + b"\x01\x04" * 3
    b += b"\x07" + b"\x00\x02\x044711" + b"\x01\x00" + b"\x02\x02\x03\xff\x00" + b"\x02\x00"
    b += b"\x02\x0csyntax error" + bytes([kind % 6]) + b"\x02\x08SELECT 1"
    b += b"\x01\x08" * 2 + b"\x02\x0542P01\x02\x1frelation \"x\" does not exist\xe2\x80"
    b += b"\x01\x03" + bytes([kind % 3]) + b"\x01\x08\x01\x08"
    b += b"\x02\x0415.4\x02\x05scram\x02\x04deny\x02\x04sess\x02\x01\x07"
    b += bytes([kind % 6]) + b"\x01\x0c" * 5 + b"\x01\x08" * 3 + bytes([kind * 20])
    put("fuzz_event_encode", "kind_%d" % kind, b)
put("fuzz_event_encode", "extremes", b"\x03" + b"\xff" * 200)
put("fuzz_event_encode", "zeros", b"\x03" + b"\x00" * 200)

# ---------------------------------------------------------------- http
HTTP = {
    "prometheus": b"GET /metrics HTTP/1.1\r\nHost: localhost:9187\r\nUser-Agent: Prometheus/2.45.0\r\n"
                  b"Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n"
                  b"Accept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n",
    "curl_healthz": b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:9187\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n",
    "readyz_query": b"GET /readyz?verbose=1 HTTP/1.0\r\n\r\n",
    "head": b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    "post": b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    "chunked": b"POST /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "not_found": b"GET /metrics/ HTTP/1.1\r\n\r\n",
    "long_url": b"GET /" + b"a" * 300 + b" HTTP/1.1\r\n\r\n",
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "http09": b"GET /metrics\r\n",
    "pipelined": b"GET /healthz HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n",
    "big_header": b"GET /metrics HTTP/1.1\r\nX: " + b"y" * 9000 + b"\r\n\r\n",
    "absolute_uri": b"GET http://host/metrics HTTP/1.1\r\n\r\n",
    "options_star": b"OPTIONS * HTTP/1.1\r\n\r\n",
}
for name, req in HTTP.items():
    for step in (0, 7):
        put("fuzz_http", "%s_%d" % (name, step), bytes([step]) + req)

# ---------------------------------------------------------------- config args
def argv(*args):
    return b"\0".join(a.encode() for a in args)

ARGS = {
    "minimal": argv("--listen", "127.0.0.1:6432", "--upstream", "127.0.0.1:5432"),
    "full": argv("--listen", "[::1]:6432", "--listen", "/tmp", "--upstream", "/var/run/postgresql",
                 "--threads", "4", "--drain-timeout", "2.5", "--max-message-size", "65536",
                 "--log-level", "debug", "--audit-file", "-", "--log-parameters",
                 "--parameter-max-bytes", "100", "--metrics-listen", "127.0.0.1:9187"),
    "socket_file": argv("--listen=/tmp/.s.PGSQL.6432", "--upstream=/tmp/.s.PGSQL.5432"),
    "help": argv("--help"),
    "version": argv("--version"),
    "bad_number": argv("--listen", "localhost:6432", "--upstream", "localhost:5432", "--threads", "1e9"),
    "nan": argv("--listen", "h:1", "--upstream", "h:2", "--drain-timeout", "nan"),
    "bad_port": argv("--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:65536"),
    "no_colon": argv("--listen", "localhost", "--upstream", "[::1]"),
    "too_many": argv(*sum([["--listen", "/tmp/d%d" % i] for i in range(17)], []), "--upstream", "/tmp"),
    "long_path": argv("--listen", "/" + "p" * 200, "--upstream", "/" + "q" * 290),
    "unknown": argv("--nope", "x", "stray"),
    "missing_arg": argv("--listen"),
    "empty_audit": argv("--listen", "h:1", "--upstream", "h:2", "--audit-file", ""),
}
for name, a in ARGS.items():
    put("fuzz_config_args", name, a)
put("fuzz_config_args", "first_option", b"\x01127.0.0.1:5432\0--listen\0/tmp")

# ---------------------------------------------------------------- session
def rec(side, data, turns=0, end=0):
    ctl = side | (turns << 1) | end
    out = b""
    while True:  # records hold at most 65535 bytes
        chunk, data = data[:65535], data[65535:]
        out += bytes([ctl]) + struct.pack("<H", len(chunk)) + chunk
        if not data:
            return out

C, S = 0, 1
EOF_ = 0x10
CLOSE = 0x20


def rowdesc(*names):
    body = struct.pack("!H", len(names))
    for n in names:
        body += cstr(n) + struct.pack("!IhIhih", 0, 0, 23, 4, -1, 0)
    return msg("T", body)


def datarow(*vals):
    body = struct.pack("!H", len(vals))
    for v in vals:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return msg("D", body)


def cc(tag):
    return msg("C", cstr(tag))


def rfq(s="I"):
    return msg("Z", s.encode())


def err(sqlstate, text, sev="ERROR"):
    return msg("E", b"S" + cstr(sev) + b"V" + cstr(sev) + b"C" + cstr(sqlstate) + b"M" + cstr(text) + b"\0")


def query(q):
    return msg("Q", cstr(q))


def parse(name, q, oids=()):
    return msg("P", cstr(name) + cstr(q) + struct.pack("!H", len(oids)) + b"".join(struct.pack("!I", o) for o in oids))


def bind(portal, stmt, params, fmts=()):
    body = cstr(portal) + cstr(stmt) + struct.pack("!H", len(fmts)) + b"".join(struct.pack("!h", f) for f in fmts)
    body += struct.pack("!H", len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    return body + struct.pack("!H", 0)


def B(portal, stmt, params, fmts=()):
    return msg("B", bind(portal, stmt, params, fmts))


def describe(kind, name):
    return msg("D", kind + cstr(name))


def execute(portal, rows=0):
    return msg("E", cstr(portal) + struct.pack("!I", rows))


SYNC = msg("S")
TERM = msg("X")

# psql: \conninfo-like query, a table listing, an error, then \q
psql = rec(C, PSQL, 2)
psql += rec(C, query("SELECT version();"), 1)
psql += rec(S, rowdesc("version") + datarow(b"PostgreSQL 15.4 on x86_64-pc-linux-gnu") + cc("SELECT 1") + rfq(), 1)
psql += rec(C, query(SQL["psql_describe"]), 1)
psql += rec(S, rowdesc("Schema", "Name") + datarow(b"public", b"pgbench_accounts") +
            datarow(b"public", None) + cc("SELECT 2") + rfq(), 1)
psql += rec(C, query("SELECT * FROM nope;"), 1)
psql += rec(S, err("42P01", 'relation "nope" does not exist') + rfq(), 1)
psql += rec(C, query("BEGIN; INSERT INTO t VALUES (1); COMMIT;"), 1)
psql += rec(S, cc("BEGIN") + cc("INSERT 0 1") + cc("COMMIT") + rfq(), 1)
psql += rec(C, TERM, 1)
put("fuzz_session", "psql", b"\0" + psql)

# pgbench -M prepared, one TPC-B-ish transaction in the extended protocol
pb = rec(C, PGBENCH, 2)
ext = parse("P0_1", SQL["pgbench_prepared"], (23, 23)) + B("", "P0_1", [b"-4001", b"3"]) + \
    describe(b"P", "") + execute("") + SYNC
pb += rec(C, ext, 1)
pb += rec(S, msg("1") + msg("2") + msg("n") + cc("UPDATE 1") + rfq("T"), 1)
ext = B("", "P0_1", [None, b"\x00\x00\x00\x07"], (0, 1)) + execute("", 10) + msg("H") + \
    msg("C", b"S" + cstr("P0_1")) + SYNC
pb += rec(C, ext, 1)
pb += rec(S, msg("2") + msg("s") + msg("3") + rfq(), 1)
pb += rec(C, TERM)
put("fuzz_session", "pgbench_prepared", b"\0" + pb)

# COPY FROM STDIN, then COPY TO STDOUT
cp = rec(C, PSQL, 1)
cp += rec(C, query("COPY t FROM STDIN;"), 1)
cp += rec(S, msg("G", b"\0" + struct.pack("!Hh", 1, 0)), 1)
cp += rec(C, msg("d", b"1\n2\n") + msg("d", b"3\n") + msg("c"), 1)
cp += rec(S, cc("COPY 3") + rfq(), 1)
cp += rec(C, query("COPY t TO STDOUT;"), 1)
cp += rec(S, msg("H", b"\0" + struct.pack("!Hh", 1, 0)) + msg("d", b"1\n") + msg("c") + cc("COPY 1") + rfq(), 1)
cp += rec(C, query("COPY t FROM STDIN;"), 1)
cp += rec(S, msg("G", b"\0" + struct.pack("!Hh", 1, 0)), 1)
cp += rec(C, msg("d", b"half"), 1, CLOSE)   # client vanishes mid-COPY
put("fuzz_session", "copy", b"\0" + cp)

# pg_basebackup: a replication session whose command answers with several
# results and a COPY, then the WAL stream's CopyBoth
bb = rec(C, startup([("user", "postgres"), ("replication", "true"), ("application_name", "pg_basebackup")]), 2)
bb += rec(C, query("IDENTIFY_SYSTEM"), 1)
bb += rec(S, rowdesc("systemid", "timeline") + datarow(b"7", b"1") + cc("IDENTIFY_SYSTEM") + rfq(), 1)
bb += rec(C, query("BASE_BACKUP ( LABEL 'x', PROGRESS, CHECKPOINT 'fast')"), 1)
bb += rec(S, rowdesc("recptr", "tli") + datarow(b"0/2000028", b"1") + cc("SELECT 1") +
          msg("H", b"\0" + struct.pack("!H", 0)) + msg("d", b"n" + b"base.tar\0\0") + msg("d", b"d" + b"x" * 64) +
          msg("c") + rowdesc("recptr", "tli") + datarow(b"0/2000100", b"1") + cc("SELECT 1") +
          cc("BASE_BACKUP") + rfq(), 1)
bb += rec(C, query('START_REPLICATION SLOT "s" 0/2000000 TIMELINE 1'), 1)
bb += rec(S, msg("W", b"\0" + struct.pack("!H", 0)) + msg("d", b"w" + b"\0" * 24 + b"wal"), 1)
bb += rec(C, msg("d", b"r" + b"\0" * 33) + msg("c"), 1)
bb += rec(S, msg("c") + cc("START_STREAMING") + cc("START_REPLICATION") + rfq(), 1)
bb += rec(C, TERM, 1)
put("fuzz_session", "pg_basebackup", b"\0" + bb)

# SQL-level PREPARE, EXECUTE (whose event names the PREPARE's relations),
# DEALLOCATE, DISCARD ALL
sp = rec(C, PSQL, 2)
sp += rec(C, query("PREPARE p (int) AS UPDATE t SET v = 1 WHERE id = $1; EXECUTE p(1)"), 1)
sp += rec(S, cc("PREPARE") + cc("UPDATE 1") + rfq(), 1)
sp += rec(C, parse("", "EXECUTE p(2)") + B("", "", []) + execute("") + SYNC, 1)
sp += rec(S, msg("1") + msg("2") + cc("UPDATE 1") + rfq(), 1)
sp += rec(C, query("DEALLOCATE p; EXECUTE p(3); DISCARD ALL"), 1)
sp += rec(S, cc("DEALLOCATE") + err("26000", 'prepared statement "p" does not exist') + rfq(), 1)
sp += rec(C, TERM, 1)
put("fuzz_session", "sql_prepare", b"\0" + sp)

# A PREPARE too long to parse on the loop, its EXECUTE and a FETCH behind
# it in the same Query: their events wait for the parse job
ids = ", ".join(str(i) for i in range(1200))
lp = rec(C, PSQL, 2)
lp += rec(C, query("PREPARE big AS SELECT v FROM t WHERE id IN (%s); EXECUTE big; FETCH 1 FROM c" % ids), 1)
lp += rec(S, cc("PREPARE") + rowdesc("v") + datarow(b"1") + cc("SELECT 1") +
          err("34000", 'cursor "c" does not exist') + rfq(), 3)
lp += rec(C, query("SELECT 1"), 1)
lp += rec(S, rowdesc("a") + datarow(b"1") + cc("SELECT 1") + rfq(), 1)
lp += rec(C, TERM, 1)
put("fuzz_session", "sql_prepare_long", b"\0" + lp)

# SQL cursors: DECLARE, FETCH (whose event names the DECLARE's relations),
# MOVE, CLOSE, CLOSE ALL
cu = rec(C, PSQL, 2)
cu += rec(C, query("BEGIN; DECLARE c CURSOR FOR SELECT * FROM t JOIN u USING (id); FETCH 2 FROM c"), 1)
cu += rec(S, cc("BEGIN") + cc("DECLARE CURSOR") + rowdesc("id") + datarow(b"1") + datarow(b"2") +
          cc("FETCH 2") + rfq("T"), 1)
cu += rec(C, parse("", "MOVE 1 IN c") + B("", "", []) + execute("") + SYNC, 1)
cu += rec(S, msg("1") + msg("2") + cc("MOVE 1") + rfq("T"), 1)
cu += rec(C, query("CLOSE c; FETCH 1 FROM c; CLOSE ALL; COMMIT"), 1)
cu += rec(S, cc("CLOSE CURSOR") + err("34000", 'cursor "c" does not exist') + rfq("E"), 1)
cu += rec(C, TERM, 1)
put("fuzz_session", "sql_cursor", b"\0" + cu)

# libpq's large-object calls by OID: lo_open, loread (its answer the
# object's bytes), lo_close, and a call of an unknown OID with many
# binary arguments
def fcall(oid, args, fmt=1):
    body = struct.pack("!IHH", oid, 1, fmt) + struct.pack("!H", len(args))
    for a in args:
        body += struct.pack("!i", len(a)) + a
    return msg("F", body + struct.pack("!H", 1))
lo = rec(C, PSQL, 2)
lo += rec(C, fcall(952, [struct.pack("!I", 16437), struct.pack("!i", 0x40000)]), 1)
lo += rec(S, msg("V", struct.pack("!ii", 4, 0)) + rfq("T"), 1)
lo += rec(C, fcall(954, [struct.pack("!i", 0), struct.pack("!i", 64)]), 1)
lo += rec(S, msg("V", struct.pack("!i", 64) + bytes(range(64))) + rfq("T"), 1)
lo += rec(C, fcall(953, [struct.pack("!i", 0)]) + fcall(16500, [b"a"] * 20), 1)
lo += rec(S, msg("V", struct.pack("!ii", 4, 0)) + rfq("T") + err("42883", "function does not exist") + rfq("E"), 1)
lo += rec(C, TERM, 1)
put("fuzz_session", "large_object", b"\0" + lo)

put("fuzz_session", "ssl_then_startup", b"\0" + rec(C, SSL, 1) + rec(C, PSQL + query("SELECT 1"), 2) +
    rec(S, rowdesc("?column?") + datarow(b"1") + cc("SELECT 1") + rfq(), 1))
put("fuzz_session", "gss_ssl_startup", b"\0" + rec(C, GSS, 1) + rec(C, SSL, 1) + rec(C, PSQL, 2))
put("fuzz_session", "ssl_with_data", b"\0" + rec(C, SSL + PSQL, 2))
put("fuzz_session", "cancel", b"\0" + rec(C, CANCEL, 4))
put("fuzz_session", "bad_version", b"\0" + rec(C, startup([("user", "a")], 196610), 2))
put("fuzz_session", "no_user", b"\0" + rec(C, startup([("database", "a")]), 2))
put("fuzz_session", "pipelined", b"\0" + rec(C, PSQL + query("SELECT 1") + parse("", "SELECT $1") +
                                                B("", "", [b"x"]) + execute("") + SYNC, 0) +
    rec(S, rowdesc("a") + datarow(b"1") + cc("SELECT 1") + rfq() + msg("1") + msg("2") +
        datarow(b"x") + cc("SELECT 1") + rfq(), 2))
put("fuzz_session", "server_garbage", b"\0" + rec(C, PSQL, 1) + rec(C, query("SELECT 1"), 1) +
    rec(S, b"\0\0\0\0\0" + b"\xff" * 20, 2))
put("fuzz_session", "server_fatal", b"\0" + rec(C, PSQL, 1) +
    rec(S, err("57P01", "terminating connection due to administrator command", "FATAL"), 1, CLOSE))
put("fuzz_session", "no_handshake_auth", b"\1" + rec(C, PSQL, 1) +
    rec(S, msg("R", struct.pack("!I", 10) + cstr("SCRAM-SHA-256") + b"\0"), 1) +
    rec(C, msg("p", cstr("SCRAM-SHA-256") + struct.pack("!i", 5) + b"n,,n="), 1) +
    rec(S, err("28P01", 'password authentication failed for user "alice"', "FATAL"), 1))
put("fuzz_session", "client_bad_length", b"\0" + rec(C, PSQL, 1) + rec(C, b"Q\xff\xff\xff\xff", 2))
put("fuzz_session", "big_query", b"\0" + rec(C, PSQL, 1) +
    rec(C, query("INSERT INTO t VALUES " + ",".join("(%d, 'v%d')" % (i, i) for i in range(3000))), 2) +
    rec(S, cc("INSERT 0 3000") + rfq(), 2))
put("fuzz_session", "half_close", b"\0" + rec(C, PSQL + query("SELECT 1"), 1, EOF_) +
    rec(S, rowdesc("a") + datarow(b"1") + cc("SELECT 1") + rfq(), 2, EOF_))
put("fuzz_session", "function_call", b"\0" + rec(C, PSQL, 1) +
    rec(C, msg("F", struct.pack("!IH", 1598, 0) + struct.pack("!H", 1) + struct.pack("!i", 1) + b"x" + struct.pack("!H", 0)), 1) +
    rec(S, msg("V", struct.pack("!i", 2) + b"ok") + rfq(), 1))
# A query pipelined behind the startup packet of a session the server then
# refuses: the statement never ran, so the audit must not log it
# (regression: it came as a statement event after the auth_failure).
put("fuzz_session", "regress-pipelined-before-auth-failure", b"\1" +
    rec(C, PSQL + query("DROP TABLE accounts"), 1) +
    rec(S, err("28P01", 'password authentication failed for user "alice"', "FATAL"), 1, CLOSE))

# ---------------------------------------------------------------- spool
# Records as fuzz_spool reads them: [type][token][length] value; a byte left
# over damages the file (odd: a bit flipped, even: a torn tail).
EVENT, BEGIN, VOID, DELTA = 1, 2, 3, 4
HEAD_ = b'{"v":1,"event_id":"01a2","kind":"statement","statement":{"text":"SELECT 1"},'


def srec(t, token, value):
    return bytes([t, token, len(value)]) + value


def delta(shared, rest):
    return struct.pack("<I", shared) + rest


BEGIN1 = HEAD_ + b'"result":{"status":"unknown"}}'
STATEMENT = srec(BEGIN, 1, BEGIN1) + srec(DELTA, 1, delta(len(HEAD_) + 11, b'ok","rows":1}}'))
put("fuzz_spool", "begin_delta", STATEMENT)
put("fuzz_spool", "begin_unanswered", STATEMENT + srec(BEGIN, 2, BEGIN1))
put("fuzz_spool", "begin_event_void", srec(BEGIN, 3, b'{"b":3}') + srec(BEGIN, 4, b'{"b":4}') +
    srec(EVENT, 3, b'{"done":3}') + srec(VOID, 4, b"") + srec(EVENT, 0, b'{"session_end":1}'))
put("fuzz_spool", "delta_without_begin", srec(DELTA, 9, delta(3, b"rest")) + STATEMENT)
put("fuzz_spool", "delta_too_long", srec(BEGIN, 5, b'{"b":5}') + srec(DELTA, 5, delta(200, b"x")))
put("fuzz_spool", "tokens_falling", srec(BEGIN, 7, b'{"b":7}') + srec(BEGIN, 6, b'{"b":6}') +
    srec(DELTA, 6, delta(2, b"done")) + srec(DELTA, 7, delta(5, b"8}")))
put("fuzz_spool", "torn", STATEMENT + srec(BEGIN, 2, BEGIN1) + b"\x10")
put("fuzz_spool", "bit_flipped", STATEMENT + b"\x21")
put("fuzz_spool", "bad_type", STATEMENT + srec(0, 1, b"x") + srec(EVENT, 0, b"{}"))
# A run whose segments complete nothing (regression: the search of its
# completions was given a null array).
put("fuzz_spool", "regress-begins-only", srec(BEGIN, 1, BEGIN1) + srec(BEGIN, 2, BEGIN1))
