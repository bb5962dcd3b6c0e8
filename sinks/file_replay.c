/* The file sink's replay at open: what an earlier run left in the spool is
 * written to the file before anything new, without the events the file's
 * tail shows were written already (a crash between write and release).
 * Called by pgw_file_sink_open (file_sink.c) once the writer runs; the
 * replayed batches go through the writer's queue like live ones. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "file_sink_int.h"
#include "log.h"

/* After a crash, the spool still holds events that were written just
 * before it (those of the segments still on disk). The ids in the last
 * REPLAY_TAIL_BYTES of the file name those, so they are not written twice;
 * older ones (a segment kept by a statement that ran for long) may be. */
#define REPLAY_TAIL_BYTES (64u * 1024 * 1024)
#define ID_PREFIX "{\"v\":1,\"event_id\":\""
#define ID_LEN 36

typedef struct idset {
    char (*ids)[ID_LEN];             /* open addressing; an empty slot starts with 0 */
    size_t mask;
} idset_t;

static const char *event_id_of(const void *line, size_t len)
{
    const size_t pre = sizeof(ID_PREFIX) - 1;
    if (len < pre + ID_LEN || memcmp(line, ID_PREFIX, pre) != 0)
        return NULL;
    return (const char *)line + pre;
}

static size_t idset_slot(const idset_t *s, const char *id)
{
    size_t i = (size_t)XXH3_64bits(id, ID_LEN) & s->mask;
    while (s->ids[i][0] && memcmp(s->ids[i], id, ID_LEN) != 0)
        i = (i + 1) & s->mask;
    return i;
}

static bool idset_has(const idset_t *s, const char *id)
{
    return s->ids && s->ids[idset_slot(s, id)][0];
}

/* The event ids of the file's last REPLAY_TAIL_BYTES. Empty when the file
 * cannot be read (then duplicates are possible, never a loss). */
static void ids_written(const file_sink_t *fs, idset_t *s)
{
    struct stat st;
    char *buf = NULL;
    int fd = fs->path ? open(fs->path, O_RDONLY | O_CLOEXEC) : -1;

    memset(s, 0, sizeof *s);
    if (fd < 0 || fstat(fd, &st) != 0 || st.st_size <= 0)
        goto out;
    size_t len = st.st_size > REPLAY_TAIL_BYTES ? REPLAY_TAIL_BYTES : (size_t)st.st_size;
    if (!(buf = malloc(len)) || pread(fd, buf, len, st.st_size - (off_t)len) != (ssize_t)len)
        goto out;
    /* Two passes over the lines: count the ids, then keep them in a table
     * twice that size. A first line cut by the window cannot start with
     * the prefix: a quote inside an event's strings is always escaped. */
    size_t nids = 0, cap = 64;
    for (int pass = 0; pass < 2; pass++) {
        for (const char *p = buf, *end = buf + len; p < end;) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            const char *id = event_id_of(p, (size_t)((nl ? nl : end) - p));
            if (id && pass == 0)
                nids++;
            else if (id)
                memcpy(s->ids[idset_slot(s, id)], id, ID_LEN);
            p = nl ? nl + 1 : end;
        }
        if (pass == 0) {
            while (cap < 2 * nids)
                cap *= 2;
            if (!(s->ids = calloc(cap, ID_LEN)))
                goto out;
            s->mask = cap - 1;
        }
    }
out:
    free(buf);
    if (fd >= 0)
        close(fd);
}

/* The spool's leftovers become batches of one segment each, whose events
 * hold their references until written, as live batches do. */
typedef struct replay {
    file_sink_t *fs;
    pgw_batch_t *b;
    pgw_jbuf_t line;
    idset_t written;                 /* read at the first record */
    bool looked;
    size_t events, skipped, failed;
} replay_t;

static void replay_queue(replay_t *r)
{
    if (r->b)
        (void)file_sink_queue(r->fs, r->b);
    r->b = NULL;
}

static void replay_one(void *ud, pgw_spool_seg_t *seg, const pgw_spool_rec_t *rec)
{
    replay_t *r = ud;
    if (!r->looked) {                    /* only when there is something to replay */
        r->looked = true;
        ids_written(r->fs, &r->written);
    }
    const char *id = event_id_of(rec->value, rec->value_len);
    if (id && idset_has(&r->written, id)) {
        pgw_spool_seg_release(seg, 1);   /* in the file already */
        r->skipped++;
        return;
    }
    if (r->b && (r->b->spool_seg != seg || r->b->data.len >= r->fs->base.limits.batch_bytes))
        replay_queue(r);
    if (!r->b && (r->b = pgw_sink_batch_get(&r->fs->base)) != NULL)
        r->b->spool_seg = seg;
    pgw_jbuf_reset(&r->line);
    pgw_jbuf_put(&r->line, rec->value, rec->value_len);
    pgw_jbuf_putc(&r->line, '\n');
    if (!r->b || r->line.failed ||
        pgw_batch_append(r->b, r->line.data, r->line.len, (pgw_str_t){ 0 }) != 0) {
        r->failed++;                     /* its reference stays: the next start tries again */
        return;
    }
    r->b->spool_refs++;
    r->events++;
}

int file_replay_spool(file_sink_t *fs, const char *dir)
{
    replay_t r = { .fs = fs };
    pgw_jbuf_init(&r.line, 0);
    ssize_t n = pgw_spool_replay(&fs->spooler.spool, replay_one, &r, &fs->replayed_segs);
    replay_queue(&r);
    pgw_jbuf_free(&r.line);
    free(r.written.ids);
    if (n < 0)
        return (int)n;
    add(&fs->replayed, r.events);
    if (r.events || r.skipped)
        pgw_info("audit file %s: %zu event(s) left in the spool %s written again (%zu found "
                 "in the file already)", shown_path(fs), r.events, dir, r.skipped);
    if (r.failed)
        pgw_error("audit file %s: out of memory replaying the spool %s: %zu event(s) stay "
                  "there for the next start", shown_path(fs), dir, r.failed);
    return 0;
}
