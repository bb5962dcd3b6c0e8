/* Framer tests: every stream is fed in one piece, split at every byte offset,
 * one byte at a time and (short streams) in three pieces at every pair of
 * offsets, with and without callback stops; the callback sequence must be
 * the same every time. Each piece sits just before a PROT_NONE page. */
#include "check.h"
#include "samples.h"

#include "pgwarden/protocol.h"

typedef struct rec {
    uint8_t *log;                 /* serialized callback sequence */
    size_t len, cap;
    unsigned stop_every;          /* callback stops after every n-th message */
    unsigned seen;
    int err;                      /* framer error, 0 if none */
    const pgw_framer_t *f;
    const uint8_t *chunk;         /* piece being fed, for the zero-copy check */
    size_t chunk_len;
    int one_shot;                 /* every wanted body must point into the input */
    unsigned bad_ptr;             /* bodies neither in the input nor in asm_buf */
} rec_t;

typedef struct cfg {
    pgw_side_t side;
    int want_all;                 /* DataRow and CopyData assembled too */
    unsigned stop_every;
    uint32_t max_len;
} cfg_t;

static guard_t g_piece;

static void log_put(rec_t *r, const void *p, size_t n)
{
    if (r->len + n > r->cap) {
        size_t cap = (r->len + n) * 2;
        uint8_t *q = realloc(r->log, cap);
        if (!q)
            abort();
        r->log = q;
        r->cap = cap;
    }
    if (n)
        memcpy(r->log + r->len, p, n);
    r->len += n;
}

static int on_msg(void *ud, const pgw_msg_t *m)
{
    rec_t *r = ud;
    uint8_t e[14];
    uint32_t v[3] = { m->len, m->code, m->body_len };

    e[0] = m->type;
    memcpy(e + 1, v, sizeof(v));
    e[13] = m->body != NULL;
    log_put(r, e, sizeof(e));
    if (m->body) {
        uintptr_t b = (uintptr_t)m->body, c = (uintptr_t)r->chunk;
        int in_chunk = b >= c && b + m->body_len <= c + r->chunk_len;

        log_put(r, m->body, m->body_len);
        if ((!in_chunk && m->body != r->f->asm_buf) || (r->one_shot && !in_chunk))
            r->bad_ptr++;
    }
    r->seen++;
    return r->stop_every && r->seen % r->stop_every == 0;
}

static void rec_reset(rec_t *r, unsigned stop_every)
{
    r->len = 0;
    r->seen = 0;
    r->err = 0;
    r->stop_every = stop_every;
    r->one_shot = 0;
    r->bad_ptr = 0;
}

static void framer_setup(pgw_framer_t *f, rec_t *r, const cfg_t *c)
{
    pgw_framer_init(f, c->side, c->max_len, on_msg, r);
    if (c->want_all) {
        pgw_framer_want(f, 'D', 1);
        pgw_framer_want(f, 'd', 1);
    }
    r->f = f;
}

/* Feeds one piece as a real caller does: after a stop, the rest is fed
 * again. Returns 0, or the framer's error (also logged). */
static int feed_piece(pgw_framer_t *f, rec_t *r, const uint8_t *p, size_t n)
{
    size_t off = 0;

    r->chunk = p;
    r->chunk_len = n;
    while (off < n) {
        ssize_t rc = pgw_framer_feed(f, p + off, n - off);
        if (rc < 0) {
            uint8_t e[2] = { 0xEE, (uint8_t)-rc };
            log_put(r, e, 2);
            r->err = (int)rc;
            return (int)rc;
        }
        if (pgw_framer_stopped(f) ? rc == 0 || (size_t)rc > n - off : (size_t)rc != n - off) {
            check_fail(__FILE__, __LINE__, "feed consumed a wrong count");
            r->err = -100;
            return -100;
        }
        off += (size_t)rc;
    }
    return 0;
}

/* Feeds in[0..n) cut at the given offsets (ascending), each piece on its own
 * just before the guard page. Returns the error or 0; the log is in r. */
static int run_split(const cfg_t *c, rec_t *r, const uint8_t *in, size_t n,
                     const size_t *cuts, size_t ncuts)
{
    pgw_framer_t f;
    size_t start = 0;
    int rc = 0;

    framer_setup(&f, r, c);
    for (size_t i = 0; i <= ncuts && rc == 0; i++) {
        size_t end = i < ncuts ? cuts[i] : n;
        uint8_t *p = guard_place(&g_piece, in + start, end - start);

        rc = feed_piece(&f, r, p, end - start);
        guard_scribble(&g_piece, end - start);
        start = end;
    }
    if (rc == 0) {
        CHECK(pgw_framer_at_boundary(&f));
        CHECK_EQ(f.consumed, n);
    }
    pgw_framer_free(&f);
    return rc;
}

static int run_one_shot(const cfg_t *c, rec_t *r, const uint8_t *in, size_t n)
{
    pgw_framer_t f;
    uint8_t *p = guard_place(&g_piece, in, n);
    int rc;

    framer_setup(&f, r, c);
    r->one_shot = 1;
    rc = feed_piece(&f, r, p, n);
    r->one_shot = 0;
    /* The common case must neither copy nor allocate. */
    CHECK(f.asm_buf == NULL);
    CHECK_EQ(f.messages, r->seen);
    pgw_framer_free(&f);
    return rc;
}

static int same_log(const rec_t *a, const rec_t *b)
{
    return a->len == b->len && memcmp(a->log, b->log, a->len) == 0 && a->err == b->err;
}

/* Every split of in gives ref's log. */
static void check_splits(const cfg_t *c, const rec_t *ref, const uint8_t *in, size_t n,
                         int three_pieces, const char *what)
{
    rec_t r = { 0 };
    size_t *cuts = malloc((n + 1) * sizeof(*cuts));
    unsigned bad = 0;

    for (size_t i = 0; i <= n; i++) {
        rec_reset(&r, c->stop_every);
        run_split(c, &r, in, n, &i, 1);
        if (!same_log(&r, ref) || r.bad_ptr) {
            if (bad++ == 0)
                fprintf(stderr, "%s: split at %zu differs\n", what, i);
        }
    }
    for (size_t i = 0; i < n; i++)
        cuts[i] = i + 1;
    rec_reset(&r, c->stop_every);
    run_split(c, &r, in, n, cuts, n ? n - 1 : 0);
    if (!same_log(&r, ref) || r.bad_ptr) {
        bad++;
        fprintf(stderr, "%s: byte-at-a-time differs\n", what);
    }
    if (three_pieces) {
        for (size_t i = 0; i <= n; i++) {
            for (size_t j = i; j <= n; j++) {
                size_t two[2] = { i, j };
                rec_reset(&r, c->stop_every);
                run_split(c, &r, in, n, two, 2);
                if (!same_log(&r, ref) || r.bad_ptr) {
                    if (bad++ == 0)
                        fprintf(stderr, "%s: cuts %zu,%zu differ\n", what, i, j);
                }
            }
        }
    }
    CHECK_EQ(bad, 0);
    free(cuts);
    free(r.log);
}

static void test_streams(void)
{
    static const pgw_side_t sides[] = { PGW_FRONTEND, PGW_BACKEND };
    static const unsigned flags[] = { SAMPLE_STREAM, SAMPLE_SHORT };

    for (size_t s = 0; s < 2; s++) {
        for (size_t k = 0; k < 2; k++) {
            size_t n, count;
            uint8_t *in = sample_stream(sides[s], flags[k], &n, &count);
            int shortish = flags[k] == SAMPLE_SHORT;

            for (int want_all = 0; want_all <= 1; want_all++) {
                cfg_t c = { sides[s], want_all, 0, 0 };
                rec_t ref = { 0 };
                char what[96];

                CHECK_EQ(run_one_shot(&c, &ref, in, n), 0);
                CHECK_EQ(ref.seen, count);
                CHECK_EQ(ref.bad_ptr, 0);
                for (unsigned stop = 0; stop <= 3; stop += want_all ? 3 : 1) {
                    if (stop == 2)
                        continue;
                    c.stop_every = stop;
                    snprintf(what, sizeof(what), "%s %s stream, want_all=%d stop_every=%u",
                             sides[s] == PGW_FRONTEND ? "frontend" : "backend",
                             shortish ? "short" : "full", want_all, stop);
                    check_splits(&c, &ref, in, n, shortish, what);
                }
                free(ref.log);
            }
            free(in);
        }
    }
}

static size_t put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
    return 4;
}

/* One-shot and every split: the error, after exactly `before` messages. */
static void check_error_everywhere(const cfg_t *c, const uint8_t *in, size_t n,
                                   int err, unsigned before, const char *what)
{
    rec_t ref = { 0 };
    pgw_framer_t f;

    run_one_shot(c, &ref, in, n);
    CHECK_EQ(ref.err, err);
    CHECK_EQ(ref.seen, before);
    if (ref.err != err || ref.seen != before)
        fprintf(stderr, "    in %s\n", what);
    check_splits(c, &ref, in, n, 0, what);

    /* The error is sticky, even for an empty feed. */
    rec_reset(&ref, 0);
    framer_setup(&f, &ref, c);
    CHECK_EQ(pgw_framer_feed(&f, guard_place(&g_piece, in, n), n), err);
    CHECK_EQ(pgw_framer_feed(&f, in, n), err);
    CHECK_EQ(pgw_framer_feed(&f, in, 0), err);
    pgw_framer_free(&f);
    free(ref.log);
}

static void test_bad_lengths(void)
{
    static const uint32_t bad[] = { 0, 1, 3, 0x7FFFFFFFu, 0x80000000u, 0xFFFFFFFFu,
                                    PGW_MSG_MAX_DEFAULT + 1 };
    const sample_t *prefix_of[2] = { NULL, NULL };

    for (size_t i = 0; i < pgw_nsamples; i++) {
        if (strcmp(pgw_samples[i].name, "StartupMessage") == 0)
            prefix_of[PGW_FRONTEND] = &pgw_samples[i];
        if (strcmp(pgw_samples[i].name, "AuthenticationOk") == 0)
            prefix_of[PGW_BACKEND] = &pgw_samples[i];
    }
    for (int side = 0; side <= 1; side++) {
        size_t plen;
        uint8_t *prefix = sample_build(prefix_of[side], &plen);
        uint8_t in[256];
        cfg_t c = { (pgw_side_t)side, 0, 0, 0 };

        for (size_t b = 0; b < sizeof(bad) / sizeof(bad[0]); b++) {
            for (int trailing = 0; trailing <= 1; trailing++) {
                size_t n = plen;
                memcpy(in, prefix, plen);
                in[n++] = 'Q';
                n += put_be32(in + n, bad[b]);
                if (trailing) {
                    memset(in + n, 'x', 32);
                    n += 32;
                }
                check_error_everywhere(&c, in, n, PGW_EBADLEN, 1, "bad length");
            }
        }
        /* A type byte of 0 would read as a startup packet: refused. */
        memcpy(in, prefix, plen);
        in[plen] = 0;
        put_be32(in + plen + 1, 4);
        check_error_everywhere(&c, in, plen + 5, PGW_EBADTYPE, 1, "type 0");

        /* A configured maximum: len == max passes, max + 1 does not. */
        c.max_len = 100;
        {
            size_t n = plen;
            memcpy(in, prefix, plen);
            in[n++] = 'Q';
            n += put_be32(in + n, 100);
            memset(in + n, 'a', 95);
            in[n + 95] = 0;
            n += 96;
            in[n++] = 'Q';
            n += put_be32(in + n, 101);
            check_error_everywhere(&c, in, n, PGW_EBADLEN, 2, "max_len");
        }
        free(prefix);
    }
}

static void test_startup_lengths(void)
{
    static const uint32_t bad[] = { 0, 4, 7, PGW_STARTUP_MAX + 5, 0x80000000u, 0xFFFFFFFFu };
    uint8_t *big = calloc(1, PGW_STARTUP_MAX + 64);
    cfg_t c = { PGW_FRONTEND, 0, 0, 0 };
    pgw_framer_t f;
    rec_t r = { 0 };
    size_t n;

    for (size_t b = 0; b < sizeof(bad) / sizeof(bad[0]); b++) {
        n = put_be32(big, bad[b]);
        n += put_be32(big + n, PGW_PROTO_V3);
        memset(big + n, 'x', 40);
        check_error_everywhere(&c, big, n + 40, PGW_ESTARTUPLEN, 0, "startup length");
    }

    /* PGW_STARTUP_MAX bytes after the length word are allowed; one more is not. */
    for (uint32_t total = PGW_STARTUP_MAX + 4; total <= PGW_STARTUP_MAX + 5; total++) {
        memset(big, 0, PGW_STARTUP_MAX + 64);
        n = put_be32(big, total);
        n += put_be32(big + n, PGW_PROTO_V3);
        memcpy(big + n, "user\0alice\0options\0", 19);
        n += 19;
        memset(big + n, 'o', total - n - 2);   /* value, its NUL, the terminator */
        n = total;
        rec_reset(&r, 0);
        framer_setup(&f, &r, &c);
        if (total == PGW_STARTUP_MAX + 4) {
            CHECK_EQ(pgw_framer_feed(&f, guard_place(&g_piece, big, n), n), (ssize_t)n);
            CHECK_EQ(r.seen, 1);
            CHECK(!pgw_framer_in_startup(&f));
        } else {
            CHECK_EQ(pgw_framer_feed(&f, guard_place(&g_piece, big, n), n), PGW_ESTARTUPLEN);
            CHECK_EQ(r.seen, 0);
        }
        pgw_framer_free(&f);
    }

    /* A bad startup length is refused as soon as its 4 bytes are in. */
    framer_setup(&f, &r, &c);
    put_be32(big, PGW_STARTUP_MAX + 5);
    CHECK_EQ(pgw_framer_feed(&f, guard_place(&g_piece, big, 3), 3), 3);
    CHECK_EQ(pgw_framer_feed(&f, guard_place(&g_piece, big + 3, 1), 1), PGW_ESTARTUPLEN);
    pgw_framer_free(&f);
    framer_setup(&f, &r, &c);
    CHECK_EQ(pgw_framer_feed(&f, guard_place(&g_piece, "GET ", 4), 4), PGW_ESTARTUPLEN);
    pgw_framer_free(&f);
    free(big);
    free(r.log);
}

static const sample_t *find_sample(const char *name)
{
    for (size_t i = 0; i < pgw_nsamples; i++)
        if (strcmp(pgw_samples[i].name, name) == 0)
            return &pgw_samples[i];
    abort();
}

static void test_cancel(void)
{
    cfg_t c = { PGW_FRONTEND, 0, 0, 0 };
    size_t n, qn;
    uint8_t *cancel = sample_build(find_sample("CancelRequest"), &n);
    uint8_t *q = sample_build(find_sample("Query"), &qn);
    uint8_t in[64];
    rec_t r = { 0 };
    pgw_framer_t f;

    /* Alone: one message, at every split, and the stream is over. */
    run_one_shot(&c, &r, cancel, n);
    CHECK_EQ(r.seen, 1);
    CHECK_EQ(r.err, 0);
    check_splits(&c, &r, cancel, n, 1, "CancelRequest");

    /* Followed by anything, in the same feed or later: refused. */
    memcpy(in, cancel, n);
    in[n] = 'x';
    check_error_everywhere(&c, in, n + 1, PGW_EAFTEREND, 1, "CancelRequest + 1 byte");
    memcpy(in + n, q, qn);
    check_error_everywhere(&c, in, n + qn, PGW_EAFTEREND, 1, "CancelRequest + Query");

    rec_reset(&r, 0);
    framer_setup(&f, &r, &c);
    CHECK_EQ(pgw_framer_feed(&f, guard_place(&g_piece, cancel, n), n), (ssize_t)n);
    CHECK(!pgw_framer_in_startup(&f));
    CHECK(pgw_framer_at_boundary(&f));
    CHECK_EQ(pgw_framer_feed(&f, cancel, 0), 0);
    CHECK_EQ(pgw_framer_feed(&f, guard_place(&g_piece, "x", 1), 1), PGW_EAFTEREND);
    CHECK_EQ(pgw_framer_feed(&f, cancel, 0), PGW_EAFTEREND);
    pgw_framer_free(&f);
    free(r.log);
    free(cancel);
    free(q);
}

typedef struct phase_rec { int in_startup_during; uint32_t code; unsigned n; } phase_rec_t;

static int on_phase(void *ud, const pgw_msg_t *m)
{
    phase_rec_t *p = ud;
    (void)m;
    p->code = m->code;
    p->n++;
    return 0;
}

static void test_startup_phase(void)
{
    static const struct { uint32_t code; int stays; } codes[] = {
        { PGW_CODE_SSL, 1 }, { PGW_CODE_GSSENC, 1 },
        { 0x00020000u, 1 },                 /* protocol 2.0: the caller refuses it */
        { 0x00040000u, 1 },                 /* 4.0 */
        { (1234u << 16) | 9999u, 1 },       /* unknown request code */
        { 0, 1 },
        { PGW_PROTO_V3, 0 }, { PGW_PROTO_V3 + 1, 0 }, { PGW_PROTO_V3 + 0xFFFF, 0 },
    };
    uint8_t pkt[64];
    size_t n;

    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        phase_rec_t p = { 0 };
        pgw_framer_t f;

        pgw_framer_init(&f, PGW_FRONTEND, 0, on_phase, &p);
        CHECK(pgw_framer_in_startup(&f));
        n = put_be32(pkt, 0);
        n += put_be32(pkt + n, codes[i].code);
        memcpy(pkt + n, "user\0u\0", 8);
        n += 8;
        put_be32(pkt, (uint32_t)n);
        CHECK_EQ(pgw_framer_feed(&f, guard_place(&g_piece, pkt, n), n), (ssize_t)n);
        CHECK_EQ(p.n, 1);
        CHECK_EQ(p.code, codes[i].code);
        CHECK_EQ(pgw_framer_in_startup(&f), codes[i].stays);
        /* Halfway through a startup packet is still the startup phase. */
        if (codes[i].stays) {
            CHECK_EQ(pgw_framer_feed(&f, guard_place(&g_piece, pkt, 10), 10), 10);
            CHECK(pgw_framer_in_startup(&f));
            CHECK(!pgw_framer_at_boundary(&f));
        }
        pgw_framer_free(&f);
    }

    /* A backend framer has no startup phase. */
    {
        pgw_framer_t f;
        pgw_framer_init(&f, PGW_BACKEND, 0, on_phase, NULL);
        CHECK(!pgw_framer_in_startup(&f));
        pgw_framer_free(&f);
    }
}

typedef struct stop_rec { unsigned n; uint8_t types[16]; int stop; } stop_rec_t;

static int on_stop(void *ud, const pgw_msg_t *m)
{
    stop_rec_t *s = ud;
    if (s->n < sizeof(s->types))
        s->types[s->n] = m->type;
    s->n++;
    return s->stop;
}

static void test_stop_resume(void)
{
    size_t qn, sn, xn;
    uint8_t *q = sample_build(find_sample("Query"), &qn);
    uint8_t *s = sample_build(find_sample("Sync"), &sn);
    uint8_t *x = sample_build(find_sample("Terminate"), &xn);
    uint8_t in[128], *p;
    size_t n = 0;
    stop_rec_t st = { .stop = 1 };
    pgw_framer_t f;

    memcpy(in + n, q, qn), n += qn;
    memcpy(in + n, s, sn), n += sn;
    memcpy(in + n, x, xn), n += xn;
    p = guard_place(&g_piece, in, n);

    pgw_framer_init(&f, PGW_BACKEND, 0, on_stop, &st);   /* no startup phase */
    CHECK_EQ(pgw_framer_feed(&f, p, n), (ssize_t)qn);
    CHECK(pgw_framer_stopped(&f));
    CHECK(pgw_framer_at_boundary(&f));
    CHECK_EQ(st.n, 1);
    CHECK_EQ(pgw_framer_feed(&f, p + qn, n - qn), (ssize_t)sn);
    CHECK(pgw_framer_stopped(&f));
    CHECK_EQ(pgw_framer_feed(&f, p + qn + sn, xn), (ssize_t)xn);
    CHECK(pgw_framer_stopped(&f));   /* stopped on the last message: still says so */
    CHECK_EQ(st.n, 3);
    CHECK_EQ(pgw_framer_feed(&f, p, 0), 0);
    CHECK(!pgw_framer_stopped(&f));
    CHECK_EQ(st.types[0], 'Q');
    CHECK_EQ(st.types[1], 'S');
    CHECK_EQ(st.types[2], 'X');
    CHECK_EQ(f.consumed, n);
    pgw_framer_free(&f);

    /* A stop on a message completed from an earlier feed: the count is the
     * part of this feed that finished it. */
    st.n = 0;
    pgw_framer_init(&f, PGW_BACKEND, 0, on_stop, &st);
    CHECK_EQ(pgw_framer_feed(&f, guard_place(&g_piece, in, 7), 7), 7);
    CHECK(!pgw_framer_stopped(&f));
    CHECK(!pgw_framer_at_boundary(&f));
    p = guard_place(&g_piece, in + 7, n - 7);
    CHECK_EQ(pgw_framer_feed(&f, p, n - 7), (ssize_t)(qn - 7));
    CHECK(pgw_framer_stopped(&f));
    CHECK_EQ(st.n, 1);
    st.stop = 0;
    CHECK_EQ(pgw_framer_feed(&f, p + qn - 7, n - qn), (ssize_t)(n - qn));
    CHECK(!pgw_framer_stopped(&f));
    CHECK_EQ(st.n, 3);
    pgw_framer_free(&f);
    free(q);
    free(s);
    free(x);
}

typedef struct body_rec { const uint8_t *body; uint32_t body_len; unsigned n; } body_rec_t;

static int on_body(void *ud, const pgw_msg_t *m)
{
    body_rec_t *b = ud;
    b->body = m->body;
    b->body_len = m->body_len;
    b->n++;
    return 0;
}

static void test_memory(void)
{
    static uint8_t chunk[1000];
    uint8_t hdr[5] = { 'Q' };
    body_rec_t b = { 0 };
    pgw_framer_t f;

    /* An announced length is not an allocation: the buffer follows the
     * bytes that actually came. */
    pgw_framer_init(&f, PGW_BACKEND, 0, on_body, &b);
    put_be32(hdr + 1, 1u << 29);
    CHECK_EQ(pgw_framer_feed(&f, guard_place(&g_piece, hdr, 5), 5), 5);
    memset(chunk, 'a', sizeof(chunk));
    CHECK_EQ(pgw_framer_feed(&f, guard_place(&g_piece, chunk, 100), 100), 100);
    CHECK(f.asm_cap >= 100 && f.asm_cap <= 256);
    for (int i = 0; i < 20; i++) {
        CHECK_EQ(pgw_framer_feed(&f, guard_place(&g_piece, chunk, sizeof(chunk)), sizeof(chunk)),
                 (ssize_t)sizeof(chunk));
        CHECK(f.asm_cap <= 2 * f.asm_got + 256);
    }
    CHECK_EQ(b.n, 0);
    pgw_framer_free(&f);
    CHECK(f.asm_buf == NULL);

    /* A big split message does not keep its buffer; a small one may. */
    {
        size_t big = 100 * 1024;
        uint8_t *m = malloc(big + 5);
        m[0] = 'Q';
        put_be32(m + 1, (uint32_t)big + 4);
        memset(m + 5, 'b', big);
        m[big + 4] = 0;
        pgw_framer_init(&f, PGW_BACKEND, 0, on_body, &b);
        CHECK_EQ(pgw_framer_feed(&f, guard_place(&g_piece, m, 50000), 50000), 50000);
        CHECK(f.asm_buf != NULL);
        CHECK_EQ(pgw_framer_feed(&f, guard_place(&g_piece, m + 50000, big + 5 - 50000),
                                 big + 5 - 50000), (ssize_t)(big + 5 - 50000));
        CHECK_EQ(b.n, 1);
        CHECK_EQ(b.body_len, big);
        CHECK(f.asm_buf == NULL);
        put_be32(m + 1, 4 + 20);
        CHECK_EQ(pgw_framer_feed(&f, guard_place(&g_piece, m, 10), 10), 10);
        CHECK_EQ(pgw_framer_feed(&f, guard_place(&g_piece, m + 10, 15), 15), 15);
        CHECK_EQ(b.n, 2);
        CHECK(f.asm_buf != NULL && b.body == f.asm_buf);
        CHECK(f.asm_cap <= 256);
        pgw_framer_free(&f);
        free(m);
    }

    /* The header ends one feed, the body is whole in the next: no copy. */
    {
        uint8_t m[9] = { 'Q', 0, 0, 0, 8, 'a', 'b', 'c', 0 };
        uint8_t *p;
        pgw_framer_init(&f, PGW_BACKEND, 0, on_body, &b);
        CHECK_EQ(pgw_framer_feed(&f, guard_place(&g_piece, m, 5), 5), 5);
        p = guard_place(&g_piece, m + 5, 4);
        CHECK_EQ(pgw_framer_feed(&f, p, 4), 4);
        CHECK(b.body == p);
        CHECK(f.asm_buf == NULL);
        pgw_framer_free(&f);
    }
}

static void test_wanted(void)
{
    uint8_t drow[] = { 'D', 0, 0, 0, 6, 0, 0 };
    body_rec_t b = { 0 };
    pgw_framer_t f;

    /* 'D' is DataRow from the backend (streamed), Describe from the client. */
    pgw_framer_init(&f, PGW_BACKEND, 0, on_body, &b);
    CHECK_EQ(pgw_framer_feed(&f, guard_place(&g_piece, drow, 7), 7), 7);
    CHECK(b.n == 1 && b.body == NULL && b.body_len == 2);
    pgw_framer_want(&f, 'D', 1);
    CHECK_EQ(pgw_framer_feed(&f, guard_place(&g_piece, drow, 7), 7), 7);
    CHECK(b.n == 2 && b.body != NULL);
    pgw_framer_want(&f, 'Z', 0);
    drow[0] = 'Z';
    CHECK_EQ(pgw_framer_feed(&f, guard_place(&g_piece, drow, 7), 7), 7);
    CHECK(b.n == 3 && b.body == NULL);
    drow[0] = 'd';
    CHECK_EQ(pgw_framer_feed(&f, guard_place(&g_piece, drow, 7), 7), 7);
    CHECK(b.n == 4 && b.body == NULL);
    pgw_framer_free(&f);

    pgw_framer_init(&f, PGW_FRONTEND, 0, on_body, &b);
    CHECK(f.want['D' >> 3] & (1u << ('D' & 7)));
    CHECK(!(f.want['d' >> 3] & (1u << ('d' & 7))));
    pgw_framer_free(&f);

    /* A NULL callback frames silently. */
    pgw_framer_init(&f, PGW_BACKEND, 0, NULL, NULL);
    CHECK_EQ(pgw_framer_feed(&f, guard_place(&g_piece, drow, 7), 7), 7);
    CHECK_EQ(f.messages, 1);
    pgw_framer_free(&f);
}

/* pgw_framer_whole says yes exactly for the reads a backend framer at a
 * boundary takes whole and without error: every prefix of the full backend
 * stream (yes only at message ends), then random headers, good and bad, where
 * its answer must match what pgw_framer_feed does with the same bytes. */
static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int feed_takes_whole(const uint8_t *in, size_t n, uint32_t max_len)
{
    rec_t r = { 0 };
    pgw_framer_t f;
    cfg_t c = { PGW_BACKEND, 0, 0, max_len };

    framer_setup(&f, &r, &c);
    ssize_t got = pgw_framer_feed(&f, guard_place(&g_piece, in, n), n);
    int ok = got == (ssize_t)n && pgw_framer_at_boundary(&f) && n > 0;
    pgw_framer_free(&f);
    free(r.log);
    return ok;
}

static void test_whole(void)
{
    size_t n, count;
    uint8_t *in = sample_stream(PGW_BACKEND, SAMPLE_STREAM, &n, &count);
    pgw_framer_t f;
    rec_t r = { 0 };
    cfg_t c = { PGW_BACKEND, 0, 0, 0 };
    unsigned yes = 0;

    framer_setup(&f, &r, &c);
    for (size_t k = 0; k <= n; k++) {
        int w = pgw_framer_whole(&f, guard_place(&g_piece, in, k), k);
        CHECK_EQ(w, feed_takes_whole(in, k, 0));
        yes += (unsigned)w;
    }
    CHECK_EQ(yes, count);

    /* Not at a boundary: no. */
    CHECK_EQ(pgw_framer_feed(&f, in, 3), 3);
    CHECK_EQ(pgw_framer_whole(&f, in, n), 0);
    pgw_framer_free(&f);
    free(r.log);
    free(in);

    /* A frontend framer still in its startup phase: no. */
    rec_t r2 = { 0 };
    cfg_t c2 = { PGW_FRONTEND, 0, 0, 0 };
    uint8_t q[] = { 'Q', 0, 0, 0, 5, 0 };
    framer_setup(&f, &r2, &c2);
    CHECK_EQ(pgw_framer_whole(&f, q, sizeof q), 0);
    pgw_framer_free(&f);
    free(r2.log);

    /* Random reads of 1-3 messages with lengths and types near the edges. */
    static const uint32_t lens[] = { 0, 1, 3, 4, 5, 6, 40, 99, 100, 101, 0x80000000u, 0xFFFFFFFFu,
                                     4, 9, 60 };
    uint64_t seed = 42;
    uint8_t buf[1024];
    unsigned agreed = 0, whole = 0;
    for (int iter = 0; iter < 20000; iter++) {
        size_t len = 0;
        int msgs = 1 + (int)(splitmix(&seed) % 3);
        for (int m = 0; m < msgs; m++) {
            uint64_t x = splitmix(&seed);
            uint32_t ml = lens[x % (sizeof lens / sizeof lens[0])];
            buf[len] = (x >> 20) % 50 == 0 ? 0 : 'D';
            put_be32(buf + len + 1, ml);
            size_t body = ml >= 4 && ml <= 101 ? ml - 4 : (x >> 40) % 8;
            memset(buf + len + 5, 'x', body);
            len += 5 + body;
        }
        /* Sometimes cut the read short, inside a header or a body. */
        uint64_t x = splitmix(&seed);
        if (x % 4 == 0)
            len -= 1 + (x >> 12) % (len < 9 ? len : 9);
        rec_t r3 = { 0 };
        cfg_t c3 = { PGW_BACKEND, 0, 0, 100 };
        framer_setup(&f, &r3, &c3);
        int w = pgw_framer_whole(&f, buf, len);
        pgw_framer_free(&f);
        free(r3.log);
        agreed += w == feed_takes_whole(buf, len, 100);
        whole += (unsigned)w;
    }
    CHECK_EQ(agreed, 20000);
    CHECK(whole > 1000 && whole < 19000);   /* both answers were exercised */
}

static void test_strerror(void)
{
    static const int errs[] = { PGW_EBADLEN, PGW_ESTARTUPLEN, PGW_ENOMEM,
                                PGW_EAFTEREND, PGW_EBADTYPE };
    const char *unknown = pgw_framer_strerror(-99);

    CHECK(unknown && *unknown);
    for (size_t i = 0; i < sizeof(errs) / sizeof(errs[0]); i++) {
        const char *s = pgw_framer_strerror(errs[i]);
        CHECK(s && *s && strcmp(s, unknown) != 0);
        for (size_t j = 0; j < i; j++)
            CHECK(strcmp(s, pgw_framer_strerror(errs[j])) != 0);
    }
}

int main(void)
{
    guard_init(&g_piece, 256 * 1024);
    test_streams();
    test_bad_lengths();
    test_startup_lengths();
    test_cancel();
    test_startup_phase();
    test_stop_resume();
    test_memory();
    test_wanted();
    test_whole();
    test_strerror();
    guard_free(&g_piece);
    CHECK_DONE();
}
