/*
 * The gateway's own admin endpoints: pools and their servers, the running
 * config, reload (see api.h and docs/admin-api.md).
 */
#include "admin/api.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/log.h"
#include "http/http.h"
#include "pool/state.h"

#define POOLS_PATH  "/api/v1/pools"
#define CONFIG_PATH "/api/v1/config"
#define RELOAD_PATH "/api/v1/reload"

static void api_error(struct sg_admin_response *resp, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void api_error(struct sg_admin_response *resp, int status, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    resp->status = status;
    json_decref(resp->json);
    resp->json = json_pack("{s:s}", "error", msg);
}

static void set_int(json_t *o, const char *k, uint64_t v) {
    json_object_set_new(o, k, json_integer((json_int_t)v));
}

static void set_str(json_t *o, const char *k, const char *v) {
    json_object_set_new(o, k, v ? json_string(v) : json_null());
}

static const char *balance_name(enum sg_balance_algo a) {
    switch (a) {
    case SG_BALANCE_ROUND_ROBIN:
        return "round_robin";
    case SG_BALANCE_WEIGHTED:
        return "weighted";
    case SG_BALANCE_LEAST_CONN:
        return "least_conn";
    case SG_BALANCE_P2C:
        return "p2c";
    case SG_BALANCE_HASH:
        return "hash";
    }
    return "?";
}

static const char *admin_state_name(unsigned a) {
    switch (a) {
    case SG_ADMIN_ENABLED:
        return "enabled";
    case SG_ADMIN_DRAINING:
        return "draining";
    case SG_ADMIN_DISABLED:
        return "disabled";
    }
    return "?";
}

/* "header:NAME" and the like, into buf. */
static const char *key_text(char *buf, size_t size, const char *kind, const char *name,
                            size_t name_len) {
    if (name == NULL)
        snprintf(buf, size, "%s", kind);
    else
        snprintf(buf, size, "%s:%.*s", kind, (int)name_len, name);
    return buf;
}

/* ------------------------------------------------------------------ */
/* Pools */

static json_t *server_json(const struct sg_server *sv, uint64_t now) {
    json_t *o = json_object();
    set_str(o, "address", sv->text);
    set_int(o, "weight", sv->weight);
    json_object_set_new(o, "backup", json_boolean(sv->backup));
    struct sg_server_state *st = sg_server_state(sv->id);
    if (st == NULL) {
        json_object_set_new(o, "health", json_null());
        return o;
    }
    unsigned health = atomic_load(&st->health), adm = atomic_load(&st->admin);
    uint64_t ejected_until = atomic_load(&st->ejected_until);
    set_str(o, "health", health == SG_HEALTH_UP ? "up" : "down");
    set_str(o, "admin", admin_state_name(adm));
    json_object_set_new(o, "ejected", json_boolean(ejected_until > now));
    json_object_set_new(o, "usable", json_boolean(sg_server_usable(st, now)));
    set_int(o, "inflight", atomic_load(&st->inflight));
    set_int(o, "requests", atomic_load(&st->requests));
    set_int(o, "failures", atomic_load(&st->failures));
    if (sv->max_connections)
        set_int(o, "max_connections", sv->max_connections);
    return o;
}

static size_t usable_count(const struct sg_pool *p, uint64_t now) {
    size_t n = 0;
    for (size_t i = 0; i < p->nservers; i++) {
        struct sg_server_state *st = sg_server_state(p->servers[i].id);
        if (st && sg_server_usable(st, now))
            n++;
    }
    return n;
}

static json_t *pool_json(const struct sg_pool *p) {
    uint64_t now = sg_state_now();
    json_t *o = json_object();
    set_str(o, "name", p->name);
    set_str(o, "balance", balance_name(p->balance));
    json_object_set_new(o, "scaled", json_boolean(p->scale.enabled));
    set_int(o, "usable", usable_count(p, now));
    set_int(o, "queued", atomic_load(&((struct sg_pool *)p)->queued));
    json_t *list = json_array();
    for (size_t i = 0; i < p->nservers; i++)
        json_array_append_new(list, server_json(&p->servers[i], now));
    json_object_set_new(o, "servers", list);
    return o;
}

/* Percent-decodes s[0..len) into out (at most size - 1 bytes). Returns
 * false when it does not fit or has a bad escape or a NUL. */
static bool decode_segment(const char *s, size_t len, char *out, size_t size) {
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '%') {
            unsigned v = 0;
            if (i + 2 >= len)
                return false;
            for (int k = 1; k <= 2; k++) {
                char h = s[i + (size_t)k];
                v <<= 4;
                if (h >= '0' && h <= '9')
                    v |= (unsigned)(h - '0');
                else if (h >= 'a' && h <= 'f')
                    v |= (unsigned)(h - 'a' + 10);
                else if (h >= 'A' && h <= 'F')
                    v |= (unsigned)(h - 'A' + 10);
                else
                    return false;
            }
            c = (char)v;
            i += 2;
        }
        if (c == '\0' || n + 1 >= size)
            return false;
        out[n++] = c;
    }
    out[n] = '\0';
    return true;
}

static void pools_endpoint(const struct sg_admin_api *api, const char *rest, size_t rest_len,
                           const struct sg_admin_request *req, struct sg_admin_response *resp) {
    const struct sg_config *cfg = *api->running;
    bool get = req->method == SG_METHOD_GET || req->method == SG_METHOD_HEAD;
    /* "" or "/": every pool */
    if (rest_len == 0 || (rest_len == 1 && rest[0] == '/')) {
        if (!get) {
            api_error(resp, 405, "use GET");
            return;
        }
        json_t *list = json_array();
        for (size_t i = 0; i < cfg->npools; i++)
            json_array_append_new(list, pool_json(&cfg->pools[i]));
        resp->json = json_pack("{s:o}", "pools", list);
        return;
    }
    /* "/NAME" [ "/servers/ADDR/ACTION" ], a trailing slash allowed */
    const char *p = rest + 1, *end = rest + rest_len;
    if (end > p && end[-1] == '/')
        end--;
    const char *seg[4];
    size_t segl[4], nseg = 0;
    for (;;) {
        const char *slash = memchr(p, '/', (size_t)(end - p));
        const char *e = slash ? slash : end;
        if (nseg == 4 || e == p) {
            api_error(resp, 404, "not found");
            return;
        }
        seg[nseg] = p;
        segl[nseg++] = (size_t)(e - p);
        if (!slash)
            break;
        p = slash + 1;
    }
    char name[256];
    if (!decode_segment(seg[0], segl[0], name, sizeof(name)) || name[0] == '\0') {
        api_error(resp, 404, "not found");
        return;
    }
    struct sg_pool *pool = sg_config_pool(cfg, name);
    if (pool == NULL) {
        api_error(resp, 404, "no pool named %.64s", name);
        return;
    }
    if (nseg == 1) {
        if (!get) {
            api_error(resp, 405, "use GET");
            return;
        }
        resp->json = pool_json(pool);
        return;
    }
    if (nseg != 4 || segl[1] != 7 || memcmp(seg[1], "servers", 7) != 0) {
        api_error(resp, 404, "not found");
        return;
    }
    enum sg_admin_state to;
    if (segl[3] == 5 && memcmp(seg[3], "drain", 5) == 0)
        to = SG_ADMIN_DRAINING;
    else if (segl[3] == 6 && memcmp(seg[3], "enable", 6) == 0)
        to = SG_ADMIN_ENABLED;
    else if (segl[3] == 7 && memcmp(seg[3], "disable", 7) == 0)
        to = SG_ADMIN_DISABLED;
    else {
        api_error(resp, 404, "not found (the actions are drain, enable and disable)");
        return;
    }
    char addr[300];
    const struct sg_server *sv = NULL;
    if (decode_segment(seg[2], segl[2], addr, sizeof(addr))) {
        for (size_t i = 0; i < pool->nservers && sv == NULL; i++)
            if (strcmp(pool->servers[i].text, addr) == 0)
                sv = &pool->servers[i];
    } else {
        snprintf(addr, sizeof(addr), "%.*s", (int)(segl[2] > 64 ? 64 : segl[2]), seg[2]);
    }
    if (sv == NULL) {
        api_error(resp, 404, "pool %.64s has no server %.64s", pool->name, addr);
        return;
    }
    if (req->method != SG_METHOD_POST) {
        api_error(resp, 405, "use POST");
        return;
    }
    if (sg_server_set_admin(sv->id, to) != 0) {
        api_error(resp, 500, "cannot change the state of %.64s", sv->text);
        return;
    }
    sg_log_info("admin API: %s %s (pool %s)", admin_state_name(to), sv->text, pool->name);
    uint64_t now = sg_state_now();
    json_t *o = server_json(sv, now);
    set_str(o, "pool", pool->name);
    size_t usable = usable_count(pool, now);
    set_int(o, "pool_usable", usable);
    if (usable == 0)
        set_str(o, "note", "no server of the pool is usable now: its requests get 503");
    resp->json = o;
}

/* ------------------------------------------------------------------ */
/* Config */

static json_t *health_json(const struct sg_health_cfg *h) {
    if (!h->enabled)
        return json_null();
    json_t *o = json_object();
    set_str(o, "method", h->method);
    set_str(o, "path", h->path);
    set_str(o, "host", h->host);
    set_int(o, "interval_ms", h->interval_ms);
    set_int(o, "timeout_ms", h->timeout_ms);
    set_int(o, "expect_min", h->status_min);
    set_int(o, "expect_max", h->status_max);
    set_int(o, "rise", h->rise);
    set_int(o, "fall", h->fall);
    return o;
}

static json_t *scale_json(const struct sg_scale_cfg *s) {
    if (!s->enabled)
        return json_null();
    /* commands (command, scale_to, list, queue command) are left out: they
     * may carry credentials */
    json_t *o = json_object();
    set_str(o, "driver", s->driver == SG_SCALE_PROCESS ? "process" : "command");
    json_object_set_new(o, "enabled", json_boolean(s->autoscale));
    set_int(o, "min", s->min);
    set_int(o, "max", s->max);
    if (s->driver == SG_SCALE_PROCESS) {
        char ports[32];
        snprintf(ports, sizeof(ports), "%u-%u", (unsigned)s->port_min, (unsigned)s->port_max);
        set_str(o, "ports", ports);
    }
    json_t *t = json_object();
    static const char *const names[] = {"rps_per_instance",      "p95_ms",
                                        "inflight_per_instance", "cpu_percent",
                                        "memory_percent",        "error_rate_percent",
                                        "queue_per_instance"};
    const double vals[] = {s->rps_per_instance,  s->p95_ms,         s->inflight_per_instance,
                           s->cpu_percent,       s->memory_percent, s->error_rate,
                           s->queue_per_instance};
    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++)
        if (vals[i] > 0)
            json_object_set_new(t, names[i], json_real(vals[i]));
    json_object_set_new(o, "targets", t);
    set_int(o, "period_ms", s->period_ms);
    set_int(o, "window_ms", s->window_ms);
    set_int(o, "tolerance_percent", s->tolerance_percent);
    set_int(o, "scale_up_stabilization_ms", s->up_stabilization_ms);
    set_int(o, "scale_down_stabilization_ms", s->down_stabilization_ms);
    return o;
}

static json_t *pool_config_json(const struct sg_pool *p) {
    json_t *o = json_object();
    set_str(o, "name", p->name);
    set_str(o, "balance", balance_name(p->balance));
    if (p->balance == SG_BALANCE_HASH) {
        static const char *const src[] = {"header", "cookie", "query", "ip", "path"};
        char k[300];
        set_str(o, "hash",
                key_text(k, sizeof(k), src[p->hash_source], p->hash_name, p->hash_name_len));
        set_str(o, "hash_fallback", balance_name(p->hash_fallback));
    }
    json_t *servers = json_array();
    for (size_t i = 0; i < p->nservers; i++) {
        const struct sg_server *sv = &p->servers[i];
        json_t *s = json_object();
        set_str(s, "address", sv->text);
        set_int(s, "weight", sv->weight);
        json_object_set_new(s, "backup", json_boolean(sv->backup));
        set_int(s, "max_connections", sv->max_connections);
        json_array_append_new(servers, s);
    }
    json_object_set_new(o, "servers", servers);
    set_int(o, "connect_timeout_ms", p->connect_timeout_ms);
    set_int(o, "response_timeout_ms", p->response_timeout_ms);
    set_int(o, "keepalive", p->keepalive);
    set_int(o, "keepalive_timeout_ms", p->keepalive_timeout_ms);
    json_object_set_new(o, "health", health_json(&p->health));
    json_object_set_new(o, "outlier",
                        json_pack("{s:I,s:I,s:I,s:I,s:I}", "consecutive_errors",
                                  (json_int_t)p->outlier.consecutive_errors, "consecutive_5xx",
                                  (json_int_t)p->outlier.consecutive_5xx, "base_ejection_ms",
                                  (json_int_t)p->outlier.base_ejection_ms, "max_ejection_ms",
                                  (json_int_t)p->outlier.max_ejection_ms, "max_ejection_percent",
                                  (json_int_t)p->outlier.max_ejection_percent));
    json_object_set_new(o, "retry",
                        json_pack("{s:I,s:I,s:I}", "attempts", (json_int_t)p->retry.attempts,
                                  "budget_percent", (json_int_t)p->retry.budget_percent,
                                  "buffer_bytes", (json_int_t)p->retry.buffer_bytes));
    set_int(o, "slow_start_ms", p->slow_start_ms);
    set_int(o, "queue_size", p->queue_size);
    set_int(o, "queue_timeout_ms", p->queue_timeout_ms);
    set_int(o, "shed_p95_ms", p->shed_p95_ms);
    json_object_set_new(o, "scale", scale_json(&p->scale));
    return o;
}

static json_t *rate_json(const struct sg_rl_rate *r) {
    return json_pack("{s:I,s:I,s:I}", "count", (json_int_t)r->count, "period_ms",
                     (json_int_t)r->period_ms, "burst", (json_int_t)r->burst);
}

static json_t *route_json(const struct sg_route *r) {
    json_t *o = json_object();
    json_t *m = json_object();
    if (r->host)
        set_str(m, "host", r->host);
    if (r->path_prefix)
        set_str(m, "path_prefix", r->path_prefix);
    if (r->methods) {
        json_t *ms = json_array();
        for (int i = 0; i < SG_METHOD_COUNT; i++)
            if ((r->methods & (1u << i)) && sg_http_method_name((enum sg_http_method)i))
                json_array_append_new(ms, json_string(sg_http_method_name((enum sg_http_method)i)));
        json_object_set_new(m, "methods", ms);
    }
    json_object_set_new(o, "match", m);
    set_str(o, "name", r->name);
    set_str(o, "pool", r->pool ? r->pool->name : NULL);
    set_str(o, "read_pool", r->read_pool ? r->read_pool->name : NULL);
    json_object_set_new(o, "retryable", json_boolean(r->retryable));
    set_int(o, "max_in_flight", r->max_in_flight);
    set_int(o, "priority", r->priority);
    set_int(o, "queue_size", r->queue_size);
    set_int(o, "queue_timeout_ms", r->queue_timeout_ms);
    json_t *rls = json_array();
    static const char *const kinds[] = {"ip", "header", "cookie", "query", "global"};
    for (size_t i = 0; i < r->nrate_limits; i++) {
        const struct sg_rl_rule *rl = &r->rate_limits[i];
        json_t *x = json_object();
        char k[300];
        set_str(x, "name", rl->name);
        set_str(x, "key", key_text(k, sizeof(k), kinds[rl->key], rl->key_name, rl->key_name_len));
        json_object_set_new(x, "rate", rate_json(&rl->rate));
        set_int(x, "overrides", rl->noverrides);
        if (rl->class_header) {
            set_str(x, "class_header", rl->class_header);
            set_int(x, "classes", rl->nclasses);
        }
        json_array_append_new(rls, x);
    }
    json_object_set_new(o, "rate_limits", rls);
    json_object_set_new(o, "rate_limit_headers", json_boolean(r->rate_limit_headers));
    if (r->cache.enabled) {
        const struct sg_route_cache *c = &r->cache;
        json_t *x = json_object();
        set_int(x, "ttl_ms", c->ttl_ms);
        json_t *vary = json_array();
        for (size_t i = 0; i < c->nvary; i++)
            json_array_append_new(vary, json_string(c->vary[i]));
        json_object_set_new(x, "vary", vary);
        set_int(x, "stale_while_revalidate_ms", c->stale_while_revalidate_ms);
        set_int(x, "stale_if_error_ms", c->stale_if_error_ms);
        set_int(x, "lock_timeout_ms", c->lock_timeout_ms);
        json_object_set_new(x, "set_cookie", json_boolean(c->set_cookie));
        json_object_set_new(x, "authorization", json_boolean(c->authorization));
        json_object_set_new(x, "client_cache_control", json_boolean(c->client_cache_control));
        json_object_set_new(o, "cache", x);
    } else {
        json_object_set_new(o, "cache", json_null());
    }
    return o;
}

static json_t *config_json(const struct sg_config *cfg) {
    const struct sg_config *base = cfg->base ? cfg->base : cfg;
    json_t *o = json_object();
    set_str(o, "file", base->path);
    json_t *listen = json_array();
    for (size_t i = 0; i < cfg->nlisten; i++)
        json_array_append_new(listen, json_string(cfg->listen[i].text));
    json_object_set_new(o, "listen", listen);
    set_int(o, "workers", cfg->workers);
    const struct sg_limits *l = &cfg->limits;
    json_t *lim = json_object();
    set_int(lim, "max_connections", l->max_connections);
    set_int(lim, "header_timeout_ms", l->header_timeout_ms);
    set_int(lim, "idle_timeout_ms", l->idle_timeout_ms);
    set_int(lim, "body_timeout_ms", l->body_timeout_ms);
    set_int(lim, "shutdown_timeout_ms", l->shutdown_timeout_ms);
    set_int(lim, "max_request_line", l->max_request_line);
    set_int(lim, "max_header_bytes", l->max_header_bytes);
    set_int(lim, "max_body_bytes", l->max_body_bytes);
    set_int(lim, "rate_limit_keys", l->rate_limit_keys);
    json_object_set_new(o, "limits", lim);
    json_t *pools = json_array();
    for (size_t i = 0; i < cfg->npools; i++)
        json_array_append_new(pools, pool_config_json(&cfg->pools[i]));
    json_object_set_new(o, "pools", pools);
    json_t *routes = json_array();
    for (size_t i = 0; i < cfg->nroutes; i++)
        json_array_append_new(routes, route_json(&cfg->routes[i]));
    json_object_set_new(o, "routes", routes);
    if (cfg->admin.enabled) {
        json_t *a = json_object();
        set_str(a, "listen", cfg->admin.listen.text);
        set_str(a, "token", cfg->admin.token ? "***" : NULL); /* never the token itself */
        set_str(a, "token_from", cfg->admin.token_from);
        json_object_set_new(a, "public_metrics", json_boolean(cfg->admin.public_metrics));
        json_object_set_new(o, "admin", a);
    } else {
        json_object_set_new(o, "admin", json_null());
    }
    if (cfg->redis.enabled) {
        json_t *r = json_object();
        char url[300];
        bool v6 = cfg->redis.host && strchr(cfg->redis.host, ':') != NULL;
        snprintf(url, sizeof(url), v6 ? "redis://[%s]:%u" : "redis://%s:%u",
                 cfg->redis.host ? cfg->redis.host : "", (unsigned)cfg->redis.port);
        set_str(r, "url", url);
        set_str(r, "prefix", cfg->redis.prefix);
        set_int(r, "lease_ttl_ms", cfg->redis.lease_ttl_ms);
        set_int(r, "rate_limit_budget_ms", cfg->redis.rate_limit_budget_ms);
        json_object_set_new(o, "redis", r);
    } else {
        json_object_set_new(o, "redis", json_null());
    }
    json_object_set_new(o, "cache",
                        json_pack("{s:I,s:I,s:I,s:I}", "memory_bytes",
                                  (json_int_t)cfg->cache.memory_bytes, "max_object_size",
                                  (json_int_t)cfg->cache.max_object_size, "l2_ttl_ms",
                                  (json_int_t)cfg->cache.l2_ttl_ms, "l2_timeout_ms",
                                  (json_int_t)cfg->cache.l2_timeout_ms));
    static const char *const levels[] = {"error", "warn", "info", "debug"};
    json_t *lg = json_object();
    set_str(lg, "access", cfg->access_log);
    set_str(lg, "level", cfg->log_level >= 0 && cfg->log_level < 4 ? levels[cfg->log_level] : NULL);
    json_object_set_new(o, "log", lg);
    set_str(o, "health_path", cfg->health_path);
    return o;
}

/* ------------------------------------------------------------------ */
/* Reload */

static void reload_endpoint(const struct sg_admin_api *api, const struct sg_admin_request *req,
                            struct sg_admin_response *resp) {
    if (req->method != SG_METHOD_POST) {
        api_error(resp, 405, "use POST");
        return;
    }
    if (api->reload == NULL) {
        api_error(resp, 503, "reload is not available");
        return;
    }
    sg_log_info("admin API: reload requested");
    struct sg_config_errors errs = {0};
    int rc = api->reload(&errs);
    const struct sg_config *cfg = *api->running;
    const char *file = cfg->base ? cfg->base->path : cfg->path;
    if (rc == 0) {
        resp->json = json_pack("{s:b,s:s}", "reloaded", 1, "file", file ? file : "");
    } else if (rc == -1) {
        json_t *list = json_array();
        for (size_t i = 0; i < errs.n; i++)
            json_array_append_new(list, json_string(errs.msgs[i]));
        api_error(resp, 400, "%s is invalid; the running config is kept", file ? file : "the file");
        json_object_set_new(resp->json, "errors", list);
    } else if (rc == -3) {
        api_error(resp, 503, "the gateway is stopping");
    } else {
        api_error(resp, 500,
                  "the new config could not be applied (out of memory, or a listen address "
                  "that cannot be bound: see the log); the running config is kept");
    }
    sg_config_errors_free(&errs);
}

/* ------------------------------------------------------------------ */

static bool path_is(const struct sg_admin_request *req, const char *p) {
    size_t n = strlen(p);
    return req->path_len == n && memcmp(req->path, p, n) == 0;
}

bool sg_admin_api(void *arg, const struct sg_admin_request *req, struct sg_admin_response *resp) {
    const struct sg_admin_api *api = arg;
    static const char pools[] = POOLS_PATH;
    size_t pl = sizeof(pools) - 1;
    if (req->path_len >= pl && memcmp(req->path, pools, pl) == 0 &&
        (req->path_len == pl || req->path[pl] == '/')) {
        pools_endpoint(api, req->path + pl, req->path_len - pl, req, resp);
        return true;
    }
    if (path_is(req, CONFIG_PATH)) {
        if (req->method != SG_METHOD_GET && req->method != SG_METHOD_HEAD)
            api_error(resp, 405, "use GET");
        else
            resp->json = config_json(*api->running);
        return true;
    }
    if (path_is(req, RELOAD_PATH)) {
        reload_endpoint(api, req, resp);
        return true;
    }
    return false;
}
