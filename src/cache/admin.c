/*
 * The cache's admin endpoints and the invalidations that arrive from
 * other gateways (see cache_admin.h).
 */
#include "cache/cache_admin.h"

#include <string.h>

#include "cache/cache.h"
#include "cache/l2.h"
#include "cache/store.h"
#include "core/log.h"
#include "redis/redis.h"

static struct sg_redis *ctl_redis;
static uint64_t ctl_l2_ttl_ms;
static bool ctl_subscribed;

void sg_cache_admin_set_subscribed(bool up) {
    ctl_subscribed = up;
}

void sg_cache_admin_set_redis(struct sg_redis *r, uint64_t l2_ttl_ms) {
    ctl_redis = r;
    ctl_l2_ttl_ms = l2_ttl_ms;
}

void sg_cache_on_message(const char *data, size_t len) {
    if (len == 0 || (data[0] != 'p' && data[0] != 'k' && data[0] != 'a')) {
        sg_log_warn("cache: unknown invalidation message ignored (%zu bytes)", len);
        return;
    }
    size_t n = sg_cache_purge_local(data[0], data + 1, len - 1);
    sg_log_debug("cache: invalidation '%c' %.*s from Redis (%zu removed)", data[0], (int)(len - 1),
                 data + 1, n);
}

static void fail(struct sg_admin_response *resp, int status, const char *msg) {
    resp->status = status;
    resp->json = json_pack("{s:s}", "error", msg);
}

static json_t *stats_json(void) {
    struct sg_cache_counters k;
    sg_cache_counters(&k);
    json_t *o = json_object();
    json_object_set_new(o, "hits", json_integer((json_int_t)k.hits));
    json_object_set_new(o, "misses", json_integer((json_int_t)k.misses));
    json_object_set_new(o, "stale", json_integer((json_int_t)k.stale));
    json_object_set_new(o, "coalesced", json_integer((json_int_t)k.coalesced));
    json_object_set_new(o, "not_modified", json_integer((json_int_t)k.not_modified));
    json_object_set_new(o, "passes", json_integer((json_int_t)k.passes));
    json_object_set_new(o, "stores", json_integer((json_int_t)k.stores));
    json_object_set_new(o, "store_failures", json_integer((json_int_t)k.store_failures));
    json_object_set_new(o, "invalidations", json_integer((json_int_t)k.invalidations));
    uint64_t served = k.hits + k.coalesced + k.stale, all = served + k.misses;
    json_object_set_new(o, "hit_ratio",
                        all ? json_real((double)served / (double)all) : json_null());
    struct sg_cache_store *s = sg_cache_store();
    if (s) {
        struct sg_cache_stats st;
        sg_cache_stats(s, &st);
        json_t *m = json_object();
        json_object_set_new(m, "entries", json_integer((json_int_t)st.entries));
        json_object_set_new(m, "bytes", json_integer((json_int_t)st.bytes));
        json_object_set_new(m, "cap", json_integer((json_int_t)st.cap));
        json_object_set_new(m, "evictions", json_integer((json_int_t)st.evictions));
        json_object_set_new(m, "expired", json_integer((json_int_t)st.expired));
        json_object_set_new(o, "memory", m);
    }
    json_t *r = json_object();
    json_object_set_new(r, "enabled", json_boolean(ctl_redis != NULL && ctl_l2_ttl_ms > 0));
    json_object_set_new(r, "connected",
                        json_boolean(ctl_redis != NULL && sg_redis_connected(ctl_redis)));
    json_object_set_new(r, "subscribed", json_boolean(ctl_subscribed));
    json_object_set_new(r, "hits", json_integer((json_int_t)k.l2_hits));
    json_object_set_new(r, "misses", json_integer((json_int_t)k.l2_misses));
    json_object_set_new(r, "errors", json_integer((json_int_t)k.l2_errors));
    json_object_set_new(r, "stores", json_integer((json_int_t)k.l2_stores));
    json_object_set_new(o, "redis", r);
    return o;
}

/* A path or a key must look like a request target. */
static bool target_like(const char *s) {
    return s && s[0] == '/' && strlen(s) < 8192 && !strpbrk(s, "\r\n\x01");
}

static void purge(const struct sg_admin_request *req, struct sg_admin_response *resp) {
    json_error_t jerr;
    json_t *body = json_loadb(req->body, req->body_len, 0, &jerr);
    if (!json_is_object(body)) {
        fail(resp, 400,
             "the body must be a JSON object: {\"key\": ...}, {\"path\": ...}, "
             "{\"prefix\": ...} or {\"all\": true}");
        json_decref(body);
        return;
    }
    const char *key = json_string_value(json_object_get(body, "key"));
    const char *host = json_string_value(json_object_get(body, "host"));
    const char *path = json_string_value(json_object_get(body, "path"));
    const char *prefix = json_string_value(json_object_get(body, "prefix"));
    json_t *all = json_object_get(body, "all");
    int given = (key != NULL) + (path != NULL) + (prefix != NULL) + (all != NULL);
    const char *bad = NULL;
    size_t nkeys = json_object_size(body);
    if (given != 1 || nkeys != (size_t)(1 + (host != NULL)))
        bad = "give exactly one of key (with an optional host), path, prefix or all";
    else if (host && !key)
        bad = "host goes with key only";
    else if (all && !json_is_true(all))
        bad = "all must be true";
    else if ((key && !target_like(key)) || (path && !target_like(path)) ||
             (prefix && !target_like(prefix)))
        bad = "key, path and prefix start with / (a request target)";
    else if (host && (strlen(host) > 255 || strpbrk(host, "\r\n/ ")))
        bad = "host is a bare authority (name[:port])";
    else if (json_object_get(body, "host") && !host)
        bad = "host must be a string";
    if (bad) {
        fail(resp, 400, bad);
        json_decref(body);
        return;
    }
    char arg[8192 + 260];
    size_t len = 0;
    char kind;
    const char *kind_name;
    if (key) {
        kind = 'k';
        kind_name = "key";
        len = (size_t)snprintf(arg, sizeof(arg), "%s\n", key);
        if (host) {
            for (const char *h = host; *h && len + 2 < sizeof(arg); h++)
                arg[len++] = *h >= 'A' && *h <= 'Z' ? (char)(*h + 32) : *h;
            arg[len++] = '\n';
        }
    } else if (prefix) {
        kind = 'k';
        kind_name = "prefix";
        len = (size_t)snprintf(arg, sizeof(arg), "%s", prefix);
    } else if (path) {
        kind = 'p';
        kind_name = "path";
        len = (size_t)snprintf(arg, sizeof(arg), "%s", path);
    } else {
        kind = 'a';
        kind_name = "all";
        len = 0;
        arg[0] = '\0';
    }
    size_t removed = sg_cache_purge_local(kind, arg, len);
    bool shared = false;
    if (ctl_redis && ctl_l2_ttl_ms) {
        enum sg_cache_inval k = kind == 'p'   ? SG_CACHE_INVAL_PATH
                                : kind == 'k' ? SG_CACHE_INVAL_PREFIX
                                              : SG_CACHE_INVAL_ALL;
        shared = sg_cache_l2_invalidate(ctl_redis, k, arg, len, ctl_l2_ttl_ms, NULL, NULL) == 0 &&
                 sg_redis_connected(ctl_redis);
    }
    sg_log_info("cache: purge by %s %s (%zu entries removed here%s)", kind_name,
                key      ? key
                : path   ? path
                : prefix ? prefix
                         : "(all)",
                removed, shared ? ", published to the other gateways" : "");
    resp->json = json_pack("{s:s,s:I,s:b}", "purged", kind_name, "removed", (json_int_t)removed,
                           "published", shared);
    json_decref(body);
}

bool sg_cache_admin(void *arg, const struct sg_admin_request *req, struct sg_admin_response *resp) {
    (void)arg;
    const char *p = req->path + strlen("/api/v1/cache/");
    size_t n = req->path_len - strlen("/api/v1/cache/");
    if (n == 5 && memcmp(p, "purge", 5) == 0) {
        if (req->method != SG_METHOD_POST) {
            fail(resp, 405, "use POST");
            return true;
        }
        purge(req, resp);
        return true;
    }
    if (n == 5 && memcmp(p, "stats", 5) == 0) {
        if (req->method != SG_METHOD_GET) {
            fail(resp, 405, "use GET");
            return true;
        }
        resp->json = stats_json();
        return true;
    }
    return false;
}
