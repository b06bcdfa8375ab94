/*
 * The gateway's own admin endpoints (docs/admin-api.md):
 *   GET  /api/v1/pools                                every pool of the running config
 *   GET  /api/v1/pools/NAME                           one pool
 *   POST /api/v1/pools/NAME/servers/ADDR/drain        a server's admin state
 *   POST /api/v1/pools/NAME/servers/ADDR/enable
 *   POST /api/v1/pools/NAME/servers/ADDR/disable
 *   GET  /api/v1/config                               the running config, secrets masked
 *   POST /api/v1/reload                               reload the config file, like SIGHUP
 * All run on the main thread (the admin server's loop), like reloads.
 */
#ifndef SG_ADMIN_API_H
#define SG_ADMIN_API_H

#include <stdbool.h>

#include "admin/admin.h"
#include "config/config.h"

struct sg_admin_api {
    /* the snapshot the workers run (main.c's "running"); read at each request */
    struct sg_config *const *running;
    /* Reloads the config file. Returns 0 when the new config runs; -1 when
     * the file is invalid, with errs filled ("file:line: key: message"; the
     * caller frees them); -2 when it could not be applied (out of memory, a
     * listen address that can't be bound: logged); -3 while stopping. NULL:
     * POST /api/v1/reload answers 503. */
    int (*reload)(struct sg_config_errors *errs);
};

/* The handler for "/api/v1/pools", "/api/v1/config" and "/api/v1/reload"
 * (arg: a struct sg_admin_api that outlives the admin server). Paths that
 * only start with those (such as "/api/v1/poolsX") are left to others. */
bool sg_admin_api(void *arg, const struct sg_admin_request *req, struct sg_admin_response *resp);

#endif
