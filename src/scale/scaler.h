/*
 * The autoscaler: for every pool with a "scale" section it keeps the
 * instances (process driver: child processes through the supervisor;
 * command driver: the orchestrator's instances as its `list` command prints
 * them), measures the pool once per period from the shared server state
 * (requests, failures, latency histogram, in flight) and /proc, asks the
 * policy (policy.h) for the count, and acts: starts instances, drains and
 * stops them, or runs `scale_to`.
 *
 * Instances reach the workers through config snapshots: the running
 * snapshot is derived (sg_config_derive) from the loaded one with each
 * scaled pool's primaries replaced by its instances, and every change of an
 * instance list publishes a new derived snapshot through the callback, the
 * same way a reload does. A new instance is published with its health DOWN,
 * so the health checker (health.c) lets traffic reach it only once its
 * check passes; a draining one has admin state DRAINING until its requests
 * in flight are done (or drain_timeout), then it leaves the snapshot and is
 * stopped.
 *
 * Everything runs on the main thread's loop (the supervisor needs it: see
 * supervisor.h about PR_SET_PDEATHSIG).
 */
#ifndef SG_SCALE_SCALER_H
#define SG_SCALE_SCALER_H

#include <jansson.h>
#include <stdbool.h>
#include <uv.h>

#include "config/config.h"

struct sg_scaler;
struct sg_redis;

/* Receives a new snapshot to run (one reference, now the callee's). */
typedef void (*sg_scaler_publish_cb)(struct sg_config *cfg, void *arg);

struct sg_scaler *sg_scaler_new(uv_loop_t *loop, sg_scaler_publish_cb publish, void *arg);

/* Takes a freshly loaded snapshot (start-up or reload; the scaler keeps a
 * reference): scaled pools that are new start their instances, removed ones
 * stop theirs, changed settings apply. Returns the snapshot to run (a new
 * reference for the caller), or NULL on ENOMEM. */
struct sg_config *sg_scaler_apply(struct sg_scaler *s, struct sg_config *loaded);

/* The shared Redis link (NULL: none): command-driver pools then run their
 * policy only while this gateway holds the pool's lease. */
void sg_scaler_set_redis(struct sg_scaler *s, struct sg_redis *r, uint64_t lease_ttl_ms);

/* The graceful end (SIGTERM to the gateway, after its requests are done):
 * every instance the gateway runs gets SIGTERM, then SIGKILL after its
 * pool's stop_grace; none starts any more; done(arg) runs on the loop once
 * all have exited (at once when there are none). Then sg_scaler_free. */
void sg_scaler_shutdown(struct sg_scaler *s, void (*done)(void *), void *arg);

/* Stops every instance (SIGKILL to their process groups, as at exit) and
 * frees s once its handles have closed; the caller keeps running the loop. */
void sg_scaler_free(struct sg_scaler *s);

/* Appends the autoscaler's metrics in the Prometheus text format
 * (docs/metrics.md, Autoscaling), each family with its # HELP and # TYPE
 * lines even when it has no sample: scalegate_pool_instances{pool,state}
 * (starting, ready, draining, stopping: every state for every scaled pool,
 * 0 included), scalegate_pool_desired_instances, scalegate_pool_min_instances,
 * scalegate_pool_max_instances, scalegate_scaling_events_total{pool,direction}
 * (up, down: decisions that changed the count, kept across reloads) and
 * scalegate_scaling_leader (1 when this gateway runs the pool's policy).
 * Pools in config order. Main thread only. s may be NULL: then only the
 * # HELP and # TYPE lines. */
struct sg_text;
void sg_scaler_prometheus(struct sg_scaler *s, struct sg_text *out);

/* The admin API under /api/v1/scaling/ (an sg_admin_handler). */
struct sg_admin_request;
struct sg_admin_response;
bool sg_scaler_admin(void *arg, const struct sg_admin_request *req, struct sg_admin_response *resp);

#endif
