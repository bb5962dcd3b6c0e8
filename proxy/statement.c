#include "statement.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "pgwarden/json.h"

struct pgw_analysis_cache *pgw_statement_cache_new(const pgw_config_t *cfg)
{
    (void)cfg;
    return pgw_analysis_cache_new(NULL);
}

void pgw_statement_cache_free(struct pgw_analysis_cache *c)
{
    if (c)
        pgw_analysis_cache_free(c);
}

static pgw_stmt_class_t class_of(pgw_audit_class_t c)
{
    switch (c) {
    case PGW_CLASS_READ: return PGW_STMT_CLASS_READ;
    case PGW_CLASS_WRITE: return PGW_STMT_CLASS_WRITE;
    case PGW_CLASS_FUNCTION: return PGW_STMT_CLASS_FUNCTION;
    case PGW_CLASS_ROLE: return PGW_STMT_CLASS_ROLE;
    case PGW_CLASS_DDL: return PGW_STMT_CLASS_DDL;
    case PGW_CLASS_MISC_SET: return PGW_STMT_CLASS_MISC_SET;
    case PGW_CLASS_MISC: break;
    }
    return PGW_STMT_CLASS_MISC;
}

/* The analysis kept with a statement text (pgw_memo_t). */
typedef struct stmt_memo {
    pgw_memo_t base;
    pgw_analysis_t an;
    pgw_jbuf_t frag;                /* the event's analysis fields, encoded once */
    int frag_ready;
} stmt_memo_t;

/* Freed memos are kept for the next ones (a one-statement Query makes one
 * per execution): per thread, since memos are made and freed on the loop
 * thread of their session. pgw_statement_thread_done() frees them. */
#define MEMO_SPARES 16
static _Thread_local stmt_memo_t *memo_spares[MEMO_SPARES];
static _Thread_local unsigned memo_nspares;

static void stmt_memo_free(pgw_memo_t *m)
{
    stmt_memo_t *sm = (stmt_memo_t *)(void *)m;
    pgw_analysis_clear(&sm->an);
    if (memo_nspares < MEMO_SPARES) {
        pgw_jbuf_reset(&sm->frag);
        memo_spares[memo_nspares++] = sm;
        return;
    }
    pgw_jbuf_free(&sm->frag);
    free(sm);
}

/* Moves an (complete, one statement or more) into a new memo; an is left
 * empty. NULL when out of memory (an unchanged). */
static stmt_memo_t *memo_of(pgw_analysis_t *an)
{
    stmt_memo_t *m;
    if (memo_nspares) {
        m = memo_spares[--memo_nspares];
    } else {
        if (!(m = malloc(sizeof *m)))
            return NULL;
        pgw_jbuf_init(&m->frag, 1u << 20);
    }
    m->base.free = stmt_memo_free;
    m->an = *an;                    /* an analysis may be moved as a whole */
    m->frag_ready = 0;
    pgw_analysis_init(an);
    return m;
}

unsigned pgw_statement_split(struct pgw_analysis_cache *c, const char *text, size_t len,
                             uint32_t (*spans)[2], unsigned cap, pgw_memo_t **memo)
{
    /* A long Query is split by the lexer: its statements are analysed one
     * by one later, off the loop when they miss the cache. */
    if (len > PGW_ANALYSIS_SYNC_MAX) {
        unsigned n = pgw_analysis_split(text, len, spans, cap);
        if (n)
            return n;
        spans[0][0] = 0;
        spans[0][1] = (uint32_t)len;
        return 1;
    }
    pgw_analysis_t an;
    pgw_analysis_init(&an);
    if (pgw_analysis_run(c, text, len, &an)) {
        /* Out of memory: the Query is reported as one statement. */
        spans[0][0] = 0;
        spans[0][1] = (uint32_t)len;
        return 1;
    }
    unsigned n = pgw_statement_split_given(&an, spans, cap, memo);
    pgw_analysis_clear(&an);
    return n;
}

unsigned pgw_statement_split_given(pgw_analysis_t *an, uint32_t (*spans)[2], unsigned cap,
                                   pgw_memo_t **memo)
{
    unsigned n = an->count;
    for (unsigned i = 0; i < n && i < cap; i++) {
        const pgw_stmt_t *st = pgw_analysis_stmt(an, i);
        spans[i][0] = st->offset;
        spans[i][1] = st->length;
    }
    /* A statement of several in one string is described on its own when it
     * completes, as the server runs it: only a lone statement is kept. */
    if (n == 1 && !(an->flags & PGW_ANALYSIS_PARSE_FAILED)) {
        stmt_memo_t *m = memo_of(an);
        if (m)
            *memo = &m->base;
    }
    return n;
}

int pgw_statement_own_transaction(struct pgw_analysis_cache *c, const char *text, size_t len,
                                  pgw_memo_t **memo)
{
    /* The analysis its event will use: a prepared statement keeps it. */
    pgw_stmt_done_t d = { .protocol = PGW_PROTOCOL_EXTENDED, .text = text, .text_len = len,
                          .memo = memo };
    pgw_stmt_view_t view;
    int own = 0;
    /* A long text the cache does not know is parsed off the loop, later:
     * its statement waits for its Sync. */
    if (pgw_statement_analyze(c, &d, &view) && view.rc == 0 && view.src->count == 1)
        own = !!(pgw_analysis_stmt(view.src, 0)->info->flags & PGW_SQL_OWN_TRANSACTION);
    pgw_statement_view_free(&view);
    return own;
}

static int needs_analysis(const pgw_stmt_done_t *d)
{
    return d->protocol != PGW_PROTOCOL_FUNCTION_CALL && d->text;
}

int pgw_statement_analyze(struct pgw_analysis_cache *c, const pgw_stmt_done_t *d,
                          pgw_stmt_view_t *view)
{
    view->has_an = 0;
    view->rc = 0;
    view->heap_objects = NULL;
    view->src = &view->an;
    view->idx = 0;
    view->memo = NULL;
    pgw_analysis_init(&view->an);   /* empty, not unset, when nothing is analysed */
    if (!needs_analysis(d))
        return 1;
    view->has_an = 1;
    stmt_memo_t *m = d->memo && *d->memo ? (stmt_memo_t *)(void *)*d->memo : NULL;
    if (m) {
        /* A Query's memo is the analysis of its one statement. */
        view->src = &m->an;
        if (d->protocol == PGW_PROTOCOL_EXTENDED)
            view->memo = m;
        return 1;
    }
    if (d->text_len > PGW_ANALYSIS_SYNC_MAX) {
        int hit = pgw_analysis_lookup(c, d->text, d->text_len, &view->an);
        if (hit != 1) {
            view->rc = hit;
            return hit < 0;         /* out of memory: nothing more to try */
        }
    } else {
        view->rc = pgw_analysis_run(c, d->text, d->text_len, &view->an);
    }
    /* A prepared statement keeps its analysis for its next executions. */
    if (view->rc == 0 && d->memo && d->protocol == PGW_PROTOCOL_EXTENDED && view->an.count == 1 &&
        !(view->an.flags & PGW_ANALYSIS_PARSE_FAILED) && (m = memo_of(&view->an)) != NULL) {
        *d->memo = &m->base;
        view->src = &m->an;
        view->memo = m;
    }
    return 1;
}

void pgw_statement_view_move(pgw_stmt_view_t *to, const pgw_stmt_view_t *from)
{
    *to = *from;
    if (from->src == &from->an)
        to->src = &to->an;
}

void pgw_statement_parse(const pgw_stmt_done_t *d, pgw_stmt_view_t *view)
{
    view->rc = pgw_analysis_parse(d->text, d->text_len, &view->an);
}

void pgw_statement_learn(struct pgw_analysis_cache *c, pgw_stmt_view_t *view)
{
    if (view->has_an && view->rc == 0)
        pgw_analysis_cache_add(c, &view->an);
}

/* ---- encoded analysis fields ----------------------------------------------
 * Statements that differ only in their literals share one analysis (one
 * pgw_sql_info_t) and, most of the time, one normalized text: their
 * events' analysis fields are the same bytes. A small direct-mapped table
 * per thread keeps those bytes for recently reported (info, text) pairs, so
 * that an event of a repeated query shape copies its analysis fields instead
 * of building the objects and escaping the text again. A slot holds a
 * reference to its info, so a pointer match cannot be a reused address. */
#define FRAG_SLOTS 256u
#define FRAG_MAX 4096u              /* longer fragments are not kept */

typedef struct frag {
    pgw_sql_info_t *info;
    uint8_t redacted, truncated;
    uint32_t text_len, frag_len;
    char data[];                    /* the text, then the encoded fields */
} frag_t;

struct pgw_frag_cache {
    frag_t *slot[FRAG_SLOTS];
};

struct pgw_frag_cache *pgw_frag_cache_new(void)
{
    return calloc(1, sizeof(struct pgw_frag_cache));
}

void pgw_statement_thread_done(void)
{
    while (memo_nspares) {
        stmt_memo_t *m = memo_spares[--memo_nspares];
        pgw_jbuf_free(&m->frag);
        free(m);
    }
}

void pgw_frag_cache_free(struct pgw_frag_cache *fc)
{
    if (!fc)
        return;
    for (unsigned i = 0; i < FRAG_SLOTS; i++) {
        if (fc->slot[i]) {
            pgw_sql_info_unref(fc->slot[i]->info);
            free(fc->slot[i]);
        }
    }
    free(fc);
}

static frag_t **frag_slot(struct pgw_frag_cache *fc, const pgw_sql_info_t *info, uint32_t tlen)
{
    uint64_t h = ((uint64_t)(uintptr_t)info >> 4) * 0x9E3779B97F4A7C15ull ^ tlen;
    return &fc->slot[(h >> 32) % FRAG_SLOTS];
}

static const frag_t *frag_find(struct pgw_frag_cache *fc, const pgw_sql_info_t *info,
                               const pgw_event_statement_t *out, const char *text, uint32_t tlen)
{
    const frag_t *f = *frag_slot(fc, info, tlen);
    if (f && f->info == info && f->text_len == tlen && f->redacted == out->redacted &&
        f->truncated == out->truncated && memcmp(f->data, text, tlen) == 0)
        return f;
    return NULL;
}

/* Keeps the encoded fields of out (filled from info, with text). */
static const frag_t *frag_keep(struct pgw_frag_cache *fc, pgw_sql_info_t *info,
                               const pgw_event_statement_t *out, const char *text, uint32_t tlen)
{
    pgw_jbuf_t b;
    pgw_jbuf_init(&b, FRAG_MAX);
    if (pgw_event_encode_statement_analysis(out, &b)) {
        pgw_jbuf_free(&b);
        return NULL;
    }
    frag_t *f = malloc(sizeof *f + tlen + b.len);
    if (!f) {
        pgw_jbuf_free(&b);
        return NULL;
    }
    f->info = pgw_sql_info_ref(info);
    f->redacted = (uint8_t)out->redacted;
    f->truncated = (uint8_t)out->truncated;
    f->text_len = tlen;
    f->frag_len = (uint32_t)b.len;
    memcpy(f->data, text, tlen);
    memcpy(f->data + tlen, b.data, b.len);
    pgw_jbuf_free(&b);
    frag_t **slot = frag_slot(fc, info, tlen);
    if (*slot) {
        pgw_sql_info_unref((*slot)->info);
        free(*slot);
    }
    *slot = f;
    return f;
}

static void fill_objects(const pgw_sql_info_t *info, pgw_stmt_view_t *view,
                         pgw_event_statement_t *out);

void pgw_statement_fill(struct pgw_frag_cache *fc, const pgw_stmt_done_t *d, pgw_stmt_view_t *view,
                        pgw_event_statement_t *out, uint32_t text_max)
{
    if (d->protocol == PGW_PROTOCOL_FUNCTION_CALL) {
        out->command = PGW_STR_LIT("FUNCTION CALL");
        out->class_ = PGW_STMT_CLASS_FUNCTION;
        if (d->text) {              /* the call, its arguments as $n */
            out->text = pgw_str(d->text, d->text_len);
            out->redacted = PGW_BOOL(1);
        }
        return;
    }
    if (!d->text) {
        /* An Execute of a portal pgwarden could not tie to a Parse: said
         * so, rather than guessed. */
        out->text = PGW_STR_LIT("");
        out->redacted = PGW_BOOL(1);
        out->parse_error = PGW_STR_LIT("statement text unknown to pgwarden");
        return;
    }
    const pgw_analysis_t *an = view->src;
    if (!view->has_an || view->rc || an->count <= view->idx) {
        /* Nothing can be said of the text, so none of it is shown. */
        out->text = PGW_STR_LIT("");
        out->redacted = PGW_BOOL(1);
        return;
    }
    const pgw_stmt_t *st = pgw_analysis_stmt(an, view->idx);
    const pgw_sql_info_t *info = st->info;
    uint32_t tlen;
    const char *text = pgw_analysis_text(an, view->idx, &tlen);
    if (tlen > text_max) {
        tlen = (uint32_t)pgw_utf8_prefix(text, tlen, text_max);
        out->truncated = PGW_BOOL(1);
    }
    out->text = pgw_str(text, tlen);
    out->redacted = PGW_BOOL(1);
    out->command = pgw_cstr(info->command);
    out->class_ = class_of(info->cls);
    if (info->fingerprint && info->fingerprint[0]) {
        out->has_fingerprint = 1;
        out->fingerprint = info->fingerprint_value;
    }
    if (info->parse_error)
        out->parse_error = pgw_cstr(info->parse_error);
    /* A prepared statement's fields are encoded once, then copied. */
    stmt_memo_t *m = view->memo;
    if (m && m->frag_ready) {
        out->analysis_json = pgw_str(m->frag.data, m->frag.len);
        return;
    }
    const frag_t *f = fc && !m ? frag_find(fc, info, out, text, tlen) : NULL;
    if (f) {
        out->analysis_json = pgw_str(f->data + f->text_len, f->frag_len);
        return;
    }
    fill_objects(info, view, out);
    if (m) {
        m->frag_ready = pgw_event_encode_statement_analysis(out, &m->frag) == 0;
        if (m->frag_ready)
            out->analysis_json = pgw_str(m->frag.data, m->frag.len);
    } else if (fc && (f = frag_keep(fc, st->info, out, text, tlen)) != NULL) {
        out->analysis_json = pgw_str(f->data + f->text_len, f->frag_len);
    }
}

static void fill_objects(const pgw_sql_info_t *info, pgw_stmt_view_t *view,
                         pgw_event_statement_t *out)
{
    size_t n = info->nobjects;
    pgw_event_object_t *objs = view->inline_objects;
    if (n > sizeof view->inline_objects / sizeof view->inline_objects[0]) {
        objs = view->heap_objects = calloc(n, sizeof *objs);
        if (!objs) {
            pgw_error("out of memory: objects of a %s statement not recorded", info->command);
            n = 0;
            objs = view->inline_objects;
        }
    }
    for (size_t i = 0; i < n; i++) {
        const pgw_sql_object_t *o = &info->objects[i];
        pgw_event_object_t *e = &objs[i];
        memset(e, 0, sizeof *e);
        if (o->schema && o->schema[0])
            e->schema = pgw_cstr(o->schema);
        e->name = pgw_cstr(o->name);
        e->type = pgw_cstr(o->type);
        e->access = o->access == PGW_ACCESS_WRITE ? PGW_OBJ_ACCESS_WRITE : PGW_OBJ_ACCESS_READ;
    }
    out->objects = objs;
    out->nobjects = n;
}

pgw_sql_info_t *pgw_statement_info(const pgw_stmt_view_t *view)
{
    const pgw_analysis_t *an = view->src;
    if (!view->has_an || view->rc || !an || an->count <= view->idx)
        return NULL;
    return pgw_analysis_stmt(an, view->idx)->info;
}

void pgw_statement_fill_objects(pgw_stmt_view_t *view, const pgw_sql_info_t *from,
                                pgw_event_statement_t *out)
{
    free(view->heap_objects);
    view->heap_objects = NULL;
    out->analysis_json = pgw_str(NULL, 0);   /* encoded field by field */
    fill_objects(from, view, out);
}

void pgw_statement_view_free(pgw_stmt_view_t *view)
{
    if (view->has_an)
        pgw_analysis_clear(&view->an);
    view->has_an = 0;
    free(view->heap_objects);
    view->heap_objects = NULL;
}
