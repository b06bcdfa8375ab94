/*
 * The response cache's configuration: the top-level "cache" section (the
 * memory tier's cap, the largest object stored, the Redis tier's lifetime
 * and timeout) and a route's "cache" (true, false or a map: ttl, vary
 * headers, stale windows, the miss lock's timeout and what may be stored).
 * docs/configuration.md is the user's reference; cache/store.h runs the
 * memory tier these numbers size.
 *
 * Like the rest of the schema, every default is set first and a key with an
 * error leaves it, so one mistake is reported once. The vary names hang off
 * the route and are freed by sg__config_free (derived snapshots share them).
 */
#include "config/config_int.h"

#include "cache/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define YEAR_MS  SG__CFG_YEAR_MS
#define MAX_VARY 8u /* request headers in a route's cache key */

/* ---- top level ------------------------------------------------------------ */

static const struct sg__cfg_field cache_fields[] = {
    {"memory", SG__CFG_SIZE, 8, offsetof(struct sg_cache_cfg, memory_bytes), 1 << 20, UINT64_MAX},
    {"max_object_size", SG__CFG_SIZE, 8, offsetof(struct sg_cache_cfg, max_object_size), 1,
     UINT64_MAX},
    {"l2_ttl", SG__CFG_DURATION, 8, offsetof(struct sg_cache_cfg, l2_ttl_ms), 0, YEAR_MS},
    {"l2_timeout", SG__CFG_DURATION, 8, offsetof(struct sg_cache_cfg, l2_timeout_ms), 1, YEAR_MS},
};
#define NCACHEF (sizeof(cache_fields) / sizeof(cache_fields[0]))
enum { F_MEMORY = 0, F_MAX_OBJECT_SIZE = 1 };

void sg__cfg_cache_defaults(struct sg_cache_cfg *c) {
    *c = (struct sg_cache_cfg){
        .memory_bytes = 100 << 20,
        .max_object_size = 1 << 20,
        .l2_ttl_ms = 3600 * 1000,
        .l2_timeout_ms = 50,
    };
}

void sg__cfg_build_cache(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path) {
    struct sg_cache_cfg *c = &cx->cfg->cache;
    yaml_node_t *vals[NCACHEF];
    bool ok[NCACHEF];
    char kp[SG__CFG_PATHSZ], a[32], b[32];

    if (sg__cfg_is_null(n)) {
        sg__cfg_error(cx, n, path,
                      "has no value (expected a map; write cache: {} for the defaults)");
        return;
    }
    if (!sg__cfg_get_map_fields(cx, n, path, NULL, 0, cache_fields, NCACHEF, vals))
        return;
    sg__cfg_fields(cx, cache_fields, NCACHEF, vals, path, c, ok);
    /* the memory tier is SG_CACHE_SHARDS shards of memory / SG_CACHE_SHARDS,
     * and a shard must hold an object's body with its head and key: a body
     * may take 7/8 of it. Without max_object_size, the default shrinks to
     * fit a small memory. */
    uint64_t fit = c->memory_bytes / SG_CACHE_SHARDS / 8 * 7;
    if (ok[F_MEMORY] && !vals[F_MAX_OBJECT_SIZE] && c->max_object_size > fit)
        c->max_object_size = fit;
    if (ok[F_MEMORY] && ok[F_MAX_OBJECT_SIZE] && c->max_object_size > fit) {
        sg__cfg_path_key(kp, path, cache_fields[F_MAX_OBJECT_SIZE].name);
        sg__cfg_fmt_size(a, sizeof(a), c->max_object_size);
        sg__cfg_fmt_size(b, sizeof(b), fit);
        sg__cfg_error(cx, vals[F_MAX_OBJECT_SIZE], kp,
                      "max_object_size (%s) does not fit the memory tier: at most %s with this "
                      "memory (7/8 of one of its %d shards)",
                      a, b, SG_CACHE_SHARDS);
    }
}

/* ---- a route's cache --------------------------------------------------------- */

static const struct sg__cfg_field route_fields[] = {
    {"ttl", SG__CFG_DURATION, 8, offsetof(struct sg_route_cache, ttl_ms), 1, YEAR_MS},
    {"stale_while_revalidate", SG__CFG_DURATION, 8,
     offsetof(struct sg_route_cache, stale_while_revalidate_ms), 0, YEAR_MS},
    {"stale_if_error", SG__CFG_DURATION, 8, offsetof(struct sg_route_cache, stale_if_error_ms), 0,
     YEAR_MS},
    {"lock_timeout", SG__CFG_DURATION, 8, offsetof(struct sg_route_cache, lock_timeout_ms), 1,
     YEAR_MS},
};
#define NROUTEF (sizeof(route_fields) / sizeof(route_fields[0]))

/* One vary name: a token, stored lower case, each header once. */
static void vary_one(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path, size_t i,
                     void *arg) {
    struct sg_route_cache *rc = arg;
    char q[SG__CFG_QUOTESZ];
    (void)i;
    const char *s = sg__cfg_scalar(cx, n, path, "a header name");
    if (s == NULL)
        return;
    if (!sg__cfg_token(s)) {
        sg__cfg_error(cx, n, path, "%s is not a header name", sg__cfg_quote(q, sizeof(q), s));
        return;
    }
    for (size_t j = 0; j < rc->nvary; j++) {
        if (strcasecmp(rc->vary[j], s) == 0) {
            sg__cfg_error(cx, n, path, "%s is listed twice (header names are case-insensitive)",
                          sg__cfg_quote(q, sizeof(q), s));
            return;
        }
    }
    char *v = sg__cfg_strdup(cx, s);
    if (v == NULL)
        return;
    for (char *p = v; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p + 32);
    rc->vary[rc->nvary++] = v;
}

static void build_vary(struct sg__cfg_ctx *cx, struct sg_route_cache *rc, const yaml_node_t *n,
                       const char *path) {
    if (sg__cfg_is_null(n)) {
        sg__cfg_error(cx, n, path, "has no value (expected a list of header names)");
        return;
    }
    long count = sg__cfg_each_item(cx, n, path, "a header name", NULL, NULL);
    if (count < 0)
        return;
    if ((size_t)count > MAX_VARY) {
        sg__cfg_error(cx, n, path, "%ld headers; a route's cache varies on at most %u", count,
                      MAX_VARY);
        return;
    }
    if ((rc->vary = sg__cfg_alloc(cx, (size_t)count, sizeof(*rc->vary))) == NULL)
        return;
    sg__cfg_each_item(cx, n, path, "a header name", vary_one, rc);
}

void sg__cfg_build_route_cache(struct sg__cfg_ctx *cx, struct sg_route *route, const yaml_node_t *n,
                               const char *path) {
    static const char *const names[] = {"vary", "set_cookie", "authorization",
                                        "client_cache_control"};
    enum { VARY, SET_COOKIE, AUTHORIZATION, CLIENT_CACHE_CONTROL, NKEYS };
    struct sg_route_cache *rc = &route->cache;
    yaml_node_t *vals[NKEYS + NROUTEF];
    char kp[SG__CFG_PATHSZ];

    if (sg__cfg_is_null(n)) {
        sg__cfg_error(cx, n, path, "has no value (expected true, false or a map)");
        return;
    }
    if (n->type == YAML_SEQUENCE_NODE) {
        sg__cfg_error(cx, n, path, "expected true, false or a map, got a list");
        return;
    }
    bool enable = true;
    if (n->type == YAML_SCALAR_NODE) {
        int v = sg__cfg_bool(cx, n, path);
        if (v < 0)
            return;
        enable = v == 1;
    } else if (!sg__cfg_get_map_fields(cx, n, path, names, NKEYS, route_fields, NROUTEF, vals)) {
        return;
    }
    if (!enable)
        return; /* cache: false is the same as no cache */
    *rc = (struct sg_route_cache){
        .enabled = true,
        .ttl_ms = 5 * 60 * 1000,
        .lock_timeout_ms = 5000,
        .client_cache_control = true,
    };
    if (n->type == YAML_SCALAR_NODE)
        return; /* cache: true: every default */
    sg__cfg_fields(cx, route_fields, NROUTEF, vals + NKEYS, path, rc, NULL);
    if (vals[VARY]) {
        sg__cfg_path_key(kp, path, "vary");
        build_vary(cx, rc, vals[VARY], kp);
    }
    bool *flags[] = {[SET_COOKIE] = &rc->set_cookie,
                     [AUTHORIZATION] = &rc->authorization,
                     [CLIENT_CACHE_CONTROL] = &rc->client_cache_control};
    for (int k = SET_COOKIE; k < NKEYS; k++) {
        if (vals[k] == NULL)
            continue;
        sg__cfg_path_key(kp, path, names[k]);
        int v = sg__cfg_bool(cx, vals[k], kp);
        if (v >= 0)
            *flags[k] = v == 1;
    }
}
