/* The file sink: JSON lines to a file or stdout, written by one thread.
 *
 * Loop threads hand whole batches over (pgw_sink_producer_t); this file only
 * queues them under a mutex held for a pointer append, and a writer thread
 * takes the whole queue at once and writes it with writev(2), so forwarding
 * threads never wait for the disk unless the queue passes its cap (block
 * policy). Rotation cuts between events, never inside one, using the
 * batches' event offsets. Write errors are retried with a backoff until
 * they succeed; nothing is dropped except at close after the close timeout,
 * and that is counted and logged.
 *
 * With a spool (spooler.h) the sink is durable: a loop thread's batch,
 * begin records included, is appended to the thread's spool lane in the
 * loop thread before the statements it begins are forwarded; the begins
 * are then cut out of the batch, which is queued as usual, and the
 * writer releases the batch's spool references once its events are in
 * the file. A segment is deleted when every event in it is written and
 * every statement it begins has its completion spooled. At open, what an
 * earlier run left is written first (file_replay.c). */
#include "pgwarden/sink.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "file_sink_int.h"
#include "log.h"

#define FILE_MAX_QUEUED_DEFAULT (64u * 1024 * 1024)
#define FILE_CLOSE_TIMEOUT_MS_DEFAULT 10000u
#define FILE_KEEP_DEFAULT 5u
#define FILE_MODE_DEFAULT 0600u
#define RETRY_MIN_MS 50u             /* first retry after a failed write */
#define RETRY_MAX_MS 1000u
#define ERROR_LOG_EVERY_MS 10000     /* repeated failures are logged this often */
#define ROTATE_RETRY_MS 10000        /* after a failed rename, append this long first */
/* Spool segments: after a crash, the events of the segments still on disk
 * are written again; small ones keep those duplicates few. */
#define SPOOL_SEG_CAP (4u * 1024 * 1024)
#define IOV_BATCH 64                 /* iovecs per writev, well under IOV_MAX */

static struct timespec abs_ms(int64_t ms)
{
    return (struct timespec){ .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000 };
}

/* ------------------------------------------------------------ writer */

/* Counts a failed attempt and logs it, at most every ERROR_LOG_EVERY_MS
 * while failures repeat. */
static void failed(file_sink_t *fs, const char *what, int err)
{
    int64_t now = pgw_mono_ms();

    add(&fs->errors, 1);
    atomic_store(&fs->last_errno, err);
    if (atomic_exchange(&fs->ok, false) || now - fs->last_errlog_ms >= ERROR_LOG_EVERY_MS) {
        fs->last_errlog_ms = now;
        pthread_mutex_lock(&fs->mu);
        size_t waiting = fs->queued_events;
        pthread_mutex_unlock(&fs->mu);
        pgw_error("audit file %s: %s failed: %s; retrying (%zu events waiting)",
                  shown_path(fs), what, strerror(err), waiting);
    }
}

static void succeeded(file_sink_t *fs)
{
    fs->retry_ms = RETRY_MIN_MS;
    if (!atomic_exchange(&fs->ok, true))
        pgw_warn("audit file %s: writing again", shown_path(fs));
}

/* Sleeps before a retry (woken early by close, flush or reopen). False
 * when closing and the close deadline has passed: the caller gives up. */
static bool wait_retry(file_sink_t *fs)
{
    bool go_on;

    pthread_mutex_lock(&fs->mu);
    if (!fs->stop || pgw_mono_ms() < fs->stop_deadline_ms) {
        struct timespec ts = abs_ms(pgw_mono_ms() + fs->retry_ms);
        pthread_cond_timedwait(&fs->work, &fs->mu, &ts);
    }
    go_on = !fs->stop || pgw_mono_ms() < fs->stop_deadline_ms;
    pthread_mutex_unlock(&fs->mu);
    if (fs->retry_ms < RETRY_MAX_MS)
        fs->retry_ms *= 2;
    if (!go_on)
        fs->giving_up = true;
    return go_on;
}

/* Opens the path for appending. At an event boundary (boundary: start-up,
 * a requested reopen, after rotation), a last line cut by a crash gets its
 * '\n' so the next event starts a line of its own. Not when resuming a
 * write that failed midway: the rest of that line must follow its start. */
static int open_file(file_sink_t *fs, bool boundary)
{
    struct stat st;
    char last;
    int fd;

    if (!fs->path) {
        fs->fd = STDOUT_FILENO;
        fs->size = 0;
        return 0;
    }
    fd = open(fs->path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, (mode_t)fs->mode);
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    fs->size = (uint64_t)st.st_size;
    if (boundary && st.st_size > 0 && pread(fd, &last, 1, st.st_size - 1) == 1 &&
        last != '\n') {
        if (write(fd, "\n", 1) == 1)
            fs->size++;
    }
    fs->fd = fd;
    return 0;
}

static void close_file(file_sink_t *fs)
{
    if (fs->fd >= 0 && fs->path)
        close(fs->fd);
    fs->fd = -1;
}

static void do_sync(file_sink_t *fs)
{
    if (!fs->dirty || fs->fd < 0)
        return;
    /* A pipe or terminal has nothing to sync (EINVAL): not an error. */
    if (fdatasync(fs->fd) != 0 && errno != EINVAL && errno != EROFS)
        failed(fs, "fdatasync", errno);   /* Linux may have dropped the pages: retrying proves nothing */
    else
        add(&fs->fsyncs, 1);
    fs->dirty = false;
    fs->last_sync_ms = pgw_mono_ms();
}

static void reopen(file_sink_t *fs)
{
    if (!fs->path)
        return;
    if (fs->fsync_interval_ms)
        do_sync(fs);
    close_file(fs);
    int rc = open_file(fs, true);
    if (rc != 0)
        failed(fs, "reopen", -rc);  /* the next write retries */
    else
        pgw_info("audit file %s reopened", fs->path);
    add(&fs->reopens, 1);
}

/* path -> path.1 -> ... -> path.keep (the oldest is replaced). The new file
 * is opened by the next write. */
static void rotate(file_sink_t *fs)
{
    if (fs->fsync_interval_ms)
        do_sync(fs);
    close_file(fs);
    for (unsigned i = fs->keep; i >= 1; i--) {
        const char *src = fs->path;
        if (i > 1) {
            snprintf(fs->name_a, strlen(fs->path) + 16, "%s.%u", fs->path, i - 1);
            src = fs->name_a;
        }
        snprintf(fs->name_b, strlen(fs->path) + 16, "%s.%u", fs->path, i);
        if (rename(src, fs->name_b) != 0 && errno != ENOENT) {
            failed(fs, "rotation (rename)", errno);
            fs->no_rotate_until_ms = pgw_mono_ms() + ROTATE_RETRY_MS;
            return;
        }
    }
    add(&fs->rotations, 1);
}

/* Writes iov[0..n) (total bytes) whole, retrying partial writes and
 * errors. Returns the bytes written: total, or less when giving up. */
static size_t write_iov(file_sink_t *fs, struct iovec *iov, int n, size_t total)
{
    size_t written = 0;

    while (written < total) {
        if (fs->fd < 0) {
            /* At a boundary unless an earlier attempt wrote part of a line. */
            int rc = open_file(fs, written == 0 && !fs->mid_line);
            if (rc != 0) {
                failed(fs, "open", -rc);
                if (!wait_retry(fs))
                    break;
                continue;
            }
        }
        ssize_t w = writev(fs->fd, iov, n);
        if (w < 0) {
            int e = errno;
            if (e == EINTR)
                continue;
            if (e == EAGAIN || e == EWOULDBLOCK) {   /* a non-blocking stdout */
                struct pollfd pfd = { .fd = fs->fd, .events = POLLOUT };
                poll(&pfd, 1, 1000);
                continue;
            }
            failed(fs, "write", e);
            close_file(fs);       /* a fresh descriptor may work (ESTALE, EIO) */
            if (!wait_retry(fs))
                break;
            continue;
        }
        succeeded(fs);
        written += (size_t)w;
        fs->mid_line = written < total;   /* iov ends on event boundaries */
        fs->size += (uint64_t)w;
        fs->dirty = fs->fsync_interval_ms != 0;
        add(&fs->bytes, (uint64_t)w);
        /* Skip what was written; the rest of a cut line goes first next. */
        size_t skip = (size_t)w;
        while (n > 0 && skip >= iov->iov_len) {
            skip -= iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + skip;
            iov->iov_len -= skip;
        }
    }
    return written;
}

/* Where the writer stands in the list being written: always between
 * events unless giving up interrupted a write. */
typedef struct cursor {
    pgw_batch_t *b;
    size_t off;                      /* bytes of b done */
    size_t rec;                      /* first event of b not fully written */
} cursor_t;

static void advance(file_sink_t *fs, cursor_t *c, size_t n)
{
    while (n > 0 && c->b) {
        size_t step = c->b->data.len - c->off;
        if (step > n)
            step = n;
        c->off += step;
        n -= step;
        size_t r0 = c->rec;
        while (c->rec < c->b->nrecs && c->b->recs[c->rec].end <= c->off)
            c->rec++;
        add(&fs->events, c->rec - r0);
        if (c->off == c->b->data.len) {
            add(&fs->batches, 1);
            c->b = c->b->next;
            c->off = c->rec = 0;
        }
    }
}

/* The end of the last event of b that starts at or after off and ends
 * within room bytes of it; off when not even one fits. */
static size_t fit_end(const pgw_batch_t *b, size_t off, uint64_t room)
{
    size_t cut = off;
    for (size_t i = 0; i < b->nrecs; i++) {
        if (b->recs[i].end <= off)
            continue;
        if (b->recs[i].end - off > room)
            break;
        cut = b->recs[i].end;
    }
    return cut;
}

static size_t next_end(const pgw_batch_t *b, size_t off)
{
    for (size_t i = 0; i < b->nrecs; i++)
        if (b->recs[i].end > off)
            return b->recs[i].end;
    return b->data.len;
}

/* Hands the batches [from, to) back once written (or given up): queue
 * counters, producers waiting for room, flush() waiters, the pool. Done
 * after every writev, so a producer held back by the cap resumes as soon
 * as some room is free, not when the whole queue is written. */
static void release(file_sink_t *fs, pgw_batch_t *from, pgw_batch_t *to, bool written)
{
    size_t nb = 0, nbytes = 0, nevents = 0;

    while (from != to) {
        pgw_batch_t *next = from->next;
        nb++;
        nbytes += from->data.len;
        nevents += from->nrecs;
        /* Written: the spool need not keep them. Given up: it keeps them
         * for the next start. */
        if (written && from->spool_seg)
            pgw_spool_seg_release(from->spool_seg, (int64_t)from->spool_refs);
        pgw_sink_batch_put(&fs->base, from);
        from = next;
    }
    if (!nb)
        return;
    pthread_mutex_lock(&fs->mu);
    fs->queued_bytes -= nbytes;
    fs->queued_events -= nevents;
    fs->completed += nb;
    if (!fs->dirty)                  /* always so without an fsync policy */
        fs->synced = fs->completed;
    if (fs->room_waiters)
        pthread_cond_broadcast(&fs->room);
    if (fs->done_waiters)
        pthread_cond_broadcast(&fs->done);
    pthread_mutex_unlock(&fs->mu);
}

/* Writes the list and releases every batch of it. */
static void write_list(file_sink_t *fs, pgw_batch_t *list)
{
    cursor_t c = { list, 0, 0 };
    pgw_batch_t *unreleased = list;

    while (c.b) {
        if (fs->giving_up) {
            /* Spooled events are not lost: the next start writes them. */
            uint64_t n = 0, kept = 0;
            for (pgw_batch_t *b = c.b; b; b = b->next)
                *(b->spool_seg ? &kept : &n) += b == c.b ? b->nrecs - c.rec : b->nrecs;
            if (n) {
                add(&fs->lost, n);
                pgw_error("audit file %s: closing with writes still failing: %llu events lost",
                          shown_path(fs), (unsigned long long)n);
            }
            if (kept)
                pgw_error("audit file %s: closing with writes still failing: %llu events stay "
                          "in the spool for the next start", shown_path(fs),
                          (unsigned long long)kept);
            break;
        }

        uint64_t room = UINT64_MAX;
        if (fs->max_bytes && fs->path && pgw_mono_ms() >= fs->no_rotate_until_ms) {
            if (fs->fd < 0 && open_file(fs, !fs->mid_line) != 0)
                fs->size = 0;             /* write_iov will retry and report */
            room = fs->size < fs->max_bytes ? fs->max_bytes - fs->size : 0;
        }

        struct iovec iov[IOV_BATCH];
        int n = 0;
        size_t total = 0;
        bool rotate_after = false;
        pgw_batch_t *pb = c.b;
        size_t poff = c.off;
        while (pb && n < IOV_BATCH) {
            size_t avail = pb->data.len - poff;
            if (avail <= room - total) {
                iov[n++] = (struct iovec){ pb->data.data + poff, avail };
                total += avail;
                pb = pb->next;
                poff = 0;
                continue;
            }
            /* The file would pass max_bytes: the events that fit, then
             * rotate. An event bigger than max_bytes gets a file alone. */
            size_t cut = fit_end(pb, poff, room - total);
            if (cut == poff && total == 0 && fs->size == 0)
                cut = next_end(pb, poff);
            if (cut > poff) {
                iov[n++] = (struct iovec){ pb->data.data + poff, cut - poff };
                total += cut - poff;
            }
            rotate_after = true;
            break;
        }
        if (total > 0) {
            advance(fs, &c, write_iov(fs, iov, n, total));
            release(fs, unreleased, c.b, true);
            unreleased = c.b;
        }
        if (rotate_after && !fs->giving_up)
            rotate(fs);
    }
    release(fs, unreleased, c.b, true);
    release(fs, c.b, NULL, false);   /* given up: not (all) written */
}

/* With a spool, the events are safe before they are written: the writer
 * lets the loop threads' per-iteration batches gather into writes of
 * batch_bytes, or max_delay_us old, as the producers do without a spool,
 * instead of waking for each. Caller holds mu. */
static bool hold(const file_sink_t *fs, int64_t *until_ms)
{
    *until_ms = fs->head_born_ms + (int64_t)fs->base.limits.max_delay_us / 1000;
    return fs->spooled && fs->head && fs->write_target <= fs->completed &&
           fs->queued_bytes < fs->base.limits.batch_bytes && pgw_mono_ms() < *until_ms;
}

static void *writer_main(void *arg)
{
    file_sink_t *fs = arg;
    sigset_t all;

    /* Signals are the main thread's business. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);

    pthread_mutex_lock(&fs->mu);
    for (;;) {
        int64_t held_until;
        while ((!fs->head || hold(fs, &held_until)) && !fs->stop && !fs->reopen_req &&
               fs->sync_target <= fs->synced) {
            fs->writer_idle = true;
            int64_t due = fs->head ? held_until : INT64_MAX;
            if (fs->dirty && fs->fsync_interval_ms) {
                int64_t sync_due = fs->last_sync_ms + fs->fsync_interval_ms;
                if (pgw_mono_ms() >= sync_due) {
                    fs->writer_idle = false;
                    break;
                }
                if (sync_due < due)
                    due = sync_due;
            }
            if (due == INT64_MAX) {
                pthread_cond_wait(&fs->work, &fs->mu);
            } else {
                struct timespec ts = abs_ms(due);
                pthread_cond_timedwait(&fs->work, &fs->mu, &ts);
            }
            fs->writer_idle = false;
        }
        pgw_batch_t *list = fs->head;
        fs->head = fs->tail = NULL;
        bool do_reopen = fs->reopen_req, stopping = fs->stop;
        bool want_sync = fs->sync_target > fs->synced || stopping;
        fs->reopen_req = false;
        pthread_mutex_unlock(&fs->mu);

        if (do_reopen)
            reopen(fs);
        if (list)
            write_list(fs, list);
        if (fs->fsync_interval_ms &&
            (want_sync || pgw_mono_ms() - fs->last_sync_ms >= (int64_t)fs->fsync_interval_ms))
            do_sync(fs);

        pthread_mutex_lock(&fs->mu);
        if (!fs->dirty) {
            fs->synced = fs->completed;
            if (fs->done_waiters)
                pthread_cond_broadcast(&fs->done);
        }
        if (stopping && !fs->head)
            break;
    }
    fs->writer_exited = true;
    pthread_mutex_unlock(&fs->mu);
    if (fs->fsync_interval_ms)
        do_sync(fs);
    close_file(fs);
    return NULL;
}

/* ------------------------------------------------------------ ops */

/* Removes the begin records from b (they live in the spool only). */
static void cut_begins(pgw_batch_t *b)
{
    size_t out = 0, len = 0;
    for (size_t i = 0; i < b->nrecs; i++) {
        pgw_batch_rec_t r = b->recs[i];
        size_t start = pgw_batch_start(b, i);
        if (r.begin)
            continue;
        if (start != len)
            memmove(b->data.data + len, b->data.data + start, r.end - start);
        len += r.end - start;
        r.end = len;
        r.key_end = 0;                   /* keys are Kafka's */
        b->recs[out++] = r;
    }
    b->nrecs = out;
    b->data.len = len;
    b->keys.len = 0;
}

/* Spools b in the calling thread's lane; false when nothing is left to
 * write (b held only begins and was given back). */
static bool spool_batch(file_sink_t *fs, pgw_batch_t *b)
{
    pgw_spool_lane_t *l = pgw_spooler_lane(&fs->spooler);
    pgw_spool_seg_t *seg = NULL;
    size_t n = pgw_spooler_events(b);

    if (!l)
        pgw_error("audit file %s: out of memory for a spool writer: %zu event(s) written "
                  "unspooled", shown_path(fs), n);
    else if (pgw_spooler_append(&fs->spooler, l, b, n, &seg) == PGW_SPOOLED && seg) {
        b->spool_seg = seg;
        b->spool_refs = n;
    }
    if (n < b->nrecs)
        cut_begins(b);
    if (n)
        return true;
    pgw_sink_batch_put(&fs->base, b);
    return false;
}

static int fs_submit_batch(pgw_sink_t *s, pgw_batch_t *b)
{
    file_sink_t *fs = (file_sink_t *)s;

    if (fs->spooled && !spool_batch(fs, b))
        return 0;
    return file_sink_queue(fs, b);
}

/* Queues b for the writer, waiting while the queue is over its cap. */
int file_sink_queue(file_sink_t *fs, pgw_batch_t *b)
{
    pgw_sink_t *s = &fs->base;
    size_t len = b->data.len;

    pthread_mutex_lock(&fs->mu);
    if (fs->writer_exited) {
        pthread_mutex_unlock(&fs->mu);
        add(&fs->lost, b->nrecs);
        pgw_error("audit file %s: %zu events handed over after close: lost",
                  shown_path(fs), b->nrecs);
        pgw_sink_batch_put(s, b);
        return -EPIPE;
    }
    /* Block policy. An empty queue takes any batch, so one bigger than the
     * cap cannot wait forever. */
    if (fs->queued_bytes > 0 && fs->queued_bytes + len > fs->max_queued && !fs->unblocked) {
        int64_t t0 = pgw_mono_us();
        add(&fs->waits, 1);
        fs->room_waiters++;
        while (fs->queued_bytes > 0 && fs->queued_bytes + len > fs->max_queued &&
               !fs->writer_exited && !fs->unblocked)
            pthread_cond_wait(&fs->room, &fs->mu);
        fs->room_waiters--;
        add(&fs->wait_us, (uint64_t)(pgw_mono_us() - t0));
        if (fs->writer_exited) {
            pthread_mutex_unlock(&fs->mu);
            add(&fs->lost, b->nrecs);
            pgw_error("audit file %s: closed while %zu events waited: lost",
                      shown_path(fs), b->nrecs);
            pgw_sink_batch_put(s, b);
            return -EPIPE;
        }
    }
    b->next = NULL;
    if (fs->tail) {
        fs->tail->next = b;
    } else {
        fs->head = b;
        fs->head_born_ms = pgw_mono_ms();
    }
    fs->tail = b;
    fs->queued_bytes += len;
    fs->queued_events += b->nrecs;
    fs->submitted++;
    if (fs->writer_idle && (!fs->spooled || fs->queued_bytes >= fs->base.limits.batch_bytes))
        pthread_cond_signal(&fs->work);
    pthread_mutex_unlock(&fs->mu);
    return 0;
}

static int fs_flush(pgw_sink_t *s, int timeout_ms)
{
    file_sink_t *fs = (file_sink_t *)s;
    int rc = 0;
    struct timespec deadline = abs_ms(pgw_mono_ms() + (timeout_ms > 0 ? timeout_ms : 0));

    pthread_mutex_lock(&fs->mu);
    uint64_t target = fs->submitted;
    if (fs->fsync_interval_ms && fs->sync_target < target)
        fs->sync_target = target;
    if (fs->write_target < target)
        fs->write_target = target;
    pthread_cond_signal(&fs->work);
    fs->done_waiters++;
    while ((fs->completed < target || fs->synced < target) && !fs->writer_exited) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&fs->done, &fs->mu);
        } else if (pthread_cond_timedwait(&fs->done, &fs->mu, &deadline) == ETIMEDOUT) {
            rc = -ETIMEDOUT;
            break;
        }
    }
    fs->done_waiters--;
    pthread_mutex_unlock(&fs->mu);
    return rc;
}

static int fs_reopen(pgw_sink_t *s)
{
    file_sink_t *fs = (file_sink_t *)s;

    pthread_mutex_lock(&fs->mu);
    fs->reopen_req = true;
    pthread_cond_signal(&fs->work);
    pthread_mutex_unlock(&fs->mu);
    return 0;
}

static void fs_unblock(pgw_sink_t *s)
{
    file_sink_t *fs = (file_sink_t *)s;

    pthread_mutex_lock(&fs->mu);
    fs->unblocked = true;
    pthread_cond_broadcast(&fs->room);
    pthread_mutex_unlock(&fs->mu);
    if (fs->spooled)
        pgw_spooler_unblock(&fs->spooler);
}

static void fs_health(pgw_sink_t *s, pgw_sink_health_t *h)
{
    file_sink_t *fs = (file_sink_t *)s;

    memset(h, 0, sizeof(*h));
    h->ok = atomic_load(&fs->ok);
    h->last_errno = atomic_load(&fs->last_errno);
    h->events = atomic_load(&fs->events);
    h->bytes = atomic_load(&fs->bytes);
    h->batches = atomic_load(&fs->batches);
    h->write_errors = atomic_load(&fs->errors);
    h->rotations = atomic_load(&fs->rotations);
    h->reopens = atomic_load(&fs->reopens);
    h->fsyncs = atomic_load(&fs->fsyncs);
    h->producer_waits = atomic_load(&fs->waits);
    h->producer_wait_us = atomic_load(&fs->wait_us);
    h->events_lost = atomic_load(&fs->lost);
    if (fs->spooled) {
        pgw_spooler_stats_t sp;
        pgw_spooler_stats(&fs->spooler, &sp);
        h->spool_bytes = sp.bytes;
        h->replayed = atomic_load(&fs->replayed);
        h->producer_waits += sp.waits;      /* statements held back by a full spool */
        h->producer_wait_us += sp.wait_us;
        h->write_errors += sp.failed_appends;
    }
    pthread_mutex_lock(&fs->mu);
    h->queued_events = fs->queued_events;
    h->queued_bytes = fs->queued_bytes;
    pthread_mutex_unlock(&fs->mu);
}

static void fs_free(file_sink_t *fs)
{
    if (fs->spooled)
        pgw_spooler_destroy(&fs->spooler);   /* after the writer: it released what it wrote */
    while (fs->replayed_segs) {
        pgw_spool_seg_t *seg = fs->replayed_segs;
        fs->replayed_segs = seg->next;
        free(seg->path);
        free(seg);
    }
    pthread_cond_destroy(&fs->work);
    pthread_cond_destroy(&fs->room);
    pthread_cond_destroy(&fs->done);
    pthread_mutex_destroy(&fs->mu);
    pgw_sink_base_destroy(&fs->base);
    free(fs->path);
    free(fs->name_a);
    free(fs->name_b);
    free(fs);
}

static void fs_close(pgw_sink_t *s)
{
    file_sink_t *fs = (file_sink_t *)s;

    pthread_mutex_lock(&fs->mu);
    fs->stop = true;
    fs->stop_deadline_ms = pgw_mono_ms() + fs->close_timeout_ms;
    pthread_cond_signal(&fs->work);
    pthread_mutex_unlock(&fs->mu);
    pthread_join(fs->thread, NULL);
    fs_free(fs);
}

static const pgw_sink_ops_t file_sink_ops = {
    .name = "file",
    .submit_batch = fs_submit_batch,
    .submit = pgw_sink_submit_as_batch,
    .flush = fs_flush,
    .reopen = fs_reopen,
    .health = fs_health,
    .unblock = fs_unblock,
    .close = fs_close,
};
/* ------------------------------------------------------------ open */

int pgw_file_sink_open(const pgw_file_sink_config_t *cfg, pgw_sink_t **out)
{
    file_sink_t *fs = calloc(1, sizeof(*fs));
    pthread_condattr_t ca;
    int rc;

    *out = NULL;
    if (!fs)
        return -ENOMEM;
    if (strcmp(cfg->path, "-") != 0) {
        size_t n = strlen(cfg->path) + 16;
        fs->path = strdup(cfg->path);
        fs->name_a = malloc(n);
        fs->name_b = malloc(n);
        if (!fs->path || !fs->name_a || !fs->name_b) {
            free(fs->path);
            free(fs->name_a);
            free(fs->name_b);
            free(fs);
            return -ENOMEM;
        }
    }
    fs->max_bytes = cfg->max_bytes;
    fs->keep = cfg->keep ? cfg->keep : FILE_KEEP_DEFAULT;
    fs->fsync_interval_ms = cfg->fsync_interval_ms;
    fs->close_timeout_ms = cfg->close_timeout_ms ? cfg->close_timeout_ms
                                                 : FILE_CLOSE_TIMEOUT_MS_DEFAULT;
    fs->mode = cfg->file_mode ? cfg->file_mode : FILE_MODE_DEFAULT;
    fs->max_queued = cfg->max_queued_bytes ? cfg->max_queued_bytes : FILE_MAX_QUEUED_DEFAULT;
    fs->retry_ms = RETRY_MIN_MS;
    fs->fd = -1;
    fs->last_sync_ms = pgw_mono_ms();
    atomic_init(&fs->ok, true);
    pgw_sink_base_init(&fs->base, &file_sink_ops, &cfg->limits);

    pthread_mutex_init(&fs->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);   /* deadlines use pgw_mono_ms() */
    pthread_cond_init(&fs->work, &ca);
    pthread_cond_init(&fs->room, &ca);
    pthread_cond_init(&fs->done, &ca);
    pthread_condattr_destroy(&ca);

    /* Fail at start-up, not at the first event, when the path is wrong. */
    rc = open_file(fs, true);
    if (rc != 0) {
        pgw_error("audit file %s: %s", cfg->path, strerror(-rc));
        fs_free(fs);
        return rc;
    }
    rc = pthread_create(&fs->thread, NULL, writer_main, fs);
    if (rc != 0) {
        pgw_error("audit file %s: cannot start the writer thread: %s", cfg->path, strerror(rc));
        close_file(fs);
        fs_free(fs);
        return -rc;
    }
    pthread_setname_np(fs->thread, "pgw-audit-file");
    *out = &fs->base;
    if (!cfg->spool_dir)
        return 0;

    /* The writer runs: the replay's batches wait for room as others do. */
    rc = pgw_spooler_init(&fs->spooler, cfg->spool_dir, cfg->spool_max_bytes, SPOOL_SEG_CAP,
                          PGW_SPOOL_BLOCK, "audit file");
    if (rc == 0) {
        fs->spooled = true;
        fs->base.durable = true;
        rc = file_replay_spool(fs, cfg->spool_dir);
    }
    if (rc != 0) {
        pgw_error("audit file %s: spool %s: %s", shown_path(fs), cfg->spool_dir, strerror(-rc));
        fs_close(&fs->base);
        *out = NULL;
        return rc;
    }
    pgw_info("audit file %s: statements are spooled in %s before they are forwarded",
             shown_path(fs), cfg->spool_dir);
    return 0;
}
