/*
 * The process supervisor: the `process` (embedded) driver of autoscaling.
 * It starts a pool's instances as child processes on free loopback ports,
 * restarts the ones that crash with exponential backoff, stops the ones it
 * is asked to stop (SIGTERM, then SIGKILL after a grace period) and reads
 * each instance's CPU % and RSS from /proc. It does no health checking and
 * knows nothing about traffic: the caller says when an instance is ready
 * (sg_supervisor_mark_running) and when its drain is over (it then calls
 * sg_supervisor_stop_instance).
 *
 * Each instance runs `/bin/sh -c "exec <command>"`, with every "{port}" in
 * the command replaced by its port and PORT=<port> in its environment; the
 * `exec` makes the instance's pid the command itself (so a compound command
 * needs its own shell: `sh -c 'a; exec b'`). The child is forked
 * (not uv_spawn'ed) so that, before exec, it can put itself in its own
 * process group and ask for PR_SET_PDEATHSIG(SIGKILL): when the gateway
 * dies, even by SIGKILL, the kernel kills every instance. PDEATHSIG fires
 * when the *thread* that forked exits, so the supervisor must run on a loop
 * whose thread lives as long as the process (the main thread's loop).
 * Signals go to the whole process group (kill(-pid, sig)), so helpers that
 * an instance starts die with it. Children are reaped from a SIGCHLD
 * uv_signal_t with waitpid(pid, WNOHANG) over the supervisor's own pids only,
 * so it coexists with uv_spawn users of the same process.
 *
 * Crash handling: an instance that exits without being asked to is reported
 * (SG_SUPERVISOR_CRASHED) and restarted on the same port after
 * backoff_base_ms * 2^(n-1), capped at backoff_max_ms, where n counts crashes
 * in a row; n resets once an instance has run for crash_loop_window_ms.
 * crash_loop_restarts restarts within crash_loop_window_ms is a crash loop:
 * it is logged as an error and reported once (SG_SUPERVISOR_CRASH_LOOP); the
 * supervisor keeps retrying, at backoff_max_ms, until the instance stays up
 * for a window or the caller stops it.
 */
#ifndef SG_SCALE_SUPERVISOR_H
#define SG_SCALE_SUPERVISOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct sg_supervisor_cfg {
    const char *command;           /* shell words; "{port}" is replaced */
    uint16_t port_min, port_max;   /* inclusive range of instance ports */
    uint64_t stop_grace_ms;        /* SIGTERM -> SIGKILL; 0 = 10000 */
    uint64_t backoff_base_ms;      /* first restart delay; 0 = 500 */
    uint64_t backoff_max_ms;       /* cap; 0 = 30000 */
    uint32_t crash_loop_restarts;  /* restarts within the window; 0 = 5 */
    uint64_t crash_loop_window_ms; /* 0 = 60000; also the backoff reset */
};

enum sg_instance_state {
    SG_INSTANCE_STARTING = 0, /* forked; the caller has not seen it ready */
    SG_INSTANCE_RUNNING,      /* the caller marked it ready */
    SG_INSTANCE_STOPPING,     /* SIGTERM sent, waiting for it to exit */
    SG_INSTANCE_EXITED,       /* stopped for good; about to be freed */
    SG_INSTANCE_BACKOFF,      /* crashed; restarts when its timer fires */
    SG_INSTANCE_STATE_COUNT
};

enum sg_supervisor_event {
    SG_SUPERVISOR_STARTED = 0, /* a process was forked (first start or restart) */
    SG_SUPERVISOR_CRASHED,     /* it exited unasked; a restart is scheduled */
    SG_SUPERVISOR_CRASH_LOOP,  /* crash_loop_restarts restarts within the window */
    SG_SUPERVISOR_STOPPED,     /* stopped as asked; freed when the callback returns */
    SG_SUPERVISOR_EVENT_COUNT
};

/* Owned by the supervisor. Fields are read-only for callers. */
struct sg_instance {
    uint32_t id;   /* 1, 2, ... per supervisor */
    uint16_t port; /* kept across restarts */
    int pid;       /* 0 while no process runs (BACKOFF, EXITED) */
    enum sg_instance_state state;
    uint32_t restarts;     /* total restarts after crashes */
    int last_status;       /* last wait status (see WIFEXITED etc.) */
    uint32_t crash_run;    /* crashes in a row (backoff exponent) */
    bool crash_loop;       /* reported as a crash loop, not yet cleared */
    uint64_t started_ms;   /* uv_now() of the last fork */
    uint64_t recent[32];   /* ring of restart times (uv_now ms) */
    uint32_t recent_head;  /* next slot in recent */
    uint64_t sample_ns;    /* uv_hrtime() of the last CPU sample */
    uint64_t sample_ticks; /* utime+stime at the last sample */
    bool stop_requested;
    uv_timer_t timer; /* backoff restart or SIGKILL after grace */
    struct sg_supervisor *sv;
};

struct sg_supervisor;

/* Runs on the loop; it may call start/stop/mark_running, not free. */
typedef void (*sg_supervisor_event_cb)(struct sg_supervisor *sv, struct sg_instance *inst,
                                       enum sg_supervisor_event ev, void *arg);
typedef void (*sg_supervisor_done_cb)(void *arg);

/* Creates a supervisor on loop (cfg is copied, command too). Returns NULL on
 * a bad cfg (no command, empty port range) or out of memory. on_event may be
 * NULL. */
struct sg_supervisor *sg_supervisor_new(uv_loop_t *loop, const struct sg_supervisor_cfg *cfg,
                                        sg_supervisor_event_cb on_event, void *arg);

/* Close protocol: SIGKILLs every instance's process group, reaps them
 * (blocking waitpid: a SIGKILLed process exits promptly), closes every
 * handle, and once the loop has run their close callbacks frees everything
 * and calls done(arg) (done may be NULL). No event callbacks run after this
 * call; the caller must keep running the loop until done is called (or
 * simply until uv_run returns). sv and its instances are invalid at once.
 * Not to be called from an event callback. */
void sg_supervisor_free(struct sg_supervisor *sv, sg_supervisor_done_cb done, void *arg);

/* Starts a new instance on a free port: one no other instance of sv holds
 * and that can be bound on 127.0.0.1 right now. Returns NULL with *err set
 * (-EADDRINUSE when no port is free, -errno from fork) on failure. */
struct sg_instance *sg_supervisor_start_instance(struct sg_supervisor *sv, int *err);

/* The caller's health check found inst ready: STARTING -> RUNNING. */
void sg_supervisor_mark_running(struct sg_supervisor *sv, struct sg_instance *inst);

/* Stops inst: SIGTERM to its group now, SIGKILL after stop_grace_ms. When it
 * has exited, SG_SUPERVISOR_STOPPED is reported, its port is free and inst
 * is freed after the callback. An instance in backoff is stopped at once
 * (the event runs before this returns). Stopping twice is harmless. */
void sg_supervisor_stop_instance(struct sg_supervisor *sv, struct sg_instance *inst);

/* Instances in start order; instances being stopped are included until they
 * have exited. */
size_t sg_supervisor_count(const struct sg_supervisor *sv);
struct sg_instance *sg_supervisor_instance(const struct sg_supervisor *sv, size_t i);

/* CPU % (of one core, since the previous sample or the start) and resident
 * bytes of inst's process, from /proc/<pid>/stat and statm. Returns 0, or
 * -ESRCH when no process runs, -errno when /proc cannot be read. */
int sg_supervisor_sample(struct sg_supervisor *sv, struct sg_instance *inst, double *cpu_percent,
                         uint64_t *rss_bytes);

const char *sg_supervisor_state_name(enum sg_instance_state s);

#endif
