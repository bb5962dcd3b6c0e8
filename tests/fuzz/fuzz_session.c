/* libFuzzer target: a whole session in-process.
 *
 * One worker (proxy/worker.c) with the audit on (a file sink to a scratch
 * file, Bind values logged) lives for the whole run; its loop is driven here with
 * uv_run(UV_RUN_NOWAIT), never by a thread of its own. For each input a
 * client connects to the worker's unix listener, and a scripted fake
 * PostgreSQL accepts on the upstream unix socket: it answers whatever first
 * packet it gets with AuthenticationOk, ParameterStatus, BackendKeyData and
 * ReadyForQuery (unless the input says not to), closes CancelRequest
 * connections, and otherwise replays server bytes from the input.
 *
 * Input: byte 0 holds flags (bit 0: no scripted handshake), then records
 *   [ctl][len lo][len hi][len bytes]
 * ctl bit 0: 0 = client bytes, 1 = server bytes; bits 1-3: loop turns to
 * run after the write (0-7); bit 4: then that side shuts down its writing
 * half (EOF); bit 5: then that side closes at once. At the end the client
 * closes. The session (and any parse job or cancel forwarder it started)
 * must then end within a time budget, or the target aborts: a session that
 * outlives both its peers is a leak. Then its audit trail is read back:
 * every line one valid JSON object (tests/unit/json_validate.h), session.seq
 * exactly 1..n (nothing lost, nothing invented), and a session that started
 * ends with exactly one session_end, last; an auth_failure is last too.
 * ASan/LSan and UBSan watch the rest.
 *
 * Byte 0 bit 1: max_message_size 1024 instead of 1 MiB; bit 2: Bind values
 * not logged.
 *
 * Each turn does the same things in the same order, and unix sockets
 * deliver at once, so an input replays the same way. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "json_validate.h"
#include "log.h"
#include "pgwarden/protocol.h"
#include "pgwarden/sink.h"
#include "worker.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_MAX_INPUT (64 * 1024)
#define MAX_BACKENDS 4
#define END_BUDGET_NS (5ull * 1000000000ull)   /* a session must end in this */

typedef struct obuf { uint8_t *p; size_t len, off; } obuf_t;

typedef struct peer {
    int fd;                 /* -1: none */
    int greeted;            /* backend: the first packet was answered */
    int eof_sent;
    size_t got;
    uint8_t first[8];
    obuf_t out;             /* bytes still to write */
} peer_t;

static struct {
    int ready;
    char dir[64];
    char audit_path[128];
    pgw_config_t cfg;
    pgw_observer_info_t observer;
    pgw_sink_t *sink;
    pgw_worker_t w;
    int upstream_fd;        /* the fake server's listening socket */
    peer_t client;
    peer_t backends[MAX_BACKENDS];
    int nbackends;
    peer_t *server;         /* the backend the session talks to */
    obuf_t to_server;       /* server bytes before that backend exists */
    int no_handshake;
} F;

static void die(const char *what)
{
    fprintf(stderr, "fuzz_session: %s: %s\n", what, strerror(errno));
    abort();
}

static int listen_unix(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    unlink(path);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, 64))
        die("bind/listen");
    return fd;
}

/* The scratch directory goes at exit (not after a crash: it helps then). */
static void cleanup(void)
{
    char p[160];
    const char *names[] = { ".s.PGSQL.5432", ".s.PGSQL.5433", "audit.jsonl" };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", F.dir, names[i]);
        unlink(p);
    }
    rmdir(F.dir);
}

static void setup(void)
{
    static char lpath[128], upath[128], apath[128];
    static char a0[] = "pgwarden", a1[] = "--listen", a3[] = "--upstream", a5[] = "--audit-file",
                a7[] = "--log-parameters", a8[] = "--parameter-max-bytes", a9[] = "64",
                a10[] = "--threads", a11[] = "1", a12[] = "--log-level", a13[] = "error";
    char *argv[] = { a0, a1, lpath, a3, upath, a5, apath, a7, a8, a9, a10, a11, a12, a13, NULL };
    int lfd;

    signal(SIGPIPE, SIG_IGN);       /* as main() does: a peer gone is an error, not a death */
    snprintf(F.dir, sizeof F.dir, "/tmp/pgw-fuzz-session.XXXXXX");
    if (!mkdtemp(F.dir))
        die("mkdtemp");
    atexit(cleanup);
    snprintf(lpath, sizeof lpath, "%s/.s.PGSQL.5432", F.dir);
    snprintf(upath, sizeof upath, "%s/.s.PGSQL.5433", F.dir);
    snprintf(apath, sizeof apath, "%s/audit.jsonl", F.dir);
    snprintf(F.audit_path, sizeof F.audit_path, "%s", apath);

    /* Through the real parser, so that every option has its default. */
    optind = 0;
    if (pgw_config_from_args(&F.cfg, (int)(sizeof argv / sizeof argv[0]) - 1, argv) != 0)
        die("config");
    pgw_log_level = getenv("PGW_FUZZ_DEBUG") ? PGW_LOG_DEBUG : PGW_LOG_ERROR;   /* to reproduce */
    snprintf(F.observer.host, sizeof F.observer.host, "fuzz");
    snprintf(F.observer.instance, sizeof F.observer.instance, "00000000-0000-7000-8000-000000000000");
    snprintf(F.observer.upstream_socket, sizeof F.observer.upstream_socket, "%s", upath);

    pgw_file_sink_config_t fc = { .path = F.audit_path };
    if (pgw_file_sink_open(&fc, &F.sink))
        die("file sink");
    lfd = listen_unix(lpath);
    F.upstream_fd = listen_unix(upath);
    if (pgw_worker_init(&F.w, 0, &F.cfg, &lfd, NULL, F.sink, &F.observer))
        die("worker init");
    F.ready = 1;
}

static void obuf_add(obuf_t *o, const void *p, size_t n)
{
    if (!n)
        return;
    uint8_t *g = realloc(o->p, o->len + n);
    if (!g)
        abort();
    memcpy(g + o->len, p, n);
    o->p = g;
    o->len += n;
}

static void obuf_free(obuf_t *o)
{
    free(o->p);
    memset(o, 0, sizeof *o);
}

static void peer_close(peer_t *p)
{
    if (p->fd >= 0)
        close(p->fd);
    p->fd = -1;
    obuf_free(&p->out);
}

/* Writes what the socket takes now; a peer that went away drops the rest. */
static void peer_flush(peer_t *p)
{
    while (p->fd >= 0 && p->out.off < p->out.len) {
        ssize_t n = send(p->fd, p->out.p + p->out.off, p->out.len - p->out.off, MSG_NOSIGNAL);
        if (n > 0) {
            p->out.off += (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        } else {
            obuf_free(&p->out);
            return;
        }
    }
    if (p->out.off == p->out.len)
        obuf_free(&p->out);
}

/* The scripted server's greeting: AuthenticationOk, one ParameterStatus,
 * BackendKeyData, ReadyForQuery (idle). */
static void greet(peer_t *p)
{
    static const uint8_t hello[] = {
        'R', 0, 0, 0, 8, 0, 0, 0, 0,
        'S', 0, 0, 0, 24, 's', 'e', 'r', 'v', 'e', 'r', '_', 'v', 'e', 'r', 's', 'i', 'o', 'n', 0,
        '1', '5', '.', '4', 0,
        'K', 0, 0, 0, 12, 0, 0, 0x30, 0x39, 0x12, 0x34, 0x56, 0x78,
        'Z', 0, 0, 0, 5, 'I',
    };
    if (!F.no_handshake)
        obuf_add(&p->out, hello, sizeof hello);
}

/* Reads and drops what a peer received; tracks a backend's first packet. */
static void peer_drain(peer_t *p, int backend)
{
    uint8_t buf[16384];
    while (p->fd >= 0) {
        ssize_t n = recv(p->fd, buf, sizeof buf, 0);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            peer_close(p);      /* EOF or reset: the other end is gone */
            return;
        }
        if (backend && p->got < 8) {
            size_t k = 8 - p->got < (size_t)n ? 8 - p->got : (size_t)n;
            memcpy(p->first + p->got, buf, k);
        }
        p->got += (size_t)n;
        if (backend && !p->greeted && p->got >= 8) {
            uint32_t code = (uint32_t)p->first[4] << 24 | (uint32_t)p->first[5] << 16
                            | (uint32_t)p->first[6] << 8 | p->first[7];
            p->greeted = 1;
            if (code == PGW_CODE_CANCEL) {
                peer_close(p);  /* as PostgreSQL: act, then close */
                return;
            }
            greet(p);
            if (!F.server) {
                F.server = p;
                obuf_add(&p->out, F.to_server.p, F.to_server.len);
                obuf_free(&F.to_server);
            }
        }
    }
}

static void turn(void)
{
    uv_run(&F.w.loop, UV_RUN_NOWAIT);
    while (F.nbackends < MAX_BACKENDS) {
        int fd = accept4(F.upstream_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            break;
        peer_t *p = &F.backends[F.nbackends++];
        memset(p, 0, sizeof *p);
        p->fd = fd;
    }
    peer_drain(&F.client, 0);
    peer_flush(&F.client);
    for (int i = 0; i < F.nbackends; i++) {
        peer_drain(&F.backends[i], 1);
        peer_flush(&F.backends[i]);
    }
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int session_over(void)
{
    return F.w.nsessions == 0 && F.w.nhelpers == 0;
}

/* Turns until the session is gone; aborts past the budget. */
static void run_out(void)
{
    uint64_t start = now_ns();
    unsigned idle = 0;
    while (!session_over()) {
        turn();
        if (++idle > 64)
            usleep(100);    /* a parse job on the thread pool, most likely */
        if (now_ns() - start > END_BUDGET_NS) {
            fprintf(stderr, "fuzz_session: the session did not end (sessions %u, helpers %u)\n",
                    F.w.nsessions, F.w.nhelpers);
            abort();
        }
    }
}

static void side_end(peer_t *p, int how)
{
    if (p->fd < 0)
        return;
    if (how == 2) {
        peer_close(p);
    } else if (!p->eof_sent) {
        peer_flush(p);
        shutdown(p->fd, SHUT_WR);
        p->eof_sent = 1;
    }
}

/* The value after "key": in a line, or NULL. A key can only match where
 * the quotes are unescaped, so never inside a string value. */
static const char *field(const char *line, size_t n, const char *key)
{
    size_t kl = strlen(key);
    for (const char *p = line; p + kl <= line + n; p++) {
        p = memchr(p, '"', (size_t)(line + n - p));
        if (!p || p + kl > line + n)
            return NULL;
        if (memcmp(p, key, kl) == 0 && (p[-1] == '{' || p[-1] == ','))
            return p + kl;
    }
    return NULL;
}

static void audit_fail(const char *why, const char *log, size_t n)
{
    fprintf(stderr, "fuzz_session: audit trail: %s\n%.*s\n", why, (int)(n > 20000 ? 20000 : n), log);
    abort();
}

#define MAX_EVENTS 4096

/* Reads this input's audit trail back and empties the file. */
static void check_audit(void)
{
    static uint8_t seen[MAX_EVENTS + 1];
    char *log;
    size_t n = 0, cap = 1 << 16;
    ssize_t got;
    int fd;

    pgw_sink_producer_flush(&F.w.producer);
    if (pgw_sink_flush(F.sink, 5000))
        audit_fail("the sink did not flush", "", 0);
    fd = open(F.audit_path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        die("open audit");
    log = malloc(cap);
    while ((got = read(fd, log + n, cap - n)) > 0) {
        n += (size_t)got;
        if (n == cap)
            log = realloc(log, cap *= 2);
    }
    if (ftruncate(fd, 0))
        die("ftruncate");
    close(fd);

    uint64_t count = 0, max_seq = 0, start_seq = 0, end_seq = 0, fail_seq = 0;
    unsigned starts = 0, ends = 0, fails = 0, session_events = 0;
    memset(seen, 0, sizeof seen);
    for (size_t off = 0; off < n;) {
        const char *line = log + off;
        const char *nl = memchr(line, '\n', n - off);
        if (!nl)
            audit_fail("a line without its newline", log, n);
        size_t len = (size_t)(nl - line) + 1;
        const char *err = jv_check_line(line, len);
        if (err)
            audit_fail(err, line, len);
        off += len;
        count++;

        const char *kind = field(line, len, "\"kind\":\"");
        const char *seqp = field(line, len, "\"seq\":");
        if (!kind)
            audit_fail("no kind", line, len);
        if (!seqp)
            continue;       /* not part of a session's sequence */
        uint64_t seq = strtoull(seqp, NULL, 10);
        if (seq == 0 || seq > MAX_EVENTS || seen[seq])
            audit_fail("session.seq out of range or repeated", log, n);
        seen[seq] = 1;
        session_events++;
        if (seq > max_seq)
            max_seq = seq;
        if (!strncmp(kind, "session_start\"", 14)) {
            starts++;
            start_seq = seq;
        } else if (!strncmp(kind, "session_end\"", 12)) {
            ends++;
            end_seq = seq;
        } else if (!strncmp(kind, "auth_failure\"", 13)) {
            fails++;
            fail_seq = seq;
        }
    }
    if (session_events != max_seq)
        audit_fail("session.seq has a gap (an event lost)", log, n);
    if (starts > 1 || ends > 1 || fails > 1)
        audit_fail("more than one session_start, session_end or auth_failure", log, n);
    if (starts && start_seq != 1)
        audit_fail("session_start is not the first event", log, n);
    if (starts && !fails && (ends != 1 || end_seq != max_seq))
        audit_fail("a started session without session_end last", log, n);
    if (!starts && ends)
        audit_fail("session_end without session_start", log, n);
    if (fails && (fail_seq != max_seq || ends))
        audit_fail("events after auth_failure", log, n);
    if (session_events && !starts && !fails)
        audit_fail("events of a session that never started", log, n);
    free(log);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };

    if (size < 1 || size > FUZZ_MAX_INPUT)
        return 0;
    if (!F.ready)
        setup();
    F.no_handshake = data[0] & 1;
    F.cfg.max_message_size = data[0] & 2 ? 1024 : 1u << 20;   /* read at accept */
    F.cfg.log_parameters = !(data[0] & 4);
    data++;
    size--;

    F.client.fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (F.client.fd < 0)
        die("socket");
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", F.cfg.listen[0].path);
    if (connect(F.client.fd, (struct sockaddr *)&sa, sizeof sa))
        die("connect");
    turn();

    while (size >= 3) {
        uint8_t ctl = data[0];
        size_t n = (size_t)data[1] | (size_t)data[2] << 8;
        data += 3;
        size -= 3;
        if (n > size)
            n = size;
        if (ctl & 1) {
            if (F.server)
                obuf_add(&F.server->out, data, n);
            else
                obuf_add(&F.to_server, data, n);
        } else if (F.client.fd >= 0 && !F.client.eof_sent) {
            obuf_add(&F.client.out, data, n);
        }
        data += n;
        size -= n;
        turn();
        for (unsigned t = (ctl >> 1) & 7; t > 0; t--)
            turn();
        if (ctl & 0x30) {
            int how = ctl & 0x20 ? 2 : 1;
            if (ctl & 1) {
                if (F.server)
                    side_end(F.server, how);
            } else {
                side_end(&F.client, how);
            }
            turn();
        }
    }

    /* The client leaves; the session must follow, whatever state it is in. */
    peer_close(&F.client);
    run_out();
    check_audit();
    for (int i = 0; i < F.nbackends; i++)
        peer_close(&F.backends[i]);
    turn();
    F.nbackends = 0;
    F.server = NULL;
    obuf_free(&F.to_server);
    memset(&F.client, 0, sizeof F.client);
    F.client.fd = -1;
    return 0;
}
