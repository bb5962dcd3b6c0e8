/* The statement tracker's server side: each backend message matched to the
 * head of the FIFO that tracker.c fills. Results and errors complete their
 * executions; after an extended-protocol error what is queued up to Sync is
 * reported skipped; an Execute that completed waits in the held list until
 * its Sync commits it; ReadyForQuery ends a Query, and outside a
 * transaction block every portal; a walsender command's several results are
 * one execution. */
#include "tracker_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* An Execute that reached CommandComplete, waiting for its Sync: the
 * server commits an implicit transaction only at Sync, so an error there (a
 * deferred constraint, a serialization failure, a FATAL from a shutdown) or
 * a connection lost before its ReadyForQuery means the statement's effects
 * were never committed. The item keeps its references; the tag is copied. */
struct pgw_held {
    pgw_tracker_item_t it;
    int64_t done_us;
    pgw_complete_t cc;
    int has_cc;
    char *tag_heap;                 /* a tag too long for tag_buf */
    char tag_buf[40];
};

#define HELD_MAX 1024               /* a longer pipeline without Sync: reported as executed */

/* Reports the held executions, in order: ok with their tags, or the error
 * (or unknown) that ended their transaction before it committed. */
void tracker_release_held(pgw_tracker_t *t, pgw_result_status_t status, const pgw_error_t *err)
{
    for (unsigned i = 0; i < t->nheld; i++) {
        struct pgw_held *h = &t->held[i];
        int ok = status == PGW_STATUS_OK;
        h->cc.tag = h->tag_heap ? h->tag_heap : h->tag_buf;    /* the list may have moved */
        tracker_emit_now(t, &h->it, h->it.portal, NULL, &h->it.acc, status, ok && h->has_cc ? &h->cc : NULL,
                         err, h->done_us);
        free(h->tag_heap);
        tracker_item_release(t, &h->it);
    }
    t->nheld = 0;
}

/* After an error in the extended protocol the server skips everything up
 * to Sync: what was queued behind the failed message is reported skipped.
 * An error at Parse or Bind is the failure of the execution that follows:
 * err then goes with the first Execute instead of a "skipped", so that one
 * execution gives one event; failed (the Parse or Bind item, already
 * popped) is reported itself only when no Execute was queued behind it. */
static void skip_to_sync(pgw_tracker_t *t, const pgw_error_t *err, pgw_tracker_item_t *failed,
                         int64_t now_us)
{
    pgw_tracker_item_t *it;
    while ((it = tracker_head(t)) && it->kind != IT_SYNC) {
        if (it->kind == IT_EXECUTE && err) {
            tracker_emit(t, it, it->portal, failed ? failed->stmt : NULL, &it->acc, PGW_STATUS_ERROR,
                         NULL, err, now_us);
            err = NULL;
        } else if (it->kind == IT_EXECUTE) {
            tracker_emit(t, it, it->portal, NULL, &it->acc, PGW_STATUS_SKIPPED, NULL, NULL, now_us);
        } else if (it->kind == IT_QUERY) {
            tracker_emit(t, it, NULL, NULL, &it->acc, PGW_STATUS_SKIPPED, NULL, NULL, now_us);
        } else if (it->kind == IT_PARSE) {
            tracker_unmap_prepared(t, it->stmt);
        } else if (it->kind == IT_BIND) {
            tracker_unmap_portal(t, it->portal, now_us);
        }
        tracker_pop(t);
    }
    if (err && failed)
        tracker_emit(t, failed, failed->portal, failed->stmt, &failed->acc, PGW_STATUS_ERROR, NULL, err,
                     now_us);
    if (!it)
        t->skip_until_sync = 1;
}

static void on_error(pgw_tracker_t *t, const pgw_msg_t *m, int64_t now_us)
{
    pgw_tracker_item_t *it = tracker_head(t);
    pgw_error_t e;
    if ((!it && !t->nheld) || pgw_parse_error(m, &e))
        return;
    /* What is held was never committed when the implicit commit at Sync
     * fails (a deferred constraint, a serialization failure) or the server
     * ends the session before a Sync could commit it (also when the client
     * had not sent that Sync yet): it carries the error. */
    if (t->nheld && ((it && it->kind == IT_SYNC) ||
                     (e.severity && (strcmp(e.severity, "FATAL") == 0 ||
                                     strcmp(e.severity, "PANIC") == 0)))) {
        tracker_release_held(t, PGW_STATUS_ERROR, &e);
        if (it && it->kind == IT_SYNC)
            return;                 /* the commit's error: carried by what was held */
    }
    if (!it)
        return;
    t->repl.pending = 0;            /* the error is the command's outcome */
    switch (it->kind) {
    case IT_QUERY:
        if (it->cur < (it->nstmts ? it->nstmts : 1)) {
            tracker_emit(t, it, NULL, NULL, &it->acc, PGW_STATUS_ERROR, NULL, &e, now_us);
            it->cur++;
        }
        it->errored = 1;            /* the rest are skipped: reported at ReadyForQuery */
        return;
    case IT_FCALL:
        tracker_emit(t, it, NULL, NULL, &it->acc, PGW_STATUS_ERROR, NULL, &e, now_us);
        it->errored = 1;
        return;
    case IT_SYNC:
        t->errors++;                /* a commit error with no execution to carry it */
        return;
    case IT_EXECUTE:
        tracker_emit(t, it, it->portal, NULL, &it->acc, PGW_STATUS_ERROR, NULL, &e, now_us);
        tracker_pop(t);
        skip_to_sync(t, NULL, NULL, now_us);
        return;
    case IT_PARSE:
    case IT_BIND: {
        /* Keep the failed item (its references) while what follows is
         * matched; it is released after. */
        pgw_tracker_item_t failed = *it;
        t->head = (t->head + 1) % t->cap;
        t->count--;
        if (failed.kind == IT_PARSE)
            tracker_unmap_prepared(t, failed.stmt);
        else
            tracker_unmap_portal(t, failed.portal, now_us);
        skip_to_sync(t, &e, &failed, now_us);
        tracker_item_release(t, &failed);
        return;
    }
    default:
        tracker_pop(t);
        skip_to_sync(t, NULL, NULL, now_us);
        return;
    }
}

/* A walsender command whose tag came: reported as it completed. */
void tracker_repl_report(pgw_tracker_t *t, pgw_tracker_item_t *it, int64_t now_us)
{
    if (!t->repl.pending)
        return;
    t->repl.pending = 0;
    if (it && it->kind == IT_QUERY && it->cur < it->nstmts) {
        pgw_complete_t cc = { t->repl.tag, t->repl.rows, t->repl.has_rows };
        tracker_emit(t, it, NULL, NULL, &it->acc, PGW_STATUS_OK, &cc, NULL, now_us);
        it->cur++;
    }
}

static void on_ready(pgw_tracker_t *t, const pgw_msg_t *m, int64_t now_us)
{
    if (t->nheld)
        tracker_release_held(t, PGW_STATUS_OK, NULL);   /* committed, or still in a block */
    pgw_tracker_item_t *it = tracker_head(t);
    tracker_repl_report(t, it, now_us);
    if (it && it->kind == IT_QUERY) {
        /* Statements after an error in the same Query never ran. */
        for (; it->cur < it->nstmts; it->cur++) {
            it->acc.start_us = now_us;
            tracker_emit(t, it, NULL, NULL, &it->acc, it->errored ? PGW_STATUS_SKIPPED : PGW_STATUS_UNKNOWN,
                         NULL, NULL, now_us);
        }
        tracker_pop(t);
    } else if (it && it->kind == IT_FCALL) {
        if (!it->errored)
            tracker_emit(t, it, NULL, NULL, &it->acc, it->answered_us ? PGW_STATUS_OK : PGW_STATUS_UNKNOWN,
                         NULL, NULL, it->answered_us ? it->answered_us : now_us);
        tracker_pop(t);
    } else if (it && it->kind == IT_SYNC) {
        tracker_pop(t);
    }
    pgw_ready_t r;
    /* Outside a transaction block no portal survives. */
    if (pgw_parse_ready(m, &r) == 0 && r.status == 'I')
        while (t->portals)
            tracker_unmap_portal(t, t->portals, now_us);
}

/* Statements whose transaction the server ends when their Execute
 * completes, not at Sync: the ends of a transaction, and the statements
 * that cannot run in a transaction block and so commit at once (PostgreSQL
 * finishes the transaction before CommandComplete for both). BEGIN or
 * SAVEPOINT end nothing and wait for their Sync like any other. A tag
 * shared by both kinds (CREATE INDEX, CONCURRENTLY or not) asks the
 * statement's analysis through own_xact; without it, it waits. */
static int commits_at_completion(pgw_tracker_t *t, const pgw_tracker_item_t *it, const char *tag)
{
    /* ask: the tag is shared with forms that commit at once (CONCURRENTLY,
     * every table): the statement's analysis decides. */
    static const struct { const char *tag; int ask; } tags[] = {
        { "COMMIT", 0 }, { "ROLLBACK", 0 }, { "PREPARE TRANSACTION", 0 }, { "COMMIT PREPARED", 0 },
        { "ROLLBACK PREPARED", 0 }, { "CREATE DATABASE", 0 }, { "DROP DATABASE", 0 },
        { "CREATE TABLESPACE", 0 }, { "DROP TABLESPACE", 0 }, { "ALTER SYSTEM", 0 }, { "VACUUM", 0 },
        { "DISCARD ALL", 0 }, { "CREATE INDEX", 1 }, { "DROP INDEX", 1 }, { "REINDEX", 1 },
        { "CLUSTER", 1 }, { "ALTER DATABASE", 1 },
    };
    if (!tag)
        return 0;
    switch (tag[0]) {               /* SELECT, INSERT, UPDATE: no look-up */
    case 'A': case 'C': case 'D': case 'P': case 'R': case 'V':
        break;
    default:
        return 0;
    }
    for (size_t i = 0; i < sizeof tags / sizeof tags[0]; i++) {
        if (tags[i].tag[0] != tag[0] || strcmp(tag, tags[i].tag) != 0)
            continue;
        if (!tags[i].ask)
            return 1;
        pgw_prepared_t *st = it->portal ? it->portal->stmt : NULL;
        return t->own_xact && st && t->own_xact(t->ud, st->text, st->text_len, &st->memo);
    }
    return 0;
}

/* Takes the completed Execute at the head of the FIFO into the held list
 * (its references move with it). */
static void hold(pgw_tracker_t *t, pgw_tracker_item_t *it, const pgw_complete_t *cc, int64_t now_us)
{
    if (t->nheld == HELD_MAX)
        tracker_release_held(t, PGW_STATUS_OK, NULL);
    if (t->nheld == t->held_cap) {
        unsigned ncap = t->held_cap ? t->held_cap * 2 : 4;
        struct pgw_held *n = realloc(t->held, ncap * sizeof *n);
        if (!n) {
            tracker_emit(t, it, it->portal, NULL, &it->acc, PGW_STATUS_OK, cc, NULL, now_us);
            tracker_pop(t);
            return;
        }
        t->held = n;
        t->held_cap = ncap;
    }
    struct pgw_held *h = &t->held[t->nheld];
    h->it = *it;
    h->done_us = now_us;
    /* cc.tag is pointed at when the list is released: the list may move. */
    h->has_cc = cc && cc->tag;
    h->cc = h->has_cc ? *cc : (pgw_complete_t){ 0 };
    h->tag_heap = NULL;
    h->tag_buf[0] = '\0';
    if (h->has_cc) {
        size_t n = strlen(cc->tag);
        if (n < sizeof h->tag_buf)
            memcpy(h->tag_buf, cc->tag, n + 1);
        else
            h->tag_heap = tracker_dup_n(cc->tag, n);
    }
    t->nheld++;
    /* The slot is vacated without releasing what moved to the held list
     * (push clears a slot before reuse). */
    t->head = (t->head + 1) % t->cap;
    t->count--;
}

static void on_complete(pgw_tracker_t *t, const pgw_msg_t *m, int empty, int64_t now_us)
{
    pgw_tracker_item_t *it = tracker_head(t);
    pgw_complete_t cc;
    const pgw_complete_t *ccp = NULL;
    if (!it)
        return;
    if (!empty && pgw_parse_command_complete(m, &cc) == 0)
        ccp = &cc;
    if (it->kind == IT_QUERY) {
        if (t->replication && ccp && it->nstmts == 1 && it->cur == 0) {
            /* BASE_BACKUP answers with its start, its tablespaces, the
             * archive's COPY, its end and then its own tag: one execution,
             * reported at ReadyForQuery with everything it returned. */
            snprintf(t->repl.tag, sizeof t->repl.tag, "%s", ccp->tag);
            t->repl.rows = ccp->rows;
            t->repl.has_rows = ccp->has_rows;
            t->repl.pending = 1;
            return;
        }
        if (it->cur < it->nstmts) {
            tracker_emit(t, it, NULL, NULL, &it->acc, PGW_STATUS_OK, ccp, NULL, now_us);
            it->cur++;
            memset(&it->acc, 0, sizeof it->acc);
            it->acc.start_us = now_us;  /* the next statement starts when this one ends */
        }
    } else if (it->kind == IT_EXECUTE) {
        if (ccp && commits_at_completion(t, it, ccp->tag)) {
            /* Already ended its transaction: reported now, after anything
             * held, which that transaction carried. */
            tracker_emit(t, it, it->portal, NULL, &it->acc, PGW_STATUS_OK, ccp, NULL, now_us);
            tracker_pop(t);
        } else {
            hold(t, it, ccp, now_us);
        }
    }
}

void pgw_tracker_backend(pgw_tracker_t *t, const pgw_msg_t *m, int64_t now_us)
{
    if (t->failed)
        return;
    pgw_tracker_item_t *it = tracker_head(t);
    switch (m->type) {
    case 'D':
        if (it && (it->kind == IT_QUERY || it->kind == IT_EXECUTE)) {
            it->acc.rows++;
            it->acc.bytes += (uint64_t)m->len + 1;
        }
        break;
    case 'd':
        if (it && (it->kind == IT_QUERY || it->kind == IT_EXECUTE)) {
            it->acc.copy_bytes += m->body_len;
            it->acc.bytes += (uint64_t)m->len + 1;
        }
        break;
    case 'C': on_complete(t, m, 0, now_us); break;
    case 'I': on_complete(t, m, 1, now_us); break;
    case 'E': on_error(t, m, now_us); break;
    case 'Z': on_ready(t, m, now_us); break;
    case 'G':
    case 'H':
    case 'W':   /* CopyBoth (START_REPLICATION): the data flows to the client */
        if (it && (it->kind == IT_QUERY || it->kind == IT_EXECUTE))
            it->acc.copy_dir = m->type == 'G' ? PGW_COPY_IN : PGW_COPY_OUT;
        break;
    case 's':
        if (it && it->kind == IT_EXECUTE) {
            if (it->portal) {
                it->portal->acc = it->acc;
                it->portal->acc.resumed = 1;
                it->portal->admit = it->admit;
                it->portal->suspended = 1;
            }
            tracker_pop(t);
        }
        break;
    case 'V':
        /* The server commits a function call after its answer: reported
         * at ReadyForQuery, or with the error that failed the commit. */
        if (it && it->kind == IT_FCALL && !it->errored) {
            it->answered_us = now_us;
            it->acc.bytes += (uint64_t)m->len + 1;
        }
        break;
    case '1':
        if (it && it->kind == IT_PARSE)
            tracker_pop(t);
        break;
    case '2':
        if (it && it->kind == IT_BIND)
            tracker_pop(t);
        break;
    case '3':
        if (it && it->kind == IT_CLOSE) {
            if (it->close_kind == 'S')
                tracker_unmap_prepared(t, it->stmt);
            else
                tracker_unmap_portal(t, it->portal, now_us);
            tracker_pop(t);
        }
        break;
    case 'T':
    case 'n':
        if (it && it->kind == IT_DESCRIBE)
            tracker_pop(t);
        break;
    default:
        break;                      /* t, S, N, A, K, R, v, W: no statement to match */
    }
}
