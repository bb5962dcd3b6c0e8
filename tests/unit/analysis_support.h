/* Helpers shared by the analysis tests (test_analysis.c, test_analysis_cache.c):
 * a growable string, the golden file's cases, and the field-by-field
 * comparison of two analyses. */
#ifndef PGW_ANALYSIS_SUPPORT_H
#define PGW_ANALYSIS_SUPPORT_H

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

static inline void sb_putn(sbuf_t *b, const char *s, size_t n)
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

static inline void sb_puts(sbuf_t *b, const char *s) { sb_putn(b, s, strlen(s)); }

static inline void sb_printf(sbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline void sb_printf(sbuf_t *b, const char *fmt, ...)
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
static inline void sb_escaped(sbuf_t *b, const char *s, size_t n)
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

static inline char *unescape(const char *s)
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

static inline int is_hex16(const char *s)
{
    size_t i;

    for (i = 0; i < 16; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return s[16] == 0;
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

static inline const char *golden_path(void)
{
    static char path[4096];
    const char *slash = strrchr(__FILE__, '/');

    if (getenv("PGW_GOLDEN"))
        return getenv("PGW_GOLDEN");
    snprintf(path, sizeof path, "%.*s/analysis_golden.txt",
             slash ? (int)(slash - __FILE__) : 1, slash ? __FILE__ : ".");
    return path;
}

static inline void load_golden(const char *path)
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

/* Field by field: the cached answer against a fresh one. */
static inline int same_analysis(const pgw_analysis_t *a, const pgw_analysis_t *b, const char *sql)
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

static inline int holds(const char *hay, size_t n, const char *needle)
{
    size_t k = strlen(needle), i;

    for (i = 0; i + k <= n; i++)
        if (memcmp(hay + i, needle, k) == 0)
            return 1;
    return 0;
}

#endif
