/* The statement tracker (its contract is in tracker.h): the FIFO of
 * pending client messages, the maps of prepared statements and portals by
 * name with their reference counts, each client message taken in, the
 * reports, and the tracker's life. The server's answers are matched in
 * tracker_backend.c; tracker_impl.h is what the two share. */
#include "tracker_impl.h"

#include <stdlib.h>
#include <string.h>

/* ---- helpers ------------------------------------------------------------- */

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
    } else if (!(p->name = tracker_dup_n(name, n))) {
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

void tracker_emit_now(pgw_tracker_t *t, pgw_tracker_item_t *it, pgw_portal_t *portal,
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

void tracker_unmap_prepared(pgw_tracker_t *t, pgw_prepared_t *p)
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
void tracker_unmap_portal(pgw_tracker_t *t, pgw_portal_t *p, int64_t now_us)
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
        tracker_emit(t, NULL, p, NULL, &p->acc, PGW_STATUS_OK, NULL, NULL, now_us);
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

#define SPARE_BLOCK_MAX 4096        /* a Query block up to this size is reused */

void tracker_item_release(pgw_tracker_t *t, pgw_tracker_item_t *it)
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
            st->name = tracker_dup_n(p.name, strlen(p.name));
            st->text = tracker_dup_n(p.text, p.text_len);
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
            tracker_emit(t, NULL, po, t->skip_stmt, &acc, PGW_STATUS_SKIPPED, NULL, NULL, now_us);
        }
    } else if (m->type == 'Q') {
        pgw_query_t q;
        if (pgw_parse_query(m, &q) == 0) {
            pgw_tracker_item_t it;
            memset(&it, 0, sizeof it);
            it.kind = IT_QUERY;
            it.text = (char *)(uintptr_t)q.text;
            it.text_len = q.text_len;
            tracker_emit(t, &it, NULL, NULL, &acc, PGW_STATUS_SKIPPED, NULL, NULL, now_us);
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
        st->name = tracker_dup_n(p.name, strlen(p.name));
        st->text = tracker_dup_n(p.text, p.text_len);
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
        tracker_unmap_prepared(t, old);
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
        tracker_unmap_portal(t, find_portal(t, ""), now_us);
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
    pgw_tracker_item_t *it = tracker_head(t);
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
        tracker_release_held(t, PGW_STATUS_UNKNOWN, NULL);
    free(t->held);
    t->held = NULL;
    t->held_cap = 0;
    tracker_repl_report(t, tracker_head(t), now_us);
    /* Forwarded, never answered: the server may or may not have run them. */
    while ((it = tracker_head(t))) {
        if (it->kind == IT_QUERY) {
            for (; it->cur < it->nstmts; it->cur++)
                tracker_emit(t, it, NULL, NULL, &it->acc,
                             it->errored ? PGW_STATUS_SKIPPED : PGW_STATUS_UNKNOWN, NULL, NULL, now_us);
        } else if (it->kind == IT_EXECUTE) {
            tracker_emit(t, it, it->portal, NULL, &it->acc, PGW_STATUS_UNKNOWN, NULL, NULL, now_us);
        } else if (it->kind == IT_FCALL && !it->errored) {
            tracker_emit(t, it, NULL, NULL, &it->acc, PGW_STATUS_UNKNOWN, NULL, NULL, now_us);
        }
        tracker_pop(t);
    }
    while (t->portals)
        tracker_unmap_portal(t, t->portals, now_us);
    while (t->prepared)
        tracker_unmap_prepared(t, t->prepared);
    set_skip_stmt(t, NULL);
    free(t->items);
    t->items = NULL;
    t->cap = 0;
    free(t->spare_portal);
    t->spare_portal = NULL;
    free(t->spare_block);
    t->spare_block = NULL;
}
