/* Hashing helpers (hash.h). */
#include "core/hash.h"

#include <stdint.h>
#include <sys/random.h>
#include <time.h>

uint64_t sg_random_seed(const void *addr) {
    uint64_t s;
    if (getrandom(&s, sizeof(s), GRND_NONBLOCK) == (ssize_t)sizeof(s))
        return s;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return sg_mix64((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)(uintptr_t)addr);
}
