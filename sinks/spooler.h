/* The spool of a durable sink, as the threads that hand it batches use it.
 *
 * Each thread appends to a lane of its own (a spool writer, found through a
 * pthread key), so threads never share a segment file or a lock on the hot
 * path. One append per batch: its begin records (statements about to be
 * forwarded) and its events. The sink then delivers the events (Kafka
 * produces them, the file sink writes them) and releases one segment
 * reference per event delivered; a segment with nothing left to deliver is
 * deleted. What is not delivered when pgwarden stops or crashes is
 * delivered by the next start (pgw_spool_replay).
 *
 * The size cap applies to new statements: under `block`, a full spool
 * holds back a batch's begin records (the loop thread waits, so its
 * statements are not forwarded) while its events, which let the segments
 * of earlier begins go, are written past the cap. Under `drop`, the whole
 * batch is dropped and the sink counts it. */
#ifndef PGW_SPOOLER_H
#define PGW_SPOOLER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "pgwarden/sink.h"
#include "spool.h"

#define PGW_SPOOL_MAX_DEFAULT ((uint64_t)1 << 30)

typedef struct pgw_spool_lane {
    struct pgw_spool_lane *next;    /* in pgw_spooler_t.lanes */
    pgw_spool_writer_t writer;
    pgw_jbuf_t out;                 /* the records of one append */
    void *sink_state;               /* the sink's, its owner thread only (Kafka: the open span) */
} pgw_spool_lane_t;

typedef struct pgw_spooler {
    pgw_spool_t spool;
    const char *who;                /* log prefix: "kafka", "audit file" */
    uint64_t max;                   /* size cap, bytes of records */
    uint64_t seg_max;
    pgw_spool_policy_t policy;
    pthread_key_t lane_key;
    pthread_mutex_t mu;
    pthread_cond_t room;            /* block policy: appends wait for deletions */
    pgw_spool_lane_t *lanes;        /* mu */
    bool unblocked;                 /* mu: shutdown, appends no longer wait */
    _Atomic uint64_t write_errors, waits, wait_us;
    _Atomic int last_errno;
} pgw_spooler_t;

/* Opens the spool directory (created 0700) with a cap of max_bytes
 * (0: 1 GiB). Segments take an eighth of the cap, at most seg_cap: what a
 * crash sends again is the events of the segments still present, so a
 * smaller segment means fewer duplicates, a larger one fewer files.
 * Replaying what an earlier run left is the sink's (pgw_spool_replay on
 * &s->spool). Returns 0 or -errno, logged. */
int pgw_spooler_init(pgw_spooler_t *s, const char *dir, uint64_t max_bytes, uint64_t seg_cap,
                     pgw_spool_policy_t policy, const char *who)
    __attribute__((warn_unused_result));
/* Closes every lane (segments still needed stay on disk) and the spool. */
void pgw_spooler_destroy(pgw_spooler_t *s);

/* The calling thread's lane, made on first use; NULL when out of memory
 * (logged by the caller: its events then go unspooled). */
pgw_spool_lane_t *pgw_spooler_lane(pgw_spooler_t *s);

/* The events of b (its records that are not begins). */
size_t pgw_spooler_events(const pgw_batch_t *b);

typedef enum pgw_spooled {
    PGW_SPOOLED,                    /* *seg holds one reference per event */
    PGW_SPOOL_UNSPOOLED,            /* out of memory, or given up at shutdown: deliver anyway */
    PGW_SPOOL_DROPPED,              /* full under `drop`: the caller counts the events */
} pgw_spooled_t;

/* Spools b's records in lane l (the calling thread's), tracking its begins
 * and resolving the begins its events complete; nsend is
 * pgw_spooler_events(b), which the caller needs anyway. Retries a failing write
 * (the crash guarantee depends on it) until it succeeds or shutdown. On
 * PGW_SPOOLED, *seg is the segment holding b's events, or NULL when b has
 * none. */
pgw_spooled_t pgw_spooler_append(pgw_spooler_t *s, pgw_spool_lane_t *l, const pgw_batch_t *b,
                                 size_t nsend, pgw_spool_seg_t **seg);

/* Shutdown: appends stop waiting for room (and for a failing disk). */
void pgw_spooler_unblock(pgw_spooler_t *s);

typedef struct pgw_spooler_stats {
    uint64_t bytes;                 /* on disk now */
    uint64_t writes, bytes_written, write_errors; /* the lanes' writes, all time */
    uint64_t failed_appends;        /* appends that failed (each retried) */
    uint64_t waits, wait_us;        /* appends held back by the cap */
} pgw_spooler_stats_t;
void pgw_spooler_stats(pgw_spooler_t *s, pgw_spooler_stats_t *out);

#endif
