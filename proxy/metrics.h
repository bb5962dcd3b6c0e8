/* What pgwarden counts, and the HTTP endpoint that shows it to Prometheus.
 *
 * Counters live per loop thread (pgw_metrics_t, embedded in the worker):
 * written by that thread only, with a relaxed load and store (no locked
 * instruction, no shared cache line on the forwarding path), and read by
 * the endpoint at scrape time, which sums the threads. The endpoint runs on
 * the main thread's loop; scraping never touches a loop thread.
 *
 *   GET /metrics   Prometheus text format 0.0.4
 *   GET /healthz   200 while the process runs
 *   GET /readyz    200 when the upstream accepts a connection and the audit
 *                  sink is healthy, 503 with the reason otherwise
 * Anything else is 404 (405 for another method); a request that does not
 * parse, or is too large or too slow, gets 400 or a closed socket. */
#ifndef PGW_METRICS_H
#define PGW_METRICS_H

#include <stdatomic.h>
#include <http_parser.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "pgwarden/event.h"

typedef _Atomic uint64_t pgw_ctr_t;

/* Single writer: its loop thread. */
static inline void pgw_ctr_add(pgw_ctr_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n, memory_order_relaxed);
}
static inline void pgw_ctr_sub(pgw_ctr_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) - n, memory_order_relaxed);
}
static inline void pgw_ctr_set(pgw_ctr_t *c, uint64_t v)
{
    atomic_store_explicit(c, v, memory_order_relaxed);
}
static inline uint64_t pgw_ctr_get(const pgw_ctr_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

/* Why a client was refused before its session started. */
typedef enum pgw_refusal {
    PGW_REFUSED_PROTOCOL,           /* a bad or unsupported startup */
    PGW_REFUSED_AUTHENTICATION,     /* refused by pgwarden's own identity checks */
    PGW_REFUSED_UPSTREAM,           /* the server could not be reached */
    PGW_REFUSED_LIMIT,              /* a connection limit */
    PGW_REFUSED_RESOURCES,          /* out of memory, accept failures */
    PGW_REFUSED_TIMEOUT,            /* the startup did not complete in time */
    PGW_REFUSED_N
} pgw_refusal_t;

enum { PGW_DIR_FRONTEND, PGW_DIR_BACKEND, PGW_DIR_N };

/* Statement duration buckets, upper bounds in µs (100 µs to 10 s). */
#define PGW_DURATION_BUCKETS 16
extern const uint64_t pgw_duration_bounds_us[PGW_DURATION_BUCKETS];

#define PGW_SQLSTATE_CLASSES (36 * 36)

typedef struct pgw_metrics {
    pgw_ctr_t clients_active, clients_total;
    pgw_ctr_t refused[PGW_REFUSED_N];
    pgw_ctr_t servers_active, servers_total, server_connect_failures;
    pgw_ctr_t bytes[PGW_DIR_N], messages[PGW_DIR_N];
    pgw_ctr_t protocol_errors[PGW_DIR_N];   /* sessions ended by a malformed message */
    pgw_ctr_t idle_timeouts;                 /* sessions ended by the idle timeout */
    /* audit (zero without a sink) */
    pgw_ctr_t statements[PGW_STMT_CLASS_COUNT][PGW_STATUS_COUNT];
    pgw_ctr_t duration_buckets[PGW_DURATION_BUCKETS + 1];   /* the last one is +Inf */
    pgw_ctr_t duration_sum_us, duration_count;
    pgw_ctr_t errors_by_class[PGW_SQLSTATE_CLASSES];
    pgw_ctr_t denied[2];            /* by the access policy: [0] connections, [1] statements */
    pgw_ctr_t denied_dry_run[2];    /* dry-run rules that matched (nothing refused) */
    pgw_ctr_t cache_hits, cache_misses, cache_entries, parse_ns;
    pgw_ctr_t parse_pool_ns;        /* big statements parsed in the thread pool */
    pgw_ctr_t tls_handshakes[2];    /* client leg: [0] completed, [1] failed */
} pgw_metrics_t;

/* Counts one finished statement (its class, status, duration and error). */
void pgw_metrics_statement(pgw_metrics_t *m, pgw_stmt_class_t cls, pgw_result_status_t status,
                           int64_t duration_us, const char *sqlstate);

struct pgw_worker;
struct pgw_sink;
typedef struct pgw_metrics_server pgw_metrics_server_t;

/* Starts the endpoint on loop (the main thread's). workers[0..n) are read
 * at scrape time; sink may be NULL. Returns 0 or a libuv error, logged. */
int pgw_metrics_start(uv_loop_t *loop, const pgw_config_t *cfg, struct pgw_worker *workers, int n,
                      struct pgw_sink *sink, pgw_metrics_server_t **out);
/* Readiness reports 503 "draining" from now on. */
void pgw_metrics_draining(pgw_metrics_server_t *ms);
/* Closes the listener and every open request; the loop then runs out. */
void pgw_metrics_stop(pgw_metrics_server_t *ms);
/* After the loop has ended. */
void pgw_metrics_free(pgw_metrics_server_t *ms);

/* The request side of the endpoint, apart from any socket (the server
 * feeds it what it reads; the fuzzer feeds it bytes). One request per
 * connection. */
#define PGW_HTTP_REQ_MAX_BYTES 8192     /* request line and headers; there is no body */
typedef enum pgw_http_route {
    PGW_ROUTE_NONE = 0, PGW_ROUTE_METRICS, PGW_ROUTE_HEALTHZ, PGW_ROUTE_READYZ
} pgw_http_route_t;
typedef struct pgw_http_req {
    http_parser parser;
    size_t got;                     /* bytes fed */
    char url[256];
    size_t url_len;
    int url_too_long, complete;
    int answered;                   /* a status was returned */
} pgw_http_req_t;
void pgw_http_req_init(pgw_http_req_t *q);
/* Feeds the bytes that arrived. Returns 0 while the request is incomplete,
 * else the status of the answer: 200 with *route set (a known path with GET
 * or HEAD), 400 (does not parse), 404, 405, 414 (URL over 255 bytes) or 431
 * (over PGW_HTTP_REQ_MAX_BYTES without its end). Once it has returned a
 * status, the request takes no more bytes (400). */
int pgw_http_req_feed(pgw_http_req_t *q, const char *buf, size_t n, pgw_http_route_t *route);

/* The exposition itself, for the endpoint and the tests: appends the text
 * format to *buf (realloc'ed; *len, *cap updated). Returns 0 or -ENOMEM. */
int pgw_metrics_render(struct pgw_worker *workers, int n, struct pgw_sink *sink,
                       char **buf, size_t *len, size_t *cap);

#endif
