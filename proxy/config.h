/* Command-line configuration. Parsed once in main(), then read-only and
 * shared by every thread. */
#ifndef PGW_CONFIG_H
#define PGW_CONFIG_H

#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>

#define PGW_MAX_LISTEN 16
#define PGW_MAX_KAFKA_PROPS 64

typedef struct pgw_endpoint {
    int is_unix;
    char text[300];                 /* as given, for messages */
    struct sockaddr_storage sa;     /* TCP: resolved address */
    socklen_t salen;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];  /* unix: socket file */
    char host[256];                 /* TCP: the host as given (name checked by verify-full) */
    int tls_required;               /* listener: plaintext sessions are refused */
} pgw_endpoint_t;

enum { PGW_CLIENT_CERT_NONE, PGW_CLIENT_CERT_OPTIONAL, PGW_CLIENT_CERT_REQUIRE };
enum { PGW_SSLMODE_DISABLE, PGW_SSLMODE_REQUIRE, PGW_SSLMODE_VERIFY_CA, PGW_SSLMODE_VERIFY_FULL };

/* TLS on both legs (see tls.h). Paths are re-read on SIGHUP. */
typedef struct pgw_tls_config {
    const char *cert, *key;         /* client leg: pgwarden's certificate; NULL: no TLS */
    const char *client_ca;          /* verifies client certificates */
    int client_cert;                /* PGW_CLIENT_CERT_* */
    int min_version;                /* OpenSSL's TLS1_2_VERSION, TLS1_3_VERSION */
    const char *ciphers, *groups;   /* OpenSSL lists; NULL: OpenSSL's defaults */
    const char *ident_map;          /* pg_ident.conf-format file (ident.h) */
    int user_must_match_cn;         /* startup user = certificate CN, or mapped */
    int upstream_sslmode;           /* PGW_SSLMODE_* */
    const char *upstream_ca, *upstream_cert, *upstream_key;
} pgw_tls_config_t;

typedef struct pgw_config {
    pgw_endpoint_t listen[PGW_MAX_LISTEN];
    int nlisten;
    pgw_endpoint_t upstream;
    int threads;                    /* loop threads */
    double drain_timeout;           /* seconds to let sessions finish on SIGTERM */
    uint32_t max_message_size;      /* length-word cap for regular messages */
    int log_level;
    int log_format;                 /* PGW_LOG_TEXT or PGW_LOG_JSON */
    const char *audit_file;         /* JSON lines; "-" is stdout; NULL: no audit */
    uint64_t audit_max_bytes;       /* rotate before the file passes this; 0: never */
    unsigned audit_keep;            /* rotated files kept (path.1 .. path.N) */
    unsigned audit_fsync_ms;        /* fdatasync at most this long after a write; 0: never */
    int log_parameters;             /* Bind values in statement events */
    uint32_t parameter_max_bytes;   /* each value cut at this length */
    uint32_t statement_max_bytes;   /* statement text in events cut at this length */
    pgw_tls_config_t tls;
    double startup_timeout;         /* s from accept to the first ReadyForQuery; 0: none */
    double idle_timeout;            /* s a session may wait for its client; 0: none */
    unsigned max_clients;           /* sessions in total; 0: no limit */
    unsigned max_per_address;       /* sessions per client IP; 0: no limit */
    uint32_t max_pending_bytes;     /* backpressure high watermark per direction */
    const char *kafka_brokers;      /* with kafka_topic: the Kafka sink */
    const char *kafka_topic;
    const char *kafka_props[PGW_MAX_KAFKA_PROPS];   /* "name=value", librdkafka's */
    int nkafka_props;
    const char *spool_dir;          /* the Kafka sink's durable spool */
    uint64_t spool_max_bytes;       /* 0: the sink's default */
    int spool_drop;                 /* full spool: drop (and count) instead of block */
    int has_metrics;
    pgw_endpoint_t metrics_listen;  /* the HTTP endpoint, when has_metrics */
    const char *policy_file;        /* access rules (policy.h); NULL: none */
    int check_only;                 /* --check-config */
    char **argv_storage;            /* the strings the fields above point into */
} pgw_config_t;

/* Parses the configuration file named by --config (INI: `name = value`
 * lines, names as the long flags without the dashes, before any section or
 * in [pgwarden]), then argv, into cfg: a flag overrides the file, and a
 * repeatable flag (--listen) replaces the file's list. Returns 0 to run, 1
 * when --help, --version, --list-options or --check-config was handled
 * (exit 0), -1 on an error already reported on stderr, naming the file,
 * line and option when it came from the file (exit 2). */
int pgw_config_from_args(pgw_config_t *cfg, int argc, char **argv);
/* Frees what pgw_config_from_args kept (whatever it returned). */
void pgw_config_free(pgw_config_t *cfg);

#endif
