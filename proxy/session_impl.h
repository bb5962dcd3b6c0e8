/* The session's insides, shared by session.c (a connection's life and its
 * forwarding) and gate.c (the access policy's gate on client bytes).
 * Nothing outside these two files includes this header. */
#ifndef PGW_SESSION_IMPL_H
#define PGW_SESSION_IMPL_H

#include <stdint.h>
#include <stdio.h>

#include "audit.h"
#include "log.h"
#include "pgwarden/protocol.h"
#include "policy.h"
#include "tls.h"
#include "transport.h"
#include "worker.h"

enum session_state { S_STARTUP, S_CONNECTING, S_UPSTREAM_TLS, S_FORWARDING, S_FINISHING, S_CLOSED };
#define PGW_TLS_HANDSHAKE_BYTE 0x16  /* a TLS record of type handshake: direct TLS */

typedef struct pgw_session pgw_session_t;
typedef struct pgw_gate pgw_gate_t;

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

    /* A server message rewritten (the SASL offer without
     * SCRAM-SHA-256-PLUS, a refusal's error without its PL/pgSQL context),
     * sent in place of the original bytes at rw_off in the read being
     * framed (cur_buf). */
    const pgw_buf_t *cur_buf;
    size_t cur_len;
    uint8_t *rw_msg;
    size_t rw_msg_len, rw_off, rw_len;
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
    pgw_gate_t *gate;
} pgw_session_t;

#define slog(level, s, fmt, ...)                                                              \
    do {                                                                                      \
        if (pgw_log_enabled(level)) {                                                         \
            char conn_[48];                                                                   \
            snprintf(conn_, sizeof conn_, "%d-%llu", (s)->w->index, (unsigned long long)(s)->id); \
            pgw_log_write_conn((level), conn_, (s)->peer, (s)->user, fmt, ##__VA_ARGS__);     \
        }                                                                                     \
    } while (0)

/* ---- session.c, for the gate --------------------------------------------- */

/* A FATAL ErrorResponse to the client, then the session ends once it is
 * delivered; the message is also the log line. */
void pgw_session_fatal(pgw_session_t *s, const char *sqlstate, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Closes both connections at once, without a word to the client. */
void pgw_session_close(pgw_session_t *s, const char *reason);

/* Sends n client bytes of b to the server: at once, or after this loop
 * iteration's spool write when they carry statements admitted since
 * w->admitted was `admitted` (durable sinks). b stays the caller's. */
void pgw_session_pass(pgw_session_t *s, pgw_buf_t *b, size_t n, unsigned admitted);

/* While the server's read is framed: message m goes to the client as out
 * (n bytes, malloc'd, taken) instead. Returns -1 (out freed) when m is not
 * all in that read or a message of it was replaced already. */
int pgw_session_replace_server_msg(pgw_session_t *s, const pgw_msg_t *m, uint8_t *out, size_t n);

/* ---- gate.c, for the session --------------------------------------------- */

/* The connection rules, after the StartupMessage and the TLS identity
 * checks; opens the gate when statement rules apply. Returns 0 to go on
 * (else the client was refused or the session closed). */
int pgw_gate_connect(pgw_session_t *s);

/* A reload published new rules: the next statements follow them. Returns
 * -1 when the session was closed. */
int pgw_gate_refresh(pgw_session_t *s);

/* Client bytes of a session behind the gate (s->gate set). b is the read
 * buffer holding them at p (the gate references it when it can pass the
 * bytes unchanged, else copies them). */
void pgw_gate_input(pgw_session_t *s, pgw_buf_t *b, const uint8_t *p, size_t n);

/* The server is connected: messages that waited at the gate go on. */
void pgw_gate_resume(pgw_session_t *s);

/* A server ErrorResponse m in a session with statement rules: a refusal's
 * error goes to the client without the PL/pgSQL context the statement run
 * in its place added. */
void pgw_gate_server_error(pgw_session_t *s, const pgw_msg_t *m);

/* Frees the gate and the session's policy references. */
void pgw_gate_release(pgw_session_t *s);

#endif
