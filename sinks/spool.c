/* The durable spool of the Kafka sink. See spool.h for the file format and
 * the reference counting of segments. */
#include "spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <xxhash.h>
#include <unistd.h>
#include <zlib.h>

#include "log.h"

#define STREAM_LEN 21               /* 16 hex digits, '-', 4 digits */
#define RUN_LEN 16                  /* the process start: the 16 hex digits */
#define BEGINS_MIN 256
#define BEGINS_MAX (1u << 24)      /* begins awaiting completion, per writer */

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const uint8_t *p)
{
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

/* XXH3 hashes a spooled event in about a tenth of the time zlib's CRC-32
 * takes, which was the largest part of spooling; either detects a torn or
 * damaged record. */
static uint32_t checksum(const uint8_t *p, size_t n)
{
    return (uint32_t)XXH3_64bits(p, n);
}

static uint32_t crc_v1(const uint8_t *p, size_t n)
{
    uLong c = crc32(0L, Z_NULL, 0);
    while (n) {
        uInt chunk = n > (1u << 30) ? (1u << 30) : (uInt)n;
        c = crc32(c, p, chunk);
        p += chunk;
        n -= chunk;
    }
    return (uint32_t)c;
}

/* A record's length word is never zero, so zeros up to the end of a file
 * are not a torn record: they are the preallocated, unused rest of the
 * segment a writer was filling when its process stopped. */
static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

/* ------------------------------------------------------------ records */

/* Writes one record at h, whose value is v1 then v2 (v2 may be empty);
 * h holds PGW_SPOOL_REC_HEAD + PGW_SPOOL_PAYLOAD_HEAD + key_len + len1 +
 * len2 bytes. Returns that length. */
static size_t record_put(uint8_t *h, pgw_spool_type_t type, uint64_t token, const void *key,
                         size_t key_len, const void *v1, size_t len1, const void *v2, size_t len2)
{
    size_t plen = PGW_SPOOL_PAYLOAD_HEAD + key_len + len1 + len2;
    uint8_t *p = h + PGW_SPOOL_REC_HEAD, *v = p + PGW_SPOOL_PAYLOAD_HEAD;
    p[0] = (uint8_t)type;
    p[1] = p[2] = p[3] = 0;
    put_u64(p + 4, token);
    put_u32(p + 12, (uint32_t)key_len);
    if (key_len)
        memcpy(v, key, key_len);
    if (len1)
        memcpy(v + key_len, v1, len1);
    if (len2)
        memcpy(v + key_len + len1, v2, len2);
    put_u32(h, (uint32_t)plen);
    put_u32(h + 4, checksum(p, plen));
    return PGW_SPOOL_REC_HEAD + plen;
}

static void encode2(pgw_jbuf_t *out, pgw_spool_type_t type, uint64_t token, const void *key,
                    size_t key_len, const void *v1, size_t len1, const void *v2, size_t len2)
{
    if (!pgw_jbuf_reserve(out, PGW_SPOOL_REC_HEAD + PGW_SPOOL_PAYLOAD_HEAD + key_len + len1 + len2))
        return;
    out->len += record_put((uint8_t *)out->data + out->len, type, token, key, key_len, v1, len1,
                           v2, len2);
}

void pgw_spool_encode(pgw_jbuf_t *out, pgw_spool_type_t type, uint64_t token,
                      const void *key, size_t key_len, const void *value, size_t value_len)
{
    encode2(out, type, token, key, key_len, value, value_len, NULL, 0);
}

size_t pgw_spool_record_size(const void *rec)
{
    return PGW_SPOOL_REC_HEAD + get_u32(rec);
}

size_t pgw_spool_scan(const uint8_t *buf, size_t len, pgw_spool_rec_fn fn, void *ud,
                      const char **why)
{
    *why = NULL;
    if (len < PGW_SPOOL_MAGIC_LEN) {
        if (len)
            *why = "torn file header";
        return 0;
    }
    uint32_t (*sum)(const uint8_t *, size_t) = checksum;
    if (memcmp(buf, PGW_SPOOL_MAGIC_V1, PGW_SPOOL_MAGIC_LEN) == 0) {
        sum = crc_v1;
    } else if (memcmp(buf, PGW_SPOOL_MAGIC, PGW_SPOOL_MAGIC_LEN) != 0 &&
               memcmp(buf, PGW_SPOOL_MAGIC_V3, PGW_SPOOL_MAGIC_LEN) != 0 &&
               memcmp(buf, PGW_SPOOL_MAGIC_V2, PGW_SPOOL_MAGIC_LEN) != 0) {
        *why = "not a spool segment (bad magic)";
        return 0;
    }
    size_t off = PGW_SPOOL_MAGIC_LEN;
    while (off < len) {
        if (buf[off] == 0 && all_zero(buf + off, len - off))
            break;                  /* the unused rest of a mapped segment */
        if (len - off < PGW_SPOOL_REC_HEAD) {
            *why = "torn record header";
            break;
        }
        uint32_t plen = get_u32(buf + off);
        if (plen < PGW_SPOOL_PAYLOAD_HEAD || plen > PGW_SPOOL_MAX_RECORD) {
            *why = "bad record length";
            break;
        }
        if (len - off - PGW_SPOOL_REC_HEAD < plen) {
            *why = "torn record";
            break;
        }
        const uint8_t *p = buf + off + PGW_SPOOL_REC_HEAD;
        if (sum(p, plen) != get_u32(buf + off + 4)) {
            *why = "bad record checksum";
            break;
        }
        pgw_spool_rec_t r;
        r.type = (pgw_spool_type_t)p[0];
        r.token = get_u64(p + 4);
        r.key_len = get_u32(p + 12);
        if ((r.type != PGW_SPOOL_EVENT && r.type != PGW_SPOOL_BEGIN && r.type != PGW_SPOOL_VOID &&
             r.type != PGW_SPOOL_DELTA) ||
            r.key_len > plen - PGW_SPOOL_PAYLOAD_HEAD) {
            *why = "bad record type or key length";
            break;
        }
        r.key = p + PGW_SPOOL_PAYLOAD_HEAD;
        r.value = r.key + r.key_len;
        r.value_len = plen - PGW_SPOOL_PAYLOAD_HEAD - r.key_len;
        if (r.type == PGW_SPOOL_DELTA && (r.token == 0 || r.value_len < PGW_SPOOL_DELTA_HEAD)) {
            *why = "bad delta record";
            break;
        }
        if (fn && fn(ud, &r))
            return off + PGW_SPOOL_REC_HEAD + plen;
        off += PGW_SPOOL_REC_HEAD + plen;
    }
    return off;
}

/* ------------------------------------------------------------ the directory */

int pgw_spool_init(pgw_spool_t *sp, const char *dir)
{
    memset(sp, 0, sizeof *sp);
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        int e = errno;
        pgw_error("spool: cannot create %s: %s", dir, strerror(e));
        return -e;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        pgw_error("spool: %s is not a directory", dir);
        return -ENOTDIR;
    }
    sp->dir = strdup(dir);
    if (!sp->dir)
        return -ENOMEM;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    sp->stream_base = (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
    atomic_init(&sp->bytes, 0);
    atomic_init(&sp->segments_deleted, 0);
    atomic_init(&sp->next_writer, 0);
    return 0;
}

void pgw_spool_destroy(pgw_spool_t *sp)
{
    free(sp->dir);
    sp->dir = NULL;
}

void pgw_spool_seg_release(pgw_spool_seg_t *seg, int64_t n)
{
    if (atomic_fetch_sub(&seg->pending, n) != n)
        return;
    pgw_spool_t *sp = seg->spool;
    if (unlink(seg->path) != 0 && errno != ENOENT)
        pgw_warn("spool: cannot delete %s: %s", seg->path, strerror(errno));
    atomic_fetch_sub(&sp->bytes, seg->bytes);
    atomic_fetch_add(&sp->segments_deleted, 1);
    atomic_store(&seg->deleted, true);
    if (sp->on_free_space)
        sp->on_free_space(sp->ud);
}

static pgw_spool_seg_t *seg_new(pgw_spool_t *sp, const char *path, uint64_t bytes)
{
    pgw_spool_seg_t *seg = calloc(1, sizeof *seg);
    if (!seg)
        return NULL;
    seg->path = strdup(path);
    if (!seg->path) {
        free(seg);
        return NULL;
    }
    seg->spool = sp;
    seg->bytes = bytes;
    atomic_init(&seg->pending, 1);
    atomic_init(&seg->deleted, false);
    return seg;
}

static void seg_free(pgw_spool_seg_t *seg)
{
    free(seg->path);
    free(seg);
}

/* ------------------------------------------------------------ writers */

void pgw_spool_writer_init(pgw_spool_writer_t *w, pgw_spool_t *sp, uint64_t seg_max)
{
    memset(w, 0, sizeof *w);
    w->spool = sp;
    w->id = atomic_fetch_add(&sp->next_writer, 1);
    w->seg_max = seg_max;
    w->fd = -1;
    w->tail = &w->segs;
}

/* A segment is preallocated (fallocate) and mapped: an append is a copy
 * into the page cache, as durable against a crash of pgwarden as a write(2)
 * and without the system call, and a full disk shows here, at the
 * preallocation, never as a fault on a mapped page. A file system that
 * cannot preallocate gets plain appending writes. */
static int open_segment(pgw_spool_writer_t *w, size_t first)
{
    pgw_spool_t *sp = w->spool;
    char path[4096];
    int n = snprintf(path, sizeof path, "%s/%016" PRIx64 "-%04u-%08" PRIu64 ".seg", sp->dir,
                     sp->stream_base, w->id, ++w->nseg);
    if (n < 0 || (size_t)n >= sizeof path)
        return -ENAMETOOLONG;
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    size_t size = PGW_SPOOL_MAGIC_LEN + first;
    if (size < w->seg_max)
        size = (size_t)w->seg_max;
    size = (size + 4095) & ~(size_t)4095;
    uint8_t *map = NULL;
    int e = posix_fallocate(fd, 0, (off_t)size);
    if (e == 0) {
        map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED) {
            map = NULL;
            e = ftruncate(fd, 0) == 0 ? 0 : errno;
        }
    } else if (e == EOPNOTSUPP || e == EINVAL) {
        e = 0;                      /* no preallocation here: plain writes */
    }
    if (!e && map)
        memcpy(map, PGW_SPOOL_MAGIC, PGW_SPOOL_MAGIC_LEN);
    else if (!e && write(fd, PGW_SPOOL_MAGIC, PGW_SPOOL_MAGIC_LEN) != PGW_SPOOL_MAGIC_LEN)
        e = errno ? errno : EIO;
    pgw_spool_seg_t *seg = e ? NULL : seg_new(sp, path, PGW_SPOOL_MAGIC_LEN);
    if (!seg) {
        if (map)
            munmap(map, size);
        close(fd);
        unlink(path);
        return e ? -e : -ENOMEM;
    }
    atomic_fetch_add(&sp->bytes, PGW_SPOOL_MAGIC_LEN);
    w->fd = fd;
    w->map = map;
    w->map_len = map ? size : 0;
    w->cur = seg;
    *w->tail = seg;
    w->tail = &seg->next;
    return 0;
}

void pgw_spool_writer_seal(pgw_spool_writer_t *w)
{
    if (!w->cur)
        return;
    pgw_spool_seg_t *seg = w->cur;
    if (w->map) {
        munmap(w->map, w->map_len);
        w->map = NULL;
        w->map_len = 0;
        /* The unused rest goes (were this to fail, replay reads zeros
         * as the end anyway), and the file keeps the time of its last
         * append, which a replay takes as its events' age. */
        (void)ftruncate(w->fd, (off_t)seg->bytes);
        const struct timespec times[2] = { { 0, UTIME_OMIT }, w->last_append };
        (void)futimens(w->fd, times);
    }
    close(w->fd);
    w->fd = -1;
    w->cur = NULL;
    pgw_spool_seg_release(seg, 1);
}

/* Without a mapping: one write(2) at the segment's end. Nothing of a failed
 * append may stay: a later replay would find a torn record in the middle of
 * the segment. */
static int append_write(pgw_spool_writer_t *w, pgw_spool_seg_t *seg, const uint8_t *p, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pwrite(w->fd, p + done, len - done, (off_t)(seg->bytes + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int rc = n < 0 ? -errno : -EIO;
            if (ftruncate(w->fd, (off_t)seg->bytes) != 0)
                pgw_spool_writer_seal(w);
            return rc;
        }
        done += (size_t)n;
    }
    return 0;
}

void pgw_spool_writer_reserve(pgw_spool_writer_t *w, size_t len)
{
    if (w->cur && w->cur->bytes + len > w->seg_max && w->cur->bytes > PGW_SPOOL_MAGIC_LEN)
        pgw_spool_writer_seal(w);
    if (w->cur && w->map && w->cur->bytes + len > w->map_len)
        pgw_spool_writer_seal(w);
}

int pgw_spool_writer_append(pgw_spool_writer_t *w, const void *buf, size_t len, int64_t holds,
                            pgw_spool_seg_t **out)
{
    int rc;
    pgw_spool_writer_reserve(w, len);
    if (!w->cur && (rc = open_segment(w, len)) != 0)
        return rc;
    pgw_spool_seg_t *seg = w->cur;
    w->last_at = seg->bytes;
    if (w->map) {
        memcpy(w->map + seg->bytes, buf, len);
        clock_gettime(CLOCK_REALTIME, &w->last_append);
    } else if ((rc = append_write(w, seg, buf, len)) != 0) {
        w->write_errors++;
        return rc;
    }
    w->writes++;
    w->bytes_written += len;
    seg->bytes += len;
    atomic_fetch_add(&w->spool->bytes, len);
    if (holds)
        pgw_spool_seg_hold(seg, holds);
    *out = seg;
    return 0;
}

int pgw_spool_writer_track(pgw_spool_writer_t *w, uint64_t token, pgw_spool_seg_t *seg)
{
    return pgw_spool_writer_track_at(w, token, seg, 0, 0);
}

int pgw_spool_writer_track_at(pgw_spool_writer_t *w, uint64_t token, pgw_spool_seg_t *seg,
                              uint64_t value_at, size_t value_len)
{
    if (w->begin_count == 0)
        w->begin_base = token;
    if (token < w->begin_base)
        return -EINVAL;
    uint64_t idx = token - w->begin_base;
    if (idx >= BEGINS_MAX)
        return -ERANGE;             /* not this writer's sequence */
    if (idx >= w->begin_cap) {
        size_t cap = w->begin_cap ? w->begin_cap : BEGINS_MIN;
        while (cap <= idx)
            cap *= 2;
        struct pgw_spool_begin *n = calloc(cap, sizeof *n);
        if (!n)
            return -ENOMEM;
        for (size_t i = 0; i < w->begin_count; i++)
            n[i] = w->begins[(w->begin_head + i) % w->begin_cap];
        free(w->begins);
        w->begins = n;
        w->begin_head = 0;
        w->begin_cap = cap;
    }
    struct pgw_spool_begin *b = &w->begins[(w->begin_head + idx) % w->begin_cap];
    b->seg = seg;
    b->at = value_len <= UINT32_MAX ? value_at : 0;
    b->len = (uint32_t)value_len;
    if (idx >= w->begin_count)
        w->begin_count = (size_t)idx + 1;
    pgw_spool_seg_hold(seg, 1);
    return 0;
}

/* How many leading bytes a and b share. */
static size_t shared_prefix(const uint8_t *a, const uint8_t *b, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        if (x != y)
            break;
    }
    while (i < n && a[i] == b[i])
        i++;
    return i;
}

/* A DELTA costs its 4-byte head; below this much shared, an EVENT it is. */
#define DELTA_MIN_SHARED 64

void pgw_spool_encode_completion(pgw_spool_writer_t *w, pgw_jbuf_t *out, uint64_t token,
                                 const void *key, size_t key_len, const void *value,
                                 size_t value_len)
{
    size_t shared = 0;
    if (w->map && token >= w->begin_base && token - w->begin_base < w->begin_count) {
        const struct pgw_spool_begin *b =
            &w->begins[(w->begin_head + (size_t)(token - w->begin_base)) % w->begin_cap];
        if (b->seg && b->seg == w->cur && b->at && b->at + b->len <= b->seg->bytes)
            shared = shared_prefix(w->map + b->at, value, b->len < value_len ? b->len : value_len);
    }
    if (shared < DELTA_MIN_SHARED || shared > UINT32_MAX) {
        pgw_spool_encode(out, PGW_SPOOL_EVENT, token, key, key_len, value, value_len);
        return;
    }
    uint8_t head[PGW_SPOOL_DELTA_HEAD];
    put_u32(head, (uint32_t)shared);
    encode2(out, PGW_SPOOL_DELTA, token, key, key_len, head, sizeof head,
            (const uint8_t *)value + shared, value_len - shared);
}

/* The begin of token, in seg, a sealed segment, is completed by a record
 * in a later one, which may be deleted first (its events delivered) while
 * seg stays for another begin: a VOID at seg's end tells a replay so. A
 * few begins per segment are in flight when it is sealed; this is their
 * cost. Were it to fail, a replay after a crash would write the begin
 * again, as unknown, beside its delivered completion (same event_id). */
static void mark_resolved(pgw_spool_writer_t *w, pgw_spool_seg_t *seg, uint64_t token)
{
    uint8_t rec[PGW_SPOOL_REC_HEAD + PGW_SPOOL_PAYLOAD_HEAD];
    (void)record_put(rec, PGW_SPOOL_VOID, token, NULL, 0, NULL, 0, NULL, 0);

    int fd = open(seg->path, O_WRONLY | O_CLOEXEC);
    struct stat st;
    ssize_t n = -1;
    if (fd >= 0 && fstat(fd, &st) == 0) {
        n = pwrite(fd, rec, sizeof rec, (off_t)seg->bytes);
        if (n == (ssize_t)sizeof rec) {
            /* The segment keeps the time of its last event (its age). */
            const struct timespec times[2] = { { 0, UTIME_OMIT }, st.st_mtim };
            (void)futimens(fd, times);
            seg->bytes += sizeof rec;
            atomic_fetch_add(&w->spool->bytes, sizeof rec);
        } else if (n > 0 && ftruncate(fd, (off_t)seg->bytes) != 0) {
            n = -1;
        }
    }
    if (n != (ssize_t)sizeof rec)
        pgw_warn("spool: cannot mark a completed statement in %s: %s", seg->path,
                 n < 0 ? strerror(errno) : "short write");
    if (fd >= 0)
        close(fd);
}

void pgw_spool_writer_resolve(pgw_spool_writer_t *w, uint64_t token)
{
    if (token < w->begin_base || token - w->begin_base >= w->begin_count)
        return;
    size_t slot = (w->begin_head + (size_t)(token - w->begin_base)) % w->begin_cap;
    pgw_spool_seg_t *seg = w->begins[slot].seg;
    w->begins[slot].seg = NULL;
    if (seg) {
        if (seg != w->cur && atomic_load(&seg->pending) > 1)
            mark_resolved(w, seg, token);
        pgw_spool_seg_release(seg, 1);
    }
    /* Completions mostly come in order: the ring's head moves past them. */
    while (w->begin_count && !w->begins[w->begin_head].seg) {
        w->begin_head = (w->begin_head + 1) % w->begin_cap;
        w->begin_base++;
        w->begin_count--;
    }
}

void pgw_spool_writer_sweep(pgw_spool_writer_t *w)
{
    pgw_spool_seg_t **pp = &w->segs;
    while (*pp) {
        pgw_spool_seg_t *seg = *pp;
        if (seg != w->cur && atomic_load(&seg->deleted)) {
            *pp = seg->next;
            seg_free(seg);
        } else {
            pp = &seg->next;
        }
    }
    w->tail = pp;
}

void pgw_spool_writer_close(pgw_spool_writer_t *w)
{
    pgw_spool_writer_seal(w);
    while (w->segs) {
        pgw_spool_seg_t *seg = w->segs;
        w->segs = seg->next;
        seg_free(seg);
    }
    w->tail = &w->segs;
    free(w->begins);
    w->begins = NULL;
    w->begin_cap = w->begin_count = 0;
}

/* ------------------------------------------------------------ replay */

typedef struct seg_file {
    char *name;
    uint8_t *data;
    size_t len, valid;
    pgw_spool_seg_t *seg;
} seg_file_t;

static int cmp_names(const void *a, const void *b)
{
    return strcmp(((const seg_file_t *)a)->name, ((const seg_file_t *)b)->name);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int is_segment_name(const char *n)
{
    size_t len = strlen(n);
    return len > STREAM_LEN + 5 && n[16] == '-' && n[STREAM_LEN] == '-' &&
           strcmp(n + len - 4, ".seg") == 0;
}

static int read_file(const char *path, uint8_t **data, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    size_t size = (size_t)st.st_size;
    uint8_t *buf = malloc(size ? size : 1);
    size_t got = 0;
    while (buf && got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    if (!buf)
        return -ENOMEM;
    *data = buf;
    *len = got;
    return 0;
}

typedef struct tokens {
    uint64_t *v;
    size_t n, cap;
    size_t begins;                  /* BEGIN records seen */
    int failed;
} tokens_t;

static int collect_completion(void *ud, const pgw_spool_rec_t *r)
{
    tokens_t *t = ud;
    t->begins += r->type == PGW_SPOOL_BEGIN;
    if (r->type == PGW_SPOOL_BEGIN || r->token == 0)
        return 0;
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 1024;
        uint64_t *v = realloc(t->v, cap * sizeof *v);
        if (!v) {
            t->failed = 1;
            return 1;
        }
        t->v = v;
        t->cap = cap;
    }
    t->v[t->n++] = r->token;
    return 0;
}

/* The BEGINs of the segment being replayed, in order, for its DELTAs. */
typedef struct seg_begin {
    uint64_t token;
    const uint8_t *value;
    size_t len;
} seg_begin_t;

typedef struct replay_ctx {
    tokens_t *done;
    pgw_spool_seg_t *seg;
    pgw_spool_replay_fn fn;
    void *ud;
    ssize_t count;
    seg_begin_t *begins;
    size_t nbegins, cap;
    pgw_jbuf_t event;               /* a DELTA rebuilt */
} replay_ctx_t;

static const seg_begin_t *find_begin(const replay_ctx_t *c, uint64_t token)
{
    size_t lo = 0, hi = c->nbegins;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c->begins[mid].token < token)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < c->nbegins && c->begins[lo].token == token ? &c->begins[lo] : NULL;
}

/* A DELTA as the EVENT it stands for; NULL (logged) when its BEGIN is not
 * in the segment, which its writer never does: a damaged segment. */
static const pgw_spool_rec_t *rebuild(replay_ctx_t *c, const pgw_spool_rec_t *r,
                                      pgw_spool_rec_t *ev)
{
    uint32_t shared = get_u32(r->value);
    const seg_begin_t *b = find_begin(c, r->token);
    if (!b || shared > b->len) {
        pgw_error("spool: %s: a completed statement's record refers to a begin the segment does "
                  "not hold; that event is lost", c->seg->path);
        return NULL;
    }
    size_t rest = r->value_len - PGW_SPOOL_DELTA_HEAD;
    pgw_jbuf_reset(&c->event);
    pgw_jbuf_put(&c->event, (const char *)b->value, shared);
    pgw_jbuf_put(&c->event, (const char *)r->value + PGW_SPOOL_DELTA_HEAD, rest);
    if (c->event.failed) {
        pgw_error("spool: %s: out of memory rebuilding an event; it is not replayed", c->seg->path);
        return NULL;
    }
    *ev = *r;
    ev->type = PGW_SPOOL_EVENT;
    ev->value = (const uint8_t *)(c->event.len ? c->event.data : "");
    ev->value_len = c->event.len;
    return ev;
}

static int replay_rec(void *ud, const pgw_spool_rec_t *r)
{
    replay_ctx_t *c = ud;
    pgw_spool_rec_t ev;
    if (r->type == PGW_SPOOL_VOID)
        return 0;
    if (r->type == PGW_SPOOL_BEGIN) {
        /* Kept even when completed: a DELTA later in the segment needs it.
         * Tokens rise within a segment; were one out of order, the DELTAs
         * that need the begins before it would be reported lost. */
        if (c->nbegins < c->cap &&
            (!c->nbegins || c->begins[c->nbegins - 1].token < r->token))
            c->begins[c->nbegins++] = (seg_begin_t){ r->token, r->value, r->value_len };
        if (c->done->n && bsearch(&r->token, c->done->v, c->done->n, sizeof(uint64_t), cmp_u64))
            return 0;               /* its completion (or VOID) is in the spool */
    } else if (r->type == PGW_SPOOL_DELTA && !(r = rebuild(c, r, &ev))) {
        return 0;
    }
    pgw_spool_seg_hold(c->seg, 1);
    c->fn(c->ud, c->seg, r);
    c->count++;
    return 0;
}

ssize_t pgw_spool_replay(pgw_spool_t *sp, pgw_spool_replay_fn fn, void *ud, pgw_spool_seg_t **out)
{
    DIR *d = opendir(sp->dir);
    *out = NULL;
    if (!d) {
        int e = errno;
        pgw_error("spool: cannot read %s: %s", sp->dir, strerror(e));
        return -e;
    }
    seg_file_t *files = NULL;
    size_t n = 0, cap = 0;
    ssize_t rc = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!is_segment_name(de->d_name))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            seg_file_t *f = realloc(files, cap * sizeof *f);
            if (!f) {
                rc = -ENOMEM;
                goto out;
            }
            files = f;
        }
        memset(&files[n], 0, sizeof files[n]);
        files[n].name = strdup(de->d_name);
        if (!files[n].name) {
            rc = -ENOMEM;
            goto out;
        }
        n++;
    }
    if (n)
        qsort(files, n, sizeof *files, cmp_names);

    char path[4096];
    for (size_t i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/%s", sp->dir, files[i].name);
        int e = read_file(path, &files[i].data, &files[i].len);
        if (e) {
            pgw_error("spool: cannot read %s: %s; its events are not replayed", path, strerror(-e));
            continue;
        }
        const char *why;
        files[i].valid = pgw_spool_scan(files[i].data, files[i].len, NULL, NULL, &why);
        if (why)
            pgw_warn("spool: %s: %s at offset %zu of %zu bytes; the rest of the segment is skipped",
                     path, why, files[i].valid, files[i].len);
        /* A segment left mapped counts its records, not its zero tail. */
        uint64_t bytes = why ? files[i].len : files[i].valid;
        files[i].seg = seg_new(sp, path, bytes);
        if (!files[i].seg) {
            rc = -ENOMEM;
            goto out;
        }
        atomic_fetch_add(&sp->bytes, bytes);
    }

    /* Run by run (tokens are unique within one process's run, whichever
     * of its writers spooled the completion): the completions first, then
     * what is to be sent. */
    tokens_t done = { 0 };
    replay_ctx_t c = { .done = &done, .fn = fn, .ud = ud };
    pgw_jbuf_init(&c.event, 0);
    for (size_t i = 0; i < n; ) {
        size_t j = i;
        while (j < n && strncmp(files[i].name, files[j].name, RUN_LEN) == 0)
            j++;
        done.n = 0;
        const char *why;
        size_t most = 0;            /* the begins of the run's largest segment */
        for (size_t k = i; k < j; k++) {
            if (!files[k].seg)
                continue;
            done.begins = 0;
            (void)pgw_spool_scan(files[k].data, files[k].valid, collect_completion, &done, &why);
            if (done.begins > most)
                most = done.begins;
        }
        if (most > c.cap) {
            seg_begin_t *v = realloc(c.begins, most * sizeof *v);
            if (v) {
                c.begins = v;
                c.cap = most;
            } else {
                done.failed = 1;
            }
        }
        if (done.failed) {
            free(done.v);
            free(c.begins);
            pgw_jbuf_free(&c.event);
            rc = -ENOMEM;
            goto out;
        }
        if (done.n)
            qsort(done.v, done.n, sizeof *done.v, cmp_u64);
        for (size_t k = i; k < j; k++) {
            if (!files[k].seg)
                continue;
            c.seg = files[k].seg;
            c.count = 0;
            c.nbegins = 0;
            (void)pgw_spool_scan(files[k].data, files[k].valid, replay_rec, &c, &why);
            rc += c.count;
        }
        i = j;
    }
    free(done.v);
    free(c.begins);
    pgw_jbuf_free(&c.event);

    /* Release the scan's own reference: segments with nothing left to send
     * (or that could not be read... those are kept) go now. */
    pgw_spool_seg_t **tail = out;
    for (size_t i = 0; i < n; i++) {
        pgw_spool_seg_t *seg = files[i].seg;
        if (!seg)
            continue;
        if (files[i].valid < PGW_SPOOL_MAGIC_LEN && files[i].len >= PGW_SPOOL_MAGIC_LEN) {
            /* Not a segment of ours: left alone for the operator. */
            pgw_warn("spool: %s is kept as it is (unreadable)", seg->path);
            atomic_fetch_sub(&sp->bytes, seg->bytes);
            seg_free(seg);
            files[i].seg = NULL;
            continue;
        }
        *tail = seg;
        tail = &seg->next;
        files[i].seg = NULL;
        pgw_spool_seg_release(seg, 1);
    }
out:
    closedir(d);
    for (size_t i = 0; i < n; i++) {
        free(files[i].name);
        free(files[i].data);
        if (files[i].seg)
            seg_free(files[i].seg);
    }
    free(files);
    return rc;
}
