/*
 * A Redis subscriber: one connection in subscribe mode, on a libuv loop (the
 * main thread's), listening to one channel; the cache uses it to hear the
 * invalidations other gateways publish (cache/l2.h) and purge its L1.
 *
 * Like the link (redis.h) it connects by itself, never blocking (a host
 * name is resolved with uv_getaddrinfo), and after a failure or a lost
 * connection reconnects and subscribes again with a backoff of 100 ms
 * doubling to 5 s; a loss is logged once and the recovery once. Connecting
 * (name resolution included) and the subscription's confirmation have 1 s.
 * A dead server is seen at once when its socket closes (EOF, reset); TCP
 * keepalive covers a silent peer, slowly. Messages published while no
 * subscription is active are lost: on_state(false) tells the caller, which
 * should treat the gap as "anything may have been invalidated".
 *
 * Ownership: the caller owns the struct sg_redis_sub and frees it with
 * sg_redis_sub_free; used from the loop's thread only.
 */
#ifndef SG_REDIS_PUBSUB_H
#define SG_REDIS_PUBSUB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct sg_redis_sub;

/* Connects to host:port on loop (starting on the next loop turn) and
 * SUBSCRIBEs to channel (binary-safe up to its NUL). on_message(arg, data,
 * len) runs on the loop for each message published on channel (data is
 * binary-safe, valid only during the call). on_state(arg, connected) (may
 * be NULL) is called when the subscription becomes active (true) and when
 * an active one is lost (false), alternately, starting with true. Both run
 * from the loop, never from inside a call to this module, and may call
 * sg_redis_sub_free. Returns NULL on bad input (NULL loop or callback,
 * empty host or channel, port 0) or ENOMEM. */
struct sg_redis_sub *sg_redis_sub_new(uv_loop_t *loop, const char *host, uint16_t port,
                                      const char *channel,
                                      void (*on_message)(void *arg, const char *data, size_t len),
                                      void (*on_state)(void *arg, bool connected), void *arg);

/* Whether the subscription is active now (messages are being received). */
bool sg_redis_sub_connected(const struct sg_redis_sub *s);

/* Frees s; the caller keeps running the loop until handles have closed. No
 * callback after this returns (it may be called from one). */
void sg_redis_sub_free(struct sg_redis_sub *s);

#endif
