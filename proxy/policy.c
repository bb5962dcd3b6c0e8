#include "policy.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ident.h"

#define POLICY_FILE_MAX (1024 * 1024)
#define POLICY_LINE_MAX 4096
#define POLICY_ITEM_MAX 512
#define POLICY_NAME_MAX 64

enum rule_kind {
    R_CONN_ALLOW, R_CONN_DENY, R_REQUIRE_TLS, R_REQUIRE_CERT, R_MAX_SESSIONS,
    R_STMT_ALLOW, R_STMT_DENY, R_READ_ONLY, R_REQUIRE_WHERE,
};
#define IS_STMT(k) ((k) >= R_STMT_ALLOW)

typedef struct strlist {
    char **v;
    unsigned n;
} strlist_t;

typedef struct net {
    int family;                     /* AF_INET, AF_INET6; 0: `local` (unix sockets) */
    uint8_t addr[16];
    int bits;
} net_t;

typedef struct relpat {
    char *schema;                   /* NULL: any schema */
    char *name;                     /* NULL: `schema.*` */
    int access;                     /* -1: either; else pgw_access_t */
} relpat_t;

struct pgw_policy_rule {
    enum rule_kind kind;
    char name[POLICY_NAME_MAX + 32];
    int dry_run;
    unsigned max_sessions;
    /* whom it applies to: empty lists match anything */
    strlist_t listeners, cns, issuers, users, databases;
    net_t *nets;
    unsigned nnets;
    int tls;                        /* -1 either, 0 plaintext, 1 TLS */
    /* which statements */
    unsigned classes;               /* bit 1 << pgw_audit_class_t; 0: any */
    strlist_t commands;             /* upper case */
    relpat_t *rels;
    unsigned nrels;
    relpat_t *fns;                  /* function=: access unused (-1) */
    unsigned nfns;
};

typedef struct group {
    char *name;
    strlist_t members;
} group_t;

struct pgw_policy {
    atomic_uint refs;
    pgw_policy_rule_t *rules;
    unsigned n;
    group_t *groups;
    unsigned ngroups;
};

/* ---- lifetime ------------------------------------------------------------ */

static void strlist_free(strlist_t *l)
{
    for (unsigned i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static void rule_free(pgw_policy_rule_t *r)
{
    strlist_free(&r->listeners);
    strlist_free(&r->cns);
    strlist_free(&r->issuers);
    strlist_free(&r->users);
    strlist_free(&r->databases);
    strlist_free(&r->commands);
    free(r->nets);
    for (unsigned i = 0; i < r->nrels; i++) {
        free(r->rels[i].schema);
        free(r->rels[i].name);
    }
    free(r->rels);
    for (unsigned i = 0; i < r->nfns; i++) {
        free(r->fns[i].schema);
        free(r->fns[i].name);
    }
    free(r->fns);
}

pgw_policy_t *pgw_policy_ref(pgw_policy_t *p)
{
    if (p)
        atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
    return p;
}

void pgw_policy_unref(pgw_policy_t *p)
{
    if (!p || atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (unsigned i = 0; i < p->n; i++)
        rule_free(&p->rules[i]);
    free(p->rules);
    for (unsigned i = 0; i < p->ngroups; i++) {
        free(p->groups[i].name);
        strlist_free(&p->groups[i].members);
    }
    free(p->groups);
    free(p);
}

unsigned pgw_policy_nrules(const pgw_policy_t *p)
{
    return p ? p->n : 0;
}

const char *pgw_policy_rule_name(const pgw_policy_rule_t *r)
{
    return r->name;
}

int pgw_policy_rule_dry_run(const pgw_policy_rule_t *r)
{
    return r->dry_run;
}

/* ---- parsing ------------------------------------------------------------- */

typedef struct parser {
    const char *file;
    int line;
    char *err;
    size_t errcap;
} parser_t;

static int fail(parser_t *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(parser_t *ps, const char *fmt, ...)
{
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    snprintf(ps->err, ps->errcap, "%s:%d: %s", ps->file, ps->line, why);
    return -1;
}

static int strlist_add(strlist_t *l, const char *s)
{
    char **grown = realloc(l->v, (l->n + 1) * sizeof *grown);
    if (!grown)
        return -1;
    l->v = grown;
    if (!(l->v[l->n] = strdup(s)))
        return -1;
    l->n++;
    return 0;
}

static void skip_space(const char **p)
{
    while (**p == ' ' || **p == '\t' || **p == '\r')
        (*p)++;
}

/* One item of a field at *p: a double-quoted string ("" is a quote) or a
 * run of characters up to a comma, white space or the end. Returns 1, or
 * -1 when it is too long or a quote is not closed. */
static int next_item(const char **p, char *out, size_t cap)
{
    const char *s = *p;
    size_t n = 0;
    if (*s == '"') {
        for (s++;; s++) {
            if (!*s)
                return -1;
            if (*s == '"') {
                if (s[1] != '"')
                    break;
                s++;
            }
            if (n + 1 >= cap)
                return -1;
            out[n++] = *s;
        }
        s++;
    } else {
        while (*s && *s != ',' && *s != ' ' && *s != '\t' && *s != '\r') {
            if (n + 1 >= cap)
                return -1;
            out[n++] = *s++;
        }
    }
    out[n] = '\0';
    *p = s;
    return 1;
}

/* A word: up to white space or '='. */
static size_t word_len(const char *s)
{
    size_t n = 0;
    while (s[n] && s[n] != ' ' && s[n] != '\t' && s[n] != '\r' && s[n] != '=')
        n++;
    return n;
}

static int parse_net(parser_t *ps, const char *item, net_t *out)
{
    char host[POLICY_ITEM_MAX];
    memset(out, 0, sizeof *out);
    if (strcmp(item, "local") == 0)
        return 0;                   /* family 0 */
    snprintf(host, sizeof host, "%s", item);
    char *slash = strchr(host, '/');
    int bits = -1;
    if (slash) {
        *slash = '\0';
        char *end;
        long b = strtol(slash + 1, &end, 10);
        if (!slash[1] || *end || b < 0 || b > 128)
            return fail(ps, "invalid prefix length in address \"%s\"", item);
        bits = (int)b;
    }
    if (inet_pton(AF_INET, host, out->addr) == 1) {
        out->family = AF_INET;
        if (bits > 32)
            return fail(ps, "invalid prefix length in address \"%s\"", item);
        out->bits = bits < 0 ? 32 : bits;
    } else if (inet_pton(AF_INET6, host, out->addr) == 1) {
        out->family = AF_INET6;
        out->bits = bits < 0 ? 128 : bits;
    } else {
        return fail(ps, "\"%s\" is not an IPv4 or IPv6 address (CIDR), nor local", item);
    }
    return 0;
}

static int parse_class(const char *item)
{
    static const struct { const char *name; pgw_audit_class_t cls; } classes[] = {
        { "READ", PGW_CLASS_READ }, { "WRITE", PGW_CLASS_WRITE }, { "FUNCTION", PGW_CLASS_FUNCTION },
        { "ROLE", PGW_CLASS_ROLE }, { "DDL", PGW_CLASS_DDL }, { "MISC", PGW_CLASS_MISC },
        { "MISC_SET", PGW_CLASS_MISC_SET },
    };
    for (size_t i = 0; i < sizeof classes / sizeof classes[0]; i++)
        if (strcasecmp(item, classes[i].name) == 0)
            return (int)classes[i].cls;
    return -1;
}

/* [SCHEMA.]NAME or SCHEMA.*, and for a relation :read or :write. */
static int parse_pattern(parser_t *ps, const char *item, int is_fn, relpat_t *out)
{
    const char *what = is_fn ? "function" : "relation", *obj = is_fn ? "FUNCTION" : "TABLE";
    char buf[POLICY_ITEM_MAX];
    memset(out, 0, sizeof *out);
    out->access = -1;
    snprintf(buf, sizeof buf, "%s", item);
    char *colon = is_fn ? NULL : strrchr(buf, ':');
    if (colon) {
        *colon = '\0';
        if (strcasecmp(colon + 1, "read") == 0)
            out->access = PGW_ACCESS_READ;
        else if (strcasecmp(colon + 1, "write") == 0)
            out->access = PGW_ACCESS_WRITE;
        else
            return fail(ps, "relation \"%s\": access must be :read or :write", item);
    }
    char *dot = strchr(buf, '.');
    const char *schema = NULL, *name = buf;
    if (dot) {
        *dot = '\0';
        schema = buf;
        name = dot + 1;
    }
    if (!*name || (schema && !*schema) || strchr(name, '.') || (is_fn && strchr(name, '(')))
        return fail(ps, "%s \"%s\": expected [SCHEMA.]%s or SCHEMA.*", what, item, obj);
    if (strcmp(name, "*") == 0 && !schema)
        return fail(ps, "%s \"%s\": a wildcard needs a schema (SCHEMA.*)", what, item);
    if ((schema && !(out->schema = strdup(schema))) ||
        (strcmp(name, "*") != 0 && !(out->name = strdup(name))))
        return fail(ps, "out of memory");
    return 0;
}

static int valid_name(const char *s)
{
    if (!*s || strlen(s) > POLICY_NAME_MAX)
        return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_' && *s != '-' && *s != '.')
            return 0;
    return 1;
}

/* key=value[,value...] of rule r at *p. */
static int parse_field(parser_t *ps, pgw_policy_rule_t *r, const char *key, size_t klen, const char **p)
{
    char item[POLICY_ITEM_MAX];
    int stmt = IS_STMT(r->kind);
#define KEY(k) (klen == sizeof(k) - 1 && strncmp(key, k, klen) == 0)
    for (int first = 1;; first = 0) {
        if (!first) {
            if (**p != ',')
                break;
            (*p)++;
        }
        if (next_item(p, item, sizeof item) < 0)
            return fail(ps, "%.*s: value too long or quote not closed", (int)klen, key);
        if (!item[0])
            return fail(ps, "%.*s: empty value", (int)klen, key);
        int rc = 0;
        if (KEY("name")) {
            if (!first || !valid_name(item))
                return fail(ps, "name \"%s\": one name of letters, digits, '_', '-', '.' (at most %d)",
                            item, POLICY_NAME_MAX);
            snprintf(r->name, sizeof r->name, "%.64s", item);
        } else if (KEY("listener")) {
            rc = strlist_add(&r->listeners, item);
        } else if (KEY("address")) {
            net_t *grown = realloc(r->nets, (r->nnets + 1) * sizeof *grown);
            if (!grown)
                return fail(ps, "out of memory");
            r->nets = grown;
            if (parse_net(ps, item, &r->nets[r->nnets]))
                return -1;
            r->nnets++;
        } else if (KEY("tls")) {
            if (!strcasecmp(item, "yes") || !strcasecmp(item, "on") || !strcasecmp(item, "true"))
                r->tls = 1;
            else if (!strcasecmp(item, "no") || !strcasecmp(item, "off") || !strcasecmp(item, "false"))
                r->tls = 0;
            else
                return fail(ps, "tls \"%s\": expected yes or no", item);
        } else if (KEY("cn")) {
            rc = strlist_add(&r->cns, item);
        } else if (KEY("issuer")) {
            rc = strlist_add(&r->issuers, item);
        } else if (KEY("user")) {
            rc = strcmp(item, "all") ? strlist_add(&r->users, item) : 0;
        } else if (KEY("database")) {
            rc = strcmp(item, "all") ? strlist_add(&r->databases, item) : 0;
        } else if (KEY("class") && stmt) {
            int c = parse_class(item);
            if (c < 0)
                return fail(ps, "class \"%s\": expected READ, WRITE, FUNCTION, ROLE, DDL, MISC or MISC_SET",
                            item);
            r->classes |= 1u << c;
        } else if (KEY("command") && stmt) {
            for (char *c = item; *c; c++)
                *c = (char)toupper((unsigned char)*c);
            rc = strlist_add(&r->commands, item);
        } else if ((KEY("relation") || KEY("function")) && stmt) {
            int is_fn = KEY("function");
            relpat_t **v = is_fn ? &r->fns : &r->rels;
            unsigned *n = is_fn ? &r->nfns : &r->nrels;
            relpat_t *grown = realloc(*v, (*n + 1) * sizeof *grown);
            if (!grown)
                return fail(ps, "out of memory");
            *v = grown;
            if (parse_pattern(ps, item, is_fn, &grown[*n]))
                return -1;
            (*n)++;
        } else if (KEY("class") || KEY("command") || KEY("relation") || KEY("function")) {
            return fail(ps, "%.*s= applies to statement rules only", (int)klen, key);
        } else {
            return fail(ps, "unknown field \"%.*s\"", (int)klen, key);
        }
        if (rc)
            return fail(ps, "out of memory");
    }
#undef KEY
    return 0;
}

static int parse_rule(parser_t *ps, pgw_policy_t *pol, int stmt, const char *p)
{
    static const struct { const char *word; enum rule_kind kind; int stmt; } actions[] = {
        { "allow", R_CONN_ALLOW, 0 }, { "deny", R_CONN_DENY, 0 }, { "require-tls", R_REQUIRE_TLS, 0 },
        { "require-cert", R_REQUIRE_CERT, 0 }, { "max-sessions", R_MAX_SESSIONS, 0 },
        { "allow", R_STMT_ALLOW, 1 }, { "deny", R_STMT_DENY, 1 }, { "read-only", R_READ_ONLY, 1 },
        { "require-where", R_REQUIRE_WHERE, 1 },
    };
    pgw_policy_rule_t *grown = realloc(pol->rules, (pol->n + 1) * sizeof *grown);
    if (!grown)
        return fail(ps, "out of memory");
    pol->rules = grown;
    pgw_policy_rule_t *r = &pol->rules[pol->n];
    memset(r, 0, sizeof *r);
    r->tls = -1;
    pol->n++;                       /* freed with the policy whatever happens next */

    skip_space(&p);
    size_t wl = word_len(p);
    size_t i;
    for (i = 0; i < sizeof actions / sizeof actions[0]; i++)
        if (actions[i].stmt == stmt && strlen(actions[i].word) == wl && strncmp(p, actions[i].word, wl) == 0)
            break;
    if (i == sizeof actions / sizeof actions[0])
        return fail(ps, stmt ? "statement rule: expected allow, deny, read-only or require-where"
                             : "connection rule: expected allow, deny, require-tls, require-cert or "
                               "max-sessions=N");
    r->kind = actions[i].kind;
    p += wl;
    if (r->kind == R_MAX_SESSIONS) {
        char *end;
        long v = *p == '=' ? strtol(p + 1, &end, 10) : -1;
        if (*p != '=' || end == p + 1 || v < 0 || v > 1000000 ||
            (*end && *end != ' ' && *end != '\t' && *end != '\r'))
            return fail(ps, "max-sessions=N: N must be a number of sessions (0 to 1000000)");
        r->max_sessions = (unsigned)v;
        p = end;
    } else if (*p == '=') {
        return fail(ps, "%.*s takes no value", (int)wl, p - wl);
    }
    snprintf(r->name, sizeof r->name, "%s:%d", ps->file, ps->line);
    const char *slash = strrchr(ps->file, '/');
    if (slash)
        snprintf(r->name, sizeof r->name, "%s:%d", slash + 1, ps->line);
    for (;;) {
        skip_space(&p);
        if (!*p)
            break;
        size_t kl = word_len(p);
        if (p[kl] != '=') {
            if (kl == 7 && strncmp(p, "dry-run", 7) == 0) {
                r->dry_run = 1;
                p += kl;
                continue;
            }
            return fail(ps, "expected KEY=VALUE or dry-run, found \"%.*s\"", (int)(kl ? kl : 1), p);
        }
        const char *key = p;
        p += kl + 1;
        if (parse_field(ps, r, key, kl, &p))
            return -1;
        if (*p && *p != ' ' && *p != '\t' && *p != '\r')
            return fail(ps, "%.*s: unexpected \"%c\" after a value", (int)kl, key, *p);
    }
    /* A user or database named in the same rule twice is fine; a rule that
     * no connection could ever match is not worth an error. */
    return 0;
}

static int parse_group(parser_t *ps, pgw_policy_t *pol, const char *p)
{
    char item[POLICY_ITEM_MAX];
    skip_space(&p);
    if (!*p || next_item(&p, item, sizeof item) < 0 || !valid_name(item))
        return fail(ps, "group: expected group NAME MEMBER...");
    for (unsigned i = 0; i < pol->ngroups; i++)
        if (strcmp(pol->groups[i].name, item) == 0)
            return fail(ps, "group \"%s\" is defined twice", item);
    group_t *grown = realloc(pol->groups, (pol->ngroups + 1) * sizeof *grown);
    if (!grown)
        return fail(ps, "out of memory");
    pol->groups = grown;
    group_t *g = &pol->groups[pol->ngroups];
    memset(g, 0, sizeof *g);
    if (!(g->name = strdup(item)))
        return fail(ps, "out of memory");
    pol->ngroups++;
    for (;;) {
        skip_space(&p);
        if (!*p)
            break;
        if (next_item(&p, item, sizeof item) < 0 || !item[0])
            return fail(ps, "group %s: member too long or quote not closed", g->name);
        if (strlist_add(&g->members, item))
            return fail(ps, "out of memory");
        if (*p == ',')
            p++;
    }
    return 0;
}

/* Strips a comment that starts outside quotes. */
static void strip_comment(char *s)
{
    int quoted = 0;
    for (; *s; s++) {
        if (*s == '"')
            quoted = !quoted;
        else if (*s == '#' && !quoted) {
            *s = '\0';
            return;
        }
    }
}

pgw_policy_t *pgw_policy_parse(const char *name, const char *text, char *err, size_t errcap)
{
    parser_t ps = { name, 0, err, errcap };
    pgw_policy_t *pol = calloc(1, sizeof *pol);
    if (!pol) {
        snprintf(err, errcap, "%s: out of memory", name);
        return NULL;
    }
    atomic_init(&pol->refs, 1);
    for (const char *line = text; line && *line;) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        char buf[POLICY_LINE_MAX];
        ps.line++;
        if (len >= sizeof buf) {
            fail(&ps, "line too long");
            goto bad;
        }
        memcpy(buf, line, len);
        buf[len] = '\0';
        line = nl ? nl + 1 : NULL;
        strip_comment(buf);
        const char *p = buf;
        skip_space(&p);
        if (!*p)
            continue;
        size_t wl = word_len(p);
        int rc;
        if (wl == 5 && strncmp(p, "group", 5) == 0)
            rc = parse_group(&ps, pol, p + wl);
        else if (wl == 10 && strncmp(p, "connection", 10) == 0)
            rc = parse_rule(&ps, pol, 0, p + wl);
        else if (wl == 9 && strncmp(p, "statement", 9) == 0)
            rc = parse_rule(&ps, pol, 1, p + wl);
        else
            rc = fail(&ps, "expected connection, statement or group, found \"%.*s\"", (int)(wl ? wl : 1), p);
        if (rc)
            goto bad;
    }
    /* Names are what events and clients see: two rules must not share one. */
    for (unsigned i = 0; i < pol->n; i++)
        for (unsigned j = i + 1; j < pol->n; j++)
            if (strcmp(pol->rules[i].name, pol->rules[j].name) == 0) {
                snprintf(err, errcap, "%s: two rules are named \"%s\"", name, pol->rules[i].name);
                goto bad;
            }
    return pol;
bad:
    pgw_policy_unref(pol);
    return NULL;
}

pgw_policy_t *pgw_policy_load(const char *path, char *err, size_t errcap)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errcap, "%s: %s", path, strerror(errno));
        return NULL;
    }
    char *text = malloc(POLICY_FILE_MAX + 1);
    size_t n = text ? fread(text, 1, POLICY_FILE_MAX + 1, f) : 0;
    int bad = ferror(f);
    fclose(f);
    if (!text || bad || n > POLICY_FILE_MAX) {
        snprintf(err, errcap, "%s: %s", path, !text ? "out of memory" : bad ? "read error" : "larger than 1 MiB");
        free(text);
        return NULL;
    }
    text[n] = '\0';
    if (memchr(text, '\0', n)) {
        snprintf(err, errcap, "%s: not a text file", path);
        free(text);
        return NULL;
    }
    pgw_policy_t *p = pgw_policy_parse(path, text, err, errcap);
    free(text);
    return p;
}

/* ---- the published snapshot -------------------------------------------- */

static pthread_mutex_t cur_mu = PTHREAD_MUTEX_INITIALIZER;
static pgw_policy_t *cur_policy;
static atomic_uint cur_gen;

void pgw_policy_publish(pgw_policy_t *p)
{
    pthread_mutex_lock(&cur_mu);
    pgw_policy_t *old = cur_policy;
    cur_policy = p;
    atomic_fetch_add_explicit(&cur_gen, 1, memory_order_release);
    pthread_mutex_unlock(&cur_mu);
    pgw_policy_unref(old);
}

unsigned pgw_policy_generation(void)
{
    return atomic_load_explicit(&cur_gen, memory_order_relaxed);
}

pgw_policy_t *pgw_policy_current(unsigned *generation)
{
    pthread_mutex_lock(&cur_mu);
    pgw_policy_t *p = pgw_policy_ref(cur_policy);
    if (generation)
        *generation = atomic_load_explicit(&cur_gen, memory_order_relaxed);
    pthread_mutex_unlock(&cur_mu);
    return p;
}

/* ---- matching ------------------------------------------------------------ */

static int in_list(const strlist_t *l, const char *s)
{
    for (unsigned i = 0; i < l->n; i++)
        if (strcmp(l->v[i], s) == 0)
            return 1;
    return 0;
}

static int prefix_match(const uint8_t *a, const uint8_t *b, int bits)
{
    int bytes = bits / 8, rest = bits % 8;
    if (memcmp(a, b, (size_t)bytes) != 0)
        return 0;
    if (!rest)
        return 1;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[bytes] & mask) == (b[bytes] & mask);
}

static int net_match(const net_t *n, const struct sockaddr *sa)
{
    if (!sa)
        return n->family == 0;
    if (n->family == 0)
        return 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        return n->family == AF_INET && prefix_match(n->addr, (const uint8_t *)&in->sin_addr, n->bits);
    }
    if (sa->sa_family != AF_INET6)
        return 0;
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
    const uint8_t *a = (const uint8_t *)&in6->sin6_addr;
    if (n->family == AF_INET6)
        return prefix_match(n->addr, a, n->bits);
    /* An IPv4 client on a dual-stack listener: ::ffff:a.b.c.d. */
    static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    return memcmp(a, mapped, 12) == 0 && prefix_match(n->addr, a + 12, n->bits);
}

static int user_match(const pgw_policy_t *p, const strlist_t *users, const pgw_policy_ident_t *id)
{
    if (!users->n)
        return 1;
    for (unsigned i = 0; i < users->n; i++) {
        const char *u = users->v[i];
        if (u[0] != '+') {
            if (strcmp(u, id->user) == 0)
                return 1;
            continue;
        }
        for (unsigned g = 0; g < p->ngroups; g++)
            if (strcmp(p->groups[g].name, u + 1) == 0 && in_list(&p->groups[g].members, id->user))
                return 1;
        /* A map name of the identity map is a group too: the users its
         * lines map the certificate's CN to. */
        if (id->map && id->has_cert && id->cn && id->cn[0] &&
            pgw_ident_map_allows_in(id->map, u + 1, id->cn, id->user))
            return 1;
    }
    return 0;
}

static int ident_match(const pgw_policy_t *p, const pgw_policy_rule_t *r, const pgw_policy_ident_t *id)
{
    if (r->listeners.n && !in_list(&r->listeners, id->listener ? id->listener : ""))
        return 0;
    if (r->nnets) {
        unsigned i;
        for (i = 0; i < r->nnets && !net_match(&r->nets[i], id->addr); i++)
            ;
        if (i == r->nnets)
            return 0;
    }
    if (r->tls >= 0 && r->tls != !!id->tls)
        return 0;
    if (r->cns.n && !(id->has_cert && in_list(&r->cns, id->cn ? id->cn : "")))
        return 0;
    if (r->issuers.n && !(id->has_cert && in_list(&r->issuers, id->issuer ? id->issuer : "")))
        return 0;
    if (r->databases.n && !in_list(&r->databases, id->database))
        return 0;
    return user_match(p, &r->users, id);
}

/* ---- connections --------------------------------------------------------- */

typedef struct user_count {
    char *user;
    unsigned n;
} user_count_t;

static pthread_mutex_t users_mu = PTHREAD_MUTEX_INITIALIZER;
static user_count_t *user_counts;
static unsigned nuser_counts, user_counts_cap;

/* Under users_mu. */
static user_count_t *user_find(const char *user, int create)
{
    for (unsigned i = 0; i < nuser_counts; i++)
        if (strcmp(user_counts[i].user, user) == 0)
            return &user_counts[i];
    if (!create)
        return NULL;
    if (nuser_counts == user_counts_cap) {
        unsigned ncap = user_counts_cap ? user_counts_cap * 2 : 16;
        user_count_t *grown = realloc(user_counts, ncap * sizeof *grown);
        if (!grown)
            return NULL;
        user_counts = grown;
        user_counts_cap = ncap;
    }
    user_count_t *u = &user_counts[nuser_counts];
    if (!(u->user = strdup(user)))
        return NULL;
    u->n = 0;
    nuser_counts++;
    return u;
}

void pgw_policy_release_user(const char *user)
{
    pthread_mutex_lock(&users_mu);
    user_count_t *u = user_find(user, 0);
    if (u && u->n && --u->n == 0) {
        free(u->user);
        *u = user_counts[--nuser_counts];
    }
    pthread_mutex_unlock(&users_mu);
}

static const char *peer_text(const pgw_policy_ident_t *id, char *buf, size_t cap)
{
    if (!id->addr)
        return "a unix socket";
    const void *a = id->addr->sa_family == AF_INET6
                        ? (const void *)&((const struct sockaddr_in6 *)(const void *)id->addr)->sin6_addr
                        : (const void *)&((const struct sockaddr_in *)(const void *)id->addr)->sin_addr;
    if (!inet_ntop(id->addr->sa_family, a, buf, (socklen_t)cap))
        snprintf(buf, cap, "?");
    return buf;
}

/* Why rule r refuses; 0 when it is met (or, for allow, decides to allow). */
static int conn_refusal(const pgw_policy_rule_t *r, const pgw_policy_ident_t *id, char *msg, size_t cap)
{
    char peer[64];
    switch (r->kind) {
    case R_CONN_DENY:
        snprintf(msg, cap, "pgwarden rule \"%s\" refuses the connection for user \"%s\", database \"%s\" "
                 "from %s", r->name, id->user, id->database, peer_text(id, peer, sizeof peer));
        return 1;
    case R_REQUIRE_TLS:
        if (id->tls)
            return 0;
        snprintf(msg, cap, "pgwarden rule \"%s\" requires TLS: connection for user \"%s\", database \"%s\" "
                 "without TLS refused", r->name, id->user, id->database);
        return 1;
    case R_REQUIRE_CERT:
        if (id->has_cert)
            return 0;
        snprintf(msg, cap, "pgwarden rule \"%s\" requires a valid client certificate: connection for "
                 "user \"%s\", database \"%s\" refused", r->name, id->user, id->database);
        return 1;
    default:
        return 0;
    }
}

void pgw_policy_connect(const pgw_policy_t *p, const pgw_policy_ident_t *id, pgw_policy_conn_t *out)
{
    memset(out, 0, sizeof *out);
    const pgw_policy_rule_t *limit = NULL, *dry_limit = NULL;
    for (unsigned i = 0; p && i < p->n && !out->refused; i++) {
        const pgw_policy_rule_t *r = &p->rules[i];
        if (IS_STMT(r->kind) || !ident_match(p, r, id))
            continue;
        if (r->kind == R_MAX_SESSIONS) {
            const pgw_policy_rule_t **slot = r->dry_run ? &dry_limit : &limit;
            if (!*slot || r->max_sessions < (*slot)->max_sessions)
                *slot = r;
            continue;
        }
        char msg[256];
        int refuses = conn_refusal(r, id, msg, sizeof msg);
        if (r->dry_run) {
            if (refuses && out->ndry < 8) {
                snprintf(out->dry_message[out->ndry], sizeof out->dry_message[0], "%s", msg);
                out->dry[out->ndry++] = r;
            }
            continue;
        }
        if (refuses) {
            out->refused = 1;
            out->rule = r;
            out->sqlstate = "28000";
            snprintf(out->message, sizeof out->message, "%s", msg);
        } else if (r->kind == R_CONN_ALLOW) {
            out->rule = r;
            break;
        }
    }
    if (out->refused || !p)
        return;
    pthread_mutex_lock(&users_mu);
    user_count_t *u = user_find(id->user, 1);
    unsigned have = u ? u->n : 0;
    if (limit && have >= limit->max_sessions) {
        out->refused = 1;
        out->rule = limit;
        out->sqlstate = "53300";
        snprintf(out->message, sizeof out->message, "too many sessions for user \"%s\": pgwarden rule \"%s\" "
                 "allows %u", id->user, limit->name, limit->max_sessions);
    } else if (u) {
        if (dry_limit && have >= dry_limit->max_sessions && out->ndry < 8) {
            snprintf(out->dry_message[out->ndry], sizeof out->dry_message[0],
                     "too many sessions for user \"%s\": pgwarden rule \"%s\" allows %u", id->user,
                     dry_limit->name, dry_limit->max_sessions);
            out->dry[out->ndry++] = dry_limit;
        }
        u->n++;
        out->user_slot = 1;
    }
    if (u && !u->n) {
        free(u->user);
        *u = user_counts[--nuser_counts];
    }
    pthread_mutex_unlock(&users_mu);
}

/* ---- statements ---------------------------------------------------------- */

int pgw_policy_session_rules(const pgw_policy_t *p, const pgw_policy_ident_t *id, uint32_t **out)
{
    *out = NULL;
    unsigned n = 0;
    for (unsigned i = 0; p && i < p->n; i++)
        if (IS_STMT(p->rules[i].kind) && ident_match(p, &p->rules[i], id))
            n++;
    if (!n)
        return 0;
    uint32_t *v = malloc(n * sizeof *v);
    if (!v)
        return -1;
    n = 0;
    for (unsigned i = 0; i < p->n; i++)
        if (IS_STMT(p->rules[i].kind) && ident_match(p, &p->rules[i], id))
            v[n++] = i;
    *out = v;
    return (int)n;
}

/* "TRUNCATE" matches "TRUNCATE TABLE", "DROP" every DROP ...; "COPY TO
 * PROGRAM", "COPY FROM PROGRAM" and "COPY PROGRAM" match COPY by what the
 * analysis saw. */
static int command_match(const char *pat, const pgw_sql_info_t *info)
{
    if (strncmp(pat, "COPY ", 5) == 0 && strstr(pat, "PROGRAM") && strcmp(info->command, "COPY") == 0) {
        if (!(info->flags & PGW_SQL_COPY_PROGRAM))
            return 0;
        int from = !!(info->flags & PGW_SQL_COPY_FROM);
        return strcmp(pat, "COPY PROGRAM") == 0 || (strcmp(pat, "COPY FROM PROGRAM") == 0 && from) ||
               (strcmp(pat, "COPY TO PROGRAM") == 0 && !from);
    }
    size_t n = strlen(pat);
    return strncmp(info->command, pat, n) == 0 && (info->command[n] == '\0' || info->command[n] == ' ');
}

/* A statement's relation, or a function it calls, against a rule's
 * pattern. PostgreSQL resolves an unqualified name through search_path,
 * which pgwarden does not see: such a name matches an exact pattern in any
 * schema, and SCHEMA.* for public (a function: also pg_catalog, searched
 * first unless search_path lists it). */
static int pattern_match(const relpat_t *rp, const pgw_sql_object_t *o, int is_fn)
{
    if (rp->access >= 0 && (int)o->access != rp->access)
        return 0;
    if (rp->name) {
        if (strcmp(rp->name, o->name) != 0)
            return 0;
        return !rp->schema || !o->schema[0] || strcmp(rp->schema, o->schema) == 0;
    }
    if (o->schema[0])
        return strcmp(rp->schema, o->schema) == 0;
    return strcmp(rp->schema, "public") == 0 || (is_fn && strcmp(rp->schema, "pg_catalog") == 0);
}

static const pgw_sql_object_t *any_match(const relpat_t *pats, unsigned npats, int is_fn,
                                         const pgw_sql_object_t *objs, uint32_t nobjs)
{
    for (uint32_t k = 0; k < nobjs; k++)
        for (unsigned j = 0; j < npats; j++)
            if (pattern_match(&pats[j], &objs[k], is_fn))
                return &objs[k];
    return NULL;
}

/* 1 when rule r applies to the statement (for allow: allows it); msg says
 * why it refuses. */
static int stmt_match(const pgw_policy_rule_t *r, const pgw_sql_info_t *info, char *msg, size_t cap)
{
    switch (r->kind) {
    case R_READ_ONLY: {
        int writes = info->cls == PGW_CLASS_WRITE || info->cls == PGW_CLASS_DDL ||
                     info->cls == PGW_CLASS_ROLE || info->cls == PGW_CLASS_FUNCTION;
        for (uint32_t k = 0; !writes && k < info->nobjects; k++)
            writes = info->objects[k].access == PGW_ACCESS_WRITE;
        if (!writes)
            return 0;
        snprintf(msg, cap, "permission denied by pgwarden rule \"%s\": this session is read-only (%s)",
                 r->name, info->command);
        return 1;
    }
    case R_REQUIRE_WHERE:
        if (!(info->flags & PGW_SQL_NO_WHERE))
            return 0;
        snprintf(msg, cap, "permission denied by pgwarden rule \"%s\": %s without WHERE", r->name,
                 info->command);
        return 1;
    default:
        break;
    }
    if (r->classes && !(r->classes & (1u << info->cls)))
        return 0;
    if (r->commands.n) {
        unsigned i;
        for (i = 0; i < r->commands.n && !command_match(r->commands.v[i], info); i++)
            ;
        if (i == r->commands.n)
            return 0;
    }
    const pgw_sql_object_t *o = NULL, *f = NULL;
    if (r->nrels && !(o = any_match(r->rels, r->nrels, 0, info->objects, info->nobjects)))
        return 0;
    if (r->nfns && !(f = any_match(r->fns, r->nfns, 1, info->functions, info->nfunctions)))
        return 0;
    if (f)
        snprintf(msg, cap, "permission denied by pgwarden rule \"%s\": %s calls %s%s%s", r->name,
                 info->command, f->schema, f->schema[0] ? "." : "", f->name);
    else if (o)
        snprintf(msg, cap, "permission denied by pgwarden rule \"%s\": %s on %s%s%s (%s)", r->name,
                 info->command, o->schema, o->schema[0] ? "." : "", o->name, pgw_access_name(o->access));
    else
        snprintf(msg, cap, "permission denied by pgwarden rule \"%s\": %s (class %s)", r->name,
                 info->command, pgw_audit_class_name(info->cls));
    return 1;
}

void pgw_policy_statement(const pgw_policy_t *p, const uint32_t *rules, unsigned n,
                          const pgw_sql_info_t *info, pgw_policy_verdict_t *v)
{
    if (!p || !info || (info->flags & PGW_SQL_PARSE_ERROR) || v->deny)
        return;
    for (unsigned i = 0; i < n; i++) {
        const pgw_policy_rule_t *r = &p->rules[rules[i]];
        char msg[256];
        if (!stmt_match(r, info, msg, sizeof msg))
            continue;
        if (r->dry_run) {
            unsigned k;
            for (k = 0; k < v->ndry && v->dry[k] != r; k++)
                ;
            if (r->kind != R_STMT_ALLOW && k == v->ndry && v->ndry < 8)
                v->dry[v->ndry++] = r;
            continue;
        }
        if (r->kind == R_STMT_ALLOW)
            return;
        v->deny = r;
        snprintf(v->message, sizeof v->message, "%s", msg);
        return;
    }
}
