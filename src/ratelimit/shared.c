/*
 * Rate-limit decisions in Redis (shared.h). One EVAL per request runs the
 * GCRA step of each applying rule on its key, in order, with Redis' clock
 * (TIME), and stops at the first rejection, like the local path; it answers
 * one string "allowed,remaining,reset_us,retry_us;..." per rule decided (the
 * link keeps no array elements). A pending check owns a budget timer; the
 * answer or the timer, whichever comes first, decides; the other is then
 * ignored. Ownership: struct sg_rl_pending is freed when both the Redis
 * callback has run and its timer has closed.
 */
#include "ratelimit/shared.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/log.h"
#include "ratelimit/limit_int.h"
#include "redis/redis.h"
#include "server/server.h"

#define LOCAL_HOLD_MS 1000                  /* after a failure, decide locally this long */
#define FALLBACK_SALT 0x6c6f63616c2d7266ull /* local buckets of the fallback */
#define REGISTRY_KEY  "rl:gateways"
#define VALUE_MAX     200 /* longer key values go to Redis as their hash */
#define KEY_MAX       (64 + 24 + VALUE_MAX)

/* KEYS[i]: the buckets; ARGV[2i-1], ARGV[2i]: emission interval (us) and
 * burst. A bucket holds its TAT (us, Redis' clock) and expires when full. */
static const char script[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local out = {}\n"
    "for i, key in ipairs(KEYS) do\n"
    "  local T = tonumber(ARGV[2 * i - 1])\n"
    "  local tau = T * tonumber(ARGV[2 * i])\n"
    "  local tat = tonumber(redis.call('GET', key) or '0')\n"
    "  if tat < now then tat = now end\n"
    "  local new = tat + T\n"
    "  if new - tau > now then\n"
    "    out[#out + 1] = string.format('0,0,%d,%d', tat - now, new - tau - now)\n"
    "    return table.concat(out, ';')\n"
    "  end\n"
    "  redis.call('SET', key, string.format('%.3f', new), 'PX', math.ceil((new - now) / 1000) + "
    "1)\n"
    "  out[#out + 1] = string.format('1,%d,%d,0', math.floor((now + tau - new) / T), new - now)\n"
    "end\n"
    "return table.concat(out, ';')\n";

struct sg_rl_pending {
    struct sg_conn *c; /* NULL once dropped */
    struct sg_worker *w;
    sg_rl_shared_cb cb;
    struct sg_config *cfg; /* a reference: route and items point into it */
    const struct sg_route *route;
    struct sg__rl_item items[SG_RL_MAX_RULES];
    size_t n;
    uv_timer_t timer;
    bool decided;      /* the answer or the budget came */
    bool reply_done;   /* the Redis callback ran */
    bool timer_closed; /* the timer's close callback ran */
};

/* Per worker thread: deciding locally until (uv_now ms), and whether the
 * switch was said. */
static __thread uint64_t local_until;
static __thread bool local_said;
static _Atomic uint64_t fallbacks;
static _Atomic uint32_t gateways = 1;

uint64_t sg_rl_shared_fallbacks(void) {
    return atomic_load(&fallbacks);
}

uint32_t sg_rl_shared_gateways(void) {
    uint32_t n = atomic_load(&gateways);
    return n ? n : 1;
}

static void pending_free(struct sg_rl_pending *p) {
    if (p->reply_done && p->timer_closed) {
        sg_config_unref(p->cfg);
        free(p);
    }
}

static void on_timer_closed(uv_handle_t *h) {
    struct sg_rl_pending *p = h->data;
    p->timer_closed = true;
    pending_free(p);
}

static void go_local(const char *why) {
    atomic_fetch_add(&fallbacks, 1);
    if (!local_said) {
        local_said = true;
        sg_log_warn("rate limits: %s: deciding locally with this gateway's share (1/%u of each "
                    "rate)",
                    why, sg_rl_shared_gateways());
    }
}

/* Decides items here, with this gateway's share of each rate, in the
 * fallback's own local buckets. */
static void decide_here(const struct sg_route *route, const struct sg__rl_item *items, size_t n,
                        struct sg_rl_verdict *v) {
    struct sg_rl_result res[SG_RL_MAX_RULES];
    size_t nres = 0;
    sg__rl_local(items, n, sg_rl_shared_gateways(), FALLBACK_SALT, uv_hrtime() / 1000, res, &nres);
    sg__rl_verdict(route, items, res, nres, v);
}

/* Decides p locally (the budget passed, or Redis failed). */
static void decide_local(struct sg_rl_pending *p) {
    struct sg_rl_verdict v;
    decide_here(p->route, p->items, p->n, &v);
    p->cb(p->c, &v);
}

static void finish(struct sg_rl_pending *p) {
    p->decided = true;
    uv_timer_stop(&p->timer);
    uv_close((uv_handle_t *)&p->timer, on_timer_closed);
}

static void on_budget(uv_timer_t *t) {
    struct sg_rl_pending *p = t->data;
    if (p->decided)
        return;
    local_until = uv_now(t->loop) + LOCAL_HOLD_MS;
    go_local("redis answered later than the budget");
    finish(p);
    if (p->c)
        decide_local(p);
}

/* "a,r,reset,retry;..." into res; the number parsed, or -1. */
static int parse(const char *s, struct sg_rl_result *res, size_t max) {
    size_t n = 0;
    while (*s && n < max) {
        unsigned long long a, r, reset, retry;
        int used = 0;
        if (sscanf(s, "%llu,%llu,%llu,%llu%n", &a, &r, &reset, &retry, &used) != 4)
            return -1;
        res[n].allowed = a == 1;
        res[n].remaining = r > UINT32_MAX ? UINT32_MAX : (uint32_t)r;
        res[n].reset_ms = (reset + 999) / 1000;
        res[n].retry_after_ms = (retry + 999) / 1000;
        n++;
        s += used;
        if (*s == ';')
            s++;
        else if (*s)
            return -1;
    }
    return (int)n;
}

static void on_reply(void *arg, const struct sg_redis_reply *reply, int err) {
    struct sg_rl_pending *p = arg;
    p->reply_done = true;
    if (!p->decided) {
        struct sg_rl_result res[SG_RL_MAX_RULES];
        int n = err == 0 && reply && reply->type == SG_REDIS_REPLY_STRING
                    ? parse(reply->str, res, SG_RL_MAX_RULES)
                    : -1;
        finish(p);
        if (n < 0) {
            local_until = uv_now(&p->w->loop) + LOCAL_HOLD_MS;
            go_local(reply && reply->type == SG_REDIS_REPLY_ERROR && reply->str ? reply->str
                     : err != 0 ? "redis unreachable"
                                : "an answer from redis that does not parse");
            if (p->c)
                decide_local(p);
        } else {
            if (local_said) {
                local_said = false;
                sg_log_info("rate limits: redis answers again: shared decisions");
            }
            if (p->c) {
                struct sg_rl_verdict v;
                sg__rl_verdict(p->route, p->items, res, (size_t)n, &v);
                p->cb(p->c, &v);
            }
        }
    }
    pending_free(p);
}

struct sg_rl_pending *sg_rl_shared_check(struct sg_worker *w, struct sg_redis *r,
                                         uint64_t budget_ms, const struct sg_route *route,
                                         struct sg_conn *c, const struct sg_http_msg *msg,
                                         sg_rl_shared_cb cb, struct sg_rl_verdict *v) {
    struct sg__rl_item items[SG_RL_MAX_RULES];
    size_t n = sg__rl_items(route, c, msg, items, SG_RL_MAX_RULES);
    uint64_t now = uv_now(&w->loop);
    if (n == 0 || now < local_until || !sg_redis_connected(r)) {
        if (n && now >= local_until)
            go_local("redis unreachable");
        decide_here(route, items, n, v);
        return NULL;
    }
    /* EVAL script n key... (T, burst)... */
    const char *argv[3 + 3 * SG_RL_MAX_RULES];
    size_t argvlen[3 + 3 * SG_RL_MAX_RULES];
    char keys[SG_RL_MAX_RULES][KEY_MAX], nums[SG_RL_MAX_RULES][2][32], nkeys[24];
    const char *prefix = sg_redis_prefix(r);
    int argc = 0;
    argvlen[argc] = 4;
    argv[argc++] = "EVAL";
    argvlen[argc] = sizeof(script) - 1;
    argv[argc++] = script;
    argvlen[argc] = (size_t)snprintf(nkeys, sizeof(nkeys), "%zu", n);
    argv[argc++] = nkeys;
    for (size_t i = 0; i < n; i++) {
        /* the bucket: the rule and the key's value itself (no hash that
         * another client could collide with), or its hash when long */
        int hl = snprintf(keys[i], sizeof(keys[i]), "%srl:%016llx:", prefix,
                          (unsigned long long)items[i].rule->id);
        size_t kl = hl > 0 && (size_t)hl < sizeof(keys[i]) ? (size_t)hl : 0;
        if (items[i].vl <= VALUE_MAX && kl + items[i].vl <= sizeof(keys[i])) {
            memcpy(keys[i] + kl, items[i].val, items[i].vl);
            kl += items[i].vl;
        } else {
            int m = snprintf(keys[i] + kl, sizeof(keys[i]) - kl, "#%016llx",
                             (unsigned long long)items[i].hash);
            kl += m > 0 ? (size_t)m : 0;
        }
        argvlen[argc] = kl;
        argv[argc++] = keys[i];
    }
    for (size_t i = 0; i < n; i++) {
        const struct sg_rl_rate *rt = items[i].rate;
        /* the emission interval in microseconds, to the nanosecond */
        argvlen[argc] = (size_t)snprintf(nums[i][0], sizeof(nums[i][0]), "%.3f",
                                         (double)rt->period_ms * 1000.0 / rt->count);
        argv[argc++] = nums[i][0];
        argvlen[argc] = (size_t)snprintf(nums[i][1], sizeof(nums[i][1]), "%u", rt->burst);
        argv[argc++] = nums[i][1];
    }
    struct sg_rl_pending *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        decide_here(route, items, n, v);
        return NULL;
    }
    p->c = c;
    p->w = w;
    p->cfg = sg_config_ref(w->cfg);
    p->cb = cb;
    p->route = route;
    memcpy(p->items, items, n * sizeof(items[0]));
    p->n = n;
    if (sg_redis_command_argv(r, argc, argv, argvlen, on_reply, p) != 0) {
        sg_config_unref(p->cfg);
        free(p);
        go_local("redis refused the command");
        decide_here(route, items, n, v);
        return NULL;
    }
    uv_timer_init(&w->loop, &p->timer);
    p->timer.data = p;
    uv_timer_start(&p->timer, on_budget, budget_ms ? budget_ms : 1, 0);
    return p;
}

void sg_rl_shared_drop(struct sg_rl_pending *p) {
    if (p)
        p->c = NULL;
}

/* ---- the registry of gateways --------------------------------------------- */

static void on_count(void *arg, const struct sg_redis_reply *reply, int err) {
    (void)arg;
    if (err == 0 && reply && reply->type == SG_REDIS_REPLY_INTEGER && reply->integer > 0)
        atomic_store(&gateways, (uint32_t)(reply->integer > 1000 ? 1000 : reply->integer));
}

void sg_rl_shared_register(struct sg_redis *r) {
    char key[128], now_s[32], old_s[32];
    snprintf(key, sizeof(key), "%s" REGISTRY_KEY, sg_redis_prefix(r));
    uv_timeval64_t tv;
    uv_gettimeofday(&tv);
    long long now = (long long)tv.tv_sec * 1000 + tv.tv_usec / 1000;
    snprintf(now_s, sizeof(now_s), "%lld", now);
    snprintf(old_s, sizeof(old_s), "%lld", now - 3000);
    const char *zadd[] = {"ZADD", key, now_s, sg_redis_node_id(r)};
    const char *zrem[] = {"ZREMRANGEBYSCORE", key, "-inf", old_s};
    const char *zcard[] = {"ZCARD", key};
    const char *pexp[] = {"PEXPIRE", key, "10000"};
    sg_redis_command_argv(r, 4, zadd, NULL, NULL, NULL);
    sg_redis_command_argv(r, 4, zrem, NULL, NULL, NULL);
    sg_redis_command_argv(r, 3, pexp, NULL, NULL, NULL);
    sg_redis_command_argv(r, 2, zcard, NULL, on_count, NULL);
}
