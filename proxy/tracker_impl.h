/* The tracker's insides, shared by tracker.c (the FIFO, the name maps, the
 * client's messages, the reports) and tracker_backend.c (the server's
 * answers matched to the FIFO). Nothing outside these two files includes
 * this header. What is called for every message is static inline here, so
 * that the split costs the hot path no call it did not already make. */
#ifndef PGW_TRACKER_IMPL_H
#define PGW_TRACKER_IMPL_H

#include <stdlib.h>
#include <string.h>

#include "tracker.h"

/* What the server tells about one execution while it runs. */
typedef struct acc {
    int64_t start_us;
    uint64_t rows, bytes, copy_bytes;
    pgw_copy_dir_t copy_dir;
    uint8_t resumed;    /* went on after a PortalSuspended: the tag counts the last fetch only */
} acc_t;

/* A statement prepared by Parse. Shared by the name map, the Parse item and
 * every portal bound to it: the text outlives a Close or a re-Parse of the
 * name while an execution still needs it. */
struct pgw_prepared {
    pgw_prepared_t *next;
    unsigned refs;
    int in_map;
    char *name;
    char *text;
    size_t text_len;
    pgw_memo_t *memo;
};

struct pgw_portal {
    pgw_portal_t *next;
    unsigned refs;
    int in_map;
    char *name;                     /* name_buf, or the heap for a long name */
    char name_buf[24];
    pgw_prepared_t *stmt;           /* NULL when Bind named an unknown statement */
    int nparams;
    pgw_event_param_t *params;      /* values, when logged: one block with their bytes */
    int suspended;                  /* PortalSuspended: the execution goes on */
    acc_t acc;
    pgw_stmt_admit_t admit;         /* of the suspended execution */
};

enum item_kind { IT_QUERY, IT_PARSE, IT_BIND, IT_DESCRIBE, IT_EXECUTE, IT_CLOSE, IT_SYNC, IT_FCALL };

struct pgw_tracker_item {
    uint8_t kind;
    uint8_t close_kind;             /* IT_CLOSE: 'S' or 'P' */
    int64_t time_us;
    pgw_prepared_t *stmt;           /* IT_PARSE, IT_CLOSE 'S' */
    pgw_portal_t *portal;           /* IT_BIND, IT_EXECUTE, IT_CLOSE 'P'; IT_FCALL: its
                                     * arguments, in a portal of its own (not mapped) */
    acc_t acc;                      /* IT_QUERY (current statement), IT_EXECUTE, IT_FCALL */
    /* IT_QUERY; IT_FCALL: the call as text */
    char *text;                     /* the whole Query text, then the spans */
    size_t text_len, block_cap;
    uint32_t (*spans)[2];
    pgw_memo_t *memo;
    unsigned nstmts, cur;
    int errored;                    /* IT_QUERY: an error ended it; IT_FCALL: reported */
    int64_t answered_us;            /* IT_FCALL: its FunctionCallResponse came (0: not yet) */
    pgw_stmt_admit_t admit;         /* IT_EXECUTE, IT_FCALL */
    pgw_stmt_admit_t *admits;       /* IT_QUERY, one per statement (in the text's block); NULL without admit */
};

static inline char *tracker_dup_n(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* ---- the FIFO (tracker.c) ------------------------------------------------ */

/* The oldest message still awaiting its answer; NULL when none. */
static inline pgw_tracker_item_t *tracker_head(pgw_tracker_t *t)
{
    return t->count ? &t->items[t->head] : NULL;
}

/* Drops the item's references and its text (a small Query block is kept as
 * the tracker's spare); the slot itself is left to the caller. */
void tracker_item_release(pgw_tracker_t *t, pgw_tracker_item_t *it);

/* Releases the head of the FIFO and removes it; there must be one. */
static inline void tracker_pop(pgw_tracker_t *t)
{
    tracker_item_release(t, &t->items[t->head]);
    t->head = (t->head + 1) % t->cap;
    t->count--;
}

/* ---- the name maps (tracker.c) ------------------------------------------- */

/* Take a statement or a portal out of its map, dropping the map's
 * reference; nothing when p is NULL or no longer mapped. */
void tracker_unmap_prepared(pgw_tracker_t *t, pgw_prepared_t *p);
void tracker_unmap_portal(pgw_tracker_t *t, pgw_portal_t *p, int64_t now_us);

/* ---- reports ------------------------------------------------------------- */

/* Reports one execution through t->emit and counts it for session_end.
 * it, portal and stmt are borrowed: whichever are known (tracker.c). */
void tracker_emit_now(pgw_tracker_t *t, pgw_tracker_item_t *it, pgw_portal_t *portal,
                      pgw_prepared_t *stmt, const acc_t *acc, pgw_result_status_t status,
                      const pgw_complete_t *cc, const pgw_error_t *err, int64_t now_us);

/* Reports the executions held until their Sync, with status (and err), and
 * empties the list (tracker_backend.c). */
void tracker_release_held(pgw_tracker_t *t, pgw_result_status_t status, const pgw_error_t *err);

/* Reports one execution, after what is held. */
static inline void tracker_emit(pgw_tracker_t *t, pgw_tracker_item_t *it, pgw_portal_t *portal,
                                pgw_prepared_t *stmt, const acc_t *acc, pgw_result_status_t status,
                                const pgw_complete_t *cc, const pgw_error_t *err, int64_t now_us)
{
    /* Anything reported after a held execution means its Sync passed
     * without a commit error, or a later statement of the same pipeline is
     * being reported: the held ones go first, so events keep their order. */
    if (t->nheld)
        tracker_release_held(t, PGW_STATUS_OK, NULL);
    tracker_emit_now(t, it, portal, stmt, acc, status, cc, err, now_us);
}

/* A walsender command whose tag came is reported, if one is pending
 * (tracker_backend.c). */
void tracker_repl_report(pgw_tracker_t *t, pgw_tracker_item_t *it, int64_t now_us);

#endif
