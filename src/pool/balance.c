/*
 * Balance algorithms (see balance.h). Each is a small function of a
 * candidate list the caller builds per request: weight (slow start already
 * applied), requests in flight and whether the server is usable. None of
 * them does I/O or allocates (but weighted on a list that does not match the
 * pool); a candidate that is not usable is never returned, and -1 means
 * no candidate is usable (the caller then tries the backups, then answers
 * 503).
 *
 * The candidates of a pool come in one fixed order: pool->servers[0..
 * nprimary) for the primaries, pool->servers[nprimary..nservers) for the
 * backups. struct sg_balancer keeps, per group, what must outlive one
 * request: the smooth weighted round robin's current weights (under a
 * mutex; picks are short and rarely contended) and the consistent hash
 * ring (immutable once built, read without a lock).
 */
#include "pool/balance.h"

#include "core/hash.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Hash ring sizing: VNODES_PER_WEIGHT points per unit of weight (ketama's
 * 160), fewer when a group's total weight would make the ring larger than
 * MAX_RING_POINTS (4 MiB), but never fewer than one per unit of weight, so
 * the shares stay proportional to the weights. The points of a server are
 * numbered 0, 1, 2, ... so a lower count keeps a prefix of the same points:
 * crossing the cap (total weight > 1638) moves only the keys of the dropped
 * points. */
#define VNODES_PER_WEIGHT 160u
#define MAX_RING_POINTS   (1u << 18)

struct ring_point {
    uint64_t pos;
    uint32_t idx; /* candidate index within the group */
};

struct ring {
    struct ring_point *pts; /* sorted by pos, then idx */
    size_t n;
    size_t ncand; /* servers it was built over */
};

struct group {
    int64_t *cur; /* SWRR current weight per candidate */
    size_t ncur;
    struct ring ring; /* immutable after sg_balancer_new */
};

struct sg_balancer {
    pthread_mutex_t lock;   /* guards groups[].cur and groups[].ncur */
    struct group groups[2]; /* [0] primaries, [1] backups */
};

static uint32_t weight_of(const struct sg_candidate *c) {
    return c->weight ? c->weight : 1;
}

/* a.inflight / a.weight < b.inflight / b.weight, without division. */
static int load_cmp(const struct sg_candidate *a, const struct sg_candidate *b) {
    uint64_t l = (uint64_t)a->inflight * weight_of(b);
    uint64_t r = (uint64_t)b->inflight * weight_of(a);
    return l < r ? -1 : l > r;
}

/* ---- hashing ---------------------------------------------------------- */

#define FNV_OFFSET 14695981039346656037ull
#define FNV_PRIME  1099511628211ull

static uint64_t fnv1a(uint64_t h, const void *data, size_t len) {
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * FNV_PRIME;
    return h;
}

/* FNV-1a 64 then sg_mix64 (FNV's high bits mix poorly alone). Not keyed: hash_key values choose a
 * server, an attacker flooding one server with chosen keys could do so anyway. */
uint64_t sg_hash64(const void *data, size_t len) {
    return sg_mix64(fnv1a(FNV_OFFSET, data, len));
}

/* ---- round robin ------------------------------------------------------ */

int sg_balance_round_robin(_Atomic uint32_t *cursor, const struct sg_candidate *c, size_t n) {
    if (n == 0)
        return -1;
    uint32_t k = atomic_fetch_add_explicit(cursor, 1, memory_order_relaxed);
    size_t start = k % n;
    for (size_t i = 0; i < n; i++) {
        size_t j = start + i < n ? start + i : start + i - n;
        if (c[j].usable)
            return (int)j;
    }
    return -1;
}

/* ---- smooth weighted round robin -------------------------------------- */

/* No state to use: the heaviest usable candidate (first on ties). */
static int heaviest(const struct sg_candidate *c, size_t n) {
    int best = -1;
    for (size_t i = 0; i < n; i++)
        if (c[i].usable && (best < 0 || weight_of(&c[i]) > weight_of(&c[best])))
            best = (int)i;
    return best;
}

/* Each pick adds every usable candidate's weight to its current weight,
 * takes the largest current weight (the first on ties) and subtracts the
 * usable total from it: over total picks each candidate is chosen weight
 * times, interleaved (5:1:1 gives a a b a c a a). Unusable candidates keep
 * their current weight until they come back. */
int sg_balance_weighted(struct sg_balancer *b, bool backup, const struct sg_candidate *c,
                        size_t n) {
    if (b == NULL)
        return heaviest(c, n);
    struct group *g = &b->groups[backup ? 1 : 0];
    pthread_mutex_lock(&b->lock);
    if (g->ncur != n) {
        /* The caller's list does not match the pool (should not happen):
         * start over with fresh state of the right size. */
        int64_t *cur = n ? calloc(n, sizeof(*cur)) : NULL;
        if (n != 0 && cur == NULL) {
            pthread_mutex_unlock(&b->lock);
            return heaviest(c, n);
        }
        free(g->cur);
        g->cur = cur;
        g->ncur = n;
    }
    int64_t total = 0;
    int best = -1;
    for (size_t i = 0; i < n; i++) {
        if (!c[i].usable)
            continue;
        int64_t w = weight_of(&c[i]);
        g->cur[i] += w;
        total += w;
        if (best < 0 || g->cur[i] > g->cur[best])
            best = (int)i;
    }
    if (best >= 0)
        g->cur[best] -= total;
    pthread_mutex_unlock(&b->lock);
    return best;
}

/* ---- least connections ------------------------------------------------ */

/* The usable candidate with the fewest in flight per unit of weight; among
 * equals, the (rnd mod count)-th, so that idle servers share the load
 * instead of the first one taking every request. */
int sg_balance_least_conn(const struct sg_candidate *c, size_t n, uint64_t rnd) {
    int best = -1;
    size_t ties = 0;
    for (size_t i = 0; i < n; i++) {
        if (!c[i].usable)
            continue;
        int cmp = best < 0 ? -1 : load_cmp(&c[i], &c[best]);
        if (cmp < 0) {
            best = (int)i;
            ties = 1;
        } else if (cmp == 0) {
            ties++;
        }
    }
    if (ties <= 1)
        return best;
    size_t k = (size_t)(rnd % ties);
    for (size_t i = (size_t)best; i < n; i++) {
        if (c[i].usable && load_cmp(&c[i], &c[best]) == 0 && k-- == 0)
            return (int)i;
    }
    return best; /* not reached */
}

/* ---- power of two choices --------------------------------------------- */

/* Index of the k-th usable candidate (k < number usable). */
static int nth_usable(const struct sg_candidate *c, size_t n, size_t k) {
    for (size_t i = 0; i < n; i++)
        if (c[i].usable && k-- == 0)
            return (int)i;
    return -1;
}

/* Two distinct usable candidates drawn from rnd (low and high halves); the
 * one with fewer in flight per unit of weight wins, the first drawn on a
 * tie. Cheap, and avoids least_conn's herd onto one server when the
 * in-flight counts are stale. */
int sg_balance_p2c(const struct sg_candidate *c, size_t n, uint64_t rnd) {
    size_t m = 0;
    int only = -1;
    for (size_t i = 0; i < n; i++) {
        if (c[i].usable) {
            m++;
            only = (int)i;
        }
    }
    if (m <= 1)
        return only;
    size_t a = (size_t)((uint32_t)rnd % m);
    size_t b = (size_t)((uint32_t)(rnd >> 32) % (m - 1));
    if (b >= a)
        b++;
    int ia = nth_usable(c, n, a);
    int ib = nth_usable(c, n, b);
    if (ia < 0 || ib < 0)
        return ia < 0 ? ib : ia;
    return load_cmp(&c[ib], &c[ia]) < 0 ? ib : ia;
}

/* ---- consistent hashing ----------------------------------------------- */

static int point_cmp(const void *pa, const void *pb) {
    const struct ring_point *a = pa, *b = pb;
    if (a->pos != b->pos)
        return a->pos < b->pos ? -1 : 1;
    return a->idx < b->idx ? -1 : a->idx > b->idx;
}

/* Builds the ring of servers[0..n): server i gets per_weight * weight points
 * at sg_hash64("<text>#<j>"), so a server's points depend only on its
 * address and weight, not on the other servers: adding or removing one moves
 * only the keys that land on its points. Returns 0 or -1 (out of memory). */
static int ring_build(struct ring *r, const struct sg_server *servers, size_t n) {
    r->pts = NULL;
    r->n = 0;
    r->ncand = n;
    uint64_t total_w = 0;
    for (size_t i = 0; i < n; i++)
        total_w += servers[i].weight ? servers[i].weight : 1;
    if (total_w == 0)
        return 0;
    uint64_t per_weight = MAX_RING_POINTS / total_w;
    if (per_weight > VNODES_PER_WEIGHT)
        per_weight = VNODES_PER_WEIGHT;
    if (per_weight < 1)
        per_weight = 1;
    size_t npts = (size_t)(per_weight * total_w);
    r->pts = malloc(npts * sizeof(*r->pts));
    if (r->pts == NULL)
        return -1;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *text = servers[i].text ? servers[i].text : "";
        uint64_t base = fnv1a(FNV_OFFSET, text, strlen(text));
        base = fnv1a(base, "#", 1);
        uint64_t cnt = per_weight * (servers[i].weight ? servers[i].weight : 1);
        for (uint64_t j = 0; j < cnt; j++) {
            char digits[24];
            size_t d = sizeof(digits);
            uint64_t v = j;
            do {
                digits[--d] = (char)('0' + v % 10);
                v /= 10;
            } while (v != 0);
            r->pts[k].pos = sg_mix64(fnv1a(base, digits + d, sizeof(digits) - d));
            r->pts[k].idx = (uint32_t)i;
            k++;
        }
    }
    qsort(r->pts, k, sizeof(*r->pts), point_cmp);
    r->n = k;
    return 0;
}

/* The owner of key_hash: the first point at or after it (wrapping), walking
 * on to the next point of a usable candidate. The ring holds the configured
 * weights; c[].weight (slow start) is ignored so that keys do not move while
 * a server ramps up. Without a ring (or with a list that does not match it)
 * falls back to key_hash mod n, walking on. */
int sg_balance_hash(const struct sg_balancer *b, bool backup, uint64_t key_hash,
                    const struct sg_candidate *c, size_t n) {
    bool any = false;
    for (size_t i = 0; i < n && !any; i++)
        any = c[i].usable;
    if (!any)
        return -1;
    const struct group *g = b ? &b->groups[backup ? 1 : 0] : NULL;
    if (g == NULL || g->ring.n == 0 || g->ring.ncand != n) {
        size_t start = (size_t)(key_hash % n);
        for (size_t i = 0; i < n; i++) {
            size_t j = (start + i) % n;
            if (c[j].usable)
                return (int)j;
        }
        return -1;
    }
    const struct ring_point *pts = g->ring.pts;
    size_t lo = 0, hi = g->ring.n; /* first pos >= key_hash in [lo, hi) */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (pts[mid].pos < key_hash)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (size_t i = 0; i < g->ring.n; i++) {
        size_t p = lo + i < g->ring.n ? lo + i : lo + i - g->ring.n;
        uint32_t idx = pts[p].idx;
        if (idx < n && c[idx].usable)
            return (int)idx;
    }
    return -1; /* not reached: some candidate is usable and owns points */
}

/* ---- the per-pool state ------------------------------------------------ */

static int group_init(struct group *g, const struct sg_server *servers, size_t n) {
    g->ncur = n;
    g->cur = NULL;
    if (n != 0) {
        g->cur = calloc(n, sizeof(*g->cur));
        if (g->cur == NULL)
            return -1;
    }
    return ring_build(&g->ring, servers, n);
}

/* Returns a balancer owned by the caller (free it with sg_balancer_free),
 * or NULL if pool is NULL or inconsistent, or memory ran out. */
struct sg_balancer *sg_balancer_new(const struct sg_pool *pool) {
    if (pool == NULL || pool->nprimary > pool->nservers ||
        (pool->nservers != 0 && pool->servers == NULL))
        return NULL;
    struct sg_balancer *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return NULL;
    if (pthread_mutex_init(&b->lock, NULL) != 0) {
        free(b);
        return NULL;
    }
    if (group_init(&b->groups[0], pool->servers, pool->nprimary) != 0 ||
        group_init(&b->groups[1], pool->servers ? pool->servers + pool->nprimary : NULL,
                   pool->nservers - pool->nprimary) != 0) {
        sg_balancer_free(b);
        return NULL;
    }
    return b;
}

/* NULL is ignored. */
void sg_balancer_free(struct sg_balancer *b) {
    if (b == NULL)
        return;
    for (int i = 0; i < 2; i++) {
        free(b->groups[i].cur);
        free(b->groups[i].ring.pts);
    }
    pthread_mutex_destroy(&b->lock);
    free(b);
}
