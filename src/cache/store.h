/*
 * Memory tier (L1) of the response cache: a store of immutable,
 * reference-counted entries shared by every worker thread. It knows nothing
 * of HTTP: a key is bytes (the caller builds it from method, host, path,
 * query and vary headers and hashes it), an entry's data is the stored
 * response, opaque here.
 *
 * Layout: SG_CACHE_SHARDS shards chosen by the key hash (mixed with a
 * random per-store seed), each behind its own mutex: no global lock. A
 * shard is a chained hash table (grows by doubling at load 1; a failed
 * growth only makes chains longer) keyed by the 64-bit hash with a full key
 * compare, so two keys with the same hash are both kept, plus an LRU list.
 * A lookup does not allocate; a put allocates one small node.
 *
 * Memory: each shard may hold entries whose charges sum to at most
 * cap_bytes / SG_CACHE_SHARDS; a put evicts the shard's least recently
 * used entries until the new one fits. An entry's charge is key_len + len +
 * SG_CACHE_ENTRY_OVERHEAD, which covers the entry header, the store's node
 * and allocator headers, so the charges are the entries' memory. Beyond
 * the cap: the store head (about 12 KiB), the bucket arrays
 * (8 bytes per bucket, at most 2 buckets per entry a shard has held at
 * once, at least 16 per used shard; they never shrink, so at most
 * cap / 12 + 8 KiB), and entries already evicted, replaced or removed that
 * readers still hold references to (freed by their last unref).
 *
 * Expiry: an entry is fresh until expires_ms and may be served stale until
 * stale_until_ms; the store only drops it once now >= stale_until_ms (on a
 * get, or by LRU eviction). Fresh or stale is the caller's decision, from
 * expires_ms. Times are monotonic milliseconds given by the caller.
 */
#ifndef SG_CACHE_STORE_H
#define SG_CACHE_STORE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SG_CACHE_SHARDS         64  /* shards per store, each with its lock */
#define SG_CACHE_ENTRY_OVERHEAD 192 /* bytes charged per entry beyond key and data */

struct sg_cache_store;

/* A store holding at most cap_bytes of entry charges (cap_bytes /
 * SG_CACHE_SHARDS per shard; a cap below SG_CACHE_SHARDS * (key + data +
 * overhead) refuses such entries). Returns NULL when out of memory. The
 * caller owns the store and frees it with sg_cache_store_free once no
 * thread uses it; that drops the store's references to its entries
 * (entries still referenced by readers stay valid until their unref). */
struct sg_cache_store *sg_cache_store_new(size_t cap_bytes);
void sg_cache_store_free(struct sg_cache_store *s);

/* An entry: immutable once made (every field but refs), reference-counted
 * (atomic), so a reader keeps it while it writes it to a client even if it
 * is evicted or replaced meanwhile. key and data point into the entry's
 * own allocation (key is also NUL-terminated); the entry is freed, with
 * them, by the unref that takes refs to 0. */
struct sg_cache_entry {
    _Atomic uint32_t refs;
    uint64_t key_hash;       /* the caller's 64-bit hash of the key */
    char *key;               /* the full key, compared on lookup (no collisions) */
    size_t key_len;          /* bytes of key, NUL not counted */
    uint64_t stored_ms;      /* monotonic ms when stored */
    uint64_t expires_ms;     /* fresh until then */
    uint64_t stale_until_ms; /* may be served stale until then (>= expires_ms) */
    char *data;              /* the stored response bytes (head + body), opaque to the store */
    size_t len;              /* bytes of data */
    size_t charge;           /* bytes counted against the cap: key_len + len + overhead */
    uint64_t group;          /* invalidation group (0 from sg_cache_entry_new) */
    uint64_t version;        /* from sg_cache_version; 0 (the default): never invalidated */
};

/* Makes an entry with refs 1, owned by the caller, copying key and data
 * (key may be NULL when key_len is 0, data when len is 0). stale_until_ms
 * below expires_ms is raised to it. Returns NULL when out of memory or when
 * the sizes overflow. */
struct sg_cache_entry *sg_cache_entry_new(uint64_t key_hash, const char *key, size_t key_len,
                                          const char *data, size_t len, uint64_t stored_ms,
                                          uint64_t expires_ms, uint64_t stale_until_ms);

/* group and version start at 0; the maker may set them before it shares
 * the entry (puts it in a store or hands it to another thread). */

/* Takes one more reference to e; any thread. */
void sg_cache_entry_ref(struct sg_cache_entry *e);
/* Drops one reference; the last one frees e. NULL is ignored. */
void sg_cache_entry_unref(struct sg_cache_entry *e);

/* Stores e; the store takes its own reference (the caller keeps its own and
 * still unrefs it). An entry with the same key is replaced (its store
 * reference dropped). Evicts the shard's least recently used entries until
 * e fits. Returns 0, -E2BIG when e->charge exceeds the shard's share of the
 * cap (nothing changes, nothing is evicted), -ESTALE when an invalidation
 * or a prefix purge newer than e's version covers it (nothing changes),
 * -ENOMEM when the node cannot be allocated (nothing changes). Thread-safe. The same entry may be
 * put into several stores. */
int sg_cache_put(struct sg_cache_store *s, struct sg_cache_entry *e);

/* Looks up key (its hash key_hash as given to sg_cache_entry_new): returns
 * the entry with a new reference for the caller (unref it when done) and
 * moves it to the front of its shard's LRU, or NULL. An entry with now_ms
 * >= stale_until_ms is removed (counted as expired and as a miss) and NULL
 * returned. Counts a hit or a miss. Thread-safe; never allocates. */
struct sg_cache_entry *sg_cache_get(struct sg_cache_store *s, uint64_t key_hash, const char *key,
                                    size_t key_len, uint64_t now_ms);

/* Removes key; returns 1 if it was there, else 0. Thread-safe. */
int sg_cache_remove(struct sg_cache_store *s, uint64_t key_hash, const char *key, size_t key_len);

/* Removes every entry whose key starts with prefix (len bytes; len 0
 * removes everything): a purge by prefix, O(entries), each shard locked in
 * turn. The purge is remembered (the last 64), so a later put of an entry
 * with an older version and a key under prefix gets -ESTALE. Returns how
 * many were removed. Thread-safe. */
size_t sg_cache_remove_prefix(struct sg_cache_store *s, const char *prefix, size_t len);

/* Removes every entry. Thread-safe (shard by shard, as above). */
void sg_cache_clear(struct sg_cache_store *s);

/*
 * Invalidation without a scan. The store keeps a version clock and
 * SG_CACHE_GROUP_SLOTS stamps. sg_cache_version returns the next version
 * (>= 1): take one when the response that becomes an entry is requested,
 * and set it as the entry's version. sg_cache_invalidate_group stamps the
 * group's slot (group % slots) with a new version; sg_cache_invalidate_all
 * stamps every group. From then on a get drops (and counts as expired and
 * missed) every entry of that slot whose version is not newer than the
 * stamp: entries stored before, and entries requested before but stored
 * after. Groups sharing a slot are invalidated together (a spurious miss,
 * never a stale hit). Entries with version 0 are not affected.
 */
#define SG_CACHE_GROUP_SLOTS 16384
uint64_t sg_cache_version(struct sg_cache_store *s);
void sg_cache_invalidate_group(struct sg_cache_store *s, uint64_t group);
void sg_cache_invalidate_all(struct sg_cache_store *s);
/* Whether e (not yet stored, say) is already out of date: an invalidation
 * or a prefix purge newer than its version covers it. Thread-safe. */
bool sg_cache_outdated(struct sg_cache_store *s, const struct sg_cache_entry *e);

/* Changes the cap (a reload); a lower one evicts least recently used
 * entries at once until every shard fits. Thread-safe. */
void sg_cache_store_set_cap(struct sg_cache_store *s, size_t cap_bytes);

/* Counters since the store was made, summed over shards (each shard read
 * under its lock, so exact when nothing runs meanwhile): entries and bytes
 * (sum of charges) held now, cap (as last given to sg_cache_store_new or _set_cap; bytes <=
 * cap always), evictions (entries pushed out by the LRU to make room),
 * inserts (successful puts, replacements included), hits, misses (gets
 * returning NULL), expired (entries dropped by a get past stale_until_ms;
 * also counted as misses). */
struct sg_cache_stats {
    uint64_t entries, bytes, cap, evictions, inserts, hits, misses, expired;
};
void sg_cache_stats(struct sg_cache_store *s, struct sg_cache_stats *out);

#endif
