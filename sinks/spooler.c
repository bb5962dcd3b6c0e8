/* The spool of a durable sink, as the threads that hand it batches use it
 * (spooler.h). */
#include "spooler.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

#define SEG_MIN (64ull * 1024)

static inline void add(_Atomic uint64_t *c, uint64_t n)
{
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

static void on_free_space(void *ud)
{
    pgw_spooler_t *s = ud;
    pthread_mutex_lock(&s->mu);
    pthread_cond_broadcast(&s->room);
    pthread_mutex_unlock(&s->mu);
}

int pgw_spooler_init(pgw_spooler_t *s, const char *dir, uint64_t max_bytes, uint64_t seg_cap,
                     pgw_spool_policy_t policy, const char *who)
{
    memset(s, 0, sizeof *s);
    s->who = who;
    s->policy = policy;
    s->max = max_bytes ? max_bytes : PGW_SPOOL_MAX_DEFAULT;
    s->seg_max = s->max / 8;
    if (s->seg_max > seg_cap)
        s->seg_max = seg_cap;
    if (s->seg_max < SEG_MIN)
        s->seg_max = SEG_MIN;
    int rc = pgw_spool_init(&s->spool, dir);
    if (rc != 0)
        return rc;
    if ((rc = pthread_key_create(&s->lane_key, NULL)) != 0) {
        pgw_spool_destroy(&s->spool);
        return -rc;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->room, NULL);
    s->spool.on_free_space = on_free_space;
    s->spool.ud = s;
    return 0;
}

void pgw_spooler_destroy(pgw_spooler_t *s)
{
    while (s->lanes) {
        pgw_spool_lane_t *l = s->lanes;
        s->lanes = l->next;
        pgw_spool_writer_close(&l->writer);
        pgw_jbuf_free(&l->out);
        free(l);
    }
    pgw_spool_destroy(&s->spool);
    pthread_key_delete(s->lane_key);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->room);
}

pgw_spool_lane_t *pgw_spooler_lane(pgw_spooler_t *s)
{
    pgw_spool_lane_t *l = pthread_getspecific(s->lane_key);
    if (l)
        return l;
    if (!(l = calloc(1, sizeof *l)))
        return NULL;
    pgw_spool_writer_init(&l->writer, &s->spool, s->seg_max);
    pgw_jbuf_init(&l->out, 0);
    pthread_mutex_lock(&s->mu);
    l->next = s->lanes;
    s->lanes = l;
    pthread_mutex_unlock(&s->mu);
    pthread_setspecific(s->lane_key, l);
    return l;
}

size_t pgw_spooler_events(const pgw_batch_t *b)
{
    size_t n = 0;
    for (size_t i = 0; i < b->nrecs; i++)
        n += !b->recs[i].begin;
    return n;
}

void pgw_spooler_unblock(pgw_spooler_t *s)
{
    pthread_mutex_lock(&s->mu);
    s->unblocked = true;
    pthread_cond_broadcast(&s->room);
    pthread_mutex_unlock(&s->mu);
}

static bool unblocked(pgw_spooler_t *s)
{
    pthread_mutex_lock(&s->mu);
    bool u = s->unblocked;
    pthread_mutex_unlock(&s->mu);
    return u;
}

/* Block policy: waits until len more bytes fit under the cap (or shutdown
 * lifts the cap). */
static void make_room(pgw_spooler_t *s, size_t len)
{
    if (atomic_load(&s->spool.bytes) + len <= s->max)
        return;
    int64_t t0 = pgw_mono_us();
    bool logged = false;
    add(&s->waits, 1);                  /* counted as it starts: a stuck wait shows */
    pthread_mutex_lock(&s->mu);
    while (!s->unblocked && atomic_load(&s->spool.bytes) + len > s->max) {
        if (!logged) {
            logged = true;
            pgw_warn("%s: spool full (%" PRIu64 " bytes): statements wait until its events "
                     "are delivered", s->who, (uint64_t)atomic_load(&s->spool.bytes));
        }
        struct timespec ts = pgw_realtime_after_ms(100);
        pthread_cond_timedwait(&s->room, &s->mu, &ts);
    }
    pthread_mutex_unlock(&s->mu);
    add(&s->wait_us, (uint64_t)(pgw_mono_us() - t0));
}

enum { ALL_RECS, EVENTS_ONLY, BEGINS_ONLY };

static bool selected(const pgw_batch_rec_t *r, int filter)
{
    return !((filter == EVENTS_ONLY && r->begin) || (filter == BEGINS_ONLY && !r->begin));
}

/* Encodes the records of b that filter selects into the lane's buffer. A
 * completion is written as a delta against its begin when that is in the
 * segment the append will land in (pgw_spool_encode_completion). */
static size_t encode_batch(pgw_spool_lane_t *l, const pgw_batch_t *b, int filter)
{
    size_t n = 0, most = 0;
    for (size_t i = 0; i < b->nrecs; i++)
        if (selected(&b->recs[i], filter))
            most += PGW_SPOOL_REC_HEAD + PGW_SPOOL_PAYLOAD_HEAD + b->recs[i].end -
                    (i ? b->recs[i - 1].end : 0) + b->recs[i].key_end -
                    (i ? b->recs[i - 1].key_end : 0);
    pgw_spool_writer_reserve(&l->writer, most);
    pgw_jbuf_reset(&l->out);
    for (size_t i = 0; i < b->nrecs; i++) {
        const pgw_batch_rec_t *r = &b->recs[i];
        if (!selected(r, filter))
            continue;
        size_t s = pgw_batch_start(b, i), k0 = i ? b->recs[i - 1].key_end : 0;
        const char *key = b->keys.data + k0, *val = b->data.data + s;
        size_t klen = r->key_end - k0, vlen = r->end - s - 1;
        if (!r->begin && r->token)
            pgw_spool_encode_completion(&l->writer, &l->out, r->token, key, klen, val, vlen);
        else
            pgw_spool_encode(&l->out, r->withdrawn ? PGW_SPOOL_VOID
                                      : r->begin   ? PGW_SPOOL_BEGIN
                                                   : PGW_SPOOL_EVENT,
                             r->token, key, klen, val, vlen);
        n++;
    }
    return n;
}

/* Writes the lane's buffer (retrying: a spool that cannot be written holds
 * statements back, as a full one does), then tracks the begins and
 * resolves the completions of the records filter selected. NULL: given up
 * at shutdown. */
static pgw_spool_seg_t *append_batch(pgw_spooler_t *s, pgw_spool_lane_t *l, const pgw_batch_t *b,
                                     int filter, int64_t holds)
{
    pgw_spool_seg_t *seg = NULL;
    int rc;
    int64_t retry_ms = 10;
    while ((rc = pgw_spool_writer_append(&l->writer, l->out.data, l->out.len, holds, &seg)) != 0) {
        add(&s->write_errors, 1);
        atomic_store(&s->last_errno, -rc);
        pgw_error("%s: writing the spool failed: %s; retrying", s->who, strerror(-rc));
        if (unblocked(s)) {
            pgw_error("%s: shutting down: events are delivered unspooled", s->who);
            return NULL;
        }
        struct timespec ts = { retry_ms / 1000, (retry_ms % 1000) * 1000000 };
        nanosleep(&ts, NULL);
        if (retry_ms < 1000)
            retry_ms *= 2;
    }
    size_t at = 0;                      /* of the record in l->out */
    for (size_t i = 0; i < b->nrecs; i++) {
        const pgw_batch_rec_t *r = &b->recs[i];
        if (!selected(r, filter))
            continue;
        size_t size = pgw_spool_record_size(l->out.data + at);
        if (r->begin && !r->withdrawn) {
            size_t klen = r->key_end - (i ? b->recs[i - 1].key_end : 0);
            size_t vlen = r->end - pgw_batch_start(b, i) - 1;
            uint64_t value_at = l->writer.last_at + at + PGW_SPOOL_REC_HEAD +
                                PGW_SPOOL_PAYLOAD_HEAD + klen;
            if (pgw_spool_writer_track_at(&l->writer, r->token, seg, value_at, vlen) != 0)
                pgw_warn("%s: out of memory tracking a begun statement", s->who);
        } else if (r->token) {
            pgw_spool_writer_resolve(&l->writer, r->token);
        }
        at += size;
    }
    pgw_spool_writer_sweep(&l->writer);
    return seg;
}

pgw_spooled_t pgw_spooler_append(pgw_spooler_t *s, pgw_spool_lane_t *l, const pgw_batch_t *b,
                                 size_t nsend, pgw_spool_seg_t **seg)
{
    *seg = NULL;
    encode_batch(l, b, ALL_RECS);
    if (l->out.failed) {
        pgw_error("%s: out of memory spooling %zu event(s); they are delivered unspooled",
                  s->who, nsend);
        return PGW_SPOOL_UNSPOOLED;
    }
    if (atomic_load(&s->spool.bytes) + l->out.len <= s->max) {
        *seg = append_batch(s, l, b, ALL_RECS, (int64_t)nsend);
        return *seg ? PGW_SPOOLED : PGW_SPOOL_UNSPOOLED;
    }
    /* This lane's open segment may hold delivered events only: closing it
     * lets its deletion free room. */
    pgw_spool_writer_seal(&l->writer);
    if (s->policy == PGW_SPOOL_DROP && atomic_load(&s->spool.bytes) + l->out.len > s->max) {
        for (size_t i = 0; i < b->nrecs; i++)
            if (!b->recs[i].begin && b->recs[i].token)
                pgw_spool_writer_resolve(&l->writer, b->recs[i].token);
        return PGW_SPOOL_DROPPED;
    }
    pgw_spooled_t rc = PGW_SPOOLED;
    if (nsend && encode_batch(l, b, EVENTS_ONLY) && !l->out.failed)
        *seg = append_batch(s, l, b, EVENTS_ONLY, (int64_t)nsend);
    if (nsend && !*seg)
        rc = PGW_SPOOL_UNSPOOLED;
    if (encode_batch(l, b, BEGINS_ONLY) && !l->out.failed) {
        make_room(s, l->out.len);
        (void)append_batch(s, l, b, BEGINS_ONLY, 0);
    }
    return rc;
}

void pgw_spooler_stats(pgw_spooler_t *s, pgw_spooler_stats_t *out)
{
    memset(out, 0, sizeof *out);
    out->bytes = atomic_load(&s->spool.bytes);
    out->failed_appends = atomic_load(&s->write_errors);
    out->waits = atomic_load(&s->waits);
    out->wait_us = atomic_load(&s->wait_us);
    pthread_mutex_lock(&s->mu);
    for (pgw_spool_lane_t *l = s->lanes; l; l = l->next) {
        out->writes += l->writer.writes;
        out->bytes_written += l->writer.bytes_written;
        out->write_errors += l->writer.write_errors;
    }
    pthread_mutex_unlock(&s->mu);
}
