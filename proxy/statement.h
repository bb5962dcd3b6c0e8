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
    const pgw_analysis_t *src;      /* what is reported: &an, or a memo's analysis */
    uint32_t idx;                   /* the statement of src */
    struct stmt_memo *memo;         /* a prepared statement's memo, reused */
    int has_an;
    int rc;                         /* of the analysis: 0 or -errno */
    pgw_event_object_t inline_objects[16];
    pgw_event_object_t *heap_objects;
} pgw_stmt_view_t;

struct pgw_analysis_cache *pgw_statement_cache_new(const pgw_config_t *cfg);
void pgw_statement_cache_free(struct pgw_analysis_cache *c);

/* Statements longer than this are never parsed on a loop thread: a miss
 * goes to libuv's thread pool (a 1 MB INSERT takes a quarter second). */
#define PGW_ANALYSIS_SYNC_MAX (4 * 1024)

/* Analyses d on this thread: from the memo its text carries, from the
 * cache, or with the parser when the text is short; the analysis of a
 * prepared statement is then kept in its memo for its next executions.
 * Returns 1 when the view is ready (or nothing is to be analysed), 0 when
 * the text must be parsed elsewhere into view->an (pgw_statement_parse,
 * then pgw_statement_learn on this thread). A view may be moved only
 * before it is ready, or with pgw_statement_view_move. */
int pgw_statement_analyze(struct pgw_analysis_cache *c, const pgw_stmt_done_t *d,
                          pgw_stmt_view_t *view);
/* The parse for pgw_statement_analyze's 0: any thread, no cache. */
void pgw_statement_parse(const pgw_stmt_done_t *d, pgw_stmt_view_t *view);
/* Back on the cache's thread: remembers what pgw_statement_parse found. */
void pgw_statement_learn(struct pgw_analysis_cache *c, pgw_stmt_view_t *view);
/* This thread's encoded analysis fields of recently reported statements
 * (statement.c): events of a repeated query shape copy them. */
struct pgw_frag_cache;
struct pgw_frag_cache *pgw_frag_cache_new(void);
void pgw_frag_cache_free(struct pgw_frag_cache *fc);   /* NULL is fine */
/* Frees the calling thread's spare memos (kept for reuse): at the end of a
 * thread that made them. */
void pgw_statement_thread_done(void);

/* Fills out (text, redacted, fingerprint, command, class, objects,
 * parse_error, or their encoded form in analysis_json) from view; out
 * borrows from view and fc until pgw_statement_view_free(view) and the
 * next call with fc. fc may be NULL (nothing kept). A text longer than
 * text_max bytes is cut there (at a character's start) and marked
 * truncated. */
void pgw_statement_fill(struct pgw_frag_cache *fc, const pgw_stmt_done_t *d, pgw_stmt_view_t *view,
                        pgw_event_statement_t *out, uint32_t text_max);
void pgw_statement_view_free(pgw_stmt_view_t *view);
/* The analysis of the statement view reports, or NULL (not analysed, a
 * parse that failed for want of memory). */
pgw_sql_info_t *pgw_statement_info(const pgw_stmt_view_t *view);
/* After pgw_statement_fill: out names from's relations instead of its own
 * (an EXECUTE, what its PREPARE reads and writes), and is encoded field by
 * field rather than from a cached fragment. */
void pgw_statement_fill_objects(pgw_stmt_view_t *view, const pgw_sql_info_t *from,
                                pgw_event_statement_t *out);
/* *to = *from, keeping what the view reports. */
void pgw_statement_view_move(pgw_stmt_view_t *to, const pgw_stmt_view_t *from);

/* pgw_split_fn for the tracker: a single-statement Query that is analysed
 * here leaves its analysis as the Query's memo, so that describing it when
 * it completes costs no second look-up. */
unsigned pgw_statement_split(struct pgw_analysis_cache *c, const char *text, size_t len,
                             uint32_t (*spans)[2], unsigned cap, pgw_memo_t **memo);
/* The same from an analysis of the whole text made already (the access
 * policy's): a lone statement's analysis moves into *memo (an left empty),
 * else an is left as it was. */
unsigned pgw_statement_split_given(pgw_analysis_t *an, uint32_t (*spans)[2], unsigned cap,
                                   pgw_memo_t **memo);

/* pgw_own_xact_fn for the tracker: does this prepared statement's text
 * commit at once (PGW_SQL_OWN_TRANSACTION)? Analysed as for its event
 * (pgw_statement_analyze), which then finds the analysis in the memo. */
int pgw_statement_own_transaction(struct pgw_analysis_cache *c, const char *text, size_t len,
                                  pgw_memo_t **memo);

#endif
