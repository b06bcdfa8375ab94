/*
 * The response cache on the request path (see cache.h).
 *
 * A request for a key goes: L1 (fresh: a hit, answered here) -> the fill
 * table (someone is already fetching the key: wait for them, or take the
 * stale copy at once when stale-while-revalidate allows) -> as the fill's
 * leader, L2 in Redis when configured (the connection waits, bounded by
 * l2_timeout) -> the backend, with the response collected as it streams to
 * the client and stored at its end. Waiting connections sit in state
 * SG_CONN_FILL with their head still in rbuf; a finished fill wakes their
 * worker, which processes the head again from the start (routing, rate
 * limits with the saved verdict, then here), now finding the entry.
 */
#include "cache/cache.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache/fill.h"
#include "cache/l2.h"
#include "cache/object.h"
#include "cache/refresh.h"
#include "core/log.h"
#include "pool/balance.h"
#include "redis/redis.h"
#include "stats/accesslog.h"

/* A request's cache state from its miss to the end of its exchange. */
struct sg_cache_req {
    struct sg_cache_fill *fill;   /* joined or led (a reference), or NULL */
    struct sg_cache_entry *stale; /* the expired copy, for stale-if-error (a reference) */
    struct sg_route_cache rc;     /* the route's settings (vary not kept) */
    uint64_t version;             /* store version taken when the miss started */
    uint64_t l2_ttl_ms;
    uint64_t max_object;
    uint64_t deadline; /* while waiting in SG_CONN_FILL */
    char *req_head;    /* a copy of the request head: the response's Vary and decision */
    size_t req_head_len;
    char *obj; /* the object being collected: head, then body */
    size_t obj_len, obj_cap, obj_head_len;
    char *okey; /* the key the object goes under (the secondary one with Vary), or NULL */
    size_t okey_len;
    struct sg_http_chunked ch; /* decoding a chunked body for the object */
    char *inval_path;          /* an unsafe method: the path invalidated on success */
    size_t inval_len;
    uint8_t leader;     /* leads fill */
    uint8_t bypass;     /* the fill failed or the wait timed out: straight to the backend */
    uint8_t fill_error; /* the fill failed because the backend did */
    uint8_t storing;
    uint8_t l2_wait; /* the leader waits for its Redis lookup */
    uint32_t key_len;
    uint32_t pkey_len; /* the primary key's length (key may be a secondary one) */
    char key[];
};

static struct sg_cache_store *store;

/* ---- counters: one slot per worker, written by it alone ----------------- */

#define NSLOTS 64
struct slot {
    _Alignas(64) _Atomic uint64_t v[13];
};
static struct slot slots[NSLOTS];
enum {
    C_HITS,
    C_MISSES,
    C_STALE,
    C_COALESCED,
    C_NOT_MODIFIED,
    C_PASSES,
    C_STORES,
    C_STORE_FAILURES,
    C_INVALIDATIONS,
    C_L2_HITS,
    C_L2_MISSES,
    C_L2_ERRORS,
    C_L2_STORES
};

static void count(unsigned worker, int what) {
    _Atomic uint64_t *p = &slots[worker % NSLOTS].v[what];
    atomic_store_explicit(p, atomic_load_explicit(p, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

/* Counters bumped off the workers (main thread: purges) use slot 63 with
 * an atomic add, since two threads may share it. */
static void count_shared(int what) {
    atomic_fetch_add_explicit(&slots[NSLOTS - 1].v[what], 1, memory_order_relaxed);
}

void sg_cache_counters(struct sg_cache_counters *out) {
    uint64_t sum[13] = {0};
    for (size_t i = 0; i < NSLOTS; i++)
        for (size_t k = 0; k < 13; k++)
            sum[k] += atomic_load_explicit(&slots[i].v[k], memory_order_relaxed);
    out->hits = sum[C_HITS];
    out->misses = sum[C_MISSES];
    out->stale = sum[C_STALE];
    out->coalesced = sum[C_COALESCED];
    out->not_modified = sum[C_NOT_MODIFIED];
    out->passes = sum[C_PASSES];
    out->stores = sum[C_STORES];
    out->store_failures = sum[C_STORE_FAILURES];
    out->invalidations = sum[C_INVALIDATIONS];
    out->l2_hits = sum[C_L2_HITS];
    out->l2_misses = sum[C_L2_MISSES];
    out->l2_errors = sum[C_L2_ERRORS];
    out->l2_stores = sum[C_L2_STORES];
}

/* ---- process ------------------------------------------------------------- */

int sg_cache_init(const struct sg_config *cfg) {
    store = sg_cache_store_new(cfg->cache.memory_bytes);
    return store ? 0 : -ENOMEM;
}

void sg_cache_reconfigure(const struct sg_config *cfg) {
    if (store)
        sg_cache_store_set_cap(store, cfg->cache.memory_bytes);
}

void sg_cache_shutdown(void) {
    sg_cache_store_free(store);
    store = NULL;
}

struct sg_cache_store *sg_cache_store(void) {
    return store;
}

/* ---- helpers --------------------------------------------------------------- */

/* The path part of a key (up to its query or the first newline). */
static size_t key_path_len(const char *key, size_t len) {
    size_t i = 0;
    while (i < len && key[i] != '?' && key[i] != '\n')
        i++;
    return i;
}

static uint64_t group_of(const char *path, size_t len) {
    return sg_hash64(path, len) | 1;
}

static void unref_entry(void *e) {
    sg_cache_entry_unref(e);
}

/* An entry for the object data[0..len) under key, aged age_ms already. */
static struct sg_cache_entry *make_entry(const char *key, size_t klen, const char *data, size_t len,
                                         uint64_t now, uint64_t age_ms, uint64_t version) {
    struct sg_cache_obj o;
    if (!sg_cache_obj_view(data, len, &o))
        return NULL;
    uint64_t window = o.m.swr_ms > o.m.sie_ms ? o.m.swr_ms : o.m.sie_ms;
    if (age_ms >= o.m.ttl_ms + window)
        return NULL;
    uint64_t stored = now > age_ms ? now - age_ms : 0;
    uint64_t expires = stored + o.m.ttl_ms;
    struct sg_cache_entry *e = sg_cache_entry_new(sg_hash64(key, klen), key, klen, data, len,
                                                  stored, expires, expires + window);
    if (e) {
        e->group = group_of(key, key_path_len(key, klen));
        e->version = version;
    }
    return e;
}

static struct sg_cache_req *req_new(const char *key, size_t klen, size_t pklen,
                                    const struct sg_route *route, const struct sg_config *cfg) {
    struct sg_cache_req *q = sg_xcalloc(1, sizeof(*q) + klen);
    memcpy(q->key, key, klen);
    q->key_len = (uint32_t)klen;
    q->pkey_len = (uint32_t)pklen;
    q->rc = route->cache;
    q->rc.vary = NULL;
    q->rc.nvary = 0;
    q->l2_ttl_ms = cfg->redis.enabled ? cfg->cache.l2_ttl_ms : 0;
    q->max_object = cfg->cache.max_object_size;
    return q;
}

bool sg_cache_req_storing(const struct sg_cache_req *q) {
    return q->storing;
}

void sg_cache_req_free(struct sg_cache_req *q) {
    if (q == NULL)
        return;
    if (q->fill) {
        if (q->leader)
            sg_cache_fill_finish(q->fill, q->fill_error ? SG_FILL_ERROR : SG_FILL_FAILED, NULL);
        sg_cache_fill_unref(q->fill);
    }
    sg_cache_entry_unref(q->stale);
    free(q->req_head);
    free(q->obj);
    free(q->okey);
    free(q->inval_path);
    free(q);
}

const char *sg_cache_req_head(const struct sg_cache_req *q, size_t *len) {
    *len = q->req_head_len;
    return q->req_head;
}

void sg_cache_conn_drop(struct sg_conn *c) {
    sg_cache_req_free(c->creq);
    c->creq = NULL;
}

/* Writes e's object on c. Returns false when c failed (and was closed). */
static bool write_entry(struct sg_conn *c, const struct sg_http_msg *msg, struct sg_cache_entry *e,
                        const char *x_cache, const char *extra, size_t extra_len, bool keep,
                        bool http10, bool head_only) {
    struct sg_cache_obj o;
    if (!sg_cache_obj_view(e->data, e->len, &o)) {
        sg_conn_close(c);
        return false;
    }
    uint64_t now = uv_now(&c->w->loop);
    struct sg_cache_serve s = {
        .x_cache = x_cache,
        .age_s = (o.m.age0_ms + (now > e->stored_ms ? now - e->stored_ms : 0)) / 1000,
        .head_only = head_only,
        .not_modified = msg && sg_cache_not_modified(&o, msg),
        .keep_alive = keep,
        .client_http10 = http10,
        .extra = extra,
        .extra_len = extra_len,
    };
    if (s.not_modified)
        count(c->w->index, C_NOT_MODIFIED);
    if (c->alog)
        c->alog->cache = x_cache;
    struct sg_buf *b = sg_buf_get_size(sg_cache_serve_head_size(&o, &s) + SG_BUF_HOLD);
    int n = sg_cache_serve_head(&o, &s, b->data, b->cap - SG_BUF_HOLD);
    if (n < 0) {
        sg_buf_put(b);
        sg_conn_close(c);
        return false;
    }
    b->end = (uint32_t)n;
    uv_buf_t bufs[2] = {uv_buf_init(b->data, b->end), uv_buf_init(NULL, 0)};
    unsigned nb = 1;
    if (!head_only && !s.not_modified && o.m.body_len) {
        bufs[nb++] = uv_buf_init((char *)o.body, (unsigned)o.m.body_len);
        sg_cache_entry_ref(e);
        sg_buf_hold(b, unref_entry, e); /* a queued write keeps the body alive */
    }
    int r = sg_conn_write(c, bufs, nb, b, NULL);
    sg_conn_count(c, s.not_modified ? 304 : o.m.status);
    if (r != 1)
        sg_buf_put(b);
    if (r < 0) {
        sg_conn_close(c);
        return false;
    }
    return true;
}

/* Answers the head at the front of c->rbuf with e. */
static enum sg_cache_verdict answer(struct sg_conn *c, const struct sg_http_msg *msg,
                                    size_t head_len, struct sg_cache_entry *e, const char *x_cache,
                                    const char *extra, size_t extra_len) {
    bool keep = msg->keep_alive && !c->w->draining && !c->peer_eof;
    bool ok = write_entry(c, msg, e, x_cache, extra, extra_len, keep, msg->minor == 0,
                          msg->method_id == SG_METHOD_HEAD);
    sg_cache_conn_drop(c);
    if (!ok)
        return SG_CACHE_DONE;
    c->rbuf->start += (uint32_t)head_len;
    c->scanned = 0;
    if (keep)
        return SG_CACHE_ANSWERED;
    sg_conn_request_done(c, false);
    return SG_CACHE_DONE;
}

/* Whether entry e (found for a request, or given by a fill) is the variant
 * this request asks for: its key equals the request's primary key, or the
 * secondary key built from e's vary names. */
static bool variant_matches(const struct sg_cache_entry *e, const char *pkey, size_t plen,
                            const struct sg_http_msg *msg, char *scratch, size_t cap) {
    struct sg_cache_obj o;
    if (!sg_cache_obj_view(e->data, e->len, &o))
        return false;
    if (o.m.vary_len == 0 || (o.m.flags & SG_OBJ_VARY_DESC))
        return e->key_len == plen && memcmp(e->key, pkey, plen) == 0;
    memcpy(scratch, pkey, plen);
    int n = sg_cache_key_vary(scratch, plen, cap, o.vary, o.m.vary_len, msg);
    return n >= 0 && (size_t)n == e->key_len && memcmp(e->key, scratch, (size_t)n) == 0;
}

static bool is_desc(const struct sg_cache_entry *e) {
    struct sg_cache_obj o;
    return sg_cache_obj_view(e->data, e->len, &o) && (o.m.flags & SG_OBJ_VARY_DESC);
}

/* Looks key up in L1, following a Vary descriptor to the variant (whose
 * key is then left in key, with *klen updated). */
static struct sg_cache_entry *lookup(char *key, size_t *klen, size_t cap,
                                     const struct sg_http_msg *msg, uint64_t now) {
    struct sg_cache_entry *e = sg_cache_get(store, sg_hash64(key, *klen), key, *klen, now);
    if (e == NULL || !is_desc(e))
        return e;
    struct sg_cache_obj o;
    sg_cache_obj_view(e->data, e->len, &o);
    int n = sg_cache_key_vary(key, *klen, cap, o.vary, o.m.vary_len, msg);
    sg_cache_entry_unref(e);
    if (n < 0)
        return NULL;
    *klen = (size_t)n;
    return sg_cache_get(store, sg_hash64(key, *klen), key, *klen, now);
}

static _Thread_local char keybuf[SG_CACHE_KEY_MAX];
static _Thread_local char scratch[SG_CACHE_KEY_MAX];

/* Puts c in SG_CONN_FILL until deadline (its head stays in rbuf). */
static enum sg_cache_verdict wait_fill(struct sg_conn *c, uint64_t deadline) {
    sg_conn_read_stop(c);
    sg_conn_set_state(c, SG_CONN_FILL);
    c->deadline = deadline;
    c->creq->deadline = deadline;
    return SG_CACHE_WAIT;
}

/* ---- the Redis tier lookup ---------------------------------------------- */

struct l2_lookup {
    struct sg_cache_fill *fill;
    uv_loop_t *loop;
    unsigned worker;
    uint64_t version;
};

static void on_l2(void *arg, int status, const char *data, size_t len, uint64_t age_ms) {
    struct l2_lookup *l = arg;
    struct sg_cache_fill *f = l->fill;
    struct sg_cache_entry *e = NULL;
    if (status == 1)
        e = make_entry(f->key, f->key_len, data, len, uv_now(l->loop), age_ms, l->version);
    if (e) {
        count(l->worker, C_L2_HITS);
        sg_cache_put(store, e);
        sg_cache_fill_finish(f, SG_FILL_DONE, e);
        sg_cache_entry_unref(e);
    } else {
        if (status >= 0)
            count(l->worker, C_L2_MISSES);
        else
            count(l->worker, C_L2_ERRORS);
        if (status < 0 && status != -ECANCELED)
            sg_log_debug("cache: Redis tier lookup failed (%s): from the backend",
                         status == -ETIMEDOUT ? "over l2_timeout" : strerror(-status));
        atomic_store(&f->l2, 2);
        sg_cache_fill_poke(f);
    }
    sg_cache_fill_unref(f);
    free(l);
}

/* ---- the request --------------------------------------------------------- */

static bool has_field(const struct sg_http_msg *m, const char *name, size_t len) {
    for (uint32_t i = 0; i < m->num_headers; i++)
        if (sg_http_name_eq(&m->headers[i], name, len))
            return true;
    return false;
}

/* Keeps a copy of the request head for the response's decision. */
static void keep_head(struct sg_cache_req *q, const struct sg_conn *c, size_t head_len) {
    if (q->req_head)
        return;
    q->req_head = sg_xmalloc(head_len);
    memcpy(q->req_head, c->rbuf->data + c->rbuf->start, head_len);
    q->req_head_len = head_len;
}

static enum sg_cache_verdict unsafe_request(struct sg_conn *c, const char *target,
                                            size_t target_len, const struct sg_route *route) {
    size_t plen = key_path_len(target, target_len);
    struct sg_cache_req *q = req_new("", 0, 0, route, c->w->cfg);
    q->inval_path = sg_xmalloc(plen + 1);
    memcpy(q->inval_path, target, plen);
    q->inval_path[plen] = '\0';
    q->inval_len = plen;
    c->creq = q;
    return SG_CACHE_PASS;
}

enum sg_cache_verdict sg_cache_request(struct sg_conn *c, const struct sg_http_msg *msg,
                                       size_t head_len, const struct sg_route *route,
                                       const char *target, size_t target_len, const char *host,
                                       size_t host_len, const char *extra, size_t extra_len) {
    struct sg_worker *w = c->w;
    const struct sg_config *cfg = w->cfg;
    unsigned wi = w->index;
    int m = msg->method_id;
    if (m != SG_METHOD_GET && m != SG_METHOD_HEAD) {
        sg_cache_conn_drop(c);
        if (m == SG_METHOD_POST || m == SG_METHOD_PUT || m == SG_METHOD_PATCH ||
            m == SG_METHOD_DELETE)
            return unsafe_request(c, target, target_len, route);
        return SG_CACHE_PASS;
    }
    if (store == NULL || msg->body != SG_BODY_NONE || has_field(msg, "range", 5)) {
        sg_cache_conn_drop(c);
        count(wi, C_PASSES);
        return SG_CACHE_PASS;
    }
    struct sg_cc reqcc;
    sg_cc_init(&reqcc);
    if (route->cache.client_cache_control)
        sg_cc_of(&reqcc, msg, true);
    int kl = sg_cache_key(keybuf, sizeof(keybuf), target, target_len, host, host_len, &route->cache,
                          msg);
    if (kl < 0) {
        sg_cache_conn_drop(c);
        count(wi, C_PASSES);
        return SG_CACHE_PASS;
    }
    size_t klen = (size_t)kl, pklen = (size_t)kl;
    uint64_t now = uv_now(&w->loop);
    bool head_only = m == SG_METHOD_HEAD;
    struct sg_cache_req *q = c->creq;

    /* Back from a wait. */
    if (q && q->fill) {
        struct sg_cache_fill *f = q->fill;
        int st = sg_cache_fill_state(f);
        if (st == SG_FILL_DONE && !is_desc(f->entry) &&
            variant_matches(f->entry, keybuf, pklen, msg, scratch, sizeof(scratch))) {
            count(wi, q->leader ? C_HITS : C_COALESCED);
            return answer(c, msg, head_len, f->entry, "HIT", extra, extra_len);
        }
        if (q->leader && st == SG_FILL_PENDING) {
            if (atomic_load(&f->l2) == 1 && now < q->deadline)
                return wait_fill(c, q->deadline); /* woken for another key's sake */
            keep_head(q, c, head_len);
            count(wi, C_MISSES);
            return SG_CACHE_PASS; /* the Redis tier missed: on to the backend */
        }
        if (st == SG_FILL_PENDING && now < q->deadline)
            return wait_fill(c, q->deadline);
        /* Timed out, failed, or another variant: look again; after a
         * failure or a timeout, go to the backend alone. */
        bool again = st == SG_FILL_DONE;
        bool err = st == SG_FILL_ERROR;
        sg_cache_conn_drop(c);
        q = NULL;
        if (!again) {
            q = req_new(keybuf, klen, pklen, route, cfg);
            q->bypass = 1;
            q->fill_error = err;
            c->creq = q;
        }
    } else if (q) {
        sg_cache_conn_drop(c); /* left from an earlier pass that did not wait */
        q = NULL;
    }

    struct sg_cache_entry *e = lookup(keybuf, &klen, sizeof(keybuf), msg, now);
    struct sg_cache_entry *stale = NULL;
    if (e) {
        struct sg_cache_obj o;
        sg_cache_obj_view(e->data, e->len, &o);
        uint64_t age_ms = o.m.age0_ms + (now - e->stored_ms);
        bool fresh = now < e->expires_ms;
        if (fresh && reqcc.no_cache)
            fresh = false;
        if (fresh && reqcc.max_age >= 0 && age_ms / 1000 > (uint64_t)reqcc.max_age)
            fresh = false;
        if (fresh && reqcc.min_fresh >= 0 && e->expires_ms - now < (uint64_t)reqcc.min_fresh * 1000)
            fresh = false;
        if (fresh) {
            sg_cache_conn_drop(c);
            count(wi, C_HITS);
            enum sg_cache_verdict v = answer(c, msg, head_len, e, "HIT", extra, extra_len);
            sg_cache_entry_unref(e);
            return v;
        }
        /* Expired: kept as a stale copy unless must-revalidate. Fresh but
         * refused by the client's Cache-Control: not a copy it accepts. */
        if (now >= e->expires_ms && !(o.m.flags & SG_OBJ_NO_STALE))
            stale = e;
        else
            sg_cache_entry_unref(e);
    }
    if (reqcc.only_if_cached) {
        /* RFC 9111 5.2.1.7: a stored response or 504, never the backend. */
        sg_cache_entry_unref(stale);
        sg_cache_conn_drop(c);
        count(wi, C_MISSES);
        return SG_CACHE_UNSATISFIED;
    }
    if (q && q->bypass) {
        struct sg_cache_obj o;
        if (stale && q->fill_error && sg_cache_obj_view(stale->data, stale->len, &o) &&
            now < stale->expires_ms + o.m.sie_ms) {
            count(wi, C_STALE);
            enum sg_cache_verdict v = answer(c, msg, head_len, stale, "STALE", extra, extra_len);
            sg_cache_entry_unref(stale);
            return v;
        }
        q->stale = stale;
        keep_head(q, c, head_len);
        count(wi, C_MISSES);
        return SG_CACHE_PASS;
    }
    if (head_only || reqcc.no_store) {
        /* Not a fill: a HEAD answer has no body to store. */
        count(wi, C_MISSES);
        q = req_new(keybuf, klen, pklen, route, cfg);
        q->stale = stale;
        keep_head(q, c, head_len);
        c->creq = q;
        return SG_CACHE_PASS;
    }
    bool leader = false;
    struct sg_cache_fill *f =
        sg_cache_fill_join(sg_hash64(keybuf, klen), keybuf, klen, wi, &leader);
    q = req_new(keybuf, klen, pklen, route, cfg);
    c->creq = q;
    q->fill = f;
    q->leader = leader && f;
    if (f && !leader) {
        struct sg_cache_obj o;
        if (stale && sg_cache_obj_view(stale->data, stale->len, &o) &&
            now < stale->expires_ms + o.m.swr_ms) {
            /* Someone refreshes it: the stale copy now (stale-while-revalidate). */
            count(wi, C_STALE);
            enum sg_cache_verdict v = answer(c, msg, head_len, stale, "STALE", extra, extra_len);
            sg_cache_entry_unref(stale);
            return v;
        }
        sg_cache_entry_unref(stale);
        return wait_fill(c, now + route->cache.lock_timeout_ms);
    }
    q->version = sg_cache_version(store);
    struct sg_cache_obj so;
    if (f && stale && sg_cache_obj_view(stale->data, stale->len, &so) &&
        now < stale->expires_ms + so.m.swr_ms) {
        /* stale-while-revalidate: the stale copy now, and the gateway
         * fetches a fresh one in the background (leading the fill). */
        keep_head(q, c, head_len);
        c->creq = NULL;
        count(wi, C_STALE);
        enum sg_cache_verdict v = answer(c, msg, head_len, stale, "STALE", extra, extra_len);
        sg_cache_entry_unref(stale);
        sg_cache_refresh_start(w, route->read_pool ? route->read_pool : route->pool, q);
        return v;
    }
    q->stale = stale;
    if (f && w->redis && q->l2_ttl_ms && sg_redis_connected(w->redis)) {
        struct l2_lookup *l = sg_xmalloc(sizeof(*l));
        l->fill = f;
        sg_cache_fill_ref(f);
        l->loop = &w->loop;
        l->worker = wi;
        l->version = q->version;
        atomic_store(&f->l2, 1);
        size_t plen = key_path_len(keybuf, klen);
        if (sg_cache_l2_get(w->redis, keybuf, klen, keybuf, plen, cfg->cache.l2_timeout_ms, on_l2,
                            l) == 0)
            return wait_fill(c, now + cfg->cache.l2_timeout_ms + route->cache.lock_timeout_ms);
        atomic_store(&f->l2, 2);
        sg_cache_fill_unref(f);
        free(l);
        count(wi, C_L2_ERRORS);
    }
    keep_head(q, c, head_len);
    count(wi, C_MISSES);
    return SG_CACHE_PASS;
}

void sg_cache_worker_wake(struct sg_worker *w) {
    struct sg_list *head = &w->conns[SG_CONN_FILL];
    uint32_t n = w->nconns[SG_CONN_FILL];
    /* Each waiting connection once; one still waiting goes back to the tail. */
    for (uint32_t i = 0; i < n && !sg_list_empty(head); i++) {
        struct sg_conn *c = sg_container_of(head->next, struct sg_conn, link);
        if (c->closed) {
            sg_list_remove(&c->link);
            continue;
        }
        struct sg_cache_fill *f = c->creq ? c->creq->fill : NULL;
        bool ready = f == NULL || sg_cache_fill_state(f) != SG_FILL_PENDING ||
                     (c->creq->leader && atomic_load(&f->l2) != 1);
        if (!ready) {
            sg_list_remove(&c->link);
            sg_list_insert_tail(head, &c->link);
            continue;
        }
        sg_conn_resume(c);
    }
}

void sg_cache_wait_timeout(struct sg_conn *c) {
    if (c->creq)
        c->creq->deadline = 0;
    sg_conn_resume(c);
}

enum sg_cache_verdict sg_cache_fallback(struct sg_conn *c, int status) {
    struct sg_cache_req *q = c->creq;
    if (q == NULL || status < 500 || q->stale == NULL)
        return SG_CACHE_PASS;
    struct sg_cache_obj o;
    uint64_t now = uv_now(&c->w->loop);
    if (!sg_cache_obj_view(q->stale->data, q->stale->len, &o) ||
        now >= q->stale->expires_ms + o.m.sie_ms)
        return SG_CACHE_PASS;
    /* The head is still at the front of rbuf: parse it again for its
     * framing (it was a GET or HEAD without a body). */
    struct sg_http_header hdrs[SG_MAX_HEADERS];
    struct sg_http_msg msg;
    memset(&msg, 0, sizeof(msg));
    msg.headers = hdrs;
    msg.max_headers = SG_MAX_HEADERS;
    size_t scanned = 0;
    struct sg_http_limits lim = {.max_request_line = c->rbuf->end,
                                 .max_header_bytes = c->rbuf->end};
    int r = sg_http_parse_request(c->rbuf->data + c->rbuf->start, c->rbuf->end - c->rbuf->start,
                                  &scanned, &msg, &lim);
    if (r <= 0)
        return SG_CACHE_PASS;
    q->fill_error = 1;
    count(c->w->index, C_STALE);
    sg_cache_entry_ref(q->stale);
    struct sg_cache_entry *e = q->stale;
    enum sg_cache_verdict v = answer(c, &msg, (size_t)r, e, "STALE", NULL, 0);
    sg_cache_entry_unref(e);
    return v;
}

/* ---- the response ------------------------------------------------------------ */

bool sg_cache_stale_usable(struct sg_cache_req *q, struct sg_worker *w) {
    q->fill_error = 1;
    if (q->stale == NULL)
        return false;
    struct sg_cache_obj o;
    return sg_cache_obj_view(q->stale->data, q->stale->len, &o) &&
           uv_now(&w->loop) < q->stale->expires_ms + o.m.sie_ms;
}

void sg_cache_serve_stale(struct sg_conn *c, struct sg_cache_req *q, bool keep, bool http10,
                          bool head_only) {
    count(c->w->index, C_STALE);
    struct sg_cache_entry *e = q->stale;
    q->stale = NULL;
    sg_cache_req_free(q);
    bool ok = write_entry(c, NULL, e, "STALE", NULL, 0, keep && !c->w->draining, http10, head_only);
    sg_cache_entry_unref(e);
    if (ok)
        sg_conn_request_done(c, keep);
}

bool sg_cache_on_response(struct sg_cache_req *q, struct sg_worker *w,
                          const struct sg_http_msg *resp) {
    if (q->inval_path) {
        if (resp->status >= 200 && resp->status < 400) {
            count(w->index, C_INVALIDATIONS);
            sg_cache_invalidate_path(w->redis, q->l2_ttl_ms, q->inval_path, q->inval_len);
        }
        return false;
    }
    if (resp->status >= 500 && sg_cache_stale_usable(q, w))
        return true;
    if (!q->leader || q->req_head == NULL)
        return false;
    struct sg_http_header hdrs[SG_MAX_HEADERS];
    struct sg_http_msg req;
    memset(&req, 0, sizeof(req));
    req.headers = hdrs;
    req.max_headers = SG_MAX_HEADERS;
    size_t scanned = 0;
    struct sg_http_limits lim = {.max_request_line = (uint32_t)q->req_head_len,
                                 .max_header_bytes = (uint32_t)q->req_head_len};
    if (sg_http_parse_request(q->req_head, q->req_head_len, &scanned, &req, &lim) <= 0)
        return false;
    struct sg_cc reqcc;
    sg_cc_init(&reqcc);
    if (q->rc.client_cache_control)
        sg_cc_of(&reqcc, &req, true);
    struct sg_cache_decision d;
    sg_cache_decide(&req, &reqcc, resp, &q->rc, (int64_t)time(NULL), &d);
    if (!d.store) {
        sg_log_debug("cache: %.*s not stored: %s", (int)key_path_len(q->key, q->key_len), q->key,
                     d.why);
        return false;
    }
    if (resp->body == SG_BODY_LENGTH && resp->content_length > q->max_object)
        return false;
    char *head;
    size_t hlen;
    if (sg_cache_obj_head(resp, &d, &head, &hlen) < 0)
        return false;
    struct sg_cache_meta m;
    memcpy(&m, head, sizeof(m));
    const char *names = head + sizeof(m) + m.reason_len + m.fields_len;
    if (m.vary_len) {
        memcpy(scratch, q->key, q->pkey_len);
        int n = sg_cache_key_vary(scratch, q->pkey_len, sizeof(scratch), names, m.vary_len, &req);
        if (n < 0) {
            free(head);
            return false;
        }
        q->okey = sg_xmalloc((size_t)n);
        memcpy(q->okey, scratch, (size_t)n);
        q->okey_len = (size_t)n;
    }
    q->obj = head;
    q->obj_len = q->obj_cap = q->obj_head_len = hlen;
    if (resp->body == SG_BODY_CHUNKED)
        sg_http_chunked_init(&q->ch, q->max_object, 65536);
    q->storing = 1;
    return false;
}

static void append(struct sg_cache_req *q, const char *p, size_t n) {
    if (q->obj_len - q->obj_head_len + n > q->max_object) {
        q->storing = 0; /* too large: passes uncached */
        return;
    }
    if (q->obj_len + n > q->obj_cap) {
        size_t cap = q->obj_cap * 2 > q->obj_len + n ? q->obj_cap * 2 : q->obj_len + n + 4096;
        char *o = realloc(q->obj, cap);
        if (o == NULL) {
            q->storing = 0;
            return;
        }
        q->obj = o;
        q->obj_cap = cap;
    }
    memcpy(q->obj + q->obj_len, p, n);
    q->obj_len += n;
}

void sg_cache_on_body(struct sg_cache_req *q, const char *p, size_t n, bool raw_chunked) {
    if (!q->storing || n == 0)
        return;
    if (!raw_chunked) {
        append(q, p, n);
        return;
    }
    size_t off = 0;
    while (off < n && q->storing && !q->ch.done) {
        const char *data;
        size_t dlen;
        ssize_t r = sg_http_chunked_decode(&q->ch, p + off, n - off, &data, &dlen);
        if (r < 0) {
            q->storing = 0;
            return;
        }
        if (dlen)
            append(q, data, dlen);
        off += (size_t)r;
        if (r == 0)
            break;
    }
}

void sg_cache_on_done(struct sg_cache_req *q, struct sg_worker *w) {
    if (!q->storing || q->fill == NULL)
        return;
    q->storing = 0;
    uint64_t now = uv_now(&w->loop);
    sg_cache_obj_set_body_len(q->obj, q->obj_len - q->obj_head_len);
    const char *okey = q->okey ? q->okey : q->key;
    size_t oklen = q->okey ? q->okey_len : q->pkey_len;
    struct sg_cache_entry *e = make_entry(okey, oklen, q->obj, q->obj_len, now, 0, q->version);
    if (e == NULL) {
        count(w->index, C_STORE_FAILURES);
        return;
    }
    int r = sg_cache_put(store, e);
    if (r != -ESTALE)
        count(w->index, r == 0 ? C_STORES : C_STORE_FAILURES);
    size_t plen = key_path_len(q->key, q->key_len);
    /* Purged while it was on its way: the client still gets it (it asked
     * before the purge), but neither tier keeps it. */
    bool current = r != -ESTALE && !(r != 0 && sg_cache_outdated(store, e));
    struct sg_cache_meta m;
    memcpy(&m, q->obj, sizeof(m));
    uint64_t window = m.swr_ms > m.sie_ms ? m.swr_ms : m.sie_ms;
    uint64_t l2_ttl = m.ttl_ms + window < q->l2_ttl_ms ? m.ttl_ms + window : q->l2_ttl_ms;
    bool l2 = current && w->redis && q->l2_ttl_ms && sg_redis_connected(w->redis);
    if (q->okey && current) {
        char *desc;
        size_t dlen;
        if (sg_cache_obj_desc(q->obj, q->obj_head_len, &desc, &dlen) == 0) {
            struct sg_cache_entry *d =
                make_entry(q->key, q->pkey_len, desc, dlen, now, 0, q->version);
            if (d) {
                sg_cache_put(store, d);
                sg_cache_entry_unref(d);
            }
            if (l2)
                sg_cache_l2_put(w->redis, q->key, q->pkey_len, q->key, plen, desc, dlen, l2_ttl);
            free(desc);
        }
    }
    if (l2) {
        sg_cache_l2_put(w->redis, okey, oklen, q->key, plen, q->obj, q->obj_len, l2_ttl);
        count(w->index, C_L2_STORES);
    }
    if (q->leader) {
        sg_cache_fill_finish(q->fill, SG_FILL_DONE, e);
        q->leader = 0;
    }
    sg_cache_entry_unref(e);
}

/* ---- invalidation ----------------------------------------------------------- */

void sg_cache_invalidate_path(struct sg_redis *redis, uint64_t l2_ttl_ms, const char *path,
                              size_t len) {
    if (store)
        sg_cache_invalidate_group(store, group_of(path, len));
    if (redis && l2_ttl_ms)
        sg_cache_l2_invalidate(redis, SG_CACHE_INVAL_PATH, path, len, l2_ttl_ms, NULL, NULL);
}

size_t sg_cache_purge_local(char kind, const char *arg, size_t len) {
    if (store == NULL)
        return 0;
    count_shared(C_INVALIDATIONS);
    switch (kind) {
    case 'p':
        sg_cache_invalidate_group(store, group_of(arg, len));
        return 0;
    case 'k':
        return sg_cache_remove_prefix(store, arg, len);
    case 'a': {
        struct sg_cache_stats st;
        sg_cache_stats(store, &st);
        sg_cache_invalidate_all(store);
        sg_cache_clear(store);
        return st.entries;
    }
    default:
        return 0;
    }
}
