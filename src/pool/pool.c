/*
 * Server choice and passive health for pools; see pool.h.
 */
#include <errno.h>
#include <stdlib.h>

#include "core/log.h"
#include "pool/balance.h"
#include "pool/pool.h"
#include "pool/state.h"

/* Pools larger than this are balanced over their first SG_POOL_MAX servers. */
#define SG_POOL_MAX        256
#define BUDGET_WINDOW_MS   10000
#define BUDGET_MIN_RETRIES 3

static void balancer_free(void *b) {
    sg_balancer_free(b);
}

int sg_pool_prepare(struct sg_config *cfg) {
    for (size_t p = 0; p < cfg->npools; p++) {
        struct sg_pool *pool = &cfg->pools[p];
        for (size_t i = 0; i < pool->nservers; i++)
            sg_server_state(pool->servers[i].id);
        if (!pool->shared && !(pool->shared = sg_pool_state(pool->name)))
            return -ENOMEM;
        if (!pool->balancer) {
            pool->balancer = sg_balancer_new(pool);
            if (!pool->balancer)
                return -ENOMEM;
            pool->balancer_free = balancer_free;
        }
    }
    return 0;
}

static int run_algo(const struct sg_pool *pool, enum sg_balance_algo algo, bool backup,
                    const struct sg_pick_key *key, const struct sg_candidate *c, size_t n,
                    uint64_t rnd) {
    struct sg_balancer *b = pool->balancer;
    switch (algo) {
    case SG_BALANCE_WEIGHTED:
        return sg_balance_weighted(b, backup, c, n);
    case SG_BALANCE_LEAST_CONN:
        return sg_balance_least_conn(c, n, rnd);
    case SG_BALANCE_P2C:
        return sg_balance_p2c(c, n, rnd);
    case SG_BALANCE_HASH:
        if (key && key->has_key)
            return sg_balance_hash(b, backup, key->key_hash, c, n);
        return run_algo(pool,
                        pool->hash_fallback == SG_BALANCE_HASH ? SG_BALANCE_ROUND_ROBIN
                                                               : pool->hash_fallback,
                        backup, NULL, c, n, rnd);
    case SG_BALANCE_ROUND_ROBIN:
    default:
        return sg_balance_round_robin(&((struct sg_pool *)pool)->rr, c, n);
    }
}

/* Fills candidates for servers[from..to) and runs the algorithm; returns an
 * index into pool->servers or -1. */
static int pick_range(const struct sg_pool *pool, size_t from, size_t to,
                      const struct sg_pick_key *key, uint64_t tried, uint64_t rnd, uint64_t now) {
    struct sg_candidate c[SG_POOL_MAX];
    size_t n = to - from;
    if (n > SG_POOL_MAX)
        n = SG_POOL_MAX;
    bool any = false, full = false;
    for (size_t k = 0; k < n; k++) {
        const struct sg_server *srv = &pool->servers[from + k];
        const struct sg_server_state *st = sg_server_state(srv->id);
        size_t i = from + k;
        c[k].inflight = atomic_load_explicit(&st->inflight, memory_order_relaxed);
        c[k].weight = sg_server_effective_weight(st, srv->weight, pool->slow_start_ms, now);
        c[k].usable = sg_server_usable(st, now) && !(i < 64 && (tried >> i) & 1);
        if (c[k].usable && srv->max_connections && c[k].inflight >= srv->max_connections) {
            c[k].usable = false;
            full = true;
        }
        any |= c[k].usable;
    }
    if (!any)
        return full ? SG_POOL_FULL : -1;
    int r = run_algo(pool, pool->balance, from > 0, key, c, n, rnd);
    return r < 0 ? -1 : (int)from + r;
}

int sg_pool_pick(const struct sg_pool *pool, const struct sg_pick_key *key, uint64_t tried,
                 uint64_t rnd) {
    uint64_t now = sg_state_now();
    int r = pick_range(pool, 0, pool->nprimary, key, tried, rnd, now);
    if (r == -1 && pool->nservers > pool->nprimary)
        r = pick_range(pool, pool->nprimary, pool->nservers, key, tried, rnd, now);
    return r;
}

/* How many of the pool's servers are ejected now. */
static size_t ejected_count(const struct sg_pool *pool, uint64_t now) {
    size_t n = 0;
    for (size_t i = 0; i < pool->nservers; i++) {
        const struct sg_server_state *st = sg_server_state(pool->servers[i].id);
        if (atomic_load_explicit(&st->ejected_until, memory_order_relaxed) > now)
            n++;
    }
    return n;
}

/* Ejects srv after count failures in a row (threshold: the configured
 * count that triggers it). */
static void eject(const struct sg_pool *pool, const struct sg_server *srv,
                  struct sg_server_state *st, const char *why, uint32_t count, uint32_t threshold) {
    const struct sg_outlier_cfg *o = &pool->outlier;
    uint64_t now = sg_state_now();
    if (atomic_load(&st->ejected_until) > now || o->max_ejection_percent == 0)
        return; /* already out, or ejection off */
    /* As Envoy does: the share is rounded down, but one server may always be
     * ejected (unless the share is 0), so that a pool of one or two can
     * still shed a broken server while backups or retries cover it. */
    size_t limit = pool->nservers * o->max_ejection_percent / 100;
    if (limit == 0 && o->max_ejection_percent > 0)
        limit = 1;
    if (ejected_count(pool, now) + 1 > limit) {
        /* Said once per run of failures, not on every one after. */
        if (count == threshold)
            sg_log_warn("pool %s: server %s would be ejected (%u %s in a row) but "
                        "max_ejection_percent (%u%%) is reached",
                        pool->name, srv->text, count, why, o->max_ejection_percent);
        return;
    }
    uint32_t n = atomic_fetch_add(&st->ejections, 1);
    uint64_t t = o->base_ejection_ms;
    for (uint32_t k = 0; k < n && t < o->max_ejection_ms; k++)
        t *= 2;
    if (t > o->max_ejection_ms)
        t = o->max_ejection_ms;
    atomic_store(&st->ejected_until, now + t);
    atomic_store(&st->recovered_at, now + t);
    atomic_store(&st->consec_errors, 0);
    atomic_store(&st->consec_5xx, 0);
    sg_log_warn("pool %s: server %s ejected for %llu ms (%u %s in a row; ejection #%u)", pool->name,
                srv->text, (unsigned long long)t, count, why, n + 1);
}

void sg_pool_report(const struct sg_pool *pool, size_t i, enum sg_outcome o) {
    const struct sg_server *srv = &pool->servers[i];
    struct sg_server_state *st = sg_server_state(srv->id);
    const struct sg_outlier_cfg *cfg = &pool->outlier;
    atomic_fetch_add_explicit(&st->requests, 1, memory_order_relaxed);
    switch (o) {
    case SG_OUTCOME_OK:
        if (atomic_load_explicit(&st->consec_errors, memory_order_relaxed))
            atomic_store(&st->consec_errors, 0);
        if (atomic_load_explicit(&st->consec_5xx, memory_order_relaxed))
            atomic_store(&st->consec_5xx, 0);
        if (atomic_load_explicit(&st->ejections, memory_order_relaxed) &&
            atomic_load(&st->ejected_until) <= sg_state_now())
            atomic_store(&st->ejections, 0);
        break;
    case SG_OUTCOME_5XX: {
        atomic_fetch_add_explicit(&st->failures, 1, memory_order_relaxed);
        atomic_store(&st->consec_errors, 0);
        uint32_t n = atomic_fetch_add(&st->consec_5xx, 1) + 1;
        if (cfg->consecutive_5xx && n >= cfg->consecutive_5xx)
            eject(pool, srv, st, "5xx answers", n, cfg->consecutive_5xx);
        break;
    }
    case SG_OUTCOME_ERROR: {
        atomic_fetch_add_explicit(&st->failures, 1, memory_order_relaxed);
        uint32_t n = atomic_fetch_add(&st->consec_errors, 1) + 1;
        if (cfg->consecutive_errors && n >= cfg->consecutive_errors)
            eject(pool, srv, st, "errors", n, cfg->consecutive_errors);
        break;
    }
    }
}

static void budget_roll(struct sg_pool *p) {
    uint64_t now = sg_state_now();
    uint64_t start = atomic_load_explicit(&p->budget_window, memory_order_relaxed);
    if (now - start >= BUDGET_WINDOW_MS &&
        atomic_compare_exchange_strong(&p->budget_window, &start, now)) {
        atomic_store(&p->budget_requests, 0);
        atomic_store(&p->budget_retries, 0);
    }
}

void sg_pool_count_request(const struct sg_pool *pool) {
    struct sg_pool *p = (struct sg_pool *)pool; /* the counters are the mutable part */
    budget_roll(p);
    atomic_fetch_add_explicit(&p->budget_requests, 1, memory_order_relaxed);
}

bool sg_pool_retry_allowed(const struct sg_pool *pool) {
    struct sg_pool *p = (struct sg_pool *)pool;
    budget_roll(p);
    uint64_t req = atomic_load_explicit(&p->budget_requests, memory_order_relaxed);
    uint64_t ret = atomic_load_explicit(&p->budget_retries, memory_order_relaxed);
    if (ret >= BUDGET_MIN_RETRIES && (ret + 1) * 100 > req * pool->retry.budget_percent)
        return false;
    atomic_fetch_add_explicit(&p->budget_retries, 1, memory_order_relaxed);
    return true;
}
