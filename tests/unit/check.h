/* A tiny check framework for the C unit tests, and guarded buffers.
 *
 * A failed CHECK prints where and goes on, so one run shows every failure;
 * CHECK_DONE() turns the count into the exit status ctest reads.
 *
 * Guarded buffers put data at the very end of a mapping whose next page is
 * PROT_NONE (as picohttpparser's tests do), so reading one byte past the
 * input crashes at once, with or without a sanitizer. */
#ifndef PGW_TEST_CHECK_H
#define PGW_TEST_CHECK_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static unsigned check_failures, check_total;

static inline void check_fail(const char *file, int line, const char *what)
{
    check_failures++;
    fprintf(stderr, "%s:%d: check failed: %s\n", file, line, what);
}

#define CHECK(cond) do {                                                   \
        check_total++;                                                     \
        if (!(cond))                                                       \
            check_fail(__FILE__, __LINE__, #cond);                         \
    } while (0)

#define CHECK_EQ(a, b) do {                                                \
        long long check_a_ = (long long)(a), check_b_ = (long long)(b);    \
        check_total++;                                                     \
        if (check_a_ != check_b_) {                                        \
            check_fail(__FILE__, __LINE__, #a " == " #b);                  \
            fprintf(stderr, "    %lld != %lld\n", check_a_, check_b_);     \
        }                                                                  \
    } while (0)

#define CHECK_STR(a, b) do {                                               \
        const char *check_a_ = (a), *check_b_ = (b);                       \
        check_total++;                                                     \
        if (!check_a_ || !check_b_ || strcmp(check_a_, check_b_) != 0) {   \
            check_fail(__FILE__, __LINE__, #a " equals " #b);              \
            fprintf(stderr, "    \"%s\" != \"%s\"\n",                      \
                    check_a_ ? check_a_ : "(null)",                        \
                    check_b_ ? check_b_ : "(null)");                       \
        }                                                                  \
    } while (0)

#define CHECK_MEM(a, alen, b, blen) do {                                   \
        size_t check_al_ = (alen), check_bl_ = (blen);                     \
        check_total++;                                                     \
        if (check_al_ != check_bl_ ||                                      \
            (check_al_ && memcmp((a), (b), check_al_) != 0)) {             \
            check_fail(__FILE__, __LINE__, #a " bytes equal " #b);         \
            fprintf(stderr, "    lengths %zu and %zu\n", check_al_, check_bl_); \
        }                                                                  \
    } while (0)

#define CHECK_DONE() do {                                                  \
        fprintf(stderr, "%s: %u checks, %u failed\n", __FILE__,            \
                check_total, check_failures);                              \
        return check_failures ? 1 : 0;                                     \
    } while (0)

typedef struct guard {
    uint8_t *base;
    size_t usable;        /* readable and writable bytes before the guard page */
} guard_t;

static inline void guard_init(guard_t *g, size_t max)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    void *p;

    g->usable = (max + page - 1) / page * page;
    if (g->usable == 0)
        g->usable = page;
    p = mmap(NULL, g->usable + page, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED || mprotect((uint8_t *)p + g->usable, page, PROT_NONE) != 0) {
        perror("guard mmap");
        abort();
    }
    g->base = p;
}

/* Copies n bytes so that they end right before the guard page. */
static inline uint8_t *guard_place(guard_t *g, const void *data, size_t n)
{
    uint8_t *p = g->base + g->usable - n;

    if (n > g->usable)
        abort();
    if (n)
        memcpy(p, data, n);
    return p;
}

/* Overwrites the last n bytes, so a pointer kept into a buffer the caller
 * has since reused shows up as wrong data. */
static inline void guard_scribble(guard_t *g, size_t n)
{
    memset(g->base + g->usable - n, 0xA5, n);
}

static inline void guard_free(guard_t *g)
{
    munmap(g->base, g->usable + (size_t)sysconf(_SC_PAGESIZE));
    g->base = NULL;
}

#endif
