#include "ident.h"

#include <errno.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IDENT_FILE_MAX (1024 * 1024)   /* a map is a few lines; refuse anything huge */
#define IDENT_FIELD_MAX 256

typedef struct ident_line {
    char map[IDENT_FIELD_MAX];
    char sys[IDENT_FIELD_MAX];
    char user[IDENT_FIELD_MAX];
    int is_regex;
    regex_t re;
} ident_line_t;

struct pgw_ident_map {
    ident_line_t *lines;
    size_t n;
};

void pgw_ident_map_free(pgw_ident_map_t *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n; i++)
        if (m->lines[i].is_regex)
            regfree(&m->lines[i].re);
    free(m->lines);
    free(m);
}

/* The next whitespace-separated field of a line at *p (double quotes group,
 * "" inside quotes is a quote). Returns 1 with the field in out, 0 at the
 * end of the line, -1 when it is too long or a quote is not closed. */
static int next_field(const char **p, char *out, size_t cap)
{
    const char *s = *p;
    while (*s == ' ' || *s == '\t' || *s == '\r')
        s++;
    if (!*s || *s == '#')
        return 0;
    size_t n = 0;
    int quoted = 0;
    while (*s && (quoted || (*s != ' ' && *s != '\t' && *s != '\r' && *s != '#'))) {
        if (*s == '"') {
            if (quoted && s[1] == '"') {
                s++;
            } else {
                quoted = !quoted;
                s++;
                continue;
            }
        }
        if (n + 1 >= cap)
            return -1;
        out[n++] = *s++;
    }
    if (quoted)
        return -1;
    out[n] = '\0';
    *p = s;
    return 1;
}

int pgw_ident_map_parse(const char *name, const char *text, pgw_ident_map_t **out, char *err,
                        size_t errcap)
{
    pgw_ident_map_t *m = calloc(1, sizeof *m);
    size_t cap = 0;
    int lineno = 0;
    if (!m)
        goto nomem;
    for (const char *line = text; line && *line; ) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        char buf[3 * IDENT_FIELD_MAX + 64];
        lineno++;
        if (len >= sizeof buf) {
            snprintf(err, errcap, "%s:%d: line too long", name, lineno);
            goto fail;
        }
        memcpy(buf, line, len);
        buf[len] = '\0';
        line = nl ? nl + 1 : NULL;

        char mapname[IDENT_FIELD_MAX], extra[8];
        const char *p = buf;
        int r = next_field(&p, mapname, sizeof mapname);
        if (r == 0)
            continue;               /* blank or comment */
        if (cap == m->n) {
            size_t ncap = cap ? cap * 2 : 8;
            ident_line_t *grown = realloc(m->lines, ncap * sizeof *grown);
            if (!grown)
                goto nomem;
            m->lines = grown;
            cap = ncap;
        }
        ident_line_t *l = &m->lines[m->n];
        memset(l, 0, sizeof *l);
        if (r > 0)
            memcpy(l->map, mapname, sizeof l->map);
        if (r < 0 || next_field(&p, l->sys, sizeof l->sys) != 1 ||
            next_field(&p, l->user, sizeof l->user) != 1 || next_field(&p, extra, sizeof extra) != 0) {
            snprintf(err, errcap, "%s:%d: expected MAPNAME SYSTEM-USERNAME DATABASE-USERNAME",
                     name, lineno);
            goto fail;
        }
        if (l->sys[0] == '/') {
            int rc = regcomp(&l->re, l->sys + 1, REG_EXTENDED);
            if (rc) {
                char why[128];
                regerror(rc, &l->re, why, sizeof why);
                snprintf(err, errcap, "%s:%d: invalid regular expression \"%s\": %s",
                         name, lineno, l->sys + 1, why);
                goto fail;
            }
            l->is_regex = 1;
        } else if (strstr(l->user, "\\1")) {
            snprintf(err, errcap, "%s:%d: \\1 needs a regular expression (/...) as system user",
                     name, lineno);
            goto fail;
        }
        m->n++;
    }
    *out = m;
    return 0;
nomem:
    snprintf(err, errcap, "%s: out of memory", name);
fail:
    pgw_ident_map_free(m);
    return -1;
}

int pgw_ident_map_load(const char *path, pgw_ident_map_t **out, char *err, size_t errcap)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errcap, "%s: %s", path, strerror(errno));
        return -1;
    }
    char *text = malloc(IDENT_FILE_MAX + 1);
    size_t n = text ? fread(text, 1, IDENT_FILE_MAX + 1, f) : 0;
    int bad = ferror(f);
    fclose(f);
    if (!text || bad || n > IDENT_FILE_MAX) {
        snprintf(err, errcap, "%s: %s", path, !text ? "out of memory" : bad ? "read error"
                                                     : "larger than 1 MiB");
        free(text);
        return -1;
    }
    text[n] = '\0';
    int rc = pgw_ident_map_parse(path, text, out, err, errcap);
    free(text);
    return rc;
}

/* The database user of line l for a regex match: \1 replaced by group 1. */
static int expand(const ident_line_t *l, const char *sys, const regmatch_t *g1, char *out, size_t cap)
{
    const char *at = strstr(l->user, "\\1");
    if (!at)
        return snprintf(out, cap, "%s", l->user) < (int)cap ? 0 : -1;
    if (g1->rm_so < 0)
        return -1;
    int n = snprintf(out, cap, "%.*s%.*s%s", (int)(at - l->user), l->user,
                     (int)(g1->rm_eo - g1->rm_so), sys + g1->rm_so, at + 2);
    return n >= 0 && (size_t)n < cap ? 0 : -1;
}

int pgw_ident_map_allows(const pgw_ident_map_t *m, const char *sys, const char *user)
{
    return pgw_ident_map_allows_in(m, NULL, sys, user);
}

int pgw_ident_map_allows_in(const pgw_ident_map_t *m, const char *map, const char *sys, const char *user)
{
    for (size_t i = 0; m && i < m->n; i++) {
        const ident_line_t *l = &m->lines[i];
        if (map && strcmp(l->map, map) != 0)
            continue;
        if (!l->is_regex) {
            if (strcmp(l->sys, sys) == 0 && strcmp(l->user, user) == 0)
                return 1;
            continue;
        }
        regmatch_t g[2];
        char want[2 * IDENT_FIELD_MAX];
        if (regexec(&l->re, sys, 2, g, 0) == 0 && expand(l, sys, &g[1], want, sizeof want) == 0 &&
            strcmp(want, user) == 0)
            return 1;
    }
    return 0;
}
