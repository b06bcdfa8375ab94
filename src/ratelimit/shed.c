/*
 * The shedding monitor (shed.h). Runs on the main thread only; the level
 * it sets is read by the workers with a relaxed load per request.
 */
#include "ratelimit/shed.h"

#include <string.h>

#include "core/log.h"
#include "pool/state.h"

#define MIN_RESPONSES 20 /* fewer in the window: no p95 */
#define MAX_LEVEL     10 /* priority 10 is never shed */
#define RING          5  /* snapshots: the window is (RING - 1) x 500 ms = 2 s */

/* The p95 (upper bucket bound, ms) of a histogram delta with total
 * responses. */
static uint64_t p95_of(const uint64_t *delta, uint64_t total) {
    uint64_t need = (total * 95 + 99) / 100, acc = 0;
    for (unsigned b = 0; b < SG_LATENCY_BUCKETS; b++) {
        acc += delta[b];
        if (acc >= need)
            return sg_latency_bound(b);
    }
    return UINT64_MAX;
}

static void tick_pool(const struct sg_pool *p, struct sg_pool_state *ps) {
    uint64_t cur[SG_LATENCY_BUCKETS] = {0};
    for (size_t i = 0; i < p->nservers; i++) {
        const struct sg_server_state *st = sg_server_state(p->servers[i].id);
        for (unsigned b = 0; st && b < SG_LATENCY_BUCKETS; b++)
            cur[b] += atomic_load_explicit(&st->latency[b], memory_order_relaxed);
    }
    /* the oldest snapshot in the ring against now */
    uint64_t total = 0, delta[SG_LATENCY_BUCKETS];
    bool valid = ps->shed_len > 0;
    const uint64_t *old = ps->shed_ring[(ps->shed_head + RING - ps->shed_len) % RING];
    for (unsigned b = 0; valid && b < SG_LATENCY_BUCKETS; b++) {
        if (cur[b] < old[b]) { /* servers left the pool: start over */
            valid = false;
            break;
        }
        delta[b] = cur[b] - old[b];
        total += delta[b];
    }
    if (!valid)
        ps->shed_len = 0;
    memcpy(ps->shed_ring[ps->shed_head], cur, sizeof(cur));
    ps->shed_head = (ps->shed_head + 1) % RING;
    if (ps->shed_len < RING - 1)
        ps->shed_len++;

    uint32_t level = atomic_load(&ps->shed_below), next = level;
    uint64_t p95 = valid && total >= MIN_RESPONSES ? p95_of(delta, total) : 0;
    /* levels 0 (nothing shed), then 2 (priority 1) up to 10 (all but 10) */
    if (p95 > p->shed_p95_ms) {
        if (level < MAX_LEVEL)
            next = level == 0 ? 2 : level + 1;
    } else if (level > 0 && p95 * 10 < p->shed_p95_ms * 8) {
        next = level == 2 ? 0 : level - 1;
    }
    if (next == level)
        return;
    atomic_store(&ps->shed_below, next);
    if (next > level)
        sg_log_warn("pool %s: p95 %llu ms above shed_p95 (%llu ms): routes with a priority under "
                    "%u get 503",
                    p->name, (unsigned long long)p95, (unsigned long long)p->shed_p95_ms, next);
    else if (next == 0)
        sg_log_info("pool %s: p95 back under shed_p95 (%llu ms): no route is shed", p->name,
                    (unsigned long long)p->shed_p95_ms);
    else
        sg_log_info("pool %s: p95 %llu ms: routes with a priority under %u get 503", p->name,
                    (unsigned long long)p95, next);
}

void sg_shed_tick(const struct sg_config *cfg) {
    for (size_t i = 0; cfg && i < cfg->npools; i++) {
        const struct sg_pool *p = &cfg->pools[i];
        struct sg_pool_state *ps = p->shared;
        if (ps == NULL)
            continue;
        if (p->shed_p95_ms == 0) {
            if (atomic_load(&ps->shed_below)) /* shed_p95 removed by a reload */
                atomic_store(&ps->shed_below, 0);
            continue;
        }
        tick_pool(p, ps);
    }
}
