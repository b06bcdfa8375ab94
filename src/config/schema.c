/*
 * The config schema: walks a libyaml document (nodes with line numbers) and
 * fills a struct sg_config, reporting every problem it finds with its line
 * and key path instead of stopping at the first. Sections: listen, workers,
 * limits, pools, routes (docs/configuration.md is the user's reference).
 *
 * The walk never goes deeper than the schema, so YAML aliases (which libyaml
 * loads as shared, possibly cyclic node references) cannot make it loop or
 * blow up. Everything allocated goes into cx->cfg, which config.c frees if
 * any error was reported.
 */
#include "config/config_int.h"

#include "core/intern.h"
#include "core/parse.h"
#include "http/http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

#define PATHSZ      256 /* key paths longer than this are cut */
#define QUOTESZ     80  /* values quoted in messages are cut to fit */
#define MAX_WORKERS 256
#define MAX_NAMES   8 /* keys of the largest map in the schema */

/* ---- nodes and messages --------------------------------------------------- */

static yaml_node_t *node(struct sg__cfg_ctx *cx, int id) {
    return yaml_document_get_node(cx->doc, id);
}

static const char *kind(const yaml_node_t *n) {
    switch (n->type) {
    case YAML_MAPPING_NODE:
        return "a map";
    case YAML_SEQUENCE_NODE:
        return "a list";
    default:
        return "a string";
    }
}

/* A plain empty/"~"/"null" scalar: what "key:" with nothing after it gives. */
static bool is_null(const yaml_node_t *n) {
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *v = (const char *)n->data.scalar.value;
    return !*v || !strcmp(v, "~") || !strcmp(v, "null") || !strcmp(v, "Null") || !strcmp(v, "NULL");
}

/* Writes s as "s" with control characters escaped, cut to fit out. */
static const char *quote(char *out, size_t outsz, const char *s) {
    size_t o = 0;
    out[o++] = '"';
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (o + 4 + 5 > outsz) { /* room for an escape, then "...", '"' and NUL */
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        if (c < 0x20 || c == 0x7f)
            o += (size_t)snprintf(out + o, outsz - o, "\\x%02x", c);
        else if (c == '"' || c == '\\')
            out[o++] = '\\', out[o++] = (char)c;
        else
            out[o++] = (char)c;
    }
    out[o++] = '"';
    out[o] = '\0';
    return out;
}

/* out = base.key (or key at the top); key cut and sanitised. */
static void path_key(char *out, const char *base, const char *key) {
    size_t o = 0;
    if (*base) {
        o = strlen(base);
        if (o > PATHSZ - 2)
            o = PATHSZ - 2;
        memcpy(out, base, o);
        out[o++] = '.';
    }
    for (size_t i = 0; key[i] && o < PATHSZ - 4; i++) {
        unsigned char c = (unsigned char)key[i];
        out[o++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (o >= PATHSZ - 4 && *key) {
        o = PATHSZ - 4;
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
}

static void path_idx(char *out, const char *base, size_t i) {
    char tmp[32];
    int n = snprintf(tmp, sizeof(tmp), "[%zu]", i);
    size_t bl = strlen(base);
    if (bl + (size_t)n >= PATHSZ)
        bl = PATHSZ - 1 - (size_t)n;
    memmove(out, base, bl);
    memcpy(out + bl, tmp, (size_t)n + 1);
}

/*
 * Returns the text of scalar n, or NULL after reporting why it is not usable
 * as `what` ("a duration", "host:port", ...).
 */
static const char *scalar(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path,
                          const char *what) {
    if (n->type != YAML_SCALAR_NODE) {
        sg__cfg_error(cx, n, path, "expected %s, got %s", what, kind(n));
        return NULL;
    }
    if (is_null(n)) {
        sg__cfg_error(cx, n, path, "has no value (expected %s)", what);
        return NULL;
    }
    const char *v = (const char *)n->data.scalar.value;
    if (strlen(v) != n->data.scalar.length) {
        sg__cfg_error(cx, n, path, "contains a NUL character");
        return NULL;
    }
    return v;
}

static char *dup_str(struct sg__cfg_ctx *cx, const char *s) {
    char *d = strdup(s);
    if (d == NULL)
        cx->oom = true;
    return d;
}

static void *alloc_array(struct sg__cfg_ctx *cx, size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    if (p == NULL)
        cx->oom = true;
    return p;
}

/*
 * Checks that n is a map (a null value counts as an empty one) whose keys are
 * strings among names[0..nnames), none twice. vals[i] gets the value node of
 * names[i] or NULL. Returns false, after reporting, when n is not a map.
 */
static bool get_map(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path,
                    const char *const *names, size_t nnames, yaml_node_t **vals) {
    yaml_node_t *keys[MAX_NAMES];
    char kp[PATHSZ];

    if (nnames > MAX_NAMES)
        abort(); /* a schema map grew: raise MAX_NAMES */
    for (size_t i = 0; i < nnames; i++)
        vals[i] = keys[i] = NULL;
    if (is_null(n))
        return true;
    if (n->type != YAML_MAPPING_NODE) {
        sg__cfg_error(cx, n, path, "expected a map, got %s", kind(n));
        return false;
    }
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        yaml_node_t *k = node(cx, p->key), *v = node(cx, p->value);
        if (k == NULL || v == NULL)
            continue;
        if (k->type != YAML_SCALAR_NODE) {
            sg__cfg_error(cx, k, path, "keys must be strings, got %s", kind(k));
            continue;
        }
        const char *name = (const char *)k->data.scalar.value;
        path_key(kp, path, name);
        size_t i = 0;
        while (i < nnames && strcmp(names[i], name) != 0)
            i++;
        if (i == nnames) {
            sg__cfg_error(cx, k, kp, "unknown key");
        } else if (keys[i]) {
            sg__cfg_error(cx, k, kp, "duplicate key (first at line %zu)",
                          keys[i]->start_mark.line + 1);
        } else {
            keys[i] = k;
            vals[i] = v;
        }
    }
    return true;
}

/* ---- values ------------------------------------------------------------- */

static int parse_uint(const char *s, uint64_t *out) {
    uint64_t v = 0;
    if (!*s)
        return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > (UINT64_MAX - 9) / 10)
            return -1;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return 0;
}

static void fmt_duration(char *out, size_t sz, uint64_t ms) {
    static const struct {
        uint64_t ms;
        const char *unit;
    } u[] = {{86400000, "d"}, {3600000, "h"}, {60000, "m"}, {1000, "s"}};
    for (size_t i = 0; i < sizeof(u) / sizeof(u[0]); i++) {
        if (ms && ms % u[i].ms == 0) {
            snprintf(out, sz, "%llu%s", (unsigned long long)(ms / u[i].ms), u[i].unit);
            return;
        }
    }
    snprintf(out, sz, "%llums", (unsigned long long)ms);
}

static void fmt_size(char *out, size_t sz, uint64_t v) {
    static const char *const unit[] = {"g", "m", "k"};
    for (int i = 0; i < 3; i++) {
        uint64_t m = 1ull << (10 * (3 - i));
        if (v && v % m == 0) {
            snprintf(out, sz, "%llu%s", (unsigned long long)(v / m), unit[i]);
            return;
        }
    }
    snprintf(out, sz, "%llu", (unsigned long long)v);
}

enum field_kind { F_DURATION, F_SIZE, F_COUNT };

/* A numeric key of limits or of a pool, stored at off in its struct. */
struct field {
    const char *name;
    enum field_kind kind;
    uint8_t width; /* 4: uint32_t, 8: uint64_t */
    size_t off;
    uint64_t min, max;
};

#define DAY_MS  (86400ull * 1000)
#define YEAR_MS (365 * DAY_MS)

/* Indices into limit_fields of the two keys checked against each other. */
enum { LIM_MAX_REQUEST_LINE = 5, LIM_MAX_HEADER_BYTES = 6 };

static const struct field limit_fields[] = {
    {"max_connections", F_COUNT, 4, offsetof(struct sg_limits, max_connections), 1, 10000000},
    {"header_timeout", F_DURATION, 8, offsetof(struct sg_limits, header_timeout_ms), 1, YEAR_MS},
    {"idle_timeout", F_DURATION, 8, offsetof(struct sg_limits, idle_timeout_ms), 1, YEAR_MS},
    {"body_timeout", F_DURATION, 8, offsetof(struct sg_limits, body_timeout_ms), 1, YEAR_MS},
    {"shutdown_timeout", F_DURATION, 8, offsetof(struct sg_limits, shutdown_timeout_ms), 0,
     YEAR_MS},
    {"max_request_line", F_SIZE, 4, offsetof(struct sg_limits, max_request_line), 256, 64 << 10},
    {"max_header_bytes", F_SIZE, 4, offsetof(struct sg_limits, max_header_bytes), 1 << 10,
     64 << 10},
    {"max_body_bytes", F_SIZE, 8, offsetof(struct sg_limits, max_body_bytes), 0, UINT64_MAX},
};
#define NLIMITS (sizeof(limit_fields) / sizeof(limit_fields[0]))

static const struct field pool_fields[] = {
    {"connect_timeout", F_DURATION, 8, offsetof(struct sg_pool, connect_timeout_ms), 1, YEAR_MS},
    {"response_timeout", F_DURATION, 8, offsetof(struct sg_pool, response_timeout_ms), 1, YEAR_MS},
    {"keepalive", F_COUNT, 4, offsetof(struct sg_pool, keepalive), 0, 10000},
    {"keepalive_timeout", F_DURATION, 8, offsetof(struct sg_pool, keepalive_timeout_ms), 1,
     YEAR_MS},
};
#define NPOOLF (sizeof(pool_fields) / sizeof(pool_fields[0]))

static void fmt_field(char *out, size_t sz, enum field_kind k, uint64_t v) {
    if (k == F_DURATION)
        fmt_duration(out, sz, v);
    else if (k == F_SIZE)
        fmt_size(out, sz, v);
    else
        snprintf(out, sz, "%llu", (unsigned long long)v);
}

/* Parses n into base + f->off; returns false after reporting. */
static bool set_field(struct sg__cfg_ctx *cx, const struct field *f, const yaml_node_t *n,
                      const char *path, void *base) {
    static const char *const what[] = {"a duration", "a size", "a whole number"};
    char q[QUOTESZ], lo[32], hi[32];
    uint64_t v;
    const char *s = scalar(cx, n, path, what[f->kind]);
    if (s == NULL)
        return false;
    int r = f->kind == F_DURATION ? sg_parse_duration_ms(s, &v)
            : f->kind == F_SIZE   ? sg_parse_size(s, &v)
                                  : parse_uint(s, &v);
    if (r != 0) {
        sg__cfg_error(cx, n, path, "%s is not %s", quote(q, sizeof(q), s), what[f->kind]);
        return false;
    }
    if (v < f->min || v > f->max) {
        fmt_field(lo, sizeof(lo), f->kind, f->min);
        fmt_field(hi, sizeof(hi), f->kind, f->max);
        if (f->max == UINT64_MAX)
            sg__cfg_error(cx, n, path, "%s must be at least %s", quote(q, sizeof(q), s), lo);
        else
            sg__cfg_error(cx, n, path, "%s is out of range (%s to %s)", quote(q, sizeof(q), s), lo,
                          hi);
        return false;
    }
    char *dst = (char *)base + f->off;
    if (f->width == 4)
        *(uint32_t *)(void *)dst = (uint32_t)v;
    else
        *(uint64_t *)(void *)dst = v;
    return true;
}

/*
 * Calls one(cx, item, path_of_item, i, arg) for each item of a list, or once
 * for a lone scalar (accepted where a list of strings is expected). Returns
 * the number of items, or -1 after reporting a wrong type or an empty list.
 */
typedef void (*item_fn)(struct sg__cfg_ctx *cx, const yaml_node_t *item, const char *path, size_t i,
                        void *arg);

static long each_item(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path,
                      const char *what, item_fn one, void *arg) {
    char ip[PATHSZ];
    if (n->type == YAML_SCALAR_NODE) {
        if (one)
            one(cx, n, path, 0, arg);
        return 1;
    }
    if (n->type != YAML_SEQUENCE_NODE) {
        sg__cfg_error(cx, n, path, "expected %s or a list of them, got %s", what, kind(n));
        return -1;
    }
    size_t count = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
    if (count == 0) {
        sg__cfg_error(cx, n, path, "the list is empty");
        return -1;
    }
    if (one) {
        for (size_t i = 0; i < count; i++) {
            yaml_node_t *it = node(cx, n->data.sequence.items.start[i]);
            if (it == NULL)
                continue;
            path_idx(ip, path, i);
            one(cx, it, ip, i, arg);
        }
    }
    return (long)count;
}

/* ---- listen ------------------------------------------------------------- */

static void listen_one(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path, size_t i,
                       void *arg) {
    struct sg_config *c = arg;
    struct sg_listen *l = &c->listen[i];
    char q[QUOTESZ], host[INET6_ADDRSTRLEN], text[INET6_ADDRSTRLEN + 16];
    const char *s = scalar(cx, n, path, "host:port");
    if (s == NULL)
        return;
    if (sg_parse_addr(s, &l->addr, &l->addrlen) < 0) {
        sg__cfg_error(cx, n, path, "%s is not host:port", quote(q, sizeof(q), s));
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
    for (size_t j = 0; j < i; j++) {
        if (c->listen[j].text && strcmp(c->listen[j].text, text) == 0) {
            sg__cfg_error(cx, n, path, "%s is listed twice (%s)", quote(q, sizeof(q), s), text);
            return;
        }
    }
    l->text = dup_str(cx, text);
}

static void build_listen(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path) {
    struct sg_config *c = cx->cfg;
    if (is_null(n)) {
        sg__cfg_error(cx, n, path, "has no value (expected host:port)");
        return;
    }
    long count = each_item(cx, n, path, "host:port", NULL, NULL);
    if (count < 0)
        return;
    c->listen = alloc_array(cx, (size_t)count, sizeof(*c->listen));
    if (c->listen == NULL)
        return;
    c->nlisten = (size_t)count; /* calloc'd: entries with errors keep text NULL */
    each_item(cx, n, path, "host:port", listen_one, c);
}

/* ---- workers ------------------------------------------------------------ */

static uint32_t cores(void) {
    unsigned n = uv_available_parallelism();
    if (n < 1)
        n = 1;
    return n > MAX_WORKERS ? MAX_WORKERS : (uint32_t)n;
}

static void build_workers(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path) {
    char q[QUOTESZ];
    uint64_t v;
    const char *s = scalar(cx, n, path, "a number or \"auto\"");
    if (s == NULL)
        return;
    if (strcmp(s, "auto") == 0) {
        cx->cfg->workers = cores();
        return;
    }
    if (parse_uint(s, &v) < 0) {
        sg__cfg_error(cx, n, path, "%s is not a number or \"auto\"", quote(q, sizeof(q), s));
        return;
    }
    if (v < 1 || v > MAX_WORKERS) {
        sg__cfg_error(cx, n, path, "%s is out of range (1 to %d)", quote(q, sizeof(q), s),
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
    char kp[PATHSZ], a[32], b[32];
    bool ok[NLIMITS];

    for (size_t i = 0; i < NLIMITS; i++)
        names[i] = limit_fields[i].name;
    if (!get_map(cx, n, path, names, NLIMITS, vals))
        return;
    for (size_t i = 0; i < NLIMITS; i++) {
        ok[i] = true;
        if (vals[i]) {
            path_key(kp, path, names[i]);
            ok[i] = set_field(cx, &limit_fields[i], vals[i], kp, l);
        }
    }
    /* the request line is part of the head, so it must fit in it */
    if (ok[LIM_MAX_REQUEST_LINE] && ok[LIM_MAX_HEADER_BYTES] &&
        l->max_request_line > l->max_header_bytes) {
        size_t at = vals[LIM_MAX_REQUEST_LINE] ? LIM_MAX_REQUEST_LINE : LIM_MAX_HEADER_BYTES;
        path_key(kp, path, names[at]);
        fmt_size(a, sizeof(a), l->max_request_line);
        fmt_size(b, sizeof(b), l->max_header_bytes);
        sg__cfg_error(cx, vals[at], kp,
                      "max_request_line (%s) is larger than max_header_bytes (%s)", a, b);
    }
}

/* ---- pools -------------------------------------------------------------- */

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

static void server_one(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path, size_t i,
                       void *arg) {
    struct sg_pool *p = arg;
    struct sg_server *sv = &p->servers[i];
    char q[QUOTESZ];
    const char *s = scalar(cx, n, path, "host:port");
    if (s == NULL)
        return;
    if (sg_parse_addr(s, &sv->addr, &sv->addrlen) < 0) {
        sg__cfg_error(cx, n, path, "%s is not host:port", quote(q, sizeof(q), s));
        return;
    }
    const struct sockaddr_in *a4 = (const struct sockaddr_in *)&sv->addr;
    if (sv->addr.ss_family == AF_INET && a4->sin_addr.s_addr == htonl(INADDR_ANY)) {
        sg__cfg_error(cx, n, path, "%s has no host to connect to", quote(q, sizeof(q), s));
        return;
    }
    for (size_t j = 0; j < i; j++) {
        if (p->servers[j].text && strcmp(p->servers[j].text, s) == 0) {
            sg__cfg_error(cx, n, path, "%s is listed twice", quote(q, sizeof(q), s));
            return;
        }
    }
    sv->weight = 1;
    sv->text = dup_str(cx, s);
    if (sv->text && (sv->id = sg_intern(s)) == UINT32_MAX)
        cx->oom = true;
}

static void build_pool(struct sg__cfg_ctx *cx, struct sg_pool *p, const yaml_node_t *n,
                       const char *path) {
    const char *names[1 + NPOOLF];
    yaml_node_t *vals[1 + NPOOLF];
    char kp[PATHSZ];

    p->connect_timeout_ms = 5000;
    p->response_timeout_ms = 60000;
    p->keepalive = 64;
    p->keepalive_timeout_ms = 60000;
    atomic_init(&p->rr, 0);

    names[0] = "servers";
    for (size_t i = 0; i < NPOOLF; i++)
        names[1 + i] = pool_fields[i].name;
    if (is_null(n)) {
        sg__cfg_error(cx, n, path, "has no value (expected a map with servers)");
        return;
    }
    if (!get_map(cx, n, path, names, 1 + NPOOLF, vals))
        return;
    for (size_t i = 0; i < NPOOLF; i++) {
        if (vals[1 + i]) {
            path_key(kp, path, names[1 + i]);
            set_field(cx, &pool_fields[i], vals[1 + i], kp, p);
        }
    }
    path_key(kp, path, "servers");
    if (vals[0] == NULL) {
        sg__cfg_error(cx, n, kp, "required key is missing");
        return;
    }
    if (is_null(vals[0])) {
        sg__cfg_error(cx, vals[0], kp, "has no value (expected a list of host:port)");
        return;
    }
    long count = each_item(cx, vals[0], kp, "host:port", NULL, NULL);
    if (count < 0)
        return;
    p->servers = alloc_array(cx, (size_t)count, sizeof(*p->servers));
    if (p->servers == NULL)
        return;
    p->nservers = (size_t)count;
    each_item(cx, vals[0], kp, "host:port", server_one, p);
}

static void build_pools(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path) {
    struct sg_config *c = cx->cfg;
    char kp[PATHSZ], q[QUOTESZ];

    if (is_null(n)) {
        sg__cfg_error(cx, n, path, "has no value (expected a map of pool names to pools)");
        return;
    }
    if (n->type != YAML_MAPPING_NODE) {
        sg__cfg_error(cx, n, path, "expected a map of pool names to pools, got %s", kind(n));
        return;
    }
    size_t count = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
    if (count == 0) {
        sg__cfg_error(cx, n, path, "no pool is defined");
        return;
    }
    c->pools = alloc_array(cx, count, sizeof(*c->pools));
    if (c->pools == NULL)
        return;
    for (yaml_node_pair_t *pr = n->data.mapping.pairs.start; pr < n->data.mapping.pairs.top; pr++) {
        yaml_node_t *k = node(cx, pr->key), *v = node(cx, pr->value);
        if (k == NULL || v == NULL)
            continue;
        if (k->type != YAML_SCALAR_NODE) {
            sg__cfg_error(cx, k, path, "pool names must be strings, got %s", kind(k));
            continue;
        }
        const char *name = (const char *)k->data.scalar.value;
        path_key(kp, path, name);
        if (!valid_pool_name(name) || strlen(name) != k->data.scalar.length) {
            sg__cfg_error(cx, k, kp, "%s is not a valid pool name (use letters, digits, _ and -)",
                          quote(q, sizeof(q), name));
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
        if ((p->name = dup_str(cx, name)) == NULL)
            return;
        c->npools++;
        build_pool(cx, p, v, kp);
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
    char q[QUOTESZ];
    (void)i;
    const char *s = scalar(cx, n, path, "an HTTP method");
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
                  quote(q, sizeof(q), s));
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
    char kp[PATHSZ], q[QUOTESZ];
    const char *s;

    if (!get_map(cx, n, path, names, 3, vals))
        return;
    if (vals[0]) {
        path_key(kp, path, "host");
        if ((s = scalar(cx, vals[0], kp, "a host name")) != NULL) {
            bool bad;
            r->host = route_host(cx, s, &bad);
            if (bad)
                sg__cfg_error(cx, vals[0], kp, "%s is not a host name", quote(q, sizeof(q), s));
        }
    }
    if (vals[1]) {
        path_key(kp, path, "path_prefix");
        if ((s = scalar(cx, vals[1], kp, "a path")) != NULL) {
            if (s[0] != '/') {
                sg__cfg_error(cx, vals[1], kp, "%s must start with '/'", quote(q, sizeof(q), s));
            } else if (strcmp(s, "/") != 0) { /* "/" matches every path: same as none */
                r->path_prefix = dup_str(cx, s);
                r->path_prefix_len = strlen(s);
            }
        }
    }
    if (vals[2]) {
        path_key(kp, path, "methods");
        if (is_null(vals[2]))
            sg__cfg_error(cx, vals[2], kp, "has no value (expected a list of HTTP methods)");
        else
            each_item(cx, vals[2], kp, "an HTTP method", method_one, &r->methods);
    }
}

static void build_route(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path, size_t i,
                        void *arg) {
    static const char *const names[] = {"match", "pool"};
    struct sg_config *c = arg;
    struct sg_route *r = &c->routes[i];
    yaml_node_t *vals[2];
    char kp[PATHSZ], q[QUOTESZ];

    if (is_null(n) || n->type != YAML_MAPPING_NODE) {
        sg__cfg_error(cx, n, path, "expected a map with match and pool, got %s",
                      is_null(n) ? "nothing" : kind(n));
        return;
    }
    get_map(cx, n, path, names, 2, vals);
    if (vals[0]) {
        path_key(kp, path, "match");
        build_match(cx, r, vals[0], kp);
    }
    path_key(kp, path, "pool");
    if (vals[1] == NULL) {
        sg__cfg_error(cx, n, kp, "required key is missing");
        return;
    }
    const char *s = scalar(cx, vals[1], kp, "a pool name");
    if (s == NULL)
        return;
    for (size_t j = 0; j < c->npools; j++) {
        if (strcmp(c->pools[j].name, s) == 0) {
            r->pool = &c->pools[j];
            return;
        }
    }
    sg__cfg_error(cx, vals[1], kp, "no pool named %s", quote(q, sizeof(q), s));
}

static void build_routes(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path) {
    struct sg_config *c = cx->cfg;
    if (n->type != YAML_SEQUENCE_NODE) {
        sg__cfg_error(cx, n, path, "expected a list of routes, got %s", kind(n));
        return;
    }
    size_t count = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
    if (count == 0) {
        sg__cfg_error(cx, n, path, "the list is empty (every request would get 404)");
        return;
    }
    c->routes = alloc_array(cx, count, sizeof(*c->routes));
    if (c->routes == NULL)
        return;
    c->nroutes = count;
    each_item(cx, n, path, "a route", build_route, c);
}

/* ---- the document ------------------------------------------------------- */

void sg__config_build(struct sg__cfg_ctx *cx) {
    static const char *const names[] = {"listen", "workers", "limits", "pools", "routes"};
    enum { LISTEN, WORKERS, LIMITS, POOLS, ROUTES, NROOT };
    struct sg_config *c = cx->cfg;
    yaml_node_t *vals[NROOT];

    c->workers = cores();
    c->limits = (struct sg_limits){
        .max_connections = 10000,
        .header_timeout_ms = 10 * 1000,
        .idle_timeout_ms = 60 * 1000,
        .body_timeout_ms = 30 * 1000,
        .shutdown_timeout_ms = 30 * 1000,
        .max_request_line = 8 << 10,
        .max_header_bytes = 16 << 10,
        .max_body_bytes = 10 << 20,
    };

    yaml_node_t *root = yaml_document_get_root_node(cx->doc);
    if (root == NULL) {
        sg__cfg_error_line(cx, 1, "", "the file is empty (expected listen, pools and routes)");
        return;
    }
    if (is_null(root) || root->type != YAML_MAPPING_NODE) {
        sg__cfg_error(cx, root, "", "expected a map of sections (listen, pools, ...), got %s",
                      kind(root));
        return;
    }
    get_map(cx, root, "", names, NROOT, vals);

    if (vals[LISTEN])
        build_listen(cx, vals[LISTEN], "listen");
    else
        sg__cfg_error(cx, root, "listen", "required key is missing");
    if (vals[WORKERS])
        build_workers(cx, vals[WORKERS], "workers");
    if (vals[LIMITS])
        build_limits(cx, vals[LIMITS], "limits");
    if (vals[POOLS])
        build_pools(cx, vals[POOLS], "pools");
    else
        sg__cfg_error(cx, root, "pools", "required key is missing");

    if (vals[ROUTES] && !is_null(vals[ROUTES])) {
        build_routes(cx, vals[ROUTES], "routes");
    } else if (c->npools == 1) {
        /* one pool and no routes: everything goes to it */
        c->routes = alloc_array(cx, 1, sizeof(*c->routes));
        if (c->routes) {
            c->routes[0].pool = &c->pools[0];
            c->nroutes = 1;
        }
    } else if (c->npools > 1) {
        sg__cfg_error(cx, vals[ROUTES] ? vals[ROUTES] : root, "routes",
                      "required when there is more than one pool");
    }
}
