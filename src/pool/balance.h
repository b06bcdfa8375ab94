/*
 * Balance algorithms: small pure functions over a candidate list that the
 * caller fills per request from the pool and the shared server state. A
 * candidate that is not usable is never returned; -1 means none is.
 *
 * Per-pool mutable state (the smooth weighted round robin's current
 * weights, the hash ring) lives in struct sg_balancer, built once per
 * config snapshot by sg_balancer_new and owned by the pool (pool->balancer).
 */
#ifndef SG_POOL_BALANCE_H
#define SG_POOL_BALANCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"

struct sg_candidate {
    uint32_t weight;   /* effective weight (slow start applied), >= 1 */
    uint32_t inflight; /* requests in flight, all workers */
    bool usable;
};

struct sg_balancer;

/* Builds the balancer state for pool (hash ring over its primaries and over
 * its backups, SWRR weights). Returns NULL on bad input or out of memory. */
struct sg_balancer *sg_balancer_new(const struct sg_pool *pool);
void sg_balancer_free(struct sg_balancer *b);

/* round_robin: the next usable candidate after *cursor (atomically advanced). */
int sg_balance_round_robin(_Atomic uint32_t *cursor, const struct sg_candidate *c, size_t n);

/* weighted: smooth weighted round robin (nginx's): no bursts to the heaviest.
 * Thread-safe (b holds a lock); `backup` selects the backup servers' state. */
int sg_balance_weighted(struct sg_balancer *b, bool backup, const struct sg_candidate *c, size_t n);

/* least_conn: fewest inflight/weight; ties broken by rnd. */
int sg_balance_least_conn(const struct sg_candidate *c, size_t n, uint64_t rnd);

/* p2c: two distinct random usable candidates, fewer inflight/weight wins. */
int sg_balance_p2c(const struct sg_candidate *c, size_t n, uint64_t rnd);

/* hash: consistent hashing (a ring with virtual nodes per unit of weight):
 * the candidate owning key_hash, walking on to the next usable one. Adding
 * or removing one of N servers moves about 1/N of the keys. */
int sg_balance_hash(const struct sg_balancer *b, bool backup, uint64_t key_hash,
                    const struct sg_candidate *c, size_t n);

/* 64-bit hash of a key (for hash_key values). */
uint64_t sg_hash64(const void *data, size_t len);

#endif
