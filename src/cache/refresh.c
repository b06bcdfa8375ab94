/*
 * Background refresh (refresh.h): one GET to the backend on behalf of the
 * cache, with nobody waiting on the other end.
 *
 * A refresh rebuilds the request from the client's head (minus framing,
 * hop-by-hop and conditional fields, so the backend answers with a full
 * 200 and not a 304 or a range), picks a server of the pool like the proxy
 * does (counted in the server's inflight, outcomes reported to passive
 * health), and opens a fresh connection to it with "Connection: close".
 * The response head is collected in one read buffer (its size caps the
 * head), handed to sg_cache_on_response, and the body bytes go to
 * sg_cache_on_body as they arrive: the buffer is given back whenever it is
 * empty, so a refresh holds at most one buffer, whatever the body's size
 * (the cache bounds what it keeps by max_object_size). A response the
 * cache will not store ends the refresh at its head. The body's end
 * (Content-Length counted down, the chunked framing walked, or the
 * connection's close) calls sg_cache_on_done, which stores the response
 * and finishes the fill. Any failure frees q without storing: the fill
 * fails and its waiters go to the backend themselves.
 *
 * One timer per refresh: connect_timeout until connected, then
 * response_timeout between reads (a backend that stalls mid-body is
 * dropped too).
 *
 * Ownership: a refresh is on its worker's list (a static array indexed by
 * the worker's index, touched only by that worker's thread) from its start
 * until it ends; ending frees q and closes both handles, and the refresh
 * itself is freed when both close callbacks have run. It holds a reference
 * on the config snapshot its pool belongs to until then.
 */
#include "cache/refresh.h"
#include "core/out.h"

#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "cache/cache.h"
#include "core/buf.h"
#include "core/io.h"
#include "core/list.h"
#include "core/log.h"
#include "http/http.h"
#include "pool/pool.h"
#include "pool/state.h"
#include "server/server.h"

#define MAX_WORKERS     256        /* the config's limit on workers (config/schema.c) */
#define REQ_HEAD_MAX    65536      /* a larger client head is not refreshed */
#define RESP_HEAD_MAX   SG_BUF_BIG /* the read buffer: a larger response head fails */
#define LOG_TARGET      200        /* bytes of the target shown in log lines */
#define DEF_CONNECT_MS  5000       /* for a hand-built pool (tests) with zero timeouts */
#define DEF_RESPONSE_MS 60000

/* Where a refresh is. */
enum phase {
    P_CONNECTING = 0, /* connect() in progress: connect_timeout */
    P_HEAD,           /* request sent (or being sent), reading the response head */
    P_BODY,           /* head handed to the cache, reading the body */
    P_ENDED           /* q freed, handles closing; freed when both are closed */
};

struct refresh {
    struct sg_list link; /* in its worker's list while not ENDED */
    struct sg_worker *w;
    struct sg_cache_req *q; /* owned; NULL once ENDED */
    struct sg_config *cfg;  /* a reference: the snapshot pool belongs to */
    const struct sg_pool *pool;
    const struct sg_server *server;
    struct sg_server_state *st; /* counted in st->inflight while non-NULL */
    size_t server_idx;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t creq;
    struct sg_buf *req;        /* the request until handed to the socket (owned) */
    struct sg_buf *rbuf;       /* pending input, only while some is (owned) */
    size_t scanned;            /* response parser cursor */
    uint64_t start_ms;         /* loop time at the start, for the latency histogram */
    uint64_t left;             /* SG_BODY_LENGTH: body bytes still to come */
    uint64_t body_bytes;       /* body bytes received (for the log) */
    struct sg_http_chunked ch; /* SG_BODY_CHUNKED: walks the framing to find the end */
    uint16_t status;
    uint8_t phase;     /* enum phase */
    uint8_t body;      /* enum sg_http_body of the response */
    uint8_t got_bytes; /* any response byte arrived */
    uint8_t nopen;     /* handles not closed yet */
    uint32_t target_len;
    char target[]; /* the request target (cut to LOG_TARGET), for logs */
};

/* Per worker: the refreshes in flight. Only the worker's thread touches
 * its slot; a slot's list head is set up on first use. */
static struct {
    struct sg_list head;
    unsigned n;
} lists[MAX_WORKERS];

static struct sg_list *list_of(struct sg_worker *w) {
    struct sg_list *l = &lists[w->index].head;
    if (l->next == NULL)
        sg_list_init(l);
    return l;
}

unsigned sg_cache_refresh_count(const struct sg_worker *w) {
    return w->index < MAX_WORKERS ? lists[w->index].n : 0;
}

/* ---- the request --------------------------------------------------------- */

/* Fields never copied from the client's head: conditionals and Range
 * (the refresh wants the whole current response, not a 304 or a part). */
static bool conditional(const struct sg_http_header *h) {
    static const struct {
        const char *name;
        size_t len;
    } names[] = {{"if-none-match", 13},       {"if-modified-since", 17}, {"if-match", 8},
                 {"if-unmodified-since", 19}, {"if-range", 8},           {"range", 5}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (sg_http_name_eq(h, names[i].name, names[i].len))
            return true;
    return false;
}

/* The path of m's target and its authority when in absolute form
 * ("http://h/p?q" -> "/p?q", "h"), as the proxy rewrites it. */
static void split_target(const struct sg_http_msg *m, const char **path, size_t *path_len,
                         const char **host, size_t *host_len) {
    *path = m->target;
    *path_len = m->target_len;
    *host = NULL;
    *host_len = 0;
    if (*path_len == 0 || m->target[0] == '/')
        return;
    const char *end = m->target + m->target_len;
    const char *sep = memchr(m->target, ':', m->target_len);
    if (!sep || sep + 3 > end || sep[1] != '/' || sep[2] != '/')
        return;
    const char *h = sep + 3, *p = h;
    while (p < end && *p != '/' && *p != '?')
        p++;
    *host = h;
    *host_len = (size_t)(p - h);
    *path = p;
    *path_len = (size_t)(end - p);
}

/* The request sent for the client's head m (the head's bytes still live):
 * a buffer of its own, or NULL when it does not fit (not expected: it is
 * never longer than the head plus the lines added). */
static struct sg_buf *build_request(const struct sg_http_msg *m, size_t head_len,
                                    const char *fallback_host) {
    size_t cap = head_len + strlen(fallback_host) + 256;
    struct sg_buf *b = sg_buf_get_size(cap);
    struct sg_out o = {b->data, b->data + b->cap};
    const char *path, *host;
    size_t path_len, host_len;
    split_target(m, &path, &path_len, &host, &host_len);
    if (!host && m->host_index >= 0) {
        host = m->headers[m->host_index].value;
        host_len = m->headers[m->host_index].value_len;
    }
    if (!host) {
        host = fallback_host; /* HTTP/1.0 without Host: the pool's name, as the proxy does */
        host_len = strlen(fallback_host);
    }
    SG_OUT_PUTS(&o, "GET ");
    if (path_len == 0 || path[0] == '?') /* "http://h" -> "/", "http://h?q" -> "/?q" */
        SG_OUT_PUTS(&o, "/");
    sg_out_put(&o, path, path_len);
    SG_OUT_PUTS(&o, " HTTP/1.1\r\nHost: ");
    sg_out_put(&o, host, host_len);
    SG_OUT_PUTS(&o, "\r\n");
    for (uint32_t i = 0; i < m->num_headers; i++) {
        const struct sg_http_header *h = &m->headers[i];
        switch (h->id) {
        case SG_HDR_HOST:
        case SG_HDR_CONTENT_LENGTH:
        case SG_HDR_TRANSFER_ENCODING:
        case SG_HDR_CONNECTION:
        case SG_HDR_KEEP_ALIVE:
        case SG_HDR_PROXY_CONNECTION:
        case SG_HDR_TE:
        case SG_HDR_TRAILER:
        case SG_HDR_UPGRADE:
        case SG_HDR_EXPECT:
        /* The proxy never passes these on as the client wrote them (it
         * appends the peer, it sets the scheme): without the client's
         * address at hand, the refresh sends neither list. */
        case SG_HDR_X_FORWARDED_FOR:
        case SG_HDR_X_FORWARDED_PROTO:
            continue;
        default:
            break;
        }
        if (h->hop || conditional(h))
            continue;
        sg_out_put(&o, h->name, h->name_len);
        SG_OUT_PUTS(&o, ": ");
        sg_out_put(&o, h->value, h->value_len);
        SG_OUT_PUTS(&o, "\r\n");
    }
    SG_OUT_PUTS(&o, "X-Forwarded-Proto: http\r\nVia: 1.1 scalegate\r\nX-Cache-Refresh: 1\r\n"
                    "Connection: close\r\n\r\n");
    if (sg_out_overflowed(&o)) {
        sg_buf_put(b);
        return NULL;
    }
    b->end = (uint32_t)(o.p - b->data);
    return b;
}

/* ---- the end ------------------------------------------------------------- */

static void closed(uv_handle_t *h) {
    struct refresh *f = h->data;
    if (--f->nopen > 0)
        return;
    struct sg_worker *w = f->w;
    sg_config_unref(f->cfg);
    free(f);
    sg_worker_maybe_finish(w); /* a draining worker may be waiting for nothing but us */
}

static void uncount(struct refresh *f) {
    if (f->st) {
        atomic_fetch_sub_explicit(&f->st->inflight, 1, memory_order_relaxed);
        f->st = NULL;
    }
}

/* Ends f once: frees q (an unfinished fill fails), gives back the
 * buffers and closes both handles. Pending connect and write requests get
 * UV_ECANCELED before the close callbacks, so f is still valid for them. */
static void end(struct refresh *f) {
    if (f->phase == P_ENDED)
        return;
    f->phase = P_ENDED;
    sg_list_remove(&f->link);
    lists[f->w->index].n--;
    uncount(f);
    sg_cache_req_free(f->q);
    f->q = NULL;
    sg_buf_put(f->req);
    f->req = NULL;
    sg_buf_put(f->rbuf);
    f->rbuf = NULL;
    uv_close((uv_handle_t *)&f->tcp, closed);
    uv_close((uv_handle_t *)&f->timer, closed);
}

static void fail(struct refresh *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Logs why f gave up, and ends it without storing anything. */
static void fail(struct refresh *f, const char *fmt, ...) {
    if (f->phase == P_ENDED)
        return;
    if (SG_LOG_WARN <= sg_log_level) {
        char why[200];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, sizeof(why), fmt, ap);
        va_end(ap);
        sg_log_write(SG_LOG_WARN, "cache: refresh of %.*s from %s: %s", (int)f->target_len,
                     f->target, f->server->text, why);
    }
    end(f);
}

/* The whole response arrived: the cache stores it (if it may). */
static void complete(struct refresh *f) {
    sg_cache_on_done(f->q, f->w);
    sg_log_debug("cache: refresh of %.*s from %s: %u, %llu body bytes", (int)f->target_len,
                 f->target, f->server->text, f->status, (unsigned long long)f->body_bytes);
    end(f);
}

static uint64_t timeout_or(uint64_t ms, uint64_t def) {
    return ms ? ms : def;
}

static void on_timer(uv_timer_t *h) {
    struct refresh *f = h->data;
    uint64_t ms;
    switch (f->phase) {
    case P_CONNECTING:
        ms = timeout_or(f->pool->connect_timeout_ms, DEF_CONNECT_MS);
        sg_pool_report(f->pool, f->server_idx, SG_OUTCOME_ERROR);
        fail(f, "connect timed out after %llu ms", (unsigned long long)ms);
        break;
    case P_HEAD:
        ms = timeout_or(f->pool->response_timeout_ms, DEF_RESPONSE_MS);
        sg_pool_report(f->pool, f->server_idx, SG_OUTCOME_ERROR);
        fail(f, "no response within %llu ms", (unsigned long long)ms);
        break;
    case P_BODY:
        ms = timeout_or(f->pool->response_timeout_ms, DEF_RESPONSE_MS);
        fail(f, "response stalled for %llu ms", (unsigned long long)ms);
        break;
    default:
        break;
    }
}

/* ---- the response ------------------------------------------------------- */

/* Whether the body (payload bytes so far, or announced) is past the
 * cache's max_object_size, so that it cannot be stored: reading the rest
 * would be for nothing: then f ends (the fill fails, as it would anyway). */
static bool too_large(struct refresh *f, uint64_t bytes) {
    uint64_t max = f->cfg->cache.max_object_size;
    if (max == 0 || bytes <= max)
        return false;
    sg_log_debug("cache: refresh of %.*s from %s: body larger than max_object_size (%llu): "
                 "not stored",
                 (int)f->target_len, f->target, f->server->text, (unsigned long long)max);
    end(f);
    return true;
}

/* Hands body bytes p[0..n) to the cache; ends f when the body is complete.
 * Bytes past the body's end (a backend that sends more) are dropped. */
static void feed(struct refresh *f, const char *p, size_t n) {
    switch (f->body) {
    case SG_BODY_LENGTH:
        if (n > f->left)
            n = (size_t)f->left;
        f->left -= n;
        f->body_bytes += n;
        sg_cache_on_body(f->q, p, n, false);
        if (f->left == 0)
            complete(f);
        return;
    case SG_BODY_CHUNKED: {
        ssize_t r = sg_http_chunked_scan(&f->ch, p, n);
        if (r < 0) {
            fail(f, "invalid chunked body: %s", f->ch.error ? f->ch.error : "?");
            return;
        }
        f->body_bytes += (size_t)r;
        sg_cache_on_body(f->q, p, (size_t)r, true);
        if (f->ch.done)
            complete(f);
        else
            too_large(f, f->ch.total);
        return;
    }
    case SG_BODY_EOF:
        f->body_bytes += n;
        sg_cache_on_body(f->q, p, n, false);
        too_large(f, f->body_bytes);
        return;
    default: /* SG_BODY_NONE: complete at its head */
        return;
    }
}

/* Parses the response head at the front of rbuf. Returns true when the
 * final head was handed to the cache (and consumed from rbuf), false when
 * more bytes are needed or f ended. Interim 1xx heads are skipped. */
static bool parse_head(struct refresh *f) {
    struct sg_buf *b = f->rbuf;
    struct sg_http_header hdrs[SG_MAX_HEADERS];
    struct sg_http_limits lim = {.max_request_line = RESP_HEAD_MAX,
                                 .max_header_bytes = RESP_HEAD_MAX};
    struct sg_http_msg msg;
    for (;;) {
        memset(&msg, 0, sizeof(msg));
        msg.headers = hdrs;
        msg.max_headers = SG_MAX_HEADERS;
        int r = sg_http_parse_response(b->data + b->start, b->end - b->start, &f->scanned, &msg,
                                       &lim, SG_METHOD_GET);
        if (r == SG_HTTP_PARTIAL) {
            if (b->start == 0 && b->end == b->cap)
                fail(f, "response head larger than %u bytes", (unsigned)b->cap);
            return false;
        }
        if (r == SG_HTTP_ERROR) {
            fail(f, "invalid response: %s", msg.error ? msg.error : "?");
            return false;
        }
        if (msg.status == 101) {
            fail(f, "101 without an upgrade request");
            return false;
        }
        b->start += (uint32_t)r;
        f->scanned = 0;
        if (msg.status >= 200)
            break;
        if (b->start == b->end) /* an interim 1xx, and nothing after it yet */
            return false;
    }
    sg_pool_report(f->pool, f->server_idx, msg.status >= 500 ? SG_OUTCOME_5XX : SG_OUTCOME_OK);
    if (f->st)
        sg_server_observe(f->st, uv_now(&f->w->loop) - f->start_ms);
    f->status = msg.status;
    f->body = msg.body;
    f->left = msg.content_length;
    if (msg.body == SG_BODY_CHUNKED)
        sg_http_chunked_init(&f->ch, 0, 65536);
    f->phase = P_BODY;
    /* Its answer, "serve the stale copy instead", means nothing here: the
     * client already has it. The head's bytes stay put during the call. */
    (void)sg_cache_on_response(f->q, f->w, &msg);
    if (msg.body == SG_BODY_NONE || (msg.body == SG_BODY_LENGTH && msg.content_length == 0)) {
        complete(f);
        return false;
    }
    if (!sg_cache_req_storing(f->q)) { /* nobody reads the body: do not fetch it */
        sg_log_debug("cache: refresh of %.*s from %s: %u, not storable", (int)f->target_len,
                     f->target, f->server->text, f->status);
        end(f);
        return false;
    }
    return !(msg.body == SG_BODY_LENGTH && too_large(f, msg.content_length));
}

static void on_data(struct refresh *f) {
    if (f->phase == P_HEAD && !parse_head(f))
        return;
    struct sg_buf *b = f->rbuf;
    if (f->phase != P_BODY || b == NULL)
        return;
    feed(f, b->data + b->start, b->end - b->start);
    if (f->phase == P_ENDED)
        return;
    /* Everything was handed on: no buffer is held between reads. */
    sg_buf_put(f->rbuf);
    f->rbuf = NULL;
}

static void on_eof(struct refresh *f, int err) {
    if (f->phase == P_BODY && f->body == SG_BODY_EOF && err == UV_EOF) {
        complete(f);
        return;
    }
    if (f->phase == P_BODY) {
        fail(f, "response cut short (%s)", uv_strerror(err));
        return;
    }
    if (!f->got_bytes)
        sg_pool_report(f->pool, f->server_idx, SG_OUTCOME_ERROR);
    fail(f, "closed before a complete response (%s)", uv_strerror(err));
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *out) {
    struct refresh *f = h->data;
    (void)hint;
    if (!f->rbuf)
        f->rbuf = sg_buf_get_size(SG_BUF_BIG);
    struct sg_buf *b = f->rbuf;
    if (b->end == b->cap && b->start > 0)
        sg_buf_compact(b);
    /* Never full here: a full buffer without a complete head ends f. */
    out->base = b->data + b->end;
    out->len = b->cap - b->end;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    struct refresh *f = s->data;
    (void)buf;
    if (f->phase == P_ENDED)
        return;
    if (nread == 0) {
        if (f->rbuf && f->rbuf->start == f->rbuf->end) {
            sg_buf_put(f->rbuf);
            f->rbuf = NULL;
        }
        return;
    }
    if (nread < 0) {
        on_eof(f, (int)nread);
        return;
    }
    f->rbuf->end += (uint32_t)nread;
    f->got_bytes = 1;
    uv_timer_start(&f->timer, on_timer, timeout_or(f->pool->response_timeout_ms, DEF_RESPONSE_MS),
                   0);
    on_data(f);
}

static void on_written(void *arg, int status) {
    struct refresh *f = arg;
    if (status < 0 && f->phase != P_ENDED && f->phase != P_BODY)
        fail(f, "write: %s", uv_strerror(status));
}

static void on_connect(uv_connect_t *req, int status) {
    struct refresh *f = req->data;
    if (f->phase == P_ENDED)
        return; /* timed out or stopped: UV_ECANCELED */
    if (status != 0) {
        sg_pool_report(f->pool, f->server_idx, SG_OUTCOME_ERROR);
        fail(f, "connect: %s", uv_strerror(status));
        return;
    }
    f->phase = P_HEAD;
    uv_tcp_nodelay(&f->tcp, 1);
    uv_timer_start(&f->timer, on_timer, timeout_or(f->pool->response_timeout_ms, DEF_RESPONSE_MS),
                   0);
    int r = uv_read_start((uv_stream_t *)&f->tcp, on_alloc, on_read);
    if (r != 0) {
        fail(f, "read: %s", uv_strerror(r));
        return;
    }
    uv_buf_t b = uv_buf_init(f->req->data + f->req->start, sg_buf_len(f->req));
    r = sg_io_write((uv_stream_t *)&f->tcp, &b, 1, f->req, NULL, on_written, f);
    if (r < 0) {
        fail(f, "write: %s", uv_strerror(r));
        return;
    }
    if (r == 0)
        sg_buf_put(f->req); /* written at once: still ours */
    f->req = NULL;          /* else the queued write owns it */
}

/* ---- start and stop ------------------------------------------------------- */

void sg_cache_refresh_start(struct sg_worker *w, const struct sg_pool *pool,
                            struct sg_cache_req *q) {
    if (q == NULL)
        return;
    if (w->index >= MAX_WORKERS || w->draining || pool == NULL || pool->nservers == 0) {
        sg_cache_req_free(q);
        return;
    }
    size_t hl = 0;
    const char *head = sg_cache_req_head(q, &hl);
    if (head == NULL || hl == 0 || hl > REQ_HEAD_MAX) {
        sg_cache_req_free(q);
        return;
    }
    struct sg_http_header hdrs[SG_MAX_HEADERS];
    struct sg_http_msg m;
    memset(&m, 0, sizeof(m));
    m.headers = hdrs;
    m.max_headers = SG_MAX_HEADERS;
    size_t scanned = 0;
    struct sg_http_limits lim = {.max_request_line = (uint32_t)hl,
                                 .max_header_bytes = (uint32_t)hl};
    if (sg_http_parse_request(head, hl, &scanned, &m, &lim) <= 0) {
        sg_log_debug("cache: refresh: the request head does not parse");
        sg_cache_req_free(q);
        return;
    }
    size_t tlen = m.target_len < LOG_TARGET ? m.target_len : LOG_TARGET;
    struct sg_buf *req = build_request(&m, hl, pool->name);
    if (req == NULL) {
        sg_log_warn("cache: refresh of %.*s: request too large", (int)tlen, m.target);
        sg_cache_req_free(q);
        return;
    }
    /* Hash pools: the request's key is not looked at here; the pool's
     * hash_fallback picks. */
    struct sg_pick_key key = {.has_key = false, .key_hash = 0};
    sg_pool_count_request(pool);
    int i = sg_pool_pick(pool, &key, 0, sg_worker_random(w));
    if (i < 0) {
        sg_log_warn("cache: refresh of %.*s: pool %s: no server available", (int)tlen, m.target,
                    pool->name);
        sg_buf_put(req);
        sg_cache_req_free(q);
        return;
    }

    struct refresh *f = sg_xcalloc(1, sizeof(*f) + tlen);
    memcpy(f->target, m.target, tlen);
    f->target_len = (uint32_t)tlen;
    f->w = w;
    f->q = q;
    f->cfg = sg_config_ref(w->cfg);
    f->pool = pool;
    f->server_idx = (size_t)i;
    f->server = &pool->servers[i];
    f->req = req;
    f->phase = P_CONNECTING;
    f->start_ms = uv_now(&w->loop);
    f->st = sg_server_state(f->server->id);
    if (f->st)
        atomic_fetch_add_explicit(&f->st->inflight, 1, memory_order_relaxed);
    uv_tcp_init(&w->loop, &f->tcp);
    uv_timer_init(&w->loop, &f->timer);
    f->tcp.data = f;
    f->timer.data = f;
    f->creq.data = f;
    f->nopen = 2;
    sg_list_insert_tail(list_of(w), &f->link);
    lists[w->index].n++;
    sg_log_debug("cache: refresh of %.*s from %s: started", (int)f->target_len, f->target,
                 f->server->text);
    uv_timer_start(&f->timer, on_timer, timeout_or(pool->connect_timeout_ms, DEF_CONNECT_MS), 0);
    int r =
        uv_tcp_connect(&f->creq, &f->tcp, (const struct sockaddr *)&f->server->addr, on_connect);
    if (r != 0) {
        sg_pool_report(pool, f->server_idx, SG_OUTCOME_ERROR);
        fail(f, "connect: %s", uv_strerror(r));
    }
}

void sg_cache_refresh_stop_all(struct sg_worker *w) {
    if (w->index >= MAX_WORKERS)
        return;
    struct sg_list *l = list_of(w);
    while (!sg_list_empty(l)) {
        struct refresh *f = sg_container_of(l->next, struct refresh, link);
        sg_log_debug("cache: refresh of %.*s from %s: stopped", (int)f->target_len, f->target,
                     f->server->text);
        end(f);
    }
}
