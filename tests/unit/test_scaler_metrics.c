/*
 * The autoscaler's Prometheus metrics (sg_scaler_prometheus in
 * src/scale/scaler.c): the families' # HELP / # TYPE lines with no scaler,
 * the samples of scaled pools in config order (every instance state, 0
 * included), and the scaling events counted across reloads. The scaler runs
 * on a real loop with real instances ("sleep 30", which never passes a
 * health check: no health checker runs here, so they stay starting); every
 * wait is bounded, and each test ends with uv_loop_close() == 0.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "config/config.h"
#include "core/log.h"
#include "core/text.h"
#include "scale/scaler.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

/* ---- harness ---- */

static int published;

static void on_publish(struct sg_config *cfg, void *arg) {
    (void)arg;
    published++;
    sg_config_unref(cfg);
}

static struct sg_config *load_ok(const char *yaml) {
    struct sg_config_errors e;
    struct sg_config *c = sg_config_load_string("t.yaml", yaml, strlen(yaml), &e);
    if (c == NULL) {
        for (size_t i = 0; i < e.n; i++)
            print_error("%s\n", e.msgs[i]);
        sg_config_errors_free(&e);
        fail_msg("config rejected:\n%s", yaml);
    }
    return c;
}

/* Loads yaml and hands it to the scaler, as main.c does at start-up and on
 * a reload. */
static void apply(struct sg_scaler *s, const char *yaml) {
    struct sg_config *loaded = load_ok(yaml);
    struct sg_config *run = sg_scaler_apply(s, loaded);
    assert_non_null(run);
    sg_config_unref(run);
    sg_config_unref(loaded);
}

static char *render(struct sg_scaler *s) {
    struct sg_text t = {0};
    sg_scaler_prometheus(s, &t);
    char *out = sg_text_take(&t, NULL);
    assert_non_null(out);
    return out;
}

/* Whether text has line as one whole line. */
static bool has_line(const char *text, const char *line) {
    size_t l = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++)
        if ((p == text || p[-1] == '\n') && p[l] == '\n')
            return true;
    return false;
}

static size_t count_prefix(const char *text, const char *prefix) {
    size_t n = 0, l = strlen(prefix);
    for (const char *p = text; *p; p = strchr(p, '\n') + 1) {
        n += strncmp(p, prefix, l) == 0;
        if (strchr(p, '\n') == NULL)
            break;
    }
    return n;
}

static void tick(uv_timer_t *t) {
    (void)t;
}

/* Runs the loop until the rendered metrics have every line of want, or ms
 * pass; returns whether they did. */
static bool run_until_lines(uv_loop_t *loop, struct sg_scaler *s, const char *const *want,
                            uint64_t ms) {
    uv_timer_t t;
    uv_timer_init(loop, &t);
    uv_timer_start(&t, tick, 10, 10);
    uint64_t end = uv_hrtime() + ms * 1000000ull;
    bool ok = false;
    while (!ok && uv_hrtime() < end) {
        uv_run(loop, UV_RUN_ONCE);
        char *m = render(s);
        ok = true;
        for (size_t i = 0; want[i] && ok; i++)
            ok = has_line(m, want[i]);
        if (!ok && uv_hrtime() >= end)
            print_error("metrics now:\n%s", m);
        free(m);
    }
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return ok;
}

static void free_scaler(uv_loop_t *loop, struct sg_scaler *s) {
    sg_scaler_free(s); /* SIGKILLs the instances */
    uv_run(loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(loop), 0);
}

static const char families[] =
    "# HELP scalegate_pool_instances Instances of a scaled pool by state: starting, ready, "
    "draining, stopping.\n"
    "# TYPE scalegate_pool_instances gauge\n"
    "@instances"
    "# HELP scalegate_pool_desired_instances The count of instances the autoscaler asks for.\n"
    "# TYPE scalegate_pool_desired_instances gauge\n"
    "@desired"
    "# HELP scalegate_pool_min_instances The fewest instances of a scaled pool.\n"
    "# TYPE scalegate_pool_min_instances gauge\n"
    "@min"
    "# HELP scalegate_pool_max_instances The most instances of a scaled pool.\n"
    "# TYPE scalegate_pool_max_instances gauge\n"
    "@max"
    "# HELP scalegate_scaling_events_total Autoscaler decisions that changed the count of "
    "instances, by direction: up, down.\n"
    "# TYPE scalegate_scaling_events_total counter\n"
    "@events"
    "# HELP scalegate_scaling_leader 1 when this gateway runs the pool's scaling policy.\n"
    "# TYPE scalegate_scaling_leader gauge\n"
    "@leader";

/* families with each @name replaced by the matching samples (NULL: none) */
static char *expected(const char *const *samples) {
    struct sg_text t = {0};
    const char *p = families;
    size_t k = 0;
    while (*p) {
        const char *at = strchr(p, '@');
        if (at == NULL) {
            sg_text_puts(&t, p);
            break;
        }
        sg_text_add(&t, p, (size_t)(at - p));
        if (samples && samples[k])
            sg_text_puts(&t, samples[k]);
        k++;
        p = at + 1;
        while (*p >= 'a' && *p <= 'z')
            p++;
    }
    return sg_text_take(&t, NULL);
}

/* ---- tests ---- */

/* No scaler: every family's # HELP and # TYPE lines, and nothing else. */
static void test_no_scaler(void **state) {
    (void)state;
    char *m = render(NULL);
    char *want = expected(NULL);
    assert_string_equal(m, want);
    assert_int_equal(count_prefix(m, "# HELP "), 6);
    assert_int_equal(count_prefix(m, "# TYPE "), 6);
    free(want);
    free(m);
}

/* A scaler with no scaled pool: the same. */
static void test_no_scaled_pool(void **state) {
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct sg_scaler *s = sg_scaler_new(&loop, on_publish, NULL);
    assert_non_null(s);
    char *m = render(s); /* nothing applied yet */
    char *want = expected(NULL);
    assert_string_equal(m, want);
    free(m);
    apply(s, "listen: 127.0.0.1:1\n"
             "pools:\n"
             "  web:\n"
             "    servers: [127.0.0.1:9]\n"
             "routes:\n"
             "  - match: { path_prefix: / }\n"
             "    pool: web\n");
    m = render(s);
    assert_string_equal(m, want);
    free(m);
    free(want);
    free_scaler(&loop, s);
}

/* Two scaled pools after a pool without scale: samples in config order
 * (zed before app), every state written, desired 0 before the first
 * decision, no event yet, leader 1 without Redis. */
static void test_pools_in_config_order(void **state) {
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct sg_scaler *s = sg_scaler_new(&loop, on_publish, NULL);
    assert_non_null(s);
    apply(s, "listen: 127.0.0.1:1\n"
             "pools:\n"
             "  web:\n"
             "    servers: [127.0.0.1:9]\n"
             "  zed:\n"
             "    scale: { command: \"sleep 30\", ports: 42100-42199, min: 1, max: 1, "
             "period: 1h, window: 1h }\n"
             "  app:\n"
             "    scale: { command: \"sleep 30\", ports: 42200-42299, min: 2, max: 4, "
             "period: 1h, window: 1h, targets: { p95_ms: 100 } }\n"
             "routes:\n"
             "  - match: { path_prefix: /zed }\n"
             "    pool: zed\n"
             "  - match: { path_prefix: / }\n"
             "    pool: app\n");
    char *m = render(s);
    const char *const samples[] = {
        "scalegate_pool_instances{pool=\"zed\",state=\"starting\"} 1\n"
        "scalegate_pool_instances{pool=\"zed\",state=\"ready\"} 0\n"
        "scalegate_pool_instances{pool=\"zed\",state=\"draining\"} 0\n"
        "scalegate_pool_instances{pool=\"zed\",state=\"stopping\"} 0\n"
        "scalegate_pool_instances{pool=\"app\",state=\"starting\"} 2\n"
        "scalegate_pool_instances{pool=\"app\",state=\"ready\"} 0\n"
        "scalegate_pool_instances{pool=\"app\",state=\"draining\"} 0\n"
        "scalegate_pool_instances{pool=\"app\",state=\"stopping\"} 0\n",
        "scalegate_pool_desired_instances{pool=\"zed\"} 1\n"
        "scalegate_pool_desired_instances{pool=\"app\"} 2\n",
        "scalegate_pool_min_instances{pool=\"zed\"} 1\n"
        "scalegate_pool_min_instances{pool=\"app\"} 2\n",
        "scalegate_pool_max_instances{pool=\"zed\"} 1\n"
        "scalegate_pool_max_instances{pool=\"app\"} 4\n",
        "scalegate_scaling_events_total{pool=\"zed\",direction=\"up\"} 0\n"
        "scalegate_scaling_events_total{pool=\"zed\",direction=\"down\"} 0\n"
        "scalegate_scaling_events_total{pool=\"app\",direction=\"up\"} 0\n"
        "scalegate_scaling_events_total{pool=\"app\",direction=\"down\"} 0\n",
        "scalegate_scaling_leader{pool=\"zed\"} 1\n"
        "scalegate_scaling_leader{pool=\"app\"} 1\n",
    };
    char *want = expected(samples);
    assert_string_equal(m, want);
    free(want);
    free(m);
    free_scaler(&loop, s);
}

/* With autoscaling off the pool holds its count within min and max: a
 * reload that raises min scales up, one that lowers max scales down; the
 * counters live in the pool's state and survive both reloads. */
#define RELOAD_YAML(min, max)                                                                      \
    "listen: 127.0.0.1:1\n"                                                                        \
    "pools:\n"                                                                                     \
    "  app:\n"                                                                                     \
    "    scale: { command: \"sleep 30\", ports: 42300-42399, min: " #min ", max: " #max            \
    ", enabled: false, period: 100ms, window: 100ms, drain_timeout: 0s, stop_grace: 1s, "          \
    "targets: { p95_ms: 100 } }\n"                                                                 \
    "routes:\n"                                                                                    \
    "  - match: { path_prefix: / }\n"                                                              \
    "    pool: app\n"

static void test_events_across_reloads(void **state) {
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct sg_scaler *s = sg_scaler_new(&loop, on_publish, NULL);
    assert_non_null(s);
    apply(s, RELOAD_YAML(1, 3));
    const char *const start[] = {
        "scalegate_pool_instances{pool=\"app\",state=\"starting\"} 1",
        "scalegate_pool_desired_instances{pool=\"app\"} 1",
        "scalegate_scaling_events_total{pool=\"app\",direction=\"up\"} 0",
        "scalegate_scaling_events_total{pool=\"app\",direction=\"down\"} 0",
        NULL,
    };
    assert_true(run_until_lines(&loop, s, start, 5000));

    apply(s, RELOAD_YAML(3, 3));
    const char *const up[] = {
        "scalegate_pool_instances{pool=\"app\",state=\"starting\"} 3",
        "scalegate_pool_desired_instances{pool=\"app\"} 3",
        "scalegate_pool_min_instances{pool=\"app\"} 3",
        "scalegate_scaling_events_total{pool=\"app\",direction=\"up\"} 1",
        "scalegate_scaling_events_total{pool=\"app\",direction=\"down\"} 0",
        NULL,
    };
    assert_true(run_until_lines(&loop, s, up, 5000));

    apply(s, RELOAD_YAML(1, 1));
    const char *const down[] = {
        "scalegate_pool_instances{pool=\"app\",state=\"starting\"} 1",
        "scalegate_pool_instances{pool=\"app\",state=\"draining\"} 0",
        "scalegate_pool_instances{pool=\"app\",state=\"stopping\"} 0",
        "scalegate_pool_desired_instances{pool=\"app\"} 1",
        "scalegate_pool_max_instances{pool=\"app\"} 1",
        "scalegate_scaling_events_total{pool=\"app\",direction=\"up\"} 1",
        "scalegate_scaling_events_total{pool=\"app\",direction=\"down\"} 1",
        NULL,
    };
    assert_true(run_until_lines(&loop, s, down, 10000));
    free_scaler(&loop, s);
}

int main(void) {
    sg_log_level = SG_LOG_ERROR; /* quiet: instances start and stop on purpose */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_scaler),
        cmocka_unit_test(test_no_scaled_pool),
        cmocka_unit_test(test_pools_in_config_order),
        cmocka_unit_test(test_events_across_reloads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
