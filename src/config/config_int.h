/*
 * Internals shared by the files of src/config/: the load context with its
 * error collector (config.c), the helpers that read a libyaml document
 * (walk.c) and the schema walk that fills a snapshot from it (schema.c for
 * the top level, listen, workers, limits and routes; schema_pool.c for
 * pools). Not for use outside src/config/.
 */
#ifndef SG_CONFIG_CONFIG_INT_H
#define SG_CONFIG_CONFIG_INT_H

#include "config/config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <yaml.h>

#define SG__CFG_PATHSZ  256 /* key paths longer than this are cut */
#define SG__CFG_QUOTESZ 80  /* values quoted in messages are cut to fit */
#define SG__CFG_DAY_MS  (86400ull * 1000)
#define SG__CFG_YEAR_MS (365 * SG__CFG_DAY_MS)

struct sg__cfg_msg {
    size_t line; /* for sorting; 0 = no line */
    char *text;  /* "FILE:LINE: path: message", owned */
};

struct sg__cfg_ctx {
    const char *file;      /* name used in messages */
    yaml_document_t *doc;  /* the document being walked */
    struct sg_config *cfg; /* the snapshot being filled */
    struct sg__cfg_msg *msgs;
    size_t nmsgs, capmsgs;
    size_t nerrors; /* all errors, including those beyond the stored cap */
    bool oom;
};

/* Records an error at the line of node n ("" path: no key shown). */
void sg__cfg_error(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path, const char *fmt,
                   ...) __attribute__((format(printf, 4, 5)));
/* Same with an explicit 1-based line (0: none). */
void sg__cfg_error_line(struct sg__cfg_ctx *cx, size_t line, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Walks cx->doc against the schema and fills cx->cfg; reports through cx. */
void sg__config_build(struct sg__cfg_ctx *cx);

/* The "pools" section (schema_pool.c): fills cx->cfg->pools. */
void sg__cfg_build_pools(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path);

/* The "scale" section of a pool, "admin" and "redis" (schema_scale.c). */
void sg__cfg_build_scale(struct sg__cfg_ctx *cx, struct sg_pool *p, const yaml_node_t *n,
                         const char *path);
void sg__cfg_build_admin(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path);
void sg__cfg_build_redis(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path);

/* A route's "rate_limit" (schema_ratelimit.c). */
void sg__cfg_build_rate_limit(struct sg__cfg_ctx *cx, struct sg_route *route, size_t route_idx,
                              const yaml_node_t *n, const char *path);

/* The response cache (schema_cache.c): the top-level "cache" section (its
 * defaults are set by sg__cfg_cache_defaults, also when it is absent) and a
 * route's "cache" (true, false or a map). */
void sg__cfg_cache_defaults(struct sg_cache_cfg *c);
void sg__cfg_build_cache(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path);
void sg__cfg_build_route_cache(struct sg__cfg_ctx *cx, struct sg_route *route, const yaml_node_t *n,
                               const char *path);

/* A listen address (schema.c): l->text set (normalised) on success. */
void sg__cfg_listen_addr(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path,
                         struct sg_listen *l);

/* ---- walk.c: reading nodes ---------------------------------------------------
 * Every function below that takes cx reports its own errors there, with
 * path as the key path, and returns a failure value after reporting. */

yaml_node_t *sg__cfg_node(struct sg__cfg_ctx *cx, int id);
/* "a map", "a list" or "a string", for "expected X, got Y". */
const char *sg__cfg_shape(const yaml_node_t *n);
/* A plain empty/"~"/"null" scalar: what "key:" with nothing after it gives. */
bool sg__cfg_is_null(const yaml_node_t *n);
/* Writes s into out as "s" with control characters escaped, cut to fit; returns out. */
const char *sg__cfg_quote(char *out, size_t outsz, const char *s);
/* out (SG__CFG_PATHSZ bytes) = base.key, or key at the top; key cut and sanitised. */
void sg__cfg_path_key(char *out, const char *base, const char *key);
/* out (SG__CFG_PATHSZ bytes) = base[i]; out may be base. */
void sg__cfg_path_idx(char *out, const char *base, size_t i);
/* The text of scalar n, or NULL after reporting why it is not usable as `what`
 * ("a duration", "host:port", ...). The text belongs to the document. */
const char *sg__cfg_scalar(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path,
                           const char *what);
/* strdup/calloc that set cx->oom on failure (calloc of 0 items gives 1). */
char *sg__cfg_strdup(struct sg__cfg_ctx *cx, const char *s);
void *sg__cfg_alloc(struct sg__cfg_ctx *cx, size_t n, size_t size);
/* Checks that n is a map (a null value counts as an empty one) whose keys are
 * strings among names[0..nnames), none twice. vals[i] gets the value node of
 * names[i] or NULL. Returns false, after reporting, when n is not a map. */
bool sg__cfg_get_map(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path,
                     const char *const *names, size_t nnames, yaml_node_t **vals);

/* ---- walk.c: values ------------------------------------------------------------ */

/* Digits only, no overflow: 0 or -1. */
int sg__cfg_parse_uint(const char *s, uint64_t *out);
/* The shortest exact form: "10s", "1500ms" / "16k", "1000". */
void sg__cfg_fmt_duration(char *out, size_t sz, uint64_t ms);
void sg__cfg_fmt_size(char *out, size_t sz, uint64_t v);

enum sg__cfg_vtype {
    SG__CFG_DURATION = 0, /* "250ms", "10s" (core/parse.h), stored in ms */
    SG__CFG_SIZE,         /* "512", "64k", "10MB" */
    SG__CFG_COUNT,        /* digits */
    SG__CFG_PERCENT       /* "20%" or "20" */
};

/* A numeric key, stored at off in its struct. */
struct sg__cfg_field {
    const char *name;
    enum sg__cfg_vtype type;
    uint8_t width; /* 4: uint32_t, 8: uint64_t */
    size_t off;
    uint64_t min, max; /* max UINT64_MAX: no upper bound */
};

/* Parses n into base + f->off; false after reporting (base untouched). */
bool sg__cfg_set_field(struct sg__cfg_ctx *cx, const struct sg__cfg_field *f, const yaml_node_t *n,
                       const char *path, void *base);
/* sg__cfg_get_map over names[0..nnames) then the names of f[0..nf): vals gets
 * nnames + nf entries, the fields' nodes last. */
bool sg__cfg_get_map_fields(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path,
                            const char *const *names, size_t nnames, const struct sg__cfg_field *f,
                            size_t nf, yaml_node_t **vals);
/* Sets each field f[i] whose node vals[i] is not NULL; ok (NULL, or nf
 * entries) tells which were absent or valid. */
void sg__cfg_fields(struct sg__cfg_ctx *cx, const struct sg__cfg_field *f, size_t nf,
                    yaml_node_t *const *vals, const char *path, void *base, bool *ok);
/* true/false (also yes/no, on/off, any case): 1 or 0, or -1 after reporting. */
int sg__cfg_bool(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path);

/* Calls one(cx, item, path_of_item, i, arg) for each item of a list, or once
 * for a lone scalar (accepted where a list of strings is expected). Returns
 * the number of items, or -1 after reporting a wrong type or an empty list.
 * With one NULL it only counts. */
typedef void (*sg__cfg_item_fn)(struct sg__cfg_ctx *cx, const yaml_node_t *item, const char *path,
                                size_t i, void *arg);
long sg__cfg_each_item(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path,
                       const char *what, sg__cfg_item_fn one, void *arg);

/* RFC 9110 token: one or more of letters, digits and !#$%&'*+-.^_`|~ (what a
 * header, cookie or query parameter name may hold). */
bool sg__cfg_token(const char *s);
/* A request value named in s: "header:NAME", "cookie:NAME" or "query:NAME".
 * False when s starts with none of these; else true with *src set and
 * *name a copy of NAME, or NULL after reporting a bad NAME. */
bool sg__cfg_named_key(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path,
                       const char *s, enum sg_hash_source *src, char **name);

/* Frees a snapshot and everything it owns, whatever its refcount. */
void sg__config_free(struct sg_config *c);

#endif
