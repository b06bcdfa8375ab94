/*
 * The HTTP side of the response cache (RFC 9111): cache keys, the
 * Cache-Control fields, which responses may be stored and for how long, the
 * layout of a stored response in an entry's data, and the heads written
 * when a response is served from the cache (a hit, a stale copy, a 304).
 * Pure functions: no I/O, no globals, no clock of their own.
 *
 * A stored object is: struct sg_cache_meta, the status line's reason
 * phrase, the header fields ("Name: value\r\n" each; hop-by-hop fields,
 * framing, Age, Set-Cookie and the RateLimit fields removed), the vary
 * section (the lowercase names of the backend's Vary fields, each followed
 * by a NUL), then the body (decoded from chunked).
 *
 * Keys: "<path?query>\n<host>\n<value of each route vary header>\n...".
 * A key starts with the request target, so purging a path prefix is a key
 * prefix. When the backend answers with Vary, the response is stored under
 * the secondary key key + "\x01" + the request's value of each named field
 * + "\x01", and a descriptor object (flag SG_OBJ_VARY_DESC, no body, the
 * names only) under the key itself.
 */
#ifndef SG_CACHE_OBJECT_H
#define SG_CACHE_OBJECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "http/http.h"

#define SG_CACHE_KEY_MAX 8192 /* longer keys: the request is not cached */

/* Cache-Control directives seen in one message (all its fields). */
struct sg_cc {
    bool no_store, no_cache, private_, public_, must_revalidate, only_if_cached;
    int64_t max_age, s_maxage, swr, sie, max_stale, min_fresh; /* seconds; -1: absent */
    /* no-cache="a, b" and private="c" (RFC 9111 5.2.2.4, 5.2.2.7): the field
     * names, quotes taken off, pointing into the message. A second one of a
     * kind sets no_cache or private_ instead (one list each is kept). */
    const char *no_cache_fields, *private_fields;
    size_t no_cache_fields_len, private_fields_len;
};

void sg_cc_init(struct sg_cc *cc);
/* Adds the directives of one Cache-Control field value. Unknown ones are
 * ignored; a bad number makes that directive absent. */
void sg_cc_parse(struct sg_cc *cc, const char *v, size_t len);
/* The directives of every Cache-Control field of msg (and Pragma: no-cache
 * in a request without Cache-Control). */
void sg_cc_of(struct sg_cc *cc, const struct sg_http_msg *msg, bool request);

/* An IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") as seconds since the
 * epoch, or -1 when it is not one (or is before 1970). */
int64_t sg_http_date_parse(const char *s, size_t len);

#define SG_OBJ_MAGIC     0x53474331u /* "SGC1" */
#define SG_OBJ_VARY_DESC 1u          /* a descriptor: the vary names, nothing else */
#define SG_OBJ_NO_STALE  2u          /* must-revalidate: never served stale */

struct sg_cache_meta {
    uint32_t magic;
    uint16_t status;
    uint16_t flags;
    uint32_t reason_len;
    uint32_t fields_len;
    uint32_t vary_len;
    uint32_t etag_off, etag_len; /* ETag value inside the fields (len 0: none) */
    uint32_t lm_off, lm_len;     /* Last-Modified value inside the fields */
    uint64_t body_len;
    uint64_t swr_ms, sie_ms; /* stale windows after expiry */
    uint64_t age0_ms;        /* age when stored (the backend's Age) */
    uint64_t ttl_ms;         /* freshness lifetime left when stored */
};

/* A stored object's parts, pointing into the entry's data. */
struct sg_cache_obj {
    struct sg_cache_meta m;
    const char *reason, *fields, *vary, *body;
};

/* Reads data[0..len) as an object; false when it is not one (a corrupt
 * Redis value, say). */
bool sg_cache_obj_view(const char *data, size_t len, struct sg_cache_obj *o);

/* The primary key of a request into out (cap bytes): target is the path
 * with its query, host the authority (lowercased here; may be empty). The
 * route's vary headers add their values. Returns the length, or -1 when
 * it does not fit. */
int sg_cache_key(char *out, size_t cap, const char *target, size_t target_len, const char *host,
                 size_t host_len, const struct sg_route_cache *rc, const struct sg_http_msg *msg);

/* Appends the secondary part for the vary names of a descriptor or object
 * (names: NUL-terminated names, vary_len bytes in all) to out[0..len).
 * Returns the new length or -1 when it does not fit. */
int sg_cache_key_vary(char *out, size_t len, size_t cap, const char *names, size_t vary_len,
                      const struct sg_http_msg *msg);

/* What a response allows (decided at its head). */
struct sg_cache_decision {
    bool store;
    const char *why; /* when !store: a short reason, for debug logs */
    uint64_t ttl_ms, swr_ms, sie_ms, age0_ms;
    bool no_stale;
    /* Fields not to store: the names of a qualified no-cache and private,
     * comma-separated, pointing into the response (NULL: none). */
    const char *strip[2];
    size_t strip_len[2];
};

/* Whether the response resp to a GET with request fields req (and their
 * Cache-Control reqcc) may be stored under the route's settings, and for
 * how long. now_s is the wall clock (for Expires). */
void sg_cache_decide(const struct sg_http_msg *req, const struct sg_cc *reqcc,
                     const struct sg_http_msg *resp, const struct sg_route_cache *rc, int64_t now_s,
                     struct sg_cache_decision *d);

/* The object head (meta, reason, fields, vary section) for resp, malloc'd
 * into *out (*out_len bytes; the body follows it in the entry), without the
 * hop-by-hop fields, Set-Cookie and the fields d->strip names. body_len
 * is filled in later with sg_cache_obj_set_body_len. Returns 0, or -1
 * when the response has Vary: * (not storable) or out of memory. */
int sg_cache_obj_head(const struct sg_http_msg *resp, const struct sg_cache_decision *d, char **out,
                      size_t *out_len);
void sg_cache_obj_set_body_len(char *head, uint64_t body_len);

/* A descriptor for the vary section of the object head head. */
int sg_cache_obj_desc(const char *head, size_t head_len, char **out, size_t *out_len);

/* How an object is served. */
struct sg_cache_serve {
    const char *x_cache; /* "HIT", "STALE", ... */
    uint64_t age_s;      /* the Age field */
    bool head_only;      /* HEAD: no body */
    bool not_modified;   /* a 304 */
    bool keep_alive;     /* the connection stays */
    bool client_http10;  /* an HTTP/1.0 client */
    const char *extra;   /* header lines to add (RateLimit), each with CRLF */
    size_t extra_len;
};

/* Writes the response head for o into out (cap bytes); returns its length
 * or -1 when it does not fit. */
int sg_cache_serve_head(const struct sg_cache_obj *o, const struct sg_cache_serve *s, char *out,
                        size_t cap);
/* Bytes sg_cache_serve_head needs at most. */
size_t sg_cache_serve_head_size(const struct sg_cache_obj *o, const struct sg_cache_serve *s);

/* Whether the conditional fields of req (If-None-Match, else
 * If-Modified-Since) match o, so that a 304 answers it. */
bool sg_cache_not_modified(const struct sg_cache_obj *o, const struct sg_http_msg *req);

#endif
