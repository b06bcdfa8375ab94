/*
 * The shared Redis link and leader leases (see redis.h for the contract).
 *
 * The link is a small state machine (enum link_state, changed only by
 * set_state) around one hiredis async context at a time. hiredis is driven
 * through our own libuv glue (struct link_io) rather than the adapter in
 * <hiredis/adapters/libuv.h>: the 0.14 adapter drops the error status libuv
 * reports for a socket error (a refused connect, a reset), after libuv has
 * already stopped the poll handle, so the context would hang until a
 * timeout. Ours hands such a wakeup to hiredis, which then finds the error.
 *
 * Ownership. A command is a struct req, malloc'ed when issued. Once hiredis
 * has accepted it, hiredis holds it as privdata and calls on_reply exactly
 * once, with a reply or, when the context goes away, with NULL; the req sits
 * on r->inflight meanwhile. on_reply moves it to r->done and a zero timer
 * (r->defer) runs the caller's callback and frees it. So callers' code never
 * runs inside hiredis: a callback may issue commands or free anything. A req
 * nobody waits for (fire and forget, or cancelled by sg_redis_free) is freed
 * by on_reply directly. hiredis runs callbacks synchronously inside
 * redisAsyncFree, and hiredis frees a context itself after a failed connect
 * or a lost connection (we learn it in on_connected / on_disconnected), so
 * r->ac is cleared before any call that may free the context.
 * The glue, name resolution, the connect and the backoff are shared with
 * the subscriber (redis_int.h, "connecting" below).
 *
 * r itself is freed in the close callback of the last of its handles (three
 * timers, plus the poll handle of each context being torn down), once the
 * context is gone. A uv_getaddrinfo request in flight is abandoned on free:
 * it frees itself when it completes.
 *
 * A lease is a pair of timers (the attempt tick, the validity end) and at
 * most one attempt in flight; it is freed when both timers have closed and
 * the attempt's callback has run (lease->refs).
 *
 * Scripts. r keeps a copy of each EVAL body it has seen (up to
 * SG_REDIS_MAX_SCRIPTS, with its SHA-1). The first EVAL of a body on a connection goes
 * out as it is, which also puts the script in Redis' cache; later ones go
 * out as EVALSHA with its SHA-1, saving the body's bytes on the wire and
 * Redis hashing them for every call. Commands on one connection are run in
 * order, so an EVALSHA always follows its EVAL; a new connection (perhaps
 * to a restarted Redis) starts over. Should the cache be emptied under us
 * (SCRIPT FLUSH), the command that meets the NOSCRIPT error fails like any
 * Redis error and the next ones send their bodies again.
 */
#include "redis/redis.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <hiredis/async.h>

#include "core/list.h"
#include "core/log.h"
#include "core/sha1.h"
#include "redis/redis_int.h"

enum link_state {
    LINK_IDLE = 0,   /* no connection; r->timer is the retry (backoff) */
    LINK_RESOLVING,  /* uv_getaddrinfo in flight; r->timer is the connect timeout */
    LINK_CONNECTING, /* r->ac set, TCP connect in flight; r->timer is the connect timeout */
    LINK_CONNECTED,  /* r->ac connected: commands are sent; r->cmd_timer watches replies */
    LINK_CLOSING,    /* sg_redis_free was called; r->timer bounds a graceful close */
    LINK_STATE_COUNT
};

static const char *const link_state_names[LINK_STATE_COUNT] = {
    [LINK_IDLE] = "idle",
    [LINK_RESOLVING] = "resolving",
    [LINK_CONNECTING] = "connecting",
    [LINK_CONNECTED] = "connected",
    [LINK_CLOSING] = "closing",
};

#define LINK_BIT(s) (1u << (s))
static const unsigned link_next[LINK_STATE_COUNT] = {
    [LINK_IDLE] = LINK_BIT(LINK_IDLE) | LINK_BIT(LINK_RESOLVING) | LINK_BIT(LINK_CONNECTING) |
                  LINK_BIT(LINK_CLOSING),
    [LINK_RESOLVING] = LINK_BIT(LINK_IDLE) | LINK_BIT(LINK_CONNECTING) | LINK_BIT(LINK_CLOSING),
    [LINK_CONNECTING] = LINK_BIT(LINK_IDLE) | LINK_BIT(LINK_CONNECTED) | LINK_BIT(LINK_CLOSING),
    [LINK_CONNECTED] = LINK_BIT(LINK_IDLE) | LINK_BIT(LINK_CLOSING),
    [LINK_CLOSING] = 0,
};

struct sg_redis {
    uv_loop_t *loop;
    char *host; /* as given: a name or an address literal */
    uint16_t port;
    char *prefix;
    char name[280]; /* "host:port" or "[v6]:port", for logs */
    char node_id[SG_REDIS_NODE_ID_MAX];
    enum link_state state;
    struct sg__redis_resolve *resolve; /* the resolution in flight, if any */
    redisAsyncContext *ac;   /* NULL unless CONNECTING, CONNECTED, or closing gracefully */
    uv_timer_t timer;        /* retry, connect timeout or close deadline (see the states) */
    uv_timer_t cmd_timer;    /* the oldest in-flight command's deadline */
    uv_timer_t defer;        /* zero timer: runs the callbacks on done */
    struct sg_list inflight; /* struct req held by hiredis, oldest first */
    struct sg_list done;     /* struct req whose callback is due */
    unsigned ninflight;
    unsigned nleases;    /* live leases on this link */
    uint64_t backoff_ms; /* the delay before the next retry */
    int drop_err;        /* set while we drop the context: the error of its replies */
    bool down;           /* a failure was logged; the recovery will be too */
    bool handles_closing;
    unsigned pending_closes; /* handles whose close callback has not run */
    struct script {
        char *body; /* a copy, owned by r */
        size_t len;
        char sha[SG_SHA1_HEX_LEN + 1];
        bool sent; /* this connection has sent the body (EVAL) */
    } scripts[SG_REDIS_MAX_SCRIPTS];
    unsigned nscripts;
};

struct req {
    struct sg_list link; /* on r->inflight, then r->done */
    struct sg_redis *r;
    sg_redis_reply_cb cb;                            /* or: */
    void (*int_cb)(void *arg, long long v, int err); /* for an integer reply (LLEN) */
    void *arg;
    uint64_t deadline; /* uv_now() ms */
    int err;
    bool has_reply;
    struct sg_redis_reply reply; /* reply.str points at str */
    char *str;
};

/* The libuv side of one hiredis context. Freed in the poll handle's close
 * callback, which hiredis's cleanup hook starts. */
struct link_io {
    uv_poll_t poll;
    redisAsyncContext *ac; /* NULL once hiredis has cleaned up */
    void *owner;           /* the struct sg_redis (or sg_redis_sub) */
    void (*closing)(void *owner);
    void (*closed)(void *owner);
    int events;
};

static void link_down(struct sg_redis *r, const char *why);
static bool scripts_forget(struct sg_redis *r);
static void start_connect(struct sg_redis *r);
static void maybe_finish(struct sg_redis *r);

static uint64_t mono_ms(void) {
    return uv_hrtime() / 1000000u;
}

static void set_state(struct sg_redis *r, enum link_state s) {
    if (!(link_next[r->state] & LINK_BIT(s)))
        sg_log_error("redis %s: bad state change %s -> %s", r->name, link_state_names[r->state],
                     link_state_names[s]);
    sg_log_debug("redis %s: %s -> %s", r->name, link_state_names[r->state], link_state_names[s]);
    r->state = s;
}

/* ---- libuv glue for hiredis ---- */

static void io_poll(uv_poll_t *h, int status, int events) {
    struct link_io *io = h->data;
    /* On a socket error libuv passes a status, no events, and stops the
     * handle: let hiredis do what it waited for and meet the error. */
    int ev = status < 0 ? io->events : events;
    if (io->ac && (ev & UV_READABLE))
        redisAsyncHandleRead(io->ac);
    if (io->ac && (ev & UV_WRITABLE))
        redisAsyncHandleWrite(io->ac);
}

static void io_update(struct link_io *io, int add, int del) {
    io->events = (io->events | add) & ~del;
    if (io->events)
        uv_poll_start(&io->poll, io->events, io_poll);
    else
        uv_poll_stop(&io->poll);
}

static void io_add_read(void *p) {
    io_update(p, UV_READABLE, 0);
}

static void io_del_read(void *p) {
    io_update(p, 0, UV_READABLE);
}

static void io_add_write(void *p) {
    io_update(p, UV_WRITABLE, 0);
}

static void io_del_write(void *p) {
    io_update(p, 0, UV_WRITABLE);
}

static void close_done(struct sg_redis *r) {
    if (--r->pending_closes == 0 && r->handles_closing) {
        for (unsigned i = 0; i < r->nscripts; i++)
            free(r->scripts[i].body);
        free(r->host);
        free(r->prefix);
        free(r);
    }
}

static void io_closed(uv_handle_t *h) {
    struct link_io *io = h->data;
    void *owner = io->owner;
    void (*closed)(void *) = io->closed;
    free(io);
    if (closed)
        closed(owner);
}

/* hiredis is freeing the context (it closes the socket right after). */
static void io_cleanup(void *p) {
    struct link_io *io = p;
    io->ac = NULL;
    if (io->closing)
        io->closing(io->owner);
    uv_close((uv_handle_t *)&io->poll, io_closed);
}

/* Hooks ac's socket into loop (the hooks' closing and closed: see
 * redis_int.h). Returns 0, or a negative errno with nothing hooked (the
 * caller frees ac). */
static int io_attach(uv_loop_t *loop, redisAsyncContext *ac, void *owner,
                     void (*closing)(void *owner), void (*closed)(void *owner)) {
    struct link_io *io = calloc(1, sizeof(*io));
    if (!io)
        return -ENOMEM;
    int rc = uv_poll_init(loop, &io->poll, ac->c.fd);
    if (rc != 0) { /* nothing was registered with the loop */
        free(io);
        return rc;
    }
    io->poll.data = io;
    io->ac = ac;
    io->owner = owner;
    io->closing = closing;
    io->closed = closed;
    ac->ev.data = io;
    ac->ev.addRead = io_add_read;
    ac->ev.delRead = io_del_read;
    ac->ev.addWrite = io_add_write;
    ac->ev.delWrite = io_del_write;
    ac->ev.cleanup = io_cleanup;
    return 0;
}

/* The link's side of its glue: a poll handle closing holds r. */
static void link_io_closing(void *p) {
    struct sg_redis *r = p;
    r->pending_closes++;
}

static void link_io_closed(void *p) {
    close_done(p);
}

/* ---- connecting (shared with the subscriber, see redis_int.h) ---- */

void sg__redis_name(char *out, size_t outlen, const char *host, uint16_t port) {
    snprintf(out, outlen, strchr(host, ':') ? "[%s]:%u" : "%s:%u", host, (unsigned)port);
}

/* One uv_getaddrinfo. Freed by its callback; owner is NULL once abandoned
 * (timeout, free). */
struct sg__redis_resolve {
    uv_getaddrinfo_t req;
    void *owner;
    struct sg__redis_resolve **slot; /* the owner's pointer to this */
    sg__redis_resolved_cb done;
    const char *host; /* the owner's, for the message */
};

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
    struct sg__redis_resolve *rs = req->data;
    void *owner = rs->owner;
    sg__redis_resolved_cb done = rs->done;
    const char *host = rs->host;
    if (owner)
        *rs->slot = NULL;
    free(rs);
    if (!owner) { /* abandoned */
        uv_freeaddrinfo(res);
        return;
    }
    /* IPv4 first, as hiredis itself does with a name: "localhost" often
     * lists ::1 first while Redis listens on 127.0.0.1 only */
    char addr[INET6_ADDRSTRLEN] = "";
    for (int pass = 0; pass < 2 && !addr[0]; pass++) {
        for (struct addrinfo *ai = status == 0 ? res : NULL; ai && !addr[0]; ai = ai->ai_next) {
            if (pass == 0 && ai->ai_family == AF_INET)
                uv_ip4_name((const struct sockaddr_in *)ai->ai_addr, addr, sizeof(addr));
            else if (pass == 1 && ai->ai_family == AF_INET6)
                uv_ip6_name((const struct sockaddr_in6 *)ai->ai_addr, addr, sizeof(addr));
        }
    }
    uv_freeaddrinfo(res);
    if (!addr[0]) {
        char why[128];
        snprintf(why, sizeof(why), "cannot resolve %s: %s", host,
                 status ? uv_strerror(status) : "no address");
        done(owner, NULL, why);
        return;
    }
    done(owner, addr, NULL);
}

bool sg__redis_resolve(uv_loop_t *loop, const char *host, void *owner, sg__redis_resolved_cb done,
                       struct sg__redis_resolve **slot) {
    unsigned char buf[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1) {
        done(owner, host, NULL);
        return false;
    }
    struct sg__redis_resolve *rs = calloc(1, sizeof(*rs));
    if (!rs) {
        done(owner, NULL, "out of memory");
        return false;
    }
    rs->owner = owner;
    rs->slot = slot;
    rs->done = done;
    rs->host = host;
    rs->req.data = rs;
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = uv_getaddrinfo(loop, &rs->req, on_resolved, host, NULL, &hints);
    if (rc != 0) {
        free(rs);
        char why[128];
        snprintf(why, sizeof(why), "cannot resolve %s: %s", host, uv_strerror(rc));
        done(owner, NULL, why);
        return false;
    }
    *slot = rs;
    return true;
}

void sg__redis_resolve_abandon(struct sg__redis_resolve **slot) {
    if (!*slot)
        return;
    (*slot)->owner = NULL;
    uv_cancel((uv_req_t *)&(*slot)->req);
    *slot = NULL;
}

redisAsyncContext *sg__redis_connect(uv_loop_t *loop, const char *addr, uint16_t port, void *owner,
                                     const struct sg__redis_hooks *hooks, char *why,
                                     size_t whylen) {
    redisAsyncContext *ac = redisAsyncConnect(addr, port);
    if (!ac) {
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    if (ac->err) {
        snprintf(why, whylen, "%s", ac->errstr);
        redisAsyncFree(ac);
        return NULL;
    }
    int rc = io_attach(loop, ac, owner, hooks->closing, hooks->closed);
    if (rc != 0) {
        snprintf(why, whylen, "cannot poll the socket: %s", uv_strerror(rc));
        redisAsyncFree(ac);
        return NULL;
    }
    ac->data = owner;
    redisAsyncSetDisconnectCallback(ac, hooks->disconnected);
    redisAsyncSetConnectCallback(ac, hooks->connected); /* also waits for writable */
    return ac;
}

void sg__redis_why(char *why, size_t whylen, const redisAsyncContext *ac, int status,
                   const char *dflt) {
    snprintf(why, whylen, "%s", status == REDIS_OK || !ac->errstr[0] ? dflt : ac->errstr);
}

void sg__redis_retry_later(uv_timer_t *timer, uv_timer_cb retry, uint64_t *backoff_ms) {
    uv_timer_start(timer, retry, *backoff_ms, 0);
    *backoff_ms *= 2;
    if (*backoff_ms > SG_REDIS_BACKOFF_MAX)
        *backoff_ms = SG_REDIS_BACKOFF_MAX;
}

/* ---- completions ---- */

static void on_defer(uv_timer_t *t);

/* Queues q's callback for the next loop turn, or frees q if nobody waits. */
static void complete(struct sg_redis *r, struct req *q) {
    if (!q->cb && !q->int_cb) {
        free(q->str);
        free(q);
        return;
    }
    sg_list_insert_tail(&r->done, &q->link);
    uv_timer_start(&r->defer, on_defer, 0, 0);
}

static void deliver(struct req *q) {
    const struct sg_redis_reply *rep = q->has_reply ? &q->reply : NULL;
    if (q->int_cb) {
        long long v = 0;
        int err = q->err;
        if (!err && rep->type == SG_REDIS_REPLY_INTEGER)
            v = rep->integer;
        else if (!err)
            err = -EPROTO;
        q->int_cb(q->arg, v, err);
    } else if (q->cb) {
        q->cb(q->arg, rep, q->err);
    }
    free(q->str);
    free(q);
}

/* Runs every due callback. One may free r: r's memory lasts until its
 * handles have closed, on a later loop turn, and sg_redis_free empties done
 * itself, so this loop then ends. */
static void run_done(struct sg_redis *r) {
    while (!sg_list_empty(&r->done)) {
        struct req *q = sg_container_of(r->done.next, struct req, link);
        sg_list_remove(&q->link);
        deliver(q);
    }
}

static void on_defer(uv_timer_t *t) {
    run_done(t->data);
}

/* Copies what the caller may read of a hiredis reply, which hiredis frees
 * when on_reply returns. */
static void keep_reply(struct req *q, const redisReply *rep) {
    struct sg_redis_reply *out = &q->reply;
    q->has_reply = true;
    switch (rep->type) {
    case REDIS_REPLY_NIL:
        out->type = SG_REDIS_REPLY_NIL;
        return;
    case REDIS_REPLY_INTEGER:
        out->type = SG_REDIS_REPLY_INTEGER;
        out->integer = rep->integer;
        return;
    case REDIS_REPLY_ARRAY:
        out->type = SG_REDIS_REPLY_ARRAY;
        out->integer = (long long)rep->elements;
        return;
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        out->type = rep->type == REDIS_REPLY_STRING   ? SG_REDIS_REPLY_STRING
                    : rep->type == REDIS_REPLY_STATUS ? SG_REDIS_REPLY_STATUS
                                                      : SG_REDIS_REPLY_ERROR;
        q->str = malloc(rep->len + 1);
        if (!q->str) {
            q->has_reply = false;
            q->err = -ENOMEM;
            return;
        }
        memcpy(q->str, rep->str, rep->len);
        q->str[rep->len] = '\0';
        out->str = q->str;
        out->len = rep->len;
        if (out->type == SG_REDIS_REPLY_ERROR)
            q->err = -EREMOTEIO;
        return;
    default:
        q->has_reply = false;
        q->err = -EPROTO;
        return;
    }
}

/* hiredis: a reply, or NULL when the context is going away. */
static void on_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    (void)ac;
    struct req *q = privdata;
    struct sg_redis *r = q->r;
    sg_list_remove(&q->link);
    r->ninflight--;
    if (sg_list_empty(&r->inflight))
        uv_timer_stop(&r->cmd_timer);
    if (reply)
        keep_reply(q, reply);
    else
        q->err = r->drop_err ? r->drop_err : -ECONNRESET;
    if (q->err == -EREMOTEIO && q->reply.str && strncmp(q->reply.str, "NOSCRIPT", 8) == 0 &&
        scripts_forget(r))
        sg_log_warn("redis %s: its script cache was emptied; sending the scripts again", r->name);
    complete(r, q);
}

/* ---- connection ---- */

static void on_retry(uv_timer_t *t) {
    start_connect(t->data);
}

/* The connection failed or was lost (r->ac is already NULL): log it the
 * first time, and retry after the backoff. */
static void link_down(struct sg_redis *r, const char *why) {
    uv_timer_stop(&r->cmd_timer);
    if (r->state == LINK_CLOSING) {
        maybe_finish(r);
        return;
    }
    if (!r->down)
        sg_log_warn("redis %s: %s: %s; retrying", r->name,
                    r->state == LINK_CONNECTED ? "connection lost" : "cannot connect", why);
    else
        sg_log_debug("redis %s: still down: %s; retrying in %llu ms", r->name, why,
                     (unsigned long long)r->backoff_ms);
    r->down = true;
    set_state(r, LINK_IDLE);
    sg__redis_retry_later(&r->timer, on_retry, &r->backoff_ms);
}

/* Drops the context ourselves; its pending replies fail with err. */
static void drop(struct sg_redis *r, int err, const char *why) {
    redisAsyncContext *ac = r->ac;
    r->ac = NULL; /* so on_disconnected knows it is not news */
    r->drop_err = err;
    redisAsyncFree(ac); /* runs on_reply(NULL) for each pending command */
    r->drop_err = 0;
    link_down(r, why);
}

static void on_connected(const redisAsyncContext *ac, int status) {
    struct sg_redis *r = ac->data;
    if (r->ac != ac)
        return;
    if (status != REDIS_OK) { /* hiredis frees ac when this returns */
        char why[128];
        sg__redis_why(why, sizeof(why), ac, status, "connect failed");
        r->ac = NULL;
        uv_timer_stop(&r->timer);
        link_down(r, why);
        return;
    }
    uv_timer_stop(&r->timer);
    redisEnableKeepAlive(&r->ac->c);
    r->backoff_ms = SG_REDIS_BACKOFF_MIN;
    scripts_forget(r);
    set_state(r, LINK_CONNECTED);
    if (r->down)
        sg_log_warn("redis %s: connection restored", r->name);
    else
        sg_log_info("redis %s: connected", r->name);
    r->down = false;
}

/* hiredis: a connected context is going away (it frees it after this). */
static void on_disconnected(const redisAsyncContext *ac, int status) {
    struct sg_redis *r = ac->data;
    if (r->ac != ac)
        return; /* we dropped it ourselves */
    char why[128];
    sg__redis_why(why, sizeof(why), ac, status, "closed by the server");
    r->ac = NULL;
    link_down(r, why);
}

static const struct sg__redis_hooks link_hooks = {
    .connected = on_connected,
    .disconnected = on_disconnected,
    .closing = link_io_closing,
    .closed = link_io_closed,
};

/* Starts the TCP connect to addr, an address literal. */
static void connect_addr(struct sg_redis *r, const char *addr) {
    char why[128];
    redisAsyncContext *ac =
        sg__redis_connect(r->loop, addr, r->port, r, &link_hooks, why, sizeof(why));
    if (!ac) {
        link_down(r, why);
        return;
    }
    r->ac = ac;
    set_state(r, LINK_CONNECTING);
}

/* The resolution of r->host ended (addr is r->host itself for a literal). */
static void on_resolved_addr(void *p, const char *addr, const char *why) {
    struct sg_redis *r = p;
    if (!addr) {
        uv_timer_stop(&r->timer);
        link_down(r, why);
        return;
    }
    connect_addr(r, addr);
}

static void on_connect_timeout(uv_timer_t *t) {
    struct sg_redis *r = t->data;
    if (r->state == LINK_RESOLVING) {
        sg__redis_resolve_abandon(&r->resolve);
        link_down(r, "name resolution timed out");
    } else if (r->state == LINK_CONNECTING && r->ac) {
        drop(r, -ETIMEDOUT, "connect timed out");
    }
}

static void start_connect(struct sg_redis *r) {
    uv_timer_start(&r->timer, on_connect_timeout, SG_REDIS_CONNECT_TIMEOUT, 0);
    if (sg__redis_resolve(r->loop, r->host, r, on_resolved_addr, &r->resolve))
        set_state(r, LINK_RESOLVING);
}

/* The oldest command in flight may be late: if so the link is stuck. */
static void on_cmd_timer(uv_timer_t *t) {
    struct sg_redis *r = t->data;
    if (r->state != LINK_CONNECTED || sg_list_empty(&r->inflight))
        return;
    struct req *q = sg_container_of(r->inflight.next, struct req, link);
    uint64_t now = uv_now(r->loop);
    if (q->deadline > now) {
        uv_timer_start(t, on_cmd_timer, q->deadline - now, 0);
        return;
    }
    drop(r, -ETIMEDOUT, "command timed out");
}

/* ---- public: the link ---- */

static bool host_char(int c) {
    return isalnum(c) || c == '-' || c == '.' || c == '_';
}

int sg_redis_parse_url(const char *url, char *host, size_t hostlen, uint16_t *port) {
    if (!url || !host || !port)
        return -EINVAL;
    const char *p = url;
    if (strncasecmp(p, "redis://", 8) == 0)
        p += 8;
    const char *end = p + strlen(p);
    const char *slash = memchr(p, '/', (size_t)(end - p));
    if (slash) {
        if (strcmp(slash, "/") != 0 && strcmp(slash, "/0") != 0)
            return -EINVAL; /* another database needs a SELECT we do not send */
        end = slash;
    }
    const char *h = p, *hend, *ps = NULL;
    bool v6 = false;
    if (*p == '[') {
        h = p + 1;
        hend = memchr(h, ']', (size_t)(end - h));
        if (!hend)
            return -EINVAL;
        if (hend + 1 < end) {
            if (hend[1] != ':')
                return -EINVAL;
            ps = hend + 2;
        }
        v6 = true;
    } else {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        if (colon && memchr(colon + 1, ':', (size_t)(end - colon - 1))) {
            hend = end; /* a bare IPv6 literal */
            v6 = true;
        } else if (colon) {
            hend = colon;
            ps = colon + 1;
        } else {
            hend = end;
        }
    }
    size_t len = (size_t)(hend - h);
    if (len == 0 || len > 255)
        return len ? -ENAMETOOLONG : -EINVAL;
    char tmp[256];
    memcpy(tmp, h, len);
    tmp[len] = '\0';
    if (v6) {
        unsigned char a[sizeof(struct in6_addr)];
        if (inet_pton(AF_INET6, tmp, a) != 1)
            return -EINVAL;
    } else {
        for (size_t i = 0; i < len; i++)
            if (!host_char((unsigned char)tmp[i]))
                return -EINVAL;
    }
    unsigned long pv = SG_REDIS_DEFAULT_PORT;
    if (ps) {
        if (ps == end || end - ps > 5)
            return -EINVAL;
        pv = 0;
        for (const char *c = ps; c < end; c++) {
            if (*c < '0' || *c > '9')
                return -EINVAL;
            pv = pv * 10 + (unsigned long)(*c - '0');
        }
        if (pv == 0 || pv > 65535)
            return -EINVAL;
    }
    if (len + 1 > hostlen)
        return -ENAMETOOLONG;
    memcpy(host, tmp, len + 1);
    *port = (uint16_t)pv;
    return 0;
}

static void make_node_id(char *out, size_t outlen, const void *salt) {
    char host[256];
    if (gethostname(host, sizeof(host)) != 0 || !host[0])
        snprintf(host, sizeof(host), "unknown");
    host[sizeof(host) - 1] = '\0';
    uint64_t rnd;
    if (getrandom(&rnd, sizeof(rnd), GRND_NONBLOCK) != (ssize_t)sizeof(rnd)) {
        /* no entropy yet (early boot): splitmix64 of the time, pid and an address */
        uint64_t z = uv_hrtime() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)salt;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        rnd = z ^ (z >> 31);
    }
    snprintf(out, outlen, "%s:%d:%016llx", host, (int)getpid(), (unsigned long long)rnd);
}

struct sg_redis *sg_redis_new(uv_loop_t *loop, const char *host, uint16_t port,
                              const char *prefix) {
    if (!loop || !host || !*host || strlen(host) > 255 || port == 0)
        return NULL;
    struct sg_redis *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->host = strdup(host);
    r->prefix = strdup(prefix ? prefix : "");
    if (!r->host || !r->prefix) {
        free(r->host);
        free(r->prefix);
        free(r);
        return NULL;
    }
    r->loop = loop;
    r->port = port;
    sg__redis_name(r->name, sizeof(r->name), host, port);
    make_node_id(r->node_id, sizeof(r->node_id), r);
    r->state = LINK_IDLE;
    r->backoff_ms = SG_REDIS_BACKOFF_MIN;
    sg_list_init(&r->inflight);
    sg_list_init(&r->done);
    uv_timer_init(loop, &r->timer);
    uv_timer_init(loop, &r->cmd_timer);
    uv_timer_init(loop, &r->defer);
    r->timer.data = r->cmd_timer.data = r->defer.data = r;
    uv_timer_start(&r->timer, on_retry, 0, 0);
    return r;
}

bool sg_redis_connected(const struct sg_redis *r) {
    return r->state == LINK_CONNECTED;
}

const char *sg_redis_node_id(const struct sg_redis *r) {
    return r->node_id;
}

const char *sg_redis_prefix(const struct sg_redis *r) {
    return r->prefix;
}

uv_loop_t *sg__redis_loop(const struct sg_redis *r) {
    return r->loop;
}

static void on_handle_closed(uv_handle_t *h) {
    close_done(h->data);
}

/* Once r is closing and its context gone, closes its handles; the last
 * close callback frees r. */
static void maybe_finish(struct sg_redis *r) {
    if (r->state != LINK_CLOSING || r->ac || r->handles_closing)
        return;
    r->handles_closing = true;
    r->pending_closes += 3;
    uv_close((uv_handle_t *)&r->timer, on_handle_closed);
    uv_close((uv_handle_t *)&r->cmd_timer, on_handle_closed);
    uv_close((uv_handle_t *)&r->defer, on_handle_closed);
}

static void on_close_deadline(uv_timer_t *t) {
    struct sg_redis *r = t->data;
    if (r->ac)
        drop(r, -ECANCELED, "close timed out");
}

void sg_redis_free(struct sg_redis *r) {
    if (!r || r->state == LINK_CLOSING)
        return;
    if (r->nleases) {
        sg_log_error("redis %s: freed with %u leases alive", r->name, r->nleases);
        abort();
    }
    bool graceful = r->state == LINK_CONNECTED && !sg_list_empty(&r->inflight);
    set_state(r, LINK_CLOSING);
    uv_timer_stop(&r->timer);
    uv_timer_stop(&r->cmd_timer);
    uv_timer_stop(&r->defer);
    sg__redis_resolve_abandon(&r->resolve);
    run_done(r);
    /* awaiting a reply: the caller hears now; hiredis still holds the reqs */
    for (struct sg_list *n = r->inflight.next; n != &r->inflight; n = n->next) {
        struct req *q = sg_container_of(n, struct req, link);
        sg_redis_reply_cb cb = q->cb;
        void (*int_cb)(void *, long long, int) = q->int_cb;
        q->cb = NULL;
        q->int_cb = NULL;
        if (int_cb)
            int_cb(q->arg, 0, -ECANCELED);
        else if (cb)
            cb(q->arg, NULL, -ECANCELED);
    }
    if (r->ac && graceful) {
        /* let what was written (a lease release) reach Redis */
        uv_timer_start(&r->timer, on_close_deadline, SG_REDIS_COMMAND_TIMEOUT, 0);
        redisAsyncDisconnect(r->ac); /* on_disconnected when the replies are in */
    } else if (r->ac) {
        drop(r, -ECANCELED, "closing");
    }
    maybe_finish(r);
}

/* ---- public: commands ---- */

/* Queues q to fail with err on the next loop turn. */
static int fail_soon(struct sg_redis *r, struct req *q, int err) {
    q->err = err;
    complete(r, q);
    return 0;
}

/* Returns whether any script was marked sent. */
static bool scripts_forget(struct sg_redis *r) {
    bool any = false;
    for (unsigned i = 0; i < r->nscripts; i++) {
        any |= r->scripts[i].sent;
        r->scripts[i].sent = false;
    }
    return any;
}

/* The script of an EVAL command (argv[1], len bytes); NULL when the table
 * is full or out of memory. */
static struct script *script_of(struct sg_redis *r, const char *body, size_t len) {
    for (unsigned i = 0; i < r->nscripts; i++)
        if (r->scripts[i].len == len && memcmp(r->scripts[i].body, body, len) == 0)
            return &r->scripts[i];
    if (r->nscripts == SG_REDIS_MAX_SCRIPTS)
        return NULL;
    char *copy = malloc(len ? len : 1);
    if (!copy)
        return NULL;
    memcpy(copy, body, len);
    struct script *s = &r->scripts[r->nscripts++];
    s->body = copy;
    s->len = len;
    s->sent = false;
    sg_sha1_hex(body, len, s->sha);
    return s;
}

static size_t arg_len(const char *const *argv, const size_t *argvlen, int i) {
    return argvlen ? argvlen[i] : strlen(argv[i]);
}

static int issue(struct sg_redis *r, int argc, const char *const *argv, const size_t *argvlen,
                 sg_redis_reply_cb cb, void (*int_cb)(void *, long long, int), void *arg) {
    if (!r || argc < 1 || !argv)
        return -EINVAL;
    if (r->state == LINK_CLOSING)
        return -ESHUTDOWN;
    struct req *q = calloc(1, sizeof(*q));
    if (!q)
        return -ENOMEM;
    sg_list_init(&q->link);
    q->r = r;
    q->cb = cb;
    q->int_cb = int_cb;
    q->arg = arg;
    if (r->state != LINK_CONNECTED)
        return fail_soon(r, q, -ENOTCONN);
    if (r->ninflight >= SG_REDIS_MAX_INFLIGHT)
        return fail_soon(r, q, -ENOBUFS);
    struct script *s = NULL;
    const char *sha_argv[SG_REDIS_MAX_EVAL_ARGS];
    size_t sha_len[SG_REDIS_MAX_EVAL_ARGS];
    if (argc >= 3 && argc <= SG_REDIS_MAX_EVAL_ARGS && arg_len(argv, argvlen, 0) == 4 &&
        memcmp(argv[0], "EVAL", 4) == 0)
        s = script_of(r, argv[1], arg_len(argv, argvlen, 1));
    if (s && s->sent) {
        sha_argv[0] = "EVALSHA";
        sha_len[0] = 7;
        sha_argv[1] = s->sha;
        sha_len[1] = SG_SHA1_HEX_LEN;
        for (int i = 2; i < argc; i++) {
            sha_argv[i] = argv[i];
            sha_len[i] = arg_len(argv, argvlen, i);
        }
        argv = sha_argv;
        argvlen = sha_len;
    }
    if (redisAsyncCommandArgv(r->ac, on_reply, q, argc, (const char **)argv, argvlen) != REDIS_OK)
        return fail_soon(r, q, r->ac->c.flags & REDIS_DISCONNECTING ? -ECONNRESET : -ENOMEM);
    if (s)
        s->sent = true;
    q->deadline = uv_now(r->loop) + SG_REDIS_COMMAND_TIMEOUT;
    if (sg_list_empty(&r->inflight))
        uv_timer_start(&r->cmd_timer, on_cmd_timer, SG_REDIS_COMMAND_TIMEOUT, 0);
    sg_list_insert_tail(&r->inflight, &q->link);
    r->ninflight++;
    return 0;
}

int sg_redis_command_argv(struct sg_redis *r, int argc, const char *const *argv,
                          const size_t *argvlen, sg_redis_reply_cb cb, void *arg) {
    return issue(r, argc, argv, argvlen, cb, NULL, arg);
}

int sg_redis_llen(struct sg_redis *r, const char *key,
                  void (*cb)(void *arg, long long len, int err), void *arg) {
    if (!key)
        return -EINVAL;
    const char *argv[] = {"LLEN", key};
    return issue(r, 2, argv, NULL, NULL, cb, arg);
}

/* ---- leader leases ---- */

/* KEYS[1] lease key, ARGV[1] node id, ARGV[2] ttl ms */
static const char renew_script[] = "if redis.call('get', KEYS[1]) == ARGV[1] then "
                                   "return redis.call('pexpire', KEYS[1], ARGV[2]) "
                                   "else return 0 end";
static const char release_script[] = "if redis.call('get', KEYS[1]) == ARGV[1] then "
                                     "return redis.call('del', KEYS[1]) "
                                     "else return 0 end";

enum lease_attempt {
    LEASE_ACQUIRE = 0, /* SET key id NX PX ttl */
    LEASE_RENEW,       /* the renew script: PEXPIRE if ours */
};

struct sg_lease {
    struct sg_redis *r; /* not touched once dead */
    char *key;
    char ttl_str[24];
    uint64_t ttl_ms, margin_ms;
    void (*on_change)(void *arg, bool leader);
    void *arg;
    bool leader;     /* what on_change last said */
    bool maybe_ours; /* not leading, yet the key may hold our id */
    bool inflight;   /* an attempt awaits its callback */
    bool dead;       /* freed by the caller */
    enum lease_attempt attempt;
    uint64_t sent_ms;     /* mono_ms() when the attempt in flight was sent */
    uint64_t valid_until; /* mono_ms(): leadership ends here unless renewed */
    uv_timer_t tick;      /* every ttl/3: acquire or renew */
    uv_timer_t expiry;    /* at valid_until */
    unsigned refs;        /* open timers + the attempt in flight */
};

static void lease_put(struct sg_lease *l) {
    if (--l->refs == 0) {
        free(l->key);
        free(l);
    }
}

static void lease_step_down(struct sg_lease *l, const char *why) {
    l->maybe_ours = true;
    if (!l->leader)
        return;
    l->leader = false;
    uv_timer_stop(&l->expiry);
    sg_log_warn("lease %s: stepped down: %s", l->key, why);
    if (l->on_change)
        l->on_change(l->arg, false);
}

static void lease_on_reply(void *arg, const struct sg_redis_reply *rep, int err);
static void lease_expired(uv_timer_t *t);

static void lease_attempt(struct sg_lease *l, enum lease_attempt a) {
    const char *node = sg_redis_node_id(l->r);
    const char *acquire[] = {"SET", l->key, node, "NX", "PX", l->ttl_str};
    const char *renew[] = {"EVAL", renew_script, "1", l->key, node, l->ttl_str};
    l->attempt = a;
    l->sent_ms = mono_ms();
    int rc = sg_redis_command_argv(l->r, 6, a == LEASE_ACQUIRE ? acquire : renew, NULL,
                                   lease_on_reply, l);
    if (rc == 0) {
        l->inflight = true;
        l->refs++;
        return;
    }
    if (l->leader)
        lease_step_down(l, rc == -ENOMEM ? "out of memory" : "redis link closing");
}

static void lease_handle(struct sg_lease *l, const struct sg_redis_reply *rep, int err) {
    uint64_t now = mono_ms();
    if (err) {
        if (err != -ENOTCONN && err != -ENOBUFS)
            l->maybe_ours = true; /* it may have run */
        if (l->leader) {
            char why[80];
            snprintf(why, sizeof(why), "cannot renew: %s",
                     err == -ENOTCONN ? "redis unreachable" : strerror(-err));
            lease_step_down(l, why);
        }
        return;
    }
    bool ok = l->attempt == LEASE_ACQUIRE
                  ? rep->type == SG_REDIS_REPLY_STATUS
                  : rep->type == SG_REDIS_REPLY_INTEGER && rep->integer == 1;
    if (!ok) {
        if (l->attempt == LEASE_ACQUIRE)
            return; /* someone holds it */
        /* the key is not ours (any more): step down, then try to take it,
         * as it may simply have expired */
        lease_step_down(l, "held by another gateway");
        l->maybe_ours = false;
        if (!l->dead)
            lease_attempt(l, LEASE_ACQUIRE);
        return;
    }
    uint64_t until = l->sent_ms + l->ttl_ms - l->margin_ms;
    if (now >= until) { /* confirmed too late to lean on */
        lease_step_down(l, "renewal confirmed too late");
        return;
    }
    l->maybe_ours = false;
    l->valid_until = until;
    uv_timer_start(&l->expiry, lease_expired, until - now, 0);
    if (!l->leader) {
        l->leader = true;
        sg_log_info("lease %s: acquired; this gateway leads", l->key);
        if (l->on_change)
            l->on_change(l->arg, true);
    }
}

static void lease_on_reply(void *arg, const struct sg_redis_reply *rep, int err) {
    struct sg_lease *l = arg;
    l->inflight = false;
    if (!l->dead)
        lease_handle(l, rep, err);
    lease_put(l);
}

/* The validity ran out with no renewal confirmed. The timer runs on loop
 * time, which can trail the clock: re-arm if it fired early. */
static void lease_expired(uv_timer_t *t) {
    struct sg_lease *l = t->data;
    uint64_t now = mono_ms();
    if (!l->leader)
        return;
    if (now < l->valid_until) {
        uv_timer_start(t, lease_expired, l->valid_until - now, 0);
        return;
    }
    lease_step_down(l, "no renewal confirmed in time");
}

static void lease_tick(uv_timer_t *t) {
    struct sg_lease *l = t->data;
    if (l->inflight)
        return; /* the last attempt is still out; it fails by the command timeout */
    lease_attempt(l, l->leader || l->maybe_ours ? LEASE_RENEW : LEASE_ACQUIRE);
}

struct sg_lease *sg_lease_new(struct sg_redis *r, const char *name, uint64_t ttl_ms,
                              void (*on_change)(void *arg, bool leader), void *arg) {
    if (!r || !name || !*name || ttl_ms < 100 || ttl_ms > UINT32_MAX || r->state == LINK_CLOSING)
        return NULL;
    struct sg_lease *l = calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    size_t klen = strlen(r->prefix) + strlen("lease:") + strlen(name) + 1;
    l->key = malloc(klen);
    if (!l->key) {
        free(l);
        return NULL;
    }
    snprintf(l->key, klen, "%slease:%s", r->prefix, name);
    snprintf(l->ttl_str, sizeof(l->ttl_str), "%llu", (unsigned long long)ttl_ms);
    l->r = r;
    l->ttl_ms = ttl_ms;
    l->margin_ms = ttl_ms / 10 + 2;
    l->on_change = on_change;
    l->arg = arg;
    uv_timer_init(r->loop, &l->tick);
    uv_timer_init(r->loop, &l->expiry);
    l->tick.data = l->expiry.data = l;
    l->refs = 2;
    uv_timer_start(&l->tick, lease_tick, 0, ttl_ms / 3);
    r->nleases++;
    return l;
}

bool sg_lease_held(const struct sg_lease *l) {
    return l->leader && mono_ms() < l->valid_until;
}

static void lease_closed(uv_handle_t *h) {
    lease_put(h->data);
}

static void lease_close(struct sg_lease *l, bool release) {
    if (!l || l->dead)
        return;
    l->dead = true;
    if (release && (l->leader || l->maybe_ours || l->inflight)) {
        /* after any attempt in flight on the same connection: fire and forget */
        const char *argv[] = {"EVAL", release_script, "1", l->key, sg_redis_node_id(l->r)};
        sg_redis_command_argv(l->r, 5, argv, NULL, NULL, NULL);
        if (l->leader)
            sg_log_info("lease %s: released", l->key);
    }
    l->leader = false;
    l->r->nleases--;
    l->r = NULL;
    uv_close((uv_handle_t *)&l->tick, lease_closed);
    uv_close((uv_handle_t *)&l->expiry, lease_closed);
}

void sg_lease_free(struct sg_lease *l) {
    lease_close(l, true);
}

void sg_lease_abandon(struct sg_lease *l) {
    lease_close(l, false);
}
