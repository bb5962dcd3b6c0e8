/* The statement tracker: matches what a client sent with what the server
 * answered, in order, and reports each statement execution once its result
 * is known.
 *
 * Per session, a FIFO of the frontend messages that await a response
 * (Query, Parse, Bind, Describe, Execute, Close, Sync, FunctionCall) is
 * consumed by the backend messages as they arrive. It follows the protocol's
 * own rules: several statements in one Query each get their own result, and
 * after an error the rest are skipped; in the extended protocol an error
 * makes the server skip everything until Sync; PortalSuspended leaves an
 * execution open until its portal completes. Prepared statements are
 * remembered by name, so an Execute of "stmt1" long after its Parse still
 * carries its text.
 *
 * Pure bookkeeping: no sockets, no clock reads (times are passed in), and
 * one session's tracker is touched by its loop thread only. */
#ifndef PGW_TRACKER_H
#define PGW_TRACKER_H

#include <stddef.h>
#include <stdint.h>

#include "pgwarden/event.h"
#include "pgwarden/protocol.h"

/* What the admit callback gives an execution, handed back in its
 * completion (zero when there is no admit callback). */
typedef struct pgw_stmt_admit {
    uint64_t seq, token;
} pgw_stmt_admit_t;

/* Whatever the tracker's user learned about a statement text (its SQL
 * analysis), kept with the text so that the thousandth execution of a
 * prepared statement does not learn it again. The tracker frees it with the
 * text, through its own free function. */
typedef struct pgw_memo {
    void (*free)(struct pgw_memo *m);
} pgw_memo_t;

/* One statement execution, complete. Every pointer is borrowed for the
 * duration of the emit callback. */
typedef struct pgw_stmt_done {
    pgw_stmt_protocol_t protocol;
    const char *text;               /* the statement's SQL as sent (its slice of a Query) */
    size_t text_len;
    const char *query;              /* the whole Query message text (simple protocol) */
    size_t query_len;
    const char *stmt_name, *portal_name;   /* extended protocol; "" = unnamed */
    unsigned index, count;          /* 1-based position within a Query; 0 otherwise */
    int nparams;                    /* Bind parameters; -1 when not applicable */
    const pgw_event_param_t *params;   /* their values when logged; NULL otherwise */
    int64_t time_us;                /* receipt of the message that started it (realtime) */
    int64_t duration_us;
    pgw_result_status_t status;
    const char *tag;                /* CommandComplete tag; NULL if none */
    int has_rows;
    uint64_t rows;                  /* from the tag, else DataRows counted */
    uint64_t bytes;                 /* result data sent to the client */
    const char *sqlstate, *message; /* ErrorResponse; NULL if none */
    pgw_copy_dir_t copy_dir;
    uint64_t copy_bytes;
    /* The memo slot of the text: the prepared statement's (extended
     * protocol), or the whole Query's (simple protocol, as the split
     * callback left it; index tells which statement of it this is). NULL
     * when there is none. The callback may fill an empty slot. */
    pgw_memo_t **memo;
    pgw_stmt_admit_t admit;
} pgw_stmt_done_t;

/* Splits a Query text into statements: fills up to cap (offset, length)
 * pairs and returns how many statements there are (may exceed cap), or 0 if
 * the text holds none. It may leave a memo of what it learned in *memo
 * (which is NULL on entry), kept with the Query until its last statement is
 * reported. NULL: the whole text is one statement. */
typedef unsigned (*pgw_split_fn)(void *ud, const char *text, size_t len,
                                 uint32_t (*spans)[2], unsigned cap, pgw_memo_t **memo);
typedef void (*pgw_emit_fn)(void *ud, const pgw_stmt_done_t *done);
/* An execution the server may run, seen before it is forwarded: `pending`
 * is what pgw_tracker_finish would report now (status unknown). Each
 * statement of a Query, each Execute (not its continuation after
 * PortalSuspended) and each FunctionCall is admitted once, and its one
 * completion carries what the callback wrote into *out. */
typedef void (*pgw_admit_fn)(void *ud, const pgw_stmt_done_t *pending, pgw_stmt_admit_t *out);
/* Asked at the CommandComplete of an Execute whose tag is shared by forms
 * that commit at once and forms that wait for Sync (CREATE INDEX and
 * CREATE INDEX CONCURRENTLY): does this text commit at once? The memo slot
 * is the prepared statement's, as for emit. */
typedef int (*pgw_own_xact_fn)(void *ud, const char *text, size_t len, pgw_memo_t **memo);

typedef struct pgw_tracker_item pgw_tracker_item_t;
typedef struct pgw_prepared pgw_prepared_t;
typedef struct pgw_portal pgw_portal_t;

typedef struct pgw_tracker {
    pgw_emit_fn emit;
    pgw_split_fn split;
    void *ud;
    uint32_t param_max;             /* log Bind values up to this many bytes each; 0: not at all */
    pgw_admit_fn admit;             /* optional (the spool's crash guarantee); set after init */
    pgw_own_xact_fn own_xact;       /* optional; without it those statements wait for Sync */

    pgw_tracker_item_t *items;      /* ring of pending frontend messages */
    unsigned head, count, cap;
    int skip_until_sync;            /* an extended-protocol error was reported */
    pgw_prepared_t *skip_stmt;      /* while skipping: what the next Execute would have run */

    pgw_prepared_t *prepared;       /* named and unnamed statements */
    pgw_portal_t *portals;
    pgw_portal_t *spare_portal;     /* a freed portal, for the next Bind */
    char *spare_block;              /* a freed Query block, for the next Query */
    size_t spare_block_cap;
    /* Executions completed but not yet committed: outside a transaction
     * block the server commits at Sync, after their CommandComplete. */
    struct pgw_held *held;
    unsigned nheld, held_cap;

    /* A walsender session (startup parameter replication): a Query of one
     * command answers with several results and its own tag last (set by
     * the owner before the first message). */
    int replication;
    struct {
        int pending;                /* the command completed; ReadyForQuery reports it */
        char tag[64];
        uint64_t rows;
        int has_rows;
    } repl;

    /* counters for session_end */
    uint64_t statements, errors;
    int failed;                     /* out of memory: tracking stopped */
} pgw_tracker_t;

void pgw_tracker_init(pgw_tracker_t *t, pgw_emit_fn emit, pgw_split_fn split, void *ud);
/* A message from the client, at realtime now_us. Call before forwarding it. */
void pgw_tracker_frontend(pgw_tracker_t *t, const pgw_msg_t *m, int64_t now_us);
/* A message from the server, at realtime now_us. */
void pgw_tracker_backend(pgw_tracker_t *t, const pgw_msg_t *m, int64_t now_us);
/* The session ended: what was forwarded but never answered is reported with
 * status unknown, then everything is freed. */
void pgw_tracker_finish(pgw_tracker_t *t, int64_t now_us);

#endif
