/*
 * Shared tier (L2) of the response cache: entries in the Redis that several
 * gateways share, reached through a worker's own struct sg_redis link, and
 * the invalidation records that make older entries misses everywhere.
 *
 * Keys, all behind the link's prefix P (sg_redis_prefix):
 *   P "cache:e:" key    a hash per entry: t (Redis' time of storing, in
 *                       microseconds), p (the entry's URL path), d (data);
 *                       it expires with the entry's ttl.
 *   P "cache:ip:" path  a path invalidation: its time (us).
 *   P "cache:ik"        the prefix invalidations: a hash prefix -> time (us).
 *   P "cache:ia"        the last "invalidate all": its time (us).
 * An entry is a miss when an invalidation that covers it has a time at or
 * after its own (same-microsecond ties count as invalidated); the lookup
 * script deletes such an entry. Every record lives ttl_ms (the L2 ttl,
 * past which no entry stored before it can exist): the stamps carry a
 * PEXPIRE of ttl_ms, the prefix hash's PEXPIRE is pushed to ttl_ms by every
 * prefix invalidation, which also drops the fields older than ttl_ms.
 *
 * Every call is one EVAL (the scripts read Redis' TIME, so all gateways
 * share one clock); invalidations also PUBLISH "<kind><arg>" on
 * P "cache:inval" in the same script, for the subscribers (pubsub.h) that
 * purge their L1. Everything runs on the link's loop thread.
 */
#ifndef SG_CACHE_L2_H
#define SG_CACHE_L2_H

#include <stddef.h>
#include <stdint.h>

struct sg_redis;

/* status: 1 hit (data/len valid only during the callback; age_ms = Redis
 * time now - Redis time when stored, >= 0), 0 miss, -ETIMEDOUT when no
 * answer within budget_ms (a later answer is dropped), other negative errno
 * for Redis errors / not connected (as sg_redis_reply_cb: -ENOTCONN,
 * -EREMOTEIO, -ECONNRESET, -ECANCELED when the link is freed, ...; -EPROTO
 * for an answer that does not parse). Called exactly once, from the loop,
 * never from inside the call. */
typedef void (*sg_cache_l2_cb)(void *arg, int status, const char *data, size_t len,
                               uint64_t age_ms);

/* Looks up key (binary-safe, key_len bytes) in Redis. path (the URL path of
 * the entry, no query) is used to check path invalidations; an entry stored
 * under another path is a miss. budget_ms 0: no budget of its own (the
 * link's command timeout, 1 s, still applies). A pending lookup holds a
 * timer on the link's loop until its answer or budget; the caller keeps
 * running the loop until handles have closed. Returns 0 (cb will be called)
 * or negative errno (no callback): -EINVAL, -ENOMEM, -ESHUTDOWN. */
int sg_cache_l2_get(struct sg_redis *r, const char *key, size_t key_len, const char *path,
                    size_t path_len, uint64_t budget_ms, sg_cache_l2_cb cb, void *arg);

/* Stores data under key for ttl_ms (>= 1), recording Redis' time of storing
 * and the path. Fire and forget: nothing is said when it fails. */
void sg_cache_l2_put(struct sg_redis *r, const char *key, size_t key_len, const char *path,
                     size_t path_len, const char *data, size_t len, uint64_t ttl_ms);

enum sg_cache_inval {
    SG_CACHE_INVAL_PATH = 'p',   /* entries whose path equals arg */
    SG_CACHE_INVAL_PREFIX = 'k', /* entries whose key starts with arg */
    SG_CACHE_INVAL_ALL = 'a',    /* every entry (arg is ignored) */
};

/* Records an invalidation in Redis so that L2 entries stored before it are
 * misses from then on (PATH: entries whose path equals arg; PREFIX: entries
 * whose key starts with arg; ALL: every entry), and PUBLISHes the message
 * "<kind char><arg>" (e.g. "p/users/7", "k/api/", "a") on the channel
 * sg_cache_l2_channel(prefix of r) — all in one EVAL. The records must not
 * grow without bound: each lives at most ttl_ms (the l2 ttl, past which no
 * entry stored before it can exist). Fire and forget; cb may be NULL (else
 * called once, from the loop, with 0 or negative errno as for
 * sg_cache_l2_cb). Returns 0, or a negative errno with no callback:
 * -EINVAL (bad kind, ttl_ms 0, arg NULL with len > 0), -ENOMEM,
 * -ESHUTDOWN. */
int sg_cache_l2_invalidate(struct sg_redis *r, enum sg_cache_inval kind, const char *arg,
                           size_t len, uint64_t ttl_ms, void (*cb)(void *arg, int err),
                           void *cbarg);

/* The channel name: prefix + "cache:inval". Writes into out (NUL-terminated),
 * returns length or -ENAMETOOLONG. prefix NULL counts as "". */
int sg_cache_l2_channel(const char *prefix, char *out, size_t outlen);

#endif
