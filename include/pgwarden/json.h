/* JSON output: a growable byte buffer with sticky failure, the primitive
 * writers (strings, integers, times, base64), and the audit event encoder.
 *
 * The buffer follows PgBouncer's PktBuf: the first failed growth sets
 * `failed`, every later append does nothing, and the caller checks once at
 * the end. Strings are always written as valid UTF-8 JSON whatever the input
 * bytes (SQL text and error messages can hold anything): control characters,
 * quotes and backslashes are escaped, and each ill-formed UTF-8 subsequence
 * becomes one U+FFFD, following the Unicode "maximal subpart" practice (the
 * same output as Python's bytes.decode("utf-8", "replace")).
 *
 * Nothing here allocates except buffer growth; a buffer reused across
 * events reaches its working size once and then stays allocation-free.
 * A buffer belongs to one thread at a time; there is no global state. */
#ifndef PGWARDEN_JSON_H
#define PGWARDEN_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pgwarden/event.h"

typedef struct pgw_jbuf {
    char *data;        /* owned; NULL until the first growth */
    size_t len;        /* bytes written */
    size_t cap;        /* bytes allocated */
    size_t max;        /* named cap: growing past this fails (0 = SIZE_MAX) */
    bool failed;       /* sticky: set by the first failed growth */
    bool toobig;       /* ... and that growth would have passed `max` */
} pgw_jbuf_t;

/* An empty buffer that may grow up to max bytes (0: no cap). Allocates
 * nothing; the first append does. */
void pgw_jbuf_init(pgw_jbuf_t *b, size_t max);
/* Frees the storage; the buffer is empty and may be used again. */
void pgw_jbuf_free(pgw_jbuf_t *b);
/* Empties the buffer and clears `failed`, keeping the storage for reuse. */
static inline void pgw_jbuf_reset(pgw_jbuf_t *b) { b->len = 0; b->failed = b->toobig = false; }

/* Makes room for n more bytes. False (and `failed` set) when that would pass
 * `max` (`toobig` set too) or memory is exhausted; false at once when
 * already failed. Strings reserve up to ~25 KiB ahead of what they write, so
 * `max` is a cap within that slack, not an exact size. */
bool pgw_jbuf_grow(pgw_jbuf_t *b, size_t n);
static inline bool pgw_jbuf_reserve(pgw_jbuf_t *b, size_t n)
{
    if (__builtin_expect(b->cap - b->len >= n && !b->failed, 1))
        return true;
    return pgw_jbuf_grow(b, n);
}

/* Raw appends (no escaping): the caller vouches for the bytes. */
static inline void pgw_jbuf_put(pgw_jbuf_t *b, const void *p, size_t n)
{
    if (n && pgw_jbuf_reserve(b, n)) {
        __builtin_memcpy(b->data + b->len, p, n);
        b->len += n;
    }
}
static inline void pgw_jbuf_putc(pgw_jbuf_t *b, char c)
{
    if (pgw_jbuf_reserve(b, 1))
        b->data[b->len++] = c;
}
#define pgw_jbuf_lit(b, s) pgw_jbuf_put((b), "" s, sizeof(s) - 1)

/* JSON values. Each appends one complete value. */
void pgw_json_str(pgw_jbuf_t *b, const void *s, size_t n);     /* quoted, escaped, UTF-8 repaired */
/* The length of s cut to at most max bytes, not inside a UTF-8 sequence
 * (text in another encoding may be cut inside a character, as any byte
 * cap would). */
size_t pgw_utf8_prefix(const void *s, size_t len, size_t max);
void pgw_json_u64(pgw_jbuf_t *b, uint64_t v);
void pgw_json_i64(pgw_jbuf_t *b, int64_t v);
/* "YYYY-MM-DDTHH:MM:SS.ffffffZ" from microseconds since the Unix epoch (UTC);
 * years 0000-9999, clamped outside. */
void pgw_json_time_us(pgw_jbuf_t *b, int64_t us);
/* "YYYY-MM-DDTHH:MM:SSZ" from seconds since the epoch (certificate validity). */
void pgw_json_time_s(pgw_jbuf_t *b, int64_t s);
/* Quoted standard base64 (RFC 4648, padded) of n raw bytes. */
void pgw_json_base64(pgw_jbuf_t *b, const void *p, size_t n);

/* Appends one audit event as a single-line JSON object followed by '\n',
 * per schema v1 (../shared/EVENTS.md, docs/events.schema.json).
 * The event and every string it points to are only read during the call.
 * Returns 0, or on failure leaves the buffer exactly as it was before the
 * call (length restored, `failed` and `toobig` cleared) and returns
 *   -EINVAL  ev->kind is not a known kind,
 *   -E2BIG   the event would take the buffer past its `max`,
 *   -ENOMEM  out of memory. */
int pgw_event_encode(const pgw_event_t *ev, pgw_jbuf_t *b)
    __attribute__((warn_unused_result));
/* The same; *head_len is then the length of the event's head, its bytes
 * before `result` (what ev->head_json of a later event may hold). */
int pgw_event_encode_head_len(const pgw_event_t *ev, pgw_jbuf_t *b, size_t *head_len)
    __attribute__((warn_unused_result));

/* Appends the encoded identity of ev (observer, client, server, user, tls,
 * as pgw_event_encode writes them: a fragment starting with ',' or empty)
 * for ev->identity_json of later events. The caller owns the buffer and
 * keeps it as long as events point into it. Returns 0, -E2BIG or -ENOMEM
 * with the buffer restored. */
int pgw_event_encode_identity(const pgw_event_t *ev, pgw_jbuf_t *b)
    __attribute__((warn_unused_result));
/* Appends the encoded analysis fields of s (text, redacted, truncated,
 * fingerprint, command, class, objects: a fragment starting with ',') for
 * s->analysis_json of later events. Same contract as above. */
int pgw_event_encode_statement_analysis(const pgw_event_statement_t *s, pgw_jbuf_t *b)
    __attribute__((warn_unused_result));

#endif
