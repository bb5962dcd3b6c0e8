/* Incremental framer for both directions of the PostgreSQL 3.0 protocol.
 *
 * A push-style state machine in the manner of nghttp2's inbound loop: the
 * caller feeds whatever one read returned and the framer keeps only the few
 * header bytes and the part of a wanted body that straddle two feeds. Nothing
 * is ever read from the input before its length has been checked, and the
 * length word is never believed beyond the configured caps. */
#include "pgwarden/protocol.h"

#include <stdlib.h>
#include <string.h>

enum {
    ST_STARTUP_HDR = 0,   /* 4-byte length + 4-byte code, no type byte */
    ST_HDR,               /* 1-byte type + 4-byte length */
    ST_BODY,              /* wanted body split across feeds: assembling it */
    ST_SKIP,              /* unwanted body: counted down, never copied */
    ST_ENDED,             /* after CancelRequest: the stream must end */
};

#define REG_HDR_LEN     5u
#define STARTUP_HDR_LEN 8u
/* Smallest assembly buffer: most split messages are short statements. */
#define ASM_MIN         256u
/* Larger assembly buffers are released once their message is delivered, so a
 * connection that once received a big split message does not keep it for
 * its whole (mostly idle) life. */
#define ASM_KEEP        (64u * 1024u)

static inline uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline int is_wanted(const pgw_framer_t *f, uint8_t type)
{
    return (f->want[type >> 3] >> (type & 7)) & 1;
}

/* A regular header's verdict, for pgw_framer_feed and pgw_framer_whole. */
static inline int reg_hdr_bad(const pgw_framer_t *f, const uint8_t *h)
{
    /* len < 4 wraps to a huge value: one compare rejects both ends,
     * including "negative" length words. */
    if (be32(h + 1) - 4 > f->max_len - 4)
        return PGW_EBADLEN;
    if (h[0] == 0)
        return PGW_EBADTYPE;
    return 0;
}

static inline int startup_len_bad(uint32_t len)
{
    /* PostgreSQL caps what follows the length word, not the whole packet.
     * One unsigned compare covers both bounds: len < 8 wraps around. */
    return len - STARTUP_HDR_LEN > PGW_STARTUP_MAX + 4 - STARTUP_HDR_LEN;
}

void pgw_framer_init(pgw_framer_t *f, pgw_side_t side, uint32_t max_len,
                     pgw_msg_cb cb, void *ud)
{
    memset(f, 0, sizeof(*f));
    f->side = side;
    if (max_len == 0)
        max_len = PGW_MSG_MAX_DEFAULT;
    if (max_len > INT32_MAX)
        max_len = INT32_MAX;
    if (max_len < 4)
        max_len = 4;   /* keeps the single-compare length check below sound */
    f->max_len = max_len;
    memset(f->want, 0xff, sizeof(f->want));
    pgw_framer_want(f, 'd', 0);
    if (side == PGW_BACKEND)
        pgw_framer_want(f, 'D', 0);
    f->cb = cb;
    f->ud = ud;
    f->state = side == PGW_FRONTEND ? ST_STARTUP_HDR : ST_HDR;
}

void pgw_framer_free(pgw_framer_t *f)
{
    free(f->asm_buf);
    f->asm_buf = NULL;
    f->asm_cap = 0;
    f->asm_got = 0;
}

void pgw_framer_want(pgw_framer_t *f, uint8_t type, int wanted)
{
    if (wanted)
        f->want[type >> 3] |= (uint8_t)(1u << (type & 7));
    else
        f->want[type >> 3] &= (uint8_t)~(1u << (type & 7));
}

int pgw_framer_stopped(const pgw_framer_t *f)
{
    return f->stopped;
}

int pgw_framer_at_boundary(const pgw_framer_t *f)
{
    if (f->state == ST_ENDED)
        return 1;
    return (f->state == ST_HDR || f->state == ST_STARTUP_HDR) && f->hdr_got == 0;
}

int pgw_framer_whole(const pgw_framer_t *f, const uint8_t *buf, size_t len)
{
    size_t pos = 0;

    if (f->state != ST_HDR || f->hdr_got != 0)
        return 0;
    while (len - pos >= REG_HDR_LEN) {
        uint32_t mlen = be32(buf + pos + 1);
        if (reg_hdr_bad(f, buf + pos) || mlen > len - pos - 1)
            return 0;
        pos += 1 + (size_t)mlen;
    }
    return pos == len && len > 0;
}

int pgw_framer_in_startup(const pgw_framer_t *f)
{
    if (f->state == ST_STARTUP_HDR)
        return 1;
    /* Regular messages of type 0 are refused, so type 0 means a startup
     * packet whose body is still arriving. */
    return (f->state == ST_BODY || f->state == ST_SKIP) && f->cur.type == 0;
}

const char *pgw_framer_strerror(int err)
{
    switch (err) {
    case 0:
        return "no error";
    case PGW_EBADLEN:
        return "invalid message length (below 4 or above the configured maximum)";
    case PGW_ESTARTUPLEN:
        return "invalid length of startup packet";
    case PGW_ENOMEM:
        return "out of memory while assembling a message";
    case PGW_EAFTEREND:
        return "unexpected data after CancelRequest";
    case PGW_EBADTYPE:
        return "invalid message type 0";
    default:
        return "unknown framer error";
    }
}

static ssize_t fail(pgw_framer_t *f, int err)
{
    f->state = err;
    return err;
}

/* Hands the current message to the callback. The next state is set first so
 * that the callback already sees the phase the message leads to (e.g.
 * pgw_framer_in_startup() is false during the StartupMessage callback). */
static inline int deliver(pgw_framer_t *f, const uint8_t *body)
{
    if (f->cur.type != 0)
        f->state = ST_HDR;
    else if (f->cur.code == PGW_CODE_CANCEL)
        f->state = ST_ENDED;
    else if (f->cur.code >> 16 == 3)
        f->state = ST_HDR;
    else
        f->state = ST_STARTUP_HDR;   /* SSL/GSSENC, or a code the caller refuses */
    f->cur.body = body;
    f->messages++;
    return f->cb ? f->cb(f->ud, &f->cur) : 0;
}

/* Collects header bytes that straddle feeds; 1 once all need bytes are in. */
static inline int gather(pgw_framer_t *f, const uint8_t *buf, size_t *pos,
                         size_t len, uint32_t need)
{
    size_t n = need - f->hdr_got;
    if (n > len - *pos)
        n = len - *pos;
    memcpy(f->hdr + f->hdr_got, buf + *pos, n);
    f->hdr_got += (uint32_t)n;
    *pos += n;
    if (f->hdr_got < need)
        return 0;
    f->hdr_got = 0;
    return 1;
}

/* The assembly buffer grows with the bytes that actually arrived, never
 * straight to the announced length: a peer announcing 1 GiB and sending five
 * bytes costs five bytes, not 1 GiB. */
static int asm_reserve(pgw_framer_t *f, uint32_t need)
{
    uint32_t cap;
    uint8_t *p;

    if (need <= f->asm_cap)
        return 0;
    cap = f->asm_cap < ASM_MIN / 2 ? ASM_MIN : f->asm_cap * 2;
    if (cap < f->asm_cap || cap > f->cur.body_len)   /* overflow, or past the end */
        cap = f->cur.body_len;
    if (cap < need)
        cap = need;
    p = realloc(f->asm_buf, cap);
    if (!p)
        return -1;
    f->asm_buf = p;
    f->asm_cap = cap;
    return 0;
}

/* A header was just read: deliver the message at once when its body is all in
 * this feed (the common case: no copy, no allocation), else enter the state
 * that collects or skips the rest. Returns the callback's verdict. */
static inline int begin_body(pgw_framer_t *f, const uint8_t *buf, size_t *pos, size_t len)
{
    int wanted = f->cur.type == 0 || is_wanted(f, f->cur.type);
    size_t avail = len - *pos;

    f->remaining = f->cur.body_len;
    if (avail >= f->remaining) {
        const uint8_t *body = buf + *pos;
        *pos += f->remaining;
        f->remaining = 0;
        return deliver(f, wanted ? body : NULL);
    }
    f->asm_got = 0;
    f->state = wanted ? ST_BODY : ST_SKIP;
    return 0;
}

ssize_t pgw_framer_feed(pgw_framer_t *f, const uint8_t *buf, size_t len)
{
    size_t pos = 0, n;
    const uint8_t *h;
    uint32_t mlen;
    int rc;

    f->stopped = 0;
    if (f->state < 0)
        return f->state;
    if (len == 0)
        return 0;

    for (;;) {
        switch (f->state) {
        case ST_HDR:
            if (f->hdr_got == 0 && len - pos >= REG_HDR_LEN) {
                h = buf + pos;
                pos += REG_HDR_LEN;
            } else {
                if (pos == len || !gather(f, buf, &pos, len, REG_HDR_LEN))
                    goto out;
                h = f->hdr;
            }
            mlen = be32(h + 1);
            if ((rc = reg_hdr_bad(f, h)) != 0)
                return fail(f, rc);
            f->cur.type = h[0];
            f->cur.len = mlen;
            f->cur.code = 0;
            f->cur.body_len = mlen - 4;
            if (begin_body(f, buf, &pos, len))
                goto stop;
            break;

        case ST_STARTUP_HDR:
            if (f->hdr_got == 0 && len - pos >= STARTUP_HDR_LEN) {
                h = buf + pos;
                pos += STARTUP_HDR_LEN;
            } else {
                if (pos == len)
                    goto out;
                if (!gather(f, buf, &pos, len, STARTUP_HDR_LEN)) {
                    /* Refuse a bad length as soon as it is known, e.g. an
                     * HTTP request sent to the PostgreSQL port. */
                    if (f->hdr_got >= 4 && startup_len_bad(be32(f->hdr)))
                        return fail(f, PGW_ESTARTUPLEN);
                    goto out;
                }
                h = f->hdr;
            }
            mlen = be32(h);
            if (startup_len_bad(mlen))
                return fail(f, PGW_ESTARTUPLEN);
            f->cur.type = 0;
            f->cur.len = mlen;
            f->cur.code = be32(h + 4);
            f->cur.body_len = mlen - STARTUP_HDR_LEN;
            if (begin_body(f, buf, &pos, len))
                goto stop;
            break;

        case ST_BODY:
            if (pos == len)
                goto out;
            if (f->asm_got == 0 && len - pos >= f->remaining) {
                /* The header ended the previous feed and the body is whole in
                 * this one: still no copy. */
                h = buf + pos;
                pos += f->remaining;
                f->remaining = 0;
                if (deliver(f, h))
                    goto stop;
                break;
            }
            n = len - pos < f->remaining ? len - pos : f->remaining;
            if (asm_reserve(f, f->asm_got + (uint32_t)n) < 0)
                return fail(f, PGW_ENOMEM);
            memcpy(f->asm_buf + f->asm_got, buf + pos, n);
            f->asm_got += (uint32_t)n;
            f->remaining -= (uint32_t)n;
            pos += n;
            if (f->remaining)
                goto out;
            rc = deliver(f, f->asm_buf);
            f->asm_got = 0;
            if (f->asm_cap > ASM_KEEP)
                pgw_framer_free(f);
            if (rc)
                goto stop;
            break;

        case ST_SKIP:
            if (pos == len)
                goto out;
            n = len - pos < f->remaining ? len - pos : f->remaining;
            f->remaining -= (uint32_t)n;
            pos += n;
            if (f->remaining)
                goto out;
            if (deliver(f, NULL))
                goto stop;
            break;

        case ST_ENDED:
            if (pos < len)
                return fail(f, PGW_EAFTEREND);
            goto out;

        default:
            return fail(f, PGW_EBADLEN);   /* unreachable: corrupted state */
        }
    }

stop:
    f->stopped = 1;
out:
    f->consumed += pos;
    return (ssize_t)pos;
}
