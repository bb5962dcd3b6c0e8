/* One connection end ("leg") of a session, over TCP or a unix socket: the
 * one interface the session code uses to read, write and close, whatever
 * carries the bytes: plain, or TLS once pgw_leg_start_tls() was called.
 *
 * Ownership: reads land in pool buffers; the buffer is lent to on_data for
 * the call only (take a reference to keep it). pgw_leg_write() writes at
 * once what the socket takes when nothing is queued before it (no reference
 * kept, no callback: check pgw_leg_idle); the rest is queued with a
 * reference of its own, dropped when that write completes, then on_drained
 * is called.
 * The handle's memory is the leg itself, embedded in its owner, which must
 * live until on_closed.
 *
 * TLS (transport_tls.c): an OpenSSL SSL object over two memory BIOs, on the
 * loop thread. Socket reads are fed into the read BIO and decrypted into
 * pool buffers handed to on_data, only while the leg is reading (what a
 * paused leg already received waits, decrypted or not, until read_start).
 * pgw_leg_write() encrypts at once (SSL_write into the write BIO copies the
 * plaintext: no reference to b is kept) and the ciphertext goes out as a
 * plain write does: at once if nothing is queued, the rest queued, then
 * on_drained. Handshake failures and bad records come as on_eof(UV_EPROTO),
 * with pgw_leg_tls_error() saying why. */
#ifndef PGW_TRANSPORT_H
#define PGW_TRANSPORT_H

#include <stddef.h>
#include <uv.h>

#include "buf.h"
#include "worker.h"

typedef struct pgw_leg pgw_leg_t;
struct ssl_st;
struct ssl_ctx_st;

typedef struct pgw_leg_ops {
    void (*on_data)(pgw_leg_t *leg, pgw_buf_t *b, size_t n);
    void (*on_eof)(pgw_leg_t *leg, int status);    /* UV_EOF or an error; reading stopped */
    void (*on_drained)(pgw_leg_t *leg);            /* a queued write to this leg completed */
    void (*on_closed)(pgw_leg_t *leg);             /* the handle is closed; last callback */
    void (*on_secure)(pgw_leg_t *leg);             /* the TLS handshake completed */
} pgw_leg_ops_t;

struct pgw_leg {
    union { uv_handle_t handle; uv_stream_t stream; uv_tcp_t tcp; uv_pipe_t pipe; } u;
    pgw_worker_t *w;
    void *owner;
    const pgw_leg_ops_t *ops;
    unsigned inflight;              /* queued writes not yet completed */
    unsigned open : 1;              /* handle initialised and not yet closed */
    unsigned reading : 1;
    unsigned paused : 1;            /* reading held back by backpressure */
    unsigned is_unix : 1;
    unsigned tls_ready : 1;         /* handshake completed */
    unsigned tls_pumping : 1;       /* inside the decrypt loop (re-entry guard) */
    struct ssl_st *ssl;             /* NULL: plaintext */
    unsigned long tls_errcode;      /* OpenSSL's error at a failure, for pgw_leg_tls_error */
};

void pgw_leg_init(pgw_leg_t *leg, pgw_worker_t *w, void *owner, const pgw_leg_ops_t *ops);
int pgw_leg_accept(pgw_leg_t *leg, pgw_listener_t *l);
int pgw_leg_connect(pgw_leg_t *leg, uv_loop_t *loop, const pgw_endpoint_t *ep,
                    uv_connect_t *req, uv_connect_cb cb);
void pgw_leg_connected(pgw_leg_t *leg);
void pgw_leg_read_start(pgw_leg_t *leg);
void pgw_leg_read_stop(pgw_leg_t *leg);
/* Queues n bytes at p, which lie inside b (a reference is taken). */
int pgw_leg_write(pgw_leg_t *leg, pgw_buf_t *b, const uint8_t *p, size_t n)
    __attribute__((warn_unused_result));
/* Queues malloc'd memory, freed when written (also on failure). */
int pgw_leg_write_owned(pgw_leg_t *leg, void *p, size_t n) __attribute__((warn_unused_result));
/* Bytes queued and not yet handed to the kernel. */
size_t pgw_leg_backlog(const pgw_leg_t *leg);
/* No write in flight (or not open). */
int pgw_leg_idle(const pgw_leg_t *leg);
void pgw_leg_close(pgw_leg_t *leg);
void pgw_leg_peer_name(pgw_leg_t *leg, char *out, size_t cap);
/* The TCP peer's address in ss, or NULL (unix socket, or unknown). */
const struct sockaddr *pgw_leg_peer_addr(pgw_leg_t *leg, struct sockaddr_storage *ss);

/* Switches the leg to TLS: accept (the client leg) or connect (the server
 * leg, verify_host checked against the certificate unless NULL, and sent as
 * SNI when a name). initial holds n bytes already read that belong to the
 * handshake (a direct-TLS ClientHello). The handshake runs as bytes arrive;
 * on_secure or on_eof(UV_EPROTO) follows, possibly from this call (last in
 * the caller, then). Returns 0 or a negative error. */
int pgw_leg_start_tls(pgw_leg_t *leg, struct ssl_ctx_st *ctx, int accept, const char *verify_host,
                      const uint8_t *initial, size_t n) __attribute__((warn_unused_result));
/* Why TLS failed on this leg (after on_eof(UV_EPROTO)). */
void pgw_leg_tls_error(pgw_leg_t *leg, char *out, size_t cap);

/* For transport_tls.c only. */
int pgw_leg__write_raw(pgw_leg_t *leg, pgw_buf_t *b, const uint8_t *p, size_t n);
int pgw_leg__tls_write(pgw_leg_t *leg, const uint8_t *p, size_t n);
void pgw_leg__tls_input(pgw_leg_t *leg, const uint8_t *p, size_t n);
void pgw_leg__tls_pump(pgw_leg_t *leg);
void pgw_leg__tls_shutdown(pgw_leg_t *leg);
void pgw_leg__tls_free(pgw_leg_t *leg);

#endif
