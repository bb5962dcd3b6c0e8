/* Reading librdkafka's statistics (sinks/kafka_stats.c): two documents
 * captured from librdkafka 2.0.2 (Debian's) producing to a real broker
 * (data/rdkafka-2.0.2-stats-up.json) and to an address nobody listens on
 * (data/rdkafka-2.0.2-stats-unreachable.json), every prefix of them, things
 * that are not statistics, and the totals kept across documents and
 * producer replacements. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "pgwarden/sink.h"

static char *slurp(const char *name, size_t *len)
{
    char path[4096];
    const char *slash = strrchr(__FILE__, '/');
    snprintf(path, sizeof path, "%.*s/data/%s", slash ? (int)(slash - __FILE__) : 1,
             slash ? __FILE__ : ".", name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n)
        exit(1);
    fclose(f);
    buf[n] = '\0';
    *len = (size_t)n;
    return buf;
}

static pgw_kafka_client_stats_t doc, acc, prev;

static void test_captured_up(void)
{
    size_t len;
    char *json = slurp("rdkafka-2.0.2-stats-up.json", &len);
    guard_t g;
    guard_init(&g, len);
    /* Not NUL-terminated: the document ends right before a guard page. */
    const char *p = (const char *)guard_place(&g, json, len);
    char client[64];
    CHECK_EQ(pgw_kafka_rdstats_read(p, len, &doc, client, sizeof client), 0);
    CHECK_STR(client, "pgwarden#producer-1");
    CHECK_EQ(doc.documents, 1);
    CHECK_EQ(doc.queue_messages, 0);
    CHECK_EQ(doc.queue_bytes, 0);
    CHECK_EQ(doc.nbrokers, 1);
    const pgw_kafka_broker_stats_t *b = &doc.brokers[0];
    CHECK_STR(b->name, "127.0.0.1:51779/1");
    CHECK(b->present);
    CHECK(b->up);
    CHECK_EQ(b->rtt_p50_us, 41);
    CHECK_EQ(b->rtt_p99_us, 30207);
    CHECK_EQ(b->rtt_count, 10);
    CHECK_EQ(b->rtt_sum_us, 83206);
    CHECK_EQ(b->tx_errors, 0);
    CHECK_EQ(b->rx_errors, 0);
    CHECK_EQ(b->timeouts, 0);
    CHECK_EQ(b->disconnects, 0);
    CHECK_EQ(b->connects, 1);

    /* Every proper prefix is refused, never read past its end. */
    for (size_t n = 0; n < len; n += (n < 64 || len - n < 64) ? 1 : 37) {
        p = (const char *)guard_place(&g, json, n);
        CHECK(pgw_kafka_rdstats_read(p, n, &doc, NULL, 0) == -EINVAL);
        CHECK_EQ(doc.documents, 0);
    }
    guard_free(&g);
    free(json);
}

static void test_captured_unreachable(void)
{
    size_t len;
    char *json = slurp("rdkafka-2.0.2-stats-unreachable.json", &len);
    CHECK_EQ(pgw_kafka_rdstats_read(json, len, &doc, NULL, 0), 0);
    CHECK_EQ(doc.queue_messages, 2000);
    CHECK_EQ(doc.queue_bytes, 18890);
    /* The configured address is reported (as "/bootstrap") until it answers. */
    CHECK_EQ(doc.nbrokers, 1);
    CHECK_STR(doc.brokers[0].name, "127.0.0.1:1/bootstrap");
    CHECK(!doc.brokers[0].up);
    CHECK_EQ(doc.brokers[0].connects, 11);
    CHECK_EQ(doc.brokers[0].rtt_count, 0);
    CHECK_EQ(doc.brokers[0].rtt_p50_us, -1);      /* no answer: no quantile */
    free(json);
}

static void test_not_statistics(void)
{
    static const char *const bad[] = {
        "", "[]", "null", "42", "{}", "{\"type\":\"consumer\"}", "{\"type\":7}",
        "{\"type\":\"producer\"", "{\"type\":\"producer\"}}", "\xff\xfe",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(pgw_kafka_rdstats_read(bad[i], strlen(bad[i]), &doc, NULL, 0) == -EINVAL);
    /* Odd members are skipped, not trusted. */
    const char *odd =
        "{\"type\":\"producer\",\"msg_cnt\":-5,\"msg_size\":\"x\",\"brokers\":{"
        "\"a\":{\"name\":\"a:1/1\",\"source\":\"learned\",\"state\":\"UP\",\"txerrs\":\"3\","
        "\"rtt\":[1,2]},"
        "\"b\":{\"source\":\"learned\"},"
        "\"c\":{\"name\":\":0/internal\",\"source\":\"internal\",\"state\":\"UP\"},"
        "\"d\":{\"name\":\"TxnCoordinator\",\"source\":\"logical\",\"state\":\"UP\"},"
        "\"e\":7}}";
    CHECK_EQ(pgw_kafka_rdstats_read(odd, strlen(odd), &doc, NULL, 0), 0);
    CHECK_EQ(doc.queue_messages, 0);
    CHECK_EQ(doc.nbrokers, 1);
    CHECK_STR(doc.brokers[0].name, "a:1/1");
    CHECK(doc.brokers[0].up);
    CHECK_EQ(doc.brokers[0].rtt_p50_us, -1);
}

static void make(pgw_kafka_client_stats_t *d, const char *json)
{
    CHECK_EQ(pgw_kafka_rdstats_read(json, strlen(json), d, NULL, 0), 0);
}

#define DOC(state, tx, disc, conn, cnt, sum)                                                   \
    "{\"type\":\"producer\",\"msg_cnt\":3,\"msg_size\":300,\"brokers\":{\"h:1/1\":{"        \
    "\"name\":\"h:1/1\",\"source\":\"configured\",\"state\":\"" state "\","                 \
    "\"txerrs\":" #tx ",\"rxerrs\":0,\"req_timeouts\":0,\"disconnects\":" #disc ","         \
    "\"connects\":" #conn ",\"rtt\":{\"p50\":500,\"p99\":900,\"cnt\":" #cnt ",\"sum\":" #sum "}}}}"

static void test_totals(void)
{
    memset(&acc, 0, sizeof acc);
    make(&doc, DOC("UP", 1, 0, 1, 4, 2000));
    pgw_kafka_rdstats_merge(&acc, NULL, &doc);
    prev = doc;
    make(&doc, DOC("DOWN", 3, 1, 4, 0, 0));
    pgw_kafka_rdstats_merge(&acc, &prev, &doc);
    prev = doc;
    CHECK_EQ(acc.documents, 2);
    CHECK_EQ(acc.nbrokers, 1);
    CHECK(!acc.brokers[0].up);
    CHECK_EQ(acc.brokers[0].tx_errors, 3);
    CHECK_EQ(acc.brokers[0].disconnects, 1);
    CHECK_EQ(acc.brokers[0].connects, 4);
    CHECK_EQ(acc.brokers[0].rtt_count, 4);
    CHECK_EQ(acc.brokers[0].rtt_sum_us, 2000);
    CHECK_EQ(acc.brokers[0].rtt_p50_us, -1);
    CHECK_EQ(acc.queue_messages, 3);

    /* A replaced producer starts from zero: nothing goes backwards. */
    make(&doc, DOC("UP", 1, 0, 1, 2, 700));
    pgw_kafka_rdstats_merge(&acc, NULL, &doc);
    prev = doc;
    CHECK_EQ(acc.brokers[0].tx_errors, 4);
    CHECK_EQ(acc.brokers[0].connects, 5);
    CHECK_EQ(acc.brokers[0].rtt_count, 6);
    CHECK_EQ(acc.brokers[0].rtt_sum_us, 2700);
    CHECK_EQ(acc.brokers[0].rtt_p50_us, 500);
    CHECK(acc.brokers[0].up);
    /* A counter that drops within one client (never seen, but cheap to
     * survive) counts from zero. */
    make(&doc, DOC("UP", 0, 0, 1, 0, 0));
    pgw_kafka_rdstats_merge(&acc, &prev, &doc);
    CHECK_EQ(acc.brokers[0].tx_errors, 4);

    /* A broker gone from the documents keeps its counters, is not present. */
    const char *other = "{\"type\":\"producer\",\"brokers\":{\"x\":{\"name\":\"k:2/2\","
                        "\"source\":\"learned\",\"state\":\"UP\",\"txerrs\":2}}}";
    make(&doc, other);
    pgw_kafka_rdstats_merge(&acc, NULL, &doc);
    CHECK_EQ(acc.nbrokers, 2);
    CHECK(!acc.brokers[0].present);
    CHECK_EQ(acc.brokers[0].tx_errors, 4);
    CHECK(acc.brokers[1].present && acc.brokers[1].up);
    CHECK_EQ(acc.brokers[1].tx_errors, 2);
}

int main(void)
{
    test_captured_up();
    test_captured_unreachable();
    test_not_statistics();
    test_totals();
    CHECK_DONE();
}
