/*
 * Internals shared by the files of proxy/: the exchange (one request in
 * flight) and the upstream connection.
 */
#ifndef SG_PROXY_PROXY_INT_H
#define SG_PROXY_PROXY_INT_H

#include "proxy/proxy.h"

enum sg_upstream_state {
    SG_UP_CONNECTING = 0, /* connect() in progress */
    SG_UP_ACTIVE,         /* attached to an exchange */
    SG_UP_IDLE,           /* in its target's idle list, reading to notice a close */
    SG_UP_CLOSED          /* uv_close called; freed in the close callback */
};

/* A connection to a backend. Allocated by sg__upstream_connect, freed in its
 * uv_close callback. While ACTIVE, ex points at its exchange and the
 * exchange at it; while IDLE, it is owned by its target's idle list. */
struct sg_upstream {
    uv_tcp_t tcp;
    uv_connect_t creq;
    struct sg_list link; /* in target->idle */
    struct sg_worker *w;
    struct sg_target *target;
    struct sg_exchange *ex;
    struct sg_buf *rbuf;    /* pending input (owned) */
    uint64_t idle_deadline; /* while IDLE */
    uint8_t state;
    uint8_t reading;
    uint8_t writing; /* a queued write is pending */
    uint8_t reused;  /* came from the idle list */
};

/* Request body framing in an exchange (beyond enum sg_http_body). */
#define SG_BODY_TUNNEL 7

/* One request in flight. Owned by the exchange functions of proxy.c; lives
 * from sg_proxy_start until the response is handed to the client or the
 * exchange is aborted. Holds a reference on the config snapshot. */
struct sg_exchange {
    struct sg_exchange *next_free;
    struct sg_list qlink;   /* in w->waiting while queued */
    struct sg_conn *client; /* NULL once the client went away */
    struct sg_upstream *up; /* NULL while none attached */
    struct sg_config *cfg;
    const struct sg_pool *pool;
    const struct sg_server *server;
    struct sg_buf *head;          /* rewritten request head; kept until the response
                                     head arrives so that the request can be resent */
    struct sg_buf *replay;        /* request body bytes sent so far, kept for a retry
                                     while they fit retry.buffer (NULL otherwise) */
    uint64_t tried;               /* bit i: pool->servers[i] was tried */
    uint64_t start_ms;            /* uv_now when the request head was complete */
    struct sg_buf *extra_hdr;     /* header lines for the response (RateLimit), or NULL */
    _Atomic uint32_t *route_slot; /* route->in_flight to give back at the end, or NULL */
    struct sg_cache_req *creq;    /* the request's cache state (owned), or NULL */
    uint16_t status;              /* the answer's status (backend's, or the gateway's error) */
    uint64_t key_hash;            /* balance: hash */
    uint32_t server_idx;          /* index of server in pool->servers */
    uint8_t attempts;             /* servers tried so far */
    uint64_t req_left;            /* LENGTH: body bytes not yet validated */
    uint32_t req_ready;           /* validated body bytes at the front of client->rbuf */
    uint32_t resp_scanned;
    uint64_t resp_left; /* LENGTH: response body bytes to go */
    struct sg_http_chunked req_ch;
    struct sg_http_chunked resp_ch;
    uint8_t method;
    uint8_t req_body;         /* enum sg_http_body or SG_BODY_TUNNEL */
    uint8_t resp_body;        /* enum sg_http_body or SG_BODY_TUNNEL */
    uint8_t head_sent : 1;    /* head written to the upstream */
    uint8_t req_done : 1;     /* whole request validated and handed to the upstream */
    uint8_t resp_started : 1; /* response head handed to the client */
    uint8_t resp_done : 1;    /* whole response handed to the client */
    uint8_t keep_client : 1;  /* the client connection may stay open after */
    uint8_t up_reusable : 1;  /* the upstream said keep-alive */
    uint8_t client_http10 : 1;
    uint8_t decode : 1;         /* chunked response decoded for an HTTP/1.0 client */
    uint8_t upgrade : 1;        /* the client asked for an upgrade */
    uint8_t retried : 1;        /* resent once on a fresh connection to the same server */
    uint8_t got_resp_bytes : 1; /* any byte from the upstream for this request */
    uint8_t has_key : 1;        /* key_hash is set */
    uint8_t retry_ok : 1;       /* idempotent, or the route is retryable */
    uint8_t replayable : 1;     /* every body byte sent so far is in replay */
    uint8_t replay_sent : 1;    /* replay written to the current upstream */
    uint8_t counted : 1;        /* server's inflight counts this request */
    uint8_t queued : 1;         /* waiting in w->waiting for a server (server is NULL) */
    uint8_t cold : 1;           /* queued for a scaled pool's first instance (cold start) */
};

/* upstream.c */
struct sg_upstream *sg__upstream_idle_get(struct sg_worker *w, const struct sg_server *srv);
struct sg_upstream *sg__upstream_connect(struct sg_worker *w, const struct sg_server *srv);
void sg__upstream_release(struct sg_upstream *up, const struct sg_pool *pool);
void sg__upstream_close(struct sg_upstream *up);
void sg__upstream_read_start(struct sg_upstream *up);
void sg__upstream_read_stop(struct sg_upstream *up);
int sg__upstream_write(struct sg_upstream *up, const uv_buf_t *bufs, unsigned n,
                       struct sg_buf *own0, struct sg_buf *own1);

/* proxy.c, called by upstream.c */
void sg__proxy_connected(struct sg_exchange *ex, int status);
void sg__proxy_upstream_data(struct sg_exchange *ex);
void sg__proxy_upstream_eof(struct sg_exchange *ex, int err);
void sg__proxy_upstream_written(struct sg_exchange *ex, int status);

/* headers.c */
struct sg_buf *sg__request_head(struct sg_conn *c, const struct sg_http_msg *m,
                                const char *fallback_host, bool upgrade, bool strip_expect);
struct sg_buf *sg__response_head(const struct sg_http_msg *m, bool keep_alive, bool client_http10,
                                 bool decode, const struct sg_buf *extra);

#endif
