/*
 * The "pools" section of the config schema: each pool's servers and backups
 * (a "host:port" string or a map with address, weight and max_connections),
 * its balance algorithm and hash key, active health checks (health), passive
 * ejection (outlier), retries, slow start, the wait queue and the upstream
 * timeouts. docs/configuration.md is the user's reference.
 *
 * Every default is set before the keys are read, so a key left out and a
 * key with an error both leave the default, and checks between two keys
 * (max_ejection >= base_ejection) are skipped when either one was wrong, to
 * report one mistake once. Everything allocated hangs off the pool and is
 * freed by sg__config_free.
 */
#include "config/config_int.h"

#include "core/intern.h"
#include "core/parse.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_METHOD_LEN 32 /* health.method */

/* ---- numeric keys ------------------------------------------------------- */

#define YEAR_MS SG__CFG_YEAR_MS

static const struct sg__cfg_field pool_fields[] = {
    {"connect_timeout", SG__CFG_DURATION, 8, offsetof(struct sg_pool, connect_timeout_ms), 1,
     YEAR_MS},
    {"response_timeout", SG__CFG_DURATION, 8, offsetof(struct sg_pool, response_timeout_ms), 1,
     YEAR_MS},
    {"keepalive", SG__CFG_COUNT, 4, offsetof(struct sg_pool, keepalive), 0, 10000},
    {"keepalive_timeout", SG__CFG_DURATION, 8, offsetof(struct sg_pool, keepalive_timeout_ms), 1,
     YEAR_MS},
    {"slow_start", SG__CFG_DURATION, 8, offsetof(struct sg_pool, slow_start_ms), 0, YEAR_MS},
    {"queue_size", SG__CFG_COUNT, 4, offsetof(struct sg_pool, queue_size), 0, 1000000},
    {"queue_timeout", SG__CFG_DURATION, 8, offsetof(struct sg_pool, queue_timeout_ms), 1, YEAR_MS},
    {"shed_p95", SG__CFG_DURATION, 8, offsetof(struct sg_pool, shed_p95_ms), 0, 3600 * 1000},
};
#define NPOOLF (sizeof(pool_fields) / sizeof(pool_fields[0]))

static const struct sg__cfg_field server_fields[] = {
    {"weight", SG__CFG_COUNT, 4, offsetof(struct sg_server, weight), 1, 1000},
    {"max_connections", SG__CFG_COUNT, 4, offsetof(struct sg_server, max_connections), 0, 1000000},
};
#define NSERVERF (sizeof(server_fields) / sizeof(server_fields[0]))

static const struct sg__cfg_field health_fields[] = {
    {"interval", SG__CFG_DURATION, 8, offsetof(struct sg_health_cfg, interval_ms), 1, YEAR_MS},
    {"timeout", SG__CFG_DURATION, 8, offsetof(struct sg_health_cfg, timeout_ms), 1, YEAR_MS},
    {"rise", SG__CFG_COUNT, 4, offsetof(struct sg_health_cfg, rise), 1, 100},
    {"fall", SG__CFG_COUNT, 4, offsetof(struct sg_health_cfg, fall), 1, 100},
};
#define NHEALTHF (sizeof(health_fields) / sizeof(health_fields[0]))

/* Indices into outlier_fields of the two keys checked against each other. */
enum { OUT_BASE_EJECTION = 2, OUT_MAX_EJECTION = 3 };

static const struct sg__cfg_field outlier_fields[] = {
    {"consecutive_errors", SG__CFG_COUNT, 4, offsetof(struct sg_outlier_cfg, consecutive_errors), 0,
     1000},
    {"consecutive_5xx", SG__CFG_COUNT, 4, offsetof(struct sg_outlier_cfg, consecutive_5xx), 0,
     1000},
    {"base_ejection", SG__CFG_DURATION, 8, offsetof(struct sg_outlier_cfg, base_ejection_ms), 1,
     YEAR_MS},
    {"max_ejection", SG__CFG_DURATION, 8, offsetof(struct sg_outlier_cfg, max_ejection_ms), 1,
     YEAR_MS},
    {"max_ejection_percent", SG__CFG_PERCENT, 4,
     offsetof(struct sg_outlier_cfg, max_ejection_percent), 0, 100},
};
#define NOUTLIERF (sizeof(outlier_fields) / sizeof(outlier_fields[0]))

static const struct sg__cfg_field retry_fields[] = {
    {"attempts", SG__CFG_COUNT, 4, offsetof(struct sg_retry_cfg, attempts), 1, 10},
    {"budget", SG__CFG_PERCENT, 4, offsetof(struct sg_retry_cfg, budget_percent), 0, 100},
    {"buffer", SG__CFG_SIZE, 8, offsetof(struct sg_retry_cfg, buffer_bytes), 0, 64 << 20},
};
#define NRETRYF (sizeof(retry_fields) / sizeof(retry_fields[0]))

/* Everything a pool has when its keys are left out. Returns false on OOM. */
static bool pool_defaults(struct sg__cfg_ctx *cx, struct sg_pool *p) {
    p->connect_timeout_ms = 5000;
    p->response_timeout_ms = 60000;
    p->keepalive = 64;
    p->keepalive_timeout_ms = 60000;
    p->balance = SG_BALANCE_ROUND_ROBIN;
    p->hash_fallback = SG_BALANCE_ROUND_ROBIN;
    p->health = (struct sg_health_cfg){
        .enabled = false,
        .interval_ms = 2000,
        .timeout_ms = 1000,
        .status_min = 200,
        .status_max = 399,
        .rise = 2,
        .fall = 3,
    };
    p->outlier = (struct sg_outlier_cfg){
        .consecutive_errors = 5,
        .consecutive_5xx = 0,
        .base_ejection_ms = 10 * 1000,
        .max_ejection_ms = 300 * 1000,
        .max_ejection_percent = 50,
    };
    p->retry = (struct sg_retry_cfg){.attempts = 3, .budget_percent = 20, .buffer_bytes = 64 << 10};
    p->slow_start_ms = 0;
    p->queue_size = 1000;
    p->queue_timeout_ms = 5000;
    atomic_init(&p->rr, 0);
    atomic_init(&p->budget_window, 0);
    atomic_init(&p->budget_requests, 0);
    atomic_init(&p->budget_retries, 0);
    /* the checker never sees NULL, even with checks off */
    p->health.method = sg__cfg_strdup(cx, "GET");
    p->health.path = sg__cfg_strdup(cx, "/health");
    return p->health.method && p->health.path;
}

/* ---- servers and backups ------------------------------------------------ */

/* Where the items of one list (servers or backup) go in pool->servers. */
struct server_list {
    struct sg_pool *pool;
    size_t base; /* index of the list's first item */
    bool backup;
};

static bool same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
    }
    const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
    return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
}

/*
 * Fills the address of pool->servers[idx] from scalar n. An address may
 * appear once per pool, primaries and backups together; "localhost:9001"
 * and "127.0.0.1:9001" are the same address.
 */
static void server_addr(struct sg__cfg_ctx *cx, struct sg_pool *p, size_t idx, const yaml_node_t *n,
                        const char *path) {
    struct sg_server *sv = &p->servers[idx];
    char q[SG__CFG_QUOTESZ], q2[SG__CFG_QUOTESZ];
    const char *s = sg__cfg_scalar(cx, n, path, "host:port");
    if (s == NULL)
        return;
    if (sg_parse_addr(s, &sv->addr, &sv->addrlen) < 0) {
        sg__cfg_error(cx, n, path, "%s is not host:port", sg__cfg_quote(q, sizeof(q), s));
        return;
    }
    const struct sockaddr_in *a4 = (const struct sockaddr_in *)&sv->addr;
    if (sv->addr.ss_family == AF_INET && a4->sin_addr.s_addr == htonl(INADDR_ANY)) {
        sg__cfg_error(cx, n, path, "%s has no host to connect to", sg__cfg_quote(q, sizeof(q), s));
        return;
    }
    for (size_t j = 0; j < idx; j++) {
        const struct sg_server *o = &p->servers[j];
        if (o->text == NULL || !same_addr(&o->addr, &sv->addr))
            continue;
        if (strcmp(o->text, s) == 0)
            sg__cfg_error(cx, n, path, "%s is listed twice", sg__cfg_quote(q, sizeof(q), s));
        else
            sg__cfg_error(cx, n, path, "%s is listed twice (as %s)", sg__cfg_quote(q, sizeof(q), s),
                          sg__cfg_quote(q2, sizeof(q2), o->text));
        return;
    }
    sv->text = sg__cfg_strdup(cx, s);
    if (sv->text && (sv->id = sg_intern(s)) == UINT32_MAX)
        cx->oom = true;
}

/* One item of servers or backup: "host:port" or {address, weight, max_connections}. */
static void server_one(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path, size_t i,
                       void *arg) {
    static const char *const names[] = {"address"};
    struct server_list *sl = arg;
    size_t idx = sl->base + i;
    struct sg_server *sv = &sl->pool->servers[idx];
    yaml_node_t *vals[1 + NSERVERF];
    char ap[SG__CFG_PATHSZ];

    sv->weight = 1;
    sv->backup = sl->backup;
    if (n->type == YAML_SCALAR_NODE) {
        server_addr(cx, sl->pool, idx, n, path);
        return;
    }
    if (n->type != YAML_MAPPING_NODE) {
        sg__cfg_error(cx, n, path, "expected host:port or a map with address, got %s",
                      sg__cfg_shape(n));
        return;
    }
    sg__cfg_get_map_fields(cx, n, path, names, 1, server_fields, NSERVERF, vals);
    sg__cfg_fields(cx, server_fields, NSERVERF, vals + 1, path, sv, NULL);
    sg__cfg_path_key(ap, path, "address");
    if (vals[0] == NULL)
        sg__cfg_error(cx, n, ap, "required key is missing");
    else
        server_addr(cx, sl->pool, idx, vals[0], ap);
}

/* Number of items in a servers or backup list, or -1 after reporting. */
static long count_servers(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path) {
    if (sg__cfg_is_null(n)) {
        sg__cfg_error(cx, n, path, "has no value (expected a list of host:port)");
        return -1;
    }
    return sg__cfg_each_item(cx, n, path, "host:port", NULL, NULL);
}

/* Fills pool->servers: the primaries (servers), then the backups. */
static void build_servers(struct sg__cfg_ctx *cx, struct sg_pool *p, const yaml_node_t *pool_node,
                          const yaml_node_t *prim, const yaml_node_t *back, const char *path,
                          const yaml_node_t *scale) {
    char kp[SG__CFG_PATHSZ], bp[SG__CFG_PATHSZ];
    long np = -1, nb = 0;

    sg__cfg_path_key(kp, path, "servers");
    sg__cfg_path_key(bp, path, "backup");
    if (scale && prim) {
        sg__cfg_error(cx, prim, kp,
                      "a pool with scale gets its servers from its instances: remove servers "
                      "(backup may stay)");
        np = 0;
    } else if (scale) {
        np = 0; /* the autoscaler fills the primaries at run time */
    } else if (prim == NULL) {
        sg__cfg_error(cx, pool_node, kp, "required key is missing");
    } else {
        np = count_servers(cx, prim, kp);
    }
    if (back)
        nb = count_servers(cx, back, bp);
    size_t nprim = np > 0 ? (size_t)np : 0, total = nprim + (nb > 0 ? (size_t)nb : 0);
    if (total == 0)
        return; /* an error was reported, or a scaled pool without backups */
    p->servers = sg__cfg_alloc(cx, total, sizeof(*p->servers));
    if (p->servers == NULL)
        return;
    p->nservers = total; /* calloc'd: entries with errors keep text NULL */
    p->nprimary = nprim;
    if (np > 0) {
        struct server_list sl = {.pool = p, .base = 0, .backup = false};
        sg__cfg_each_item(cx, prim, kp, "host:port", server_one, &sl);
    }
    if (nb > 0) {
        struct server_list sl = {.pool = p, .base = nprim, .backup = true};
        sg__cfg_each_item(cx, back, bp, "host:port", server_one, &sl);
    }
}

/* ---- balance ------------------------------------------------------------ */

static const char *const algo_names[] = {
    [SG_BALANCE_ROUND_ROBIN] = "round_robin",
    [SG_BALANCE_WEIGHTED] = "weighted",
    [SG_BALANCE_LEAST_CONN] = "least_conn",
    [SG_BALANCE_P2C] = "p2c",
    [SG_BALANCE_HASH] = "hash",
};
#define NALGOS (sizeof(algo_names) / sizeof(algo_names[0]))

/* The algorithm named by n (hash not allowed as a fallback), or -1 after reporting. */
static int parse_algo(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path,
                      bool fallback) {
    char q[SG__CFG_QUOTESZ];
    const char *s = sg__cfg_scalar(cx, n, path, "a balance algorithm");
    if (s == NULL)
        return -1;
    for (size_t i = 0; i < NALGOS; i++) {
        if (strcmp(s, algo_names[i]) != 0)
            continue;
        if (fallback && i == SG_BALANCE_HASH) {
            sg__cfg_error(cx, n, path,
                          "%s cannot be the fallback: requests without the key have nothing to "
                          "hash (round_robin, weighted, least_conn, p2c)",
                          sg__cfg_quote(q, sizeof(q), s));
            return -1;
        }
        return (int)i;
    }
    if (fallback)
        sg__cfg_error(cx, n, path,
                      "%s is not a balance algorithm (round_robin, weighted, least_conn, p2c)",
                      sg__cfg_quote(q, sizeof(q), s));
    else
        sg__cfg_error(cx, n, path,
                      "%s is not a balance algorithm (round_robin, weighted, least_conn, p2c, "
                      "hash)",
                      sg__cfg_quote(q, sizeof(q), s));
    return -1;
}

/* hash_key: "header:NAME", "cookie:NAME", "query:NAME", "ip" or "path". */
static void build_hash_key(struct sg__cfg_ctx *cx, struct sg_pool *p, const yaml_node_t *n,
                           const char *path) {
    char q[SG__CFG_QUOTESZ];
    const char *s = sg__cfg_scalar(cx, n, path, "a hash key");
    if (s == NULL)
        return;
    if (strcmp(s, "ip") == 0) {
        p->hash_source = SG_HASH_IP;
    } else if (strcmp(s, "path") == 0) {
        p->hash_source = SG_HASH_PATH;
    } else if (sg__cfg_named_key(cx, n, path, s, &p->hash_source, &p->hash_name)) {
        p->hash_name_len = p->hash_name ? strlen(p->hash_name) : 0;
    } else {
        sg__cfg_error(cx, n, path,
                      "%s is not a hash key (header:NAME, cookie:NAME, query:NAME, ip or path)",
                      sg__cfg_quote(q, sizeof(q), s));
    }
}

/* ---- health ------------------------------------------------------------- */

/* Printable ASCII without spaces: safe to put in a request line or header. */
static bool visible_ascii(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
            return false;
    return true;
}

/* "200" or "200-399": 0, or -1 when s is neither. */
static int parse_status_range(const char *s, uint64_t *lo, uint64_t *hi) {
    char first[8];
    const char *dash = strchr(s, '-');
    if (dash == NULL) {
        if (sg__cfg_parse_uint(s, lo) < 0)
            return -1;
        *hi = *lo;
        return 0;
    }
    size_t len = (size_t)(dash - s);
    if (len == 0 || len >= sizeof(first))
        return -1;
    memcpy(first, s, len);
    first[len] = '\0';
    return sg__cfg_parse_uint(first, lo) < 0 || sg__cfg_parse_uint(dash + 1, hi) < 0 ? -1 : 0;
}

static void build_expect(struct sg__cfg_ctx *cx, struct sg_health_cfg *h, const yaml_node_t *n,
                         const char *path) {
    char q[SG__CFG_QUOTESZ];
    uint64_t lo, hi;
    const char *s = sg__cfg_scalar(cx, n, path, "a status or a range of statuses");
    if (s == NULL)
        return;
    if (parse_status_range(s, &lo, &hi) < 0) {
        sg__cfg_error(cx, n, path, "%s is not a status or a range of statuses (such as 200-399)",
                      sg__cfg_quote(q, sizeof(q), s));
    } else if (lo < 100 || hi > 599) {
        sg__cfg_error(cx, n, path, "%s is out of range (100 to 599)",
                      sg__cfg_quote(q, sizeof(q), s));
    } else if (lo > hi) {
        sg__cfg_error(cx, n, path, "%s is an empty range (write the lower status first)",
                      sg__cfg_quote(q, sizeof(q), s));
    } else {
        h->status_min = (uint16_t)lo;
        h->status_max = (uint16_t)hi;
    }
}

/* Replaces *dst (a default or NULL) with a copy of s. */
static void set_str(struct sg__cfg_ctx *cx, char **dst, const char *s) {
    free(*dst);
    *dst = sg__cfg_strdup(cx, s);
}

static void build_health(struct sg__cfg_ctx *cx, struct sg_health_cfg *h, const yaml_node_t *n,
                         const char *path) {
    static const char *const names[] = {"method", "path", "host", "expect"};
    enum { METHOD, PATH, HOST, EXPECT, NSTR };
    yaml_node_t *vals[NSTR + NHEALTHF];
    char kp[SG__CFG_PATHSZ], q[SG__CFG_QUOTESZ];
    const char *s;

    /* "health:" alone would turn checks on by accident (say, with every key
     * commented out): ask for an explicit {} */
    if (sg__cfg_is_null(n)) {
        sg__cfg_error(cx, n, path,
                      "has no value (expected a map; write health: {} to check with the defaults)");
        return;
    }
    if (!sg__cfg_get_map_fields(cx, n, path, names, NSTR, health_fields, NHEALTHF, vals))
        return;
    h->enabled = true;
    sg__cfg_fields(cx, health_fields, NHEALTHF, vals + NSTR, path, h, NULL);
    if (vals[METHOD]) {
        sg__cfg_path_key(kp, path, "method");
        if ((s = sg__cfg_scalar(cx, vals[METHOD], kp, "an HTTP method")) != NULL) {
            size_t len = strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZ");
            if (len == 0 || len > MAX_METHOD_LEN || s[len] != '\0')
                sg__cfg_error(cx, vals[METHOD], kp,
                              "%s is not an HTTP method (upper-case letters, such as GET or HEAD)",
                              sg__cfg_quote(q, sizeof(q), s));
            else
                set_str(cx, &h->method, s);
        }
    }
    if (vals[PATH]) {
        sg__cfg_path_key(kp, path, "path");
        if ((s = sg__cfg_scalar(cx, vals[PATH], kp, "a path")) != NULL) {
            if (s[0] != '/')
                sg__cfg_error(cx, vals[PATH], kp, "%s must start with '/'",
                              sg__cfg_quote(q, sizeof(q), s));
            else if (!visible_ascii(s))
                sg__cfg_error(cx, vals[PATH], kp,
                              "%s has a space, a control character or a non-ASCII byte "
                              "(percent-encode them)",
                              sg__cfg_quote(q, sizeof(q), s));
            else
                set_str(cx, &h->path, s);
        }
    }
    if (vals[HOST]) {
        sg__cfg_path_key(kp, path, "host");
        if ((s = sg__cfg_scalar(cx, vals[HOST], kp, "a Host header value")) != NULL) {
            if (!visible_ascii(s))
                sg__cfg_error(cx, vals[HOST], kp,
                              "%s is not a Host header value (no spaces or control characters)",
                              sg__cfg_quote(q, sizeof(q), s));
            else if (*s) /* "": the server's address, as when left out */
                set_str(cx, &h->host, s);
        }
    }
    if (vals[EXPECT]) {
        sg__cfg_path_key(kp, path, "expect");
        build_expect(cx, h, vals[EXPECT], kp);
    }
}

/* ---- outlier and retry -------------------------------------------------- */

static void build_outlier(struct sg__cfg_ctx *cx, struct sg_outlier_cfg *o, const yaml_node_t *n,
                          const char *path) {
    yaml_node_t *vals[NOUTLIERF];
    bool ok[NOUTLIERF];
    char kp[SG__CFG_PATHSZ], a[32], b[32];

    if (!sg__cfg_get_map_fields(cx, n, path, NULL, 0, outlier_fields, NOUTLIERF, vals))
        return;
    sg__cfg_fields(cx, outlier_fields, NOUTLIERF, vals, path, o, ok);
    if (ok[OUT_BASE_EJECTION] && ok[OUT_MAX_EJECTION] && o->max_ejection_ms < o->base_ejection_ms) {
        size_t at = vals[OUT_MAX_EJECTION] ? OUT_MAX_EJECTION : OUT_BASE_EJECTION;
        sg__cfg_path_key(kp, path, outlier_fields[at].name);
        sg__cfg_fmt_duration(a, sizeof(a), o->max_ejection_ms);
        sg__cfg_fmt_duration(b, sizeof(b), o->base_ejection_ms);
        sg__cfg_error(cx, vals[at], kp, "max_ejection (%s) is less than base_ejection (%s)", a, b);
    }
}

static void build_retry(struct sg__cfg_ctx *cx, struct sg_retry_cfg *r, const yaml_node_t *n,
                        const char *path) {
    yaml_node_t *vals[NRETRYF];
    if (sg__cfg_get_map_fields(cx, n, path, NULL, 0, retry_fields, NRETRYF, vals))
        sg__cfg_fields(cx, retry_fields, NRETRYF, vals, path, r, NULL);
}

/* ---- a pool ------------------------------------------------------------- */

static void build_pool(struct sg__cfg_ctx *cx, struct sg_pool *p, const yaml_node_t *n,
                       const char *path) {
    static const char *const names[] = {"servers",  "backup",        "balance",
                                        "hash_key", "hash_fallback", "health",
                                        "outlier",  "retry",         "scale"};
    enum {
        SERVERS,
        BACKUP,
        BALANCE,
        HASH_KEY,
        HASH_FALLBACK,
        HEALTH,
        OUTLIER,
        RETRY,
        SCALE,
        NKEYS
    };
    yaml_node_t *vals[NKEYS + NPOOLF];
    char kp[SG__CFG_PATHSZ];
    int algo = SG_BALANCE_ROUND_ROBIN;

    if (!pool_defaults(cx, p))
        return;
    if (sg__cfg_is_null(n)) {
        sg__cfg_error(cx, n, path, "has no value (expected a map with servers)");
        return;
    }
    if (!sg__cfg_get_map_fields(cx, n, path, names, NKEYS, pool_fields, NPOOLF, vals))
        return;
    sg__cfg_fields(cx, pool_fields, NPOOLF, vals + NKEYS, path, p, NULL);
    build_servers(cx, p, n, vals[SERVERS], vals[BACKUP], path, vals[SCALE]);

    if (vals[BALANCE]) {
        sg__cfg_path_key(kp, path, "balance");
        if ((algo = parse_algo(cx, vals[BALANCE], kp, false)) >= 0)
            p->balance = (enum sg_balance_algo)algo;
    }
    if (vals[HASH_FALLBACK]) {
        sg__cfg_path_key(kp, path, "hash_fallback");
        int fb = parse_algo(cx, vals[HASH_FALLBACK], kp, true);
        if (fb >= 0)
            p->hash_fallback = (enum sg_balance_algo)fb;
        if (fb >= 0 && algo >= 0 && p->balance != SG_BALANCE_HASH)
            sg__cfg_error(cx, vals[HASH_FALLBACK], kp, "hash_fallback needs balance: hash (not %s)",
                          algo_names[p->balance]);
    }
    sg__cfg_path_key(kp, path, "hash_key");
    if (vals[HASH_KEY]) {
        build_hash_key(cx, p, vals[HASH_KEY], kp);
        if (algo >= 0 && p->balance != SG_BALANCE_HASH)
            sg__cfg_error(cx, vals[HASH_KEY], kp, "hash_key needs balance: hash (not %s)",
                          algo_names[p->balance]);
    } else if (p->balance == SG_BALANCE_HASH) {
        sg__cfg_error(cx, vals[BALANCE], kp,
                      "required with balance: hash (header:NAME, cookie:NAME, query:NAME, ip or "
                      "path)");
    }

    if (vals[HEALTH]) {
        sg__cfg_path_key(kp, path, "health");
        build_health(cx, &p->health, vals[HEALTH], kp);
    }
    if (vals[OUTLIER]) {
        sg__cfg_path_key(kp, path, "outlier");
        build_outlier(cx, &p->outlier, vals[OUTLIER], kp);
    }
    if (vals[RETRY]) {
        sg__cfg_path_key(kp, path, "retry");
        build_retry(cx, &p->retry, vals[RETRY], kp);
    }
    if (vals[SCALE]) {
        sg__cfg_path_key(kp, path, "scale");
        sg__cfg_build_scale(cx, p, vals[SCALE], kp);
        /* instances join when their health check passes: a scaled pool is
         * always checked, by default every second, ready at the first pass */
        if (p->scale.enabled && !p->health.enabled) {
            p->health.enabled = true;
            p->health.interval_ms = 1000;
            p->health.rise = 1;
        }
    }
}

static bool valid_pool_name(const char *s) {
    if (!*s)
        return false;
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

void sg__cfg_build_pools(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path) {
    struct sg_config *c = cx->cfg;
    char kp[SG__CFG_PATHSZ], q[SG__CFG_QUOTESZ];

    if (sg__cfg_is_null(n)) {
        sg__cfg_error(cx, n, path, "has no value (expected a map of pool names to pools)");
        return;
    }
    if (n->type != YAML_MAPPING_NODE) {
        sg__cfg_error(cx, n, path, "expected a map of pool names to pools, got %s",
                      sg__cfg_shape(n));
        return;
    }
    size_t count = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
    if (count == 0) {
        sg__cfg_error(cx, n, path, "no pool is defined");
        return;
    }
    c->pools = sg__cfg_alloc(cx, count, sizeof(*c->pools));
    if (c->pools == NULL)
        return;
    for (yaml_node_pair_t *pr = n->data.mapping.pairs.start; pr < n->data.mapping.pairs.top; pr++) {
        yaml_node_t *k = sg__cfg_node(cx, pr->key), *v = sg__cfg_node(cx, pr->value);
        if (k == NULL || v == NULL)
            continue;
        if (k->type != YAML_SCALAR_NODE) {
            sg__cfg_error(cx, k, path, "pool names must be strings, got %s", sg__cfg_shape(k));
            continue;
        }
        const char *name = (const char *)k->data.scalar.value;
        sg__cfg_path_key(kp, path, name);
        if (!valid_pool_name(name) || strlen(name) != k->data.scalar.length) {
            sg__cfg_error(cx, k, kp, "%s is not a valid pool name (use letters, digits, _ and -)",
                          sg__cfg_quote(q, sizeof(q), name));
            continue;
        }
        bool dup = false;
        for (size_t j = 0; j < c->npools && !dup; j++)
            dup = strcmp(c->pools[j].name, name) == 0;
        if (dup) {
            sg__cfg_error(cx, k, kp, "duplicate key (pool defined twice)");
            continue;
        }
        struct sg_pool *p = &c->pools[c->npools];
        if ((p->name = sg__cfg_strdup(cx, name)) == NULL)
            return;
        c->npools++;
        build_pool(cx, p, v, kp);
    }
}
