/*
 * Reading the libyaml document for the schema walk (schema.c, schema_pool.c):
 * node shapes, maps with known keys, lists, key paths and quoted values for
 * messages, and numeric values (durations, sizes, counts, percentages) with
 * their ranges. Every function reports its own errors through cx and returns
 * a failure value; none allocates anything but what it hands back.
 */
#include "config/config_int.h"

#include "core/parse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_NAMES 32 /* keys of the largest map in the schema (a pool's scale) */

/* ---- nodes and messages --------------------------------------------------- */

yaml_node_t *sg__cfg_node(struct sg__cfg_ctx *cx, int id) {
    return yaml_document_get_node(cx->doc, id);
}

const char *sg__cfg_shape(const yaml_node_t *n) {
    switch (n->type) {
    case YAML_MAPPING_NODE:
        return "a map";
    case YAML_SEQUENCE_NODE:
        return "a list";
    default:
        return "a string";
    }
}

bool sg__cfg_is_null(const yaml_node_t *n) {
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *v = (const char *)n->data.scalar.value;
    return !*v || !strcmp(v, "~") || !strcmp(v, "null") || !strcmp(v, "Null") || !strcmp(v, "NULL");
}

const char *sg__cfg_quote(char *out, size_t outsz, const char *s) {
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

void sg__cfg_path_key(char *out, const char *base, const char *key) {
    size_t o = 0;
    if (*base) {
        o = strlen(base);
        if (o > SG__CFG_PATHSZ - 2)
            o = SG__CFG_PATHSZ - 2;
        memcpy(out, base, o);
        out[o++] = '.';
    }
    for (size_t i = 0; key[i] && o < SG__CFG_PATHSZ - 4; i++) {
        unsigned char c = (unsigned char)key[i];
        out[o++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (o >= SG__CFG_PATHSZ - 4 && *key) {
        o = SG__CFG_PATHSZ - 4;
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
}

void sg__cfg_path_idx(char *out, const char *base, size_t i) {
    char tmp[32];
    int n = snprintf(tmp, sizeof(tmp), "[%zu]", i);
    size_t bl = strlen(base);
    if (bl + (size_t)n >= SG__CFG_PATHSZ)
        bl = SG__CFG_PATHSZ - 1 - (size_t)n;
    memmove(out, base, bl);
    memcpy(out + bl, tmp, (size_t)n + 1);
}

const char *sg__cfg_scalar(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path,
                           const char *what) {
    if (n->type != YAML_SCALAR_NODE) {
        sg__cfg_error(cx, n, path, "expected %s, got %s", what, sg__cfg_shape(n));
        return NULL;
    }
    if (sg__cfg_is_null(n)) {
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

char *sg__cfg_strdup(struct sg__cfg_ctx *cx, const char *s) {
    char *d = strdup(s);
    if (d == NULL)
        cx->oom = true;
    return d;
}

void *sg__cfg_alloc(struct sg__cfg_ctx *cx, size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    if (p == NULL)
        cx->oom = true;
    return p;
}

bool sg__cfg_get_map(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path,
                     const char *const *names, size_t nnames, yaml_node_t **vals) {
    yaml_node_t *keys[MAX_NAMES];
    char kp[SG__CFG_PATHSZ];

    if (nnames > MAX_NAMES)
        abort(); /* a schema map grew: raise MAX_NAMES */
    for (size_t i = 0; i < nnames; i++)
        vals[i] = keys[i] = NULL;
    if (sg__cfg_is_null(n))
        return true;
    if (n->type != YAML_MAPPING_NODE) {
        sg__cfg_error(cx, n, path, "expected a map, got %s", sg__cfg_shape(n));
        return false;
    }
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        yaml_node_t *k = sg__cfg_node(cx, p->key), *v = sg__cfg_node(cx, p->value);
        if (k == NULL || v == NULL)
            continue;
        if (k->type != YAML_SCALAR_NODE) {
            sg__cfg_error(cx, k, path, "keys must be strings, got %s", sg__cfg_shape(k));
            continue;
        }
        const char *name = (const char *)k->data.scalar.value;
        sg__cfg_path_key(kp, path, name);
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

bool sg__cfg_get_map_fields(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path,
                            const char *const *names, size_t nnames, const struct sg__cfg_field *f,
                            size_t nf, yaml_node_t **vals) {
    const char *all[MAX_NAMES];
    if (nnames + nf > MAX_NAMES)
        abort(); /* a schema map grew: raise MAX_NAMES */
    for (size_t i = 0; i < nnames; i++)
        all[i] = names[i];
    for (size_t i = 0; i < nf; i++)
        all[nnames + i] = f[i].name;
    return sg__cfg_get_map(cx, n, path, all, nnames + nf, vals);
}

/* ---- values ------------------------------------------------------------- */

int sg__cfg_parse_uint(const char *s, uint64_t *out) {
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

void sg__cfg_fmt_duration(char *out, size_t sz, uint64_t ms) {
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
    if (ms == 0)
        snprintf(out, sz, "0");
    else
        snprintf(out, sz, "%llums", (unsigned long long)ms);
}

void sg__cfg_fmt_size(char *out, size_t sz, uint64_t v) {
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

/* "20%" or "20": a whole number with an optional percent sign. */
static int parse_percent(const char *s, uint64_t *out) {
    char digits[24];
    size_t len = strlen(s);
    if (len > 0 && s[len - 1] == '%')
        len--;
    if (len == 0 || len >= sizeof(digits))
        return -1;
    memcpy(digits, s, len);
    digits[len] = '\0';
    return sg__cfg_parse_uint(digits, out);
}

static void fmt_field(char *out, size_t sz, enum sg__cfg_vtype t, uint64_t v) {
    if (t == SG__CFG_DURATION)
        sg__cfg_fmt_duration(out, sz, v);
    else if (t == SG__CFG_SIZE)
        sg__cfg_fmt_size(out, sz, v);
    else if (t == SG__CFG_PERCENT)
        snprintf(out, sz, "%llu%%", (unsigned long long)v);
    else
        snprintf(out, sz, "%llu", (unsigned long long)v);
}

bool sg__cfg_set_field(struct sg__cfg_ctx *cx, const struct sg__cfg_field *f, const yaml_node_t *n,
                       const char *path, void *base) {
    static const char *const what[] = {
        [SG__CFG_DURATION] = "a duration",
        [SG__CFG_SIZE] = "a size",
        [SG__CFG_COUNT] = "a whole number",
        [SG__CFG_PERCENT] = "a percentage",
    };
    char q[SG__CFG_QUOTESZ], lo[32], hi[32];
    uint64_t v;
    int r;
    const char *s = sg__cfg_scalar(cx, n, path, what[f->type]);
    if (s == NULL)
        return false;
    switch (f->type) {
    case SG__CFG_DURATION:
        r = sg_parse_duration_ms(s, &v);
        break;
    case SG__CFG_SIZE:
        r = sg_parse_size(s, &v);
        break;
    case SG__CFG_PERCENT:
        r = parse_percent(s, &v);
        break;
    default:
        r = sg__cfg_parse_uint(s, &v);
        break;
    }
    if (r != 0) {
        sg__cfg_error(cx, n, path, "%s is not %s", sg__cfg_quote(q, sizeof(q), s), what[f->type]);
        return false;
    }
    if (v < f->min || v > f->max) {
        fmt_field(lo, sizeof(lo), f->type, f->min);
        fmt_field(hi, sizeof(hi), f->type, f->max);
        if (f->max == UINT64_MAX)
            sg__cfg_error(cx, n, path, "%s must be at least %s", sg__cfg_quote(q, sizeof(q), s),
                          lo);
        else
            sg__cfg_error(cx, n, path, "%s is out of range (%s to %s)",
                          sg__cfg_quote(q, sizeof(q), s), lo, hi);
        return false;
    }
    char *dst = (char *)base + f->off;
    if (f->width == 4)
        *(uint32_t *)(void *)dst = (uint32_t)v;
    else
        *(uint64_t *)(void *)dst = v;
    return true;
}

int sg__cfg_bool(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path) {
    static const char *const yes[] = {"true", "yes", "on"}, *const no[] = {"false", "no", "off"};
    char q[SG__CFG_QUOTESZ];
    const char *s = sg__cfg_scalar(cx, n, path, "true or false");
    if (s == NULL)
        return -1;
    for (size_t i = 0; i < 3; i++) {
        if (strcasecmp(s, yes[i]) == 0)
            return 1;
        if (strcasecmp(s, no[i]) == 0)
            return 0;
    }
    sg__cfg_error(cx, n, path, "%s is not true or false", sg__cfg_quote(q, sizeof(q), s));
    return -1;
}

void sg__cfg_fields(struct sg__cfg_ctx *cx, const struct sg__cfg_field *f, size_t nf,
                    yaml_node_t *const *vals, const char *path, void *base, bool *ok) {
    char kp[SG__CFG_PATHSZ];
    for (size_t i = 0; i < nf; i++) {
        bool good = true;
        if (vals[i]) {
            sg__cfg_path_key(kp, path, f[i].name);
            good = sg__cfg_set_field(cx, &f[i], vals[i], kp, base);
        }
        if (ok)
            ok[i] = good;
    }
}

long sg__cfg_each_item(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path,
                       const char *what, sg__cfg_item_fn one, void *arg) {
    char ip[SG__CFG_PATHSZ];
    if (n->type == YAML_SCALAR_NODE) {
        if (one)
            one(cx, n, path, 0, arg);
        return 1;
    }
    if (n->type != YAML_SEQUENCE_NODE) {
        sg__cfg_error(cx, n, path, "expected %s or a list of them, got %s", what, sg__cfg_shape(n));
        return -1;
    }
    size_t count = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
    if (count == 0) {
        sg__cfg_error(cx, n, path, "the list is empty");
        return -1;
    }
    if (one) {
        for (size_t i = 0; i < count; i++) {
            yaml_node_t *it = sg__cfg_node(cx, n->data.sequence.items.start[i]);
            if (it == NULL)
                continue;
            sg__cfg_path_idx(ip, path, i);
            one(cx, it, ip, i, arg);
        }
    }
    return (long)count;
}

/* ---- names -------------------------------------------------------------- */

bool sg__cfg_token(const char *s) {
    if (*s == '\0')
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              strchr("!#$%&'*+-.^_`|~", *s) != NULL))
            return false;
    return true;
}

bool sg__cfg_named_key(struct sg__cfg_ctx *cx, const yaml_node_t *n, const char *path,
                       const char *s, enum sg_hash_source *src, char **name) {
    static const struct {
        const char *prefix;
        enum sg_hash_source src;
    } named[] = {
        {"header:", SG_HASH_HEADER}, {"cookie:", SG_HASH_COOKIE}, {"query:", SG_HASH_QUERY}};
    char q[SG__CFG_QUOTESZ];
    *name = NULL;
    for (size_t i = 0; i < sizeof(named) / sizeof(named[0]); i++) {
        size_t pl = strlen(named[i].prefix);
        if (strncmp(s, named[i].prefix, pl) != 0)
            continue;
        if (!sg__cfg_token(s + pl))
            sg__cfg_error(cx, n, path,
                          "%s: the name after \"%s\" must be one or more letters, digits or "
                          "!#$%%&'*+-.^_`|~",
                          sg__cfg_quote(q, sizeof(q), s), named[i].prefix);
        else
            *name = sg__cfg_strdup(cx, s + pl);
        *src = named[i].src;
        return true;
    }
    return false;
}
