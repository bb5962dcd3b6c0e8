/* Samples of every message type; see samples.h. Field order in Error and
 * Notice responses is the one PostgreSQL writes (S V C M D H P p q W s t c d
 * n F L R), which the round-trip test re-encodes in. */
#include "samples.h"

#include <stdlib.h>
#include <string.h>

#define BIG_QUERY 3000
#define BIG_COPY  5000
#define BIG_ROW   6000

static void pair(pgw_wb_t *w, const char *name, const char *value)
{
    pgw_wb_cstr(w, name);
    pgw_wb_cstr(w, value);
}

static void value(pgw_wb_t *w, const char *s)
{
    if (!s) {
        pgw_wb_u32(w, 0xFFFFFFFFu);
        return;
    }
    pgw_wb_u32(w, (uint32_t)strlen(s));
    pgw_wb_bytes(w, s, strlen(s));
}

static void filler(pgw_wb_t *w, size_t n, char seed)
{
    for (size_t i = 0; i < n; i++)
        pgw_wb_u8(w, (uint8_t)('a' + (seed + i * 7) % 26));
}

/* ---- frontend: startup phase ---- */

static void b_ssl(pgw_wb_t *w) { pgw_wb_begin(w, 0); pgw_wb_u32(w, PGW_CODE_SSL); pgw_wb_end(w); }
static void b_gssenc(pgw_wb_t *w) { pgw_wb_begin(w, 0); pgw_wb_u32(w, PGW_CODE_GSSENC); pgw_wb_end(w); }

static void b_startup(pgw_wb_t *w)
{
    pgw_wb_begin(w, 0);
    pgw_wb_u32(w, PGW_PROTO_V3);
    pair(w, "user", "alice");
    pair(w, "database", "shop");
    pair(w, "application_name", "psql");
    pair(w, "options", "-c search_path=public");
    pair(w, "client_encoding", "UTF8");
    pair(w, "_pq_.test_option", "on");
    pgw_wb_u8(w, 0);
    pgw_wb_end(w);
}

static void b_startup_repl(pgw_wb_t *w)
{
    pgw_wb_begin(w, 0);
    pgw_wb_u32(w, PGW_PROTO_V3 + 2);   /* 3.2: any minor is protocol 3 */
    pair(w, "user", "replicator");
    pair(w, "replication", "database");
    pair(w, "database", "");
    pgw_wb_u8(w, 0);
    pgw_wb_end(w);
}

static void b_cancel(pgw_wb_t *w)
{
    pgw_wb_begin(w, 0);
    pgw_wb_u32(w, PGW_CODE_CANCEL);
    pgw_wb_u32(w, 4242);
    pgw_wb_u32(w, 0xDEADBEEFu);
    pgw_wb_end(w);
}

/* ---- frontend: regular ---- */

static void b_password(pgw_wb_t *w)
{
    pgw_wb_begin(w, 'p');
    pgw_wb_cstr(w, "md5a3556571e93b0d20722ba62be61e8c2d");
    pgw_wb_end(w);
}

static void b_sasl_initial(pgw_wb_t *w)
{
    static const char data[] = "n,,n=,r=rOprNGfwEbeRWgbNEkqO";
    pgw_wb_begin(w, 'p');
    pgw_wb_cstr(w, "SCRAM-SHA-256");
    pgw_wb_u32(w, sizeof(data) - 1);
    pgw_wb_bytes(w, data, sizeof(data) - 1);
    pgw_wb_end(w);
}

static void b_query(pgw_wb_t *w) { pgw_wb_begin(w, 'Q'); pgw_wb_cstr(w, "SELECT 1;"); pgw_wb_end(w); }
static void b_query_multi(pgw_wb_t *w)
{
    pgw_wb_begin(w, 'Q');
    pgw_wb_cstr(w, "BEGIN; UPDATE accounts SET balance = balance - 10 WHERE id = 7; COMMIT;");
    pgw_wb_end(w);
}
static void b_query_empty(pgw_wb_t *w) { pgw_wb_begin(w, 'Q'); pgw_wb_cstr(w, ""); pgw_wb_end(w); }

static void b_query_big(pgw_wb_t *w)
{
    pgw_wb_begin(w, 'Q');
    pgw_wb_bytes(w, "SELECT '", 8);
    filler(w, BIG_QUERY, 3);
    pgw_wb_bytes(w, "'", 2);   /* with the terminator */
    pgw_wb_end(w);
}

static void b_parse(pgw_wb_t *w)
{
    pgw_wb_begin(w, 'P');
    pgw_wb_cstr(w, "s1");
    pgw_wb_cstr(w, "SELECT $1::int4, $2::text");
    pgw_wb_u16(w, 2);
    pgw_wb_u32(w, 23);
    pgw_wb_u32(w, 25);
    pgw_wb_end(w);
}

static void b_parse_unnamed(pgw_wb_t *w)
{
    pgw_wb_begin(w, 'P');
    pgw_wb_cstr(w, "");
    pgw_wb_cstr(w, "SELECT now()");
    pgw_wb_u16(w, 0);
    pgw_wb_end(w);
}

static void b_bind(pgw_wb_t *w)
{
    pgw_wb_begin(w, 'B');
    pgw_wb_cstr(w, "");
    pgw_wb_cstr(w, "s1");
    pgw_wb_u16(w, 2);
    pgw_wb_u16(w, 0);
    pgw_wb_u16(w, 1);
    pgw_wb_u16(w, 2);
    value(w, "42");
    value(w, NULL);
    pgw_wb_u16(w, 1);
    pgw_wb_u16(w, 1);
    pgw_wb_end(w);
}

static void b_bind_binary(pgw_wb_t *w)
{
    static const uint8_t int4[4] = { 0, 0, 0, 7 };
    pgw_wb_begin(w, 'B');
    pgw_wb_cstr(w, "p1");
    pgw_wb_cstr(w, "");
    pgw_wb_u16(w, 1);
    pgw_wb_u16(w, 1);
    pgw_wb_u16(w, 3);
    pgw_wb_u32(w, 4);
    pgw_wb_bytes(w, int4, 4);
    value(w, "");
    value(w, NULL);
    pgw_wb_u16(w, 0);
    pgw_wb_end(w);
}

static void b_describe_stmt(pgw_wb_t *w) { pgw_wb_begin(w, 'D'); pgw_wb_u8(w, 'S'); pgw_wb_cstr(w, "s1"); pgw_wb_end(w); }
static void b_describe_portal(pgw_wb_t *w) { pgw_wb_begin(w, 'D'); pgw_wb_u8(w, 'P'); pgw_wb_cstr(w, ""); pgw_wb_end(w); }
static void b_execute(pgw_wb_t *w) { pgw_wb_begin(w, 'E'); pgw_wb_cstr(w, ""); pgw_wb_u32(w, 0); pgw_wb_end(w); }
static void b_execute_limit(pgw_wb_t *w) { pgw_wb_begin(w, 'E'); pgw_wb_cstr(w, "p1"); pgw_wb_u32(w, 100); pgw_wb_end(w); }
static void b_flush(pgw_wb_t *w) { pgw_wb_begin(w, 'H'); pgw_wb_end(w); }
static void b_sync(pgw_wb_t *w) { pgw_wb_begin(w, 'S'); pgw_wb_end(w); }
static void b_close_stmt(pgw_wb_t *w) { pgw_wb_begin(w, 'C'); pgw_wb_u8(w, 'S'); pgw_wb_cstr(w, "s1"); pgw_wb_end(w); }
static void b_close_portal(pgw_wb_t *w) { pgw_wb_begin(w, 'C'); pgw_wb_u8(w, 'P'); pgw_wb_cstr(w, "p1"); pgw_wb_end(w); }

static void b_fcall(pgw_wb_t *w)
{
    static const uint8_t arg[4] = { 0, 0, 0x30, 0x39 };
    pgw_wb_begin(w, 'F');
    pgw_wb_u32(w, 1598);   /* lo_open */
    pgw_wb_u16(w, 1);
    pgw_wb_u16(w, 1);
    pgw_wb_u16(w, 2);
    pgw_wb_u32(w, 4);
    pgw_wb_bytes(w, arg, 4);
    value(w, NULL);
    pgw_wb_u16(w, 1);
    pgw_wb_end(w);
}

static void b_copydata(pgw_wb_t *w) { pgw_wb_begin(w, 'd'); pgw_wb_bytes(w, "1\tfoo\n2\tbar\n", 12); pgw_wb_end(w); }
static void b_copydata_big(pgw_wb_t *w) { pgw_wb_begin(w, 'd'); filler(w, BIG_COPY, 5); pgw_wb_end(w); }
static void b_copydone(pgw_wb_t *w) { pgw_wb_begin(w, 'c'); pgw_wb_end(w); }
static void b_copyfail(pgw_wb_t *w) { pgw_wb_begin(w, 'f'); pgw_wb_cstr(w, "aborted by user"); pgw_wb_end(w); }
static void b_terminate(pgw_wb_t *w) { pgw_wb_begin(w, 'X'); pgw_wb_end(w); }

/* ---- backend ---- */

static void auth(pgw_wb_t *w, uint32_t code, const void *data, size_t n)
{
    pgw_wb_begin(w, 'R');
    pgw_wb_u32(w, code);
    pgw_wb_bytes(w, data, n);
    pgw_wb_end(w);
}
static void b_auth_ok(pgw_wb_t *w) { auth(w, 0, NULL, 0); }
static void b_auth_clear(pgw_wb_t *w) { auth(w, 3, NULL, 0); }
static void b_auth_md5(pgw_wb_t *w) { auth(w, 5, "\x01\x02\xfe\xff", 4); }
static void b_auth_sasl(pgw_wb_t *w)
{
    static const char mechs[] = "SCRAM-SHA-256\0SCRAM-SHA-256-PLUS\0";
    auth(w, 10, mechs, sizeof(mechs));   /* with the list's final terminator */
}
static void b_auth_sasl_cont(pgw_wb_t *w)
{
    static const char data[] = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                               "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    auth(w, 11, data, sizeof(data) - 1);
}
static void b_auth_sasl_final(pgw_wb_t *w)
{
    static const char data[] = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
    auth(w, 12, data, sizeof(data) - 1);
}

static void b_param_status(pgw_wb_t *w) { pgw_wb_begin(w, 'S'); pair(w, "server_version", "15.5"); pgw_wb_end(w); }
static void b_keydata(pgw_wb_t *w) { pgw_wb_begin(w, 'K'); pgw_wb_u32(w, 4242); pgw_wb_u32(w, 0xDEADBEEFu); pgw_wb_end(w); }
static void b_ready_idle(pgw_wb_t *w) { pgw_wb_begin(w, 'Z'); pgw_wb_u8(w, 'I'); pgw_wb_end(w); }
static void b_ready_tx(pgw_wb_t *w) { pgw_wb_begin(w, 'Z'); pgw_wb_u8(w, 'T'); pgw_wb_end(w); }
static void b_ready_failed(pgw_wb_t *w) { pgw_wb_begin(w, 'Z'); pgw_wb_u8(w, 'E'); pgw_wb_end(w); }

static void field(pgw_wb_t *w, const char *name, uint32_t table, uint16_t att,
                  uint32_t type, uint16_t size, uint32_t typmod, uint16_t fmt)
{
    pgw_wb_cstr(w, name);
    pgw_wb_u32(w, table);
    pgw_wb_u16(w, att);
    pgw_wb_u32(w, type);
    pgw_wb_u16(w, size);
    pgw_wb_u32(w, typmod);
    pgw_wb_u16(w, fmt);
}

static void b_rowdesc(pgw_wb_t *w)
{
    pgw_wb_begin(w, 'T');
    pgw_wb_u16(w, 2);
    field(w, "id", 16384, 1, 23, 4, 0xFFFFFFFFu, 0);
    field(w, "name", 16384, 2, 25, 0xFFFF, 0xFFFFFFFFu, 0);
    pgw_wb_end(w);
}
static void b_rowdesc_empty(pgw_wb_t *w) { pgw_wb_begin(w, 'T'); pgw_wb_u16(w, 0); pgw_wb_end(w); }

static void b_datarow(pgw_wb_t *w)
{
    pgw_wb_begin(w, 'D');
    pgw_wb_u16(w, 2);
    value(w, "1");
    value(w, NULL);
    pgw_wb_end(w);
}

static void b_datarow_big(pgw_wb_t *w)
{
    pgw_wb_begin(w, 'D');
    pgw_wb_u16(w, 1);
    pgw_wb_u32(w, BIG_ROW);
    filler(w, BIG_ROW, 11);
    pgw_wb_end(w);
}

static void b_complete_select(pgw_wb_t *w) { pgw_wb_begin(w, 'C'); pgw_wb_cstr(w, "SELECT 2"); pgw_wb_end(w); }
static void b_complete_insert(pgw_wb_t *w) { pgw_wb_begin(w, 'C'); pgw_wb_cstr(w, "INSERT 0 5"); pgw_wb_end(w); }
static void b_complete_create(pgw_wb_t *w) { pgw_wb_begin(w, 'C'); pgw_wb_cstr(w, "CREATE TABLE"); pgw_wb_end(w); }
static void b_parse_complete(pgw_wb_t *w) { pgw_wb_begin(w, '1'); pgw_wb_end(w); }
static void b_bind_complete(pgw_wb_t *w) { pgw_wb_begin(w, '2'); pgw_wb_end(w); }
static void b_close_complete(pgw_wb_t *w) { pgw_wb_begin(w, '3'); pgw_wb_end(w); }
static void b_nodata(pgw_wb_t *w) { pgw_wb_begin(w, 'n'); pgw_wb_end(w); }
static void b_empty_query(pgw_wb_t *w) { pgw_wb_begin(w, 'I'); pgw_wb_end(w); }
static void b_suspended(pgw_wb_t *w) { pgw_wb_begin(w, 's'); pgw_wb_end(w); }

static void b_param_desc(pgw_wb_t *w)
{
    pgw_wb_begin(w, 't');
    pgw_wb_u16(w, 2);
    pgw_wb_u32(w, 23);
    pgw_wb_u32(w, 25);
    pgw_wb_end(w);
}

static void efield(pgw_wb_t *w, uint8_t code, const char *v)
{
    pgw_wb_u8(w, code);
    pgw_wb_cstr(w, v);
}

static void b_notice(pgw_wb_t *w)
{
    pgw_wb_begin(w, 'N');
    efield(w, 'S', "NOTICE");
    efield(w, 'V', "NOTICE");
    efield(w, 'C', "00000");
    efield(w, 'M', "table \"t\" does not exist, skipping");
    efield(w, 'F', "tablecmds.c");
    efield(w, 'L', "1300");
    efield(w, 'R', "DropErrorMsgNonExistent");
    pgw_wb_u8(w, 0);
    pgw_wb_end(w);
}

static void b_error(pgw_wb_t *w)
{
    pgw_wb_begin(w, 'E');
    efield(w, 'S', "ERREUR");   /* localized S, non-localized V */
    efield(w, 'V', "ERROR");
    efield(w, 'C', "23505");
    efield(w, 'M', "duplicate key value violates unique constraint \"users_pkey\"");
    efield(w, 'D', "Key (id)=(1) already exists.");
    efield(w, 's', "public");
    efield(w, 't', "users");
    efield(w, 'n', "users_pkey");
    efield(w, 'F', "nbtinsert.c");
    efield(w, 'L', "666");
    efield(w, 'R', "_bt_check_unique");
    pgw_wb_u8(w, 0);
    pgw_wb_end(w);
}

static void b_error_all(pgw_wb_t *w)
{
    pgw_wb_begin(w, 'E');
    efield(w, 'S', "ERROR");   /* no V: as before PostgreSQL 9.6 */
    efield(w, 'C', "42703");
    efield(w, 'M', "column \"x\" does not exist");
    efield(w, 'D', "detail");
    efield(w, 'H', "Perhaps you meant to reference the column \"t.y\".");
    efield(w, 'P', "8");
    efield(w, 'p', "3");
    efield(w, 'q', "SELECT x");
    efield(w, 'W', "PL/pgSQL function f() line 3 at RETURN");
    efield(w, 's', "public");
    efield(w, 't', "t");
    efield(w, 'c', "x");
    efield(w, 'd', "int4");
    efield(w, 'n', "t_x_check");
    efield(w, 'F', "parse_relation.c");
    efield(w, 'L', "3651");
    efield(w, 'R', "errorMissingColumn");
    pgw_wb_u8(w, 0);
    pgw_wb_end(w);
}

static void b_notify(pgw_wb_t *w)
{
    pgw_wb_begin(w, 'A');
    pgw_wb_u32(w, 4243);
    pgw_wb_cstr(w, "orders");
    pgw_wb_cstr(w, "{\"id\": 17}");
    pgw_wb_end(w);
}

static void copy_resp(pgw_wb_t *w, uint8_t type, uint8_t fmt, uint16_t ncols)
{
    pgw_wb_begin(w, type);
    pgw_wb_u8(w, fmt);
    pgw_wb_u16(w, ncols);
    for (uint16_t i = 0; i < ncols; i++)
        pgw_wb_u16(w, fmt);
    pgw_wb_end(w);
}
static void b_copy_in(pgw_wb_t *w) { copy_resp(w, 'G', 0, 2); }
static void b_copy_out(pgw_wb_t *w) { copy_resp(w, 'H', 1, 3); }
static void b_copy_both(pgw_wb_t *w) { copy_resp(w, 'W', 0, 0); }

static void b_copydata_be(pgw_wb_t *w) { pgw_wb_begin(w, 'd'); pgw_wb_bytes(w, "7\tseven\n", 8); pgw_wb_end(w); }
static void b_copydata_be_big(pgw_wb_t *w) { pgw_wb_begin(w, 'd'); filler(w, BIG_COPY, 17); pgw_wb_end(w); }

static void b_fresult(pgw_wb_t *w) { pgw_wb_begin(w, 'V'); pgw_wb_u32(w, 4); pgw_wb_u32(w, 0); pgw_wb_end(w); }
static void b_fresult_null(pgw_wb_t *w) { pgw_wb_begin(w, 'V'); pgw_wb_u32(w, 0xFFFFFFFFu); pgw_wb_end(w); }

static void b_negotiate(pgw_wb_t *w)
{
    pgw_wb_begin(w, 'v');
    pgw_wb_u32(w, 0);
    pgw_wb_u32(w, 2);
    pgw_wb_cstr(w, "_pq_.test_option");
    pgw_wb_cstr(w, "_pq_.other");
    pgw_wb_end(w);
}

#define F PGW_FRONTEND
#define B PGW_BACKEND
#define ST SAMPLE_STREAM
#define SH (SAMPLE_SHORT | SAMPLE_STREAM)
const sample_t pgw_samples[] = {
    /* frontend, startup phase: the stream order matters here */
    { "SSLRequest", F, SAMPLE_STARTUP | SH, b_ssl },
    { "GSSENCRequest", F, SAMPLE_STARTUP | ST, b_gssenc },
    { "StartupMessage", F, SAMPLE_STARTUP | SH, b_startup },
    { "StartupMessage replication 3.2", F, SAMPLE_STARTUP, b_startup_repl },
    { "CancelRequest", F, SAMPLE_STARTUP, b_cancel },
    /* frontend, regular */
    { "PasswordMessage", F, SH, b_password },
    { "SASLInitialResponse", F, ST, b_sasl_initial },
    { "Query", F, SH, b_query },
    { "Query multi-statement", F, ST, b_query_multi },
    { "Query big", F, SAMPLE_BIG | ST, b_query_big },
    { "Query empty", F, ST, b_query_empty },
    { "Parse", F, SH, b_parse },
    { "Parse unnamed", F, ST, b_parse_unnamed },
    { "Bind", F, SH, b_bind },
    { "Bind binary", F, ST, b_bind_binary },
    { "Describe statement", F, ST, b_describe_stmt },
    { "Describe portal", F, SH, b_describe_portal },
    { "Execute", F, SH, b_execute },
    { "Execute limit", F, ST, b_execute_limit },
    { "Flush", F, ST, b_flush },
    { "Sync", F, SH, b_sync },
    { "Close statement", F, ST, b_close_stmt },
    { "Close portal", F, ST, b_close_portal },
    { "FunctionCall", F, ST, b_fcall },
    { "CopyData", F, SH, b_copydata },
    { "CopyData big", F, SAMPLE_BIG | ST, b_copydata_big },
    { "CopyDone", F, ST, b_copydone },
    { "CopyFail", F, ST, b_copyfail },
    { "Terminate", F, SH, b_terminate },
    /* backend */
    { "AuthenticationCleartextPassword", B, ST, b_auth_clear },
    { "AuthenticationMD5Password", B, ST, b_auth_md5 },
    { "AuthenticationSASL", B, ST, b_auth_sasl },
    { "AuthenticationSASLContinue", B, ST, b_auth_sasl_cont },
    { "AuthenticationSASLFinal", B, ST, b_auth_sasl_final },
    { "AuthenticationOk", B, SH, b_auth_ok },
    { "ParameterStatus", B, SH, b_param_status },
    { "BackendKeyData", B, SH, b_keydata },
    { "ReadyForQuery idle", B, SH, b_ready_idle },
    { "NegotiateProtocolVersion", B, ST, b_negotiate },
    { "RowDescription", B, SH, b_rowdesc },
    { "RowDescription empty", B, ST, b_rowdesc_empty },
    { "DataRow", B, SH, b_datarow },
    { "DataRow big", B, SAMPLE_BIG | ST, b_datarow_big },
    { "CommandComplete SELECT", B, SH, b_complete_select },
    { "CommandComplete INSERT", B, ST, b_complete_insert },
    { "CommandComplete CREATE", B, ST, b_complete_create },
    { "ReadyForQuery in transaction", B, ST, b_ready_tx },
    { "ParseComplete", B, SH, b_parse_complete },
    { "BindComplete", B, ST, b_bind_complete },
    { "ParameterDescription", B, ST, b_param_desc },
    { "NoData", B, ST, b_nodata },
    { "PortalSuspended", B, ST, b_suspended },
    { "CloseComplete", B, ST, b_close_complete },
    { "EmptyQueryResponse", B, ST, b_empty_query },
    { "NoticeResponse", B, ST, b_notice },
    { "NotificationResponse", B, ST, b_notify },
    { "ErrorResponse", B, SH, b_error },
    { "ErrorResponse all fields", B, ST, b_error_all },
    { "ReadyForQuery failed", B, ST, b_ready_failed },
    { "CopyInResponse", B, ST, b_copy_in },
    { "CopyOutResponse", B, ST, b_copy_out },
    { "CopyData backend", B, ST, b_copydata_be },
    { "CopyData backend big", B, SAMPLE_BIG | ST, b_copydata_be_big },
    { "CopyDone backend", B, ST, b_copydone },
    { "CopyBothResponse", B, ST, b_copy_both },
    { "FunctionCallResponse", B, ST, b_fresult },
    { "FunctionCallResponse NULL", B, ST, b_fresult_null },
    { "ReadyForQuery end", B, SH, b_ready_idle },
};
const size_t pgw_nsamples = sizeof(pgw_samples) / sizeof(pgw_samples[0]);

uint8_t *sample_build(const sample_t *s, size_t *len)
{
    size_t cap = 16384;
    uint8_t *buf = malloc(cap);
    pgw_wb_t w;
    ssize_t n;

    if (!buf)
        abort();
    pgw_wb_init(&w, buf, cap);
    s->build(&w);
    n = pgw_wb_finish(&w);
    if (n < 0)
        abort();
    *len = (size_t)n;
    return buf;
}

uint8_t *sample_stream(pgw_side_t side, unsigned flags, size_t *len, size_t *count)
{
    uint8_t *out = NULL;
    size_t n = 0;

    *count = 0;
    for (size_t i = 0; i < pgw_nsamples; i++) {
        const sample_t *s = &pgw_samples[i];
        size_t mlen;
        uint8_t *m, *grown;

        if (s->side != side || (s->flags & flags) != flags)
            continue;
        m = sample_build(s, &mlen);
        grown = realloc(out, n + mlen);
        if (!grown)
            abort();
        out = grown;
        memcpy(out + n, m, mlen);
        n += mlen;
        (*count)++;
        free(m);
    }
    *len = n;
    return out;
}
