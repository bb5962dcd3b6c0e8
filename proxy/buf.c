#include "buf.h"

#include <stdlib.h>

pgw_buf_t *pgw_buf_get(pgw_buf_pool_t *pool)
{
    pgw_buf_t *b = pool->free;
    if (b) {
        pool->free = b->next_free;
        pool->nfree--;
    } else {
        b = malloc(sizeof *b + PGW_BUF_SIZE);
        if (!b)
            return NULL;
        b->cap = PGW_BUF_SIZE;
        pool->allocated++;
    }
    b->refs = 1;
    b->next_free = NULL;
    return b;
}

void pgw_buf_release(pgw_buf_pool_t *pool, pgw_buf_t *b)
{
    if (--b->refs)
        return;
    if (pool->nfree < PGW_BUF_POOL_MAX) {
        b->next_free = pool->free;
        pool->free = b;
        pool->nfree++;
    } else {
        free(b);
    }
}

void pgw_buf_pool_destroy(pgw_buf_pool_t *pool)
{
    while (pool->free) {
        pgw_buf_t *b = pool->free;
        pool->free = b->next_free;
        free(b);
    }
    pool->nfree = 0;
}
