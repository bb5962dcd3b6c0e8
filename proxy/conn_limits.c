/* Connection limits: a count in total and a count per client address. See
 * conn_limits.h. */
#include "conn_limits.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NBUCKETS 4096

typedef struct addr_count {
    struct addr_count *next;
    unsigned count;
    char addr[];
} addr_count_t;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned max_total, max_per_address, active;
static addr_count_t *buckets[NBUCKETS];

void pgw_limits_init(unsigned total, unsigned per_address)
{
    max_total = total;
    max_per_address = per_address;
}

static uint32_t hash(const char *s)
{
    uint32_t h = 2166136261u;          /* FNV-1a: addresses are short */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static addr_count_t **slot(const char *addr)
{
    addr_count_t **p = &buckets[hash(addr) % NBUCKETS];
    while (*p && strcmp((*p)->addr, addr) != 0)
        p = &(*p)->next;
    return p;
}

pgw_admit_t pgw_limits_admit(const char *addr)
{
    int per = addr && *addr && max_per_address;
    pgw_admit_t rc = PGW_ADMIT_OK;

    pthread_mutex_lock(&mu);
    if (max_total && active >= max_total) {
        rc = PGW_ADMIT_TOTAL;
    } else if (per) {
        addr_count_t **p = slot(addr);
        if (*p && (*p)->count >= max_per_address) {
            rc = PGW_ADMIT_ADDRESS;
        } else if (*p) {
            (*p)->count++;
        } else {
            size_t n = strlen(addr) + 1;
            addr_count_t *e = malloc(sizeof *e + n);
            if (e) {                   /* out of memory: admitted, uncounted by address */
                e->next = NULL;
                e->count = 1;
                memcpy(e->addr, addr, n);
                *p = e;
            }
        }
    }
    if (rc == PGW_ADMIT_OK)
        active++;
    pthread_mutex_unlock(&mu);
    return rc;
}

void pgw_limits_release(const char *addr)
{
    pthread_mutex_lock(&mu);
    if (active)
        active--;
    if (addr && *addr && max_per_address) {
        addr_count_t **p = slot(addr);
        if (*p && --(*p)->count == 0) {
            addr_count_t *e = *p;
            *p = e->next;
            free(e);
        }
    }
    pthread_mutex_unlock(&mu);
}

unsigned pgw_limits_active(void)
{
    pthread_mutex_lock(&mu);
    unsigned n = active;
    pthread_mutex_unlock(&mu);
    return n;
}
