/*
 * Request counters and the Prometheus exposition (see stats.h and
 * docs/metrics.md).
 */
#include "stats/stats.h"

#include <dirent.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cache/cache.h"
#include "cache/store.h"
#include "core/buf.h"
#include "core/version.h"
#include "pool/state.h"

/* Request duration buckets (ms): the Prometheus client defaults. */
static const uint64_t bounds_ms[] = {5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000};
static const char *const bounds_s[] = {"0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
                                       "0.5",   "1",    "2.5",   "5",    "10"};
#define NBOUNDS  (sizeof(bounds_ms) / sizeof(bounds_ms[0]))
#define NBUCKETS (NBOUNDS + 1) /* the last: +Inf */

struct series_ctr {
    _Atomic uint64_t code[5]; /* 1xx .. 5xx */
    _Atomic uint64_t bucket[NBUCKETS];
    _Atomic uint64_t sum_ns;
    _Atomic uint64_t reject[3]; /* enum sg_stats_reject */
};

struct sg_stats_worker {
    _Atomic uint32_t clients[4];
    _Atomic uint32_t up_active, up_idle;
    struct series_ctr s[SG_STATS_MAX_SERIES];
};

struct series {
    char *route, *pool;
};

/* The registry: written by the main thread only; read by it too. */
static struct series registry[SG_STATS_MAX_SERIES];
static uint32_t nseries;
static struct sg_stats_worker *workers[SG_STATS_MAX_WORKERS];
static unsigned nworkers;

static void bump(_Atomic uint64_t *p, uint64_t by) {
    atomic_store_explicit(p, atomic_load_explicit(p, memory_order_relaxed) + by,
                          memory_order_relaxed);
}

static uint32_t series_id(const char *route, const char *pool) {
    for (uint32_t i = 0; i < nseries; i++)
        if (strcmp(registry[i].route, route) == 0 && strcmp(registry[i].pool, pool) == 0)
            return i;
    if (nseries == SG_STATS_MAX_SERIES)
        return SG_STATS_MAX_SERIES - 1;
    registry[nseries].route = sg_xstrdup(route);
    registry[nseries].pool = sg_xstrdup(pool);
    return nseries++;
}

void sg_stats_assign(struct sg_config *cfg) {
    if (nseries == 0)
        series_id("none", "none"); /* SG_STATS_NONE */
    for (size_t i = 0; i < cfg->nroutes; i++) {
        struct sg_route *r = &cfg->routes[i];
        char label[512];
        if (r->name) {
            snprintf(label, sizeof(label), "%s", r->name);
        } else {
            snprintf(label, sizeof(label), "%s%s", r->host ? r->host : "",
                     r->path_prefix ? r->path_prefix : "/");
            /* the same match twice (other methods, say): told apart */
            for (size_t k = 0; k < i; k++) {
                const struct sg_route *o = &cfg->routes[k];
                if (!o->name && ((o->host == NULL) == (r->host == NULL)) &&
                    (!o->host || strcmp(o->host, r->host) == 0) &&
                    ((o->path_prefix == NULL) == (r->path_prefix == NULL)) &&
                    (!o->path_prefix || strcmp(o->path_prefix, r->path_prefix) == 0)) {
                    size_t n = strlen(label);
                    snprintf(label + n, sizeof(label) - n, "#%zu", i);
                    break;
                }
            }
        }
        r->stats_id = series_id(label, r->pool->name);
        r->stats_read_id = r->read_pool ? series_id(label, r->read_pool->name) : r->stats_id;
    }
}

struct sg_stats_worker *sg_stats_worker(unsigned index) {
    if (index >= SG_STATS_MAX_WORKERS)
        index = SG_STATS_MAX_WORKERS - 1;
    if (workers[index] == NULL) {
        workers[index] = sg_xcalloc(1, sizeof(struct sg_stats_worker));
        if (index + 1 > nworkers)
            nworkers = index + 1;
    }
    return workers[index];
}

void sg_stats_request(struct sg_stats_worker *sw, uint32_t series, int status,
                      uint64_t duration_ns) {
    if (sw == NULL || series >= SG_STATS_MAX_SERIES)
        return;
    struct series_ctr *s = &sw->s[series];
    int cls = status / 100 - 1;
    if (cls < 0)
        cls = 0;
    if (cls > 4)
        cls = 4;
    bump(&s->code[cls], 1);
    uint64_t ms = duration_ns / 1000000;
    size_t b = 0;
    while (b < NBOUNDS && ms >= bounds_ms[b])
        b++;
    /* bucket b holds durations in [bounds[b-1], bounds[b]): ms < bounds_ms[b] */
    bump(&s->bucket[b], 1);
    bump(&s->sum_ns, duration_ns);
}

void sg_stats_reject(struct sg_stats_worker *sw, uint32_t series, enum sg_stats_reject why) {
    if (sw == NULL || series >= SG_STATS_MAX_SERIES)
        return;
    bump(&sw->s[series].reject[why], 1);
}

void sg_stats_publish(struct sg_stats_worker *sw, const uint32_t clients[4], uint32_t up_active,
                      uint32_t up_idle) {
    for (int i = 0; i < 4; i++)
        atomic_store_explicit(&sw->clients[i], clients[i], memory_order_relaxed);
    atomic_store_explicit(&sw->up_active, up_active, memory_order_relaxed);
    atomic_store_explicit(&sw->up_idle, up_idle, memory_order_relaxed);
}

void sg_stats_labels(uint32_t series, const char **route, const char **pool) {
    if (series >= SG_STATS_MAX_SERIES || registry[series].route == NULL) {
        *route = *pool = "none";
        return;
    }
    *route = registry[series].route;
    *pool = registry[series].pool;
}

void sg_stats_cleanup(void) {
    for (unsigned i = 0; i < SG_STATS_MAX_WORKERS; i++) {
        free(workers[i]);
        workers[i] = NULL;
    }
    nworkers = 0;
    for (uint32_t i = 0; i < nseries; i++) {
        free(registry[i].route);
        free(registry[i].pool);
    }
    nseries = 0;
}

/* ---- the exposition ------------------------------------------------------ */

static uint64_t sum(uint32_t series, size_t off) {
    uint64_t n = 0;
    for (unsigned w = 0; w < nworkers; w++)
        if (workers[w])
            n += atomic_load_explicit((_Atomic uint64_t *)((char *)&workers[w]->s[series] + off),
                                      memory_order_relaxed);
    return n;
}

#define FIELD(f) offsetof(struct series_ctr, f)

static void family(struct sg_text *t, const char *name, const char *type, const char *help) {
    sg_text_printf(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void labels2(struct sg_text *t, const char *k1, const char *v1, const char *k2,
                    const char *v2) {
    sg_text_printf(t, "{%s=\"", k1);
    sg_text_label(t, v1);
    if (k2) {
        sg_text_printf(t, "\",%s=\"", k2);
        sg_text_label(t, v2);
    }
    sg_text_puts(t, "\"");
}

/* Series to show: those of the running config, and any that counted. */
static void shown(const struct sg_config *cfg, bool *show) {
    memset(show, 0, sizeof(bool) * SG_STATS_MAX_SERIES);
    for (size_t i = 0; cfg && i < cfg->nroutes; i++) {
        show[cfg->routes[i].stats_id % SG_STATS_MAX_SERIES] = true;
        show[cfg->routes[i].stats_read_id % SG_STATS_MAX_SERIES] = true;
    }
    for (uint32_t i = 0; i < nseries; i++)
        for (int k = 0; k < 5 && !show[i]; k++)
            show[i] = sum(i, FIELD(code[k])) != 0;
}

static void render_requests(struct sg_text *t, const bool *show) {
    static const char *const cls[] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
    family(t, "scalegate_http_requests_total", "counter",
           "Requests answered, by route, pool and status class.");
    for (uint32_t i = 0; i < nseries; i++) {
        if (!show[i])
            continue;
        for (int k = 0; k < 5; k++) {
            sg_text_puts(t, "scalegate_http_requests_total{route=\"");
            sg_text_label(t, registry[i].route);
            sg_text_puts(t, "\",pool=\"");
            sg_text_label(t, registry[i].pool);
            sg_text_printf(t, "\",code=\"%s\"} %llu\n", cls[k],
                           (unsigned long long)sum(i, FIELD(code[k])));
        }
    }
    family(t, "scalegate_http_request_duration_seconds", "histogram",
           "Time from a request head being complete to the end of its answer.");
    for (uint32_t i = 0; i < nseries; i++) {
        if (!show[i])
            continue;
        uint64_t cum = 0;
        for (size_t b = 0; b < NBUCKETS; b++) {
            cum += sum(i, FIELD(bucket[b]));
            sg_text_puts(t, "scalegate_http_request_duration_seconds_bucket");
            labels2(t, "route", registry[i].route, "pool", registry[i].pool);
            sg_text_printf(t, ",le=\"%s\"} %llu\n", b < NBOUNDS ? bounds_s[b] : "+Inf",
                           (unsigned long long)cum);
        }
        sg_text_puts(t, "scalegate_http_request_duration_seconds_sum");
        labels2(t, "route", registry[i].route, "pool", registry[i].pool);
        sg_text_printf(t, "} %.6f\n", (double)sum(i, FIELD(sum_ns)) / 1e9);
        sg_text_puts(t, "scalegate_http_request_duration_seconds_count");
        labels2(t, "route", registry[i].route, "pool", registry[i].pool);
        sg_text_printf(t, "} %llu\n", (unsigned long long)cum);
    }
}

/* Counters by route only: the series of one route (several pools) summed. */
static void render_by_route(struct sg_text *t, const bool *show, const char *name,
                            const char *reason, size_t off) {
    for (uint32_t i = 0; i < nseries; i++) {
        if (!show[i])
            continue;
        bool seen = false;
        for (uint32_t j = 0; j < i && !seen; j++)
            seen = show[j] && strcmp(registry[j].route, registry[i].route) == 0;
        if (seen)
            continue;
        uint64_t n = 0;
        for (uint32_t j = i; j < nseries; j++)
            if (show[j] && strcmp(registry[j].route, registry[i].route) == 0)
                n += sum(j, off);
        sg_text_printf(t, "%s", name);
        labels2(t, "route", registry[i].route, reason ? "reason" : NULL, reason);
        sg_text_printf(t, "} %llu\n", (unsigned long long)n);
    }
}

static void render_rejects(struct sg_text *t, const bool *show) {
    family(t, "scalegate_ratelimit_rejected_total", "counter",
           "Requests answered 429 by a rate limit.");
    render_by_route(t, show, "scalegate_ratelimit_rejected_total", NULL,
                    FIELD(reject[SG_STATS_RATE_LIMITED]));
    family(t, "scalegate_shed_total", "counter",
           "Requests answered 503 by the gateway to protect a pool.");
    render_by_route(t, show, "scalegate_shed_total", "p95", FIELD(reject[SG_STATS_SHED_P95]));
    render_by_route(t, show, "scalegate_shed_total", "max_in_flight",
                    FIELD(reject[SG_STATS_SHED_IN_FLIGHT]));
}

static void render_servers(struct sg_text *t, const struct sg_config *cfg) {
    static const struct {
        const char *name, *type, *help;
    } fam[] = {
        {"scalegate_backend_up", "gauge", "1 when the server is usable."},
        {"scalegate_backend_active_connections", "gauge", "Requests in flight to the server."},
        {"scalegate_backend_requests_total", "counter", "Responses the server gave."},
        {"scalegate_backend_failures_total", "counter",
         "Connect failures, resets, timeouts and 5xx answers of the server."},
        {"scalegate_backend_response_duration_seconds", "histogram",
         "Time from the request to the server's first response byte."},
    };
    uint64_t now = sg_state_now();
    for (size_t f = 0; f < sizeof(fam) / sizeof(fam[0]); f++) {
        family(t, fam[f].name, fam[f].type, fam[f].help);
        for (size_t p = 0; cfg && p < cfg->npools; p++) {
            const struct sg_pool *pool = &cfg->pools[p];
            for (size_t i = 0; i < pool->nservers; i++) {
                const struct sg_server *srv = &pool->servers[i];
                struct sg_server_state *st = sg_server_state(srv->id);
                if (st == NULL)
                    continue;
                if (f < 4) {
                    uint64_t v = f == 0   ? sg_server_usable(st, now)
                                 : f == 1 ? atomic_load(&st->inflight)
                                 : f == 2 ? atomic_load(&st->requests)
                                          : atomic_load(&st->failures);
                    sg_text_puts(t, fam[f].name);
                    labels2(t, "pool", pool->name, "server", srv->text);
                    sg_text_printf(t, "} %llu\n", (unsigned long long)v);
                    continue;
                }
                uint64_t b[NBUCKETS] = {0}, count = 0;
                for (unsigned k = 0; k < SG_LATENCY_BUCKETS; k++) {
                    uint64_t n = atomic_load_explicit(&st->latency[k], memory_order_relaxed);
                    uint64_t hi = sg_latency_bound(k);
                    size_t j = 0;
                    while (j < NBOUNDS && hi > bounds_ms[j])
                        j++;
                    b[j] += n;
                    count += n;
                }
                uint64_t cum = 0;
                for (size_t j = 0; j < NBUCKETS; j++) {
                    cum += b[j];
                    sg_text_printf(t, "%s_bucket", fam[f].name);
                    labels2(t, "pool", pool->name, "server", srv->text);
                    sg_text_printf(t, ",le=\"%s\"} %llu\n", j < NBOUNDS ? bounds_s[j] : "+Inf",
                                   (unsigned long long)cum);
                }
                sg_text_printf(t, "%s_sum", fam[f].name);
                labels2(t, "pool", pool->name, "server", srv->text);
                sg_text_printf(t, "} %.3f\n", (double)atomic_load(&st->latency_sum_ms) / 1000.0);
                sg_text_printf(t, "%s_count", fam[f].name);
                labels2(t, "pool", pool->name, "server", srv->text);
                sg_text_printf(t, "} %llu\n", (unsigned long long)count);
            }
        }
    }
}

static void render_conns(struct sg_text *t) {
    static const char *const states[] = {"reading", "idle", "active", "closing"};
    uint64_t c[4] = {0}, act = 0, idle = 0;
    for (unsigned w = 0; w < nworkers; w++) {
        if (!workers[w])
            continue;
        for (int i = 0; i < 4; i++)
            c[i] += atomic_load_explicit(&workers[w]->clients[i], memory_order_relaxed);
        act += atomic_load_explicit(&workers[w]->up_active, memory_order_relaxed);
        idle += atomic_load_explicit(&workers[w]->up_idle, memory_order_relaxed);
    }
    family(t, "scalegate_client_connections", "gauge", "Client connections by state.");
    for (int i = 0; i < 4; i++)
        sg_text_printf(t, "scalegate_client_connections{state=\"%s\"} %llu\n", states[i],
                       (unsigned long long)c[i]);
    family(t, "scalegate_upstream_connections", "gauge", "Connections to backends by state.");
    sg_text_printf(t, "scalegate_upstream_connections{state=\"active\"} %llu\n",
                   (unsigned long long)act);
    sg_text_printf(t, "scalegate_upstream_connections{state=\"idle\"} %llu\n",
                   (unsigned long long)idle);
}

static void render_cache(struct sg_text *t) {
    struct sg_cache_counters k;
    sg_cache_counters(&k);
    struct sg_cache_stats st = {0};
    if (sg_cache_store())
        sg_cache_stats(sg_cache_store(), &st);
    family(t, "scalegate_cache_requests_total", "counter", "Cacheable requests by outcome.");
    const struct {
        const char *r;
        uint64_t v;
    } res[] = {{"hit", k.hits},
               {"miss", k.misses},
               {"stale", k.stale},
               {"coalesced", k.coalesced},
               {"pass", k.passes}};
    for (size_t i = 0; i < 5; i++)
        sg_text_printf(t, "scalegate_cache_requests_total{result=\"%s\"} %llu\n", res[i].r,
                       (unsigned long long)res[i].v);
    family(t, "scalegate_cache_not_modified_total", "counter", "304 answers from the cache.");
    sg_text_printf(t, "scalegate_cache_not_modified_total %llu\n",
                   (unsigned long long)k.not_modified);
    family(t, "scalegate_cache_stores_total", "counter", "Responses stored, by tier.");
    sg_text_printf(t, "scalegate_cache_stores_total{tier=\"memory\"} %llu\n",
                   (unsigned long long)k.stores);
    sg_text_printf(t, "scalegate_cache_stores_total{tier=\"redis\"} %llu\n",
                   (unsigned long long)k.l2_stores);
    family(t, "scalegate_cache_invalidations_total", "counter",
           "Unsafe-method and purge invalidations applied.");
    sg_text_printf(t, "scalegate_cache_invalidations_total %llu\n",
                   (unsigned long long)k.invalidations);
    family(t, "scalegate_cache_entries", "gauge", "Entries in the memory tier.");
    sg_text_printf(t, "scalegate_cache_entries{tier=\"memory\"} %llu\n",
                   (unsigned long long)st.entries);
    family(t, "scalegate_cache_bytes", "gauge", "Bytes held by the memory tier.");
    sg_text_printf(t, "scalegate_cache_bytes{tier=\"memory\"} %llu\n",
                   (unsigned long long)st.bytes);
    family(t, "scalegate_cache_capacity_bytes", "gauge", "The memory tier's cap.");
    sg_text_printf(t, "scalegate_cache_capacity_bytes{tier=\"memory\"} %llu\n",
                   (unsigned long long)st.cap);
    family(t, "scalegate_cache_evictions_total", "counter",
           "Entries pushed out of the memory tier to make room.");
    sg_text_printf(t, "scalegate_cache_evictions_total{tier=\"memory\"} %llu\n",
                   (unsigned long long)st.evictions);
    family(t, "scalegate_cache_redis_requests_total", "counter", "Redis tier lookups by outcome.");
    sg_text_printf(t, "scalegate_cache_redis_requests_total{result=\"hit\"} %llu\n",
                   (unsigned long long)k.l2_hits);
    sg_text_printf(t, "scalegate_cache_redis_requests_total{result=\"miss\"} %llu\n",
                   (unsigned long long)k.l2_misses);
    sg_text_printf(t, "scalegate_cache_redis_requests_total{result=\"error\"} %llu\n",
                   (unsigned long long)k.l2_errors);
}

/* /proc/self: CPU seconds, start time, RSS, open fds. */
static void render_process(struct sg_text *t) {
    double cpu = 0, start = 0, rss = 0;
    long tick = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    if (f) {
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = '\0';
        const char *p = strrchr(buf, ')'); /* after the command name */
        unsigned long long ut = 0, stt = 0, st0 = 0;
        if (p &&
            sscanf(p + 2,
                   "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d "
                   "%*d %*d %llu",
                   &ut, &stt, &st0) == 3 &&
            tick > 0) {
            cpu = (double)(ut + stt) / (double)tick;
            f = fopen("/proc/stat", "r");
            unsigned long long btime = 0;
            while (f && fgets(buf, sizeof(buf), f))
                if (sscanf(buf, "btime %llu", &btime) == 1)
                    break;
            if (f)
                fclose(f);
            start = (double)btime + (double)st0 / (double)tick;
        }
    }
    f = fopen("/proc/self/statm", "r");
    unsigned long long pages = 0;
    if (f) {
        if (fscanf(f, "%*u %llu", &pages) == 1)
            rss = (double)pages * (double)page;
        fclose(f);
    }
    unsigned fds = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        for (struct dirent *e; (e = readdir(d)) != NULL;)
            fds += e->d_name[0] != '.';
        closedir(d);
        fds--; /* the directory's own */
    }
    family(t, "scalegate_process_cpu_seconds_total", "counter",
           "User and system CPU time of the process.");
    sg_text_printf(t, "scalegate_process_cpu_seconds_total %.2f\n", cpu);
    family(t, "scalegate_process_resident_memory_bytes", "gauge", "Resident set size.");
    sg_text_printf(t, "scalegate_process_resident_memory_bytes %.0f\n", rss);
    family(t, "scalegate_process_open_fds", "gauge", "Open file descriptors.");
    sg_text_printf(t, "scalegate_process_open_fds %u\n", fds);
    family(t, "scalegate_process_start_time_seconds", "gauge",
           "Start time of the process, seconds since the epoch.");
    sg_text_printf(t, "scalegate_process_start_time_seconds %.2f\n", start);
}

void sg_stats_render(const struct sg_stats_scrape *sc, struct sg_text *out) {
    static bool show[SG_STATS_MAX_SERIES];
    family(out, "scalegate_build_info", "gauge", "Always 1; the version is a label.");
    sg_text_printf(out, "scalegate_build_info{version=\"%s\"} 1\n", SG_VERSION);
    shown(sc->cfg, show);
    render_requests(out, show);
    render_rejects(out, show);
    render_servers(out, sc->cfg);
    render_conns(out);
    render_cache(out);
    if (sc->scaler)
        sc->scaler(sc->scaler_arg, out);
    render_process(out);
    family(out, "scalegate_redis_up", "gauge", "1 while the Redis link is connected.");
    if (sc->redis_up >= 0) /* no sample without a redis section */
        sg_text_printf(out, "scalegate_redis_up %d\n", sc->redis_up);
}
