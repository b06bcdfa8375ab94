/*
 * Internals shared by the files of src/config/: the load context with its
 * error collector (config.c) and the schema walk that fills a snapshot from
 * a libyaml document (schema.c). Not for use outside src/config/.
 */
#ifndef SG_CONFIG_CONFIG_INT_H
#define SG_CONFIG_CONFIG_INT_H

#include "config/config.h"

#include <stdbool.h>
#include <stddef.h>
#include <yaml.h>

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

/* Frees a snapshot and everything it owns, whatever its refcount. */
void sg__config_free(struct sg_config *c);

#endif
