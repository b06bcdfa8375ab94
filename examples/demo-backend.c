/*
 * demo-backend: a small, fast HTTP/1.1 origin server for scalegate's demo
 * (`make run`), its integration tests and its benchmark (`make bench`).
 *
 *   demo-backend [--host 127.0.0.1] [--port N] [--threads N] [--delay MS]
 *                [--cpu MS] [--size BYTES] [--name STR] [--serial]
 *
 * Every response carries Content-Length, X-Backend (the --name, else the
 * port) and X-Body-Bytes (the length of the request body it read and threw
 * away). GET /health answers "ok\n". Query parameters override the options
 * per request: ?delay=MS&cpu=MS&size=BYTES&status=CODE. Keep-alive is the
 * HTTP/1.1 default; "Connection: close" (or HTTP/1.0 without keep-alive)
 * closes after the response. Pipelined requests are answered in order.
 *
 * It prints exactly one line, "demo-backend listening on HOST:PORT", once the
 * listeners accept, so scripts can learn a port picked with --port 0.
 *
 * Speed matters because the benchmark uses it as the ceiling: the common
 * response (200, default body, keep-alive, no request body) is formatted once
 * at start-up and written straight from static memory with uv_try_write; a
 * connection costs one malloc, a request none. Bodies for --size and ?size=
 * point into one read-only filler block built at start-up.
 *
 * Threads: --threads N runs N libuv loops, each with its own SO_REUSEPORT
 * listener (libuv 1.44 has no reuseport flag, so the sockets are made here
 * and handed over with uv_tcp_open).
 */
#include <uv.h>

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RBUF_SIZE     (16 * 1024)         /* request head must fit; else 431 */
#define SCRATCH_SIZE  4096                /* formatted headers of one write batch */
#define HDR_MAX       512                 /* room one formatted header needs */
#define MAX_IOV       128                 /* buffers of one write batch */
#define FILLER_SIZE   (1024 * 1024)       /* body bytes shared by every response */
#define MAX_BODY_SIZE (64L * 1024 * 1024) /* largest --size / ?size= */
#define MAX_THREADS   64
#define BACKLOG       4096

/* Options, read-only once the threads run. */
static struct {
    const char *host;
    int port;
    int threads;
    long delay_ms;
    long cpu_ms;
    long size; /* -1: "hello from NAME\n" */
    const char *name;
    bool serial; /* --serial: one delayed request at a time per thread */
} opt = {"127.0.0.1", -1, 1, 0, 0, -1, NULL, false};

/* --serial: when this thread's worker is free again (uv_now ms). */
static __thread uint64_t busy_until;

static char backend_id[128]; /* X-Backend value */
static char *filler;         /* FILLER_SIZE bytes of printable text */
static char *default_body;   /* points into filler or hello_body */
static size_t default_body_len;
static char hello_body[160];
static char *common_resp; /* full 200 keep-alive response, default body */
static size_t common_resp_len;

struct worker {
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_async_t stop;
    uv_signal_t sigint, sigterm; /* worker 0 only */
    pthread_t tid;
};

static struct worker *workers;
static int nworkers;

enum body_mode {
    BODY_NONE = 0,   /* no body, or body fully read */
    BODY_LENGTH,     /* Content-Length bytes left in body_left */
    BODY_CHUNK_SIZE, /* expecting a chunk-size line */
    BODY_CHUNK_DATA, /* body_left bytes of chunk data left */
    BODY_CHUNK_CRLF, /* CRLF after chunk data */
    BODY_TRAILER,    /* trailer lines until an empty line */
};

/* What one request asked for; filled by parse_head, used by respond. */
struct req {
    int status;
    long delay_ms;
    long cpu_ms;
    long size; /* -1: default body */
    bool health;
    bool head_method;
    bool close;        /* close after this response */
    bool keepalive_10; /* HTTP/1.0 client that asked for keep-alive */
    uint64_t body_bytes;
};

/*
 * One client connection; allocated on accept, freed when both of its handles
 * have closed (conn_handle_closed). Owns everything it points to.
 */
struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer; /* --delay / ?delay= */
    uv_shutdown_t shut;
    int handles_open;
    bool closed;    /* conn_close called */
    bool in_req;    /* head parsed, reading the body */
    bool waiting;   /* delay timer running; reading stopped */
    bool finishing; /* last response queued; shut down after it */
    enum body_mode body;
    uint64_t body_left;
    struct req req;
    size_t rpos, rlen, scan; /* unprocessed bytes are rbuf[rpos..rlen) */
    int niov;
    size_t slen;
    uv_buf_t iov[MAX_IOV];
    char scratch[SCRATCH_SIZE];
    char rbuf[RBUF_SIZE];
};

/* A queued write: a copy of the batch's scratch bytes that were not sent. */
struct wreq {
    uv_write_t req;
    char data[];
};

static void conn_close(struct conn *c);
static void process(struct conn *c);

/* Start-up failure: prints "demo-backend: MSG ARG[: uv error]" and exits 1. */
static void die(const char *msg, const char *arg, int err) {
    fprintf(stderr, "demo-backend: %s%s", msg, arg);
    if (err)
        fprintf(stderr, ": %s", uv_strerror(err));
    fputc('\n', stderr);
    exit(1);
}

static const char *reason(int status) {
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 408:
        return "Request Timeout";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Status";
    }
}

/* Spins for ms milliseconds of wall time: simulated request CPU work. */
static void burn(long ms) {
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        long el = (t.tv_sec - t0.tv_sec) * 1000L + (t.tv_nsec - t0.tv_nsec) / 1000000L;
        if (el >= ms)
            return;
    }
}

/* Parses a decimal number in [p, end); returns -1 if it is not one. */
static long parse_num(const char *p, const char *end) {
    long v = 0;
    if (p == end)
        return -1;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9' || v > 100000000000L)
            return -1;
        v = v * 10 + (*p - '0');
    }
    return v;
}

/* Applies ?delay=&cpu=&size=&status= from the query string [q, end). */
static void parse_query(struct req *r, const char *q, const char *end) {
    while (q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *pe = amp ? amp : end;
        const char *eq = memchr(q, '=', (size_t)(pe - q));
        if (eq) {
            size_t kl = (size_t)(eq - q);
            long v = parse_num(eq + 1, pe);
            if (v >= 0) {
                if (kl == 5 && memcmp(q, "delay", 5) == 0)
                    r->delay_ms = v;
                else if (kl == 3 && memcmp(q, "cpu", 3) == 0)
                    r->cpu_ms = v;
                else if (kl == 4 && memcmp(q, "size", 4) == 0)
                    r->size = v > MAX_BODY_SIZE ? MAX_BODY_SIZE : v;
                else if (kl == 6 && memcmp(q, "status", 6) == 0 && v >= 200 && v <= 599)
                    r->status = (int)v;
            }
        }
        q = pe + 1;
    }
}

/* Case-insensitive search for word in [p, end). */
static bool has_token(const char *p, const char *end, const char *word) {
    size_t wl = strlen(word);
    for (; p + wl <= end; p++)
        if (strncasecmp(p, word, wl) == 0)
            return true;
    return false;
}

/*
 * Parses the request head [h, h+len) (ending in CRLF CRLF) into c->req and
 * the body state. Returns 0, or an HTTP status to answer with before closing.
 */
static int parse_head(struct conn *c, const char *h, size_t len) {
    const char *end = h + len - 2; /* keep the last header's CRLF */
    const char *eol = memchr(h, '\n', len);
    struct req *r = &c->req;
    if (!eol || eol == h || eol[-1] != '\r')
        return 400;
    const char *sp1 = memchr(h, ' ', (size_t)(eol - h));
    if (!sp1)
        return 400;
    const char *tgt = sp1 + 1;
    const char *sp2 = memchr(tgt, ' ', (size_t)(eol - tgt));
    if (!sp2 || sp2 == tgt || eol - 1 - (sp2 + 1) != 8 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0)
        return 400;
    char minor = sp2[8];
    if (minor != '0' && minor != '1')
        return 505;

    memset(r, 0, sizeof(*r));
    r->status = 200;
    r->delay_ms = opt.delay_ms;
    r->cpu_ms = opt.cpu_ms;
    r->size = -1;
    r->head_method = (sp1 - h == 4 && memcmp(h, "HEAD", 4) == 0);
    const char *q = memchr(tgt, '?', (size_t)(sp2 - tgt));
    const char *pend = q ? q : sp2;
    r->health = (pend - tgt == 7 && memcmp(tgt, "/health", 7) == 0);
    if (q && !r->health)
        parse_query(r, q + 1, sp2);

    bool conn_close = false, conn_ka = false, chunked = false, has_cl = false;
    uint64_t cl = 0;
    for (const char *p = eol + 1; p < end;) {
        const char *le = memchr(p, '\n', (size_t)(end - p));
        if (!le)
            return 400;
        const char *ve = le[-1] == '\r' ? le - 1 : le;
        const char *colon = memchr(p, ':', (size_t)(ve - p));
        if (!colon || colon == p)
            return 400;
        size_t nl = (size_t)(colon - p);
        const char *v = colon + 1;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        switch (p[0] | 0x20) {
        case 'c':
            if (nl == 14 && strncasecmp(p, "content-length", 14) == 0) {
                const char *ve2 = ve;
                while (ve2 > v && (ve2[-1] == ' ' || ve2[-1] == '\t'))
                    ve2--;
                long n = parse_num(v, ve2);
                if (n < 0 || (has_cl && (uint64_t)n != cl))
                    return 400;
                cl = (uint64_t)n;
                has_cl = true;
            } else if (nl == 10 && strncasecmp(p, "connection", 10) == 0) {
                conn_close |= has_token(v, ve, "close");
                conn_ka |= has_token(v, ve, "keep-alive");
            }
            break;
        case 't':
            if (nl == 17 && strncasecmp(p, "transfer-encoding", 17) == 0) {
                if (!has_token(v, ve, "chunked"))
                    return 501;
                chunked = true;
            }
            break;
        default:
            break;
        }
        p = le + 1;
    }
    if (minor == '0') {
        r->keepalive_10 = conn_ka && !conn_close;
        r->close = !r->keepalive_10;
    } else {
        r->close = conn_close;
    }
    if (chunked) {
        c->body = BODY_CHUNK_SIZE;
    } else if (cl > 0) {
        c->body = BODY_LENGTH;
        c->body_left = cl;
    } else {
        c->body = BODY_NONE;
    }
    return 0;
}

/*
 * Consumes request body bytes from the read buffer. Returns 1 when the body
 * is complete, 0 when more input is needed, -1 on a malformed chunked body.
 */
static int consume_body(struct conn *c) {
    for (;;) {
        char *p = c->rbuf + c->rpos;
        size_t avail = c->rlen - c->rpos;
        switch (c->body) {
        case BODY_NONE:
            return 1;
        case BODY_LENGTH:
        case BODY_CHUNK_DATA: {
            size_t take = avail < c->body_left ? avail : (size_t)c->body_left;
            c->rpos += take;
            c->body_left -= take;
            c->req.body_bytes += take;
            if (c->body_left > 0)
                return 0;
            c->body = c->body == BODY_LENGTH ? BODY_NONE : BODY_CHUNK_CRLF;
            break;
        }
        case BODY_CHUNK_CRLF:
            if (avail < 2)
                return 0;
            if (p[0] != '\r' || p[1] != '\n')
                return -1;
            c->rpos += 2;
            c->body = BODY_CHUNK_SIZE;
            break;
        case BODY_CHUNK_SIZE:
        case BODY_TRAILER: {
            char *le = memchr(p, '\n', avail);
            if (!le)
                return avail > 1024 ? -1 : 0;
            size_t ll = (size_t)(le - p) + 1;
            if (ll < 2 || le[-1] != '\r')
                return -1;
            c->rpos += ll;
            if (c->body == BODY_TRAILER) {
                if (ll == 2)
                    c->body = BODY_NONE;
                break;
            }
            uint64_t n = 0;
            int digits = 0;
            for (char *d = p; d < le - 1; d++, digits++) {
                int x;
                if (*d >= '0' && *d <= '9')
                    x = *d - '0';
                else if ((*d | 0x20) >= 'a' && (*d | 0x20) <= 'f')
                    x = (*d | 0x20) - 'a' + 10;
                else if (*d == ';' || *d == ' ' || *d == '\t')
                    break;
                else
                    return -1;
                if (digits >= 15)
                    return -1;
                n = n * 16 + (uint64_t)x;
            }
            if (digits == 0)
                return -1;
            c->body_left = n;
            c->body = n ? BODY_CHUNK_DATA : BODY_TRAILER;
            break;
        }
        }
    }
}

static void write_cb(uv_write_t *req, int status) {
    struct conn *c = req->handle->data;
    free(req);
    if (status < 0 && status != UV_ECANCELED)
        conn_close(c);
}

/*
 * Sends the batch in c->iov: as much as the socket takes now, the rest queued
 * with uv_write. Static bytes (filler, common response) are referenced; scratch
 * bytes are copied, so the batch can be reused at once.
 */
static void flush(struct conn *c) {
    if (c->niov == 0 || c->closed) {
        c->niov = 0;
        c->slen = 0;
        return;
    }
    int n = uv_try_write((uv_stream_t *)&c->tcp, c->iov, (unsigned)c->niov);
    if (n == UV_EAGAIN || n == UV_ENOSYS)
        n = 0;
    if (n < 0) {
        c->niov = 0;
        c->slen = 0;
        conn_close(c);
        return;
    }
    size_t done = (size_t)n;
    int i = 0;
    while (i < c->niov && done >= c->iov[i].len)
        done -= c->iov[i++].len;
    if (i < c->niov) {
        c->iov[i].base += done;
        c->iov[i].len -= done;
        size_t copy = 0;
        for (int k = i; k < c->niov; k++)
            if (c->iov[k].base >= c->scratch && c->iov[k].base < c->scratch + SCRATCH_SIZE)
                copy += c->iov[k].len;
        struct wreq *w = malloc(sizeof(*w) + copy);
        if (!w) {
            c->niov = 0;
            c->slen = 0;
            conn_close(c);
            return;
        }
        size_t off = 0;
        for (int k = i; k < c->niov; k++) {
            if (c->iov[k].base >= c->scratch && c->iov[k].base < c->scratch + SCRATCH_SIZE) {
                memcpy(w->data + off, c->iov[k].base, c->iov[k].len);
                c->iov[k].base = w->data + off;
                off += c->iov[k].len;
            }
        }
        if (uv_write(&w->req, (uv_stream_t *)&c->tcp, c->iov + i, (unsigned)(c->niov - i),
                     write_cb) != 0) {
            free(w);
            c->niov = 0;
            c->slen = 0;
            conn_close(c);
            return;
        }
    }
    c->niov = 0;
    c->slen = 0;
}

static void add_iov(struct conn *c, const char *p, size_t len) {
    c->iov[c->niov].base = (char *)p;
    c->iov[c->niov].len = len;
    c->niov++;
}

/* Appends the response to c->req to the write batch. */
static void respond(struct conn *c) {
    struct req *r = &c->req;
    if (r->cpu_ms > 0)
        burn(r->cpu_ms);
    if (r->status == 200 && r->size < 0 && !r->health && !r->head_method && !r->close &&
        !r->keepalive_10 && r->body_bytes == 0) {
        if (c->niov == MAX_IOV)
            flush(c);
        add_iov(c, common_resp, common_resp_len);
        return;
    }

    const char *body = default_body;
    size_t blen = default_body_len;
    if (r->health) {
        body = "ok\n";
        blen = 3;
    } else if (r->size >= 0) {
        body = filler;
        blen = (size_t)r->size;
    }
    bool no_body = r->status == 204 || r->status == 304;
    if (no_body)
        blen = 0;
    size_t pieces = 1 + (blen + FILLER_SIZE - 1) / FILLER_SIZE;
    if (c->niov + (int)pieces > MAX_IOV || c->slen + HDR_MAX > SCRATCH_SIZE)
        flush(c);
    if (c->closed)
        return;

    char *h = c->scratch + c->slen;
    char cl[48] = "";
    if (!no_body)
        snprintf(cl, sizeof(cl), "Content-Length: %zu\r\n", blen);
    int hl = snprintf(
        h, HDR_MAX,
        "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\n%sX-Backend: %s\r\n"
        "X-Body-Bytes: %llu\r\n%s\r\n",
        r->status, reason(r->status), cl, backend_id, (unsigned long long)r->body_bytes,
        r->close ? "Connection: close\r\n" : (r->keepalive_10 ? "Connection: keep-alive\r\n" : ""));
    if (hl < 0 || hl >= HDR_MAX)
        hl = 0;
    c->slen += (size_t)hl;
    add_iov(c, h, (size_t)hl);
    if (r->head_method)
        return;
    while (blen > 0) {
        size_t n = blen < FILLER_SIZE ? blen : FILLER_SIZE;
        add_iov(c, body, n);
        blen -= n;
    }
}

/* Answers a malformed request and closes once it is sent. */
static void respond_error(struct conn *c, int status) {
    memset(&c->req, 0, sizeof(c->req));
    c->req.status = status;
    c->req.close = true;
    c->req.size = 0;
    respond(c);
    c->finishing = true;
}

static void shut_cb(uv_shutdown_t *req, int status) {
    (void)status;
    conn_close(req->handle->data);
}

/* Half-closes after queued writes are sent, then closes. */
static void conn_finish(struct conn *c) {
    if (c->closed)
        return;
    uv_read_stop((uv_stream_t *)&c->tcp);
    if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, shut_cb) != 0)
        conn_close(c);
}

static void conn_handle_closed(uv_handle_t *h) {
    struct conn *c = h->data;
    if (--c->handles_open == 0)
        free(c);
}

static void conn_close(struct conn *c) {
    if (c->closed)
        return;
    c->closed = true;
    uv_close((uv_handle_t *)&c->tcp, conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
    struct conn *c = h->data;
    (void)hint;
    buf->base = c->rbuf + c->rlen;
    buf->len = RBUF_SIZE - c->rlen;
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void timer_cb(uv_timer_t *t) {
    struct conn *c = t->data;
    c->waiting = false;
    respond(c);
    if (c->req.close)
        c->finishing = true;
    process(c);
    if (!c->closed && !c->waiting && !c->finishing)
        uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
}

/*
 * Answers every complete request in the read buffer, in order, as one write
 * batch. Stops at a delayed request (the timer resumes) or a closing one.
 */
static void process(struct conn *c) {
    while (!c->waiting && !c->finishing && !c->closed) {
        if (!c->in_req) {
            char *p = c->rbuf + c->rpos;
            size_t avail = c->rlen - c->rpos;
            while (avail > 0 && (*p == '\r' || *p == '\n')) { /* stray CRLF between requests */
                p++;
                avail--;
                c->rpos++;
            }
            if (avail == 0)
                break;
            size_t from = c->scan > 3 ? c->scan - 3 : 0;
            char *e = memmem(p + from, avail - from, "\r\n\r\n", 4);
            if (!e) {
                c->scan = avail;
                if (avail == RBUF_SIZE)
                    respond_error(c, 431);
                break;
            }
            size_t hl = (size_t)(e - p) + 4;
            int err = parse_head(c, p, hl);
            c->rpos += hl;
            c->scan = 0;
            if (err) {
                respond_error(c, err);
                break;
            }
            c->in_req = true;
        }
        int b = consume_body(c);
        if (b < 0) {
            respond_error(c, 400);
            break;
        }
        if (b == 0)
            break;
        c->in_req = false;
        if (c->req.delay_ms > 0) {
            uint64_t wait = (uint64_t)c->req.delay_ms;
            if (opt.serial && !c->req.health) {
                /* a server with one worker: requests wait their turn */
                uint64_t now = uv_now(c->tcp.loop);
                busy_until = (busy_until > now ? busy_until : now) + wait;
                wait = busy_until - now;
            }
            c->waiting = true;
            uv_read_stop((uv_stream_t *)&c->tcp);
            uv_timer_start(&c->timer, timer_cb, wait, 0);
            break;
        }
        respond(c);
        if (c->req.close)
            c->finishing = true;
    }
    flush(c);
    if (c->closed)
        return;
    if (c->rpos > 0) {
        memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
        c->rlen -= c->rpos;
        c->rpos = 0;
    }
    if (c->finishing)
        conn_finish(c);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    struct conn *c = s->data;
    (void)buf;
    if (nread > 0) {
        c->rlen += (size_t)nread;
        process(c);
    } else if (nread == UV_EOF) {
        conn_finish(c); /* answers already queued still go out */
    } else if (nread < 0) {
        conn_close(c);
    }
}

static void accept_cb(uv_stream_t *server, int status) {
    if (status < 0)
        return;
    struct conn *c = malloc(sizeof(*c));
    if (!c)
        return;
    memset(c, 0, offsetof(struct conn, iov));
    c->niov = 0;
    c->slen = 0;
    uv_tcp_init(server->loop, &c->tcp);
    uv_timer_init(server->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->handles_open = 2;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) != 0)
        conn_close(c);
}

static void walk_close(uv_handle_t *h, void *arg) {
    (void)arg;
    if (uv_is_closing(h))
        return;
    if (h->data) {
        conn_close(h->data);
    } else {
        uv_close(h, NULL);
    }
}

static void stop_cb(uv_async_t *a) {
    uv_walk(a->loop, walk_close, NULL);
}

static void signal_cb(uv_signal_t *s, int signum) {
    (void)s;
    (void)signum;
    for (int i = 0; i < nworkers; i++)
        uv_async_send(&workers[i].stop);
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    uv_run(&w->loop, UV_RUN_DEFAULT);
    return NULL;
}

/* Makes a bound SO_REUSEPORT socket for addr; returns the fd or -errno. */
static int make_listener(const struct sockaddr *addr, socklen_t alen) {
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
        bind(fd, addr, alen) != 0 || listen(fd, BACKLOG) != 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    return fd;
}

static void usage(FILE *f) {
    fprintf(f, "usage: demo-backend [--host ADDR] [--port N] [--threads N] [--delay MS]\n"
               "                    [--cpu MS] [--size BYTES] [--name STR] [--serial]\n"
               "  --serial: serve delayed requests one at a time (a one-worker server)\n"
               "  --port defaults to $PORT, else 0 (pick a free port)\n"
               "  per request: ?delay=MS&cpu=MS&size=BYTES&status=CODE; GET /health -> ok\n");
}

static long num_arg(const char *name, const char *s, long max) {
    long v = parse_num(s, s + strlen(s));
    if (v < 0 || v > max) {
        fprintf(stderr, "demo-backend: bad value for --%s: '%s'\n", name, s);
        exit(2);
    }
    return v;
}

static void parse_args(int argc, char **argv) {
    static const struct option longopts[] = {
        {"host", required_argument, NULL, 'H'},    {"port", required_argument, NULL, 'p'},
        {"threads", required_argument, NULL, 't'}, {"delay", required_argument, NULL, 'd'},
        {"cpu", required_argument, NULL, 'c'},     {"size", required_argument, NULL, 's'},
        {"name", required_argument, NULL, 'n'},    {"serial", no_argument, NULL, 'S'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "H:p:t:d:c:s:n:Sh", longopts, NULL)) != -1) {
        switch (ch) {
        case 'H':
            opt.host = optarg;
            break;
        case 'p':
            opt.port = (int)num_arg("port", optarg, 65535);
            break;
        case 't':
            opt.threads = (int)num_arg("threads", optarg, MAX_THREADS);
            break;
        case 'd':
            opt.delay_ms = num_arg("delay", optarg, 3600000);
            break;
        case 'c':
            opt.cpu_ms = num_arg("cpu", optarg, 3600000);
            break;
        case 's':
            opt.size = num_arg("size", optarg, MAX_BODY_SIZE);
            break;
        case 'n':
            opt.name = optarg;
            break;
        case 'S':
            opt.serial = true;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            exit(2);
        }
    }
    if (optind < argc) {
        usage(stderr);
        exit(2);
    }
    if (opt.threads < 1)
        opt.threads = 1;
    if (opt.port < 0) {
        const char *env = getenv("PORT");
        opt.port = env && *env ? (int)num_arg("port ($PORT)", env, 65535) : 0;
    }
    if (opt.name && strlen(opt.name) > 100)
        die("--name is too long: ", opt.name, 0);
}

/* Builds the filler, the default body and the preformatted common response. */
static void build_responses(void) {
    static const char pat[] =
        "scalegate demo-backend filler 0123456789 abcdefghijklmnopqrstuvwxyz\n";
    filler = malloc(FILLER_SIZE);
    if (!filler)
        die("out of memory", "", 0);
    for (size_t i = 0; i < FILLER_SIZE; i++)
        filler[i] = pat[i % (sizeof(pat) - 1)];
    if (opt.size >= 0) {
        default_body = filler; /* sizes above FILLER_SIZE are sent piecewise */
        default_body_len = (size_t)opt.size;
    } else {
        snprintf(hello_body, sizeof(hello_body), "hello from %s\n", backend_id);
        default_body = hello_body;
        default_body_len = strlen(hello_body);
    }
    char head[512];
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                      "X-Backend: %s\r\nX-Body-Bytes: 0\r\n\r\n",
                      default_body_len, backend_id);
    common_resp_len = (size_t)hl + default_body_len;
    common_resp = malloc(common_resp_len);
    if (!common_resp)
        die("out of memory", "", 0);
    memcpy(common_resp, head, (size_t)hl);
    for (size_t i = 0; i < default_body_len; i++) /* --size may exceed the filler */
        common_resp[(size_t)hl + i] = opt.size < 0 ? hello_body[i] : filler[i % FILLER_SIZE];
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);

    struct sockaddr_storage ss;
    socklen_t alen;
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    memset(&ss, 0, sizeof(ss));
    if (uv_ip4_addr(opt.host, opt.port, sin) == 0) {
        alen = sizeof(*sin);
    } else if (uv_ip6_addr(opt.host, opt.port, sin6) == 0) {
        alen = sizeof(*sin6);
    } else {
        die("bad --host (want an IPv4 or IPv6 address): ", opt.host, 0);
        return 1;
    }

    nworkers = opt.threads;
    workers = calloc((size_t)nworkers, sizeof(*workers));
    if (!workers)
        die("out of memory", "", 0);
    int port = opt.port;
    for (int i = 0; i < nworkers; i++) {
        if (i > 0) { /* later listeners share the port the first one got */
            if (ss.ss_family == AF_INET)
                sin->sin_port = htons((uint16_t)port);
            else
                sin6->sin6_port = htons((uint16_t)port);
        }
        int fd = make_listener((struct sockaddr *)&ss, alen);
        if (fd < 0) {
            fprintf(stderr, "demo-backend: cannot listen on %s:%d: %s\n", opt.host, port,
                    strerror(-fd));
            return 1;
        }
        if (i == 0) {
            struct sockaddr_storage got;
            socklen_t gl = sizeof(got);
            getsockname(fd, (struct sockaddr *)&got, &gl);
            port = ntohs(got.ss_family == AF_INET ? ((struct sockaddr_in *)&got)->sin_port
                                                  : ((struct sockaddr_in6 *)&got)->sin6_port);
        }
        struct worker *w = &workers[i];
        uv_loop_init(&w->loop);
        uv_tcp_init(&w->loop, &w->listener);
        w->listener.data = NULL;
        int err = uv_tcp_open(&w->listener, fd);
        if (err == 0)
            err = uv_listen((uv_stream_t *)&w->listener, BACKLOG, accept_cb);
        if (err)
            die("cannot listen on ", opt.host, err);
        uv_async_init(&w->loop, &w->stop, stop_cb);
        w->stop.data = NULL;
    }
    if (opt.name)
        snprintf(backend_id, sizeof(backend_id), "%s", opt.name);
    else
        snprintf(backend_id, sizeof(backend_id), "%d", port);
    build_responses();

    uv_signal_init(&workers[0].loop, &workers[0].sigint);
    uv_signal_init(&workers[0].loop, &workers[0].sigterm);
    workers[0].sigint.data = NULL;
    workers[0].sigterm.data = NULL;
    uv_signal_start(&workers[0].sigint, signal_cb, SIGINT);
    uv_signal_start(&workers[0].sigterm, signal_cb, SIGTERM);

    if (ss.ss_family == AF_INET6)
        printf("demo-backend listening on [%s]:%d\n", opt.host, port);
    else
        printf("demo-backend listening on %s:%d\n", opt.host, port);
    fflush(stdout);

    for (int i = 1; i < nworkers; i++)
        if (pthread_create(&workers[i].tid, NULL, worker_main, &workers[i]) != 0)
            die("pthread_create failed", "", 0);
    worker_main(&workers[0]);
    for (int i = 1; i < nworkers; i++)
        pthread_join(workers[i].tid, NULL);
    for (int i = 0; i < nworkers; i++)
        uv_loop_close(&workers[i].loop);
    free(workers);
    free(common_resp);
    free(filler);
    return 0;
}
