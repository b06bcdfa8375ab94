/*
 * The Redis subscriber (see pubsub.h for the contract).
 *
 * A small state machine (enum sub_state, changed only by set_state) around
 * one hiredis async context at a time. It connects the way the link does,
 * with the functions redis.c shares (redis_int.h): name resolution off the
 * loop, the link's libuv glue rather than hiredis' own adapter (which loses
 * socket errors), and the same backoff.
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

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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
    redisAsyncContext *ac;             /* NULL unless CONNECTING, SUBSCRIBING or ACTIVE */
    struct sg__redis_resolve *resolve; /* the resolution in flight, if any */
    uv_timer_t timer;                  /* retry or connect timeout (see the states) */
    uint64_t backoff_ms;               /* the delay before the next retry */
    bool down;                         /* a failure was logged; the recovery will be too */
    unsigned refs;                     /* the timer until closed + the glue of each context */
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
    sg__redis_retry_later(&s->timer, on_retry, &s->backoff_ms);
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
        sg__redis_why(why, sizeof(why), ac, status, "connect failed");
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
    sg__redis_why(why, sizeof(why), ac, status, "closed by the server");
    s->ac = NULL;
    link_down(s, why);
}

static const struct sg__redis_hooks sub_hooks = {
    .connected = on_connected,
    .disconnected = on_disconnected,
    .closing = NULL,
    .closed = on_glue_closed,
};

/* Starts the TCP connect to addr, an address literal. */
static void connect_addr(struct sg_redis_sub *s, const char *addr) {
    char why[128];
    redisAsyncContext *ac =
        sg__redis_connect(s->loop, addr, s->port, s, &sub_hooks, why, sizeof(why));
    if (!ac) {
        uv_timer_stop(&s->timer);
        link_down(s, why);
        return;
    }
    s->refs++; /* the glue's, until its handle has closed */
    s->ac = ac;
    set_state(s, SUB_CONNECTING);
}

/* The resolution of s->host ended (addr is s->host itself for a literal). */
static void on_resolved_addr(void *p, const char *addr, const char *why) {
    struct sg_redis_sub *s = p;
    if (!addr) {
        uv_timer_stop(&s->timer);
        link_down(s, why);
        return;
    }
    connect_addr(s, addr);
}

static void on_connect_timeout(uv_timer_t *t) {
    struct sg_redis_sub *s = t->data;
    if (s->state == SUB_RESOLVING) {
        sg__redis_resolve_abandon(&s->resolve);
        link_down(s, "name resolution timed out");
    } else if (s->state == SUB_CONNECTING && s->ac) {
        drop(s, "connect timed out");
    } else if (s->state == SUB_SUBSCRIBING && s->ac) {
        drop(s, "SUBSCRIBE not confirmed in time");
    }
}

static void start_connect(struct sg_redis_sub *s) {
    uv_timer_start(&s->timer, on_connect_timeout, SG_REDIS_CONNECT_TIMEOUT, 0);
    if (sg__redis_resolve(s->loop, s->host, s, on_resolved_addr, &s->resolve))
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
    sg__redis_name(s->name, sizeof(s->name), host, port);
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
    sg__redis_resolve_abandon(&s->resolve);
    if (s->ac) {
        redisAsyncContext *ac = s->ac;
        s->ac = NULL;
        redisAsyncFree(ac); /* deferred by hiredis when called from on_message */
    }
    uv_close((uv_handle_t *)&s->timer, on_timer_closed);
}
