/* libFuzzer target: the startup phase. The input is framed as a client's
 * first bytes (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage with
 * any version, anything else); every startup packet goes through
 * pgw_parse_startup, whose promises are checked: the kept pairs point into
 * the body and end there, the named fields are kept values, a success of a
 * version-3 packet has a non-empty user, a CancelRequest is exactly 8 bytes.
 * The same body is also parsed alone from an exact-size heap copy (byte 0 of
 * the input picks the code), so that ASan sees a read past it. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pgwarden/protocol.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint8_t sink;

static void touch(const char *s)
{
    for (; *s; s++)
        sink ^= (uint8_t)*s;
}

static int in_body(const pgw_msg_t *m, const char *s)
{
    const char *b = (const char *)m->body;
    return s >= b && s < b + m->body_len && memchr(s, 0, (size_t)(b + m->body_len - s)) != NULL;
}

static void check(const pgw_msg_t *m)
{
    pgw_startup_t st;
    int rc = pgw_parse_startup(m, &st);

    if (rc > 0 || rc < -2)
        abort();
    if (rc != 0)
        return;
    if (st.code != m->code)
        abort();
    if (m->code == PGW_CODE_CANCEL) {
        if (m->body_len != 8)
            abort();
        return;
    }
    if (m->code >> 16 != 3)
        return;
    if (st.nkept > st.nparams || st.nkept > PGW_MAX_STARTUP_PARAMS
        || (st.nparams <= PGW_MAX_STARTUP_PARAMS && st.nkept != st.nparams))
        abort();
    if (!st.user || !st.user[0] || !in_body(m, st.user))
        abort();
    const char *named[] = { st.database, st.application_name, st.options, st.replication };
    for (size_t i = 0; i < sizeof named / sizeof named[0]; i++)
        if (named[i] && !in_body(m, named[i]))
            abort();
    for (uint32_t i = 0; i < st.nkept; i++) {
        if (!in_body(m, st.names[i]) || !in_body(m, st.values[i]))
            abort();
        touch(st.names[i]);
        touch(st.values[i]);
    }
}

static int on_msg(void *ud, const pgw_msg_t *m)
{
    (void)ud;
    if (m->type == 0 && m->body)
        check(m);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint32_t codes[] = { PGW_PROTO_V3, PGW_PROTO_V3 | 1, PGW_PROTO_V3 | 2,
                                      4u << 16, 2u << 16, PGW_CODE_CANCEL, PGW_CODE_SSL,
                                      PGW_CODE_GSSENC, 80877101u, 80877105u };
    pgw_framer_t f;
    uint8_t *copy;

    if (size < 1 || size > 2 * PGW_STARTUP_MAX)
        return 0;

    /* The body alone, as a packet with a chosen code. */
    copy = malloc(size - 1 ? size - 1 : 1);
    memcpy(copy, data + 1, size - 1);
    pgw_msg_t m = { .type = 0, .len = (uint32_t)size - 1 + 8,
                    .code = codes[data[0] % (sizeof codes / sizeof codes[0])],
                    .body = copy, .body_len = (uint32_t)size - 1 };
    check(&m);
    free(copy);

    /* The whole input as a client's first bytes. */
    copy = malloc(size);
    memcpy(copy, data, size);
    pgw_framer_init(&f, PGW_FRONTEND, 0, on_msg, NULL);
    (void)pgw_framer_feed(&f, copy, size);
    pgw_framer_free(&f);
    free(copy);
    return 0;
}
