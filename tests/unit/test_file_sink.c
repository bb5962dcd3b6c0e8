/* File sink tests, on real files in a temp dir:
 *   - several producer threads, a tiny queue cap (so hand-offs wait): every
 *     event is in the file exactly once, each thread's in its order, every
 *     line is valid JSON, the counters add up;
 *   - rotation: the files together hold every event once and in order, no
 *     file passes max_bytes, `keep` bounds the number of files;
 *   - stdout mode ("-");
 *   - reopen after an external rename; a line cut by a crash is closed;
 *   - write errors: a file size limit (EFBIG) makes writes fail midway;
 *     producers wait, nothing is lost, and when the limit goes away every
 *     event is written once, whole;
 *   - /dev/full: errors counted, and at close the loss is counted, not silent;
 *   - producer timing: due_ms, tick, flush;
 *   - fsync policy; open errors.
 * The file sink with a spool has its tests in test_file_spool.c. */
#include "check.h"
#include "file_sink_support.h"
#include "json_validate.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include "pgwarden/event.h"
#include "pgwarden/sink.h"

/* ------------------------------------------------------------ reading back */

typedef struct seen {
    unsigned nthreads;
    uint64_t per_thread;
    uint64_t *last;        /* last seq per thread, for order */
    uint8_t *count;        /* [t * per_thread + seq - 1] */
    uint64_t lines, bad, out_of_order;
} seen_t;

static void seen_init(seen_t *s, unsigned nthreads, uint64_t per_thread)
{
    s->nthreads = nthreads;
    s->per_thread = per_thread;
    s->last = calloc(nthreads, sizeof(*s->last));
    s->count = calloc(nthreads * per_thread, 1);
    s->lines = s->bad = s->out_of_order = 0;
}

static void seen_free(seen_t *s)
{
    free(s->last);
    free(s->count);
}

/* Checks one line and records its (thread, seq). */
static void seen_line(seen_t *s, const char *line, size_t len)
{
    unsigned t;
    unsigned long long seq;
    const char *p;

    s->lines++;
    const char *err = jv_check_line(line, len);
    if (err) {
        if (s->bad++ < 3)
            fprintf(stderr, "    bad line (%s): %.*s", err, (int)len, line);
        return;
    }
    p = strstr(line, "\"session\":{\"id\":\"t");
    if (!p || sscanf(p, "\"session\":{\"id\":\"t%u\",\"seq\":%llu", &t, &seq) != 2 ||
        t >= s->nthreads || seq < 1 || seq > s->per_thread) {
        s->bad++;
        return;
    }
    s->count[t * s->per_thread + seq - 1]++;
    if (seq <= s->last[t])
        s->out_of_order++;
    s->last[t] = seq;
}

static size_t seen_file(seen_t *s, const char *path)
{
    FILE *f = fopen(path, "r");
    char *line = NULL;
    size_t cap = 0, bytes = 0;
    ssize_t n;

    if (!f)
        return 0;
    while ((n = getline(&line, &cap, f)) > 0) {
        seen_line(s, line, (size_t)n);
        bytes += (size_t)n;
    }
    free(line);
    fclose(f);
    return bytes;
}

/* Every event exactly once, in each thread's order, every line valid. */
static void seen_verify(seen_t *s)
{
    uint64_t missing = 0, dup = 0;
    for (uint64_t i = 0; i < s->nthreads * s->per_thread; i++) {
        missing += s->count[i] == 0;
        dup += s->count[i] > 1;
    }
    CHECK_EQ(s->lines, s->nthreads * s->per_thread);
    CHECK_EQ(missing, 0);
    CHECK_EQ(dup, 0);
    CHECK_EQ(s->bad, 0);
    CHECK_EQ(s->out_of_order, 0);
}

/* ------------------------------------------------------------ producers */

/* Producer threads do not CHECK (the counters of check.h belong to the
 * main thread): they report, and the main thread checks after joining. */
typedef struct prod_arg {
    pgw_sink_t *sink;
    unsigned t;
    uint64_t n;
    atomic_int errors;
    uint64_t emitted, refused;
} prod_arg_t;

static void *producer(void *argp)
{
    prod_arg_t *a = argp;
    pgw_sink_producer_t p;
    pgw_uuid7_t g;
    pgw_event_t ev;
    char sid[16];

    if (pgw_uuid7_init(&g) != 0)
        abort();
    pgw_sink_producer_init(&p, a->sink);
    for (uint64_t i = 1; i <= a->n; i++) {
        make_event(&ev, sid, a->t, i, &g);
        if (pgw_sink_emit(&p, &ev) != 0)
            atomic_fetch_add(&a->errors, 1);
        if (i % 64 == 0)
            pgw_sink_producer_tick(&p);   /* as a loop does after each iteration */
    }
    a->emitted = atomic_load(&p.events);
    a->refused = atomic_load(&p.refused);
    pgw_sink_producer_close(&p);
    return NULL;
}

static void run_producers(pgw_sink_t *sink, unsigned nthreads, uint64_t n)
{
    pthread_t th[16];
    prod_arg_t args[16];

    for (unsigned t = 0; t < nthreads; t++) {
        args[t] = (prod_arg_t){ .sink = sink, .t = t, .n = n };
        atomic_init(&args[t].errors, 0);
        CHECK_EQ(pthread_create(&th[t], NULL, producer, &args[t]), 0);
    }
    for (unsigned t = 0; t < nthreads; t++) {
        pthread_join(th[t], NULL);
        CHECK_EQ(atomic_load(&args[t].errors), 0);
        CHECK_EQ(args[t].emitted, n);
        CHECK_EQ(args[t].refused, 0);
    }
}

static off_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : -1;
}

/* ------------------------------------------------------------ tests */

static void test_threads(void)
{
    enum { T = 4, N = 20000 };
    char path[256];
    pgw_sink_t *sink;
    pgw_sink_health_t h;
    seen_t s;

    path_in(path, sizeof(path), "threads.jsonl");
    pgw_file_sink_config_t cfg = {
        .path = path,
        .max_queued_bytes = 8 * 1024,        /* tiny: hand-offs must wait */
        .limits = { .batch_bytes = 4096, .max_delay_us = 500 },
    };
    CHECK_EQ(pgw_file_sink_open(&cfg, &sink), 0);
    run_producers(sink, T, N);
    CHECK_EQ(pgw_sink_flush(sink, 10000), 0);
    pgw_sink_health(sink, &h);
    CHECK_EQ(h.events, (uint64_t)T * N);
    CHECK_EQ(h.write_errors, 0);
    CHECK_EQ(h.events_lost, 0);
    CHECK_EQ(h.queued_events, 0);
    CHECK(h.ok);
    CHECK(h.batches > 0);
    fprintf(stderr, "    %u threads x %u events: %llu batches, %llu producer waits (%llu us)\n",
            T, N, (unsigned long long)h.batches, (unsigned long long)h.producer_waits,
            (unsigned long long)h.producer_wait_us);
    pgw_sink_close(sink);

    seen_init(&s, T, N);
    size_t bytes = seen_file(&s, path);
    seen_verify(&s);
    CHECK_EQ(bytes, h.bytes);
    CHECK_EQ((off_t)bytes, file_size(path));
    seen_free(&s);
    unlink(path);
}

static void test_rotation(void)
{
    enum { T = 3, N = 5000, KEEP = 1000 };
    char path[256], name[300];
    pgw_sink_t *sink;
    pgw_sink_health_t h;
    seen_t s;

    path_in(path, sizeof(path), "rot.jsonl");
    pgw_file_sink_config_t cfg = {
        .path = path, .max_bytes = 64 * 1024, .keep = KEEP,
        .limits = { .batch_bytes = 16 * 1024 },
    };
    CHECK_EQ(pgw_file_sink_open(&cfg, &sink), 0);
    run_producers(sink, T, N);
    CHECK_EQ(pgw_sink_flush(sink, 10000), 0);
    pgw_sink_health(sink, &h);
    pgw_sink_close(sink);
    CHECK(h.rotations >= 10);

    /* Oldest first: path.K ... path.1, path. */
    seen_init(&s, T, N);
    size_t total = 0;
    unsigned files = 0;
    for (unsigned i = KEEP; i >= 1; i--) {
        snprintf(name, sizeof(name), "%s.%u", path, i);
        off_t sz = file_size(name);
        if (sz < 0)
            continue;
        files++;
        CHECK(sz <= 64 * 1024);
        CHECK(sz > 32 * 1024);            /* rotated near the limit, not early */
        total += seen_file(&s, name);
        unlink(name);
    }
    CHECK(file_size(path) <= 64 * 1024);
    total += seen_file(&s, path);
    unlink(path);
    CHECK_EQ(files, h.rotations);
    CHECK_EQ(total, h.bytes);
    seen_verify(&s);
    seen_free(&s);

    /* keep = 2: never more than path, path.1, path.2. */
    cfg.keep = 2;
    CHECK_EQ(pgw_file_sink_open(&cfg, &sink), 0);
    run_producers(sink, 1, 5000);
    CHECK_EQ(pgw_sink_flush(sink, 10000), 0);
    pgw_sink_health(sink, &h);
    pgw_sink_close(sink);
    CHECK(h.rotations >= 5);
    snprintf(name, sizeof(name), "%s.1", path);
    CHECK(file_size(name) > 0);
    unlink(name);
    snprintf(name, sizeof(name), "%s.2", path);
    CHECK(file_size(name) > 0);
    unlink(name);
    snprintf(name, sizeof(name), "%s.3", path);
    CHECK(file_size(name) < 0);
    unlink(path);
}

/* One event bigger than max_bytes gets a file of its own; nothing is cut. */
static void test_rotation_big_event(void)
{
    char path[256], name[300];
    static char text[40000];
    pgw_sink_t *sink;
    pgw_sink_producer_t p;
    pgw_event_t ev;
    char sid[16];

    path_in(path, sizeof(path), "big.jsonl");
    pgw_file_sink_config_t cfg = { .path = path, .max_bytes = 10000, .keep = 10 };
    CHECK_EQ(pgw_file_sink_open(&cfg, &sink), 0);
    pgw_sink_producer_init(&p, sink);
    memset(text, 'q', sizeof(text));
    for (unsigned i = 1; i <= 3; i++) {
        make_event(&ev, sid, 0, i, NULL);
        if (i == 2)
            ev.statement.text = pgw_str(text, sizeof(text));
        CHECK_EQ(pgw_sink_emit(&p, &ev), 0);
    }
    pgw_sink_producer_close(&p);
    pgw_sink_close(sink);

    seen_t s;
    seen_init(&s, 1, 3);
    for (unsigned i = 10; i >= 1; i--) {
        snprintf(name, sizeof(name), "%s.%u", path, i);
        seen_file(&s, name);
        unlink(name);
    }
    seen_file(&s, path);
    seen_verify(&s);
    seen_free(&s);
    unlink(path);
}

static void test_stdout(void)
{
    char path[256];
    pgw_sink_t *sink;
    seen_t s;
    int saved, fd;

    path_in(path, sizeof(path), "stdout.jsonl");
    fflush(stdout);
    saved = dup(STDOUT_FILENO);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(saved >= 0 && fd >= 0);
    dup2(fd, STDOUT_FILENO);
    close(fd);

    pgw_file_sink_config_t cfg = { .path = "-", .max_bytes = 1000 /* ignored */ };
    CHECK_EQ(pgw_file_sink_open(&cfg, &sink), 0);
    run_producers(sink, 2, 3000);
    CHECK_EQ(pgw_sink_reopen(sink), 0);     /* a no-op for stdout */
    CHECK_EQ(pgw_sink_flush(sink, 10000), 0);
    pgw_sink_health_t h;
    pgw_sink_health(sink, &h);
    CHECK_EQ(h.rotations, 0);
    pgw_sink_close(sink);

    dup2(saved, STDOUT_FILENO);
    close(saved);
    seen_init(&s, 2, 3000);
    seen_file(&s, path);
    seen_verify(&s);
    seen_free(&s);
    unlink(path);
}

static void test_reopen_and_cut_line(void)
{
    char path[256], moved[300];
    pgw_sink_t *sink;
    pgw_sink_producer_t p;
    pgw_event_t ev;
    char sid[16];
    FILE *f;

    path_in(path, sizeof(path), "reopen.jsonl");
    snprintf(moved, sizeof(moved), "%s.moved", path);
    f = fopen(path, "w");
    fputs("{\"cut by a cra", f);              /* no newline: a crash mid-line */
    fclose(f);

    pgw_file_sink_config_t cfg = { .path = path };
    CHECK_EQ(pgw_file_sink_open(&cfg, &sink), 0);
    pgw_sink_producer_init(&p, sink);
    for (unsigned i = 1; i <= 10; i++) {
        make_event(&ev, sid, 0, i, NULL);
        CHECK_EQ(pgw_sink_emit(&p, &ev), 0);
    }
    pgw_sink_producer_flush(&p);
    CHECK_EQ(pgw_sink_flush(sink, 10000), 0);

    CHECK_EQ(rename(path, moved), 0);        /* logrotate, then SIGHUP */
    CHECK_EQ(pgw_sink_reopen(sink), 0);
    for (unsigned i = 11; i <= 20; i++) {
        make_event(&ev, sid, 0, i, NULL);
        CHECK_EQ(pgw_sink_emit(&p, &ev), 0);
    }
    pgw_sink_producer_close(&p);
    CHECK_EQ(pgw_sink_flush(sink, 10000), 0);
    pgw_sink_health_t h;
    pgw_sink_health(sink, &h);
    CHECK_EQ(h.reopens, 1);
    pgw_sink_close(sink);

    /* The old file: the cut line, closed, then events 1..10. */
    char *line = NULL;
    size_t cap = 0;
    f = fopen(moved, "r");
    CHECK(f != NULL);
    CHECK(getline(&line, &cap, f) > 0);
    CHECK_STR(line, "{\"cut by a cra\n");
    seen_t s;
    seen_init(&s, 1, 20);
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0)
        seen_line(&s, line, (size_t)n);
    fclose(f);
    free(line);
    CHECK_EQ(s.lines, 10);
    seen_file(&s, path);                     /* the new file: 11..20 */
    seen_verify(&s);
    seen_free(&s);
    unlink(path);
    unlink(moved);
}

/* Writes fail midway (file size limit) until the limit is lifted: the
 * producer waits on the full queue, nothing is lost or cut. */
typedef struct fsz_arg {
    prod_arg_t pa;
    atomic_bool done;
} fsz_arg_t;

static void *fsz_producer(void *argp)
{
    fsz_arg_t *a = argp;
    producer(&a->pa);
    atomic_store(&a->done, true);
    return NULL;
}

static void test_write_errors(void)
{
    char path[256];
    pgw_sink_t *sink;
    pgw_sink_health_t h;
    struct rlimit old, lim;
    pthread_t th;
    fsz_arg_t arg;

    signal(SIGXFSZ, SIG_IGN);                /* EFBIG instead of a signal */
    path_in(path, sizeof(path), "efbig.jsonl");
    pgw_file_sink_config_t cfg = {
        .path = path,
        .max_queued_bytes = 16 * 1024,
        .limits = { .batch_bytes = 2048 },
    };
    CHECK_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 50000;                    /* not on an event boundary */
    CHECK_EQ(setrlimit(RLIMIT_FSIZE, &lim), 0);

    CHECK_EQ(pgw_file_sink_open(&cfg, &sink), 0);
    arg.pa = (prod_arg_t){ .sink = sink, .t = 0, .n = 3000 };
    atomic_init(&arg.pa.errors, 0);
    atomic_init(&arg.done, false);
    CHECK_EQ(pthread_create(&th, NULL, fsz_producer, &arg), 0);

    /* Wait until writes fail and the producer is held back. */
    for (int i = 0; i < 1000; i++) {
        pgw_sink_health(sink, &h);
        if (h.write_errors > 0 && h.producer_waits > 0)
            break;
        sleep_ms(10);
    }
    CHECK(h.write_errors > 0);
    CHECK(h.producer_waits > 0);
    CHECK(!h.ok);
    CHECK_EQ(h.last_errno, EFBIG);
    CHECK(!atomic_load(&arg.done));
    CHECK_EQ(pgw_sink_flush(sink, 100), -ETIMEDOUT);

    CHECK_EQ(setrlimit(RLIMIT_FSIZE, &old), 0);   /* space again */
    pthread_join(th, NULL);
    CHECK_EQ(atomic_load(&arg.pa.errors), 0);
    CHECK_EQ(arg.pa.emitted, 3000);
    CHECK_EQ(pgw_sink_flush(sink, 10000), 0);
    pgw_sink_health(sink, &h);
    CHECK(h.ok);
    CHECK_EQ(h.events, 3000);
    CHECK_EQ(h.events_lost, 0);
    pgw_sink_close(sink);

    seen_t s;
    seen_init(&s, 1, 3000);
    CHECK_EQ((off_t)seen_file(&s, path), file_size(path));
    seen_verify(&s);
    seen_free(&s);
    unlink(path);
}

/* A device that is always full: nothing can be written; closing gives up
 * after close_timeout and says how many events were lost. */
static void test_lost_at_close(void)
{
    pgw_sink_t *sink;
    pgw_sink_producer_t p;
    pgw_sink_health_t h;
    pgw_event_t ev;
    char sid[16];

    if (access("/dev/full", W_OK) != 0) {
        fprintf(stderr, "    no /dev/full: skipped\n");
        return;
    }
    pgw_file_sink_config_t cfg = { .path = "/dev/full", .close_timeout_ms = 300 };
    CHECK_EQ(pgw_file_sink_open(&cfg, &sink), 0);
    pgw_sink_producer_init(&p, sink);
    for (unsigned i = 1; i <= 25; i++) {
        make_event(&ev, sid, 0, i, NULL);
        CHECK_EQ(pgw_sink_emit(&p, &ev), 0);
    }
    pgw_sink_producer_close(&p);
    CHECK_EQ(pgw_sink_flush(sink, 200), -ETIMEDOUT);
    pgw_sink_health(sink, &h);
    CHECK(h.write_errors > 0);
    CHECK_EQ(h.last_errno, ENOSPC);
    CHECK_EQ(h.events, 0);
    CHECK_EQ(h.queued_events, 25);

    /* Closing gives up after close_timeout_ms and says so: the sink is gone
     * afterwards, so the count is checked in its log line. */
    char logpath[256], buf[4096];
    path_in(logpath, sizeof(logpath), "close.log");
    fflush(stderr);
    int saved = dup(STDERR_FILENO), fd = open(logpath, O_RDWR | O_CREAT | O_TRUNC, 0600);
    dup2(fd, STDERR_FILENO);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pgw_sink_close(sink);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    close(fd);
    unlink(logpath);
    buf[n > 0 ? n : 0] = 0;
    CHECK(strstr(buf, "25 events lost") != NULL);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    CHECK(ms >= 250 && ms < 5000);

    CHECK_EQ(pgw_file_sink_open(&cfg, &sink), 0);
    CHECK_EQ(pgw_sink_submit(sink, "{\"a\":1}\n", 8, PGW_STR_LIT("k")), 0);
    CHECK_EQ(pgw_sink_submit(sink, "no newline", 10, PGW_STR_LIT("k")), -EINVAL);
    pgw_sink_close(sink);
}

/* Shutdown with a stuck output: a producer held back by the cap is let go
 * by unblock(), and the events it could not write are counted at close. */
static void test_unblock(void)
{
    pgw_sink_t *sink;
    pgw_sink_health_t h;
    pthread_t th;
    fsz_arg_t arg;

    if (access("/dev/full", W_OK) != 0)
        return;
    pgw_file_sink_config_t cfg = { .path = "/dev/full", .close_timeout_ms = 200,
                                   .max_queued_bytes = 4096,
                                   .limits = { .batch_bytes = 1024 } };
    CHECK_EQ(pgw_file_sink_open(&cfg, &sink), 0);
    arg.pa = (prod_arg_t){ .sink = sink, .t = 0, .n = 500 };
    atomic_init(&arg.pa.errors, 0);
    atomic_init(&arg.done, false);
    CHECK_EQ(pthread_create(&th, NULL, fsz_producer, &arg), 0);
    for (int i = 0; i < 500; i++) {
        pgw_sink_health(sink, &h);
        if (h.producer_waits > 0)
            break;
        sleep_ms(10);
    }
    CHECK(h.producer_waits > 0);
    sleep_ms(50);
    CHECK(!atomic_load(&arg.done));          /* held back: block policy */
    pgw_sink_unblock(sink);
    pthread_join(th, NULL);                  /* and let go */
    CHECK(atomic_load(&arg.done));
    CHECK_EQ(arg.pa.emitted, 500);
    pgw_sink_health(sink, &h);
    CHECK_EQ(h.queued_events, 500);          /* all still queued, none dropped */
    pgw_sink_close(sink);
}

static void test_producer_timing(void)
{
    char path[256];
    pgw_sink_t *sink;
    pgw_sink_producer_t p;
    pgw_sink_health_t h;
    pgw_event_t ev;
    char sid[16];

    path_in(path, sizeof(path), "timing.jsonl");
    pgw_file_sink_config_t cfg = { .path = path, .limits = { .max_delay_us = 20000 } };
    CHECK_EQ(pgw_file_sink_open(&cfg, &sink), 0);
    pgw_sink_producer_init(&p, sink);
    CHECK_EQ(pgw_sink_producer_due_ms(&p), -1);
    make_event(&ev, sid, 0, 1, NULL);
    CHECK_EQ(pgw_sink_emit(&p, &ev), 0);
    int due = pgw_sink_producer_due_ms(&p);
    CHECK(due > 0 && due <= 20);
    pgw_sink_producer_tick(&p);              /* too young: stays */
    CHECK(p.batch != NULL && p.batch->nrecs == 1);
    sleep_ms(25);
    CHECK_EQ(pgw_sink_producer_due_ms(&p), 0);
    pgw_sink_producer_tick(&p);              /* old enough: handed over */
    CHECK(p.batch == NULL);
    CHECK_EQ(pgw_sink_producer_due_ms(&p), -1);
    CHECK_EQ(pgw_sink_flush(sink, 10000), 0);
    pgw_sink_health(sink, &h);
    CHECK_EQ(h.events, 1);

    /* Refused events are counted and leave the batch intact. */
    ev.kind = PGW_EVENT_NONE;
    CHECK_EQ(pgw_sink_emit(&p, &ev), -EINVAL);
    CHECK_EQ(atomic_load(&p.refused), 1);
    /* Over the largest event (16 MiB): recorded shrunk, its text cut to
     * 4 KiB (not inside a character) and marked, its values and message
     * dropped or cut; counted. */
    static char huge[17 * 1024 * 1024];
    memset(huge, 'h', sizeof(huge));
    memcpy(huge + 4095, "\xc3\xa9", 2);       /* an é across the cut */
    make_event(&ev, sid, 0, 2, NULL);
    ev.statement.text = pgw_str(huge, sizeof(huge));
    ev.result.message = pgw_str(huge, 4000);
    pgw_event_param_t vals[1] = { { .ptr = huge, .len = 100 } };
    ev.statement.param_values = vals;
    ev.statement.nparam_values = 1;
    CHECK_EQ(pgw_sink_emit(&p, &ev), 0);
    CHECK_EQ(atomic_load(&p.shrunk), 1);
    CHECK_EQ(atomic_load(&p.refused), 1);
    /* What cannot be shrunk is refused, counted, and leaves the batch intact. */
    make_event(&ev, sid, 0, 3, NULL);
    ev.result.tag = pgw_str(huge, sizeof(huge));
    CHECK_EQ(pgw_sink_emit(&p, &ev), -E2BIG);
    CHECK_EQ(atomic_load(&p.refused), 2);
    make_event(&ev, sid, 0, 3, NULL);
    CHECK_EQ(pgw_sink_emit(&p, &ev), 0);
    pgw_sink_producer_close(&p);
    pgw_sink_close(sink);

    seen_t s;
    seen_init(&s, 1, 3);
    seen_file(&s, path);
    seen_verify(&s);
    seen_free(&s);
    /* The shrunk one, as written. */
    FILE *f = fopen(path, "r");
    char *line = NULL;
    size_t cap = 0;
    int found = 0;
    while (f && getline(&line, &cap, f) > 0) {
        if (!strstr(line, "\"seq\":2"))
            continue;
        found = 1;
        char want[64];
        snprintf(want, sizeof want, "\"text\":\"%.8s", huge);
        CHECK(strstr(line, want) != NULL);
        CHECK(strstr(line, "\"truncated\":true") != NULL);
        CHECK(strstr(line, "\"params\":{\"count\":1}") != NULL);
        const char *t = strstr(line, "\"text\":\"") + 8, *e = strchr(t, '"');
        CHECK_EQ(e - t, 4095);                  /* before the é, not inside it */
        const char *m = strstr(line, "\"message\":\"");
        CHECK(m && strchr(m + 11, '"') - (m + 11) == 1024);
        CHECK(strlen(line) < 8192);
    }
    CHECK(found);
    free(line);
    if (f)
        fclose(f);
    unlink(path);
}

/* A begin record's head is kept for its completion, unless the begin had
 * to be shrunk or the caller's buffer is full; a completion over the
 * largest event is shrunk from its fields, not from the uncut head. */
static void test_begin_head(void)
{
    char path[256];
    pgw_sink_t *sink;
    pgw_sink_producer_t p;
    pgw_event_t ev;
    char sid[16];
    pgw_jbuf_t heads, whole;
    size_t len = 99;

    path_in(path, sizeof(path), "heads.jsonl");
    pgw_file_sink_config_t cfg = { .path = path };
    CHECK_EQ(pgw_file_sink_open(&cfg, &sink), 0);
    pgw_sink_producer_init(&p, sink);
    pgw_jbuf_init(&heads, 4096);
    pgw_jbuf_init(&whole, 0);

    make_event(&ev, sid, 0, 1, NULL);
    CHECK_EQ(pgw_sink_emit_begin(&p, &ev, 7, &heads, &len), 0);
    CHECK(len > 0 && len == heads.len);
    CHECK_EQ(pgw_event_encode(&ev, &whole), 0);
    CHECK(len < whole.len && memcmp(heads.data, whole.data, len) == 0);
    CHECK_EQ(p.batch->nrecs, 1);
    CHECK(p.batch->recs[0].begin && p.batch->recs[0].token == 7);

    /* no room left in heads: recorded, not kept */
    size_t before = heads.len;
    heads.max = heads.len + 10;
    CHECK_EQ(pgw_sink_emit_begin(&p, &ev, 8, &heads, &len), 0);
    CHECK_EQ(len, 0);
    CHECK_EQ(heads.len, before);
    CHECK(!heads.failed);
    CHECK_EQ(p.batch->nrecs, 2);
    heads.max = SIZE_MAX;

    /* shrunk: recorded, not kept */
    static char huge[17 * 1024 * 1024];
    memset(huge, 'h', sizeof(huge));
    ev.statement.text = pgw_str(huge, sizeof(huge));
    CHECK_EQ(pgw_sink_emit_begin(&p, &ev, 9, &heads, &len), 0);
    CHECK_EQ(len, 0);
    CHECK_EQ(heads.len, before);
    CHECK_EQ(atomic_load(&p.shrunk), 1);

    /* a completion whose head holds the uncut text, its message over the
     * largest event: shrunk from its fields (text cut, marked) */
    pgw_jbuf_t big;
    pgw_jbuf_init(&big, 0);
    ev.statement.text = pgw_str(huge, 16 * 1024 * 1024 - 4096);
    CHECK_EQ(pgw_event_encode_head_len(&ev, &big, &len), 0);
    ev.head_json = pgw_str(big.data, len);
    ev.statement.text = pgw_str(huge, sizeof(huge));
    ev.result.message = pgw_str(huge, 8192);
    size_t at = p.batch ? p.batch->data.len : 0;
    CHECK_EQ(pgw_sink_emit_rec(&p, &ev, false, 9), 0);
    CHECK_EQ(atomic_load(&p.shrunk), 2);
    CHECK(p.batch != NULL);
    if (p.batch) {
        const char *line = p.batch->data.data + at;
        CHECK(memmem(line, p.batch->data.len - at, "\"truncated\":true", 16) != NULL);
        CHECK(p.batch->data.len - at < 8192);
    }
    pgw_jbuf_free(&big);
    pgw_jbuf_free(&heads);
    pgw_jbuf_free(&whole);
    pgw_sink_producer_close(&p);
    pgw_sink_close(sink);
    unlink(path);
}

/* fsync policy: a flush syncs, and data written without a flush is synced
 * within the interval. */
static void test_fsync(void)
{
    char path[256];
    pgw_sink_t *sink;
    pgw_sink_producer_t p;
    pgw_sink_health_t h;
    pgw_event_t ev;
    char sid[16];

    path_in(path, sizeof(path), "fsync.jsonl");
    pgw_file_sink_config_t cfg = { .path = path, .fsync_interval_ms = 30 };
    CHECK_EQ(pgw_file_sink_open(&cfg, &sink), 0);
    pgw_sink_producer_init(&p, sink);
    make_event(&ev, sid, 0, 1, NULL);
    CHECK_EQ(pgw_sink_emit(&p, &ev), 0);
    pgw_sink_producer_flush(&p);
    CHECK_EQ(pgw_sink_flush(sink, 10000), 0);
    pgw_sink_health(sink, &h);
    CHECK_EQ(h.fsyncs, 1);
    CHECK_EQ(h.events, 1);

    make_event(&ev, sid, 0, 2, NULL);
    CHECK_EQ(pgw_sink_emit(&p, &ev), 0);
    pgw_sink_producer_flush(&p);             /* handed over, no flush() */
    for (int i = 0; i < 200 && h.fsyncs < 2; i++) {
        sleep_ms(10);
        pgw_sink_health(sink, &h);
    }
    CHECK_EQ(h.fsyncs, 2);
    CHECK_EQ(h.events, 2);
    sleep_ms(100);                           /* nothing new: no more syncs */
    pgw_sink_health(sink, &h);
    CHECK_EQ(h.fsyncs, 2);
    pgw_sink_producer_close(&p);
    pgw_sink_close(sink);

    seen_t s;
    seen_init(&s, 1, 2);
    seen_file(&s, path);
    seen_verify(&s);
    seen_free(&s);
    unlink(path);
}

static void test_open_errors(void)
{
    pgw_sink_t *sink = (pgw_sink_t *)1;
    pgw_file_sink_config_t cfg = { .path = "/nonexistent-dir/x/audit.jsonl" };
    CHECK_EQ(pgw_file_sink_open(&cfg, &sink), -ENOENT);
    CHECK(sink == NULL);
}

int main(void)
{
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_threads();
    test_rotation();
    test_rotation_big_event();
    test_stdout();
    test_reopen_and_cut_line();
    test_write_errors();
    test_lost_at_close();
    test_unblock();
    test_producer_timing();
    test_begin_head();
    test_fsync();
    test_open_errors();
    rmdir(g_dir);
    CHECK_DONE();
}
