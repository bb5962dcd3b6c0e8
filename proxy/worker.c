#include "worker.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "policy.h"
#include "session.h"
#include "statement.h"

static void on_connection(uv_stream_t *server, int status)
{
    pgw_listener_t *l = server->data;
    if (status < 0) {
        pgw_warn("listener %s: %s", l->ep->text, uv_strerror(status));
        return;
    }
    pgw_session_accept(l);
}

static void on_sweep(uv_timer_t *t)
{
    pgw_worker_t *w = t->data;
    uint64_t now = uv_now(&w->loop);
    pgw_link_t *n = w->sessions.next;
    while (n != &w->sessions) {
        pgw_link_t *next = n->next;    /* a session unlinks only in its close callback */
        pgw_session_tick(n, now);
        n = next;
    }
}

static void close_listeners(pgw_worker_t *w)
{
    for (int i = 0; i < w->nlisteners; i++)
        if (!uv_is_closing(&w->listeners[i].u.handle))
            uv_close(&w->listeners[i].u.handle, NULL);
}

/* ---- audit batches ------------------------------------------------------
 * Events are encoded into this thread's batch as statements complete; the
 * batch goes to the sink at the end of the loop iteration in which it
 * became due, or from the timer when the loop is otherwise idle. */

static void on_sink_timer(uv_timer_t *t);

/* The producer's clock is the loop's cached time (updated once per
 * iteration): batch ages need no clock read per event. */
static void sink_clock(pgw_worker_t *w)
{
    w->producer.now_us = (int64_t)uv_now(&w->loop) * 1000 + 1;
}

static void arm_sink_timer(pgw_worker_t *w)
{
    if (uv_is_active((uv_handle_t *)&w->sink_timer))
        return;
    int due = pgw_sink_producer_due_ms(&w->producer);
    if (due >= 0)
        uv_timer_start(&w->sink_timer, on_sink_timer, (uint64_t)due, 0);
}

static void on_sink_timer(uv_timer_t *t)
{
    pgw_worker_t *w = t->data;
    sink_clock(w);
    pgw_sink_producer_tick(&w->producer);
    arm_sink_timer(w);
}

void pgw_worker_audit_emitted(pgw_worker_t *w)
{
    /* Events emitted in the close phase come after this iteration's check:
     * the timer makes sure they are handed over even if the loop goes idle. */
    arm_sink_timer(w);
}

/* The crash guarantee of a durable sink (the Kafka spool): this
 * iteration's records, begin records of admitted statements included, are
 * written with one append, and only then are the client bytes carrying
 * those statements forwarded (session.c held them back). */
static void on_sink_check(uv_check_t *c)
{
    pgw_worker_t *w = c->data;
    pgw_analysis_cache_stats_t st;
    pgw_analysis_cache_stats(w->analysis, &st);
    pgw_ctr_set(&w->metrics.cache_hits, st.hits);
    pgw_ctr_set(&w->metrics.cache_misses, st.misses);
    pgw_ctr_set(&w->metrics.cache_entries, st.entries);
    pgw_ctr_set(&w->metrics.parse_ns, st.parse_ns);
    sink_clock(w);
    if (w->sink->durable) {
        pgw_sink_producer_flush(&w->producer);
        pgw_session_run_deferred(w);
        return;
    }
    pgw_sink_producer_tick(&w->producer);
    arm_sink_timer(w);
}

struct pgw_policy *pgw_worker_policy(pgw_worker_t *w)
{
    if (pgw_policy_generation() != w->policy_gen) {
        pgw_policy_t *old = w->policy;
        w->policy = pgw_policy_current(&w->policy_gen);
        pgw_policy_unref(old);
        if (w->policy && !w->analysis && !(w->analysis = pgw_statement_cache_new(w->cfg)))
            pgw_error("thread %d: out of memory for the analysis cache: statement rules not applied",
                      w->index);
    }
    return w->policy;
}

void pgw_worker_maybe_finish(pgw_worker_t *w)
{
    if (!w->draining || w->nsessions || w->nhelpers || uv_is_closing((uv_handle_t *)&w->wakeup))
        return;
    if (w->sink) {
        pgw_sink_producer_flush(&w->producer);
        uv_close((uv_handle_t *)&w->sink_tick, NULL);
        uv_close((uv_handle_t *)&w->sink_timer, NULL);
    }
    uv_close((uv_handle_t *)&w->wakeup, NULL);   /* the loop then runs out of handles */
    if (!uv_is_closing((uv_handle_t *)&w->sweep))
        uv_close((uv_handle_t *)&w->sweep, NULL);
}

static void on_wakeup(uv_async_t *a)
{
    pgw_worker_t *w = a->data;
    int cmd = atomic_exchange(&w->cmd, 0);
    if ((cmd & (PGW_CMD_DRAIN | PGW_CMD_FORCE)) && !w->draining) {
        w->draining = 1;
        close_listeners(w);
        if (w->nsessions)
            pgw_info("thread %d: draining %u session(s)", w->index, w->nsessions);
    }
    if (cmd & PGW_CMD_FORCE) {
        pgw_link_t *n = w->sessions.next;
        while (n != &w->sessions) {
            pgw_link_t *next = n->next;   /* closing does not unlink until the close callback */
            pgw_session_abort(n, "shutdown: drain timeout");
            n = next;
        }
    }
    pgw_worker_maybe_finish(w);
}

int pgw_worker_init(pgw_worker_t *w, int index, const pgw_config_t *cfg,
                    const int *listen_fds, uv_async_t *done,
                    pgw_sink_t *sink, const pgw_observer_info_t *observer)
{
    memset(w, 0, sizeof *w);
    w->index = index;
    w->cfg = cfg;
    w->done = done;
    w->observer = observer;
    pgw_list_init(&w->sessions);
    pgw_list_init(&w->deferred);
    atomic_init(&w->cmd, 0);
    atomic_init(&w->finished, 0);
    int rc = uv_loop_init(&w->loop);
    if (rc)
        return rc;
    w->loop_ready = 1;
    w->wakeup.data = w;
    if ((rc = uv_async_init(&w->loop, &w->wakeup, on_wakeup)))
        return rc;
    w->wakeup_ready = 1;
    w->sweep.data = w;
    uv_timer_init(&w->loop, &w->sweep);
    uv_timer_start(&w->sweep, on_sweep, 1000, 1000);   /* a reload may turn timeouts on */
    uv_unref((uv_handle_t *)&w->sweep);   /* never what keeps the loop alive */
    if (sink) {
        if ((rc = pgw_uuid7_init(&w->uuid)))
            return rc;
        w->analysis = pgw_statement_cache_new(cfg);
        w->frags = pgw_frag_cache_new();
        if (!w->analysis || !w->frags)
            return UV_ENOMEM;
        pgw_sink_producer_init(&w->producer, sink);
        sink_clock(w);
        w->sink_tick.data = w->sink_timer.data = w;
        uv_check_init(&w->loop, &w->sink_tick);
        uv_check_start(&w->sink_tick, on_sink_check);
        uv_timer_init(&w->loop, &w->sink_timer);
        w->sink = sink;
    }
    for (int i = 0; i < cfg->nlisten; i++) {
        pgw_listener_t *l = &w->listeners[i];
        l->w = w;
        l->ep = &cfg->listen[i];
        l->fd = listen_fds[i];
        rc = l->ep->is_unix ? uv_pipe_init(&w->loop, &l->u.pipe, 0) : uv_tcp_init(&w->loop, &l->u.tcp);
        if (rc)
            return rc;
        l->u.handle.data = l;
        w->nlisteners++;
        rc = l->ep->is_unix ? uv_pipe_open(&l->u.pipe, l->fd) : uv_tcp_open(&l->u.tcp, l->fd);
        if (rc == 0)
            rc = uv_listen(&l->u.stream, 1024, on_connection);
        if (rc) {
            pgw_error("listen on %s: %s", l->ep->text, uv_strerror(rc));
            return rc;
        }
    }
    return 0;
}

static void worker_main(void *arg)
{
    pgw_worker_t *w = arg;
    uv_run(&w->loop, UV_RUN_DEFAULT);
    pgw_statement_thread_done();
    atomic_store(&w->finished, 1);
    uv_async_send(w->done);
}

int pgw_worker_start(pgw_worker_t *w)
{
    return uv_thread_create(&w->thread, worker_main, w);
}

void pgw_worker_command(pgw_worker_t *w, int cmd)
{
    atomic_fetch_or(&w->cmd, cmd);
    uv_async_send(&w->wakeup);
}

void pgw_worker_destroy(pgw_worker_t *w)
{
    /* Closes what an aborted start-up left open, then lets the closes run. */
    if (!w->loop_ready)
        return;
    if (w->wakeup_ready && !uv_is_closing((uv_handle_t *)&w->wakeup))
        uv_close((uv_handle_t *)&w->wakeup, NULL);
    if (w->wakeup_ready && !uv_is_closing((uv_handle_t *)&w->sweep))
        uv_close((uv_handle_t *)&w->sweep, NULL);
    if (w->sink && !uv_is_closing((uv_handle_t *)&w->sink_tick)) {
        uv_close((uv_handle_t *)&w->sink_tick, NULL);
        uv_close((uv_handle_t *)&w->sink_timer, NULL);
    }
    close_listeners(w);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&w->loop))
        pgw_warn("thread %d: loop closed with handles still open", w->index);
    if (w->sink)
        pgw_sink_producer_close(&w->producer);
    pgw_statement_cache_free(w->analysis);
    pgw_frag_cache_free(w->frags);
    pgw_statement_thread_done();    /* what the closes above freed here */
    pgw_policy_unref(w->policy);
    w->policy = NULL;
    pgw_buf_pool_destroy(&w->pool);
    pgw_worker_free_wreqs(w);
}
