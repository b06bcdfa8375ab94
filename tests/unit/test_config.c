/*
 * Config loading (src/config/): the full example, defaults, every error
 * message with its file:line:key, several errors at once, route matching,
 * and snapshot reference counting. Runs under ASan/LSan: a leak fails it.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "config/config.h"
#include "core/intern.h"
#include "http/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#define N(a) (sizeof(a) / sizeof((a)[0]))

static struct sg_config *load(const char *yaml, struct sg_config_errors *e) {
    return sg_config_load_string("t.yaml", yaml, strlen(yaml), e);
}

/* Loads yaml, which must succeed; prints the errors if it does not. */
static struct sg_config *load_ok(const char *yaml) {
    struct sg_config_errors e;
    struct sg_config *c = load(yaml, &e);
    if (c == NULL) {
        for (size_t i = 0; i < e.n; i++)
            print_error("%s\n", e.msgs[i]);
        sg_config_errors_free(&e);
        fail_msg("config rejected:\n%s", yaml);
    }
    assert_int_equal(e.n, 0);
    assert_null(e.msgs);
    return c;
}

/* Loads yaml; true if it fails with exactly the messages want[0..n) (else prints them). */
static bool check_errors(const char *yaml, const char *const *want, size_t n) {
    struct sg_config_errors e;
    struct sg_config *c = load(yaml, &e);
    bool same = c == NULL && e.n == n;
    for (size_t i = 0; same && i < n; i++)
        same = strcmp(e.msgs[i], want[i]) == 0;
    if (!same) {
        print_error("config:\n%s\nwant %zu error(s):\n", yaml, n);
        for (size_t i = 0; i < n; i++)
            print_error("  %s\n", want[i]);
        print_error("got %zu:\n", c ? 0 : e.n);
        for (size_t i = 0; i < e.n; i++)
            print_error("  %s\n", e.msgs[i]);
    }
    sg_config_unref(c);
    sg_config_errors_free(&e);
    return same;
}

static void expect_errors(const char *yaml, const char *const *want, size_t n) {
    assert_true(check_errors(yaml, want, n));
}

static unsigned port_of(const struct sockaddr_storage *ss) {
    if (ss->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return ntohs(((const struct sockaddr_in *)ss)->sin_port);
}

static uint32_t cores(void) {
    unsigned n = uv_available_parallelism();
    return n < 1 ? 1 : n > 256 ? 256 : n;
}

/* ---- good configs --------------------------------------------------------- */

static const char full_example[] =
    "listen: [127.0.0.1:8080, \"[::1]:8081\", \":8082\"]\n"
    "workers: 3\n"
    "limits:\n"
    "  max_connections: 500\n"
    "  header_timeout: 5s\n"
    "  idle_timeout: 2m\n"
    "  body_timeout: 1500ms\n"
    "  shutdown_timeout: 0\n"
    "  max_request_line: 4k\n"
    "  max_header_bytes: 32KB\n"
    "  max_body_bytes: 1g\n"
    "pools:\n"
    "  app:\n"
    "    servers: [127.0.0.1:9001, 127.0.0.1:9002]\n"
    "    connect_timeout: 2s\n"
    "    response_timeout: 1h\n"
    "    keepalive: 0\n"
    "    keepalive_timeout: 30\n"
    "  api-v2_x:\n"
    "    servers:\n"
    "      - \"[::1]:9100\"\n"
    "routes:\n"
    "  - match: { host: API.Example.com, path_prefix: /api, methods: [GET, post] }\n"
    "    pool: api-v2_x\n"
    "  - match: { host: \"*.example.com\" }\n"
    "    pool: app\n"
    "  - match: { methods: DELETE }\n"
    "    pool: app\n"
    "  - pool: app\n";

static void test_full_example(void **state) {
    (void)state;
    struct sg_config *c = load_ok(full_example);

    assert_string_equal(c->path, "t.yaml");
    assert_int_equal(atomic_load(&c->refs), 1);
    assert_int_equal(c->nlisten, 3);
    assert_string_equal(c->listen[0].text, "127.0.0.1:8080");
    assert_int_equal(c->listen[0].addr.ss_family, AF_INET);
    assert_int_equal(c->listen[0].addrlen, sizeof(struct sockaddr_in));
    assert_int_equal(port_of(&c->listen[0].addr), 8080);
    assert_string_equal(c->listen[1].text, "[::1]:8081");
    assert_int_equal(c->listen[1].addr.ss_family, AF_INET6);
    assert_int_equal(c->listen[1].addrlen, sizeof(struct sockaddr_in6));
    assert_string_equal(c->listen[2].text, "0.0.0.0:8082");
    assert_int_equal(c->workers, 3);

    assert_int_equal(c->limits.max_connections, 500);
    assert_int_equal(c->limits.header_timeout_ms, 5000);
    assert_int_equal(c->limits.idle_timeout_ms, 120000);
    assert_int_equal(c->limits.body_timeout_ms, 1500);
    assert_int_equal(c->limits.shutdown_timeout_ms, 0);
    assert_int_equal(c->limits.max_request_line, 4096);
    assert_int_equal(c->limits.max_header_bytes, 32768);
    assert_int_equal(c->limits.max_body_bytes, 1ull << 30);

    assert_int_equal(c->npools, 2);
    struct sg_pool *app = &c->pools[0], *api = &c->pools[1];
    assert_string_equal(app->name, "app");
    assert_int_equal(app->nservers, 2);
    assert_string_equal(app->servers[0].text, "127.0.0.1:9001");
    assert_string_equal(app->servers[1].text, "127.0.0.1:9002");
    assert_int_equal(port_of(&app->servers[1].addr), 9002);
    assert_int_equal(app->servers[0].weight, 1);
    assert_int_equal(app->servers[0].id, sg_intern("127.0.0.1:9001"));
    assert_int_equal(app->servers[1].id, sg_intern("127.0.0.1:9002"));
    assert_int_not_equal(app->servers[0].id, app->servers[1].id);
    assert_int_equal(app->connect_timeout_ms, 2000);
    assert_int_equal(app->response_timeout_ms, 3600000);
    assert_int_equal(app->keepalive, 0);
    assert_int_equal(app->keepalive_timeout_ms, 30000);
    assert_int_equal(atomic_load(&app->rr), 0);
    assert_string_equal(api->name, "api-v2_x");
    assert_int_equal(api->nservers, 1);
    assert_string_equal(api->servers[0].text, "[::1]:9100");
    assert_int_equal(api->servers[0].addr.ss_family, AF_INET6);

    assert_int_equal(c->nroutes, 4);
    assert_string_equal(c->routes[0].host, "api.example.com");
    assert_string_equal(c->routes[0].path_prefix, "/api");
    assert_int_equal(c->routes[0].path_prefix_len, 4);
    assert_int_equal(c->routes[0].methods, (1u << SG_METHOD_GET) | (1u << SG_METHOD_POST));
    assert_ptr_equal(c->routes[0].pool, api);
    assert_string_equal(c->routes[1].host, "*.example.com");
    assert_null(c->routes[1].path_prefix);
    assert_int_equal(c->routes[1].methods, 0);
    assert_ptr_equal(c->routes[1].pool, app);
    assert_null(c->routes[2].host);
    assert_int_equal(c->routes[2].methods, 1u << SG_METHOD_DELETE);
    assert_null(c->routes[3].host);
    assert_null(c->routes[3].path_prefix);
    assert_int_equal(c->routes[3].methods, 0);
    assert_ptr_equal(c->routes[3].pool, app);
    sg_config_unref(c);
}

static void test_defaults(void **state) {
    (void)state;
    struct sg_config *c = load_ok("listen: 8080\n"
                                  "pools:\n"
                                  "  only:\n"
                                  "    servers: [localhost:9001]\n");
    assert_int_equal(c->nlisten, 1);
    assert_string_equal(c->listen[0].text, "0.0.0.0:8080");
    assert_int_equal(c->workers, cores());
    assert_int_equal(c->limits.max_connections, 10000);
    assert_int_equal(c->limits.header_timeout_ms, 10000);
    assert_int_equal(c->limits.idle_timeout_ms, 60000);
    assert_int_equal(c->limits.body_timeout_ms, 30000);
    assert_int_equal(c->limits.shutdown_timeout_ms, 30000);
    assert_int_equal(c->limits.max_request_line, 8192);
    assert_int_equal(c->limits.max_header_bytes, 16384);
    assert_int_equal(c->limits.max_body_bytes, 10u << 20);
    assert_int_equal(c->npools, 1);
    struct sg_pool *p = &c->pools[0];
    assert_string_equal(p->servers[0].text, "localhost:9001");
    const struct sockaddr_in *a = (const struct sockaddr_in *)&p->servers[0].addr;
    assert_int_equal(a->sin_addr.s_addr, htonl(INADDR_LOOPBACK));
    assert_int_equal(p->connect_timeout_ms, 5000);
    assert_int_equal(p->response_timeout_ms, 60000);
    assert_int_equal(p->keepalive, 64);
    assert_int_equal(p->keepalive_timeout_ms, 60000);
    /* servers, balancing, health, outlier, retry, queue */
    assert_int_equal(p->nservers, 1);
    assert_int_equal(p->nprimary, 1);
    assert_int_equal(p->servers[0].weight, 1);
    assert_int_equal(p->servers[0].max_connections, 0);
    assert_false(p->servers[0].backup);
    assert_int_equal(p->balance, SG_BALANCE_ROUND_ROBIN);
    assert_null(p->hash_name);
    assert_int_equal(p->hash_name_len, 0);
    assert_int_equal(p->hash_fallback, SG_BALANCE_ROUND_ROBIN);
    assert_false(p->health.enabled);
    assert_string_equal(p->health.method, "GET");
    assert_string_equal(p->health.path, "/health");
    assert_null(p->health.host);
    assert_int_equal(p->health.interval_ms, 2000);
    assert_int_equal(p->health.timeout_ms, 1000);
    assert_int_equal(p->health.status_min, 200);
    assert_int_equal(p->health.status_max, 399);
    assert_int_equal(p->health.rise, 2);
    assert_int_equal(p->health.fall, 3);
    assert_int_equal(p->outlier.consecutive_errors, 5);
    assert_int_equal(p->outlier.consecutive_5xx, 0);
    assert_int_equal(p->outlier.base_ejection_ms, 10000);
    assert_int_equal(p->outlier.max_ejection_ms, 300000);
    assert_int_equal(p->outlier.max_ejection_percent, 50);
    assert_int_equal(p->retry.attempts, 3);
    assert_int_equal(p->retry.budget_percent, 20);
    assert_int_equal(p->retry.buffer_bytes, 64 << 10);
    assert_int_equal(p->slow_start_ms, 0);
    assert_int_equal(p->queue_size, 1000);
    assert_int_equal(p->queue_timeout_ms, 5000);
    assert_null(p->balancer);
    assert_null(p->balancer_free);
    /* one pool and no routes: a single catch-all route to it */
    assert_int_equal(c->nroutes, 1);
    assert_null(c->routes[0].host);
    assert_null(c->routes[0].path_prefix);
    assert_int_equal(c->routes[0].methods, 0);
    assert_ptr_equal(c->routes[0].pool, p);
    assert_null(c->routes[0].read_pool);
    assert_false(c->routes[0].retryable);
    sg_config_unref(c);

    /* an explicit route has the same defaults */
    c = load_ok("listen: 80\npools: {a: {servers: [1.2.3.4:5]}}\nroutes: [{pool: a}]\n");
    assert_null(c->routes[0].read_pool);
    assert_false(c->routes[0].retryable);
    sg_config_unref(c);
}

static void test_variants(void **state) {
    (void)state;
    /* empty sections, workers auto, a lone server string, "/" and "*" */
    struct sg_config *c = load_ok("listen: [\"[::]:80\"]\n"
                                  "workers: auto\n"
                                  "limits:\n"
                                  "pools: {a: {servers: 10.0.0.1:80}}\n"
                                  "routes:\n"
                                  "  - match: {path_prefix: /, host: \"*\", methods: [get, Head]}\n"
                                  "    pool: a\n"
                                  "  - match:\n"
                                  "    pool: a\n"
                                  "  - match: {host: Example.COM.}\n"
                                  "    pool: a\n"
                                  "# trailing comment\n");
    assert_string_equal(c->listen[0].text, "[::]:80");
    assert_int_equal(c->workers, cores());
    assert_int_equal(c->limits.max_header_bytes, 16384);
    assert_int_equal(c->pools[0].nservers, 1);
    assert_null(c->routes[0].path_prefix);
    assert_null(c->routes[0].host);
    assert_int_equal(c->routes[0].methods, (1u << SG_METHOD_GET) | (1u << SG_METHOD_HEAD));
    assert_null(c->routes[1].host);
    assert_string_equal(c->routes[2].host, "example.com");
    sg_config_unref(c);

    /* a null routes section with one pool is the default route */
    c = load_ok("listen: 80\npools: {a: {servers: [1.2.3.4:5]}}\nroutes:\n");
    assert_int_equal(c->nroutes, 1);
    sg_config_unref(c);

    /* workers at its bounds; anchors and aliases work */
    c = load_ok("listen: 80\nworkers: 256\n"
                "pools:\n  a: &p {servers: [1.2.3.4:5], keepalive: 7}\n  b: *p\n"
                "routes: [{pool: b}]\n");
    assert_int_equal(c->workers, 256);
    assert_int_equal(c->pools[1].keepalive, 7);
    assert_int_equal(c->pools[0].servers[0].id, c->pools[1].servers[0].id);
    sg_config_unref(c);
}

static void test_demo_file(void **state) {
    (void)state;
    struct sg_config_errors e;
    if (access("examples/demo.yaml", R_OK) != 0)
        skip(); /* run from the repository root (make unit does) */
    setenv("SCALEGATE_ADMIN_TOKEN", "demo-token", 1);
    struct sg_config *c = sg_config_load("examples/demo.yaml", &e);
    for (size_t i = 0; c == NULL && i < e.n; i++)
        print_error("%s\n", e.msgs[i]);
    assert_non_null(c);
    assert_string_equal(c->listen[0].text, "127.0.0.1:8080");
    assert_int_equal(c->workers, cores());
    assert_int_equal(c->npools, 1);
    assert_string_equal(c->pools[0].name, "app");
    assert_int_equal(c->pools[0].nservers, 0); /* the autoscaler starts the instances */
    assert_true(c->pools[0].scale.enabled);
    assert_int_equal(c->pools[0].scale.min, 2);
    assert_int_equal(c->pools[0].scale.port_min, 9100);
    assert_true(c->admin.enabled);
    assert_string_equal(c->admin.token, "demo-token");
    assert_true(c->pools[0].health.enabled); /* the demo backends answer GET /health */
    assert_string_equal(c->pools[0].health.path, "/health");
    assert_non_null(sg_config_route(c, "x", 1, "/", 1, SG_METHOD_GET));
    sg_config_unref(c);
}

static const char scale_yaml[] =
    "listen: 80\n"
    "redis: { url: \"redis://[::1]:6380\", lease_ttl: 2s }\n"
    "pools:\n"
    "  web:\n"
    "    servers: [127.0.0.1:9001]\n"
    "  app:\n"
    "    backup: [127.0.0.1:9009]\n"
    "    scale:\n"
    "      command: \"./b --port {port}\"\n"
    "      ports: 9100-9103\n"
    "      min: 0\n"
    "      max: 4\n"
    "      targets: { p95_ms: 250.5, error_rate_percent: 5, queue_per_instance: 20 }\n"
    "      queue: { redis_list: jobs }\n"
    "routes:\n"
    "  - match: { path_prefix: /web }\n"
    "    pool: web\n"
    "  - match: { path_prefix: / }\n"
    "    pool: app\n";

/* The scale section's values and defaults, and a derived snapshot: new
 * primaries for one pool, backups kept, routes pointing at its own pools,
 * everything else shared with the base and freed once (ASan checks). */
static void test_scale_and_derive(void **state) {
    (void)state;
    struct sg_config *c = load_ok(scale_yaml);
    const struct sg_pool *app = &c->pools[1];
    const struct sg_scale_cfg *s = &app->scale;
    assert_true(s->enabled && s->autoscale);
    assert_int_equal(s->driver, SG_SCALE_PROCESS);
    assert_int_equal(s->port_min, 9100);
    assert_int_equal(s->port_max, 9103);
    assert_int_equal(s->min, 0);
    assert_int_equal(s->max, 4);
    assert_true(s->p95_ms > 250.49 && s->p95_ms < 250.51);
    assert_true(s->error_rate > 0.0499 && s->error_rate < 0.0501);
    assert_string_equal(s->queue_redis_list, "jobs");
    assert_int_equal(s->period_ms, 1000);
    assert_int_equal(s->down_stabilization_ms, 300000);
    assert_int_equal(s->cold_start_timeout_ms, 30000);
    assert_true(app->health.enabled); /* checked by default: instances join on a pass */
    assert_int_equal(app->health.interval_ms, 1000);
    assert_int_equal(app->health.rise, 1);
    assert_int_equal(app->nprimary, 0);
    assert_int_equal(app->nservers, 1);
    assert_string_equal(c->redis.host, "::1");
    assert_int_equal(c->redis.port, 6380);
    assert_int_equal(c->redis.lease_ttl_ms, 2000);
    assert_string_equal(c->redis.prefix, "sg:");

    struct sg_server inst[2] = {{.text = "127.0.0.1:9100", .weight = 1, .id = 7},
                                {.text = "127.0.0.1:9101", .weight = 1, .id = 8}};
    struct sg_pool_servers over[2] = {{.set = false}, {.set = true, .servers = inst, .n = 2}};
    struct sg_config *d = sg_config_derive(c, over);
    assert_non_null(d);
    assert_ptr_equal(d->base, c);
    const struct sg_pool *dapp = sg_config_pool(d, "app");
    assert_non_null(dapp);
    assert_int_equal(dapp->nprimary, 2);
    assert_int_equal(dapp->nservers, 3);
    assert_string_equal(dapp->servers[0].text, "127.0.0.1:9100");
    assert_ptr_not_equal(dapp->servers[0].text, inst[0].text); /* copied */
    assert_string_equal(dapp->servers[2].text, "127.0.0.1:9009");
    assert_true(dapp->servers[2].backup);
    assert_ptr_equal(dapp->name, app->name); /* shared */
    assert_ptr_equal(d->pools[0].servers, c->pools[0].servers);
    assert_ptr_equal(d->routes[0].pool, &d->pools[0]);
    assert_ptr_equal(d->routes[1].pool, &d->pools[1]);
    /* a derived snapshot derives from the base, not from itself */
    struct sg_config *d2 = sg_config_derive(d, NULL);
    assert_ptr_equal(d2->base, c);
    assert_int_equal(sg_config_pool(d2, "app")->nprimary, 0);
    sg_config_unref(c); /* the derived ones keep it */
    assert_string_equal(sg_config_pool(d, "app")->scale.command, "./b --port {port}");
    sg_config_unref(d);
    sg_config_unref(d2);
}

/* Route rate limits: forms, defaults, and bucket ids shared by name + key. */
static void test_rate_limit_rules(void **state) {
    (void)state;
    struct sg_config *c =
        load_ok("listen: 80\n"
                "limits: { rate_limit_keys: 5000 }\n"
                "pools: { app: { servers: [127.0.0.1:9001] } }\n"
                "routes:\n"
                "  - match: { path_prefix: /a }\n"
                "    pool: app\n"
                "    max_in_flight: 7\n"
                "    rate_limit:\n"
                "      - { rate: 100/min }\n"
                "      - { name: dev, rate: 1/s, key: \"header:X-Device-ID\" }\n"
                "  - match: { path_prefix: / }\n"
                "    pool: app\n"
                "    rate_limit_headers: false\n"
                "    rate_limit:\n"
                "      - name: dev\n"
                "        rate: 50/minute\n"
                "        burst: 5\n"
                "        key: header:X-Device-ID\n"
                "        class_header: X-Device-Class\n"
                "        classes: { office: 500/min, hub: { rate: 2/s, burst: 9 } }\n"
                "        overrides: { dev-1: 1/h }\n"
                "      - { rate: 1000/day, key: global }\n");
    assert_int_equal(c->limits.rate_limit_keys, 5000);
    const struct sg_route *a = &c->routes[0], *b = &c->routes[1];
    assert_int_equal(a->max_in_flight, 7);
    assert_non_null(a->in_flight);
    assert_true(a->rate_limit_headers);
    assert_int_equal(a->nrate_limits, 2);
    assert_string_equal(a->rate_limits[0].name, "route1-1");
    assert_int_equal(a->rate_limits[0].key, SG_RL_KEY_IP);
    assert_int_equal(a->rate_limits[0].rate.count, 100);
    assert_int_equal(a->rate_limits[0].rate.period_ms, 60000);
    assert_int_equal(a->rate_limits[0].rate.burst, 100); /* default: the count */
    assert_false(b->rate_limit_headers);
    assert_int_equal(b->nrate_limits, 2);
    const struct sg_rl_rule *d = &b->rate_limits[0];
    assert_int_equal(d->key, SG_RL_KEY_HEADER);
    assert_string_equal(d->key_name, "X-Device-ID");
    assert_int_equal(d->rate.burst, 5);
    assert_int_equal(d->nclasses, 2);
    assert_string_equal(d->classes[1].value, "hub");
    assert_int_equal(d->classes[1].rate.count, 2);
    assert_int_equal(d->classes[1].rate.period_ms, 1000);
    assert_int_equal(d->classes[1].rate.burst, 9);
    assert_int_equal(d->classes[0].rate.burst, 500);
    assert_int_equal(d->noverrides, 1);
    assert_int_equal(d->overrides[0].rate.period_ms, 3600000);
    /* same name and key in two routes: one set of buckets */
    assert_true(a->rate_limits[1].id == d->id);
    assert_true(b->rate_limits[1].id != d->id);
    assert_int_equal(b->rate_limits[1].key, SG_RL_KEY_GLOBAL);
    assert_int_equal(b->rate_limits[1].rate.period_ms, 86400000);
    sg_config_unref(c);
}

static void test_load_file(void **state) {
    (void)state;
    struct sg_config_errors e;
    char path[] = "/tmp/sg_test_config_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *yaml = "listen: 1234\npools: {a: {servers: [1.2.3.4:5]}}\nworkers: x\n";
    assert_int_equal(write(fd, yaml, strlen(yaml)), (ssize_t)strlen(yaml));
    close(fd);

    struct sg_config *c = sg_config_load(path, &e);
    assert_null(c);
    assert_int_equal(e.n, 1);
    char want[256];
    snprintf(want, sizeof(want), "%s:3: workers: \"x\" is not a number or \"auto\"", path);
    assert_string_equal(e.msgs[0], want);
    sg_config_errors_free(&e);
    assert_int_equal(e.n, 0);
    assert_null(e.msgs);
    unlink(path);

    c = sg_config_load(path, &e);
    assert_null(c);
    assert_int_equal(e.n, 1);
    snprintf(want, sizeof(want), "%s: cannot read: %s", path, strerror(ENOENT));
    assert_string_equal(e.msgs[0], want);
    sg_config_errors_free(&e);

    c = sg_config_load("/tmp", &e);
    assert_null(c);
    assert_int_equal(e.n, 1);
    snprintf(want, sizeof(want), "/tmp: cannot read: %s", strerror(EISDIR));
    assert_string_equal(e.msgs[0], want);
    sg_config_errors_free(&e);

    /* errs may be NULL when the caller only wants yes or no */
    assert_null(sg_config_load("/nonexistent/x.yaml", NULL));
    assert_null(load("listen: [", NULL));
    c = load("listen: 1\npools: {a: {servers: [1.2.3.4:5]}}\n", NULL);
    assert_non_null(c);
    sg_config_unref(c);
}

/* ---- pools: servers, balancing, health, outlier, retry, queue -------------------- */

static const char pool_example[] =
    "listen: 80\n"
    "pools:\n"
    "  app:\n"
    "    servers:\n"
    "      - 127.0.0.1:9001\n"
    "      - { address: 127.0.0.1:9002, weight: 3, max_connections: 100 }\n"
    "      - address: \"[::1]:9003\"\n"
    "        weight: 1000\n"
    "        max_connections: 1000000\n"
    "    backup: [127.0.0.1:9009, {address: localhost:9010, weight: 2}]\n"
    "    balance: hash\n"
    "    hash_key: header:X-Device-ID\n"
    "    hash_fallback: least_conn\n"
    "    health:\n"
    "      method: HEAD\n"
    "      path: /healthz?full=1\n"
    "      host: app.internal:8080\n"
    "      interval: 500ms\n"
    "      timeout: 2s\n"
    "      expect: 200-299\n"
    "      rise: 1\n"
    "      fall: 100\n"
    "    outlier:\n"
    "      consecutive_errors: 0\n"
    "      consecutive_5xx: 1000\n"
    "      base_ejection: 30s\n"
    "      max_ejection: 30s\n"
    "      max_ejection_percent: 100%\n"
    "    slow_start: 1m\n"
    "    retry:\n"
    "      attempts: 1\n"
    "      budget: 5\n"
    "      buffer: 0\n"
    "    queue_size: 0\n"
    "    queue_timeout: 250ms\n"
    "    connect_timeout: 1s\n"
    "  reads:\n"
    "    servers: 10.0.0.1:80\n"
    "    backup: 10.0.0.2:80\n"
    "    balance: weighted\n"
    "    health: {}\n"
    "    outlier:\n"
    "    retry: {budget: 100%, buffer: 64MB, attempts: 10}\n"
    "    queue_size: 1000000\n"
    "    slow_start: 0\n"
    "  other:\n"
    "    servers: [10.0.0.3:80]\n"
    "    balance: least_conn\n"
    "    health: {expect: 200, host: \"\"}\n"
    "    outlier: {max_ejection_percent: 0, base_ejection: 1ms, max_ejection: 365d}\n"
    "    retry: {budget: 0%}\n"
    "routes:\n"
    "  - match: {path_prefix: /api}\n"
    "    pool: app\n"
    "    read_pool: reads\n"
    "    retryable: true\n"
    "  - match: {path_prefix: /x}\n"
    "    pool: other\n"
    "    read_pool: other\n"
    "    retryable: No\n"
    "  - pool: reads\n"
    "    retryable: on\n";

static void test_pool_example(void **state) {
    (void)state;
    struct sg_config *c = load_ok(pool_example);
    assert_int_equal(c->npools, 3);
    struct sg_pool *app = &c->pools[0], *reads = &c->pools[1], *other = &c->pools[2];

    /* primaries in order, then backups */
    assert_int_equal(app->nservers, 5);
    assert_int_equal(app->nprimary, 3);
    static const struct {
        const char *text;
        uint32_t weight, max_connections;
        bool backup;
    } want[] = {
        {"127.0.0.1:9001", 1, 0, false},      {"127.0.0.1:9002", 3, 100, false},
        {"[::1]:9003", 1000, 1000000, false}, {"127.0.0.1:9009", 1, 0, true},
        {"localhost:9010", 2, 0, true},
    };
    for (size_t i = 0; i < N(want); i++) {
        assert_string_equal(app->servers[i].text, want[i].text);
        assert_int_equal(app->servers[i].weight, want[i].weight);
        assert_int_equal(app->servers[i].max_connections, want[i].max_connections);
        assert_int_equal(app->servers[i].backup, want[i].backup);
        assert_int_equal(app->servers[i].id, sg_intern(want[i].text));
    }
    assert_int_equal(app->servers[2].addr.ss_family, AF_INET6);
    assert_int_equal(port_of(&app->servers[2].addr), 9003);
    assert_int_equal(port_of(&app->servers[4].addr), 9010);

    assert_int_equal(app->balance, SG_BALANCE_HASH);
    assert_int_equal(app->hash_source, SG_HASH_HEADER);
    assert_string_equal(app->hash_name, "X-Device-ID");
    assert_int_equal(app->hash_name_len, 11);
    assert_int_equal(app->hash_fallback, SG_BALANCE_LEAST_CONN);

    assert_true(app->health.enabled);
    assert_string_equal(app->health.method, "HEAD");
    assert_string_equal(app->health.path, "/healthz?full=1");
    assert_string_equal(app->health.host, "app.internal:8080");
    assert_int_equal(app->health.interval_ms, 500);
    assert_int_equal(app->health.timeout_ms, 2000); /* longer than interval: allowed */
    assert_int_equal(app->health.status_min, 200);
    assert_int_equal(app->health.status_max, 299);
    assert_int_equal(app->health.rise, 1);
    assert_int_equal(app->health.fall, 100);

    assert_int_equal(app->outlier.consecutive_errors, 0);
    assert_int_equal(app->outlier.consecutive_5xx, 1000);
    assert_int_equal(app->outlier.base_ejection_ms, 30000);
    assert_int_equal(app->outlier.max_ejection_ms, 30000);
    assert_int_equal(app->outlier.max_ejection_percent, 100);
    assert_int_equal(app->slow_start_ms, 60000);
    assert_int_equal(app->retry.attempts, 1);
    assert_int_equal(app->retry.budget_percent, 5);
    assert_int_equal(app->retry.buffer_bytes, 0);
    assert_int_equal(app->queue_size, 0);
    assert_int_equal(app->queue_timeout_ms, 250);
    assert_int_equal(app->connect_timeout_ms, 1000);
    assert_int_equal(app->response_timeout_ms, 60000);

    /* lone strings for servers and backup; an empty health map: checks with defaults */
    assert_int_equal(reads->nservers, 2);
    assert_int_equal(reads->nprimary, 1);
    assert_string_equal(reads->servers[1].text, "10.0.0.2:80");
    assert_true(reads->servers[1].backup);
    assert_int_equal(reads->balance, SG_BALANCE_WEIGHTED);
    assert_null(reads->hash_name);
    assert_true(reads->health.enabled);
    assert_string_equal(reads->health.method, "GET");
    assert_string_equal(reads->health.path, "/health");
    assert_null(reads->health.host);
    assert_int_equal(reads->health.interval_ms, 2000);
    assert_int_equal(reads->health.timeout_ms, 1000);
    assert_int_equal(reads->health.status_min, 200);
    assert_int_equal(reads->health.status_max, 399);
    assert_int_equal(reads->health.rise, 2);
    assert_int_equal(reads->health.fall, 3);
    assert_int_equal(reads->outlier.consecutive_errors, 5); /* "outlier:" empty: defaults */
    assert_int_equal(reads->outlier.max_ejection_ms, 300000);
    assert_int_equal(reads->retry.attempts, 10);
    assert_int_equal(reads->retry.budget_percent, 100);
    assert_int_equal(reads->retry.buffer_bytes, 64 << 20);
    assert_int_equal(reads->queue_size, 1000000);
    assert_int_equal(reads->slow_start_ms, 0);

    /* expect as a YAML integer; host "" = the server's address */
    assert_int_equal(other->balance, SG_BALANCE_LEAST_CONN);
    assert_int_equal(other->health.status_min, 200);
    assert_int_equal(other->health.status_max, 200);
    assert_null(other->health.host);
    assert_int_equal(other->outlier.max_ejection_percent, 0);
    assert_int_equal(other->outlier.base_ejection_ms, 1);
    assert_int_equal(other->outlier.max_ejection_ms, 365ull * 86400 * 1000);
    assert_int_equal(other->retry.budget_percent, 0);

    assert_int_equal(c->nroutes, 3);
    assert_ptr_equal(c->routes[0].pool, app);
    assert_ptr_equal(c->routes[0].read_pool, reads);
    assert_true(c->routes[0].retryable);
    assert_ptr_equal(c->routes[1].pool, other);
    assert_ptr_equal(c->routes[1].read_pool, other);
    assert_false(c->routes[1].retryable);
    assert_ptr_equal(c->routes[2].pool, reads);
    assert_null(c->routes[2].read_pool);
    assert_true(c->routes[2].retryable);
    sg_config_unref(c);
}

static void test_balance_and_hash_keys(void **state) {
    (void)state;
    static const struct {
        const char *balance;
        enum sg_balance_algo algo;
    } algos[] = {
        {"round_robin", SG_BALANCE_ROUND_ROBIN},
        {"weighted", SG_BALANCE_WEIGHTED},
        {"least_conn", SG_BALANCE_LEAST_CONN},
        {"p2c", SG_BALANCE_P2C},
    };
    char yaml[256];
    for (size_t i = 0; i < N(algos); i++) {
        snprintf(yaml, sizeof(yaml),
                 "listen: 80\npools: {a: {servers: [1.2.3.4:5], balance: %s}}\n", algos[i].balance);
        struct sg_config *c = load_ok(yaml);
        assert_int_equal(c->pools[0].balance, algos[i].algo);
        sg_config_unref(c);
        snprintf(yaml, sizeof(yaml),
                 "listen: 80\npools: {a: {servers: [1.2.3.4:5], balance: hash, hash_key: ip, "
                 "hash_fallback: %s}}\n",
                 algos[i].balance);
        c = load_ok(yaml);
        assert_int_equal(c->pools[0].balance, SG_BALANCE_HASH);
        assert_int_equal(c->pools[0].hash_fallback, algos[i].algo);
        sg_config_unref(c);
    }
    static const struct {
        const char *key;
        enum sg_hash_source src;
        const char *name; /* NULL: none */
    } keys[] = {
        {"header:X-User", SG_HASH_HEADER, "X-User"},
        {"cookie:session_id", SG_HASH_COOKIE, "session_id"},
        {"query:u", SG_HASH_QUERY, "u"},
        {"\"header:!#$%&'*+-.^_`|~09azAZ\"", SG_HASH_HEADER, "!#$%&'*+-.^_`|~09azAZ"},
        {"ip", SG_HASH_IP, NULL},
        {"path", SG_HASH_PATH, NULL},
    };
    for (size_t i = 0; i < N(keys); i++) {
        snprintf(yaml, sizeof(yaml),
                 "listen: 80\npools:\n  a:\n    servers: [1.2.3.4:5]\n    balance: hash\n"
                 "    hash_key: %s\n",
                 keys[i].key);
        struct sg_config *c = load_ok(yaml);
        struct sg_pool *p = &c->pools[0];
        assert_int_equal(p->hash_source, keys[i].src);
        assert_int_equal(p->hash_fallback, SG_BALANCE_ROUND_ROBIN);
        if (keys[i].name) {
            assert_string_equal(p->hash_name, keys[i].name);
            assert_int_equal(p->hash_name_len, strlen(keys[i].name));
        } else {
            assert_null(p->hash_name);
            assert_int_equal(p->hash_name_len, 0);
        }
        sg_config_unref(c);
    }
}

static void test_server_forms(void **state) {
    (void)state;
    /* block maps, a lone backup map in a list, aliases shared between pools */
    struct sg_config *c = load_ok("listen: 80\n"
                                  "pools:\n"
                                  "  a:\n"
                                  "    servers:\n"
                                  "      - address: 10.0.0.1:80\n"
                                  "      - &two {address: 10.0.0.2:80, max_connections: 0}\n"
                                  "    backup:\n"
                                  "      - address: 10.0.0.3:80\n"
                                  "        max_connections: 5\n"
                                  "  b:\n"
                                  "    servers: [*two, 10.0.0.1:80]\n"
                                  "    backup: [10.0.0.4:80, 10.0.0.5:80]\n"
                                  "routes: [{pool: a}]\n");
    struct sg_pool *a = &c->pools[0], *b = &c->pools[1];
    assert_int_equal(a->nservers, 3);
    assert_int_equal(a->nprimary, 2);
    assert_string_equal(a->servers[0].text, "10.0.0.1:80");
    assert_string_equal(a->servers[1].text, "10.0.0.2:80");
    assert_false(a->servers[1].backup);
    assert_string_equal(a->servers[2].text, "10.0.0.3:80");
    assert_true(a->servers[2].backup);
    assert_int_equal(a->servers[2].max_connections, 5);
    assert_int_equal(a->servers[2].weight, 1);
    assert_int_equal(b->nservers, 4);
    assert_int_equal(b->nprimary, 2);
    assert_string_equal(b->servers[0].text, "10.0.0.2:80");
    assert_int_equal(b->servers[0].id, a->servers[1].id);
    assert_int_equal(b->servers[1].id, a->servers[0].id);
    assert_false(b->servers[1].backup);
    assert_true(b->servers[2].backup);
    assert_true(b->servers[3].backup);
    assert_string_equal(b->servers[3].text, "10.0.0.5:80");
    sg_config_unref(c);

    /* the same address in two pools is fine (one pool's primary, another's backup) */
    c = load_ok("listen: 80\npools:\n  a: {servers: [1.1.1.1:1], backup: [2.2.2.2:2]}\n"
                "  b: {servers: [2.2.2.2:2], backup: [1.1.1.1:1]}\nroutes: [{pool: a}]\n");
    assert_int_equal(c->pools[0].servers[1].id, c->pools[1].servers[0].id);
    sg_config_unref(c);
}

static int balancer_frees;

static void count_free(void *b) {
    balancer_frees++;
    free(b);
}

static void test_balancer_freed(void **state) {
    (void)state;
    /* another module hangs its balancer on the pool; the snapshot frees it once */
    struct sg_config *c = load_ok(pool_example);
    balancer_frees = 0;
    c->pools[0].balancer = malloc(16);
    c->pools[0].balancer_free = count_free;
    c->pools[1].balancer_free = count_free; /* no balancer: not called */
    c->pools[2].balancer = &balancer_frees; /* no free function: left alone */
    sg_config_ref(c);
    sg_config_unref(c);
    assert_int_equal(balancer_frees, 0);
    sg_config_unref(c);
    assert_int_equal(balancer_frees, 1);
}

/* ---- errors, one at a time -------------------------------------------------- */

#define BASE                                                                                       \
    "listen: 127.0.0.1:8080\n"                                                                     \
    "pools:\n"                                                                                     \
    "  app:\n"                                                                                     \
    "    servers: [127.0.0.1:9001]\n"

struct err_case {
    const char *yaml;
    const char *want;
};

static const struct err_case error_cases[] = {
    /* limits */
    {BASE "limits:\n  header_timout: 5s\n", "t.yaml:6: limits.header_timout: unknown key"},
    {BASE "limits:\n  max_body_bytes: 10XB\n",
     "t.yaml:6: limits.max_body_bytes: \"10XB\" is not a size"},
    {BASE "limits:\n  max_body_bytes: -1\n",
     "t.yaml:6: limits.max_body_bytes: \"-1\" is not a size"},
    {BASE "limits:\n  header_timeout: 10x\n",
     "t.yaml:6: limits.header_timeout: \"10x\" is not a duration"},
    {BASE "limits:\n  header_timeout: 0\n",
     "t.yaml:6: limits.header_timeout: \"0\" is out of range (1ms to 365d)"},
    {BASE "limits:\n  idle_timeout: 366d\n",
     "t.yaml:6: limits.idle_timeout: \"366d\" is out of range (1ms to 365d)"},
    {BASE "limits:\n  max_header_bytes: 128k\n",
     "t.yaml:6: limits.max_header_bytes: \"128k\" is out of range (1k to 64k)"},
    {BASE "limits:\n  max_header_bytes: 1023\n",
     "t.yaml:6: limits.max_header_bytes: \"1023\" is out of range (1k to 64k)"},
    {BASE "limits:\n  max_request_line: 100\n",
     "t.yaml:6: limits.max_request_line: \"100\" is out of range (256 to 64k)"},
    {BASE "limits:\n  max_header_bytes: 4k\n",
     "t.yaml:6: limits.max_header_bytes: max_request_line (8k) is larger than "
     "max_header_bytes (4k)"},
    {BASE "limits:\n  max_request_line: 32k\n  max_header_bytes: 16k\n",
     "t.yaml:6: limits.max_request_line: max_request_line (32k) is larger than "
     "max_header_bytes (16k)"},
    {BASE "limits:\n  max_connections: 0\n",
     "t.yaml:6: limits.max_connections: \"0\" is out of range (1 to 10000000)"},
    {BASE "limits:\n  max_connections: 1k\n",
     "t.yaml:6: limits.max_connections: \"1k\" is not a whole number"},
    {BASE "limits:\n  idle_timeout: 1s\n  idle_timeout: 2s\n",
     "t.yaml:7: limits.idle_timeout: duplicate key (first at line 6)"},
    {BASE "limits: [1, 2]\n", "t.yaml:5: limits: expected a map, got a list"},
    {BASE "limits: 5\n", "t.yaml:5: limits: expected a map, got a string"},
    {BASE "limits:\n  header_timeout: [1]\n",
     "t.yaml:6: limits.header_timeout: expected a duration, got a list"},
    {BASE "limits:\n  header_timeout: {a: 1}\n",
     "t.yaml:6: limits.header_timeout: expected a duration, got a map"},
    {BASE "limits: {header_timeout: }\n",
     "t.yaml:5: limits.header_timeout: has no value (expected a duration)"},
    {BASE "limits:\n  ? [a]\n  : 1\n", "t.yaml:6: limits: keys must be strings, got a list"},
    /* workers */
    {BASE "workers: 0\n", "t.yaml:5: workers: \"0\" is out of range (1 to 256)"},
    {BASE "workers: 257\n", "t.yaml:5: workers: \"257\" is out of range (1 to 256)"},
    {BASE "workers: many\n", "t.yaml:5: workers: \"many\" is not a number or \"auto\""},
    {BASE "workers: -2\n", "t.yaml:5: workers: \"-2\" is not a number or \"auto\""},
    {BASE "workers: [1]\n", "t.yaml:5: workers: expected a number or \"auto\", got a list"},
    /* top level */
    {BASE "bogus: 1\n", "t.yaml:5: bogus: unknown key"},
    {BASE "listen: 80\n", "t.yaml:5: listen: duplicate key (first at line 1)"},
    {"pools: {app: {servers: [1.2.3.4:80]}}\n", "t.yaml:1: listen: required key is missing"},
    {"listen: 80\n", "t.yaml:1: pools: required key is missing"},
    {"", "t.yaml:1: the file is empty (expected listen, pools and routes)"},
    {"# only a comment\n", "t.yaml:1: the file is empty (expected listen, pools and routes)"},
    {"- a\n", "t.yaml:1: expected a map of sections (listen, pools, ...), got a list"},
    {"hello\n", "t.yaml:1: expected a map of sections (listen, pools, ...), got a string"},
    {BASE "---\nlisten: 80\n", "t.yaml:6: only one YAML document is allowed per file"},
    /* YAML syntax */
    {"listen: 80\npools:\n  a: {servers: [1.2.3.4:5]\n",
     "t.yaml:4: syntax error: did not find expected ',' or '}' (while parsing a flow mapping at "
     "line 3)"},
    {"listen: 80\n pools: 1\n",
     "t.yaml:2: syntax error: mapping values are not allowed in this context"},
    {"listen: *x\n", "t.yaml:1: syntax error: found undefined alias"},
    {"listen: \"\xff\"\n", "t.yaml:1: syntax error: invalid leading UTF-8 octet"},
    {"listen: \"a\\0b\"\npools: {a: {servers: [1.2.3.4:5]}}\n",
     "t.yaml:1: listen: contains a NUL character"},
    /* listen */
    {"listen: abc\npools: {a: {servers: [1.2.3.4:5]}}\n",
     "t.yaml:1: listen: \"abc\" is not host:port"},
    {"listen: \":0\"\npools: {a: {servers: [1.2.3.4:5]}}\n",
     "t.yaml:1: listen: \":0\" is not host:port"},
    {"listen: 127.0.0.1:65536\npools: {a: {servers: [1.2.3.4:5]}}\n",
     "t.yaml:1: listen: \"127.0.0.1:65536\" is not host:port"},
    {"listen:\n  - 80\n  - example.com:80\npools: {a: {servers: [1.2.3.4:5]}}\n",
     "t.yaml:3: listen[1]: \"example.com:80\" is not host:port"},
    {"listen: [80, \"0.0.0.0:80\"]\npools: {a: {servers: [1.2.3.4:5]}}\n",
     "t.yaml:1: listen[1]: \"0.0.0.0:80\" is listed twice (0.0.0.0:80)"},
    {"listen: {a: 1}\npools: {a: {servers: [1.2.3.4:5]}}\n",
     "t.yaml:1: listen: expected host:port or a list of them, got a map"},
    {"listen: []\npools: {a: {servers: [1.2.3.4:5]}}\n", "t.yaml:1: listen: the list is empty"},
    {"listen:\npools: {a: {servers: [1.2.3.4:5]}}\n",
     "t.yaml:1: listen: has no value (expected host:port)"},
    {"listen: [[80]]\npools: {a: {servers: [1.2.3.4:5]}}\n",
     "t.yaml:1: listen[0]: expected host:port, got a list"},
    /* pools */
    {"listen: 80\npools: []\n",
     "t.yaml:2: pools: expected a map of pool names to pools, got a list"},
    {"listen: 80\npools: {}\n", "t.yaml:2: pools: no pool is defined"},
    {"listen: 80\npools:\n",
     "t.yaml:2: pools: has no value (expected a map of pool names to pools)"},
    {"listen: 80\npools:\n  a.b: {servers: [1.2.3.4:5]}\n",
     "t.yaml:3: pools.a.b: \"a.b\" is not a valid pool name (use letters, digits, _ and -)"},
    {"listen: 80\npools:\n  a: {servers: [1.2.3.4:5]}\n  a: {servers: [1.2.3.4:6]}\n",
     "t.yaml:4: pools.a: duplicate key (pool defined twice)"},
    {"listen: 80\npools:\n  app: [1]\n", "t.yaml:3: pools.app: expected a map, got a list"},
    {"listen: 80\npools:\n  app:\n",
     "t.yaml:3: pools.app: has no value (expected a map with servers)"},
    {"listen: 80\npools:\n  app:\n    keepalive: 1\n",
     "t.yaml:4: pools.app.servers: required key is missing"},
    {"listen: 80\npools:\n  app:\n    servers: []\n",
     "t.yaml:4: pools.app.servers: the list is empty"},
    {"listen: 80\npools:\n  app:\n    servers: {a: 1}\n",
     "t.yaml:4: pools.app.servers: expected host:port or a list of them, got a map"},
    {"listen: 80\npools:\n  app:\n    servers:\n",
     "t.yaml:4: pools.app.servers: has no value (expected a list of host:port)"},
    {"listen: 80\npools:\n  app:\n    servers: [127.0.0.1:9001, abc]\n",
     "t.yaml:4: pools.app.servers[1]: \"abc\" is not host:port"},
    {"listen: 80\npools:\n  app:\n    servers: [\":9001\"]\n",
     "t.yaml:4: pools.app.servers[0]: \":9001\" has no host to connect to"},
    {"listen: 80\npools:\n  app:\n    servers: [1.2.3.4:5, 1.2.3.4:5]\n",
     "t.yaml:4: pools.app.servers[1]: \"1.2.3.4:5\" is listed twice"},
    {BASE "    keepalive: -1\n", "t.yaml:5: pools.app.keepalive: \"-1\" is not a whole number"},
    {BASE "    keepalive: 10001\n",
     "t.yaml:5: pools.app.keepalive: \"10001\" is out of range (0 to 10000)"},
    {BASE "    connect_timeout: 0s\n",
     "t.yaml:5: pools.app.connect_timeout: \"0s\" is out of range (1ms to 365d)"},
    {BASE "    response_timeout: soon\n",
     "t.yaml:5: pools.app.response_timeout: \"soon\" is not a duration"},
    {BASE "    keepalive_timout: 1s\n", "t.yaml:5: pools.app.keepalive_timout: unknown key"},
    /* pools: server maps and backups */
    {"listen: 80\npools:\n  app:\n"
     "    servers:\n      - {address: 1.2.3.4:5, weight: 0}\n",
     "t.yaml:5: pools.app.servers[0].weight: \"0\" is out of range (1 to 1000)"},
    {"listen: 80\npools:\n  app:\n"
     "    servers:\n      - {address: 1.2.3.4:5, weight: 1001}\n",
     "t.yaml:5: pools.app.servers[0].weight: \"1001\" is out of range (1 to 1000)"},
    {"listen: 80\npools:\n  app:\n"
     "    servers:\n      - {address: 1.2.3.4:5, weight: heavy}\n",
     "t.yaml:5: pools.app.servers[0].weight: \"heavy\" is not a whole number"},
    {"listen: 80\npools:\n  app:\n"
     "    servers:\n      - {address: 1.2.3.4:5, max_connections: 1000001}\n",
     "t.yaml:5: pools.app.servers[0].max_connections: \"1000001\" is out of range (0 to 1000000)"},
    {"listen: 80\npools:\n  app:\n"
     "    servers:\n      - {weight: 2}\n",
     "t.yaml:5: pools.app.servers[0].address: required key is missing"},
    {"listen: 80\npools:\n  app:\n"
     "    servers:\n      - 1.2.3.4:5\n      - weight: 2\n        max_connections: 3\n",
     "t.yaml:6: pools.app.servers[1].address: required key is missing"},
    {"listen: 80\npools:\n  app:\n"
     "    servers:\n      - {address: 1.2.3.4:5, wieght: 2}\n",
     "t.yaml:5: pools.app.servers[0].wieght: unknown key"},
    {"listen: 80\npools:\n  app:\n"
     "    servers:\n      - {address: abc}\n",
     "t.yaml:5: pools.app.servers[0].address: \"abc\" is not host:port"},
    {"listen: 80\npools:\n  app:\n"
     "    servers:\n      - {address: [1.2.3.4:5]}\n",
     "t.yaml:5: pools.app.servers[0].address: expected host:port, got a list"},
    {"listen: 80\npools:\n  app:\n"
     "    servers:\n      - [1.2.3.4:5]\n",
     "t.yaml:5: pools.app.servers[0]: expected host:port or a map with address, got a list"},
    {"listen: 80\npools:\n  app:\n"
     "    servers:\n      -\n",
     "t.yaml:5: pools.app.servers[0]: has no value (expected host:port)"},
    {"listen: 80\npools:\n  app:\n"
     "    servers: [1.2.3.4:5, {address: 1.2.3.4:5}]\n",
     "t.yaml:4: pools.app.servers[1].address: \"1.2.3.4:5\" is listed twice"},
    {"listen: 80\npools:\n  app:\n"
     "    servers: [localhost:9001, 127.0.0.1:9001]\n",
     "t.yaml:4: pools.app.servers[1]: \"127.0.0.1:9001\" is listed twice (as \"localhost:9001\")"},
    {"listen: 80\npools:\n  app:\n"
     "    servers: [127.0.0.1:9001]\n    backup: [127.0.0.1:9001]\n",
     "t.yaml:5: pools.app.backup[0]: \"127.0.0.1:9001\" is listed twice"},
    {"listen: 80\npools:\n  app:\n"
     "    servers: [127.0.0.1:9001]\n    backup: [127.0.0.1:9002, 127.0.0.1:9002]\n",
     "t.yaml:5: pools.app.backup[1]: \"127.0.0.1:9002\" is listed twice"},
    {"listen: 80\npools:\n  app:\n"
     "    servers: [1.2.3.4:5]\n    backup: [\":9001\"]\n",
     "t.yaml:5: pools.app.backup[0]: \":9001\" has no host to connect to"},
    {"listen: 80\npools:\n  app:\n"
     "    servers: [1.2.3.4:5]\n    backup: []\n",
     "t.yaml:5: pools.app.backup: the list is empty"},
    {"listen: 80\npools:\n  app:\n"
     "    servers: [1.2.3.4:5]\n    backup:\n",
     "t.yaml:5: pools.app.backup: has no value (expected a list of host:port)"},
    {"listen: 80\npools:\n  app:\n"
     "    servers: [1.2.3.4:5]\n    backup: {address: 1.2.3.5:5}\n",
     "t.yaml:5: pools.app.backup: expected host:port or a list of them, got a map"},
    {"listen: 80\npools:\n  app:\n"
     "    backup: [1.2.3.4:5]\n",
     "t.yaml:4: pools.app.servers: required key is missing"},
    /* pools: balance and hash_key */
    {BASE "    balance: random\n",
     "t.yaml:5: pools.app.balance: \"random\" is not a balance algorithm (round_robin, weighted, "
     "least_conn, p2c, hash)"},
    {BASE "    balance: Weighted\n",
     "t.yaml:5: pools.app.balance: \"Weighted\" is not a balance algorithm (round_robin, "
     "weighted, least_conn, p2c, hash)"},
    {BASE "    balance: [p2c]\n",
     "t.yaml:5: pools.app.balance: expected a balance algorithm, got a list"},
    {BASE "    balance: hash\n",
     "t.yaml:5: pools.app.hash_key: required with balance: hash (header:NAME, cookie:NAME, "
     "query:NAME, ip or path)"},
    {BASE "    hash_key: ip\n",
     "t.yaml:5: pools.app.hash_key: hash_key needs balance: hash (not round_robin)"},
    {BASE "    balance: p2c\n    hash_key: ip\n",
     "t.yaml:6: pools.app.hash_key: hash_key needs balance: hash (not p2c)"},
    {BASE "    balance: rr\n    hash_key: ip\n", /* one mistake, one message */
     "t.yaml:5: pools.app.balance: \"rr\" is not a balance algorithm (round_robin, weighted, "
     "least_conn, p2c, hash)"},
    {BASE "    hash_fallback: weighted\n",
     "t.yaml:5: pools.app.hash_fallback: hash_fallback needs balance: hash (not round_robin)"},
    {BASE "    balance: hash\n    hash_key: ip\n    hash_fallback: hash\n",
     "t.yaml:7: pools.app.hash_fallback: \"hash\" cannot be the fallback: requests without the "
     "key have nothing to hash (round_robin, weighted, least_conn, p2c)"},
    {BASE "    balance: hash\n    hash_key: ip\n    hash_fallback: random\n",
     "t.yaml:7: pools.app.hash_fallback: \"random\" is not a balance algorithm (round_robin, "
     "weighted, least_conn, p2c)"},
    {BASE "    balance: hash\n    hash_key: \"header:\"\n",
     "t.yaml:6: pools.app.hash_key: \"header:\": the name after \"header:\" must be one or more "
     "letters, digits or !#$%&'*+-.^_`|~"},
    {BASE "    balance: hash\n    hash_key: \"cookie:a b\"\n",
     "t.yaml:6: pools.app.hash_key: \"cookie:a b\": the name after \"cookie:\" must be one or "
     "more letters, digits or !#$%&'*+-.^_`|~"},
    {BASE "    balance: hash\n    hash_key: \"query:a=b\"\n",
     "t.yaml:6: pools.app.hash_key: \"query:a=b\": the name after \"query:\" must be one or more "
     "letters, digits or !#$%&'*+-.^_`|~"},
    {BASE "    balance: hash\n    hash_key: host\n",
     "t.yaml:6: pools.app.hash_key: \"host\" is not a hash key (header:NAME, cookie:NAME, "
     "query:NAME, ip or path)"},
    {BASE "    balance: hash\n    hash_key: Header:X\n",
     "t.yaml:6: pools.app.hash_key: \"Header:X\" is not a hash key (header:NAME, cookie:NAME, "
     "query:NAME, ip or path)"},
    {BASE "    balance: hash\n    hash_key: [ip]\n",
     "t.yaml:6: pools.app.hash_key: expected a hash key, got a list"},
    {BASE "    balance: hash\n    hash_key:\n",
     "t.yaml:6: pools.app.hash_key: has no value (expected a hash key)"},
    /* pools: health */
    {BASE "    health:\n",
     "t.yaml:5: pools.app.health: has no value (expected a map; write health: {} to check with "
     "the defaults)"},
    {BASE "    health: [1]\n", "t.yaml:5: pools.app.health: expected a map, got a list"},
    {BASE "    health: on\n", "t.yaml:5: pools.app.health: expected a map, got a string"},
    {BASE "    health: {checks: 1}\n", "t.yaml:5: pools.app.health.checks: unknown key"},
    {BASE "    health:\n      method: get\n",
     "t.yaml:6: pools.app.health.method: \"get\" is not an HTTP method (upper-case letters, such "
     "as GET or HEAD)"},
    {BASE "    health:\n      method: \"GE T\"\n",
     "t.yaml:6: pools.app.health.method: \"GE T\" is not an HTTP method (upper-case letters, "
     "such as GET or HEAD)"},
    {BASE "    health:\n      method: \"\"\n",
     "t.yaml:6: pools.app.health.method: \"\" is not an HTTP method (upper-case letters, such as "
     "GET or HEAD)"},
    {BASE "    health:\n      path: health\n",
     "t.yaml:6: pools.app.health.path: \"health\" must start with '/'"},
    {BASE "    health:\n      path: \"/a b\"\n",
     "t.yaml:6: pools.app.health.path: \"/a b\" has a space, a control character or a non-ASCII "
     "byte (percent-encode them)"},
    {BASE "    health:\n      path: \"/\\u00e9\"\n",
     "t.yaml:6: pools.app.health.path: \"/\xc3\xa9\" has a space, a control character or a "
     "non-ASCII byte (percent-encode them)"},
    {BASE "    health:\n      host: \"a\\r\\nX: y\"\n",
     "t.yaml:6: pools.app.health.host: \"a\\x0d\\x0aX: y\" is not a Host header value (no spaces "
     "or control characters)"},
    {BASE "    health:\n      expect: 2xx\n",
     "t.yaml:6: pools.app.health.expect: \"2xx\" is not a status or a range of statuses (such as "
     "200-399)"},
    {BASE "    health:\n      expect: \"-200\"\n",
     "t.yaml:6: pools.app.health.expect: \"-200\" is not a status or a range of statuses (such as "
     "200-399)"},
    {BASE "    health:\n      expect: 200-\n",
     "t.yaml:6: pools.app.health.expect: \"200-\" is not a status or a range of statuses (such as "
     "200-399)"},
    {BASE "    health:\n      expect: 200-299-399\n",
     "t.yaml:6: pools.app.health.expect: \"200-299-399\" is not a status or a range of statuses "
     "(such as 200-399)"},
    {BASE "    health:\n      expect: 600\n",
     "t.yaml:6: pools.app.health.expect: \"600\" is out of range (100 to 599)"},
    {BASE "    health:\n      expect: 99-200\n",
     "t.yaml:6: pools.app.health.expect: \"99-200\" is out of range (100 to 599)"},
    {BASE "    health:\n      expect: 399-200\n",
     "t.yaml:6: pools.app.health.expect: \"399-200\" is an empty range (write the lower status "
     "first)"},
    {BASE "    health:\n      interval: 0\n",
     "t.yaml:6: pools.app.health.interval: \"0\" is out of range (1ms to 365d)"},
    {BASE "    health:\n      timeout: 0s\n",
     "t.yaml:6: pools.app.health.timeout: \"0s\" is out of range (1ms to 365d)"},
    {BASE "    health:\n      timeout: 1.5s\n",
     "t.yaml:6: pools.app.health.timeout: \"1.5s\" is not a duration"},
    {BASE "    health:\n      rise: 0\n",
     "t.yaml:6: pools.app.health.rise: \"0\" is out of range (1 to 100)"},
    {BASE "    health:\n      fall: 101\n",
     "t.yaml:6: pools.app.health.fall: \"101\" is out of range (1 to 100)"},
    {BASE "    health:\n      fall: x\n",
     "t.yaml:6: pools.app.health.fall: \"x\" is not a whole number"},
    /* pools: outlier */
    {BASE "    outlier: {consecutive_errors: 1001}\n",
     "t.yaml:5: pools.app.outlier.consecutive_errors: \"1001\" is out of range (0 to 1000)"},
    {BASE "    outlier: {consecutive_5xx: -1}\n",
     "t.yaml:5: pools.app.outlier.consecutive_5xx: \"-1\" is not a whole number"},
    {BASE "    outlier: {base_ejection: 0}\n",
     "t.yaml:5: pools.app.outlier.base_ejection: \"0\" is out of range (1ms to 365d)"},
    {BASE "    outlier:\n      max_ejection: 5s\n",
     "t.yaml:6: pools.app.outlier.max_ejection: max_ejection (5s) is less than base_ejection "
     "(10s)"},
    {BASE "    outlier:\n      base_ejection: 10m\n",
     "t.yaml:6: pools.app.outlier.base_ejection: max_ejection (5m) is less than base_ejection "
     "(10m)"},
    {BASE "    outlier:\n      base_ejection: 1h\n      max_ejection: 1500ms\n",
     "t.yaml:7: pools.app.outlier.max_ejection: max_ejection (1500ms) is less than "
     "base_ejection (1h)"},
    {BASE "    outlier:\n      base_ejection: x\n      max_ejection: 1s\n",
     "t.yaml:6: pools.app.outlier.base_ejection: \"x\" is not a duration"},
    {BASE "    outlier: {max_ejection_percent: 101}\n",
     "t.yaml:5: pools.app.outlier.max_ejection_percent: \"101\" is out of range (0% to 100%)"},
    {BASE "    outlier: {max_ejection_percent: 50%%}\n",
     "t.yaml:5: pools.app.outlier.max_ejection_percent: \"50%%\" is not a percentage"},
    {BASE "    outlier: {ejection: 1s}\n", "t.yaml:5: pools.app.outlier.ejection: unknown key"},
    {BASE "    outlier: 5\n", "t.yaml:5: pools.app.outlier: expected a map, got a string"},
    /* pools: retry, slow start, queue */
    {BASE "    retry: {attempts: 0}\n",
     "t.yaml:5: pools.app.retry.attempts: \"0\" is out of range (1 to 10)"},
    {BASE "    retry: {attempts: 11}\n",
     "t.yaml:5: pools.app.retry.attempts: \"11\" is out of range (1 to 10)"},
    {BASE "    retry: {budget: 120%}\n",
     "t.yaml:5: pools.app.retry.budget: \"120%\" is out of range (0% to 100%)"},
    {BASE "    retry: {budget: \"20 %\"}\n",
     "t.yaml:5: pools.app.retry.budget: \"20 %\" is not a percentage"},
    {BASE "    retry: {budget: \"%\"}\n",
     "t.yaml:5: pools.app.retry.budget: \"%\" is not a percentage"},
    {BASE "    retry: {budget: 0.5}\n",
     "t.yaml:5: pools.app.retry.budget: \"0.5\" is not a percentage"},
    {BASE "    retry: {buffer: 65m}\n",
     "t.yaml:5: pools.app.retry.buffer: \"65m\" is out of range (0 to 64m)"},
    {BASE "    retry: {tries: 2}\n", "t.yaml:5: pools.app.retry.tries: unknown key"},
    {BASE "    retry: [1]\n", "t.yaml:5: pools.app.retry: expected a map, got a list"},
    {BASE "    slow_start: soon\n", "t.yaml:5: pools.app.slow_start: \"soon\" is not a duration"},
    {BASE "    slow_start: 366d\n",
     "t.yaml:5: pools.app.slow_start: \"366d\" is out of range (0 to 365d)"},
    {BASE "    queue_size: 1000001\n",
     "t.yaml:5: pools.app.queue_size: \"1000001\" is out of range (0 to 1000000)"},
    {BASE "    queue_timeout: 0\n",
     "t.yaml:5: pools.app.queue_timeout: \"0\" is out of range (1ms to 365d)"},
    /* routes */
    {BASE "routes:\n  - match: {path_prefix: /}\n    pool: ap\n",
     "t.yaml:7: routes[0].pool: no pool named \"ap\""},
    {BASE "routes:\n  - match: {path_prefix: api}\n    pool: app\n",
     "t.yaml:6: routes[0].match.path_prefix: \"api\" must start with '/'"},
    {BASE "routes:\n  - match: {methods: [GET, FOO]}\n    pool: app\n",
     "t.yaml:6: routes[0].match.methods[1]: \"FOO\" is not an HTTP method (GET, HEAD, POST, "
     "PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH)"},
    {BASE "routes:\n  - match: {methods: []}\n    pool: app\n",
     "t.yaml:6: routes[0].match.methods: the list is empty"},
    {BASE "routes:\n  - match: {methods: }\n    pool: app\n",
     "t.yaml:6: routes[0].match.methods: has no value (expected a list of HTTP methods)"},
    {BASE "routes:\n  - match: {host: \"example.com:80\"}\n    pool: app\n",
     "t.yaml:6: routes[0].match.host: \"example.com:80\" is not a host name"},
    {BASE "routes:\n  - match: {host: \"a..b\"}\n    pool: app\n",
     "t.yaml:6: routes[0].match.host: \"a..b\" is not a host name"},
    {BASE "routes:\n  - match: {host: \"*example.com\"}\n    pool: app\n",
     "t.yaml:6: routes[0].match.host: \"*example.com\" is not a host name"},
    {BASE "routes:\n  - match: {hots: a}\n    pool: app\n",
     "t.yaml:6: routes[0].match.hots: unknown key"},
    {BASE "routes:\n  - match: [a]\n    pool: app\n",
     "t.yaml:6: routes[0].match: expected a map, got a list"},
    {BASE "routes:\n  - pool: app\n    pool: app\n",
     "t.yaml:7: routes[0].pool: duplicate key (first at line 6)"},
    {BASE "routes:\n  - match: {}\n", "t.yaml:6: routes[0].pool: required key is missing"},
    {BASE "routes:\n  - pool: [app]\n",
     "t.yaml:6: routes[0].pool: expected a pool name, got a list"},
    {BASE "routes:\n  - app\n",
     "t.yaml:6: routes[0]: expected a map with match and pool, got a string"},
    {BASE "routes:\n  -\n", "t.yaml:6: routes[0]: expected a map with match and pool, got nothing"},
    {BASE "routes: {a: 1}\n", "t.yaml:5: routes: expected a list of routes, got a map"},
    {BASE "routes: []\n", "t.yaml:5: routes: the list is empty (every request would get 404)"},
    {"listen: 80\npools:\n  a: {servers: [1.2.3.4:5]}\n  b: {servers: [1.2.3.4:6]}\n",
     "t.yaml:1: routes: required when there is more than one pool"},
    {BASE "routes:\n  - pool: app\n    read_pool: nope\n",
     "t.yaml:7: routes[0].read_pool: no pool named \"nope\""},
    {BASE "routes:\n  - pool: app\n    read_pool: [app]\n",
     "t.yaml:7: routes[0].read_pool: expected a pool name, got a list"},
    {BASE "routes:\n  - pool: app\n    read_pool:\n",
     "t.yaml:7: routes[0].read_pool: has no value (expected a pool name)"},
    {BASE "routes:\n  - read_pool: app\n", "t.yaml:6: routes[0].pool: required key is missing"},
    {BASE "routes:\n  - pool: app\n    retryable: maybe\n",
     "t.yaml:7: routes[0].retryable: \"maybe\" is not true or false"},
    {BASE "routes:\n  - pool: app\n    retryable: 1\n",
     "t.yaml:7: routes[0].retryable: \"1\" is not true or false"},
    {BASE "routes:\n  - pool: app\n    retryable:\n",
     "t.yaml:7: routes[0].retryable: has no value (expected true or false)"},
    {BASE "routes:\n  - pool: app\n    retry: true\n", "t.yaml:7: routes[0].retry: unknown key"},
};

static void test_errors_one_by_one(void **state) {
    (void)state;
    size_t failed = 0;
    for (size_t i = 0; i < N(error_cases); i++)
        failed += !check_errors(error_cases[i].yaml, &error_cases[i].want, 1);
    assert_int_equal(failed, 0);
}

/* ---- several errors at once --------------------------------------------------- */

static void test_errors_collected(void **state) {
    (void)state;
    /* routes come first in the file: messages are still in line order */
    static const char yaml[] = "routes:\n"                                           /* 1 */
                               "  - match: {path_prefix: x, methods: [GET, GRAB]}\n" /* 2 */
                               "    pool: ap\n"                                      /* 3 */
                               "listen: [abc, \":8080\", \":8080\"]\n"               /* 4 */
                               "workers: none\n"                                     /* 5 */
                               "limits:\n"                                           /* 6 */
                               "  header_timout: 5s\n"                               /* 7 */
                               "  max_body_bytes: 10XB\n"                            /* 8 */
                               "  max_body_bytes: 1m\n"                              /* 9 */
                               "pools:\n"                                            /* 10 */
                               "  app:\n"                                            /* 11 */
                               "    servers: [127.0.0.1:9001, abc]\n"                /* 12 */
                               "    keepalive: lots\n"                               /* 13 */
                               "  web:\n"                                            /* 14 */
                               "    servers: []\n"                                   /* 15 */
                               "extra: true\n";                                      /* 16 */
    static const char *const want[] = {
        "t.yaml:2: routes[0].match.path_prefix: \"x\" must start with '/'",
        ("t.yaml:2: routes[0].match.methods[1]: \"GRAB\" is not an HTTP method (GET, HEAD, POST, "
         "PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH)"),
        "t.yaml:3: routes[0].pool: no pool named \"ap\"",
        "t.yaml:4: listen[0]: \"abc\" is not host:port",
        "t.yaml:4: listen[2]: \":8080\" is listed twice (0.0.0.0:8080)",
        "t.yaml:5: workers: \"none\" is not a number or \"auto\"",
        "t.yaml:7: limits.header_timout: unknown key",
        "t.yaml:8: limits.max_body_bytes: \"10XB\" is not a size",
        "t.yaml:9: limits.max_body_bytes: duplicate key (first at line 8)",
        "t.yaml:12: pools.app.servers[1]: \"abc\" is not host:port",
        "t.yaml:13: pools.app.keepalive: \"lots\" is not a whole number",
        "t.yaml:15: pools.web.servers: the list is empty",
        "t.yaml:16: extra: unknown key",
    };
    expect_errors(yaml, want, N(want));
}

static void test_pool_errors_collected(void **state) {
    (void)state;
    /* every mistake in a pool at once; two on one line keep the order they were found in */
    static const char yaml[] = "listen: 80\n"                             /* 1 */
                               "pools:\n"                                 /* 2 */
                               "  app:\n"                                 /* 3 */
                               "    servers:\n"                           /* 4 */
                               "      - {address: abc, weight: 0}\n"      /* 5 */
                               "      - 1.2.3.4:5\n"                      /* 6 */
                               "    backup: [1.2.3.4:5]\n"                /* 7 */
                               "    balance: hash\n"                      /* 8 */
                               "    health:\n"                            /* 9 */
                               "      rise: 0\n"                          /* 10 */
                               "      expect: 500-400\n"                  /* 11 */
                               "    outlier: {max_ejection: 1s}\n"        /* 12 */
                               "    retry: {attempts: 20, budget: 101}\n" /* 13 */
                               "routes:\n"                                /* 14 */
                               "  - pool: app\n"                          /* 15 */
                               "    read_pool: ghost\n"                   /* 16 */
                               "    retryable: perhaps\n";                /* 17 */
    static const char *const want[] = {
        "t.yaml:5: pools.app.servers[0].weight: \"0\" is out of range (1 to 1000)",
        "t.yaml:5: pools.app.servers[0].address: \"abc\" is not host:port",
        "t.yaml:7: pools.app.backup[0]: \"1.2.3.4:5\" is listed twice",
        ("t.yaml:8: pools.app.hash_key: required with balance: hash (header:NAME, cookie:NAME, "
         "query:NAME, ip or path)"),
        "t.yaml:10: pools.app.health.rise: \"0\" is out of range (1 to 100)",
        "t.yaml:11: pools.app.health.expect: \"500-400\" is an empty range (write the lower "
        "status first)",
        "t.yaml:12: pools.app.outlier.max_ejection: max_ejection (1s) is less than base_ejection "
        "(10s)",
        "t.yaml:13: pools.app.retry.attempts: \"20\" is out of range (1 to 10)",
        "t.yaml:13: pools.app.retry.budget: \"101\" is out of range (0% to 100%)",
        "t.yaml:16: routes[0].read_pool: no pool named \"ghost\"",
        "t.yaml:17: routes[0].retryable: \"perhaps\" is not true or false",
    };
    expect_errors(yaml, want, N(want));
}

static void test_errors_capped(void **state) {
    (void)state;
    /* 1500 bad servers: 1000 messages kept plus a last line saying how many more */
    size_t cap = 64 + 1500 * 8;
    char *yaml = malloc(cap);
    assert_non_null(yaml);
    size_t o = (size_t)snprintf(yaml, cap, "listen: 80\npools:\n  a:\n    servers:\n");
    for (int i = 0; i < 1500; i++)
        o += (size_t)snprintf(yaml + o, cap - o, "    - x\n");
    struct sg_config_errors e;
    assert_null(sg_config_load_string("big.yaml", yaml, o, &e));
    assert_int_equal(e.n, 1001);
    assert_string_equal(e.msgs[0], "big.yaml:5: pools.a.servers[0]: \"x\" is not host:port");
    assert_string_equal(e.msgs[1000], "big.yaml: too many errors, 500 more not shown");
    sg_config_errors_free(&e);
    free(yaml);
}

static void test_error_quoting(void **state) {
    (void)state;
    /* control characters are escaped and long values cut, so a message is one line */
    char yaml[512];
    char longkey[300];
    memset(longkey, 'k', sizeof(longkey) - 1);
    longkey[sizeof(longkey) - 1] = '\0';
    snprintf(yaml, sizeof(yaml),
             "listen: \"a\\tb\\\"c\"\npools: {a: {servers: [1.2.3.4:5]}}\n%s: 1\n", longkey);
    struct sg_config_errors e;
    assert_null(load(yaml, &e));
    assert_int_equal(e.n, 2);
    assert_string_equal(e.msgs[0], "t.yaml:1: listen: \"a\\x09b\\\"c\" is not host:port");
    assert_non_null(strstr(e.msgs[1], "t.yaml:3: kkkk"));
    assert_non_null(strstr(e.msgs[1], "...: unknown key"));
    assert_true(strlen(e.msgs[1]) < 300);
    sg_config_errors_free(&e);

    /* values longer than the quote buffer, escapes landing on its end */
    for (int len = 60; len < 90; len++) {
        size_t o = (size_t)snprintf(yaml, sizeof(yaml), "listen: 80\npools: {a: {servers: [\"");
        for (int i = 0; i < len; i++)
            o += (size_t)snprintf(yaml + o, sizeof(yaml) - o, "%s", i % 7 < len % 7 ? "x" : "\\t");
        snprintf(yaml + o, sizeof(yaml) - o, "\"]}}\n");
        assert_null(load(yaml, &e));
        assert_int_equal(e.n, 1);
        assert_non_null(strstr(e.msgs[0], "...\" is not host:port"));
        sg_config_errors_free(&e);
    }
}

/* ---- routing ------------------------------------------------------------------ */

static const char route_yaml[] = "listen: 80\n"
                                 "pools:\n"
                                 "  a: {servers: [1.0.0.1:80]}\n"
                                 "  b: {servers: [1.0.0.2:80]}\n"
                                 "  c: {servers: [1.0.0.3:80]}\n"
                                 "  d: {servers: [1.0.0.4:80]}\n"
                                 "  e: {servers: [1.0.0.5:80]}\n"
                                 "  f: {servers: [1.0.0.6:80]}\n"
                                 "routes:\n"
                                 "  - match: {host: api.example.com, path_prefix: /v1, "
                                 "methods: [GET, HEAD]}\n"
                                 "    pool: a\n"
                                 "  - match: {host: \"*.example.com\"}\n"
                                 "    pool: b\n"
                                 "  - match: {path_prefix: /static/}\n"
                                 "    pool: c\n"
                                 "  - match: {methods: [POST, PATCH]}\n"
                                 "    pool: d\n"
                                 "  - match: {host: \"[::1]\"}\n"
                                 "    pool: f\n"
                                 "  - match: {host: example.com, path_prefix: /}\n"
                                 "    pool: e\n";

struct route_case {
    const char *host; /* NULL: request without Host */
    const char *path;
    int method;
    const char *pool; /* NULL: no route */
};

static void test_route_matching(void **state) {
    (void)state;
    static const struct route_case cases[] = {
        {"api.example.com", "/v1/users", SG_METHOD_GET, "a"},
        {"API.Example.COM", "/v1", SG_METHOD_HEAD, "a"},
        {"api.example.com:8080", "/v1/x", SG_METHOD_GET, "a"},
        {"api.example.com.", "/v1/x", SG_METHOD_GET, "a"},
        {"api.example.com", "/v1x", SG_METHOD_GET, "a"}, /* plain byte prefix */
        {"api.example.com", "/v1/users", SG_METHOD_POST, "b"},
        {"api.example.com", "/V1/users", SG_METHOD_GET, "b"}, /* paths are case-sensitive */
        {"api.example.com", "/v", SG_METHOD_GET, "b"},
        {"a.example.com", "/", SG_METHOD_GET, "b"},
        {"a.b.example.com", "/", SG_METHOD_DELETE, "b"},
        {"A.EXAMPLE.COM:443", "/", SG_METHOD_GET, "b"},
        {"example.com", "/", SG_METHOD_GET, "e"}, /* "*.example.com" needs a subdomain */
        {"example.com:80", "/x", SG_METHOD_OPTIONS, "e"},
        {".example.com", "/", SG_METHOD_GET, NULL}, /* empty label: no host matches */
        {"xexample.com", "/", SG_METHOD_GET, NULL},
        {"example.org", "/static/a.css", SG_METHOD_GET, "c"},
        {"example.org", "/static", SG_METHOD_GET, NULL},
        {NULL, "/static/", SG_METHOD_GET, "c"},
        {NULL, "/", SG_METHOD_GET, NULL},
        {"other", "/", SG_METHOD_POST, "d"},
        {"other", "/", SG_METHOD_PATCH, "d"},
        {"other", "/", SG_METHOD_PUT, NULL},
        {"other", "/", SG_METHOD_OTHER, NULL},
        {"other", "/", -1, NULL},
        {"other", "/", 40, NULL},
        {"[::1]:8080", "/", SG_METHOD_GET, "f"},
        {"[::1]", "/", SG_METHOD_GET, "f"},
        {"[::2]:8080", "/", SG_METHOD_GET, NULL},
        {"", "/", SG_METHOD_GET, NULL},
        {":80", "/", SG_METHOD_GET, NULL},
    };
    struct sg_config *c = load_ok(route_yaml);
    for (size_t i = 0; i < N(cases); i++) {
        const struct route_case *k = &cases[i];
        const struct sg_route *r = sg_config_route(c, k->host, k->host ? strlen(k->host) : 0,
                                                   k->path, strlen(k->path), k->method);
        const char *got = r ? r->pool->name : NULL;
        if ((got == NULL) != (k->pool == NULL) || (got && strcmp(got, k->pool) != 0))
            print_error("case %zu: host %s path %s method %d: want %s, got %s\n", i,
                        k->host ? k->host : "(none)", k->path, k->method,
                        k->pool ? k->pool : "none", got ? got : "none");
        if (k->pool)
            assert_non_null(r);
        else
            assert_null(r);
        if (r)
            assert_string_equal(r->pool->name, k->pool);
    }
    /* host and path are (pointer, length): no NUL terminator needed */
    const char buf[] = "api.example.comXYZ/v1/zzz";
    const struct sg_route *r = sg_config_route(c, buf, 15, buf + 18, 3, SG_METHOD_GET);
    assert_non_null(r);
    assert_string_equal(r->pool->name, "a");
    sg_config_unref(c);

    c = load_ok("listen: 80\npools: {a: {servers: [1.0.0.1:80]}}\n");
    r = sg_config_route(c, NULL, 0, "", 0, SG_METHOD_OTHER);
    assert_non_null(r); /* the default route takes everything */
    sg_config_unref(c);
}

/* ---- reference counting ---------------------------------------------------------- */

static void test_refcount(void **state) {
    (void)state;
    struct sg_config *c = load_ok(full_example);
    assert_int_equal(atomic_load(&c->refs), 1);
    assert_ptr_equal(sg_config_ref(c), c);
    assert_ptr_equal(sg_config_ref(c), c);
    assert_int_equal(atomic_load(&c->refs), 3);
    sg_config_unref(c);
    sg_config_unref(c);
    assert_int_equal(atomic_load(&c->refs), 1);
    assert_string_equal(c->pools[0].name, "app"); /* still alive */
    sg_config_unref(c);                           /* freed: ASan would catch a use */
    sg_config_unref(NULL);
}

static void *ref_thread(void *arg) {
    struct sg_config *c = arg;
    for (int i = 0; i < 10000; i++) {
        sg_config_ref(c);
        sg_config_unref(c);
    }
    sg_config_unref(c); /* drops the reference it was given */
    return NULL;
}

static void test_refcount_threads(void **state) {
    (void)state;
    struct sg_config *c = load_ok(full_example);
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, ref_thread, sg_config_ref(c)), 0);
    sg_config_unref(c); /* the last thread to finish frees it */
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
}

static void test_server_ids_stable(void **state) {
    (void)state;
    /* the same address gets the same id in a later snapshot (a reload) */
    struct sg_config *a = load_ok("listen: 80\npools: {p: {servers: [10.9.9.1:1, 10.9.9.2:2]}}\n");
    struct sg_config *b = load_ok("listen: 80\npools: {q: {servers: [10.9.9.3:3, 10.9.9.1:1]}}\n");
    assert_int_equal(a->pools[0].servers[0].id, b->pools[0].servers[1].id);
    assert_int_not_equal(b->pools[0].servers[0].id, a->pools[0].servers[1].id);
    assert_true(a->pools[0].servers[1].id < sg_intern_count());
    sg_config_unref(a);
    sg_config_unref(b);
}

/* ---- response cache ---------------------------------------------------------------- */

/* No cache section: the top-level defaults are set all the same, and no
 * route caches (neither a listed one nor the implicit one of a lone pool). */
static void test_cache_defaults(void **state) {
    (void)state;
    static const char *const yamls[] = {
        BASE "routes:\n  - pool: app\n", BASE, /* no routes: one implicit route */
    };
    for (size_t i = 0; i < N(yamls); i++) {
        struct sg_config *c = load_ok(yamls[i]);
        assert_int_equal(c->cache.memory_bytes, 100ull << 20);
        assert_int_equal(c->cache.max_object_size, 1ull << 20);
        assert_int_equal(c->cache.l2_ttl_ms, 3600 * 1000);
        assert_int_equal(c->cache.l2_timeout_ms, 50);
        assert_int_equal(c->nroutes, 1);
        assert_false(c->routes[0].cache.enabled);
        assert_null(c->routes[0].cache.vary);
        assert_int_equal(c->routes[0].cache.nvary, 0);
        sg_config_unref(c);
    }
    /* a small memory without max_object_size: the default shrinks to fit */
    struct sg_config *small = load_ok(BASE "cache: { memory: 16MB }\n");
    assert_int_equal(small->cache.max_object_size, (16ull << 20) / 64 / 8 * 7);
    sg_config_unref(small);
    /* an empty map: the defaults too */
    struct sg_config *c = load_ok(BASE "cache: {}\n");
    assert_int_equal(c->cache.memory_bytes, 100ull << 20);
    assert_int_equal(c->cache.l2_timeout_ms, 50);
    sg_config_unref(c);
}

/* Every key at both levels; then a derived snapshot, which copies the
 * top-level settings and shares the vary names (freed once: ASan checks). */
static void test_cache_full(void **state) {
    (void)state;
    struct sg_config *c = load_ok(BASE "cache:\n"
                                       "  memory: 256MB\n"
                                       "  max_object_size: 3MB\n"
                                       "  l2_ttl: 0\n"
                                       "  l2_timeout: 20ms\n"
                                       "routes:\n"
                                       "  - match: { path_prefix: /api/ }\n"
                                       "    pool: app\n"
                                       "    cache:\n"
                                       "      ttl: 30s\n"
                                       "      vary: [X-Tenant-ID, Accept-Language]\n"
                                       "      stale_while_revalidate: 30s\n"
                                       "      stale_if_error: 5m\n"
                                       "      lock_timeout: 2s\n"
                                       "      set_cookie: true\n"
                                       "      authorization: yes\n"
                                       "      client_cache_control: false\n"
                                       "  - match: { path_prefix: /img/ }\n"
                                       "    pool: app\n"
                                       "    cache: { vary: Accept }\n"
                                       "  - pool: app\n");
    assert_int_equal(c->cache.memory_bytes, 256ull << 20);
    assert_int_equal(c->cache.max_object_size, 3ull << 20);
    assert_int_equal(c->cache.l2_ttl_ms, 0);
    assert_int_equal(c->cache.l2_timeout_ms, 20);
    const struct sg_route_cache *a = &c->routes[0].cache, *b = &c->routes[1].cache;
    assert_true(a->enabled);
    assert_int_equal(a->ttl_ms, 30000);
    assert_int_equal(a->nvary, 2);
    assert_string_equal(a->vary[0], "x-tenant-id");
    assert_string_equal(a->vary[1], "accept-language");
    assert_int_equal(a->stale_while_revalidate_ms, 30000);
    assert_int_equal(a->stale_if_error_ms, 300000);
    assert_int_equal(a->lock_timeout_ms, 2000);
    assert_true(a->set_cookie);
    assert_true(a->authorization);
    assert_false(a->client_cache_control);
    /* a lone name for vary; the rest defaults */
    assert_true(b->enabled);
    assert_int_equal(b->nvary, 1);
    assert_string_equal(b->vary[0], "accept");
    assert_int_equal(b->ttl_ms, 300000);
    assert_int_equal(b->stale_while_revalidate_ms, 0);
    assert_int_equal(b->stale_if_error_ms, 0);
    assert_int_equal(b->lock_timeout_ms, 5000);
    assert_false(b->set_cookie);
    assert_false(b->authorization);
    assert_true(b->client_cache_control);
    assert_false(c->routes[2].cache.enabled);

    struct sg_config *d = sg_config_derive(c, NULL);
    assert_non_null(d);
    assert_memory_equal(&d->cache, &c->cache, sizeof(d->cache));
    assert_ptr_equal(d->routes[0].cache.vary, a->vary); /* shared with the base */
    sg_config_unref(c);                                 /* the derived one keeps it */
    assert_true(d->routes[0].cache.enabled);
    assert_string_equal(d->routes[0].cache.vary[1], "accept-language");
    assert_int_equal(d->cache.memory_bytes, 256ull << 20);
    sg_config_unref(d);
}

/* cache: true is the defaults, cache: false (or no) is no cache. */
static void test_cache_bool(void **state) {
    (void)state;
    struct sg_config *c =
        load_ok(BASE "routes:\n"
                     "  - { match: { path_prefix: /a }, pool: app, cache: true }\n"
                     "  - { match: { path_prefix: /b }, pool: app, cache: false }\n"
                     "  - { match: { path_prefix: /c }, pool: app, cache: no }\n"
                     "  - { match: { path_prefix: /d }, pool: app, cache: {} }\n");
    const struct sg_route_cache *t = &c->routes[0].cache;
    assert_true(t->enabled);
    assert_int_equal(t->ttl_ms, 300000);
    assert_int_equal(t->lock_timeout_ms, 5000);
    assert_int_equal(t->nvary, 0);
    assert_null(t->vary);
    assert_false(t->set_cookie);
    assert_false(t->authorization);
    assert_true(t->client_cache_control);
    for (size_t i = 1; i <= 2; i++) {
        const struct sg_route_cache *f = &c->routes[i].cache;
        assert_false(f->enabled);
        assert_int_equal(f->ttl_ms, 0);
        assert_null(f->vary);
    }
    assert_memory_equal(&c->routes[3].cache, t, sizeof(*t));
    sg_config_unref(c);
}

#define CROUTE BASE "routes:\n  - pool: app\n    cache:\n" /* route keys on line 8 */

static const struct err_case cache_error_cases[] = {
    /* top level */
    {BASE "cache:\n  memroy: 1MB\n", "t.yaml:6: cache.memroy: unknown key"},
    {BASE "cache:\n", "t.yaml:5: cache: has no value (expected a map; write cache: {} for the "
                      "defaults)"},
    {BASE "cache: 5\n", "t.yaml:5: cache: expected a map, got a string"},
    {BASE "cache:\n  memory: lots\n", "t.yaml:6: cache.memory: \"lots\" is not a size"},
    {BASE "cache:\n  memory: 512k\n", "t.yaml:6: cache.memory: \"512k\" must be at least 1m"},
    {BASE "cache:\n  max_object_size: 0\n",
     "t.yaml:6: cache.max_object_size: \"0\" must be at least 1"},
    {BASE "cache:\n  memory: 32MB\n  max_object_size: 1MB\n",
     "t.yaml:7: cache.max_object_size: max_object_size (1m) does not fit the memory tier: at "
     "most 448k with this memory (7/8 of one of its 64 shards)"},
    {BASE "cache:\n  l2_ttl: 1 h\n", "t.yaml:6: cache.l2_ttl: \"1 h\" is not a duration"},
    {BASE "cache:\n  l2_timeout: 0\n",
     "t.yaml:6: cache.l2_timeout: \"0\" is out of range (1ms to 365d)"},
    /* a route's */
    {CROUTE "      ttl: 5x\n", "t.yaml:8: routes[0].cache.ttl: \"5x\" is not a duration"},
    {CROUTE "      ttl: 0\n", "t.yaml:8: routes[0].cache.ttl: \"0\" is out of range (1ms to 365d)"},
    {CROUTE "      lock_timeout: 0\n",
     "t.yaml:8: routes[0].cache.lock_timeout: \"0\" is out of range (1ms to 365d)"},
    {CROUTE "      stale_if_error: -1s\n",
     "t.yaml:8: routes[0].cache.stale_if_error: \"-1s\" is not a duration"},
    {CROUTE "      vry: [X-Tenant-ID]\n", "t.yaml:8: routes[0].cache.vry: unknown key"},
    {CROUTE "      vary: [X-Tenant-ID, \"X Tenant\"]\n",
     "t.yaml:8: routes[0].cache.vary[1]: \"X Tenant\" is not a header name"},
    {CROUTE "      vary: \"Accept:\"\n",
     "t.yaml:8: routes[0].cache.vary: \"Accept:\" is not a header name"},
    {CROUTE "      vary: [a, b, c, d, e, f, g, h, i]\n",
     "t.yaml:8: routes[0].cache.vary: 9 headers; a route's cache varies on at most 8"},
    {CROUTE "      vary: [X-Tenant-ID, Accept, x-tenant-id]\n",
     "t.yaml:8: routes[0].cache.vary[2]: \"x-tenant-id\" is listed twice (header names are "
     "case-insensitive)"},
    {CROUTE "      vary: []\n", "t.yaml:8: routes[0].cache.vary: the list is empty"},
    {CROUTE "      vary: [[a]]\n",
     "t.yaml:8: routes[0].cache.vary[0]: expected a header name, got a list"},
    {CROUTE "      set_cookie: 1\n",
     "t.yaml:8: routes[0].cache.set_cookie: \"1\" is not true or false"},
    {CROUTE "      client_cache_control:\n",
     "t.yaml:8: routes[0].cache.client_cache_control: has no value (expected true or false)"},
    {CROUTE "      ttl: 1m\n      ttl: 2m\n",
     "t.yaml:9: routes[0].cache.ttl: duplicate key (first at line 8)"},
    {BASE "routes:\n  - pool: app\n    cache: maybe\n",
     "t.yaml:7: routes[0].cache: \"maybe\" is not true or false"},
    {BASE "routes:\n  - pool: app\n    cache: [ttl]\n",
     "t.yaml:7: routes[0].cache: expected true, false or a map, got a list"},
    {BASE "routes:\n  - pool: app\n    cache:\n",
     "t.yaml:7: routes[0].cache: has no value (expected true, false or a map)"},
};

static void test_cache_errors(void **state) {
    (void)state;
    size_t failed = 0;
    for (size_t i = 0; i < N(cache_error_cases); i++)
        failed += !check_errors(cache_error_cases[i].yaml, &cache_error_cases[i].want, 1);
    assert_int_equal(failed, 0);
}

/* A route's name: its metrics label; checked and unique. */
static void test_route_name(void **state) {
    (void)state;
    struct sg_config *c = load_ok(BASE "routes:\n"
                                       "  - match: { path_prefix: /api/ }\n"
                                       "    pool: app\n"
                                       "    name: api:v1/public\n"
                                       "  - pool: app\n");
    assert_string_equal(c->routes[0].name, "api:v1/public");
    assert_null(c->routes[1].name);
    sg_config_unref(c);
    static const char *const bad[] = {"t.yaml:7: routes[0].name: \"a b\" is not a route name (1 "
                                      "to 64 letters, digits and _ - . : /)"};
    expect_errors(BASE "routes:\n  - pool: app\n    name: a b\n", bad, 1);
    static const char *const twice[] = {"t.yaml:9: routes[1].name: \"x\" is also the name of "
                                        "routes[0]"};
    expect_errors(BASE "routes:\n  - pool: app\n    name: x\n  - pool: app\n    name: x\n",
                  twice, 1);
}

/* Several mistakes in one route's cache: each reported once, in line order. */
static void test_cache_errors_collected(void **state) {
    (void)state;
    static const char yaml[] = BASE "cache: { memory: 1MB, max_object_size: 1MB }\n" /* 5 */
                                    "routes:\n"                                      /* 6 */
                                    "  - pool: app\n"                                /* 7 */
                                    "    cache:\n"                                   /* 8 */
                                    "      ttl: soon\n"                              /* 9 */
                                    "      vary: [A, a, \"b c\"]\n"                  /* 10 */
                                    "      authorization: sometimes\n"               /* 11 */
                                    "      purge: true\n";                           /* 12 */
    static const char *const want[] = {
        "t.yaml:5: cache.max_object_size: max_object_size (1m) does not fit the memory tier: at "
        "most 14k with this memory (7/8 of one of its 64 shards)",
        "t.yaml:9: routes[0].cache.ttl: \"soon\" is not a duration",
        "t.yaml:10: routes[0].cache.vary[1]: \"a\" is listed twice (header names are "
        "case-insensitive)",
        "t.yaml:10: routes[0].cache.vary[2]: \"b c\" is not a header name",
        "t.yaml:11: routes[0].cache.authorization: \"sometimes\" is not true or false",
        "t.yaml:12: routes[0].cache.purge: unknown key",
    };
    expect_errors(yaml, want, N(want));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_example),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_variants),
        cmocka_unit_test(test_demo_file),
        cmocka_unit_test(test_scale_and_derive),
        cmocka_unit_test(test_rate_limit_rules),
        cmocka_unit_test(test_load_file),
        cmocka_unit_test(test_errors_one_by_one),
        cmocka_unit_test(test_errors_collected),
        cmocka_unit_test(test_errors_capped),
        cmocka_unit_test(test_error_quoting),
        cmocka_unit_test(test_route_matching),
        cmocka_unit_test(test_refcount),
        cmocka_unit_test(test_refcount_threads),
        cmocka_unit_test(test_server_ids_stable),
        cmocka_unit_test(test_pool_example),
        cmocka_unit_test(test_balance_and_hash_keys),
        cmocka_unit_test(test_server_forms),
        cmocka_unit_test(test_balancer_freed),
        cmocka_unit_test(test_pool_errors_collected),
        cmocka_unit_test(test_cache_defaults),
        cmocka_unit_test(test_cache_full),
        cmocka_unit_test(test_cache_bool),
        cmocka_unit_test(test_cache_errors),
        cmocka_unit_test(test_cache_errors_collected),
        cmocka_unit_test(test_route_name),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
