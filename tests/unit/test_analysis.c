/* SQL analysis and its cache.
 *
 *  - golden: every case of analysis_golden.txt (beside this file), field by
 *    field: statement bounds, command, class, flags, parse error, objects,
 *    normalized text; fingerprints must be 16 hex digits when parsed;
 *  - differential: for each golden string and versions of it with other
 *    literals, other spacing and added comments, what a cache hit returns is
 *    exactly what a fresh, cache-less analysis returns, and fingerprints
 *    agree across literal versions; shapes that differ never share an entry;
 *  - the cache key: statements share one exactly when they differ in
 *    literal values only (numbers, strings of each kind, dollar quotes, signs,
 *    white space, comments), and the key is exact for tokens that end the
 *    text (no byte read past it);
 *  - passwords: never in any text, raw text, message or fingerprint;
 *  - the API's corners: empty input, NUL bytes, moved structs, references
 *    that outlive the cache, eviction bounds, big statements, parsing on
 *    several threads at once with infos handed between them.
 *
 * PGW_GOLDEN_WRITE=1 rewrites the golden file from its sql: lines (review
 * the diff by hand before committing it). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pg_query.h>
#include <pthread.h>

#include "check.h"
#include "pgwarden/analysis.h"
#include "../../protocol/analysis_int.h"   /* white box: sql_walk_tables_ok */

/* ---- a growable string ------------------------------------------------------ */

typedef struct sbuf { char *p; size_t len, cap; } sbuf_t;

static void sb_putn(sbuf_t *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        if (!b->p)
            abort();
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void sb_puts(sbuf_t *b, const char *s) { sb_putn(b, s, strlen(s)); }

static void sb_printf(sbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf_t *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        sb_putn(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* \n \r \t \\ escapes keep one case on one line */
static void sb_escaped(sbuf_t *b, const char *s, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        switch (s[i]) {
        case '\n': sb_puts(b, "\\n"); break;
        case '\r': sb_puts(b, "\\r"); break;
        case '\t': sb_puts(b, "\\t"); break;
        case '\\': sb_puts(b, "\\\\"); break;
        default: sb_putn(b, s + i, 1); break;
        }
    }
}

static char *unescape(const char *s)
{
    sbuf_t b = { 0 };

    sb_puts(&b, "");
    for (; *s; s++) {
        if (*s == '\\' && s[1]) {
            s++;
            sb_putn(&b, *s == 'n' ? "\n" : *s == 'r' ? "\r" : *s == 't' ? "\t" : s, 1);
        } else {
            sb_putn(&b, s, 1);
        }
    }
    return b.p;
}

/* ---- rendering an analysis in the golden format ----------------------------- */

static int is_hex16(const char *s)
{
    size_t i;

    for (i = 0; i < 16; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return s[16] == 0;
}

static void render(sbuf_t *b, const pgw_analysis_t *an)
{
    uint32_t i, j, tl;

    if (an->flags & PGW_ANALYSIS_PARSE_FAILED)
        sb_puts(b, "whole: parse_failed\n");
    for (i = 0; i < an->count; i++) {
        const pgw_stmt_t *st = pgw_analysis_stmt(an, i);
        const pgw_sql_info_t *in = st->info;
        const char *t = pgw_analysis_text(an, i, &tl);

        sb_printf(b, "stmt: %u:%u | %s | %s | ", st->offset, st->length, in->command,
                  pgw_audit_class_name(in->cls));
        sb_escaped(b, t, tl);
        sb_puts(b, "\n");
        if (in->flags)
            sb_printf(b, "  flags:%s%s%s%s%s%s%s%s%s\n", in->flags & PGW_SQL_PARSE_ERROR ? " parse_error" : "",
                      in->flags & PGW_SQL_NO_RAW ? " no_raw" : "",
                      in->flags & PGW_SQL_NO_WHERE ? " no_where" : "",
                      in->flags & PGW_SQL_COPY_PROGRAM ? " copy_program" : "",
                      in->flags & PGW_SQL_COPY_FROM ? " copy_from" : "",
                      in->flags & PGW_SQL_OWN_TRANSACTION ? " own_transaction" : "",
                      in->flags & PGW_SQL_PREPARE ? " prepare" : "",
                      in->flags & PGW_SQL_EXECUTE ? " execute" : "",
                      in->flags & PGW_SQL_DEALLOCATE ? " deallocate" : "");
        if (in->prepared)
            sb_printf(b, "  prepared: %s\n", in->prepared);
        if (in->parse_error)
            sb_printf(b, "  error: %s\n", in->parse_error);
        for (j = 0; j < in->nobjects; j++)
            sb_printf(b, "  obj: %s | %s | %s | %s\n", in->objects[j].schema, in->objects[j].name,
                      in->objects[j].type, pgw_access_name(in->objects[j].access));
    }
}

/* ---- the golden file ----------------------------------------------------- */

typedef struct gcase {
    char *pre;         /* "## section" comments before it, kept on rewrite */
    char *sql;         /* unescaped */
    char *sql_line;    /* as written */
    sbuf_t expect;
} gcase_t;

static gcase_t cases[600];
static unsigned ncases;

static const char *golden_path(void)
{
    static char path[4096];
    const char *slash = strrchr(__FILE__, '/');

    if (getenv("PGW_GOLDEN"))
        return getenv("PGW_GOLDEN");
    snprintf(path, sizeof path, "%.*s/analysis_golden.txt",
             slash ? (int)(slash - __FILE__) : 1, slash ? __FILE__ : ".");
    return path;
}

static void load_golden(const char *path)
{
    FILE *f = fopen(path, "r");
    char line[65536];
    sbuf_t pre = { 0 };

    if (!f) {
        perror(path);
        exit(2);
    }
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (strncmp(line, "sql: ", 5) == 0) {
            if (ncases == sizeof cases / sizeof cases[0])
                abort();
            cases[ncases].pre = pre.p;
            memset(&pre, 0, sizeof pre);
            cases[ncases].sql_line = strdup(line + 5);
            cases[ncases].sql = unescape(line + 5);
            sb_puts(&cases[ncases].expect, "");
            ncases++;
        } else if (strncmp(line, "## ", 3) == 0) {
            sb_puts(&pre, line);
            sb_puts(&pre, "\n");
        } else if (ncases && line[0] && line[0] != '#') {
            sb_puts(&cases[ncases - 1].expect, line);
            sb_puts(&cases[ncases - 1].expect, "\n");
        }
    }
    fclose(f);
}

static int write_golden(const char *path)
{
    FILE *f = fopen(path, "w");
    unsigned i;

    if (!f)
        return 1;
    fputs("# Golden analyses: one case per \"sql:\" line (\\n, \\t, \\\\ escaped), then\n"
          "# per statement \"stmt: offset:length | command | class | text\" and its\n"
          "# flags, parse error and objects \"schema | name | type | access\".\n"
          "# Regenerate with PGW_GOLDEN_WRITE=1 and review every changed line.\n", f);
    for (i = 0; i < ncases; i++) {
        pgw_analysis_t an;
        sbuf_t b = { 0 };

        pgw_analysis_init(&an);
        if (pgw_analysis_parse(cases[i].sql, strlen(cases[i].sql), &an))
            abort();
        sb_puts(&b, "");
        render(&b, &an);
        fprintf(f, "\n%ssql: %s\n%s", cases[i].pre ? cases[i].pre : "", cases[i].sql_line, b.p);
        free(b.p);
        pgw_analysis_clear(&an);
    }
    fclose(f);
    fprintf(stderr, "wrote %u cases to %s\n", ncases, path);
    return 0;
}

static void check_golden(void)
{
    unsigned i, parsed = 0;
    uint32_t j;

    for (i = 0; i < ncases; i++) {
        pgw_analysis_t an;
        sbuf_t b = { 0 };

        pgw_analysis_init(&an);
        CHECK_EQ(pgw_analysis_parse(cases[i].sql, strlen(cases[i].sql), &an), 0);
        sb_puts(&b, "");
        render(&b, &an);
        /* line by line, so a failure names the field */
        {
            const char *e = cases[i].expect.p, *a = b.p;

            while (*e || *a) {
                size_t el = strcspn(e, "\n"), al = strcspn(a, "\n");

                check_total++;
                if (el != al || memcmp(e, a, el) != 0) {
                    check_fail(__FILE__, __LINE__, "golden line");
                    fprintf(stderr, "    sql:      %s\n    expected: %.*s\n    got:      %.*s\n",
                            cases[i].sql_line, (int)el, e, (int)al, a);
                    break;
                }
                e += el + (e[el] == '\n');
                a += al + (a[al] == '\n');
            }
        }
        for (j = 0; j < an.count; j++) {
            const pgw_sql_info_t *in = pgw_analysis_stmt(&an, j)->info;

            if (in->flags & PGW_SQL_PARSE_ERROR) {
                CHECK_STR(in->fingerprint, "");
            } else {
                CHECK(is_hex16(in->fingerprint));
                parsed++;
            }
        }
        free(b.p);
        pgw_analysis_clear(&an);
    }
    CHECK(ncases >= 150);
    CHECK(parsed >= 150);
}

/* ---- literal, spacing and comment variants ---------------------------------- */

enum { MUT_LITERALS, MUT_SPACES, MUT_COMMENTS, MUT_LITERALS2 };

static int idchar(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '$' || (unsigned char)c >= 0x80;
}

/* A small scanner of its own (not the module's) that changes only what it
 * is asked to: literal values, spacing between tokens, or comments. */
static char *mutate(const char *s, int how)
{
    sbuf_t b = { 0 };
    size_t i = 0, n = strlen(s);
    int first_token_done = 0;

    sb_puts(&b, "");
    if (how == MUT_COMMENTS)
        sb_puts(&b, "/* lead */ ");
    while (i < n) {
        char c = s[i];
        size_t j;

        if (c == '-' && s[i + 1] == '-') {
            j = i;
            while (j < n && s[j] != '\n')
                j++;
            sb_putn(&b, s + i, j - i);
            i = j;
        } else if (c == '/' && s[i + 1] == '*') {
            int depth = 0;

            j = i;
            do {
                if (s[j] == '/' && s[j + 1] == '*') {
                    depth++;
                    j += 2;
                } else if (s[j] == '*' && s[j + 1] == '/') {
                    depth--;
                    j += 2;
                } else {
                    j++;
                }
            } while (j < n && depth);
            sb_putn(&b, s + i, j - i);
            i = j;
        } else if (c == '"') {
            j = i + 1;
            while (j < n && !(s[j] == '"' && s[j + 1] != '"'))
                j += s[j] == '"' ? 2 : 1;
            j = j < n ? j + 1 : n;
            sb_putn(&b, s + i, j - i);
            i = j;
        } else if (c == '\'' || ((c == 'E' || c == 'e' || c == 'B' || c == 'b' || c == 'X' ||
                                  c == 'x') && s[i + 1] == '\'' && (i == 0 || !idchar(s[i - 1])))) {
            size_t q = c == '\'' ? i : i + 1;
            int esc = c == 'E' || c == 'e';

            sb_putn(&b, s + i, q + 1 - i);
            if (how == MUT_LITERALS || how == MUT_LITERALS2) {
                const char *ins = c == 'B' || c == 'b' ? "1" : c == 'X' || c == 'x' ? "a" :
                                  how == MUT_LITERALS ? "zq" : "a much longer value";

                sb_puts(&b, ins);
            }
            j = q + 1;
            while (j < n) {
                if (esc && s[j] == '\\') {
                    j += 2;
                    continue;
                }
                if (s[j] == '\'') {
                    if (s[j + 1] == '\'') {
                        j += 2;
                        continue;
                    }
                    break;
                }
                j++;
            }
            j = j < n ? j + 1 : n;
            sb_putn(&b, s + q + 1, j - q - 1);
            i = j;
        } else if (c == '$' && (i == 0 || !idchar(s[i - 1])) && !(s[i + 1] >= '0' && s[i + 1] <= '9')) {
            const char *end;
            size_t dl;

            j = i + 1;
            while (j < n && idchar(s[j]) && s[j] != '$')
                j++;
            if (j >= n || s[j] != '$') {
                sb_putn(&b, s + i, 1);
                i++;
                continue;
            }
            dl = j + 1 - i;
            sb_putn(&b, s + i, dl);
            if (how == MUT_LITERALS || how == MUT_LITERALS2)
                sb_puts(&b, how == MUT_LITERALS ? "zq" : "a longer body ");
            {
                char delim[64];

                snprintf(delim, sizeof delim, "%.*s", (int)dl, s + i);
                end = strstr(s + j + 1, delim);
            }
            if (!end) {
                sb_puts(&b, s + j + 1);
                i = n;
            } else {
                sb_putn(&b, s + j + 1, (size_t)(end - (s + j + 1)) + dl);
                i = (size_t)(end - s) + dl;
            }
        } else if (c >= '0' && c <= '9' && (i == 0 || !idchar(s[i - 1]))) {
            j = i;
            while (j < n && ((s[j] >= '0' && s[j] <= '9') || s[j] == '.' || s[j] == 'e' || s[j] == 'E' ||
                             ((s[j] == '+' || s[j] == '-') && (s[j - 1] == 'e' || s[j - 1] == 'E'))))
                j++;
            for (; i < j; i++) {
                char d = s[i];

                if ((how == MUT_LITERALS || how == MUT_LITERALS2) && d >= '0' && d <= '9')
                    d = (char)('0' + (d - '0' + (how == MUT_LITERALS ? 3 : 7)) % 10);
                sb_putn(&b, &d, 1);
            }
        } else if (c == ' ' && how == MUT_SPACES) {
            sb_puts(&b, "  \t");
            i++;
        } else {
            sb_putn(&b, &c, 1);
            i++;
            if (how == MUT_COMMENTS && !first_token_done && idchar(c) && !idchar(s[i])) {
                sb_puts(&b, " /* x */");
                first_token_done = 1;
            }
        }
    }
    return b.p;
}

/* Field by field: the cached answer against a fresh one. */
static int same_analysis(const pgw_analysis_t *a, const pgw_analysis_t *b, const char *sql)
{
    uint32_t i, j, al, bl;
    unsigned before = check_failures;

    CHECK_EQ(a->count, b->count);
    CHECK_EQ(a->flags, b->flags);
    for (i = 0; i < a->count && i < b->count; i++) {
        const pgw_stmt_t *sa = pgw_analysis_stmt(a, i), *sb = pgw_analysis_stmt(b, i);
        const pgw_sql_info_t *x = sa->info, *y = sb->info;
        const char *ta = pgw_analysis_text(a, i, &al), *tb = pgw_analysis_text(b, i, &bl);

        CHECK_EQ(sa->offset, sb->offset);
        CHECK_EQ(sa->length, sb->length);
        CHECK_STR(x->command, y->command);
        CHECK_EQ(x->cls, y->cls);
        CHECK_EQ(x->flags, y->flags);
        CHECK_STR(x->fingerprint, y->fingerprint);
        CHECK((x->parse_error == NULL) == (y->parse_error == NULL));
        if (x->parse_error && y->parse_error)
            CHECK_STR(x->parse_error, y->parse_error);
        CHECK_MEM(ta, al, tb, bl);
        CHECK_EQ(ta[al], 0);
        CHECK_EQ(x->nobjects, y->nobjects);
        for (j = 0; j < x->nobjects && j < y->nobjects; j++) {
            CHECK_STR(x->objects[j].schema, y->objects[j].schema);
            CHECK_STR(x->objects[j].name, y->objects[j].name);
            CHECK_STR(x->objects[j].type, y->objects[j].type);
            CHECK_EQ(x->objects[j].access, y->objects[j].access);
        }
    }
    if (check_failures != before)
        fprintf(stderr, "    (for: %s)\n", sql);
    return check_failures == before;
}

static void check_differential(void)
{
    pgw_analysis_cache_t *c = pgw_analysis_cache_new(NULL);
    pgw_analysis_cache_stats_t st;
    unsigned i, hits = 0, lookups = 0, same_shapes = 0;
    int how;

    CHECK(c != NULL);
    for (i = 0; i < ncases; i++) {
        pgw_analysis_t an;

        pgw_analysis_init(&an);
        CHECK_EQ(pgw_analysis_run(c, cases[i].sql, strlen(cases[i].sql), &an), 0);
        pgw_analysis_clear(&an);
    }
    for (how = MUT_LITERALS; how <= MUT_LITERALS2; how++) {
        for (i = 0; i < ncases; i++) {
            char *v = mutate(cases[i].sql, how);
            pgw_analysis_t hit, fresh, viarun;
            int r;

            pgw_analysis_init(&hit);
            pgw_analysis_init(&fresh);
            pgw_analysis_init(&viarun);
            CHECK_EQ(pgw_analysis_parse(v, strlen(v), &fresh), 0);
            r = pgw_analysis_lookup(c, v, strlen(v), &hit);
            CHECK(r == 0 || r == 1);
            lookups++;
            if (r == 1) {
                hits++;
                same_analysis(&hit, &fresh, v);
            } else {
                CHECK_EQ(hit.count, 0);
                if (getenv("PGW_SHOW_MISSES"))
                    fprintf(stderr, "miss: %s\n", v);
            }
            /* run: hit or miss, the same answer */
            CHECK_EQ(pgw_analysis_run(c, v, strlen(v), &viarun), 0);
            same_analysis(&viarun, &fresh, v);
            /* and a second time, now surely from the cache if cacheable */
            pgw_analysis_clear(&viarun);
            CHECK_EQ(pgw_analysis_run(c, v, strlen(v), &viarun), 0);
            same_analysis(&viarun, &fresh, v);
            /* literal versions of one shape (the same normalized text):
             * one fingerprint */
            if (how == MUT_LITERALS || how == MUT_LITERALS2) {
                pgw_analysis_t orig;
                uint32_t k;

                pgw_analysis_init(&orig);
                CHECK_EQ(pgw_analysis_parse(cases[i].sql, strlen(cases[i].sql), &orig), 0);
                for (k = 0; orig.count == fresh.count && k < orig.count; k++) {
                    uint32_t ol, fl;
                    const char *ot = pgw_analysis_text(&orig, k, &ol);
                    const char *ft = pgw_analysis_text(&fresh, k, &fl);

                    if (!(pgw_analysis_stmt(&orig, k)->info->flags & PGW_SQL_PARSE_ERROR) &&
                        ol == fl && memcmp(ot, ft, ol) == 0) {
                        CHECK_STR(pgw_analysis_stmt(&orig, k)->info->fingerprint,
                                  pgw_analysis_stmt(&fresh, k)->info->fingerprint);
                        same_shapes++;
                    }
                }
                pgw_analysis_clear(&orig);
            }
            pgw_analysis_clear(&hit);
            pgw_analysis_clear(&fresh);
            pgw_analysis_clear(&viarun);
            free(v);
        }
    }
    pgw_analysis_cache_stats(c, &st);
    fprintf(stderr, "differential: %u of %u variant lookups hit; cache %u entries, %zu bytes, "
            "%llu hits, %llu misses\n", hits, lookups, st.entries, st.bytes,
            (unsigned long long)st.hits, (unsigned long long)st.misses);
    /* most shapes must come back from the cache, not the parser */
    CHECK(hits * 10 >= lookups * 6);
    CHECK(same_shapes >= 300);
    pgw_analysis_cache_free(c);
}

/* Pairs that look alike but are different statements: the second must not
 * be answered from the first's entry. */
static void check_distinct_shapes(void)
{
    static const char *pairs[][2] = {
        { "SELECT a FROM t WHERE x = 1", "SELECT a FROM t WHERE x = '1'" },
        { "SELECT a FROM t WHERE x = 1", "SELECT a FROM u WHERE x = 1" },
        { "SELECT a FROM t WHERE x = 1", "SELECT a FROM t WHERE x = -1" },
        { "SELECT a FROM t WHERE x = 1", "SELECT a FROM t WHERE x = 2147483648" },
        { "SELECT a FROM t WHERE x = 1", "SELECT a FROM t WHERE x = $1" },
        { "SELECT a FROM t WHERE x = 1", "SELECT a FROM t WHERE x = true" },
        { "SELECT a FROM t ORDER BY 1", "SELECT a FROM t ORDER BY 2" },
        { "SELECT ab FROM t", "SELECT a b FROM t" },
        { "SELECT a FROM t", "SELECT A FROM t" },
        { "SELECT a FROM t", "SELECT \"a\" FROM t" },
        { "SELECT a <= b FROM t", "SELECT a < = b FROM t" },
        { "SELECT a @- 1 FROM t", "SELECT a @ - 1 FROM t" },
        { "CREATE TABLE t (a varchar(10))", "CREATE TABLE t (a varchar(20))" },
        { "COPY t FROM '/tmp/a'", "COPY t FROM '/tmp/b'" },
        { "COPY t FROM '/tmp/a'", "COPY t TO '/tmp/a'" },
        { "ALTER ROLE a PASSWORD 'x'", "ALTER ROLE a PASSWORD NULL" },
        { "SELECT 1 /* it's */", "SELECT 1 /* it''s */" },
        { "SELECT $$a'$$", "SELECT $$b'$$" },
        { "FETCH 5 FROM c", "FETCH 6 FROM c" },
        { "SELECT * FROM t WHERE a IN (1, 2)", "SELECT * FROM t WHERE a IN (1, 2, 3)" },
    };
    size_t i;

    for (i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        pgw_analysis_cache_t *c = pgw_analysis_cache_new(NULL);
        pgw_analysis_t a, b, fresh;

        pgw_analysis_init(&a);
        pgw_analysis_init(&b);
        pgw_analysis_init(&fresh);
        CHECK_EQ(pgw_analysis_run(c, pairs[i][0], strlen(pairs[i][0]), &a), 0);
        /* the first one is cached: it hits itself */
        pgw_analysis_clear(&a);
        CHECK_EQ(pgw_analysis_lookup(c, pairs[i][0], strlen(pairs[i][0]), &a), 1);
        if (pgw_analysis_lookup(c, pairs[i][1], strlen(pairs[i][1]), &b) != 0) {
            check_fail(__FILE__, __LINE__, "different shapes shared an entry");
            fprintf(stderr, "    %s\n    %s\n", pairs[i][0], pairs[i][1]);
        }
        CHECK_EQ(pgw_analysis_run(c, pairs[i][1], strlen(pairs[i][1]), &b), 0);
        CHECK_EQ(pgw_analysis_parse(pairs[i][1], strlen(pairs[i][1]), &fresh), 0);
        same_analysis(&b, &fresh, pairs[i][1]);
        pgw_analysis_clear(&a);
        pgw_analysis_clear(&b);
        pgw_analysis_clear(&fresh);
        pgw_analysis_cache_free(c);
    }
}

/* ---- passwords --------------------------------------------------------------- */

static int holds(const char *hay, size_t n, const char *needle)
{
    size_t k = strlen(needle), i;

    for (i = 0; i + k <= n; i++)
        if (memcmp(hay + i, needle, k) == 0)
            return 1;
    return 0;
}

/* Everything the analysis says about sql, in both modes, must be free of
 * the secret. */
static void check_no_secret(const pgw_analysis_t *an, const char *sql, const char *secret)
{
    uint32_t i, j, len;

    for (i = 0; i < an->count; i++) {
        const pgw_sql_info_t *in = pgw_analysis_stmt(an, i)->info;
        const char *t = pgw_analysis_text(an, i, &len);
        unsigned before = check_failures;

        CHECK(!holds(t, len, secret));
        t = pgw_analysis_raw_text(an, i, sql, &len);
        CHECK(!holds(t, len, secret));
        CHECK(!strstr(in->command, secret));
        CHECK(!strstr(in->fingerprint, secret));
        if (in->parse_error)
            CHECK(!strstr(in->parse_error, secret));
        for (j = 0; j < in->nobjects; j++) {
            CHECK(!strstr(in->objects[j].schema, secret));
            CHECK(!strstr(in->objects[j].name, secret));
        }
        if (check_failures != before)
            fprintf(stderr, "    secret leaked for: %s\n", sql);
    }
}

static void check_passwords(void)
{
    static const char *stmts[] = {
        "ALTER ROLE alice PASSWORD 'hunter2'",
        "alter role alice password 'hunter2'",
        "ALTER ROLE alice WITH PASSWORD 'hunter2'",
        "CREATE USER bob WITH PASSWORD 'hunter2'",
        "ALTER USER carol ENCRYPTED PASSWORD 'hunter2'",
        "ALTER USER carol WITH ENCRYPTED PASSWORD E'hunt\\'hunter2'",
        "CREATE ROLE dave LOGIN PASSWORD 'hunter2' VALID UNTIL '2030-01-01'",
        "CREATE ROLE dave PASSWORD $$hunter2$$",
        "CREATE ROLE dave PASSWORD $p$hunter2$p$",
        "CREATE ROLE dave PASSWORD U&'hunter2'",
        "CREATE ROLE dave PASSWORD 'hun'\n'ter2hunter2'",
        "CREATE GROUP g WITH PASSWORD 'hunter2'",
        "ALTER ROLE alice PASSWORD 'hunter2' VALID UNTIL 'infinity'",
        "/* note */ ALTER ROLE alice PASSWORD 'hunter2' -- rotate",
        "SELECT 1; ALTER ROLE alice PASSWORD 'hunter2'; SELECT 2",
        "BEGIN; CREATE USER bob WITH PASSWORD 'hunter2'; COMMIT",
        "CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password 'hunter2')",
        "ALTER USER MAPPING FOR bob SERVER s OPTIONS (SET password 'hunter2')",
        "CREATE SUBSCRIPTION sub CONNECTION 'host=h password=hunter2' PUBLICATION p",
        "ALTER SUBSCRIPTION sub CONNECTION 'password=hunter2'",
        /* text that does not parse */
        "ALTER ROLE alice PASSWORD 'hunter2' VALID UNTILL 'x'",
        "ALTER ROLE alice PASSWORD 'hunter2",
        "ALTER ROLE alice PASSWORD hunter2'",
        "CREATE USER bob WITH PASSWORD 'hunter2' SUPERUSERR",
        "SELECT 1; ALTER ROLE alice PASSWORD 'hunter2' LOGINN; SELECT 2",
        "ALTER ROLE alice PASSWORD 'hunter2'; SELEC 1",
        "CREATE USER bob WITH PASSWORD $$hunter2",
        "ALTER ROLE alice PASSWORD E'hunter2\\",
    };
    pgw_analysis_cache_t *c = pgw_analysis_cache_new(NULL);
    size_t i;
    int round;

    for (round = 0; round < 2; round++) {          /* a miss, then a hit */
        for (i = 0; i < sizeof stmts / sizeof stmts[0]; i++) {
            pgw_analysis_t an;
            uint32_t k;
            int r;

            pgw_analysis_init(&an);
            CHECK_EQ(pgw_analysis_parse(stmts[i], strlen(stmts[i]), &an), 0);
            check_no_secret(&an, stmts[i], "hunter2");
            for (k = 0; k < an.count; k++) {
                const pgw_sql_info_t *in = pgw_analysis_stmt(&an, k)->info;
                const char *raw = stmts[i] + pgw_analysis_stmt(&an, k)->offset;

                /* a statement about a password never prints raw */
                if (holds(raw, pgw_analysis_stmt(&an, k)->length, "hunter2"))
                    CHECK(in->flags & PGW_SQL_NO_RAW || in->flags & PGW_SQL_PARSE_ERROR);
                if (holds(raw, pgw_analysis_stmt(&an, k)->length, "hunter2") &&
                    (in->flags & PGW_SQL_PARSE_ERROR))
                    CHECK(in->flags & PGW_SQL_NO_RAW);
            }
            pgw_analysis_clear(&an);
            CHECK_EQ(pgw_analysis_run(c, stmts[i], strlen(stmts[i]), &an), 0);
            check_no_secret(&an, stmts[i], "hunter2");
            pgw_analysis_clear(&an);
            r = pgw_analysis_lookup(c, stmts[i], strlen(stmts[i]), &an);
            CHECK(r >= 0);
            check_no_secret(&an, stmts[i], "hunter2");
            pgw_analysis_clear(&an);
        }
    }
    /* the fingerprint is not a hash of the password */
    {
        pgw_analysis_t a, b;

        pgw_analysis_init(&a);
        pgw_analysis_init(&b);
        CHECK_EQ(pgw_analysis_parse("ALTER ROLE alice PASSWORD 'hunter2'", 35, &a), 0);
        CHECK_EQ(pgw_analysis_parse("ALTER ROLE alice PASSWORD 'correct horse'", 41, &b), 0);
        CHECK_STR(pgw_analysis_stmt(&a, 0)->info->fingerprint, pgw_analysis_stmt(&b, 0)->info->fingerprint);
        CHECK(pgw_analysis_stmt(&a, 0)->info->flags & PGW_SQL_NO_RAW);
        CHECK_STR(pgw_analysis_stmt(&a, 0)->info->command, "ALTER ROLE");
        CHECK_EQ(pgw_analysis_stmt(&a, 0)->info->cls, PGW_CLASS_ROLE);
        pgw_analysis_clear(&a);
        pgw_analysis_clear(&b);
    }
    pgw_analysis_cache_free(c);
}

/* ---- a literal continued across a comment ------------------------------------------ */

/* 'a'<newline>-- c<newline>'b' is one literal to the server, a syntax error
 * to libpg_query. A statement of that shape must not hit the entry of one
 * whose continuation has no comment (found by fuzz_analysis): whatever the
 * cache holds, the answer is the parser's. */
static void check_continuation_across_comment(void)
{
    static const char *plain = "SELECT 'x' \r'x' * 'x'";
    static const char *across[] = {
        "SELECT 'x' \n --c\r\r\r'x' * 'x'",
        "SELECT 'x' \n --c\n'y' * 'z'",
        "SELECT 'x'\n-- c\r\n'y' * 'z'",
    };
    pgw_analysis_cache_t *c = pgw_analysis_cache_new(NULL);
    pgw_analysis_t run, fresh;

    pgw_analysis_init(&run);
    pgw_analysis_init(&fresh);
    CHECK_EQ(pgw_analysis_run(c, plain, strlen(plain), &run), 0);
    CHECK(!(pgw_analysis_stmt(&run, 0)->info->flags & PGW_SQL_PARSE_ERROR));
    for (size_t i = 0; i < sizeof across / sizeof across[0]; i++) {
        CHECK_EQ(pgw_analysis_run(c, across[i], strlen(across[i]), &run), 0);
        CHECK_EQ(pgw_analysis_parse(across[i], strlen(across[i]), &fresh), 0);
        CHECK_EQ(run.count, 1);
        CHECK_EQ(fresh.count, 1);
        CHECK_EQ(pgw_analysis_stmt(&run, 0)->info->flags, pgw_analysis_stmt(&fresh, 0)->info->flags);
        CHECK_STR(pgw_analysis_stmt(&run, 0)->info->fingerprint, pgw_analysis_stmt(&fresh, 0)->info->fingerprint);
    }
    pgw_analysis_clear(&run);
    pgw_analysis_clear(&fresh);
    pgw_analysis_cache_free(c);
}

/* ---- replication commands ---------------------------------------------------------- */

static const char *fp_of(pgw_analysis_t *an, const char *sql)
{
    pgw_analysis_clear(an);
    CHECK_EQ(pgw_analysis_parse(sql, strlen(sql), an), 0);
    CHECK_EQ(an->count, 1);
    CHECK(!(an->flags & PGW_ANALYSIS_PARSE_FAILED));
    CHECK(!(pgw_analysis_stmt(an, 0)->info->flags & PGW_SQL_PARSE_ERROR));
    CHECK(is_hex16(pgw_analysis_stmt(an, 0)->info->fingerprint));
    return pgw_analysis_stmt(an, 0)->info->fingerprint;
}

/* A walsender's commands share a fingerprint when they differ only in
 * literals (WAL positions, timelines, labels) and in the case of keywords;
 * another slot, another option or another command is another shape. The
 * label never shows, in any text or in the raw text's stand-in. */
static void check_replication_commands(void)
{
    pgw_analysis_t a, b;
    char fa[17];
    uint32_t len;

    pgw_analysis_init(&a);
    pgw_analysis_init(&b);
    snprintf(fa, sizeof fa, "%s", fp_of(&a, "START_REPLICATION SLOT \"s1\" 0/2000000 TIMELINE 1"));
    CHECK_STR(fa, fp_of(&b, "start_replication slot \"s1\"  1A/FF000028 timeline 7;"));
    CHECK(strcmp(fa, fp_of(&b, "START_REPLICATION SLOT \"s2\" 0/2000000 TIMELINE 1")) != 0);
    CHECK(strcmp(fa, fp_of(&b, "START_REPLICATION SLOT \"S1\" 0/2000000 TIMELINE 1")) != 0);
    CHECK(strcmp(fa, fp_of(&b, "START_REPLICATION 0/2000000 TIMELINE 1")) != 0);

    snprintf(fa, sizeof fa, "%s", fp_of(&a, "BASE_BACKUP (LABEL 'secret-label', CHECKPOINT 'fast')"));
    CHECK_STR(fa, fp_of(&b, "BASE_BACKUP (LABEL 'other', CHECKPOINT 'spread')"));
    CHECK(strcmp(fa, fp_of(&b, "BASE_BACKUP (LABEL 'other', MANIFEST 'yes')")) != 0);
    CHECK(!strstr(pgw_analysis_text(&a, 0, &len), "secret"));
    CHECK_STR(pgw_analysis_stmt(&a, 0)->info->command, "BASE_BACKUP");
    CHECK_EQ(pgw_analysis_stmt(&a, 0)->info->cls, PGW_CLASS_READ);
    CHECK_EQ(pgw_analysis_stmt(&a, 0)->info->nobjects, 0);
    pgw_analysis_clear(&a);
    pgw_analysis_clear(&b);
}

/* ---- API corners ----------------------------------------------------------------- */

static void check_api(void)
{
    pgw_analysis_cache_limits_t lim = { 8, 0, 0, 0 };
    pgw_analysis_cache_t *c = pgw_analysis_cache_new(&lim);
    pgw_analysis_cache_stats_t st;
    pgw_analysis_t an, moved;
    pgw_sql_info_t *kept;
    uint32_t len;
    const char *t;
    char sql[256];
    int i;

    pgw_analysis_init(&an);

    /* nothing to analyse */
    CHECK_EQ(pgw_analysis_run(c, "", 0, &an), 0);
    CHECK_EQ(an.count, 0);
    CHECK_EQ(pgw_analysis_run(c, " ;; -- only this\n /* and this */ ", 34, &an), 0);
    CHECK_EQ(an.count, 0);

    /* the server stops at a NUL, and so do we */
    CHECK_EQ(pgw_analysis_run(c, "SELECT 1\0SELECT 2", 17, &an), 0);
    CHECK_EQ(an.count, 1);
    CHECK_EQ(pgw_analysis_stmt(&an, 0)->length, 8);

    /* len bounds the text even without a NUL */
    CHECK_EQ(pgw_analysis_run(c, "SELECT 1; SELECT 2", 8, &an), 0);
    CHECK_EQ(an.count, 1);

    /* statement bounds and raw text */
    CHECK_EQ(pgw_analysis_run(c, "  SELECT 'a' ;\n\tSELECT 2  ", 26, &an), 0);
    CHECK_EQ(an.count, 2);
    t = pgw_analysis_raw_text(&an, 0, "  SELECT 'a' ;\n\tSELECT 2  ", &len);
    CHECK_MEM(t, len, "SELECT 'a'", 10);
    t = pgw_analysis_raw_text(&an, 1, "  SELECT 'a' ;\n\tSELECT 2  ", &len);
    CHECK_MEM(t, len, "SELECT 2", 8);
    t = pgw_analysis_text(&an, 0, &len);
    CHECK_MEM(t, len, "SELECT $1", 9);

    /* the struct moves; the texts go with it */
    memcpy(&moved, &an, sizeof an);
    pgw_analysis_init(&an);
    t = pgw_analysis_text(&moved, 1, &len);
    CHECK_MEM(t, len, "SELECT $1", 9);

    /* an info outlives the analysis and the cache */
    kept = pgw_sql_info_ref(pgw_analysis_stmt(&moved, 0)->info);
    pgw_analysis_clear(&moved);

    /* a small cache stays small */
    for (i = 0; i < 100; i++) {
        snprintf(sql, sizeof sql, "SELECT c%d FROM t%d WHERE k = %d", i, i, i);
        CHECK_EQ(pgw_analysis_run(c, sql, strlen(sql), &an), 0);
    }
    pgw_analysis_cache_stats(c, &st);
    CHECK(st.entries <= 8);
    CHECK(st.evictions >= 90);
    pgw_analysis_cache_free(c);
    CHECK_STR(kept->command, "SELECT");
    CHECK_EQ(kept->cls, PGW_CLASS_READ);
    pgw_sql_info_unref(kept);

    /* byte budget */
    {
        pgw_analysis_cache_limits_t small = { 0, 4096, 0, 0 };

        c = pgw_analysis_cache_new(&small);
        for (i = 0; i < 200; i++) {
            snprintf(sql, sizeof sql, "SELECT c%d, d%d, e%d FROM schema_%d.table_%d", i, i, i, i, i);
            CHECK_EQ(pgw_analysis_run(c, sql, strlen(sql), &an), 0);
        }
        pgw_analysis_cache_stats(c, &st);
        CHECK(st.bytes <= 4096);
        CHECK(st.entries > 0);
        pgw_analysis_cache_free(c);
    }

    /* many statements and long texts spill from the inline storage */
    {
        sbuf_t b = { 0 };

        c = pgw_analysis_cache_new(NULL);
        for (i = 0; i < 40; i++)
            sb_printf(&b, "INSERT INTO some_rather_long_table_name_%d VALUES (%d, 'text %d');", i % 3, i, i);
        CHECK_EQ(pgw_analysis_run(c, b.p, b.len, &an), 0);
        CHECK_EQ(an.count, 40);
        t = pgw_analysis_text(&an, 39, &len);
        CHECK_MEM(t, len, "INSERT INTO some_rather_long_table_name_0 VALUES ($1, $2)", 57);
        CHECK_EQ(pgw_analysis_lookup(c, b.p, b.len, &an), 1);
        CHECK_EQ(an.count, 40);
        free(b.p);
        pgw_analysis_cache_free(c);
    }

    /* a 1 MB INSERT ... VALUES: analysed, never cached, lookup refuses it */
    {
        sbuf_t b = { 0 };
        pgw_analysis_t big;

        c = pgw_analysis_cache_new(NULL);
        pgw_analysis_init(&big);
        sb_puts(&b, "INSERT INTO bulk (a, b) VALUES ");
        for (i = 0; b.len < (1u << 20); i++)
            sb_printf(&b, "%s(%d, 'row %d')", i ? ", " : "", i, i);
        CHECK_EQ(pgw_analysis_lookup(c, b.p, b.len, &big), 0);
        CHECK_EQ(pgw_analysis_run(c, b.p, b.len, &big), 0);
        CHECK_EQ(big.count, 1);
        CHECK_STR(pgw_analysis_stmt(&big, 0)->info->command, "INSERT");
        CHECK_EQ(pgw_analysis_stmt(&big, 0)->info->nobjects, 1);
        t = pgw_analysis_text(&big, 0, &len);
        CHECK(!holds(t, len, "row 1"));
        pgw_analysis_cache_stats(c, &st);
        CHECK_EQ(st.entries, 0);
        pgw_analysis_clear(&big);
        free(b.p);
        pgw_analysis_cache_free(c);
    }

    /* our split misjudges "begin" as a function name; the parser decides */
    {
        static const char s[] = "CREATE FUNCTION begin() RETURNS int LANGUAGE sql RETURN 1; SELECT 2";
        int round;

        c = pgw_analysis_cache_new(NULL);
        for (round = 0; round < 2; round++) {
            CHECK_EQ(pgw_analysis_run(c, s, sizeof s - 1, &an), 0);
            CHECK_EQ(an.count, 2);
            CHECK_EQ(an.flags, 0);
            if (an.count == 2) {
                CHECK_STR(pgw_analysis_stmt(&an, 0)->info->command, "CREATE FUNCTION");
                CHECK_STR(pgw_analysis_stmt(&an, 1)->info->command, "SELECT");
                CHECK_EQ(pgw_analysis_stmt(&an, 1)->offset, 59);
            }
        }
        pgw_analysis_cache_free(c);
    }

    /* a parse error is not cached and hides its literals, even in messages */
    {
        static const char s[] = "SELECT 'card 4111111111111111";

        c = pgw_analysis_cache_new(NULL);
        CHECK_EQ(pgw_analysis_run(c, s, sizeof s - 1, &an), 0);
        CHECK_EQ(an.count, 1);
        CHECK(pgw_analysis_stmt(&an, 0)->info->flags & PGW_SQL_PARSE_ERROR);
        CHECK(!strstr(pgw_analysis_stmt(&an, 0)->info->parse_error, "4111"));
        t = pgw_analysis_text(&an, 0, &len);
        CHECK_EQ(len, 0);
        CHECK_EQ(pgw_analysis_lookup(c, s, sizeof s - 1, &an), 0);
        pgw_analysis_cache_free(c);
    }

    pgw_analysis_clear(&an);
}

/* Every prefix of every golden string (unterminated quotes, comments and
 * dollar quotes, half keywords), placed right before a PROT_NONE page with
 * no NUL after it: nothing may read past len, and the cache must still
 * answer as the parser does. Plus bytes that are not SQL at all. */
static void check_prefixes(void)
{
    pgw_analysis_cache_t *c = pgw_analysis_cache_new(NULL);
    guard_t g;
    unsigned i, seed = 12345;
    size_t len;

    guard_init(&g, 1 << 16);
    for (i = 0; i < ncases; i++) {
        size_t n = strlen(cases[i].sql);

        for (len = 0; len <= n; len += n > 120 ? 7 : 1) {
            const char *p = (const char *)guard_place(&g, cases[i].sql, len);
            pgw_analysis_t a, b;

            pgw_analysis_init(&a);
            pgw_analysis_init(&b);
            CHECK_EQ(pgw_analysis_run(c, p, len, &a), 0);
            CHECK_EQ(pgw_analysis_parse(p, len, &b), 0);
            same_analysis(&a, &b, cases[i].sql);
            pgw_analysis_clear(&a);
            CHECK_EQ(pgw_analysis_run(c, p, len, &a), 0);
            same_analysis(&a, &b, cases[i].sql);
            pgw_analysis_clear(&a);
            pgw_analysis_clear(&b);
        }
    }
    for (i = 0; i < 2000; i++) {
        static const char alphabet[] = "'\"$;-/*()eEbBxXuU&1. \n\\";
        unsigned char junk[64];
        const char *p;
        pgw_analysis_t a;
        size_t k;

        len = (size_t)(i % 64);
        for (k = 0; k < len; k++) {
            seed = seed * 1103515245u + 12345u;
            /* mostly SQL's punctuation and quotes, some anything */
            if ((seed >> 16) % 4)
                junk[k] = (unsigned char)alphabet[(seed >> 8) % (sizeof alphabet - 1)];
            else
                junk[k] = (unsigned char)((seed >> 8) & 0xff);
        }
        p = (const char *)guard_place(&g, junk, len);
        pgw_analysis_init(&a);
        CHECK_EQ(pgw_analysis_run(c, p, len, &a), 0);
        pgw_analysis_clear(&a);
    }
    guard_free(&g);
    pgw_analysis_cache_free(c);
}

/* ---- the cache key: what it tells apart -------------------------------------
 * Two statements share a key exactly when they differ in literal values only
 * (and in white space and comments without a quote, which are no tokens);
 * with a shared key a hit must give what a fresh analysis gives. */

/* The keys of every statement of sql, one after the other, each preceded by
 * its length; returns the malloc'ed bytes and sets *len. */
static char *keys_of(const char *sql, size_t *len)
{
    sql_lex_t lx;
    sbuf_t out = { 0 };
    uint32_t i;

    sql_lex_init(&lx);
    CHECK_EQ(sql_lex_run(&lx, sql, (uint32_t)strlen(sql), 0), 0);
    sb_printf(&out, "%u pieces|", lx.npieces);
    for (i = 0; i < lx.npieces; i++) {
        const sql_piece_t *p = &lx.pieces[i];
        char *k = malloc(sql_key_bound(lx.toks + p->tok, p->ntok) + SQL_KEY_SLACK);
        uint32_t kl = sql_key_build(sql, lx.toks + p->tok, p->ntok, k);

        sb_printf(&out, "%u:", kl);
        sb_putn(&out, k, kl);
        free(k);
    }
    sql_lex_free(&lx);
    *len = out.len;
    return out.p;
}

enum { KEY_DIFFERS, KEY_SAME_HITS, KEY_SAME };

static void check_key_rules(void)
{
    static const struct { const char *a, *b; int expect; } pairs[] = {
        /* literals */
        { "SELECT a FROM t WHERE x = 1", "SELECT a FROM t WHERE x = 99999", KEY_SAME_HITS },
        { "SELECT a FROM t WHERE x = 'a'", "SELECT a FROM t WHERE x = 'it''s'", KEY_SAME_HITS },
        { "SELECT a FROM t WHERE x = 1", "SELECT a FROM t WHERE x = 1.5", KEY_DIFFERS },
        { "SELECT a FROM t WHERE x = 2147483647", "SELECT a FROM t WHERE x = 2147483648", KEY_DIFFERS },
        { "SELECT 1e5, .5, 1.5", "SELECT 2.5e-3, 7.25, .125", KEY_SAME_HITS },
        { "SELECT 1e5", "SELECT 15", KEY_DIFFERS },
        { "SELECT 0x1F", "SELECT 0x2F", KEY_DIFFERS },       /* junk to PostgreSQL 15 */
        { "SELECT 0x1F", "SELECT 0x1F", KEY_SAME },
        { "SELECT E'a'", "SELECT E'bcd'", KEY_SAME_HITS },
        { "SELECT E'\\n'", "SELECT E'\\t'", KEY_DIFFERS },   /* escapes can break the parse */
        { "SELECT E'a'", "SELECT 'a'", KEY_DIFFERS },
        { "SELECT U&'a'", "SELECT U&'b'", KEY_DIFFERS },
        { "SELECT B'01'", "SELECT B'1'", KEY_SAME_HITS },
        { "SELECT B'01'", "SELECT X'01'", KEY_DIFFERS },
        { "SELECT X'ff'", "SELECT x'00'", KEY_SAME_HITS },
        { "SELECT $$a$$", "SELECT $t$b c$t$", KEY_SAME_HITS },
        { "SELECT $$a'$$", "SELECT $$a''$$", KEY_DIFFERS },
        { "SELECT 'a'\n'b'", "SELECT 'c'", KEY_SAME },           /* one literal, continued */
        { "SELECT a = -1 FROM t", "SELECT a = -7 FROM t", KEY_SAME_HITS },
        { "SELECT a=-1 FROM t", "SELECT a=-7 FROM t", KEY_SAME_HITS },
        { "SELECT a=-1 FROM t", "SELECT a=1 FROM t", KEY_DIFFERS },
        { "SELECT a>=1 FROM t", "SELECT a> =1 FROM t", KEY_DIFFERS },
        { "SELECT a@-1 FROM t", "SELECT a@-2 FROM t", KEY_SAME_HITS },
        { "SELECT 1+2", "SELECT 30+40", KEY_SAME_HITS },
        { "SELECT 'a'||'b'", "SELECT 'cc'||'dd'", KEY_SAME_HITS },
        { "SELECT x::int FROM t WHERE y = 3", "SELECT x::int FROM t WHERE y = 4", KEY_SAME_HITS },
        { "SELECT x::int FROM t", "SELECT x::bigint FROM t", KEY_DIFFERS },
        { "SELECT $1", "SELECT $2", KEY_DIFFERS },
        /* identifiers, keywords, quoting */
        { "SELECT a1 FROM t", "SELECT a2 FROM t", KEY_DIFFERS },
        { "SELECT a FROM t", "SELECT a FROM t2", KEY_DIFFERS },
        { "SELECT a FROM t", "select a from t", KEY_DIFFERS },   /* a miss, never a wrong hit */
        { "SELECT \"a\" FROM t", "SELECT \"b\" FROM t", KEY_DIFFERS },
        { "SELECT \"a\" FROM t", "SELECT a FROM t", KEY_DIFFERS },
        { "SELECT U&\"a\" FROM t", "SELECT U&\"b\" FROM t", KEY_DIFFERS },
        { "SELECT _a$1 FROM t", "SELECT _a$2 FROM t", KEY_DIFFERS },
        { "SELECT \xc3\xa9 FROM t", "SELECT \xc3\xa8 FROM t", KEY_DIFFERS },
        /* white space and comments */
        { "SELECT a FROM t WHERE x = 1", "SELECT  a\n\tFROM t\r\nWHERE x=2", KEY_SAME_HITS },
        { "SELECT a FROM t WHERE x = 1", "SELECT a /* c */ FROM t -- d\nWHERE x = 2", KEY_SAME_HITS },
        { "SELECT a FROM t /* it's */", "SELECT a FROM t /* its */", KEY_DIFFERS },
        { "SELECT a FROM t -- it's\n", "SELECT a FROM t -- it''s\n", KEY_DIFFERS },
        { "SELECT ab FROM t", "SELECT a b FROM t", KEY_DIFFERS },
        /* several statements */
        { "SELECT 1; SELECT a FROM t WHERE x = 2", "SELECT 3 ; SELECT a FROM t WHERE x = 4;", KEY_SAME_HITS },
        { "SELECT 1; SELECT 2", "SELECT 1, 2", KEY_DIFFERS },
    };
    size_t i;

    for (i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        const char *a = pairs[i].a, *b = pairs[i].b;
        size_t ka_len, kb_len;
        char *ka = keys_of(a, &ka_len), *kb = keys_of(b, &kb_len);
        int same = ka_len == kb_len && memcmp(ka, kb, ka_len) == 0;
        pgw_analysis_cache_t *c = pgw_analysis_cache_new(NULL);
        pgw_analysis_t an, bn, fresh;
        int hit;

        if (same != (pairs[i].expect != KEY_DIFFERS)) {
            check_fail(__FILE__, __LINE__, same ? "keys should differ" : "keys should be equal");
            fprintf(stderr, "    %s\n    %s\n", a, b);
        }
        check_total++;
        pgw_analysis_init(&an);
        pgw_analysis_init(&bn);
        pgw_analysis_init(&fresh);
        CHECK_EQ(pgw_analysis_run(c, a, strlen(a), &an), 0);
        hit = pgw_analysis_lookup(c, b, strlen(b), &bn);
        CHECK(hit == 0 || hit == 1);
        if (pairs[i].expect == KEY_DIFFERS && hit) {
            check_fail(__FILE__, __LINE__, "statements of different keys shared an entry");
            fprintf(stderr, "    %s\n    %s\n", a, b);
        }
        if (pairs[i].expect == KEY_SAME_HITS && !hit) {
            check_fail(__FILE__, __LINE__, "a statement differing in literals only missed");
            fprintf(stderr, "    %s\n    %s\n", a, b);
        }
        if (hit) {
            CHECK_EQ(pgw_analysis_parse(b, strlen(b), &fresh), 0);
            same_analysis(&bn, &fresh, b);
        }
        pgw_analysis_clear(&an);
        pgw_analysis_clear(&bn);
        pgw_analysis_clear(&fresh);
        pgw_analysis_cache_free(c);
        free(ka);
        free(kb);
    }
}

/* The key copies short tokens in fixed-size blocks: one that ends the text,
 * right before an unreadable page, must be copied exactly and read no
 * further. The reference is the key's definition, byte by byte. */
static void check_key_tail(void)
{
    static const char *const fill[] = { "x", "\"q\"", "+", "$1", "'s'", "/* it's */" };
    guard_t g;
    size_t f, len;

    guard_init(&g, 256);
    for (f = 0; f < sizeof fill / sizeof fill[0]; f++) {
        for (len = 1; len <= 40; len++) {
            sbuf_t sql = { 0 }, ref = { 0 };
            sql_lex_t lx;
            const char *p;
            uint32_t i, kl;
            char *k;

            sb_puts(&sql, "SELECT a ");
            while (sql.len < 9 + len)
                sb_puts(&sql, fill[f]);
            p = (const char *)guard_place(&g, sql.p, sql.len);
            sql_lex_init(&lx);
            CHECK_EQ(sql_lex_run(&lx, p, (uint32_t)sql.len, 1), 0);
            CHECK_EQ(lx.npieces, 1);
            for (i = 0; i < lx.ntoks; i++) {
                const sql_tok_t *t = &lx.toks[i];
                char type = (char)t->type;

                sb_putn(&ref, &type, 1);
                if (sql_tok_in_key(t)) {
                    sb_putn(&ref, p + t->start, t->end - t->start);
                    sb_putn(&ref, "", 1);
                }
            }
            k = malloc(sql_key_bound(lx.toks, lx.ntoks) + SQL_KEY_SLACK);
            kl = sql_key_build(p, lx.toks, lx.ntoks, k);
            CHECK_MEM(k, kl, ref.p, ref.len);
            free(k);
            sql_lex_free(&lx);
            free(sql.p);
            free(ref.p);
        }
    }
    guard_free(&g);
}

/* pgw_analysis_parse runs on worker threads while the loop thread owns the
 * cache; infos cross over and are released on either side. */
typedef struct thread_arg {
    pgw_analysis_t an[64];
    int failed;
} thread_arg_t;

static void *parse_thread(void *p)
{
    thread_arg_t *ta = p;
    unsigned i;

    for (i = 0; i < 64; i++) {
        const char *sql = cases[i % ncases].sql;

        pgw_analysis_init(&ta->an[i]);
        if (pgw_analysis_parse(sql, strlen(sql), &ta->an[i]))
            ta->failed = 1;
    }
    return NULL;    /* libpg_query frees its per-thread memory at thread exit */
}

static void check_threads(void)
{
    static thread_arg_t args[4];
    pthread_t th[4];
    pgw_analysis_cache_t *c = pgw_analysis_cache_new(NULL);
    int i, j;

    for (i = 0; i < 4; i++)
        CHECK_EQ(pthread_create(&th[i], NULL, parse_thread, &args[i]), 0);
    for (i = 0; i < 4; i++) {
        CHECK_EQ(pthread_join(th[i], NULL), 0);
        CHECK_EQ(args[i].failed, 0);
        for (j = 0; j < 64; j++) {
            pgw_analysis_t fresh;
            const char *sql = cases[j % ncases].sql;

            pgw_analysis_cache_add(c, &args[i].an[j]);
            pgw_analysis_init(&fresh);
            CHECK_EQ(pgw_analysis_parse(sql, strlen(sql), &fresh), 0);
            same_analysis(&args[i].an[j], &fresh, sql);
            pgw_analysis_clear(&fresh);
            pgw_analysis_clear(&args[i].an[j]);
        }
    }
    pgw_analysis_cache_free(c);
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : golden_path();

    load_golden(path);
    if (getenv("PGW_GOLDEN_WRITE"))
        return write_golden(path);
    CHECK(sql_walk_tables_ok());
    check_golden();
    check_differential();
    check_distinct_shapes();
    check_key_rules();
    check_key_tail();
    check_passwords();
    check_continuation_across_comment();
    check_replication_commands();
    check_api();
    check_prefixes();
    check_threads();
    pg_query_exit();
    CHECK_DONE();
}
