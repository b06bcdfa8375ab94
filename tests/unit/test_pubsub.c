/*
 * The Redis subscriber (src/redis/pubsub.c) against a real redis-server
 * started on a free loopback port: the invalidations that
 * sg_cache_l2_invalidate publishes arrive with their exact bytes; the
 * subscriber survives a redis-server restart on the same port (on_state
 * reports the loss at once and the recovery, and messages flow again);
 * a server that accepts but never confirms the subscription; no server at
 * all; freeing from inside on_message and on_state; and bad input. Every
 * wait is bounded; each test ends with uv_loop_close() == 0.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "cache/l2.h"
#include "core/log.h"
#include "redis/pubsub.h"
#include "redis/redis.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "redis_server.h" /* redis-server on a free port, the loop harness */

#define PREFIX "sg:pstest:"
#define CHAN   PREFIX "cache:inval"
#define TTL    60000

/* A link with this file's prefix, connected (2 s at most). */
static struct sg_redis *connect_to(uv_loop_t *loop, uint16_t port) {
    return redis_link(loop, port, PREFIX);
}

/* ---- a subscriber's record ---- */

#define MAX_MSGS 16

struct rec {
    struct sg_redis_sub *s;
    int nmsg;
    char msg[MAX_MSGS][256];
    size_t len[MAX_MSGS];
    int ups, downs;
    bool up; /* as on_state last said */
    uint64_t changed_at;
    bool free_on_message; /* sg_redis_sub_free from on_message */
    bool free_on_up;      /* sg_redis_sub_free from on_state(true) */
    bool free_on_down;    /* sg_redis_sub_free from on_state(false) */
    bool freed;
};

static void on_message(void *arg, const char *data, size_t len) {
    struct rec *c = arg;
    assert_false(c->freed); /* no callback after free */
    if (c->nmsg < MAX_MSGS) {
        assert_true(len <= sizeof(c->msg[0]));
        memcpy(c->msg[c->nmsg], data, len);
        c->len[c->nmsg] = len;
    }
    c->nmsg++;
    if (c->free_on_message) {
        sg_redis_sub_free(c->s);
        c->freed = true;
    }
}

static void on_state(void *arg, bool connected) {
    struct rec *c = arg;
    assert_false(c->freed);
    assert_true(connected != c->up); /* alternately, starting with true */
    c->up = connected;
    c->changed_at = now_ms();
    if (connected)
        c->ups++;
    else
        c->downs++;
    if (connected ? c->free_on_up : c->free_on_down) {
        sg_redis_sub_free(c->s);
        c->freed = true;
    }
}

static void sub_start(uv_loop_t *loop, struct rec *c, uint16_t port) {
    memset(c, 0, sizeof(*c));
    c->s = sg_redis_sub_new(loop, "127.0.0.1", port, CHAN, on_message, on_state, c);
    assert_non_null(c->s);
}

static bool sub_up(void *arg) {
    struct rec *c = arg;
    return c->up && sg_redis_sub_connected(c->s);
}

/* sub_start, then waits (2 s at most) until the subscription is active. */
static void sub_connect(uv_loop_t *loop, struct rec *c, uint16_t port) {
    sub_start(loop, c, port);
    assert_true(run_until(loop, sub_up, c, 2000));
}

static bool sub_down(void *arg) {
    struct rec *c = arg;
    return !c->up && !sg_redis_sub_connected(c->s);
}

struct want {
    struct rec *c;
    int n;
};

static bool has_msgs(void *arg) {
    struct want *w = arg;
    return w->c->nmsg >= w->n;
}

static void wait_msgs(uv_loop_t *loop, struct rec *c, int n) {
    struct want w = {c, n};
    assert_true(run_until(loop, has_msgs, &w, 2000));
}

static void assert_msg(const struct rec *c, int i, const char *data, size_t len) {
    assert_true(i < c->nmsg);
    assert_int_equal(c->len[i], len);
    assert_memory_equal(c->msg[i], data, len);
}

static void invalidate(uv_loop_t *loop, struct sg_redis *r, enum sg_cache_inval kind,
                       const char *arg, size_t len) {
    struct done d = {0};
    assert_int_equal(sg_cache_l2_invalidate(r, kind, arg, len, TTL, on_done, &d), 0);
    assert_true(run_until(loop, flag_set, &d.calls, 2000));
    assert_int_equal(d.err, 0);
}

/* ---- tests ---- */

static void test_bad_input(void **state) {
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct rec c = {0};
    assert_null(sg_redis_sub_new(NULL, "127.0.0.1", 1, CHAN, on_message, NULL, &c));
    assert_null(sg_redis_sub_new(&loop, "", 1, CHAN, on_message, NULL, &c));
    assert_null(sg_redis_sub_new(&loop, NULL, 1, CHAN, on_message, NULL, &c));
    assert_null(sg_redis_sub_new(&loop, "127.0.0.1", 0, CHAN, on_message, NULL, &c));
    assert_null(sg_redis_sub_new(&loop, "127.0.0.1", 1, "", on_message, NULL, &c));
    assert_null(sg_redis_sub_new(&loop, "127.0.0.1", 1, NULL, on_message, NULL, &c));
    assert_null(sg_redis_sub_new(&loop, "127.0.0.1", 1, CHAN, NULL, NULL, &c));
    assert_false(sg_redis_sub_connected(NULL));
    sg_redis_sub_free(NULL);
    /* freed at once, before it even tried */
    struct sg_redis_sub *s = sg_redis_sub_new(&loop, "127.0.0.1", 1, CHAN, on_message, NULL, &c);
    assert_non_null(s);
    assert_false(sg_redis_sub_connected(s));
    sg_redis_sub_free(s);
    /* freed while a name is being resolved */
    s = sg_redis_sub_new(&loop, "localhost", 1, CHAN, on_message, NULL, &c);
    assert_non_null(s);
    uv_run(&loop, UV_RUN_NOWAIT);
    sg_redis_sub_free(s);
    finish_loop(&loop);
}

static void test_invalidations_arrive(void **state) {
    (void)state;
    need_redis();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct rec c;
    sub_connect(&loop, &c, g_port);
    assert_int_equal(c.ups, 1);
    struct sg_redis *r = connect_to(&loop, g_port);
    char chan[64];
    assert_int_equal(sg_cache_l2_channel(sg_redis_prefix(r), chan, sizeof(chan)),
                     (int)strlen(CHAN));
    assert_string_equal(chan, CHAN);
    invalidate(&loop, r, SG_CACHE_INVAL_PATH, "/users/7", 8);
    wait_msgs(&loop, &c, 1);
    assert_msg(&c, 0, "p/users/7", 9);
    invalidate(&loop, r, SG_CACHE_INVAL_PREFIX, "GET|h|/api/", 11);
    invalidate(&loop, r, SG_CACHE_INVAL_ALL, NULL, 0);
    /* binary: NUL, CR LF, high bytes */
    const char bin[] = {'/', 'a', '\0', 'b', '\r', '\n', (char)0xff, '\0'};
    invalidate(&loop, r, SG_CACHE_INVAL_PATH, bin, sizeof(bin));
    wait_msgs(&loop, &c, 4);
    assert_msg(&c, 1, "kGET|h|/api/", 12);
    assert_msg(&c, 2, "a", 1);
    char want[1 + sizeof(bin)];
    want[0] = 'p';
    memcpy(want + 1, bin, sizeof(bin));
    assert_msg(&c, 3, want, sizeof(want));
    /* other channels are not heard */
    const char *pub[] = {"PUBLISH", PREFIX "other", "x"};
    assert_int_equal(sg_redis_command_argv(r, 3, pub, NULL, NULL, NULL), 0);
    run_for(&loop, 100);
    assert_int_equal(c.nmsg, 4);
    /* two subscribers on one channel both hear */
    struct rec c2;
    sub_connect(&loop, &c2, g_port);
    invalidate(&loop, r, SG_CACHE_INVAL_ALL, NULL, 0);
    wait_msgs(&loop, &c, 5);
    wait_msgs(&loop, &c2, 1);
    assert_msg(&c2, 0, "a", 1);
    assert_int_equal(c.downs, 0);
    sg_redis_sub_free(c.s);
    sg_redis_sub_free(c2.s);
    sg_redis_free(r);
    finish_loop(&loop);
    assert_int_equal(c.downs, 0); /* no callback on free */
}

static void test_restart(void **state) {
    (void)state;
    need_redis();
    uint16_t port = free_port();
    pid_t pid = redis_start(port);
    assert_true(pid > 0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct rec c;
    sub_connect(&loop, &c, port);
    struct sg_redis *r = connect_to(&loop, port);
    invalidate(&loop, r, SG_CACHE_INVAL_PATH, "/before", 7);
    wait_msgs(&loop, &c, 1);
    assert_msg(&c, 0, "p/before", 8);

    /* the server dies: the loss is seen at once (EOF), not by a timeout */
    uint64_t t0 = now_ms();
    redis_kill(pid);
    assert_true(run_until(&loop, sub_down, &c, 1000));
    assert_true(c.changed_at - t0 < 300);
    assert_int_equal(c.downs, 1);
    run_for(&loop, 400); /* a few refused reconnects: no more on_state */
    assert_int_equal(c.downs, 1);
    assert_int_equal(c.ups, 1);

    pid = redis_start(port);
    assert_true(pid > 0);
    assert_true(run_until(&loop, sub_up, &c, 6000));
    assert_int_equal(c.ups, 2);
    assert_true(run_until(&loop, is_connected, r, 6000));
    invalidate(&loop, r, SG_CACHE_INVAL_PREFIX, "after", 5);
    wait_msgs(&loop, &c, 2);
    assert_msg(&c, 1, "kafter", 6);

    /* a second loss and recovery behave the same */
    redis_kill(pid);
    assert_true(run_until(&loop, sub_down, &c, 1000));
    pid = redis_start(port);
    assert_true(pid > 0);
    assert_true(run_until(&loop, sub_up, &c, 6000));
    assert_int_equal(c.ups, 3);
    assert_int_equal(c.downs, 2);
    assert_true(run_until(&loop, is_connected, r, 6000));
    invalidate(&loop, r, SG_CACHE_INVAL_ALL, NULL, 0);
    wait_msgs(&loop, &c, 3);
    assert_msg(&c, 2, "a", 1);

    sg_redis_sub_free(c.s);
    sg_redis_free(r);
    finish_loop(&loop);
    redis_kill(pid);
}

static void test_appears_later(void **state) {
    (void)state;
    need_redis();
    uint16_t port = free_port();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct rec c;
    sub_start(&loop, &c, port);
    run_for(&loop, 250);
    assert_false(sg_redis_sub_connected(c.s));
    assert_int_equal(c.ups + c.downs, 0); /* never active: nothing to say */
    pid_t pid = redis_start(port);
    assert_true(pid > 0);
    /* refused connects are seen at once: retries at 100, 200, 400, 800 ms */
    assert_true(run_until(&loop, sub_up, &c, 2000));
    sg_redis_sub_free(c.s);
    finish_loop(&loop);
    redis_kill(pid);
}

static void test_never_confirmed(void **state) {
    (void)state;
    uint16_t port;
    int lfd = silent_listener(&port);
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct rec c;
    sub_start(&loop, &c, port);
    run_for(&loop, 1300); /* the SUBSCRIBE goes unanswered: dropped after 1 s, retried */
    assert_false(sg_redis_sub_connected(c.s));
    assert_int_equal(c.ups + c.downs, 0);
    sg_redis_sub_free(c.s);
    finish_loop(&loop);
    close(lfd);
}

static void test_free_from_callbacks(void **state) {
    (void)state;
    need_redis();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct sg_redis *r = connect_to(&loop, g_port);
    /* from on_message, with more messages behind it in the same read */
    struct rec c;
    sub_connect(&loop, &c, g_port);
    c.free_on_message = true;
    for (int i = 0; i < 5; i++)
        assert_int_equal(sg_cache_l2_invalidate(r, SG_CACHE_INVAL_PATH, "/x", 2, TTL, NULL, NULL),
                         0);
    run_for(&loop, 200);
    assert_true(c.freed);
    assert_int_equal(c.nmsg, 1);
    /* from on_state(true) */
    struct rec d;
    sub_start(&loop, &d, g_port);
    d.free_on_up = true;
    assert_true(run_until(&loop, flag_set, &d.ups, 2000));
    assert_true(d.freed);
    invalidate(&loop, r, SG_CACHE_INVAL_ALL, NULL, 0);
    run_for(&loop, 100);
    assert_int_equal(d.nmsg, 0);
    sg_redis_free(r);
    finish_loop(&loop);
}

/* freed from on_state(false), and while idle between retries */
static void test_free_from_lost(void **state) {
    (void)state;
    need_redis();
    uint16_t port = free_port();
    pid_t pid = redis_start(port);
    assert_true(pid > 0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct rec c;
    sub_connect(&loop, &c, port);
    struct rec d;
    sub_connect(&loop, &d, port);
    d.free_on_down = true;
    redis_kill(pid);
    assert_true(run_until(&loop, sub_down, &c, 1000));
    assert_true(run_until(&loop, flag_set, &d.downs, 1000));
    assert_true(d.freed);
    /* freed while idle between retries */
    sg_redis_sub_free(c.s);
    c.freed = true;
    finish_loop(&loop);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_input),       cmocka_unit_test(test_invalidations_arrive),
        cmocka_unit_test(test_restart),         cmocka_unit_test(test_appears_later),
        cmocka_unit_test(test_never_confirmed), cmocka_unit_test(test_free_from_callbacks),
        cmocka_unit_test(test_free_from_lost),
    };
    sg_log_level = SG_LOG_ERROR;
    return cmocka_run_group_tests(tests, redis_group_setup, redis_group_teardown);
}
