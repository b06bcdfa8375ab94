/*
 * The process supervisor (src/scale/supervisor.c) with real child processes
 * on a real libuv loop: ports and PORT in the environment, stop with SIGTERM
 * and with SIGKILL after the grace, crash restarts with growing backoff and
 * crash-loop reports, /proc sampling, kill-all on free, and PR_SET_PDEATHSIG
 * (a forked gateway stand-in is SIGKILLed; its instance must die too). Every
 * wait is bounded, and each test ends with uv_loop_close() == 0.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/log.h"
#include "scale/supervisor.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

/* ---- harness ---- */

struct rec {
    int counts[SG_SUPERVISOR_EVENT_COUNT];
    uint64_t started_at[16]; /* uv_now of each STARTED */
    int nstarted;
    int stopped_status; /* last_status at STOPPED */
    uint64_t stopped_at;
    uv_loop_t *loop;
};

static void on_event(struct sg_supervisor *sv, struct sg_instance *inst,
                     enum sg_supervisor_event ev, void *arg) {
    (void)sv;
    struct rec *r = arg;
    r->counts[ev]++;
    if (ev == SG_SUPERVISOR_STARTED && r->nstarted < 16)
        r->started_at[r->nstarted++] = uv_now(r->loop);
    if (ev == SG_SUPERVISOR_STOPPED) {
        r->stopped_status = inst->last_status;
        r->stopped_at = uv_now(r->loop);
    }
}

static void tick(uv_timer_t *t) {
    (void)t;
}

/* Runs loop until *flag >= want or ms pass; returns whether it got there. */
static bool run_until(uv_loop_t *loop, const int *flag, int want, uint64_t ms) {
    uv_timer_t t;
    uv_timer_init(loop, &t);
    uv_timer_start(&t, tick, 5, 5);
    uint64_t end = uv_hrtime() + ms * 1000000ull;
    while (*flag < want && uv_hrtime() < end)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return *flag >= want;
}

static void run_for(uv_loop_t *loop, uint64_t ms) {
    int never = 0;
    run_until(loop, &never, 1, ms);
}

static void on_done(void *arg) {
    (*(int *)arg)++;
}

static void free_sv(uv_loop_t *loop, struct sg_supervisor *sv) {
    int done = 0;
    sg_supervisor_free(sv, on_done, &done);
    assert_true(run_until(loop, &done, 1, 2000));
    assert_int_equal(uv_run(loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(loop), 0);
}

static uint16_t base_port(void) {
    return (uint16_t)(30000 + (getpid() % 2000) * 10);
}

static struct sg_supervisor_cfg cfg_for(const char *cmd) {
    struct sg_supervisor_cfg c;
    memset(&c, 0, sizeof(c));
    c.command = cmd;
    c.port_min = base_port();
    c.port_max = (uint16_t)(base_port() + 9);
    return c;
}

static bool pid_dead(int pid) {
    if (kill(pid, 0) == -1 && errno == ESRCH)
        return true;
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return true;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    return p && (p[2] == 'Z' || p[2] == 'X'); /* a zombie init has not reaped */
}

/* ---- tests ---- */

static void test_start_two(void **state) {
    (void)state;
    char dir[] = "/tmp/sg-sv-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "sh -c 'echo $PORT > %s/{port}; exec sleep 30'", dir);
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct rec r = {.loop = &loop};
    struct sg_supervisor_cfg c = cfg_for(cmd);
    struct sg_supervisor *sv = sg_supervisor_new(&loop, &c, on_event, &r);
    assert_non_null(sv);
    int err;
    struct sg_instance *a = sg_supervisor_start_instance(sv, &err);
    struct sg_instance *b = sg_supervisor_start_instance(sv, &err);
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(err, 0);
    assert_int_equal(sg_supervisor_count(sv), 2);
    assert_ptr_equal(sg_supervisor_instance(sv, 0), a);
    assert_ptr_equal(sg_supervisor_instance(sv, 1), b);
    assert_null(sg_supervisor_instance(sv, 2));
    assert_int_not_equal(a->port, b->port);
    assert_in_range(a->port, c.port_min, c.port_max);
    assert_in_range(b->port, c.port_min, c.port_max);
    assert_int_equal(a->state, SG_INSTANCE_STARTING);
    sg_supervisor_mark_running(sv, a);
    assert_int_equal(a->state, SG_INSTANCE_RUNNING);
    assert_int_equal(r.counts[SG_SUPERVISOR_STARTED], 2);

    /* each writes its port, from PORT, to a file named by {port} */
    struct sg_instance *both[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        char path[300];
        snprintf(path, sizeof(path), "%s/%u", dir, (unsigned)both[i]->port);
        unsigned got = 0;
        for (int tries = 0; tries < 200 && got == 0; tries++) {
            FILE *f = fopen(path, "r");
            if (f) {
                if (fscanf(f, "%u", &got) != 1)
                    got = 0;
                fclose(f);
            }
            if (!got)
                run_for(&loop, 10);
        }
        assert_int_equal(got, both[i]->port);
        assert_int_equal(kill(both[i]->pid, 0), 0);
        unlink(path);
    }
    rmdir(dir);
    run_for(&loop, 50);
    assert_int_equal(r.counts[SG_SUPERVISOR_CRASHED], 0);
    int pa = a->pid, pb = b->pid;
    free_sv(&loop, sv);
    assert_true(pid_dead(pa));
    assert_true(pid_dead(pb));
}

static void test_stop_sigterm(void **state) {
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct rec r = {.loop = &loop};
    struct sg_supervisor_cfg c = cfg_for("sleep 30");
    c.stop_grace_ms = 5000;
    struct sg_supervisor *sv = sg_supervisor_new(&loop, &c, on_event, &r);
    struct sg_instance *a = sg_supervisor_start_instance(sv, NULL);
    struct sg_instance *b = sg_supervisor_start_instance(sv, NULL);
    assert_non_null(a);
    assert_non_null(b);
    uint16_t aport = a->port;
    int apid = a->pid;
    run_for(&loop, 50);
    uint64_t t0 = uv_now(&loop);
    sg_supervisor_stop_instance(sv, a);
    assert_int_equal(a->state, SG_INSTANCE_STOPPING);
    sg_supervisor_stop_instance(sv, a); /* twice is harmless */
    assert_true(run_until(&loop, &r.counts[SG_SUPERVISOR_STOPPED], 1, 3000));
    assert_true(WIFSIGNALED(r.stopped_status));
    assert_int_equal(WTERMSIG(r.stopped_status), SIGTERM);
    assert_true(r.stopped_at - t0 < 2000);
    assert_true(pid_dead(apid));
    assert_int_equal(r.counts[SG_SUPERVISOR_CRASHED], 0);
    assert_int_equal(sg_supervisor_count(sv), 1);
    assert_ptr_equal(sg_supervisor_instance(sv, 0), b);
    /* the port is free again: the next instance gets it */
    struct sg_instance *d = sg_supervisor_start_instance(sv, NULL);
    assert_non_null(d);
    assert_int_equal(d->port, aport);
    free_sv(&loop, sv);
}

static void test_stop_sigkill_after_grace(void **state) {
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct rec r = {.loop = &loop};
    struct sg_supervisor_cfg c = cfg_for("sh -c 'trap \"\" TERM; while :; do sleep 1; done'");
    c.stop_grace_ms = 300;
    struct sg_supervisor *sv = sg_supervisor_new(&loop, &c, on_event, &r);
    struct sg_instance *a = sg_supervisor_start_instance(sv, NULL);
    assert_non_null(a);
    int pid = a->pid;
    run_for(&loop, 300); /* let the shell set its trap */
    uint64_t t0 = uv_now(&loop);
    sg_supervisor_stop_instance(sv, a);
    assert_true(run_until(&loop, &r.counts[SG_SUPERVISOR_STOPPED], 1, 3000));
    assert_true(WIFSIGNALED(r.stopped_status));
    assert_int_equal(WTERMSIG(r.stopped_status), SIGKILL);
    assert_true(r.stopped_at - t0 >= 290);
    assert_true(r.stopped_at - t0 < 2000);
    assert_true(pid_dead(pid));
    assert_int_equal(sg_supervisor_count(sv), 0);
    free_sv(&loop, sv);
}

static void test_crash_backoff_and_loop(void **state) {
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct rec r = {.loop = &loop};
    struct sg_supervisor_cfg c = cfg_for("sh -c 'exit 3'");
    c.backoff_base_ms = 50;
    c.backoff_max_ms = 400;
    c.crash_loop_restarts = 4;
    c.crash_loop_window_ms = 10000;
    struct sg_supervisor *sv = sg_supervisor_new(&loop, &c, on_event, &r);
    struct sg_instance *a = sg_supervisor_start_instance(sv, NULL);
    assert_non_null(a);
    uint16_t port = a->port;
    assert_true(run_until(&loop, &r.counts[SG_SUPERVISOR_CRASH_LOOP], 1, 5000));
    assert_int_equal(r.counts[SG_SUPERVISOR_CRASHED], 4);
    assert_int_equal(a->state, SG_INSTANCE_BACKOFF);
    assert_true(a->crash_loop);
    assert_true(WIFEXITED(a->last_status));
    assert_int_equal(WEXITSTATUS(a->last_status), 3);
    assert_int_equal(a->port, port);
    assert_int_equal(a->restarts, 3);
    assert_int_equal(a->pid, 0);
    /* restarts came after 50, 100, 200 ms (+ the time to crash) */
    assert_int_equal(r.nstarted, 4);
    uint64_t g1 = r.started_at[1] - r.started_at[0];
    uint64_t g2 = r.started_at[2] - r.started_at[1];
    uint64_t g3 = r.started_at[3] - r.started_at[2];
    assert_true(g1 >= 50 && g2 >= 100 && g3 >= 200);
    assert_true(g2 > g1 && g3 > g2);
    /* still retrying, at the max backoff, reported once */
    assert_true(run_until(&loop, &r.counts[SG_SUPERVISOR_CRASHED], 5, 2000));
    assert_true(r.started_at[4] - r.started_at[3] >= 400);
    assert_int_equal(r.counts[SG_SUPERVISOR_CRASH_LOOP], 1);
    /* stopping during backoff is immediate */
    if (a->state != SG_INSTANCE_BACKOFF)
        assert_true(run_until(&loop, &r.counts[SG_SUPERVISOR_CRASHED], 6, 2000));
    sg_supervisor_stop_instance(sv, a);
    assert_int_equal(r.counts[SG_SUPERVISOR_STOPPED], 1);
    assert_int_equal(sg_supervisor_count(sv), 0);
    free_sv(&loop, sv);
}

static void test_sample(void **state) {
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct sg_supervisor_cfg c = cfg_for("sh -c 'while :; do :; done'");
    struct sg_supervisor *sv = sg_supervisor_new(&loop, &c, NULL, NULL);
    struct sg_instance *a = sg_supervisor_start_instance(sv, NULL);
    assert_non_null(a);
    double cpu = -1;
    uint64_t rss = 0;
    assert_int_equal(sg_supervisor_sample(sv, a, &cpu, &rss), 0);
    assert_true(rss > 0);
    run_for(&loop, 500);
    assert_int_equal(sg_supervisor_sample(sv, a, &cpu, &rss), 0);
    assert_true(rss > 0);
    assert_true(cpu > 20.0 && cpu < 150.0);
    free_sv(&loop, sv);

    uv_loop_init(&loop);
    c = cfg_for("sleep 30");
    sv = sg_supervisor_new(&loop, &c, NULL, NULL);
    a = sg_supervisor_start_instance(sv, NULL);
    run_for(&loop, 300);
    assert_int_equal(sg_supervisor_sample(sv, a, &cpu, &rss), 0);
    assert_true(rss > 0);
    assert_true(cpu >= 0.0 && cpu < 20.0);
    free_sv(&loop, sv);
}

static void test_free_kills_all(void **state) {
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct rec r = {.loop = &loop};
    struct sg_supervisor_cfg c = cfg_for("sleep 30");
    struct sg_supervisor *sv = sg_supervisor_new(&loop, &c, on_event, &r);
    int pids[3];
    for (int i = 0; i < 3; i++) {
        struct sg_instance *inst = sg_supervisor_start_instance(sv, NULL);
        assert_non_null(inst);
        pids[i] = inst->pid;
    }
    /* one of them stopping: it must be cleaned up too */
    sg_supervisor_stop_instance(sv, sg_supervisor_instance(sv, 0));
    free_sv(&loop, sv);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(kill(pids[i], 0), -1);
        assert_int_equal(errno, ESRCH);
    }
    assert_int_equal(r.counts[SG_SUPERVISOR_STOPPED], 0); /* no events after free */
}

/* Whether nothing listens on 127.0.0.1:port now. */
static bool port_free(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

static void test_ports_exhausted(void **state) {
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct sg_supervisor_cfg c = cfg_for("sleep 30");
    /* two neighbouring ports free now (the base port may be taken by some
     * other program's connection: it is in the ephemeral range) */
    while (!port_free(c.port_min) || !port_free((uint16_t)(c.port_min + 1)))
        c.port_min = (uint16_t)(c.port_min + 2);
    c.port_max = (uint16_t)(c.port_min + 1);
    /* a listener of ours holds port_min */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(c.port_min)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 1), 0);
    struct sg_supervisor *sv = sg_supervisor_new(&loop, &c, NULL, NULL);
    int err = 0;
    struct sg_instance *a = sg_supervisor_start_instance(sv, &err);
    assert_non_null(a);
    assert_int_equal(a->port, c.port_max);
    assert_null(sg_supervisor_start_instance(sv, &err));
    assert_int_equal(err, -EADDRINUSE);
    close(fd);
    free_sv(&loop, sv);

    struct sg_supervisor_cfg bad = cfg_for("sleep 30");
    bad.port_min = 10;
    bad.port_max = 9;
    uv_loop_init(&loop);
    assert_null(sg_supervisor_new(&loop, &bad, NULL, NULL));
    bad = cfg_for(NULL);
    assert_null(sg_supervisor_new(&loop, &bad, NULL, NULL));
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* A forked stand-in for the gateway starts an instance and is SIGKILLed:
 * the kernel must kill the instance (PR_SET_PDEATHSIG). */
static void test_pdeathsig(void **state) {
    (void)state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t gw = fork();
    assert_true(gw >= 0);
    if (gw == 0) {
        close(fds[0]);
        uv_loop_t loop;
        uv_loop_init(&loop);
        struct sg_supervisor_cfg c = cfg_for("sleep 30");
        c.port_min = (uint16_t)(c.port_min + 5);
        struct sg_supervisor *sv = sg_supervisor_new(&loop, &c, NULL, NULL);
        struct sg_instance *inst = sv ? sg_supervisor_start_instance(sv, NULL) : NULL;
        int pid = inst ? inst->pid : -1;
        if (write(fds[1], &pid, sizeof(pid)) != sizeof(pid))
            _exit(1);
        uv_run(&loop, UV_RUN_DEFAULT); /* the SIGCHLD handle keeps it alive */
        _exit(0);
    }
    close(fds[1]);
    int pid = -1;
    assert_int_equal(read(fds[0], &pid, sizeof(pid)), sizeof(pid));
    close(fds[0]);
    assert_true(pid > 0);
    assert_int_equal(kill(pid, 0), 0);
    kill(gw, SIGKILL);
    int st;
    assert_int_equal(waitpid(gw, &st, 0), gw);
    bool dead = false;
    for (int i = 0; i < 200 && !dead; i++) {
        dead = pid_dead(pid);
        if (!dead)
            usleep(10000);
    }
    if (!dead)
        kill(pid, SIGKILL); /* do not leave it behind even if the test fails */
    assert_true(dead);
}

int main(void) {
    sg_log_level = SG_LOG_ERROR - 1; /* quiet: crash tests log on purpose */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_start_two),
        cmocka_unit_test(test_stop_sigterm),
        cmocka_unit_test(test_stop_sigkill_after_grace),
        cmocka_unit_test(test_crash_backoff_and_loop),
        cmocka_unit_test(test_sample),
        cmocka_unit_test(test_free_kills_all),
        cmocka_unit_test(test_ports_exhausted),
        cmocka_unit_test(test_pdeathsig),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
