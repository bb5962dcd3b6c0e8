#include "audit.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "pgwarden/sink.h"
#include "statement.h"

/* ---- the parts every event shares --------------------------------------- */

static void fill_common(pgw_audit_t *a, pgw_event_t *ev, pgw_event_kind_t kind, int64_t time_us)
{
    const pgw_observer_info_t *o = a->w->observer;
    pgw_event_init(ev, kind, time_us, &a->w->uuid);
    ev->observer.host = pgw_cstr(o->host);
    ev->observer.instance = pgw_str(o->instance, 36);
    ev->observer.version = PGW_STR_LIT(PGW_VERSION);
    ev->session.id = pgw_str(a->id, 36);
    ev->session.seq = ++a->seq;
    ev->session.backend_pid = a->backend_pid;
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
    }
}

static void emit(pgw_audit_t *a, const pgw_event_t *ev)
{
    /* A refusal is counted and logged by the producer; the statement itself
     * has already been forwarded, so there is nothing more to undo here. */
    (void)pgw_sink_emit(&a->w->producer, ev);
    pgw_worker_audit_emitted(a->w);
}

/* ---- statements ---------------------------------------------------------- */

static void on_statement(void *ud, const pgw_stmt_done_t *d)
{
    pgw_audit_t *a = ud;
    pgw_event_t ev;
    fill_common(a, &ev, PGW_EVENT_STATEMENT, d->time_us);

    pgw_stmt_view_t view;
    pgw_statement_describe(a->w->analysis, d, &view, &ev.statement);
    ev.statement.truncated = PGW_BOOL(0);
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
    if (d->copy_dir) {
        ev.copy.direction = d->copy_dir;
        ev.copy.bytes = PGW_INT(d->copy_bytes);
        if (d->has_rows)
            ev.copy.rows = PGW_INT(d->rows);
    }
    emit(a, &ev);
    pgw_statement_view_free(&view);
}

static unsigned split(void *ud, const char *text, size_t len, uint32_t (*spans)[2], unsigned cap)
{
    pgw_audit_t *a = ud;
    return pgw_statement_split(a->w->analysis, text, len, spans, cap);
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
    pgw_tracker_init(&a->tracker, on_statement, split, a);
}

void pgw_audit_startup(pgw_audit_t *a, const pgw_startup_t *st)
{
    snprintf(a->user, sizeof a->user, "%s", st->user);
    snprintf(a->database, sizeof a->database, "%s", st->database ? st->database : st->user);
    if (st->application_name)
        snprintf(a->application, sizeof a->application, "%s", st->application_name);
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
        if (pgw_parse_keydata(m, &kd) == 0)
            a->backend_pid = (int32_t)kd.pid;
        break;
    }
    case 'E': {
        pgw_error_t e;
        if (pgw_parse_error(m, &e) || a->ended)
            break;
        fill_common(a, &ev, PGW_EVENT_AUTH_FAILURE, now_us);
        if (a->auth_method)
            ev.auth_method = pgw_cstr(a->auth_method);
        ev.result.status = PGW_STATUS_ERROR;
        ev.result.sqlstate = pgw_cstr(e.sqlstate);
        ev.result.message = pgw_cstr(e.message);
        emit(a, &ev);
        a->ended = 1;               /* refused: no session_start, no session_end */
        break;
    }
    case 'Z':
        a->started = 1;
        fill_common(a, &ev, PGW_EVENT_SESSION_START, a->start_us);
        if (a->server_version[0])
            ev.server_version = pgw_cstr(a->server_version);
        if (a->auth_method)
            ev.auth_method = pgw_cstr(a->auth_method);
        emit(a, &ev);
        break;
    default:
        break;
    }
}

void pgw_audit_backend(pgw_audit_t *a, const pgw_msg_t *m, int64_t now_us)
{
    a->bytes_out += (uint64_t)m->len + 1;
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
    fill_common(a, &ev, PGW_EVENT_AUTH_FAILURE, pgw_event_now_us());
    ev.result.status = PGW_STATUS_ERROR;
    ev.result.sqlstate = pgw_cstr(sqlstate);
    ev.result.message = pgw_cstr(message);
    emit(a, &ev);
    a->ended = 1;
}

void pgw_audit_end(pgw_audit_t *a, pgw_end_reason_t reason)
{
    int64_t now = pgw_event_now_us();
    pgw_tracker_finish(&a->tracker, now);
    if (!a->started || a->ended)
        return;
    a->ended = 1;
    pgw_event_t ev;
    fill_common(a, &ev, PGW_EVENT_SESSION_END, now);
    ev.end.reason = reason;
    ev.end.duration_us = PGW_INT(now - a->start_us);
    ev.end.statements = PGW_INT(a->tracker.statements);
    ev.end.errors = PGW_INT(a->tracker.errors);
    ev.end.bytes_in = PGW_INT(a->bytes_in);
    ev.end.bytes_out = PGW_INT(a->bytes_out);
    emit(a, &ev);
}
