/* libFuzzer target: a spool segment left by a crash, replayed
 * (pgw_spool_scan and pgw_spool_replay, with its DELTA rebuilding).
 *
 * A record's checksum would stop the fuzzer at the first byte it changes,
 * so the input describes records and the target encodes them, checksums
 * right: repeated [u8 type][u8 token][u8 length] then that many value bytes
 * (type 0-4: also an unknown type, a DELTA without token or head, an EVENT
 * without token). A byte left over damages the file: when odd it flips a
 * bit after the magic, when even it cuts that many halves off the end (a
 * torn tail). The segment is written to a scratch directory and replayed.
 *
 * Checked besides sanitizers, for an undamaged segment: the events handed
 * over are exactly a model's, in order: every EVENT; every DELTA whose
 * BEGIN is earlier in the segment (among the BEGINs of rising tokens, as a
 * writer makes them), rebuilt as that BEGIN's first bytes and its own rest;
 * every BEGIN of a token no EVENT, DELTA or VOID completes; all up to the
 * first invalid record. For any segment: once every event handed over is
 * released, the spool counts zero bytes. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "spool.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { MAX_RECS = 256, MAX_VALUE = 255 };

typedef struct rec {
    uint8_t type, token;
    const uint8_t *value;
    size_t len;
} rec_t;

typedef struct out {
    uint8_t type;
    uint64_t token;
    uint8_t value[2 * MAX_VALUE];
    size_t len;
} out_t;

typedef struct replayed {
    out_t got[MAX_RECS];
    pgw_spool_seg_t *segs[MAX_RECS];
    size_t n;
} replayed_t;

static char g_dir[64];

static void on_replay(void *ud, pgw_spool_seg_t *seg, const pgw_spool_rec_t *r)
{
    replayed_t *rp = ud;
    if (rp->n >= MAX_RECS || r->value_len > sizeof rp->got[0].value || r->key_len != 1 ||
        r->key[0] != 'k')
        abort();
    out_t *o = &rp->got[rp->n];
    o->type = (uint8_t)r->type;
    o->token = r->token;
    o->len = r->value_len;
    if (r->value_len)
        memcpy(o->value, r->value, r->value_len);
    rp->segs[rp->n++] = seg;
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int completes(const rec_t *r, uint8_t token)
{
    return r->token == token && r->token &&
           (r->type == PGW_SPOOL_EVENT || r->type == PGW_SPOOL_DELTA || r->type == PGW_SPOOL_VOID);
}

/* What a replay of the valid records must hand over, in order. */
static size_t model(const rec_t *recs, size_t n, out_t *want)
{
    size_t valid = 0, nw = 0;
    while (valid < n && recs[valid].type != 0 &&
           !(recs[valid].type == PGW_SPOOL_DELTA && (recs[valid].token == 0 || recs[valid].len < 4)))
        valid++;
    const rec_t *begins[MAX_RECS];
    size_t nb = 0;
    for (size_t i = 0; i < valid; i++) {
        const rec_t *r = &recs[i];
        out_t *o = &want[nw];
        if (r->type == PGW_SPOOL_BEGIN) {
            if (!nb || begins[nb - 1]->token < r->token)
                begins[nb++] = r;
            int done = 0;
            for (size_t j = 0; j < valid && !done; j++)
                done = completes(&recs[j], r->token);
            if (done)
                continue;
        } else if (r->type == PGW_SPOOL_VOID) {
            continue;
        }
        o->type = r->type == PGW_SPOOL_BEGIN ? PGW_SPOOL_BEGIN : PGW_SPOOL_EVENT;
        o->token = r->token;
        if (r->type == PGW_SPOOL_DELTA) {
            const rec_t *b = NULL;
            for (size_t j = 0; j < nb && !b; j++)
                if (begins[j]->token == r->token)
                    b = begins[j];
            uint32_t shared = le32(r->value);
            if (!b || shared > b->len)
                continue;           /* reported lost */
            if (shared)
                memcpy(o->value, b->value, shared);
            if (r->len > 4)
                memcpy(o->value + shared, r->value + 4, r->len - 4);
            o->len = shared + r->len - 4;
        } else {
            if (r->len)
                memcpy(o->value, r->value, r->len);
            o->len = r->len;
        }
        nw++;
    }
    return nw;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A directory of its own per run (libFuzzer may leave without running
     * atexit handlers), removed at the end: the run deletes its segment. */
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/pgw-fuzz-spool-XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : tmp ? tmp : "/tmp");
    if (!mkdtemp(g_dir))
        abort();
    atomic_store(&pgw_log_level, -1);   /* damaged segments are logged at length */
    static rec_t recs[MAX_RECS];
    static out_t want[MAX_RECS];
    static replayed_t rp;
    size_t nrecs = 0, off = 0;
    pgw_jbuf_t b;
    pgw_jbuf_init(&b, 0);
    pgw_jbuf_put(&b, PGW_SPOOL_MAGIC, PGW_SPOOL_MAGIC_LEN);
    while (off + 3 <= size && nrecs < MAX_RECS) {
        uint8_t type = data[off] % 5, token = data[off + 1];
        size_t len = data[off + 2];
        if (off + 3 + len > size)
            break;
        const uint8_t *v = data + off + 3;
        off += 3 + len;
        pgw_spool_encode(&b, (pgw_spool_type_t)type, token, "k", 1, v, len);
        recs[nrecs++] = (rec_t){ type, token, v, len };
    }
    if (b.failed)
        abort();
    size_t flen = b.len;
    int damaged = off < size;
    if (damaged) {
        uint8_t d = data[off];
        if (d & 1 && flen > PGW_SPOOL_MAGIC_LEN)
            b.data[PGW_SPOOL_MAGIC_LEN + d % (flen - PGW_SPOOL_MAGIC_LEN)] ^= 0x10;
        else if (d / 2 < flen - PGW_SPOOL_MAGIC_LEN)
            flen -= d / 2;
    }
    char path[128];
    snprintf(path, sizeof path, "%s/0000000000000001-0000-00000001.seg", g_dir);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(b.data, 1, flen, f) != flen)
        abort();
    fclose(f);
    pgw_jbuf_free(&b);

    pgw_spool_t sp;
    if (pgw_spool_init(&sp, g_dir) != 0)
        abort();
    pgw_spool_seg_t *old = NULL;
    rp.n = 0;
    ssize_t n = pgw_spool_replay(&sp, on_replay, &rp, &old);
    if (n < 0 || (size_t)n != rp.n)
        abort();
    if (!damaged) {
        size_t nw = model(recs, nrecs, want);
        if (nw != rp.n)
            abort();
        for (size_t i = 0; i < nw; i++)
            if (want[i].type != rp.got[i].type || want[i].token != rp.got[i].token ||
                want[i].len != rp.got[i].len || memcmp(want[i].value, rp.got[i].value, want[i].len))
                abort();
    }
    /* Every event acknowledged: the segment goes, and its bytes. */
    for (size_t i = 0; i < rp.n; i++)
        pgw_spool_seg_release(rp.segs[i], 1);
    if (atomic_load(&sp.bytes) != 0)
        abort();
    while (old) {
        pgw_spool_seg_t *next = old->next;
        if (!atomic_load(&old->deleted))
            abort();
        free(old->path);
        free(old);
        old = next;
    }
    pgw_spool_destroy(&sp);
    if (rmdir(g_dir) != 0)
        abort();                    /* something was left in the spool directory */
    return 0;
}
