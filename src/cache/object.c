/*
 * Cache keys, Cache-Control, storability and served heads (see object.h).
 */
#include "cache/object.h"
#include "core/out.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- Cache-Control ----------------------------------------------------- */

void sg_cc_init(struct sg_cc *cc) {
    memset(cc, 0, sizeof(*cc));
    cc->max_age = cc->s_maxage = cc->swr = cc->sie = cc->max_stale = cc->min_fresh = -1;
}

static bool ieq(const char *a, size_t alen, const char *lit) {
    size_t n = strlen(lit);
    if (alen != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = a[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c + 32);
        if (c != lit[i])
            return false;
    }
    return true;
}

/* The next item of a comma-separated list of tokens (field names, blanks
 * around them) from *p on, with its length in *len; NULL at the end. */
static const char *list_item(const char **p, const char *end, size_t *len) {
    const char *s = *p;
    while (s < end && (*s == ' ' || *s == '\t' || *s == ','))
        s++;
    const char *e = s;
    while (e < end && *e != ',' && *e != ' ' && *e != '\t')
        e++;
    *p = e;
    *len = (size_t)(e - s);
    return e > s ? s : NULL;
}

/* Whether the list names name, case-insensitively. */
static bool listed(const char *list, size_t len, const char *name, size_t nlen) {
    const char *p = list, *s;
    size_t n;
    while ((s = list_item(&p, list + len, &n)) != NULL)
        if (n == nlen && strncasecmp(s, name, nlen) == 0)
            return true;
    return false;
}

/* delta-seconds (RFC 9111 1.2.2): digits; too large saturates at 2^31. */
static int64_t delta_seconds(const char *v, size_t len) {
    if (len >= 2 && v[0] == '"' && v[len - 1] == '"') {
        v++;
        len -= 2;
    }
    if (len == 0)
        return -1;
    int64_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        if (n < 2147483648LL)
            n = n * 10 + (v[i] - '0');
    }
    return n > 2147483648LL ? 2147483648LL : n;
}

/* no-cache or private, with the value val (vlen bytes) or none: a list of
 * field names (quotes taken off) in *fields, or the whole directive in
 * *flag when there is no list, an empty one, or already one. */
static void qualified(const char *val, size_t vlen, bool *flag, const char **fields,
                      size_t *fields_len) {
    if (val && vlen >= 2 && val[0] == '"' && val[vlen - 1] == '"') {
        val++;
        vlen -= 2;
    }
    const char *cur = val;
    size_t n;
    if (val == NULL || list_item(&cur, val + vlen, &n) == NULL || *fields != NULL) {
        *flag = true;
        return;
    }
    *fields = val;
    *fields_len = vlen;
}

void sg_cc_parse(struct sg_cc *cc, const char *v, size_t len) {
    const char *p = v, *end = v + len;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
            p++;
        const char *name = p;
        while (p < end && *p != '=' && *p != ',' && *p != ' ' && *p != '\t')
            p++;
        size_t nlen = (size_t)(p - name);
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        const char *val = NULL;
        size_t vlen = 0;
        if (p < end && *p == '=') {
            p++;
            while (p < end && (*p == ' ' || *p == '\t'))
                p++;
            val = p;
            if (p < end && *p == '"') {
                p++;
                while (p < end && *p != '"')
                    p++;
                if (p < end)
                    p++;
            } else {
                while (p < end && *p != ',' && *p != ' ' && *p != '\t')
                    p++;
            }
            vlen = (size_t)(p - val);
        }
        while (p < end && *p != ',')
            p++;
        if (nlen == 0)
            continue;
        int64_t n = val ? delta_seconds(val, vlen) : -1;
        if (ieq(name, nlen, "no-store"))
            cc->no_store = true;
        else if (ieq(name, nlen, "no-cache"))
            qualified(val, vlen, &cc->no_cache, &cc->no_cache_fields, &cc->no_cache_fields_len);
        else if (ieq(name, nlen, "private"))
            qualified(val, vlen, &cc->private_, &cc->private_fields, &cc->private_fields_len);
        else if (ieq(name, nlen, "public"))
            cc->public_ = true;
        else if (ieq(name, nlen, "must-revalidate") || ieq(name, nlen, "proxy-revalidate"))
            cc->must_revalidate = true;
        else if (ieq(name, nlen, "only-if-cached"))
            cc->only_if_cached = true;
        else if (ieq(name, nlen, "max-age"))
            cc->max_age = n;
        else if (ieq(name, nlen, "s-maxage"))
            cc->s_maxage = n;
        else if (ieq(name, nlen, "stale-while-revalidate"))
            cc->swr = n;
        else if (ieq(name, nlen, "stale-if-error"))
            cc->sie = n;
        else if (ieq(name, nlen, "max-stale"))
            cc->max_stale = val ? n : 2147483648LL; /* bare: any staleness */
        else if (ieq(name, nlen, "min-fresh"))
            cc->min_fresh = n;
    }
}

void sg_cc_of(struct sg_cc *cc, const struct sg_http_msg *msg, bool request) {
    sg_cc_init(cc);
    bool seen = false, pragma = false;
    for (uint32_t i = 0; i < msg->num_headers; i++) {
        const struct sg_http_header *h = &msg->headers[i];
        if (sg_http_name_eq(h, "cache-control", 13)) {
            sg_cc_parse(cc, h->value, h->value_len);
            seen = true;
        } else if (request && sg_http_name_eq(h, "pragma", 6)) {
            for (size_t k = 0; k + 8 <= h->value_len && !pragma; k++)
                pragma = strncasecmp(h->value + k, "no-cache", 8) == 0;
        }
    }
    if (pragma && !seen) /* RFC 9111 5.4: only without Cache-Control */
        cc->no_cache = true;
    if (request && cc->no_cache_fields) /* no arguments in a request: plain no-cache */
        cc->no_cache = true;
}

/* ---- dates --------------------------------------------------------------- */

static int two(const char *s) {
    if (s[0] < '0' || s[0] > '9' || s[1] < '0' || s[1] > '9')
        return -1;
    return (s[0] - '0') * 10 + (s[1] - '0');
}

/* Days from 1970-01-01 to y-m-d (proleptic Gregorian). */
static int64_t days_from_civil(int64_t y, int m, int d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

int64_t sg_http_date_parse(const char *s, size_t len) {
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    /* "Sun, 06 Nov 1994 08:49:37 GMT": 29 bytes */
    if (len != 29 || s[3] != ',' || s[4] != ' ' || s[7] != ' ' || s[11] != ' ' || s[16] != ' ' ||
        s[19] != ':' || s[22] != ':' || s[25] != ' ' || memcmp(s + 26, "GMT", 3) != 0)
        return -1;
    int day = two(s + 5), hh = two(s + 17), mm = two(s + 20), ss = two(s + 23);
    int y1 = two(s + 12), y2 = two(s + 14);
    int mon = -1;
    for (int i = 0; i < 12; i++)
        if (memcmp(s + 8, months + i * 3, 3) == 0)
            mon = i + 1;
    if (day < 1 || day > 31 || hh < 0 || hh > 23 || mm < 0 || mm > 59 || ss < 0 || ss > 60 ||
        y1 < 0 || y2 < 0 || mon < 0)
        return -1;
    int year = y1 * 100 + y2;
    if (year < 1970) /* before the epoch: bogus, and a negative time would not mean -1 */
        return -1;
    static const int mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (day > mdays[mon - 1] || (mon == 2 && day == 29 && !leap))
        return -1;
    int64_t days = days_from_civil(year, mon, day);
    return days * 86400 + hh * 3600 + mm * 60 + ss;
}

/* ---- objects ------------------------------------------------------------- */

bool sg_cache_obj_view(const char *data, size_t len, struct sg_cache_obj *o) {
    if (len < sizeof(o->m))
        return false;
    memcpy(&o->m, data, sizeof(o->m));
    const struct sg_cache_meta *m = &o->m;
    uint64_t need = (uint64_t)sizeof(*m) + m->reason_len + m->fields_len + m->vary_len;
    if (m->magic != SG_OBJ_MAGIC || need > len || m->body_len != len - need || m->status < 100 ||
        m->status > 999 || (uint64_t)m->etag_off + m->etag_len > m->fields_len ||
        (uint64_t)m->lm_off + m->lm_len > m->fields_len)
        return false;
    o->reason = data + sizeof(*m);
    o->fields = o->reason + m->reason_len;
    o->vary = o->fields + m->fields_len;
    o->body = o->vary + m->vary_len;
    if (m->vary_len && o->vary[m->vary_len - 1] != '\0')
        return false;
    return true;
}

static const struct sg_http_header *find(const struct sg_http_msg *m, const char *name,
                                         size_t len) {
    for (uint32_t i = 0; i < m->num_headers; i++)
        if (sg_http_name_eq(&m->headers[i], name, len))
            return &m->headers[i];
    return NULL;
}

/* Appends a request field's value (every occurrence, joined by ",") to
 * out[*n..cap). False when it does not fit. */
static bool put_value(char *out, size_t *n, size_t cap, const struct sg_http_msg *msg,
                      const char *name, size_t nlen) {
    bool first = true;
    for (uint32_t i = 0; i < msg->num_headers; i++) {
        const struct sg_http_header *h = &msg->headers[i];
        if (!sg_http_name_eq(h, name, nlen))
            continue;
        if (*n + h->value_len + 1 > cap)
            return false;
        if (!first)
            out[(*n)++] = ',';
        memcpy(out + *n, h->value, h->value_len);
        *n += h->value_len;
        first = false;
    }
    return true;
}

int sg_cache_key(char *out, size_t cap, const char *target, size_t target_len, const char *host,
                 size_t host_len, const struct sg_route_cache *rc, const struct sg_http_msg *msg) {
    size_t n = 0;
    if (target_len + host_len + 2 > cap)
        return -1;
    memcpy(out, target, target_len);
    n = target_len;
    out[n++] = '\n';
    for (size_t i = 0; i < host_len; i++) {
        char c = host[i];
        out[n++] = c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
    }
    out[n++] = '\n';
    for (size_t i = 0; i < rc->nvary; i++) {
        if (!put_value(out, &n, cap, msg, rc->vary[i], strlen(rc->vary[i])) || n + 1 > cap)
            return -1;
        out[n++] = '\n';
    }
    return (int)n;
}

int sg_cache_key_vary(char *out, size_t len, size_t cap, const char *names, size_t vary_len,
                      const struct sg_http_msg *msg) {
    size_t n = len;
    if (n + 1 > cap)
        return -1;
    out[n++] = '\x01';
    for (const char *p = names; p < names + vary_len;) {
        size_t l = strlen(p);
        if (!put_value(out, &n, cap, msg, p, l) || n + 1 > cap)
            return -1;
        out[n++] = '\x01';
        p += l + 1;
    }
    return (int)n;
}

/* Whether any Vary field of m lists "*". */
static bool vary_star(const struct sg_http_msg *m) {
    for (uint32_t i = 0; i < m->num_headers; i++)
        if (sg_http_name_eq(&m->headers[i], "vary", 4) &&
            memchr(m->headers[i].value, '*', m->headers[i].value_len))
            return true;
    return false;
}

/* Statuses heuristically cacheable (RFC 9110 15.1): stored with the route's
 * ttl when the backend says nothing. */
static bool heuristic_status(int s) {
    switch (s) {
    case 200:
    case 203:
    case 204:
    case 300:
    case 301:
    case 308:
    case 404:
    case 405:
    case 410:
    case 414:
    case 501:
        return true;
    default:
        return false;
    }
}

void sg_cache_decide(const struct sg_http_msg *req, const struct sg_cc *reqcc,
                     const struct sg_http_msg *resp, const struct sg_route_cache *rc, int64_t now_s,
                     struct sg_cache_decision *d) {
    memset(d, 0, sizeof(*d));
    struct sg_cc cc;
    sg_cc_of(&cc, resp, false);
    bool explicit_fresh = cc.s_maxage >= 0 || cc.max_age >= 0;
    const struct sg_http_header *expires = find(resp, "expires", 7);
    if (!explicit_fresh && expires)
        explicit_fresh = true;
    if (!heuristic_status(resp->status) &&
        !((resp->status == 302 || resp->status == 307) && explicit_fresh)) {
        d->why = "status not cacheable";
        return;
    }
    if (cc.no_store || cc.private_ || cc.no_cache) {
        d->why = "Cache-Control forbids a shared cache";
        return;
    }
    /* Qualified no-cache and private: stored without the fields they name;
     * but the Vary field is what the variants are told apart by. */
    d->strip[0] = cc.no_cache_fields;
    d->strip_len[0] = cc.no_cache_fields_len;
    d->strip[1] = cc.private_fields;
    d->strip_len[1] = cc.private_fields_len;
    for (int i = 0; i < 2; i++)
        if (d->strip[i] && listed(d->strip[i], d->strip_len[i], "vary", 4)) {
            d->why = "Cache-Control keeps the Vary field from a shared cache";
            return;
        }
    if (reqcc->no_store) {
        d->why = "request Cache-Control: no-store";
        return;
    }
    if (find(resp, "set-cookie", 10) && !rc->set_cookie) {
        d->why = "Set-Cookie";
        return;
    }
    if (find(req, "authorization", 13) && !rc->authorization && !cc.public_ && cc.s_maxage < 0 &&
        !cc.must_revalidate) {
        d->why = "request with Authorization";
        return;
    }
    if (vary_star(resp)) {
        d->why = "Vary: *";
        return;
    }
    int64_t ttl_s = -1;
    uint64_t ttl_ms;
    if (cc.s_maxage >= 0)
        ttl_s = cc.s_maxage;
    else if (cc.max_age >= 0)
        ttl_s = cc.max_age;
    else if (expires) {
        int64_t e = sg_http_date_parse(expires->value, expires->value_len);
        const struct sg_http_header *date = find(resp, "date", 4);
        int64_t base = date ? sg_http_date_parse(date->value, date->value_len) : -1;
        ttl_s = e < 0 ? 0 : e - (base >= 0 ? base : now_s);
        if (ttl_s < 0)
            ttl_s = 0;
    }
    ttl_ms = ttl_s >= 0 ? (uint64_t)ttl_s * 1000 : rc->ttl_ms;
    const struct sg_http_header *age = find(resp, "age", 3);
    int64_t age_s = age ? delta_seconds(age->value, age->value_len) : -1;
    d->age0_ms = age_s > 0 ? (uint64_t)age_s * 1000 : 0;
    if (ttl_ms <= d->age0_ms) {
        d->why = "already stale";
        return;
    }
    d->ttl_ms = ttl_ms - d->age0_ms;
    d->no_stale = cc.must_revalidate;
    if (!d->no_stale) {
        d->swr_ms = cc.swr >= 0 ? (uint64_t)cc.swr * 1000 : rc->stale_while_revalidate_ms;
        d->sie_ms = cc.sie >= 0 ? (uint64_t)cc.sie * 1000 : rc->stale_if_error_ms;
    }
    d->store = true;
}

/* Fields not stored: framing, hop-by-hop, per-response or per-client ones. */
static bool dropped(const struct sg_http_header *h, const struct sg_cache_decision *d) {
    if (h->hop || h->id == SG_HDR_TRANSFER_ENCODING || h->id == SG_HDR_CONTENT_LENGTH ||
        h->id == SG_HDR_CONNECTION || h->id == SG_HDR_KEEP_ALIVE)
        return true;
    for (int i = 0; i < 2; i++)
        if (d->strip[i] && listed(d->strip[i], d->strip_len[i], h->name, h->name_len))
            return true;
    return sg_http_name_eq(h, "age", 3) || sg_http_name_eq(h, "set-cookie", 10) ||
           sg_http_name_eq(h, "x-cache", 7) || sg_http_name_eq(h, "ratelimit", 9) ||
           sg_http_name_eq(h, "ratelimit-policy", 16);
}

int sg_cache_obj_head(const struct sg_http_msg *resp, const struct sg_cache_decision *d, char **out,
                      size_t *out_len) {
    if (vary_star(resp))
        return -1;
    struct sg_cache_meta m;
    memset(&m, 0, sizeof(m));
    m.magic = SG_OBJ_MAGIC;
    m.status = resp->status;
    m.reason_len = resp->reason_len;
    m.swr_ms = d->swr_ms;
    m.sie_ms = d->sie_ms;
    m.age0_ms = d->age0_ms;
    m.ttl_ms = d->ttl_ms;
    m.flags = d->no_stale ? SG_OBJ_NO_STALE : 0;
    size_t fields = 0, vary = 0;
    for (uint32_t i = 0; i < resp->num_headers; i++) {
        const struct sg_http_header *h = &resp->headers[i];
        if (dropped(h, d))
            continue;
        fields += h->name_len + h->value_len + 4;
        if (sg_http_name_eq(h, "vary", 4))
            vary += h->value_len + 1;
    }
    size_t total = sizeof(m) + resp->reason_len + fields + vary;
    if (fields > UINT32_MAX || total > UINT32_MAX)
        return -1;
    char *b = malloc(total);
    if (b == NULL)
        return -1;
    char *p = b + sizeof(m);
    memcpy(p, resp->reason, resp->reason_len);
    p += resp->reason_len;
    char *f = p;
    for (uint32_t i = 0; i < resp->num_headers; i++) {
        const struct sg_http_header *h = &resp->headers[i];
        if (dropped(h, d))
            continue;
        memcpy(p, h->name, h->name_len);
        p += h->name_len;
        *p++ = ':';
        *p++ = ' ';
        if (sg_http_name_eq(h, "etag", 4)) {
            m.etag_off = (uint32_t)(p - f);
            m.etag_len = h->value_len;
        } else if (sg_http_name_eq(h, "last-modified", 13)) {
            m.lm_off = (uint32_t)(p - f);
            m.lm_len = h->value_len;
        }
        memcpy(p, h->value, h->value_len);
        p += h->value_len;
        *p++ = '\r';
        *p++ = '\n';
    }
    m.fields_len = (uint32_t)(p - f);
    char *v = p;
    /* Vary names: lowercase, one NUL-terminated name each, duplicates and
     * empty items skipped. */
    for (uint32_t i = 0; i < resp->num_headers; i++) {
        const struct sg_http_header *h = &resp->headers[i];
        if (dropped(h, d) || !sg_http_name_eq(h, "vary", 4))
            continue;
        const char *cur = h->value, *end = h->value + h->value_len, *s;
        size_t len;
        while ((s = list_item(&cur, end, &len)) != NULL) {
            char *name = p;
            for (const char *c = s; c < s + len; c++)
                *p++ = *c >= 'A' && *c <= 'Z' ? (char)(*c + 32) : *c;
            *p++ = '\0';
            for (const char *q = v; q < name; q += strlen(q) + 1) {
                if (strcmp(q, name) == 0) {
                    p = name; /* a repeated name */
                    break;
                }
            }
        }
    }
    m.vary_len = (uint32_t)(p - v);
    memcpy(b, &m, sizeof(m));
    *out = b;
    *out_len = (size_t)(p - b);
    return 0;
}

void sg_cache_obj_set_body_len(char *head, uint64_t body_len) {
    struct sg_cache_meta m;
    memcpy(&m, head, sizeof(m));
    m.body_len = body_len;
    memcpy(head, &m, sizeof(m));
}

int sg_cache_obj_desc(const char *head, size_t head_len, char **out, size_t *out_len) {
    struct sg_cache_meta m;
    if (head_len < sizeof(m))
        return -1;
    memcpy(&m, head, sizeof(m));
    const char *vary = head + sizeof(m) + m.reason_len + m.fields_len;
    struct sg_cache_meta d;
    memset(&d, 0, sizeof(d));
    d.magic = SG_OBJ_MAGIC;
    d.status = m.status;
    d.flags = SG_OBJ_VARY_DESC;
    d.vary_len = m.vary_len;
    d.ttl_ms = m.ttl_ms;
    char *b = malloc(sizeof(d) + m.vary_len);
    if (b == NULL)
        return -1;
    memcpy(b, &d, sizeof(d));
    memcpy(b + sizeof(d), vary, m.vary_len);
    *out = b;
    *out_len = sizeof(d) + m.vary_len;
    return 0;
}

/* ---- serving ------------------------------------------------------------ */

static void put_u64(struct sg_out *o, uint64_t v) {
    char tmp[24];
    int n = 0;
    do {
        tmp[sizeof(tmp) - 1 - n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    sg_out_put(o, tmp + sizeof(tmp) - n, (size_t)n);
}

size_t sg_cache_serve_head_size(const struct sg_cache_obj *o, const struct sg_cache_serve *s) {
    return 160 + o->m.reason_len + o->m.fields_len + s->extra_len + strlen(s->x_cache);
}

/* Fields a 304 carries (RFC 9110 15.4.5), plus Last-Modified. */
static bool in_304(const char *line, size_t len) {
    static const char *const keep[] = {
        "cache-control:", "content-location:", "date:", "etag:", "expires:",
        "vary:",          "last-modified:"};
    for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++) {
        size_t k = strlen(keep[i]);
        if (len >= k && strncasecmp(line, keep[i], k) == 0)
            return true;
    }
    return false;
}

int sg_cache_serve_head(const struct sg_cache_obj *o, const struct sg_cache_serve *s, char *out,
                        size_t cap) {
    struct sg_out w = {out, out + cap};
    int status = s->not_modified ? 304 : o->m.status;
    char st[4] = {(char)('0' + status / 100), (char)('0' + status / 10 % 10),
                  (char)('0' + status % 10), ' '};
    SG_OUT_PUTS(&w, "HTTP/1.1 ");
    sg_out_put(&w, st, 4);
    if (s->not_modified)
        SG_OUT_PUTS(&w, "Not Modified");
    else
        sg_out_put(&w, o->reason, o->m.reason_len);
    SG_OUT_PUTS(&w, "\r\n");
    if (s->not_modified) {
        const char *p = o->fields, *end = o->fields + o->m.fields_len;
        while (p < end) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            size_t n = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
            if (in_304(p, n))
                sg_out_put(&w, p, n);
            p += n;
        }
    } else {
        sg_out_put(&w, o->fields, o->m.fields_len);
    }
    SG_OUT_PUTS(&w, "Age: ");
    put_u64(&w, s->age_s);
    SG_OUT_PUTS(&w, "\r\nX-Cache: ");
    sg_out_put(&w, s->x_cache, strlen(s->x_cache));
    SG_OUT_PUTS(&w, "\r\n");
    if (s->extra_len)
        sg_out_put(&w, s->extra, s->extra_len);
    SG_OUT_PUTS(&w, "Via: 1.1 scalegate\r\n");
    if (!s->not_modified && o->m.status != 204 && o->m.status >= 200) {
        SG_OUT_PUTS(&w, "Content-Length: ");
        put_u64(&w, o->m.body_len);
        SG_OUT_PUTS(&w, "\r\n");
    }
    if (!s->keep_alive)
        SG_OUT_PUTS(&w, "Connection: close\r\n");
    else if (s->client_http10)
        SG_OUT_PUTS(&w, "Connection: keep-alive\r\n");
    SG_OUT_PUTS(&w, "\r\n");
    if (sg_out_overflowed(&w))
        return -1;
    return (int)(w.p - out);
}

/* Whether tag (one entity-tag of an If-None-Match list) matches etag,
 * weakly (RFC 9110 8.8.3.2: W/ prefixes ignored). */
static bool etag_weak_eq(const char *a, size_t alen, const char *b, size_t blen) {
    if (alen >= 2 && a[0] == 'W' && a[1] == '/') {
        a += 2;
        alen -= 2;
    }
    if (blen >= 2 && b[0] == 'W' && b[1] == '/') {
        b += 2;
        blen -= 2;
    }
    return alen == blen && alen > 0 && memcmp(a, b, alen) == 0;
}

bool sg_cache_not_modified(const struct sg_cache_obj *o, const struct sg_http_msg *req) {
    if (o->m.status != 200)
        return false;
    const struct sg_http_header *inm = find(req, "if-none-match", 13);
    if (inm) {
        const char *etag = o->fields + o->m.etag_off;
        const char *p = inm->value, *end = inm->value + inm->value_len;
        while (p < end) {
            while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
                p++;
            const char *s = p;
            if (p < end && *p == '*')
                return true;
            if (p + 1 < end && p[0] == 'W' && p[1] == '/')
                p += 2;
            if (p < end && *p == '"') {
                const char *q = memchr(p + 1, '"', (size_t)(end - p - 1));
                if (q == NULL)
                    return false;
                p = q + 1;
            } else {
                while (p < end && *p != ',')
                    p++;
            }
            if (o->m.etag_len && etag_weak_eq(s, (size_t)(p - s), etag, o->m.etag_len))
                return true;
        }
        return false; /* If-None-Match present: If-Modified-Since is ignored */
    }
    const struct sg_http_header *ims = find(req, "if-modified-since", 17);
    if (ims && o->m.lm_len) {
        int64_t since = sg_http_date_parse(ims->value, ims->value_len);
        int64_t lm = sg_http_date_parse(o->fields + o->m.lm_off, o->m.lm_len);
        return since >= 0 && lm >= 0 && lm <= since;
    }
    return false;
}
