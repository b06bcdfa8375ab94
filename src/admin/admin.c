/*
 * The admin API's HTTP server (admin.h), on the main thread's loop.
 *
 * A connection serves one request at a time. The request is read whole into
 * c->in: the head at the front, then the body right after it (a chunked
 * body is decoded in place, so the buffer holds the payload plus at most a
 * partial chunk line). The token is checked as soon as the head is parsed,
 * so nobody without it can make the server buffer a body. Then a handler
 * runs and the answer goes out in one uv_write that owns its buffer until
 * the write callback. Reading is stopped while the answer is queued:
 * pipelined requests wait in the kernel (or in c->in) and are answered in
 * order. The input buffer is attached only while bytes are pending, so an
 * idle keep-alive connection holds none.
 *
 * After an error, or a response with Connection: close, the connection
 * lingers: once the answer is written it shuts down its side and discards
 * input until EOF (or CLOSING_TIMEOUT_MS), so that a client still sending
 * its body reads the answer instead of a reset.
 *
 * Timeouts are not per-connection timers: each state has a list of its
 * connections with their deadlines, and a sweep timer, running only while
 * connections are open, walks them (there are at most SG_ADMIN_MAX_CONNS).
 *
 * Ownership: struct sg_admin is freed when its last handle (listener, sweep
 * timer, connections) has closed after sg_admin_close; a connection is
 * freed in its close callback; a write request frees itself in its
 * callback, which libuv runs (with UV_ECANCELED if need be) before the
 * close callback of its connection.
 */
#include "admin/admin.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/list.h"
#include "core/log.h"

#define CLOSING_TIMEOUT_MS 5000  /* to write the last answer's tail and see EOF */
#define MAX_HEADERS        64    /* more header fields: 431 */
#define MAX_TRAILER        16384 /* chunked trailer section: larger is 400 */
#define MIN_INBUF          4096  /* first input buffer; grown by doubling */
#define HEAD_BUF           (SG_ADMIN_MAX_HEAD + 1024) /* the parser answers 431 before it fills */
#define CHUNK_SLACK        16384 /* undecoded bytes kept beyond a chunked body */
#define LISTEN_BACKLOG     128
#define MAX_SWEEP_MS       1000

/* A connection's life. Only set_state changes it: it moves the connection
 * to that state's list and sets its deadline. */
enum sg_admin_conn_state {
    SG_ADMIN_CONN_IDLE = 0, /* no request byte pending (new or keep-alive): idle timeout */
    SG_ADMIN_CONN_HEAD,     /* a request head arriving: header timeout, then 408 */
    SG_ADMIN_CONN_BODY,     /* its body arriving: idle timeout from the last read, then 408 */
    SG_ADMIN_CONN_WRITING,  /* the answer queued, reading stopped: idle timeout */
    SG_ADMIN_CONN_CLOSING,  /* answer written, shutdown sent, input discarded until EOF */
    SG_ADMIN_CONN_STATE_COUNT
};

struct handler {
    char *prefix; /* owned */
    size_t prefix_len;
    sg_admin_handler fn;
    void *arg;
};

struct sg_admin {
    uv_loop_t *loop;
    uv_tcp_t listener; /* listener.data == this */
    uv_timer_t sweep;  /* runs while nconns > 0 */
    char *token;       /* owned, NULL when none */
    size_t token_len;
    struct handler *handlers; /* owned array */
    size_t nhandlers;
    struct sg_list conns[SG_ADMIN_CONN_STATE_COUNT];
    unsigned nconns;   /* connections in the lists */
    unsigned nhandles; /* handles not yet closed: listener, timer, every connection */
    uint32_t next_id;
    uint64_t header_ms;
    uint64_t idle_ms;
    uint64_t last_reject_log; /* loop time of the last "too many connections" line */
    bool closing;             /* sg_admin_close was called */
    bool public_metrics;      /* GET /metrics without the token */
};

/* Allocated at accept, freed in its close callback. */
struct conn {
    uv_tcp_t tcp; /* tcp.data == this */
    uv_shutdown_t shutdown;
    struct sg_list link; /* in a->conns[state] while listed */
    struct sg_admin *a;
    char *in; /* pending input (owned), NULL when none */
    uint32_t in_cap;
    uint32_t in_len;
    uint64_t deadline; /* loop time (ms) at which this state's timeout fires */
    uint32_t id;       /* for log lines */
    uint16_t writes;   /* queued writes not yet completed */
    uint8_t state;     /* enum sg_admin_conn_state */
    uint8_t listed;    /* counted in a->nconns (not when refused at accept) */
    uint8_t reading;   /* uv_read_start is active */
    uint8_t closed;    /* uv_close was called */

    /* The request being read. Offsets into in, since in may move when it
     * grows; the head stays at its front until the answer is queued. */
    size_t scanned; /* parser cursor */
    uint32_t head_len;
    uint32_t raw;      /* chunked: first byte not yet decoded */
    uint32_t body_len; /* body bytes (decoded) at in + head_len */
    uint32_t req_end;  /* one past the request's last byte: the next one starts there */
    uint32_t method_off, method_len;
    uint32_t path_off, path_len; /* path_len 0: "/" (absolute-form without a path) */
    uint32_t query_off, query_len;
    uint64_t content_length;
    struct sg_http_chunked ck;
    uint8_t method_id;   /* enum sg_http_method */
    uint8_t body;        /* enum sg_http_body */
    uint8_t minor;       /* HTTP/1.<minor> */
    uint8_t keep_alive;  /* the client allows another request after this one */
    uint8_t close_after; /* the queued answer is the last: linger, then close */
};

/* A queued write; owns its bytes until its callback. */
struct wreq {
    uv_write_t req;
    struct conn *c;
    size_t len;
    char data[];
};

/* Flags of send_response. */
#define RESP_CLOSE     1u /* the last answer on this connection */
#define RESP_CHALLENGE 2u /* add WWW-Authenticate: Bearer */

static void process(struct conn *c);
static void fail(struct conn *c, int status, const char *why);

/* ---- connection state, timeouts, closing ---- */

static uint64_t state_timeout(const struct sg_admin *a, enum sg_admin_conn_state s) {
    switch (s) {
    case SG_ADMIN_CONN_HEAD:
        return a->header_ms;
    case SG_ADMIN_CONN_CLOSING:
        return CLOSING_TIMEOUT_MS;
    default:
        return a->idle_ms;
    }
}

/* (Re-)entering a state moves c to the tail of its list with a new deadline. */
static void set_state(struct conn *c, enum sg_admin_conn_state s) {
    struct sg_admin *a = c->a;
    c->state = (uint8_t)s;
    sg_list_remove(&c->link);
    sg_list_insert_tail(&a->conns[s], &c->link);
    c->deadline = uv_now(a->loop) + state_timeout(a, s);
}

static void free_admin(struct sg_admin *a) {
    for (size_t i = 0; i < a->nhandlers; i++)
        free(a->handlers[i].prefix);
    free(a->handlers);
    if (a->token) {
        explicit_bzero(a->token, a->token_len);
        free(a->token);
    }
    free(a);
}

static void handle_closed(struct sg_admin *a) {
    if (--a->nhandles == 0 && a->closing)
        free_admin(a);
}

static void on_handle_close(uv_handle_t *h) {
    handle_closed(h->data);
}

static void on_conn_close(uv_handle_t *h) {
    struct conn *c = h->data;
    struct sg_admin *a = c->a;
    free(c->in);
    free(c);
    handle_closed(a);
}

static void free_input(struct conn *c) {
    free(c->in);
    c->in = NULL;
    c->in_cap = c->in_len = 0;
}

static void conn_close(struct conn *c) {
    struct sg_admin *a = c->a;
    if (c->closed)
        return;
    c->closed = 1;
    c->reading = 0;
    if (c->listed) {
        c->listed = 0;
        sg_list_remove(&c->link);
        if (--a->nconns == 0 && !a->closing)
            uv_timer_stop(&a->sweep);
    }
    uv_close((uv_handle_t *)&c->tcp, on_conn_close);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *out);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void read_start(struct conn *c) {
    if (c->reading || c->closed)
        return;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
        c->reading = 1;
    else
        conn_close(c);
}

static void read_stop(struct conn *c) {
    if (!c->reading)
        return;
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
}

/* ---- writing answers ---- */

static void after_response(struct conn *c);

static void on_write(uv_write_t *req, int status) {
    struct wreq *w = (struct wreq *)req;
    struct conn *c = w->c;
    free(w);
    c->writes--;
    if (c->closed)
        return;
    if (status < 0) {
        sg_log_debug("admin conn %u: write failed: %s", c->id, uv_strerror(status));
        conn_close(c);
        return;
    }
    if (c->writes == 0 && c->state == SG_ADMIN_CONN_WRITING)
        after_response(c);
}

/* Queues w (taking it over). Returns false if c was closed instead. */
static bool queue_write(struct conn *c, struct wreq *w) {
    uv_buf_t b = uv_buf_init(w->data, (unsigned)w->len);
    w->c = c;
    int r = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (r < 0) {
        free(w);
        sg_log_debug("admin conn %u: write failed: %s", c->id, uv_strerror(r));
        conn_close(c);
        return false;
    }
    c->writes++;
    return true;
}

/* A handler's content type goes into the head: refuse anything that could
 * break out of the field. */
static bool valid_content_type(const char *s) {
    size_t n = 0;
    for (; s[n]; n++)
        if ((unsigned char)s[n] < 0x20 || s[n] == 0x7f || n >= 200)
            return false;
    return n > 0;
}

/* JSON text of {"error": why}, malloc'ed, with its length in *len. */
static char *error_json(const char *why, size_t *len) {
    json_t *j = json_pack("{s:s}", "error", why ? why : "error");
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!s)
        s = sg_xstrdup("{\"error\":\"out of memory\"}");
    *len = strlen(s);
    return s;
}

/*
 * Serializes resp (taking over its json and text) with the common headers,
 * queues it and moves c to WRITING (reading stopped) until it is written.
 * With RESP_CLOSE, or when the client did not ask to keep the connection,
 * the pending input is dropped and the connection lingers afterwards.
 */
static void send_response(struct conn *c, struct sg_admin_response *resp, unsigned flags) {
    int status = resp->status;
    char *body = NULL;
    size_t body_len = 0;
    const char *ctype = NULL;
    bool json_nl = false;

    if (status < 200 || status > 999) {
        sg_log_warn("admin conn %u: handler answered an invalid status %d", c->id, status);
        json_decref(resp->json);
        free(resp->text);
        resp->json = NULL;
        resp->text = NULL;
        status = 500;
    }
    if (resp->json) {
        body = json_dumps(resp->json, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(12));
        json_decref(resp->json);
        free(resp->text);
        if (!body) {
            sg_log_warn("admin conn %u: could not serialize the answer", c->id);
            status = 500;
        } else {
            body_len = strlen(body);
            ctype = "application/json";
            json_nl = true;
        }
    } else if (resp->text) {
        body = resp->text;
        body_len = resp->text_len;
        ctype = resp->content_type ? resp->content_type : "text/plain; charset=utf-8";
        if (!valid_content_type(ctype)) {
            sg_log_warn("admin conn %u: handler gave an invalid content type", c->id);
            ctype = "application/octet-stream";
        }
    }
    resp->json = NULL;
    resp->text = NULL;
    if (!body && status >= 400) {
        body = error_json(sg_http_reason(status), &body_len);
        ctype = "application/json";
        json_nl = true;
    }
    if (status == 204 || status == 304) { /* never a body, nor a Content-Length */
        free(body);
        body = NULL;
        body_len = 0;
        json_nl = false;
    }
    size_t total = body_len + json_nl;
    bool head_only = c->method_id == SG_METHOD_HEAD;

    bool closing = (flags & RESP_CLOSE) || !c->keep_alive;
    char date[40];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    char ctype_line[256] = "";
    if (ctype)
        snprintf(ctype_line, sizeof(ctype_line), "Content-Type: %s\r\n", ctype);
    char clen_line[48] = "";
    if (status != 204 && status != 304)
        snprintf(clen_line, sizeof(clen_line), "Content-Length: %zu\r\n", total);
    char head[640];
    int hn = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d %s\r\nDate: %s\r\n%s%sCache-Control: no-store\r\n"
                      "X-Content-Type-Options: nosniff\r\n%s%s\r\n",
                      status, sg_http_reason(status), date, ctype_line, clen_line,
                      (flags & RESP_CHALLENGE) ? "WWW-Authenticate: Bearer\r\n" : "",
                      closing         ? "Connection: close\r\n"
                      : c->minor == 0 ? "Connection: keep-alive\r\n"
                                      : "");
    if (hn < 0 || (size_t)hn >= sizeof(head))
        hn = 0; /* cannot happen: every part is bounded */

    size_t send_body = head_only ? 0 : total;
    struct wreq *w = sg_xmalloc(sizeof(*w) + (size_t)hn + send_body);
    w->len = (size_t)hn + send_body;
    memcpy(w->data, head, (size_t)hn);
    if (send_body) {
        if (body_len)
            memcpy(w->data + hn, body, body_len);
        if (json_nl)
            w->data[(size_t)hn + body_len] = '\n';
    }
    free(body);

    c->close_after = closing;
    if (closing)
        free_input(c); /* input is discarded from now on */
    read_stop(c);
    set_state(c, SG_ADMIN_CONN_WRITING);
    queue_write(c, w);
}

/* Sends "100 Continue" to a client that waits for it before its body. */
static void send_continue(struct conn *c) {
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    struct wreq *w = sg_xmalloc(sizeof(*w) + sizeof(cont) - 1);
    w->len = sizeof(cont) - 1;
    memcpy(w->data, cont, w->len);
    queue_write(c, w);
}

/* Answers a request that can't be served (bad syntax, limits, timeout)
 * with {"error": why} and closes the connection after. */
static void fail(struct conn *c, int status, const char *why) {
    sg_log_warn("admin conn %u: %d %s: %s", c->id, status, sg_http_reason(status), why ? why : "?");
    struct sg_admin_response resp = {.status = status};
    if (why)
        resp.json = json_pack("{s:s}", "error", why); /* NULL: the reason phrase */
    send_response(c, &resp, RESP_CLOSE);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
    struct conn *c = req->handle->data;
    if (status < 0 && !c->closed)
        conn_close(c);
}

/* The answer on c is written: linger and close, or go on with the next
 * request (already buffered, or to be read). */
static void after_response(struct conn *c) {
    if (c->close_after) {
        set_state(c, SG_ADMIN_CONN_CLOSING);
        if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
            conn_close(c);
            return;
        }
        read_start(c);
        return;
    }
    uint32_t left = c->in_len > c->req_end ? c->in_len - c->req_end : 0;
    c->scanned = 0;
    c->head_len = c->body_len = c->req_end = c->raw = 0;
    if (left == 0) {
        free_input(c);
        set_state(c, SG_ADMIN_CONN_IDLE);
        read_start(c);
        return;
    }
    memmove(c->in, c->in + (c->in_len - left), left);
    c->in_len = left;
    set_state(c, SG_ADMIN_CONN_HEAD);
    read_start(c);
    process(c);
}

/* ---- reading requests ---- */

/* How large c->in may grow in the current state. */
static uint32_t input_limit(const struct conn *c) {
    if (c->state == SG_ADMIN_CONN_BODY) {
        if (c->body == SG_BODY_LENGTH)
            return c->head_len + (uint32_t)c->content_length;
        return c->head_len + SG_ADMIN_MAX_BODY + CHUNK_SLACK;
    }
    return c->in_len > HEAD_BUF ? c->in_len : HEAD_BUF;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *out) {
    struct conn *c = h->data;
    (void)hint;
    out->base = NULL;
    out->len = 0;
    if (c->state == SG_ADMIN_CONN_CLOSING) {
        /* discarding: any room will do */
        if (!c->in) {
            c->in = malloc(MIN_INBUF);
            c->in_cap = c->in ? MIN_INBUF : 0;
        }
        c->in_len = 0;
        out->base = c->in;
        out->len = c->in_cap;
        return;
    }
    uint32_t limit = input_limit(c);
    if (c->in_cap - c->in_len < MIN_INBUF / 4 && c->in_cap < limit) {
        uint32_t cap = c->in_cap ? c->in_cap * 2 : MIN_INBUF;
        if (c->state == SG_ADMIN_CONN_BODY && c->body == SG_BODY_LENGTH)
            cap = limit; /* the size is known: one step */
        if (cap > limit)
            cap = limit;
        char *n = realloc(c->in, cap);
        if (n) {
            c->in = n;
            c->in_cap = cap;
        }
    }
    if (c->in) {
        out->base = c->in + c->in_len;
        out->len = c->in_cap - c->in_len;
    }
}

static bool bearer_ok(const struct sg_admin *a, const char *v, size_t len) {
    if (len < 7 || strncasecmp(v, "Bearer", 6) != 0 || (v[6] != ' ' && v[6] != '\t'))
        return false;
    size_t i = 7;
    while (i < len && (v[i] == ' ' || v[i] == '\t'))
        i++;
    const unsigned char *given = (const unsigned char *)v + i;
    size_t glen = len - i;
    /* Constant time: the work depends on the token's length only. */
    const unsigned char *want = (const unsigned char *)a->token;
    unsigned diff = glen != a->token_len;
    for (size_t k = 0; k < a->token_len; k++)
        diff |= want[k] ^ (k < glen ? given[k] : 0u);
    return diff == 0;
}

/* True when the request carries exactly one Authorization header with the
 * right bearer token. Never true when no token is configured. */
static bool authorized(const struct sg_admin *a, const struct sg_http_msg *msg) {
    const struct sg_http_header *auth = NULL;
    if (!a->token || a->token_len == 0)
        return false;
    for (uint32_t i = 0; i < msg->num_headers; i++) {
        if (!sg_http_name_eq(&msg->headers[i], "authorization", 13))
            continue;
        if (auth)
            return false;
        auth = &msg->headers[i];
    }
    return auth && bearer_ok(a, auth->value, auth->value_len);
}

/* Splits the request target into path and query offsets. Origin-form and
 * absolute-form (http[s]://authority/path) are accepted. */
static bool split_target(struct conn *c, const struct sg_http_msg *msg) {
    const char *t = msg->target, *end = t + msg->target_len;
    const char *path = t;
    if (t == end)
        return false;
    if (*t != '/') {
        size_t sl = 0;
        if (msg->target_len > 7 && strncasecmp(t, "http://", 7) == 0)
            sl = 7;
        else if (msg->target_len > 8 && strncasecmp(t, "https://", 8) == 0)
            sl = 8;
        if (sl == 0)
            return false;
        path = t + sl;
        while (path < end && *path != '/' && *path != '?')
            path++;
    }
    const char *q = memchr(path, '?', (size_t)(end - path));
    const char *pend = q ? q : end;
    c->path_off = (uint32_t)(path - c->in);
    c->path_len = (uint32_t)(pend - path);
    c->query_off = q ? (uint32_t)(q + 1 - c->in) : (uint32_t)(end - c->in);
    c->query_len = q ? (uint32_t)(end - q - 1) : 0;
    return true;
}

static bool is_health(const struct conn *c) {
    return (c->method_id == SG_METHOD_GET || c->method_id == SG_METHOD_HEAD) && c->path_len == 7 &&
           memcmp(c->in + c->path_off, "/health", 7) == 0;
}

static bool is_metrics(const struct conn *c) {
    return (c->method_id == SG_METHOD_GET || c->method_id == SG_METHOD_HEAD) && c->path_len == 8 &&
           memcmp(c->in + c->path_off, "/metrics", 8) == 0;
}

void sg_admin_set_public_metrics(struct sg_admin *a, bool public_metrics) {
    a->public_metrics = public_metrics;
}

static bool is_dashboard_page(const struct conn *c) {
    return (c->method_id == SG_METHOD_GET || c->method_id == SG_METHOD_HEAD) &&
           (c->path_len == 0 || (c->path_len == 1 && c->in[c->path_off] == '/'));
}

/*
 * Parses the head at the front of c->in. Returns true when it is complete
 * and the request may go on (to its body, or to dispatch); false when more
 * bytes are needed or the request was answered (error, 401).
 */
static bool read_head(struct conn *c) {
    struct sg_http_header hdrs[MAX_HEADERS];
    struct sg_http_msg msg;
    const struct sg_http_limits lim = {
        .max_header_bytes = SG_ADMIN_MAX_HEAD,
        .max_body_bytes = SG_ADMIN_MAX_BODY,
    };
    memset(&msg, 0, sizeof(msg));
    msg.headers = hdrs;
    msg.max_headers = MAX_HEADERS;
    c->method_id = SG_METHOD_OTHER;
    c->keep_alive = 0;
    c->minor = 1;
    int r = sg_http_parse_request(c->in, c->in_len, &c->scanned, &msg, &lim);
    if (r == SG_HTTP_PARTIAL)
        return false;
    if (r == SG_HTTP_ERROR) {
        fail(c, msg.error_status ? msg.error_status : 400, msg.error);
        return false;
    }
    c->scanned = 0;
    c->head_len = (uint32_t)r;
    c->method_off = (uint32_t)(msg.method - c->in);
    c->method_len = msg.method_len;
    c->method_id = msg.method_id;
    c->minor = msg.minor;
    c->keep_alive = msg.keep_alive;
    c->body = msg.body;
    c->content_length = msg.content_length;
    c->body_len = 0;
    if (!split_target(c, &msg)) {
        fail(c, 400, "unsupported request target");
        return false;
    }
    bool has_body = c->body == SG_BODY_CHUNKED || (c->body == SG_BODY_LENGTH && c->content_length);
    /* The token is checked before the body is read: without it nobody can
     * make us buffer a body. */
    /* The dashboard page (GET/HEAD of exactly "/", dashboard.h) holds no
     * data, so it is public like /health; what it fetches needs the token. */
    bool no_auth = is_health(c) || is_dashboard_page(c) || (c->a->public_metrics && is_metrics(c));
    if (!no_auth && !authorized(c->a, &msg)) {
        sg_log_warn("admin conn %u: 401 for %.*s %.*s: %s", c->id, (int)c->method_len,
                    c->in + c->method_off, (int)(c->path_len > 200 ? 200 : c->path_len),
                    c->in + c->path_off,
                    !c->a->token_len ? "no admin token configured" : "missing or wrong token");
        struct sg_admin_response resp = {.status = 401};
        resp.json = json_pack("{s:s}", "error",
                              c->a->token_len ? "missing or invalid bearer token"
                                              : "admin API disabled: no token configured");
        c->req_end = c->head_len;
        /* with a body we did not read, the connection can't go on */
        send_response(c, &resp, RESP_CHALLENGE | (has_body ? RESP_CLOSE : 0u));
        return false;
    }
    if (!has_body || no_auth) {
        /* A body on a request that needs no token is not read either: the
         * answer comes at once and the connection closes after it. */
        if (has_body)
            c->keep_alive = 0;
        c->req_end = c->head_len;
        return true;
    }
    c->raw = c->head_len;
    if (c->body == SG_BODY_CHUNKED)
        sg_http_chunked_init(&c->ck, SG_ADMIN_MAX_BODY, MAX_TRAILER);
    set_state(c, SG_ADMIN_CONN_BODY);
    if (msg.expect_continue && msg.minor >= 1 && c->in_len == c->head_len)
        send_continue(c);
    return !c->closed;
}

/* Collects body bytes. Returns true once the whole body is in
 * c->in[head_len, head_len + body_len); false when more is needed or the
 * request was answered (bad chunked framing, too large). */
static bool read_body(struct conn *c) {
    if (c->body == SG_BODY_LENGTH) {
        if (c->in_len - c->head_len < c->content_length)
            return false;
        c->body_len = (uint32_t)c->content_length;
        c->req_end = c->head_len + c->body_len;
        return true;
    }
    while (c->raw < c->in_len) {
        const char *data;
        size_t n;
        ssize_t used =
            sg_http_chunked_decode(&c->ck, c->in + c->raw, c->in_len - c->raw, &data, &n);
        if (used < 0) {
            fail(c, c->ck.error_status ? c->ck.error_status : 400, c->ck.error);
            return false;
        }
        if (n) {
            memmove(c->in + c->head_len + c->body_len, data, n);
            c->body_len += (uint32_t)n;
        }
        c->raw += (uint32_t)used;
        if (c->ck.done) {
            c->req_end = c->raw;
            return true;
        }
        if (used == 0)
            break;
    }
    /* Move the undecoded rest down to the end of the payload, so that the
     * buffer holds the body and at most a partial chunk line. */
    uint32_t dec_end = c->head_len + c->body_len;
    if (c->raw > dec_end) {
        uint32_t rest = c->in_len - c->raw;
        if (rest)
            memmove(c->in + dec_end, c->in + c->raw, rest);
        c->in_len = dec_end + rest;
        c->raw = dec_end;
    }
    return false;
}

/* The whole request is in; runs /health or the handlers and answers. */
static void dispatch(struct conn *c) {
    struct sg_admin *a = c->a;
    struct sg_admin_request req = {
        .method = (enum sg_http_method)c->method_id,
        .path = c->path_len ? c->in + c->path_off : "/",
        .path_len = c->path_len ? c->path_len : 1,
        .query = c->in + c->query_off,
        .query_len = c->query_len,
        .body = c->in + c->head_len,
        .body_len = c->body_len,
    };
    struct sg_admin_response resp = {.status = 200};
    bool handled = false;
    if (is_health(c)) {
        resp.json = json_pack("{s:s}", "status", "ok");
        handled = true;
    } else {
        /* by index: a handler may add handlers (and move the array) */
        for (size_t i = 0; i < a->nhandlers && !c->closed; i++) {
            const struct handler *h = &a->handlers[i];
            if (req.path_len < h->prefix_len || memcmp(req.path, h->prefix, h->prefix_len) != 0)
                continue;
            memset(&resp, 0, sizeof(resp));
            resp.status = 200;
            if (a->handlers[i].fn(a->handlers[i].arg, &req, &resp)) {
                handled = true;
                break;
            }
            json_decref(resp.json);
            free(resp.text);
            resp.json = NULL;
            resp.text = NULL;
        }
    }
    if (c->closed) { /* sg_admin_close from a handler */
        json_decref(resp.json);
        free(resp.text);
        return;
    }
    if (!handled) {
        resp.status = 404;
        resp.json = json_pack("{s:s}", "error", "not found");
    }
    sg_log_debug("admin conn %u: %.*s %.*s -> %d", c->id, (int)c->method_len, c->in + c->method_off,
                 (int)(req.path_len > 200 ? 200 : req.path_len), req.path, resp.status);
    send_response(c, &resp, 0);
}

/* Drives the request at the front of c->in as far as its bytes allow. */
static void process(struct conn *c) {
    if (c->state == SG_ADMIN_CONN_HEAD && !read_head(c))
        return;
    if (c->state == SG_ADMIN_CONN_BODY && !read_body(c))
        return;
    dispatch(c);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    struct conn *c = s->data;
    (void)buf;
    if (c->closed)
        return;
    if (nread == 0) {
        if (c->state == SG_ADMIN_CONN_IDLE && c->in_len == 0)
            free_input(c);
        return;
    }
    if (nread < 0) {
        if (nread == UV_ENOBUFS && c->state != SG_ADMIN_CONN_CLOSING && c->in) {
            /* no room left: cannot happen within the limits, but be safe */
            fail(c, c->state == SG_ADMIN_CONN_BODY ? 413 : 431, "request too large");
            return;
        }
        if (c->state == SG_ADMIN_CONN_HEAD || c->state == SG_ADMIN_CONN_BODY)
            sg_log_debug("admin conn %u: closed mid-request: %s", c->id, uv_strerror((int)nread));
        conn_close(c);
        return;
    }
    if (c->state == SG_ADMIN_CONN_CLOSING) {
        c->in_len = 0;
        return;
    }
    c->in_len += (uint32_t)nread;
    if (c->state == SG_ADMIN_CONN_IDLE)
        set_state(c, SG_ADMIN_CONN_HEAD);
    else if (c->state == SG_ADMIN_CONN_BODY)
        set_state(c, SG_ADMIN_CONN_BODY); /* the idle deadline counts from the last read */
    process(c);
}

/* ---- listener and sweep ---- */

static void on_sweep(uv_timer_t *t) {
    struct sg_admin *a = t->data;
    uint64_t now = uv_now(a->loop);
    for (int s = 0; s < SG_ADMIN_CONN_STATE_COUNT; s++) {
        struct sg_list *head = &a->conns[s];
        for (struct sg_list *it = head->next, *next; it != head; it = next) {
            next = it->next;
            struct conn *c = sg_container_of(it, struct conn, link);
            if (c->deadline > now || c->state != s)
                continue;
            if (s == SG_ADMIN_CONN_HEAD || s == SG_ADMIN_CONN_BODY) {
                fail(c, 408,
                     s == SG_ADMIN_CONN_HEAD ? "request head not complete in time"
                                             : "request body not complete in time");
            } else {
                sg_log_debug("admin conn %u: timeout, closing", c->id);
                conn_close(c);
            }
        }
    }
}

static uint64_t sweep_interval(const struct sg_admin *a) {
    uint64_t ms = a->header_ms < a->idle_ms ? a->header_ms : a->idle_ms;
    ms /= 4;
    if (ms > MAX_SWEEP_MS)
        ms = MAX_SWEEP_MS;
    return ms < 10 ? 10 : ms;
}

static void on_connection(uv_stream_t *server, int status) {
    struct sg_admin *a = server->data;
    if (status < 0) {
        sg_log_warn("admin: accept failed: %s", uv_strerror(status));
        return;
    }
    struct conn *c = sg_xcalloc(1, sizeof(*c));
    c->a = a;
    c->id = ++a->next_id;
    sg_list_init(&c->link);
    uv_tcp_init(a->loop, &c->tcp);
    c->tcp.data = c;
    a->nhandles++;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    if (a->nconns >= SG_ADMIN_MAX_CONNS) {
        uint64_t now = uv_now(a->loop);
        if (a->last_reject_log == 0 || now - a->last_reject_log >= 1000) {
            a->last_reject_log = now;
            sg_log_warn("admin: %d connections open, closing new ones", SG_ADMIN_MAX_CONNS);
        }
        conn_close(c);
        return;
    }
    c->listed = 1;
    if (a->nconns++ == 0)
        uv_timer_start(&a->sweep, on_sweep, sweep_interval(a), sweep_interval(a));
    set_state(c, SG_ADMIN_CONN_IDLE);
    uv_tcp_nodelay(&c->tcp, 1);
    read_start(c);
}

/* ---- public ---- */

/* Binds and listens with plain syscalls, so that a failure leaves no libuv
 * handle behind. Returns the socket or a negative errno. */
static int listen_socket(const struct sockaddr *addr) {
    socklen_t len;
    if (addr->sa_family == AF_INET)
        len = sizeof(struct sockaddr_in);
    else if (addr->sa_family == AF_INET6)
        len = sizeof(struct sockaddr_in6);
    else
        return -EAFNOSUPPORT;
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int on = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) < 0 || bind(fd, addr, len) < 0 ||
        listen(fd, LISTEN_BACKLOG) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    return fd;
}

struct sg_admin *sg_admin_start(uv_loop_t *loop, const struct sockaddr *addr, const char *token,
                                int *err) {
    int dummy;
    if (!err)
        err = &dummy;
    *err = 0;
    int fd = listen_socket(addr);
    if (fd < 0) {
        *err = fd;
        return NULL;
    }
    struct sg_admin *a = sg_xcalloc(1, sizeof(*a));
    a->loop = loop;
    a->header_ms = SG_ADMIN_HEADER_TIMEOUT;
    a->idle_ms = SG_ADMIN_IDLE_TIMEOUT;
    for (int s = 0; s < SG_ADMIN_CONN_STATE_COUNT; s++)
        sg_list_init(&a->conns[s]);
    uv_tcp_init(loop, &a->listener);
    a->listener.data = a;
    a->nhandles = 1;
    int r = uv_tcp_open(&a->listener, fd);
    if (r < 0)
        close(fd); /* not the handle's */
    else
        r = uv_listen((uv_stream_t *)&a->listener, LISTEN_BACKLOG, on_connection);
    if (r < 0) {
        /* unlikely after bind and listen succeeded; a is freed by the loop */
        a->closing = true;
        uv_close((uv_handle_t *)&a->listener, on_handle_close);
        *err = r;
        return NULL;
    }
    uv_timer_init(loop, &a->sweep);
    a->sweep.data = a;
    a->nhandles++;
    sg_admin_set_token(a, token);
    return a;
}

void sg_admin_set_token(struct sg_admin *a, const char *token) {
    if (a->token) {
        explicit_bzero(a->token, a->token_len);
        free(a->token);
    }
    a->token = NULL;
    a->token_len = 0;
    if (token && *token) {
        a->token = sg_xstrdup(token);
        a->token_len = strlen(token);
    }
}

int sg_admin_add_handler(struct sg_admin *a, const char *prefix, sg_admin_handler h, void *arg) {
    if (!prefix || !*prefix || !h)
        return -EINVAL;
    struct handler *n = realloc(a->handlers, (a->nhandlers + 1) * sizeof(*n));
    if (!n)
        return -ENOMEM;
    a->handlers = n;
    n[a->nhandlers] = (struct handler){
        .prefix = sg_xstrdup(prefix),
        .prefix_len = strlen(prefix),
        .fn = h,
        .arg = arg,
    };
    a->nhandlers++;
    return 0;
}

void sg_admin_close(struct sg_admin *a) {
    if (!a || a->closing)
        return;
    a->closing = true;
    uv_close((uv_handle_t *)&a->listener, on_handle_close);
    uv_close((uv_handle_t *)&a->sweep, on_handle_close);
    for (int s = 0; s < SG_ADMIN_CONN_STATE_COUNT; s++) {
        struct sg_list *head = &a->conns[s];
        while (!sg_list_empty(head))
            conn_close(sg_container_of(head->next, struct conn, link));
    }
}

int sg_admin_port(const struct sg_admin *a) {
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    int r = uv_tcp_getsockname(&a->listener, (struct sockaddr *)&ss, &len);
    if (r < 0)
        return r;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -EAFNOSUPPORT;
}

unsigned sg_admin_conn_count(const struct sg_admin *a) {
    return a->nconns;
}

void sg_admin_set_timeouts(struct sg_admin *a, uint64_t header_ms, uint64_t idle_ms) {
    if (header_ms)
        a->header_ms = header_ms;
    if (idle_ms)
        a->idle_ms = idle_ms;
    if (a->nconns > 0 && !a->closing)
        uv_timer_start(&a->sweep, on_sweep, sweep_interval(a), sweep_interval(a));
}
