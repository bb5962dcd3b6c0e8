/* Event ids (UUIDv7) and small event helpers. See pgwarden/event.h. */
#include "pgwarden/event.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <openssl/rand.h>

static const char *const kind_names[PGW_EVENT_KIND_COUNT] = {
    [PGW_EVENT_SESSION_START] = "session_start",
    [PGW_EVENT_AUTH_FAILURE] = "auth_failure",
    [PGW_EVENT_STATEMENT] = "statement",
    [PGW_EVENT_DENIED] = "denied",
    [PGW_EVENT_CANCEL] = "cancel",
    [PGW_EVENT_SESSION_END] = "session_end",
    [PGW_EVENT_AUDIT_GAP] = "audit_gap",
};

const char *pgw_event_kind_name(pgw_event_kind_t k)
{
    return (unsigned)k < PGW_EVENT_KIND_COUNT ? kind_names[k] : NULL;
}

static inline uint64_t rotl64(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

/* xoshiro256** (Blackman and Vigna): fast, 256 bits of state, and no
 * detectable pattern in the low bits that end up in the id. */
static uint64_t rng_next(pgw_uuid7_t *g)
{
    uint64_t *s = g->s;
    uint64_t r = rotl64(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;

    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return r;
}

static int seed_bytes(void *p, size_t n)
{
    size_t got = 0;

    while (got < n) {
        ssize_t r = getrandom((char *)p + got, n - got, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        got += (size_t)r;
    }
    if (got == n)
        return 0;
    /* getrandom is missing (ENOSYS in old sandboxes): OpenSSL has its own
     * sources. */
    return RAND_bytes(p, (int)n) == 1 ? 0 : -EIO;
}

int pgw_uuid7_init(pgw_uuid7_t *g)
{
    memset(g, 0, sizeof(*g));
    if (seed_bytes(g->s, sizeof(g->s)) != 0)
        return -EIO;
    if ((g->s[0] | g->s[1] | g->s[2] | g->s[3]) == 0)
        g->s[0] = 1;    /* the one state xoshiro cannot leave */
    return 0;
}

void pgw_uuid7_next(pgw_uuid7_t *g, uint64_t unix_ms, uint8_t out[16])
{
    unix_ms &= (UINT64_C(1) << 48) - 1;
    if (unix_ms > g->last_ms) {
        g->last_ms = unix_ms;
        /* Start below 2^11 so a burst has at least 2048 steps of room. */
        g->counter = (uint32_t)(rng_next(g) >> 53);
    } else if (++g->counter > 0xFFF) {
        /* Clock stepped back or 4096 ids in one millisecond: borrow the next
         * millisecond rather than break the order. */
        g->last_ms++;
        g->counter = (uint32_t)(rng_next(g) >> 53);
    }

    uint64_t ms = g->last_ms, rb = rng_next(g);
    for (int i = 5; i >= 0; i--) {
        out[i] = (uint8_t)ms;
        ms >>= 8;
    }
    out[6] = (uint8_t)(0x70 | (g->counter >> 8));
    out[7] = (uint8_t)g->counter;
    out[8] = (uint8_t)(0x80 | ((rb >> 56) & 0x3F));   /* variant 10 */
    for (int i = 15; i >= 9; i--) {
        out[i] = (uint8_t)rb;
        rb >>= 8;
    }
}

static _Thread_local pgw_uuid7_t tl_gen;
static _Thread_local bool tl_seeded;

static pgw_uuid7_t *thread_gen(void)
{
    if (__builtin_expect(!tl_seeded, 0)) {
        if (pgw_uuid7_init(&tl_gen) != 0)
            abort();    /* no entropy at all: ids could collide, refuse */
        tl_seeded = true;
    }
    return &tl_gen;
}

void pgw_event_id_new(uint8_t out[16])
{
    pgw_uuid7_next(thread_gen(), (uint64_t)(pgw_event_now_us() / 1000), out);
}

void pgw_uuid_format(const uint8_t id[16], char out[36])
{
    static const char hex[] = "0123456789abcdef";
    /* Where each byte's two digits go: dashes sit at 8, 13, 18 and 23. */
    static const uint8_t at[16] = { 0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34 };

    out[8] = out[13] = out[18] = out[23] = '-';
    for (int i = 0; i < 16; i++) {
        out[at[i]] = hex[id[i] >> 4];
        out[at[i] + 1] = hex[id[i] & 15];
    }
}

void pgw_event_init(pgw_event_t *ev, pgw_event_kind_t kind, int64_t time_us, pgw_uuid7_t *g)
{
    memset(ev, 0, sizeof(*ev));
    ev->kind = kind;
    ev->time_us = time_us;
    if (!g)
        g = thread_gen();
    pgw_uuid7_next(g, (uint64_t)(pgw_event_now_us() / 1000), ev->event_id);
}
