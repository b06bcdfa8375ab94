/*
 * Request coalescing: while one request for a key is on its way to the
 * backend (or to the Redis tier), the others for the same key wait for it
 * instead of going too. A fill is that one request's promise, shared by
 * every worker thread: a table of pending fills (sharded, a lock each)
 * keyed like the store. The first request to miss makes the fill and
 * leads it; later ones join it and wait, each on its own worker; the
 * leader finishes it with the stored entry (DONE) or without (FAILED: not
 * cacheable, or the client went away; ERROR: the backend failed), which
 * takes it out of the table and wakes every worker that has a waiter,
 * through sg_cache_fill_wake.
 *
 * Ownership: a fill is reference-counted (the table holds none; the leader
 * and each waiter hold one). Any thread.
 */
#ifndef SG_CACHE_FILL_H
#define SG_CACHE_FILL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache/store.h"

enum sg_fill_state { SG_FILL_PENDING = 0, SG_FILL_DONE, SG_FILL_FAILED, SG_FILL_ERROR };

struct sg_cache_fill {
    _Atomic uint32_t refs;
    _Atomic int state; /* enum sg_fill_state */
    _Atomic int l2;    /* the leader's Redis lookup: 0 none, 1 pending, 2 missed */
    struct sg_cache_fill *hnext;
    uint64_t key_hash;
    struct sg_cache_entry *entry; /* DONE: the response (a reference); set before state */
    uint64_t waiters;             /* bit (worker index % 64) of workers with waiters */
    unsigned leader_worker;
    bool in_table;
    size_t key_len;
    char key[];
};

/* Called by sg_cache_fill_finish (from the finishing thread) for each
 * worker with waiters. Set once at start-up. */
extern void (*sg_cache_fill_wake)(unsigned worker);

/* Joins the pending fill of key, or makes one. *leader is true when the
 * caller made it. Returns the fill with a reference for the caller, or
 * NULL when out of memory (the caller then goes to the backend alone). */
struct sg_cache_fill *sg_cache_fill_join(uint64_t key_hash, const char *key, size_t key_len,
                                         unsigned worker, bool *leader);

/* The leader's end: state (DONE with e, or FAILED/ERROR with e NULL). Takes
 * its own reference on e. Wakes the waiting workers. Only once per fill. */
void sg_cache_fill_finish(struct sg_cache_fill *f, enum sg_fill_state state,
                          struct sg_cache_entry *e);

/* Wakes f's waiters without finishing it (the leader's Redis lookup
 * missed: the leader goes on to the backend; waiters recheck). */
void sg_cache_fill_poke(struct sg_cache_fill *f);

static inline int sg_cache_fill_state(struct sg_cache_fill *f) {
    return atomic_load_explicit(&f->state, memory_order_acquire);
}

void sg_cache_fill_ref(struct sg_cache_fill *f);
void sg_cache_fill_unref(struct sg_cache_fill *f);

/* Fills pending now (for tests and metrics). */
size_t sg_cache_fill_pending(void);

#endif
