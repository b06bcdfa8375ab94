/*
 * The cache's shared tier in Redis (l2.h). Three Lua scripts, each one EVAL
 * on the worker's link: put stores an entry with Redis' TIME (us) and its
 * path; get reads it, checks it against the invalidation records (the
 * path's stamp, the all-stamp, then every prefix purge: there are few) and
 * answers nil or one string "<age_ms>:<data>" (the link keeps no array
 * elements), deleting an entry it finds invalidated; invalidate writes a
 * record and PUBLISHes the message in the same script, so a subscriber
 * never hears of an invalidation Redis has not recorded.
 *
 * A pending get owns a budget timer on the link's loop; the answer or the
 * timer, whichever comes first, decides and the other is ignored. Ownership:
 * struct l2_get is freed once both the link's callback has run (the link
 * always calls back, with -ECANCELED when freed) and its timer has closed.
 */
#include "cache/l2.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "redis/redis.h"
#include "redis/redis_int.h"

#define ENTRY_NS   "cache:e:"
#define PATH_NS    "cache:ip:"
#define PREFIX_KEY "cache:ik"
#define ALL_KEY    "cache:ia"
#define CHANNEL    "cache:inval"
#define STACK_KEYS 1024 /* bytes of keys built on the stack; more are malloc'ed */

/* KEYS[1] the entry; ARGV[1] path, ARGV[2] data, ARGV[3] ttl ms */
static const char put_script[] =
    "local t = redis.call('TIME')\n"
    "redis.call('DEL', KEYS[1])\n"
    "redis.call('HSET', KEYS[1], 't', t[1] .. string.format('%06d', tonumber(t[2])),\n"
    "           'p', ARGV[1], 'd', ARGV[2])\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[3])\n"
    "return 1\n";

/* KEYS[1] the entry, KEYS[2] its path's stamp, KEYS[3] the prefix purges,
 * KEYS[4] the all-stamp; ARGV[1] the entry's key, ARGV[2] its path.
 * An invalidation at or after the entry's time covers it. */
static const char get_script[] =
    "local e = redis.call('HMGET', KEYS[1], 't', 'p', 'd')\n"
    "if not e[1] or not e[3] or e[2] ~= ARGV[2] then return false end\n"
    "local te = tonumber(e[1])\n"
    "local dead = false\n"
    "local s = redis.call('GET', KEYS[2])\n"
    "if s and tonumber(s) >= te then dead = true end\n"
    "if not dead then\n"
    "  s = redis.call('GET', KEYS[4])\n"
    "  if s and tonumber(s) >= te then dead = true end\n"
    "end\n"
    "if not dead then\n"
    "  local h = redis.call('HGETALL', KEYS[3])\n"
    "  for i = 1, #h, 2 do\n"
    "    local f = h[i]\n"
    "    if tonumber(h[i + 1]) >= te and string.sub(ARGV[1], 1, #f) == f then\n"
    "      dead = true\n"
    "      break\n"
    "    end\n"
    "  end\n"
    "end\n"
    "if dead then\n"
    "  redis.call('DEL', KEYS[1])\n"
    "  return false\n"
    "end\n"
    "local t = redis.call('TIME')\n"
    "local age = math.floor((tonumber(t[1]) * 1000000 + tonumber(t[2]) - te) / 1000)\n"
    "if age < 0 then age = 0 end\n"
    "return string.format('%d', age) .. ':' .. e[3]\n";

/* KEYS[1] the record (a path's stamp, the prefix purges or the all-stamp);
 * ARGV[1] kind, ARGV[2] ttl ms, ARGV[3] channel, ARGV[4] the message (kind
 * then arg). A record's expiry only grows; prefix purges older than ttl
 * can cover no live entry and are dropped. */
static const char inval_script[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local ts = string.format('%d', now)\n"
    "local ttl = tonumber(ARGV[2])\n"
    "local pt = redis.call('PTTL', KEYS[1])\n"
    "if pt < ttl then pt = ttl end\n"
    "if ARGV[1] == 'k' then\n"
    "  local old = now - ttl * 1000\n"
    "  local h = redis.call('HGETALL', KEYS[1])\n"
    "  for i = 1, #h, 2 do\n"
    "    if tonumber(h[i + 1]) < old then redis.call('HDEL', KEYS[1], h[i]) end\n"
    "  end\n"
    "  redis.call('HSET', KEYS[1], string.sub(ARGV[4], 2), ts)\n"
    "  redis.call('PEXPIRE', KEYS[1], pt)\n"
    "else\n"
    "  redis.call('SET', KEYS[1], ts, 'PX', pt)\n"
    "end\n"
    "redis.call('PUBLISH', ARGV[3], ARGV[4])\n"
    "return 1\n";

struct l2_get {
    sg_cache_l2_cb cb;
    void *arg;
    uv_timer_t timer;  /* the budget; not initialised without one */
    bool decided;      /* the answer or the budget came: cb has run */
    bool reply_done;   /* the link's callback ran */
    bool timer_closed; /* the timer's close callback ran (or there is none) */
};

struct l2_inval {
    void (*cb)(void *arg, int err);
    void *arg;
};

/* A scratch buffer for keys: on the stack when small enough. */
struct keybuf {
    char stack[STACK_KEYS];
    char *p;
};

static char *keybuf_get(struct keybuf *kb, size_t need) {
    kb->p = need <= sizeof(kb->stack) ? kb->stack : malloc(need);
    return kb->p;
}

static void keybuf_put(struct keybuf *kb) {
    if (kb->p != kb->stack)
        free(kb->p);
}

/* Writes prefix, ns and bytes b at out; returns the length written. */
static size_t build(char *out, const char *prefix, const char *ns, const char *b, size_t blen) {
    size_t pl = strlen(prefix), nl = strlen(ns);
    memcpy(out, prefix, pl);
    memcpy(out + pl, ns, nl);
    if (blen)
        memcpy(out + pl + nl, b, blen);
    return pl + nl + blen;
}

int sg_cache_l2_channel(const char *prefix, char *out, size_t outlen) {
    if (!prefix)
        prefix = "";
    size_t n = strlen(prefix) + sizeof(CHANNEL) - 1;
    if (!out || n + 1 > outlen)
        return -ENAMETOOLONG;
    build(out, prefix, CHANNEL, NULL, 0);
    out[n] = '\0';
    return (int)n;
}

/* ---- get ---- */

static void get_maybe_free(struct l2_get *g) {
    if (g->reply_done && g->timer_closed)
        free(g);
}

static void on_get_timer_closed(uv_handle_t *h) {
    struct l2_get *g = h->data;
    g->timer_closed = true;
    get_maybe_free(g);
}

/* Marks g decided and lets its timer go. */
static void get_decide(struct l2_get *g) {
    g->decided = true;
    if (!g->timer_closed && !uv_is_closing((uv_handle_t *)&g->timer))
        uv_close((uv_handle_t *)&g->timer, on_get_timer_closed);
}

static void on_budget(uv_timer_t *t) {
    struct l2_get *g = t->data;
    if (g->decided)
        return;
    get_decide(g);
    g->cb(g->arg, -ETIMEDOUT, NULL, 0, 0);
}

static void on_get_reply(void *arg, const struct sg_redis_reply *rep, int err) {
    struct l2_get *g = arg;
    g->reply_done = true;
    if (!g->decided) {
        get_decide(g);
        int status = err;
        const char *data = NULL;
        size_t len = 0;
        uint64_t age = 0;
        if (!err && rep->type == SG_REDIS_REPLY_NIL) {
            status = 0;
        } else if (!err && rep->type == SG_REDIS_REPLY_STRING) {
            /* "<age_ms>:<data>" */
            size_t i = 0;
            while (i < rep->len && rep->str[i] >= '0' && rep->str[i] <= '9' && i < 20)
                age = age * 10 + (uint64_t)(rep->str[i++] - '0');
            if (i == 0 || i >= rep->len || rep->str[i] != ':') {
                status = -EPROTO;
                age = 0;
            } else {
                status = 1;
                data = rep->str + i + 1;
                len = rep->len - i - 1;
            }
        } else if (!err) {
            status = -EPROTO;
        }
        g->cb(g->arg, status, data, len, age);
    }
    get_maybe_free(g);
}

int sg_cache_l2_get(struct sg_redis *r, const char *key, size_t key_len, const char *path,
                    size_t path_len, uint64_t budget_ms, sg_cache_l2_cb cb, void *arg) {
    if (!r || !cb || (!key && key_len) || (!path && path_len))
        return -EINVAL;
    const char *prefix = sg_redis_prefix(r);
    size_t pl = strlen(prefix);
    size_t need = 4 * pl + sizeof(ENTRY_NS) + key_len + sizeof(PATH_NS) + path_len +
                  sizeof(PREFIX_KEY) + sizeof(ALL_KEY);
    struct keybuf kb;
    char *k = keybuf_get(&kb, need);
    if (!k)
        return -ENOMEM;
    struct l2_get *g = calloc(1, sizeof(*g));
    if (!g) {
        keybuf_put(&kb);
        return -ENOMEM;
    }
    g->cb = cb;
    g->arg = arg;
    const char *argv[9];
    size_t argvlen[9];
    argv[0] = "EVAL";
    argvlen[0] = 4;
    argv[1] = get_script;
    argvlen[1] = sizeof(get_script) - 1;
    argv[2] = "4";
    argvlen[2] = 1;
    char *o = k;
    argv[3] = o;
    argvlen[3] = build(o, prefix, ENTRY_NS, key, key_len);
    o += argvlen[3];
    argv[4] = o;
    argvlen[4] = build(o, prefix, PATH_NS, path, path_len);
    o += argvlen[4];
    argv[5] = o;
    argvlen[5] = build(o, prefix, PREFIX_KEY, NULL, 0);
    o += argvlen[5];
    argv[6] = o;
    argvlen[6] = build(o, prefix, ALL_KEY, NULL, 0);
    argv[7] = key ? key : "";
    argvlen[7] = key_len;
    argv[8] = path ? path : "";
    argvlen[8] = path_len;
    /* the link copies the arguments into its output buffer at once */
    int rc = sg_redis_command_argv(r, 9, argv, argvlen, on_get_reply, g);
    keybuf_put(&kb);
    if (rc != 0) {
        free(g);
        return rc;
    }
    if (budget_ms == 0) {
        g->timer_closed = true;
        return 0;
    }
    uv_timer_init(sg__redis_loop(r), &g->timer);
    g->timer.data = g;
    uv_timer_start(&g->timer, on_budget, budget_ms, 0);
    return 0;
}

/* ---- put ---- */

void sg_cache_l2_put(struct sg_redis *r, const char *key, size_t key_len, const char *path,
                     size_t path_len, const char *data, size_t len, uint64_t ttl_ms) {
    if (!r || (!key && key_len) || (!path && path_len) || (!data && len) || ttl_ms == 0)
        return;
    const char *prefix = sg_redis_prefix(r);
    struct keybuf kb;
    char *k = keybuf_get(&kb, strlen(prefix) + sizeof(ENTRY_NS) + key_len);
    if (!k)
        return;
    char ttl[24];
    const char *argv[] = {"EVAL", put_script, "1", k, path ? path : "", data ? data : "", ttl};
    size_t argvlen[] = {4,
                        sizeof(put_script) - 1,
                        1,
                        build(k, prefix, ENTRY_NS, key, key_len),
                        path_len,
                        len,
                        (size_t)snprintf(ttl, sizeof(ttl), "%llu", (unsigned long long)ttl_ms)};
    sg_redis_command_argv(r, 7, argv, argvlen, NULL, NULL);
    keybuf_put(&kb);
}

/* ---- invalidate ---- */

static void on_inval_reply(void *arg, const struct sg_redis_reply *rep, int err) {
    struct l2_inval *iv = arg;
    if (!err && (rep->type != SG_REDIS_REPLY_INTEGER || rep->integer != 1))
        err = -EPROTO;
    iv->cb(iv->arg, err);
    free(iv);
}

int sg_cache_l2_invalidate(struct sg_redis *r, enum sg_cache_inval kind, const char *arg,
                           size_t len, uint64_t ttl_ms, void (*cb)(void *arg, int err),
                           void *cbarg) {
    if (!r || ttl_ms == 0 || (!arg && len))
        return -EINVAL;
    if (kind != SG_CACHE_INVAL_PATH && kind != SG_CACHE_INVAL_PREFIX && kind != SG_CACHE_INVAL_ALL)
        return -EINVAL;
    if (kind == SG_CACHE_INVAL_ALL)
        len = 0;
    const char *prefix = sg_redis_prefix(r);
    size_t pl = strlen(prefix);
    /* the record's key, the channel, the message */
    size_t need = pl + sizeof(PATH_NS) + len + pl + sizeof(CHANNEL) + 1 + len;
    struct keybuf kb;
    char *k = keybuf_get(&kb, need);
    if (!k)
        return -ENOMEM;
    struct l2_inval *iv = NULL;
    if (cb) {
        iv = malloc(sizeof(*iv));
        if (!iv) {
            keybuf_put(&kb);
            return -ENOMEM;
        }
        iv->cb = cb;
        iv->arg = cbarg;
    }
    char kindstr[2] = {(char)kind, '\0'}, ttl[24];
    size_t rl = kind == SG_CACHE_INVAL_PATH     ? build(k, prefix, PATH_NS, arg, len)
                : kind == SG_CACHE_INVAL_PREFIX ? build(k, prefix, PREFIX_KEY, NULL, 0)
                                                : build(k, prefix, ALL_KEY, NULL, 0);
    char *ch = k + rl;
    size_t cl = build(ch, prefix, CHANNEL, NULL, 0);
    char *msg = ch + cl;
    msg[0] = (char)kind;
    if (len)
        memcpy(msg + 1, arg, len);
    const char *argv[] = {"EVAL", inval_script, "1", k, kindstr, ttl, ch, msg};
    size_t argvlen[] = {4,  sizeof(inval_script) - 1,
                        1,  rl,
                        1,  (size_t)snprintf(ttl, sizeof(ttl), "%llu", (unsigned long long)ttl_ms),
                        cl, 1 + len};
    int rc = sg_redis_command_argv(r, 8, argv, argvlen, cb ? on_inval_reply : NULL, iv);
    keybuf_put(&kb);
    if (rc != 0)
        free(iv);
    return rc;
}
