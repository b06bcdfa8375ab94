/*
 * Process-wide interning of short strings into small dense ids, so that
 * per-worker tables (such as the idle upstream connections of a server
 * address) can be indexed by id and survive config reloads. Thread-safe;
 * meant for config-load time, not the request path.
 */
#ifndef SG_CORE_INTERN_H
#define SG_CORE_INTERN_H

#include <stdint.h>

/* Returns the id of s (0, 1, 2, ... in order of first sight). */
uint32_t sg_intern(const char *s);

/* Number of ids handed out so far. */
uint32_t sg_intern_count(void);

#endif
