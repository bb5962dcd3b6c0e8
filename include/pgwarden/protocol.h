/* PostgreSQL wire protocol 3.0: an incremental, push-style framer for both
 * directions, pure field readers for every message type, and a small builder.
 *
 * Nothing here touches a socket or allocates per message. The framer is fed
 * whatever bytes arrived, split anywhere, and reports each message once it is
 * complete. Bodies of the message types the caller asks for are handed over
 * whole: a pointer into the caller's buffer when the message lies in one
 * piece (the common case, zero copy), otherwise into the framer's own
 * assembly buffer. Every other body (DataRow, CopyData, ...) streams through
 * and is only counted: it is never copied, whatever its size. */
#ifndef PGWARDEN_PROTOCOL_H
#define PGWARDEN_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define PGW_PROTO_V3         196608u   /* 3.0 */
#define PGW_CODE_CANCEL      80877102u /* 1234.5678 */
#define PGW_CODE_SSL         80877103u /* 1234.5679 */
#define PGW_CODE_GSSENC      80877104u /* 1234.5680 */
#define PGW_STARTUP_MAX      10000u    /* bytes after the length word, as PostgreSQL's MAX_STARTUP_PACKET_LENGTH */
#define PGW_MSG_MAX_DEFAULT  (1u << 30) /* as PostgreSQL's MaxAllocSize-ish cap */

/* Errors returned by the framer (negative). A stop asked by the callback is
 * not an error: see pgw_framer_feed. */
enum {
    PGW_EBADLEN = -1,      /* length word < 4 or > the configured maximum */
    PGW_ESTARTUPLEN = -2,  /* startup packet < 8 bytes, or > PGW_STARTUP_MAX after the length word */
    PGW_ENOMEM = -3,       /* could not grow the assembly buffer */
    PGW_EAFTEREND = -5,    /* bytes after a packet that ends the stream (CancelRequest) */
    PGW_EBADTYPE = -6,     /* type byte 0 after the startup phase: no such message,
                            * and type 0 means "startup packet" in pgw_msg_t */
};

/* Which peer sends the bytes being framed. */
typedef enum pgw_side { PGW_FRONTEND = 0, PGW_BACKEND = 1 } pgw_side_t;

typedef struct pgw_msg {
    uint8_t type;          /* type byte; 0 for a startup-phase packet */
    uint32_t len;          /* the length word: counts itself, not the type byte */
    uint32_t code;         /* startup-phase packets: protocol version or request code */
    const uint8_t *body;   /* len - 4 bytes, or NULL when the body was streamed */
    uint32_t body_len;     /* always len - 4 (startup: len - 8, after the code) */
} pgw_msg_t;

/* Called once per complete message. The body pointer is borrowed and valid
 * only during the call. Return 0 to go on; non-zero makes pgw_framer_feed()
 * stop right after this message and return the bytes consumed up to and
 * including it (see pgw_framer_feed). */
typedef int (*pgw_msg_cb)(void *ud, const pgw_msg_t *msg);

typedef struct pgw_framer {
    /* configuration */
    pgw_side_t side;
    uint32_t max_len;             /* length-word cap for regular messages */
    uint8_t want[256 / 8];        /* bitmap: types whose body is handed over */
    pgw_msg_cb cb;
    void *ud;
    /* state */
    int state;                    /* negative: the sticky PGW_E* error */
    int stopped;                  /* the last feed ended on a callback's stop */
    uint8_t hdr[8];
    uint32_t hdr_got;
    pgw_msg_t cur;
    uint32_t remaining;           /* body bytes still to come */
    uint8_t *asm_buf;             /* assembly of a wanted body split across feeds */
    uint32_t asm_cap, asm_got;
    uint64_t consumed;            /* total bytes consumed so far */
    uint64_t messages;            /* messages completed so far */
} pgw_framer_t;

/* A frontend framer starts in the startup phase (packets with no type byte)
 * and stays there through SSLRequest/GSSENCRequest (and any other code, which
 * is reported for the caller to refuse) until a StartupMessage with major
 * version 3; after a CancelRequest nothing more may follow. A backend framer
 * reads regular messages from the first byte (the one-byte answer to
 * SSLRequest is the caller's business). By default the bodies of all types
 * are wanted except CopyData ('d') in both directions and DataRow ('D') from
 * the backend ('D' from the frontend is Describe, which is wanted). Startup
 * packets are always handed over whole. max_len caps the length word of
 * regular messages: 0 means PGW_MSG_MAX_DEFAULT, and it is clamped to
 * INT32_MAX because PostgreSQL's length word is signed. Init allocates
 * nothing: the assembly buffer is only grown, as bytes arrive, for a wanted
 * message split across feeds, and pgw_framer_free releases it. */
void pgw_framer_init(pgw_framer_t *f, pgw_side_t side, uint32_t max_len,
                     pgw_msg_cb cb, void *ud);
void pgw_framer_free(pgw_framer_t *f);
void pgw_framer_want(pgw_framer_t *f, uint8_t type, int wanted);

/* Feeds len bytes. Returns the number of bytes consumed, or a negative
 * PGW_E* code after which the framer must not be fed again (it would return
 * the same code); the messages before the offending bytes have been delivered
 * by then. Lengths are checked before anything is allocated. All len bytes are
 * consumed unless a callback returned non-zero: then the count ends just past
 * the message it stopped on, pgw_framer_stopped() is true until the next
 * feed, and the caller feeds the rest later. */
ssize_t pgw_framer_feed(pgw_framer_t *f, const uint8_t *buf, size_t len);
int pgw_framer_stopped(const pgw_framer_t *f);
/* True between messages (no partial header or body pending). */
int pgw_framer_at_boundary(const pgw_framer_t *f);
/* True when buf holds only whole regular messages that pgw_framer_feed
 * would accept, starting at a boundary: feeding it can then fail only in a
 * callback. Reads nothing but the headers and changes nothing. */
int pgw_framer_whole(const pgw_framer_t *f, const uint8_t *buf, size_t len);
/* Startup phase still in progress (frontend only). During a callback this
 * already tells the phase after the message being delivered: false in the
 * callback of the StartupMessage, true in that of an SSLRequest. */
int pgw_framer_in_startup(const pgw_framer_t *f);
const char *pgw_framer_strerror(int err);

/* ---- field readers: pure functions over one complete body ---------------
 * Each returns 0 on success or -1 when the body is malformed (truncated,
 * missing terminator, counts that disagree with the data, bytes left over
 * after the last field: as strict as PostgreSQL's pq_getmsgend) or was
 * streamed (body NULL). Strings point into the body and are NUL-terminated
 * there; raw arrays are big-endian, as on the wire. */

typedef struct pgw_rd { const uint8_t *p, *end; int bad; } pgw_rd_t;
static inline void pgw_rd_init(pgw_rd_t *r, const uint8_t *p, size_t n) {
    r->p = p; r->end = n ? p + n : p; r->bad = 0;   /* NULL + 0 is UB in C */
}
uint8_t pgw_rd_u8(pgw_rd_t *r);
uint16_t pgw_rd_u16(pgw_rd_t *r);
uint32_t pgw_rd_u32(pgw_rd_t *r);
const char *pgw_rd_cstr(pgw_rd_t *r);                /* NULL (and bad) if unterminated */
const uint8_t *pgw_rd_bytes(pgw_rd_t *r, size_t n);  /* NULL (and bad) if short */

#define PGW_MAX_STARTUP_PARAMS 64
typedef struct pgw_startup {
    uint32_t code;
    /* StartupMessage */
    const char *user, *database, *application_name, *options, *replication;
    uint32_t nparams;                               /* all pairs, incl. the above */
    uint32_t nkept;                                 /* pairs kept in names/values */
    const char *names[PGW_MAX_STARTUP_PARAMS], *values[PGW_MAX_STARTUP_PARAMS];
    /* CancelRequest */
    uint32_t cancel_pid, cancel_key;
} pgw_startup_t;
/* msg is a startup-phase packet (type 0). For a StartupMessage (major version
 * 3, any minor) the pairs are read: the named fields are NULL when absent
 * (PostgreSQL then takes the user name as the database). The first
 * PGW_MAX_STARTUP_PARAMS pairs are kept in names/values; any number is
 * accepted, as by PostgreSQL. A layout without the final terminator returns
 * -1 ("invalid startup packet layout"), a missing or empty user -2.
 * CancelRequest fills cancel_pid and
 * cancel_key (body of exactly 8 bytes). Every other code (SSLRequest,
 * GSSENCRequest, other versions) only sets code: refusing it is the caller's
 * business. */
int pgw_parse_startup(const pgw_msg_t *msg, pgw_startup_t *out);

/* Frontend */
typedef struct pgw_query { const char *text; uint32_t text_len; } pgw_query_t;          /* 'Q' */
int pgw_parse_query(const pgw_msg_t *msg, pgw_query_t *out);
typedef struct pgw_parse { const char *name, *text; uint32_t text_len; uint16_t nparams;
                           const uint8_t *param_oids; } pgw_parse_t;                    /* 'P' */
int pgw_parse_parse(const pgw_msg_t *msg, pgw_parse_t *out);
typedef struct pgw_bind {
    const char *portal, *stmt;
    uint16_t nformats; const uint8_t *formats;      /* raw int16 array */
    uint16_t nparams;  const uint8_t *params;       /* raw: (int32 len, bytes)* */
    uint16_t nresult_formats; const uint8_t *result_formats;
} pgw_bind_t;                                                                           /* 'B' */
int pgw_parse_bind(const pgw_msg_t *msg, pgw_bind_t *out);
/* Iterates Bind parameters of a Bind that pgw_parse_bind accepted: call with
 * *cursor = 0 and idx = 0, 1, 2, ...; returns 1 with *val and *len set (len -1 =
 * NULL, val NULL) and *cursor advanced, 0 once idx reaches nparams. fmt gets
 * the format (0 text, 1 binary) from the 0, 1 or nparams format codes. */
int pgw_bind_next_param(const pgw_bind_t *b, uint32_t *cursor, uint16_t idx,
                        const uint8_t **val, int32_t *len, uint16_t *fmt);
typedef struct pgw_target { uint8_t kind; const char *name; } pgw_target_t;             /* 'D','C' ('S' or 'P') */
int pgw_parse_describe(const pgw_msg_t *msg, pgw_target_t *out);
int pgw_parse_close(const pgw_msg_t *msg, pgw_target_t *out);
typedef struct pgw_execute { const char *portal; uint32_t max_rows; } pgw_execute_t;    /* 'E' */
int pgw_parse_execute(const pgw_msg_t *msg, pgw_execute_t *out);
typedef struct pgw_fcall {                                                              /* 'F' */
    uint32_t oid;
    uint16_t nformats; const uint8_t *formats;      /* raw int16 array: 0, 1 or nargs */
    uint16_t nargs;    const uint8_t *args;         /* raw: (int32 len, bytes)* as in Bind */
    uint16_t result_format;
} pgw_fcall_t;
int pgw_parse_function_call(const pgw_msg_t *msg, pgw_fcall_t *out);
/* The call as the statement it amounts to, its arguments as $n: "SELECT
 * pg_catalog.loread($1, $2)" for the large-object functions (libpq's and
 * JDBC's large-object APIs call them by the OIDs PostgreSQL gives them),
 * else "FUNCTION CALL OID 16500 ($1)"; past 16 arguments, "...". Writes at
 * most PGW_FCALL_TEXT_MAX bytes with the NUL; returns the length. */
#define PGW_FCALL_TEXT_MAX 256
size_t pgw_fcall_describe(const pgw_fcall_t *f, char *buf);
/* The pg_catalog function of a fixed OID that FunctionCall is used for
 * ("loread", "lo_export", ...), or NULL. */
const char *pgw_fcall_name(uint32_t oid);
/* 'p' (PasswordMessage / SASLInitialResponse / SASLResponse) is deliberately
 * given no reader: its contents must never be logged. */

/* Backend */
/* data is what follows the code; for Ok, cleartext, MD5 (4-byte salt) and the
 * other fixed-size requests a wrong size is an error. */
typedef struct pgw_auth { uint32_t code; const uint8_t *data; uint32_t data_len; } pgw_auth_t; /* 'R' */
int pgw_parse_auth(const pgw_msg_t *msg, pgw_auth_t *out);
typedef struct pgw_keydata { uint32_t pid, key; } pgw_keydata_t;                       /* 'K' */
int pgw_parse_keydata(const pgw_msg_t *msg, pgw_keydata_t *out);
typedef struct pgw_param_status { const char *name, *value; } pgw_param_status_t;      /* 'S' */
int pgw_parse_param_status(const pgw_msg_t *msg, pgw_param_status_t *out);
typedef struct pgw_ready { uint8_t status; } pgw_ready_t;                  /* 'Z': I, T, E (else -1) */
int pgw_parse_ready(const pgw_msg_t *msg, pgw_ready_t *out);
/* rows comes from the tag: "INSERT 0 5" gives 5, as do "UPDATE 5", "DELETE 5",
 * "SELECT 5", "MOVE 5", "FETCH 5", "COPY 5", "MERGE 5"; any other tag (or a
 * malformed count) gives has_rows 0 and rows 0. */
typedef struct pgw_complete { const char *tag; uint64_t rows; int has_rows; } pgw_complete_t; /* 'C' */
int pgw_parse_command_complete(const pgw_msg_t *msg, pgw_complete_t *out);
/* severity is the non-localized V field when present (PostgreSQL 9.6+),
 * else S; severity_local is always S. Absent fields are NULL; unknown field
 * codes are skipped, as the protocol asks. */
typedef struct pgw_error {                                                              /* 'E', 'N' */
    const char *severity, *sqlstate, *message, *detail, *hint, *position,
               *where, *schema, *table, *column, *constraint;
    const char *severity_local, *internal_position, *internal_query, *datatype,
               *file, *line, *routine;
} pgw_error_t;
int pgw_parse_error(const pgw_msg_t *msg, pgw_error_t *out);
typedef struct pgw_notify { uint32_t pid; const char *channel, *payload; } pgw_notify_t; /* 'A' */
int pgw_parse_notification(const pgw_msg_t *msg, pgw_notify_t *out);
typedef struct pgw_rowdesc { uint16_t nfields; const uint8_t *fields; } pgw_rowdesc_t;  /* 'T': fields raw */
int pgw_parse_row_description(const pgw_msg_t *msg, pgw_rowdesc_t *out);
typedef struct pgw_copy_resp { uint8_t format; uint16_t ncols;                          /* 'G','H','W' */
                               const uint8_t *formats; } pgw_copy_resp_t;               /* raw int16[ncols] */
int pgw_parse_copy_response(const pgw_msg_t *msg, pgw_copy_resp_t *out);
typedef struct pgw_negotiate { uint32_t minor; uint32_t nunrecognized;                  /* 'v' */
                               const char *options; } pgw_negotiate_t;  /* nunrecognized consecutive strings */
int pgw_parse_negotiate(const pgw_msg_t *msg, pgw_negotiate_t *out);
typedef struct pgw_param_desc { uint16_t nparams; const uint8_t *oids; } pgw_param_desc_t; /* 't': raw int32[] */
int pgw_parse_param_description(const pgw_msg_t *msg, pgw_param_desc_t *out);
typedef struct pgw_fresult { int32_t len; const uint8_t *value; } pgw_fresult_t;        /* 'V' */
int pgw_parse_function_result(const pgw_msg_t *msg, pgw_fresult_t *out);

/* Human name of a message type in a direction, e.g. "Query", "DataRow". */
const char *pgw_msg_name(pgw_side_t side, uint8_t type);

/* ---- builder --------------------------------------------------------------
 * Writes into a caller-owned fixed buffer with sticky failure: once a put
 * does not fit, every later put does nothing and pgw_wb_finish() returns -1. */
typedef struct pgw_wb { uint8_t *buf; size_t cap, len, msg_start; int failed; } pgw_wb_t;
void pgw_wb_init(pgw_wb_t *w, uint8_t *buf, size_t cap);
void pgw_wb_begin(pgw_wb_t *w, uint8_t type);   /* type 0: startup packet, no type byte */
void pgw_wb_u8(pgw_wb_t *w, uint8_t v);
void pgw_wb_u16(pgw_wb_t *w, uint16_t v);
void pgw_wb_u32(pgw_wb_t *w, uint32_t v);
void pgw_wb_cstr(pgw_wb_t *w, const char *s);
void pgw_wb_bytes(pgw_wb_t *w, const void *p, size_t n);
void pgw_wb_end(pgw_wb_t *w);                   /* patches the length word */
/* Bytes written, or -1 if anything did not fit. */
ssize_t pgw_wb_finish(pgw_wb_t *w);

/* An ErrorResponse: severity ("FATAL", "ERROR"), SQLSTATE and message, as
 * PostgreSQL sends them (S, V, C, M fields). Returns bytes or -1. */
ssize_t pgw_build_error(uint8_t *buf, size_t cap, const char *severity,
                        const char *sqlstate, const char *message);

#endif
