#include "config.h"
#include "log.h"
#include "policy.h"
#include "tls.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <ini.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/ssl.h>

static const char usage[] =
"Usage: pgwarden --listen HOST:PORT|/unix/dir [--listen ...] --upstream HOST:PORT|/unix/dir [options]\n"
"\n"
"A PostgreSQL wire-protocol proxy that audits every statement.\n"
"\n"
"  --listen HOST:PORT       accept clients on a TCP address ([::1]:6432 for IPv6)\n"
"  --listen /DIR            accept clients on the unix socket DIR/.s.PGSQL.PORT, PORT being\n"
"                           that of the first TCP --listen (5432 without one); a path ending\n"
"                           in .s.PGSQL.NNNN names the socket file itself. Repeatable.\n"
"  --upstream HOST:PORT     the PostgreSQL server, over TCP\n"
"  --upstream /DIR          the PostgreSQL server's unix socket directory: the one\n"
"                           .s.PGSQL.* socket in DIR (or DIR/.s.PGSQL.5432 if several),\n"
"                           or the socket file itself\n"
"  --audit-file PATH|-      write audit events as JSON lines to PATH, or to stdout;\n"
"                           SIGHUP reopens PATH (after an external rotation)\n"
"  --audit-file-max-bytes N rotate the audit file before it passes N bytes: PATH.1 is\n"
"                           the newest rotated file (default 0: never)\n"
"  --audit-file-keep N      rotated audit files kept, PATH.1 .. PATH.N (default 5)\n"
"  --audit-file-fsync-ms MS fdatasync the audit file at most MS after a write\n"
"                           (default 0: leave it to the kernel)\n"
"  --policy-file FILE       access rules (connections and statements, docs/policy.md),\n"
"                           re-read on SIGHUP\n"
"  --kafka-brokers H:P[,..] with --kafka-topic: send audit events to Kafka (librdkafka)\n"
"  --kafka-topic NAME       the topic; messages are keyed by session id\n"
"  --kafka-property K=V     a librdkafka producer property (security.protocol, sasl.*, ssl.*,\n"
"                           ...), applied after pgwarden's defaults. Repeatable.\n"
"  --spool-dir DIR          durable audit (Kafka or audit file): statements are recorded here\n"
"                           before they reach the server, and every event is kept until\n"
"                           Kafka acknowledges it or it is in the audit file; a crash of\n"
"                           pgwarden loses nothing, the next start delivers what is left\n"
"  --spool-max-bytes N      spool size cap (default 1073741824)\n"
"  --spool-full-policy P    block (default: statements wait) or drop (Kafka only: counted,\n"
"                           audit_gap event)\n"
"  --log-parameters         put Bind parameter values into statement events (default: count only)\n"
"  --parameter-max-bytes N  cut each logged value at N bytes (default 1024)\n"
"  --statement-max-bytes N  cut statement text in events at N bytes, marked truncated\n"
"                           (default 65536; at most an eighth of the sink's largest event)\n"
"  --metrics-listen HOST:PORT  serve /metrics (Prometheus), /healthz and /readyz over HTTP\n"
"  --threads N              event-loop threads (default: online CPUs)\n"
"  --drain-timeout SECONDS  on SIGTERM/SIGINT, how long sessions may finish (default 30)\n"
"  --max-message-size BYTES largest accepted protocol message (default 1073741824)\n"
"  --startup-timeout SECONDS  a client must complete its startup and authentication\n"
"                           within this, or is disconnected (default 60; 0: never)\n"
"  --idle-timeout SECONDS   close a session idle (after ReadyForQuery, nothing from the\n"
"                           client) this long, with FATAL 57P05 (default 0: never)\n"
"  --max-client-connections N  sessions in total; more get FATAL 53300 (default 10000; 0: no limit)\n"
"  --max-connections-per-address N  sessions per client IP address (default 0: no limit)\n"
"  --max-pending-bytes BYTES  per direction of a session, unwritten bytes before reading\n"
"                           the other side pauses (backpressure; default 262144)\n"
"  --log-level LEVEL        error, warn, info (default) or debug\n"
"  --log-format FORMAT      diagnostics on stderr as text (default) or json (one object per line)\n"
"  --config FILE            read options from an INI file first (name = value, names as\n"
"                           these flags without the dashes); flags override it\n"
"  --check-config           validate the configuration and exit\n"
"  --list-options           the names of every option (docs/configuration.md)\n"
"\n"
"TLS (certificates and keys are PEM files, re-read on SIGHUP):\n"
"  --tls-cert FILE          pgwarden's certificate (chain) for clients: SSLRequest is answered 'S'\n"
"  --tls-key FILE           its private key\n"
"  --tls-client-ca FILE     CA certificates that client certificates must chain to\n"
"  --tls-client-cert MODE   none, optional (default with --tls-client-ca) or require\n"
"  --tls-min-version V      TLSv1.2 (default) or TLSv1.3\n"
"  --tls-ciphers LIST       OpenSSL cipher list for TLS 1.2\n"
"  --tls-groups LIST        OpenSSL key-exchange group list, e.g. X25519:P-256\n"
"  --tls-require            refuse sessions without TLS on every TCP listener\n"
"  --tls-require-on LISTEN  ... on this --listen only (spelled as there; repeatable)\n"
"  --tls-user-must-match-cn the startup user must be the client certificate's CN (or be\n"
"                           mapped to it by --tls-ident-map); sessions without a verified\n"
"                           certificate (plaintext, unix socket) are refused\n"
"  --tls-ident-map FILE     pg_ident.conf-format map of certificate CNs to users (implies\n"
"                           --tls-user-must-match-cn)\n"
"  --upstream-sslmode MODE  disable (default), require, verify-ca or verify-full\n"
"  --upstream-ca FILE       CA certificates for the server's certificate\n"
"  --upstream-cert FILE     pgwarden's client certificate for the server (with --upstream-key)\n"
"  --upstream-key FILE      its private key\n"
"  --help                   this text\n"
"  --version                the version\n";

static const char *const client_cert_modes[] = { "none", "optional", "require", NULL };
static const char *const sslmodes[] = { "disable", "require", "verify-ca", "verify-full", NULL };
static const char *const tls_versions[] = { "TLSv1.2", "TLSv1.3", NULL };

static int parse_choice(const char *opt, const char *arg, const char *const *names, int *out)
{
    for (int i = 0; names[i]; i++) {
        if (strcmp(arg, names[i]) == 0) {
            *out = i;
            return 0;
        }
    }
    fprintf(stderr, "pgwarden: %s: \"%s\" is not one of", opt, arg);
    for (int i = 0; names[i]; i++)
        fprintf(stderr, " %s", names[i]);
    fputc('\n', stderr);
    return -1;
}

/* What the TLS flags require of each other, checked once all are read. */
static int check_tls(pgw_config_t *cfg, int client_cert_given, int require_all,
                     const char **require_args, int nrequire)
{
    pgw_tls_config_t *t = &cfg->tls;
    const char *err = NULL;
    if (!t->cert != !t->key)
        err = "--tls-cert and --tls-key go together";
    else if (!t->cert && (t->client_ca || client_cert_given || t->ident_map || t->user_must_match_cn ||
                          require_all || nrequire || t->ciphers || t->groups))
        err = "the --tls-* options need --tls-cert and --tls-key";
    else if (t->client_cert != PGW_CLIENT_CERT_NONE && !t->client_ca)
        err = "--tls-client-cert optional|require needs --tls-client-ca";
    else if (t->user_must_match_cn && t->client_cert == PGW_CLIENT_CERT_NONE)
        err = "--tls-user-must-match-cn and --tls-ident-map need client certificates (--tls-client-ca)";
    else if (t->upstream_sslmode >= PGW_SSLMODE_VERIFY_CA && !t->upstream_ca)
        err = "--upstream-sslmode verify-ca|verify-full needs --upstream-ca";
    else if (!t->upstream_cert != !t->upstream_key)
        err = "--upstream-cert and --upstream-key go together";
    else if (t->upstream_sslmode != PGW_SSLMODE_DISABLE && cfg->upstream.is_unix)
        err = "--upstream-sslmode needs a TCP --upstream (PostgreSQL has no TLS on unix sockets)";
    else if ((t->upstream_ca || t->upstream_cert) && t->upstream_sslmode == PGW_SSLMODE_DISABLE)
        err = "--upstream-ca and --upstream-cert need --upstream-sslmode";
    if (err) {
        fprintf(stderr, "pgwarden: %s\n", err);
        return -1;
    }
    for (int i = 0; i < cfg->nlisten; i++)
        if (require_all && !cfg->listen[i].is_unix)
            cfg->listen[i].tls_required = 1;
    for (int k = 0; k < nrequire; k++) {
        int found = 0;
        for (int i = 0; i < cfg->nlisten; i++) {
            if (strcmp(cfg->listen[i].text, require_args[k]) != 0)
                continue;
            if (cfg->listen[i].is_unix) {
                fprintf(stderr, "pgwarden: --tls-require-on %s: no TLS on unix sockets\n", require_args[k]);
                return -1;
            }
            cfg->listen[i].tls_required = found = 1;
        }
        if (!found) {
            fprintf(stderr, "pgwarden: --tls-require-on %s: no such --listen\n", require_args[k]);
            return -1;
        }
    }
    return 0;
}

/* HOST:PORT, [V6]:PORT. */
static int parse_tcp(pgw_endpoint_t *ep, const char *arg, int passive)
{
    char host[256];
    const char *colon, *hstart = arg, *hend;
    if (arg[0] == '[') {
        hend = strchr(arg, ']');
        if (!hend || hend[1] != ':')
            return -1;
        hstart = arg + 1;
        colon = hend + 1;
    } else {
        colon = strrchr(arg, ':');
        if (!colon)
            return -1;
        hend = colon;
    }
    size_t hlen = (size_t)(hend - hstart);
    if (hlen == 0 || hlen >= sizeof host)
        return -1;
    memcpy(host, hstart, hlen);
    host[hlen] = '\0';
    memcpy(ep->host, host, hlen + 1);
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port <= 0 || port > 65535)
        return -1;

    struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = passive ? AI_PASSIVE : 0 };
    struct addrinfo *res;
    int rc = getaddrinfo(host, colon + 1, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, "pgwarden: cannot resolve \"%s\": %s\n", host, gai_strerror(rc));
        return -2;
    }
    memcpy(&ep->sa, res->ai_addr, res->ai_addrlen);
    ep->salen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static int is_socket_name(const char *base)
{
    return strncmp(base, ".s.PGSQL.", 9) == 0 && base[9] != '\0';
}

static int set_path(pgw_endpoint_t *ep, const char *dir, const char *name)
{
    int n = name ? snprintf(ep->path, sizeof ep->path, "%s/%s", dir, name)
                 : snprintf(ep->path, sizeof ep->path, "%s", dir);
    if (n < 0 || (size_t)n >= sizeof ep->path) {
        fprintf(stderr, "pgwarden: unix socket path too long: %s\n", dir);
        return -1;
    }
    return 0;
}

/* The upstream directory form: PostgreSQL names its socket .s.PGSQL.<port>,
 * so a directory with exactly one of them is unambiguous. */
static int resolve_upstream_dir(pgw_endpoint_t *ep, const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "pgwarden: --upstream %s: %s\n", dir, strerror(errno));
        return -1;
    }
    char found[256] = "";
    int count = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *nm = de->d_name;
        if (!is_socket_name(nm) || strchr(nm + 9, '.'))   /* skip .lock files */
            continue;
        if (++count == 1)
            snprintf(found, sizeof found, "%s", nm);
    }
    closedir(d);
    return set_path(ep, dir, count == 1 ? found : ".s.PGSQL.5432");
}

static int parse_endpoint(pgw_endpoint_t *ep, const char *arg, int listening, int unix_port)
{
    snprintf(ep->text, sizeof ep->text, "%s", arg);
    if (arg[0] != '/') {
        ep->is_unix = 0;
        int rc = parse_tcp(ep, arg, listening);
        if (rc == -1)
            fprintf(stderr, "pgwarden: \"%s\" is neither HOST:PORT nor an absolute path\n", arg);
        return rc ? -1 : 0;
    }
    ep->is_unix = 1;
    const char *base = strrchr(arg, '/') + 1;
    if (is_socket_name(base))
        return set_path(ep, arg, NULL);
    if (!listening)
        return resolve_upstream_dir(ep, arg);
    char name[32];
    snprintf(name, sizeof name, ".s.PGSQL.%d", unix_port);
    return set_path(ep, arg, name);
}

static int parse_number(const char *opt, const char *arg, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(arg, &end);
    if (errno || *end || end == arg || !(v >= lo && v <= hi)) {   /* NaN fails both */
        fprintf(stderr, "pgwarden: %s: \"%s\" is not a number in [%g, %g]\n", opt, arg, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

enum { O_LISTEN = 256, O_UPSTREAM, O_THREADS, O_DRAIN, O_MAXMSG, O_LOGLEVEL, O_HELP, O_VERSION,
       O_AUDIT_FILE, O_LOG_PARAMS, O_PARAM_MAX, O_STMT_MAX, O_METRICS, O_LOGFORMAT, O_STARTUP_TIMEOUT,
       O_IDLE_TIMEOUT,
       O_MAX_CLIENTS, O_MAX_PER_ADDR, O_MAX_PENDING, O_CONFIG, O_CHECK, O_LIST,
       O_KAFKA_BROKERS, O_KAFKA_TOPIC, O_KAFKA_PROP, O_SPOOL_DIR, O_SPOOL_MAX, O_SPOOL_POLICY,
       O_TLS_CERT, O_TLS_KEY, O_TLS_CLIENT_CA, O_TLS_CLIENT_CERT, O_TLS_MIN, O_TLS_CIPHERS,
       O_TLS_GROUPS, O_TLS_REQUIRE, O_TLS_REQUIRE_ON, O_TLS_IDENT_MAP, O_TLS_MATCH_CN, O_POLICY, O_UP_SSLMODE,
       O_UP_CA, O_UP_CERT, O_UP_KEY, O_AUDIT_MAX, O_AUDIT_KEEP, O_AUDIT_FSYNC, O_LAST };
static const struct option opts[] = {
    { "listen", required_argument, NULL, O_LISTEN },
    { "upstream", required_argument, NULL, O_UPSTREAM },
    { "threads", required_argument, NULL, O_THREADS },
    { "drain-timeout", required_argument, NULL, O_DRAIN },
    { "max-message-size", required_argument, NULL, O_MAXMSG },
    { "log-level", required_argument, NULL, O_LOGLEVEL },
    { "audit-file", required_argument, NULL, O_AUDIT_FILE },
    { "audit-file-max-bytes", required_argument, NULL, O_AUDIT_MAX },
    { "audit-file-keep", required_argument, NULL, O_AUDIT_KEEP },
    { "audit-file-fsync-ms", required_argument, NULL, O_AUDIT_FSYNC },
    { "log-parameters", no_argument, NULL, O_LOG_PARAMS },
    { "parameter-max-bytes", required_argument, NULL, O_PARAM_MAX },
    { "statement-max-bytes", required_argument, NULL, O_STMT_MAX },
    { "metrics-listen", required_argument, NULL, O_METRICS },
    { "kafka-brokers", required_argument, NULL, O_KAFKA_BROKERS },
    { "kafka-topic", required_argument, NULL, O_KAFKA_TOPIC },
    { "kafka-property", required_argument, NULL, O_KAFKA_PROP },
    { "spool-dir", required_argument, NULL, O_SPOOL_DIR },
    { "spool-max-bytes", required_argument, NULL, O_SPOOL_MAX },
    { "spool-full-policy", required_argument, NULL, O_SPOOL_POLICY },
    { "tls-cert", required_argument, NULL, O_TLS_CERT },
    { "tls-key", required_argument, NULL, O_TLS_KEY },
    { "tls-client-ca", required_argument, NULL, O_TLS_CLIENT_CA },
    { "tls-client-cert", required_argument, NULL, O_TLS_CLIENT_CERT },
    { "tls-min-version", required_argument, NULL, O_TLS_MIN },
    { "tls-ciphers", required_argument, NULL, O_TLS_CIPHERS },
    { "tls-groups", required_argument, NULL, O_TLS_GROUPS },
    { "tls-require", no_argument, NULL, O_TLS_REQUIRE },
    { "tls-require-on", required_argument, NULL, O_TLS_REQUIRE_ON },
    { "tls-ident-map", required_argument, NULL, O_TLS_IDENT_MAP },
    { "policy-file", required_argument, NULL, O_POLICY },
    { "tls-user-must-match-cn", no_argument, NULL, O_TLS_MATCH_CN },
    { "upstream-sslmode", required_argument, NULL, O_UP_SSLMODE },
    { "upstream-ca", required_argument, NULL, O_UP_CA },
    { "upstream-cert", required_argument, NULL, O_UP_CERT },
    { "upstream-key", required_argument, NULL, O_UP_KEY },
    { "log-format", required_argument, NULL, O_LOGFORMAT },
    { "startup-timeout", required_argument, NULL, O_STARTUP_TIMEOUT },
    { "idle-timeout", required_argument, NULL, O_IDLE_TIMEOUT },
    { "max-client-connections", required_argument, NULL, O_MAX_CLIENTS },
    { "max-connections-per-address", required_argument, NULL, O_MAX_PER_ADDR },
    { "max-pending-bytes", required_argument, NULL, O_MAX_PENDING },
    { "config", required_argument, NULL, O_CONFIG },
    { "check-config", no_argument, NULL, O_CHECK },
    { "list-options", no_argument, NULL, O_LIST },
    { "help", no_argument, NULL, O_HELP },
    { "version", no_argument, NULL, O_VERSION },
    { NULL, 0, NULL, 0 },
};

/* Options that may be given several times: on the command line, their
 * values replace the whole list from the file. */
static int repeatable(int val)
{
    return val == O_LISTEN || val == O_KAFKA_PROP || val == O_TLS_REQUIRE_ON;
}

/* Options of the command line only. */
static int cmdline_only(int val)
{
    return val == O_HELP || val == O_VERSION || val == O_CONFIG || val == O_CHECK || val == O_LIST;
}

/* The file's options and the command line's, as one argv for getopt_long:
 * the file's first, so that a flag given on the command line wins; a
 * repeatable option given on the command line replaces the file's list.
 * origin[i] is the file line argv[i] came from, 0 for the command line. */
typedef struct argv_build {
    char **argv;
    int argc, cap;
    int *origin;
    const char *path;
    int line;
    int cmdline_has[O_LAST + 1];
    int failed;
} argv_build_t;

static int push_arg(argv_build_t *ab, const char *a, int origin)
{
    if (ab->argc + 2 > ab->cap) {
        int cap = ab->cap ? ab->cap * 2 : 64;
        char **nv = realloc(ab->argv, (size_t)cap * sizeof *nv);
        int *no = realloc(ab->origin, (size_t)cap * sizeof *no);
        if (nv)
            ab->argv = nv;
        if (no)
            ab->origin = no;
        if (!nv || !no)
            return -1;
        ab->cap = cap;
    }
    ab->argv[ab->argc] = strdup(a);
    if (!ab->argv[ab->argc])
        return -1;
    ab->origin[ab->argc++] = origin;
    ab->argv[ab->argc] = NULL;
    return 0;
}

static const struct option *find_option(const char *name)
{
    for (const struct option *o = opts; o->name; o++)
        if (strcmp(o->name, name) == 0)
            return o;
    return NULL;
}

/* libinih reads the file line by line through this, so that the handler
 * knows the line it is called for. */
static char *read_line(char *buf, int size, void *stream)
{
    FILE *f = ((void **)stream)[0];
    argv_build_t *ab = ((void **)stream)[1];
    char *r = fgets(buf, size, f);
    if (r)
        ab->line++;
    return r;
}

static int on_ini(void *user, const char *section, const char *name, const char *value)
{
    argv_build_t *ab = user;
    char key[64];
    snprintf(key, sizeof key, "%s", name);
    for (char *k = key; *k; k++)
        if (*k == '_')
            *k = '-';
    if (section[0] && strcmp(section, "pgwarden") != 0) {
        fprintf(stderr, "pgwarden: %s:%d: unknown section [%s] (options go before any section, or in [pgwarden])\n",
                ab->path, ab->line, section);
        ab->failed = 1;
        return 1;
    }
    const struct option *o = find_option(key);
    if (!o || cmdline_only(o->val)) {
        fprintf(stderr, "pgwarden: %s:%d: unknown option \"%s\"\n", ab->path, ab->line, name);
        ab->failed = 1;
        return 1;
    }
    if (ab->cmdline_has[o->val] && repeatable(o->val))
        return 1;                   /* the command line's list replaces the file's */
    char flag[80];
    snprintf(flag, sizeof flag, "--%s", o->name);
    if (o->has_arg == no_argument) {
        if (!strcmp(value, "true") || !strcmp(value, "on") || !strcmp(value, "yes") || !strcmp(value, "1")) {
            if (push_arg(ab, flag, ab->line))
                ab->failed = 1;
        } else if (strcmp(value, "false") && strcmp(value, "off") && strcmp(value, "no") && strcmp(value, "0")) {
            fprintf(stderr, "pgwarden: %s:%d: %s: \"%s\" is not true or false\n", ab->path, ab->line, key, value);
            ab->failed = 1;
        }
        return 1;
    }
    if (push_arg(ab, flag, ab->line) || push_arg(ab, value, ab->line))
        ab->failed = 1;
    return 1;
}

/* The value of --config on the command line, or NULL. */
static const char *config_path_arg(int argc, char **argv)
{
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--"))
            break;
        if (!strcmp(argv[i], "--config") && i + 1 < argc)
            path = argv[++i];
        else if (!strncmp(argv[i], "--config=", 9))
            path = argv[i] + 9;
    }
    return path;
}

static int parse_argv(pgw_config_t *cfg, int argc, char **argv, const int *origin, const char *path);

void pgw_config_free(pgw_config_t *cfg)
{
    if (cfg->argv_storage) {
        for (char **a = cfg->argv_storage; *a; a++)
            free(*a);
        free(cfg->argv_storage);
    }
    cfg->argv_storage = NULL;
}

int pgw_config_from_args(pgw_config_t *cfg, int argc, char **argv)
{
    argv_build_t ab = { 0 };
    memset(cfg, 0, sizeof *cfg);    /* pgw_config_free is safe whatever happens below */
    const char *path = config_path_arg(argc, argv);
    int rc = -1;

    if (push_arg(&ab, argv[0] ? argv[0] : "pgwarden", 0))
        goto oom;
    for (int i = 1; i < argc; i++) {
        const struct option *o = NULL;
        if (!strncmp(argv[i], "--", 2)) {
            char name[64];
            snprintf(name, sizeof name, "%s", argv[i] + 2);
            char *eq = strchr(name, '=');
            if (eq)
                *eq = '\0';
            o = find_option(name);
        }
        if (o)
            ab.cmdline_has[o->val] = 1;
    }
    if (path) {
        FILE *f = fopen(path, "r");
        if (!f) {
            fprintf(stderr, "pgwarden: --config: cannot read %s: %s\n", path, strerror(errno));
            goto out;
        }
        ab.path = path;
        void *stream[2] = { f, &ab };
        int bad = ini_parse_stream(read_line, stream, on_ini, &ab);
        fclose(f);
        if (bad > 0) {
            fprintf(stderr, "pgwarden: %s:%d: not an INI line (expected name = value)\n", path, bad);
            goto out;
        }
        if (bad < 0 || ab.failed)
            goto out;
    }
    for (int i = 1; i < argc; i++)
        if (push_arg(&ab, argv[i], 0))
            goto oom;
    rc = parse_argv(cfg, ab.argc, ab.argv, ab.origin, path);
    if (rc == 0 && cfg->check_only) {
        /* The certificate files are part of the configuration. */
        pgw_tls_t tls;
        char err[512];
        if (pgw_tls_init(&tls, &cfg->tls, err, sizeof err)) {
            fprintf(stderr, "pgwarden: TLS: %s\n", err);
            rc = -1;
            goto keep;
        }
        pgw_tls_destroy(&tls);
        if (cfg->policy_file) {
            pgw_policy_t *pol = pgw_policy_load(cfg->policy_file, err, sizeof err);
            if (!pol) {
                fprintf(stderr, "pgwarden: policy: %s\n", err);
                rc = -1;
                goto keep;
            }
            pgw_policy_unref(pol);
        }
        printf("pgwarden: configuration OK%s%s%s\n", path ? " (" : "", path ? path : "", path ? ")" : "");
        rc = 1;
    }
keep:
    /* The strings stay: cfg points into them for the process's life. */
    cfg->argv_storage = ab.argv;
    free(ab.origin);
    return rc;
oom:
    fprintf(stderr, "pgwarden: out of memory reading the configuration\n");
out:
    for (int i = 0; i < ab.argc; i++)
        free(ab.argv[i]);
    free(ab.argv);
    free(ab.origin);
    return rc;
}

static int parse_argv(pgw_config_t *cfg, int argc, char **argv, const int *origin, const char *path)
{
    const char *listen_args[PGW_MAX_LISTEN];
    const char *upstream_arg = NULL, *metrics_arg = NULL;
    const char *require_args[PGW_MAX_LISTEN];
    int nrequire = 0, require_all = 0, client_cert_given = 0, choice;
    const char *audit_opt = NULL;   /* an --audit-file-* option given */
    double v;

    memset(cfg, 0, sizeof *cfg);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    cfg->threads = ncpu > 0 ? (int)ncpu : 1;
    cfg->drain_timeout = 30;
    cfg->max_message_size = 1u << 30;
    cfg->log_level = PGW_LOG_INFO;
    cfg->parameter_max_bytes = 1024;
    cfg->statement_max_bytes = 64 * 1024;
    cfg->audit_keep = 5;
    cfg->tls.min_version = TLS1_2_VERSION;
    cfg->startup_timeout = 60;
    cfg->max_clients = 10000;
    cfg->max_pending_bytes = 256 * 1024;

    opterr = 0;
    int c;
    optind = 0;                     /* a fresh scan, also on reload */
    int at = 1;
    while ((c = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
        switch (c) {
        case O_LISTEN:
            if (cfg->nlisten == PGW_MAX_LISTEN) {
                fprintf(stderr, "pgwarden: at most %d --listen\n", PGW_MAX_LISTEN);
                goto bad;
            }
            listen_args[cfg->nlisten++] = optarg;
            break;
        case O_UPSTREAM:
            upstream_arg = optarg;
            break;
        case O_THREADS:
            if (parse_number("--threads", optarg, 1, 256, &v))
                goto bad;
            cfg->threads = (int)v;
            break;
        case O_DRAIN:
            if (parse_number("--drain-timeout", optarg, 0, 86400, &v))
                goto bad;
            cfg->drain_timeout = v;
            break;
        case O_MAXMSG:
            if (parse_number("--max-message-size", optarg, 1024, 1u << 30, &v))
                goto bad;
            cfg->max_message_size = (uint32_t)v;
            break;
        case O_LOGLEVEL:
            cfg->log_level = pgw_log_parse_level(optarg);
            if (cfg->log_level < 0) {
                fprintf(stderr, "pgwarden: --log-level: \"%s\" is not error, warn, info or debug\n", optarg);
                goto bad;
            }
            break;
        case O_AUDIT_FILE:
            if (!*optarg) {
                fprintf(stderr, "pgwarden: --audit-file needs a path, or - for stdout\n");
                goto bad;
            }
            cfg->audit_file = optarg;
            break;
        case O_AUDIT_MAX:
            if (parse_number("--audit-file-max-bytes", optarg, 0, 1e15, &v))
                goto bad;
            if (v > 0 && v < 4096) {
                fprintf(stderr, "pgwarden: --audit-file-max-bytes: %s is below 4096 (0: never rotate)\n",
                        optarg);
                goto bad;
            }
            cfg->audit_max_bytes = (uint64_t)v;
            audit_opt = "--audit-file-max-bytes";
            break;
        case O_AUDIT_KEEP:
            if (parse_number("--audit-file-keep", optarg, 1, 1000, &v))
                goto bad;
            cfg->audit_keep = (unsigned)v;
            audit_opt = "--audit-file-keep";
            break;
        case O_AUDIT_FSYNC:
            if (parse_number("--audit-file-fsync-ms", optarg, 0, 3600000, &v))
                goto bad;
            cfg->audit_fsync_ms = (unsigned)v;
            audit_opt = "--audit-file-fsync-ms";
            break;
        case O_LOG_PARAMS:
            cfg->log_parameters = 1;
            break;
        case O_PARAM_MAX:
            if (parse_number("--parameter-max-bytes", optarg, 1, 1u << 20, &v))
                goto bad;
            cfg->parameter_max_bytes = (uint32_t)v;
            break;
        case O_STMT_MAX:
            if (parse_number("--statement-max-bytes", optarg, 1024, 16u << 20, &v))
                goto bad;
            cfg->statement_max_bytes = (uint32_t)v;
            break;
        case O_KAFKA_BROKERS:
            cfg->kafka_brokers = optarg;
            break;
        case O_KAFKA_TOPIC:
            cfg->kafka_topic = optarg;
            break;
        case O_KAFKA_PROP:
            if (cfg->nkafka_props == PGW_MAX_KAFKA_PROPS || !strchr(optarg, '=') || optarg[0] == '=') {
                fprintf(stderr, "pgwarden: --kafka-property: \"%s\" is not NAME=VALUE (at most %d)\n",
                        optarg, PGW_MAX_KAFKA_PROPS);
                goto bad;
            }
            cfg->kafka_props[cfg->nkafka_props++] = optarg;
            break;
        case O_SPOOL_DIR:
            if (!*optarg) {
                fprintf(stderr, "pgwarden: --spool-dir needs a directory\n");
                goto bad;
            }
            cfg->spool_dir = optarg;
            break;
        case O_SPOOL_MAX:
            if (parse_number("--spool-max-bytes", optarg, 65536, 1e15, &v))
                goto bad;
            cfg->spool_max_bytes = (uint64_t)v;
            break;
        case O_SPOOL_POLICY:
            if (strcmp(optarg, "block") == 0) {
                cfg->spool_drop = 0;
            } else if (strcmp(optarg, "drop") == 0) {
                cfg->spool_drop = 1;
            } else {
                fprintf(stderr, "pgwarden: --spool-full-policy: \"%s\" is not block or drop\n", optarg);
                goto bad;
            }
            break;
        case O_TLS_CERT: cfg->tls.cert = optarg; break;
        case O_TLS_KEY: cfg->tls.key = optarg; break;
        case O_TLS_CLIENT_CA: cfg->tls.client_ca = optarg; break;
        case O_TLS_CIPHERS: cfg->tls.ciphers = optarg; break;
        case O_TLS_GROUPS: cfg->tls.groups = optarg; break;
        case O_UP_CA: cfg->tls.upstream_ca = optarg; break;
        case O_UP_CERT: cfg->tls.upstream_cert = optarg; break;
        case O_UP_KEY: cfg->tls.upstream_key = optarg; break;
        case O_TLS_MATCH_CN: cfg->tls.user_must_match_cn = 1; break;
        case O_POLICY: cfg->policy_file = optarg; break;
        case O_TLS_IDENT_MAP:
            cfg->tls.ident_map = optarg;
            cfg->tls.user_must_match_cn = 1;
            break;
        case O_TLS_CLIENT_CERT:
            if (parse_choice("--tls-client-cert", optarg, client_cert_modes, &cfg->tls.client_cert))
                goto bad;
            client_cert_given = 1;
            break;
        case O_TLS_MIN:
            if (parse_choice("--tls-min-version", optarg, tls_versions, &choice))
                goto bad;
            cfg->tls.min_version = choice ? TLS1_3_VERSION : TLS1_2_VERSION;
            break;
        case O_UP_SSLMODE:
            if (parse_choice("--upstream-sslmode", optarg, sslmodes, &cfg->tls.upstream_sslmode))
                goto bad;
            break;
        case O_TLS_REQUIRE:
            require_all = 1;
            break;
        case O_TLS_REQUIRE_ON:
            if (nrequire == PGW_MAX_LISTEN) {
                fprintf(stderr, "pgwarden: at most %d --tls-require-on\n", PGW_MAX_LISTEN);
                goto bad;
            }
            require_args[nrequire++] = optarg;
            break;
        case O_METRICS:
            metrics_arg = optarg;
            break;
        case O_STARTUP_TIMEOUT:
            if (parse_number("--startup-timeout", optarg, 0, 86400, &v))
                goto bad;
            cfg->startup_timeout = v;
            break;
        case O_IDLE_TIMEOUT:
            if (parse_number("--idle-timeout", optarg, 0, 86400 * 365, &v))
                goto bad;
            cfg->idle_timeout = v;
            break;
        case O_MAX_CLIENTS:
            if (parse_number("--max-client-connections", optarg, 0, 10000000, &v))
                goto bad;
            cfg->max_clients = (unsigned)v;
            break;
        case O_MAX_PER_ADDR:
            if (parse_number("--max-connections-per-address", optarg, 0, 10000000, &v))
                goto bad;
            cfg->max_per_address = (unsigned)v;
            break;
        case O_MAX_PENDING:
            if (parse_number("--max-pending-bytes", optarg, 16384, 1u << 30, &v))
                goto bad;
            cfg->max_pending_bytes = (uint32_t)v;
            break;
        case O_LOGFORMAT:
            if (strcmp(optarg, "text") == 0) {
                cfg->log_format = PGW_LOG_TEXT;
            } else if (strcmp(optarg, "json") == 0) {
                cfg->log_format = PGW_LOG_JSON;
            } else {
                fprintf(stderr, "pgwarden: --log-format: \"%s\" is not text or json\n", optarg);
                goto bad;
            }
            break;
        case O_CONFIG:
            break;                  /* read before the scan */
        case O_CHECK:
            cfg->check_only = 1;
            break;
        case O_LIST:
            for (const struct option *o = opts; o->name; o++)
                if (!cmdline_only(o->val) || o->val == O_CHECK || o->val == O_CONFIG)
                    printf("%s\n", o->name);
            return 1;
        case O_HELP:
            fputs(usage, stdout);
            return 1;
        case O_VERSION:
            printf("pgwarden %s\n", PGW_VERSION);
            return 1;
        default:
            fprintf(stderr, "pgwarden: unknown or incomplete option \"%s\"\n%s", argv[optind - 1], usage);
            goto bad;
        }
        at = optind;
    }
    if (0) {
bad:
        if (origin[at] > 0)
            fprintf(stderr, "pgwarden: (option %s, %s line %d)\n", argv[at], path, origin[at]);
        return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "pgwarden: unexpected argument \"%s\"\n", argv[optind]);
        return -1;
    }
    if (cfg->nlisten == 0 || !upstream_arg) {
        fprintf(stderr, "pgwarden: --listen and --upstream are required\n%s", usage);
        return -1;
    }

    if (!cfg->kafka_brokers != !cfg->kafka_topic) {
        fprintf(stderr, "pgwarden: --kafka-brokers and --kafka-topic go together\n");
        return -1;
    }
    if (cfg->kafka_brokers && cfg->audit_file) {
        fprintf(stderr, "pgwarden: choose one audit sink: --audit-file or --kafka-brokers\n");
        return -1;
    }
    if (audit_opt && !cfg->audit_file) {
        fprintf(stderr, "pgwarden: %s needs --audit-file\n", audit_opt);
        return -1;
    }
    if (cfg->audit_max_bytes && cfg->audit_file && strcmp(cfg->audit_file, "-") == 0) {
        fprintf(stderr, "pgwarden: --audit-file-max-bytes: standard output cannot be rotated\n");
        return -1;
    }
    if (cfg->nkafka_props && !cfg->kafka_brokers) {
        fprintf(stderr, "pgwarden: --kafka-property needs --kafka-brokers and --kafka-topic\n");
        return -1;
    }
    if (cfg->spool_dir && !cfg->kafka_brokers && !cfg->audit_file) {
        fprintf(stderr, "pgwarden: --spool-dir needs an audit sink: --audit-file or --kafka-brokers\n");
        return -1;
    }
    if (cfg->spool_drop && !cfg->kafka_brokers) {
        fprintf(stderr, "pgwarden: --spool-full-policy drop needs the Kafka sink (the audit file's "
                        "spool always blocks)\n");
        return -1;
    }

    /* Unix listeners take the port of the first TCP listener, as PostgreSQL
     * names its socket after its port. */
    int unix_port = 5432;
    for (int i = 0; i < cfg->nlisten; i++) {
        if (listen_args[i][0] != '/') {
            const char *colon = strrchr(listen_args[i], ':');
            if (colon)
                unix_port = atoi(colon + 1);
            break;
        }
    }
    for (int i = 0; i < cfg->nlisten; i++)
        if (parse_endpoint(&cfg->listen[i], listen_args[i], 1, unix_port))
            return -1;
    if (parse_endpoint(&cfg->upstream, upstream_arg, 0, 0))
        return -1;
    if (metrics_arg) {
        snprintf(cfg->metrics_listen.text, sizeof cfg->metrics_listen.text, "%s", metrics_arg);
        int rc = parse_tcp(&cfg->metrics_listen, metrics_arg, 1);
        if (rc) {
            if (rc == -1)
                fprintf(stderr, "pgwarden: --metrics-listen: \"%s\" is not HOST:PORT\n", metrics_arg);
            return -1;
        }
        cfg->has_metrics = 1;
    }
    if (!client_cert_given && cfg->tls.client_ca)
        cfg->tls.client_cert = PGW_CLIENT_CERT_OPTIONAL;
    return check_tls(cfg, client_cert_given, require_all, require_args, nrequire);
}
