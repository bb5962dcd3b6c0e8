/* The Kafka sink: every event goes into the durable spool (spool.h) and is
 * then produced with librdkafka; a spool segment is deleted once every
 * event in it has been acknowledged.
 *
 * Threads. A loop thread's batch is spooled and produced in the loop
 * thread itself, in pgw_sink_submit_batch: each thread appends to segments
 * of its own (a "lane", found through a pthread key), so the hot path takes
 * no lock of this sink's, only librdkafka's own queue lock. One poll thread
 * serves delivery reports, sends again what failed, replaces the producer
 * after a fatal error, and writes the audit_gap event after drops.
 *
 * No loss. librdkafka retries forever (message.timeout.ms=0); a delivery
 * that still fails, an event that could not be enqueued and every event
 * in flight when the producer had to be replaced are kept in memory
 * (resend list) and produced again. Only an acknowledged event releases
 * its segment, so whatever was not acknowledged when pgwarden stops, or
 * crashes, is sent again by the next start (at-least-once). */
#include "pgwarden/sink.h"

#include <errno.h>
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "spool.h"

#define SPOOL_MAX_DEFAULT (1ull << 30)
#define SEG_MAX (16ull * 1024 * 1024)
#define SEG_MIN (64ull * 1024)
#define CLOSE_TIMEOUT_MS_DEFAULT 5000u
#define POLL_MS 50
#define RESTART_DRAIN_MS 5000       /* waiting for a failed producer's reports */
#define ERROR_LOG_EVERY_MS 10000

typedef struct resend {
    struct resend *next;
    pgw_spool_seg_t *seg;
    size_t key_len, value_len;
    uint8_t data[];                 /* key, then value */
} resend_t;

typedef struct lane {
    struct lane *next;
    pgw_spool_writer_t writer;
    pgw_jbuf_t out;                 /* records of one append */
    pgw_spool_seg_t **holders;      /* scratch: segment per event */
} lane_t;

typedef struct kafka_sink {
    pgw_sink_t base;                /* first: a pgw_sink_t * points here */
    char *topic;
    rd_kafka_conf_t *conf;          /* template for (re)creating the producer */
    pthread_rwlock_t rk_lock;       /* produce: read; replacing the producer: write */
    rd_kafka_t *rk;
    rd_kafka_topic_t *rkt;

    bool spooled;
    pgw_spool_t spool;
    pgw_spool_seg_t *replayed_segs; /* from the start's replay; freed at close */
    uint64_t spool_max, seg_max;
    pgw_spool_policy_t policy;
    unsigned close_timeout_ms;
    pthread_key_t lane_key;

    pthread_t poller;
    pthread_mutex_t mu;
    pthread_cond_t room;            /* block policy: appends wait for deletions */
    pthread_cond_t acked;           /* flush() waits */
    /* Guarded by mu. */
    lane_t *lanes;
    resend_t *resend, **resend_tail;
    bool stop, unblocked, fatal;
    uint64_t gap_dropped;           /* dropped since the last gap event */
    int64_t gap_from_us, gap_to_us;
    int64_t last_err_log_ms;
    lane_t *poll_lane;              /* the poll thread's own (gap events) */

    char host[256], instance[40];
    pgw_uuid7_t uuid;               /* poll thread only */

    _Atomic uint64_t produced, delivered, delivery_errors, resent, replayed, restarts;
    _Atomic uint64_t dropped, gaps, outstanding, bytes, batches, waits, wait_us, lost;
    _Atomic uint64_t write_errors;
    _Atomic int64_t last_delivery_us;
    _Atomic int last_errno;
    _Atomic bool ok;
} kafka_sink_t;

static struct timespec abs_real_ms(int ms)
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

static inline void add(_Atomic uint64_t *c, uint64_t n)
{
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

/* ------------------------------------------------------------ producing */

static void to_resend(kafka_sink_t *ks, const void *key, size_t klen, const void *val, size_t vlen,
                      pgw_spool_seg_t *seg)
{
    resend_t *r = malloc(sizeof *r + klen + vlen);
    if (!r) {
        /* The event stays in its segment (never released): the next start
         * sends it. */
        add(&ks->lost, 1);
        pgw_error("kafka: out of memory keeping an event to send again; it stays in the spool "
                  "for the next start");
        return;
    }
    r->next = NULL;
    r->seg = seg;
    r->key_len = klen;
    r->value_len = vlen;
    if (klen)
        memcpy(r->data, key, klen);
    memcpy(r->data + klen, val, vlen);
    pthread_mutex_lock(&ks->mu);
    *ks->resend_tail = r;
    ks->resend_tail = &r->next;
    pthread_mutex_unlock(&ks->mu);
}

/* One event to librdkafka; on failure it goes to the resend list. Each call
 * is one outstanding event until its delivery report. Caller holds rk_lock
 * (read). */
static void produce_locked(kafka_sink_t *ks, const void *key, size_t klen, const void *val,
                           size_t vlen, pgw_spool_seg_t *seg)
{
    rd_kafka_resp_err_t err = rd_kafka_producev(
        ks->rk, RD_KAFKA_V_RKT(ks->rkt), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_VALUE((void *)(uintptr_t)val, vlen),
        RD_KAFKA_V_KEY(klen ? key : NULL, klen), RD_KAFKA_V_OPAQUE(seg), RD_KAFKA_V_END);
    add(&ks->produced, 1);
    if (err)
        to_resend(ks, key, klen, val, vlen, seg);
}

/* The events of b (not its begin records, which only the spool keeps) in
 * chunks of rd_kafka_produce_batch: librdkafka then reads its clock and
 * takes the topic's lock once per chunk instead of once per event, the
 * largest part of producing from a loop thread. The partitioner still
 * places each event by its key. Caller holds rk_lock (read). */
static void produce_batch_locked(kafka_sink_t *ks, const pgw_batch_t *b, pgw_spool_seg_t *seg)
{
    enum { CHUNK = 64 };
    rd_kafka_message_t msgs[CHUNK];
    size_t i = 0;
    while (i < b->nrecs) {
        int n = 0;
        for (; i < b->nrecs && n < CHUNK; i++) {
            const pgw_batch_rec_t *r = &b->recs[i];
            if (r->begin)
                continue;
            size_t s = pgw_batch_start(b, i), k0 = i ? b->recs[i - 1].key_end : 0;
            memset(&msgs[n], 0, sizeof msgs[n]);
            msgs[n].payload = b->data.data + s;
            msgs[n].len = r->end - s - 1;            /* without the newline */
            msgs[n].key = r->key_end > k0 ? b->keys.data + k0 : NULL;
            msgs[n].key_len = r->key_end - k0;
            msgs[n]._private = seg;
            n++;
        }
        if (!n)
            break;
        int queued = rd_kafka_produce_batch(ks->rkt, RD_KAFKA_PARTITION_UA, RD_KAFKA_MSG_F_COPY,
                                            msgs, n);
        add(&ks->produced, (uint64_t)n);
        if (queued == n)
            continue;
        for (int j = 0; j < n; j++)
            if (msgs[j].err)
                to_resend(ks, msgs[j].key, msgs[j].key_len, msgs[j].payload, msgs[j].len, seg);
    }
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    kafka_sink_t *ks = opaque;
    pgw_spool_seg_t *seg = m->_private;
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        add(&ks->delivered, 1);
        add(&ks->bytes, m->len);
        atomic_store(&ks->last_delivery_us, pgw_event_now_us());
        if (!atomic_exchange(&ks->ok, true))
            pgw_info("kafka: delivering to %s again", ks->topic);
        if (seg)
            pgw_spool_seg_release(seg, 1);
        if (atomic_fetch_sub(&ks->outstanding, 1) == 1) {
            pthread_mutex_lock(&ks->mu);
            pthread_cond_broadcast(&ks->acked);
            pthread_mutex_unlock(&ks->mu);
        }
        return;
    }
    add(&ks->delivery_errors, 1);
    atomic_store(&ks->ok, false);
    int64_t now = pgw_mono_ms();
    if (m->err != RD_KAFKA_RESP_ERR__PURGE_QUEUE && m->err != RD_KAFKA_RESP_ERR__PURGE_INFLIGHT &&
        now - ks->last_err_log_ms >= ERROR_LOG_EVERY_MS) {
        ks->last_err_log_ms = now;
        pgw_error("kafka: delivery to %s failed: %s; sending again", ks->topic,
                  rd_kafka_err2str(m->err));
    }
    to_resend(ks, m->key, m->key_len, m->payload, m->len, seg);
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    kafka_sink_t *ks = opaque;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[512];
        rd_kafka_fatal_error(rk, why, sizeof why);
        pgw_error("kafka: fatal producer error: %s; the producer is replaced and unacknowledged "
                  "events are sent again", why);
        pthread_mutex_lock(&ks->mu);
        ks->fatal = true;
        pthread_mutex_unlock(&ks->mu);
        return;
    }
    atomic_store(&ks->ok, false);
    int64_t now = pgw_mono_ms();
    if (now - ks->last_err_log_ms >= ERROR_LOG_EVERY_MS ||
        err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
        ks->last_err_log_ms = now;
        pgw_error("kafka: %s: %s (events wait in the spool)", rd_kafka_err2name(err), reason);
    }
}

static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    int lvl = level <= 3 ? PGW_LOG_ERROR : level == 4 ? PGW_LOG_WARN
            : level <= 6 ? PGW_LOG_INFO : PGW_LOG_DEBUG;
    /* librdkafka reports connection trouble through the error callback too. */
    if (lvl == PGW_LOG_ERROR)
        lvl = PGW_LOG_WARN;
    pgw_log(lvl, "kafka: %s: %s", fac, buf);
}

static int create_producer(kafka_sink_t *ks, rd_kafka_t **rk_out, rd_kafka_topic_t **rkt_out)
{
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_dup(ks->conf);
    rd_kafka_conf_set_opaque(conf, ks);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        pgw_error("kafka: cannot create the producer: %s", err);
        return -EINVAL;
    }
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, ks->topic, NULL);
    if (!rkt) {
        rd_kafka_destroy(rk);
        pgw_error("kafka: topic %s: %s", ks->topic, rd_kafka_err2str(rd_kafka_last_error()));
        return -EINVAL;
    }
    *rk_out = rk;
    *rkt_out = rkt;
    return 0;
}

/* After a fatal error: a new producer takes over at once (loop threads
 * produce into it), the old one's queue is purged and every message it
 * still held comes back through its delivery reports into the resend list. */
static void restart_producer(kafka_sink_t *ks)
{
    rd_kafka_t *rk;
    rd_kafka_topic_t *rkt;
    if (create_producer(ks, &rk, &rkt) != 0)
        return;                     /* tried again on the next poll */
    pthread_rwlock_wrlock(&ks->rk_lock);
    rd_kafka_t *old = ks->rk;
    rd_kafka_topic_t *old_rkt = ks->rkt;
    ks->rk = rk;
    ks->rkt = rkt;
    pthread_rwlock_unlock(&ks->rk_lock);
    pthread_mutex_lock(&ks->mu);
    ks->fatal = false;
    pthread_mutex_unlock(&ks->mu);

    rd_kafka_purge(old, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    int64_t until = pgw_mono_ms() + RESTART_DRAIN_MS;
    while (rd_kafka_outq_len(old) > 0 && pgw_mono_ms() < until)
        rd_kafka_poll(old, 50);
    int left = rd_kafka_outq_len(old);
    if (left > 0)
        pgw_error("kafka: %d event(s) of the failed producer gave no report; they stay in the "
                  "spool for the next start", left);
    rd_kafka_topic_destroy(old_rkt);
    rd_kafka_destroy(old);
    add(&ks->restarts, 1);
    pgw_warn("kafka: producer replaced after a fatal error");
}

static void send_resends(kafka_sink_t *ks)
{
    pthread_mutex_lock(&ks->mu);
    resend_t *list = ks->resend;
    ks->resend = NULL;
    ks->resend_tail = &ks->resend;
    pthread_mutex_unlock(&ks->mu);
    if (!list)
        return;
    pthread_rwlock_rdlock(&ks->rk_lock);
    while (list) {
        resend_t *r = list;
        list = r->next;
        produce_locked(ks, r->data, r->key_len, r->data + r->key_len, r->value_len, r->seg);
        add(&ks->resent, 1);
        free(r);
    }
    pthread_rwlock_unlock(&ks->rk_lock);
}

/* ------------------------------------------------------------ lanes */

static void lane_free(lane_t *l)
{
    pgw_spool_writer_close(&l->writer);
    pgw_jbuf_free(&l->out);
    free(l->holders);
    free(l);
}

static lane_t *lane_new(kafka_sink_t *ks)
{
    lane_t *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    pgw_spool_writer_init(&l->writer, &ks->spool, ks->seg_max);
    pgw_jbuf_init(&l->out, 0);
    pthread_mutex_lock(&ks->mu);
    l->next = ks->lanes;
    ks->lanes = l;
    pthread_mutex_unlock(&ks->mu);
    return l;
}

static lane_t *my_lane(kafka_sink_t *ks)
{
    lane_t *l = pthread_getspecific(ks->lane_key);
    if (!l && (l = lane_new(ks)) != NULL)
        pthread_setspecific(ks->lane_key, l);
    return l;
}

static void on_free_space(void *ud)
{
    kafka_sink_t *ks = ud;
    pthread_mutex_lock(&ks->mu);
    pthread_cond_broadcast(&ks->room);
    pthread_mutex_unlock(&ks->mu);
}

/* Block policy: waits until len more bytes fit under the cap (or
 * shutdown lifts the cap). */
static void make_room(kafka_sink_t *ks, size_t len)
{
    if (atomic_load(&ks->spool.bytes) + len <= ks->spool_max)
        return;
    int64_t t0 = pgw_mono_us();
    bool logged = false;
    pthread_mutex_lock(&ks->mu);
    while (!ks->unblocked && atomic_load(&ks->spool.bytes) + len > ks->spool_max) {
        if (!logged) {
            logged = true;
            pgw_warn("kafka: spool full (%" PRIu64 " bytes): statements wait until Kafka "
                     "acknowledges", (uint64_t)atomic_load(&ks->spool.bytes));
        }
        struct timespec ts = abs_real_ms(100);
        pthread_cond_timedwait(&ks->room, &ks->mu, &ts);
    }
    pthread_mutex_unlock(&ks->mu);
    add(&ks->waits, 1);
    add(&ks->wait_us, (uint64_t)(pgw_mono_us() - t0));
}

static void drop_batch(kafka_sink_t *ks, lane_t *l, pgw_batch_t *b)
{
    uint64_t n = 0;
    for (size_t i = 0; i < b->nrecs; i++) {
        const pgw_batch_rec_t *r = &b->recs[i];
        if (r->begin)
            continue;
        n++;
        if (r->token)
            pgw_spool_writer_resolve(&l->writer, r->token);
    }
    if (!n)
        return;
    int64_t now = pgw_event_now_us();
    add(&ks->dropped, n);
    pthread_mutex_lock(&ks->mu);
    if (ks->gap_dropped == 0) {
        ks->gap_from_us = now;
        pgw_error("kafka: spool full: dropping events (policy drop); an audit_gap event will "
                  "count them");
    }
    ks->gap_dropped += n;
    ks->gap_to_us = now;
    pthread_mutex_unlock(&ks->mu);
}

enum { ALL_RECS, EVENTS_ONLY, BEGINS_ONLY };

/* Encodes the records of b that filter selects into the lane's buffer. */
static size_t encode_batch(lane_t *l, const pgw_batch_t *b, int filter)
{
    size_t n = 0;
    pgw_jbuf_reset(&l->out);
    for (size_t i = 0; i < b->nrecs; i++) {
        const pgw_batch_rec_t *r = &b->recs[i];
        if ((filter == EVENTS_ONLY && r->begin) || (filter == BEGINS_ONLY && !r->begin))
            continue;
        size_t s = pgw_batch_start(b, i), k0 = i ? b->recs[i - 1].key_end : 0;
        pgw_spool_encode(&l->out, r->begin ? PGW_SPOOL_BEGIN : PGW_SPOOL_EVENT, r->token,
                         b->keys.data + k0, r->key_end - k0, b->data.data + s, r->end - s - 1);
        n++;
    }
    return n;
}

/* Writes the lane's buffer (retrying: a spool that cannot be written
 * holds statements back, as a full one does, since the crash guarantee
 * depends on it), then tracks the begins and resolves the completions of
 * the records filter selected. NULL: given up at shutdown. */
static pgw_spool_seg_t *append_batch(kafka_sink_t *ks, lane_t *l, const pgw_batch_t *b, int filter,
                                     int64_t holds)
{
    pgw_spool_seg_t *seg = NULL;
    int rc;
    int64_t retry_ms = 10;
    while ((rc = pgw_spool_writer_append(&l->writer, l->out.data, l->out.len, holds, &seg)) != 0) {
        add(&ks->write_errors, 1);
        atomic_store(&ks->last_errno, -rc);
        pgw_error("kafka: writing the spool failed: %s; retrying", strerror(-rc));
        pthread_mutex_lock(&ks->mu);
        bool give_up = ks->unblocked;
        pthread_mutex_unlock(&ks->mu);
        if (give_up) {
            pgw_error("kafka: shutting down: events are sent unspooled");
            return NULL;
        }
        struct timespec ts = { 0, retry_ms * 1000000 };
        nanosleep(&ts, NULL);
        if (retry_ms < 1000)
            retry_ms *= 2;
    }
    for (size_t i = 0; i < b->nrecs; i++) {
        const pgw_batch_rec_t *r = &b->recs[i];
        if ((filter == EVENTS_ONLY && r->begin) || (filter == BEGINS_ONLY && !r->begin))
            continue;
        if (r->begin) {
            if (pgw_spool_writer_track(&l->writer, r->token, seg) != 0)
                pgw_warn("kafka: out of memory tracking a begun statement");
        } else if (r->token) {
            pgw_spool_writer_resolve(&l->writer, r->token);
        }
    }
    pgw_spool_writer_sweep(&l->writer);
    return seg;
}

/* Spools (one write) and produces the events of b.
 *
 * The size cap applies to new statements: under `block`, a full spool
 * holds back the batch's begin records (the loop thread waits, so its
 * statements are not forwarded), while the completions and session
 * events it carries are written past the cap, since they are what lets
 * the segments of earlier begins go. Under `drop`, the whole batch is
 * dropped and counted. */
static void spool_and_produce(kafka_sink_t *ks, lane_t *l, pgw_batch_t *b)
{
    pgw_spool_seg_t *seg = NULL;
    size_t nsend = 0;
    for (size_t i = 0; i < b->nrecs; i++)
        nsend += !b->recs[i].begin;

    if (ks->spooled && l) {
        encode_batch(l, b, ALL_RECS);
        if (l->out.failed) {
            pgw_error("kafka: out of memory spooling %zu event(s); they are sent unspooled", nsend);
        } else if (atomic_load(&ks->spool.bytes) + l->out.len <= ks->spool_max) {
            seg = append_batch(ks, l, b, ALL_RECS, (int64_t)nsend);
        } else {
            /* This lane's open segment may hold acknowledged events only:
             * closing it lets its deletion free room. */
            pgw_spool_writer_seal(&l->writer);
            if (ks->policy == PGW_SPOOL_DROP &&
                atomic_load(&ks->spool.bytes) + l->out.len > ks->spool_max) {
                drop_batch(ks, l, b);
                return;
            }
            if (nsend && encode_batch(l, b, EVENTS_ONLY) && !l->out.failed)
                seg = append_batch(ks, l, b, EVENTS_ONLY, (int64_t)nsend);
            if (encode_batch(l, b, BEGINS_ONLY) && !l->out.failed) {
                make_room(ks, l->out.len);
                (void)append_batch(ks, l, b, BEGINS_ONLY, 0);
            }
        }
    }

    if (!nsend)
        return;
    add(&ks->outstanding, nsend);
    pthread_rwlock_rdlock(&ks->rk_lock);
    produce_batch_locked(ks, b, seg);
    pthread_rwlock_unlock(&ks->rk_lock);
}

/* ------------------------------------------------------------ gap events */

static void emit_gap(kafka_sink_t *ks)
{
    pthread_mutex_lock(&ks->mu);
    uint64_t n = ks->gap_dropped;
    int64_t from = ks->gap_from_us, to = ks->gap_to_us;
    pthread_mutex_unlock(&ks->mu);
    /* "Once Kafka is back": a delivery after the last drop. */
    if (!n || atomic_load(&ks->last_delivery_us) <= to)
        return;
    if (ks->spooled && atomic_load(&ks->spool.bytes) + 4096 > ks->spool_max)
        return;
    pgw_event_t ev;
    pgw_event_init(&ev, PGW_EVENT_AUDIT_GAP, pgw_event_now_us(), &ks->uuid);
    ev.observer.host = pgw_cstr(ks->host);
    ev.observer.instance = pgw_cstr(ks->instance);
    ev.observer.version = PGW_STR_LIT(PGW_VERSION);
    ev.gap.dropped = PGW_INT(n);
    ev.gap.from_us = PGW_INT(from);
    ev.gap.to_us = PGW_INT(to);
    pgw_batch_t *b = pgw_sink_batch_get(&ks->base);
    if (!b)
        return;
    if (!ks->poll_lane && ks->spooled)
        ks->poll_lane = my_lane(ks);
    pgw_jbuf_t line;
    pgw_jbuf_init(&line, 0);
    if (pgw_event_encode(&ev, &line) != 0 || pgw_batch_append(b, line.data, line.len, (pgw_str_t){ 0 }) != 0)
        b->nrecs = 0;
    pgw_jbuf_free(&line);
    if (b->nrecs == 1 && (ks->poll_lane || !ks->spooled)) {
        spool_and_produce(ks, ks->poll_lane, b);
        add(&ks->gaps, 1);
        pthread_mutex_lock(&ks->mu);
        ks->gap_dropped -= n;
        pthread_mutex_unlock(&ks->mu);
        pgw_warn("kafka: audit_gap event sent: %" PRIu64 " event(s) dropped while the spool "
                 "was full", n);
    }
    pgw_sink_batch_put(&ks->base, b);
}

static void *poll_main(void *arg)
{
    kafka_sink_t *ks = arg;
    for (;;) {
        pthread_mutex_lock(&ks->mu);
        bool stop = ks->stop, fatal = ks->fatal;
        pthread_mutex_unlock(&ks->mu);
        if (fatal)
            restart_producer(ks);
        rd_kafka_poll(ks->rk, POLL_MS);
        send_resends(ks);
        if (ks->policy == PGW_SPOOL_DROP)
            emit_gap(ks);
        if (stop)
            break;
    }
    return NULL;
}

/* ------------------------------------------------------------ sink ops */

static int k_submit_batch(pgw_sink_t *s, pgw_batch_t *b)
{
    kafka_sink_t *ks = (kafka_sink_t *)s;
    lane_t *l = ks->spooled ? my_lane(ks) : NULL;
    if (ks->spooled && !l)
        pgw_error("kafka: out of memory for a spool writer: %zu event(s) sent unspooled",
                  b->nrecs);
    add(&ks->batches, 1);
    spool_and_produce(ks, l, b);
    pgw_sink_batch_put(s, b);
    return 0;
}

static int k_flush(pgw_sink_t *s, int timeout_ms)
{
    kafka_sink_t *ks = (kafka_sink_t *)s;
    int64_t until = timeout_ms < 0 ? INT64_MAX : pgw_mono_ms() + timeout_ms;
    pthread_mutex_lock(&ks->mu);
    while (atomic_load(&ks->outstanding) > 0 && pgw_mono_ms() < until) {
        struct timespec ts = abs_real_ms(50);
        pthread_cond_timedwait(&ks->acked, &ks->mu, &ts);
    }
    pthread_mutex_unlock(&ks->mu);
    return atomic_load(&ks->outstanding) ? -ETIMEDOUT : 0;
}

static int k_reopen(pgw_sink_t *s)
{
    return 0;                       /* nothing to reopen: the brokers are reconnected by librdkafka */
}

static void k_health(pgw_sink_t *s, pgw_sink_health_t *h)
{
    kafka_sink_t *ks = (kafka_sink_t *)s;
    memset(h, 0, sizeof *h);
    h->ok = atomic_load(&ks->ok);
    h->last_errno = atomic_load(&ks->last_errno);
    h->events = atomic_load(&ks->delivered);
    h->bytes = atomic_load(&ks->bytes);
    h->batches = atomic_load(&ks->batches);
    h->write_errors = atomic_load(&ks->write_errors) + atomic_load(&ks->delivery_errors);
    h->producer_waits = atomic_load(&ks->waits);
    h->producer_wait_us = atomic_load(&ks->wait_us);
    h->events_lost = atomic_load(&ks->lost);
    h->queued_events = atomic_load(&ks->outstanding);
    h->queued_bytes = ks->spooled ? atomic_load(&ks->spool.bytes) : 0;
}

void pgw_kafka_sink_stats(pgw_sink_t *s, pgw_kafka_stats_t *st)
{
    kafka_sink_t *ks = (kafka_sink_t *)s;
    memset(st, 0, sizeof *st);
    st->produced = atomic_load(&ks->produced);
    st->delivered = atomic_load(&ks->delivered);
    st->delivery_errors = atomic_load(&ks->delivery_errors);
    st->resent = atomic_load(&ks->resent);
    st->replayed = atomic_load(&ks->replayed);
    st->producer_restarts = atomic_load(&ks->restarts);
    st->dropped = atomic_load(&ks->dropped);
    st->gap_events = atomic_load(&ks->gaps);
    st->spool_bytes = ks->spooled ? atomic_load(&ks->spool.bytes) : 0;
    st->outstanding = atomic_load(&ks->outstanding);
    pthread_mutex_lock(&ks->mu);
    for (lane_t *l = ks->lanes; l; l = l->next) {
        st->spool_writes += l->writer.writes;
        st->spool_bytes_written += l->writer.bytes_written;
        st->spool_write_errors += l->writer.write_errors;
    }
    pthread_mutex_unlock(&ks->mu);
}

int pgw_kafka_sink_inject_fatal(pgw_sink_t *s)
{
    kafka_sink_t *ks = (kafka_sink_t *)s;
    pthread_rwlock_rdlock(&ks->rk_lock);
    rd_kafka_resp_err_t err = rd_kafka_test_fatal_error(ks->rk, RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                                                        "injected by a test");
    pthread_rwlock_unlock(&ks->rk_lock);
    return err ? -EINVAL : 0;
}

static void k_unblock(pgw_sink_t *s)
{
    kafka_sink_t *ks = (kafka_sink_t *)s;
    pthread_mutex_lock(&ks->mu);
    ks->unblocked = true;
    pthread_cond_broadcast(&ks->room);
    pthread_mutex_unlock(&ks->mu);
}

static void free_sink(kafka_sink_t *ks)
{
    while (ks->resend) {
        resend_t *r = ks->resend;
        ks->resend = r->next;
        free(r);
    }
    while (ks->replayed_segs) {
        pgw_spool_seg_t *seg = ks->replayed_segs;
        ks->replayed_segs = seg->next;
        free(seg->path);
        free(seg);
    }
    if (ks->rkt)
        rd_kafka_topic_destroy(ks->rkt);
    if (ks->rk)
        rd_kafka_destroy(ks->rk);
    if (ks->conf)
        rd_kafka_conf_destroy(ks->conf);
    /* After the producer: its messages point into segments. */
    while (ks->lanes) {
        lane_t *l = ks->lanes;
        ks->lanes = l->next;
        lane_free(l);
    }
    if (ks->spooled || ks->spool.dir)
        pgw_spool_destroy(&ks->spool);
    pthread_key_delete(ks->lane_key);
    pthread_rwlock_destroy(&ks->rk_lock);
    pthread_mutex_destroy(&ks->mu);
    pthread_cond_destroy(&ks->room);
    pthread_cond_destroy(&ks->acked);
    free(ks->topic);
    pgw_sink_base_destroy(&ks->base);
    free(ks);
}

static void k_close(pgw_sink_t *s)
{
    kafka_sink_t *ks = (kafka_sink_t *)s;
    k_unblock(s);
    if (k_flush(s, (int)ks->close_timeout_ms) != 0)
        pgw_warn("kafka: %" PRIu64 " event(s) not acknowledged within %u ms; %s",
                 (uint64_t)atomic_load(&ks->outstanding), ks->close_timeout_ms,
                 ks->spooled ? "they stay in the spool for the next start" : "they are lost");
    if (!ks->spooled)
        add(&ks->lost, atomic_load(&ks->outstanding));
    pthread_mutex_lock(&ks->mu);
    ks->stop = true;
    pthread_mutex_unlock(&ks->mu);
    pthread_join(ks->poller, NULL);
    /* Unacknowledged events keep their segments' references: the files
     * stay. Purge so that destroying does not wait for the brokers. */
    rd_kafka_purge(ks->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    pgw_kafka_stats_t st;
    pgw_kafka_sink_stats(s, &st);
    pgw_info("kafka: closed (%" PRIu64 " delivered, %" PRIu64 " resent, %" PRIu64 " dropped, %"
             PRIu64 " producer restart(s); spool: %" PRIu64 " bytes in %" PRIu64 " writes)",
             st.delivered, st.resent, st.dropped, st.producer_restarts, st.spool_bytes_written,
             st.spool_writes);
    free_sink(ks);
}

static const pgw_sink_ops_t kafka_ops = {
    .name = "kafka",
    .submit_batch = k_submit_batch,
    .submit = pgw_sink_submit_as_batch,
    .flush = k_flush,
    .reopen = k_reopen,
    .health = k_health,
    .unblock = k_unblock,
    .close = k_close,
};

/* ------------------------------------------------------------ open */

static int set_prop(rd_kafka_conf_t *conf, const char *name, const char *value)
{
    char err[512];
    if (rd_kafka_conf_set(conf, name, value, err, sizeof err) != RD_KAFKA_CONF_OK) {
        pgw_error("kafka: property %s=%s: %s", name, value, err);
        return -EINVAL;
    }
    return 0;
}

static void replay_one(void *ud, pgw_spool_seg_t *seg, const pgw_spool_rec_t *r)
{
    kafka_sink_t *ks = ud;
    add(&ks->outstanding, 1);
    add(&ks->replayed, 1);
    produce_locked(ks, r->key, r->key_len, r->value, r->value_len, seg);
}

int pgw_kafka_sink_open(const pgw_kafka_sink_config_t *cfg, pgw_sink_t **out)
{
    kafka_sink_t *ks = calloc(1, sizeof *ks);
    int rc = -ENOMEM;
    if (!ks)
        return -ENOMEM;
    pgw_sink_base_init(&ks->base, &kafka_ops, &cfg->limits);
    pthread_rwlock_init(&ks->rk_lock, NULL);
    pthread_mutex_init(&ks->mu, NULL);
    pthread_cond_init(&ks->room, NULL);
    pthread_cond_init(&ks->acked, NULL);
    pthread_key_create(&ks->lane_key, NULL);
    ks->resend_tail = &ks->resend;
    ks->policy = cfg->policy;
    ks->close_timeout_ms = cfg->close_timeout_ms ? cfg->close_timeout_ms : CLOSE_TIMEOUT_MS_DEFAULT;
    ks->spool_max = cfg->spool_max_bytes ? cfg->spool_max_bytes : SPOOL_MAX_DEFAULT;
    ks->seg_max = ks->spool_max / 8;
    if (ks->seg_max > SEG_MAX)
        ks->seg_max = SEG_MAX;
    if (ks->seg_max < SEG_MIN)
        ks->seg_max = SEG_MIN;
    atomic_store(&ks->ok, true);
    snprintf(ks->host, sizeof ks->host, "%s", cfg->observer_host ? cfg->observer_host : "");
    snprintf(ks->instance, sizeof ks->instance, "%s",
             cfg->observer_instance ? cfg->observer_instance : "");
    ks->topic = strdup(cfg->topic);
    ks->conf = rd_kafka_conf_new();
    if (!ks->topic || !ks->conf)
        goto fail;
    if ((rc = pgw_uuid7_init(&ks->uuid)) != 0)
        goto fail;

    /* Ours first, the operator's properties after: they may override. */
    char qkb[32];
    snprintf(qkb, sizeof qkb, "%" PRIu64, ks->spool_max / 1024 + 65536);
    const char *defaults[][2] = {
        { "bootstrap.servers", cfg->brokers },
        { "enable.idempotence", "true" },
        { "acks", "all" },
        { "compression.codec", "lz4" },
        { "message.timeout.ms", "0" },            /* retry until delivered */
        /* Audit events need no millisecond latency to Kafka (the spool
         * holds them safe meanwhile), and librdkafka 2.0's broker thread
         * wakes far less with fuller batches: at 3,000 events/s it used
         * 40 us of CPU per event at 5 ms, 3 us at 100 ms. */
        { "linger.ms", "100" },
        { "reconnect.backoff.max.ms", "1000" },   /* back soon after an outage */
        { "queue.buffering.max.messages", "10000000" },
        { "queue.buffering.max.kbytes", qkb },
        { "client.id", "pgwarden" },
    };
    rc = -EINVAL;
    for (size_t i = 0; i < sizeof defaults / sizeof defaults[0]; i++)
        if (set_prop(ks->conf, defaults[i][0], defaults[i][1]))
            goto fail;
    for (size_t i = 0; i < cfg->nprops; i++) {
        char name[256];
        const char *eq = strchr(cfg->props[i], '=');
        if (!eq || eq == cfg->props[i] || (size_t)(eq - cfg->props[i]) >= sizeof name) {
            pgw_error("kafka: property \"%s\" is not NAME=VALUE", cfg->props[i]);
            goto fail;
        }
        memcpy(name, cfg->props[i], (size_t)(eq - cfg->props[i]));
        name[eq - cfg->props[i]] = '\0';
        if (set_prop(ks->conf, name, eq + 1))
            goto fail;
    }
    rd_kafka_conf_set_dr_msg_cb(ks->conf, on_delivery);
    rd_kafka_conf_set_error_cb(ks->conf, on_error);
    rd_kafka_conf_set_log_cb(ks->conf, on_log);
    if ((rc = create_producer(ks, &ks->rk, &ks->rkt)) != 0)
        goto fail;

    if (cfg->spool_dir) {
        if ((rc = pgw_spool_init(&ks->spool, cfg->spool_dir)) != 0)
            goto fail;
        ks->spool.on_free_space = on_free_space;
        ks->spool.ud = ks;
        ks->spooled = true;
        ks->base.durable = true;
        pthread_rwlock_rdlock(&ks->rk_lock);
        ssize_t n = pgw_spool_replay(&ks->spool, replay_one, ks, &ks->replayed_segs);
        pthread_rwlock_unlock(&ks->rk_lock);
        if (n < 0) {
            rc = (int)n;
            goto fail;
        }
        if (n > 0)
            pgw_info("kafka: %zd unacknowledged event(s) from the spool %s sent again", n,
                     cfg->spool_dir);
    }
    if ((rc = -pthread_create(&ks->poller, NULL, poll_main, ks)) != 0)
        goto fail;
    pgw_info("kafka: producing to topic %s at %s%s%s", ks->topic, cfg->brokers,
             cfg->spool_dir ? ", spool " : "", cfg->spool_dir ? cfg->spool_dir : "");
    *out = &ks->base;
    return 0;
fail:
    free_sink(ks);
    return rc;
}
