"""The access log (issue 7): one JSON line per request with its route,
server, timings, cache result and request id; buffered per worker and
written off the workers' loops; reopened on SIGUSR1; log.level."""
import http.client
import json
import os
import signal
import socket
import time

from conftest import free_port, wait_until


def config(b, path, extra_top=""):
    return ("listen: 127.0.0.1:@PORT@\nworkers: 2\nlog: { access: %s%s }\npools:\n  app:\n"
            "    servers: [%s]\nroutes:\n"
            "  - match: { path_prefix: /api/ }\n    pool: app\n    name: api\n"
            "    cache: { ttl: 5m }\n"
            "  - match: { path_prefix: /limited }\n    pool: app\n"
            "    rate_limit: { rate: 1/min, burst: 1 }\n"
            % (path, extra_top, b.addr))


def lines(path):
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for ln in f:
            out.append(json.loads(ln))  # every line is one JSON object
    return out


def get(port, target, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", target, headers=headers or {})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


def test_access_log_lines(gateway, backend, tmp_path):
    b = backend()
    path = str(tmp_path / "access.log")
    g = gateway(config=config(b, path))
    assert get(g.port, "/api/items?page=2", {"X-Request-ID": "req-1"})[0] == 200
    assert get(g.port, "/api/items?page=2")[0] == 200  # a hit
    assert get(g.port, "/limited")[0] == 200
    assert get(g.port, "/limited")[0] == 429
    assert get(g.port, "/nowhere")[0] == 404
    s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    assert s.recv(100).startswith(b"HTTP/1.1 400")
    s.close()
    assert wait_until(lambda: len(lines(path)) == 6, 5), lines(path)
    recs = {(r["path"], r["status"]): r for r in lines(path)}
    miss = [r for r in lines(path) if r["path"] == "/api/items?page=2" and r["cache"] == "MISS"][0]
    assert miss["request_id"] == "req-1"
    for key in ("time", "client", "method", "path", "status", "bytes", "duration_ms", "route",
                "pool", "server", "upstream_ms", "cache", "request_id"):
        assert key in miss, key
    hits = [r for r in lines(path) if r["path"] == "/api/items?page=2"]
    assert sorted(r["cache"] for r in hits) == ["HIT", "MISS"]
    hit = [r for r in hits if r["cache"] == "HIT"][0]
    assert hit["server"] is None and hit["upstream_ms"] is None
    assert len(hit["request_id"]) == 32  # made by the gateway
    assert miss["server"] == b.addr and miss["route"] == "api" and miss["pool"] == "app"
    assert miss["client"] == "127.0.0.1" and miss["method"] == "GET"
    assert miss["bytes"] > 100 and miss["duration_ms"] >= miss["upstream_ms"] > 0
    assert miss["time"].endswith("Z") and "T" in miss["time"]
    assert recs[("/limited", 429)]["route"] == "/limited"
    assert recs[("/limited", 429)]["server"] is None
    assert recs[("/nowhere", 404)]["route"] == "none"
    bad = [r for r in lines(path) if r["status"] == 400]
    assert len(bad) == 1 and bad[0]["path"] == ""


def test_access_log_reopen_on_sigusr1(gateway, backend, tmp_path):
    b = backend()
    path = str(tmp_path / "access.log")
    g = gateway(config=config(b, path))
    for i in range(5):
        get(g.port, "/before%d" % i)
    assert wait_until(lambda: len(lines(path)) == 5, 5)
    os.rename(path, path + ".1")  # logrotate
    g.signal(signal.SIGUSR1)
    assert wait_until(lambda: "access log %s reopened" % path in g.log(), 5), g.log()
    for i in range(3):
        get(g.port, "/after%d" % i)
    assert wait_until(lambda: len(lines(path)) == 3, 5)
    assert all(r["path"].startswith("/after") for r in lines(path))
    assert len(lines(path + ".1")) == 5


def test_log_level_and_config_errors(gateway, backend, tmp_path, run_scalegate):
    b = backend()
    path = str(tmp_path / "access.log")
    g = gateway(config=config(b, path, ", level: warn"))
    get(g.port, "/api/x")
    assert wait_until(lambda: len(lines(path)) == 1, 5)
    assert "listening on" not in g.log()  # an info line
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: 127.0.0.1:1\npools:\n  app:\n    servers: [127.0.0.1:2]\n"
                   "log: { access: relative.log, level: loud }\n")
    r = run_scalegate(["-t", "-c", str(bad)])
    assert r.returncode == 1
    assert "bad.yaml:5: log.access: \"relative.log\" is not an absolute path" in r.stderr, r.stderr
    assert "bad.yaml:5: log.level: \"loud\" is not error, warn, info or debug" in r.stderr
    # a path that cannot be opened stops the start with the reason
    nodir = tmp_path / "bad2.yaml"
    nodir.write_text("listen: 127.0.0.1:%d\npools:\n  app:\n    servers: [127.0.0.1:2]\n"
                     "log: { access: /nonexistent-dir/access.log }\n" % free_port())
    r = run_scalegate(["-c", str(nodir)], timeout=20)
    assert r.returncode == 1
    assert "log.access /nonexistent-dir/access.log: No such file or directory" in r.stderr


def test_reload_moves_and_stops_the_access_log(gateway, backend, tmp_path):
    b = backend()
    first, second = str(tmp_path / "a.log"), str(tmp_path / "b.log")
    g = gateway(config=config(b, first))
    get(g.port, "/one")
    assert wait_until(lambda: len(lines(first)) == 1, 5)
    g.reload(config(b, second).replace("@PORT@", str(g.port)))
    assert wait_until(lambda: "reloaded" in g.log(), 10), g.log()
    get(g.port, "/two")
    assert wait_until(lambda: len(lines(second)) == 1, 5)
    assert lines(second)[0]["path"] == "/two" and len(lines(first)) == 1
    g.reload(config(b, "off").replace("@PORT@", str(g.port)))
    assert wait_until(lambda: g.log().count("reloaded") == 2, 10), g.log()
    get(g.port, "/three")
    time.sleep(0.5)  # two sweeps: nothing is written anywhere
    assert len(lines(second)) == 1 and len(lines(first)) == 1
