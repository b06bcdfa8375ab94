/*
 * The table of pending fills (see fill.h).
 */
#include "cache/fill.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define FILL_SHARDS  64
#define FILL_BUCKETS 64 /* per shard: pending fills are few (one per key in flight) */

struct fill_shard {
    _Alignas(64) pthread_mutex_t lock;
    struct sg_cache_fill *buckets[FILL_BUCKETS];
    size_t count;
};

static struct fill_shard shards[FILL_SHARDS] = {
    [0 ... FILL_SHARDS - 1] = {.lock = PTHREAD_MUTEX_INITIALIZER}};

void (*sg_cache_fill_wake)(unsigned worker);

static struct fill_shard *shard_of(uint64_t h) {
    return &shards[(h >> 32) % FILL_SHARDS];
}

static struct sg_cache_fill **bucket_of(struct fill_shard *sh, uint64_t h) {
    return &sh->buckets[h % FILL_BUCKETS];
}

void sg_cache_fill_ref(struct sg_cache_fill *f) {
    atomic_fetch_add_explicit(&f->refs, 1, memory_order_relaxed);
}

void sg_cache_fill_unref(struct sg_cache_fill *f) {
    if (f && atomic_fetch_sub_explicit(&f->refs, 1, memory_order_acq_rel) == 1) {
        sg_cache_entry_unref(f->entry);
        free(f);
    }
}

struct sg_cache_fill *sg_cache_fill_join(uint64_t key_hash, const char *key, size_t key_len,
                                         unsigned worker, bool *leader) {
    struct fill_shard *sh = shard_of(key_hash);
    pthread_mutex_lock(&sh->lock);
    for (struct sg_cache_fill *f = *bucket_of(sh, key_hash); f; f = f->hnext) {
        if (f->key_hash == key_hash && f->key_len == key_len && memcmp(f->key, key, key_len) == 0) {
            f->waiters |= 1ull << (worker % 64);
            sg_cache_fill_ref(f);
            pthread_mutex_unlock(&sh->lock);
            *leader = false;
            return f;
        }
    }
    struct sg_cache_fill *f = malloc(sizeof(*f) + key_len);
    if (f == NULL) {
        pthread_mutex_unlock(&sh->lock);
        return NULL;
    }
    memset(f, 0, sizeof(*f));
    atomic_init(&f->refs, 1);
    atomic_init(&f->state, SG_FILL_PENDING);
    atomic_init(&f->l2, 0);
    f->key_hash = key_hash;
    f->key_len = key_len;
    memcpy(f->key, key, key_len);
    f->leader_worker = worker;
    struct sg_cache_fill **b = bucket_of(sh, key_hash);
    f->hnext = *b;
    *b = f;
    f->in_table = true;
    sh->count++;
    pthread_mutex_unlock(&sh->lock);
    *leader = true;
    return f;
}

static void wake(uint64_t mask) {
    if (sg_cache_fill_wake == NULL)
        return;
    for (unsigned i = 0; i < 64; i++)
        if (mask & (1ull << i))
            sg_cache_fill_wake(i);
}

void sg_cache_fill_finish(struct sg_cache_fill *f, enum sg_fill_state state,
                          struct sg_cache_entry *e) {
    struct fill_shard *sh = shard_of(f->key_hash);
    pthread_mutex_lock(&sh->lock);
    if (atomic_load(&f->state) != SG_FILL_PENDING) {
        pthread_mutex_unlock(&sh->lock);
        return;
    }
    if (f->in_table) {
        struct sg_cache_fill **pp = bucket_of(sh, f->key_hash);
        while (*pp != f)
            pp = &(*pp)->hnext;
        *pp = f->hnext;
        f->in_table = false;
        sh->count--;
    }
    if (state == SG_FILL_DONE && e) {
        sg_cache_entry_ref(e);
        f->entry = e;
    } else if (state == SG_FILL_DONE) {
        state = SG_FILL_FAILED;
    }
    atomic_store_explicit(&f->state, state, memory_order_release);
    uint64_t mask = f->waiters;
    pthread_mutex_unlock(&sh->lock);
    wake(mask);
}

void sg_cache_fill_poke(struct sg_cache_fill *f) {
    struct fill_shard *sh = shard_of(f->key_hash);
    pthread_mutex_lock(&sh->lock);
    uint64_t mask = f->waiters | 1ull << (f->leader_worker % 64);
    pthread_mutex_unlock(&sh->lock);
    wake(mask);
}

size_t sg_cache_fill_pending(void) {
    size_t n = 0;
    for (size_t i = 0; i < FILL_SHARDS; i++) {
        pthread_mutex_lock(&shards[i].lock);
        n += shards[i].count;
        pthread_mutex_unlock(&shards[i].lock);
    }
    return n;
}
