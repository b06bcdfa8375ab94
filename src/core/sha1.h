/*
 * SHA-1 (FIPS 180-4), for the one place that needs it: naming a Lua script
 * to Redis by its digest (EVALSHA). Not for anything that must resist an
 * attacker.
 */
#ifndef SG_CORE_SHA1_H
#define SG_CORE_SHA1_H

#include <stddef.h>
#include <stdint.h>

#define SG_SHA1_HEX_LEN 40

/* The digest of data[0..len) as 40 lowercase hex digits and a NUL. */
void sg_sha1_hex(const void *data, size_t len, char out[SG_SHA1_HEX_LEN + 1]);

#endif
