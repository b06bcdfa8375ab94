/*
 * The access log: one JSON line per request (log.access in the config).
 *
 * Each worker formats its lines into a buffer of its own; its sweep timer
 * (every 100 ms) hands the buffer to libuv's file-system thread pool with
 * uv_fs_write, so no worker blocks on the disk. While a write is in
 * flight the worker fills a second buffer; past SG_ALOG_MAX_BUFFER bytes
 * waiting (a disk slower than the traffic), lines are dropped and counted,
 * and the count is logged. The file is opened by the main thread and
 * reopened on SIGUSR1 (logrotate): writes in flight finish on the old
 * file, later ones go to the new one.
 */
#ifndef SG_STATS_ACCESSLOG_H
#define SG_STATS_ACCESSLOG_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#define SG_ALOG_MAX_BUFFER (1u << 20) /* bytes waiting per worker before lines are dropped */

/* A request's fields gathered on its way (owned by its connection). */
struct sg_alog_rec {
    char method[16];
    char target[512];     /* truncated beyond; NUL-terminated */
    char rid[68];         /* X-Request-ID, the client's or the one the gateway made */
    const char *server;   /* the backend's address (a config string), or NULL */
    const char *cache;    /* "HIT", "MISS", "STALE", or NULL */
    uint64_t upstream_ns; /* to the backend's response head; 0: none */
    uint64_t bytes;       /* written to the client for this request */
};

/* Opens path ("stdout": the standard output) for the access log, replacing
 * the file in use (reopen: the same path); NULL turns the log off. Main
 * thread. Returns 0 or a negative errno (the old file stays). */
int sg_alog_open(const char *path);

/* Whether an access log is on (any thread). */
bool sg_alog_on(void);

/* Appends one line for a request to worker's buffer. */
void sg_alog_line(unsigned worker, const struct sg_alog_rec *r, const char *client, int status,
                  uint64_t duration_ns, const char *route, const char *pool);

/* Hands worker's buffered lines to the file (its sweep, and at its exit). */
void sg_alog_flush(unsigned worker, uv_loop_t *loop);

/* Frees everything (at exit, after the workers). */
void sg_alog_cleanup(void);

#endif
