/*
 * The Redis subscriber (see pubsub.h for the contract).
 *
 * A small state machine (enum sub_state, changed only by set_state) around
 * one hiredis async context at a time, driven by the link's libuv glue
 * (redis_int.h) rather than hiredis' own adapter, which loses socket errors.
 * SUBSCRIBE goes out once the TCP connect completes; the subscription is
 * active once Redis confirms it, and s->timer bounds the whole way there
 * (resolve, connect, confirmation) at SG_REDIS_CONNECT_TIMEOUT. When the
 * server goes away hiredis reads EOF, frees the context and tells us in
 * on_disconnected; we then retry after the backoff.
 *
 * hiredis calls the SUBSCRIBE callback for the confirmation and for every
 * message, from inside redisAsyncHandleRead, flagged "in callback": a
 * redisAsyncFree made there (the caller freeing s from on_message, say) is
 * deferred by hiredis until the callback returns. So s->ac is cleared
 * before any call that may free the context, and every hiredis callback
 * first checks that its context is still s->ac.
 *
 * Ownership: s is freed when its references are gone: the timer (until its
 * close callback, started by sg_redis_sub_free) and the glue of each
 * context (until its poll handle has closed, after hiredis freed the
 * context). A uv_getaddrinfo in flight is abandoned on free: it frees
 * itself when it completes.
 */
#include "redis/pubsub.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <hiredis/hiredis.h>
#include <hiredis/async.h>

#include "core/log.h"
#include "redis/redis.h"
#include "redis/redis_int.h"

enum sub_state {
    SUB_IDLE = 0,    /* no connection; s->timer is the retry (backoff) */
    SUB_RESOLVING,   /* uv_getaddrinfo in flight; s->timer is the connect timeout */
    SUB_CONNECTING,  /* s->ac set, TCP connect in flight; s->timer is the connect timeout */
    SUB_SUBSCRIBING, /* connected, SUBSCRIBE sent; s->timer is the connect timeout */
    SUB_ACTIVE,      /* subscription confirmed: messages arrive */
    SUB_CLOSING,     /* sg_redis_sub_free was called; waiting for handles to close */
    SUB_STATE_COUNT
};

static const char *const sub_state_names[SUB_STATE_COUNT] = {
    [SUB_IDLE] = "idle",
    [SUB_RESOLVING] = "resolving",
    [SUB_CONNECTING] = "connecting",
    [SUB_SUBSCRIBING] = "subscribing",
    [SUB_ACTIVE] = "active",
    [SUB_CLOSING] = "closing",
};

#define SUB_BIT(s) (1u << (s))
static const unsigned sub_next[SUB_STATE_COUNT] = {
    [SUB_IDLE] =
        SUB_BIT(SUB_RESOLVING) | SUB_BIT(SUB_CONNECTING) | SUB_BIT(SUB_IDLE) | SUB_BIT(SUB_CLOSING),
    [SUB_RESOLVING] = SUB_BIT(SUB_IDLE) | SUB_BIT(SUB_CONNECTING) | SUB_BIT(SUB_CLOSING),
    [SUB_CONNECTING] = SUB_BIT(SUB_IDLE) | SUB_BIT(SUB_SUBSCRIBING) | SUB_BIT(SUB_CLOSING),
    [SUB_SUBSCRIBING] = SUB_BIT(SUB_IDLE) | SUB_BIT(SUB_ACTIVE) | SUB_BIT(SUB_CLOSING),
    [SUB_ACTIVE] = SUB_BIT(SUB_IDLE) | SUB_BIT(SUB_CLOSING),
    [SUB_CLOSING] = 0,
};

/* One uv_getaddrinfo; s is NULL once abandoned (timeout, free). Freed by
 * its callback. */
struct sub_resolve {
    uv_getaddrinfo_t req;
    struct sg_redis_sub *s;
};

struct sg_redis_sub {
    uv_loop_t *loop;
    char *host; /* as given: a name or an address literal */
    uint16_t port;
    char *channel;
    size_t channel_len;
    char name[280]; /* "host:port" or "[v6]:port", for logs */
    void (*on_message)(void *arg, const char *data, size_t len);
    void (*on_state)(void *arg, bool connected);
    void *arg;
    enum sub_state state;
    redisAsyncContext *ac;       /* NULL unless CONNECTING, SUBSCRIBING or ACTIVE */
    struct sub_resolve *resolve; /* the resolution in flight, if any */
    uv_timer_t timer;            /* retry or connect timeout (see the states) */
    uint64_t backoff_ms;         /* the delay before the next retry */
    bool down;                   /* a failure was logged; the recovery will be too */
    unsigned refs;               /* the timer until closed + the glue of each context */
};

static void start_connect(struct sg_redis_sub *s);

static void set_state(struct sg_redis_sub *s, enum sub_state st) {
    if (!(sub_next[s->state] & SUB_BIT(st)))
        sg_log_error("redis %s: subscriber: bad state change %s -> %s", s->name,
                     sub_state_names[s->state], sub_state_names[st]);
    sg_log_debug("redis %s: subscriber: %s -> %s", s->name, sub_state_names[s->state],
                 sub_state_names[st]);
    s->state = st;
}

static void sub_put(struct sg_redis_sub *s) {
    if (--s->refs)
        return;
    free(s->host);
    free(s->channel);
    free(s);
}

static void on_glue_closed(void *p) {
    sub_put(p);
}

static void on_timer_closed(uv_handle_t *h) {
    sub_put(h->data);
}

static void on_retry(uv_timer_t *t) {
    start_connect(t->data);
}

/* The connection failed or was lost (s->ac is already NULL): log it the
 * first time, retry after the backoff, and tell the caller if a
 * subscription was active. */
static void link_down(struct sg_redis_sub *s, const char *why) {
    if (s->state == SUB_CLOSING)
        return;
    bool was_active = s->state == SUB_ACTIVE;
    if (!s->down)
        sg_log_warn("redis %s: subscription to %s %s: %s; retrying", s->name, s->channel,
                    was_active ? "lost" : "failed", why);
    else
        sg_log_debug("redis %s: subscriber still down: %s; retrying in %llu ms", s->name, why,
                     (unsigned long long)s->backoff_ms);
    s->down = true;
    set_state(s, SUB_IDLE);
    uv_timer_start(&s->timer, on_retry, s->backoff_ms, 0);
    s->backoff_ms *= 2;
    if (s->backoff_ms > SG_REDIS_BACKOFF_MAX)
        s->backoff_ms = SG_REDIS_BACKOFF_MAX;
    if (was_active && s->on_state)
        s->on_state(s->arg, false);
}

/* Drops the context ourselves (hiredis defers the free while in one of its
 * callbacks). */
static void drop(struct sg_redis_sub *s, const char *why) {
    redisAsyncContext *ac = s->ac;
    s->ac = NULL; /* so on_disconnected knows it is not news */
    redisAsyncFree(ac);
    link_down(s, why);
}

/* hiredis: the confirmation of SUBSCRIBE, then every message; NULL when
 * the context goes away. */
static void on_sub_reply(redisAsyncContext *ac, void *r, void *privdata) {
    struct sg_redis_sub *s = privdata;
    redisReply *rep = r;
    if (!rep || s->ac != ac)
        return;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 3 ||
        rep->element[0]->type != REDIS_REPLY_STRING) {
        drop(s, "unexpected reply to SUBSCRIBE");
        return;
    }
    const char *kind = rep->element[0]->str;
    if (strcasecmp(kind, "message") == 0) {
        const redisReply *data = rep->element[2];
        if (s->state == SUB_ACTIVE && data->type == REDIS_REPLY_STRING)
            s->on_message(s->arg, data->str, data->len);
        return;
    }
    if (strcasecmp(kind, "subscribe") != 0 || s->state != SUB_SUBSCRIBING)
        return;
    uv_timer_stop(&s->timer);
    s->backoff_ms = SG_REDIS_BACKOFF_MIN;
    set_state(s, SUB_ACTIVE);
    if (s->down)
        sg_log_warn("redis %s: subscription to %s restored", s->name, s->channel);
    else
        sg_log_info("redis %s: subscribed to %s", s->name, s->channel);
    s->down = false;
    if (s->on_state)
        s->on_state(s->arg, true);
}

static void on_connected(const redisAsyncContext *cac, int status) {
    struct sg_redis_sub *s = cac->data;
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    if (s->ac != ac)
        return;
    if (status != REDIS_OK) { /* hiredis frees ac when this returns */
        char why[128];
        snprintf(why, sizeof(why), "%s", ac->errstr[0] ? ac->errstr : "connect failed");
        s->ac = NULL;
        link_down(s, why);
        return;
    }
    redisEnableKeepAlive(&ac->c);
    set_state(s, SUB_SUBSCRIBING);
    /* hiredis goes on using ac after this returns: no free here. If the
     * command cannot be queued (out of memory), the timeout drops ac. */
    if (redisAsyncCommand(ac, on_sub_reply, s, "SUBSCRIBE %b", s->channel, s->channel_len) !=
        REDIS_OK)
        sg_log_debug("redis %s: subscriber: cannot queue SUBSCRIBE", s->name);
}

/* hiredis: a connected context is going away (it frees it after this). */
static void on_disconnected(const redisAsyncContext *ac, int status) {
    struct sg_redis_sub *s = ac->data;
    if (s->ac != ac)
        return; /* we dropped it ourselves */
    char why[128];
    snprintf(why, sizeof(why), "%s",
             status == REDIS_OK || !ac->errstr[0] ? "closed by the server" : ac->errstr);
    s->ac = NULL;
    link_down(s, why);
}

/* Starts the TCP connect to addr, an address literal. */
static void connect_addr(struct sg_redis_sub *s, const char *addr) {
    char why[128];
    redisAsyncContext *ac = redisAsyncConnect(addr, s->port);
    if (!ac) {
        uv_timer_stop(&s->timer);
        link_down(s, "out of memory");
        return;
    }
    if (ac->err) {
        snprintf(why, sizeof(why), "%s", ac->errstr);
        redisAsyncFree(ac);
        uv_timer_stop(&s->timer);
        link_down(s, why);
        return;
    }
    int rc = sg__redis_io_attach(s->loop, ac, s, NULL, on_glue_closed);
    if (rc != 0) {
        snprintf(why, sizeof(why), "cannot poll the socket: %s", uv_strerror(rc));
        redisAsyncFree(ac);
        uv_timer_stop(&s->timer);
        link_down(s, why);
        return;
    }
    s->refs++; /* the glue's, until its handle has closed */
    ac->data = s;
    s->ac = ac;
    set_state(s, SUB_CONNECTING);
    redisAsyncSetDisconnectCallback(ac, on_disconnected);
    redisAsyncSetConnectCallback(ac, on_connected); /* also waits for writable */
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
    struct sub_resolve *rs = req->data;
    struct sg_redis_sub *s = rs->s;
    free(rs);
    if (!s) { /* abandoned */
        uv_freeaddrinfo(res);
        return;
    }
    s->resolve = NULL;
    /* IPv4 first, as the link does */
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
        snprintf(why, sizeof(why), "cannot resolve %s: %s", s->host,
                 status ? uv_strerror(status) : "no address");
        uv_timer_stop(&s->timer);
        link_down(s, why);
        return;
    }
    connect_addr(s, addr);
}

/* Forgets the resolution in flight; it frees itself when done. */
static void abandon_resolve(struct sg_redis_sub *s) {
    if (!s->resolve)
        return;
    s->resolve->s = NULL;
    uv_cancel((uv_req_t *)&s->resolve->req);
    s->resolve = NULL;
}

static void on_connect_timeout(uv_timer_t *t) {
    struct sg_redis_sub *s = t->data;
    if (s->state == SUB_RESOLVING) {
        abandon_resolve(s);
        link_down(s, "name resolution timed out");
    } else if (s->state == SUB_CONNECTING && s->ac) {
        drop(s, "connect timed out");
    } else if (s->state == SUB_SUBSCRIBING && s->ac) {
        drop(s, "SUBSCRIBE not confirmed in time");
    }
}

static void start_connect(struct sg_redis_sub *s) {
    uv_timer_start(&s->timer, on_connect_timeout, SG_REDIS_CONNECT_TIMEOUT, 0);
    unsigned char buf[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, s->host, buf) == 1 || inet_pton(AF_INET6, s->host, buf) == 1) {
        connect_addr(s, s->host);
        return;
    }
    struct sub_resolve *rs = calloc(1, sizeof(*rs));
    if (!rs) {
        uv_timer_stop(&s->timer);
        link_down(s, "out of memory");
        return;
    }
    rs->s = s;
    rs->req.data = rs;
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = uv_getaddrinfo(s->loop, &rs->req, on_resolved, s->host, NULL, &hints);
    if (rc != 0) {
        free(rs);
        char why[128];
        snprintf(why, sizeof(why), "cannot resolve %s: %s", s->host, uv_strerror(rc));
        uv_timer_stop(&s->timer);
        link_down(s, why);
        return;
    }
    s->resolve = rs;
    set_state(s, SUB_RESOLVING);
}

/* ---- public ---- */

struct sg_redis_sub *sg_redis_sub_new(uv_loop_t *loop, const char *host, uint16_t port,
                                      const char *channel,
                                      void (*on_message)(void *arg, const char *data, size_t len),
                                      void (*on_state)(void *arg, bool connected), void *arg) {
    if (!loop || !host || !*host || strlen(host) > 255 || port == 0 || !channel || !*channel ||
        !on_message)
        return NULL;
    struct sg_redis_sub *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->host = strdup(host);
    s->channel = strdup(channel);
    if (!s->host || !s->channel) {
        free(s->host);
        free(s->channel);
        free(s);
        return NULL;
    }
    s->channel_len = strlen(channel);
    s->loop = loop;
    s->port = port;
    snprintf(s->name, sizeof(s->name), strchr(host, ':') ? "[%s]:%u" : "%s:%u", host,
             (unsigned)port);
    s->on_message = on_message;
    s->on_state = on_state;
    s->arg = arg;
    s->state = SUB_IDLE;
    s->backoff_ms = SG_REDIS_BACKOFF_MIN;
    uv_timer_init(loop, &s->timer);
    s->timer.data = s;
    s->refs = 1; /* the timer */
    uv_timer_start(&s->timer, on_retry, 0, 0);
    return s;
}

bool sg_redis_sub_connected(const struct sg_redis_sub *s) {
    return s && s->state == SUB_ACTIVE;
}

void sg_redis_sub_free(struct sg_redis_sub *s) {
    if (!s || s->state == SUB_CLOSING)
        return;
    set_state(s, SUB_CLOSING);
    uv_timer_stop(&s->timer);
    abandon_resolve(s);
    if (s->ac) {
        redisAsyncContext *ac = s->ac;
        s->ac = NULL;
        redisAsyncFree(ac); /* deferred by hiredis when called from on_message */
    }
    uv_close((uv_handle_t *)&s->timer, on_timer_closed);
}
