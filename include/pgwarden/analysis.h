/* SQL analysis on libpg_query 15, and the per-thread cache that keeps a
 * repeated query shape from being parsed again.
 *
 * One Query string (simple protocol) or one Parse text (extended protocol)
 * goes in; out comes, per statement: the command as PostgreSQL's
 * CreateCommandTag names it, pgAudit's class, every relation referenced with
 * read/write access, the libpg_query fingerprint, and the text with literals
 * replaced by $n. Passwords of CREATE/ALTER ROLE (and user mappings and
 * subscription connection strings) never appear in any text this module
 * produces, nor in a fingerprint: a fingerprint of a password would be a
 * 64-bit hash of it, open to a dictionary attack.
 *
 * Three ways in, so that the owner of a libuv loop never waits for the
 * parser:
 *   pgw_analysis_lookup()  loop thread, cheap and bounded: succeeds only when
 *                          every statement's shape is in the cache;
 *   pgw_analysis_parse()   any thread, no cache: the full analysis (run it on
 *                          a worker for big texts, e.g. a 1 MB INSERT);
 *   pgw_analysis_cache_add() loop thread: remember what parse found;
 *   pgw_analysis_run()     all three in one call, on the cache's thread.
 *
 * Ownership: a pgw_analysis_t owns one reference to each statement's
 * pgw_sql_info_t and the bytes of its texts; pgw_analysis_clear() releases
 * them. A pgw_sql_info_t is immutable once published and reference counted
 * (atomically), so it may be kept past the analysis (pgw_sql_info_ref) and
 * handed to another thread. The cache holds references of its own; eviction
 * never frees an info that someone still holds. */
#ifndef PGWARDEN_ANALYSIS_H
#define PGWARDEN_ANALYSIS_H

#include <stddef.h>
#include <stdint.h>

/* pgAudit's classes (pgaudit.log), by pgAudit's rules: PostgreSQL's log
 * level of the statement (mod / ddl / all) first, then the statement type.
 * So SELECT ... FOR UPDATE is READ, EXPLAIN ANALYZE of an INSERT is WRITE,
 * PREPARE takes the class of what it prepares, EXECUTE is MISC. Two
 * deliberate differences: CALL is FUNCTION (pgAudit says MISC and logs the
 * procedure separately), and a SELECT whose WITH modifies data is WRITE. */
typedef enum pgw_audit_class {
    PGW_CLASS_READ = 1,   /* SELECT, COPY TO, DECLARE CURSOR, PREPARE of a read */
    PGW_CLASS_WRITE,      /* INSERT, UPDATE, DELETE, MERGE, TRUNCATE, COPY FROM */
    PGW_CLASS_FUNCTION,   /* DO, CALL */
    PGW_CLASS_ROLE,       /* GRANT, REVOKE, CREATE/ALTER/DROP ROLE, user mappings */
    PGW_CLASS_DDL,        /* every other DDL, SELECT INTO, CREATE TABLE AS */
    PGW_CLASS_MISC,       /* BEGIN, VACUUM, EXPLAIN, SHOW, FETCH, CHECKPOINT, ... */
    PGW_CLASS_MISC_SET,   /* SET, RESET */
} pgw_audit_class_t;

typedef enum pgw_access { PGW_ACCESS_READ = 0, PGW_ACCESS_WRITE = 1 } pgw_access_t;

/* "READ", "WRITE", ...; "MISC" for anything out of range. */
const char *pgw_audit_class_name(pgw_audit_class_t cls);
/* "read" or "write". */
const char *pgw_access_name(pgw_access_t access);

/* A relation referenced by a statement. */
typedef struct pgw_sql_object {
    const char *schema;      /* "" when the statement did not qualify the name */
    const char *name;
    const char *type;        /* "table"; "view", "materialized view", "sequence",
                              * "index", "foreign table" only when the statement
                              * itself says so (DDL) */
    pgw_access_t access;
} pgw_sql_object_t;

/* pgw_sql_info_t.flags */
#define PGW_SQL_PARSE_ERROR 0x1u  /* did not parse: parse_error is set, text is
                                   * "" (nothing of it can leak), no objects */
#define PGW_SQL_NO_RAW      0x2u  /* the raw text may carry a secret (a password,
                                   * a connection string): in raw mode print the
                                   * redacted text instead */
#define PGW_SQL_NO_WHERE     0x4u  /* UPDATE or DELETE without WHERE (every row) */
#define PGW_SQL_COPY_PROGRAM 0x8u  /* COPY ... TO/FROM PROGRAM (runs a shell command) */
#define PGW_SQL_COPY_FROM    0x10u /* with COPY_PROGRAM: FROM PROGRAM */
#define PGW_SQL_OWN_TRANSACTION 0x20u /* runs outside any transaction block and
                                   * commits before its CommandComplete, though
                                   * its tag is shared with forms that do not
                                   * (CREATE INDEX CONCURRENTLY, REINDEX SCHEMA,
                                   * CLUSTER of every table, ...) */
/* SQL-level prepared statements (not the protocol's Parse) and cursors:
 * info->name is the statement's or the cursor's name, as the server folds
 * it */
#define PGW_SQL_PREPARE     0x40u  /* PREPARE name AS ... (objects: what it reads and writes) */
#define PGW_SQL_EXECUTE     0x80u  /* EXECUTE name (...) */
#define PGW_SQL_DEALLOCATE  0x100u /* DEALLOCATE name; with name NULL:
                                   * DEALLOCATE ALL or DISCARD ALL */
#define PGW_SQL_DECLARE     0x200u /* DECLARE name CURSOR FOR ... (objects: what it reads) */
#define PGW_SQL_FETCH       0x400u /* FETCH or MOVE ... name */
#define PGW_SQL_CLOSE       0x800u /* CLOSE name; with name NULL: CLOSE ALL or
                                   * DISCARD ALL */
#define PGW_SQL_NAMED (PGW_SQL_PREPARE | PGW_SQL_EXECUTE | PGW_SQL_DEALLOCATE | \
                       PGW_SQL_DECLARE | PGW_SQL_FETCH | PGW_SQL_CLOSE)

/* The analysis of one statement shape: shared by every statement that
 * differs from it only in literals. Immutable; read freely from any thread
 * that holds a reference. All strings are NUL-terminated and live as long as
 * the info. */
typedef struct pgw_sql_info {
    const char *command;      /* "SELECT", "CREATE TABLE", "ALTER ROLE", ...;
                               * "UNKNOWN" when neither parser nor scanner could tell */
    pgw_audit_class_t cls;
    uint32_t flags;           /* PGW_SQL_* */
    const char *fingerprint;  /* 16 lower-case hex digits; "" after a parse error */
    uint64_t fingerprint_value;   /* the same as a number; 0 when "" */
    const char *parse_error;  /* libpg_query's message, or NULL */
    uint32_t nobjects;
    const pgw_sql_object_t *objects;  /* unique per (schema, name, access), in
                                       * order of first appearance */
    /* The functions and procedures it calls by name (FuncCall: in any
     * expression, FROM, CALL, a default or index expression of DDL), unique
     * per (schema, name), in order of first appearance; type "function",
     * access read. Not operators, casts, nor what a DO body or a called
     * function runs. For the access policy; events do not carry them. */
    uint32_t nfunctions;
    const pgw_sql_object_t *functions;
    const char *name;         /* with PGW_SQL_PREPARE, _EXECUTE, _DEALLOCATE,
                               * _DECLARE, _FETCH, _CLOSE */
} pgw_sql_info_t;

pgw_sql_info_t *pgw_sql_info_ref(pgw_sql_info_t *info);
void pgw_sql_info_unref(pgw_sql_info_t *info);    /* NULL is fine */

/* One statement of an analysed string. */
typedef struct pgw_stmt {
    pgw_sql_info_t *info;     /* one reference, owned by the pgw_analysis_t */
    uint32_t offset, length;  /* the statement in the analysed string, without
                               * the ';' and surrounding white space (comments
                               * stay) */
    uint32_t text_off;        /* private: see pgw_analysis_text() */
    uint32_t text_len;
} pgw_stmt_t;

/* pgw_analysis_t.flags */
#define PGW_ANALYSIS_PARSE_FAILED 0x1u  /* the string as a whole does not parse:
                                         * the server rejects all of it before
                                         * running any statement. The statements
                                         * then come from a scanner split, and
                                         * those that parse on their own are
                                         * analysed anyway. */

#define PGW_ANALYSIS_INLINE_STMTS 4
#define PGW_ANALYSIS_INLINE_TEXT 512

/* The analysis of one string. Holds a few statements and their texts inline,
 * so a cache hit on an ordinary query allocates nothing; larger ones go to
 * the heap. The struct may be moved (memcpy) as a whole: nothing in it points
 * into itself. */
typedef struct pgw_analysis {
    uint32_t count;           /* statements; 0 for an empty string or comments only */
    uint32_t flags;           /* PGW_ANALYSIS_* */
    /* private */
    uint32_t stmt_cap, text_used, text_cap;
    pgw_stmt_t *heap_stmts;
    char *heap_text;
    pgw_stmt_t inline_stmts[PGW_ANALYSIS_INLINE_STMTS];
    char inline_text[PGW_ANALYSIS_INLINE_TEXT];
} pgw_analysis_t;

void pgw_analysis_init(pgw_analysis_t *an);
/* Releases the references and memory; the analysis is empty and reusable. */
void pgw_analysis_clear(pgw_analysis_t *an);

static inline const pgw_stmt_t *pgw_analysis_stmt(const pgw_analysis_t *an, uint32_t i)
{
    return (an->heap_stmts ? an->heap_stmts : an->inline_stmts) + i;
}

/* The statement's text for the default mode: literals replaced by $n by
 * libpg_query's normalization (which keeps DDL definitions: DEFAULT 'x',
 * varchar(10), COPY's file name), or, where it keeps literals that must not
 * show, every literal replaced by us: CREATE/ALTER ROLE and user mappings
 * and subscriptions (passwords), CALL, EXECUTE, PREPARE, NOTIFY, CREATE
 * TABLE AS. "" after a parse error. NUL-terminated; *len without the NUL.
 * Valid until the analysis is cleared (or moved: call again). */
const char *pgw_analysis_text(const pgw_analysis_t *an, uint32_t i, uint32_t *len);

/* The text for raw mode: the statement as sent, taken from sql (the same
 * string that was analysed, which the caller still holds), unless the info
 * says PGW_SQL_NO_RAW: then the default-mode text. Not NUL-terminated. */
const char *pgw_analysis_raw_text(const pgw_analysis_t *an, uint32_t i,
                                  const char *sql, uint32_t *len);

/* ---- analysis cache --------------------------------------------------------
 * Keyed on the statement's tokens with literal values left out (kinds kept),
 * white space and comments ignored (a comment holding a quote character is
 * kept, because libpg_query's normalization can react to it); a hit is
 * verified token for token, so two different statements never share an
 * entry, and the literals the normalization keeps (ORDER BY 1, varchar(10),
 * COPY's file name) must match too. Bounded by entries and bytes, CLOCK
 * eviction. Not thread-safe: one cache per loop thread, no lock. */
typedef struct pgw_analysis_cache pgw_analysis_cache_t;

typedef struct pgw_analysis_cache_limits {
    uint32_t max_entries;     /* 0: 4096 */
    size_t max_bytes;         /* memory of the cached infos; 0: 8 MiB */
    uint32_t max_stmt_len;    /* longer statements are never cached; 0: 16 KiB */
    uint32_t max_lookup_len;  /* pgw_analysis_lookup() misses at once on longer
                               * strings, so that it stays cheap; 0: 64 KiB */
} pgw_analysis_cache_limits_t;

typedef struct pgw_analysis_cache_stats {
    uint64_t hits, misses;    /* per string looked up */
    uint64_t inserts, evictions;
    uint64_t parse_ns;        /* time in the parser and the analysis of misses */
    uint32_t entries;
    size_t bytes;
} pgw_analysis_cache_stats_t;

/* lim may be NULL (defaults). Returns NULL when out of memory. */
pgw_analysis_cache_t *pgw_analysis_cache_new(const pgw_analysis_cache_limits_t *lim);
void pgw_analysis_cache_free(pgw_analysis_cache_t *c);
void pgw_analysis_cache_stats(const pgw_analysis_cache_t *c, pgw_analysis_cache_stats_t *st);

/* All functions below read sql up to len bytes or its first NUL, whichever
 * comes first (the server stops at the NUL too). out must have been
 * initialised; whatever it held is cleared first. */

/* Fills out when every statement of sql is in the cache. Returns 1 on a hit,
 * 0 on a miss (out left empty), -ENOMEM. Never calls the parser. */
int pgw_analysis_lookup(pgw_analysis_cache_t *c, const char *sql, size_t len,
                        pgw_analysis_t *out)
    __attribute__((warn_unused_result));

/* The full analysis, without a cache: callable from any thread, on several
 * at once (libpg_query keeps its state per thread and frees it when the
 * thread exits). Costs 15-40 us for a pgbench statement, ~0.5 ms for a
 * 20-table join, ~0.25 s for a 1 MB INSERT: run big texts on a worker.
 * Returns 0, or -ENOMEM (out left empty). */
int pgw_analysis_parse(const char *sql, size_t len, pgw_analysis_t *out)
    __attribute__((warn_unused_result));

/* Adds the cacheable statements of an analysis made by pgw_analysis_parse()
 * (or _run). Already present shapes are left alone. */
void pgw_analysis_cache_add(pgw_analysis_cache_t *c, const pgw_analysis_t *an);

/* Lookup, then the parser for the statements that missed (each added at
 * once, so the 40 INSERTs of one string are parsed once), on the cache's
 * thread. Returns 0 or -ENOMEM. */
int pgw_analysis_run(pgw_analysis_cache_t *c, const char *sql, size_t len,
                     pgw_analysis_t *out)
    __attribute__((warn_unused_result));

/* The statements of sql by the lexer alone (top-level ';', as the cache's
 * split): no parser, cost linear in the length, callable from any thread.
 * Fills up to cap (offset, length) pairs and returns how many statements
 * there are; 0 for none or when out of memory. For strings too big to parse
 * on a loop thread; the parser may still disagree on rare inputs (a
 * function named "begin"), which only moves a statement boundary. */
unsigned pgw_analysis_split(const char *sql, size_t len, uint32_t (*spans)[2], unsigned cap);

#endif
