/*
 * The configuration: a YAML file turned into an immutable, reference-counted
 * snapshot. A reload builds a new snapshot and swaps a pointer; whoever holds
 * a reference (a worker, a request in flight) keeps the old one alive until
 * it drops it. Nothing in a snapshot changes after sg_config_load returns,
 * except the atomic counters marked as such.
 *
 * Loading validates everything and collects every error as
 * "FILE:LINE: KEY.PATH: message" before reporting, like nginx -t.
 */
#ifndef SG_CONFIG_CONFIG_H
#define SG_CONFIG_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct sg_listen {
    char *text; /* as written, normalised to "host:port" / "[v6]:port" */
    struct sockaddr_storage addr;
    socklen_t addrlen;
};

struct sg_server {
    char *text; /* "127.0.0.1:9001" as written */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    uint32_t weight; /* 1 unless "host:port weight=N" style is added later */
    uint32_t id;     /* process-wide id of this address (sg_intern), stable across reloads */
};

struct sg_pool {
    char *name;
    struct sg_server *servers; /* nservers >= 1 */
    size_t nservers;
    uint64_t connect_timeout_ms;   /* default 5s: connect failure -> 502 */
    uint64_t response_timeout_ms;  /* default 60s: no response bytes -> 504 */
    uint64_t keepalive_timeout_ms; /* default 60s: idle upstream connection closed after */
    uint32_t keepalive;            /* default 64: idle upstream connections kept per server
                                      per worker */
    _Atomic uint32_t rr;           /* round-robin cursor (mutable) */
};

struct sg_route {
    char *host;        /* NULL = any; exact match, case-insensitive, port ignored;
                          "*.example.com" matches any subdomain */
    char *path_prefix; /* NULL = any */
    size_t path_prefix_len;
    uint32_t methods; /* bit (1u << enum sg_http_method); 0 = any */
    struct sg_pool *pool;
};

struct sg_limits {
    uint32_t max_connections;     /* default 10000, process-wide client connections */
    uint64_t header_timeout_ms;   /* default 10s: whole request head must arrive within */
    uint64_t idle_timeout_ms;     /* default 60s: keep-alive client with no request */
    uint64_t body_timeout_ms;     /* default 30s: max gap between request body reads */
    uint64_t shutdown_timeout_ms; /* default 30s: SIGTERM waits this long for requests */
    uint32_t max_request_line;    /* default 8k: longer -> 414 */
    uint32_t max_header_bytes;    /* default 16k (at most 64k): longer -> 431 */
    uint64_t max_body_bytes;      /* default 10MB: longer -> 413; 0 = unlimited */
};

struct sg_config {
    _Atomic int refs;
    char *path;
    struct sg_listen *listen; /* nlisten >= 1 */
    size_t nlisten;
    uint32_t workers; /* resolved: "auto" -> number of cores */
    struct sg_limits limits;
    struct sg_pool *pools;
    size_t npools;
    struct sg_route *routes; /* tried in order; first match wins */
    size_t nroutes;
};

/* Error collector: every message is kept ("file:line: key: msg"). */
struct sg_config_errors {
    char **msgs;
    size_t n;
};

/*
 * Loads and validates FILE. Returns a snapshot with one reference, owned by
 * the caller, or NULL with errs filled (the caller frees errs with
 * sg_config_errors_free).
 */
struct sg_config *sg_config_load(const char *path, struct sg_config_errors *errs);

/* Same from a string already in memory (name is used in messages). */
struct sg_config *sg_config_load_string(const char *name, const char *text, size_t len,
                                        struct sg_config_errors *errs);

void sg_config_errors_free(struct sg_config_errors *errs);

struct sg_config *sg_config_ref(struct sg_config *c);
void sg_config_unref(struct sg_config *c); /* frees at zero; NULL is ignored */

/* First route matching host (may be NULL), path and method; NULL if none. */
const struct sg_route *sg_config_route(const struct sg_config *c, const char *host, size_t host_len,
                                       const char *path, size_t path_len, int method_id);

#endif
