/*
 * GCRA and the sharded table of key states (see gcra.h for the algorithm,
 * the sizing and what eviction means).
 *
 * Layout: the table head holds SG_RL_SHARDS shards, one cache line each on
 * Linux (lock, slot array pointer, counters), so two workers on different
 * shards never write the same line. A shard's slot array is nbuckets buckets of
 * four 16-byte slots, 64-byte aligned: a bucket is one cache line. A slot
 * with key 0 is empty (never used); an empty slot has TAT 0, so "TAT <= now"
 * alone says whether a slot may be taken.
 *
 * Placement: a key's stored hash h is the caller's hash mixed with the
 * table's seed. The top 8 bits of h choose the shard, bits 0-31 and 24-55
 * the two buckets (multiply-shift, any bucket count). A key is always in one
 * of its two buckets, so a lookup reads 8 slots and stops. Keys are moved
 * only to their other bucket, under the shard lock, and never change the
 * TAT they carry.
 *
 * Ownership: the table owns the slot arrays; sg_rl_table_free frees them.
 * Slots are only read or written under their shard's lock; the counters in
 * a shard are atomics so that metrics may read them without it.
 */
#include "ratelimit/gcra.h"

#include "core/hash.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NS_PER_US 1000u
#define NS_PER_MS 1000000u

/* ---- GCRA ------------------------------------------------------------- */

static uint64_t sat_mul(uint64_t a, uint64_t b) {
    uint64_t r;
    return __builtin_mul_overflow(a, b, &r) ? UINT64_MAX : r;
}

static uint64_t ceil_ms(uint64_t ns) {
    return ns / NS_PER_MS + (ns % NS_PER_MS != 0);
}

uint64_t sg_rl_interval_ns(const struct sg_rl_limit *l) {
    if (l->count == 0 || l->period_ms == 0)
        return 0;
    uint64_t p = l->period_ms < SG_RL_PERIOD_MAX_MS ? l->period_ms : SG_RL_PERIOD_MAX_MS;
    uint64_t period_ns = p * NS_PER_MS; /* < 2^60 */
    return (period_ns + l->count - 1) / l->count;
}

/* The bucket is burst * T of time: a request charges T to the TAT and is
 * admitted when the TAT then lies at most burst * T ahead of now. Every
 * difference below is of a larger minus a smaller time (tat0 >= now, next >
 * now), so nothing wraps; products saturate, and a TAT that would pass
 * 2^64 ns rejects. */
void sg_rl_gcra(uint64_t *tat, const struct sg_rl_limit *l, uint64_t now_us,
                struct sg_rl_result *out) {
    uint64_t now = sat_mul(now_us, NS_PER_US);
    uint32_t burst = l->burst ? l->burst : 1;
    uint64_t t = sg_rl_interval_ns(l);
    if (t == 0) {
        bool open = l->count != 0; /* period 0: no limit; count 0: nothing passes */
        uint64_t wait = open ? 0 : (l->period_ms ? l->period_ms : 1);
        *out = (struct sg_rl_result){.allowed = open,
                                     .remaining = open ? burst : 0,
                                     .reset_ms = wait,
                                     .retry_after_ms = wait};
        return;
    }
    uint64_t cap = sat_mul(t, burst);
    uint64_t tat0 = *tat > now ? *tat : now;
    if (tat0 > UINT64_MAX - t) { /* the TAT would run off the clock (absurd inputs only) */
        *out = (struct sg_rl_result){.allowed = false,
                                     .remaining = 0,
                                     .reset_ms = ceil_ms(tat0 - now),
                                     .retry_after_ms = UINT64_MAX / NS_PER_MS};
        return;
    }
    uint64_t next = tat0 + t;
    uint64_t wait = next - now; /* >= t: how far ahead the TAT would be */
    if (wait <= cap) {
        *tat = next;
        /* (cap - wait) / t <= burst - 1 because wait >= t and cap <= burst * t */
        *out = (struct sg_rl_result){.allowed = true,
                                     .remaining = (uint32_t)((cap - wait) / t),
                                     .reset_ms = ceil_ms(wait),
                                     .retry_after_ms = 0};
    } else {
        *out = (struct sg_rl_result){.allowed = false,
                                     .remaining = 0,
                                     .reset_ms = ceil_ms(tat0 - now),
                                     .retry_after_ms = ceil_ms(wait - cap)};
    }
}

/* ---- table ------------------------------------------------------------ */

struct slot {
    uint64_t key; /* mixed hash (never 0 once used); 0 = empty */
    uint64_t tat; /* ns; <= now: expired, the slot may be taken */
};

struct shard {
    _Alignas(64) pthread_mutex_t lock;
    struct slot *slots;         /* nbuckets * SG_RL_BUCKET_SLOTS; NULL until first use */
    _Atomic size_t keys;        /* slots with key != 0 */
    _Atomic uint64_t evictions; /* active keys pushed out */
};

struct sg_rl_table {
    uint32_t nbuckets; /* per shard, >= 2 */
    uint64_t seed;     /* mixed into every key hash (placement only) */
    _Atomic size_t shards_allocated;
    struct shard shards[SG_RL_SHARDS];
};

#define BUCKET_BYTES ((size_t)SG_RL_BUCKET_SLOTS * SG_RL_SLOT_BYTES)
_Static_assert(sizeof(struct slot) == SG_RL_SLOT_BYTES, "slot is 16 bytes");
_Static_assert(sizeof(struct shard) % 64 == 0, "a shard is whole cache lines");

static uint64_t isqrt(uint64_t v) {
    uint64_t r = 0;
    for (uint64_t bit = 1ull << 62; bit != 0; bit >>= 2) {
        if (v >= r + bit) {
            v -= r + bit;
            r = (r >> 1) + bit;
        } else {
            r >>= 1;
        }
    }
    return r;
}

/* Buckets per shard for max_keys: the shard's share m plus 6 standard
 * deviations of the binomial spread of keys over shards (sqrt(m) bounds
 * it) plus 8, at 4/5 load, in whole buckets, at least 2. Measured with
 * SG_RL_MOVE_LOOKS 64: the first eviction comes at about 0.87 load in the
 * fullest shard, 1.18 times max_keys or more for large tables, more for
 * small ones (gcra.h). */
static uint32_t buckets_for(size_t max_keys) {
    uint64_t k = max_keys < 1 ? 1 : max_keys;
    if (k > SG_RL_MAX_KEYS)
        k = SG_RL_MAX_KEYS;
    uint64_t m = (k + SG_RL_SHARDS - 1) / SG_RL_SHARDS;
    uint64_t want = m + 6 * isqrt(m) + 8;
    uint64_t slots = (want * 5 + 3) / 4;
    uint64_t nb = (slots + SG_RL_BUCKET_SLOTS - 1) / SG_RL_BUCKET_SLOTS;
    return nb < 2 ? 2 : (uint32_t)nb;
}

size_t sg_rl_table_bytes_max(size_t max_keys) {
    return sizeof(struct sg_rl_table) + (size_t)SG_RL_SHARDS * buckets_for(max_keys) * BUCKET_BYTES;
}

struct sg_rl_table *sg_rl_table_new(size_t max_keys) {
    struct sg_rl_table *t = aligned_alloc(64, sizeof(*t));
    if (t == NULL)
        return NULL;
    memset(t, 0, sizeof(*t));
    t->nbuckets = buckets_for(max_keys);
    t->seed = sg_random_seed(t);
    atomic_init(&t->shards_allocated, 0);
    for (size_t i = 0; i < SG_RL_SHARDS; i++) {
        pthread_mutex_init(&t->shards[i].lock, NULL);
        atomic_init(&t->shards[i].keys, 0);
        atomic_init(&t->shards[i].evictions, 0);
    }
    return t;
}

void sg_rl_table_free(struct sg_rl_table *t) {
    if (t == NULL)
        return;
    for (size_t i = 0; i < SG_RL_SHARDS; i++) {
        pthread_mutex_destroy(&t->shards[i].lock);
        free(t->shards[i].slots);
    }
    free(t);
}

/* The stored form of a key hash; 0 marks an empty slot, so the one hash
 * that mixes to 0 shares a bucket with the one that mixes to 1. */
static uint64_t stored_key(const struct sg_rl_table *t, uint64_t key_hash) {
    uint64_t h = sg_mix64(key_hash ^ t->seed);
    return h ? h : 1;
}

static struct shard *shard_of(struct sg_rl_table *t, uint64_t h) {
    return &t->shards[h >> 56];
}

static uint32_t reduce(uint32_t x, uint32_t n) {
    return (uint32_t)(((uint64_t)x * n) >> 32);
}

/* The two distinct buckets of h (nb >= 2). */
static void buckets_of(uint64_t h, uint32_t nb, uint32_t b[2]) {
    b[0] = reduce((uint32_t)h, nb);
    b[1] = reduce((uint32_t)(h >> 24), nb);
    if (b[1] == b[0])
        b[1] = b[0] + 1 == nb ? 0 : b[0] + 1;
}

static uint32_t other_bucket(uint64_t h, uint32_t nb, uint32_t b) {
    uint32_t bs[2];
    buckets_of(h, nb, bs);
    return bs[0] == b ? bs[1] : bs[0];
}

static struct slot *bucket_at(const struct shard *s, uint32_t b) {
    return &s->slots[(size_t)b * SG_RL_BUCKET_SLOTS];
}

/* The shard's slots, allocated zeroed on first use; NULL if out of memory. */
static struct slot *shard_slots_locked(struct sg_rl_table *t, struct shard *s) {
    if (s->slots == NULL) {
        size_t bytes = (size_t)t->nbuckets * BUCKET_BYTES;
        s->slots = aligned_alloc(64, bytes);
        if (s->slots == NULL)
            return NULL;
        memset(s->slots, 0, bytes);
        atomic_fetch_add_explicit(&t->shards_allocated, 1, memory_order_relaxed);
    }
    return s->slots;
}

static struct slot *find_locked(struct slot *slots, uint32_t nb, uint64_t h) {
    uint32_t b[2];
    buckets_of(h, nb, b);
    for (int i = 0; i < 2; i++) {
        struct slot *bk = &slots[(size_t)b[i] * SG_RL_BUCKET_SLOTS];
        for (int j = 0; j < SG_RL_BUCKET_SLOTS; j++)
            if (bk[j].key == h)
                return &bk[j];
    }
    return NULL;
}

/* Index in bucket b of a slot a new key may take (empty or expired), or -1. */
static int free_in(const struct slot *slots, uint32_t b, uint64_t now) {
    const struct slot *bk = &slots[(size_t)b * SG_RL_BUCKET_SLOTS];
    for (int j = 0; j < SG_RL_BUCKET_SLOTS; j++)
        if (bk[j].tat <= now)
            return j;
    return -1;
}

/* A bucket reached by the search for room: moving the key in `slot` of
 * bucket `parent` (a step earlier) to its other bucket would land here. */
struct reach {
    uint32_t bucket;
    int16_t parent; /* -1: one of the new key's own buckets */
    int16_t slot;
};

static bool reached(const struct reach *q, int n, uint32_t b) {
    for (int i = 0; i < n; i++)
        if (q[i].bucket == b)
            return true;
    return false;
}

/* Breadth-first search, from the new key's two buckets, for a chain of keys
 * each moving to its other bucket that ends at a free or expired slot. It
 * looks into at most SG_RL_MOVE_LOOKS buckets (a cache miss each) and never
 * reaches a bucket twice, so no slot is used twice along a chain. Performs
 * the moves and returns the slot left for the new key (in one of its
 * buckets), or NULL if there is no such chain within the budget. */
static struct slot *make_room_locked(struct shard *s, uint32_t nb, const uint32_t b[2],
                                     uint64_t now) {
    struct reach q[SG_RL_MOVE_LOOKS + 2];
    int n = 0, looks = 0;
    q[n++] = (struct reach){b[0], -1, -1};
    q[n++] = (struct reach){b[1], -1, -1};
    for (int head = 0; head < n; head++) {
        struct slot *bk = bucket_at(s, q[head].bucket);
        uint32_t alts[SG_RL_BUCKET_SLOTS];
        for (int j = 0; j < SG_RL_BUCKET_SLOTS; j++) {
            alts[j] = other_bucket(bk[j].key, nb, q[head].bucket);
            __builtin_prefetch(bucket_at(s, alts[j])); /* four misses at once, not in turn */
        }
        for (int j = 0; j < SG_RL_BUCKET_SLOTS; j++) {
            if (looks++ == SG_RL_MOVE_LOOKS)
                return NULL;
            uint32_t alt = alts[j];
            int f = free_in(s->slots, alt, now);
            if (f >= 0) {
                struct slot *dst = &bucket_at(s, alt)[f];
                if (dst->key == 0)
                    atomic_fetch_add_explicit(&s->keys, 1, memory_order_relaxed);
                *dst = bk[j];
                dst = &bk[j];
                for (int i = head; q[i].parent >= 0; i = q[i].parent) {
                    struct slot *src = &bucket_at(s, q[q[i].parent].bucket)[q[i].slot];
                    *dst = *src;
                    dst = src;
                }
                return dst;
            }
            if (!reached(q, n, alt))
                q[n++] = (struct reach){alt, (int16_t)head, (int16_t)j};
        }
    }
    return NULL;
}

/* The slot for new key h: free or expired in its buckets, else made free
 * by moving keys, else the one of its 8 with the smallest TAT (evicted). */
static struct slot *insert_locked(struct shard *s, uint32_t nb, uint64_t h, uint64_t now) {
    uint32_t b[2];
    buckets_of(h, nb, b);
    struct slot *to = NULL;
    for (int i = 0; i < 2 && to == NULL; i++) {
        int f = free_in(s->slots, b[i], now);
        if (f >= 0) {
            to = &bucket_at(s, b[i])[f];
            if (to->key == 0)
                atomic_fetch_add_explicit(&s->keys, 1, memory_order_relaxed);
        }
    }
    if (to == NULL)
        to = make_room_locked(s, nb, b, now);
    if (to == NULL) {
        for (int i = 0; i < 2; i++) {
            struct slot *bk = bucket_at(s, b[i]);
            for (int j = 0; j < SG_RL_BUCKET_SLOTS; j++)
                if (to == NULL || bk[j].tat < to->tat)
                    to = &bk[j];
        }
        atomic_fetch_add_explicit(&s->evictions, 1, memory_order_relaxed);
    }
    *to = (struct slot){.key = h, .tat = 0};
    return to;
}

void sg_rl_check(struct sg_rl_table *t, uint64_t key_hash, const struct sg_rl_limit *l,
                 uint64_t now_us, struct sg_rl_result *out) {
    uint64_t h = stored_key(t, key_hash);
    struct shard *s = shard_of(t, h);
    uint64_t now = sat_mul(now_us, NS_PER_US);
    pthread_mutex_lock(&s->lock);
    if (shard_slots_locked(t, s) == NULL) {
        pthread_mutex_unlock(&s->lock);
        uint64_t fresh = 0; /* fail open: decided as a fresh key */
        sg_rl_gcra(&fresh, l, now_us, out);
        return;
    }
    struct slot *sl = find_locked(s->slots, t->nbuckets, h);
    if (sl == NULL)
        sl = insert_locked(s, t->nbuckets, h, now);
    sg_rl_gcra(&sl->tat, l, now_us, out);
    pthread_mutex_unlock(&s->lock);
}

bool sg_rl_table_peek(struct sg_rl_table *t, uint64_t key_hash, uint64_t *tat_ns) {
    uint64_t h = stored_key(t, key_hash);
    struct shard *s = shard_of(t, h);
    pthread_mutex_lock(&s->lock);
    struct slot *sl = s->slots ? find_locked(s->slots, t->nbuckets, h) : NULL;
    if (sl != NULL && tat_ns != NULL)
        *tat_ns = sl->tat;
    pthread_mutex_unlock(&s->lock);
    return sl != NULL;
}

size_t sg_rl_table_keys(const struct sg_rl_table *t) {
    size_t n = 0;
    for (size_t i = 0; i < SG_RL_SHARDS; i++)
        n += atomic_load_explicit(&t->shards[i].keys, memory_order_relaxed);
    return n;
}

size_t sg_rl_table_active(struct sg_rl_table *t, uint64_t now_us) {
    uint64_t now = sat_mul(now_us, NS_PER_US);
    size_t nslots = (size_t)t->nbuckets * SG_RL_BUCKET_SLOTS, n = 0;
    for (size_t i = 0; i < SG_RL_SHARDS; i++) {
        struct shard *s = &t->shards[i];
        pthread_mutex_lock(&s->lock);
        for (size_t j = 0; s->slots != NULL && j < nslots; j++)
            n += s->slots[j].tat > now;
        pthread_mutex_unlock(&s->lock);
    }
    return n;
}

size_t sg_rl_table_slots(const struct sg_rl_table *t) {
    return (size_t)SG_RL_SHARDS * t->nbuckets * SG_RL_BUCKET_SLOTS;
}

size_t sg_rl_table_bytes(const struct sg_rl_table *t) {
    size_t shards = atomic_load_explicit(&t->shards_allocated, memory_order_relaxed);
    return sizeof(*t) + shards * t->nbuckets * BUCKET_BYTES;
}

uint64_t sg_rl_table_evictions(const struct sg_rl_table *t) {
    uint64_t n = 0;
    for (size_t i = 0; i < SG_RL_SHARDS; i++)
        n += atomic_load_explicit(&t->shards[i].evictions, memory_order_relaxed);
    return n;
}
