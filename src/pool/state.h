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

enum sg_health { SG_HEALTH_UP = 0, SG_HEALTH_DOWN };
enum sg_admin { SG_ADMIN_ENABLED = 0, SG_ADMIN_DRAINING, SG_ADMIN_DISABLED };

struct sg_server_state {
    _Atomic uint32_t inflight;      /* requests in flight to it, all workers */
    _Atomic uint8_t health;         /* enum sg_health (active checks); starts UP */
    _Atomic uint8_t admin;          /* enum sg_admin */
    _Atomic uint64_t ejected_until; /* ms (sg_state_now) until which it is ejected; 0 = not */
    _Atomic uint32_t ejections;     /* times ejected in a row (backoff); reset on success */
    _Atomic uint32_t consec_errors; /* connect errors, resets, timeouts in a row */
    _Atomic uint32_t consec_5xx;    /* 5xx answers in a row */
    _Atomic uint64_t recovered_at;  /* ms when it last became usable again (slow start) */
    _Atomic uint32_t check_ok;      /* health checker: passes in a row */
    _Atomic uint32_t check_fail;    /* health checker: failures in a row */
    _Atomic uint64_t requests;      /* counters for metrics */
    _Atomic uint64_t failures;
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
int sg_server_set_admin(uint32_t id, enum sg_admin a);

#endif
