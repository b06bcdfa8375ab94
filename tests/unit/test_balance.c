/*
 * Tables for the balance algorithms of src/pool/balance.c: round robin over
 * usable/unusable mixes, the smooth weighted round robin's exact sequences
 * and ratios, least connections and power of two choices, and the
 * consistent hash ring's balance and stability when servers come and go.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "pool/balance.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define N(a)  (sizeof(a) / sizeof((a)[0]))
#define MAXC  16
#define NKEYS 10000

/* Candidates from a string: '1' usable, '0' not; weight 1, nothing in flight. */
static size_t cands_from(const char *usable, struct sg_candidate *c) {
    size_t n = strlen(usable);
    for (size_t i = 0; i < n; i++)
        c[i] = (struct sg_candidate){.weight = 1, .inflight = 0, .usable = usable[i] == '1'};
    return n;
}

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A pool over servers[] built by hand (what the config loader would make). */
static struct sg_pool make_pool(struct sg_server *srv, const char *const *texts,
                                const uint32_t *weights, size_t nprimary, size_t nbackup) {
    for (size_t i = 0; i < nprimary + nbackup; i++) {
        memset(&srv[i], 0, sizeof(srv[i]));
        srv[i].text = (char *)texts[i];
        srv[i].weight = weights ? weights[i] : 1;
        srv[i].backup = i >= nprimary;
        srv[i].id = (uint32_t)i;
    }
    struct sg_pool p;
    memset(&p, 0, sizeof(p));
    p.name = (char *)"test";
    p.servers = srv;
    p.nservers = nprimary + nbackup;
    p.nprimary = nprimary;
    return p;
}

static struct sg_balancer *balancer_for(const char *const *texts, const uint32_t *weights,
                                        size_t nprimary, size_t nbackup) {
    struct sg_server srv[MAXC];
    struct sg_pool p = make_pool(srv, texts, weights, nprimary, nbackup);
    struct sg_balancer *b = sg_balancer_new(&p);
    assert_non_null(b);
    return b; /* keeps nothing of srv or p */
}

/* ---- round robin ------------------------------------------------------ */

struct rr_case {
    const char *usable;
    const char *want; /* picks from cursor 0; '-' = -1 */
};

static void test_round_robin(void **state) {
    (void)state;
    static const struct rr_case cases[] = {
        {"1", "0000"},      {"111", "0120120"},   {"011", "1121121"}, {"101", "0220220"},
        {"110", "0100100"}, {"0010", "22222222"}, {"1001", "0333"},   {"000", "---"},
        {"0", "--"},        {"", "--"},
    };
    for (size_t i = 0; i < N(cases); i++) {
        struct sg_candidate c[MAXC];
        size_t n = cands_from(cases[i].usable, c);
        _Atomic uint32_t cursor = 0;
        for (size_t k = 0; cases[i].want[k]; k++) {
            int want = cases[i].want[k] == '-' ? -1 : cases[i].want[k] - '0';
            int got = sg_balance_round_robin(&cursor, c, n);
            if (got != want)
                print_error("rr %s pick %zu: got %d want %d\n", cases[i].usable, k, got, want);
            assert_int_equal(got, want);
        }
    }
}

/* Random mixes, a cursor about to wrap: never an unusable one, -1 iff none. */
static void test_round_robin_random(void **state) {
    (void)state;
    uint64_t seed = 1;
    for (int round = 0; round < 200; round++) {
        struct sg_candidate c[MAXC];
        size_t n = 1 + splitmix(&seed) % 8;
        bool any = false;
        for (size_t i = 0; i < n; i++) {
            c[i] = (struct sg_candidate){.weight = 1, .usable = splitmix(&seed) & 1};
            any |= c[i].usable;
        }
        _Atomic uint32_t cursor = UINT32_MAX - 10;
        for (int k = 0; k < 40; k++) {
            int got = sg_balance_round_robin(&cursor, c, n);
            if (!any) {
                assert_int_equal(got, -1);
                continue;
            }
            assert_true(got >= 0 && (size_t)got < n);
            assert_true(c[got].usable);
        }
    }
}

/* ---- smooth weighted round robin -------------------------------------- */

static const char *const abc[] = {"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80",
                                  "10.0.0.5:80", "10.0.0.6:80", "10.0.0.7:80", "10.0.0.8:80"};

struct seq_case {
    uint32_t weights[4];
    const char *usable;
    const char *want; /* 'a' = candidate 0, ...; '-' = -1 */
};

static void test_weighted_sequence(void **state) {
    (void)state;
    static const struct seq_case cases[] = {
        /* nginx's example: no run of five a's */
        {{5, 1, 1},
         "111",
         "aabacaa"
         "aabacaa"
         "aabacaa"},
        {{3, 1},
         "11",
         "aaba"
         "aaba"},
        {{1, 1, 1}, "111", "abcabc"},
        {{2, 1},
         "11",
         "aba"
         "aba"},
        {{5, 1, 1}, "011", "bcbcbc"},
        {{5, 1, 1},
         "101",
         "aaacaa"
         "aaacaa"},
        {{5, 1, 1}, "000", "---"},
        {{4, 2, 1, 1}, "1111", "abacdaba"},
    };
    for (size_t i = 0; i < N(cases); i++) {
        struct sg_candidate c[MAXC];
        size_t n = cands_from(cases[i].usable, c);
        for (size_t j = 0; j < n; j++)
            c[j].weight = cases[i].weights[j];
        struct sg_balancer *b = balancer_for(abc, cases[i].weights, n, 0);
        for (size_t k = 0; cases[i].want[k]; k++) {
            int want = cases[i].want[k] == '-' ? -1 : cases[i].want[k] - 'a';
            int got = sg_balance_weighted(b, false, c, n);
            if (got != want)
                print_error("swrr case %zu pick %zu: got %d want %d\n", i, k, got, want);
            assert_int_equal(got, want);
        }
        sg_balancer_free(b);
    }
}

struct ratio_case {
    uint32_t weights[4];
    size_t n;
    int picks;
    int want[4];
};

static void test_weighted_ratio(void **state) {
    (void)state;
    static const struct ratio_case cases[] = {
        {{5, 1, 1}, 3, 7, {5, 1, 1}},
        {{3, 1}, 2, 4000, {3000, 1000}},
        {{1, 1, 1}, 3, 3000, {1000, 1000, 1000}},
        {{2, 3, 5}, 3, 1000, {200, 300, 500}},
        {{1000, 1}, 2, 1001, {1000, 1}},
        {{7, 0, 3}, 3, 11, {7, 1, 3}}, /* weight 0 counts as 1 */
        {{1, 1, 1, 1}, 4, 1, {1, 0, 0, 0}},
    };
    for (size_t i = 0; i < N(cases); i++) {
        struct sg_candidate c[MAXC];
        cands_from("1111", c);
        for (size_t j = 0; j < cases[i].n; j++)
            c[j].weight = cases[i].weights[j];
        struct sg_balancer *b = balancer_for(abc, cases[i].weights, cases[i].n, 0);
        int got[4] = {0};
        for (int k = 0; k < cases[i].picks; k++) {
            int r = sg_balance_weighted(b, false, c, cases[i].n);
            assert_true(r >= 0 && (size_t)r < cases[i].n);
            got[r]++;
        }
        for (size_t j = 0; j < cases[i].n; j++) {
            if (got[j] != cases[i].want[j])
                print_error("swrr ratio case %zu server %zu: %d want %d\n", i, j, got[j],
                            cases[i].want[j]);
            assert_int_equal(got[j], cases[i].want[j]);
        }
        sg_balancer_free(b);
    }
}

/* The weights passed with each pick rule (slow start changes them). */
static void test_weighted_changes(void **state) {
    (void)state;
    static const uint32_t w[] = {1, 1};
    struct sg_balancer *b = balancer_for(abc, w, 2, 0);
    struct sg_candidate c[2];
    cands_from("11", c);
    int got[2] = {0};
    for (int k = 0; k < 100; k++)
        got[sg_balance_weighted(b, false, c, 2)]++;
    assert_int_equal(got[0], 50);
    assert_int_equal(got[1], 50);

    c[0].weight = 3;
    got[0] = got[1] = 0;
    for (int k = 0; k < 400; k++)
        got[sg_balance_weighted(b, false, c, 2)]++;
    assert_in_range(got[0], 297, 303);
    assert_in_range(got[1], 97, 103);

    /* A ramp like slow start's: server 1 from weight 1 to 10. */
    c[0].weight = 10;
    int early = 0, late = 0;
    for (uint32_t step = 1; step <= 10; step++) {
        c[1].weight = step;
        for (int k = 0; k < 100; k++) {
            int r = sg_balance_weighted(b, false, c, 2);
            if (r == 1 && step <= 2)
                early++;
            if (r == 1 && step >= 9)
                late++;
        }
    }
    assert_in_range(early, 18, 34); /* ~9 then ~17 of 100 */
    assert_in_range(late, 85, 105); /* ~47 then 50 of 100 */

    /* An unusable server keeps its place and comes back into the rotation. */
    c[0].weight = c[1].weight = 1;
    c[0].usable = false;
    for (int k = 0; k < 10; k++)
        assert_int_equal(sg_balance_weighted(b, false, c, 2), 1);
    c[0].usable = true;
    got[0] = got[1] = 0;
    for (int k = 0; k < 100; k++)
        got[sg_balance_weighted(b, false, c, 2)]++;
    assert_in_range(got[0], 48, 52);
    sg_balancer_free(b);
}

/* Primaries and backups have their own state; odd inputs are safe. */
static void test_weighted_groups(void **state) {
    (void)state;
    static const uint32_t w[] = {5, 1, 1, 1, 1};
    struct sg_balancer *b = balancer_for(abc, w, 3, 2);
    struct sg_candidate p[3], bk[2];
    cands_from("111", p);
    cands_from("11", bk);
    p[0].weight = 5;
    static const char want[] = "aabacaa";
    for (size_t k = 0; k < 14; k++) {
        assert_int_equal(sg_balance_weighted(b, false, p, 3), want[k % 7] - 'a');
        assert_int_equal(sg_balance_weighted(b, true, bk, 2), (int)(k % 2));
    }

    /* A list longer than the pool (should not happen): still a usable one. */
    struct sg_candidate big[6];
    cands_from("011010", big);
    for (int k = 0; k < 20; k++) {
        int r = sg_balance_weighted(b, false, big, 6);
        assert_true(r >= 0 && r < 6 && big[r].usable);
    }
    assert_int_equal(sg_balance_weighted(b, false, big, 0), -1);
    assert_int_equal(sg_balance_weighted(b, true, big, 0), -1);
    sg_balancer_free(b);

    /* No balancer: the heaviest usable one. */
    cands_from("0111", big);
    big[2].weight = 4;
    assert_int_equal(sg_balance_weighted(NULL, false, big, 4), 2);
    cands_from("000", big);
    assert_int_equal(sg_balance_weighted(NULL, false, big, 3), -1);

    /* A pool without backups; bad input. */
    b = balancer_for(abc, NULL, 2, 0);
    assert_int_equal(sg_balance_weighted(b, true, big, 0), -1);
    sg_balancer_free(b);
    sg_balancer_free(NULL);
    assert_null(sg_balancer_new(NULL));
}

/* Picks from 4 threads at once are serialised: the totals stay exact. */
struct swrr_thread_arg {
    struct sg_balancer *b;
    int got[2];
};

static void *swrr_thread(void *p) {
    struct swrr_thread_arg *a = p;
    struct sg_candidate c[2] = {{.weight = 3, .usable = true}, {.weight = 1, .usable = true}};
    for (int k = 0; k < 10000; k++)
        a->got[sg_balance_weighted(a->b, false, c, 2)]++;
    return NULL;
}

static void test_weighted_threads(void **state) {
    (void)state;
    static const uint32_t w[] = {3, 1};
    struct swrr_thread_arg args[4] = {{0}};
    pthread_t t[4];
    struct sg_balancer *b = balancer_for(abc, w, 2, 0);
    for (int i = 0; i < 4; i++) {
        args[i].b = b;
        assert_int_equal(pthread_create(&t[i], NULL, swrr_thread, &args[i]), 0);
    }
    int got[2] = {0};
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        got[0] += args[i].got[0];
        got[1] += args[i].got[1];
    }
    assert_int_equal(got[0], 30000);
    assert_int_equal(got[1], 10000);
    sg_balancer_free(b);
}

/* ---- least connections ------------------------------------------------ */

struct lc_spec {
    uint32_t weight, inflight;
    bool usable;
};

struct lc_case {
    struct lc_spec c[4];
    size_t n;
    const char *allowed; /* indexes that may be picked ("-" = none) */
};

static void test_least_conn(void **state) {
    (void)state;
    static const struct lc_case cases[] = {
        {{{1, 5, 1}, {1, 3, 1}, {1, 4, 1}}, 3, "1"},
        {{{2, 5, 1}, {1, 3, 1}}, 2, "0"},             /* 2.5 < 3 */
        {{{2, 6, 1}, {1, 3, 1}}, 2, "01"},            /* 3 = 3: tie */
        {{{1, 0, 0}, {1, 3, 1}, {1, 4, 1}}, 3, "1"},  /* the idle one is down */
        {{{1, 2, 1}, {1, 2, 1}, {1, 5, 1}}, 3, "01"}, /* ties spread */
        {{{1, 0, 1}, {1, 0, 1}, {1, 0, 1}, {1, 0, 1}}, 4, "0123"},
        {{{1000, 999, 1}, {1, 1, 1}}, 2, "0"},                   /* 0.999 < 1 */
        {{{1, 4000000000u, 1}, {1000, 4000000000u, 1}}, 2, "1"}, /* no overflow */
        {{{0, 3, 1}, {1, 4, 1}}, 2, "0"},                        /* weight 0 counts as 1 */
        {{{1, 0, 0}, {1, 0, 0}}, 2, "-"},
        {{{1, 0, 1}}, 0, "-"},
    };
    for (size_t i = 0; i < N(cases); i++) {
        struct sg_candidate c[4];
        for (size_t j = 0; j < cases[i].n; j++)
            c[j] = (struct sg_candidate){cases[i].c[j].weight, cases[i].c[j].inflight,
                                         cases[i].c[j].usable};
        int seen[4] = {0}, none = 0;
        uint64_t seed = 42;
        for (int k = 0; k < 1000; k++) {
            int r = sg_balance_least_conn(c, cases[i].n, splitmix(&seed));
            if (r < 0) {
                none++;
                continue;
            }
            char idx = (char)('0' + r);
            if (strchr(cases[i].allowed, idx) == NULL)
                print_error("least_conn case %zu: picked %d\n", i, r);
            assert_non_null(strchr(cases[i].allowed, idx));
            seen[r]++;
        }
        if (strcmp(cases[i].allowed, "-") == 0) {
            assert_int_equal(none, 1000);
            continue;
        }
        assert_int_equal(none, 0);
        /* Each allowed one gets its share of 1000 within 10 points. */
        size_t na = strlen(cases[i].allowed);
        for (size_t a = 0; a < na; a++) {
            int share = seen[cases[i].allowed[a] - '0'];
            if (share < 1000 / (int)na - 100 || share > 1000 / (int)na + 100)
                print_error("least_conn case %zu: %c got %d\n", i, cases[i].allowed[a], share);
            assert_in_range(share, 1000 / na - 100, 1000 / na + 100);
        }
    }
}

/* ---- power of two choices --------------------------------------------- */

static void test_p2c(void **state) {
    (void)state;
    struct sg_candidate c[MAXC];
    uint64_t seed = 7;

    cands_from("000", c);
    assert_int_equal(sg_balance_p2c(c, 3, splitmix(&seed)), -1);
    assert_int_equal(sg_balance_p2c(c, 0, splitmix(&seed)), -1);
    cands_from("0010", c);
    c[2].inflight = 1000;
    for (int k = 0; k < 100; k++)
        assert_int_equal(sg_balance_p2c(c, 4, splitmix(&seed)), 2);

    /* Two equal servers share the load (a tie goes to the first drawn). */
    int got[MAXC] = {0};
    cands_from("0101", c);
    for (int k = 0; k < 10000; k++) {
        int r = sg_balance_p2c(c, 4, splitmix(&seed));
        assert_true(r == 1 || r == 3);
        got[r]++;
    }
    assert_in_range(got[1], 4500, 5500);

    /* Five servers, one with far more in flight: it is picked rarely (here
     * never: it loses every pair); the other four share the rest. */
    cands_from("111111", c);
    c[5].usable = false;
    c[5].inflight = 0; /* idle but unusable: never */
    static const uint32_t inflight[] = {10, 12, 500, 9, 11};
    for (size_t i = 0; i < 5; i++)
        c[i].inflight = inflight[i];
    memset(got, 0, sizeof(got));
    for (int k = 0; k < 10000; k++)
        got[sg_balance_p2c(c, 6, splitmix(&seed))]++;
    print_message("p2c picks: %d %d %d(heavy) %d %d\n", got[0], got[1], got[2], got[3], got[4]);
    assert_true(got[2] < 100);
    assert_int_equal(got[5], 0);
    for (size_t i = 0; i < 5; i++)
        if (i != 2)
            assert_true(got[i] > 500);
    /* The least loaded (9) wins every pair it is in: 2/5 of the draws. */
    assert_in_range(got[3], 3700, 4300);

    /* Weight counts: 20 in flight at weight 4 is lighter than 10 at 1. */
    cands_from("11", c);
    c[0].weight = 4;
    c[0].inflight = 20;
    c[1].inflight = 10;
    for (int k = 0; k < 100; k++)
        assert_int_equal(sg_balance_p2c(c, 2, splitmix(&seed)), 0);
}

/* ---- consistent hashing ----------------------------------------------- */

static uint64_t key_hash(int i) {
    char buf[32];
    int len = snprintf(buf, sizeof(buf), "user-%d", i);
    return sg_hash64(buf, (size_t)len);
}

/* owner[k] = index of the server owning key k, all usable. */
static void owners(struct sg_balancer *b, size_t n, int *owner) {
    struct sg_candidate c[MAXC];
    cands_from("1111111111111111", c);
    for (int k = 0; k < NKEYS; k++) {
        owner[k] = sg_balance_hash(b, false, key_hash(k), c, n);
        assert_true(owner[k] >= 0 && (size_t)owner[k] < n);
    }
}

static void test_hash64(void **state) {
    (void)state;
    assert_true(sg_hash64("a", 1) == sg_hash64("a", 1));
    assert_true(sg_hash64("a", 1) != sg_hash64("b", 1));
    assert_true(sg_hash64("", 0) != sg_hash64("\0", 1));
    assert_true(sg_hash64("ab", 2) != sg_hash64("ba", 2));
    /* Every output bit is about half set over sequential keys, and a one-bit
     * change of the input flips about half the output bits. */
    int ones[64] = {0};
    long flips = 0;
    for (int i = 0; i < NKEYS; i++) {
        uint64_t h = key_hash(i);
        for (int bit = 0; bit < 64; bit++)
            ones[bit] += (int)((h >> bit) & 1);
        uint32_t v = (uint32_t)i, v2 = v ^ (1u << (i % 32));
        flips += __builtin_popcountll(sg_hash64(&v, 4) ^ sg_hash64(&v2, 4));
    }
    for (int bit = 0; bit < 64; bit++)
        assert_in_range(ones[bit], NKEYS / 2 - 300, NKEYS / 2 + 300);
    assert_in_range(flips / NKEYS, 30, 34);
}

static void test_hash_stable_balanced(void **state) {
    (void)state;
    struct sg_balancer *b = balancer_for(abc, NULL, 3, 0);
    static int owner[NKEYS];
    owners(b, 3, owner);
    int count[3] = {0};
    for (int k = 0; k < NKEYS; k++)
        count[owner[k]]++;
    print_message("hash 3 servers: %d %d %d of %d keys\n", count[0], count[1], count[2], NKEYS);
    for (int s = 0; s < 3; s++)
        assert_in_range(count[s], NKEYS * 25 / 100, NKEYS * 41 / 100);

    /* Same key, same server, also from a balancer built again. */
    struct sg_balancer *b2 = balancer_for(abc, NULL, 3, 0);
    static int owner2[NKEYS];
    owners(b2, 3, owner2);
    assert_memory_equal(owner, owner2, sizeof(owner));
    sg_balancer_free(b2);
    sg_balancer_free(b);

    /* Weights: 2:1:1 gives about half to the first. */
    static const uint32_t w[] = {2, 1, 1};
    b = balancer_for(abc, w, 3, 0);
    owners(b, 3, owner);
    memset(count, 0, sizeof(count));
    for (int k = 0; k < NKEYS; k++)
        count[owner[k]]++;
    print_message("hash 2:1:1: %d %d %d\n", count[0], count[1], count[2]);
    assert_in_range(count[0], NKEYS * 42 / 100, NKEYS * 58 / 100);
    sg_balancer_free(b);

    /* Weights large enough to hit the ring cap still balance by weight. */
    static const uint32_t big[] = {1000, 1000, 500, 1000};
    b = balancer_for(abc, big, 4, 0);
    owners(b, 4, owner);
    int c4[4] = {0};
    for (int k = 0; k < NKEYS; k++)
        c4[owner[k]]++;
    print_message("hash 1000:1000:500:1000: %d %d %d %d\n", c4[0], c4[1], c4[2], c4[3]);
    assert_in_range(c4[2], NKEYS * 10 / 100, NKEYS * 20 / 100);
    sg_balancer_free(b);
}

/* Adding a server takes about 1/N of the keys, all of them onto the new
 * server; removing one moves only its own keys. */
static void test_hash_add_remove(void **state) {
    (void)state;
    static int o3[NKEYS], o4[NKEYS], o2[NKEYS];
    struct sg_balancer *b3 = balancer_for(abc, NULL, 3, 0);
    struct sg_balancer *b4 = balancer_for(abc, NULL, 4, 0);
    static const char *const ac[] = {"10.0.0.1:80", "10.0.0.3:80"}; /* abc without b */
    struct sg_balancer *b2 = balancer_for(ac, NULL, 2, 0);
    owners(b3, 3, o3);
    owners(b4, 4, o4);
    owners(b2, 2, o2);

    int moved = 0;
    for (int k = 0; k < NKEYS; k++) {
        if (o3[k] != o4[k]) {
            moved++;
            assert_int_equal(o4[k], 3); /* only onto the new server */
        }
    }
    print_message("hash 3 -> 4 servers: %d of %d keys moved (%.1f%%)\n", moved, NKEYS,
                  100.0 * moved / NKEYS);
    assert_in_range(moved, NKEYS * 15 / 100, NKEYS * 30 / 100);

    int moved_rm = 0, owned_by_b = 0;
    for (int k = 0; k < NKEYS; k++) {
        const char *before = abc[o3[k]], *after = ac[o2[k]];
        if (o3[k] == 1)
            owned_by_b++;
        else
            assert_string_equal(before, after); /* the others' keys stay */
        if (strcmp(before, after) != 0)
            moved_rm++;
    }
    print_message("hash 3 -> 2 servers: %d of %d keys moved, all %d of the removed one\n", moved_rm,
                  NKEYS, owned_by_b);
    assert_int_equal(moved_rm, owned_by_b);
    sg_balancer_free(b2);
    sg_balancer_free(b3);
    sg_balancer_free(b4);
}

/* An unusable owner: its keys go on to the next server (the same one as if
 * it were removed from the pool) and come back when it is usable again. */
static void test_hash_unusable(void **state) {
    (void)state;
    static int o3[NKEYS], o2[NKEYS];
    struct sg_balancer *b3 = balancer_for(abc, NULL, 3, 0);
    static const char *const ac[] = {"10.0.0.1:80", "10.0.0.3:80"};
    struct sg_balancer *b2 = balancer_for(ac, NULL, 2, 0);
    owners(b3, 3, o3);
    owners(b2, 2, o2);

    struct sg_candidate c[3];
    cands_from("101", c);
    for (int k = 0; k < NKEYS; k++) {
        int r = sg_balance_hash(b3, false, key_hash(k), c, 3);
        assert_true(r == 0 || r == 2);
        if (o3[k] != 1)
            assert_int_equal(r, o3[k]);
        assert_string_equal(abc[r], ac[o2[k]]);
    }
    c[1].usable = true;
    for (int k = 0; k < NKEYS; k++)
        assert_int_equal(sg_balance_hash(b3, false, key_hash(k), c, 3), o3[k]);

    cands_from("000", c);
    assert_int_equal(sg_balance_hash(b3, false, key_hash(1), c, 3), -1);
    cands_from("001", c);
    for (int k = 0; k < 100; k++)
        assert_int_equal(sg_balance_hash(b3, false, key_hash(k), c, 3), 2);
    /* Extreme key hashes wrap around the ring. */
    cands_from("111", c);
    assert_true(sg_balance_hash(b3, false, 0, c, 3) >= 0);
    assert_true(sg_balance_hash(b3, false, UINT64_MAX, c, 3) >= 0);
    sg_balancer_free(b2);
    sg_balancer_free(b3);
}

/* Backups have their own ring; no balancer or a mismatched list still
 * gives a usable candidate, the same one for the same key. */
static void test_hash_backup_fallback(void **state) {
    (void)state;
    static const char *const srv[] = {"10.0.0.1:80", "10.0.0.2:80", "10.0.0.9:80", "10.0.0.8:80"};
    struct sg_balancer *b = balancer_for(srv, NULL, 2, 2);
    struct sg_candidate c[MAXC];
    cands_from("11", c);
    int count[2] = {0};
    for (int k = 0; k < 1000; k++) {
        int r = sg_balance_hash(b, true, key_hash(k), c, 2);
        assert_true(r == 0 || r == 1);
        count[r]++;
    }
    assert_in_range(count[0], 300, 700);

    cands_from("01101", c);
    for (int k = 0; k < 100; k++) {
        int r = sg_balance_hash(b, false, key_hash(k), c, 5);
        assert_true(r >= 0 && c[r].usable);
        assert_int_equal(r, sg_balance_hash(b, false, key_hash(k), c, 5));
        r = sg_balance_hash(NULL, false, key_hash(k), c, 5);
        assert_true(r >= 0 && c[r].usable);
    }
    assert_int_equal(sg_balance_hash(NULL, false, 5, c, 0), -1);
    sg_balancer_free(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_robin),
        cmocka_unit_test(test_round_robin_random),
        cmocka_unit_test(test_weighted_sequence),
        cmocka_unit_test(test_weighted_ratio),
        cmocka_unit_test(test_weighted_changes),
        cmocka_unit_test(test_weighted_groups),
        cmocka_unit_test(test_weighted_threads),
        cmocka_unit_test(test_least_conn),
        cmocka_unit_test(test_p2c),
        cmocka_unit_test(test_hash64),
        cmocka_unit_test(test_hash_stable_balanced),
        cmocka_unit_test(test_hash_add_remove),
        cmocka_unit_test(test_hash_unusable),
        cmocka_unit_test(test_hash_backup_fallback),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
