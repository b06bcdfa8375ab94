/*
 * Internals shared inside src/redis (and with the cache's L2 tier, which
 * times its lookups on the link's loop): the libuv glue that drives a
 * hiredis async context, used by the link (redis.c) and the subscriber
 * (pubsub.c), and the link's loop.
 *
 * The glue replaces the adapter in <hiredis/adapters/libuv.h>: the 0.14
 * adapter drops the error status libuv reports for a socket error (a
 * refused connect, a reset) after libuv has already stopped the poll
 * handle, so the context would hang until a timeout. Ours hands such a
 * wakeup to hiredis, which then finds the error.
 */
#ifndef SG_REDIS_REDIS_INT_H
#define SG_REDIS_REDIS_INT_H

#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <uv.h>

struct sg_redis;

/* Hooks ac's socket into loop. The glue lives until hiredis frees ac: then
 * closing(owner) runs (hiredis' cleanup hook, inside redisAsyncFree or
 * hiredis' own teardown; the poll handle starts closing), and closed(owner)
 * once that handle has closed and the glue is freed, on a later loop phase:
 * the last time the glue touches owner. Either may be NULL. Returns 0, or a
 * negative errno with nothing hooked (the caller frees ac). */
int sg__redis_io_attach(uv_loop_t *loop, redisAsyncContext *ac, void *owner,
                        void (*closing)(void *owner), void (*closed)(void *owner));

/* The loop r runs on (given to sg_redis_new). */
uv_loop_t *sg__redis_loop(const struct sg_redis *r);

#endif
