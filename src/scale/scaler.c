/*
 * The autoscaler (scaler.h). One `struct spool` per scaled pool name, kept
 * across reloads; its instances on a list; a 100 ms tick for the things
 * that must be quick (an instance passing its first health check, a drain
 * ending, a request waiting for a cold start) and a decision every period.
 *
 * Instance life (process driver):
 *   STARTING  forked (or restarting after a crash), published with health
 *             DOWN; the health checker lifts it UP when its check passes
 *   READY     health UP: counted as capacity
 *   DRAINING  admin DRAINING: no new requests; in-flight ones finish
 *   REMOVED   out of the published snapshot; stopped at the next tick
 *   STOPPING  SIGTERM sent (SIGKILL after stop_grace); freed when it exits
 * With the command driver the orchestrator owns the processes: an instance
 * is STARTING from the first `list` that prints it until its health check
 * passes, READY after, and gone when `list` stops printing it.
 *
 * Metrics: each decision adds every instance's counter deltas (requests,
 * failures, latency buckets) to the pool's running totals, so instances
 * that come and go never make a total go backwards; a ring of totals per
 * decision gives the sliding window. In flight is sampled every tick.
 *
 * Ownership: the scaler owns its spools, a spool its instances, its
 * supervisor, its command runs (struct cmd, freed when their three handles
 * have closed; a run whose spool went away is detached) and its lease.
 * Config strings are borrowed from `loaded`, which the scaler holds a
 * reference on.
 */
#include "scale/scaler.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>

#include "admin/admin.h"
#include "core/intern.h"
#include "core/list.h"
#include "core/log.h"
#include "core/parse.h"
#include "core/text.h"
#include "pool/state.h"
#include "redis/redis.h"
#include "scale/policy.h"
#include "scale/supervisor.h"

#define TICK_MS          100
#define HISTORY_MAX      256
#define RING_MAX         600
#define CMD_OUT_MAX      65536
#define CMD_TIMEOUT_MS   60000
#define LIST_MAX         1000 /* instances a list command may print */
#define REASON_MAX       256
#define P95_MIN_REQUESTS 20 /* fewer in the window: no p95 */
#define ADDR_MAX         64

enum inst_state { I_STARTING = 0, I_READY, I_DRAINING, I_REMOVED, I_STOPPING };
static const char *const inst_state_names[] = {"starting", "ready", "draining", "removed",
                                               "stopping"};

struct spool;

struct inst {
    struct sg_list link;
    struct spool *sp;
    struct sg_instance *proc; /* process driver; NULL with the command driver */
    char addr[ADDR_MAX];
    struct sockaddr_storage sa;
    socklen_t salen;
    uint32_t id; /* sg_intern(addr) */
    struct sg_server_state *st;
    enum inst_state state;
    uint64_t since;   /* uv_now when it entered state */
    uint64_t started; /* uv_now when it (re)started */
    uint64_t last_req, last_fail, last_lat[SG_LATENCY_BUCKETS];
    uint64_t req_base; /* the address's request count when this instance began */
    double cpu;
    uint64_t rss;
    bool listed; /* command driver: printed by the last list */
};

struct sample {
    uint64_t t;
    uint64_t req, fail;
    uint64_t lat[SG_LATENCY_BUCKETS];
};

struct event {
    int64_t wall_ms;
    const char *kind;
    uint32_t from, to;
    char text[REASON_MAX];
};

struct cmd {
    uv_process_t proc;
    uv_pipe_t out;
    uv_timer_t timer;
    struct spool *sp; /* NULL once detached */
    void (*done)(struct spool *sp, struct cmd *c, int status);
    char *buf;
    size_t len;
    int closing; /* handles not yet closed */
    bool exited, eof, finished;
    int status; /* exit status, or -1 (signal, spawn failure, timeout) */
};

struct qticket;

struct spool {
    struct sg_list link;
    struct sg_scaler *s;
    char name[64];
    struct sg_scale_cfg cfg; /* strings borrowed from s->loaded */
    struct sg_scale_targets targets;
    struct sg_scale_limits limits;
    bool autoscale;
    bool gone; /* removed from the config: instances stop, then the spool goes */
    struct sg_scale_state pst;
    struct sg_supervisor *sv;
    struct sg_list insts;
    uint32_t next_port_hint;
    /* metrics */
    uint64_t tot_req, tot_fail, tot_lat[SG_LATENCY_BUCKETS];
    double inflight_acc;
    uint32_t inflight_n;
    double inflight_last;      /* average over the last period, whole pool */
    uint32_t ready_seen;       /* ready count at the last sample */
    uint64_t ready_changed_at; /* uv_now of the sample where it changed */
    struct sample *ring;       /* RING_MAX entries, oldest at head */
    size_t ring_head, ring_len;
    uint64_t last_decide;
    uint64_t last_activity;
    uint64_t demand_seen;
    double mem_total;
    /* decisions */
    struct sg_scale_input in;
    uint32_t desired;
    char reason[REASON_MAX];
    int64_t decided_wall;
    struct event hist[HISTORY_MAX];
    size_t hist_head, hist_len;
    uint64_t scaled_up, scaled_down; /* scale_up / scale_down decisions (metrics) */
    /* command driver */
    struct cmd *list_cmd, *scale_cmd;
    uint64_t last_list;
    bool listed_once;
    uint32_t requested; /* the last count scale_to was run with */
    bool have_requested;
    struct sg_lease *lease;
    uint64_t redis_down_since; /* uv_now when the link was first seen down; 0 = up */
    bool redis_lost;           /* down for three lease periods: deciding locally */
    /* queue depth */
    struct cmd *queue_cmd;
    double queue_depth;
    bool has_queue_value;
    bool queue_pending;
    struct qticket *qticket;  /* the pending LLEN's, or NULL */
    struct sg_pool_state *ps; /* shared runtime state of the pool (demand) */
};

struct sg_scaler {
    uv_loop_t *loop;
    sg_scaler_publish_cb publish;
    void *arg;
    struct sg_config *loaded;
    struct sg_list pools;
    uv_timer_t tick;
    uv_timer_t pub_timer;
    uv_async_t wake;
    bool dirty;
    struct sg_redis *redis;
    uint64_t lease_ttl_ms;
    int closing;
    bool freeing;
    bool shutting; /* sg_scaler_shutdown: instances are stopping, none starts */
    void (*shut_done)(void *);
    void *shut_arg;
};

static struct sg_scaler *the_scaler; /* for the demand hook (one scaler per process) */

static int64_t wall_ms(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static uint32_t count_state(const struct spool *sp, enum inst_state st) {
    uint32_t n = 0;
    for (const struct sg_list *it = sp->insts.next; it != &sp->insts; it = it->next)
        n += sg_container_of(it, const struct inst, link)->state == st;
    return n;
}

static void history(struct spool *sp, const char *kind, uint32_t from, uint32_t to, const char *fmt,
                    ...) __attribute__((format(printf, 5, 6)));
static void history(struct spool *sp, const char *kind, uint32_t from, uint32_t to, const char *fmt,
                    ...) {
    size_t at = (sp->hist_head + sp->hist_len) % HISTORY_MAX;
    if (sp->hist_len == HISTORY_MAX)
        sp->hist_head = (sp->hist_head + 1) % HISTORY_MAX;
    else
        sp->hist_len++;
    struct event *e = &sp->hist[at];
    e->wall_ms = wall_ms();
    e->kind = kind;
    e->from = from;
    e->to = to;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->text, sizeof(e->text), fmt, ap);
    va_end(ap);
}

static void shutdown_check(struct sg_scaler *s);

/* ---- publishing ------------------------------------------------------------ */

static void on_pub_timer(uv_timer_t *t);

static void mark_dirty(struct sg_scaler *s) {
    s->dirty = true;
    if (!s->freeing && !uv_is_active((uv_handle_t *)&s->pub_timer))
        uv_timer_start(&s->pub_timer, on_pub_timer, 0, 0);
}

static bool published(const struct inst *in) {
    return in->state == I_STARTING || in->state == I_READY || in->state == I_DRAINING;
}

/* The snapshot to run: s->loaded with each scaled pool's instances. */
static struct sg_config *derive(struct sg_scaler *s) {
    struct sg_config *c = s->loaded;
    struct sg_pool_servers *over = calloc(c->npools + 1, sizeof(*over));
    struct sg_server **arrays = calloc(c->npools + 1, sizeof(*arrays));
    struct sg_config *out = NULL;
    if (over == NULL || arrays == NULL)
        goto done;
    for (size_t i = 0; i < c->npools; i++) {
        if (!c->pools[i].scale.enabled)
            continue;
        struct spool *sp = NULL;
        for (struct sg_list *it = s->pools.next; it != &s->pools && !sp; it = it->next) {
            struct spool *x = sg_container_of(it, struct spool, link);
            if (!x->gone && strcmp(x->name, c->pools[i].name) == 0)
                sp = x;
        }
        size_t n = 0;
        if (sp)
            for (struct sg_list *it = sp->insts.next; it != &sp->insts; it = it->next)
                n += published(sg_container_of(it, struct inst, link));
        arrays[i] = calloc(n + 1, sizeof(struct sg_server));
        if (arrays[i] == NULL)
            goto done;
        size_t k = 0;
        if (sp) {
            for (struct sg_list *it = sp->insts.next; it != &sp->insts; it = it->next) {
                struct inst *in = sg_container_of(it, struct inst, link);
                if (!published(in))
                    continue;
                struct sg_server *sv = &arrays[i][k++];
                sv->text = in->addr;
                sv->addr = in->sa;
                sv->addrlen = in->salen;
                sv->weight = 1;
                sv->id = in->id;
            }
        }
        over[i] = (struct sg_pool_servers){.set = true, .servers = arrays[i], .n = k};
    }
    out = sg_config_derive(c, over);
done:
    if (arrays)
        for (size_t i = 0; i < c->npools; i++)
            free(arrays[i]);
    free(arrays);
    free(over);
    return out;
}

static void on_pub_timer(uv_timer_t *t) {
    struct sg_scaler *s = t->data;
    if (!s->dirty || s->freeing || s->shutting)
        return;
    struct sg_config *cfg = derive(s);
    if (cfg == NULL) {
        sg_log_error("autoscaler: out of memory publishing instances; retrying");
        uv_timer_start(&s->pub_timer, on_pub_timer, TICK_MS, 0);
        return;
    }
    s->dirty = false;
    s->publish(cfg, s->arg);
}

/* ---- instances ------------------------------------------------------------- */

static struct inst *inst_new(struct spool *sp, const char *addr) {
    struct inst *in = calloc(1, sizeof(*in));
    if (in == NULL)
        return NULL;
    snprintf(in->addr, sizeof(in->addr), "%s", addr);
    if (sg_parse_addr(in->addr, &in->sa, &in->salen) < 0 ||
        (in->id = sg_intern(in->addr)) == UINT32_MAX || !(in->st = sg_server_state(in->id))) {
        free(in);
        return NULL;
    }
    in->sp = sp;
    uint64_t now = uv_now(sp->s->loop);
    in->since = in->started = now;
    /* a fresh record for this address: DOWN until its check passes */
    struct sg_server_state *st = in->st;
    atomic_store(&st->check_ok, 0);
    atomic_store(&st->check_fail, 0);
    atomic_store(&st->consec_errors, 0);
    atomic_store(&st->consec_5xx, 0);
    atomic_store(&st->ejected_until, 0);
    atomic_store(&st->ejections, 0);
    atomic_store(&st->admin, SG_ADMIN_ENABLED);
    atomic_store(&st->health, SG_HEALTH_DOWN);
    atomic_store(&st->fast_check_until, sg_state_now() + sp->cfg.start_timeout_ms);
    in->last_req = in->req_base = atomic_load(&st->requests);
    in->last_fail = atomic_load(&st->failures);
    for (unsigned b = 0; b < SG_LATENCY_BUCKETS; b++)
        in->last_lat[b] = atomic_load(&st->latency[b]);
    sg_list_insert_tail(&sp->insts, &in->link);
    return in;
}

static void inst_free(struct inst *in) {
    sg_list_remove(&in->link);
    free(in);
}

static void set_state(struct inst *in, enum inst_state st) {
    in->state = st;
    in->since = uv_now(in->sp->s->loop);
}

/* Starts one instance of a process-driver pool. */
static bool start_one(struct spool *sp, const char *why) {
    int err = 0;
    if (sp->s->shutting)
        return false;
    struct sg_instance *p = sg_supervisor_start_instance(sp->sv, &err);
    if (p == NULL) {
        sg_log_error("pool %s: cannot start an instance: %s", sp->name,
                     err == -EADDRINUSE ? "no free port in ports" : strerror(-err));
        history(sp, "start_failed", 0, 0, "%s",
                err == -EADDRINUSE ? "no free port in ports" : strerror(-err));
        return false;
    }
    char addr[ADDR_MAX];
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", p->port);
    struct inst *in = inst_new(sp, addr);
    if (in == NULL) {
        sg_log_error("pool %s: out of memory tracking instance %s", sp->name, addr);
        sg_supervisor_stop_instance(sp->sv, p);
        return false;
    }
    in->proc = p;
    sg_log_info("pool %s: started instance %u on %s (pid %d): %s", sp->name, p->id, addr, p->pid,
                why);
    mark_dirty(sp->s);
    return true;
}

/* Takes in out of rotation; it leaves the snapshot when its requests are
 * done (tick). */
static void drain(struct inst *in, const char *why) {
    struct spool *sp = in->sp;
    if (in->state == I_STARTING) {
        /* never served: out at once */
        set_state(in, I_REMOVED);
        mark_dirty(sp->s);
    } else if (in->state == I_READY) {
        sg_server_set_admin(in->id, SG_ADMIN_DRAINING);
        set_state(in, I_DRAINING);
    } else {
        return;
    }
    sg_log_info("pool %s: draining %s: %s", sp->name, in->addr, why);
}

static void stop_now(struct inst *in) {
    struct spool *sp = in->sp;
    set_state(in, I_STOPPING);
    if (in->proc) {
        sg_supervisor_stop_instance(sp->sv, in->proc); /* may free in (STOPPED) */
    } else {
        sg_server_set_admin(in->id, SG_ADMIN_ENABLED); /* the address may serve again */
        inst_free(in);
    }
}

static struct inst *find_proc(struct spool *sp, const struct sg_instance *p) {
    for (struct sg_list *it = sp->insts.next; it != &sp->insts; it = it->next) {
        struct inst *in = sg_container_of(it, struct inst, link);
        if (in->proc == p)
            return in;
    }
    return NULL;
}

static void on_supervisor(struct sg_supervisor *sv, struct sg_instance *p,
                          enum sg_supervisor_event ev, void *arg) {
    (void)sv;
    struct spool *sp = arg;
    struct inst *in = find_proc(sp, p);
    if (in == NULL)
        return;
    switch (ev) {
    case SG_SUPERVISOR_STARTED:
        if (in->state == I_STARTING && p->restarts > 0) {
            in->started = uv_now(sp->s->loop);
            atomic_store(&in->st->fast_check_until, sg_state_now() + sp->cfg.start_timeout_ms);
            sg_log_info("pool %s: instance %u restarted on %s (pid %d)", sp->name, p->id, in->addr,
                        p->pid);
            history(sp, "instance_restarted", 0, 0, "%s (pid %d), restart %u", in->addr, p->pid,
                    p->restarts);
        }
        break;
    case SG_SUPERVISOR_CRASHED:
        /* out of rotation at once; it stays published so that its health
         * check lets it back in when the restart is up */
        atomic_store(&in->st->health, SG_HEALTH_DOWN);
        atomic_store(&in->st->check_ok, 0);
        if (in->state == I_READY || in->state == I_STARTING) {
            set_state(in, I_STARTING);
            char how[48];
            if (WIFSIGNALED(p->last_status))
                snprintf(how, sizeof(how), "killed by signal %d", WTERMSIG(p->last_status));
            else
                snprintf(how, sizeof(how), "exit code %d", WEXITSTATUS(p->last_status));
            history(sp, "instance_crashed", 0, 0, "%s exited unasked (%s); restarting", in->addr,
                    how);
        }
        break;
    case SG_SUPERVISOR_CRASH_LOOP:
        history(sp, "crash_loop", 0, 0, "%s: %u restarts in a row", in->addr, p->crash_run);
        break;
    case SG_SUPERVISOR_STOPPED:
        sg_log_info("pool %s: instance %u on %s stopped", sp->name, p->id, in->addr);
        sg_server_set_admin(in->id, SG_ADMIN_ENABLED); /* the address may serve again */
        inst_free(in); /* a removed pool's spool goes at the next tick */
        shutdown_check(sp->s);
        break;
    default:
        break;
    }
}

/* ---- command runs ---------------------------------------------------------- */

static void cmd_closed(uv_handle_t *h) {
    struct cmd *c = h->data;
    if (--c->closing == 0) {
        free(c->buf);
        free(c);
    }
}

static void cmd_finish(struct cmd *c) {
    if (c->finished)
        return;
    c->finished = true;
    uv_timer_stop(&c->timer);
    if (c->sp && c->done)
        c->done(c->sp, c, c->status);
    uv_close((uv_handle_t *)&c->proc, cmd_closed);
    uv_close((uv_handle_t *)&c->out, cmd_closed);
    uv_close((uv_handle_t *)&c->timer, cmd_closed);
}

static void cmd_exit(uv_process_t *p, int64_t status, int sig) {
    struct cmd *c = p->data;
    c->exited = true;
    if (c->status == 0)
        c->status = sig ? -1 : (int)status;
    if (c->eof)
        cmd_finish(c);
}

static void cmd_alloc(uv_handle_t *h, size_t sug, uv_buf_t *b) {
    (void)sug;
    struct cmd *c = h->data;
    size_t room = CMD_OUT_MAX - c->len;
    if (room == 0) { /* output beyond the cap is read and dropped */
        static char sink[4096];
        *b = uv_buf_init(sink, sizeof(sink));
        return;
    }
    *b = uv_buf_init(c->buf + c->len, (unsigned)room);
}

static void cmd_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b) {
    struct cmd *c = st->data;
    if (n > 0 && b->base == c->buf + c->len) {
        c->len += (size_t)n;
    } else if (n < 0) {
        uv_read_stop(st);
        c->eof = true;
        if (c->exited)
            cmd_finish(c);
    }
}

static void cmd_timeout(uv_timer_t *t) {
    struct cmd *c = t->data;
    sg_log_warn("autoscaler: a command ran longer than %u s; killing it", CMD_TIMEOUT_MS / 1000);
    c->status = -1;
    uv_process_kill(&c->proc, SIGKILL);
}

/* Runs `/bin/sh -c line` with stdout captured; done runs once with the exit
 * status (or -1) and the output in c->buf[0..len). */
static struct cmd *cmd_run(struct spool *sp, const char *line,
                           void (*done)(struct spool *, struct cmd *, int)) {
    struct cmd *c = calloc(1, sizeof(*c));
    if (c == NULL || (c->buf = malloc(CMD_OUT_MAX + 1)) == NULL) {
        free(c);
        return NULL;
    }
    c->sp = sp;
    c->done = done;
    uv_loop_t *loop = sp->s->loop;
    uv_pipe_init(loop, &c->out, 0);
    uv_timer_init(loop, &c->timer);
    c->out.data = c->timer.data = c->proc.data = c;
    char *args[] = {"/bin/sh", "-c", (char *)line, NULL};
    uv_stdio_container_t io[3] = {
        {.flags = UV_IGNORE},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&c->out},
        {.flags = UV_INHERIT_FD, .data.fd = 2},
    };
    uv_process_options_t o = {
        .exit_cb = cmd_exit, .file = "/bin/sh", .args = args, .stdio_count = 3, .stdio = io};
    int rc = uv_spawn(loop, &c->proc, &o);
    c->closing = 3;
    if (rc < 0) {
        sg_log_error("pool %s: cannot run %s: %s", sp->name, line, uv_strerror(rc));
        c->sp = NULL;
        c->finished = true;
        uv_close((uv_handle_t *)&c->proc, cmd_closed);
        uv_close((uv_handle_t *)&c->out, cmd_closed);
        uv_close((uv_handle_t *)&c->timer, cmd_closed);
        return NULL;
    }
    uv_read_start((uv_stream_t *)&c->out, cmd_alloc, cmd_read);
    uv_timer_start(&c->timer, cmd_timeout, CMD_TIMEOUT_MS, 0);
    return c;
}

/* The spool goes away while c runs: c finishes on its own, unheard. */
static void cmd_detach(struct cmd *c) {
    if (c == NULL)
        return;
    c->sp = NULL;
    if (!c->exited)
        uv_process_kill(&c->proc, SIGTERM);
}

/* ---- command driver -------------------------------------------------------- */

static void list_done(struct spool *sp, struct cmd *c, int status) {
    sp->list_cmd = NULL;
    if (status != 0) {
        sg_log_warn("pool %s: list command failed (status %d); keeping the instances as they are",
                    sp->name, status);
        return;
    }
    c->buf[c->len] = '\0';
    for (struct sg_list *it = sp->insts.next; it != &sp->insts; it = it->next)
        sg_container_of(it, struct inst, link)->listed = false;
    size_t count = 0;
    bool changed = false;
    char *save = NULL;
    for (char *line = strtok_r(c->buf, "\r\n", &save); line; line = strtok_r(NULL, "\r\n", &save)) {
        line += strspn(line, " \t");
        size_t l = strcspn(line, " \t");
        line[l] = '\0';
        if (*line == '\0' || *line == '#')
            continue;
        struct sockaddr_storage ss;
        socklen_t sl;
        if (l >= ADDR_MAX || sg_parse_addr(line, &ss, &sl) < 0) {
            sg_log_warn("pool %s: list printed %.64s, not host:port; ignored", sp->name, line);
            continue;
        }
        if (++count > LIST_MAX)
            break;
        struct inst *found = NULL;
        for (struct sg_list *it = sp->insts.next; it != &sp->insts && !found; it = it->next) {
            struct inst *in = sg_container_of(it, struct inst, link);
            if (strcmp(in->addr, line) == 0)
                found = in;
        }
        if (found == NULL) {
            found = inst_new(sp, line);
            if (found == NULL)
                continue;
            sg_log_info("pool %s: instance %s listed", sp->name, line);
            history(sp, "instance_listed", 0, 0, "%s", line);
            changed = true;
        }
        found->listed = true;
    }
    for (struct sg_list *it = sp->insts.next, *next; it != &sp->insts; it = next) {
        next = it->next;
        struct inst *in = sg_container_of(it, struct inst, link);
        if (in->listed)
            continue;
        sg_log_info("pool %s: instance %s no longer listed", sp->name, in->addr);
        history(sp, "instance_unlisted", 0, 0, "%s", in->addr);
        inst_free(in);
        changed = true;
    }
    sp->listed_once = true;
    if (changed)
        mark_dirty(sp->s);
}

static void scale_to_done(struct spool *sp, struct cmd *c, int status) {
    (void)c;
    sp->scale_cmd = NULL;
    if (status != 0) {
        sg_log_error("pool %s: scale_to command failed (status %d)", sp->name, status);
        history(sp, "scale_to_failed", 0, sp->requested, "status %d", status);
        sp->have_requested = false; /* try again next period */
    }
    sp->last_list = 0; /* list at once to see the result */
}

/* Replaces every {n} in tmpl by n; NULL when it does not fit. */
static char *expand(const char *tmpl, const char *key, unsigned long v) {
    char num[24], *out;
    snprintf(num, sizeof(num), "%lu", v);
    size_t kl = strlen(key), cap = strlen(tmpl) + 1;
    for (const char *p = strstr(tmpl, key); p; p = strstr(p + kl, key))
        cap += strlen(num);
    if ((out = malloc(cap)) == NULL)
        return NULL;
    char *o = out;
    for (const char *p = tmpl; *p;) {
        if (strncmp(p, key, kl) == 0) {
            o = stpcpy(o, num);
            p += kl;
        } else {
            *o++ = *p++;
        }
    }
    *o = '\0';
    return out;
}

/* Whether this gateway runs the pool's policy: always for its own
 * processes; for an orchestrator's pool, while it holds the lease, or when
 * Redis has been unreachable for three lease periods (then every gateway
 * decides for itself: scale_to sets an absolute count, so gateways that
 * agree on the load ask for the same one). */
static bool leader(const struct spool *sp) {
    return sp->cfg.driver == SG_SCALE_PROCESS || sp->lease == NULL || sg_lease_held(sp->lease) ||
           sp->redis_lost;
}

/* Follows the Redis link for the fallback above. */
static void watch_redis(struct spool *sp, uint64_t now) {
    if (sp->lease == NULL)
        return;
    if (sg_redis_connected(sp->s->redis)) {
        if (sp->redis_lost) {
            sg_log_info("pool %s: redis is back: the lease decides who scales again", sp->name);
            history(sp, "redis_back", 0, 0, "the lease decides again");
        }
        sp->redis_down_since = 0;
        sp->redis_lost = false;
        return;
    }
    if (sp->redis_down_since == 0)
        sp->redis_down_since = now;
    if (!sp->redis_lost && now - sp->redis_down_since >= 3 * sp->s->lease_ttl_ms) {
        sp->redis_lost = true;
        sg_log_warn("pool %s: redis unreachable for %llu ms: this gateway decides on its own",
                    sp->name, (unsigned long long)(now - sp->redis_down_since));
        history(sp, "redis_lost", 0, 0, "redis unreachable: deciding locally");
    }
}

static void on_lease(void *arg, bool lead) {
    struct spool *sp = arg;
    sg_log_info("pool %s: this gateway %s the autoscaler's lease", sp->name,
                lead ? "now holds" : "no longer holds");
    history(sp, lead ? "leader" : "follower", 0, 0, "%s",
            lead ? "this gateway runs the pool's policy" : "another gateway runs the policy");
    if (lead)
        sp->have_requested = false;
}

/* ---- queue depth ------------------------------------------------------------ */

/* The argument of a pending LLEN: the link may call back after the spool
 * is gone (sg_redis_free cancels late), so the spool is reached through
 * this ticket, which the spool clears when it goes. Freed by the callback. */
struct qticket {
    struct spool *sp;
};

static void on_llen(void *arg, long long len, int err) {
    struct qticket *t = arg;
    struct spool *sp = t->sp;
    free(t);
    if (sp == NULL)
        return;
    sp->qticket = NULL;
    sp->queue_pending = false;
    if (err < 0) {
        sp->has_queue_value = false;
        return;
    }
    sp->queue_depth = (double)len;
    sp->has_queue_value = true;
}

static void queue_done(struct spool *sp, struct cmd *c, int status) {
    sp->queue_cmd = NULL;
    c->buf[c->len] = '\0';
    char *end = NULL;
    double v = strtod(c->buf, &end);
    if (status != 0 || end == c->buf || !isfinite(v) || v < 0) {
        sg_log_warn("pool %s: queue command failed or printed no number (status %d)", sp->name,
                    status);
        sp->has_queue_value = false;
        return;
    }
    sp->queue_depth = v;
    sp->has_queue_value = true;
}

static void fetch_queue(struct spool *sp) {
    if (sp->cfg.queue_redis_list && sp->s->redis && !sp->queue_pending) {
        struct qticket *t = malloc(sizeof(*t));
        if (t == NULL)
            return;
        t->sp = sp;
        if (sg_redis_llen(sp->s->redis, sp->cfg.queue_redis_list, on_llen, t) == 0) {
            sp->queue_pending = true;
            sp->qticket = t;
        } else {
            free(t);
        }
    } else if (sp->cfg.queue_command && sp->queue_cmd == NULL) {
        sp->queue_cmd = cmd_run(sp, sp->cfg.queue_command, queue_done);
    }
}

/* ---- metrics and decisions -------------------------------------------------- */

static double read_mem_total(void) {
    FILE *f = fopen("/proc/meminfo", "re");
    double kb = 0;
    if (f) {
        char line[256];
        while (fgets(line, sizeof(line), f))
            if (sscanf(line, "MemTotal: %lf kB", &kb) == 1)
                break;
        fclose(f);
    }
    return kb * 1024;
}

/* Adds the instances' counter deltas to the totals and pushes a sample. */
static void collect(struct spool *sp, uint64_t now) {
    double cpu = 0, rss = 0;
    uint32_t ncpu = 0;
    for (struct sg_list *it = sp->insts.next; it != &sp->insts; it = it->next) {
        struct inst *in = sg_container_of(it, struct inst, link);
        uint64_t r = atomic_load(&in->st->requests), f = atomic_load(&in->st->failures);
        sp->tot_req += r - in->last_req;
        sp->tot_fail += f - in->last_fail;
        in->last_req = r;
        in->last_fail = f;
        for (unsigned b = 0; b < SG_LATENCY_BUCKETS; b++) {
            uint64_t v = atomic_load_explicit(&in->st->latency[b], memory_order_relaxed);
            sp->tot_lat[b] += v - in->last_lat[b];
            in->last_lat[b] = v;
        }
        if (in->proc && in->proc->pid > 0 &&
            sg_supervisor_sample(sp->sv, in->proc, &in->cpu, &in->rss) == 0 &&
            in->state == I_READY) {
            cpu += in->cpu;
            rss += (double)in->rss;
            ncpu++;
        }
    }
    size_t at = (sp->ring_head + sp->ring_len) % RING_MAX;
    if (sp->ring_len == RING_MAX)
        sp->ring_head = (sp->ring_head + 1) % RING_MAX;
    else
        sp->ring_len++;
    struct sample *smp = &sp->ring[at];
    smp->t = now;
    smp->req = sp->tot_req;
    smp->fail = sp->tot_fail;
    memcpy(smp->lat, sp->tot_lat, sizeof(smp->lat));

    struct sg_scale_input *in = &sp->in;
    memset(in, 0, sizeof(*in));
    in->ready = count_state(sp, I_READY);
    in->starting = count_state(sp, I_STARTING);
    in->now_ms = now;
    /* Activity (for scale to zero): any request since the previous sample. */
    const struct sample *prev =
        sp->ring_len > 1 ? &sp->ring[(sp->ring_head + sp->ring_len - 2) % RING_MAX] : smp;
    if (smp->req != prev->req)
        sp->last_activity = now;
    /* The window: the newest sample against the oldest within window_ms,
     * but none from before the ready count last changed. Requests served
     * by fewer (or more) instances say little about the pool as it is now:
     * counted per ready instance, they would make the policy overshoot
     * (the latency of 5 instances times 10). So the period in which the
     * count changed has no such data, and the window grows again from the
     * change on, like the HPA's readiness delay. */
    if (in->ready != sp->ready_seen) {
        sp->ready_seen = in->ready;
        sp->ready_changed_at = now;
    }
    uint64_t from = now > sp->cfg.window_ms ? now - sp->cfg.window_ms : 0;
    if (from < sp->ready_changed_at)
        from = sp->ready_changed_at;
    const struct sample *old = smp;
    for (size_t k = 0; k < sp->ring_len; k++) {
        const struct sample *x = &sp->ring[(sp->ring_head + k) % RING_MAX];
        if (x->t >= from) {
            old = x;
            break;
        }
    }
    double secs = (double)(now - old->t) / 1000.0;
    uint64_t dreq = smp->req - old->req, dfail = smp->fail - old->fail;
    if (secs <= 0) {
        in->rps = NAN;
        in->p95_ms = NAN;
        in->error_rate = NAN;
    } else {
        in->rps = in->ready ? (double)dreq / secs / in->ready : (double)dreq / secs;
        in->error_rate = dreq ? (double)dfail / (double)dreq : 0;
        /* no request in the window: nothing is slow; too few for a 95th
         * percentile (one slow request would be it): no data */
        in->p95_ms = dreq == 0 ? 0 : NAN;
        if (dreq >= P95_MIN_REQUESTS) {
            uint64_t need = (uint64_t)ceil(0.95 * (double)dreq), acc = 0;
            for (unsigned b = 0; b < SG_LATENCY_BUCKETS; b++) {
                uint64_t cnt = smp->lat[b] - old->lat[b];
                if (acc + cnt >= need && cnt > 0) {
                    /* linear within the bucket */
                    double lo = b ? (double)sg_latency_bound(b - 1) + 1 : 0;
                    double hi = b + 1 < SG_LATENCY_BUCKETS ? (double)sg_latency_bound(b) : lo * 2;
                    in->p95_ms = lo + (hi - lo) * ((double)(need - acc) / (double)cnt);
                    break;
                }
                acc += cnt;
            }
        }
    }
    double avg = sp->inflight_n ? sp->inflight_acc / sp->inflight_n : 0;
    sp->inflight_last = avg;
    sp->inflight_acc = 0;
    sp->inflight_n = 0;
    in->inflight = in->ready ? avg / in->ready : avg;
    in->cpu_percent = ncpu ? cpu / ncpu : NAN;
    in->memory_percent = ncpu && sp->mem_total > 0 ? rss / ncpu / sp->mem_total * 100 : NAN;
    in->has_queue = sp->cfg.queue_per_instance > 0 && sp->has_queue_value;
    in->queue_depth = sp->queue_depth;
    if (in->has_queue && in->queue_depth > 0)
        sp->last_activity = now; /* work waits: not idle, even without requests */
}

/* The desired count now (ready + starting), with its reason in sp->reason. */
static uint32_t decide(struct spool *sp, uint64_t now) {
    const struct sg_scale_cfg *c = &sp->cfg;
    uint32_t current = sp->in.ready + sp->in.starting;
    uint64_t idle = now - sp->last_activity;
    if (!sp->autoscale) {
        uint32_t want = current < c->min ? c->min : current > c->max ? c->max : current;
        snprintf(sp->reason, sizeof(sp->reason), "autoscaling stopped: holding %u (min %u, max %u)",
                 want, c->min, c->max);
        return want;
    }
    if (c->min == 0 && idle >= c->idle_before_zero_ms) {
        snprintf(
            sp->reason, sizeof(sp->reason), "no request for %llu s (idle_before_zero %llu s)%s",
            (unsigned long long)(idle / 1000), (unsigned long long)(c->idle_before_zero_ms / 1000),
            current ? ": scaling to zero" : ": at zero");
        return 0;
    }
    struct sg_scale_limits l = sp->limits;
    if (l.min == 0)
        l.min = 1; /* zero only after idle_before_zero */
    return sg_scale_decide(&sp->pst, &l, &sp->targets, &sp->in, sp->reason, sizeof(sp->reason));
}

/* Acts on the desired count. */
static void act(struct spool *sp, uint32_t want) {
    uint32_t ready = count_state(sp, I_READY), starting = count_state(sp, I_STARTING);
    uint32_t current = ready + starting;
    if (sp->cfg.driver == SG_SCALE_COMMAND) {
        if (!leader(sp) || !sp->listed_once)
            return;
        if (sp->have_requested && sp->requested == want)
            return;
        if (sp->scale_cmd)
            return; /* one at a time; the next period asks again */
        char *line = expand(sp->cfg.scale_to, "{n}", want);
        if (line == NULL)
            return;
        sg_log_info("pool %s: scale_to %u (%s): %s", sp->name, want, sp->reason, line);
        history(sp,
                want > current   ? "scale_up"
                : want < current ? "scale_down"
                                 : "scale_to",
                current, want, "%s", sp->reason);
        sp->scaled_up += want > current;
        sp->scaled_down += want < current;
        sp->scale_cmd = cmd_run(sp, line, scale_to_done);
        free(line);
        if (sp->scale_cmd) {
            sp->requested = want;
            sp->have_requested = true;
        }
        return;
    }
    if (want > current) {
        sg_log_info("pool %s: scaling up %u -> %u: %s", sp->name, current, want, sp->reason);
        history(sp, "scale_up", current, want, "%s", sp->reason);
        sp->scaled_up++;
        for (uint32_t k = current; k < want; k++)
            if (!start_one(sp, "scale up"))
                break;
    } else if (want < current) {
        sg_log_info("pool %s: scaling down %u -> %u: %s", sp->name, current, want, sp->reason);
        history(sp, "scale_down", current, want, "%s", sp->reason);
        sp->scaled_down++;
        uint32_t n = current - want;
        /* starting ones first, then the newest ready ones */
        for (int pass = 0; pass < 2 && n > 0; pass++) {
            enum inst_state st = pass == 0 ? I_STARTING : I_READY;
            for (struct sg_list *it = sp->insts.prev, *prev; it != &sp->insts && n > 0; it = prev) {
                prev = it->prev;
                struct inst *in = sg_container_of(it, struct inst, link);
                if (in->state != st)
                    continue;
                drain(in, "scale down");
                n--;
            }
        }
    }
}

/* Instance states that move with time. */
static void advance(struct spool *sp, uint64_t now) {
    double inflight = 0;
    for (struct sg_list *it = sp->insts.next, *next; it != &sp->insts; it = next) {
        next = it->next;
        struct inst *in = sg_container_of(it, struct inst, link);
        inflight += atomic_load_explicit(&in->st->inflight, memory_order_relaxed);
        switch (in->state) {
        case I_STARTING:
            if (atomic_load(&in->st->health) == SG_HEALTH_UP) {
                set_state(in, I_READY);
                if (in->proc)
                    sg_supervisor_mark_running(sp->sv, in->proc);
                sg_log_info("pool %s: instance %s ready after %llu ms", sp->name, in->addr,
                            (unsigned long long)(now - in->started));
                history(sp, "instance_ready", 0, 0, "%s ready after %llu ms", in->addr,
                        (unsigned long long)(now - in->started));
            } else if (in->proc && now - in->since >= sp->cfg.start_timeout_ms) {
                sg_log_warn("pool %s: instance %s not ready within start_timeout (%llu ms); "
                            "replacing it",
                            sp->name, in->addr, (unsigned long long)sp->cfg.start_timeout_ms);
                history(sp, "start_timeout", 0, 0, "%s not ready within %llu ms; replaced",
                        in->addr, (unsigned long long)sp->cfg.start_timeout_ms);
                set_state(in, I_REMOVED);
                mark_dirty(sp->s);
                if (!sp->gone)
                    start_one(sp, "replacing one that did not get ready");
            }
            break;
        case I_READY:
            if (atomic_load(&in->st->health) == SG_HEALTH_DOWN) {
                /* its health check failed (fall): not capacity until it passes again */
                set_state(in, I_STARTING);
                history(sp, "instance_down", 0, 0, "%s failed its health check", in->addr);
            }
            break;
        case I_DRAINING:
            if (atomic_load(&in->st->inflight) == 0 ||
                now - in->since >= sp->cfg.drain_timeout_ms) {
                if (atomic_load(&in->st->inflight) != 0)
                    sg_log_warn("pool %s: %s still has %u requests in flight after drain_timeout",
                                sp->name, in->addr, atomic_load(&in->st->inflight));
                set_state(in, I_REMOVED);
                mark_dirty(sp->s);
            }
            break;
        case I_REMOVED:
            /* one tick after leaving the snapshot, so that a request that
             * picked it just before has started (and counts in flight) */
            if (now - in->since >= TICK_MS && (atomic_load(&in->st->inflight) == 0 ||
                                               now - in->since >= sp->cfg.drain_timeout_ms)) {
                stop_now(in); /* may free in */
            }
            break;
        case I_STOPPING:
            break;
        }
    }
    sp->inflight_acc += inflight;
    sp->inflight_n++;
}

static void spool_tick(struct spool *sp, uint64_t now) {
    advance(sp, now);
    if (sp->gone) {
        for (struct sg_list *it = sp->insts.next, *next; it != &sp->insts; it = next) {
            next = it->next;
            drain(sg_container_of(it, struct inst, link), "pool removed from the config");
        }
        return;
    }
    watch_redis(sp, now);
    if (sp->cfg.driver == SG_SCALE_COMMAND && sp->list_cmd == NULL &&
        (sp->last_list == 0 || now - sp->last_list >= sp->cfg.list_interval_ms)) {
        sp->last_list = now;
        sp->list_cmd = cmd_run(sp, sp->cfg.list, list_done);
    }
    /* cold start: a request waits and nothing is coming */
    uint64_t demand = sp->ps ? atomic_load(&sp->ps->demand) : 0;
    if (demand != sp->demand_seen) {
        sp->demand_seen = demand;
        sp->last_activity = now;
        if (sp->cfg.driver == SG_SCALE_PROCESS && count_state(sp, I_READY) == 0 &&
            count_state(sp, I_STARTING) == 0) {
            snprintf(sp->reason, sizeof(sp->reason), "a request is waiting and no instance runs");
            history(sp, "cold_start", 0, 1, "%s", sp->reason);
            start_one(sp, "cold start");
        }
    }
    if (now - sp->last_decide < sp->cfg.period_ms)
        return;
    sp->last_decide = now;
    collect(sp, now);
    fetch_queue(sp);
    if (sp->cfg.driver == SG_SCALE_COMMAND && !leader(sp)) {
        snprintf(sp->reason, sizeof(sp->reason), "another gateway holds the lease and decides");
        sp->desired = sp->in.ready + sp->in.starting;
        return;
    }
    sp->desired = decide(sp, now);
    sp->decided_wall = wall_ms();
    act(sp, sp->desired);
}

static void spool_maybe_free(struct spool *sp);

static void on_tick(uv_timer_t *t) {
    struct sg_scaler *s = t->data;
    uint64_t now = uv_now(s->loop);
    for (struct sg_list *it = s->pools.next, *next; it != &s->pools; it = next) {
        next = it->next;
        struct spool *sp = sg_container_of(it, struct spool, link);
        spool_tick(sp, now);
        spool_maybe_free(sp);
    }
}

static void on_wake(uv_async_t *a) {
    on_tick((uv_timer_t *)&((struct sg_scaler *)a->data)->tick);
}

static void demand_hook(void) {
    struct sg_scaler *s = the_scaler;
    if (s)
        uv_async_send(&s->wake);
}

/* ---- pools from the config -------------------------------------------------- */

static void spool_settings(struct spool *sp, const struct sg_scale_cfg *c) {
    sp->cfg = *c;
    sp->autoscale = c->autoscale;
    sp->targets = (struct sg_scale_targets){
        .rps_per_instance = c->rps_per_instance,
        .p95_ms = c->p95_ms,
        .inflight_per_instance = c->inflight_per_instance,
        .cpu_percent = c->cpu_percent,
        .memory_percent = c->memory_percent,
        .error_rate = c->error_rate,
        .queue_per_instance = c->queue_per_instance,
    };
    sg_scale_limits_default(&sp->limits);
    sp->limits.min = c->min;
    sp->limits.max = c->max;
    sp->limits.tolerance = c->tolerance_percent / 100.0;
    sp->limits.up_percent = c->up_percent;
    sp->limits.up_pods = c->up_pods;
    sp->limits.down_pods = c->down_pods;
    sp->limits.up_stabilization_ms = c->up_stabilization_ms;
    sp->limits.down_stabilization_ms = c->down_stabilization_ms;
    sp->limits.period_ms = c->period_ms;
}

static struct spool *spool_new(struct sg_scaler *s, const struct sg_pool *p) {
    struct spool *sp = calloc(1, sizeof(*sp));
    if (sp == NULL || (sp->ring = calloc(RING_MAX, sizeof(*sp->ring))) == NULL) {
        free(sp);
        return NULL;
    }
    sp->s = s;
    snprintf(sp->name, sizeof(sp->name), "%s", p->name);
    sg_list_init(&sp->insts);
    sg_scale_state_init(&sp->pst);
    spool_settings(sp, &p->scale);
    sp->desired = p->scale.min; /* what is started first, until the first decision */
    sp->mem_total = read_mem_total();
    uint64_t now = uv_now(s->loop);
    sp->last_activity = now;
    sp->last_decide = now;
    sp->ps = sg_pool_state(sp->name);
    sp->demand_seen = sp->ps ? atomic_load(&sp->ps->demand) : 0;
    if (p->scale.driver == SG_SCALE_PROCESS) {
        struct sg_supervisor_cfg sc = {
            .command = p->scale.command,
            .port_min = p->scale.port_min,
            .port_max = p->scale.port_max,
            .stop_grace_ms = p->scale.stop_grace_ms,
        };
        sp->sv = sg_supervisor_new(s->loop, &sc, on_supervisor, sp);
        if (sp->sv == NULL) {
            free(sp->ring);
            free(sp);
            return NULL;
        }
    } else if (s->redis) {
        char name[96];
        snprintf(name, sizeof(name), "scale:%s", sp->name);
        sp->lease = sg_lease_new(s->redis, name, s->lease_ttl_ms, on_lease, sp);
    }
    sg_list_insert_tail(&s->pools, &sp->link);
    history(sp, "config", 0, 0, "autoscaling %s: min %u, max %u, driver %s",
            sp->autoscale ? "on" : "off", sp->cfg.min, sp->cfg.max,
            sp->cfg.driver == SG_SCALE_PROCESS ? "process" : "command");
    /* the minimum at once (scale to zero pools start empty) */
    if (p->scale.driver == SG_SCALE_PROCESS)
        for (uint32_t k = 0; k < p->scale.min; k++)
            start_one(sp, "min");
    return sp;
}

static void spool_release(struct spool *sp) {
    if (sp->qticket)
        sp->qticket->sp = NULL;
    cmd_detach(sp->list_cmd);
    cmd_detach(sp->scale_cmd);
    cmd_detach(sp->queue_cmd);
    if (sp->lease)
        sg_lease_free(sp->lease);
    sp->lease = NULL;
    free(sp->ring);
    free(sp);
}

/* A removed pool's spool goes once its last instance has stopped. */
static void spool_maybe_free(struct spool *sp) {
    if (!sp->gone || !sg_list_empty(&sp->insts) || sp->s->freeing)
        return;
    sg_list_remove(&sp->link);
    if (sp->sv)
        sg_supervisor_free(sp->sv, NULL, NULL); /* nothing runs: no wait */
    spool_release(sp);
}

struct sg_config *sg_scaler_apply(struct sg_scaler *s, struct sg_config *loaded) {
    struct sg_config *prev = s->loaded;
    s->loaded = sg_config_ref(loaded);
    for (struct sg_list *it = s->pools.next; it != &s->pools; it = it->next) {
        struct spool *sp = sg_container_of(it, struct spool, link);
        const struct sg_pool *p = sg_config_pool(loaded, sp->name);
        bool same_driver =
            p && p->scale.enabled && p->scale.driver == sp->cfg.driver &&
            (p->scale.driver == SG_SCALE_COMMAND ||
             (strcmp(p->scale.command, sp->cfg.command) == 0 &&
              p->scale.port_min == sp->cfg.port_min && p->scale.port_max == sp->cfg.port_max));
        if (sp->gone)
            continue;
        if (!same_driver) {
            if (p && p->scale.enabled)
                sg_log_warn("pool %s: the instance command, ports or driver changed: the old "
                            "instances drain and new ones start",
                            sp->name);
            else
                sg_log_info("pool %s: no longer scaled: its instances drain and stop", sp->name);
            sp->gone = true;
            /* strings of the old config: the spool only needs its name now */
            sp->cfg.command = sp->cfg.list = sp->cfg.scale_to = NULL;
            sp->cfg.queue_command = sp->cfg.queue_redis_list = NULL;
            cmd_detach(sp->list_cmd);
            cmd_detach(sp->scale_cmd);
            cmd_detach(sp->queue_cmd);
            sp->list_cmd = sp->scale_cmd = sp->queue_cmd = NULL;
            continue;
        }
        spool_settings(sp, &p->scale);
        history(sp, "config", 0, 0, "reloaded: min %u, max %u, autoscaling %s", sp->cfg.min,
                sp->cfg.max, sp->autoscale ? "on" : "off");
    }
    for (size_t i = 0; i < loaded->npools; i++) {
        const struct sg_pool *p = &loaded->pools[i];
        if (!p->scale.enabled)
            continue;
        bool have = false;
        for (struct sg_list *it = s->pools.next; it != &s->pools && !have; it = it->next) {
            struct spool *sp = sg_container_of(it, struct spool, link);
            have = !sp->gone && strcmp(sp->name, p->name) == 0;
        }
        if (!have && spool_new(s, p) == NULL)
            sg_log_error("pool %s: cannot start its autoscaler (out of memory)", p->name);
    }
    sg_config_unref(prev);
    s->dirty = false;
    return derive(s);
}

/* ---- lifetime --------------------------------------------------------------- */

struct sg_scaler *sg_scaler_new(uv_loop_t *loop, sg_scaler_publish_cb publish, void *arg) {
    struct sg_scaler *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->loop = loop;
    s->publish = publish;
    s->arg = arg;
    sg_list_init(&s->pools);
    uv_timer_init(loop, &s->tick);
    uv_timer_init(loop, &s->pub_timer);
    uv_async_init(loop, &s->wake, on_wake);
    s->tick.data = s->pub_timer.data = s->wake.data = s;
    uv_timer_start(&s->tick, on_tick, TICK_MS, TICK_MS);
    the_scaler = s;
    sg_pool_demand_hook = demand_hook;
    return s;
}

void sg_scaler_set_redis(struct sg_scaler *s, struct sg_redis *r, uint64_t lease_ttl_ms) {
    s->redis = r;
    s->lease_ttl_ms = lease_ttl_ms ? lease_ttl_ms : 3000;
}

static void scaler_closed(uv_handle_t *h) {
    struct sg_scaler *s = h->data;
    if (--s->closing == 0)
        free(s);
}

void sg_scaler_free(struct sg_scaler *s) {
    if (s == NULL)
        return;
    s->freeing = true;
    sg_pool_demand_hook = NULL;
    the_scaler = NULL;
    while (!sg_list_empty(&s->pools)) {
        struct spool *sp = sg_container_of(s->pools.next, struct spool, link);
        sg_list_remove(&sp->link);
        if (sp->sv)
            sg_supervisor_free(sp->sv, NULL, NULL); /* SIGKILLs and reaps every instance */
        while (!sg_list_empty(&sp->insts))
            inst_free(sg_container_of(sp->insts.next, struct inst, link));
        spool_release(sp);
    }
    sg_config_unref(s->loaded);
    s->loaded = NULL;
    s->closing = 3;
    uv_close((uv_handle_t *)&s->tick, scaler_closed);
    uv_close((uv_handle_t *)&s->pub_timer, scaler_closed);
    uv_close((uv_handle_t *)&s->wake, scaler_closed);
}

static void on_shut_timer(uv_timer_t *t) {
    struct sg_scaler *s = t->data;
    if (s->shut_done) {
        void (*done)(void *) = s->shut_done;
        s->shut_done = NULL;
        done(s->shut_arg);
    }
}

/* Reports the end of sg_scaler_shutdown once no instance is left (from
 * the loop, never from inside a supervisor callback). */
static void shutdown_check(struct sg_scaler *s) {
    if (!s->shutting || s->shut_done == NULL)
        return;
    for (struct sg_list *it = s->pools.next; it != &s->pools; it = it->next)
        if (!sg_list_empty(&sg_container_of(it, struct spool, link)->insts))
            return;
    uv_timer_start(&s->pub_timer, on_shut_timer, 0, 0);
}

void sg_scaler_shutdown(struct sg_scaler *s, void (*done)(void *), void *arg) {
    s->shutting = true;
    s->shut_done = done;
    s->shut_arg = arg;
    uv_timer_stop(&s->tick);
    uv_timer_stop(&s->pub_timer);
    for (struct sg_list *it = s->pools.next; it != &s->pools; it = it->next) {
        struct spool *sp = sg_container_of(it, struct spool, link);
        for (struct sg_list *i2 = sp->insts.next, *next; i2 != &sp->insts; i2 = next) {
            next = i2->next;
            struct inst *in = sg_container_of(i2, struct inst, link);
            if (in->state != I_STOPPING)
                stop_now(in); /* SIGTERM (SIGKILL after stop_grace); may free in */
        }
    }
    shutdown_check(s);
}

/* ---- Prometheus metrics ---------------------------------------------------------- */

/* The spool that runs pool p now (not one whose instances drain after a
 * driver change), or NULL. */
static const struct spool *live_spool(const struct sg_scaler *s, const struct sg_pool *p) {
    if (!p->scale.enabled)
        return NULL;
    for (const struct sg_list *it = s->pools.next; it != &s->pools; it = it->next) {
        const struct spool *sp = sg_container_of(it, const struct spool, link);
        if (!sp->gone && strcmp(sp->name, p->name) == 0)
            return sp;
    }
    return NULL;
}

static void family(struct sg_text *out, const char *name, const char *type, const char *help) {
    sg_text_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* name{pool="..."[,key="value"]} v */
static void pool_sample(struct sg_text *out, const char *name, const char *pool, const char *key,
                        const char *value, unsigned long long v) {
    sg_text_printf(out, "%s{pool=\"", name);
    sg_text_label(out, pool);
    if (key) {
        sg_text_printf(out, "\",%s=\"", key);
        sg_text_label(out, value);
    }
    sg_text_printf(out, "\"} %llu\n", v);
}

void sg_scaler_prometheus(struct sg_scaler *s, struct sg_text *out) {
    /* samples in config order; pools not scaled, or without a spool, have none */
    const struct sg_config *c = s ? s->loaded : NULL;
    size_t n = c ? c->npools : 0;
    static const char *const states[] = {"starting", "ready", "draining", "stopping"};

    family(out, "scalegate_pool_instances", "gauge",
           "Instances of a scaled pool by state: starting, ready, draining, stopping.");
    for (size_t i = 0; i < n; i++) {
        const struct sg_pool *p = &c->pools[i];
        if (live_spool(s, p) == NULL)
            continue;
        /* the pool's instances, those of an old spool still draining after
         * a driver change included; removed ones are still draining */
        unsigned long long by[4] = {0};
        for (const struct sg_list *it = s->pools.next; it != &s->pools; it = it->next) {
            const struct spool *sp = sg_container_of(it, const struct spool, link);
            if (strcmp(sp->name, p->name) != 0)
                continue;
            by[0] += count_state(sp, I_STARTING);
            by[1] += count_state(sp, I_READY);
            by[2] += count_state(sp, I_DRAINING) + count_state(sp, I_REMOVED);
            by[3] += count_state(sp, I_STOPPING);
        }
        for (size_t k = 0; k < 4; k++)
            pool_sample(out, "scalegate_pool_instances", p->name, "state", states[k], by[k]);
    }

    family(out, "scalegate_pool_desired_instances", "gauge",
           "The count of instances the autoscaler asks for.");
    for (size_t i = 0; i < n; i++) {
        const struct spool *sp = live_spool(s, &c->pools[i]);
        if (sp)
            pool_sample(out, "scalegate_pool_desired_instances", c->pools[i].name, NULL, NULL,
                        sp->desired);
    }

    family(out, "scalegate_pool_min_instances", "gauge", "The fewest instances of a scaled pool.");
    for (size_t i = 0; i < n; i++) {
        const struct spool *sp = live_spool(s, &c->pools[i]);
        if (sp)
            pool_sample(out, "scalegate_pool_min_instances", c->pools[i].name, NULL, NULL,
                        sp->cfg.min);
    }

    family(out, "scalegate_pool_max_instances", "gauge", "The most instances of a scaled pool.");
    for (size_t i = 0; i < n; i++) {
        const struct spool *sp = live_spool(s, &c->pools[i]);
        if (sp)
            pool_sample(out, "scalegate_pool_max_instances", c->pools[i].name, NULL, NULL,
                        sp->cfg.max);
    }

    family(out, "scalegate_scaling_events_total", "counter",
           "Autoscaler decisions that changed the count of instances, by direction: up, down.");
    for (size_t i = 0; i < n; i++) {
        const struct spool *sp = live_spool(s, &c->pools[i]);
        if (sp == NULL)
            continue;
        pool_sample(out, "scalegate_scaling_events_total", c->pools[i].name, "direction", "up",
                    sp->scaled_up);
        pool_sample(out, "scalegate_scaling_events_total", c->pools[i].name, "direction", "down",
                    sp->scaled_down);
    }

    family(out, "scalegate_scaling_leader", "gauge",
           "1 when this gateway runs the pool's scaling policy.");
    for (size_t i = 0; i < n; i++) {
        const struct spool *sp = live_spool(s, &c->pools[i]);
        if (sp)
            pool_sample(out, "scalegate_scaling_leader", c->pools[i].name, NULL, NULL,
                        leader(sp) ? 1 : 0);
    }
}

/* ---- admin API ---------------------------------------------------------------- */

static json_t *iso_time(int64_t ms) {
    if (ms <= 0)
        return json_null();
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    char buf[64];
    snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
    return json_string(buf);
}

static json_t *num_or_null(double v) {
    return isfinite(v) ? json_real(round(v * 1000) / 1000) : json_null();
}

static json_t *targets_json(const struct spool *sp) {
    json_t *t = json_object();
    const struct sg_scale_targets *x = &sp->targets;
    if (x->rps_per_instance > 0)
        json_object_set_new(t, "rps_per_instance", json_real(x->rps_per_instance));
    if (x->p95_ms > 0)
        json_object_set_new(t, "p95_ms", json_real(x->p95_ms));
    if (x->inflight_per_instance > 0)
        json_object_set_new(t, "inflight_per_instance", json_real(x->inflight_per_instance));
    if (x->cpu_percent > 0)
        json_object_set_new(t, "cpu_percent", json_real(x->cpu_percent));
    if (x->memory_percent > 0)
        json_object_set_new(t, "memory_percent", json_real(x->memory_percent));
    if (x->error_rate > 0)
        json_object_set_new(t, "error_rate_percent", json_real(x->error_rate * 100));
    if (x->queue_per_instance > 0)
        json_object_set_new(t, "queue_per_instance", json_real(x->queue_per_instance));
    return t;
}

static json_t *status_json(const struct spool *sp, uint64_t now) {
    json_t *o = json_object(), *arr = json_array();
    json_object_set_new(o, "pool", json_string(sp->name));
    json_object_set_new(o, "driver",
                        json_string(sp->cfg.driver == SG_SCALE_PROCESS ? "process" : "command"));
    json_object_set_new(o, "enabled", json_boolean(sp->autoscale));
    json_object_set_new(o, "leader", json_boolean(leader(sp)));
    json_object_set_new(o, "min", json_integer(sp->cfg.min));
    json_object_set_new(o, "max", json_integer(sp->cfg.max));
    json_object_set_new(o, "desired", json_integer(sp->desired));
    uint32_t ready = count_state(sp, I_READY), starting = count_state(sp, I_STARTING);
    uint32_t draining = count_state(sp, I_DRAINING) + count_state(sp, I_REMOVED);
    json_object_set_new(o, "ready", json_integer(ready));
    json_object_set_new(o, "starting", json_integer(starting));
    json_object_set_new(o, "draining", json_integer(draining));
    json_object_set_new(o, "stopping", json_integer(count_state(sp, I_STOPPING)));
    json_object_set_new(o, "instances_total", json_integer(ready + starting));
    for (const struct sg_list *it = sp->insts.next; it != &sp->insts; it = it->next) {
        const struct inst *in = sg_container_of(it, const struct inst, link);
        json_t *i = json_object();
        json_object_set_new(i, "address", json_string(in->addr));
        json_object_set_new(i, "state", json_string(inst_state_names[in->state]));
        json_object_set_new(i, "in_state_s",
                            json_real(round((double)(now - in->since) / 100.0) / 10));
        json_object_set_new(i, "inflight", json_integer(atomic_load(&in->st->inflight)));
        json_object_set_new(
            i, "requests",
            json_integer((json_int_t)(atomic_load(&in->st->requests) - in->req_base)));
        if (in->proc) {
            json_object_set_new(i, "id", json_integer(in->proc->id));
            json_object_set_new(i, "pid", json_integer(in->proc->pid));
            json_object_set_new(i, "restarts", json_integer(in->proc->restarts));
            json_object_set_new(i, "cpu_percent", num_or_null(in->cpu));
            json_object_set_new(i, "rss_bytes", json_integer((json_int_t)in->rss));
        }
        json_array_append_new(arr, i);
    }
    json_object_set_new(o, "instances", arr);
    json_t *d = json_object();
    json_object_set_new(d, "at", iso_time(sp->decided_wall));
    json_object_set_new(d, "desired", json_integer(sp->desired));
    json_object_set_new(d, "reason", json_string(sp->reason));
    json_object_set_new(o, "last_decision", d);
    json_object_set_new(o, "targets", targets_json(sp));
    return o;
}

static json_t *metrics_json(const struct spool *sp) {
    const struct sg_scale_input *in = &sp->in;
    json_t *o = json_object();
    json_object_set_new(o, "pool", json_string(sp->name));
    json_object_set_new(o, "ready", json_integer(in->ready));
    json_object_set_new(o, "starting", json_integer(in->starting));
    json_object_set_new(o, "window_s", json_real((double)sp->cfg.window_ms / 1000.0));
    json_object_set_new(o, "rps_per_instance", num_or_null(in->rps));
    json_object_set_new(o, "p95_ms", num_or_null(in->p95_ms));
    json_object_set_new(o, "inflight_per_instance", num_or_null(in->inflight));
    json_object_set_new(o, "inflight_total", num_or_null(sp->inflight_last));
    json_object_set_new(o, "cpu_percent", num_or_null(in->cpu_percent));
    json_object_set_new(o, "memory_percent", num_or_null(in->memory_percent));
    json_object_set_new(o, "error_rate_percent",
                        num_or_null(isfinite(in->error_rate) ? in->error_rate * 100 : NAN));
    json_object_set_new(o, "queue_depth",
                        in->has_queue ? num_or_null(in->queue_depth) : json_null());
    json_object_set_new(o, "requests_total", json_integer((json_int_t)sp->tot_req));
    json_object_set_new(o, "failures_total", json_integer((json_int_t)sp->tot_fail));
    json_object_set_new(o, "targets", targets_json(sp));
    return o;
}

static json_t *recommendation_json(const struct spool *sp, uint64_t now) {
    json_t *o = json_object();
    uint32_t current = sp->in.ready + sp->in.starting, rec;
    char reason[REASON_MAX];
    struct sg_scale_state *copy = malloc(sizeof(*copy));
    if (copy == NULL) {
        json_decref(o);
        return NULL;
    }
    *copy = sp->pst;
    struct sg_scale_limits l = sp->limits;
    if (l.min == 0)
        l.min = 1;
    struct sg_scale_input in = sp->in;
    in.now_ms = now;
    if (sp->cfg.min == 0 && now - sp->last_activity >= sp->cfg.idle_before_zero_ms) {
        rec = 0;
        snprintf(reason, sizeof(reason), "idle for %llu s: scale to zero",
                 (unsigned long long)((now - sp->last_activity) / 1000));
    } else {
        rec = sg_scale_decide(copy, &l, &sp->targets, &in, reason, sizeof(reason));
    }
    /* the same without the stabilization windows: what the metrics alone say */
    struct sg_scale_limits raw_l = l;
    raw_l.down_stabilization_ms = raw_l.up_stabilization_ms = 0;
    sg_scale_state_init(copy);
    uint32_t raw = sg_scale_decide(copy, &raw_l, &sp->targets, &in, NULL, 0);
    free(copy);
    json_object_set_new(o, "pool", json_string(sp->name));
    json_object_set_new(o, "current", json_integer(current));
    json_object_set_new(o, "recommended", json_integer(rec));
    json_object_set_new(o, "unstabilized", json_integer(raw));
    json_object_set_new(o, "action",
                        json_string(rec > current   ? "scale_up"
                                    : rec < current ? "scale_down"
                                                    : "none"));
    json_object_set_new(o, "reason", json_string(reason));
    json_object_set_new(o, "enabled", json_boolean(sp->autoscale));
    if (!sp->autoscale)
        json_object_set_new(o, "note", json_string("autoscaling is stopped: nothing is applied"));
    return o;
}

/* The value of name in a query string (not decoded), or NULL. */
static bool query_get(const char *q, size_t qlen, const char *name, char *out, size_t outsz) {
    size_t nl = strlen(name);
    const char *p = q, *end = q + qlen;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *e = amp ? amp : end;
        if ((size_t)(e - p) > nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
            size_t vl = (size_t)(e - p) - nl - 1;
            if (vl >= outsz)
                return false;
            memcpy(out, p + nl + 1, vl);
            out[vl] = '\0';
            return true;
        }
        p = e + 1;
    }
    return false;
}

static void api_error(struct sg_admin_response *r, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void api_error(struct sg_admin_response *r, int status, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    r->status = status;
    r->json = json_pack("{s:s}", "error", buf);
}

/* Double from a JSON number (or a duration string when ms is set: "300s",
 * or a number of seconds). */
static bool json_num(json_t *v, bool duration, double *out) {
    if (json_is_number(v)) {
        *out = json_number_value(v) * (duration ? 1000 : 1);
        return isfinite(*out) && *out >= 0;
    }
    uint64_t ms;
    if (duration && json_is_string(v) && sg_parse_duration_ms(json_string_value(v), &ms) == 0) {
        *out = (double)ms;
        return true;
    }
    return false;
}

/* PUT /config: validated whole, then applied. */
static void put_config(struct sg_scaler *s, struct spool *sp, json_t *body,
                       struct sg_admin_response *r) {
    static const struct {
        const char *name;
        bool duration;
    } keys[] = {{"min", false},
                {"max", false},
                {"enabled", false},
                {"targets", false},
                {"tolerance", false},
                {"scale_up_percent", false},
                {"scale_up_pods", false},
                {"scale_down_pods", false},
                {"scale_up_stabilization", true},
                {"scale_down_stabilization", true},
                {"idle_before_zero", true},
                {"pool", false}};
    static const char *const tnames[] = {"rps_per_instance",      "p95_ms",
                                         "inflight_per_instance", "cpu_percent",
                                         "memory_percent",        "error_rate_percent",
                                         "queue_per_instance"};
    const char *k;
    json_t *v;
    json_object_foreach(body, k, v) {
        bool known = false;
        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]) && !known; i++)
            known = strcmp(k, keys[i].name) == 0;
        if (!known) {
            api_error(r, 400,
                      "unknown key %.64s (min, max, enabled, targets, tolerance, "
                      "scale_up_percent, scale_up_pods, scale_down_pods, scale_up_stabilization, "
                      "scale_down_stabilization, idle_before_zero)",
                      k);
            return;
        }
    }
    struct sg_scale_cfg c = sp->cfg;
    struct sg_scale_targets t = sp->targets;
    bool autoscale = sp->autoscale;
    double d;
    json_t *x;
#define UINT_KEY(name, field, lo, hi)                                                              \
    if ((x = json_object_get(body, name)) != NULL) {                                               \
        if (!json_is_integer(x) || json_integer_value(x) < (lo) || json_integer_value(x) > (hi)) { \
            api_error(r, 400, "%s must be a whole number from %d to %d", name, (int)(lo),          \
                      (int)(hi));                                                                  \
            return;                                                                                \
        }                                                                                          \
        c.field = (uint32_t)json_integer_value(x);                                                 \
    }
    UINT_KEY("min", min, 0, 1000)
    UINT_KEY("max", max, 1, 1000)
    UINT_KEY("tolerance", tolerance_percent, 0, 100)
    UINT_KEY("scale_up_percent", up_percent, 0, 10000)
    UINT_KEY("scale_up_pods", up_pods, 0, 1000)
    UINT_KEY("scale_down_pods", down_pods, 0, 1000)
#undef UINT_KEY
#define DUR_KEY(name, field)                                                                       \
    if ((x = json_object_get(body, name)) != NULL) {                                               \
        if (!json_num(x, true, &d) || d > 86400e3) {                                               \
            api_error(r, 400,                                                                      \
                      "%s must be a duration (\"300s\", or a number of seconds) up to 24h", name); \
            return;                                                                                \
        }                                                                                          \
        c.field = (uint64_t)d;                                                                     \
    }
    DUR_KEY("scale_up_stabilization", up_stabilization_ms)
    DUR_KEY("scale_down_stabilization", down_stabilization_ms)
    DUR_KEY("idle_before_zero", idle_before_zero_ms)
#undef DUR_KEY
    if (c.idle_before_zero_ms == 0) {
        api_error(r, 400, "idle_before_zero must be more than 0");
        return;
    }
    if ((x = json_object_get(body, "enabled")) != NULL) {
        if (!json_is_boolean(x)) {
            api_error(r, 400, "enabled must be true or false");
            return;
        }
        autoscale = json_is_true(x);
    }
    if ((x = json_object_get(body, "targets")) != NULL) {
        if (!json_is_object(x)) {
            api_error(r, 400, "targets must be an object");
            return;
        }
        json_object_foreach(x, k, v) {
            size_t i = 0;
            while (i < 7 && strcmp(k, tnames[i]) != 0)
                i++;
            if (i == 7) {
                api_error(r, 400,
                          "unknown target %.64s (rps_per_instance, p95_ms, inflight_per_instance, "
                          "cpu_percent, memory_percent, error_rate_percent, queue_per_instance)",
                          k);
                return;
            }
            if (!json_is_null(v) && (!json_num(v, false, &d) || d > 1e9)) {
                api_error(r, 400, "targets.%s must be a number at least 0 (0 or null: not used)",
                          k);
                return;
            }
            double val = json_is_null(v) ? 0 : d;
            double *fields[] = {&t.rps_per_instance,  &t.p95_ms,         &t.inflight_per_instance,
                                &t.cpu_percent,       &t.memory_percent, &t.error_rate,
                                &t.queue_per_instance};
            *fields[i] = i == 5 ? val / 100 : val;
        }
    }
    if (c.min > c.max) {
        api_error(r, 400, "min (%u) is more than max (%u)", c.min, c.max);
        return;
    }
    if (c.driver == SG_SCALE_PROCESS && c.max > (uint32_t)c.port_max - c.port_min + 1) {
        api_error(r, 400, "max (%u) is more than the %u ports of the pool's ports", c.max,
                  (uint32_t)c.port_max - c.port_min + 1);
        return;
    }
    if (c.driver == SG_SCALE_COMMAND && c.min == 0) {
        api_error(r, 400, "scale to zero (min 0) needs driver: process");
        return;
    }
    if (t.queue_per_instance > 0 && !c.queue_redis_list && !c.queue_command) {
        api_error(r, 400, "targets.queue_per_instance needs a queue section in the config");
        return;
    }
    bool any = t.rps_per_instance > 0 || t.p95_ms > 0 || t.inflight_per_instance > 0 ||
               t.cpu_percent > 0 || t.memory_percent > 0 || t.error_rate > 0 ||
               t.queue_per_instance > 0;
    if (!any && c.min != c.max) {
        api_error(r, 400, "no target left: set one, or make min equal to max");
        return;
    }
    c.autoscale = autoscale;
    spool_settings(sp, &c);
    sp->targets = t;
    sg_log_info("pool %s: scaling config changed through the admin API: min %u, max %u, "
                "autoscaling %s",
                sp->name, c.min, c.max, autoscale ? "on" : "off");
    history(sp, "config", 0, 0, "changed through the admin API: min %u, max %u, autoscaling %s",
            c.min, c.max, autoscale ? "on" : "off");
    (void)s;
    r->json = status_json(sp, uv_now(sp->s->loop));
}

bool sg_scaler_admin(void *arg, const struct sg_admin_request *req,
                     struct sg_admin_response *resp) {
    struct sg_scaler *s = arg;
    static const char base[] = "/api/v1/scaling/";
    size_t bl = sizeof(base) - 1;
    if (req->path_len <= bl || memcmp(req->path, base, bl) != 0)
        return false;
    char what[32];
    size_t wl = req->path_len - bl;
    if (wl >= sizeof(what))
        return false;
    memcpy(what, req->path + bl, wl);
    what[wl] = '\0';
    char pool[64] = "", limit_s[16];
    bool has_pool = query_get(req->query, req->query_len, "pool", pool, sizeof(pool));
    uint64_t now = uv_now(s->loop);

    /* the pools the request is about */
    struct spool *only = NULL;
    json_t *body = NULL;
    if (strcmp(what, "config") == 0 && req->method == SG_METHOD_PUT) {
        json_error_t je;
        body = json_loadb(req->body, req->body_len, 0, &je);
        if (body == NULL || !json_is_object(body)) {
            api_error(resp, 400, "the body must be a JSON object%s%s", body ? "" : ": ",
                      body ? "" : je.text);
            json_decref(body);
            return true;
        }
        json_t *p = json_object_get(body, "pool");
        if (p && !json_is_string(p)) {
            api_error(resp, 400, "pool must be a string");
            json_decref(body);
            return true;
        }
        if (p) {
            snprintf(pool, sizeof(pool), "%s", json_string_value(p));
            has_pool = true;
        }
    }
    size_t nscaled = 0;
    for (struct sg_list *it = s->pools.next; it != &s->pools; it = it->next) {
        struct spool *sp = sg_container_of(it, struct spool, link);
        if (sp->gone)
            continue;
        nscaled++;
        if (has_pool && strcmp(sp->name, pool) == 0)
            only = sp;
        if (!has_pool && nscaled == 1)
            only = sp;
    }
    if (has_pool && only == NULL) {
        api_error(resp, 404, "no scaled pool named %.64s", pool);
        json_decref(body);
        return true;
    }
    if (!has_pool && nscaled != 1)
        only = NULL;

    bool get = req->method == SG_METHOD_GET || req->method == SG_METHOD_HEAD;
    json_t *list = json_array();
    if (strcmp(what, "status") == 0 || strcmp(what, "metrics") == 0 ||
        strcmp(what, "recommendations") == 0) {
        if (!get) {
            json_decref(list);
            api_error(resp, 405, "use GET");
            return true;
        }
        for (struct sg_list *it = s->pools.next; it != &s->pools; it = it->next) {
            struct spool *sp = sg_container_of(it, struct spool, link);
            if (sp->gone || (has_pool && sp != only))
                continue;
            json_t *o = what[0] == 's'   ? status_json(sp, now)
                        : what[0] == 'm' ? metrics_json(sp)
                                         : recommendation_json(sp, now);
            if (o)
                json_array_append_new(list, o);
        }
        resp->json = json_pack("{s:o}", "pools", list);
        return true;
    }
    if (strcmp(what, "history") == 0) {
        if (!get) {
            json_decref(list);
            api_error(resp, 405, "use GET");
            return true;
        }
        size_t limit = 100;
        if (query_get(req->query, req->query_len, "limit", limit_s, sizeof(limit_s))) {
            char *end = NULL;
            unsigned long v = strtoul(limit_s, &end, 10);
            if (*limit_s == '\0' || *end != '\0' || v == 0 || v > HISTORY_MAX * 64) {
                json_decref(list);
                api_error(resp, 400, "limit must be a number from 1 to %u", HISTORY_MAX * 64);
                return true;
            }
            limit = v;
        }
        /* newest first across pools: merge by time */
        size_t idx[64] = {0}, np = 0;
        struct spool *sps[64];
        for (struct sg_list *it = s->pools.next; it != &s->pools && np < 64; it = it->next) {
            struct spool *sp = sg_container_of(it, struct spool, link);
            if (!sp->gone && (!has_pool || sp == only))
                sps[np++] = sp;
        }
        while (json_array_size(list) < limit) {
            int best = -1;
            int64_t bt = 0;
            for (size_t k = 0; k < np; k++) {
                if (idx[k] >= sps[k]->hist_len)
                    continue;
                const struct event *e =
                    &sps[k]
                         ->hist[(sps[k]->hist_head + sps[k]->hist_len - 1 - idx[k]) % HISTORY_MAX];
                if (best < 0 || e->wall_ms > bt) {
                    best = (int)k;
                    bt = e->wall_ms;
                }
            }
            if (best < 0)
                break;
            struct spool *sp = sps[best];
            const struct event *e =
                &sp->hist[(sp->hist_head + sp->hist_len - 1 - idx[best]) % HISTORY_MAX];
            idx[best]++;
            json_t *o = json_pack("{s:o,s:s,s:s,s:s}", "time", iso_time(e->wall_ms), "pool",
                                  sp->name, "event", e->kind, "detail", e->text);
            if (e->from || e->to) {
                json_object_set_new(o, "from", json_integer(e->from));
                json_object_set_new(o, "to", json_integer(e->to));
            }
            json_array_append_new(list, o);
        }
        resp->json = json_pack("{s:o}", "events", list);
        return true;
    }
    json_decref(list);
    if (strcmp(what, "start") == 0 || strcmp(what, "stop") == 0) {
        if (req->method != SG_METHOD_POST) {
            api_error(resp, 405, "use POST");
            return true;
        }
        bool on = what[2] == 'a';
        json_t *changed = json_array();
        for (struct sg_list *it = s->pools.next; it != &s->pools; it = it->next) {
            struct spool *sp = sg_container_of(it, struct spool, link);
            if (sp->gone || (has_pool && sp != only))
                continue;
            if (sp->autoscale != on) {
                sp->autoscale = on;
                sg_log_info("pool %s: autoscaling %s through the admin API", sp->name,
                            on ? "started" : "stopped");
                history(sp, on ? "started" : "stopped", 0, 0,
                        "autoscaling %s through the admin API", on ? "started" : "stopped");
            }
            json_array_append_new(changed, json_string(sp->name));
        }
        resp->json = json_pack("{s:b,s:o}", "enabled", on, "pools", changed);
        return true;
    }
    if (strcmp(what, "config") == 0) {
        if (req->method != SG_METHOD_PUT) {
            json_decref(body);
            api_error(resp, 405, "use PUT with a JSON object");
            return true;
        }
        if (only == NULL) {
            json_decref(body);
            if (nscaled == 0)
                api_error(resp, 404, "no pool has a scale section");
            else
                api_error(resp, 400, "several pools scale: say which with \"pool\" or ?pool=");
            return true;
        }
        put_config(s, only, body, resp);
        json_decref(body);
        return true;
    }
    json_decref(body);
    return false;
}
