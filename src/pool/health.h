/*
 * Active health checks. Run on the main thread's loop, off the request
 * path: each checked server gets a timer; every interval the checker opens a
 * connection, sends one request (pool.health.method/path), reads the status
 * line and counts a pass (status within expect) or a failure (connect
 * error, timeout, bad status). rise passes in a row mark a server UP, fall
 * failures DOWN, in the shared server state (state.h). Each change is
 * logged with its reason.
 */
#ifndef SG_POOL_HEALTH_H
#define SG_POOL_HEALTH_H

#include <uv.h>

#include "config/config.h"

/* Starts checking the servers of cfg's pools that have health enabled.
 * Call again with each new snapshot (reload): servers no longer checked
 * stop, new ones start, unchanged ones keep their timers and counters. */
void sg_health_apply(uv_loop_t *loop, const struct sg_config *cfg);

/* Stops every check and closes its handles (at exit). */
void sg_health_stop(void);

/* Counts of state changes so far (for metrics and tests). */
uint64_t sg_health_transitions(void);

#endif
