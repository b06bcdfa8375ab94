/*
 * A growable text buffer for the control plane (metrics exposition, JSON
 * built by hand, messages): appends never fail (allocation failure aborts,
 * like the rest of the control plane), the text stays NUL-terminated.
 * Not for the request path.
 */
#ifndef SG_CORE_TEXT_H
#define SG_CORE_TEXT_H

#include <stddef.h>

struct sg_text {
    char *s;    /* NUL-terminated; NULL until the first append */
    size_t len; /* bytes, NUL not counted */
    size_t cap;
};

/* Appends n bytes of p. */
void sg_text_add(struct sg_text *t, const char *p, size_t n);
/* Appends a NUL-terminated string. */
void sg_text_puts(struct sg_text *t, const char *s);
/* Appends printf-formatted text. */
void sg_text_printf(struct sg_text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a Prometheus label value: backslash, double quote and
 * newline escaped (the quotes around it are the caller's). */
void sg_text_label(struct sg_text *t, const char *s);
/* Takes the text out (the caller frees it; may be NULL when empty) and
 * leaves t empty. */
char *sg_text_take(struct sg_text *t, size_t *len);
/* Frees the text. */
void sg_text_free(struct sg_text *t);

#endif
