"""Volume through pgwarden: pgbench in every query mode, COPY both ways,
a ~50 MB result set, pg_dump/pg_restore. Every byte must match a direct run."""

import hashlib
import re

import pytest

from harness import pgbench, psql, tool


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def create_db(pg, name):
    pg.sql(f"DROP DATABASE IF EXISTS {name}")
    pg.sql(f"CREATE DATABASE {name}")


def check_pgbench_output(r):
    out = r.stdout.decode()
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    assert processed, out
    assert int(processed.group(1)) > 0, out
    failed = re.search(r"number of failed transactions: (\d+)", out)
    assert failed, out
    assert int(failed.group(1)) == 0, out
    assert b"error" not in r.stderr.lower(), r.stderr.decode()
    return int(processed.group(1))


@pytest.fixture(scope="module")
def bench_db(pg, proxy):
    create_db(pg, "pgw_bench")
    r = pgbench(proxy, "-i", "-s", "1", "-q", dbname="pgw_bench")
    assert b"done" in r.stderr, r.stderr.decode()
    assert pg.sql("SELECT count(*) FROM pgbench_accounts", dbname="pgw_bench") == [(100000,)]
    return "pgw_bench"


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench(pg, proxy, bench_db, mode):
    before = pg.sql("SELECT count(*) FROM pgbench_history", dbname=bench_db)[0][0]
    r = pgbench(proxy, "-M", mode, "-c", "4", "-j", "2", "-T", "3", "-n", dbname=bench_db)
    processed = check_pgbench_output(r)
    after = pg.sql("SELECT count(*) FROM pgbench_history", dbname=bench_db)[0][0]
    # Every processed TPC-B-like transaction inserted one history row (a
    # client stopped by -T may have committed one more without counting it).
    assert processed <= after - before <= processed + 4


def test_pgbench_select_only_with_connect_per_transaction(proxy, bench_db):
    # -C: a new connection for every transaction, so startup and teardown
    # through the proxy are exercised hundreds of times.
    r = pgbench(proxy, "-S", "-C", "-c", "4", "-j", "2", "-T", "2", "-n", dbname=bench_db)
    assert check_pgbench_output(r) > 20


COPY_ROWS = 100_000


@pytest.fixture(scope="module")
def copy_db(pg):
    create_db(pg, "pgw_copy")
    pg.sql("""
        CREATE TABLE src (id int PRIMARY KEY, t text, n numeric, ts timestamptz, b bytea, j jsonb);
        INSERT INTO src
        SELECT g,
               CASE WHEN g % 97 = 0 THEN NULL
                    ELSE 'row ' || g || E'\\twith tab, \\\\ backslash, ' || repeat('é', g % 5) || E'\\nnewline' END,
               g * 1.5,
               timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second',
               decode(md5(g::text), 'hex'),
               jsonb_build_object('g', g, 'odd', g % 2 = 1)
        FROM generate_series(1, {rows}) g;
        CREATE TABLE dst (LIKE src);
    """.replace("{rows}", str(COPY_ROWS)), dbname="pgw_copy")
    return "pgw_copy"


@pytest.mark.parametrize("fmt", ["text", "csv", "binary"])
def test_copy_out_and_in(pg, proxy, copy_db, tmp_path, fmt):
    opts = "" if fmt == "text" else f" WITH (FORMAT {fmt})"
    direct_file, proxy_file, back_file = (tmp_path / n for n in ("direct", "proxy", "back"))
    ordered = "(SELECT * FROM %s ORDER BY id)"

    psql(pg, "-c", f"\\copy {ordered % 'src'} TO '{direct_file}'{opts}", dbname=copy_db)
    r = psql(proxy, "-c", f"\\copy {ordered % 'src'} TO '{proxy_file}'{opts}", dbname=copy_db)
    assert r.stdout.strip() == b"COPY %d" % COPY_ROWS
    assert direct_file.stat().st_size > 5_000_000
    assert sha256_file(proxy_file) == sha256_file(direct_file)

    pg.sql("TRUNCATE dst", dbname=copy_db)
    r = psql(proxy, "-c", f"\\copy dst FROM '{direct_file}'{opts}", dbname=copy_db)
    assert r.stdout.strip() == b"COPY %d" % COPY_ROWS
    psql(pg, "-c", f"\\copy {ordered % 'dst'} TO '{back_file}'{opts}", dbname=copy_db)
    assert sha256_file(back_file) == sha256_file(direct_file)


def test_copy_in_error_midway(pg, proxy, copy_db, tmp_path):
    # A bad row in the middle of a COPY FROM: the server's error reaches the
    # client, nothing is loaded, and the session recovers.
    data = tmp_path / "bad.txt"
    lines = ["%d\tok" % i for i in range(1, 50001)]
    lines[30000] = "not-a-number\tbad"
    data.write_text("\n".join(lines) + "\n")
    pg.sql("CREATE TABLE IF NOT EXISTS small (id int, t text); TRUNCATE small", dbname=copy_db)
    script = f"\\copy small FROM '{data}'\nSELECT 'still here', count(*) FROM small;\n"
    r = psql(proxy, "-At", "-v", "ON_ERROR_STOP=0", dbname=copy_db, input=script.encode())
    assert b"invalid input syntax for type integer" in r.stderr
    assert r.stdout.strip().splitlines()[-1] == b"still here|0"


def test_large_result_set(pg, proxy, tmp_path):
    sql = "SELECT repeat('x', 1000) || g FROM generate_series(1, 50000) g"
    direct = psql(pg, "-At", "-c", sql)
    via_proxy = psql(proxy, "-At", "-c", sql)
    assert len(direct.stdout) > 50_000_000
    assert hashlib.sha256(via_proxy.stdout).hexdigest() == hashlib.sha256(direct.stdout).hexdigest()

    # The same volume through psycopg in binary format, streamed in batches
    # by a server-side cursor.
    h_direct, h_proxy = hashlib.sha256(), hashlib.sha256()
    for conn_src, h in ((pg, h_direct), (proxy, h_proxy)):
        with conn_src.connect(autocommit=False) as conn:
            with conn.cursor("big", binary=True) as cur:
                cur.itersize = 2000
                cur.execute("SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, 50000) g")
                for g, s in cur:
                    h.update(b"%d:%s\n" % (g, s.encode()))
    assert h_proxy.hexdigest() == h_direct.hexdigest()


@pytest.fixture(scope="module")
def dump_db(pg):
    create_db(pg, "pgw_dump")
    pg.sql("""
        CREATE SCHEMA app;
        CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
        CREATE TABLE app.people (id serial PRIMARY KEY, name text NOT NULL, mood app.mood,
                                 born date, tags text[], meta jsonb, photo bytea);
        CREATE INDEX people_name ON app.people (lower(name));
        CREATE TABLE app.visits (id bigserial PRIMARY KEY, person int REFERENCES app.people,
                                 at timestamptz, amount numeric(12, 3));
        INSERT INTO app.people (name, mood, born, tags, meta, photo)
        SELECT 'person ' || g, (ARRAY['sad','ok','happy'])[1 + g % 3]::app.mood,
               date '1970-01-01' + g, ARRAY['t' || g % 7, 'x'], jsonb_build_object('n', g),
               decode(repeat(md5(g::text), 4), 'hex')
        FROM generate_series(1, 5000) g;
        INSERT INTO app.visits (person, at, amount)
        SELECT 1 + g % 5000, timestamptz '2023-06-01 12:00:00+00' + g * interval '1 minute', g / 3.0
        FROM generate_series(1, 20000) g;
        CREATE VIEW app.summary AS
            SELECT p.name, count(v.*) AS visits FROM app.people p LEFT JOIN app.visits v ON v.person = p.id
            GROUP BY p.name;
        CREATE FUNCTION app.total(int) RETURNS numeric LANGUAGE sql
            AS 'SELECT sum(amount) FROM app.visits WHERE person = $1';
        COMMENT ON TABLE app.people IS 'who came';
    """, dbname="pgw_dump")
    return "pgw_dump"


# pg_dump (15.14 and later) puts a random \restrict key in plain dumps unless given one.
RESTRICT = "--restrict-key=pgwardentest"


def test_pg_dump_identical(pg, proxy, dump_db):
    direct = tool("pg_dump", pg, RESTRICT, "-d", dump_db)
    via_proxy = tool("pg_dump", proxy, RESTRICT, "-d", dump_db)
    assert b"COPY app.visits" in direct.stdout and len(direct.stdout) > 1_000_000
    assert hashlib.sha256(via_proxy.stdout).digest() == hashlib.sha256(direct.stdout).digest()


def test_pg_dump_custom_and_pg_restore(pg, proxy, dump_db, tmp_path):
    archive = tmp_path / "dump.custom"
    tool("pg_dump", proxy, "-Fc", "-f", str(archive), "-d", dump_db)
    create_db(pg, "pgw_restored")
    tool("pg_restore", proxy, "-d", "pgw_restored", str(archive))
    original = tool("pg_dump", pg, RESTRICT, "-d", dump_db).stdout
    restored = tool("pg_dump", pg, RESTRICT, "-d", "pgw_restored").stdout
    assert restored == original
