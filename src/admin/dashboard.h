/*
 * The live dashboard: GET (and HEAD) "/" on the admin listener answers one
 * self-contained HTML page (no external file, no data in it). The page asks
 * for the admin token and polls the admin API with it every 2 s: /metrics,
 * /api/v1/scaling/status, /api/v1/scaling/history, /api/v1/cache/stats.
 * Register it last: "/" is a prefix of every path, and the handler returns
 * false for anything but exactly "/" (the server then answers 404).
 */
#ifndef SG_ADMIN_DASHBOARD_H
#define SG_ADMIN_DASHBOARD_H

#include <stdbool.h>

#include "admin/admin.h"

/* sg_admin_handler for the prefix "/": the page for GET and HEAD of "/",
 * 405 for another method on "/", false for any other path. arg is unused. */
bool sg_dashboard_admin(void *arg, const struct sg_admin_request *req,
                        struct sg_admin_response *resp);

#endif
