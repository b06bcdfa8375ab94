/*
 * Growable text (see text.h).
 */
#include "core/text.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void reserve(struct sg_text *t, size_t more) {
    if (t->len + more + 1 <= t->cap)
        return;
    size_t cap = t->cap ? t->cap : 256;
    while (cap < t->len + more + 1)
        cap *= 2;
    char *s = realloc(t->s, cap);
    if (s == NULL)
        abort();
    t->s = s;
    t->cap = cap;
}

void sg_text_add(struct sg_text *t, const char *p, size_t n) {
    reserve(t, n);
    memcpy(t->s + t->len, p, n);
    t->len += n;
    t->s[t->len] = '\0';
}

void sg_text_puts(struct sg_text *t, const char *s) {
    sg_text_add(t, s, strlen(s));
}

void sg_text_printf(struct sg_text *t, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char tmp[256];
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof(tmp)) {
        sg_text_add(t, tmp, (size_t)n);
        return;
    }
    reserve(t, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(t->s + t->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    t->len += (size_t)n;
}

void sg_text_label(struct sg_text *t, const char *s) {
    for (const char *p = s; *p; p++) {
        if (*p == '\\')
            sg_text_add(t, "\\\\", 2);
        else if (*p == '"')
            sg_text_add(t, "\\\"", 2);
        else if (*p == '\n')
            sg_text_add(t, "\\n", 2);
        else
            sg_text_add(t, p, 1);
    }
}

char *sg_text_take(struct sg_text *t, size_t *len) {
    char *s = t->s;
    if (len)
        *len = t->len;
    t->s = NULL;
    t->len = t->cap = 0;
    return s;
}

void sg_text_free(struct sg_text *t) {
    free(t->s);
    t->s = NULL;
    t->len = t->cap = 0;
}
