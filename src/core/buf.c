/*
 * Per-thread free list of standard I/O buffers; see buf.h.
 */
#include "core/buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A thread keeps at most this many free buffers (4 MiB); beyond, they go
 * back to malloc. */
#define FREE_MAX 256

static __thread struct sg_buf *free_list;
static __thread unsigned free_count;

static void oom(void) {
    fputs("scalegate: out of memory\n", stderr);
    abort();
}

void *sg_xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p)
        oom();
    return p;
}

void *sg_xcalloc(size_t n, size_t m) {
    void *p = calloc(n ? n : 1, m ? m : 1);
    if (!p)
        oom();
    return p;
}

char *sg_xstrdup(const char *s) {
    char *p = strdup(s);
    if (!p)
        oom();
    return p;
}

struct sg_buf *sg_buf_get(void) {
    struct sg_buf *b = free_list;
    if (b) {
        free_list = b->next;
        free_count--;
    } else {
        b = sg_xmalloc(sizeof(*b) + SG_BUF_SIZE);
        b->cap = SG_BUF_SIZE;
    }
    b->next = NULL;
    b->start = b->end = 0;
    return b;
}

struct sg_buf *sg_buf_get_size(size_t cap) {
    if (cap <= SG_BUF_SIZE)
        return sg_buf_get();
    struct sg_buf *b = sg_xmalloc(sizeof(*b) + cap);
    b->next = NULL;
    b->cap = (uint32_t)cap;
    b->start = b->end = 0;
    return b;
}

void sg_buf_put(struct sg_buf *b) {
    if (!b)
        return;
    if (b->cap != SG_BUF_SIZE || free_count >= FREE_MAX) {
        free(b);
        return;
    }
    b->next = free_list;
    free_list = b;
    free_count++;
}

void sg_buf_thread_cleanup(void) {
    while (free_list) {
        struct sg_buf *b = free_list;
        free_list = b->next;
        free(b);
    }
    free_count = 0;
}

void sg_buf_compact(struct sg_buf *b) {
    if (b->start == 0)
        return;
    uint32_t n = b->end - b->start;
    if (n)
        memmove(b->data, b->data + b->start, n);
    b->start = 0;
    b->end = n;
}
