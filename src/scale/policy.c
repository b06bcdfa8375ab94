/*
 * Autoscaling policy (see policy.h): the Kubernetes HPA's recommendation,
 * stabilization and rate limits as one pure function. The supervisor owns
 * struct sg_scale_state per pool and calls sg_scale_decide once per period.
 */
#include "scale/policy.h"

#include <stdio.h>
#include <string.h>

/* 1.1 - 1.0 is 0.10000000000000009: keep the documented bound inclusive. */
#define TOL_EPS 1e-9

enum metric { M_RPS = 0, M_P95, M_INFLIGHT, M_CPU, M_MEMORY, M_ERRORS, M_QUEUE, M_COUNT };

static const char *const metric_name[M_COUNT] = {"rps",    "p95",        "inflight", "cpu",
                                                 "memory", "error rate", "queue"};
static const char *const metric_unit[M_COUNT] = {"/instance", " ms", "/instance", "%", "%", "", ""};

/* The metric that drove the recommendation, for the reason line. */
struct driver {
    int m; /* enum metric, -1 if none */
    double value, target, ratio;
};

void sg_scale_state_init(struct sg_scale_state *st) {
    memset(st, 0, sizeof(*st));
}

void sg_scale_limits_default(struct sg_scale_limits *l) {
    *l = (struct sg_scale_limits){.min = 1,
                                  .max = SG_SCALE_MAX_INSTANCES,
                                  .tolerance = 0.1,
                                  .up_percent = 100,
                                  .up_pods = 4,
                                  .down_pods = 1,
                                  .down_stabilization_ms = 300000,
                                  .up_stabilization_ms = 0,
                                  .period_ms = 1000};
}

static bool usable(double v) {
    return v == v && v >= 0; /* not NaN, not negative */
}

/* ceil(x) without libm, capped at SG_SCALE_MAX_INSTANCES; x >= 0. */
static uint32_t ceil_count(double x) {
    if (!(x < (double)SG_SCALE_MAX_INSTANCES))
        return SG_SCALE_MAX_INSTANCES;
    uint32_t n = (uint32_t)x;
    return (double)n < x ? n + 1 : n;
}

static double absd(double x) {
    return x < 0 ? -x : x;
}

/* One metric's recommendation, following HPA's replica calculator: the
 * current count inside the tolerance, and never a change against the
 * ratio's direction (a ratio above 1 whose ceil(ready * ratio) is covered by
 * the starting instances keeps the current count). */
static uint32_t metric_rec(int m, double value, double target, uint32_t ready, uint32_t current,
                           double tol, double *ratio) {
    uint32_t want;
    if (m == M_QUEUE) {
        want = ceil_count(value / target);
        *ratio = ready ? value / (target * ready) : (value > 0 ? 1e9 : 0);
    } else {
        *ratio = value / target;
        want = ceil_count(ready * *ratio);
    }
    if (absd(*ratio - 1.0) <= tol + TOL_EPS)
        return current;
    if ((*ratio > 1.0 && want < current) || (*ratio < 1.0 && want > current))
        return current;
    return want;
}

/* Records rec at now: drops entries older than keep_ms, merges into the
 * newest entry when it began less than keep_ms / (MAX - 1) ago (so the ring
 * cannot fill within keep_ms), and as a last resort (clock going backwards)
 * folds the oldest entry into the next one. */
static void window_add(struct sg_scale_state *st, uint64_t keep_ms, uint64_t now, uint32_t rec) {
    while (st->len) {
        const struct sg_scale_rec *e = &st->ring[st->head];
        if (now < e->last_ms || now - e->last_ms < keep_ms)
            break;
        st->head = (st->head + 1) % SG_SCALE_WINDOW_MAX;
        st->len--;
    }
    uint64_t bucket = (keep_ms + SG_SCALE_WINDOW_MAX - 2) / (SG_SCALE_WINDOW_MAX - 1);
    if (st->len) {
        struct sg_scale_rec *last = &st->ring[(st->head + st->len - 1) % SG_SCALE_WINDOW_MAX];
        if (now >= last->first_ms && now - last->first_ms < bucket) {
            if (rec > last->hi)
                last->hi = rec;
            if (rec < last->lo)
                last->lo = rec;
            if (now > last->last_ms)
                last->last_ms = now;
            return;
        }
    }
    if (st->len == SG_SCALE_WINDOW_MAX) {
        struct sg_scale_rec *old = &st->ring[st->head];
        struct sg_scale_rec *next = &st->ring[(st->head + 1) % SG_SCALE_WINDOW_MAX];
        if (old->hi > next->hi)
            next->hi = old->hi;
        if (old->lo < next->lo)
            next->lo = old->lo;
        st->head = (st->head + 1) % SG_SCALE_WINDOW_MAX;
        st->len--;
    }
    st->ring[(st->head + st->len) % SG_SCALE_WINDOW_MAX] =
        (struct sg_scale_rec){.first_ms = now, .last_ms = now, .hi = rec, .lo = rec};
    st->len++;
}

/* Highest recommendation younger than down_ms and lowest younger than up_ms,
 * both including the one just added. */
static void window_scan(const struct sg_scale_state *st, uint64_t now, uint64_t down_ms,
                        uint64_t up_ms, uint32_t *hi, uint32_t *lo) {
    for (uint32_t i = 0; i < st->len; i++) {
        const struct sg_scale_rec *e = &st->ring[(st->head + i) % SG_SCALE_WINDOW_MAX];
        uint64_t age = now > e->last_ms ? now - e->last_ms : 0;
        if (age < down_ms && e->hi > *hi)
            *hi = e->hi;
        if (age < up_ms && e->lo < *lo)
            *lo = e->lo;
    }
}

static size_t put_driver(char *buf, size_t len, const struct driver *d) {
    if (d->m < 0)
        return (size_t)snprintf(buf, len, "no metric");
    char cmp = d->ratio > 1.0 ? '>' : d->ratio < 1.0 ? '<' : '=';
    if (d->m == M_QUEUE)
        return (size_t)snprintf(buf, len, "queue %.4g, target %.4g/instance (ratio %.2f)", d->value,
                                d->target, d->ratio);
    return (size_t)snprintf(buf, len, "%s %.4g%s %c target %.4g%s (ratio %.2f)", metric_name[d->m],
                            d->value, metric_unit[d->m], cmp, d->target, metric_unit[d->m],
                            d->ratio);
}

uint32_t sg_scale_decide(struct sg_scale_state *st, const struct sg_scale_limits *l,
                         const struct sg_scale_targets *t, const struct sg_scale_input *in,
                         char *reason, size_t reason_len) {
    char scratch[1];
    if (!reason || !reason_len) {
        reason = scratch;
        reason_len = sizeof(scratch);
    }
    uint32_t lo_b = l->min, hi_b = l->max < l->min ? l->min : l->max;
    uint64_t cur64 = (uint64_t)in->ready + in->starting;
    uint32_t current = cur64 > SG_SCALE_MAX_INSTANCES ? SG_SCALE_MAX_INSTANCES : (uint32_t)cur64;
    uint64_t now = in->now_ms;

    if (!st->period_valid || now < st->period_start_ms ||
        now - st->period_start_ms >= l->period_ms) {
        st->period_valid = true;
        st->period_start_ms = now;
        st->period_base = current;
    }
    if (current > hi_b || current < lo_b) { /* out of range: one step back, as HPA */
        uint32_t to = current > hi_b ? hi_b : lo_b;
        snprintf(reason, reason_len, "%u instances %s %s %u: %u -> %u", current,
                 current > hi_b ? "above" : "below", current > hi_b ? "max" : "min", to, current,
                 to);
        return to;
    }

    /* Recommendation: the maximum over metrics with a target and data. */
    const double value[M_COUNT] = {in->rps,
                                   in->p95_ms,
                                   in->inflight,
                                   in->cpu_percent,
                                   in->memory_percent,
                                   in->error_rate,
                                   in->has_queue ? in->queue_depth : -1};
    const double target[M_COUNT] = {
        t->rps_per_instance, t->p95_ms,     t->inflight_per_instance, t->cpu_percent,
        t->memory_percent,   t->error_rate, t->queue_per_instance};
    double tol = usable(l->tolerance) ? l->tolerance : 0;
    struct driver drv = {.m = -1};
    uint32_t raw = 0;
    bool any = false, all_tol = true;
    for (int m = 0; m < M_COUNT; m++) {
        if (!(target[m] > 0) || !usable(value[m]))
            continue;
        if (m != M_QUEUE && in->ready == 0)
            continue; /* no ready instance: per-instance metrics mean nothing */
        double ratio;
        uint32_t r = metric_rec(m, value[m], target[m], in->ready, current, tol, &ratio);
        if (absd(ratio - 1.0) > tol + TOL_EPS)
            all_tol = false;
        if (!any || r > raw || (r == raw && absd(ratio - 1) > absd(drv.ratio - 1))) {
            raw = r;
            drv = (struct driver){.m = m, .value = value[m], .target = target[m], .ratio = ratio};
        }
        any = true;
    }
    if (!any) {
        raw = current;
        if (in->ready == 0 && in->starting == 0) /* scale from zero on any sign of load */
            raw = (usable(in->rps) && in->rps > 0) || (usable(in->inflight) && in->inflight > 0) ||
                          (in->has_queue && usable(in->queue_depth) && in->queue_depth > 0)
                      ? 1
                      : 0;
    }

    /* Stabilization: down to the highest recent recommendation, up to the
     * lowest; the result stays at current when the windows disagree. */
    uint64_t keep = l->down_stabilization_ms > l->up_stabilization_ms ? l->down_stabilization_ms
                                                                      : l->up_stabilization_ms;
    window_add(st, keep, now, raw);
    uint32_t whi = raw, wlo = raw;
    window_scan(st, now, l->down_stabilization_ms, l->up_stabilization_ms, &whi, &wlo);
    uint32_t stab = current;
    if (stab < wlo)
        stab = wlo;
    if (stab > whi)
        stab = whi;

    /* Rate limits from the period's starting count, then [min, max]. */
    uint32_t out = stab;
    const char *limited = NULL;
    uint32_t base = st->period_base;
    if (stab > current) {
        uint64_t upl = UINT64_MAX;
        if (l->up_percent || l->up_pods) {
            uint64_t by_pct = ((uint64_t)base * l->up_percent + 99) / 100;
            upl = (uint64_t)base + (by_pct > l->up_pods ? by_pct : l->up_pods);
        }
        if (upl < current)
            upl = current;
        uint32_t allowed = hi_b;
        limited = "the maximum";
        if (upl < allowed) {
            allowed = (uint32_t)upl;
            limited = "the scale-up rate";
        }
        if (stab > allowed)
            out = allowed;
    } else if (stab < current) {
        uint32_t dl = 0;
        if (l->down_pods)
            dl = base > l->down_pods ? base - l->down_pods : 0;
        if (dl > current)
            dl = current;
        uint32_t allowed = lo_b;
        limited = "the minimum";
        if (dl > allowed) {
            allowed = dl;
            limited = "the scale-down rate";
        }
        if (stab < allowed)
            out = allowed;
    }

    size_t n = put_driver(reason, reason_len, &drv);
    char *p = reason + (n < reason_len ? n : reason_len - 1);
    size_t left = reason_len - (size_t)(p - reason);
    if (out == current) {
        if (raw < current && whi >= current)
            snprintf(p, left,
                     ": scale-down held by stabilization window (highest recommendation %u in "
                     "the last %llu s)",
                     whi, (unsigned long long)(l->down_stabilization_ms / 1000));
        else if (raw > current && wlo <= current)
            snprintf(p, left,
                     ": scale-up held by stabilization window (lowest recommendation %u in the "
                     "last %llu s)",
                     wlo, (unsigned long long)(l->up_stabilization_ms / 1000));
        else if (any && all_tol)
            snprintf(p, left, ": within tolerance, %u", current);
        else if (stab != current)
            snprintf(p, left, ": %u, wanted %u (limited by %s)", current, stab, limited);
        else
            snprintf(p, left, ": steady at %u", current);
    } else if (out != stab) {
        snprintf(p, left, ": %u -> %u (limited from %u by %s)", current, out, stab, limited);
    } else if (stab != raw) {
        snprintf(
            p, left, ": %u -> %u (stabilized from %u over the last %llu s)", current, out, raw,
            (unsigned long long)((raw < stab ? l->down_stabilization_ms : l->up_stabilization_ms) /
                                 1000));
    } else {
        snprintf(p, left, ": %u -> %u", current, out);
    }
    return out;
}
