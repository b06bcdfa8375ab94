/*
 * Shared runtime state of backend servers (see state.h), one record per
 * server address id (sg_intern).
 *
 * Records live in chunks of CHUNK_SIZE, allocated on first use of an id in
 * the chunk; a fixed array of chunk pointers covers ids up to MAX_IDS. A
 * lookup is an acquire load of the chunk pointer and an index, with no lock;
 * only the creation of a chunk takes the mutex (double-checked), so two
 * threads asking for a new id at once get the same record.
 *
 * Chunks are never freed or moved: ids are stable for the life of the
 * process (intern.c never forgets a string), and pointers to records are
 * kept by pools across reloads. The memory stays reachable from the static
 * array, so leak checkers do not report it.
 */
#include "pool/state.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHUNK_BITS 10
#define CHUNK_SIZE (1u << CHUNK_BITS)
#define MAX_CHUNKS 1024u
#define MAX_IDS    (MAX_CHUNKS * CHUNK_SIZE) /* 2^20 server addresses */

static _Atomic(struct sg_server_state *) chunks[MAX_CHUNKS];
static pthread_mutex_t chunk_lock = PTHREAD_MUTEX_INITIALIZER;

static struct sg_server_state *chunk_new(void) {
    struct sg_server_state *c = calloc(CHUNK_SIZE, sizeof(*c));
    if (c == NULL)
        return NULL;
    for (uint32_t i = 0; i < CHUNK_SIZE; i++) {
        atomic_init(&c[i].health, SG_HEALTH_UP);
        atomic_init(&c[i].admin, SG_ADMIN_ENABLED);
    }
    return c;
}

/* Returns the record for id, or NULL if id >= 2^20 or memory ran out while
 * creating its chunk (a later call retries). */
struct sg_server_state *sg_server_state(uint32_t id) {
    if (id >= MAX_IDS)
        return NULL;
    uint32_t ci = id >> CHUNK_BITS;
    struct sg_server_state *c = atomic_load_explicit(&chunks[ci], memory_order_acquire);
    if (c == NULL) {
        pthread_mutex_lock(&chunk_lock);
        c = atomic_load_explicit(&chunks[ci], memory_order_relaxed);
        if (c == NULL) {
            c = chunk_new();
            if (c != NULL)
                atomic_store_explicit(&chunks[ci], c, memory_order_release);
        }
        pthread_mutex_unlock(&chunk_lock);
        if (c == NULL)
            return NULL;
    }
    return &c[id & (CHUNK_SIZE - 1)];
}

uint64_t sg_state_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

bool sg_server_usable(const struct sg_server_state *st, uint64_t now) {
    if (st == NULL)
        return false;
    return atomic_load_explicit(&st->health, memory_order_relaxed) == SG_HEALTH_UP &&
           atomic_load_explicit(&st->admin, memory_order_relaxed) == SG_ADMIN_ENABLED &&
           atomic_load_explicit(&st->ejected_until, memory_order_relaxed) <= now;
}

/* Returns weight scaled linearly by the share of slow_start_ms elapsed since
 * recovered_at, at least 1; the full weight when slow start is off, the
 * server never recovered (recovered_at 0) or the ramp is over. */
uint32_t sg_server_effective_weight(const struct sg_server_state *st, uint32_t weight,
                                    uint64_t slow_start_ms, uint64_t now) {
    if (st == NULL || slow_start_ms == 0)
        return weight;
    uint64_t rec = atomic_load_explicit(&st->recovered_at, memory_order_relaxed);
    if (rec == 0)
        return weight;
    uint64_t elapsed = now > rec ? now - rec : 0; /* another thread's clock may run ahead */
    if (elapsed >= slow_start_ms)
        return weight;
    /* elapsed < slow_start_ms: keep both under 2^32 so weight * elapsed fits in 64 bits. */
    while (slow_start_ms > UINT32_MAX) {
        slow_start_ms >>= 1;
        elapsed >>= 1;
    }
    uint64_t w = (uint64_t)weight * elapsed / slow_start_ms;
    return w < 1 ? 1 : (uint32_t)w;
}

/* Returns 0, -EINVAL for a bad value or id, -ENOMEM if the record could not
 * be created. Enabling a server that was draining or disabled starts its
 * slow start (recovered_at = now), like a recovery from DOWN. */
int sg_server_set_admin(uint32_t id, enum sg_admin_state a) {
    if ((unsigned)a > SG_ADMIN_DISABLED || id >= MAX_IDS)
        return -EINVAL;
    struct sg_server_state *st = sg_server_state(id);
    if (st == NULL)
        return -ENOMEM;
    uint8_t old = atomic_exchange_explicit(&st->admin, (uint8_t)a, memory_order_relaxed);
    if (old != SG_ADMIN_ENABLED && a == SG_ADMIN_ENABLED) {
        uint64_t now = sg_state_now();
        atomic_store_explicit(&st->recovered_at, now ? now : 1, memory_order_relaxed);
    }
    return 0;
}

/* v = ms + 4 >= 4, so every bucket is one quarter of a doubling of v:
 * 0, 1, 2, 3 ms get one bucket each, then the buckets widen. */
unsigned sg_latency_bucket(uint64_t ms) {
    uint64_t v = ms < UINT64_MAX - 4 ? ms + 4 : UINT64_MAX;
    unsigned e = 63u - (unsigned)__builtin_clzll(v);
    unsigned b = (e - 2) * 4 + ((unsigned)(v >> (e - 2)) & 3u);
    return b < SG_LATENCY_BUCKETS ? b : SG_LATENCY_BUCKETS - 1;
}

uint64_t sg_latency_bound(unsigned b) {
    if (b + 1 >= SG_LATENCY_BUCKETS)
        return UINT64_MAX;
    unsigned n = b + 1;
    uint64_t low = (uint64_t)(4 + n % 4) << (n / 4); /* smallest v of bucket b + 1 */
    return low - 5;
}

void sg_server_observe(struct sg_server_state *st, uint64_t ms) {
    if (st != NULL) {
        atomic_fetch_add_explicit(&st->latency[sg_latency_bucket(ms)], 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&st->latency_sum_ms, ms, memory_order_relaxed);
    }
}

#define MAX_POOLS 1024u
static struct sg_pool_state *pools[MAX_POOLS];
static size_t npools;
static pthread_mutex_t pools_lock = PTHREAD_MUTEX_INITIALIZER;

void (*sg_pool_demand_hook)(void);

struct sg_pool_state *sg_pool_state(const char *name) {
    struct sg_pool_state *ps = NULL;
    pthread_mutex_lock(&pools_lock);
    for (size_t i = 0; i < npools && !ps; i++)
        if (strncmp(pools[i]->name, name, sizeof(ps->name) - 1) == 0)
            ps = pools[i];
    if (ps == NULL && npools < MAX_POOLS && (ps = calloc(1, sizeof(*ps))) != NULL) {
        strncpy(ps->name, name, sizeof(ps->name) - 1);
        pools[npools++] = ps;
    }
    pthread_mutex_unlock(&pools_lock);
    return ps;
}
