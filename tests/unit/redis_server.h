/*
 * What the unit tests that talk to a real Redis share (test_redis.c,
 * test_pubsub.c, test_cache_l2.c): a redis-server started on a free
 * loopback port, and a harness that runs a libuv loop with bounded waits.
 * Include it once, as "redis_server.h", in a tests/unit/test_*.c file;
 * everything here is static inline, so a test pays for what it uses only.
 * The Makefile compiles only the test_*.c files and does not know of this
 * header: after changing it alone, remove or touch the test binaries.
 *
 * The group's server:
 *   redis_group_setup             the cmocka group setup: ignores SIGPIPE
 *                                 and starts a server on g_port (g_pid), or
 *                                 leaves g_pid 0 when REDIS_BIN is not
 *                                 installed (the test sets sg_log_level)
 *   redis_group_teardown          the cmocka group teardown: kills it
 *   need_redis()                  skips the calling test without a server
 * A server of a test's own (to restart it, or to start it late):
 *   redis_start(port)             starts one, waits (5 s at most) until it
 *                                 accepts; returns its pid or -1. It dies
 *                                 with the test process
 *   redis_kill(pid)               SIGKILL and reap (nothing for pid <= 0)
 * Sockets and time:
 *   free_port()                   a loopback port nothing listens on now
 *   silent_listener(&port)        a listening socket that never answers
 *   now_ms(), sleep_ms(ms)        monotonic ms; a blocking sleep
 * The loop:
 *   run_until(loop, pred, arg, ms) runs loop until pred(arg) or ms pass
 *   run_for(loop, ms)             runs loop for ms
 *   tick                          a no-op timer callback (keeps a loop busy)
 *   flag_set(int *), is_connected(struct sg_redis *): predicates
 *   struct done, on_done          the record of a (void *arg, int err)
 *                                 callback: calls and the last err
 *   finish_loop(loop)             runs loop until every handle has closed
 *                                 and asserts it closes clean
 *   redis_link(loop, port, prefix) a link (sg_redis_new on 127.0.0.1),
 *                                 connected within 2 s
 */
#ifndef SG_TESTS_UNIT_REDIS_SERVER_H
#define SG_TESTS_UNIT_REDIS_SERVER_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "redis/redis.h"

#define REDIS_BIN "/usr/bin/redis-server"

/* ---- redis-server ---- */

static uint16_t g_port; /* the shared server of the group */
static pid_t g_pid;

static inline uint64_t now_ms(void) {
    return uv_hrtime() / 1000000u;
}

static inline void sleep_ms(unsigned ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* A port nothing listens on right now. */
static inline uint16_t free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(sa);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
        if (fd >= 0)
            close(fd);
        return 0;
    }
    close(fd);
    return ntohs(sa.sin_port);
}

static inline bool port_accepts(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

/* Starts redis-server on port and waits (5 s at most) until it accepts.
 * Returns its pid, or -1. */
static inline pid_t redis_start(uint16_t port) {
    char portstr[8];
    snprintf(portstr, sizeof(portstr), "%u", (unsigned)port);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(126);
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0) {
            dup2(devnull, STDIN_FILENO);
            dup2(devnull, STDOUT_FILENO);
            dup2(devnull, STDERR_FILENO);
        }
        execl(REDIS_BIN, "redis-server", "--port", portstr, "--bind", "127.0.0.1", "--save", "",
              "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning", (char *)NULL);
        _exit(127);
    }
    if (pid < 0)
        return -1;
    for (int i = 0; i < 500; i++) {
        if (port_accepts(port))
            return pid;
        if (waitpid(pid, NULL, WNOHANG) == pid)
            return -1;
        sleep_ms(10);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

static inline void redis_kill(pid_t pid) {
    if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
}

static inline int redis_group_setup(void **state) {
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    if (access(REDIS_BIN, X_OK) != 0)
        return 0; /* the tests that need it skip */
    g_port = free_port();
    g_pid = redis_start(g_port);
    return g_pid > 0 ? 0 : -1;
}

static inline int redis_group_teardown(void **state) {
    (void)state;
    redis_kill(g_pid);
    return 0;
}

static inline void need_redis(void) {
    if (g_pid <= 0)
        skip();
}

/* A socket that accepts connections (the kernel does) and never answers;
 * *port is its port. */
static inline int silent_listener(uint16_t *port) {
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(lfd >= 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(sa);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(lfd, 16), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &len), 0);
    *port = ntohs(sa.sin_port);
    return lfd;
}

/* ---- loop harness ---- */

static inline void tick(uv_timer_t *t) {
    (void)t;
}

/* Runs loop until pred(arg) or ms pass; returns pred(arg). */
static inline bool run_until(uv_loop_t *loop, bool (*pred)(void *), void *arg, uint64_t ms) {
    uv_timer_t t;
    uv_timer_init(loop, &t);
    uv_timer_start(&t, tick, 2, 2);
    uint64_t end = now_ms() + ms;
    while (!(pred && pred(arg)) && now_ms() < end)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return pred && pred(arg);
}

static inline void run_for(uv_loop_t *loop, uint64_t ms) {
    run_until(loop, NULL, NULL, ms);
}

static inline bool is_connected(void *arg) {
    return sg_redis_connected(arg);
}

static inline bool flag_set(void *arg) {
    return *(int *)arg != 0;
}

/* The record of a callback (void *arg, int err): how often it ran, and the
 * last err. */
struct done {
    int calls;
    int err;
};

static inline void on_done(void *arg, int err) {
    struct done *d = arg;
    d->calls++;
    d->err = err;
}

/* Runs the loop until every handle has closed; the loop must close clean. */
static inline void finish_loop(uv_loop_t *loop) {
    assert_int_equal(uv_run(loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(loop), 0);
}

/* A link to 127.0.0.1:port with prefix, connected (2 s at most). */
static inline struct sg_redis *redis_link(uv_loop_t *loop, uint16_t port, const char *prefix) {
    struct sg_redis *r = sg_redis_new(loop, "127.0.0.1", port, prefix);
    assert_non_null(r);
    assert_true(run_until(loop, is_connected, r, 2000));
    return r;
}

#endif
