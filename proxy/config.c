#include "config.h"
#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
"  --audit-file PATH|-      write audit events as JSON lines to PATH, or to stdout\n"
"  --log-parameters         put Bind parameter values into statement events (default: count only)\n"
"  --parameter-max-bytes N  cut each logged value at N bytes (default 1024)\n"
"  --metrics-listen HOST:PORT  serve /metrics (Prometheus), /healthz and /readyz over HTTP\n"
"  --threads N              event-loop threads (default: online CPUs)\n"
"  --drain-timeout SECONDS  on SIGTERM/SIGINT, how long sessions may finish (default 30)\n"
"  --max-message-size BYTES largest accepted protocol message (default 1073741824)\n"
"  --log-level LEVEL        error, warn, info (default) or debug\n"
"  --help                   this text\n"
"  --version                the version\n";

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

int pgw_config_from_args(pgw_config_t *cfg, int argc, char **argv)
{
    enum { O_LISTEN = 256, O_UPSTREAM, O_THREADS, O_DRAIN, O_MAXMSG, O_LOGLEVEL, O_HELP, O_VERSION,
           O_AUDIT_FILE, O_LOG_PARAMS, O_PARAM_MAX, O_METRICS };
    static const struct option opts[] = {
        { "listen", required_argument, NULL, O_LISTEN },
        { "upstream", required_argument, NULL, O_UPSTREAM },
        { "threads", required_argument, NULL, O_THREADS },
        { "drain-timeout", required_argument, NULL, O_DRAIN },
        { "max-message-size", required_argument, NULL, O_MAXMSG },
        { "log-level", required_argument, NULL, O_LOGLEVEL },
        { "audit-file", required_argument, NULL, O_AUDIT_FILE },
        { "log-parameters", no_argument, NULL, O_LOG_PARAMS },
        { "parameter-max-bytes", required_argument, NULL, O_PARAM_MAX },
        { "metrics-listen", required_argument, NULL, O_METRICS },
        { "help", no_argument, NULL, O_HELP },
        { "version", no_argument, NULL, O_VERSION },
        { NULL, 0, NULL, 0 },
    };
    const char *listen_args[PGW_MAX_LISTEN];
    const char *upstream_arg = NULL, *metrics_arg = NULL;
    double v;

    memset(cfg, 0, sizeof *cfg);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    cfg->threads = ncpu > 0 ? (int)ncpu : 1;
    cfg->drain_timeout = 30;
    cfg->max_message_size = 1u << 30;
    cfg->log_level = PGW_LOG_INFO;
    cfg->parameter_max_bytes = 1024;

    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case O_LISTEN:
            if (cfg->nlisten == PGW_MAX_LISTEN) {
                fprintf(stderr, "pgwarden: at most %d --listen\n", PGW_MAX_LISTEN);
                return -1;
            }
            listen_args[cfg->nlisten++] = optarg;
            break;
        case O_UPSTREAM:
            upstream_arg = optarg;
            break;
        case O_THREADS:
            if (parse_number("--threads", optarg, 1, 256, &v))
                return -1;
            cfg->threads = (int)v;
            break;
        case O_DRAIN:
            if (parse_number("--drain-timeout", optarg, 0, 86400, &v))
                return -1;
            cfg->drain_timeout = v;
            break;
        case O_MAXMSG:
            if (parse_number("--max-message-size", optarg, 1024, 1u << 30, &v))
                return -1;
            cfg->max_message_size = (uint32_t)v;
            break;
        case O_LOGLEVEL:
            cfg->log_level = pgw_log_parse_level(optarg);
            if (cfg->log_level < 0) {
                fprintf(stderr, "pgwarden: --log-level: \"%s\" is not error, warn, info or debug\n", optarg);
                return -1;
            }
            break;
        case O_AUDIT_FILE:
            if (!*optarg) {
                fprintf(stderr, "pgwarden: --audit-file needs a path, or - for stdout\n");
                return -1;
            }
            cfg->audit_file = optarg;
            break;
        case O_LOG_PARAMS:
            cfg->log_parameters = 1;
            break;
        case O_PARAM_MAX:
            if (parse_number("--parameter-max-bytes", optarg, 1, 1u << 20, &v))
                return -1;
            cfg->parameter_max_bytes = (uint32_t)v;
            break;
        case O_METRICS:
            metrics_arg = optarg;
            break;
        case O_HELP:
            fputs(usage, stdout);
            return 1;
        case O_VERSION:
            printf("pgwarden %s\n", PGW_VERSION);
            return 1;
        default:
            fprintf(stderr, "pgwarden: unknown or incomplete option \"%s\"\n%s", argv[optind - 1], usage);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "pgwarden: unexpected argument \"%s\"\n", argv[optind]);
        return -1;
    }
    if (cfg->nlisten == 0 || !upstream_arg) {
        fprintf(stderr, "pgwarden: --listen and --upstream are required\n%s", usage);
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
    return 0;
}
