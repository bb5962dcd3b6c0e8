#include "session.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/ssl.h>

#include "audit.h"
#include "conn_limits.h"
#include "log.h"
#include "pgwarden/analysis.h"
#include "pgwarden/protocol.h"
#include "policy.h"
#include "statement.h"
#include "tls.h"
#include "transport.h"

/* Backpressure: once this many bytes wait to be written to one side, stop
 * reading the other side; resume when the backlog falls under the low mark.
 * With PGW_BUF_SIZE reads this bounds a session's buffers to a few hundred
 * KiB whatever the result size or the client's speed. */
/* Backpressure: --max-pending-bytes (256 KiB by default) stops reading
 * the other side; a quarter of it resumes. */
#define PGW_WATER_HIGH(s) pgw_limits_max_pending()
#define PGW_WATER_LOW(s) (pgw_limits_max_pending() / 4)

enum session_state { S_STARTUP, S_CONNECTING, S_UPSTREAM_TLS, S_FORWARDING, S_FINISHING, S_CLOSED };
static const char *const state_names[] = { "startup", "connecting", "upstream tls", "forwarding",
                                           "finishing", "closed" };
static const char *const sslmode_names[] = { "disable", "require", "verify-ca", "verify-full" };

#define PGW_TLS_HANDSHAKE_BYTE 0x16  /* a TLS record of type handshake: direct TLS */

typedef struct pgw_session pgw_session_t;
typedef struct gate gate_t;

/* Client bytes held until the spool is written (durable sinks only). */
typedef struct deferred {
    struct deferred *next;
    pgw_buf_t *b;
    size_t n;
} deferred_t;

typedef struct pgw_session {
    pgw_link_t link;                /* in worker->sessions */
    pgw_worker_t *w;
    uint64_t id;
    enum session_state state;
    pgw_leg_t client, server;
    pgw_framer_t fe, be;            /* frontend (client->server), backend */
    uv_connect_t connect_req;

    uint8_t *early;                 /* startup packet + bytes after it, until connected */
    size_t early_len;
    uint32_t startup_code;
    int startup_bad;                /* pgw_parse_startup's error, if any */
    unsigned ssl_done : 1;          /* an SSLRequest was answered */
    unsigned gss_done : 1;          /* a GSSENCRequest was answered */
    unsigned direct_tls : 1;        /* TLS from the first byte, without SSLRequest */
    unsigned sasl_stripped : 1;     /* SCRAM-SHA-256-PLUS removed from the server's offer */

    const pgw_endpoint_t *listen_ep;
    pgw_tls_ctx_t *tls;             /* a reference, or NULL: TLS configured on neither leg */
    pgw_tls_info_t *tls_info;       /* the client leg's handshake, or NULL */

    /* An AuthenticationSASL message rewritten without SCRAM-SHA-256-PLUS,
     * sent in place of the original bytes at sasl_off in the read being
     * framed (cur_buf). */
    const pgw_buf_t *cur_buf;
    size_t cur_len;
    uint8_t *sasl_msg;
    size_t sasl_msg_len, sasl_off, sasl_len;
    unsigned server_up : 1;         /* the upstream connection was made (metrics) */
    unsigned admitted : 1;          /* holds a slot of the connection limits */
    unsigned ready : 1;             /* the server sent its first ReadyForQuery */
    unsigned waiting : 1;           /* the client sent something since the last one */
    int refusal;                    /* a pgw_refusal_t for the next refusal, or -1 */
    uint64_t accepted_ms;           /* loop clock at accept */
    uint64_t idle_since_ms;         /* loop clock at the last ReadyForQuery */
    char addr[48];                  /* client IP, for the per-address limit; "" for unix */

    char peer[64];                  /* client address, for messages */
    char user[64], database[64];
    uint32_t backend_pid;
    const char *close_reason;
    pgw_end_reason_t end_reason;
    pgw_audit_t *audit;             /* NULL when no audit sink is configured */
    int64_t now_us;                 /* receipt time of the read being framed (audit only) */
    pgw_link_t dlink;               /* in worker->deferred while dq holds reads */
    deferred_t *dq, **dq_tail;
    /* The access policy (policy.h): the snapshot the session's statement
     * rules index (a reference), and the gate its client bytes pass while
     * statement rules apply; without them the forwarding path is as is. */
    pgw_policy_t *pol;
    unsigned pol_gen;
    uint32_t *pol_rules;
    unsigned pol_nrules;
    unsigned user_slot : 1;         /* counts in its user's sessions (max-sessions) */
    gate_t *gate;
} pgw_session_t;

#define slog(level, s, fmt, ...)                                                              \
    do {                                                                                      \
        if (pgw_log_enabled(level)) {                                                         \
            char conn_[48];                                                                   \
            snprintf(conn_, sizeof conn_, "%d-%llu", (s)->w->index, (unsigned long long)(s)->id); \
            pgw_log_write_conn((level), conn_, (s)->peer, (s)->user, fmt, ##__VA_ARGS__);     \
        }                                                                                     \
    } while (0)

static void session_close(pgw_session_t *s, const char *reason);
static void session_finish(pgw_session_t *s, const char *reason);
static void upstream_connect(pgw_session_t *s);
static void cancel_forward(pgw_worker_t *w, const uint8_t pkt[16]);

static void set_state(pgw_session_t *s, enum session_state st)
{
    slog(PGW_LOG_DEBUG, s, "%s -> %s", state_names[s->state], state_names[st]);
    s->state = st;
}

/* ---- sending what the proxy itself says ------------------------------- */

/* Copies n bytes into an owned write on leg: for the few messages pgwarden
 * composes itself (the SSL answer, FATAL errors). */
static int send_copy(pgw_leg_t *leg, const void *p, size_t n)
{
    pgw_buf_t *b = pgw_buf_get(&leg->w->pool);
    if (!b || n > b->cap) {
        if (b)
            pgw_buf_release(&leg->w->pool, b);
        return -1;
    }
    memcpy(b->data, p, n);
    int rc = pgw_leg_write(leg, b, b->data, n);
    pgw_buf_release(&leg->w->pool, b);
    return rc;
}

/* A FATAL ErrorResponse to the client, then the session ends once it is
 * delivered. The message is also the log line, so operators see what the
 * client saw. */
static void fatal_to_client(pgw_session_t *s, const char *sqlstate, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fatal_to_client(pgw_session_t *s, const char *sqlstate, const char *fmt, ...)
{
    char msg[512];
    uint8_t pkt[640];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    slog(PGW_LOG_INFO, s, "refused: %s (SQLSTATE %s)", msg, sqlstate);
    pgw_metrics_t *mt = &s->w->metrics;
    if (s->refusal >= 0) {
        pgw_ctr_add(&mt->refused[s->refusal], 1);
    } else if (s->state < S_FORWARDING) {
        pgw_refusal_t why = !strcmp(sqlstate, "08006")    ? PGW_REFUSED_UPSTREAM
                            : !strncmp(sqlstate, "28", 2) ? PGW_REFUSED_AUTHENTICATION
                            : !strncmp(sqlstate, "53", 2) ? PGW_REFUSED_LIMIT
                                                          : PGW_REFUSED_PROTOCOL;
        pgw_ctr_add(&mt->refused[why], 1);
    } else if (!strcmp(sqlstate, "08P01")) {
        pgw_ctr_add(&mt->protocol_errors[PGW_DIR_FRONTEND], 1);
    }
    if (s->audit)
        pgw_audit_refused(s->audit, sqlstate, msg);
    ssize_t n = pgw_build_error(pkt, sizeof pkt, "FATAL", sqlstate, msg);
    if (n > 0 && s->client.open)
        (void)send_copy(&s->client, pkt, (size_t)n);
    session_finish(s, msg);
}

/* ---- backpressure ---------------------------------------------------- */

static pgw_leg_t *other_leg(pgw_session_t *s, pgw_leg_t *leg)
{
    return leg == &s->client ? &s->server : &s->client;
}

/* Called by the transport after a write to dst completed. */
static void on_drained(pgw_leg_t *dst)
{
    pgw_session_t *s = dst->owner;
    if (s->state == S_FINISHING) {
        if (pgw_leg_idle(&s->client) && pgw_leg_idle(&s->server))
            session_close(s, s->close_reason);
        return;
    }
    pgw_leg_t *src = other_leg(s, dst);
    if (src->paused && pgw_leg_backlog(dst) <= PGW_WATER_LOW(s) && s->state == S_FORWARDING) {
        src->paused = 0;
        pgw_leg_read_start(src);
    }
}

static void forward(pgw_session_t *s, pgw_leg_t *src, pgw_buf_t *b, size_t n)
{
    pgw_leg_t *dst = other_leg(s, src);
    if (pgw_leg_write(dst, b, b->data, n)) {
        session_close(s, "write failed");
        return;
    }
    if (pgw_leg_backlog(dst) > PGW_WATER_HIGH(s) && !src->paused) {
        src->paused = 1;
        pgw_leg_read_stop(src);
    }
}

/* ---- forwarding after the spool (durable sinks) ---------------------------
 * A read that admitted statements (begin records now in this thread's
 * batch) is forwarded only at the end of the iteration, after the batch is
 * spooled; later reads of the same session queue behind it, so the byte
 * order never changes. Sessions that admitted nothing forward at once. */

static int defer(pgw_session_t *s, pgw_buf_t *b, size_t n)
{
    deferred_t *d = malloc(sizeof *d);
    if (!d)
        return -1;
    d->next = NULL;
    d->b = pgw_buf_ref(b);
    d->n = n;
    if (!s->dq) {
        s->dq_tail = &s->dq;
        pgw_list_push(&s->w->deferred, &s->dlink);
    }
    *s->dq_tail = d;
    s->dq_tail = &d->next;
    return 0;
}

static void drop_deferred(pgw_session_t *s)
{
    while (s->dq) {
        deferred_t *d = s->dq;
        s->dq = d->next;
        pgw_buf_release(&s->w->pool, d->b);
        free(d);
    }
    pgw_list_remove(&s->dlink);
}

void pgw_session_run_deferred(pgw_worker_t *w)
{
    while (!pgw_list_empty(&w->deferred)) {
        pgw_session_t *s = pgw_container_of(w->deferred.next, pgw_session_t, dlink);
        pgw_list_remove(&s->dlink);
        while (s->dq) {
            deferred_t *d = s->dq;
            s->dq = d->next;
            /* A session closed meanwhile sends nothing more. */
            if (s->state == S_FORWARDING || s->state == S_FINISHING)
                forward(s, &s->client, d->b, d->n);
            pgw_buf_release(&w->pool, d->b);
            free(d);
        }
    }
}

/* ---- the access policy ---------------------------------------------------
 * Connection rules are decided once the StartupMessage is read (policy.c).
 * When statement rules apply to the session, its client bytes go through
 * the gate: whole messages are taken one by one; a Query or Parse waits
 * for its analysis (this thread's cache; a long text that misses is parsed
 * in libuv's thread pool while the session's reads pause), and a refused
 * one is replaced, on the way to the server, by a statement that fails with
 * the refusal (SQLSTATE 42501, the rule's name). The server then raises the
 * error itself, in order with everything else: the transaction fails as
 * it would have, an extended-protocol batch is skipped until Sync, and
 * every ReadyForQuery tells the truth. A Bind of a refused prepared
 * statement is sent without its parameters. The client's original messages
 * still go to the framer, so the audit records what the client sent. */

struct gate_job;

struct gate {
    uint8_t *in;                    /* client bytes not yet passed (copies) */
    size_t len, cap;
    int busy;                       /* a text is being analysed off the loop */
    struct gate_job *job;
    pgw_analysis_t an;              /* the finished job's analysis, for the head message */
    int has_an;
    char **denied;                  /* prepared statements replaced by a refusal */
    unsigned ndenied;
    pgw_buf_t *out;                 /* what goes to the server, copied */
    size_t out_len;
    unsigned admitted;              /* w->admitted when this pass started */
};

typedef struct gate_job {
    uv_work_t req;
    pgw_session_t *s;               /* NULL once the session is gone */
    pgw_analysis_t an;
    int rc;
    size_t len;
    char text[];
} gate_job_t;

static void gate_run(pgw_session_t *s);

static void policy_ident(pgw_session_t *s, pgw_policy_ident_t *id, struct sockaddr_storage *ss)
{
    memset(id, 0, sizeof *id);
    id->listener = s->listen_ep->text;
    id->addr = s->client.is_unix ? NULL : pgw_leg_peer_addr(&s->client, ss);
    id->tls = s->client.ssl != NULL;
    id->has_cert = s->tls_info && s->tls_info->has_cert;
    id->cn = s->tls_info ? s->tls_info->cn : "";
    id->issuer = s->tls_info ? s->tls_info->issuer : "";
    id->user = s->user;
    id->database = s->database;
    id->map = s->tls ? s->tls->map : NULL;
}

static void gate_free(pgw_session_t *s)
{
    gate_t *g = s->gate;
    if (!g)
        return;
    if (g->job)
        g->job->s = NULL;           /* its completion frees it */
    if (g->has_an)
        pgw_analysis_clear(&g->an);
    for (unsigned i = 0; i < g->ndenied; i++)
        free(g->denied[i]);
    free(g->denied);
    if (g->out)
        pgw_buf_release(&s->w->pool, g->out);
    free(g->in);
    free(g);
    s->gate = NULL;
}

/* The statement rules that apply to the session under pol; opens the gate
 * when there are any. Returns -1 when out of memory. */
static int policy_adopt(pgw_session_t *s, pgw_policy_t *pol)
{
    struct sockaddr_storage ss;
    pgw_policy_ident_t id;
    uint32_t *rules = NULL;
    policy_ident(s, &id, &ss);
    int n = pol ? pgw_policy_session_rules(pol, &id, &rules) : 0;
    if (n < 0)
        return -1;
    if (n > 0 && !s->gate && !(s->gate = calloc(1, sizeof *s->gate))) {
        free(rules);
        return -1;
    }
    free(s->pol_rules);
    pgw_policy_unref(s->pol);
    s->pol = pgw_policy_ref(pol);
    s->pol_rules = rules;
    s->pol_nrules = (unsigned)n;
    slog(PGW_LOG_DEBUG, s, "%d statement rule(s) apply%s", n,
         s->gate ? ": client messages pass the policy gate" : "");
    return 0;
}

/* A reload published new rules: the next statements follow them. */
static int policy_refresh(pgw_session_t *s)
{
    pgw_policy_t *pol = pgw_worker_policy(s->w);
    s->pol_gen = s->w->policy_gen;
    if (pol == s->pol)
        return 0;
    if (policy_adopt(s, pol)) {
        session_close(s, "out of memory");
        return -1;
    }
    return 0;
}

/* The connection rules, after the StartupMessage and the TLS identity
 * checks, before the connection limits. Returns 0 to go on. */
static int policy_connect(pgw_session_t *s)
{
    pgw_policy_t *pol = pgw_worker_policy(s->w);
    s->pol_gen = s->w->policy_gen;
    if (!pol)
        return 0;
    struct sockaddr_storage ss;
    pgw_policy_ident_t id;
    pgw_policy_conn_t c;
    policy_ident(s, &id, &ss);
    pgw_policy_connect(pol, &id, &c);
    s->user_slot = c.user_slot;
    for (unsigned i = 0; i < c.ndry; i++) {
        const char *state = strncmp(c.dry_message[i], "too many", 8) == 0 ? "53300" : "28000";
        pgw_ctr_add(&s->w->metrics.denied_dry_run[0], 1);
        slog(PGW_LOG_INFO, s, "dry run: %s", c.dry_message[i]);
        if (s->audit)
            pgw_audit_denied(s->audit, pgw_policy_rule_name(c.dry[i]), 0, state, c.dry_message[i], NULL, 0,
                             PGW_PROTOCOL_ABSENT, NULL);
    }
    if (c.refused) {
        pgw_ctr_add(&s->w->metrics.denied[0], 1);
        if (s->audit)
            pgw_audit_denied(s->audit, pgw_policy_rule_name(c.rule), 1, c.sqlstate, c.message, NULL, 0,
                             PGW_PROTOCOL_ABSENT, NULL);
        s->refusal = strcmp(c.sqlstate, "53300") == 0 ? PGW_REFUSED_LIMIT : PGW_REFUSED_AUTHENTICATION;
        fatal_to_client(s, c.sqlstate, "%s", c.message);
        return -1;
    }
    if (policy_adopt(s, pol)) {
        session_close(s, "out of memory");
        return -1;
    }
    return 0;
}

/* ---- the gate's output --------------------------------------------------- */

static void gate_flush(pgw_session_t *s)
{
    gate_t *g = s->gate;
    pgw_buf_t *b = g->out;
    size_t n = g->out_len;
    g->out = NULL;
    g->out_len = 0;
    if (!b)
        return;
    if (n && (s->state == S_FORWARDING || s->state == S_FINISHING)) {
        /* The durable sinks' ordering, as for plain reads (client_data). */
        if (s->dq || s->w->admitted != g->admitted) {
            if (defer(s, b, n))
                session_close(s, "out of memory");
        } else {
            forward(s, &s->client, b, n);
        }
    }
    pgw_buf_release(&s->w->pool, b);
}

static int gate_out(pgw_session_t *s, const void *p, size_t n)
{
    gate_t *g = s->gate;
    const uint8_t *at = p;
    while (n) {
        if (!g->out) {
            if (!(g->out = pgw_buf_get(&s->w->pool)))
                return -1;
            g->out_len = 0;
        }
        size_t k = g->out->cap - g->out_len < n ? g->out->cap - g->out_len : n;
        memcpy(g->out->data + g->out_len, at, k);
        g->out_len += k;
        at += k;
        n -= k;
        if (g->out_len == g->out->cap)
            gate_flush(s);
    }
    return 0;
}

static void put32(uint8_t *p, uint32_t v)
{
    v = htonl(v);
    memcpy(p, &v, 4);
}

/* A statement the server runs in place of a refused one: it fails with
 * SQLSTATE 42501 and the refusal's message, as the server would fail a
 * statement it refused itself (a dollar-quoted DO block; the message as an
 * escape string literal). Returns its length, or 0 when it does not fit. */
static size_t refusal_sql(char *out, size_t cap, const char *msg)
{
    char lit[768], tag[16];
    size_t n = 0;
    for (const char *c = msg; *c && n + 3 < sizeof lit; c++) {
        if (*c == '\'' || *c == '\\')
            lit[n++] = *c;
        lit[n++] = *c;
    }
    lit[n] = '\0';
    snprintf(tag, sizeof tag, "$pgw$");
    for (int i = 0; strstr(lit, tag) && i < 1000; i++)
        snprintf(tag, sizeof tag, "$pgw%d$", i);
    int len = snprintf(out, cap, "DO %sBEGIN RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = E'%s'; END%s",
                       tag, lit, tag);
    return len > 0 && (size_t)len < cap ? (size_t)len : 0;
}

static int denied_find(const gate_t *g, const char *name)
{
    for (unsigned i = 0; i < g->ndenied; i++)
        if (strcmp(g->denied[i], name) == 0)
            return (int)i;
    return -1;
}

/* Prepared statement name now holds a refusal (on), or its own text. */
static int denied_set(gate_t *g, const char *name, int on)
{
    int i = denied_find(g, name);
    if (!on) {
        if (i >= 0) {
            free(g->denied[i]);
            g->denied[i] = g->denied[--g->ndenied];
        }
        return 0;
    }
    if (i >= 0)
        return 0;
    char **grown = realloc(g->denied, (g->ndenied + 1) * sizeof *grown);
    if (!grown)
        return -1;
    g->denied = grown;
    if (!(g->denied[g->ndenied] = strdup(name)))
        return -1;
    g->ndenied++;
    return 0;
}

/* ---- the gate's decisions ------------------------------------------------ */

static void gate_job_work(uv_work_t *req)
{
    gate_job_t *j = req->data;
    j->rc = pgw_analysis_parse(j->text, j->len, &j->an);
}

static void gate_job_done(uv_work_t *req, int status)
{
    gate_job_t *j = req->data;
    pgw_session_t *s = j->s;
    (void)status;
    if (!s) {
        pgw_analysis_clear(&j->an);
        free(j);
        return;
    }
    gate_t *g = s->gate;
    g->job = NULL;
    g->busy = 0;
    if (j->rc == 0) {
        if (s->w->analysis)
            pgw_analysis_cache_add(s->w->analysis, &j->an);
        g->an = j->an;              /* moved: the struct may be copied whole */
        g->has_an = 1;
    }
    free(j);
    if (s->state != S_FORWARDING)
        return;
    if (!g->has_an) {
        fatal_to_client(s, "53200", "out of memory analysing a statement for the access policy");
        return;
    }
    if (!s->client.paused)
        pgw_leg_read_start(&s->client);
    gate_run(s);
}

/* The analysis of the head message's text: 1 ready in *an, 0 when it is
 * being parsed off the loop (the gate waits), -1 out of memory. */
static int gate_analyze(pgw_session_t *s, const char *text, size_t len, pgw_analysis_t *an)
{
    gate_t *g = s->gate;
    if (g->has_an) {
        *an = g->an;
        g->has_an = 0;
        return 1;
    }
    pgw_analysis_cache_t *c = s->w->analysis;
    if (!c)
        return -1;
    int rc = pgw_analysis_lookup(c, text, len, an);
    if (rc != 0)
        return rc == 1 ? 1 : -1;
    if (len <= PGW_ANALYSIS_SYNC_MAX)
        return pgw_analysis_run(c, text, len, an) == 0 ? 1 : -1;
    gate_job_t *j = malloc(sizeof *j + len + 1);
    if (!j)
        return -1;
    j->req.data = j;
    j->s = s;
    j->len = len;
    memcpy(j->text, text, len);
    j->text[len] = '\0';
    pgw_analysis_init(&j->an);
    if (uv_queue_work(&s->w->loop, &j->req, gate_job_work, gate_job_done)) {
        free(j);
        return -1;
    }
    g->job = j;
    g->busy = 1;
    pgw_leg_read_stop(&s->client);
    return 0;
}

/* Statement rules on one Query ('Q') or Parse ('P') text. Returns 1 when
 * refused (*msg_out set), 0 to pass, 2 to wait, -1 when the session ended. */
static int gate_check(pgw_session_t *s, char kind, const char *text, size_t len, const char *stmt_name,
                      char *msg_out, size_t msg_cap)
{
    pgw_analysis_t an;
    pgw_analysis_init(&an);
    int rc = gate_analyze(s, text, len, &an);
    if (rc == 0)
        return 2;
    if (rc < 0) {
        pgw_analysis_clear(&an);
        fatal_to_client(s, "53200", "out of memory analysing a statement for the access policy");
        return -1;
    }
    pgw_policy_verdict_t v;
    uint32_t dry_idx[8] = { 0 }, deny_idx = 0;
    memset(&v, 0, sizeof v);
    for (uint32_t i = 0; i < an.count && !v.deny; i++) {
        unsigned before = v.ndry;
        pgw_policy_statement(s->pol, s->pol_rules, s->pol_nrules, pgw_analysis_stmt(&an, i)->info, &v);
        for (unsigned k = before; k < v.ndry; k++)
            dry_idx[k] = i;
        deny_idx = i;
    }
    pgw_stmt_protocol_t proto = kind == 'Q' ? PGW_PROTOCOL_SIMPLE : PGW_PROTOCOL_EXTENDED;
    for (unsigned k = 0; k < v.ndry; k++) {
        const char *rule = pgw_policy_rule_name(v.dry[k]);
        char dmsg[256];
        snprintf(dmsg, sizeof dmsg, "pgwarden rule \"%s\" would deny this statement (dry run: forwarded)",
                 rule);
        pgw_ctr_add(&s->w->metrics.denied_dry_run[1], 1);
        slog(PGW_LOG_INFO, s, "%s", dmsg);
        if (s->audit)
            pgw_audit_denied(s->audit, rule, 0, "42501", dmsg, &an, dry_idx[k], proto, stmt_name);
    }
    if (v.deny) {
        pgw_ctr_add(&s->w->metrics.denied[1], 1);
        slog(PGW_LOG_INFO, s, "denied: %s", v.message);
        if (s->audit)
            pgw_audit_denied(s->audit, pgw_policy_rule_name(v.deny), 1, "42501", v.message, &an, deny_idx,
                             proto, stmt_name);
        snprintf(msg_out, msg_cap, "%s", v.message);
    }
    pgw_analysis_clear(&an);
    return v.deny ? 1 : 0;
}

/* One whole client message m of n bytes. Returns 0 when it is dealt with,
 * 1 to wait for its analysis, -1 when the session ended. */
static int gate_message(pgw_session_t *s, const uint8_t *m, size_t n)
{
    gate_t *g = s->gate;
    const char *body = (const char *)m + 5;
    size_t blen = n - 5;
    uint8_t *sub = NULL;
    size_t sub_len = 0;
    char msg[256], sql[1024];

    if (m[0] == 'Q' || m[0] == 'P') {
        const char *name = "", *text = body;
        const char *nul = memchr(body, 0, blen);
        if (m[0] == 'P' && nul) {
            name = body;
            text = nul + 1;
            nul = memchr(text, 0, blen - (size_t)(text - body));
        }
        if (nul) {                  /* else malformed: the server says so */
            int rc = gate_check(s, (char)m[0], text, (size_t)(nul - text), m[0] == 'P' ? name : NULL,
                                msg, sizeof msg);
            if (rc == 2)
                return 1;
            if (rc < 0)
                return -1;
            if (m[0] == 'P' && denied_set(g, name, rc == 1)) {
                session_close(s, "out of memory");
                return -1;
            }
            size_t ql = rc == 1 ? refusal_sql(sql, sizeof sql, msg) : 0;
            if (rc == 1 && !ql) {
                fatal_to_client(s, "42501", "%s", msg);
                return -1;
            }
            if (ql) {
                size_t nl = m[0] == 'P' ? strlen(name) + 1 : 0;
                sub_len = 5 + nl + ql + 1 + (m[0] == 'P' ? 2 : 0);
                if (!(sub = calloc(1, sub_len))) {
                    session_close(s, "out of memory");
                    return -1;
                }
                sub[0] = m[0];
                put32(sub + 1, (uint32_t)sub_len - 1);
                memcpy(sub + 5, name, nl);
                memcpy(sub + 5 + nl, sql, ql);  /* then NUL, and Parse's 0 parameter types */
            }
        }
    } else if (m[0] == 'B' && g->ndenied) {
        const char *nul = memchr(body, 0, blen);
        const char *stmt = nul ? nul + 1 : NULL;
        const char *nul2 = stmt ? memchr(stmt, 0, blen - (size_t)(stmt - body)) : NULL;
        if (nul2 && denied_find(g, stmt) >= 0) {
            /* The refusal takes no parameters: they are not sent. */
            size_t hl = (size_t)(nul2 + 1 - body);
            sub_len = 5 + hl + 6;
            if (!(sub = calloc(1, sub_len))) {
                session_close(s, "out of memory");
                return -1;
            }
            sub[0] = 'B';
            put32(sub + 1, (uint32_t)sub_len - 1);
            memcpy(sub + 5, body, hl);
        }
    }
    /* The framer (and the audit) sees what the client sent. */
    ssize_t r = pgw_framer_feed(&s->fe, m, n);
    if (r < 0 || s->state != S_FORWARDING) {
        free(sub);
        if (r < 0)
            fatal_to_client(s, "08P01", "invalid message from client: %s", pgw_framer_strerror((int)r));
        return -1;
    }
    int rc = sub ? gate_out(s, sub, sub_len) : gate_out(s, m, n);
    free(sub);
    if (rc) {
        session_close(s, "out of memory");
        return -1;
    }
    return 0;
}

/* Passes every whole message the gate holds, in order, until one waits
 * for its analysis. */
static void gate_run(pgw_session_t *s)
{
    gate_t *g = s->gate;
    size_t off = 0;
    if (pgw_policy_generation() != s->pol_gen && policy_refresh(s))
        return;
    g->admitted = s->w->admitted;
    while (!g->busy && s->state == S_FORWARDING && g->len - off >= 5) {
        uint32_t mlen;
        memcpy(&mlen, g->in + off + 1, 4);
        mlen = ntohl(mlen);
        if (mlen < 4 || mlen > s->w->cfg->max_message_size) {
            fatal_to_client(s, "08P01", "invalid message from client: invalid message length %u", mlen);
            return;
        }
        if (g->len - off < 1 + (size_t)mlen)
            break;
        if (gate_message(s, g->in + off, 1 + (size_t)mlen))
            break;
        off += 1 + (size_t)mlen;
    }
    if (!s->gate)
        return;
    if (off) {
        memmove(g->in, g->in + off, g->len - off);
        g->len -= off;
    }
    gate_flush(s);
}

/* Client bytes for a session behind the gate. */
static void gate_input(pgw_session_t *s, const uint8_t *p, size_t n)
{
    gate_t *g = s->gate;
    if (g->len + n > g->cap) {
        size_t ncap = g->cap ? g->cap : 8192;
        while (ncap < g->len + n)
            ncap *= 2;
        uint8_t *grown = realloc(g->in, ncap);
        if (!grown) {
            session_close(s, "out of memory");
            return;
        }
        g->in = grown;
        g->cap = ncap;
    }
    memcpy(g->in + g->len, p, n);
    g->len += n;
    if (s->state == S_FORWARDING)
        gate_run(s);
}

/* ---- frontend ------------------------------------------------------------ */

/* The client's SASLInitialResponse after an offer without
 * SCRAM-SHA-256-PLUS. A client that supports channel binding says so in
 * its GS2 flag ('y'): a server that offered channel binding takes that for
 * a downgrade attack and refuses. Nothing pgwarden could rewrite helps (the
 * flag is covered by the client's proof), so the client hears why at once.
 * Only the mechanism name and the flag are read, never the secret parts. */
static void check_gs2_flag(pgw_session_t *s, const pgw_msg_t *m)
{
    s->sasl_stripped = 0;
    const uint8_t *nul = m->body ? memchr(m->body, 0, m->body_len) : NULL;
    if (!nul || (size_t)(nul - m->body) + 6 > m->body_len || nul[5] != 'y')
        return;
    fatal_to_client(s, "28000", "SCRAM channel binding cannot pass through pgwarden, which terminates "
                    "the client's TLS, and the server refuses a client that supports it without "
                    "using it: connect with channel_binding=disable");
}

static int fe_message(void *ud, const pgw_msg_t *m)
{
    pgw_session_t *s = ud;
    pgw_ctr_add(&s->w->metrics.messages[PGW_DIR_FRONTEND], 1);
    if (s->state != S_STARTUP) {
        if (m->type == 'p' && s->sasl_stripped)
            check_gs2_flag(s, m);
        if (m->type == 'X' && !s->end_reason)
            s->end_reason = PGW_END_CLIENT_CLOSED;   /* whichever socket closes first */
        if (s->audit)
            pgw_audit_frontend(s->audit, m, s->now_us);
        return 0;
    }

    /* Keep the packet: its body may live in the framer's assembly buffer,
     * which is only valid during this call. */
    free(s->early);
    s->early_len = 8 + (size_t)m->body_len;
    s->early = malloc(s->early_len);
    if (!s->early)
        return 1;
    uint32_t be_len = htonl(m->len), be_code = htonl(m->code);
    memcpy(s->early, &be_len, 4);
    memcpy(s->early + 4, &be_code, 4);
    if (m->body_len)
        memcpy(s->early + 8, m->body, m->body_len);
    s->startup_code = m->code;

    if (m->code >> 16 == 3) {
        pgw_startup_t st;
        s->startup_bad = pgw_parse_startup(m, &st);
        if (s->startup_bad == 0) {
            snprintf(s->user, sizeof s->user, "%s", st.user);
            snprintf(s->database, sizeof s->database, "%s", st.database ? st.database : st.user);
            if (s->audit)
                pgw_audit_startup(s->audit, &st);
        }
    }
    return 1;   /* stop: the caller acts on each startup packet in turn */
}

/* Like PostgreSQL's hostssl lines and its cert method: the listener may
 * demand TLS, and the startup user may have to be the client certificate's
 * CN (or be mapped to it). Refuses before any byte reaches the server.
 * Returns 0 to go on. */
static int check_identity(pgw_session_t *s)
{
    const pgw_tls_config_t *tc = &s->w->cfg->tls;
    if (s->listen_ep->tls_required && !s->client.ssl) {
        fatal_to_client(s, "28000", "pgwarden requires TLS on %s: connection for user \"%s\", "
                        "database \"%s\" without TLS refused", s->listen_ep->text, s->user, s->database);
        return -1;
    }
    const pgw_tls_info_t *ti = s->tls_info;
    if (tc->client_cert != PGW_CLIENT_CERT_REQUIRE && !tc->user_must_match_cn)
        return 0;
    if (!ti || !ti->has_cert) {
        fatal_to_client(s, "28000", "connection requires a valid client certificate");
        return -1;
    }
    if (!tc->user_must_match_cn)
        return 0;
    if (!ti->cn[0]) {
        fatal_to_client(s, "28000", "certificate authentication failed for user \"%s\": the client "
                        "certificate has no usable common name", s->user);
        return -1;
    }
    /* As PostgreSQL's cert method: with a map, the map alone decides. */
    if (s->tls && s->tls->map) {
        if (pgw_ident_map_allows(s->tls->map, ti->cn, s->user))
            return 0;
        fatal_to_client(s, "28000", "certificate authentication failed for user \"%s\": no line of "
                        "the identity map maps certificate CN \"%s\" to it", s->user, ti->cn);
        return -1;
    }
    if (ti->cn[0] && strcmp(ti->cn, s->user) == 0)
        return 0;
    fatal_to_client(s, "28000", "certificate authentication failed for user \"%s\": the client "
                    "certificate's CN is \"%s\"", s->user, ti->cn);
    return -1;
}

/* A ClientHello as the very first bytes: PostgreSQL 17's direct TLS
 * negotiation. The bytes are the start of the handshake. */
static void direct_tls(pgw_session_t *s, const uint8_t *p, size_t n)
{
    if (!s->tls || !s->tls->accept || s->client.is_unix) {
        slog(PGW_LOG_INFO, s, "refused: direct TLS connection, but no TLS on this listener");
        session_close(s, "direct TLS without TLS configured");
        return;
    }
    s->direct_tls = 1;
    s->ssl_done = 1;
    if (pgw_leg_start_tls(&s->client, s->tls->accept, 1, NULL, p, n))
        session_close(s, "TLS setup failed");
}

/* Acts on the startup packet just framed; rest is how many bytes of the
 * same read follow it. Returns 0 to keep going in the startup phase. */
static int handle_startup(pgw_session_t *s, size_t rest)
{
    uint32_t code = s->startup_code;

    if (code == PGW_CODE_SSL || code == PGW_CODE_GSSENC) {
        int ssl = code == PGW_CODE_SSL;
        /* libpq asks for GSS encryption first, then SSL; asking twice for the
         * same is a protocol violation, as in PostgreSQL. */
        if (ssl ? s->ssl_done : s->gss_done) {
            fatal_to_client(s, "08P01", "unsupported frontend protocol: %s request repeated",
                            ssl ? "SSL" : "GSSAPI encryption");
            return -1;
        }
        if (rest) {
            /* Bytes sent before the answer could have been injected by a
             * man in the middle: PostgreSQL refuses them the same way. */
            fatal_to_client(s, "08P01", "received unencrypted data after %s request",
                            ssl ? "SSL" : "GSSAPI encryption");
            return -1;
        }
        if (ssl)
            s->ssl_done = 1;
        else
            s->gss_done = 1;
        int tls = ssl && s->tls && s->tls->accept && !s->client.is_unix;
        if (send_copy(&s->client, tls ? "S" : "N", 1)) {
            session_close(s, "write failed");
            return -1;
        }
        if (tls && pgw_leg_start_tls(&s->client, s->tls->accept, 1, NULL, NULL, 0)) {
            session_close(s, "TLS setup failed");
            return -1;
        }
        return 0;
    }
    if (code == PGW_CODE_CANCEL) {
        if (s->early_len == 16)
            cancel_forward(s->w, s->early);
        session_close(s, "cancel request forwarded");
        return -1;
    }
    if (code >> 16 != 3) {
        fatal_to_client(s, "0A000", "unsupported frontend protocol %u.%u: server supports 3.0 to 3.0",
                        code >> 16, code & 0xffff);
        return -1;
    }
    if (s->startup_bad == -2) {
        fatal_to_client(s, "28000", "no PostgreSQL user name specified in startup packet");
        return -1;
    }
    if (s->startup_bad) {
        fatal_to_client(s, "08P01", "invalid startup packet layout: expected terminator as last byte");
        return -1;
    }
    if (check_identity(s) || policy_connect(s))
        return -1;
    pgw_admit_t adm = pgw_limits_admit(s->addr);
    if (adm != PGW_ADMIT_OK) {
        s->refusal = PGW_REFUSED_LIMIT;
        if (adm == PGW_ADMIT_TOTAL)
            fatal_to_client(s, "53300", "sorry, too many clients already");
        else
            fatal_to_client(s, "53300", "too many connections from %s", s->addr);
        return -1;
    }
    s->admitted = 1;
    set_state(s, S_CONNECTING);
    pgw_leg_read_stop(&s->client);
    upstream_connect(s);
    return 0;
}

static void client_data(pgw_session_t *s, pgw_buf_t *b, size_t n)
{
    size_t off = 0;
    if (s->state == S_STARTUP && !s->client.ssl && !s->early && b->data[0] == PGW_TLS_HANDSHAKE_BYTE &&
        pgw_framer_at_boundary(&s->fe)) {
        direct_tls(s, b->data, n);
        return;
    }
    while (s->state == S_STARTUP && off < n) {
        ssize_t r = pgw_framer_feed(&s->fe, b->data + off, n - off);
        if (r < 0) {
            fatal_to_client(s, "08P01", "invalid startup packet: %s", pgw_framer_strerror((int)r));
            return;
        }
        off += (size_t)r;
        if (!pgw_framer_stopped(&s->fe))
            return;                 /* a partial packet: wait for more */
        if (!s->early) {
            session_close(s, "out of memory");
            return;
        }
        if (handle_startup(s, n - off))
            return;
    }
    if (off == n)
        return;

    if (s->state == S_CONNECTING && s->gate) {
        /* Behind the gate: they wait there, and pass it once connected. */
        gate_input(s, b->data + off, n - off);
        return;
    }
    if (s->state == S_CONNECTING) {
        /* Bytes pipelined behind the StartupMessage wait with it. */
        ssize_t r = pgw_framer_feed(&s->fe, b->data + off, n - off);
        uint8_t *grown = r < 0 ? NULL : realloc(s->early, s->early_len + (n - off));
        if (!grown) {
            fatal_to_client(s, "08P01", "invalid message from client: %s",
                            r < 0 ? pgw_framer_strerror((int)r) : "out of memory");
            return;
        }
        memcpy(grown + s->early_len, b->data + off, n - off);
        s->early = grown;
        s->early_len += n - off;
        return;
    }
    if (s->state != S_FORWARDING)
        return;
    s->waiting = 1;
    /* A reload published new rules: taken between two messages. */
    if (!s->gate && pgw_policy_generation() != s->pol_gen && pgw_framer_at_boundary(&s->fe) &&
        policy_refresh(s))
        return;
    if (s->gate) {
        gate_input(s, b->data, n);
        return;
    }

    unsigned admitted = s->w->admitted;
    ssize_t r = pgw_framer_feed(&s->fe, b->data, n);
    if (r < 0) {
        fatal_to_client(s, "08P01", "invalid message from client: %s", pgw_framer_strerror((int)r));
        return;
    }
    if (s->state != S_FORWARDING)
        return;                     /* refused while framing */
    if (s->dq || s->w->admitted != admitted) {
        if (defer(s, b, n))
            session_close(s, "out of memory");
        return;
    }
    forward(s, &s->client, b, n);
}

/* ---- backend ------------------------------------------------------------- */

/* Channel binding ties SCRAM to the TLS connection it runs over: the
 * server's (pgwarden's upstream leg) is not the client's, so a client that
 * chose SCRAM-SHA-256-PLUS would always fail. The server's offer goes to
 * the client without it: channel_binding=prefer then uses plain SCRAM, and
 * channel_binding=require fails at once in the client. */
static void strip_channel_binding(pgw_session_t *s, const pgw_msg_t *m)
{
    static const char plus[] = "SCRAM-SHA-256-PLUS";
    const uint8_t *base = s->cur_buf ? s->cur_buf->data : NULL;
    if (!m->body || m->body_len < 5 || m->body[m->body_len - 1] != 0)
        return;
    /* body: int32 10, then NUL-terminated names, then an empty name. */
    const char *names = (const char *)m->body + 4, *end = (const char *)m->body + m->body_len;
    int found = 0;
    for (const char *nm = names; nm < end && *nm; nm += strlen(nm) + 1)
        found |= strcmp(nm, plus) == 0;
    if (!found)
        return;
    if (!base || m->body < base + 5 || m->body + m->body_len > base + s->cur_len) {
        slog(PGW_LOG_WARN, s, "cannot remove %s from a SASL offer split over reads", plus);
        return;
    }
    uint8_t *out = malloc(1 + (size_t)m->len);
    if (!out)
        return;
    size_t k = 9;
    memcpy(out + 5, m->body, 4);
    for (const char *nm = names; nm < end && *nm; nm += strlen(nm) + 1) {
        if (strcmp(nm, plus) == 0)
            continue;
        size_t l = strlen(nm) + 1;
        memcpy(out + k, nm, l);
        k += l;
    }
    out[k++] = 0;
    out[0] = 'R';
    uint32_t be_len = htonl((uint32_t)(k - 1));
    memcpy(out + 1, &be_len, 4);
    free(s->sasl_msg);
    s->sasl_msg = out;
    s->sasl_msg_len = k;
    s->sasl_off = (size_t)(m->body - 5 - base);
    s->sasl_len = 1 + (size_t)m->len;
    s->sasl_stripped = 1;
}

static int be_message(void *ud, const pgw_msg_t *m)
{
    pgw_session_t *s = ud;
    pgw_ctr_add(&s->w->metrics.messages[PGW_DIR_BACKEND], 1);
    if (m->type == 'Z') {
        s->ready = 1;
        s->waiting = 0;
        s->idle_since_ms = uv_now(&s->w->loop);
    }
    if (s->audit)
        pgw_audit_backend(s->audit, m, s->now_us);
    if (m->type == 'R' && m->body_len > 4 && m->body && m->body[3] == 10 &&
        m->body[0] == 0 && m->body[1] == 0 && m->body[2] == 0)
        strip_channel_binding(s, m);
    if (m->type == 'K') {
        pgw_keydata_t kd;
        if (pgw_parse_keydata(m, &kd) == 0)
            s->backend_pid = kd.pid;
    } else if (m->type == 'E' && pgw_log_level >= PGW_LOG_DEBUG) {
        pgw_error_t e;
        if (pgw_parse_error(m, &e) == 0 && e.severity && strcmp(e.severity, "FATAL") == 0)
            slog(PGW_LOG_DEBUG, s, "server FATAL %s: %s", e.sqlstate ? e.sqlstate : "?",
                 e.message ? e.message : "");
    }
    return 0;
}

/* The upstream's one-byte answer to our SSLRequest. */
static void upstream_tls_answer(pgw_session_t *s, const uint8_t *p, size_t n)
{
    const pgw_config_t *cfg = s->w->cfg;
    const char *mode = sslmode_names[cfg->tls.upstream_sslmode];
    if (p[0] == 'N') {
        fatal_to_client(s, "08006", "the upstream server %s does not support TLS (--upstream-sslmode %s)",
                        cfg->upstream.text, mode);
    } else if (p[0] != 'S') {
        fatal_to_client(s, "08006", "the upstream server %s refused the TLS request", cfg->upstream.text);
    } else if (n > 1) {
        fatal_to_client(s, "08006", "the upstream server %s sent unencrypted data after its TLS answer",
                        cfg->upstream.text);
    } else {
        const char *host = cfg->tls.upstream_sslmode == PGW_SSLMODE_VERIFY_FULL ? cfg->upstream.host : NULL;
        if (pgw_leg_start_tls(&s->server, s->tls->connect, 0, host, NULL, 0))
            fatal_to_client(s, "08006", "pgwarden could not set up TLS to the upstream server %s",
                            cfg->upstream.text);
    }
}

/* Sends the bytes of b with the rewritten SASL offer in place of the
 * original. */
static void forward_rewritten(pgw_session_t *s, pgw_buf_t *b, size_t n)
{
    size_t off = s->sasl_off, end = s->sasl_off + s->sasl_len;
    uint8_t *msg = s->sasl_msg;
    s->sasl_msg = NULL;
    if (end > n || (off && pgw_leg_write(&s->client, b, b->data, off))) {
        free(msg);
        session_close(s, "write failed");
        return;
    }
    if (pgw_leg_write_owned(&s->client, msg, s->sasl_msg_len) ||
        (end < n && pgw_leg_write(&s->client, b, b->data + end, n - end)))
        session_close(s, "write failed");
}

static void server_data(pgw_session_t *s, pgw_buf_t *b, size_t n)
{
    if (s->state == S_UPSTREAM_TLS && !s->server.ssl) {
        upstream_tls_answer(s, b->data, n);
        return;
    }
    if (s->state != S_FORWARDING)
        return;
    int at_boundary = pgw_framer_at_boundary(&s->be);
    s->cur_buf = b;
    s->cur_len = n;
    ssize_t r = pgw_framer_feed(&s->be, b->data, n);
    s->cur_buf = NULL;
    if (r < 0) {
        /* An error can only be injected between two messages of the
         * client's stream; mid-message the client just sees the close. */
        pgw_ctr_add(&s->w->metrics.protocol_errors[PGW_DIR_BACKEND], 1);
        if (at_boundary) {
            fatal_to_client(s, "08P01", "invalid message from server: %s", pgw_framer_strerror((int)r));
        } else {
            slog(PGW_LOG_WARN, s, "invalid message from server: %s", pgw_framer_strerror((int)r));
            session_close(s, "invalid message from server");
        }
        return;
    }
    if (s->sasl_msg) {
        forward_rewritten(s, b, n);
        return;
    }
    forward(s, &s->server, b, n);
}

/* ---- transport callbacks --------------------------------------------- */

static void on_data(pgw_leg_t *leg, pgw_buf_t *b, size_t n)
{
    pgw_session_t *s = leg->owner;
    if (s->audit)
        s->now_us = pgw_event_now_us();
    pgw_ctr_add(&s->w->metrics.bytes[leg == &s->client ? PGW_DIR_FRONTEND : PGW_DIR_BACKEND], n);
    if (leg == &s->client)
        client_data(s, b, n);
    else
        server_data(s, b, n);
}

static void on_eof(pgw_leg_t *leg, int status)
{
    pgw_session_t *s = leg->owner;
    int client = leg == &s->client;
    if (status == UV_EPROTO && leg->ssl && !leg->tls_ready && s->state < S_FINISHING) {
        char why[256];
        pgw_leg_tls_error(leg, why, sizeof why);
        if (!client) {
            fatal_to_client(s, "08006", "pgwarden could not establish TLS with the upstream server %s "
                            "(--upstream-sslmode %s): %s", s->w->cfg->upstream.text,
                            sslmode_names[s->w->cfg->tls.upstream_sslmode], why);
            return;
        }
        /* The client has its alert; the audit records the refusal. */
        int cert = SSL_get_verify_result(leg->ssl) != X509_V_OK;
        pgw_ctr_add(&s->w->metrics.tls_handshakes[1], 1);
        pgw_ctr_add(&s->w->metrics.refused[cert ? PGW_REFUSED_AUTHENTICATION : PGW_REFUSED_PROTOCOL], 1);
        char msg[320];
        snprintf(msg, sizeof msg, "TLS handshake failed: %s", why);
        slog(PGW_LOG_INFO, s, "refused: %s", msg);
        if (s->audit)
            pgw_audit_refused(s->audit, cert ? "28000" : "08P01", msg);
        s->end_reason = PGW_END_ERROR;
        session_finish(s, "TLS handshake failed");   /* the alert drains first */
        return;
    }
    /* A peer that closes with unread data in its socket resets the
     * connection, and a write racing with its close fails with EPIPE: the
     * peer still ended the session, whichever way the proxy learned it. */
    int peer_closed = status == UV_EOF || status == UV_ECONNRESET || status == UV_EPIPE;
    if (!s->end_reason)
        s->end_reason = !peer_closed ? PGW_END_ERROR
                        : client ? PGW_END_CLIENT_CLOSED : PGW_END_SERVER_CLOSED;
    if (status == UV_EOF)
        session_finish(s, client ? "client closed the connection" : "server closed the connection");
    else
        session_finish(s, uv_strerror(status));
}

static void on_closed(pgw_leg_t *leg)
{
    pgw_session_t *s = leg->owner;
    if (s->client.open || s->server.open)
        return;
    pgw_worker_t *w = s->w;
    drop_deferred(s);
    if (s->audit) {
        pgw_audit_end(s->audit, s->end_reason ? s->end_reason : PGW_END_ERROR);
        s->audit = NULL;
    }
    pgw_list_remove(&s->link);
    w->nsessions--;
    pgw_ctr_sub(&w->metrics.clients_active, 1);
    if (s->admitted)
        pgw_limits_release(s->addr);
    if (s->user_slot)
        pgw_policy_release_user(s->user);
    gate_free(s);
    free(s->pol_rules);
    pgw_policy_unref(s->pol);
    if (s->server_up)
        pgw_ctr_sub(&w->metrics.servers_active, 1);
    pgw_framer_free(&s->fe);
    pgw_framer_free(&s->be);
    free(s->early);
    free(s->sasl_msg);
    free(s->tls_info);
    pgw_tls_release(s->tls);
    free(s);
    pgw_worker_maybe_finish(w);
}

static void upstream_ready(pgw_session_t *s);

static void on_secure(pgw_leg_t *leg)
{
    pgw_session_t *s = leg->owner;
    SSL *ssl = leg->ssl;
    if (leg == &s->server) {
        slog(PGW_LOG_DEBUG, s, "upstream TLS: %s %s", SSL_get_version(ssl), SSL_get_cipher_name(ssl));
        upstream_ready(s);
        return;
    }
    pgw_ctr_add(&s->w->metrics.tls_handshakes[0], 1);
    if (!s->tls_info && !(s->tls_info = malloc(sizeof *s->tls_info))) {
        session_close(s, "out of memory");
        return;
    }
    pgw_tls_get_info(ssl, s->tls_info);
    if (s->audit)
        pgw_audit_tls(s->audit, s->tls_info);
    slog(PGW_LOG_DEBUG, s, "TLS: %s %s%s%s", s->tls_info->version, s->tls_info->cipher,
         s->tls_info->has_cert ? ", certificate " : "", s->tls_info->subject);
    if (s->direct_tls) {
        const unsigned char *alpn;
        unsigned alpn_len;
        SSL_get0_alpn_selected(ssl, &alpn, &alpn_len);
        if (alpn_len == 0)
            fatal_to_client(s, "08P01", "received direct TLS connection request without ALPN "
                            "protocol negotiation extension");
    }
}

static const pgw_leg_ops_t session_ops = { on_data, on_eof, on_drained, on_closed, on_secure };

/* ---- lifecycle ----------------------------------------------------------- */

static void session_close(pgw_session_t *s, const char *reason)
{
    if (s->state == S_CLOSED)
        return;
    s->close_reason = reason;
    slog(PGW_LOG_DEBUG, s, "closing: %s", reason);
    set_state(s, S_CLOSED);
    pgw_leg_close(&s->client);
    pgw_leg_close(&s->server);
}

/* Stops reading, lets queued writes reach their sockets, then closes. */
static void session_finish(pgw_session_t *s, const char *reason)
{
    if (s->state >= S_FINISHING)
        return;
    s->close_reason = reason;
    set_state(s, S_FINISHING);
    pgw_leg_read_stop(&s->client);
    pgw_leg_read_stop(&s->server);
    if (pgw_leg_idle(&s->client) && pgw_leg_idle(&s->server))
        session_close(s, reason);
}

void pgw_session_tick(pgw_link_t *link, uint64_t now_ms)
{
    pgw_session_t *s = pgw_container_of(link, pgw_session_t, link);
    uint64_t startup_ms = pgw_limits_startup_timeout_ms(), idle_ms = pgw_limits_idle_timeout_ms();
    if (s->state >= S_FINISHING)
        return;
    if (!s->ready && startup_ms > 0 && now_ms - s->accepted_ms >= startup_ms) {
        s->refusal = PGW_REFUSED_TIMEOUT;
        if (!s->end_reason)
            s->end_reason = PGW_END_TIMEOUT;
        fatal_to_client(s, "08006", "the connection startup did not complete within %g s",
                        (double)startup_ms / 1000);
    } else if (s->ready && !s->waiting && idle_ms > 0 && now_ms - s->idle_since_ms >= idle_ms) {
        pgw_ctr_add(&s->w->metrics.idle_timeouts, 1);
        s->end_reason = PGW_END_TIMEOUT;
        (void)send_copy(&s->server, "X\0\0\0\4", 5);   /* Terminate: a clean end for the server */
        fatal_to_client(s, "57P05", "terminating connection due to idle-session timeout (%g s)",
                        (double)idle_ms / 1000);
    }
}

void pgw_session_abort(pgw_link_t *link, const char *reason)
{
    pgw_session_t *s = pgw_container_of(link, pgw_session_t, link);
    if (!s->end_reason)
        s->end_reason = PGW_END_SHUTDOWN;
    session_close(s, reason);
}

static void on_upstream_connected(uv_connect_t *req, int status)
{
    pgw_session_t *s = req->data;
    if (s->state != S_CONNECTING)
        return;                     /* closed meanwhile; the handle close cancels */
    if (status) {
        pgw_ctr_add(&s->w->metrics.server_connect_failures, 1);
        fatal_to_client(s, "08006", "pgwarden could not connect to the upstream server %s: %s",
                        s->w->cfg->upstream.text, uv_strerror(status));
        return;
    }
    s->server_up = 1;
    pgw_ctr_add(&s->w->metrics.servers_total, 1);
    pgw_ctr_add(&s->w->metrics.servers_active, 1);
    pgw_leg_connected(&s->server);
    if (s->tls && s->tls->connect) {
        /* SSLRequest first; the startup packet goes once TLS is up. */
        static const uint8_t ssl_request[8] = { 0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f };
        set_state(s, S_UPSTREAM_TLS);
        if (send_copy(&s->server, ssl_request, sizeof ssl_request)) {
            session_close(s, "write to upstream failed");
            return;
        }
        pgw_leg_read_start(&s->server);
        return;
    }
    upstream_ready(s);
}

/* The upstream connection is ready for the startup packet. */
static void upstream_ready(pgw_session_t *s)
{
    set_state(s, S_FORWARDING);
    /* Statements pipelined behind the startup packet were admitted: their
     * begin records reach the spool before the bytes leave. */
    if (s->w->sink && s->w->sink->durable)
        pgw_sink_producer_flush(&s->w->producer);
    int rc = pgw_leg_write_owned(&s->server, s->early, s->early_len);
    s->early = NULL;                /* owned by the write now */
    s->early_len = 0;
    if (rc) {
        session_close(s, "write to upstream failed");
        return;
    }
    pgw_leg_read_start(&s->server);
    pgw_leg_read_start(&s->client);
    if (s->gate && s->gate->len)
        gate_run(s);
}

static void upstream_connect(pgw_session_t *s)
{
    s->connect_req.data = s;
    int rc = pgw_leg_connect(&s->server, &s->w->loop, &s->w->cfg->upstream, &s->connect_req,
                             on_upstream_connected);
    if (rc) {
        pgw_ctr_add(&s->w->metrics.server_connect_failures, 1);
        fatal_to_client(s, "08006", "pgwarden could not connect to the upstream server %s: %s",
                        s->w->cfg->upstream.text, uv_strerror(rc));
    }
}

void pgw_session_accept(pgw_listener_t *l)
{
    pgw_worker_t *w = l->w;
    pgw_session_t *s = calloc(1, sizeof *s);
    if (!s) {
        pgw_error("out of memory accepting a connection");
        return;
    }
    s->w = w;
    s->id = ++w->next_session;
    s->listen_ep = l->ep;
    s->tls = pgw_tls_acquire(w->tls);
    s->state = S_STARTUP;
    s->refusal = -1;
    s->accepted_ms = uv_now(&w->loop);
    pgw_list_init(&s->dlink);
    pgw_list_push(&w->sessions, &s->link);
    w->nsessions++;
    pgw_ctr_add(&w->metrics.clients_total, 1);
    pgw_ctr_add(&w->metrics.clients_active, 1);
    pgw_leg_init(&s->client, w, s, &session_ops);
    pgw_leg_init(&s->server, w, s, &session_ops);
    pgw_framer_init(&s->fe, PGW_FRONTEND, w->cfg->max_message_size, fe_message, s);
    pgw_framer_init(&s->be, PGW_BACKEND, w->cfg->max_message_size, be_message, s);

    int rc = pgw_leg_accept(&s->client, l);
    if (rc) {
        pgw_warn("accept on %s failed: %s", l->ep->text, uv_strerror(rc));
        pgw_ctr_add(&w->metrics.refused[PGW_REFUSED_RESOURCES], 1);
        session_close(s, "accept failed");
        return;
    }
    pgw_leg_peer_name(&s->client, s->peer, sizeof s->peer);
    if (!l->ep->is_unix) {
        struct sockaddr_storage ss;
        const struct sockaddr *sa = pgw_leg_peer_addr(&s->client, &ss);
        if (sa && sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, s->addr,
                      sizeof s->addr);
        else if (sa && sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, s->addr,
                      sizeof s->addr);
    }
    if (w->sink) {
        struct sockaddr_storage ss;
        s->audit = malloc(sizeof *s->audit);
        if (!s->audit) {
            pgw_ctr_add(&w->metrics.refused[PGW_REFUSED_RESOURCES], 1);
            session_close(s, "out of memory");
            return;
        }
        pgw_audit_init(s->audit, w, pgw_leg_peer_addr(&s->client, &ss), l->ep);
    }
    slog(PGW_LOG_DEBUG, s, "accepted on %s", l->ep->text);
    pgw_leg_read_start(&s->client);
}

/* ---- CancelRequest ----------------------------------------------------
 * The client got the server's real BackendKeyData through the proxy, so
 * its CancelRequest is passed on unchanged on a connection of its own. */

typedef struct cancel_fwd {
    pgw_leg_t leg;
    uv_connect_t req;
    uint8_t pkt[16];
} cancel_fwd_t;

static void cancel_closed(pgw_leg_t *leg)
{
    pgw_worker_t *w = leg->w;
    free(leg->owner);
    w->nhelpers--;
    pgw_worker_maybe_finish(w);
}

static void cancel_drained(pgw_leg_t *leg)
{
    pgw_leg_close(leg);             /* the server reads it and closes too */
}

static void cancel_eof(pgw_leg_t *leg, int status)
{
    pgw_leg_close(leg);
}

static const pgw_leg_ops_t cancel_ops = { NULL, cancel_eof, cancel_drained, cancel_closed, NULL };

static void cancel_connected(uv_connect_t *req, int status)
{
    cancel_fwd_t *c = req->data;
    if (status) {
        pgw_warn("cancel request: could not connect to the upstream server %s: %s",
                 c->leg.w->cfg->upstream.text, uv_strerror(status));
        pgw_leg_close(&c->leg);
        return;
    }
    pgw_leg_connected(&c->leg);
    /* Written at once (the usual case) or queued: then on cancel_drained. */
    if (send_copy(&c->leg, c->pkt, sizeof c->pkt) || pgw_leg_idle(&c->leg))
        pgw_leg_close(&c->leg);
}

static void cancel_forward(pgw_worker_t *w, const uint8_t pkt[16])
{
    cancel_fwd_t *c = calloc(1, sizeof *c);
    if (!c)
        return;
    memcpy(c->pkt, pkt, 16);
    w->nhelpers++;
    pgw_leg_init(&c->leg, w, c, &cancel_ops);
    c->req.data = c;
    int rc = pgw_leg_connect(&c->leg, &w->loop, &w->cfg->upstream, &c->req, cancel_connected);
    if (rc) {
        pgw_warn("cancel request: could not connect to the upstream server: %s", uv_strerror(rc));
        pgw_leg_close(&c->leg);
    }
}
