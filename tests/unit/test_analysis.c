/* SQL analysis: what it says of each statement.
 *
 *  - golden: every case of analysis_golden.txt (beside this file), field by
 *    field: statement bounds, command, class, flags, parse error, objects,
 *    functions called, normalized text; fingerprints must be 16 hex digits when parsed;
 *  - differential: for each golden string and versions of it with other
 *    literals, other spacing and added comments, what a cache hit returns is
 *    exactly what a fresh, cache-less analysis returns, and fingerprints
 *    agree across literal versions; shapes that differ never share an entry;
 *  - passwords: never in any text, raw text, message or fingerprint;
 *  - replication commands: fingerprints by shape, no label in any text.
 *
 * The cache's key and its API's corners are test_analysis_cache.c's.
 *
 * PGW_GOLDEN_WRITE=1 rewrites the golden file from its sql: lines (review
 * the diff by hand before committing it). */
#include "analysis_support.h"


/* ---- rendering an analysis in the golden format ----------------------------- */

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
            sb_printf(b, "  flags:%s%s%s%s%s%s%s%s%s%s%s%s\n", in->flags & PGW_SQL_PARSE_ERROR ? " parse_error" : "",
                      in->flags & PGW_SQL_NO_RAW ? " no_raw" : "",
                      in->flags & PGW_SQL_NO_WHERE ? " no_where" : "",
                      in->flags & PGW_SQL_COPY_PROGRAM ? " copy_program" : "",
                      in->flags & PGW_SQL_COPY_FROM ? " copy_from" : "",
                      in->flags & PGW_SQL_OWN_TRANSACTION ? " own_transaction" : "",
                      in->flags & PGW_SQL_PREPARE ? " prepare" : "",
                      in->flags & PGW_SQL_EXECUTE ? " execute" : "",
                      in->flags & PGW_SQL_DEALLOCATE ? " deallocate" : "",
                      in->flags & PGW_SQL_DECLARE ? " declare" : "",
                      in->flags & PGW_SQL_FETCH ? " fetch" : "",
                      in->flags & PGW_SQL_CLOSE ? " close" : "");
        if (in->name)
            sb_printf(b, "  name: %s\n", in->name);
        if (in->parse_error)
            sb_printf(b, "  error: %s\n", in->parse_error);
        for (j = 0; j < in->nobjects; j++)
            sb_printf(b, "  obj: %s | %s | %s | %s\n", in->objects[j].schema, in->objects[j].name,
                      in->objects[j].type, pgw_access_name(in->objects[j].access));
        for (j = 0; j < in->nfunctions; j++)
            sb_printf(b, "  fn: %s | %s\n", in->functions[j].schema, in->functions[j].name);
    }
}

static int write_golden(const char *path)
{
    FILE *f = fopen(path, "w");
    unsigned i;

    if (!f)
        return 1;
    fputs("# Golden analyses: one case per \"sql:\" line (\\n, \\t, \\\\ escaped), then\n"
          "# per statement \"stmt: offset:length | command | class | text\" and its\n"
          "# flags, parse error, objects \"schema | name | type | access\" and the\n"
          "# functions it calls \"schema | name\".\n"
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
    check_passwords();
    check_replication_commands();
    pg_query_exit();
    CHECK_DONE();
}
