/* An identity map in pg_ident.conf format: which database users a
 * certificate's CN may log in as.
 *
 *   # MAPNAME  SYSTEM-USERNAME        DATABASE-USERNAME
 *   certs      alice                  bob
 *   certs      /^(.*)@example\.com$   \1
 *
 * The system user is the client certificate's CN. A system user starting
 * with '/' is a POSIX extended regular expression; "\1" in the database user
 * is replaced by its first parenthesised match. Fields may be double-quoted.
 * Every line applies, whatever its map name (pgwarden has one map).
 *
 * A loaded map is read-only and may be used by any number of threads. */
#ifndef PGW_IDENT_H
#define PGW_IDENT_H

#include <stddef.h>

typedef struct pgw_ident_map pgw_ident_map_t;

/* Parses the file at path. Returns 0 and *out, or -1 with "file:line:
 * reason" in err. */
int pgw_ident_map_load(const char *path, pgw_ident_map_t **out, char *err, size_t errcap)
    __attribute__((warn_unused_result));
/* The same from text in memory (name is used in messages). */
int pgw_ident_map_parse(const char *name, const char *text, pgw_ident_map_t **out, char *err,
                        size_t errcap) __attribute__((warn_unused_result));
void pgw_ident_map_free(pgw_ident_map_t *m);

/* 1 when a line maps system user sys to database user user, else 0. */
int pgw_ident_map_allows(const pgw_ident_map_t *m, const char *sys, const char *user);
/* The same with the lines of map name map only (NULL: every line): the
 * access policy's groups (policy.h). */
int pgw_ident_map_allows_in(const pgw_ident_map_t *m, const char *map, const char *sys, const char *user);

#endif
