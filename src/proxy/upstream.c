/*
 * Upstream connections and their keep-alive pool. Each worker keeps, per
 * server address, a list of idle connections (bounded by the pool's
 * keepalive, closed after keepalive_timeout). An idle connection keeps
 * reading: if the backend closes it (or sends anything), it is noticed at
 * once and closed, so a dead connection is never handed to a request.
 */
#include <stdlib.h>
#include <string.h>

#include "core/io.h"
#include "core/log.h"
#include "proxy/proxy_int.h"

static void on_close(uv_handle_t *h) {
    struct sg_upstream *up = h->data;
    up->w->nupstreams--;
    sg_buf_put(up->rbuf);
    struct sg_worker *w = up->w;
    free(up);
    sg_worker_maybe_finish(w);
}

void sg__upstream_close(struct sg_upstream *up) {
    if (up->state == SG_UP_CLOSED)
        return;
    if (up->state == SG_UP_IDLE) {
        sg_list_remove(&up->link);
        up->target->nidle--;
    }
    up->state = SG_UP_CLOSED;
    up->ex = NULL;
    uv_close((uv_handle_t *)&up->tcp, on_close);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *out) {
    struct sg_upstream *up = h->data;
    (void)hint;
    if (!up->rbuf)
        up->rbuf = sg_buf_get_size(SG_BUF_BIG);
    struct sg_buf *b = up->rbuf;
    if (b->end == b->cap && b->start > 0)
        sg_buf_compact(b);
    out->base = b->data + b->end;
    out->len = b->cap - b->end;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    struct sg_upstream *up = s->data;
    (void)buf;
    if (up->state == SG_UP_CLOSED)
        return;
    if (nread == 0) {
        if (up->rbuf && up->rbuf->start == up->rbuf->end) {
            sg_buf_put(up->rbuf);
            up->rbuf = NULL;
        }
        return;
    }
    if (up->state == SG_UP_IDLE || !up->ex) {
        /* Closed by the backend, or unexpected bytes: never reuse it. */
        sg__upstream_close(up);
        return;
    }
    if (nread < 0) {
        sg__proxy_upstream_eof(up->ex, (int)nread);
        return;
    }
    up->rbuf->end += (uint32_t)nread;
    sg__proxy_upstream_data(up->ex);
}

void sg__upstream_read_start(struct sg_upstream *up) {
    if (up->reading || up->state == SG_UP_CLOSED || up->state == SG_UP_CONNECTING)
        return;
    if (uv_read_start((uv_stream_t *)&up->tcp, on_alloc, on_read) == 0)
        up->reading = 1;
}

void sg__upstream_read_stop(struct sg_upstream *up) {
    if (!up->reading)
        return;
    uv_read_stop((uv_stream_t *)&up->tcp);
    up->reading = 0;
}

static void on_written(void *arg, int status) {
    struct sg_upstream *up = arg;
    up->writing = 0;
    if (up->state == SG_UP_CLOSED || !up->ex)
        return;
    sg__proxy_upstream_written(up->ex, status);
}

int sg__upstream_write(struct sg_upstream *up, const uv_buf_t *bufs, unsigned n,
                       struct sg_buf *own0, struct sg_buf *own1) {
    int r = sg_io_write((uv_stream_t *)&up->tcp, bufs, n, own0, own1, on_written, up);
    if (r == 1)
        up->writing = 1;
    return r;
}

struct sg_upstream *sg__upstream_idle_get(struct sg_worker *w, const struct sg_server *srv) {
    struct sg_target *t = sg_worker_target(w, srv->id);
    if (sg_list_empty(&t->idle))
        return NULL;
    /* Most recently used first: it is the least likely to have been closed. */
    struct sg_upstream *up = sg_container_of(t->idle.prev, struct sg_upstream, link);
    sg_list_remove(&up->link);
    t->nidle--;
    up->state = SG_UP_ACTIVE;
    up->reused = 1;
    return up;
}

static void on_connect(uv_connect_t *req, int status) {
    struct sg_upstream *up = req->data;
    if (up->state == SG_UP_CLOSED)
        return; /* closed while connecting (UV_ECANCELED) */
    if (status == 0) {
        up->state = SG_UP_ACTIVE;
        uv_tcp_nodelay(&up->tcp, 1);
        sg__upstream_read_start(up);
    }
    if (up->ex)
        sg__proxy_connected(up->ex, status);
    else
        sg__upstream_close(up);
}

struct sg_upstream *sg__upstream_connect(struct sg_worker *w, const struct sg_server *srv) {
    struct sg_upstream *up = sg_xcalloc(1, sizeof(*up));
    up->w = w;
    up->target = sg_worker_target(w, srv->id);
    sg_list_init(&up->link);
    uv_tcp_init(&w->loop, &up->tcp);
    up->tcp.data = up;
    up->creq.data = up;
    up->state = SG_UP_CONNECTING;
    w->nupstreams++;
    int r = uv_tcp_connect(&up->creq, &up->tcp, (const struct sockaddr *)&srv->addr, on_connect);
    if (r != 0) {
        sg_log_warn("upstream %s: connect: %s", srv->text, uv_strerror(r));
        up->state = SG_UP_CLOSED;
        uv_close((uv_handle_t *)&up->tcp, on_close);
        return NULL;
    }
    return up;
}

void sg__upstream_release(struct sg_upstream *up, const struct sg_pool *pool) {
    up->ex = NULL;
    struct sg_target *t = up->target;
    if (up->writing || (up->rbuf && up->rbuf->start != up->rbuf->end) ||
        t->nidle >= pool->keepalive || up->w->draining) {
        sg__upstream_close(up);
        return;
    }
    if (up->rbuf) {
        sg_buf_put(up->rbuf);
        up->rbuf = NULL;
    }
    up->state = SG_UP_IDLE;
    up->reused = 0;
    up->idle_deadline = uv_now(&up->w->loop) + pool->keepalive_timeout_ms;
    sg_list_insert_tail(&t->idle, &up->link);
    t->nidle++;
    sg__upstream_read_start(up);
}

void sg_upstream_sweep(struct sg_worker *w, uint64_t now) {
    for (uint32_t i = 0; i < w->ntargets; i++) {
        struct sg_target *t = w->targets[i];
        if (!t)
            continue;
        for (struct sg_list *it = t->idle.next, *next; it != &t->idle; it = next) {
            next = it->next;
            struct sg_upstream *up = sg_container_of(it, struct sg_upstream, link);
            if (up->idle_deadline <= now)
                sg__upstream_close(up);
        }
    }
}

void sg_upstream_close_idle(struct sg_worker *w) {
    for (uint32_t i = 0; i < w->ntargets; i++) {
        struct sg_target *t = w->targets[i];
        while (t && !sg_list_empty(&t->idle))
            sg__upstream_close(sg_container_of(t->idle.next, struct sg_upstream, link));
    }
}
