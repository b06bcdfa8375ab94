/*
 * The exchange: one request from a client connection to an upstream
 * connection and its response back.
 *
 * Bytes move zero-copy between the two connections' read buffers and the
 * sockets. A write is tried at once; when the kernel does not take it all,
 * the rest is queued, the queued write takes the buffer it points into, and
 * reading from the source stops until it completes (backpressure), so a slow
 * client never makes the gateway hold more than a buffer or two per
 * connection. The request head is rewritten once, into its own buffer, kept
 * until the response head arrives so that a request without a body can be
 * sent again once if a reused keep-alive connection turns out to be closed.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "cache/cache.h"
#include "core/log.h"
#include "stats/accesslog.h"
#include "pool/balance.h"
#include "pool/pool.h"
#include "pool/state.h"
#include "proxy/proxy_int.h"

static const char continue_100[] = "HTTP/1.1 100 Continue\r\n\r\n";

static struct sg_exchange *ex_alloc(struct sg_worker *w) {
    struct sg_exchange *ex = w->free_exchanges;
    if (ex)
        w->free_exchanges = ex->next_free;
    else
        ex = sg_xmalloc(sizeof(*ex));
    memset(ex, 0, sizeof(*ex));
    return ex;
}

/* The chosen server stops counting this request as in flight. */
static void uncount(struct sg_exchange *ex) {
    if (ex->counted) {
        atomic_fetch_sub_explicit(&sg_server_state(ex->server->id)->inflight, 1,
                                  memory_order_relaxed);
        ex->counted = 0;
    }
}

static void dequeue(struct sg_worker *w, struct sg_exchange *ex) {
    if (!ex->queued)
        return;
    ex->queued = 0;
    sg_list_remove(&ex->qlink);
    atomic_fetch_sub_explicit(&((struct sg_pool *)ex->pool)->queued, 1, memory_order_relaxed);
    if (sg_list_empty(&w->waiting))
        uv_check_stop(&w->waiting_check);
}

/* Frees ex; its upstream must already be released or closed. The request
 * is counted in the metrics here, with its status (none: the client went
 * away first, counted as 499 like nginx does). */
static void ex_free(struct sg_worker *w, struct sg_exchange *ex) {
    if (ex->client)
        sg_conn_count(ex->client, ex->status ? ex->status : 499);
    dequeue(w, ex);
    uncount(ex);
    if (ex->route_slot)
        atomic_fetch_sub_explicit(ex->route_slot, 1, memory_order_relaxed);
    sg_cache_req_free(ex->creq);
    ex->creq = NULL;
    sg_buf_put(ex->extra_hdr);
    sg_buf_put(ex->head);
    sg_buf_put(ex->replay);
    sg_config_unref(ex->cfg);
    ex->next_free = w->free_exchanges;
    w->free_exchanges = ex;
}

void sg_proxy_worker_cleanup(struct sg_worker *w) {
    while (w->free_exchanges) {
        struct sg_exchange *ex = w->free_exchanges;
        w->free_exchanges = ex->next_free;
        free(ex);
    }
}

static uint64_t now_ms(struct sg_exchange *ex) {
    return uv_now(&ex->client->w->loop);
}

/* The backend failed and the cache has a copy within stale-if-error: the
 * exchange ends and the copy answers the request. */
static void serve_stale(struct sg_exchange *ex) {
    struct sg_conn *c = ex->client;
    struct sg_cache_req *q = ex->creq;
    ex->creq = NULL;
    bool keep = ex->keep_client && ex->req_done;
    bool http10 = ex->client_http10, head_only = ex->method == SG_METHOD_HEAD;
    if (ex->req_ready && c->rbuf)
        c->rbuf->start += ex->req_ready;
    uint64_t req_ns = c->req_ns;
    c->req_ns = 0; /* the stale answer is the one counted */
    sg_proxy_abort(c);
    c->req_ns = req_ns;
    sg_cache_serve_stale(c, q, keep, http10, head_only);
}

/* The gateway answers status instead of the backend (or, when part of the
 * response was already sent, cuts the client connection). */
static void fail(struct sg_exchange *ex, int status) {
    struct sg_conn *c = ex->client;
    if (!ex->resp_started && status >= 500 && ex->creq && sg_cache_stale_usable(ex->creq, c->w)) {
        serve_stale(ex);
        return;
    }
    if (!ex->resp_started)
        ex->status = (uint16_t)status;
    if (ex->resp_started)
        sg_conn_close(c);
    else
        sg_conn_error(c, status); /* aborts the exchange first */
}

void sg_proxy_abort(struct sg_conn *c) {
    struct sg_exchange *ex = c->ex;
    if (!ex)
        return;
    dequeue(c->w, ex);
    if (ex->up) {
        sg__upstream_close(ex->up);
        ex->up = NULL;
    }
    c->ex = NULL;
    ex_free(c->w, ex);
}

/* Validates the request body bytes that arrived in client->rbuf beyond
 * those already validated. Returns 0 or an HTTP status. */
static int validate_body(struct sg_exchange *ex) {
    struct sg_buf *b = ex->client->rbuf;
    uint32_t avail = b ? b->end - b->start - ex->req_ready : 0;
    switch (ex->req_body) {
    case SG_BODY_NONE:
        ex->req_done = 1;
        break;
    case SG_BODY_LENGTH: {
        uint32_t n = avail < ex->req_left ? avail : (uint32_t)ex->req_left;
        ex->req_ready += n;
        ex->req_left -= n;
        if (ex->req_left == 0)
            ex->req_done = 1;
        break;
    }
    case SG_BODY_CHUNKED:
        if (avail) {
            ssize_t r =
                sg_http_chunked_scan(&ex->req_ch, b->data + b->start + ex->req_ready, avail);
            if (r < 0)
                return ex->req_ch.error_status ? ex->req_ch.error_status : 400;
            ex->req_ready += (uint32_t)r;
        }
        if (ex->req_ch.done)
            ex->req_done = 1;
        break;
    case SG_BODY_TUNNEL:
        ex->req_ready += avail;
        break;
    }
    return 0;
}

/* Keeps a copy of body bytes being sent, for a retry, while they fit. */
static void keep_for_replay(struct sg_exchange *ex, const char *p, uint32_t n) {
    if (!ex->replayable || n == 0)
        return;
    struct sg_buf *r = ex->replay;
    uint64_t have = r ? r->end : 0;
    if (have + n > ex->pool->retry.buffer_bytes) {
        sg_buf_put(ex->replay);
        ex->replay = NULL;
        ex->replayable = 0;
        return;
    }
    if (!r || r->end + n > r->cap) {
        size_t cap = have + n < SG_BUF_SMALL ? SG_BUF_SMALL : (size_t)(have + n) * 2;
        if (cap > ex->pool->retry.buffer_bytes)
            cap = ex->pool->retry.buffer_bytes;
        struct sg_buf *nr = sg_buf_get_size(cap);
        if (r) {
            memcpy(nr->data, r->data, r->end);
            nr->end = r->end;
            sg_buf_put(r);
        }
        ex->replay = r = nr;
    }
    memcpy(r->data + r->end, p, n);
    r->end += n;
}

/* Writes the head (if not yet sent), the body bytes kept for a replay (after
 * a retry) and the validated body bytes to the upstream. */
static void send_request(struct sg_exchange *ex) {
    struct sg_upstream *up = ex->up;
    struct sg_conn *c = ex->client;
    if (!up || up->state != SG_UP_ACTIVE || up->writing)
        return;
    uv_buf_t bufs[3];
    unsigned n = 0;
    if (!ex->head_sent)
        bufs[n++] = uv_buf_init(ex->head->data, ex->head->end);
    if (ex->replay && !ex->replay_sent && ex->replay->end)
        bufs[n++] = uv_buf_init(ex->replay->data, ex->replay->end);
    uint32_t body = ex->req_ready;
    if (body) {
        bufs[n++] = uv_buf_init(c->rbuf->data + c->rbuf->start, body);
        keep_for_replay(ex, c->rbuf->data + c->rbuf->start, body);
    }
    if (n == 0)
        return;
    int r = sg__upstream_write(up, bufs, n, NULL, body ? c->rbuf : NULL);
    if (r < 0) {
        sg_log_warn("upstream %s: write: %s", ex->server->text, uv_strerror(r));
        fail(ex, 502);
        return;
    }
    ex->head_sent = 1;
    ex->replay_sent = 1;
    ex->req_ready = 0;
    if (r == 1 && body) {
        /* The write owns the buffer now; keep what follows the body. */
        struct sg_buf *old = c->rbuf;
        uint32_t rest = old->end - old->start - body;
        c->rbuf = NULL;
        if (rest) {
            c->rbuf = sg_buf_get_size(rest);
            memcpy(c->rbuf->data, old->data + old->start + body, rest);
            c->rbuf->end = rest;
        }
        sg_conn_read_stop(c);
    } else if (body) {
        c->rbuf->start += body;
    }
    if (ex->req_body != SG_BODY_NONE && !ex->replayable && ex->head && !up->writing) {
        /* A request whose body can't be replayed is never resent. */
        sg_buf_put(ex->head);
        ex->head = NULL;
    }
    if (up->writing)
        return;
    if (ex->req_done) {
        if (c->state == SG_CONN_PROXY && !ex->resp_started)
            c->deadline = now_ms(ex) + ex->pool->response_timeout_ms;
    } else {
        c->deadline = now_ms(ex) + ex->cfg->limits.body_timeout_ms;
        sg_conn_read_start(c);
    }
}

/* Puts ex on pool->servers[idx]: counts it in flight, then reuses an idle
 * connection or opens one. */
static void attach_upstream(struct sg_exchange *ex) {
    struct sg_worker *w = ex->client->w;
    if (!ex->counted) {
        atomic_fetch_add_explicit(&sg_server_state(ex->server->id)->inflight, 1,
                                  memory_order_relaxed);
        ex->counted = 1;
    }
    struct sg_upstream *up = ex->retried ? NULL : sg__upstream_idle_get(w, ex->server);
    if (up) {
        up->ex = ex;
        ex->up = up;
        send_request(ex);
        return;
    }
    up = sg__upstream_connect(w, ex->server);
    if (!up) {
        sg_pool_report(ex->pool, ex->server_idx, SG_OUTCOME_ERROR);
        fail(ex, 502);
        return;
    }
    up->ex = ex;
    ex->up = up;
    ex->client->deadline = now_ms(ex) + ex->pool->connect_timeout_ms;
}

/*
 * After a failure before any response byte: sends the request to another
 * server of the pool when that is safe (idempotent or retryable route, body
 * fully kept, attempts and retry budget left, another server usable).
 * Returns true when a retry started; the caller answers the error otherwise.
 */
static bool try_retry(struct sg_exchange *ex, const char *why) {
    const struct sg_pool *pool = ex->pool;
    if (ex->resp_started || ex->got_resp_bytes || !ex->retry_ok || !ex->head ||
        ex->attempts >= pool->retry.attempts)
        return false;
    if (ex->req_body != SG_BODY_NONE && ex->head_sent && !ex->replayable)
        return false;
    if (ex->req_body == SG_BODY_TUNNEL)
        return false;
    struct sg_pick_key key = {.has_key = ex->has_key, .key_hash = ex->key_hash};
    int i = sg_pool_pick(pool, &key, ex->tried, sg_worker_random(ex->client->w));
    if (i < 0 || !sg_pool_retry_allowed(pool))
        return false;
    if (ex->up) {
        sg__upstream_close(ex->up);
        ex->up = NULL;
    }
    uncount(ex);
    sg_log_info("upstream %s: %s; retrying on %s", ex->server->text, why, pool->servers[i].text);
    ex->server_idx = (uint32_t)i;
    ex->server = &pool->servers[i];
    if (i < 64)
        ex->tried |= 1ull << i;
    ex->attempts++;
    ex->head_sent = 0;
    ex->replay_sent = 0;
    ex->retried = 0;
    attach_upstream(ex);
    return true;
}

/* The value of name in a list "a=1<sep>b=2..." (a query string, a Cookie
 * header), or NULL. Spaces before a name are skipped (cookies have one after
 * each ';'). */
static const char *find_pair(const char *s, const char *end, char sep, const char *name,
                             size_t nlen, size_t *vlen) {
    while (s < end) {
        while (s < end && *s == ' ')
            s++;
        const char *e = memchr(s, sep, (size_t)(end - s));
        if (!e)
            e = end;
        if ((size_t)(e - s) > nlen && s[nlen] == '=' && memcmp(s, name, nlen) == 0) {
            *vlen = (size_t)(e - s) - nlen - 1;
            return s + nlen + 1;
        }
        s = e + 1;
    }
    return NULL;
}

bool sg_request_value(enum sg_hash_source src, const char *name, size_t nlen,
                      const struct sg_conn *c, const struct sg_http_msg *msg, const char **out,
                      size_t *out_len) {
    const char *p = NULL;
    size_t n = 0;
    const char *target = msg->target, *qs;
    size_t tlen = msg->target_len;
    switch (src) {
    case SG_HASH_IP:
        *out = (const char *)c->ip;
        *out_len = c->ip_family == AF_INET ? 4 : 16;
        return c->ip_family != 0;
    case SG_HASH_PATH:
        qs = memchr(target, '?', tlen);
        *out = target;
        *out_len = qs ? (size_t)(qs - target) : tlen;
        return true;
    case SG_HASH_HEADER:
        for (uint32_t i = 0; i < msg->num_headers; i++) {
            if (sg_http_name_eq(&msg->headers[i], name, nlen)) {
                p = msg->headers[i].value;
                n = msg->headers[i].value_len;
                break;
            }
        }
        break;
    case SG_HASH_QUERY:
        qs = memchr(target, '?', tlen);
        if (qs)
            p = find_pair(qs + 1, target + tlen, '&', name, nlen, &n);
        break;
    case SG_HASH_COOKIE:
        for (uint32_t i = 0; i < msg->num_headers && !p; i++) {
            const struct sg_http_header *h = &msg->headers[i];
            if (sg_http_name_eq(h, "cookie", 6))
                p = find_pair(h->value, h->value + h->value_len, ';', name, nlen, &n);
        }
        break;
    }
    if (!p || n == 0)
        return false;
    *out = p;
    *out_len = n;
    return true;
}

/* The value a balance: hash pool hashes, or false when the request has none. */
static bool pick_key(const struct sg_pool *pool, const struct sg_conn *c,
                     const struct sg_http_msg *msg, uint64_t *out) {
    const char *p;
    size_t n;
    if (!sg_request_value(pool->hash_source, pool->hash_name, pool->hash_name_len, c, msg, &p, &n))
        return false;
    *out = sg_hash64(p, n);
    return true;
}

static bool is_safe(int m) {
    return m == SG_METHOD_GET || m == SG_METHOD_HEAD || m == SG_METHOD_OPTIONS;
}

int sg_proxy_start(struct sg_conn *c, const struct sg_http_msg *msg, size_t head_len,
                   const struct sg_route *route, const char *extra_hdr, size_t extra_len) {
    struct sg_worker *w = c->w;
    if (msg->method_id == SG_METHOD_CONNECT)
        return 405;
    const struct sg_pool *pool =
        route->read_pool && is_safe(msg->method_id) ? route->read_pool : route->pool;
    uint64_t key_hash = 0;
    bool has_key = pool->balance == SG_BALANCE_HASH && pick_key(pool, c, msg, &key_hash);
    struct sg_pick_key key = {.has_key = has_key, .key_hash = key_hash};
    sg_pool_count_request(pool);
    int i = sg_pool_pick(pool, &key, 0, sg_worker_random(w));
    bool wait = false, cold = false;
    if (i == -1 && pool->scale.enabled) {
        /* A scaled pool with no instance ready (scaled to zero, or all
         * starting): wait for one up to cold_start_timeout. */
        uint32_t q = atomic_fetch_add(&((struct sg_pool *)pool)->queued, 1);
        if (q >= pool->queue_size) {
            atomic_fetch_sub(&((struct sg_pool *)pool)->queued, 1);
            sg_log_warn("pool %s: no instance ready and the queue is full (%u)", pool->name,
                        pool->queue_size);
            return 503;
        }
        struct sg_pool_state *ps = pool->shared;
        if (ps && atomic_fetch_add(&ps->demand, 1) == 0)
            sg_log_info("pool %s: no instance ready; requests wait for one (cold start)",
                        pool->name);
        if (sg_pool_demand_hook)
            sg_pool_demand_hook();
        wait = cold = true;
    } else if (i == SG_POOL_FULL) {
        /* Every usable server is at its max_connections: wait in the queue
         * if there is room (503 otherwise, like when none is usable). */
        uint32_t q = atomic_fetch_add(&((struct sg_pool *)pool)->queued, 1);
        if (q >= pool->queue_size) {
            atomic_fetch_sub(&((struct sg_pool *)pool)->queued, 1);
            sg_log_warn("pool %s: all servers at max_connections and the queue is full (%u)",
                        pool->name, pool->queue_size);
            return 503;
        }
        wait = true;
    } else if (i < 0) {
        sg_log_warn("pool %s: no server available", pool->name);
        return 503;
    }
    struct sg_exchange *ex = ex_alloc(w);
    ex->client = c;
    ex->cfg = sg_config_ref(w->cfg);
    ex->pool = pool;
    ex->start_ms = now_ms(ex);
    ex->creq = c->creq;
    c->creq = NULL;
    static const char miss[] = "X-Cache: MISS\r\n";
    size_t miss_len = route->cache.enabled &&
                              (msg->method_id == SG_METHOD_GET || msg->method_id == SG_METHOD_HEAD)
                          ? sizeof(miss) - 1
                          : 0;
    if (miss_len && c->alog)
        c->alog->cache = "MISS";
    if ((extra_hdr && extra_len) || miss_len) {
        ex->extra_hdr = sg_buf_get_size(extra_len + miss_len);
        if (extra_len)
            memcpy(ex->extra_hdr->data, extra_hdr, extra_len);
        memcpy(ex->extra_hdr->data + extra_len, miss, miss_len);
        ex->extra_hdr->end = (uint32_t)(extra_len + miss_len);
    }
    if (wait) {
        ex->queued = 1;
        ex->cold = cold;
        sg_list_insert_tail(&w->waiting, &ex->qlink);
        if (!uv_is_active((uv_handle_t *)&w->waiting_check))
            uv_check_start(&w->waiting_check, sg_proxy_queue_run);
    } else {
        ex->server_idx = (uint32_t)i;
        ex->server = &pool->servers[i];
        ex->tried = i < 64 ? 1ull << i : 0;
        ex->attempts = 1;
    }
    ex->has_key = has_key;
    ex->key_hash = key_hash;
    int m = msg->method_id;
    ex->retry_ok = route->retryable || is_safe(m) || m == SG_METHOD_PUT || m == SG_METHOD_DELETE;
    ex->replayable =
        ex->retry_ok && pool->retry.attempts > 1 && pool->retry.buffer_bytes > 0 &&
        !(msg->body == SG_BODY_LENGTH && msg->content_length > pool->retry.buffer_bytes);
    ex->method = msg->method_id;
    ex->client_http10 = msg->minor == 0;
    ex->keep_client = msg->keep_alive;
    ex->upgrade = msg->upgrade;
    ex->req_body = msg->body;
    if (msg->body == SG_BODY_LENGTH)
        ex->req_left = msg->content_length;
    else if (msg->body == SG_BODY_CHUNKED)
        sg_http_chunked_init(&ex->req_ch, ex->cfg->limits.max_body_bytes, 16384);
    ex->head = sg__request_head(c, msg, pool->name, msg->upgrade, msg->expect_continue);
    if (!ex->head) {
        ex_free(w, ex);
        return 431;
    }
    c->rbuf->start += (uint32_t)head_len;
    c->scanned = 0;
    c->ex = ex;
    int status = validate_body(ex);
    if (status) {
        c->ex = NULL;
        ex_free(w, ex);
        return status;
    }
    if (route->max_in_flight)
        ex->route_slot = route->in_flight; /* from here on the exchange gives it back */
    sg_conn_set_state(c, SG_CONN_PROXY);
    if (msg->expect_continue && !ex->req_done && !ex->client_http10) {
        uv_buf_t b = uv_buf_init((char *)continue_100, sizeof(continue_100) - 1);
        if (sg_conn_write(c, &b, 1, NULL, NULL) < 0) {
            sg_conn_close(c);
            return 0;
        }
    }
    if (ex->queued)
        c->deadline =
            now_ms(ex) + (ex->cold ? pool->scale.cold_start_timeout_ms : pool->queue_timeout_ms);
    else
        attach_upstream(ex);
    return 0;
}

/* A newer snapshot arrived while ex waited (an instance joined, a reload):
 * wait on in the same pool of the new one, whose servers may be usable. A
 * pool gone from the config keeps the old snapshot (and fails as before). */
static void requeue(struct sg_worker *w, struct sg_exchange *ex) {
    const struct sg_pool *np = sg_config_pool(w->cfg, ex->pool->name);
    if (np == NULL)
        return;
    atomic_fetch_sub_explicit(&((struct sg_pool *)ex->pool)->queued, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&((struct sg_pool *)np)->queued, 1, memory_order_relaxed);
    sg_config_unref(ex->cfg);
    ex->cfg = sg_config_ref(w->cfg);
    ex->pool = np;
}

void sg_proxy_queue_run(uv_check_t *h) {
    struct sg_worker *w = h->data;
    struct sg_list *head = &w->waiting;
    for (struct sg_list *it = head->next, *next; it != head; it = next) {
        next = it->next;
        struct sg_exchange *ex = sg_container_of(it, struct sg_exchange, qlink);
        if (ex->cfg != w->cfg)
            requeue(w, ex);
        struct sg_pick_key key = {.has_key = ex->has_key, .key_hash = ex->key_hash};
        int i = sg_pool_pick(ex->pool, &key, 0, sg_worker_random(w));
        if (i == SG_POOL_FULL || (i == -1 && ex->pool->scale.enabled))
            continue; /* wait on, until the deadline */
        dequeue(w, ex);
        if (i < 0) {
            sg_log_warn("pool %s: no server available for a queued request", ex->pool->name);
            fail(ex, 503);
            continue;
        }
        ex->server_idx = (uint32_t)i;
        ex->server = &ex->pool->servers[i];
        ex->tried = i < 64 ? 1ull << i : 0;
        ex->attempts = 1;
        attach_upstream(ex);
    }
}

void sg__proxy_connected(struct sg_exchange *ex, int status) {
    if (status < 0) {
        sg_log_warn("upstream %s: connect failed: %s", ex->server->text, uv_strerror(status));
        sg__upstream_close(ex->up);
        ex->up = NULL;
        sg_pool_report(ex->pool, ex->server_idx, SG_OUTCOME_ERROR);
        if (!try_retry(ex, "connect failed"))
            fail(ex, 502);
        return;
    }
    send_request(ex);
}

void sg_proxy_client_data(struct sg_conn *c) {
    struct sg_exchange *ex = c->ex;
    if (ex->resp_done || ex->req_done)
        return; /* bytes of the next request: they wait in rbuf */
    int status = validate_body(ex);
    if (status) {
        fail(ex, status);
        return;
    }
    if (c->state == SG_CONN_PROXY && !ex->resp_started)
        c->deadline = now_ms(ex) + ex->cfg->limits.body_timeout_ms;
    else if (c->state == SG_CONN_TUNNEL)
        c->deadline = now_ms(ex) + ex->cfg->limits.idle_timeout_ms;
    if (ex->up && ex->up->state == SG_UP_ACTIVE && !ex->up->writing)
        send_request(ex);
    else if (c->rbuf && c->rbuf->end == c->rbuf->cap)
        sg_conn_read_stop(c); /* until the upstream takes what we have */
}

void sg__proxy_upstream_written(struct sg_exchange *ex, int status) {
    struct sg_conn *c = ex->client;
    if (status < 0) {
        sg_log_warn("upstream %s: write failed: %s", ex->server->text, uv_strerror(status));
        sg_pool_report(ex->pool, ex->server_idx, SG_OUTCOME_ERROR);
        if (!try_retry(ex, "write failed"))
            fail(ex, 502);
        return;
    }
    if (ex->resp_started && ex->head) {
        sg_buf_put(ex->head);
        ex->head = NULL;
    }
    if (ex->req_done && ex->req_ready == 0) {
        if (c->state == SG_CONN_PROXY && !ex->resp_started)
            c->deadline = now_ms(ex) + ex->pool->response_timeout_ms;
        return;
    }
    sg_conn_read_start(c);
    if (ex->req_ready || (c->rbuf && c->rbuf->end > c->rbuf->start))
        sg_proxy_client_data(c);
    if (c->ex == ex && ex->req_ready)
        send_request(ex);
}

/* The client side is over once every byte of the response was written. */
static void finish_client(struct sg_exchange *ex) {
    struct sg_conn *c = ex->client;
    bool keep = ex->keep_client;
    if (ex->req_ready && c->rbuf) /* validated request bytes never sent */
        c->rbuf->start += ex->req_ready;
    c->ex = NULL;
    ex_free(c->w, ex);
    sg_conn_request_done(c, keep);
}

/* The upstream side is over: reuse the connection if both directions ended
 * cleanly, else close it. */
static void release_upstream(struct sg_exchange *ex) {
    struct sg_upstream *up = ex->up;
    if (!up)
        return;
    ex->up = NULL;
    bool sent = ex->req_done && ex->req_ready == 0 && ex->head_sent && !up->writing;
    if (ex->up_reusable && sent)
        sg__upstream_release(up, ex->pool);
    else
        sg__upstream_close(up);
}

static void response_done(struct sg_exchange *ex) {
    ex->resp_done = 1;
    if (ex->creq)
        sg_cache_on_done(ex->creq, ex->client->w);
    release_upstream(ex);
    if (ex->client->writes == 0)
        finish_client(ex);
}

/* Hands the response head rh (may be NULL) and the body bytes in the
 * upstream's buffer to the client. */
static void forward_response(struct sg_exchange *ex, struct sg_buf *rh) {
    struct sg_upstream *up = ex->up;
    struct sg_conn *c = ex->client;
    struct sg_buf *b = up->rbuf;
    uint32_t avail = b ? b->end - b->start : 0;
    uint32_t consumed = 0, payload = 0;
    bool done = false;
    switch (ex->resp_body) {
    case SG_BODY_NONE:
        done = true;
        break;
    case SG_BODY_LENGTH:
        consumed = payload = avail < ex->resp_left ? avail : (uint32_t)ex->resp_left;
        ex->resp_left -= consumed;
        done = ex->resp_left == 0;
        break;
    case SG_BODY_CHUNKED:
        if (!ex->decode) {
            ssize_t r = avail ? sg_http_chunked_scan(&ex->resp_ch, b->data + b->start, avail) : 0;
            if (r < 0) {
                sg_log_warn("upstream %s: bad chunked response body: %s", ex->server->text,
                            ex->resp_ch.error ? ex->resp_ch.error : "?");
                sg_buf_put(rh);
                fail(ex, 502);
                return;
            }
            consumed = payload = (uint32_t)r;
        } else {
            /* Decode in place: payload bytes only move towards the front. */
            char *base = b ? b->data + b->start : NULL;
            while (consumed < avail && !ex->resp_ch.done) {
                const char *data;
                size_t dlen;
                ssize_t r = sg_http_chunked_decode(&ex->resp_ch, base + consumed, avail - consumed,
                                                   &data, &dlen);
                if (r < 0) {
                    sg_buf_put(rh);
                    fail(ex, 502);
                    return;
                }
                if (dlen)
                    memmove(base + payload, data, dlen);
                payload += (uint32_t)dlen;
                consumed += (uint32_t)r;
                if (r == 0)
                    break;
            }
        }
        done = ex->resp_ch.done;
        break;
    default: /* SG_BODY_EOF, SG_BODY_TUNNEL: until the upstream closes */
        consumed = payload = avail;
        break;
    }
    if (done && consumed < avail)
        ex->up_reusable = 0; /* bytes after the response: not HTTP we understand */
    if (ex->creq && payload)
        sg_cache_on_body(ex->creq, b->data + b->start, payload,
                         ex->resp_body == SG_BODY_CHUNKED && !ex->decode);
    /* Stored before the last bytes reach the client: its next request (on
     * another connection, another worker) finds the entry. */
    if (ex->creq && done)
        sg_cache_on_done(ex->creq, c->w);
    uv_buf_t bufs[2];
    unsigned n = 0;
    if (rh)
        bufs[n++] = uv_buf_init(rh->data, rh->end);
    if (payload)
        bufs[n++] = uv_buf_init(b->data + b->start, payload);
    int r = n ? sg_conn_write(c, bufs, n, rh, payload ? b : NULL) : 0;
    if (r < 0) {
        sg_buf_put(rh);
        sg_conn_close(c);
        return;
    }
    if (r == 1) {
        if (payload)
            up->rbuf = NULL; /* the write owns it */
        if (!done)
            sg__upstream_read_stop(up); /* until the client catches up */
    } else {
        sg_buf_put(rh);
        if (b) {
            b->start += consumed;
            if (b->start == b->end) {
                sg_buf_put(b);
                up->rbuf = NULL;
            }
        }
    }
    if (done)
        response_done(ex);
}

static void enter_tunnel(struct sg_exchange *ex) {
    struct sg_conn *c = ex->client;
    ex->req_body = SG_BODY_TUNNEL;
    ex->resp_body = SG_BODY_TUNNEL;
    ex->req_done = 0;
    ex->keep_client = 0;
    ex->up_reusable = 0;
    sg_conn_set_state(c, SG_CONN_TUNNEL);
    sg_conn_read_start(c);
}

void sg__proxy_upstream_data(struct sg_exchange *ex) {
    struct sg_conn *c = ex->client;
    struct sg_upstream *up = ex->up;
    ex->got_resp_bytes = 1;
    if (c->state == SG_CONN_TUNNEL)
        c->deadline = now_ms(ex) + ex->cfg->limits.idle_timeout_ms;
    else
        c->deadline = now_ms(ex) + ex->pool->response_timeout_ms;
    if (ex->resp_started) {
        forward_response(ex, NULL);
        return;
    }
    struct sg_worker *w = c->w;
    struct sg_buf *b = up->rbuf;
    struct sg_http_limits lim = {.max_header_bytes = b->cap, .max_request_line = b->cap};
    struct sg_http_msg msg;
    for (;;) {
        memset(&msg, 0, sizeof(msg));
        msg.headers = w->headers;
        msg.max_headers = SG_MAX_HEADERS;
        size_t scanned = ex->resp_scanned;
        int r = sg_http_parse_response(b->data + b->start, b->end - b->start, &scanned, &msg, &lim,
                                       (enum sg_http_method)ex->method);
        ex->resp_scanned = (uint32_t)scanned;
        if (r == SG_HTTP_PARTIAL) {
            if (b->end == b->cap && b->start == 0) {
                sg_log_warn("upstream %s: response head too large", ex->server->text);
                fail(ex, 502);
            }
            return;
        }
        if (r == SG_HTTP_ERROR) {
            sg_log_warn("upstream %s: invalid response: %s", ex->server->text,
                        msg.error ? msg.error : "?");
            fail(ex, 502);
            return;
        }
        if (msg.status >= 200 || msg.status == 101) {
            if (msg.status == 101 && !ex->upgrade) {
                sg_log_warn("upstream %s: 101 without an upgrade request", ex->server->text);
                fail(ex, 502);
                return;
            }
            b->start += (uint32_t)r;
            ex->resp_scanned = 0;
            break;
        }
        /* Interim 1xx: the gateway already answered 100-continue itself. */
        b->start += (uint32_t)r;
        ex->resp_scanned = 0;
        if (b->start == b->end)
            return;
    }
    sg_pool_report(ex->pool, ex->server_idx, msg.status >= 500 ? SG_OUTCOME_5XX : SG_OUTCOME_OK);
    sg_server_observe(sg_server_state(ex->server->id), now_ms(ex) - ex->start_ms);
    ex->status = msg.status;
    if (c->alog) {
        c->alog->server = ex->server->text;
        c->alog->upstream_ns = c->req_ns ? uv_hrtime() - c->req_ns : 0;
    }
    if (ex->creq && msg.status != 101 && sg_cache_on_response(ex->creq, w, &msg)) {
        ex->up_reusable = 0;
        serve_stale(ex); /* a 5xx, and a copy within stale-if-error */
        return;
    }
    ex->resp_started = 1;
    if (ex->head && !up->writing) {
        sg_buf_put(ex->head);
        ex->head = NULL;
        sg_buf_put(ex->replay);
        ex->replay = NULL;
        ex->replayable = 0;
    }
    struct sg_buf *rh;
    if (msg.status == 101) {
        rh = sg__response_head(&msg, true, ex->client_http10, false, NULL);
        if (rh)
            enter_tunnel(ex);
    } else {
        ex->resp_body = msg.body;
        ex->resp_left = msg.content_length;
        if (msg.body == SG_BODY_CHUNKED) {
            sg_http_chunked_init(&ex->resp_ch, 0, 65536);
            ex->decode = ex->client_http10;
        }
        ex->up_reusable = msg.keep_alive && msg.body != SG_BODY_EOF;
        ex->keep_client = ex->keep_client && ex->req_done && msg.body != SG_BODY_EOF &&
                          !ex->decode && !w->draining;
        rh = sg__response_head(&msg, ex->keep_client, ex->client_http10, ex->decode, ex->extra_hdr);
    }
    if (!rh) {
        fail(ex, 502);
        return;
    }
    bool tunnel = msg.status == 101;
    forward_response(ex, rh);
    /* Bytes the client sent after its upgrade request go through now. */
    if (tunnel && !c->closed && c->ex == ex && c->rbuf && c->rbuf->end > c->rbuf->start)
        sg_proxy_client_data(c);
}

void sg__proxy_upstream_eof(struct sg_exchange *ex, int err) {
    struct sg_upstream *up = ex->up;
    if (!ex->resp_started) {
        if (!ex->got_resp_bytes && up->reused && !ex->retried && ex->head &&
            ex->req_body == SG_BODY_NONE) {
            /* A kept-alive connection closed as we reused it: resend once. */
            sg_log_debug("upstream %s: reused connection closed, retrying", ex->server->text);
            sg__upstream_close(up);
            ex->up = NULL;
            ex->retried = 1;
            ex->head_sent = 0;
            attach_upstream(ex);
            return;
        }
        sg_log_warn("upstream %s: closed before a complete response (%s)", ex->server->text,
                    uv_strerror(err));
        if (!ex->got_resp_bytes)
            sg_pool_report(ex->pool, ex->server_idx, SG_OUTCOME_ERROR);
        if (!try_retry(ex, "closed before responding"))
            fail(ex, 502);
        return;
    }
    if (ex->resp_body == SG_BODY_EOF || ex->resp_body == SG_BODY_TUNNEL) {
        ex->keep_client = 0;
        ex->up_reusable = 0;
        response_done(ex);
        return;
    }
    sg_log_warn("upstream %s: response cut short (%s)", ex->server->text, uv_strerror(err));
    sg_conn_close(ex->client);
}

bool sg_proxy_request_sent(const struct sg_conn *c) {
    return c->ex && c->ex->req_done && c->ex->req_body != SG_BODY_TUNNEL;
}

void sg_proxy_client_written(struct sg_conn *c, int status) {
    struct sg_exchange *ex = c->ex;
    if (status < 0) {
        sg_conn_close(c);
        return;
    }
    /* A client reading slowly is progress: the response timeout restarts. */
    if (c->state == SG_CONN_PROXY)
        c->deadline = now_ms(ex) + ex->pool->response_timeout_ms;
    if (ex->resp_done) {
        if (c->writes == 0)
            finish_client(ex);
        return;
    }
    if (ex->up && c->writes == 0) {
        sg__upstream_read_start(ex->up);
        if (ex->up->rbuf && ex->up->rbuf->end > ex->up->rbuf->start)
            sg__proxy_upstream_data(ex);
    }
}

void sg_proxy_timeout(struct sg_conn *c) {
    struct sg_exchange *ex = c->ex;
    if (ex && ex->queued && ex->cold) {
        sg_log_warn("pool %s: no instance was ready within cold_start_timeout (%llu ms)",
                    ex->pool->name, (unsigned long long)ex->pool->scale.cold_start_timeout_ms);
        fail(ex, 503);
        return;
    }
    if (ex && ex->queued) {
        sg_log_warn("pool %s: request waited queue_timeout (%llu ms) for a server", ex->pool->name,
                    (unsigned long long)ex->pool->queue_timeout_ms);
        fail(ex, 503);
        return;
    }
    if (!ex || c->state == SG_CONN_TUNNEL || ex->resp_started) {
        sg_log_info("conn %u.%u: timed out", c->w->index, c->id);
        sg_conn_close(c);
        return;
    }
    if (ex->up && ex->up->state == SG_UP_CONNECTING) {
        sg_log_warn("upstream %s: connect timed out", ex->server->text);
        sg_pool_report(ex->pool, ex->server_idx, SG_OUTCOME_ERROR);
        if (!try_retry(ex, "connect timed out"))
            fail(ex, 504);
    } else if (!ex->req_done) {
        sg_log_info("conn %u.%u: request body timed out", c->w->index, c->id);
        fail(ex, 408);
    } else {
        sg_log_warn("upstream %s: no response within %llu ms", ex->server->text,
                    (unsigned long long)ex->pool->response_timeout_ms);
        sg_pool_report(ex->pool, ex->server_idx, SG_OUTCOME_ERROR);
        fail(ex, 504);
    }
}
