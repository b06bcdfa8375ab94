/*
 * Background refresh of a cached response (stale-while-revalidate): the
 * client has been answered with the stale copy, and the gateway fetches the
 * URL from the backend by itself, on the worker's loop, feeding the
 * response to the request's cache state through the same hooks the proxy
 * uses (sg_cache_on_response / _on_body / _on_done). One fresh connection
 * per refresh, closed at its end; nothing is sent to any client.
 *
 * Every function here runs on the worker thread of w.
 */
#ifndef SG_CACHE_REFRESH_H
#define SG_CACHE_REFRESH_H

struct sg_cache_req;
struct sg_worker;
struct sg_pool;

/* Fetches, in the background on w's loop, the GET whose request head is
 * q's copy (sg_cache_req_head), from a server of pool chosen with
 * sg_pool_pick, and feeds the response to q through sg_cache_on_response /
 * sg_cache_on_body / sg_cache_on_done, then frees q with sg_cache_req_free.
 * Takes ownership of q in every case (also on immediate failure: then q is
 * freed at once, which fails q's fill so its waiters go to the backend).
 * pool must belong to w->cfg: a reference on w->cfg is held for as long as
 * pool is used. */
void sg_cache_refresh_start(struct sg_worker *w, const struct sg_pool *pool,
                            struct sg_cache_req *q);

/* Background fetches in flight on this worker (for shutdown and tests). */
unsigned sg_cache_refresh_count(const struct sg_worker *w);

/* Stops every background fetch of w (worker shutdown): closes their
 * sockets; their q are freed at once (their fills fail). The memory of each
 * fetch goes in its close callbacks, so w's loop must run once more. */
void sg_cache_refresh_stop_all(struct sg_worker *w);

#endif
