/* A small strict JSON checker for the sink tests (RFC 8259, one value):
 * no raw control characters in strings, well-formed escapes (surrogates in
 * pairs), strictly well-formed UTF-8, the exact number grammar, no
 * duplicate keys in an object, nothing after the value. Written apart from
 * sinks/json.c on purpose: it must not share the encoder's mistakes.
 *
 * jv_string() also decodes a JSON string into bytes, so a test can compare
 * what the encoder meant with what a consumer reads. */
#ifndef PGW_TEST_JSON_VALIDATE_H
#define PGW_TEST_JSON_VALIDATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define JV_MAX_DEPTH 32
#define JV_MAX_KEYS 64

typedef struct jv {
    const uint8_t *p, *end;
    int depth;
    const char *err;              /* first error, NULL when valid */
} jv_t;

static inline bool jv_fail(jv_t *v, const char *why)
{
    if (!v->err)
        v->err = why;
    return false;
}

static inline void jv_ws(jv_t *v)
{
    while (v->p < v->end && (*v->p == ' ' || *v->p == '\t' || *v->p == '\n' || *v->p == '\r'))
        v->p++;
}

/* A well-formed UTF-8 sequence at s by code point arithmetic (not by the
 * byte-range table the encoder uses): its length, or 0. */
static inline int jv_utf8_len(const uint8_t *s, size_t avail)
{
    uint32_t cp, min;
    int n;

    if (s[0] < 0x80)
        return 1;
    if ((s[0] & 0xE0) == 0xC0) { n = 2; cp = s[0] & 0x1F; min = 0x80; }
    else if ((s[0] & 0xF0) == 0xE0) { n = 3; cp = s[0] & 0x0F; min = 0x800; }
    else if ((s[0] & 0xF8) == 0xF0) { n = 4; cp = s[0] & 0x07; min = 0x10000; }
    else return 0;
    if ((size_t)n > avail)
        return 0;
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

static inline size_t jv_put_utf8(uint8_t *o, uint32_t cp)
{
    if (cp < 0x80) { o[0] = (uint8_t)cp; return 1; }
    if (cp < 0x800) { o[0] = (uint8_t)(0xC0 | cp >> 6); o[1] = (uint8_t)(0x80 | (cp & 63)); return 2; }
    if (cp < 0x10000) {
        o[0] = (uint8_t)(0xE0 | cp >> 12); o[1] = (uint8_t)(0x80 | ((cp >> 6) & 63));
        o[2] = (uint8_t)(0x80 | (cp & 63));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | cp >> 18); o[1] = (uint8_t)(0x80 | ((cp >> 12) & 63));
    o[2] = (uint8_t)(0x80 | ((cp >> 6) & 63)); o[3] = (uint8_t)(0x80 | (cp & 63));
    return 4;
}

static inline int jv_hex4(const uint8_t *p, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

/* A string at v->p (on the opening quote). With out non-NULL (room for as
 * many bytes as the literal has), the decoded bytes go there and *outlen
 * gets their count. */
static inline bool jv_string(jv_t *v, uint8_t *out, size_t *outlen)
{
    size_t n = 0;

    if (v->p >= v->end || *v->p != '"')
        return jv_fail(v, "expected a string");
    v->p++;
    for (;;) {
        if (v->p >= v->end)
            return jv_fail(v, "unterminated string");
        uint8_t c = *v->p;
        if (c == '"') {
            v->p++;
            break;
        }
        if (c < 0x20)
            return jv_fail(v, "raw control character in a string");
        if (c == '\\') {
            if (v->end - v->p < 2)
                return jv_fail(v, "cut escape");
            uint8_t e = v->p[1];
            uint32_t cp;
            v->p += 2;
            switch (e) {
            case '"': cp = '"'; break;
            case '\\': cp = '\\'; break;
            case '/': cp = '/'; break;
            case 'b': cp = '\b'; break;
            case 'f': cp = '\f'; break;
            case 'n': cp = '\n'; break;
            case 'r': cp = '\r'; break;
            case 't': cp = '\t'; break;
            case 'u':
                if (v->end - v->p < 4 || jv_hex4(v->p, &cp) != 0)
                    return jv_fail(v, "bad \\u escape");
                v->p += 4;
                if (cp >= 0xDC00 && cp <= 0xDFFF)
                    return jv_fail(v, "lone low surrogate");
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    uint32_t lo;
                    if (v->end - v->p < 6 || v->p[0] != '\\' || v->p[1] != 'u' ||
                        jv_hex4(v->p + 2, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF)
                        return jv_fail(v, "lone high surrogate");
                    v->p += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                break;
            default:
                return jv_fail(v, "unknown escape");
            }
            if (out)
                n += jv_put_utf8(out + n, cp);
            continue;
        }
        int k = jv_utf8_len(v->p, (size_t)(v->end - v->p));
        if (k == 0)
            return jv_fail(v, "ill-formed UTF-8 in a string");
        if (out)
            memcpy(out + n, v->p, (size_t)k);
        n += (size_t)k;
        v->p += k;
    }
    if (outlen)
        *outlen = n;
    return true;
}

static inline bool jv_digits(jv_t *v)
{
    const uint8_t *s = v->p;
    while (v->p < v->end && *v->p >= '0' && *v->p <= '9')
        v->p++;
    return v->p > s;
}

static inline bool jv_number(jv_t *v)
{
    if (v->p < v->end && *v->p == '-')
        v->p++;
    if (v->p < v->end && *v->p == '0')
        v->p++;
    else if (v->p >= v->end || *v->p < '1' || *v->p > '9' || !jv_digits(v))
        return jv_fail(v, "bad number");
    if (v->p < v->end && *v->p == '.') {
        v->p++;
        if (!jv_digits(v))
            return jv_fail(v, "bad fraction");
    }
    if (v->p < v->end && (*v->p == 'e' || *v->p == 'E')) {
        v->p++;
        if (v->p < v->end && (*v->p == '+' || *v->p == '-'))
            v->p++;
        if (!jv_digits(v))
            return jv_fail(v, "bad exponent");
    }
    return true;
}

static inline bool jv_word(jv_t *v, const char *w)
{
    size_t n = strlen(w);
    if ((size_t)(v->end - v->p) < n || memcmp(v->p, w, n) != 0)
        return jv_fail(v, "bad literal");
    v->p += n;
    return true;
}

static bool jv_value(jv_t *v);

static inline bool jv_object(jv_t *v)
{
    const uint8_t *keys[JV_MAX_KEYS];
    size_t klen[JV_MAX_KEYS], nkeys = 0;

    v->p++;
    jv_ws(v);
    if (v->p < v->end && *v->p == '}') {
        v->p++;
        return true;
    }
    for (;;) {
        jv_ws(v);
        const uint8_t *k = v->p;
        if (!jv_string(v, NULL, NULL))
            return false;
        if (nkeys == JV_MAX_KEYS)
            return jv_fail(v, "too many keys for the checker");
        for (size_t i = 0; i < nkeys; i++)
            if (klen[i] == (size_t)(v->p - k) && memcmp(keys[i], k, klen[i]) == 0)
                return jv_fail(v, "duplicate key");
        keys[nkeys] = k;
        klen[nkeys++] = (size_t)(v->p - k);
        jv_ws(v);
        if (v->p >= v->end || *v->p != ':')
            return jv_fail(v, "expected ':'");
        v->p++;
        if (!jv_value(v))
            return false;
        jv_ws(v);
        if (v->p < v->end && *v->p == ',') {
            v->p++;
            continue;
        }
        if (v->p < v->end && *v->p == '}') {
            v->p++;
            return true;
        }
        return jv_fail(v, "expected ',' or '}'");
    }
}

static inline bool jv_array(jv_t *v)
{
    v->p++;
    jv_ws(v);
    if (v->p < v->end && *v->p == ']') {
        v->p++;
        return true;
    }
    for (;;) {
        if (!jv_value(v))
            return false;
        jv_ws(v);
        if (v->p < v->end && *v->p == ',') {
            v->p++;
            continue;
        }
        if (v->p < v->end && *v->p == ']') {
            v->p++;
            return true;
        }
        return jv_fail(v, "expected ',' or ']'");
    }
}

static bool jv_value(jv_t *v)
{
    bool ok;

    jv_ws(v);
    if (v->p >= v->end)
        return jv_fail(v, "expected a value");
    if (++v->depth > JV_MAX_DEPTH)
        return jv_fail(v, "too deep");
    switch (*v->p) {
    case '{': ok = jv_object(v); break;
    case '[': ok = jv_array(v); break;
    case '"': ok = jv_string(v, NULL, NULL); break;
    case 't': ok = jv_word(v, "true"); break;
    case 'f': ok = jv_word(v, "false"); break;
    case 'n': ok = jv_word(v, "null"); break;
    default: ok = jv_number(v); break;
    }
    v->depth--;
    return ok;
}

/* NULL when s[0..n) is exactly one JSON value (whitespace around allowed),
 * else what is wrong with it. */
static inline const char *jv_check(const void *s, size_t n)
{
    jv_t v = { s, (const uint8_t *)s + n, 0, NULL };

    if (jv_value(&v)) {
        jv_ws(&v);
        if (v.p != v.end)
            jv_fail(&v, "bytes after the value");
    }
    return v.err;
}

/* NULL when s[0..n) is one JSON object on one line ending in '\n'. */
static inline const char *jv_check_line(const void *s, size_t n)
{
    const uint8_t *b = s;
    if (n < 3 || b[0] != '{' || b[n - 1] != '\n')
        return "not an object ending in a newline";
    if (memchr(b, '\n', n - 1))
        return "newline inside the line";
    return jv_check(b, n - 1);
}

#endif
