#include "transport.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PGW_WREQ_POOL_MAX 1024

typedef struct pgw_wreq {
    uv_write_t req;
    pgw_leg_t *leg;
    pgw_buf_t *buf;                 /* a reference, or NULL */
    void *owned;                    /* malloc'd memory, or NULL */
    struct pgw_wreq *next_free;
} pgw_wreq_t;

void pgw_leg_init(pgw_leg_t *leg, pgw_worker_t *w, void *owner, const pgw_leg_ops_t *ops)
{
    memset(leg, 0, sizeof *leg);
    leg->w = w;
    leg->owner = owner;
    leg->ops = ops;
    leg->u.handle.data = leg;
}

static int leg_open(pgw_leg_t *leg, uv_loop_t *loop, int is_unix)
{
    int rc = is_unix ? uv_pipe_init(loop, &leg->u.pipe, 0) : uv_tcp_init(loop, &leg->u.tcp);
    if (rc)
        return rc;
    leg->u.handle.data = leg;
    leg->open = 1;
    leg->is_unix = (unsigned)is_unix;
    return 0;
}

int pgw_leg_accept(pgw_leg_t *leg, pgw_listener_t *l)
{
    int rc = leg_open(leg, &l->w->loop, l->ep->is_unix);
    if (rc)
        return rc;
    rc = uv_accept(&l->u.stream, &leg->u.stream);
    if (rc == 0 && !leg->is_unix)
        uv_tcp_nodelay(&leg->u.tcp, 1);
    return rc;
}

int pgw_leg_connect(pgw_leg_t *leg, uv_loop_t *loop, const pgw_endpoint_t *ep,
                    uv_connect_t *req, uv_connect_cb cb)
{
    int rc = leg_open(leg, loop, ep->is_unix);
    if (rc)
        return rc;
    if (ep->is_unix) {
        uv_pipe_connect(req, &leg->u.pipe, ep->path, cb);   /* reports through cb */
        return 0;
    }
    return uv_tcp_connect(req, &leg->u.tcp, (const struct sockaddr *)&ep->sa, cb);
}

void pgw_leg_connected(pgw_leg_t *leg)
{
    if (!leg->is_unix)
        uv_tcp_nodelay(&leg->u.tcp, 1);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    pgw_leg_t *leg = h->data;
    pgw_buf_t *b = pgw_buf_get(&leg->w->pool);
    if (!b) {
        *out = uv_buf_init(NULL, 0);   /* libuv reports UV_ENOBUFS */
        return;
    }
    *out = uv_buf_init((char *)b->data, b->cap);
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *ub)
{
    pgw_leg_t *leg = st->data;
    pgw_buf_t *b = ub->base ? pgw_buf_of(ub->base) : NULL;
    if (n > 0) {
        if (leg->ssl)
            pgw_leg__tls_input(leg, b->data, (size_t)n);
        else
            leg->ops->on_data(leg, b, (size_t)n);
    } else if (n < 0) {
        pgw_leg_read_stop(leg);
        leg->ops->on_eof(leg, (int)n);
    }
    if (b)
        pgw_buf_release(&leg->w->pool, b);
}

void pgw_leg_read_start(pgw_leg_t *leg)
{
    if (!leg->open || leg->reading || leg->paused || uv_is_closing(&leg->u.handle))
        return;
    if (uv_read_start(&leg->u.stream, on_alloc, on_read) == 0)
        leg->reading = 1;
    if (leg->ssl)
        pgw_leg__tls_pump(leg);     /* what arrived while paused */
}

void pgw_leg_read_stop(pgw_leg_t *leg)
{
    if (!leg->open || !leg->reading)
        return;
    uv_read_stop(&leg->u.stream);
    leg->reading = 0;
}

static pgw_wreq_t *wreq_get(pgw_worker_t *w)
{
    pgw_wreq_t *r = w->free_wreqs;
    if (r) {
        w->free_wreqs = r->next_free;
        w->nfree_wreqs--;
        return r;
    }
    return malloc(sizeof *r);
}

static void wreq_put(pgw_worker_t *w, pgw_wreq_t *r)
{
    if (w->nfree_wreqs < PGW_WREQ_POOL_MAX) {
        r->next_free = w->free_wreqs;
        w->free_wreqs = r;
        w->nfree_wreqs++;
    } else {
        free(r);
    }
}

void pgw_worker_free_wreqs(pgw_worker_t *w)
{
    while (w->free_wreqs) {
        pgw_wreq_t *r = w->free_wreqs;
        w->free_wreqs = r->next_free;
        free(r);
    }
    w->nfree_wreqs = 0;
}

static void on_write(uv_write_t *req, int status)
{
    pgw_wreq_t *r = (pgw_wreq_t *)req;
    pgw_leg_t *leg = r->leg;
    pgw_worker_t *w = leg->w;
    if (r->buf)
        pgw_buf_release(&w->pool, r->buf);
    free(r->owned);
    wreq_put(w, r);
    leg->inflight--;
    if (status < 0 && status != UV_ECANCELED && !uv_is_closing(&leg->u.handle)) {
        pgw_leg_read_stop(leg);
        leg->ops->on_eof(leg, status);
    }
    leg->ops->on_drained(leg);
}

static int leg_write(pgw_leg_t *leg, pgw_buf_t *b, void *owned, const void *p, size_t n)
{
    pgw_wreq_t *r = NULL;
    if (!leg->open || uv_is_closing(&leg->u.handle)) {
        free(owned);
        return UV_ENOMEM;
    }
    /* Nothing queued: write now. A complete write needs no request, no
     * callback, and leaves the socket's poll registration alone (a queued
     * write costs an epoll_ctl when it completes). What the socket does not
     * take now is queued below; an error is left to uv_write to report. */
    if (leg->u.stream.write_queue_size == 0) {
        uv_buf_t now = uv_buf_init((char *)(uintptr_t)p, (unsigned)n);
        int done = uv_try_write(&leg->u.stream, &now, 1);
        if (done == (int)n) {
            free(owned);
            return 0;
        }
        if (done > 0) {
            p = (const uint8_t *)p + done;
            n -= (size_t)done;
        }
    }
    if (!(r = wreq_get(leg->w))) {
        free(owned);
        return UV_ENOMEM;
    }
    r->leg = leg;
    r->buf = b ? pgw_buf_ref(b) : NULL;
    r->owned = owned;
    uv_buf_t ub = uv_buf_init((char *)(uintptr_t)p, (unsigned)n);
    int rc = uv_write(&r->req, &leg->u.stream, &ub, 1, on_write);
    if (rc) {
        if (b)
            pgw_buf_release(&leg->w->pool, b);
        free(owned);
        wreq_put(leg->w, r);
        return rc;
    }
    leg->inflight++;
    return 0;
}

int pgw_leg_write(pgw_leg_t *leg, pgw_buf_t *b, const uint8_t *p, size_t n)
{
    if (leg->ssl)
        return pgw_leg__tls_write(leg, p, n);
    return leg_write(leg, b, NULL, p, n);
}

int pgw_leg_write_owned(pgw_leg_t *leg, void *p, size_t n)
{
    if (leg->ssl) {
        int rc = pgw_leg__tls_write(leg, p, n);
        free(p);
        return rc;
    }
    return leg_write(leg, NULL, p, p, n);
}

int pgw_leg__write_raw(pgw_leg_t *leg, pgw_buf_t *b, const uint8_t *p, size_t n)
{
    return leg_write(leg, b, NULL, p, n);
}

size_t pgw_leg_backlog(const pgw_leg_t *leg)
{
    return leg->open ? leg->u.stream.write_queue_size : 0;
}

int pgw_leg_idle(const pgw_leg_t *leg)
{
    return !leg->open || leg->inflight == 0;
}

static void on_close(uv_handle_t *h)
{
    pgw_leg_t *leg = h->data;
    leg->open = 0;
    leg->reading = 0;
    if (leg->ssl)
        pgw_leg__tls_free(leg);
    leg->ops->on_closed(leg);
}

void pgw_leg_close(pgw_leg_t *leg)
{
    if (!leg->open || uv_is_closing(&leg->u.handle))
        return;
    if (leg->ssl)
        pgw_leg__tls_shutdown(leg);
    uv_close(&leg->u.handle, on_close);
}

const struct sockaddr *pgw_leg_peer_addr(pgw_leg_t *leg, struct sockaddr_storage *ss)
{
    int len = sizeof *ss;
    if (leg->is_unix || uv_tcp_getpeername(&leg->u.tcp, (struct sockaddr *)ss, &len))
        return NULL;
    return (const struct sockaddr *)ss;
}

void pgw_leg_peer_name(pgw_leg_t *leg, char *out, size_t cap)
{
    if (leg->is_unix) {
        snprintf(out, cap, "local");
        return;
    }
    struct sockaddr_storage ss;
    int len = sizeof ss;
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (uv_tcp_getpeername(&leg->u.tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET6) {
            const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
            uv_ip6_name(a, ip, sizeof ip);
            port = ntohs(a->sin6_port);
        } else {
            const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
            uv_ip4_name(a, ip, sizeof ip);
            port = ntohs(a->sin_port);
        }
    }
    snprintf(out, cap, ss.ss_family == AF_INET6 ? "[%s]:%d" : "%s:%d", ip, port);
}
