/*
 * Tables for the autoscaling policy of src/scale/policy.c: the worked
 * examples of the Kubernetes HPA documentation (ratio, tolerance, several
 * metrics, stabilization), the scale-up and scale-down rate limits, min/max,
 * starting instances, queue depth and scale from zero, and the
 * stabilization ring under a caller faster than its resolution.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "scale/policy.h"

#include <stdio.h>
#include <string.h>

#define N(a) (sizeof(a) / sizeof((a)[0]))

enum rate { RATE_DEFAULT = 0, RATE_NONE }; /* RATE_NONE: no rate limits, like one HPA step */

struct one_case {
    const char *name;
    uint32_t ready, starting, min, max;
    enum rate rate;
    struct sg_scale_targets t;
    struct sg_scale_input in;
    uint32_t want;
    const char *reason_has; /* substring of the reason, or NULL */
};

static struct sg_scale_limits limits_for(uint32_t min, uint32_t max, enum rate rate) {
    struct sg_scale_limits l;
    sg_scale_limits_default(&l);
    l.min = min;
    l.max = max ? max : 1000;
    if (rate == RATE_NONE) {
        l.up_percent = l.up_pods = 0;
        l.down_pods = 0;
    }
    return l;
}

/* One decision from a fresh state (nothing in the stabilization window). */
static void run_cases(const struct one_case *c, size_t n) {
    for (size_t i = 0; i < n; i++) {
        struct sg_scale_state st;
        sg_scale_state_init(&st);
        struct sg_scale_limits l = limits_for(c[i].min, c[i].max, c[i].rate);
        struct sg_scale_input in = c[i].in;
        in.ready = c[i].ready;
        in.starting = c[i].starting;
        char reason[256];
        uint32_t got = sg_scale_decide(&st, &l, &c[i].t, &in, reason, sizeof(reason));
        if (got != c[i].want || (c[i].reason_has && !strstr(reason, c[i].reason_has)))
            fail_msg("%s: got %u want %u, reason \"%s\" (want \"%s\")", c[i].name, got, c[i].want,
                     reason, c[i].reason_has ? c[i].reason_has : "");
    }
}

/* The HPA documentation's algorithm details: desired = ceil(current *
 * currentMetricValue / desiredMetricValue), no change within 10 %. */
static void test_hpa_doc_examples(void **state) {
    (void)state;
    const struct one_case c[] = {
        {"200m vs 100m doubles",
         4,
         0,
         1,
         0,
         RATE_NONE,
         {.cpu_percent = 100},
         {.cpu_percent = 200},
         8,
         "cpu 200% > target 100%"},
        {"50m vs 100m halves",
         4,
         0,
         1,
         0,
         RATE_NONE,
         {.cpu_percent = 100},
         {.cpu_percent = 50},
         2,
         "4 -> 2"},
        {"blog: 50 replicas at 90% of 75%",
         50,
         0,
         1,
         0,
         RATE_NONE,
         {.cpu_percent = 75},
         {.cpu_percent = 90},
         60,
         "(ratio 1.20): 50 -> 60"},
        {"ratio 1.05 within tolerance",
         10,
         0,
         1,
         0,
         RATE_NONE,
         {.cpu_percent = 100},
         {.cpu_percent = 105},
         10,
         "within tolerance"},
        {"ratio 1.10 still within (inclusive)",
         10,
         0,
         1,
         0,
         RATE_NONE,
         {.cpu_percent = 100},
         {.cpu_percent = 110},
         10,
         "within tolerance"},
        {"ratio 1.11 scales up",
         10,
         0,
         1,
         0,
         RATE_NONE,
         {.cpu_percent = 100},
         {.cpu_percent = 111},
         12,
         "10 -> 12"},
        {"ratio 0.91 within tolerance",
         10,
         0,
         1,
         0,
         RATE_NONE,
         {.cpu_percent = 100},
         {.cpu_percent = 91},
         10,
         "within tolerance"},
        {"ratio 0.89 scales down",
         10,
         0,
         1,
         0,
         RATE_NONE,
         {.cpu_percent = 100},
         {.cpu_percent = 89},
         9,
         "10 -> 9"},
        {"p95 412 vs 300 ms",
         3,
         0,
         1,
         0,
         RATE_NONE,
         {.p95_ms = 300},
         {.p95_ms = 412},
         5,
         "p95 412 ms > target 300 ms (ratio 1.37): 3 -> 5"},
        {"rps per instance",
         2,
         0,
         1,
         0,
         RATE_NONE,
         {.rps_per_instance = 100},
         {.rps = 350},
         7,
         "rps 350/instance"},
        {"inflight per instance",
         4,
         0,
         1,
         0,
         RATE_NONE,
         {.inflight_per_instance = 8},
         {.inflight = 2},
         1,
         "inflight"},
        {"memory",
         4,
         0,
         1,
         0,
         RATE_NONE,
         {.memory_percent = 80},
         {.memory_percent = 120},
         6,
         "memory"},
        {"error rate",
         2,
         0,
         1,
         0,
         RATE_NONE,
         {.error_rate = 0.01},
         {.error_rate = 0.03},
         6,
         "error rate"},
        {"metric without target ignored",
         4,
         0,
         1,
         0,
         RATE_NONE,
         {.cpu_percent = 100},
         {.cpu_percent = 100, .rps = 1e6},
         4,
         "within tolerance"},
        {"no target at all",
         4,
         0,
         1,
         0,
         RATE_NONE,
         {.cpu_percent = 0},
         {.cpu_percent = 100},
         4,
         "no metric"},
        {"NaN value = no data",
         4,
         0,
         1,
         0,
         RATE_NONE,
         {.cpu_percent = 100},
         {.cpu_percent = __builtin_nan("")},
         4,
         "no metric"},
    };
    run_cases(c, N(c));
}

/* Several metrics: each gives a count, the largest wins. */
static void test_several_metrics(void **state) {
    (void)state;
    const struct sg_scale_targets both = {.cpu_percent = 100, .rps_per_instance = 100};
    const struct one_case c[] = {
        {"cpu 6, rps 8 -> 8",
         4,
         0,
         1,
         0,
         RATE_NONE,
         both,
         {.cpu_percent = 150, .rps = 200},
         8,
         "rps"},
        {"cpu 6, rps 2 -> 6",
         4,
         0,
         1,
         0,
         RATE_NONE,
         both,
         {.cpu_percent = 150, .rps = 50},
         6,
         "cpu"},
        {"cpu down, rps in tolerance -> stay",
         4,
         0,
         1,
         0,
         RATE_NONE,
         both,
         {.cpu_percent = 25, .rps = 100},
         4,
         NULL},
        {"both down -> larger of the two",
         8,
         0,
         1,
         0,
         RATE_NONE,
         both,
         {.cpu_percent = 25, .rps = 50},
         4,
         "rps"},
        {"both within tolerance",
         8,
         0,
         1,
         0,
         RATE_NONE,
         both,
         {.cpu_percent = 95, .rps = 108},
         8,
         "within tolerance"},
        {"queue and cpu",
         2,
         0,
         1,
         0,
         RATE_NONE,
         {.cpu_percent = 50, .queue_per_instance = 10},
         {.cpu_percent = 50, .has_queue = true, .queue_depth = 55},
         6,
         "queue 55"},
    };
    run_cases(c, N(c));
}

/* Scale-up per period: max(+100 %, +4); scale-down per period: -1. */
static void test_rate_limits(void **state) {
    (void)state;
    const struct sg_scale_targets cpu = {.cpu_percent = 50};
    const struct one_case c[] = {
        {"1 with huge load -> 5",
         1,
         0,
         1,
         0,
         RATE_DEFAULT,
         cpu,
         {.cpu_percent = 5000},
         5,
         "1 -> 5 (limited from 100 by the scale-up rate)"},
        {"10 with huge load -> 20",
         10,
         0,
         1,
         0,
         RATE_DEFAULT,
         cpu,
         {.cpu_percent = 5000},
         20,
         "limited from 1000 by the scale-up rate"},
        {"3 -> 7 (+4 beats +100 %)", 3, 0, 1, 0, RATE_DEFAULT, cpu, {.cpu_percent = 500}, 7, NULL},
        {"small step unlimited",
         10,
         0,
         1,
         0,
         RATE_DEFAULT,
         cpu,
         {.cpu_percent = 60},
         12,
         "10 -> 12"},
        {"max wins over the rate",
         8,
         0,
         1,
         10,
         RATE_DEFAULT,
         cpu,
         {.cpu_percent = 5000},
         10,
         "limited from 800 by the maximum"},
        {"scale-down 1 per period",
         10,
         0,
         1,
         0,
         RATE_DEFAULT,
         cpu,
         {.cpu_percent = 5},
         9,
         "limited from 1 by the scale-down rate"},
        {"scale-down to min",
         10,
         0,
         3,
         0,
         RATE_NONE,
         cpu,
         {.cpu_percent = 5},
         3,
         "limited from 1 by the minimum"},
        {"above max: straight to max",
         12,
         0,
         1,
         10,
         RATE_DEFAULT,
         cpu,
         {.cpu_percent = 50},
         10,
         "above max"},
        {"below min: straight to min",
         1,
         0,
         4,
         10,
         RATE_DEFAULT,
         cpu,
         {.cpu_percent = 50},
         4,
         "below min"},
        {"max < min reads as min", 2, 0, 3, 2, RATE_DEFAULT, cpu, {.cpu_percent = 50}, 3, NULL},
    };
    run_cases(c, N(c));
}

/* Starting instances are not capacity, but count as already added. */
static void test_starting(void **state) {
    (void)state;
    const struct sg_scale_targets cpu = {.cpu_percent = 50};
    const struct one_case c[] = {
        {"2 ready at 2x, 2 starting: enough",
         2,
         2,
         1,
         0,
         RATE_DEFAULT,
         cpu,
         {.cpu_percent = 100},
         4,
         "steady at 4"},
        {"2 ready at 2x, 1 starting: one more",
         2,
         1,
         1,
         0,
         RATE_DEFAULT,
         cpu,
         {.cpu_percent = 100},
         4,
         "3 -> 4"},
        {"2 ready at 3x, 1 starting",
         2,
         1,
         1,
         0,
         RATE_DEFAULT,
         cpu,
         {.cpu_percent = 150},
         6,
         "3 -> 6"},
        {"none ready, 3 starting: wait",
         0,
         3,
         1,
         0,
         RATE_DEFAULT,
         cpu,
         {.cpu_percent = 0},
         3,
         "no metric"},
        {"up-rate counted from ready + starting",
         1,
         1,
         1,
         0,
         RATE_DEFAULT,
         cpu,
         {.cpu_percent = 5000},
         6,
         "2 -> 6"},
    };
    run_cases(c, N(c));
}

/* Queue depth: desired = ceil(depth / per instance); scale from zero. */
static void test_queue_and_zero(void **state) {
    (void)state;
    const struct sg_scale_targets q = {.queue_per_instance = 10};
    const struct one_case c[] = {
        {"queue 100 / 10 from 2, rate-limited",
         2,
         0,
         1,
         0,
         RATE_DEFAULT,
         q,
         {.has_queue = true, .queue_depth = 100},
         6,
         "limited from 10"},
        {"queue 100 / 10 unlimited",
         2,
         0,
         1,
         0,
         RATE_NONE,
         q,
         {.has_queue = true, .queue_depth = 100},
         10,
         "queue 100"},
        {"queue within tolerance",
         4,
         0,
         1,
         0,
         RATE_NONE,
         q,
         {.has_queue = true, .queue_depth = 42},
         4,
         "within tolerance"},
        {"queue empty, down to min",
         4,
         0,
         1,
         0,
         RATE_NONE,
         q,
         {.has_queue = true, .queue_depth = 0},
         1,
         NULL},
        {"queue not measured",
         4,
         0,
         1,
         0,
         RATE_NONE,
         q,
         {.has_queue = false, .queue_depth = 99},
         4,
         "no metric"},
        {"from zero with a queue",
         0,
         0,
         0,
         0,
         RATE_DEFAULT,
         q,
         {.has_queue = true, .queue_depth = 25},
         3,
         "0 -> 3"},
        {"from zero, big queue: +4",
         0,
         0,
         0,
         0,
         RATE_DEFAULT,
         q,
         {.has_queue = true, .queue_depth = 1000},
         4,
         "limited from 100"},
        {"from zero on requests, no target",
         0,
         0,
         0,
         0,
         RATE_DEFAULT,
         {.cpu_percent = 0},
         {.rps = 0.5},
         1,
         "0 -> 1"},
        {"zero stays zero without load",
         0,
         0,
         0,
         0,
         RATE_DEFAULT,
         {.cpu_percent = 50},
         {.cpu_percent = 0},
         0,
         "steady at 0"},
        {"idle to zero when min is 0",
         3,
         0,
         0,
         0,
         RATE_NONE,
         {.rps_per_instance = 10},
         {.rps = 0},
         0,
         "3 -> 0"},
    };
    run_cases(c, N(c));
}

/* A pool whose supervisor applies every decision at once: ready = result. */
struct sim {
    struct sg_scale_state st;
    struct sg_scale_limits l;
    struct sg_scale_targets t;
    uint32_t ready;
    char reason[256];
};

static uint32_t step(struct sim *s, uint64_t now_ms, double cpu) {
    struct sg_scale_input in = {.ready = s->ready, .cpu_percent = cpu, .now_ms = now_ms};
    s->ready = sg_scale_decide(&s->st, &s->l, &s->t, &in, s->reason, sizeof(s->reason));
    return s->ready;
}

static void sim_init(struct sim *s, uint32_t ready) {
    memset(s, 0, sizeof(*s));
    sg_scale_state_init(&s->st);
    s->l = limits_for(1, 100, RATE_DEFAULT);
    s->t.cpu_percent = 50;
    s->ready = ready;
}

/* Stabilization (HPA default 300 s): a dip inside the window does not scale
 * down; a lasting one does once the last high recommendation is 300 s old,
 * then one instance per period. */
static void test_stabilization(void **state) {
    (void)state;
    struct sim s;
    sim_init(&s, 4);
    for (uint64_t t = 0; t < 10; t++) /* steady: recommendation 4 */
        assert_int_equal(step(&s, t * 1000, 50), 4);
    for (uint64_t t = 10; t < 60; t++) { /* dip: recommendation 2 */
        assert_int_equal(step(&s, t * 1000, 25), 4);
        assert_non_null(strstr(s.reason, "scale-down held by stabilization window (highest "
                                         "recommendation 4 in the last 300 s)"));
    }
    for (uint64_t t = 60; t < 400; t++) /* back up: never scaled down */
        assert_int_equal(step(&s, t * 1000, 50), 4);

    sim_init(&s, 4);
    for (uint64_t t = 0; t < 10; t++)
        step(&s, t * 1000, 50);
    for (uint64_t t = 10; t < 309; t++)
        assert_int_equal(step(&s, t * 1000, 25), 4);
    /* the last recommendation of 4 was at 9 s: out of the window at 309 s */
    assert_int_equal(step(&s, 309000, 25), 3);
    assert_non_null(strstr(s.reason, "4 -> 3 (limited from 2 by the scale-down rate)"));
    assert_int_equal(step(&s, 310000, 25), 2); /* 3 at 50 % of target -> 2, one step */
    /* 2 at 25 % recommends 1, but the 2s recommended since 10 s hold it */
    assert_int_equal(step(&s, 311000, 25), 2);
}

/* Scale-up is immediate (no up window by default) and ramps per period. */
static void test_scale_up_ramp(void **state) {
    (void)state;
    struct sim s;
    sim_init(&s, 1);
    /* load worth 40 instances at 1 instance: 1 -> 5 -> 10 -> 20 -> 40 */
    const uint32_t want[] = {5, 10, 20, 40, 40};
    for (size_t i = 0; i < N(want); i++) {
        double cpu = 50.0 * 40 / s.ready;
        assert_int_equal(step(&s, i * 1000, cpu), want[i]);
    }
    /* two calls inside one period don't compound the limit */
    sim_init(&s, 1);
    assert_int_equal(step(&s, 0, 5000), 5);
    assert_int_equal(step(&s, 500, 5000.0 / 5), 5);
    assert_int_equal(step(&s, 1000, 5000.0 / 5), 10);
}

/* An up stabilization window holds scale-up to the lowest recent value. */
static void test_up_stabilization(void **state) {
    (void)state;
    struct sim s;
    sim_init(&s, 4);
    s.l.up_stabilization_ms = 3000;
    assert_int_equal(step(&s, 0, 50), 4);
    assert_int_equal(step(&s, 1000, 100), 4);
    assert_non_null(strstr(s.reason, "scale-up held by stabilization window"));
    assert_int_equal(step(&s, 2000, 100), 4);
    assert_int_equal(step(&s, 3000, 100), 8); /* the 4 at 0 s has left the window */
}

/* A caller much faster than window / SG_SCALE_WINDOW_MAX: recommendations
 * share entries, a high one is still honoured for the whole window and
 * expires within one entry's span after it. */
static void test_ring_fast_caller(void **state) {
    (void)state;
    struct sim s;
    sim_init(&s, 8);
    s.l.down_stabilization_ms = 10000;
    s.l.down_pods = 0;
    s.l.period_ms = 10;
    assert_int_equal(step(&s, 0, 50), 8); /* recommendation 8 at 0 */
    uint64_t t = 10;
    for (; t < 10000; t += 10) /* recommendation 2 every 10 ms: 1000 calls */
        assert_int_equal(step(&s, t, 12.5), 8);
    uint64_t span = (10000 + SG_SCALE_WINDOW_MAX - 2) / (SG_SCALE_WINDOW_MAX - 1);
    for (; s.ready == 8; t += 10) {
        step(&s, t, 12.5);
        assert_true(t <= 10000 + span);
    }
    assert_int_equal(s.ready, 2);
    assert_true(s.st.len <= SG_SCALE_WINDOW_MAX);
}

/* The reason is cut, never overrun; a NULL reason is fine. */
static void test_reason_buffer(void **state) {
    (void)state;
    struct sg_scale_state st;
    sg_scale_state_init(&st);
    struct sg_scale_limits l = limits_for(1, 100, RATE_DEFAULT);
    struct sg_scale_targets t = {.p95_ms = 300};
    struct sg_scale_input in = {.ready = 3, .p95_ms = 412};
    char small[8];
    memset(small, 'x', sizeof(small));
    assert_int_equal(sg_scale_decide(&st, &l, &t, &in, small, sizeof(small)), 5);
    assert_string_equal(small, "p95 412");
    in.now_ms = 1000;
    in.ready = 5;
    assert_int_equal(sg_scale_decide(&st, &l, &t, &in, NULL, 0), 7);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hpa_doc_examples), cmocka_unit_test(test_several_metrics),
        cmocka_unit_test(test_rate_limits),      cmocka_unit_test(test_starting),
        cmocka_unit_test(test_queue_and_zero),   cmocka_unit_test(test_stabilization),
        cmocka_unit_test(test_scale_up_ramp),    cmocka_unit_test(test_up_stabilization),
        cmocka_unit_test(test_ring_fast_caller), cmocka_unit_test(test_reason_buffer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
