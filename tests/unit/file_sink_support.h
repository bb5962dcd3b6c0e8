/* Helpers shared by the file sink tests (test_file_sink.c, test_file_spool.c):
 * the temp dir their files go in, and statement events whose lines vary in
 * length. */
#ifndef PGW_FILE_SINK_SUPPORT_H
#define PGW_FILE_SINK_SUPPORT_H

#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include "pgwarden/event.h"
#include "pgwarden/sink.h"

/* Each test program makes its own (mkdtemp in main) and removes it at the end. */
static char g_dir[] = "/tmp/pgw-sink-test-XXXXXX";

static inline void path_in(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/%s", g_dir, name);
}

static inline void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };
    nanosleep(&ts, NULL);
}

/* A statement event of producer t, sequence seq, with some padding text so
 * that lines vary in length. */
static inline void make_event(pgw_event_t *ev, char *sid, unsigned t, uint64_t seq, pgw_uuid7_t *g)
{
    static const char pad[] = "SELECT abalance FROM pgbench_accounts WHERE aid = $1 -- "
                              "padding padding padding padding padding padding padding";
    int n = snprintf(sid, 16, "t%u", t);

    pgw_event_init(ev, PGW_EVENT_STATEMENT, pgw_event_now_us(), g);
    ev->observer = (pgw_event_observer_t){ PGW_STR_LIT("host"), PGW_STR_LIT("inst"),
                                           PGW_STR_LIT("0") };
    ev->session.id = pgw_str(sid, (size_t)n);
    ev->session.seq = seq;
    ev->client.ip = PGW_STR_LIT("127.0.0.1");
    ev->client.port = 40000;
    ev->user.name = PGW_STR_LIT("u");
    ev->user.database = PGW_STR_LIT("d");
    ev->statement.text = pgw_str(pad, 20 + (seq * 7) % (sizeof(pad) - 21));
    ev->statement.protocol = PGW_PROTOCOL_SIMPLE;
    ev->result.status = PGW_STATUS_OK;
    ev->result.rows = PGW_INT(1);
}

#endif
