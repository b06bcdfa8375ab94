/*
 * The response cache on the request path: lookups in the memory tier (L1)
 * and the Redis tier (L2), coalescing of misses, stale copies, storing
 * responses, invalidation, and the cache's counters.
 *
 * A request on a route with `cache` goes through sg_cache_request before
 * the proxy. A hit is answered there. A miss that goes to the backend
 * carries a struct sg_cache_req (c->creq, then the exchange's): it leads
 * the fill of its key, holds the stale copy for stale-if-error, and
 * collects the response to store it. The proxy calls the sg_cache_on_*
 * hooks as the response goes by.
 */
#ifndef SG_CACHE_CACHE_H
#define SG_CACHE_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache/store.h"
#include "config/config.h"
#include "http/http.h"
#include "server/server.h"

struct sg_cache_req;

/* ---- process ---- */

/* Makes the store with cfg's memory cap (main thread, before the workers). */
int sg_cache_init(const struct sg_config *cfg);
/* A reload: the new cap. */
void sg_cache_reconfigure(const struct sg_config *cfg);
/* Frees the store (after the workers are gone). */
void sg_cache_shutdown(void);
/* The store, or NULL before sg_cache_init. */
struct sg_cache_store *sg_cache_store(void);

/* ---- request path (worker threads) ---- */

enum sg_cache_verdict {
    SG_CACHE_PASS = 0,   /* go to the backend (c->creq may be set: the proxy takes it) */
    SG_CACHE_ANSWERED,   /* answered from the cache; the head is consumed, c is kept */
    SG_CACHE_DONE,       /* answered, and c is closing (or closed) */
    SG_CACHE_WAIT,       /* c waits (state SG_CONN_FILL) for a fill; its head stays in rbuf */
    SG_CACHE_UNSATISFIED /* only-if-cached with no copy to give: the caller answers 504 */
};

/* The cache's part of a request whose head (head_len bytes at the front of
 * c->rbuf) was routed to route (route->cache.enabled). target is the path
 * with its query, host the authority. extra (RateLimit lines) goes on a
 * cached answer. Called again for the same head when c wakes from a wait. */
enum sg_cache_verdict sg_cache_request(struct sg_conn *c, const struct sg_http_msg *msg,
                                       size_t head_len, const struct sg_route *route,
                                       const char *target, size_t target_len, const char *host,
                                       size_t host_len, const char *extra, size_t extra_len);

/* A fill finished or a wait timed out: the worker's waiting connections
 * that can go on are processed again (worker thread). */
void sg_cache_worker_wake(struct sg_worker *w);
/* c's wait passed its deadline (sweep). */
void sg_cache_wait_timeout(struct sg_conn *c);
/* c closes or stops using the cache for its request: its creq is freed. */
void sg_cache_conn_drop(struct sg_conn *c);

/* The proxy could not take c's request (it returned status, before any
 * exchange started): with a 5xx and a stale copy within stale-if-error,
 * the copy is served (ANSWERED or DONE); PASS: nothing was done. */
enum sg_cache_verdict sg_cache_fallback(struct sg_conn *c, int status);

/* ---- proxy hooks (the exchange owns q) ---- */

/* The response head resp arrived. Returns true when the response must be
 * dropped and the stale copy served instead (a 5xx within stale-if-error). */
bool sg_cache_on_response(struct sg_cache_req *q, struct sg_worker *w,
                          const struct sg_http_msg *resp);
/* Body bytes as forwarded (raw chunked framing when raw_chunked). */
void sg_cache_on_body(struct sg_cache_req *q, const char *p, size_t n, bool raw_chunked);
/* The whole response went by: store it. */
void sg_cache_on_done(struct sg_cache_req *q, struct sg_worker *w);
/* Whether q still means to store the response it is given: false once the
 * head was found not storable, or the body too large. */
bool sg_cache_req_storing(const struct sg_cache_req *q);
/* The backend failed before a response (502/503/504 to come): true when a
 * stale copy may be served instead. Marks the fill as failed by an error. */
bool sg_cache_stale_usable(struct sg_cache_req *q, struct sg_worker *w);
/* Serves q's stale copy on c (whose exchange is gone) and frees q; then
 * the connection goes on as after any response (keep or close). */
void sg_cache_serve_stale(struct sg_conn *c, struct sg_cache_req *q, bool keep, bool http10,
                          bool head_only);
/* The copy of the request head q keeps (for a background refresh). */
const char *sg_cache_req_head(const struct sg_cache_req *q, size_t *len);
/* Frees q (an unfinished fill fails, its waiters go to the backend). */
void sg_cache_req_free(struct sg_cache_req *q);

/* ---- invalidation ---- */

/* Drops the cached responses of path (every query, host and variant) here
 * and, with Redis, in L2 and on every gateway (published). Any thread;
 * redis is the calling thread's link or NULL. */
void sg_cache_invalidate_path(struct sg_redis *redis, uint64_t l2_ttl_ms, const char *path,
                              size_t len);

/* Applies an invalidation to this gateway's memory tier only (a message
 * from another gateway, or the admin API, which also tells Redis): kind
 * 'p' a path, 'k' a key prefix (the request target's start), 'a' all.
 * Returns the entries removed at once (a path's are dropped lazily: 0).
 * Any thread. */
size_t sg_cache_purge_local(char kind, const char *arg, size_t len);

/* ---- counters ---- */

struct sg_cache_counters {
    uint64_t hits, misses, stale, coalesced, not_modified, passes, stores, store_failures,
        invalidations, l2_hits, l2_misses, l2_errors, l2_stores;
};
/* Sums of every worker's counters. */
void sg_cache_counters(struct sg_cache_counters *out);

#endif
