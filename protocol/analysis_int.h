/* Private to the analysis module (analysis*.c): the SQL lexer, the shared
 * entry layout behind pgw_sql_info_t, and the seams between the files. */
#ifndef PGW_ANALYSIS_INT_H
#define PGW_ANALYSIS_INT_H

#include <stdatomic.h>
#include <stdint.h>

#include "pgwarden/analysis.h"

/* ---- lexer (analysis_lex.c) ------------------------------------------------
 * Tokenizes as PostgreSQL 15's scanner does, as far as the cache key, the
 * statement split and the placement of $n need it. A difference from the real
 * scanner can only cost a cache miss, never a wrong answer: entries are made
 * from what libpg_query says, and a statement whose tokens do not line up
 * with libpg_query's normalization is cached by its exact text only. */
enum {
    TK_IDENT = 1,      /* keyword or unquoted identifier */
    TK_QIDENT,         /* "quoted" or U&"quoted" identifier */
    TK_PARAM,          /* $n */
    TK_OP,             /* operator, split as the server splits them (=- is = -) */
    TK_PUNCT,          /* , ( ) [ ] ; : :: := . .. and any other lone byte */
    TK_COMMENTQ,       /* a comment holding a ' (other comments are not tokens) */
    TK_L_INT,          /* integer that fits int4 (the server's ICONST) */
    TK_L_NUM,          /* any other number (FCONST) */
    TK_L_STR,          /* 'standard', with continuation lines */
    TK_L_ESTR,         /* E'escaped' */
    TK_L_USTR,         /* U&'unicode' */
    TK_L_BSTR,         /* B'0101' */
    TK_L_XSTR,         /* X'ff' */
    TK_L_DOLLAR,       /* $tag$...$tag$ */
    TK_L_DOLLARQ,      /* the same, holding a ': its value goes into the key */
    TK_BAD,            /* unterminated or junk the server rejects: never a hit */
};
#define TK_IS_LIT(t) ((t) >= TK_L_INT && (t) <= TK_L_DOLLARQ)

typedef struct sql_tok {
    uint32_t start, end;      /* byte offsets in the lexed string */
    uint8_t type;
    uint8_t keep;             /* a literal whose value goes into the key: its
                               * value can make the statement fail to parse */
} sql_tok_t;

/* Whether the token's bytes are part of the cache key. */
static inline int sql_tok_in_key(const sql_tok_t *t)
{
    return !TK_IS_LIT(t->type) || t->type == TK_L_DOLLARQ || t->keep;
}

typedef struct sql_piece {
    uint32_t start, end;      /* statement text, white space trimmed */
    uint32_t tok, ntok;       /* its tokens, without the closing ';' */
    uint32_t max_param;       /* highest $n in it */
    uint8_t bad;              /* holds a TK_BAD */
} sql_piece_t;

typedef struct sql_lex {
    sql_tok_t *toks;
    uint32_t ntoks, tok_cap;
    sql_piece_t *pieces;
    uint32_t npieces, piece_cap;
} sql_lex_t;

void sql_lex_init(sql_lex_t *lx);
void sql_lex_free(sql_lex_t *lx);
/* Tokenizes s[0..len) and splits it into statements at top-level ';' (not in
 * parentheses nor in a BEGIN ATOMIC body). whole != 0: one piece for all of
 * it, as for a statement the parser already delimited. Returns 0 or -ENOMEM. */
int sql_lex_run(sql_lex_t *lx, const char *s, uint32_t len, int whole);

/* Appends the cache key of tokens t[0..n) of s: token types and the bytes of
 * everything but literal values. Returns the key length; out must hold
 * sql_key_bound() + SQL_KEY_SLACK bytes (short tokens are copied in
 * fixed-size blocks that may write past the key's end). */
#define SQL_KEY_SLACK 16u
uint32_t sql_key_bound(const sql_tok_t *t, uint32_t n);
uint32_t sql_key_build(const char *s, const sql_tok_t *t, uint32_t n, char *out);
uint64_t sql_hash(const void *p, size_t n);

/* For text that does not parse: the command its leading keywords suggest
 * ("UNKNOWN" if none) and its class. */
const char *sql_guess_command(const char *s, const sql_tok_t *t, uint32_t n,
                              pgw_audit_class_t *cls);

/* A run of tokens that the normalized text shows as $k. */
typedef struct sql_region {
    uint32_t tok;             /* first token, relative to the statement */
    uint32_t ntok;            /* 1, or 2 for a folded minus sign: - 5 */
    uint32_t k;
} sql_region_t;

/* Writes s[start..end) with the regions replaced by $k into out (which holds
 * sql_rebuild_bound() bytes, plus a NUL). Returns the length. */
size_t sql_rebuild_bound(uint32_t start, uint32_t end, uint32_t nregions);
size_t sql_rebuild(const char *s, uint32_t start, uint32_t end, const sql_tok_t *t,
                   const sql_region_t *r, uint32_t nr, char *out);

/* ---- entries (analysis.c) -------------------------------------------------- */
enum { ENTRY_NOCACHE = 0, ENTRY_SHAPE, ENTRY_EXACT };

typedef struct sql_kept {     /* a literal the normalization left in the text */
    uint32_t tok;             /* token index in the statement */
    uint32_t off, len;        /* its bytes in the entry's kept_data */
} sql_kept_t;

/* One malloc'ed block: this header, then objects, regions, kept, and all the
 * strings. pub comes first so a pgw_sql_info_t * is the entry's address. */
typedef struct sql_entry {
    pgw_sql_info_t pub;
    atomic_uint refs;
    uint8_t mode;             /* ENTRY_* */
    uint8_t nocache;          /* a SHAPE or EXACT entry the cache must not keep */
    uint32_t size;            /* bytes of the block, for the cache's budget */
    uint64_t hash;            /* sql_hash of the token key */
    uint32_t ntok;
    uint32_t stmt_len;        /* bytes of the statement it was made from */
    const char *key;          /* SHAPE: token key; EXACT: the statement as sent */
    uint32_t key_len;
    const sql_region_t *regions;
    uint32_t nregions;
    const sql_kept_t *kept;
    uint32_t nkept;
    const char *kept_data;
    const char *norm;         /* EXACT and parse errors: the text to show */
    uint32_t norm_len;
} sql_entry_t;

static inline sql_entry_t *sql_entry_of(pgw_sql_info_t *info) { return (sql_entry_t *)info; }

/* Does entry e describe the statement whose tokens are t[0..n) in s, with
 * token key key[0..key_len)? */
int sql_entry_matches(const sql_entry_t *e, const char *s, uint32_t start, uint32_t end,
                      const sql_tok_t *t, uint32_t n, const char *key, uint32_t key_len);

/* ---- JSON (analysis_json.c) ------------------------------------------------ */
enum { J_NULL, J_FALSE, J_TRUE, J_NUM, J_STR, J_ARR, J_OBJ };

typedef struct jn {
    const char *key;          /* member name; NULL in an array and for the root */
    const char *str;          /* J_STR: the decoded, NUL-terminated value */
    int64_t num;              /* J_NUM */
    uint32_t first, next;     /* first child, next sibling; 0 = none (a null node) */
    uint8_t type;
} jn_t;

typedef struct jdoc {
    jn_t *v;
    uint32_t n, cap;
    char *p;                  /* parse position */
    int bad;                  /* out of memory, malformed or too deep */
    int oom;
} jdoc_t;

/* Parses text (NUL-terminated, modified in place) into d; returns the root's
 * index. d->bad says it failed (d->oom: for want of memory). Free with
 * json_free in any case. */
uint32_t json_parse(jdoc_t *d, char *text);
void json_free(jdoc_t *d);
static inline const jn_t *J(const jdoc_t *d, uint32_t i) { return &d->v[i]; }
/* Member key of object o, or 0 (also when o is 0 or no object). */
uint32_t jget(const jdoc_t *d, uint32_t o, const char *key);
/* A string member; "" when absent (libpg_query leaves out empty strings). */
const char *jstr(const jdoc_t *d, uint32_t o, const char *key);
/* A boolean member; false when absent (libpg_query leaves out false). */
int jbool(const jdoc_t *d, uint32_t o, const char *key);
/* A Node is an object with one member named after its type:
 * {"RangeVar": {...}}. Returns the type name and sets *body, or NULL. */
const char *jnode(const jdoc_t *d, uint32_t o, uint32_t *body);

/* ---- parse tree walk (analysis_walk.c) ------------------------------------- */
typedef struct sql_obj {
    const char *schema, *name, *type;  /* borrowed from the parse tree text */
    pgw_access_t access;
} sql_obj_t;

typedef struct sql_walk_out {
    const char *command;      /* static */
    pgw_audit_class_t cls;
    int own_redact;           /* libpg_query's normalization leaves literals that
                               * must not show (passwords, CALL arguments):
                               * replace every literal ourselves */
    int no_raw;               /* raw text may hold a secret */
    uint32_t flags;           /* PGW_SQL_NO_WHERE, PGW_SQL_COPY_*, PGW_SQL_OWN_TRANSACTION */
    sql_obj_t *objs;
    uint32_t nobjs, cap;
    sql_obj_t *fns;           /* functions called by name (type "function") */
    uint32_t nfns, fcap;
    const char *name;         /* PREPARE, EXECUTE, DEALLOCATE, DECLARE, FETCH,
                               * CLOSE's name (in the json) */
    int oom;
} sql_walk_out_t;

/* Reads libpg_query's JSON parse tree (pg_query_parse), in place: json is
 * modified, and the object names point into it. Sets *nstmts; when it is 1,
 * classifies that statement and collects its relations and the functions
 * it calls by name. Returns 0, -ENOMEM,
 * or -EINVAL for a tree it cannot read (malformed, or nested deeper than
 * any real statement). Free out with sql_walk_free whatever the result. */
int sql_walk(char *json, sql_walk_out_t *out, uint32_t *nstmts);
void sql_walk_free(sql_walk_out_t *out);
/* Self-check of the node table's order (for the unit test). */
int sql_walk_tables_ok(void);

/* ---- node table (analysis_walk.c) and statement class (analysis_command.c) -
 * The node types the walk and the classification know; every other node
 * is N_OTHER. */
enum {
    N_OTHER = 0, N_SELECT, N_INSERT, N_UPDATE, N_DELETE, N_MERGE, N_TRANSACTION,
    N_CLOSE_PORTAL, N_FETCH, N_DROP, N_COPY, N_RENAME, N_ALTER_OBJ_DEPENDS, N_ALTER_OBJ_SCHEMA,
    N_ALTER_OWNER, N_ALTER_TABLE_MOVE_ALL, N_ALTER_TABLE, N_ALTER_FUNCTION, N_GRANT, N_GRANT_ROLE,
    N_DEFINE, N_CREATE_FUNCTION, N_VACUUM, N_EXPLAIN, N_CTAS, N_VARIABLE_SET, N_DISCARD,
    N_PREPARE, N_EXECUTE, N_DEALLOCATE, N_DECLARE_CURSOR, N_DO, N_CALL, N_CREATE_ROLE,
    N_ALTER_ROLE, N_ALTER_ROLE_SET, N_DROP_ROLE, N_CREATE_USER_MAPPING, N_ALTER_USER_MAPPING,
    N_ALTER_DEFAULT_PRIVILEGES, N_CREATE_SUBSCRIPTION, N_ALTER_SUBSCRIPTION, N_NOTIFY,
    N_RANGE_VAR, N_CREATE, N_CREATE_FOREIGN_TABLE, N_VIEW, N_REFRESH_MATVIEW, N_TRUNCATE,
    N_INDEX, N_ALTER_SEQ, N_CREATE_SEQ, N_COMMENT, N_LOCKING_CLAUSE, N_COMPOSITE_TYPE,
    N_CLUSTER, N_REINDEX, N_CREATE_TRIG, N_RULE, N_CREATE_POLICY, N_ALTER_POLICY,
    N_FUNC_CALL,
};

enum { LV_ALL, LV_MOD, LV_DDL };   /* PostgreSQL's GetCommandLogLevel */

typedef struct node_kind {
    const char *name;         /* libpg_query's node name */
    uint8_t id;               /* N_*: needs more than the table says */
    uint8_t level;
    const char *tag;          /* CreateCommandTag; NULL: computed from the node */
} node_kind_t;

/* ObjectType: the ALTER and DROP tags, and the relation type word. */
typedef struct objtype_info {
    const char *name, *alter, *drop, *relkind;
} objtype_info_t;

/* The entry of libpg_query's node name, or NULL (also for name NULL). */
const node_kind_t *sql_node_kind(const char *name);
/* The entry of an ObjectType name ("OBJECT_TABLE"), or NULL. */
const objtype_info_t *sql_objtype(const char *name);

/* Does EXPLAIN (body: the ExplainStmt) run its statement (ANALYZE)? */
int sql_explain_analyzes(const jdoc_t *d, uint32_t body);
/* Sets out's command, cls, flags, name, own_redact and no_raw from the one
 * statement stmt of d (its Node: {"SelectStmt": {...}}); dml_write: the walk
 * saw an INSERT, UPDATE, DELETE, MERGE or TRUNCATE in it. Allocates nothing;
 * the strings are static or borrowed from d. */
void sql_command_classify(const jdoc_t *d, uint32_t stmt, int dml_write, sql_walk_out_t *out);

/* ---- cache internals (analysis_cache.c), used by analysis.c --------------- */
/* The cache's own lexer and buffers, reused across lookups. */
sql_lex_t *sql_cache_lex(pgw_analysis_cache_t *c);
/* Finds the entry for statement p of the lexed string s; NULL on a miss.
 * Marks it recently used. The reference is the cache's: take your own. */
sql_entry_t *sql_cache_find(pgw_analysis_cache_t *c, const char *s, const sql_tok_t *toks,
                            const sql_piece_t *p);
int sql_cache_max_lookup(const pgw_analysis_cache_t *c, size_t len);
/* Adds e (taking a reference) unless it is not cacheable, too big, already
 * there, or its shape has enough variants cached. */
void sql_cache_insert(pgw_analysis_cache_t *c, sql_entry_t *e);
void sql_cache_count(pgw_analysis_cache_t *c, int hit);
/* Time spent analysing statements that missed. */
void sql_cache_parse_time(pgw_analysis_cache_t *c, uint64_t ns);

/* Adds to the analysis the statement [start,end) of s, whose tokens are
 * toks, described by e: takes a reference and writes its default-mode text.
 * The statement's offset is reported as base + start. Returns 0 or -ENOMEM. */
int sql_analysis_push(pgw_analysis_t *an, sql_entry_t *e, const char *s, uint32_t start,
                      uint32_t end, const sql_tok_t *toks, uint32_t base);
/* Does a hold the same statement shape as b (so one of them is redundant)? */
int sql_entry_same(const sql_entry_t *a, const sql_entry_t *b);
void sql_entry_unref(sql_entry_t *e);

/* ---- replication commands (analysis_repl.c) --------------------------------
 * A walsender's command (BASE_BACKUP, START_REPLICATION, ...), which
 * libpg_query cannot parse. Returns 1 with out filled (out->norm is the text
 * with its literals replaced by $n, malloc'd, the caller frees it), 0 when s
 * is no such command, -ENOMEM. */
typedef struct sql_repl {
    const char *command;      /* static */
    pgw_audit_class_t cls;
    char *norm;
    uint32_t norm_len;
    char fingerprint[17];
} sql_repl_t;
int sql_repl_analyze(const char *s, uint32_t n, sql_repl_t *out);

#endif
