/* The analysis cache: its key and its API's corners.
 *
 *  - the cache key: statements share one exactly when they differ in
 *    literal values only (numbers, strings of each kind, dollar quotes, signs,
 *    white space, comments), and the key is exact for tokens that end the
 *    text (no byte read past it); a literal continued across a comment is
 *    never a hit;
 *  - the API's corners: empty input, NUL bytes, moved structs, references
 *    that outlive the cache, eviction bounds, big statements, parsing on
 *    several threads at once with infos handed between them.
 *
 * The golden file's statements (analysis_golden.txt) are the input of the
 * prefix and thread checks. */
#include "analysis_support.h"

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
    load_golden(argc > 1 ? argv[1] : golden_path());
    check_key_rules();
    check_key_tail();
    check_continuation_across_comment();
    check_api();
    check_prefixes();
    check_threads();
    pg_query_exit();
    CHECK_DONE();
}
