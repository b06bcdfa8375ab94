/*
 * Writing a message head into a fixed buffer without checking every step:
 * a write that does not fit marks the writer as overflowed (p past end)
 * and every later write is ignored, so the caller checks once at the end
 * with sg_out_overflowed. Used for rewritten request and response heads,
 * cached answers and background refreshes.
 */
#ifndef SG_CORE_OUT_H
#define SG_CORE_OUT_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

struct sg_out {
    char *p;   /* next byte to write */
    char *end; /* one past the buffer; p == end + 1 once overflowed */
};

static inline void sg_out_put(struct sg_out *o, const char *s, size_t n) {
    if (o->p > o->end || (size_t)(o->end - o->p) < n) {
        o->p = o->end + 1; /* the overflow marker */
        return;
    }
    memcpy(o->p, s, n);
    o->p += n;
}

#define SG_OUT_PUTS(o, lit) sg_out_put((o), (lit), sizeof(lit) - 1)

static inline bool sg_out_overflowed(const struct sg_out *o) {
    return o->p > o->end;
}

#endif
