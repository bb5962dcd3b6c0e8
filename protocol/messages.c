/* Field readers for every PostgreSQL 3.0 message the proxy audits, and a
 * small builder for the messages it writes itself.
 *
 * The readers are as strict as PostgreSQL's own pq_getmsg* calls: every
 * field must be present, counts must agree with the data that follows, and a
 * body must end exactly where its last field ends (pq_getmsgend). Being no
 * more lenient than the server means a message we accept is one the server
 * would also understand the same way, so the audit trail cannot be told one
 * thing while the database does another. */
#include "pgwarden/protocol.h"

#include <stdio.h>
#include <string.h>

/* ---- readers --------------------------------------------------------- */

static inline size_t rd_left(const pgw_rd_t *r)
{
    return (size_t)(r->end - r->p);
}

static inline uint16_t be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

uint8_t pgw_rd_u8(pgw_rd_t *r)
{
    if (r->bad || rd_left(r) < 1) {
        r->bad = 1;
        return 0;
    }
    return *r->p++;
}

uint16_t pgw_rd_u16(pgw_rd_t *r)
{
    uint16_t v;

    if (r->bad || rd_left(r) < 2) {
        r->bad = 1;
        return 0;
    }
    v = be16(r->p);
    r->p += 2;
    return v;
}

uint32_t pgw_rd_u32(pgw_rd_t *r)
{
    uint32_t v;

    if (r->bad || rd_left(r) < 4) {
        r->bad = 1;
        return 0;
    }
    v = be32(r->p);
    r->p += 4;
    return v;
}

const char *pgw_rd_cstr(pgw_rd_t *r)
{
    const uint8_t *nul = NULL;
    const char *s;

    if (!r->bad && rd_left(r) > 0)
        nul = memchr(r->p, 0, rd_left(r));
    if (!nul) {
        r->bad = 1;
        return NULL;
    }
    s = (const char *)r->p;
    r->p = nul + 1;
    return s;
}

const uint8_t *pgw_rd_bytes(pgw_rd_t *r, size_t n)
{
    const uint8_t *p;

    if (r->bad || rd_left(r) < n) {
        r->bad = 1;
        return NULL;
    }
    p = r->p;
    if (n)
        r->p += n;
    return p;
}

/* A streamed body (NULL: the type was not wanted) cannot be read. */
static inline int rd_msg(pgw_rd_t *r, const pgw_msg_t *msg)
{
    if (!msg->body)
        return -1;
    pgw_rd_init(r, msg->body, msg->body_len);
    return 0;
}

/* The whole body was read, and nothing is left over. */
static inline int rd_end(const pgw_rd_t *r)
{
    return r->bad || r->p != r->end ? -1 : 0;
}

/* (int32 len, bytes)* values as in Bind and FunctionCall: -1 is NULL, any
 * other negative length is malformed. */
static void rd_values(pgw_rd_t *r, uint16_t n)
{
    for (uint32_t i = 0; i < n && !r->bad; i++) {
        int32_t len = (int32_t)pgw_rd_u32(r);
        if (len == -1)
            continue;
        if (len < 0)
            r->bad = 1;
        else
            pgw_rd_bytes(r, (size_t)len);
    }
}

/* ---- startup phase --------------------------------------------------- */

int pgw_parse_startup(const pgw_msg_t *msg, pgw_startup_t *out)
{
    pgw_rd_t r;

    memset(out, 0, sizeof(*out));
    if (msg->type != 0 || rd_msg(&r, msg) < 0)
        return -1;
    out->code = msg->code;
    if (msg->code == PGW_CODE_CANCEL) {
        out->cancel_pid = pgw_rd_u32(&r);
        out->cancel_key = pgw_rd_u32(&r);
        return rd_end(&r);
    }
    if (msg->code >> 16 != 3)
        return 0;

    /* Pairs end with an empty name, which must be the last byte: PostgreSQL
     * refuses any other layout ("invalid startup packet layout"). */
    for (;;) {
        const char *name = pgw_rd_cstr(&r), *value;
        if (!name)
            return -1;
        if (*name == '\0')
            break;
        value = pgw_rd_cstr(&r);
        if (!value)
            return -1;
        if (out->nkept < PGW_MAX_STARTUP_PARAMS) {
            out->names[out->nkept] = name;
            out->values[out->nkept] = value;
            out->nkept++;
        }
        out->nparams++;
        /* A repeated name overrides, as in the server. */
        if (strcmp(name, "user") == 0)
            out->user = value;
        else if (strcmp(name, "database") == 0)
            out->database = value;
        else if (strcmp(name, "application_name") == 0)
            out->application_name = value;
        else if (strcmp(name, "options") == 0)
            out->options = value;
        else if (strcmp(name, "replication") == 0)
            out->replication = value;
    }
    if (rd_end(&r) < 0)
        return -1;
    return out->user && *out->user ? 0 : -2;
}

/* ---- frontend -------------------------------------------------------- */

int pgw_parse_query(const pgw_msg_t *msg, pgw_query_t *out)
{
    pgw_rd_t r;

    if (rd_msg(&r, msg) < 0)
        return -1;
    out->text = pgw_rd_cstr(&r);
    if (rd_end(&r) < 0)
        return -1;
    /* The reader stopped just past the terminator: no need to strlen a
     * statement that may be megabytes long. */
    out->text_len = (uint32_t)((const char *)r.p - 1 - out->text);
    return 0;
}

int pgw_parse_parse(const pgw_msg_t *msg, pgw_parse_t *out)
{
    pgw_rd_t r;

    if (rd_msg(&r, msg) < 0)
        return -1;
    out->name = pgw_rd_cstr(&r);
    out->text = pgw_rd_cstr(&r);
    if (out->text)
        out->text_len = (uint32_t)((const char *)r.p - 1 - out->text);
    out->nparams = pgw_rd_u16(&r);
    out->param_oids = pgw_rd_bytes(&r, (size_t)out->nparams * 4);
    return rd_end(&r);
}

int pgw_parse_bind(const pgw_msg_t *msg, pgw_bind_t *out)
{
    pgw_rd_t r;

    if (rd_msg(&r, msg) < 0)
        return -1;
    out->portal = pgw_rd_cstr(&r);
    out->stmt = pgw_rd_cstr(&r);
    out->nformats = pgw_rd_u16(&r);
    out->formats = pgw_rd_bytes(&r, (size_t)out->nformats * 2);
    out->nparams = pgw_rd_u16(&r);
    if (r.bad || (out->nformats > 1 && out->nformats != out->nparams))
        return -1;
    out->params = r.p;
    rd_values(&r, out->nparams);
    out->nresult_formats = pgw_rd_u16(&r);
    out->result_formats = pgw_rd_bytes(&r, (size_t)out->nresult_formats * 2);
    return rd_end(&r);
}

int pgw_bind_next_param(const pgw_bind_t *b, uint32_t *cursor, uint16_t idx,
                        const uint8_t **val, int32_t *len, uint16_t *fmt)
{
    const uint8_t *p;
    int32_t n;

    if (idx >= b->nparams)
        return 0;
    /* pgw_parse_bind has checked every length against the body. */
    p = b->params + *cursor;
    n = (int32_t)be32(p);
    *cursor += 4;
    if (n < 0) {
        *val = NULL;
        *len = -1;
    } else {
        *val = p + 4;
        *len = n;
        *cursor += (uint32_t)n;
    }
    if (fmt) {
        if (b->nformats == 0)
            *fmt = 0;
        else if (b->nformats == 1)
            *fmt = be16(b->formats);
        else
            *fmt = be16(b->formats + (size_t)idx * 2);
    }
    return 1;
}

static int parse_target(const pgw_msg_t *msg, pgw_target_t *out)
{
    pgw_rd_t r;

    if (rd_msg(&r, msg) < 0)
        return -1;
    out->kind = pgw_rd_u8(&r);
    out->name = pgw_rd_cstr(&r);
    if (rd_end(&r) < 0 || (out->kind != 'S' && out->kind != 'P'))
        return -1;
    return 0;
}

int pgw_parse_describe(const pgw_msg_t *msg, pgw_target_t *out)
{
    return parse_target(msg, out);
}

int pgw_parse_close(const pgw_msg_t *msg, pgw_target_t *out)
{
    return parse_target(msg, out);
}

int pgw_parse_execute(const pgw_msg_t *msg, pgw_execute_t *out)
{
    pgw_rd_t r;

    if (rd_msg(&r, msg) < 0)
        return -1;
    out->portal = pgw_rd_cstr(&r);
    out->max_rows = pgw_rd_u32(&r);
    return rd_end(&r);
}

int pgw_parse_function_call(const pgw_msg_t *msg, pgw_fcall_t *out)
{
    pgw_rd_t r;

    if (rd_msg(&r, msg) < 0)
        return -1;
    out->oid = pgw_rd_u32(&r);
    out->nformats = pgw_rd_u16(&r);
    out->formats = pgw_rd_bytes(&r, (size_t)out->nformats * 2);
    out->nargs = pgw_rd_u16(&r);
    if (r.bad || (out->nformats > 1 && out->nformats != out->nargs))
        return -1;
    out->args = r.p;
    rd_values(&r, out->nargs);
    out->result_format = pgw_rd_u16(&r);
    return rd_end(&r);
}

const char *pgw_fcall_name(uint32_t oid)
{
    static const struct { uint32_t oid; const char *name; } fn[] = {
        { 715, "lo_create" },   { 764, "lo_import" },   { 765, "lo_export" },
        { 767, "lo_import" },   { 952, "lo_open" },     { 953, "lo_close" },
        { 954, "loread" },      { 955, "lowrite" },     { 956, "lo_lseek" },
        { 957, "lo_creat" },    { 958, "lo_tell" },     { 964, "lo_unlink" },
        { 1004, "lo_truncate" }, { 3170, "lo_lseek64" }, { 3171, "lo_tell64" },
        { 3172, "lo_truncate64" }, { 3457, "lo_from_bytea" }, { 3458, "lo_get" },
        { 3459, "lo_get" },     { 3460, "lo_put" },
    };
    for (size_t i = 0; i < sizeof fn / sizeof fn[0]; i++)
        if (fn[i].oid == oid)
            return fn[i].name;
    return NULL;
}

#define FCALL_ARGS_SHOWN 16

size_t pgw_fcall_describe(const pgw_fcall_t *f, char *buf)
{
    /* the longest: 30 bytes of name, 16 arguments of 9 ("$65535, "
     * and its kin), ", ...", the last and ")" */
    const size_t cap = PGW_FCALL_TEXT_MAX;
    const char *name = pgw_fcall_name(f->oid);
    int at = name ? snprintf(buf, cap, "SELECT pg_catalog.%s(", name)
                  : snprintf(buf, cap, "FUNCTION CALL OID %u (", f->oid);
    for (unsigned i = 1; i <= f->nargs; i++) {
        if (i > FCALL_ARGS_SHOWN && i < f->nargs) {
            at += snprintf(buf + at, cap - (size_t)at, ", ...");
            i = f->nargs - 1u;
            continue;
        }
        at += snprintf(buf + at, cap - (size_t)at, "%s$%u", i > 1 ? ", " : "", i);
    }
    at += snprintf(buf + at, cap - (size_t)at, ")");
    return (size_t)at;
}

/* ---- backend --------------------------------------------------------- */

int pgw_parse_auth(const pgw_msg_t *msg, pgw_auth_t *out)
{
    pgw_rd_t r;

    if (rd_msg(&r, msg) < 0)
        return -1;
    out->code = pgw_rd_u32(&r);
    if (r.bad)
        return -1;
    out->data = r.p;
    out->data_len = (uint32_t)rd_left(&r);
    switch (out->code) {
    case 0: case 2: case 3: case 6: case 7: case 9:   /* Ok, KerberosV5, Cleartext, SCM, GSS, SSPI */
        return out->data_len == 0 ? 0 : -1;
    case 5:                                           /* MD5Password: the salt */
        return out->data_len == 4 ? 0 : -1;
    default:                                          /* GSSContinue, SASL*: opaque data */
        return 0;
    }
}

int pgw_parse_keydata(const pgw_msg_t *msg, pgw_keydata_t *out)
{
    pgw_rd_t r;

    if (rd_msg(&r, msg) < 0)
        return -1;
    out->pid = pgw_rd_u32(&r);
    out->key = pgw_rd_u32(&r);
    return rd_end(&r);
}

int pgw_parse_param_status(const pgw_msg_t *msg, pgw_param_status_t *out)
{
    pgw_rd_t r;

    if (rd_msg(&r, msg) < 0)
        return -1;
    out->name = pgw_rd_cstr(&r);
    out->value = pgw_rd_cstr(&r);
    return rd_end(&r);
}

int pgw_parse_ready(const pgw_msg_t *msg, pgw_ready_t *out)
{
    pgw_rd_t r;

    if (rd_msg(&r, msg) < 0)
        return -1;
    out->status = pgw_rd_u8(&r);
    if (rd_end(&r) < 0)
        return -1;
    return out->status == 'I' || out->status == 'T' || out->status == 'E' ? 0 : -1;
}

/* Decimal digits up to the end of the string; 0 on anything else or on
 * overflow, so a strange tag never yields a made-up count. */
static int parse_count(const char *s, uint64_t *v)
{
    uint64_t n = 0;

    if (*s == '\0')
        return 0;
    for (; *s; s++) {
        unsigned d = (unsigned)(*s - '0');
        if (d > 9 || n > (UINT64_MAX - d) / 10)
            return 0;
        n = n * 10 + d;
    }
    *v = n;
    return 1;
}

static void tag_rows(pgw_complete_t *out)
{
    /* The verb is the tag up to its first space; only these carry a count. */
    static const struct { const char *s; size_t n; } verbs[] = {
        { "SELECT", 6 }, { "UPDATE", 6 }, { "DELETE", 6 }, { "MOVE", 4 },
        { "FETCH", 5 }, { "COPY", 4 }, { "MERGE", 5 },
    };
    const char *t = out->tag;
    const char *sp = strchr(t, ' ');

    if (!sp)
        return;
    size_t vn = (size_t)(sp - t);
    if (vn == 6 && memcmp(t, "INSERT", 6) == 0) {
        /* "INSERT oid rows": the oid is always 0 since PostgreSQL 12. */
        const char *sp2 = strchr(sp + 1, ' ');
        uint64_t oid;
        char num[24];
        size_t n;

        if (!sp2 || (n = (size_t)(sp2 - (sp + 1))) >= sizeof(num))
            return;
        memcpy(num, sp + 1, n);
        num[n] = '\0';
        if (parse_count(num, &oid))
            out->has_rows = parse_count(sp2 + 1, &out->rows);
        return;
    }
    for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
        if (vn == verbs[i].n && memcmp(t, verbs[i].s, vn) == 0) {
            out->has_rows = parse_count(sp + 1, &out->rows);
            return;
        }
    }
}

int pgw_parse_command_complete(const pgw_msg_t *msg, pgw_complete_t *out)
{
    pgw_rd_t r;

    out->rows = 0;
    out->has_rows = 0;
    if (rd_msg(&r, msg) < 0)
        return -1;
    out->tag = pgw_rd_cstr(&r);
    if (rd_end(&r) < 0)
        return -1;
    tag_rows(out);
    if (!out->has_rows)
        out->rows = 0;
    return 0;
}

int pgw_parse_error(const pgw_msg_t *msg, pgw_error_t *out)
{
    const char *verbose = NULL;
    pgw_rd_t r;

    memset(out, 0, sizeof(*out));
    if (rd_msg(&r, msg) < 0)
        return -1;
    for (;;) {
        uint8_t code = pgw_rd_u8(&r);
        const char *v;

        if (r.bad)
            return -1;
        if (code == 0)
            break;
        v = pgw_rd_cstr(&r);
        if (!v)
            return -1;
        switch (code) {
        case 'S': out->severity_local = v; break;
        case 'V': verbose = v; break;
        case 'C': out->sqlstate = v; break;
        case 'M': out->message = v; break;
        case 'D': out->detail = v; break;
        case 'H': out->hint = v; break;
        case 'P': out->position = v; break;
        case 'p': out->internal_position = v; break;
        case 'q': out->internal_query = v; break;
        case 'W': out->where = v; break;
        case 's': out->schema = v; break;
        case 't': out->table = v; break;
        case 'c': out->column = v; break;
        case 'd': out->datatype = v; break;
        case 'n': out->constraint = v; break;
        case 'F': out->file = v; break;
        case 'L': out->line = v; break;
        case 'R': out->routine = v; break;
        default: break;   /* future fields are to be ignored, says the protocol */
        }
    }
    out->severity = verbose ? verbose : out->severity_local;
    return rd_end(&r);
}

int pgw_parse_notification(const pgw_msg_t *msg, pgw_notify_t *out)
{
    pgw_rd_t r;

    if (rd_msg(&r, msg) < 0)
        return -1;
    out->pid = pgw_rd_u32(&r);
    out->channel = pgw_rd_cstr(&r);
    out->payload = pgw_rd_cstr(&r);
    return rd_end(&r);
}

int pgw_parse_row_description(const pgw_msg_t *msg, pgw_rowdesc_t *out)
{
    pgw_rd_t r;

    if (rd_msg(&r, msg) < 0)
        return -1;
    out->nfields = pgw_rd_u16(&r);
    out->fields = r.p;
    /* name, table oid, column number, type oid, type size, typmod, format */
    for (uint32_t i = 0; i < out->nfields && !r.bad; i++) {
        pgw_rd_cstr(&r);
        pgw_rd_bytes(&r, 4 + 2 + 4 + 2 + 4 + 2);
    }
    return rd_end(&r);
}

int pgw_parse_copy_response(const pgw_msg_t *msg, pgw_copy_resp_t *out)
{
    pgw_rd_t r;

    if (rd_msg(&r, msg) < 0)
        return -1;
    out->format = pgw_rd_u8(&r);
    out->ncols = pgw_rd_u16(&r);
    out->formats = pgw_rd_bytes(&r, (size_t)out->ncols * 2);
    if (rd_end(&r) < 0 || out->format > 1)
        return -1;
    return 0;
}

int pgw_parse_negotiate(const pgw_msg_t *msg, pgw_negotiate_t *out)
{
    pgw_rd_t r;

    if (rd_msg(&r, msg) < 0)
        return -1;
    out->minor = pgw_rd_u32(&r);
    out->nunrecognized = pgw_rd_u32(&r);
    out->options = (const char *)r.p;
    /* Each name takes at least one byte, so a huge count fails fast. */
    for (uint32_t i = 0; i < out->nunrecognized && !r.bad; i++)
        pgw_rd_cstr(&r);
    return rd_end(&r);
}

int pgw_parse_param_description(const pgw_msg_t *msg, pgw_param_desc_t *out)
{
    pgw_rd_t r;

    if (rd_msg(&r, msg) < 0)
        return -1;
    out->nparams = pgw_rd_u16(&r);
    out->oids = pgw_rd_bytes(&r, (size_t)out->nparams * 4);
    return rd_end(&r);
}

int pgw_parse_function_result(const pgw_msg_t *msg, pgw_fresult_t *out)
{
    pgw_rd_t r;

    if (rd_msg(&r, msg) < 0)
        return -1;
    out->len = (int32_t)pgw_rd_u32(&r);
    out->value = NULL;
    if (r.bad || out->len < -1)
        return -1;
    if (out->len >= 0)
        out->value = pgw_rd_bytes(&r, (size_t)out->len);
    return rd_end(&r);
}

/* ---- names ----------------------------------------------------------- */

const char *pgw_msg_name(pgw_side_t side, uint8_t type)
{
    if (side == PGW_FRONTEND) {
        switch (type) {
        case 0:   return "StartupPacket";
        case 'B': return "Bind";
        case 'C': return "Close";
        case 'd': return "CopyData";
        case 'c': return "CopyDone";
        case 'f': return "CopyFail";
        case 'D': return "Describe";
        case 'E': return "Execute";
        case 'H': return "Flush";
        case 'F': return "FunctionCall";
        case 'P': return "Parse";
        case 'p': return "PasswordMessage";   /* also SASL and GSS responses */
        case 'Q': return "Query";
        case 'S': return "Sync";
        case 'X': return "Terminate";
        default:  return "Unknown";
        }
    }
    switch (type) {
    case 'R': return "Authentication";
    case 'K': return "BackendKeyData";
    case '2': return "BindComplete";
    case '3': return "CloseComplete";
    case 'C': return "CommandComplete";
    case 'd': return "CopyData";
    case 'c': return "CopyDone";
    case 'G': return "CopyInResponse";
    case 'H': return "CopyOutResponse";
    case 'W': return "CopyBothResponse";
    case 'D': return "DataRow";
    case 'I': return "EmptyQueryResponse";
    case 'E': return "ErrorResponse";
    case 'V': return "FunctionCallResponse";
    case 'v': return "NegotiateProtocolVersion";
    case 'n': return "NoData";
    case 'N': return "NoticeResponse";
    case 'A': return "NotificationResponse";
    case 't': return "ParameterDescription";
    case 'S': return "ParameterStatus";
    case '1': return "ParseComplete";
    case 's': return "PortalSuspended";
    case 'Z': return "ReadyForQuery";
    case 'T': return "RowDescription";
    default:  return "Unknown";
    }
}

/* ---- builder --------------------------------------------------------- */

void pgw_wb_init(pgw_wb_t *w, uint8_t *buf, size_t cap)
{
    w->buf = buf;
    w->cap = buf ? cap : 0;
    w->len = 0;
    w->msg_start = 0;
    w->failed = 0;
}

static inline int wb_room(pgw_wb_t *w, size_t n)
{
    if (w->failed)
        return 0;
    if (w->cap - w->len < n) {
        w->failed = 1;
        return 0;
    }
    return 1;
}

void pgw_wb_u8(pgw_wb_t *w, uint8_t v)
{
    if (wb_room(w, 1))
        w->buf[w->len++] = v;
}

void pgw_wb_u16(pgw_wb_t *w, uint16_t v)
{
    if (!wb_room(w, 2))
        return;
    w->buf[w->len++] = (uint8_t)(v >> 8);
    w->buf[w->len++] = (uint8_t)v;
}

void pgw_wb_u32(pgw_wb_t *w, uint32_t v)
{
    if (!wb_room(w, 4))
        return;
    w->buf[w->len++] = (uint8_t)(v >> 24);
    w->buf[w->len++] = (uint8_t)(v >> 16);
    w->buf[w->len++] = (uint8_t)(v >> 8);
    w->buf[w->len++] = (uint8_t)v;
}

void pgw_wb_bytes(pgw_wb_t *w, const void *p, size_t n)
{
    if (n == 0 || !wb_room(w, n))
        return;
    memcpy(w->buf + w->len, p, n);
    w->len += n;
}

void pgw_wb_cstr(pgw_wb_t *w, const char *s)
{
    if (!s) {
        w->failed = 1;   /* a missing string is a caller bug: do not send "" */
        return;
    }
    pgw_wb_bytes(w, s, strlen(s) + 1);
}

void pgw_wb_begin(pgw_wb_t *w, uint8_t type)
{
    if (type)
        pgw_wb_u8(w, type);
    w->msg_start = w->len;
    pgw_wb_u32(w, 0);
}

void pgw_wb_end(pgw_wb_t *w)
{
    size_t n;

    if (w->failed)
        return;
    n = w->len - w->msg_start;
    if (n > INT32_MAX) {   /* no peer would accept it */
        w->failed = 1;
        return;
    }
    w->buf[w->msg_start] = (uint8_t)(n >> 24);
    w->buf[w->msg_start + 1] = (uint8_t)(n >> 16);
    w->buf[w->msg_start + 2] = (uint8_t)(n >> 8);
    w->buf[w->msg_start + 3] = (uint8_t)n;
}

ssize_t pgw_wb_finish(pgw_wb_t *w)
{
    return w->failed ? -1 : (ssize_t)w->len;
}

ssize_t pgw_build_error(uint8_t *buf, size_t cap, const char *severity,
                        const char *sqlstate, const char *message)
{
    pgw_wb_t w;

    pgw_wb_init(&w, buf, cap);
    pgw_wb_begin(&w, 'E');
    pgw_wb_u8(&w, 'S');
    pgw_wb_cstr(&w, severity);
    pgw_wb_u8(&w, 'V');
    pgw_wb_cstr(&w, severity);
    pgw_wb_u8(&w, 'C');
    pgw_wb_cstr(&w, sqlstate);
    pgw_wb_u8(&w, 'M');
    pgw_wb_cstr(&w, message);
    pgw_wb_u8(&w, 0);
    pgw_wb_end(&w);
    return pgw_wb_finish(&w);
}
