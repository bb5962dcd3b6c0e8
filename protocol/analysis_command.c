/* A statement as a whole: its command tag as PostgreSQL's CreateCommandTag
 * names it, its log level (GetCommandLogLevel) and pgAudit class, and the
 * flags and redaction needs that follow from its type (no WHERE, COPY
 * PROGRAM, its own transaction, the names PREPARE, DECLARE and the like
 * bind, literals libpg_query's normalization leaves in place).
 *
 * Reads the same parse tree as the relation walk (analysis_walk.c), whose
 * node table gives most tags; the ones that depend on the node's fields are
 * computed here. Runs once per statement parsed, after the walk. */
#include <string.h>
#include <strings.h>

#include "analysis_int.h"

/* ---- command tag and class ------------------------------------------------ */

/* The tag that a (name, tag) table gives a node's kind, or UNKNOWN. */
static const char *pair_find(const char *const (*t)[2], size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(key, t[i][0]) == 0)
            return t[i][1];
    return "UNKNOWN";
}

static const char *alter_tag(const char *objtype_name)
{
    const objtype_info_t *o = sql_objtype(objtype_name);

    return o && o->alter ? o->alter : "UNKNOWN";
}

int sql_explain_analyzes(const jdoc_t *d, uint32_t body)
{
    uint32_t opts = jget(d, body, "options"), i;
    int analyze = 0;

    for (i = opts ? J(d, opts)->first : 0; i; i = J(d, i)->next) {
        uint32_t de, arg, ab;
        const char *n = jnode(d, i, &de), *an;

        if (!n || strcmp(n, "DefElem") != 0 || strcmp(jstr(d, de, "defname"), "analyze") != 0)
            continue;
        /* the last one counts, as in explain.c; no argument means true */
        analyze = 1;
        arg = jget(d, de, "arg");
        an = jnode(d, arg, &ab);
        if (an && strcmp(an, "String") == 0) {
            const char *v = jstr(d, ab, "sval");

            analyze = !(strcasecmp(v, "false") == 0 || strcasecmp(v, "off") == 0 ||
                        strcasecmp(v, "no") == 0 || strcmp(v, "0") == 0);
        } else if (an && strcmp(an, "Integer") == 0) {
            uint32_t iv = jget(d, ab, "ival");

            analyze = iv && J(d, iv)->num != 0;
        } else if (an && strcmp(an, "Boolean") == 0) {
            analyze = jbool(d, ab, "boolval");
        }
    }
    return analyze;
}

/* CreateCommandTag and GetCommandLogLevel of a raw statement. Where the
 * level needs the tree (EXPLAIN ANALYZE, PREPARE) it recurses. */
static const char *command_of(const jdoc_t *d, uint32_t stmt, int *level, uint8_t *id, int depth)
{
    uint32_t body;
    const char *name = jnode(d, stmt, &body), *s;
    const node_kind_t *k = sql_node_kind(name);
    const objtype_info_t *o;
    uint8_t ignored_id;

    *level = LV_ALL;
    *id = N_OTHER;
    if (!k || depth > 8)
        return "UNKNOWN";
    *level = k->level;
    *id = k->id;
    if (k->tag)
        switch (k->id) {
        case N_COPY:
            *level = jbool(d, body, "is_from") ? LV_MOD : LV_ALL;
            return k->tag;
        case N_EXPLAIN:
            /* EXPLAIN ANALYZE runs the statement: it logs at that one's level */
            if (sql_explain_analyzes(d, body))
                (void)command_of(d, jget(d, body, "query"), level, &ignored_id, depth + 1);
            return k->tag;
        case N_PREPARE:
            /* PREPARE logs at the level of the statement it prepares */
            (void)command_of(d, jget(d, body, "query"), level, &ignored_id, depth + 1);
            return k->tag;
        default:
            return k->tag;
        }

    switch (k->id) {
    case N_SELECT:
        if (jget(d, body, "intoClause")) {
            /* parse analysis turns it into CREATE TABLE AS, with this tag */
            *level = LV_DDL;
            return "SELECT INTO";
        }
        return "SELECT";
    case N_TRANSACTION: {
        static const char *const tk[][2] = {
            { "TRANS_STMT_BEGIN", "BEGIN" }, { "TRANS_STMT_START", "START TRANSACTION" },
            { "TRANS_STMT_COMMIT", "COMMIT" }, { "TRANS_STMT_ROLLBACK", "ROLLBACK" },
            { "TRANS_STMT_ROLLBACK_TO", "ROLLBACK" }, { "TRANS_STMT_SAVEPOINT", "SAVEPOINT" },
            { "TRANS_STMT_RELEASE", "RELEASE" }, { "TRANS_STMT_PREPARE", "PREPARE TRANSACTION" },
            { "TRANS_STMT_COMMIT_PREPARED", "COMMIT PREPARED" },
            { "TRANS_STMT_ROLLBACK_PREPARED", "ROLLBACK PREPARED" },
        };
        return pair_find(tk, sizeof tk / sizeof tk[0], jstr(d, body, "kind"));
    }
    case N_CLOSE_PORTAL:
        return *jstr(d, body, "portalname") ? "CLOSE CURSOR" : "CLOSE CURSOR ALL";
    case N_FETCH:
        return jbool(d, body, "ismove") ? "MOVE" : "FETCH";
    case N_DROP:
        o = sql_objtype(jstr(d, body, "removeType"));
        return o && o->drop ? o->drop : "UNKNOWN";
    case N_RENAME:
        s = jstr(d, body, "renameType");
        return alter_tag(strcmp(s, "OBJECT_COLUMN") == 0 ? jstr(d, body, "relationType") : s);
    case N_ALTER_OBJ_DEPENDS:
    case N_ALTER_OBJ_SCHEMA:
    case N_ALTER_OWNER:
        return alter_tag(jstr(d, body, "objectType"));
    case N_ALTER_TABLE_MOVE_ALL:
    case N_ALTER_TABLE:
        return alter_tag(jstr(d, body, "objtype"));
    case N_ALTER_FUNCTION:
        s = jstr(d, body, "objtype");
        return strcmp(s, "OBJECT_PROCEDURE") == 0 ? "ALTER PROCEDURE" :
               strcmp(s, "OBJECT_ROUTINE") == 0 ? "ALTER ROUTINE" : "ALTER FUNCTION";
    case N_GRANT:
        return jbool(d, body, "is_grant") ? "GRANT" : "REVOKE";
    case N_GRANT_ROLE:
        return jbool(d, body, "is_grant") ? "GRANT ROLE" : "REVOKE ROLE";
    case N_DEFINE: {
        static const char *const dk[][2] = {
            { "OBJECT_AGGREGATE", "CREATE AGGREGATE" }, { "OBJECT_OPERATOR", "CREATE OPERATOR" },
            { "OBJECT_TYPE", "CREATE TYPE" }, { "OBJECT_TSPARSER", "CREATE TEXT SEARCH PARSER" },
            { "OBJECT_TSDICTIONARY", "CREATE TEXT SEARCH DICTIONARY" },
            { "OBJECT_TSTEMPLATE", "CREATE TEXT SEARCH TEMPLATE" },
            { "OBJECT_TSCONFIGURATION", "CREATE TEXT SEARCH CONFIGURATION" },
            { "OBJECT_COLLATION", "CREATE COLLATION" },
            { "OBJECT_ACCESS_METHOD", "CREATE ACCESS METHOD" },
        };
        return pair_find(dk, sizeof dk / sizeof dk[0], jstr(d, body, "kind"));
    }
    case N_CREATE_FUNCTION:
        return jbool(d, body, "is_procedure") ? "CREATE PROCEDURE" : "CREATE FUNCTION";
    case N_VACUUM:
        return jbool(d, body, "is_vacuumcmd") ? "VACUUM" : "ANALYZE";
    case N_CTAS:
        s = jstr(d, body, "objtype");
        if (strcmp(s, "OBJECT_MATVIEW") == 0)
            return "CREATE MATERIALIZED VIEW";
        return jbool(d, body, "is_select_into") ? "SELECT INTO" : "CREATE TABLE AS";
    case N_VARIABLE_SET:
        s = jstr(d, body, "kind");
        return strncmp(s, "VAR_RESET", 9) == 0 ? "RESET" : "SET";
    case N_DISCARD:
        s = jstr(d, body, "target");
        return strcmp(s, "DISCARD_ALL") == 0 ? "DISCARD ALL" :
               strcmp(s, "DISCARD_PLANS") == 0 ? "DISCARD PLANS" :
               strcmp(s, "DISCARD_TEMP") == 0 ? "DISCARD TEMP" :
               strcmp(s, "DISCARD_SEQUENCES") == 0 ? "DISCARD SEQUENCES" : "UNKNOWN";
    case N_DEALLOCATE:
        return *jstr(d, body, "name") ? "DEALLOCATE" : "DEALLOCATE ALL";
    default:
        return "UNKNOWN";
    }
}

/* pgAudit's log_audit_event: the level picks WRITE / DDL / the rest; ROLE,
 * READ, FUNCTION and MISC_SET by statement type. Two deliberate additions:
 * CALL is FUNCTION (pgAudit files it under MISC and logs the procedure as a
 * separate FUNCTION entry; we have one event), and a SELECT whose WITH
 * holds an INSERT/UPDATE/DELETE is WRITE (pgAudit says READ, which would
 * hide a data change from anyone filtering on WRITE). */
static pgw_audit_class_t class_of(uint8_t id, const char *tag, int level, int dml_write)
{
    if (id == N_SELECT && level == LV_ALL && dml_write)
        return PGW_CLASS_WRITE;
    switch (level) {
    case LV_MOD:
        return id == N_EXECUTE ? PGW_CLASS_MISC : PGW_CLASS_WRITE;
    case LV_DDL:
        switch (id) {
        case N_CREATE_ROLE:
        case N_ALTER_ROLE:
        case N_CREATE_USER_MAPPING:
        case N_ALTER_USER_MAPPING:
        case N_GRANT:
        case N_GRANT_ROLE:
        case N_DROP_ROLE:
        case N_ALTER_ROLE_SET:
        case N_ALTER_DEFAULT_PRIVILEGES:
            return PGW_CLASS_ROLE;
        case N_RENAME:
        case N_DROP:
            return strcmp(tag, "ALTER ROLE") == 0 || strcmp(tag, "DROP ROLE") == 0 ?
                   PGW_CLASS_ROLE : PGW_CLASS_DDL;
        default:
            return PGW_CLASS_DDL;
        }
    default:
        switch (id) {
        case N_COPY:
        case N_DECLARE_CURSOR:
        case N_SELECT:
        case N_PREPARE:
            return PGW_CLASS_READ;
        case N_DO:
        case N_CALL:
            return PGW_CLASS_FUNCTION;
        case N_VARIABLE_SET:
            return PGW_CLASS_MISC_SET;
        default:
            return PGW_CLASS_MISC;
        }
    }
}

/* A DefElem option's boolean as PostgreSQL's defGetBoolean reads it: no
 * argument is true. */
static int option_true(const jdoc_t *d, uint32_t defelem_body)
{
    uint32_t arg = jget(d, defelem_body, "arg"), body = 0;
    const char *n = jnode(d, arg, &body);

    if (!arg)
        return 1;
    if (n && strcmp(n, "Integer") == 0) {
        uint32_t v = jget(d, body, "ival");
        return v && J(d, v)->type == J_NUM && J(d, v)->num != 0;
    }
    if (n && strcmp(n, "String") == 0) {
        const char *v = jstr(d, body, "sval");
        return strcasecmp(v, "false") != 0 && strcasecmp(v, "off") != 0 &&
               strcasecmp(v, "no") != 0 && strcmp(v, "0") != 0;
    }
    return 1;
}

/* Does the option list member key of body name option (true)? */
static int has_option(const jdoc_t *d, uint32_t body, const char *key, const char *option)
{
    uint32_t list = jget(d, body, key), de;

    for (uint32_t i = list ? J(d, list)->first : 0; i; i = J(d, i)->next) {
        const char *n = jnode(d, i, &de);
        if (n && strcmp(n, "DefElem") == 0 && strcmp(jstr(d, de, "defname"), option) == 0)
            return option_true(d, de);
    }
    return 0;
}

/* Statements that PostgreSQL refuses inside a transaction block and
 * commits before their CommandComplete, among those whose command tag is
 * shared with forms that do not: CREATE INDEX CONCURRENTLY, DROP INDEX
 * CONCURRENTLY, REINDEX CONCURRENTLY and REINDEX of a schema, the system or
 * a database, CLUSTER of every clustered table, ALTER DATABASE SET
 * TABLESPACE. (CLUSTER of one partitioned table does too, which only the
 * catalog can tell.) */
static int own_transaction(const jdoc_t *d, uint32_t stmt, uint8_t id)
{
    uint32_t body = 0;
    const char *n = jnode(d, stmt, &body), *kind;

    switch (id) {
    case N_INDEX:
        return jbool(d, body, "concurrent");
    case N_DROP:
        return jbool(d, body, "concurrent");
    case N_REINDEX:
        kind = jstr(d, body, "kind");
        return strcmp(kind, "REINDEX_OBJECT_SCHEMA") == 0 ||
               strcmp(kind, "REINDEX_OBJECT_SYSTEM") == 0 ||
               strcmp(kind, "REINDEX_OBJECT_DATABASE") == 0 ||
               has_option(d, body, "params", "concurrently");
    case N_CLUSTER:
        return !jget(d, body, "relation");
    default:
        return n && strcmp(n, "AlterDatabaseStmt") == 0 &&
               has_option(d, body, "options", "tablespace");
    }
}

void sql_command_classify(const jdoc_t *d, uint32_t stmt, int dml_write, sql_walk_out_t *out)
{
    int level;
    uint8_t id;

    out->command = command_of(d, stmt, &level, &id, 0);
    out->cls = class_of(id, out->command, level, dml_write);
    if (id == N_UPDATE || id == N_DELETE || id == N_COPY) {
        uint32_t body = 0;

        (void)jnode(d, stmt, &body);
        if (id != N_COPY && !jget(d, body, "whereClause"))
            out->flags |= PGW_SQL_NO_WHERE;
        if (id == N_COPY && jbool(d, body, "is_program"))
            out->flags |= PGW_SQL_COPY_PROGRAM | (jbool(d, body, "is_from") ? PGW_SQL_COPY_FROM : 0);
    }

    if (own_transaction(d, stmt, id))
        out->flags |= PGW_SQL_OWN_TRANSACTION;
    if (id == N_PREPARE || id == N_EXECUTE || id == N_DEALLOCATE || id == N_DECLARE_CURSOR ||
        id == N_FETCH || id == N_CLOSE_PORTAL ||
        (id == N_DISCARD && strcmp(out->command, "DISCARD ALL") == 0)) {
        uint32_t body = 0;
        const char *name;

        (void)jnode(d, stmt, &body);
        switch (id) {
        case N_PREPARE:         out->flags |= PGW_SQL_PREPARE; break;
        case N_EXECUTE:         out->flags |= PGW_SQL_EXECUTE; break;
        case N_DEALLOCATE:      out->flags |= PGW_SQL_DEALLOCATE; break;
        case N_DECLARE_CURSOR:  out->flags |= PGW_SQL_DECLARE; break;
        case N_FETCH:           out->flags |= PGW_SQL_FETCH; break;
        case N_CLOSE_PORTAL:    out->flags |= PGW_SQL_CLOSE; break;
        default:                out->flags |= PGW_SQL_DEALLOCATE | PGW_SQL_CLOSE; break;
        }
        name = id == N_DISCARD ? "" :
               jstr(d, body, id == N_PREPARE || id == N_EXECUTE || id == N_DEALLOCATE ? "name" : "portalname");
        out->name = *name ? name : NULL;
    }

    switch (id) {
    case N_CREATE_ROLE:
    case N_ALTER_ROLE:
    case N_CREATE_USER_MAPPING:
    case N_ALTER_USER_MAPPING:
    case N_CREATE_SUBSCRIPTION:
    case N_ALTER_SUBSCRIPTION:
        /* passwords and connection strings: libpg_query's normalization
         * misses some spellings (E'...' with \'), so we replace every
         * literal, and raw mode must not print these */
        out->own_redact = 1;
        out->no_raw = 1;
        break;
    case N_CALL:
    case N_EXECUTE:
    case N_PREPARE:
    case N_NOTIFY:
    case N_CTAS:
        /* libpg_query leaves these literals (arguments, payloads, the WHERE
         * of the query that fills a new table) in place */
        out->own_redact = 1;
        break;
    case N_EXPLAIN: {
        uint32_t body = 0, q;
        const char *qn;

        (void)jnode(d, stmt, &body);
        q = jget(d, body, "query");
        qn = jnode(d, q, &body);
        if (qn && (strcmp(qn, "CreateTableAsStmt") == 0 || strcmp(qn, "ExecuteStmt") == 0))
            out->own_redact = 1;
        break;
    }
    default:
        break;
    }
}
