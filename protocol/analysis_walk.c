/* The parse tree of one statement: the node table (which node types the
 * analysis knows, their command tag and log level), and the walk that finds
 * every relation it references with read or write access. sql_walk reads
 * the tree, walks it, and has analysis_command.c name the statement (command
 * tag, pgAudit class, flags).
 *
 * The tree comes as libpg_query's JSON (pg_query_parse), read into a flat
 * DOM in place. Measured on libpg_query 15-4.0: the JSON parse of pgbench's
 * SELECT costs 6 us, the protobuf parse 22 us plus 10 us to unpack and free
 * (protobuf-c scans all 250 fields of a Node for every node), so JSON it is.
 *
 * The walk is generic, so that a RangeVar is found wherever the grammar puts
 * one (subqueries, CTEs, joins, RETURNING, ON CONFLICT, policies, rules, ...);
 * only the nodes that decide access or scope get a handler of their own. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "analysis_int.h"

/* The server's own stack limit stops nesting long before this; it only
 * bounds our recursion. */
#define WALK_MAX_DEPTH 10000

/* ---- the node types we know ------------------------------------------------ */

/* Sorted by strcmp (sql_walk_tables_ok checks it): bsearch'd for every node. */
static const node_kind_t kinds[] = {
    { "AlterCollationStmt", N_OTHER, LV_DDL, "ALTER COLLATION" },
    { "AlterDatabaseRefreshCollStmt", N_OTHER, LV_DDL, "ALTER DATABASE" },
    { "AlterDatabaseSetStmt", N_OTHER, LV_DDL, "ALTER DATABASE" },
    { "AlterDatabaseStmt", N_OTHER, LV_DDL, "ALTER DATABASE" },
    { "AlterDefaultPrivilegesStmt", N_ALTER_DEFAULT_PRIVILEGES, LV_DDL, "ALTER DEFAULT PRIVILEGES" },
    { "AlterDomainStmt", N_OTHER, LV_DDL, "ALTER DOMAIN" },
    { "AlterEnumStmt", N_OTHER, LV_DDL, "ALTER TYPE" },
    { "AlterEventTrigStmt", N_OTHER, LV_DDL, "ALTER EVENT TRIGGER" },
    { "AlterExtensionContentsStmt", N_OTHER, LV_DDL, "ALTER EXTENSION" },
    { "AlterExtensionStmt", N_OTHER, LV_DDL, "ALTER EXTENSION" },
    { "AlterFdwStmt", N_OTHER, LV_DDL, "ALTER FOREIGN DATA WRAPPER" },
    { "AlterForeignServerStmt", N_OTHER, LV_DDL, "ALTER SERVER" },
    { "AlterFunctionStmt", N_ALTER_FUNCTION, LV_DDL, NULL },
    { "AlterObjectDependsStmt", N_ALTER_OBJ_DEPENDS, LV_DDL, NULL },
    { "AlterObjectSchemaStmt", N_ALTER_OBJ_SCHEMA, LV_DDL, NULL },
    { "AlterOpFamilyStmt", N_OTHER, LV_DDL, "ALTER OPERATOR FAMILY" },
    { "AlterOperatorStmt", N_OTHER, LV_DDL, "ALTER OPERATOR" },
    { "AlterOwnerStmt", N_ALTER_OWNER, LV_DDL, NULL },
    { "AlterPolicyStmt", N_ALTER_POLICY, LV_DDL, "ALTER POLICY" },
    { "AlterPublicationStmt", N_OTHER, LV_DDL, "ALTER PUBLICATION" },
    { "AlterRoleSetStmt", N_ALTER_ROLE_SET, LV_DDL, "ALTER ROLE" },
    { "AlterRoleStmt", N_ALTER_ROLE, LV_DDL, "ALTER ROLE" },
    { "AlterSeqStmt", N_ALTER_SEQ, LV_DDL, "ALTER SEQUENCE" },
    { "AlterStatsStmt", N_OTHER, LV_DDL, "ALTER STATISTICS" },
    { "AlterSubscriptionStmt", N_ALTER_SUBSCRIPTION, LV_DDL, "ALTER SUBSCRIPTION" },
    { "AlterSystemStmt", N_OTHER, LV_DDL, "ALTER SYSTEM" },
    { "AlterTSConfigurationStmt", N_OTHER, LV_DDL, "ALTER TEXT SEARCH CONFIGURATION" },
    { "AlterTSDictionaryStmt", N_OTHER, LV_DDL, "ALTER TEXT SEARCH DICTIONARY" },
    { "AlterTableMoveAllStmt", N_ALTER_TABLE_MOVE_ALL, LV_DDL, NULL },
    { "AlterTableSpaceOptionsStmt", N_OTHER, LV_DDL, "ALTER TABLESPACE" },
    { "AlterTableStmt", N_ALTER_TABLE, LV_DDL, NULL },
    { "AlterTypeStmt", N_OTHER, LV_DDL, "ALTER TYPE" },
    { "AlterUserMappingStmt", N_ALTER_USER_MAPPING, LV_DDL, "ALTER USER MAPPING" },
    { "CallStmt", N_CALL, LV_ALL, "CALL" },
    { "CheckPointStmt", N_OTHER, LV_ALL, "CHECKPOINT" },
    { "ClosePortalStmt", N_CLOSE_PORTAL, LV_ALL, NULL },
    { "ClusterStmt", N_CLUSTER, LV_DDL, "CLUSTER" },
    { "CommentStmt", N_COMMENT, LV_DDL, "COMMENT" },
    { "CompositeTypeStmt", N_COMPOSITE_TYPE, LV_DDL, "CREATE TYPE" },
    { "ConstraintsSetStmt", N_OTHER, LV_ALL, "SET CONSTRAINTS" },
    { "CopyStmt", N_COPY, LV_ALL, "COPY" },
    { "CreateAmStmt", N_OTHER, LV_DDL, "CREATE ACCESS METHOD" },
    { "CreateCastStmt", N_OTHER, LV_DDL, "CREATE CAST" },
    { "CreateConversionStmt", N_OTHER, LV_DDL, "CREATE CONVERSION" },
    { "CreateDomainStmt", N_OTHER, LV_DDL, "CREATE DOMAIN" },
    { "CreateEnumStmt", N_OTHER, LV_DDL, "CREATE TYPE" },
    { "CreateEventTrigStmt", N_OTHER, LV_DDL, "CREATE EVENT TRIGGER" },
    { "CreateExtensionStmt", N_OTHER, LV_DDL, "CREATE EXTENSION" },
    { "CreateFdwStmt", N_OTHER, LV_DDL, "CREATE FOREIGN DATA WRAPPER" },
    { "CreateForeignServerStmt", N_OTHER, LV_DDL, "CREATE SERVER" },
    { "CreateForeignTableStmt", N_CREATE_FOREIGN_TABLE, LV_DDL, "CREATE FOREIGN TABLE" },
    { "CreateFunctionStmt", N_CREATE_FUNCTION, LV_DDL, NULL },
    { "CreateOpClassStmt", N_OTHER, LV_DDL, "CREATE OPERATOR CLASS" },
    { "CreateOpFamilyStmt", N_OTHER, LV_DDL, "CREATE OPERATOR FAMILY" },
    { "CreatePLangStmt", N_OTHER, LV_DDL, "CREATE LANGUAGE" },
    { "CreatePolicyStmt", N_CREATE_POLICY, LV_DDL, "CREATE POLICY" },
    { "CreatePublicationStmt", N_OTHER, LV_DDL, "CREATE PUBLICATION" },
    { "CreateRangeStmt", N_OTHER, LV_DDL, "CREATE TYPE" },
    { "CreateRoleStmt", N_CREATE_ROLE, LV_DDL, "CREATE ROLE" },
    { "CreateSchemaStmt", N_OTHER, LV_DDL, "CREATE SCHEMA" },
    { "CreateSeqStmt", N_CREATE_SEQ, LV_DDL, "CREATE SEQUENCE" },
    { "CreateStatsStmt", N_OTHER, LV_DDL, "CREATE STATISTICS" },
    { "CreateStmt", N_CREATE, LV_DDL, "CREATE TABLE" },
    { "CreateSubscriptionStmt", N_CREATE_SUBSCRIPTION, LV_DDL, "CREATE SUBSCRIPTION" },
    { "CreateTableAsStmt", N_CTAS, LV_DDL, NULL },
    { "CreateTableSpaceStmt", N_OTHER, LV_DDL, "CREATE TABLESPACE" },
    { "CreateTransformStmt", N_OTHER, LV_DDL, "CREATE TRANSFORM" },
    { "CreateTrigStmt", N_CREATE_TRIG, LV_DDL, "CREATE TRIGGER" },
    { "CreateUserMappingStmt", N_CREATE_USER_MAPPING, LV_DDL, "CREATE USER MAPPING" },
    { "CreatedbStmt", N_OTHER, LV_DDL, "CREATE DATABASE" },
    { "DeallocateStmt", N_DEALLOCATE, LV_ALL, NULL },
    { "DeclareCursorStmt", N_DECLARE_CURSOR, LV_ALL, "DECLARE CURSOR" },
    { "DefineStmt", N_DEFINE, LV_DDL, NULL },
    { "DeleteStmt", N_DELETE, LV_MOD, "DELETE" },
    { "DiscardStmt", N_DISCARD, LV_ALL, NULL },
    { "DoStmt", N_DO, LV_ALL, "DO" },
    { "DropOwnedStmt", N_OTHER, LV_DDL, "DROP OWNED" },
    { "DropRoleStmt", N_DROP_ROLE, LV_DDL, "DROP ROLE" },
    { "DropStmt", N_DROP, LV_DDL, NULL },
    { "DropSubscriptionStmt", N_OTHER, LV_DDL, "DROP SUBSCRIPTION" },
    { "DropTableSpaceStmt", N_OTHER, LV_DDL, "DROP TABLESPACE" },
    { "DropUserMappingStmt", N_OTHER, LV_DDL, "DROP USER MAPPING" },
    { "DropdbStmt", N_OTHER, LV_DDL, "DROP DATABASE" },
    { "ExecuteStmt", N_EXECUTE, LV_ALL, "EXECUTE" },
    { "ExplainStmt", N_EXPLAIN, LV_ALL, "EXPLAIN" },
    { "FetchStmt", N_FETCH, LV_ALL, NULL },
    { "FuncCall", N_FUNC_CALL, LV_ALL, NULL },
    { "GrantRoleStmt", N_GRANT_ROLE, LV_DDL, NULL },
    { "GrantStmt", N_GRANT, LV_DDL, NULL },
    { "ImportForeignSchemaStmt", N_OTHER, LV_DDL, "IMPORT FOREIGN SCHEMA" },
    { "IndexStmt", N_INDEX, LV_DDL, "CREATE INDEX" },
    { "InsertStmt", N_INSERT, LV_MOD, "INSERT" },
    { "ListenStmt", N_OTHER, LV_ALL, "LISTEN" },
    { "LoadStmt", N_OTHER, LV_ALL, "LOAD" },
    { "LockStmt", N_OTHER, LV_ALL, "LOCK TABLE" },
    { "LockingClause", N_LOCKING_CLAUSE, LV_ALL, NULL },
    { "MergeStmt", N_MERGE, LV_MOD, "MERGE" },
    { "NotifyStmt", N_NOTIFY, LV_ALL, "NOTIFY" },
    { "PrepareStmt", N_PREPARE, LV_ALL, "PREPARE" },
    { "RangeVar", N_RANGE_VAR, LV_ALL, NULL },
    { "ReassignOwnedStmt", N_OTHER, LV_DDL, "REASSIGN OWNED" },
    { "RefreshMatViewStmt", N_REFRESH_MATVIEW, LV_DDL, "REFRESH MATERIALIZED VIEW" },
    { "ReindexStmt", N_REINDEX, LV_ALL, "REINDEX" },
    { "RenameStmt", N_RENAME, LV_DDL, NULL },
    { "RuleStmt", N_RULE, LV_DDL, "CREATE RULE" },
    { "SecLabelStmt", N_OTHER, LV_DDL, "SECURITY LABEL" },
    { "SelectStmt", N_SELECT, LV_ALL, NULL },
    { "TransactionStmt", N_TRANSACTION, LV_ALL, NULL },
    { "TruncateStmt", N_TRUNCATE, LV_MOD, "TRUNCATE TABLE" },
    { "UnlistenStmt", N_OTHER, LV_ALL, "UNLISTEN" },
    { "UpdateStmt", N_UPDATE, LV_MOD, "UPDATE" },
    { "VacuumStmt", N_VACUUM, LV_ALL, NULL },
    { "VariableSetStmt", N_VARIABLE_SET, LV_ALL, NULL },
    { "VariableShowStmt", N_OTHER, LV_ALL, "SHOW" },
    { "ViewStmt", N_VIEW, LV_DDL, "CREATE VIEW" },
};

const node_kind_t *sql_node_kind(const char *name)
{
    size_t lo = 0, hi = sizeof kinds / sizeof kinds[0];

    if (!name)
        return NULL;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(name, kinds[mid].name);

        if (c == 0)
            return &kinds[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* ObjectType: the ALTER and DROP tags, and the relation type word. */
static const objtype_info_t objtypes[] = {
    { "OBJECT_TABLE", "ALTER TABLE", "DROP TABLE", "table" },
    { "OBJECT_VIEW", "ALTER VIEW", "DROP VIEW", "view" },
    { "OBJECT_MATVIEW", "ALTER MATERIALIZED VIEW", "DROP MATERIALIZED VIEW", "materialized view" },
    { "OBJECT_SEQUENCE", "ALTER SEQUENCE", "DROP SEQUENCE", "sequence" },
    { "OBJECT_INDEX", "ALTER INDEX", "DROP INDEX", "index" },
    { "OBJECT_FOREIGN_TABLE", "ALTER FOREIGN TABLE", "DROP FOREIGN TABLE", "foreign table" },
    { "OBJECT_TABCONSTRAINT", "ALTER TABLE", NULL, NULL },
    { "OBJECT_COLUMN", "ALTER TABLE", NULL, NULL },
    { "OBJECT_AGGREGATE", "ALTER AGGREGATE", "DROP AGGREGATE", NULL },
    { "OBJECT_ATTRIBUTE", "ALTER TYPE", NULL, NULL },
    { "OBJECT_CAST", "ALTER CAST", "DROP CAST", NULL },
    { "OBJECT_COLLATION", "ALTER COLLATION", "DROP COLLATION", NULL },
    { "OBJECT_CONVERSION", "ALTER CONVERSION", "DROP CONVERSION", NULL },
    { "OBJECT_DATABASE", "ALTER DATABASE", NULL, NULL },
    { "OBJECT_DOMAIN", "ALTER DOMAIN", "DROP DOMAIN", NULL },
    { "OBJECT_DOMCONSTRAINT", "ALTER DOMAIN", NULL, NULL },
    { "OBJECT_EXTENSION", "ALTER EXTENSION", "DROP EXTENSION", NULL },
    { "OBJECT_FDW", "ALTER FOREIGN DATA WRAPPER", "DROP FOREIGN DATA WRAPPER", NULL },
    { "OBJECT_FOREIGN_SERVER", "ALTER SERVER", "DROP SERVER", NULL },
    { "OBJECT_FUNCTION", "ALTER FUNCTION", "DROP FUNCTION", NULL },
    { "OBJECT_LANGUAGE", "ALTER LANGUAGE", "DROP LANGUAGE", NULL },
    { "OBJECT_LARGEOBJECT", "ALTER LARGE OBJECT", NULL, NULL },
    { "OBJECT_OPCLASS", "ALTER OPERATOR CLASS", "DROP OPERATOR CLASS", NULL },
    { "OBJECT_OPERATOR", "ALTER OPERATOR", "DROP OPERATOR", NULL },
    { "OBJECT_OPFAMILY", "ALTER OPERATOR FAMILY", "DROP OPERATOR FAMILY", NULL },
    { "OBJECT_POLICY", "ALTER POLICY", "DROP POLICY", NULL },
    { "OBJECT_PROCEDURE", "ALTER PROCEDURE", "DROP PROCEDURE", NULL },
    { "OBJECT_ROLE", "ALTER ROLE", NULL, NULL },
    { "OBJECT_ROUTINE", "ALTER ROUTINE", "DROP ROUTINE", NULL },
    { "OBJECT_RULE", "ALTER RULE", "DROP RULE", NULL },
    { "OBJECT_SCHEMA", "ALTER SCHEMA", "DROP SCHEMA", NULL },
    { "OBJECT_TABLESPACE", "ALTER TABLESPACE", NULL, NULL },
    { "OBJECT_TRIGGER", "ALTER TRIGGER", "DROP TRIGGER", NULL },
    { "OBJECT_EVENT_TRIGGER", "ALTER EVENT TRIGGER", "DROP EVENT TRIGGER", NULL },
    { "OBJECT_TSCONFIGURATION", "ALTER TEXT SEARCH CONFIGURATION", "DROP TEXT SEARCH CONFIGURATION", NULL },
    { "OBJECT_TSDICTIONARY", "ALTER TEXT SEARCH DICTIONARY", "DROP TEXT SEARCH DICTIONARY", NULL },
    { "OBJECT_TSPARSER", "ALTER TEXT SEARCH PARSER", "DROP TEXT SEARCH PARSER", NULL },
    { "OBJECT_TSTEMPLATE", "ALTER TEXT SEARCH TEMPLATE", "DROP TEXT SEARCH TEMPLATE", NULL },
    { "OBJECT_TYPE", "ALTER TYPE", "DROP TYPE", NULL },
    { "OBJECT_PUBLICATION", "ALTER PUBLICATION", "DROP PUBLICATION", NULL },
    { "OBJECT_SUBSCRIPTION", "ALTER SUBSCRIPTION", NULL, NULL },
    { "OBJECT_STATISTIC_EXT", "ALTER STATISTICS", "DROP STATISTICS", NULL },
    { "OBJECT_TRANSFORM", NULL, "DROP TRANSFORM", NULL },
    { "OBJECT_ACCESS_METHOD", NULL, "DROP ACCESS METHOD", NULL },
};

const objtype_info_t *sql_objtype(const char *name)
{
    size_t i;

    for (i = 0; i < sizeof objtypes / sizeof objtypes[0]; i++)
        if (strcmp(objtypes[i].name, name) == 0)
            return &objtypes[i];
    return NULL;
}

static const char *relkind_name(const char *objtype_name)
{
    const objtype_info_t *o = sql_objtype(objtype_name);

    return o ? o->relkind : NULL;
}

int sql_walk_tables_ok(void)
{
    size_t i;

    for (i = 1; i < sizeof kinds / sizeof kinds[0]; i++)
        if (strcmp(kinds[i - 1].name, kinds[i].name) >= 0)
            return 0;
    return 1;
}

/* ---- relations and their access -------------------------------------------- */

typedef struct walk {
    const jdoc_t *d;
    sql_walk_out_t *out;
    const char **cte;            /* CTE names in scope (borrowed) */
    uint32_t ncte, cte_cap;
    uint32_t depth;
    int force_read;              /* inside a plain EXPLAIN: nothing is written */
    int dml_write;               /* an INSERT/UPDATE/DELETE/MERGE/TRUNCATE was seen */
} walk_t;

static void walk_value(walk_t *w, uint32_t v, pgw_access_t acc);

/* Appends ob to the list *v (relations or functions) unless the same
 * (schema, name, access) is there. */
static void obj_push(sql_walk_out_t *o, sql_obj_t **v, uint32_t *n, uint32_t *cap, sql_obj_t ob)
{
    uint32_t i;

    for (i = 0; i < *n; i++)
        if ((*v)[i].access == ob.access && strcmp((*v)[i].name, ob.name) == 0 &&
            strcmp((*v)[i].schema, ob.schema) == 0)
            return;
    if (*n == *cap) {
        uint32_t grown_cap = *cap ? *cap * 2 : 8;
        sql_obj_t *grown = realloc(*v, (size_t)grown_cap * sizeof *grown);

        if (!grown) {
            o->oom = 1;
            return;
        }
        *v = grown;
        *cap = grown_cap;
    }
    (*v)[(*n)++] = ob;
}

static void add_obj(walk_t *w, const char *schema, const char *name, const char *type,
                    pgw_access_t acc)
{
    sql_walk_out_t *o = w->out;

    if (!name || !*name)
        return;
    if (!schema)
        schema = "";
    if (w->force_read)
        acc = PGW_ACCESS_READ;
    obj_push(o, &o->objs, &o->nobjs, &o->cap, (sql_obj_t){ schema, name, type, acc });
}

/* A FuncCall body (the node's inside, or CallStmt's typed field): its
 * name, [catalog.][schema.]function, as the server folded it. */
static void add_funccall(walk_t *w, uint32_t fc)
{
    sql_walk_out_t *o = w->out;
    const char *part[3] = { "", "", "" };
    uint32_t n = 0, i, names = fc ? jget(w->d, fc, "funcname") : 0;

    if (!names || J(w->d, names)->type != J_ARR)
        return;
    for (i = J(w->d, names)->first; i; i = J(w->d, i)->next) {
        uint32_t body;
        const char *kind = jnode(w->d, i, &body);

        if (!kind || strcmp(kind, "String") != 0)
            return;
        part[n < 3 ? n : 2] = jstr(w->d, body, "sval");
        n++;
    }
    if (n == 0 || n > 3)
        return;
    const char *name = part[n - 1], *schema = n > 1 ? part[n - 2] : "";
    if (*name)
        obj_push(o, &o->fns, &o->nfns, &o->fcap, (sql_obj_t){ schema, name, "function", PGW_ACCESS_READ });
}

static int cte_visible(const walk_t *w, const char *name)
{
    uint32_t i;

    for (i = w->ncte; i-- > 0;)
        if (strcmp(w->cte[i], name) == 0)
            return 1;
    return 0;
}

static void cte_push(walk_t *w, const char *name)
{
    if (w->ncte == w->cte_cap) {
        uint32_t cap = w->cte_cap ? w->cte_cap * 2 : 8;
        const char **n = realloc(w->cte, (size_t)cap * sizeof *n);

        if (!n) {
            w->out->oom = 1;
            return;
        }
        w->cte = n;
        w->cte_cap = cap;
    }
    w->cte[w->ncte++] = name;
}

/* A RangeVar body (typed field or the inside of {"RangeVar": ...}). An
 * unqualified name that a WITH in scope defines is the CTE, not a table --
 * for reads; a write target never is. */
static void add_rangevar(walk_t *w, uint32_t rv, const char *type, pgw_access_t acc)
{
    const char *schema, *name;

    if (!rv || J(w->d, rv)->type != J_OBJ)
        return;
    schema = jstr(w->d, rv, "schemaname");
    name = jstr(w->d, rv, "relname");
    if (acc == PGW_ACCESS_READ && !*schema && cte_visible(w, name))
        return;
    add_obj(w, schema, name, type, acc);
}

/* The same, for a field that holds a Node: {"RangeVar": {...}}. */
static void add_rangevar_node(walk_t *w, uint32_t n, const char *type, pgw_access_t acc)
{
    uint32_t body;
    const char *name = jnode(w->d, n, &body);

    if (name && strcmp(name, "RangeVar") == 0)
        add_rangevar(w, body, type, acc);
}

/* A qualified name as a list of String nodes (DROP, COMMENT ON):
 * [catalog.][schema.]name; drop_last skips a trailing column name. */
static void add_name_list(walk_t *w, uint32_t n, const char *type, pgw_access_t acc, int drop_last)
{
    const char *part[4] = { NULL, NULL, NULL, NULL };
    uint32_t body, items, it, cnt = 0, k;
    const char *name = jnode(w->d, n, &body);

    if (!name || strcmp(name, "List") != 0)
        return;
    items = jget(w->d, body, "items");
    if (!items || J(w->d, items)->type != J_ARR)
        return;
    for (it = J(w->d, items)->first; it; it = J(w->d, it)->next) {
        uint32_t sb;
        const char *sn = jnode(w->d, it, &sb);

        if (!sn || strcmp(sn, "String") != 0 || cnt == 4)
            return;
        part[cnt++] = jstr(w->d, sb, "sval");
    }
    if (drop_last && cnt)
        cnt--;
    if (cnt == 0 || cnt > 3)
        return;
    k = cnt - 1;
    add_obj(w, cnt >= 2 ? part[k - 1] : "", part[k], type, acc);
}

/* Walks the members of an object but the skipped ones. */
static void walk_members(walk_t *w, uint32_t o, pgw_access_t acc, const char *skip1, const char *skip2)
{
    uint32_t i;

    for (i = J(w->d, o)->first; i; i = J(w->d, i)->next) {
        const char *k = J(w->d, i)->key;

        if ((skip1 && strcmp(k, skip1) == 0) || (skip2 && strcmp(k, skip2) == 0))
            continue;
        walk_value(w, i, acc);
    }
}

/* Brings a WITH clause's names into scope and walks its queries: a
 * non-recursive CTE sees only the ones before it, a recursive one all.
 * Returns the scope mark to restore. */
static uint32_t walk_with(walk_t *w, uint32_t wc)
{
    uint32_t mark = w->ncte, ctes = jget(w->d, wc, "ctes"), i;
    int recursive = jbool(w->d, wc, "recursive");

    if (!ctes || J(w->d, ctes)->type != J_ARR)
        return mark;
    for (i = J(w->d, ctes)->first; recursive && i; i = J(w->d, i)->next) {
        uint32_t body;
        const char *n = jnode(w->d, i, &body);

        if (n && strcmp(n, "CommonTableExpr") == 0)
            cte_push(w, jstr(w->d, body, "ctename"));
    }
    for (i = J(w->d, ctes)->first; i; i = J(w->d, i)->next) {
        uint32_t body;
        const char *n = jnode(w->d, i, &body);

        if (!n || strcmp(n, "CommonTableExpr") != 0)
            continue;
        walk_value(w, jget(w->d, body, "ctequery"), PGW_ACCESS_READ);
        if (!recursive)
            cte_push(w, jstr(w->d, body, "ctename"));
    }
    return mark;
}

/* The DML statements: their target is written, everything else read. */
static void walk_dml(walk_t *w, uint32_t body)
{
    uint32_t mark = walk_with(w, jget(w->d, body, "withClause"));

    w->dml_write = 1;
    add_rangevar(w, jget(w->d, body, "relation"), "table", PGW_ACCESS_WRITE);
    walk_members(w, body, PGW_ACCESS_READ, "withClause", "relation");
    w->ncte = mark;
}

/* A DDL statement on one relation in field key: written, of the given type;
 * the rest of it (expressions, referenced tables) read. */
static void walk_target(walk_t *w, uint32_t body, const char *key, const char *type)
{
    add_rangevar(w, jget(w->d, body, key), type, PGW_ACCESS_WRITE);
    walk_members(w, body, PGW_ACCESS_READ, key, NULL);
}

static void walk_node(walk_t *w, const char *name, uint32_t body, pgw_access_t acc)
{
    const jdoc_t *d = w->d;
    const node_kind_t *k = sql_node_kind(name);
    const char *type;
    uint32_t i, x;

    switch (k ? k->id : N_OTHER) {
    case N_RANGE_VAR:
        add_rangevar(w, body, "table", acc);
        return;
    case N_FUNC_CALL:
        add_funccall(w, body);
        walk_members(w, body, acc, "funcname", NULL);
        return;
    case N_CALL:
        add_funccall(w, jget(d, body, "funccall"));
        walk_members(w, body, acc, NULL, NULL);
        return;
    case N_SELECT: {
        uint32_t mark = walk_with(w, jget(d, body, "withClause"));

        if ((x = jget(d, body, "intoClause")) != 0)   /* SELECT ... INTO new_table */
            add_rangevar(w, jget(d, x, "rel"), "table", PGW_ACCESS_WRITE);
        walk_members(w, body, PGW_ACCESS_READ, "withClause", "intoClause");
        w->ncte = mark;
        return;
    }
    case N_INSERT:
    case N_UPDATE:
    case N_DELETE:
    case N_MERGE:
        walk_dml(w, body);
        return;
    case N_COPY:
        add_rangevar(w, jget(d, body, "relation"), "table",
                     jbool(d, body, "is_from") ? PGW_ACCESS_WRITE : PGW_ACCESS_READ);
        walk_members(w, body, PGW_ACCESS_READ, "relation", NULL);
        return;
    case N_CREATE:
        walk_target(w, body, "relation", "table");
        return;
    case N_CREATE_FOREIGN_TABLE:
        if ((x = jget(d, body, "base")) != 0)
            walk_target(w, x, "relation", "foreign table");
        return;
    case N_VIEW:
        walk_target(w, body, "view", "view");
        return;
    case N_CTAS:
        x = jget(d, body, "into");
        add_rangevar(w, jget(d, x, "rel"),
                     strcmp(jstr(d, body, "objtype"), "OBJECT_MATVIEW") == 0 ? "materialized view" : "table",
                     PGW_ACCESS_WRITE);
        walk_members(w, body, PGW_ACCESS_READ, "into", NULL);
        return;
    case N_REFRESH_MATVIEW:
        add_rangevar(w, jget(d, body, "relation"), "materialized view", PGW_ACCESS_WRITE);
        return;
    case N_DROP:
        type = relkind_name(jstr(d, body, "removeType"));
        x = jget(d, body, "objects");
        for (i = type && x ? J(d, x)->first : 0; i; i = J(d, i)->next)
            add_name_list(w, i, type, PGW_ACCESS_WRITE, 0);
        return;
    case N_TRUNCATE:
        w->dml_write = 1;
        walk_members(w, body, PGW_ACCESS_WRITE, NULL, NULL);
        return;
    case N_INDEX: {
        uint32_t rel = jget(d, body, "relation");
        const char *idx = jstr(d, body, "idxname");

        add_rangevar(w, rel, "table", PGW_ACCESS_WRITE);
        if (*idx)   /* an index lives in its table's schema */
            add_obj(w, jstr(d, rel, "schemaname"), idx, "index", PGW_ACCESS_WRITE);
        walk_members(w, body, PGW_ACCESS_READ, "relation", NULL);
        return;
    }
    case N_ALTER_TABLE:
        type = relkind_name(jstr(d, body, "objtype"));
        walk_target(w, body, "relation", type ? type : "table");
        return;
    case N_RENAME:
        type = relkind_name(jstr(d, body, "renameType"));
        if (!type)   /* a column, constraint, trigger, rule or policy of it */
            type = relkind_name(jstr(d, body, "relationType"));
        add_rangevar(w, jget(d, body, "relation"), type ? type : "table", PGW_ACCESS_WRITE);
        return;
    case N_ALTER_OBJ_SCHEMA:
    case N_ALTER_OWNER:
        type = relkind_name(jstr(d, body, "objectType"));
        add_rangevar(w, jget(d, body, "relation"), type ? type : "table", PGW_ACCESS_WRITE);
        return;
    case N_ALTER_SEQ:
    case N_CREATE_SEQ:
        add_rangevar(w, jget(d, body, "sequence"), "sequence", PGW_ACCESS_WRITE);
        return;
    case N_GRANT:
        /* privileges change on the relations themselves */
        type = relkind_name(jstr(d, body, "objtype"));
        x = jget(d, body, "objects");
        if (!type || !x || strcmp(jstr(d, body, "targtype"), "ACL_TARGET_OBJECT") != 0)
            return;
        for (i = J(d, x)->first; i; i = J(d, i)->next)
            add_rangevar_node(w, i, type, PGW_ACCESS_WRITE);
        return;
    case N_COMMENT:
        type = relkind_name(jstr(d, body, "objtype"));
        if (type)
            add_name_list(w, jget(d, body, "object"), type, PGW_ACCESS_WRITE, 0);
        else if (strcmp(jstr(d, body, "objtype"), "OBJECT_COLUMN") == 0)
            add_name_list(w, jget(d, body, "object"), "table", PGW_ACCESS_WRITE, 1);
        return;
    case N_EXPLAIN: {
        int saved = w->force_read;

        if (!sql_explain_analyzes(d, body))
            w->force_read = 1;
        walk_value(w, jget(d, body, "query"), acc);
        w->force_read = saved;
        return;
    }
    case N_LOCKING_CLAUSE:
        return;   /* FOR UPDATE OF a: names a relation of the FROM list */
    case N_COMPOSITE_TYPE:
        add_rangevar(w, jget(d, body, "typevar"), "composite type", PGW_ACCESS_WRITE);
        return;
    case N_CLUSTER:
        add_rangevar(w, jget(d, body, "relation"), "table", PGW_ACCESS_WRITE);
        return;
    case N_REINDEX:
        add_rangevar(w, jget(d, body, "relation"),
                     strcmp(jstr(d, body, "kind"), "REINDEX_OBJECT_INDEX") == 0 ? "index" : "table",
                     PGW_ACCESS_WRITE);
        return;
    case N_CREATE_TRIG:
    case N_RULE:
        walk_target(w, body, "relation", "table");
        return;
    case N_CREATE_POLICY:
    case N_ALTER_POLICY:
        walk_target(w, body, "table", "table");
        return;
    default:
        /* LOCK, VACUUM, ANALYZE and the rest: whatever relations they name
         * are read (VACUUM and LOCK change no data) */
        walk_members(w, body, acc, NULL, NULL);
        return;
    }
}

static void walk_value(walk_t *w, uint32_t v, pgw_access_t acc)
{
    const jn_t *n;
    uint32_t i, body;
    const char *name;

    if (!v || w->depth >= WALK_MAX_DEPTH || w->out->oom)
        return;
    n = J(w->d, v);
    if (n->type != J_OBJ && n->type != J_ARR)
        return;
    w->depth++;
    if (n->type == J_ARR) {
        for (i = n->first; i; i = J(w->d, i)->next)
            walk_value(w, i, acc);
    } else if ((name = jnode(w->d, v, &body)) != NULL) {
        walk_node(w, name, body, acc);
    } else if (jget(w->d, v, "relname")) {
        /* a typed RangeVar field (Constraint.pktable, LIKE, INTO, VACUUM,
         * ATTACH PARTITION, ...) that no handler took */
        add_rangevar(w, v, "table", acc);
    } else {
        walk_members(w, v, acc, NULL, NULL);
    }
    w->depth--;
}

int sql_walk(char *json, sql_walk_out_t *out, uint32_t *nstmts)
{
    jdoc_t d;
    walk_t w;
    uint32_t root, stmts, first, stmt = 0;
    int rc = -ENOMEM;

    memset(out, 0, sizeof *out);
    memset(&d, 0, sizeof d);
    memset(&w, 0, sizeof w);
    *nstmts = 0;
    root = json_parse(&d, json);
    if (d.bad)
        goto out;
    stmts = jget(&d, root, "stmts");
    for (first = stmts ? J(&d, stmts)->first : 0; first; first = J(&d, first)->next)
        if ((*nstmts)++ == 0)
            stmt = jget(&d, first, "stmt");
    if (*nstmts != 1) {
        rc = 0;
        goto out;
    }

    w.d = &d;
    w.out = out;
    walk_value(&w, stmt, PGW_ACCESS_READ);
    sql_command_classify(&d, stmt, w.dml_write, out);
    rc = out->oom ? -ENOMEM : 0;
out:
    free(w.cte);
    json_free(&d);
    if (d.bad && !d.oom)
        rc = -EINVAL;
    return rc;
}

void sql_walk_free(sql_walk_out_t *out)
{
    free(out->objs);
    out->objs = NULL;
    out->nobjs = out->cap = 0;
    free(out->fns);
    out->fns = NULL;
    out->nfns = out->fcap = 0;
}
