/*
 * Shedding on latency: a pool with shed_p95 sheds its lowest-priority
 * routes while its p95 response time is above the target. Every
 * SG_SHED_TICK_MS the main thread takes the pool's p95 over the last two
 * seconds (the latency histograms of its servers, pool/state.h); above the
 * target (with at least 20 responses) the pool's shed level rises by one,
 * under 80 % of it (or with too few responses to tell) it falls by one.
 * Requests on a route whose priority is under the level get 503 with
 * Retry-After: 1 before anything else is done for them; priority 10 is
 * never shed. Each change of level is logged.
 */
#ifndef SG_RATELIMIT_SHED_H
#define SG_RATELIMIT_SHED_H

#include "config/config.h"

#define SG_SHED_TICK_MS 500

void sg_shed_tick(const struct sg_config *cfg);

#endif
