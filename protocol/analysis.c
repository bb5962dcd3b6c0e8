/* SQL analysis on libpg_query: statements of a string, and per statement the
 * shared, reference-counted entry (pgw_sql_info_t) that the cache keeps.
 *
 * A miss costs three passes of the parser: the parse tree (command, class,
 * relations), the normalization and the fingerprint. From the
 * normalization we learn which tokens became which $k (the "regions"); a hit
 * replays that on the new statement's own text, which is exactly what
 * libpg_query would have produced for it, comments and spacing included. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <strings.h>

#include <pg_query.h>

#include "analysis_int.h"

/* ---- small public helpers -------------------------------------------------- */

const char *pgw_audit_class_name(pgw_audit_class_t cls)
{
    switch (cls) {
    case PGW_CLASS_READ: return "READ";
    case PGW_CLASS_WRITE: return "WRITE";
    case PGW_CLASS_FUNCTION: return "FUNCTION";
    case PGW_CLASS_ROLE: return "ROLE";
    case PGW_CLASS_DDL: return "DDL";
    case PGW_CLASS_MISC_SET: return "MISC_SET";
    case PGW_CLASS_MISC:
    default: return "MISC";
    }
}

const char *pgw_access_name(pgw_access_t access)
{
    return access == PGW_ACCESS_WRITE ? "write" : "read";
}

pgw_sql_info_t *pgw_sql_info_ref(pgw_sql_info_t *info)
{
    if (info)
        atomic_fetch_add_explicit(&sql_entry_of(info)->refs, 1, memory_order_relaxed);
    return info;
}

void sql_entry_unref(sql_entry_t *e)
{
    /* acq_rel: the last holder must see every write made before the others
     * let go, whichever thread it runs on */
    if (e && atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1)
        free(e);
}

void pgw_sql_info_unref(pgw_sql_info_t *info)
{
    if (info)
        sql_entry_unref(sql_entry_of(info));
}

/* ---- the analysis of a string: statements and a text arena ----------------- */

void pgw_analysis_init(pgw_analysis_t *an)
{
    an->count = 0;
    an->flags = 0;
    an->stmt_cap = PGW_ANALYSIS_INLINE_STMTS;
    an->text_used = 0;
    an->text_cap = PGW_ANALYSIS_INLINE_TEXT;
    an->heap_stmts = NULL;
    an->heap_text = NULL;
}

void pgw_analysis_clear(pgw_analysis_t *an)
{
    uint32_t i;

    for (i = 0; i < an->count; i++)
        pgw_sql_info_unref(pgw_analysis_stmt(an, i)->info);
    /* most analyses never leave their inline storage */
    if (an->heap_stmts)
        free(an->heap_stmts);
    if (an->heap_text)
        free(an->heap_text);
    pgw_analysis_init(an);
}

static char *text_base(pgw_analysis_t *an)
{
    return an->heap_text ? an->heap_text : an->inline_text;
}

const char *pgw_analysis_text(const pgw_analysis_t *an, uint32_t i, uint32_t *len)
{
    const pgw_stmt_t *st = pgw_analysis_stmt(an, i);

    *len = st->text_len;
    return (an->heap_text ? an->heap_text : an->inline_text) + st->text_off;
}

const char *pgw_analysis_raw_text(const pgw_analysis_t *an, uint32_t i, const char *sql,
                                  uint32_t *len)
{
    const pgw_stmt_t *st = pgw_analysis_stmt(an, i);

    if (st->info->flags & PGW_SQL_NO_RAW)
        return pgw_analysis_text(an, i, len);
    *len = st->length;
    return sql + st->offset;
}

/* Room for need more text bytes; returns where they go, or NULL. */
static char *text_reserve(pgw_analysis_t *an, size_t need)
{
    if (need > UINT32_MAX - an->text_used)
        return NULL;
    if (an->text_used + need > an->text_cap) {
        size_t cap = (size_t)an->text_cap * 2;
        char *n;

        if (cap < an->text_used + need)
            cap = an->text_used + need;
        if (cap > UINT32_MAX)
            cap = UINT32_MAX;
        if (an->heap_text) {
            n = realloc(an->heap_text, cap);
        } else {
            n = malloc(cap);
            if (n)
                memcpy(n, an->inline_text, an->text_used);
        }
        if (!n)
            return NULL;
        an->heap_text = n;
        an->text_cap = (uint32_t)cap;
    }
    return text_base(an) + an->text_used;
}

int sql_analysis_push(pgw_analysis_t *an, sql_entry_t *e, const char *s, uint32_t start,
                      uint32_t end, const sql_tok_t *toks, uint32_t base)
{
    pgw_stmt_t *st;
    char *t;
    size_t len;

    if (an->count == an->stmt_cap) {
        uint32_t cap = an->stmt_cap * 2;
        pgw_stmt_t *n;

        if (an->heap_stmts) {
            n = realloc(an->heap_stmts, (size_t)cap * sizeof *n);
        } else {
            n = malloc((size_t)cap * sizeof *n);
            if (n)
                memcpy(n, an->inline_stmts, sizeof an->inline_stmts);
        }
        if (!n)
            return -ENOMEM;
        an->heap_stmts = n;
        an->stmt_cap = cap;
    }
    if (e->mode == ENTRY_SHAPE) {
        t = text_reserve(an, sql_rebuild_bound(start, end, e->nregions) + 1);
        if (!t)
            return -ENOMEM;
        len = sql_rebuild(s, start, end, toks, e->regions, e->nregions, t);
    } else {
        t = text_reserve(an, (size_t)e->norm_len + 1);
        if (!t)
            return -ENOMEM;
        memcpy(t, e->norm, e->norm_len + 1);
        len = e->norm_len;
    }
    st = (an->heap_stmts ? an->heap_stmts : an->inline_stmts) + an->count++;
    st->info = pgw_sql_info_ref(&e->pub);
    st->offset = base + start;
    st->length = end - start;
    st->text_off = an->text_used;
    st->text_len = (uint32_t)len;
    an->text_used += (uint32_t)len + 1;
    return 0;
}

/* ---- entries --------------------------------------------------------------- */

int sql_entry_matches(const sql_entry_t *e, const char *s, uint32_t start, uint32_t end,
                      const sql_tok_t *t, uint32_t n, const char *key, uint32_t key_len)
{
    uint32_t i;

    if (e->mode == ENTRY_EXACT)
        return end - start == e->key_len && memcmp(s + start, e->key, e->key_len) == 0;
    if (e->mode != ENTRY_SHAPE || e->ntok != n || e->key_len != key_len ||
        memcmp(e->key, key, key_len) != 0)
        return 0;
    for (i = 0; i < e->nkept; i++) {
        const sql_tok_t *k = &t[e->kept[i].tok];

        if (k->end - k->start != e->kept[i].len ||
            memcmp(s + k->start, e->kept_data + e->kept[i].off, e->kept[i].len) != 0)
            return 0;
    }
    return 1;
}

int sql_entry_same(const sql_entry_t *a, const sql_entry_t *b)
{
    uint32_t i;

    if (a->hash != b->hash || a->mode != b->mode || a->key_len != b->key_len ||
        memcmp(a->key, b->key, a->key_len) != 0)
        return 0;
    if (a->mode == ENTRY_EXACT)
        return 1;
    if (a->nkept != b->nkept)
        return 0;
    for (i = 0; i < a->nkept; i++)
        if (a->kept[i].tok != b->kept[i].tok || a->kept[i].len != b->kept[i].len ||
            memcmp(a->kept_data + a->kept[i].off, b->kept_data + b->kept[i].off, a->kept[i].len))
            return 0;
    return 1;
}

/* Everything an entry is made of, before it is packed into one block. */
typedef struct entry_parts {
    const char *command;
    pgw_audit_class_t cls;
    uint32_t flags;
    uint8_t mode, nocache;
    const char *fingerprint;
    const char *parse_error;
    const sql_obj_t *objs;
    uint32_t nobjs;
    const sql_obj_t *fns;
    uint32_t nfns;
    const char *key;
    uint32_t key_len;
    uint64_t hash;
    uint32_t ntok, stmt_len;
    const sql_region_t *regions;
    uint32_t nregions;
    const sql_kept_t *kept;       /* off/len relative to kept_src */
    uint32_t nkept;
    const char *kept_src;
    const char *norm;
    uint32_t norm_len;
    const char *name;
} entry_parts_t;

#define ALIGN8(x) (((x) + 7) & ~(size_t)7)

static char *put_str(char **p, const char *s, size_t len)
{
    char *r = *p;

    memcpy(r, s, len);
    r[len] = 0;
    *p += len + 1;
    return r;
}

static sql_entry_t *entry_pack(const entry_parts_t *ep)
{
    size_t fixed = ALIGN8(sizeof(sql_entry_t)), strings = 0, kept_bytes = 0, total;
    uint32_t i;
    sql_entry_t *e;
    pgw_sql_object_t *objs, *fns;
    sql_region_t *rg;
    sql_kept_t *kp;
    char *p, *kd;

    fixed += ALIGN8((size_t)ep->nobjs * sizeof(pgw_sql_object_t));
    fixed += ALIGN8((size_t)ep->nfns * sizeof(pgw_sql_object_t));
    fixed += ALIGN8((size_t)ep->nregions * sizeof(sql_region_t));
    fixed += ALIGN8((size_t)ep->nkept * sizeof(sql_kept_t));
    for (i = 0; i < ep->nobjs; i++)
        strings += strlen(ep->objs[i].schema) + strlen(ep->objs[i].name) + 2;
    for (i = 0; i < ep->nfns; i++)
        strings += strlen(ep->fns[i].schema) + strlen(ep->fns[i].name) + 2;
    for (i = 0; i < ep->nkept; i++)
        kept_bytes += ep->kept[i].len;
    strings += strlen(ep->fingerprint) + 1 + (size_t)ep->key_len + 1 + kept_bytes + 1 +
               (size_t)ep->norm_len + 1;
    if (ep->parse_error)
        strings += strlen(ep->parse_error) + 1;
    if (ep->name)
        strings += strlen(ep->name) + 1;
    total = fixed + strings;
    if (total > UINT32_MAX)
        return NULL;
    e = calloc(1, total);
    if (!e)
        return NULL;
    objs = (pgw_sql_object_t *)((char *)e + ALIGN8(sizeof(sql_entry_t)));
    fns = (pgw_sql_object_t *)((char *)objs + ALIGN8((size_t)ep->nobjs * sizeof *objs));
    rg = (sql_region_t *)((char *)fns + ALIGN8((size_t)ep->nfns * sizeof *fns));
    kp = (sql_kept_t *)((char *)rg + ALIGN8((size_t)ep->nregions * sizeof *rg));
    p = (char *)kp + ALIGN8((size_t)ep->nkept * sizeof *kp);

    atomic_init(&e->refs, 1);
    e->pub.command = ep->command;
    e->pub.cls = ep->cls;
    e->pub.flags = ep->flags;
    e->pub.fingerprint = put_str(&p, ep->fingerprint, strlen(ep->fingerprint));
    e->pub.fingerprint_value = e->pub.fingerprint[0] ? strtoull(e->pub.fingerprint, NULL, 16) : 0;
    e->pub.parse_error = ep->parse_error ? put_str(&p, ep->parse_error, strlen(ep->parse_error)) : NULL;
    e->pub.name = ep->name ? put_str(&p, ep->name, strlen(ep->name)) : NULL;
    for (i = 0; i < ep->nobjs; i++) {
        objs[i].schema = put_str(&p, ep->objs[i].schema, strlen(ep->objs[i].schema));
        objs[i].name = put_str(&p, ep->objs[i].name, strlen(ep->objs[i].name));
        objs[i].type = ep->objs[i].type;      /* static strings */
        objs[i].access = ep->objs[i].access;
    }
    e->pub.nobjects = ep->nobjs;
    e->pub.objects = objs;
    for (i = 0; i < ep->nfns; i++) {
        fns[i].schema = put_str(&p, ep->fns[i].schema, strlen(ep->fns[i].schema));
        fns[i].name = put_str(&p, ep->fns[i].name, strlen(ep->fns[i].name));
        fns[i].type = "function";
        fns[i].access = PGW_ACCESS_READ;
    }
    e->pub.nfunctions = ep->nfns;
    e->pub.functions = fns;
    e->mode = ep->mode;
    e->nocache = ep->nocache;
    e->size = (uint32_t)total;
    e->hash = ep->hash;
    e->ntok = ep->ntok;
    e->stmt_len = ep->stmt_len;
    e->key = put_str(&p, ep->key ? ep->key : "", ep->key_len);
    e->key_len = ep->key_len;
    if (ep->nregions)
        memcpy(rg, ep->regions, (size_t)ep->nregions * sizeof *rg);
    e->regions = rg;
    e->nregions = ep->nregions;
    kd = p;
    for (i = 0; i < ep->nkept; i++) {
        kp[i].tok = ep->kept[i].tok;
        kp[i].off = (uint32_t)(p - kd);
        kp[i].len = ep->kept[i].len;
        memcpy(p, ep->kept_src + ep->kept[i].off, ep->kept[i].len);
        p += ep->kept[i].len;
    }
    *p++ = 0;
    e->kept = kp;
    e->nkept = ep->nkept;
    e->kept_data = kd;
    e->norm = put_str(&p, ep->norm ? ep->norm : "", ep->norm_len);
    e->norm_len = ep->norm_len;
    return e;
}

/* ---- one statement through libpg_query ------------------------------------ */

typedef struct piece_in {
    const char *s;              /* the lexed string */
    uint32_t start, end;        /* the statement in it */
    const sql_tok_t *t;         /* its tokens, positions in s */
    uint32_t n;
    uint32_t max_param;
    int bad;
} piece_in_t;

static int tok_is_word(const char *s, const sql_tok_t *t, const char *w)
{
    size_t len = strlen(w);

    return t->type == TK_IDENT && t->end - t->start == len && strncasecmp(s + t->start, w, len) == 0;
}

/* libpg_query turns TRUE, FALSE and NULL constants into $k as well. */
static int tok_is_const_word(const char *s, const sql_tok_t *t)
{
    return tok_is_word(s, t, "true") || tok_is_word(s, t, "false") || tok_is_word(s, t, "null");
}

/* Lines the normalized text up with the statement's tokens: every byte must
 * be the statement's own, except where a literal (or a minus sign and the
 * number after it, or TRUE/FALSE/NULL) became $k. Records those regions and
 * the literals left as they were. Returns 0 when it does not line up (the
 * entry is then cached by exact text only). */
static int align(const piece_in_t *p, const char *norm, sql_region_t *rg, uint32_t *nrg,
                 sql_kept_t *kept, uint32_t *nkept)
{
    const char *s = p->s;
    size_t nlen = strlen(norm), ni = 0;
    uint32_t ri = p->start, i;

    *nrg = *nkept = 0;
    for (i = 0; i < p->n; i++) {
        const sql_tok_t *t = &p->t[i];
        uint32_t gap = t->start - ri, tl = t->end - t->start;
        int minus = t->type == TK_OP && tl == 1 && s[t->start] == '-' && i + 1 < p->n &&
                    (p->t[i + 1].type == TK_L_INT || p->t[i + 1].type == TK_L_NUM);

        if (ni + gap > nlen || memcmp(norm + ni, s + ri, gap) != 0)
            return 0;
        ni += gap;
        if ((TK_IS_LIT(t->type) || minus || tok_is_const_word(s, t)) && ni + 1 < nlen &&
            norm[ni] == '$' && norm[ni + 1] >= '0' && norm[ni + 1] <= '9') {
            uint64_t k = 0;
            uint32_t ntok = minus ? 2 : 1;

            ni++;
            while (ni < nlen && norm[ni] >= '0' && norm[ni] <= '9') {
                k = k * 10 + (uint64_t)(norm[ni++] - '0');
                if (k > UINT32_MAX)
                    return 0;
            }
            rg[(*nrg)++] = (sql_region_t){ i, ntok, (uint32_t)k };
            i += ntok - 1;
            ri = p->t[i].end;
            continue;
        }
        if (ni + tl > nlen || memcmp(norm + ni, s + t->start, tl) != 0)
            return 0;
        if (TK_IS_LIT(t->type))
            kept[(*nkept)++] = (sql_kept_t){ i, t->start, tl };
        ni += tl;
        ri = t->end;
    }
    return nlen - ni == p->end - ri && memcmp(norm + ni, s + ri, p->end - ri) == 0;
}

/* Our own normalization for the statements whose literals libpg_query leaves
 * (or may leave) in place: every literal becomes $k, numbered after the
 * highest parameter, left to right. */
static uint32_t own_regions(const piece_in_t *p, sql_region_t *rg)
{
    uint32_t i, nr = 0, k = p->max_param;

    for (i = 0; i < p->n; i++)
        if (TK_IS_LIT(p->t[i].type))
            rg[nr++] = (sql_region_t){ i, 1, ++k };
    return nr;
}

/* The statement with every replaced region swapped for a fixed literal of the
 * same kind. Its fingerprint is libpg_query's fingerprint of the statement
 * (constants do not count in it) but cannot depend on a value hidden by the
 * normalization: a password would otherwise leak as a 64-bit hash, and a
 * cache hit could not reproduce it. */
static char *dummy_text(const piece_in_t *p, const sql_region_t *rg, uint32_t nr)
{
    size_t cap = (size_t)(p->end - p->start) + (size_t)nr * 4 + 1;
    char *out = malloc(cap), *o = out;
    uint32_t pos = p->start, i;

    if (!out)
        return NULL;
    for (i = 0; i < nr; i++) {
        const sql_tok_t *first = &p->t[rg[i].tok], *last = &p->t[rg[i].tok + rg[i].ntok - 1];
        const char *lit;

        memcpy(o, p->s + pos, first->start - pos);
        o += first->start - pos;
        switch (last->type) {
        case TK_L_INT: lit = "0"; break;
        case TK_L_NUM: lit = "0.0"; break;
        case TK_L_BSTR: lit = "b''"; break;
        case TK_L_XSTR: lit = "x''"; break;
        case TK_IDENT: lit = NULL; break;    /* TRUE/FALSE/NULL: the key holds them */
        default: lit = "''"; break;
        }
        if (lit) {
            memcpy(o, lit, strlen(lit));
            o += strlen(lit);
        } else {
            memcpy(o, p->s + first->start, last->end - first->start);
            o += last->end - first->start;
        }
        pos = last->end;
    }
    memcpy(o, p->s + pos, p->end - pos);
    o += p->end - pos;
    *o = 0;
    return out;
}

static int contains_password(const char *s, uint32_t len)
{
    static const char word[] = "password";
    uint32_t i;

    for (i = 0; i + sizeof word - 1 <= len; i++)
        if ((s[i] | 0x20) == 'p' && strncasecmp(s + i, word, sizeof word - 1) == 0)
            return 1;
    return 0;
}

/* The scanner's and parser's messages quote the offending token: 'syntax
 * error at or near "..."', 'unterminated quoted string at or near "'hunt"'.
 * When that token is (part of) a literal it may be the very secret the text
 * was redacted for, so the quote goes; keywords and names stay, they are
 * what makes the message useful -- unless the text speaks of a password
 * (strict): then "PASSWORD hunter2'" must not come back as a name. */
static void scrub_error(const char *msg, int strict, char *out, size_t cap)
{
    static const char near[] = " at or near \"";
    const char *at = strstr(msg, near);
    size_t keep = strlen(msg);

    if (at) {
        const char *tok = at + sizeof near - 1;
        int literal = *tok == '\'' || *tok == '$' || (*tok >= '0' && *tok <= '9') || *tok == '.' ||
                      (tok[0] && tok[1] == '\'') || (tok[0] && tok[1] == '&') ||
                      strchr(tok, '\'') != NULL;

        if (literal || strict)
            keep = (size_t)(at - msg);
    }
    if (keep >= cap)
        keep = cap - 1;
    memcpy(out, msg, keep);
    out[keep] = 0;
}

static sql_entry_t *error_entry(const piece_in_t *p, const char *message)
{
    entry_parts_t ep;
    char scrubbed[256];

    memset(&ep, 0, sizeof ep);
    scrub_error(message ? message : "syntax error",
                contains_password(p->s + p->start, p->end - p->start), scrubbed, sizeof scrubbed);
    message = scrubbed;
    ep.command = sql_guess_command(p->s, p->t, p->n, &ep.cls);
    ep.flags = PGW_SQL_PARSE_ERROR;
    /* raw mode prints unparseable text as sent, unless it may hold a password
     * (a CREATE/ALTER ROLE with a typo, a connection string) */
    if (contains_password(p->s + p->start, p->end - p->start))
        ep.flags |= PGW_SQL_NO_RAW;
    ep.mode = ENTRY_NOCACHE;
    ep.fingerprint = "";
    ep.parse_error = message;
    ep.stmt_len = p->end - p->start;
    return entry_pack(&ep);
}

/* A replication command, as analysed by analysis_repl.c: NULL with *rc 0
 * when the text is none, NULL with *rc -ENOMEM, or a new entry (*rc 0). */
static sql_entry_t *repl_entry(const piece_in_t *p, int *rc)
{
    entry_parts_t ep;
    sql_repl_t r;
    sql_entry_t *e;
    int found = sql_repl_analyze(p->s + p->start, p->end - p->start, &r);

    *rc = found < 0 ? -ENOMEM : 0;
    if (found <= 0)
        return NULL;
    memset(&ep, 0, sizeof ep);
    ep.command = r.command;
    ep.cls = r.cls;
    ep.mode = ENTRY_NOCACHE;
    ep.fingerprint = r.fingerprint;
    ep.stmt_len = p->end - p->start;
    ep.norm = r.norm;
    ep.norm_len = r.norm_len;
    e = entry_pack(&ep);
    free(r.norm);
    if (!e)
        *rc = -ENOMEM;
    return e;
}

/* Analyses one statement. Returns 0 with *out set (a new entry, one
 * reference), 0 with *out NULL when the text holds other than exactly one
 * statement (*multi set), or -ENOMEM. */
static int analyze_piece(const piece_in_t *p, sql_entry_t **out, int *multi)
{
    uint32_t len = p->end - p->start, nr = 0, nk = 0;
    char *buf = NULL, *dummy = NULL, *key = NULL, *rebuilt = NULL;
    sql_region_t *rg = NULL;
    sql_kept_t *kept = NULL;
    PgQueryParseResult pr;
    PgQueryNormalizeResult nres = { NULL, NULL };
    PgQueryFingerprintResult fres = { 0, NULL, NULL, NULL };
    sql_walk_out_t wo;
    entry_parts_t ep;
    uint32_t nstmts;
    int rc = -ENOMEM, wrc;

    *out = NULL;
    *multi = 0;
    memset(&wo, 0, sizeof wo);
    memset(&ep, 0, sizeof ep);
    buf = malloc((size_t)len + 1);
    if (!buf)
        return -ENOMEM;
    memcpy(buf, p->s + p->start, len);
    buf[len] = 0;

    pr = pg_query_parse(buf);
    if (pr.error || !pr.parse_tree) {
        *out = repl_entry(p, &rc);
        if (*out || rc)
            goto out;
        *out = error_entry(p, pr.error ? pr.error->message : NULL);
        rc = *out ? 0 : -ENOMEM;
        goto out;
    }
    wrc = sql_walk(pr.parse_tree, &wo, &nstmts);
    if (wrc == -ENOMEM)
        goto out;
    if (wrc == 0 && nstmts != 1) {
        *multi = 1;
        rc = 0;
        goto out;
    }
    if (wrc) {
        /* parsed, but too deep for us to read: say nothing of it */
        *out = error_entry(p, "statement too deeply nested to analyse");
        rc = *out ? 0 : -ENOMEM;
        goto out;
    }

    rg = malloc(((size_t)p->n + 1) * sizeof *rg);
    kept = malloc(((size_t)p->n + 1) * sizeof *kept);
    key = malloc((size_t)sql_key_bound(p->t, p->n) + SQL_KEY_SLACK);
    if (!rg || !kept || !key)
        goto out;

    ep.command = wo.command;
    ep.cls = wo.cls;
    ep.flags = (wo.no_raw ? PGW_SQL_NO_RAW : 0) | wo.flags;
    ep.objs = wo.objs;
    ep.nobjs = wo.nobjs;
    ep.fns = wo.fns;
    ep.nfns = wo.nfns;
    ep.name = wo.name;
    ep.ntok = p->n;
    ep.stmt_len = len;
    ep.key_len = sql_key_build(p->s, p->t, p->n, key);
    ep.hash = sql_hash(key, ep.key_len);
    ep.mode = ENTRY_SHAPE;

    if (!wo.own_redact) {
        nres = pg_query_normalize(buf);
        if (nres.error || !nres.normalized_query)
            wo.own_redact = 1;    /* cannot happen after a good parse; be safe */
        else if (!align(p, nres.normalized_query, rg, &nr, kept, &nk))
            ep.mode = ENTRY_EXACT;
    }
    if (wo.own_redact) {
        nr = own_regions(p, rg);
        nk = 0;
    }

    if (ep.mode == ENTRY_SHAPE) {
        dummy = dummy_text(p, rg, nr);
        if (!dummy)
            goto out;
        fres = pg_query_fingerprint(dummy);
        if (fres.error) {
            /* our stand-in literal did not parse where the real one did:
             * fall back to the plain fingerprint, and to exact-text caching
             * since the fingerprint now depends on the values */
            pg_query_free_fingerprint_result(fres);
            memset(&fres, 0, sizeof fres);
            if (!wo.no_raw)
                fres = pg_query_fingerprint(buf);
            rebuilt = malloc(sql_rebuild_bound(p->start, p->end, nr) + 1);
            if (!rebuilt)
                goto out;
            ep.norm_len = (uint32_t)sql_rebuild(p->s, p->start, p->end, p->t, rg, nr, rebuilt);
            ep.norm = rebuilt;
            ep.mode = ENTRY_EXACT;
        }
    } else {
        fres = pg_query_fingerprint(buf);
        ep.norm = nres.normalized_query;
        ep.norm_len = (uint32_t)strlen(nres.normalized_query);
    }
    ep.fingerprint = fres.fingerprint_str && !fres.error ? fres.fingerprint_str : "";

    if (ep.mode == ENTRY_EXACT) {
        ep.key = buf;            /* verified byte for byte */
        ep.key_len = len;
        nr = nk = 0;
    } else {
        ep.key = key;
        ep.regions = rg;
        ep.nregions = nr;
        ep.kept = kept;
        ep.nkept = nk;
        ep.kept_src = p->s;
    }
    ep.nocache = p->bad;         /* our tokens disagree with the parser's */
    *out = entry_pack(&ep);
    rc = *out ? 0 : -ENOMEM;
out:
    pg_query_free_parse_result(pr);
    if (nres.normalized_query || nres.error)
        pg_query_free_normalize_result(nres);
    if (fres.fingerprint_str || fres.error || fres.stderr_buffer)
        pg_query_free_fingerprint_result(fres);
    sql_walk_free(&wo);
    free(buf);
    free(dummy);
    free(key);
    free(rebuilt);
    free(rg);
    free(kept);
    return rc;
}

/* ---- a whole string -------------------------------------------------------- */

static void piece_from(piece_in_t *pi, const char *s, const sql_lex_t *lx, const sql_piece_t *p)
{
    pi->s = s;
    pi->start = p->start;
    pi->end = p->end;
    pi->t = lx->toks + p->tok;
    pi->n = p->ntok;
    pi->max_param = p->max_param;
    pi->bad = p->bad;
}

static int is_sql_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f';   /* as scan.l 15: no \v */
}

/* Analyses (or finds) each statement of a slice of sql that the parser
 * delimited, [start,end), and appends them. Used when our own split could not
 * be trusted. Returns 0 or -ENOMEM. */
static int push_delimited(pgw_analysis_cache_t *c, pgw_analysis_t *an, const char *sql,
                          uint32_t start, uint32_t end, sql_lex_t *sub)
{
    piece_in_t pi;
    sql_entry_t *e = NULL;
    int multi, rc;

    while (start < end && is_sql_space(sql[start]))
        start++;
    while (end > start && is_sql_space(sql[end - 1]))
        end--;
    if (start == end)
        return 0;
    if (sql_lex_run(sub, sql + start, end - start, 1))
        return -ENOMEM;
    if (sub->npieces == 0)
        return 0;        /* comments only */
    piece_from(&pi, sql + start, sub, &sub->pieces[0]);
    if (c && !pi.bad)
        e = sql_cache_find(c, pi.s, sub->toks + sub->pieces[0].tok, &sub->pieces[0]);
    if (e) {
        pgw_sql_info_ref(&e->pub);
    } else {
        rc = analyze_piece(&pi, &e, &multi);
        if (rc)
            return rc;
        if (!e)          /* the parser's own statement is not one statement? */
            e = error_entry(&pi, "statement could not be delimited");
        if (!e)
            return -ENOMEM;
        if (c)
            sql_cache_insert(c, e);
    }
    rc = sql_analysis_push(an, e, pi.s, pi.start, pi.end, pi.t, start);
    sql_entry_unref(e);
    return rc;
}

/* Runs libpg_query's parser split over s[start,end) and pushes each
 * statement. Returns 1 when the text parsed, 0 when it did not (nothing
 * pushed), -ENOMEM. */
static int push_parser_split(pgw_analysis_cache_t *c, pgw_analysis_t *an, const char *sql,
                             uint32_t start, uint32_t end)
{
    PgQuerySplitResult sr;
    char *copy = malloc((size_t)(end - start) + 1);
    sql_lex_t sub;
    int rc = 1, i;

    if (!copy)
        return -ENOMEM;
    memcpy(copy, sql + start, end - start);
    copy[end - start] = 0;
    sr = pg_query_split_with_parser(copy);
    free(copy);
    if (sr.error) {
        pg_query_free_split_result(sr);
        return 0;
    }
    sql_lex_init(&sub);
    for (i = 0; i < sr.n_stmts && rc == 1; i++) {
        uint32_t loc = (uint32_t)sr.stmts[i]->stmt_location, len = (uint32_t)sr.stmts[i]->stmt_len;

        if (loc > end - start || len > end - start - loc)
            continue;
        if (push_delimited(c, an, sql, start + loc, start + loc + len, &sub))
            rc = -ENOMEM;
    }
    sql_lex_free(&sub);
    pg_query_free_split_result(sr);
    return rc;
}

/* The statements of sql[0,n): our split, each statement from the cache (when
 * c is given and it fits) or the parser; if a statement fails to parse or
 * turns out to be several, libpg_query's parser split decides instead, and
 * when the whole text does not parse our (scanner) split stands. Not
 * pg_query_split_with_scanner: on "SELECT 1; SELEC 2; SELECT 3" it returns
 * two statements, dropping the very one that an audit must show failed.
 * *all_hit tells whether no statement needed the parser. */
static int analyze_string(pgw_analysis_cache_t *c, const char *sql, uint32_t n,
                          pgw_analysis_t *out, int *all_hit)
{
    sql_lex_t own, *lx;
    sql_entry_t *ents_inline[8], **ents = NULL;
    uint8_t multi_inline[8], *multi = NULL;
    int rc = -ENOMEM, suspect = 0;
    uint32_t i;

    *all_hit = 1;
    if (c) {
        lx = sql_cache_lex(c);
    } else {
        sql_lex_init(&own);
        lx = &own;
    }
    if (sql_lex_run(lx, sql, n, 0))
        goto out;
    /* the common string has a statement or two: no allocation for them */
    if (lx->npieces <= 8) {
        ents = ents_inline;
        multi = multi_inline;
        memset(ents_inline, 0, sizeof ents_inline);
        memset(multi_inline, 0, sizeof multi_inline);
    } else {
        ents = calloc(lx->npieces, sizeof *ents);
        multi = calloc(lx->npieces, 1);
        if (!ents || !multi)
            goto out;
    }
    for (i = 0; i < lx->npieces; i++) {
        const sql_piece_t *p = &lx->pieces[i];
        piece_in_t pi;
        int m;

        if (c && !p->bad)
            ents[i] = sql_cache_find(c, sql, lx->toks + p->tok, p);
        if (ents[i]) {
            pgw_sql_info_ref(&ents[i]->pub);
            continue;
        }
        *all_hit = 0;
        piece_from(&pi, sql, lx, p);
        struct timespec t0, t1;
        if (c)
            clock_gettime(CLOCK_MONOTONIC, &t0);
        int prc = analyze_piece(&pi, &ents[i], &m);
        if (c) {
            clock_gettime(CLOCK_MONOTONIC, &t1);
            sql_cache_parse_time(c, (uint64_t)((t1.tv_sec - t0.tv_sec) * 1000000000LL +
                                               (t1.tv_nsec - t0.tv_nsec)));
        }
        if (prc)
            goto out;
        multi[i] = (uint8_t)m;
        if (m || (ents[i]->pub.flags & PGW_SQL_PARSE_ERROR))
            suspect = 1;
        else if (c)      /* at once: the next statement may share its shape */
            sql_cache_insert(c, ents[i]);
    }

    if (suspect) {
        /* our split may be wrong (a BEGIN ATOMIC body we misjudged): the
         * parser's split of the whole string is the truth, if it parses */
        int r = push_parser_split(c, out, sql, 0, n);

        if (r < 0)
            goto out;
        if (r == 1) {
            rc = 0;
            goto out;
        }
        out->flags |= PGW_ANALYSIS_PARSE_FAILED;
    }
    for (i = 0; i < lx->npieces; i++) {
        const sql_piece_t *p = &lx->pieces[i];

        if (multi[i]) {
            /* parses, as more than one statement: let the parser cut it */
            if (push_parser_split(c, out, sql, p->start, p->end) < 0)
                goto out;
            continue;
        }
        if (sql_analysis_push(out, ents[i], sql, p->start, p->end, lx->toks + p->tok, 0))
            goto out;
    }
    rc = 0;
out:
    if (ents) {
        for (i = 0; i < lx->npieces; i++)
            sql_entry_unref(ents[i]);
    }
    if (ents != ents_inline) {
        free(ents);
        free(multi);
    }
    if (!c)
        sql_lex_free(&own);
    if (rc)
        pgw_analysis_clear(out);
    return rc;
}

/* The server stops at the first NUL, and so do we. memchr, not strnlen:
 * libpg_query exports a byte-at-a-time strnlen of its own that the dynamic
 * linker binds in place of libc's. */
static size_t sql_len(const char *sql, size_t len)
{
    const char *nul = memchr(sql, '\0', len);

    return nul ? (size_t)(nul - sql) : len;
}

int pgw_analysis_parse(const char *sql, size_t len, pgw_analysis_t *out)
{
    int all_hit;

    pgw_analysis_clear(out);
    len = sql_len(sql, len);
    if (len > UINT32_MAX - 1)
        return -E2BIG;
    return analyze_string(NULL, sql, (uint32_t)len, out, &all_hit);
}

int pgw_analysis_run(pgw_analysis_cache_t *c, const char *sql, size_t len, pgw_analysis_t *out)
{
    int all_hit, rc, use_cache;

    pgw_analysis_clear(out);
    len = sql_len(sql, len);
    if (len > UINT32_MAX - 1)
        return -E2BIG;
    use_cache = sql_cache_max_lookup(c, len);
    rc = analyze_string(use_cache ? c : NULL, sql, (uint32_t)len, out, &all_hit);
    if (rc)
        return rc;
    sql_cache_count(c, use_cache && all_hit);
    if (!(use_cache && all_hit))
        pgw_analysis_cache_add(c, out);
    return 0;
}

int pgw_analysis_lookup(pgw_analysis_cache_t *c, const char *sql, size_t len, pgw_analysis_t *out)
{
    sql_lex_t *lx;
    uint32_t i;

    pgw_analysis_clear(out);
    len = sql_len(sql, len);
    if (!sql_cache_max_lookup(c, len)) {
        sql_cache_count(c, 0);
        return 0;
    }
    lx = sql_cache_lex(c);
    if (sql_lex_run(lx, sql, (uint32_t)len, 0))
        return -ENOMEM;
    for (i = 0; i < lx->npieces; i++) {
        const sql_piece_t *p = &lx->pieces[i];
        sql_entry_t *e = p->bad ? NULL : sql_cache_find(c, sql, lx->toks + p->tok, p);

        if (!e) {
            pgw_analysis_clear(out);
            sql_cache_count(c, 0);
            return 0;
        }
        if (sql_analysis_push(out, e, sql, p->start, p->end, lx->toks + p->tok, 0)) {
            pgw_analysis_clear(out);
            return -ENOMEM;
        }
    }
    sql_cache_count(c, 1);
    return 1;
}

unsigned pgw_analysis_split(const char *sql, size_t len, uint32_t (*spans)[2], unsigned cap)
{
    sql_lex_t lx;
    unsigned n;

    len = sql_len(sql, len);
    if (len > UINT32_MAX - 1)
        return 0;
    sql_lex_init(&lx);
    if (sql_lex_run(&lx, sql, (uint32_t)len, 0)) {
        sql_lex_free(&lx);
        return 0;
    }
    n = lx.npieces;
    for (unsigned i = 0; i < n && i < cap; i++) {
        spans[i][0] = lx.pieces[i].start;
        spans[i][1] = lx.pieces[i].end - lx.pieces[i].start;
    }
    sql_lex_free(&lx);
    return n;
}
