/*
 * Proxying one request: from a parsed request head on a client connection to
 * a backend of the matched route's pool and back, streaming bodies both ways
 * with backpressure, reusing keep-alive upstream connections, and tunnelling
 * upgraded connections.
 */
#ifndef SG_PROXY_PROXY_H
#define SG_PROXY_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "http/http.h"
#include "server/server.h"

/*
 * Starts the exchange for the request head msg (head_len bytes at the front
 * of c->rbuf), routed to route. On success returns 0: the head bytes have been
 * consumed and c is in SG_CONN_PROXY. Otherwise returns the HTTP status the
 * gateway must answer (400, 413, ...) and nothing was sent to any backend.
 */
int sg_proxy_start(struct sg_conn *c, const struct sg_http_msg *msg, size_t head_len,
                   const struct sg_route *route);

/* New bytes arrived in c->rbuf while c is in SG_CONN_PROXY or SG_CONN_TUNNEL. */
void sg_proxy_client_data(struct sg_conn *c);
/* True when the whole request of c's exchange has been read from the client. */
bool sg_proxy_request_sent(const struct sg_conn *c);
/* A queued write to the client finished (status < 0: failed). */
void sg_proxy_client_written(struct sg_conn *c, int status);
/* Gives queued requests of w the servers that became free (uv_check callback). */
void sg_proxy_queue_run(uv_check_t *h);
/* c's deadline passed while in SG_CONN_PROXY or SG_CONN_TUNNEL. */
void sg_proxy_timeout(struct sg_conn *c);
/* The client connection is closing: drop the exchange and its upstream. */
void sg_proxy_abort(struct sg_conn *c);

/* Idle upstream connections past keepalive_timeout are closed. */
void sg_upstream_sweep(struct sg_worker *w, uint64_t now);
/* Closes every idle upstream connection of the worker (at exit). */
void sg_upstream_close_idle(struct sg_worker *w);
/* Frees the worker's cached exchange objects (at exit). */
void sg_proxy_worker_cleanup(struct sg_worker *w);

#endif
