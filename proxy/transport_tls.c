/* The TLS half of transport.h: OpenSSL over memory BIOs, driven by the
 * leg's libuv reads and by the session's writes. Nothing here blocks: the
 * read BIO holds what the socket delivered and OpenSSL has not consumed,
 * the write BIO what OpenSSL produced, drained into socket writes at once. */
#include <arpa/inet.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "tls.h"
#include "transport.h"

static BIO *rbio_of(pgw_leg_t *leg) { return SSL_get_rbio(leg->ssl); }
static BIO *wbio_of(pgw_leg_t *leg) { return SSL_get_wbio(leg->ssl); }

/* Hands everything OpenSSL wrote to the socket, in pool buffers. */
static int flush(pgw_leg_t *leg)
{
    BIO *w = wbio_of(leg);
    while (BIO_ctrl_pending(w) > 0) {
        pgw_buf_t *b = pgw_buf_get(&leg->w->pool);
        if (!b)
            return UV_ENOMEM;
        int k = BIO_read(w, b->data, (int)b->cap);
        int rc = k > 0 ? pgw_leg__write_raw(leg, b, b->data, (size_t)k) : 0;
        pgw_buf_release(&leg->w->pool, b);
        if (rc)
            return rc;
    }
    return 0;
}

static void fail(pgw_leg_t *leg, int status)
{
    if (!leg->tls_errcode)
        leg->tls_errcode = ERR_peek_last_error();
    ERR_clear_error();
    pgw_leg_read_stop(leg);
    leg->ops->on_eof(leg, status);
}

static int usable(pgw_leg_t *leg)
{
    return leg->open && !uv_is_closing(&leg->u.handle);
}

void pgw_leg__tls_pump(pgw_leg_t *leg)
{
    if (leg->tls_pumping || !usable(leg))
        return;
    leg->tls_pumping = 1;
    ERR_clear_error();              /* SSL_get_error reads this thread's queue */
    if (!leg->tls_ready) {
        int r = SSL_do_handshake(leg->ssl);
        int e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(leg->ssl, r);
        /* Our flight, or the alert that explains a failure. */
        int wrc = flush(leg);
        if (e == SSL_ERROR_WANT_READ && wrc == 0) {
            leg->tls_pumping = 0;
            return;
        }
        if (e != SSL_ERROR_NONE || wrc) {
            fail(leg, wrc && e == SSL_ERROR_NONE ? wrc : UV_EPROTO);
            leg->tls_pumping = 0;
            return;
        }
        leg->tls_ready = 1;
        leg->ops->on_secure(leg);
    }
    /* Records are decrypted into one pool buffer until it is full or the
     * read BIO is empty, so a large result is forwarded in few writes. */
    while (leg->tls_ready && leg->reading && usable(leg)) {
        pgw_buf_t *b = pgw_buf_get(&leg->w->pool);
        if (!b) {
            fail(leg, UV_ENOMEM);
            break;
        }
        size_t got = 0, k = 0;
        int e = SSL_ERROR_NONE;
        while (got < b->cap) {
            if (SSL_read_ex(leg->ssl, b->data + got, b->cap - got, &k) != 1) {
                e = SSL_get_error(leg->ssl, 0);
                break;
            }
            got += k;
        }
        if (got)
            leg->ops->on_data(leg, b, got);
        pgw_buf_release(&leg->w->pool, b);
        if (e == SSL_ERROR_NONE)
            continue;
        if (e == SSL_ERROR_WANT_READ)
            break;
        if (!usable(leg) || !leg->reading)
            break;                  /* the error waits in the SSL for the next read_start */
        if (e == SSL_ERROR_ZERO_RETURN) {    /* close_notify: the peer's clean end */
            pgw_leg_read_stop(leg);
            leg->ops->on_eof(leg, UV_EOF);
        } else {
            fail(leg, UV_EPROTO);
        }
        break;
    }
    /* Post-handshake messages (TLS 1.3 tickets, key updates) and alerts. */
    if (usable(leg) && flush(leg))
        fail(leg, UV_EPIPE);
    leg->tls_pumping = 0;
}

void pgw_leg__tls_input(pgw_leg_t *leg, const uint8_t *p, size_t n)
{
    if (BIO_write(rbio_of(leg), p, (int)n) != (int)n) {
        fail(leg, UV_ENOMEM);
        return;
    }
    pgw_leg__tls_pump(leg);
}

int pgw_leg__tls_write(pgw_leg_t *leg, const uint8_t *p, size_t n)
{
    if (!leg->tls_ready || !usable(leg))
        return UV_ENOTCONN;
    ERR_clear_error();
    while (n > 0) {
        int k = SSL_write(leg->ssl, p, n > INT_MAX ? INT_MAX : (int)n);
        if (k <= 0) {
            leg->tls_errcode = ERR_peek_last_error();
            ERR_clear_error();
            return UV_EPROTO;
        }
        p += k;
        n -= (size_t)k;
    }
    return flush(leg);
}

int pgw_leg_start_tls(pgw_leg_t *leg, SSL_CTX *ctx, int accept, const char *verify_host,
                      const uint8_t *initial, size_t n)
{
    SSL *ssl = SSL_new(ctx);
    BIO *r = BIO_new(BIO_s_mem()), *w = BIO_new(BIO_s_mem());
    if (!ssl || !r || !w) {
        SSL_free(ssl);
        BIO_free(r);
        BIO_free(w);
        return UV_ENOMEM;
    }
    /* An empty read BIO means "wait for the socket", not end of stream. */
    BIO_set_mem_eof_return(r, -1);
    BIO_set_mem_eof_return(w, -1);
    SSL_set_bio(ssl, r, w);
    if (accept) {
        SSL_set_accept_state(ssl);
    } else {
        SSL_set_connect_state(ssl);
        if (verify_host && *verify_host) {
            unsigned char ip[16];
            /* OpenSSL's SNI macro casts the name's const away; a copy keeps it. */
            char sni[256];
            if (snprintf(sni, sizeof sni, "%s", verify_host) >= (int)sizeof sni) {
                SSL_free(ssl);
                return UV_EINVAL;
            }
            int is_ip = inet_pton(AF_INET, verify_host, ip) == 1 || inet_pton(AF_INET6, verify_host, ip) == 1;
            int ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), verify_host)
                           : SSL_set1_host(ssl, verify_host) && SSL_set_tlsext_host_name(ssl, sni);
            if (!ok) {
                SSL_free(ssl);
                return UV_EINVAL;
            }
        }
    }
    leg->ssl = ssl;
    if (n && BIO_write(r, initial, (int)n) != (int)n)
        return UV_ENOMEM;
    pgw_leg__tls_pump(leg);
    return 0;
}

void pgw_leg__tls_shutdown(pgw_leg_t *leg)
{
    /* close_notify, if the socket takes it now; the handle closes anyway. */
    if (!leg->tls_ready || leg->u.stream.write_queue_size)
        return;
    if (SSL_shutdown(leg->ssl) >= 0) {
        BIO *w = wbio_of(leg);
        uint8_t tmp[256];
        int k = BIO_read(w, tmp, sizeof tmp);
        if (k > 0) {
            uv_buf_t ub = uv_buf_init((char *)tmp, (unsigned)k);
            (void)uv_try_write(&leg->u.stream, &ub, 1);
        }
    }
    ERR_clear_error();
}

void pgw_leg__tls_free(pgw_leg_t *leg)
{
    SSL_free(leg->ssl);             /* frees both BIOs */
    leg->ssl = NULL;
    leg->tls_ready = 0;
}

void pgw_leg_tls_error(pgw_leg_t *leg, char *out, size_t cap)
{
    pgw_tls_describe_error(leg->ssl, leg->tls_errcode, out, cap);
}
