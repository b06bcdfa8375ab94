"""GET /metrics (issue 7): the Prometheus exposition is valid under
promtool, every metric listed in docs/metrics.md is there, and traffic
moves them."""
import http.client
import os
import re
import subprocess
import time

import pytest

from conftest import REPO, free_port, wait_until
from test_70_scale import demo_bin, port_range
from test_90_cache import TOKEN, admin_call, redis_server  # noqa: F401 (fixture)

PROMTOOL = "/usr/bin/promtool"


def scrape(port, token=TOKEN):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics", headers={"Authorization": "Bearer " + token} if token else {})
    r = c.getresponse()
    body = r.read().decode()
    c.close()
    return r.status, r.getheader("Content-Type"), body


def samples(text):
    """{(name, frozenset(labels)): value} of every sample line."""
    out = {}
    for ln in text.splitlines():
        if not ln or ln.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$', ln)
        assert m, "not a sample line: %r" % ln
        labels = frozenset(re.findall(r'([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def value(s, name, **labels):
    want = set(labels.items())
    vals = [v for (n, ls), v in s.items() if n == name and want <= set(ls)]
    assert vals, "no sample %s%s" % (name, labels)
    return sum(vals)


def documented():
    text = (REPO / "docs" / "metrics.md").read_text()
    return sorted(set(re.findall(r"`(scalegate_[a-z_]+)`", text)))


def get(port, path, headers=None, method="GET"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, path, headers=headers or {})
    r = c.getresponse()
    r.read()
    c.close()
    return r.status


def gateway_config(admin_port, b, lo, hi, api_ttl="5m", limit="{ rate: 1/min, burst: 1 }"):
    """Two workers, an admin listener, a backend pool and a scaled pool of
    demo backends (ports lo-hi), and routes: /api/ cached (name api),
    /limited rate limited, /scaled, and / (also used by test_97)."""
    return """listen: 127.0.0.1:@PORT@
workers: 2
admin: { listen: 127.0.0.1:%d, token_env: SG_TEST_TOKEN }
pools:
  app:
    servers: [%s]
  scaled:
    scale:
      command: "%s --port {port}"
      ports: %d-%d
      min: 1
      max: 2
      targets: { p95_ms: 5000 }
routes:
  - match: { path_prefix: /api/ }
    pool: app
    name: api
    cache: { ttl: %s }
  - match: { path_prefix: /limited }
    pool: app
    rate_limit: %s
  - match: { path_prefix: /scaled }
    pool: scaled
  - match: { path_prefix: / }
    pool: app
""" % (admin_port, b.addr, demo_bin(), lo, hi, api_ttl, limit)


def test_metrics_valid_documented_and_moving(gateway, backend):
    if not os.access(PROMTOOL, os.X_OK):
        pytest.fail("promtool not found at %s: run scripts/deps.sh test (package prometheus)"
                    % PROMTOOL)
    b = backend()
    ap = free_port()
    lo, hi = port_range(4)
    cfg = gateway_config(ap, b, lo, hi)
    g = gateway(config=cfg, env={"SG_TEST_TOKEN": TOKEN})
    # the token is needed; the answer is the text format
    assert scrape(ap, token=None)[0] == 401
    status, ctype, before = scrape(ap)
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=before, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    names = set(re.findall(r"^# TYPE (\S+) ", before, re.M))
    missing = [m for m in documented() if m not in names]
    assert not missing, "in docs/metrics.md but not exposed: %s" % missing
    undocumented = [n for n in names if n not in documented()]
    assert not undocumented, "exposed but not in docs/metrics.md: %s" % undocumented
    s0 = samples(before)

    # traffic: hits and misses, a 429, a 404 route-less request, the scaled pool
    for _ in range(3):
        assert get(g.port, "/api/item") == 200
    assert get(g.port, "/limited") == 200
    assert get(g.port, "/limited") == 429
    assert get(g.port, "/other") == 200
    assert wait_until(lambda: get(g.port, "/scaled/x") == 200, 20)
    # the first decision comes within a period (1 s)
    assert wait_until(lambda: value(samples(scrape(ap)[2]), "scalegate_pool_desired_instances",
                                    pool="scaled") >= 1, 5)
    c = http.client.HTTPConnection("127.0.0.1", g.port, timeout=10)
    c.request("GET", "/")  # held open: a client connection
    c.getresponse().read()
    time.sleep(0.3)  # the workers publish their gauges every 100 ms
    status, _, after = scrape(ap)
    c.close()
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=after, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    s1 = samples(after)

    def moved(name, **labels):
        return value(s1, name, **labels) - (value(s0, name, **labels)
                                            if any(n == name for n, _ in s0) else 0)

    assert moved("scalegate_http_requests_total", route="api", code="2xx") == 3
    assert moved("scalegate_http_requests_total", route="/limited", code="4xx") == 1
    assert moved("scalegate_http_request_duration_seconds_count", route="api") == 3
    assert value(s1, "scalegate_http_request_duration_seconds_bucket", route="api", le="+Inf") == 3
    assert moved("scalegate_ratelimit_rejected_total", route="/limited") == 1
    assert moved("scalegate_cache_requests_total", result="hit") == 2
    assert moved("scalegate_cache_requests_total", result="miss") == 1
    assert moved("scalegate_cache_stores_total", tier="memory") == 1
    assert value(s1, "scalegate_cache_entries", tier="memory") == 1
    assert value(s1, "scalegate_cache_bytes", tier="memory") > 0
    assert value(s1, "scalegate_backend_up", pool="app", server=b.addr) == 1
    assert moved("scalegate_backend_requests_total", pool="app", server=b.addr) >= 3
    assert value(s1, "scalegate_backend_response_duration_seconds_count", pool="app",
                 server=b.addr) >= 3
    assert value(s1, "scalegate_client_connections", state="idle") >= 1
    assert value(s1, "scalegate_upstream_connections", state="idle") >= 1
    assert value(s1, "scalegate_pool_instances", pool="scaled", state="ready") >= 1
    assert value(s1, "scalegate_pool_desired_instances", pool="scaled") >= 1
    assert value(s1, "scalegate_pool_max_instances", pool="scaled") == 2
    assert value(s1, "scalegate_scaling_leader", pool="scaled") == 1
    assert value(s1, "scalegate_process_resident_memory_bytes") > 1e6
    assert value(s1, "scalegate_process_open_fds") > 5
    assert value(s1, "scalegate_process_cpu_seconds_total") >= value(
        s0, "scalegate_process_cpu_seconds_total")
    # a route-less request and a bad one count under route="none"
    g2_404 = get(g.port, "/x", headers={"Host": "elsewhere"})
    assert g2_404 == 200  # the catch-all route takes any host
    s2 = samples(scrape(ap)[2])
    assert value(s2, "scalegate_http_requests_total", route="/", code="2xx") >= 2
    # a purge moves the invalidations counter
    assert admin_call(ap, "POST", "/api/v1/cache/purge", {"all": True})[0] == 200
    s3 = samples(scrape(ap)[2])
    assert value(s3, "scalegate_cache_invalidations_total") >= 1
    assert value(s3, "scalegate_cache_entries", tier="memory") == 0


def test_metrics_unmatched_and_errors(gateway, backend):
    b = backend()
    ap = free_port()
    cfg = """listen: 127.0.0.1:@PORT@
workers: 1
admin: { listen: 127.0.0.1:%d, token_env: SG_TEST_TOKEN }
pools:
  app:
    servers: [%s, 127.0.0.1:1]
    health: { interval: 1h }
routes:
  - match: { path_prefix: /only }
    pool: app
""" % (ap, b.addr)
    g = gateway(config=cfg, env={"SG_TEST_TOKEN": TOKEN})
    assert get(g.port, "/nowhere") == 404
    s = samples(scrape(ap)[2])
    assert value(s, "scalegate_http_requests_total", route="none", pool="none", code="4xx") == 1
    assert get(g.port, "/only") in (200, 502)
    s = samples(scrape(ap)[2])
    assert value(s, "scalegate_http_requests_total", route="/only") >= 1
    assert value(s, "scalegate_backend_up", pool="app", server="127.0.0.1:1") in (0, 1)
    # /metricsX is not the endpoint; POST is not allowed
    assert admin_call(ap, "GET", "/metricsX")[0] == 404
    assert admin_call(ap, "POST", "/metrics")[0] == 405


def test_metrics_move_shed_304_evictions_5xx_scaling(gateway, backend, redis_server):
    """The metrics the first test leaves still: shedding, 304s, evictions,
    5xx, active connections, the Redis tier, scaling events."""
    b = backend()
    ap = free_port()
    lo, hi = port_range(4)
    cfg = """listen: 127.0.0.1:@PORT@
workers: 1
admin: { listen: 127.0.0.1:%d, token_env: SG_TEST_TOKEN }
redis: { url: redis://127.0.0.1:%d, prefix: "sgm:" }
cache: { memory: 1MB }
pools:
  app:
    servers: [%s]
  scaled:
    scale:
      command: "%s --port {port}"
      ports: %d-%d
      min: 1
      max: 2
      targets: { p95_ms: 5000 }
routes:
  - match: { path_prefix: /delay }
    pool: app
    max_in_flight: 1
  - match: { path_prefix: /scaled }
    pool: scaled
  - match: { path_prefix: / }
    pool: app
    cache: { ttl: 5m }
""" % (ap, int(redis_server), b.addr, demo_bin(), lo, hi)
    g = gateway(config=cfg, env={"SG_TEST_TOKEN": TOKEN})
    assert wait_until(lambda: value(samples(scrape(ap)[2]), "scalegate_redis_up") == 1, 10)
    s0 = samples(scrape(ap)[2])
    # a slow request holds the route's only slot: the next one is shed, and
    # meanwhile a client and an upstream connection are active
    import threading
    t = threading.Thread(target=get, args=(g.port, "/delay?ms=1500"))
    t.start()
    assert wait_until(lambda: value(samples(scrape(ap)[2]), "scalegate_upstream_connections",
                                    state="active") >= 1, 5)
    mid = samples(scrape(ap)[2])
    assert value(mid, "scalegate_client_connections", state="active") >= 1
    assert value(mid, "scalegate_backend_active_connections", pool="app", server=b.addr) == 1
    assert get(g.port, "/delay?ms=1") == 503
    t.join(10)
    # a 304 from the cache, a 5xx, and evictions from a 1 MB memory tier
    etag = "/e?h=" + "ETag%3A%22v1%22"
    assert get(g.port, etag) == 200
    assert get(g.port, etag, headers={"If-None-Match": '"v1"'}) == 304
    assert get(g.port, "/status/500") == 500
    for i in range(150):
        assert get(g.port, "/sized?n=12000&i=%d" % i) == 200
    # the autoscaler told to keep 2: one decision up
    assert admin_call(ap, "PUT", "/api/v1/scaling/config", {"pool": "scaled", "min": 2})[0] == 200
    assert wait_until(lambda: value(samples(scrape(ap)[2]), "scalegate_scaling_events_total",
                                    pool="scaled", direction="up") >= 1, 10)
    s1 = samples(scrape(ap)[2])

    def moved(name, **labels):
        return value(s1, name, **labels) - value(s0, name, **labels)

    assert moved("scalegate_shed_total", route="/delay", reason="max_in_flight") == 1
    assert moved("scalegate_http_requests_total", route="/delay", code="5xx") == 1
    assert moved("scalegate_http_requests_total", route="/", code="5xx") == 1
    assert moved("scalegate_backend_failures_total", pool="app", server=b.addr) >= 1
    assert moved("scalegate_cache_not_modified_total") == 1
    assert moved("scalegate_cache_evictions_total", tier="memory") > 0
    assert value(s1, "scalegate_cache_bytes", tier="memory") <= value(
        s1, "scalegate_cache_capacity_bytes", tier="memory")
    assert moved("scalegate_cache_stores_total", tier="redis") > 0
    assert moved("scalegate_cache_redis_requests_total", result="miss") > 0
    assert value(s1, "scalegate_pool_min_instances", pool="scaled") == 2
    assert value(s1, "scalegate_process_start_time_seconds") > 1.7e9


def test_public_metrics(gateway, backend):
    b = backend()
    ap = free_port()
    cfg = ("listen: 127.0.0.1:@PORT@\nadmin: { listen: 127.0.0.1:%d, token_env: SG_TEST_TOKEN, "
           "public_metrics: true }\npools:\n  app:\n    servers: [%s]\n" % (ap, b.addr))
    gateway(config=cfg, env={"SG_TEST_TOKEN": TOKEN})
    status, _, body = scrape(ap, token=None)
    assert status == 200 and "scalegate_http_requests_total" in body
    # only /metrics: the rest still needs the token
    assert admin_call(ap, "GET", "/api/v1/cache/stats", token=None)[0] == 401
    assert admin_call(ap, "GET", "/api/v1/config", token=None)[0] == 401


def test_metrics_cache_results(gateway, backend):
    """stale, coalesced and pass on /metrics."""
    import threading
    b = backend()
    ap = free_port()
    cfg = ("listen: 127.0.0.1:@PORT@\nworkers: 2\n"
           "admin: { listen: 127.0.0.1:%d, token_env: SG_TEST_TOKEN }\n"
           "pools:\n  app:\n    servers: [%s]\nroutes:\n  - pool: app\n"
           "    cache: { ttl: 1s, stale_while_revalidate: 1m }\n" % (ap, b.addr))
    g = gateway(config=cfg, env={"SG_TEST_TOKEN": TOKEN})
    s0 = samples(scrape(ap)[2])
    ts = [threading.Thread(target=get, args=(g.port, "/delay?ms=400")) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert get(g.port, "/r", headers={"Range": "bytes=0-1"}) == 200
    time.sleep(1.2)
    assert get(g.port, "/delay?ms=400") == 200  # expired: stale at once, refreshed
    s1 = samples(scrape(ap)[2])

    def moved(result):
        return (value(s1, "scalegate_cache_requests_total", result=result)
                - value(s0, "scalegate_cache_requests_total", result=result))

    assert moved("miss") == 1 and moved("coalesced") == 1
    assert moved("pass") == 1 and moved("stale") == 1


def test_metrics_shed_p95(gateway, backend):
    import threading
    b = backend(delay_ms=150)
    ap = free_port()
    cfg = ("listen: 127.0.0.1:@PORT@\nworkers: 2\n"
           "admin: { listen: 127.0.0.1:%d, token_env: SG_TEST_TOKEN }\n"
           "pools:\n  app:\n    servers: [%s]\n    shed_p95: 50ms\nroutes:\n"
           "  - match: { path_prefix: /low }\n    pool: app\n    priority: 1\n"
           "  - pool: app\n    priority: 10\n" % (ap, b.addr))
    g = gateway(config=cfg, env={"SG_TEST_TOKEN": TOKEN})
    stop = threading.Event()
    shed = []

    def client(path):
        while not stop.is_set():
            s = get(g.port, path)
            if s == 503:
                shed.append(s)

    threads = [threading.Thread(target=client, args=(p,)) for p in ("/low", "/high", "/high")]
    for t in threads:
        t.start()
    ok = wait_until(lambda: len(shed) > 0, 15)
    stop.set()
    for t in threads:
        t.join(10)
    assert ok
    s = samples(scrape(ap)[2])
    assert value(s, "scalegate_shed_total", route="/low", reason="p95") == len(shed)
    assert value(s, "scalegate_shed_total", route="/", reason="p95") == 0
    assert value(s, "scalegate_http_requests_total", route="/low", code="5xx") >= len(shed)
