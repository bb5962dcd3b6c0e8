#include "tracker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* ---- helpers ------------------------------------------------------------- */

static char *dup_n(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static void memo_free(pgw_memo_t *m)
{
    if (m)
        m->free(m);
}

static void prepared_unref(pgw_prepared_t *p)
{
    if (p && --p->refs == 0) {
        memo_free(p->memo);
        free(p->name);
        free(p->text);
        free(p);
    }
}

/* The last reference gone: a portal is kept as the tracker's spare, since
 * the next Bind (one per execution in the extended protocol) needs one. */
static void portal_unref(pgw_tracker_t *t, pgw_portal_t *p)
{
    if (p && --p->refs == 0) {
        prepared_unref(p->stmt);
        free(p->params);
        if (p->name != p->name_buf)
            free(p->name);
        if (!t->spare_portal)
            t->spare_portal = p;
        else
            free(p);
    }
}

static pgw_portal_t *portal_new(pgw_tracker_t *t, const char *name)
{
    pgw_portal_t *p = t->spare_portal;
    if (p) {
        t->spare_portal = NULL;
        memset(p, 0, sizeof *p);
    } else if (!(p = calloc(1, sizeof *p))) {
        return NULL;
    }
    size_t n = strlen(name);
    if (n < sizeof p->name_buf) {
        memcpy(p->name_buf, name, n + 1);
        p->name = p->name_buf;
    } else if (!(p->name = dup_n(name, n))) {
        free(p);
        return NULL;
    }
    return p;
}

static void fill(pgw_stmt_done_t *dp, pgw_tracker_item_t *it, pgw_portal_t *portal,
                 pgw_prepared_t *stmt, const acc_t *acc, pgw_result_status_t status,
                 const pgw_complete_t *cc, const pgw_error_t *err, int64_t now_us)
{
#define d (*dp)
    memset(&d, 0, sizeof d);
    d.nparams = -1;
    d.time_us = acc->start_us;
    d.duration_us = now_us > acc->start_us ? now_us - acc->start_us : 0;
    d.status = status;
    d.bytes = acc->bytes;
    d.copy_dir = acc->copy_dir;
    d.copy_bytes = acc->copy_bytes;
    d.rows = acc->rows;
    if (cc) {
        d.tag = cc->tag;
        if (cc->has_rows && !acc->resumed) {
            d.rows = cc->rows;
            d.has_rows = 1;
        } else if (acc->rows || cc->has_rows) {
            d.has_rows = 1;
        }
    } else if (acc->rows) {
        d.has_rows = 1;
    }
    if (err) {
        d.sqlstate = err->sqlstate;
        d.message = err->message;
        if (err->sqlstate && strcmp(err->sqlstate, "57014") == 0)
            d.status = PGW_STATUS_CANCELLED;
    }
    if (it && it->kind == IT_QUERY) {
        d.protocol = PGW_PROTOCOL_SIMPLE;
        d.query = it->text;
        d.query_len = it->text_len;
        if (it->nstmts) {
            d.text = it->text + it->spans[it->cur][0];
            d.text_len = it->spans[it->cur][1];
        } else {
            d.text = it->text;
            d.text_len = it->text_len;
        }
        d.index = it->cur + 1;
        d.count = it->nstmts;
        d.memo = &it->memo;
    } else if (it && it->kind == IT_FCALL) {
        d.protocol = PGW_PROTOCOL_FUNCTION_CALL;
        d.text = it->text;
        d.text_len = it->text_len;
        if (it->portal) {
            d.nparams = it->portal->nparams;
            d.params = it->portal->params;
        }
    } else {
        d.protocol = PGW_PROTOCOL_EXTENDED;
        if (!stmt && portal)
            stmt = portal->stmt;
        if (stmt) {
            d.text = stmt->text;
            d.text_len = stmt->text_len;
            d.stmt_name = stmt->name;
            d.memo = &stmt->memo;
        }
        if (portal) {
            d.portal_name = portal->name;
            d.nparams = portal->nparams;
            d.params = portal->params;
        }
    }
    if (it && it->kind == IT_QUERY)
        d.admit = it->admits ? it->admits[it->cur] : (pgw_stmt_admit_t){ 0, 0 };
    else if (it)
        d.admit = it->admit;
    else if (portal && portal->suspended)
        d.admit = portal->admit;
#undef d
}

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

static void item_release(pgw_tracker_t *t, pgw_tracker_item_t *it);

static void emit_now(pgw_tracker_t *t, pgw_tracker_item_t *it, pgw_portal_t *portal,
                     pgw_prepared_t *stmt, const acc_t *acc, pgw_result_status_t status,
                     const pgw_complete_t *cc, const pgw_error_t *err, int64_t now_us);

/* Reports the held executions, in order: ok with their tags, or the error
 * (or unknown) that ended their transaction before it committed. */
static void release_held(pgw_tracker_t *t, pgw_result_status_t status, const pgw_error_t *err)
{
    for (unsigned i = 0; i < t->nheld; i++) {
        struct pgw_held *h = &t->held[i];
        int ok = status == PGW_STATUS_OK;
        h->cc.tag = h->tag_heap ? h->tag_heap : h->tag_buf;    /* the list may have moved */
        emit_now(t, &h->it, h->it.portal, NULL, &h->it.acc, status, ok && h->has_cc ? &h->cc : NULL,
                 err, h->done_us);
        free(h->tag_heap);
        item_release(t, &h->it);
    }
    t->nheld = 0;
}

static void emit(pgw_tracker_t *t, pgw_tracker_item_t *it, pgw_portal_t *portal,
                 pgw_prepared_t *stmt, const acc_t *acc, pgw_result_status_t status,
                 const pgw_complete_t *cc, const pgw_error_t *err, int64_t now_us)
{
    /* Anything reported after a held execution means its Sync passed
     * without a commit error, or a later statement of the same pipeline is
     * being reported: the held ones go first, so events keep their order. */
    if (t->nheld)
        release_held(t, PGW_STATUS_OK, NULL);
    emit_now(t, it, portal, stmt, acc, status, cc, err, now_us);
}

static void emit_now(pgw_tracker_t *t, pgw_tracker_item_t *it, pgw_portal_t *portal,
                     pgw_prepared_t *stmt, const acc_t *acc, pgw_result_status_t status,
                     const pgw_complete_t *cc, const pgw_error_t *err, int64_t now_us)
{
    pgw_stmt_done_t d;
    fill(&d, it, portal, stmt, acc, status, cc, err, now_us);
    if (d.status != PGW_STATUS_SKIPPED)
        t->statements++;
    if (d.status == PGW_STATUS_ERROR || d.status == PGW_STATUS_CANCELLED)
        t->errors++;
    t->emit(t->ud, &d);
}

/* ---- the name maps ------------------------------------------------------- */

static pgw_prepared_t *find_prepared(pgw_tracker_t *t, const char *name)
{
    for (pgw_prepared_t *p = t->prepared; p; p = p->next)
        if (strcmp(p->name, name) == 0)
            return p;
    return NULL;
}

static void unmap_prepared(pgw_tracker_t *t, pgw_prepared_t *p)
{
    if (!p || !p->in_map)
        return;
    for (pgw_prepared_t **pp = &t->prepared; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    p->in_map = 0;
    prepared_unref(p);
}

static pgw_portal_t *find_portal(pgw_tracker_t *t, const char *name)
{
    for (pgw_portal_t *p = t->portals; p; p = p->next)
        if (strcmp(p->name, name) == 0)
            return p;
    return NULL;
}

/* A portal that was suspended mid-result and never completed still ran:
 * its execution is reported when the portal goes away. */
static void unmap_portal(pgw_tracker_t *t, pgw_portal_t *p, int64_t now_us)
{
    if (!p || !p->in_map)
        return;
    for (pgw_portal_t **pp = &t->portals; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    p->in_map = 0;
    if (p->suspended) {
        p->suspended = 0;
        emit(t, NULL, p, NULL, &p->acc, PGW_STATUS_OK, NULL, NULL, now_us);
    }
    portal_unref(t, p);
}

/* ---- the FIFO ------------------------------------------------------------ */

static pgw_tracker_item_t *push(pgw_tracker_t *t, uint8_t kind, int64_t now_us)
{
    if (t->count == t->cap) {
        unsigned ncap = t->cap ? t->cap * 2 : 16;
        pgw_tracker_item_t *n = malloc(ncap * sizeof *n);
        if (!n) {
            t->failed = 1;
            return NULL;
        }
        for (unsigned i = 0; i < t->count; i++)
            n[i] = t->items[(t->head + i) % t->cap];
        free(t->items);
        t->items = n;
        t->head = 0;
        t->cap = ncap;
    }
    pgw_tracker_item_t *it = &t->items[(t->head + t->count) % t->cap];
    memset(it, 0, sizeof *it);
    it->kind = kind;
    it->time_us = now_us;
    it->acc.start_us = now_us;
    t->count++;
    return it;
}

static pgw_tracker_item_t *head(pgw_tracker_t *t)
{
    return t->count ? &t->items[t->head] : NULL;
}

#define SPARE_BLOCK_MAX 4096        /* a Query block up to this size is reused */

static void item_release(pgw_tracker_t *t, pgw_tracker_item_t *it)
{
    prepared_unref(it->stmt);
    portal_unref(t, it->portal);
    if (it->text && it->block_cap <= SPARE_BLOCK_MAX &&
        (!t->spare_block || t->spare_block_cap < it->block_cap)) {
        free(t->spare_block);       /* the larger one is kept, for the next Query */
        t->spare_block = it->text;
        t->spare_block_cap = it->block_cap;
    } else {
        free(it->text);
    }
    memo_free(it->memo);
    it->stmt = NULL;
    it->portal = NULL;
    it->text = NULL;
    it->memo = NULL;
}

static void pop(pgw_tracker_t *t)
{
    item_release(t, &t->items[t->head]);
    t->head = (t->head + 1) % t->cap;
    t->count--;
}

/* An execution's start: a continued portal keeps its first start time. */
static void begin_execute(pgw_tracker_item_t *it)
{
    pgw_portal_t *p = it->portal;
    if (p && p->suspended) {
        it->acc = p->acc;
        p->suspended = 0;
    }
}

/* Hands the admit callback what the item would report if the session
 * ended now, and keeps its answer for the completion. */
static void admit(pgw_tracker_t *t, pgw_tracker_item_t *it, int64_t now_us)
{
    pgw_stmt_done_t d;
    if (it->kind == IT_QUERY) {
        for (it->cur = 0; it->cur < it->nstmts; it->cur++) {
            fill(&d, it, NULL, NULL, &it->acc, PGW_STATUS_UNKNOWN, NULL, NULL, now_us);
            t->admit(t->ud, &d, &it->admits[it->cur]);
        }
        it->cur = 0;
    } else {
        fill(&d, it, it->portal, NULL, &it->acc, PGW_STATUS_UNKNOWN, NULL, NULL, now_us);
        t->admit(t->ud, &d, &it->admit);
    }
}

/* ---- frontend ------------------------------------------------------------ */

static void set_skip_stmt(pgw_tracker_t *t, pgw_prepared_t *p)
{
    if (p)
        p->refs++;
    prepared_unref(t->skip_stmt);
    t->skip_stmt = p;
}

static void skipped_now(pgw_tracker_t *t, const pgw_msg_t *m, int64_t now_us)
{
    /* The server discards this message (skip-until-Sync). Parse and Bind
     * change nothing there, but are followed here so that an Execute that
     * will never run is still reported, as skipped, with its text. */
    acc_t acc = { .start_us = now_us };
    if (m->type == 'P') {
        pgw_parse_t p;
        pgw_prepared_t *st = pgw_parse_parse(m, &p) ? NULL : calloc(1, sizeof *st);
        if (st) {
            st->refs = 1;
            st->name = dup_n(p.name, strlen(p.name));
            st->text = dup_n(p.text, p.text_len);
            st->text_len = p.text_len;
            if (!st->name || !st->text) {
                prepared_unref(st);
                st = NULL;
            }
        }
        set_skip_stmt(t, st);
        prepared_unref(st);
    } else if (m->type == 'B') {
        pgw_bind_t b;
        if (pgw_parse_bind(m, &b) == 0 && !(t->skip_stmt && strcmp(t->skip_stmt->name, b.stmt) == 0))
            set_skip_stmt(t, find_prepared(t, b.stmt));
    } else if (m->type == 'E') {
        pgw_execute_t ex;
        if (pgw_parse_execute(m, &ex) == 0) {
            pgw_portal_t *po = t->skip_stmt ? NULL : find_portal(t, ex.portal);
            emit(t, NULL, po, t->skip_stmt, &acc, PGW_STATUS_SKIPPED, NULL, NULL, now_us);
        }
    } else if (m->type == 'Q') {
        pgw_query_t q;
        if (pgw_parse_query(m, &q) == 0) {
            pgw_tracker_item_t it;
            memset(&it, 0, sizeof it);
            it.kind = IT_QUERY;
            it.text = (char *)(uintptr_t)q.text;
            it.text_len = q.text_len;
            emit(t, &it, NULL, NULL, &acc, PGW_STATUS_SKIPPED, NULL, NULL, now_us);
            memo_free(it.memo);
        }
    }
}

static void on_query(pgw_tracker_t *t, const pgw_msg_t *m, int64_t now_us)
{
    pgw_query_t q;
    if (pgw_parse_query(m, &q))
        return;
    enum { SPANS_INLINE = 16 };
    uint32_t spans[SPANS_INLINE][2];
    unsigned n = 1;
    spans[0][0] = 0;
    spans[0][1] = q.text_len;
    pgw_memo_t *memo = NULL;
    if (t->split)
        n = t->split(t->ud, q.text, q.text_len, spans, SPANS_INLINE, &memo);
    /* The text and its spans in one block: one allocation per Query. */
    size_t spans_off = (q.text_len + 1 + 7) & ~(size_t)7;
    size_t admits_off = spans_off + (size_t)(n ? n : 1) * sizeof spans[0];
    admits_off = (admits_off + 7) & ~(size_t)7;
    size_t need = admits_off + (t->admit ? (size_t)n * sizeof(pgw_stmt_admit_t) : 0);
    char *block;
    if (t->spare_block && t->spare_block_cap >= need) {
        block = t->spare_block;
        need = t->spare_block_cap;
        t->spare_block = NULL;
    } else {
        block = malloc(need);
    }
    pgw_tracker_item_t *it = block ? push(t, IT_QUERY, now_us) : NULL;
    if (!it) {
        free(block);
        memo_free(memo);
        t->failed = 1;
        return;
    }
    it->memo = memo;
    memcpy(block, q.text, q.text_len + 1);
    it->text = block;
    it->block_cap = need;
    it->text_len = q.text_len;
    it->spans = (uint32_t (*)[2])(void *)(block + spans_off);
    if (n > SPANS_INLINE) {
        memo_free(it->memo);
        it->memo = NULL;
        n = t->split(t->ud, q.text, q.text_len, it->spans, n, &it->memo);
    }
    else
        memcpy(it->spans, spans, (size_t)n * sizeof spans[0]);
    it->nstmts = n;
    if (t->admit && n) {
        it->admits = (pgw_stmt_admit_t *)(void *)(block + admits_off);
        admit(t, it, now_us);
    }
}

static void on_parse(pgw_tracker_t *t, const pgw_msg_t *m, int64_t now_us)
{
    pgw_parse_t p;
    if (pgw_parse_parse(m, &p))
        return;
    pgw_prepared_t *st = calloc(1, sizeof *st);
    if (st) {
        st->name = dup_n(p.name, strlen(p.name));
        st->text = dup_n(p.text, p.text_len);
        st->text_len = p.text_len;
    }
    pgw_tracker_item_t *it = st && st->name && st->text ? push(t, IT_PARSE, now_us) : NULL;
    if (!it) {
        if (st) {
            st->refs = 1;
            prepared_unref(st);
        }
        t->failed = 1;
        return;
    }
    /* A new unnamed statement replaces the old one at once; a named one
     * that exists makes the server fail this Parse, and the error path
     * unmaps the new entry again. */
    pgw_prepared_t *old = find_prepared(t, st->name);
    if (old && st->name[0] == '\0')
        unmap_prepared(t, old);
    st->refs = 2;                   /* the map and the item */
    st->in_map = 1;
    st->next = t->prepared;
    t->prepared = st;
    it->stmt = st;
}

/* A copy of the Bind values, each cut at t->param_max bytes, in one block:
 * the portal may be executed long after the message is gone. */
static pgw_event_param_t *copy_params(const pgw_tracker_t *t, const pgw_bind_t *b)
{
    size_t bytes = 0;
    uint32_t cur = 0;
    const uint8_t *val;
    int32_t len;
    uint16_t fmt;
    for (uint16_t i = 0; pgw_bind_next_param(b, &cur, i, &val, &len, &fmt) == 1; i++)
        bytes += len > 0 ? ((uint32_t)len < t->param_max ? (size_t)len : t->param_max) : 0;
    pgw_event_param_t *v = malloc((size_t)b->nparams * sizeof *v + bytes + 1);
    if (!v)
        return NULL;
    uint8_t *at = (uint8_t *)(v + b->nparams);
    cur = 0;
    for (uint16_t i = 0; pgw_bind_next_param(b, &cur, i, &val, &len, &fmt) == 1; i++) {
        size_t n = len > 0 ? ((uint32_t)len < t->param_max ? (size_t)len : t->param_max) : 0;
        if (n)
            memcpy(at, val, n);
        v[i] = (pgw_event_param_t){ .ptr = at, .len = n, .is_null = len < 0, .binary = fmt == 1 };
        at += n;
    }
    return v;
}

static void on_fcall(pgw_tracker_t *t, const pgw_msg_t *m, int64_t now_us)
{
    pgw_fcall_t f;
    pgw_tracker_item_t *it = push(t, IT_FCALL, now_us);
    if (!it)
        return;
    if (pgw_parse_function_call(m, &f) == 0) {
        if ((it->text = malloc(PGW_FCALL_TEXT_MAX))) {
            it->text_len = pgw_fcall_describe(&f, it->text);
            it->block_cap = PGW_FCALL_TEXT_MAX;
        }
        pgw_portal_t *po = portal_new(t, "");
        if (po) {
            pgw_bind_t b = { .nformats = f.nformats, .formats = f.formats,
                             .nparams = f.nargs, .params = f.args };
            po->nparams = f.nargs;
            if (t->param_max && f.nargs)
                po->params = copy_params(t, &b);
            po->refs = 1;
            it->portal = po;
        }
    }
    if (t->admit)
        admit(t, it, now_us);
}

static void on_bind(pgw_tracker_t *t, const pgw_msg_t *m, int64_t now_us)
{
    pgw_bind_t b;
    if (pgw_parse_bind(m, &b))
        return;
    pgw_portal_t *po = portal_new(t, b.portal);
    pgw_tracker_item_t *it = po ? push(t, IT_BIND, now_us) : NULL;
    if (!it) {
        if (po) {
            po->refs = 1;
            portal_unref(t, po);
        }
        t->failed = 1;
        return;
    }
    if (b.portal[0] == '\0')
        unmap_portal(t, find_portal(t, ""), now_us);
    po->stmt = find_prepared(t, b.stmt);
    if (po->stmt)
        po->stmt->refs++;
    po->nparams = b.nparams;
    if (t->param_max && b.nparams)
        po->params = copy_params(t, &b);
    po->refs = 2;
    po->in_map = 1;
    po->next = t->portals;
    t->portals = po;
    it->portal = po;
}

static void on_execute(pgw_tracker_t *t, const pgw_msg_t *m, int64_t now_us)
{
    pgw_execute_t ex;
    if (pgw_parse_execute(m, &ex))
        return;
    pgw_tracker_item_t *it = push(t, IT_EXECUTE, now_us);
    if (!it)
        return;
    it->portal = find_portal(t, ex.portal);
    int continued = it->portal && it->portal->suspended;
    if (it->portal) {
        it->portal->refs++;
        begin_execute(it);
    }
    if (continued)
        it->admit = it->portal->admit;
    else if (t->admit)
        admit(t, it, now_us);
}

static void on_close_msg(pgw_tracker_t *t, const pgw_msg_t *m, int64_t now_us)
{
    pgw_target_t c;
    if (pgw_parse_close(m, &c))
        return;
    pgw_tracker_item_t *it = push(t, IT_CLOSE, now_us);
    if (!it)
        return;
    it->close_kind = c.kind;
    /* Unmapped when CloseComplete arrives, in the server's order. */
    if (c.kind == 'S' && (it->stmt = find_prepared(t, c.name)))
        it->stmt->refs++;
    else if (c.kind == 'P' && (it->portal = find_portal(t, c.name)))
        it->portal->refs++;
}

/* The item a CopyData/CopyDone from the client belongs to. */
static acc_t *copy_target(pgw_tracker_t *t)
{
    pgw_tracker_item_t *it = head(t);
    return it && (it->kind == IT_QUERY || it->kind == IT_EXECUTE) ? &it->acc : NULL;
}

void pgw_tracker_frontend(pgw_tracker_t *t, const pgw_msg_t *m, int64_t now_us)
{
    if (t->failed || m->type == 0)
        return;
    if (t->skip_until_sync) {
        if (m->type == 'S') {
            t->skip_until_sync = 0;
            set_skip_stmt(t, NULL);
        } else if (m->type != 'X' && m->type != 'H' && m->type != 'd' && m->type != 'c' &&
                   m->type != 'f' && m->type != 'p') {
            skipped_now(t, m, now_us);
            return;
        }
    }
    switch (m->type) {
    case 'Q': on_query(t, m, now_us); break;
    case 'P': on_parse(t, m, now_us); break;
    case 'B': on_bind(t, m, now_us); break;
    case 'E': on_execute(t, m, now_us); break;
    case 'D': (void)push(t, IT_DESCRIBE, now_us); break;
    case 'C': on_close_msg(t, m, now_us); break;
    case 'S': (void)push(t, IT_SYNC, now_us); break;
    case 'F': on_fcall(t, m, now_us); break;
    case 'd': {
        /* a COPY OUT's bytes are the server's: the client's CopyData of a
         * CopyBoth are its replies (standby status, feedback) */
        acc_t *a = copy_target(t);
        if (a && a->copy_dir != PGW_COPY_OUT)
            a->copy_bytes += m->body_len;
        break;
    }
    default: break;                 /* H, c, f, X, p: nothing to match */
    }
}

/* ---- backend ------------------------------------------------------------- */

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
    while ((it = head(t)) && it->kind != IT_SYNC) {
        if (it->kind == IT_EXECUTE && err) {
            emit(t, it, it->portal, failed ? failed->stmt : NULL, &it->acc, PGW_STATUS_ERROR,
                 NULL, err, now_us);
            err = NULL;
        } else if (it->kind == IT_EXECUTE) {
            emit(t, it, it->portal, NULL, &it->acc, PGW_STATUS_SKIPPED, NULL, NULL, now_us);
        } else if (it->kind == IT_QUERY) {
            emit(t, it, NULL, NULL, &it->acc, PGW_STATUS_SKIPPED, NULL, NULL, now_us);
        } else if (it->kind == IT_PARSE) {
            unmap_prepared(t, it->stmt);
        } else if (it->kind == IT_BIND) {
            unmap_portal(t, it->portal, now_us);
        }
        pop(t);
    }
    if (err && failed)
        emit(t, failed, failed->portal, failed->stmt, &failed->acc, PGW_STATUS_ERROR, NULL, err, now_us);
    if (!it)
        t->skip_until_sync = 1;
}

static void on_error(pgw_tracker_t *t, const pgw_msg_t *m, int64_t now_us)
{
    pgw_tracker_item_t *it = head(t);
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
        release_held(t, PGW_STATUS_ERROR, &e);
        if (it && it->kind == IT_SYNC)
            return;                 /* the commit's error: carried by what was held */
    }
    if (!it)
        return;
    t->repl.pending = 0;            /* the error is the command's outcome */
    switch (it->kind) {
    case IT_QUERY:
        if (it->cur < (it->nstmts ? it->nstmts : 1)) {
            emit(t, it, NULL, NULL, &it->acc, PGW_STATUS_ERROR, NULL, &e, now_us);
            it->cur++;
        }
        it->errored = 1;            /* the rest are skipped: reported at ReadyForQuery */
        return;
    case IT_FCALL:
        emit(t, it, NULL, NULL, &it->acc, PGW_STATUS_ERROR, NULL, &e, now_us);
        it->errored = 1;
        return;
    case IT_SYNC:
        t->errors++;                /* a commit error with no execution to carry it */
        return;
    case IT_EXECUTE:
        emit(t, it, it->portal, NULL, &it->acc, PGW_STATUS_ERROR, NULL, &e, now_us);
        pop(t);
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
            unmap_prepared(t, failed.stmt);
        else
            unmap_portal(t, failed.portal, now_us);
        skip_to_sync(t, &e, &failed, now_us);
        item_release(t, &failed);
        return;
    }
    default:
        pop(t);
        skip_to_sync(t, NULL, NULL, now_us);
        return;
    }
}

/* A walsender command whose tag came: reported as it completed. */
static void repl_report(pgw_tracker_t *t, pgw_tracker_item_t *it, int64_t now_us)
{
    if (!t->repl.pending)
        return;
    t->repl.pending = 0;
    if (it && it->kind == IT_QUERY && it->cur < it->nstmts) {
        pgw_complete_t cc = { t->repl.tag, t->repl.rows, t->repl.has_rows };
        emit(t, it, NULL, NULL, &it->acc, PGW_STATUS_OK, &cc, NULL, now_us);
        it->cur++;
    }
}

static void on_ready(pgw_tracker_t *t, const pgw_msg_t *m, int64_t now_us)
{
    if (t->nheld)
        release_held(t, PGW_STATUS_OK, NULL);   /* committed, or still in a block */
    pgw_tracker_item_t *it = head(t);
    repl_report(t, it, now_us);
    if (it && it->kind == IT_QUERY) {
        /* Statements after an error in the same Query never ran. */
        for (; it->cur < it->nstmts; it->cur++) {
            it->acc.start_us = now_us;
            emit(t, it, NULL, NULL, &it->acc, it->errored ? PGW_STATUS_SKIPPED : PGW_STATUS_UNKNOWN,
                 NULL, NULL, now_us);
        }
        pop(t);
    } else if (it && it->kind == IT_FCALL) {
        if (!it->errored)
            emit(t, it, NULL, NULL, &it->acc, it->answered_us ? PGW_STATUS_OK : PGW_STATUS_UNKNOWN,
                 NULL, NULL, it->answered_us ? it->answered_us : now_us);
        pop(t);
    } else if (it && it->kind == IT_SYNC) {
        pop(t);
    }
    pgw_ready_t r;
    /* Outside a transaction block no portal survives. */
    if (pgw_parse_ready(m, &r) == 0 && r.status == 'I')
        while (t->portals)
            unmap_portal(t, t->portals, now_us);
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
        release_held(t, PGW_STATUS_OK, NULL);
    if (t->nheld == t->held_cap) {
        unsigned ncap = t->held_cap ? t->held_cap * 2 : 4;
        struct pgw_held *n = realloc(t->held, ncap * sizeof *n);
        if (!n) {
            emit(t, it, it->portal, NULL, &it->acc, PGW_STATUS_OK, cc, NULL, now_us);
            pop(t);
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
            h->tag_heap = dup_n(cc->tag, n);
    }
    t->nheld++;
    /* The slot is vacated without releasing what moved to the held list
     * (push clears a slot before reuse). */
    t->head = (t->head + 1) % t->cap;
    t->count--;
}

static void on_complete(pgw_tracker_t *t, const pgw_msg_t *m, int empty, int64_t now_us)
{
    pgw_tracker_item_t *it = head(t);
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
            emit(t, it, NULL, NULL, &it->acc, PGW_STATUS_OK, ccp, NULL, now_us);
            it->cur++;
            memset(&it->acc, 0, sizeof it->acc);
            it->acc.start_us = now_us;  /* the next statement starts when this one ends */
        }
    } else if (it->kind == IT_EXECUTE) {
        if (ccp && commits_at_completion(t, it, ccp->tag)) {
            /* Already ended its transaction: reported now, after anything
             * held, which that transaction carried. */
            emit(t, it, it->portal, NULL, &it->acc, PGW_STATUS_OK, ccp, NULL, now_us);
            pop(t);
        } else {
            hold(t, it, ccp, now_us);
        }
    }
}

void pgw_tracker_backend(pgw_tracker_t *t, const pgw_msg_t *m, int64_t now_us)
{
    if (t->failed)
        return;
    pgw_tracker_item_t *it = head(t);
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
            pop(t);
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
            pop(t);
        break;
    case '2':
        if (it && it->kind == IT_BIND)
            pop(t);
        break;
    case '3':
        if (it && it->kind == IT_CLOSE) {
            if (it->close_kind == 'S')
                unmap_prepared(t, it->stmt);
            else
                unmap_portal(t, it->portal, now_us);
            pop(t);
        }
        break;
    case 'T':
    case 'n':
        if (it && it->kind == IT_DESCRIBE)
            pop(t);
        break;
    default:
        break;                      /* t, S, N, A, K, R, v, W: no statement to match */
    }
}

/* ---- lifecycle ----------------------------------------------------------- */

void pgw_tracker_init(pgw_tracker_t *t, pgw_emit_fn emit_fn, pgw_split_fn split, void *ud)
{
    memset(t, 0, sizeof *t);
    t->emit = emit_fn;
    t->split = split;
    t->ud = ud;
}

void pgw_tracker_finish(pgw_tracker_t *t, int64_t now_us)
{
    pgw_tracker_item_t *it;
    /* Executed, but the session ended before their Sync confirmed a commit. */
    if (t->nheld)
        release_held(t, PGW_STATUS_UNKNOWN, NULL);
    free(t->held);
    t->held = NULL;
    t->held_cap = 0;
    repl_report(t, head(t), now_us);
    /* Forwarded, never answered: the server may or may not have run them. */
    while ((it = head(t))) {
        if (it->kind == IT_QUERY) {
            for (; it->cur < it->nstmts; it->cur++)
                emit(t, it, NULL, NULL, &it->acc, it->errored ? PGW_STATUS_SKIPPED : PGW_STATUS_UNKNOWN,
                     NULL, NULL, now_us);
        } else if (it->kind == IT_EXECUTE) {
            emit(t, it, it->portal, NULL, &it->acc, PGW_STATUS_UNKNOWN, NULL, NULL, now_us);
        } else if (it->kind == IT_FCALL && !it->errored) {
            emit(t, it, NULL, NULL, &it->acc, PGW_STATUS_UNKNOWN, NULL, NULL, now_us);
        }
        pop(t);
    }
    while (t->portals)
        unmap_portal(t, t->portals, now_us);
    while (t->prepared)
        unmap_prepared(t, t->prepared);
    set_skip_stmt(t, NULL);
    free(t->items);
    t->items = NULL;
    t->cap = 0;
    free(t->spare_portal);
    t->spare_portal = NULL;
    free(t->spare_block);
    t->spare_block = NULL;
}
