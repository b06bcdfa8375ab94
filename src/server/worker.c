/*
 * Worker threads and the process around them. Each worker runs one libuv
 * loop with its own SO_REUSEPORT listening socket per listen address (the
 * kernel spreads connections across them), its own client and upstream
 * connections and its own free lists; nothing on the request path is shared
 * but a few atomics.
 *
 * The main thread talks to workers only through commands (a new config
 * snapshot with its listening sockets, stop, force) set under a mutex and
 * signalled with uv_async_send. Listening sockets are created and bound on
 * the main thread, so a bad address is reported before anything changes.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "proxy/proxy.h"
#include "cache/cache.h"
#include "cache/fill.h"
#include "cache/refresh.h"
#include "redis/redis.h"
#include "stats/accesslog.h"
#include "stats/stats.h"
#include "server/server.h"

#define SWEEP_MS 100

static struct {
    uv_loop_t *main_loop;
    uv_async_t done_async; /* a worker finished */
    void (*all_done)(void);
    struct sg_worker *workers;
    unsigned nworkers;
    struct sg_config *cfg; /* the config the workers run (main's reference) */
    _Atomic unsigned finished;
} proc;

/* Creates a listening socket for l. Returns the fd, or -1 with msg set. */
static int open_listen_socket(const struct sg_listen *l, char *msg, size_t msglen) {
    int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(msg, msglen, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) {
        snprintf(msg, msglen, "SO_REUSEPORT: %s", strerror(errno));
        close(fd);
        return -1;
    }
    if (l->addr.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&l->addr, l->addrlen) != 0 || listen(fd, 4096) != 0) {
        snprintf(msg, msglen, "%s", strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static void on_connection(uv_stream_t *s, int status) {
    struct sg_listener *l = s->data;
    if (status < 0) {
        sg_log_warn("accept on %s: %s", l->text, uv_strerror(status));
        return;
    }
    sg_conn_accept(l);
}

static void listener_closed(uv_handle_t *h) {
    struct sg_listener *l = h->data;
    free(l->text);
    free(l);
}

static struct sg_listener *listener_open(struct sg_worker *w, const char *text, int fd) {
    struct sg_listener *l = sg_xcalloc(1, sizeof(*l));
    l->w = w;
    l->text = sg_xstrdup(text);
    uv_tcp_init(&w->loop, &l->tcp);
    l->tcp.data = l;
    int r = uv_tcp_open(&l->tcp, fd);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&l->tcp, 4096, on_connection);
    if (r != 0) {
        sg_log_error("worker %u: listen on %s: %s", w->index, text, uv_strerror(r));
        uv_close((uv_handle_t *)&l->tcp, listener_closed);
        return NULL;
    }
    return l;
}

static void close_listeners(struct sg_worker *w) {
    for (size_t i = 0; i < w->nlisteners; i++)
        uv_close((uv_handle_t *)&w->listeners[i]->tcp, listener_closed);
    free(w->listeners);
    w->listeners = NULL;
    w->nlisteners = 0;
}

/* Swaps in a new config: keeps listeners whose address stayed, opens the
 * new ones (fds[i] >= 0), closes the ones that went away. */
static void apply_config(struct sg_worker *w, struct sg_config *cfg, int *fds) {
    struct sg_listener **next = sg_xcalloc(cfg->nlisten, sizeof(*next));
    size_t n = 0;
    for (size_t i = 0; i < cfg->nlisten; i++) {
        struct sg_listener *l = NULL;
        if (fds[i] < 0) {
            for (size_t j = 0; j < w->nlisteners; j++) {
                if (w->listeners[j] && strcmp(w->listeners[j]->text, cfg->listen[i].text) == 0) {
                    l = w->listeners[j];
                    w->listeners[j] = NULL;
                    break;
                }
            }
        } else if (!w->draining) {
            l = listener_open(w, cfg->listen[i].text, fds[i]);
        } else {
            close(fds[i]);
        }
        if (l)
            next[n++] = l;
    }
    for (size_t j = 0; j < w->nlisteners; j++)
        if (w->listeners[j])
            uv_close((uv_handle_t *)&w->listeners[j]->tcp, listener_closed);
    free(w->listeners);
    w->listeners = next;
    w->nlisteners = n;
    struct sg_config *old = w->cfg;
    w->cfg = cfg;
    sg_config_unref(old);
}

static void close_walk(uv_handle_t *h, void *arg) {
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

void sg_worker_maybe_finish(struct sg_worker *w) {
    if (!w->draining || w->finished || w->nconns_total > 0)
        return;
    sg_upstream_close_idle(w);
    if (w->nupstreams > 0)
        return;
    w->finished = true;
    sg_cache_refresh_stop_all(w);      /* background cache refreshes end with the worker */
    sg_alog_flush(w->index, &w->loop); /* the last lines (the loop runs until written) */
    /* From now on the main thread must not signal us: our async handle and
     * loop are going away. */
    uv_mutex_lock(&w->cmd_lock);
    w->exited = true;
    uv_mutex_unlock(&w->cmd_lock);
    uv_close((uv_handle_t *)&w->async, NULL);
    uv_close((uv_handle_t *)&w->sweep, NULL);
    if (w->redis) {
        sg_redis_free(w->redis); /* no connection is left to wait for an answer */
        w->redis = NULL;
    }
    uv_close((uv_handle_t *)&w->waiting_check, NULL);
    uv_close((uv_handle_t *)&w->wait_check, NULL);
}

static void start_draining(struct sg_worker *w) {
    if (w->draining)
        return;
    w->draining = true;
    close_listeners(w);
    sg_conn_close_idle(w);
    /* Connections waiting for a first request with nothing received. */
    struct sg_list *head = &w->conns[SG_CONN_HEAD];
    for (struct sg_list *it = head->next, *next; it != head; it = next) {
        next = it->next;
        struct sg_conn *c = sg_container_of(it, struct sg_conn, link);
        if (!c->rbuf || c->rbuf->start == c->rbuf->end)
            sg_conn_close(c);
    }
    sg_upstream_close_idle(w);
    sg_worker_maybe_finish(w);
}

static void force_close(struct sg_worker *w) {
    for (int s = 0; s < SG_CONN_STATE_COUNT; s++) {
        struct sg_list *head = &w->conns[s];
        for (struct sg_list *it = head->next, *next; it != head; it = next) {
            next = it->next;
            sg_conn_close(sg_container_of(it, struct sg_conn, link));
        }
    }
    sg_worker_maybe_finish(w);
}

static void on_command(uv_async_t *a) {
    struct sg_worker *w = a->data;
    if (atomic_exchange(&w->cache_wake, false))
        sg_cache_worker_wake(w);
    uv_mutex_lock(&w->cmd_lock);
    struct sg_config *cfg = w->cmd_cfg;
    int *fds = w->cmd_fds;
    bool stop = w->cmd_stop, force = w->cmd_force;
    w->cmd_cfg = NULL;
    w->cmd_fds = NULL;
    uv_mutex_unlock(&w->cmd_lock);
    if (cfg) {
        apply_config(w, cfg, fds);
        free(fds);
    }
    if (stop && !w->finished)
        start_draining(w);
    if (force && !w->finished)
        force_close(w);
}

static void on_sweep(uv_timer_t *t) {
    struct sg_worker *w = t->data;
    uint64_t now = uv_now(&w->loop);
    sg_conn_sweep(w, now);
    sg_upstream_sweep(w, now);
    /* the gauges the metrics scrape reads */
    uint32_t clients[4] = {
        w->nconns[SG_CONN_HEAD],
        w->nconns[SG_CONN_IDLE],
        w->nconns[SG_CONN_PROXY] + w->nconns[SG_CONN_TUNNEL] + w->nconns[SG_CONN_WAIT] +
            w->nconns[SG_CONN_FILL],
        w->nconns[SG_CONN_CLOSING],
    };
    uint32_t idle = 0;
    for (uint32_t i = 0; i < w->ntargets; i++)
        if (w->targets[i])
            idle += w->targets[i]->nidle;
    sg_stats_publish(w->stats, clients, w->nupstreams > idle ? w->nupstreams - idle : 0, idle);
    sg_alog_flush(w->index, &w->loop);
}

struct sg_target *sg_worker_target(struct sg_worker *w, uint32_t id) {
    if (id >= w->ntargets) {
        uint32_t n = id + 16;
        struct sg_target **t = realloc(w->targets, n * sizeof(*t));
        if (!t)
            abort();
        memset(t + w->ntargets, 0, (n - w->ntargets) * sizeof(*t));
        w->targets = t;
        w->ntargets = n;
    }
    if (!w->targets[id]) {
        struct sg_target *t = sg_xcalloc(1, sizeof(*t));
        sg_list_init(&t->idle);
        w->targets[id] = t;
    }
    return w->targets[id];
}

/* xorshift128+: request ids, not secrets. */
uint64_t sg_worker_random(struct sg_worker *w) {
    uint64_t s1 = w->rng[0];
    const uint64_t s0 = w->rng[1];
    w->rng[0] = s0;
    s1 ^= s1 << 23;
    w->rng[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return w->rng[1] + s0;
}

static void worker_main(void *arg) {
    struct sg_worker *w = arg;
    uv_run(&w->loop, UV_RUN_DEFAULT);
    /* Everything is closed; let close callbacks run, then tidy up. */
    uv_walk(&w->loop, close_walk, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&w->loop) != 0)
        sg_log_warn("worker %u: loop not empty at exit", w->index);
    sg_proxy_worker_cleanup(w);
    sg_buf_thread_cleanup();
    atomic_fetch_add(&proc.finished, 1);
    uv_async_send(&proc.done_async);
}

static void on_worker_done(uv_async_t *a) {
    (void)a;
    /* The handle stays open until sg_server_cleanup has joined the threads:
     * a worker may still be inside uv_async_send when the count is full. */
    if (atomic_load(&proc.finished) == proc.nworkers && proc.all_done) {
        void (*cb)(void) = proc.all_done;
        proc.all_done = NULL;
        cb();
    }
}

/* Opens cfg's listen sockets for every worker: fds[w * nlisten + i].
 * keep_old: addresses the running config already listens on get -1. */
static int *open_all(struct sg_config *cfg, const struct sg_config *old) {
    size_t n = cfg->nlisten;
    int *fds = sg_xmalloc(sizeof(int) * n * proc.nworkers);
    for (size_t i = 0; i < n * proc.nworkers; i++)
        fds[i] = -1;
    for (size_t i = 0; i < n; i++) {
        bool kept = false;
        for (size_t j = 0; old && j < old->nlisten; j++)
            if (strcmp(old->listen[j].text, cfg->listen[i].text) == 0)
                kept = true;
        if (kept)
            continue;
        for (unsigned k = 0; k < proc.nworkers; k++) {
            char msg[256];
            int fd = open_listen_socket(&cfg->listen[i], msg, sizeof(msg));
            if (fd < 0) {
                sg_log_error("cannot listen on %s: %s", cfg->listen[i].text, msg);
                for (size_t x = 0; x < n * proc.nworkers; x++)
                    if (fds[x] >= 0)
                        close(fds[x]);
                free(fds);
                return NULL;
            }
            fds[k * n + i] = fd;
        }
    }
    return fds;
}

/* A cache fill finished with waiters on worker idx (any thread). */
static void cache_wake(unsigned idx) {
    if (idx >= proc.nworkers)
        return;
    struct sg_worker *w = &proc.workers[idx];
    atomic_store(&w->cache_wake, true);
    uv_mutex_lock(&w->cmd_lock);
    if (!w->exited)
        uv_async_send(&w->async);
    uv_mutex_unlock(&w->cmd_lock);
}

int sg_server_start(uv_loop_t *main_loop, struct sg_config *cfg, void (*all_done)(void)) {
    proc.main_loop = main_loop;
    proc.all_done = all_done;
    proc.nworkers = cfg->workers;
    proc.workers = sg_xcalloc(proc.nworkers, sizeof(*proc.workers));
    int *fds = open_all(cfg, NULL);
    if (!fds) {
        free(proc.workers);
        proc.workers = NULL;
        return -1;
    }
    sg_cache_fill_wake = cache_wake;
    uv_async_init(main_loop, &proc.done_async, on_worker_done);
    uv_unref((uv_handle_t *)&proc.done_async);
    proc.cfg = sg_config_ref(cfg);
    for (unsigned k = 0; k < proc.nworkers; k++) {
        struct sg_worker *w = &proc.workers[k];
        w->index = k;
        w->stats = sg_stats_worker(k);
        uv_loop_init(&w->loop);
        uv_mutex_init(&w->cmd_lock);
        for (int s = 0; s < SG_CONN_STATE_COUNT; s++)
            sg_list_init(&w->conns[s]);
        if (getrandom(w->rng, sizeof(w->rng), 0) != sizeof(w->rng) ||
            (w->rng[0] | w->rng[1]) == 0) {
            w->rng[0] = 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid();
            w->rng[1] = 0xbf58476d1ce4e5b9ull + k;
        }
        uv_async_init(&w->loop, &w->async, on_command);
        w->async.data = w;
        sg_list_init(&w->waiting);
        uv_check_init(&w->loop, &w->waiting_check);
        uv_check_init(&w->loop, &w->wait_check);
        w->wait_check.data = w;
        w->waiting_check.data = w;
        uv_timer_init(&w->loop, &w->sweep);
        w->sweep.data = w;
        uv_timer_start(&w->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
        w->cfg = sg_config_ref(cfg);
        if (cfg->redis.enabled)
            w->redis = sg_redis_new(&w->loop, cfg->redis.host, cfg->redis.port, cfg->redis.prefix);
        int *mine = sg_xmalloc(sizeof(int) * cfg->nlisten);
        memcpy(mine, fds + k * cfg->nlisten, sizeof(int) * cfg->nlisten);
        /* No listeners yet: apply_config opens them all. */
        struct sg_config *again = sg_config_ref(cfg);
        apply_config(w, again, mine);
        free(mine);
    }
    free(fds);
    for (unsigned k = 0; k < proc.nworkers; k++) {
        if (uv_thread_create(&proc.workers[k].thread, worker_main, &proc.workers[k]) != 0) {
            sg_log_error("cannot start worker thread %u", k);
            abort();
        }
    }
    for (size_t i = 0; i < cfg->nlisten; i++)
        sg_log_info("listening on %s (%u workers)", cfg->listen[i].text, proc.nworkers);
    return 0;
}

int sg_server_reload(struct sg_config *cfg) {
    if (cfg->workers != proc.nworkers)
        sg_log_warn("reload: workers %u -> %u takes effect only after a restart", proc.nworkers,
                    cfg->workers);
    int *fds = open_all(cfg, proc.cfg);
    if (!fds) {
        sg_log_error("reload failed; keeping the running config");
        sg_config_unref(cfg);
        return -1;
    }
    for (unsigned k = 0; k < proc.nworkers; k++) {
        struct sg_worker *w = &proc.workers[k];
        int *mine = sg_xmalloc(sizeof(int) * cfg->nlisten);
        memcpy(mine, fds + k * cfg->nlisten, sizeof(int) * cfg->nlisten);
        uv_mutex_lock(&w->cmd_lock);
        if (w->cmd_cfg) {
            /* An earlier reload not yet picked up: this one replaces it, and
             * takes over the sockets it opened for addresses both share. */
            struct sg_config *prev = w->cmd_cfg;
            for (size_t i = 0; i < cfg->nlisten; i++) {
                for (size_t j = 0; mine[i] < 0 && j < prev->nlisten; j++) {
                    if (w->cmd_fds[j] >= 0 &&
                        strcmp(prev->listen[j].text, cfg->listen[i].text) == 0) {
                        mine[i] = w->cmd_fds[j];
                        w->cmd_fds[j] = -1;
                    }
                }
            }
            for (size_t j = 0; j < prev->nlisten; j++)
                if (w->cmd_fds[j] >= 0)
                    close(w->cmd_fds[j]);
            free(w->cmd_fds);
            sg_config_unref(prev);
        }
        w->cmd_cfg = sg_config_ref(cfg);
        w->cmd_fds = mine;
        if (!w->exited)
            uv_async_send(&w->async);
        uv_mutex_unlock(&w->cmd_lock);
    }
    free(fds);
    sg_config_unref(proc.cfg);
    proc.cfg = cfg;
    return 0;
}

/* Tells every worker still running to stop (and, with force, to close what
 * it still has). The send happens under the lock, so it never reaches a
 * worker whose loop is gone. */
static void command_stop(bool force) {
    for (unsigned k = 0; k < proc.nworkers; k++) {
        struct sg_worker *w = &proc.workers[k];
        uv_mutex_lock(&w->cmd_lock);
        w->cmd_stop = true;
        w->cmd_force |= force;
        if (!w->exited)
            uv_async_send(&w->async);
        uv_mutex_unlock(&w->cmd_lock);
    }
}

void sg_server_stop(void) {
    command_stop(false);
}

void sg_server_force(void) {
    command_stop(true);
}

void sg_server_cleanup(void) {
    for (unsigned k = 0; k < proc.nworkers; k++) {
        struct sg_worker *w = &proc.workers[k];
        uv_thread_join(&w->thread);
        uv_mutex_destroy(&w->cmd_lock);
        sg_config_unref(w->cfg);
        sg_config_unref(w->cmd_cfg);
        free(w->cmd_fds);
        for (uint32_t i = 0; i < w->ntargets; i++)
            free(w->targets[i]);
        free(w->targets);
        free(w->listeners);
    }
    free(proc.workers);
    proc.workers = NULL;
    uv_close((uv_handle_t *)&proc.done_async, NULL);
    sg_config_unref(proc.cfg);
    proc.cfg = NULL;
}
