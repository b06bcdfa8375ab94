/*
 * Local rate-limit engine: GCRA (the generic cell rate algorithm) on one
 * number per key, in a sharded hash table shared by every worker thread.
 *
 * GCRA is a token bucket written as a single time: a key's TAT (theoretical
 * arrival time) is when its bucket will be full again. A limit of `count`
 * requests per `period_ms` with capacity `burst` has the emission interval
 * T = period / count and admits a request at `now` when, after charging T,
 * the TAT is at most burst * T ahead of now. A fresh key therefore admits
 * exactly `burst` requests at once and then one every T; a key whose TAT is
 * in the past is the same as a fresh key, which is what lets idle keys be
 * forgotten at any moment without changing any answer.
 *
 * Time: callers pass monotonic microseconds; TATs are kept in nanoseconds
 * on the same clock (now_us * 1000) so that T is exact for every rate the
 * config accepts (5/min is T = 12 s, 3/s is T = 333,333,334 ns: T is rounded
 * up, so the limit is never more lenient than configured, by at most 1 ns
 * per request). uint64 nanoseconds last 584 years of uptime.
 *
 * The table (struct sg_rl_table) keeps, per key, only the 64-bit key hash
 * and the TAT: 16 bytes a slot, no pointers, no allocation per request. It
 * is split into SG_RL_SHARDS shards chosen by the hash, each behind its own
 * mutex held for a lookup and the GCRA step (tens of nanoseconds), so
 * workers rarely contend. Inside a shard, a key may live in one of two
 * buckets of SG_RL_BUCKET_SLOTS slots (a bucketized cuckoo table: a lookup
 * reads at most 8 slots, two cache lines). A new key takes a free slot or
 * the slot of an expired key (TAT <= now) in its buckets, else moves other
 * keys to their alternate bucket along a short bounded path (at most
 * SG_RL_MOVE_LOOKS buckets looked into), else, when every candidate slot
 * holds an active key, evicts the key with the smallest TAT among its 8
 * candidate slots (counted by sg_rl_table_evictions).
 *
 * Memory, for a table made for max_keys keys: sg_rl_table_bytes() <=
 * sg_rl_table_bytes_max(max_keys) = 16,448 bytes of table head + 16 bytes *
 * SG_RL_SHARDS * slots_per_shard, where slots_per_shard is m + 6*sqrt(m) + 8
 * (m = max_keys / SG_RL_SHARDS, rounded up; 6 sqrt(m) absorbs the uneven
 * spread of keys over shards) at a load of 4/5, rounded up to whole
 * buckets. Per key of max_keys that is 22.0 bytes at 1e6 (21.97 MB in
 * all), 20.6 at 1e7, 26.5 at 1e5, 46 at 1e4 and 148 at 1e3 (small tables
 * keep at least 5 buckets a shard: 98 KB). A shard's slots are allocated on
 * its first use, so a table with few keys holds less.
 *
 * Eviction: with at most max_keys active keys (TAT > now) evictions do not
 * happen in practice: measured over 8 seeds, the first one came at no less
 * than 1.18 times max_keys active for max_keys = 1e6, 1.35 for 1e5, 1.9 for
 * 1e4 and 4.7 for 1e3. Beyond that they do; an evicted key starts again
 * from a full bucket when it comes back, which makes the limit more
 * lenient, only for the least constrained keys (smallest TAT) and only
 * under more than max_keys active keys. While the table is that full, a
 * new key costs a few microseconds (the search for room looks into up to
 * SG_RL_MOVE_LOOKS buckets; about 3 us at 1e6 keys). Size max_keys for the
 * keys active within one refill time (burst * T), not all keys ever seen.
 *
 * Key collisions: two keys whose 64-bit hashes are equal share one bucket
 * (both are limited together, never more leniently). For n keys the chance
 * of any such pair is about n^2 / 2^65 (3e-8 for a million keys). The table
 * mixes key hashes with a random per-table seed before placing them, so a
 * client choosing keys cannot aim them at one bucket without the seed; the
 * caller should still hash keys with a function clients cannot invert if
 * keys are attacker-chosen and full 64-bit collisions matter.
 */
#ifndef SG_RATELIMIT_GCRA_H
#define SG_RATELIMIT_GCRA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SG_RL_SHARDS        256          /* shards per table, each with its lock */
#define SG_RL_BUCKET_SLOTS  4            /* slots per bucket (64 bytes, a cache line) */
#define SG_RL_SLOT_BYTES    16           /* key hash + TAT */
#define SG_RL_MOVE_LOOKS    64           /* buckets looked into to make room for a key */
#define SG_RL_MAX_KEYS      (1ull << 32) /* max_keys above this is cut to it */
#define SG_RL_PERIOD_MAX_MS (1ull << 40) /* longer periods (34 years) are cut to it */

/* A limit: `count` requests per `period_ms`, bucket capacity `burst`: at
 * most `burst` requests at once, refilled at count / period. burst 0 counts
 * as 1. count 0 rejects every request (retry_after_ms = reset_ms =
 * period_ms, at least 1). period_ms 0 admits every request (remaining =
 * burst, times 0). Same layout as the config's struct sg_rl_rate. */
struct sg_rl_limit {
    uint32_t count;
    uint64_t period_ms;
    uint32_t burst;
};

/* Times are rounded up to whole milliseconds, so a client that waits
 * retry_after_ms is admitted and one that waits a millisecond less is not
 * (for the RateLimit and Retry-After fields, round up again to seconds). */
struct sg_rl_result {
    bool allowed;
    uint32_t remaining;      /* requests that could still be made right now (after this
                                one if allowed); 0 when rejected */
    uint64_t reset_ms;       /* time until the bucket is full again */
    uint64_t retry_after_ms; /* rejected: time until one request would be allowed; 0 if
                                allowed */
};

/* The emission interval T of l in nanoseconds: period / count rounded up,
 * at least 1; 0 when count or period_ms is 0 (see struct sg_rl_limit). The
 * shared (Redis) mode must use the same T to agree with the local mode. */
uint64_t sg_rl_interval_ns(const struct sg_rl_limit *l);

/* Pure GCRA step on one key's state. *tat is the key's theoretical arrival
 * time in nanoseconds on the clock of now_us * 1000 (0 = fresh key; any
 * value <= now is the same as fresh). now_us is monotonic microseconds; it
 * may run a little behind the now of an earlier call (another worker's
 * cached loop time): the answer is then slightly stricter, never wrong.
 * Fills *out; updates *tat only when the request is allowed. No overflow
 * for any input (arithmetic saturates). */
void sg_rl_gcra(uint64_t *tat, const struct sg_rl_limit *l, uint64_t now_us,
                struct sg_rl_result *out);

struct sg_rl_table;

/* A table for at most max_keys active keys (cut to [1, SG_RL_MAX_KEYS];
 * sizing in the comment at the top). Allocates the table head (16 KiB);
 * each shard's slots are allocated on the shard's first use and
 * never grow, so sg_rl_table_bytes() never exceeds
 * sg_rl_table_bytes_max(max_keys). Returns NULL when out of memory. The
 * caller owns the table and frees it with sg_rl_table_free once no thread
 * uses it. */
struct sg_rl_table *sg_rl_table_new(size_t max_keys);
void sg_rl_table_free(struct sg_rl_table *t);

/* Checks and counts one request for key_hash (a 64-bit hash of rule id and
 * key, computed by the caller) against l at now_us, filling *out as
 * sg_rl_gcra does. Thread-safe: takes the key's shard lock. Never
 * allocates except a shard's slots on its first use; if that allocation
 * fails the request is decided as for a fresh key (allowed) and the next
 * request retries. The same key may be checked against different limits
 * (a config reload changed the rate): the TAT carries over. */
void sg_rl_check(struct sg_rl_table *t, uint64_t key_hash, const struct sg_rl_limit *l,
                 uint64_t now_us, struct sg_rl_result *out);

/* Whether key_hash has a slot now, and its TAT (ns) in *tat_ns if so. A
 * key may have a slot with a TAT in the past (expired, reusable at once).
 * Thread-safe; for the admin API and tests. */
bool sg_rl_table_peek(struct sg_rl_table *t, uint64_t key_hash, uint64_t *tat_ns);

/* Counters, safe from any thread (relaxed reads, exact when no check runs):
 * keys: slots holding a key, expired ones included (an expired key keeps
 * its slot until a new key takes it); active: keys with TAT > now (scans
 * every slot under each shard's lock in turn: for metrics and tests, not
 * the request path); slots: slot capacity of the whole table; bytes: memory
 * held (table head and the shards allocated so far); evictions: active keys
 * pushed out by new keys since the table was made. */
size_t sg_rl_table_keys(const struct sg_rl_table *t);
size_t sg_rl_table_active(struct sg_rl_table *t, uint64_t now_us);
size_t sg_rl_table_slots(const struct sg_rl_table *t);
size_t sg_rl_table_bytes(const struct sg_rl_table *t);
uint64_t sg_rl_table_evictions(const struct sg_rl_table *t);

/* The most memory a table made with sg_rl_table_new(max_keys) holds. */
size_t sg_rl_table_bytes_max(size_t max_keys);

#endif
