#include "session.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/ssl.h>

#include "conn_limits.h"
#include "session_impl.h"
#include "statement.h"

/* Backpressure: --max-pending-bytes (256 KiB by default) stops reading
 * the other side; a quarter of it resumes. */
#define PGW_WATER_HIGH(s) pgw_limits_max_pending()
#define PGW_WATER_LOW(s) (pgw_limits_max_pending() / 4)

static const char *const state_names[] = { "startup", "connecting", "upstream tls", "forwarding",
                                           "finishing", "closed" };
static const char *const sslmode_names[] = { "disable", "require", "verify-ca", "verify-full" };

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
void pgw_session_fatal(pgw_session_t *s, const char *sqlstate, const char *fmt, ...)
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
            pgw_session_close(s, s->close_reason);
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
        pgw_session_close(s, "write failed");
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

void pgw_session_pass(pgw_session_t *s, pgw_buf_t *b, size_t n, unsigned admitted)
{
    if (s->dq || s->w->admitted != admitted) {
        if (defer(s, b, n))
            pgw_session_close(s, "out of memory");
        return;
    }
    forward(s, &s->client, b, n);
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
    pgw_session_fatal(s, "28000", "SCRAM channel binding cannot pass through pgwarden, which terminates "
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
        pgw_session_fatal(s, "28000", "pgwarden requires TLS on %s: connection for user \"%s\", "
                        "database \"%s\" without TLS refused", s->listen_ep->text, s->user, s->database);
        return -1;
    }
    const pgw_tls_info_t *ti = s->tls_info;
    if (tc->client_cert != PGW_CLIENT_CERT_REQUIRE && !tc->user_must_match_cn)
        return 0;
    if (!ti || !ti->has_cert) {
        pgw_session_fatal(s, "28000", "connection requires a valid client certificate");
        return -1;
    }
    if (!tc->user_must_match_cn)
        return 0;
    if (!ti->cn[0]) {
        pgw_session_fatal(s, "28000", "certificate authentication failed for user \"%s\": the client "
                        "certificate has no usable common name", s->user);
        return -1;
    }
    /* As PostgreSQL's cert method: with a map, the map alone decides. */
    if (s->tls && s->tls->map) {
        if (pgw_ident_map_allows(s->tls->map, ti->cn, s->user))
            return 0;
        pgw_session_fatal(s, "28000", "certificate authentication failed for user \"%s\": no line of "
                        "the identity map maps certificate CN \"%s\" to it", s->user, ti->cn);
        return -1;
    }
    if (ti->cn[0] && strcmp(ti->cn, s->user) == 0)
        return 0;
    pgw_session_fatal(s, "28000", "certificate authentication failed for user \"%s\": the client "
                    "certificate's CN is \"%s\"", s->user, ti->cn);
    return -1;
}

/* A ClientHello as the very first bytes: PostgreSQL 17's direct TLS
 * negotiation. The bytes are the start of the handshake. */
static void direct_tls(pgw_session_t *s, const uint8_t *p, size_t n)
{
    if (!s->tls || !s->tls->accept || s->client.is_unix) {
        slog(PGW_LOG_INFO, s, "refused: direct TLS connection, but no TLS on this listener");
        pgw_session_close(s, "direct TLS without TLS configured");
        return;
    }
    s->direct_tls = 1;
    s->ssl_done = 1;
    if (pgw_leg_start_tls(&s->client, s->tls->accept, 1, NULL, p, n))
        pgw_session_close(s, "TLS setup failed");
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
            pgw_session_fatal(s, "08P01", "unsupported frontend protocol: %s request repeated",
                            ssl ? "SSL" : "GSSAPI encryption");
            return -1;
        }
        if (rest) {
            /* Bytes sent before the answer could have been injected by a
             * man in the middle: PostgreSQL refuses them the same way. */
            pgw_session_fatal(s, "08P01", "received unencrypted data after %s request",
                            ssl ? "SSL" : "GSSAPI encryption");
            return -1;
        }
        if (ssl)
            s->ssl_done = 1;
        else
            s->gss_done = 1;
        int tls = ssl && s->tls && s->tls->accept && !s->client.is_unix;
        if (send_copy(&s->client, tls ? "S" : "N", 1)) {
            pgw_session_close(s, "write failed");
            return -1;
        }
        if (tls && pgw_leg_start_tls(&s->client, s->tls->accept, 1, NULL, NULL, 0)) {
            pgw_session_close(s, "TLS setup failed");
            return -1;
        }
        return 0;
    }
    if (code == PGW_CODE_CANCEL) {
        if (s->early_len == 16)
            cancel_forward(s->w, s->early);
        pgw_session_close(s, "cancel request forwarded");
        return -1;
    }
    if (code >> 16 != 3) {
        pgw_session_fatal(s, "0A000", "unsupported frontend protocol %u.%u: server supports 3.0 to 3.0",
                        code >> 16, code & 0xffff);
        return -1;
    }
    if (s->startup_bad == -2) {
        pgw_session_fatal(s, "28000", "no PostgreSQL user name specified in startup packet");
        return -1;
    }
    if (s->startup_bad) {
        pgw_session_fatal(s, "08P01", "invalid startup packet layout: expected terminator as last byte");
        return -1;
    }
    if (check_identity(s) || pgw_gate_connect(s))
        return -1;
    pgw_admit_t adm = pgw_limits_admit(s->addr);
    if (adm != PGW_ADMIT_OK) {
        s->refusal = PGW_REFUSED_LIMIT;
        if (adm == PGW_ADMIT_TOTAL)
            pgw_session_fatal(s, "53300", "sorry, too many clients already");
        else
            pgw_session_fatal(s, "53300", "too many connections from %s", s->addr);
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
            pgw_session_fatal(s, "08P01", "invalid startup packet: %s", pgw_framer_strerror((int)r));
            return;
        }
        off += (size_t)r;
        if (!pgw_framer_stopped(&s->fe))
            return;                 /* a partial packet: wait for more */
        if (!s->early) {
            pgw_session_close(s, "out of memory");
            return;
        }
        if (handle_startup(s, n - off))
            return;
    }
    if (off == n)
        return;

    if (s->state == S_CONNECTING && s->gate) {
        /* Behind the gate: they wait there, and pass it once connected. */
        pgw_gate_input(s, b, b->data + off, n - off);
        return;
    }
    if (s->state == S_CONNECTING) {
        /* Bytes pipelined behind the StartupMessage wait with it. */
        ssize_t r = pgw_framer_feed(&s->fe, b->data + off, n - off);
        uint8_t *grown = r < 0 ? NULL : realloc(s->early, s->early_len + (n - off));
        if (!grown) {
            pgw_session_fatal(s, "08P01", "invalid message from client: %s",
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
        pgw_gate_refresh(s))
        return;
    if (s->gate) {
        pgw_gate_input(s, b, b->data, n);
        return;
    }
    if (s->audit && s->ready && !s->dq && !s->sasl_stripped && !s->w->sink->durable &&
        pgw_framer_whole(&s->fe, b->data, n)) {
        /* An established session's read of whole, well-formed messages,
         * with a sink that records statements when they complete: the
         * server gets them before they are analysed. The tracker still sees
         * them before any answer to them is read. */
        forward(s, &s->client, b, n);
        pgw_framer_feed(&s->fe, b->data, n);   /* fe_message stops only at startup */
        return;
    }

    unsigned admitted = s->w->admitted;
    ssize_t r = pgw_framer_feed(&s->fe, b->data, n);
    if (r < 0) {
        pgw_session_fatal(s, "08P01", "invalid message from client: %s", pgw_framer_strerror((int)r));
        return;
    }
    if (s->state != S_FORWARDING)
        return;                     /* refused while framing */
    pgw_session_pass(s, b, n, admitted);
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
    if (!m->body || m->body_len < 5 || m->body[m->body_len - 1] != 0)
        return;
    /* body: int32 10, then NUL-terminated names, then an empty name. */
    const char *names = (const char *)m->body + 4, *end = (const char *)m->body + m->body_len;
    int found = 0;
    for (const char *nm = names; nm < end && *nm; nm += strlen(nm) + 1)
        found |= strcmp(nm, plus) == 0;
    if (!found)
        return;
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
    if (pgw_session_replace_server_msg(s, m, out, k) == 0)
        s->sasl_stripped = 1;
    else
        slog(PGW_LOG_WARN, s, "cannot remove %s from a SASL offer split over reads", plus);
}

int pgw_session_replace_server_msg(pgw_session_t *s, const pgw_msg_t *m, uint8_t *out, size_t n)
{
    const uint8_t *base = s->cur_buf ? s->cur_buf->data : NULL;
    if (!base || !m->body || m->body < base + 5 || m->body + m->body_len > base + s->cur_len || s->rw_msg) {
        free(out);
        return -1;
    }
    s->rw_msg = out;
    s->rw_msg_len = n;
    s->rw_off = (size_t)(m->body - 5 - base);
    s->rw_len = 1 + (size_t)m->len;
    return 0;
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
    if (m->type == 'E' && s->gate)
        pgw_gate_server_error(s, m);
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
        pgw_session_fatal(s, "08006", "the upstream server %s does not support TLS (--upstream-sslmode %s)",
                        cfg->upstream.text, mode);
    } else if (p[0] != 'S') {
        pgw_session_fatal(s, "08006", "the upstream server %s refused the TLS request", cfg->upstream.text);
    } else if (n > 1) {
        pgw_session_fatal(s, "08006", "the upstream server %s sent unencrypted data after its TLS answer",
                        cfg->upstream.text);
    } else {
        const char *host = cfg->tls.upstream_sslmode == PGW_SSLMODE_VERIFY_FULL ? cfg->upstream.host : NULL;
        if (pgw_leg_start_tls(&s->server, s->tls->connect, 0, host, NULL, 0))
            pgw_session_fatal(s, "08006", "pgwarden could not set up TLS to the upstream server %s",
                            cfg->upstream.text);
    }
}

/* Sends the bytes of b with the rewritten message in place of the
 * original. */
static void forward_rewritten(pgw_session_t *s, pgw_buf_t *b, size_t n)
{
    size_t off = s->rw_off, end = s->rw_off + s->rw_len;
    uint8_t *msg = s->rw_msg;
    s->rw_msg = NULL;
    if (end > n || (off && pgw_leg_write(&s->client, b, b->data, off))) {
        free(msg);
        pgw_session_close(s, "write failed");
        return;
    }
    if (pgw_leg_write_owned(&s->client, msg, s->rw_msg_len) ||
        (end < n && pgw_leg_write(&s->client, b, b->data + end, n - end)))
        pgw_session_close(s, "write failed");
}

static void server_data(pgw_session_t *s, pgw_buf_t *b, size_t n)
{
    if (s->state == S_UPSTREAM_TLS && !s->server.ssl) {
        upstream_tls_answer(s, b->data, n);
        return;
    }
    if (s->state != S_FORWARDING)
        return;
    if (s->audit && s->ready && !s->gate && pgw_framer_whole(&s->be, b->data, n)) {
        /* An established session's read of whole, well-formed messages that
         * nothing will rewrite: the client's answer does not wait for the
         * audit (its events are encoded after the write). cur_buf stays
         * NULL, so no message of this read can be replaced any more. */
        forward(s, &s->server, b, n);
        pgw_framer_feed(&s->be, b->data, n);   /* be_message never stops it */
        return;
    }
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
            pgw_session_fatal(s, "08P01", "invalid message from server: %s", pgw_framer_strerror((int)r));
        } else {
            slog(PGW_LOG_WARN, s, "invalid message from server: %s", pgw_framer_strerror((int)r));
            pgw_session_close(s, "invalid message from server");
        }
        return;
    }
    if (s->rw_msg) {
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
            pgw_session_fatal(s, "08006", "pgwarden could not establish TLS with the upstream server %s "
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
    pgw_gate_release(s);
    if (s->server_up)
        pgw_ctr_sub(&w->metrics.servers_active, 1);
    pgw_framer_free(&s->fe);
    pgw_framer_free(&s->be);
    free(s->early);
    free(s->rw_msg);
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
        pgw_session_close(s, "out of memory");
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
            pgw_session_fatal(s, "08P01", "received direct TLS connection request without ALPN "
                            "protocol negotiation extension");
    }
}

static const pgw_leg_ops_t session_ops = { on_data, on_eof, on_drained, on_closed, on_secure };

/* ---- lifecycle ----------------------------------------------------------- */

void pgw_session_close(pgw_session_t *s, const char *reason)
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
        pgw_session_close(s, reason);
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
        pgw_session_fatal(s, "08006", "the connection startup did not complete within %g s",
                        (double)startup_ms / 1000);
    } else if (s->ready && !s->waiting && idle_ms > 0 && now_ms - s->idle_since_ms >= idle_ms) {
        pgw_ctr_add(&s->w->metrics.idle_timeouts, 1);
        s->end_reason = PGW_END_TIMEOUT;
        (void)send_copy(&s->server, "X\0\0\0\4", 5);   /* Terminate: a clean end for the server */
        pgw_session_fatal(s, "57P05", "terminating connection due to idle-session timeout (%g s)",
                        (double)idle_ms / 1000);
    }
}

void pgw_session_abort(pgw_link_t *link, const char *reason)
{
    pgw_session_t *s = pgw_container_of(link, pgw_session_t, link);
    if (!s->end_reason)
        s->end_reason = PGW_END_SHUTDOWN;
    pgw_session_close(s, reason);
}

static void on_upstream_connected(uv_connect_t *req, int status)
{
    pgw_session_t *s = req->data;
    if (s->state != S_CONNECTING)
        return;                     /* closed meanwhile; the handle close cancels */
    if (status) {
        pgw_ctr_add(&s->w->metrics.server_connect_failures, 1);
        pgw_session_fatal(s, "08006", "pgwarden could not connect to the upstream server %s: %s",
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
            pgw_session_close(s, "write to upstream failed");
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
        pgw_session_close(s, "write to upstream failed");
        return;
    }
    pgw_leg_read_start(&s->server);
    pgw_leg_read_start(&s->client);
    if (s->gate)
        pgw_gate_resume(s);
}

static void upstream_connect(pgw_session_t *s)
{
    s->connect_req.data = s;
    int rc = pgw_leg_connect(&s->server, &s->w->loop, &s->w->cfg->upstream, &s->connect_req,
                             on_upstream_connected);
    if (rc) {
        pgw_ctr_add(&s->w->metrics.server_connect_failures, 1);
        pgw_session_fatal(s, "08006", "pgwarden could not connect to the upstream server %s: %s",
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
        pgw_session_close(s, "accept failed");
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
            pgw_session_close(s, "out of memory");
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
