/* pgwarden: process start-up, signals and shutdown. The main thread owns a
 * small loop of its own for signals and the drain timer; the loop threads
 * (worker.c) do all the forwarding. */
#include <errno.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <arpa/inet.h>
#include <unistd.h>
#include <uv.h>

#include "config.h"
#include "log.h"
#include "conn_limits.h"
#include "metrics.h"
#include "policy.h"
#include "pgwarden/event.h"
#include "pgwarden/sink.h"
#include "tls.h"
#include "worker.h"

typedef struct proxy {
    pgw_config_t cfg;
    pgw_worker_t *workers;
    int nworkers;
    uv_loop_t loop;
    uv_signal_t sigint, sigterm;
    uv_timer_t drain_timer;
    uv_async_t done;
    int stopping;
    pgw_sink_t *sink;
    pgw_observer_info_t observer;
    pgw_tls_t tls;
    pgw_metrics_server_t *metrics;  /* NULL without --metrics-listen */
    int argc;                       /* the command line, read again on SIGHUP */
    char **argv;
    uv_signal_t sighup_reload;
    char *policy_file;              /* the rules file in force (malloc'ed); NULL: none */
} proxy_t;

/* SIGHUP: the configuration file and the command line are read again. What
 * can change at run time is applied (the log level); what needs a restart is
 * named in a warning and left as it was. A configuration with an error
 * changes nothing. */
static int same_str(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

/* The TLS options compared by value (the strings live in each parse's own
 * storage). */
static int same_tls(const pgw_tls_config_t *a, const pgw_tls_config_t *b)
{
    return same_str(a->cert, b->cert) && same_str(a->key, b->key) &&
           same_str(a->client_ca, b->client_ca) && a->client_cert == b->client_cert &&
           a->min_version == b->min_version && same_str(a->ciphers, b->ciphers) &&
           same_str(a->groups, b->groups) && same_str(a->ident_map, b->ident_map) &&
           a->user_must_match_cn == b->user_must_match_cn && a->upstream_sslmode == b->upstream_sslmode &&
           same_str(a->upstream_ca, b->upstream_ca) && same_str(a->upstream_cert, b->upstream_cert) &&
           same_str(a->upstream_key, b->upstream_key);
}

static void reload_config(proxy_t *p)
{
    pgw_config_t next;
    int rc = pgw_config_from_args(&next, p->argc, p->argv);
    if (rc != 0) {
        pgw_error("SIGHUP: the configuration has errors (see above): nothing changed");
        pgw_config_free(&next);
        return;
    }
    const pgw_config_t *cur = &p->cfg;
    if (next.log_level != cur->log_level) {
        pgw_info("SIGHUP: log level %s -> %s", pgw_log_level_name(cur->log_level),
                 pgw_log_level_name(next.log_level));
        pgw_log_level = next.log_level;
        p->cfg.log_level = next.log_level;
    }
    /* Limits, timeouts and audit options: for the next sessions and sweeps. */
    struct { const char *name; int changed; } now[] = {
        { "startup-timeout", next.startup_timeout != cur->startup_timeout },
        { "idle-timeout", next.idle_timeout != cur->idle_timeout },
        { "max-client-connections", next.max_clients != cur->max_clients },
        { "max-connections-per-address", next.max_per_address != cur->max_per_address },
        { "max-pending-bytes", next.max_pending_bytes != cur->max_pending_bytes },
        { "log-parameters", next.log_parameters != cur->log_parameters },
        { "parameter-max-bytes", next.parameter_max_bytes != cur->parameter_max_bytes },
        { "statement-max-bytes", next.statement_max_bytes != cur->statement_max_bytes },
    };
    for (size_t i = 0; i < sizeof now / sizeof now[0]; i++)
        if (now[i].changed)
            pgw_info("SIGHUP: %s changed (applies to new sessions)", now[i].name);
    pgw_limits_configure(&next);
    p->cfg.startup_timeout = next.startup_timeout;
    p->cfg.idle_timeout = next.idle_timeout;
    p->cfg.max_clients = next.max_clients;
    p->cfg.max_per_address = next.max_per_address;
    p->cfg.max_pending_bytes = next.max_pending_bytes;
    p->cfg.log_parameters = next.log_parameters;
    p->cfg.parameter_max_bytes = next.parameter_max_bytes;
    p->cfg.statement_max_bytes = next.statement_max_bytes;
    struct { const char *name; int changed; } fixed[] = {
        { "listen", next.nlisten != cur->nlisten ||
                    memcmp(next.listen, cur->listen, sizeof next.listen[0] * (size_t)next.nlisten) != 0 },
        { "upstream", strcmp(next.upstream.text, cur->upstream.text) != 0 },
        { "threads", next.threads != cur->threads },
        { "audit-file", (next.audit_file == NULL) != (cur->audit_file == NULL) ||
                        (next.audit_file && strcmp(next.audit_file, cur->audit_file) != 0) },
        { "audit-file-max-bytes", next.audit_max_bytes != cur->audit_max_bytes },
        { "audit-file-keep", next.audit_keep != cur->audit_keep },
        { "audit-file-fsync-ms", next.audit_fsync_ms != cur->audit_fsync_ms },
        { "metrics-listen", next.has_metrics != cur->has_metrics ||
                            strcmp(next.metrics_listen.text, cur->metrics_listen.text) != 0 },
        { "log-format", next.log_format != cur->log_format },
        { "kafka-brokers", !same_str(next.kafka_brokers, cur->kafka_brokers) },
        { "kafka-topic", !same_str(next.kafka_topic, cur->kafka_topic) },
        { "kafka-property", next.nkafka_props != cur->nkafka_props },
        { "spool-dir", !same_str(next.spool_dir, cur->spool_dir) },
        { "spool-max-bytes", next.spool_max_bytes != cur->spool_max_bytes },
        { "spool-full-policy", next.spool_drop != cur->spool_drop },
        { "max-message-size", next.max_message_size != cur->max_message_size },
        { "drain-timeout", next.drain_timeout != cur->drain_timeout },
        { "a TLS option (file contents are reloaded; paths and modes are not)",
          !same_tls(&next.tls, &cur->tls) },
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        if (fixed[i].changed)
            pgw_warn("SIGHUP: %s changed: it takes effect at the next restart", fixed[i].name);
    pgw_config_free(&next);
}

/* SIGHUP, the certificates: keys, certificates, CAs and the identity map
 * are read again from the paths the process started with; new handshakes
 * use them, established sessions keep theirs; a file that fails to load
 * leaves the current ones in service. */
static void reload_tls(proxy_t *p)
{
    char err[512];
    if (pgw_tls_reload(&p->tls, err, sizeof err))
        pgw_error("SIGHUP: keeping the current certificates: %s", err);
    else if (p->tls.cur)
        pgw_info("SIGHUP: certificates reloaded");
}

/* SIGHUP, the access policy: the rules file named by the configuration
 * just read is compiled whole; only a file without errors replaces the
 * rules in force (loop threads take it at their next iteration). */
static void reload_policy(proxy_t *p)
{
    pgw_config_t next;
    if (pgw_config_from_args(&next, p->argc, p->argv) != 0) {
        pgw_config_free(&next);
        return;                     /* reported by reload_config */
    }
    char err[512];
    pgw_policy_t *pol = NULL;
    if (next.policy_file && !(pol = pgw_policy_load(next.policy_file, err, sizeof err))) {
        pgw_error("SIGHUP: keeping the current access policy: %s", err);
        pgw_config_free(&next);
        return;
    }
    char *path = next.policy_file ? strdup(next.policy_file) : NULL;
    if (next.policy_file && !path) {
        pgw_error("SIGHUP: keeping the current access policy: out of memory");
        pgw_policy_unref(pol);
        pgw_config_free(&next);
        return;
    }
    if (pol)
        pgw_info("SIGHUP: access policy %s loaded: %u rules", path, pgw_policy_nrules(pol));
    else if (p->policy_file)
        pgw_info("SIGHUP: no policy-file any more: access policy removed");
    free(p->policy_file);
    p->policy_file = path;
    pgw_policy_publish(pol);
    pgw_config_free(&next);
}

static void on_sighup_reload(uv_signal_t *sig, int signum)
{
    proxy_t *p = sig->data;
    (void)signum;
    reload_config(p);
    reload_tls(p);
    reload_policy(p);
    /* After an external rotation (logrotate's postrotate): the audit file
     * is reopened at its path, between two events. */
    if (p->sink && p->cfg.audit_file && strcmp(p->cfg.audit_file, "-") != 0)
        (void)pgw_sink_reopen(p->sink);
}

static void observer_init(pgw_observer_info_t *o, const pgw_config_t *cfg)
{
    if (gethostname(o->host, sizeof o->host - 1))
        snprintf(o->host, sizeof o->host, "unknown");
    uint8_t id[16];
    pgw_event_id_new(id);
    pgw_uuid_format(id, o->instance);
    o->instance[36] = '\0';
    const pgw_endpoint_t *up = &cfg->upstream;
    if (up->is_unix) {
        snprintf(o->upstream_socket, sizeof o->upstream_socket, "%s", up->path);
    } else if (up->sa.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&up->sa;
        uv_ip6_name(a, o->upstream_ip, sizeof o->upstream_ip);
        o->upstream_port = ntohs(a->sin6_port);
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&up->sa;
        uv_ip4_name(a, o->upstream_ip, sizeof o->upstream_ip);
        o->upstream_port = ntohs(a->sin_port);
    }
}

/* ---- listening sockets, opened before any thread starts so that errors
 * reach the operator at once ---------------------------------------------- */

/* SO_REUSEPORT would let this process share the address with another one
 * listening there already (a second pgwarden left running), each taking a
 * share of the connections. A plain bind first refuses that. */
static int tcp_address_free(const pgw_endpoint_t *ep)
{
    int fd = socket(ep->sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ep->sa.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    int rc = bind(fd, (const struct sockaddr *)&ep->sa, ep->salen);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

static int open_tcp_listener(const pgw_endpoint_t *ep)
{
    int fd = socket(ep->sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* One socket per thread on the same address: the kernel spreads
     * incoming connections over the threads' accept queues. */
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (ep->sa.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, (const struct sockaddr *)&ep->sa, ep->salen) || listen(fd, 1024)) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* A socket file left by a dead process is removed; a live one is not. */
static int unix_path_in_use(const char *path)
{
    struct stat st;
    if (lstat(path, &st) || !S_ISSOCK(st.st_mode))
        return 0;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
    int live = connect(fd, (struct sockaddr *)&sun, sizeof sun) == 0;
    close(fd);
    if (!live)
        unlink(path);
    return live;
}

static int open_unix_listener(const pgw_endpoint_t *ep)
{
    if (unix_path_in_use(ep->path)) {
        errno = EADDRINUSE;
        return -1;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", ep->path);
    if (bind(fd, (struct sockaddr *)&sun, sizeof sun) || listen(fd, 1024)) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    chmod(ep->path, 0777);   /* like PostgreSQL's default unix_socket_permissions */
    return fd;
}

/* fds[worker][listener]; unix sockets are shared through dup(). */
static int open_listeners(const pgw_config_t *cfg, int nworkers, int (*fds)[PGW_MAX_LISTEN])
{
    for (int i = 0; i < cfg->nlisten; i++) {
        const pgw_endpoint_t *ep = &cfg->listen[i];
        for (int k = 0; k < nworkers; k++) {
            int fd;
            if (ep->is_unix)
                fd = k == 0 ? open_unix_listener(ep) : dup(fds[0][i]);
            else if (k == 0 && tcp_address_free(ep))
                fd = -1;
            else
                fd = open_tcp_listener(ep);
            if (fd < 0) {
                fprintf(stderr, "pgwarden: cannot listen on %s: %s\n",
                        ep->is_unix ? ep->path : ep->text, strerror(errno));
                return -1;
            }
            fds[k][i] = fd;
        }
        pgw_info("listening on %s", ep->is_unix ? ep->path : ep->text);
    }
    return 0;
}

/* ---- shutdown ------------------------------------------------------------ */

static void broadcast(proxy_t *p, int cmd)
{
    for (int i = 0; i < p->nworkers; i++)
        pgw_worker_command(&p->workers[i], cmd);
}

static void on_drain_timeout(uv_timer_t *t)
{
    proxy_t *p = t->data;
    pgw_warn("drain timeout (%gs) reached: closing the remaining sessions", p->cfg.drain_timeout);
    broadcast(p, PGW_CMD_FORCE);
}

static void on_signal(uv_signal_t *sig, int signum)
{
    proxy_t *p = sig->data;
    if (p->stopping) {
        pgw_warn("second %s: closing all sessions now", strsignal(signum));
        broadcast(p, PGW_CMD_FORCE);
        return;
    }
    p->stopping = 1;
    if (p->metrics)
        pgw_metrics_draining(p->metrics);
    pgw_info("%s: no longer accepting; draining sessions for up to %gs",
             strsignal(signum), p->cfg.drain_timeout);
    broadcast(p, PGW_CMD_DRAIN);
    if (p->sink)
        pgw_sink_unblock(p->sink);   /* no loop thread may stay stuck on a full sink */
    uv_timer_start(&p->drain_timer, on_drain_timeout, (uint64_t)(p->cfg.drain_timeout * 1000), 0);
}

static void on_worker_done(uv_async_t *a)
{
    proxy_t *p = a->data;
    /* Sends may coalesce: count the threads that have really finished. */
    int done = 0;
    for (int i = 0; i < p->nworkers; i++)
        done += atomic_load(&p->workers[i].finished);
    if (done < p->nworkers)
        return;
    uv_close((uv_handle_t *)&p->sigint, NULL);
    uv_close((uv_handle_t *)&p->sigterm, NULL);
    uv_close((uv_handle_t *)&p->sighup_reload, NULL);
    uv_close((uv_handle_t *)&p->drain_timer, NULL);
    uv_close((uv_handle_t *)&p->done, NULL);
    if (p->metrics)
        pgw_metrics_stop(p->metrics);
}

int main(int argc, char **argv)
{
    static proxy_t p;
    int rc = pgw_config_from_args(&p.cfg, argc, argv);
    if (rc) {
        pgw_config_free(&p.cfg);
        return rc > 0 ? 0 : 2;
    }
    pgw_log_level = p.cfg.log_level;
    pgw_log_format = p.cfg.log_format;
    p.argc = argc;
    p.argv = argv;
    pgw_limits_configure(&p.cfg);
    signal(SIGPIPE, SIG_IGN);

    /* The access policy: a rules file with an error stops the start. */
    if (p.cfg.policy_file) {
        char pol_err[512];
        pgw_policy_t *pol = pgw_policy_load(p.cfg.policy_file, pol_err, sizeof pol_err);
        if (!pol) {
            fprintf(stderr, "pgwarden: policy: %s\n", pol_err);
            pgw_config_free(&p.cfg);
            return 2;
        }
        p.policy_file = strdup(p.cfg.policy_file);
        pgw_info("access policy %s: %u rules", p.cfg.policy_file, pgw_policy_nrules(pol));
        pgw_policy_publish(pol);
    }

    p.nworkers = p.cfg.threads;
    p.workers = calloc((size_t)p.nworkers, sizeof *p.workers);
    int (*fds)[PGW_MAX_LISTEN] = calloc((size_t)p.nworkers, sizeof *fds);
    if (!p.workers || !fds) {
        fprintf(stderr, "pgwarden: out of memory\n");
        return 1;
    }
    /* Certificates first: a bad file stops the start before any socket opens. */
    char tls_err[512];
    if (pgw_tls_init(&p.tls, &p.cfg.tls, tls_err, sizeof tls_err)) {
        fprintf(stderr, "pgwarden: TLS: %s\n", tls_err);
        return 1;
    }
    /* Signals are caught from before the listeners open: a SIGTERM while
     * the sink starts (a long spool replay) waits in the loop and drains
     * once the threads run, instead of killing the process. */
    uv_loop_init(&p.loop);
    p.done.data = p.sigint.data = p.sigterm.data = p.drain_timer.data = &p;
    uv_async_init(&p.loop, &p.done, on_worker_done);
    uv_signal_init(&p.loop, &p.sigint);
    uv_signal_init(&p.loop, &p.sigterm);
    uv_timer_init(&p.loop, &p.drain_timer);
    uv_signal_start(&p.sigint, on_signal, SIGINT);
    uv_signal_start(&p.sigterm, on_signal, SIGTERM);
    p.sighup_reload.data = &p;
    uv_signal_init(&p.loop, &p.sighup_reload);
    uv_signal_start(&p.sighup_reload, on_sighup_reload, SIGHUP);
    if (open_listeners(&p.cfg, p.nworkers, fds))
        return 1;
    observer_init(&p.observer, &p.cfg);
    if (p.cfg.audit_file) {
        pgw_file_sink_config_t fc = {
            .path = p.cfg.audit_file,
            .max_bytes = p.cfg.audit_max_bytes,
            .keep = p.cfg.audit_keep,
            .fsync_interval_ms = p.cfg.audit_fsync_ms,
            .spool_dir = p.cfg.spool_dir,
            .spool_max_bytes = p.cfg.spool_max_bytes,
        };
        if (pgw_file_sink_open(&fc, &p.sink)) {
            fprintf(stderr, "pgwarden: cannot open the audit file %s\n", p.cfg.audit_file);
            return 1;
        }
        pgw_info("audit events to %s", strcmp(p.cfg.audit_file, "-") ? p.cfg.audit_file : "stdout");
    } else if (p.cfg.kafka_brokers) {
        pgw_kafka_sink_config_t kc = {
            .brokers = p.cfg.kafka_brokers,
            .topic = p.cfg.kafka_topic,
            .props = p.cfg.kafka_props,
            .nprops = (size_t)p.cfg.nkafka_props,
            .spool_dir = p.cfg.spool_dir,
            .spool_max_bytes = p.cfg.spool_max_bytes,
            .policy = p.cfg.spool_drop ? PGW_SPOOL_DROP : PGW_SPOOL_BLOCK,
            .observer_host = p.observer.host,
            .observer_instance = p.observer.instance,
        };
        if (pgw_kafka_sink_open(&kc, &p.sink)) {
            fprintf(stderr, "pgwarden: cannot start the Kafka sink (see the log above)\n");
            return 1;
        }
    }

    /* Before the loop threads: the endpoint is up once the listeners are.
     * Nothing is scraped before uv_run, when the workers are ready. */
    if (p.cfg.has_metrics &&
        pgw_metrics_start(&p.loop, &p.cfg, p.workers, p.nworkers, p.sink, &p.metrics))
        return 1;
    for (int i = 0; i < p.nworkers; i++) {
        if (pgw_worker_init(&p.workers[i], i, &p.cfg, fds[i], &p.done, p.sink, &p.observer)) {
            fprintf(stderr, "pgwarden: cannot start loop thread %d\n", i);
            return 1;
        }
        p.workers[i].tls = &p.tls;
        if (pgw_worker_start(&p.workers[i])) {
            fprintf(stderr, "pgwarden: cannot start loop thread %d\n", i);
            return 1;
        }
    }
    free(fds);
    pgw_info("pgwarden %s: %d thread(s), upstream %s%s%s", PGW_VERSION, p.nworkers,
             p.cfg.upstream.text, p.cfg.upstream.is_unix ? " -> " : "",
             p.cfg.upstream.is_unix ? p.cfg.upstream.path : "");

    uv_run(&p.loop, UV_RUN_DEFAULT);

    for (int i = 0; i < p.nworkers; i++) {
        uv_thread_join(&p.workers[i].thread);
        pgw_worker_destroy(&p.workers[i]);
    }
    for (int i = 0; i < p.cfg.nlisten; i++)
        if (p.cfg.listen[i].is_unix)
            unlink(p.cfg.listen[i].path);
    if (p.sink)
        pgw_sink_close(p.sink);   /* writes what the threads handed over */
    uv_loop_close(&p.loop);
    pgw_tls_destroy(&p.tls);
    pgw_policy_publish(NULL);
    free(p.policy_file);
    if (p.metrics)
        pgw_metrics_free(p.metrics);
    free(p.workers);
    pgw_info("stopped");
    pgw_config_free(&p.cfg);
    return rc;
}
