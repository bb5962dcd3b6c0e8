/* The analysis cache: a fixed array of slots, chained hash buckets over it,
 * CLOCK eviction, bounded by entries and by the bytes of the entries it
 * holds. One per loop thread; nothing here locks.
 *
 * Slots hold a reference to a shared entry. Several entries may share a
 * hash, even a token key (a statement shape whose normalization keeps a
 * literal, like ORDER BY 1, gets one entry per kept value; one cached by exact
 * text gets one per text); each hit is verified in full, and at most
 * VARIANTS_MAX entries of one hash are kept so that a stream of distinct
 * values cannot grow a bucket without bound. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "analysis_int.h"

#define DEFAULT_ENTRIES 4096u
#define DEFAULT_BYTES (8u << 20)
#define DEFAULT_STMT_LEN (16u << 10)
#define DEFAULT_LOOKUP_LEN (64u << 10)
#define VARIANTS_MAX 8u
#define NIL UINT32_MAX

typedef struct slot {
    sql_entry_t *e;          /* NULL: free */
    uint32_t next;           /* next slot in the bucket, or NIL */
    uint8_t used;            /* CLOCK's second-chance bit */
} slot_t;

struct pgw_analysis_cache {
    pgw_analysis_cache_limits_t lim;
    slot_t *slots;
    uint32_t *buckets;       /* head slot per bucket, or NIL */
    uint32_t mask;           /* buckets - 1 */
    uint32_t free_head;      /* free slots, chained through next */
    uint32_t hand;           /* CLOCK hand */
    uint32_t entries;
    size_t bytes;
    uint64_t hits, misses, inserts, evictions;
    uint64_t parse_ns;
    sql_lex_t lex;           /* scratch for lookups */
    char *key;               /* scratch: the key being looked up */
    uint32_t key_cap;
};

pgw_analysis_cache_t *pgw_analysis_cache_new(const pgw_analysis_cache_limits_t *lim)
{
    pgw_analysis_cache_t *c = calloc(1, sizeof *c);
    uint32_t nb = 1, i;

    if (!c)
        return NULL;
    if (lim)
        c->lim = *lim;
    if (!c->lim.max_entries)
        c->lim.max_entries = DEFAULT_ENTRIES;
    if (!c->lim.max_bytes)
        c->lim.max_bytes = DEFAULT_BYTES;
    if (!c->lim.max_stmt_len)
        c->lim.max_stmt_len = DEFAULT_STMT_LEN;
    if (!c->lim.max_lookup_len)
        c->lim.max_lookup_len = DEFAULT_LOOKUP_LEN;
    if (c->lim.max_entries > (1u << 24))
        c->lim.max_entries = 1u << 24;
    while (nb < c->lim.max_entries)
        nb <<= 1;
    c->slots = calloc(c->lim.max_entries, sizeof *c->slots);
    c->buckets = malloc((size_t)nb * sizeof *c->buckets);
    if (!c->slots || !c->buckets) {
        free(c->slots);
        free(c->buckets);
        free(c);
        return NULL;
    }
    c->mask = nb - 1;
    for (i = 0; i < nb; i++)
        c->buckets[i] = NIL;
    for (i = 0; i < c->lim.max_entries; i++)
        c->slots[i].next = i + 1 < c->lim.max_entries ? i + 1 : NIL;
    c->free_head = 0;
    sql_lex_init(&c->lex);
    return c;
}

void pgw_analysis_cache_free(pgw_analysis_cache_t *c)
{
    uint32_t i;

    if (!c)
        return;
    for (i = 0; i < c->lim.max_entries; i++)
        sql_entry_unref(c->slots[i].e);
    sql_lex_free(&c->lex);
    free(c->key);
    free(c->slots);
    free(c->buckets);
    free(c);
}

void pgw_analysis_cache_stats(const pgw_analysis_cache_t *c, pgw_analysis_cache_stats_t *st)
{
    st->hits = c->hits;
    st->misses = c->misses;
    st->inserts = c->inserts;
    st->evictions = c->evictions;
    st->parse_ns = c->parse_ns;
    st->entries = c->entries;
    st->bytes = c->bytes;
}

sql_lex_t *sql_cache_lex(pgw_analysis_cache_t *c)
{
    return &c->lex;
}

int sql_cache_max_lookup(const pgw_analysis_cache_t *c, size_t len)
{
    return len <= c->lim.max_lookup_len;
}

void sql_cache_parse_time(pgw_analysis_cache_t *c, uint64_t ns)
{
    c->parse_ns += ns;
}

void sql_cache_count(pgw_analysis_cache_t *c, int hit)
{
    if (hit)
        c->hits++;
    else
        c->misses++;
}

sql_entry_t *sql_cache_find(pgw_analysis_cache_t *c, const char *s, const sql_tok_t *toks,
                            const sql_piece_t *p)
{
    uint32_t need, key_len, i;
    uint64_t h;

    if (p->end - p->start > c->lim.max_stmt_len || c->entries == 0)
        return NULL;
    /* every token adds at most its bytes and two: cheaper than sql_key_bound */
    need = (p->end - p->start) + 2 * p->ntok + SQL_KEY_SLACK;
    if (need > c->key_cap) {
        char *k = realloc(c->key, need);

        if (!k)
            return NULL;      /* a miss is always a safe answer */
        c->key = k;
        c->key_cap = need;
    }
    key_len = sql_key_build(s, toks, p->ntok, c->key);
    h = sql_hash(c->key, key_len);
    for (i = c->buckets[h & c->mask]; i != NIL; i = c->slots[i].next) {
        sql_entry_t *e = c->slots[i].e;

        if (e->hash == h && sql_entry_matches(e, s, p->start, p->end, toks, p->ntok, c->key, key_len)) {
            c->slots[i].used = 1;
            return e;
        }
    }
    return NULL;
}

static void unlink_slot(pgw_analysis_cache_t *c, uint32_t idx)
{
    slot_t *sl = &c->slots[idx];
    uint32_t *pp = &c->buckets[sl->e->hash & c->mask];

    while (*pp != idx)
        pp = &c->slots[*pp].next;
    *pp = sl->next;
    c->entries--;
    c->bytes -= sl->e->size;
    sql_entry_unref(sl->e);
    sl->e = NULL;
    sl->used = 0;
    sl->next = c->free_head;
    c->free_head = idx;
}

/* CLOCK: sweep, clearing second-chance bits, until a slot without one. */
static void evict_one(pgw_analysis_cache_t *c)
{
    for (;;) {
        slot_t *sl = &c->slots[c->hand];
        uint32_t idx = c->hand;

        c->hand = c->hand + 1 < c->lim.max_entries ? c->hand + 1 : 0;
        if (!sl->e)
            continue;
        if (sl->used) {
            sl->used = 0;
            continue;
        }
        unlink_slot(c, idx);
        c->evictions++;
        return;
    }
}

void sql_cache_insert(pgw_analysis_cache_t *c, sql_entry_t *e)
{
    uint32_t i, variants = 0, idx, b;

    if (e->mode == ENTRY_NOCACHE || e->nocache || e->stmt_len > c->lim.max_stmt_len ||
        e->size > c->lim.max_bytes / 8)
        return;
    b = (uint32_t)(e->hash & c->mask);
    for (i = c->buckets[b]; i != NIL; i = c->slots[i].next) {
        const sql_entry_t *o = c->slots[i].e;

        if (sql_entry_same(o, e))
            return;
        if (o->hash == e->hash)   /* same shape, in all likelihood */
            variants++;
    }
    if (variants >= VARIANTS_MAX)
        return;
    while (c->entries && (c->entries >= c->lim.max_entries || c->bytes + e->size > c->lim.max_bytes))
        evict_one(c);
    idx = c->free_head;
    if (idx == NIL)
        return;
    c->free_head = c->slots[idx].next;
    c->slots[idx].e = e;
    atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
    c->slots[idx].used = 0;
    c->slots[idx].next = c->buckets[b];
    c->buckets[b] = idx;
    c->entries++;
    c->bytes += e->size;
    c->inserts++;
}

void pgw_analysis_cache_add(pgw_analysis_cache_t *c, const pgw_analysis_t *an)
{
    uint32_t i;

    for (i = 0; i < an->count; i++)
        sql_cache_insert(c, sql_entry_of(pgw_analysis_stmt(an, i)->info));
}
