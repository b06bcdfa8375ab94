/*
 * Tests for src/cache/fill.c, request coalescing: the first join of a key
 * leads, later ones wait on the same fill (keys are told apart by hash and
 * bytes); finishing with an entry (DONE, its references counted), without
 * (FAILED, ERROR; DONE without an entry becomes FAILED); a second finish is
 * ignored; a finished key can be led again; the wake hook once per worker
 * bit with waiters; poke; the pending count; and eight threads joining 16
 * keys while one thread finishes the fills. ASan and LeakSanitizer check
 * every fill and entry is freed exactly once.
 *
 * The fill table is process-wide: every test leaves it empty.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "cache/fill.h"
#include "cache/store.h"

#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define T0    1000000ull
#define NEVER UINT64_MAX

/* FNV-1a, as in test_cache_store.c */
static uint64_t hash(const char *k, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)k[i]) * 0x100000001b3ull;
    return h;
}

static struct sg_cache_fill *join(const char *key, unsigned worker, bool *leader) {
    return sg_cache_fill_join(hash(key, strlen(key)), key, strlen(key), worker, leader);
}

static struct sg_cache_entry *entry(const char *key) {
    struct sg_cache_entry *e =
        sg_cache_entry_new(hash(key, strlen(key)), key, strlen(key), "body", 4, T0, NEVER, NEVER);
    assert_non_null(e);
    return e;
}

static uint32_t refs(struct sg_cache_fill *f) {
    return atomic_load(&f->refs);
}

static uint32_t erefs(struct sg_cache_entry *e) {
    return atomic_load(&e->refs);
}

/* ---- the wake hook: calls recorded per worker ---- */

static pthread_mutex_t wake_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned wake_calls[64];
static unsigned wake_total;

static void record_wake(unsigned worker) {
    pthread_mutex_lock(&wake_lock);
    assert_true(worker < 64);
    wake_calls[worker]++;
    wake_total++;
    pthread_mutex_unlock(&wake_lock);
}

static void wake_reset(void) {
    pthread_mutex_lock(&wake_lock);
    memset(wake_calls, 0, sizeof(wake_calls));
    wake_total = 0;
    pthread_mutex_unlock(&wake_lock);
}

static int setup(void **state) {
    (void)state;
    sg_cache_fill_wake = record_wake;
    wake_reset();
    return 0;
}

static int teardown(void **state) {
    (void)state;
    assert_int_equal(sg_cache_fill_pending(), 0);
    sg_cache_fill_wake = NULL;
    return 0;
}

/* ---- tests ---- */

static void test_leader_then_waiters(void **state) {
    (void)state;
    assert_int_equal(sg_cache_fill_pending(), 0);
    bool leader = false;
    struct sg_cache_fill *f = join("/a", 3, &leader);
    assert_non_null(f);
    assert_true(leader);
    assert_int_equal(sg_cache_fill_state(f), SG_FILL_PENDING);
    assert_int_equal(refs(f), 1);
    assert_int_equal(f->leader_worker, 3);
    assert_int_equal(f->waiters, 0);
    assert_int_equal(atomic_load(&f->l2), 0);
    assert_null(f->entry);
    assert_int_equal(f->key_len, 2);
    assert_memory_equal(f->key, "/a", 2);
    assert_int_equal(f->key_hash, hash("/a", 2));
    assert_int_equal(sg_cache_fill_pending(), 1);

    /* the same key: waiters on the same fill, each with a reference */
    struct sg_cache_fill *w1 = join("/a", 0, &leader);
    assert_ptr_equal(w1, f);
    assert_false(leader);
    struct sg_cache_fill *w2 = join("/a", 1, &leader);
    assert_ptr_equal(w2, f);
    assert_false(leader);
    struct sg_cache_fill *w3 = join("/a", 65, &leader); /* worker 65: bit 1 */
    assert_ptr_equal(w3, f);
    assert_false(leader);
    assert_int_equal(refs(f), 4);
    assert_int_equal(f->waiters, 0x3);
    assert_int_equal(sg_cache_fill_pending(), 1);

    /* other keys are other fills */
    struct sg_cache_fill *g = join("/b", 0, &leader);
    assert_true(leader);
    assert_ptr_not_equal(g, f);
    /* the same hash with other bytes, and other lengths */
    struct sg_cache_fill *c1 = sg_cache_fill_join(hash("/a", 2), "/x", 2, 0, &leader);
    assert_true(leader);
    assert_ptr_not_equal(c1, f);
    struct sg_cache_fill *c2 = sg_cache_fill_join(hash("/a", 2), "/a?", 3, 0, &leader);
    assert_true(leader);
    assert_ptr_not_equal(c2, f);
    assert_ptr_not_equal(c2, c1);
    struct sg_cache_fill *c3 = sg_cache_fill_join(hash("/a", 2), "/", 1, 0, &leader);
    assert_true(leader);
    /* the same bytes with another hash */
    struct sg_cache_fill *c4 = sg_cache_fill_join(hash("/a", 2) + 1, "/a", 2, 0, &leader);
    assert_true(leader);
    assert_ptr_not_equal(c4, f);
    assert_int_equal(sg_cache_fill_pending(), 6);
    /* and each is joined by its own key */
    struct sg_cache_fill *j = sg_cache_fill_join(hash("/a", 2), "/x", 2, 2, &leader);
    assert_ptr_equal(j, c1);
    assert_false(leader);
    sg_cache_fill_unref(j);
    j = sg_cache_fill_join(hash("/a", 2), "/a?", 3, 2, &leader);
    assert_ptr_equal(j, c2);
    assert_false(leader);
    sg_cache_fill_unref(j);
    /* the other fills did not change */
    assert_int_equal(refs(f), 4);
    assert_int_equal(f->waiters, 0x3);
    assert_int_equal(c1->waiters, 1u << 2);

    struct sg_cache_fill *all[] = {g, c1, c2, c3, c4};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        sg_cache_fill_finish(all[i], SG_FILL_FAILED, NULL);
        sg_cache_fill_unref(all[i]);
    }
    assert_int_equal(sg_cache_fill_pending(), 1);
    sg_cache_fill_finish(f, SG_FILL_FAILED, NULL);
    assert_int_equal(sg_cache_fill_pending(), 0);
    sg_cache_fill_unref(w3);
    sg_cache_fill_unref(w2);
    sg_cache_fill_unref(w1);
    sg_cache_fill_unref(f);
}

static void test_finish_done(void **state) {
    (void)state;
    bool leader;
    struct sg_cache_fill *f = join("/done", 0, &leader);
    assert_true(leader);
    struct sg_cache_fill *w1 = join("/done", 1, &leader);
    struct sg_cache_fill *w2 = join("/done", 2, &leader);
    struct sg_cache_entry *e = entry("/done");
    sg_cache_entry_ref(e); /* an extra reference of ours */
    assert_int_equal(erefs(e), 2);

    sg_cache_fill_finish(f, SG_FILL_DONE, e);
    assert_int_equal(erefs(e), 3); /* the fill took its own */
    assert_int_equal(sg_cache_fill_pending(), 0);
    /* every holder sees DONE and the entry */
    assert_int_equal(sg_cache_fill_state(w1), SG_FILL_DONE);
    assert_int_equal(sg_cache_fill_state(w2), SG_FILL_DONE);
    assert_ptr_equal(w1->entry, e);
    assert_ptr_equal(w2->entry, e);
    assert_false(f->in_table);

    /* the caller's references go first */
    sg_cache_entry_unref(e);
    sg_cache_entry_unref(e);
    assert_int_equal(erefs(e), 1);
    assert_memory_equal(w1->entry->data, "body", 4); /* still valid: the fill's */
    assert_string_equal(w1->entry->key, "/done");
    /* the leader goes, then the waiters; the last one frees fill and entry */
    sg_cache_fill_unref(f);
    assert_int_equal(refs(w1), 2);
    sg_cache_fill_unref(w1);
    assert_int_equal(erefs(w2->entry), 1);
    assert_memory_equal(w2->entry->data, "body", 4);
    sg_cache_fill_unref(w2); /* LeakSanitizer: the entry was freed with it */

    /* a waiter holding the entry beyond the fill takes its own reference */
    f = join("/done2", 0, &leader);
    w1 = join("/done2", 1, &leader);
    e = entry("/done2");
    sg_cache_fill_finish(f, SG_FILL_DONE, e);
    sg_cache_entry_unref(e); /* the maker's */
    sg_cache_fill_unref(f);
    struct sg_cache_entry *mine = w1->entry;
    sg_cache_entry_ref(mine);
    sg_cache_fill_unref(w1);
    assert_int_equal(erefs(mine), 1);
    assert_memory_equal(mine->data, "body", 4);
    sg_cache_entry_unref(mine);

    /* a fill with only its leader */
    f = join("/done3", 0, &leader);
    e = entry("/done3");
    sg_cache_fill_finish(f, SG_FILL_DONE, e);
    assert_int_equal(erefs(e), 2);
    sg_cache_fill_unref(f);
    assert_int_equal(erefs(e), 1);
    sg_cache_entry_unref(e);
}

static void test_finish_failed_error(void **state) {
    (void)state;
    bool leader;
    struct sg_cache_fill *f = join("/f", 0, &leader);
    struct sg_cache_fill *w = join("/f", 1, &leader);
    sg_cache_fill_finish(f, SG_FILL_FAILED, NULL);
    assert_int_equal(sg_cache_fill_state(w), SG_FILL_FAILED);
    assert_null(w->entry);
    assert_int_equal(sg_cache_fill_pending(), 0);
    sg_cache_fill_unref(w);
    sg_cache_fill_unref(f);

    f = join("/f", 0, &leader);
    assert_true(leader);
    w = join("/f", 1, &leader);
    sg_cache_fill_finish(f, SG_FILL_ERROR, NULL);
    assert_int_equal(sg_cache_fill_state(w), SG_FILL_ERROR);
    assert_null(w->entry);
    sg_cache_fill_unref(f);
    sg_cache_fill_unref(w);

    /* DONE without an entry is FAILED */
    f = join("/f", 0, &leader);
    w = join("/f", 1, &leader);
    sg_cache_fill_finish(f, SG_FILL_DONE, NULL);
    assert_int_equal(sg_cache_fill_state(w), SG_FILL_FAILED);
    assert_null(w->entry);
    assert_int_equal(sg_cache_fill_pending(), 0);
    sg_cache_fill_unref(f);
    sg_cache_fill_unref(w);

    /* FAILED and ERROR with an entry: the entry is not taken */
    struct sg_cache_entry *e = entry("/f");
    f = join("/f", 0, &leader);
    sg_cache_fill_finish(f, SG_FILL_FAILED, e);
    assert_int_equal(sg_cache_fill_state(f), SG_FILL_FAILED);
    assert_null(f->entry);
    assert_int_equal(erefs(e), 1);
    sg_cache_fill_unref(f);
    f = join("/f", 0, &leader);
    sg_cache_fill_finish(f, SG_FILL_ERROR, e);
    assert_int_equal(sg_cache_fill_state(f), SG_FILL_ERROR);
    assert_null(f->entry);
    assert_int_equal(erefs(e), 1);
    sg_cache_fill_unref(f);
    sg_cache_entry_unref(e);
}

static void test_second_finish_ignored(void **state) {
    (void)state;
    bool leader;
    struct sg_cache_fill *f = join("/twice", 0, &leader);
    struct sg_cache_fill *w = join("/twice", 5, &leader);
    struct sg_cache_entry *e1 = entry("/twice"), *e2 = entry("/twice");
    sg_cache_fill_finish(f, SG_FILL_DONE, e1);
    assert_int_equal(wake_total, 1);
    sg_cache_fill_finish(f, SG_FILL_DONE, e2);
    sg_cache_fill_finish(f, SG_FILL_FAILED, NULL);
    sg_cache_fill_finish(f, SG_FILL_ERROR, e2);
    assert_int_equal(wake_total, 1); /* no more wakes */
    assert_int_equal(sg_cache_fill_state(w), SG_FILL_DONE);
    assert_ptr_equal(w->entry, e1);
    assert_int_equal(erefs(e1), 2);
    assert_int_equal(erefs(e2), 1); /* untouched */

    /* a new fill for the key meanwhile is not disturbed by the old one's finish */
    struct sg_cache_fill *g = join("/twice", 0, &leader);
    assert_true(leader);
    assert_ptr_not_equal(g, f);
    sg_cache_fill_finish(f, SG_FILL_FAILED, NULL);
    assert_int_equal(sg_cache_fill_pending(), 1);
    assert_int_equal(sg_cache_fill_state(g), SG_FILL_PENDING);
    sg_cache_fill_finish(g, SG_FILL_DONE, e2);
    assert_int_equal(sg_cache_fill_pending(), 0);
    sg_cache_fill_unref(g);
    sg_cache_fill_unref(w);
    sg_cache_fill_unref(f);
    assert_int_equal(erefs(e1), 1);
    assert_int_equal(erefs(e2), 1);
    sg_cache_entry_unref(e1);
    sg_cache_entry_unref(e2);
}

static void test_lead_again_after_finish(void **state) {
    (void)state;
    bool leader;
    struct sg_cache_fill *f = join("/again", 0, &leader);
    assert_true(leader);
    struct sg_cache_fill *w = join("/again", 1, &leader);
    assert_false(leader);
    sg_cache_fill_finish(f, SG_FILL_ERROR, NULL);
    /* the old fill is still held (f, w), but no longer joinable */
    struct sg_cache_fill *g = join("/again", 1, &leader);
    assert_true(leader);
    assert_ptr_not_equal(g, f);
    assert_int_equal(sg_cache_fill_state(g), SG_FILL_PENDING);
    assert_int_equal(g->waiters, 0);
    assert_int_equal(g->leader_worker, 1);
    struct sg_cache_fill *w2 = join("/again", 0, &leader);
    assert_false(leader);
    assert_ptr_equal(w2, g);
    assert_int_equal(refs(f), 2); /* the new waiter did not join the old fill */
    assert_int_equal(f->waiters, 1u << 1);
    sg_cache_fill_finish(g, SG_FILL_FAILED, NULL);
    sg_cache_fill_unref(w2);
    sg_cache_fill_unref(g);
    sg_cache_fill_unref(w);
    sg_cache_fill_unref(f);

    /* many rounds of lead, wait, finish */
    for (int i = 0; i < 100; i++) {
        f = join("/again", (unsigned)i, &leader);
        assert_true(leader);
        w = join("/again", (unsigned)i + 1, &leader);
        assert_false(leader);
        sg_cache_fill_finish(f, i % 2 ? SG_FILL_FAILED : SG_FILL_ERROR, NULL);
        sg_cache_fill_unref(f);
        sg_cache_fill_unref(w);
    }
}

static void test_wake_per_worker_bit(void **state) {
    (void)state;
    bool leader;
    /* the leader's worker 3; waiters on 0, 1, 65 (bit 1 again), 1 again */
    struct sg_cache_fill *f = join("/wake", 3, &leader);
    struct sg_cache_fill *w[4];
    unsigned workers[4] = {0, 1, 65, 1};
    for (int i = 0; i < 4; i++) {
        w[i] = join("/wake", workers[i], &leader);
        assert_false(leader);
    }
    assert_int_equal(f->waiters, 0x3);
    assert_int_equal(wake_total, 0); /* joining wakes nobody */
    sg_cache_fill_finish(f, SG_FILL_FAILED, NULL);
    assert_int_equal(wake_total, 2);
    assert_int_equal(wake_calls[0], 1);
    assert_int_equal(wake_calls[1], 1);
    assert_int_equal(wake_calls[3], 0); /* the leader is not woken by its own finish */
    for (int i = 0; i < 4; i++)
        sg_cache_fill_unref(w[i]);
    sg_cache_fill_unref(f);

    /* no waiters: no wake */
    wake_reset();
    f = join("/wake", 3, &leader);
    sg_cache_fill_finish(f, SG_FILL_DONE, NULL);
    assert_int_equal(wake_total, 0);
    sg_cache_fill_unref(f);

    /* the highest bit, and a waiter on the leader's own worker */
    wake_reset();
    f = join("/wake", 7, &leader);
    w[0] = join("/wake", 63, &leader);
    w[1] = join("/wake", 127, &leader);
    w[2] = join("/wake", 7, &leader);
    assert_int_equal(f->waiters, (1ull << 63) | (1ull << 7));
    sg_cache_fill_finish(f, SG_FILL_ERROR, NULL);
    assert_int_equal(wake_total, 2);
    assert_int_equal(wake_calls[63], 1);
    assert_int_equal(wake_calls[7], 1);
    for (int i = 0; i < 3; i++)
        sg_cache_fill_unref(w[i]);
    sg_cache_fill_unref(f);

    /* every bit */
    wake_reset();
    f = join("/wake", 0, &leader);
    for (unsigned i = 0; i < 64; i++) {
        struct sg_cache_fill *x = join("/wake", i + 64, &leader);
        sg_cache_fill_unref(x); /* a waiter gone: its bit stays */
    }
    assert_int_equal(f->waiters, UINT64_MAX);
    assert_int_equal(refs(f), 1);
    sg_cache_fill_finish(f, SG_FILL_FAILED, NULL);
    assert_int_equal(wake_total, 64);
    for (unsigned i = 0; i < 64; i++)
        assert_int_equal(wake_calls[i], 1);
    sg_cache_fill_unref(f);

    /* no hook set: finish works without one */
    sg_cache_fill_wake = NULL;
    f = join("/wake", 0, &leader);
    w[0] = join("/wake", 1, &leader);
    sg_cache_fill_poke(f);
    sg_cache_fill_finish(f, SG_FILL_FAILED, NULL);
    assert_int_equal(sg_cache_fill_state(w[0]), SG_FILL_FAILED);
    sg_cache_fill_unref(w[0]);
    sg_cache_fill_unref(f);
    sg_cache_fill_wake = record_wake;
}

static void test_poke(void **state) {
    (void)state;
    bool leader;
    struct sg_cache_fill *f = join("/poke", 3, &leader);
    /* no waiters: the leader's worker only */
    sg_cache_fill_poke(f);
    assert_int_equal(wake_total, 1);
    assert_int_equal(wake_calls[3], 1);
    wake_reset();
    struct sg_cache_fill *w0 = join("/poke", 0, &leader);
    struct sg_cache_fill *w1 = join("/poke", 1, &leader);
    struct sg_cache_fill *w65 = join("/poke", 65, &leader);
    sg_cache_fill_poke(f);
    assert_int_equal(wake_total, 3);
    assert_int_equal(wake_calls[0], 1);
    assert_int_equal(wake_calls[1], 1);
    assert_int_equal(wake_calls[3], 1);
    /* still pending, still joinable */
    assert_int_equal(sg_cache_fill_state(f), SG_FILL_PENDING);
    assert_int_equal(sg_cache_fill_pending(), 1);
    struct sg_cache_fill *w2 = join("/poke", 2, &leader);
    assert_false(leader);
    assert_ptr_equal(w2, f);
    /* poke again, then finish: the finish wakes the waiters only */
    wake_reset();
    sg_cache_fill_poke(f);
    assert_int_equal(wake_total, 4);
    wake_reset();
    sg_cache_fill_finish(f, SG_FILL_FAILED, NULL);
    assert_int_equal(wake_total, 3);
    assert_int_equal(wake_calls[3], 0);
    sg_cache_fill_unref(w0);
    sg_cache_fill_unref(w1);
    sg_cache_fill_unref(w65);
    sg_cache_fill_unref(w2);
    sg_cache_fill_unref(f);

    /* the leader's worker shares a bit with a waiter: one call */
    wake_reset();
    f = join("/poke", 67, &leader);
    w0 = join("/poke", 3, &leader);
    sg_cache_fill_poke(f);
    assert_int_equal(wake_total, 1);
    assert_int_equal(wake_calls[3], 1);
    sg_cache_fill_finish(f, SG_FILL_FAILED, NULL);
    sg_cache_fill_unref(w0);
    sg_cache_fill_unref(f);
}

static void test_pending_count(void **state) {
    (void)state;
    bool leader;
    struct sg_cache_fill *f[200];
    char key[32];
    for (int i = 0; i < 200; i++) {
        snprintf(key, sizeof(key), "/pending/%d", i);
        f[i] = join(key, (unsigned)i, &leader);
        assert_true(leader);
        assert_int_equal(sg_cache_fill_pending(), (size_t)i + 1);
    }
    /* waiters do not count */
    struct sg_cache_fill *w = join("/pending/7", 9, &leader);
    assert_false(leader);
    assert_int_equal(sg_cache_fill_pending(), 200);
    /* many keys in one bucket: same hash, shard and bucket */
    struct sg_cache_fill *same[20];
    for (int i = 0; i < 20; i++) {
        snprintf(key, sizeof(key), "/same/%d", i);
        same[i] = sg_cache_fill_join(12345, key, strlen(key), 0, &leader);
        assert_true(leader);
    }
    assert_int_equal(sg_cache_fill_pending(), 220);
    /* finished out of order: the chain stays intact */
    for (int i = 0; i < 20; i += 2)
        sg_cache_fill_finish(same[i], SG_FILL_FAILED, NULL);
    for (int i = 1; i < 20; i += 2) {
        snprintf(key, sizeof(key), "/same/%d", i);
        struct sg_cache_fill *x = sg_cache_fill_join(12345, key, strlen(key), 1, &leader);
        assert_false(leader);
        assert_ptr_equal(x, same[i]);
        sg_cache_fill_unref(x);
    }
    for (int i = 19; i >= 1; i -= 2)
        sg_cache_fill_finish(same[i], SG_FILL_ERROR, NULL);
    for (int i = 0; i < 20; i++)
        sg_cache_fill_unref(same[i]);
    assert_int_equal(sg_cache_fill_pending(), 200);
    for (int i = 0; i < 200; i++) {
        sg_cache_fill_finish(f[i], SG_FILL_FAILED, NULL);
        assert_int_equal(sg_cache_fill_pending(), 200 - (size_t)i - 1);
        sg_cache_fill_finish(f[i], SG_FILL_FAILED, NULL); /* again: no change */
        assert_int_equal(sg_cache_fill_pending(), 200 - (size_t)i - 1);
        sg_cache_fill_unref(f[i]);
    }
    assert_int_equal(sg_cache_fill_state(w), SG_FILL_FAILED);
    sg_cache_fill_unref(w);
    assert_int_equal(sg_cache_fill_pending(), 0);
}

/* ---- threads ---- */

#define NTHREADS 8
#define NJOINS   1000
#define NKEYS    16

/* Fills the leaders hand to the finisher. */
static pthread_mutex_t q_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t q_cond = PTHREAD_COND_INITIALIZER;
static struct sg_cache_fill *queue[NTHREADS * NJOINS];
static size_t q_head, q_tail;
static bool q_stop;

struct joiner {
    unsigned worker;
    unsigned seed;
    unsigned leads, waits, done, failed, errors, bad;
};

static bool key_is(const struct sg_cache_fill *f, const char *key, size_t len) {
    return f->key_len == len && memcmp(f->key, key, len) == 0 && f->key_hash == hash(key, len);
}

static void *joiner_main(void *arg) {
    struct joiner *j = arg;
    char key[32];
    for (int i = 0; i < NJOINS; i++) {
        int n = snprintf(key, sizeof(key), "/mt/%d", rand_r(&j->seed) % NKEYS);
        bool leader = false;
        struct sg_cache_fill *f =
            sg_cache_fill_join(hash(key, (size_t)n), key, (size_t)n, j->worker, &leader);
        if (f == NULL) {
            j->bad++;
            continue;
        }
        if (!key_is(f, key, (size_t)n))
            j->bad++;
        if (leader) {
            j->leads++;
            if (f->leader_worker != j->worker)
                j->bad++;
            sg_cache_fill_ref(f); /* the finisher's */
            pthread_mutex_lock(&q_lock);
            queue[q_tail++] = f;
            pthread_cond_signal(&q_cond);
            pthread_mutex_unlock(&q_lock);
        } else {
            j->waits++; /* (f->waiters is the table's, read under its lock only) */
        }
        /* wait for the end (no worker loop here: spin) */
        int st;
        while ((st = sg_cache_fill_state(f)) == SG_FILL_PENDING)
            sched_yield();
        switch (st) {
        case SG_FILL_DONE:
            j->done++;
            if (f->entry == NULL || f->entry->key_len != (size_t)n ||
                memcmp(f->entry->key, key, (size_t)n) != 0 || f->entry->len != (size_t)n ||
                memcmp(f->entry->data, key, (size_t)n) != 0)
                j->bad++;
            break;
        case SG_FILL_FAILED:
            j->failed++;
            if (f->entry != NULL)
                j->bad++;
            break;
        case SG_FILL_ERROR:
            j->errors++;
            if (f->entry != NULL)
                j->bad++;
            break;
        default:
            j->bad++;
        }
        sg_cache_fill_unref(f);
    }
    return NULL;
}

struct finisher {
    unsigned finished, with_entry;
};

static void *finisher_main(void *arg) {
    struct finisher *fin = arg;
    for (;;) {
        pthread_mutex_lock(&q_lock);
        while (q_head == q_tail && !q_stop)
            pthread_cond_wait(&q_cond, &q_lock);
        if (q_head == q_tail) {
            pthread_mutex_unlock(&q_lock);
            return NULL;
        }
        struct sg_cache_fill *f = queue[q_head++];
        pthread_mutex_unlock(&q_lock);
        sched_yield(); /* let some waiters join */
        switch (fin->finished % 4) {
        case 0:
        case 1: {
            struct sg_cache_entry *e = sg_cache_entry_new(f->key_hash, f->key, f->key_len, f->key,
                                                          f->key_len, T0, NEVER, NEVER);
            sg_cache_fill_finish(f, SG_FILL_DONE, e);
            sg_cache_entry_unref(e);
            fin->with_entry++;
            break;
        }
        case 2:
            sg_cache_fill_finish(f, SG_FILL_FAILED, NULL);
            break;
        default:
            sg_cache_fill_finish(f, SG_FILL_ERROR, NULL);
        }
        sg_cache_fill_finish(f, SG_FILL_FAILED, NULL); /* ignored */
        fin->finished++;
        sg_cache_fill_unref(f);
    }
}

static _Atomic unsigned mt_wakes;
static _Atomic uint64_t mt_woken;

static void count_wake(unsigned worker) {
    atomic_fetch_add(&mt_wakes, 1);
    atomic_fetch_or(&mt_woken, 1ull << worker);
}

static void test_threads(void **state) {
    (void)state;
    sg_cache_fill_wake = count_wake;
    q_head = q_tail = 0;
    q_stop = false;
    struct finisher fin = {0};
    pthread_t ft;
    assert_int_equal(pthread_create(&ft, NULL, finisher_main, &fin), 0);
    struct joiner j[NTHREADS];
    pthread_t t[NTHREADS];
    for (unsigned i = 0; i < NTHREADS; i++) {
        /* workers 0..3 and 64..67: bits 0..3, two threads each */
        j[i] = (struct joiner){.worker = i < 4 ? i : 60 + i, .seed = 777u + i};
        assert_int_equal(pthread_create(&t[i], NULL, joiner_main, &j[i]), 0);
    }
    unsigned leads = 0, waits = 0, done = 0, failed = 0, errors = 0;
    for (int i = 0; i < NTHREADS; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
        assert_int_equal(j[i].bad, 0);
        assert_int_equal(j[i].leads + j[i].waits, NJOINS);
        assert_int_equal(j[i].done + j[i].failed + j[i].errors, NJOINS);
        leads += j[i].leads;
        waits += j[i].waits;
        done += j[i].done;
        failed += j[i].failed;
        errors += j[i].errors;
    }
    pthread_mutex_lock(&q_lock);
    q_stop = true;
    pthread_cond_signal(&q_cond);
    pthread_mutex_unlock(&q_lock);
    assert_int_equal(pthread_join(ft, NULL), 0);
    assert_int_equal(fin.finished, leads);
    assert_int_equal(leads + waits, NTHREADS * NJOINS);
    assert_true(waits > 0); /* coalescing happened */
    assert_true(done > 0 && failed + errors > 0);
    assert_int_equal(sg_cache_fill_pending(), 0);
    assert_true(atomic_load(&mt_wakes) > 0);
    assert_int_equal(atomic_load(&mt_woken) & ~0xfull, 0); /* only bits 0..3 */
    printf("# threads: %u joins, %u leaders, %u waiters, %u wakes\n", NTHREADS * NJOINS, leads,
           waits, atomic_load(&mt_wakes));
    sg_cache_fill_wake = record_wake;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_leader_then_waiters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_finish_done, setup, teardown),
        cmocka_unit_test_setup_teardown(test_finish_failed_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_second_finish_ignored, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lead_again_after_finish, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wake_per_worker_bit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_poke, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pending_count, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
