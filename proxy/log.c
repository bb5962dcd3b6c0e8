#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "pgwarden/json.h"

_Atomic int pgw_log_level = PGW_LOG_INFO;
int pgw_log_format = PGW_LOG_TEXT;

static const char *const level_names[] = { "error", "warn", "info", "debug" };

int pgw_log_parse_level(const char *s)
{
    for (int i = 0; i < (int)(sizeof level_names / sizeof level_names[0]); i++)
        if (strcmp(s, level_names[i]) == 0)
            return i;
    return -1;
}

const char *pgw_log_level_name(int level)
{
    return level >= 0 && level < (int)(sizeof level_names / sizeof level_names[0]) ? level_names[level] : "?";
}

/* One line, written with one fwrite: stdio locks the stream, so lines of
 * different threads never interleave. */
static void emit(int level, const char *conn, const char *peer, const char *user, const char *fmt,
                 va_list ap)
{
    char msg[1024];
    struct timespec ts;
    struct tm tm;
    char stamp[80];

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000);
    int m = vsnprintf(msg, sizeof msg, fmt, ap);
    size_t mlen = m < 0 ? 0 : (size_t)m >= sizeof msg ? sizeof msg - 1 : (size_t)m;

    if (pgw_log_format == PGW_LOG_JSON) {
        /* The encoder's string escaping: always valid JSON, whatever a
         * peer's bytes (a user name) hold. */
        char buf[16384];
        pgw_jbuf_t b = { .data = buf, .cap = sizeof buf, .max = sizeof buf };
        pgw_jbuf_lit(&b, "{\"time\":\"");
        pgw_jbuf_put(&b, stamp, strlen(stamp));
        pgw_jbuf_lit(&b, "\",\"level\":\"");
        pgw_jbuf_put(&b, level_names[level], strlen(level_names[level]));
        pgw_jbuf_lit(&b, "\"");
        if (conn) {
            pgw_jbuf_lit(&b, ",\"conn\":");
            pgw_json_str(&b, conn, strlen(conn));
            pgw_jbuf_lit(&b, ",\"peer\":");
            pgw_json_str(&b, peer, strlen(peer));
            if (user && *user) {
                pgw_jbuf_lit(&b, ",\"user\":");
                pgw_json_str(&b, user, strlen(user));
            }
        }
        pgw_jbuf_lit(&b, ",\"msg\":");
        pgw_json_str(&b, msg, mlen);
        pgw_jbuf_lit(&b, "}\n");
        if (!b.failed) {
            fwrite(b.data, 1, b.len, stderr);
            return;
        }
        /* too long for the line buffer: fall through to text */
    }
    char line[1400];
    int n;
    if (conn)
        n = snprintf(line, sizeof line, "%s %s session %s [%s%s%s]: %.*s\n", stamp, level_names[level], conn,
                     peer, user && *user ? " " : "", user ? user : "", (int)mlen, msg);
    else
        n = snprintf(line, sizeof line, "%s %s %.*s\n", stamp, level_names[level], (int)mlen, msg);
    size_t len = n < 0 ? 0 : (size_t)n;
    if (len >= sizeof line) {
        len = sizeof line - 1;
        line[len - 1] = '\n';
    }
    fwrite(line, 1, len, stderr);
}

void pgw_log_write(int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emit(level, NULL, NULL, NULL, fmt, ap);
    va_end(ap);
}

void pgw_log_write_conn(int level, const char *conn, const char *peer, const char *user, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emit(level, conn, peer, user, fmt, ap);
    va_end(ap);
}
