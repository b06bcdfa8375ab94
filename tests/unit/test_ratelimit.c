/*
 * Tables for src/ratelimit/gcra.c: the GCRA step on simulated time (no
 * sleeping) for the rates the seeds ask for, the remaining / reset /
 * retry-after values, and the sharded table: independent keys, a million
 * keys within the documented memory bound, expiry and eviction, and exact
 * counts when several threads hit one key. test_bench prints the cost of a
 * check (informative, not asserted).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "ratelimit/gcra.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define N(a)   (sizeof(a) / sizeof((a)[0]))
#define MS     1000ull /* in microseconds */
#define SEC    1000000ull
#define MINUTE (60 * SEC)
#define T0     (1000 * SEC) /* a monotonic clock some time after boot */

static const struct sg_rl_limit per_s_10 = {10, 1000, 10};

/* Requests at start, start + step, ... (n of them) on one fresh key:
 * how many were admitted. */
static uint64_t simulate(const struct sg_rl_limit *l, uint64_t start, uint64_t step, uint64_t n) {
    uint64_t tat = 0, admitted = 0;
    struct sg_rl_result r;
    for (uint64_t i = 0; i < n; i++) {
        sg_rl_gcra(&tat, l, start + i * step, &r);
        admitted += r.allowed;
    }
    return admitted;
}

/* splitmix64: distinct well-spread key hashes from a counter. */
static uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* ---- GCRA ------------------------------------------------------------- */

static void test_interval(void **state) {
    (void)state;
    struct {
        struct sg_rl_limit l;
        uint64_t want_ns;
    } cases[] = {
        {{10, 1000, 10}, 100000000ull},
        {{5, 60000, 5}, 12000000000ull},
        {{1000, 60000, 1}, 60000000ull},
        {{50, 60000, 1}, 1200000000ull},
        {{500, 60000, 1}, 120000000ull},
        {{3, 1000, 1}, 333333334ull}, /* rounded up */
        {{100000000, 1000, 1}, 10ull},
        {{1, 86400000, 1}, 86400000000000ull},
        {{0, 1000, 1}, 0},
        {{1, 0, 1}, 0},
        {{1, UINT64_MAX, 1}, SG_RL_PERIOD_MAX_MS * 1000000ull},
    };
    for (size_t i = 0; i < N(cases); i++)
        assert_int_equal(sg_rl_interval_ns(&cases[i].l), cases[i].want_ns);
}

/* A fresh key admits exactly burst at once, then one every T. */
static void test_burst_then_spacing(void **state) {
    (void)state;
    uint64_t tat = 0;
    struct sg_rl_result r;
    for (int i = 0; i < 10; i++) {
        sg_rl_gcra(&tat, &per_s_10, T0, &r);
        assert_true(r.allowed);
        assert_int_equal(r.remaining, 9 - i);
    }
    sg_rl_gcra(&tat, &per_s_10, T0, &r);
    assert_false(r.allowed);
    for (uint64_t k = 1; k <= 20; k++) {
        sg_rl_gcra(&tat, &per_s_10, T0 + k * 100 * MS - 1, &r);
        assert_false(r.allowed);
        sg_rl_gcra(&tat, &per_s_10, T0 + k * 100 * MS, &r);
        assert_true(r.allowed);
        assert_int_equal(r.remaining, 0);
        sg_rl_gcra(&tat, &per_s_10, T0 + k * 100 * MS, &r);
        assert_false(r.allowed);
    }
}

/* Issue 5's acceptance: 100 requests/s against 10/s burst 10 for 5 s gets
 * 10 + 50 = 60 +- 1. The burst refills a little while it is spent (11
 * pass in the first 100 ms), then one passes every 100 ms from 200 ms on:
 * 59 in [0, 5 s), 60 with the request at 5 s itself. */
static void test_exactness_10_per_s(void **state) {
    (void)state;
    uint64_t got = simulate(&per_s_10, T0, 10 * MS, 500);
    assert_in_range(got, 59, 61);
    assert_int_equal(got, 59);
    assert_int_equal(simulate(&per_s_10, T0, 10 * MS, 501), 60);
    assert_int_equal(simulate(&per_s_10, 0, 10 * MS, 501), 60); /* clock at 0 works too */
}

/* Clients sending faster than the limit for a while. want is burst +
 * duration / T, less what the grid of request times misses at the end;
 * the comment gives the derivation: k1 pass during the burst (while
 * k * (T - step) <= (burst - 1) * T), then one each T from the first
 * request at or after k1 * T + T - burst * T. */
static void test_rates(void **state) {
    (void)state;
    struct {
        const char *name;
        struct sg_rl_limit l;
        uint64_t step, n, want;
    } cases[] = {
        /* k1 = 5 (1 req/s), then 12 s, 24 s, ... 588 s: 49 */
        {"5/min burst 5, 1 req/s for 10 min", {5, 60000, 5}, SEC, 600, 54},
        /* one every 12 s from 0: 0 .. 3588 s */
        {"5/min burst 1, 1 req/s for 1 h", {5, 60000, 1}, SEC, 3600, 300},
        /* k1 = 149 (T 60 ms, step 20 ms), then 3 s, 3.06 s, ... < 60 s: 950 */
        {"1000/min burst 100, 50 req/s for 1 min", {1000, 60000, 100}, 20 * MS, 3000, 1099},
        /* truck: k1 = 52 (T 1.2 s, step 50 ms), then 3.6 s + 1.2 s * j < 120 s: 97 */
        {"truck 50/min burst 50, 20 req/s for 2 min", {50, 60000, 50}, 50 * MS, 2400, 149},
        /* office: k1 = 856 (T 120 ms), then from 42.85 s, 643 more before 120 s */
        {"office 500/min burst 500, 20 req/s for 2 min", {500, 60000, 500}, 50 * MS, 2400, 1499},
        /* T = 333.333334 ms, burst 1: at 0, 334, 668, ... 2672 ms */
        {"3/s burst 1, 1000 req/s for 3 s", {3, 1000, 1}, MS, 3000, 9},
        /* under the limit: everything passes */
        {"10/s burst 1, one each 100 ms", {10, 1000, 1}, 100 * MS, 1000, 1000},
        {"10/s burst 1, one each 150 ms", {10, 1000, 1}, 150 * MS, 1000, 1000},
        {"50/min burst 1, one each 1.2 s", {50, 60000, 1}, 1200 * MS, 500, 500},
        /* burst 1 at twice the rate: every other one */
        {"10/s burst 1, one each 50 ms", {10, 1000, 1}, 50 * MS, 1000, 500},
        {"1/s burst 1, 10 req/s for 10 s", {1, 1000, 1}, 100 * MS, 100, 10},
    };
    for (size_t i = 0; i < N(cases); i++) {
        uint64_t got = simulate(&cases[i].l, T0, cases[i].step, cases[i].n);
        if (got != cases[i].want)
            fail_msg("%s: admitted %llu, want %llu", cases[i].name, (unsigned long long)got,
                     (unsigned long long)cases[i].want);
    }
}

/* The fields at known points of 10/s burst 10 and of 1/s burst 1. */
static void test_known_points(void **state) {
    (void)state;
    struct step {
        uint64_t at_ms; /* after T0 */
        bool allowed;
        uint32_t remaining;
        uint64_t reset_ms, retry_after_ms;
    };
    static const struct step ten[] = {
        {0, true, 9, 100, 0},    {0, true, 8, 200, 0},     {0, true, 7, 300, 0},
        {0, true, 6, 400, 0},    {0, true, 5, 500, 0},     {0, true, 4, 600, 0},
        {0, true, 3, 700, 0},    {0, true, 2, 800, 0},     {0, true, 1, 900, 0},
        {0, true, 0, 1000, 0},   {0, false, 0, 1000, 100}, {50, false, 0, 950, 50},
        {99, false, 0, 901, 1},  {100, true, 0, 1000, 0},  {100, false, 0, 1000, 100},
        {600, true, 4, 600, 0},  {2000, true, 9, 100, 0}, /* full again after TAT */
        {2050, true, 8, 150, 0},
    };
    uint64_t tat = 0;
    struct sg_rl_result r;
    for (size_t i = 0; i < N(ten); i++) {
        sg_rl_gcra(&tat, &per_s_10, T0 + ten[i].at_ms * MS, &r);
        if (r.allowed != ten[i].allowed || r.remaining != ten[i].remaining ||
            r.reset_ms != ten[i].reset_ms || r.retry_after_ms != ten[i].retry_after_ms)
            fail_msg("10/s step %zu: allowed %d remaining %u reset %llu retry %llu", i, r.allowed,
                     r.remaining, (unsigned long long)r.reset_ms,
                     (unsigned long long)r.retry_after_ms);
    }

    static const struct sg_rl_limit one = {1, 1000, 1};
    static const struct step single[] = {
        {0, true, 0, 1000, 0},    {0, false, 0, 1000, 1000}, {500, false, 0, 500, 500},
        {1000, true, 0, 1000, 0}, {5000, true, 0, 1000, 0},  {5999, false, 0, 1, 1},
    };
    tat = 0;
    for (size_t i = 0; i < N(single); i++) {
        sg_rl_gcra(&tat, &one, T0 + single[i].at_ms * MS, &r);
        if (r.allowed != single[i].allowed || r.remaining != single[i].remaining ||
            r.reset_ms != single[i].reset_ms || r.retry_after_ms != single[i].retry_after_ms)
            fail_msg("1/s step %zu: allowed %d remaining %u reset %llu retry %llu", i, r.allowed,
                     r.remaining, (unsigned long long)r.reset_ms,
                     (unsigned long long)r.retry_after_ms);
    }

    /* Rounding up: T = 333.333334 ms; a request 1 us later waits 334 ms. */
    static const struct sg_rl_limit three = {3, 1000, 1};
    tat = 0;
    sg_rl_gcra(&tat, &three, T0, &r);
    assert_true(r.allowed);
    assert_int_equal(r.reset_ms, 334);
    sg_rl_gcra(&tat, &three, T0 + 1, &r);
    assert_false(r.allowed);
    assert_int_equal(r.retry_after_ms, 334);
    sg_rl_gcra(&tat, &three, T0 + 1 + 333 * MS, &r);
    assert_false(r.allowed);
    sg_rl_gcra(&tat, &three, T0 + 1 + 334 * MS, &r);
    assert_true(r.allowed);
}

/* The fields keep their promises on random limits and traffic: after a
 * rejection, waiting retry_after_ms passes and a millisecond less does not;
 * after an admission, exactly `remaining` more pass at once; after reset_ms
 * the bucket is full (burst pass at once) and a millisecond earlier not. */
static void test_fields_promises(void **state) {
    (void)state;
    uint64_t rnd = 42;
    for (int round = 0; round < 200; round++) {
        struct sg_rl_limit l = {(uint32_t)(mix(rnd++) % 1000 + 1),
                                (uint64_t)(mix(rnd++) % 3 == 0 ? 1000 : 60000),
                                (uint32_t)(mix(rnd++) % 20 + 1)};
        uint64_t tat = 0, now = T0;
        for (int i = 0; i < 200; i++) {
            now += mix(rnd++) % (2 * sg_rl_interval_ns(&l) / 1000 + 1);
            struct sg_rl_result r, r2;
            uint64_t saved = tat;
            sg_rl_gcra(&tat, &l, now, &r);
            if (!r.allowed) {
                assert_int_equal(tat, saved);
                assert_int_equal(r.remaining, 0);
                assert_true(r.retry_after_ms >= 1);
                uint64_t c = tat;
                sg_rl_gcra(&c, &l, now + r.retry_after_ms * MS, &r2);
                assert_true(r2.allowed);
                c = tat;
                sg_rl_gcra(&c, &l, now + (r.retry_after_ms - 1) * MS, &r2);
                assert_false(r2.allowed);
                continue;
            }
            assert_int_equal(r.retry_after_ms, 0);
            assert_true(r.remaining < l.burst);
            uint64_t c = tat;
            for (uint32_t k = 0; k < r.remaining; k++) {
                sg_rl_gcra(&c, &l, now, &r2);
                assert_true(r2.allowed);
            }
            sg_rl_gcra(&c, &l, now, &r2);
            assert_false(r2.allowed);
            c = tat;
            sg_rl_gcra(&c, &l, now + r.reset_ms * MS, &r2);
            assert_int_equal(r2.remaining, l.burst - 1);
            c = tat;
            sg_rl_gcra(&c, &l, now + (r.reset_ms - 1) * MS, &r2);
            assert_true(!r2.allowed || r2.remaining < l.burst - 1);
        }
    }
}

static void test_edge_limits(void **state) {
    (void)state;
    uint64_t tat = 0;
    struct sg_rl_result r;
    /* count 0: nothing passes, come back after the period */
    static const struct sg_rl_limit none = {0, 60000, 5};
    sg_rl_gcra(&tat, &none, T0, &r);
    assert_false(r.allowed);
    assert_int_equal(r.remaining, 0);
    assert_int_equal(r.retry_after_ms, 60000);
    assert_int_equal(tat, 0);
    /* period 0: no limit */
    static const struct sg_rl_limit open = {5, 0, 5};
    for (int i = 0; i < 100; i++) {
        sg_rl_gcra(&tat, &open, T0, &r);
        assert_true(r.allowed);
        assert_int_equal(r.remaining, 5);
    }
    /* burst 0 is burst 1 */
    static const struct sg_rl_limit b0 = {10, 1000, 0};
    assert_int_equal(simulate(&b0, T0, 0, 10), 1);
    /* huge values saturate instead of wrapping (UBSan would not catch
     * unsigned wrap-around, so check that the answers stay sane) */
    static const struct sg_rl_limit huge = {1, UINT64_MAX, UINT32_MAX};
    tat = 0;
    sg_rl_gcra(&tat, &huge, T0, &r);
    assert_true(r.allowed);
    assert_true(r.remaining >= 1); /* burst * T saturated: fewer than the burst */
    sg_rl_gcra(&tat, &huge, T0, &r);
    assert_true(r.allowed);
    static const struct sg_rl_limit slow = {1, UINT64_MAX, 1};
    tat = 0;
    sg_rl_gcra(&tat, &slow, UINT64_MAX, &r); /* now saturates; the TAT cannot go on */
    assert_false(r.allowed);
    assert_int_equal(tat, 0);
    assert_true(r.retry_after_ms >= 1);
    static const struct sg_rl_limit fast = {UINT32_MAX, 1000, UINT32_MAX};
    tat = 0;
    assert_int_equal(simulate(&fast, T0, 0, 1000), 1000);
}

/* A TAT at or before now is a fresh key: what makes expiry free. */
static void test_expired_is_fresh(void **state) {
    (void)state;
    uint64_t olds[] = {0, 1, T0 * 1000 - 1, T0 * 1000};
    for (size_t i = 0; i < N(olds); i++) {
        uint64_t a = olds[i], b = 0;
        struct sg_rl_result ra, rb;
        for (int k = 0; k < 12; k++) {
            sg_rl_gcra(&a, &per_s_10, T0, &ra);
            sg_rl_gcra(&b, &per_s_10, T0, &rb);
            assert_int_equal(ra.allowed, rb.allowed);
            assert_int_equal(ra.remaining, rb.remaining);
            assert_int_equal(ra.reset_ms, rb.reset_ms);
            assert_int_equal(ra.retry_after_ms, rb.retry_after_ms);
            assert_int_equal(a, b);
        }
    }
}

/* A clock a little behind (another worker's cached loop time) is stricter. */
static void test_clock_behind(void **state) {
    (void)state;
    uint64_t tat = 0;
    struct sg_rl_result r;
    for (int i = 0; i < 10; i++)
        sg_rl_gcra(&tat, &per_s_10, T0 + 100 * MS, &r);
    sg_rl_gcra(&tat, &per_s_10, T0 + 150 * MS, &r);
    assert_false(r.allowed);
    sg_rl_gcra(&tat, &per_s_10, T0 + 90 * MS, &r); /* behind */
    assert_false(r.allowed);
    assert_int_equal(r.retry_after_ms, 110);
    sg_rl_gcra(&tat, &per_s_10, T0 + 200 * MS, &r);
    assert_true(r.allowed);
}

/* ---- table ------------------------------------------------------------ */

static void test_table_basic(void **state) {
    (void)state;
    struct sg_rl_table *t = sg_rl_table_new(1000);
    assert_non_null(t);
    assert_int_equal(sg_rl_table_keys(t), 0);
    size_t empty = sg_rl_table_bytes(t);
    assert_true(empty < 32 * 1024);
    assert_false(sg_rl_table_peek(t, 7, NULL));
    struct sg_rl_result r;
    for (int i = 0; i < 10; i++) {
        sg_rl_check(t, 7, &per_s_10, T0, &r);
        assert_true(r.allowed);
        assert_int_equal(r.remaining, 9 - i);
    }
    sg_rl_check(t, 7, &per_s_10, T0, &r);
    assert_false(r.allowed);
    assert_int_equal(r.retry_after_ms, 100);
    uint64_t tat;
    assert_true(sg_rl_table_peek(t, 7, &tat));
    assert_int_equal(tat, (T0 + SEC) * 1000);
    assert_int_equal(sg_rl_table_keys(t), 1);
    assert_int_equal(sg_rl_table_active(t, T0), 1);
    assert_int_equal(sg_rl_table_active(t, T0 + SEC), 0);
    /* one shard allocated so far */
    assert_true(sg_rl_table_bytes(t) > empty);
    assert_true(sg_rl_table_bytes(t) <= sg_rl_table_bytes_max(1000));
    /* key hash 0 is a key like any other */
    sg_rl_check(t, 0, &per_s_10, T0, &r);
    assert_true(r.allowed);
    assert_int_equal(r.remaining, 9);
    assert_int_equal(sg_rl_table_evictions(t), 0);
    sg_rl_table_free(t);
    sg_rl_table_free(NULL);
}

/* 1,000 device keys, interleaved: each gets its own burst and refill. */
static void test_table_independent_keys(void **state) {
    (void)state;
    struct sg_rl_table *t = sg_rl_table_new(1000);
    assert_non_null(t);
    struct sg_rl_result r;
    static uint32_t admitted[1000];
    memset(admitted, 0, sizeof(admitted));
    for (int round = 0; round < 15; round++)
        for (uint64_t k = 0; k < 1000; k++) {
            sg_rl_check(t, k, &per_s_10, T0, &r); /* raw small hashes on purpose */
            admitted[k] += r.allowed;
        }
    for (size_t k = 0; k < 1000; k++)
        assert_int_equal(admitted[k], 10);
    /* 100 ms later each key has one more, whatever the others did */
    for (uint64_t k = 0; k < 1000; k++) {
        for (int i = 0; i < 3; i++) {
            sg_rl_check(t, k, &per_s_10, T0 + 100 * MS, &r);
            admitted[k] += r.allowed;
        }
        assert_int_equal(admitted[k], 11);
    }
    /* a different limit on other keys does not disturb them */
    static const struct sg_rl_limit truck = {50, 60000, 1};
    for (uint64_t k = 1000; k < 2000; k++) {
        sg_rl_check(t, k, &truck, T0 + 100 * MS, &r);
        assert_true(r.allowed);
        sg_rl_check(t, k, &truck, T0 + 100 * MS, &r);
        assert_false(r.allowed);
        assert_int_equal(r.retry_after_ms, 1200);
    }
    assert_int_equal(sg_rl_table_keys(t), 2000);
    assert_int_equal(sg_rl_table_evictions(t), 0);
    sg_rl_table_free(t);
}

/* A million distinct active keys in a table for a million: no eviction,
 * memory within the bound. Then more active keys than the table has slots:
 * evictions, memory unchanged. */
static void test_table_million_keys(void **state) {
    (void)state;
    const size_t max = 1000000;
    struct sg_rl_table *t = sg_rl_table_new(max);
    assert_non_null(t);
    static const struct sg_rl_limit l = {5, 60000, 5}; /* active for 12 s after a request */
    struct sg_rl_result r;
    for (uint64_t k = 0; k < max; k++) {
        sg_rl_check(t, mix(k), &l, T0 + k, &r); /* one second of arrivals */
        assert_true(r.allowed);
    }
    size_t bytes = sg_rl_table_bytes(t), bound = sg_rl_table_bytes_max(max);
    assert_int_equal(sg_rl_table_evictions(t), 0);
    assert_int_equal(sg_rl_table_keys(t), max);
    assert_int_equal(sg_rl_table_active(t, T0 + SEC), max);
    assert_true(bytes <= bound);
    assert_true(bound <= 22 * max); /* the header's 22.0 bytes per key at 1e6 */
    printf("# 1e6 keys: %zu bytes held (bound %zu), %.1f bytes per key, %zu slots\n", bytes, bound,
           (double)bytes / (double)max, sg_rl_table_slots(t));
    /* every key still has its own state */
    for (uint64_t k = 0; k < max; k += 997) {
        uint64_t tat;
        assert_true(sg_rl_table_peek(t, mix(k), &tat));
        assert_int_equal(tat, (T0 + k) * 1000 + 12000000000ull);
    }

    size_t slots = sg_rl_table_slots(t), more = slots - max + max / 4;
    for (uint64_t k = max; k < max + more; k++)
        sg_rl_check(t, mix(k), &l, T0 + SEC, &r);
    uint64_t ev = sg_rl_table_evictions(t);
    printf("# %zu active keys: %llu evictions, %zu keys\n", max + more, (unsigned long long)ev,
           sg_rl_table_keys(t));
    assert_true(ev >= max + more - slots); /* more keys than slots */
    assert_true(ev < more);
    assert_int_equal(sg_rl_table_bytes(t), bytes);
    assert_true(sg_rl_table_keys(t) <= slots);
    sg_rl_table_free(t);
}

/* Keys that expired leave their slots to new keys: 20 waves of max_keys
 * new keys, each after the previous wave expired, make no eviction though
 * they are more keys than the table has slots. The same keys all active at
 * once do evict. */
static void test_table_expired_reused(void **state) {
    (void)state;
    const size_t max = 1000;
    struct sg_rl_table *t = sg_rl_table_new(max);
    assert_non_null(t);
    size_t slots = sg_rl_table_slots(t);
    static const struct sg_rl_limit l = {10, 1000, 1}; /* active 100 ms after a request */
    struct sg_rl_result r;
    uint64_t key = 0;
    for (uint64_t wave = 0; wave < 20; wave++) {
        uint64_t now = T0 + wave * 200 * MS;
        for (size_t i = 0; i < max; i++) {
            sg_rl_check(t, mix(key++), &l, now, &r);
            assert_true(r.allowed);
        }
        assert_int_equal(sg_rl_table_active(t, now), max);
    }
    assert_true(key > slots);
    assert_int_equal(sg_rl_table_evictions(t), 0);
    assert_true(sg_rl_table_keys(t) <= slots);
    assert_true(sg_rl_table_keys(t) >= max);
    size_t bytes = sg_rl_table_bytes(t);
    assert_true(bytes <= sg_rl_table_bytes_max(max));

    /* a returning expired key is fresh again */
    sg_rl_check(t, mix(0), &l, T0 + 10 * SEC, &r);
    assert_true(r.allowed);

    /* as many keys all active at once: more than the slots, so evictions */
    uint64_t now = T0 + 20 * SEC;
    for (size_t i = 0; i < 2 * slots; i++)
        sg_rl_check(t, mix(key++), &l, now, &r);
    assert_true(sg_rl_table_evictions(t) >= slots);
    assert_int_equal(sg_rl_table_bytes(t), bytes);
    assert_true(sg_rl_table_keys(t) <= slots);
    sg_rl_table_free(t);
}

/* Eviction takes the least constrained key: keys with a far TAT (heavy
 * users) survive a flood of new one-request keys that overflows the table. */
static void test_table_evicts_smallest_tat(void **state) {
    (void)state;
    struct sg_rl_table *t = sg_rl_table_new(1000);
    assert_non_null(t);
    size_t slots = sg_rl_table_slots(t);
    static const struct sg_rl_limit l = {10, 1000, 10};
    struct sg_rl_result r;
    for (uint64_t k = 0; k < 100; k++)
        for (int i = 0; i < 10; i++)
            sg_rl_check(t, mix(k), &l, T0, &r); /* TAT now + 1 s */
    for (uint64_t k = 100; k < 100 + 3 * slots; k++)
        sg_rl_check(t, mix(k), &l, T0, &r); /* TAT now + 100 ms */
    assert_true(sg_rl_table_evictions(t) > 0);
    for (uint64_t k = 0; k < 100; k++) {
        uint64_t tat;
        assert_true(sg_rl_table_peek(t, mix(k), &tat));
        assert_int_equal(tat, (T0 + SEC) * 1000);
        sg_rl_check(t, mix(k), &l, T0, &r);
        assert_false(r.allowed); /* the heavy users are still limited */
    }
    sg_rl_table_free(t);
}

/* ---- threads ---------------------------------------------------------- */

#define THREADS 4

struct worker {
    struct sg_rl_table *t;
    pthread_barrier_t *barrier;
    int id;
    uint64_t admitted[2]; /* shared key, per phase */
    uint64_t own_admitted;
};

static const struct sg_rl_limit shared_l = {100, 1000, 20}; /* T 10 ms */

static void *worker_main(void *arg) {
    struct worker *w = arg;
    struct sg_rl_result r;
    static const uint64_t phase_at[2] = {T0, T0 + 100 * MS};
    for (int p = 0; p < 2; p++) {
        pthread_barrier_wait(w->barrier);
        for (int i = 0; i < 5000; i++) {
            sg_rl_check(w->t, 12345, &shared_l, phase_at[p], &r);
            w->admitted[p] += r.allowed;
            /* and keys of its own, inserted while the others insert theirs */
            sg_rl_check(w->t, mix(1000000 * (uint64_t)(w->id + 1) + (uint64_t)i), &shared_l,
                        phase_at[p], &r);
            w->own_admitted += r.allowed;
        }
    }
    return NULL;
}

/* No lost update: THREADS threads hammering one key at one instant admit
 * exactly the burst, then exactly the refill of 100 ms (TAT T0 + 200 ms,
 * now T0 + 100 ms: 10 more until the TAT is 200 ms ahead again). */
static void test_threads_shared_key(void **state) {
    (void)state;
    struct sg_rl_table *t = sg_rl_table_new(100000);
    assert_non_null(t);
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, THREADS);
    struct worker w[THREADS];
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct worker){.t = t, .barrier = &barrier, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    }
    uint64_t a0 = 0, a1 = 0, own = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        a0 += w[i].admitted[0];
        a1 += w[i].admitted[1];
        own += w[i].own_admitted;
    }
    pthread_barrier_destroy(&barrier);
    assert_int_equal(a0, 20);
    assert_int_equal(a1, 10);
    /* own keys: each new in phase 0 (admitted) and checked again in phase 1 */
    assert_int_equal(own, 2 * THREADS * 5000);
    assert_int_equal(sg_rl_table_keys(t), 1 + THREADS * 5000);
    assert_int_equal(sg_rl_table_evictions(t), 0);
    sg_rl_table_free(t);
}

/* ---- bench ------------------------------------------------------------ */

static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* One thread, 100,000 keys, 2 million checks: the cost of a check (under
 * ASan here; build the release flavour for real numbers). */
static void test_bench(void **state) {
    (void)state;
    struct sg_rl_table *t = sg_rl_table_new(100000);
    assert_non_null(t);
    static const struct sg_rl_limit l = {100, 60000, 100};
    struct sg_rl_result r;
    uint64_t admitted = 0;
    double t0 = seconds();
    for (uint64_t i = 0; i < 2000000; i++) {
        sg_rl_check(t, mix(i % 100000), &l, T0 + i, &r);
        admitted += r.allowed;
    }
    double dt = seconds() - t0;
    assert_int_equal(admitted, 2000000);
    printf("# bench: %.0f ns per check (100,000 keys), %zu bytes held (%.1f per key)\n",
           dt * 1e9 / 2e6, sg_rl_table_bytes(t), (double)sg_rl_table_bytes(t) / 1e5);
    sg_rl_table_free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_interval),
        cmocka_unit_test(test_burst_then_spacing),
        cmocka_unit_test(test_exactness_10_per_s),
        cmocka_unit_test(test_rates),
        cmocka_unit_test(test_known_points),
        cmocka_unit_test(test_fields_promises),
        cmocka_unit_test(test_edge_limits),
        cmocka_unit_test(test_expired_is_fresh),
        cmocka_unit_test(test_clock_behind),
        cmocka_unit_test(test_table_basic),
        cmocka_unit_test(test_table_independent_keys),
        cmocka_unit_test(test_table_million_keys),
        cmocka_unit_test(test_table_expired_reused),
        cmocka_unit_test(test_table_evicts_smallest_tat),
        cmocka_unit_test(test_threads_shared_key),
        cmocka_unit_test(test_bench),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
