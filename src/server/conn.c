/*
 * Client connections: accept, read, parse request heads, hand requests to
 * the proxy, answer gateway errors, time out, close.
 *
 * A connection reads continuously; input accumulates in c->rbuf (attached
 * only while bytes are pending). Requests are handled one at a time, so
 * pipelined requests are answered in order: bytes of the next request wait
 * in rbuf until the current exchange is over, and reading stops only when
 * rbuf is full. Timeouts are not per-connection timers: each state has a
 * list ordered by entry time and the worker's sweep walks them.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache.h"
#include "core/io.h"
#include "core/log.h"
#include "stats/accesslog.h"
#include "stats/stats.h"
#include "pool/state.h"
#include "proxy/proxy.h"
#include "ratelimit/limit.h"
#include "ratelimit/shared.h"
#include "server/server.h"

/* How long a closing connection may take to drain its last answer. */
#define CLOSING_TIMEOUT_MS 5000

_Atomic uint32_t sg_client_conns;

static void on_close(uv_handle_t *h);
static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *out);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void process_heads(struct sg_conn *c);
static bool leave_wait(struct sg_conn *c);

static uint64_t state_timeout(const struct sg_conn *c, enum sg_conn_state s) {
    const struct sg_limits *l = &c->w->cfg->limits;
    switch (s) {
    case SG_CONN_HEAD:
        return l->header_timeout_ms;
    case SG_CONN_IDLE:
    case SG_CONN_TUNNEL:
        return l->idle_timeout_ms;
    case SG_CONN_CLOSING:
        return CLOSING_TIMEOUT_MS;
    default:
        return l->body_timeout_ms; /* the proxy sets its own deadlines */
    }
}

void sg_conn_set_state(struct sg_conn *c, enum sg_conn_state s) {
    struct sg_worker *w = c->w;
    /* nconns[c->state] counts c from accept until its close callback. */
    w->nconns[c->state]--;
    w->nconns[s]++;
    c->state = (uint8_t)s;
    /* (Re-)entering a state puts c at the tail, keeping each list ordered by
     * entry time, and so by deadline for the fixed-timeout states. */
    sg_list_remove(&c->link);
    sg_list_insert_tail(&w->conns[s], &c->link);
    c->deadline = uv_now(&w->loop) + state_timeout(c, s);
}

void sg_conn_read_start(struct sg_conn *c) {
    if (c->reading || c->closed)
        return;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
        c->reading = 1;
}

void sg_conn_read_stop(struct sg_conn *c) {
    if (!c->reading)
        return;
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
}

size_t sg_conn_ip(const struct sg_conn *c, char *out) {
    if (c->ip_family == AF_INET) {
        /* By hand: inet_ntop goes through sprintf, on every request. */
        char *p = out;
        for (int i = 0; i < 4; i++) {
            unsigned v = c->ip[i];
            if (v >= 100)
                *p++ = (char)('0' + v / 100);
            if (v >= 10)
                *p++ = (char)('0' + v / 10 % 10);
            *p++ = (char)('0' + v % 10);
            *p++ = i < 3 ? '.' : '\0';
        }
        return (size_t)(p - out - 1);
    } else if (c->ip_family == AF_INET6) {
        inet_ntop(AF_INET6, c->ip, out, 46);
    } else {
        strcpy(out, "unknown");
    }
    return strlen(out);
}

void sg_conn_accept(struct sg_listener *l) {
    struct sg_worker *w = l->w;
    struct sg_conn *c = sg_xcalloc(1, sizeof(*c));
    c->w = w;
    c->id = ++w->next_id;
    sg_list_init(&c->link);
    uv_tcp_init(&w->loop, &c->tcp);
    c->tcp.data = c;
    atomic_fetch_add_explicit(&sg_client_conns, 1, memory_order_relaxed);
    w->nconns_total++;
    c->state = SG_CONN_HEAD;
    w->nconns[SG_CONN_HEAD]++;
    if (uv_accept((uv_stream_t *)&l->tcp, (uv_stream_t *)&c->tcp) != 0) {
        sg_conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET) {
            c->ip_family = AF_INET;
            memcpy(c->ip, &((struct sockaddr_in *)&ss)->sin_addr, 4);
        } else if (ss.ss_family == AF_INET6) {
            c->ip_family = AF_INET6;
            memcpy(c->ip, &((struct sockaddr_in6 *)&ss)->sin6_addr, 16);
        }
    }
    sg_conn_set_state(c, SG_CONN_HEAD);
    uint32_t max = w->cfg->limits.max_connections;
    if (w->draining || atomic_load_explicit(&sg_client_conns, memory_order_relaxed) > max) {
        sg_log_warn("conn %u.%u: max_connections (%u) reached, answering 503", w->index, c->id,
                    max);
        sg_conn_error(c, 503);
        return;
    }
    sg_conn_read_start(c);
}

static void really_close(struct sg_conn *c) {
    if (c->closed)
        return;
    c->closed = 1;
    if (c->ex)
        sg_proxy_abort(c);
    if (c->rl_pending) {
        sg_rl_shared_drop(c->rl_pending);
        c->rl_pending = NULL;
    }
    sg_cache_conn_drop(c);
    c->reading = 0;
    uv_close((uv_handle_t *)&c->tcp, on_close);
}

void sg_conn_close(struct sg_conn *c) {
    really_close(c);
}

static void on_close(uv_handle_t *h) {
    struct sg_conn *c = h->data;
    struct sg_worker *w = c->w;
    sg_list_remove(&c->link);
    w->nconns[c->state]--;
    w->nconns_total--;
    atomic_fetch_sub_explicit(&sg_client_conns, 1, memory_order_relaxed);
    sg_buf_put(c->rbuf);
    free(c->rl_verdict);
    free(c->alog);
    leave_wait(c);
    free(c);
    sg_worker_maybe_finish(w);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *out) {
    struct sg_conn *c = h->data;
    (void)hint;
    if (!c->rbuf)
        c->rbuf = sg_buf_get();
    struct sg_buf *b = c->rbuf;
    if (b->end == b->cap && b->start > 0)
        sg_buf_compact(b);
    out->base = b->data + b->end;
    out->len = b->cap - b->end;
}

static void release_rbuf_if_empty(struct sg_conn *c) {
    if (c->rbuf && c->rbuf->start == c->rbuf->end) {
        sg_buf_put(c->rbuf);
        c->rbuf = NULL;
    }
}

static void on_shutdown(uv_shutdown_t *req, int status) {
    (void)status;
    free(req);
}

/* CLOSING: once the answer is out, half-close and keep reading (and
 * discarding) for a moment, so that unread request bytes do not make the
 * kernel reset the connection before the client has read the answer. */
static void linger(struct sg_conn *c) {
    if (c->closed || c->linger)
        return;
    c->linger = 1;
    uv_shutdown_t *req = sg_xmalloc(sizeof(*req));
    if (uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        free(req);
        really_close(c);
        return;
    }
    c->deadline = uv_now(&c->w->loop) + 2000;
    sg_conn_read_start(c);
}

static void on_written(void *arg, int status) {
    struct sg_conn *c = arg;
    c->writes--;
    if (c->closed)
        return;
    if (c->ex) {
        sg_proxy_client_written(c, status);
        return;
    }
    if (status < 0) {
        really_close(c);
        return;
    }
    if (c->state == SG_CONN_CLOSING && c->writes == 0)
        linger(c);
}

int sg_conn_write(struct sg_conn *c, const uv_buf_t *bufs, unsigned n, struct sg_buf *own0,
                  struct sg_buf *own1) {
    if (c->closed)
        return UV_ECANCELED;
    if (c->alog)
        for (unsigned i = 0; i < n; i++)
            c->alog->bytes += bufs[i].len;
    int r = sg_io_write((uv_stream_t *)&c->tcp, bufs, n, own0, own1, on_written, c);
    if (r == 1)
        c->writes++;
    return r;
}

/* The gateway's own answer: status, a plain-text body, extra header lines
 * (each ending in CRLF), and Connection: close unless keep. */
static struct sg_buf *local_answer(int status, const char *extra, size_t extra_len,
                                   const char *conn) {
    const char *reason = sg_http_reason(status);
    struct sg_buf *b = sg_buf_get_size(512 + extra_len);
    int body = snprintf(NULL, 0, "%d %s\n", status, reason);
    /* 503: the client may come back in a second (no server, or too busy). */
    bool retry = status == 503 && (extra_len == 0 || !memmem(extra, extra_len, "Retry-After", 11));
    int n = snprintf(b->data, b->cap,
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                     "%s%.*s%s\r\n%d %s\n",
                     status, reason, body, retry ? "Retry-After: 1\r\n" : "", (int)extra_len,
                     extra ? extra : "", conn, status, reason);
    b->end = (uint32_t)n;
    return b;
}

void sg_conn_error(struct sg_conn *c, int status) {
    sg_conn_error_hdr(c, status, NULL, 0);
}

void sg_conn_error_hdr(struct sg_conn *c, int status, const char *extra, size_t extra_len) {
    if (c->closed)
        return;
    if (c->ex)
        sg_proxy_abort(c);
    struct sg_buf *b = local_answer(status, extra, extra_len, "Connection: close\r\n");
    sg_conn_set_state(c, SG_CONN_CLOSING);
    /* Input is discarded from now on. */
    if (c->rbuf)
        c->rbuf->start = c->rbuf->end = 0;
    uv_buf_t ub = uv_buf_init(b->data, b->end);
    int r = sg_conn_write(c, &ub, 1, b, NULL);
    if (r == 1)
        return; /* b belongs to the write; on_written lingers */
    sg_buf_put(b);
    if (r < 0) {
        really_close(c);
        return;
    }
    if (c->writes == 0)
        linger(c);
}

void sg_conn_request_done(struct sg_conn *c, bool keep_alive) {
    c->ex = NULL;
    c->req_ns = 0;
    if (c->closed)
        return;
    if (c->peer_eof && !(c->rbuf && c->rbuf->start != c->rbuf->end))
        keep_alive = false;
    if (!keep_alive || c->w->draining) {
        sg_conn_set_state(c, SG_CONN_CLOSING);
        if (c->rbuf)
            c->rbuf->start = c->rbuf->end = 0;
        if (c->writes == 0)
            linger(c);
        return;
    }
    c->scanned = 0;
    if (c->rbuf && c->rbuf->start != c->rbuf->end) {
        sg_conn_set_state(c, SG_CONN_HEAD);
        if (!c->peer_eof)
            sg_conn_read_start(c);
        process_heads(c);
        return;
    }
    release_rbuf_if_empty(c);
    sg_conn_set_state(c, SG_CONN_IDLE);
    if (!c->peer_eof)
        sg_conn_read_start(c);
}

/* Answers the request msg (head_len bytes, no body) from the gateway and
 * keeps the connection for the next one. False when the connection
 * cannot be kept: then it was answered and is closing. */
static bool answer_and_keep(struct sg_conn *c, const struct sg_http_msg *msg, size_t head_len,
                            int status, const char *extra, size_t extra_len) {
    if (msg->body != SG_BODY_NONE || !msg->keep_alive || c->w->draining || c->peer_eof) {
        sg_conn_count(c, status);
        sg_conn_error_hdr(c, status, extra, extra_len);
        return false;
    }
    /* an HTTP/1.0 client that asked for keep-alive is told it got it */
    struct sg_buf *b =
        local_answer(status, extra, extra_len, msg->minor == 0 ? "Connection: keep-alive\r\n" : "");
    if (msg->method_id == SG_METHOD_HEAD) /* the same head, no body */
        b->end -= (uint32_t)snprintf(NULL, 0, "%d %s\n", status, sg_http_reason(status));
    uv_buf_t ub = uv_buf_init(b->data, b->end);
    int r = sg_conn_write(c, &ub, 1, b, NULL);
    sg_conn_count(c, status);
    if (r != 1)
        sg_buf_put(b);
    if (r < 0) {
        really_close(c);
        return false;
    }
    c->rbuf->start += (uint32_t)head_len;
    c->scanned = 0;
    return true;
}

static bool process_one(struct sg_conn *c);

/* Takes c out of its route's wait queue (it is being processed again).
 * True when it was in one. */
static bool leave_wait(struct sg_conn *c) {
    if (c->wait_slot == NULL)
        return false;
    atomic_fetch_sub_explicit(c->wait_slot, 1, memory_order_relaxed);
    c->wait_slot = NULL;
    return true;
}

/* Puts c, whose head stays in rbuf, in route's wait queue when there is
 * room; it keeps its first deadline when it was already waiting. v (the
 * rate-limit verdict, may be NULL) is kept so that the head, parsed again,
 * is not counted twice. False when the queue is full. */
static bool enter_wait(struct sg_conn *c, const struct sg_route *route, bool again,
                       const struct sg_rl_verdict *v) {
    struct sg_worker *w = c->w;
    if (atomic_fetch_add(route->queued, 1) >= route->queue_size) {
        atomic_fetch_sub(route->queued, 1);
        return false;
    }
    c->wait_slot = route->queued;
    if (!again)
        c->wait_deadline = uv_now(&w->loop) + route->queue_timeout_ms;
    if (v && c->rl_verdict == NULL) {
        c->rl_verdict = sg_xmalloc(sizeof(*v));
        memcpy(c->rl_verdict, v, sizeof(*v));
    }
    sg_conn_read_stop(c);
    sg_conn_set_state(c, SG_CONN_WAIT);
    c->deadline = c->wait_deadline;
    if (!uv_is_active((uv_handle_t *)&w->wait_check))
        uv_check_start(&w->wait_check, sg_conn_wait_run);
    return true;
}

void sg_conn_count(struct sg_conn *c, int status) {
    if (c->req_ns == 0)
        return;
    uint64_t took = uv_hrtime() - c->req_ns;
    sg_stats_request(c->w->stats, c->series, status, took);
    c->req_ns = 0;
    if (c->alog && sg_alog_on()) {
        char ip[64];
        size_t n = sg_conn_ip(c, ip);
        ip[n < sizeof(ip) ? n : sizeof(ip) - 1] = '\0';
        const char *route, *pool;
        sg_stats_labels(c->series, &route, &pool);
        sg_alog_line(c->w->index, c->alog, ip, status, took, route, pool);
    }
}

/* The access log's fields of the head just parsed (only while it is on;
 * msg NULL: a head that did not parse, nothing of it is kept). */
static void alog_start(struct sg_conn *c, const struct sg_http_msg *msg) {
    if (!sg_alog_on())
        return;
    if (c->alog == NULL)
        c->alog = sg_xmalloc(sizeof(*c->alog));
    struct sg_alog_rec *a = c->alog;
    memset(a, 0, sizeof(*a));
    if (msg == NULL)
        return;
    size_t n = msg->method_len < sizeof(a->method) - 1 ? msg->method_len : sizeof(a->method) - 1;
    memcpy(a->method, msg->method, n);
    a->method[n] = '\0';
    n = msg->target_len < sizeof(a->target) - 1 ? msg->target_len : sizeof(a->target) - 1;
    memcpy(a->target, msg->target, n);
    a->target[n] = '\0';
    for (uint32_t i = 0; i < msg->num_headers; i++) {
        if (msg->headers[i].id == SG_HDR_X_REQUEST_ID) {
            n = msg->headers[i].value_len < sizeof(a->rid) - 1 ? msg->headers[i].value_len
                                                               : sizeof(a->rid) - 1;
            memcpy(a->rid, msg->headers[i].value, n);
            a->rid[n] = '\0';
            break;
        }
    }
    if (a->rid[0] == '\0') /* the one the backend will get too */
        sg_request_id(c->w, a->rid);
}

void sg_conn_resume(struct sg_conn *c) {
    sg_conn_set_state(c, SG_CONN_HEAD);
    if (!c->peer_eof)
        sg_conn_read_start(c);
    process_heads(c);
}

void sg_conn_wait_run(uv_check_t *h) {
    struct sg_worker *w = h->data;
    struct sg_list *head = &w->conns[SG_CONN_WAIT];
    /* each one once, in arrival order: those still without a slot go back
     * to the tail in the same order */
    uint32_t n = w->nconns[SG_CONN_WAIT];
    for (uint32_t i = 0; i < n && !sg_list_empty(head); i++) {
        struct sg_conn *c = sg_container_of(head->next, struct sg_conn, link);
        if (c->closed) { /* going away (its close callback is due): off the list */
            sg_list_remove(&c->link);
            continue;
        }
        sg_conn_set_state(c, SG_CONN_HEAD);
        if (!c->peer_eof)
            sg_conn_read_start(c);
        process_heads(c);
    }
    if (sg_list_empty(head))
        uv_check_stop(h);
}

/* The shared rate-limit answer for the head at the front of rbuf. */
static void on_rl_verdict(struct sg_conn *c, const struct sg_rl_verdict *v) {
    c->rl_pending = NULL;
    c->rl_verdict = sg_xmalloc(sizeof(*v));
    memcpy(c->rl_verdict, v, sizeof(*v));
    if (!c->peer_eof)
        sg_conn_read_start(c);
    process_heads(c);
}

/* Parses the heads at the front of rbuf: starts the exchange of the first
 * one, or answers it here (rate limited, shed) and goes on with the next. */
static void process_heads(struct sg_conn *c) {
    while (process_one(c)) {
        if (c->rbuf->start == c->rbuf->end) {
            release_rbuf_if_empty(c);
            sg_conn_set_state(c, SG_CONN_IDLE);
            return;
        }
        sg_conn_set_state(c, SG_CONN_HEAD);
    }
}

/* Parses the head at the front of rbuf and starts its exchange. True when
 * it was answered here on a kept connection (the caller goes on). */
static bool process_one(struct sg_conn *c) {
    struct sg_worker *w = c->w;
    const struct sg_config *cfg = w->cfg;
    struct sg_buf *b = c->rbuf;
    struct sg_http_msg msg;
    struct sg_http_limits lim = {
        .max_request_line = cfg->limits.max_request_line,
        .max_header_bytes = cfg->limits.max_header_bytes,
        .max_body_bytes = cfg->limits.max_body_bytes,
    };
    memset(&msg, 0, sizeof(msg));
    msg.headers = w->headers;
    msg.max_headers = SG_MAX_HEADERS;
    size_t scanned = c->scanned;
    int r = sg_http_parse_request(b->data + b->start, b->end - b->start, &scanned, &msg, &lim);
    c->scanned = (uint32_t)scanned;
    if (r == SG_HTTP_PARTIAL) {
        if (b->end == b->cap) {
            if (b->start > 0) {
                /* The head started mid-buffer (pipelining): make room. */
                sg_buf_compact(b);
            } else if (b->cap < cfg->limits.max_header_bytes + 1024u) {
                /* Allowed to be larger than a standard buffer: grow once. */
                struct sg_buf *nb = sg_buf_get_size(cfg->limits.max_header_bytes + 1024u);
                memcpy(nb->data, b->data, b->end);
                nb->end = b->end;
                sg_buf_put(b);
                c->rbuf = nb;
            } else {
                sg_conn_error(c, 431);
            }
        }
        return false;
    }
    if (r == SG_HTTP_ERROR) {
        sg_log_debug("conn %u.%u: bad request: %s", w->index, c->id, msg.error ? msg.error : "?");
        c->series = SG_STATS_NONE;
        c->req_ns = uv_hrtime();
        alog_start(c, NULL);
        sg_conn_count(c, msg.error_status ? msg.error_status : 400);
        sg_conn_error(c, msg.error_status ? msg.error_status : 400);
        return false;
    }
    if (c->req_ns == 0) {
        c->req_ns = uv_hrtime();
        alog_start(c, &msg);
    }
    /* Route on the authority of an absolute-form target, else on Host. */
    const char *host = NULL;
    size_t host_len = 0;
    const char *path = msg.target;
    size_t path_len = msg.target_len;
    if (msg.target_len > 0 && msg.target[0] != '/' && msg.target[0] != '*') {
        const char *p = memchr(msg.target, ':', msg.target_len);
        if (p && (size_t)(p - msg.target) + 3 <= msg.target_len && p[1] == '/' && p[2] == '/') {
            host = p + 3;
            const char *end = msg.target + msg.target_len;
            const char *slash = memchr(host, '/', (size_t)(end - host));
            const char *q = memchr(host, '?', (size_t)(end - host));
            if (q && (!slash || q < slash))
                slash = q;
            host_len = (size_t)((slash ? slash : end) - host);
            path = slash ? slash : "/";
            path_len = slash ? (size_t)(end - slash) : 1;
        }
    }
    if (!host && msg.host_index >= 0) {
        host = msg.headers[msg.host_index].value;
        host_len = msg.headers[msg.host_index].value_len;
    }
    const char *qm = memchr(path, '?', path_len);
    size_t plen = qm ? (size_t)(qm - path) : path_len;
    if (cfg->health_path && plen == strlen(cfg->health_path) &&
        memcmp(path, cfg->health_path, plen) == 0 &&
        (msg.method_id == SG_METHOD_GET || msg.method_id == SG_METHOD_HEAD)) {
        /* The gateway's own health: 200 while it takes requests, 503 once
         * it stops (a load balancer or Kubernetes then sends no more). */
        c->series = SG_STATS_NONE;
        return answer_and_keep(c, &msg, (size_t)r, w->draining ? 503 : 200, NULL, 0);
    }
    const struct sg_route *route = sg_config_route(cfg, host, host_len, path, plen, msg.method_id);
    if (!route) {
        c->series = SG_STATS_NONE;
        sg_conn_count(c, 404);
        sg_conn_error(c, 404);
        return false;
    }
    bool safe = msg.method_id == SG_METHOD_GET || msg.method_id == SG_METHOD_HEAD ||
                msg.method_id == SG_METHOD_OPTIONS;
    c->series = safe && route->read_pool ? route->stats_read_id : route->stats_id;
    const struct sg_pool_state *ps = route->pool->shared;
    if (ps && route->priority < atomic_load_explicit(&ps->shed_below, memory_order_relaxed)) {
        leave_wait(c);
        sg_stats_reject(w->stats, c->series, SG_STATS_SHED_P95);
        return answer_and_keep(c, &msg, (size_t)r, 503, "Retry-After: 1\r\n", 17);
    }
    struct sg_rl_verdict verdict, *v = NULL;
    if (route->nrate_limits) {
        v = &verdict;
        if (c->rl_verdict) { /* the answer from Redis for this very head */
            verdict = *c->rl_verdict;
            free(c->rl_verdict);
            c->rl_verdict = NULL;
        } else if (w->redis) {
            c->rl_pending = sg_rl_shared_check(w, w->redis, cfg->redis.rate_limit_budget_ms, route,
                                               c, &msg, on_rl_verdict, v);
            if (c->rl_pending) { /* the head waits in rbuf; parsed again on the answer */
                sg_conn_read_stop(c);
                return false;
            }
        } else {
            sg_ratelimit_check(route, c, &msg, uv_hrtime() / 1000, v);
        }
        if (v->limited) {
            char ra[48];
            uint64_t secs = (v->retry_after_ms + 999) / 1000;
            int n = snprintf(ra, sizeof(ra), "Retry-After: %llu\r\n",
                             (unsigned long long)(secs ? secs : 1));
            if (v->hdr_len + (size_t)n < sizeof(v->hdr)) {
                memcpy(v->hdr + v->hdr_len, ra, (size_t)n + 1);
                v->hdr_len += (size_t)n;
            }
            sg_stats_reject(w->stats, c->series, SG_STATS_RATE_LIMITED);
            return answer_and_keep(c, &msg, (size_t)r, 429, v->hdr, v->hdr_len);
        }
    }
    bool waited = leave_wait(c);
    if (route->cache.enabled) {
        switch (sg_cache_request(c, &msg, (size_t)r, route, path, path_len, host, host_len,
                                 v && v->hdr_len ? v->hdr : NULL, v ? v->hdr_len : 0)) {
        case SG_CACHE_ANSWERED:
            return true;
        case SG_CACHE_DONE:
            return false;
        case SG_CACHE_WAIT: /* parsed again on wake: keep the rate-limit verdict */
            if (v && c->rl_verdict == NULL) {
                c->rl_verdict = sg_xmalloc(sizeof(*v));
                memcpy(c->rl_verdict, v, sizeof(*v));
            }
            return false;
        case SG_CACHE_UNSATISFIED:
            return answer_and_keep(c, &msg, (size_t)r, 504, v && v->hdr_len ? v->hdr : NULL,
                                   v ? v->hdr_len : 0);
        case SG_CACHE_PASS:
            break;
        }
    }
    if (route->max_in_flight) {
        uint32_t now_in = atomic_fetch_add(route->in_flight, 1);
        if (now_in >= route->max_in_flight) {
            atomic_fetch_sub(route->in_flight, 1);
            if (route->queue_size && enter_wait(c, route, waited, v))
                return false;
            sg_log_debug("conn %u.%u: route over max_in_flight (%u): 503", w->index, c->id,
                         route->max_in_flight);
            sg_stats_reject(w->stats, c->series, SG_STATS_SHED_IN_FLIGHT);
            return answer_and_keep(c, &msg, (size_t)r, 503, "Retry-After: 1\r\n", 17);
        }
    }
    int status = sg_proxy_start(c, &msg, (size_t)r, route, v && v->hdr_len ? v->hdr : NULL,
                                v ? v->hdr_len : 0);
    if (status) {
        if (route->max_in_flight)
            atomic_fetch_sub(route->in_flight, 1);
        enum sg_cache_verdict fv = sg_cache_fallback(c, status);
        if (fv == SG_CACHE_ANSWERED)
            return true;
        if (fv == SG_CACHE_DONE)
            return false;
        sg_cache_conn_drop(c);
        sg_conn_count(c, status);
        sg_conn_error(c, status);
    }
    return false;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    struct sg_conn *c = s->data;
    (void)buf;
    if (c->closed)
        return;
    if (nread == 0) {
        release_rbuf_if_empty(c);
        return;
    }
    if (nread < 0) {
        if (nread == UV_EOF && c->state == SG_CONN_PROXY && sg_proxy_request_sent(c)) {
            /* Half-close after a complete request: answer it (and any
             * pipelined ones already read), then close. */
            c->peer_eof = 1;
            sg_conn_read_stop(c);
            return;
        }
        /* EOF or error: a request in flight is abandoned (the backend
         * connection is closed too, see sg_proxy_abort). */
        really_close(c);
        return;
    }
    c->rbuf->end += (uint32_t)nread;
    switch (c->state) {
    case SG_CONN_IDLE:
        sg_conn_set_state(c, SG_CONN_HEAD);
        process_heads(c);
        break;
    case SG_CONN_HEAD:
        process_heads(c);
        break;
    case SG_CONN_PROXY:
    case SG_CONN_TUNNEL:
        sg_proxy_client_data(c);
        break;
    case SG_CONN_CLOSING:
    default:
        c->rbuf->start = c->rbuf->end = 0;
        break;
    }
    if (!c->closed) {
        release_rbuf_if_empty(c);
        /* Backpressure: a full buffer stops reading until it drains. */
        if (c->rbuf && c->rbuf->end == c->rbuf->cap && c->rbuf->start == 0)
            sg_conn_read_stop(c);
    }
}

void sg_conn_sweep(struct sg_worker *w, uint64_t now) {
    /* HEAD and IDLE lists are in deadline order: stop at the first alive. */
    static const enum sg_conn_state ordered[] = {SG_CONN_HEAD, SG_CONN_IDLE};
    for (size_t i = 0; i < 2; i++) {
        struct sg_list *head = &w->conns[ordered[i]];
        while (!sg_list_empty(head)) {
            struct sg_conn *c = sg_container_of(head->next, struct sg_conn, link);
            if (c->deadline > now)
                break;
            if (c->state == SG_CONN_HEAD && c->rbuf && c->rbuf->end > c->rbuf->start) {
                sg_log_info("conn %u.%u: request head not complete after header_timeout", w->index,
                            c->id);
                sg_conn_error(c, 408); /* moves it to CLOSING */
            } else {
                sg_list_remove(&c->link); /* so the loop moves on */
                really_close(c);
            }
        }
    }
    /* WAIT is in arrival order, and so by deadline (queue_timeout per route
     * aside): answered 503 past it */
    struct sg_list *wh = &w->conns[SG_CONN_WAIT];
    for (struct sg_list *it = wh->next, *next; it != wh; it = next) {
        next = it->next;
        struct sg_conn *c = sg_container_of(it, struct sg_conn, link);
        if (c->deadline > now || c->closed)
            continue;
        leave_wait(c);
        sg_log_warn("conn %u.%u: waited queue_timeout for a slot under max_in_flight: 503",
                    w->index, c->id);
        sg_stats_reject(w->stats, c->series, SG_STATS_SHED_IN_FLIGHT);
        sg_conn_count(c, 503);
        sg_conn_error(c, 503);
    }
    /* FILL: past lock_timeout (or the Redis budget), the head goes on */
    struct sg_list *fh = &w->conns[SG_CONN_FILL];
    for (struct sg_list *it = fh->next, *next; it != fh; it = next) {
        next = it->next;
        struct sg_conn *c = sg_container_of(it, struct sg_conn, link);
        if (c->deadline > now || c->closed)
            continue;
        sg_cache_wait_timeout(c);
    }
    static const enum sg_conn_state scanned[] = {SG_CONN_PROXY, SG_CONN_TUNNEL, SG_CONN_CLOSING};
    for (size_t i = 0; i < 3; i++) {
        struct sg_list *head = &w->conns[scanned[i]];
        for (struct sg_list *it = head->next, *next; it != head; it = next) {
            next = it->next;
            struct sg_conn *c = sg_container_of(it, struct sg_conn, link);
            if (c->deadline > now || c->closed)
                continue;
            if (c->state == SG_CONN_CLOSING) {
                sg_list_remove(&c->link);
                really_close(c);
            } else {
                sg_proxy_timeout(c);
            }
        }
    }
}

/* Graceful stop: close keep-alive connections between requests. */
void sg_conn_close_idle(struct sg_worker *w) {
    struct sg_list *head = &w->conns[SG_CONN_IDLE];
    while (!sg_list_empty(head)) {
        struct sg_conn *c = sg_container_of(head->next, struct sg_conn, link);
        sg_list_remove(&c->link);
        really_close(c);
    }
}
