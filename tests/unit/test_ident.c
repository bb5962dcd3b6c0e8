/* The identity map (pg_ident.conf format): parsing, plain and regex lines,
 * \1 substitution, and the errors a bad file gets. */
#include "check.h"
#include "ident.h"

static pgw_ident_map_t *parse(const char *text)
{
    pgw_ident_map_t *m = NULL;
    char err[256];
    if (pgw_ident_map_parse("test", text, &m, err, sizeof err)) {
        fprintf(stderr, "unexpected parse error: %s\n", err);
        return NULL;
    }
    return m;
}

static int parse_fails(const char *text, const char *want)
{
    pgw_ident_map_t *m = NULL;
    char err[256] = "";
    int rc = pgw_ident_map_parse("test", text, &m, err, sizeof err);
    pgw_ident_map_free(m);
    return rc == -1 && strstr(err, want) != NULL;
}

int main(void)
{
    pgw_ident_map_t *m = parse("# MAPNAME SYSTEM-USERNAME PG-USERNAME\n"
                               "\n"
                               "certs   alice   bob      # a comment\n"
                               "certs\t\"/^(.*)@example\\.com$\"\t\\1\r\n"
                               "certs  /^admin-(.*)$  ops_\\1_role\n"
                               "other  \"with space\"  \"quoted \"\"user\"\"\"\n"
                               "certs  /^svc-.*$  service");
    CHECK(m != NULL);
    CHECK(pgw_ident_map_allows(m, "alice", "bob"));
    CHECK(!pgw_ident_map_allows(m, "alice", "alice"));      /* the map alone decides */
    CHECK(!pgw_ident_map_allows(m, "bob", "alice"));
    CHECK(pgw_ident_map_allows(m, "carol@example.com", "carol"));
    CHECK(!pgw_ident_map_allows(m, "carol@example.com", "carol@example.com"));
    CHECK(!pgw_ident_map_allows(m, "carol@example.org", "carol"));
    CHECK(!pgw_ident_map_allows(m, "carol@exampleXcom", "carol"));
    CHECK(pgw_ident_map_allows(m, "admin-db", "ops_db_role"));
    CHECK(!pgw_ident_map_allows(m, "admin-db", "ops_\\1_role"));
    CHECK(pgw_ident_map_allows(m, "with space", "quoted \"user\""));
    CHECK(pgw_ident_map_allows(m, "svc-x", "service"));     /* a regex without a group */
    CHECK(!pgw_ident_map_allows(m, "", ""));
    pgw_ident_map_free(m);

    m = parse("");
    CHECK(m != NULL && !pgw_ident_map_allows(m, "alice", "alice"));
    pgw_ident_map_free(m);
    CHECK(!pgw_ident_map_allows(NULL, "alice", "alice"));

    CHECK(parse_fails("certs alice\n", "test:1: expected"));
    CHECK(parse_fails("\ncerts alice bob extra\n", "test:2: expected"));
    CHECK(parse_fails("certs /^(unclosed$ x\n", "invalid regular expression"));
    CHECK(parse_fails("certs alice \\1\n", "needs a regular expression"));
    CHECK(parse_fails("certs \"alice bob\n", "expected"));

    char err[256];
    CHECK(pgw_ident_map_load("/nonexistent/ident.conf", &m, err, sizeof err) == -1);
    CHECK(strstr(err, "No such file") != NULL);
    CHECK_DONE();
}
