/*
 * HTTP/1.1 message parsing (RFC 9110 / RFC 9112): pure functions, no I/O and
 * no allocation. Heads are parsed zero-copy: every pointer in struct
 * sg_http_msg points into the caller's buffer, which must stay unchanged while
 * the message is in use. Parsing is incremental: the caller calls again with
 * the same buffer grown by new bytes and the same `scanned` cursor, and bytes
 * already seen are not scanned again for the end of the head.
 *
 * Chunked bodies are walked by struct sg_http_chunked, a resumable state
 * machine that either validates bytes for verbatim forwarding or reports the
 * payload spans for decoding.
 */
#ifndef SG_HTTP_HTTP_H
#define SG_HTTP_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Return values of the parse functions (a head length > 0 means complete). */
#define SG_HTTP_PARTIAL (-1) /* need more bytes */
#define SG_HTTP_ERROR   (-2) /* invalid; msg->error_status and msg->error say why */

enum sg_http_method {
    SG_METHOD_OTHER = 0, /* a valid token that is none of the below */
    SG_METHOD_GET,
    SG_METHOD_HEAD,
    SG_METHOD_POST,
    SG_METHOD_PUT,
    SG_METHOD_DELETE,
    SG_METHOD_CONNECT,
    SG_METHOD_OPTIONS,
    SG_METHOD_TRACE,
    SG_METHOD_PATCH,
    SG_METHOD_COUNT
};

/* Header names the proxy acts on, recognised case-insensitively by the parser
 * so that later stages never compare names again. */
enum sg_http_hdr {
    SG_HDR_OTHER = 0,
    SG_HDR_HOST,
    SG_HDR_CONTENT_LENGTH,
    SG_HDR_TRANSFER_ENCODING,
    SG_HDR_CONNECTION,
    SG_HDR_KEEP_ALIVE,
    SG_HDR_PROXY_CONNECTION,
    SG_HDR_TE,
    SG_HDR_TRAILER,
    SG_HDR_UPGRADE,
    SG_HDR_EXPECT,
    SG_HDR_VIA,
    SG_HDR_X_FORWARDED_FOR,
    SG_HDR_X_FORWARDED_PROTO,
    SG_HDR_X_REQUEST_ID,
    SG_HDR_COUNT
};

struct sg_http_header {
    const char *name;
    const char *value; /* leading and trailing whitespace removed */
    uint32_t name_len;
    uint32_t value_len;
    uint8_t id;  /* enum sg_http_hdr */
    uint8_t hop; /* 1 when the header is hop-by-hop: a fixed hop-by-hop name
                    (Connection, Keep-Alive, Proxy-Connection, TE, Trailer,
                    Upgrade) or a name listed in a Connection header */
};

/* How the body of a message is delimited (RFC 9112 section 6.3). */
enum sg_http_body {
    SG_BODY_NONE = 0, /* no body: requests without CL/TE, HEAD/1xx/204/304 responses */
    SG_BODY_LENGTH,   /* Content-Length bytes */
    SG_BODY_CHUNKED,  /* Transfer-Encoding ending in chunked */
    SG_BODY_EOF       /* responses only: until the connection closes */
};

struct sg_http_limits {
    uint32_t max_request_line; /* longer request line: 414 (0 = max_header_bytes) */
    uint32_t max_header_bytes; /* longer head: 431 (requests) / error (responses) */
    uint64_t max_body_bytes;   /* Content-Length above it: 413 (0 = no limit) */
};

struct sg_http_msg {
    /* request line (requests only) */
    const char *method;
    const char *target;
    uint32_t method_len;
    uint32_t target_len;
    uint8_t method_id; /* enum sg_http_method */
    uint8_t minor;     /* HTTP/1.<minor>: 0 or 1 */
    /* status line (responses only) */
    uint16_t status;
    const char *reason;
    uint32_t reason_len;

    /* In: headers points at caller storage of max_headers entries.
     * Out: num_headers entries filled. Too many headers: 431 / error. */
    struct sg_http_header *headers;
    uint32_t max_headers;
    uint32_t num_headers;

    /* framing and semantics derived while parsing */
    uint8_t body;            /* enum sg_http_body */
    uint64_t content_length; /* for SG_BODY_LENGTH */
    bool keep_alive;         /* HTTP/1.1 without "close", or 1.0 with "keep-alive" */
    bool expect_continue;    /* Expect: 100-continue (requests) */
    bool upgrade;            /* Connection: upgrade and an Upgrade header present */
    int16_t host_index;      /* index of the Host header, -1 if none */

    /* on SG_HTTP_ERROR: the status to answer (400, 413, 414, 431, 501, 505
     * for requests; 502 for responses) and a short constant reason */
    uint16_t error_status;
    const char *error;
};

/*
 * Parses a request head from buf[0..len). *scanned is the caller's cursor,
 * 0 for a new message, kept between calls for the same message; it is
 * opaque (not a byte count) and always below 2^32, so it may be stored in a
 * uint32_t. Heads are capped at 4 MiB whatever the limits say.
 * Returns the head length (including the final CRLF CRLF) when the head is
 * complete and valid, SG_HTTP_PARTIAL when more bytes are needed (limits are
 * still enforced: an overlong request line gives 414 even before its end
 * arrives), or SG_HTTP_ERROR. Rejects: invalid method/token characters, a bad
 * request target or version, obs-fold, bare CR, NUL and other control
 * characters, whitespace between a field name and the colon, Content-Length
 * together with Transfer-Encoding, repeated or malformed Content-Length, a
 * Transfer-Encoding whose final coding is not chunked (501 for unknown
 * codings, 400 otherwise), HTTP/1.1 without exactly one valid Host, and
 * Content-Length above max_body_bytes (413).
 */
int sg_http_parse_request(const char *buf, size_t len, size_t *scanned, struct sg_http_msg *msg,
                          const struct sg_http_limits *lim);

/*
 * Parses a response head the same way. req_method is the method of the
 * request it answers: the body framing depends on it (HEAD) and on the status
 * (1xx, 204, 304: no body). A 1xx response is returned like any other; the
 * caller parses the next head after it.
 */
int sg_http_parse_response(const char *buf, size_t len, size_t *scanned, struct sg_http_msg *msg,
                           const struct sg_http_limits *lim, enum sg_http_method req_method);

/* Case-insensitive comparison of a header's name. */
bool sg_http_name_eq(const struct sg_http_header *h, const char *name, size_t len);

/* Returns the method id of a method token (SG_METHOD_OTHER if unknown). */
enum sg_http_method sg_http_method_id(const char *s, size_t len);

/* "GET", "HEAD", ...; NULL for SG_METHOD_OTHER. */
const char *sg_http_method_name(enum sg_http_method m);

/* The reason phrase of a status code ("Not Found"), "Unknown" if unknown. */
const char *sg_http_reason(int status);

/*
 * Chunked body walker (RFC 9112 section 7.1). Zero it (or call
 * sg_http_chunked_init) before the first byte of a body.
 * Limits: a chunk-size line (size plus extensions) of at most 4096 bytes,
 * trailer section of at most max_trailer_bytes (0 = unlimited), total payload
 * of at most max_body_bytes (0 = unlimited; exceeding gives error_status 413).
 */
struct sg_http_chunked {
    uint8_t state;         /* internal */
    uint8_t done;          /* 1 once the final CRLF after the last chunk was consumed */
    uint16_t error_status; /* on SG_HTTP_ERROR: 400 or 413 */
    uint32_t line_len;     /* bytes of the current size line / trailer line */
    uint32_t trailer_len;  /* bytes of trailer section so far */
    uint32_t max_trailer_bytes;
    uint64_t remaining; /* payload bytes left in the current chunk */
    uint64_t total;     /* payload bytes so far */
    uint64_t max_body_bytes;
    const char *error; /* short constant reason on error */
};

void sg_http_chunked_init(struct sg_http_chunked *c, uint64_t max_body_bytes,
                          uint32_t max_trailer_bytes);

/*
 * Walks buf[0..len) and returns how many bytes belong to the chunked body
 * (fewer than len only when the body ended inside buf: c->done is then 1 and
 * the rest is the next message), or SG_HTTP_ERROR. Every consumed byte may be
 * forwarded verbatim. Never reads past buf + len; resumable at any byte.
 */
ssize_t sg_http_chunked_scan(struct sg_http_chunked *c, const char *buf, size_t len);

/*
 * Like sg_http_chunked_scan but stops after the first run of payload bytes:
 * returns the bytes consumed and sets *data / *data_len to the payload inside
 * them (data_len 0 when none). Call again with the rest to continue. Used to
 * decode a chunked body for an HTTP/1.0 client.
 */
ssize_t sg_http_chunked_decode(struct sg_http_chunked *c, const char *buf, size_t len,
                               const char **data, size_t *data_len);

#endif
