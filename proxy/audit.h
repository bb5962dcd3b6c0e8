/* A session's audit: its identity, its statement tracker, and the events
 * they produce (session_start, auth_failure, statement, session_end),
 * encoded into the loop thread's sink producer.
 *
 * Embedded in the session and touched by its loop thread only. Everything
 * here runs only when an audit sink is configured: without one, sessions
 * carry no tracker and the forwarding path is untouched. */
#ifndef PGW_AUDIT_H
#define PGW_AUDIT_H

#include <stdint.h>

#include "pgwarden/analysis.h"
#include "pgwarden/event.h"
#include "pgwarden/json.h"
#include "pgwarden/protocol.h"
#include "tls.h"
#include "tracker.h"
#include "worker.h"

typedef struct pgw_audit {
    pgw_worker_t *w;
    pgw_tracker_t tracker;
    char id[37];                    /* session.id: a UUIDv7 */
    uint64_t seq;
    int seq1_reserved;              /* seq 1 kept for the first event (audit.c) */
    int64_t start_us;
    char client_ip[64];
    uint16_t client_port;
    const char *client_socket;      /* the listener's path for unix clients */
    char user[64], database[64], application[64];
    int32_t backend_pid;
    char server_version[32];
    const char *auth_method;
    int authenticated;              /* AuthenticationOk seen */
    int started;                    /* session_start emitted */
    int ended;
    uint32_t text_max;              /* statement text cut at this many bytes */
    uint64_t bytes_in, bytes_out;
    unsigned jobs;                  /* statements being parsed off the loop */
    int end_deferred;               /* ended while jobs were out */
    /* Statements parsed off the loop and those that completed after them:
     * their events go out in this order (audit.c) */
    struct parse_job *waiting, **waiting_tail;
    int64_t end_us;
    pgw_end_reason_t end_reason;
    /* The identity part of every event (observer, client, server, user),
     * encoded once and copied into each event until it changes. */
    pgw_jbuf_t ident_json;
    /* With a durable sink: the heads of the begin records still waiting
     * for their completion, oldest first, from heads_off (audit.c): a
     * completion copies its begin's head instead of encoding it again. */
    pgw_jbuf_t heads;
    size_t heads_off;
    int ident_valid;
    int ident_cached;               /* 0 for a copy that must not keep one */
    /* The client leg's TLS (malloc'd, owned), and its certificate as events
     * carry it (pointing into tls). */
    pgw_tls_info_t *tls;
    pgw_event_cert_t cert;
    pgw_str_t san[PGW_TLS_MAX_SAN];
    /* The analysis of the Query being fed to the tracker, made already by
     * the access policy's gate (borrowed for that call; the split may move
     * it into the Query's memo), or NULL. */
    pgw_analysis_t *given;
    /* The session's SQL-level prepared statements (PREPARE name AS ...)
     * and cursors (DECLARE name CURSOR FOR ...), so that an EXECUTE's or a
     * FETCH's event names what it reads and writes; NULL until the first.
     * Shared with the copies that parse jobs take. */
    struct pgw_named_map *prepared, *cursors;
    struct pgw_audit *owner;        /* in a parse job's copy: the session's own */
} pgw_audit_t;

/* After accept: the client's address and the listener. */
void pgw_audit_init(pgw_audit_t *a, pgw_worker_t *w, const struct sockaddr *peer,
                    const pgw_endpoint_t *listener);
void pgw_audit_startup(pgw_audit_t *a, const pgw_startup_t *st);
/* The client leg's handshake completed: every later event carries it
 * (copied). */
void pgw_audit_tls(pgw_audit_t *a, const pgw_tls_info_t *info);
/* Every message, in each direction, before it is forwarded. */
void pgw_audit_frontend(pgw_audit_t *a, const pgw_msg_t *m, int64_t now_us);
void pgw_audit_backend(pgw_audit_t *a, const pgw_msg_t *m, int64_t now_us);
/* The access policy refused (enforced) or would have refused (a dry-run
 * rule) a connection (an NULL, protocol PGW_PROTOCOL_ABSENT), a
 * FunctionCall (an NULL, PGW_PROTOCOL_FUNCTION_CALL, call_text from
 * pgw_fcall_describe or NULL) or statement idx of analysis an: a `denied`
 * event naming the rule. An enforced connection refusal is the session's
 * last event. */
void pgw_audit_denied(pgw_audit_t *a, const char *rule, int enforced, const char *sqlstate,
                      const char *message, const pgw_analysis_t *an, uint32_t idx,
                      pgw_stmt_protocol_t protocol, const char *stmt_name, const char *call_text);
/* pgwarden itself refused the session before it started. */
void pgw_audit_refused(pgw_audit_t *a, const char *sqlstate, const char *message);
/* The session is over: pending statements are reported (status unknown)
 * and session_end is emitted, after the events of statements still being
 * parsed off the loop. Frees a (malloc'ed by the caller), now or when the
 * last of those parses is done. */
void pgw_audit_end(pgw_audit_t *a, pgw_end_reason_t reason);

#endif
