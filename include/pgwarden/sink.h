/* Audit sinks: where encoded events go (a file, stdout, Kafka).
 *
 * Events travel in batches. Each loop thread owns a producer
 * (pgw_sink_producer_t) with a batch of its own: pgw_sink_emit() encodes an
 * event straight into that batch with no lock and no allocation once the
 * batch has its working size. A batch is handed to the sink when it is full,
 * when its first event is older than `max_delay_us` (pgw_sink_producer_tick,
 * called by the loop at the end of each iteration and from a timer armed with
 * pgw_sink_producer_due_ms), or on pgw_sink_producer_flush. A hand-off costs
 * one short mutex section in the sink (a pointer append), never disk I/O.
 *
 * Ordering: the events of one producer reach the sink in the order they
 * were emitted. Events of different producers interleave by batch.
 *
 * Loss: no event is dropped silently. A sink that cannot write retries and
 * counts the failures (pgw_sink_health_t); once its queue passes its memory
 * cap, hand-offs wait (the "block" policy: the audit trail stays complete
 * and the forwarding thread slows down) and the waits are counted, until
 * shutdown lifts the cap (pgw_sink_unblock). Events
 * are only lost when the sink is closed while writes still fail after its
 * close timeout, and then they are counted in `events_lost` and logged. */
#ifndef PGWARDEN_SINK_H
#define PGWARDEN_SINK_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "pgwarden/event.h"
#include "pgwarden/json.h"

/* CLOCK_MONOTONIC, for the sinks' delays and timeouts. */
static inline int64_t pgw_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}
static inline int64_t pgw_mono_ms(void) { return pgw_mono_us() / 1000; }
/* CLOCK_REALTIME ms from now: a deadline for pthread_cond_timedwait on a
 * condition with the default clock. */
static inline struct timespec pgw_realtime_after_ms(int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    return ts;
}

/* ------------------------------------------------------------ batches */

typedef struct pgw_batch_rec {
    size_t end;                  /* offset just past this event's '\n' in data */
    size_t key_end;              /* offset just past this event's key in keys */
    /* Durable sinks only (pgw_sink_t.durable), zero otherwise: `begin` marks
     * a statement about to be forwarded (its event with status unknown, kept
     * in the spool but not sent unless a restart finds no completion), and
     * `token` names it; an ordinary event with a token completes that begin.
     * A begin that is also `withdrawn` carries no event (its line is empty):
     * the begin of its token will have no completion, its statement never
     * ran (pipelined behind a login that failed). */
    uint64_t token;
    bool begin;
    bool withdrawn;
} pgw_batch_rec_t;

/* Complete events, back to back: data holds the JSON lines exactly as they
 * are written to a file; recs[i] tells where event i ends, and its key (the
 * session id, the Kafka message key) sits in keys. A batch is owned by one
 * thread at a time: its producer until handed over, then the sink. */
typedef struct pgw_batch {
    struct pgw_batch *next;      /* link for whoever holds the batch */
    pgw_jbuf_t data;
    pgw_jbuf_t keys;
    pgw_batch_rec_t *recs;
    size_t nrecs, caprecs;
    /* A sink that spools before delivering (the file sink with a spool):
     * the segment holding these events, one reference per event, released
     * once they are delivered; NULL otherwise. */
    struct pgw_spool_seg *spool_seg;
    uint64_t spool_refs;
} pgw_batch_t;

/* Appends one encoded event, which must be a single line ending in '\n',
 * with its key (absent key: empty). Returns 0 or -ENOMEM (batch unchanged). */
int pgw_batch_append(pgw_batch_t *b, const void *line, size_t len, pgw_str_t key)
    __attribute__((warn_unused_result));
/* The start of event i in data. */
static inline size_t pgw_batch_start(const pgw_batch_t *b, size_t i)
{
    return i ? b->recs[i - 1].end : 0;
}

/* ------------------------------------------------------------ sinks */

typedef struct pgw_sink pgw_sink_t;

/* Counters are totals since the sink was opened, safe to read from any
 * thread (e.g. the metrics endpoint) through pgw_sink_health(). */
typedef struct pgw_sink_health {
    bool ok;                     /* no failure since the last successful write */
    int last_errno;              /* of the most recent failure; 0 if none ever */
    uint64_t events;             /* events written (file) or acknowledged (Kafka) */
    uint64_t bytes;              /* bytes of those events */
    uint64_t batches;            /* batches completed */
    uint64_t write_errors;       /* failed attempts (write, open, rename, fsync); each retried */
    uint64_t rotations;
    uint64_t reopens;            /* on request (SIGHUP) and after errors */
    uint64_t fsyncs;
    uint64_t producer_waits;     /* hand-offs that waited for room in the queue */
    uint64_t producer_wait_us;   /* total time they waited */
    uint64_t events_lost;        /* given up at close (see above); always logged */
    uint64_t queued_events;      /* handed over, not yet written */
    uint64_t queued_bytes;
    uint64_t spool_bytes;        /* durable sinks: the spool on disk */
    uint64_t replayed;           /* durable sinks: events delivered again from the spool at open */
} pgw_sink_health_t;

/* What every sink implements. Every function may be called from any thread
 * unless noted; a sink serializes internally. */
typedef struct pgw_sink_ops {
    const char *name;            /* "file", "kafka" */
    /* Takes ownership of b (with at least one event) in every case. Waits
     * while the sink's queue is over its cap. Returns 0, or -EPIPE when the
     * sink is closing (the batch's events are then counted lost and logged). */
    int (*submit_batch)(pgw_sink_t *s, pgw_batch_t *b);
    /* One encoded event (a line ending in '\n') and its key, copied; for
     * threads without a producer (rare events from the main thread). */
    int (*submit)(pgw_sink_t *s, const void *line, size_t len, pgw_str_t key);
    /* Waits until everything submitted before the call is written (and
     * synced to disk when the sink syncs at all). timeout_ms < 0: no limit.
     * Returns 0 or -ETIMEDOUT. */
    int (*flush)(pgw_sink_t *s, int timeout_ms);
    /* Asks the sink to reopen its output (SIGHUP after an external
     * rotation); returns at once, the reopen happens in the sink's thread. */
    int (*reopen)(pgw_sink_t *s);
    void (*health)(pgw_sink_t *s, pgw_sink_health_t *out);
    /* Shutdown: hand-offs stop waiting for room from now on (they are still
     * queued and written, beyond the memory cap), so loop threads held back
     * by a stuck output can finish. Call it when shutdown begins, before
     * waiting for the loop threads. */
    void (*unblock)(pgw_sink_t *s);
    /* Writes what is queued (retrying up to the close timeout), stops the
     * sink's threads and frees it. Call once, after every producer is done. */
    void (*close)(pgw_sink_t *s);
} pgw_sink_ops_t;

/* Batching limits, common to all sinks. Zero fields take the defaults. */
typedef struct pgw_sink_limits {
    size_t batch_bytes;          /* hand a batch over once it holds this (64 KiB) */
    uint32_t max_delay_us;       /* ... or once its first event is this old (10 ms: fewer, larger writes) */
    size_t max_event_bytes;      /* larger encoded events are refused (16 MiB) */
} pgw_sink_limits_t;

#define PGW_SINK_BATCH_BYTES_DEFAULT (64u * 1024)
#define PGW_SINK_MAX_DELAY_US_DEFAULT 10000u
#define PGW_SINK_MAX_EVENT_DEFAULT (16u * 1024 * 1024)
#define PGW_SINK_POOL_MAX 64u    /* free batches kept for reuse */

/* The part every sink embeds first. Implementations fill it with
 * pgw_sink_base_init and use the batch pool below; users only call the
 * wrappers. */
struct pgw_sink {
    const pgw_sink_ops_t *ops;
    pgw_sink_limits_t limits;
    /* Set by sinks that spool: loop threads then hand their batch over at
     * the end of every iteration (one spool write each), and statements
     * are recorded as begun before their bytes are forwarded. */
    bool durable;
    pthread_mutex_t pool_mu;     /* guards pool and npool only */
    pgw_batch_t *pool;
    unsigned npool;
};

void pgw_sink_base_init(pgw_sink_t *s, const pgw_sink_ops_t *ops, const pgw_sink_limits_t *limits);
void pgw_sink_base_destroy(pgw_sink_t *s);
/* An empty batch from the pool or freshly allocated; NULL when out of memory. */
pgw_batch_t *pgw_sink_batch_get(pgw_sink_t *s);
/* Empties b and returns it to the pool (or frees it: pool full, or b grew
 * well past batch_bytes for one huge event). */
void pgw_sink_batch_put(pgw_sink_t *s, pgw_batch_t *b);
/* A `submit` for sinks that take everything as batches. */
int pgw_sink_submit_as_batch(pgw_sink_t *s, const void *line, size_t len, pgw_str_t key);

static inline int pgw_sink_submit_batch(pgw_sink_t *s, pgw_batch_t *b) { return s->ops->submit_batch(s, b); }
static inline int pgw_sink_submit(pgw_sink_t *s, const void *line, size_t len, pgw_str_t key)
{
    return s->ops->submit(s, line, len, key);
}
static inline int pgw_sink_flush(pgw_sink_t *s, int timeout_ms) { return s->ops->flush(s, timeout_ms); }
static inline int pgw_sink_reopen(pgw_sink_t *s) { return s->ops->reopen(s); }
static inline void pgw_sink_health(pgw_sink_t *s, pgw_sink_health_t *h) { s->ops->health(s, h); }
static inline void pgw_sink_unblock(pgw_sink_t *s) { s->ops->unblock(s); }
static inline void pgw_sink_close(pgw_sink_t *s) { s->ops->close(s); }

/* ------------------------------------------------------------ producers */

/* One per loop thread, used by that thread only, except the counters,
 * which other threads (metrics) may read with atomic_load. */
typedef struct pgw_sink_producer {
    pgw_sink_t *sink;
    pgw_batch_t *batch;          /* being filled; NULL when nothing is pending */
    int64_t batch_born_us;       /* CLOCK_MONOTONIC when its first event came */
    int64_t now_us;              /* the owner's idea of CLOCK_MONOTONIC now, e.g. its
                                  * loop's cached time; 0: the clock is read */
    _Atomic uint64_t events;     /* encoded and accepted into a batch */
    _Atomic uint64_t refused;    /* could not be encoded (too large, out of memory) */
    _Atomic uint64_t shrunk;     /* over max_event_bytes, recorded shrunk (in events too) */
} pgw_sink_producer_t;

void pgw_sink_producer_init(pgw_sink_producer_t *p, pgw_sink_t *s);
/* Encodes ev into this thread's batch and hands the batch over when full.
 * An event over max_event_bytes is encoded again without its parameter
 * values, with its message and text cut (counted in `shrunk`, logged).
 * ev is only read during the call. Returns 0, or
 *   -EINVAL  bad kind; -E2BIG encoded event over max_event_bytes;
 *   -ENOMEM  out of memory;
 * each counted in `refused` and logged, so a caller may ignore the result.
 * A hand-off may wait (block policy) but its errors are the sink's to
 * count, not this event's. */
int pgw_sink_emit(pgw_sink_producer_t *p, const pgw_event_t *ev);
/* The same, for durable sinks: begin and token as in pgw_batch_rec_t. */
int pgw_sink_emit_rec(pgw_sink_producer_t *p, const pgw_event_t *ev, bool begin, uint64_t token);
/* A begin record whose head (pgw_event_encode_head_len) the caller keeps
 * for its completion (ev->head_json): on success the head is also appended
 * to head and *head_len is its length, or 0 when it was not kept (the
 * event had to be shrunk, or head is at its max). */
int pgw_sink_emit_begin(pgw_sink_producer_t *p, const pgw_event_t *ev, uint64_t token,
                        pgw_jbuf_t *head, size_t *head_len);
/* Durable sinks: the begin record of token will have no completion (its
 * statement never ran); key is its session id. Returns 0 or -ENOMEM
 * (counted in `refused` and logged: the begin is then written as unknown
 * after a restart). */
int pgw_sink_withdraw(pgw_sink_producer_t *p, uint64_t token, pgw_str_t key);
/* Hands the batch over if its first event is at least max_delay_us old. */
void pgw_sink_producer_tick(pgw_sink_producer_t *p);
/* Milliseconds until tick would hand the batch over (0: now), or -1 when
 * nothing is pending: the loop arms a timer with it. */
int pgw_sink_producer_due_ms(const pgw_sink_producer_t *p);
/* Hands over whatever is pending. */
void pgw_sink_producer_flush(pgw_sink_producer_t *p);
/* Flushes; the producer may be initialised again afterwards. */
void pgw_sink_producer_close(pgw_sink_producer_t *p);

/* ------------------------------------------------------------ file sink */

typedef struct pgw_file_sink_config {
    const char *path;            /* copied; "-" is standard output (no rotation, no reopen) */
    uint64_t max_bytes;          /* rotate before the file would pass this; 0: never */
    unsigned keep;               /* rotated files kept, path.1 (newest) .. path.keep; 0: 5 */
    unsigned fsync_interval_ms;  /* 0: never fsync; else fdatasync at most this long after a write */
    size_t max_queued_bytes;     /* hand-offs wait above this; 0: 64 MiB */
    unsigned close_timeout_ms;   /* retrying failed writes at close; 0: 10 s */
    unsigned file_mode;          /* for a created file; 0: 0600 (events hold SQL) */
    /* A durable spool (as the Kafka sink's, full policy `block`): every
     * statement is recorded there before it is forwarded and every event
     * until it is written, so a crash of pgwarden loses nothing; the next
     * open writes what is left, statements never answered with status
     * unknown. NULL: no spool (a crash loses the events not yet written). */
    const char *spool_dir;
    uint64_t spool_max_bytes;    /* 0: 1 GiB */
    pgw_sink_limits_t limits;
} pgw_file_sink_config_t;

/* Opens (creates, appends to) the file and starts the writer thread. A file
 * that does not end in '\n' (a line cut by a crash) gets one first, so new
 * events never join a broken line. With a spool, what an earlier run left
 * there is written first (at-least-once: events written just before a
 * crash may appear twice, with the same event_id). Returns 0, or -errno from open(2) or
 * pthread_create, already logged. The writer never changes signal
 * dispositions: ignore SIGPIPE in the process when writing to a pipe. */
int pgw_file_sink_open(const pgw_file_sink_config_t *cfg, pgw_sink_t **out)
    __attribute__((warn_unused_result));

/* ------------------------------------------------------------ Kafka sink */

typedef enum pgw_spool_policy { PGW_SPOOL_BLOCK = 0, PGW_SPOOL_DROP } pgw_spool_policy_t;

typedef struct pgw_kafka_sink_config {
    const char *brokers;         /* bootstrap.servers */
    const char *topic;
    const char *const *props;    /* librdkafka properties, "name=value", applied last */
    size_t nprops;
    const char *spool_dir;       /* NULL: no spool (a crash loses what is unacknowledged) */
    uint64_t spool_max_bytes;    /* 0: 1 GiB */
    pgw_spool_policy_t policy;   /* when the spool is full */
    unsigned close_timeout_ms;   /* waiting for acknowledgements at close; 0: 5 s */
    const char *observer_host;   /* for the sink's own audit_gap events */
    const char *observer_instance;
    pgw_sink_limits_t limits;
} pgw_kafka_sink_config_t;

/* Counters beyond pgw_sink_health_t, totals since open, any thread. */
typedef struct pgw_kafka_stats {
    uint64_t produced;           /* handed to librdkafka (resends included) */
    uint64_t delivered;          /* acknowledged by the brokers */
    uint64_t delivery_errors;    /* failed deliveries, each sent again */
    uint64_t resent;
    uint64_t replayed;           /* events sent again from the spool at open */
    uint64_t producer_restarts;  /* after fatal (idempotence) errors */
    uint64_t dropped;            /* spool full under the drop policy */
    uint64_t gap_events;
    uint64_t spool_bytes;        /* on disk now */
    uint64_t spool_writes;
    uint64_t spool_bytes_written; /* records appended, all time (bytes per event: / produced) */
    uint64_t spool_write_errors;
    uint64_t outstanding;        /* produced, not yet acknowledged */
    /* Age of the oldest event in the spool not yet acknowledged (0: none),
     * to within the second of its append. */
    int64_t oldest_unacked_us;
} pgw_kafka_stats_t;

/* What librdkafka's statistics (statistics.interval.ms) said about a
 * broker, as read by pgw_kafka_rdstats_read; counters are made monotonic
 * across producer replacements by pgw_kafka_rdstats_merge. */
#define PGW_KAFKA_BROKER_NAME_MAX 128
#define PGW_KAFKA_BROKERS_MAX 32
typedef struct pgw_kafka_broker_stats {
    char name[PGW_KAFKA_BROKER_NAME_MAX]; /* librdkafka's "host:port/id" */
    bool present;                /* in the latest document */
    bool up;                     /* state UP in the latest document */
    int64_t rtt_p50_us, rtt_p99_us; /* over the latest interval; -1: no request answered */
    uint64_t rtt_sum_us, rtt_count; /* of every interval */
    uint64_t tx_errors, rx_errors, timeouts, disconnects, connects;
} pgw_kafka_broker_stats_t;

typedef struct pgw_kafka_client_stats {
    uint64_t documents;          /* statistics documents read; 0: nothing known yet */
    uint64_t queue_messages, queue_bytes; /* producer queues (msg_cnt, msg_size) */
    size_t nbrokers;
    pgw_kafka_broker_stats_t brokers[PGW_KAFKA_BROKERS_MAX];
} pgw_kafka_client_stats_t;

/* Reads one statistics document (JSON, len bytes, need not end in NUL)
 * into *out: the producer queue and the cluster's brokers (the bootstrap
 * and internal pseudo-brokers are left out), counters as librdkafka has
 * them. *client (may be NULL) gets the document's client instance name.
 * Returns 0, or -EINVAL when it is not a producer statistics object. */
int pgw_kafka_rdstats_read(const char *json, size_t len, pgw_kafka_client_stats_t *out,
                           char *client, size_t client_size);
/* Folds a document read by pgw_kafka_rdstats_read into the running totals
 * *acc: counters grow by what they grew since prev, the same client's
 * previous document (NULL for a new client: all of it counts). A counter
 * that went down counts from zero again, so acc's never decrease; the
 * gauges and rtt quantiles are the document's. Brokers past
 * PGW_KAFKA_BROKERS_MAX are left out. */
void pgw_kafka_rdstats_merge(pgw_kafka_client_stats_t *acc, const pgw_kafka_client_stats_t *prev,
                             const pgw_kafka_client_stats_t *doc);
/* The sink's latest statistics (documents == 0: none yet, or disabled). */
void pgw_kafka_sink_client_stats(pgw_sink_t *s, pgw_kafka_client_stats_t *out);

/* Creates the producer (idempotent, acks=all, lz4, key = session id) and
 * its poll thread, opens the spool and sends again what an earlier run
 * left in it. Broker connections are made in the background: an
 * unreachable cluster is logged, not an error here. Returns 0, or
 * -EINVAL (a bad librdkafka property, logged), -errno. */
int pgw_kafka_sink_open(const pgw_kafka_sink_config_t *cfg, pgw_sink_t **out)
    __attribute__((warn_unused_result));
void pgw_kafka_sink_stats(pgw_sink_t *s, pgw_kafka_stats_t *out);
/* Makes the current producer fail as librdkafka does on a fatal
 * idempotence error (rd_kafka_test_fatal_error): for tests. */
int pgw_kafka_sink_inject_fatal(pgw_sink_t *s);

#endif
