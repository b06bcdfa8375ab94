/*
 * Request counters and the Prometheus exposition (docs/metrics.md).
 *
 * A series is a (route, pool) pair with a process-wide id, made when a
 * config is loaded (sg_stats_assign, main thread) and never reused, so
 * counters carry over reloads of an unchanged route. Each worker thread
 * has its own block of counters per series, written by that thread alone
 * (relaxed atomic loads and stores, no read-modify-write, no lock) and
 * summed by the scrape on the main thread. Gauges of a worker (its
 * connections) are published by the worker's sweep timer.
 */
#ifndef SG_STATS_STATS_H
#define SG_STATS_STATS_H

#include <stdbool.h>
#include <stdint.h>

#include "config/config.h"
#include "core/text.h"

#define SG_STATS_MAX_SERIES  2048 /* (route, pool) pairs; more share the last one */
#define SG_STATS_NONE        0    /* the series of requests that matched no route */
#define SG_STATS_MAX_WORKERS 256

struct sg_stats_worker;

/* Gives every route of cfg its series ids (route->stats_id for its pool,
 * ->stats_read_id for its read_pool). Main thread, at load. */
void sg_stats_assign(struct sg_config *cfg);

/* The block of worker index (made on first use; main thread, before the
 * worker runs). */
struct sg_stats_worker *sg_stats_worker(unsigned index);

/* A request of series answered with status, duration_ns after its head
 * was complete. Worker thread (its own block). */
void sg_stats_request(struct sg_stats_worker *sw, uint32_t series, int status,
                      uint64_t duration_ns);

enum sg_stats_reject { SG_STATS_RATE_LIMITED = 0, SG_STATS_SHED_P95, SG_STATS_SHED_IN_FLIGHT };
/* A request of series rejected by the gateway for that reason (counted
 * besides sg_stats_request). */
void sg_stats_reject(struct sg_stats_worker *sw, uint32_t series, enum sg_stats_reject why);

/* The worker's gauges, published by its sweep: client connections by
 * state (reading, idle, active, closing) and upstream connections. */
void sg_stats_publish(struct sg_stats_worker *sw, const uint32_t clients[4], uint32_t up_active,
                      uint32_t up_idle);

/* What the scrape needs besides the counters: the running config, the
 * autoscaler's and the Redis link's parts (main thread). */
struct sg_stats_scrape {
    const struct sg_config *cfg;
    void (*scaler)(void *arg, struct sg_text *out); /* may be NULL */
    void *scaler_arg;
    int redis_up; /* -1: no redis section */
};

/* Appends the whole exposition to out. Main thread. */
void sg_stats_render(const struct sg_stats_scrape *sc, struct sg_text *out);

/* The labels of series (valid until sg_stats_cleanup; any thread that got
 * series from a config snapshot). */
void sg_stats_labels(uint32_t series, const char **route, const char **pool);

/* Frees the worker blocks and the registry (at exit, after the workers). */
void sg_stats_cleanup(void);

#endif
