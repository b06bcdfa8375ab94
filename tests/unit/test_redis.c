/*
 * The Redis link and leader leases (src/redis/redis.c) against a real
 * redis-server started on a free loopback port: commands and LLEN, failures
 * while disconnected, EVAL sent as EVALSHA (and SHA-1 itself), the command timeout (against a
 * socket that never answers), freeing with commands in flight, and leases between simulated
 * gateways (one link each): one leader, take-over after a leader dies, a
 * prompt release, stepping down when the key is lost, and a Redis restart.
 * A sampler checks at every loop turn that two gateways never both believe
 * they lead. Every wait is bounded, and each test ends with
 * uv_loop_close() == 0.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/log.h"
#include "core/sha1.h"
#include "redis/redis.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "redis_server.h" /* redis-server on a free port, the loop harness */

#define TTL 600

/* A link with this file's prefix, connected (2 s at most). */
static struct sg_redis *connect_to(uv_loop_t *loop, uint16_t port) {
    return redis_link(loop, port, "sg:test:");
}

/* One command's outcome, copied out of the callback. */
struct result {
    int done;
    int err;
    bool has_reply;
    enum sg_redis_reply_type type;
    long long integer;
    char str[256];
    uint64_t at;
};

static void on_result(void *arg, const struct sg_redis_reply *rep, int err) {
    struct result *res = arg;
    res->done++;
    res->err = err;
    res->at = now_ms();
    res->has_reply = rep != NULL;
    if (rep) {
        res->type = rep->type;
        res->integer = rep->integer;
        snprintf(res->str, sizeof(res->str), "%s", rep->str ? rep->str : "");
    }
}

static void on_len(void *arg, long long len, int err) {
    struct result *res = arg;
    res->done++;
    res->err = err;
    res->integer = len;
    res->at = now_ms();
}

/* Sends a command and waits (2 s at most) for its callback. */
static struct result cmd(uv_loop_t *loop, struct sg_redis *r, int argc, const char **argv) {
    struct result res;
    memset(&res, 0, sizeof(res));
    assert_int_equal(sg_redis_command_argv(r, argc, argv, NULL, on_result, &res), 0);
    assert_int_equal(res.done, 0); /* never called from inside the call */
    assert_true(run_until(loop, flag_set, &res.done, 2000));
    assert_int_equal(res.done, 1);
    return res;
}

static struct result llen(uv_loop_t *loop, struct sg_redis *r, const char *key) {
    struct result res;
    memset(&res, 0, sizeof(res));
    assert_int_equal(sg_redis_llen(r, key, on_len, &res), 0);
    assert_int_equal(res.done, 0);
    assert_true(run_until(loop, flag_set, &res.done, 2000));
    assert_int_equal(res.done, 1);
    return res;
}

/* ---- link tests ---- */

static void test_parse_url(void **state) {
    (void)state;
    static const struct {
        const char *url;
        int rc;
        const char *host;
        uint16_t port;
    } cases[] = {
        {"redis://127.0.0.1:6380", 0, "127.0.0.1", 6380},
        {"REDIS://cache.internal:7000/", 0, "cache.internal", 7000},
        {"redis://localhost/0", 0, "localhost", 6379},
        {"127.0.0.1:1", 0, "127.0.0.1", 1},
        {"redis-1.example_net", 0, "redis-1.example_net", 6379},
        {"[::1]:6390", 0, "::1", 6390},
        {"redis://[fe80::1]", 0, "fe80::1", 6379},
        {"::1", 0, "::1", 6379},
        {"", -EINVAL, NULL, 0},
        {"redis://", -EINVAL, NULL, 0},
        {"redis://:6379", -EINVAL, NULL, 0},
        {"host:", -EINVAL, NULL, 0},
        {"host:0", -EINVAL, NULL, 0},
        {"host:65536", -EINVAL, NULL, 0},
        {"host:123456", -EINVAL, NULL, 0},
        {"host:12a", -EINVAL, NULL, 0},
        {"host:+12", -EINVAL, NULL, 0},
        {"host/1", -EINVAL, NULL, 0},
        {"redis://user:pw@host:6379", -EINVAL, NULL, 0},
        {"rediss://host:6379", -EINVAL, NULL, 0},
        {"ho st:6379", -EINVAL, NULL, 0},
        {"[::1", -EINVAL, NULL, 0},
        {"[::1]x", -EINVAL, NULL, 0},
        {"[not-v6]:6379", -EINVAL, NULL, 0},
        {"[]:6379", -EINVAL, NULL, 0},
        {"1:2:3", -EINVAL, NULL, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char host[64] = "untouched";
        uint16_t port = 1234;
        int rc = sg_redis_parse_url(cases[i].url, host, sizeof(host), &port);
        if (rc != cases[i].rc)
            fail_msg("%s: rc %d, want %d", cases[i].url, rc, cases[i].rc);
        if (rc == 0) {
            assert_string_equal(host, cases[i].host);
            assert_int_equal(port, cases[i].port);
        } else {
            assert_string_equal(host, "untouched");
            assert_int_equal(port, 1234);
        }
    }
    char small[4];
    uint16_t port;
    assert_int_equal(sg_redis_parse_url("localhost:1", small, sizeof(small), &port), -ENAMETOOLONG);
    assert_int_equal(sg_redis_parse_url(NULL, small, sizeof(small), &port), -EINVAL);
}

static void test_new_and_node_id(void **state) {
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    assert_null(sg_redis_new(&loop, "", 6379, NULL));
    assert_null(sg_redis_new(&loop, NULL, 6379, NULL));
    assert_null(sg_redis_new(&loop, "127.0.0.1", 0, NULL));
    struct sg_redis *a = sg_redis_new(&loop, "127.0.0.1", 1, NULL);
    struct sg_redis *b = sg_redis_new(&loop, "127.0.0.1", 1, "p:");
    assert_non_null(a);
    assert_non_null(b);
    assert_false(sg_redis_connected(a));
    assert_string_equal(sg_redis_prefix(a), "");
    assert_string_equal(sg_redis_prefix(b), "p:");
    /* hostname:pid:16 hex digits, different per link */
    char host[256], want[300];
    assert_int_equal(gethostname(host, sizeof(host)), 0);
    snprintf(want, sizeof(want), "%s:%d:", host, (int)getpid());
    const char *id = sg_redis_node_id(a);
    assert_int_equal(strncmp(id, want, strlen(want)), 0);
    const char *hex = id + strlen(want);
    assert_int_equal(strlen(hex), 16);
    assert_int_equal(strspn(hex, "0123456789abcdef"), 16);
    assert_string_not_equal(id, sg_redis_node_id(b));
    assert_null(sg_lease_new(a, "", TTL, NULL, NULL));
    assert_null(sg_lease_new(a, "x", 99, NULL, NULL));
    assert_null(sg_lease_new(NULL, "x", TTL, NULL, NULL));
    sg_redis_free(a);
    sg_redis_free(b);
    finish_loop(&loop);
}

static void test_commands_and_llen(void **state) {
    (void)state;
    need_redis();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct sg_redis *r = connect_to(&loop, g_port);

    const char *del[] = {"DEL", "sg-test-queue", "sg-test-str"};
    assert_int_equal(cmd(&loop, r, 3, del).err, 0);
    const char *push[] = {"RPUSH", "sg-test-queue", "a", "b", "c"};
    struct result res = cmd(&loop, r, 5, push);
    assert_int_equal(res.err, 0);
    assert_int_equal(res.type, SG_REDIS_REPLY_INTEGER);
    assert_int_equal(res.integer, 3);

    /* the key is the user's, taken as is: no prefix */
    res = llen(&loop, r, "sg-test-queue");
    assert_int_equal(res.err, 0);
    assert_int_equal(res.integer, 3);
    res = llen(&loop, r, "sg-test-missing");
    assert_int_equal(res.err, 0);
    assert_int_equal(res.integer, 0);

    const char *set[] = {"SET", "sg-test-str", "hello"};
    res = cmd(&loop, r, 3, set);
    assert_int_equal(res.type, SG_REDIS_REPLY_STATUS);
    assert_string_equal(res.str, "OK");
    const char *get[] = {"GET", "sg-test-str"};
    res = cmd(&loop, r, 2, get);
    assert_int_equal(res.type, SG_REDIS_REPLY_STRING);
    assert_string_equal(res.str, "hello");
    const char *getnil[] = {"GET", "sg-test-missing"};
    assert_int_equal(cmd(&loop, r, 2, getnil).type, SG_REDIS_REPLY_NIL);
    const char *lrange[] = {"LRANGE", "sg-test-queue", "0", "-1"};
    res = cmd(&loop, r, 4, lrange);
    assert_int_equal(res.type, SG_REDIS_REPLY_ARRAY);
    assert_int_equal(res.integer, 3);

    /* errors from Redis */
    res = llen(&loop, r, "sg-test-str");
    assert_int_equal(res.err, -EREMOTEIO);
    const char *bogus[] = {"NOSUCHCOMMAND"};
    res = cmd(&loop, r, 1, bogus);
    assert_int_equal(res.err, -EREMOTEIO);
    assert_true(res.has_reply);
    assert_int_equal(res.type, SG_REDIS_REPLY_ERROR);
    assert_non_null(strstr(res.str, "unknown command"));
    /* bad arguments: no callback comes */
    const char *echo[] = {"ECHO", "x"};
    assert_int_equal(sg_redis_command_argv(r, 0, echo, NULL, on_result, NULL), -EINVAL);
    assert_int_equal(sg_redis_llen(r, NULL, on_len, NULL), -EINVAL);

    /* binary-safe arguments with explicit lengths */
    const char *bin[] = {"SET", "sg-test-str", "a\0b"};
    size_t lens[] = {3, 11, 3};
    struct result bres;
    memset(&bres, 0, sizeof(bres));
    assert_int_equal(sg_redis_command_argv(r, 3, bin, lens, on_result, &bres), 0);
    assert_true(run_until(&loop, flag_set, &bres.done, 2000));
    const char *strlen_cmd[] = {"STRLEN", "sg-test-str"};
    assert_int_equal(cmd(&loop, r, 2, strlen_cmd).integer, 3);

    /* fire and forget: no callback, and the command still runs */
    const char *incr[] = {"INCR", "sg-test-counter"};
    const char *delc[] = {"DEL", "sg-test-counter"};
    cmd(&loop, r, 2, delc);
    assert_int_equal(sg_redis_command_argv(r, 2, incr, NULL, NULL, NULL), 0);
    const char *getc[] = {"GET", "sg-test-counter"};
    assert_string_equal(cmd(&loop, r, 2, getc).str, "1");

    /* a bounded number of commands await replies; beyond, they fail */
    static struct result many[SG_REDIS_MAX_INFLIGHT + 1];
    memset(many, 0, sizeof(many));
    const char *ping[] = {"PING"};
    for (int i = 0; i <= SG_REDIS_MAX_INFLIGHT; i++)
        assert_int_equal(sg_redis_command_argv(r, 1, ping, NULL, on_result, &many[i]), 0);
    assert_true(run_until(&loop, flag_set, &many[SG_REDIS_MAX_INFLIGHT - 1].done, 2000));
    for (int i = 0; i < SG_REDIS_MAX_INFLIGHT; i++) {
        assert_int_equal(many[i].done, 1);
        assert_int_equal(many[i].err, 0);
        assert_string_equal(many[i].str, "PONG");
    }
    assert_int_equal(many[SG_REDIS_MAX_INFLIGHT].done, 1);
    assert_int_equal(many[SG_REDIS_MAX_INFLIGHT].err, -ENOBUFS);

    cmd(&loop, r, 3, del);
    sg_redis_free(r);

    /* a host name is resolved off the loop (IPv4 first) */
    struct sg_redis *named = sg_redis_new(&loop, "localhost", g_port, NULL);
    assert_non_null(named);
    assert_true(run_until(&loop, is_connected, named, 2000));
    assert_int_equal(llen(&loop, named, "sg-test-missing").err, 0);
    sg_redis_free(named);
    finish_loop(&loop);
}

static void test_sha1_vectors(void **state) {
    (void)state;
    char hex[SG_SHA1_HEX_LEN + 1];
    sg_sha1_hex("", 0, hex);
    assert_string_equal(hex, "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    sg_sha1_hex("abc", 3, hex);
    assert_string_equal(hex, "a9993e364706816aba3e25717850c26c9cd0d89d");
    /* 56 bytes: the length no longer fits the last block */
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    sg_sha1_hex(two, strlen(two), hex);
    assert_string_equal(hex, "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
    static char million[1000000];
    memset(million, 'a', sizeof(million));
    sg_sha1_hex(million, sizeof(million), hex);
    assert_string_equal(hex, "34aa973cd4c4daa4f61eeb2bdbad27316534016f");
}

/* The second EVAL of a body goes out as EVALSHA: after SCRIPT FLUSH it
 * meets NOSCRIPT (and fails like any Redis error), and the one after that
 * sends the body again. The digest is the one Redis computes. */
static void test_eval_sent_as_evalsha(void **state) {
    (void)state;
    need_redis();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct sg_redis *r = connect_to(&loop, g_port);
    char body[64]; /* not static: the link keeps its own copy */
    snprintf(body, sizeof(body), "return 'v' .. ARGV[1]");
    const char *eval1[] = {"EVAL", body, "0", "1"};
    struct result res = cmd(&loop, r, 4, eval1);
    assert_int_equal(res.err, 0);
    assert_string_equal(res.str, "v1");

    char hex[SG_SHA1_HEX_LEN + 1];
    sg_sha1_hex(body, strlen(body), hex);
    const char *exists[] = {"SCRIPT", "EXISTS", hex};
    assert_int_equal(cmd(&loop, r, 3, exists).type, SG_REDIS_REPLY_ARRAY);
    const char *evalsha[] = {"EVALSHA", hex, "0", "2"};
    res = cmd(&loop, r, 4, evalsha); /* Redis knows the script by our digest */
    assert_int_equal(res.err, 0);
    assert_string_equal(res.str, "v2");

    const char *flush[] = {"SCRIPT", "FLUSH"};
    assert_int_equal(cmd(&loop, r, 2, flush).err, 0);
    const char *eval3[] = {"EVAL", body, "0", "3"};
    res = cmd(&loop, r, 4, eval3);
    assert_int_equal(res.err, -EREMOTEIO);
    assert_non_null(strstr(res.str, "NOSCRIPT"));
    res = cmd(&loop, r, 4, eval3);
    assert_int_equal(res.err, 0);
    assert_string_equal(res.str, "v3");
    const char *eval4[] = {"EVAL", body, "0", "4"};
    assert_string_equal(cmd(&loop, r, 4, eval4).str, "v4");

    /* a new connection (the server restarted, say) sends the body first */
    assert_int_equal(cmd(&loop, r, 2, flush).err, 0);
    const char *kill[] = {"CLIENT", "KILL", "TYPE", "normal", "SKIPME", "no"};
    cmd(&loop, r, 6, kill);
    res.err = 1;
    /* until the link is back; the first answer from Redis must not be NOSCRIPT */
    for (int i = 0; i < 20 && res.err != 0 && res.err != -EREMOTEIO; i++) {
        assert_true(run_until(&loop, is_connected, r, 3000));
        res = cmd(&loop, r, 4, eval4);
    }
    assert_int_equal(res.err, 0);
    assert_string_equal(res.str, "v4");
    sg_redis_free(r);
    finish_loop(&loop);
}

static void test_disconnected_fails_at_once(void **state) {
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct sg_redis *r = sg_redis_new(&loop, "127.0.0.1", free_port(), NULL);
    assert_non_null(r);
    run_for(&loop, 300); /* a few refused connects */
    assert_false(sg_redis_connected(r));
    uint64_t t0 = now_ms();
    struct result res;
    memset(&res, 0, sizeof(res));
    assert_int_equal(sg_redis_llen(r, "q", on_len, &res), 0);
    assert_int_equal(res.done, 0);
    assert_true(run_until(&loop, flag_set, &res.done, 1000));
    assert_int_equal(res.err, -ENOTCONN);
    assert_true(res.at - t0 < 100);
    /* a name (resolved off the loop) with nothing behind it fails the same way */
    struct sg_redis *bad = sg_redis_new(&loop, "localhost", free_port(), NULL);
    assert_non_null(bad);
    struct result res2;
    memset(&res2, 0, sizeof(res2));
    assert_int_equal(sg_redis_llen(bad, "q", on_len, &res2), 0);
    assert_true(run_until(&loop, flag_set, &res2.done, 1000));
    assert_int_equal(res2.err, -ENOTCONN);
    run_for(&loop, 50);
    sg_redis_free(r);
    sg_redis_free(bad);
    finish_loop(&loop);
}

static void test_connects_when_redis_appears(void **state) {
    (void)state;
    need_redis();
    uint16_t port = free_port();
    uv_loop_t loop;
    uv_loop_init(&loop);
    uint64_t t0 = now_ms();
    struct sg_redis *r = sg_redis_new(&loop, "127.0.0.1", port, NULL);
    assert_non_null(r);
    run_for(&loop, 150);
    assert_false(sg_redis_connected(r));
    pid_t pid = redis_start(port);
    assert_true(pid > 0);
    /* refused connects are seen at once and retried after 100, 200, 400 ms
     * (a refusal left to the connect timeout would take past 1 s) */
    assert_true(run_until(&loop, is_connected, r, 2000));
    assert_true(now_ms() - t0 < 1000);
    sg_redis_free(r);
    finish_loop(&loop);
    redis_kill(pid);
}

static bool done_twice(void *arg) {
    return *(int *)arg >= 2;
}

static void test_command_timeout(void **state) {
    (void)state;
    uint16_t port;
    int lfd = silent_listener(&port);
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct sg_redis *r = connect_to(&loop, port);
    uint64_t t0 = now_ms();
    struct result a, b;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    assert_int_equal(sg_redis_llen(r, "q", on_len, &a), 0);
    assert_int_equal(sg_redis_llen(r, "q", on_len, &b), 0);
    assert_true(run_until(&loop, flag_set, &a.done, 2500));
    assert_true(run_until(&loop, flag_set, &b.done, 100));
    assert_int_equal(a.err, -ETIMEDOUT);
    assert_int_equal(b.err, -ETIMEDOUT);
    assert_in_range(a.at - t0, 900, 1600);
    /* the stuck connection was dropped; a new one is made */
    assert_true(run_until(&loop, is_connected, r, 1000));
    close(lfd);
    sg_redis_free(r);
    finish_loop(&loop);
}

struct free_ctx {
    struct sg_redis *r;
    int calls;
    int err;
    int reissue_rc;
};

/* Runs inside sg_redis_free: commands now fail at once. */
static void on_cancelled(void *arg, long long len, int err) {
    (void)len;
    struct free_ctx *c = arg;
    c->calls++;
    c->err = err;
    c->reissue_rc = sg_redis_llen(c->r, "q", on_len, NULL);
}

static void free_from_callback(void *arg, const struct sg_redis_reply *rep, int err) {
    (void)rep;
    (void)err;
    struct free_ctx *c = arg;
    c->calls++;
    sg_redis_free(c->r);
}

static void test_free_with_commands_in_flight(void **state) {
    (void)state;
    need_redis();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct free_ctx c = {0};
    c.r = connect_to(&loop, g_port);
    assert_int_equal(sg_redis_llen(c.r, "q", on_cancelled, &c), 0);
    sg_redis_free(c.r);
    assert_int_equal(c.calls, 1);
    assert_int_equal(c.err, -ECANCELED);
    assert_int_equal(c.reissue_rc, -ESHUTDOWN);
    finish_loop(&loop);

    /* freed from one of its own callbacks, with another command behind it */
    uv_loop_init(&loop);
    struct free_ctx d = {0};
    d.r = connect_to(&loop, g_port);
    const char *ping[] = {"PING"};
    assert_int_equal(sg_redis_command_argv(d.r, 1, ping, NULL, free_from_callback, &d), 0);
    assert_int_equal(sg_redis_command_argv(d.r, 1, ping, NULL, free_from_callback, &d), 0);
    assert_true(run_until(&loop, done_twice, &d.calls, 2000));
    finish_loop(&loop);
    assert_int_equal(d.calls, 2);
}

/* ---- lease tests ---- */

/* One simulated gateway: its own link and lease. */
struct gw {
    struct sg_redis *r;
    struct sg_lease *l;
    int ups, downs;
    bool leader; /* as on_change last said */
    uint64_t changed_at;
};

static void on_change(void *arg, bool leader) {
    struct gw *g = arg;
    assert_true(leader != g->leader); /* a change each time */
    g->leader = leader;
    g->changed_at = now_ms();
    if (leader)
        g->ups++;
    else
        g->downs++;
}

/* Checks at every loop turn that two gateways never both hold the lease,
 * and that held() agrees with on_change up to the validity end. */
struct sampler {
    uv_check_t check;
    uv_timer_t timer; /* keeps the loop turning */
    struct gw *g[2];
    int both;
    long samples;
};

static void sample(uv_check_t *h) {
    struct sampler *s = h->data;
    s->samples++;
    bool held[2];
    for (int i = 0; i < 2; i++) {
        held[i] = s->g[i]->l && sg_lease_held(s->g[i]->l);
        if (held[i])
            assert_true(s->g[i]->leader);
    }
    if (held[0] && held[1])
        s->both++;
}

static void sampler_start(uv_loop_t *loop, struct sampler *s, struct gw *a, struct gw *b) {
    memset(s, 0, sizeof(*s));
    s->g[0] = a;
    s->g[1] = b;
    uv_check_init(loop, &s->check);
    s->check.data = s;
    uv_check_start(&s->check, sample);
    uv_timer_init(loop, &s->timer);
    uv_timer_start(&s->timer, tick, 1, 1);
}

static void sampler_stop(struct sampler *s) {
    uv_close((uv_handle_t *)&s->check, NULL);
    uv_close((uv_handle_t *)&s->timer, NULL);
    assert_int_equal(s->both, 0);
    assert_true(s->samples > 10);
}

static void gw_start(uv_loop_t *loop, struct gw *g, uint16_t port, const char *name) {
    memset(g, 0, sizeof(*g));
    g->r = sg_redis_new(loop, "127.0.0.1", port, "sg:test:");
    assert_non_null(g->r);
    g->l = sg_lease_new(g->r, name, TTL, on_change, g);
    assert_non_null(g->l);
}

static void gw_stop(struct gw *g) {
    if (g->l)
        sg_lease_free(g->l);
    g->l = NULL;
    sg_redis_free(g->r);
}

struct pair {
    struct gw *a, *b;
};

static bool one_leads(void *arg) {
    struct pair *p = arg;
    return p->a->leader + p->b->leader == 1;
}

static bool leads(void *arg) {
    return ((struct gw *)arg)->leader;
}

static bool not_leads(void *arg) {
    return !((struct gw *)arg)->leader;
}

static bool both_connected(void *arg) {
    struct pair *p = arg;
    return sg_redis_connected(p->a->r) && sg_redis_connected(p->b->r);
}

static bool both_down(void *arg) {
    struct pair *p = arg;
    return !sg_redis_connected(p->a->r) && !sg_redis_connected(p->b->r);
}

/* The value of lease name's key, read through r ("" when there is none). */
static void lease_value(uv_loop_t *loop, struct sg_redis *r, const char *name, char *out,
                        size_t outlen) {
    char key[128];
    snprintf(key, sizeof(key), "sg:test:lease:%s", name);
    const char *get[] = {"GET", key};
    struct result res = cmd(loop, r, 2, get);
    assert_int_equal(res.err, 0);
    snprintf(out, outlen, "%s", res.type == SG_REDIS_REPLY_STRING ? res.str : "");
}

/* Whether key exists, asked on a link of its own (after the others closed). */
static bool key_exists(uint16_t port, const char *key) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct sg_redis *r = connect_to(&loop, port);
    const char *exists[] = {"EXISTS", key};
    struct result res = cmd(&loop, r, 2, exists);
    assert_int_equal(res.err, 0);
    sg_redis_free(r);
    finish_loop(&loop);
    return res.integer == 1;
}

static void test_lease_one_leader(void **state) {
    (void)state;
    need_redis();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct gw a, b;
    gw_start(&loop, &a, g_port, "one");
    gw_start(&loop, &b, g_port, "one");
    struct sampler s;
    sampler_start(&loop, &s, &a, &b);
    struct pair p = {&a, &b};
    assert_true(run_until(&loop, one_leads, &p, 2000));
    run_for(&loop, 1500); /* several renewals: no flapping */
    assert_true(one_leads(&p));
    struct gw *leader = a.leader ? &a : &b, *other = a.leader ? &b : &a;
    assert_int_equal(leader->ups, 1);
    assert_int_equal(leader->downs, 0);
    assert_int_equal(other->ups, 0);
    assert_true(sg_lease_held(leader->l));
    assert_false(sg_lease_held(other->l));
    char value[300];
    lease_value(&loop, other->r, "one", value, sizeof(value));
    assert_string_equal(value, sg_redis_node_id(leader->r));
    sampler_stop(&s);
    /* the leader shuts down at once: its release still reaches Redis */
    gw_stop(leader);
    gw_stop(other);
    finish_loop(&loop);
    assert_false(key_exists(g_port, "sg:test:lease:one"));
}

static void test_lease_takeover_after_abandon(void **state) {
    (void)state;
    need_redis();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct gw a, b;
    gw_start(&loop, &a, g_port, "abandon");
    gw_start(&loop, &b, g_port, "abandon");
    struct sampler s;
    sampler_start(&loop, &s, &a, &b);
    struct pair p = {&a, &b};
    assert_true(run_until(&loop, one_leads, &p, 2000));
    run_for(&loop, 300);
    struct gw *dead = a.leader ? &a : &b, *other = a.leader ? &b : &a;
    uint64_t t0 = now_ms();
    sg_lease_abandon(dead->l); /* the gateway died: the key stays until its ttl */
    dead->l = NULL;
    dead->leader = false;
    assert_true(run_until(&loop, leads, other, 3 * TTL));
    uint64_t dt = other->changed_at - t0;
    assert_true(dt < 3 * TTL);
    assert_true(dt >= TTL / 3); /* not before the key could expire */
    char value[300];
    lease_value(&loop, other->r, "abandon", value, sizeof(value));
    assert_string_equal(value, sg_redis_node_id(other->r));
    sampler_stop(&s);
    gw_stop(&a);
    gw_stop(&b);
    finish_loop(&loop);
}

static void test_lease_free_releases(void **state) {
    (void)state;
    need_redis();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct gw a, b;
    gw_start(&loop, &a, g_port, "release");
    gw_start(&loop, &b, g_port, "release");
    struct sampler s;
    sampler_start(&loop, &s, &a, &b);
    struct pair p = {&a, &b};
    assert_true(run_until(&loop, one_leads, &p, 2000));
    run_for(&loop, 100);
    struct gw *gone = a.leader ? &a : &b, *other = a.leader ? &b : &a;
    int downs = gone->downs;
    uint64_t t0 = now_ms();
    sg_lease_free(gone->l);
    gone->l = NULL;
    gone->leader = false;
    /* the other takes over at its next attempt (every ttl/3), well under ttl */
    assert_true(run_until(&loop, leads, other, TTL));
    assert_true(other->changed_at - t0 < TTL / 3 + 150);
    assert_int_equal(gone->downs, downs); /* no on_change after free */
    sampler_stop(&s);
    gw_stop(&a);
    gw_stop(&b);
    finish_loop(&loop);
}

static void test_lease_lost_key(void **state) {
    (void)state;
    need_redis();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct gw a;
    gw_start(&loop, &a, g_port, "stolen");
    assert_true(run_until(&loop, leads, &a, 2000));
    struct sg_redis *x = connect_to(&loop, g_port);
    /* someone else's value: the next renewal answers 0 */
    const char *steal[] = {"SET", "sg:test:lease:stolen", "intruder", "PX", "60000"};
    uint64_t t0 = now_ms();
    assert_int_equal(cmd(&loop, x, 5, steal).err, 0);
    assert_true(run_until(&loop, not_leads, &a, TTL));
    assert_true(a.changed_at - t0 < TTL / 3 + 150);
    assert_false(sg_lease_held(a.l));
    run_for(&loop, TTL / 2);
    assert_false(a.leader);
    /* once the key is gone it is taken again */
    const char *del[] = {"DEL", "sg:test:lease:stolen"};
    assert_int_equal(cmd(&loop, x, 2, del).integer, 1);
    assert_true(run_until(&loop, leads, &a, TTL));
    /* free releases the key at once */
    sg_lease_free(a.l);
    a.l = NULL;
    run_for(&loop, 50);
    char value[300];
    lease_value(&loop, x, "stolen", value, sizeof(value));
    assert_string_equal(value, "");
    gw_stop(&a);
    sg_redis_free(x);
    finish_loop(&loop);
}

static void test_lease_redis_restart(void **state) {
    (void)state;
    need_redis();
    uint16_t port = free_port();
    pid_t pid = redis_start(port);
    assert_true(pid > 0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct gw a, b;
    gw_start(&loop, &a, port, "restart");
    gw_start(&loop, &b, port, "restart");
    struct sampler s;
    sampler_start(&loop, &s, &a, &b);
    struct pair p = {&a, &b};
    assert_true(run_until(&loop, one_leads, &p, 2000));
    run_for(&loop, 200);
    struct gw *leader = a.leader ? &a : &b;

    uint64_t t0 = now_ms();
    redis_kill(pid);
    assert_true(run_until(&loop, not_leads, leader, TTL));
    assert_true(leader->changed_at - t0 < TTL);
    assert_false(sg_lease_held(leader->l));
    assert_true(run_until(&loop, both_down, &p, 1000));

    /* commands fail at once while the link is down */
    struct result res;
    memset(&res, 0, sizeof(res));
    uint64_t t1 = now_ms();
    assert_int_equal(sg_redis_llen(a.r, "q", on_len, &res), 0);
    assert_true(run_until(&loop, flag_set, &res.done, 500));
    assert_int_equal(res.err, -ENOTCONN);
    assert_true(res.at - t1 < 100);
    run_for(&loop, 300);
    assert_false(a.leader || b.leader);

    pid = redis_start(port);
    assert_true(pid > 0);
    assert_true(run_until(&loop, both_connected, &p, 6000));
    assert_true(run_until(&loop, one_leads, &p, 2000));
    run_for(&loop, 400);
    assert_true(one_leads(&p));
    sampler_stop(&s);
    gw_stop(&a);
    gw_stop(&b);
    finish_loop(&loop);
    redis_kill(pid);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_url),
        cmocka_unit_test(test_new_and_node_id),
        cmocka_unit_test(test_commands_and_llen),
        cmocka_unit_test(test_sha1_vectors),
        cmocka_unit_test(test_eval_sent_as_evalsha),
        cmocka_unit_test(test_disconnected_fails_at_once),
        cmocka_unit_test(test_connects_when_redis_appears),
        cmocka_unit_test(test_command_timeout),
        cmocka_unit_test(test_free_with_commands_in_flight),
        cmocka_unit_test(test_lease_one_leader),
        cmocka_unit_test(test_lease_takeover_after_abandon),
        cmocka_unit_test(test_lease_free_releases),
        cmocka_unit_test(test_lease_lost_key),
        cmocka_unit_test(test_lease_redis_restart),
    };
    sg_log_level = SG_LOG_WARN;
    return cmocka_run_group_tests(tests, redis_group_setup, redis_group_teardown);
}
