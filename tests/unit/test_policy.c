/* The access policy's rules file and matchers: parsing and its errors
 * (file and line), connection rules (order, CIDR over IPv4, IPv6 and
 * IPv4-mapped addresses, TLS, certificate, groups, max-sessions), and
 * statement rules over real SQL analyses (class, command, relation, read-only,
 * UPDATE/DELETE without WHERE, COPY PROGRAM, allow, dry-run). */
#include <arpa/inet.h>
#include <netinet/in.h>

#include "check.h"
#include "ident.h"
#include "pgwarden/analysis.h"
#include "policy.h"

static pgw_policy_t *parse(const char *text)
{
    char err[512] = "";
    pgw_policy_t *p = pgw_policy_parse("rules.conf", text, err, sizeof err);
    if (!p)
        fprintf(stderr, "unexpected parse error: %s\n", err);
    return p;
}

static int parse_fails(const char *text, const char *want)
{
    char err[512] = "";
    pgw_policy_t *p = pgw_policy_parse("rules.conf", text, err, sizeof err);
    pgw_policy_unref(p);
    if (p || !strstr(err, want))
        fprintf(stderr, "for %s: got \"%s\", wanted \"%s\"\n", text, err, want);
    return !p && strstr(err, want) != NULL;
}

static struct sockaddr_storage ss4(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    in->sin_family = AF_INET;
    inet_pton(AF_INET, ip, &in->sin_addr);
    return ss;
}

static struct sockaddr_storage ss6(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in6 *in = (struct sockaddr_in6 *)&ss;
    in->sin6_family = AF_INET6;
    inet_pton(AF_INET6, ip, &in->sin6_addr);
    return ss;
}

static pgw_policy_ident_t ident(const char *user, const struct sockaddr_storage *addr)
{
    pgw_policy_ident_t id;
    memset(&id, 0, sizeof id);
    id.listener = "127.0.0.1:6432";
    id.addr = addr ? (const struct sockaddr *)addr : NULL;
    id.user = user;
    id.database = "postgres";
    id.cn = id.issuer = "";
    return id;
}

/* The rule that decides the connection ("" when allowed by default), or
 * "refused:RULE". Releases the user slot at once. */
static const char *conn(const pgw_policy_t *p, const pgw_policy_ident_t *id)
{
    static char out[128];
    pgw_policy_conn_t c;
    pgw_policy_connect(p, id, &c);
    if (c.user_slot)
        pgw_policy_release_user(id->user);
    snprintf(out, sizeof out, "%s%s", c.refused ? "refused:" : "", c.rule ? pgw_policy_rule_name(c.rule) : "");
    return out;
}

/* The rule refusing sql for identity id ("" when allowed). */
static const char *stmt(const pgw_policy_t *p, const pgw_policy_ident_t *id, const char *sql,
                        pgw_policy_verdict_t *vout)
{
    static char out[128];
    uint32_t *rules = NULL;
    int n = pgw_policy_session_rules(p, id, &rules);
    pgw_analysis_t an;
    pgw_analysis_init(&an);
    if (pgw_analysis_parse(sql, strlen(sql), &an)) {
        free(rules);
        return "parse failed";
    }
    pgw_policy_verdict_t v;
    memset(&v, 0, sizeof v);
    for (uint32_t i = 0; i < an.count && !v.deny; i++)
        pgw_policy_statement(p, rules, (unsigned)(n > 0 ? n : 0), pgw_analysis_stmt(&an, i)->info, &v);
    snprintf(out, sizeof out, "%s", v.deny ? pgw_policy_rule_name(v.deny) : "");
    if (vout)
        *vout = v;
    pgw_analysis_clear(&an);
    free(rules);
    return out;
}

static void test_parse_errors(void)
{
    CHECK(parse_fails("connection forbid\n", "rules.conf:1: connection rule: expected"));
    CHECK(parse_fails("\n# c\nstatement deny nope\n", "rules.conf:3: expected KEY=VALUE"));
    CHECK(parse_fails("statement deny class=EVERYTHING\n", "class \"EVERYTHING\""));
    CHECK(parse_fails("connection deny address=10.0.0.0/33\n", "prefix length"));
    CHECK(parse_fails("connection deny address=10.0.0.0/\n", "prefix length"));
    CHECK(parse_fails("connection deny address=example.com\n", "IPv4 or IPv6"));
    CHECK(parse_fails("connection deny command=DROP\n", "statement rules only"));
    CHECK(parse_fails("statement deny relation=a.b:exec\n", ":read or :write"));
    CHECK(parse_fails("statement deny relation=*\n", "needs a schema"));
    CHECK(parse_fails("statement deny relation=a.b.c\n", "expected [SCHEMA.]TABLE"));
    CHECK(parse_fails("statement deny function=a.b.c\n", "function \"a.b.c\": expected [SCHEMA.]FUNCTION"));
    CHECK(parse_fails("statement deny function=pg_read_file()\n", "expected [SCHEMA.]FUNCTION"));
    CHECK(parse_fails("statement deny function=*\n", "function \"*\": a wildcard needs a schema"));
    CHECK(parse_fails("connection deny function=f\n", "statement rules only"));
    CHECK(parse_fails("statement deny name=\"two words\"\n", "name \"two words\""));
    CHECK(parse_fails("statement deny user=\"open\n", "quote not closed"));
    CHECK(parse_fails("statement deny user=a, b\n", "user: empty value"));
    CHECK(parse_fails("statement deny color=red\n", "unknown field \"color\""));
    CHECK(parse_fails("connection max-sessions user=a\n", "max-sessions=N"));
    CHECK(parse_fails("connection allow=3\n", "takes no value"));
    CHECK(parse_fails("group g a\ngroup g b\n", "rules.conf:2: group \"g\" is defined twice"));
    CHECK(parse_fails("statement deny name=x\nconnection deny name=x\n", "two rules are named \"x\""));
    CHECK(parse_fails("policy deny\n", "expected connection, statement or group"));
    CHECK(parse_fails("statement deny tls=maybe\n", "expected yes or no"));

    pgw_policy_t *p = parse("# nothing but comments\n\n   # and blanks\r\n");
    CHECK(p && pgw_policy_nrules(p) == 0);
    pgw_policy_unref(p);
    char err[256];
    CHECK(pgw_policy_load("/nonexistent/rules.conf", err, sizeof err) == NULL);
    CHECK(strstr(err, "/nonexistent/rules.conf") != NULL);
}

static void test_connections(void)
{
    pgw_policy_t *p = parse("group admins alice, bob\n"
                            "connection allow name=admins_in user=+admins\n"
                            "connection deny name=no_net address=10.0.0.0/8,fd00::/8 # private nets\n"
                            "connection require-tls name=tls_remote address=0.0.0.0/0,::/0\n"
                            "connection require-cert name=cert_ops user=ops\n"
                            "connection deny name=ops_cn user=ops cn=\"ops robot\" issuer=\"CN=Ops CA\"\n"
                            "connection deny name=local_only_db database=secret address=!nothing-here\n");
    CHECK(p == NULL);   /* "!" negation is not a feature */
    p = parse("group admins alice, bob\n"
              "connection allow name=admins_in user=+admins\n"
              "connection deny name=no_net address=10.0.0.0/8,fd00::/8 # private nets\n"
              "connection require-tls name=tls_remote address=0.0.0.0/0,::/0\n"
              "connection require-cert name=cert_ops user=ops\n"
              "connection deny name=ops_cn user=ops cn=\"ops robot\" issuer=\"CN=Ops CA\"\n"
              "connection deny name=unix_db database=secret address=local\n"
              "connection deny name=on_other_listener listener=/run/pg\n"
              "connection max-sessions=2 name=two user=carol\n"
              "connection max-sessions=1 name=dry_one user=carol dry-run\n");
    CHECK(p != NULL);
    if (!p)
        return;
    struct sockaddr_storage a10 = ss4("10.1.2.3"), a127 = ss4("127.0.0.1"), v6 = ss6("fd00::1"),
                            loop6 = ss6("::1"), mapped = ss6("::ffff:10.9.9.9");
    pgw_policy_ident_t id = ident("alice", &a10);
    CHECK(strcmp(conn(p, &id), "admins_in") == 0);          /* first match wins */
    id = ident("dave", &a10);
    CHECK(strcmp(conn(p, &id), "refused:no_net") == 0);
    id = ident("dave", &v6);
    CHECK(strcmp(conn(p, &id), "refused:no_net") == 0);
    id = ident("dave", &mapped);
    CHECK(strcmp(conn(p, &id), "refused:no_net") == 0);     /* IPv4 on a dual-stack socket */
    id = ident("dave", &a127);
    CHECK(strcmp(conn(p, &id), "refused:tls_remote") == 0);
    id.tls = 1;
    CHECK(strcmp(conn(p, &id), "") == 0);                   /* requirement met: allowed by default */
    id = ident("dave", &loop6);
    id.tls = 1;
    CHECK(strcmp(conn(p, &id), "") == 0);
    id = ident("ops", NULL);                                /* unix socket: no address rule matches */
    CHECK(strcmp(conn(p, &id), "refused:cert_ops") == 0);
    id.has_cert = 1;
    id.cn = "ops robot";
    id.issuer = "CN=Other CA";
    CHECK(strcmp(conn(p, &id), "") == 0);
    id.issuer = "CN=Ops CA";
    CHECK(strcmp(conn(p, &id), "refused:ops_cn") == 0);
    id = ident("dave", NULL);
    id.database = "secret";
    CHECK(strcmp(conn(p, &id), "refused:unix_db") == 0);
    id = ident("dave", NULL);
    id.listener = "/run/pg";
    CHECK(strcmp(conn(p, &id), "refused:on_other_listener") == 0);

    /* max-sessions: counted per user across sessions, released at the end */
    id = ident("carol", NULL);
    pgw_policy_conn_t c1, c2, c3;
    pgw_policy_connect(p, &id, &c1);
    CHECK(!c1.refused && c1.user_slot && c1.ndry == 0);
    pgw_policy_connect(p, &id, &c2);
    CHECK(!c2.refused && c2.user_slot);
    CHECK(c2.ndry == 1 && strcmp(pgw_policy_rule_name(c2.dry[0]), "dry_one") == 0);  /* recorded only */
    pgw_policy_connect(p, &id, &c3);
    CHECK(c3.refused && strcmp(c3.sqlstate, "53300") == 0 && !c3.user_slot);
    CHECK(strstr(c3.message, "\"two\" allows 2") != NULL);
    pgw_policy_release_user("carol");
    pgw_policy_connect(p, &id, &c3);
    CHECK(!c3.refused && c3.user_slot);
    pgw_policy_release_user("carol");
    pgw_policy_release_user("carol");
    pgw_policy_unref(p);

    /* groups from the identity map: its map names */
    pgw_ident_map_t *map = NULL;
    char err[256];
    CHECK(pgw_ident_map_parse("map", "ops /^(.*)@ops$ \\1\nstaff dave dave\n", &map, err, sizeof err) == 0);
    p = parse("connection deny name=ops_only_from_lan user=+ops address=::/0,0.0.0.0/0\n");
    id = ident("eve", &a127);
    id.map = map;
    CHECK(strcmp(conn(p, &id), "") == 0);                   /* no certificate: not in the group */
    id.has_cert = 1;
    id.cn = "eve@ops";
    CHECK(strcmp(conn(p, &id), "refused:ops_only_from_lan") == 0);
    id.user = "dave";
    id.cn = "dave";
    CHECK(strcmp(conn(p, &id), "") == 0);                   /* mapped by "staff", not "ops" */
    pgw_policy_unref(p);
    pgw_ident_map_free(map);
}

static void test_statements(void)
{
    pgw_policy_t *p = parse("group admins root\n"
                            "statement allow name=admins user=+admins\n"
                            "statement deny name=no_drop command=\"DROP TABLE\",TRUNCATE\n"
                            "statement deny name=no_program command=\"COPY TO PROGRAM\",\"COPY FROM PROGRAM\"\n"
                            "statement deny name=no_alter_system command=\"alter system\"\n"
                            "statement deny name=hr relation=hr.*,public.salaries:read\n"
                            "statement deny name=ledger relation=ledger:write\n"
                            "statement require-where name=where_guard\n"
                            "statement read-only name=ro user=report\n"
                            "statement deny name=no_ddl class=DDL,ROLE user=app\n"
                            "statement deny name=dry_select class=READ user=watched dry-run\n"
                            "connection deny name=conn_rule user=nobody\n");
    CHECK(p != NULL);
    if (!p)
        return;
    pgw_policy_ident_t app = ident("app", NULL), report = ident("report", NULL), root = ident("root", NULL),
                       watched = ident("watched", NULL);
    uint32_t *rules = NULL;
    CHECK(pgw_policy_session_rules(p, &app, &rules) == 7);  /* not report's, watched's, admins' */
    free(rules);
    CHECK(strcmp(stmt(p, &app, "DROP TABLE x", NULL), "no_drop") == 0);
    CHECK(strcmp(stmt(p, &app, "TRUNCATE x", NULL), "no_drop") == 0);   /* TRUNCATE TABLE */
    CHECK(strcmp(stmt(p, &app, "DROP VIEW v", NULL), "no_ddl") == 0);
    CHECK(strcmp(stmt(p, &report, "DROP VIEW v", NULL), "ro") == 0);
    CHECK(strcmp(stmt(p, &root, "DROP TABLE x", NULL), "") == 0);       /* allow first */
    CHECK(strcmp(stmt(p, &report, "COPY t TO PROGRAM 'gzip > /tmp/x'", NULL), "no_program") == 0);
    CHECK(strcmp(stmt(p, &report, "COPY t FROM PROGRAM 'cat'", NULL), "no_program") == 0);
    CHECK(strcmp(stmt(p, &report, "COPY t TO STDOUT", NULL), "") == 0);
    CHECK(strcmp(stmt(p, &report, "ALTER SYSTEM SET work_mem = '1GB'", NULL), "no_alter_system") == 0);
    CHECK(strcmp(stmt(p, &report, "SELECT * FROM hr.people", NULL), "hr") == 0);
    CHECK(strcmp(stmt(p, &report, "SELECT * FROM salaries", NULL), "hr") == 0);  /* unqualified: by name */
    CHECK(strcmp(stmt(p, &report, "SELECT * FROM other.salaries", NULL), "") == 0);
    CHECK(strcmp(stmt(p, &app, "INSERT INTO ledger VALUES (1)", NULL), "ledger") == 0);
    CHECK(strcmp(stmt(p, &app, "INSERT INTO acct.ledger SELECT 1", NULL), "ledger") == 0);
    CHECK(strcmp(stmt(p, &app, "SELECT * FROM ledger", NULL), "") == 0);
    CHECK(strcmp(stmt(p, &app, "UPDATE t SET a = 1", NULL), "where_guard") == 0);
    CHECK(strcmp(stmt(p, &app, "DELETE FROM t", NULL), "where_guard") == 0);
    CHECK(strcmp(stmt(p, &app, "DELETE FROM t WHERE a = 1", NULL), "") == 0);
    CHECK(strcmp(stmt(p, &app, "UPDATE t SET a = 1 WHERE CURRENT OF c", NULL), "") == 0);
    CHECK(strcmp(stmt(p, &report, "INSERT INTO t VALUES (1)", NULL), "ro") == 0);
    CHECK(strcmp(stmt(p, &report, "WITH d AS (DELETE FROM t WHERE a = 1 RETURNING *) SELECT * FROM d", NULL),
                 "ro") == 0);
    CHECK(strcmp(stmt(p, &report, "DO $$BEGIN NULL; END$$", NULL), "ro") == 0);
    CHECK(strcmp(stmt(p, &report, "SELECT 1; BEGIN; SHOW work_mem", NULL), "") == 0);
    CHECK(strcmp(stmt(p, &app, "SELECT 1; DROP TABLE x; SELECT 2", NULL), "no_drop") == 0);
    CHECK(strcmp(stmt(p, &app, "SELEKT nonsense", NULL), "") == 0);    /* the server refuses it */
    pgw_policy_verdict_t v;
    CHECK(strcmp(stmt(p, &watched, "SELECT 1", &v), "") == 0);
    CHECK(v.ndry == 1 && strcmp(pgw_policy_rule_name(v.dry[0]), "dry_select") == 0 &&
          pgw_policy_rule_dry_run(v.dry[0]));
    CHECK(strcmp(stmt(p, &watched, "DROP TABLE x", &v), "no_drop") == 0);
    CHECK(strstr(v.message, "rule \"no_drop\"") != NULL);
    pgw_policy_unref(p);

    /* function=: the functions a statement calls by name */
    p = parse("statement deny name=files function=pg_catalog.pg_read_file,pg_ls_dir,lo_export\n"
              "statement deny name=ext function=dblink.*\n"
              "statement deny name=cat_in_ledger function=pg_catalog.* relation=ledger\n"
              "statement deny name=sleepy_ddl function=pg_sleep class=DDL\n");
    CHECK(p != NULL);
    pgw_policy_ident_t u = ident("u", NULL);
    CHECK(strcmp(stmt(p, &u, "SELECT pg_read_file('/etc/passwd')", &v), "files") == 0);
    CHECK(strstr(v.message, "rule \"files\": SELECT calls pg_read_file") != NULL);
    CHECK(strcmp(stmt(p, &u, "SELECT pg_catalog.pg_read_file('x')", NULL), "files") == 0);
    CHECK(strcmp(stmt(p, &u, "SELECT mine.pg_read_file('x')", NULL), "") == 0);  /* another schema */
    CHECK(strcmp(stmt(p, &u, "SELECT * FROM pg_ls_dir('.') d", NULL), "files") == 0);
    CHECK(strcmp(stmt(p, &u, "SELECT x FROM t WHERE y IN (SELECT lo_export(1, '/tmp/x'))", NULL), "files") == 0);
    CHECK(strcmp(stmt(p, &u, "WITH a AS (SELECT upper(lower(pg_ls_dir('/')))) SELECT * FROM a", NULL),
                 "files") == 0);
    CHECK(strcmp(stmt(p, &u, "CALL pg_ls_dir()", NULL), "files") == 0);
    CHECK(strcmp(stmt(p, &u, "SELECT 'pg_read_file(1)', pg_read_filex(1)", NULL), "") == 0);
    CHECK(strcmp(stmt(p, &u, "SELECT dblink.dblink_exec('x', 'y')", NULL), "ext") == 0);
    CHECK(strcmp(stmt(p, &u, "SELECT dblink_exec('x', 'y')", NULL), "") == 0);   /* resolves elsewhere */
    /* SCHEMA.* takes an unqualified call for pg_catalog's or public's */
    CHECK(strcmp(stmt(p, &u, "UPDATE ledger SET a = now() WHERE id = 1", &v), "cat_in_ledger") == 0);
    CHECK(strstr(v.message, "UPDATE calls now") != NULL);
    CHECK(strcmp(stmt(p, &u, "UPDATE ledger SET a = 1 WHERE id = 1", NULL), "") == 0);
    CHECK(strcmp(stmt(p, &u, "UPDATE ledger SET a = x.f() WHERE id = 1", NULL), "") == 0);
    CHECK(strcmp(stmt(p, &u, "SELECT pg_sleep(1)", NULL), "") == 0);       /* not DDL */
    CHECK(strcmp(stmt(p, &u, "CREATE INDEX ON t ((pg_sleep(1) IS NULL))", NULL), "sleepy_ddl") == 0);
    pgw_policy_unref(p);

    /* a rule without a name is named by its file and line */
    p = parse("\n\nstatement deny command=VACUUM\n");
    pgw_policy_ident_t any = ident("x", NULL);
    CHECK(p && strcmp(stmt(p, &any, "VACUUM", NULL), "rules.conf:3") == 0);
    pgw_policy_unref(p);
}

static void test_published(void)
{
    unsigned g0 = pgw_policy_generation(), g;
    pgw_policy_t *p = parse("statement deny command=VACUUM\n");
    pgw_policy_publish(p);
    CHECK(pgw_policy_generation() == g0 + 1);
    pgw_policy_t *cur = pgw_policy_current(&g);
    CHECK(cur == p && g == g0 + 1);
    pgw_policy_publish(NULL);                 /* the reader still holds its reference */
    CHECK(pgw_policy_nrules(cur) == 1);
    pgw_policy_unref(cur);
    CHECK(pgw_policy_current(NULL) == NULL);
}

int main(void)
{
    test_parse_errors();
    test_connections();
    test_statements();
    test_published();
    CHECK_DONE();
}
