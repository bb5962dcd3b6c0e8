/* The Kafka sink (sinks/kafka_sink.c) against librdkafka's mock cluster:
 * delivery and segment deletion, a fatal idempotence error in the middle of
 * a stream (the producer is replaced, nothing is lost), events left in the
 * spool by a run that could not reach Kafka, sent by the next, and one too
 * large for the next run's producer. */
#include <dirent.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "pgwarden/sink.h"

static char g_dir[] = "/tmp/pgw-kafka-test-XXXXXX";

static int count_segments(void)
{
    DIR *d = opendir(g_dir);
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL)
        n += strstr(de->d_name, ".seg") != NULL;
    if (d)
        closedir(d);
    return n;
}

static void submit_range(pgw_sink_t *s, int from, int to)
{
    for (int i = from; i < to; i++) {
        char line[96], key[40];
        int n = snprintf(line, sizeof line, "{\"n\":%d}\n", i);
        int k = snprintf(key, sizeof key, "session-%d", i % 7);
        CHECK_EQ(pgw_sink_submit(s, line, (size_t)n, pgw_str(key, (size_t)k)), 0);
    }
}

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };
    nanosleep(&ts, NULL);
}

/* Reads the topic back: marks each {"n":i} seen, returns the message count. */
static int consume_all(const char *bootstraps, const char *topic, int expect, unsigned char *seen)
{
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", bootstraps, err, sizeof err);
    rd_kafka_conf_set(conf, "group.id", "test-reader", err, sizeof err);
    rd_kafka_conf_set(conf, "auto.offset.reset", "earliest", err, sizeof err);
    rd_kafka_t *c = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    CHECK(c != NULL);
    if (!c)
        return 0;
    rd_kafka_poll_set_consumer(c);
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(2);
    rd_kafka_topic_partition_list_add(parts, topic, 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_topic_partition_list_add(parts, topic, 1)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(c, parts);
    rd_kafka_topic_partition_list_destroy(parts);
    int got = 0, idle = 0;
    while (idle < 30 && (got < expect || idle < 5)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c, 100);
        if (!m) {
            idle++;
            continue;
        }
        if (!m->err) {
            int n;
            if (sscanf((const char *)m->payload, "{\"n\":%d}", &n) == 1 && n >= 0 && n < expect)
                seen[n] = 1;
            got++;
            idle = 0;
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_consumer_close(c);
    rd_kafka_destroy(c);
    return got;
}

int main(void)
{
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    char err[256];
    rd_kafka_conf_t *mconf = rd_kafka_conf_new();
    rd_kafka_t *mrk = rd_kafka_new(RD_KAFKA_PRODUCER, mconf, err, sizeof err);
    CHECK(mrk != NULL);
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(mrk, 1);
    CHECK(mc != NULL);
    const char *boot = rd_kafka_mock_cluster_bootstraps(mc);
    CHECK_EQ(rd_kafka_mock_topic_create(mc, "audit", 2, 1), 0);

    enum { N = 3000, M = 3000, K = 500 };
    static unsigned char seen[N + M + K + 10];

    /* 1. Delivery; then a fatal error mid-stream. */
    const char *props[] = { "linger.ms=1", "statistics.interval.ms=100" };
    pgw_kafka_sink_config_t cfg = {
        .brokers = boot, .topic = "audit", .props = props, .nprops = 2, .spool_dir = g_dir,
        .observer_host = "test", .observer_instance = "00000000-0000-0000-0000-000000000000",
    };
    pgw_sink_t *s = NULL;
    CHECK_EQ(pgw_kafka_sink_open(&cfg, &s), 0);
    if (!s)
        return 1;
    CHECK(s->durable);
    submit_range(s, 0, N);
    CHECK_EQ(pgw_sink_flush(s, 20000), 0);
    pgw_kafka_stats_t st;
    pgw_kafka_sink_stats(s, &st);
    CHECK_EQ(st.delivered, N);
    CHECK_EQ(st.outstanding, 0);
    CHECK_EQ(st.oldest_unacked_us, 0);
    /* librdkafka's statistics reach the sink's totals. */
    static pgw_kafka_client_stats_t cs;
    for (int i = 0; i < 100; i++) {
        pgw_kafka_sink_client_stats(s, &cs);
        if (cs.documents >= 2 && cs.nbrokers >= 1 && cs.brokers[0].rtt_count > 0)
            break;
        sleep_ms(50);
    }
    CHECK(cs.documents >= 2);
    CHECK_EQ(cs.nbrokers, 1);
    CHECK(cs.brokers[0].up);
    CHECK(cs.brokers[0].connects >= 1);
    CHECK(cs.brokers[0].rtt_count > 0);
    CHECK(cs.brokers[0].rtt_sum_us > 0);

    submit_range(s, N, N + M / 2);
    CHECK_EQ(pgw_kafka_sink_inject_fatal(s), 0);
    submit_range(s, N + M / 2, N + M);
    for (int i = 0; i < 200; i++) {
        pgw_kafka_sink_stats(s, &st);
        if (st.producer_restarts)
            break;
        sleep_ms(50);
    }
    CHECK_EQ(pgw_sink_flush(s, 30000), 0);
    pgw_kafka_sink_stats(s, &st);
    CHECK_EQ(st.producer_restarts, 1);
    CHECK(st.delivered >= N + M);
    CHECK_EQ(st.outstanding, 0);
    CHECK_EQ(st.oldest_unacked_us, 0);   /* resent events released their spans too */
    pgw_sink_close(s);
    CHECK_EQ(count_segments(), 0);

    /* 2. No broker: the events wait in the spool; the next run sends them. */
    cfg.brokers = "127.0.0.1:1";
    cfg.close_timeout_ms = 300;             /* nothing can be acknowledged */
    CHECK_EQ(pgw_kafka_sink_open(&cfg, &s), 0);
    submit_range(s, N + M, N + M + K);
    CHECK(pgw_sink_flush(s, 300) != 0);
    sleep_ms(1000);
    pgw_kafka_sink_stats(s, &st);
    CHECK(st.oldest_unacked_us >= 1000000);
    CHECK(st.oldest_unacked_us < 60000000);
    pgw_kafka_sink_client_stats(s, &cs);
    CHECK(cs.documents >= 1);
    CHECK_EQ(cs.nbrokers, 1);
    CHECK_STR(cs.brokers[0].name, "127.0.0.1:1/bootstrap");
    CHECK(!cs.brokers[0].up);
    CHECK(cs.brokers[0].connects >= 1);
    CHECK(cs.queue_messages > 0);
    pgw_sink_close(s);
    CHECK(count_segments() > 0);

    /* Replayed, still unreachable: the events are as old as their segments. */
    CHECK_EQ(pgw_kafka_sink_open(&cfg, &s), 0);
    pgw_kafka_sink_stats(s, &st);
    CHECK_EQ(st.replayed, K);
    CHECK(st.oldest_unacked_us >= 1000000);
    pgw_sink_close(s);

    cfg.brokers = boot;
    cfg.close_timeout_ms = 0;
    CHECK_EQ(pgw_kafka_sink_open(&cfg, &s), 0);
    CHECK_EQ(pgw_sink_flush(s, 20000), 0);
    pgw_kafka_sink_stats(s, &st);
    CHECK_EQ(st.oldest_unacked_us, 0);
    pgw_kafka_sink_stats(s, &st);
    CHECK_EQ(st.replayed, K);
    CHECK_EQ(st.delivered, K);
    pgw_sink_close(s);
    CHECK_EQ(count_segments(), 0);

    /* 3. An event spooled under a larger message.max.bytes than the next
     * run's: librdkafka refuses it for good, so it is given up (counted
     * lost) instead of sent again for ever, holding its segment and the
     * close. The sink's largest event follows message.max.bytes. */
    cfg.brokers = "127.0.0.1:1";
    cfg.close_timeout_ms = 300;
    CHECK_EQ(pgw_kafka_sink_open(&cfg, &s), 0);
    static char big[5000];
    memset(big, 'b', sizeof big);
    memcpy(big, "{\"n\":-1,\"pad\":\"", 15);
    memcpy(big + sizeof big - 3, "\"}\n", 3);
    CHECK_EQ(pgw_sink_submit(s, big, sizeof big, PGW_STR_LIT("session-big")), 0);
    submit_range(s, N + M + K, N + M + K + 10);
    pgw_sink_close(s);
    CHECK(count_segments() > 0);
    const char *small_props[] = { "linger.ms=1", "message.max.bytes=4000" };
    cfg.props = small_props;
    cfg.brokers = boot;
    cfg.close_timeout_ms = 0;
    CHECK_EQ(pgw_kafka_sink_open(&cfg, &s), 0);
    CHECK_EQ(s->limits.max_event_bytes, 4000 - 1024);
    CHECK_EQ(pgw_sink_flush(s, 20000), 0);
    pgw_sink_health_t h;
    pgw_sink_health(s, &h);
    CHECK_EQ(h.events_lost, 1);
    pgw_kafka_sink_stats(s, &st);
    CHECK_EQ(st.replayed, 11);
    CHECK_EQ(st.delivered, 10);
    pgw_sink_close(s);
    CHECK_EQ(count_segments(), 0);

    /* Every event is in the topic (duplicates allowed, losses not). */
    int got = consume_all(boot, "audit", N + M + K + 10, seen);
    CHECK(got >= N + M + K + 10);
    int missing = 0;
    for (int i = 0; i < N + M + K + 10; i++)
        missing += !seen[i];
    CHECK_EQ(missing, 0);

    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(mrk);
    rmdir(g_dir);
    CHECK_DONE();
}
