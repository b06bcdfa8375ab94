"""The admin API's pools, config and reload endpoints (docs/admin-api.md):
GET /api/v1/pools[/NAME], POST /api/v1/pools/NAME/servers/ADDR/{drain,enable,
disable}, GET /api/v1/config, POST /api/v1/reload."""
import json
import urllib.error
import urllib.request

from conftest import free_port, wait_until
import rawhttp  # noqa: F401  (conftest puts this directory on sys.path)

TOKEN = "t0ken-98-very-secret"
ENV = {"SG_TEST_TOKEN": TOKEN}


def call(port, method, path, body=None, token=TOKEN):
    """(status, parsed JSON or raw bytes, raw bytes)."""
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=data,
                                 method=method)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            return r.status, json.loads(raw or b"null"), raw
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw), raw
        except ValueError:
            return e.code, raw, raw


def get(port, path):
    """GET through the gateway: (status, body bytes)."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def config_text(port, ap, b1, b2, extra_routes=""):
    return ("listen: 127.0.0.1:%d\n"
            "workers: 2\n"
            "admin: { listen: 127.0.0.1:%d, token_env: SG_TEST_TOKEN }\n"
            "pools:\n"
            "  app:\n"
            "    servers: [%s, %s]\n"
            "    balance: round_robin\n"
            "  other:\n"
            "    servers: [%s]\n"
            "    backup: [%s]\n"
            "    balance: least_conn\n"
            "routes:\n"
            "%s"
            "  - match: { path_prefix: /reports/, methods: [GET] }\n"
            "    pool: other\n"
            "    name: reports\n"
            "    rate_limit: { rate: 100/s, key: \"header:X-Device\" }\n"
            "    cache: { ttl: 30s }\n"
            "  - match: { path_prefix: / }\n"
            "    pool: app\n" % (port, ap, b1.addr, b2.addr, b2.addr, b1.addr, extra_routes))


def start(gateway, backend):
    b1, b2 = backend(), backend()
    ap = free_port()
    port = free_port()
    g = gateway(config=config_text(port, ap, b1, b2), env=ENV, port=port)
    return g, ap, b1, b2


PATHS = ["/api/v1/pools", "/api/v1/pools/app", "/api/v1/config"]


def test_auth_required(gateway, backend):
    g, ap, b1, b2 = start(gateway, backend)
    for p in PATHS:
        s, body, _ = call(ap, "GET", p, token=None)
        assert s == 401, p
        s, body, _ = call(ap, "GET", p, token="wrong")
        assert s == 401, p
    for p in ("/api/v1/reload", "/api/v1/pools/app/servers/%s/drain" % b1.addr):
        assert call(ap, "POST", p, token=None)[0] == 401, p
    # nothing changed without the token
    s, pool, _ = call(ap, "GET", "/api/v1/pools/app")
    assert s == 200 and all(x["admin"] == "enabled" for x in pool["servers"])


def test_pools_list_and_one(gateway, backend):
    g, ap, b1, b2 = start(gateway, backend)
    for _ in range(4):
        assert get(g.port, "/x")[0] == 200
    s, body, _ = call(ap, "GET", "/api/v1/pools")
    assert s == 200
    pools = {p["name"]: p for p in body["pools"]}
    assert list(pools) == ["app", "other"]
    app = pools["app"]
    assert app["balance"] == "round_robin" and app["scaled"] is False
    assert [x["address"] for x in app["servers"]] == [b1.addr, b2.addr]
    for x in app["servers"]:
        assert x["weight"] == 1 and x["backup"] is False
        assert x["health"] == "up" and x["admin"] == "enabled" and x["usable"] is True
        assert x["inflight"] == 0 and x["failures"] == 0
    assert sum(x["requests"] for x in app["servers"]) == 4
    other = pools["other"]
    assert other["balance"] == "least_conn"
    assert [(x["address"], x["backup"]) for x in other["servers"]] == \
        [(b2.addr, False), (b1.addr, True)]
    s, one, _ = call(ap, "GET", "/api/v1/pools/other")
    assert s == 200 and one["name"] == "other" and len(one["servers"]) == 2
    assert call(ap, "GET", "/api/v1/pools/app/")[1]["name"] == "app"
    assert call(ap, "HEAD", "/api/v1/pools")[0] == 200


def test_not_found_and_methods(gateway, backend):
    g, ap, b1, b2 = start(gateway, backend)
    s, body, _ = call(ap, "GET", "/api/v1/pools/nope")
    assert s == 404 and "nope" in body["error"]
    s, body, _ = call(ap, "POST", "/api/v1/pools/nope/servers/%s/drain" % b1.addr)
    assert s == 404 and "nope" in body["error"]
    s, body, _ = call(ap, "POST", "/api/v1/pools/app/servers/127.0.0.1:1/drain")
    assert s == 404 and "127.0.0.1:1" in body["error"]
    # an unknown action
    s, body, _ = call(ap, "POST", "/api/v1/pools/app/servers/%s/reboot" % b1.addr)
    assert s == 404
    assert call(ap, "GET", "/api/v1/pools/app/servers")[0] == 404
    assert call(ap, "GET", "/api/v1/poolsX")[0] == 404
    # wrong methods
    for m, p in (("GET", "/api/v1/pools/app/servers/%s/drain" % b1.addr),
                 ("PUT", "/api/v1/pools/app/servers/%s/enable" % b1.addr),
                 ("DELETE", "/api/v1/pools/app/servers/%s/disable" % b1.addr)):
        s, body, _ = call(ap, m, p)
        assert s == 405 and body == {"error": "use POST"}, (m, p)
    assert call(ap, "POST", "/api/v1/pools")[0] == 405
    assert call(ap, "DELETE", "/api/v1/pools/app")[0] == 405
    assert call(ap, "POST", "/api/v1/config")[0] == 405
    s, body, _ = call(ap, "GET", "/api/v1/reload")
    assert s == 405 and body == {"error": "use POST"}
    # nothing drained by those
    s, pool, _ = call(ap, "GET", "/api/v1/pools/app")
    assert all(x["admin"] == "enabled" for x in pool["servers"])


def states(ap, pool="app"):
    s, body, _ = call(ap, "GET", "/api/v1/pools/" + pool)
    assert s == 200
    return {x["address"]: (x["admin"], x["usable"]) for x in body["servers"]}


def spread(g, b1, b2, n=10):
    n1, n2 = len(b1.requests()), len(b2.requests())
    for i in range(n):
        s, _ = get(g.port, "/spread/%d" % i)
        assert s == 200
    return len(b1.requests()) - n1, len(b2.requests()) - n2


def test_drain_enable_disable(gateway, backend):
    g, ap, b1, b2 = start(gateway, backend)
    assert spread(g, b1, b2) == (5, 5)

    s, r, _ = call(ap, "POST", "/api/v1/pools/app/servers/%s/drain" % b1.addr)
    assert s == 200, r
    assert r["address"] == b1.addr and r["pool"] == "app"
    assert r["admin"] == "draining" and r["usable"] is False and r["pool_usable"] == 1
    assert states(ap) == {b1.addr: ("draining", False), b2.addr: ("enabled", True)}
    assert spread(g, b1, b2) == (0, 10)

    s, r, _ = call(ap, "POST", "/api/v1/pools/app/servers/%s/enable" % b1.addr)
    assert s == 200 and r["admin"] == "enabled" and r["usable"] is True and r["pool_usable"] == 2
    assert states(ap) == {b1.addr: ("enabled", True), b2.addr: ("enabled", True)}
    assert spread(g, b1, b2) == (5, 5)

    # ":" written as %3A
    s, r, _ = call(ap, "POST", "/api/v1/pools/app/servers/%s/disable"
                   % b2.addr.replace(":", "%3A"))
    assert s == 200 and r["address"] == b2.addr and r["admin"] == "disabled"
    assert states(ap) == {b1.addr: ("enabled", True), b2.addr: ("disabled", False)}
    assert spread(g, b1, b2) == (10, 0)

    # the last usable server may be drained too: the answer says so
    s, r, _ = call(ap, "POST", "/api/v1/pools/app/servers/%s/drain" % b1.addr)
    assert s == 200 and r["pool_usable"] == 0 and "note" in r
    for addr in (b1.addr, b2.addr):
        assert call(ap, "POST", "/api/v1/pools/app/servers/%s/enable" % addr)[0] == 200
    assert spread(g, b1, b2) == (5, 5)


def test_config_masks_the_token(gateway, backend):
    g, ap, b1, b2 = start(gateway, backend)
    s, cfg, raw = call(ap, "GET", "/api/v1/config")
    assert s == 200
    assert TOKEN.encode() not in raw
    assert cfg["admin"]["token"] == "***"
    assert cfg["admin"]["listen"] == "127.0.0.1:%d" % ap
    assert cfg["admin"]["token_from"] == "env SG_TEST_TOKEN"
    assert cfg["admin"]["public_metrics"] is False
    assert cfg["log"] == {"access": None, "level": None} and cfg["health_path"] is None
    assert cfg["listen"] == ["127.0.0.1:%d" % g.port] and cfg["workers"] == 2
    assert cfg["limits"]["max_connections"] > 0
    assert [p["name"] for p in cfg["pools"]] == ["app", "other"]
    assert [s["address"] for s in cfg["pools"][0]["servers"]] == [b1.addr, b2.addr]
    assert cfg["pools"][1]["servers"][1] == {"address": b1.addr, "weight": 1, "backup": True,
                                            "max_connections": 0}
    routes = cfg["routes"]
    assert len(routes) == 2
    r = routes[0]
    assert r["match"] == {"path_prefix": "/reports/", "methods": ["GET"]}
    assert r["pool"] == "other" and r["name"] == "reports" and r["read_pool"] is None
    assert r["rate_limits"][0]["key"] == "header:X-Device"
    assert r["rate_limits"][0]["rate"]["count"] == 100
    assert r["cache"]["ttl_ms"] == 30000
    assert routes[1]["pool"] == "app" and routes[1]["cache"] is None
    assert cfg["redis"] is None
    assert call(ap, "HEAD", "/api/v1/config")[0] == 200


def test_reload(gateway, backend):
    g, ap, b1, b2 = start(gateway, backend)
    new_route = ("  - match: { path_prefix: /only-b1/ }\n"
                 "    pool: solo\n")
    text = config_text(g.port, ap, b1, b2, new_route)
    text = text.replace("routes:\n", "  solo:\n    servers: [%s]\nroutes:\n" % b1.addr)
    g.write_config(text)
    n1 = len(b1.requests())
    s, r, _ = call(ap, "POST", "/api/v1/reload")
    assert s == 200 and r["reloaded"] is True, r
    for i in range(4):
        assert get(g.port, "/only-b1/%d" % i)[0] == 200
    assert len([x for x in b1.requests()[n1:] if x["target"].startswith("/only-b1/")]) == 4
    assert not [x for x in b2.requests() if x["target"].startswith("/only-b1/")]
    s, cfg, _ = call(ap, "GET", "/api/v1/config")
    assert cfg["routes"][0]["match"] == {"path_prefix": "/only-b1/"}
    assert "solo" in [p["name"] for p in call(ap, "GET", "/api/v1/pools")[1]["pools"]]

    # a broken file: 400 with every error, the running config stays
    broken = text.replace("balance: least_conn", "balance: fastest") \
                 .replace("workers: 2", "workers: two")
    g.write_config(broken)
    s, r, raw = call(ap, "POST", "/api/v1/reload")
    assert s == 400, r
    assert "running config is kept" in r["error"]
    name = str(g.config_path)
    assert name in r["error"]
    assert len(r["errors"]) == 2, r
    assert r["errors"][0].startswith("%s:2: workers:" % name)
    assert any(e.startswith("%s:" % name) and "balance" in e and "fastest" in e
               for e in r["errors"])
    for e in r["errors"]:
        file_line = e.split(": ", 1)[0]
        assert file_line.split(":")[-1].isdigit(), e
    assert TOKEN.encode() not in raw
    for i in range(4):
        assert get(g.port, "/only-b1/again%d" % i)[0] == 200
    assert len([x for x in b1.requests() if x["target"].startswith("/only-b1/again")]) == 4
    assert "reload failed" in g.log()

    # SIGHUP still works the same way
    g.reload(text.replace(new_route, ""))
    assert wait_until(lambda: g.log().count("reloaded ") >= 2, 5)
    assert wait_until(lambda: call(ap, "GET", "/api/v1/config")[1]["routes"][0]["match"]
                      == {"path_prefix": "/reports/", "methods": ["GET"]}, 5)
