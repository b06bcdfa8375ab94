/*
 * Active health checks (src/pool/health.c) on a real libuv loop against real
 * loopback servers: a tiny backend in this file answers a chosen status,
 * closes at once, never answers, or sends a broken or oversized head. Each
 * test builds its config by hand, runs the loop for a bounded time, checks
 * the shared server state (pool/state.h) and the log lines, and ends with
 * uv_loop_close() == 0: every handle closed, nothing leaked (ASan/LSan).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "config/config.h"
#include "core/intern.h"
#include "core/list.h"
#include "core/log.h"
#include "core/parse.h"
#include "pool/health.h"
#include "pool/state.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* ---- the test backend ---- */

enum tsrv_mode {
    TS_ANSWER = 0, /* answers `status` with an empty body, then closes */
    TS_CLOSE,      /* closes each connection as soon as it is accepted */
    TS_SILENT,     /* reads the request and never answers */
    TS_HUGE,       /* a response head larger than the checker's 4 KiB */
    TS_GARBAGE,    /* something that is not HTTP */
    TS_INTERIM     /* a 103 head, then `status` */
};

struct tsrv {
    uv_tcp_t listener;
    enum tsrv_mode mode;
    int status;
    int conns;       /* connections accepted */
    int requests;    /* complete request heads received */
    int open;        /* connections open now */
    int max_open;    /* most open at once */
    char last[2048]; /* the last request head */
    char text[64];   /* "127.0.0.1:PORT" */
    struct sg_list clients;
};

struct tclient {
    struct sg_list link;
    struct tsrv *srv;
    uv_tcp_t tcp;
    uv_write_t wreq;
    size_t len;
    bool answered;
    char *out;
    char buf[2048];
};

static void tclient_close_cb(uv_handle_t *h) {
    struct tclient *c = h->data;
    free(c->out);
    free(c);
}

static void tclient_close(struct tclient *c) {
    if (uv_is_closing((uv_handle_t *)&c->tcp))
        return;
    sg_list_remove(&c->link);
    c->srv->open--;
    uv_close((uv_handle_t *)&c->tcp, tclient_close_cb);
}

static void tclient_written(uv_write_t *req, int status) {
    (void)status;
    tclient_close(req->data);
}

static void tclient_send(struct tclient *c, char *out) {
    c->out = out;
    uv_buf_t b = uv_buf_init(out, (unsigned)strlen(out));
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, tclient_written) != 0)
        tclient_close(c);
}

/* The answer for the server's mode (malloc'ed), NULL for none. */
static char *tsrv_answer(const struct tsrv *s) {
    char *out = malloc(8192);
    assert_non_null(out);
    switch (s->mode) {
    case TS_ANSWER:
        snprintf(out, 8192, "HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                 s->status);
        return out;
    case TS_INTERIM:
        snprintf(out, 8192,
                 "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 %d X\r\n\r\n",
                 s->status);
        return out;
    case TS_GARBAGE:
        snprintf(out, 8192, "SSH-2.0-OpenSSH_9.6\r\n\r\n");
        return out;
    case TS_HUGE: {
        size_t n = (size_t)snprintf(out, 8192, "HTTP/1.1 200 OK\r\n");
        while (n < 5000)
            n += (size_t)snprintf(out + n, 8192 - n, "X-Pad: %0100d\r\n", 0);
        snprintf(out + n, 8192 - n, "\r\n");
        return out;
    }
    default:
        free(out);
        return NULL;
    }
}

static void tclient_alloc(uv_handle_t *h, size_t hint, uv_buf_t *out) {
    struct tclient *c = h->data;
    (void)hint;
    out->base = c->buf + c->len;
    out->len = sizeof(c->buf) - 1 - c->len;
}

static void tclient_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
    struct tclient *c = st->data;
    (void)buf;
    if (nread < 0) {
        tclient_close(c);
        return;
    }
    c->len += (size_t)nread;
    c->buf[c->len] = 0;
    if (c->answered || !strstr(c->buf, "\r\n\r\n"))
        return;
    c->answered = true;
    struct tsrv *s = c->srv;
    s->requests++;
    snprintf(s->last, sizeof(s->last), "%s", c->buf);
    char *out = tsrv_answer(s);
    if (out)
        tclient_send(c, out);
}

static void tsrv_on_conn(uv_stream_t *l, int status) {
    struct tsrv *s = l->data;
    assert_int_equal(status, 0);
    struct tclient *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->srv = s;
    uv_tcp_init(l->loop, &c->tcp);
    c->tcp.data = c;
    c->wreq.data = c;
    sg_list_insert_tail(&s->clients, &c->link);
    s->conns++;
    if (++s->open > s->max_open)
        s->max_open = s->open;
    assert_int_equal(uv_accept(l, (uv_stream_t *)&c->tcp), 0);
    if (s->mode == TS_CLOSE)
        tclient_close(c);
    else
        uv_read_start((uv_stream_t *)&c->tcp, tclient_alloc, tclient_read);
}

static void tsrv_start(uv_loop_t *loop, struct tsrv *s, enum tsrv_mode mode, int status) {
    memset(s, 0, sizeof(*s));
    s->mode = mode;
    s->status = status;
    sg_list_init(&s->clients);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(uv_tcp_init(loop, &s->listener), 0);
    s->listener.data = s;
    assert_int_equal(uv_tcp_bind(&s->listener, (const struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&s->listener, 64, tsrv_on_conn), 0);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    assert_int_equal(uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &len), 0);
    snprintf(s->text, sizeof(s->text), "127.0.0.1:%d",
             ntohs(((struct sockaddr_in *)&ss)->sin_port));
}

static void tsrv_stop(struct tsrv *s) {
    if (s->listener.loop == NULL || uv_is_closing((uv_handle_t *)&s->listener))
        return;
    uv_close((uv_handle_t *)&s->listener, NULL);
    while (!sg_list_empty(&s->clients))
        tclient_close(sg_container_of(s->clients.next, struct tclient, link));
}

/* "127.0.0.1:PORT" of a port nobody listens on (connect: refused). */
static void closed_port(char *text, size_t n) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t len = sizeof(a);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    snprintf(text, n, "127.0.0.1:%d", ntohs(a.sin_port));
}

/* ---- running the loop ---- */

struct waiter {
    bool (*pred)(void *);
    void *arg;
    uint64_t deadline;
    bool ok;
};

static void waiter_poll(uv_timer_t *h) {
    struct waiter *w = h->data;
    if (w->pred && w->pred(w->arg)) {
        w->ok = true;
        uv_stop(h->loop);
    } else if (uv_now(h->loop) >= w->deadline) {
        uv_stop(h->loop);
    }
}

static void flag_close_cb(uv_handle_t *h) {
    *(bool *)h->data = true;
}

/* Closes a stack timer and runs the loop until its close callback ran. */
static void close_stack_timer(uv_timer_t *t) {
    bool closed = false;
    t->data = &closed;
    uv_close((uv_handle_t *)t, flag_close_cb);
    while (!closed)
        uv_run(t->loop, UV_RUN_NOWAIT);
}

/* Runs the loop until pred(arg) holds (polled every 5 ms) or max_ms passed.
 * pred NULL: runs for max_ms. Returns whether pred held. */
static bool run_until(uv_loop_t *loop, bool (*pred)(void *), void *arg, uint64_t max_ms) {
    uv_timer_t tm;
    uv_update_time(loop);
    struct waiter w = {.pred = pred, .arg = arg, .deadline = uv_now(loop) + max_ms};
    uv_timer_init(loop, &tm);
    tm.data = &w;
    uv_timer_start(&tm, waiter_poll, 5, 5);
    uv_run(loop, UV_RUN_DEFAULT);
    close_stack_timer(&tm);
    return w.ok;
}

/* ---- capturing the log ---- */

static int saved_stderr = -1;
static char log_path[64];

static void log_capture(void) {
    snprintf(log_path, sizeof(log_path), "/tmp/test_health.XXXXXX");
    int fd = mkstemp(log_path);
    assert_true(fd >= 0);
    fflush(stderr);
    saved_stderr = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    close(fd);
}

/* Ends the capture; returns what was logged (static buffer). */
static const char *log_captured(void) {
    static char text[16384];
    if (saved_stderr < 0)
        return "";
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    saved_stderr = -1;
    FILE *f = fopen(log_path, "r");
    assert_non_null(f);
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    text[n] = 0;
    fclose(f);
    unlink(log_path);
    fputs(text, stderr); /* still shown with the test's output */
    return text;
}

static void assert_logged(const char *log, const char *want) {
    if (!strstr(log, want))
        fail_msg("log lacks \"%s\"; it has:\n%s", want, log);
}

/* ---- fixture: a loop, backends, a hand-built config ---- */

struct fx {
    uv_loop_t loop;
    struct tsrv srv[3];
    char text[3][64]; /* server addresses */
    struct sg_server servers[3];
    struct sg_pool pools[3];
    struct sg_config cfg;
    uint64_t transitions0;
};

static int fx_setup(void **state) {
    struct fx *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    f->transitions0 = sg_health_transitions();
    *state = f;
    return 0;
}

static void guard_fire(uv_timer_t *h) {
    uv_stop(h->loop);
}

static int fx_teardown(void **state) {
    struct fx *f = *state;
    if (saved_stderr >= 0)
        log_captured();
    sg_health_stop();
    for (size_t i = 0; i < N(f->srv); i++)
        tsrv_stop(&f->srv[i]);
    /* Nothing may stay active: the guard (unreferenced, so it does not keep
     * the loop alive itself) only ends a hang if something did. */
    uv_timer_t guard;
    uv_timer_init(&f->loop, &guard);
    uv_timer_start(&guard, guard_fire, 2000, 0);
    uv_unref((uv_handle_t *)&guard);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    close_stack_timer(&guard);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
    return 0;
}

/* Server i at text, with a fresh state record (ids are process-wide, and a
 * port may come back in a later test). */
static struct sg_server *fx_server(struct fx *f, size_t i, const char *text) {
    struct sg_server *s = &f->servers[i];
    snprintf(f->text[i], sizeof(f->text[i]), "%s", text);
    memset(s, 0, sizeof(*s));
    s->text = f->text[i];
    assert_int_equal(sg_parse_addr(s->text, &s->addr, &s->addrlen), 0);
    s->weight = 1;
    s->id = sg_intern(s->text);
    struct sg_server_state *st = sg_server_state(s->id);
    atomic_store(&st->health, SG_HEALTH_UP);
    atomic_store(&st->check_ok, 0);
    atomic_store(&st->check_fail, 0);
    atomic_store(&st->ejected_until, 0);
    atomic_store(&st->ejections, 0);
    atomic_store(&st->recovered_at, 0);
    return s;
}

/* Backend i in mode/status, and server i pointing at it. */
static struct sg_server *fx_backend(struct fx *f, size_t i, enum tsrv_mode mode, int status) {
    tsrv_start(&f->loop, &f->srv[i], mode, status);
    return fx_server(f, i, f->srv[i].text);
}

/* Pool i named name over servers[first .. first+n), checked every 50 ms. */
static struct sg_pool *fx_pool(struct fx *f, size_t i, const char *name, size_t first, size_t n) {
    struct sg_pool *p = &f->pools[i];
    memset(p, 0, sizeof(*p));
    p->name = (char *)name;
    p->servers = &f->servers[first];
    p->nservers = n;
    p->nprimary = n;
    p->health.enabled = true;
    p->health.method = "GET";
    p->health.path = "/health";
    p->health.interval_ms = 50;
    p->health.timeout_ms = 200;
    p->health.status_min = 200;
    p->health.status_max = 399;
    p->health.rise = 2;
    p->health.fall = 3;
    return p;
}

static void fx_apply(struct fx *f, size_t npools) {
    f->cfg.pools = f->pools;
    f->cfg.npools = npools;
    sg_health_apply(&f->loop, &f->cfg);
}

static struct sg_server_state *st_of(const struct sg_server *s) {
    return sg_server_state(s->id);
}

static bool is_down(void *arg) {
    return atomic_load(&st_of(arg)->health) == SG_HEALTH_DOWN;
}

static bool is_up(void *arg) {
    return atomic_load(&st_of(arg)->health) == SG_HEALTH_UP;
}

static bool two_fails(void *arg) {
    return atomic_load(&st_of(arg)->check_fail) >= 2;
}

static bool one_pass(void *arg) {
    return atomic_load(&st_of(arg)->check_ok) >= 1;
}

static bool three_passes(void *arg) {
    return atomic_load(&st_of(arg)->check_ok) >= 3;
}

static bool got_request(void *arg) {
    return ((struct tsrv *)arg)->requests >= 1;
}

static bool got_conn(void *arg) {
    return ((struct tsrv *)arg)->conns >= 1;
}

static bool three_requests_each(void *arg) {
    struct fx *f = arg;
    return f->srv[0].requests >= 3 && f->srv[1].requests >= 3;
}

static uint64_t transitions_since(const struct fx *f) {
    return sg_health_transitions() - f->transitions0;
}

/* ---- tests ---- */

/* A healthy server stays UP; the request is exactly the documented one. */
static void test_up_stays_up(void **state) {
    struct fx *f = *state;
    struct sg_server *s = fx_backend(f, 0, TS_ANSWER, 200);
    fx_pool(f, 0, "app", 0, 1);
    fx_apply(f, 1);
    assert_true(run_until(&f->loop, three_passes, s, 2000));
    struct sg_server_state *st = st_of(s);
    assert_int_equal(atomic_load(&st->health), SG_HEALTH_UP);
    assert_true(f->srv[0].requests >= 3);
    assert_int_equal(atomic_load(&st->check_fail), 0);
    assert_int_equal(f->srv[0].max_open, 1);
    assert_int_equal(transitions_since(f), 0);
    char want[256];
    snprintf(want, sizeof(want),
             "GET /health HTTP/1.1\r\nHost: %s\r\nUser-Agent: scalegate-health\r\n"
             "Connection: close\r\n\r\n",
             s->text);
    assert_string_equal(f->srv[0].last, want);
}

/* The first check comes soon after start, whatever the interval. */
static void test_first_check_soon(void **state) {
    struct fx *f = *state;
    fx_backend(f, 0, TS_ANSWER, 200);
    struct sg_pool *p = fx_pool(f, 0, "app", 0, 1);
    p->health.interval_ms = 60000;
    fx_apply(f, 1);
    uint64_t t0 = uv_now(&f->loop);
    assert_true(run_until(&f->loop, got_request, &f->srv[0], 1000));
    assert_true(uv_now(&f->loop) - t0 <= 300);
    run_until(&f->loop, NULL, NULL, 150);
    assert_int_equal(f->srv[0].requests, 1);
}

/* Status 500: DOWN after exactly fall failed checks, logged with the reason. */
static void test_status_500_down(void **state) {
    struct fx *f = *state;
    struct sg_server *s = fx_backend(f, 0, TS_ANSWER, 500);
    fx_pool(f, 0, "app", 0, 1); /* fall 3 */
    log_capture();
    fx_apply(f, 1);
    assert_true(run_until(&f->loop, two_fails, s, 2000));
    assert_int_equal(atomic_load(&st_of(s)->health), SG_HEALTH_UP);
    assert_true(run_until(&f->loop, is_down, s, 2000));
    assert_int_equal(atomic_load(&st_of(s)->check_fail), 3);
    assert_int_equal(atomic_load(&st_of(s)->check_ok), 0);
    assert_int_equal(transitions_since(f), 1);
    const char *log = log_captured();
    char want[160];
    snprintf(want, sizeof(want),
             "warn: pool app: server %s is DOWN: status 500 not in 200-399 (3 checks failed in a "
             "row)",
             s->text);
    assert_logged(log, want);
}

/* Nobody listening: DOWN within fall x interval (plus the first delay). */
static void test_refused_down(void **state) {
    struct fx *f = *state;
    char text[64];
    closed_port(text, sizeof(text));
    struct sg_server *s = fx_server(f, 0, text);
    fx_pool(f, 0, "app", 0, 1);
    log_capture();
    uint64_t t0 = uv_now(&f->loop);
    fx_apply(f, 1);
    assert_true(run_until(&f->loop, is_down, s, 2000));
    assert_true(uv_now(&f->loop) - t0 <= 3 * 50 + 100 + 150);
    assert_int_equal(transitions_since(f), 1);
    const char *log = log_captured();
    char want[160];
    snprintf(want, sizeof(want),
             "pool app: server %s is DOWN: connect: connection refused (3 checks failed in a row)",
             text);
    assert_logged(log, want);
}

/* Accepts and never answers: each check times out; one in flight at most
 * although the timeout is longer than the interval. */
static void test_silent_timeout_down(void **state) {
    struct fx *f = *state;
    struct sg_server *s = fx_backend(f, 0, TS_SILENT, 0);
    struct sg_pool *p = fx_pool(f, 0, "app", 0, 1);
    p->health.timeout_ms = 120;
    p->health.fall = 2;
    log_capture();
    uint64_t t0 = uv_now(&f->loop);
    fx_apply(f, 1);
    assert_true(run_until(&f->loop, is_down, s, 3000));
    assert_true(uv_now(&f->loop) - t0 >= 2 * 120);
    assert_int_equal(f->srv[0].max_open, 1);
    assert_true(f->srv[0].requests >= 2);
    const char *log = log_captured();
    char want[160];
    snprintf(want, sizeof(want),
             "pool app: server %s is DOWN: timeout after 120 ms (2 checks failed in a row)",
             s->text);
    assert_logged(log, want);
}

/* DOWN, then the server heals: UP after rise passes (not one earlier), with
 * recovered_at set and any ejection cleared. */
static void test_recovery(void **state) {
    struct fx *f = *state;
    struct sg_server *s = fx_backend(f, 0, TS_ANSWER, 503);
    struct sg_pool *p = fx_pool(f, 0, "app", 0, 1);
    p->health.fall = 2;
    p->health.rise = 2;
    log_capture();
    fx_apply(f, 1);
    assert_true(run_until(&f->loop, is_down, s, 2000));
    struct sg_server_state *st = st_of(s);
    atomic_store(&st->ejected_until, sg_state_now() + 600000);
    atomic_store(&st->ejections, 3);
    f->srv[0].status = 204;
    assert_true(run_until(&f->loop, one_pass, s, 2000));
    assert_int_equal(atomic_load(&st->health), SG_HEALTH_DOWN);
    uint64_t before = sg_state_now();
    assert_true(run_until(&f->loop, is_up, s, 2000));
    assert_int_equal(atomic_load(&st->check_ok), 2);
    assert_int_equal(atomic_load(&st->check_fail), 0);
    assert_true(atomic_load(&st->recovered_at) >= before);
    assert_true(atomic_load(&st->recovered_at) <= sg_state_now());
    assert_int_equal(atomic_load(&st->ejected_until), 0);
    assert_int_equal(atomic_load(&st->ejections), 0);
    assert_true(sg_server_usable(st, sg_state_now()));
    assert_int_equal(transitions_since(f), 2);
    const char *log = log_captured();
    char want[160];
    snprintf(want, sizeof(want), "info: pool app: server %s is UP again (2 checks passed)",
             s->text);
    assert_logged(log, want);
    snprintf(want, sizeof(want),
             "warn: pool app: server %s is DOWN: status 503 not in 200-399 (2 checks failed in "
             "a row)",
             s->text);
    assert_logged(log, want);
}

/* Reapply without a pool: its checks stop, and its DOWN server, checked
 * nowhere any more, is released (UP); the other pool goes on. */
static void test_reapply_removed_pool(void **state) {
    struct fx *f = *state;
    struct sg_server *a = fx_backend(f, 0, TS_ANSWER, 200);
    struct sg_server *b = fx_backend(f, 1, TS_ANSWER, 500);
    fx_pool(f, 0, "keep", 0, 1);
    fx_pool(f, 1, "gone", 1, 1);
    fx_apply(f, 2);
    assert_true(run_until(&f->loop, is_down, b, 2000));
    assert_true(run_until(&f->loop, three_requests_each, f, 2000));
    fx_apply(f, 1);
    /* The removed target is gone at once; a request already on the wire
     * may still arrive. */
    assert_int_equal(atomic_load(&st_of(b)->health), SG_HEALTH_UP);
    assert_int_equal(atomic_load(&st_of(b)->check_fail), 0);
    assert_int_equal(transitions_since(f), 2);
    run_until(&f->loop, NULL, NULL, 30);
    int b_requests = f->srv[1].requests;
    int a_requests = f->srv[0].requests;
    run_until(&f->loop, NULL, NULL, 300);
    assert_int_equal(f->srv[1].requests, b_requests);
    assert_true(f->srv[0].requests >= a_requests + 3);
    assert_int_equal(atomic_load(&st_of(a)->health), SG_HEALTH_UP);
    /* Nothing configured at all: every check stops. */
    sg_health_apply(&f->loop, NULL);
    run_until(&f->loop, NULL, NULL, 30);
    a_requests = f->srv[0].requests;
    run_until(&f->loop, NULL, NULL, 200);
    assert_int_equal(f->srv[0].requests, a_requests);
}

/* Reapply with changed settings: the same target keeps its counters and
 * verdict and takes the new path, expectation and interval. */
static void test_reapply_keeps_state(void **state) {
    struct fx *f = *state;
    struct sg_server *s = fx_backend(f, 0, TS_ANSWER, 500);
    struct sg_pool *p = fx_pool(f, 0, "app", 0, 1);
    p->health.fall = 2;
    fx_apply(f, 1);
    assert_true(run_until(&f->loop, is_down, s, 2000));
    uint32_t fails = atomic_load(&st_of(s)->check_fail);
    p->health.path = "/ready";
    p->health.status_max = 599;
    fx_apply(f, 1);
    assert_int_equal(atomic_load(&st_of(s)->health), SG_HEALTH_DOWN);
    assert_int_equal(atomic_load(&st_of(s)->check_fail), fails);
    assert_true(run_until(&f->loop, is_up, s, 2000));
    assert_non_null(strstr(f->srv[0].last, "GET /ready HTTP/1.1\r\n"));
    assert_int_equal(transitions_since(f), 2);
    /* A longer interval: the timer restarts with it. */
    p->health.interval_ms = 60000;
    fx_apply(f, 1);
    run_until(&f->loop, NULL, NULL, 30);
    int n = f->srv[0].requests;
    run_until(&f->loop, NULL, NULL, 300);
    assert_int_equal(f->srv[0].requests, n);
}

/* Each kind of broken answer fails a check. */
static void test_bad_answers(void **state) {
    struct fx *f = *state;
    static const struct {
        enum tsrv_mode mode;
        int status;
        const char *why;
    } cases[] = {
        {TS_CLOSE, 0, NULL}, /* EOF or a reset, depending on timing */
        {TS_HUGE, 0, "response head larger than 4096 bytes"},
        {TS_GARBAGE, 0, "invalid response: "},
        {TS_ANSWER, 404, "status 404, expected 200"},
        {TS_INTERIM, 301, "status 301, expected 200"},
    };
    struct sg_server *s = fx_backend(f, 0, TS_ANSWER, 200);
    struct sg_pool *p = fx_pool(f, 0, "app", 0, 1);
    p->health.status_max = 200;
    p->health.fall = 1;
    for (size_t i = 0; i < N(cases); i++) {
        struct sg_server_state *st = st_of(s);
        f->srv[0].mode = cases[i].mode;
        f->srv[0].status = cases[i].status;
        atomic_store(&st->health, SG_HEALTH_UP);
        atomic_store(&st->check_fail, 0);
        log_capture();
        if (i == 0)
            fx_apply(f, 1);
        bool down = run_until(&f->loop, is_down, s, 2000);
        const char *log = log_captured();
        if (!down)
            fail_msg("case %zu: still up", i);
        assert_logged(log, "is DOWN: ");
        if (cases[i].why)
            assert_logged(log, cases[i].why);
    }
}

/* HEAD with a single expected status, and a 103 head before the answer. */
static void test_head_interim_exact_status(void **state) {
    struct fx *f = *state;
    struct sg_server *s = fx_backend(f, 0, TS_INTERIM, 204);
    struct sg_pool *p = fx_pool(f, 0, "app", 0, 1);
    p->health.method = "HEAD";
    p->health.path = "/ping?x=1";
    p->health.host = "health.internal";
    p->health.status_min = 204;
    p->health.status_max = 204;
    p->health.fall = 1;
    fx_apply(f, 1);
    run_until(&f->loop, NULL, NULL, 300);
    assert_int_equal(atomic_load(&st_of(s)->health), SG_HEALTH_UP);
    assert_true(atomic_load(&st_of(s)->check_ok) >= 3);
    assert_non_null(strstr(f->srv[0].last, "HEAD /ping?x=1 HTTP/1.1\r\nHost: health.internal\r\n"));
}

/* Backups are checked too; a server in two pools gets one target per pool
 * (both requests arrive); a pool without health is not checked. */
static void test_targets_per_pool(void **state) {
    struct fx *f = *state;
    fx_backend(f, 0, TS_ANSWER, 200);
    fx_backend(f, 1, TS_ANSWER, 200);
    fx_backend(f, 2, TS_ANSWER, 200);
    struct sg_pool *p = fx_pool(f, 0, "app", 0, 2);
    p->nprimary = 1;
    f->servers[1].backup = true;
    struct sg_pool *q = fx_pool(f, 1, "other", 1, 1);
    q->health.path = "/other";
    struct sg_pool *r = fx_pool(f, 2, "unchecked", 2, 1);
    r->health.enabled = false;
    uint64_t t0 = uv_now(&f->loop);
    fx_apply(f, 3);
    fx_apply(f, 3); /* the same config again: no duplicate targets */
    assert_true(run_until(&f->loop, three_requests_each, f, 2000));
    run_until(&f->loop, NULL, NULL, 200);
    assert_true((uint64_t)f->srv[0].requests <= (uv_now(&f->loop) - t0) / 50 + 1);
    /* srv1 has two targets (app, other) at the same interval as srv0's one. */
    assert_true(f->srv[1].requests >= f->srv[0].requests * 3 / 2);
    assert_int_equal(f->srv[2].requests, 0);
    assert_int_equal(f->srv[0].max_open, 1);
}

/* Stopping with a check in flight (a long timeout) closes it at once. */
static void test_stop_in_flight(void **state) {
    struct fx *f = *state;
    fx_backend(f, 0, TS_SILENT, 0);
    struct sg_pool *p = fx_pool(f, 0, "app", 0, 1);
    p->health.timeout_ms = 60000;
    fx_apply(f, 1);
    assert_true(run_until(&f->loop, got_conn, &f->srv[0], 2000));
    uint64_t t0 = uv_now(&f->loop);
    sg_health_stop();
    run_until(&f->loop, NULL, NULL, 50);
    assert_int_equal(f->srv[0].open, 0); /* the checker closed its end */
    assert_true(uv_now(&f->loop) - t0 < 1000);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_up_stays_up, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_first_check_soon, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_status_500_down, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_refused_down, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_silent_timeout_down, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_recovery, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_reapply_removed_pool, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_reapply_keeps_state, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_bad_answers, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_head_interim_exact_status, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_targets_per_pool, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_stop_in_flight, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
