/*
 * The shared Redis link and leader leases on it.
 *
 * struct sg_redis is one asynchronous connection (hiredis async, driven by
 * libuv on the main thread's loop) to the Redis that several gateways share.
 * It connects by itself and reconnects by itself after a failure or a lost
 * connection, with a backoff of 100 ms doubling to 5 s; a loss is logged
 * once and the recovery once. The connect (name resolution included) and
 * every command have a 1 s timeout: a command whose reply has not arrived
 * after 1 s fails, and the connection is dropped and made again, since a
 * reply that late means the link or the server is stuck.
 *
 * Commands never wait for a connection: one issued while disconnected fails
 * at once (-ENOTCONN), and at most SG_REDIS_MAX_INFLIGHT commands await a
 * reply (-ENOBUFS beyond). Callbacks run from the loop, never from inside a
 * call into this module (not even an immediate failure: it is reported on
 * the next loop turn), sg_redis_free excepted; so a callback may issue
 * commands, free leases, or free the link itself.
 *
 * struct sg_lease is a leader lease on that link: among the gateways that
 * create a lease of the same name on the same Redis, at most one believes it
 * holds it at any moment (given clocks that run at a sane rate). The key is
 * prefix + "lease:" + name, its value the gateway's node id. Every ttl/3 the
 * lease tries to acquire the key (SET key id NX PX ttl) or, when held, to
 * renew it (a script that runs PEXPIRE only if GET key == id). Leadership
 * starts only from a confirmed acquire or renewal and lasts until
 * send time + ttl - margin (margin = ttl/10 + 2 ms), measured on the
 * monotonic clock from when the command was sent, so it always ends before
 * the key can expire in Redis. It ends sooner when a renewal answers 0
 * (another gateway holds the key), fails, or Redis is unreachable. A lease
 * that stepped down on an error may still own the key in Redis; its next
 * attempt reclaims it with the renew script and, if that answers 0, acquires
 * with SET NX at once. The autoscaler runs a pool's policy only while
 * sg_lease_held() is true.
 *
 * Ownership: the caller owns the sg_redis and each sg_lease and frees them
 * with the functions below; free every lease of a link before the link.
 * Both are used from the loop's thread only.
 */
#ifndef SG_REDIS_REDIS_H
#define SG_REDIS_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define SG_REDIS_DEFAULT_PORT    6379
#define SG_REDIS_CONNECT_TIMEOUT 1000 /* ms, name resolution included */
#define SG_REDIS_COMMAND_TIMEOUT 1000 /* ms */
#define SG_REDIS_BACKOFF_MIN     100  /* ms, first retry after a failure */
#define SG_REDIS_BACKOFF_MAX     5000 /* ms */
#define SG_REDIS_MAX_INFLIGHT    4096 /* commands awaiting a reply */
#define SG_REDIS_NODE_ID_MAX     300  /* bytes of a node id, NUL included */
#define SG_REDIS_MAX_SCRIPTS     16   /* EVAL bodies sent as EVALSHA; more go as EVAL */
#define SG_REDIS_MAX_EVAL_ARGS   64   /* longer EVAL commands go as they are */

struct sg_redis;
struct sg_lease;

/* ---- the link ---- */

/* Parses "redis://host:port", "host:port", "host", "[v6]:port", "[v6]" or a
 * bare IPv6 literal; an optional trailing "/" or "/0" (database 0) is
 * accepted. The port defaults to 6379. Writes the host without brackets,
 * NUL-terminated, to host. Returns 0, -EINVAL on anything else (a user or
 * password, another database, a bad port, stray characters), or
 * -ENAMETOOLONG when host does not fit in hostlen. */
int sg_redis_parse_url(const char *url, char *host, size_t hostlen, uint16_t *port);

/* Creates a link to host:port on loop (the main thread's loop) and starts
 * connecting on the next loop turn; it never blocks (a host name is
 * resolved with uv_getaddrinfo). prefix (e.g. "sg:", NULL for none) is put
 * before every key this module builds; keys given to the command functions
 * are used as they are. The node id, "hostname:pid:<random 64-bit hex>", is
 * made here. Returns NULL on bad input (empty host, port 0) or ENOMEM. */
struct sg_redis *sg_redis_new(uv_loop_t *loop, const char *host, uint16_t port, const char *prefix);

/* Whether the connection is up now (commands are being sent). */
bool sg_redis_connected(const struct sg_redis *r);

/* This gateway's unique id, the value of the lease keys it holds. Owned by r. */
const char *sg_redis_node_id(const struct sg_redis *r);

/* The key prefix given to sg_redis_new ("" for none). Owned by r. */
const char *sg_redis_prefix(const struct sg_redis *r);

/* Frees r. Callbacks that have not run yet run now, before this returns:
 * commands that completed with their result, commands still awaiting a reply
 * with -ECANCELED; commands issued from those callbacks fail with
 * -ESHUTDOWN. Commands already written (a lease release, say) still go out:
 * the connection is closed gracefully, or after 1 s at the latest. The
 * caller keeps running the loop until the handles have closed (uv_run
 * returns); then r's memory is gone. Every lease of r must have been freed
 * first. May be called from a callback of this module. */
void sg_redis_free(struct sg_redis *r);

/* ---- commands ---- */

enum sg_redis_reply_type {
    SG_REDIS_REPLY_NIL = 0, /* a null bulk or null array */
    SG_REDIS_REPLY_INTEGER, /* integer */
    SG_REDIS_REPLY_STRING,  /* bulk string: str, len */
    SG_REDIS_REPLY_STATUS,  /* status ("OK"): str, len */
    SG_REDIS_REPLY_ERROR,   /* error message: str, len (err is -EREMOTEIO) */
    SG_REDIS_REPLY_ARRAY,   /* array: integer is the element count; elements are not kept */
    SG_REDIS_REPLY_TYPE_COUNT
};

/* A reply, valid only during the callback. */
struct sg_redis_reply {
    enum sg_redis_reply_type type;
    long long integer;
    const char *str; /* NUL-terminated; NULL unless STRING, STATUS, ERROR */
    size_t len;
};

/* Called exactly once per command that was accepted (returned 0). err is 0
 * with a reply, or negative: -EREMOTEIO (Redis answered an error: reply is
 * its message), or, with reply NULL, -ENOTCONN (not connected when issued),
 * -ENOBUFS (too many commands in flight), -ETIMEDOUT (no reply within the
 * command timeout), -ECONNRESET (the connection was lost before the reply),
 * -ECANCELED (sg_redis_free), -ENOMEM. */
typedef void (*sg_redis_reply_cb)(void *arg, const struct sg_redis_reply *reply, int err);

/* Sends the command argv[0..argc-1] (argvlen[i] bytes each; argvlen NULL:
 * NUL-terminated strings). An EVAL whose script this connection has sent
 * before goes out as EVALSHA (redis.c, "Scripts"); after a SCRIPT FLUSH
 * such a command fails with -EREMOTEIO ("NOSCRIPT ...") and the next one
 * sends the script again. cb may be NULL (fire and forget). Returns 0 when
 * cb will be called (once, later), or, with no callback to come, -EINVAL
 * (argc < 1), -ENOMEM, or -ESHUTDOWN (r is being freed). */
int sg_redis_command_argv(struct sg_redis *r, int argc, const char *const *argv,
                          const size_t *argvlen, sg_redis_reply_cb cb, void *arg);

/* LLEN of key (taken as is, no prefix: it is the user's queue). cb gets the
 * length (0 for a missing key) with err 0, or err < 0 as for
 * sg_redis_reply_cb (-EREMOTEIO for a key that is not a list, -EPROTO for a
 * reply that is not an integer). Returns as sg_redis_command_argv. */
int sg_redis_llen(struct sg_redis *r, const char *key,
                  void (*cb)(void *arg, long long len, int err), void *arg);

/* ---- leader leases ---- */

/* Creates the lease name (non-empty) on r with ttl_ms (at least 100) and
 * starts trying to acquire it on the next loop turn. on_change(arg, leader)
 * is called, from the loop, on every change of leadership (never from
 * inside a call to this module, never after sg_lease_free); it may free the
 * lease. Only one lease per name per link: a second one would share the
 * node id and so the key. Returns NULL on bad input or ENOMEM. */
struct sg_lease *sg_lease_new(struct sg_redis *r, const char *name, uint64_t ttl_ms,
                              void (*on_change)(void *arg, bool leader), void *arg);

/* Whether this gateway holds the lease now: a confirmed acquire or renewal
 * whose validity has not run out. It can turn false a moment before the
 * on_change(false) that reports it (the check reads the clock). */
bool sg_lease_held(const struct sg_lease *l);

/* Releases the lease (a compare-and-delete script, fire and forget, sent
 * when the key may be this gateway's) and frees it. No on_change follows. */
void sg_lease_free(struct sg_lease *l);

/* Frees the lease without releasing it, as if the gateway had died: the key
 * stays until its ttl runs out (tests). */
void sg_lease_abandon(struct sg_lease *l);

#endif
