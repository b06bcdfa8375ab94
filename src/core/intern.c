/*
 * String interning: maps a string to a small dense id (0, 1, 2, ... in order
 * of first sight) that stays the same for the life of the process, so that
 * per-worker tables indexed by id (idle upstream connections per server
 * address, per-server counters) survive config reloads.
 *
 * One open-addressing hash table of ids plus an array of strings by id, both
 * grown by doubling, under one mutex. Interned strings are never freed: the
 * set of server addresses a process ever sees is small, and the ids must
 * stay valid for as long as any table indexed by them exists, which is until
 * exit. The memory stays reachable from the static table, so leak checkers
 * do not report it.
 */
#include "core/intern.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define EMPTY UINT32_MAX

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char **strs;    /* strs[id]: the interned string */
static uint32_t nstrs; /* ids handed out */
static uint32_t capstrs;
static uint32_t *slots; /* hash slots holding ids, EMPTY when free */
static uint32_t nslots; /* power of two, kept above 2 * nstrs */

/* FNV-1a: short strings, no adversary (config-load time only). */
static uint32_t hash(const char *s) {
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static int grow_slots_locked(void) {
    uint32_t n = nslots ? nslots * 2 : 64;
    uint32_t *ns = malloc((size_t)n * sizeof(*ns));
    if (ns == NULL)
        return -1;
    for (uint32_t i = 0; i < n; i++)
        ns[i] = EMPTY;
    for (uint32_t id = 0; id < nstrs; id++) {
        uint32_t i = hash(strs[id]) & (n - 1);
        while (ns[i] != EMPTY)
            i = (i + 1) & (n - 1);
        ns[i] = id;
    }
    free(slots);
    slots = ns;
    nslots = n;
    return 0;
}

/*
 * Returns the id of s; UINT32_MAX (never a valid id) if memory runs out.
 * The caller keeps ownership of s; the table keeps its own copy.
 */
uint32_t sg_intern(const char *s) {
    uint32_t id = EMPTY;

    pthread_mutex_lock(&lock);
    if ((nstrs + 1) * 2 > nslots && grow_slots_locked() < 0)
        goto out;
    uint32_t i = hash(s) & (nslots - 1);
    while (slots[i] != EMPTY) {
        if (strcmp(strs[slots[i]], s) == 0) {
            id = slots[i];
            goto out;
        }
        i = (i + 1) & (nslots - 1);
    }
    if (nstrs == capstrs) {
        uint32_t ncap = capstrs ? capstrs * 2 : 32;
        char **n = realloc(strs, (size_t)ncap * sizeof(*n));
        if (n == NULL)
            goto out;
        strs = n;
        capstrs = ncap;
    }
    char *copy = strdup(s);
    if (copy == NULL)
        goto out;
    strs[nstrs] = copy;
    slots[i] = nstrs;
    id = nstrs++;
out:
    pthread_mutex_unlock(&lock);
    return id;
}

uint32_t sg_intern_count(void) {
    pthread_mutex_lock(&lock);
    uint32_t n = nstrs;
    pthread_mutex_unlock(&lock);
    return n;
}
