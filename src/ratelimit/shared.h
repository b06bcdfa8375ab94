/*
 * Shared rate limiting: with a `redis:` section, the buckets of a request
 * live in Redis and one server-side script decides every rule of the
 * request atomically, in one round trip, with Redis' clock; so N gateways
 * together admit the configured rate. Each worker thread has its own Redis
 * link on its own loop (hiredis pipelines the requests on it); the request
 * waits, reading stopped, for the answer.
 *
 * When Redis answers later than the budget (redis.rate_limit_budget) or not
 * at all, the request is decided locally with this gateway's share of the
 * rate (count / gateways, at least 1; the number of gateways is what the
 * registry in Redis last said), and the worker keeps deciding locally for
 * a second before it asks Redis again. Each switch is logged once and
 * counted (sg_rl_shared_fallbacks).
 */
#ifndef SG_RATELIMIT_SHARED_H
#define SG_RATELIMIT_SHARED_H

#include <stdbool.h>
#include <stdint.h>

#include "ratelimit/limit.h"

struct sg_redis;
struct sg_rl_pending;

/* Called with the verdict (owned by the callee for the call only); c is the
 * connection given to sg_rl_shared_check, alive (the pending check of a
 * closing connection is dropped with sg_rl_shared_drop, no call). */
typedef void (*sg_rl_shared_cb)(struct sg_conn *c, const struct sg_rl_verdict *v);

/* Asks Redis for the verdict of route's rules on msg. Returns the pending
 * check (the answer comes through cb, from w's loop), or NULL when it was
 * decided at once, locally (Redis unreachable or the worker in its local
 * second): then v is filled. */
struct sg_rl_pending *sg_rl_shared_check(struct sg_worker *w, struct sg_redis *r,
                                         uint64_t budget_ms, const struct sg_route *route,
                                         struct sg_conn *c, const struct sg_http_msg *msg,
                                         sg_rl_shared_cb cb, struct sg_rl_verdict *v);

/* The connection of p is closing: no callback will come. */
void sg_rl_shared_drop(struct sg_rl_pending *p);

/* The gateway registry: every second the main thread records this gateway
 * in Redis and reads how many there are (the local share's divisor). */
void sg_rl_shared_register(struct sg_redis *main_link);
uint32_t sg_rl_shared_gateways(void);

/* Times a worker fell back to local decisions (metrics, tests). */
uint64_t sg_rl_shared_fallbacks(void);

#endif
