/*
 * The server: worker threads, each running its own libuv loop with its own
 * SO_REUSEPORT listeners, and the client connections they accept.
 *
 * Types shared by server/ and proxy/ live here; the functions main.c calls
 * are at the bottom. Every client connection belongs to exactly one worker
 * and is touched only by that worker's thread.
 */
#ifndef SG_SERVER_SERVER_H
#define SG_SERVER_SERVER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config/config.h"
#include "core/buf.h"
#include "core/list.h"
#include "http/http.h"

#define SG_MAX_HEADERS 128

/* A client connection's life. Only sg_conn_set_state changes it: it moves
 * the connection to the worker's list for the new state and sets the
 * deadline of that state's timeout. */
enum sg_conn_state {
    SG_CONN_HEAD = 0, /* waiting for / reading a request head: header_timeout */
    SG_CONN_IDLE,     /* keep-alive between requests, no bytes pending: idle_timeout */
    SG_CONN_PROXY,    /* a request in flight to a backend: connect/response/body timeouts */
    SG_CONN_TUNNEL,   /* upgraded (WebSocket): bytes relayed both ways, idle_timeout */
    SG_CONN_CLOSING,  /* last answer being written, then a lingering close */
    SG_CONN_WAIT,     /* a head parsed, waiting for a slot under max_in_flight: queue_timeout */
    SG_CONN_FILL,     /* a head parsed, waiting for the cache (a fill, Redis): lock_timeout */
    SG_CONN_STATE_COUNT
};

struct sg_exchange;
struct sg_worker;

/* Allocated at accept, freed in the uv_close callback (conn.c). */
struct sg_conn {
    uv_tcp_t tcp;        /* tcp.data == this */
    struct sg_list link; /* in w->conns[state] */
    struct sg_worker *w;
    struct sg_buf *rbuf;    /* pending input; NULL when none (owned) */
    struct sg_exchange *ex; /* the request in flight (owned by proxy.c), or NULL */
    uint64_t deadline;      /* loop time (ms) at which this state's timeout fires */
    uint32_t id;            /* per worker, for log lines */
    uint32_t scanned;       /* parser cursor for the head being read */
    uint8_t state;          /* enum sg_conn_state */
    uint8_t reading;        /* uv_read_start is active */
    uint8_t closed;         /* uv_close was called */
    uint8_t linger;         /* CLOSING: shutdown sent, discarding input */
    uint8_t peer_eof;       /* the client half-closed after its request(s) */
    uint16_t writes;        /* queued writes not yet completed */
    uint8_t ip_family;      /* AF_INET / AF_INET6 / 0 */
    uint8_t ip[16];
    struct sg_rl_pending *rl_pending; /* a shared rate-limit check in Redis, or NULL */
    struct sg_rl_verdict *rl_verdict; /* its answer, for the head parsed again (owned) */
    _Atomic uint32_t *wait_slot;      /* the route's queued count this conn is in, or NULL */
    uint64_t wait_deadline;           /* WAIT: when it gets 503 */
    struct sg_cache_req *creq;        /* the request's cache state (owned), or NULL */
    uint64_t req_ns;                  /* uv_hrtime when the head was complete; 0: counted */
    struct sg_alog_rec *alog;         /* the request's access log fields (owned), or NULL */
    uint32_t series;                  /* the request's metrics series (stats.h) */
};

struct sg_rl_pending;
struct sg_rl_verdict;
struct sg_cache_req;
struct sg_alog_rec;
struct sg_redis;

struct sg_listener {
    uv_tcp_t tcp;
    char *text; /* the listen address as configured */
    struct sg_worker *w;
};

/* Idle upstream connections to one server address, per worker. Indexed by
 * the address's sg_intern id, so they survive reloads. */
struct sg_target {
    struct sg_list idle; /* struct sg_upstream.link, oldest first */
    uint32_t nidle;
};

struct sg_worker {
    uv_loop_t loop;
    uv_async_t async; /* commands from the main thread */
    uv_timer_t sweep; /* timeouts, several times a second */
    uv_thread_t thread;
    unsigned index;
    struct sg_config *cfg; /* current snapshot (one reference) */
    struct sg_listener **listeners;
    size_t nlisteners;
    struct sg_list conns[SG_CONN_STATE_COUNT];
    uint32_t nconns[SG_CONN_STATE_COUNT];
    uint32_t nconns_total;
    uint32_t nupstreams; /* open upstream connections */
    struct sg_target **targets;
    uint32_t ntargets;
    uint32_t next_id;
    bool draining; /* SIGTERM: no new requests; exit when the last connection closes */
    bool finished;
    uint64_t rng[2];
    struct sg_exchange *free_exchanges;
    struct sg_list waiting;   /* exchanges queued for a server under max_connections */
    uv_check_t waiting_check; /* active while waiting is not empty (proxy.c) */
    uv_check_t wait_check;    /* active while conns[SG_CONN_WAIT] is not empty (conn.c) */
    struct sg_http_header headers[SG_MAX_HEADERS]; /* parser scratch */

    /* Commands, set by the main thread under cmd_lock, then async sent. */
    uv_mutex_t cmd_lock;
    struct sg_config *cmd_cfg; /* reload: the new snapshot (a reference for us) */
    int *cmd_fds;              /* reload: fd per cmd_cfg->listen entry, -1 = keep ours */
    bool cmd_stop;
    bool cmd_force;
    bool exited;                   /* the worker's loop is gone: send no more commands */
    struct sg_redis *redis;        /* this worker's link for shared rate limits, or NULL */
    _Atomic bool cache_wake;       /* a cache fill finished: look at conns[SG_CONN_FILL] */
    struct sg_stats_worker *stats; /* this worker's counters (stats.h) */
};

/* Process-wide count of client connections (for limits.max_connections). */
extern _Atomic uint32_t sg_client_conns;

/* conn.c: used by the worker and by the proxy. */
void sg_conn_accept(struct sg_listener *l);
void sg_conn_set_state(struct sg_conn *c, enum sg_conn_state s);
void sg_conn_close(struct sg_conn *c);
/* Answers with a gateway-made error (body "<code> <reason>\n") and closes. */
void sg_conn_error(struct sg_conn *c, int status);
/* The same with extra header lines (each ending in CRLF) in the answer. */
void sg_conn_error_hdr(struct sg_conn *c, int status, const char *extra, size_t extra_len);
/* The exchange on c is over (its response fully handed to the socket, or
 * queued): continue with the next pipelined request, go idle, or close. */
void sg_conn_request_done(struct sg_conn *c, bool keep_alive);
/* Write to the client; the same contract as sg_io_write, and completion is
 * reported to the proxy through sg_proxy_client_written. */
int sg_conn_write(struct sg_conn *c, const uv_buf_t *bufs, unsigned n, struct sg_buf *own0,
                  struct sg_buf *own1);
void sg_conn_read_start(struct sg_conn *c);
void sg_conn_read_stop(struct sg_conn *c);
void sg_conn_sweep(struct sg_worker *w, uint64_t now);
/* Counts c's request, answered with status, in the metrics (once: later
 * calls for the same request do nothing). */
void sg_conn_count(struct sg_conn *c, int status);
/* Processes the head at the front of c's rbuf again (after a wait). */
void sg_conn_resume(struct sg_conn *c);
/* Retries the connections waiting for a slot under max_in_flight. */
void sg_conn_wait_run(uv_check_t *h);
void sg_conn_close_idle(struct sg_worker *w);
/* Formats the client address into out (at least 46 bytes); returns its length. */
size_t sg_conn_ip(const struct sg_conn *c, char *out);

/* worker.c */
struct sg_target *sg_worker_target(struct sg_worker *w, uint32_t id);
void sg_worker_maybe_finish(struct sg_worker *w);
uint64_t sg_worker_random(struct sg_worker *w);

/* The process (main.c calls these on the main thread). */
/* Opens listeners and starts cfg->workers threads. Returns 0, or -1 with a
 * message logged (a listen address that can't be bound, for example). */
int sg_server_start(uv_loop_t *main_loop, struct sg_config *cfg, void (*all_done)(void));
/* Applies a new snapshot (takes over the caller's reference). Returns 0, or
 * -1 (logged) if a new listen address can't be bound: the old config stays. */
int sg_server_reload(struct sg_config *cfg);
/* Graceful stop; workers finish requests in flight, then all_done() runs on
 * the main loop. sg_server_force closes whatever remains. */
void sg_server_stop(void);
void sg_server_force(void);
/* Joins the threads and frees everything (after all_done); the caller then
 * runs its loop once more for the close callbacks. */
void sg_server_cleanup(void);

#endif
