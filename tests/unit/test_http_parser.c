/*
 * Unit tests of the HTTP/1.1 parser (src/http/parser.c): one test per rule
 * of RFC 9112 the parser enforces, incremental parsing (byte by byte gives
 * the same result as one piece), pipelining, and the chunked body walker
 * split at every byte position.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/http.h"

#define MAXH 32

static struct sg_http_header hdrs[MAXH];
static struct sg_http_msg msg;
static struct sg_http_limits lim;

static void reset_limits(void) {
    lim.max_request_line = 256;
    lim.max_header_bytes = 1024;
    lim.max_body_bytes = 1000;
}

static int setup(void **state) {
    (void)state;
    reset_limits();
    return 0;
}

static void msg_init(struct sg_http_msg *m, struct sg_http_header *h, uint32_t n) {
    memset(m, 0, sizeof(*m));
    m->headers = h;
    m->max_headers = n;
}

static int parse_n(const char *s, size_t len, bool resp, enum sg_http_method rm) {
    size_t scanned = 0;
    msg_init(&msg, hdrs, MAXH);
    return resp ? sg_http_parse_response(s, len, &scanned, &msg, &lim, rm)
                : sg_http_parse_request(s, len, &scanned, &msg, &lim);
}

static int req(const char *s) {
    return parse_n(s, strlen(s), false, SG_METHOD_OTHER);
}

static int resp(const char *s, enum sg_http_method rm) {
    return parse_n(s, strlen(s), true, rm);
}

#define REQ_OK(s)     assert_int_equal(req(s), (int)strlen(s))
#define RESP_OK(s, m) assert_int_equal(resp(s, m), (int)strlen(s))
#define REQ_ERR(s, st)                                                                             \
    do {                                                                                           \
        assert_int_equal(req(s), SG_HTTP_ERROR);                                                   \
        assert_int_equal(msg.error_status, st);                                                    \
        assert_non_null(msg.error);                                                                \
    } while (0)
#define RESP_ERR(s)                                                                                \
    do {                                                                                           \
        assert_int_equal(resp(s, SG_METHOD_GET), SG_HTTP_ERROR);                                   \
        assert_int_equal(msg.error_status, 502);                                                   \
    } while (0)

static bool span_is(const char *p, uint32_t n, const char *want) {
    return p != NULL && n == strlen(want) && memcmp(p, want, n) == 0;
}

static const struct sg_http_header *find_hdr(const char *name) {
    for (uint32_t i = 0; i < msg.num_headers; i++)
        if (sg_http_name_eq(&msg.headers[i], name, strlen(name)))
            return &msg.headers[i];
    return NULL;
}

/* ---- request line ---- */

static void test_simple_get(void **state) {
    (void)state;
    const char *s = "GET /index.html?a=b HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n";
    REQ_OK(s);
    assert_true(span_is(msg.method, msg.method_len, "GET"));
    assert_int_equal(msg.method_id, SG_METHOD_GET);
    assert_true(span_is(msg.target, msg.target_len, "/index.html?a=b"));
    assert_int_equal(msg.minor, 1);
    assert_int_equal(msg.num_headers, 2);
    assert_int_equal(msg.host_index, 0);
    assert_true(span_is(hdrs[0].name, hdrs[0].name_len, "Host"));
    assert_true(span_is(hdrs[0].value, hdrs[0].value_len, "example.com"));
    assert_int_equal(hdrs[0].id, SG_HDR_HOST);
    assert_int_equal(hdrs[1].id, SG_HDR_OTHER);
    assert_int_equal(msg.body, SG_BODY_NONE);
    assert_true(msg.keep_alive);
    assert_false(msg.expect_continue);
    assert_false(msg.upgrade);
    assert_int_equal(msg.error_status, 0);
    /* zero-copy: pointers into the caller's buffer */
    assert_ptr_equal(msg.method, s);
}

static void test_method_ids(void **state) {
    (void)state;
    static const struct {
        const char *name;
        int id;
    } t[] = {
        {"GET", SG_METHOD_GET},        {"HEAD", SG_METHOD_HEAD},     {"POST", SG_METHOD_POST},
        {"PUT", SG_METHOD_PUT},        {"DELETE", SG_METHOD_DELETE}, {"OPTIONS", SG_METHOD_OPTIONS},
        {"TRACE", SG_METHOD_TRACE},    {"PATCH", SG_METHOD_PATCH},   {"PURGE", SG_METHOD_OTHER},
        {"get", SG_METHOD_OTHER},      {"GETS", SG_METHOD_OTHER},    {"M-SEARCH", SG_METHOD_OTHER},
        {"PROPFIND", SG_METHOD_OTHER}, {"X", SG_METHOD_OTHER}};
    char buf[128];
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        snprintf(buf, sizeof(buf), "%s / HTTP/1.1\r\nHost: h\r\n\r\n", t[i].name);
        REQ_OK(buf);
        assert_int_equal(msg.method_id, t[i].id);
        assert_int_equal(sg_http_method_id(t[i].name, strlen(t[i].name)), t[i].id);
        if (t[i].id != SG_METHOD_OTHER)
            assert_string_equal(sg_http_method_name(t[i].id), t[i].name);
    }
    REQ_OK("CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n");
    assert_int_equal(msg.method_id, SG_METHOD_CONNECT);
    assert_null(sg_http_method_name(SG_METHOD_OTHER));
}

static void test_invalid_method(void **state) {
    (void)state;
    REQ_ERR("G(T / HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("GE@T / HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    REQ_ERR(" / HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("\x01GET / HTTP/1.1\r\nHost: h\r\n\r\n", 400);
}

static void test_target_forms(void **state) {
    (void)state;
    REQ_OK("GET http://example.com/x?y HTTP/1.1\r\nHost: other\r\n\r\n");
    assert_true(span_is(msg.target, msg.target_len, "http://example.com/x?y"));
    REQ_OK("GET HTTPS://example.com:8443 HTTP/1.1\r\nHost: h\r\n\r\n");
    REQ_OK("GET http://[::1]:80/ HTTP/1.1\r\nHost: h\r\n\r\n");
    REQ_OK("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
    REQ_OK("CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: h\r\n\r\n");
    REQ_OK("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_true(span_is(msg.target, msg.target_len, "*"));
    REQ_OK("OPTIONS /x HTTP/1.1\r\nHost: h\r\n\r\n");

    REQ_ERR("GET x HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("OPTIONS *x HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("GET ftp://h/ HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("GET http:// HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("GET http://user@h/ HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("GET example.com:443 HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("CONNECT /x HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("CONNECT example.com HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("CONNECT example.com: HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("CONNECT :443 HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("CONNECT h:123456 HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("CONNECT http://h:443/ HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    /* control characters, spaces and non-ASCII bytes */
    REQ_ERR("GET /a\x01 HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("GET /a\x7f HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("GET /a\tb HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("GET /\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("GET  HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    /* a long target goes through the 8-byte fast path */
    REQ_OK("GET /abcdefghijklmnopqrstuvwxyz/0123456789?q=1&r=%20 HTTP/1.1\r\nHost: h\r\n\r\n");
    REQ_ERR("GET /abcdefghijklmnopqrstuvwxyz/01234\x02"
            "56789 HTTP/1.1\r\nHost: h\r\n\r\n",
            400);
}

static void test_version(void **state) {
    (void)state;
    REQ_OK("GET / HTTP/1.0\r\n\r\n");
    assert_int_equal(msg.minor, 0);
    REQ_OK("GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_int_equal(msg.minor, 1);
    REQ_OK("GET / HTTP/1.7\r\nHost: h\r\n\r\n"); /* a higher minor is served as 1.1 */
    assert_int_equal(msg.minor, 1);

    REQ_ERR("GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505);
    REQ_ERR("GET / HTTP/0.9\r\nHost: h\r\n\r\n", 505);
    REQ_ERR("GET / HTTP/3.0\r\nHost: h\r\n\r\n", 505);
    REQ_ERR("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505);

    REQ_ERR("GET / HTTP/1.10\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("GET / http/1.1\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("GET / HTTP/1\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("GET / HTTP/11\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("GET / HTTX/1.1\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("GET / HTTP/1.x\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("GET / HTTP/1.1 \r\nHost: h\r\n\r\n", 400);
    REQ_ERR("GET /\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("GET / \r\nHost: h\r\n\r\n", 400);
    REQ_ERR("GET / HTTP/1.1\rHost: h\r\n\r\n", 400);
}

/* ---- field lines ---- */

static void test_obs_fold(void **state) {
    (void)state;
    REQ_ERR("GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n 2\r\n\r\n", 400);
    REQ_ERR("GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\t2\r\n\r\n", 400);
    /* whitespace between the start line and the first field */
    REQ_ERR("GET / HTTP/1.1\r\n Host: h\r\n\r\n", 400);
}

static void test_bare_cr(void **state) {
    (void)state;
    REQ_ERR("GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r2\r\n\r\n", 400);
    REQ_ERR("GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\r\n\r\n", 400);
    REQ_ERR("GET / HTTP/1.1\r\nHost: h\r\n\rX-A: 1\r\n\r\n", 400);
    REQ_ERR("GET / HTTP/1.1\r\nHost: h\r\n\r\r\n\r\n", 400);
    REQ_ERR("GET /\r HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    REQ_ERR("\rGET / HTTP/1.1\r\nHost: h\r\n\r\n", 400);
}

static void test_ctl_in_value(void **state) {
    (void)state;
    static const char ctl[] = {1, 8, 0x0b, 0x0c, 0x1b, 0x1f, 0x7f};
    char buf[128];
    for (size_t i = 0; i < sizeof(ctl); i++) {
        snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: h\r\nX-A: a%cb\r\n\r\n", ctl[i]);
        REQ_ERR(buf, 400);
    }
    /* NUL: build the bytes by hand since strlen stops at it */
    static const char nul[] = "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\0b\r\n\r\n";
    assert_int_equal(parse_n(nul, sizeof(nul) - 1, false, SG_METHOD_OTHER), SG_HTTP_ERROR);
    assert_int_equal(msg.error_status, 400);
    static const char nul_long[] = "GET / HTTP/1.1\r\nHost: h\r\nX-A: 0123456789abcdef\0b\r\n\r\n";
    assert_int_equal(parse_n(nul_long, sizeof(nul_long) - 1, false, SG_METHOD_OTHER),
                     SG_HTTP_ERROR);
    /* HTAB and obs-text are fine */
    REQ_OK("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\tb \xe9\xff\r\n\r\n");
    assert_true(span_is(hdrs[1].value, hdrs[1].value_len, "a\tb \xe9\xff"));
}

static void test_field_name_errors(void **state) {
    (void)state;
    REQ_ERR("GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400);
    REQ_ERR("GET / HTTP/1.1\r\nHost: h\r\nX-A\t: 1\r\n\r\n", 400);
    REQ_ERR("GET / HTTP/1.1\r\nHost: h\r\n: 1\r\n\r\n", 400);
    REQ_ERR("GET / HTTP/1.1\r\nHost: h\r\nX-A 1\r\n\r\n", 400);
    REQ_ERR("GET / HTTP/1.1\r\nHost: h\r\nX-A\r\n\r\n", 400);
    REQ_ERR("GET / HTTP/1.1\r\nHost: h\r\nX@A: 1\r\n\r\n", 400);
    REQ_ERR("GET / HTTP/1.1\r\nHost: h\r\nX\x80: 1\r\n\r\n", 400);
    REQ_ERR("GET / HTTP/1.1\r\nHost: h\r\n\x01: 1\r\n\r\n", 400);
}

static void test_value_trim(void **state) {
    (void)state;
    REQ_OK("GET / HTTP/1.1\r\nHost:h\r\nX-A: \t a b \t \r\nX-B:\r\nX-C:   \r\n\r\n");
    assert_true(span_is(hdrs[0].value, hdrs[0].value_len, "h"));
    assert_true(span_is(hdrs[1].value, hdrs[1].value_len, "a b"));
    assert_int_equal(hdrs[2].value_len, 0);
    assert_int_equal(hdrs[3].value_len, 0);
    assert_true(span_is(hdrs[3].name, hdrs[3].name_len, "X-C"));
}

static void test_bare_lf(void **state) {
    (void)state;
    REQ_OK("GET / HTTP/1.1\nHost: h\nX-A: 1\n\n");
    assert_int_equal(msg.num_headers, 2);
    assert_true(span_is(hdrs[1].value, hdrs[1].value_len, "1"));
    REQ_OK("GET / HTTP/1.1\r\nHost: h\nX-A: 1\r\n\n");
    REQ_OK("GET / HTTP/1.1\nHost: h\r\n\r\n");
}

static void test_leading_empty_lines(void **state) {
    (void)state;
    const char *s = "\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n";
    REQ_OK(s);
    assert_ptr_equal(msg.method, s + 4);
    REQ_OK("\nGET / HTTP/1.1\r\nHost: h\r\n\r\n");
    REQ_OK("\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n");
    REQ_ERR("\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    /* only empty lines so far: wait for more */
    assert_int_equal(req("\r\n\r\n"), SG_HTTP_PARTIAL);
    assert_int_equal(req("\r"), SG_HTTP_PARTIAL);
    /* not before a response */
    RESP_ERR("\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
}

/* ---- framing ---- */

static void test_content_length(void **state) {
    (void)state;
    REQ_OK("POST / HTTP/1.1\r\nHost: h\r\nContent-Length:  12 \r\n\r\n");
    assert_int_equal(msg.body, SG_BODY_LENGTH);
    assert_int_equal(msg.content_length, 12);
    REQ_OK("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n");
    assert_int_equal(msg.body, SG_BODY_LENGTH);
    assert_int_equal(msg.content_length, 0);
    REQ_OK("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0001000\r\n\r\n");
    assert_int_equal(msg.content_length, 1000);

    REQ_ERR("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 400);
    REQ_ERR("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\ncontent-length: 6\r\n\r\n", 400);
    REQ_ERR("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n", 400);
    REQ_ERR("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n", 400);
    REQ_ERR("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400);
    REQ_ERR("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\n", 400);
    REQ_ERR("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x10\r\n\r\n", 400);
    REQ_ERR("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1 2\r\n\r\n", 400);
    REQ_ERR("POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n", 400);
    REQ_ERR("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400);
    REQ_ERR("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551616\r\n\r\n", 400);
}

static void test_body_limit(void **state) {
    (void)state;
    REQ_OK("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n");
    REQ_ERR("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1001\r\n\r\n", 413);
    lim.max_body_bytes = 0; /* unlimited */
    REQ_OK("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9999999999999\r\n\r\n");
    assert_int_equal(msg.content_length, 9999999999999ull);
}

static void test_cl_with_te(void **state) {
    (void)state;
    REQ_ERR("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
            "Transfer-Encoding: chunked\r\n\r\n",
            400);
    REQ_ERR("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
            "Content-Length: 5\r\n\r\n",
            400);
}

static void test_transfer_encoding(void **state) {
    (void)state;
    static const char *ok[] = {"chunked", "Chunked", "CHUNKED", "  chunked  ", ", chunked"};
    static const struct {
        const char *v;
        int status;
    } bad[] = {{"gzip, chunked", 501},
               {"deflate,chunked", 501},
               {"identity, chunked", 501},
               {"chunked, gzip", 400},
               {"gzip", 400},
               {"identity", 400},
               {"chunked, chunked", 400},
               {"", 400},
               {"chunked;q=1", 400},
               {"chunked x", 400},
               {"chunk", 400},
               {"chunkedx", 400},
               {"\"chunked\"", 400}};
    char buf[256];
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        snprintf(buf, sizeof(buf), "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: %s\r\n\r\n",
                 ok[i]);
        REQ_OK(buf);
        assert_int_equal(msg.body, SG_BODY_CHUNKED);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(buf, sizeof(buf), "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: %s\r\n\r\n",
                 bad[i].v);
        REQ_ERR(buf, bad[i].status);
    }
    /* split over two fields, the list is their concatenation */
    REQ_ERR("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n"
            "Transfer-Encoding: chunked\r\n\r\n",
            501);
    REQ_ERR("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
            "Transfer-Encoding: chunked\r\n\r\n",
            400);
    REQ_ERR("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
            "Transfer-Encoding: gzip\r\n\r\n",
            400);
    /* a count of chunked codings must not wrap around */
    char *many = malloc(300 * 9 + 128);
    size_t n = (size_t)sprintf(many, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: ");
    for (int i = 0; i < 257; i++)
        n += (size_t)sprintf(many + n, "%schunked", i ? "," : "");
    sprintf(many + n, "\r\n\r\n");
    lim.max_header_bytes = 65536;
    lim.max_request_line = 0;
    REQ_ERR(many, 400);
    free(many);
}

static void test_te_http10(void **state) {
    (void)state;
    REQ_ERR("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400);
    REQ_OK("POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\n");
    assert_int_equal(msg.body, SG_BODY_LENGTH);
}

static void test_host(void **state) {
    (void)state;
    REQ_ERR("GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400);
    REQ_OK("GET / HTTP/1.0\r\n\r\n");
    assert_int_equal(msg.host_index, -1);
    REQ_ERR("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400);
    REQ_ERR("GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n", 400);
    static const char *ok[] = {
        "example.com",           "example.com:8080", "127.0.0.1", "[::1]:80", "[2001:db8::a]",
        "xn--bcher-kva.example", "a_b.c~d",          "h:",        ""};
    static const char *bad[] = {"a b",    "a/b",  "u@h", "[::1",  "[]:80", "h:8x",     "h:80:",
                                "[::1]x", "a\"b", "h?",  "[g::]", "a#b",   "\xc3\xa9", "a<b"};
    char buf[128];
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nX-A: 1\r\nHost: %s\r\n\r\n", ok[i]);
        REQ_OK(buf);
        assert_int_equal(msg.host_index, 1);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", bad[i]);
        REQ_ERR(buf, 400);
    }
}

static void test_request_body_kinds(void **state) {
    (void)state;
    REQ_OK("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_int_equal(msg.body, SG_BODY_CHUNKED);
    REQ_OK("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 7\r\n\r\n");
    assert_int_equal(msg.body, SG_BODY_LENGTH);
    REQ_OK("POST / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_int_equal(msg.body, SG_BODY_NONE);
}

/* ---- limits ---- */

static void check_bytewise(const char *s, size_t len, bool is_resp, enum sg_http_method rm);

/* "GET /aaa... HTTP/1.1", Host, then nhdr fields "X-NNNN: vvv..." and, when
 * complete, the empty line. Heap-allocated. */
static char *make_req(size_t target_len, size_t nhdr, size_t value_len, bool complete) {
    char *b = malloc(64 + target_len + nhdr * (value_len + 16));
    size_t n = 0;
    n += (size_t)sprintf(b + n, "GET /");
    memset(b + n, 'a', target_len);
    n += target_len;
    n += (size_t)sprintf(b + n, " HTTP/1.1\r\nHost: h\r\n");
    for (size_t i = 0; i < nhdr; i++) {
        n += (size_t)sprintf(b + n, "X-%04zu: ", i);
        memset(b + n, 'v', value_len);
        n += value_len;
        n += (size_t)sprintf(b + n, "\r\n");
    }
    n += (size_t)sprintf(b + n, complete ? "\r\n" : "");
    return b;
}

static void test_request_line_limit(void **state) {
    (void)state;
    char *b = make_req(242, 0, 0, true); /* request line = 5 + 242 + 9 = 256 bytes */
    REQ_OK(b);
    free(b);
    b = make_req(243, 0, 0, true);
    REQ_ERR(b, 414);
    free(b);
    /* partial, no LF yet */
    b = make_req(400, 0, 0, false);
    b[300] = 0;
    REQ_ERR(b, 414);
    b[257] = 0; /* 257 bytes of request line so far */
    REQ_ERR(b, 414);
    b[256] = 0;
    assert_int_equal(req(b), SG_HTTP_PARTIAL);
    free(b);
    /* a trailing CR is not counted: it may be the CR of the CRLF */
    char line[300];
    memcpy(line, "GET /", 5);
    memset(line + 5, 'a', 242);
    memcpy(line + 247, " HTTP/1.1\r", 11);
    assert_int_equal(req(line), SG_HTTP_PARTIAL);
    /* 0 means max_header_bytes */
    lim.max_request_line = 0;
    b = make_req(900, 0, 0, true);
    REQ_OK(b);
    free(b);
    b = make_req(1100, 0, 0, false);
    REQ_ERR(b, 414);
    free(b);
}

static void test_header_bytes_limit(void **state) {
    (void)state;
    /* head = 25 (start line + Host) + n * (8 + value + 2) + 2 */
    char *b = make_req(1, 10, 89, true); /* 26 + 10 * 99 + 2 = 1018 */
    REQ_OK(b);
    assert_int_equal(strlen(b), 1018);
    free(b);
    b = make_req(1, 10, 96, true); /* 1087 */
    REQ_ERR(b, 431);
    free(b);
    b = make_req(1, 6, 156, true); /* 26 + 6 * 166 + 2 = 1024: just fits */
    assert_int_equal(strlen(b), 1024);
    REQ_OK(b);
    free(b);
    b = make_req(1, 1, 987, true); /* 1025, only the final CRLF goes over */
    assert_int_equal(strlen(b), 1025);
    REQ_ERR(b, 431);
    check_bytewise(b, strlen(b), false, SG_METHOD_OTHER);
    b[1024] = 0; /* its last LF is still missing: wait */
    assert_int_equal(req(b), SG_HTTP_PARTIAL);
    free(b);
    b = make_req(1, 10, 96, false);
    b[1025] = 0; /* partial, over the limit */
    REQ_ERR(b, 431);
    b[1024] = 0;
    assert_int_equal(req(b), SG_HTTP_PARTIAL);
    free(b);
}

static void test_too_many_headers(void **state) {
    (void)state;
    lim.max_header_bytes = 65536;
    char *b = make_req(1, MAXH - 1, 1, true); /* Host + 31 = 32 fields */
    REQ_OK(b);
    assert_int_equal(msg.num_headers, MAXH);
    free(b);
    b = make_req(1, MAXH, 1, true);
    REQ_ERR(b, 431);
    free(b);
    /* enforced while partial too */
    b = make_req(1, MAXH + 5, 1, false);
    REQ_ERR(b, 431);
    free(b);
    b = make_req(1, MAXH - 1, 1, false);
    assert_int_equal(req(b), SG_HTTP_PARTIAL);
    free(b);
    /* no storage at all */
    size_t sc = 0;
    const char *s = "GET / HTTP/1.0\r\nA: b\r\n\r\n";
    msg_init(&msg, NULL, 0);
    assert_int_equal(sg_http_parse_request(s, strlen(s), &sc, &msg, &lim), SG_HTTP_ERROR);
    assert_int_equal(msg.error_status, 431);
    s = "GET / HTTP/1.0\r\n\r\n";
    sc = 0;
    assert_int_equal(sg_http_parse_request(s, strlen(s), &sc, &msg, &lim), (int)strlen(s));
}

/* ---- semantics ---- */

static void test_keep_alive(void **state) {
    (void)state;
    REQ_OK("GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_true(msg.keep_alive);
    REQ_OK("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    assert_false(msg.keep_alive);
    REQ_OK("GET / HTTP/1.1\r\nHost: h\r\nConnection: Keep-Alive, CLOSE\r\n\r\n");
    assert_false(msg.keep_alive);
    REQ_OK("GET / HTTP/1.0\r\n\r\n");
    assert_false(msg.keep_alive);
    REQ_OK("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_true(msg.keep_alive);
    REQ_OK("GET / HTTP/1.0\r\nConnection: ,, Keep-Alive ,\r\n\r\n");
    assert_true(msg.keep_alive);
    REQ_ERR("GET / HTTP/1.1\r\nHost: h\r\nConnection: close;x\r\n\r\n", 400);
    REQ_ERR("GET / HTTP/1.1\r\nHost: h\r\nConnection: a b\r\n\r\n", 400);
}

static void test_expect(void **state) {
    (void)state;
    REQ_OK("PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    assert_true(msg.expect_continue);
    REQ_OK("PUT / HTTP/1.1\r\nHost: h\r\nexpect:  100-Continue \r\nContent-Length: 5\r\n\r\n");
    assert_true(msg.expect_continue);
    REQ_OK("PUT / HTTP/1.1\r\nHost: h\r\nExpect: 200-ok\r\n\r\n");
    assert_false(msg.expect_continue);
    REQ_OK("PUT / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n");
    assert_false(msg.expect_continue);
}

static void test_upgrade(void **state) {
    (void)state;
    REQ_OK("GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    assert_true(msg.upgrade);
    assert_true(msg.keep_alive);
    REQ_OK("GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n");
    assert_false(msg.upgrade);
    REQ_OK("GET /ws HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, upgrade\r\n\r\n");
    assert_false(msg.upgrade);
}

static void test_header_ids(void **state) {
    (void)state;
    static const struct {
        const char *name;
        int id;
        int hop;
    } t[] = {{"hOST", SG_HDR_HOST, 0},
             {"CONTENT-length", SG_HDR_CONTENT_LENGTH, 0},
             {"Transfer-Encoding", SG_HDR_TRANSFER_ENCODING, 0},
             {"Connection", SG_HDR_CONNECTION, 1},
             {"KEEP-ALIVE", SG_HDR_KEEP_ALIVE, 1},
             {"Proxy-Connection", SG_HDR_PROXY_CONNECTION, 1},
             {"te", SG_HDR_TE, 1},
             {"Trailer", SG_HDR_TRAILER, 1},
             {"upgrade", SG_HDR_UPGRADE, 1},
             {"Expect", SG_HDR_EXPECT, 0},
             {"VIA", SG_HDR_VIA, 0},
             {"X-Forwarded-For", SG_HDR_X_FORWARDED_FOR, 0},
             {"x-forwarded-PROTO", SG_HDR_X_FORWARDED_PROTO, 0},
             {"X-Request-Id", SG_HDR_X_REQUEST_ID, 0},
             /* near misses */
             {"Hosts", SG_HDR_OTHER, 0},
             {"Hos", SG_HDR_OTHER, 0},
             {"Content-Lengt_", SG_HDR_OTHER, 0},
             {"Transfer-Encodinx", SG_HDR_OTHER, 0},
             {"X-Forwarded-Prot0", SG_HDR_OTHER, 0},
             {"Connectio_", SG_HDR_OTHER, 0},
             {"Keep_Alive", SG_HDR_OTHER, 0},
             {"Trailers", SG_HDR_OTHER, 0},
             {"Upgrad", SG_HDR_OTHER, 0},
             {"tE_", SG_HDR_OTHER, 0},
             {"ve", SG_HDR_OTHER, 0},
             {"Vi", SG_HDR_OTHER, 0}};
    char buf[2048];
    size_t n = (size_t)sprintf(buf, "GET / HTTP/1.1\r\n");
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        const char *v = t[i].id == SG_HDR_HOST                ? "h"
                        : t[i].id == SG_HDR_CONTENT_LENGTH    ? "0"
                        : t[i].id == SG_HDR_TRANSFER_ENCODING ? "chunked"
                                                              : "x";
        n += (size_t)sprintf(buf + n, "%s: %s\r\n", t[i].name, v);
    }
    sprintf(buf + n, "\r\n");
    /* Content-Length and Transfer-Encoding together are refused: drop CL */
    char *cl = strstr(buf, "CONTENT-length");
    memcpy(cl, "CONTENT-lengtx", 14);
    REQ_OK(buf);
    assert_int_equal(msg.num_headers, sizeof(t) / sizeof(t[0]));
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        int id = t[i].id == SG_HDR_CONTENT_LENGTH ? SG_HDR_OTHER : t[i].id;
        assert_int_equal(hdrs[i].id, id);
        assert_int_equal(hdrs[i].hop, t[i].hop);
    }
    REQ_OK("GET / HTTP/1.1\r\nHost: h\r\ncontent-length: 0\r\n\r\n");
    assert_int_equal(hdrs[1].id, SG_HDR_CONTENT_LENGTH);
}

static void test_connection_options_hop(void **state) {
    (void)state;
    REQ_OK("GET / HTTP/1.1\r\nX-Foo: 1\r\nHost: h\r\nConnection: x-foo, close, X-Bar\r\n"
           "X-Bar: 2\r\nX-Baz: 3\r\nContent-Length: 0\r\n\r\n");
    assert_int_equal(find_hdr("x-foo")->hop, 1);
    assert_int_equal(find_hdr("x-bar")->hop, 1);
    assert_int_equal(find_hdr("x-baz")->hop, 0);
    assert_int_equal(find_hdr("connection")->hop, 1);
    assert_int_equal(find_hdr("host")->hop, 0);
    assert_false(msg.keep_alive);
    /* framing and routing fields are never dropped through Connection */
    REQ_OK("POST / HTTP/1.1\r\nHost: h\r\nConnection: host, content-length, transfer-encoding\r\n"
           "Content-Length: 3\r\n\r\n");
    assert_int_equal(find_hdr("host")->hop, 0);
    assert_int_equal(find_hdr("content-length")->hop, 0);
    /* several Connection fields */
    REQ_OK("GET / HTTP/1.1\r\nHost: h\r\nConnection: a\r\nConnection: b\r\nA: 1\r\nB: 2\r\n\r\n");
    assert_int_equal(find_hdr("a")->hop, 1);
    assert_int_equal(find_hdr("b")->hop, 1);
    /* bounded work: at most 32 such options */
    char buf[512];
    size_t n = (size_t)sprintf(buf, "GET / HTTP/1.1\r\nHost: h\r\nConnection: close");
    for (int i = 0; i < 32; i++)
        n += (size_t)sprintf(buf + n, ",o%d", i);
    sprintf(buf + n, "\r\n\r\n");
    REQ_OK(buf);
    sprintf(buf + n, ",x\r\n\r\n");
    REQ_ERR(buf, 400);
}

static void test_misc_helpers(void **state) {
    (void)state;
    assert_string_equal(sg_http_reason(200), "OK");
    assert_string_equal(sg_http_reason(404), "Not Found");
    assert_string_equal(sg_http_reason(431), "Request Header Fields Too Large");
    assert_string_equal(sg_http_reason(505), "HTTP Version Not Supported");
    assert_string_equal(sg_http_reason(799), "Unknown");
    struct sg_http_header h = {.name = "Content-Type", .name_len = 12};
    assert_true(sg_http_name_eq(&h, "content-type", 12));
    assert_true(sg_http_name_eq(&h, "CONTENT-TYPE", 12));
    assert_false(sg_http_name_eq(&h, "content-typ", 11));
    assert_false(sg_http_name_eq(&h, "content_type", 12));
}

/* ---- responses ---- */

static void test_response_status_line(void **state) {
    (void)state;
    RESP_OK("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", SG_METHOD_GET);
    assert_int_equal(msg.status, 200);
    assert_true(span_is(msg.reason, msg.reason_len, "OK"));
    assert_int_equal(msg.minor, 1);
    assert_int_equal(msg.body, SG_BODY_LENGTH);
    assert_int_equal(msg.content_length, 5);
    assert_true(msg.keep_alive);
    assert_int_equal(msg.host_index, -1);
    RESP_OK("HTTP/1.1 404 Not  Found here\r\nContent-Length: 0\r\n\r\n", SG_METHOD_GET);
    assert_true(span_is(msg.reason, msg.reason_len, "Not  Found here"));
    RESP_OK("HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", SG_METHOD_GET);
    assert_int_equal(msg.reason_len, 0);
    RESP_OK("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", SG_METHOD_GET);
    assert_int_equal(msg.reason_len, 0);
    RESP_OK("HTTP/1.0 999 Weird\n\n", SG_METHOD_GET);
    assert_int_equal(msg.status, 999);
    assert_int_equal(msg.minor, 0);

    RESP_ERR("HTTP/1.1 099 X\r\n\r\n");
    RESP_ERR("HTTP/1.1 1000 X\r\n\r\n");
    RESP_ERR("HTTP/1.1 20 X\r\n\r\n");
    RESP_ERR("HTTP/1.1 2x0 X\r\n\r\n");
    RESP_ERR("HTTP/1.1  200 X\r\n\r\n");
    RESP_ERR("HTTP/2.0 200 OK\r\n\r\n");
    RESP_ERR("HTTP/1.1\r\n\r\n");
    RESP_ERR("HTTP/1.1 200 O\x01K\r\n\r\n");
    RESP_ERR("HTTP/1.1 200 O\rK\r\n\r\n");
    RESP_ERR("http/1.1 200 OK\r\n\r\n");
    RESP_ERR("ICY 200 OK\r\n\r\n");
}

static void test_response_framing(void **state) {
    (void)state;
    RESP_OK("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", SG_METHOD_HEAD);
    assert_int_equal(msg.body, SG_BODY_NONE);
    assert_int_equal(msg.content_length, 5);
    /* no body follows, so the body limit does not apply */
    RESP_OK("HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", SG_METHOD_HEAD);
    RESP_OK("HTTP/1.1 304 Not Modified\r\nContent-Length: 5000\r\n\r\n", SG_METHOD_GET);
    RESP_OK("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", SG_METHOD_HEAD);
    assert_int_equal(msg.body, SG_BODY_NONE);
    static const int none[] = {100, 101, 103, 199, 204, 304};
    char buf[128];
    for (size_t i = 0; i < sizeof(none) / sizeof(none[0]); i++) {
        snprintf(buf, sizeof(buf), "HTTP/1.1 %d X\r\nContent-Length: 5\r\n\r\n", none[i]);
        RESP_OK(buf, SG_METHOD_GET);
        assert_int_equal(msg.body, SG_BODY_NONE);
        assert_true(msg.keep_alive);
    }
    RESP_OK("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", SG_METHOD_GET);
    assert_int_equal(msg.body, SG_BODY_CHUNKED);
    RESP_OK("HTTP/1.1 200 OK\r\nServer: x\r\n\r\n", SG_METHOD_GET);
    assert_int_equal(msg.body, SG_BODY_EOF);
    assert_false(msg.keep_alive);
    RESP_OK("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n", SG_METHOD_GET);
    assert_false(msg.keep_alive);
    RESP_OK("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", SG_METHOD_GET);
    assert_false(msg.keep_alive);
    RESP_OK("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
            SG_METHOD_GET);
    assert_true(msg.keep_alive);
    /* a 2xx to CONNECT starts a tunnel; a 4xx to it has a body */
    RESP_OK("HTTP/1.1 200 Connection established\r\n\r\n", SG_METHOD_CONNECT);
    assert_int_equal(msg.body, SG_BODY_NONE);
    RESP_OK("HTTP/1.1 407 Auth\r\nContent-Length: 3\r\n\r\n", SG_METHOD_CONNECT);
    assert_int_equal(msg.body, SG_BODY_LENGTH);
    RESP_OK("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            SG_METHOD_GET);
    assert_int_equal(msg.body, SG_BODY_NONE);
    assert_true(msg.upgrade);
    /* no Host needed */
    RESP_OK("HTTP/1.1 204 No Content\r\n\r\n", SG_METHOD_DELETE);
}

static void test_response_errors(void **state) {
    (void)state;
    RESP_ERR("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
    RESP_ERR("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
    RESP_ERR("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n");
    RESP_ERR("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
    RESP_ERR("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
    RESP_ERR("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    RESP_ERR("HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n"); /* over max_body_bytes */
    RESP_ERR("HTTP/1.1 200 OK\r\nX : y\r\n\r\n");
    RESP_ERR("HTTP/1.1 200 OK\r\nX: y\r\n z\r\n\r\n");
    static const char nul[] = "HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n";
    assert_int_equal(parse_n(nul, sizeof(nul) - 1, true, SG_METHOD_GET), SG_HTTP_ERROR);
    assert_int_equal(msg.error_status, 502);
}

/* ---- incremental parsing ---- */

static void assert_same_msg(const struct sg_http_msg *a, const char *abase,
                            const struct sg_http_msg *b, const char *bbase) {
#define OFF(m, base, f) ((m)->f ? (m)->f - (base) : -1)
    assert_int_equal(OFF(a, abase, method), OFF(b, bbase, method));
    assert_int_equal(OFF(a, abase, target), OFF(b, bbase, target));
    assert_int_equal(OFF(a, abase, reason), OFF(b, bbase, reason));
    assert_int_equal(a->method_len, b->method_len);
    assert_int_equal(a->target_len, b->target_len);
    assert_int_equal(a->reason_len, b->reason_len);
    assert_int_equal(a->method_id, b->method_id);
    assert_int_equal(a->minor, b->minor);
    assert_int_equal(a->status, b->status);
    assert_int_equal(a->num_headers, b->num_headers);
    for (uint32_t i = 0; i < a->num_headers; i++) {
        const struct sg_http_header *x = &a->headers[i], *y = &b->headers[i];
        assert_int_equal(x->name - abase, y->name - bbase);
        assert_int_equal(x->value - abase, y->value - bbase);
        assert_int_equal(x->name_len, y->name_len);
        assert_int_equal(x->value_len, y->value_len);
        assert_int_equal(x->id, y->id);
        assert_int_equal(x->hop, y->hop);
    }
    assert_int_equal(a->body, b->body);
    assert_int_equal(a->content_length, b->content_length);
    assert_int_equal(a->keep_alive, b->keep_alive);
    assert_int_equal(a->expect_continue, b->expect_continue);
    assert_int_equal(a->upgrade, b->upgrade);
    assert_int_equal(a->host_index, b->host_index);
    assert_int_equal(a->error_status, b->error_status);
#undef OFF
}

/* Feeds s one more byte per call, each time in a fresh buffer of exactly the
 * bytes so far (so that ASan sees any read past them), and checks that the
 * result matches parsing s in one piece. */
static void check_bytewise(const char *s, size_t len, bool is_resp, enum sg_http_method rm) {
    struct sg_http_header h1[MAXH], h2[MAXH];
    struct sg_http_msg whole, inc;
    size_t sc = 0;
    int r1, r2 = SG_HTTP_PARTIAL;

    msg_init(&whole, h1, MAXH);
    r1 = is_resp ? sg_http_parse_response(s, len, &sc, &whole, &lim, rm)
                 : sg_http_parse_request(s, len, &sc, &whole, &lim);
    assert_int_not_equal(r1, SG_HTTP_PARTIAL);

    msg_init(&inc, h2, MAXH);
    sc = 0;
    for (size_t k = 1; k <= len && r2 == SG_HTTP_PARTIAL; k++) {
        char *b = malloc(k);
        memcpy(b, s, k);
        r2 = is_resp ? sg_http_parse_response(b, k, &sc, &inc, &lim, rm)
                     : sg_http_parse_request(b, k, &sc, &inc, &lim);
        assert_true(sc < (UINT64_C(1) << 32));
        if (r2 != SG_HTTP_PARTIAL) {
            assert_int_equal(r2, r1);
            if (r2 > 0)
                assert_same_msg(&whole, s, &inc, b);
            else
                assert_int_equal(whole.error_status, inc.error_status);
        }
        free(b);
    }
    assert_int_equal(r2, r1);
}

static void test_bytewise_requests(void **state) {
    (void)state;
    static const char *t[] = {
        "GET / HTTP/1.1\r\nHost: h\r\n\r\n",
        "\r\n\r\nGET /a?b HTTP/1.0\r\n\r\n",
        ("POST /upload HTTP/1.1\r\nHost: example.com:80\r\nContent-Length: 10\r\n"
         "Connection: keep-alive, X-A\r\nX-A: 1\r\nExpect: 100-continue\r\n\r\nBODYBODYBO"),
        "GET /ws HTTP/1.1\nHost: h\nConnection: Upgrade\nUpgrade: websocket\n\nGARBAGE",
        "PUT / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: h\r\nUser-Agent: curl/8.0 (x86_64) \t\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX: 1\r\n 2\r\n\r\n",           /* error */
        "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1001\r\n\r\n", /* 413 */
        "GET / HTTP/2.0\r\n\r\n",                                    /* 505 */
        "GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        check_bytewise(t[i], strlen(t[i]), false, SG_METHOD_OTHER);
    /* limit errors found while partial */
    char *b = make_req(300, 0, 0, true);
    check_bytewise(b, strlen(b), false, SG_METHOD_OTHER);
    free(b);
    b = make_req(1, 10, 200, true);
    check_bytewise(b, strlen(b), false, SG_METHOD_OTHER);
    free(b);
    lim.max_header_bytes = 65536;
    b = make_req(1, MAXH + 3, 1, true);
    check_bytewise(b, strlen(b), false, SG_METHOD_OTHER);
    free(b);
}

static void test_bytewise_responses(void **state) {
    (void)state;
    static const struct {
        const char *s;
        enum sg_http_method m;
    } t[] = {
        {"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: x\r\nX: 1\r\n\r\nok", SG_METHOD_GET},
        {"HTTP/1.1 204\r\n\r\n", SG_METHOD_GET},
        {"HTTP/1.0 200 OK\nServer: s\n\nbody", SG_METHOD_GET},
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", SG_METHOD_HEAD},
        {"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", SG_METHOD_POST},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", SG_METHOD_GET},
        {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", SG_METHOD_GET},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        check_bytewise(t[i].s, strlen(t[i].s), true, t[i].m);
}

static void test_partial_cursor(void **state) {
    (void)state;
    const char *s = "GET / HTTP/1.1\r\nHost: h\r\nX-Long: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    size_t len = strlen(s), sc = 0;
    msg_init(&msg, hdrs, MAXH);
    assert_int_equal(sg_http_parse_request(s, len - 2, &sc, &msg, &lim), SG_HTTP_PARTIAL);
    assert_int_not_equal(sc, 0);
    assert_int_equal(sg_http_parse_request(s, len - 1, &sc, &msg, &lim), SG_HTTP_PARTIAL);
    assert_int_equal(sg_http_parse_request(s, len, &sc, &msg, &lim), (int)len);
    assert_int_equal(sc, 0); /* reset for the next message */
    assert_int_equal(msg.num_headers, 2);
    /* calling again with the cursor reset gives the same answer */
    assert_int_equal(sg_http_parse_request(s, len, &sc, &msg, &lim), (int)len);
    /* the end is found from the cursor: bytes before it are not looked at again */
    sc = 0;
    assert_int_equal(sg_http_parse_request(s, 20, &sc, &msg, &lim), SG_HTTP_PARTIAL);
    assert_int_equal(sg_http_parse_request(s, len, &sc, &msg, &lim), (int)len);
}

static void test_pipelined(void **state) {
    (void)state;
    const char *s = "GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
                    "POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
                    "PUT /3 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "3\r\nxyz\r\n0\r\n\r\n"
                    "GET /4 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
                    "GET /5 HTTP/1.1\r\nHo";
    size_t len = strlen(s), off = 0, sc = 0;
    const char *want[] = {"/1", "/2", "/3", "/4"};
    for (int i = 0; i < 4; i++) {
        msg_init(&msg, hdrs, MAXH);
        int r = sg_http_parse_request(s + off, len - off, &sc, &msg, &lim);
        assert_true(r > 0);
        assert_true(span_is(msg.target, msg.target_len, want[i]));
        off += (size_t)r;
        if (msg.body == SG_BODY_LENGTH) {
            off += msg.content_length;
        } else if (msg.body == SG_BODY_CHUNKED) {
            struct sg_http_chunked c;
            sg_http_chunked_init(&c, 0, 0);
            ssize_t n = sg_http_chunked_scan(&c, s + off, len - off);
            assert_true(c.done);
            assert_int_equal(n, strlen("3\r\nxyz\r\n0\r\n\r\n"));
            off += (size_t)n;
        }
        assert_int_equal(msg.keep_alive, i != 3);
    }
    assert_int_equal(sg_http_parse_request(s + off, len - off, &sc, &msg, &lim), SG_HTTP_PARTIAL);
}

/* ---- chunked bodies ---- */

static ssize_t scan_all(struct sg_http_chunked *c, const char *s, size_t len) {
    sg_http_chunked_init(c, lim.max_body_bytes, 64);
    char *b = malloc(len ? len : 1);
    memcpy(b, s, len);
    ssize_t n = sg_http_chunked_scan(c, b, len);
    free(b);
    return n;
}

static ssize_t scan_str(struct sg_http_chunked *c, const char *s) {
    return scan_all(c, s, strlen(s));
}

/* Decodes s, offering the walker all of it (step 0) or step more bytes each
 * time it has used up what it was given; the payload goes to out. Returns
 * the bytes consumed or SG_HTTP_ERROR. */
static ssize_t decode_all(const char *s, size_t len, size_t step, char *out, size_t *outlen) {
    struct sg_http_chunked c;
    size_t off = 0, have = step && step < len ? step : len;
    sg_http_chunked_init(&c, 0, 0);
    *outlen = 0;
    for (;;) {
        char *b = malloc(have ? have : 1);
        const char *d;
        size_t dl;
        memcpy(b, s + off, have);
        ssize_t n = sg_http_chunked_decode(&c, b, have, &d, &dl);
        if (n >= 0) {
            assert_true((size_t)n <= have);
            if (dl) {
                assert_true(d >= b && d + dl <= b + n);
                memcpy(out + *outlen, d, dl);
                *outlen += dl;
            } else {
                assert_true((size_t)n == have || c.done);
            }
        }
        free(b);
        if (n < 0)
            return n;
        off += (size_t)n;
        have -= (size_t)n;
        if (c.done)
            break;
        if (have == 0) {
            if (off == len)
                break;
            have = step && step < len - off ? step : len - off;
        }
    }
    return (ssize_t)off;
}

static void test_chunked_simple(void **state) {
    (void)state;
    struct sg_http_chunked c;
    const char *s = "5\r\nhello\r\n6;name=val;x=\"q s\"\r\n world\r\n0\r\n\r\nNEXT";
    assert_int_equal(scan_str(&c, s), strlen(s) - 4);
    assert_true(c.done);
    assert_int_equal(c.total, 11);
    /* done: nothing more is taken */
    assert_int_equal(sg_http_chunked_scan(&c, "x", 1), 0);

    char out[64];
    size_t outlen;
    assert_int_equal(decode_all(s, strlen(s), 0, out, &outlen), strlen(s) - 4);
    assert_int_equal(outlen, 11);
    assert_memory_equal(out, "hello world", 11);

    /* bare LF, upper-case hex, leading zeros, BWS before extensions, trailers */
    s = "A\nabcdefghij\n00000f ; e\n0123456789abcde\r\n0\r\nX-T: 1\r\nY:\t2\n\r\n";
    assert_int_equal(scan_str(&c, s), strlen(s));
    assert_true(c.done);
    assert_int_equal(c.total, 25);
    /* incomplete */
    assert_int_equal(scan_str(&c, "5\r\nhel"), 6);
    assert_false(c.done);
    assert_int_equal(c.remaining, 2);
    assert_int_equal(scan_str(&c, ""), 0);
}

static void test_chunked_errors(void **state) {
    (void)state;
    struct sg_http_chunked c;
    static const char *bad[] = {
        "\r\nabc\r\n0\r\n\r\n",               /* empty size */
        ";x\r\n",                             /* empty size with extension */
        "g\r\n",                              /* non-hex */
        "+5\r\nhello\r\n0\r\n\r\n",           /* sign */
        "-5\r\n",                             /* sign */
        "0x5\r\nhello\r\n0\r\n\r\n",          /* 0x prefix */
        "5 5\r\n",                            /* junk */
        "5\rhello",                           /* bare CR in size line */
        "5;a\rb\r\n",                         /* bare CR in extension */
        "5;a\x01\r\n",                        /* CTL in extension */
        "5;a\x7f\r\n",                        /* DEL in extension */
        "5\r\nhelloX\r\n0\r\n\r\n",           /* no CRLF after data */
        "5\r\nhello\rX0\r\n\r\n",             /* CR without LF after data */
        "5\r\nhello\r\n0\r\nX : 1\r\n\r\n",   /* whitespace before colon in trailer */
        "5\r\nhello\r\n0\r\n X: 1\r\n\r\n",   /* obs-fold in trailer */
        "5\r\nhello\r\n0\r\n: 1\r\n\r\n",     /* empty trailer name */
        "5\r\nhello\r\n0\r\nX 1\r\n\r\n",     /* trailer without colon */
        "5\r\nhello\r\n0\r\nX: \x01\r\n\r\n", /* CTL in trailer value */
        "5\r\nhello\r\n0\r\nX: 1\rY\r\n\r\n", /* bare CR in trailer */
        "5\r\nhello\r\n0\r\n\rX",             /* bare CR in final line */
        "4000000000000000\r\n",               /* 2^62 */
        "ffffffffffffffffff\r\n",             /* overflow */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        lim.max_body_bytes = 0;
        ssize_t n = scan_str(&c, bad[i]);
        if (n != SG_HTTP_ERROR)
            fail_msg("accepted bad chunked body #%zu", i);
        assert_int_equal(c.error_status, 400);
        assert_non_null(c.error);
        /* sticky */
        assert_int_equal(sg_http_chunked_scan(&c, "0\r\n\r\n", 5), SG_HTTP_ERROR);
    }
    /* the largest size accepted */
    lim.max_body_bytes = 0;
    assert_int_equal(scan_str(&c, "3fffffffffffffff\r\n"), 18);
    assert_int_equal(c.remaining, (UINT64_C(1) << 62) - 1);
}

static void test_chunked_limits(void **state) {
    (void)state;
    struct sg_http_chunked c;
    char line[5000];
    /* size line of 4096 bytes with CRLF: ok; 4097: error */
    memset(line, 0, sizeof(line));
    line[0] = '1';
    line[1] = ';';
    memset(line + 2, 'e', 4092);
    memcpy(line + 4094, "\r\n", 2);
    lim.max_body_bytes = 0;
    assert_int_equal(scan_all(&c, line, 4096), 4096);
    assert_int_equal(c.remaining, 1);
    memset(line + 2, 'e', 4093);
    memcpy(line + 4095, "\r\n", 2);
    assert_int_equal(scan_all(&c, line, 4097), SG_HTTP_ERROR);
    assert_int_equal(c.error_status, 400);
    /* long run of zeros stays bounded too */
    memset(line, '0', 4200);
    assert_int_equal(scan_all(&c, line, 4200), SG_HTTP_ERROR);

    /* max_body_bytes: checked when the size is known, before the data */
    lim.max_body_bytes = 10;
    assert_int_equal(scan_str(&c, "5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n"), 25);
    assert_true(c.done);
    assert_int_equal(scan_str(&c, "5\r\nhello\r\n6\r\n"), SG_HTTP_ERROR);
    assert_int_equal(c.error_status, 413);
    assert_int_equal(scan_str(&c, "b\r\n"), SG_HTTP_ERROR);
    assert_int_equal(c.error_status, 413);

    /* trailer section bounded by max_trailer_bytes (64 in scan_all) */
    lim.max_body_bytes = 0;
    char tr[200];
    snprintf(tr, sizeof(tr), "0\r\nX: %0*d\r\n\r\n", 58, 0); /* 3 + 58 + 2 + 2 = 65 */
    assert_int_equal(scan_str(&c, tr), SG_HTTP_ERROR);
    snprintf(tr, sizeof(tr), "0\r\nX: %0*d\r\n\r\n", 57, 0); /* 64 */
    assert_int_equal(scan_str(&c, tr), (ssize_t)strlen(tr));
    assert_true(c.done);
    /* 0 = unlimited */
    sg_http_chunked_init(&c, 0, 0);
    char big[3000];
    int n = snprintf(big, sizeof(big), "0\r\nX: %0*d\r\n\r\n", 2900, 0);
    assert_int_equal(sg_http_chunked_scan(&c, big, (size_t)n), n);
    /* a zeroed walker is valid */
    memset(&c, 0, sizeof(c));
    assert_int_equal(sg_http_chunked_scan(&c, "1\r\nx\r\n0\r\n\r\n", 11), 11);
    assert_true(c.done);
}

/* Every split point (two calls) and every byte alone give the whole answer. */
static void check_chunked_splits(const char *s, size_t len, ssize_t want, size_t payload) {
    struct sg_http_chunked c;
    for (size_t k = 0; k <= len; k++) {
        sg_http_chunked_init(&c, 0, 128);
        char *a = malloc(k ? k : 1), *b = malloc(len - k ? len - k : 1);
        memcpy(a, s, k);
        memcpy(b, s + k, len - k);
        ssize_t n1 = sg_http_chunked_scan(&c, a, k), n2 = 0;
        if (n1 >= 0 && !c.done)
            n2 = sg_http_chunked_scan(&c, b, len - k);
        free(a);
        free(b);
        if (want < 0) {
            assert_true(n1 == SG_HTTP_ERROR || n2 == SG_HTTP_ERROR);
            continue;
        }
        assert_true(n1 >= 0 && n2 >= 0);
        assert_int_equal(n1 + n2, want);
        assert_true(c.done);
        assert_int_equal(c.total, payload);
    }
    /* one byte per call */
    sg_http_chunked_init(&c, 0, 128);
    ssize_t total = 0, n = 0;
    for (size_t i = 0; i < len && !c.done; i++) {
        char *b = malloc(1);
        *b = s[i];
        n = sg_http_chunked_scan(&c, b, 1);
        free(b);
        if (n < 0)
            break;
        total += n;
    }
    if (want < 0) {
        assert_int_equal(n, SG_HTTP_ERROR);
    } else {
        assert_int_equal(total, want);
        assert_true(c.done);
    }
    /* decoding a few bytes at a time yields the same payload */
    if (want >= 0) {
        char ref[4096], out[4096];
        size_t rl, ol;
        assert_int_equal(decode_all(s, len, 0, ref, &rl), want);
        assert_int_equal(rl, payload);
        for (size_t step = 1; step <= 7; step++) {
            assert_int_equal(decode_all(s, len, step, out, &ol), want);
            assert_int_equal(ol, rl);
            assert_memory_equal(out, ref, rl);
        }
    }
}

static void test_chunked_split_everywhere(void **state) {
    (void)state;
    static const struct {
        const char *s;
        bool ok;
        size_t tail; /* bytes after the body */
        size_t payload;
    } t[] = {
        {"5\r\nhello\r\n6;a=b\r\n world\r\n0\r\n\r\n", true, 0, 11},
        {"1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0;last\r\nTrailer-A: v\r\nB: w\r\n\r\nGET", true, 3,
         26},
        {"3\nabc\n0\n\n", true, 0, 3},
        {"0\r\n\r\n", true, 0, 0},
        {"2 ; x\r\nab\r\n0 \r\n\r\nHTTP/1.1", true, 8, 2},
        {"5\r\nhello\r\nX\r\n", false, 0, 0},
        {"5\r\nhelloXX", false, 0, 0},
        {"5\r\nhello\r\n0\r\nA : b\r\n\r\n", false, 0, 0},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        check_chunked_splits(t[i].s, strlen(t[i].s),
                             t[i].ok ? (ssize_t)(strlen(t[i].s) - t[i].tail) : -1, t[i].payload);
}

static void test_chunked_decode_spans(void **state) {
    (void)state;
    struct sg_http_chunked c;
    const char *s = "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\nrest";
    const char *d;
    size_t dl, off = 0, len = strlen(s);
    sg_http_chunked_init(&c, 0, 0);
    ssize_t n = sg_http_chunked_decode(&c, s, len, &d, &dl);
    assert_int_equal(n, 6); /* "3\r\nabc" */
    assert_ptr_equal(d, s + 3);
    assert_int_equal(dl, 3);
    off += (size_t)n;
    n = sg_http_chunked_decode(&c, s + off, len - off, &d, &dl);
    assert_int_equal(n, 7); /* "\r\n2\r\nde" */
    assert_ptr_equal(d, s + 11);
    assert_int_equal(dl, 2);
    off += (size_t)n;
    n = sg_http_chunked_decode(&c, s + off, len - off, &d, &dl);
    assert_int_equal(n, 7); /* "\r\n0\r\n\r\n" */
    assert_int_equal(dl, 0);
    assert_true(c.done);
    off += (size_t)n;
    assert_string_equal(s + off, "rest");
    assert_int_equal(sg_http_chunked_decode(&c, s + off, len - off, &d, &dl), 0);
    assert_int_equal(dl, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_simple_get, setup),
        cmocka_unit_test_setup(test_method_ids, setup),
        cmocka_unit_test_setup(test_invalid_method, setup),
        cmocka_unit_test_setup(test_target_forms, setup),
        cmocka_unit_test_setup(test_version, setup),
        cmocka_unit_test_setup(test_obs_fold, setup),
        cmocka_unit_test_setup(test_bare_cr, setup),
        cmocka_unit_test_setup(test_ctl_in_value, setup),
        cmocka_unit_test_setup(test_field_name_errors, setup),
        cmocka_unit_test_setup(test_value_trim, setup),
        cmocka_unit_test_setup(test_bare_lf, setup),
        cmocka_unit_test_setup(test_leading_empty_lines, setup),
        cmocka_unit_test_setup(test_content_length, setup),
        cmocka_unit_test_setup(test_body_limit, setup),
        cmocka_unit_test_setup(test_cl_with_te, setup),
        cmocka_unit_test_setup(test_transfer_encoding, setup),
        cmocka_unit_test_setup(test_te_http10, setup),
        cmocka_unit_test_setup(test_host, setup),
        cmocka_unit_test_setup(test_request_body_kinds, setup),
        cmocka_unit_test_setup(test_request_line_limit, setup),
        cmocka_unit_test_setup(test_header_bytes_limit, setup),
        cmocka_unit_test_setup(test_too_many_headers, setup),
        cmocka_unit_test_setup(test_keep_alive, setup),
        cmocka_unit_test_setup(test_expect, setup),
        cmocka_unit_test_setup(test_upgrade, setup),
        cmocka_unit_test_setup(test_header_ids, setup),
        cmocka_unit_test_setup(test_connection_options_hop, setup),
        cmocka_unit_test_setup(test_misc_helpers, setup),
        cmocka_unit_test_setup(test_response_status_line, setup),
        cmocka_unit_test_setup(test_response_framing, setup),
        cmocka_unit_test_setup(test_response_errors, setup),
        cmocka_unit_test_setup(test_bytewise_requests, setup),
        cmocka_unit_test_setup(test_bytewise_responses, setup),
        cmocka_unit_test_setup(test_partial_cursor, setup),
        cmocka_unit_test_setup(test_pipelined, setup),
        cmocka_unit_test_setup(test_chunked_simple, setup),
        cmocka_unit_test_setup(test_chunked_errors, setup),
        cmocka_unit_test_setup(test_chunked_limits, setup),
        cmocka_unit_test_setup(test_chunked_split_everywhere, setup),
        cmocka_unit_test_setup(test_chunked_decode_spans, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
