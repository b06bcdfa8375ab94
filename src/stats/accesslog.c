/*
 * The access log (see accesslog.h).
 */
#include "stats/accesslog.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"

#define MAX_WORKERS 256

/* An open log file, reference-counted: the main thread holds one while it
 * is current, each write in flight one. */
struct alog_file {
    int fd;
    bool owned; /* closed when the last reference goes (not stdout) */
    int refs;   /* under lock */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct alog_file *current; /* under lock */
static _Atomic bool on;

struct wlog {
    char *buf; /* lines being gathered */
    size_t len, cap;
    char *wbuf; /* the buffer being written */
    size_t wlen, woff, wcap;
    bool writing;
    uv_fs_t req;
    struct alog_file *file; /* the write's reference */
    uint64_t dropped;
    time_t sec;     /* the second of stamp */
    char stamp[24]; /* "2026-11-22T16:40:00." */
};

static struct wlog *wlogs[MAX_WORKERS];

static void file_unref(struct alog_file *f) {
    if (f == NULL)
        return;
    pthread_mutex_lock(&lock);
    bool last = --f->refs == 0;
    pthread_mutex_unlock(&lock);
    if (last) {
        if (f->owned)
            close(f->fd);
        free(f);
    }
}

int sg_alog_open(const char *path) {
    struct alog_file *f = NULL;
    if (path) {
        f = calloc(1, sizeof(*f));
        if (f == NULL)
            return -ENOMEM;
        if (strcmp(path, "stdout") == 0) {
            f->fd = STDOUT_FILENO;
        } else {
            f->fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
            if (f->fd < 0) {
                int err = -errno;
                free(f);
                return err;
            }
            f->owned = true;
        }
        f->refs = 1;
    }
    pthread_mutex_lock(&lock);
    struct alog_file *old = current;
    current = f;
    atomic_store(&on, f != NULL);
    pthread_mutex_unlock(&lock);
    file_unref(old);
    return 0;
}

bool sg_alog_on(void) {
    return atomic_load_explicit(&on, memory_order_relaxed);
}

static struct wlog *wlog_of(unsigned worker) {
    worker %= MAX_WORKERS;
    if (wlogs[worker] == NULL) /* only worker's own thread gets here for it */
        wlogs[worker] = calloc(1, sizeof(struct wlog));
    return wlogs[worker];
}

static void put(struct wlog *l, const char *s, size_t n) {
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

/* s as the inside of a JSON string (at most max bytes of s). */
static void put_json(struct wlog *l, const char *s) {
    static const char hex[] = "0123456789abcdef";
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            char e[2] = {'\\', (char)ch};
            put(l, e, 2);
        } else if (ch < 0x20 || ch == 0x7f) {
            char e[6] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]};
            put(l, e, 6);
        } else {
            put(l, (const char *)&ch, 1);
        }
    }
}

void sg_alog_line(unsigned worker, const struct sg_alog_rec *r, const char *client, int status,
                  uint64_t duration_ns, const char *route, const char *pool) {
    struct wlog *l = wlog_of(worker);
    if (l == NULL)
        return;
    /* the longest line: every string escaped 6 times over, plus the rest */
    size_t need = 6 * (strlen(r->target) + strlen(r->rid) + strlen(route) + strlen(pool) +
                       (r->server ? strlen(r->server) : 0)) +
                  512;
    if (l->len + need > l->cap) {
        if (l->len + need > SG_ALOG_MAX_BUFFER) {
            l->dropped++;
            return;
        }
        size_t cap = l->cap ? l->cap : 65536;
        while (cap < l->len + need)
            cap *= 2;
        char *b = realloc(l->buf, cap);
        if (b == NULL) {
            l->dropped++;
            return;
        }
        l->buf = b;
        l->cap = cap;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec != l->sec) {
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        strftime(l->stamp, sizeof(l->stamp), "%Y-%m-%dT%H:%M:%S.", &tm);
        l->sec = ts.tv_sec;
    }
    char num[160];
    put(l, "{\"time\":\"", 9);
    put(l, l->stamp, strlen(l->stamp));
    int n = snprintf(num, sizeof(num), "%03ldZ\",\"client\":\"", ts.tv_nsec / 1000000);
    put(l, num, (size_t)n);
    put_json(l, client);
    put(l, "\",\"method\":\"", 12);
    put_json(l, r->method);
    put(l, "\",\"path\":\"", 10);
    put_json(l, r->target);
    n = snprintf(num, sizeof(num),
                 "\",\"status\":%d,\"bytes\":%llu,\"duration_ms\":%.3f,\"route\":\"", status,
                 (unsigned long long)r->bytes, (double)duration_ns / 1e6);
    put(l, num, (size_t)n);
    put_json(l, route);
    put(l, "\",\"pool\":\"", 10);
    put_json(l, pool);
    put(l, "\",\"server\":", 11);
    if (r->server) {
        put(l, "\"", 1);
        put_json(l, r->server);
        put(l, "\"", 1);
    } else {
        put(l, "null", 4);
    }
    if (r->upstream_ns)
        n = snprintf(num, sizeof(num), ",\"upstream_ms\":%.3f", (double)r->upstream_ns / 1e6);
    else
        n = snprintf(num, sizeof(num), ",\"upstream_ms\":null");
    put(l, num, (size_t)n);
    put(l, ",\"cache\":", 9);
    if (r->cache) {
        put(l, "\"", 1);
        put_json(l, r->cache);
        put(l, "\"", 1);
    } else {
        put(l, "null", 4);
    }
    put(l, ",\"request_id\":\"", 15);
    put_json(l, r->rid);
    put(l, "\"}\n", 3);
}

static void write_more(struct wlog *l, uv_loop_t *loop);

static void on_written(uv_fs_t *req) {
    struct wlog *l = req->data;
    ssize_t r = req->result;
    uv_loop_t *loop = req->loop;
    uv_fs_req_cleanup(req);
    if (r < 0) {
        sg_log_warn("access log: write failed: %s (%zu bytes lost)", uv_strerror((int)r),
                    l->wlen - l->woff);
        l->woff = l->wlen;
    } else {
        l->woff += (size_t)r;
    }
    if (l->woff < l->wlen) {
        write_more(l, loop);
        return;
    }
    file_unref(l->file);
    l->file = NULL;
    l->writing = false;
}

static void write_more(struct wlog *l, uv_loop_t *loop) {
    uv_buf_t b = uv_buf_init(l->wbuf + l->woff, (unsigned)(l->wlen - l->woff));
    l->req.data = l;
    int r = uv_fs_write(loop, &l->req, l->file->fd, &b, 1, -1, on_written);
    if (r < 0) {
        sg_log_warn("access log: write failed: %s", uv_strerror(r));
        file_unref(l->file);
        l->file = NULL;
        l->writing = false;
    }
}

void sg_alog_flush(unsigned worker, uv_loop_t *loop) {
    struct wlog *l = wlogs[worker % MAX_WORKERS];
    if (l == NULL || l->writing || l->len == 0)
        return;
    if (l->dropped) {
        sg_log_warn("access log: %llu lines dropped (the disk is slower than the traffic)",
                    (unsigned long long)l->dropped);
        l->dropped = 0;
    }
    pthread_mutex_lock(&lock);
    struct alog_file *f = current;
    if (f)
        f->refs++;
    pthread_mutex_unlock(&lock);
    if (f == NULL) { /* turned off: what was gathered goes */
        l->len = 0;
        return;
    }
    /* swap: the gathered lines are written, the old write buffer gathers */
    char *b = l->wbuf;
    size_t bcap = l->wcap;
    l->wbuf = l->buf;
    l->wcap = l->cap;
    l->wlen = l->len;
    l->woff = 0;
    l->buf = b;
    l->cap = bcap;
    l->len = 0;
    l->file = f;
    l->writing = true;
    write_more(l, loop);
}

void sg_alog_cleanup(void) {
    for (unsigned i = 0; i < MAX_WORKERS; i++) {
        if (wlogs[i]) {
            free(wlogs[i]->buf);
            free(wlogs[i]->wbuf);
            free(wlogs[i]);
            wlogs[i] = NULL;
        }
    }
    sg_alog_open(NULL);
}
