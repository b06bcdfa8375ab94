/*
 * libFuzzer harness for the cache's HTTP rules (src/cache/object.c). An
 * input is up to three parts separated by NUL bytes, after a first byte of
 * route flags:
 *
 *   1. a request head (a fixed GET when it does not parse),
 *   2. a response head to that request, which is decided on, turned into
 *      an object (head, then the third part as its body) and a Vary
 *      descriptor; both must read back with sg_cache_obj_view;
 *   3. raw bytes taken as a stored object, as a Redis value could be
 *      (anything: a view must refuse it or describe bytes inside it), as a
 *      Cache-Control value and as an HTTP date.
 *
 * Every object that reads back is served in each way (HIT, HEAD, 304,
 * HTTP/1.0, with extra lines) into a buffer of exactly
 * sg_cache_serve_head_size bytes, so ASan catches a write past it; its
 * vary names build a secondary key into a small buffer; the conditional
 * fields of the request are checked against it.
 *
 * Build: make build/fuzz/fuzz_cache (or clang -fsanitize=fuzzer,address,undefined
 * with fuzz/fuzz_cache.c and the library sources).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/object.h"
#include "http/http.h"

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) {                                                                                \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #x);                  \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define MAXH     32
#define NOW_S    1700000000 /* a fixed wall clock for Expires and Date */
#define BODY_MAX 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char *dup_bytes(const uint8_t *d, size_t n) {
    char *b = malloc(n ? n : 1);
    CHECK(b != NULL);
    if (n)
        memcpy(b, d, n);
    return b;
}

/* The next part of the input (up to a NUL or the end), advancing *p. */
static const uint8_t *part(const uint8_t **p, const uint8_t *end, size_t *len) {
    const uint8_t *start = *p;
    const uint8_t *nul = memchr(start, 0, (size_t)(end - start));
    const uint8_t *stop = nul ? nul : end;
    *len = (size_t)(stop - start);
    *p = nul ? nul + 1 : end;
    return start;
}

static void serve_all(const struct sg_cache_obj *o, const struct sg_http_msg *req) {
    static const char *const marks[] = {"HIT", "STALE", "MISS"};
    static const char extra[] = "RateLimit: limit=10, remaining=9, reset=1\r\n";
    for (unsigned v = 0; v < 16; v++) {
        struct sg_cache_serve s = {
            .x_cache = marks[v % 3],
            .age_s = v * 1000003ull,
            .head_only = v & 1,
            .not_modified = (v >> 1) & 1,
            .keep_alive = (v >> 2) & 1,
            .client_http10 = (v >> 3) & 1,
            .extra = (v & 4) ? extra : NULL,
            .extra_len = (v & 4) ? sizeof(extra) - 1 : 0,
        };
        size_t cap = sg_cache_serve_head_size(o, &s);
        char *out = malloc(cap);
        CHECK(out != NULL);
        int n = sg_cache_serve_head(o, &s, out, cap);
        CHECK(n > 0 && (size_t)n <= cap);
        CHECK(memcmp(out, "HTTP/1.", 7) == 0);
        CHECK(n >= 4 && memcmp(out + n - 4, "\r\n\r\n", 4) == 0);
        free(out);
    }
    (void)sg_cache_not_modified(o, req);
    /* the secondary key, into buffers too small and large enough */
    char key[256];
    memcpy(key, "/k", 2);
    int k = sg_cache_key_vary(key, 2, sizeof(key), o->vary, o->m.vary_len, req);
    CHECK(k == -1 || (k >= 2 && (size_t)k <= sizeof(key)));
    k = sg_cache_key_vary(key, 2, 8, o->vary, o->m.vary_len, req);
    CHECK(k == -1 || (k >= 2 && k <= 8));
}

/* data[0..len) as a stored object: refused, or described inside it. */
static void view_raw(const char *data, size_t len, const struct sg_http_msg *req) {
    struct sg_cache_obj o;
    if (!sg_cache_obj_view(data, len, &o))
        return;
    const char *end = data + len;
    CHECK(o.reason >= data && o.reason + o.m.reason_len <= end);
    CHECK(o.fields >= o.reason && o.fields + o.m.fields_len <= end);
    CHECK(o.vary >= o.fields && o.vary + o.m.vary_len <= end);
    CHECK(o.body + o.m.body_len == end);
    CHECK(o.m.status >= 100 && o.m.status <= 999);
    serve_all(&o, req);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    uint8_t flags = data[0];
    const uint8_t *p = data + 1, *end = data + size;
    size_t reqn, respn, rawn;
    const uint8_t *reqp = part(&p, end, &reqn);
    const uint8_t *respp = part(&p, end, &respn);
    const uint8_t *rawp = p;
    rawn = (size_t)(end - p);

    /* the route: two vary names, stale windows, the flags' permissions */
    char vary0[] = "x-tenant-id", vary1[] = "accept-language";
    char *vary[] = {vary0, vary1};
    struct sg_route_cache rc = {
        .enabled = true,
        .ttl_ms = 300000,
        .vary = vary,
        .nvary = (flags & 3) % 3,
        .stale_while_revalidate_ms = (flags & 4) ? 10000 : 0,
        .stale_if_error_ms = (flags & 8) ? 60000 : 0,
        .lock_timeout_ms = 5000,
        .set_cookie = flags & 16,
        .authorization = flags & 32,
        .client_cache_control = flags & 64,
    };
    struct sg_http_limits lim = {.max_request_line = 0, .max_header_bytes = 65536};

    /* 1. the request */
    static const char fixed[] = "GET /x?y=1 HTTP/1.1\r\nHost: h\r\nX-Tenant-ID: t\r\n\r\n";
    char *rb = dup_bytes(reqp, reqn);
    struct sg_http_header rh[MAXH];
    struct sg_http_msg req;
    memset(&req, 0, sizeof(req));
    req.headers = rh;
    req.max_headers = MAXH;
    size_t sc = 0;
    if (sg_http_parse_request(rb, reqn, &sc, &req, &lim) <= 0) {
        free(rb);
        rb = dup_bytes((const uint8_t *)fixed, sizeof(fixed) - 1);
        memset(&req, 0, sizeof(req));
        req.headers = rh;
        req.max_headers = MAXH;
        sc = 0;
        CHECK(sg_http_parse_request(rb, sizeof(fixed) - 1, &sc, &req, &lim) > 0);
    }
    struct sg_cc reqcc;
    sg_cc_init(&reqcc);
    sg_cc_of(&reqcc, &req, true);
    char key[SG_CACHE_KEY_MAX];
    const char *host = req.host_index >= 0 ? req.headers[req.host_index].value : "";
    size_t host_len = req.host_index >= 0 ? req.headers[req.host_index].value_len : 0;
    int kl = sg_cache_key(key, sizeof(key), req.target, req.target_len, host, host_len, &rc, &req);
    CHECK(kl == -1 || (kl > 0 && (size_t)kl <= sizeof(key)));
    kl = sg_cache_key(key, 16, req.target, req.target_len, host, host_len, &rc, &req);
    CHECK(kl == -1 || (kl > 0 && kl <= 16));

    /* 2. the response, decided on and stored as an object */
    char *pb = dup_bytes(respp, respn);
    struct sg_http_header ph[MAXH];
    struct sg_http_msg resp;
    memset(&resp, 0, sizeof(resp));
    resp.headers = ph;
    resp.max_headers = MAXH;
    sc = 0;
    if (sg_http_parse_response(pb, respn, &sc, &resp, &lim, SG_METHOD_GET) > 0) {
        struct sg_cache_decision d;
        sg_cache_decide(&req, &reqcc, &resp, &rc, NOW_S, &d);
        CHECK(d.store || d.why != NULL);
        char *head = NULL;
        size_t hlen = 0;
        if (sg_cache_obj_head(&resp, &d, &head, &hlen) == 0) {
            size_t blen = rawn < BODY_MAX ? rawn : BODY_MAX;
            char *obj = malloc(hlen + blen + 1);
            CHECK(obj != NULL);
            memcpy(obj, head, hlen);
            if (blen)
                memcpy(obj + hlen, rawp, blen);
            sg_cache_obj_set_body_len(obj, blen);
            struct sg_cache_obj o;
            CHECK(sg_cache_obj_view(obj, hlen + blen, &o));
            CHECK(o.m.status == resp.status && o.m.body_len == blen);
            CHECK(o.m.ttl_ms == d.ttl_ms && o.m.swr_ms == d.swr_ms && o.m.sie_ms == d.sie_ms);
            serve_all(&o, &req);
            char *desc = NULL;
            size_t dlen = 0;
            if (sg_cache_obj_desc(head, hlen, &desc, &dlen) == 0) {
                struct sg_cache_obj od;
                CHECK(sg_cache_obj_view(desc, dlen, &od));
                CHECK(od.m.flags & SG_OBJ_VARY_DESC);
                CHECK(od.m.vary_len == o.m.vary_len);
                free(desc);
            }
            free(obj);
            free(head);
        }
    }

    /* 3. raw bytes as a stored object, a Cache-Control value and a date */
    char *raw = dup_bytes(rawp, rawn);
    view_raw(raw, rawn, &req);
    struct sg_cc cc;
    sg_cc_init(&cc);
    sg_cc_parse(&cc, raw, rawn);
    CHECK(cc.max_age >= -1 && cc.s_maxage >= -1 && cc.swr >= -1 && cc.sie >= -1);
    int64_t t = sg_http_date_parse(raw, rawn);
    CHECK(t >= -1);
    free(raw);
    free(pb);
    free(rb);
    return 0;
}
