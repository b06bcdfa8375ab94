/*
 * Internals shared inside src/redis (and with the cache's L2 tier, which
 * times its lookups on the link's loop): how the link (redis.c) and the
 * subscriber (pubsub.c) connect, and the link's loop. The code lives in
 * redis.c.
 *
 * Connecting never blocks: a host name is resolved with uv_getaddrinfo
 * (sg__redis_resolve), then hiredis connects to the address literal
 * (sg__redis_connect) through our own libuv glue. The glue replaces the
 * adapter in <hiredis/adapters/libuv.h>: the 0.14 adapter drops the error
 * status libuv reports for a socket error (a refused connect, a reset)
 * after libuv has already stopped the poll handle, so the context would
 * hang until a timeout. Ours hands such a wakeup to hiredis, which then
 * finds the error. After a failure the caller retries with
 * sg__redis_retry_later's backoff. The caller keeps its own state machine,
 * timeouts and logs; these functions log nothing.
 */
#ifndef SG_REDIS_REDIS_INT_H
#define SG_REDIS_REDIS_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <uv.h>

struct sg_redis;

/* Writes "host:port", or "[host]:port" for an IPv6 literal, for logs. */
void sg__redis_name(char *out, size_t outlen, const char *host, uint16_t port);

/* One uv_getaddrinfo in flight. */
struct sg__redis_resolve;

/* How a resolution ended: addr is an address literal (the first IPv4
 * address found, else the first IPv6 one), or NULL and why says what
 * failed ("cannot resolve <host>: ..."). */
typedef void (*sg__redis_resolved_cb)(void *owner, const char *addr, const char *why);

/* Resolves host on loop for owner. Returns true once a resolution is under
 * way: *slot holds it, and done(owner, ...) runs from the loop later, *slot
 * already NULL again, unless sg__redis_resolve_abandon(slot) comes first
 * (host must last until then). Returns false when done has already run,
 * from inside this call: with host itself for an address literal, or with
 * NULL when the resolution cannot start. */
bool sg__redis_resolve(uv_loop_t *loop, const char *host, void *owner, sg__redis_resolved_cb done,
                       struct sg__redis_resolve **slot);

/* Forgets the resolution in *slot, if any: done will not run. It frees
 * itself when it completes. */
void sg__redis_resolve_abandon(struct sg__redis_resolve **slot);

/* The owner's callbacks for one connection (sg__redis_connect). */
struct sg__redis_hooks {
    redisConnectCallback *connected;       /* hiredis: the connect finished (or failed) */
    redisDisconnectCallback *disconnected; /* hiredis: a connected context goes away */
    /* The glue lives until hiredis frees the context: then closing(owner)
     * runs (hiredis' cleanup hook, inside redisAsyncFree or hiredis' own
     * teardown; the poll handle starts closing), and closed(owner) once
     * that handle has closed and the glue is freed, on a later loop phase:
     * the last time the glue touches owner. Either may be NULL. */
    void (*closing)(void *owner);
    void (*closed)(void *owner);
};

/* Starts the TCP connect to addr:port, addr an address literal (hiredis
 * would resolve a name with a blocking getaddrinfo), its socket hooked into
 * loop, ac->data = owner and the hooks set. Returns the context, or NULL
 * with nothing left to free and why set ("out of memory", hiredis' error,
 * "cannot poll the socket: ..."). */
redisAsyncContext *sg__redis_connect(uv_loop_t *loop, const char *addr, uint16_t port, void *owner,
                                     const struct sg__redis_hooks *hooks, char *why, size_t whylen);

/* Writes why ac's connection failed or ended, given the status of hiredis'
 * connect or disconnect callback: hiredis' error, or dflt when there is
 * none (status REDIS_OK is a clean close). */
void sg__redis_why(char *why, size_t whylen, const redisAsyncContext *ac, int status,
                   const char *dflt);

/* Arms timer to call retry after *backoff_ms, then doubles *backoff_ms, up
 * to SG_REDIS_BACKOFF_MAX (the caller resets it to SG_REDIS_BACKOFF_MIN
 * once connected). */
void sg__redis_retry_later(uv_timer_t *timer, uv_timer_cb retry, uint64_t *backoff_ms);

/* The loop r runs on (given to sg_redis_new). */
uv_loop_t *sg__redis_loop(const struct sg_redis *r);

#endif
