/* A JSON reader for libpg_query's parse trees: one pass, in place (strings
 * are decoded over their escaped form), into a flat array of nodes linked by
 * index. Only what libpg_query prints is needed -- objects, arrays, strings,
 * integers, true/false/null -- but any well-formed JSON is read, and
 * malformed or absurdly deep input is refused rather than trusted. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "analysis_int.h"

#define JSON_MAX_DEPTH 20000

static uint32_t jnew(jdoc_t *d, uint8_t type, const char *key)
{
    if (d->n == d->cap) {
        uint32_t cap = d->cap ? d->cap * 2 : 256;
        jn_t *v = realloc(d->v, (size_t)cap * sizeof *v);

        if (!v) {
            d->bad = d->oom = 1;
            return 0;
        }
        d->v = v;
        d->cap = cap;
    }
    d->v[d->n] = (jn_t){ key, NULL, 0, 0, 0, type };
    return d->n++;
}

static void jskip_ws(jdoc_t *d)
{
    while (*d->p == ' ' || *d->p == '\n' || *d->p == '\t' || *d->p == '\r')
        d->p++;
}

static void put_utf8(char **w, uint32_t cp)
{
    char *o = *w;

    if (cp < 0x80) {
        *o++ = (char)cp;
    } else if (cp < 0x800) {
        *o++ = (char)(0xC0 | (cp >> 6));
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *o++ = (char)(0xE0 | (cp >> 12));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *o++ = (char)(0xF0 | (cp >> 18));
        *o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    }
    *w = o;
}

static int hex4(const char *s, uint32_t *v)
{
    int i;

    *v = 0;
    for (i = 0; i < 4; i++) {
        char c = s[i];

        *v <<= 4;
        if (c >= '0' && c <= '9')
            *v |= (uint32_t)(c - '0');
        else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
            *v |= (uint32_t)((c | 0x20) - 'a' + 10);
        else
            return -1;
    }
    return 0;
}

/* Decodes the string at d->p (on its opening quote) in place: the result is
 * never longer than its escaped form, so it is written over it. */
static const char *jstring(jdoc_t *d)
{
    char *r = ++d->p, *w = r;

    for (;;) {
        char c = *d->p++;

        if (c == '"')
            break;
        if (c == 0) {
            d->bad = 1;
            return "";
        }
        if (c != '\\') {
            *w++ = c;
            continue;
        }
        c = *d->p++;
        switch (c) {
        case 'n': *w++ = '\n'; break;
        case 't': *w++ = '\t'; break;
        case 'r': *w++ = '\r'; break;
        case 'b': *w++ = '\b'; break;
        case 'f': *w++ = '\f'; break;
        case 'u': {
            uint32_t cp, lo;

            if (hex4(d->p, &cp)) {
                d->bad = 1;
                return "";
            }
            d->p += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && d->p[0] == '\\' && d->p[1] == 'u' &&
                hex4(d->p + 2, &lo) == 0 && lo >= 0xDC00 && lo < 0xE000) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                d->p += 6;
            }
            put_utf8(&w, cp);
            break;
        }
        case 0:
            d->bad = 1;
            return "";
        default: *w++ = c; break;   /* \" \\ \/ */
        }
    }
    *w = 0;
    return r;
}

static uint32_t jvalue(jdoc_t *d, const char *key, unsigned depth);

static uint32_t jcontainer(jdoc_t *d, const char *key, unsigned depth, int obj)
{
    uint32_t self = jnew(d, obj ? J_OBJ : J_ARR, key), last = 0;
    char close = obj ? '}' : ']';

    d->p++;
    jskip_ws(d);
    if (*d->p == close) {
        d->p++;
        return self;
    }
    for (;;) {
        const char *k = NULL;
        uint32_t kid;

        jskip_ws(d);
        if (obj) {
            if (*d->p != '"') {
                d->bad = 1;
                return self;
            }
            k = jstring(d);
            jskip_ws(d);
            if (*d->p++ != ':') {
                d->bad = 1;
                return self;
            }
        }
        kid = jvalue(d, k, depth + 1);
        if (d->bad)
            return self;
        /* d->v may have moved: index, never hold pointers across jnew */
        if (last)
            d->v[last].next = kid;
        else
            d->v[self].first = kid;
        last = kid;
        jskip_ws(d);
        if (*d->p == ',') {
            d->p++;
            continue;
        }
        if (*d->p == close) {
            d->p++;
            return self;
        }
        d->bad = 1;
        return self;
    }
}

static uint32_t jvalue(jdoc_t *d, const char *key, unsigned depth)
{
    uint32_t i;

    if (depth > JSON_MAX_DEPTH) {
        d->bad = 1;
        return 0;
    }
    jskip_ws(d);
    switch (*d->p) {
    case '{': return jcontainer(d, key, depth, 1);
    case '[': return jcontainer(d, key, depth, 0);
    case '"': {
        const char *s;

        i = jnew(d, J_STR, key);
        s = jstring(d);
        if (!d->bad)
            d->v[i].str = s;
        return i;
    }
    case 't':
    case 'f':
    case 'n': {
        const char *word = *d->p == 't' ? "true" : *d->p == 'f' ? "false" : "null";

        if (strncmp(d->p, word, strlen(word)) != 0) {
            d->bad = 1;
            return 0;
        }
        d->p += strlen(word);
        return jnew(d, *word == 't' ? J_TRUE : *word == 'f' ? J_FALSE : J_NULL, key);
    }
    default: {
        char *end;
        long long v = strtoll(d->p, &end, 10);

        if (end == d->p) {
            d->bad = 1;
            return 0;
        }
        /* a fraction or exponent (none in libpg_query's output) is skipped */
        while (*end == '.' || *end == 'e' || *end == 'E' || *end == '+' || *end == '-' ||
               (*end >= '0' && *end <= '9'))
            end++;
        d->p = end;
        i = jnew(d, J_NUM, key);
        if (!d->bad)
            d->v[i].num = v;
        return i;
    }
    }
}

/* The member named key of object o, or 0. */
uint32_t jget(const jdoc_t *d, uint32_t o, const char *key)
{
    uint32_t i;

    if (!o || J(d, o)->type != J_OBJ)
        return 0;
    for (i = J(d, o)->first; i; i = J(d, i)->next)
        if (strcmp(J(d, i)->key, key) == 0)
            return i;
    return 0;
}

/* libpg_query leaves out false, 0, and NULL strings */
const char *jstr(const jdoc_t *d, uint32_t o, const char *key)
{
    uint32_t i = jget(d, o, key);

    return i && J(d, i)->type == J_STR ? J(d, i)->str : "";
}

int jbool(const jdoc_t *d, uint32_t o, const char *key)
{
    uint32_t i = jget(d, o, key);

    return i && J(d, i)->type == J_TRUE;
}

/* A Node is an object with one member named after its type:
 * {"RangeVar": {...}}. Returns its type name and body, or NULL. */
const char *jnode(const jdoc_t *d, uint32_t o, uint32_t *body)
{
    const jn_t *v = o ? J(d, o) : NULL, *k;

    if (!v || v->type != J_OBJ || !v->first)
        return NULL;
    k = J(d, v->first);
    if (k->next || k->type != J_OBJ || !(k->key[0] >= 'A' && k->key[0] <= 'Z'))
        return NULL;
    *body = v->first;
    return k->key;
}

uint32_t json_parse(jdoc_t *d, char *text)
{
    memset(d, 0, sizeof *d);
    d->p = text;
    (void)jnew(d, J_NULL, NULL);   /* index 0 stands for "none" */
    return jvalue(d, NULL, 0);
}

void json_free(jdoc_t *d)
{
    free(d->v);
    d->v = NULL;
    d->n = d->cap = 0;
}
