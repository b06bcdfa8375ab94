/*
 * Per-thread free list of standard I/O buffers; see buf.h.
 */
#include "core/buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Per class: capacity and how many free buffers a thread keeps (beyond,
 * they go back to malloc). */
static const uint32_t class_cap[3] = {SG_BUF_SMALL, SG_BUF_SIZE, SG_BUF_BIG};
static const unsigned class_keep[3] = {256, 256, 32};

static __thread struct sg_buf *free_list[3];
static __thread unsigned free_count[3];

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

static int class_of(size_t cap) {
    for (int i = 0; i < 3; i++)
        if (cap <= class_cap[i])
            return i;
    return -1;
}

struct sg_buf *sg_buf_get_size(size_t cap) {
    int k = class_of(cap);
    struct sg_buf *b;
    if (k < 0) {
        b = sg_xmalloc(sizeof(*b) + cap);
        b->cap = (uint32_t)cap;
    } else if ((b = free_list[k]) != NULL) {
        free_list[k] = b->next;
        free_count[k]--;
    } else {
        b = sg_xmalloc(sizeof(*b) + class_cap[k]);
        b->cap = class_cap[k];
    }
    b->next = NULL;
    b->start = b->end = 0;
    b->held = 0;
    return b;
}

struct sg_buf *sg_buf_get(void) {
    return sg_buf_get_size(SG_BUF_SIZE);
}

struct hold {
    void (*release)(void *);
    void *arg;
};
_Static_assert(sizeof(struct hold) <= SG_BUF_HOLD, "SG_BUF_HOLD fits a hold");

void sg_buf_hold(struct sg_buf *b, void (*release)(void *), void *arg) {
    struct hold h = {release, arg};
    memcpy(b->data + b->cap - SG_BUF_HOLD, &h, sizeof(h));
    b->held = 1;
}

void sg_buf_put(struct sg_buf *b) {
    if (!b)
        return;
    if (b->held) {
        struct hold h;
        memcpy(&h, b->data + b->cap - SG_BUF_HOLD, sizeof(h));
        b->held = 0;
        h.release(h.arg);
    }
    int k = class_of(b->cap);
    if (k < 0 || b->cap != class_cap[k] || free_count[k] >= class_keep[k]) {
        free(b);
        return;
    }
    b->next = free_list[k];
    free_list[k] = b;
    free_count[k]++;
}

void sg_buf_thread_cleanup(void) {
    for (int k = 0; k < 3; k++) {
        while (free_list[k]) {
            struct sg_buf *b = free_list[k];
            free_list[k] = b->next;
            free(b);
        }
        free_count[k] = 0;
    }
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
