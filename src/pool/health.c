/*
 * Active health checks (health.h). Everything here runs on the main thread's
 * libuv loop; the only thing shared with the workers is the server state
 * record (pool/state.h), written with atomics.
 *
 * A target is one (server id, pool name) pair of a pool with a "health"
 * section: primaries and backups alike. It owns an interval timer and at
 * most one check in flight. A check is a fresh connection (never reused)
 * with its own timeout timer covering connect, request and answer; it
 * passes when a complete response head arrives within the timeout with a
 * status in [status_min, status_max]. Targets copy what they need from the
 * config snapshot, so a snapshot may be freed after a reload while checks
 * go on.
 *
 * Results go to the server's shared record: check_ok / check_fail count
 * passes and failures in a row, and crossing rise / fall flips health. A
 * server listed in several checked pools has one record and one target per
 * pool: all its targets count into the same counters, so with two pools the
 * thresholds are reached about twice as fast, and if the pools check
 * different paths, the results of both interleave (a failure of one resets
 * the other's streak). That is accepted: one address is one server.
 *
 * Ownership: targets live on the `targets` list and are freed in the close
 * callback of their interval timer; a check is freed when both of its
 * handles have closed. A check whose target goes away (reload, stop) is
 * detached (c->t = NULL) and closed without counting. sg_health_apply must
 * be given the same loop every time, and after sg_health_stop that loop
 * must run once more so that the close callbacks free everything.
 *
 * A server that no target checks any more (its pool lost its "health"
 * section or was removed) is released: a DOWN verdict is lifted, since
 * nothing would ever lift it later and unchecked servers count as up.
 */
#include "pool/health.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/list.h"
#include "core/log.h"
#include "http/http.h"
#include "pool/state.h"

#define CHECK_HEAD_MAX    4096 /* a larger response head fails the check */
#define CHECK_MAX_HEADERS 64   /* more header fields fail the check too */
#define FIRST_CHECK_MS    100  /* first checks are spread over this after a target starts */
#define FAST_CHECK_MS     100  /* check interval of a starting instance (fast_check_until) */

/* The check request: method, path, Host. One request per connection. */
#define CHECK_REQ                                                                                  \
    "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: scalegate-health\r\nConnection: close\r\n\r\n"

/* Defaults for zero fields, the same as the config loader's, so that a
 * hand-built config (tests) with only `enabled` set works. */
#define DEF_INTERVAL_MS 2000
#define DEF_TIMEOUT_MS  1000
#define DEF_STATUS_MIN  200
#define DEF_STATUS_MAX  399
#define DEF_RISE        2
#define DEF_FALL        3

struct check;

/* One checked (server, pool) pair. */
struct target {
    struct sg_list link;        /* in targets */
    uv_timer_t tick;            /* fires every interval_ms */
    struct check *check;        /* the check in flight, or NULL */
    struct sg_server_state *st; /* shared record of the server (never freed) */
    uint32_t id;                /* server id (sg_intern of its text) */
    bool seen;                  /* sg_health_apply: still present in the new config */
    uint8_t method_id;          /* enum sg_http_method of the check request */
    uint16_t status_min;        /* a pass is a status within [status_min, status_max] */
    uint16_t status_max;
    uint32_t rise; /* passes in a row: DOWN -> UP */
    uint32_t fall; /* failures in a row: UP -> DOWN */
    uint64_t interval_ms;
    uint64_t timeout_ms;
    char *pool;   /* pool name (owned) */
    char *server; /* server text (owned) */
    struct sockaddr_storage addr;
    char *req; /* the request bytes (owned), rebuilt on each apply */
    size_t req_len;
};

/* One check in flight: a connection, a timeout, the answer so far. */
struct check {
    struct target *t; /* NULL once finished or detached */
    uv_tcp_t tcp;
    uv_timer_t timer; /* timeout: connect + request + response head */
    uv_connect_t creq;
    uv_write_t wreq;
    int nopen;         /* handles not closed yet; freed at 0 */
    bool done;         /* result known (or aborted): handles closing */
    uint8_t method_id; /* for the response parser (HEAD: no body) */
    uint64_t timeout_ms;
    size_t len;        /* bytes in buf */
    size_t head_start; /* start of the head being parsed (after 1xx heads) */
    size_t scanned;    /* parser cursor */
    char buf[CHECK_HEAD_MAX];
    size_t req_len;
    char req[]; /* a copy: the target's may be rebuilt while a write is queued */
};

static struct sg_list targets = {&targets, &targets};
static _Atomic uint64_t transitions;

uint64_t sg_health_transitions(void) {
    return atomic_load(&transitions);
}

/* ---- results ---- */

/* recovered_at 0 means "never recovered" (no slow start). */
static uint64_t now_nonzero(void) {
    uint64_t now = sg_state_now();
    return now ? now : 1;
}

static void record_pass(struct target *t) {
    struct sg_server_state *st = t->st;
    uint32_t ok = atomic_fetch_add(&st->check_ok, 1) + 1;
    atomic_store(&st->check_fail, 0);
    if (ok < t->rise || atomic_load(&st->health) != SG_HEALTH_DOWN)
        return;
    /* Everything a reader needs is set before health flips, so whoever
     * sees UP also sees the fresh recovered_at (slow start). A server that
     * passes its checks is no longer an outlier either: the errors behind
     * an old ejection or streak are from before it went down. */
    atomic_store(&st->recovered_at, now_nonzero());
    atomic_store(&st->ejected_until, 0);
    atomic_store(&st->ejections, 0);
    atomic_store(&st->consec_errors, 0);
    atomic_store(&st->consec_5xx, 0);
    uint8_t down = SG_HEALTH_DOWN;
    if (!atomic_compare_exchange_strong(&st->health, &down, SG_HEALTH_UP))
        return;
    atomic_fetch_add(&transitions, 1);
    bool starting = atomic_load(&st->fast_check_until) > sg_state_now(); /* a new instance */
    sg_log_info("pool %s: server %s is UP%s (%u check%s passed)", t->pool, t->server,
                starting ? "" : " again", ok, ok == 1 ? "" : "s");
}

static void record_fail(struct target *t, const char *why) {
    struct sg_server_state *st = t->st;
    uint32_t fails = atomic_fetch_add(&st->check_fail, 1) + 1;
    atomic_store(&st->check_ok, 0);
    sg_log_debug("pool %s: server %s: check failed: %s", t->pool, t->server, why);
    if (fails < t->fall)
        return;
    uint8_t up = SG_HEALTH_UP;
    if (!atomic_compare_exchange_strong(&st->health, &up, SG_HEALTH_DOWN))
        return;
    atomic_fetch_add(&transitions, 1);
    sg_log_warn("pool %s: server %s is DOWN: %s (%u check%s failed in a row)", t->pool, t->server,
                why, fails, fails == 1 ? "" : "s");
}

/* ---- one check ---- */

static void check_close_cb(uv_handle_t *h) {
    struct check *c = h->data;
    if (--c->nopen == 0)
        free(c);
}

/* Ends c once: detaches it from its target and closes both handles (the
 * connection is never reused). Returns the target, NULL if it was detached
 * (aborted): then nothing is counted. Pending connect and write requests
 * get UV_ECANCELED before the close callbacks, so c is still valid then. */
static struct target *check_end(struct check *c) {
    struct target *t = c->t;
    if (c->done)
        return NULL;
    c->done = true;
    if (t) {
        t->check = NULL;
        c->t = NULL;
    }
    uv_close((uv_handle_t *)&c->tcp, check_close_cb);
    uv_close((uv_handle_t *)&c->timer, check_close_cb);
    return t;
}

static void on_tick(uv_timer_t *h);

/* A server still DOWN inside its fast-check window (an instance the
 * autoscaler just started) is checked again after FAST_CHECK_MS, not a
 * whole interval later: it joins as soon as it answers. */
static void maybe_fast(struct target *t) {
    struct sg_server_state *st = t->st;
    uint64_t until = atomic_load_explicit(&st->fast_check_until, memory_order_relaxed);
    if (until && t->interval_ms > FAST_CHECK_MS &&
        atomic_load_explicit(&st->health, memory_order_relaxed) == SG_HEALTH_DOWN &&
        sg_state_now() < until)
        uv_timer_start(&t->tick, on_tick, FAST_CHECK_MS, t->interval_ms);
}

static void check_pass(struct check *c) {
    struct target *t = check_end(c);
    if (t) {
        record_pass(t);
        maybe_fast(t);
    }
}

static void check_fail(struct check *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void check_fail(struct check *c, const char *fmt, ...) {
    struct target *t = check_end(c);
    if (!t)
        return;
    char why[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    record_fail(t, why);
    maybe_fast(t);
}

static void on_timeout(uv_timer_t *h) {
    struct check *c = h->data;
    if (!c->done)
        check_fail(c, "timeout after %llu ms", (unsigned long long)c->timeout_ms);
}

/* Parses what arrived: a complete final head decides the check. 1xx heads
 * before it (100, 103) are skipped; 101 is final (we asked for no upgrade,
 * so it fails unless expected). */
static void check_parse(struct check *c) {
    struct target *t = c->t;
    struct sg_http_header hdrs[CHECK_MAX_HEADERS];
    struct sg_http_limits lim = {.max_request_line = CHECK_HEAD_MAX,
                                 .max_header_bytes = CHECK_HEAD_MAX};
    struct sg_http_msg msg;
    if (!t)
        return;
    for (;;) {
        memset(&msg, 0, sizeof(msg));
        msg.headers = hdrs;
        msg.max_headers = CHECK_MAX_HEADERS;
        int r = sg_http_parse_response(c->buf + c->head_start, c->len - c->head_start, &c->scanned,
                                       &msg, &lim, (enum sg_http_method)c->method_id);
        if (r == SG_HTTP_PARTIAL) {
            if (c->len == sizeof(c->buf))
                check_fail(c, "response head larger than %d bytes", CHECK_HEAD_MAX);
            return;
        }
        if (r == SG_HTTP_ERROR) {
            check_fail(c, "invalid response: %s", msg.error ? msg.error : "bad head");
            return;
        }
        if (msg.status >= 100 && msg.status < 200 && msg.status != 101) {
            c->head_start += (size_t)r;
            c->scanned = 0;
            continue;
        }
        if (msg.status >= t->status_min && msg.status <= t->status_max)
            check_pass(c);
        else if (t->status_min == t->status_max)
            check_fail(c, "status %u, expected %u", msg.status, t->status_min);
        else
            check_fail(c, "status %u not in %u-%u", msg.status, t->status_min, t->status_max);
        return;
    }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *out) {
    struct check *c = h->data;
    (void)hint;
    /* Never full here: a full buffer without a complete head ends the check. */
    out->base = c->buf + c->len;
    out->len = sizeof(c->buf) - c->len;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    struct check *c = s->data;
    (void)buf;
    if (c->done || nread == 0)
        return;
    if (nread == UV_EOF) {
        check_fail(c, "connection closed before a response head");
        return;
    }
    if (nread < 0) {
        check_fail(c, "read: %s", uv_strerror((int)nread));
        return;
    }
    c->len += (size_t)nread;
    check_parse(c);
}

static void on_write(uv_write_t *req, int status) {
    struct check *c = req->data;
    if (!c->done && status != 0)
        check_fail(c, "write: %s", uv_strerror(status));
}

static void on_connect(uv_connect_t *req, int status) {
    struct check *c = req->data;
    if (c->done)
        return; /* timed out or aborted: UV_ECANCELED */
    if (status != 0) {
        check_fail(c, "connect: %s", uv_strerror(status));
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    int r = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (r != 0) {
        check_fail(c, "read: %s", uv_strerror(r));
        return;
    }
    uv_buf_t b = uv_buf_init(c->req, (unsigned)c->req_len);
    r = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (r != 0)
        check_fail(c, "write: %s", uv_strerror(r));
}

static void check_start(struct target *t) {
    uv_loop_t *loop = t->tick.loop;
    struct check *c = sg_xmalloc(sizeof(*c) + t->req_len);
    memset(c, 0, sizeof(*c));
    memcpy(c->req, t->req, t->req_len);
    c->req_len = t->req_len;
    c->t = t;
    c->method_id = t->method_id;
    c->timeout_ms = t->timeout_ms;
    t->check = c;
    uv_tcp_init(loop, &c->tcp);
    uv_timer_init(loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->creq.data = c;
    c->wreq.data = c;
    c->nopen = 2;
    uv_timer_start(&c->timer, on_timeout, c->timeout_ms, 0);
    int r = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&t->addr, on_connect);
    if (r != 0)
        check_fail(c, "connect: %s", uv_strerror(r));
}

static void on_tick(uv_timer_t *h) {
    struct target *t = h->data;
    if (!t->check) /* one in flight at most: a slow one (timeout > interval) skips ticks */
        check_start(t);
}

/* ---- targets ---- */

static const char *nonempty(const char *s, const char *def) {
    return s && *s ? s : def;
}

/* Copies the check settings of pool p for server s into t (new or kept). */
static void target_configure(struct target *t, const struct sg_pool *p, const struct sg_server *s) {
    const struct sg_health_cfg *h = &p->health;
    const char *method = nonempty(h->method, "GET");
    const char *path = nonempty(h->path, "/health");
    const char *host = nonempty(h->host, s->text);
    int n = snprintf(NULL, 0, CHECK_REQ, method, path, host);
    free(t->req);
    t->req = sg_xmalloc((size_t)n + 1);
    snprintf(t->req, (size_t)n + 1, CHECK_REQ, method, path, host);
    t->req_len = (size_t)n;
    t->method_id = (uint8_t)sg_http_method_id(method, strlen(method));
    t->timeout_ms = h->timeout_ms ? h->timeout_ms : DEF_TIMEOUT_MS;
    t->status_min = h->status_min ? h->status_min : DEF_STATUS_MIN;
    t->status_max = h->status_max ? h->status_max : DEF_STATUS_MAX;
    t->rise = h->rise ? h->rise : DEF_RISE;
    t->fall = h->fall ? h->fall : DEF_FALL;
    memcpy(&t->addr, &s->addr, sizeof(t->addr));
    uint64_t interval = h->interval_ms ? h->interval_ms : DEF_INTERVAL_MS;
    if (interval != t->interval_ms) {
        uint64_t first = interval;
        if (t->interval_ms == 0) {
            /* New target: first check soon, spread so that a pool's
             * servers are not all checked in the same instant. */
            uint64_t span = interval < FIRST_CHECK_MS ? interval : FIRST_CHECK_MS;
            first = 1 + (uint64_t)s->id * 37 % span;
        }
        t->interval_ms = interval;
        uv_timer_start(&t->tick, on_tick, first, interval);
    }
}

/* A new target for s in p, NULL if s has no state record (out of memory:
 * then s is not checked, and stays as it is, UP by default). */
static struct target *target_new(uv_loop_t *loop, const struct sg_pool *p,
                                 const struct sg_server *s) {
    struct sg_server_state *st = sg_server_state(s->id);
    if (!st) {
        sg_log_error("pool %s: server %s: no state record; not checked", p->name, s->text);
        return NULL;
    }
    struct target *t = sg_xcalloc(1, sizeof(*t));
    t->id = s->id;
    t->st = st;
    t->pool = sg_xstrdup(p->name);
    t->server = sg_xstrdup(s->text);
    uv_timer_init(loop, &t->tick);
    t->tick.data = t;
    sg_list_insert_tail(&targets, &t->link);
    return t;
}

static struct target *target_find(uint32_t id, const char *pool) {
    for (struct sg_list *it = targets.next; it != &targets; it = it->next) {
        struct target *t = sg_container_of(it, struct target, link);
        if (t->id == id && strcmp(t->pool, pool) == 0)
            return t;
    }
    return NULL;
}

static void target_close_cb(uv_handle_t *h) {
    struct target *t = h->data;
    free(t->pool);
    free(t->server);
    free(t->req);
    free(t);
}

/* Takes t off the list, aborts its check (nothing counted) and closes its
 * timer; t stays readable until the loop runs its close callback. */
static void target_stop(struct target *t) {
    sg_list_remove(&t->link);
    struct check *c = t->check;
    if (c) {
        t->check = NULL;
        c->t = NULL;
        check_end(c);
    }
    uv_close((uv_handle_t *)&t->tick, target_close_cb);
}

/* t was stopped and no other target checks its server: without active
 * checks a server is considered up, so a DOWN verdict must not outlive
 * them (it would never be lifted). */
static void target_unchecked(const struct target *t) {
    struct sg_server_state *st = t->st;
    atomic_store(&st->check_ok, 0);
    atomic_store(&st->check_fail, 0);
    if (atomic_load(&st->health) != SG_HEALTH_DOWN)
        return;
    atomic_store(&st->recovered_at, now_nonzero());
    uint8_t down = SG_HEALTH_DOWN;
    if (!atomic_compare_exchange_strong(&st->health, &down, SG_HEALTH_UP))
        return;
    atomic_fetch_add(&transitions, 1);
    sg_log_info("pool %s: server %s is no longer checked; considered UP", t->pool, t->server);
}

static bool id_checked(uint32_t id) {
    for (struct sg_list *it = targets.next; it != &targets; it = it->next)
        if (sg_container_of(it, struct target, link)->id == id)
            return true;
    return false;
}

void sg_health_apply(uv_loop_t *loop, const struct sg_config *cfg) {
    for (struct sg_list *it = targets.next; it != &targets; it = it->next)
        sg_container_of(it, struct target, link)->seen = false;
    for (size_t i = 0; cfg && i < cfg->npools; i++) {
        const struct sg_pool *p = &cfg->pools[i];
        if (!p->health.enabled)
            continue;
        for (size_t j = 0; j < p->nservers; j++) {
            const struct sg_server *s = &p->servers[j];
            struct target *t = target_find(s->id, p->name);
            if (!t && !(t = target_new(loop, p, s)))
                continue;
            target_configure(t, p, s);
            t->seen = true;
        }
    }
    /* A server still checked in another pool (or one it moved to) keeps
     * its verdict; one checked nowhere any more is released. */
    for (struct sg_list *it = targets.next, *next; it != &targets; it = next) {
        next = it->next;
        struct target *t = sg_container_of(it, struct target, link);
        if (t->seen)
            continue;
        target_stop(t);
        if (!id_checked(t->id))
            target_unchecked(t);
    }
}

void sg_health_stop(void) {
    while (!sg_list_empty(&targets))
        target_stop(sg_container_of(targets.next, struct target, link));
}
