/*
 * The cache's shared tier (src/cache/l2.c) against a real redis-server
 * started on a free loopback port: put then get (a hit with a small age,
 * the age growing), a miss, binary keys and data with NUL bytes, ttl
 * expiry, invalidation by path, prefix and all (older entries become misses
 * and are deleted, entries stored after stay hits, even when stored right
 * behind the invalidation), the records' bounded lifetime, the budget
 * against a socket that never answers (the late answer is dropped), a link
 * that is not connected, a link freed with lookups in flight, and bad
 * input. Every wait is bounded; each test ends with uv_loop_close() == 0.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "cache/l2.h"
#include "core/log.h"
#include "redis/redis.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "redis_server.h" /* redis-server on a free port, the loop harness */

#define PREFIX "sg:l2test:"
#define TTL    60000

/* A link with this file's prefix, connected (2 s at most). */
static struct sg_redis *connect_to(uv_loop_t *loop, uint16_t port) {
    return redis_link(loop, port, PREFIX);
}

/* ---- helpers ---- */

/* One lookup's outcome, copied out of the callback. */
struct got {
    int calls;
    int status;
    char data[4096];
    size_t len;
    uint64_t age;
    uint64_t at;
};

static void on_got(void *arg, int status, const char *data, size_t len, uint64_t age_ms) {
    struct got *g = arg;
    g->calls++;
    g->status = status;
    g->age = age_ms;
    g->at = now_ms();
    g->len = len;
    if (status == 1) {
        assert_non_null(data);
        assert_true(len <= sizeof(g->data));
        memcpy(g->data, data, len);
    } else {
        assert_null(data);
        assert_int_equal(len, 0);
    }
}

/* Looks key up (path "/") and waits (2 s at most) for the answer. */
static struct got get_path(uv_loop_t *loop, struct sg_redis *r, const char *key, size_t klen,
                           const char *path) {
    struct got g;
    memset(&g, 0, sizeof(g));
    assert_int_equal(sg_cache_l2_get(r, key, klen, path, strlen(path), 1000, on_got, &g), 0);
    assert_int_equal(g.calls, 0); /* never from inside the call */
    assert_true(run_until(loop, flag_set, &g.calls, 2000));
    assert_int_equal(g.calls, 1);
    return g;
}

static struct got get(uv_loop_t *loop, struct sg_redis *r, const char *key, const char *path) {
    return get_path(loop, r, key, strlen(key), path);
}

static void put(struct sg_redis *r, const char *key, const char *path, const char *data,
                uint64_t ttl) {
    sg_cache_l2_put(r, key, strlen(key), path, strlen(path), data, strlen(data), ttl);
}

static void assert_hit(struct got g, const char *data) {
    assert_int_equal(g.status, 1);
    assert_int_equal(g.len, strlen(data));
    assert_memory_equal(g.data, data, g.len);
}

static void invalidate(uv_loop_t *loop, struct sg_redis *r, enum sg_cache_inval kind,
                       const char *arg, uint64_t ttl) {
    struct done d = {0};
    assert_int_equal(sg_cache_l2_invalidate(r, kind, arg, arg ? strlen(arg) : 0, ttl, on_done, &d),
                     0);
    assert_int_equal(d.calls, 0);
    assert_true(run_until(loop, flag_set, &d.calls, 2000));
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.err, 0);
}

struct result {
    int done;
    int err;
    enum sg_redis_reply_type type;
    long long integer;
};

static void on_result(void *arg, const struct sg_redis_reply *rep, int err) {
    struct result *res = arg;
    res->done++;
    res->err = err;
    if (rep) {
        res->type = rep->type;
        res->integer = rep->integer;
    }
}

/* A raw command, answered without an error (2 s at most). */
static struct result command(uv_loop_t *loop, struct sg_redis *r, int argc, const char **argv) {
    struct result res;
    memset(&res, 0, sizeof(res));
    assert_int_equal(sg_redis_command_argv(r, argc, argv, NULL, on_result, &res), 0);
    assert_true(run_until(loop, flag_set, &res.done, 2000));
    assert_int_equal(res.err, 0);
    return res;
}

/* A raw command with an integer answer. */
static long long cmd_int(uv_loop_t *loop, struct sg_redis *r, int argc, const char **argv) {
    struct result res = command(loop, r, argc, argv);
    assert_int_equal(res.type, SG_REDIS_REPLY_INTEGER);
    return res.integer;
}

static void flushall(uv_loop_t *loop, struct sg_redis *r) {
    const char *flush[] = {"FLUSHALL"};
    command(loop, r, 1, flush);
}

/* Asserts that Redis key (taken as is) was given a ttl of TTL just now. */
static void assert_fresh_ttl(uv_loop_t *loop, struct sg_redis *r, const char *key) {
    const char *pttl[] = {"PTTL", key};
    assert_in_range(cmd_int(loop, r, 2, pttl), TTL - 2000, TTL);
}

/* ---- tests ---- */

static void test_channel(void **state) {
    (void)state;
    char buf[64];
    assert_int_equal(sg_cache_l2_channel("sg:", buf, sizeof(buf)), 14);
    assert_string_equal(buf, "sg:cache:inval");
    assert_int_equal(sg_cache_l2_channel("", buf, sizeof(buf)), 11);
    assert_string_equal(buf, "cache:inval");
    assert_int_equal(sg_cache_l2_channel(NULL, buf, sizeof(buf)), 11);
    assert_int_equal(sg_cache_l2_channel("sg:", buf, 14), -ENAMETOOLONG);
    assert_int_equal(sg_cache_l2_channel("sg:", buf, 15), 14);
}

static void test_bad_input(void **state) {
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct sg_redis *r = sg_redis_new(&loop, "127.0.0.1", 1, PREFIX);
    assert_non_null(r);
    struct got g = {0};
    assert_int_equal(sg_cache_l2_get(NULL, "k", 1, "/", 1, 10, on_got, &g), -EINVAL);
    assert_int_equal(sg_cache_l2_get(r, "k", 1, "/", 1, 10, NULL, &g), -EINVAL);
    assert_int_equal(sg_cache_l2_get(r, NULL, 1, "/", 1, 10, on_got, &g), -EINVAL);
    assert_int_equal(sg_cache_l2_invalidate(r, (enum sg_cache_inval)'x', "a", 1, TTL, NULL, NULL),
                     -EINVAL);
    assert_int_equal(sg_cache_l2_invalidate(r, SG_CACHE_INVAL_PATH, "a", 1, 0, NULL, NULL),
                     -EINVAL);
    assert_int_equal(sg_cache_l2_invalidate(r, SG_CACHE_INVAL_PATH, NULL, 1, TTL, NULL, NULL),
                     -EINVAL);
    sg_cache_l2_put(r, NULL, 1, "/", 1, "d", 1, TTL); /* ignored */
    sg_cache_l2_put(NULL, "k", 1, "/", 1, "d", 1, TTL);
    sg_redis_free(r);
    finish_loop(&loop);
    assert_int_equal(g.calls, 0);
}

static void test_put_get_miss(void **state) {
    (void)state;
    need_redis();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct sg_redis *r = connect_to(&loop, g_port);
    flushall(&loop, r);
    assert_int_equal(get(&loop, r, "GET|h|/a", "/a").status, 0);
    put(r, "GET|h|/a", "/a", "hello", TTL);
    struct got g = get(&loop, r, "GET|h|/a", "/a");
    assert_hit(g, "hello");
    assert_true(g.age < 100);
    /* another key, and the same key under another path, miss */
    assert_int_equal(get(&loop, r, "GET|h|/b", "/b").status, 0);
    assert_int_equal(get(&loop, r, "GET|h|/a", "/other").status, 0);
    /* the age is Redis' time since storing */
    run_for(&loop, 150);
    g = get(&loop, r, "GET|h|/a", "/a");
    assert_hit(g, "hello");
    assert_in_range(g.age, 140, 400);
    /* a put replaces, and the age starts again */
    put(r, "GET|h|/a", "/a", "world!", TTL);
    g = get(&loop, r, "GET|h|/a", "/a");
    assert_hit(g, "world!");
    assert_true(g.age < 100);
    /* empty data is a hit too */
    put(r, "GET|h|/e", "/e", "", TTL);
    assert_hit(get(&loop, r, "GET|h|/e", "/e"), "");
    sg_redis_free(r);
    finish_loop(&loop);
}

static void test_binary(void **state) {
    (void)state;
    need_redis();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct sg_redis *r = connect_to(&loop, g_port);
    flushall(&loop, r);
    char data[3000];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (char)(i % 7 == 0 ? 0 : (i * 31) & 0xff);
    const char key[] = "GET\0h\0/bin\r\n";
    sg_cache_l2_put(r, key, sizeof(key), "/bin", 4, data, sizeof(data), TTL);
    struct got g = get_path(&loop, r, key, sizeof(key), "/bin");
    assert_int_equal(g.status, 1);
    assert_int_equal(g.len, sizeof(data));
    assert_memory_equal(g.data, data, sizeof(data));
    /* the key up to its first NUL is another key */
    assert_int_equal(get_path(&loop, r, key, 3, "/bin").status, 0);
    /* data that looks like the reply's own framing */
    put(r, "k2", "/", "12:34:", TTL);
    g = get(&loop, r, "k2", "/");
    assert_hit(g, "12:34:");
    sg_redis_free(r);
    finish_loop(&loop);
}

static void test_ttl_expiry(void **state) {
    (void)state;
    need_redis();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct sg_redis *r = connect_to(&loop, g_port);
    put(r, "short", "/s", "x", 150);
    put(r, "long", "/l", "y", TTL);
    assert_hit(get(&loop, r, "short", "/s"), "x");
    run_for(&loop, 300);
    assert_int_equal(get(&loop, r, "short", "/s").status, 0);
    assert_hit(get(&loop, r, "long", "/l"), "y");
    assert_fresh_ttl(&loop, r, PREFIX "cache:e:long");
    sg_redis_free(r);
    finish_loop(&loop);
}

static void test_invalidate_path(void **state) {
    (void)state;
    need_redis();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct sg_redis *r = connect_to(&loop, g_port);
    flushall(&loop, r);
    put(r, "GET|h|/users/7", "/users/7", "seven", TTL);
    put(r, "GET|h|/users/7?full=1", "/users/7", "seven full", TTL);
    put(r, "GET|h|/users/8", "/users/8", "eight", TTL);
    assert_hit(get(&loop, r, "GET|h|/users/7", "/users/7"), "seven");
    invalidate(&loop, r, SG_CACHE_INVAL_PATH, "/users/7", TTL);
    assert_int_equal(get(&loop, r, "GET|h|/users/7", "/users/7").status, 0);
    assert_int_equal(get(&loop, r, "GET|h|/users/7?full=1", "/users/7").status, 0);
    assert_hit(get(&loop, r, "GET|h|/users/8", "/users/8"), "eight");
    /* the entries found invalidated were deleted */
    const char *exists[] = {"EXISTS", PREFIX "cache:e:GET|h|/users/7"};
    assert_int_equal(cmd_int(&loop, r, 2, exists), 0);
    /* an entry stored after is a hit, even right behind the invalidation
     * (same millisecond, most likely: the two scripts run back to back) */
    put(r, "GET|h|/users/7", "/users/7", "seven again", TTL);
    assert_hit(get(&loop, r, "GET|h|/users/7", "/users/7"), "seven again");
    for (int i = 0; i < 20; i++) {
        struct done d = {0};
        assert_int_equal(
            sg_cache_l2_invalidate(r, SG_CACHE_INVAL_PATH, "/users/9", 8, TTL, on_done, &d), 0);
        put(r, "GET|h|/users/9", "/users/9", "nine", TTL);
        struct got g = get(&loop, r, "GET|h|/users/9", "/users/9");
        assert_int_equal(d.calls, 1);
        assert_int_equal(d.err, 0);
        assert_hit(g, "nine");
    }
    /* the stamp is bounded by the ttl */
    assert_fresh_ttl(&loop, r, PREFIX "cache:ip:/users/7");
    sg_redis_free(r);
    finish_loop(&loop);
}

static void test_invalidate_prefix(void **state) {
    (void)state;
    need_redis();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct sg_redis *r = connect_to(&loop, g_port);
    flushall(&loop, r);
    put(r, "GET|h|/api/x", "/api/x", "x", TTL);
    put(r, "GET|h|/api/y", "/api/y", "y", TTL);
    put(r, "GET|h|/apex", "/apex", "apex", TTL);
    put(r, "GET|h|/web/z", "/web/z", "z", TTL);
    invalidate(&loop, r, SG_CACHE_INVAL_PREFIX, "GET|h|/api/", TTL);
    assert_int_equal(get(&loop, r, "GET|h|/api/x", "/api/x").status, 0);
    assert_int_equal(get(&loop, r, "GET|h|/api/y", "/api/y").status, 0);
    assert_hit(get(&loop, r, "GET|h|/apex", "/apex"), "apex");
    assert_hit(get(&loop, r, "GET|h|/web/z", "/web/z"), "z");
    put(r, "GET|h|/api/x", "/api/x", "x2", TTL);
    assert_hit(get(&loop, r, "GET|h|/api/x", "/api/x"), "x2");
    /* a binary prefix */
    const char bkey[] = "B\0key";
    sg_cache_l2_put(r, bkey, sizeof(bkey), "/b", 2, "b", 1, TTL);
    struct done d = {0};
    assert_int_equal(sg_cache_l2_invalidate(r, SG_CACHE_INVAL_PREFIX, "B\0", 2, TTL, on_done, &d),
                     0);
    assert_true(run_until(&loop, flag_set, &d.calls, 2000));
    assert_int_equal(d.err, 0);
    assert_int_equal(get_path(&loop, r, bkey, sizeof(bkey), "/b").status, 0);
    assert_hit(get(&loop, r, "GET|h|/api/x", "/api/x"), "x2");
    const char *hlen[] = {"HLEN", PREFIX "cache:ik"};
    assert_int_equal(cmd_int(&loop, r, 2, hlen), 2);
    assert_fresh_ttl(&loop, r, PREFIX "cache:ik");
    sg_redis_free(r);
    finish_loop(&loop);
}

static void test_invalidate_all(void **state) {
    (void)state;
    need_redis();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct sg_redis *r = connect_to(&loop, g_port);
    flushall(&loop, r);
    put(r, "a", "/a", "A", TTL);
    put(r, "b", "/b", "B", TTL);
    invalidate(&loop, r, SG_CACHE_INVAL_ALL, NULL, TTL);
    assert_int_equal(get(&loop, r, "a", "/a").status, 0);
    assert_int_equal(get(&loop, r, "b", "/b").status, 0);
    put(r, "a", "/a", "A2", TTL);
    assert_hit(get(&loop, r, "a", "/a"), "A2");
    /* no callback asked for: fire and forget */
    assert_int_equal(sg_cache_l2_invalidate(r, SG_CACHE_INVAL_ALL, "ignored", 7, TTL, NULL, NULL),
                     0);
    assert_int_equal(get(&loop, r, "a", "/a").status, 0);
    sg_redis_free(r);
    finish_loop(&loop);
}

static void test_records_bounded(void **state) {
    (void)state;
    need_redis();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct sg_redis *r = connect_to(&loop, g_port);
    flushall(&loop, r);
    invalidate(&loop, r, SG_CACHE_INVAL_PATH, "/p", 200);
    invalidate(&loop, r, SG_CACHE_INVAL_ALL, NULL, 200);
    invalidate(&loop, r, SG_CACHE_INVAL_PREFIX, "old", 200);
    run_for(&loop, 120);
    invalidate(&loop, r, SG_CACHE_INVAL_PREFIX, "mid", 200);
    run_for(&loop, 120);
    /* "old" is past the ttl: the next prefix invalidation drops it */
    invalidate(&loop, r, SG_CACHE_INVAL_PREFIX, "new", 200);
    const char *hexists_old[] = {"HEXISTS", PREFIX "cache:ik", "old"};
    const char *hexists_mid[] = {"HEXISTS", PREFIX "cache:ik", "mid"};
    assert_int_equal(cmd_int(&loop, r, 3, hexists_old), 0);
    assert_int_equal(cmd_int(&loop, r, 3, hexists_mid), 1);
    /* the stamps are gone after their ttl */
    const char *exists[] = {"EXISTS", PREFIX "cache:ip:/p", PREFIX "cache:ia"};
    assert_int_equal(cmd_int(&loop, r, 3, exists), 0);
    run_for(&loop, 250);
    const char *exists_ik[] = {"EXISTS", PREFIX "cache:ik"};
    assert_int_equal(cmd_int(&loop, r, 2, exists_ik), 0);
    sg_redis_free(r);
    finish_loop(&loop);
}

static void test_budget_timeout(void **state) {
    (void)state;
    uint16_t port;
    int lfd = silent_listener(&port);
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct sg_redis *r = connect_to(&loop, port);
    struct got a, b;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    uint64_t t0 = now_ms();
    assert_int_equal(sg_cache_l2_get(r, "k", 1, "/", 1, 50, on_got, &a), 0);
    assert_int_equal(sg_cache_l2_get(r, "k", 1, "/", 1, 0, on_got, &b), 0); /* no own budget */
    assert_true(run_until(&loop, flag_set, &a.calls, 1000));
    assert_int_equal(a.status, -ETIMEDOUT);
    assert_in_range(a.at - t0, 45, 200);
    /* the link's command timeout then fails both commands: b hears it, a's
     * late answer is dropped */
    assert_true(run_until(&loop, flag_set, &b.calls, 2000));
    assert_int_equal(b.status, -ETIMEDOUT);
    assert_in_range(b.at - t0, 900, 1600);
    run_for(&loop, 50);
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 1);
    /* one whose answer never comes, outstanding when the link is freed */
    struct got c;
    memset(&c, 0, sizeof(c));
    assert_true(run_until(&loop, is_connected, r, 1000));
    assert_int_equal(sg_cache_l2_get(r, "k", 1, "/", 1, 20, on_got, &c), 0);
    assert_true(run_until(&loop, flag_set, &c.calls, 1000));
    assert_int_equal(c.status, -ETIMEDOUT);
    sg_redis_free(r);
    finish_loop(&loop);
    assert_int_equal(c.calls, 1);
    close(lfd);
}

static void test_not_connected(void **state) {
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct sg_redis *r = sg_redis_new(&loop, "127.0.0.1", free_port(), PREFIX);
    assert_non_null(r);
    run_for(&loop, 50);
    assert_false(sg_redis_connected(r));
    struct got g;
    memset(&g, 0, sizeof(g));
    uint64_t t0 = now_ms();
    assert_int_equal(sg_cache_l2_get(r, "k", 1, "/", 1, 500, on_got, &g), 0);
    assert_int_equal(g.calls, 0);
    assert_true(run_until(&loop, flag_set, &g.calls, 1000));
    assert_int_equal(g.status, -ENOTCONN);
    assert_true(g.at - t0 < 100);
    struct done d = {0};
    assert_int_equal(sg_cache_l2_invalidate(r, SG_CACHE_INVAL_PATH, "/x", 2, TTL, on_done, &d), 0);
    assert_int_equal(d.calls, 0);
    assert_true(run_until(&loop, flag_set, &d.calls, 1000));
    assert_int_equal(d.err, -ENOTCONN);
    sg_cache_l2_put(r, "k", 1, "/", 1, "d", 1, TTL); /* dropped silently */
    run_for(&loop, 20);
    sg_redis_free(r);
    finish_loop(&loop);
    assert_int_equal(g.calls, 1);
}

static void test_free_link_with_gets(void **state) {
    (void)state;
    need_redis();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct sg_redis *r = connect_to(&loop, g_port);
    struct got a, b;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    assert_int_equal(sg_cache_l2_get(r, "k", 1, "/", 1, 1000, on_got, &a), 0);
    assert_int_equal(sg_cache_l2_get(r, "k", 1, "/", 1, 0, on_got, &b), 0);
    sg_redis_free(r);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.status, -ECANCELED);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.status, -ECANCELED);
    /* after the free, nothing more is accepted */
    finish_loop(&loop);
    assert_int_equal(a.calls, 1);
}

static void test_large_key_and_path(void **state) {
    (void)state;
    need_redis();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct sg_redis *r = connect_to(&loop, g_port);
    /* keys built off the stack */
    static char key[3000], path[2000];
    memset(key, 'k', sizeof(key) - 1);
    memset(path, 'p', sizeof(path) - 1);
    path[0] = '/';
    put(r, key, path, "big", TTL);
    assert_hit(get(&loop, r, key, path), "big");
    invalidate(&loop, r, SG_CACHE_INVAL_PATH, path, TTL);
    assert_int_equal(get(&loop, r, key, path).status, 0);
    sg_redis_free(r);
    finish_loop(&loop);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_channel),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_put_get_miss),
        cmocka_unit_test(test_binary),
        cmocka_unit_test(test_ttl_expiry),
        cmocka_unit_test(test_invalidate_path),
        cmocka_unit_test(test_invalidate_prefix),
        cmocka_unit_test(test_invalidate_all),
        cmocka_unit_test(test_records_bounded),
        cmocka_unit_test(test_budget_timeout),
        cmocka_unit_test(test_not_connected),
        cmocka_unit_test(test_free_link_with_gets),
        cmocka_unit_test(test_large_key_and_path),
    };
    sg_log_level = SG_LOG_ERROR;
    return cmocka_run_group_tests(tests, redis_group_setup, redis_group_teardown);
}
