/*
 * Rewriting message heads on their way through the gateway (RFC 9110
 * section 7.6): hop-by-hop fields are dropped (the parser marked them,
 * including every name listed in Connection), Via is added in both
 * directions, and requests get X-Forwarded-For, X-Forwarded-Proto and an
 * X-Request-ID. Each head is written once into a buffer of its own.
 */
#include <stdio.h>
#include <string.h>

#include "proxy/proxy_int.h"
#include "core/out.h"
#include "stats/accesslog.h"

static const char hex[] = "0123456789abcdef";

void sg_request_id(struct sg_worker *w, char out[33]) {
    uint64_t a = sg_worker_random(w), r2 = sg_worker_random(w);
    for (int i = 0; i < 16; i++) {
        out[i] = hex[(a >> (i * 4)) & 15];
        out[16 + i] = hex[(r2 >> (i * 4)) & 15];
    }
    out[32] = '\0';
}

static void put_header(struct sg_out *o, const struct sg_http_header *h) {
    sg_out_put(o, h->name, h->name_len);
    SG_OUT_PUTS(o, ": ");
    sg_out_put(o, h->value, h->value_len);
    SG_OUT_PUTS(o, "\r\n");
}

static struct sg_buf *finish(struct sg_buf *b, struct sg_out *o) {
    if (sg_out_overflowed(o)) {
        sg_buf_put(b);
        return NULL;
    }
    b->end = (uint32_t)(o->p - b->data);
    return b;
}

struct sg_buf *sg__request_head(struct sg_conn *c, const struct sg_http_msg *m,
                                const char *fallback_host, bool upgrade, bool strip_expect) {
    /* Room: the original head plus what is added. */
    size_t cap = m->target_len + m->method_len + 64;
    for (uint32_t i = 0; i < m->num_headers; i++)
        cap += m->headers[i].name_len + m->headers[i].value_len + 4;
    cap += 256 + strlen(fallback_host);
    struct sg_buf *b = sg_buf_get_size(cap);
    struct sg_out o = {b->data, b->data + b->cap};

    const char *path = m->target;
    size_t path_len = m->target_len;
    const char *host = NULL;
    size_t host_len = 0;
    if (path_len && path[0] != '/' && path[0] != '*') {
        /* absolute-form: the authority replaces Host (RFC 9112 3.2.2) */
        const char *sep = memchr(path, ':', path_len);
        if (sep && sep + 3 <= path + path_len && sep[1] == '/' && sep[2] == '/') {
            const char *end = path + path_len;
            host = sep + 3;
            const char *p = host;
            while (p < end && *p != '/' && *p != '?')
                p++;
            host_len = (size_t)(p - host);
            if (p < end) {
                path = p;
                path_len = (size_t)(end - p);
            } else {
                path = "/";
                path_len = 1;
            }
        }
    }
    if (!host && m->host_index >= 0) {
        host = m->headers[m->host_index].value;
        host_len = m->headers[m->host_index].value_len;
    }
    if (!host) {
        host = fallback_host; /* HTTP/1.0 without Host: the pool's name, as nginx does */
        host_len = strlen(fallback_host);
    }
    sg_out_put(&o, m->method, m->method_len);
    SG_OUT_PUTS(&o, " ");
    if (path[0] == '?') /* "http://h?q" -> "/?q" */
        SG_OUT_PUTS(&o, "/");
    sg_out_put(&o, path, path_len);
    SG_OUT_PUTS(&o, " HTTP/1.1\r\nHost: ");
    sg_out_put(&o, host, host_len);
    SG_OUT_PUTS(&o, "\r\n");

    bool have_rid = false;
    const struct sg_http_header *xff[16];
    unsigned nxff = 0;
    for (uint32_t i = 0; i < m->num_headers; i++) {
        const struct sg_http_header *h = &m->headers[i];
        switch (h->id) {
        case SG_HDR_HOST:
        case SG_HDR_X_FORWARDED_PROTO:
            continue;
        case SG_HDR_X_FORWARDED_FOR:
            if (nxff < 16)
                xff[nxff++] = h;
            continue;
        case SG_HDR_EXPECT:
            if (strip_expect)
                continue;
            break;
        case SG_HDR_UPGRADE:
            if (upgrade) {
                put_header(&o, h);
                continue;
            }
            break;
        case SG_HDR_X_REQUEST_ID:
            have_rid = true;
            break;
        default:
            break;
        }
        if (h->hop)
            continue;
        put_header(&o, h);
    }
    char ip[64];
    size_t iplen = sg_conn_ip(c, ip);
    SG_OUT_PUTS(&o, "X-Forwarded-For: ");
    for (unsigned i = 0; i < nxff; i++) {
        if (xff[i]->value_len == 0)
            continue;
        sg_out_put(&o, xff[i]->value, xff[i]->value_len);
        SG_OUT_PUTS(&o, ", ");
    }
    sg_out_put(&o, ip, iplen);
    SG_OUT_PUTS(&o, "\r\nX-Forwarded-Proto: http\r\nVia: 1.1 scalegate\r\n");
    if (!have_rid) {
        char rid[33];
        if (c->alog && c->alog->rid[0]) { /* made for the access log already */
            memcpy(rid, c->alog->rid, 32);
        } else {
            sg_request_id(c->w, rid);
        }
        SG_OUT_PUTS(&o, "X-Request-ID: ");
        sg_out_put(&o, rid, 32);
        SG_OUT_PUTS(&o, "\r\n");
    }
    if (upgrade)
        SG_OUT_PUTS(&o, "Connection: upgrade\r\n");
    SG_OUT_PUTS(&o, "\r\n");
    return finish(b, &o);
}

struct sg_buf *sg__response_head(const struct sg_http_msg *m, bool keep_alive, bool client_http10,
                                 bool decode, const struct sg_buf *extra) {
    size_t cap = m->reason_len + 96 + (extra ? extra->end : 0);
    for (uint32_t i = 0; i < m->num_headers; i++)
        cap += m->headers[i].name_len + m->headers[i].value_len + 4;
    struct sg_buf *b = sg_buf_get_size(cap);
    struct sg_out o = {b->data, b->data + b->cap};
    char status[4] = {(char)('0' + m->status / 100), (char)('0' + m->status / 10 % 10),
                      (char)('0' + m->status % 10), ' '};
    SG_OUT_PUTS(&o, "HTTP/1.1 ");
    sg_out_put(&o, status, 4);
    sg_out_put(&o, m->reason, m->reason_len);
    SG_OUT_PUTS(&o, "\r\n");
    bool upgrade = m->status == 101;
    bool own_xcache = extra && memmem(extra->data, extra->end, "X-Cache:", 8) != NULL;
    for (uint32_t i = 0; i < m->num_headers; i++) {
        const struct sg_http_header *h = &m->headers[i];
        if (h->id == SG_HDR_UPGRADE && upgrade) {
            put_header(&o, h);
            continue;
        }
        if (h->hop || (decode && h->id == SG_HDR_TRANSFER_ENCODING))
            continue;
        if (extra &&
            (sg_http_name_eq(h, "ratelimit", 9) || sg_http_name_eq(h, "ratelimit-policy", 16) ||
             (own_xcache && sg_http_name_eq(h, "x-cache", 7))))
            continue; /* the gateway's own fields replace the backend's */
        put_header(&o, h);
    }
    if (extra)
        sg_out_put(&o, extra->data, extra->end);
    SG_OUT_PUTS(&o, "Via: 1.1 scalegate\r\n");
    if (upgrade)
        SG_OUT_PUTS(&o, "Connection: upgrade\r\n");
    else if (!keep_alive)
        SG_OUT_PUTS(&o, "Connection: close\r\n");
    else if (client_http10)
        SG_OUT_PUTS(&o, "Connection: keep-alive\r\n");
    SG_OUT_PUTS(&o, "\r\n");
    return finish(b, &o);
}
