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
 * extra_hdr (extra_len bytes of header lines, each ending in CRLF; may be
 * NULL) is added to the response (the RateLimit fields). When the route has
 * max_in_flight, the caller has counted the request in route->in_flight and
 * the exchange uncounts it when it ends (not when 0 is not returned).
 */
int sg_proxy_start(struct sg_conn *c, const struct sg_http_msg *msg, size_t head_len,
                   const struct sg_route *route, const char *extra_hdr, size_t extra_len);

/* The request's value for a key source (hash_key, rate-limit keys): the
 * client address bytes (SG_HASH_IP), the path, or the value of header,
 * cookie or query parameter name. False when the request has none (or it
 * is empty). *out points into msg (or c). */
bool sg_request_value(enum sg_hash_source src, const char *name, size_t nlen,
                      const struct sg_conn *c, const struct sg_http_msg *msg, const char **out,
                      size_t *out_len);

/* A new request id: 32 hex digits and a NUL. */
void sg_request_id(struct sg_worker *w, char out[33]);

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
