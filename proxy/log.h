/* Diagnostics to stderr. Separate from audit events (sinks/) and from
 * metrics: this stream is for operators reading what the proxy did. */
#ifndef PGW_LOG_H
#define PGW_LOG_H

#include <stdatomic.h>

enum pgw_log_level { PGW_LOG_ERROR = 0, PGW_LOG_WARN, PGW_LOG_INFO, PGW_LOG_DEBUG };

/* Set at start-up and by a reload (SIGHUP) on the main thread; read by
 * every thread (a relaxed atomic: a plain load on the platforms we run on). */
extern _Atomic int pgw_log_level;

enum pgw_log_format { PGW_LOG_TEXT = 0, PGW_LOG_JSON };
/* Set once at start-up, before any thread runs. */
extern int pgw_log_format;

int pgw_log_parse_level(const char *s);   /* -1 if unknown */
const char *pgw_log_level_name(int level);
void pgw_log_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A line about one connection: its id ("thread-serial") and peer, and the
 * user once known (NULL or "" before), as fields of their own in JSON. */
void pgw_log_write_conn(int level, const char *conn, const char *peer, const char *user,
                        const char *fmt, ...) __attribute__((format(printf, 5, 6)));

#define pgw_log_enabled(level) \
    ((level) <= atomic_load_explicit(&pgw_log_level, memory_order_relaxed))
/* The level is checked before the arguments are formatted. */
#define pgw_log(level, ...) \
    do { if (pgw_log_enabled(level)) pgw_log_write((level), __VA_ARGS__); } while (0)
#define pgw_error(...) pgw_log(PGW_LOG_ERROR, __VA_ARGS__)
#define pgw_warn(...)  pgw_log(PGW_LOG_WARN, __VA_ARGS__)
#define pgw_info(...)  pgw_log(PGW_LOG_INFO, __VA_ARGS__)
#define pgw_debug(...) pgw_log(PGW_LOG_DEBUG, __VA_ARGS__)

#endif
