/*
 * Tests for src/cache/store.c, the memory tier's sharded LRU store: put,
 * get, replace and remove; the stale window; the byte cap under far more
 * data than it holds, with LRU order; refusal of entries larger than a
 * shard's share; a reader's reference outliving eviction (ASan checks the
 * bytes are still valid); purge by prefix; full 64-bit hash collisions;
 * and four threads putting and getting overlapping keys for a second.
 * LeakSanitizer checks at exit that every entry and node was freed.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "cache/store.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define T0    1000000ull /* a monotonic ms clock some time after boot */
#define NEVER UINT64_MAX

/* FNV-1a: the tests' key hash (the store mixes it again). */
static uint64_t hash(const char *k, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)k[i]) * 0x100000001b3ull;
    return h;
}

/* Puts key -> data (fresh until expires, stale until stale) and drops the
 * caller's reference; returns sg_cache_put's result. */
static int put(struct sg_cache_store *s, const char *key, const char *data, size_t len,
               uint64_t expires, uint64_t stale) {
    struct sg_cache_entry *e =
        sg_cache_entry_new(hash(key, strlen(key)), key, strlen(key), data, len, T0, expires, stale);
    assert_non_null(e);
    int rc = sg_cache_put(s, e);
    sg_cache_entry_unref(e);
    return rc;
}

static struct sg_cache_entry *get(struct sg_cache_store *s, const char *key, uint64_t now) {
    return sg_cache_get(s, hash(key, strlen(key)), key, strlen(key), now);
}

/* Whether key is stored (a get at T0, which counts a hit or a miss). */
static int has(struct sg_cache_store *s, const char *key) {
    struct sg_cache_entry *e = get(s, key, T0);
    sg_cache_entry_unref(e);
    return e != NULL;
}

static void test_put_get_replace_remove(void **state) {
    (void)state;
    struct sg_cache_store *s = sg_cache_store_new(1 << 20);
    assert_non_null(s);
    assert_null(get(s, "GET /a", T0));
    assert_int_equal(put(s, "GET /a", "one", 3, NEVER, NEVER), 0);

    struct sg_cache_entry *e = get(s, "GET /a", T0);
    assert_non_null(e);
    assert_int_equal(e->len, 3);
    assert_memory_equal(e->data, "one", 3);
    assert_string_equal(e->key, "GET /a");
    assert_int_equal(e->charge, 6 + 3 + SG_CACHE_ENTRY_OVERHEAD);
    assert_int_equal(atomic_load(&e->refs), 2); /* the store's and ours */

    assert_int_equal(put(s, "GET /a", "two!", 4, NEVER, NEVER), 0);
    struct sg_cache_entry *e2 = get(s, "GET /a", T0);
    assert_non_null(e2);
    assert_memory_equal(e2->data, "two!", 4);
    assert_memory_equal(e->data, "one", 3); /* the replaced one is still ours */
    assert_int_equal(atomic_load(&e->refs), 1);
    sg_cache_entry_unref(e);

    struct sg_cache_stats st;
    sg_cache_stats(s, &st);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.bytes, e2->charge);
    assert_int_equal(st.inserts, 2);
    assert_int_equal(st.hits, 2);
    assert_int_equal(st.misses, 1);
    assert_int_equal(st.cap, 1 << 20);
    sg_cache_entry_unref(e2);

    assert_null(get(s, "GET /b", T0));
    assert_int_equal(sg_cache_remove(s, hash("GET /a", 6), "GET /a", 6), 1);
    assert_int_equal(sg_cache_remove(s, hash("GET /a", 6), "GET /a", 6), 0);
    assert_null(get(s, "GET /a", T0));
    sg_cache_stats(s, &st);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.bytes, 0);
    sg_cache_store_free(s);
}

static void test_expiry_and_stale(void **state) {
    (void)state;
    struct sg_cache_store *s = sg_cache_store_new(1 << 20);
    assert_int_equal(put(s, "k", "v", 1, T0 + 100, T0 + 300), 0);

    struct sg_cache_entry *e = get(s, "k", T0 + 99); /* fresh */
    assert_non_null(e);
    assert_true(T0 + 99 < e->expires_ms);
    sg_cache_entry_unref(e);
    e = get(s, "k", T0 + 100); /* stale, still served: the caller decides */
    assert_non_null(e);
    assert_false(T0 + 100 < e->expires_ms);
    sg_cache_entry_unref(e);
    e = get(s, "k", T0 + 299);
    assert_non_null(e);
    sg_cache_entry_unref(e);
    assert_null(get(s, "k", T0 + 300)); /* past the stale window: removed */
    assert_null(get(s, "k", T0));       /* gone, even for an earlier clock */

    /* stale_until below expires is raised to it */
    e = sg_cache_entry_new(1, "x", 1, NULL, 0, T0, T0 + 50, T0);
    assert_non_null(e);
    assert_int_equal(e->stale_until_ms, T0 + 50);
    assert_int_equal(sg_cache_put(s, e), 0);
    sg_cache_entry_unref(e);
    e = sg_cache_get(s, 1, "x", 1, T0 + 49);
    assert_non_null(e);
    assert_int_equal(e->len, 0);
    sg_cache_entry_unref(e);

    struct sg_cache_stats st;
    sg_cache_stats(s, &st);
    assert_int_equal(st.expired, 1);
    assert_int_equal(st.misses, 2);
    assert_int_equal(st.hits, 4);
    assert_int_equal(st.entries, 1);
    sg_cache_store_free(s);
}

#define CAP_SHARD 65536
#define CAP       (SG_CACHE_SHARDS * CAP_SHARD) /* 4 MiB */
#define OBJ       1000

/* 20 MB of distinct 1000-byte objects through a 4 MiB store: bytes never
 * pass the cap, evictions are counted, a key read every 10 puts survives,
 * and the last puts survive (256 keys, about 4 a shard; a shard holds 55). */
static void test_cap_and_lru(void **state) {
    (void)state;
    struct sg_cache_store *s = sg_cache_store_new(CAP);
    char data[OBJ], key[32];
    memset(data, 'x', sizeof(data));
    assert_int_equal(put(s, "hot", data, OBJ, NEVER, NEVER), 0);
    struct sg_cache_stats st;
    const int n = 20000;
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "GET /obj/%d", i);
        assert_int_equal(put(s, key, data, OBJ, NEVER, NEVER), 0);
        if (i % 10 == 0)
            assert_true(has(s, "hot"));
        if (i % 97 == 0) {
            sg_cache_stats(s, &st);
            assert_true(st.bytes <= CAP);
        }
    }
    sg_cache_stats(s, &st);
    assert_true(st.bytes <= CAP);
    assert_true(st.bytes > CAP / 2);
    assert_int_equal(st.inserts, n + 1);
    assert_int_equal(st.evictions, n + 1 - st.entries);
    assert_true(st.entries < (uint64_t)CAP / OBJ);
    assert_true(has(s, "hot"));
    for (int i = n - 256; i < n; i++) {
        snprintf(key, sizeof(key), "GET /obj/%d", i);
        assert_true(has(s, key));
    }
    assert_false(has(s, "GET /obj/0"));
    sg_cache_store_free(s);
}

static void test_too_big(void **state) {
    (void)state;
    struct sg_cache_store *s = sg_cache_store_new(CAP);
    static char big[CAP_SHARD];
    size_t fits = CAP_SHARD - SG_CACHE_ENTRY_OVERHEAD - 1; /* key "k" */
    assert_int_equal(put(s, "k", big, fits + 1, NEVER, NEVER), -E2BIG);
    assert_int_equal(put(s, "k", big, fits, NEVER, NEVER), 0);
    struct sg_cache_stats st;
    sg_cache_stats(s, &st);
    assert_int_equal(st.bytes, CAP_SHARD);
    assert_int_equal(st.inserts, 1);
    /* a refused replacement leaves the old entry */
    assert_int_equal(put(s, "k", big, sizeof(big), NEVER, NEVER), -E2BIG);
    assert_true(has(s, "k"));
    sg_cache_store_free(s);

    s = sg_cache_store_new(SG_CACHE_SHARDS - 1); /* 0 a shard: everything refused */
    assert_int_equal(put(s, "k", "", 0, NEVER, NEVER), -E2BIG);
    sg_cache_store_free(s);
}

/* A reader keeps an entry that is evicted, then one that is purged, then
 * one whose store is freed: the bytes stay readable until its unref. */
static void test_reader_outlives_eviction(void **state) {
    (void)state;
    struct sg_cache_store *s = sg_cache_store_new(CAP);
    char data[OBJ], key[32];
    memset(data, 'r', sizeof(data));
    assert_int_equal(put(s, "reader", data, OBJ, NEVER, NEVER), 0);
    struct sg_cache_entry *e = get(s, "reader", T0);
    assert_non_null(e);
    memset(data, 'y', sizeof(data));
    for (int i = 0; i < 10000; i++) {
        snprintf(key, sizeof(key), "/flood/%d", i);
        assert_int_equal(put(s, key, data, OBJ, NEVER, NEVER), 0);
    }
    assert_false(has(s, "reader"));
    assert_int_equal(atomic_load(&e->refs), 1);
    for (size_t i = 0; i < OBJ; i++)
        assert_int_equal(e->data[i], 'r');
    assert_string_equal(e->key, "reader");
    sg_cache_entry_unref(e);

    assert_int_equal(put(s, "/flood/x", data, OBJ, NEVER, NEVER), 0);
    e = get(s, "/flood/x", T0);
    assert_true(sg_cache_remove_prefix(s, "/flood/", 7) > 0);
    assert_memory_equal(e->data, data, OBJ);
    assert_int_equal(put(s, "/flood/x", data, OBJ, NEVER, NEVER), 0);
    struct sg_cache_entry *e2 = get(s, "/flood/x", T0);
    sg_cache_store_free(s);
    assert_memory_equal(e->data, data, OBJ);
    assert_memory_equal(e2->data, data, OBJ);
    sg_cache_entry_unref(e);
    sg_cache_entry_unref(e2);
}

static void test_remove_prefix_and_clear(void **state) {
    (void)state;
    struct sg_cache_store *s = sg_cache_store_new(1 << 20);
    const char *keys[] = {"/a/1", "/a/2", "/a/2/x", "/a", "/b/1", "/ab", ""};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        assert_int_equal(put(s, keys[i], "d", 1, NEVER, NEVER), 0);
    assert_int_equal(sg_cache_remove_prefix(s, "/a/", 3), 3);
    assert_false(has(s, "/a/1"));
    assert_false(has(s, "/a/2/x"));
    assert_true(has(s, "/a"));
    assert_true(has(s, "/ab"));
    assert_true(has(s, "/b/1"));
    assert_true(has(s, ""));
    assert_int_equal(sg_cache_remove_prefix(s, "/nothing", 8), 0);
    assert_int_equal(sg_cache_remove_prefix(s, "/a", 2), 2);
    struct sg_cache_stats st;
    sg_cache_stats(s, &st);
    assert_int_equal(st.entries, 2);
    sg_cache_clear(s);
    sg_cache_stats(s, &st);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.bytes, 0);
    assert_false(has(s, "/b/1"));
    sg_cache_store_free(s);
}

/* Keys with equal 64-bit hashes are distinct entries, found by full key. */
static void test_hash_collisions(void **state) {
    (void)state;
    struct sg_cache_store *s = sg_cache_store_new(1 << 20);
    const uint64_t h = 42;
    char key[16];
    for (int i = 0; i < 40; i++) { /* one chain far longer than the load */
        snprintf(key, sizeof(key), "key%d", i);
        struct sg_cache_entry *e =
            sg_cache_entry_new(h, key, strlen(key), key, strlen(key), T0, NEVER, NEVER);
        assert_int_equal(sg_cache_put(s, e), 0);
        sg_cache_entry_unref(e);
    }
    for (int i = 0; i < 40; i++) {
        snprintf(key, sizeof(key), "key%d", i);
        struct sg_cache_entry *e = sg_cache_get(s, h, key, strlen(key), T0);
        assert_non_null(e);
        assert_int_equal(e->len, strlen(key)); /* data is the key (not NUL-terminated) */
        assert_memory_equal(e->data, key, e->len);
        sg_cache_entry_unref(e);
    }
    assert_null(sg_cache_get(s, h, "key40", 5, T0));
    assert_null(sg_cache_get(s, h, "key", 3, T0)); /* a prefix of stored keys */
    assert_int_equal(sg_cache_remove(s, h, "key7", 4), 1);
    assert_null(sg_cache_get(s, h, "key7", 4, T0));
    struct sg_cache_entry *e = sg_cache_get(s, h, "key8", 4, T0);
    assert_non_null(e);
    sg_cache_entry_unref(e);
    struct sg_cache_stats st;
    sg_cache_stats(s, &st);
    assert_int_equal(st.entries, 39);
    sg_cache_store_free(s);
}

/* ---- threads ---------------------------------------------------------- */

#define NKEYS    2000
#define NTHREADS 4

struct worker {
    struct sg_cache_store *s;
    unsigned seed;
    uint64_t gets, hits, puts, bad;
};

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Each key's data is the key repeated to a key-dependent length, so a
 * reader can check it got its key's bytes, whole. */
static void *hammer(void *arg) {
    struct worker *w = arg;
    char key[32], data[4096];
    uint64_t end = now_ms() + 1000;
    while (now_ms() < end) {
        for (int j = 0; j < 64; j++) {
            int k = rand_r(&w->seed) % NKEYS;
            int n = snprintf(key, sizeof(key), "/t/%d", k);
            size_t len = 100 + (size_t)k % 37 * 100;
            if (rand_r(&w->seed) % 4 == 0) {
                for (size_t i = 0; i < len; i++)
                    data[i] = key[i % (size_t)n];
                struct sg_cache_entry *e = sg_cache_entry_new(hash(key, (size_t)n), key, (size_t)n,
                                                              data, len, T0, NEVER, NEVER);
                if (e == NULL || sg_cache_put(w->s, e) != 0)
                    w->bad++;
                sg_cache_entry_unref(e);
                w->puts++;
            } else {
                struct sg_cache_entry *e =
                    sg_cache_get(w->s, hash(key, (size_t)n), key, (size_t)n, T0);
                w->gets++;
                if (e == NULL)
                    continue;
                w->hits++;
                if (e->len != len || strcmp(e->key, key) != 0)
                    w->bad++;
                for (size_t i = 0; i < e->len; i++)
                    if (e->data[i] != key[i % (size_t)n])
                        w->bad++;
                sg_cache_entry_unref(e);
            }
        }
        struct sg_cache_stats st; /* the cap holds while others put */
        sg_cache_stats(w->s, &st);
        if (st.bytes > st.cap)
            w->bad++;
    }
    return NULL;
}

static void test_threads(void **state) {
    (void)state;
    /* 2000 keys of 100-3700 bytes (~3.8 MB) through 1 MiB: evictions all the time */
    struct sg_cache_store *s = sg_cache_store_new(1 << 20);
    struct worker w[NTHREADS];
    pthread_t t[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        w[i] = (struct worker){.s = s, .seed = 12345u + (unsigned)i};
        assert_int_equal(pthread_create(&t[i], NULL, hammer, &w[i]), 0);
    }
    uint64_t gets = 0, hits = 0, puts = 0;
    for (int i = 0; i < NTHREADS; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
        assert_int_equal(w[i].bad, 0);
        gets += w[i].gets;
        hits += w[i].hits;
        puts += w[i].puts;
    }
    struct sg_cache_stats st;
    sg_cache_stats(s, &st);
    assert_true(st.bytes <= st.cap);
    assert_int_equal(st.hits, hits);
    assert_int_equal(st.misses, gets - hits);
    assert_int_equal(st.inserts, puts);
    assert_true(st.evictions > 0);
    assert_true(hits > 0);

    /* entries and bytes agree with what a walk over every key finds */
    uint64_t found = 0, bytes = 0;
    char key[32];
    for (int k = 0; k < NKEYS; k++) {
        int n = snprintf(key, sizeof(key), "/t/%d", k);
        struct sg_cache_entry *e = sg_cache_get(s, hash(key, (size_t)n), key, (size_t)n, T0);
        if (e != NULL) {
            found++;
            bytes += e->charge;
        }
        sg_cache_entry_unref(e);
    }
    assert_int_equal(found, st.entries);
    assert_int_equal(bytes, st.bytes);
    printf("# threads: %llu gets (%llu hits), %llu puts, %llu evictions in 1 s\n",
           (unsigned long long)gets, (unsigned long long)hits, (unsigned long long)puts,
           (unsigned long long)st.evictions);
    sg_cache_store_free(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get_replace_remove),
        cmocka_unit_test(test_expiry_and_stale),
        cmocka_unit_test(test_cap_and_lru),
        cmocka_unit_test(test_too_big),
        cmocka_unit_test(test_reader_outlives_eviction),
        cmocka_unit_test(test_remove_prefix_and_clear),
        cmocka_unit_test(test_hash_collisions),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
