/* The statement tracker, fed message sequences as PostgreSQL and its
 * clients produce them: every protocol path gives exactly one report per
 * statement execution, with the right status, text and counts. */
#include "check.h"
#include "tracker.h"

#include <arpa/inet.h>

#define MAXREC 64

typedef struct rec {
    pgw_stmt_done_t d;
    char text[128], stmt[32], portal[32], tag[32], sqlstate[8];
    int nvalues;                    /* logged parameter values (d.params dies with the emit) */
    size_t value_len[2];
    int value_binary[2];
} rec_t;

static rec_t recs[MAXREC];
static int nrec;

static void on_emit(void *ud, const pgw_stmt_done_t *d)
{
    (void)ud;
    if (nrec == MAXREC)
        return;
    rec_t *r = &recs[nrec++];
    r->d = *d;
    snprintf(r->text, sizeof r->text, "%.*s", (int)d->text_len, d->text ? d->text : "");
    snprintf(r->stmt, sizeof r->stmt, "%s", d->stmt_name ? d->stmt_name : "(none)");
    snprintf(r->portal, sizeof r->portal, "%s", d->portal_name ? d->portal_name : "(none)");
    snprintf(r->tag, sizeof r->tag, "%s", d->tag ? d->tag : "(none)");
    snprintf(r->sqlstate, sizeof r->sqlstate, "%s", d->sqlstate ? d->sqlstate : "");
    r->nvalues = d->params ? d->nparams : 0;
    for (int i = 0; i < r->nvalues && i < 2; i++) {
        r->value_len[i] = d->params[i].len;
        r->value_binary[i] = d->params[i].binary;
    }
}

/* A naive split on ';' for the tests (the real one is libpg_query's). */
static unsigned split_semicolons(void *ud, const char *text, size_t len, uint32_t (*spans)[2], unsigned cap,
                                 pgw_memo_t **memo)
{
    (void)ud;
    (void)memo;
    unsigned n = 0;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || text[i] == ';') {
            size_t a = start, b = i;
            while (a < b && text[a] == ' ')
                a++;
            if (b > a) {
                if (n < cap) {
                    spans[n][0] = (uint32_t)a;
                    spans[n][1] = (uint32_t)(b - a);
                }
                n++;
            }
            start = i + 1;
        }
    }
    return n;
}

/* ---- message construction ---------------------------------------------- */

static uint8_t store[64][512];
static int nstore;

static pgw_msg_t msg_of(pgw_wb_t *w)
{
    ssize_t n = pgw_wb_finish(w);
    pgw_msg_t m;
    memset(&m, 0, sizeof m);
    if (n < 5)
        abort();
    m.type = w->buf[0];
    m.len = (uint32_t)(n - 1);
    m.body = w->buf + 5;
    m.body_len = (uint32_t)(n - 5);
    return m;
}

static pgw_wb_t *wb(uint8_t type)
{
    static pgw_wb_t w;
    pgw_wb_init(&w, store[nstore++ % 64], sizeof store[0]);
    pgw_wb_begin(&w, type);
    return &w;
}

static pgw_tracker_t T;
static int64_t now = 1000;

static void fe(pgw_wb_t *w) { pgw_wb_end(w); pgw_msg_t m = msg_of(w); pgw_tracker_frontend(&T, &m, now += 10); }
static void be(pgw_wb_t *w) { pgw_wb_end(w); pgw_msg_t m = msg_of(w); pgw_tracker_backend(&T, &m, now += 10); }

static void Q(const char *sql) { pgw_wb_t *w = wb('Q'); pgw_wb_cstr(w, sql); fe(w); }
static void P(const char *name, const char *sql)
{
    pgw_wb_t *w = wb('P'); pgw_wb_cstr(w, name); pgw_wb_cstr(w, sql); pgw_wb_u16(w, 0); fe(w);
}
static void B(const char *portal, const char *stmt, int nparams)
{
    pgw_wb_t *w = wb('B');
    pgw_wb_cstr(w, portal); pgw_wb_cstr(w, stmt);
    pgw_wb_u16(w, 0);
    pgw_wb_u16(w, (uint16_t)nparams);
    for (int i = 0; i < nparams; i++) { pgw_wb_u32(w, 1); pgw_wb_u8(w, '7'); }
    pgw_wb_u16(w, 0);
    fe(w);
}
static void E(const char *portal, uint32_t max) { pgw_wb_t *w = wb('E'); pgw_wb_cstr(w, portal); pgw_wb_u32(w, max); fe(w); }
static void Dsc(uint8_t kind, const char *name) { pgw_wb_t *w = wb('D'); pgw_wb_u8(w, kind); pgw_wb_cstr(w, name); fe(w); }
static void Cls(uint8_t kind, const char *name) { pgw_wb_t *w = wb('C'); pgw_wb_u8(w, kind); pgw_wb_cstr(w, name); fe(w); }
static void S(void) { fe(wb('S')); }
static void Fcopy(int bytes) { pgw_wb_t *w = wb('d'); for (int i = 0; i < bytes; i++) pgw_wb_u8(w, 'x'); fe(w); }
static void Fcopydone(void) { fe(wb('c')); }
static void F(uint32_t oid)
{
    pgw_wb_t *w = wb('F'); pgw_wb_u32(w, oid); pgw_wb_u16(w, 0); pgw_wb_u16(w, 0); pgw_wb_u16(w, 0); fe(w);
}
/* A call with nargs binary int4 arguments 1, 2, 3, ... */
static void Fargs(uint32_t oid, uint16_t nargs)
{
    pgw_wb_t *w = wb('F'); pgw_wb_u32(w, oid);
    pgw_wb_u16(w, 1); pgw_wb_u16(w, 1);
    pgw_wb_u16(w, nargs);
    for (uint16_t i = 1; i <= nargs; i++) { pgw_wb_u32(w, 4); pgw_wb_u32(w, i); }
    pgw_wb_u16(w, 1);
    fe(w);
}
/* A FunctionCallResponse carrying n bytes. */
static void rVn(int n) { pgw_wb_t *w = wb('V'); pgw_wb_u32(w, (uint32_t)n); for (int i = 0; i < n; i++) pgw_wb_u8(w, 'x'); be(w); }

static void rT(void) { pgw_wb_t *w = wb('T'); pgw_wb_u16(w, 0); be(w); }
static void rD(void) { pgw_wb_t *w = wb('D'); pgw_wb_u16(w, 1); pgw_wb_u32(w, 1); pgw_wb_u8(w, '1'); be(w); }
static void rC(const char *tag) { pgw_wb_t *w = wb('C'); pgw_wb_cstr(w, tag); be(w); }
static void rI(void) { be(wb('I')); }
static void rZ(uint8_t st) { pgw_wb_t *w = wb('Z'); pgw_wb_u8(w, st); be(w); }
static void rE(const char *sqlstate)
{
    pgw_wb_t *w = wb('E');
    pgw_wb_u8(w, 'S'); pgw_wb_cstr(w, "ERROR");
    pgw_wb_u8(w, 'V'); pgw_wb_cstr(w, "ERROR");
    pgw_wb_u8(w, 'C'); pgw_wb_cstr(w, sqlstate);
    pgw_wb_u8(w, 'M'); pgw_wb_cstr(w, "boom");
    pgw_wb_u8(w, 0);
    be(w);
}
static void r1(void) { be(wb('1')); }
static void r2(void) { be(wb('2')); }
static void r3(void) { be(wb('3')); }
static void rn(void) { be(wb('n')); }
static void rs(void) { be(wb('s')); }
static void rt(void) { pgw_wb_t *w = wb('t'); pgw_wb_u16(w, 0); be(w); }
static void rG(void) { pgw_wb_t *w = wb('G'); pgw_wb_u8(w, 0); pgw_wb_u16(w, 0); be(w); }
static void rH(void) { pgw_wb_t *w = wb('H'); pgw_wb_u8(w, 0); pgw_wb_u16(w, 0); be(w); }
static void rd(int bytes) { pgw_wb_t *w = wb('d'); for (int i = 0; i < bytes; i++) pgw_wb_u8(w, 'y'); be(w); }
static void rc(void) { be(wb('c')); }
static void rV(void) { pgw_wb_t *w = wb('V'); pgw_wb_u32(w, 1); pgw_wb_u8(w, '1'); be(w); }

/* A stand-in for the SQL analysis's PGW_SQL_OWN_TRANSACTION. */
static int own_xact_calls;
static int own_xact_concurrently(void *ud, const char *text, size_t len, pgw_memo_t **memo)
{
    (void)ud;
    (void)memo;
    own_xact_calls++;
    return memmem(text, len, "CONCURRENTLY", 12) != NULL;
}

static void reset(void)
{
    pgw_tracker_finish(&T, now);
    pgw_tracker_init(&T, on_emit, split_semicolons, NULL);
    nrec = 0;
}

/* ---- scenarios ----------------------------------------------------------- */

static void test_simple_multi(void)
{
    reset();
    Q("SELECT 1; SELECT 2");
    rT(); rD(); rC("SELECT 1"); rT(); rD(); rC("SELECT 1"); rZ('I');
    CHECK_EQ(nrec, 2);
    CHECK_STR(recs[0].text, "SELECT 1");
    CHECK_STR(recs[1].text, "SELECT 2");
    CHECK_EQ(recs[0].d.index, 1);
    CHECK_EQ(recs[1].d.index, 2);
    CHECK_EQ(recs[1].d.count, 2);
    CHECK_EQ(recs[0].d.status, PGW_STATUS_OK);
    CHECK_EQ(recs[0].d.protocol, PGW_PROTOCOL_SIMPLE);
    CHECK_EQ(recs[0].d.rows, 1);
    CHECK_STR(recs[0].tag, "SELECT 1");
    CHECK(recs[0].d.bytes > 0);
    CHECK(recs[1].d.time_us >= recs[0].d.time_us + recs[0].d.duration_us);
}

static void test_simple_error_skips_rest(void)
{
    reset();
    Q("INSERT INTO t VALUES (1); SELECT 1/0; SELECT 3");
    rC("INSERT 0 1"); rE("22012"); rZ('I');
    CHECK_EQ(nrec, 3);
    CHECK_EQ(recs[0].d.status, PGW_STATUS_OK);
    CHECK_EQ(recs[0].d.rows, 1);
    CHECK_EQ(recs[1].d.status, PGW_STATUS_ERROR);
    CHECK_STR(recs[1].sqlstate, "22012");
    CHECK_STR(recs[1].text, "SELECT 1/0");
    CHECK_EQ(recs[2].d.status, PGW_STATUS_SKIPPED);
    CHECK_STR(recs[2].text, "SELECT 3");
    CHECK_EQ(T.errors, 1);
}

static void test_empty_query(void)
{
    reset();
    Q("   ");
    rI(); rZ('I');
    CHECK_EQ(nrec, 0);
}

static void test_extended_unnamed(void)
{
    reset();
    P("", "SELECT $1"); B("", "", 1); Dsc('P', ""); E("", 0); S();
    r1(); r2(); rT(); rD(); rD(); rC("SELECT 2"); rZ('I');
    CHECK_EQ(nrec, 1);
    CHECK_EQ(recs[0].d.protocol, PGW_PROTOCOL_EXTENDED);
    CHECK_STR(recs[0].text, "SELECT $1");
    CHECK_STR(recs[0].stmt, "");
    CHECK_STR(recs[0].portal, "");
    CHECK_EQ(recs[0].d.nparams, 1);
    CHECK_EQ(recs[0].d.rows, 2);
    CHECK_EQ(recs[0].d.status, PGW_STATUS_OK);
}

static void test_named_statement_reused(void)
{
    reset();
    P("s1", "UPDATE a SET x = $1"); Dsc('S', "s1"); S();
    r1(); rt(); rn(); rZ('I');
    CHECK_EQ(nrec, 0);
    for (int i = 0; i < 100; i++) {
        B("", "s1", 1); E("", 0); S();
        r2(); rC("UPDATE 1"); rZ('I');
    }
    CHECK_EQ(nrec, 64);             /* recorder cap; the tracker reported 100 */
    CHECK_EQ(T.statements, 100);
    CHECK_STR(recs[63].text, "UPDATE a SET x = $1");
    CHECK_STR(recs[63].stmt, "s1");
    /* Close, then an Execute of a statement the server no longer has. */
    Cls('S', "s1"); S(); r3(); rZ('I');
    nrec = 0;
    B("", "s1", 1); E("", 0); S();
    rE("26000"); rZ('I');
    CHECK_EQ(nrec, 1);              /* the Bind failed: that execution failed, once */
    CHECK_EQ(recs[0].d.status, PGW_STATUS_ERROR);
    CHECK_STR(recs[0].sqlstate, "26000");
}

static void test_parse_error_is_one_event(void)
{
    reset();
    P("", "SELEC 1"); B("", "", 0); Dsc('P', ""); E("", 0); S();
    rE("42601"); rZ('I');
    CHECK_EQ(nrec, 1);
    CHECK_EQ(recs[0].d.status, PGW_STATUS_ERROR);
    CHECK_STR(recs[0].text, "SELEC 1");
    CHECK_STR(recs[0].sqlstate, "42601");
    /* A Parse alone (a prepare): its failure is still reported. */
    P("s9", "SELEC 2"); S();
    rE("42601"); rZ('I');
    CHECK_EQ(nrec, 2);
    CHECK_STR(recs[1].text, "SELEC 2");
    CHECK_STR(recs[1].stmt, "s9");
    CHECK_EQ(T.count, 0);
}

static void test_pipeline_error_skips_until_sync(void)
{
    reset();
    P("", "SELECT 1"); B("", "", 0); E("", 0);
    P("", "SELECT 1/0"); B("", "", 0); E("", 0);
    P("", "SELECT 3"); B("", "", 0); E("", 0);
    S();
    r1(); r2(); rD(); rC("SELECT 1");
    r1(); r2(); rE("22012");
    rZ('I');
    CHECK_EQ(nrec, 3);
    CHECK_EQ(T.count, 0);
    CHECK_EQ(recs[0].d.status, PGW_STATUS_OK);
    CHECK_EQ(recs[1].d.status, PGW_STATUS_ERROR);
    CHECK_STR(recs[1].text, "SELECT 1/0");
    CHECK_EQ(recs[2].d.status, PGW_STATUS_SKIPPED);
    CHECK_STR(recs[2].text, "SELECT 3");
    /* The session goes on normally after the Sync. */
    nrec = 0;
    P("", "SELECT 4"); B("", "", 0); E("", 0); S();
    r1(); r2(); rD(); rC("SELECT 1"); rZ('I');
    CHECK_EQ(nrec, 1);
    CHECK_EQ(recs[0].d.status, PGW_STATUS_OK);
}

static void test_error_after_all_queued(void)
{
    /* The error arrives when nothing is queued behind the failed Execute:
     * what the client sends next, up to Sync, is skipped by the server. */
    reset();
    P("", "SELECT 1/0"); B("", "", 0); E("", 0);
    r1(); r2(); rE("22012");
    B("", "", 0); E("", 0); S();
    rZ('I');
    CHECK_EQ(nrec, 2);
    CHECK_EQ(recs[0].d.status, PGW_STATUS_ERROR);
    CHECK_EQ(recs[1].d.status, PGW_STATUS_SKIPPED);
    CHECK_EQ(T.count, 0);
}

static void test_skipped_after_error_keeps_text(void)
{
    /* The error is seen before the rest of the pipeline arrives: the server
     * skips those messages, and the Execute is reported with its text. */
    reset();
    P("", "SELECT 1/0"); B("", "", 0); E("", 0);
    r1(); r2(); rE("22012");
    P("", "SELECT 42"); B("", "", 0); E("", 0); S();
    rZ('I');
    CHECK_EQ(nrec, 2);
    CHECK_EQ(recs[1].d.status, PGW_STATUS_SKIPPED);
    CHECK_STR(recs[1].text, "SELECT 42");
    CHECK_EQ(T.count, 0);
    CHECK(T.skip_stmt == NULL);
}

static void test_portal_suspended(void)
{
    reset();
    Q("BEGIN"); rC("BEGIN"); rZ('T');
    P("", "SELECT g FROM generate_series(1,3) g"); B("c1", "", 0);
    E("c1", 2); S();
    r1(); r2(); rD(); rD(); rs(); rZ('T');
    E("c1", 2); S();
    rD(); rC("SELECT 1"); rZ('T');
    CHECK_EQ(nrec, 2);
    CHECK_STR(recs[1].text, "SELECT g FROM generate_series(1,3) g");
    /* The tag counts the last fetch only ("SELECT 1"): rows are the sum. */
    CHECK_EQ(recs[1].d.rows, 3);
    CHECK(recs[1].d.has_rows);
    CHECK_STR(recs[1].tag, "SELECT 1");
    CHECK_STR(recs[1].portal, "c1");
    /* The same for a RETURNING portal: the server ran it to the end at the
     * first Execute, but its tag counts only what the last fetch returned;
     * a last fetch that finds nothing left says 0. */
    nrec = 0;
    P("ins", "INSERT INTO t SELECT g FROM generate_series(1,4) g RETURNING *");
    B("r1", "ins", 0); E("r1", 2); S();
    r1(); r2(); rD(); rD(); rs(); rZ('T');
    E("r1", 2); S(); rD(); rD(); rs(); rZ('T');
    E("r1", 2); S(); rC("INSERT 0 0"); rZ('T');
    CHECK_EQ(nrec, 1);
    CHECK_EQ(recs[0].d.rows, 4);
    CHECK(recs[0].d.has_rows);
    CHECK_EQ(recs[0].d.status, PGW_STATUS_OK);
    /* A portal suspended and then closed reports what it returned. */
    nrec = 0;
    B("c2", "", 0); E("c2", 2); S();
    r2(); rD(); rD(); rs(); rZ('T');
    CHECK_EQ(nrec, 0);
    Cls('P', "c2"); S(); r3(); rZ('T');
    CHECK_EQ(nrec, 1);
    CHECK_EQ(recs[0].d.rows, 2);
    CHECK_EQ(recs[0].d.status, PGW_STATUS_OK);
}

static void test_copy(void)
{
    reset();
    Q("COPY t FROM STDIN");
    rG(); Fcopy(10); Fcopy(10); Fcopydone(); rC("COPY 2"); rZ('I');
    CHECK_EQ(nrec, 1);
    CHECK_EQ(recs[0].d.copy_dir, PGW_COPY_IN);
    CHECK_EQ(recs[0].d.copy_bytes, 20);
    CHECK_EQ(recs[0].d.rows, 2);
    nrec = 0;
    Q("COPY t TO STDOUT");
    rH(); rd(7); rd(7); rd(7); rc(); rC("COPY 3"); rZ('I');
    CHECK_EQ(nrec, 1);
    CHECK_EQ(recs[0].d.copy_dir, PGW_COPY_OUT);
    CHECK_EQ(recs[0].d.copy_bytes, 21);
    CHECK_EQ(recs[0].d.rows, 3);
    CHECK(recs[0].d.bytes >= 21);
}

static void rW(void) { pgw_wb_t *w = wb('W'); pgw_wb_u8(w, 0); pgw_wb_u16(w, 0); be(w); }

/* A walsender session: a command answers with several results and its own
 * tag last; one event at ReadyForQuery carries all it returned. */
static void test_replication_commands(void)
{
    reset();
    T.replication = 1;
    Q("BASE_BACKUP (LABEL 'x')");
    rT(); rD(); rC("SELECT 1");                     /* the start position */
    rT(); rD(); rD(); rC("SELECT 2");               /* the tablespaces */
    CHECK_EQ(nrec, 0);
    rH(); rd(100); rd(100); rd(50); rc();           /* the archive */
    rT(); rD(); rC("SELECT 1");                     /* the end position */
    rC("BASE_BACKUP");
    CHECK_EQ(nrec, 0);
    rZ('I');
    CHECK_EQ(nrec, 1);
    CHECK_STR(recs[0].tag, "BASE_BACKUP");
    CHECK_EQ(recs[0].d.status, PGW_STATUS_OK);
    CHECK_EQ(recs[0].d.copy_dir, PGW_COPY_OUT);
    CHECK_EQ(recs[0].d.copy_bytes, 250);
    CHECK(recs[0].d.bytes > 250);
    CHECK_EQ(T.count, 0);

    /* CopyBoth: the client's replies are not the stream's bytes */
    nrec = 0;
    Q("START_REPLICATION SLOT s 0/2000000 TIMELINE 1");
    rW(); rd(40); Fcopy(9); rd(40); Fcopy(9); Fcopydone(); rc();
    rC("START_STREAMING"); rC("START_REPLICATION");
    rZ('I');
    CHECK_EQ(nrec, 1);
    CHECK_STR(recs[0].tag, "START_REPLICATION");
    CHECK_EQ(recs[0].d.copy_dir, PGW_COPY_OUT);
    CHECK_EQ(recs[0].d.copy_bytes, 80);

    /* an error is the command's outcome; an end before ReadyForQuery still
     * reports the command that completed */
    nrec = 0;
    Q("DROP_REPLICATION_SLOT nosuch");
    rE("42704"); rZ('I');
    Q("IDENTIFY_SYSTEM");
    rT(); rD(); rC("IDENTIFY_SYSTEM");
    pgw_tracker_finish(&T, now);
    CHECK_EQ(nrec, 2);
    CHECK_EQ(recs[0].d.status, PGW_STATUS_ERROR);
    CHECK_STR(recs[0].sqlstate, "42704");
    CHECK_EQ(recs[1].d.status, PGW_STATUS_OK);
    CHECK_STR(recs[1].tag, "IDENTIFY_SYSTEM");
    CHECK_EQ(recs[1].d.rows, 1);

    /* an ordinary session reports each statement at its CommandComplete */
    reset();
    Q("SELECT 1");
    rT(); rD(); rC("SELECT 1");
    CHECK_EQ(nrec, 1);
    rZ('I');
}

static void test_cancel_and_unknown(void)
{
    reset();
    Q("SELECT pg_sleep(30)");
    rE("57014"); rZ('I');
    CHECK_EQ(nrec, 1);
    CHECK_EQ(recs[0].d.status, PGW_STATUS_CANCELLED);
    nrec = 0;
    P("", "UPDATE big SET x = 1"); B("", "", 0); E("", 0); S();
    r1(); r2();
    pgw_tracker_finish(&T, now);    /* the connection died before the result */
    CHECK_EQ(nrec, 1);
    CHECK_EQ(recs[0].d.status, PGW_STATUS_UNKNOWN);
    CHECK_STR(recs[0].text, "UPDATE big SET x = 1");
    pgw_tracker_init(&T, on_emit, split_semicolons, NULL);
}

static void rEsev(const char *severity, const char *sqlstate)
{
    pgw_wb_t *w = wb('E');
    pgw_wb_u8(w, 'S'); pgw_wb_cstr(w, severity);
    pgw_wb_u8(w, 'V'); pgw_wb_cstr(w, severity);
    pgw_wb_u8(w, 'C'); pgw_wb_cstr(w, sqlstate);
    pgw_wb_u8(w, 'M'); pgw_wb_cstr(w, "boom");
    pgw_wb_u8(w, 0);
    be(w);
}

/* Outside a transaction block the server commits at Sync, after the
 * statement's CommandComplete: an execution is reported when its Sync's
 * fate is known. */
static void test_commit_at_sync(void)
{
    /* A deferred constraint fails the implicit commit: the INSERT that ran
     * was rolled back and is reported with the commit's error. */
    reset();
    P("", "INSERT INTO child VALUES (1)"); B("", "", 0); E("", 0); S();
    r1(); r2(); rC("INSERT 0 1");
    CHECK_EQ(nrec, 0);              /* not yet: the commit is to come */
    rE("23503"); rZ('I');
    CHECK_EQ(nrec, 1);
    CHECK_EQ(recs[0].d.status, PGW_STATUS_ERROR);
    CHECK_STR(recs[0].sqlstate, "23503");
    CHECK_STR(recs[0].text, "INSERT INTO child VALUES (1)");
    CHECK_STR(recs[0].tag, "(none)");
    CHECK_EQ(T.errors, 1);

    /* A FATAL (the server shutting down) after CommandComplete and before
     * the Sync: never committed. */
    reset();
    P("", "INSERT INTO t VALUES (2)"); B("", "", 0); E("", 0); S();
    r1(); r2(); rC("INSERT 0 1"); rEsev("FATAL", "57P01");
    CHECK_EQ(nrec, 1);
    CHECK_EQ(recs[0].d.status, PGW_STATUS_ERROR);
    CHECK_STR(recs[0].sqlstate, "57P01");

    /* The same before the client sent its Sync (the FIFO is empty). */
    reset();
    P("", "INSERT INTO t VALUES (2)"); B("", "", 0); E("", 0);
    r1(); r2(); rC("INSERT 0 1"); rEsev("FATAL", "57P01");
    CHECK_EQ(nrec, 1);
    CHECK_EQ(recs[0].d.status, PGW_STATUS_ERROR);
    CHECK_STR(recs[0].sqlstate, "57P01");

    /* The connection lost between CommandComplete and ReadyForQuery. */
    reset();
    P("", "INSERT INTO t VALUES (3)"); B("", "", 0); E("", 0); S();
    r1(); r2(); rC("INSERT 0 1");
    pgw_tracker_finish(&T, now);
    CHECK_EQ(nrec, 1);
    CHECK_EQ(recs[0].d.status, PGW_STATUS_UNKNOWN);
    pgw_tracker_init(&T, on_emit, split_semicolons, NULL);

    /* A pipeline of three executions and one Sync that commits: three ok
     * events in order at ReadyForQuery, with their tags and durations
     * measured to their own CommandComplete. */
    reset();
    P("s", "INSERT INTO t VALUES ($1)");
    for (int i = 0; i < 3; i++) {
        B("", "s", 1); E("", 0);
    }
    S();
    r1();
    int64_t done[3];
    for (int i = 0; i < 3; i++) {
        r2(); rC(i == 2 ? "INSERT 0 12345678901234567890123456789012345678901234" : "INSERT 0 1");
        done[i] = now;
    }
    CHECK_EQ(nrec, 0);
    now += 5000;
    rZ('I');
    CHECK_EQ(nrec, 3);
    for (int i = 0; i < 3; i++) {
        CHECK_EQ(recs[i].d.status, PGW_STATUS_OK);
        CHECK_STR(recs[i].stmt, "s");
        CHECK(recs[i].d.time_us + recs[i].d.duration_us == done[i]);
    }
    CHECK_STR(recs[0].tag, "INSERT 0 1");
    CHECK(strncmp(recs[2].tag, "INSERT 0 1234567890", 19) == 0);   /* a tag longer than the inline copy */

    /* A COMMIT ends its transaction at its own CommandComplete, as a
     * statement that cannot run in a block (CREATE DATABASE) does: a FATAL
     * before the Sync no longer makes them errors. What was held before the
     * COMMIT belonged to the committed block: ok, first. */
    reset();
    P("", "INSERT INTO t VALUES (7)"); B("", "", 0); E("", 0);
    P("", "COMMIT"); B("", "", 0); E("", 0); S();
    r1(); r2(); rC("INSERT 0 1");
    CHECK_EQ(nrec, 0);
    r1(); r2(); rC("COMMIT");
    CHECK_EQ(nrec, 2);
    CHECK_EQ(recs[0].d.status, PGW_STATUS_OK);
    CHECK_STR(recs[0].tag, "INSERT 0 1");
    CHECK_EQ(recs[1].d.status, PGW_STATUS_OK);
    CHECK_STR(recs[1].tag, "COMMIT");
    rEsev("FATAL", "57P01");
    CHECK_EQ(nrec, 2);
    reset();
    P("", "CREATE DATABASE d"); B("", "", 0); E("", 0); S();
    r1(); r2(); rC("CREATE DATABASE");
    CHECK_EQ(nrec, 1);
    CHECK_EQ(recs[0].d.status, PGW_STATUS_OK);
    pgw_tracker_finish(&T, now);
    CHECK_EQ(nrec, 1);
    pgw_tracker_init(&T, on_emit, split_semicolons, NULL);
    /* CREATE INDEX commits at Sync unless CONCURRENTLY, which its tag does
     * not tell: it waits for its Sync like any other. */
    reset();
    P("", "CREATE INDEX i ON t (a)"); B("", "", 0); E("", 0); S();
    r1(); r2(); rC("CREATE INDEX");
    CHECK_EQ(nrec, 0);
    rZ('I');
    CHECK_EQ(nrec, 1);
    /* With the text's analysis asked (own_xact), the CONCURRENTLY form is
     * reported at its CommandComplete and survives a FATAL before Sync;
     * the plain form still waits; other tags never ask. */
    reset();
    T.own_xact = own_xact_concurrently;
    own_xact_calls = 0;
    P("", "INSERT INTO t VALUES (1)"); B("", "", 0); E("", 0); S();
    r1(); r2(); rC("INSERT 0 1"); rZ('I');
    CHECK_EQ(own_xact_calls, 0);
    P("", "CREATE INDEX CONCURRENTLY i ON t (a)"); B("", "", 0); E("", 0); S();
    r1(); r2(); rC("CREATE INDEX");
    CHECK_EQ(own_xact_calls, 1);
    CHECK_EQ(nrec, 2);
    CHECK_EQ(recs[1].d.status, PGW_STATUS_OK);
    CHECK_STR(recs[1].text, "CREATE INDEX CONCURRENTLY i ON t (a)");
    rEsev("FATAL", "57P01");
    CHECK_EQ(nrec, 2);
    reset();
    T.own_xact = own_xact_concurrently;
    P("", "CREATE INDEX i ON t (a)"); B("", "", 0); E("", 0); S();
    r1(); r2(); rC("CREATE INDEX");
    CHECK_EQ(own_xact_calls, 2);
    CHECK_EQ(nrec, 0);
    rEsev("FATAL", "57P01");
    CHECK_EQ(nrec, 1);
    CHECK_EQ(recs[0].d.status, PGW_STATUS_ERROR);

    /* A later statement of the pipeline fails: the earlier one is reported
     * first (as executed, as a multi-statement Query reports it), then the
     * failure, then the skipped one; a second batch is unaffected. */
    reset();
    P("", "INSERT INTO t VALUES (4)"); B("", "", 0); E("", 0);
    P("", "SELECT 1/0"); B("", "", 0); E("", 0);
    P("", "SELECT 5"); B("", "", 0); E("", 0); S();
    r1(); r2(); rC("INSERT 0 1"); r1(); r2(); rE("22012"); rZ('I');
    CHECK_EQ(nrec, 3);
    CHECK_EQ(recs[0].d.status, PGW_STATUS_OK);
    CHECK_STR(recs[0].text, "INSERT INTO t VALUES (4)");
    CHECK_EQ(recs[1].d.status, PGW_STATUS_ERROR);
    CHECK_STR(recs[1].sqlstate, "22012");
    CHECK_EQ(recs[2].d.status, PGW_STATUS_SKIPPED);
    P("", "SELECT 6"); B("", "", 0); E("", 0); S();
    r1(); r2(); rT(); rD(); rC("SELECT 1"); rZ('I');
    CHECK_EQ(nrec, 4);
    CHECK_EQ(recs[3].d.status, PGW_STATUS_OK);
    CHECK_EQ(recs[3].d.rows, 1);

    /* A pipeline longer than the held list reports the oldest as executed
     * to make room; every execution is still reported once, in order. */
    reset();
    P("s", "INSERT INTO t VALUES ($1)");
    r1();
    for (int i = 0; i < 1030; i++) {
        B("", "s", 1); E("", 0);
        r2(); rC("INSERT 0 1");
    }
    CHECK_EQ(T.statements, 1024);
    S(); rZ('I');
    CHECK_EQ(T.statements, 1030);
    CHECK_EQ(nrec, MAXREC);
    CHECK_EQ(recs[MAXREC - 1].d.status, PGW_STATUS_OK);

    /* An error at Sync with nothing held (a commit of no executions) is
     * still counted. */
    reset();
    S(); rE("40001"); rZ('I');
    CHECK_EQ(nrec, 0);
    CHECK_EQ(T.errors, 1);
}

/* Memos: what the tracker's user learned about a text lives as long as the
 * text, and is handed back with every execution of it. */
static int memos_live, memos_made;

static void memo_release(pgw_memo_t *m)
{
    memos_live--;
    free(m);
}

static pgw_memo_t *memo_new(void)
{
    pgw_memo_t *m = malloc(sizeof *m);
    if (!m)
        abort();
    m->free = memo_release;
    memos_live++;
    memos_made++;
    return m;
}

static pgw_memo_t *seen_memo[MAXREC];

static void on_emit_memo(void *ud, const pgw_stmt_done_t *d)
{
    seen_memo[nrec] = d->memo ? *d->memo : NULL;
    on_emit(ud, d);
    if (d->memo && !*d->memo)
        *d->memo = memo_new();
}

static unsigned split_memo(void *ud, const char *text, size_t len, uint32_t (*spans)[2], unsigned cap,
                           pgw_memo_t **memo)
{
    unsigned n = split_semicolons(ud, text, len, spans, cap, memo);
    if (n == 1)
        *memo = memo_new();
    return n;
}

static void test_memo(void)
{
    pgw_tracker_finish(&T, now);
    pgw_tracker_init(&T, on_emit_memo, split_memo, NULL);
    nrec = 0;
    memos_live = memos_made = 0;
    /* A lone statement's Query memo comes back with its report, then goes. */
    Q("SELECT 1");
    CHECK_EQ(memos_live, 1);
    rT(); rD(); rC("SELECT 1"); rZ('I');
    CHECK_EQ(nrec, 1);
    CHECK(seen_memo[0] != NULL);
    CHECK_EQ(memos_live, 0);
    /* A prepared statement: the first execution leaves a memo, the next
     * ones get that same memo; it goes with the statement. */
    P("s1", "SELECT $1"); S(); r1(); rZ('I');
    for (int i = 0; i < 3; i++) {
        B("", "s1", 1); E("", 0); S();
        r2(); rD(); rC("SELECT 1"); rZ('I');
    }
    CHECK_EQ(nrec, 4);
    CHECK(seen_memo[1] == NULL);
    CHECK(seen_memo[2] != NULL && seen_memo[2] == seen_memo[3]);
    CHECK_EQ(memos_live, 2 - 1);    /* the Query's is gone, the statement's is kept */
    Cls('S', "s1"); S(); r3(); rZ('I');
    CHECK_EQ(memos_live, 0);
    /* A memo left on a statement that the session never closes goes at the end. */
    P("s2", "SELECT 2"); B("", "s2", 0); E("", 0); S();
    r1(); r2(); rD(); rC("SELECT 1"); rZ('I');
    CHECK_EQ(memos_live, 1);
    pgw_tracker_finish(&T, now);
    CHECK_EQ(memos_live, 0);
    CHECK_EQ(memos_made, 3);
    pgw_tracker_init(&T, on_emit, split_semicolons, NULL);
}

static void test_function_call(void)
{
    reset();
    F(1598); rV(); rZ('I');
    CHECK_EQ(nrec, 1);
    CHECK_EQ(recs[0].d.protocol, PGW_PROTOCOL_FUNCTION_CALL);
    CHECK_EQ(recs[0].d.status, PGW_STATUS_OK);
    F(1598); rE("42883"); rZ('I');
    CHECK_EQ(nrec, 2);
    CHECK_EQ(recs[1].d.status, PGW_STATUS_ERROR);

    /* The server commits after the answer: a commit that fails there (a
     * deferred constraint) makes the call's one event that error, and its
     * duration ends at the answer when it commits. */
    F(1598); rV(); rE("23503"); rZ('I');
    CHECK_EQ(nrec, 3);
    CHECK_EQ(recs[2].d.status, PGW_STATUS_ERROR);
    CHECK_STR(recs[2].sqlstate, "23503");
    F(1598);
    int64_t t0 = now;
    rV();
    int64_t answered = now;
    now += 7000;
    rZ('I');
    CHECK_EQ(nrec, 4);
    CHECK_EQ(recs[3].d.status, PGW_STATUS_OK);
    CHECK(recs[3].d.time_us >= t0 && recs[3].d.time_us + recs[3].d.duration_us == answered);
    /* Answered, then the session lost before ReadyForQuery: unknown. */
    F(1598); rV();
    pgw_tracker_finish(&T, now);
    CHECK_EQ(nrec, 5);
    CHECK_EQ(recs[4].d.status, PGW_STATUS_UNKNOWN);
    pgw_tracker_init(&T, on_emit, split_semicolons, NULL);
}

/* A call says which function it is, with its arguments as $n, and counts
 * the bytes of its answer: libpq's lo_export reads a large object through
 * loread calls, whose answers are the object's bytes. */
static void test_function_call_text_and_bytes(void)
{
    reset();
    Fargs(954, 2); rVn(300); rZ('I');           /* loread(fd, 300) */
    CHECK_EQ(nrec, 1);
    CHECK_STR(recs[0].text, "SELECT pg_catalog.loread($1, $2)");
    CHECK_EQ(recs[0].d.nparams, 2);
    CHECK(recs[0].d.params == NULL);            /* values are not logged by default */
    CHECK_EQ(recs[0].d.bytes, 1 + 4 + 4 + 300);
    Fargs(16500, 20); rVn(0); rZ('I');          /* a function of the database's own */
    CHECK_EQ(nrec, 2);
    CHECK_STR(recs[1].text, "FUNCTION CALL OID 16500 ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, "
              "$11, $12, $13, $14, $15, $16, ..., $20)");
    CHECK_EQ(recs[1].d.nparams, 20);
    F(957); rE("42501"); rZ('I');               /* lo_creat() with no argument, refused */
    CHECK_EQ(nrec, 3);
    CHECK_STR(recs[2].text, "SELECT pg_catalog.lo_creat()");
    CHECK_EQ(recs[2].d.status, PGW_STATUS_ERROR);
    CHECK_EQ(recs[2].d.bytes, 0);

    /* With parameter logging, the arguments as a Bind's: binary, cut at
     * the maximum. */
    T.param_max = 2;
    Fargs(955, 2); rVn(4); rZ('I');
    CHECK_EQ(nrec, 4);
    CHECK_EQ(recs[3].nvalues, 2);
    CHECK(recs[3].value_binary[0] && recs[3].value_len[0] == 2);
    CHECK(recs[3].value_binary[1] && recs[3].value_len[1] == 2);
    /* A malformed call is forwarded and still has its event, without text. */
    pgw_wb_t *w = wb('F'); pgw_wb_u32(w, 955); pgw_wb_u16(w, 3); fe(w);
    rE("08P01"); rZ('I');
    CHECK_EQ(nrec, 5);
    CHECK_STR(recs[4].text, "");
    CHECK_EQ(recs[4].d.protocol, PGW_PROTOCOL_FUNCTION_CALL);
    T.param_max = 0;
    pgw_tracker_finish(&T, now);
    pgw_tracker_init(&T, on_emit, split_semicolons, NULL);
}

int main(void)
{
    pgw_tracker_init(&T, on_emit, split_semicolons, NULL);
    test_simple_multi();
    test_simple_error_skips_rest();
    test_empty_query();
    test_extended_unnamed();
    test_named_statement_reused();
    test_parse_error_is_one_event();
    test_pipeline_error_skips_until_sync();
    test_error_after_all_queued();
    test_skipped_after_error_keeps_text();
    test_portal_suspended();
    test_replication_commands();
    test_copy();
    test_cancel_and_unknown();
    test_commit_at_sync();
    test_function_call();
    test_function_call_text_and_bytes();
    test_memo();
    pgw_tracker_finish(&T, now);
    CHECK_DONE();
}
