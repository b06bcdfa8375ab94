/*
 * Tables for src/pool/state.c: when a server is usable (health, admin,
 * ejection), the slow-start weight ramp, admin changes, and creation of
 * records from several threads at once.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "pool/state.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* Each test uses its own ids: records are process-wide and never freed. */

static void test_new_record(void **state) {
    (void)state;
    struct sg_server_state *st = sg_server_state(10);
    assert_non_null(st);
    assert_ptr_equal(st, sg_server_state(10));
    assert_int_equal(atomic_load(&st->health), SG_HEALTH_UP);
    assert_int_equal(atomic_load(&st->admin), SG_ADMIN_ENABLED);
    assert_int_equal(atomic_load(&st->ejected_until), 0);
    assert_int_equal(atomic_load(&st->inflight), 0);
    assert_int_equal(atomic_load(&st->recovered_at), 0);
    assert_true(sg_server_usable(st, sg_state_now()));
    /* Neighbours across a chunk boundary are distinct records. */
    assert_ptr_not_equal(sg_server_state(1023), sg_server_state(1024));
    assert_non_null(sg_server_state((1u << 20) - 1));
    assert_null(sg_server_state(1u << 20));
    assert_null(sg_server_state(UINT32_MAX));
    assert_false(sg_server_usable(NULL, 0));
}

static void test_now(void **state) {
    (void)state;
    uint64_t a = sg_state_now();
    struct timespec ts = {0, 5 * 1000 * 1000};
    nanosleep(&ts, NULL);
    uint64_t b = sg_state_now();
    assert_true(a > 0);
    assert_true(b >= a + 4);
    assert_true(b < a + 5000);
}

struct usable_case {
    uint8_t health;
    uint8_t admin;
    uint64_t ejected_until;
    uint64_t now;
    bool want;
};

static void test_usable(void **state) {
    (void)state;
    static const struct usable_case cases[] = {
        {SG_HEALTH_UP, SG_ADMIN_ENABLED, 0, 1000, true},
        {SG_HEALTH_DOWN, SG_ADMIN_ENABLED, 0, 1000, false},
        {SG_HEALTH_UP, SG_ADMIN_DRAINING, 0, 1000, false},
        {SG_HEALTH_UP, SG_ADMIN_DISABLED, 0, 1000, false},
        {SG_HEALTH_DOWN, SG_ADMIN_DISABLED, 0, 1000, false},
        {SG_HEALTH_UP, SG_ADMIN_ENABLED, 1001, 1000, false}, /* ejected */
        {SG_HEALTH_UP, SG_ADMIN_ENABLED, 1000, 1000, true},  /* ejection just over */
        {SG_HEALTH_UP, SG_ADMIN_ENABLED, 999, 1000, true},
        {SG_HEALTH_UP, SG_ADMIN_ENABLED, UINT64_MAX, 1000, false},
        {SG_HEALTH_DOWN, SG_ADMIN_ENABLED, 2000, 1000, false},
        {SG_HEALTH_UP, SG_ADMIN_DRAINING, 2000, 3000, false},
    };
    struct sg_server_state *st = sg_server_state(20);
    assert_non_null(st);
    for (size_t i = 0; i < N(cases); i++) {
        atomic_store(&st->health, cases[i].health);
        atomic_store(&st->admin, cases[i].admin);
        atomic_store(&st->ejected_until, cases[i].ejected_until);
        bool got = sg_server_usable(st, cases[i].now);
        if (got != cases[i].want)
            print_error("usable case %zu: got %d\n", i, got);
        assert_int_equal(got, cases[i].want);
    }
}

struct slow_case {
    uint32_t weight;
    uint64_t slow_start_ms;
    uint64_t recovered_at;
    uint64_t now;
    uint32_t want;
};

static void test_slow_start(void **state) {
    (void)state;
    static const struct slow_case cases[] = {
        {10, 0, 1000, 1500, 10},                      /* slow start off */
        {10, 10000, 0, 1500, 10},                     /* never recovered */
        {10, 10000, 1000, 1000, 1},                   /* just recovered: at least 1 */
        {10, 10000, 1000, 1500, 1},                   /* 0.5 rounds down, floor 1 */
        {10, 10000, 1000, 3000, 2},                   /* 20% */
        {10, 10000, 1000, 6000, 5},                   /* 50% */
        {10, 10000, 1000, 10999, 9},                  /* 99.99% */
        {10, 10000, 1000, 11000, 10},                 /* over */
        {10, 10000, 1000, 99999, 10},                 /* long over */
        {10, 10000, 5000, 4000, 1},                   /* clock behind recovered_at */
        {1, 10000, 1000, 6000, 1},                    /* weight 1 stays 1 */
        {1000, 60000, 1, 30001, 500},                 /* 50% of the largest weight */
        {1000, 1ull << 40, 1, (1ull << 39) + 1, 500}, /* huge ramp: no overflow */
        {1000, UINT64_MAX, 1, 1ull << 63, 499},
    };
    struct sg_server_state *st = sg_server_state(30);
    assert_non_null(st);
    for (size_t i = 0; i < N(cases); i++) {
        atomic_store(&st->recovered_at, cases[i].recovered_at);
        uint32_t got =
            sg_server_effective_weight(st, cases[i].weight, cases[i].slow_start_ms, cases[i].now);
        if (got != cases[i].want)
            print_error("slow start case %zu: got %u want %u\n", i, got, cases[i].want);
        assert_int_equal(got, cases[i].want);
    }
}

static void test_set_admin(void **state) {
    (void)state;
    struct sg_server_state *st = sg_server_state(40);
    assert_non_null(st);
    uint64_t now = sg_state_now();
    assert_true(sg_server_usable(st, now));

    assert_int_equal(sg_server_set_admin(40, SG_ADMIN_DRAINING), 0);
    assert_int_equal(atomic_load(&st->admin), SG_ADMIN_DRAINING);
    assert_false(sg_server_usable(st, now));
    assert_int_equal(atomic_load(&st->recovered_at), 0);

    assert_int_equal(sg_server_set_admin(40, SG_ADMIN_DISABLED), 0);
    assert_int_equal(atomic_load(&st->admin), SG_ADMIN_DISABLED);
    assert_false(sg_server_usable(st, now));

    /* Enabling again starts the slow-start ramp. */
    assert_int_equal(sg_server_set_admin(40, SG_ADMIN_ENABLED), 0);
    assert_int_equal(atomic_load(&st->admin), SG_ADMIN_ENABLED);
    assert_true(sg_server_usable(st, now));
    uint64_t rec = atomic_load(&st->recovered_at);
    assert_true(rec >= now && rec <= sg_state_now());
    assert_int_equal(sg_server_effective_weight(st, 100, 60000, rec), 1);

    /* Enabling an enabled server does not restart it. */
    atomic_store(&st->recovered_at, 7);
    assert_int_equal(sg_server_set_admin(40, SG_ADMIN_ENABLED), 0);
    assert_int_equal(atomic_load(&st->recovered_at), 7);

    assert_int_equal(sg_server_set_admin(40, (enum sg_admin_state)3), -EINVAL);
    assert_int_equal(sg_server_set_admin(40, (enum sg_admin_state) - 1), -EINVAL);
    assert_int_equal(atomic_load(&st->admin), SG_ADMIN_ENABLED);
    assert_int_equal(sg_server_set_admin(1u << 20, SG_ADMIN_DISABLED), -EINVAL);

    /* A fresh id is created by set_admin. */
    assert_int_equal(sg_server_set_admin(5000, SG_ADMIN_DISABLED), 0);
    assert_int_equal(atomic_load(&sg_server_state(5000)->admin), SG_ADMIN_DISABLED);
}

/* 4 threads create the records of ids 100000.. (several fresh chunks) in
 * different orders; all must see the same record for an id. */
#define THR_BASE 100000u
#define THR_IDS  5000u
static struct sg_server_state *thr_ptrs[4][THR_IDS];
static pthread_barrier_t thr_barrier;

static void *state_thread(void *arg) {
    size_t t = (size_t)(uintptr_t)arg;
    pthread_barrier_wait(&thr_barrier);
    for (uint32_t i = 0; i < THR_IDS; i++) {
        uint32_t k = (t & 1) ? THR_IDS - 1 - i : i;
        struct sg_server_state *st = sg_server_state(THR_BASE + k);
        atomic_fetch_add(&st->requests, 1);
        thr_ptrs[t][k] = st;
    }
    return NULL;
}

static void test_threads(void **state) {
    (void)state;
    pthread_t t[4];
    assert_int_equal(pthread_barrier_init(&thr_barrier, NULL, 4), 0);
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, state_thread, (void *)(uintptr_t)i), 0);
    for (size_t i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&thr_barrier);
    for (uint32_t k = 0; k < THR_IDS; k++) {
        struct sg_server_state *st = sg_server_state(THR_BASE + k);
        assert_non_null(st);
        for (size_t i = 0; i < 4; i++)
            assert_ptr_equal(thr_ptrs[i][k], st);
        assert_int_equal(atomic_load(&st->requests), 4);
        assert_int_equal(atomic_load(&st->health), SG_HEALTH_UP);
        assert_int_equal(atomic_load(&st->admin), SG_ADMIN_ENABLED);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_record), cmocka_unit_test(test_now),
        cmocka_unit_test(test_usable),     cmocka_unit_test(test_slow_start),
        cmocka_unit_test(test_set_admin),  cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
