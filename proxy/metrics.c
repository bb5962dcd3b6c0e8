/* The metrics endpoint: the Prometheus exposition of the per-thread
 * counters, and a small HTTP/1.1 server on the main thread's loop whose
 * requests are parsed by http-parser. See metrics.h. */
#include "metrics.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "list.h"
#include "log.h"
#include "pgwarden/sink.h"
#include "tls.h"
#include "worker.h"

const uint64_t pgw_duration_bounds_us[PGW_DURATION_BUCKETS] = {
    100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000,
    250000, 500000, 1000000, 2500000, 5000000, 10000000,
};

static int sqlstate_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'Z')
        return 10 + c - 'A';
    return -1;
}

void pgw_metrics_statement(pgw_metrics_t *m, pgw_stmt_class_t cls, pgw_result_status_t status,
                           int64_t duration_us, const char *sqlstate)
{
    if ((unsigned)cls >= PGW_STMT_CLASS_COUNT)
        cls = PGW_STMT_CLASS_ABSENT;
    if ((unsigned)status >= PGW_STATUS_COUNT)
        status = PGW_STATUS_ABSENT;
    pgw_ctr_add(&m->statements[cls][status], 1);
    if (status == PGW_STATUS_OK || status == PGW_STATUS_ERROR || status == PGW_STATUS_CANCELLED) {
        uint64_t d = duration_us > 0 ? (uint64_t)duration_us : 0;
        int b = 0;
        while (b < PGW_DURATION_BUCKETS && d > pgw_duration_bounds_us[b])
            b++;
        pgw_ctr_add(&m->duration_buckets[b], 1);   /* cumulated at scrape time */
        pgw_ctr_add(&m->duration_sum_us, d);
        pgw_ctr_add(&m->duration_count, 1);
    }
    if (sqlstate) {
        int a = sqlstate_digit(sqlstate[0]), b = a >= 0 ? sqlstate_digit(sqlstate[1]) : -1;
        if (a >= 0 && b >= 0)
            pgw_ctr_add(&m->errors_by_class[a * 36 + b], 1);
    }
}

/* ---- exposition ------------------------------------------------------------ */

typedef struct out {
    char **buf;
    size_t *len, *cap;
    int failed;
} out_t;

static void put(out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(out_t *o, const char *fmt, ...)
{
    if (o->failed)
        return;
    for (;;) {
        size_t room = *o->cap - *o->len;
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(*o->buf ? *o->buf + *o->len : NULL, *o->buf ? room : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->failed = 1;
            return;
        }
        if ((size_t)n < room && *o->buf) {
            *o->len += (size_t)n;
            return;
        }
        size_t cap = *o->cap ? *o->cap : 16384;
        while (cap - *o->len <= (size_t)n)
            cap *= 2;
        char *nb = realloc(*o->buf, cap);
        if (!nb) {
            o->failed = 1;
            return;
        }
        *o->buf = nb;
        *o->cap = cap;
    }
}

static void head(out_t *o, const char *name, const char *type, const char *help)
{
    put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A metric with one value and no labels. */
static void scalar(out_t *o, const char *name, const char *type, const char *help, uint64_t v)
{
    head(o, name, type, help);
    put(o, "%s %llu\n", name, (unsigned long long)v);
}

#define SUM(field)                                                          \
    ({                                                                      \
        uint64_t s_ = 0;                                                    \
        for (int i_ = 0; i_ < n; i_++)                                      \
            s_ += pgw_ctr_get(&w[i_].metrics.field);                         \
        s_;                                                                 \
    })

static const char *const class_label[PGW_STMT_CLASS_COUNT] = {
    [PGW_STMT_CLASS_ABSENT] = "NONE", [PGW_STMT_CLASS_READ] = "READ",
    [PGW_STMT_CLASS_WRITE] = "WRITE", [PGW_STMT_CLASS_FUNCTION] = "FUNCTION",
    [PGW_STMT_CLASS_ROLE] = "ROLE", [PGW_STMT_CLASS_DDL] = "DDL", [PGW_STMT_CLASS_MISC] = "MISC",
    [PGW_STMT_CLASS_MISC_SET] = "MISC_SET",
};
static const char *const status_label[PGW_STATUS_COUNT] = {
    [PGW_STATUS_ABSENT] = "none", [PGW_STATUS_OK] = "ok", [PGW_STATUS_ERROR] = "error",
    [PGW_STATUS_CANCELLED] = "cancelled", [PGW_STATUS_SKIPPED] = "skipped",
    [PGW_STATUS_UNKNOWN] = "unknown",
};
static const char *const refusal_label[PGW_REFUSED_N] = {
    [PGW_REFUSED_PROTOCOL] = "protocol", [PGW_REFUSED_AUTHENTICATION] = "authentication",
    [PGW_REFUSED_UPSTREAM] = "upstream_unavailable", [PGW_REFUSED_LIMIT] = "limit",
    [PGW_REFUSED_RESOURCES] = "resources", [PGW_REFUSED_TIMEOUT] = "startup_timeout",
};
static const char *const dir_label[PGW_DIR_N] = {
    [PGW_DIR_FRONTEND] = "client_to_server", [PGW_DIR_BACKEND] = "server_to_client",
};

/* A label value as the text format wants it: \\, \" and \n escaped. */
static const char *label_value(const char *in, char *buf, size_t size)
{
    size_t o = 0;
    for (; *in && o + 3 < size; in++) {
        if (*in == '\\' || *in == '"' || *in == '\n') {
            buf[o++] = '\\';
            buf[o++] = *in == '\n' ? 'n' : *in;
        } else {
            buf[o++] = *in;
        }
    }
    buf[o] = '\0';
    return buf;
}

static void put_quantile(out_t *o, const char *broker, const char *q, int64_t us)
{
    if (us < 0)
        put(o, "pgwarden_kafka_broker_rtt_seconds{broker=\"%s\",quantile=\"%s\"} NaN\n", broker, q);
    else
        put(o, "pgwarden_kafka_broker_rtt_seconds{broker=\"%s\",quantile=\"%s\"} %.6f\n", broker, q,
            (double)us / 1e6);
}

/* What librdkafka's statistics tell: the producer queue and each broker. */
static void render_kafka_client(out_t *o, pgw_sink_t *sink)
{
    pgw_kafka_client_stats_t *st = malloc(sizeof *st);
    if (!st) {
        o->failed = 1;
        return;
    }
    pgw_kafka_sink_client_stats(sink, st);
    if (st->documents == 0)
        goto out;                   /* statistics.interval.ms=0, or none yet */
    head(o, "pgwarden_kafka_producer_queue_messages", "gauge",
         "Events in the Kafka producer's queues, waiting to be sent or acknowledged (librdkafka msg_cnt).");
    put(o, "pgwarden_kafka_producer_queue_messages %llu\n", (unsigned long long)st->queue_messages);
    head(o, "pgwarden_kafka_producer_queue_bytes", "gauge",
         "Bytes of those events (librdkafka msg_size).");
    put(o, "pgwarden_kafka_producer_queue_bytes %llu\n", (unsigned long long)st->queue_bytes);
    char names[PGW_KAFKA_BROKERS_MAX][2 * PGW_KAFKA_BROKER_NAME_MAX];
    for (size_t i = 0; i < st->nbrokers; i++)
        label_value(st->brokers[i].name, names[i], sizeof names[i]);
    head(o, "pgwarden_kafka_broker_up", "gauge",
         "1 when the connection to the broker is up (librdkafka state UP), per the latest statistics.");
    for (size_t i = 0; i < st->nbrokers; i++)
        if (st->brokers[i].present)
            put(o, "pgwarden_kafka_broker_up{broker=\"%s\"} %d\n", names[i], st->brokers[i].up ? 1 : 0);
    head(o, "pgwarden_kafka_broker_rtt_seconds", "summary",
         "Round-trip time of requests to the broker: quantiles over the latest statistics interval "
         "(NaN: no answer in it), sum and count over all.");
    for (size_t i = 0; i < st->nbrokers; i++) {
        const pgw_kafka_broker_stats_t *b = &st->brokers[i];
        put_quantile(o, names[i], "0.5", b->rtt_p50_us);
        put_quantile(o, names[i], "0.99", b->rtt_p99_us);
        put(o, "pgwarden_kafka_broker_rtt_seconds_sum{broker=\"%s\"} %.6f\n", names[i],
            (double)b->rtt_sum_us / 1e6);
        put(o, "pgwarden_kafka_broker_rtt_seconds_count{broker=\"%s\"} %llu\n", names[i],
            (unsigned long long)b->rtt_count);
    }
    head(o, "pgwarden_kafka_broker_errors_total", "counter",
         "Errors talking to the broker: send and receive errors, request timeouts, lost connections.");
    for (size_t i = 0; i < st->nbrokers; i++) {
        const pgw_kafka_broker_stats_t *b = &st->brokers[i];
        const struct { const char *kind; uint64_t v; } kinds[] = {
            { "tx", b->tx_errors }, { "rx", b->rx_errors }, { "timeout", b->timeouts },
            { "disconnect", b->disconnects },
        };
        for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++)
            put(o, "pgwarden_kafka_broker_errors_total{broker=\"%s\",kind=\"%s\"} %llu\n", names[i],
                kinds[k].kind, (unsigned long long)kinds[k].v);
    }
    head(o, "pgwarden_kafka_broker_connects_total", "counter",
         "Connection attempts to the broker, failed ones included.");
    for (size_t i = 0; i < st->nbrokers; i++)
        put(o, "pgwarden_kafka_broker_connects_total{broker=\"%s\"} %llu\n", names[i],
            (unsigned long long)st->brokers[i].connects);
out:
    free(st);
}

static uint64_t resident_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, rss = 0;
    if (f) {
        if (fscanf(f, "%lu %lu", &size, &rss) != 2)
            rss = 0;
        fclose(f);
    }
    return (uint64_t)rss * (uint64_t)sysconf(_SC_PAGESIZE);
}

int pgw_metrics_render(pgw_worker_t *w, int n, pgw_sink_t *sink, char **buf, size_t *len, size_t *cap)
{
    out_t o = { buf, len, cap, 0 };

    head(&o, "pgwarden_build_info", "gauge", "pgwarden's version; always 1.");
    put(&o, "pgwarden_build_info{version=\"%s\"} 1\n", PGW_VERSION);
    head(&o, "pgwarden_threads", "gauge", "Event-loop threads.");
    put(&o, "pgwarden_threads %d\n", n);
    scalar(&o, "pgwarden_process_resident_memory_bytes", "gauge",
           "Resident memory of the process.", resident_bytes());

    scalar(&o, "pgwarden_client_connections", "gauge", "Client connections open now.", SUM(clients_active));
    scalar(&o, "pgwarden_client_connections_total", "counter",
           "Client connections accepted.", SUM(clients_total));
    head(&o, "pgwarden_client_connections_refused_total", "counter",
         "Client connections that pgwarden refused before their session started, by reason.");
    for (int r = 0; r < PGW_REFUSED_N; r++)
        put(&o, "pgwarden_client_connections_refused_total{reason=\"%s\"} %llu\n", refusal_label[r],
            (unsigned long long)SUM(refused[r]));
    scalar(&o, "pgwarden_server_connections", "gauge",
           "Connections to the upstream server open now.", SUM(servers_active));
    scalar(&o, "pgwarden_server_connections_total", "counter",
           "Connections made to the upstream server.", SUM(servers_total));
    head(&o, "pgwarden_server_connect_failures_total", "counter",
         "Attempts to connect to the upstream server that failed.");
    put(&o, "pgwarden_server_connect_failures_total %llu\n",
        (unsigned long long)SUM(server_connect_failures));

    head(&o, "pgwarden_bytes_total", "counter", "Bytes forwarded, by direction.");
    for (int d = 0; d < PGW_DIR_N; d++)
        put(&o, "pgwarden_bytes_total{direction=\"%s\"} %llu\n", dir_label[d],
            (unsigned long long)SUM(bytes[d]));
    head(&o, "pgwarden_messages_total", "counter", "Protocol messages forwarded, by direction.");
    for (int d = 0; d < PGW_DIR_N; d++)
        put(&o, "pgwarden_messages_total{direction=\"%s\"} %llu\n", dir_label[d],
            (unsigned long long)SUM(messages[d]));
    head(&o, "pgwarden_protocol_errors_total", "counter",
         "Sessions ended because a malformed message came from that side.");
    for (int d = 0; d < PGW_DIR_N; d++)
        put(&o, "pgwarden_protocol_errors_total{direction=\"%s\"} %llu\n", dir_label[d],
            (unsigned long long)SUM(protocol_errors[d]));

    scalar(&o, "pgwarden_idle_timeouts_total", "counter",
           "Sessions closed by the idle-session timeout.", SUM(idle_timeouts));
    head(&o, "pgwarden_statements_total", "counter",
         "Audited statement executions, by pgAudit class and result status.");
    for (int c = 0; c < PGW_STMT_CLASS_COUNT; c++)
        for (int s = 1; s < PGW_STATUS_COUNT; s++) {
            uint64_t v = SUM(statements[c][s]);
            if (v || (c != PGW_STMT_CLASS_ABSENT && s == PGW_STATUS_OK))
                put(&o, "pgwarden_statements_total{class=\"%s\",status=\"%s\"} %llu\n", class_label[c],
                    status_label[s], (unsigned long long)v);
        }
    head(&o, "pgwarden_statement_duration_seconds", "histogram",
         "From a statement's receipt to its completion, for statements that ran.");
    uint64_t cum = 0;
    for (int b = 0; b <= PGW_DURATION_BUCKETS; b++) {
        cum += SUM(duration_buckets[b]);
        if (b < PGW_DURATION_BUCKETS)
            put(&o, "pgwarden_statement_duration_seconds_bucket{le=\"%g\"} %llu\n",
                (double)pgw_duration_bounds_us[b] / 1e6, (unsigned long long)cum);
        else
            put(&o, "pgwarden_statement_duration_seconds_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    }
    put(&o, "pgwarden_statement_duration_seconds_sum %.6f\n", (double)SUM(duration_sum_us) / 1e6);
    put(&o, "pgwarden_statement_duration_seconds_count %llu\n", (unsigned long long)SUM(duration_count));
    head(&o, "pgwarden_statement_errors_total", "counter", "Failed statements, by SQLSTATE class.");
    static const char digits[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    for (int k = 0; k < PGW_SQLSTATE_CLASSES; k++) {
        uint64_t v = SUM(errors_by_class[k]);
        if (v)
            put(&o, "pgwarden_statement_errors_total{sqlstate_class=\"%c%c\"} %llu\n", digits[k / 36],
                digits[k % 36], (unsigned long long)v);
    }
    static const char *const denied_kinds[2] = { "connection", "statement" };
    head(&o, "pgwarden_denied_total", "counter", "Connections and statements refused by an access-policy rule.");
    for (int k = 0; k < 2; k++)
        put(&o, "pgwarden_denied_total{kind=\"%s\"} %llu\n", denied_kinds[k], (unsigned long long)SUM(denied[k]));
    head(&o, "pgwarden_denied_dry_run_total", "counter",
         "Connections and statements a dry-run access-policy rule would have refused.");
    for (int k = 0; k < 2; k++)
        put(&o, "pgwarden_denied_dry_run_total{kind=\"%s\"} %llu\n", denied_kinds[k],
            (unsigned long long)SUM(denied_dry_run[k]));

    uint64_t emitted = 0, refused = 0, shrunk = 0;
    for (int i = 0; i < n; i++) {
        emitted += atomic_load_explicit(&w[i].producer.events, memory_order_relaxed);
        refused += atomic_load_explicit(&w[i].producer.refused, memory_order_relaxed);
        shrunk += atomic_load_explicit(&w[i].producer.shrunk, memory_order_relaxed);
    }
    pgw_sink_health_t h = { 0 };
    if (sink)
        pgw_sink_health(sink, &h);
    head(&o, "pgwarden_audit_sink_up", "gauge", "1 when the audit sink is configured and healthy.");
    put(&o, "pgwarden_audit_sink_up %d\n", sink && h.ok ? 1 : 0);
    scalar(&o, "pgwarden_audit_events_emitted_total", "counter",
           "Audit events encoded for the sink.", emitted);
    scalar(&o, "pgwarden_audit_events_delivered_total", "counter",
           "Audit events the sink wrote (file) or had acknowledged (Kafka).", h.events);
    scalar(&o, "pgwarden_audit_events_failed_total", "counter",
           "Failed sink writes; each is retried.", h.write_errors);
    scalar(&o, "pgwarden_audit_events_dropped_total", "counter",
           "Audit events lost: could not be encoded, or given up at shutdown.", (refused + h.events_lost));
    scalar(&o, "pgwarden_audit_events_shrunk_total", "counter",
           "Audit events over the sink's largest, recorded without parameter values and with "
           "message and text cut.", shrunk);
    scalar(&o, "pgwarden_audit_queued_events", "gauge",
           "Audit events handed to the sink, not yet written.", h.queued_events);
    scalar(&o, "pgwarden_audit_queued_bytes", "gauge", "Bytes of those events.", h.queued_bytes);
    scalar(&o, "pgwarden_audit_sink_waits_total", "counter",
           "Hand-offs that waited for room in a full sink (block policy).", h.producer_waits);
    if (sink && strcmp(sink->ops->name, "file") == 0) {
        scalar(&o, "pgwarden_audit_file_rotations_total", "counter",
               "Size-based rotations of the audit file (--audit-file-max-bytes).", h.rotations);
        scalar(&o, "pgwarden_audit_file_reopens_total", "counter",
               "Reopens of the audit file: on SIGHUP, and after a failed write.", h.reopens);
        scalar(&o, "pgwarden_audit_file_fsyncs_total", "counter",
               "fdatasync calls on the audit file (--audit-file-fsync-ms).", h.fsyncs);
        if (sink->durable) {
            scalar(&o, "pgwarden_audit_file_spool_bytes", "gauge",
                   "Bytes of the audit file's spool on disk (--spool-dir).", h.spool_bytes);
            scalar(&o, "pgwarden_audit_file_replayed_total", "counter",
                   "Events written again from the spool at start.", h.replayed);
        }
    }
    if (sink && strcmp(sink->ops->name, "kafka") == 0) {
        pgw_kafka_stats_t k;
        pgw_kafka_sink_stats(sink, &k);
        scalar(&o, "pgwarden_kafka_delivery_errors_total", "counter",
               "Kafka deliveries that failed; each event is produced again.", k.delivery_errors);
        scalar(&o, "pgwarden_kafka_resent_total", "counter",
               "Events produced again (failed deliveries, producer restarts).", k.resent);
        scalar(&o, "pgwarden_kafka_replayed_total", "counter",
               "Events sent again from the spool at start.", k.replayed);
        scalar(&o, "pgwarden_kafka_producer_restarts_total", "counter",
               "Producers replaced after a fatal (idempotence) error.", k.producer_restarts);
        scalar(&o, "pgwarden_kafka_spool_dropped_total", "counter",
               "Events dropped because the spool was full (drop policy; reported by audit_gap events).",
               k.dropped);
        scalar(&o, "pgwarden_kafka_spool_bytes", "gauge", "Bytes of the spool on disk.", k.spool_bytes);
        scalar(&o, "pgwarden_kafka_spool_written_bytes_total", "counter",
               "Bytes appended to the spool.", k.spool_bytes_written);
        scalar(&o, "pgwarden_kafka_unacknowledged_events", "gauge",
               "Events produced, not yet acknowledged.", k.outstanding);
        if (sink->durable) {
            head(&o, "pgwarden_spool_oldest_unacknowledged_age_seconds", "gauge",
                 "Age of the oldest event in the spool that Kafka has not acknowledged; 0 when none.");
            put(&o, "pgwarden_spool_oldest_unacknowledged_age_seconds %.3f\n",
                (double)k.oldest_unacked_us / 1e6);
        }
        render_kafka_client(&o, sink);
    }

    scalar(&o, "pgwarden_analysis_cache_hits_total", "counter",
           "SQL strings found in the analysis cache.", SUM(cache_hits));
    scalar(&o, "pgwarden_analysis_cache_misses_total", "counter",
           "SQL strings the parser had to analyse.", SUM(cache_misses));
    scalar(&o, "pgwarden_analysis_cache_entries", "gauge",
           "Query shapes in the analysis caches.", SUM(cache_entries));
    head(&o, "pgwarden_analysis_parse_seconds_total", "counter", "Time spent in the SQL parser.");
    put(&o, "pgwarden_analysis_parse_seconds_total %.6f\n", (double)(SUM(parse_ns) + SUM(parse_pool_ns)) / 1e9);

    head(&o, "pgwarden_tls_handshakes_total", "counter", "TLS handshakes with clients, by result.");
    put(&o, "pgwarden_tls_handshakes_total{result=\"ok\"} %llu\n", (unsigned long long)SUM(tls_handshakes[0]));
    put(&o, "pgwarden_tls_handshakes_total{result=\"failed\"} %llu\n", (unsigned long long)SUM(tls_handshakes[1]));
    int64_t left[2];
    pgw_tls_seconds_left(n > 0 ? w[0].tls : NULL, (int64_t)time(NULL), left);
    if (left[0] != INT64_MIN || left[1] != INT64_MIN)
        head(&o, "pgwarden_tls_certificate_expiry_seconds", "gauge",
             "Seconds until a configured certificate expires (negative: expired), as loaded now.");
    if (left[0] != INT64_MIN)
        put(&o, "pgwarden_tls_certificate_expiry_seconds{certificate=\"tls-cert\"} %lld\n", (long long)left[0]);
    if (left[1] != INT64_MIN)
        put(&o, "pgwarden_tls_certificate_expiry_seconds{certificate=\"upstream-cert\"} %lld\n",
            (long long)left[1]);
    return o.failed ? -ENOMEM : 0;
}

/* ---- the HTTP server -------------------------------------------------------- */

#define REQ_TIMEOUT_MS 10000
#define MAX_REQUESTS 64

typedef struct request request_t;

struct pgw_metrics_server {
    uv_loop_t *loop;
    const pgw_config_t *cfg;
    pgw_worker_t *workers;
    int nworkers;
    pgw_sink_t *sink;
    uv_tcp_t listener;
    pgw_link_t requests;
    unsigned nrequests;
    int draining, stopping;
};

struct request {
    pgw_link_t link;
    pgw_metrics_server_t *ms;
    uv_tcp_t tcp;
    uv_timer_t timer;
    pgw_http_req_t req;
    int responded;
    int closing;                    /* handles still to close */
    /* readiness probe */
    union { uv_tcp_t tcp; uv_pipe_t pipe; } probe;
    uv_connect_t probe_req;
    int probing;
    char *body;                     /* the response being written */
    uv_write_t wreq;
};

static void request_closed(uv_handle_t *h)
{
    request_t *r = h->data;
    if (--r->closing > 0)
        return;
    pgw_list_remove(&r->link);
    r->ms->nrequests--;
    free(r->body);
    free(r);
}

static void request_close(request_t *r)
{
    if (r->closing)
        return;
    r->closing = 2 + (r->probing ? 1 : 0);
    uv_close((uv_handle_t *)&r->tcp, request_closed);
    uv_close((uv_handle_t *)&r->timer, request_closed);
    if (r->probing)
        uv_close((uv_handle_t *)&r->probe, request_closed);
}

static void on_written(uv_write_t *req, int status)
{
    (void)status;
    request_close(req->data);
}

static void respond(request_t *r, int code, const char *reason, const char *ctype, const char *body,
                    size_t blen)
{
    if (r->responded || r->closing)
        return;
    r->responded = 1;
    char headbuf[256];
    int hn = snprintf(headbuf, sizeof headbuf,
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                      "Connection: close\r\n\r\n", code, reason, ctype, blen);
    r->body = malloc((size_t)hn + blen);
    if (!r->body) {
        request_close(r);
        return;
    }
    memcpy(r->body, headbuf, (size_t)hn);
    memcpy(r->body + hn, body, blen);
    uv_buf_t b = uv_buf_init(r->body, (unsigned)((size_t)hn + blen));
    r->wreq.data = r;
    if (uv_write(&r->wreq, (uv_stream_t *)&r->tcp, &b, 1, on_written))
        request_close(r);
}

static void respond_text(request_t *r, int code, const char *reason, const char *text)
{
    respond(r, code, reason, "text/plain; charset=utf-8", text, strlen(text));
}

/* Readiness: the sink first (cheap), then a real connection to the upstream. */
static void probe_done(request_t *r, int status)
{
    char msg[512];
    if (status == 0) {
        respond_text(r, 200, "OK", "ready\n");
    } else {
        snprintf(msg, sizeof msg, "not ready: upstream %s: %s\n", r->ms->cfg->upstream.text,
                 uv_strerror(status));
        respond_text(r, 503, "Service Unavailable", msg);
    }
}

static void on_probe_connected(uv_connect_t *req, int status)
{
    request_t *r = req->data;
    if (status == UV_ECANCELED || r->closing)
        return;
    probe_done(r, status);
}

static void ready(request_t *r)
{
    pgw_metrics_server_t *ms = r->ms;
    if (ms->draining) {
        respond_text(r, 503, "Service Unavailable", "not ready: draining\n");
        return;
    }
    if (ms->sink) {
        pgw_sink_health_t h;
        pgw_sink_health(ms->sink, &h);
        if (!h.ok) {
            char msg[200];
            snprintf(msg, sizeof msg, "not ready: audit sink: %s\n",
                     h.last_errno ? strerror(h.last_errno) : "failing");
            respond_text(r, 503, "Service Unavailable", msg);
            return;
        }
    }
    const pgw_endpoint_t *up = &ms->cfg->upstream;
    int rc;
    r->probe_req.data = r;
    if (up->is_unix) {
        rc = uv_pipe_init(ms->loop, &r->probe.pipe, 0);
        if (rc == 0) {
            r->probing = 1;
            r->probe.pipe.data = r;
            uv_pipe_connect(&r->probe_req, &r->probe.pipe, up->path, on_probe_connected);
        }
    } else {
        rc = uv_tcp_init(ms->loop, &r->probe.tcp);
        if (rc == 0) {
            r->probing = 1;
            r->probe.tcp.data = r;
            rc = uv_tcp_connect(&r->probe_req, &r->probe.tcp, (const struct sockaddr *)&up->sa,
                                on_probe_connected);
        }
    }
    if (rc)
        probe_done(r, rc);
}

static void handle(request_t *r, int status, pgw_http_route_t route)
{
    switch (status) {
    case 400:
        respond_text(r, 400, "Bad Request", "bad request\n");
        return;
    case 404:
        respond_text(r, 404, "Not Found", "not found: try /metrics, /healthz or /readyz\n");
        return;
    case 405:
        respond_text(r, 405, "Method Not Allowed", "only GET\n");
        return;
    case 414:
        respond_text(r, 414, "URI Too Long", "URI too long\n");
        return;
    case 431:
        respond_text(r, 431, "Request Header Fields Too Large", "request too large\n");
        return;
    default:
        break;
    }
    if (route == PGW_ROUTE_HEALTHZ) {
        respond_text(r, 200, "OK", "ok\n");
    } else if (route == PGW_ROUTE_READYZ) {
        ready(r);
    } else {
        char *buf = NULL;
        size_t len = 0, cap = 0;
        pgw_metrics_server_t *ms = r->ms;
        if (pgw_metrics_render(ms->workers, ms->nworkers, ms->sink, &buf, &len, &cap)) {
            respond_text(r, 500, "Internal Server Error", "out of memory\n");
        } else {
            respond(r, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", buf, len);
        }
        free(buf);
    }
}

/* ---- the request, apart from the socket ------------------------------------ */

static int on_url(http_parser *p, const char *at, size_t len)
{
    pgw_http_req_t *q = p->data;
    if (q->url_len + len >= sizeof q->url) {
        q->url_too_long = 1;
        return 0;
    }
    memcpy(q->url + q->url_len, at, len);
    q->url_len += len;
    q->url[q->url_len] = '\0';
    return 0;
}

static int on_message_complete(http_parser *p)
{
    pgw_http_req_t *q = p->data;
    q->complete = 1;
    http_parser_pause(p, 1);        /* one request per connection */
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_url = on_url,
    .on_message_complete = on_message_complete,
};

void pgw_http_req_init(pgw_http_req_t *q)
{
    memset(q, 0, sizeof *q);
    http_parser_init(&q->parser, HTTP_REQUEST);
    q->parser.data = q;
}

static int route_of(pgw_http_req_t *q, pgw_http_route_t *route)
{
    if (q->url_too_long)
        return 414;
    /* The path, without a query string. */
    char *qs = strchr(q->url, '?');
    if (qs)
        *qs = '\0';
    pgw_http_route_t r = !strcmp(q->url, "/metrics") ? PGW_ROUTE_METRICS
                       : !strcmp(q->url, "/healthz") ? PGW_ROUTE_HEALTHZ
                       : !strcmp(q->url, "/readyz") ? PGW_ROUTE_READYZ : PGW_ROUTE_NONE;
    if (r == PGW_ROUTE_NONE)
        return 404;
    if (q->parser.method != HTTP_GET && q->parser.method != HTTP_HEAD)
        return 405;
    *route = r;
    return 200;
}

static int feed(pgw_http_req_t *q, const char *buf, size_t n, pgw_http_route_t *route)
{
    q->got += n;
    size_t done = http_parser_execute(&q->parser, &parser_settings, buf, n);
    enum http_errno e = HTTP_PARSER_ERRNO(&q->parser);
    if (q->complete)
        return route_of(q, route);
    if ((e != HPE_OK && e != HPE_PAUSED) || done != n) {
        pgw_debug("metrics: bad request: %s", http_errno_description(e));
        return 400;
    }
    if (q->got > PGW_HTTP_REQ_MAX_BYTES)
        return 431;
    return 0;
}

int pgw_http_req_feed(pgw_http_req_t *q, const char *buf, size_t n, pgw_http_route_t *route)
{
    *route = PGW_ROUTE_NONE;
    if (q->answered)
        return 400;             /* fed again after its answer: a caller's bug */
    int status = feed(q, buf, n, route);
    q->answered = status != 0;
    return status;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)h;
    (void)suggested;
    static char slab[PGW_HTTP_REQ_MAX_BYTES];   /* the main loop reads one request at a time */
    *b = uv_buf_init(slab, sizeof slab);
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    request_t *r = st->data;
    if (n < 0) {
        request_close(r);
        return;
    }
    if (n == 0 || r->req.answered || r->responded)
        return;
    pgw_http_route_t route;
    int status = pgw_http_req_feed(&r->req, b->base, (size_t)n, &route);
    if (status) {
        uv_read_stop(st);
        handle(r, status, route);
    }
}

static void on_timeout(uv_timer_t *t)
{
    request_t *r = t->data;
    if (r->responded)
        request_close(r);            /* the client does not read its answer */
    else if (r->req.complete)
        respond_text(r, 503, "Service Unavailable", "not ready: upstream did not answer in time\n");
    else
        request_close(r);            /* too slow to send a request */
}

static void on_connection(uv_stream_t *server, int status)
{
    pgw_metrics_server_t *ms = server->data;
    if (status < 0 || ms->stopping)
        return;
    request_t *r = calloc(1, sizeof *r);
    if (!r)
        return;
    r->ms = ms;
    uv_tcp_init(ms->loop, &r->tcp);
    uv_timer_init(ms->loop, &r->timer);
    r->tcp.data = r->timer.data = r;
    pgw_list_push(&ms->requests, &r->link);
    ms->nrequests++;
    if (uv_accept(server, (uv_stream_t *)&r->tcp) || ms->nrequests > MAX_REQUESTS) {
        request_close(r);
        return;
    }
    pgw_http_req_init(&r->req);
    uv_timer_start(&r->timer, on_timeout, REQ_TIMEOUT_MS / 2, REQ_TIMEOUT_MS / 2);
    uv_read_start((uv_stream_t *)&r->tcp, on_alloc, on_read);
}

int pgw_metrics_start(uv_loop_t *loop, const pgw_config_t *cfg, pgw_worker_t *workers, int n,
                      pgw_sink_t *sink, pgw_metrics_server_t **out)
{
    pgw_metrics_server_t *ms = calloc(1, sizeof *ms);
    if (!ms)
        return UV_ENOMEM;
    ms->loop = loop;
    ms->cfg = cfg;
    ms->workers = workers;
    ms->nworkers = n;
    ms->sink = sink;
    pgw_list_init(&ms->requests);
    uv_tcp_init(loop, &ms->listener);
    ms->listener.data = ms;
    int rc = uv_tcp_bind(&ms->listener, (const struct sockaddr *)&cfg->metrics_listen.sa, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&ms->listener, 64, on_connection);
    if (rc) {
        fprintf(stderr, "pgwarden: cannot listen on %s for metrics: %s\n", cfg->metrics_listen.text,
                uv_strerror(rc));
        uv_close((uv_handle_t *)&ms->listener, NULL);
        uv_run(loop, UV_RUN_NOWAIT);
        free(ms);
        return rc;
    }
    pgw_info("metrics on http://%s/metrics", cfg->metrics_listen.text);
    *out = ms;
    return 0;
}

void pgw_metrics_draining(pgw_metrics_server_t *ms)
{
    ms->draining = 1;
}

void pgw_metrics_stop(pgw_metrics_server_t *ms)
{
    ms->stopping = 1;
    pgw_link_t *l, *next;
    for (l = ms->requests.next; l != &ms->requests; l = next) {
        next = l->next;
        request_close(pgw_container_of(l, request_t, link));
    }
    uv_close((uv_handle_t *)&ms->listener, NULL);
}

void pgw_metrics_free(pgw_metrics_server_t *ms)
{
    free(ms);
}
