/*
 * Value parsers for the config file: durations, sizes and socket addresses.
 * They are strict on purpose: a typo in a config value must be an error with
 * a line number, not a silently different limit. Pure functions, no
 * allocation; the config loader (src/config/) is their main user.
 */
#include "core/parse.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <strings.h>

/*
 * Reads the leading decimal digits of s into *out. Returns the number of
 * digits read (0 when s does not start with a digit), or -1 on overflow.
 */
static int parse_digits(const char *s, uint64_t *out) {
    uint64_t v = 0;
    int n = 0;
    while (s[n] >= '0' && s[n] <= '9') {
        uint64_t d = (uint64_t)(s[n] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
        n++;
    }
    *out = v;
    return n;
}

static int mul_checked(uint64_t a, uint64_t b, uint64_t *out) {
    if (a != 0 && b > UINT64_MAX / a)
        return -EINVAL;
    *out = a * b;
    return 0;
}

struct unit {
    const char *name;
    uint64_t mult;
};

/* Units are compared case-insensitively; "" is the bare number. */
static const struct unit duration_units[] = {
    {"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60 * 1000}, {"h", 3600 * 1000}, {"d", 86400 * 1000},
};

static const struct unit size_units[] = {
    {"", 1},
    {"b", 1},
    {"k", 1ull << 10},
    {"kb", 1ull << 10},
    {"kib", 1ull << 10},
    {"m", 1ull << 20},
    {"mb", 1ull << 20},
    {"mib", 1ull << 20},
    {"g", 1ull << 30},
    {"gb", 1ull << 30},
    {"gib", 1ull << 30},
    {"t", 1ull << 40},
    {"tb", 1ull << 40},
    {"tib", 1ull << 40},
};

static int parse_with_units(const char *s, const struct unit *units, size_t nunits, uint64_t *out) {
    uint64_t v;
    if (s == NULL)
        return -EINVAL;
    int n = parse_digits(s, &v);
    if (n <= 0)
        return -EINVAL; /* empty, sign, garbage or overflow */
    for (size_t i = 0; i < nunits; i++) {
        if (strcasecmp(s + n, units[i].name) == 0) {
            uint64_t r;
            if (mul_checked(v, units[i].mult, &r) < 0)
                return -EINVAL;
            *out = r;
            return 0;
        }
    }
    return -EINVAL;
}

int sg_parse_duration_ms(const char *s, uint64_t *out) {
    return parse_with_units(s, duration_units, sizeof(duration_units) / sizeof(duration_units[0]),
                            out);
}

int sg_parse_size(const char *s, uint64_t *out) {
    return parse_with_units(s, size_units, sizeof(size_units) / sizeof(size_units[0]), out);
}

/* A port is 1 to 5 digits, value 1..65535. */
static int parse_port(const char *s, uint16_t *out) {
    uint64_t v;
    int n = parse_digits(s, &v);
    if (n <= 0 || n > 5 || s[n] != '\0' || v == 0 || v > 65535)
        return -EINVAL;
    *out = (uint16_t)v;
    return 0;
}

int sg_parse_addr(const char *s, struct sockaddr_storage *out, socklen_t *outlen) {
    char host[INET6_ADDRSTRLEN + 1];
    const char *port;
    bool v6 = false;
    uint16_t p;

    if (s == NULL)
        return -EINVAL;
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (end == NULL || end[1] != ':')
            return -EINVAL;
        size_t hl = (size_t)(end - s - 1);
        if (hl == 0 || hl >= sizeof(host))
            return -EINVAL;
        memcpy(host, s + 1, hl);
        host[hl] = '\0';
        port = end + 2;
        v6 = true;
    } else {
        const char *colon = strrchr(s, ':');
        if (colon == NULL) {
            host[0] = '\0'; /* "8080" */
            port = s;
        } else {
            size_t hl = (size_t)(colon - s);
            if (hl >= sizeof(host) || memchr(s, ':', hl) != NULL)
                return -EINVAL; /* unbracketed IPv6 or garbage */
            memcpy(host, s, hl);
            host[hl] = '\0';
            port = colon + 1;
        }
    }
    if (parse_port(port, &p) < 0)
        return -EINVAL;

    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (v6) {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(p);
        if (inet_pton(AF_INET6, host, &a6->sin6_addr) != 1)
            return -EINVAL;
        *outlen = sizeof(*a6);
    } else {
        struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
        a4->sin_family = AF_INET;
        a4->sin_port = htons(p);
        if (host[0] == '\0' || strcmp(host, "*") == 0)
            a4->sin_addr.s_addr = htonl(INADDR_ANY);
        else if (strcasecmp(host, "localhost") == 0)
            a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        else if (inet_pton(AF_INET, host, &a4->sin_addr) != 1)
            return -EINVAL;
        *outlen = sizeof(*a4);
    }
    *out = ss;
    return 0;
}
