/* One realistic sample of every protocol 3.0 message type, both directions,
 * built with the pgw_wb builder. The framer tests concatenate them into
 * streams; the message tests round-trip each one. */
#ifndef PGW_TEST_SAMPLES_H
#define PGW_TEST_SAMPLES_H

#include <stddef.h>
#include <stdint.h>

#include "pgwarden/protocol.h"

enum {
    SAMPLE_STARTUP = 1,   /* startup-phase packet (no type byte) */
    SAMPLE_SHORT = 2,     /* part of the short streams */
    SAMPLE_BIG = 4,       /* body of several KiB */
    SAMPLE_STREAM = 8,    /* part of the full streams */
};

typedef struct sample {
    const char *name;
    pgw_side_t side;
    unsigned flags;
    void (*build)(pgw_wb_t *w);
} sample_t;

extern const sample_t pgw_samples[];
extern const size_t pgw_nsamples;

/* Builds one sample into a malloc'd buffer; *len gets its size. */
uint8_t *sample_build(const sample_t *s, size_t *len);

/* Concatenates the samples of one side whose flags include all of `flags`,
 * in table order (frontend: SSLRequest, GSSENCRequest, StartupMessage first).
 * Returns a malloc'd buffer; *len and *count get its size and message count. */
uint8_t *sample_stream(pgw_side_t side, unsigned flags, size_t *len, size_t *count);

#endif
