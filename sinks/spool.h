/* The Kafka sink's durable spool: append-only segment files in one
 * directory, holding every event until Kafka has acknowledged it.
 *
 * Each writer (one per thread that hands batches to the Kafka sink) appends
 * to segments of its own, so writers never share a file or a lock. A
 * segment is named STREAM-NNNNNNNN.seg, where STREAM identifies the
 * process start and the writer, and NNNNNNNN counts that writer's segments.
 *
 * File layout: an 8-byte magic ("PGWSPL4\n"), then records, then, in the
 * segment a writer was filling when its process stopped, zeros up to the
 * preallocated size (a record's length is never zero, so they end the scan
 * cleanly; a sealed segment is cut to its records):
 *
 *   u32 payload length (little endian)  u32 checksum of the payload: the low
 *                                       32 bits of its XXH3-64 (libxxhash)
 *   payload: u8 type, u8[3] zero, u64 token, u32 key length, key, value
 *
 * A record is either an EVENT (to be produced to Kafka; token non-zero when
 * it completes a BEGIN of the same run, i.e. process start) or a BEGIN (a statement about to
 * be forwarded, the event it would get if pgwarden stopped now: status
 * unknown), or a VOID: the BEGIN of the same token needs no replay, either
 * withdrawn (its statement never ran: pipelined behind a login that
 * failed) or, appended to the BEGIN's sealed segment, completed by an
 * EVENT in a later segment, which may be deleted first. A VOID is never
 * produced. A BEGIN is produced only by a replay that finds no EVENT, DELTA
 * or VOID with its token in its run. Tokens are unique within a run, and a
 * writer's begins come in increasing token order.
 *
 * A DELTA is an EVENT written against its BEGIN, which is earlier in the
 * same segment: its value is a u32 (little endian) count of the BEGIN's
 * leading bytes the event shares, then the rest of the event. A completed
 * statement's event differs from its begin mostly in `result`, so this
 * halves what the spool writes per statement. The writer never lets the
 * two be in different segments; a replay rebuilds the EVENT.
 *
 * A segment's `pending` counts what still needs it: one reference while
 * its writer appends to it, one per event produced and not yet
 * acknowledged, one per BEGIN whose completion is not yet in the spool.
 * The release that brings it to zero deletes the file. */
#ifndef PGW_SPOOL_H
#define PGW_SPOOL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "pgwarden/json.h"

#define PGW_SPOOL_MAGIC "PGWSPL4\n"
/* Segments of earlier versions, read (replayed) but never written. v3: the
 * same layout without DELTA records (a version that does not know them
 * leaves a v4 segment alone, logged, instead of replaying part of it). v2: the
 * same layout without VOID records (a version that does not know them
 * leaves a v3 segment alone, logged, instead of replaying half of it).
 * v1: a CRC-32 (zlib) of the payload as the checksum. */
#define PGW_SPOOL_MAGIC_V3 "PGWSPL3\n"
#define PGW_SPOOL_MAGIC_V2 "PGWSPL2\n"
#define PGW_SPOOL_MAGIC_V1 "PGWSPL1\n"
#define PGW_SPOOL_MAGIC_LEN 8
#define PGW_SPOOL_REC_HEAD 8        /* length + checksum */
#define PGW_SPOOL_PAYLOAD_HEAD 16   /* type, pad, token, key length */
#define PGW_SPOOL_MAX_RECORD (64u * 1024 * 1024)   /* larger lengths are corruption */

typedef enum pgw_spool_type {
    PGW_SPOOL_EVENT = 1,
    PGW_SPOOL_BEGIN = 2,
    PGW_SPOOL_VOID = 3,             /* value empty */
    PGW_SPOOL_DELTA = 4,            /* value: u32 shared prefix, then the rest */
} pgw_spool_type_t;

#define PGW_SPOOL_DELTA_HEAD 4

typedef struct pgw_spool_rec {
    pgw_spool_type_t type;
    uint64_t token;
    const uint8_t *key, *value;     /* borrowed from the scanned buffer */
    size_t key_len, value_len;
} pgw_spool_rec_t;

/* Appends one record to out (sticky failure: check out->failed once). */
void pgw_spool_encode(pgw_jbuf_t *out, pgw_spool_type_t type, uint64_t token,
                      const void *key, size_t key_len, const void *value, size_t value_len);

/* Parses the records of a segment's contents (magic included). Calls fn for
 * each valid record in order; stops at the first record that is torn (cut
 * short) or corrupt (bad length, type or checksum). Returns the length of
 * the valid prefix; *why is NULL when the whole buffer was valid, else
 * says what stopped the scan. fn returning non-zero stops the scan too. */
typedef int (*pgw_spool_rec_fn)(void *ud, const pgw_spool_rec_t *r);
size_t pgw_spool_scan(const uint8_t *buf, size_t len, pgw_spool_rec_fn fn, void *ud,
                      const char **why);

/* ------------------------------------------------------------ segments */

typedef struct pgw_spool pgw_spool_t;

typedef struct pgw_spool_seg {
    struct pgw_spool_seg *next;     /* in its writer's list (writer thread only) */
    pgw_spool_t *spool;
    char *path;
    uint64_t bytes;                 /* on disk */
    _Atomic int64_t pending;
    _Atomic bool deleted;
} pgw_spool_seg_t;

/* One directory, shared by every writer. */
struct pgw_spool {
    char *dir;
    uint64_t stream_base;           /* the process start, in the segment names */
    _Atomic uint64_t bytes;         /* on disk, all segments */
    _Atomic uint64_t segments_deleted;
    atomic_uint next_writer;
    void (*on_free_space)(void *ud); /* called after a deletion, from the releasing thread */
    void *ud;
};

/* Creates dir if missing (0700). Returns 0 or -errno, logged. */
int pgw_spool_init(pgw_spool_t *sp, const char *dir) __attribute__((warn_unused_result));
void pgw_spool_destroy(pgw_spool_t *sp);

/* Drops n references; the last one unlinks the file and subtracts its
 * bytes. Any thread. The struct itself is freed by its owner, which checks
 * `deleted`. */
void pgw_spool_seg_release(pgw_spool_seg_t *seg, int64_t n);
static inline void pgw_spool_seg_hold(pgw_spool_seg_t *seg, int64_t n)
{
    atomic_fetch_add(&seg->pending, n);
}

/* A writer: the segments of one thread. */
typedef struct pgw_spool_writer {
    pgw_spool_t *spool;
    unsigned id;
    uint64_t nseg;
    uint64_t seg_max;               /* start a new segment past this size */
    int fd;                         /* of cur; -1: none open */
    uint8_t *map;                   /* cur, preallocated and mapped; NULL: written with pwrite */
    size_t map_len;
    struct timespec last_append;    /* a mapped segment's mtime once sealed */
    pgw_spool_seg_t *cur;
    pgw_spool_seg_t *segs;          /* every segment not yet freed, oldest first */
    pgw_spool_seg_t **tail;
    /* BEGIN records waiting for their completion: token -> segment, and
     * where the BEGIN's value is in it. Tokens are handed out in order, so
     * this is a ring indexed by token. */
    struct pgw_spool_begin {
        pgw_spool_seg_t *seg;
        uint64_t at;                /* offset of the value; 0: unknown */
        uint32_t len;
    } *begins;
    uint64_t begin_base;            /* token of begins[begin_head] */
    size_t begin_head, begin_count, begin_cap;
    uint64_t writes, write_errors;
    uint64_t bytes_written;
    uint64_t last_at;               /* where the last append started in its segment */
} pgw_spool_writer_t;

void pgw_spool_writer_init(pgw_spool_writer_t *w, pgw_spool_t *sp, uint64_t seg_max);
/* Appends buf (records made with pgw_spool_encode): a copy into the
 * current segment's mapping (one write(2) where the file system cannot
 * preallocate), opening a new segment first when the current one is full.
 * Either way the records are in the page cache on return: they survive a
 * crash of pgwarden, not of the machine. On success
 * *seg is the segment now holding them, with one reference added per
 * `holds`. Returns 0 or -errno (nothing written is kept: the segment is
 * truncated back). */
int pgw_spool_writer_append(pgw_spool_writer_t *w, const void *buf, size_t len, int64_t holds,
                            pgw_spool_seg_t **seg) __attribute__((warn_unused_result));
/* The BEGIN of token is in seg (after its append): seg is held until
 * pgw_spool_writer_resolve(token). -ENOMEM when it cannot be tracked,
 * -EINVAL/-ERANGE for a token out of this writer's increasing sequence
 * (the begin then stays unresolved: replayed as unknown after a restart). */
int pgw_spool_writer_track(pgw_spool_writer_t *w, uint64_t token, pgw_spool_seg_t *seg);
/* The same, telling where the BEGIN's value is in seg (offset, length), so
 * that its completion may be written as a DELTA against it. */
int pgw_spool_writer_track_at(pgw_spool_writer_t *w, uint64_t token, pgw_spool_seg_t *seg,
                              uint64_t value_at, size_t value_len);
/* Before encoding records of at most len bytes in all: seals the current
 * segment if their append would not fit in it, so that the segment a DELTA
 * is encoded against is the one its append lands in. */
void pgw_spool_writer_reserve(pgw_spool_writer_t *w, size_t len);
/* Appends to out the record of the event completing token's BEGIN: a DELTA
 * when the BEGIN is in the current segment and shares enough of its bytes,
 * else an EVENT. Call pgw_spool_writer_reserve for the whole append first. */
void pgw_spool_encode_completion(pgw_spool_writer_t *w, pgw_jbuf_t *out, uint64_t token,
                                 const void *key, size_t key_len, const void *value,
                                 size_t value_len);
/* The length of the record at rec (made by one of the encoders above). */
size_t pgw_spool_record_size(const void *rec);
/* The completion (or VOID) of token is in the spool: its BEGIN's segment
 * is released. A sealed segment that something else still holds gets a
 * VOID for token appended (a few system calls). */
void pgw_spool_writer_resolve(pgw_spool_writer_t *w, uint64_t token);
/* Closes the current segment (it is deleted once nothing else needs it). */
void pgw_spool_writer_seal(pgw_spool_writer_t *w);
/* Frees the structs of deleted segments. */
void pgw_spool_writer_sweep(pgw_spool_writer_t *w);
/* Seals, and frees every struct; files still needed stay on disk. */
void pgw_spool_writer_close(pgw_spool_writer_t *w);

/* ------------------------------------------------------------ replay */

/* A segment left by an earlier run, with what it still holds. */
typedef void (*pgw_spool_replay_fn)(void *ud, pgw_spool_seg_t *seg, const pgw_spool_rec_t *r);

/* Reads every segment in the directory, oldest stream first, and calls fn
 * for each event to produce again: every EVENT record, every DELTA (rebuilt,
 * handed over as an EVENT), and every BEGIN that no EVENT, DELTA or VOID of
 * its run completes. The record's bytes are only valid during the call. A torn or corrupt tail is logged and
 * skipped. Each segment gets a reference per call (fn holds it for its
 * event) and is released after its scan: a segment with nothing to send is
 * deleted at once. The segments are returned in *out (a list through next)
 * for the caller to free once deleted. Returns the number of events or
 * -errno. */
ssize_t pgw_spool_replay(pgw_spool_t *sp, pgw_spool_replay_fn fn, void *ud, pgw_spool_seg_t **out);

#endif
