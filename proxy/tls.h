/* TLS contexts: the client leg's (pgwarden as the server clients connect
 * to), the server leg's (pgwarden as a client of PostgreSQL), the identity
 * map, and their rotation on SIGHUP.
 *
 * A pgw_tls_ctx_t is built from the files named by pgw_tls_config_t and is
 * never changed afterwards: it is shared by every loop thread, reference
 * counted, and freed with its last reference. pgw_tls_t holds the current
 * one; a reload builds a complete new one and swaps it in only if every
 * file loaded, so a bad file leaves the old certificates in service.
 * Sessions take a reference when they are accepted and keep the context
 * they started with for their whole life. */
#ifndef PGW_TLS_H
#define PGW_TLS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <openssl/ssl.h>
#include <uv.h>

#include "config.h"
#include "ident.h"

#define PGW_TLS_ALPN "postgresql"

typedef struct pgw_tls_ctx {
    atomic_int refs;
    SSL_CTX *accept;                /* client leg; NULL without --tls-cert */
    SSL_CTX *connect;               /* server leg; NULL with --upstream-sslmode disable */
    pgw_ident_map_t *map;           /* NULL without --tls-ident-map */
    int64_t cert_not_after;         /* --tls-cert's expiry (s since the epoch), 0: none */
    int64_t upstream_cert_not_after;/* --upstream-cert's, 0: none */
} pgw_tls_ctx_t;

typedef struct pgw_tls {
    const pgw_tls_config_t *cfg;
    uv_mutex_t lock;                /* guards cur: taken by loop threads at accept */
    pgw_tls_ctx_t *cur;
} pgw_tls_t;

/* Loads every configured file. Returns 0, or -1 with the reason in err. */
int pgw_tls_init(pgw_tls_t *t, const pgw_tls_config_t *cfg, char *err, size_t errcap)
    __attribute__((warn_unused_result));
/* SIGHUP: a new context from the same paths. On failure (-1, reason in err)
 * the current one stays. */
int pgw_tls_reload(pgw_tls_t *t, char *err, size_t errcap) __attribute__((warn_unused_result));
void pgw_tls_destroy(pgw_tls_t *t);

/* A reference to the current context (release it), or NULL when TLS is
 * configured on neither leg. Any thread. */
pgw_tls_ctx_t *pgw_tls_acquire(pgw_tls_t *t);
void pgw_tls_release(pgw_tls_ctx_t *c);

/* Seconds until each configured certificate expires (negative: expired),
 * for the metrics endpoint: [0] --tls-cert, [1] --upstream-cert; INT64_MIN
 * where none is configured. */
void pgw_tls_seconds_left(pgw_tls_t *t, int64_t now, int64_t out[2]);

/* What a finished handshake tells about the client leg. */
#define PGW_TLS_MAX_SAN 16
typedef struct pgw_tls_info {
    char version[16];
    char cipher[64];
    int has_cert;                   /* a verified client certificate */
    char subject[512], issuer[512], cn[256];
    char serial[96];                /* hex */
    char sha256[65];
    int64_t not_before, not_after;
    unsigned nsan;
    char san[PGW_TLS_MAX_SAN][256]; /* "DNS:name", "IP:addr", "email:..", "URI:.." */
} pgw_tls_info_t;

/* Fills info from an established connection. */
void pgw_tls_get_info(SSL *ssl, pgw_tls_info_t *info);

/* Why the handshake of ssl failed, for logs and clients: the certificate
 * verification error if there is one, else OpenSSL's error (errcode from
 * ERR_get_error at the failure). */
void pgw_tls_describe_error(SSL *ssl, unsigned long errcode, char *out, size_t cap);

#endif
