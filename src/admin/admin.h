/*
 * The admin API's HTTP server: a small HTTP/1.1 server on the main thread's
 * loop that authenticates requests with a bearer token and hands them to
 * handlers registered by path prefix (scaling, pools, cache, metrics...).
 * Requests are read whole (head at most SG_ADMIN_MAX_HEAD bytes, body at
 * most SG_ADMIN_MAX_BODY bytes, Content-Length or chunked) before a handler
 * runs; handlers are synchronous and answer JSON or a text body.
 *
 * GET (and HEAD) /health is answered here without a token, and GET (and
 * HEAD) / goes to the handlers without one (the dashboard page, which holds
 * no data). Every other request needs "Authorization: Bearer <token>"; with
 * no token configured every such request is refused (the API is never open
 * by default).
 *
 * Every response carries Content-Length (except 204 and 304), Cache-Control:
 * no-store and a Date; error responses have a JSON body {"error": "..."}.
 * Malformed requests, limits (431, 413) and timeouts (408) close the
 * connection after the answer; so does a 401 for a request with a body,
 * which is never read without the token.
 */
#ifndef SG_ADMIN_ADMIN_H
#define SG_ADMIN_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <jansson.h>
#include <uv.h>

#include "http/http.h"

#define SG_ADMIN_MAX_HEAD       16384   /* longer request head: 431 */
#define SG_ADMIN_MAX_BODY       1048576 /* larger request body: 413 */
#define SG_ADMIN_MAX_CONNS      256     /* more at once are closed at accept */
#define SG_ADMIN_HEADER_TIMEOUT 10000   /* ms to receive a head once it started: 408 */
#define SG_ADMIN_IDLE_TIMEOUT   60000   /* ms idle (keep-alive, between body reads) */

struct sg_admin_request {
    enum sg_http_method method;
    const char *path; /* as sent (not percent-decoded), without the query */
    size_t path_len;
    const char *query; /* after '?', may be empty (never NULL) */
    size_t query_len;
    const char *body; /* the whole body, de-chunked; never NULL (body_len 0 if none) */
    size_t body_len;
};

struct sg_admin_response {
    int status; /* 200 on entry; 100-199 are not allowed (answered as 500) */
    /* The handler sets it; the server takes the reference and serializes it
     * (Content-Type: application/json, compact, followed by "\n"). */
    json_t *json;
    /* Alternatively a malloc'ed body that the server frees, with its type
     * (NULL: text/plain; charset=utf-8). Ignored (and freed) if json is set. */
    char *text;
    size_t text_len;
    const char *content_type;
};

/*
 * Returns true when it handled the request (resp filled); false to let the
 * next handler try (anything put in resp is released), and the server
 * answers 404 {"error":"not found"} when none handled it. A handled request
 * with resp->status >= 400 and no body gets {"error": "<reason phrase>"}.
 * req and the bytes it points to are valid only during the call.
 */
typedef bool (*sg_admin_handler)(void *arg, const struct sg_admin_request *req,
                                 struct sg_admin_response *resp);

struct sg_admin;

/*
 * Binds and listens on addr, on loop (meant to be the main thread's loop).
 * token: the bearer token, copied; NULL or "" refuses every request other
 * than GET /health with 401. Returns the server, or NULL with *err set to a
 * negative errno (-EADDRINUSE, -EACCES...). Bind and listen are done with
 * plain syscalls, so their failures leave nothing on the loop.
 */
struct sg_admin *sg_admin_start(uv_loop_t *loop, const struct sockaddr *addr, const char *token,
                                int *err);

/* Whether GET /metrics is answered without the token (admin.public_metrics). */
void sg_admin_set_public_metrics(struct sg_admin *a, bool public_metrics);

/* Replaces the token (copied; NULL or "" refuses everything but /health),
 * for a config reload. Requests already authorized are not affected. */
void sg_admin_set_token(struct sg_admin *a, const char *token);

/*
 * Adds a handler for the paths starting with prefix (copied; e.g.
 * "/api/v1/scaling/"). Handlers are tried in the order they were added.
 * Returns 0, -EINVAL for an empty prefix or a NULL handler, or -ENOMEM.
 */
int sg_admin_add_handler(struct sg_admin *a, const char *prefix, sg_admin_handler h, void *arg);

/*
 * Closes the listener and every connection (queued responses are dropped);
 * a is freed once all its handles are closed, while the caller keeps
 * running the loop. NULL is ignored. May be called from a handler.
 */
void sg_admin_close(struct sg_admin *a);

/* The bound TCP port (useful after binding port 0), or a negative errno. */
int sg_admin_port(const struct sg_admin *a);

/* Connections open now (those closed at accept for being over
 * SG_ADMIN_MAX_CONNS are not counted). */
unsigned sg_admin_conn_count(const struct sg_admin *a);

/* Changes the header and idle timeouts (ms, 0 keeps the current value);
 * for tests and config. Applies to deadlines set from now on. */
void sg_admin_set_timeouts(struct sg_admin *a, uint64_t header_ms, uint64_t idle_ms);

#endif
