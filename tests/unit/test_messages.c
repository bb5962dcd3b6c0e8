/* Message reader and builder tests: every sample is built, framed, parsed and
 * re-encoded from the parsed fields alone, which must give back the very same
 * bytes. Then every proper prefix of each body, and each body with a byte
 * too many, must be refused; bodies sit just before a PROT_NONE page. */
#include "check.h"
#include "samples.h"

#include "pgwarden/protocol.h"

static guard_t g_in, g_body;
static pgw_msg_t g_msg;
static unsigned g_n;

static int grab(void *ud, const pgw_msg_t *m)
{
    (void)ud;
    g_msg = *m;
    g_n++;
    return 0;
}

/* Frames one message with every body wanted; the body stays valid until the
 * next call. */
static pgw_msg_t frame1(pgw_side_t side, const uint8_t *b, size_t n)
{
    static const uint8_t v3[] = { 0, 0, 0, 9, 0, 3, 0, 0, 0 };
    pgw_framer_t f;

    pgw_framer_init(&f, side, 0, grab, NULL);
    pgw_framer_want(&f, 'D', 1);
    pgw_framer_want(&f, 'd', 1);
    if (side == PGW_FRONTEND && b[0] != 0)   /* a regular message: get past startup */
        CHECK_EQ(pgw_framer_feed(&f, v3, sizeof(v3)), (ssize_t)sizeof(v3));
    g_n = 0;
    memset(&g_msg, 0, sizeof(g_msg));
    CHECK_EQ(pgw_framer_feed(&f, guard_place(&g_in, b, n), n), (ssize_t)n);
    CHECK_EQ(g_n, 1);
    pgw_framer_free(&f);
    return g_msg;
}

static pgw_msg_t body_msg(uint8_t type, const void *body, size_t n)
{
    pgw_msg_t m = { .type = type, .len = (uint32_t)n + 4, .body_len = (uint32_t)n };
    m.body = guard_place(&g_body, body, n);
    return m;
}

static void put_values(pgw_wb_t *w, const pgw_bind_t *b)
{
    uint32_t cursor = 0;
    const uint8_t *val;
    int32_t len;
    uint16_t fmt;

    for (uint16_t i = 0; pgw_bind_next_param(b, &cursor, i, &val, &len, &fmt); i++) {
        pgw_wb_u32(w, (uint32_t)len);
        if (len > 0)
            pgw_wb_bytes(w, val, (size_t)len);
    }
}

static void put_error_fields(pgw_wb_t *w, const pgw_error_t *e)
{
    const struct { uint8_t code; const char *v; } f[] = {
        { 'S', e->severity_local },
        { 'V', e->severity != e->severity_local ? e->severity : NULL },
        { 'C', e->sqlstate }, { 'M', e->message }, { 'D', e->detail }, { 'H', e->hint },
        { 'P', e->position }, { 'p', e->internal_position }, { 'q', e->internal_query },
        { 'W', e->where }, { 's', e->schema }, { 't', e->table }, { 'c', e->column },
        { 'd', e->datatype }, { 'n', e->constraint }, { 'F', e->file }, { 'L', e->line },
        { 'R', e->routine },
    };
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
        if (f[i].v) {
            pgw_wb_u8(w, f[i].code);
            pgw_wb_cstr(w, f[i].v);
        }
    }
    pgw_wb_u8(w, 0);
}

/* Writes the message again from its parsed fields only. -1 if it did not
 * parse; the raw body is copied only for types that have no reader. */
static int reencode(pgw_side_t side, const pgw_msg_t *m, pgw_wb_t *w)
{
    pgw_wb_begin(w, m->type);
    if (m->type == 0) {
        pgw_startup_t s;
        if (pgw_parse_startup(m, &s) < 0)
            return -1;
        pgw_wb_u32(w, s.code);
        if (s.code == PGW_CODE_CANCEL) {
            pgw_wb_u32(w, s.cancel_pid);
            pgw_wb_u32(w, s.cancel_key);
        } else if (s.code >> 16 == 3) {
            for (uint32_t i = 0; i < s.nkept; i++) {
                pgw_wb_cstr(w, s.names[i]);
                pgw_wb_cstr(w, s.values[i]);
            }
            pgw_wb_u8(w, 0);
        }
    } else if (side == PGW_FRONTEND) {
        switch (m->type) {
        case 'Q': {
            pgw_query_t q;
            if (pgw_parse_query(m, &q) < 0)
                return -1;
            CHECK_EQ(q.text_len, strlen(q.text));
            pgw_wb_cstr(w, q.text);
            break;
        }
        case 'P': {
            pgw_parse_t p;
            if (pgw_parse_parse(m, &p) < 0)
                return -1;
            CHECK_EQ(p.text_len, strlen(p.text));
            pgw_wb_cstr(w, p.name);
            pgw_wb_cstr(w, p.text);
            pgw_wb_u16(w, p.nparams);
            pgw_wb_bytes(w, p.param_oids, (size_t)p.nparams * 4);
            break;
        }
        case 'B': {
            pgw_bind_t b;
            if (pgw_parse_bind(m, &b) < 0)
                return -1;
            pgw_wb_cstr(w, b.portal);
            pgw_wb_cstr(w, b.stmt);
            pgw_wb_u16(w, b.nformats);
            pgw_wb_bytes(w, b.formats, (size_t)b.nformats * 2);
            pgw_wb_u16(w, b.nparams);
            put_values(w, &b);
            pgw_wb_u16(w, b.nresult_formats);
            pgw_wb_bytes(w, b.result_formats, (size_t)b.nresult_formats * 2);
            break;
        }
        case 'D':
        case 'C': {
            pgw_target_t t;
            if ((m->type == 'D' ? pgw_parse_describe(m, &t) : pgw_parse_close(m, &t)) < 0)
                return -1;
            pgw_wb_u8(w, t.kind);
            pgw_wb_cstr(w, t.name);
            break;
        }
        case 'E': {
            pgw_execute_t e;
            if (pgw_parse_execute(m, &e) < 0)
                return -1;
            pgw_wb_cstr(w, e.portal);
            pgw_wb_u32(w, e.max_rows);
            break;
        }
        case 'F': {
            pgw_fcall_t fc;
            pgw_bind_t args = { 0 };
            if (pgw_parse_function_call(m, &fc) < 0)
                return -1;
            pgw_wb_u32(w, fc.oid);
            pgw_wb_u16(w, fc.nformats);
            pgw_wb_bytes(w, fc.formats, (size_t)fc.nformats * 2);
            pgw_wb_u16(w, fc.nargs);
            args.nformats = fc.nformats;
            args.formats = fc.formats;
            args.nparams = fc.nargs;
            args.params = fc.args;
            put_values(w, &args);
            pgw_wb_u16(w, fc.result_format);
            break;
        }
        case 'f': {   /* CopyFail has no reader of its own */
            pgw_rd_t r;
            const char *why;
            if (!m->body)
                return -1;
            pgw_rd_init(&r, m->body, m->body_len);
            why = pgw_rd_cstr(&r);
            if (r.bad || r.p != r.end)
                return -1;
            pgw_wb_cstr(w, why);
            break;
        }
        default:      /* p, d, c, H, S, X: nothing to audit in them */
            pgw_wb_bytes(w, m->body, m->body_len);
            break;
        }
    } else {
        switch (m->type) {
        case 'R': {
            pgw_auth_t a;
            if (pgw_parse_auth(m, &a) < 0)
                return -1;
            pgw_wb_u32(w, a.code);
            pgw_wb_bytes(w, a.data, a.data_len);
            break;
        }
        case 'K': {
            pgw_keydata_t k;
            if (pgw_parse_keydata(m, &k) < 0)
                return -1;
            pgw_wb_u32(w, k.pid);
            pgw_wb_u32(w, k.key);
            break;
        }
        case 'S': {
            pgw_param_status_t p;
            if (pgw_parse_param_status(m, &p) < 0)
                return -1;
            pgw_wb_cstr(w, p.name);
            pgw_wb_cstr(w, p.value);
            break;
        }
        case 'Z': {
            pgw_ready_t z;
            if (pgw_parse_ready(m, &z) < 0)
                return -1;
            pgw_wb_u8(w, z.status);
            break;
        }
        case 'C': {
            pgw_complete_t c;
            if (pgw_parse_command_complete(m, &c) < 0)
                return -1;
            pgw_wb_cstr(w, c.tag);
            break;
        }
        case 'E':
        case 'N': {
            pgw_error_t e;
            if (pgw_parse_error(m, &e) < 0)
                return -1;
            put_error_fields(w, &e);
            break;
        }
        case 'A': {
            pgw_notify_t a;
            if (pgw_parse_notification(m, &a) < 0)
                return -1;
            pgw_wb_u32(w, a.pid);
            pgw_wb_cstr(w, a.channel);
            pgw_wb_cstr(w, a.payload);
            break;
        }
        case 'T': {
            pgw_rowdesc_t t;
            if (pgw_parse_row_description(m, &t) < 0)
                return -1;
            pgw_wb_u16(w, t.nfields);
            pgw_wb_bytes(w, t.fields, (size_t)(m->body + m->body_len - t.fields));
            break;
        }
        case 'G':
        case 'H':
        case 'W': {
            pgw_copy_resp_t c;
            if (pgw_parse_copy_response(m, &c) < 0)
                return -1;
            pgw_wb_u8(w, c.format);
            pgw_wb_u16(w, c.ncols);
            pgw_wb_bytes(w, c.formats, (size_t)c.ncols * 2);
            break;
        }
        case 'v': {
            pgw_negotiate_t v;
            const char *o;
            if (pgw_parse_negotiate(m, &v) < 0)
                return -1;
            pgw_wb_u32(w, v.minor);
            pgw_wb_u32(w, v.nunrecognized);
            o = v.options;
            for (uint32_t i = 0; i < v.nunrecognized; i++, o += strlen(o) + 1)
                pgw_wb_cstr(w, o);
            break;
        }
        case 't': {
            pgw_param_desc_t t;
            if (pgw_parse_param_description(m, &t) < 0)
                return -1;
            pgw_wb_u16(w, t.nparams);
            pgw_wb_bytes(w, t.oids, (size_t)t.nparams * 4);
            break;
        }
        case 'V': {
            pgw_fresult_t v;
            if (pgw_parse_function_result(m, &v) < 0)
                return -1;
            pgw_wb_u32(w, (uint32_t)v.len);
            if (v.len > 0)
                pgw_wb_bytes(w, v.value, (size_t)v.len);
            break;
        }
        default:      /* D, d, c, 1, 2, 3, n, I, s */
            pgw_wb_bytes(w, m->body, m->body_len);
            break;
        }
    }
    pgw_wb_end(w);
    return 0;
}

/* Whether the type has a reader that must refuse truncated or over-long
 * bodies. Some bodies legitimately end anywhere: authentication exchanges
 * carry opaque data after their code, and SSLRequest-like packets carry
 * nothing the proxy reads. */
static int has_strict_reader(pgw_side_t side, const pgw_msg_t *m, uint32_t *opaque_from)
{
    *opaque_from = UINT32_MAX;
    if (m->type == 0) {
        if (m->code == PGW_CODE_CANCEL || m->code >> 16 == 3)
            return 1;
        return 0;
    }
    if (side == PGW_FRONTEND)
        return strchr("QPBDCEFf", m->type) != NULL;
    if (m->type == 'R') {
        pgw_auth_t a;
        if (pgw_parse_auth(m, &a) == 0 && a.code != 0 && a.code != 3 && a.code != 5)
            *opaque_from = 4;
        return 1;
    }
    return strchr("KSZCENATGHWvtV", m->type) != NULL;
}

static void test_round_trips(void)
{
    uint8_t out[16384];

    for (size_t i = 0; i < pgw_nsamples; i++) {
        const sample_t *s = &pgw_samples[i];
        size_t n;
        uint8_t *in = sample_build(s, &n);
        pgw_msg_t m = frame1(s->side, in, n);
        pgw_wb_t w;
        uint32_t opaque_from;
        int rc;

        pgw_wb_init(&w, out, sizeof(out));
        rc = reencode(s->side, &m, &w);
        CHECK_EQ(rc, 0);
        CHECK_EQ(pgw_wb_finish(&w), (ssize_t)n);
        CHECK_MEM(out, w.len, in, n);
        if (rc != 0 || w.len != n || memcmp(out, in, n) != 0)
            fprintf(stderr, "    round trip of %s\n", s->name);
        CHECK(strcmp(pgw_msg_name(s->side, m.type), "Unknown") != 0);

        if (has_strict_reader(s->side, &m, &opaque_from)) {
            uint8_t *longer = malloc(m.body_len + 1);
            unsigned bad = 0;

            for (uint32_t k = 0; k < m.body_len; k++) {
                pgw_msg_t t = m;
                t.body = guard_place(&g_body, m.body, k);
                t.body_len = k;
                t.len = m.len - (m.body_len - k);
                pgw_wb_init(&w, out, sizeof(out));
                rc = reencode(s->side, &t, &w);
                if (rc != (k >= opaque_from ? 0 : -1) && bad++ == 0)
                    fprintf(stderr, "    %s: prefix of %u bytes gave %d\n", s->name, k, rc);
            }
            memcpy(longer, m.body, m.body_len);
            longer[m.body_len] = 'x';
            {
                pgw_msg_t t = m;
                t.body = guard_place(&g_body, longer, m.body_len + 1);
                t.body_len++;
                t.len++;
                pgw_wb_init(&w, out, sizeof(out));
                rc = reencode(s->side, &t, &w);
                if (rc != (opaque_from != UINT32_MAX ? 0 : -1) && bad++ == 0)
                    fprintf(stderr, "    %s: a trailing byte gave %d\n", s->name, rc);
            }
            /* A streamed body cannot be read. */
            {
                pgw_msg_t t = m;
                t.body = NULL;
                pgw_wb_init(&w, out, sizeof(out));
                if (reencode(s->side, &t, &w) != -1 && bad++ == 0)
                    fprintf(stderr, "    %s: a NULL body parsed\n", s->name);
            }
            CHECK_EQ(bad, 0);
            free(longer);
        }
        free(in);
    }
}

static pgw_msg_t sample_msg(const char *name)
{
    for (size_t i = 0; i < pgw_nsamples; i++) {
        if (strcmp(pgw_samples[i].name, name) == 0) {
            size_t n;
            uint8_t *in = sample_build(&pgw_samples[i], &n);
            pgw_msg_t m = frame1(pgw_samples[i].side, in, n);
            free(in);
            return m;
        }
    }
    abort();
}

static void test_fields(void)
{
    pgw_msg_t m;
    pgw_startup_t su;
    pgw_bind_t b;
    pgw_error_t e;
    pgw_complete_t c;
    uint32_t cursor = 0;
    const uint8_t *val;
    int32_t len;
    uint16_t fmt;

    m = sample_msg("StartupMessage");
    CHECK_EQ(pgw_parse_startup(&m, &su), 0);
    CHECK_EQ(su.code, PGW_PROTO_V3);
    CHECK_STR(su.user, "alice");
    CHECK_STR(su.database, "shop");
    CHECK_STR(su.application_name, "psql");
    CHECK_STR(su.options, "-c search_path=public");
    CHECK(su.replication == NULL);
    CHECK_EQ(su.nparams, 6);
    CHECK_STR(su.names[5], "_pq_.test_option");

    m = sample_msg("StartupMessage replication 3.2");
    CHECK_EQ(pgw_parse_startup(&m, &su), 0);
    CHECK_STR(su.replication, "database");
    CHECK_STR(su.database, "");

    m = sample_msg("CancelRequest");
    CHECK_EQ(pgw_parse_startup(&m, &su), 0);
    CHECK_EQ(su.cancel_pid, 4242);
    CHECK_EQ(su.cancel_key, 0xDEADBEEFu);
    CHECK(su.user == NULL);

    m = sample_msg("SSLRequest");
    CHECK_EQ(pgw_parse_startup(&m, &su), 0);
    CHECK_EQ(su.code, PGW_CODE_SSL);

    m = sample_msg("Bind");
    CHECK_EQ(pgw_parse_bind(&m, &b), 0);
    CHECK_STR(b.portal, "");
    CHECK_STR(b.stmt, "s1");
    CHECK_EQ(b.nparams, 2);
    CHECK_EQ(pgw_bind_next_param(&b, &cursor, 0, &val, &len, &fmt), 1);
    CHECK(len == 2 && memcmp(val, "42", 2) == 0 && fmt == 0);
    CHECK_EQ(pgw_bind_next_param(&b, &cursor, 1, &val, &len, &fmt), 1);
    CHECK(len == -1 && val == NULL && fmt == 1);
    CHECK_EQ(pgw_bind_next_param(&b, &cursor, 2, &val, &len, &fmt), 0);

    m = sample_msg("Bind binary");   /* one format code applies to all */
    CHECK_EQ(pgw_parse_bind(&m, &b), 0);
    cursor = 0;
    for (uint16_t i = 0; i < 3; i++) {
        CHECK_EQ(pgw_bind_next_param(&b, &cursor, i, &val, &len, &fmt), 1);
        CHECK_EQ(fmt, 1);
        CHECK_EQ(len, i == 0 ? 4 : i == 1 ? 0 : -1);
    }
    CHECK_EQ(pgw_bind_next_param(&b, &cursor, 3, &val, &len, NULL), 0);

    m = sample_msg("ErrorResponse");
    CHECK_EQ(pgw_parse_error(&m, &e), 0);
    CHECK_STR(e.severity, "ERROR");
    CHECK_STR(e.severity_local, "ERREUR");
    CHECK_STR(e.sqlstate, "23505");
    CHECK_STR(e.constraint, "users_pkey");
    CHECK(e.hint == NULL);
    m = sample_msg("ErrorResponse all fields");
    CHECK_EQ(pgw_parse_error(&m, &e), 0);
    CHECK_STR(e.severity, "ERROR");   /* S alone when there is no V */
    CHECK_STR(e.position, "8");

    m = sample_msg("CommandComplete INSERT");
    CHECK_EQ(pgw_parse_command_complete(&m, &c), 0);
    CHECK(c.has_rows && c.rows == 5);
    m = sample_msg("CommandComplete CREATE");
    CHECK_EQ(pgw_parse_command_complete(&m, &c), 0);
    CHECK(!c.has_rows && c.rows == 0);

    {
        pgw_execute_t x;
        pgw_rowdesc_t t;
        pgw_fresult_t v;
        pgw_negotiate_t n;
        pgw_auth_t a;
        pgw_ready_t z;

        m = sample_msg("Execute limit");
        CHECK(pgw_parse_execute(&m, &x) == 0 && x.max_rows == 100);
        CHECK_STR(x.portal, "p1");
        m = sample_msg("RowDescription");
        CHECK(pgw_parse_row_description(&m, &t) == 0 && t.nfields == 2);
        CHECK_STR((const char *)t.fields, "id");
        m = sample_msg("FunctionCallResponse NULL");
        CHECK(pgw_parse_function_result(&m, &v) == 0 && v.len == -1 && v.value == NULL);
        m = sample_msg("NegotiateProtocolVersion");
        CHECK(pgw_parse_negotiate(&m, &n) == 0 && n.nunrecognized == 2);
        CHECK_STR(n.options, "_pq_.test_option");
        m = sample_msg("AuthenticationMD5Password");
        CHECK(pgw_parse_auth(&m, &a) == 0 && a.code == 5 && a.data_len == 4);
        m = sample_msg("ReadyForQuery in transaction");
        CHECK(pgw_parse_ready(&m, &z) == 0 && z.status == 'T');
    }
}

static void test_tags(void)
{
    static const struct { const char *tag; int has; uint64_t rows; } t[] = {
        { "INSERT 0 5", 1, 5 }, { "INSERT 16401 1", 1, 1 }, { "UPDATE 3", 1, 3 },
        { "DELETE 3", 1, 3 }, { "SELECT 10", 1, 10 }, { "MOVE 7", 1, 7 },
        { "FETCH 2", 1, 2 }, { "COPY 100", 1, 100 }, { "MERGE 4", 1, 4 },
        { "SELECT 0", 1, 0 }, { "SELECT 18446744073709551615", 1, UINT64_MAX },
        { "SELECT 18446744073709551616", 0, 0 }, { "CREATE TABLE", 0, 0 },
        { "BEGIN", 0, 0 }, { "SELECT", 0, 0 }, { "SELECT ", 0, 0 },
        { "SELECT 1x", 0, 0 }, { "SELECT -1", 0, 0 }, { "INSERT 0", 0, 0 },
        { "INSERT 0 5 6", 0, 0 }, { "INSERT x 5", 0, 0 }, { "UPDATE  3", 0, 0 },
        { "update 3", 0, 0 }, { "", 0, 0 },
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        pgw_msg_t m = body_msg('C', t[i].tag, strlen(t[i].tag) + 1);
        pgw_complete_t c;
        CHECK_EQ(pgw_parse_command_complete(&m, &c), 0);
        CHECK_STR(c.tag, t[i].tag);
        CHECK_EQ(c.has_rows, t[i].has);
        CHECK(c.rows == t[i].rows);
        if (c.has_rows != t[i].has || c.rows != t[i].rows)
            fprintf(stderr, "    tag \"%s\"\n", t[i].tag);
    }
}

#define BODY(lit) lit, sizeof(lit) - 1

static void test_malformed(void)
{
    pgw_msg_t m;
    pgw_bind_t b;
    pgw_startup_t su;
    char big[16384];
    size_t n;

    /* Bind: parameter count against the data, format count, lengths. */
    m = body_msg('B', BODY("\0s\0\0\0\0\2\0\0\0\3abc\0\0"));   /* 2 params, 1 value */
    CHECK_EQ(pgw_parse_bind(&m, &b), -1);
    m = body_msg('B', BODY("\0s\0\0\0\0\1\0\0\0\1a\0\0\0\1b\0\0"));   /* 1 param, 2 values */
    CHECK_EQ(pgw_parse_bind(&m, &b), -1);
    m = body_msg('B', BODY("\0s\0\0\2\0\0\0\0\0\3\0\0\0\0\0\0\0\0\0\0\0\0\0\0"));   /* 2 formats, 3 params */
    CHECK_EQ(pgw_parse_bind(&m, &b), -1);
    m = body_msg('B', BODY("\0s\0\0\3\0\0\0\0\0\0\0\3\0\0\0\0\0\0\0\0\0\0\0\0\0\0"));   /* 3 and 3 */
    CHECK_EQ(pgw_parse_bind(&m, &b), 0);
    m = body_msg('B', BODY("\0s\0\0\0\0\1\xff\xff\xff\xfe\0\0"));   /* length -2 */
    CHECK_EQ(pgw_parse_bind(&m, &b), -1);
    m = body_msg('B', BODY("\0s\0\0\0\0\1\x7f\xff\xff\xff\0\0"));   /* length past the end */
    CHECK_EQ(pgw_parse_bind(&m, &b), -1);
    m = body_msg('B', BODY("\0s"));                                   /* unterminated */
    CHECK_EQ(pgw_parse_bind(&m, &b), -1);

    /* FunctionCall: the same rules for its arguments. */
    {
        pgw_fcall_t fc;
        m = body_msg('F', BODY("\0\0\0\1\0\2\0\0\0\0\0\1\0\0\0\0\0\0"));   /* 2 formats, 1 arg */
        CHECK_EQ(pgw_parse_function_call(&m, &fc), -1);
        m = body_msg('F', BODY("\0\0\0\1\0\0\0\1\0\0\0\5ab\0\0"));          /* short value */
        CHECK_EQ(pgw_parse_function_call(&m, &fc), -1);

        /* What an event says of a call: the widest fits the buffer. */
        char text[PGW_FCALL_TEXT_MAX + 1];
        memset(text, 'Z', sizeof text);
        fc = (pgw_fcall_t){ .oid = UINT32_MAX, .nargs = UINT16_MAX };
        size_t tl = pgw_fcall_describe(&fc, text);
        CHECK(tl < PGW_FCALL_TEXT_MAX && text[tl] == '\0' && text[PGW_FCALL_TEXT_MAX] == 'Z');
        CHECK(strncmp(text, "FUNCTION CALL OID 4294967295 ($1, $2, ", 38) == 0);
        const char *tail = "$15, $16, ..., $65535)";
        CHECK(tl > strlen(tail) && strcmp(text + tl - strlen(tail), tail) == 0);
        fc = (pgw_fcall_t){ .oid = 764, .nargs = 1 };
        CHECK_EQ(pgw_fcall_describe(&fc, text), strlen("SELECT pg_catalog.lo_import($1)"));
        CHECK(strcmp(text, "SELECT pg_catalog.lo_import($1)") == 0);
        fc = (pgw_fcall_t){ .oid = 955, .nargs = 0 };
        (void)pgw_fcall_describe(&fc, text);
        CHECK(strcmp(text, "SELECT pg_catalog.lowrite()") == 0);
    }

    /* Unterminated strings, everywhere a string is read. */
    {
        pgw_query_t q;
        pgw_parse_t p;
        pgw_param_status_t ps;
        pgw_notify_t a;
        pgw_target_t t;
        pgw_error_t e;
        m = body_msg('Q', BODY("SELECT 1"));
        CHECK_EQ(pgw_parse_query(&m, &q), -1);
        m = body_msg('Q', BODY(""));
        CHECK_EQ(pgw_parse_query(&m, &q), -1);
        m = body_msg('P', BODY("s1"));
        CHECK_EQ(pgw_parse_parse(&m, &p), -1);
        m = body_msg('P', BODY("\0SELECT 1\0\0\2\0\0\0\x17"));   /* 2 oids, 1 present */
        CHECK_EQ(pgw_parse_parse(&m, &p), -1);
        m = body_msg('S', BODY("TimeZone\0UTC"));
        CHECK_EQ(pgw_parse_param_status(&m, &ps), -1);
        m = body_msg('A', BODY("\0\0\0\1chan\0payload"));
        CHECK_EQ(pgw_parse_notification(&m, &a), -1);
        m = body_msg('D', BODY("Sname"));
        CHECK_EQ(pgw_parse_describe(&m, &t), -1);
        m = body_msg('D', BODY("X\0"));   /* neither S nor P */
        CHECK_EQ(pgw_parse_describe(&m, &t), -1);
        m = body_msg('C', BODY("Q\0"));
        CHECK_EQ(pgw_parse_close(&m, &t), -1);
        m = body_msg('E', BODY("SERROR\0CXX000\0Mboom"));
        CHECK_EQ(pgw_parse_error(&m, &e), -1);
        m = body_msg('E', BODY("SERROR\0"));   /* no terminator */
        CHECK_EQ(pgw_parse_error(&m, &e), -1);
        m = body_msg('E', BODY("SERROR\0Zfuture\0\0"));   /* unknown field: skipped */
        CHECK_EQ(pgw_parse_error(&m, &e), 0);
        CHECK_STR(e.severity, "ERROR");
        m = body_msg('E', BODY("\0"));
        CHECK_EQ(pgw_parse_error(&m, &e), 0);
        CHECK(e.severity == NULL && e.message == NULL);
    }

    /* Counts that the data cannot hold. */
    {
        pgw_rowdesc_t t;
        pgw_negotiate_t v;
        pgw_param_desc_t pd;
        pgw_copy_resp_t cr;
        pgw_fresult_t fr;
        pgw_ready_t z;
        pgw_auth_t a;
        pgw_keydata_t k;
        m = body_msg('T', BODY("\0\2id\0\0\0\0\0\0\0\0\0\0\x17\0\4\xff\xff\xff\xff\0\0"));
        CHECK_EQ(pgw_parse_row_description(&m, &t), -1);
        m = body_msg('v', BODY("\0\0\0\0\xff\xff\xff\xff_pq_.a\0"));
        CHECK_EQ(pgw_parse_negotiate(&m, &v), -1);
        m = body_msg('t', BODY("\0\3\0\0\0\x17"));
        CHECK_EQ(pgw_parse_param_description(&m, &pd), -1);
        m = body_msg('G', BODY("\0\0\2\0\0"));
        CHECK_EQ(pgw_parse_copy_response(&m, &cr), -1);
        m = body_msg('G', BODY("\2\0\0"));   /* format neither text nor binary */
        CHECK_EQ(pgw_parse_copy_response(&m, &cr), -1);
        m = body_msg('V', BODY("\xff\xff\xff\xfe"));
        CHECK_EQ(pgw_parse_function_result(&m, &fr), -1);
        m = body_msg('V', BODY("\0\0\0\5abcd"));
        CHECK_EQ(pgw_parse_function_result(&m, &fr), -1);
        m = body_msg('Z', BODY("Q"));
        CHECK_EQ(pgw_parse_ready(&m, &z), -1);
        m = body_msg('R', BODY("\0\0\0\5\1\2\3"));   /* MD5 salt of 3 bytes */
        CHECK_EQ(pgw_parse_auth(&m, &a), -1);
        m = body_msg('R', BODY("\0\0\0\0\0"));       /* AuthenticationOk with data */
        CHECK_EQ(pgw_parse_auth(&m, &a), -1);
        m = body_msg('R', BODY("\0\0\0"));
        CHECK_EQ(pgw_parse_auth(&m, &a), -1);
        m = body_msg('R', BODY("\0\0\0\x63whatever"));   /* unknown code: opaque */
        CHECK_EQ(pgw_parse_auth(&m, &a), 0);
        CHECK_EQ(a.data_len, 8);
        m = body_msg('K', BODY("\0\0\0\1\0\0\0\2\0"));
        CHECK_EQ(pgw_parse_keydata(&m, &k), -1);
    }

    /* Startup packets. */
#define STARTUP(lit) (m = body_msg(0, BODY(lit)), m.code = PGW_PROTO_V3, m.len = m.body_len + 8, &m)
    CHECK_EQ(pgw_parse_startup(STARTUP("database\0shop\0\0"), &su), -2);      /* no user */
    CHECK_EQ(pgw_parse_startup(STARTUP("user\0\0\0"), &su), -2);              /* empty user */
    CHECK_EQ(pgw_parse_startup(STARTUP("\0"), &su), -2);
    CHECK_EQ(pgw_parse_startup(STARTUP(""), &su), -1);
    CHECK_EQ(pgw_parse_startup(STARTUP("user\0bob\0"), &su), -1);             /* no terminator */
    CHECK_EQ(pgw_parse_startup(STARTUP("user\0bob"), &su), -1);
    CHECK_EQ(pgw_parse_startup(STARTUP("user\0bob\0options\0"), &su), -1);   /* name, no value */
    CHECK_EQ(pgw_parse_startup(STARTUP("user\0bob\0\0\0"), &su), -1);         /* after the end */
    CHECK_EQ(pgw_parse_startup(STARTUP("user\0bob\0user\0eve\0\0"), &su), 0); /* last wins */
    CHECK_STR(su.user, "eve");
    CHECK_EQ(su.nparams, 2);
    /* Any number of pairs is accepted (PostgreSQL has no cap but the packet
     * size); the first PGW_MAX_STARTUP_PARAMS are kept. */
    for (int pairs = PGW_MAX_STARTUP_PARAMS; pairs <= 1000; pairs += 1000 - PGW_MAX_STARTUP_PARAMS) {
        n = (size_t)snprintf(big, sizeof(big), "user%cbob%c", 0, 0);
        for (int i = 1; i < pairs; i++)
            n += (size_t)snprintf(big + n, sizeof(big) - n, "p%d%cv%c", i, 0, 0);
        big[n++] = 0;
        m = body_msg(0, big, n);
        m.code = PGW_PROTO_V3;
        CHECK_EQ(pgw_parse_startup(&m, &su), 0);
        CHECK_EQ(su.nparams, (uint32_t)pairs);
        CHECK_EQ(su.nkept, (uint32_t)PGW_MAX_STARTUP_PARAMS);
        CHECK_STR(su.user, "bob");
    }
    m = body_msg(0, BODY("\0\0\0\1\0\0\0"));
    m.code = PGW_CODE_CANCEL;
    CHECK_EQ(pgw_parse_startup(&m, &su), -1);
    m = body_msg(0, BODY("\0\0\0\1\0\0\0\2\0"));
    m.code = PGW_CODE_CANCEL;
    CHECK_EQ(pgw_parse_startup(&m, &su), -1);
    m = body_msg('Q', BODY("user\0bob\0\0"));   /* not a startup packet at all */
    m.code = PGW_PROTO_V3;
    CHECK_EQ(pgw_parse_startup(&m, &su), -1);
    m = body_msg(0, BODY("user\0bob\0\0"));      /* protocol 2.0: reported, not read */
    m.code = 0x00020000u;
    CHECK_EQ(pgw_parse_startup(&m, &su), 0);
    CHECK(su.code == 0x00020000u && su.user == NULL && su.nparams == 0);
#undef STARTUP
}

static void test_readers(void)
{
    static const uint8_t data[] = { 0x01, 0x02, 0x03, 'h', 'i', 0, 0xAA };
    const uint8_t *p = guard_place(&g_body, data, sizeof(data));
    pgw_rd_t r;

    pgw_rd_init(&r, p, sizeof(data));
    CHECK_EQ(pgw_rd_u8(&r), 1);
    CHECK_EQ(pgw_rd_u16(&r), 0x0203);
    CHECK_STR(pgw_rd_cstr(&r), "hi");
    CHECK(pgw_rd_bytes(&r, 1) == p + 6);
    CHECK(pgw_rd_bytes(&r, 0) == p + 7 && !r.bad);
    CHECK_EQ(pgw_rd_u8(&r), 0);   /* past the end: bad, and stays bad */
    CHECK(r.bad);
    pgw_rd_init(&r, p, sizeof(data));
    CHECK_EQ(pgw_rd_u32(&r), 0x01020368);
    CHECK(pgw_rd_bytes(&r, 4) == NULL && r.bad);
    CHECK_EQ(pgw_rd_u8(&r), 0);   /* data is left, but the reader failed already */
    CHECK(pgw_rd_cstr(&r) == NULL);
    pgw_rd_init(&r, p + 6, 1);
    CHECK(pgw_rd_cstr(&r) == NULL && r.bad);   /* unterminated, at the guard page */
    pgw_rd_init(&r, p + 5, 2);
    CHECK(pgw_rd_u16(&r) == 0x00AA && !r.bad);
    CHECK(pgw_rd_u32(&r) == 0 && r.bad);
    pgw_rd_init(&r, NULL, 0);
    CHECK(pgw_rd_cstr(&r) == NULL && r.bad);
}

static void test_builder(void)
{
    static const uint8_t expect[] =
        "E\0\0\0\x30" "SFATAL\0VFATAL\0C28000\0Mno pg_hba.conf entry\0";
    uint8_t buf[64];
    pgw_wb_t w;
    ssize_t n;

    n = pgw_build_error(buf, sizeof(buf), "FATAL", "28000", "no pg_hba.conf entry");
    CHECK_EQ(n, sizeof(expect));   /* the literal's NUL is the fields' terminator */
    CHECK_MEM(buf, (size_t)n, expect, sizeof(expect));
    for (size_t cap = 0; cap < sizeof(expect); cap++)
        CHECK_EQ(pgw_build_error(buf, cap, "FATAL", "28000", "no pg_hba.conf entry"), -1);
    CHECK_EQ(pgw_build_error(buf, sizeof(buf), NULL, "28000", "x"), -1);
    {
        pgw_msg_t m = frame1(PGW_BACKEND, buf, (size_t)pgw_build_error(buf, sizeof(buf), "ERROR",
                                                                     "42501", "denied"));
        pgw_error_t e;
        CHECK_EQ(pgw_parse_error(&m, &e), 0);
        CHECK_STR(e.severity, "ERROR");
        CHECK_STR(e.sqlstate, "42501");
        CHECK_STR(e.message, "denied");
    }

    /* Sticky failure: nothing is written after the first put that missed. */
    pgw_wb_init(&w, buf, 8);
    pgw_wb_begin(&w, 'Q');
    pgw_wb_u16(&w, 0x4142);
    pgw_wb_u32(&w, 1);   /* does not fit */
    pgw_wb_u8(&w, 'x');  /* would fit, but must not be written */
    pgw_wb_end(&w);
    CHECK_EQ(pgw_wb_finish(&w), -1);
    CHECK_EQ(w.len, 7);

    /* Two messages in one buffer, each with its own length. */
    pgw_wb_init(&w, buf, sizeof(buf));
    pgw_wb_begin(&w, 'S');
    pgw_wb_end(&w);
    pgw_wb_begin(&w, 0);
    pgw_wb_u32(&w, PGW_CODE_SSL);
    pgw_wb_end(&w);
    CHECK_EQ(pgw_wb_finish(&w), 13);
    CHECK_MEM(buf, 13, "S\0\0\0\4\0\0\0\x08\x04\xd2\x16\x2f", 13);

    pgw_wb_init(&w, NULL, 100);
    pgw_wb_u8(&w, 1);
    CHECK_EQ(pgw_wb_finish(&w), -1);
}

static void test_names(void)
{
    static const char fe[] = "BCdcfDEHFPpQSX", be[] = "RK23CdcGHWDIEVvnNAtS1sZT";
    for (const char *p = fe; *p; p++)
        CHECK(strcmp(pgw_msg_name(PGW_FRONTEND, (uint8_t)*p), "Unknown") != 0);
    for (const char *p = be; *p; p++)
        CHECK(strcmp(pgw_msg_name(PGW_BACKEND, (uint8_t)*p), "Unknown") != 0);
    CHECK_STR(pgw_msg_name(PGW_FRONTEND, 'D'), "Describe");
    CHECK_STR(pgw_msg_name(PGW_BACKEND, 'D'), "DataRow");
    CHECK_STR(pgw_msg_name(PGW_FRONTEND, 'Z'), "Unknown");
    CHECK_STR(pgw_msg_name(PGW_BACKEND, 0), "Unknown");
    CHECK_STR(pgw_msg_name(PGW_BACKEND, 0xFF), "Unknown");
}

int main(void)
{
    guard_init(&g_in, 64 * 1024);
    guard_init(&g_body, 64 * 1024);
    test_round_trips();
    test_fields();
    test_tags();
    test_malformed();
    test_readers();
    test_builder();
    test_names();
    guard_free(&g_in);
    guard_free(&g_body);
    CHECK_DONE();
}
