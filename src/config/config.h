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
    uint32_t weight;          /* default 1, 1..1000 */
    uint32_t max_connections; /* default 0 = unlimited: requests in flight to this server
                                 (all workers); beyond, requests wait in the pool's queue */
    bool backup;              /* listed under "backup": used only when no primary is usable */
    uint32_t id;              /* process-wide id of this address (sg_intern), stable across
                                 reloads; indexes the shared runtime state (pool/state.h) */
};

/* Pool balance algorithms (pool/balance.h). */
enum sg_balance_algo {
    SG_BALANCE_ROUND_ROBIN = 0,
    SG_BALANCE_WEIGHTED,   /* smooth weighted round robin */
    SG_BALANCE_LEAST_CONN, /* fewest in flight relative to weight */
    SG_BALANCE_P2C,        /* power of two random choices */
    SG_BALANCE_HASH        /* consistent hashing on hash_key */
};

/* Where the hash key comes from ("header:NAME", "cookie:NAME", "query:NAME", "ip", "path"). */
enum sg_hash_source { SG_HASH_HEADER = 0, SG_HASH_COOKIE, SG_HASH_QUERY, SG_HASH_IP, SG_HASH_PATH };

struct sg_health_cfg {
    bool enabled;         /* a "health" section is present */
    char *method;         /* default "GET" */
    char *path;           /* default "/health" */
    char *host;           /* Host header; default: the server's address */
    uint64_t interval_ms; /* default 2s */
    uint64_t timeout_ms;  /* default 1s */
    uint16_t status_min;  /* "expect: 200-399" (default) or "expect: 200" */
    uint16_t status_max;
    uint32_t rise; /* default 2: passes in a row to mark a server up */
    uint32_t fall; /* default 3: failures in a row to mark it down */
};

struct sg_outlier_cfg {
    uint32_t consecutive_errors;   /* default 5; 0 = off: connect errors, resets, timeouts */
    uint32_t consecutive_5xx;      /* default 0 = off */
    uint64_t base_ejection_ms;     /* default 10s; doubles each time, up to max_ejection_ms */
    uint64_t max_ejection_ms;      /* default 300s */
    uint32_t max_ejection_percent; /* default 50: never eject more of the pool than this */
};

struct sg_retry_cfg {
    uint32_t attempts;       /* default 3: tries per request in all (1 = no retry) */
    uint32_t budget_percent; /* default 20: retries at most this share of requests */
    uint64_t buffer_bytes;   /* default 64k: request bodies up to this are kept for a replay */
};

/* Autoscaling of a pool (the "scale" section; scale/scaler.h runs it). */
enum sg_scale_driver {
    SG_SCALE_PROCESS = 0, /* the gateway starts instances as child processes */
    SG_SCALE_COMMAND      /* user commands scale an orchestrator and list its instances */
};

struct sg_scale_cfg {
    bool enabled;                /* a "scale" section is present */
    bool autoscale;              /* "enabled": the policy runs (default true); else min holds */
    enum sg_scale_driver driver; /* default process */
    char *command;               /* process: the instance's command; "{port}" is replaced */
    uint16_t port_min, port_max; /* process: "ports: 9100-9199" (default 20000-20999) */
    char *scale_to;              /* command: "... {n}" sets the instance count */
    char *list;                  /* command: prints the instances, one host:port a line */
    uint64_t list_interval_ms;   /* command: how often list runs (default 2s) */
    uint32_t min, max;           /* default 1 and 10; min 0 allows scale to zero */
    /* targets; 0 = that metric does not drive scaling */
    double rps_per_instance, p95_ms, inflight_per_instance, cpu_percent, memory_percent, error_rate,
        queue_per_instance;
    char *queue_redis_list;         /* queue depth: LLEN of this Redis list */
    char *queue_command;            /* queue depth: a number printed by this command */
    uint64_t period_ms;             /* decision period (default 1s) */
    uint64_t window_ms;             /* metrics window (default 5s) */
    uint32_t tolerance_percent;     /* default 10 */
    uint32_t up_percent;            /* scale-up per period: +up_percent % or +up_pods, the larger */
    uint32_t up_pods;               /* (defaults 100 and 4) */
    uint32_t down_pods;             /* scale-down per period (default 1) */
    uint64_t up_stabilization_ms;   /* default 0 */
    uint64_t down_stabilization_ms; /* default 300s */
    uint64_t start_timeout_ms;      /* an instance not ready by then is replaced (60s) */
    uint64_t drain_timeout_ms;      /* in-flight requests get this long on scale-down (30s) */
    uint64_t stop_grace_ms;         /* SIGTERM -> SIGKILL (10s) */
    uint64_t idle_before_zero_ms;   /* min 0: no request for this long stops the last (5m) */
    uint64_t cold_start_timeout_ms; /* a request waits this long for an instance (30s) */
};

struct sg_pool {
    char *name;
    struct sg_server *servers; /* primaries first, then backups; nservers >= 1 */
    size_t nservers;
    size_t nprimary;                 /* servers[0..nprimary) are primaries, the rest backups */
    uint64_t connect_timeout_ms;     /* default 5s: connect failure -> 502 */
    uint64_t response_timeout_ms;    /* default 60s: no response bytes -> 504 */
    uint64_t keepalive_timeout_ms;   /* default 60s: idle upstream connection closed after */
    uint32_t keepalive;              /* default 64: idle upstream connections kept per server
                                        per worker */
    enum sg_balance_algo balance;    /* default round_robin */
    enum sg_hash_source hash_source; /* balance: hash */
    char *hash_name;                 /* header/cookie/query name, else NULL */
    size_t hash_name_len;
    enum sg_balance_algo hash_fallback; /* requests without the key; default round_robin */
    struct sg_health_cfg health;
    struct sg_outlier_cfg outlier;
    struct sg_retry_cfg retry;
    uint64_t slow_start_ms;    /* default 0 = off: weight ramps up over this after recovery */
    uint32_t queue_size;       /* default 1000: requests waiting for a server's max_connections */
    uint64_t queue_timeout_ms; /* default 5s: waited longer -> 503 */
    void *balancer;            /* runtime balancer state (pool/balance.c), built by
                                  sg_pool_prepare after loading; the snapshot frees it
                                  with balancer_free when it goes */
    void (*balancer_free)(void *);
    /* retry budget window (pool/pool.c; mutable) */
    _Atomic uint64_t budget_window; /* start of the current 10 s window, ms */
    _Atomic uint32_t budget_requests;
    _Atomic uint32_t budget_retries;
    _Atomic uint32_t queued; /* requests waiting in the queue, all workers (mutable) */
    _Atomic uint32_t rr;     /* round-robin cursor (mutable) */
    struct sg_scale_cfg scale;
    uint64_t shed_p95_ms; /* default 0 = off: pool p95 above this sheds low-priority routes */
    bool servers_owned;   /* a derived snapshot's own servers array (sg_config_derive) */
    void *shared;         /* runtime state shared by every snapshot of this pool name
                             (struct sg_pool_state, pool/state.h); set by sg_pool_prepare */
};

/* Rate limiting (the route's "rate_limit" rules; ratelimit/limit.h applies them). */
enum sg_rl_key {
    SG_RL_KEY_IP = 0, /* the client's address */
    SG_RL_KEY_HEADER, /* header:NAME */
    SG_RL_KEY_COOKIE, /* cookie:NAME */
    SG_RL_KEY_QUERY,  /* query:NAME */
    SG_RL_KEY_GLOBAL  /* one bucket for every request */
};

struct sg_rl_rate {
    uint32_t count;     /* requests ... */
    uint64_t period_ms; /* ... per period ("10/s", "100/min", "1000/h") */
    uint32_t burst;     /* bucket capacity: requests at once (default: count) */
};

/* A rate for one value: of the key (overrides) or of class_header (classes). */
struct sg_rl_override {
    char *value;
    size_t value_len;
    struct sg_rl_rate rate;
};

struct sg_rl_rule {
    char *name;  /* the policy's name in the RateLimit fields; default "route<i>-<j>" */
    uint64_t id; /* hash of name and key: rules with the same both share buckets */
    struct sg_rl_rate rate;
    enum sg_rl_key key;
    char *key_name; /* header, cookie or query parameter name, else NULL */
    size_t key_name_len;
    struct sg_rl_override *overrides; /* by the key's value */
    size_t noverrides;
    char *class_header; /* classes: the rate by this header's value (X-Device-Class) */
    size_t class_header_len;
    struct sg_rl_override *classes;
    size_t nclasses;
};

/* A route's response cache ("cache" in a route). */
struct sg_route_cache {
    bool enabled;
    uint64_t ttl_ms;                    /* freshness when the backend gives none (default 5m) */
    char **vary;                        /* request header names in the key (lowercase) */
    size_t nvary;                       /* at most 8 */
    uint64_t stale_while_revalidate_ms; /* default 0: stale served while one request refreshes */
    uint64_t stale_if_error_ms;         /* default 0: stale served when the backend fails */
    uint64_t lock_timeout_ms;           /* default 5s: coalesced misses wait this for the first */
    bool set_cookie;           /* store responses with Set-Cookie, without the field (false) */
    bool authorization;        /* store answers to requests with Authorization (false) */
    bool client_cache_control; /* honour the client's no-cache and max-age (true) */
};

struct sg_route {
    char *name;             /* NULL = none: the metrics label is made from host and path_prefix */
    uint32_t stats_id;      /* metrics series (route, pool) and (route, read_pool); set by */
    uint32_t stats_read_id; /*   sg_stats_assign, carried by derived snapshots */
    char *host;             /* NULL = any; exact match, case-insensitive, port ignored;
                               "*.example.com" matches any subdomain */
    char *path_prefix;      /* NULL = any */
    size_t path_prefix_len;
    uint32_t methods; /* bit (1u << enum sg_http_method); 0 = any */
    struct sg_pool *pool;
    struct sg_pool *read_pool;      /* NULL, or the pool for GET, HEAD and OPTIONS */
    bool retryable;                 /* retry any method (not only idempotent ones) */
    struct sg_rl_rule *rate_limits; /* every rule applies; all must admit */
    size_t nrate_limits;
    bool rate_limit_headers;     /* RateLimit fields on admitted responses too (default true) */
    uint32_t max_in_flight;      /* default 0 = no limit: requests of this route in flight at once,
                                    all workers; beyond, 503 with Retry-After */
    _Atomic uint32_t *in_flight; /* requests in flight now; shared by the snapshots derived
                                    from one loaded config (mutable) */
    uint32_t priority;           /* 1 (shed first) to 10 (never shed); default 5 */
    uint32_t queue_size;         /* default 0: requests over max_in_flight that may wait */
    uint64_t queue_timeout_ms;   /* default 5s: waited longer -> 503 */
    _Atomic uint32_t *queued;    /* waiting now (shared like in_flight; mutable) */
    struct sg_route_cache cache;
};

struct sg_limits {
    uint32_t rate_limit_keys;     /* default 1000000: rate-limit buckets kept (memory bound) */
    uint32_t max_connections;     /* default 10000, process-wide client connections */
    uint64_t header_timeout_ms;   /* default 10s: whole request head must arrive within */
    uint64_t idle_timeout_ms;     /* default 60s: keep-alive client with no request */
    uint64_t body_timeout_ms;     /* default 30s: max gap between request body reads */
    uint64_t shutdown_timeout_ms; /* default 30s: SIGTERM waits this long for requests */
    uint32_t max_request_line;    /* default 8k: longer -> 414 */
    uint32_t max_header_bytes;    /* default 16k (at most 64k): longer -> 431 */
    uint64_t max_body_bytes;      /* default 10MB: longer -> 413; 0 = unlimited */
};

/* The admin API listener ("admin" section). */
struct sg_admin_cfg {
    bool enabled;
    struct sg_listen listen;
    char *token;         /* resolved from token_env or token_file at load; NULL = none */
    char *token_from;    /* "env SCALEGATE_ADMIN_TOKEN" or "file PATH", for messages */
    bool public_metrics; /* GET /metrics without the token (default false) */
};

/* The shared Redis ("redis" section). */
struct sg_redis_cfg {
    bool enabled;
    char *host;
    uint16_t port;
    char *prefix;                  /* default "sg:" */
    uint64_t lease_ttl_ms;         /* leader lease of the autoscaler (default 3s) */
    uint64_t rate_limit_budget_ms; /* a shared rate-limit answer later than this: decided
                                      locally (default 50ms) */
};

/* The response cache's process-wide settings (the top-level "cache"). */
struct sg_cache_cfg {
    uint64_t memory_bytes;    /* L1 cap (default 100MB) */
    uint64_t max_object_size; /* larger responses pass uncached (default 1MB) */
    uint64_t l2_ttl_ms;       /* Redis tier lifetime (default 1h; 0: no Redis tier) */
    uint64_t l2_timeout_ms;   /* a Redis tier answer later than this is a miss (default 50ms) */
};

struct sg_config {
    _Atomic int refs;
    struct sg_config *base; /* a derived snapshot: the one it shares everything else with */
    char *path;
    struct sg_listen *listen; /* nlisten >= 1 */
    size_t nlisten;
    uint32_t workers; /* resolved: "auto" -> number of cores */
    struct sg_limits limits;
    struct sg_pool *pools;
    size_t npools;
    struct sg_route *routes; /* tried in order; first match wins */
    size_t nroutes;
    struct sg_admin_cfg admin;
    struct sg_redis_cfg redis;
    struct sg_cache_cfg cache;
    char *access_log;  /* log.access: a file path or "stdout"; NULL = no access log */
    char *health_path; /* answered by the gateway on its listeners (readiness); NULL = none */
    int log_level;     /* log.level: enum sg_log_level, or -1 (not set: the default, info) */
};

/* A pool's replacement primaries in a derived snapshot. */
struct sg_pool_servers {
    bool set;                        /* false: keep the base's servers */
    const struct sg_server *servers; /* copied (text too); weight, id and address used */
    size_t n;
};

/*
 * A snapshot equal to base except for the primaries of some pools (over[i]
 * for base->pools[i]; the base's backups stay after them). It shares every
 * string with base and holds a reference on it. The autoscaler publishes
 * its instance lists this way. Returns NULL on ENOMEM.
 */
struct sg_config *sg_config_derive(struct sg_config *base, const struct sg_pool_servers *over);

/* The pool named name, or NULL. */
struct sg_pool *sg_config_pool(const struct sg_config *c, const char *name);

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
