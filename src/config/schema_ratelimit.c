/*
 * A route's "rate_limit": one rule (a map) or several (a list of maps),
 * each with a rate ("10/s", "100/min", "1000/h"), a burst, a key (ip,
 * header:NAME, cookie:NAME, query:NAME or global), per-value overrides and
 * classes chosen by a header's value. docs/configuration.md is the user's
 * reference. Everything allocated hangs off the route and is freed by
 * sg__config_free.
 */
#include "config/config_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pool/balance.h"

#define MAX_RATE  100000000u /* requests per period */
#define MAX_RULES 16u        /* per route (ratelimit/limit_int.h: SG_RL_MAX_RULES) */

/* A rule name: letters, digits, - and _ (it goes between quotes in a field). */
static bool name_ok(const char *s) {
    if (*s == '\0')
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '_'))
            return false;
    return true;
}

/* "N/s", "N/sec", "N/second", "N/m", "N/min", "N/minute", "N/h", "N/hour". */
static bool parse_rate(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path,
                       struct sg_rl_rate *r) {
    static const struct {
        const char *unit;
        uint64_t ms;
    } units[] = {{"s", 1000},     {"sec", 1000},     {"second", 1000}, {"m", 60000},
                 {"min", 60000},  {"minute", 60000}, {"h", 3600000},   {"hour", 3600000},
                 {"d", 86400000}, {"day", 86400000}};
    char q[SG__CFG_QUOTESZ], num[16];
    const char *s = sg__cfg_scalar(cx, n, path, "a rate");
    if (s == NULL)
        return false;
    const char *slash = strchr(s, '/');
    size_t nl = slash ? (size_t)(slash - s) : 0;
    uint64_t count = 0;
    if (slash && nl > 0 && nl < sizeof(num)) {
        memcpy(num, s, nl);
        num[nl] = '\0';
    }
    if (!slash || nl == 0 || nl >= sizeof(num) || sg__cfg_parse_uint(num, &count) < 0) {
        sg__cfg_error(cx, n, path, "%s is not a rate (such as 10/s, 100/min or 1000/h)",
                      sg__cfg_quote(q, sizeof(q), s));
        return false;
    }
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(slash + 1, units[i].unit) != 0)
            continue;
        if (count < 1 || count > MAX_RATE) {
            sg__cfg_error(cx, n, path, "%s is out of range (1 to %u requests per period)",
                          sg__cfg_quote(q, sizeof(q), s), MAX_RATE);
            return false;
        }
        r->count = (uint32_t)count;
        r->period_ms = units[i].ms;
        return true;
    }
    sg__cfg_error(cx, n, path, "%s: the period must be s, min, h or day (such as 100/min)",
                  sg__cfg_quote(q, sizeof(q), s));
    return false;
}

/* A rate alone ("50/min") or a map {rate, burst}. */
static bool rate_or_map(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path,
                        struct sg_rl_rate *r) {
    static const char *const names[] = {"rate", "burst"};
    yaml_node_t *vals[2];
    char kp[SG__CFG_PATHSZ];
    if (n->type == YAML_SCALAR_NODE) {
        if (!parse_rate(cx, n, path, r))
            return false;
        r->burst = r->count;
        return true;
    }
    if (!sg__cfg_get_map(cx, n, path, names, 2, vals))
        return false;
    sg__cfg_path_key(kp, path, "rate");
    if (vals[0] == NULL) {
        sg__cfg_error(cx, n, kp, "required key is missing (such as 100/min)");
        return false;
    }
    if (!parse_rate(cx, vals[0], kp, r))
        return false;
    r->burst = r->count;
    if (vals[1]) {
        static const struct sg__cfg_field f = {
            "burst", SG__CFG_COUNT, 4, offsetof(struct sg_rl_rate, burst), 1, MAX_RATE};
        sg__cfg_path_key(kp, path, "burst");
        return sg__cfg_set_field(cx, &f, vals[1], kp, r);
    }
    return true;
}

/* overrides: {value: rate} or classes: {value: rate}. */
static void build_table(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path,
                        struct sg_rl_override **out, size_t *nout) {
    char kp[SG__CFG_PATHSZ], q[SG__CFG_QUOTESZ];
    if (sg__cfg_is_null(n) || n->type != YAML_MAPPING_NODE) {
        sg__cfg_error(cx, n, path, "expected a map of values to rates, got %s",
                      sg__cfg_is_null(n) ? "nothing" : sg__cfg_shape(n));
        return;
    }
    size_t count = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
    struct sg_rl_override *t = sg__cfg_alloc(cx, count, sizeof(*t));
    if (t == NULL)
        return;
    *out = t;
    for (yaml_node_pair_t *pr = n->data.mapping.pairs.start; pr < n->data.mapping.pairs.top; pr++) {
        yaml_node_t *k = sg__cfg_node(cx, pr->key), *v = sg__cfg_node(cx, pr->value);
        if (k == NULL || v == NULL)
            continue;
        if (k->type != YAML_SCALAR_NODE) {
            sg__cfg_error(cx, k, path, "values must be strings, got %s", sg__cfg_shape(k));
            continue;
        }
        const char *val = (const char *)k->data.scalar.value;
        sg__cfg_path_key(kp, path, val);
        bool dup = false;
        for (size_t j = 0; j < *nout && !dup; j++)
            dup = strcmp(t[j].value, val) == 0;
        if (dup) {
            sg__cfg_error(cx, k, kp, "%s is listed twice", sg__cfg_quote(q, sizeof(q), val));
            continue;
        }
        struct sg_rl_override *o = &t[*nout];
        if (!rate_or_map(cx, v, kp, &o->rate))
            continue;
        if ((o->value = sg__cfg_strdup(cx, val)) == NULL)
            return;
        o->value_len = k->data.scalar.length;
        (*nout)++;
    }
}

/* key: ip, global, header:NAME, cookie:NAME, query:NAME. */
static void build_key(struct sg__cfg_ctx *cx, struct sg_rl_rule *r, const yaml_node_t *n,
                      const char *path) {
    char q[SG__CFG_QUOTESZ];
    enum sg_hash_source src;
    const char *s = sg__cfg_scalar(cx, n, path, "a rate-limit key");
    if (s == NULL)
        return;
    if (strcmp(s, "ip") == 0) {
        r->key = SG_RL_KEY_IP;
    } else if (strcmp(s, "global") == 0) {
        r->key = SG_RL_KEY_GLOBAL;
    } else if (sg__cfg_named_key(cx, n, path, s, &src, &r->key_name)) {
        r->key = src == SG_HASH_HEADER   ? SG_RL_KEY_HEADER
                 : src == SG_HASH_COOKIE ? SG_RL_KEY_COOKIE
                                         : SG_RL_KEY_QUERY;
        r->key_name_len = r->key_name ? strlen(r->key_name) : 0;
    } else {
        sg__cfg_error(cx, n, path,
                      "%s is not a rate-limit key (ip, global, header:NAME, cookie:NAME or "
                      "query:NAME)",
                      sg__cfg_quote(q, sizeof(q), s));
    }
}

struct rule_ctx {
    struct sg_route *route;
    size_t route_idx;
};

static void build_rule(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path, size_t i,
                       void *arg) {
    static const char *const names[] = {"name",      "rate",         "burst",  "key",
                                        "overrides", "class_header", "classes"};
    enum { NAME, RATE, BURST, KEY, OVERRIDES, CLASS_HEADER, CLASSES, NKEYS };
    struct rule_ctx *rc = arg;
    struct sg_rl_rule *r = &rc->route->rate_limits[i];
    yaml_node_t *vals[NKEYS];
    char kp[SG__CFG_PATHSZ], q[SG__CFG_QUOTESZ], def[48];

    r->key = SG_RL_KEY_IP;
    if (sg__cfg_is_null(n) || n->type != YAML_MAPPING_NODE) {
        sg__cfg_error(cx, n, path, "expected a map with rate (and key, burst), got %s",
                      sg__cfg_is_null(n) ? "nothing" : sg__cfg_shape(n));
        return;
    }
    if (!sg__cfg_get_map(cx, n, path, names, NKEYS, vals))
        return;
    if (vals[NAME]) {
        sg__cfg_path_key(kp, path, "name");
        const char *s = sg__cfg_scalar(cx, vals[NAME], kp, "a name");
        if (s && (!name_ok(s) || strlen(s) > 64))
            sg__cfg_error(cx, vals[NAME], kp,
                          "%s is not a name (letters, digits, - and _, at most 64)",
                          sg__cfg_quote(q, sizeof(q), s));
        else if (s)
            r->name = sg__cfg_strdup(cx, s);
    }
    if (r->name == NULL) {
        snprintf(def, sizeof(def), "route%zu-%zu", rc->route_idx + 1, i + 1);
        r->name = sg__cfg_strdup(cx, def);
    }
    sg__cfg_path_key(kp, path, "rate");
    if (vals[RATE] == NULL)
        sg__cfg_error(cx, n, kp, "required key is missing (such as 10/s or 100/min)");
    else if (parse_rate(cx, vals[RATE], kp, &r->rate))
        r->rate.burst = r->rate.count;
    if (vals[BURST]) {
        static const struct sg__cfg_field f = {
            "burst", SG__CFG_COUNT, 4, offsetof(struct sg_rl_rate, burst), 1, MAX_RATE};
        sg__cfg_path_key(kp, path, "burst");
        sg__cfg_set_field(cx, &f, vals[BURST], kp, &r->rate);
    }
    if (vals[KEY]) {
        sg__cfg_path_key(kp, path, "key");
        build_key(cx, r, vals[KEY], kp);
    }
    if (vals[OVERRIDES]) {
        sg__cfg_path_key(kp, path, "overrides");
        if (r->key == SG_RL_KEY_GLOBAL)
            sg__cfg_error(cx, vals[OVERRIDES], kp, "key: global has one value: no overrides");
        else
            build_table(cx, vals[OVERRIDES], kp, &r->overrides, &r->noverrides);
    }
    if (vals[CLASS_HEADER]) {
        sg__cfg_path_key(kp, path, "class_header");
        const char *s = sg__cfg_scalar(cx, vals[CLASS_HEADER], kp, "a header name");
        if (s && !sg__cfg_token(s))
            sg__cfg_error(cx, vals[CLASS_HEADER], kp, "%s is not a header name",
                          sg__cfg_quote(q, sizeof(q), s));
        else if (s) {
            r->class_header = sg__cfg_strdup(cx, s);
            r->class_header_len = strlen(s);
        }
    }
    if (vals[CLASSES]) {
        sg__cfg_path_key(kp, path, "classes");
        if (vals[CLASS_HEADER] == NULL)
            sg__cfg_error(cx, vals[CLASSES], kp,
                          "needs class_header (which header names the class)");
        else
            build_table(cx, vals[CLASSES], kp, &r->classes, &r->nclasses);
    } else if (vals[CLASS_HEADER]) {
        sg__cfg_path_key(kp, path, "class_header");
        sg__cfg_error(cx, vals[CLASS_HEADER], kp, "needs classes (the rate of each class)");
    }
    /* the bucket identity: name and key, so that a reload keeps the state */
    char idbuf[160];
    int il = snprintf(idbuf, sizeof(idbuf), "%s|%d|%s", r->name ? r->name : "", (int)r->key,
                      r->key_name ? r->key_name : "");
    r->id = sg_hash64(idbuf, il > 0 ? (size_t)il : 0);
}

void sg__cfg_build_rate_limit(struct sg__cfg_ctx *cx, struct sg_route *route, size_t route_idx,
                              const yaml_node_t *n, const char *path) {
    struct rule_ctx rc = {.route = route, .route_idx = route_idx};
    char q[SG__CFG_QUOTESZ];
    if (sg__cfg_is_null(n)) {
        sg__cfg_error(cx, n, path, "has no value (expected a map with rate, or a list of them)");
        return;
    }
    if (n->type == YAML_MAPPING_NODE) {
        route->rate_limits = sg__cfg_alloc(cx, 1, sizeof(*route->rate_limits));
        if (route->rate_limits == NULL)
            return;
        route->nrate_limits = 1;
        build_rule(cx, n, path, 0, &rc);
        return;
    }
    if (n->type != YAML_SEQUENCE_NODE) {
        sg__cfg_error(cx, n, path, "expected a map with rate, or a list of them, got %s",
                      sg__cfg_shape(n));
        return;
    }
    size_t count = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
    if (count == 0) {
        sg__cfg_error(cx, n, path, "the list is empty");
        return;
    }
    if (count > MAX_RULES) {
        sg__cfg_error(cx, n, path, "%zu rules; a route has at most %u", count, MAX_RULES);
        return;
    }
    route->rate_limits = sg__cfg_alloc(cx, count, sizeof(*route->rate_limits));
    if (route->rate_limits == NULL)
        return;
    route->nrate_limits = count;
    size_t i = 0;
    for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top;
         it++, i++) {
        yaml_node_t *item = sg__cfg_node(cx, *it);
        char ip[SG__CFG_PATHSZ];
        sg__cfg_path_idx(ip, path, i);
        if (item)
            build_rule(cx, item, ip, i, &rc);
        for (size_t j = 0; item && j < i; j++) {
            if (route->rate_limits[j].id == route->rate_limits[i].id &&
                route->rate_limits[i].name) {
                sg__cfg_error(cx, item, ip,
                              "a second rule named %s with the same key: both would count every "
                              "request in one bucket (give it another name or key)",
                              sg__cfg_quote(q, sizeof(q), route->rate_limits[i].name));
                break;
            }
        }
    }
}
