/*
 * The admin API's HTTP server (src/admin/admin.c) over real loopback
 * sockets. Each test starts a server on 127.0.0.1 port 0 with test handlers,
 * runs its libuv loop in a second thread and talks to it from the test's
 * thread with plain blocking sockets, so that cmocka's assertions run on the
 * main thread. The loop is stopped through a uv_async_t that calls
 * sg_admin_close; the teardown then checks uv_loop_close() == 0 (every
 * handle closed) and ASan/LSan check that everything was freed.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "admin/admin.h"
#include "core/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TOKEN "s3cret-token"
#define AUTH  "Authorization: Bearer " TOKEN "\r\n"

/* ---- fixture: a server and the thread running its loop ---- */

struct fx {
    uv_loop_t loop;
    uv_async_t stop;
    uv_thread_t thread;
    struct sg_admin *a;
    int port;
    bool running;
    _Atomic bool closed_by_handler;
    _Atomic int handler_calls;
};

static void on_stop(uv_async_t *h) {
    struct fx *fx = h->data;
    sg_admin_close(fx->a);
    uv_close((uv_handle_t *)h, NULL);
}

static void loop_main(void *arg) {
    struct fx *fx = arg;
    uv_run(&fx->loop, UV_RUN_DEFAULT);
}

/* Starts the loop thread; from now on only the loop thread touches fx->a. */
static void fx_go(struct fx *fx) {
    assert_int_equal(uv_async_init(&fx->loop, &fx->stop, on_stop), 0);
    fx->stop.data = fx;
    fx->running = true;
    assert_int_equal(uv_thread_create(&fx->thread, loop_main, fx), 0);
}

/* Closes the server and waits until the loop has run out of handles. */
static void fx_stop(struct fx *fx) {
    if (!fx->running)
        return;
    if (!atomic_load(&fx->closed_by_handler))
        uv_async_send(&fx->stop);
    uv_thread_join(&fx->thread);
    fx->running = false;
    fx->a = NULL;
}

/* ---- test handlers ---- */

/* Echoes the request as JSON; a few paths do other things. */
static bool echo_handler(void *arg, const struct sg_admin_request *req,
                         struct sg_admin_response *resp) {
    struct fx *fx = arg;
    atomic_fetch_add(&fx->handler_calls, 1);
    const char *p = req->path;
    size_t n = req->path_len;
#define IS(s) (n == sizeof(s) - 1 && memcmp(p, s, n) == 0)
    if (n >= 9 && memcmp(p, "/api/pass", 9) == 0)
        return false; /* the next handler's */
    if (n > 12 && memcmp(p, "/api/status/", 12) == 0) {
        resp->status = atoi(p + 12); /* no body */
        return true;
    }
    if (IS("/api/text")) {
        resp->text = strdup("a,b\n1,2\n");
        resp->text_len = strlen(resp->text);
        resp->content_type = "text/csv";
        return true;
    }
    if (IS("/api/close")) {
        /* the server goes away under the request */
        sg_admin_close(fx->a);
        uv_close((uv_handle_t *)&fx->stop, NULL);
        atomic_store(&fx->closed_by_handler, true);
        resp->json = json_pack("{s:b}", "closed", 1);
        return true;
    }
#undef IS
    const char *m = sg_http_method_name(req->method);
    json_t *j = json_object();
    json_object_set_new(j, "method", json_string(m ? m : "OTHER"));
    json_object_set_new(j, "path", json_stringn(req->path, req->path_len));
    json_object_set_new(j, "query", json_stringn(req->query, req->query_len));
    json_object_set_new(j, "body", json_stringn_nocheck(req->body, req->body_len));
    json_object_set_new(j, "body_len", json_integer((json_int_t)req->body_len));
    resp->json = j;
    return true;
}

static bool pass_handler(void *arg, const struct sg_admin_request *req,
                         struct sg_admin_response *resp) {
    (void)arg;
    (void)req;
    resp->status = 202;
    resp->json = json_pack("{s:s}", "handler", "second");
    return true;
}

static int fx_setup_token(void **state, const char *token) {
    struct fx *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    assert_int_equal(uv_loop_init(&fx->loop), 0);
    struct sockaddr_in sin;
    uv_ip4_addr("127.0.0.1", 0, &sin);
    int err = 1;
    fx->a = sg_admin_start(&fx->loop, (const struct sockaddr *)&sin, token, &err);
    assert_non_null(fx->a);
    assert_int_equal(err, 0);
    fx->port = sg_admin_port(fx->a);
    assert_true(fx->port > 0);
    assert_int_equal(sg_admin_add_handler(fx->a, "/api/", echo_handler, fx), 0);
    assert_int_equal(sg_admin_add_handler(fx->a, "/api/pass", pass_handler, fx), 0);
    *state = fx;
    return 0;
}

static int fx_setup(void **state) {
    return fx_setup_token(state, TOKEN);
}

static int fx_setup_no_token(void **state) {
    return fx_setup_token(state, NULL);
}

static int fx_teardown(void **state) {
    struct fx *fx = *state;
    if (fx->running) {
        fx_stop(fx);
    } else if (fx->a) {
        sg_admin_close(fx->a);
        uv_run(&fx->loop, UV_RUN_DEFAULT);
    }
    int r = uv_loop_close(&fx->loop);
    if (r != 0)
        fprintf(stderr, "uv_loop_close: %s (a handle was left open)\n", uv_strerror(r));
    free(fx);
    sg_log_level = SG_LOG_ERROR;
    return r == 0 ? 0 : -1;
}

/* ---- a blocking HTTP client ---- */

struct client {
    int fd;
    char *buf; /* received, not yet consumed */
    size_t len, cap;
};

struct reply {
    int status;
    char head[8192];
    char *body; /* NUL-terminated (malloc'ed) */
    size_t body_len;
};

static int tcp_connect(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    return fd;
}

static struct client *cl_open(int port) {
    struct client *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->fd = tcp_connect(port);
    return c;
}

static void cl_close(struct client *c) {
    if (c->fd >= 0)
        close(c->fd);
    free(c->buf);
    free(c);
}

static void cl_send_n(struct client *c, const char *s, size_t n) {
    while (n > 0) {
        ssize_t w = send(c->fd, s, n, MSG_NOSIGNAL);
        assert_true(w > 0);
        s += w;
        n -= (size_t)w;
    }
}

static void cl_send(struct client *c, const char *s) {
    cl_send_n(c, s, strlen(s));
}

/* Receives more bytes; returns what recv returned. */
static ssize_t cl_fill(struct client *c) {
    if (c->cap - c->len < 65536) {
        c->cap = c->cap ? c->cap * 2 : 131072;
        c->buf = realloc(c->buf, c->cap);
        assert_non_null(c->buf);
    }
    ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len - 1, 0);
    if (n > 0)
        c->len += (size_t)n;
    return n;
}

/* True when the server closed the connection with nothing more to read. */
static bool cl_eof(struct client *c) {
    return c->len == 0 && cl_fill(c) == 0;
}

static const char *find_ci(const char *hay, size_t n, const char *needle) {
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (strncasecmp(hay + i, needle, k) == 0)
            return hay + i;
    return NULL;
}

/* Reads one response (no body expected when head_req). Returns false on
 * EOF or error before a complete response. */
static bool cl_reply(struct client *c, struct reply *r, bool head_req) {
    memset(r, 0, sizeof(*r));
    const char *end;
    while (!(c->buf && (end = find_ci(c->buf, c->len, "\r\n\r\n")))) {
        if (cl_fill(c) <= 0)
            return false;
    }
    size_t head_len = (size_t)(end - c->buf) + 4;
    assert_true(head_len < sizeof(r->head));
    memcpy(r->head, c->buf, head_len);
    r->head[head_len] = '\0';
    assert_memory_equal(r->head, "HTTP/1.1 ", 9);
    r->status = atoi(r->head + 9);
    size_t clen = 0;
    const char *cl = find_ci(r->head, head_len, "\r\nContent-Length:");
    if (cl && !head_req && r->status >= 200)
        clen = strtoul(cl + 17, NULL, 10);
    while (c->len < head_len + clen)
        if (cl_fill(c) <= 0)
            return false;
    r->body = malloc(clen + 1);
    assert_non_null(r->body);
    memcpy(r->body, c->buf + head_len, clen);
    r->body[clen] = '\0';
    r->body_len = clen;
    c->len -= head_len + clen;
    memmove(c->buf, c->buf + head_len + clen, c->len);
    return true;
}

static void reply_free(struct reply *r) {
    free(r->body);
    r->body = NULL;
}

/* The value of a response header field ("" when absent), in a static buffer. */
static const char *hdr(const struct reply *r, const char *name) {
    static char val[512];
    char pat[128];
    snprintf(pat, sizeof(pat), "\r\n%s:", name);
    const char *p = find_ci(r->head, strlen(r->head), pat);
    if (!p)
        return "";
    p += strlen(pat);
    while (*p == ' ')
        p++;
    const char *e = strstr(p, "\r\n");
    size_t n = (size_t)(e - p) < sizeof(val) - 1 ? (size_t)(e - p) : sizeof(val) - 1;
    memcpy(val, p, n);
    val[n] = '\0';
    return val;
}

/* Sends req on a new connection and reads one reply. */
static struct client *exchange(struct fx *fx, const char *req, struct reply *r) {
    struct client *c = cl_open(fx->port);
    cl_send(c, req);
    assert_true(cl_reply(c, r, strncmp(req, "HEAD ", 5) == 0));
    return c;
}

/* The body as JSON; the caller json_decref's it. Checks the framing:
 * compact JSON followed by one newline, and the common headers. */
static json_t *reply_json(const struct reply *r) {
    assert_string_equal(hdr(r, "Content-Type"), "application/json");
    assert_string_equal(hdr(r, "Cache-Control"), "no-store");
    assert_true(r->body_len > 1);
    assert_int_equal(r->body[r->body_len - 1], '\n');
    json_error_t e;
    json_t *j = json_loadb(r->body, r->body_len, 0, &e);
    assert_non_null(j);
    return j;
}

static void assert_error_reply(const struct reply *r, int status) {
    assert_int_equal(r->status, status);
    json_t *j = reply_json(r);
    assert_true(json_is_string(json_object_get(j, "error")));
    json_decref(j);
}

static void assert_json_str(json_t *j, const char *key, const char *want) {
    json_t *v = json_object_get(j, key);
    assert_non_null(v);
    assert_string_equal(json_string_value(v), want);
}

static void sleep_ms(long ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- tests ---- */

static void test_health_without_token(void **state) {
    struct fx *fx = *state;
    fx_go(fx);
    struct reply r;
    struct client *c = exchange(fx, "GET /health HTTP/1.1\r\nHost: a\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"status\":\"ok\"}\n");
    assert_string_equal(hdr(&r, "Content-Length"), "16");
    assert_string_equal(hdr(&r, "Cache-Control"), "no-store");
    assert_string_equal(hdr(&r, "Content-Type"), "application/json");
    assert_string_not_equal(hdr(&r, "Date"), "");
    assert_string_equal(hdr(&r, "Connection"), "");
    reply_free(&r);

    /* HEAD: the same head, no body; a query does not matter */
    cl_send(c, "HEAD /health?verbose=1 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_true(cl_reply(c, &r, true));
    assert_int_equal(r.status, 200);
    assert_string_equal(hdr(&r, "Content-Length"), "16");
    reply_free(&r);
    /* the connection is still usable and nothing stray followed the head */
    cl_send(c, "GET /health HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_true(cl_reply(c, &r, false));
    assert_int_equal(r.status, 200);
    reply_free(&r);
    cl_close(c);

    /* a body on /health is not read without a token: answer, then close */
    c = exchange(fx, "GET /health HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(hdr(&r, "Connection"), "close");
    reply_free(&r);
    assert_true(cl_eof(c));
    cl_close(c);
    assert_int_equal(atomic_load(&fx->handler_calls), 0);
}

static void test_auth(void **state) {
    struct fx *fx = *state;
    fx_go(fx);
    static const char *const refused[] = {
        "GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer wrong\r\n\r\n",
        "GET /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer " TOKEN "x\r\n\r\n",
        "GET /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer s3cret\r\n\r\n",
        "GET /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer\r\n\r\n",
        "GET /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: Basic " TOKEN "\r\n\r\n",
        "GET /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: " TOKEN "\r\n\r\n",
        "GET /api/x HTTP/1.1\r\nHost: a\r\n" AUTH "Authorization: Bearer wrong\r\n\r\n",
        "POST /health HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        "GET /nothing-here HTTP/1.1\r\nHost: a\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        struct reply r;
        struct client *c = exchange(fx, refused[i], &r);
        assert_error_reply(&r, 401);
        assert_string_equal(hdr(&r, "WWW-Authenticate"), "Bearer");
        reply_free(&r);
        /* no body: the connection stays usable */
        cl_send(c, "GET /health HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_true(cl_reply(c, &r, false));
        assert_int_equal(r.status, 200);
        reply_free(&r);
        cl_close(c);
    }
    assert_int_equal(atomic_load(&fx->handler_calls), 0);

    static const char *const accepted[] = {
        "GET /api/x HTTP/1.1\r\nHost: a\r\n" AUTH "\r\n",
        "GET /api/x HTTP/1.1\r\nHost: a\r\nauthorization: bearer   " TOKEN "  \r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(accepted) / sizeof(accepted[0]); i++) {
        struct reply r;
        struct client *c = exchange(fx, accepted[i], &r);
        assert_int_equal(r.status, 200);
        assert_string_equal(hdr(&r, "WWW-Authenticate"), "");
        json_t *j = reply_json(&r);
        assert_json_str(j, "path", "/api/x");
        json_decref(j);
        reply_free(&r);
        cl_close(c);
    }
    assert_int_equal(atomic_load(&fx->handler_calls), 2);
}

/* A request with a body and no token is refused before the body is read,
 * and the connection is closed after the 401. */
static void test_auth_before_body(void **state) {
    struct fx *fx = *state;
    fx_go(fx);
    struct reply r;
    struct client *c =
        exchange(fx, "POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n", &r);
    assert_error_reply(&r, 401);
    assert_string_equal(hdr(&r, "Connection"), "close");
    reply_free(&r);
    assert_true(cl_eof(c));
    cl_close(c);

    /* with Expect: 100-continue, no 100 comes: straight the 401 */
    c = exchange(fx,
                 "PUT /api/x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n",
                 &r);
    assert_error_reply(&r, 401);
    reply_free(&r);
    assert_true(cl_eof(c));
    cl_close(c);
    assert_int_equal(atomic_load(&fx->handler_calls), 0);
}

static void test_no_token_configured(void **state) {
    struct fx *fx = *state;
    fx_go(fx);
    static const char *const reqs[] = {
        "GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer \r\n\r\n",
        "GET /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer (null)\r\n\r\n",
        "GET /api/x HTTP/1.1\r\nHost: a\r\n" AUTH "\r\n",
    };
    for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++) {
        struct reply r;
        cl_close(exchange(fx, reqs[i], &r));
        assert_error_reply(&r, 401);
        reply_free(&r);
    }
    struct reply r;
    cl_close(exchange(fx, "GET /health HTTP/1.1\r\nHost: a\r\n\r\n", &r));
    assert_int_equal(r.status, 200);
    reply_free(&r);
    assert_int_equal(atomic_load(&fx->handler_calls), 0);
}

static void test_set_token(void **state) {
    struct fx *fx = *state;
    sg_admin_set_token(fx->a, "new-token");
    fx_go(fx);
    struct reply r;
    cl_close(exchange(fx, "GET /api/x HTTP/1.1\r\nHost: a\r\n" AUTH "\r\n", &r));
    assert_error_reply(&r, 401);
    reply_free(&r);
    cl_close(exchange(
        fx, "GET /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer new-token\r\n\r\n", &r));
    assert_int_equal(r.status, 200);
    reply_free(&r);
}

static void test_dispatch(void **state) {
    struct fx *fx = *state;
    fx_go(fx);
    struct reply r;
    struct client *c = exchange(
        fx, "GET /api/v1/scaling/status?pool=app&x=1 HTTP/1.1\r\nHost: a\r\n" AUTH "\r\n", &r);
    assert_int_equal(r.status, 200);
    json_t *j = reply_json(&r);
    assert_json_str(j, "method", "GET");
    assert_json_str(j, "path", "/api/v1/scaling/status");
    assert_json_str(j, "query", "pool=app&x=1");
    assert_json_str(j, "body", "");
    json_decref(j);
    reply_free(&r);

    /* the first handler declines: the second one answers */
    cl_send(c, "DELETE /api/pass/this HTTP/1.1\r\nHost: a\r\n" AUTH "\r\n");
    assert_true(cl_reply(c, &r, false));
    assert_int_equal(r.status, 202);
    j = reply_json(&r);
    assert_json_str(j, "handler", "second");
    json_decref(j);
    reply_free(&r);

    /* no handler for the path */
    cl_send(c, "GET /nope HTTP/1.1\r\nHost: a\r\n" AUTH "\r\n");
    assert_true(cl_reply(c, &r, false));
    assert_int_equal(r.status, 404);
    j = reply_json(&r);
    assert_json_str(j, "error", "not found");
    json_decref(j);
    reply_free(&r);
    cl_send(c, "GET /api HTTP/1.1\r\nHost: a\r\n" AUTH "\r\n"); /* prefix is "/api/" */
    assert_true(cl_reply(c, &r, false));
    assert_int_equal(r.status, 404);
    reply_free(&r);

    /* a status without a body gets {"error": reason} */
    cl_send(c, "POST /api/status/409 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n" AUTH "\r\n");
    assert_true(cl_reply(c, &r, false));
    assert_int_equal(r.status, 409);
    j = reply_json(&r);
    assert_json_str(j, "error", "Conflict");
    json_decref(j);
    reply_free(&r);

    /* 204: no body and no Content-Length */
    cl_send(c, "DELETE /api/status/204 HTTP/1.1\r\nHost: a\r\n" AUTH "\r\n");
    assert_true(cl_reply(c, &r, false));
    assert_int_equal(r.status, 204);
    assert_string_equal(hdr(&r, "Content-Length"), "");
    assert_int_equal(r.body_len, 0);
    reply_free(&r);

    /* an invalid status from a handler: 500 */
    cl_send(c, "GET /api/status/42 HTTP/1.1\r\nHost: a\r\n" AUTH "\r\n");
    assert_true(cl_reply(c, &r, false));
    assert_error_reply(&r, 500);
    reply_free(&r);

    /* a text body with its own type */
    cl_send(c, "GET /api/text HTTP/1.1\r\nHost: a\r\n" AUTH "\r\n");
    assert_true(cl_reply(c, &r, false));
    assert_int_equal(r.status, 200);
    assert_string_equal(hdr(&r, "Content-Type"), "text/csv");
    assert_string_equal(hdr(&r, "Content-Length"), "8");
    assert_string_equal(hdr(&r, "Cache-Control"), "no-store");
    assert_string_equal(r.body, "a,b\n1,2\n");
    reply_free(&r);

    /* absolute-form target */
    cl_send(c,
            "PATCH http://admin.local/api/abs?q=1 HTTP/1.1\r\nHost: admin.local\r\n" AUTH "\r\n");
    assert_true(cl_reply(c, &r, false));
    assert_int_equal(r.status, 200);
    j = reply_json(&r);
    assert_json_str(j, "method", "PATCH");
    assert_json_str(j, "path", "/api/abs");
    assert_json_str(j, "query", "q=1");
    json_decref(j);
    reply_free(&r);
    cl_close(c);
}

static void test_post_content_length(void **state) {
    struct fx *fx = *state;
    fx_go(fx);
    struct client *c = cl_open(fx->port);
    /* the body arrives in pieces, after the head */
    cl_send(c, "POST /api/v1/scaling/start?pool=app HTTP/1.1\r\nHost: a\r\n" AUTH
               "Content-Type: application/json\r\nContent-Length: 25\r\n\r\n{\"enabled\":");
    sleep_ms(50);
    cl_send(c, " true, \"n\":");
    sleep_ms(50);
    cl_send(c, "12}");
    struct reply r;
    assert_true(cl_reply(c, &r, false));
    assert_int_equal(r.status, 200);
    json_t *j = reply_json(&r);
    assert_json_str(j, "method", "POST");
    assert_json_str(j, "query", "pool=app");
    assert_json_str(j, "body", "{\"enabled\": true, \"n\":12}");
    json_decref(j);
    reply_free(&r);

    /* a larger body (more than one read), then another request at once */
    size_t n = 300000;
    char *big = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        big[i] = (char)('a' + i % 26);
    big[n] = '\0';
    char head[256];
    snprintf(head, sizeof(head),
             "PUT /api/big HTTP/1.1\r\nHost: a\r\n" AUTH "Content-Length: %zu\r\n\r\n", n);
    cl_send(c, head);
    cl_send_n(c, big, n);
    cl_send(c, "GET /health HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_true(cl_reply(c, &r, false));
    assert_int_equal(r.status, 200);
    j = reply_json(&r);
    assert_json_str(j, "body", big);
    json_decref(j);
    reply_free(&r);
    assert_true(cl_reply(c, &r, false));
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"status\":\"ok\"}\n");
    reply_free(&r);
    free(big);
    cl_close(c);
}

static void test_post_chunked(void **state) {
    struct fx *fx = *state;
    fx_go(fx);
    struct client *c = cl_open(fx->port);
    cl_send(c, "POST /api/chunked HTTP/1.1\r\nHost: a\r\n" AUTH
               "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
    sleep_ms(50);
    cl_send(c, "1;ext=1\r\n \r\n6\r\nwor");
    sleep_ms(50);
    cl_send(c, "ld!\r\n0\r\nX-Trailer: yes\r\n\r\n");
    struct reply r;
    assert_true(cl_reply(c, &r, false));
    assert_int_equal(r.status, 200);
    json_t *j = reply_json(&r);
    assert_json_str(j, "body", "hello world!");
    json_decref(j);
    reply_free(&r);

    /* many small chunks, larger than the buffers; pipelined with the next */
    size_t nchunks = 5000, clen = 100;
    size_t n = nchunks * (clen + 8) + 64;
    char *wire = malloc(n), *want = malloc(nchunks * clen + 1);
    size_t w = 0;
    for (size_t i = 0; i < nchunks; i++) {
        w += (size_t)sprintf(wire + w, "%zx\r\n", clen);
        for (size_t k = 0; k < clen; k++)
            want[i * clen + k] = wire[w++] = (char)('A' + (i + k) % 26);
        wire[w++] = '\r';
        wire[w++] = '\n';
    }
    w += (size_t)sprintf(wire + w, "0\r\n\r\n");
    want[nchunks * clen] = '\0';
    cl_send(c, "POST /api/chunked HTTP/1.1\r\nHost: a\r\n" AUTH
               "Transfer-Encoding: gzip, chunked\r\n\r\n");
    /* gzip is not supported: 501, and the connection closes */
    assert_true(cl_reply(c, &r, false));
    assert_error_reply(&r, 501);
    reply_free(&r);
    assert_true(cl_eof(c));
    cl_close(c);

    c = cl_open(fx->port);
    cl_send(c,
            "POST /api/chunked HTTP/1.1\r\nHost: a\r\n" AUTH "Transfer-Encoding: chunked\r\n\r\n");
    cl_send_n(c, wire, w);
    cl_send(c, "GET /api/after HTTP/1.1\r\nHost: a\r\n" AUTH "\r\n");
    assert_true(cl_reply(c, &r, false));
    assert_int_equal(r.status, 200);
    j = reply_json(&r);
    assert_json_str(j, "body", want);
    json_decref(j);
    reply_free(&r);
    assert_true(cl_reply(c, &r, false));
    assert_int_equal(r.status, 200);
    j = reply_json(&r);
    assert_json_str(j, "path", "/api/after");
    json_decref(j);
    reply_free(&r);
    free(wire);
    free(want);

    /* bad chunk framing: 400 and close */
    cl_send(c, "POST /api/chunked HTTP/1.1\r\nHost: a\r\n" AUTH
               "Transfer-Encoding: chunked\r\n\r\nzz\r\n");
    assert_true(cl_reply(c, &r, false));
    assert_error_reply(&r, 400);
    reply_free(&r);
    assert_true(cl_eof(c));
    cl_close(c);
}

static void test_expect_continue(void **state) {
    struct fx *fx = *state;
    fx_go(fx);
    struct client *c = cl_open(fx->port);
    cl_send(c, "POST /api/x HTTP/1.1\r\nHost: a\r\n" AUTH
               "Expect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    struct reply r;
    assert_true(cl_reply(c, &r, false));
    assert_int_equal(r.status, 100);
    reply_free(&r);
    cl_send(c, "hello");
    assert_true(cl_reply(c, &r, false));
    assert_int_equal(r.status, 200);
    json_t *j = reply_json(&r);
    assert_json_str(j, "body", "hello");
    json_decref(j);
    reply_free(&r);
    cl_close(c);
}

static void test_malformed(void **state) {
    struct fx *fx = *state;
    fx_go(fx);
    static const struct {
        const char *req;
        int status;
    } cases[] = {
        {"GARBAGE\r\n\r\n", 400},
        {"GET /api/x HTTP/1.1 extra\r\nHost: a\r\n\r\n", 400},
        {"GET /api/x\r\nHost: a\r\n\r\n", 400},
        {"GET /api/x HTTP/1.1\r\n\r\n", 400}, /* no Host */
        {"GET /api/x HTTP/2.0\r\nHost: a\r\n\r\n", 505},
        {"GET /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400},
        {"GET ftp://a/api HTTP/1.1\r\nHost: a\r\n" AUTH "\r\n", 400},
        {"OPTIONS * HTTP/1.1\r\nHost: a\r\n" AUTH "\r\n", 400},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct reply r;
        struct client *c = exchange(fx, cases[i].req, &r);
        assert_error_reply(&r, cases[i].status);
        assert_string_equal(hdr(&r, "Connection"), "close");
        reply_free(&r);
        assert_true(cl_eof(c));
        cl_close(c);
    }
    assert_int_equal(atomic_load(&fx->handler_calls), 0);
}

static void test_limits(void **state) {
    struct fx *fx = *state;
    fx_go(fx);
    /* Content-Length over 1 MiB: 413 at once */
    struct reply r;
    struct client *c = exchange(
        fx, "POST /api/x HTTP/1.1\r\nHost: a\r\n" AUTH "Content-Length: 1048577\r\n\r\n", &r);
    assert_error_reply(&r, 413);
    reply_free(&r);
    assert_true(cl_eof(c));
    cl_close(c);

    /* exactly 1 MiB is fine */
    size_t n = SG_ADMIN_MAX_BODY;
    char *big = malloc(n + 64);
    memset(big, 'x', n);
    c = cl_open(fx->port);
    char head[256];
    snprintf(head, sizeof(head),
             "POST /api/x HTTP/1.1\r\nHost: a\r\n" AUTH "Content-Length: %zu\r\n\r\n", n);
    cl_send(c, head);
    cl_send_n(c, big, n);
    assert_true(cl_reply(c, &r, false));
    assert_int_equal(r.status, 200);
    json_t *j = reply_json(&r);
    assert_int_equal(json_integer_value(json_object_get(j, "body_len")), n);
    json_decref(j);
    reply_free(&r);
    cl_close(c);

    /* a chunked body growing past 1 MiB: 413 while the client still sends;
     * the server keeps reading (and discarding) so the client sees it */
    c = cl_open(fx->port);
    cl_send(c, "POST /api/x HTTP/1.1\r\nHost: a\r\n" AUTH "Transfer-Encoding: chunked\r\n\r\n");
    int k = sprintf(big, "10000\r\n");
    memset(big + k, 'y', 0x10000);
    memcpy(big + k + 0x10000, "\r\n", 2);
    for (int i = 0; i < 20; i++) /* 20 x 64 KiB */
        cl_send_n(c, big, (size_t)k + 0x10000 + 2);
    assert_true(cl_reply(c, &r, false));
    assert_error_reply(&r, 413);
    reply_free(&r);
    assert_true(cl_eof(c));
    cl_close(c);
    free(big);

    /* a head over 16 KiB: 431 */
    char *h = malloc(20000);
    int m = sprintf(h, "GET /api/x HTTP/1.1\r\nHost: a\r\n");
    while (m < 17000)
        m += sprintf(h + m, "X-Pad: %0200d\r\n", 0);
    sprintf(h + m, "\r\n");
    c = exchange(fx, h, &r);
    assert_error_reply(&r, 431);
    reply_free(&r);
    assert_true(cl_eof(c));
    cl_close(c);
    free(h);
    assert_int_equal(atomic_load(&fx->handler_calls), 1);
}

static void test_keep_alive(void **state) {
    struct fx *fx = *state;
    sg_log_level = SG_LOG_DEBUG; /* exercise the log lines too */
    fx_go(fx);
    struct client *c = cl_open(fx->port);
    struct reply r;
    for (int i = 0; i < 2; i++) {
        cl_send(c, "GET /api/one HTTP/1.1\r\nHost: a\r\n" AUTH "\r\n");
        assert_true(cl_reply(c, &r, false));
        assert_int_equal(r.status, 200);
        assert_string_equal(hdr(&r, "Connection"), "");
        reply_free(&r);
    }
    /* pipelined: three requests in one send, answered in order */
    cl_send(c, "GET /api/p1 HTTP/1.1\r\nHost: a\r\n" AUTH "\r\n"
               "POST /api/p2 HTTP/1.1\r\nHost: a\r\n" AUTH "Content-Length: 3\r\n\r\nabc"
               "GET /api/p3 HTTP/1.1\r\nHost: a\r\n" AUTH "Connection: close\r\n\r\n");
    static const char *const paths[] = {"/api/p1", "/api/p2", "/api/p3"};
    for (int i = 0; i < 3; i++) {
        assert_true(cl_reply(c, &r, false));
        assert_int_equal(r.status, 200);
        json_t *j = reply_json(&r);
        assert_json_str(j, "path", paths[i]);
        json_decref(j);
        assert_string_equal(hdr(&r, "Connection"), i == 2 ? "close" : "");
        reply_free(&r);
    }
    assert_true(cl_eof(c));
    cl_close(c);

    /* HTTP/1.0: closes after the answer */
    c = exchange(fx, "GET /health HTTP/1.0\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(hdr(&r, "Connection"), "close");
    reply_free(&r);
    assert_true(cl_eof(c));
    cl_close(c);

    /* HTTP/1.0 with keep-alive stays open */
    c = exchange(fx, "GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(hdr(&r, "Connection"), "keep-alive");
    reply_free(&r);
    cl_send(c, "GET /api/ten HTTP/1.0\r\n" AUTH "\r\n");
    assert_true(cl_reply(c, &r, false));
    assert_int_equal(r.status, 200);
    assert_string_equal(hdr(&r, "Connection"), "close");
    reply_free(&r);
    assert_true(cl_eof(c));
    cl_close(c);
}

static void test_timeouts(void **state) {
    struct fx *fx = *state;
    sg_admin_set_timeouts(fx->a, 200, 400);
    fx_go(fx);
    /* a head that does not complete in time: 408 */
    struct client *c = cl_open(fx->port);
    cl_send(c, "GET /api/x HTTP/1.1\r\nHost: a\r\n");
    struct reply r;
    assert_true(cl_reply(c, &r, false));
    assert_error_reply(&r, 408);
    reply_free(&r);
    assert_true(cl_eof(c));
    cl_close(c);

    /* a body that stops coming: 408 too (after the idle timeout) */
    c = cl_open(fx->port);
    cl_send(c, "POST /api/x HTTP/1.1\r\nHost: a\r\n" AUTH "Content-Length: 10\r\n\r\nabc");
    assert_true(cl_reply(c, &r, false));
    assert_error_reply(&r, 408);
    reply_free(&r);
    assert_true(cl_eof(c));
    cl_close(c);

    /* an idle connection, new or between requests, is closed silently */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    c = cl_open(fx->port);
    assert_true(cl_eof(c));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    assert_true(ms >= 350);
    cl_close(c);
    c = exchange(fx, "GET /health HTTP/1.1\r\nHost: a\r\n\r\n", &r);
    reply_free(&r);
    assert_true(cl_eof(c));
    cl_close(c);
}

static void test_max_conns(void **state) {
    struct fx *fx = *state;
    fx_go(fx);
    enum { N = SG_ADMIN_MAX_CONNS };
    struct client **cs = calloc(N, sizeof(*cs));
    struct reply r;
    for (int i = 0; i < N; i++) {
        cs[i] = cl_open(fx->port);
        /* one request each, so that the server has accepted it */
        cl_send(cs[i], "GET /health HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_true(cl_reply(cs[i], &r, false));
        assert_int_equal(r.status, 200);
        reply_free(&r);
    }
    /* one too many: closed at accept */
    struct client *extra = cl_open(fx->port);
    assert_true(cl_eof(extra));
    cl_close(extra);
    /* the others still work */
    cl_send(cs[0], "GET /health HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_true(cl_reply(cs[0], &r, false));
    assert_int_equal(r.status, 200);
    reply_free(&r);
    /* after some close, new connections are served again */
    for (int i = 0; i < 10; i++) {
        cl_close(cs[i]);
        cs[i] = NULL;
    }
    bool served = false;
    for (int tries = 0; tries < 50 && !served; tries++) {
        sleep_ms(20);
        extra = cl_open(fx->port);
        static const char req[] = "GET /health HTTP/1.1\r\nHost: a\r\n\r\n";
        /* the server may close it at accept still: don't assert on send */
        served = send(extra->fd, req, sizeof(req) - 1, MSG_NOSIGNAL) == sizeof(req) - 1 &&
                 cl_reply(extra, &r, false);
        if (served) {
            assert_int_equal(r.status, 200);
            reply_free(&r);
        }
        cl_close(extra);
    }
    assert_true(served);
    for (int i = 10; i < N; i++)
        cl_close(cs[i]);
    free(cs);
}

/* sg_admin_close with connections open (idle, mid-head, mid-body): every
 * one is closed and everything is freed (teardown: uv_loop_close == 0,
 * and LSan at exit). */
static void test_close_with_open_conns(void **state) {
    struct fx *fx = *state;
    fx_go(fx);
    struct reply r;
    struct client *idle = exchange(fx, "GET /api/x HTTP/1.1\r\nHost: a\r\n" AUTH "\r\n", &r);
    assert_int_equal(r.status, 200);
    reply_free(&r);
    struct client *head = cl_open(fx->port);
    cl_send(head, "GET /api/x HTTP/1.1\r\nHost: a\r\n");
    struct client *body = cl_open(fx->port);
    cl_send(body, "POST /api/x HTTP/1.1\r\nHost: a\r\n" AUTH "Content-Length: 100\r\n\r\nabc");
    struct client *fresh = cl_open(fx->port);
    sleep_ms(100); /* let the server read them */
    fx_stop(fx);
    assert_true(cl_eof(idle));
    assert_true(cl_fill(head) <= 0);
    assert_true(cl_fill(body) <= 0);
    assert_true(cl_fill(fresh) <= 0);
    cl_close(idle);
    cl_close(head);
    cl_close(body);
    cl_close(fresh);
    /* the port is free again */
    struct client *c = calloc(1, sizeof(*c));
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)fx->port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&sin, sizeof(sin)), -1);
    assert_int_equal(errno, ECONNREFUSED);
    cl_close(c);
}

static void test_close_from_handler(void **state) {
    struct fx *fx = *state;
    fx_go(fx);
    struct client *other = cl_open(fx->port);
    struct client *c = cl_open(fx->port);
    cl_send(c, "POST /api/close HTTP/1.1\r\nHost: a\r\n" AUTH "Content-Length: 2\r\n\r\nhi");
    /* the connection goes away with the server: no answer */
    assert_true(cl_fill(c) <= 0);
    assert_int_equal(c->len, 0);
    assert_true(cl_fill(other) <= 0);
    fx_stop(fx);
    assert_true(atomic_load(&fx->closed_by_handler));
    cl_close(c);
    cl_close(other);
}

static void test_start_errors(void **state) {
    struct fx *fx = *state;
    struct sockaddr_in sin;
    uv_ip4_addr("127.0.0.1", fx->port, &sin);
    int err = 0;
    assert_null(sg_admin_start(&fx->loop, (const struct sockaddr *)&sin, TOKEN, &err));
    assert_int_equal(err, -EADDRINUSE);
    struct sockaddr bad = {.sa_family = AF_UNIX};
    assert_null(sg_admin_start(&fx->loop, &bad, TOKEN, &err));
    assert_int_equal(err, -EAFNOSUPPORT);
    assert_int_equal(sg_admin_add_handler(fx->a, "", echo_handler, fx), -EINVAL);
    assert_int_equal(sg_admin_add_handler(fx->a, "/x", NULL, fx), -EINVAL);
    assert_int_equal(sg_admin_conn_count(fx->a), 0);
    /* IPv6 loopback, when the machine has it */
    struct sockaddr_in6 sin6;
    uv_ip6_addr("::1", 0, &sin6);
    struct sg_admin *a6 = sg_admin_start(&fx->loop, (const struct sockaddr *)&sin6, NULL, &err);
    if (a6) {
        assert_true(sg_admin_port(a6) > 0);
        sg_admin_close(a6);
    } else {
        assert_true(err < 0);
    }
    /* teardown closes fx->a and runs the loop: nothing may be left over */
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    sg_log_level = SG_LOG_ERROR;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_health_without_token, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_auth, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_auth_before_body, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_no_token_configured, fx_setup_no_token, fx_teardown),
        cmocka_unit_test_setup_teardown(test_set_token, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_dispatch, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_post_content_length, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_post_chunked, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_expect_continue, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_malformed, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_limits, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_keep_alive, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_timeouts, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_max_conns, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_close_with_open_conns, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_close_from_handler, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_start_errors, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
