/* Batches, the batch pool every sink shares, and per-thread producers.
 * See pgwarden/sink.h for the contracts. */
#include "pgwarden/sink.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

/* ------------------------------------------------------------ batches */

static bool recs_reserve(pgw_batch_t *b)
{
    if (b->nrecs < b->caprecs)
        return true;
    size_t cap = b->caprecs ? b->caprecs * 2 : 256;
    pgw_batch_rec_t *r = realloc(b->recs, cap * sizeof(*r));
    if (!r)
        return false;
    b->recs = r;
    b->caprecs = cap;
    return true;
}

/* Records an event whose line already sits in data at [start, data.len). */
static int batch_commit(pgw_batch_t *b, size_t start, pgw_str_t key, bool begin, uint64_t token)
{
    size_t klen = key.ptr ? key.len : 0;

    if (!recs_reserve(b))
        goto fail;
    if (klen)
        pgw_jbuf_put(&b->keys, key.ptr, klen);
    if (b->keys.failed) {
        b->keys.failed = b->keys.toobig = false;   /* nothing was appended */
        goto fail;
    }
    b->recs[b->nrecs].end = b->data.len;
    b->recs[b->nrecs].key_end = b->keys.len;
    b->recs[b->nrecs].token = token;
    b->recs[b->nrecs].begin = begin;
    b->recs[b->nrecs].withdrawn = false;
    b->nrecs++;
    return 0;
fail:
    b->data.len = start;
    return -ENOMEM;
}

int pgw_batch_append(pgw_batch_t *b, const void *line, size_t len, pgw_str_t key)
{
    size_t start = b->data.len;

    if (len == 0 || ((const char *)line)[len - 1] != '\n')
        return -EINVAL;
    pgw_jbuf_put(&b->data, line, len);
    if (b->data.failed) {
        int rc = b->data.toobig ? -E2BIG : -ENOMEM;
        b->data.failed = b->data.toobig = false;
        b->data.len = start;
        return rc;
    }
    return batch_commit(b, start, key, false, 0);
}

/* ------------------------------------------------------------ sink base */

void pgw_sink_base_init(pgw_sink_t *s, const pgw_sink_ops_t *ops, const pgw_sink_limits_t *limits)
{
    s->ops = ops;
    s->limits = limits ? *limits : (pgw_sink_limits_t){ 0 };
    if (!s->limits.batch_bytes)
        s->limits.batch_bytes = PGW_SINK_BATCH_BYTES_DEFAULT;
    if (!s->limits.max_delay_us)
        s->limits.max_delay_us = PGW_SINK_MAX_DELAY_US_DEFAULT;
    if (!s->limits.max_event_bytes)
        s->limits.max_event_bytes = PGW_SINK_MAX_EVENT_DEFAULT;
    s->durable = false;
    pthread_mutex_init(&s->pool_mu, NULL);
    s->pool = NULL;
    s->npool = 0;
}

static void batch_free(pgw_batch_t *b)
{
    pgw_jbuf_free(&b->data);
    pgw_jbuf_free(&b->keys);
    free(b->recs);
    free(b);
}

void pgw_sink_base_destroy(pgw_sink_t *s)
{
    while (s->pool) {
        pgw_batch_t *b = s->pool;
        s->pool = b->next;
        batch_free(b);
    }
    s->npool = 0;
    pthread_mutex_destroy(&s->pool_mu);
}

pgw_batch_t *pgw_sink_batch_get(pgw_sink_t *s)
{
    pgw_batch_t *b;

    pthread_mutex_lock(&s->pool_mu);
    b = s->pool;
    if (b) {
        s->pool = b->next;
        s->npool--;
    }
    pthread_mutex_unlock(&s->pool_mu);
    if (b) {
        b->next = NULL;
        return b;
    }
    b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    /* Room for a nearly full batch plus the largest event, plus the
     * string escaper's look-ahead reservation. */
    size_t max = s->limits.batch_bytes + s->limits.max_event_bytes + 64 * 1024;
    pgw_jbuf_init(&b->data, max);
    pgw_jbuf_init(&b->keys, max);
    return b;
}

void pgw_sink_batch_put(pgw_sink_t *s, pgw_batch_t *b)
{
    pgw_jbuf_reset(&b->data);
    pgw_jbuf_reset(&b->keys);
    b->nrecs = 0;
    b->next = NULL;
    b->spool_seg = NULL;
    b->spool_refs = 0;
    /* One huge event must not pin its memory forever. */
    if (b->data.cap > 4 * s->limits.batch_bytes)
        pgw_jbuf_free(&b->data);
    if (b->keys.cap > s->limits.batch_bytes)
        pgw_jbuf_free(&b->keys);

    pthread_mutex_lock(&s->pool_mu);
    if (s->npool < PGW_SINK_POOL_MAX) {
        b->next = s->pool;
        s->pool = b;
        s->npool++;
        b = NULL;
    }
    pthread_mutex_unlock(&s->pool_mu);
    if (b)
        batch_free(b);
}

int pgw_sink_submit_as_batch(pgw_sink_t *s, const void *line, size_t len, pgw_str_t key)
{
    pgw_batch_t *b = pgw_sink_batch_get(s);
    int rc;

    if (!b)
        return -ENOMEM;
    rc = pgw_batch_append(b, line, len, key);
    if (rc != 0) {
        pgw_sink_batch_put(s, b);
        return rc;
    }
    return s->ops->submit_batch(s, b);
}

/* ------------------------------------------------------------ producers */

static inline int64_t producer_now(const pgw_sink_producer_t *p)
{
    return p->now_us ? p->now_us : pgw_mono_us();
}

/* Single writer: a relaxed load and store, no locked instruction. */
static inline void count(_Atomic uint64_t *c)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

void pgw_sink_producer_init(pgw_sink_producer_t *p, pgw_sink_t *s)
{
    p->sink = s;
    p->batch = NULL;
    p->batch_born_us = 0;
    p->now_us = 0;
    atomic_init(&p->events, 0);
    atomic_init(&p->refused, 0);
    atomic_init(&p->shrunk, 0);
}

static void handoff(pgw_sink_producer_t *p)
{
    pgw_batch_t *b = p->batch;

    p->batch = NULL;
    /* Errors (closing sink) are counted and logged by the sink. */
    (void)p->sink->ops->submit_batch(p->sink, b);
}

int pgw_sink_emit(pgw_sink_producer_t *p, const pgw_event_t *ev)
{
    return pgw_sink_emit_rec(p, ev, false, 0);
}

/* An event over the sink's largest (a statement's logged parameter
 * values, a server message quoting a huge value, a text longer than the
 * cap of the statement's analysis when it was encoded): encoded again
 * without the parameter values, with the message cut to 1 KiB and the text
 * to 4 KiB (marked truncated), rather than lost. */
#define SHRUNK_MESSAGE 1024
#define SHRUNK_TEXT 4096
static int encode_shrunk(const pgw_event_t *ev, pgw_jbuf_t *data, size_t start, size_t max)
{
    pgw_event_t e = *ev;
    e.head_json = (pgw_str_t){ NULL, 0 };  /* holds the uncut text and values */
    e.statement.param_values = NULL;
    e.statement.nparam_values = 0;
    if (ev->statement.param_values && !e.statement.param_count.set)
        e.statement.param_count = PGW_INT(ev->statement.nparam_values);
    if (e.result.message.ptr)
        e.result.message.len = pgw_utf8_prefix(e.result.message.ptr, e.result.message.len, SHRUNK_MESSAGE);
    if (!e.statement.analysis_json.ptr && e.statement.text.len > SHRUNK_TEXT) {
        e.statement.text.len = pgw_utf8_prefix(e.statement.text.ptr, e.statement.text.len, SHRUNK_TEXT);
        e.statement.truncated = PGW_BOOL(1);
    }
    int rc = pgw_event_encode(&e, data);
    if (rc == 0 && data->len - start > max)
        rc = -E2BIG;
    if (rc != 0)
        data->len = start;
    return rc;
}

static int emit_rec(pgw_sink_producer_t *p, const pgw_event_t *ev, bool begin, uint64_t token,
                    pgw_jbuf_t *head, size_t *head_len)
{
    pgw_sink_t *s = p->sink;
    size_t hlen = 0;
    int rc;

    if (!p->batch) {
        p->batch = pgw_sink_batch_get(s);
        if (!p->batch) {
            rc = -ENOMEM;
            goto refused;
        }
    }
    pgw_batch_t *b = p->batch;
    size_t start = b->data.len;

    rc = pgw_event_encode_head_len(ev, &b->data, &hlen);
    if (rc == -E2BIG || (rc == 0 && b->data.len - start > s->limits.max_event_bytes)) {
        hlen = 0;                   /* a shrunk head is not the completion's */
        b->data.len = start;
        rc = encode_shrunk(ev, &b->data, start, s->limits.max_event_bytes);
        if (rc == 0) {
            count(&p->shrunk);
            pgw_warn("audit: %s event of session %.*s is over the sink's largest (%zu bytes): "
                     "recorded without its parameter values, its message and text cut",
                     pgw_event_kind_name(ev->kind), (int)ev->session.id.len, ev->session.id.ptr,
                     s->limits.max_event_bytes);
        }
    }
    if (rc == 0)
        rc = batch_commit(b, start, ev->session.id, begin, token);
    if (rc != 0)
        goto refused;
    if (head && hlen) {
        size_t at = head->len;
        pgw_jbuf_put(head, b->data.data + start, hlen);
        if (head->failed) {
            head->failed = head->toobig = false;
            head->len = at;
            hlen = 0;
        }
        *head_len = hlen;
    }
    if (b->nrecs == 1)
        p->batch_born_us = producer_now(p);
    count(&p->events);
    if (b->data.len >= s->limits.batch_bytes)
        handoff(p);
    return 0;

refused:
    count(&p->refused);
    pgw_error("audit: %s event of session %.*s not recorded: %s",
              pgw_event_kind_name(ev->kind) ? pgw_event_kind_name(ev->kind) : "invalid",
              (int)(ev->session.id.ptr ? ev->session.id.len : 0),
              ev->session.id.ptr ? ev->session.id.ptr : "",
              rc == -E2BIG ? "encoded event too large" : rc == -EINVAL ? "bad kind"
                                                                      : "out of memory");
    return rc;
}

int pgw_sink_emit_rec(pgw_sink_producer_t *p, const pgw_event_t *ev, bool begin, uint64_t token)
{
    return emit_rec(p, ev, begin, token, NULL, NULL);
}

int pgw_sink_emit_begin(pgw_sink_producer_t *p, const pgw_event_t *ev, uint64_t token,
                        pgw_jbuf_t *head, size_t *head_len)
{
    *head_len = 0;
    return emit_rec(p, ev, true, token, head, head_len);
}

int pgw_sink_withdraw(pgw_sink_producer_t *p, uint64_t token, pgw_str_t key)
{
    if (!p->batch && !(p->batch = pgw_sink_batch_get(p->sink)))
        goto refused;
    pgw_batch_t *b = p->batch;
    size_t start = b->data.len;
    pgw_jbuf_put(&b->data, "\n", 1);
    if (b->data.failed) {
        b->data.failed = b->data.toobig = false;
        b->data.len = start;
        goto refused;
    }
    if (batch_commit(b, start, key, true, token) != 0)
        goto refused;
    b->recs[b->nrecs - 1].withdrawn = true;
    if (b->nrecs == 1)
        p->batch_born_us = producer_now(p);
    return 0;

refused:
    count(&p->refused);
    pgw_error("audit: the withdrawal of a begun statement of session %.*s not recorded: out of "
              "memory (a restart writes it with status unknown)",
              (int)(key.ptr ? key.len : 0), key.ptr ? key.ptr : "");
    return -ENOMEM;
}

void pgw_sink_producer_tick(pgw_sink_producer_t *p)
{
    if (p->batch && p->batch->nrecs &&
        producer_now(p) - p->batch_born_us >= (int64_t)p->sink->limits.max_delay_us)
        handoff(p);
}

int pgw_sink_producer_due_ms(const pgw_sink_producer_t *p)
{
    if (!p->batch || !p->batch->nrecs)
        return -1;
    int64_t left = p->batch_born_us + p->sink->limits.max_delay_us - producer_now(p);
    return left <= 0 ? 0 : (int)((left + 999) / 1000);
}

void pgw_sink_producer_flush(pgw_sink_producer_t *p)
{
    if (p->batch && p->batch->nrecs)
        handoff(p);
}

void pgw_sink_producer_close(pgw_sink_producer_t *p)
{
    pgw_sink_producer_flush(p);
    if (p->batch) {
        pgw_sink_batch_put(p->sink, p->batch);
        p->batch = NULL;
    }
}
