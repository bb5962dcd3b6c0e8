/* Reference-counted read buffers for zero-copy forwarding.
 *
 * A buffer is filled by one read on one socket and written, as is, to the
 * other socket: the read holds one reference, each write in flight holds one,
 * and the last release returns it to its worker's free list. Buffers and the
 * pool belong to one loop thread and are never touched by another. */
#ifndef PGW_BUF_H
#define PGW_BUF_H

#include <stddef.h>
#include <stdint.h>

#define PGW_BUF_SIZE (64 * 1024)   /* one read; large results stream in these */
#define PGW_BUF_POOL_MAX 256       /* free buffers kept per thread */

typedef struct pgw_buf {
    struct pgw_buf *next_free;
    uint32_t refs;
    uint32_t cap;
    uint8_t data[];
} pgw_buf_t;

typedef struct pgw_buf_pool {
    pgw_buf_t *free;
    unsigned nfree;
    uint64_t allocated;            /* buffers obtained from malloc, for diagnostics */
} pgw_buf_pool_t;

/* A buffer with one reference, or NULL when memory is exhausted. */
pgw_buf_t *pgw_buf_get(pgw_buf_pool_t *pool);
static inline pgw_buf_t *pgw_buf_ref(pgw_buf_t *b) { b->refs++; return b; }
void pgw_buf_release(pgw_buf_pool_t *pool, pgw_buf_t *b);
/* The buffer whose data starts at p (as handed to libuv). */
static inline pgw_buf_t *pgw_buf_of(void *p)
{
    return (pgw_buf_t *)(void *)((char *)p - offsetof(pgw_buf_t, data));
}
void pgw_buf_pool_destroy(pgw_buf_pool_t *pool);

#endif
