/*
 * HTTP/1.1 head parser (RFC 9112 / RFC 9110): request and response heads,
 * strict, incremental and zero-copy. See http.h for the contract.
 *
 * A call first looks for the end of the head, resuming where the previous
 * call stopped (the *scanned cursor, picohttpparser's last_len idea) and
 * enforcing the size limits on the way, so a partial head is never scanned
 * twice and an oversized one is refused before it completes. Only once the
 * whole head is present is it parsed, in one pass: start line, then each
 * field line with its id, and the framing semantics (Content-Length,
 * Transfer-Encoding, Host, Connection) checked as the fields go by.
 *
 * The chunked body walker, at the end, is a resumable byte-state machine
 * that skips chunk data in O(1) and validates the framing around it.
 */
#include "http/http.h"

#include <string.h>

/* Character classes, computed at compile time from the RFC grammar. */
#define IS_DIGIT(c) ((c) >= '0' && (c) <= '9')
#define IS_ALPHA(c) (((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z'))
#define IS_HEXL(c)  (IS_DIGIT(c) || ((c) >= 'a' && (c) <= 'f') || ((c) >= 'A' && (c) <= 'F'))
/* tchar (RFC 9110 5.6.2) */
#define IS_TCHAR(c)                                                                                \
    (IS_DIGIT(c) || IS_ALPHA(c) || (c) == '!' || (c) == '#' || (c) == '$' || (c) == '%' ||         \
     (c) == '&' || (c) == '\'' || (c) == '*' || (c) == '+' || (c) == '-' || (c) == '.' ||          \
     (c) == '^' || (c) == '_' || (c) == '`' || (c) == '|' || (c) == '~')
/* field-vchar, SP and HTAB (RFC 9110 5.5): everything but CTLs other than HTAB */
#define IS_FVAL(c) ((c) == '\t' || ((c) >= 0x20 && (c) != 0x7f))
/* visible ASCII: request-target characters */
#define IS_VCHAR(c) ((c) > 0x20 && (c) < 0x7f)
/* reg-name / IPv4 characters of a host (RFC 3986: unreserved, pct-encoded, sub-delims) */
#define IS_HOSTC(c)                                                                                \
    (IS_DIGIT(c) || IS_ALPHA(c) || (c) == '-' || (c) == '.' || (c) == '_' || (c) == '~' ||         \
     (c) == '%' || (c) == '!' || (c) == '$' || (c) == '&' || (c) == '\'' || (c) == '(' ||          \
     (c) == ')' || (c) == '*' || (c) == '+' || (c) == ',' || (c) == ';' || (c) == '=')

#define CLS(c)                                                                                     \
    ((IS_TCHAR(c) ? CL_TCHAR : 0) | (IS_FVAL(c) ? CL_FVAL : 0) | (IS_VCHAR(c) ? CL_VCHAR : 0) |    \
     (IS_HOSTC(c) ? CL_HOST : 0) | (IS_HEXL(c) ? CL_HEX : 0))
#define CLS4(b)  CLS(b), CLS(b + 1), CLS(b + 2), CLS(b + 3)
#define CLS16(b) CLS4(b), CLS4(b + 4), CLS4(b + 8), CLS4(b + 12)
#define CLS64(b) CLS16(b), CLS16(b + 16), CLS16(b + 32), CLS16(b + 48)

enum { CL_TCHAR = 1, CL_FVAL = 2, CL_VCHAR = 4, CL_HOST = 8, CL_HEX = 16 };
static const uint8_t cls[256] = {CLS64(0), CLS64(64), CLS64(128), CLS64(192)};

#define CL(c) cls[(unsigned char)(c)]

/*
 * The cursor *scanned packs the offset where the search for the end of the
 * head resumes (low 22 bits) and the number of lines already seen (high 10
 * bits, saturating), so it fits the uint32_t a connection keeps. Heads are
 * therefore capped at 4 MiB whatever the limits say.
 */
#define SCAN_POS_BITS  22
#define SCAN_POS_MASK  ((1u << SCAN_POS_BITS) - 1)
#define SCAN_LINES_MAX ((1u << (32 - SCAN_POS_BITS)) - 1)
#define HEAD_CAP       (SCAN_POS_MASK - 64)
#define MAX_EMPTY      8 /* empty lines skipped before a request line */
/* Connection options other than close/keep-alive/upgrade; each costs a pass
 * over the fields, so a head full of them must not cost seconds. */
#define MAX_CONN_OPTIONS 32

/* SWAR tests on 8 bytes at a time: nonzero when some byte of x is below n
 * (n <= 128), or equal to n. Exact as yes/no answers. */
#define ONES  0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

static inline uint64_t has_less(uint64_t x, uint64_t n) {
    return (x - ONES * n) & ~x & HIGHS;
}

static inline uint64_t has_byte(uint64_t x, uint64_t n) {
    return has_less(x ^ (ONES * n), 1);
}

/* First byte at or after p (before end) that is not a field value byte. */
static const char *skip_fval(const char *p, const char *end) {
    uint64_t x;
    while (end - p >= 8) {
        memcpy(&x, p, 8);
        if (has_less(x, 0x20) | has_byte(x, 0x7f))
            break;
        p += 8;
    }
    while (p < end && (CL(*p) & CL_FVAL))
        p++;
    return p;
}

/* First byte at or after p (before end) that is not visible ASCII. */
static const char *skip_vchar(const char *p, const char *end) {
    uint64_t x;
    while (end - p >= 8) {
        memcpy(&x, p, 8);
        if (has_less(x, 0x21) | has_byte(x, 0x7f) | (x & HIGHS))
            break;
        p += 8;
    }
    while (p < end && (CL(*p) & CL_VCHAR))
        p++;
    return p;
}

/* Compares n bytes of s, already known to be token or field value bytes,
 * with a literal in lower case letters, digits and '-'. For such inputs
 * OR-ing 0x20 folds the case and never makes a false match. */
static bool lit_eq(const char *s, size_t n, const char *lit, size_t litlen) {
    if (n != litlen)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((s[i] | 0x20) != lit[i])
            return false;
    return true;
}
#define LIT_EQ(s, n, lit) lit_eq(s, n, lit, sizeof(lit) - 1)

static int fail(struct sg_http_msg *msg, uint16_t status, const char *why) {
    msg->error_status = status;
    msg->error = why;
    return SG_HTTP_ERROR;
}

bool sg_http_name_eq(const struct sg_http_header *h, const char *name, size_t len) {
    if (h->name_len != len)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char a = (unsigned char)h->name[i], b = (unsigned char)name[i];
        if (a >= 'A' && a <= 'Z')
            a |= 0x20;
        if (b >= 'A' && b <= 'Z')
            b |= 0x20;
        if (a != b)
            return false;
    }
    return true;
}

static const char *const method_names[SG_METHOD_COUNT] = {
    [SG_METHOD_GET] = "GET",         [SG_METHOD_HEAD] = "HEAD",     [SG_METHOD_POST] = "POST",
    [SG_METHOD_PUT] = "PUT",         [SG_METHOD_DELETE] = "DELETE", [SG_METHOD_CONNECT] = "CONNECT",
    [SG_METHOD_OPTIONS] = "OPTIONS", [SG_METHOD_TRACE] = "TRACE",   [SG_METHOD_PATCH] = "PATCH",
};

enum sg_http_method sg_http_method_id(const char *s, size_t len) {
    /* methods are case-sensitive (RFC 9110 9.1) */
#define M(id) (memcmp(s, method_names[id], len) == 0 ? (id) : SG_METHOD_OTHER)
    switch (len) {
    case 3:
        return s[0] == 'G' ? M(SG_METHOD_GET) : M(SG_METHOD_PUT);
    case 4:
        return s[0] == 'H' ? M(SG_METHOD_HEAD) : M(SG_METHOD_POST);
    case 5:
        return s[0] == 'T' ? M(SG_METHOD_TRACE) : M(SG_METHOD_PATCH);
    case 6:
        return M(SG_METHOD_DELETE);
    case 7:
        return s[0] == 'C' ? M(SG_METHOD_CONNECT) : M(SG_METHOD_OPTIONS);
    default:
        return SG_METHOD_OTHER;
    }
#undef M
}

const char *sg_http_method_name(enum sg_http_method m) {
    return (unsigned)m < SG_METHOD_COUNT ? method_names[m] : NULL;
}

const char *sg_http_reason(int status) {
    /* clang-format off */
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
    /* clang-format on */
}

/* The id of a field name (already validated as a token). */
static uint8_t header_id(const char *n, size_t len) {
    switch (len) {
    case 2:
        return LIT_EQ(n, len, "te") ? SG_HDR_TE : SG_HDR_OTHER;
    case 3:
        return LIT_EQ(n, len, "via") ? SG_HDR_VIA : SG_HDR_OTHER;
    case 4:
        return LIT_EQ(n, len, "host") ? SG_HDR_HOST : SG_HDR_OTHER;
    case 6:
        return LIT_EQ(n, len, "expect") ? SG_HDR_EXPECT : SG_HDR_OTHER;
    case 7:
        if (LIT_EQ(n, len, "upgrade"))
            return SG_HDR_UPGRADE;
        return LIT_EQ(n, len, "trailer") ? SG_HDR_TRAILER : SG_HDR_OTHER;
    case 10:
        if (LIT_EQ(n, len, "connection"))
            return SG_HDR_CONNECTION;
        return LIT_EQ(n, len, "keep-alive") ? SG_HDR_KEEP_ALIVE : SG_HDR_OTHER;
    case 12:
        return LIT_EQ(n, len, "x-request-id") ? SG_HDR_X_REQUEST_ID : SG_HDR_OTHER;
    case 14:
        return LIT_EQ(n, len, "content-length") ? SG_HDR_CONTENT_LENGTH : SG_HDR_OTHER;
    case 15:
        return LIT_EQ(n, len, "x-forwarded-for") ? SG_HDR_X_FORWARDED_FOR : SG_HDR_OTHER;
    case 16:
        return LIT_EQ(n, len, "proxy-connection") ? SG_HDR_PROXY_CONNECTION : SG_HDR_OTHER;
    case 17:
        if (LIT_EQ(n, len, "transfer-encoding"))
            return SG_HDR_TRANSFER_ENCODING;
        return LIT_EQ(n, len, "x-forwarded-proto") ? SG_HDR_X_FORWARDED_PROTO : SG_HDR_OTHER;
    default:
        return SG_HDR_OTHER;
    }
}

#define HOP_IDS                                                                                    \
    (1u << SG_HDR_CONNECTION | 1u << SG_HDR_KEEP_ALIVE | 1u << SG_HDR_PROXY_CONNECTION |           \
     1u << SG_HDR_TE | 1u << SG_HDR_TRAILER | 1u << SG_HDR_UPGRADE)
/* Never made hop-by-hop by a Connection option: dropping them would change
 * the framing or the routing of the message ("Connection: content-length"). */
#define PINNED_IDS                                                                                 \
    (1u << SG_HDR_HOST | 1u << SG_HDR_CONTENT_LENGTH | 1u << SG_HDR_TRANSFER_ENCODING)

/*
 * Next element of a comma-separated list of tokens (RFC 9110 5.6.1: empty
 * elements and OWS around commas allowed). Returns 1 with the token in
 * *tok / *tlen, 0 at the end, -1 when an element is not a bare token.
 */
static int next_token(const char **pp, const char *end, const char **tok, size_t *tlen) {
    const char *p = *pp;
    while (p < end && (*p == ',' || *p == ' ' || *p == '\t'))
        p++;
    if (p == end)
        return 0;
    *tok = p;
    while (p < end && (CL(*p) & CL_TCHAR))
        p++;
    *tlen = (size_t)(p - *tok);
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    if (*tlen == 0 || (p < end && *p != ','))
        return -1;
    *pp = p;
    return 1;
}

/*
 * Checks a host [ ":" port ] (RFC 3986 authority without userinfo). Returns
 * the offset of the port's colon, n when there is no port, -1 if invalid.
 */
static ssize_t host_check(const char *p, size_t n) {
    size_t i = 0;
    if (n > 0 && p[0] == '[') {
        for (i = 1; i < n && p[i] != ']'; i++)
            if (!(CL(p[i]) & CL_HEX) && p[i] != ':' && p[i] != '.')
                return -1;
        if (i == n || i == 1)
            return -1;
        i++;
    } else {
        while (i < n && (CL(p[i]) & CL_HOST))
            i++;
    }
    if (i == n)
        return (ssize_t)n;
    if (p[i] != ':')
        return -1;
    for (size_t j = i + 1; j < n; j++)
        if (!IS_DIGIT(p[j]))
            return -1;
    return (ssize_t)i;
}

/* The request-target forms allowed for this method (RFC 9112 3.2). */
static bool target_ok(const char *t, size_t n, uint8_t method) {
    if (method == SG_METHOD_CONNECT) {
        ssize_t colon = host_check(t, n); /* authority-form, port required */
        return colon > 0 && (size_t)colon + 1 < n && n - (size_t)colon - 1 <= 5;
    }
    if (t[0] == '/')
        return true;
    if (t[0] == '*')
        return n == 1 && method == SG_METHOD_OPTIONS;
    size_t skip;
    if (n > 7 && LIT_EQ(t, 7, "http://"))
        skip = 7;
    else if (n > 8 && LIT_EQ(t, 8, "https://"))
        skip = 8;
    else
        return false;
    const char *a = t + skip, *end = t + n, *ae = a;
    while (ae < end && *ae != '/' && *ae != '?' && *ae != '#')
        ae++;
    return ae > a && host_check(a, (size_t)(ae - a)) >= 0;
}

/* Parses the "HTTP/1.x" at p, which must leave a byte before end. Returns
 * the minor version (0 or 1), -400 for garbage, -505 for another major. */
static int parse_version(const char *p, const char *end) {
    if (end - p < 9 || memcmp(p, "HTTP/", 5) != 0 || !IS_DIGIT(p[5]) || p[6] != '.' ||
        !IS_DIGIT(p[7]))
        return -400;
    if (p[5] != '1')
        return -505;
    return p[7] == '0' ? 0 : 1; /* 1.2 and up are served as 1.1 (RFC 9110 2.5) */
}

/* Skips CRLF or LF at *pp; false if something else is there. */
static bool eat_eol(const char **pp) {
    const char *p = *pp;
    if (p[0] == '\r' && p[1] == '\n')
        *pp = p + 2;
    else if (p[0] == '\n')
        *pp = p + 1;
    else
        return false;
    return true;
}

static int parse_request_line(const char *p, const char *end, struct sg_http_msg *msg,
                              const char **next) {
    const char *m = p;
    while (CL(*p) & CL_TCHAR)
        p++;
    if (p == m || *p != ' ')
        return fail(msg, 400, "invalid method");
    msg->method = m;
    msg->method_len = (uint32_t)(p - m);
    msg->method_id = (uint8_t)sg_http_method_id(m, msg->method_len);

    const char *t = ++p;
    p = skip_vchar(p, end);
    if (p == t || *p != ' ')
        return fail(msg, 400, "invalid request target");
    msg->target = t;
    msg->target_len = (uint32_t)(p - t);

    int v = parse_version(++p, end);
    if (v < 0)
        return fail(msg, (uint16_t)-v, v == -505 ? "unsupported HTTP version" : "invalid version");
    p += 8;
    if (!eat_eol(&p))
        return fail(msg, 400, "invalid request line");
    msg->minor = (uint8_t)v;
    if (!target_ok(msg->target, msg->target_len, msg->method_id))
        return fail(msg, 400, "invalid request target");
    *next = p;
    return 0;
}

static int parse_status_line(const char *p, const char *end, struct sg_http_msg *msg,
                             const char **next) {
    int v = parse_version(p, end);
    if (v < 0)
        return fail(msg, 502, v == -505 ? "unsupported HTTP version" : "invalid status line");
    msg->minor = (uint8_t)v;
    p += 8;
    if (end - p < 5 || p[0] != ' ' || p[1] < '1' || p[1] > '9' || !IS_DIGIT(p[2]) ||
        !IS_DIGIT(p[3]))
        return fail(msg, 502, "invalid status line");
    msg->status = (uint16_t)((p[1] - '0') * 100 + (p[2] - '0') * 10 + (p[3] - '0'));
    p += 4;
    const char *r = p;
    if (*p == ' ') { /* the reason may be empty, and its SP missing */
        r = p + 1;
        p = skip_fval(r, end);
    }
    msg->reason = r;
    msg->reason_len = (uint32_t)(p - r);
    if (!eat_eol(&p))
        return fail(msg, 502, *p == '\r' ? "bare CR" : "invalid status line");
    *next = p;
    return 0;
}

/* Per-message facts gathered from the fields, turned into framing at the end. */
struct fields {
    uint32_t hosts;
    bool cl_seen;
    bool te_seen;
    bool te_chunked_last; /* the last coding seen is chunked */
    bool te_other;        /* a coding other than chunked */
    uint32_t te_chunked;  /* how many times chunked was listed */
    uint32_t conn_other;  /* Connection options naming other fields */
    bool conn_close, conn_keep_alive, conn_upgrade, upgrade_hdr;
};

static int field_semantics(struct sg_http_msg *msg, const struct sg_http_header *h,
                           struct fields *f, bool is_req) {
    const char *v = h->value, *ve = h->value + h->value_len, *tok;
    size_t tl;
    int r;

    switch (h->id) {
    case SG_HDR_HOST:
        if (++f->hosts > 1)
            return fail(msg, 400, "more than one Host");
        if (is_req && host_check(v, h->value_len) < 0)
            return fail(msg, 400, "invalid Host");
        msg->host_index = (int16_t)(h - msg->headers);
        break;
    case SG_HDR_CONTENT_LENGTH: {
        uint64_t n = 0;
        if (f->cl_seen)
            return fail(msg, 400, "repeated Content-Length");
        if (v == ve)
            return fail(msg, 400, "invalid Content-Length");
        for (; v < ve; v++) {
            if (!IS_DIGIT(*v) || n > (UINT64_MAX >> 4))
                return fail(msg, 400, "invalid Content-Length");
            n = n * 10 + (uint64_t)(*v - '0');
        }
        f->cl_seen = true;
        msg->content_length = n;
        break;
    }
    case SG_HDR_TRANSFER_ENCODING:
        f->te_seen = true;
        if (LIT_EQ(v, h->value_len, "chunked")) {
            f->te_chunked++;
            f->te_chunked_last = true;
            break;
        }
        while ((r = next_token(&v, ve, &tok, &tl)) > 0) {
            f->te_chunked_last = LIT_EQ(tok, tl, "chunked");
            f->te_chunked += f->te_chunked_last;
            f->te_other |= !f->te_chunked_last;
        }
        if (r < 0)
            return fail(msg, 400, "invalid Transfer-Encoding");
        break;
    case SG_HDR_CONNECTION:
        while ((r = next_token(&v, ve, &tok, &tl)) > 0) {
            if (LIT_EQ(tok, tl, "close"))
                f->conn_close = true;
            else if (LIT_EQ(tok, tl, "keep-alive"))
                f->conn_keep_alive = true;
            else if (LIT_EQ(tok, tl, "upgrade"))
                f->conn_upgrade = true;
            else if (++f->conn_other > MAX_CONN_OPTIONS)
                return fail(msg, 400, "too many Connection options");
        }
        if (r < 0)
            return fail(msg, 400, "invalid Connection");
        break;
    case SG_HDR_UPGRADE:
        f->upgrade_hdr = true;
        break;
    case SG_HDR_EXPECT:
        /* HTTP/1.0 requests' expectations are ignored (RFC 9110 10.1.1) */
        if (is_req && msg->minor >= 1 && LIT_EQ(v, h->value_len, "100-continue"))
            msg->expect_continue = true;
        break;
    }
    return 0;
}

/* Marks the fields named by Connection options as hop-by-hop. */
static void mark_connection_options(struct sg_http_msg *msg) {
    for (uint32_t i = 0; i < msg->num_headers; i++) {
        const struct sg_http_header *c = &msg->headers[i];
        if (c->id != SG_HDR_CONNECTION)
            continue;
        const char *v = c->value, *ve = v + c->value_len, *tok;
        size_t tl;
        while (next_token(&v, ve, &tok, &tl) > 0) {
            for (uint32_t j = 0; j < msg->num_headers; j++) {
                struct sg_http_header *h = &msg->headers[j];
                if (!h->hop && !(PINNED_IDS & (1u << h->id)) && sg_http_name_eq(h, tok, tl))
                    h->hop = 1;
            }
        }
    }
}

/*
 * Parses the complete head buf[start..end) (end just past the empty line).
 * Returns 0 or SG_HTTP_ERROR with the request statuses (the response caller
 * maps them to 502).
 */
static int parse_head(const char *p, const char *end, struct sg_http_msg *msg,
                      const struct sg_http_limits *lim, bool is_req, uint8_t req_method) {
    struct fields f = {0};
    uint32_t max_headers = msg->max_headers > INT16_MAX ? INT16_MAX : msg->max_headers;
    int r;

    if (is_req) {
        msg->status = 0;
        msg->reason = NULL;
        msg->reason_len = 0;
    } else {
        msg->method = msg->target = NULL;
        msg->method_len = msg->target_len = 0;
        msg->method_id = (uint8_t)SG_METHOD_OTHER;
    }
    msg->num_headers = 0;
    msg->body = SG_BODY_NONE;
    msg->content_length = 0;
    msg->keep_alive = msg->expect_continue = msg->upgrade = false;
    msg->host_index = -1;
    msg->error_status = 0;
    msg->error = NULL;

    r = is_req ? parse_request_line(p, end, msg, &p) : parse_status_line(p, end, msg, &p);
    if (r < 0)
        return r;

    for (;;) {
        /* at the start of a line; the head ends with an empty line, so every
         * line has its LF before end and the loops below stop on it */
        if (eat_eol(&p))
            break;
        const char *name = p;
        while (CL(*p) & CL_TCHAR)
            p++;
        if (*p != ':') {
            if (p == name && (*p == ' ' || *p == '\t'))
                return fail(msg, 400, "obsolete line folding");
            if (*p == ' ' || *p == '\t')
                return fail(msg, 400, "whitespace before colon");
            if (*p == '\r')
                return fail(msg, 400, "bare CR");
            return fail(msg, 400, "invalid field name");
        }
        if (p == name)
            return fail(msg, 400, "empty field name");
        size_t name_len = (size_t)(p - name);
        p++;
        while (*p == ' ' || *p == '\t')
            p++;
        const char *v = p;
        p = skip_fval(p, end);
        const char *ve = p;
        if (!eat_eol(&p))
            return fail(msg, 400, *p == '\r' ? "bare CR" : "invalid character in field value");
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;

        if (msg->num_headers >= max_headers)
            return fail(msg, 431, "too many header fields");
        struct sg_http_header *h = &msg->headers[msg->num_headers++];
        h->name = name;
        h->name_len = (uint32_t)name_len;
        h->value = v;
        h->value_len = (uint32_t)(ve - v);
        h->id = header_id(name, name_len);
        h->hop = (HOP_IDS >> h->id) & 1;
        if (h->id != SG_HDR_OTHER && (r = field_semantics(msg, h, &f, is_req)) < 0)
            return r;
    }

    if (f.conn_other)
        mark_connection_options(msg);
    msg->upgrade = f.conn_upgrade && f.upgrade_hdr;
    msg->keep_alive = !f.conn_close && (msg->minor >= 1 || f.conn_keep_alive);

    if (f.te_seen) {
        if (f.cl_seen)
            return fail(msg, 400, "Content-Length with Transfer-Encoding");
        if (msg->minor == 0)
            return fail(msg, 400, "Transfer-Encoding in HTTP/1.0");
        if (!f.te_chunked_last || f.te_chunked > 1)
            return fail(msg, 400, "final transfer coding is not chunked");
        if (f.te_other)
            return fail(msg, 501, "unsupported transfer coding");
    }

    if (is_req) {
        if (msg->minor >= 1 && f.hosts == 0)
            return fail(msg, 400, "missing Host");
        msg->body = f.te_seen ? SG_BODY_CHUNKED : f.cl_seen ? SG_BODY_LENGTH : SG_BODY_NONE;
    } else if (req_method == SG_METHOD_HEAD || msg->status < 200 || msg->status == 204 ||
               msg->status == 304 || (req_method == SG_METHOD_CONNECT && msg->status < 300)) {
        msg->body = SG_BODY_NONE; /* response framing, RFC 9112 6.3 */
    } else if (f.te_seen) {
        msg->body = SG_BODY_CHUNKED;
    } else if (f.cl_seen) {
        msg->body = SG_BODY_LENGTH;
    } else {
        msg->body = SG_BODY_EOF;
        msg->keep_alive = false;
    }
    if (msg->body == SG_BODY_LENGTH && lim->max_body_bytes &&
        msg->content_length > lim->max_body_bytes)
        return fail(msg, 413, "body too large");
    return 0;
}

/*
 * Finds the end of the head, resuming at the cursor. Returns the head's end
 * offset, SG_HTTP_PARTIAL (cursor updated) or SG_HTTP_ERROR (414 / 431).
 */
static ssize_t find_head_end(const char *buf, size_t len, size_t *scanned, size_t start,
                             struct sg_http_msg *msg, uint32_t max_line, uint32_t max_head,
                             bool is_req) {
    size_t pos = *scanned & SCAN_POS_MASK, lines = *scanned >> SCAN_POS_BITS;
    if (pos > len || pos <= start) /* a new message, or a cursor that does not fit */
        pos = start, lines = 0;
    uint64_t max_lines = (uint64_t)msg->max_headers + 1;
    const char *s = buf + start, *e = buf + len, *p = buf + pos, *nl;

    for (;;) {
        if (lines > 0 && p[-1] == '\n') { /* at the start of a field line */
            if (p == e || (*p == '\r' && p + 1 == e))
                break;
            if (*p == '\n' || (*p == '\r' && p[1] == '\n')) {
                p += *p == '\r' ? 2 : 1;
                if ((size_t)(p - s) > max_head)
                    return fail(msg, 431, "header section too large");
                return p - buf;
            }
        }
        nl = memchr(p, '\n', (size_t)(e - p));
        if (nl == NULL) {
            p = e;
            break;
        }
        if (lines < SCAN_LINES_MAX)
            lines++;
        if (lines == 1 && is_req && (size_t)(nl - s) - (nl > s && nl[-1] == '\r') > max_line)
            return fail(msg, 414, "request line too long");
        if (lines > max_lines && lines < SCAN_LINES_MAX)
            return fail(msg, 431, "too many header fields");
        if ((size_t)(nl + 1 - s) > max_head)
            return fail(msg, 431, "header section too large");
        p = nl + 1;
    }
    /* partial: the same limits on what has arrived */
    if (lines == 0 && is_req && len - start - (len > start && e[-1] == '\r') > max_line)
        return fail(msg, 414, "request line too long");
    if (len - start > max_head)
        return fail(msg, 431, "header section too large");
    *scanned = (size_t)(p - buf) | lines << SCAN_POS_BITS;
    return SG_HTTP_PARTIAL;
}

static int parse_msg(const char *buf, size_t len, size_t *scanned, struct sg_http_msg *msg,
                     const struct sg_http_limits *lim, bool is_req, uint8_t req_method) {
    uint32_t max_head = lim->max_header_bytes, max_line = lim->max_request_line;
    size_t start = 0;

    if (max_head == 0 || max_head > HEAD_CAP)
        max_head = HEAD_CAP;
    if (max_line == 0)
        max_line = max_head;
    if (is_req) { /* RFC 9112 2.2: ignore a few empty lines before a request line */
        for (int n = 0;; n++) {
            size_t eol = 0;
            if (start < len && buf[start] == '\n')
                eol = 1;
            else if (start + 1 < len && buf[start] == '\r' && buf[start + 1] == '\n')
                eol = 2;
            if (eol == 0)
                break;
            if (n == MAX_EMPTY)
                return fail(msg, 400, "too many empty lines");
            start += eol;
        }
    }
    ssize_t end = find_head_end(buf, len, scanned, start, msg, max_line, max_head, is_req);
    if (end < 0)
        return (int)end;
    *scanned = 0;
    if (parse_head(buf + start, buf + end, msg, lim, is_req, req_method) < 0)
        return SG_HTTP_ERROR;
    return (int)end;
}

int sg_http_parse_request(const char *buf, size_t len, size_t *scanned, struct sg_http_msg *msg,
                          const struct sg_http_limits *lim) {
    return parse_msg(buf, len, scanned, msg, lim, true, SG_METHOD_OTHER);
}

int sg_http_parse_response(const char *buf, size_t len, size_t *scanned, struct sg_http_msg *msg,
                           const struct sg_http_limits *lim, enum sg_http_method req_method) {
    int r = parse_msg(buf, len, scanned, msg, lim, false, (uint8_t)req_method);
    if (r == SG_HTTP_ERROR)
        msg->error_status = 502;
    return r;
}

/* ---- chunked bodies (RFC 9112 7.1) ---- */

#define CHUNK_LINE_MAX 4096 /* chunk-size line, extensions and CRLF included */
#define CHUNK_SIZE_MAX (UINT64_C(1) << 62)

enum {
    CK_SIZE0 = 0, /* at the start of a chunk-size line: a hex digit must come */
    CK_SIZE,      /* in the hex digits of the size */
    CK_SIZE_WS,   /* BWS after the size: ';' or the end of the line must follow */
    CK_EXT,       /* in chunk extensions, up to CR/LF */
    CK_SIZE_LF,   /* CR ending the size line seen */
    CK_DATA,      /* in chunk data, c->remaining bytes left */
    CK_DATA_END,  /* after chunk data: CRLF or LF must follow */
    CK_DATA_LF,   /* CR after chunk data seen */
    CK_TR_START,  /* at the start of a trailer field line or of the final empty line */
    CK_TR_NAME,   /* in a trailer field name */
    CK_TR_VALUE,  /* in a trailer field value */
    CK_TR_LF,     /* CR ending a trailer field line seen */
    CK_END_LF,    /* CR of the final empty line seen */
    CK_DONE,      /* the body is complete */
    CK_ERROR      /* invalid; every later call fails */
};

void sg_http_chunked_init(struct sg_http_chunked *c, uint64_t max_body_bytes,
                          uint32_t max_trailer_bytes) {
    memset(c, 0, sizeof(*c));
    c->max_body_bytes = max_body_bytes;
    c->max_trailer_bytes = max_trailer_bytes;
}

static ssize_t chunk_fail(struct sg_http_chunked *c, uint16_t status, const char *why) {
    c->state = CK_ERROR;
    c->error_status = status;
    c->error = why;
    return SG_HTTP_ERROR;
}

static int hexval(char ch) {
    return IS_DIGIT(ch) ? ch - '0' : (ch | 0x20) - 'a' + 10;
}

/*
 * The walker behind scan and decode. With data == NULL it runs to the end of
 * buf or of the body; otherwise it returns right after the first run of
 * payload bytes, which it reports in *data / *data_len.
 */
static ssize_t chunked_walk(struct sg_http_chunked *c, const char *buf, size_t len,
                            const char **data, size_t *data_len) {
    const char *p = buf, *e = buf + len;

    if (c->state == CK_ERROR)
        return SG_HTTP_ERROR;
    while (p < e && c->state != CK_DONE) {
        char ch = *p;
        if (c->state == CK_DATA) {
            size_t n = (size_t)(e - p) < c->remaining ? (size_t)(e - p) : (size_t)c->remaining;
            c->remaining -= n;
            c->total += n;
            if (c->remaining == 0)
                c->state = CK_DATA_END;
            if (data) {
                *data = p;
                *data_len = n;
                return p + n - buf;
            }
            p += n;
            continue;
        }
        p++;
        if (c->state <= CK_SIZE_LF && ++c->line_len > CHUNK_LINE_MAX)
            return chunk_fail(c, 400, "chunk size line too long");
        if (c->state >= CK_TR_START && c->max_trailer_bytes &&
            ++c->trailer_len > c->max_trailer_bytes)
            return chunk_fail(c, 400, "trailer section too large");

        switch (c->state) {
        case CK_SIZE0:
            if (!(CL(ch) & CL_HEX))
                return chunk_fail(c, 400, "invalid chunk size");
            c->remaining = (uint64_t)hexval(ch);
            c->state = CK_SIZE;
            break;
        case CK_SIZE:
            if (CL(ch) & CL_HEX) {
                if (c->remaining >= CHUNK_SIZE_MAX >> 4)
                    return chunk_fail(c, 400, "chunk size too large");
                c->remaining = c->remaining << 4 | (uint64_t)hexval(ch);
                break;
            }
            if (c->max_body_bytes && c->remaining > c->max_body_bytes - c->total)
                return chunk_fail(c, 413, "body too large");
            c->state = CK_SIZE_WS;
            /* fall through */
        case CK_SIZE_WS:
            if (ch == ';')
                c->state = CK_EXT;
            else if (ch == '\r')
                c->state = CK_SIZE_LF;
            else if (ch == '\n')
                goto size_line_done;
            else if (ch != ' ' && ch != '\t')
                return chunk_fail(c, 400, "invalid chunk size");
            break;
        case CK_EXT:
            if (ch == '\r')
                c->state = CK_SIZE_LF;
            else if (ch == '\n')
                goto size_line_done;
            else if (!(CL(ch) & CL_FVAL))
                return chunk_fail(c, 400, "invalid chunk extension");
            break;
        case CK_SIZE_LF:
            if (ch != '\n')
                return chunk_fail(c, 400, "bare CR");
        size_line_done:
            c->line_len = 0;
            c->state = c->remaining ? CK_DATA : CK_TR_START;
            break;
        case CK_DATA_END:
            if (ch == '\r')
                c->state = CK_DATA_LF;
            else if (ch == '\n')
                c->state = CK_SIZE0;
            else
                return chunk_fail(c, 400, "no CRLF after chunk data");
            break;
        case CK_DATA_LF:
            if (ch != '\n')
                return chunk_fail(c, 400, "no CRLF after chunk data");
            c->state = CK_SIZE0;
            break;
        case CK_TR_START:
            if (ch == '\r')
                c->state = CK_END_LF;
            else if (ch == '\n')
                c->state = CK_DONE;
            else if (CL(ch) & CL_TCHAR)
                c->state = CK_TR_NAME;
            else
                return chunk_fail(c, 400,
                                  ch == ' ' || ch == '\t' ? "obsolete line folding"
                                  : ch == ':'             ? "empty field name"
                                                          : "invalid trailer field");
            break;
        case CK_TR_NAME:
            if (ch == ':')
                c->state = CK_TR_VALUE;
            else if (!(CL(ch) & CL_TCHAR))
                return chunk_fail(c, 400,
                                  ch == ' ' || ch == '\t' ? "whitespace before colon"
                                                          : "invalid trailer field");
            break;
        case CK_TR_VALUE:
            if (ch == '\r')
                c->state = CK_TR_LF;
            else if (ch == '\n')
                c->state = CK_TR_START;
            else if (!(CL(ch) & CL_FVAL))
                return chunk_fail(c, 400, "invalid character in trailer field");
            break;
        case CK_TR_LF:
            if (ch != '\n')
                return chunk_fail(c, 400, "bare CR");
            c->state = CK_TR_START;
            break;
        case CK_END_LF:
            if (ch != '\n')
                return chunk_fail(c, 400, "bare CR");
            c->state = CK_DONE;
            break;
        }
    }
    if (c->state == CK_DONE)
        c->done = 1;
    if (data)
        *data_len = 0;
    return p - buf;
}

ssize_t sg_http_chunked_scan(struct sg_http_chunked *c, const char *buf, size_t len) {
    return chunked_walk(c, buf, len, NULL, NULL);
}

ssize_t sg_http_chunked_decode(struct sg_http_chunked *c, const char *buf, size_t len,
                               const char **data, size_t *data_len) {
    *data = NULL;
    *data_len = 0;
    return chunked_walk(c, buf, len, data, data_len);
}
