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

/* "000102...ff": a byte's two hex digits at 2 * byte. */
static const char hex_pairs[513] =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
    "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
    "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
    "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
    "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
    "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
    "e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";

void pgw_uuid_format(const uint8_t id[16], char out[36])
{
#define PAIR(at, i) memcpy(out + (at), hex_pairs + 2 * id[i], 2)
    PAIR(0, 0), PAIR(2, 1), PAIR(4, 2), PAIR(6, 3);
    out[8] = '-';
    PAIR(9, 4), PAIR(11, 5);
    out[13] = '-';
    PAIR(14, 6), PAIR(16, 7);
    out[18] = '-';
    PAIR(19, 8), PAIR(21, 9);
    out[23] = '-';
    PAIR(24, 10), PAIR(26, 11), PAIR(28, 12), PAIR(30, 13), PAIR(32, 14), PAIR(34, 15);
#undef PAIR
}

void pgw_event_init(pgw_event_t *ev, pgw_event_kind_t kind, int64_t time_us, pgw_uuid7_t *g)
{
    memset(ev, 0, sizeof(*ev));
    ev->kind = kind;
    ev->time_us = time_us;
    if (!g)
        g = thread_gen();
    /* The event's own time, when it has one, spares a clock read: the
     * generator keeps ids increasing whatever the times it is given. */
    pgw_uuid7_next(g, (uint64_t)((time_us > 0 ? time_us : pgw_event_now_us()) / 1000), ev->event_id);
}
