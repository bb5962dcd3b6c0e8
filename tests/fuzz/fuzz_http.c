/* libFuzzer target: the metrics endpoint's request handling
 * (pgw_http_req_feed in proxy/metrics.c, the same code the server runs on
 * what it reads). Byte 0 of the input picks how the rest is cut into reads
 * (1 to 64 bytes, or one piece); each read is an exact-size heap copy so that
 * ASan sees any read past it. Checked: the answer is one of the statuses the
 * endpoint knows, 200 only for a known path, and up to the read size the
 * server uses, the cuts never change the answer. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run(const uint8_t *data, size_t size, size_t step, pgw_http_route_t *route)
{
    pgw_http_req_t q;
    size_t off = 0;
    int status = 0;

    pgw_http_req_init(&q);
    *route = PGW_ROUTE_NONE;
    while (off < size && status == 0) {
        size_t n = size - off < step ? size - off : step;
        char *copy = malloc(n);
        memcpy(copy, data + off, n);
        status = pgw_http_req_feed(&q, copy, n, route);
        free(copy);
        off += n;
    }
    switch (status) {
    case 0: case 400: case 404: case 405: case 414: case 431:
        if (*route != PGW_ROUTE_NONE)
            abort();
        break;
    case 200:
        if (*route == PGW_ROUTE_NONE || !q.complete)
            abort();
        if (strcmp(q.url, "/metrics") && strcmp(q.url, "/healthz") && strcmp(q.url, "/readyz"))
            abort();
        break;
    default:
        abort();
    }
    if (status == 0 && q.got != size)
        abort();
    if (status) {
        /* Done: more bytes change nothing. */
        pgw_http_route_t r2;
        if (pgw_http_req_feed(&q, "GET /healthz HTTP/1.1\r\n\r\n", 25, &r2) != 400)
            abort();
    }
    return status;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pgw_http_route_t r1, r2;
    size_t step;
    int s1, s2;

    if (size < 1 || size > 4 * PGW_HTTP_REQ_MAX_BYTES)
        return 0;
    step = data[0] % 65 ? data[0] % 65 : PGW_HTTP_REQ_MAX_BYTES;
    data++;
    size--;
    s1 = run(data, size, PGW_HTTP_REQ_MAX_BYTES, &r1);
    s2 = run(data, size, step, &r2);
    if (size <= PGW_HTTP_REQ_MAX_BYTES && (s1 != s2 || r1 != r2))
        abort();
    return 0;
}
