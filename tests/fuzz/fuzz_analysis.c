/* libFuzzer target: the SQL analysis and its cache, differentially.
 *
 * The input is one SQL string (a Query's text; it stops at its first NUL as
 * the server's does). It is analysed three ways: fresh, without a cache
 * (pgw_analysis_parse); through a cache that lives across inputs
 * (pgw_analysis_run, which may hit shapes that earlier inputs left there);
 * and by pgw_analysis_lookup after that run. Whenever the cache answers, it
 * must answer exactly what the fresh analysis says, field by field, as the
 * differential unit test (tests/unit/test_analysis.c) demands: a wrong hit
 * would put another statement's objects or class into the audit trail.
 * Offsets, texts and the lexer split are checked for bounds on the way. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgwarden/analysis.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_INPUT 8192   /* the parser is the cost; bigger texts add nothing */

static pgw_analysis_cache_t *cache;

static void fail(const char *what, const char *sql, size_t len)
{
    fprintf(stderr, "fuzz_analysis: %s for: %.*s\n", what, (int)len, sql);
    abort();
}

static int same_str(const char *a, const char *b)
{
    return (a == NULL) == (b == NULL) && (!a || strcmp(a, b) == 0);
}

static void check_one(const pgw_analysis_t *an, const char *sql, size_t len)
{
    for (uint32_t i = 0; i < an->count; i++) {
        const pgw_stmt_t *st = pgw_analysis_stmt(an, i);
        const pgw_sql_info_t *x = st->info;
        uint32_t tl, rl;
        const char *t = pgw_analysis_text(an, i, &tl);

        if (!x || !x->command || !x->fingerprint)
            fail("statement without info", sql, len);
        if ((uint64_t)st->offset + st->length > len)
            fail("statement span past the string", sql, len);
        if (t[tl] != '\0' || strlen(t) != tl)
            fail("text not NUL-terminated at its length", sql, len);
        if ((x->flags & PGW_SQL_PARSE_ERROR) && (!x->parse_error || tl != 0))
            fail("parse error with a text", sql, len);
        if (!(x->flags & PGW_SQL_PARSE_ERROR) && strlen(x->fingerprint) != 16)
            fail("fingerprint not 16 digits", sql, len);
        if (x->cls < PGW_CLASS_READ || x->cls > PGW_CLASS_MISC_SET)
            fail("class out of range", sql, len);
        const char *raw = pgw_analysis_raw_text(an, i, sql, &rl);
        if (!raw || (raw >= sql && raw < sql + len && (uint64_t)(raw - sql) + rl > len))
            fail("raw text past the string", sql, len);
        for (uint32_t j = 0; j < x->nobjects; j++)
            if (!x->objects[j].schema || !x->objects[j].name || !x->objects[j].type
                || x->objects[j].access > PGW_ACCESS_WRITE)
                fail("bad object", sql, len);
    }
}

static void same(const pgw_analysis_t *a, const pgw_analysis_t *b, const char *sql, size_t len,
                 const char *how)
{
    char why[128];
#define SAME(cond) do { if (!(cond)) { snprintf(why, sizeof why, "%s: %s", how, #cond); \
                                       fail(why, sql, len); } } while (0)
    SAME(a->count == b->count);
    SAME(a->flags == b->flags);
    for (uint32_t i = 0; i < a->count; i++) {
        const pgw_stmt_t *sa = pgw_analysis_stmt(a, i), *sb = pgw_analysis_stmt(b, i);
        const pgw_sql_info_t *x = sa->info, *y = sb->info;
        uint32_t al, bl;
        const char *ta = pgw_analysis_text(a, i, &al), *tb = pgw_analysis_text(b, i, &bl);

        SAME(sa->offset == sb->offset);
        SAME(sa->length == sb->length);
        SAME(same_str(x->command, y->command));
        SAME(x->cls == y->cls);
        if (x->flags != y->flags)
            fprintf(stderr, "statement %u [%.*s]: flags %#x, fresh %#x, command %s\n", i,
                    (int)sa->length, sql + sa->offset, x->flags, y->flags, x->command);
        SAME(x->flags == y->flags);
        SAME(same_str(x->name, y->name));
        SAME(same_str(x->fingerprint, y->fingerprint));
        SAME(same_str(x->parse_error, y->parse_error));
        SAME(al == bl && memcmp(ta, tb, al) == 0);
        SAME(x->nobjects == y->nobjects);
        for (uint32_t j = 0; j < x->nobjects; j++) {
            SAME(same_str(x->objects[j].schema, y->objects[j].schema));
            SAME(same_str(x->objects[j].name, y->objects[j].name));
            SAME(same_str(x->objects[j].type, y->objects[j].type));
            SAME(x->objects[j].access == y->objects[j].access);
        }
    }
#undef SAME
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pgw_analysis_t fresh, run, hit;
    uint32_t spans[16][2];
    char *sql;
    int rc;

    if (size > MAX_INPUT)
        return 0;
    if (!cache) {
        /* Small limits, so that eviction runs too. */
        pgw_analysis_cache_limits_t lim = { .max_entries = 256, .max_bytes = 256 * 1024,
                                            .max_stmt_len = 4096, .max_lookup_len = 8192 };
        cache = pgw_analysis_cache_new(&lim);
        if (!cache)
            abort();
    }
    /* An exact-size copy, not NUL-terminated: the functions take a length. */
    sql = malloc(size ? size : 1);
    if (size)
        memcpy(sql, data, size);
    size_t len = strnlen(sql, size);   /* what the analysis reads */

    pgw_analysis_init(&fresh);
    pgw_analysis_init(&run);
    pgw_analysis_init(&hit);
    if (pgw_analysis_parse(sql, size, &fresh) != 0)
        abort();
    check_one(&fresh, sql, len);
    if (pgw_analysis_run(cache, sql, size, &run) != 0)
        abort();
    check_one(&run, sql, len);
    same(&run, &fresh, sql, len, "run");
    rc = pgw_analysis_lookup(cache, sql, size, &hit);
    if (rc < 0)
        abort();
    if (rc == 1)
        same(&hit, &fresh, sql, len, "lookup");

    unsigned n = pgw_analysis_split(sql, size, spans, 16);
    for (unsigned i = 0; i < n && i < 16; i++)
        if ((uint64_t)spans[i][0] + spans[i][1] > len)
            fail("split span past the string", sql, len);

    pgw_analysis_clear(&fresh);
    pgw_analysis_clear(&run);
    pgw_analysis_clear(&hit);
    free(sql);
    return 0;
}
