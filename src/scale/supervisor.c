/*
 * The process supervisor (see supervisor.h for the contract). Instances live
 * in a growable array of pointers in start order; each owns one timer, used
 * for the backoff restart or for the SIGKILL after the stop grace, and is
 * freed in that timer's close callback. The supervisor owns one SIGCHLD
 * uv_signal_t; on each wakeup it polls waitpid(pid, WNOHANG) for each of its
 * own pids (signals coalesce, so one wakeup may reap several).
 */
#include "scale/supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/log.h"

extern char **environ;

struct sg_supervisor {
    uv_loop_t *loop;
    struct sg_supervisor_cfg cfg; /* command points at cmd */
    char *cmd;
    sg_supervisor_event_cb on_event;
    void *arg;
    struct sg_instance **inst; /* live instances, start order */
    size_t n, cap;
    uint32_t next_id;
    uv_signal_t sigchld;
    unsigned pending_closes; /* handles whose close callback has not run */
    bool freeing;
    sg_supervisor_done_cb done;
    void *done_arg;
};

static const char *const state_names[SG_INSTANCE_STATE_COUNT] = {
    [SG_INSTANCE_STARTING] = "starting", [SG_INSTANCE_RUNNING] = "running",
    [SG_INSTANCE_STOPPING] = "stopping", [SG_INSTANCE_EXITED] = "exited",
    [SG_INSTANCE_BACKOFF] = "backoff",
};

const char *sg_supervisor_state_name(enum sg_instance_state s) {
    return (unsigned)s < SG_INSTANCE_STATE_COUNT ? state_names[s] : "?";
}

static void emit(struct sg_supervisor *sv, struct sg_instance *inst, enum sg_supervisor_event ev) {
    if (sv->on_event && !sv->freeing)
        sv->on_event(sv, inst, ev, sv->arg);
}

/* ---- spawning ---- */

/* Returns "exec <command>" with each {port} replaced; malloc'ed, or NULL. */
static char *build_command(const char *command, uint16_t port) {
    char portstr[8];
    int plen = snprintf(portstr, sizeof(portstr), "%u", (unsigned)port);
    size_t count = 0;
    for (const char *p = command; (p = strstr(p, "{port}")) != NULL; p += 6)
        count++;
    size_t len = 5 + strlen(command) + count * (size_t)plen + 1;
    char *out = malloc(len);
    if (!out)
        return NULL;
    char *o = out;
    memcpy(o, "exec ", 5);
    o += 5;
    for (const char *p = command; *p;) {
        if (strncmp(p, "{port}", 6) == 0) {
            memcpy(o, portstr, (size_t)plen);
            o += plen;
            p += 6;
        } else {
            *o++ = *p++;
        }
    }
    *o = '\0';
    return out;
}

/* Returns a copy of environ with PORT=<port> instead of any PORT; the array
 * and the PORT string are malloc'ed (the string is the last entry before
 * NULL), the others borrowed. NULL on out of memory. */
static char **build_env(uint16_t port) {
    size_t n = 0;
    while (environ && environ[n])
        n++;
    char **env = malloc((n + 2) * sizeof(*env));
    char *portvar = malloc(16);
    if (!env || !portvar) {
        free(env);
        free(portvar);
        return NULL;
    }
    snprintf(portvar, 16, "PORT=%u", (unsigned)port);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "PORT=", 5) != 0)
            env[k++] = environ[i];
    env[k++] = portvar;
    env[k] = NULL;
    return env;
}

static void free_env(char **env) {
    size_t k = 0;
    while (env[k])
        k++;
    free(env[k - 1]);
    free(env);
}

/* In the forked child: only async-signal-safe calls until execve. */
static void __attribute__((noreturn)) child_exec(pid_t parent, int devnull, char *cmd, char **env) {
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    struct sigaction dfl;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    for (int s = 1; s < NSIG; s++)
        if (s != SIGKILL && s != SIGSTOP)
            sigaction(s, &dfl, NULL);
    setpgid(0, 0);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
        _exit(126); /* the gateway already died: do not outlive it */
    if (devnull >= 0)
        dup2(devnull, STDIN_FILENO);
    char *argv[] = {(char *)"sh", (char *)"-c", cmd, NULL};
    execve("/bin/sh", argv, env);
    _exit(127);
}

/* Forks inst's command on inst->port. Returns 0 or -errno. */
static int spawn(struct sg_supervisor *sv, struct sg_instance *inst) {
    char *cmd = build_command(sv->cfg.command, inst->port);
    char **env = cmd ? build_env(inst->port) : NULL;
    if (!env) {
        free(cmd);
        return -ENOMEM;
    }
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0)
        child_exec(parent, devnull, cmd, env);
    int err = pid < 0 ? -errno : 0;
    if (devnull >= 0)
        close(devnull);
    free(cmd);
    free_env(env);
    if (err) {
        sg_log_error("instance %u (port %u): fork failed: %s", inst->id, (unsigned)inst->port,
                     strerror(-err));
        return err;
    }
    setpgid(pid, pid); /* also in the child: whichever runs first wins */
    inst->pid = (int)pid;
    inst->state = SG_INSTANCE_STARTING;
    inst->started_ms = uv_now(sv->loop);
    inst->sample_ns = uv_hrtime();
    inst->sample_ticks = 0;
    sg_log_info("instance %u (port %u, pid %d) started", inst->id, (unsigned)inst->port, inst->pid);
    emit(sv, inst, SG_SUPERVISOR_STARTED);
    return 0;
}

/* ---- ports ---- */

static bool port_taken(const struct sg_supervisor *sv, uint16_t port) {
    for (size_t i = 0; i < sv->n; i++)
        if (sv->inst[i]->port == port)
            return true;
    return false;
}

static bool port_bindable(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

/* ---- lifecycle ---- */

/* One handle fewer to wait for; frees sv after the last one once it is
 * being freed. */
static void close_done(struct sg_supervisor *sv) {
    if (--sv->pending_closes == 0 && sv->freeing) {
        sg_supervisor_done_cb done = sv->done;
        void *arg = sv->done_arg;
        free(sv->inst);
        free(sv->cmd);
        free(sv);
        if (done)
            done(arg);
    }
}

static void on_inst_closed(uv_handle_t *h) {
    struct sg_instance *inst = h->data;
    struct sg_supervisor *sv = inst->sv;
    free(inst);
    close_done(sv);
}

static void on_signal_closed(uv_handle_t *h) {
    close_done(h->data);
}

static void remove_inst(struct sg_supervisor *sv, struct sg_instance *inst) {
    for (size_t i = 0; i < sv->n; i++) {
        if (sv->inst[i] == inst) {
            memmove(&sv->inst[i], &sv->inst[i + 1], (sv->n - i - 1) * sizeof(sv->inst[0]));
            sv->n--;
            break;
        }
    }
}

/* inst has stopped for good: report it, then free it. */
static void finish_stop(struct sg_supervisor *sv, struct sg_instance *inst) {
    uv_timer_stop(&inst->timer);
    inst->state = SG_INSTANCE_EXITED;
    inst->pid = 0;
    remove_inst(sv, inst);
    emit(sv, inst, SG_SUPERVISOR_STOPPED);
    sv->pending_closes++;
    uv_close((uv_handle_t *)&inst->timer, on_inst_closed);
}

static void on_backoff_timer(uv_timer_t *t);

/* Schedules a restart of a crashed (or unstartable) instance. */
static void schedule_restart(struct sg_supervisor *sv, struct sg_instance *inst) {
    uint64_t now = uv_now(sv->loop);
    const struct sg_supervisor_cfg *c = &sv->cfg;
    if (now - inst->started_ms >= c->crash_loop_window_ms) { /* ran long enough */
        inst->crash_run = 0;
        inst->crash_loop = false;
    }
    inst->crash_run++;
    int pid = inst->pid;
    inst->pid = 0;
    inst->state = SG_INSTANCE_BACKOFF;

    /* restarts within the window, counting this one */
    const uint32_t ring = sizeof(inst->recent) / sizeof(inst->recent[0]);
    inst->recent[inst->recent_head % ring] = now;
    inst->recent_head++;
    uint32_t in_window = 0;
    uint32_t have = inst->recent_head < ring ? inst->recent_head : ring;
    for (uint32_t i = 0; i < have; i++)
        if (now - inst->recent[i] < c->crash_loop_window_ms)
            in_window++;

    uint64_t delay = c->backoff_base_ms;
    for (uint32_t i = 1; i < inst->crash_run && delay < c->backoff_max_ms; i++)
        delay *= 2;
    if (delay > c->backoff_max_ms)
        delay = c->backoff_max_ms;
    bool new_loop = false;
    if (in_window >= c->crash_loop_restarts) {
        delay = c->backoff_max_ms;
        new_loop = !inst->crash_loop;
        inst->crash_loop = true;
    }
    if (WIFSIGNALED(inst->last_status))
        sg_log_warn("instance %u (port %u, pid %d) killed by signal %d; restarting in %llu ms",
                    inst->id, (unsigned)inst->port, pid, WTERMSIG(inst->last_status),
                    (unsigned long long)delay);
    else
        sg_log_warn("instance %u (port %u, pid %d) exited with status %d; restarting in %llu ms",
                    inst->id, (unsigned)inst->port, pid, WEXITSTATUS(inst->last_status),
                    (unsigned long long)delay);
    uv_timer_start(&inst->timer, on_backoff_timer, delay, 0);
    emit(sv, inst, SG_SUPERVISOR_CRASHED);
    if (new_loop && inst->state == SG_INSTANCE_BACKOFF) {
        sg_log_error("instance %u (port %u) crash loop: %u restarts in %llu s", inst->id,
                     (unsigned)inst->port, in_window,
                     (unsigned long long)(c->crash_loop_window_ms / 1000));
        emit(sv, inst, SG_SUPERVISOR_CRASH_LOOP);
    }
}

static void on_backoff_timer(uv_timer_t *t) {
    struct sg_instance *inst = t->data;
    struct sg_supervisor *sv = inst->sv;
    inst->restarts++;
    if (spawn(sv, inst) != 0) {
        inst->started_ms = uv_now(sv->loop); /* it did not run at all */
        inst->last_status = 127 << 8;
        schedule_restart(sv, inst);
    }
}

static void on_kill_timer(uv_timer_t *t) {
    struct sg_instance *inst = t->data;
    if (inst->pid > 0) {
        sg_log_warn("instance %u (port %u, pid %d) still running after %llu ms; sending SIGKILL",
                    inst->id, (unsigned)inst->port, inst->pid,
                    (unsigned long long)inst->sv->cfg.stop_grace_ms);
        kill(-inst->pid, SIGKILL);
        kill(inst->pid, SIGKILL);
    }
}

static void on_exit_status(struct sg_supervisor *sv, struct sg_instance *inst, int status) {
    int pid = inst->pid;
    /* the group outlives its leader only through stray helpers: end them */
    kill(-pid, SIGKILL);
    inst->last_status = status;
    if (inst->stop_requested) {
        sg_log_info("instance %u (port %u, pid %d) stopped", inst->id, (unsigned)inst->port, pid);
        finish_stop(sv, inst);
        return;
    }
    schedule_restart(sv, inst);
}

static void on_sigchld(uv_signal_t *h, int signum) {
    (void)signum;
    struct sg_supervisor *sv = h->data;
    for (size_t i = 0; i < sv->n;) {
        struct sg_instance *inst = sv->inst[i];
        int status;
        if (inst->pid > 0 && waitpid(inst->pid, &status, WNOHANG) == inst->pid) {
            on_exit_status(sv, inst, status);
            i = 0; /* the array may have changed under us */
            continue;
        }
        i++;
    }
}

struct sg_supervisor *sg_supervisor_new(uv_loop_t *loop, const struct sg_supervisor_cfg *cfg,
                                        sg_supervisor_event_cb on_event, void *arg) {
    if (!cfg->command || !*cfg->command || cfg->port_min == 0 || cfg->port_min > cfg->port_max)
        return NULL;
    struct sg_supervisor *sv = calloc(1, sizeof(*sv));
    if (!sv)
        return NULL;
    sv->cmd = strdup(cfg->command);
    if (!sv->cmd) {
        free(sv);
        return NULL;
    }
    sv->loop = loop;
    sv->cfg = *cfg;
    sv->cfg.command = sv->cmd;
    if (!sv->cfg.stop_grace_ms)
        sv->cfg.stop_grace_ms = 10000;
    if (!sv->cfg.backoff_base_ms)
        sv->cfg.backoff_base_ms = 500;
    if (!sv->cfg.backoff_max_ms)
        sv->cfg.backoff_max_ms = 30000;
    if (sv->cfg.backoff_max_ms < sv->cfg.backoff_base_ms)
        sv->cfg.backoff_max_ms = sv->cfg.backoff_base_ms;
    if (!sv->cfg.crash_loop_restarts)
        sv->cfg.crash_loop_restarts = 5;
    if (sv->cfg.crash_loop_restarts > 32)
        sv->cfg.crash_loop_restarts = 32; /* the size of the restart ring */
    if (!sv->cfg.crash_loop_window_ms)
        sv->cfg.crash_loop_window_ms = 60000;
    sv->on_event = on_event;
    sv->arg = arg;
    uv_signal_init(loop, &sv->sigchld);
    sv->sigchld.data = sv;
    int rc = uv_signal_start(&sv->sigchld, on_sigchld, SIGCHLD);
    if (rc != 0) {
        sg_log_error("supervisor: cannot watch SIGCHLD: %s", uv_strerror(rc));
        /* sv is freed in the close callback, on the next loop turn */
        sv->freeing = true;
        sv->pending_closes++;
        uv_close((uv_handle_t *)&sv->sigchld, on_signal_closed);
        return NULL;
    }
    return sv;
}

struct sg_instance *sg_supervisor_start_instance(struct sg_supervisor *sv, int *err) {
    int dummy;
    if (!err)
        err = &dummy;
    uint16_t port = 0;
    for (uint32_t p = sv->cfg.port_min; p <= sv->cfg.port_max; p++) {
        if (!port_taken(sv, (uint16_t)p) && port_bindable((uint16_t)p)) {
            port = (uint16_t)p;
            break;
        }
    }
    if (!port) {
        sg_log_error("supervisor: no free port in %u-%u", (unsigned)sv->cfg.port_min,
                     (unsigned)sv->cfg.port_max);
        *err = -EADDRINUSE;
        return NULL;
    }
    if (sv->n == sv->cap) {
        size_t cap = sv->cap ? sv->cap * 2 : 8;
        struct sg_instance **a = realloc(sv->inst, cap * sizeof(*a));
        if (!a) {
            *err = -ENOMEM;
            return NULL;
        }
        sv->inst = a;
        sv->cap = cap;
    }
    struct sg_instance *inst = calloc(1, sizeof(*inst));
    if (!inst) {
        *err = -ENOMEM;
        return NULL;
    }
    inst->id = ++sv->next_id;
    inst->port = port;
    inst->sv = sv;
    uv_timer_init(sv->loop, &inst->timer);
    inst->timer.data = inst;
    sv->inst[sv->n++] = inst;
    int rc = spawn(sv, inst);
    if (rc != 0) {
        remove_inst(sv, inst);
        sv->pending_closes++;
        uv_close((uv_handle_t *)&inst->timer, on_inst_closed);
        *err = rc;
        return NULL;
    }
    *err = 0;
    return inst;
}

void sg_supervisor_mark_running(struct sg_supervisor *sv, struct sg_instance *inst) {
    (void)sv;
    if (inst->state == SG_INSTANCE_STARTING)
        inst->state = SG_INSTANCE_RUNNING;
}

void sg_supervisor_stop_instance(struct sg_supervisor *sv, struct sg_instance *inst) {
    if (inst->stop_requested)
        return;
    inst->stop_requested = true;
    if (inst->pid <= 0) { /* in backoff: nothing to signal */
        sg_log_info("instance %u (port %u) stopped during backoff", inst->id, (unsigned)inst->port);
        finish_stop(sv, inst);
        return;
    }
    sg_log_info("instance %u (port %u, pid %d) stopping (SIGTERM)", inst->id, (unsigned)inst->port,
                inst->pid);
    inst->state = SG_INSTANCE_STOPPING;
    kill(-inst->pid, SIGTERM);
    kill(inst->pid, SIGTERM); /* in case setpgid has not happened yet */
    uv_timer_start(&inst->timer, on_kill_timer, sv->cfg.stop_grace_ms, 0);
}

void sg_supervisor_free(struct sg_supervisor *sv, sg_supervisor_done_cb done, void *arg) {
    sv->freeing = true;
    sv->done = done;
    sv->done_arg = arg;
    for (size_t i = 0; i < sv->n; i++) {
        struct sg_instance *inst = sv->inst[i];
        if (inst->pid > 0) {
            kill(-inst->pid, SIGKILL);
            kill(inst->pid, SIGKILL);
            while (waitpid(inst->pid, NULL, 0) < 0 && errno == EINTR)
                ;
            sg_log_info("instance %u (port %u, pid %d) killed at shutdown", inst->id,
                        (unsigned)inst->port, inst->pid);
            inst->pid = 0;
        }
        inst->state = SG_INSTANCE_EXITED;
        uv_timer_stop(&inst->timer);
        sv->pending_closes++;
        uv_close((uv_handle_t *)&inst->timer, on_inst_closed);
    }
    sv->n = 0;
    uv_signal_stop(&sv->sigchld);
    sv->pending_closes++;
    uv_close((uv_handle_t *)&sv->sigchld, on_signal_closed);
}

size_t sg_supervisor_count(const struct sg_supervisor *sv) {
    return sv->n;
}

struct sg_instance *sg_supervisor_instance(const struct sg_supervisor *sv, size_t i) {
    return i < sv->n ? sv->inst[i] : NULL;
}

/* ---- /proc sampling ---- */

int sg_supervisor_sample(struct sg_supervisor *sv, struct sg_instance *inst, double *cpu_percent,
                         uint64_t *rss_bytes) {
    (void)sv;
    if (inst->pid <= 0)
        return -ESRCH;
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", inst->pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return -errno;
    size_t len = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[len] = '\0';
    /* fields after "(comm)": state ppid pgrp session tty tpgid flags minflt
     * cminflt majflt cmajflt utime stime ... */
    char *p = strrchr(buf, ')');
    unsigned long long utime, stime;
    if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime,
                     &stime) != 2)
        return -EINVAL;
    snprintf(path, sizeof(path), "/proc/%d/statm", inst->pid);
    f = fopen(path, "re");
    if (!f)
        return -errno;
    unsigned long long size, resident;
    int n = fscanf(f, "%llu %llu", &size, &resident);
    fclose(f);
    if (n != 2)
        return -EINVAL;
    uint64_t now = uv_hrtime();
    uint64_t ticks = utime + stime;
    double secs = (double)(now - inst->sample_ns) / 1e9;
    long hz = sysconf(_SC_CLK_TCK);
    double used = (double)(ticks - inst->sample_ticks) / (double)(hz > 0 ? hz : 100);
    if (cpu_percent)
        *cpu_percent = secs > 0 ? 100.0 * used / secs : 0.0;
    if (rss_bytes)
        *rss_bytes = (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
    inst->sample_ns = now;
    inst->sample_ticks = ticks;
    return 0;
}
