/*
 * src/pool/pool.c: server choice over the shared state (health, admin,
 * ejection, max_connections, backups, exclusion of tried servers), passive
 * ejection with doubling and the max_ejection_percent cap, and the retry
 * budget.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "core/intern.h"
#include "pool/balance.h"
#include "pool/pool.h"
#include "pool/state.h"

#define NSRV 4

struct fixture {
    struct sg_server srv[NSRV];
    struct sg_pool pool;
};

/* A pool of nprimary + nbackup servers with fresh state records (each test
 * uses its own addresses, so records don't leak between tests). */
static void make(struct fixture *f, const char *tag, size_t nprimary, size_t nbackup) {
    memset(f, 0, sizeof(*f));
    for (size_t i = 0; i < nprimary + nbackup; i++) {
        char text[64];
        snprintf(text, sizeof(text), "%s-%zu", tag, i);
        f->srv[i].text = strdup(text);
        f->srv[i].weight = 1;
        f->srv[i].backup = i >= nprimary;
        f->srv[i].id = sg_intern(text);
    }
    f->pool.name = (char *)"t";
    f->pool.servers = f->srv;
    f->pool.nservers = nprimary + nbackup;
    f->pool.nprimary = nprimary;
    f->pool.balance = SG_BALANCE_ROUND_ROBIN;
    f->pool.outlier = (struct sg_outlier_cfg){.consecutive_errors = 3,
                                              .consecutive_5xx = 2,
                                              .base_ejection_ms = 1000,
                                              .max_ejection_ms = 3000,
                                              .max_ejection_percent = 50};
    f->pool.retry = (struct sg_retry_cfg){.attempts = 3, .budget_percent = 20};
    struct sg_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.pools = &f->pool;
    cfg.npools = 1;
    assert_int_equal(sg_pool_prepare(&cfg), 0);
}

static void unmake(struct fixture *f) {
    f->pool.balancer_free(f->pool.balancer);
    for (size_t i = 0; i < f->pool.nservers; i++)
        free(f->srv[i].text);
}

static struct sg_server_state *st(struct fixture *f, size_t i) {
    return sg_server_state(f->srv[i].id);
}

static void test_pick_skips_unusable(void **state) {
    (void)state;
    struct fixture f;
    make(&f, "skip", 3, 0);
    atomic_store(&st(&f, 0)->health, SG_HEALTH_DOWN);
    sg_server_set_admin(f.srv[1].id, SG_ADMIN_DRAINING);
    for (int k = 0; k < 10; k++)
        assert_int_equal(sg_pool_pick(&f.pool, NULL, 0, (uint64_t)k), 2);
    /* the only usable one already tried: nothing left */
    assert_int_equal(sg_pool_pick(&f.pool, NULL, 1u << 2, 0), -1);
    sg_server_set_admin(f.srv[1].id, SG_ADMIN_ENABLED);
    assert_int_equal(sg_pool_pick(&f.pool, NULL, 1u << 2, 0), 1);
    unmake(&f);
}

static void test_backups_only_when_no_primary(void **state) {
    (void)state;
    struct fixture f;
    make(&f, "backup", 2, 2);
    for (int k = 0; k < 8; k++)
        assert_in_range(sg_pool_pick(&f.pool, NULL, 0, (uint64_t)k), 0, 1);
    atomic_store(&st(&f, 0)->health, SG_HEALTH_DOWN);
    atomic_store(&st(&f, 1)->health, SG_HEALTH_DOWN);
    for (int k = 0; k < 8; k++)
        assert_in_range(sg_pool_pick(&f.pool, NULL, 0, (uint64_t)k), 2, 3);
    atomic_store(&st(&f, 2)->health, SG_HEALTH_DOWN);
    atomic_store(&st(&f, 3)->health, SG_HEALTH_DOWN);
    assert_int_equal(sg_pool_pick(&f.pool, NULL, 0, 0), -1);
    unmake(&f);
}

static void test_max_connections_full(void **state) {
    (void)state;
    struct fixture f;
    make(&f, "full", 2, 0);
    f.srv[0].max_connections = 1;
    f.srv[1].max_connections = 2;
    atomic_store(&st(&f, 0)->inflight, 1);
    atomic_store(&st(&f, 1)->inflight, 1);
    assert_int_equal(sg_pool_pick(&f.pool, NULL, 0, 0), 1);
    atomic_store(&st(&f, 1)->inflight, 2);
    assert_int_equal(sg_pool_pick(&f.pool, NULL, 0, 0), SG_POOL_FULL);
    /* full differs from down: down everywhere is -1 */
    atomic_store(&st(&f, 0)->health, SG_HEALTH_DOWN);
    atomic_store(&st(&f, 1)->health, SG_HEALTH_DOWN);
    assert_int_equal(sg_pool_pick(&f.pool, NULL, 0, 0), -1);
    atomic_store(&st(&f, 0)->inflight, 0);
    atomic_store(&st(&f, 1)->inflight, 0);
    unmake(&f);
}

static void test_ejection_and_doubling(void **state) {
    (void)state;
    struct fixture f;
    make(&f, "eject", 3, 0);
    struct sg_server_state *s = st(&f, 0);
    /* errors below the threshold, then a success: counter reset */
    sg_pool_report(&f.pool, 0, SG_OUTCOME_ERROR);
    sg_pool_report(&f.pool, 0, SG_OUTCOME_ERROR);
    sg_pool_report(&f.pool, 0, SG_OUTCOME_OK);
    sg_pool_report(&f.pool, 0, SG_OUTCOME_ERROR);
    sg_pool_report(&f.pool, 0, SG_OUTCOME_ERROR);
    assert_int_equal(atomic_load(&s->ejected_until), 0);
    sg_pool_report(&f.pool, 0, SG_OUTCOME_ERROR);
    uint64_t now = sg_state_now();
    uint64_t until = atomic_load(&s->ejected_until);
    assert_true(until > now + 800 && until <= now + 1000);
    assert_false(sg_server_usable(s, now));
    assert_int_equal(atomic_load(&s->ejections), 1);
    /* second ejection (after the first ended) lasts twice as long */
    atomic_store(&s->ejected_until, now - 1);
    for (int k = 0; k < 3; k++)
        sg_pool_report(&f.pool, 0, SG_OUTCOME_ERROR);
    until = atomic_load(&s->ejected_until);
    assert_true(until > now + 1800 && until <= sg_state_now() + 2000);
    /* capped at max_ejection */
    for (int round = 0; round < 3; round++) {
        atomic_store(&s->ejected_until, sg_state_now() - 1);
        for (int k = 0; k < 3; k++)
            sg_pool_report(&f.pool, 0, SG_OUTCOME_ERROR);
    }
    until = atomic_load(&s->ejected_until);
    assert_true(until <= sg_state_now() + 3000 && until > sg_state_now() + 2500);
    unmake(&f);
}

static void test_5xx_ejection_and_cap(void **state) {
    (void)state;
    struct fixture f;
    make(&f, "cap", 4, 0); /* 50% of 4: at most 2 ejected at once */
    for (size_t i = 0; i < 4; i++) {
        sg_pool_report(&f.pool, i, SG_OUTCOME_5XX);
        sg_pool_report(&f.pool, i, SG_OUTCOME_5XX);
    }
    uint64_t now = sg_state_now();
    int ejected = 0;
    for (size_t i = 0; i < 4; i++)
        ejected += atomic_load(&st(&f, i)->ejected_until) > now;
    assert_int_equal(ejected, 2);
    /* a 5xx between errors resets the error run (and the reverse) */
    struct fixture g;
    make(&g, "mixed", 3, 0);
    sg_pool_report(&g.pool, 0, SG_OUTCOME_5XX);
    sg_pool_report(&g.pool, 0, SG_OUTCOME_ERROR);
    sg_pool_report(&g.pool, 0, SG_OUTCOME_OK);
    sg_pool_report(&g.pool, 0, SG_OUTCOME_5XX);
    assert_int_equal(atomic_load(&st(&g, 0)->ejected_until), 0);
    unmake(&g);
    unmake(&f);
}

static void test_single_server_can_be_ejected(void **state) {
    (void)state;
    struct fixture f;
    make(&f, "single", 1, 0);
    for (int k = 0; k < 3; k++)
        sg_pool_report(&f.pool, 0, SG_OUTCOME_ERROR);
    assert_true(atomic_load(&st(&f, 0)->ejected_until) > sg_state_now());
    assert_int_equal(sg_pool_pick(&f.pool, NULL, 0, 0), -1);
    unmake(&f);
    /* max_ejection_percent 0: never */
    make(&f, "never", 2, 0);
    f.pool.outlier.max_ejection_percent = 0;
    for (int k = 0; k < 10; k++)
        sg_pool_report(&f.pool, 0, SG_OUTCOME_ERROR);
    assert_int_equal(atomic_load(&st(&f, 0)->ejected_until), 0);
    unmake(&f);
}

static void test_retry_budget(void **state) {
    (void)state;
    struct fixture f;
    make(&f, "budget", 2, 0);
    /* the first 3 retries of a window are always allowed */
    for (int k = 0; k < 3; k++)
        assert_true(sg_pool_retry_allowed(&f.pool));
    assert_false(sg_pool_retry_allowed(&f.pool));
    /* 100 requests at 20%: 20 retries in all */
    for (int k = 0; k < 100; k++)
        sg_pool_count_request(&f.pool);
    int allowed = 0;
    for (int k = 0; k < 100; k++)
        allowed += sg_pool_retry_allowed(&f.pool);
    assert_int_equal(allowed + 3, 20);
    unmake(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pick_skips_unusable),
        cmocka_unit_test(test_backups_only_when_no_primary),
        cmocka_unit_test(test_max_connections_full),
        cmocka_unit_test(test_ejection_and_doubling),
        cmocka_unit_test(test_5xx_ejection_and_cap),
        cmocka_unit_test(test_single_server_can_be_ejected),
        cmocka_unit_test(test_retry_budget),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
