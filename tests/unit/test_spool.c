/* The Kafka sink's spool (sinks/spool.c): the record format, a torn or
 * corrupt tail cut at every byte, replay order and the resolution of begin
 * records, and the deletion of segments by reference counts. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "check.h"
#include "spool.h"

static char g_dir[] = "/tmp/pgw-spool-test-XXXXXX";

typedef struct seen {
    char values[64][256];
    uint64_t tokens[64];
    int types[64];
    int n;
} seen_t;

static int collect(void *ud, const pgw_spool_rec_t *r)
{
    seen_t *s = ud;
    if (s->n < 64) {
        snprintf(s->values[s->n], sizeof s->values[0], "%.*s", (int)r->value_len,
                 (const char *)r->value);
        s->tokens[s->n] = r->token;
        s->types[s->n] = r->type;
        s->n++;
    }
    return 0;
}

static void make_segment(pgw_jbuf_t *b, int nrec)
{
    pgw_jbuf_reset(b);
    pgw_jbuf_put(b, PGW_SPOOL_MAGIC, PGW_SPOOL_MAGIC_LEN);
    for (int i = 0; i < nrec; i++) {
        char v[32];
        int n = snprintf(v, sizeof v, "{\"n\":%d}", i);
        pgw_spool_encode(b, PGW_SPOOL_EVENT, 0, "key", 3, v, (size_t)n);
    }
}

static void test_roundtrip(void)
{
    pgw_jbuf_t b;
    pgw_jbuf_init(&b, 0);
    make_segment(&b, 3);
    pgw_spool_encode(&b, PGW_SPOOL_BEGIN, 42, "", 0, "{}", 2);
    CHECK(!b.failed);
    seen_t s = { 0 };
    const char *why;
    size_t valid = pgw_spool_scan((const uint8_t *)b.data, b.len, collect, &s, &why);
    CHECK(why == NULL);
    CHECK_EQ(valid, b.len);
    CHECK_EQ(s.n, 4);
    CHECK(strcmp(s.values[0], "{\"n\":0}") == 0);
    CHECK(strcmp(s.values[2], "{\"n\":2}") == 0);
    CHECK_EQ(s.types[3], PGW_SPOOL_BEGIN);
    CHECK_EQ(s.tokens[3], 42);
    pgw_jbuf_free(&b);
}

/* A crash can cut the file anywhere: every cut keeps exactly the records
 * that are whole, and says why it stopped. */
static void test_torn_at_every_byte(void)
{
    pgw_jbuf_t b;
    pgw_jbuf_init(&b, 0);
    make_segment(&b, 3);
    size_t ends[4];
    {
        pgw_jbuf_t one;
        pgw_jbuf_init(&one, 0);
        for (int k = 0; k <= 3; k++) {
            make_segment(&one, k);
            ends[k] = one.len;
        }
        pgw_jbuf_free(&one);
    }
    guard_t guard;
    guard_init(&guard, b.len);
    for (size_t cut = 0; cut <= b.len; cut++) {
        uint8_t *g = guard_place(&guard, b.data, cut);
        seen_t s = { 0 };
        const char *why;
        size_t valid = pgw_spool_scan(g, cut, collect, &s, &why);
        int whole = 0;
        while (whole < 3 && ends[whole + 1] <= cut)
            whole++;
        CHECK_EQ(s.n, cut < PGW_SPOOL_MAGIC_LEN ? 0 : whole);
        if (cut >= PGW_SPOOL_MAGIC_LEN)
            CHECK_EQ(valid, ends[whole]);
        CHECK((why == NULL) == (cut == 0 || cut == ends[whole]));
    }
    guard_free(&guard);
    pgw_jbuf_free(&b);
}

/* A flipped bit anywhere in a record stops the scan at that record. */
static void test_bad_checksum(void)
{
    pgw_jbuf_t b;
    pgw_jbuf_init(&b, 0);
    make_segment(&b, 3);
    size_t second = PGW_SPOOL_MAGIC_LEN + (b.len - PGW_SPOOL_MAGIC_LEN) / 3;
    for (size_t at = second; at < b.len; at++) {
        char *copy = malloc(b.len);
        memcpy(copy, b.data, b.len);
        copy[at] ^= 0x10;
        seen_t s = { 0 };
        const char *why;
        size_t valid = pgw_spool_scan((const uint8_t *)copy, b.len, collect, &s, &why);
        CHECK(why != NULL);
        CHECK(s.n <= 2);
        CHECK(valid < b.len);
        free(copy);
    }
    /* Garbage is not a segment at all. */
    seen_t s = { 0 };
    const char *why;
    CHECK_EQ(pgw_spool_scan((const uint8_t *)"garbage!garbage!", 16, collect, &s, &why), 0);
    CHECK(why && strstr(why, "magic"));
    pgw_jbuf_free(&b);
}

static int count_segments(void)
{
    DIR *d = opendir(g_dir);
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL)
        n += strstr(de->d_name, ".seg") != NULL;
    if (d)
        closedir(d);
    return n;
}

static void clear_dir(void)
{
    DIR *d = opendir(g_dir);
    struct dirent *de;
    char p[512];
    while (d && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        snprintf(p, sizeof p, "%s/%s", g_dir, de->d_name);
        unlink(p);
    }
    if (d)
        closedir(d);
}

static void append_events(pgw_spool_writer_t *w, pgw_jbuf_t *b, const char *const *vals, int n,
                          pgw_spool_seg_t **seg)
{
    pgw_jbuf_reset(b);
    for (int i = 0; i < n; i++)
        pgw_spool_encode(b, PGW_SPOOL_EVENT, 0, "k", 1, vals[i], strlen(vals[i]));
    CHECK_EQ(pgw_spool_writer_append(w, b->data, b->len, n, seg), 0);
}

typedef struct replayed {
    seen_t s;
    pgw_spool_seg_t *segs[64];
} replayed_t;

static void on_replay(void *ud, pgw_spool_seg_t *seg, const pgw_spool_rec_t *r)
{
    replayed_t *rp = ud;
    if (rp->s.n < 64)
        rp->segs[rp->s.n] = seg;
    collect(&rp->s, r);
}

static void free_segs(pgw_spool_seg_t *l)
{
    while (l) {
        pgw_spool_seg_t *n = l->next;
        free(l->path);
        free(l);
        l = n;
    }
}

/* A new run's replay of the directory: sp opened on it, rp what was
 * handed over, *old the segments. Returns the replay's count. */
static ssize_t replay_dir(pgw_spool_t *sp, replayed_t *rp, pgw_spool_seg_t **old)
{
    CHECK_EQ(pgw_spool_init(sp, g_dir), 0);
    memset(rp, 0, sizeof *rp);
    *old = NULL;
    return pgw_spool_replay(sp, on_replay, rp, old);
}

/* Acknowledges every event a replay handed over: the spool is empty. */
static void release_replayed(pgw_spool_t *sp, replayed_t *rp, pgw_spool_seg_t *old)
{
    for (int i = 0; i < rp->s.n; i++)
        pgw_spool_seg_release(rp->segs[i], 1);
    CHECK_EQ(count_segments(), 0);
    CHECK_EQ(atomic_load(&sp->bytes), 0);
    free_segs(old);
    pgw_spool_destroy(sp);
}

/* Segments go when everything in them is acknowledged; what is left is
 * replayed in write order, a begin only when no completion followed it. */
static void test_writer_and_replay(void)
{
    clear_dir();
    pgw_spool_t sp;
    CHECK_EQ(pgw_spool_init(&sp, g_dir), 0);
    pgw_spool_writer_t w;
    pgw_spool_writer_init(&w, &sp, 50);    /* tiny segments: a new one per append */
    pgw_jbuf_t b;
    pgw_jbuf_init(&b, 0);
    pgw_spool_seg_t *s1, *s2, *s3;

    const char *first[] = { "{\"a\":1}", "{\"a\":2}" };
    append_events(&w, &b, first, 2, &s1);
    /* Two begins, in their own append, then the completion of the first. */
    pgw_jbuf_reset(&b);
    pgw_spool_encode(&b, PGW_SPOOL_BEGIN, 1, "k", 1, "{\"begin\":1}", 11);
    pgw_spool_encode(&b, PGW_SPOOL_BEGIN, 2, "k", 1, "{\"begin\":2}", 11);
    CHECK_EQ(pgw_spool_writer_append(&w, b.data, b.len, 0, &s2), 0);
    CHECK_EQ(pgw_spool_writer_track(&w, 1, s2), 0);
    CHECK_EQ(pgw_spool_writer_track(&w, 2, s2), 0);
    pgw_jbuf_reset(&b);
    pgw_spool_encode(&b, PGW_SPOOL_EVENT, 1, "k", 1, "{\"done\":1}", 10);
    CHECK_EQ(pgw_spool_writer_append(&w, b.data, b.len, 1, &s3), 0);
    pgw_spool_writer_resolve(&w, 1);
    CHECK(s1 != s2 && s2 != s3);
    CHECK_EQ(count_segments(), 3);

    /* Both events of the first segment acknowledged: it goes. */
    pgw_spool_seg_release(s1, 2);
    CHECK(atomic_load(&s1->deleted));
    CHECK_EQ(count_segments(), 2);
    pgw_spool_writer_sweep(&w);

    /* A "crash": the writer's structs go, the files stay. */
    pgw_spool_writer_close(&w);
    CHECK_EQ(count_segments(), 2);
    pgw_spool_destroy(&sp);

    pgw_spool_t sp2;
    replayed_t rp;
    pgw_spool_seg_t *old;
    CHECK_EQ(replay_dir(&sp2, &rp, &old), 2);
    /* begin 1 is completed ({"done":1}); begin 2 never was. */
    CHECK_EQ(rp.s.n, 2);
    CHECK(strcmp(rp.s.values[0], "{\"begin\":2}") == 0);
    CHECK(strcmp(rp.s.values[1], "{\"done\":1}") == 0);
    CHECK(rp.segs[0] != rp.segs[1]);
    /* Acknowledged now: both segments are deleted. */
    release_replayed(&sp2, &rp, old);
    pgw_jbuf_free(&b);
}

/* For the crash tests, in a child that then dies without closing
 * anything, as pgwarden would: a writer with 50-byte segments (a new one
 * per append) whose first segment, *s1, holds begins 1 and 2; b is left
 * empty. */
static int begins_in_a_segment(pgw_spool_t *sp, pgw_spool_writer_t *w, pgw_jbuf_t *b,
                               pgw_spool_seg_t **s1)
{
    int ok = pgw_spool_init(sp, g_dir) == 0;
    pgw_spool_writer_init(w, sp, 50);
    pgw_jbuf_init(b, 0);
    pgw_spool_encode(b, PGW_SPOOL_BEGIN, 1, "k", 1, "{\"begin\":1}", 11);
    pgw_spool_encode(b, PGW_SPOOL_BEGIN, 2, "k", 1, "{\"begin\":2}", 11);
    ok = ok && pgw_spool_writer_append(w, b->data, b->len, 0, s1) == 0;
    ok = ok && pgw_spool_writer_track(w, 1, *s1) == 0 && pgw_spool_writer_track(w, 2, *s1) == 0;
    pgw_jbuf_reset(b);
    return ok;
}

static void child_exited_ok(pid_t pid)
{
    int status = 0;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* A withdrawn begin (VOID: its statement never ran) releases its segment
 * at once; after a crash, a replay neither writes that begin nor takes the
 * VOID for an event. */
static void test_void_withdraws_a_begin(void)
{
    clear_dir();
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        pgw_spool_t sp;
        pgw_spool_writer_t w;
        pgw_jbuf_t b;
        pgw_spool_seg_t *s1, *s2;
        int ok = begins_in_a_segment(&sp, &w, &b, &s1);
        pgw_spool_encode(&b, PGW_SPOOL_VOID, 1, "k", 1, "", 0);
        ok = ok && pgw_spool_writer_append(&w, b.data, b.len, 0, &s2) == 0 && s1 != s2;
        if (ok)
            pgw_spool_writer_resolve(&w, 1);
        /* s1 still holds begin 2; s2 is being written. */
        ok = ok && !atomic_load(&s1->deleted) && atomic_load(&s1->pending) == 1;
        _exit(ok ? 0 : 1);
    }
    child_exited_ok(pid);
    CHECK_EQ(count_segments(), 2);

    pgw_spool_t sp;
    replayed_t rp;
    pgw_spool_seg_t *old;
    /* Begin 1 withdrawn: only begin 2, never answered, is written again. */
    CHECK_EQ(replay_dir(&sp, &rp, &old), 1);
    CHECK_EQ(rp.s.n, 1);
    CHECK(strcmp(rp.s.values[0], "{\"begin\":2}") == 0);
    CHECK_EQ(rp.s.types[0], PGW_SPOOL_BEGIN);
    CHECK_EQ(count_segments(), 1);             /* the VOID's went after the scan */
    pgw_spool_seg_release(rp.segs[0], 1);
    CHECK_EQ(count_segments(), 0);
    free_segs(old);
    pgw_spool_destroy(&sp);

    /* The scan knows the type, with an empty value. */
    pgw_jbuf_t b;
    pgw_jbuf_init(&b, 0);
    pgw_jbuf_put(&b, PGW_SPOOL_MAGIC, PGW_SPOOL_MAGIC_LEN);
    pgw_spool_encode(&b, PGW_SPOOL_VOID, 7, "k", 1, "", 0);
    seen_t seen = { 0 };
    const char *why;
    CHECK_EQ(pgw_spool_scan((const uint8_t *)b.data, b.len, collect, &seen, &why), b.len);
    CHECK(why == NULL);
    CHECK_EQ(seen.n, 1);
    CHECK_EQ(seen.types[0], PGW_SPOOL_VOID);
    CHECK_EQ(seen.tokens[0], 7);
    CHECK_EQ(seen.values[0][0], '\0');
    pgw_jbuf_free(&b);
}

/* A begin completed in a later segment, which goes (its event delivered)
 * while the begin's stays for another begin still unanswered: the
 * begin's segment records the completion, and a replay after a crash
 * writes only the unanswered one. */
static void test_completion_outlived_by_its_begin(void)
{
    clear_dir();
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        pgw_spool_t sp;
        pgw_spool_writer_t w;
        pgw_jbuf_t b;
        pgw_spool_seg_t *s1, *s2, *s3;
        int ok = begins_in_a_segment(&sp, &w, &b, &s1);
        uint64_t before = ok ? s1->bytes : 0;
        pgw_spool_encode(&b, PGW_SPOOL_EVENT, 1, "k", 1, "{\"done\":1}", 10);
        ok = ok && pgw_spool_writer_append(&w, b.data, b.len, 1, &s2) == 0 && s2 != s1;
        if (ok)
            pgw_spool_writer_resolve(&w, 1);
        int marked = ok && s1->bytes == before + PGW_SPOOL_REC_HEAD + PGW_SPOOL_PAYLOAD_HEAD;
        pgw_jbuf_reset(&b);
        pgw_spool_encode(&b, PGW_SPOOL_EVENT, 0, "k", 1, "{\"a\":1}", 7);
        ok = ok && pgw_spool_writer_append(&w, b.data, b.len, 1, &s3) == 0 && s3 != s2;
        if (ok)
            pgw_spool_seg_release(s2, 1);           /* {"done":1} delivered */
        ok = ok && atomic_load(&s2->deleted) && !atomic_load(&s1->deleted);
        _exit(ok ? (marked ? 0 : 2) : 1);
    }
    child_exited_ok(pid);
    CHECK_EQ(count_segments(), 2);

    pgw_spool_t sp;
    replayed_t rp;
    pgw_spool_seg_t *old;
    CHECK_EQ(replay_dir(&sp, &rp, &old), 2);
    CHECK_EQ(rp.s.n, 2);
    CHECK(strcmp(rp.s.values[0], "{\"begin\":2}") == 0);
    CHECK(strcmp(rp.s.values[1], "{\"a\":1}") == 0);
    release_replayed(&sp, &rp, old);
}

/* A torn last record in a left-over segment: skipped (and logged), the
 * records before it replayed. */
static void test_replay_torn_tail(void)
{
    clear_dir();
    pgw_spool_t sp;
    CHECK_EQ(pgw_spool_init(&sp, g_dir), 0);
    pgw_spool_writer_t w;
    pgw_spool_writer_init(&w, &sp, 1 << 20);
    pgw_jbuf_t b;
    pgw_jbuf_init(&b, 0);
    pgw_spool_seg_t *seg;
    const char *vals[] = { "{\"a\":1}", "{\"a\":2}", "{\"a\":3}" };
    append_events(&w, &b, vals, 3, &seg);
    char path[512];
    snprintf(path, sizeof path, "%s", seg->path);
    pgw_spool_writer_close(&w);
    pgw_spool_destroy(&sp);
    struct stat st;
    CHECK_EQ(stat(path, &st), 0);
    CHECK_EQ(truncate(path, st.st_size - 3), 0);

    replayed_t rp;
    pgw_spool_seg_t *old;
    CHECK_EQ(replay_dir(&sp, &rp, &old), 2);
    CHECK(strcmp(rp.s.values[0], "{\"a\":1}") == 0);
    CHECK(strcmp(rp.s.values[1], "{\"a\":2}") == 0);
    pgw_spool_seg_release(rp.segs[0], 1);
    CHECK_EQ(count_segments(), 1);
    pgw_spool_seg_release(rp.segs[1], 1);
    CHECK_EQ(count_segments(), 0);
    free_segs(old);
    pgw_spool_destroy(&sp);
    pgw_jbuf_free(&b);
}

static uint8_t *slurp(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    CHECK(fd >= 0 && fstat(fd, &st) == 0);
    uint8_t *p = malloc((size_t)st.st_size + 1);
    CHECK(p && read(fd, p, (size_t)st.st_size) == st.st_size);
    close(fd);
    *len = (size_t)st.st_size;
    return p;
}

/* The segment being filled is preallocated and mapped: what a crash leaves
 * is its records followed by zeros, which end the scan cleanly, while a
 * stray byte in that zero tail is still reported. Sealing cuts the file to
 * its records. */
static void test_mapped_segment(void)
{
    clear_dir();
    pgw_spool_t sp;
    CHECK_EQ(pgw_spool_init(&sp, g_dir), 0);
    pgw_spool_writer_t w;
    pgw_spool_writer_init(&w, &sp, 1 << 20);
    pgw_jbuf_t b;
    pgw_jbuf_init(&b, 0);
    pgw_spool_seg_t *seg, *seg2;
    const char *vals[] = { "{\"a\":1}", "{\"a\":2}", "{\"a\":3}" };
    append_events(&w, &b, vals, 2, &seg);
    append_events(&w, &b, vals + 2, 1, &seg2);
    CHECK(seg == seg2);
    CHECK(w.map != NULL);           /* this file system preallocates */
    uint64_t records = seg->bytes;

    /* As a crash leaves it: read while the writer still has it mapped. */
    size_t len;
    uint8_t *data = slurp(seg->path, &len);
    CHECK_EQ(len, 1u << 20);
    seen_t s = { 0 };
    const char *why;
    CHECK_EQ(pgw_spool_scan(data, len, collect, &s, &why), records);
    CHECK(why == NULL);
    CHECK_EQ(s.n, 3);
    CHECK(strcmp(s.values[2], "{\"a\":3}") == 0);
    data[records + 100] = 1;
    memset(&s, 0, sizeof s);
    CHECK_EQ(pgw_spool_scan(data, len, collect, &s, &why), records);
    CHECK(why != NULL);
    CHECK_EQ(s.n, 3);
    free(data);

    /* A record larger than the segment size gets a segment of its own size. */
    char big[3000];
    memset(big, 'x', sizeof big);
    big[0] = '"';
    big[sizeof big - 1] = '"';
    pgw_spool_writer_t w2;
    pgw_spool_writer_init(&w2, &sp, 1024);
    pgw_jbuf_reset(&b);
    pgw_spool_encode(&b, PGW_SPOOL_EVENT, 0, "k", 1, big, sizeof big);
    pgw_spool_seg_t *bseg;
    CHECK_EQ(pgw_spool_writer_append(&w2, b.data, b.len, 1, &bseg), 0);
    CHECK(w2.map_len >= PGW_SPOOL_MAGIC_LEN + b.len);
    data = slurp(bseg->path, &len);
    memset(&s, 0, sizeof s);
    CHECK_EQ(pgw_spool_scan(data, len, collect, &s, &why), PGW_SPOOL_MAGIC_LEN + b.len);
    CHECK(why == NULL && s.n == 1);
    free(data);

    /* A replay meanwhile (as after a crash) sends all four events and
     * counts the segments' records, not their zero tails. */
    pgw_spool_t sp2;
    replayed_t rp;
    pgw_spool_seg_t *old;
    CHECK_EQ(replay_dir(&sp2, &rp, &old), 4);
    CHECK_EQ(atomic_load(&sp2.bytes), records + PGW_SPOOL_MAGIC_LEN + b.len);
    CHECK_EQ(rp.s.n, 4);
    CHECK(strcmp(rp.s.values[2], "{\"a\":3}") == 0);

    /* Sealed later, the file keeps the time of its last append (a replay
     * dates its events by it). */
    struct timespec appended, pause = { 0, 30 * 1000000 };
    clock_gettime(CLOCK_REALTIME, &appended);
    nanosleep(&pause, NULL);
    char path[512];
    snprintf(path, sizeof path, "%s", seg->path);
    pgw_spool_writer_seal(&w);
    struct stat st;
    CHECK_EQ(stat(path, &st), 0);
    CHECK_EQ((uint64_t)st.st_size, records);
    CHECK(st.st_mtim.tv_sec < appended.tv_sec ||
          (st.st_mtim.tv_sec == appended.tv_sec && st.st_mtim.tv_nsec <= appended.tv_nsec));
    for (int i = 0; i < rp.s.n; i++)
        pgw_spool_seg_release(rp.segs[i], 1);
    CHECK_EQ(atomic_load(&sp2.bytes), 0);
    free_segs(old);
    pgw_spool_destroy(&sp2);
    pgw_spool_seg_release(seg, 3);
    pgw_spool_seg_release(bseg, 1);
    pgw_spool_writer_close(&w);
    pgw_spool_writer_close(&w2);
    CHECK_EQ(count_segments(), 0);
    CHECK_EQ(atomic_load(&sp.bytes), 0);
    pgw_spool_destroy(&sp);
    pgw_jbuf_free(&b);
}

/* Completions out of order still release the right segments. */
static void test_resolve_out_of_order(void)
{
    clear_dir();
    pgw_spool_t sp;
    CHECK_EQ(pgw_spool_init(&sp, g_dir), 0);
    pgw_spool_writer_t w;
    pgw_spool_writer_init(&w, &sp, 100);
    pgw_jbuf_t b;
    pgw_jbuf_init(&b, 0);
    pgw_spool_seg_t *segs[600];
    for (uint64_t t = 1; t <= 600; t++) {
        pgw_jbuf_reset(&b);
        pgw_spool_encode(&b, PGW_SPOOL_BEGIN, t, "k", 1, "{}", 2);
        CHECK_EQ(pgw_spool_writer_append(&w, b.data, b.len, 0, &segs[t - 1]), 0);
        CHECK_EQ(pgw_spool_writer_track(&w, t, segs[t - 1]), 0);
    }
    pgw_spool_writer_seal(&w);
    for (uint64_t t = 600; t >= 1; t -= 2)
        pgw_spool_writer_resolve(&w, t);
    for (uint64_t t = 1; t <= 600; t += 2)
        pgw_spool_writer_resolve(&w, t);
    CHECK_EQ(count_segments(), 0);
    CHECK_EQ(atomic_load(&sp.bytes), 0);
    pgw_spool_writer_close(&w);
    pgw_spool_destroy(&sp);
    pgw_jbuf_free(&b);
}

/* A segment written by an earlier version (magic PGWSPL1, zlib CRC-32 per
 * record) is still replayed after an upgrade; a v1 segment whose records
 * carry the new checksum is corrupt. */
static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void test_v1_segment(void)
{
    pgw_jbuf_t b;
    pgw_jbuf_init(&b, 0);
    make_segment(&b, 3);
    memcpy(b.data, PGW_SPOOL_MAGIC_V1, PGW_SPOOL_MAGIC_LEN);
    seen_t s = { 0 };
    const char *why;
    CHECK(pgw_spool_scan((const uint8_t *)b.data, b.len, collect, &s, &why) == PGW_SPOOL_MAGIC_LEN);
    CHECK(why && strstr(why, "checksum"));
    CHECK_EQ(s.n, 0);
    for (size_t off = PGW_SPOOL_MAGIC_LEN; off < b.len;) {
        uint8_t *h = (uint8_t *)b.data + off;
        uint32_t plen = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 |
                        (uint32_t)h[3] << 24;
        put_le32(h + 4, (uint32_t)crc32(crc32(0L, Z_NULL, 0), h + PGW_SPOOL_REC_HEAD, plen));
        off += PGW_SPOOL_REC_HEAD + plen;
    }
    memset(&s, 0, sizeof s);
    CHECK_EQ(pgw_spool_scan((const uint8_t *)b.data, b.len, collect, &s, &why), b.len);
    CHECK(why == NULL);
    CHECK_EQ(s.n, 3);
    CHECK(strcmp(s.values[2], "{\"n\":2}") == 0);
    pgw_jbuf_free(&b);
}

/* v2 (before VOID records) and v3 (before DELTA records) segments are
 * replayed as they are; a magic of a later version is not read at all. */
static void test_v2_segment_and_unknown_magic(void)
{
    pgw_jbuf_t b;
    pgw_jbuf_init(&b, 0);
    make_segment(&b, 3);
    CHECK(memcmp(b.data, "PGWSPL4\n", PGW_SPOOL_MAGIC_LEN) == 0);
    seen_t s = { 0 };
    const char *why;
    const char *const older[] = { PGW_SPOOL_MAGIC_V2, PGW_SPOOL_MAGIC_V3 };
    for (int i = 0; i < 2; i++) {
        memcpy(b.data, older[i], PGW_SPOOL_MAGIC_LEN);
        memset(&s, 0, sizeof s);
        CHECK_EQ(pgw_spool_scan((const uint8_t *)b.data, b.len, collect, &s, &why), b.len);
        CHECK(why == NULL);
        CHECK_EQ(s.n, 3);
    }
    memcpy(b.data, "PGWSPL5\n", PGW_SPOOL_MAGIC_LEN);
    memset(&s, 0, sizeof s);
    CHECK_EQ(pgw_spool_scan((const uint8_t *)b.data, b.len, collect, &s, &why), 0);
    CHECK(why && strstr(why, "bad magic"));
    CHECK_EQ(s.n, 0);
    pgw_jbuf_free(&b);
}

/* Appends BEGIN token with value v and tracks it where it landed, as the
 * spooler does. */
static void append_begin(pgw_spool_writer_t *w, pgw_jbuf_t *b, uint64_t token, const char *v,
                         pgw_spool_seg_t **seg)
{
    pgw_jbuf_reset(b);
    pgw_spool_encode(b, PGW_SPOOL_BEGIN, token, "k", 1, v, strlen(v));
    CHECK_EQ(pgw_spool_writer_append(w, b->data, b->len, 0, seg), 0);
    CHECK_EQ(pgw_spool_writer_track_at(w, token, *seg,
                                       w->last_at + PGW_SPOOL_REC_HEAD + PGW_SPOOL_PAYLOAD_HEAD + 1,
                                       strlen(v)),
             0);
}

/* The type of the one record in b (made by an encoder, without magic). */
static int record_type(const pgw_jbuf_t *b)
{
    CHECK_EQ(pgw_spool_record_size(b->data), b->len);
    return (uint8_t)b->data[PGW_SPOOL_REC_HEAD];
}

#define HEAD "{\"v\":1,\"event_id\":\"0190\",\"kind\":\"statement\",\"session\":{\"id\":\"x\"}," \
             "\"statement\":{\"text\":\"select 1\"},"

/* A completion whose begin is in the current segment is written as a
 * DELTA: the begin's shared bytes are not written again, and a replay after
 * a crash rebuilds exactly the event. Where the begin is elsewhere, or
 * shares too little, it is a whole EVENT. */
static void test_delta_completion(void)
{
    clear_dir();
    const char *begin1 = HEAD "\"result\":{\"status\":\"unknown\"}}";
    const char *done1 = HEAD "\"result\":{\"status\":\"ok\",\"rows\":1}}";
    const char *begin2 = HEAD "\"result\":{\"status\":\"unknown\"}}";
    const char *done3 = "{\"v\":1,\"other\":true}";
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        pgw_spool_t sp;
        pgw_spool_writer_t w;
        pgw_jbuf_t b;
        pgw_spool_seg_t *s1, *s2, *s3;
        int ok = pgw_spool_init(&sp, g_dir) == 0;
        pgw_spool_writer_init(&w, &sp, 1 << 20);
        pgw_jbuf_init(&b, 0);
        append_begin(&w, &b, 1, begin1, &s1);
        append_begin(&w, &b, 2, begin2, &s2);
        append_begin(&w, &b, 3, begin2, &s3);
        ok = ok && s1 == s2 && s2 == s3;
        /* Completion of 1: a DELTA, holding only what follows the head. */
        pgw_jbuf_reset(&b);
        pgw_spool_writer_reserve(&w, 4096);
        pgw_spool_encode_completion(&w, &b, 1, "k", 1, done1, strlen(done1));
        ok = ok && record_type(&b) == PGW_SPOOL_DELTA &&
             b.len < PGW_SPOOL_REC_HEAD + PGW_SPOOL_PAYLOAD_HEAD + 1 + 40;
        pgw_spool_seg_t *s4;
        ok = ok && pgw_spool_writer_append(&w, b.data, b.len, 1, &s4) == 0 && s4 == s1;
        pgw_spool_writer_resolve(&w, 1);
        /* Completion of 3 shares too little with its begin: an EVENT. */
        pgw_jbuf_reset(&b);
        pgw_spool_encode_completion(&w, &b, 3, "k", 1, done3, strlen(done3));
        ok = ok && record_type(&b) == PGW_SPOOL_EVENT;
        ok = ok && pgw_spool_writer_append(&w, b.data, b.len, 1, &s4) == 0;
        pgw_spool_writer_resolve(&w, 3);
        /* Begin 2's segment sealed: its completion cannot refer to it. */
        pgw_spool_writer_seal(&w);
        pgw_jbuf_reset(&b);
        pgw_spool_encode_completion(&w, &b, 2, "k", 1, done1, strlen(done1));
        ok = ok && record_type(&b) == PGW_SPOOL_EVENT;
        /* Nor can one whose begin was never tracked. */
        pgw_jbuf_reset(&b);
        pgw_spool_encode_completion(&w, &b, 9, "k", 1, done1, strlen(done1));
        ok = ok && record_type(&b) == PGW_SPOOL_EVENT;
        _exit(ok ? 0 : 1);
    }
    child_exited_ok(pid);
    CHECK_EQ(count_segments(), 1);

    pgw_spool_t sp;
    replayed_t rp;
    pgw_spool_seg_t *old;
    /* Begin 2 unanswered; 1 and 3 completed, 1 rebuilt from its DELTA. */
    CHECK_EQ(replay_dir(&sp, &rp, &old), 3);
    CHECK_EQ(rp.s.n, 3);
    CHECK(strcmp(rp.s.values[0], begin2) == 0);
    CHECK_EQ(rp.s.types[0], PGW_SPOOL_BEGIN);
    CHECK_EQ(rp.s.tokens[0], 2);
    CHECK(strcmp(rp.s.values[1], done1) == 0);
    CHECK_EQ(rp.s.types[1], PGW_SPOOL_EVENT);
    CHECK_EQ(rp.s.tokens[1], 1);
    CHECK(strcmp(rp.s.values[2], done3) == 0);
    release_replayed(&sp, &rp, old);
}

/* A DELTA whose begin is not in its segment (only damage does that) is
 * reported and skipped; the scan refuses a DELTA without token or head. */
static void test_delta_without_its_begin(void)
{
    clear_dir();
    pgw_jbuf_t b;
    pgw_jbuf_init(&b, 0);
    pgw_jbuf_put(&b, PGW_SPOOL_MAGIC, PGW_SPOOL_MAGIC_LEN);
    pgw_spool_encode(&b, PGW_SPOOL_BEGIN, 4, "k", 1, "{\"begin\":4}", 11);
    pgw_spool_encode(&b, PGW_SPOOL_DELTA, 5, "k", 1, "\x03\0\0\0rest", 8);
    pgw_spool_encode(&b, PGW_SPOOL_DELTA, 4, "k", 1, "\x40\0\0\0too long a prefix", 21);
    pgw_spool_encode(&b, PGW_SPOOL_DELTA, 4, "k", 1, "\x03\0\0\0done\":4}", 12);
    char path[512];
    snprintf(path, sizeof path, "%s/0000000000000001-0000-00000001.seg", g_dir);
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(b.data, 1, b.len, f) == b.len);
    if (f)
        fclose(f);
    pgw_spool_t sp;
    replayed_t rp;
    pgw_spool_seg_t *old;
    CHECK_EQ(replay_dir(&sp, &rp, &old), 1);
    CHECK_EQ(rp.s.n, 1);
    CHECK(strcmp(rp.s.values[0], "{\"bdone\":4}") == 0);
    release_replayed(&sp, &rp, old);

    seen_t s = { 0 };
    const char *why;
    pgw_jbuf_reset(&b);
    pgw_jbuf_put(&b, PGW_SPOOL_MAGIC, PGW_SPOOL_MAGIC_LEN);
    pgw_spool_encode(&b, PGW_SPOOL_DELTA, 0, "k", 1, "\0\0\0\0x", 5);
    CHECK_EQ(pgw_spool_scan((const uint8_t *)b.data, b.len, collect, &s, &why), PGW_SPOOL_MAGIC_LEN);
    CHECK(why && strstr(why, "delta"));
    pgw_jbuf_reset(&b);
    pgw_jbuf_put(&b, PGW_SPOOL_MAGIC, PGW_SPOOL_MAGIC_LEN);
    pgw_spool_encode(&b, PGW_SPOOL_DELTA, 1, "k", 1, "\0\0", 2);
    CHECK_EQ(pgw_spool_scan((const uint8_t *)b.data, b.len, collect, &s, &why), PGW_SPOOL_MAGIC_LEN);
    CHECK(why && strstr(why, "delta"));
    pgw_jbuf_free(&b);
}

int main(void)
{
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_roundtrip();
    test_torn_at_every_byte();
    test_bad_checksum();
    test_v1_segment();
    test_v2_segment_and_unknown_magic();
    test_writer_and_replay();
    test_void_withdraws_a_begin();
    test_completion_outlived_by_its_begin();
    test_replay_torn_tail();
    test_mapped_segment();
    test_resolve_out_of_order();
    test_delta_completion();
    test_delta_without_its_begin();
    clear_dir();
    rmdir(g_dir);
    CHECK_DONE();
}
