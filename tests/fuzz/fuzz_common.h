/* Shared body of the framer fuzz targets.
 *
 * Input layout: byte 0 picks the configuration (bit 0: want DataRow and
 * CopyData bodies too; bits 1-2: the callback stops after every n-th
 * message; bit 3: a small max_len of 64), bytes 1-2 pick the split point, the
 * rest is the byte stream. The stream is framed twice: in one piece and in
 * two pieces cut at the split point, each piece in its own exact-size heap
 * copy so that ASan sees any read past it. Both runs must report the same
 * messages and the same outcome; every message goes through the reader for
 * its type and whatever the reader accepts is walked to its end. */
#ifndef PGW_FUZZ_COMMON_H
#define PGW_FUZZ_COMMON_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pgwarden/protocol.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct fuzz_run {
    pgw_side_t side;
    unsigned stop_every, seen;
    uint64_t hash;        /* FNV-1a over everything the callback saw */
} fuzz_run_t;

static void fuzz_hash(fuzz_run_t *r, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        r->hash = (r->hash ^ b[i]) * 0x100000001b3ull;
}

/* Touches every byte a successful reader points at: ASan turns a pointer
 * past the body into a crash. */
static volatile uint8_t fuzz_sink;
static void fuzz_touch(const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        fuzz_sink ^= b[i];
}
static void fuzz_touch_str(const char *s)
{
    if (s)
        fuzz_touch(s, strlen(s) + 1);
}

static void fuzz_values(uint16_t nformats, const uint8_t *formats, uint16_t n,
                        const uint8_t *values)
{
    pgw_bind_t b = { .nformats = nformats, .formats = formats, .nparams = n, .params = values };
    uint32_t cursor = 0;
    const uint8_t *val;
    int32_t len;
    uint16_t fmt;

    for (uint16_t i = 0; pgw_bind_next_param(&b, &cursor, i, &val, &len, &fmt); i++)
        if (len > 0)
            fuzz_touch(val, (size_t)len);
}

static void fuzz_parse_frontend(const pgw_msg_t *m)
{
    switch (m->type) {
    case 0: {
        pgw_startup_t s;
        if (pgw_parse_startup(m, &s) == 0)
            for (uint32_t i = 0; i < s.nparams; i++) {
                fuzz_touch_str(s.names[i]);
                fuzz_touch_str(s.values[i]);
            }
        break;
    }
    case 'Q': {
        pgw_query_t q;
        if (pgw_parse_query(m, &q) == 0)
            fuzz_touch(q.text, (size_t)q.text_len + 1);
        break;
    }
    case 'P': {
        pgw_parse_t p;
        if (pgw_parse_parse(m, &p) == 0) {
            fuzz_touch(p.text, (size_t)p.text_len + 1);
            fuzz_touch(p.param_oids, (size_t)p.nparams * 4);
        }
        break;
    }
    case 'B': {
        pgw_bind_t b;
        if (pgw_parse_bind(m, &b) == 0) {
            fuzz_touch_str(b.portal);
            fuzz_touch_str(b.stmt);
            fuzz_values(b.nformats, b.formats, b.nparams, b.params);
            fuzz_touch(b.result_formats, (size_t)b.nresult_formats * 2);
        }
        break;
    }
    case 'D':
    case 'C': {
        pgw_target_t t;
        if ((m->type == 'D' ? pgw_parse_describe(m, &t) : pgw_parse_close(m, &t)) == 0)
            fuzz_touch_str(t.name);
        break;
    }
    case 'E': {
        pgw_execute_t e;
        if (pgw_parse_execute(m, &e) == 0)
            fuzz_touch_str(e.portal);
        break;
    }
    case 'F': {
        pgw_fcall_t f;
        if (pgw_parse_function_call(m, &f) == 0)
            fuzz_values(f.nformats, f.formats, f.nargs, f.args);
        break;
    }
    default:
        break;
    }
}

static void fuzz_parse_backend(const pgw_msg_t *m)
{
    switch (m->type) {
    case 'R': {
        pgw_auth_t a;
        if (pgw_parse_auth(m, &a) == 0)
            fuzz_touch(a.data, a.data_len);
        break;
    }
    case 'K': { pgw_keydata_t k; (void)pgw_parse_keydata(m, &k); break; }
    case 'S': {
        pgw_param_status_t p;
        if (pgw_parse_param_status(m, &p) == 0) {
            fuzz_touch_str(p.name);
            fuzz_touch_str(p.value);
        }
        break;
    }
    case 'Z': { pgw_ready_t z; (void)pgw_parse_ready(m, &z); break; }
    case 'C': {
        pgw_complete_t c;
        if (pgw_parse_command_complete(m, &c) == 0)
            fuzz_touch_str(c.tag);
        break;
    }
    case 'E':
    case 'N': {
        pgw_error_t e;
        if (pgw_parse_error(m, &e) == 0) {
            fuzz_touch_str(e.severity);
            fuzz_touch_str(e.sqlstate);
            fuzz_touch_str(e.message);
            fuzz_touch_str(e.routine);
        }
        break;
    }
    case 'A': {
        pgw_notify_t a;
        if (pgw_parse_notification(m, &a) == 0) {
            fuzz_touch_str(a.channel);
            fuzz_touch_str(a.payload);
        }
        break;
    }
    case 'T': { pgw_rowdesc_t t; (void)pgw_parse_row_description(m, &t); break; }
    case 'G':
    case 'H':
    case 'W': {
        pgw_copy_resp_t c;
        if (pgw_parse_copy_response(m, &c) == 0)
            fuzz_touch(c.formats, (size_t)c.ncols * 2);
        break;
    }
    case 'v': {
        pgw_negotiate_t v;
        if (pgw_parse_negotiate(m, &v) == 0) {
            const char *o = v.options;
            for (uint32_t i = 0; i < v.nunrecognized; i++, o += strlen(o) + 1)
                fuzz_touch_str(o);
        }
        break;
    }
    case 't': {
        pgw_param_desc_t t;
        if (pgw_parse_param_description(m, &t) == 0)
            fuzz_touch(t.oids, (size_t)t.nparams * 4);
        break;
    }
    case 'V': {
        pgw_fresult_t v;
        if (pgw_parse_function_result(m, &v) == 0 && v.len > 0)
            fuzz_touch(v.value, (size_t)v.len);
        break;
    }
    default:
        break;
    }
}

static int fuzz_on_msg(void *ud, const pgw_msg_t *m)
{
    fuzz_run_t *r = ud;
    uint32_t v[3] = { m->len, m->code, m->body_len };
    uint8_t has = m->body != NULL;

    /* The framer's promises about every message it hands over. */
    if (m->type == 0 ? m->body_len != m->len - 8 : m->body_len != m->len - 4)
        abort();
    fuzz_hash(r, &m->type, 1);
    fuzz_hash(r, v, sizeof(v));
    fuzz_hash(r, &has, 1);
    if (m->body) {
        fuzz_hash(r, m->body, m->body_len);
        if (r->side == PGW_FRONTEND)
            fuzz_parse_frontend(m);
        else
            fuzz_parse_backend(m);
    }
    (void)pgw_msg_name(r->side, m->type);
    r->seen++;
    return r->stop_every && r->seen % r->stop_every == 0;
}

/* Feeds one piece from an exact-size heap copy, resuming after stops. */
static int fuzz_feed(pgw_framer_t *f, const uint8_t *data, size_t n)
{
    uint8_t *copy = malloc(n ? n : 1);
    size_t off = 0;
    int rc = 0;

    if (n)
        memcpy(copy, data, n);
    while (off < n) {
        ssize_t got = pgw_framer_feed(f, copy + off, n - off);
        if (got < 0) {
            rc = (int)got;
            if (pgw_framer_strerror(rc)[0] == '\0')
                abort();
            break;
        }
        if ((size_t)got > n - off || (!pgw_framer_stopped(f) && (size_t)got != n - off))
            abort();
        off += (size_t)got;
    }
    free(copy);
    return rc;
}

static uint64_t fuzz_run(pgw_side_t side, uint8_t ctl, const uint8_t *data, size_t n,
                         size_t split, int *err)
{
    fuzz_run_t r = { .side = side, .stop_every = (ctl >> 1) & 3u, .hash = 0xcbf29ce484222325ull };
    pgw_framer_t f;
    int rc;

    pgw_framer_init(&f, side, ctl & 8 ? 64 : 0, fuzz_on_msg, &r);
    if (ctl & 1) {
        pgw_framer_want(&f, 'D', 1);
        pgw_framer_want(&f, 'd', 1);
    }
    rc = fuzz_feed(&f, data, split);
    if (rc == 0)
        rc = fuzz_feed(&f, data + split, n - split);
    if (rc == 0 && f.consumed != n)
        abort();
    if (f.messages != r.seen)
        abort();
    (void)pgw_framer_in_startup(&f);
    (void)pgw_framer_at_boundary(&f);
    pgw_framer_free(&f);
    *err = rc;
    return r.hash;
}

static int fuzz_framer(pgw_side_t side, const uint8_t *data, size_t size)
{
    uint8_t ctl;
    size_t n, split;
    int err_one, err_two;

    if (size < 3)
        return 0;
    ctl = data[0];
    n = size - 3;
    split = ((size_t)data[1] | (size_t)data[2] << 8) % (n + 1);
    data += 3;
    /* Any split must give what one piece gives. */
    if (fuzz_run(side, ctl, data, n, n, &err_one) != fuzz_run(side, ctl, data, n, split, &err_two)
        || err_one != err_two)
        abort();
    /* A server read that pgw_framer_whole passes is one the framer takes
     * whole and without error, and no other (session.c forwards such a
     * read before framing it). */
    if (side == PGW_BACKEND) {
        pgw_framer_t f;
        pgw_framer_init(&f, side, ctl & 8 ? 64 : 0, NULL, NULL);
        int whole = pgw_framer_whole(&f, data, n);
        ssize_t got = pgw_framer_feed(&f, data, n);
        int takes = n > 0 && got == (ssize_t)n && pgw_framer_at_boundary(&f);
        pgw_framer_free(&f);
        if (whole != takes)
            abort();
    }
    return 0;
}

#endif
