"""Pools: balancing algorithms (weighted, least_conn, hash with a reload),
active health checks, passive ejection (5xx and timeouts), retries and
failover (connect failures, a backend killed under load), backup servers,
the all-down 503, read/write split routes, and no fd/memory growth from
upstream errors.

Timing bounds are generous (several times the configured intervals): they
catch "never" and "much too late", not small delays. Per-backend traffic is
counted from the backends' own logs (target prefixes separate the phases of
a test) or from the X-Backend response header."""
import collections
import os
import re
import threading
import time

import pytest

from conftest import free_port, wait_until
from rawhttp import Conn, get

# A fast health check for the failover tests.
HEALTH = {"interval": "500ms", "timeout": "300ms", "fall": 2, "rise": 2}
HEALTH_FAST = {"interval": "300ms", "timeout": "300ms", "fall": 2, "rise": 2}


# --------------------------------------------------------------------------
# Helpers


class Client:
    """A keep-alive client connection that reconnects when the gateway
    closes it (Connection: close). Any error is raised to the caller after
    dropping the connection."""

    def __init__(self, port, timeout=10.0):
        self.port = port
        self.timeout = timeout
        self.c = None

    def request(self, method="GET", target="/", headers=None, body=None):
        if self.c is None:
            self.c = Conn(self.port, timeout=self.timeout)
        try:
            self.c.request(method, target, headers=headers, body=body)
            r = self.c.read_response(method)
        except Exception:
            self.close()
            raise
        if "close" in r.connection_tokens():
            self.close()
        return r

    def close(self):
        if self.c is not None:
            self.c.close()
            self.c = None


def fan_out(port, jobs, nthreads, timeout=10.0):
    """Runs jobs [(method, target, headers)] over nthreads keep-alive
    clients (job i on thread i % nthreads). Returns, in job order, (status
    or the exception's repr, X-Backend or None)."""
    results = [None] * len(jobs)

    def worker(k):
        cl = Client(port, timeout)
        try:
            for i in range(k, len(jobs), nthreads):
                m, t, h = jobs[i]
                try:
                    r = cl.request(m, t, headers=h)
                    results[i] = (r.status, r.header("x-backend"))
                except Exception as e:  # noqa: BLE001 - reported by the caller
                    results[i] = (repr(e), None)
        finally:
            cl.close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "client threads did not finish in 120 s"
    return results


def run_for(port, nthreads, seconds, target):
    """nthreads keep-alive clients sending GET target/<thread>/<n> in a loop
    for `seconds`. Returns [(start, latency, status or repr(exception),
    X-Backend)]."""
    results = []
    stop_at = time.monotonic() + seconds

    def worker(k):
        cl = Client(port, timeout=10)
        n = 0
        try:
            while time.monotonic() < stop_at:
                t0 = time.monotonic()
                try:
                    r = cl.request("GET", "%s/%d/%d" % (target, k, n))
                    results.append((t0, time.monotonic() - t0, r.status, r.header("x-backend")))
                except Exception as e:  # noqa: BLE001 - reported by the caller
                    results.append((t0, time.monotonic() - t0, repr(e), None))
                n += 1
        finally:
            cl.close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(nthreads)]
    for t in threads:
        t.start()
    return threads, results


def join_all(threads, timeout=60):
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "client threads still running"


def state_re(pool, addr, state):
    """The spec's state-change log line: "pool app: server 127.0.0.1:9001 is
    DOWN (connect refused; 3 checks failed)"."""
    return re.compile(r"pool %s: server %s is %s\b" % (re.escape(pool), re.escape(addr), state))


def wait_log(gw, pattern, timeout, start=0):
    """Waits until the gateway log (from offset start) matches pattern;
    returns the time.monotonic() it was first seen, or None."""
    found = wait_until(lambda: pattern.search(gw.log()[start:]), timeout, interval=0.05)
    return time.monotonic() if found else None


def targets(be, prefix):
    return [h["target"] for h in be.heads() if h["target"].startswith(prefix)]


def dead_ports(n):
    """n distinct loopback ports with nothing listening."""
    out = []
    while len(out) < n:
        p = free_port()
        if p not in out:
            out.append(p)
    return out


def nfds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def bad(results):
    return [r for r in results if r[0] != 200]


# --------------------------------------------------------------------------
# 1. Failover under load: a backend killed with SIGKILL


def test_failover_under_load_kill9(gateway, backend):
    """Three backends, round robin, health checks every 500 ms (fall 2,
    rise 2). Eight keep-alive clients send GETs for 6 s; after 2 s one
    backend is killed with SIGKILL. Every request must succeed (requests in
    flight on the dead backend, or sent on its pooled connections, fail
    before any response byte and are retried on another server; new
    connects are refused and retried). The kill is logged as DOWN within
    fall x interval (+ slack). A backend restarted on the same port is
    logged UP after rise passes and gets traffic again."""
    a, b, c = backend("A"), backend("B"), backend("C")
    pool = {"servers": [a, b, c], "balance": "round_robin", "health": HEALTH}
    gw = gateway(pools={"app": pool})
    for i in range(6):
        r = get(gw.port, "/warm/%d" % i)
        assert r.status == 200, r

    threads, results = run_for(gw.port, 8, 6.0, "/load")
    time.sleep(2.0)
    mark = len(gw.log())
    b_port, b_addr = b.port, b.addr
    before_kill = len(targets(b, "/load"))
    t_kill = time.monotonic()
    b.kill()
    t_down = wait_log(gw, state_re("app", b_addr, "DOWN"), 10, start=mark)
    join_all(threads)

    assert results, "no requests were made"
    failed = bad([(s, be) for _, _, s, be in results])
    lat = sorted(x[1] for x in results)
    max_lat = lat[-1]
    p99 = lat[int(len(lat) * 0.99) - 1]
    after_kill = [x for x in results if x[0] >= t_kill]
    print("failover: %d requests (%d after the kill), %d failed, max latency %.3f s, "
          "p99 %.3f s; DOWN logged %s s after the kill"
          % (len(results), len(after_kill), len(failed), max_lat, p99,
             "%.2f" % (t_down - t_kill) if t_down else "never"))
    assert before_kill > 0, "B got no load before it was killed"
    assert len(after_kill) > 100, "too little load after the kill: %d" % len(after_kill)
    assert not failed, "%d of %d requests failed around the kill, e.g. %r" % (
        len(failed), len(results), collections.Counter(s for s, _ in failed).most_common(5))
    slowest = [(round(x[0] - t_kill, 3), round(x[1], 3), x[2], x[3])
               for x in sorted(results, key=lambda x: -x[1])[:5]]
    # Generous: the bound is for stalls (a connect_timeout is 5 s); make bench
    # measures the real maximum (target < 50 ms) on the release build.
    assert max_lat < 2.0, "max latency %.3f s (p99 %.3f s); slowest (start - kill time, " \
        "latency, status, backend): %r" % (max_lat, p99, slowest)
    assert t_down is not None, "no 'pool app: server %s is DOWN' within 10 s of the kill; log:\n%s" % (
        b_addr, gw.log()[mark:][-3000:])
    # fall x interval = 1 s; slack for check timing and a slow machine
    assert t_down - t_kill < 1.0 + 2.5, "DOWN logged %.2f s after the kill" % (t_down - t_kill)
    # no response came from B after it was DOWN (it was dead anyway)
    assert all(x[3] != "B" for x in results if x[0] > t_down), "response from the dead B"

    # Restart B on the same port: UP after rise (2) passes.
    mark = len(gw.log())
    t_restart = time.monotonic()
    b2 = backend("B2", port=b_port)
    t_up = wait_log(gw, state_re("app", b_addr, "UP"), 10, start=mark)
    assert t_up is not None, "restarted backend not logged UP within 10 s; log:\n%s" % (
        gw.log()[mark:][-3000:])
    # rise x interval = 1 s, plus slack
    assert t_up - t_restart < 1.0 + 3.0, "UP logged %.2f s after the restart" % (t_up - t_restart)
    cl = Client(gw.port)
    try:
        for i in range(30):
            r = cl.request("GET", "/again/%d" % i)
            assert r.status == 200, r
    finally:
        cl.close()
    got = targets(b2, "/again")
    assert len(got) >= 5, "restarted backend got %d of 30 requests (round robin over 3)" % len(got)


def test_slow_start_ramps_recovered_server(gateway, backend):
    """weighted, weights 100:100, slow_start 4s: right after a server comes
    back UP it gets a small share, which grows to its full half."""
    a, b = backend("A"), backend("B")
    pool = {"servers": [{"address": a, "weight": 100}, {"address": b, "weight": 100}],
            "balance": "weighted", "health": HEALTH, "slow_start": "4s"}
    gw = gateway(pools={"app": pool}, workers=1)
    b_port, b_addr = b.port, b.addr
    mark = len(gw.log())
    b.kill()
    assert wait_log(gw, state_re("app", b_addr, "DOWN"), 10, start=mark), gw.log()[mark:]
    mark = len(gw.log())
    b2 = backend("B2", port=b_port)
    assert wait_log(gw, state_re("app", b_addr, "UP"), 10, start=mark), gw.log()[mark:]
    cl = Client(gw.port)
    try:
        early = [cl.request("GET", "/early/%d" % i).header("x-backend") for i in range(100)]
        time.sleep(4.5)
        late = [cl.request("GET", "/late/%d" % i).header("x-backend") for i in range(200)]
    finally:
        cl.close()
    share_early = early.count("B2") / len(early)
    share_late = late.count("B2") / len(late)
    print("slow start: B2 share %.2f right after UP, %.2f after slow_start" %
          (share_early, share_late))
    assert share_early < 0.30, early
    assert 0.42 <= share_late <= 0.58, late


# --------------------------------------------------------------------------
# 2. Passive ejection on 5xx


def test_outlier_5xx_ejects_then_retries(gateway, backend):
    """A backend that answers 500 to everything, consecutive_5xx: 3,
    base_ejection: 2s: after its third 500 it gets no requests for a while
    (the others take them all), and once the ejection has run out it is
    tried again."""
    bad_be = backend("BAD", status=500)
    g1, g2 = backend("G1"), backend("G2")
    pool = {"servers": [bad_be, g1, g2], "balance": "round_robin",
            "outlier": {"consecutive_5xx": 3, "base_ejection": "2s"}}
    gw = gateway(pools={"app": pool})
    cl = Client(gw.port)
    try:
        statuses = []
        for i in range(40):
            if len(targets(bad_be, "/warm")) >= 3:
                break
            r = cl.request("GET", "/warm/%d" % i)
            statuses.append((r.status, r.header("x-backend")))
        assert len(targets(bad_be, "/warm")) == 3, (targets(bad_be, "/warm"), statuses)
        assert all(s == 200 or (s == 500 and be == "BAD") for s, be in statuses), statuses
        t_eject = time.monotonic()
        time.sleep(0.05)

        # Window well inside the 2 s ejection: nothing to BAD.
        window = []
        while time.monotonic() - t_eject < 1.2 and len(window) < 60:
            r = cl.request("GET", "/win/%d" % len(window))
            window.append((r.status, r.header("x-backend")))
        assert len(window) >= 5, "only %d requests in the window" % len(window)
        to_bad = targets(bad_be, "/win")
        assert not to_bad, "ejected backend got %d of %d requests within 1.2 s of its "\
            "ejection (base_ejection 2s)" % (len(to_bad), len(window))
        assert all(s == 200 for s, _ in window), window
        assert {be for _, be in window} == {"G1", "G2"}, window

        # After the ejection: BAD is tried again.
        t_back = None
        n = 0
        while time.monotonic() - t_eject < 10:
            t0 = time.monotonic()
            cl.request("GET", "/after/%d" % n)
            n += 1
            if targets(bad_be, "/after"):
                t_back = t0
                break
            time.sleep(0.02)
        assert t_back is not None, "ejected backend not tried again within 10 s (%d requests)" % n
        print("5xx ejection: BAD tried again %.2f s after its ejection" % (t_back - t_eject))
        assert t_back - t_eject >= 1.5, "BAD tried again after only %.2f s" % (t_back - t_eject)
    finally:
        cl.close()


# --------------------------------------------------------------------------
# 3. Passive ejection on timeouts


def test_outlier_timeouts_eject_blackhole(gateway, backend):
    """A backend that accepts and never answers, response_timeout 500ms,
    consecutive_errors: 2: after two timed-out requests (504, or 200 if the
    gateway retried them elsewhere) it is ejected and every later request
    succeeds on the healthy server."""
    hole = backend("HOLE", blackhole=True)
    good = backend("GOOD")
    pool = {"servers": [hole, good], "balance": "round_robin", "response_timeout": "500ms",
            "outlier": {"consecutive_errors": 2, "base_ejection": "30s"}}
    gw = gateway(pools={"app": pool})
    early = []
    for i in range(12):
        if len(targets(hole, "/early")) >= 2:
            break
        t0 = time.monotonic()
        r = get(gw.port, "/early/%d" % i, timeout=15)
        early.append((r.status, r.header("x-backend"), round(time.monotonic() - t0, 2)))
    assert len(targets(hole, "/early")) >= 2, early
    assert all(s in (200, 504) for s, _, _ in early), early

    after = []
    for i in range(20):
        t0 = time.monotonic()
        r = get(gw.port, "/after/%d" % i, timeout=15)
        after.append((r.status, r.header("x-backend"), round(time.monotonic() - t0, 2)))
    assert all(s == 200 and be == "GOOD" for s, be, _ in after), \
        "after two timeouts (early: %r), not all requests succeed on GOOD: %r" % (early, after)
    assert not targets(hole, "/after"), "ejected backend still gets requests: %r" % (
        targets(hole, "/after"),)


# --------------------------------------------------------------------------
# 4. Distribution


def test_weighted_3_to_1(gateway, backend):
    a, b = backend("A"), backend("B")
    pool = {"servers": [{"address": a, "weight": 3}, {"address": b, "weight": 1}],
            "balance": "weighted"}
    gw = gateway(pools={"app": pool})
    n = 4000
    res = fan_out(gw.port, [("GET", "/w/%d" % i, None) for i in range(n)], 8)
    assert not bad(res), bad(res)[:5]
    counts = collections.Counter(be for _, be in res)
    share = counts["A"] / n
    print("weighted 3:1: %r, A share %.3f" % (dict(counts), share))
    assert 0.72 <= share <= 0.78, "A (weight 3) got %.1f%% of %d requests: %r" % (
        share * 100, n, dict(counts))


def test_least_conn_prefers_fast_backend(gateway, backend):
    """One backend takes 100 ms per request, the other answers at once; with
    16 concurrent clients least_conn sends most requests to the fast one
    (round robin would split them evenly)."""
    slow = backend("SLOW", delay_ms=100)
    fast = backend("FAST")
    gw = gateway(pools={"app": {"servers": [slow, fast], "balance": "least_conn"}})
    threads, results = run_for(gw.port, 16, 3.0, "/lc")
    join_all(threads)
    statuses = [(s, be) for _, _, s, be in results]
    assert not bad(statuses), bad(statuses)[:5]
    counts = collections.Counter(be for _, be in statuses)
    share = counts["FAST"] / len(statuses)
    print("least_conn: %r, FAST share %.3f" % (dict(counts), share))
    assert len(statuses) > 100, len(statuses)
    assert share > 0.70, "FAST got %.1f%% of %d requests: %r" % (
        share * 100, len(statuses), dict(counts))


def test_hash_header_sticky_and_stable_over_reload(gateway, backend):
    """balance: hash on header:X-Device-ID. 10,000 device ids, one request
    each over keep-alive connections; repeated requests for a sample of ids
    reach the same server; after a reload adding a fourth server at most
    30% of the ids move (consistent hashing: ~25%); requests without the
    header fall back to round robin."""
    be = [backend("H%d" % i) for i in range(1, 5)]
    hdr = "X-Device-ID"

    def pool(servers):
        return {"servers": servers, "balance": "hash", "hash_key": "header:" + hdr}

    gw = gateway(pools={"app": pool(be[:3])})
    keys = ["dev-%05d" % i for i in range(10000)]

    def map_keys(ks, tag):
        res = fan_out(gw.port, [("GET", "/%s/%s" % (tag, k), [(hdr, k)]) for k in ks], 8)
        assert not bad(res), "%d failed, e.g. %r" % (len(bad(res)), bad(res)[:5])
        return {k: b for k, (_, b) in zip(ks, res)}

    t0 = time.monotonic()
    first = map_keys(keys, "a")
    took = time.monotonic() - t0
    counts = collections.Counter(first.values())
    print("hash, 3 servers: %r (%.1f s for %d requests)" % (dict(counts), took, len(keys)))
    assert set(counts) == {"H1", "H2", "H3"}, counts
    assert min(counts.values()) >= 0.10 * len(keys), "very uneven: %r" % counts

    # sticky: a sample asked twice more, over other connections
    sample = keys[::37]
    for rep in range(2):
        again = map_keys(sample, "s%d" % rep)
        moved = [k for k in sample if again[k] != first[k]]
        assert not moved, "%d of %d ids changed server without any change: %r" % (
            len(moved), len(sample), [(k, first[k], again[k]) for k in moved[:5]])

    # no header: fallback (round robin), still served
    res = fan_out(gw.port, [("GET", "/nokey/%d" % i, None) for i in range(30)], 1)
    assert not bad(res), res
    assert len({b for _, b in res}) >= 2, "requests without %s all went to one server: %r" % (
        hdr, res)

    # reload with a fourth server
    mark = len(gw.log())
    gw.reload(gw.render(pools={"app": pool(be)}))
    assert wait_until(lambda: "reloaded" in gw.log()[mark:], 10), gw.log()[mark:]
    probe = [0]

    def h4_used():
        for _ in range(20):
            probe[0] += 1
            r = get(gw.port, "/probe/%d" % probe[0], headers=[(hdr, "probe-%d" % probe[0])])
            if r.header("x-backend") == "H4":
                return True
        return False
    assert wait_until(h4_used, 10, interval=0.1), "new server H4 not used after the reload"
    time.sleep(0.5)  # every worker has the new snapshot

    second = map_keys(keys, "b")
    moved = [k for k in keys if second[k] != first[k]]
    counts2 = collections.Counter(second.values())
    to_new = sum(1 for k in moved if second[k] == "H4")
    print("hash, 4 servers: %r; %d ids moved (%.1f%%), %d of them to H4"
          % (dict(counts2), len(moved), 100.0 * len(moved) / len(keys), to_new))
    assert counts2["H4"] >= 0.05 * len(keys), "new server got few ids: %r" % counts2
    assert len(moved) <= 0.30 * len(keys), "%.1f%% of ids moved after adding a 4th server" % (
        100.0 * len(moved) / len(keys))
    res = fan_out(gw.port, [("GET", "/nokey2/%d" % i, None) for i in range(20)], 1)
    assert not bad(res), res


# --------------------------------------------------------------------------
# 5. All servers down; backup servers


@pytest.mark.parametrize("kind", ["closed", "blackhole"])
def test_all_down_503_at_once(gateway, backend, kind):
    """Every server marked DOWN by the health checks: 503 with Retry-After,
    at once, even though connect_timeout is 5s and response_timeout 10s
    (the blackhole servers accept and never answer: trying one would take
    10 s and end in 504)."""
    if kind == "closed":
        addrs = ["127.0.0.1:%d" % p for p in dead_ports(2)]
        servers = addrs
    else:
        servers = [backend("H1", blackhole=True), backend("H2", blackhole=True)]
        addrs = [s.addr for s in servers]
    pool = {"servers": servers, "connect_timeout": "5s", "response_timeout": "10s",
            "health": HEALTH_FAST}
    gw = gateway(pools={"app": pool})
    for addr in addrs:
        assert wait_log(gw, state_re("app", addr, "DOWN"), 10), \
            "%s not logged DOWN within 10 s; log:\n%s" % (addr, gw.log()[-3000:])
    for i in range(5):
        t0 = time.monotonic()
        r = get(gw.port, "/down/%d" % i, timeout=20)
        took = time.monotonic() - t0
        assert r.status == 503, r
        ra = r.header("retry-after")
        assert ra is not None and ra.strip().isdigit(), "Retry-After: %r in %r" % (ra, r)
        assert took < 2.0, "503 after %.2f s" % took
    if kind == "blackhole":
        assert not [t for s in servers for t in targets(s, "/down")], "request sent to a DOWN server"


def test_backup_used_only_when_primaries_down(gateway, backend):
    p1 = backend("P1")
    bk = backend("BK")
    dead = "127.0.0.1:%d" % dead_ports(1)[0]
    pool = {"servers": [p1, dead], "backup": [bk], "health": HEALTH_FAST}
    gw = gateway(pools={"app": pool})
    assert wait_log(gw, state_re("app", dead, "DOWN"), 10), gw.log()[-3000:]
    # one primary left: it takes everything, the backup nothing
    for i in range(20):
        r = get(gw.port, "/primary/%d" % i)
        assert r.status == 200 and r.header("x-backend") == "P1", r
    assert not targets(bk, "/primary"), "backup used while a primary is up"

    mark = len(gw.log())
    p1.kill()
    assert wait_log(gw, state_re("app", p1.addr, "DOWN"), 10, start=mark), gw.log()[mark:][-3000:]
    for i in range(20):
        r = get(gw.port, "/backup/%d" % i)
        assert r.status == 200 and r.header("x-backend") == "BK", r
    assert len(targets(bk, "/backup")) == 20


# --------------------------------------------------------------------------
# 6. Read/write split


def test_read_write_split(gateway, backend):
    reads, writes = backend("READS"), backend("WRITES")
    gw = gateway(pools={"writes": [writes], "reads": [reads]},
                 routes=[{"match": {"path_prefix": "/api"}, "pool": "writes",
                          "read_pool": "reads"},
                         {"match": {"path_prefix": "/"}, "pool": "writes"}])
    cl = Client(gw.port)
    try:
        for m in ("GET", "HEAD", "OPTIONS"):
            r = cl.request(m, "/api/r-%s" % m)
            assert r.status == 200 and r.header("x-backend") == "READS", (m, r)
        for m in ("POST", "PUT", "DELETE", "PATCH"):
            body = None if m == "DELETE" else "data-%s" % m
            r = cl.request(m, "/api/w-%s" % m, body=body)
            assert r.status == 200 and r.header("x-backend") == "WRITES", (m, r)
            if body:
                assert r.json()["body"] == body, r
        # a route without read_pool: reads go to its pool
        r = cl.request("GET", "/other")
        assert r.status == 200 and r.header("x-backend") == "WRITES", r
    finally:
        cl.close()
    got_r = [(h["method"], h["target"]) for h in reads.heads()]
    got_w = [(h["method"], h["target"]) for h in writes.heads()]
    assert got_r == [("GET", "/api/r-GET"), ("HEAD", "/api/r-HEAD"),
                     ("OPTIONS", "/api/r-OPTIONS")], got_r
    assert got_w == [("POST", "/api/w-POST"), ("PUT", "/api/w-PUT"),
                     ("DELETE", "/api/w-DELETE"), ("PATCH", "/api/w-PATCH"),
                     ("GET", "/other")], got_w


# --------------------------------------------------------------------------
# 7. Retry of a connect failure


def test_connect_failure_retried(gateway, backend):
    """Round robin over a closed port and a live backend, no health checks,
    outlier detection off (so the dead server stays in the rotation) and a
    retry budget that allows every request a retry: every GET succeeds, and
    on a retryable route every POST too, each body reaching the backend
    exactly once. On a route that is not retryable a POST may get 502."""
    live = backend("LIVE")
    dead = "127.0.0.1:%d" % dead_ports(1)[0]
    pool = {"servers": [dead, live], "balance": "round_robin", "connect_timeout": "2s",
            "outlier": {"consecutive_errors": 0},
            "retry": {"attempts": 3, "budget": "100%"}}
    gw = gateway(pools={"app": pool},
                 routes=[{"match": {"path_prefix": "/retry"}, "pool": "app", "retryable": True},
                         {"match": {"path_prefix": "/"}, "pool": "app"}])
    cl = Client(gw.port)
    try:
        gets = []
        for i in range(20):
            r = cl.request("GET", "/get/%d" % i)
            gets.append(r.status)
        assert gets == [200] * 20, gets
        posts = []
        for i in range(20):
            body = "payload-%d" % i
            r = cl.request("POST", "/retry/%d" % i, body=body)
            posts.append((r.status, r.json()["body"] if r.status == 200 else r.body[:60]))
        assert posts == [(200, "payload-%d" % i) for i in range(20)], posts
        plain = collections.Counter()
        for i in range(10):
            r = cl.request("POST", "/plain/%d" % i, body="x")
            plain[r.status] += 1
        print("non-retryable POSTs over a dead + a live server: %r" % dict(plain))
        assert set(plain) <= {200, 502}, plain
    finally:
        cl.close()
    got = [(h["method"], h["target"]) for h in live.requests() if h["target"].startswith("/retry")]
    assert got == [("POST", "/retry/%d" % i) for i in range(20)], got
    assert len(targets(live, "/get")) == 20


# --------------------------------------------------------------------------
# 8. Upstream errors do not leak


def test_upstream_errors_no_fd_or_memory_growth(gateway, backend):
    """10,000 requests to a pool whose only server is a closed port (502:
    each a failed connect), plus 2,000 bad backend answers (502): afterwards
    the gateway holds no more fds than before (+5) and its RSS grew by at
    most a few MiB. ASan's quarantine (freed memory kept resident, 256 MiB by
    default) is turned off for this test: with it, RSS climbs for the first
    ~7,000 requests whatever the gateway does; without it, it is flat."""
    dead = "127.0.0.1:%d" % dead_ports(1)[0]
    junk = backend("JUNK")
    # No ejection and no retry: every request to "dead" is a real failed connect.
    gw = gateway(pools={"dead": {"servers": [dead], "connect_timeout": "1s",
                                 "outlier": {"consecutive_errors": 0},
                                 "retry": {"attempts": 1}},
                        "junk": [junk]},
                 routes=[{"match": {"path_prefix": "/garbage"}, "pool": "junk"},
                         {"match": {"path_prefix": "/"}, "pool": "dead"}],
                 env={"ASAN_OPTIONS": "quarantine_size_mb=0:thread_local_quarantine_size_kb=0"})

    def burst(n, tag, nthreads=4):
        jobs = []
        for i in range(n):
            jobs.append(("GET", "/garbage" if i % 6 == 5 else "/%s/%d" % (tag, i), None))
        res = fan_out(gw.port, jobs, nthreads)
        statuses = collections.Counter(s for s, _ in res)
        assert set(statuses) <= {502, 503}, statuses
        return statuses

    burst(400, "warm")
    time.sleep(0.5)
    fd0, rss0 = nfds(gw.pid), gw.rss_kb()
    st = burst(12000, "load")
    settled = wait_until(lambda: nfds(gw.pid) <= fd0 + 5, 10, interval=0.2)
    fd1, rss1 = nfds(gw.pid), gw.rss_kb()
    print("upstream errors: %r; fds %d -> %d, RSS %d -> %d KiB" % (dict(st), fd0, fd1, rss0, rss1))
    assert settled, "gateway fds %d -> %d after 12000 failed requests" % (fd0, fd1)
    assert st[502] >= 10000, st  # 10,000 failed connects (and 2,000 bad answers)
    assert rss1 - rss0 <= 3 * 1024, "RSS grew by %d KiB" % (rss1 - rss0)
    assert gw.running()


def test_max_connections_queue(gateway, backend):
    """One request at a time to the server: the next two wait in the queue
    and are served in turn; beyond queue_size the answer is 503 at once."""
    slow = backend("SLOW", delay_ms=400)
    gw = gateway(pools={"app": {"servers": [{"address": slow, "max_connections": 1}],
                                "queue_size": 2, "queue_timeout": "5s"}}, workers=1)
    results = []
    lock = threading.Lock()

    def one(i):
        t0 = time.monotonic()
        r = get(gw.port, "/q-%d" % i, timeout=20)
        with lock:
            results.append((r.status, r.header("retry-after"), time.monotonic() - t0))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
        time.sleep(0.02)  # in order: 1 runs, 2 wait, 2 are turned away
    for t in threads:
        t.join()
    ok = sorted(x[2] for x in results if x[0] == 200)
    busy = [x for x in results if x[0] == 503]
    assert len(ok) == 3 and len(busy) == 2, results
    assert all(x[1] is not None and x[2] < 0.35 for x in busy), busy
    # served one after another: the third waited for two delays
    assert ok[2] >= 0.75, ok
    # never more than one request at the backend at once
    assert len(slow.heads()) == 3


def test_queue_timeout_503(gateway, backend):
    slow = backend("SLOW", delay_ms=1500)
    gw = gateway(pools={"app": {"servers": [{"address": slow, "max_connections": 1}],
                                "queue_size": 10, "queue_timeout": "300ms"}}, workers=1)
    first = threading.Thread(target=lambda: get(gw.port, "/long", timeout=20))
    first.start()
    assert wait_until(lambda: len(slow.heads()) == 1, 5)
    t0 = time.monotonic()
    r = get(gw.port, "/waits", timeout=20)
    took = time.monotonic() - t0
    first.join()
    assert r.status == 503 and r.header("retry-after"), r
    assert 0.2 <= took < 1.4, took
    assert "queue_timeout" in gw.log()


@pytest.mark.parametrize("hash_key, how", [
    ("cookie:sid", "cookie"), ("query:device", "query"), ("path", "path"), ("ip", "ip")])
def test_hash_key_sources(gateway, backend, hash_key, how):
    """Each hash_key source sticks: the same key always reaches the same
    server, and different keys spread over the servers (except ip: every
    request here comes from 127.0.0.1, so all go to one server)."""
    be = [backend("K%d" % i) for i in range(1, 4)]
    gw = gateway(pools={"app": {"servers": be, "balance": "hash", "hash_key": hash_key}})
    cl = Client(gw.port)

    def ask(key, i):
        if how == "cookie":
            return cl.request("GET", "/c/%d" % i,
                              headers=[("Cookie", "theme=dark; sid=%s; lang=en" % key)])
        if how == "query":
            return cl.request("GET", "/q/%d?x=1&device=%s&y=2" % (i, key))
        return cl.request("GET", "/p/%s" % key)

    try:
        owners = {}
        for k in range(60):
            key = "key-%d" % k
            seen = {ask(key, i).header("x-backend") for i in range(4)}
            assert len(seen) == 1, (key, seen)
            owners[key] = seen.pop()
    finally:
        cl.close()
    spread = collections.Counter(owners.values())
    if how == "ip":
        assert len(spread) == 1, spread
    else:
        assert len(spread) == 3 and min(spread.values()) >= 8, spread
