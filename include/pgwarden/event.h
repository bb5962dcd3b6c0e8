/* The in-memory audit event (schema v1, ../shared/EVENTS.md) and event ids.
 *
 * pgw_event_t is a plain struct that the statement tracker fills and hands
 * to pgw_event_encode() (pgwarden/json.h) or pgw_sink_emit()
 * (pgwarden/sink.h). It owns nothing: every string and array is borrowed
 * from the caller and must stay valid for the duration of that one call.
 *
 * "Absent" (the field is omitted from the JSON) is the zero value of every
 * optional field, so `pgw_event_t ev = {0}` (or pgw_event_init) is an event
 * with nothing but its kind, and fields are set as they become known:
 *   - strings (pgw_str_t): absent when ptr == NULL; {"", 0} is the empty
 *     string, which is meaningful (the unnamed statement is "");
 *   - arrays: absent when the pointer is NULL; a non-NULL pointer with a
 *     count of 0 is an empty array;
 *   - integers that may legitimately be 0 (rows, bytes, ...): pgw_optint_t,
 *     set with PGW_INT(x);
 *   - ports and PIDs: 0 means absent (never a valid value);
 *   - booleans: pgw_optbool_t, set with PGW_BOOL(x);
 *   - enums: value 0 is absent.
 * An object whose fields are all absent is omitted as a whole.
 * Nothing is ever encoded as null except a NULL parameter value, which
 * EVENTS.md lists as nullable. */
#ifndef PGWARDEN_EVENT_H
#define PGWARDEN_EVENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define PGW_EVENT_SCHEMA_VERSION 1

typedef struct pgw_str {
    const char *ptr;       /* NULL: absent; need not be NUL-terminated */
    size_t len;
} pgw_str_t;

#define PGW_STR_LIT(s) ((pgw_str_t){ "" s, sizeof(s) - 1 })
static inline pgw_str_t pgw_str(const void *p, size_t n)
{
    return (pgw_str_t){ (const char *)p, n };
}
/* A NUL-terminated string; NULL stays absent. */
static inline pgw_str_t pgw_cstr(const char *s)
{
    return (pgw_str_t){ s, s ? strlen(s) : 0 };
}

typedef struct pgw_optint {
    bool set;
    int64_t v;
} pgw_optint_t;
#define PGW_INT(x) ((pgw_optint_t){ .set = true, .v = (int64_t)(x) })

typedef enum pgw_optbool { PGW_BOOL_ABSENT = 0, PGW_BOOL_FALSE, PGW_BOOL_TRUE } pgw_optbool_t;
#define PGW_BOOL(x) ((x) ? PGW_BOOL_TRUE : PGW_BOOL_FALSE)

typedef enum pgw_event_kind {
    PGW_EVENT_NONE = 0,          /* invalid: encoding refuses it */
    PGW_EVENT_SESSION_START,
    PGW_EVENT_AUTH_FAILURE,
    PGW_EVENT_STATEMENT,
    PGW_EVENT_DENIED,
    PGW_EVENT_CANCEL,
    PGW_EVENT_SESSION_END,
    PGW_EVENT_AUDIT_GAP,
    PGW_EVENT_KIND_COUNT
} pgw_event_kind_t;

/* pgAudit's classes, 1..7 in pgAudit's order: the same values as
 * pgw_audit_class_t of pgwarden/analysis.h, so a cast converts. */
typedef enum pgw_stmt_class {
    PGW_STMT_CLASS_ABSENT = 0,
    PGW_STMT_CLASS_READ, PGW_STMT_CLASS_WRITE, PGW_STMT_CLASS_FUNCTION, PGW_STMT_CLASS_ROLE,
    PGW_STMT_CLASS_DDL, PGW_STMT_CLASS_MISC, PGW_STMT_CLASS_MISC_SET,
    PGW_STMT_CLASS_COUNT
} pgw_stmt_class_t;

typedef enum pgw_stmt_protocol {
    PGW_PROTOCOL_ABSENT = 0,
    PGW_PROTOCOL_SIMPLE, PGW_PROTOCOL_EXTENDED, PGW_PROTOCOL_FUNCTION_CALL,
    PGW_PROTOCOL_COUNT
} pgw_stmt_protocol_t;

typedef enum pgw_result_status {
    PGW_STATUS_ABSENT = 0,
    PGW_STATUS_OK, PGW_STATUS_ERROR, PGW_STATUS_CANCELLED, PGW_STATUS_SKIPPED,
    PGW_STATUS_UNKNOWN,
    PGW_STATUS_COUNT
} pgw_result_status_t;

/* Not the same values as analysis.h's pgw_access_t: 0 here is absent. */
typedef enum pgw_obj_access {
    PGW_OBJ_ACCESS_ABSENT = 0, PGW_OBJ_ACCESS_READ, PGW_OBJ_ACCESS_WRITE,
    PGW_OBJ_ACCESS_COUNT
} pgw_obj_access_t;

typedef enum pgw_copy_dir { PGW_COPY_ABSENT = 0, PGW_COPY_IN, PGW_COPY_OUT,
                            PGW_COPY_COUNT } pgw_copy_dir_t;

typedef enum pgw_end_reason {
    PGW_END_ABSENT = 0,
    PGW_END_CLIENT_CLOSED, PGW_END_SERVER_CLOSED, PGW_END_ERROR, PGW_END_SHUTDOWN,
    PGW_END_TIMEOUT,
    PGW_END_COUNT
} pgw_end_reason_t;

/* The JSON spellings, for logs and tests. NULL for absent or out of range. */
const char *pgw_event_kind_name(pgw_event_kind_t k);

typedef struct pgw_event_observer {
    pgw_str_t host;              /* gethostname() */
    pgw_str_t instance;          /* unique per running proxy (a UUID made at start) */
    pgw_str_t version;           /* PGW_VERSION */
} pgw_event_observer_t;

/* client / server: ip + port for TCP, socket (the path) for unix sockets. */
typedef struct pgw_event_peer {
    pgw_str_t ip;                /* textual address, e.g. "127.0.0.1", "::1" */
    uint16_t port;               /* 0: absent */
    pgw_str_t socket;
    pgw_str_t application;       /* client only: application_name */
} pgw_event_peer_t;

typedef struct pgw_event_cert {
    pgw_str_t subject, cn, issuer;
    pgw_str_t serial;            /* hex, as the certificate has it */
    pgw_str_t sha256;            /* 64 lowercase hex digits, no colons */
    const pgw_str_t *san;        /* subjectAltName entries; NULL: absent */
    size_t nsan;
    pgw_optint_t not_before;     /* seconds since the epoch; encoded RFC 3339 */
    pgw_optint_t not_after;
} pgw_event_cert_t;

typedef struct pgw_event_object {  /* a relation a statement references */
    pgw_str_t schema;            /* absent when the name was not qualified */
    pgw_str_t name;
    pgw_str_t type;              /* e.g. "table", "view", "function" */
    pgw_obj_access_t access;
} pgw_event_object_t;

typedef struct pgw_event_param { /* one Bind parameter value */
    const void *ptr;
    size_t len;
    bool is_null;                /* SQL NULL: encoded as null */
    bool binary;                 /* binary format: encoded base64 */
} pgw_event_param_t;

typedef struct pgw_event_statement {
    pgw_str_t text;
    pgw_optbool_t redacted, truncated;
    bool has_fingerprint;
    uint64_t fingerprint;        /* libpg_query's; encoded as 16 hex digits */
    pgw_str_t command;           /* "SELECT", "CREATE TABLE", ... */
    pgw_stmt_class_t class_;
    const pgw_event_object_t *objects;  /* NULL: absent; non-NULL, 0: [] */
    size_t nobjects;
    pgw_stmt_protocol_t protocol;
    pgw_str_t statement_name, portal_name;
    pgw_optint_t index, count;   /* within a multi-statement Query */
    pgw_optint_t param_count;    /* params.count; defaults to nparam_values */
    const pgw_event_param_t *param_values;  /* NULL: values not logged */
    size_t nparam_values;
    pgw_str_t parse_error;
    /* Optional: text to objects already encoded by
     * pgw_event_encode_statement_analysis (a prepared statement's are the
     * same at every execution); those fields are then not read. */
    pgw_str_t analysis_json;
} pgw_event_statement_t;

typedef struct pgw_event_result {
    pgw_result_status_t status;
    pgw_str_t tag;               /* CommandComplete tag */
    pgw_optint_t rows, bytes;
    pgw_str_t sqlstate, message; /* ErrorResponse */
    pgw_optint_t duration_us;
} pgw_event_result_t;

typedef struct pgw_event_copy {
    pgw_copy_dir_t direction;
    pgw_optint_t rows, bytes;
} pgw_event_copy_t;

typedef struct pgw_event {
    pgw_event_kind_t kind;
    uint8_t event_id[16];        /* a UUIDv7: see pgw_uuid7_next */
    int64_t time_us;             /* µs since the epoch: receipt of the message that started it */

    /* Common to every kind (absent parts are omitted). */
    pgw_event_observer_t observer;
    struct {
        pgw_str_t id;            /* unique across proxies and restarts */
        uint64_t seq;            /* 1, 2, 3... per session; 0: absent */
        int32_t backend_pid;     /* 0: not known yet */
    } session;
    pgw_event_peer_t client;
    pgw_event_peer_t server;
    struct {
        pgw_str_t name, database;
        const pgw_event_cert_t *cert;  /* NULL: no client certificate */
    } user;
    struct {
        pgw_str_t version, cipher;     /* absent: the client leg is not TLS */
    } tls;
    /* Optional: observer, client, server, user and tls already encoded by
     * pgw_event_encode_identity() (pgwarden/json.h). They do not change
     * during a session, so a session encodes them once and every later
     * event copies the bytes (a third less time for a statement event). The
     * bytes are trusted as they are: only pass what that function wrote.
     * When set, the five fields above are ignored. */
    pgw_str_t identity_json;
    /* Optional: the event's head already encoded, every field before
     * `result` (pgw_event_encode_head_len tells where it ends): a durable
     * sink's completion copies it from its begin record, which had the same
     * id, time, session, identity and statement. Trusted as it is; when set,
     * everything the head covers is ignored. */
    pgw_str_t head_json;

    /* statement and denied */
    pgw_event_statement_t statement;
    /* statement, denied, auth_failure */
    pgw_event_result_t result;
    /* statement (COPY) */
    pgw_event_copy_t copy;

    /* session_start (auth_method also on auth_failure) */
    pgw_str_t server_version, auth_method;
    /* denied */
    pgw_str_t rule;
    pgw_optbool_t enforced;      /* false: a dry-run rule (recorded, not refused) */
    /* cancel: the session the CancelRequest targeted, if known */
    struct {
        pgw_str_t session_id;
        int32_t backend_pid;     /* 0: absent */
    } target;
    /* session_end */
    struct {
        pgw_end_reason_t reason;
        pgw_optint_t duration_us, statements, errors, bytes_in, bytes_out;
    } end;
    /* audit_gap */
    struct {
        pgw_optint_t dropped;
        pgw_optint_t from_us, to_us;   /* µs since the epoch */
    } gap;
} pgw_event_t;

/* Microseconds since the epoch, CLOCK_REALTIME. */
static inline int64_t pgw_event_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- event ids: UUIDv7 (RFC 9562) ----
 *
 * 48 bits of Unix milliseconds, then a 12-bit counter in rand_a (RFC 9562
 * §6.2 method 1) started at a random value below 2^11 each new millisecond,
 * then 62 random bits. Ids of one generator are strictly increasing, even
 * when the clock steps back (the last timestamp is kept) or more than 2048
 * ids are made in one millisecond (the timestamp is advanced). Randomness
 * comes from a per-generator xoshiro256** seeded once from getrandom(2)
 * (OpenSSL's RAND_bytes as fallback): ids must be unique, not secret, and a
 * syscall per event would cost more than the whole encoding.
 *
 * A generator belongs to one thread (no lock). Don't copy one, and don't let
 * a forked child keep using its parent's. */
typedef struct pgw_uuid7 {
    uint64_t last_ms;
    uint32_t counter;
    uint64_t s[4];               /* xoshiro256** state */
} pgw_uuid7_t;

/* Seeds the generator. Returns 0, or -EIO when no entropy source worked. */
int pgw_uuid7_init(pgw_uuid7_t *g) __attribute__((warn_unused_result));
/* The next id, for a clock reading of unix_ms. */
void pgw_uuid7_next(pgw_uuid7_t *g, uint64_t unix_ms, uint8_t out[16]);
/* The next id from this thread's own generator (seeded on first use; aborts
 * if no entropy source works) and the current time: for threads that keep no
 * context, e.g. the main thread's shutdown events. */
void pgw_event_id_new(uint8_t out[16]);
/* Lowercase 8-4-4-4-12 text, exactly 36 bytes, no NUL written. */
void pgw_uuid_format(const uint8_t id[16], char out[36]);

/* Zeroes ev, sets its kind and time, and gives it a new id from g (NULL:
 * this thread's own generator), whose timestamp is time_us's millisecond
 * (the clock's when time_us is 0). */
void pgw_event_init(pgw_event_t *ev, pgw_event_kind_t kind, int64_t time_us, pgw_uuid7_t *g);

#endif
