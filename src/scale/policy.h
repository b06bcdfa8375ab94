/*
 * Autoscaling policy: a pure function from a pool's metrics window to the
 * number of instances it should have, with a human-readable reason. It does
 * no I/O, reads no clock (the caller passes now_ms) and allocates nothing;
 * starting, draining and stopping instances live in the supervisor, which
 * calls sg_scale_decide once per decision period and acts on the result.
 *
 * The algorithm is the Kubernetes Horizontal Pod Autoscaler's:
 *   - per metric with a target, desired = ceil(ready * value / target)
 *     (queue depth: ceil(depth / target per instance)); a metric whose ratio
 *     is within the tolerance (default 10 %) recommends the current count;
 *   - the recommendation is the maximum over metrics;
 *   - starting instances are not capacity (metrics are per ready instance),
 *     but they count as already added: a scale-up recommendation that does
 *     not exceed ready + starting keeps the current count;
 *   - scale-down goes to the highest recommendation seen over the
 *     stabilization window (default 300 s), scale-up to the lowest over its
 *     own window (default 0, i.e. immediately);
 *   - per period, scale-up is limited to max(+up_percent %, +up_pods) and
 *     scale-down to -down_pods, counted from the count at the period start;
 *   - the result is clamped to [min, max]; a count outside it is brought
 *     back in one step.
 */
#ifndef SG_SCALE_POLICY_H
#define SG_SCALE_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Upper bound on any recommendation (a ratio gone wild is capped here). */
#define SG_SCALE_MAX_INSTANCES 100000u
/* Entries kept for the stabilization windows: 300 s at one decision per
 * second needs 300. Decisions closer together than window / (MAX - 1) share
 * an entry (highest and lowest kept, expiring with the newest), so a faster
 * caller can only see a change held up to that much longer, never made early. */
#define SG_SCALE_WINDOW_MAX 600u

/* Targets per metric; 0 (or less) = that metric does not drive scaling. */
struct sg_scale_targets {
    double rps_per_instance;      /* requests/s per ready instance */
    double p95_ms;                /* pool p95 latency, milliseconds */
    double inflight_per_instance; /* requests in flight per ready instance */
    double cpu_percent;           /* CPU % per instance */
    double memory_percent;        /* memory % per instance */
    double error_rate;            /* errors / requests, 0..1 */
    double queue_per_instance;    /* queue items one instance should have to itself */
};

struct sg_scale_limits {
    uint32_t min, max;              /* max < min is read as max = min */
    double tolerance;               /* |ratio - 1| <= tolerance (+1e-9): no change (0.1) */
    uint32_t up_percent;            /* scale-up per period: +up_percent % ... (100) */
    uint32_t up_pods;               /* ... or +up_pods, the larger (4); both 0: no limit */
    uint32_t down_pods;             /* scale-down per period (1); 0: no limit */
    uint64_t down_stabilization_ms; /* (300000) */
    uint64_t up_stabilization_ms;   /* (0) */
    uint64_t period_ms;             /* decision period the rate limits count in (1000) */
};

/* One decision's inputs: metrics averaged over the sliding window and over
 * the ready instances (NaN or negative values are read as "no data"). */
struct sg_scale_input {
    uint32_t ready;    /* instances passing health checks */
    uint32_t starting; /* started, not yet ready */
    double rps;        /* requests/s per ready instance */
    double p95_ms;     /* pool p95 latency */
    double inflight;   /* in flight per ready instance */
    double cpu_percent;
    double memory_percent;
    double error_rate;
    bool has_queue;
    double queue_depth; /* total items waiting (Redis list length, command output) */
    uint64_t now_ms;    /* any monotonic clock, same for every call */
};

struct sg_scale_rec {
    uint64_t first_ms, last_ms; /* first and last recommendation merged in */
    uint32_t hi, lo;            /* highest and lowest of them */
};

/* Per-pool memory of past decisions, owned by the caller (embed it in the
 * pool's supervisor state); initialize with sg_scale_state_init. */
struct sg_scale_state {
    struct sg_scale_rec ring[SG_SCALE_WINDOW_MAX]; /* oldest at head */
    uint32_t head, len;
    bool period_valid;
    uint64_t period_start_ms;
    uint32_t period_base; /* ready + starting when the period began */
};

void sg_scale_state_init(struct sg_scale_state *st);
/* The defaults above, with min 1 and max SG_SCALE_MAX_INSTANCES. */
void sg_scale_limits_default(struct sg_scale_limits *l);

/* Returns the desired instance count (ready + starting the pool should
 * have) and writes a one-line reason into reason[reason_len] (reason may be
 * NULL). Records the recommendation in st. */
uint32_t sg_scale_decide(struct sg_scale_state *st, const struct sg_scale_limits *l,
                         const struct sg_scale_targets *t, const struct sg_scale_input *in,
                         char *reason, size_t reason_len);

#endif
