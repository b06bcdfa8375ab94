/*
 * libFuzzer harness for the HTTP/1.1 parser (src/http/parser.c). Each input
 * is parsed as a request head, as a response head and as a chunked body, in
 * one piece and split in two at a position derived from the input (each
 * piece in a buffer of exactly its size, so ASan catches any read past it),
 * and checks the invariants: lengths within the input, pointers inside the
 * consumed bytes, split == whole, decoded payload == scanned payload.
 *
 * Build: make build/fuzz/fuzz_http (or clang -fsanitize=fuzzer,address,undefined
 * with fuzz/fuzz_http.c and the src/http sources).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/http.h"

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) {                                                                                \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #x);                  \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define MAXH 24

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct sg_http_limits limits[2] = {
    {.max_request_line = 0, .max_header_bytes = 65536, .max_body_bytes = 0},
    {.max_request_line = 48, .max_header_bytes = 256, .max_body_bytes = 100},
};

static uint32_t fnv1a(const uint8_t *d, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ d[i]) * 16777619u;
    return h;
}

static char *dup_bytes(const uint8_t *d, size_t n) {
    char *b = malloc(n ? n : 1);
    CHECK(b != NULL);
    if (n)
        memcpy(b, d, n);
    return b;
}

static int parse(bool is_req, const char *b, size_t n, size_t *sc, struct sg_http_msg *m,
                 const struct sg_http_limits *lim, enum sg_http_method rm) {
    return is_req ? sg_http_parse_request(b, n, sc, m, lim)
                  : sg_http_parse_response(b, n, sc, m, lim, rm);
}

static bool in(const char *p, size_t n, const char *lo, const char *hi) {
    return p != NULL && p >= lo && p + n <= hi;
}

static void check_msg(bool is_req, int r, const struct sg_http_msg *m, const char *buf, size_t len,
                      const struct sg_http_limits *lim, enum sg_http_method rm) {
    if (r == SG_HTTP_PARTIAL)
        return;
    if (r == SG_HTTP_ERROR) {
        CHECK(m->error != NULL);
        if (is_req)
            CHECK(m->error_status == 400 || m->error_status == 413 || m->error_status == 414 ||
                  m->error_status == 431 || m->error_status == 501 || m->error_status == 505);
        else
            CHECK(m->error_status == 502);
        return;
    }
    CHECK(r > 0 && (size_t)r <= len);
    const char *end = buf + r;
    CHECK(end[-1] == '\n');
    CHECK(m->error_status == 0 && m->error == NULL);
    CHECK(m->minor <= 1);
    if (is_req) {
        CHECK(m->method_len > 0 && in(m->method, m->method_len, buf, end));
        CHECK(m->target_len > 0 && in(m->target, m->target_len, buf, end));
        CHECK(m->method_id < SG_METHOD_COUNT);
        CHECK(m->method_id == sg_http_method_id(m->method, m->method_len));
        CHECK(m->body != SG_BODY_EOF);
        CHECK(m->minor == 0 || m->host_index >= 0);
        if (m->method_id == SG_METHOD_CONNECT)
            CHECK(m->target[0] != '/');
        if (m->target[0] == '*' && m->method_id != SG_METHOD_CONNECT) /* "*" is a reg-name */
            CHECK(m->target_len == 1 && m->method_id == SG_METHOD_OPTIONS);
    } else {
        CHECK(m->status >= 100 && m->status <= 999);
        CHECK(in(m->reason, m->reason_len, buf, end));
        if (rm == SG_METHOD_HEAD || m->status < 200 || m->status == 204 || m->status == 304)
            CHECK(m->body == SG_BODY_NONE);
        if (m->body == SG_BODY_EOF)
            CHECK(!m->keep_alive);
    }
    CHECK(m->num_headers <= m->max_headers);
    CHECK(m->host_index >= -1 && m->host_index < (int)m->num_headers);
    if (m->host_index >= 0)
        CHECK(m->headers[m->host_index].id == SG_HDR_HOST);
    for (uint32_t i = 0; i < m->num_headers; i++) {
        const struct sg_http_header *h = &m->headers[i];
        CHECK(h->name_len > 0 && in(h->name, h->name_len, buf, end));
        CHECK(in(h->value, h->value_len, buf, end));
        CHECK(h->name + h->name_len < h->value || h->value_len == 0);
        CHECK(h->id < SG_HDR_COUNT && h->hop <= 1);
        for (uint32_t j = 0; j < h->value_len; j++)
            CHECK(h->value[j] != '\r' && h->value[j] != '\n' && h->value[j] != 0);
        if (h->value_len)
            CHECK(h->value[0] != ' ' && h->value[h->value_len - 1] != ' ');
    }
    CHECK(m->body <= SG_BODY_EOF);
    if (m->body == SG_BODY_LENGTH && lim->max_body_bytes)
        CHECK(m->content_length <= lim->max_body_bytes);
}

static void check_same(int r1, const struct sg_http_msg *a, const char *ab, int r2,
                       const struct sg_http_msg *b, const char *bb) {
    CHECK(r1 == r2);
    if (r1 == SG_HTTP_ERROR)
        CHECK(a->error_status == b->error_status);
    if (r1 <= 0)
        return;
#define OFF(m, base, f) ((m)->f ? (m)->f - (base) : -1)
    CHECK(OFF(a, ab, method) == OFF(b, bb, method) && a->method_len == b->method_len);
    CHECK(OFF(a, ab, target) == OFF(b, bb, target) && a->target_len == b->target_len);
    CHECK(OFF(a, ab, reason) == OFF(b, bb, reason) && a->reason_len == b->reason_len);
#undef OFF
    CHECK(a->method_id == b->method_id && a->minor == b->minor && a->status == b->status);
    CHECK(a->num_headers == b->num_headers);
    for (uint32_t i = 0; i < a->num_headers; i++) {
        const struct sg_http_header *x = &a->headers[i], *y = &b->headers[i];
        CHECK(x->name - ab == y->name - bb && x->name_len == y->name_len);
        CHECK(x->value - ab == y->value - bb && x->value_len == y->value_len);
        CHECK(x->id == y->id && x->hop == y->hop);
    }
    CHECK(a->body == b->body && a->content_length == b->content_length);
    CHECK(a->keep_alive == b->keep_alive && a->expect_continue == b->expect_continue);
    CHECK(a->upgrade == b->upgrade && a->host_index == b->host_index);
}

/* Parses a head whole and split at k; returns the whole result. */
static int fuzz_head(bool is_req, const uint8_t *data, size_t size, size_t k,
                     const struct sg_http_limits *lim, enum sg_http_method rm,
                     struct sg_http_msg *whole) {
    static struct sg_http_header h1[MAXH], h2[MAXH];
    struct sg_http_msg inc = {.headers = h2, .max_headers = MAXH};
    char *full = dup_bytes(data, size), *part = dup_bytes(data, k);
    size_t sc = 0;

    *whole = (struct sg_http_msg){.headers = h1, .max_headers = MAXH};
    int r1 = parse(is_req, full, size, &sc, whole, lim, rm);
    check_msg(is_req, r1, whole, full, size, lim, rm);

    sc = 0;
    int r2 = parse(is_req, part, k, &sc, &inc, lim, rm);
    CHECK(sc < (UINT64_C(1) << 32));
    check_msg(is_req, r2, &inc, part, k, lim, rm);
    if (r2 == SG_HTTP_PARTIAL) {
        CHECK(r1 == SG_HTTP_PARTIAL || r1 == SG_HTTP_ERROR || (size_t)r1 > k);
        r2 = parse(is_req, full, size, &sc, &inc, lim, rm);
        check_same(r1, whole, full, r2, &inc, full);
    } else if (r2 > 0) {
        check_same(r1, whole, full, r2, &inc, part);
    } else {
        CHECK(r1 == SG_HTTP_ERROR && whole->error_status == inc.error_status);
    }
    free(part);
    free(full);
    return r1;
}

/* Walks data as a chunked body whole, split at k and (short inputs) byte by
 * byte, and decodes it; all must agree. */
static void fuzz_chunked(const uint8_t *data, size_t size, size_t k, uint64_t max_body) {
    struct sg_http_chunked c1, c2, c3;
    char *full = dup_bytes(data, size), *a = dup_bytes(data, k), *b = dup_bytes(data + k, size - k);

    sg_http_chunked_init(&c1, max_body, 200);
    ssize_t n1 = sg_http_chunked_scan(&c1, full, size);
    CHECK(n1 == SG_HTTP_ERROR || (n1 >= 0 && (size_t)n1 <= size));
    CHECK(n1 == SG_HTTP_ERROR || c1.done || (size_t)n1 == size);
    if (n1 == SG_HTTP_ERROR)
        CHECK(c1.error != NULL && (c1.error_status == 400 || c1.error_status == 413));
    if (max_body)
        CHECK(c1.total <= max_body);

    sg_http_chunked_init(&c2, max_body, 200);
    ssize_t n2 = sg_http_chunked_scan(&c2, a, k);
    if (n2 >= 0 && !c2.done) {
        CHECK((size_t)n2 == k);
        ssize_t m = sg_http_chunked_scan(&c2, b, size - k);
        n2 = m < 0 ? m : n2 + m;
    }
    CHECK(n1 == n2 && c1.done == c2.done && c1.total == c2.total);
    if (n1 == SG_HTTP_ERROR)
        CHECK(c1.error_status == c2.error_status);

    if (size <= 512) {
        sg_http_chunked_init(&c3, max_body, 200);
        ssize_t n3 = 0, m = 0;
        for (size_t i = 0; i < size && !c3.done; i++) {
            char *one = dup_bytes(data + i, 1);
            m = sg_http_chunked_scan(&c3, one, 1);
            free(one);
            if (m < 0)
                break;
            n3 += m;
        }
        CHECK(m < 0 ? n1 == SG_HTTP_ERROR : n3 == n1);
    }

    /* decode: the payload spans add up to the scanned total */
    sg_http_chunked_init(&c3, max_body, 200);
    size_t off = 0;
    uint64_t payload = 0;
    for (;;) {
        const char *d;
        size_t dl;
        ssize_t n = sg_http_chunked_decode(&c3, full + off, size - off, &d, &dl);
        if (n < 0) {
            CHECK(n1 == SG_HTTP_ERROR);
            break;
        }
        CHECK((size_t)n <= size - off);
        if (dl)
            CHECK(d >= full + off && d + dl <= full + off + n);
        payload += dl;
        off += (size_t)n;
        if (c3.done || dl == 0) {
            CHECK(c3.done || off == size);
            CHECK((ssize_t)off == n1 && payload == c1.total);
            break;
        }
    }
    free(full);
    free(a);
    free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint32_t h = fnv1a(data, size);
    size_t k = size ? h % (size + 1) : 0;
    const struct sg_http_limits *lim = &limits[(h >> 16) & 1];
    enum sg_http_method rm = (enum sg_http_method)((h >> 8) % SG_METHOD_COUNT);
    struct sg_http_msg m;

    int r = fuzz_head(true, data, size, k, lim, SG_METHOD_OTHER, &m);
    if (r > 0 && m.body == SG_BODY_CHUNKED)
        fuzz_chunked(data + r, size - (size_t)r, (size - (size_t)r) / 2, lim->max_body_bytes);
    fuzz_head(false, data, size, k, lim, rm, &m);
    fuzz_chunked(data, size, k, lim->max_body_bytes);
    return 0;
}
