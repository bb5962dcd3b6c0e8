/* libFuzzer target: the audit event encoder.
 *
 * An event of any kind is built from the input: every string field gets
 * arbitrary bytes (invalid UTF-8, NULs, control characters, quotes), every
 * optional integer any 64-bit value, enums any value (in range or not),
 * objects, SANs and parameters (NULL, text, binary) in any number. Then:
 *   - pgw_event_encode must succeed for a known kind (-EINVAL otherwise) and
 *     write exactly one line that the strict checker of the unit tests
 *     (tests/unit/json_validate.h, written apart from the encoder) accepts
 *     as one JSON object with well-formed UTF-8;
 *   - the same event with its identity encoded once
 *     (pgw_event_encode_identity) must encode to the same bytes;
 *   - with a small `max`, the encoder either fits or fails with -E2BIG and
 *     leaves the buffer exactly as it was. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_validate.h"
#include "pgwarden/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct in {
    const uint8_t *p;
    size_t n;
} in_t;

static uint8_t u8(in_t *in)
{
    if (!in->n)
        return 0;
    in->n--;
    return *in->p++;
}

static uint64_t u64(in_t *in)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | u8(in);
    return v;
}

/* An integer: mostly small, sometimes any value (extremes included). */
static int64_t num(in_t *in)
{
    uint8_t k = u8(in);
    switch (k & 3) {
    case 0: return k >> 2;
    case 1: return -(int64_t)(k >> 2);
    case 2: return (int64_t)u64(in);
    default: return (k & 4) ? INT64_MIN : INT64_MAX;
    }
}

static pgw_optint_t optint(in_t *in)
{
    return (u8(in) & 1) ? PGW_INT(num(in)) : (pgw_optint_t){ 0 };
}

/* A string: absent, empty, or 0-255 raw bytes borrowed from the input. */
static pgw_str_t str(in_t *in)
{
    uint8_t k = u8(in);
    if (k == 0)
        return (pgw_str_t){ NULL, 0 };
    if (k == 1)
        return (pgw_str_t){ "", 0 };
    size_t n = u8(in);
    if (n > in->n)
        n = in->n;
    pgw_str_t s = { (const char *)in->p, n };
    in->p += n;
    in->n -= n;
    return s;
}

static int pick(in_t *in, int count)
{
    uint8_t v = u8(in);
    return v >= 250 ? v : v % (count + 1);   /* sometimes out of range */
}

#define MAX_ITEMS 8

static void peer(in_t *in, pgw_event_peer_t *p)
{
    p->ip = str(in);
    p->port = (uint16_t)num(in);
    p->socket = str(in);
    p->application = str(in);
}

static void check_line(const pgw_jbuf_t *b, size_t from, const char *what)
{
    const char *err = jv_check_line(b->data + from, b->len - from);
    if (err) {
        fprintf(stderr, "fuzz_event_encode: %s: %s\n%.*s\n", what, err, (int)(b->len - from),
                b->data + from);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    in_t in = { data, size };
    pgw_event_t ev;
    pgw_event_cert_t cert;
    pgw_str_t san[MAX_ITEMS];
    pgw_event_object_t objs[MAX_ITEMS];
    pgw_event_param_t params[MAX_ITEMS];
    pgw_jbuf_t b, id, small;
    int rc, rc2;

    memset(&ev, 0, sizeof ev);
    memset(&cert, 0, sizeof cert);
    ev.kind = (pgw_event_kind_t)pick(&in, PGW_EVENT_KIND_COUNT);
    for (int i = 0; i < 16; i++)
        ev.event_id[i] = u8(&in);
    ev.time_us = num(&in);
    ev.observer.host = str(&in);
    ev.observer.instance = str(&in);
    ev.observer.version = str(&in);
    ev.session.id = str(&in);
    ev.session.seq = (uint64_t)num(&in);
    ev.session.backend_pid = (int32_t)num(&in);
    peer(&in, &ev.client);
    peer(&in, &ev.server);
    ev.user.name = str(&in);
    ev.user.database = str(&in);
    if (u8(&in) & 1) {
        cert.subject = str(&in);
        cert.cn = str(&in);
        cert.issuer = str(&in);
        cert.serial = str(&in);
        cert.sha256 = str(&in);
        uint8_t k = u8(&in);
        if (k & 1) {
            cert.nsan = (size_t)(k >> 1) % (MAX_ITEMS + 1);
            for (size_t i = 0; i < cert.nsan; i++)
                san[i] = str(&in);
            cert.san = san;
        }
        cert.not_before = optint(&in);
        cert.not_after = optint(&in);
        ev.user.cert = &cert;
    }
    ev.tls.version = str(&in);
    ev.tls.cipher = str(&in);

    pgw_event_statement_t *st = &ev.statement;
    st->text = str(&in);
    st->redacted = (pgw_optbool_t)(u8(&in) % 3);
    st->truncated = (pgw_optbool_t)(u8(&in) % 3);
    st->has_fingerprint = u8(&in) & 1;
    st->fingerprint = (uint64_t)num(&in);
    st->command = str(&in);
    st->class_ = (pgw_stmt_class_t)pick(&in, PGW_STMT_CLASS_COUNT);
    uint8_t k = u8(&in);
    if (k & 1) {
        st->nobjects = (size_t)(k >> 1) % (MAX_ITEMS + 1);
        for (size_t i = 0; i < st->nobjects; i++) {
            objs[i].schema = str(&in);
            objs[i].name = str(&in);
            objs[i].type = str(&in);
            objs[i].access = (pgw_obj_access_t)pick(&in, PGW_OBJ_ACCESS_COUNT);
        }
        st->objects = objs;
    }
    st->protocol = (pgw_stmt_protocol_t)pick(&in, PGW_PROTOCOL_COUNT);
    st->statement_name = str(&in);
    st->portal_name = str(&in);
    st->index = optint(&in);
    st->count = optint(&in);
    st->param_count = optint(&in);
    k = u8(&in);
    if (k & 1) {
        st->nparam_values = (size_t)(k >> 1) % (MAX_ITEMS + 1);
        for (size_t i = 0; i < st->nparam_values; i++) {
            uint8_t f = u8(&in);
            pgw_str_t v = str(&in);
            params[i].ptr = v.ptr;
            params[i].len = v.len;
            params[i].is_null = f & 1;
            params[i].binary = f & 2;
        }
        st->param_values = params;
    }
    st->parse_error = str(&in);

    ev.result.status = (pgw_result_status_t)pick(&in, PGW_STATUS_COUNT);
    ev.result.tag = str(&in);
    ev.result.rows = optint(&in);
    ev.result.bytes = optint(&in);
    ev.result.sqlstate = str(&in);
    ev.result.message = str(&in);
    ev.result.duration_us = optint(&in);
    ev.copy.direction = (pgw_copy_dir_t)pick(&in, PGW_COPY_COUNT);
    ev.copy.rows = optint(&in);
    ev.copy.bytes = optint(&in);
    ev.server_version = str(&in);
    ev.auth_method = str(&in);
    ev.rule = str(&in);
    ev.target.session_id = str(&in);
    ev.target.backend_pid = (int32_t)num(&in);
    ev.end.reason = (pgw_end_reason_t)pick(&in, PGW_END_COUNT);
    ev.end.duration_us = optint(&in);
    ev.end.statements = optint(&in);
    ev.end.errors = optint(&in);
    ev.end.bytes_in = optint(&in);
    ev.end.bytes_out = optint(&in);
    ev.gap.dropped = optint(&in);
    ev.gap.from_us = optint(&in);
    ev.gap.to_us = optint(&in);
    size_t max = 16 + (size_t)u8(&in) * 64;

    /* In a buffer that already holds a line: the encoder appends. */
    pgw_jbuf_init(&b, 0);
    pgw_jbuf_lit(&b, "{}\n");
    rc = pgw_event_encode(&ev, &b);
    int known = ev.kind > PGW_EVENT_NONE && ev.kind < PGW_EVENT_KIND_COUNT;
    if (known ? rc != 0 : rc != -EINVAL)
        abort();
    if (rc != 0) {
        if (b.len != 3 || b.failed)
            abort();
        pgw_jbuf_free(&b);
        return 0;
    }
    check_line(&b, 3, "event");

    /* The identity encoded once and copied must give the same bytes. */
    pgw_jbuf_init(&id, 0);
    if (pgw_event_encode_identity(&ev, &id) != 0)
        abort();
    pgw_event_t ev2 = ev;
    ev2.identity_json = (pgw_str_t){ id.data ? id.data : "", id.len };
    pgw_jbuf_t b2;
    pgw_jbuf_init(&b2, 0);
    if (pgw_event_encode(&ev2, &b2) != 0)
        abort();
    if (b2.len != b.len - 3 || memcmp(b2.data, b.data + 3, b2.len) != 0) {
        fprintf(stderr, "fuzz_event_encode: identity_json changes the event\n%.*s%.*s",
                (int)(b.len - 3), b.data + 3, (int)b2.len, b2.data);
        abort();
    }

    /* A capped buffer: all or nothing. */
    pgw_jbuf_init(&small, max);
    pgw_jbuf_lit(&small, "{}\n");
    size_t before = small.len;
    rc2 = pgw_event_encode(&ev, &small);
    if (rc2 == 0) {
        if (small.len - before != b.len - 3 || memcmp(small.data + before, b.data + 3, small.len - before))
            abort();
    } else if (rc2 != -E2BIG || small.len != before || small.failed || small.toobig) {
        abort();
    }

    pgw_jbuf_free(&small);
    pgw_jbuf_free(&b2);
    pgw_jbuf_free(&id);
    pgw_jbuf_free(&b);
    return 0;
}
