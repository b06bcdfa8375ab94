/*
 * The "scale" section of a pool (autoscaling: driver, instance command or
 * orchestrator commands, bounds, targets, rates, timeouts) and the two
 * top-level sections it leans on: "admin" (the admin API listener and its
 * token) and "redis" (shared state between gateways). docs/configuration.md
 * is the user's reference.
 *
 * Like the rest of the schema, every default is set first and a key with an
 * error leaves it, so one mistake is reported once. Strings hang off the
 * snapshot and are freed by sg__config_free.
 */
#include "config/config_int.h"

#include "core/parse.h"
#include "redis/redis.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define YEAR_MS         SG__CFG_YEAR_MS
#define MAX_INSTANCES   1000 /* scale.max */
#define MAX_TOKEN_BYTES 4096 /* admin token */
#define SCALE_RING      599  /* periods a window may cover (scaler.c keeps 600 samples) */

/* ---- scale -------------------------------------------------------------- */

static const struct sg__cfg_field scale_fields[] = {
    {"min", SG__CFG_COUNT, 4, offsetof(struct sg_scale_cfg, min), 0, MAX_INSTANCES},
    {"max", SG__CFG_COUNT, 4, offsetof(struct sg_scale_cfg, max), 1, MAX_INSTANCES},
    {"list_interval", SG__CFG_DURATION, 8, offsetof(struct sg_scale_cfg, list_interval_ms), 100,
     YEAR_MS},
    {"period", SG__CFG_DURATION, 8, offsetof(struct sg_scale_cfg, period_ms), 100, 3600 * 1000},
    {"window", SG__CFG_DURATION, 8, offsetof(struct sg_scale_cfg, window_ms), 100, 3600 * 1000},
    {"tolerance", SG__CFG_PERCENT, 4, offsetof(struct sg_scale_cfg, tolerance_percent), 0, 100},
    {"scale_up_percent", SG__CFG_PERCENT, 4, offsetof(struct sg_scale_cfg, up_percent), 0, 10000},
    {"scale_up_pods", SG__CFG_COUNT, 4, offsetof(struct sg_scale_cfg, up_pods), 0, MAX_INSTANCES},
    {"scale_down_pods", SG__CFG_COUNT, 4, offsetof(struct sg_scale_cfg, down_pods), 0,
     MAX_INSTANCES},
    {"scale_up_stabilization", SG__CFG_DURATION, 8,
     offsetof(struct sg_scale_cfg, up_stabilization_ms), 0, 24 * 3600 * 1000ull},
    {"scale_down_stabilization", SG__CFG_DURATION, 8,
     offsetof(struct sg_scale_cfg, down_stabilization_ms), 0, 24 * 3600 * 1000ull},
    {"start_timeout", SG__CFG_DURATION, 8, offsetof(struct sg_scale_cfg, start_timeout_ms), 100,
     YEAR_MS},
    {"drain_timeout", SG__CFG_DURATION, 8, offsetof(struct sg_scale_cfg, drain_timeout_ms), 0,
     YEAR_MS},
    {"stop_grace", SG__CFG_DURATION, 8, offsetof(struct sg_scale_cfg, stop_grace_ms), 1, YEAR_MS},
    {"idle_before_zero", SG__CFG_DURATION, 8, offsetof(struct sg_scale_cfg, idle_before_zero_ms), 1,
     YEAR_MS},
    {"cold_start_timeout", SG__CFG_DURATION, 8,
     offsetof(struct sg_scale_cfg, cold_start_timeout_ms), 1, YEAR_MS},
};
#define NSCALEF (sizeof(scale_fields) / sizeof(scale_fields[0]))
enum { F_MIN = 0, F_MAX = 1, F_PERIOD = 3, F_WINDOW = 4 };

/* The targets, as decimal numbers. */
static const struct {
    const char *name;
    size_t off;
    double max;
} target_fields[] = {
    {"rps_per_instance", offsetof(struct sg_scale_cfg, rps_per_instance), 1e9},
    {"p95_ms", offsetof(struct sg_scale_cfg, p95_ms), 3600e3},
    {"inflight_per_instance", offsetof(struct sg_scale_cfg, inflight_per_instance), 1e6},
    {"cpu_percent", offsetof(struct sg_scale_cfg, cpu_percent), 100000},
    {"memory_percent", offsetof(struct sg_scale_cfg, memory_percent), 100},
    {"error_rate_percent", offsetof(struct sg_scale_cfg, error_rate), 100},
    {"queue_per_instance", offsetof(struct sg_scale_cfg, queue_per_instance), 1e9},
};
#define NTARGETS (sizeof(target_fields) / sizeof(target_fields[0]))
enum { T_ERROR_RATE = 5, T_QUEUE = 6 };

static void scale_defaults(struct sg_scale_cfg *s) {
    *s = (struct sg_scale_cfg){
        .enabled = true,
        .autoscale = true,
        .driver = SG_SCALE_PROCESS,
        .port_min = 20000,
        .port_max = 20999,
        .list_interval_ms = 2000,
        .min = 1,
        .max = 10,
        .period_ms = 1000,
        .window_ms = 5000,
        .tolerance_percent = 10,
        .up_percent = 100,
        .up_pods = 4,
        .down_pods = 1,
        .up_stabilization_ms = 0,
        .down_stabilization_ms = 300 * 1000,
        .start_timeout_ms = 60 * 1000,
        .drain_timeout_ms = 30 * 1000,
        .stop_grace_ms = 10 * 1000,
        .idle_before_zero_ms = 300 * 1000,
        .cold_start_timeout_ms = 30 * 1000,
    };
}

/* A positive decimal number up to max, or false after reporting. */
static bool number(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path, double max,
                   double *out) {
    char q[SG__CFG_QUOTESZ];
    const char *s = sg__cfg_scalar(cx, n, path, "a number");
    if (s == NULL)
        return false;
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (*s == '\0' || end == s || *end != '\0' || errno != 0 || !isfinite(v) ||
        strspn(s, "0123456789.") != strlen(s)) {
        sg__cfg_error(cx, n, path, "%s is not a number (such as 300 or 0.5)",
                      sg__cfg_quote(q, sizeof(q), s));
        return false;
    }
    if (v <= 0 || v > max) {
        sg__cfg_error(cx, n, path, "%s is out of range (more than 0, at most %g)",
                      sg__cfg_quote(q, sizeof(q), s), max);
        return false;
    }
    *out = v;
    return true;
}

static void build_targets(struct sg__cfg_ctx *cx, struct sg_scale_cfg *s, const yaml_node_t *n,
                          const char *path) {
    const char *names[NTARGETS];
    yaml_node_t *vals[NTARGETS];
    char kp[SG__CFG_PATHSZ];
    for (size_t i = 0; i < NTARGETS; i++)
        names[i] = target_fields[i].name;
    if (!sg__cfg_get_map(cx, n, path, names, NTARGETS, vals))
        return;
    for (size_t i = 0; i < NTARGETS; i++) {
        if (vals[i] == NULL)
            continue;
        sg__cfg_path_key(kp, path, names[i]);
        double v;
        if (!number(cx, vals[i], kp, target_fields[i].max, &v))
            continue;
        if (i == T_ERROR_RATE)
            v /= 100; /* the policy takes a share */
        *(double *)((char *)s + target_fields[i].off) = v;
    }
}

/* A command string: not empty, no NUL or newline. */
static char *command(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path) {
    char q[SG__CFG_QUOTESZ];
    const char *s = sg__cfg_scalar(cx, n, path, "a command");
    if (s == NULL)
        return NULL;
    if (strspn(s, " \t") == strlen(s) || strpbrk(s, "\n\r") != NULL ||
        strlen(s) != n->data.scalar.length) {
        sg__cfg_error(cx, n, path, "%s is not a command (one line, not empty)",
                      sg__cfg_quote(q, sizeof(q), s));
        return NULL;
    }
    return sg__cfg_strdup(cx, s);
}

static void build_queue(struct sg__cfg_ctx *cx, struct sg_scale_cfg *s, const yaml_node_t *n,
                        const char *path) {
    static const char *const names[] = {"redis_list", "command"};
    yaml_node_t *vals[2];
    char kp[SG__CFG_PATHSZ], q[SG__CFG_QUOTESZ];
    if (!sg__cfg_get_map(cx, n, path, names, 2, vals))
        return;
    if (vals[0] && vals[1]) {
        sg__cfg_path_key(kp, path, "command");
        sg__cfg_error(cx, vals[1], kp, "give redis_list or command, not both");
        return;
    }
    if (vals[0]) {
        sg__cfg_path_key(kp, path, "redis_list");
        const char *k = sg__cfg_scalar(cx, vals[0], kp, "a Redis key");
        if (k && (*k == '\0' || strlen(k) != vals[0]->data.scalar.length))
            sg__cfg_error(cx, vals[0], kp, "%s is not a Redis key", sg__cfg_quote(q, sizeof(q), k));
        else if (k && !cx->cfg->redis.enabled)
            sg__cfg_error(cx, vals[0], kp, "needs the redis section (where is the list?)");
        else if (k)
            s->queue_redis_list = sg__cfg_strdup(cx, k);
    } else if (vals[1]) {
        sg__cfg_path_key(kp, path, "command");
        s->queue_command = command(cx, vals[1], kp);
    } else {
        sg__cfg_error(cx, n, path, "expected redis_list or command");
    }
}

/* "9100-9199" into port_min, port_max. */
static void build_ports(struct sg__cfg_ctx *cx, struct sg_scale_cfg *s, const yaml_node_t *n,
                        const char *path) {
    char q[SG__CFG_QUOTESZ], first[8];
    uint64_t lo, hi;
    const char *v = sg__cfg_scalar(cx, n, path, "a port range");
    if (v == NULL)
        return;
    const char *dash = strchr(v, '-');
    size_t len = dash ? (size_t)(dash - v) : 0;
    if (dash == NULL || len == 0 || len >= sizeof(first)) {
        sg__cfg_error(cx, n, path, "%s is not a port range (such as 9100-9199)",
                      sg__cfg_quote(q, sizeof(q), v));
        return;
    }
    memcpy(first, v, len);
    first[len] = '\0';
    if (sg__cfg_parse_uint(first, &lo) < 0 || sg__cfg_parse_uint(dash + 1, &hi) < 0) {
        sg__cfg_error(cx, n, path, "%s is not a port range (such as 9100-9199)",
                      sg__cfg_quote(q, sizeof(q), v));
    } else if (lo < 1 || hi > 65535 || lo > hi) {
        sg__cfg_error(cx, n, path, "%s is out of range (1 to 65535, lower port first)",
                      sg__cfg_quote(q, sizeof(q), v));
    } else {
        s->port_min = (uint16_t)lo;
        s->port_max = (uint16_t)hi;
    }
}

void sg__cfg_build_scale(struct sg__cfg_ctx *cx, struct sg_pool *p, const yaml_node_t *n,
                         const char *path) {
    static const char *const names[] = {"driver", "command", "ports",   "scale_to",
                                        "list",   "enabled", "targets", "queue"};
    enum { DRIVER, COMMAND, PORTS, SCALE_TO, LIST, ENABLED, TARGETS, QUEUE, NKEYS };
    yaml_node_t *vals[NKEYS + NSCALEF];
    bool ok[NSCALEF];
    char kp[SG__CFG_PATHSZ], q[SG__CFG_QUOTESZ];
    struct sg_scale_cfg *s = &p->scale;

    scale_defaults(s);
    if (sg__cfg_is_null(n)) {
        sg__cfg_error(cx, n, path, "has no value (expected a map with command, min, max, targets)");
        s->enabled = false;
        return;
    }
    if (!sg__cfg_get_map_fields(cx, n, path, names, NKEYS, scale_fields, NSCALEF, vals)) {
        s->enabled = false;
        return;
    }
    sg__cfg_fields(cx, scale_fields, NSCALEF, vals + NKEYS, path, s, ok);
    yaml_node_t *const *fv = vals + NKEYS;

    if (vals[DRIVER]) {
        sg__cfg_path_key(kp, path, "driver");
        const char *d = sg__cfg_scalar(cx, vals[DRIVER], kp, "a driver");
        if (d && strcmp(d, "process") == 0)
            s->driver = SG_SCALE_PROCESS;
        else if (d && strcmp(d, "command") == 0)
            s->driver = SG_SCALE_COMMAND;
        else if (d)
            sg__cfg_error(cx, vals[DRIVER], kp, "%s is not a driver (process or command)",
                          sg__cfg_quote(q, sizeof(q), d));
    }
    if (vals[ENABLED]) {
        sg__cfg_path_key(kp, path, "enabled");
        int b = sg__cfg_bool(cx, vals[ENABLED], kp);
        if (b >= 0)
            s->autoscale = b;
    }
    if (s->driver == SG_SCALE_PROCESS) {
        static const int not_here[] = {SCALE_TO, LIST};
        for (size_t i = 0; i < 2; i++) {
            if (vals[not_here[i]] == NULL)
                continue;
            sg__cfg_path_key(kp, path, names[not_here[i]]);
            sg__cfg_error(cx, vals[not_here[i]], kp, "only for driver: command");
        }
        sg__cfg_path_key(kp, path, "command");
        if (vals[COMMAND] == NULL)
            sg__cfg_error(cx, n, kp,
                          "required key is missing (the instance's command, with {port})");
        else
            s->command = command(cx, vals[COMMAND], kp);
        if (vals[PORTS]) {
            sg__cfg_path_key(kp, path, "ports");
            build_ports(cx, s, vals[PORTS], kp);
        }
        uint32_t nports = (uint32_t)s->port_max - s->port_min + 1;
        if (ok[F_MAX] && s->max > nports) {
            sg__cfg_path_key(kp, path, "max");
            sg__cfg_error(cx, fv[F_MAX] ? fv[F_MAX] : n, kp,
                          "max (%u) is more than the %u ports of ports (%u-%u)", s->max, nports,
                          s->port_min, s->port_max);
        }
    } else {
        static const int not_here[] = {COMMAND, PORTS};
        for (size_t i = 0; i < 2; i++) {
            if (vals[not_here[i]] == NULL)
                continue;
            sg__cfg_path_key(kp, path, names[not_here[i]]);
            sg__cfg_error(cx, vals[not_here[i]], kp,
                          "only for driver: process (driver: command uses scale_to and list)");
        }
        sg__cfg_path_key(kp, path, "scale_to");
        if (vals[SCALE_TO] == NULL)
            sg__cfg_error(cx, n, kp, "required key is missing with driver: command (uses {n})");
        else
            s->scale_to = command(cx, vals[SCALE_TO], kp);
        sg__cfg_path_key(kp, path, "list");
        if (vals[LIST] == NULL)
            sg__cfg_error(cx, n, kp,
                          "required key is missing with driver: command (prints host:port lines)");
        else
            s->list = command(cx, vals[LIST], kp);
    }
    if (ok[F_PERIOD] && ok[F_WINDOW] && s->window_ms < s->period_ms) {
        char a[32], b[32];
        sg__cfg_path_key(kp, path, "window");
        sg__cfg_fmt_duration(a, sizeof(a), s->window_ms);
        sg__cfg_fmt_duration(b, sizeof(b), s->period_ms);
        sg__cfg_error(cx, fv[F_WINDOW] ? fv[F_WINDOW] : fv[F_PERIOD], kp,
                      "window (%s) is shorter than period (%s): a decision would see no requests",
                      a, b);
    } else if (ok[F_PERIOD] && ok[F_WINDOW] && s->window_ms / s->period_ms > SCALE_RING) {
        sg__cfg_path_key(kp, path, "window");
        sg__cfg_error(cx, fv[F_WINDOW] ? fv[F_WINDOW] : fv[F_PERIOD], kp,
                      "window covers more than %u periods (make it shorter or period longer)",
                      SCALE_RING);
    }
    if (ok[F_MIN] && ok[F_MAX] && s->min > s->max) {
        sg__cfg_path_key(kp, path, fv[F_MIN] ? "min" : "max");
        sg__cfg_error(cx, fv[F_MIN] ? fv[F_MIN] : fv[F_MAX], kp, "min (%u) is more than max (%u)",
                      s->min, s->max);
    }
    if (vals[TARGETS]) {
        sg__cfg_path_key(kp, path, "targets");
        build_targets(cx, s, vals[TARGETS], kp);
    }
    if (vals[QUEUE]) {
        sg__cfg_path_key(kp, path, "queue");
        build_queue(cx, s, vals[QUEUE], kp);
    }
    bool has_queue = s->queue_redis_list || s->queue_command;
    if (s->queue_per_instance > 0 && !has_queue && vals[QUEUE] == NULL) {
        sg__cfg_path_key(kp, path, "targets.queue_per_instance");
        sg__cfg_error(cx, vals[TARGETS], kp, "needs queue (redis_list or command)");
    } else if (has_queue && s->queue_per_instance <= 0) {
        sg__cfg_path_key(kp, path, "queue");
        sg__cfg_error(cx, vals[QUEUE], kp, "needs targets.queue_per_instance");
    }
    bool any = s->rps_per_instance > 0 || s->p95_ms > 0 || s->inflight_per_instance > 0 ||
               s->cpu_percent > 0 || s->memory_percent > 0 || s->error_rate > 0 ||
               s->queue_per_instance > 0;
    bool empty_targets =
        vals[TARGETS] == NULL || sg__cfg_is_null(vals[TARGETS]) ||
        (vals[TARGETS]->type == YAML_MAPPING_NODE &&
         vals[TARGETS]->data.mapping.pairs.top == vals[TARGETS]->data.mapping.pairs.start);
    if (!any && ok[F_MIN] && ok[F_MAX] && s->min != s->max && empty_targets) {
        sg__cfg_path_key(kp, path, "targets");
        sg__cfg_error(cx, n, kp,
                      "required when min (%u) and max (%u) differ (rps_per_instance, p95_ms, "
                      "inflight_per_instance, cpu_percent, memory_percent, error_rate_percent, "
                      "queue_per_instance)",
                      s->min, s->max);
    }
    if (s->driver == SG_SCALE_COMMAND && s->min == 0 && ok[F_MIN]) {
        sg__cfg_path_key(kp, path, "min");
        sg__cfg_error(cx, fv[F_MIN], kp, "scale to zero (min: 0) needs driver: process");
    }
}

/* ---- admin -------------------------------------------------------------- */

/* Reads the token file (one line; trailing newline and spaces dropped). */
static char *read_token_file(const char *file, char *why, size_t whysz) {
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, whysz, "cannot open %s: %s", file, strerror(errno));
        return NULL;
    }
    char buf[MAX_TOKEN_BYTES + 2];
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fd, buf + len, sizeof(buf) - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(why, whysz, "cannot read %s: %s", file, strerror(errno));
            close(fd);
            return NULL;
        }
        if (r == 0 || (len += (size_t)r) == sizeof(buf) - 1)
            break;
    }
    close(fd);
    while (len > 0 && strchr(" \t\r\n", buf[len - 1]))
        len--;
    buf[len] = '\0';
    if (len > MAX_TOKEN_BYTES) {
        snprintf(why, whysz, "%s holds more than %u bytes", file, MAX_TOKEN_BYTES);
        return NULL;
    }
    if (len == 0 || strlen(buf) != len) {
        snprintf(why, whysz, "%s is empty", file);
        return NULL;
    }
    char *t = strdup(buf);
    if (t == NULL)
        snprintf(why, whysz, "out of memory");
    return t;
}

void sg__cfg_build_admin(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path) {
    static const char *const names[] = {"listen", "token_env", "token_file", "public_metrics"};
    enum { LISTEN, TOKEN_ENV, TOKEN_FILE, PUBLIC_METRICS, NKEYS };
    struct sg_admin_cfg *a = &cx->cfg->admin;
    yaml_node_t *vals[NKEYS];
    char kp[SG__CFG_PATHSZ], q[SG__CFG_QUOTESZ], why[512];

    if (sg__cfg_is_null(n)) {
        sg__cfg_error(cx, n, path, "has no value (expected a map with listen and token_env)");
        return;
    }
    if (!sg__cfg_get_map(cx, n, path, names, NKEYS, vals))
        return;
    sg__cfg_path_key(kp, path, "listen");
    if (vals[LISTEN] == NULL)
        sg__cfg_error(cx, n, kp, "required key is missing (such as 127.0.0.1:8081)");
    else
        sg__cfg_listen_addr(cx, vals[LISTEN], kp, &a->listen);
    if (vals[TOKEN_ENV] && vals[TOKEN_FILE]) {
        sg__cfg_path_key(kp, path, "token_file");
        sg__cfg_error(cx, vals[TOKEN_FILE], kp, "give token_env or token_file, not both");
    } else if (vals[TOKEN_ENV]) {
        sg__cfg_path_key(kp, path, "token_env");
        const char *name = sg__cfg_scalar(cx, vals[TOKEN_ENV], kp, "a variable name");
        const char *v = name ? getenv(name) : NULL;
        if (name && (v == NULL || *v == '\0')) {
            sg__cfg_error(cx, vals[TOKEN_ENV], kp,
                          "the environment variable %s is not set (or empty): the admin API "
                          "needs a token",
                          sg__cfg_quote(q, sizeof(q), name));
        } else if (name && strlen(v) > MAX_TOKEN_BYTES) {
            sg__cfg_error(cx, vals[TOKEN_ENV], kp, "the token in %s is longer than %u bytes",
                          sg__cfg_quote(q, sizeof(q), name), MAX_TOKEN_BYTES);
        } else if (name) {
            a->token = sg__cfg_strdup(cx, v);
            char from[SG__CFG_QUOTESZ + 8];
            snprintf(from, sizeof(from), "env %s", name);
            a->token_from = sg__cfg_strdup(cx, from);
        }
    } else if (vals[TOKEN_FILE]) {
        sg__cfg_path_key(kp, path, "token_file");
        const char *file = sg__cfg_scalar(cx, vals[TOKEN_FILE], kp, "a file name");
        if (file && (a->token = read_token_file(file, why, sizeof(why))) == NULL) {
            sg__cfg_error(cx, vals[TOKEN_FILE], kp, "%s", why);
        } else if (file) {
            char from[SG__CFG_QUOTESZ + 8];
            snprintf(from, sizeof(from), "file %s", sg__cfg_quote(q, sizeof(q), file));
            a->token_from = sg__cfg_strdup(cx, from);
        }
    } else {
        sg__cfg_error(cx, n, path,
                      "needs token_env or token_file: the admin API is never open without a token");
    }
    if (vals[PUBLIC_METRICS]) {
        sg__cfg_path_key(kp, path, "public_metrics");
        a->public_metrics = sg__cfg_bool(cx, vals[PUBLIC_METRICS], kp) == 1;
    }
    a->enabled = true;
}

/* ---- redis -------------------------------------------------------------- */

void sg__cfg_build_redis(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path) {
    static const struct sg__cfg_field fields[] = {
        {"lease_ttl", SG__CFG_DURATION, 8, offsetof(struct sg_redis_cfg, lease_ttl_ms), 300,
         3600 * 1000},
        {"rate_limit_budget", SG__CFG_DURATION, 8,
         offsetof(struct sg_redis_cfg, rate_limit_budget_ms), 1, 1000},
    };
    static const char *const names[] = {"url", "prefix"};
    enum { URL, PREFIX, NKEYS };
    struct sg_redis_cfg *r = &cx->cfg->redis;
    yaml_node_t *vals[NKEYS + 2];
    char kp[SG__CFG_PATHSZ], q[SG__CFG_QUOTESZ];

    r->lease_ttl_ms = 3000;
    r->rate_limit_budget_ms = 50;
    if (sg__cfg_is_null(n)) {
        sg__cfg_error(cx, n, path, "has no value (expected a map with url)");
        return;
    }
    if (!sg__cfg_get_map_fields(cx, n, path, names, NKEYS, fields, 2, vals))
        return;
    sg__cfg_fields(cx, fields, 2, vals + NKEYS, path, r, NULL);
    r->enabled = true;
    const char *url = "127.0.0.1:6379";
    sg__cfg_path_key(kp, path, "url");
    if (vals[URL] && (url = sg__cfg_scalar(cx, vals[URL], kp, "redis://host:port")) == NULL)
        return;
    char host[256];
    uint16_t port = 0;
    if (sg_redis_parse_url(url, host, sizeof(host), &port) < 0) {
        sg__cfg_error(cx, vals[URL] ? vals[URL] : n, kp,
                      "%s is not redis://host:port (such as redis://127.0.0.1:6379; no user, "
                      "password or database other than 0)",
                      sg__cfg_quote(q, sizeof(q), url));
    } else {
        r->host = sg__cfg_strdup(cx, host);
        r->port = port;
    }
    r->prefix = sg__cfg_strdup(cx, "sg:");
    if (vals[PREFIX]) {
        sg__cfg_path_key(kp, path, "prefix");
        const char *p = sg__cfg_scalar(cx, vals[PREFIX], kp, "a key prefix");
        if (p && (strlen(p) > 64 || strpbrk(p, " \r\n") != NULL)) {
            sg__cfg_error(cx, vals[PREFIX], kp, "%s is not a key prefix (no spaces, 64 bytes)",
                          sg__cfg_quote(q, sizeof(q), p));
        } else if (p) {
            free(r->prefix);
            r->prefix = sg__cfg_strdup(cx, p);
        }
    }
}
