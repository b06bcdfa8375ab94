/*
 * Route rules against the shared GCRA table (limit.h). The bucket of a
 * request under a rule is the hash of the rule's id (its name and key
 * source) mixed with the hash of the key's value, so rules that share a
 * name and key share buckets, and a reload keeps them.
 */
#include "ratelimit/limit.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "core/hash.h"
#include "pool/balance.h"
#include "proxy/proxy.h"
#include "ratelimit/gcra.h"
#include "ratelimit/limit_int.h"

/* Created by the main thread (start-up, or the first reload with a rule)
 * while workers may already read it: published with release, read with
 * acquire. Freed only at exit, after the workers. */
static _Atomic(struct sg_rl_table *) table;

int sg_ratelimit_init(size_t max_keys) {
    if (atomic_load(&table))
        return 0;
    struct sg_rl_table *t = sg_rl_table_new(max_keys);
    if (t == NULL)
        return -ENOMEM;
    atomic_store_explicit(&table, t, memory_order_release);
    return 0;
}

void sg_ratelimit_cleanup(void) {
    sg_rl_table_free(atomic_exchange(&table, NULL));
}

size_t sg_ratelimit_keys(void) {
    struct sg_rl_table *t = atomic_load(&table);
    return t ? sg_rl_table_keys(t) : 0;
}

size_t sg_ratelimit_bytes(void) {
    struct sg_rl_table *t = atomic_load(&table);
    return t ? sg_rl_table_bytes(t) : 0;
}

static const struct sg_rl_override *find(const struct sg_rl_override *t, size_t n, const char *v,
                                         size_t vl) {
    for (size_t i = 0; i < n; i++)
        if (t[i].value_len == vl && memcmp(t[i].value, v, vl) == 0)
            return &t[i];
    return NULL;
}

/* The rate for this request: an override of the key's value, else the
 * class named by class_header, else the rule's own. */
static const struct sg_rl_rate *rate_of(const struct sg_rl_rule *r, const struct sg_http_msg *msg,
                                        const char *v, size_t vl) {
    const struct sg_rl_override *o =
        r->noverrides ? find(r->overrides, r->noverrides, v, vl) : NULL;
    if (o)
        return &o->rate;
    for (uint32_t i = 0; r->nclasses && i < msg->num_headers; i++) {
        const struct sg_http_header *h = &msg->headers[i];
        if (!sg_http_name_eq(h, r->class_header, r->class_header_len))
            continue;
        o = find(r->classes, r->nclasses, h->value, h->value_len);
        if (o)
            return &o->rate;
        break;
    }
    return &r->rate;
}

static const enum sg_hash_source sources[] = {
    [SG_RL_KEY_IP] = SG_HASH_IP,
    [SG_RL_KEY_HEADER] = SG_HASH_HEADER,
    [SG_RL_KEY_COOKIE] = SG_HASH_COOKIE,
    [SG_RL_KEY_QUERY] = SG_HASH_QUERY,
};

/* Appends n bytes to v->hdr; false when they do not fit with 48 bytes to
 * spare (kept for the Retry-After of a 429). No printf: this runs for every
 * admitted response of a limited route. */
static bool put_mem(struct sg_rl_verdict *v, const char *p, size_t n) {
    if (n + 48 >= sizeof(v->hdr) - v->hdr_len)
        return false;
    memcpy(v->hdr + v->hdr_len, p, n);
    v->hdr_len += n;
    v->hdr[v->hdr_len] = '\0';
    return true;
}

static bool put_str(struct sg_rl_verdict *v, const char *s) {
    return put_mem(v, s, strlen(s));
}

static bool put_u64(struct sg_rl_verdict *v, uint64_t x) {
    char b[24];
    size_t i = sizeof(b);
    do {
        b[--i] = (char)('0' + x % 10);
        x /= 10;
    } while (x);
    return put_mem(v, b + i, sizeof(b) - i);
}

static uint64_t ceil_s(uint64_t ms) {
    return (ms + 999) / 1000;
}

size_t sg__rl_items(const struct sg_route *route, const struct sg_conn *c,
                    const struct sg_http_msg *msg, struct sg__rl_item *items, size_t max) {
    size_t n = 0;
    for (size_t i = 0; i < route->nrate_limits && n < max; i++) {
        const struct sg_rl_rule *r = &route->rate_limits[i];
        const char *val = "";
        size_t vl = 0;
        if (r->key != SG_RL_KEY_GLOBAL &&
            !sg_request_value(sources[r->key], r->key_name, r->key_name_len, c, msg, &val, &vl))
            continue; /* no key: the rule does not apply */
        items[n].rule = r;
        items[n].rate = rate_of(r, msg, val, vl);
        items[n].hash = sg_mix64(r->id ^ sg_hash64(val, vl));
        items[n].val = val;
        items[n].vl = vl;
        n++;
    }
    return n;
}

void sg__rl_verdict(const struct sg_route *route, const struct sg__rl_item *items,
                    const struct sg_rl_result *res, size_t n, struct sg_rl_verdict *v) {
    v->limited = false;
    v->retry_after_ms = 0;
    v->hdr_len = 0;
    v->hdr[0] = '\0';
    size_t tight = SIZE_MAX;
    for (size_t i = 0; i < n; i++) {
        if (!res[i].allowed) {
            v->limited = true;
            v->retry_after_ms = res[i].retry_after_ms;
            tight = i;
            break;
        }
        if (tight == SIZE_MAX || res[i].remaining < res[tight].remaining)
            tight = i;
    }
    if (tight == SIZE_MAX || (!v->limited && !route->rate_limit_headers))
        return;
    bool ok = put_str(v, "RateLimit-Policy: ");
    for (size_t i = 0; ok && i < n; i++)
        ok = (i == 0 || put_str(v, ", ")) && put_str(v, "\"") && put_str(v, items[i].rule->name) &&
             put_str(v, "\";q=") && put_u64(v, items[i].rate->count) && put_str(v, ";w=") &&
             put_u64(v, items[i].rate->period_ms / 1000);
    ok = ok && put_str(v, "\r\nRateLimit: \"") && put_str(v, items[tight].rule->name) &&
         put_str(v, "\";r=") && put_u64(v, v->limited ? 0 : res[tight].remaining) &&
         put_str(v, ";t=") &&
         put_u64(v, ceil_s(v->limited ? res[tight].retry_after_ms : res[tight].reset_ms)) &&
         put_str(v, "\r\n");
    if (!ok) { /* names too long for the room: leave the fields out */
        v->hdr_len = 0;
        v->hdr[0] = '\0';
    }
}

void sg__rl_local(const struct sg__rl_item *items, size_t n, uint32_t share, uint64_t salt,
                  uint64_t now_us, struct sg_rl_result *res, size_t *nres) {
    struct sg_rl_table *tab = atomic_load_explicit(&table, memory_order_acquire);
    *nres = 0;
    for (size_t i = 0; tab && i < n; i++) {
        const struct sg_rl_rate *r = items[i].rate;
        struct sg_rl_limit lim = {.count = r->count / share ? r->count / share : 1,
                                  .period_ms = r->period_ms,
                                  .burst = r->burst / share ? r->burst / share : 1};
        sg_rl_check(tab, items[i].hash ^ salt, &lim, now_us, &res[i]);
        *nres = i + 1;
        if (!res[i].allowed)
            break;
    }
}

void sg_ratelimit_check(const struct sg_route *route, const struct sg_conn *c,
                        const struct sg_http_msg *msg, uint64_t now_us, struct sg_rl_verdict *v) {
    struct sg__rl_item items[SG_RL_MAX_RULES];
    struct sg_rl_result res[SG_RL_MAX_RULES];
    size_t n = sg__rl_items(route, c, msg, items, SG_RL_MAX_RULES), nres = 0;
    sg__rl_local(items, n, 1, 0, now_us, res, &nres);
    sg__rl_verdict(route, items, res, nres, v);
}
