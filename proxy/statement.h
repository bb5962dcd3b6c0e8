/* From a tracked statement to the statement fields of its audit event:
 * SQL analysis through this thread's analysis cache (protocol/analysis.c),
 * redaction, and the split of a Query into statements.
 *
 * The cache belongs to one loop thread; nothing here is shared. */
#ifndef PGW_STATEMENT_H
#define PGW_STATEMENT_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "pgwarden/analysis.h"
#include "pgwarden/event.h"
#include "tracker.h"

struct pgw_analysis_cache;

/* What an event borrows from the analysis until it is encoded. */
typedef struct pgw_stmt_view {
    pgw_analysis_t an;              /* holds references to cached infos */
    int has_an;
    pgw_event_object_t inline_objects[16];
    pgw_event_object_t *heap_objects;
} pgw_stmt_view_t;

struct pgw_analysis_cache *pgw_statement_cache_new(const pgw_config_t *cfg);
void pgw_statement_cache_free(struct pgw_analysis_cache *c);

/* Fills out (text, redacted, fingerprint, command, class, objects,
 * parse_error) for the statement d; out borrows from view until
 * pgw_statement_view_free(view). */
void pgw_statement_describe(struct pgw_analysis_cache *c, const pgw_stmt_done_t *d,
                            pgw_stmt_view_t *view, pgw_event_statement_t *out);
void pgw_statement_view_free(pgw_stmt_view_t *view);

/* pgw_split_fn for the tracker. */
unsigned pgw_statement_split(struct pgw_analysis_cache *c, const char *text, size_t len,
                             uint32_t (*spans)[2], unsigned cap);

#endif
