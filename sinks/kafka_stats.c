/* librdkafka's statistics document (statistics.interval.ms; its
 * STATISTICS.md) read with json-c: the producer queue depth and, per broker
 * of the cluster, its state, round-trip times and error counters. Only
 * what the metrics endpoint shows is kept. See pgwarden/sink.h. */
#include "pgwarden/sink.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>

static int64_t int_of(json_object *o, const char *key)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v))
        return 0;
    int64_t n = json_object_get_int64(v);
    return n > 0 ? n : 0;
}

static const char *str_of(json_object *o, const char *key)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

static void read_broker(json_object *b, pgw_kafka_broker_stats_t *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", str_of(b, "name"));
    const char *state = str_of(b, "state");
    out->present = true;
    out->up = state && strcmp(state, "UP") == 0;
    out->tx_errors = (uint64_t)int_of(b, "txerrs");
    out->rx_errors = (uint64_t)int_of(b, "rxerrs");
    out->timeouts = (uint64_t)int_of(b, "req_timeouts");
    out->disconnects = (uint64_t)int_of(b, "disconnects");
    out->connects = (uint64_t)int_of(b, "connects");
    out->rtt_p50_us = out->rtt_p99_us = -1;
    json_object *rtt;
    if (json_object_object_get_ex(b, "rtt", &rtt) && json_object_is_type(rtt, json_type_object)) {
        /* A window of the last interval (librdkafka rolls it over at
         * each document): cnt requests, sum microseconds. */
        out->rtt_count = (uint64_t)int_of(rtt, "cnt");
        out->rtt_sum_us = (uint64_t)int_of(rtt, "sum");
        if (out->rtt_count) {
            out->rtt_p50_us = int_of(rtt, "p50");
            out->rtt_p99_us = int_of(rtt, "p99");
        }
    }
}

int pgw_kafka_rdstats_read(const char *json, size_t len, pgw_kafka_client_stats_t *out,
                           char *client, size_t client_size)
{
    memset(out, 0, sizeof *out);
    if (client && client_size)
        client[0] = '\0';
    if (len > (size_t)INT32_MAX)
        return -EINVAL;
    json_tokener *tok = json_tokener_new();
    if (!tok)
        return -ENOMEM;
    json_object *root = json_tokener_parse_ex(tok, json, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    int rc = -EINVAL;
    if (!root || jerr != json_tokener_success || !json_object_is_type(root, json_type_object))
        goto out;
    while (end < len && (json[end] == ' ' || json[end] == '\n' || json[end] == '\r' || json[end] == '\t'))
        end++;
    if (end != len)
        goto out;                   /* something after the object */
    const char *type = str_of(root, "type");
    if (!type || strcmp(type, "producer") != 0)
        goto out;
    if (client && client_size)
        snprintf(client, client_size, "%s", str_of(root, "name") ? str_of(root, "name") : "");
    out->queue_messages = (uint64_t)int_of(root, "msg_cnt");
    out->queue_bytes = (uint64_t)int_of(root, "msg_size");
    json_object *brokers;
    if (json_object_object_get_ex(root, "brokers", &brokers) &&
        json_object_is_type(brokers, json_type_object)) {
        json_object_object_foreach(brokers, key, b) {
            (void)key;
            if (!json_object_is_type(b, json_type_object) || !str_of(b, "name"))
                continue;
            /* Brokers with an address: the configured ones (named
             * "host:port/bootstrap" until their node id is known, then
             * "host:port/id") and those learned from metadata; not the
             * "internal" and "logical" (coordinator) pseudo-brokers. */
            const char *source = str_of(b, "source");
            if (!source || (strcmp(source, "learned") != 0 && strcmp(source, "configured") != 0))
                continue;
            if (out->nbrokers == PGW_KAFKA_BROKERS_MAX)
                break;
            read_broker(b, &out->brokers[out->nbrokers++]);
        }
    }
    out->documents = 1;
    rc = 0;
out:
    json_object_put(root);
    return rc;
}

static uint64_t grown(uint64_t total, uint64_t before, uint64_t now)
{
    return total + (now >= before ? now - before : now);
}

static ssize_t find(const pgw_kafka_client_stats_t *st, const char *name)
{
    for (size_t i = 0; st && i < st->nbrokers; i++)
        if (strcmp(st->brokers[i].name, name) == 0)
            return (ssize_t)i;
    return -1;
}

void pgw_kafka_rdstats_merge(pgw_kafka_client_stats_t *acc, const pgw_kafka_client_stats_t *prev,
                             const pgw_kafka_client_stats_t *doc)
{
    static const pgw_kafka_broker_stats_t zero;
    acc->documents++;
    acc->queue_messages = doc->queue_messages;
    acc->queue_bytes = doc->queue_bytes;
    for (size_t i = 0; i < acc->nbrokers; i++) {
        acc->brokers[i].present = acc->brokers[i].up = false;
        acc->brokers[i].rtt_p50_us = acc->brokers[i].rtt_p99_us = -1;
    }
    for (size_t d = 0; d < doc->nbrokers; d++) {
        const pgw_kafka_broker_stats_t *b = &doc->brokers[d];
        ssize_t p = find(prev, b->name), k = find(acc, b->name);
        const pgw_kafka_broker_stats_t *before = p >= 0 ? &prev->brokers[p] : &zero;
        pgw_kafka_broker_stats_t *a = k >= 0 ? &acc->brokers[k] : NULL;
        if (!a) {
            if (acc->nbrokers == PGW_KAFKA_BROKERS_MAX)
                continue;
            a = &acc->brokers[acc->nbrokers++];
            memset(a, 0, sizeof *a);
            memcpy(a->name, b->name, sizeof a->name);
        }
        a->present = true;
        a->up = b->up;
        a->rtt_p50_us = b->rtt_p50_us;
        a->rtt_p99_us = b->rtt_p99_us;
        /* The rtt window covers one interval: added as it comes. */
        a->rtt_sum_us += b->rtt_sum_us;
        a->rtt_count += b->rtt_count;
        a->tx_errors = grown(a->tx_errors, before->tx_errors, b->tx_errors);
        a->rx_errors = grown(a->rx_errors, before->rx_errors, b->rx_errors);
        a->timeouts = grown(a->timeouts, before->timeouts, b->timeouts);
        a->disconnects = grown(a->disconnects, before->disconnects, b->disconnects);
        a->connects = grown(a->connects, before->connects, b->connects);
    }
}
