/* Private to the file sink (file_sink.c, file_replay.c): the sink's struct
 * and the two seams between the files. Not for other folders: they use
 * pgw_file_sink_open (pgwarden/sink.h). */
#ifndef PGW_FILE_SINK_INT_H
#define PGW_FILE_SINK_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "pgwarden/sink.h"
#include "spooler.h"

typedef struct file_sink {
    pgw_sink_t base;                 /* first: a pgw_sink_t * points here */
    char *path;                      /* owned copy; NULL for stdout */
    char *name_a, *name_b;           /* scratch for rotation names */
    uint64_t max_bytes;
    unsigned keep, fsync_interval_ms, close_timeout_ms, mode;
    size_t max_queued;

    bool spooled;
    pgw_spooler_t spooler;
    pgw_spool_seg_t *replayed_segs;  /* from the open's replay; freed at close */
    _Atomic uint64_t replayed;

    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t work;             /* the writer waits for batches or requests */
    pthread_cond_t room;             /* hand-offs over the cap wait */
    pthread_cond_t done;             /* flush() waits */

    /* Guarded by mu. */
    pgw_batch_t *head, *tail;
    size_t queued_bytes, queued_events;
    uint64_t submitted;              /* batches accepted */
    uint64_t completed;              /* batches written or given up */
    uint64_t synced;                 /* batches known durable (all completed when no fsync) */
    uint64_t sync_target;            /* a flush() wants batches up to here durable */
    uint64_t write_target;           /* ... and written, now (with a spool, see hold()) */
    int64_t head_born_ms;            /* when the queue's first batch came */
    unsigned room_waiters, done_waiters;
    bool writer_idle, stop, writer_exited, reopen_req;
    bool unblocked;                  /* shutdown: hand-offs no longer wait */
    int64_t stop_deadline_ms;

    /* Writer thread only. */
    int fd;                          /* -1: (re)open before the next write */
    uint64_t size;                   /* of the current file */
    bool dirty;                      /* written since the last fdatasync */
    bool giving_up;                  /* closing and past the deadline */
    bool mid_line;                   /* the file ends inside an event being written */
    int64_t last_sync_ms, last_errlog_ms, no_rotate_until_ms;
    unsigned retry_ms;

    /* Written by the writer (waits: by producers under mu), read by anyone. */
    _Atomic uint64_t events, bytes, batches, errors, rotations, reopens, fsyncs;
    _Atomic uint64_t waits, wait_us, lost;
    _Atomic int last_errno;
    _Atomic bool ok;
} file_sink_t;

static inline void add(_Atomic uint64_t *c, uint64_t n)
{
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

static inline const char *shown_path(const file_sink_t *fs)
{
    return fs->path ? fs->path : "(stdout)";
}

/* Queues b for the writer, waiting while the queue is over its cap (block
 * policy). Takes b in every case; -EPIPE (b given back, its events counted
 * lost) once the writer has exited. (file_sink.c) */
int file_sink_queue(file_sink_t *fs, pgw_batch_t *b);

/* Writes again what the spool holds from an earlier run: each segment's
 * events not in the file's tail become batches queued with
 * file_sink_queue, whose spool references are released once written.
 * Needs the writer running and fs->spooler open. Returns 0 (events that
 * could not be queued for want of memory stay in the spool, logged) or the
 * spool's negative error. (file_replay.c) */
int file_replay_spool(file_sink_t *fs, const char *dir);

#endif
