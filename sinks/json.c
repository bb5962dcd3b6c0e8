/* JSON output and the audit event encoder. See pgwarden/json.h.
 *
 * The hot path is pgw_event_encode of a statement event: a few dozen short
 * strings and integers into a buffer that already has room. So: no printf,
 * keys are compile-time literals, strings are scanned eight bytes at a time
 * and copied in runs, and room is reserved once per run instead of per byte. */
#include "pgwarden/json.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ buffer */

void pgw_jbuf_init(pgw_jbuf_t *b, size_t max)
{
    b->data = NULL;
    b->len = b->cap = 0;
    b->max = max ? max : SIZE_MAX;
    b->failed = b->toobig = false;
}

void pgw_jbuf_free(pgw_jbuf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
    b->failed = b->toobig = false;
}

bool pgw_jbuf_grow(pgw_jbuf_t *b, size_t n)
{
    if (b->failed)
        return false;
    if (b->cap - b->len >= n)
        return true;
    if (n > b->max || b->len > b->max - n) {
        b->failed = b->toobig = true;
        return false;
    }
    size_t need = b->len + n;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (cap > b->max)
        cap = b->max;
    char *p = realloc(b->data, cap);
    if (!p) {
        b->failed = true;
        return false;
    }
    b->data = p;
    b->cap = cap;
    return true;
}

/* ------------------------------------------------------------ strings */

static const char hexdig[] = "0123456789abcdef";

/* Two-character escapes; 'u' means \u00XX. Indexed by bytes below 0x20. */
static const char ctrl_esc[32] = {
    'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'b', 't', 'n', 'u', 'f', 'r', 'u', 'u',
    'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u',
};

#define ONES  UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)

/* True when any of the eight bytes needs attention: a control character,
 * '"', '\\' or a non-ASCII byte. Each test is exact for "is there any". */
static inline bool word_special(uint64_t w)
{
    uint64_t ctl = (w - ONES * 0x20) & ~w;
    uint64_t quo = w ^ (ONES * '"');
    uint64_t bsl = w ^ (ONES * '\\');
    quo = (quo - ONES) & ~quo;
    bsl = (bsl - ONES) & ~bsl;
    return ((ctl | quo | bsl | w) & HIGHS) != 0;
}

/* Length of the well-formed UTF-8 sequence at s (avail > 0 bytes, s[0] >=
 * 0x80) as a positive number, or minus the length of its maximal ill-formed
 * subpart (the lead byte and the continuation bytes that were still
 * possible), per Unicode 15 §3.9 Table 3-7. */
static inline int utf8_seq(const uint8_t *s, size_t avail)
{
    uint8_t c = s[0], lo = 0x80, hi = 0xBF;
    int need;

    if (c < 0xC2)
        return -1;                 /* continuation byte, or overlong C0/C1 */
    if (c < 0xE0) {
        need = 1;
    } else if (c < 0xF0) {
        need = 2;
        if (c == 0xE0)
            lo = 0xA0;             /* overlong */
        else if (c == 0xED)
            hi = 0x9F;             /* surrogates */
    } else if (c < 0xF5) {
        need = 3;
        if (c == 0xF0)
            lo = 0x90;             /* overlong */
        else if (c == 0xF4)
            hi = 0x8F;             /* above U+10FFFF */
    } else {
        return -1;
    }
    if (avail < 2 || s[1] < lo || s[1] > hi)
        return -1;
    for (int k = 2; k <= need; k++)
        if ((size_t)k >= avail || s[k] < 0x80 || s[k] > 0xBF)
            return -k;
    return need + 1;
}

#if defined(__SSE2__)
/* Sixteen bytes at a time where the baseline ISA has it: one signed
 * compare catches both control characters and non-ASCII bytes (negative as
 * signed), two more catch '"' and '\\'. */
#include <emmintrin.h>
#define HAVE_BLOCK16 1
#endif

/* Input bytes handled per reservation: each input byte gives at most six
 * output bytes (\u00XX), so the reservation stays small for huge texts. */
#define STR_CHUNK 4096
/* What a chunk may write beyond 6 bytes per input byte: a step that starts
 * before the chunk's end may read 16 bytes (storing 16) or a 4-byte
 * sequence past it, plus the two quotes. */
#define STR_SLACK 128

size_t pgw_utf8_prefix(const void *s, size_t len, size_t max)
{
    const uint8_t *p = s;
    if (len <= max)
        return len;
    while (max > 0 && (p[max] & 0xC0) == 0x80)
        max--;
    return max;
}

void pgw_json_str(pgw_jbuf_t *b, const void *sv, size_t n)
{
    const uint8_t *s = sv;
    size_t i = 0;

    do {
        size_t end = n - i > STR_CHUNK ? i + STR_CHUNK : n;
        if (!pgw_jbuf_reserve(b, 6 * (end - i) + STR_SLACK))
            return;
        char *o = b->data + b->len;
        if (i == 0)
            *o++ = '"';

        while (i < end) {
            size_t left = n - i;
            if (left >= 16) {
#ifdef HAVE_BLOCK16
                __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + i));
                __m128i sp = _mm_or_si128(
                    _mm_cmplt_epi8(v, _mm_set1_epi8(0x20)),
                    _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')),
                                 _mm_cmpeq_epi8(v, _mm_set1_epi8('\\'))));
                unsigned m = (unsigned)_mm_movemask_epi8(sp);
                unsigned k = m ? (unsigned)__builtin_ctz(m) : 16;
                _mm_storeu_si128((__m128i *)(void *)o, v);   /* only k bytes count */
                o += k;
                i += k;
                if (k == 16)
                    continue;
#else
                uint64_t w;
                memcpy(&w, s + i, 8);
                if (!word_special(w)) {
                    memcpy(o, &w, 8);
                    o += 8;
                    i += 8;
                    continue;
                }
#endif
            } else if (left >= 4) {
                /* The short tail (most fields are short) in one go, with two
                 * overlapping loads that stay inside the input. */
                uint64_t w1, w2;
                if (left >= 8) {
                    memcpy(&w1, s + i, 8);
                    memcpy(&w2, s + n - 8, 8);
                } else {
                    uint32_t lo, hi;
                    memcpy(&lo, s + i, 4);
                    memcpy(&hi, s + n - 4, 4);
                    w1 = w2 = lo | (uint64_t)hi << 32;
                }
                if (!word_special(w1) && !word_special(w2)) {
                    if (left >= 8) {
                        memcpy(o, &w1, 8);
                        memcpy(o + left - 8, &w2, 8);
                    } else {
                        memcpy(o, s + i, 4);
                        memcpy(o + left - 4, s + n - 4, 4);
                    }
                    o += left;
                    i = n;
                    continue;
                }
            }
            /* One byte or one UTF-8 sequence, whatever it is. */
            uint8_t c = s[i];
            if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
                *o++ = (char)c;
                i++;
            } else if (c == '"' || c == '\\') {
                o[0] = '\\';
                o[1] = (char)c;
                o += 2;
                i++;
            } else if (c < 0x20) {
                o[0] = '\\';
                if (ctrl_esc[c] != 'u') {
                    o[1] = ctrl_esc[c];
                    o += 2;
                } else {
                    memcpy(o + 1, "u00", 3);
                    o[4] = hexdig[c >> 4];
                    o[5] = hexdig[c & 15];
                    o += 6;
                }
                i++;
            } else {
                int k = utf8_seq(s + i, n - i);
                if (k > 0) {
                    memcpy(o, s + i, (size_t)k);
                    o += k;
                    i += (size_t)k;
                } else {
                    memcpy(o, "\xEF\xBF\xBD", 3);   /* U+FFFD */
                    o += 3;
                    i += (size_t)-k;
                }
            }
        }
        if (i >= n)
            *o++ = '"';
        b->len = (size_t)(o - b->data);
    } while (i < n);
}

/* ------------------------------------------------------------ numbers */

static const char digit_pairs[201] =
    "00010203040506070809101112131415161718192021222324"
    "25262728293031323334353637383940414243444546474849"
    "50515253545556575859606162636465666768697071727374"
    "75767778798081828384858687888990919293949596979899";

/* Writes v in decimal ending just before `end`; returns the first byte. */
static inline char *u64_digits(char *end, uint64_t v)
{
    while (v >= 100) {
        unsigned r = (unsigned)(v % 100);
        v /= 100;
        end -= 2;
        memcpy(end, digit_pairs + 2 * r, 2);
    }
    if (v >= 10) {
        end -= 2;
        memcpy(end, digit_pairs + 2 * v, 2);
    } else {
        *--end = (char)('0' + v);
    }
    return end;
}

void pgw_json_u64(pgw_jbuf_t *b, uint64_t v)
{
    char tmp[20], *p = u64_digits(tmp + sizeof(tmp), v);
    pgw_jbuf_put(b, p, (size_t)(tmp + sizeof(tmp) - p));
}

void pgw_json_i64(pgw_jbuf_t *b, int64_t v)
{
    char tmp[21], *p;

    if (v < 0) {
        p = u64_digits(tmp + sizeof(tmp), (uint64_t)0 - (uint64_t)v);
        *--p = '-';
    } else {
        p = u64_digits(tmp + sizeof(tmp), (uint64_t)v);
    }
    pgw_jbuf_put(b, p, (size_t)(tmp + sizeof(tmp) - p));
}

/* ------------------------------------------------------------ times */

static inline void put2(char *o, unsigned v)
{
    memcpy(o, digit_pairs + 2 * v, 2);
}

/* Days since 1970-01-01 to a proleptic Gregorian date, by whole 400-year
 * eras counted from 0000-03-01 so that leap days fall at the end of a year
 * (the well-known civil-from-days method); exact for any int64 day. */
static void civil_from_days(int64_t days, unsigned *y, unsigned *m, unsigned *d)
{
    int64_t z = days + 719468;                       /* days since 0000-03-01 */
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);     /* [0, 146096] */
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;               /* March = 0 */
    int64_t year = (int64_t)yoe + era * 400;

    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (unsigned)(year + (*m <= 2));
}

#define US_MIN (-INT64_C(62167219200) * 1000000)               /* 0000-01-01T00:00:00Z */
#define US_MAX (INT64_C(253402300799) * 1000000 + 999999)       /* 9999-12-31T23:59:59.999999Z */

/* Writes "YYYY-MM-DDTHH:MM:SS" (19 bytes). */
static void put_datetime(char *o, int64_t secs)
{
    int64_t days = secs / 86400, sod = secs % 86400;
    unsigned y, m, d;

    if (sod < 0) {
        sod += 86400;
        days--;
    }
    civil_from_days(days, &y, &m, &d);
    put2(o, y / 100);
    put2(o + 2, y % 100);
    o[4] = '-';
    put2(o + 5, m);
    o[7] = '-';
    put2(o + 8, d);
    o[10] = 'T';
    put2(o + 11, (unsigned)(sod / 3600));
    o[13] = ':';
    put2(o + 14, (unsigned)(sod / 60 % 60));
    o[16] = ':';
    put2(o + 17, (unsigned)(sod % 60));
}

void pgw_json_time_us(pgw_jbuf_t *b, int64_t us)
{
    if (us < US_MIN)
        us = US_MIN;
    else if (us > US_MAX)
        us = US_MAX;
    int64_t secs = us / 1000000, frac = us % 1000000;
    if (frac < 0) {
        frac += 1000000;
        secs--;
    }
    if (!pgw_jbuf_reserve(b, 29))
        return;
    char *o = b->data + b->len;
    o[0] = '"';
    /* Events come in bursts within one second: its date and time are
     * formatted once per thread. */
    static _Thread_local int64_t last_secs = INT64_MIN;
    static _Thread_local char last_text[19];
    if (secs != last_secs) {
        put_datetime(last_text, secs);
        last_secs = secs;
    }
    memcpy(o + 1, last_text, 19);
    o[20] = '.';
    put2(o + 21, (unsigned)(frac / 10000));
    put2(o + 23, (unsigned)(frac / 100 % 100));
    put2(o + 25, (unsigned)(frac % 100));
    o[27] = 'Z';
    o[28] = '"';
    b->len += 29;
}

void pgw_json_time_s(pgw_jbuf_t *b, int64_t s)
{
    if (s < US_MIN / 1000000)
        s = US_MIN / 1000000;
    else if (s > US_MAX / 1000000)
        s = US_MAX / 1000000;
    if (!pgw_jbuf_reserve(b, 22))
        return;
    char *o = b->data + b->len;
    o[0] = '"';
    put_datetime(o + 1, s);
    o[20] = 'Z';
    o[21] = '"';
    b->len += 22;
}

/* ------------------------------------------------------------ base64 */

void pgw_json_base64(pgw_jbuf_t *b, const void *pv, size_t n)
{
    static const char tbl[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const uint8_t *p = pv;

    if (n > (SIZE_MAX - 2) / 4 * 3) {
        b->failed = b->toobig = true;
        return;
    }
    if (!pgw_jbuf_reserve(b, (n + 2) / 3 * 4 + 2))
        return;
    char *o = b->data + b->len;
    *o++ = '"';
    for (; n >= 3; n -= 3, p += 3) {
        uint32_t v = (uint32_t)p[0] << 16 | (uint32_t)p[1] << 8 | p[2];
        o[0] = tbl[v >> 18];
        o[1] = tbl[(v >> 12) & 63];
        o[2] = tbl[(v >> 6) & 63];
        o[3] = tbl[v & 63];
        o += 4;
    }
    if (n) {
        uint32_t v = (uint32_t)p[0] << 16 | (n == 2 ? (uint32_t)p[1] << 8 : 0);
        o[0] = tbl[v >> 18];
        o[1] = tbl[(v >> 12) & 63];
        o[2] = n == 2 ? tbl[(v >> 6) & 63] : '=';
        o[3] = '=';
        o += 4;
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
}

/* ------------------------------------------------------------ events */

/* Enum spellings, quoted, with their lengths: no strlen on the hot path. */
typedef struct name {
    const char *s;
    size_t n;
} name_t;
#define NM(x) { "\"" x "\"", sizeof(x) + 1 }

static const name_t class_names[PGW_STMT_CLASS_COUNT] = {
    [PGW_STMT_CLASS_READ] = NM("READ"), [PGW_STMT_CLASS_WRITE] = NM("WRITE"),
    [PGW_STMT_CLASS_FUNCTION] = NM("FUNCTION"), [PGW_STMT_CLASS_ROLE] = NM("ROLE"),
    [PGW_STMT_CLASS_DDL] = NM("DDL"), [PGW_STMT_CLASS_MISC] = NM("MISC"),
    [PGW_STMT_CLASS_MISC_SET] = NM("MISC_SET"),
};
static const name_t protocol_names[PGW_PROTOCOL_COUNT] = {
    [PGW_PROTOCOL_SIMPLE] = NM("simple"), [PGW_PROTOCOL_EXTENDED] = NM("extended"),
    [PGW_PROTOCOL_FUNCTION_CALL] = NM("function_call"),
};
static const name_t status_names[PGW_STATUS_COUNT] = {
    [PGW_STATUS_OK] = NM("ok"), [PGW_STATUS_ERROR] = NM("error"),
    [PGW_STATUS_CANCELLED] = NM("cancelled"), [PGW_STATUS_SKIPPED] = NM("skipped"),
    [PGW_STATUS_UNKNOWN] = NM("unknown"),
};
static const name_t access_names[PGW_OBJ_ACCESS_COUNT] = {
    [PGW_OBJ_ACCESS_READ] = NM("read"), [PGW_OBJ_ACCESS_WRITE] = NM("write"),
};
static const name_t copy_names[PGW_COPY_COUNT] = {
    [PGW_COPY_IN] = NM("in"), [PGW_COPY_OUT] = NM("out"),
};
static const name_t reason_names[PGW_END_COUNT] = {
    [PGW_END_CLIENT_CLOSED] = NM("client_closed"), [PGW_END_SERVER_CLOSED] = NM("server_closed"),
    [PGW_END_ERROR] = NM("error"), [PGW_END_SHUTDOWN] = NM("shutdown"),
    [PGW_END_TIMEOUT] = NM("timeout"),
};
static const name_t kind_names[PGW_EVENT_KIND_COUNT] = {
    [PGW_EVENT_SESSION_START] = NM("session_start"), [PGW_EVENT_AUTH_FAILURE] = NM("auth_failure"),
    [PGW_EVENT_STATEMENT] = NM("statement"), [PGW_EVENT_DENIED] = NM("denied"),
    [PGW_EVENT_CANCEL] = NM("cancel"), [PGW_EVENT_SESSION_END] = NM("session_end"),
    [PGW_EVENT_AUDIT_GAP] = NM("audit_gap"),
};

/* Which optional groups each kind carries. Fields of other groups are
 * ignored, so a struct reused across kinds (identity filled once per
 * session) cannot leak a stale statement into, say, a session_end. */
enum {
    G_STATEMENT = 1 << 0, G_RESULT = 1 << 1, G_COPY = 1 << 2, G_START = 1 << 3,
    G_AUTH_METHOD = 1 << 4, G_RULE = 1 << 5, G_TARGET = 1 << 6, G_END = 1 << 7,
    G_GAP = 1 << 8,
};
static const unsigned kind_groups[PGW_EVENT_KIND_COUNT] = {
    [PGW_EVENT_SESSION_START] = G_START | G_AUTH_METHOD,
    [PGW_EVENT_AUTH_FAILURE] = G_RESULT | G_AUTH_METHOD,
    [PGW_EVENT_STATEMENT] = G_STATEMENT | G_RESULT | G_COPY,
    [PGW_EVENT_DENIED] = G_RULE | G_STATEMENT | G_RESULT,
    [PGW_EVENT_CANCEL] = G_TARGET,
    [PGW_EVENT_SESSION_END] = G_END,
    [PGW_EVENT_AUDIT_GAP] = G_GAP,
};

/* Every field is written as `,"key":value`, one constant append for the
 * separator and key. An object is opened by writing only its key; on
 * close, the comma of its first field becomes its '{'. So no field needs
 * to know whether it is the first, and an object with nothing set is
 * rolled back whole (omitted). The top level always starts with "v", so a
 * leading comma is right there too. */
typedef struct obj {
    size_t mark;                   /* where the object's own key starts */
    size_t pos;                    /* where its first field's comma will be */
} obj_t;

/* K("name") expands to the literal `,"name":` and its length. */
#define K(name) ",\"" name "\":", sizeof(",\"" name "\":") - 1

static inline obj_t open_obj(pgw_jbuf_t *b, const char *k, size_t klen)
{
    obj_t o = { b->len, b->len + klen };
    pgw_jbuf_put(b, k, klen);
    return o;
}

static inline void close_obj(pgw_jbuf_t *b, const obj_t *o)
{
    if (b->len > o->pos) {
        b->data[o->pos] = '{';
        pgw_jbuf_putc(b, '}');
    } else {
        b->len = o->mark;          /* nothing in it: omit */
    }
}

static inline void f_str(pgw_jbuf_t *b, const char *k, size_t klen, pgw_str_t s)
{
    if (s.ptr) {
        pgw_jbuf_put(b, k, klen);
        pgw_json_str(b, s.ptr, s.len);
    }
}

static inline void f_int(pgw_jbuf_t *b, const char *k, size_t klen, pgw_optint_t v)
{
    if (v.set) {
        pgw_jbuf_put(b, k, klen);
        pgw_json_i64(b, v.v);
    }
}

static inline void f_u64(pgw_jbuf_t *b, const char *k, size_t klen, uint64_t v)
{
    pgw_jbuf_put(b, k, klen);
    pgw_json_u64(b, v);
}

static inline void f_bool(pgw_jbuf_t *b, const char *k, size_t klen, pgw_optbool_t v)
{
    if (v == PGW_BOOL_TRUE) {
        pgw_jbuf_put(b, k, klen);
        pgw_jbuf_lit(b, "true");
    } else if (v == PGW_BOOL_FALSE) {
        pgw_jbuf_put(b, k, klen);
        pgw_jbuf_lit(b, "false");
    }
}

/* Enum fields: value 0 and out-of-range values are absent. */
static inline void f_enum(pgw_jbuf_t *b, const char *k, size_t klen,
                          const name_t *names, unsigned count, unsigned v)
{
    if (v != 0 && v < count && names[v].s) {
        pgw_jbuf_put(b, k, klen);
        pgw_jbuf_put(b, names[v].s, names[v].n);
    }
}

static void enc_peer(pgw_jbuf_t *b, const char *k, size_t klen, const pgw_event_peer_t *p,
                     bool client)
{
    obj_t o = open_obj(b, k, klen);
    f_str(b, K("ip"), p->ip);
    if (p->port)
        f_u64(b, K("port"), p->port);
    f_str(b, K("socket"), p->socket);
    if (client)
        f_str(b, K("application"), p->application);
    close_obj(b, &o);
}

/* A string array; NULL elements are written as "". */
static void str_array(pgw_jbuf_t *b, const pgw_str_t *v, size_t n)
{
    pgw_jbuf_putc(b, '[');
    for (size_t i = 0; i < n; i++) {
        if (i)
            pgw_jbuf_putc(b, ',');
        pgw_json_str(b, v[i].ptr, v[i].ptr ? v[i].len : 0);
    }
    pgw_jbuf_putc(b, ']');
}

static void enc_cert(pgw_jbuf_t *b, const pgw_event_cert_t *c)
{
    obj_t o = open_obj(b, K("cert"));
    f_str(b, K("subject"), c->subject);
    f_str(b, K("cn"), c->cn);
    if (c->san) {
        pgw_jbuf_put(b, K("san"));
        str_array(b, c->san, c->nsan);
    }
    f_str(b, K("issuer"), c->issuer);
    f_str(b, K("serial"), c->serial);
    f_str(b, K("sha256"), c->sha256);
    if (c->not_before.set) {
        pgw_jbuf_put(b, K("not_before"));
        pgw_json_time_s(b, c->not_before.v);
    }
    if (c->not_after.set) {
        pgw_jbuf_put(b, K("not_after"));
        pgw_json_time_s(b, c->not_after.v);
    }
    close_obj(b, &o);
}

static void enc_objects(pgw_jbuf_t *b, const pgw_event_object_t *obs, size_t n)
{
    pgw_jbuf_put(b, K("objects"));
    pgw_jbuf_putc(b, '[');
    for (size_t i = 0; i < n; i++) {
        const pgw_event_object_t *ob = &obs[i];
        if (i)
            pgw_jbuf_putc(b, ',');
        obj_t x = { b->len, b->len };
        f_str(b, K("schema"), ob->schema);
        f_str(b, K("name"), ob->name);
        f_str(b, K("type"), ob->type);
        f_enum(b, K("access"), access_names, PGW_OBJ_ACCESS_COUNT, ob->access);
        if (b->len > x.pos) {
            b->data[x.pos] = '{';
            pgw_jbuf_putc(b, '}');
        } else {
            pgw_jbuf_lit(b, "{}");   /* kept: the array stays aligned */
        }
    }
    pgw_jbuf_putc(b, ']');
}

static void enc_params(pgw_jbuf_t *b, const pgw_event_statement_t *s)
{
    obj_t p = open_obj(b, K("params"));
    f_int(b, K("count"), s->param_count.set ? s->param_count : PGW_INT(s->nparam_values));
    if (s->param_values) {
        pgw_jbuf_put(b, K("values"));
        pgw_jbuf_putc(b, '[');
        for (size_t i = 0; i < s->nparam_values; i++) {
            const pgw_event_param_t *v = &s->param_values[i];
            if (i)
                pgw_jbuf_putc(b, ',');
            if (v->is_null)
                pgw_jbuf_lit(b, "null");
            else if (v->binary)
                pgw_json_base64(b, v->ptr, v->len);
            else
                pgw_json_str(b, v->ptr, v->len);
        }
        pgw_jbuf_putc(b, ']');
    }
    close_obj(b, &p);
}

/* The fields that come from the SQL analysis. */
static void enc_analysis(pgw_jbuf_t *b, const pgw_event_statement_t *s)
{
    f_str(b, K("text"), s->text);
    f_bool(b, K("redacted"), s->redacted);
    f_bool(b, K("truncated"), s->truncated);
    if (s->has_fingerprint) {
        char hex[18];
        uint64_t fp = s->fingerprint;
        hex[0] = hex[17] = '"';
        for (int i = 16; i >= 1; i--, fp >>= 4)
            hex[i] = hexdig[fp & 15];
        pgw_jbuf_put(b, K("fingerprint"));
        pgw_jbuf_put(b, hex, sizeof(hex));
    }
    f_str(b, K("command"), s->command);
    f_enum(b, K("class"), class_names, PGW_STMT_CLASS_COUNT, s->class_);
    if (s->objects)
        enc_objects(b, s->objects, s->nobjects);
}

static void enc_statement(pgw_jbuf_t *b, const pgw_event_statement_t *s)
{
    obj_t o = open_obj(b, K("statement"));

    if (s->analysis_json.ptr)
        pgw_jbuf_put(b, s->analysis_json.ptr, s->analysis_json.len);
    else
        enc_analysis(b, s);
    f_enum(b, K("protocol"), protocol_names, PGW_PROTOCOL_COUNT, s->protocol);
    f_str(b, K("statement_name"), s->statement_name);
    f_str(b, K("portal_name"), s->portal_name);
    f_int(b, K("index"), s->index);
    f_int(b, K("count"), s->count);
    if (s->param_count.set || s->param_values)
        enc_params(b, s);
    f_str(b, K("parse_error"), s->parse_error);
    close_obj(b, &o);
}

static void enc_result(pgw_jbuf_t *b, const pgw_event_result_t *r)
{
    obj_t o = open_obj(b, K("result"));
    f_enum(b, K("status"), status_names, PGW_STATUS_COUNT, r->status);
    f_str(b, K("tag"), r->tag);
    f_int(b, K("rows"), r->rows);
    f_int(b, K("bytes"), r->bytes);
    f_str(b, K("sqlstate"), r->sqlstate);
    f_str(b, K("message"), r->message);
    f_int(b, K("duration_us"), r->duration_us);
    close_obj(b, &o);
}

/* The fields that stay the same for a whole session. */
static void enc_identity(pgw_jbuf_t *b, const pgw_event_t *ev)
{
    obj_t o = open_obj(b, K("observer"));
    f_str(b, K("host"), ev->observer.host);
    f_str(b, K("instance"), ev->observer.instance);
    f_str(b, K("version"), ev->observer.version);
    close_obj(b, &o);

    enc_peer(b, K("client"), &ev->client, true);
    enc_peer(b, K("server"), &ev->server, false);

    o = open_obj(b, K("user"));
    f_str(b, K("name"), ev->user.name);
    f_str(b, K("database"), ev->user.database);
    if (ev->user.cert)
        enc_cert(b, ev->user.cert);
    close_obj(b, &o);

    o = open_obj(b, K("tls"));
    f_str(b, K("version"), ev->tls.version);
    f_str(b, K("cipher"), ev->tls.cipher);
    close_obj(b, &o);
}

/* Undoes a failed encoding: the buffer as it was, the failure reported. */
static int rollback(pgw_jbuf_t *b, size_t start)
{
    int rc = b->toobig ? -E2BIG : -ENOMEM;
    b->len = start;
    b->failed = b->toobig = false;
    return rc;
}

int pgw_event_encode_identity(const pgw_event_t *ev, pgw_jbuf_t *b)
{
    size_t start = b->len;

    enc_identity(b, ev);
    return b->failed ? rollback(b, start) : 0;
}

int pgw_event_encode_statement_analysis(const pgw_event_statement_t *s, pgw_jbuf_t *b)
{
    size_t start = b->len;

    enc_analysis(b, s);
    return b->failed ? rollback(b, start) : 0;
}

int pgw_event_encode(const pgw_event_t *ev, pgw_jbuf_t *b)
{
    size_t head_len;
    return pgw_event_encode_head_len(ev, b, &head_len);
}

/* Everything before `result`: the part of a statement event that its begin
 * record and its completion share. */
static void enc_head(pgw_jbuf_t *b, const pgw_event_t *ev, unsigned groups)
{
    char id[36];

    pgw_jbuf_lit(b, "{\"v\":1,\"event_id\":\"");
    pgw_uuid_format(ev->event_id, id);
    pgw_jbuf_put(b, id, sizeof(id));
    pgw_jbuf_lit(b, "\",\"kind\":");
    pgw_jbuf_put(b, kind_names[ev->kind].s, kind_names[ev->kind].n);
    pgw_jbuf_lit(b, ",\"time\":");
    pgw_json_time_us(b, ev->time_us);

    obj_t o = open_obj(b, K("session"));
    f_str(b, K("id"), ev->session.id);
    if (ev->session.seq)
        f_u64(b, K("seq"), ev->session.seq);
    if (ev->session.backend_pid)
        f_int(b, K("backend_pid"), PGW_INT(ev->session.backend_pid));
    close_obj(b, &o);

    if (ev->identity_json.ptr)
        pgw_jbuf_put(b, ev->identity_json.ptr, ev->identity_json.len);
    else
        enc_identity(b, ev);

    if (groups & G_START)
        f_str(b, K("server_version"), ev->server_version);
    if (groups & G_AUTH_METHOD)
        f_str(b, K("auth_method"), ev->auth_method);
    if (groups & G_RULE) {
        f_str(b, K("rule"), ev->rule);
        f_bool(b, K("enforced"), ev->enforced);
    }
    if (groups & G_STATEMENT)
        enc_statement(b, &ev->statement);
}

int pgw_event_encode_head_len(const pgw_event_t *ev, pgw_jbuf_t *b, size_t *head_len)
{
    if ((unsigned)ev->kind >= PGW_EVENT_KIND_COUNT || ev->kind == PGW_EVENT_NONE)
        return -EINVAL;

    const size_t start = b->len;
    const unsigned groups = kind_groups[ev->kind];
    obj_t o;

    if (ev->head_json.ptr)
        pgw_jbuf_put(b, ev->head_json.ptr, ev->head_json.len);
    else
        enc_head(b, ev, groups);
    *head_len = b->len - start;
    if (groups & G_RESULT)
        enc_result(b, &ev->result);
    if (groups & G_COPY) {
        o = open_obj(b, K("copy"));
        f_enum(b, K("direction"), copy_names, PGW_COPY_COUNT, ev->copy.direction);
        f_int(b, K("rows"), ev->copy.rows);
        f_int(b, K("bytes"), ev->copy.bytes);
        close_obj(b, &o);
    }
    if (groups & G_TARGET) {
        o = open_obj(b, K("target"));
        f_str(b, K("session_id"), ev->target.session_id);
        if (ev->target.backend_pid)
            f_int(b, K("backend_pid"), PGW_INT(ev->target.backend_pid));
        close_obj(b, &o);
    }
    if (groups & G_END) {
        f_enum(b, K("reason"), reason_names, PGW_END_COUNT, ev->end.reason);
        f_int(b, K("duration_us"), ev->end.duration_us);
        f_int(b, K("statements"), ev->end.statements);
        f_int(b, K("errors"), ev->end.errors);
        f_int(b, K("bytes_in"), ev->end.bytes_in);
        f_int(b, K("bytes_out"), ev->end.bytes_out);
    }
    if (groups & G_GAP) {
        f_int(b, K("dropped"), ev->gap.dropped);
        if (ev->gap.from_us.set) {
            pgw_jbuf_put(b, K("from"));
            pgw_json_time_us(b, ev->gap.from_us.v);
        }
        if (ev->gap.to_us.set) {
            pgw_jbuf_put(b, K("to"));
            pgw_json_time_us(b, ev->gap.to_us.v);
        }
    }
    pgw_jbuf_lit(b, "}\n");
    return b->failed ? rollback(b, start) : 0;
}
