/*
 * Runtime state of backend servers, shared by every worker thread and
 * surviving config reloads: one record per server address, indexed by the
 * address's sg_intern id. Everything in it is atomic; no lock is taken on
 * the request path. The health checker (health.c), passive outlier
 * detection (the proxy) and the admin functions below write it; the
 * balancers read it through sg_server_usable and friends.
 */
#ifndef SG_POOL_STATE_H
#define SG_POOL_STATE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* Response-time histogram: bucket b counts times t (ms) with
 * sg_latency_bucket(t) == b, four buckets per doubling (about 19 % wide),
 * from 0 ms up to about 65 s (the last bucket takes everything above). */
#define SG_LATENCY_BUCKETS 64

enum sg_health { SG_HEALTH_UP = 0, SG_HEALTH_DOWN };
enum sg_admin_state { SG_ADMIN_ENABLED = 0, SG_ADMIN_DRAINING, SG_ADMIN_DISABLED };

struct sg_server_state {
    _Atomic uint32_t inflight;         /* requests in flight to it, all workers */
    _Atomic uint8_t health;            /* enum sg_health (active checks); starts UP */
    _Atomic uint8_t admin;             /* enum sg_admin_state */
    _Atomic uint64_t ejected_until;    /* ms (sg_state_now) until which it is ejected; 0 = not */
    _Atomic uint32_t ejections;        /* times ejected in a row (backoff); reset on success */
    _Atomic uint32_t consec_errors;    /* connect errors, resets, timeouts in a row */
    _Atomic uint32_t consec_5xx;       /* 5xx answers in a row */
    _Atomic uint64_t recovered_at;     /* ms when it last became usable again (slow start) */
    _Atomic uint32_t check_ok;         /* health checker: passes in a row */
    _Atomic uint32_t check_fail;       /* health checker: failures in a row */
    _Atomic uint64_t fast_check_until; /* ms: while DOWN before this, checked every 100 ms
                                          (set by the autoscaler for a starting instance) */
    _Atomic uint64_t requests;         /* counters for metrics */
    _Atomic uint64_t failures;
    _Atomic uint64_t latency[SG_LATENCY_BUCKETS]; /* response times (sg_latency_bucket) */
    _Atomic uint64_t latency_sum_ms;              /* their sum */
};

/* Runtime state of a pool shared by every snapshot of it (by name), never
 * freed; pool->shared points here (sg_pool_prepare). */
struct sg_pool_state {
    char name[64];
    _Atomic uint64_t demand;     /* requests that found no usable server and waited */
    _Atomic uint32_t shed_below; /* shed_p95: routes with a priority under this get 503 */
    /* the shedding monitor's own (main thread only): histogram sums, last 2 s */
    uint64_t shed_ring[5][SG_LATENCY_BUCKETS]; /* shed.c: RING */
    uint32_t shed_head, shed_len;
};

/* The record for id, created on first use (thread-safe). Records are never
 * freed or moved, so the pointer may be kept. NULL if id >= 2^20 or memory
 * ran out creating it. */
struct sg_server_state *sg_server_state(uint32_t id);

/* Monotonic milliseconds (shared clock for ejection and slow start). */
uint64_t sg_state_now(void);

/* Usable for new requests: health UP, admin ENABLED, not ejected at now. */
bool sg_server_usable(const struct sg_server_state *st, uint64_t now);

/* Weight after slow start: weight scaled by the share of slow_start_ms
 * elapsed since recovered_at (at least 1). */
uint32_t sg_server_effective_weight(const struct sg_server_state *st, uint32_t weight,
                                    uint64_t slow_start_ms, uint64_t now);

/* Admin: drain (in-flight requests finish, no new ones), enable, disable.
 * Return 0 (-EINVAL for a bad value). Enabling a draining or disabled
 * server starts its slow start. Called by the admin API and the autoscaler. */
int sg_server_set_admin(uint32_t id, enum sg_admin_state a);

/* Histogram bucket of a response time in ms, and the largest time a bucket
 * holds (the bucket's upper bound; UINT64_MAX for the last one). */
unsigned sg_latency_bucket(uint64_t ms);
uint64_t sg_latency_bound(unsigned bucket);
/* Counts a response that took ms (first response byte after the request
 * arrived, queueing included). */
void sg_server_observe(struct sg_server_state *st, uint64_t ms);

/* The record of pool name (created on first use; at most 1024 pools; name
 * cut to 63 bytes). NULL when out of room or memory. */
struct sg_pool_state *sg_pool_state(const char *name);
/* Called (any thread) when a request waits for a scaled pool's first
 * instance; the autoscaler sets it to wake its loop. */
extern void (*sg_pool_demand_hook)(void);

#endif
