/* The file sink with a spool (--spool-dir), on real files in a temp dir:
 *   - begin records never reach the file; after a process dies without
 *     closing, the next open writes each statement it began and never
 *     completed (status unknown) once, not again the events the file holds
 *     already, and the spool empties;
 *   - a file that cannot be written and a small spool: new statements wait
 *     once the spool is full, nothing is lost, and the next open writes
 *     every spooled event once;
 *   - a spool that cannot be written: the append is retried with a growing
 *     pause until it goes through. */
#include "check.h"
#include "file_sink_support.h"

#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

/* Lines of path: how many, and how many hold needle. */
static size_t count_lines(const char *path, const char *needle, size_t *with)
{
    char line[4096];
    size_t n = 0;
    FILE *f = fopen(path, "r");
    *with = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f)) {
        n++;
        *with += strstr(line, needle) != NULL;
    }
    fclose(f);
    return n;
}

/* Distinct event_id values in path (at most 64 looked at). */
static size_t distinct_ids(const char *path)
{
    char line[4096], ids[64][37];
    size_t n = 0;
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f) && n < 64) {
        const char *p = strstr(line, "\"event_id\":\"");
        if (!p)
            continue;
        p += 12;
        bool seen = false;
        for (size_t i = 0; i < n && !seen; i++)
            seen = strncmp(ids[i], p, 36) == 0;
        if (!seen) {
            memcpy(ids[n], p, 36);
            ids[n++][36] = 0;
        }
    }
    fclose(f);
    return n;
}

static size_t segments_in(const char *dir)
{
    size_t n = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    if (!d)
        return 0;
    while ((e = readdir(d)) != NULL)
        n += strstr(e->d_name, ".seg") != NULL;
    closedir(d);
    return n;
}

static void spooled_emit(pgw_sink_producer_t *p, uint64_t seq, pgw_result_status_t status, bool begin,
                         uint64_t token)
{
    pgw_event_t ev;
    char sid[16];
    make_event(&ev, sid, 0, seq, NULL);
    ev.result.status = status;
    CHECK_EQ(pgw_sink_emit_rec(p, &ev, begin, token), 0);
}

static void test_spool_crash(void)
{
    char path[256], spool[256];
    pgw_sink_t *sink;
    pgw_sink_producer_t p;
    pgw_sink_health_t h;
    size_t unknown, n;

    path_in(path, sizeof path, "durable.jsonl");
    path_in(spool, sizeof spool, "spool");
    pgw_file_sink_config_t cfg = { .path = path, .spool_dir = spool, .spool_max_bytes = 1 << 20 };

    /* A process that begins three statements, completes one, writes one
     * other event and dies without closing anything. */
    pid_t pid = fork();
    if (pid == 0) {
        if (pgw_file_sink_open(&cfg, &sink) != 0 || !sink->durable)
            _exit(2);
        pgw_sink_producer_init(&p, sink);
        spooled_emit(&p, 1, PGW_STATUS_UNKNOWN, true, 1);
        spooled_emit(&p, 1, PGW_STATUS_OK, false, 1);
        spooled_emit(&p, 2, PGW_STATUS_UNKNOWN, true, 2);
        pgw_sink_producer_flush(&p);
        spooled_emit(&p, 3, PGW_STATUS_UNKNOWN, true, 3);   /* a batch of begins only */
        pgw_sink_producer_flush(&p);
        spooled_emit(&p, 4, PGW_STATUS_OK, false, 0);
        pgw_sink_producer_flush(&p);
        _exit(pgw_sink_flush(sink, 5000) == 0 ? 0 : 3);
    }
    int st;
    CHECK_EQ(waitpid(pid, &st, 0), pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK_EQ(count_lines(path, "\"unknown\"", &unknown), 2);   /* seq 1 ok, seq 4 */
    CHECK_EQ(unknown, 0);
    CHECK(segments_in(spool) >= 1);

    /* The next open writes the two statements never completed, and not
     * again the events of the segment that were in the file already. */
    CHECK_EQ(pgw_file_sink_open(&cfg, &sink), 0);
    CHECK(sink->durable);
    CHECK_EQ(pgw_sink_flush(sink, 5000), 0);
    pgw_sink_health(sink, &h);
    CHECK_EQ(h.replayed, 2);
    pgw_sink_close(sink);
    CHECK_EQ(count_lines(path, "\"unknown\"", &unknown), 4);
    CHECK_EQ(unknown, 2);
    CHECK_EQ(distinct_ids(path), 4);
    CHECK(count_lines(path, "\"seq\":2}", &n) == 4 && n == 1);
    CHECK(count_lines(path, "\"seq\":3}", &n) == 4 && n == 1);
    CHECK_EQ(segments_in(spool), 0);

    /* A clean run: a begin and its completion, nothing left to replay. */
    CHECK_EQ(pgw_file_sink_open(&cfg, &sink), 0);
    pgw_sink_producer_init(&p, sink);
    spooled_emit(&p, 5, PGW_STATUS_UNKNOWN, true, 1);
    spooled_emit(&p, 5, PGW_STATUS_OK, false, 1);
    pgw_sink_producer_close(&p);
    pgw_sink_health(sink, &h);
    CHECK_EQ(h.replayed, 0);
    pgw_sink_close(sink);
    CHECK_EQ(count_lines(path, "\"unknown\"", &unknown), 5);
    CHECK_EQ(unknown, 2);
    CHECK_EQ(distinct_ids(path), 5);
    CHECK_EQ(segments_in(spool), 0);
    unlink(path);
    rmdir(spool);
}

/* A file that cannot be written, a small spool: once the spool is full,
 * new statements wait (block); unblock lets them go, the close gives up on
 * the file but the events stay in the spool, and the next open with a
 * working file writes every one of them once. */
typedef struct stuck {
    pgw_sink_t *sink;
    _Atomic unsigned done;
} stuck_t;

static void *stuck_producer(void *arg)
{
    stuck_t *st = arg;
    pgw_sink_producer_t p;
    pgw_sink_producer_init(&p, st->sink);
    for (unsigned i = 1; i <= 400; i++) {
        spooled_emit(&p, i, PGW_STATUS_UNKNOWN, true, i);
        spooled_emit(&p, i, PGW_STATUS_OK, false, i);
        pgw_sink_producer_flush(&p);        /* one loop iteration */
        atomic_store(&st->done, i);
    }
    pgw_sink_producer_close(&p);
    return NULL;
}

static void test_spool_full_blocks_and_keeps(void)
{
    char path[256], spool[256];
    pgw_sink_health_t h;
    size_t unknown;

    if (access("/dev/full", W_OK) != 0) {
        fprintf(stderr, "    no /dev/full: skipped\n");
        return;
    }
    path_in(spool, sizeof spool, "spool-full");
    pgw_file_sink_config_t cfg = { .path = "/dev/full", .spool_dir = spool,
                                   .spool_max_bytes = 65536, .close_timeout_ms = 300 };
    stuck_t st = { 0 };
    CHECK_EQ(pgw_file_sink_open(&cfg, &st.sink), 0);
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, stuck_producer, &st), 0);
    unsigned last = 0;
    for (int i = 0; i < 100; i++) {          /* until it stops moving */
        sleep_ms(50);
        unsigned now = atomic_load(&st.done);
        if (now == last && now > 0)
            break;
        last = now;
    }
    CHECK(last > 10 && last < 400);
    pgw_sink_health(st.sink, &h);
    CHECK(h.producer_waits >= 1);
    CHECK(h.spool_bytes > 0 && h.spool_bytes <= 65536 + 4096);
    CHECK_EQ(h.events, 0);
    pgw_sink_unblock(st.sink);
    CHECK_EQ(pthread_join(t, NULL), 0);
    CHECK_EQ(atomic_load(&st.done), 400);
    pgw_sink_health(st.sink, &h);
    CHECK_EQ(h.events_lost, 0);
    pgw_sink_close(st.sink);

    path_in(path, sizeof path, "after-full.jsonl");
    cfg.path = path;
    pgw_sink_t *sink;
    CHECK_EQ(pgw_file_sink_open(&cfg, &sink), 0);
    pgw_sink_health(sink, &h);
    CHECK_EQ(h.replayed, 400);
    pgw_sink_close(sink);
    CHECK_EQ(count_lines(path, "\"ok\"", &unknown), 400);
    CHECK_EQ(unknown, 400);
    CHECK_EQ(segments_in(spool), 0);
    unlink(path);
    rmdir(spool);
}

/* The spool cannot be written (its segment cannot be preallocated under a
 * file size limit): the append is retried with a growing pause, not in a
 * busy loop, and goes through once the limit is lifted. */
static void *one_statement(void *arg)
{
    pgw_sink_producer_t p;
    pgw_sink_producer_init(&p, arg);
    spooled_emit(&p, 1, PGW_STATUS_UNKNOWN, true, 1);
    spooled_emit(&p, 1, PGW_STATUS_OK, false, 1);
    pgw_sink_producer_close(&p);
    return NULL;
}

static void test_spool_write_retries(void)
{
    char path[256], spool[256];
    struct rlimit old, lim;
    pgw_sink_t *sink;
    pgw_sink_health_t h;
    size_t ok;

    signal(SIGXFSZ, SIG_IGN);                /* EFBIG instead of a signal */
    path_in(path, sizeof path, "efbig-spool.jsonl");
    path_in(spool, sizeof spool, "spool-efbig");
    pgw_file_sink_config_t cfg = { .path = path, .spool_dir = spool };
    CHECK_EQ(pgw_file_sink_open(&cfg, &sink), 0);
    CHECK_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 1024 * 1024;              /* below a segment's 4 MiB */
    CHECK_EQ(setrlimit(RLIMIT_FSIZE, &lim), 0);
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, one_statement, sink), 0);
    sleep_ms(2500);
    pgw_sink_health(sink, &h);
    /* Pauses of 10, 20, 40 ... 1280 ms: about 9 attempts in 2.5 s. */
    CHECK(h.write_errors >= 4 && h.write_errors <= 20);
    CHECK_EQ(setrlimit(RLIMIT_FSIZE, &old), 0);
    CHECK_EQ(pthread_join(t, NULL), 0);
    pgw_sink_close(sink);
    CHECK_EQ(count_lines(path, "\"ok\"", &ok), 1);
    CHECK_EQ(ok, 1);
    CHECK_EQ(segments_in(spool), 0);
    unlink(path);
    rmdir(spool);
}

int main(void)
{
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_spool_crash();
    test_spool_full_blocks_and_keeps();
    test_spool_write_retries();
    rmdir(g_dir);
    CHECK_DONE();
}
