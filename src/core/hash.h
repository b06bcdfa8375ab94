/*
 * Small hashing helpers shared by the hash tables and the balancer: a
 * 64-bit finalizer and a random seed for tables whose placement must not
 * be predictable from outside.
 */
#ifndef SG_CORE_HASH_H
#define SG_CORE_HASH_H

#include <stdint.h>

/* MurmurHash3's 64-bit finalizer: a bijection in which every input bit
 * affects every output bit (distinct hashes stay distinct). */
static inline uint64_t sg_mix64(uint64_t h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

/* A random 64-bit seed (getrandom); without entropy yet (early boot), one
 * from the clock and addr, which only needs to differ between runs. */
uint64_t sg_random_seed(const void *addr);

#endif
