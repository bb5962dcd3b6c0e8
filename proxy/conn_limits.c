/* Connection limits: a count in total and a count per client address. See
 * conn_limits.h. */
#include "conn_limits.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

#define NBUCKETS 4096

typedef struct addr_count {
    struct addr_count *next;
    unsigned count;
    char addr[];
} addr_count_t;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned max_total, max_per_address, active;
static addr_count_t *buckets[NBUCKETS];

static _Atomic uint64_t startup_ms, idle_ms;
static _Atomic size_t max_pending;
static _Atomic uint32_t param_max, statement_max;

void pgw_limits_configure(const pgw_config_t *cfg)
{
    pthread_mutex_lock(&mu);
    max_total = cfg->max_clients;
    max_per_address = cfg->max_per_address;
    pthread_mutex_unlock(&mu);
    atomic_store_explicit(&startup_ms, (uint64_t)(cfg->startup_timeout * 1000), memory_order_relaxed);
    atomic_store_explicit(&idle_ms, (uint64_t)(cfg->idle_timeout * 1000), memory_order_relaxed);
    atomic_store_explicit(&max_pending, cfg->max_pending_bytes, memory_order_relaxed);
    atomic_store_explicit(&param_max, cfg->log_parameters ? cfg->parameter_max_bytes : 0,
                          memory_order_relaxed);
    atomic_store_explicit(&statement_max, cfg->statement_max_bytes, memory_order_relaxed);
}

uint64_t pgw_limits_startup_timeout_ms(void)
{
    return atomic_load_explicit(&startup_ms, memory_order_relaxed);
}

uint64_t pgw_limits_idle_timeout_ms(void)
{
    return atomic_load_explicit(&idle_ms, memory_order_relaxed);
}

size_t pgw_limits_max_pending(void)
{
    return atomic_load_explicit(&max_pending, memory_order_relaxed);
}

uint32_t pgw_limits_param_max(void)
{
    return atomic_load_explicit(&param_max, memory_order_relaxed);
}

uint32_t pgw_limits_statement_max(void)
{
    return atomic_load_explicit(&statement_max, memory_order_relaxed);
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
    pgw_admit_t rc = PGW_ADMIT_OK;

    pthread_mutex_lock(&mu);
    int per = addr && *addr && max_per_address;
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
    if (addr && *addr) {              /* counted under a limit that a reload may have lifted */
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
