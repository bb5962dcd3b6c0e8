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
 * crashes, is sent again by the next start (at-least-once).
 *
 * Observing. Each event's message points to its span: the events one lane
 * appended to one segment within one second. Spans are listed oldest
 * first, so the age of the oldest unacknowledged event is the age of the
 * first span that still has one: O(lanes) at scrape time, one atomic add
 * per batch when producing. librdkafka's statistics documents are read on
 * the poll thread (rd_kafka_poll serves the callback) into a small struct
 * under stats_mu, which the metrics scrape copies. */
#include "pgwarden/sink.h"

#include <errno.h>
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "log.h"
#include "spooler.h"

#define SEG_CAP (16ull * 1024 * 1024) /* spool segments */
#define CLOSE_TIMEOUT_MS_DEFAULT 5000u
#define POLL_MS 50
#define RESTART_DRAIN_MS 5000       /* waiting for a failed producer's reports */
#define ERROR_LOG_EVERY_MS 10000
#define STATS_INTERVAL_MS_DEFAULT "5000"
#define SPAN_US 1000000             /* a span takes a lane's appends for this long */
#define SPAN_OPEN (1ull << 40)      /* a span's reference while its lane appends to it */
#define MESSAGE_MARGIN 1024         /* a record's framing and key, under message.max.bytes */

/* The events one lane appended to one segment within SPAN_US: what ages
 * are measured on. */
typedef struct span {
    struct span *next, *prev;       /* in kafka_sink_t.spans, oldest first (spans_mu) */
    pgw_spool_seg_t *seg;           /* held by each of its events, not by the span */
    int64_t first_us;               /* wall clock of its first append */
    _Atomic uint64_t refs;          /* SPAN_OPEN while open, + 1 per unacknowledged event */
} span_t;

typedef struct resend {
    struct resend *next;
    span_t *span;
    size_t key_len, value_len;
    uint8_t data[];                 /* key, then value */
} resend_t;

typedef struct kafka_sink {
    pgw_sink_t base;                /* first: a pgw_sink_t * points here */
    char *topic;
    rd_kafka_conf_t *conf;          /* template for (re)creating the producer */
    pthread_rwlock_t rk_lock;       /* produce: read; replacing the producer: write */
    rd_kafka_t *rk;
    rd_kafka_topic_t *rkt;

    bool spooled;
    pgw_spooler_t spooler;          /* lanes: sink_state is the lane's open span */
    pgw_spool_seg_t *replayed_segs; /* from the start's replay; freed at close */
    pgw_spool_policy_t policy;
    unsigned close_timeout_ms;

    pthread_t poller;
    pthread_mutex_t mu;
    pthread_cond_t acked;           /* flush() waits */
    /* Guarded by mu. */
    resend_t *resend, **resend_tail;
    bool stop, fatal;
    uint64_t gap_dropped;           /* dropped since the last gap event */
    int64_t gap_from_us, gap_to_us;
    int64_t last_err_log_ms;
    pgw_spool_lane_t *poll_lane;    /* the poll thread's own (gap events) */

    char host[256], instance[40];
    pgw_uuid7_t uuid;               /* poll thread only */

    pthread_mutex_t spans_mu;       /* the list, and a span's freeing */
    span_t *spans, *spans_tail;
    span_t *replay_span;            /* open only while the spool is replayed */

    pthread_mutex_t stats_mu;
    pgw_kafka_client_stats_t rdstats; /* totals of every document (stats_mu) */
    pgw_kafka_client_stats_t rdlast;  /* the latest document (poll thread) */
    char rdclient[128];               /* whose it was (poll thread) */

    _Atomic uint64_t produced, delivered, delivery_errors, resent, replayed, restarts;
    _Atomic uint64_t dropped, gaps, outstanding, bytes, batches, lost;
    _Atomic int64_t last_delivery_us;
    _Atomic bool ok;
} kafka_sink_t;

static inline void add(_Atomic uint64_t *c, uint64_t n)
{
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

/* ------------------------------------------------------------ spans */

/* A new open span of seg, last in the list. NULL when out of memory. */
static span_t *span_open(kafka_sink_t *ks, pgw_spool_seg_t *seg, int64_t first_us)
{
    span_t *sp = malloc(sizeof *sp);
    if (!sp)
        return NULL;
    sp->seg = seg;
    sp->first_us = first_us;
    atomic_init(&sp->refs, SPAN_OPEN);
    sp->next = NULL;
    pthread_mutex_lock(&ks->spans_mu);
    sp->prev = ks->spans_tail;
    if (ks->spans_tail)
        ks->spans_tail->next = sp;
    else
        ks->spans = sp;
    ks->spans_tail = sp;
    pthread_mutex_unlock(&ks->spans_mu);
    return sp;
}

static void span_release(kafka_sink_t *ks, span_t *sp, uint64_t n)
{
    if (atomic_fetch_sub(&sp->refs, n) != n)
        return;
    pthread_mutex_lock(&ks->spans_mu);
    if (sp->prev)
        sp->prev->next = sp->next;
    else
        ks->spans = sp->next;
    if (sp->next)
        sp->next->prev = sp->prev;
    else
        ks->spans_tail = sp->prev;
    pthread_mutex_unlock(&ks->spans_mu);
    free(sp);
}

/* The span for n events just appended to seg by lane l (its own thread),
 * holding them; a new one when the segment changed or the open one is
 * SPAN_US old. NULL when out of memory: the events then keep their
 * segment until the next start sends them again. */
static span_t *lane_span(kafka_sink_t *ks, pgw_spool_lane_t *l, pgw_spool_seg_t *seg, uint64_t n)
{
    int64_t now = pgw_event_now_us();
    span_t *sp = l->sink_state;
    if (!sp || sp->seg != seg || now - sp->first_us >= SPAN_US || now < sp->first_us) {
        if (sp)
            span_release(ks, sp, SPAN_OPEN);
        sp = l->sink_state = span_open(ks, seg, now);
        if (!sp) {
            pgw_error("kafka: out of memory tracking %" PRIu64 " event(s); they stay in the spool "
                      "for the next start", n);
            return NULL;
        }
    }
    atomic_fetch_add_explicit(&sp->refs, n, memory_order_relaxed);
    return sp;
}

/* Age of the oldest event not yet acknowledged, 0 when none. */
static int64_t oldest_unacked_us(kafka_sink_t *ks)
{
    int64_t age = 0, now = pgw_event_now_us();
    pthread_mutex_lock(&ks->spans_mu);
    for (span_t *sp = ks->spans; sp; sp = sp->next)
        if (atomic_load_explicit(&sp->refs, memory_order_relaxed) & (SPAN_OPEN - 1)) {
            age = now - sp->first_us;
            break;
        }
    pthread_mutex_unlock(&ks->spans_mu);
    return age > 0 ? age : 0;
}

/* ------------------------------------------------------------ producing */

static void to_resend(kafka_sink_t *ks, const void *key, size_t klen, const void *val, size_t vlen,
                      span_t *span)
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
    r->span = span;
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

/* An event settled: acknowledged, or given up. Its spool segment may go,
 * and close may stop waiting for it. */
static void settle(kafka_sink_t *ks, span_t *span)
{
    if (span) {
        pgw_spool_seg_release(span->seg, 1);
        span_release(ks, span, 1);
    }
    if (atomic_fetch_sub(&ks->outstanding, 1) == 1) {
        pthread_mutex_lock(&ks->mu);
        pthread_cond_broadcast(&ks->acked);
        pthread_mutex_unlock(&ks->mu);
    }
}

/* librdkafka refused the message itself: larger than the producer's
 * message.max.bytes (an event spooled under another limit: new events are
 * kept under it, pgw_sink_emit). Sending it again would fail for ever and
 * hold its spool segment, and in the end the whole spool: it is counted
 * lost and logged instead. Anything else goes to the resend list. */
static void not_queued(kafka_sink_t *ks, rd_kafka_resp_err_t err, const void *key, size_t klen,
                       const void *val, size_t vlen, span_t *span)
{
    if (err != RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE) {
        to_resend(ks, key, klen, val, vlen, span);
        return;
    }
    add(&ks->lost, 1);
    pgw_error("kafka: an event of %zu bytes is over the producer's message.max.bytes: not sent, "
              "counted lost", vlen);
    settle(ks, span);
}

/* One event to librdkafka; on failure it goes to the resend list. Each call
 * is one outstanding event until its delivery report; span (NULL without a
 * spool) holds it. Caller holds rk_lock (read). */
static void produce_locked(kafka_sink_t *ks, const void *key, size_t klen, const void *val,
                           size_t vlen, span_t *span)
{
    rd_kafka_resp_err_t err = rd_kafka_producev(
        ks->rk, RD_KAFKA_V_RKT(ks->rkt), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_VALUE((void *)(uintptr_t)val, vlen),
        RD_KAFKA_V_KEY(klen ? key : NULL, klen), RD_KAFKA_V_OPAQUE(span), RD_KAFKA_V_END);
    add(&ks->produced, 1);
    if (err)
        not_queued(ks, err, key, klen, val, vlen, span);
}

/* The events of b (not its begin records, which only the spool keeps) in
 * chunks of rd_kafka_produce_batch: librdkafka then reads its clock and
 * takes the topic's lock once per chunk instead of once per event, the
 * largest part of producing from a loop thread. The partitioner still
 * places each event by its key. Caller holds rk_lock (read). */
static void produce_batch_locked(kafka_sink_t *ks, const pgw_batch_t *b, span_t *span)
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
            msgs[n]._private = span;
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
                not_queued(ks, msgs[j].err, msgs[j].key, msgs[j].key_len, msgs[j].payload, msgs[j].len,
                           span);
    }
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    kafka_sink_t *ks = opaque;
    span_t *span = m->_private;
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        add(&ks->delivered, 1);
        add(&ks->bytes, m->len);
        atomic_store(&ks->last_delivery_us, pgw_event_now_us());
        if (!atomic_exchange(&ks->ok, true))
            pgw_info("kafka: delivering to %s again", ks->topic);
        settle(ks, span);
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
    to_resend(ks, m->key, m->key_len, m->payload, m->len, span);
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

/* Served by rd_kafka_poll, so on the poll thread: never a loop thread. */
static int on_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    kafka_sink_t *ks = opaque;
    pgw_kafka_client_stats_t *doc = malloc(sizeof *doc);
    char client[sizeof ks->rdclient];
    if (!doc)
        return 0;
    if (pgw_kafka_rdstats_read(json, len, doc, client, sizeof client) != 0) {
        pgw_debug("kafka: a statistics document was not the expected JSON");
        free(doc);
        return 0;
    }
    /* A replaced producer's counters start again from zero. */
    bool same = strcmp(client, ks->rdclient) == 0;
    pthread_mutex_lock(&ks->stats_mu);
    pgw_kafka_rdstats_merge(&ks->rdstats, same ? &ks->rdlast : NULL, doc);
    pthread_mutex_unlock(&ks->stats_mu);
    ks->rdlast = *doc;
    memcpy(ks->rdclient, client, sizeof ks->rdclient);
    free(doc);
    return 0;                       /* librdkafka frees json */
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
        produce_locked(ks, r->data, r->key_len, r->data + r->key_len, r->value_len, r->span);
        add(&ks->resent, 1);
        free(r);
    }
    pthread_rwlock_unlock(&ks->rk_lock);
}

/* ------------------------------------------------------------ spooling */

/* Counts the events of a batch dropped under the `drop` policy for the
 * next audit_gap event. */
static void count_dropped(kafka_sink_t *ks, size_t n)
{
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

/* Spools (one write, spooler.h) and produces the events of b. */
static void spool_and_produce(kafka_sink_t *ks, pgw_spool_lane_t *l, pgw_batch_t *b)
{
    pgw_spool_seg_t *seg = NULL;
    size_t nsend = pgw_spooler_events(b);

    if (ks->spooled && l &&
        pgw_spooler_append(&ks->spooler, l, b, nsend, &seg) == PGW_SPOOL_DROPPED) {
        count_dropped(ks, nsend);
        return;
    }
    if (!nsend)
        return;
    span_t *span = seg ? lane_span(ks, l, seg, nsend) : NULL;
    add(&ks->outstanding, nsend);
    pthread_rwlock_rdlock(&ks->rk_lock);
    produce_batch_locked(ks, b, span);
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
    if (ks->spooled && atomic_load(&ks->spooler.spool.bytes) + 4096 > ks->spooler.max)
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
        ks->poll_lane = pgw_spooler_lane(&ks->spooler);
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
    pgw_spool_lane_t *l = ks->spooled ? pgw_spooler_lane(&ks->spooler) : NULL;
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
        struct timespec ts = pgw_realtime_after_ms(50);
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
    pgw_spooler_stats_t sp = { 0 };
    if (ks->spooled)
        pgw_spooler_stats(&ks->spooler, &sp);
    memset(h, 0, sizeof *h);
    h->ok = atomic_load(&ks->ok);
    h->last_errno = ks->spooled ? atomic_load(&ks->spooler.last_errno) : 0;
    h->events = atomic_load(&ks->delivered);
    h->bytes = atomic_load(&ks->bytes);
    h->batches = atomic_load(&ks->batches);
    h->write_errors = sp.failed_appends + atomic_load(&ks->delivery_errors);
    h->producer_waits = sp.waits;
    h->producer_wait_us = sp.wait_us;
    h->events_lost = atomic_load(&ks->lost);
    h->queued_events = atomic_load(&ks->outstanding);
    h->queued_bytes = sp.bytes;
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
    st->outstanding = atomic_load(&ks->outstanding);
    st->oldest_unacked_us = ks->spooled ? oldest_unacked_us(ks) : 0;
    if (ks->spooled) {
        pgw_spooler_stats_t sp;
        pgw_spooler_stats(&ks->spooler, &sp);
        st->spool_bytes = sp.bytes;
        st->spool_writes = sp.writes;
        st->spool_bytes_written = sp.bytes_written;
        st->spool_write_errors = sp.write_errors;
    }
}

void pgw_kafka_sink_client_stats(pgw_sink_t *s, pgw_kafka_client_stats_t *out)
{
    kafka_sink_t *ks = (kafka_sink_t *)s;
    pthread_mutex_lock(&ks->stats_mu);
    *out = ks->rdstats;
    pthread_mutex_unlock(&ks->stats_mu);
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
    if (ks->spooled)
        pgw_spooler_unblock(&ks->spooler);
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
    /* After the producer: its messages point to spans and segments. */
    while (ks->spans) {
        span_t *sp = ks->spans;
        ks->spans = sp->next;
        free(sp);
    }
    if (ks->spooled)
        pgw_spooler_destroy(&ks->spooler);
    pthread_rwlock_destroy(&ks->rk_lock);
    pthread_mutex_destroy(&ks->mu);
    pthread_mutex_destroy(&ks->spans_mu);
    pthread_mutex_destroy(&ks->stats_mu);
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

/* A segment of an earlier run is one span, as old as its file's last
 * change (its events are at least that old). */
static void replay_one(void *ud, pgw_spool_seg_t *seg, const pgw_spool_rec_t *r)
{
    kafka_sink_t *ks = ud;
    span_t *sp = ks->replay_span;
    if (!sp || sp->seg != seg) {
        if (sp)
            span_release(ks, sp, SPAN_OPEN);
        struct stat st;
        int64_t t = stat(seg->path, &st) == 0
                  ? (int64_t)st.st_mtim.tv_sec * 1000000 + st.st_mtim.tv_nsec / 1000
                  : pgw_event_now_us();
        sp = ks->replay_span = span_open(ks, seg, t);
        if (!sp)
            pgw_error("kafka: out of memory tracking replayed events; they stay in the spool "
                      "for the next start");
    }
    if (sp)
        atomic_fetch_add_explicit(&sp->refs, 1, memory_order_relaxed);
    add(&ks->outstanding, 1);
    add(&ks->replayed, 1);
    produce_locked(ks, r->key, r->key_len, r->value, r->value_len, sp);
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
    pthread_mutex_init(&ks->spans_mu, NULL);
    pthread_mutex_init(&ks->stats_mu, NULL);
    pthread_cond_init(&ks->acked, NULL);
    ks->resend_tail = &ks->resend;
    ks->policy = cfg->policy;
    ks->close_timeout_ms = cfg->close_timeout_ms ? cfg->close_timeout_ms : CLOSE_TIMEOUT_MS_DEFAULT;
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
    snprintf(qkb, sizeof qkb, "%" PRIu64,
             (cfg->spool_max_bytes ? cfg->spool_max_bytes : PGW_SPOOL_MAX_DEFAULT) / 1024 + 65536);
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
        { "statistics.interval.ms", STATS_INTERVAL_MS_DEFAULT }, /* the broker metrics; 0: none */
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
    /* No event larger than a Kafka message: pgw_sink_emit shrinks those.
     * The margin covers the record's framing and its key (a session id). */
    char mmb[32];
    size_t mmb_len = sizeof mmb;
    if (rd_kafka_conf_get(ks->conf, "message.max.bytes", mmb, &mmb_len) == RD_KAFKA_CONF_OK) {
        size_t m = strtoull(mmb, NULL, 10);
        size_t margin = m > 2 * MESSAGE_MARGIN ? MESSAGE_MARGIN : m / 2;
        if (m - margin < ks->base.limits.max_event_bytes)
            ks->base.limits.max_event_bytes = m - margin;
    }
    rd_kafka_conf_set_dr_msg_cb(ks->conf, on_delivery);
    rd_kafka_conf_set_error_cb(ks->conf, on_error);
    rd_kafka_conf_set_log_cb(ks->conf, on_log);
    rd_kafka_conf_set_stats_cb(ks->conf, on_stats);
    if ((rc = create_producer(ks, &ks->rk, &ks->rkt)) != 0)
        goto fail;

    if (cfg->spool_dir) {
        if ((rc = pgw_spooler_init(&ks->spooler, cfg->spool_dir, cfg->spool_max_bytes,
                                   SEG_CAP, cfg->policy, "kafka")) != 0)
            goto fail;
        ks->spooled = true;
        ks->base.durable = true;
        pthread_rwlock_rdlock(&ks->rk_lock);
        ssize_t n = pgw_spool_replay(&ks->spooler.spool, replay_one, ks, &ks->replayed_segs);
        pthread_rwlock_unlock(&ks->rk_lock);
        if (ks->replay_span)
            span_release(ks, ks->replay_span, SPAN_OPEN);
        ks->replay_span = NULL;
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
