/*
 * The cache on the control plane (main thread): the admin endpoints
 *   POST /api/v1/cache/purge   {"key": "/p?q"[, "host": "h"]} | {"path": "/p"} |
 *                              {"prefix": "/api/"} | {"all": true}
 *   GET  /api/v1/cache/stats   counters, memory tier, Redis tier
 * and the invalidation messages other gateways publish through Redis.
 */
#ifndef SG_CACHE_CACHE_ADMIN_H
#define SG_CACHE_CACHE_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "admin/admin.h"

struct sg_redis;

/* The main thread's Redis link (NULL: none) and the Redis tier's ttl
 * (0: no Redis tier); a purge is recorded there and published. */
void sg_cache_admin_set_redis(struct sg_redis *r, uint64_t l2_ttl_ms);

/* Whether the invalidation channel's subscription is active (stats). */
void sg_cache_admin_set_subscribed(bool up);

/* The handler for "/api/v1/cache/" (arg unused). */
bool sg_cache_admin(void *arg, const struct sg_admin_request *req, struct sg_admin_response *resp);

/* An invalidation message ("<kind><arg>") received on the channel. */
void sg_cache_on_message(const char *data, size_t len);

#endif
