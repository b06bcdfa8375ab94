/*
 * Tests for src/cache/store.c, the memory tier's sharded LRU store: put,
 * get, replace and remove; the stale window; the byte cap under far more
 * data than it holds, with LRU order; refusal of entries larger than a
 * shard's share; a reader's reference outliving eviction (ASan checks the
 * bytes are still valid); purge by prefix, and puts of responses requested
 * before a purge; full 64-bit hash collisions;
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

/* ---- invalidation without a scan; cap changes ---------------------------- */

/* Puts key with group and version; returns sg_cache_put's result. */
static int put_gv(struct sg_cache_store *s, const char *key, uint64_t group, uint64_t version) {
    struct sg_cache_entry *e =
        sg_cache_entry_new(hash(key, strlen(key)), key, strlen(key), "d", 1, T0, NEVER, NEVER);
    assert_non_null(e);
    e->group = group;
    e->version = version;
    int rc = sg_cache_put(s, e);
    sg_cache_entry_unref(e);
    return rc;
}

#define NVERS 20000

struct vworker {
    struct sg_cache_store *s;
    uint64_t v[NVERS];
};

static void *take_versions(void *arg) {
    struct vworker *w = arg;
    for (int i = 0; i < NVERS; i++)
        w->v[i] = sg_cache_version(w->s);
    return NULL;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void test_version_monotonic(void **state) {
    (void)state;
    struct sg_cache_store *s = sg_cache_store_new(1 << 20);
    uint64_t prev = sg_cache_version(s);
    assert_true(prev >= 1);
    for (int i = 0; i < 1000; i++) {
        uint64_t v = sg_cache_version(s);
        assert_true(v > prev);
        prev = v;
        if (i % 100 == 0) { /* invalidations take versions from the same clock */
            sg_cache_invalidate_group(s, (uint64_t)i);
            sg_cache_invalidate_all(s);
        }
    }
    /* another store has its own clock */
    struct sg_cache_store *s2 = sg_cache_store_new(1 << 20);
    assert_true(sg_cache_version(s2) >= 1);
    assert_true(sg_cache_version(s2) < prev);
    sg_cache_store_free(s2);

    /* four threads: every version handed out once, each thread's increasing */
    static struct vworker w[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        w[i].s = s;
        assert_int_equal(pthread_create(&t[i], NULL, take_versions, &w[i]), 0);
    }
    static uint64_t all[4 * NVERS];
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
        for (int j = 0; j < NVERS; j++) {
            assert_true(w[i].v[j] > prev);
            if (j > 0)
                assert_true(w[i].v[j] > w[i].v[j - 1]);
            all[i * NVERS + j] = w[i].v[j];
        }
    }
    qsort(all, 4 * NVERS, sizeof(all[0]), cmp_u64);
    for (int i = 1; i < 4 * NVERS; i++)
        assert_true(all[i] > all[i - 1]);
    assert_true(sg_cache_version(s) > all[4 * NVERS - 1]);
    sg_cache_store_free(s);
}

static void test_invalidate_group(void **state) {
    (void)state;
    struct sg_cache_store *s = sg_cache_store_new(1 << 20);
    const uint64_t g = 7;
    assert_int_equal(put_gv(s, "/g/old", g, sg_cache_version(s)), 0);
    assert_int_equal(put_gv(s, "/g/older", g, sg_cache_version(s)), 0);
    assert_int_equal(put_gv(s, "/g/zero", g, 0), 0); /* version 0: never invalidated */
    assert_int_equal(put_gv(s, "/other", g + 1, sg_cache_version(s)), 0);
    /* a group sharing g's slot is invalidated with it (documented) */
    assert_int_equal(put_gv(s, "/same-slot", g + SG_CACHE_GROUP_SLOTS, sg_cache_version(s)), 0);
    sg_cache_invalidate_group(s, g);
    assert_int_equal(put_gv(s, "/g/new", g, sg_cache_version(s)), 0); /* newer: stays */

    struct sg_cache_stats st0, st;
    sg_cache_stats(s, &st0);
    assert_int_equal(st0.entries, 6);
    assert_false(has(s, "/g/old"));
    assert_false(has(s, "/g/older"));
    assert_false(has(s, "/same-slot"));
    assert_true(has(s, "/g/zero"));
    assert_true(has(s, "/other"));
    assert_true(has(s, "/g/new"));
    sg_cache_stats(s, &st);
    assert_int_equal(st.expired, st0.expired + 3);
    assert_int_equal(st.misses, st0.misses + 3);
    assert_int_equal(st.hits, st0.hits + 3);
    assert_int_equal(st.entries, 3); /* the invalidated ones were dropped */
    /* once dropped, a get is a plain miss */
    assert_false(has(s, "/g/old"));
    sg_cache_stats(s, &st0);
    assert_int_equal(st0.expired, st.expired);
    assert_int_equal(st0.misses, st.misses + 1);

    /* stored again with a new version: a hit */
    assert_int_equal(put_gv(s, "/g/old", g, sg_cache_version(s)), 0);
    assert_true(has(s, "/g/old"));
    /* a second invalidation catches the entries stored after the first */
    sg_cache_invalidate_group(s, g);
    assert_false(has(s, "/g/old"));
    assert_false(has(s, "/g/new"));
    assert_true(has(s, "/g/zero"));
    assert_true(has(s, "/other"));
    /* group 0 with versions is a group like any other */
    assert_int_equal(put_gv(s, "/zero-group", 0, sg_cache_version(s)), 0);
    assert_true(has(s, "/zero-group"));
    sg_cache_invalidate_group(s, 0);
    assert_false(has(s, "/zero-group"));
    assert_true(has(s, "/g/zero"));
    assert_true(has(s, "/other"));
    /* an invalidated entry held by a reader stays readable */
    assert_int_equal(put_gv(s, "/held", g, sg_cache_version(s)), 0);
    struct sg_cache_entry *e = get(s, "/held", T0);
    assert_non_null(e);
    sg_cache_invalidate_group(s, g);
    assert_false(has(s, "/held"));
    assert_string_equal(e->key, "/held");
    assert_memory_equal(e->data, "d", 1);
    assert_int_equal(atomic_load(&e->refs), 1);
    sg_cache_entry_unref(e);
    sg_cache_store_free(s);
}

/* A response requested before a prefix purge and stored after it (a fill
 * in flight) is refused; one requested after is stored; a key outside the
 * prefix is not affected; group invalidations refuse older puts too. Past
 * 64 purges, an entry older than the ones pushed out is refused whatever
 * its key. */
static void test_purge_refuses_older_puts(void **state) {
    (void)state;
    struct sg_cache_store *s = sg_cache_store_new(1 << 20);
    uint64_t before = sg_cache_version(s);
    assert_int_equal(sg_cache_remove_prefix(s, "/p/", 3), 0);
    assert_int_equal(put_gv(s, "/p/late", 1, before), -ESTALE);
    assert_false(has(s, "/p/late"));
    assert_int_equal(put_gv(s, "/q/late", 1, before), 0);
    assert_int_equal(put_gv(s, "/p/zero", 1, 0), 0); /* version 0: never refused */
    assert_int_equal(put_gv(s, "/p/new", 1, sg_cache_version(s)), 0);
    assert_true(has(s, "/p/new"));

    struct sg_cache_entry *e =
        sg_cache_entry_new(hash("/p/x", 4), "/p/x", 4, "d", 1, T0, NEVER, NEVER);
    assert_non_null(e);
    e->version = before;
    assert_true(sg_cache_outdated(s, e));
    e->version = sg_cache_version(s);
    assert_false(sg_cache_outdated(s, e));
    sg_cache_invalidate_group(s, 9);
    e->group = 9;
    assert_true(sg_cache_outdated(s, e));
    assert_int_equal(sg_cache_put(s, e), -ESTALE);
    sg_cache_entry_unref(e);

    /* the ring forgets: 64 other purges push "/p/" out, a 65th "/r0/" */
    uint64_t old = sg_cache_version(s);
    char pre[32];
    for (int i = 0; i < 65; i++) {
        snprintf(pre, sizeof(pre), "/r%d/", i);
        sg_cache_remove_prefix(s, pre, strlen(pre));
    }
    assert_int_equal(put_gv(s, "/p/old", 1, before), -ESTALE);
    assert_int_equal(put_gv(s, "/elsewhere", 1, old), -ESTALE); /* older than "/r0/" */
    assert_int_equal(put_gv(s, "/elsewhere", 1, sg_cache_version(s)), 0);
    sg_cache_store_free(s);
}

static void test_invalidate_all(void **state) {
    (void)state;
    struct sg_cache_store *s = sg_cache_store_new(1 << 20);
    char key[32];
    for (int i = 0; i < 50; i++) {
        snprintf(key, sizeof(key), "/all/%d", i);
        assert_int_equal(put_gv(s, key, (uint64_t)i * 977, sg_cache_version(s)), 0);
    }
    assert_int_equal(put_gv(s, "/all/zero", 5, 0), 0);
    sg_cache_invalidate_all(s);
    assert_int_equal(put_gv(s, "/all/after", 5, sg_cache_version(s)), 0);
    struct sg_cache_stats st0, st;
    sg_cache_stats(s, &st0);
    for (int i = 0; i < 50; i++) {
        snprintf(key, sizeof(key), "/all/%d", i);
        assert_false(has(s, key));
    }
    assert_true(has(s, "/all/zero"));
    assert_true(has(s, "/all/after"));
    sg_cache_stats(s, &st);
    assert_int_equal(st.expired, st0.expired + 50);
    assert_int_equal(st.misses, st0.misses + 50);
    assert_int_equal(st.entries, 2);
    /* a group invalidation later does not resurrect or undo anything */
    sg_cache_invalidate_group(s, 5);
    assert_false(has(s, "/all/after"));
    assert_true(has(s, "/all/zero"));
    assert_int_equal(put_gv(s, "/all/1", 977, sg_cache_version(s)), 0);
    assert_true(has(s, "/all/1"));
    sg_cache_store_free(s);
}

/* A version taken when the request went out, an invalidation meanwhile,
 * the entry put after it: the entry is already invalid. */
static void test_version_before_invalidation(void **state) {
    (void)state;
    struct sg_cache_store *s = sg_cache_store_new(1 << 20);
    const uint64_t g = 42;
    uint64_t v = sg_cache_version(s);
    uint64_t v_other = sg_cache_version(s);
    sg_cache_invalidate_group(s, g);
    assert_int_equal(put_gv(s, "/late", g, v), -ESTALE); /* refused */
    assert_int_equal(put_gv(s, "/late-other", g + 1, v_other), 0);
    struct sg_cache_stats st0, st;
    sg_cache_stats(s, &st0);
    assert_int_equal(st0.entries, 1);
    assert_false(has(s, "/late"));
    assert_true(has(s, "/late-other")); /* another group: unaffected */
    sg_cache_stats(s, &st);
    assert_int_equal(st.expired, st0.expired);
    /* the same with invalidate_all */
    v = sg_cache_version(s);
    sg_cache_invalidate_all(s);
    uint64_t v_after = sg_cache_version(s);
    assert_int_equal(put_gv(s, "/late2", 9, v), -ESTALE);
    assert_int_equal(put_gv(s, "/early", 9, v_after), 0);
    assert_false(has(s, "/late2"));
    assert_true(has(s, "/early"));
    assert_false(has(s, "/late-other")); /* stored before invalidate_all */
    sg_cache_store_free(s);
}

static void test_set_cap(void **state) {
    (void)state;
    const size_t cap = SG_CACHE_SHARDS * 16384; /* 1 MiB */
    struct sg_cache_store *s = sg_cache_store_new(cap);
    char data[OBJ], key[32];
    memset(data, 'c', sizeof(data));
    for (int i = 0; i < 600; i++) {
        snprintf(key, sizeof(key), "/cap/%d", i);
        assert_int_equal(put(s, key, data, OBJ, NEVER, NEVER), 0);
    }
    assert_int_equal(put(s, "hot", data, OBJ, NEVER, NEVER), 0);
    /* readers of two of the last puts (the most recent of their shards) */
    struct sg_cache_entry *held = get(s, "/cap/599", T0);
    struct sg_cache_entry *held2 = get(s, "/cap/598", T0);
    struct sg_cache_entry *hot = get(s, "hot", T0); /* hot: the most recent of its shard */
    assert_non_null(held);
    assert_non_null(held2);
    assert_non_null(hot);
    sg_cache_entry_unref(hot);
    struct sg_cache_stats st0, st;
    sg_cache_stats(s, &st0);
    assert_true(st0.entries > 400);
    assert_int_equal(st0.cap, cap);

    /* lower: at most one 1000-byte entry a shard */
    const size_t low = SG_CACHE_SHARDS * 2048;
    sg_cache_store_set_cap(s, low);
    sg_cache_stats(s, &st);
    assert_int_equal(st.cap, low);
    assert_true(st.bytes <= low);
    assert_true(st.entries <= SG_CACHE_SHARDS);
    assert_true(st.entries > 0);
    assert_int_equal(st.evictions, st0.evictions + (st0.entries - st.entries));
    assert_true(has(s, "hot"));
    /* walk every key: entries and bytes agree with the stats */
    uint64_t found = 1, bytes = 0;
    struct sg_cache_entry *e = get(s, "hot", T0);
    bytes += e->charge;
    sg_cache_entry_unref(e);
    for (int i = 0; i < 600; i++) {
        snprintf(key, sizeof(key), "/cap/%d", i);
        e = get(s, key, T0);
        if (e) {
            found++;
            bytes += e->charge;
        }
        sg_cache_entry_unref(e);
    }
    assert_int_equal(found, st.entries);
    assert_int_equal(bytes, st.bytes);
    /* readers keep evicted entries */
    for (size_t i = 0; i < OBJ; i++)
        assert_int_equal(held->data[i], 'c');
    sg_cache_entry_unref(held);
    sg_cache_entry_unref(held2);

    /* a put after lowering: too big for the new share is refused */
    static char big[65536];
    assert_int_equal(put(s, "big", big, 3000, NEVER, NEVER), -E2BIG);
    assert_int_equal(put(s, "small", big, 100, NEVER, NEVER), 0);
    assert_true(has(s, "small"));

    /* raise: nothing evicted, bigger entries let in */
    sg_cache_stats(s, &st0);
    const size_t high = SG_CACHE_SHARDS * 65536;
    sg_cache_store_set_cap(s, high);
    sg_cache_stats(s, &st);
    assert_int_equal(st.cap, high);
    assert_int_equal(st.entries, st0.entries);
    assert_int_equal(st.evictions, st0.evictions);
    assert_int_equal(put(s, "big", big, 3000, NEVER, NEVER), 0);
    assert_int_equal(put(s, "bigger", big, 32768, NEVER, NEVER), 0);
    assert_true(has(s, "big"));
    assert_true(has(s, "bigger"));
    assert_int_equal(put(s, "too-big", big, 65536, NEVER, NEVER), -E2BIG);

    /* zero: everything goes, nothing gets in; then back */
    sg_cache_store_set_cap(s, 0);
    sg_cache_stats(s, &st);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.bytes, 0);
    assert_int_equal(st.cap, 0);
    assert_int_equal(put(s, "k", "", 0, NEVER, NEVER), -E2BIG);
    assert_false(has(s, "hot"));
    sg_cache_store_set_cap(s, cap);
    assert_int_equal(put(s, "k", "v", 1, NEVER, NEVER), 0);
    assert_true(has(s, "k"));
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
        cmocka_unit_test(test_version_monotonic),
        cmocka_unit_test(test_invalidate_group),
        cmocka_unit_test(test_purge_refuses_older_puts),
        cmocka_unit_test(test_invalidate_all),
        cmocka_unit_test(test_version_before_invalidation),
        cmocka_unit_test(test_set_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
