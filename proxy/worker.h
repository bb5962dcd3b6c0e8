/* A loop thread. Each worker owns a libuv loop, its own listeners (one
 * SO_REUSEPORT socket per TCP address, a shared descriptor per unix socket)
 * and every session it accepts, for the session's whole life: nothing on the
 * forwarding path is shared between threads, so nothing is locked. */
#ifndef PGW_WORKER_H
#define PGW_WORKER_H

#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "buf.h"
#include "config.h"
#include "list.h"
#include "metrics.h"
#include "pgwarden/event.h"
#include "pgwarden/sink.h"

struct pgw_wreq;

typedef struct pgw_listener {
    union { uv_handle_t handle; uv_stream_t stream; uv_tcp_t tcp; uv_pipe_t pipe; } u;
    struct pgw_worker *w;
    const pgw_endpoint_t *ep;
    int fd;                         /* opened by pgw_proxy before the thread starts */
} pgw_listener_t;

/* Process-wide facts every event carries; filled once by main, read-only. */
typedef struct pgw_observer_info {
    char host[256];
    char instance[37];              /* a UUID made at start */
    char upstream_ip[64];           /* TCP upstream, textual */
    uint16_t upstream_port;
    char upstream_socket[108];      /* unix upstream: the socket file */
} pgw_observer_info_t;

struct pgw_analysis_cache;
struct pgw_frag_cache;
struct pgw_tls;
struct pgw_policy;

/* Commands from the main thread, delivered through wakeup. */
enum { PGW_CMD_DRAIN = 1, PGW_CMD_FORCE = 2 };

typedef struct pgw_worker {
    int index;
    const pgw_config_t *cfg;
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t wakeup;              /* main -> worker */
    uv_timer_t sweep;               /* once a second: session timeouts */
    atomic_int cmd;                 /* PGW_CMD_* bits, set by main */
    uv_async_t *done;               /* worker -> main, sent when the loop ends */
    atomic_int finished;            /* set just before done is sent */

    pgw_listener_t listeners[PGW_MAX_LISTEN];
    int nlisteners;

    pgw_link_t sessions;            /* pgw_session_t.link */
    unsigned nsessions;
    unsigned nhelpers;              /* cancel forwarders in flight */
    uint64_t next_session;
    int draining;
    int loop_ready, wakeup_ready;

    /* audit: only when a sink is configured (sink != NULL) */
    pgw_sink_t *sink;
    pgw_sink_producer_t producer;
    uv_check_t sink_tick;           /* hands batches over at the end of an iteration */
    uv_timer_t sink_timer;          /* ... or when they are due on an idle loop */
    pgw_uuid7_t uuid;
    /* durable sinks (sink->durable): statements admitted (begin records
     * emitted) and their tokens; sessions whose client bytes wait for the
     * end of the iteration, when the spool has been written (session.c) */
    unsigned admitted;
    uint64_t admit_token;
    pgw_link_t deferred;
    const pgw_observer_info_t *observer;
    struct pgw_analysis_cache *analysis;
    struct pgw_frag_cache *frags;   /* encoded analysis fields (statement.c) */

    struct pgw_tls *tls;            /* certificates (main's, set before start); NULL: no TLS */
    /* The access policy as this thread sees it: a reference to the
     * published snapshot, taken again when its generation moves on. */
    struct pgw_policy *policy;
    unsigned policy_gen;
    pgw_metrics_t metrics;          /* this thread's counters, summed at scrape time */

    pgw_buf_pool_t pool;
    struct pgw_wreq *free_wreqs;
    unsigned nfree_wreqs;
} pgw_worker_t;

/* Prepares the loop and listeners; call on the main thread before start. */
int pgw_worker_init(pgw_worker_t *w, int index, const pgw_config_t *cfg,
                    const int *listen_fds, uv_async_t *done,
                    pgw_sink_t *sink, const pgw_observer_info_t *observer);
int pgw_worker_start(pgw_worker_t *w);
void pgw_worker_command(pgw_worker_t *w, int cmd);
/* After the thread has been joined. */
void pgw_worker_destroy(pgw_worker_t *w);

/* Frees the pooled write requests (transport.c); after the loop ended. */
void pgw_worker_free_wreqs(pgw_worker_t *w);

/* The access policy for a new decision (NULL: none): this thread's
 * snapshot, refreshed first when SIGHUP published a new one (a relaxed
 * load when nothing changed). The reference stays the worker's. Also makes
 * sure the thread has an analysis cache when the policy needs one. */
struct pgw_policy *pgw_worker_policy(pgw_worker_t *w);

/* An audit event went into this thread's batch. */
void pgw_worker_audit_emitted(pgw_worker_t *w);

/* A session or helper has gone: the worker may now be able to finish draining. */
void pgw_worker_maybe_finish(pgw_worker_t *w);

#endif
