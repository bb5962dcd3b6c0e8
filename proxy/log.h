/* Diagnostics to stderr. Separate from audit events (sinks/) and from
 * metrics: this stream is for operators reading what the proxy did. */
#ifndef PGW_LOG_H
#define PGW_LOG_H

enum pgw_log_level { PGW_LOG_ERROR = 0, PGW_LOG_WARN, PGW_LOG_INFO, PGW_LOG_DEBUG };

/* Set once at start-up, before any thread runs; read-only afterwards. */
extern int pgw_log_level;

int pgw_log_parse_level(const char *s);   /* -1 if unknown */
void pgw_log_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The level is checked before the arguments are formatted. */
#define pgw_log(level, ...) \
    do { if ((level) <= pgw_log_level) pgw_log_write((level), __VA_ARGS__); } while (0)
#define pgw_error(...) pgw_log(PGW_LOG_ERROR, __VA_ARGS__)
#define pgw_warn(...)  pgw_log(PGW_LOG_WARN, __VA_ARGS__)
#define pgw_info(...)  pgw_log(PGW_LOG_INFO, __VA_ARGS__)
#define pgw_debug(...) pgw_log(PGW_LOG_DEBUG, __VA_ARGS__)

#endif
