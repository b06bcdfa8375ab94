/*
 * Choosing a server of a pool for a request, and learning from the outcome.
 *
 * sg_pool_pick builds the candidate list from the pool's servers and the
 * shared server state (health, admin state, ejection, in-flight counts,
 * slow start), runs the pool's balance algorithm over the usable primaries,
 * and over the backups only when no primary is usable. sg_pool_report feeds
 * passive health: consecutive errors (and 5xx, if configured) eject a
 * server for a time that doubles with each ejection, never more than
 * max_ejection_percent of the pool at once.
 */
#ifndef SG_POOL_POOL_H
#define SG_POOL_POOL_H

#include <stdbool.h>
#include <stdint.h>

#include "config/config.h"

/* Builds the runtime parts of every pool of cfg (balancers, server state
 * records). Call once after each successful sg_config_load, before the
 * snapshot is used. Returns 0 or -ENOMEM. */
int sg_pool_prepare(struct sg_config *cfg);

/* What the balance algorithm may use about the request. */
struct sg_pick_key {
    bool has_key;      /* balance: hash and the request carries the key */
    uint64_t key_hash; /* sg_hash64 of the key */
};

/*
 * Picks a server index of pool (into pool->servers), avoiding the indexes
 * set in tried (bit i = server i, for i < 64). Returns -1 when no server is
 * usable, SG_POOL_FULL when some are usable but all of those are at their
 * max_connections (the request may wait in the queue). rnd is a fresh
 * random number from the caller.
 */
#define SG_POOL_FULL (-2)
int sg_pool_pick(const struct sg_pool *pool, const struct sg_pick_key *key, uint64_t tried,
                 uint64_t rnd);

enum sg_outcome {
    SG_OUTCOME_OK = 0, /* a response head arrived (any status but 5xx) */
    SG_OUTCOME_5XX,    /* a 5xx response */
    SG_OUTCOME_ERROR   /* connect error, reset or close before a response, timeout */
};

/* Passive health: records how a request to pool->servers[i] ended. */
void sg_pool_report(const struct sg_pool *pool, size_t i, enum sg_outcome o);

/* Retry budget: true when one more retry keeps retries within
 * retry.budget_percent of the pool's recent requests (at least 3 retries
 * per 10 s window are always allowed). Counts the retry when it says yes. */
bool sg_pool_retry_allowed(const struct sg_pool *pool);
/* Counts a request for the budget. */
void sg_pool_count_request(const struct sg_pool *pool);

#endif
