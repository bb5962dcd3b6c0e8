/* JSON encoder tests: escaping of every byte, UTF-8 repair against an
 * independent reference (maximal subparts by code point arithmetic), long
 * strings across the encoder's chunk boundaries, numbers, times, base64,
 * every event kind with every field, omission of absent fields, failure
 * rollback, and UUIDv7 ids. Every output goes through a strict validator.
 *
 * Extra modes (not run by ctest):
 *   PGW_EVENT_SAMPLES=FILE test_json   also writes sample events of every
 *                                      kind to FILE (tests/integration/
 *                                      test_event_schema.py validates them)
 *   test_json --sanitize               stdin bytes -> one JSON string on stdout
 *   test_json --bench [N]              ns per typical statement event */
#include "check.h"
#include "json_validate.h"

#include <errno.h>
#include <inttypes.h>
#include <time.h>

#include "pgwarden/event.h"
#include "pgwarden/json.h"

static pgw_jbuf_t g_b;

/* ------------------------------------------------------------ reference */

/* Does some well-formed sequence start with these k bytes? Only the first
 * two bytes of a sequence are constrained beyond "a continuation byte", so
 * trying every second byte and padding with 0x80 decides it. */
static bool extendable(const uint8_t *s, size_t k)
{
    uint8_t t[4];
    size_t need;

    if (s[0] >= 0xC0 && s[0] < 0xE0) need = 2;
    else if (s[0] >= 0xE0 && s[0] < 0xF0) need = 3;
    else if (s[0] >= 0xF0 && s[0] < 0xF8) need = 4;
    else return false;
    if (k > need)
        return false;
    for (unsigned second = 0x80; second <= 0xBF; second++) {
        memcpy(t, s, k);
        for (size_t i = k; i < need; i++)
            t[i] = i == 1 ? (uint8_t)second : 0x80;
        if (jv_utf8_len(t, need) == (int)need)
            return true;
        if (k >= 2)
            break;           /* the second byte is given */
    }
    return false;
}

/* What a consumer must read back: well-formed sequences as they are, each
 * maximal ill-formed subpart as one U+FFFD. Returns the length in out. */
static size_t reference(const uint8_t *s, size_t n, uint8_t *out)
{
    size_t i = 0, o = 0;

    while (i < n) {
        int k = jv_utf8_len(s + i, n - i);
        if (k > 0) {
            memcpy(out + o, s + i, (size_t)k);
            o += (size_t)k;
            i += (size_t)k;
            continue;
        }
        size_t m = 1;
        while (m < 3 && i + m < n && extendable(s + i, m + 1))
            m++;
        memcpy(out + o, "\xEF\xBF\xBD", 3);
        o += 3;
        i += m;
    }
    return o;
}

/* Encodes s, checks the result is one valid JSON string whose decoding is
 * the reference repair of s. */
static void check_str(const uint8_t *s, size_t n)
{
    static uint8_t want[3 * 300000], got[3 * 300000];
    size_t wn = 0, gn = 0;

    if (n > 300000)
        abort();
    pgw_jbuf_reset(&g_b);
    pgw_json_str(&g_b, s, n);
    CHECK(!g_b.failed);
    const char *err = jv_check(g_b.data, g_b.len);
    CHECK(err == NULL);
    if (err) {
        fprintf(stderr, "    %s, input of %zu bytes\n", err, n);
        return;
    }
    jv_t v = { (const uint8_t *)g_b.data, (const uint8_t *)g_b.data + g_b.len, 0, NULL };
    CHECK(jv_string(&v, got, &gn));
    wn = reference(s, n, want);
    CHECK_MEM(got, gn, want, wn);
}

static const char *enc_str(const void *s, size_t n)
{
    pgw_jbuf_reset(&g_b);
    pgw_json_str(&g_b, s, n);
    pgw_jbuf_putc(&g_b, '\0');
    return g_b.data;
}

/* ------------------------------------------------------------ strings */

static void test_every_byte(void)
{
    for (unsigned c = 0; c < 256; c++) {
        uint8_t in = (uint8_t)c;
        char want[16];
        const char *got = enc_str(&in, 1);

        if (c == '"') strcpy(want, "\"\\\"\"");
        else if (c == '\\') strcpy(want, "\"\\\\\"");
        else if (c == '\b') strcpy(want, "\"\\b\"");
        else if (c == '\f') strcpy(want, "\"\\f\"");
        else if (c == '\n') strcpy(want, "\"\\n\"");
        else if (c == '\r') strcpy(want, "\"\\r\"");
        else if (c == '\t') strcpy(want, "\"\\t\"");
        else if (c < 0x20) snprintf(want, sizeof(want), "\"\\u%04x\"", c);
        else if (c < 0x80) snprintf(want, sizeof(want), "\"%c\"", (char)c);
        else strcpy(want, "\"\xEF\xBF\xBD\"");   /* a lone non-ASCII byte is never well-formed */
        CHECK_STR(got, want);
        check_str(&in, 1);

        /* and inside ASCII text, at every position of an 8-byte word */
        for (unsigned pos = 0; pos < 17; pos++) {
            uint8_t buf[17];
            memset(buf, 'a', sizeof(buf));
            buf[pos] = in;
            check_str(buf, sizeof(buf));
        }
    }
}

typedef struct str_case {
    const char *in;
    size_t n;
    const char *want;    /* the JSON text */
} str_case_t;

#define SC(in, want) { in, sizeof(in) - 1, want }
#define R "\xEF\xBF\xBD"

static const str_case_t str_cases[] = {
    SC("", "\"\""),
    SC("SELECT 'it''s' \"q\" \\ /", "\"SELECT 'it''s' \\\"q\\\" \\\\ /\""),
    SC("a\0b", "\"a\\u0000b\""),
    SC("\x7f", "\"\x7f\""),
    /* well-formed, at the edges of each length */
    SC("\xC2\x80\xDF\xBF", "\"\xC2\x80\xDF\xBF\""),
    SC("\xE0\xA0\x80\xEF\xBF\xBF", "\"\xE0\xA0\x80\xEF\xBF\xBF\""),
    SC("\xED\x9F\xBF\xEE\x80\x80", "\"\xED\x9F\xBF\xEE\x80\x80\""),      /* around the surrogates */
    SC("\xF0\x90\x80\x80\xF4\x8F\xBF\xBF", "\"\xF0\x90\x80\x80\xF4\x8F\xBF\xBF\""),
    SC("\xF0\x9F\x98\x80", "\"\xF0\x9F\x98\x80\""),                      /* an emoji */
    /* overlong encodings */
    SC("\xC0\x80", "\"" R R "\""),
    SC("\xC1\xBF", "\"" R R "\""),
    SC("\xE0\x80\x80", "\"" R R R "\""),
    SC("\xE0\x9F\xBF", "\"" R R R "\""),
    SC("\xF0\x80\x80\x80", "\"" R R R R "\""),
    SC("\xF0\x8F\xBF\xBF", "\"" R R R R "\""),
    /* surrogates encoded in UTF-8 (CESU-8) */
    SC("\xED\xA0\x80", "\"" R R R "\""),
    SC("\xED\xBF\xBF", "\"" R R R "\""),
    SC("\xED\xA0\xBD\xED\xB8\x80", "\"" R R R R R R "\""),
    /* above U+10FFFF, and bytes that never occur */
    SC("\xF4\x90\x80\x80", "\"" R R R R "\""),
    SC("\xF5\x80\x80\x80", "\"" R R R R "\""),
    SC("\xF8\x88\x80\x80\x80", "\"" R R R R R "\""),
    SC("\xFE\xFF", "\"" R R "\""),
    /* cut sequences: one U+FFFD per maximal subpart */
    SC("\xE2\x82", "\"" R "\""),
    SC("\xE2\x82" "A", "\"" R "A\""),
    SC("\xF0\x9F\x98", "\"" R "\""),
    SC("\xF0\x9F\x98" "\xF0\x9F\x98\x80", "\"" R "\xF0\x9F\x98\x80\""),
    SC("\xF0\x9F", "\"" R "\""),
    SC("\xC3", "\"" R "\""),
    SC("\xC3\"", "\"" R "\\\"\""),
    SC("\x80\xBF", "\"" R R "\""),
    SC("\xE1\x80\xE2\xF0\x91\x92\xF1\xBF\x41", "\"" R R R R "A\""),   /* Unicode's own example */
};

static void test_cases(void)
{
    for (size_t i = 0; i < sizeof(str_cases) / sizeof(str_cases[0]); i++) {
        const char *got = enc_str(str_cases[i].in, str_cases[i].n);
        if (strcmp(got, str_cases[i].want) != 0)
            fprintf(stderr, "    case %zu\n", i);
        CHECK_STR(got, str_cases[i].want);
        check_str((const uint8_t *)str_cases[i].in, str_cases[i].n);
    }
}

static uint64_t g_rng = 0x9E3779B97F4A7C15u;
static uint64_t rnd(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}

/* Bytes that make UTF-8 interesting, more often than uniform bytes would. */
static uint8_t interesting_byte(void)
{
    static const uint8_t pick[] = {
        'a', ' ', '"', '\\', 0, '\n', 0x1F, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF,
        0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xED, 0xEF, 0xF0, 0xF1, 0xF4, 0xF5, 0xFF,
    };
    uint64_t r = rnd();
    return (r & 3) ? pick[(r >> 8) % sizeof(pick)] : (uint8_t)(r >> 16);
}

static void test_random(void)
{
    uint8_t buf[64];

    for (int iter = 0; iter < 200000; iter++) {
        size_t n = rnd() % sizeof(buf);
        for (size_t i = 0; i < n; i++)
            buf[i] = interesting_byte();
        check_str(buf, n);
    }
}

/* Strings longer than the encoder's chunk, with a multi-byte sequence (or a
 * cut one, or an escape) straddling every offset around chunk boundaries. */
static void test_long(void)
{
    static uint8_t big[200000];
    static const char *const inserts[] = { "\xF0\x9F\x98\x80", "\xE2\x82\xAC", "\xF0\x9F\x98",
                                           "\x01", "\"", "\xC3\xA9" };

    for (size_t k = 0; k < sizeof(inserts) / sizeof(inserts[0]); k++) {
        size_t il = strlen(inserts[k]);
        for (size_t at = 4096 - 12; at < 4096 + 12; at++) {
            memset(big, 'x', 8200);
            memcpy(big + at, inserts[k], il);
            memcpy(big + at + 4096, inserts[k], il);
            check_str(big, 8200);
        }
    }
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (rnd() & 7) ? (uint8_t)('a' + i % 26) : interesting_byte();
    check_str(big, sizeof(big));
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (uint8_t)(i % 32);              /* worst case: all \u00XX */
    check_str(big, sizeof(big));
}

/* ------------------------------------------------------------ numbers, times */

static void test_numbers(void)
{
    static const int64_t vals[] = { 0, 1, 9, 10, 99, 100, 101, 999, 1000, 9999, 10000, 12345, 99999999,
                                    100000000, 1000000000, -1, -10, -99, -9999, -10000,
                                    INT32_MAX, INT32_MIN, INT64_MAX, INT64_MIN,
                                    1000000000000000000, -999999999999999999 };
    char want[32];

    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
        pgw_jbuf_reset(&g_b);
        pgw_json_i64(&g_b, vals[i]);
        pgw_jbuf_putc(&g_b, 0);
        snprintf(want, sizeof(want), "%" PRId64, vals[i]);
        CHECK_STR(g_b.data, want);
    }
    for (int i = 0; i < 100000; i++) {
        uint64_t v = rnd() >> (rnd() % 64);
        pgw_jbuf_reset(&g_b);
        pgw_json_u64(&g_b, v);
        pgw_jbuf_putc(&g_b, 0);
        snprintf(want, sizeof(want), "%" PRIu64, v);
        CHECK_STR(g_b.data, want);
        CHECK(jv_check(g_b.data, g_b.len - 1) == NULL);
    }
    pgw_jbuf_reset(&g_b);
    pgw_json_u64(&g_b, UINT64_MAX);
    pgw_jbuf_putc(&g_b, 0);
    CHECK_STR(g_b.data, "18446744073709551615");
}

static void want_time(int64_t us, char *out, size_t n)
{
    time_t s = (time_t)(us / 1000000);
    int64_t f = us % 1000000;
    struct tm tm;

    if (f < 0) {
        f += 1000000;
        s--;
    }
    gmtime_r(&s, &tm);
    snprintf(out, n, "\"%04d-%02d-%02dT%02d:%02d:%02d.%06" PRId64 "Z\"", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, f);
}

static const char *enc_time(int64_t us)
{
    pgw_jbuf_reset(&g_b);
    pgw_json_time_us(&g_b, us);
    pgw_jbuf_putc(&g_b, 0);
    return g_b.data;
}

static void test_times(void)
{
    char want[64];
    static const int64_t fixed[] = {
        0, 1, 999999, 1000000, -1, -1000000, -1000001,
        951782400000000,            /* 2000-02-29 */
        951868799999999,            /* 2000-02-29T23:59:59.999999 */
        -2203891200000000,          /* 1900-03-01 */
        4107542400000000,           /* 2100-03-01 */
        1798761600123456,           /* 2027-01-01 */
        253402300799999999,         /* 9999-12-31T23:59:59.999999 */
        -62135596800000000,         /* 0001-01-01 */
    };

    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        want_time(fixed[i], want, sizeof(want));
        CHECK_STR(enc_time(fixed[i]), want);
    }
    for (int i = 0; i < 200000; i++) {
        /* any time from year 1 to 9999 */
        int64_t us = (int64_t)(rnd() % UINT64_C(315537897600000000)) - INT64_C(62135596800000000);
        want_time(us, want, sizeof(want));
        CHECK_STR(enc_time(us), want);
    }
    CHECK_STR(enc_time(INT64_MAX), "\"9999-12-31T23:59:59.999999Z\"");
    CHECK_STR(enc_time(INT64_MIN), "\"0000-01-01T00:00:00.000000Z\"");
    CHECK_STR(enc_time(1798761600123456), "\"2027-01-01T00:00:00.123456Z\"");

    pgw_jbuf_reset(&g_b);
    pgw_json_time_s(&g_b, 1798761599);
    pgw_jbuf_putc(&g_b, 0);
    CHECK_STR(g_b.data, "\"2026-12-31T23:59:59Z\"");
}

static void test_base64(void)
{
    static const char *const in[] = { "", "f", "fo", "foo", "foob", "fooba", "foobar" };
    static const char *const out[] = { "\"\"", "\"Zg==\"", "\"Zm8=\"", "\"Zm9v\"",
                                       "\"Zm9vYg==\"", "\"Zm9vYmE=\"", "\"Zm9vYmFy\"" };
    for (size_t i = 0; i < sizeof(in) / sizeof(in[0]); i++) {
        pgw_jbuf_reset(&g_b);
        pgw_json_base64(&g_b, in[i], strlen(in[i]));
        pgw_jbuf_putc(&g_b, 0);
        CHECK_STR(g_b.data, out[i]);
    }
    uint8_t all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (uint8_t)i;
    pgw_jbuf_reset(&g_b);
    pgw_json_base64(&g_b, all, sizeof(all));
    CHECK(jv_check(g_b.data, g_b.len) == NULL);
    CHECK_EQ(g_b.len, 2 + 344);
}

/* ------------------------------------------------------------ events */

static const pgw_str_t sans[] = { PGW_STR_LIT("DNS:app.example.com"), PGW_STR_LIT("IP:10.0.0.7") };
static const pgw_event_cert_t cert = {
    .subject = PGW_STR_LIT("CN=alice,O=Example"),
    .cn = PGW_STR_LIT("alice"),
    .issuer = PGW_STR_LIT("CN=Example CA"),
    .serial = PGW_STR_LIT("1A2B3C"),
    .sha256 = PGW_STR_LIT("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
    .san = sans,
    .nsan = 2,
    .not_before = { true, 1767225600 },
    .not_after = { true, 1798761599 },
};
static const pgw_event_object_t objs[] = {
    { PGW_STR_LIT("public"), PGW_STR_LIT("accounts"), PGW_STR_LIT("table"), PGW_OBJ_ACCESS_WRITE },
    { { NULL, 0 }, PGW_STR_LIT("branches"), PGW_STR_LIT("table"), PGW_OBJ_ACCESS_READ },
};
static const uint8_t bin_param[] = { 0, 0, 0, 42, 0xFF };
static const pgw_event_param_t params[] = {
    { "42", 2, false, false },
    { NULL, 0, true, false },
    { bin_param, sizeof(bin_param), false, true },
    { "caf\xC3\xA9 \xFF", 7, false, false },
};
static pgw_uuid7_t g_gen;

/* The identity every event of a session carries. */
static void identity(pgw_event_t *ev, bool tls, bool unix_client)
{
    ev->observer = (pgw_event_observer_t){ PGW_STR_LIT("db-proxy-1"),
                                           PGW_STR_LIT("0192f1a4-7c1e-7d2a-9c4f-2b1e8f3a6d10"),
                                           PGW_STR_LIT(PGW_VERSION) };
    ev->session.id = PGW_STR_LIT("0192f1a4-7c1e-7d2a-9c4f-2b1e8f3a6d11");
    ev->session.seq = 7;
    ev->session.backend_pid = 4242;
    if (unix_client) {
        ev->client.socket = PGW_STR_LIT("/run/pgwarden/.s.PGSQL.5432");
        ev->server.socket = PGW_STR_LIT("/var/run/postgresql/.s.PGSQL.5432");
    } else {
        ev->client.ip = PGW_STR_LIT("10.1.2.3");
        ev->client.port = 51234;
        ev->server.ip = PGW_STR_LIT("::1");
        ev->server.port = 5432;
    }
    ev->client.application = PGW_STR_LIT("pgbench");
    ev->user.name = PGW_STR_LIT("alice");
    ev->user.database = PGW_STR_LIT("bank");
    if (tls) {
        ev->user.cert = &cert;
        ev->tls.version = PGW_STR_LIT("TLSv1.3");
        ev->tls.cipher = PGW_STR_LIT("TLS_AES_256_GCM_SHA384");
    }
}

static const int64_t T0 = 1798761600123456;   /* 2027-01-01T00:00:00.123456Z */

typedef void (*sample_cb)(const pgw_event_t *ev, const char *name);

/* Every kind, in its fullest form and in the sparest one the schema allows,
 * plus a statement with hostile text. */
static void samples(sample_cb cb)
{
    pgw_event_t ev;

    pgw_event_init(&ev, PGW_EVENT_SESSION_START, T0, &g_gen);
    identity(&ev, true, false);
    ev.session.seq = 1;
    ev.server_version = PGW_STR_LIT("15.5 (Debian 15.5-0+deb12u1)");
    ev.auth_method = PGW_STR_LIT("scram-sha-256");
    cb(&ev, "session_start full");

    pgw_event_init(&ev, PGW_EVENT_SESSION_START, T0, &g_gen);
    identity(&ev, false, true);
    ev.session.seq = 1;
    ev.client.application = (pgw_str_t){ NULL, 0 };
    ev.server_version = PGW_STR_LIT("15.5");
    ev.auth_method = PGW_STR_LIT("trust");
    cb(&ev, "session_start unix");

    pgw_event_init(&ev, PGW_EVENT_AUTH_FAILURE, T0, &g_gen);
    identity(&ev, false, false);
    ev.session.seq = 1;
    ev.session.backend_pid = 0;
    ev.auth_method = PGW_STR_LIT("md5");
    ev.result.status = PGW_STATUS_ERROR;
    ev.result.sqlstate = PGW_STR_LIT("28P01");
    ev.result.message = PGW_STR_LIT("password authentication failed for user \"alice\"");
    cb(&ev, "auth_failure");

    pgw_event_init(&ev, PGW_EVENT_AUTH_FAILURE, T0, &g_gen);   /* refused before startup */
    ev.observer = (pgw_event_observer_t){ PGW_STR_LIT("h"), PGW_STR_LIT("i"), PGW_STR_LIT("v") };
    ev.session.id = PGW_STR_LIT("s-2");
    ev.session.seq = 1;
    ev.client.ip = PGW_STR_LIT("192.0.2.1");
    ev.client.port = 40000;
    ev.result.sqlstate = PGW_STR_LIT("28000");
    ev.result.message = PGW_STR_LIT("client certificate required");
    cb(&ev, "auth_failure early");

    pgw_event_init(&ev, PGW_EVENT_STATEMENT, T0, &g_gen);
    identity(&ev, true, false);
    ev.statement = (pgw_event_statement_t){
        .text = PGW_STR_LIT("UPDATE public.accounts SET abalance = abalance + $1 WHERE aid = $2 "
                            "AND bid IN (SELECT bid FROM branches)"),
        .redacted = PGW_BOOL_TRUE, .truncated = PGW_BOOL_FALSE,
        .has_fingerprint = true, .fingerprint = 0x0a1b2c3d4e5f6789,
        .command = PGW_STR_LIT("UPDATE"), .class_ = PGW_STMT_CLASS_WRITE,
        .objects = objs, .nobjects = 2,
        .protocol = PGW_PROTOCOL_EXTENDED,
        .statement_name = PGW_STR_LIT(""), .portal_name = PGW_STR_LIT(""),
        .param_values = params, .nparam_values = 4,
    };
    ev.result = (pgw_event_result_t){ .status = PGW_STATUS_OK, .tag = PGW_STR_LIT("UPDATE 1"),
                                      .rows = PGW_INT(1), .bytes = PGW_INT(0),
                                      .duration_us = PGW_INT(187) };
    cb(&ev, "statement extended");

    pgw_event_init(&ev, PGW_EVENT_STATEMENT, T0, &g_gen);
    identity(&ev, false, false);
    ev.statement = (pgw_event_statement_t){
        .text = PGW_STR_LIT("SELECT 1/0"), .redacted = PGW_BOOL_TRUE, .truncated = PGW_BOOL_FALSE,
        .has_fingerprint = true, .fingerprint = 0,
        .command = PGW_STR_LIT("SELECT"), .class_ = PGW_STMT_CLASS_READ,
        .objects = objs, .nobjects = 0,
        .protocol = PGW_PROTOCOL_SIMPLE, .index = PGW_INT(2), .count = PGW_INT(3),
    };
    ev.result = (pgw_event_result_t){ .status = PGW_STATUS_ERROR, .sqlstate = PGW_STR_LIT("22012"),
                                      .message = PGW_STR_LIT("division by zero"),
                                      .duration_us = PGW_INT(0) };
    cb(&ev, "statement error");

    ev.event_id[15]++;
    ev.statement.index = PGW_INT(3);
    ev.result = (pgw_event_result_t){ .status = PGW_STATUS_SKIPPED };
    cb(&ev, "statement skipped");

    pgw_event_init(&ev, PGW_EVENT_STATEMENT, T0, &g_gen);
    identity(&ev, false, false);
    ev.statement = (pgw_event_statement_t){
        .text = PGW_STR_LIT("COPY public.accounts FROM STDIN"), .redacted = PGW_BOOL_TRUE,
        .truncated = PGW_BOOL_FALSE, .has_fingerprint = true, .fingerprint = UINT64_MAX,
        .command = PGW_STR_LIT("COPY"), .class_ = PGW_STMT_CLASS_WRITE, .objects = objs, .nobjects = 1,
        .protocol = PGW_PROTOCOL_SIMPLE,
    };
    ev.result = (pgw_event_result_t){ .status = PGW_STATUS_OK, .tag = PGW_STR_LIT("COPY 100000"),
                                      .rows = PGW_INT(100000), .bytes = PGW_INT(0),
                                      .duration_us = PGW_INT(912345) };
    ev.copy = (pgw_event_copy_t){ PGW_COPY_IN, PGW_INT(100000), PGW_INT(9876543) };
    cb(&ev, "statement copy");

    pgw_event_init(&ev, PGW_EVENT_STATEMENT, T0, &g_gen);
    identity(&ev, false, false);
    ev.statement = (pgw_event_statement_t){
        .text = PGW_STR_LIT("SELEC\x01 'caf\xC3\xA9' \xFF\xFE \xED\xA0\x80 \"x\"\\\n\t\x7f"),
        .redacted = PGW_BOOL_FALSE, .truncated = PGW_BOOL_TRUE,
        .protocol = PGW_PROTOCOL_SIMPLE, .index = PGW_INT(1), .count = PGW_INT(1),
        .parse_error = PGW_STR_LIT("syntax error at or near \"SELEC\""),
    };
    ev.result = (pgw_event_result_t){ .status = PGW_STATUS_UNKNOWN };
    cb(&ev, "statement parse error");

    pgw_event_init(&ev, PGW_EVENT_STATEMENT, T0, &g_gen);
    identity(&ev, false, false);
    ev.statement = (pgw_event_statement_t){ .protocol = PGW_PROTOCOL_FUNCTION_CALL,
                                            .param_count = PGW_INT(2) };
    ev.result = (pgw_event_result_t){ .status = PGW_STATUS_CANCELLED, .sqlstate = PGW_STR_LIT("57014"),
                                      .message = PGW_STR_LIT("canceling statement due to user request"),
                                      .duration_us = PGW_INT(5000000) };
    cb(&ev, "statement function call");

    pgw_event_init(&ev, PGW_EVENT_DENIED, T0, &g_gen);
    identity(&ev, false, false);
    ev.rule = PGW_STR_LIT("no-ddl-from-app");
    ev.enforced = PGW_BOOL_TRUE;
    ev.statement = (pgw_event_statement_t){
        .text = PGW_STR_LIT("DROP TABLE accounts"), .redacted = PGW_BOOL_TRUE,
        .truncated = PGW_BOOL_FALSE, .has_fingerprint = true, .fingerprint = 42,
        .command = PGW_STR_LIT("DROP TABLE"), .class_ = PGW_STMT_CLASS_DDL, .objects = objs + 1,
        .nobjects = 1, .protocol = PGW_PROTOCOL_SIMPLE,
    };
    ev.result = (pgw_event_result_t){ .status = PGW_STATUS_ERROR, .sqlstate = PGW_STR_LIT("42501"),
                                      .message = PGW_STR_LIT("denied by pgwarden policy") };
    cb(&ev, "denied statement");

    pgw_event_init(&ev, PGW_EVENT_DENIED, T0, &g_gen);
    identity(&ev, false, false);
    ev.rule = PGW_STR_LIT("cert-cn-must-match-user");
    ev.enforced = PGW_BOOL_FALSE;   /* a dry-run rule */
    cb(&ev, "denied connection");

    pgw_event_init(&ev, PGW_EVENT_CANCEL, T0, &g_gen);
    ev.observer = (pgw_event_observer_t){ PGW_STR_LIT("h"), PGW_STR_LIT("i"), PGW_STR_LIT("v") };
    ev.session.id = PGW_STR_LIT("cancel-conn-1");
    ev.session.seq = 1;
    ev.client.ip = PGW_STR_LIT("10.1.2.3");
    ev.client.port = 51240;
    ev.target.session_id = PGW_STR_LIT("0192f1a4-7c1e-7d2a-9c4f-2b1e8f3a6d11");
    ev.target.backend_pid = 4242;
    cb(&ev, "cancel");

    ev.target.session_id = (pgw_str_t){ NULL, 0 };
    ev.target.backend_pid = 0;
    ev.event_id[15]++;
    cb(&ev, "cancel unknown target");

    pgw_event_init(&ev, PGW_EVENT_SESSION_END, T0, &g_gen);
    identity(&ev, true, false);
    ev.session.seq = 9;
    ev.statement.text = PGW_STR_LIT("stale: must not appear");   /* another kind's field */
    ev.end.reason = PGW_END_CLIENT_CLOSED;
    ev.end.duration_us = PGW_INT(61234567);
    ev.end.statements = PGW_INT(7);
    ev.end.errors = PGW_INT(1);
    ev.end.bytes_in = PGW_INT(1234);
    ev.end.bytes_out = PGW_INT(56789);
    cb(&ev, "session_end");

    pgw_event_init(&ev, PGW_EVENT_AUDIT_GAP, T0, &g_gen);
    ev.observer = (pgw_event_observer_t){ PGW_STR_LIT("h"), PGW_STR_LIT("i"), PGW_STR_LIT("v") };
    ev.gap.dropped = PGW_INT(1500);
    ev.gap.from_us = PGW_INT(T0 - 5000000);
    ev.gap.to_us = PGW_INT(T0);
    cb(&ev, "audit_gap");
}

static FILE *g_samples_out;
static unsigned g_kinds_seen;

static void check_sample(const pgw_event_t *ev, const char *name)
{
    pgw_jbuf_reset(&g_b);
    CHECK_EQ(pgw_event_encode(ev, &g_b), 0);
    const char *err = jv_check_line(g_b.data, g_b.len);
    CHECK(err == NULL);
    if (err)
        fprintf(stderr, "    %s: %s\n    %.*s", name, err, (int)g_b.len, g_b.data);
    g_kinds_seen |= 1u << ev->kind;
    pgw_jbuf_putc(&g_b, 0);
    const char *s = g_b.data;

    CHECK(strncmp(s, "{\"v\":1,\"event_id\":\"", 19) == 0);
    CHECK(strstr(s, "\"time\":\"2027-01-01T00:00:00.123456Z\"") != NULL);
    CHECK(strstr(s, "null") == NULL || ev->kind == PGW_EVENT_STATEMENT);
    CHECK(strstr(s, "{}") == NULL);
    CHECK(strstr(s, "stale") == NULL);
    if (g_samples_out)
        fwrite(g_b.data, 1, g_b.len - 1, g_samples_out);
}

static void test_events(void)
{
    const char *path = getenv("PGW_EVENT_SAMPLES");

    if (path && *path) {
        g_samples_out = fopen(path, "w");
        CHECK(g_samples_out != NULL);
    }
    samples(check_sample);
    CHECK_EQ(g_kinds_seen, ((1u << PGW_EVENT_KIND_COUNT) - 1) & ~1u);
    if (g_samples_out)
        CHECK_EQ(fclose(g_samples_out), 0);
}

/* Exact output of one full statement event: the field names and order are
 * the contract. */
static void test_exact(void)
{
    pgw_event_t ev = { 0 };
    static const pgw_event_object_t o1[] = { { PGW_STR_LIT("s"), PGW_STR_LIT("t"),
                                               PGW_STR_LIT("table"), PGW_OBJ_ACCESS_READ } };

    ev.kind = PGW_EVENT_STATEMENT;
    for (int i = 0; i < 16; i++)
        ev.event_id[i] = (uint8_t)(i * 17);
    ev.time_us = T0;
    ev.observer = (pgw_event_observer_t){ PGW_STR_LIT("h"), PGW_STR_LIT("i"), PGW_STR_LIT("1") };
    ev.session.id = PGW_STR_LIT("s1");
    ev.session.seq = 2;
    ev.session.backend_pid = 99;
    ev.client.ip = PGW_STR_LIT("127.0.0.1");
    ev.client.port = 5000;
    ev.client.application = PGW_STR_LIT("");
    ev.server.socket = PGW_STR_LIT("/tmp/.s.PGSQL.5432");
    ev.server.application = PGW_STR_LIT("not a server field");
    ev.user.name = PGW_STR_LIT("u");
    ev.user.database = PGW_STR_LIT("d");
    ev.statement = (pgw_event_statement_t){
        .text = PGW_STR_LIT("SELECT * FROM s.t WHERE a = $1"), .redacted = PGW_BOOL_TRUE,
        .truncated = PGW_BOOL_FALSE, .has_fingerprint = true, .fingerprint = 0xabc,
        .command = PGW_STR_LIT("SELECT"), .class_ = PGW_STMT_CLASS_READ, .objects = o1, .nobjects = 1,
        .protocol = PGW_PROTOCOL_EXTENDED, .statement_name = PGW_STR_LIT("stmt1"),
        .portal_name = PGW_STR_LIT(""), .param_count = PGW_INT(1),
    };
    ev.result = (pgw_event_result_t){ .status = PGW_STATUS_OK, .tag = PGW_STR_LIT("SELECT 3"),
                                      .rows = PGW_INT(3), .bytes = PGW_INT(120),
                                      .duration_us = PGW_INT(45) };
    ev.end.reason = PGW_END_ERROR;     /* not a statement field: ignored */

    pgw_jbuf_reset(&g_b);
    CHECK_EQ(pgw_event_encode(&ev, &g_b), 0);
    pgw_jbuf_putc(&g_b, 0);
    CHECK_STR(g_b.data,
              "{\"v\":1,\"event_id\":\"00112233-4455-6677-8899-aabbccddeeff\",\"kind\":\"statement\","
              "\"time\":\"2027-01-01T00:00:00.123456Z\","
              "\"session\":{\"id\":\"s1\",\"seq\":2,\"backend_pid\":99},"
              "\"observer\":{\"host\":\"h\",\"instance\":\"i\",\"version\":\"1\"},"
              "\"client\":{\"ip\":\"127.0.0.1\",\"port\":5000,\"application\":\"\"},"
              "\"server\":{\"socket\":\"/tmp/.s.PGSQL.5432\"},"
              "\"user\":{\"name\":\"u\",\"database\":\"d\"},"
              "\"statement\":{\"text\":\"SELECT * FROM s.t WHERE a = $1\",\"redacted\":true,"
              "\"truncated\":false,\"fingerprint\":\"0000000000000abc\",\"command\":\"SELECT\","
              "\"class\":\"READ\",\"objects\":[{\"schema\":\"s\",\"name\":\"t\",\"type\":\"table\","
              "\"access\":\"read\"}],\"protocol\":\"extended\",\"statement_name\":\"stmt1\","
              "\"portal_name\":\"\",\"params\":{\"count\":1}},"
              "\"result\":{\"status\":\"ok\",\"tag\":\"SELECT 3\",\"rows\":3,\"bytes\":120,"
              "\"duration_us\":45}}\n");

    /* The sparest event: kind, id, time and nothing else. */
    pgw_event_t bare = { .kind = PGW_EVENT_SESSION_END, .time_us = 0 };
    pgw_jbuf_reset(&g_b);
    CHECK_EQ(pgw_event_encode(&bare, &g_b), 0);
    pgw_jbuf_putc(&g_b, 0);
    CHECK_STR(g_b.data, "{\"v\":1,\"event_id\":\"00000000-0000-0000-0000-000000000000\","
                        "\"kind\":\"session_end\",\"time\":\"1970-01-01T00:00:00.000000Z\"}\n");
}

/* An event with its identity pre-encoded is byte for byte the event
 * encoded in full, for every sample. */
static pgw_jbuf_t g_full;

static void check_identity(const pgw_event_t *ev, const char *name)
{
    pgw_jbuf_t ident;
    pgw_event_t cached = *ev;

    pgw_jbuf_init(&ident, 0);
    pgw_jbuf_lit(&ident, "xx");     /* the fragment is appended */
    CHECK_EQ(pgw_event_encode_identity(ev, &ident), 0);
    /* the cache wins over the fields it replaces */
    memset(&cached.observer, 0, sizeof(cached.observer));
    memset(&cached.client, 0, sizeof(cached.client));
    cached.user.name = PGW_STR_LIT("someone else");
    cached.identity_json = pgw_str(ident.data + 2, ident.len - 2);
    pgw_jbuf_reset(&g_full);
    pgw_jbuf_reset(&g_b);
    CHECK_EQ(pgw_event_encode(ev, &g_full), 0);
    CHECK_EQ(pgw_event_encode(&cached, &g_b), 0);
    CHECK_MEM(g_b.data, g_b.len, g_full.data, g_full.len);
    if (g_b.len != g_full.len)
        fprintf(stderr, "    %s\n", name);
    pgw_jbuf_free(&ident);
}

static void test_identity_cache(void)
{
    pgw_jbuf_init(&g_full, 0);
    samples(check_identity);
    pgw_jbuf_free(&g_full);
}

/* The same for a statement's analysis fields pre-encoded. */
static void check_analysis(const pgw_event_t *ev, const char *name)
{
    pgw_jbuf_t frag;
    pgw_event_t cached = *ev;

    pgw_jbuf_init(&frag, 0);
    pgw_jbuf_lit(&frag, "xx");
    CHECK_EQ(pgw_event_encode_statement_analysis(&ev->statement, &frag), 0);
    cached.statement.text = PGW_STR_LIT("ignored");
    cached.statement.objects = NULL;
    cached.statement.command = PGW_STR_LIT("IGNORED");
    cached.statement.analysis_json = pgw_str(frag.data + 2, frag.len - 2);
    pgw_jbuf_reset(&g_full);
    pgw_jbuf_reset(&g_b);
    CHECK_EQ(pgw_event_encode(ev, &g_full), 0);
    CHECK_EQ(pgw_event_encode(&cached, &g_b), 0);
    if (ev->kind == PGW_EVENT_STATEMENT) {
        CHECK_MEM(g_b.data, g_b.len, g_full.data, g_full.len);
        if (g_b.len != g_full.len)
            fprintf(stderr, "    %s\n", name);
    }
    pgw_jbuf_free(&frag);
}

static void test_analysis_cache(void)
{
    pgw_jbuf_init(&g_full, 0);
    samples(check_analysis);
    pgw_jbuf_free(&g_full);
}

/* A completion from its begin's head (ev->head_json): the same bytes as
 * the whole event encoded, for every sample kind; a statement's head is
 * everything before "result", and what it covers is ignored. */
static void check_head(const pgw_event_t *ev, const char *name)
{
    size_t head_len = 0;
    pgw_jbuf_reset(&g_full);
    pgw_jbuf_reset(&g_b);
    pgw_jbuf_lit(&g_full, "xx");
    CHECK_EQ(pgw_event_encode_head_len(ev, &g_full, &head_len), 0);
    const char *head = g_full.data + 2;
    size_t len = g_full.len - 2;
    CHECK(head_len > 0 && head_len < len);
    if (ev->kind == PGW_EVENT_STATEMENT)
        CHECK(strncmp(head + head_len, ",\"result\":{\"status\":", 20) == 0);
    pgw_event_t completion = *ev;
    completion.head_json = pgw_str(head, head_len);
    completion.event_id[0] ^= 0xff;
    completion.session.seq += 7;
    completion.statement.text = PGW_STR_LIT("ignored");
    completion.identity_json = PGW_STR_LIT(",\"ignored\":1");
    CHECK_EQ(pgw_event_encode(&completion, &g_b), 0);
    CHECK_MEM(g_b.data, g_b.len, head, len);
    if (g_b.len != len)
        fprintf(stderr, "    %s\n", name);
}

static void test_head_reuse(void)
{
    pgw_jbuf_init(&g_full, 0);
    samples(check_head);
    pgw_jbuf_free(&g_full);
}

static void test_failures(void)
{
    pgw_event_t ev;
    pgw_jbuf_t small;

    pgw_event_init(&ev, PGW_EVENT_NONE, T0, &g_gen);
    pgw_jbuf_reset(&g_b);
    pgw_jbuf_lit(&g_b, "prefix");
    CHECK_EQ(pgw_event_encode(&ev, &g_b), -EINVAL);
    ev.kind = PGW_EVENT_KIND_COUNT;
    CHECK_EQ(pgw_event_encode(&ev, &g_b), -EINVAL);
    CHECK_EQ(g_b.len, 6);

    /* A buffer too small for the event: refused, and left as it was. */
    static char text[100000];
    memset(text, 'x', sizeof(text));
    pgw_event_init(&ev, PGW_EVENT_STATEMENT, T0, &g_gen);
    identity(&ev, false, false);
    ev.statement.text = pgw_str(text, sizeof(text));
    pgw_jbuf_init(&small, 64 * 1024);
    pgw_jbuf_lit(&small, "{\"earlier\":1}\n");
    CHECK_EQ(pgw_event_encode(&ev, &small), -E2BIG);
    CHECK_EQ(small.len, 14);
    CHECK(!small.failed);
    ev.statement.text = pgw_str(text, 1000);
    CHECK_EQ(pgw_event_encode(&ev, &small), 0);   /* still usable */
    CHECK(jv_check_line(small.data + 14, small.len - 14) == NULL);

    /* Sticky: once failed, appends do nothing until reset. */
    pgw_jbuf_t tiny;
    pgw_jbuf_init(&tiny, 4);
    pgw_jbuf_lit(&tiny, "abcdef");
    CHECK(tiny.failed && tiny.toobig);
    pgw_jbuf_lit(&tiny, "a");
    CHECK_EQ(tiny.len, 0);
    pgw_jbuf_reset(&tiny);
    pgw_jbuf_lit(&tiny, "abcd");
    CHECK(!tiny.failed);
    CHECK_EQ(tiny.len, 4);
    pgw_jbuf_free(&tiny);
    pgw_jbuf_free(&small);
}

/* ------------------------------------------------------------ ids */

static void test_uuid7(void)
{
    pgw_uuid7_t a, b;
    uint8_t prev[16], id[16];
    char txt[37];

    CHECK_EQ(pgw_uuid7_init(&a), 0);
    CHECK_EQ(pgw_uuid7_init(&b), 0);
    pgw_uuid7_next(&a, 1798761600123, prev);
    CHECK_EQ(prev[0], 0x01);           /* 0x0192... ms since the epoch in 2027 */
    CHECK_EQ(prev[6] >> 4, 7);         /* version */
    CHECK_EQ(prev[8] >> 6, 2);         /* variant */
    uint64_t ms = 0;
    for (int i = 0; i < 6; i++)
        ms = ms << 8 | prev[i];
    CHECK_EQ(ms, 1798761600123);

    /* Strictly increasing: same millisecond, bursts past the counter, a
     * clock that steps back. */
    for (int i = 0; i < 100000; i++) {
        uint64_t t = 1798761600123 + (uint64_t)(i / 5000) - (i % 7 == 0 ? 3 : 0);
        pgw_uuid7_next(&a, t, id);
        CHECK(memcmp(prev, id, 16) < 0);
        CHECK_EQ(id[6] >> 4, 7);
        CHECK_EQ(id[8] >> 6, 2);
        memcpy(prev, id, 16);
    }
    /* Two generators in the same millisecond do not collide. */
    uint8_t x[16], y[16];
    pgw_uuid7_next(&a, 1798761700000, x);
    pgw_uuid7_next(&b, 1798761700000, y);
    CHECK(memcmp(x, y, 16) != 0);

    pgw_event_id_new(id);
    pgw_uuid_format(id, txt);
    txt[36] = 0;
    CHECK(strlen(txt) == 36 && txt[8] == '-' && txt[13] == '-' && txt[14] == '7' &&
          txt[18] == '-' && txt[23] == '-');
    CHECK(strchr("89ab", txt[19]) != NULL);
}

/* ------------------------------------------------------------ extra modes */

static int sanitize_stdin(void)
{
    static uint8_t in[1 << 20];
    size_t n = fread(in, 1, sizeof(in), stdin);
    pgw_json_str(&g_b, in, n);
    fwrite(g_b.data, 1, g_b.len, stdout);
    return g_b.failed ? 1 : 0;
}

static int bench(long n)
{
    pgw_event_t ev;
    struct timespec t0, t1;
    uint64_t sink = 0;

    CHECK_EQ(pgw_uuid7_init(&g_gen), 0);
    pgw_event_init(&ev, PGW_EVENT_STATEMENT, T0, &g_gen);
    identity(&ev, false, false);
    /* pgbench -S: the statement as the tracker would report it */
    ev.statement = (pgw_event_statement_t){
        .text = PGW_STR_LIT("SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
        .redacted = PGW_BOOL_TRUE, .truncated = PGW_BOOL_FALSE,
        .has_fingerprint = true, .fingerprint = 0x5e1ec7ab4a1a7ce5,
        .command = PGW_STR_LIT("SELECT"), .class_ = PGW_STMT_CLASS_READ,
        .objects = objs + 1, .nobjects = 1, .protocol = PGW_PROTOCOL_SIMPLE,
        .index = PGW_INT(1), .count = PGW_INT(1),
    };
    ev.result = (pgw_event_result_t){ .status = PGW_STATUS_OK, .tag = PGW_STR_LIT("SELECT 1"),
                                      .rows = PGW_INT(1), .bytes = PGW_INT(11),
                                      .duration_us = PGW_INT(83) };
    pgw_jbuf_t ident;
    pgw_jbuf_init(&ident, 0);
    if (pgw_event_encode_identity(&ev, &ident) != 0)
        return 1;
    for (int mode = 0; mode < 3; mode++) {
        int with_id = mode == 1;
        ev.identity_json = mode == 2 ? pgw_str(ident.data, ident.len) : (pgw_str_t){ NULL, 0 };
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (long i = 0; i < n; i++) {
            if (g_b.len > 60000)
                pgw_jbuf_reset(&g_b);
            if (with_id)
                pgw_uuid7_next(&g_gen, (uint64_t)(pgw_event_now_us() / 1000), ev.event_id);
            ev.session.seq = (uint64_t)i + 1;
            ev.time_us = T0 + i;
            sink += (uint64_t)pgw_event_encode(&ev, &g_b);
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double ns = ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / (double)n;
        pgw_jbuf_reset(&g_b);
        if (pgw_event_encode(&ev, &g_b) != 0)
            return 1;
        printf("%-40s %6.1f ns per event, %zu bytes each\n",
               mode == 0 ? "encode:" : mode == 1 ? "encode + new id (clock read):"
                                                 : "encode, identity pre-encoded:",
               ns, g_b.len);
    }
    pgw_jbuf_free(&ident);
    return sink != 0;
}

int main(int argc, char **argv)
{
    pgw_jbuf_init(&g_b, 0);
    if (argc > 1 && strcmp(argv[1], "--sanitize") == 0)
        return sanitize_stdin();
    if (argc > 1 && strcmp(argv[1], "--bench") == 0)
        return bench(argc > 2 ? atol(argv[2]) : 2000000);

    CHECK_EQ(pgw_uuid7_init(&g_gen), 0);
    test_every_byte();
    test_cases();
    test_random();
    test_long();
    test_numbers();
    test_times();
    test_base64();
    test_events();
    test_exact();
    test_identity_cache();
    test_analysis_cache();
    test_head_reuse();
    test_failures();
    test_uuid7();
    pgw_jbuf_free(&g_b);
    CHECK_DONE();
}
