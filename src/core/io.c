/*
 * Try-then-queue writes; see io.h.
 */
#include "core/io.h"

#include <stdlib.h>
#include <string.h>

struct wreq {
    uv_write_t req;
    struct sg_buf *own[2];
    sg_io_done_cb cb;
    void *arg;
};

static void on_written(uv_write_t *req, int status) {
    struct wreq *w = (struct wreq *)req;
    sg_buf_put(w->own[0]);
    sg_buf_put(w->own[1]);
    sg_io_done_cb cb = w->cb;
    void *arg = w->arg;
    free(w);
    if (cb)
        cb(arg, status);
}

int sg_io_write(uv_stream_t *s, const uv_buf_t *bufs, unsigned n, struct sg_buf *own0,
                struct sg_buf *own1, sg_io_done_cb cb, void *arg) {
    uv_buf_t rest[4];
    unsigned i = 0;
    size_t total = 0;
    if (n > 4)
        return UV_EINVAL;
    for (unsigned k = 0; k < n; k++)
        total += bufs[k].len;
    if (total == 0)
        return 0;
    int r = uv_try_write(s, bufs, n);
    if (r < 0 && r != UV_EAGAIN)
        return r;
    size_t done = r > 0 ? (size_t)r : 0;
    if (done == total)
        return 0;
    /* Skip what was written; queue the remainder. */
    unsigned m = 0;
    for (i = 0; i < n; i++) {
        if (done >= bufs[i].len) {
            done -= bufs[i].len;
            continue;
        }
        rest[m].base = bufs[i].base + done;
        rest[m].len = bufs[i].len - done;
        done = 0;
        m++;
    }
    struct wreq *w = sg_xmalloc(sizeof(*w));
    w->own[0] = own0;
    w->own[1] = own1;
    w->cb = cb;
    w->arg = arg;
    r = uv_write(&w->req, s, rest, m, on_written);
    if (r < 0) {
        free(w);
        return r;
    }
    return 1;
}
