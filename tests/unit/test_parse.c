/*
 * Tables of good and bad config values for src/core/parse.c: durations,
 * sizes and socket addresses, plus the string interning of src/core/intern.c.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/intern.h"
#include "core/parse.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define N(a) (sizeof(a) / sizeof((a)[0]))

struct num_case {
    const char *in;
    uint64_t want;
};

static void test_duration_good(void **state) {
    (void)state;
    static const struct num_case cases[] = {
        {"0", 0},
        {"1", 1000},
        {"10", 10000},
        {"250ms", 250},
        {"0ms", 0},
        {"10s", 10000},
        {"5m", 300000},
        {"1h", 3600000},
        {"2d", 172800000},
        {"10S", 10000},
        {"250MS", 250},
        {"007s", 7000},
        {"18446744073709551615ms", UINT64_MAX},
        {"18446744073709551s", 18446744073709551000ull},
    };
    for (size_t i = 0; i < N(cases); i++) {
        uint64_t v = 12345;
        int r = sg_parse_duration_ms(cases[i].in, &v);
        if (r != 0 || v != cases[i].want)
            print_error("duration %s: r=%d v=%llu\n", cases[i].in, r, (unsigned long long)v);
        assert_int_equal(r, 0);
        assert_int_equal(v, cases[i].want);
    }
}

static void test_duration_bad(void **state) {
    (void)state;
    static const char *const cases[] = {
        "",
        "s",
        "ms",
        "-1",
        "-1s",
        "+1s",
        " 1s",
        "1s ",
        "1 s",
        "1.5s",
        "1e3",
        "10x",
        "10sec",
        "10mss",
        "1h30m",
        "0x10",
        "18446744073709551616",            /* > UINT64_MAX before the unit */
        "18446744073709552s",              /* overflows once multiplied */
        "213503982334602d",                /* overflows in ms */
        "99999999999999999999999999999ms", /* digits overflow */
    };
    for (size_t i = 0; i < N(cases); i++) {
        uint64_t v = 777;
        int r = sg_parse_duration_ms(cases[i], &v);
        if (r != -EINVAL)
            print_error("duration \"%s\" accepted: %llu\n", cases[i], (unsigned long long)v);
        assert_int_equal(r, -EINVAL);
        assert_int_equal(v, 777); /* untouched on error */
    }
    assert_int_equal(sg_parse_duration_ms(NULL, &(uint64_t){0}), -EINVAL);
}

static void test_size_good(void **state) {
    (void)state;
    static const struct num_case cases[] = {
        {"0", 0},
        {"512", 512},
        {"512b", 512},
        {"512B", 512},
        {"16k", 16384},
        {"16K", 16384},
        {"16kb", 16384},
        {"16KB", 16384},
        {"16KiB", 16384},
        {"16kib", 16384},
        {"100MB", 100ull << 20},
        {"10m", 10ull << 20},
        {"10MiB", 10ull << 20},
        {"1g", 1ull << 30},
        {"1GB", 1ull << 30},
        {"2GiB", 2ull << 30},
        {"1t", 1ull << 40},
        {"18446744073709551615", UINT64_MAX},
        {"16777215t", 16777215ull << 40},
    };
    for (size_t i = 0; i < N(cases); i++) {
        uint64_t v = 12345;
        int r = sg_parse_size(cases[i].in, &v);
        if (r != 0 || v != cases[i].want)
            print_error("size %s: r=%d v=%llu\n", cases[i].in, r, (unsigned long long)v);
        assert_int_equal(r, 0);
        assert_int_equal(v, cases[i].want);
    }
}

static void test_size_bad(void **state) {
    (void)state;
    static const char *const cases[] = {
        "",
        "k",
        "KB",
        "-1",
        "-1k",
        "+1k",
        " 1k",
        "1k ",
        "1 k",
        "1.5k",
        "10XB",
        "10kk",
        "10kbb",
        "10ib",
        "1e3",
        "0x10",
        "16 KB",
        "16mibs",
        "abc",
        "1KiBx",
        "1p",
        "1kB/s",
        "1,000",
        "18446744073709551616", /* > UINT64_MAX */
        "16777216t",            /* 2^64 */
        "17179869184g",         /* 2^64 */
    };
    for (size_t i = 0; i < N(cases); i++) {
        uint64_t v = 777;
        int r = sg_parse_size(cases[i], &v);
        if (r != -EINVAL)
            print_error("size \"%s\" accepted: %llu\n", cases[i], (unsigned long long)v);
        assert_int_equal(r, -EINVAL);
        assert_int_equal(v, 777);
    }
    assert_int_equal(sg_parse_size(NULL, &(uint64_t){0}), -EINVAL);
}

struct addr_case {
    const char *in;
    int family;
    const char *ip; /* as inet_ntop writes it */
    unsigned port;
};

static void test_addr_good(void **state) {
    (void)state;
    static const struct addr_case cases[] = {
        {"127.0.0.1:8080", AF_INET, "127.0.0.1", 8080},
        {"0.0.0.0:1", AF_INET, "0.0.0.0", 1},
        {"10.1.2.3:65535", AF_INET, "10.1.2.3", 65535},
        {":8080", AF_INET, "0.0.0.0", 8080},
        {"8080", AF_INET, "0.0.0.0", 8080},
        {"*:80", AF_INET, "0.0.0.0", 80},
        {"localhost:9001", AF_INET, "127.0.0.1", 9001},
        {"LocalHost:9001", AF_INET, "127.0.0.1", 9001},
        {"[::1]:8080", AF_INET6, "::1", 8080},
        {"[::]:443", AF_INET6, "::", 443},
        {"[2001:db8::42]:9000", AF_INET6, "2001:db8::42", 9000},
        {"[::ffff:10.0.0.1]:80", AF_INET6, "::ffff:10.0.0.1", 80},
        {"127.0.0.1:00080", AF_INET, "127.0.0.1", 80},
    };
    for (size_t i = 0; i < N(cases); i++) {
        struct sockaddr_storage ss;
        socklen_t len = 0;
        char ip[INET6_ADDRSTRLEN];
        unsigned port;
        int r = sg_parse_addr(cases[i].in, &ss, &len);
        if (r != 0)
            print_error("addr %s rejected\n", cases[i].in);
        assert_int_equal(r, 0);
        assert_int_equal(ss.ss_family, cases[i].family);
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            assert_int_equal(len, sizeof(*a));
            inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
            port = ntohs(a->sin_port);
        } else {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            assert_int_equal(len, sizeof(*a));
            inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
            port = ntohs(a->sin6_port);
        }
        assert_string_equal(ip, cases[i].ip);
        assert_int_equal(port, cases[i].port);
    }
}

static void test_addr_bad(void **state) {
    (void)state;
    static const char *const cases[] = {
        "",
        ":",
        "abc",
        "abc:80",
        "example.com:80", /* numeric hosts only */
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:0",
        ":0",
        "0",
        "127.0.0.1:65536",
        "127.0.0.1:100000",
        "127.0.0.1:-1",
        "127.0.0.1:+80",
        "127.0.0.1:80x",
        "127.0.0.1: 80",
        " 127.0.0.1:80",
        "127.0.0.1 :80",
        "127.0.0.256:80",
        "127.0.0:80",
        "1.2.3.4.5:80",
        "::1:80",
        "::1",
        "[::1]",
        "[::1]80",
        "[::1]:",
        "[::1]:0",
        "[]:80",
        "[::1:80",
        "::1]:80",
        "[127.0.0.1]:80",
        "[::g]:80",
        "[fe80::1%eth0]:80",
        "[::1]:80:80",
        "localhost",
        "http://127.0.0.1:80",
        "[0000:0000:0000:0000:0000:0000:0000:0000:0000]:80",
    };
    for (size_t i = 0; i < N(cases); i++) {
        struct sockaddr_storage ss;
        memset(&ss, 0xab, sizeof(ss));
        socklen_t len = 99;
        int r = sg_parse_addr(cases[i], &ss, &len);
        if (r != -EINVAL)
            print_error("addr \"%s\" accepted\n", cases[i]);
        assert_int_equal(r, -EINVAL);
        assert_int_equal(len, 99);
        assert_int_equal(((unsigned char *)&ss)[0], 0xab);
    }
}

static void test_intern(void **state) {
    (void)state;
    uint32_t base = sg_intern_count();
    uint32_t a = sg_intern("test_parse:a");
    uint32_t b = sg_intern("test_parse:b");
    assert_int_equal(a, base);
    assert_int_equal(b, base + 1);
    assert_int_equal(sg_intern("test_parse:a"), a);
    assert_int_equal(sg_intern("test_parse:b"), b);
    assert_int_equal(sg_intern_count(), base + 2);

    /* grow well past the initial table sizes; ids stay dense and stable */
    char buf[64];
    for (int i = 0; i < 5000; i++) {
        snprintf(buf, sizeof(buf), "test_parse:%d", i);
        assert_int_equal(sg_intern(buf), base + 2 + (uint32_t)i);
    }
    for (int i = 0; i < 5000; i++) {
        snprintf(buf, sizeof(buf), "test_parse:%d", i);
        assert_int_equal(sg_intern(buf), base + 2 + (uint32_t)i);
    }
    assert_int_equal(sg_intern("test_parse:a"), a);
    assert_int_equal(sg_intern_count(), base + 5002);
}

static void *intern_thread(void *arg) {
    uint32_t *ids = arg;
    char buf[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(buf, sizeof(buf), "thr:%d", i);
        ids[i] = sg_intern(buf);
    }
    return NULL;
}

static void test_intern_threads(void **state) {
    (void)state;
    static uint32_t ids[4][1000];
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, intern_thread, ids[i]), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < 1000; i++) {
        char buf[32];
        snprintf(buf, sizeof(buf), "thr:%d", i);
        uint32_t id = sg_intern(buf);
        for (int j = 0; j < 4; j++)
            assert_int_equal(ids[j][i], id);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_duration_good), cmocka_unit_test(test_duration_bad),
        cmocka_unit_test(test_size_good),     cmocka_unit_test(test_size_bad),
        cmocka_unit_test(test_addr_good),     cmocka_unit_test(test_addr_bad),
        cmocka_unit_test(test_intern),        cmocka_unit_test(test_intern_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
