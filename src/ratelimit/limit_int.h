/*
 * Internals shared by limit.c (local decisions) and shared.c (decisions in
 * Redis): a request's rules as items, and the verdict with its fields from
 * per-rule results. Not for use outside src/ratelimit/.
 */
#ifndef SG_RATELIMIT_LIMIT_INT_H
#define SG_RATELIMIT_LIMIT_INT_H

#include "ratelimit/gcra.h"
#include "ratelimit/limit.h"

#define SG_RL_MAX_RULES 16 /* rules of a route that count; more are not applied */

/* One rule that applies to a request: its rate for this request (override,
 * class or its own) and its bucket. */
struct sg__rl_item {
    const struct sg_rl_rule *rule;
    const struct sg_rl_rate *rate;
    uint64_t hash;   /* rule id mixed with the value's hash: the local bucket */
    const char *val; /* the key's value, in the request (valid while it is parsed) */
    size_t vl;
};

size_t sg__rl_items(const struct sg_route *route, const struct sg_conn *c,
                    const struct sg_http_msg *msg, struct sg__rl_item *items, size_t max);

/* res[0..n): the results of the rules decided, in order; a rejection, if
 * any, is the last. Fills v (limited, retry after, the header lines). */
void sg__rl_verdict(const struct sg_route *route, const struct sg__rl_item *items,
                    const struct sg_rl_result *res, size_t n, struct sg_rl_verdict *v);

/* Decides the items in the local table with count and burst divided by
 * share (at least 1 each), buckets keyed hash ^ salt; stops at the first
 * rejection. *nres: results written. */
void sg__rl_local(const struct sg__rl_item *items, size_t n, uint32_t share, uint64_t salt,
                  uint64_t now_us, struct sg_rl_result *res, size_t *nres);

#endif
