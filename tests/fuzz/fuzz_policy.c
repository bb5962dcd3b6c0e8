/* libFuzzer target: the access policy's rules file (pgw_policy_parse) and
 * its matchers.
 *
 * The input is the file's text. The parser must never crash: it returns a
 * policy, or NULL with "NAME:LINE: reason" in err. A parsed policy is then
 * asked about a few fixed identities (IPv4, IPv6, unix socket, with and
 * without a certificate) and a few analysed statements, which must not
 * crash either and must name a rule of the policy when they refuse. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgwarden/analysis.h"
#include "policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const sqls[] = {
    "SELECT * FROM hr.salaries", "DROP TABLE public.t", "UPDATE t SET a = 1",
    "COPY t TO PROGRAM 'x'", "INSERT INTO ledger VALUES (1); TRUNCATE x", "GRANT r TO u",
    "SELECT pg_catalog.pg_read_file('x'), lower(n) FROM s.t, dblink.dblink('c', 'q') AS d(n text)",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static pgw_analysis_t an[sizeof sqls / sizeof sqls[0]];
    static int ready;
    if (!ready) {
        for (size_t i = 0; i < sizeof sqls / sizeof sqls[0]; i++) {
            pgw_analysis_init(&an[i]);
            if (pgw_analysis_parse(sqls[i], strlen(sqls[i]), &an[i]))
                abort();
        }
        ready = 1;
    }
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    char err[512] = "";
    pgw_policy_t *p = pgw_policy_parse("fuzz.conf", text, err, sizeof err);
    free(text);
    if (!p) {
        if (strncmp(err, "fuzz.conf", 9) != 0)
            abort();
        return 0;
    }
    struct sockaddr_in in4 = { .sin_family = AF_INET };
    struct sockaddr_in6 in6 = { .sin6_family = AF_INET6 };
    inet_pton(AF_INET, "10.1.2.3", &in4.sin_addr);
    inet_pton(AF_INET6, "::ffff:127.0.0.1", &in6.sin6_addr);
    const struct sockaddr *addrs[] = { (const struct sockaddr *)&in4, (const struct sockaddr *)&in6, NULL };
    const char *users[] = { "app", "alice", "report" };
    for (int a = 0; a < 3; a++) {
        pgw_policy_ident_t id = { .listener = "127.0.0.1:6432", .addr = addrs[a], .tls = a & 1,
                                  .has_cert = a == 1, .cn = "alice", .issuer = "CN=CA",
                                  .user = users[a], .database = "postgres" };
        pgw_policy_conn_t c;
        pgw_policy_connect(p, &id, &c);
        if (c.refused && (!c.rule || !c.sqlstate || !c.message[0]))
            abort();
        if (c.user_slot)
            pgw_policy_release_user(id.user);
        uint32_t *rules = NULL;
        int n = pgw_policy_session_rules(p, &id, &rules);
        if (n < 0 || (unsigned)n > pgw_policy_nrules(p))
            abort();
        for (size_t i = 0; i < sizeof sqls / sizeof sqls[0]; i++) {
            pgw_policy_verdict_t v;
            memset(&v, 0, sizeof v);
            for (uint32_t k = 0; k < an[i].count && !v.deny; k++)
                pgw_policy_statement(p, rules, (unsigned)n, pgw_analysis_stmt(&an[i], k)->info, &v);
            if (v.deny && (!pgw_policy_rule_name(v.deny)[0] || !strstr(v.message, pgw_policy_rule_name(v.deny))))
                abort();
        }
        free(rules);
    }
    pgw_policy_unref(p);
    return 0;
}
