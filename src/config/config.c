/*
 * Config snapshots: loading (file or string -> libyaml document -> schema
 * walk in schema.c), the error collector, reference counting, and route
 * lookup on the request path.
 *
 * Ownership: a snapshot and everything it points to is allocated here or in
 * schema.c and freed only by sg__config_free when the last reference goes.
 * Error messages are heap strings owned by struct sg_config_errors until
 * sg_config_errors_free.
 */
#include "config/config_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_ERRORS     1000
#define MAX_FILE_BYTES (16u << 20)

/* ---- error collection ---------------------------------------------------- */

static void push_msg(struct sg__cfg_ctx *cx, size_t line, char *msg) {
    if (msg == NULL) {
        cx->oom = true;
        return;
    }
    if (cx->nmsgs == cx->capmsgs) {
        size_t ncap = cx->capmsgs ? cx->capmsgs * 2 : 8;
        struct sg__cfg_msg *n = realloc(cx->msgs, ncap * sizeof(*n));
        if (n == NULL) {
            free(msg);
            cx->oom = true;
            return;
        }
        cx->msgs = n;
        cx->capmsgs = ncap;
    }
    cx->msgs[cx->nmsgs].line = line;
    cx->msgs[cx->nmsgs].text = msg;
    cx->nmsgs++;
}

/* Records "FILE:LINE: path: msg" (line 0: no line; "" path: no path). */
__attribute__((format(printf, 4, 0))) static void
vreport(struct sg__cfg_ctx *cx, size_t line, const char *path, const char *fmt, va_list ap) {
    char *body = NULL, *msg = NULL;

    cx->nerrors++;
    if (cx->nerrors > MAX_ERRORS)
        return;
    if (vasprintf(&body, fmt, ap) < 0) {
        cx->oom = true;
        return;
    }
    int r;
    if (line == 0)
        r = asprintf(&msg, "%s: %s%s%s", cx->file, path, *path ? ": " : "", body);
    else
        r = asprintf(&msg, "%s:%zu: %s%s%s", cx->file, line, path, *path ? ": " : "", body);
    free(body);
    push_msg(cx, line, r < 0 ? NULL : msg);
}

void sg__cfg_error_line(struct sg__cfg_ctx *cx, size_t line, const char *path, const char *fmt,
                        ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport(cx, line, path, fmt, ap);
    va_end(ap);
}

void sg__cfg_error(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path, const char *fmt,
                   ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport(cx, n ? n->start_mark.line + 1 : 0, path, fmt, ap);
    va_end(ap);
}

/*
 * Moves the collected messages into errs, sorted by line (stable), so the
 * user reads them top to bottom whatever order the schema walk found them in.
 */
static void finish_errors(struct sg__cfg_ctx *cx, struct sg_config_errors *errs) {
    for (size_t i = 1; i < cx->nmsgs; i++) {
        struct sg__cfg_msg m = cx->msgs[i];
        size_t j = i;
        while (j > 0 && cx->msgs[j - 1].line > m.line) {
            cx->msgs[j] = cx->msgs[j - 1];
            j--;
        }
        cx->msgs[j] = m;
    }
    if (errs == NULL) {
        for (size_t i = 0; i < cx->nmsgs; i++)
            free(cx->msgs[i].text);
        free(cx->msgs);
        return;
    }
    size_t extra = (cx->nerrors > MAX_ERRORS) + cx->oom;
    if (cx->nmsgs + extra == 0) { /* success: nothing for the caller to free */
        free(cx->msgs);
        return;
    }
    errs->msgs = calloc(cx->nmsgs + extra + 1, sizeof(char *));
    if (errs->msgs == NULL) {
        for (size_t i = 0; i < cx->nmsgs; i++)
            free(cx->msgs[i].text);
        free(cx->msgs);
        errs->n = 0;
        return;
    }
    size_t n = 0;
    for (size_t i = 0; i < cx->nmsgs; i++)
        errs->msgs[n++] = cx->msgs[i].text;
    free(cx->msgs);
    char *m = NULL;
    if (cx->nerrors > MAX_ERRORS && asprintf(&m, "%s: too many errors, %zu more not shown",
                                             cx->file, cx->nerrors - MAX_ERRORS) >= 0)
        errs->msgs[n++] = m;
    if (cx->oom && asprintf(&m, "%s: out of memory", cx->file) >= 0)
        errs->msgs[n++] = m;
    errs->n = n;
}

void sg_config_errors_free(struct sg_config_errors *errs) {
    if (errs == NULL)
        return;
    for (size_t i = 0; i < errs->n; i++)
        free(errs->msgs[i]);
    free(errs->msgs);
    errs->msgs = NULL;
    errs->n = 0;
}

/* ---- snapshot lifetime ---------------------------------------------------- */

/* A derived snapshot owns its pools and routes arrays, its own servers
 * arrays and every pool's balancer; the rest belongs to its base. */
static void derived_free(struct sg_config *c) {
    for (size_t i = 0; i < c->npools; i++) {
        struct sg_pool *p = &c->pools[i];
        if (p->balancer && p->balancer_free)
            p->balancer_free(p->balancer);
        if (!p->servers_owned)
            continue;
        for (size_t j = 0; j < p->nprimary; j++)
            free(p->servers[j].text);
        free(p->servers);
    }
    free(c->pools);
    free(c->routes);
    sg_config_unref(c->base);
    free(c);
}

static void scale_free(struct sg_scale_cfg *s) {
    free(s->command);
    free(s->scale_to);
    free(s->list);
    free(s->queue_redis_list);
    free(s->queue_command);
}

void sg__config_free(struct sg_config *c) {
    if (c == NULL)
        return;
    if (c->base) {
        derived_free(c);
        return;
    }
    free(c->path);
    free(c->access_log);
    free(c->health_path);
    free(c->admin.listen.text);
    free(c->admin.token);
    free(c->admin.token_from);
    free(c->redis.host);
    free(c->redis.prefix);
    for (size_t i = 0; i < c->nlisten; i++)
        free(c->listen[i].text);
    free(c->listen);
    for (size_t i = 0; i < c->npools; i++) {
        struct sg_pool *p = &c->pools[i];
        /* built after loading by another module (pool/); it may point into the pool */
        if (p->balancer && p->balancer_free)
            p->balancer_free(p->balancer);
        free(p->name);
        for (size_t j = 0; j < p->nservers; j++)
            free(p->servers[j].text);
        free(p->servers);
        free(p->hash_name);
        free(p->health.method);
        free(p->health.path);
        free(p->health.host);
        scale_free(&p->scale);
    }
    free(c->pools);
    for (size_t i = 0; i < c->nroutes; i++) {
        struct sg_route *r = &c->routes[i];
        free(r->host);
        free(r->name);
        free(r->path_prefix);
        free((void *)r->in_flight);
        free((void *)r->queued);
        for (size_t j = 0; j < r->nrate_limits; j++) {
            struct sg_rl_rule *rl = &r->rate_limits[j];
            free(rl->name);
            free(rl->key_name);
            free(rl->class_header);
            for (size_t k = 0; k < rl->noverrides; k++)
                free(rl->overrides[k].value);
            free(rl->overrides);
            for (size_t k = 0; k < rl->nclasses; k++)
                free(rl->classes[k].value);
            free(rl->classes);
        }
        free(r->rate_limits);
        for (size_t j = 0; j < r->cache.nvary; j++)
            free(r->cache.vary[j]);
        free(r->cache.vary);
    }
    free(c->routes);
    free(c);
}

struct sg_pool *sg_config_pool(const struct sg_config *c, const char *name) {
    for (size_t i = 0; i < c->npools; i++)
        if (strcmp(c->pools[i].name, name) == 0)
            return &c->pools[i];
    return NULL;
}

/* Copies over's primaries and base's backups into p->servers. */
static int derive_servers(struct sg_pool *p, const struct sg_pool *bp,
                          const struct sg_pool_servers *over) {
    size_t nback = bp->nservers - bp->nprimary;
    struct sg_server *sv = calloc(over->n + nback + 1, sizeof(*sv));
    if (sv == NULL)
        return -1;
    for (size_t j = 0; j < over->n; j++) {
        sv[j] = over->servers[j];
        sv[j].backup = false;
        if ((sv[j].text = strdup(over->servers[j].text)) == NULL) {
            while (j-- > 0)
                free(sv[j].text);
            free(sv);
            return -1;
        }
    }
    if (nback)
        memcpy(sv + over->n, bp->servers + bp->nprimary, nback * sizeof(*sv));
    p->servers = sv;
    p->nservers = over->n + nback;
    p->nprimary = over->n;
    p->servers_owned = true;
    return 0;
}

struct sg_config *sg_config_derive(struct sg_config *base, const struct sg_pool_servers *over) {
    struct sg_config *root = base->base ? base->base : base;
    struct sg_config *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    memcpy(c, root, sizeof(*c));
    atomic_init(&c->refs, 1);
    c->base = sg_config_ref(root);
    c->pools = calloc(root->npools + 1, sizeof(*c->pools));
    c->routes = calloc(root->nroutes + 1, sizeof(*c->routes));
    c->npools = 0;
    if (c->pools == NULL || c->routes == NULL) {
        c->nroutes = 0;
        derived_free(c);
        return NULL;
    }
    for (size_t i = 0; i < root->npools; i++) {
        struct sg_pool *p = &c->pools[i];
        memcpy(p, &root->pools[i], sizeof(*p));
        p->balancer = NULL;
        p->shared = NULL;
        p->servers_owned = false;
        atomic_init(&p->budget_window, 0);
        atomic_init(&p->budget_requests, 0);
        atomic_init(&p->budget_retries, 0);
        atomic_init(&p->queued, 0);
        atomic_init(&p->rr, 0);
        c->npools = i + 1;
        if (over && over[i].set && derive_servers(p, &root->pools[i], &over[i]) != 0) {
            p->servers_owned = false;
            derived_free(c);
            return NULL;
        }
    }
    for (size_t i = 0; i < root->nroutes; i++) {
        c->routes[i] = root->routes[i];
        c->routes[i].pool = &c->pools[root->routes[i].pool - root->pools];
        if (root->routes[i].read_pool)
            c->routes[i].read_pool = &c->pools[root->routes[i].read_pool - root->pools];
    }
    return c;
}

struct sg_config *sg_config_ref(struct sg_config *c) {
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    return c;
}

void sg_config_unref(struct sg_config *c) {
    if (c == NULL)
        return;
    /* acq_rel: every holder's reads happen before the free */
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
        sg__config_free(c);
}

/* ---- loading -------------------------------------------------------------- */

/* Line (1-based) of byte offset off in text. */
static size_t line_of_offset(const char *text, size_t len, size_t off) {
    size_t line = 1;
    if (off > len)
        off = len;
    for (size_t i = 0; i < off; i++)
        line += text[i] == '\n';
    return line;
}

static void report_yaml_error(struct sg__cfg_ctx *cx, const yaml_parser_t *p, const char *text,
                              size_t len) {
    const char *problem = p->problem ? p->problem : "invalid YAML";
    switch (p->error) {
    case YAML_MEMORY_ERROR:
        cx->oom = true;
        cx->nerrors++;
        return;
    case YAML_READER_ERROR:
        sg__cfg_error_line(cx, line_of_offset(text, len, p->problem_offset), "", "syntax error: %s",
                           problem);
        return;
    default:
        break;
    }
    if (p->context)
        sg__cfg_error_line(cx, p->problem_mark.line + 1, "", "syntax error: %s (%s at line %zu)",
                           problem, p->context, p->context_mark.line + 1);
    else
        sg__cfg_error_line(cx, p->problem_mark.line + 1, "", "syntax error: %s", problem);
}

struct sg_config *sg_config_load_string(const char *name, const char *text, size_t len,
                                        struct sg_config_errors *errs) {
    struct sg__cfg_ctx cx = {.file = name ? name : "(config)"};
    struct sg_config *cfg = NULL;
    yaml_parser_t parser;
    yaml_document_t doc, extra;

    if (errs) {
        errs->msgs = NULL;
        errs->n = 0;
    }
    if (!yaml_parser_initialize(&parser)) {
        cx.oom = true;
        cx.nerrors++;
        goto out;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        report_yaml_error(&cx, &parser, text, len);
        yaml_parser_delete(&parser);
        goto out;
    }
    /* A second document would be silently ignored: refuse it. */
    if (!yaml_parser_load(&parser, &extra)) {
        report_yaml_error(&cx, &parser, text, len);
    } else {
        yaml_node_t *r = yaml_document_get_root_node(&extra);
        if (r)
            sg__cfg_error(&cx, r, "", "only one YAML document is allowed per file");
        yaml_document_delete(&extra);
    }
    yaml_parser_delete(&parser);

    cfg = calloc(1, sizeof(*cfg));
    if (cfg == NULL || (cfg->path = strdup(cx.file)) == NULL) {
        cx.oom = true;
        cx.nerrors++;
    } else {
        atomic_init(&cfg->refs, 1);
        cx.doc = &doc;
        cx.cfg = cfg;
        sg__config_build(&cx);
    }
    yaml_document_delete(&doc);

out:
    if (cx.nerrors > 0 || cx.oom) {
        sg__config_free(cfg);
        cfg = NULL;
    }
    finish_errors(&cx, errs);
    return cfg;
}

static int read_file(const char *path, char **out, size_t *outlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        return -EISDIR;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    if (buf == NULL) {
        close(fd);
        return -ENOMEM;
    }
    for (;;) {
        if (len == cap) {
            if (cap >= MAX_FILE_BYTES) {
                free(buf);
                close(fd);
                return -EFBIG;
            }
            char *n = realloc(buf, cap * 2);
            if (n == NULL) {
                free(buf);
                close(fd);
                return -ENOMEM;
            }
            buf = n;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = -errno;
            free(buf);
            close(fd);
            return e;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    *out = buf;
    *outlen = len;
    return 0;
}

struct sg_config *sg_config_load(const char *path, struct sg_config_errors *errs) {
    char *text = NULL;
    size_t len = 0;
    int r = read_file(path, &text, &len);
    if (r < 0) {
        if (errs) {
            errs->n = 0;
            errs->msgs = calloc(2, sizeof(char *));
            if (errs->msgs &&
                asprintf(&errs->msgs[0], "%s: cannot read: %s", path, strerror(-r)) >= 0)
                errs->n = 1;
        }
        return NULL;
    }
    struct sg_config *c = sg_config_load_string(path, text, len, errs);
    free(text);
    return c;
}

/* ---- routing (request path) ------------------------------------------------- */

static inline char lower(char c) {
    return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
}

/* pattern is lower case; s is compared case-insensitively. */
static bool eq_nocase(const char *pattern, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (pattern[i] != lower(s[i]))
            return false;
    return true;
}

static bool host_matches(const char *pattern, const char *host, size_t len) {
    size_t plen = strlen(pattern);
    if (pattern[0] == '*') { /* "*.example.com": one label or more before the suffix */
        plen--;
        return len > plen && eq_nocase(pattern + 1, host + len - plen, plen);
    }
    return len == plen && eq_nocase(pattern, host, len);
}

/*
 * Walks the routes in order; the common catch-all route costs two compares.
 * The request's host loses a ":port" suffix and a trailing dot first.
 */
const struct sg_route *sg_config_route(const struct sg_config *c, const char *host, size_t host_len,
                                       const char *path, size_t path_len, int method_id) {
    if (host) {
        const char *end = host + host_len;
        if (host_len > 0 && host[0] == '[') {
            const char *rb = memchr(host, ']', host_len);
            if (rb)
                end = rb + 1;
        } else {
            const char *colon = memchr(host, ':', host_len);
            if (colon)
                end = colon;
        }
        host_len = (size_t)(end - host);
        if (host_len > 0 && host[host_len - 1] == '.')
            host_len--;
    }
    for (size_t i = 0; i < c->nroutes; i++) {
        const struct sg_route *r = &c->routes[i];
        if (r->methods && (method_id < 0 || method_id >= 32 || !(r->methods & (1u << method_id))))
            continue;
        if (r->path_prefix && (path_len < r->path_prefix_len ||
                               memcmp(path, r->path_prefix, r->path_prefix_len) != 0))
            continue;
        if (r->host && (host == NULL || !host_matches(r->host, host, host_len)))
            continue;
        return r;
    }
    return NULL;
}
