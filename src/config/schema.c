/*
 * The config schema: walks a libyaml document (nodes with line numbers) and
 * fills a struct sg_config, reporting every problem it finds with its line
 * and key path instead of stopping at the first. This file has the top
 * level and the sections listen, workers, limits and routes; pools are in
 * schema_pool.c, the node and value helpers in walk.c
 * (docs/configuration.md is the user's reference).
 *
 * The walk never goes deeper than the schema, so YAML aliases (which libyaml
 * loads as shared, possibly cyclic node references) cannot make it loop or
 * blow up. Everything allocated goes into cx->cfg, which config.c frees if
 * any error was reported.
 */
#include "config/config_int.h"

#include "core/parse.h"
#include "http/http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

#define MAX_WORKERS 256

/* Indices into limit_fields of the two keys checked against each other. */
enum { LIM_MAX_REQUEST_LINE = 5, LIM_MAX_HEADER_BYTES = 6 };

static const struct sg__cfg_field limit_fields[] = {
    {"max_connections", SG__CFG_COUNT, 4, offsetof(struct sg_limits, max_connections), 1, 10000000},
    {"header_timeout", SG__CFG_DURATION, 8, offsetof(struct sg_limits, header_timeout_ms), 1,
     SG__CFG_YEAR_MS},
    {"idle_timeout", SG__CFG_DURATION, 8, offsetof(struct sg_limits, idle_timeout_ms), 1,
     SG__CFG_YEAR_MS},
    {"body_timeout", SG__CFG_DURATION, 8, offsetof(struct sg_limits, body_timeout_ms), 1,
     SG__CFG_YEAR_MS},
    {"shutdown_timeout", SG__CFG_DURATION, 8, offsetof(struct sg_limits, shutdown_timeout_ms), 0,
     SG__CFG_YEAR_MS},
    {"max_request_line", SG__CFG_SIZE, 4, offsetof(struct sg_limits, max_request_line), 256,
     64 << 10},
    {"max_header_bytes", SG__CFG_SIZE, 4, offsetof(struct sg_limits, max_header_bytes), 1 << 10,
     64 << 10},
    {"max_body_bytes", SG__CFG_SIZE, 8, offsetof(struct sg_limits, max_body_bytes), 0, UINT64_MAX},
    /* last: the checks between keys above index this table */
    {"rate_limit_keys", SG__CFG_COUNT, 4, offsetof(struct sg_limits, rate_limit_keys), 1024,
     100000000},
};
#define NLIMITS (sizeof(limit_fields) / sizeof(limit_fields[0]))

/* ---- listen ------------------------------------------------------------- */

void sg__cfg_listen_addr(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path,
                         struct sg_listen *l) {
    char q[SG__CFG_QUOTESZ], host[INET6_ADDRSTRLEN], text[INET6_ADDRSTRLEN + 16];
    const char *s = sg__cfg_scalar(cx, n, path, "host:port");
    if (s == NULL)
        return;
    if (sg_parse_addr(s, &l->addr, &l->addrlen) < 0) {
        sg__cfg_error(cx, n, path, "%s is not host:port", sg__cfg_quote(q, sizeof(q), s));
        return;
    }
    if (l->addr.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&l->addr;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        snprintf(text, sizeof(text), "[%s]:%u", host, ntohs(a->sin6_port));
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&l->addr;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
        snprintf(text, sizeof(text), "%s:%u", host, ntohs(a->sin_port));
    }
    l->text = sg__cfg_strdup(cx, text);
}

static void listen_one(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path, size_t i,
                       void *arg) {
    struct sg_config *c = arg;
    struct sg_listen *l = &c->listen[i];
    char q[SG__CFG_QUOTESZ];
    sg__cfg_listen_addr(cx, n, path, l);
    if (l->text == NULL)
        return;
    for (size_t j = 0; j < i; j++) {
        if (c->listen[j].text && strcmp(c->listen[j].text, l->text) == 0) {
            const char *s = (const char *)n->data.scalar.value;
            sg__cfg_error(cx, n, path, "%s is listed twice (%s)", sg__cfg_quote(q, sizeof(q), s),
                          l->text);
            free(l->text);
            l->text = NULL;
            return;
        }
    }
}

static void build_listen(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path) {
    struct sg_config *c = cx->cfg;
    if (sg__cfg_is_null(n)) {
        sg__cfg_error(cx, n, path, "has no value (expected host:port)");
        return;
    }
    long count = sg__cfg_each_item(cx, n, path, "host:port", NULL, NULL);
    if (count < 0)
        return;
    c->listen = sg__cfg_alloc(cx, (size_t)count, sizeof(*c->listen));
    if (c->listen == NULL)
        return;
    c->nlisten = (size_t)count; /* calloc'd: entries with errors keep text NULL */
    sg__cfg_each_item(cx, n, path, "host:port", listen_one, c);
}

/* ---- workers ------------------------------------------------------------ */

static uint32_t cores(void) {
    unsigned n = uv_available_parallelism();
    if (n < 1)
        n = 1;
    return n > MAX_WORKERS ? MAX_WORKERS : (uint32_t)n;
}

static void build_workers(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path) {
    char q[SG__CFG_QUOTESZ];
    uint64_t v;
    const char *s = sg__cfg_scalar(cx, n, path, "a number or \"auto\"");
    if (s == NULL)
        return;
    if (strcmp(s, "auto") == 0) {
        cx->cfg->workers = cores();
        return;
    }
    if (sg__cfg_parse_uint(s, &v) < 0) {
        sg__cfg_error(cx, n, path, "%s is not a number or \"auto\"",
                      sg__cfg_quote(q, sizeof(q), s));
        return;
    }
    if (v < 1 || v > MAX_WORKERS) {
        sg__cfg_error(cx, n, path, "%s is out of range (1 to %d)", sg__cfg_quote(q, sizeof(q), s),
                      MAX_WORKERS);
        return;
    }
    cx->cfg->workers = (uint32_t)v;
}

/* ---- limits ------------------------------------------------------------- */

static void build_limits(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path) {
    struct sg_limits *l = &cx->cfg->limits;
    const char *names[NLIMITS];
    yaml_node_t *vals[NLIMITS];
    char kp[SG__CFG_PATHSZ], a[32], b[32];
    bool ok[NLIMITS];

    for (size_t i = 0; i < NLIMITS; i++)
        names[i] = limit_fields[i].name;
    if (!sg__cfg_get_map(cx, n, path, names, NLIMITS, vals))
        return;
    for (size_t i = 0; i < NLIMITS; i++) {
        ok[i] = true;
        if (vals[i]) {
            sg__cfg_path_key(kp, path, names[i]);
            ok[i] = sg__cfg_set_field(cx, &limit_fields[i], vals[i], kp, l);
        }
    }
    /* the request line is part of the head, so it must fit in it */
    if (ok[LIM_MAX_REQUEST_LINE] && ok[LIM_MAX_HEADER_BYTES] &&
        l->max_request_line > l->max_header_bytes) {
        size_t at = vals[LIM_MAX_REQUEST_LINE] ? LIM_MAX_REQUEST_LINE : LIM_MAX_HEADER_BYTES;
        sg__cfg_path_key(kp, path, names[at]);
        sg__cfg_fmt_size(a, sizeof(a), l->max_request_line);
        sg__cfg_fmt_size(b, sizeof(b), l->max_header_bytes);
        sg__cfg_error(cx, vals[at], kp,
                      "max_request_line (%s) is larger than max_header_bytes (%s)", a, b);
    }
}

/* ---- routes ------------------------------------------------------------- */

static const struct {
    const char *name;
    enum sg_http_method id;
} methods[] = {
    {"GET", SG_METHOD_GET},         {"HEAD", SG_METHOD_HEAD},     {"POST", SG_METHOD_POST},
    {"PUT", SG_METHOD_PUT},         {"DELETE", SG_METHOD_DELETE}, {"CONNECT", SG_METHOD_CONNECT},
    {"OPTIONS", SG_METHOD_OPTIONS}, {"TRACE", SG_METHOD_TRACE},   {"PATCH", SG_METHOD_PATCH},
};

static void method_one(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path, size_t i,
                       void *arg) {
    uint32_t *mask = arg;
    char q[SG__CFG_QUOTESZ];
    (void)i;
    const char *s = sg__cfg_scalar(cx, n, path, "an HTTP method");
    if (s == NULL)
        return;
    for (size_t j = 0; j < sizeof(methods) / sizeof(methods[0]); j++) {
        if (strcasecmp(s, methods[j].name) == 0) {
            *mask |= 1u << methods[j].id;
            return;
        }
    }
    sg__cfg_error(cx, n, path,
                  "%s is not an HTTP method (GET, HEAD, POST, PUT, DELETE, "
                  "CONNECT, OPTIONS, TRACE, PATCH)",
                  sg__cfg_quote(q, sizeof(q), s));
}

static bool hostname_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

/* Labels of [a-z0-9_-]{1,63} separated by dots; at most 253 bytes. */
static bool valid_hostname(const char *s, size_t len) {
    size_t label = 0;
    if (len == 0 || len > 253)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '.') {
            if (label == 0)
                return false;
            label = 0;
        } else if (hostname_char(s[i]) && ++label <= 63) {
            continue;
        } else {
            return false;
        }
    }
    return label > 0;
}

/*
 * Returns the route host in its stored form (lower case, no trailing dot;
 * "*.suffix" kept as is), NULL for "*" (any host) with *bad false, or NULL
 * with *bad true when s is not a host name.
 */
static char *route_host(struct sg__cfg_ctx *cx, const char *s, bool *bad) {
    size_t len = strlen(s);
    char *h = malloc(len + 1);
    *bad = false;
    if (h == NULL) {
        cx->oom = true;
        return NULL;
    }
    for (size_t i = 0; i <= len; i++)
        h[i] = (s[i] >= 'A' && s[i] <= 'Z') ? (char)(s[i] + 32) : s[i];
    if (strcmp(h, "*") == 0) {
        free(h);
        return NULL;
    }
    if (h[0] == '[') {
        struct in6_addr a;
        char inner[INET6_ADDRSTRLEN + 1];
        if (len >= 3 && len - 2 < sizeof(inner) && h[len - 1] == ']') {
            memcpy(inner, h + 1, len - 2);
            inner[len - 2] = '\0';
            if (inet_pton(AF_INET6, inner, &a) == 1)
                return h;
        }
    } else {
        if (len > 1 && h[len - 1] == '.')
            h[--len] = '\0';
        size_t skip = (len > 2 && h[0] == '*' && h[1] == '.') ? 2 : 0;
        if (valid_hostname(h + skip, len - skip))
            return h;
    }
    free(h);
    *bad = true;
    return NULL;
}

static void build_match(struct sg__cfg_ctx *cx, struct sg_route *r, const yaml_node_t *n,
                        const char *path) {
    static const char *const names[] = {"host", "path_prefix", "methods"};
    yaml_node_t *vals[3];
    char kp[SG__CFG_PATHSZ], q[SG__CFG_QUOTESZ];
    const char *s;

    if (!sg__cfg_get_map(cx, n, path, names, 3, vals))
        return;
    if (vals[0]) {
        sg__cfg_path_key(kp, path, "host");
        if ((s = sg__cfg_scalar(cx, vals[0], kp, "a host name")) != NULL) {
            bool bad;
            r->host = route_host(cx, s, &bad);
            if (bad)
                sg__cfg_error(cx, vals[0], kp, "%s is not a host name",
                              sg__cfg_quote(q, sizeof(q), s));
        }
    }
    if (vals[1]) {
        sg__cfg_path_key(kp, path, "path_prefix");
        if ((s = sg__cfg_scalar(cx, vals[1], kp, "a path")) != NULL) {
            if (s[0] != '/') {
                sg__cfg_error(cx, vals[1], kp, "%s must start with '/'",
                              sg__cfg_quote(q, sizeof(q), s));
            } else if (strcmp(s, "/") != 0) { /* "/" matches every path: same as none */
                r->path_prefix = sg__cfg_strdup(cx, s);
                r->path_prefix_len = strlen(s);
            }
        }
    }
    if (vals[2]) {
        sg__cfg_path_key(kp, path, "methods");
        if (sg__cfg_is_null(vals[2]))
            sg__cfg_error(cx, vals[2], kp, "has no value (expected a list of HTTP methods)");
        else
            sg__cfg_each_item(cx, vals[2], kp, "an HTTP method", method_one, &r->methods);
    }
}

/*
 * The pool that the value of key (pool, read_pool) names, or NULL after
 * reporting. c->pools is complete: pools are built before routes.
 */
static struct sg_pool *route_pool(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path) {
    struct sg_config *c = cx->cfg;
    char q[SG__CFG_QUOTESZ];
    const char *s = sg__cfg_scalar(cx, n, path, "a pool name");
    if (s == NULL)
        return NULL;
    for (size_t j = 0; j < c->npools; j++)
        if (strcmp(c->pools[j].name, s) == 0)
            return &c->pools[j];
    sg__cfg_error(cx, n, path, "no pool named %s", sg__cfg_quote(q, sizeof(q), s));
    return NULL;
}

/* "log": access (a path, "stdout" or "off") and level. */
static void build_log(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path) {
    static const char *const names[] = {"access", "level"};
    static const char *const levels[] = {"error", "warn", "info", "debug"};
    yaml_node_t *vals[2];
    char kp[SG__CFG_PATHSZ], q[SG__CFG_QUOTESZ];
    if (sg__cfg_is_null(n) || n->type != YAML_MAPPING_NODE) {
        sg__cfg_error(cx, n, path, "expected a map with access and level, got %s",
                      sg__cfg_is_null(n) ? "nothing" : sg__cfg_shape(n));
        return;
    }
    sg__cfg_get_map(cx, n, path, names, 2, vals);
    if (vals[0]) {
        sg__cfg_path_key(kp, path, "access");
        const char *s = sg__cfg_scalar(cx, vals[0], kp, "a file path, stdout or off");
        if (s && strcmp(s, "off") != 0) {
            if (s[0] != '/' && strcmp(s, "stdout") != 0)
                sg__cfg_error(cx, vals[0], kp, "%s is not an absolute path (or stdout, or off)",
                              sg__cfg_quote(q, sizeof(q), s));
            else
                cx->cfg->access_log = sg__cfg_strdup(cx, s);
        }
    }
    if (vals[1]) {
        sg__cfg_path_key(kp, path, "level");
        const char *s = sg__cfg_scalar(cx, vals[1], kp, "a level");
        for (int i = 0; s && i < 4; i++)
            if (strcmp(s, levels[i]) == 0)
                cx->cfg->log_level = i;
        if (s && cx->cfg->log_level < 0)
            sg__cfg_error(cx, vals[1], kp, "%s is not error, warn, info or debug",
                          sg__cfg_quote(q, sizeof(q), s));
    }
}

/* A route's name (its metrics label): 1 to 64 letters, digits and
 * "_-.:/", once per config. */
static void route_name(struct sg__cfg_ctx *cx, struct sg_config *c, size_t i, const yaml_node_t *n,
                       const char *path) {
    char q[SG__CFG_QUOTESZ];
    const char *s = sg__cfg_scalar(cx, n, path, "a name");
    if (s == NULL)
        return;
    size_t len = strlen(s);
    bool ok = len >= 1 && len <= 64;
    for (size_t k = 0; k < len && ok; k++)
        ok = (s[k] >= 'a' && s[k] <= 'z') || (s[k] >= 'A' && s[k] <= 'Z') ||
             (s[k] >= '0' && s[k] <= '9') || strchr("_-.:/", s[k]) != NULL;
    if (!ok) {
        sg__cfg_error(cx, n, path, "%s is not a route name (1 to 64 letters, digits and _ - . : /)",
                      sg__cfg_quote(q, sizeof(q), s));
        return;
    }
    for (size_t k = 0; k < i; k++) {
        if (c->routes[k].name && strcmp(c->routes[k].name, s) == 0) {
            sg__cfg_error(cx, n, path, "%s is also the name of routes[%zu]",
                          sg__cfg_quote(q, sizeof(q), s), k);
            return;
        }
    }
    c->routes[i].name = sg__cfg_strdup(cx, s);
}

static void build_route(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path, size_t i,
                        void *arg) {
    static const char *const names[] = {"match",         "pool",       "read_pool",
                                        "retryable",     "rate_limit", "rate_limit_headers",
                                        "max_in_flight", "queue_size", "queue_timeout",
                                        "priority",      "cache",      "name"};
    enum {
        MATCH,
        POOL,
        READ_POOL,
        RETRYABLE,
        RATE_LIMIT,
        RATE_LIMIT_HEADERS,
        MAX_IN_FLIGHT,
        QUEUE_SIZE,
        QUEUE_TIMEOUT,
        PRIORITY,
        CACHE,
        NAME,
        NROUTE
    };
    struct sg_config *c = arg;
    struct sg_route *r = &c->routes[i];
    yaml_node_t *vals[NROUTE];
    char kp[SG__CFG_PATHSZ];

    r->rate_limit_headers = true;
    r->queue_timeout_ms = 5000;
    r->priority = 5;
    if ((r->in_flight = sg__cfg_alloc(cx, 1, sizeof(*r->in_flight))) == NULL ||
        (r->queued = sg__cfg_alloc(cx, 1, sizeof(*r->queued))) == NULL)
        return;

    if (sg__cfg_is_null(n) || n->type != YAML_MAPPING_NODE) {
        sg__cfg_error(cx, n, path, "expected a map with match and pool, got %s",
                      sg__cfg_is_null(n) ? "nothing" : sg__cfg_shape(n));
        return;
    }
    sg__cfg_get_map(cx, n, path, names, NROUTE, vals);
    if (vals[MATCH]) {
        sg__cfg_path_key(kp, path, "match");
        build_match(cx, r, vals[MATCH], kp);
    }
    if (vals[NAME]) {
        sg__cfg_path_key(kp, path, "name");
        route_name(cx, c, i, vals[NAME], kp);
    }
    if (vals[READ_POOL]) {
        sg__cfg_path_key(kp, path, "read_pool");
        r->read_pool = route_pool(cx, vals[READ_POOL], kp);
    }
    if (vals[RETRYABLE]) {
        sg__cfg_path_key(kp, path, "retryable");
        r->retryable = sg__cfg_bool(cx, vals[RETRYABLE], kp) == 1;
    }
    if (vals[RATE_LIMIT]) {
        sg__cfg_path_key(kp, path, "rate_limit");
        sg__cfg_build_rate_limit(cx, r, i, vals[RATE_LIMIT], kp);
    }
    if (vals[RATE_LIMIT_HEADERS]) {
        sg__cfg_path_key(kp, path, "rate_limit_headers");
        r->rate_limit_headers = sg__cfg_bool(cx, vals[RATE_LIMIT_HEADERS], kp) != 0;
    }
    if (vals[MAX_IN_FLIGHT]) {
        static const struct sg__cfg_field f = {
            "max_in_flight", SG__CFG_COUNT, 4, offsetof(struct sg_route, max_in_flight), 0,
            10000000};
        sg__cfg_path_key(kp, path, "max_in_flight");
        sg__cfg_set_field(cx, &f, vals[MAX_IN_FLIGHT], kp, r);
    }
    if (vals[PRIORITY]) {
        static const struct sg__cfg_field pf = {
            "priority", SG__CFG_COUNT, 4, offsetof(struct sg_route, priority), 1, 10};
        sg__cfg_path_key(kp, path, "priority");
        sg__cfg_set_field(cx, &pf, vals[PRIORITY], kp, r);
    }
    static const struct sg__cfg_field qf[] = {
        {"queue_size", SG__CFG_COUNT, 4, offsetof(struct sg_route, queue_size), 0, 1000000},
        {"queue_timeout", SG__CFG_DURATION, 8, offsetof(struct sg_route, queue_timeout_ms), 1,
         SG__CFG_YEAR_MS},
    };
    for (int k = 0; k < 2; k++) {
        yaml_node_t *qn = vals[QUEUE_SIZE + k];
        if (qn == NULL)
            continue;
        sg__cfg_path_key(kp, path, qf[k].name);
        if (sg__cfg_set_field(cx, &qf[k], qn, kp, r) && vals[MAX_IN_FLIGHT] == NULL)
            sg__cfg_error(cx, qn, kp, "needs max_in_flight (the queue is for requests over it)");
    }
    if (vals[CACHE]) {
        sg__cfg_path_key(kp, path, "cache");
        sg__cfg_build_route_cache(cx, r, vals[CACHE], kp);
    }
    sg__cfg_path_key(kp, path, "pool");
    if (vals[POOL] == NULL)
        sg__cfg_error(cx, n, kp, "required key is missing");
    else
        r->pool = route_pool(cx, vals[POOL], kp);
}

static void build_routes(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path) {
    struct sg_config *c = cx->cfg;
    if (n->type != YAML_SEQUENCE_NODE) {
        sg__cfg_error(cx, n, path, "expected a list of routes, got %s", sg__cfg_shape(n));
        return;
    }
    size_t count = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
    if (count == 0) {
        sg__cfg_error(cx, n, path, "the list is empty (every request would get 404)");
        return;
    }
    c->routes = sg__cfg_alloc(cx, count, sizeof(*c->routes));
    if (c->routes == NULL)
        return;
    c->nroutes = count;
    sg__cfg_each_item(cx, n, path, "a route", build_route, c);
}

/* ---- the document ------------------------------------------------------- */

void sg__config_build(struct sg__cfg_ctx *cx) {
    static const char *const names[] = {"listen", "workers", "limits", "pools", "routes",
                                        "admin",  "redis",   "cache",  "log",   "health_path"};
    enum { LISTEN, WORKERS, LIMITS, POOLS, ROUTES, ADMIN, REDIS, CACHE, LOG, HEALTH_PATH, NROOT };
    struct sg_config *c = cx->cfg;
    yaml_node_t *vals[NROOT];

    c->workers = cores();
    c->limits = (struct sg_limits){
        .rate_limit_keys = 1000000,
        .max_connections = 10000,
        .header_timeout_ms = 10 * 1000,
        .idle_timeout_ms = 60 * 1000,
        .body_timeout_ms = 30 * 1000,
        .shutdown_timeout_ms = 30 * 1000,
        .max_request_line = 8 << 10,
        .max_header_bytes = 16 << 10,
        .max_body_bytes = 10 << 20,
    };
    sg__cfg_cache_defaults(&c->cache);
    c->log_level = -1;

    yaml_node_t *root = yaml_document_get_root_node(cx->doc);
    if (root == NULL) {
        sg__cfg_error_line(cx, 1, "", "the file is empty (expected listen, pools and routes)");
        return;
    }
    if (sg__cfg_is_null(root) || root->type != YAML_MAPPING_NODE) {
        sg__cfg_error(cx, root, "", "expected a map of sections (listen, pools, ...), got %s",
                      sg__cfg_shape(root));
        return;
    }
    sg__cfg_get_map(cx, root, "", names, NROOT, vals);

    if (vals[LISTEN])
        build_listen(cx, vals[LISTEN], "listen");
    else
        sg__cfg_error(cx, root, "listen", "required key is missing");
    if (vals[WORKERS])
        build_workers(cx, vals[WORKERS], "workers");
    if (vals[LIMITS])
        build_limits(cx, vals[LIMITS], "limits");
    if (vals[ADMIN])
        sg__cfg_build_admin(cx, vals[ADMIN], "admin");
    if (vals[REDIS])
        sg__cfg_build_redis(cx, vals[REDIS], "redis");
    if (vals[CACHE])
        sg__cfg_build_cache(cx, vals[CACHE], "cache");
    if (vals[LOG])
        build_log(cx, vals[LOG], "log");
    if (vals[HEALTH_PATH]) {
        char q[SG__CFG_QUOTESZ];
        const char *s = sg__cfg_scalar(cx, vals[HEALTH_PATH], "health_path", "a path");
        if (s && (s[0] != '/' || strlen(s) > 256 || strpbrk(s, "?# \t")))
            sg__cfg_error(cx, vals[HEALTH_PATH], "health_path",
                          "%s is not a path (starting with /, no query, at most 256 bytes)",
                          sg__cfg_quote(q, sizeof(q), s));
        else if (s)
            c->health_path = sg__cfg_strdup(cx, s);
    }
    if (vals[POOLS])
        sg__cfg_build_pools(cx, vals[POOLS], "pools");
    else
        sg__cfg_error(cx, root, "pools", "required key is missing");

    if (vals[ROUTES] && !sg__cfg_is_null(vals[ROUTES])) {
        build_routes(cx, vals[ROUTES], "routes");
    } else if (c->npools == 1) {
        /* one pool and no routes: everything goes to it */
        c->routes = sg__cfg_alloc(cx, 1, sizeof(*c->routes));
        if (c->routes) {
            c->routes[0].pool = &c->pools[0];
            c->routes[0].rate_limit_headers = true;
            c->routes[0].in_flight = sg__cfg_alloc(cx, 1, sizeof(*c->routes[0].in_flight));
            c->routes[0].queued = sg__cfg_alloc(cx, 1, sizeof(*c->routes[0].queued));
            c->routes[0].queue_timeout_ms = 5000;
            c->routes[0].priority = 5;
            c->nroutes = 1;
        }
    } else if (c->npools > 1) {
        sg__cfg_error(cx, vals[ROUTES] ? vals[ROUTES] : root, "routes",
                      "required when there is more than one pool");
    }
}
