/*
 * The memory tier's sharded LRU store (see store.h for the layout, the
 * memory bound and the expiry rule).
 *
 * A stored entry is reached through a node owned by its shard: the node
 * holds the hash chain link, the LRU links and one reference to the entry,
 * so an entry itself is never written after sg_cache_entry_new (refs aside)
 * and may sit in several stores. Nodes and links are only touched under
 * the shard's lock. Entries taken out of a shard (evicted, replaced,
 * removed, expired) are collected on a local list and their references
 * dropped after the lock is released, so freeing never happens under a
 * lock.
 *
 * A purge by prefix scans the shards one by one; a response requested
 * before it and stored after the scan passed its shard would survive it.
 * So the purge is first written in a ring of recent prefix purges, and a
 * put checks the ring, under its shard's lock, when the entry's version is
 * older than the last purge: either the put comes before the scan of its
 * shard (and the scan removes the entry) or after the purge was written
 * (and the put sees it). An entry older than a purge pushed out of the
 * ring is refused whatever its key (a spurious miss, never a stale hit).
 */
#include "cache/store.h"

#include "core/hash.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MIN_BUCKETS 16u
#define PURGE_RING  64u

struct node {
    struct node *hnext;       /* hash chain; also the to-free list once unlinked */
    struct node *prev, *next; /* LRU: prev toward the most recent (head) */
    struct sg_cache_entry *e; /* one reference, the store's */
    uint64_t h;               /* mixed hash: shard and bucket */
};

struct shard {
    _Alignas(64) pthread_mutex_t lock;
    struct node **buckets; /* nbuckets chains; NULL until the first put */
    size_t nbuckets;       /* power of two */
    size_t count;
    size_t bytes; /* sum of charges, <= cap */
    size_t cap;
    struct node *head, *tail; /* most and least recently used */
    uint64_t evictions, inserts, hits, misses, expired;
};

struct sg_cache_store {
    _Atomic size_t cap;
    uint64_t seed;
    _Atomic uint64_t clock; /* last version handed out */
    _Atomic uint64_t all;   /* version of the last invalidate_all */
    _Atomic uint64_t stamps[SG_CACHE_GROUP_SLOTS];
    /* Recent prefix purges (see the top): ring[next % PURGE_RING] is the
     * oldest once the ring is full; floor is the newest version pushed
     * out. purged: the version of the last purge, read without the lock. */
    pthread_mutex_t purge_lock;
    struct purge {
        char *prefix; /* owned; NULL: an empty slot */
        size_t len;
        uint64_t version;
    } ring[PURGE_RING];
    unsigned next;
    uint64_t floor;
    _Atomic uint64_t purged;
    struct shard shards[SG_CACHE_SHARDS];
};

/* Entry header, the key's NUL, the node and two allocator headers. */
_Static_assert(sizeof(struct sg_cache_entry) + 1 + sizeof(struct node) + 32 <=
                   SG_CACHE_ENTRY_OVERHEAD,
               "SG_CACHE_ENTRY_OVERHEAD covers the per-entry memory");
_Static_assert((SG_CACHE_SHARDS & (SG_CACHE_SHARDS - 1)) == 0, "shards: a power of two");

static uint64_t mixed(const struct sg_cache_store *s, uint64_t key_hash) {
    return sg_mix64(key_hash ^ s->seed);
}

static struct shard *shard_of(struct sg_cache_store *s, uint64_t h) {
    return &s->shards[h >> 58 & (SG_CACHE_SHARDS - 1)];
}

/* ---- entries ---------------------------------------------------------- */

struct sg_cache_entry *sg_cache_entry_new(uint64_t key_hash, const char *key, size_t key_len,
                                          const char *data, size_t len, uint64_t stored_ms,
                                          uint64_t expires_ms, uint64_t stale_until_ms) {
    size_t size, charge;
    if (__builtin_add_overflow(sizeof(struct sg_cache_entry) + 1, key_len, &size) ||
        __builtin_add_overflow(size, len, &size) || __builtin_add_overflow(key_len, len, &charge) ||
        __builtin_add_overflow(charge, (size_t)SG_CACHE_ENTRY_OVERHEAD, &charge))
        return NULL;
    struct sg_cache_entry *e = malloc(size);
    if (e == NULL)
        return NULL;
    char *p = (char *)(e + 1);
    atomic_init(&e->refs, 1);
    e->key_hash = key_hash;
    e->key = p;
    e->key_len = key_len;
    if (key_len)
        memcpy(p, key, key_len);
    p[key_len] = '\0';
    e->data = p + key_len + 1;
    e->len = len;
    if (len)
        memcpy(e->data, data, len);
    e->stored_ms = stored_ms;
    e->expires_ms = expires_ms;
    e->stale_until_ms = stale_until_ms < expires_ms ? expires_ms : stale_until_ms;
    e->charge = charge;
    e->group = 0;
    e->version = 0;
    return e;
}

void sg_cache_entry_ref(struct sg_cache_entry *e) {
    atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
}

void sg_cache_entry_unref(struct sg_cache_entry *e) {
    if (e != NULL && atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1)
        free(e);
}

/* ---- shard internals (caller holds the shard lock) --------------------- */

static int key_eq(const struct sg_cache_entry *e, uint64_t key_hash, const char *key,
                  size_t key_len) {
    return e->key_hash == key_hash && e->key_len == key_len &&
           (key_len == 0 || memcmp(e->key, key, key_len) == 0);
}

/* The link that points at key's node (so it can be unlinked), or NULL. */
static struct node **find_locked(struct shard *sh, uint64_t h, uint64_t key_hash, const char *key,
                                 size_t key_len) {
    if (sh->buckets == NULL)
        return NULL;
    struct node **pp = &sh->buckets[h & (sh->nbuckets - 1)];
    for (; *pp != NULL; pp = &(*pp)->hnext)
        if ((*pp)->h == h && key_eq((*pp)->e, key_hash, key, key_len))
            return pp;
    return NULL;
}

static void lru_unlink_locked(struct shard *sh, struct node *n) {
    if (n->prev)
        n->prev->next = n->next;
    else
        sh->head = n->next;
    if (n->next)
        n->next->prev = n->prev;
    else
        sh->tail = n->prev;
    n->prev = n->next = NULL;
}

static void lru_push_front_locked(struct shard *sh, struct node *n) {
    n->prev = NULL;
    n->next = sh->head;
    if (sh->head)
        sh->head->prev = n;
    else
        sh->tail = n;
    sh->head = n;
}

/* Unlinks n (whose chain link is *pp) from the table and the LRU, and
 * pushes it on *dead for release_nodes after the unlock. */
static void take_out_locked(struct shard *sh, struct node **pp, struct node **dead) {
    struct node *n = *pp;
    *pp = n->hnext;
    lru_unlink_locked(sh, n);
    sh->count--;
    sh->bytes -= n->e->charge;
    n->hnext = *dead;
    *dead = n;
}

/* The chain link pointing at n (n is in the table). */
static struct node **link_of_locked(struct shard *sh, struct node *n) {
    struct node **pp = &sh->buckets[n->h & (sh->nbuckets - 1)];
    while (*pp != n)
        pp = &(*pp)->hnext;
    return pp;
}

/* Doubles the bucket array; on allocation failure keeps the old one. */
static void grow_locked(struct shard *sh) {
    size_t nb = sh->nbuckets * 2;
    struct node **b = calloc(nb, sizeof(*b));
    if (b == NULL)
        return;
    for (size_t i = 0; i < sh->nbuckets; i++) {
        struct node *n = sh->buckets[i], *next;
        for (; n != NULL; n = next) {
            next = n->hnext;
            n->hnext = b[n->h & (nb - 1)];
            b[n->h & (nb - 1)] = n;
        }
    }
    free(sh->buckets);
    sh->buckets = b;
    sh->nbuckets = nb;
}

/* Drops the store's references of nodes taken out, and frees the nodes. */
static void release_nodes(struct node *dead) {
    while (dead != NULL) {
        struct node *next = dead->hnext;
        sg_cache_entry_unref(dead->e);
        free(dead);
        dead = next;
    }
}

/* ---- store ------------------------------------------------------------ */

struct sg_cache_store *sg_cache_store_new(size_t cap_bytes) {
    struct sg_cache_store *s = aligned_alloc(64, sizeof(*s));
    if (s == NULL)
        return NULL;
    memset(s, 0, sizeof(*s));
    s->cap = cap_bytes;
    s->seed = sg_random_seed(s);
    pthread_mutex_init(&s->purge_lock, NULL);
    for (size_t i = 0; i < SG_CACHE_SHARDS; i++) {
        pthread_mutex_init(&s->shards[i].lock, NULL);
        s->shards[i].cap = cap_bytes / SG_CACHE_SHARDS;
    }
    return s;
}

void sg_cache_store_free(struct sg_cache_store *s) {
    if (s == NULL)
        return;
    sg_cache_clear(s);
    for (size_t i = 0; i < SG_CACHE_SHARDS; i++) {
        pthread_mutex_destroy(&s->shards[i].lock);
        free(s->shards[i].buckets);
    }
    for (size_t i = 0; i < PURGE_RING; i++)
        free(s->ring[i].prefix);
    pthread_mutex_destroy(&s->purge_lock);
    free(s);
}

static bool invalidated(struct sg_cache_store *s, const struct sg_cache_entry *e);

/* Whether a prefix purge newer than e covers it (or one pushed out of the
 * ring might). */
static bool purged(struct sg_cache_store *s, const struct sg_cache_entry *e) {
    if (e->version == 0 || e->version > atomic_load_explicit(&s->purged, memory_order_acquire))
        return false;
    bool hit = false;
    pthread_mutex_lock(&s->purge_lock);
    if (e->version <= s->floor)
        hit = true;
    for (size_t i = 0; !hit && i < PURGE_RING; i++) {
        const struct purge *p = &s->ring[i];
        hit = p->prefix != NULL && e->version <= p->version && e->key_len >= p->len &&
              memcmp(e->key, p->prefix, p->len) == 0;
    }
    pthread_mutex_unlock(&s->purge_lock);
    return hit;
}

bool sg_cache_outdated(struct sg_cache_store *s, const struct sg_cache_entry *e) {
    return invalidated(s, e) || purged(s, e);
}

int sg_cache_put(struct sg_cache_store *s, struct sg_cache_entry *e) {
    uint64_t h = mixed(s, e->key_hash);
    struct shard *sh = shard_of(s, h);
    if (e->charge > atomic_load(&s->cap) / SG_CACHE_SHARDS)
        return -E2BIG;
    struct node *n = malloc(sizeof(*n));
    if (n == NULL)
        return -ENOMEM;
    sg_cache_entry_ref(e);
    n->e = e;
    n->h = h;
    struct node *dead = NULL;

    pthread_mutex_lock(&sh->lock);
    if (sh->buckets == NULL) {
        sh->buckets = calloc(MIN_BUCKETS, sizeof(*sh->buckets));
        if (sh->buckets == NULL) {
            pthread_mutex_unlock(&sh->lock);
            sg_cache_entry_unref(e);
            free(n);
            return -ENOMEM;
        }
        sh->nbuckets = MIN_BUCKETS;
    }
    if (e->charge > sh->cap) { /* the cap went down meanwhile */
        pthread_mutex_unlock(&sh->lock);
        sg_cache_entry_unref(e);
        free(n);
        return -E2BIG;
    }
    if (sg_cache_outdated(s, e)) { /* under the shard's lock: see the top */
        pthread_mutex_unlock(&sh->lock);
        sg_cache_entry_unref(e);
        free(n);
        return -ESTALE;
    }
    struct node **pp = find_locked(sh, h, e->key_hash, e->key, e->key_len);
    if (pp != NULL)
        take_out_locked(sh, pp, &dead);
    while (sh->bytes + e->charge > sh->cap) { /* tail != NULL: charge <= cap */
        take_out_locked(sh, link_of_locked(sh, sh->tail), &dead);
        sh->evictions++;
    }
    struct node **b = &sh->buckets[h & (sh->nbuckets - 1)];
    n->hnext = *b;
    *b = n;
    lru_push_front_locked(sh, n);
    sh->count++;
    sh->bytes += e->charge;
    sh->inserts++;
    if (sh->count > sh->nbuckets)
        grow_locked(sh);
    pthread_mutex_unlock(&sh->lock);

    release_nodes(dead);
    return 0;
}

static bool invalidated(struct sg_cache_store *s, const struct sg_cache_entry *e) {
    if (e->version == 0)
        return false;
    uint64_t stamp =
        atomic_load_explicit(&s->stamps[e->group % SG_CACHE_GROUP_SLOTS], memory_order_acquire);
    uint64_t all = atomic_load_explicit(&s->all, memory_order_acquire);
    return e->version <= stamp || e->version <= all;
}

uint64_t sg_cache_version(struct sg_cache_store *s) {
    return atomic_fetch_add_explicit(&s->clock, 1, memory_order_acq_rel) + 1;
}

/* Raises *slot to v (never lowers it: two invalidations that take their
 * versions in one order and store them in the other keep the newer). */
static void stamp_max(_Atomic uint64_t *slot, uint64_t v) {
    uint64_t cur = atomic_load_explicit(slot, memory_order_relaxed);
    while (cur < v && !atomic_compare_exchange_weak_explicit(slot, &cur, v, memory_order_release,
                                                             memory_order_relaxed))
        ;
}

void sg_cache_invalidate_group(struct sg_cache_store *s, uint64_t group) {
    stamp_max(&s->stamps[group % SG_CACHE_GROUP_SLOTS], sg_cache_version(s));
}

void sg_cache_invalidate_all(struct sg_cache_store *s) {
    stamp_max(&s->all, sg_cache_version(s));
}

void sg_cache_store_set_cap(struct sg_cache_store *s, size_t cap_bytes) {
    atomic_store(&s->cap, cap_bytes);
    for (size_t i = 0; i < SG_CACHE_SHARDS; i++) {
        struct shard *sh = &s->shards[i];
        struct node *dead = NULL;
        pthread_mutex_lock(&sh->lock);
        sh->cap = cap_bytes / SG_CACHE_SHARDS;
        while (sh->bytes > sh->cap && sh->tail != NULL) {
            take_out_locked(sh, link_of_locked(sh, sh->tail), &dead);
            sh->evictions++;
        }
        pthread_mutex_unlock(&sh->lock);
        release_nodes(dead);
    }
}

struct sg_cache_entry *sg_cache_get(struct sg_cache_store *s, uint64_t key_hash, const char *key,
                                    size_t key_len, uint64_t now_ms) {
    uint64_t h = mixed(s, key_hash);
    struct shard *sh = shard_of(s, h);
    struct sg_cache_entry *e = NULL;
    struct node *dead = NULL;

    pthread_mutex_lock(&sh->lock);
    struct node **pp = find_locked(sh, h, key_hash, key, key_len);
    if (pp != NULL && (now_ms >= (*pp)->e->stale_until_ms || invalidated(s, (*pp)->e))) {
        take_out_locked(sh, pp, &dead);
        sh->expired++;
    } else if (pp != NULL) {
        struct node *n = *pp;
        lru_unlink_locked(sh, n);
        lru_push_front_locked(sh, n);
        e = n->e;
        sg_cache_entry_ref(e);
    }
    if (e)
        sh->hits++;
    else
        sh->misses++;
    pthread_mutex_unlock(&sh->lock);

    release_nodes(dead);
    return e;
}

int sg_cache_remove(struct sg_cache_store *s, uint64_t key_hash, const char *key, size_t key_len) {
    uint64_t h = mixed(s, key_hash);
    struct shard *sh = shard_of(s, h);
    struct node *dead = NULL;

    pthread_mutex_lock(&sh->lock);
    struct node **pp = find_locked(sh, h, key_hash, key, key_len);
    if (pp != NULL)
        take_out_locked(sh, pp, &dead);
    pthread_mutex_unlock(&sh->lock);

    release_nodes(dead);
    return dead != NULL;
}

/* Writes a purge of prefix in the ring (before the scan: see the top).
 * Without memory for the copy, the purge covers every older entry. */
static void note_purge(struct sg_cache_store *s, const char *prefix, size_t len) {
    uint64_t v = sg_cache_version(s);
    char *copy = malloc(len);
    if (copy)
        memcpy(copy, prefix, len);
    pthread_mutex_lock(&s->purge_lock);
    struct purge *p = &s->ring[s->next++ % PURGE_RING];
    if (p->prefix && p->version > s->floor)
        s->floor = p->version;
    char *old = p->prefix;
    p->prefix = copy;
    p->len = len;
    p->version = v;
    if (copy == NULL && v > s->floor)
        s->floor = v;
    if (v > atomic_load_explicit(&s->purged, memory_order_relaxed))
        atomic_store_explicit(&s->purged, v, memory_order_release);
    pthread_mutex_unlock(&s->purge_lock);
    free(old);
}

size_t sg_cache_remove_prefix(struct sg_cache_store *s, const char *prefix, size_t len) {
    size_t removed = 0;
    if (len > 0)
        note_purge(s, prefix, len);
    for (size_t i = 0; i < SG_CACHE_SHARDS; i++) {
        struct shard *sh = &s->shards[i];
        struct node *dead = NULL;
        pthread_mutex_lock(&sh->lock);
        for (size_t b = 0; sh->buckets != NULL && b < sh->nbuckets; b++) {
            struct node **pp = &sh->buckets[b];
            while (*pp != NULL) {
                const struct sg_cache_entry *e = (*pp)->e;
                if (e->key_len >= len && (len == 0 || memcmp(e->key, prefix, len) == 0)) {
                    take_out_locked(sh, pp, &dead); /* *pp is now the next node */
                    removed++;
                } else {
                    pp = &(*pp)->hnext;
                }
            }
        }
        pthread_mutex_unlock(&sh->lock);
        release_nodes(dead);
    }
    return removed;
}

void sg_cache_clear(struct sg_cache_store *s) {
    sg_cache_remove_prefix(s, NULL, 0);
}

void sg_cache_stats(struct sg_cache_store *s, struct sg_cache_stats *out) {
    memset(out, 0, sizeof(*out));
    out->cap = atomic_load(&s->cap);
    for (size_t i = 0; i < SG_CACHE_SHARDS; i++) {
        struct shard *sh = &s->shards[i];
        pthread_mutex_lock(&sh->lock);
        out->entries += sh->count;
        out->bytes += sh->bytes;
        out->evictions += sh->evictions;
        out->inserts += sh->inserts;
        out->hits += sh->hits;
        out->misses += sh->misses;
        out->expired += sh->expired;
        pthread_mutex_unlock(&sh->lock);
    }
}
