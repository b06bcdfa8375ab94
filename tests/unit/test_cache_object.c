/*
 * Tests for src/cache/object.c, the HTTP side of the response cache:
 * Cache-Control parsing (one field and all the fields of a message, Pragma),
 * IMF-fixdate parsing against known epoch values, cache keys and their
 * vary part (exact output, every too-small cap), storability and freshness
 * (sg_cache_decide, one test per rule), the stored object's layout (head,
 * body length, view; dropped fields, ETag and Last-Modified offsets, vary
 * names), corrupt objects refused by the view, vary descriptors, served
 * heads (200, HEAD, 304, 204, connection fields, caps) and conditional
 * requests (If-None-Match, If-Modified-Since).
 *
 * Messages are built by parsing real heads with the HTTP parser. Objects
 * are kept in buffers of exactly their size, so ASan catches any read past
 * them.
 *
 * The tests marked "regression" reproduce bugs found (and fixed) in
 * object.c: wrapping lengths in a view, a later "Vary: *" field, and a
 * write past the cap after an overflow.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "cache/object.h"
#include "http/http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- messages ---------------------------------------------------------- */

#define MAXH 64

struct parsed {
    struct sg_http_msg m;
    struct sg_http_header h[MAXH];
    char buf[16384];
};

static const struct sg_http_limits lim = {
    .max_request_line = 16384, .max_header_bytes = 16384, .max_body_bytes = 0};

/* Parses the request head s into p (a copy of s is kept in p). */
static struct sg_http_msg *parse_req(struct parsed *p, const char *s) {
    size_t n = strlen(s), scanned = 0;
    assert_true(n < sizeof(p->buf));
    memcpy(p->buf, s, n + 1);
    memset(&p->m, 0, sizeof(p->m));
    p->m.headers = p->h;
    p->m.max_headers = MAXH;
    assert_int_equal(sg_http_parse_request(p->buf, n, &scanned, &p->m, &lim), (int)n);
    return &p->m;
}

/* Parses the response head s (to a GET) into p. */
static struct sg_http_msg *parse_resp(struct parsed *p, const char *s) {
    size_t n = strlen(s), scanned = 0;
    assert_true(n < sizeof(p->buf));
    memcpy(p->buf, s, n + 1);
    memset(&p->m, 0, sizeof(p->m));
    p->m.headers = p->h;
    p->m.max_headers = MAXH;
    assert_int_equal(sg_http_parse_response(p->buf, n, &scanned, &p->m, &lim, SG_METHOD_GET),
                     (int)n);
    return &p->m;
}

static struct parsed g_req, g_resp;

/* "GET /p HTTP/1.1" with Host and the given fields (each with CRLF). */
static struct sg_http_msg *req_of(const char *fields) {
    char s[8192];
    snprintf(s, sizeof(s), "GET /p HTTP/1.1\r\nHost: h\r\n%s\r\n", fields);
    return parse_req(&g_req, s);
}

/* A response with the given status and fields (each with CRLF). */
static struct sg_http_msg *resp_of(int status, const char *fields) {
    char s[8192];
    snprintf(s, sizeof(s), "HTTP/1.1 %d Whatever\r\n%s\r\n", status, fields);
    return parse_resp(&g_resp, s);
}

static bool span_is(const char *p, size_t n, const char *want) {
    return n == strlen(want) && (n == 0 || memcmp(p, want, n) == 0);
}

#define assert_span(p, n, want)                                                                    \
    do {                                                                                           \
        if (!span_is((p), (n), (want)))                                                            \
            fail_msg("got \"%.*s\", want \"%s\"", (int)(n), (p), (want));                          \
    } while (0)

/* ---- Cache-Control ------------------------------------------------------ */

static struct sg_cc cc_str(const char *v) {
    struct sg_cc cc;
    sg_cc_init(&cc);
    sg_cc_parse(&cc, v, strlen(v));
    return cc;
}

static void test_cc_init(void **state) {
    (void)state;
    struct sg_cc cc;
    memset(&cc, 0x55, sizeof(cc));
    sg_cc_init(&cc);
    assert_false(cc.no_store || cc.no_cache || cc.private_ || cc.public_ || cc.must_revalidate ||
                 cc.only_if_cached);
    assert_int_equal(cc.max_age, -1);
    assert_int_equal(cc.s_maxage, -1);
    assert_int_equal(cc.swr, -1);
    assert_int_equal(cc.sie, -1);
    assert_int_equal(cc.max_stale, -1);
    assert_int_equal(cc.min_fresh, -1);
    cc = cc_str("");
    assert_false(cc.no_store);
    assert_int_equal(cc.max_age, -1);
}

static void test_cc_directives(void **state) {
    (void)state;
    struct sg_cc cc =
        cc_str("no-store, no-cache, private, public, must-revalidate, only-if-cached, "
               "max-age=10, s-maxage=20, stale-while-revalidate=30, "
               "stale-if-error=40, max-stale=50, min-fresh=60");
    assert_true(cc.no_store);
    assert_true(cc.no_cache);
    assert_true(cc.private_);
    assert_true(cc.public_);
    assert_true(cc.must_revalidate);
    assert_true(cc.only_if_cached);
    assert_int_equal(cc.max_age, 10);
    assert_int_equal(cc.s_maxage, 20);
    assert_int_equal(cc.swr, 30);
    assert_int_equal(cc.sie, 40);
    assert_int_equal(cc.max_stale, 50);
    assert_int_equal(cc.min_fresh, 60);

    /* each alone sets only itself */
    cc = cc_str("no-store");
    assert_true(cc.no_store);
    assert_false(cc.no_cache || cc.private_ || cc.public_ || cc.must_revalidate);
    cc = cc_str("public");
    assert_true(cc.public_);
    assert_false(cc.no_store || cc.private_);
    cc = cc_str("max-age=0");
    assert_int_equal(cc.max_age, 0);
    assert_int_equal(cc.s_maxage, -1);

    /* proxy-revalidate counts as must-revalidate for a shared cache */
    cc = cc_str("proxy-revalidate");
    assert_true(cc.must_revalidate);

    /* field-name arguments: kept as lists (quotes off), and the quoted
     * list (with its comma) is not read as directives */
    cc = cc_str("no-cache=\"Set-Cookie, max-age=5\", private=\"X-A\"");
    assert_false(cc.no_cache);
    assert_false(cc.private_);
    assert_span(cc.no_cache_fields, cc.no_cache_fields_len, "Set-Cookie, max-age=5");
    assert_span(cc.private_fields, cc.private_fields_len, "X-A");
    assert_int_equal(cc.max_age, -1);
    /* the token form; a second list of a kind, or an empty one: the whole */
    cc = cc_str("no-cache=X-B");
    assert_span(cc.no_cache_fields, cc.no_cache_fields_len, "X-B");
    assert_false(cc.no_cache);
    cc = cc_str("private=\"X-A\", private=\"X-B\"");
    assert_true(cc.private_);
    cc = cc_str("no-cache=\" , \"");
    assert_true(cc.no_cache);
    cc = cc_str("no-cache=");
    assert_true(cc.no_cache);
    /* in a request, no-cache takes no list: plain no-cache */
    struct sg_cc rq;
    sg_cc_of(&rq, req_of("Cache-Control: no-cache=\"X\"\r\n"), true);
    assert_true(rq.no_cache);

    /* unknown directives are ignored, with or without values */
    cc = cc_str("immutable, foo=bar, ext=\"a, max-age=9\", max-age=7, community=\"UCI\"");
    assert_int_equal(cc.max_age, 7);
    assert_false(cc.no_store);

    /* empty items, odd spacing and tabs */
    cc = cc_str(",,  ,max-age=3 ,\t, ,public,,");
    assert_int_equal(cc.max_age, 3);
    assert_true(cc.public_);
    cc = cc_str("\tmax-age=4\t,\ts-maxage=5");
    assert_int_equal(cc.max_age, 4);
    assert_int_equal(cc.s_maxage, 5);

    /* only the first len bytes are read */
    const char *v = "max-age=12345";
    sg_cc_init(&cc);
    sg_cc_parse(&cc, v, 10);
    assert_int_equal(cc.max_age, 12);
}

static void test_cc_case_insensitive(void **state) {
    (void)state;
    struct sg_cc cc = cc_str("NO-STORE, No-Cache, PRIVATE, Public, Must-Revalidate, "
                             "Max-Age=5, S-MAXAGE=6, Stale-While-Revalidate=7, STALE-IF-ERROR=8, "
                             "MAX-STALE=9, Min-Fresh=10, Only-If-Cached");
    assert_true(cc.no_store && cc.no_cache && cc.private_ && cc.public_ && cc.must_revalidate &&
                cc.only_if_cached);
    assert_int_equal(cc.max_age, 5);
    assert_int_equal(cc.s_maxage, 6);
    assert_int_equal(cc.swr, 7);
    assert_int_equal(cc.sie, 8);
    assert_int_equal(cc.max_stale, 9);
    assert_int_equal(cc.min_fresh, 10);
    cc = cc_str("PROXY-REVALIDATE");
    assert_true(cc.must_revalidate);
}

static void test_cc_numbers(void **state) {
    (void)state;
    /* quoted numbers are accepted (RFC 9111 1.2.2 asks senders not to,
     * recipients to accept them) */
    assert_int_equal(cc_str("max-age=\"60\"").max_age, 60);
    assert_int_equal(cc_str("s-maxage=\"0\"").s_maxage, 0);
    assert_int_equal(cc_str("stale-if-error=\"120\", max-age=1").sie, 120);
    /* leading zeros */
    assert_int_equal(cc_str("max-age=007").max_age, 7);

    /* bad numbers: the directive is absent */
    static const char *const bad[] = {"max-age=abc", "max-age=-5",   "max-age=",      "max-age",
                                      "max-age=1.5", "max-age=10x",  "max-age=\"\"",  "max-age=\"1",
                                      "max-age=+3",  "max-age=0x10", "max-age=\"1a\""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct sg_cc cc = cc_str(bad[i]);
        if (cc.max_age != -1)
            fail_msg("%s: max_age %lld", bad[i], (long long)cc.max_age);
    }
    assert_int_equal(cc_str("s-maxage=x").s_maxage, -1);
    assert_int_equal(cc_str("stale-while-revalidate=").swr, -1);
    assert_int_equal(cc_str("stale-if-error=-1").sie, -1);
    assert_int_equal(cc_str("min-fresh=z").min_fresh, -1);

    /* a later bad value replaces an earlier good one (the last one counts) */
    assert_int_equal(cc_str("max-age=10, max-age=20").max_age, 20);
    assert_int_equal(cc_str("max-age=10, max-age=bad").max_age, -1);

    /* very large values saturate at 2^31 */
    assert_int_equal(cc_str("max-age=2147483647").max_age, 2147483647LL);
    assert_int_equal(cc_str("max-age=2147483648").max_age, 2147483648LL);
    assert_int_equal(cc_str("max-age=99999999999999999999999999").max_age, 2147483648LL);
}

static void test_cc_max_stale(void **state) {
    (void)state;
    assert_int_equal(cc_str("max-stale").max_stale, 2147483648LL); /* bare: any staleness */
    assert_int_equal(cc_str("max-stale, max-age=1").max_stale, 2147483648LL);
    assert_int_equal(cc_str("max-stale=30").max_stale, 30);
    assert_int_equal(cc_str("max-stale=\"30\"").max_stale, 30);
    assert_int_equal(cc_str("max-stale=x").max_stale, -1); /* a bad value is not "bare" */
    assert_int_equal(cc_str("max-age=1").max_stale, -1);
}

static void test_cc_of_fields(void **state) {
    (void)state;
    struct sg_cc cc;
    /* several Cache-Control fields are combined, names case-insensitive */
    sg_cc_of(&cc,
             resp_of(200, "Cache-Control: max-age=10\r\ncache-control: no-store\r\n"
                          "X-Other: private\r\nCACHE-CONTROL: s-maxage=3, public\r\n"),
             false);
    assert_int_equal(cc.max_age, 10);
    assert_true(cc.no_store);
    assert_int_equal(cc.s_maxage, 3);
    assert_true(cc.public_);
    assert_false(cc.private_);

    /* sg_cc_of starts from scratch */
    memset(&cc, 0x7f, sizeof(cc));
    sg_cc_of(&cc, resp_of(200, "Content-Type: text/plain\r\n"), false);
    assert_false(cc.no_store || cc.no_cache || cc.public_);
    assert_int_equal(cc.max_age, -1);

    /* Pragma: no-cache in a request without Cache-Control */
    sg_cc_of(&cc, req_of("Pragma: no-cache\r\n"), true);
    assert_true(cc.no_cache);
    sg_cc_of(&cc, req_of("Pragma: foo, no-cache\r\n"), true);
    assert_true(cc.no_cache);
    sg_cc_of(&cc, req_of("pragma: no-cache\r\n"), true);
    assert_true(cc.no_cache);
    /* ... but not with Cache-Control (before or after it) */
    sg_cc_of(&cc, req_of("Pragma: no-cache\r\nCache-Control: max-age=5\r\n"), true);
    assert_false(cc.no_cache);
    assert_int_equal(cc.max_age, 5);
    sg_cc_of(&cc, req_of("Cache-Control: max-stale\r\nPragma: no-cache\r\n"), true);
    assert_false(cc.no_cache);
    assert_int_equal(cc.max_stale, 2147483648LL);
    /* other pragmas do nothing */
    sg_cc_of(&cc, req_of("Pragma: foo\r\n"), true);
    assert_false(cc.no_cache);
    /* and in a response Pragma is ignored */
    sg_cc_of(&cc, resp_of(200, "Pragma: no-cache\r\n"), false);
    assert_false(cc.no_cache);
    /* request directives */
    sg_cc_of(&cc, req_of("Cache-Control: no-store\r\nCache-Control: only-if-cached\r\n"), true);
    assert_true(cc.no_store);
    assert_true(cc.only_if_cached);
    assert_false(cc.no_cache);
}

/* ---- dates ------------------------------------------------------------- */

static int64_t date(const char *s) {
    return sg_http_date_parse(s, strlen(s));
}

static void test_date_valid(void **state) {
    (void)state;
    assert_int_equal(date("Sun, 06 Nov 1994 08:49:37 GMT"), 784111777);
    assert_int_equal(date("Thu, 01 Jan 1970 00:00:00 GMT"), 0);
    assert_int_equal(date("Thu, 01 Jan 1970 00:00:01 GMT"), 1);
    assert_int_equal(date("Fri, 02 Jan 1970 00:00:00 GMT"), 86400);
    assert_int_equal(date("Fri, 31 Dec 1999 23:59:59 GMT"), 946684799);
    assert_int_equal(date("Sat, 01 Jan 2000 00:00:00 GMT"), 946684800);
    /* leap days: 2024 (divisible by 4), 2000 (by 400) */
    assert_int_equal(date("Thu, 29 Feb 2024 12:00:00 GMT"), 1709208000);
    assert_int_equal(date("Fri, 01 Mar 2024 00:00:00 GMT"), 1709251200);
    assert_int_equal(date("Tue, 29 Feb 2000 00:00:00 GMT"), 951782400);
    /* past 2^31 */
    assert_int_equal(date("Tue, 19 Jan 2038 03:14:08 GMT"), 2147483648LL);
    /* before the epoch: not a date (found by fuzz/fuzz_cache.c; every
     * caller already took a negative time as none) */
    assert_int_equal(date("Wed, 31 Dec 1969 23:59:58 GMT"), -1);
    assert_int_equal(date("Mon, 01 Dec 1969 00:00:00 GMT"), -1);
    assert_int_equal(date("Sun, 06 Nov 1499 08:49:37 GMT"), -1);
    /* every month */
    static const char *const mon[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    static const int64_t first[] = {1704067200, 1706745600, 1709251200, 1711929600,
                                    1714521600, 1717200000, 1719792000, 1722470400,
                                    1725148800, 1727740800, 1730419200, 1733011200};
    for (int i = 0; i < 12; i++) {
        char s[40];
        snprintf(s, sizeof(s), "Mon, 01 %s 2024 00:00:00 GMT", mon[i]);
        assert_int_equal(date(s), first[i]);
    }
    /* a leap second is accepted (second 60) */
    assert_int_equal(date("Sun, 06 Nov 1994 08:49:60 GMT"), 784111800);
    /* the date may sit in a longer buffer: only len bytes are read */
    const char *s = "Sun, 06 Nov 1994 08:49:37 GMTxyz";
    assert_int_equal(sg_http_date_parse(s, 29), 784111777);
}

static void test_date_invalid(void **state) {
    (void)state;
    static const char *const bad[] = {
        "",
        "Sun, 06 Nov 1994 08:49:37",
        "Sunday, 06-Nov-94 08:49:37 GMT", /* RFC 850 */
        "Sun Nov  6 08:49:37 1994",       /* asctime */
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 Nov 1994 08:49:37 gmt",
        "Sun, 06 nov 1994 08:49:37 GMT",
        "Sun, 06 NOV 1994 08:49:37 GMT",
        "Sun, 06 Xyz 1994 08:49:37 GMT",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sun, 06 Nov 1994 8:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT ",
        " Sun, 06 Nov 1994 08:49:37 GMT",
        "Sun,  06 Nov 1994 08:49:37 GMT",
        "Sun 06 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08-49-37 GMT",
        "Sun, 06 Nov 1994 08:49.37 GMT",
        "Sun, 06-Nov-1994 08:49:37 GMT",
        "Sun, 00 Nov 1994 08:49:37 GMT",
        "Sun, 32 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 06 Nov 1994 08:49:61 GMT",
        "Sun, 06 Nov 19x4 08:49:37 GMT",
        "Sun, 06 Nov 1994 0a:49:37 GMT",
        "Sun, 0- Nov 1994 08:49:37 GMT",
        "Sun, -6 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT\r",
        "Sun, 06 Nov 1994 08:49:37 GM",
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxx", /* 29 bytes */
        "1994-11-06T08:49:37Z",
        "784111777",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (date(bad[i]) != -1)
            fail_msg("\"%s\" parsed as %lld", bad[i], (long long)date(bad[i]));
    /* a valid date cut short, in a buffer of exactly that size */
    const char *ok = "Sun, 06 Nov 1994 08:49:37 GMT";
    for (size_t n = 0; n < 29; n++) {
        char *b = malloc(n ? n : 1);
        memcpy(b, ok, n);
        assert_int_equal(sg_http_date_parse(b, n), -1);
        free(b);
    }
}

/* ---- keys -------------------------------------------------------------- */

static char *vary_names[] = {"accept-encoding", "x-tenant"};

static const struct sg_route_cache rc_plain = {.enabled = true, .ttl_ms = 300000};
static const struct sg_route_cache rc_vary = {
    .enabled = true, .ttl_ms = 300000, .vary = vary_names, .nvary = 2};

static int key_of(char *out, size_t cap, const char *target, const char *host,
                  const struct sg_route_cache *rc, const struct sg_http_msg *m) {
    return sg_cache_key(out, cap, target, strlen(target), host, strlen(host), rc, m);
}

/* sg_cache_key into a heap buffer of exactly cap bytes: every cap below
 * the key's length is refused, without a write past the buffer. */
static void key_caps(const char *target, const char *host, const struct sg_route_cache *rc,
                     const struct sg_http_msg *m, const char *want) {
    size_t want_len = strlen(want);
    for (size_t cap = 0; cap <= want_len + 1; cap++) {
        char *b = malloc(cap ? cap : 1);
        int n = key_of(b, cap, target, host, rc, m);
        if (cap < want_len) {
            if (n != -1)
                fail_msg("cap %zu: %d, want -1", cap, n);
        } else {
            assert_int_equal(n, (int)want_len);
            assert_memory_equal(b, want, want_len);
        }
        free(b);
    }
}

static void test_key_basic(void **state) {
    (void)state;
    char out[SG_CACHE_KEY_MAX];
    struct sg_http_msg *m = req_of("Accept-Encoding: gzip\r\n");
    int n = key_of(out, sizeof(out), "/a/b?x=1&y=2", "Example.COM:8080", &rc_plain, m);
    assert_span(out, (size_t)n, "/a/b?x=1&y=2\nexample.com:8080\n");
    /* the target keeps its case; only the host is lowercased */
    n = key_of(out, sizeof(out), "/A/B?Q=Z", "WWW.EXAMPLE.ORG", &rc_plain, m);
    assert_span(out, (size_t)n, "/A/B?Q=Z\nwww.example.org\n");
    /* an empty host */
    n = key_of(out, sizeof(out), "/x", "", &rc_plain, m);
    assert_span(out, (size_t)n, "/x\n\n");
    /* non-letters of the host are kept as they are */
    n = key_of(out, sizeof(out), "/", "[::1]:80@-_Z", &rc_plain, m);
    assert_span(out, (size_t)n, "/\n[::1]:80@-_z\n");
    key_caps("/a/b?x=1", "Host.Example", &rc_plain, m, "/a/b?x=1\nhost.example\n");
}

static void test_key_route_vary(void **state) {
    (void)state;
    char out[SG_CACHE_KEY_MAX];
    struct sg_http_msg *m =
        req_of("ACCEPT-ENCODING: gzip\r\nX-Tenant: a\r\nX-Other: z\r\nx-tenant: b, c\r\n");
    int n = key_of(out, sizeof(out), "/p", "H", &rc_vary, m);
    /* the values in the route's order; a repeated field joined with "," */
    assert_span(out, (size_t)n, "/p\nh\ngzip\na,b, c\n");
    key_caps("/p", "H", &rc_vary, m, "/p\nh\ngzip\na,b, c\n");

    /* a missing field gives an empty line; an empty value too */
    m = req_of("X-Tenant: t\r\n");
    n = key_of(out, sizeof(out), "/p", "h", &rc_vary, m);
    assert_span(out, (size_t)n, "/p\nh\n\nt\n");
    key_caps("/p", "h", &rc_vary, m, "/p\nh\n\nt\n");
    m = req_of("Accept-Encoding:\r\n");
    n = key_of(out, sizeof(out), "/p", "h", &rc_vary, m);
    assert_span(out, (size_t)n, "/p\nh\n\n\n");

    /* different values, different keys */
    char k2[SG_CACHE_KEY_MAX];
    m = req_of("Accept-Encoding: br\r\nX-Tenant: a\r\n");
    n = key_of(out, sizeof(out), "/p", "h", &rc_vary, m);
    m = req_of("Accept-Encoding: gzip\r\nX-Tenant: a\r\n");
    int n2 = key_of(k2, sizeof(k2), "/p", "h", &rc_vary, m);
    assert_false(n == n2 && memcmp(out, k2, (size_t)n) == 0);
}

static void test_key_too_long(void **state) {
    (void)state;
    static char target[SG_CACHE_KEY_MAX + 16], out[SG_CACHE_KEY_MAX];
    struct sg_http_msg *m = req_of("");
    /* target + "\n" + host + "\n" is exactly the cap: fits */
    memset(target, 'a', sizeof(target));
    target[0] = '/';
    assert_int_equal(
        sg_cache_key(out, sizeof(out), target, SG_CACHE_KEY_MAX - 3, "h", 1, &rc_plain, m),
        SG_CACHE_KEY_MAX);
    assert_int_equal(
        sg_cache_key(out, sizeof(out), target, SG_CACHE_KEY_MAX - 2, "h", 1, &rc_plain, m), -1);
    assert_int_equal(sg_cache_key(out, sizeof(out), target, sizeof(target), "", 0, &rc_plain, m),
                     -1);
    /* a long vary value */
    char fields[8192];
    memset(fields, 0, sizeof(fields));
    strcpy(fields, "X-Tenant: ");
    memset(fields + 10, 'v', 6000);
    strcat(fields, "\r\n");
    m = req_of(fields);
    /* "/p\nh\n" + "\n" (no Accept-Encoding) + the value + "\n" */
    char small[5 + 1 + 6000 + 1];
    assert_int_equal(key_of(small, sizeof(small) - 1, "/p", "h", &rc_vary, m), -1);
    assert_int_equal(key_of(small, sizeof(small), "/p", "h", &rc_vary, m), (int)sizeof(small));
    assert_int_equal(key_of(out, sizeof(out), "/p", "h", &rc_vary, m), (int)sizeof(small));
}

static void test_key_vary(void **state) {
    (void)state;
    static const char names[] = "accept-encoding\0x-lang\0";
    size_t vlen = sizeof(names) - 1; /* both NULs of the names, not the literal's */
    char out[256];
    struct sg_http_msg *m = req_of("X-Lang: en\r\nAccept-Encoding: gzip\r\nx-lang: fr\r\n");
    memcpy(out, "/p\nh\n", 5);
    int n = sg_cache_key_vary(out, 5, sizeof(out), names, vlen, m);
    assert_span(out, (size_t)n,
                "/p\nh\n\x01gzip\x01"
                "en,fr\x01");
    /* every cap below the result is refused, in a buffer of exactly cap bytes */
    const char *want = "/p\nh\n\x01gzip\x01"
                       "en,fr\x01";
    size_t wl = strlen(want);
    for (size_t cap = 5; cap <= wl + 1; cap++) {
        char *b = malloc(cap);
        memcpy(b, "/p\nh\n", 5);
        n = sg_cache_key_vary(b, 5, cap, names, vlen, m);
        if (cap < wl)
            assert_int_equal(n, -1);
        else
            assert_span(b, (size_t)n, want);
        free(b);
    }
    /* missing fields: empty parts */
    m = req_of("");
    n = sg_cache_key_vary(out, 0, sizeof(out), names, vlen, m);
    assert_span(out, (size_t)n, "\x01\x01\x01");
    /* no names: only the marker */
    n = sg_cache_key_vary(out, 3, sizeof(out), "", 0, m);
    assert_int_equal(n, 4);
    assert_int_equal(out[3], '\x01');
    assert_int_equal(sg_cache_key_vary(out, 3, 3, "", 0, m), -1);
    /* a name matches case-insensitively */
    m = req_of("ACCEPT-ENCODING: br\r\n");
    n = sg_cache_key_vary(out, 0, sizeof(out), "accept-encoding", 16, m);
    assert_span(out, (size_t)n,
                "\x01"
                "br\x01");
}

/* ---- sg_cache_decide ----------------------------------------------------- */

#define NOW 1700000000 /* wall clock seconds for Expires */

static struct sg_route_cache rc_default(void) {
    return (struct sg_route_cache){.enabled = true,
                                   .ttl_ms = 300000,
                                   .stale_while_revalidate_ms = 5000,
                                   .stale_if_error_ms = 7000,
                                   .client_cache_control = true};
}

/* Decides for a GET with req_fields answered by status with resp_fields. */
static struct sg_cache_decision decide(const char *req_fields, int status, const char *resp_fields,
                                       const struct sg_route_cache *rc) {
    static struct parsed q, r;
    char s[8192];
    snprintf(s, sizeof(s), "GET /p HTTP/1.1\r\nHost: h\r\n%s\r\n", req_fields);
    struct sg_http_msg *req = parse_req(&q, s);
    snprintf(s, sizeof(s), "HTTP/1.1 %d X\r\n%s\r\n", status, resp_fields);
    struct sg_http_msg *resp = parse_resp(&r, s);
    struct sg_cc reqcc;
    sg_cc_of(&reqcc, req, true);
    struct sg_cache_decision d;
    memset(&d, 0x5a, sizeof(d));
    sg_cache_decide(req, &reqcc, resp, rc, NOW, &d);
    if (d.store)
        assert_null(d.why);
    else
        assert_non_null(d.why);
    return d;
}

static void assert_stored(struct sg_cache_decision d, uint64_t ttl_ms) {
    if (!d.store)
        fail_msg("not stored: %s", d.why);
    assert_int_equal(d.ttl_ms, ttl_ms);
}

static void assert_refused(struct sg_cache_decision d, const char *why) {
    if (d.store)
        fail_msg("stored (ttl %llu), want refused: %s", (unsigned long long)d.ttl_ms, why);
    assert_string_equal(d.why, why);
}

static void test_decide_statuses(void **state) {
    (void)state;
    struct sg_route_cache rc = rc_default();
    static const int heuristic[] = {200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501};
    for (size_t i = 0; i < sizeof(heuristic) / sizeof(heuristic[0]); i++) {
        struct sg_cache_decision d = decide("", heuristic[i], "", &rc);
        if (!d.store)
            fail_msg("%d not stored: %s", heuristic[i], d.why);
        assert_int_equal(d.ttl_ms, 300000); /* the route's ttl */
        assert_int_equal(d.age0_ms, 0);
        assert_int_equal(d.swr_ms, 5000);
        assert_int_equal(d.sie_ms, 7000);
        assert_false(d.no_stale);
    }
    static const int never[] = {201, 202, 205, 206, 302, 303, 307, 400,     401,
                                403, 409, 429, 500, 502, 503, 504, 100 + 99};
    for (size_t i = 0; i < sizeof(never) / sizeof(never[0]); i++)
        assert_refused(decide("", never[i], "", &rc), "status not cacheable");
    /* explicit freshness does not make other statuses storable */
    assert_refused(decide("", 201, "Cache-Control: max-age=60\r\n", &rc), "status not cacheable");
    assert_refused(decide("", 303, "Cache-Control: max-age=60\r\n", &rc), "status not cacheable");
    assert_refused(decide("", 500, "Cache-Control: public, s-maxage=60\r\n", &rc),
                   "status not cacheable");
    assert_refused(decide("", 206, "Expires: Thu, 01 Jan 2099 00:00:00 GMT\r\n", &rc),
                   "status not cacheable");
    /* heuristic statuses with explicit freshness use it */
    assert_stored(decide("", 404, "Cache-Control: max-age=10\r\n", &rc), 10000);
    assert_stored(decide("", 301, "Cache-Control: s-maxage=20\r\n", &rc), 20000);
}

static void test_decide_redirects(void **state) {
    (void)state;
    struct sg_route_cache rc = rc_default();
    /* 302 and 307 only with explicit freshness */
    assert_refused(decide("", 302, "Location: /x\r\n", &rc), "status not cacheable");
    assert_refused(decide("", 307, "Location: /x\r\n", &rc), "status not cacheable");
    assert_stored(decide("", 302, "Location: /x\r\nCache-Control: max-age=60\r\n", &rc), 60000);
    assert_stored(decide("", 307, "Cache-Control: s-maxage=30\r\n", &rc), 30000);
    assert_stored(decide("", 302,
                         "Date: Tue, 14 Nov 2023 22:13:20 GMT\r\n"
                         "Expires: Tue, 14 Nov 2023 22:14:20 GMT\r\n",
                         &rc),
                  60000);
    /* a present but bad Expires is explicit freshness of 0: already stale */
    assert_refused(decide("", 307, "Expires: 0\r\n", &rc), "already stale");
    /* max-age that is not a number is absent: no explicit freshness */
    assert_refused(decide("", 302, "Cache-Control: max-age=soon\r\n", &rc), "status not cacheable");
    /* the other rules still apply to them */
    assert_refused(decide("", 302, "Cache-Control: max-age=60, private\r\n", &rc),
                   "Cache-Control forbids a shared cache");
}

static void test_decide_cache_control(void **state) {
    (void)state;
    struct sg_route_cache rc = rc_default();
    const char *forbid = "Cache-Control forbids a shared cache";
    assert_refused(decide("", 200, "Cache-Control: no-store\r\n", &rc), forbid);
    assert_refused(decide("", 200, "Cache-Control: private\r\n", &rc), forbid);
    assert_refused(decide("", 200, "Cache-Control: private=\"A\", private=\"B\"\r\n", &rc), forbid);
    assert_refused(decide("", 200, "Cache-Control: no-cache\r\n", &rc), forbid);
    assert_refused(decide("", 200, "Cache-Control: no-cache=\"\", max-age=60\r\n", &rc), forbid);
    /* with field names: stored without them (RFC 9111 5.2.2.4, 5.2.2.7) */
    struct sg_cache_decision d =
        decide("", 200, "Cache-Control: no-cache=\"X-A\", max-age=60\r\n", &rc);
    assert_stored(d, 60000);
    assert_span(d.strip[0], d.strip_len[0], "X-A");
    assert_null(d.strip[1]);
    d = decide("", 200, "Cache-Control: private=\"X-User, x-token\"\r\n", &rc);
    assert_stored(d, 300000);
    assert_null(d.strip[0]);
    assert_span(d.strip[1], d.strip_len[1], "X-User, x-token");
    /* but not the Vary field */
    assert_refused(decide("", 200, "Cache-Control: private=\"X-A, vary\"\r\n", &rc),
                   "Cache-Control keeps the Vary field from a shared cache");
    assert_refused(decide("", 200, "Cache-Control: public, max-age=60, No-Store\r\n", &rc), forbid);
    /* in a second Cache-Control field */
    assert_refused(decide("", 200, "Cache-Control: max-age=60\r\nCache-Control: private\r\n", &rc),
                   forbid);
    /* even with s-maxage */
    assert_refused(decide("", 200, "Cache-Control: s-maxage=60, no-store\r\n", &rc), forbid);
    /* Pragma in a response does nothing */
    assert_stored(decide("", 200, "Pragma: no-cache\r\n", &rc), 300000);

    /* the request's no-store */
    assert_refused(decide("Cache-Control: no-store\r\n", 200, "Cache-Control: max-age=60\r\n", &rc),
                   "request Cache-Control: no-store");
    /* other request directives do not stop storing */
    assert_stored(decide("Cache-Control: no-cache\r\n", 200, "Cache-Control: max-age=60\r\n", &rc),
                  60000);
    assert_stored(decide("Pragma: no-cache\r\n", 200, "", &rc), 300000);
    assert_stored(decide("Cache-Control: max-age=0\r\n", 200, "", &rc), 300000);
}

static void test_decide_set_cookie(void **state) {
    (void)state;
    struct sg_route_cache rc = rc_default();
    assert_refused(decide("", 200, "Set-Cookie: a=b\r\nCache-Control: max-age=60\r\n", &rc),
                   "Set-Cookie");
    assert_refused(decide("", 200, "set-cookie: a=b\r\n", &rc), "Set-Cookie");
    rc.set_cookie = true; /* stored (the field itself is dropped from the object) */
    assert_stored(decide("", 200, "Set-Cookie: a=b\r\nCache-Control: max-age=60\r\n", &rc), 60000);
    /* a Cookie in the request does not matter */
    rc.set_cookie = false;
    assert_stored(decide("Cookie: a=b\r\n", 200, "Cache-Control: max-age=60\r\n", &rc), 60000);
}

static void test_decide_authorization(void **state) {
    (void)state;
    struct sg_route_cache rc = rc_default();
    const char *auth = "Authorization: Bearer x\r\n";
    const char *why = "request with Authorization";
    assert_refused(decide(auth, 200, "", &rc), why);
    assert_refused(decide(auth, 200, "Cache-Control: max-age=60\r\n", &rc), why);
    assert_refused(decide("authorization: Basic Zm9vOmJhcg==\r\n", 200, "", &rc), why);
    /* allowed by public, s-maxage or must-revalidate (RFC 9111 3.5) */
    assert_stored(decide(auth, 200, "Cache-Control: public\r\n", &rc), 300000);
    assert_stored(decide(auth, 200, "Cache-Control: public, max-age=60\r\n", &rc), 60000);
    assert_stored(decide(auth, 200, "Cache-Control: s-maxage=10\r\n", &rc), 10000);
    struct sg_cache_decision d =
        decide(auth, 200, "Cache-Control: max-age=60, must-revalidate\r\n", &rc);
    assert_stored(d, 60000);
    assert_true(d.no_stale);
    /* or by the route */
    rc.authorization = true;
    assert_stored(decide(auth, 200, "Cache-Control: max-age=60\r\n", &rc), 60000);
    assert_stored(decide(auth, 200, "", &rc), 300000);
    /* which does not override private */
    assert_refused(decide(auth, 200, "Cache-Control: private\r\n", &rc),
                   "Cache-Control forbids a shared cache");
    /* Authorization in the response does not matter */
    rc.authorization = false;
    assert_stored(decide("", 200, auth, &rc), 300000);
}

static void test_decide_vary_star(void **state) {
    (void)state;
    struct sg_route_cache rc = rc_default();
    assert_refused(decide("", 200, "Vary: *\r\n", &rc), "Vary: *");
    assert_refused(decide("", 200, "Vary: Accept-Encoding, *\r\nCache-Control: max-age=9\r\n", &rc),
                   "Vary: *");
    assert_stored(decide("", 200, "Vary: Accept-Encoding\r\n", &rc), 300000);
    assert_stored(decide("", 200, "Vary: Accept, X-Lang\r\nVary: Origin\r\n", &rc), 300000);
}

static void test_decide_freshness_order(void **state) {
    (void)state;
    struct sg_route_cache rc = rc_default();
    const char *dates = "Date: Tue, 14 Nov 2023 22:13:20 GMT\r\n"     /* NOW */
                        "Expires: Tue, 14 Nov 2023 22:13:50 GMT\r\n"; /* NOW + 30 */
    char f[512];
    /* s-maxage over max-age over Expires over the route's ttl */
    snprintf(f, sizeof(f), "Cache-Control: max-age=20, s-maxage=10\r\n%s", dates);
    assert_stored(decide("", 200, f, &rc), 10000);
    snprintf(f, sizeof(f), "Cache-Control: s-maxage=40\r\nCache-Control: max-age=20\r\n%s", dates);
    assert_stored(decide("", 200, f, &rc), 40000);
    snprintf(f, sizeof(f), "Cache-Control: max-age=20\r\n%s", dates);
    assert_stored(decide("", 200, f, &rc), 20000);
    assert_stored(decide("", 200, dates, &rc), 30000);
    assert_stored(decide("", 200, "Cache-Control: public\r\n", &rc), 300000);
    /* s-maxage=0 wins over a long max-age: nothing to store */
    assert_refused(decide("", 200, "Cache-Control: max-age=600, s-maxage=0\r\n", &rc),
                   "already stale");
    assert_refused(decide("", 200, "Cache-Control: max-age=0\r\n", &rc), "already stale");
    /* max-age over an Expires in the past */
    assert_stored(decide("", 200,
                         "Cache-Control: max-age=5\r\nExpires: Thu, 01 Jan 1970 00:00:00 GMT\r\n",
                         &rc),
                  5000);
    /* a bad max-age falls through to Expires */
    snprintf(f, sizeof(f), "Cache-Control: max-age=x\r\n%s", dates);
    assert_stored(decide("", 200, f, &rc), 30000);

    /* Expires is relative to Date when there is one, else to now */
    assert_stored(decide("", 200,
                         "Date: Thu, 01 Jan 2099 00:00:00 GMT\r\n"
                         "Expires: Thu, 01 Jan 2099 00:01:40 GMT\r\n",
                         &rc),
                  100000);
    assert_stored(decide("", 200, "Expires: Tue, 14 Nov 2023 22:15:00 GMT\r\n", &rc), 100000);
    /* a bad Date: now */
    assert_stored(
        decide("", 200, "Date: yesterday\r\nExpires: Tue, 14 Nov 2023 22:15:00 GMT\r\n", &rc),
        100000);
    /* Expires at or before the base, or not a date: already stale */
    assert_refused(decide("", 200, "Expires: Tue, 14 Nov 2023 22:13:20 GMT\r\n", &rc),
                   "already stale");
    assert_refused(decide("", 200, "Expires: Thu, 01 Jan 1970 00:00:00 GMT\r\n", &rc),
                   "already stale");
    assert_refused(decide("", 200, "Expires: 0\r\n", &rc), "already stale");
    assert_refused(decide("", 200, "Expires: -1\r\n", &rc), "already stale");
    assert_refused(decide("", 200,
                          "Date: Tue, 14 Nov 2023 22:13:20 GMT\r\n"
                          "Expires: Tue, 14 Nov 2023 22:13:19 GMT\r\n",
                          &rc),
                   "already stale");
    /* a large max-age */
    assert_stored(decide("", 200, "Cache-Control: max-age=31536000\r\n", &rc), 31536000000ull);
    assert_stored(decide("", 200, "Cache-Control: max-age=99999999999\r\n", &rc), 2147483648000ull);
}

static void test_decide_age(void **state) {
    (void)state;
    struct sg_route_cache rc = rc_default();
    struct sg_cache_decision d = decide("", 200, "Cache-Control: max-age=100\r\nAge: 30\r\n", &rc);
    assert_stored(d, 70000);
    assert_int_equal(d.age0_ms, 30000);
    d = decide("", 200, "Age: 10\r\n", &rc); /* the route's ttl too */
    assert_stored(d, 290000);
    assert_int_equal(d.age0_ms, 10000);
    d = decide("", 200, "Cache-Control: max-age=100\r\nAge: 99\r\n", &rc);
    assert_stored(d, 1000);
    assert_refused(decide("", 200, "Cache-Control: max-age=100\r\nAge: 100\r\n", &rc),
                   "already stale");
    assert_refused(decide("", 200, "Cache-Control: max-age=100\r\nAge: 1000\r\n", &rc),
                   "already stale");
    assert_refused(decide("", 200, "Age: 300\r\n", &rc), "already stale");
    /* Age 0, or not a number: no age */
    d = decide("", 200, "Cache-Control: max-age=100\r\nAge: 0\r\n", &rc);
    assert_stored(d, 100000);
    assert_int_equal(d.age0_ms, 0);
    d = decide("", 200, "Cache-Control: max-age=100\r\nAge: soon\r\n", &rc);
    assert_stored(d, 100000);
    assert_int_equal(d.age0_ms, 0);
    /* Age with Expires */
    d = decide("", 200,
               "Date: Tue, 14 Nov 2023 22:13:20 GMT\r\n"
               "Expires: Tue, 14 Nov 2023 22:13:50 GMT\r\nAge: 10\r\n",
               &rc);
    assert_stored(d, 20000);
}

static void test_decide_stale_windows(void **state) {
    (void)state;
    struct sg_route_cache rc = rc_default();
    struct sg_cache_decision d = decide("", 200, "Cache-Control: max-age=60\r\n", &rc);
    assert_int_equal(d.swr_ms, 5000); /* the route's */
    assert_int_equal(d.sie_ms, 7000);
    assert_false(d.no_stale);
    d = decide("", 200, "Cache-Control: max-age=60, stale-while-revalidate=2\r\n", &rc);
    assert_int_equal(d.swr_ms, 2000);
    assert_int_equal(d.sie_ms, 7000);
    d = decide("", 200, "Cache-Control: max-age=60, stale-if-error=86400\r\n", &rc);
    assert_int_equal(d.swr_ms, 5000);
    assert_int_equal(d.sie_ms, 86400000);
    /* 0 from the backend overrides the route too */
    d = decide("", 200,
               "Cache-Control: max-age=60, stale-while-revalidate=0\r\n"
               "Cache-Control: stale-if-error=0\r\n",
               &rc);
    assert_int_equal(d.swr_ms, 0);
    assert_int_equal(d.sie_ms, 0);
    /* a bad number is absent: the route's */
    d = decide("", 200, "Cache-Control: stale-while-revalidate=x, stale-if-error=-3\r\n", &rc);
    assert_int_equal(d.swr_ms, 5000);
    assert_int_equal(d.sie_ms, 7000);
    /* must-revalidate (and proxy-revalidate): never stale */
    d = decide("", 200,
               "Cache-Control: max-age=60, must-revalidate, stale-while-revalidate=9, "
               "stale-if-error=9\r\n",
               &rc);
    assert_stored(d, 60000);
    assert_true(d.no_stale);
    assert_int_equal(d.swr_ms, 0);
    assert_int_equal(d.sie_ms, 0);
    d = decide("", 200, "Cache-Control: proxy-revalidate\r\n", &rc);
    assert_stored(d, 300000);
    assert_true(d.no_stale);
    assert_int_equal(d.swr_ms, 0);
    assert_int_equal(d.sie_ms, 0);
    /* a route without stale windows */
    rc.stale_while_revalidate_ms = rc.stale_if_error_ms = 0;
    d = decide("", 200, "", &rc);
    assert_int_equal(d.swr_ms, 0);
    assert_int_equal(d.sie_ms, 0);
}

/* ---- objects ------------------------------------------------------------ */

/* The object for the response head s with body: head + body, in a heap
 * buffer of exactly its size (*len bytes). */
static char *make_obj(const char *s, const char *body, size_t body_len,
                      const struct sg_cache_decision *d, size_t *len, size_t *head_len) {
    struct parsed *p = malloc(sizeof(*p));
    struct sg_http_msg *resp = parse_resp(p, s);
    char *head;
    size_t hl;
    assert_int_equal(sg_cache_obj_head(resp, d, &head, &hl), 0);
    free(p);
    sg_cache_obj_set_body_len(head, body_len);
    char *obj = malloc(hl + body_len);
    memcpy(obj, head, hl);
    if (body_len)
        memcpy(obj + hl, body, body_len);
    free(head);
    *len = hl + body_len;
    if (head_len)
        *head_len = hl;
    return obj;
}

static const struct sg_cache_decision d_plain = {.store = true, .ttl_ms = 60000};

static const char full_resp[] = "HTTP/1.1 200 Fine Thanks\r\n"
                                "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
                                "Content-Type: text/plain\r\n"
                                "Content-Length: 5\r\n"
                                "Connection: keep-alive, X-Hop\r\n"
                                "X-Hop: 1\r\n"
                                "Keep-Alive: timeout=5\r\n"
                                "Proxy-Connection: keep-alive\r\n"
                                "Trailer: X-Sum\r\n"
                                "Age: 3\r\n"
                                "Set-Cookie: a=b\r\n"
                                "X-Cache: MISS\r\n"
                                "RateLimit: limit=10, remaining=9\r\n"
                                "RateLimit-Policy: 10;w=1\r\n"
                                "ETag: \"abc\"\r\n"
                                "set-cookie: c=d\r\n"
                                "Last-Modified: Sat, 05 Nov 1994 08:49:37 GMT\r\n"
                                "Vary: Accept-Encoding, ACCEPT-encoding\r\n"
                                "Vary: X-Lang,,  Accept-Encoding\t,\tOrigin\r\n"
                                "Cache-Control: max-age=60\r\n"
                                "X-RateLimit-Limit: 5\r\n"
                                "\r\n";

static const char full_fields[] = "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
                                  "Content-Type: text/plain\r\n"
                                  "ETag: \"abc\"\r\n"
                                  "Last-Modified: Sat, 05 Nov 1994 08:49:37 GMT\r\n"
                                  "Vary: Accept-Encoding, ACCEPT-encoding\r\n"
                                  "Vary: X-Lang,,  Accept-Encoding\t,\tOrigin\r\n"
                                  "Cache-Control: max-age=60\r\n"
                                  "X-RateLimit-Limit: 5\r\n";

static void test_obj_round_trip(void **state) {
    (void)state;
    struct sg_cache_decision d = {.store = true,
                                  .ttl_ms = 57000,
                                  .swr_ms = 11000,
                                  .sie_ms = 22000,
                                  .age0_ms = 3000,
                                  .no_stale = false};
    size_t len, hl;
    char *obj = make_obj(full_resp, "hello", 5, &d, &len, &hl);
    struct sg_cache_obj o;
    assert_true(sg_cache_obj_view(obj, len, &o));
    assert_int_equal(o.m.magic, SG_OBJ_MAGIC);
    assert_int_equal(o.m.status, 200);
    assert_int_equal(o.m.flags, 0);
    assert_span(o.reason, o.m.reason_len, "Fine Thanks");
    assert_span(o.fields, o.m.fields_len, full_fields);
    assert_span(o.fields + o.m.etag_off, o.m.etag_len, "\"abc\"");
    assert_span(o.fields + o.m.lm_off, o.m.lm_len, "Sat, 05 Nov 1994 08:49:37 GMT");
    /* vary names: lowercase, each once, across fields and separators */
    static const char names[] = "accept-encoding\0x-lang\0origin\0";
    assert_int_equal(o.m.vary_len, sizeof(names) - 1);
    assert_memory_equal(o.vary, names, sizeof(names) - 1);
    assert_int_equal(o.m.body_len, 5);
    assert_memory_equal(o.body, "hello", 5);
    assert_ptr_equal(o.body, obj + hl);
    assert_int_equal(o.m.ttl_ms, 57000);
    assert_int_equal(o.m.swr_ms, 11000);
    assert_int_equal(o.m.sie_ms, 22000);
    assert_int_equal(o.m.age0_ms, 3000);
    /* the parts follow each other */
    assert_ptr_equal(o.reason, obj + sizeof(struct sg_cache_meta));
    assert_ptr_equal(o.fields, o.reason + o.m.reason_len);
    assert_ptr_equal(o.vary, o.fields + o.m.fields_len);
    assert_ptr_equal(o.body, o.vary + o.m.vary_len);
    assert_int_equal(hl,
                     sizeof(struct sg_cache_meta) + o.m.reason_len + o.m.fields_len + o.m.vary_len);
    free(obj);

    /* no_stale is a flag; no ETag, no Last-Modified, no Vary, no body */
    d.no_stale = true;
    obj = make_obj("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nX-A: b\r\n\r\n", NULL, 0, &d,
                   &len, &hl);
    assert_int_equal(len, hl);
    assert_true(sg_cache_obj_view(obj, len, &o));
    assert_int_equal(o.m.status, 404);
    assert_int_equal(o.m.flags, SG_OBJ_NO_STALE);
    assert_span(o.reason, o.m.reason_len, "Not Found");
    assert_span(o.fields, o.m.fields_len, "X-A: b\r\n");
    assert_int_equal(o.m.etag_len, 0);
    assert_int_equal(o.m.lm_len, 0);
    assert_int_equal(o.m.vary_len, 0);
    assert_int_equal(o.m.body_len, 0);
    free(obj);
}

static void test_obj_dropped_fields(void **state) {
    (void)state;
    size_t len;
    struct sg_cache_obj o;
    /* a chunked response: Transfer-Encoding goes, the body is stored decoded */
    char *obj = make_obj("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: a/b\r\n"
                         "Upgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
                         "abc", 3, &d_plain, &len, NULL);
    assert_true(sg_cache_obj_view(obj, len, &o));
    assert_span(o.fields, o.m.fields_len, "Content-Type: a/b\r\n");
    assert_span(o.body, o.m.body_len, "abc");
    free(obj);
    /* everything dropped: empty fields; names are matched case-insensitively */
    obj = make_obj("HTTP/1.1 200 OK\r\ncontent-length: 0\r\nAGE: 1\r\nSET-COOKIE: x=y\r\n"
                   "x-cache: HIT\r\nratelimit: r\r\nRATELIMIT-POLICY: p\r\nkeep-alive: 1\r\n\r\n",
                   NULL, 0, &d_plain, &len, NULL);
    assert_true(sg_cache_obj_view(obj, len, &o));
    assert_int_equal(o.m.fields_len, 0);
    free(obj);
    /* names that merely start like dropped ones stay */
    obj = make_obj("HTTP/1.1 200 OK\r\nAges: 1\r\nX-Cache-Status: a\r\nRateLimit-Reset: 3\r\n"
                   "Set-Cookie2: z\r\nContent-Length: 0\r\n\r\n",
                   NULL, 0, &d_plain, &len, NULL);
    assert_true(sg_cache_obj_view(obj, len, &o));
    assert_span(o.fields, o.m.fields_len,
                "Ages: 1\r\nX-Cache-Status: a\r\nRateLimit-Reset: 3\r\nSet-Cookie2: z\r\n");
    free(obj);
}

/* The fields a qualified no-cache or private names are not stored. */
static void test_obj_strip_fields(void **state) {
    (void)state;
    struct sg_cache_decision d = d_plain;
    const char *nc = " X-A ,x-b", *pv = "x-user";
    d.strip[0] = nc;
    d.strip_len[0] = strlen(nc);
    d.strip[1] = pv;
    d.strip_len[1] = strlen(pv);
    size_t len;
    struct sg_cache_obj o;
    char *obj = make_obj("HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Type: a/b\r\nX-B: 2\r\n"
                         "X-User: alice\r\nX-Users: all\r\nX-AB: 3\r\nContent-Length: 2\r\n\r\n",
                         "ok", 2, &d, &len, NULL);
    assert_true(sg_cache_obj_view(obj, len, &o));
    assert_span(o.fields, o.m.fields_len, "Content-Type: a/b\r\nX-Users: all\r\nX-AB: 3\r\n");
    free(obj);
}

static void test_obj_etag_lm_offsets(void **state) {
    (void)state;
    size_t len;
    struct sg_cache_obj o;
    /* lowercase names, weak ETag, dropped fields before them shift nothing */
    char *obj = make_obj("HTTP/1.1 200 OK\r\nSet-Cookie: s=1\r\nlast-modified: Thu, 01 Jan 1970 "
                         "00:00:00 GMT\r\nAge: 5\r\netag: W/\"v1\"\r\nContent-Length: 2\r\n\r\n",
                         "hi", 2, &d_plain, &len, NULL);
    assert_true(sg_cache_obj_view(obj, len, &o));
    assert_span(o.fields, o.m.fields_len,
                "last-modified: Thu, 01 Jan 1970 00:00:00 GMT\r\netag: W/\"v1\"\r\n");
    assert_int_equal(o.m.lm_off, 15);
    assert_span(o.fields + o.m.lm_off, o.m.lm_len, "Thu, 01 Jan 1970 00:00:00 GMT");
    assert_span(o.fields + o.m.etag_off, o.m.etag_len, "W/\"v1\"");
    free(obj);
    /* an empty reason */
    obj = make_obj("HTTP/1.1 200 \r\nETag: \"e\"\r\nContent-Length: 0\r\n\r\n", NULL, 0, &d_plain,
                   &len, NULL);
    assert_true(sg_cache_obj_view(obj, len, &o));
    assert_int_equal(o.m.reason_len, 0);
    assert_int_equal(o.m.etag_off, 6);
    assert_span(o.fields + o.m.etag_off, o.m.etag_len, "\"e\"");
    free(obj);
}

static void test_obj_vary_names(void **state) {
    (void)state;
    size_t len;
    struct sg_cache_obj o;
    static const struct {
        const char *fields, *names;
        size_t names_len;
        const char *stored; /* the fields as stored, when not as given */
    } t[] = {
        {"Vary: Accept\r\n", "accept\0", 7, NULL},
        {"Vary: ACCEPT, accept, Accept\r\n", "accept\0", 7, NULL},
        {"Vary: a,b\r\nVary: B, c\r\nvary: A\r\n", "a\0b\0c\0", 6, NULL},
        {"Vary: ,, ,\r\n", "", 0, NULL},
        {"Vary:\r\n", "", 0, "Vary: \r\n"},
        {"Vary: X-Tenant\t,Accept-Language\r\n", "x-tenant\0accept-language\0", 25, NULL},
        /* a name that is a prefix of an earlier one is distinct */
        {"Vary: accept-encoding, accept\r\n", "accept-encoding\0accept\0", 23, NULL},
        {"Vary: accept, accept-encoding\r\n", "accept\0accept-encoding\0", 23, NULL},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        char s[512];
        snprintf(s, sizeof(s), "HTTP/1.1 200 OK\r\n%sContent-Length: 0\r\n\r\n", t[i].fields);
        char *obj = make_obj(s, NULL, 0, &d_plain, &len, NULL);
        assert_true(sg_cache_obj_view(obj, len, &o));
        if (o.m.vary_len != t[i].names_len || memcmp(o.vary, t[i].names, t[i].names_len) != 0)
            fail_msg("case %zu: vary section of %u bytes", i, o.m.vary_len);
        /* the Vary fields themselves are kept */
        assert_span(o.fields, o.m.fields_len, t[i].stored ? t[i].stored : t[i].fields);
        free(obj);
    }
    /* a Vary field named in Connection is hop-by-hop: dropped, no names */
    char *obj = make_obj("HTTP/1.1 200 OK\r\nConnection: vary\r\nVary: Accept\r\n"
                         "Content-Length: 0\r\n\r\n",
                         NULL, 0, &d_plain, &len, NULL);
    assert_true(sg_cache_obj_view(obj, len, &o));
    assert_int_equal(o.m.fields_len, 0);
    assert_int_equal(o.m.vary_len, 0);
    free(obj);
}

static void test_obj_set_body_len(void **state) {
    (void)state;
    struct parsed *p = malloc(sizeof(*p));
    struct sg_http_msg *resp = parse_resp(p, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n");
    char *head;
    size_t hl;
    assert_int_equal(sg_cache_obj_head(resp, &d_plain, &head, &hl), 0);
    free(p);
    struct sg_cache_obj o;
    /* body_len starts at 0: the head alone is an object */
    assert_true(sg_cache_obj_view(head, hl, &o));
    assert_int_equal(o.m.body_len, 0);
    sg_cache_obj_set_body_len(head, 3);
    assert_false(sg_cache_obj_view(head, hl, &o)); /* the body is missing */
    char *obj = malloc(hl + 3);
    memcpy(obj, head, hl);
    memcpy(obj + hl, "xyz", 3);
    assert_true(sg_cache_obj_view(obj, hl + 3, &o));
    assert_span(o.body, o.m.body_len, "xyz");
    /* set again: the rest of the meta is untouched */
    sg_cache_obj_set_body_len(obj, 2);
    assert_true(sg_cache_obj_view(obj, hl + 2, &o));
    assert_int_equal(o.m.ttl_ms, 60000);
    assert_int_equal(o.m.status, 200);
    free(obj);
    free(head);
}

/* ---- corrupt objects ------------------------------------------------------ */

static struct sg_cache_meta meta_of(const char *obj) {
    struct sg_cache_meta m;
    memcpy(&m, obj, sizeof(m));
    return m;
}

/* A copy of obj (len bytes) with meta m, viewed in a buffer of exactly len bytes. */
static bool view_with(const char *obj, size_t len, const struct sg_cache_meta *m) {
    char *b = malloc(len);
    memcpy(b, obj, len);
    memcpy(b, m, sizeof(*m));
    struct sg_cache_obj o;
    bool ok = sg_cache_obj_view(b, len, &o);
    free(b);
    return ok;
}

static void test_view_corrupt(void **state) {
    (void)state;
    size_t len;
    char *obj = make_obj(full_resp, "hello", 5, &d_plain, &len, NULL);
    struct sg_cache_meta m0 = meta_of(obj), m;
    assert_true(view_with(obj, len, &m0));

    /* every truncation, in a buffer of exactly that size */
    for (size_t n = 0; n < len; n++) {
        char *b = malloc(n ? n : 1);
        memcpy(b, obj, n);
        struct sg_cache_obj o;
        if (sg_cache_obj_view(b, n, &o))
            fail_msg("truncated to %zu of %zu: accepted", n, len);
        free(b);
    }
    /* one byte too many */
    char *b = malloc(len + 1);
    memcpy(b, obj, len);
    b[len] = 'x';
    struct sg_cache_obj o;
    assert_false(sg_cache_obj_view(b, len + 1, &o));
    free(b);

    /* wrong magic */
    m = m0;
    m.magic = 0x53474330u;
    assert_false(view_with(obj, len, &m));
    m.magic = 0;
    assert_false(view_with(obj, len, &m));
    /* a status the status line cannot carry */
    m = m0;
    m.status = 99;
    assert_false(view_with(obj, len, &m));
    m.status = 1000;
    assert_false(view_with(obj, len, &m));
    m.status = 999;
    assert_true(view_with(obj, len, &m));
    /* lengths that do not add up */
    m = m0;
    m.reason_len++;
    assert_false(view_with(obj, len, &m));
    m = m0;
    m.fields_len--;
    assert_false(view_with(obj, len, &m));
    m = m0;
    m.vary_len++;
    assert_false(view_with(obj, len, &m));
    m = m0;
    m.body_len = 0;
    assert_false(view_with(obj, len, &m));
    m = m0;
    m.body_len = UINT64_MAX;
    assert_false(view_with(obj, len, &m));
    m = m0;
    m.reason_len = UINT32_MAX;
    assert_false(view_with(obj, len, &m));
    /* moved between parts, the total kept: still an object (nothing to see) */
    m = m0;
    m.reason_len++;
    m.fields_len--;
    m.etag_off = m.lm_off = 0;
    m.etag_len = m.lm_len = 0;
    assert_true(view_with(obj, len, &m));
    /* ETag and Last-Modified must lie inside the fields */
    m = m0;
    m.etag_off = m0.fields_len;
    m.etag_len = 1;
    assert_false(view_with(obj, len, &m));
    m = m0;
    m.etag_off = m0.fields_len;
    m.etag_len = 0;
    assert_true(view_with(obj, len, &m));
    m = m0;
    m.etag_off = UINT32_MAX;
    m.etag_len = 2;
    assert_false(view_with(obj, len, &m));
    m = m0;
    m.lm_len = m0.fields_len + 1;
    m.lm_off = 0;
    assert_false(view_with(obj, len, &m));
    m = m0;
    m.lm_off = UINT32_MAX;
    m.lm_len = UINT32_MAX;
    assert_false(view_with(obj, len, &m));
    free(obj);

    /* a vary section not NUL-terminated: the last vary byte moved into the body */
    obj = make_obj("HTTP/1.1 200 OK\r\nVary: abc\r\nContent-Length: 1\r\n\r\n", "b", 1, &d_plain,
                   &len, NULL);
    m0 = meta_of(obj);
    assert_int_equal(m0.vary_len, 4);
    m = m0;
    m.vary_len = 3;
    m.body_len = 2;
    assert_false(view_with(obj, len, &m));
    /* the same with the fields' last byte moved into vary */
    m = m0;
    m.fields_len--;
    m.vary_len++;
    assert_true(view_with(obj, len, &m)); /* "\nabc\0" ends with a NUL */
    m = m0;
    m.vary_len = 0;
    m.body_len += 4;
    assert_true(view_with(obj, len, &m)); /* no vary section at all */
    free(obj);
}

/* Regression: need + body_len is computed in uint64_t and wraps: a body_len of
 * (uint64_t)-k makes a reason/fields/vary k bytes longer than the data
 * "add up", so the view accepts lengths past the buffer (and reads
 * vary[vary_len - 1] out of bounds itself). */
static void test_view_corrupt_wrap(void **state) {
    (void)state;
    size_t len;
    char *obj =
        make_obj("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", NULL, 0, &d_plain, &len, NULL);
    struct sg_cache_meta m = meta_of(obj);
    m.reason_len += 1000;
    m.body_len = (uint64_t)0 - 1000;
    assert_false(view_with(obj, len, &m));
    m = meta_of(obj);
    m.vary_len = 16;
    m.body_len = (uint64_t)0 - 16;
    assert_false(view_with(obj, len, &m)); /* ASan: heap-buffer-overflow read in the view */
    free(obj);
}

/* Regression: sg_cache_decide looks for "*" in the first Vary field only, and
 * sg_cache_obj_head (documented to return -1 for Vary: *) never checks:
 * "Vary: Accept" + "Vary: *" is stored with a vary name "*", a request
 * field no request has, so the variant is served to every request. */
static void test_vary_star_later_field(void **state) {
    (void)state;
    struct sg_route_cache rc = rc_default();
    assert_refused(decide("", 200, "Vary: Accept\r\nVary: *\r\n", &rc), "Vary: *");
    struct parsed *p = malloc(sizeof(*p));
    struct sg_http_msg *resp =
        parse_resp(p, "HTTP/1.1 200 OK\r\nVary: *\r\nContent-Length: 0\r\n\r\n");
    char *head = NULL;
    size_t hl;
    int r = sg_cache_obj_head(resp, &d_plain, &head, &hl);
    free(p);
    free(head);
    assert_int_equal(r, -1);
}

/* ---- descriptors ---------------------------------------------------------- */

static void test_obj_desc(void **state) {
    (void)state;
    struct sg_cache_decision d = {.store = true, .ttl_ms = 42000, .swr_ms = 1000, .sie_ms = 2000};
    size_t len, hl;
    char *obj = make_obj(full_resp, "hello", 5, &d, &len, &hl);
    char *desc;
    size_t dlen;
    assert_int_equal(sg_cache_obj_desc(obj, hl, &desc, &dlen), 0);
    /* exact size, so ASan sees any read past it */
    char *dd = malloc(dlen);
    memcpy(dd, desc, dlen);
    free(desc);
    struct sg_cache_obj o;
    assert_true(sg_cache_obj_view(dd, dlen, &o));
    assert_int_equal(o.m.magic, SG_OBJ_MAGIC);
    assert_int_equal(o.m.flags, SG_OBJ_VARY_DESC);
    assert_int_equal(o.m.status, 200);
    assert_int_equal(o.m.reason_len, 0);
    assert_int_equal(o.m.fields_len, 0);
    assert_int_equal(o.m.body_len, 0);
    assert_int_equal(o.m.etag_len, 0);
    assert_int_equal(o.m.lm_len, 0);
    assert_int_equal(o.m.ttl_ms, 42000);
    static const char names[] = "accept-encoding\0x-lang\0origin\0";
    assert_int_equal(o.m.vary_len, sizeof(names) - 1);
    assert_memory_equal(o.vary, names, sizeof(names) - 1);
    assert_int_equal(dlen, sizeof(struct sg_cache_meta) + sizeof(names) - 1);
    /* the descriptor's vary names build the same secondary key */
    struct sg_cache_obj full;
    assert_true(sg_cache_obj_view(obj, len, &full));
    struct sg_http_msg *m = req_of("Origin: o\r\nAccept-Encoding: gzip\r\n");
    char k1[64] = "k", k2[64] = "k";
    int n1 = sg_cache_key_vary(k1, 1, sizeof(k1), o.vary, o.m.vary_len, m);
    int n2 = sg_cache_key_vary(k2, 1, sizeof(k2), full.vary, full.m.vary_len, m);
    assert_int_equal(n1, n2);
    assert_span(k1, (size_t)n1, "k\x01gzip\x01\x01o\x01");
    assert_memory_equal(k1, k2, (size_t)n1);
    free(dd);
    free(obj);

    /* no vary section: a descriptor of just the meta; the head only is read */
    obj = make_obj("HTTP/1.1 301 Moved\r\nLocation: /x\r\nContent-Length: 1\r\n\r\n", "z", 1, &d,
                   &len, &hl);
    assert_int_equal(sg_cache_obj_desc(obj, hl, &desc, &dlen), 0);
    assert_int_equal(dlen, sizeof(struct sg_cache_meta));
    assert_true(sg_cache_obj_view(desc, dlen, &o));
    assert_int_equal(o.m.status, 301);
    assert_int_equal(o.m.vary_len, 0);
    free(desc);
    /* too short for a meta */
    assert_int_equal(sg_cache_obj_desc(obj, sizeof(struct sg_cache_meta) - 1, &desc, &dlen), -1);
    free(obj);
}

/* ---- serving ------------------------------------------------------------ */

/* Serves o with s into a buffer of exactly serve_head_size bytes, checks
 * the result is want, and that every smaller cap is refused. */
static void serve_is(const struct sg_cache_obj *o, const struct sg_cache_serve *s,
                     const char *want) {
    size_t cap = sg_cache_serve_head_size(o, s), wl = strlen(want);
    assert_true(cap >= wl);
    char *b = malloc(cap);
    int n = sg_cache_serve_head(o, s, b, cap);
    if (n < 0)
        fail_msg("refused with cap %zu", cap);
    assert_span(b, (size_t)n, want);
    free(b);
    /* exactly its length fits; one byte less does not */
    b = malloc(wl);
    assert_int_equal(sg_cache_serve_head(o, s, b, wl), (int)wl);
    assert_memory_equal(b, want, wl);
    free(b);
    b = malloc(wl - 1);
    assert_int_equal(sg_cache_serve_head(o, s, b, wl - 1), -1);
    free(b);
}

static const char serve_resp[] = "HTTP/1.1 200 OK\r\n"
                                 "Content-Type: text/plain\r\n"
                                 "ETag: \"x\"\r\n"
                                 "Set-Cookie: no=1\r\n"
                                 "Content-Length: 5\r\n"
                                 "\r\n";

static void test_serve_200(void **state) {
    (void)state;
    size_t len;
    char *obj = make_obj(serve_resp, "hello", 5, &d_plain, &len, NULL);
    struct sg_cache_obj o;
    assert_true(sg_cache_obj_view(obj, len, &o));
    static const char extra[] = "RateLimit: limit=5, remaining=4\r\nRateLimit-Policy: 5;w=1\r\n";
    struct sg_cache_serve s = {.x_cache = "HIT",
                               .age_s = 12,
                               .keep_alive = true,
                               .extra = extra,
                               .extra_len = sizeof(extra) - 1};
    serve_is(&o, &s,
             "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nETag: \"x\"\r\nAge: 12\r\n"
             "X-Cache: HIT\r\nRateLimit: limit=5, remaining=4\r\nRateLimit-Policy: 5;w=1\r\n"
             "Via: 1.1 scalegate\r\nContent-Length: 5\r\n\r\n");
    /* no extra lines, another X-Cache, age 0 */
    s = (struct sg_cache_serve){.x_cache = "STALE", .age_s = 0, .keep_alive = true};
    serve_is(&o, &s,
             "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nETag: \"x\"\r\nAge: 0\r\n"
             "X-Cache: STALE\r\nVia: 1.1 scalegate\r\nContent-Length: 5\r\n\r\n");
    /* HEAD: the same head, Content-Length kept */
    s.head_only = true;
    serve_is(&o, &s,
             "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nETag: \"x\"\r\nAge: 0\r\n"
             "X-Cache: STALE\r\nVia: 1.1 scalegate\r\nContent-Length: 5\r\n\r\n");
    free(obj);
}

static void test_serve_connection(void **state) {
    (void)state;
    size_t len;
    char *obj =
        make_obj("HTTP/1.1 404 Nope\r\nContent-Length: 3\r\n\r\n", "abc", 3, &d_plain, &len, NULL);
    struct sg_cache_obj o;
    assert_true(sg_cache_obj_view(obj, len, &o));
    const char *base = "HTTP/1.1 404 Nope\r\nAge: 7\r\nX-Cache: HIT\r\nVia: 1.1 scalegate\r\n"
                       "Content-Length: 3\r\n";
    char want[512];
    struct sg_cache_serve s = {.x_cache = "HIT", .age_s = 7};
    /* close */
    snprintf(want, sizeof(want), "%sConnection: close\r\n\r\n", base);
    serve_is(&o, &s, want);
    s.client_http10 = true; /* close wins for HTTP/1.0 too */
    serve_is(&o, &s, want);
    /* keep-alive: nothing for HTTP/1.1, explicit for HTTP/1.0 */
    s.keep_alive = true;
    snprintf(want, sizeof(want), "%sConnection: keep-alive\r\n\r\n", base);
    serve_is(&o, &s, want);
    s.client_http10 = false;
    snprintf(want, sizeof(want), "%s\r\n", base);
    serve_is(&o, &s, want);
    free(obj);
}

static void test_serve_304(void **state) {
    (void)state;
    size_t len;
    char *obj = make_obj("HTTP/1.1 200 OK\r\n"
                         "Content-Type: text/html\r\n"
                         "Cache-Control: max-age=60\r\n"
                         "Content-Location: /index.html\r\n"
                         "Content-Language: en\r\n"
                         "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
                         "Dates: not this\r\n"
                         "ETag: \"v2\"\r\n"
                         "ETagged: no\r\n"
                         "Expires: Sun, 06 Nov 1994 08:50:37 GMT\r\n"
                         "X-Custom: 1\r\n"
                         "vary: Accept-Encoding\r\n"
                         "LAST-MODIFIED: Sat, 05 Nov 1994 08:49:37 GMT\r\n"
                         "Content-Encoding: gzip\r\n"
                         "Content-Length: 4\r\n"
                         "\r\n",
                         "body", 4, &d_plain, &len, NULL);
    struct sg_cache_obj o;
    assert_true(sg_cache_obj_view(obj, len, &o));
    struct sg_cache_serve s = {
        .x_cache = "HIT", .age_s = 3, .not_modified = true, .keep_alive = true};
    const char *want = "HTTP/1.1 304 Not Modified\r\n"
                       "Cache-Control: max-age=60\r\n"
                       "Content-Location: /index.html\r\n"
                       "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
                       "ETag: \"v2\"\r\n"
                       "Expires: Sun, 06 Nov 1994 08:50:37 GMT\r\n"
                       "vary: Accept-Encoding\r\n"
                       "LAST-MODIFIED: Sat, 05 Nov 1994 08:49:37 GMT\r\n"
                       "Age: 3\r\nX-Cache: HIT\r\nVia: 1.1 scalegate\r\n\r\n";
    serve_is(&o, &s, want);
    /* head_only does not change a 304 */
    s.head_only = true;
    serve_is(&o, &s, want);
    /* with extra lines and Connection: close */
    s.extra = "RateLimit: r\r\n";
    s.extra_len = 14;
    s.keep_alive = false;
    serve_is(&o, &s,
             "HTTP/1.1 304 Not Modified\r\n"
             "Cache-Control: max-age=60\r\n"
             "Content-Location: /index.html\r\n"
             "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
             "ETag: \"v2\"\r\n"
             "Expires: Sun, 06 Nov 1994 08:50:37 GMT\r\n"
             "vary: Accept-Encoding\r\n"
             "LAST-MODIFIED: Sat, 05 Nov 1994 08:49:37 GMT\r\n"
             "Age: 3\r\nX-Cache: HIT\r\nRateLimit: r\r\nVia: 1.1 scalegate\r\n"
             "Connection: close\r\n\r\n");
    free(obj);
}

static void test_serve_204_and_others(void **state) {
    (void)state;
    size_t len;
    struct sg_cache_obj o;
    struct sg_cache_serve s = {.x_cache = "HIT", .age_s = 1, .keep_alive = true};
    /* 204: no Content-Length */
    char *obj =
        make_obj("HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", NULL, 0, &d_plain, &len, NULL);
    assert_true(sg_cache_obj_view(obj, len, &o));
    serve_is(&o, &s,
             "HTTP/1.1 204 No Content\r\nX-A: 1\r\nAge: 1\r\nX-Cache: HIT\r\n"
             "Via: 1.1 scalegate\r\n\r\n");
    free(obj);
    /* 301 with an empty body: Content-Length: 0 */
    obj = make_obj("HTTP/1.1 301 Moved Permanently\r\nLocation: /n\r\nContent-Length: 0\r\n\r\n",
                   NULL, 0, &d_plain, &len, NULL);
    assert_true(sg_cache_obj_view(obj, len, &o));
    serve_is(&o, &s,
             "HTTP/1.1 301 Moved Permanently\r\nLocation: /n\r\nAge: 1\r\nX-Cache: HIT\r\n"
             "Via: 1.1 scalegate\r\nContent-Length: 0\r\n\r\n");
    free(obj);
    /* an empty reason phrase */
    obj = make_obj("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", NULL, 0, &d_plain, &len, NULL);
    assert_true(sg_cache_obj_view(obj, len, &o));
    serve_is(&o, &s,
             "HTTP/1.1 200 \r\nAge: 1\r\nX-Cache: HIT\r\nVia: 1.1 scalegate\r\n"
             "Content-Length: 0\r\n\r\n");
    free(obj);
}

static void test_serve_size_enough(void **state) {
    (void)state;
    size_t len;
    char *obj = make_obj(full_resp, "hello", 5, &d_plain, &len, NULL);
    struct sg_cache_obj o;
    assert_true(sg_cache_obj_view(obj, len, &o));
    o.m.body_len = UINT64_MAX; /* the longest numbers */
    static const char extra[] = "RateLimit: limit=100, remaining=99, reset=1\r\n";
    static const char *const xc[] = {"HIT", "STALE", "MISS"};
    for (int v = 0; v < 16; v++) {
        struct sg_cache_serve s = {.x_cache = xc[v % 3],
                                   .age_s = UINT64_MAX,
                                   .head_only = v & 1,
                                   .not_modified = v & 2,
                                   .keep_alive = v & 4,
                                   .client_http10 = v & 8,
                                   .extra = extra,
                                   .extra_len = sizeof(extra) - 1};
        size_t cap = sg_cache_serve_head_size(&o, &s);
        char *b = malloc(cap);
        int n = sg_cache_serve_head(&o, &s, b, cap);
        assert_true(n > 0 && (size_t)n <= cap);
        assert_non_null(memmem(b, (size_t)n, "Age: 18446744073709551615\r\n", 27));
        if (!(v & 2))
            assert_non_null(memmem(b, (size_t)n, "Content-Length: 18446744073709551615\r\n", 38));
        assert_memory_equal(b + n - 4, "\r\n\r\n", 4);
        /* and one byte short of the result is refused */
        assert_int_equal(sg_cache_serve_head(&o, &s, b, (size_t)n - 1), -1);
        free(b);
    }
    free(obj);
}

/* Caps far below the head's size are refused. Every put after the first
 * one that does not fit must write nothing: the buffer is bigger than the
 * cap, and the bytes past the cap must stay untouched. */
static void test_serve_cap_too_small(void **state) {
    (void)state;
    size_t len;
    char *obj = make_obj(serve_resp, "hello", 5, &d_plain, &len, NULL);
    struct sg_cache_obj o;
    assert_true(sg_cache_obj_view(obj, len, &o));
    struct sg_cache_serve s = {.x_cache = "HIT", .age_s = 12, .keep_alive = true};
    char b[512];
    int full = sg_cache_serve_head(&o, &s, b, sizeof(b));
    assert_true(full > 0);
    /* caps where only the final CRLF, or the last fields, do not fit */
    for (size_t cap = (size_t)full - 1; cap >= (size_t)full - 2; cap--)
        assert_int_equal(sg_cache_serve_head(&o, &s, b, cap), -1);
    /* Regression: after a put that does not fit, out.p is end + 1, so
     * (size_t)(end - p) is SIZE_MAX and the next put writes past the cap. */
    for (size_t cap = 0; cap < (size_t)full; cap++) {
        memset(b, '#', sizeof(b));
        assert_int_equal(sg_cache_serve_head(&o, &s, b, cap), -1);
        for (size_t i = cap; i < sizeof(b); i++)
            if (b[i] != '#')
                fail_msg("cap %zu: byte %zu written", cap, i);
    }
    free(obj);
}

/* ---- conditional requests ------------------------------------------------- */

static bool nm(const struct sg_cache_obj *o, const char *req_fields) {
    return sg_cache_not_modified(o, req_of(req_fields));
}

static void test_not_modified_etag(void **state) {
    (void)state;
    size_t len;
    char *obj =
        make_obj("HTTP/1.1 200 OK\r\nETag: \"abc\"\r\n"
                 "Last-Modified: Sat, 05 Nov 1994 08:49:37 GMT\r\nContent-Length: 1\r\n\r\n",
                 "x", 1, &d_plain, &len, NULL);
    struct sg_cache_obj o;
    assert_true(sg_cache_obj_view(obj, len, &o));
    assert_false(nm(&o, ""));
    assert_true(nm(&o, "If-None-Match: \"abc\"\r\n"));
    assert_true(nm(&o, "if-none-match: \"abc\"\r\n"));
    assert_false(nm(&o, "If-None-Match: \"xyz\"\r\n"));
    assert_false(nm(&o, "If-None-Match: \"ab\"\r\n"));
    assert_false(nm(&o, "If-None-Match: \"abcd\"\r\n"));
    assert_false(nm(&o, "If-None-Match: \"ABC\"\r\n"));
    assert_false(nm(&o, "If-None-Match: abc\r\n")); /* not an entity-tag */
    assert_false(nm(&o, "If-None-Match: \"\"\r\n"));
    /* lists */
    assert_true(nm(&o, "If-None-Match: \"xyz\", \"abc\"\r\n"));
    assert_true(nm(&o, "If-None-Match: \"xyz\",\"abc\",\"q\"\r\n"));
    assert_true(nm(&o, "If-None-Match: , ,\"abc\" ,\r\n"));
    assert_false(nm(&o, "If-None-Match: \"x\", \"y\", \"z\"\r\n"));
    assert_true(nm(&o, "If-None-Match: \"a,b\", \"abc\"\r\n")); /* a comma inside a tag */
    assert_false(nm(&o, "If-None-Match: \"a, \"abc\r\n"));
    assert_false(nm(&o, "If-None-Match: \"xyz\", \"abc\r\n")); /* unterminated */
    assert_true(nm(&o, "If-None-Match: junk, \"abc\"\r\n"));
    /* weak comparison: W/ on either side is ignored */
    assert_true(nm(&o, "If-None-Match: W/\"abc\"\r\n"));
    assert_true(nm(&o, "If-None-Match: \"q\", W/\"abc\"\r\n"));
    assert_false(nm(&o, "If-None-Match: W/\"abd\"\r\n"));
    /* "*" matches any current representation */
    assert_true(nm(&o, "If-None-Match: *\r\n"));
    assert_true(nm(&o, "If-None-Match: \"xyz\", *\r\n"));
    /* If-None-Match present: If-Modified-Since is ignored, even when it would match */
    assert_false(nm(&o, "If-None-Match: \"xyz\"\r\n"
                        "If-Modified-Since: Sat, 05 Nov 1994 08:49:37 GMT\r\n"));
    assert_false(nm(&o, "If-Modified-Since: Sat, 05 Nov 1994 08:49:37 GMT\r\n"
                        "If-None-Match: \"xyz\"\r\n"));
    assert_true(nm(&o, "If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n"
                       "If-None-Match: \"abc\"\r\n"));
    free(obj);

    /* a weak ETag stored */
    obj = make_obj("HTTP/1.1 200 OK\r\nETag: W/\"abc\"\r\nContent-Length: 0\r\n\r\n", NULL, 0,
                   &d_plain, &len, NULL);
    assert_true(sg_cache_obj_view(obj, len, &o));
    assert_true(nm(&o, "If-None-Match: \"abc\"\r\n"));
    assert_true(nm(&o, "If-None-Match: W/\"abc\"\r\n"));
    assert_false(nm(&o, "If-None-Match: \"W/abc\"\r\n"));
    free(obj);

    /* no ETag stored: only "*" matches */
    obj = make_obj("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", NULL, 0, &d_plain, &len, NULL);
    assert_true(sg_cache_obj_view(obj, len, &o));
    assert_false(nm(&o, "If-None-Match: \"abc\"\r\n"));
    assert_false(nm(&o, "If-None-Match: \"\"\r\n"));
    assert_true(nm(&o, "If-None-Match: *\r\n"));
    free(obj);
}

static void test_not_modified_non_200(void **state) {
    (void)state;
    static const int statuses[] = {203, 204, 301, 404, 410};
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
        char s[256];
        snprintf(s, sizeof(s),
                 "HTTP/1.1 %d X\r\nETag: \"abc\"\r\nLast-Modified: Sat, 05 Nov 1994 08:49:37 "
                 "GMT\r\n\r\n",
                 statuses[i]);
        size_t len;
        char *obj = make_obj(s, NULL, 0, &d_plain, &len, NULL);
        struct sg_cache_obj o;
        assert_true(sg_cache_obj_view(obj, len, &o));
        assert_false(nm(&o, "If-None-Match: \"abc\"\r\n"));
        assert_false(nm(&o, "If-None-Match: *\r\n"));
        assert_false(nm(&o, "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n"));
        free(obj);
    }
}

static void test_not_modified_since(void **state) {
    (void)state;
    size_t len;
    char *obj =
        make_obj("HTTP/1.1 200 OK\r\nETag: \"abc\"\r\n"
                 "Last-Modified: Sat, 05 Nov 1994 08:49:37 GMT\r\nContent-Length: 0\r\n\r\n",
                 NULL, 0, &d_plain, &len, NULL);
    struct sg_cache_obj o;
    assert_true(sg_cache_obj_view(obj, len, &o));
    /* equal, later: not modified; earlier: modified */
    assert_true(nm(&o, "If-Modified-Since: Sat, 05 Nov 1994 08:49:37 GMT\r\n"));
    assert_true(nm(&o, "If-Modified-Since: Sat, 05 Nov 1994 08:49:38 GMT\r\n"));
    assert_true(nm(&o, "if-modified-since: Sun, 06 Nov 1994 08:49:37 GMT\r\n"));
    assert_false(nm(&o, "If-Modified-Since: Sat, 05 Nov 1994 08:49:36 GMT\r\n"));
    assert_false(nm(&o, "If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n"));
    /* bad dates: no 304 */
    assert_false(nm(&o, "If-Modified-Since: yesterday\r\n"));
    assert_false(nm(&o, "If-Modified-Since: Sunday, 06-Nov-94 08:49:37 GMT\r\n"));
    assert_false(nm(&o, "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 UTC\r\n"));
    assert_false(nm(&o, "If-Modified-Since:\r\n"));
    free(obj);

    /* no Last-Modified stored: If-Modified-Since never matches */
    obj = make_obj("HTTP/1.1 200 OK\r\nDate: Sat, 05 Nov 1994 08:49:37 GMT\r\n"
                   "Content-Length: 0\r\n\r\n",
                   NULL, 0, &d_plain, &len, NULL);
    assert_true(sg_cache_obj_view(obj, len, &o));
    assert_false(nm(&o, "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n"));
    free(obj);

    /* a stored Last-Modified that is not a date never matches */
    obj = make_obj("HTTP/1.1 200 OK\r\nLast-Modified: long ago\r\nContent-Length: 0\r\n\r\n", NULL,
                   0, &d_plain, &len, NULL);
    assert_true(sg_cache_obj_view(obj, len, &o));
    assert_false(nm(&o, "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n"));
    free(obj);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cc_init),
        cmocka_unit_test(test_cc_directives),
        cmocka_unit_test(test_cc_case_insensitive),
        cmocka_unit_test(test_cc_numbers),
        cmocka_unit_test(test_cc_max_stale),
        cmocka_unit_test(test_cc_of_fields),
        cmocka_unit_test(test_date_valid),
        cmocka_unit_test(test_date_invalid),
        cmocka_unit_test(test_key_basic),
        cmocka_unit_test(test_key_route_vary),
        cmocka_unit_test(test_key_too_long),
        cmocka_unit_test(test_key_vary),
        cmocka_unit_test(test_decide_statuses),
        cmocka_unit_test(test_decide_redirects),
        cmocka_unit_test(test_decide_cache_control),
        cmocka_unit_test(test_decide_set_cookie),
        cmocka_unit_test(test_decide_authorization),
        cmocka_unit_test(test_decide_vary_star),
        cmocka_unit_test(test_decide_freshness_order),
        cmocka_unit_test(test_decide_age),
        cmocka_unit_test(test_decide_stale_windows),
        cmocka_unit_test(test_obj_round_trip),
        cmocka_unit_test(test_obj_dropped_fields),
        cmocka_unit_test(test_obj_strip_fields),
        cmocka_unit_test(test_obj_etag_lm_offsets),
        cmocka_unit_test(test_obj_vary_names),
        cmocka_unit_test(test_obj_set_body_len),
        cmocka_unit_test(test_view_corrupt),
        cmocka_unit_test(test_view_corrupt_wrap),
        cmocka_unit_test(test_vary_star_later_field),
        cmocka_unit_test(test_obj_desc),
        cmocka_unit_test(test_serve_200),
        cmocka_unit_test(test_serve_connection),
        cmocka_unit_test(test_serve_304),
        cmocka_unit_test(test_serve_204_and_others),
        cmocka_unit_test(test_serve_size_enough),
        cmocka_unit_test(test_serve_cap_too_small),
        cmocka_unit_test(test_not_modified_etag),
        cmocka_unit_test(test_not_modified_non_200),
        cmocka_unit_test(test_not_modified_since),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
