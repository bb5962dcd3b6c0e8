/* The replication protocol's commands (a walsender session: startup
 * parameter replication=true or database). pg_basebackup, pg_receivewal,
 * pg_recvlogical and subscribers send them as simple Query strings, and
 * the server reads them with a grammar of their own (repl_gram.y), so
 * libpg_query cannot parse them. They are what copies a whole cluster or
 * streams its changes, so their events name them, as if they had parsed:
 * the command, a class, the text with its literals (quoted strings,
 * numbers, WAL positions) replaced by $n, and a fingerprint of that shape.
 *
 * Classes (pgAudit has none for these): BASE_BACKUP and START_REPLICATION
 * export data, READ; the slot commands create, change or drop a persistent
 * server object, DDL; the rest are MISC. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <xxhash.h>

#include "analysis_int.h"

static const struct {
    const char *word;
    pgw_audit_class_t cls;
} repl_commands[] = {
    { "BASE_BACKUP", PGW_CLASS_READ },
    { "START_REPLICATION", PGW_CLASS_READ },
    { "CREATE_REPLICATION_SLOT", PGW_CLASS_DDL },
    { "DROP_REPLICATION_SLOT", PGW_CLASS_DDL },
    { "ALTER_REPLICATION_SLOT", PGW_CLASS_DDL },
    { "IDENTIFY_SYSTEM", PGW_CLASS_MISC },
    { "READ_REPLICATION_SLOT", PGW_CLASS_MISC },
    { "TIMELINE_HISTORY", PGW_CLASS_MISC },
    { "UPLOAD_MANIFEST", PGW_CLASS_MISC },
};

/* Longer strings are not looked at: no replication command comes near. */
#define REPL_MAX_LEN 8192

static int ident_start(unsigned char c) { return isalpha(c) || c == '_' || c >= 0x80; }
static int ident_cont(unsigned char c) { return ident_start(c) || isdigit(c) || c == '$'; }

/* Length of a WAL position (hex/hex: repl_scanner.l's RECPTR) at s, or 0. */
static uint32_t recptr_len(const char *s, uint32_t n)
{
    uint32_t i = 0, j;

    while (i < n && isxdigit((unsigned char)s[i]))
        i++;
    if (i == 0 || i >= n || s[i] != '/')
        return 0;
    j = i + 1;
    while (j < n && isxdigit((unsigned char)s[j]))
        j++;
    return j > i + 1 ? j : 0;
}

/* Length of a quoted token ('string' or "ident", the quote doubled inside)
 * at s; n + 1 when it does not end. */
static uint32_t quoted_len(const char *s, uint32_t n)
{
    uint32_t i = 1;

    while (i < n) {
        if (s[i] == s[0]) {
            if (i + 1 < n && s[i + 1] == s[0]) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i++;
    }
    return n + 1;
}

int sql_repl_analyze(const char *s, uint32_t n, sql_repl_t *out)
{
    uint32_t i = 0, w, k, nlit = 0;
    char *norm, *o, *key, *ko;

    memset(out, 0, sizeof *out);
    if (n > REPL_MAX_LEN)
        return 0;
    while (i < n && isspace((unsigned char)s[i]))
        i++;
    for (w = i; w < n && ident_cont((unsigned char)s[w]); w++)
        ;
    if (w == i || !ident_start((unsigned char)s[i]))
        return 0;
    for (k = 0; k < sizeof repl_commands / sizeof repl_commands[0]; k++)
        if (strlen(repl_commands[k].word) == w - i && strncasecmp(s + i, repl_commands[k].word, w - i) == 0)
            break;
    if (k == sizeof repl_commands / sizeof repl_commands[0])
        return 0;

    /* "$" and up to 5 digits for a literal of at least one byte: 6 bytes
     * out per byte in, at worst */
    norm = malloc((size_t)n * 6 + 1);
    key = malloc((size_t)n * 2 + 2);
    if (!norm || !key) {
        free(norm);
        free(key);
        return -ENOMEM;
    }
    o = norm;
    ko = key;
    for (i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        uint32_t len;
        int lit = 0;

        if (isspace(c)) {
            *o++ = (char)c;
            i++;
            continue;
        }
        if ((len = recptr_len(s + i, n - i)) != 0) {
            lit = 1;
        } else if (isdigit(c)) {
            for (len = 1; i + len < n && isdigit((unsigned char)s[i + len]); len++)
                ;
            lit = 1;
        } else if (c == '\'' || c == '"') {
            len = quoted_len(s + i, n - i);
            if (len > n - i) {
                /* unterminated: the server will refuse it; show nothing of it */
                len = n - i;
                lit = 1;
            } else {
                lit = c == '\'';
            }
        } else if (ident_start(c)) {
            for (len = 1; i + len < n && ident_cont((unsigned char)s[i + len]); len++)
                ;
        } else {
            len = 1;
        }
        if (lit) {
            o += sprintf(o, "$%u", ++nlit);
            *ko++ = '?';
        } else {
            memcpy(o, s + i, len);
            o += len;
            for (uint32_t j = 0; j < len; j++)   /* keywords and names, case folded */
                *ko++ = c == '"' ? s[i + j] : (char)toupper((unsigned char)s[i + j]);
        }
        *ko++ = ' ';
        i += len;
    }
    while (o > norm && isspace((unsigned char)o[-1]))
        o--;
    *o = 0;
    out->command = repl_commands[k].word;
    out->cls = repl_commands[k].cls;
    out->norm = norm;
    out->norm_len = (uint32_t)(o - norm);
    snprintf(out->fingerprint, sizeof out->fingerprint, "%016llx",
             (unsigned long long)XXH3_64bits(key, (size_t)(ko - key)));
    free(key);
    return 1;
}
