/*
 * Rate limiting of requests by the matched route's rules (config.h,
 * struct sg_rl_rule), local to this process: one GCRA bucket per rule and
 * key value in a table shared by every worker (ratelimit/gcra.h).
 *
 * Every rule of the route applies in order, and all must admit: a request
 * that one rule rejects has already been counted by the rules before it
 * (as with Envoy's descriptors), which errs on the strict side only for
 * clients already over a limit. A rule whose key the request lacks (no
 * such header, cookie or query parameter) does not apply to it.
 *
 * The answer carries the IETF RateLimit fields (draft-ietf-httpapi-
 * ratelimit-headers): RateLimit-Policy lists every rule that applied as
 * "name";q=<requests>;w=<seconds>, and RateLimit gives the most restrictive
 * one's state as "name";r=<remaining>;t=<seconds>, t being the time until
 * the bucket is full again on an admitted response, and until one more
 * request is allowed (as Retry-After) on a 429. Fields of the same names
 * from the backend are replaced, not repeated.
 */
#ifndef SG_RATELIMIT_LIMIT_H
#define SG_RATELIMIT_LIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "http/http.h"
#include "server/server.h"

#define SG_RL_HDR_MAX 512 /* room for the two header lines */

/* Creates the process-wide table for max_keys buckets (limits.rate_limit_keys)
 * before the workers start. Returns 0 or -ENOMEM. */
int sg_ratelimit_init(size_t max_keys);
void sg_ratelimit_cleanup(void);

struct sg_rl_verdict {
    bool limited;            /* a rule rejected the request: answer 429 */
    uint64_t retry_after_ms; /* limited: until the rejecting rule admits one more */
    size_t hdr_len;
    char hdr[SG_RL_HDR_MAX]; /* "RateLimit-Policy: ...\r\nRateLimit: ...\r\n", or empty */
};

/* Applies route's rules to the request msg on c. Fills v; hdr is empty
 * when no rule applied. now_us: a monotonic clock in microseconds. */
void sg_ratelimit_check(const struct sg_route *route, const struct sg_conn *c,
                        const struct sg_http_msg *msg, uint64_t now_us, struct sg_rl_verdict *v);

/* Buckets in use and bytes held by the table (metrics, bench). */
size_t sg_ratelimit_keys(void);
size_t sg_ratelimit_bytes(void);

#endif
