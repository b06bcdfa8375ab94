/*
 * I/O buffers. A buffer is attached to a connection only while it holds
 * pending bytes and goes back to a per-thread free list when it empties, so
 * an idle keep-alive connection holds none. There are three size classes,
 * each with its own free list: SG_BUF_SMALL (rewritten heads), SG_BUF_SIZE
 * (client reads) and SG_BUF_BIG (backend reads: a 16 KiB response and its
 * head fit in one read and one write). Larger ones come from malloc and go
 * back to it.
 *
 * Ownership: whoever holds the pointer owns the buffer and must put it back
 * with sg_buf_put, on the thread that is running (free lists are per thread).
 */
#ifndef SG_CORE_BUF_H
#define SG_CORE_BUF_H

#include <stddef.h>
#include <stdint.h>

#define SG_BUF_SMALL (4096 - 32)
#define SG_BUF_SIZE  (16384 - 32)
#define SG_BUF_BIG   (65536 - 32)

struct sg_buf {
    struct sg_buf *next; /* free-list link */
    uint32_t cap;        /* bytes in data[] */
    uint32_t start;      /* first pending byte */
    uint32_t end;        /* one past the last pending byte */
    uint32_t held;       /* 1: the last SG_BUF_HOLD bytes of data are a hold */
    char data[];
};

/* A standard buffer, empty (start = end = 0). Never returns NULL (aborts
 * on out of memory, like the rest of the daemon). */
struct sg_buf *sg_buf_get(void);

/* A buffer of at least cap bytes, from the smallest class that fits. */
struct sg_buf *sg_buf_get_size(size_t cap);

/*
 * Makes b hold something owned elsewhere (a cache entry whose bytes a
 * queued write points into): sg_buf_put(b) calls release(arg) once, on
 * whichever thread puts b back. The hold takes SG_BUF_HOLD bytes at the
 * end of data[], so b->end must stay <= b->cap - SG_BUF_HOLD.
 */
#define SG_BUF_HOLD 16
void sg_buf_hold(struct sg_buf *b, void (*release)(void *), void *arg);

/* Gives b back (releasing a hold); NULL is ignored. */
void sg_buf_put(struct sg_buf *b);

/* Frees this thread's free list (at thread exit). */
void sg_buf_thread_cleanup(void);

static inline uint32_t sg_buf_len(const struct sg_buf *b) {
    return b->end - b->start;
}

/* Moves pending bytes to the front so that the free room is contiguous. */
void sg_buf_compact(struct sg_buf *b);

/* Allocation helpers that abort on out of memory (start-up and control plane). */
void *sg_xmalloc(size_t n);
void *sg_xcalloc(size_t n, size_t m);
char *sg_xstrdup(const char *s);

#endif
