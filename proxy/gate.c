/* The access policy's gate on a session's client bytes.
 *
 * Connection rules are decided once the StartupMessage is read (policy.c).
 * When statement rules apply to the session, its client bytes go through
 * the gate: whole messages are taken one by one; a Query or Parse waits
 * for its analysis (this thread's cache; a long text that misses is parsed
 * in libuv's thread pool while the session's reads pause), and a refused
 * one is replaced, on the way to the server, by a statement that fails with
 * the refusal (SQLSTATE 42501, the rule's name). The server then raises the
 * error itself, in order with everything else: the transaction fails as
 * it would have, an extended-protocol batch is skipped until Sync, and
 * every ReadyForQuery tells the truth. A Bind of a refused prepared
 * statement is sent without its parameters. The client's original messages
 * still go to the framer, so the audit records what the client sent, and
 * a Query's analysis made here is the one its audit event uses.
 *
 * Messages that pass unchanged are sent from the read buffer they arrived
 * in, as on the forwarding path without rules; the gate copies only what
 * it holds back (a partial message, messages behind one whose analysis
 * runs off the loop) and what it rewrites. */

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "session_impl.h"
#include "statement.h"

struct gate_job;

#define GATE_PASSED 8

struct pgw_gate {
    uint8_t *in;                    /* client bytes not yet passed (copies) */
    size_t len, cap;
    int busy;                       /* a text is being analysed off the loop */
    struct gate_job *job;
    pgw_analysis_t an;              /* the finished job's analysis, for the head message */
    int has_an;
    char **denied;                  /* prepared statements replaced by a refusal */
    unsigned ndenied;
    /* Statement shapes (analyses shared by the thread's cache) that the
     * session's rules let pass without a word, no rule matching, not even
     * a dry-run one: the rules are not evaluated again for them. Holds a
     * reference on each; emptied when the session's rules change. */
    pgw_sql_info_t *passed[GATE_PASSED];
    unsigned passed_next;
    pgw_buf_t *out;                 /* what goes to the server, copied */
    size_t out_len;
    unsigned admitted;              /* w->admitted when this pass started */
};

typedef struct gate_job {
    uv_work_t req;
    pgw_session_t *s;               /* NULL once the session is gone */
    pgw_analysis_t an;
    int rc;
    size_t len;
    char text[];
} gate_job_t;

static void gate_run(pgw_session_t *s);

static void policy_ident(pgw_session_t *s, pgw_policy_ident_t *id, struct sockaddr_storage *ss)
{
    memset(id, 0, sizeof *id);
    id->listener = s->listen_ep->text;
    id->addr = s->client.is_unix ? NULL : pgw_leg_peer_addr(&s->client, ss);
    id->tls = s->client.ssl != NULL;
    id->has_cert = s->tls_info && s->tls_info->has_cert;
    id->cn = s->tls_info ? s->tls_info->cn : "";
    id->issuer = s->tls_info ? s->tls_info->issuer : "";
    id->user = s->user;
    id->database = s->database;
    id->map = s->tls ? s->tls->map : NULL;
}

static int passed_find(const pgw_gate_t *g, const pgw_sql_info_t *info)
{
    for (unsigned i = 0; i < GATE_PASSED; i++)
        if (g->passed[i] == info)
            return 1;
    return 0;
}

static void passed_add(pgw_gate_t *g, pgw_sql_info_t *info)
{
    unsigned i = g->passed_next++ % GATE_PASSED;
    pgw_sql_info_unref(g->passed[i]);
    g->passed[i] = pgw_sql_info_ref(info);
}

static void passed_clear(pgw_gate_t *g)
{
    for (unsigned i = 0; i < GATE_PASSED; i++) {
        pgw_sql_info_unref(g->passed[i]);
        g->passed[i] = NULL;
    }
}

static void gate_free(pgw_session_t *s)
{
    pgw_gate_t *g = s->gate;
    if (!g)
        return;
    if (g->job)
        g->job->s = NULL;           /* its completion frees it */
    if (g->has_an)
        pgw_analysis_clear(&g->an);
    passed_clear(g);
    for (unsigned i = 0; i < g->ndenied; i++)
        free(g->denied[i]);
    free(g->denied);
    if (g->out)
        pgw_buf_release(&s->w->pool, g->out);
    free(g->in);
    free(g);
    s->gate = NULL;
}

/* The statement rules that apply to the session under pol; opens the gate
 * when there are any. Returns -1 when out of memory. */
static int policy_adopt(pgw_session_t *s, pgw_policy_t *pol)
{
    struct sockaddr_storage ss;
    pgw_policy_ident_t id;
    uint32_t *rules = NULL;
    policy_ident(s, &id, &ss);
    int n = pol ? pgw_policy_session_rules(pol, &id, &rules) : 0;
    if (n < 0)
        return -1;
    if (n > 0 && !s->gate && !(s->gate = calloc(1, sizeof *s->gate))) {
        free(rules);
        return -1;
    }
    if (s->gate)
        passed_clear(s->gate);
    free(s->pol_rules);
    pgw_policy_unref(s->pol);
    s->pol = pgw_policy_ref(pol);
    s->pol_rules = rules;
    s->pol_nrules = (unsigned)n;
    slog(PGW_LOG_DEBUG, s, "%d statement rule(s) apply%s", n,
         s->gate ? ": client messages pass the policy gate" : "");
    return 0;
}

int pgw_gate_refresh(pgw_session_t *s)
{
    pgw_policy_t *pol = pgw_worker_policy(s->w);
    s->pol_gen = s->w->policy_gen;
    if (pol == s->pol)
        return 0;
    if (policy_adopt(s, pol)) {
        pgw_session_close(s, "out of memory");
        return -1;
    }
    return 0;
}

int pgw_gate_connect(pgw_session_t *s)
{
    pgw_policy_t *pol = pgw_worker_policy(s->w);
    s->pol_gen = s->w->policy_gen;
    if (!pol)
        return 0;
    struct sockaddr_storage ss;
    pgw_policy_ident_t id;
    pgw_policy_conn_t c;
    policy_ident(s, &id, &ss);
    pgw_policy_connect(pol, &id, &c);
    s->user_slot = c.user_slot;
    for (unsigned i = 0; i < c.ndry; i++) {
        const char *state = strncmp(c.dry_message[i], "too many", 8) == 0 ? "53300" : "28000";
        pgw_ctr_add(&s->w->metrics.denied_dry_run[0], 1);
        slog(PGW_LOG_INFO, s, "dry run: %s", c.dry_message[i]);
        if (s->audit)
            pgw_audit_denied(s->audit, pgw_policy_rule_name(c.dry[i]), 0, state, c.dry_message[i], NULL, 0,
                             PGW_PROTOCOL_ABSENT, NULL, NULL);
    }
    if (c.refused) {
        pgw_ctr_add(&s->w->metrics.denied[0], 1);
        if (s->audit)
            pgw_audit_denied(s->audit, pgw_policy_rule_name(c.rule), 1, c.sqlstate, c.message, NULL, 0,
                             PGW_PROTOCOL_ABSENT, NULL, NULL);
        s->refusal = strcmp(c.sqlstate, "53300") == 0 ? PGW_REFUSED_LIMIT : PGW_REFUSED_AUTHENTICATION;
        pgw_session_fatal(s, c.sqlstate, "%s", c.message);
        return -1;
    }
    if (policy_adopt(s, pol)) {
        pgw_session_close(s, "out of memory");
        return -1;
    }
    return 0;
}

/* ---- the gate's output --------------------------------------------------- */

static void gate_flush(pgw_session_t *s)
{
    pgw_gate_t *g = s->gate;
    pgw_buf_t *b = g->out;
    size_t n = g->out_len;
    g->out = NULL;
    g->out_len = 0;
    if (!b)
        return;
    if (n && (s->state == S_FORWARDING || s->state == S_FINISHING))
        pgw_session_pass(s, b, n, g->admitted);
    pgw_buf_release(&s->w->pool, b);
}

static int gate_out(pgw_session_t *s, const void *p, size_t n)
{
    pgw_gate_t *g = s->gate;
    const uint8_t *at = p;
    while (n) {
        if (!g->out) {
            if (!(g->out = pgw_buf_get(&s->w->pool)))
                return -1;
            g->out_len = 0;
        }
        size_t k = g->out->cap - g->out_len < n ? g->out->cap - g->out_len : n;
        memcpy(g->out->data + g->out_len, at, k);
        g->out_len += k;
        at += k;
        n -= k;
        if (g->out_len == g->out->cap)
            gate_flush(s);
    }
    return 0;
}

static void put32(uint8_t *p, uint32_t v)
{
    v = htonl(v);
    memcpy(p, &v, 4);
}

/* A statement the server runs in place of a refused one: it fails with
 * SQLSTATE 42501 and the refusal's message, as the server would fail a
 * statement it refused itself (a dollar-quoted DO block; the message as an
 * escape string literal). Returns its length, or 0 when it does not fit. */
static size_t refusal_sql(char *out, size_t cap, const char *msg)
{
    char lit[768], tag[16];
    size_t n = 0;
    for (const char *c = msg; *c && n + 3 < sizeof lit; c++) {
        if (*c == '\'' || *c == '\\')
            lit[n++] = *c;
        lit[n++] = *c;
    }
    lit[n] = '\0';
    snprintf(tag, sizeof tag, "$pgw$");
    for (int i = 0; strstr(lit, tag) && i < 1000; i++)
        snprintf(tag, sizeof tag, "$pgw%d$", i);
    int len = snprintf(out, cap, "DO %sBEGIN RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = E'%s'; END%s",
                       tag, lit, tag);
    return len > 0 && (size_t)len < cap ? (size_t)len : 0;
}

static int denied_find(const pgw_gate_t *g, const char *name)
{
    for (unsigned i = 0; i < g->ndenied; i++)
        if (strcmp(g->denied[i], name) == 0)
            return (int)i;
    return -1;
}

/* Prepared statement name now holds a refusal (on), or its own text. */
static int denied_set(pgw_gate_t *g, const char *name, int on)
{
    int i = denied_find(g, name);
    if (!on) {
        if (i >= 0) {
            free(g->denied[i]);
            g->denied[i] = g->denied[--g->ndenied];
        }
        return 0;
    }
    if (i >= 0)
        return 0;
    char **grown = realloc(g->denied, (g->ndenied + 1) * sizeof *grown);
    if (!grown)
        return -1;
    g->denied = grown;
    if (!(g->denied[g->ndenied] = strdup(name)))
        return -1;
    g->ndenied++;
    return 0;
}

/* ---- the gate's decisions ------------------------------------------------ */

static void gate_job_work(uv_work_t *req)
{
    gate_job_t *j = req->data;
    j->rc = pgw_analysis_parse(j->text, j->len, &j->an);
}

static void gate_job_done(uv_work_t *req, int status)
{
    gate_job_t *j = req->data;
    pgw_session_t *s = j->s;
    (void)status;
    if (!s) {
        pgw_analysis_clear(&j->an);
        free(j);
        return;
    }
    pgw_gate_t *g = s->gate;
    g->job = NULL;
    g->busy = 0;
    if (j->rc == 0) {
        if (s->w->analysis)
            pgw_analysis_cache_add(s->w->analysis, &j->an);
        g->an = j->an;              /* moved: the struct may be copied whole */
        g->has_an = 1;
    }
    free(j);
    if (s->state != S_FORWARDING)
        return;
    if (!g->has_an) {
        pgw_session_fatal(s, "53200", "out of memory analysing a statement for the access policy");
        return;
    }
    if (!s->client.paused)
        pgw_leg_read_start(&s->client);
    gate_run(s);
}

/* The analysis of the head message's text: 1 ready in *an, 0 when it is
 * being parsed off the loop (the gate waits), -1 out of memory. */
static int gate_analyze(pgw_session_t *s, const char *text, size_t len, pgw_analysis_t *an)
{
    pgw_gate_t *g = s->gate;
    if (g->has_an) {
        *an = g->an;
        g->has_an = 0;
        return 1;
    }
    pgw_analysis_cache_t *c = s->w->analysis;
    if (!c)
        return -1;
    int rc = pgw_analysis_lookup(c, text, len, an);
    if (rc != 0)
        return rc == 1 ? 1 : -1;
    if (len <= PGW_ANALYSIS_SYNC_MAX)
        return pgw_analysis_run(c, text, len, an) == 0 ? 1 : -1;
    gate_job_t *j = malloc(sizeof *j + len + 1);
    if (!j)
        return -1;
    j->req.data = j;
    j->s = s;
    j->len = len;
    memcpy(j->text, text, len);
    j->text[len] = '\0';
    pgw_analysis_init(&j->an);
    if (uv_queue_work(&s->w->loop, &j->req, gate_job_work, gate_job_done)) {
        free(j);
        return -1;
    }
    g->job = j;
    g->busy = 1;
    pgw_leg_read_stop(&s->client);
    return 0;
}

/* Logs, counts and records verdict v on a statement of analysis an (dry
 * run matches: dry_idx[k] is the statement of v->dry[k]; a refusal:
 * deny_idx) or on a FunctionCall (an NULL). Returns 1 when refused
 * (*msg_out set), else 0. */
static int gate_report(pgw_session_t *s, const pgw_policy_verdict_t *v, const char *what,
                       const pgw_analysis_t *an, const uint32_t *dry_idx, uint32_t deny_idx,
                       pgw_stmt_protocol_t proto, const char *stmt_name, const char *call_text,
                       char *msg_out, size_t msg_cap)
{
    for (unsigned k = 0; k < v->ndry; k++) {
        const char *rule = pgw_policy_rule_name(v->dry[k]);
        char dmsg[256];
        snprintf(dmsg, sizeof dmsg, "pgwarden rule \"%s\" would deny this %s (dry run: forwarded)", rule,
                 what);
        pgw_ctr_add(&s->w->metrics.denied_dry_run[1], 1);
        slog(PGW_LOG_INFO, s, "%s", dmsg);
        if (s->audit)
            pgw_audit_denied(s->audit, rule, 0, "42501", dmsg, an, dry_idx ? dry_idx[k] : 0, proto, stmt_name,
                             call_text);
    }
    if (!v->deny)
        return 0;
    pgw_ctr_add(&s->w->metrics.denied[1], 1);
    slog(PGW_LOG_INFO, s, "denied: %s", v->message);
    if (s->audit)
        pgw_audit_denied(s->audit, pgw_policy_rule_name(v->deny), 1, "42501", v->message, an, deny_idx, proto,
                         stmt_name, call_text);
    snprintf(msg_out, msg_cap, "%s", v->message);
    return 1;
}

/* Statement rules on one Query ('Q') or Parse ('P') text, whose analysis
 * is left in *an (the caller clears it). Returns 1 when refused (*msg_out
 * set), 0 to pass, 2 to wait, -1 when the session ended. */
static int gate_check(pgw_session_t *s, char kind, const char *text, size_t len, const char *stmt_name,
                      pgw_analysis_t *an, char *msg_out, size_t msg_cap)
{
    int rc = gate_analyze(s, text, len, an);
    if (rc == 0)
        return 2;
    if (rc < 0) {
        pgw_session_fatal(s, "53200", "out of memory analysing a statement for the access policy");
        return -1;
    }
    pgw_policy_verdict_t v;
    uint32_t dry_idx[8] = { 0 }, deny_idx = 0;
    memset(&v, 0, sizeof v);
    for (uint32_t i = 0; i < an->count && !v.deny; i++) {
        pgw_sql_info_t *info = pgw_analysis_stmt(an, i)->info;
        if (!info || passed_find(s->gate, info))
            continue;
        unsigned before = v.ndry;
        pgw_policy_statement(s->pol, s->pol_rules, s->pol_nrules, info, &v);
        for (unsigned k = before; k < v.ndry; k++)
            dry_idx[k] = i;
        deny_idx = i;
        if (!v.deny && v.ndry == before && !(info->flags & PGW_SQL_PARSE_ERROR))
            passed_add(s->gate, info);
    }
    pgw_stmt_protocol_t proto = kind == 'Q' ? PGW_PROTOCOL_SIMPLE : PGW_PROTOCOL_EXTENDED;
    return gate_report(s, &v, "statement", an, dry_idx, deny_idx, proto, stmt_name, NULL, msg_out, msg_cap);
}

/* A FunctionCall ('F', body of blen bytes): a call of a function by its
 * OID, outside SQL. The rules see it as a statement of class FUNCTION,
 * command "FUNCTION CALL", that names no relation and calls the function
 * when its OID is one of the fixed ones pgwarden knows (the large-object
 * functions: function=lo_export matches); its denied event names the
 * function. Returns 1 when refused (*msg_out set), else 0. */
static int gate_check_call(pgw_session_t *s, const char *body, size_t blen, char *msg_out, size_t msg_cap)
{
    pgw_msg_t m = { .type = 'F', .len = (uint32_t)blen + 4, .body = (const uint8_t *)body,
                    .body_len = (uint32_t)blen };
    pgw_fcall_t f;
    int parsed = pgw_parse_function_call(&m, &f) == 0;
    const char *name = parsed ? pgw_fcall_name(f.oid) : NULL;
    const pgw_sql_object_t fn = { .schema = "pg_catalog", .name = name, .type = "function" };
    const pgw_sql_info_t call = { .command = "FUNCTION CALL", .cls = PGW_CLASS_FUNCTION,
                                  .fingerprint = "", .nfunctions = name ? 1 : 0, .functions = &fn };
    pgw_policy_verdict_t v;
    memset(&v, 0, sizeof v);
    pgw_policy_statement(s->pol, s->pol_rules, s->pol_nrules, &call, &v);
    if (!v.deny && !v.ndry)
        return 0;
    char text[PGW_FCALL_TEXT_MAX];
    if (parsed)
        (void)pgw_fcall_describe(&f, text);
    return gate_report(s, &v, "function call", NULL, NULL, 0, PGW_PROTOCOL_FUNCTION_CALL, NULL,
                       parsed ? text : NULL, msg_out, msg_cap);
}

/* A message the server receives in place of the client's: the refusal's
 * statement under the Parse's name (msg[0] 'P') or as a Query ('Q').
 * Returns it (malloc'd, *len set), or NULL when out of memory. */
static uint8_t *refusal_message(char type, const char *name, const char *sql, size_t ql, size_t *len)
{
    size_t nl = type == 'P' ? strlen(name) + 1 : 0;
    size_t n = 5 + nl + ql + 1 + (type == 'P' ? 2 : 0);
    uint8_t *sub = calloc(1, n);
    if (!sub)
        return NULL;
    sub[0] = (uint8_t)type;
    put32(sub + 1, (uint32_t)n - 1);
    memcpy(sub + 5, name, nl);
    memcpy(sub + 5 + nl, sql, ql);  /* then NUL, and Parse's 0 parameter types */
    *len = n;
    return sub;
}

/* Decides on one whole client message m of n bytes and shows it to the
 * framer. *sub is set to what the server gets in its place (malloc'd), or
 * NULL when m passes unchanged. Returns 0 when decided, 1 to wait for its
 * analysis, -1 when the session ended. */
static int gate_decide(pgw_session_t *s, const uint8_t *m, size_t n, uint8_t **sub, size_t *sub_len)
{
    pgw_gate_t *g = s->gate;
    const char *body = (const char *)m + 5;
    size_t blen = n - 5;
    pgw_analysis_t an;
    int has_an = 0;
    char msg[256], sql[1024];

    *sub = NULL;
    if (m[0] == 'Q' || m[0] == 'P') {
        const char *name = "", *text = body;
        const char *nul = memchr(body, 0, blen);
        if (m[0] == 'P' && nul) {
            name = body;
            text = nul + 1;
            nul = memchr(text, 0, blen - (size_t)(text - body));
        }
        if (nul) {                  /* else malformed: the server says so */
            pgw_analysis_init(&an);
            has_an = 1;
            int rc = gate_check(s, (char)m[0], text, (size_t)(nul - text), m[0] == 'P' ? name : NULL, &an,
                                msg, sizeof msg);
            if (rc == 2 || rc < 0) {
                pgw_analysis_clear(&an);
                return rc == 2 ? 1 : -1;
            }
            if (m[0] == 'P' && denied_set(g, name, rc == 1)) {
                pgw_analysis_clear(&an);
                pgw_session_close(s, "out of memory");
                return -1;
            }
            size_t ql = rc == 1 ? refusal_sql(sql, sizeof sql, msg) : 0;
            if (rc == 1 && !ql) {
                pgw_analysis_clear(&an);
                pgw_session_fatal(s, "42501", "%s", msg);
                return -1;
            }
            if (ql && !(*sub = refusal_message((char)m[0], name, sql, ql, sub_len))) {
                pgw_analysis_clear(&an);
                pgw_session_close(s, "out of memory");
                return -1;
            }
        }
    } else if (m[0] == 'F') {
        /* Refused: the server runs the refusal as a Query, which answers
         * as a failed call does (ErrorResponse, then ReadyForQuery). */
        if (gate_check_call(s, body, blen, msg, sizeof msg)) {
            size_t ql = refusal_sql(sql, sizeof sql, msg);
            if (!ql) {
                pgw_session_fatal(s, "42501", "%s", msg);
                return -1;
            }
            if (!(*sub = refusal_message('Q', "", sql, ql, sub_len))) {
                pgw_session_close(s, "out of memory");
                return -1;
            }
        }
    } else if (m[0] == 'B' && g->ndenied) {
        const char *nul = memchr(body, 0, blen);
        const char *stmt = nul ? nul + 1 : NULL;
        const char *nul2 = stmt ? memchr(stmt, 0, blen - (size_t)(stmt - body)) : NULL;
        if (nul2 && denied_find(g, stmt) >= 0) {
            /* The refusal takes no parameters: they are not sent. */
            size_t hl = (size_t)(nul2 + 1 - body);
            *sub_len = 5 + hl + 6;
            if (!(*sub = calloc(1, *sub_len))) {
                pgw_session_close(s, "out of memory");
                return -1;
            }
            (*sub)[0] = 'B';
            put32(*sub + 1, (uint32_t)*sub_len - 1);
            memcpy(*sub + 5, body, hl);
        }
    }
    /* The framer (and the audit) sees what the client sent; a Query's
     * analysis goes with it, so the audit does not make it again. */
    if (has_an && m[0] == 'Q' && s->audit)
        s->audit->given = &an;
    ssize_t r = pgw_framer_feed(&s->fe, m, n);
    if (s->audit)
        s->audit->given = NULL;
    if (has_an)
        pgw_analysis_clear(&an);
    if (r < 0 || s->state != S_FORWARDING) {
        free(*sub);
        *sub = NULL;
        if (r < 0)
            pgw_session_fatal(s, "08P01", "invalid message from client: %s", pgw_framer_strerror((int)r));
        return -1;
    }
    return 0;
}

/* The length of the whole message at p (n bytes there), 0 when it is not
 * all there yet, -1 (the session refused) when its length is invalid. */
static ssize_t whole_message(pgw_session_t *s, const uint8_t *p, size_t n)
{
    if (n < 5)
        return 0;
    uint32_t mlen;
    memcpy(&mlen, p + 1, 4);
    mlen = ntohl(mlen);
    if (mlen < 4 || mlen > s->w->cfg->max_message_size) {
        pgw_session_fatal(s, "08P01", "invalid message from client: invalid message length %u", mlen);
        return -1;
    }
    return n - 1 >= mlen ? (ssize_t)mlen + 1 : 0;
}

/* Passes every whole message the gate holds, in order, until one waits
 * for its analysis. */
static void gate_run(pgw_session_t *s)
{
    pgw_gate_t *g = s->gate;
    size_t off = 0;
    if (pgw_policy_generation() != s->pol_gen && pgw_gate_refresh(s))
        return;
    g->admitted = s->w->admitted;
    while (!g->busy && s->state == S_FORWARDING) {
        ssize_t mlen = whole_message(s, g->in + off, g->len - off);
        if (mlen <= 0)
            break;
        uint8_t *sub;
        size_t sub_len = 0;
        int rc = gate_decide(s, g->in + off, (size_t)mlen, &sub, &sub_len);
        if (rc)
            break;
        rc = sub ? gate_out(s, sub, sub_len) : gate_out(s, g->in + off, (size_t)mlen);
        free(sub);
        if (rc) {
            pgw_session_close(s, "out of memory");
            break;
        }
        off += (size_t)mlen;
    }
    if (!s->gate)
        return;
    if (off) {
        memmove(g->in, g->in + off, g->len - off);
        g->len -= off;
    }
    gate_flush(s);
}

/* Only a Query, a Parse, a FunctionCall and a Bind of a refused statement
 * are looked at. */
static int needs_decision(const pgw_gate_t *g, uint8_t type)
{
    return type == 'Q' || type == 'P' || type == 'F' || (type == 'B' && g->ndenied);
}

/* Shows n bytes of whole messages that need no decision to the framer at
 * once. Returns -1 when the session ended. */
static int feed_run(pgw_session_t *s, const uint8_t *p, size_t n)
{
    if (!n)
        return 0;
    ssize_t r = pgw_framer_feed(&s->fe, p, n);
    if (r < 0) {
        pgw_session_fatal(s, "08P01", "invalid message from client: %s", pgw_framer_strerror((int)r));
        return -1;
    }
    return s->state == S_FORWARDING ? 0 : -1;
}

/* Messages straight from read buffer b, when the gate holds nothing: those
 * that pass unchanged are sent from b itself. Returns how many bytes were
 * dealt with (the rest, from a partial message or one that waits for its
 * analysis, goes to the gate's buffer). */
static size_t gate_pass(pgw_session_t *s, pgw_buf_t *b, size_t n)
{
    pgw_gate_t *g = s->gate;
    const uint8_t *p = b->data;
    size_t off = 0, from = 0;       /* [from, off): passed unchanged, not sent yet */
    size_t fed = 0;                 /* [0, fed): shown to the framer */
    if (pgw_policy_generation() != s->pol_gen && pgw_gate_refresh(s))
        return n;
    unsigned admitted = g->admitted = s->w->admitted;
    while (s->state == S_FORWARDING) {
        ssize_t mlen = whole_message(s, p + off, n - off);
        if (mlen < 0)
            return n;
        if (mlen == 0)
            break;
        if (!needs_decision(g, p[off])) {
            off += (size_t)mlen;
            continue;
        }
        if (feed_run(s, p + fed, off - fed))
            return n;
        fed = off;
        uint8_t *sub;
        size_t sub_len = 0;
        int rc = gate_decide(s, p + off, (size_t)mlen, &sub, &sub_len);
        if (rc < 0)
            return n;
        if (rc)
            break;                  /* it waits, not shown to the framer yet */
        fed = off + (size_t)mlen;
        if (sub) {
            rc = gate_out(s, p + from, off - from) || gate_out(s, sub, sub_len);
            free(sub);
            if (rc) {
                pgw_session_close(s, "out of memory");
                return n;
            }
            from = off + (size_t)mlen;
        }
        off += (size_t)mlen;
    }
    if (s->state != S_FORWARDING || !s->gate || feed_run(s, p + fed, off - fed))
        return n;
    if (from == 0 && !g->out) {
        if (off)
            pgw_session_pass(s, b, off, admitted);
        return off;
    }
    if (gate_out(s, p + from, off - from)) {
        pgw_session_close(s, "out of memory");
        return n;
    }
    gate_flush(s);
    return off;
}

void pgw_gate_input(pgw_session_t *s, pgw_buf_t *b, const uint8_t *p, size_t n)
{
    pgw_gate_t *g = s->gate;
    if (s->state == S_FORWARDING && !g->busy && !g->len && p == b->data) {
        size_t done = gate_pass(s, b, n);
        if (done == n || s->state != S_FORWARDING || !s->gate)
            return;
        p += done;
        n -= done;
    }
    if (g->len + n > g->cap) {
        size_t ncap = g->cap ? g->cap : 8192;
        while (ncap < g->len + n)
            ncap *= 2;
        uint8_t *grown = realloc(g->in, ncap);
        if (!grown) {
            pgw_session_close(s, "out of memory");
            return;
        }
        g->in = grown;
        g->cap = ncap;
    }
    memcpy(g->in + g->len, p, n);
    g->len += n;
    if (s->state == S_FORWARDING && !g->busy)
        gate_run(s);
}

void pgw_gate_resume(pgw_session_t *s)
{
    if (s->gate->len)
        gate_run(s);
}

/* Where a refusal's error came from on the server: the DO block that ran
 * in place of the refused statement. */
static const char refusal_context[] = "PL/pgSQL function inline_code_block";
static const char refusal_prefix[] = "permission denied by pgwarden rule \"";

void pgw_gate_server_error(pgw_session_t *s, const pgw_msg_t *m)
{
    /* body: (field code, NUL-terminated value)..., then a 0 byte */
    const char *f = (const char *)m->body, *end = f ? f + m->body_len : NULL;
    int ours = 0, context = 0;
    if (!f || m->body_len < 2 || end[-1] != 0)
        return;
    for (const char *p = f; p < end && *p; p += strlen(p) + 1) {
        if (*p == 'C')
            ours += strcmp(p + 1, "42501") == 0;
        else if (*p == 'M')
            ours += strncmp(p + 1, refusal_prefix, sizeof refusal_prefix - 1) == 0;
        else if (*p == 'W')
            context = strncmp(p + 1, refusal_context, sizeof refusal_context - 1) == 0;
    }
    if (ours != 2 || !context)
        return;
    /* The same fields without the context and the server's source location
     * (file, line, routine of PL/pgSQL's RAISE): the refusal is pgwarden's. */
    uint8_t *out = malloc(1 + (size_t)m->len);
    if (!out)
        return;
    size_t k = 5;
    for (const char *p = f; p < end && *p; p += strlen(p) + 1) {
        if (*p == 'W' || *p == 'F' || *p == 'L' || *p == 'R')
            continue;
        size_t l = strlen(p) + 1;
        memcpy(out + k, p, l);
        k += l;
    }
    out[k++] = 0;
    out[0] = 'E';
    put32(out + 1, (uint32_t)(k - 1));
    if (pgw_session_replace_server_msg(s, m, out, k))
        slog(PGW_LOG_DEBUG, s, "a refusal's error keeps its PL/pgSQL context (not whole in one read)");
}

void pgw_gate_release(pgw_session_t *s)
{
    gate_free(s);
    free(s->pol_rules);
    s->pol_rules = NULL;
    pgw_policy_unref(s->pol);
    s->pol = NULL;
}
