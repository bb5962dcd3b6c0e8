#include "audit.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "conn_limits.h"
#include "log.h"
#include <stdlib.h>
#include <uv.h>
#include "pgwarden/sink.h"
#include "statement.h"

/* ---- the parts every event shares --------------------------------------- */

static void fill_common(pgw_audit_t *a, pgw_event_t *ev, pgw_event_kind_t kind,
                        int64_t time_us, uint64_t seq)
{
    const pgw_observer_info_t *o = a->w->observer;
    pgw_event_init(ev, kind, time_us, &a->w->uuid);
    ev->session.id = pgw_str(a->id, 36);
    ev->session.seq = seq;
    ev->session.backend_pid = a->backend_pid;
    if (a->ident_cached && a->ident_valid) {
        /* The identity fields are only ever encoded: their JSON is at hand. */
        ev->identity_json = pgw_str(a->ident_json.data, a->ident_json.len);
        return;
    }
    ev->observer.host = pgw_cstr(o->host);
    ev->observer.instance = pgw_str(o->instance, 36);
    ev->observer.version = PGW_STR_LIT(PGW_VERSION);
    if (a->client_socket) {
        ev->client.socket = pgw_cstr(a->client_socket);
    } else {
        ev->client.ip = pgw_cstr(a->client_ip);
        ev->client.port = a->client_port;
    }
    if (a->application[0])
        ev->client.application = pgw_cstr(a->application);
    if (o->upstream_socket[0]) {
        ev->server.socket = pgw_cstr(o->upstream_socket);
    } else {
        ev->server.ip = pgw_cstr(o->upstream_ip);
        ev->server.port = o->upstream_port;
    }
    if (a->user[0]) {
        ev->user.name = pgw_cstr(a->user);
        ev->user.database = pgw_cstr(a->database);
        if (a->tls && a->tls->has_cert)
            ev->user.cert = &a->cert;
    }
    if (a->tls) {
        ev->tls.version = pgw_cstr(a->tls->version);
        ev->tls.cipher = pgw_cstr(a->tls->cipher);
    }
    if (!a->ident_cached)
        return;
    pgw_jbuf_reset(&a->ident_json);
    a->ident_valid = pgw_event_encode_identity(ev, &a->ident_json) == 0;
    if (a->ident_valid)
        ev->identity_json = pgw_str(a->ident_json.data, a->ident_json.len);
}

/* ---- SQL-level prepared statements and cursors --------------------------- */

/* A session's prepared statements (or cursors), by name: the PREPARE's (or
 * DECLARE's) analysis, one reference each. Beyond NAMED_MAX the newest are
 * not remembered: their EXECUTEs (FETCHes) name no relation, as before. */
#define NAMED_MAX 1024
typedef struct pgw_named_map {
    unsigned n, cap;
    pgw_sql_info_t **v;
} named_map_t;

static int named_find(const named_map_t *m, const char *name)
{
    for (unsigned i = 0; m && name && i < m->n; i++)
        if (strcmp(m->v[i]->name, name) == 0)
            return (int)i;
    return -1;
}

static void named_forget(named_map_t *m, int i)
{
    pgw_sql_info_unref(m->v[i]);
    m->v[i] = m->v[--m->n];
}

static void named_clear(named_map_t *m)
{
    while (m && m->n)
        named_forget(m, (int)m->n - 1);
}

static void named_free(named_map_t *m)
{
    if (!m)
        return;
    named_clear(m);
    free(m->v);
    free(m);
}

static void named_remember(named_map_t **mp, pgw_sql_info_t *info)
{
    named_map_t *m = *mp;
    int i = named_find(m, info->name);
    if (i >= 0) {
        named_forget(m, i);     /* the name used again (after a failed block, a commit) */
    } else if (!m) {
        if (!(m = *mp = calloc(1, sizeof *m)))
            return;
    }
    if (m->n == m->cap) {
        unsigned cap = m->cap ? m->cap * 2 : 8;
        pgw_sql_info_t **v = cap <= NAMED_MAX ? realloc(m->v, cap * sizeof *v) : NULL;
        if (!v)
            return;
        m->v = v;
        m->cap = cap;
    }
    m->v[m->n++] = pgw_sql_info_ref(info);
}

/* A statement that uses a name (EXECUTE, FETCH, MOVE) reports the
 * relations of the one that defined it. */
static void named_use(const named_map_t *m, const pgw_sql_info_t *info, pgw_stmt_view_t *view,
                      pgw_event_statement_t *out)
{
    int i = named_find(m, info->name);
    if (i >= 0 && m->v[i]->nobjects)
        pgw_statement_fill_objects(view, m->v[i], out);
}

/* PREPARE/EXECUTE/DEALLOCATE, DECLARE/FETCH/MOVE/CLOSE and DISCARD ALL: the
 * maps follow what the server did (done: the statement's outcome is known,
 * not a begin record). A cursor that its transaction's end closed stays in
 * the map until its name is declared again or closed: only a FETCH that
 * fails (34000) could use it. */
static void named_track(pgw_audit_t *a, pgw_sql_info_t *info, bool done, pgw_result_status_t status,
                        pgw_stmt_view_t *view, pgw_event_statement_t *out)
{
    if (info->flags & PGW_SQL_EXECUTE) {
        named_use(a->prepared, info, view, out);
        return;
    }
    if (info->flags & PGW_SQL_FETCH) {
        named_use(a->cursors, info, view, out);
        return;
    }
    if (!done || status != PGW_STATUS_OK)
        return;
    if (info->flags & PGW_SQL_PREPARE)
        named_remember(&a->prepared, info);
    else if (info->flags & PGW_SQL_DECLARE)
        named_remember(&a->cursors, info);
    if (info->flags & (PGW_SQL_DEALLOCATE | PGW_SQL_CLOSE)) {
        named_map_t *m = info->flags & PGW_SQL_DEALLOCATE ? a->prepared : a->cursors;
        int i = named_find(m, info->name);
        if (i >= 0)
            named_forget(m, i);
        else if (!info->name) {         /* DEALLOCATE ALL, CLOSE ALL, DISCARD ALL (both) */
            if (info->flags & PGW_SQL_DEALLOCATE)
                named_clear(a->prepared);
            if (info->flags & PGW_SQL_CLOSE)
                named_clear(a->cursors);
        }
    }
}

static void audit_free(pgw_audit_t *a)
{
    named_free(a->prepared);
    named_free(a->cursors);
    pgw_jbuf_free(&a->ident_json);
    pgw_jbuf_free(&a->heads);
    free(a->tls);
    free(a);
}

static void emit(pgw_worker_t *w, const pgw_event_t *ev)
{
    /* A refusal is counted and logged by the producer; the statement itself
     * has already been forwarded, so there is nothing more to undo here. */
    (void)pgw_sink_emit(&w->producer, ev);
    pgw_worker_audit_emitted(w);
}

/* Durable sinks: a statement's begin record, or its completion. */
static void emit_rec(pgw_worker_t *w, const pgw_event_t *ev, bool begin, uint64_t token)
{
    (void)pgw_sink_emit_rec(&w->producer, ev, begin, token);
    if (begin)
        w->admitted++;
    pgw_worker_audit_emitted(w);
}

/* A begin record's head is kept for its completion, which then differs
 * only from `result` on: same event_id, time, seq, identity and statement.
 * An entry of a->heads is its token, its length and its bytes. The heads
 * of a session change with its identity (dropped then) and are never more
 * than HEADS_MAX bytes (later begins are then not kept). */
#define HEADS_MAX (64 * 1024)
#define HEADS_KEEP (8 * 1024)       /* capacity kept once drained */
typedef struct head_hdr {
    uint64_t token;
    int64_t time_us;                /* the event's time, checked at completion */
    uint32_t len;
} head_hdr_t;

static void heads_drop(pgw_audit_t *a)
{
    a->heads.len = a->heads_off = 0;
}

static void emit_begin(pgw_audit_t *a, const pgw_event_t *ev, uint64_t token)
{
    pgw_jbuf_t *h = &a->heads;
    if (a->heads_off == h->len) {
        heads_drop(a);
        if (h->cap > HEADS_KEEP)    /* a long pipeline's: not kept for the session's life */
            pgw_jbuf_free(h);
    } else if (a->heads_off >= HEADS_MAX / 2) {
        memmove(h->data, h->data + a->heads_off, h->len - a->heads_off);
        h->len -= a->heads_off;
        a->heads_off = 0;
    }
    size_t at = h->len, len = 0;
    head_hdr_t hdr = { .token = token, .time_us = ev->time_us };
    pgw_jbuf_put(h, &hdr, sizeof hdr);
    if (h->failed) {
        h->failed = h->toobig = false;
        h->len = at;
        emit_rec(a->w, ev, true, token);
        return;
    }
    (void)pgw_sink_emit_begin(&a->w->producer, ev, token, h, &len);
    if (len) {
        hdr.len = (uint32_t)len;
        memcpy(h->data + at, &hdr, sizeof hdr);
    } else {
        h->len = at;
    }
    a->w->admitted++;
    pgw_worker_audit_emitted(a->w);
}

/* The head kept for token, or none: not kept, the identity changed, or
 * the event's time did (the second statement of a Query starts when the
 * first ends, after its begin). Valid until the next emit_begin.
 * Completions come in the order of their begins (tokens increase in a
 * session), so older entries are those whose completion went another way
 * (after a parse off the loop). */
static pgw_str_t head_take(pgw_audit_t *a, uint64_t token, int64_t time_us)
{
    pgw_jbuf_t *h = &a->heads;
    while (a->heads_off < h->len) {
        head_hdr_t hdr;
        memcpy(&hdr, h->data + a->heads_off, sizeof hdr);
        if (hdr.token > token)
            break;
        const char *p = h->data + a->heads_off + sizeof hdr;
        a->heads_off += sizeof hdr + hdr.len;
        if (hdr.token == token && hdr.time_us == time_us)
            return pgw_str(p, hdr.len);
    }
    return (pgw_str_t){ NULL, 0 };
}

/* The seq of a session's first event (session_start or auth_failure),
 * which statements begun behind the startup packet left free. */
static uint64_t first_seq(pgw_audit_t *a)
{
    if (a->seq1_reserved) {
        a->seq1_reserved = 0;
        return 1;
    }
    return ++a->seq;
}

/* ---- statements ---------------------------------------------------------- */

/* ident is the session as it was when the statement completed: for an
 * event finished after a parse off the loop, the session may be gone. */
static void statement_event(pgw_audit_t *ident, uint64_t seq, const pgw_stmt_done_t *d,
                            pgw_stmt_view_t *view, bool begin)
{
    pgw_event_t ev;
    fill_common(ident, &ev, PGW_EVENT_STATEMENT, d->time_us, seq);
    ev.statement.truncated = PGW_BOOL(0);   /* before fill: part of the encoded analysis */
    pgw_statement_fill(ident->w->frags, d, view, &ev.statement, ident->text_max);
    pgw_sql_info_t *info = pgw_statement_info(view);
    if (info && (info->flags & PGW_SQL_NAMED))
        named_track(ident->owner ? ident->owner : ident, info, !begin, d->status, view, &ev.statement);
    ev.statement.protocol = d->protocol;
    if (d->protocol == PGW_PROTOCOL_EXTENDED) {
        ev.statement.statement_name = pgw_cstr(d->stmt_name ? d->stmt_name : "");
        ev.statement.portal_name = pgw_cstr(d->portal_name ? d->portal_name : "");
    }
    if (d->protocol == PGW_PROTOCOL_SIMPLE && d->count) {
        ev.statement.index = PGW_INT(d->index);
        ev.statement.count = PGW_INT(d->count);
    }
    if (d->nparams >= 0)
        ev.statement.param_count = PGW_INT(d->nparams);
    if (d->params && d->nparams > 0) {
        ev.statement.param_values = d->params;
        ev.statement.nparam_values = (size_t)d->nparams;
    }

    ev.result.status = d->status;
    if (d->tag)
        ev.result.tag = pgw_cstr(d->tag);
    if (d->has_rows)
        ev.result.rows = PGW_INT(d->rows);
    if (d->status != PGW_STATUS_SKIPPED) {
        ev.result.bytes = PGW_INT(d->bytes);
        ev.result.duration_us = PGW_INT(d->duration_us);
    }
    if (d->sqlstate)
        ev.result.sqlstate = pgw_cstr(d->sqlstate);
    if (d->message)
        ev.result.message = pgw_cstr(d->message);
    if (!begin)                     /* counted once: at its completion */
        pgw_metrics_statement(&ident->w->metrics, ev.statement.class_, d->status, d->duration_us, d->sqlstate);
    if (d->copy_dir) {
        ev.copy.direction = d->copy_dir;
        ev.copy.bytes = PGW_INT(d->copy_bytes);
        if (d->has_rows && d->tag && strncmp(d->tag, "COPY ", 5) == 0)
            ev.copy.rows = PGW_INT(d->rows);    /* not BASE_BACKUP's result rows */
    }
    if (!d->admit.token) {
        emit(ident->w, &ev);
        return;
    }
    /* The session's own (not a parse job's copy), of a statement whose
     * fields are the same at its begin and its completion: not an EXECUTE
     * or FETCH, whose relations come from a map that its predecessors'
     * completions change, nor a function call. */
    bool same = !ident->owner && !(info && (info->flags & PGW_SQL_NAMED)) &&
                (d->protocol == PGW_PROTOCOL_SIMPLE || d->protocol == PGW_PROTOCOL_EXTENDED);
    if (same && begin) {
        emit_begin(ident, &ev, d->admit.token);
        return;
    }
    if (same)
        ev.head_json = head_take(ident, d->admit.token, ev.time_us);
    emit_rec(ident->w, &ev, begin, d->admit.token);
}

/* A statement whose text is too long to parse on the loop and missed the
 * cache: parsed in libuv's thread pool, its event written when done. The
 * job owns copies of everything the event needs. The statements that
 * complete meanwhile in the same session wait behind it in the same
 * queue (owner->waiting), ready at once: a session's events go out in
 * the order of their seq, and an EXECUTE or FETCH whose PREPARE or
 * DECLARE was out names its relations. */
typedef struct parse_job {
    uv_work_t req;
    struct parse_job *next;         /* in owner->waiting */
    int ready;                      /* parsed, or nothing to parse */
    pgw_audit_t *owner;             /* kept alive until its jobs are done */
    pgw_audit_t ident;
    uint64_t seq;
    pgw_stmt_done_t d;
    pgw_stmt_view_t view;
    uint64_t parse_ns;
    _Alignas(pgw_event_param_t) char strings[];   /* params, then their bytes and the strings */
} parse_job_t;

static void job_parse(uv_work_t *req)
{
    parse_job_t *j = req->data;
    uint64_t t0 = uv_hrtime();
    pgw_statement_parse(&j->d, &j->view);
    j->parse_ns = uv_hrtime() - t0;
}

static void session_end_event(pgw_audit_t *a);

static void job_done(uv_work_t *req, int status)
{
    parse_job_t *j = req->data;
    pgw_audit_t *a = j->owner;
    pgw_worker_t *w = a->w;
    pgw_ctr_add(&w->metrics.parse_pool_ns, j->parse_ns);
    pgw_statement_learn(w->analysis, &j->view);
    j->ready = 1;
    /* The queue's ready head goes out, in order. */
    parse_job_t *q;
    while ((q = a->waiting) && q->ready) {
        if (!(a->waiting = q->next))
            a->waiting_tail = NULL;
        statement_event(&q->ident, q->seq, &q->d, &q->view, false);
        pgw_statement_view_free(&q->view);
        free(q);
    }
    /* The session ended while its statements were parsed: its session_end
     * comes now, after all of them (none waits: each waits only for
     * parses), and the audit is freed. */
    if (--a->jobs == 0 && a->end_deferred) {
        session_end_event(a);
        audit_free(a);
    }
    w->nhelpers--;
    pgw_worker_maybe_finish(w);
}

static const char *keep(char **at, const char *s, size_t n)
{
    if (!s)
        return NULL;
    char *p = *at;
    memcpy(p, s, n);
    p[n] = '\0';
    *at += n + 1;
    return p;
}

/* A copy of everything d's event needs, its view moved in. */
static parse_job_t *job_new(pgw_audit_t *a, uint64_t seq, const pgw_stmt_done_t *d, pgw_stmt_view_t *view)
{
    size_t lstmt = d->stmt_name ? strlen(d->stmt_name) : 0, lportal = d->portal_name ? strlen(d->portal_name) : 0;
    size_t ltag = d->tag ? strlen(d->tag) : 0, lstate = d->sqlstate ? strlen(d->sqlstate) : 0;
    size_t lmsg = d->message ? strlen(d->message) : 0;
    size_t np = d->params && d->nparams > 0 ? (size_t)d->nparams : 0, lparams = 0;
    for (size_t i = 0; i < np; i++)
        lparams += d->params[i].len;
    parse_job_t *j = malloc(sizeof *j + np * sizeof *d->params + d->text_len + lstmt + lportal +
                            ltag + lstate + lmsg + lparams + 6);
    if (!j)
        return NULL;
    j->req.data = j;
    j->next = NULL;
    j->ready = 0;
    j->owner = a;
    j->ident = *a;
    j->ident.ident_cached = 0;      /* a's buffer is a's alone */
    j->ident.owner = a;
    memset(&j->ident.ident_json, 0, sizeof j->ident.ident_json);
    memset(&j->ident.heads, 0, sizeof j->ident.heads);
    j->seq = seq;
    j->d = *d;
    j->d.memo = NULL;               /* the tracker's: gone before the job is */
    pgw_statement_view_move(&j->view, view);
    pgw_event_param_t *params = (pgw_event_param_t *)(void *)j->strings;
    char *at = j->strings + np * sizeof *params;
    for (size_t i = 0; i < np; i++) {
        params[i] = d->params[i];
        params[i].ptr = at;
        memcpy(at, d->params[i].ptr, d->params[i].len);
        at += d->params[i].len;
    }
    j->d.params = np ? params : NULL;
    j->d.text = keep(&at, d->text, d->text_len);
    j->d.query = NULL;
    j->d.query_len = 0;
    j->d.stmt_name = keep(&at, d->stmt_name, lstmt);
    j->d.portal_name = keep(&at, d->portal_name, lportal);
    j->d.tag = keep(&at, d->tag, ltag);
    j->d.sqlstate = keep(&at, d->sqlstate, lstate);
    j->d.message = keep(&at, d->message, lmsg);
    return j;
}

static void enqueue(pgw_audit_t *a, parse_job_t *j)
{
    *(a->waiting_tail ? a->waiting_tail : &a->waiting) = j;
    a->waiting_tail = &j->next;
}

static int parse_later(pgw_audit_t *a, uint64_t seq, const pgw_stmt_done_t *d, pgw_stmt_view_t *view)
{
    parse_job_t *j = job_new(a, seq, d, view);
    if (!j)
        return -1;
    if (uv_queue_work(&a->w->loop, &j->req, job_parse, job_done)) {
        pgw_statement_view_move(view, &j->view);    /* back to the caller */
        free(j);
        return -1;
    }
    enqueue(a, j);
    a->w->nhelpers++;
    a->jobs++;
    return 0;
}

/* A statement analysed at once while an earlier one of the session is
 * parsed off the loop: its event waits for that one's. Returns 0 when it
 * waits (view then moved), -1 to report it now (out of memory: out of
 * order rather than lost). */
static int wait_in_line(pgw_audit_t *a, uint64_t seq, const pgw_stmt_done_t *d, pgw_stmt_view_t *view)
{
    /* A view that reports a memo's analysis borrows it from the tracker,
     * which may free it before the wait ends: the wait takes an analysis
     * of its own (a cache hit). */
    pgw_stmt_view_t own;
    pgw_stmt_view_t *v = view;
    if (view->src != &view->an) {
        pgw_stmt_done_t mine = *d;
        mine.memo = NULL;
        if (pgw_statement_analyze(a->w->analysis, &mine, &own) != 1 || own.rc) {
            pgw_statement_view_free(&own);
            return -1;
        }
        v = &own;
    }
    parse_job_t *j = job_new(a, seq, d, v);
    if (!j) {
        if (v == &own)
            pgw_statement_view_free(&own);
        return -1;
    }
    if (v == &own)
        pgw_statement_view_free(view);
    j->ready = 1;
    enqueue(a, j);
    return 0;
}

static void on_statement(void *ud, const pgw_stmt_done_t *d)
{
    pgw_audit_t *a = ud;
    pgw_stmt_view_t view;
    /* Pipelined behind the startup packet of a session that never started
     * (the auth_failure says so): the server never ran it. A durable sink
     * spooled its begin: withdrawn, so that no restart writes it as unknown. */
    if (!a->started) {
        if (d->admit.token) {
            (void)pgw_sink_withdraw(&a->w->producer, d->admit.token, pgw_str(a->id, 36));
            pgw_worker_audit_emitted(a->w);
        }
        return;
    }
    uint64_t seq = d->admit.seq ? d->admit.seq : ++a->seq;
    if (!pgw_statement_analyze(a->w->analysis, d, &view)) {
        if (parse_later(a, seq, d, &view) == 0)
            return;
        pgw_warn("audit: no memory to parse a %zu-byte statement off the loop: parsing it here",
                 (size_t)d->text_len);
        pgw_statement_parse(d, &view);
    } else if (a->waiting && wait_in_line(a, seq, d, &view) == 0) {
        return;
    }
    statement_event(a, seq, d, &view, false);
    pgw_statement_view_free(&view);
}

/* With a durable sink: the statement is about to be forwarded. Its begin
 * record (the event it would have if pgwarden stopped now, status unknown)
 * takes its seq, and is spooled before the bytes go out (worker.c). A text
 * the cache does not know is parsed here, not off the loop: the record
 * must be complete (and redacted) now; the completion then hits the cache. */
static void on_admit(void *ud, const pgw_stmt_done_t *d, pgw_stmt_admit_t *out)
{
    pgw_audit_t *a = ud;
    pgw_stmt_view_t view;
    if (!a->started && a->seq == 0) {
        a->seq = 1;                 /* seq 1 stays the session_start's (or auth_failure's) */
        a->seq1_reserved = 1;
    }
    out->seq = ++a->seq;
    /* Unique in the process (the spool matches begins and completions by
     * token across its writers), increasing per thread. */
    out->token = (uint64_t)(a->w->index + 1) << 48 | ++a->w->admit_token;
    if (!pgw_statement_analyze(a->w->analysis, d, &view)) {
        pgw_statement_parse(d, &view);
        pgw_statement_learn(a->w->analysis, &view);
    }
    pgw_stmt_done_t begun = *d;
    begun.admit = *out;
    statement_event(a, out->seq, &begun, &view, true);
    pgw_statement_view_free(&view);
}

static unsigned split(void *ud, const char *text, size_t len, uint32_t (*spans)[2], unsigned cap,
                      pgw_memo_t **memo)
{
    pgw_audit_t *a = ud;
    if (a->given && a->given->count)
        return pgw_statement_split_given(a->given, spans, cap, memo);
    return pgw_statement_split(a->w->analysis, text, len, spans, cap, memo);
}

static int own_xact(void *ud, const char *text, size_t len, pgw_memo_t **memo)
{
    pgw_audit_t *a = ud;
    return pgw_statement_own_transaction(a->w->analysis, text, len, memo);
}

/* ---- session ------------------------------------------------------------- */

void pgw_audit_init(pgw_audit_t *a, pgw_worker_t *w, const struct sockaddr *peer,
                    const pgw_endpoint_t *listener)
{
    memset(a, 0, sizeof *a);
    a->w = w;
    a->start_us = pgw_event_now_us();
    uint8_t id[16];
    pgw_uuid7_next(&w->uuid, (uint64_t)(a->start_us / 1000), id);
    char text[36];
    pgw_uuid_format(id, text);
    memcpy(a->id, text, 36);
    a->id[36] = '\0';
    if (listener->is_unix) {
        a->client_socket = listener->path;
    } else if (peer && peer->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)peer;
        inet_ntop(AF_INET6, &s6->sin6_addr, a->client_ip, sizeof a->client_ip);
        a->client_port = ntohs(s6->sin6_port);
    } else if (peer && peer->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)(const void *)peer;
        inet_ntop(AF_INET, &s4->sin_addr, a->client_ip, sizeof a->client_ip);
        a->client_port = ntohs(s4->sin_port);
    }
    pgw_jbuf_init(&a->ident_json, 64 * 1024);
    pgw_jbuf_init(&a->heads, HEADS_MAX);
    a->ident_cached = 1;
    pgw_tracker_init(&a->tracker, on_statement, split, a);
    a->tracker.param_max = pgw_limits_param_max();
    /* The configured cap, and never so long that the escaped text alone
     * could pass the sink's largest event. */
    a->text_max = pgw_limits_statement_max();
    if (a->text_max > w->sink->limits.max_event_bytes / 8)
        a->text_max = (uint32_t)(w->sink->limits.max_event_bytes / 8);
    a->tracker.own_xact = own_xact;
    if (w->sink->durable)
        a->tracker.admit = on_admit;
}

/* The server's reading of the startup parameter replication: "database",
 * or a boolean (PostgreSQL's parse_bool: a prefix of true/yes/on, or 1). */
static int walsender_requested(const char *v)
{
    size_t n = v ? strlen(v) : 0;

    if (n == 0)
        return 0;
    if (strcasecmp(v, "database") == 0 || strcmp(v, "1") == 0)
        return 1;
    return strncasecmp(v, "true", n) == 0 || strncasecmp(v, "yes", n) == 0 ||
           (n >= 2 && strncasecmp(v, "on", n) == 0);
}

void pgw_audit_startup(pgw_audit_t *a, const pgw_startup_t *st)
{
    a->ident_valid = 0;
    heads_drop(a);
    a->tracker.replication = walsender_requested(st->replication);
    snprintf(a->user, sizeof a->user, "%s", st->user);
    snprintf(a->database, sizeof a->database, "%s", st->database ? st->database : st->user);
    if (st->application_name)
        snprintf(a->application, sizeof a->application, "%s", st->application_name);
}

void pgw_audit_tls(pgw_audit_t *a, const pgw_tls_info_t *info)
{
    if (!a->tls && !(a->tls = malloc(sizeof *a->tls)))
        return;                     /* events then lack the TLS part */
    *a->tls = *info;
    const pgw_tls_info_t *t = a->tls;
    for (unsigned i = 0; i < t->nsan; i++)
        a->san[i] = pgw_cstr(t->san[i]);
    a->cert = (pgw_event_cert_t){
        .subject = pgw_cstr(t->subject), .issuer = pgw_cstr(t->issuer),
        .serial = pgw_cstr(t->serial), .sha256 = pgw_cstr(t->sha256),
        .san = t->nsan ? a->san : NULL, .nsan = t->nsan,
        .not_before = PGW_INT(t->not_before), .not_after = PGW_INT(t->not_after),
    };
    if (t->cn[0])
        a->cert.cn = pgw_cstr(t->cn);
    a->ident_valid = 0;
    heads_drop(a);
}

void pgw_audit_frontend(pgw_audit_t *a, const pgw_msg_t *m, int64_t now_us)
{
    a->bytes_in += (uint64_t)m->len + 1;
    /* Nothing of a password or SASL message is looked at, ever. */
    if (m->type != 'p')
        pgw_tracker_frontend(&a->tracker, m, now_us);
}

static const char *auth_method_name(uint32_t code)
{
    switch (code) {
    case 3: return "password";
    case 5: return "md5";
    case 7: return "gss";
    case 9: return "sspi";
    case 10: return "scram-sha-256";
    default: return NULL;
    }
}

static void before_ready(pgw_audit_t *a, const pgw_msg_t *m, int64_t now_us)
{
    pgw_event_t ev;
    switch (m->type) {
    case 'R': {
        pgw_auth_t au;
        if (pgw_parse_auth(m, &au))
            break;
        if (au.code == 0) {
            a->authenticated = 1;
            if (!a->auth_method)
                a->auth_method = "trust";
        } else if (!a->auth_method) {
            a->auth_method = auth_method_name(au.code);
        }
        break;
    }
    case 'S': {
        pgw_param_status_t ps;
        if (pgw_parse_param_status(m, &ps) == 0 && strcmp(ps.name, "server_version") == 0)
            snprintf(a->server_version, sizeof a->server_version, "%s", ps.value);
        break;
    }
    case 'K': {
        pgw_keydata_t kd;
        if (pgw_parse_keydata(m, &kd) == 0) {
            a->backend_pid = (int32_t)kd.pid;
            heads_drop(a);          /* begun behind the startup packet: without it */
        }
        break;
    }
    case 'E': {
        pgw_error_t e;
        if (pgw_parse_error(m, &e) || a->ended)
            break;
        fill_common(a, &ev, PGW_EVENT_AUTH_FAILURE, now_us, first_seq(a));
        if (a->auth_method)
            ev.auth_method = pgw_cstr(a->auth_method);
        ev.result.status = PGW_STATUS_ERROR;
        ev.result.sqlstate = pgw_cstr(e.sqlstate);
        ev.result.message = pgw_cstr(e.message);
        emit(a->w, &ev);
        a->ended = 1;               /* refused: no session_start, no session_end */
        break;
    }
    case 'Z':
        if (a->ended)
            break;                  /* refused already: a server that goes on after its
                                     * FATAL does not make it a session */
        a->started = 1;
        fill_common(a, &ev, PGW_EVENT_SESSION_START, a->start_us, first_seq(a));
        if (a->server_version[0])
            ev.server_version = pgw_cstr(a->server_version);
        if (a->auth_method)
            ev.auth_method = pgw_cstr(a->auth_method);
        emit(a->w, &ev);
        break;
    default:
        break;
    }
}

void pgw_audit_backend(pgw_audit_t *a, const pgw_msg_t *m, int64_t now_us)
{
    a->bytes_out += (uint64_t)m->len + 1;
    if (m->type == 'S') {
        /* The server reports application_name whenever it changes (SET, or
         * a driver that sets it after connecting): events carry the current one. */
        pgw_param_status_t ps;
        if (pgw_parse_param_status(m, &ps) == 0 && strcmp(ps.name, "application_name") == 0) {
            snprintf(a->application, sizeof a->application, "%s", ps.value);
            a->ident_valid = 0;
            heads_drop(a);
        }
    }
    if (!a->started)
        before_ready(a, m, now_us);
    else
        pgw_tracker_backend(&a->tracker, m, now_us);
}

void pgw_audit_refused(pgw_audit_t *a, const char *sqlstate, const char *message)
{
    if (a->started || a->ended)
        return;
    pgw_event_t ev;
    fill_common(a, &ev, PGW_EVENT_AUTH_FAILURE, pgw_event_now_us(), first_seq(a));
    ev.result.status = PGW_STATUS_ERROR;
    ev.result.sqlstate = pgw_cstr(sqlstate);
    ev.result.message = pgw_cstr(message);
    emit(a->w, &ev);
    a->ended = 1;
}

void pgw_audit_denied(pgw_audit_t *a, const char *rule, int enforced, const char *sqlstate,
                      const char *message, const pgw_analysis_t *an, uint32_t idx,
                      pgw_stmt_protocol_t protocol, const char *stmt_name, const char *call_text)
{
    if (a->ended)
        return;
    pgw_event_t ev;
    fill_common(a, &ev, PGW_EVENT_DENIED, pgw_event_now_us(), ++a->seq);
    ev.rule = pgw_cstr(rule);
    ev.enforced = PGW_BOOL(enforced != 0);
    ev.result.status = PGW_STATUS_ERROR;
    ev.result.sqlstate = pgw_cstr(sqlstate);
    ev.result.message = pgw_cstr(message);
    pgw_stmt_view_t view;
    memset(&view, 0, sizeof view);
    if (protocol != PGW_PROTOCOL_ABSENT) {
        /* A statement (of an), or a FunctionCall (call_text, when it parsed). */
        pgw_stmt_done_t d;
        memset(&d, 0, sizeof d);
        d.protocol = protocol;
        if (call_text) {
            d.text = call_text;
            d.text_len = strlen(call_text);
            ev.statement.truncated = PGW_BOOL(0);
        }
        if (an) {
            d.text = "";
            view.has_an = 1;
            view.src = an;
            view.idx = idx;
            ev.statement.truncated = PGW_BOOL(0);
        }
        pgw_statement_fill(NULL, &d, &view, &ev.statement, a->text_max);
        ev.statement.protocol = protocol;
        if (protocol == PGW_PROTOCOL_EXTENDED) {
            /* Refused at Parse: no portal exists yet. */
            ev.statement.statement_name = pgw_cstr(stmt_name ? stmt_name : "");
            ev.statement.portal_name = PGW_STR_LIT("");
        }
        if (protocol == PGW_PROTOCOL_SIMPLE && an && an->count > 1) {
            ev.statement.index = PGW_INT(idx + 1);
            ev.statement.count = PGW_INT(an->count);
        }
    }
    emit(a->w, &ev);
    free(view.heap_objects);
    /* A refused connection: no session_start or auth_failure follows. */
    if (protocol == PGW_PROTOCOL_ABSENT && enforced)
        a->ended = 1;
}

static void session_end_event(pgw_audit_t *a)
{
    if (!a->started || a->ended)
        return;
    a->ended = 1;
    pgw_event_t ev;
    fill_common(a, &ev, PGW_EVENT_SESSION_END, a->end_us, ++a->seq);
    ev.end.reason = a->end_reason;
    ev.end.duration_us = PGW_INT(a->end_us - a->start_us);
    ev.end.statements = PGW_INT(a->tracker.statements);
    ev.end.errors = PGW_INT(a->tracker.errors);
    ev.end.bytes_in = PGW_INT(a->bytes_in);
    ev.end.bytes_out = PGW_INT(a->bytes_out);
    emit(a->w, &ev);
}

void pgw_audit_end(pgw_audit_t *a, pgw_end_reason_t reason)
{
    a->end_us = pgw_event_now_us();
    a->end_reason = reason;
    pgw_tracker_finish(&a->tracker, a->end_us);
    if (a->jobs) {
        a->end_deferred = 1;        /* the last parse job ends it */
        return;
    }
    session_end_event(a);
    audit_free(a);
}
