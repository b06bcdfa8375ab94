"""Server behaviour: timeouts, connection limit, reload (SIGHUP), graceful
stop (SIGTERM/SIGINT), several workers."""
import re
import signal
import subprocess
import threading
import time

from conftest import wait_until
from rawhttp import Conn, ConnClosed, get


def test_slow_header_client_dropped(gateway, backend):
    be = backend()
    gw = gateway(pools={"app": [be]}, limits={"header_timeout": "1s", "idle_timeout": "30s"})
    with Conn(gw.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        assert not c.wait_closed(0.3), "closed before header_timeout"
        assert c.wait_closed(4.7), "partial head still open after 5 s (header_timeout 1s)"
        assert not c.buf or c.buf.startswith(b"HTTP/1.1 408"), bytes(c.buf)
    assert be.heads() == []


def test_header_timeout_is_for_the_whole_head(gateway, backend):
    """A client trickling one byte every 200 ms never finishes its head: it
    is dropped after header_timeout even though it is never idle."""
    be = backend()
    gw = gateway(pools={"app": [be]}, limits={"header_timeout": "1s", "idle_timeout": "30s"})
    with Conn(gw.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < 5:
            try:
                c.send(b"a")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if c.wait_closed(0.2):
                closed = True
                break
        assert closed, "trickling client still connected after 5 s"
    assert be.heads() == []


def test_silent_new_connection_closed(gateway, backend):
    """A client that connects and never sends a byte is closed (by
    header_timeout or idle_timeout, both 1 s here)."""
    be = backend()
    gw = gateway(pools={"app": [be]}, limits={"header_timeout": "1s", "idle_timeout": "1s"})
    with Conn(gw.port) as c:
        assert not c.wait_closed(0.3)
        assert c.wait_closed(4.7), "silent connection still open after 5 s"


def test_idle_keepalive_client_closed(gateway, backend):
    be = backend()
    gw = gateway(pools={"app": [be]}, limits={"idle_timeout": "1s", "header_timeout": "30s"})
    with Conn(gw.port) as c:
        c.request("GET", "/one")
        assert c.read_response().status == 200
        assert not c.wait_closed(0.3), "closed before idle_timeout"
        assert c.wait_closed(4.7), "idle keep-alive connection open after 5 s (idle_timeout 1s)"
        assert not c.buf, "unexpected bytes on idle close: %r" % bytes(c.buf)


def test_body_timeout_408(gateway, backend):
    be = backend()
    gw = gateway(pools={"app": [be]}, limits={"body_timeout": "1s"})
    with Conn(gw.port) as c:
        c.send(b"POST /slow-body HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        t0 = time.monotonic()
        r = c.read_response(timeout=8)
        assert r.status == 408, r
        assert time.monotonic() - t0 < 6


def test_slow_body_within_body_timeout(gateway, backend):
    be = backend()
    gw = gateway(pools={"app": [be]}, limits={"body_timeout": "1s"})
    with Conn(gw.port) as c:
        c.send(b"POST /slow-ok HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n")
        for i in range(5):
            time.sleep(0.4)
            c.send(b"%010d" % i)
        r = c.read_response()
    assert r.status == 200, r
    assert r.json()["body"] == "".join("%010d" % i for i in range(5))


def test_idle_timeout_does_not_cut_active_request(gateway, backend):
    be = backend()
    gw = gateway(pools={"app": [be]}, limits={"idle_timeout": "1s"})
    with Conn(gw.port) as c:
        c.request("GET", "/delay?ms=2000")
        r = c.read_response()
        assert r.status == 200, r


def test_header_timeout_counts_from_each_request(gateway, backend):
    """header_timeout starts with each request's first byte, not with the
    connection: a keep-alive client idle for longer than header_timeout
    (but less than idle_timeout) can send its next request."""
    be = backend()
    gw = gateway(pools={"app": [be]}, limits={"header_timeout": "1s", "idle_timeout": "10s"})
    with Conn(gw.port) as c:
        for i in range(2):
            c.request("GET", "/r%d" % i)
            assert c.read_response().status == 200
            time.sleep(1.5)
        c.request("GET", "/last")
        assert c.read_response().json()["target"] == "/last"


def test_max_connections(gateway, backend):
    be = backend()
    gw = gateway(pools={"app": [be]}, limits={"max_connections": 3})
    time.sleep(0.3)  # let the start-up probe connection be released
    first = [Conn(gw.port, timeout=5) for _ in range(3)]
    try:
        for i, c in enumerate(first):
            c.request("GET", "/c%d" % i)
            assert c.read_response().status == 200
        extra = Conn(gw.port, timeout=5, connect=False)
        try:
            extra.sock.connect(("127.0.0.1", gw.port))
            extra.send_lenient(b"GET /fourth HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                r = extra.read_response()
            except ConnClosed:
                r = None
            assert r is None or r.status == 503, "4th connection served: %r" % r
            if r is not None:
                assert r.body.startswith(b"503 "), r
        except (ConnectionRefusedError, ConnectionResetError):
            pass
        finally:
            extra.close()
        for i, c in enumerate(first):
            c.request("GET", "/again%d" % i)
            r = c.read_response()
            assert r.status == 200, r
        assert "/fourth" not in [h["target"] for h in be.heads()]
        # a slot freed by closing one connection can be used again
        first[0].close()

        def fresh_ok():
            try:
                return get(gw.port, "/fresh", timeout=2).status == 200
            except (ConnClosed, OSError):
                return False
        assert wait_until(fresh_ok, 5, interval=0.2), "closed connection's slot not released"
    finally:
        for c in first:
            c.close()


def ok_config(gw, pools):
    return gw.render(pools=pools)


def test_sighup_broken_config_keeps_serving(gateway, backend):
    be = backend("A")
    gw = gateway(pools={"app": [be]})
    keep = Conn(gw.port)
    try:
        keep.request("GET", "/before")
        assert keep.read_response().json()["backend"] == "A"
        good = ok_config(gw, {"app": [be]})
        broken = good + "bogus_key: 1\n"
        bad_line = len(broken.splitlines())
        log_before = len(gw.log())
        gw.reload(broken)
        name = gw.config_path.name
        found = wait_until(lambda: name in gw.log()[log_before:], 5)
        new_log = gw.log()[log_before:]
        assert found, "no error naming %s logged after SIGHUP; new log:\n%s" % (name, new_log)
        assert re.search(re.escape(name) + r":%d:" % bad_line, new_log), new_log
        assert gw.running()
        r = get(gw.port, "/after")
        assert r.status == 200 and r.json()["backend"] == "A", r
        keep.request("GET", "/after-keep")
        r = keep.read_response()
        assert r.status == 200 and r.json()["backend"] == "A", r
    finally:
        keep.close()


def test_sighup_valid_config_applied(gateway, backend):
    a = backend("A")
    b = backend("B")
    gw = gateway(pools={"app": [a]})
    old = Conn(gw.port)
    try:
        old.request("GET", "/old-1")
        r = old.read_response()
        assert r.json()["backend"] == "A"
        gw.reload(ok_config(gw, {"app": [b]}))

        def new_backend():
            r = get(gw.port, "/probe")
            return r.status == 200 and r.json()["backend"] == "B"
        assert wait_until(new_backend, 5, interval=0.1), "reload not applied:\n" + gw.log()
        # several new connections all go to B now
        for i in range(4):
            assert get(gw.port, "/new-%d" % i).json()["backend"] == "B"
        # the old keep-alive connection still works (old or new config)
        old.request("GET", "/old-2")
        r = old.read_response()
        assert r.status == 200, r
        assert r.json()["backend"] in ("A", "B")
    finally:
        old.close()


def test_sighup_changes_limits_and_routes(gateway, backend):
    a = backend("A")
    gw = gateway(pools={"app": [a]})
    assert get(gw.port, "/x").status == 200
    gw.reload(gw.render(pools={"app": [a]},
                        routes=[{"match": {"path_prefix": "/only"}, "pool": "app"}]))
    assert wait_until(lambda: get(gw.port, "/x").status == 404, 5, interval=0.1), gw.log()
    assert get(gw.port, "/only/y").status == 200


def test_sighup_keeps_upstream_connections(gateway, backend):
    """A reload happens inside the process: the idle keep-alive connection to
    a backend that is still in the new config is reused, not reopened."""
    a = backend("A")
    gw = gateway(pools={"app": [a]}, workers=1)
    first = get(gw.port, "/before").json()["conn"]
    gw.reload(gw.render(pools={"app": [a]}, workers=1,
                        routes=[{"match": {"path_prefix": "/after"}, "pool": "app"}]))
    assert wait_until(lambda: get(gw.port, "/x").status == 404, 5, interval=0.1), gw.log()
    r = get(gw.port, "/after")
    assert r.status == 200, r
    assert r.json()["conn"] == first, "upstream connection not kept across the reload"
    assert len(a.accepts()) == 1, a.accepts()


def test_sighup_storm_while_serving(gateway, backend):
    """Twenty reloads alternating between two backends while clients keep
    sending requests: every request succeeds, the last config wins."""
    a = backend("A")
    b = backend("B")
    gw = gateway(pools={"app": [a]})
    stop = threading.Event()
    errors = []
    done = []

    def client():
        while not stop.is_set():
            try:
                with Conn(gw.port, timeout=10) as c:
                    for i in range(5):
                        c.request("GET", "/storm")
                        r = c.read_response()
                        if r.status != 200:
                            errors.append(r)
                        done.append(1)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(20):
            gw.reload(gw.render(pools={"app": [b if i % 2 == 0 else a]}))
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(20)
    assert not errors, errors[:5]
    assert len(done) > 20
    assert gw.running()
    # last reload (i = 19) pointed at A
    assert wait_until(lambda: get(gw.port, "/final").json()["backend"] == "A", 5)


def test_sigterm_lets_request_in_flight_finish(gateway, backend):
    be = backend()
    gw = gateway(pools={"app": [be]})
    c = Conn(gw.port, timeout=15)
    try:
        c.request("GET", "/delay?ms=1500")
        assert wait_until(lambda: be.heads(), 5), "request did not reach the backend"
        gw.signal(signal.SIGTERM)
        time.sleep(0.3)
        # new connections are not served any more
        late = Conn(gw.port, timeout=10, connect=False)
        try:
            late.sock.connect(("127.0.0.1", gw.port))
            late.send_lenient(b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                lr = late.read_response()
            except ConnClosed:
                lr = None
            assert lr is None or lr.status == 503, "served after SIGTERM: %r" % lr
        except (ConnectionRefusedError, ConnectionResetError):
            pass
        finally:
            late.close()
        r = c.read_response()
        assert r.status == 200, r
        assert r.json()["target"] == "/delay?ms=1500"
        # the gateway closes the finished connection itself and exits
        assert c.wait_closed(5), "connection left open after the last request, during shutdown"
    finally:
        c.close()
    try:
        gw.proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    assert not gw.running(), "still running 10 s after the last request finished:\n" + gw.log()
    assert gw.proc.returncode == 0, gw.log()
    assert "/late" not in [h["target"] for h in be.heads()]


def test_shutdown_timeout_bounds_the_wait(gateway, backend):
    """A request still in flight when shutdown_timeout expires is cut off
    and the process exits 0 (spec: exit 0 after SIGTERM)."""
    be = backend()
    gw = gateway(pools={"app": [be]}, limits={"shutdown_timeout": "1s"})
    c = Conn(gw.port, timeout=15)
    try:
        c.request("GET", "/delay?ms=8000")
        assert wait_until(lambda: be.heads(), 5), "request did not reach the backend"
        t0 = time.monotonic()
        gw.signal(signal.SIGTERM)
        try:
            gw.proc.wait(6)
        except subprocess.TimeoutExpired:
            pass
        assert not gw.running(), "still running 6 s after SIGTERM with shutdown_timeout 1s"
        assert time.monotonic() - t0 >= 0.5, "did not wait for the request in flight at all"
        assert gw.proc.returncode == 0, "exit status %s\n%s" % (gw.proc.returncode, gw.log())
        assert c.wait_closed(2)
    finally:
        c.close()


def test_second_sigterm_forces_exit(gateway, backend):
    """SIGTERM twice while a request is in flight: the gateway gives up
    waiting and exits cleanly (no crash)."""
    be = backend()
    gw = gateway(pools={"app": [be]}, limits={"shutdown_timeout": "30s"})
    c = Conn(gw.port, timeout=15)
    try:
        c.request("GET", "/delay?ms=8000")
        assert wait_until(lambda: be.heads(), 5), "request did not reach the backend"
        gw.signal(signal.SIGTERM)
        time.sleep(0.3)
        assert gw.running(), "exited with a request in flight:\n" + gw.log()
        gw.signal(signal.SIGTERM)
        try:
            gw.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        assert not gw.running(), "still running 5 s after the second SIGTERM"
        assert gw.proc.returncode == 0, "exit status %s\n%s" % (gw.proc.returncode, gw.log())
    finally:
        c.close()


def test_sigterm_with_idle_connection_exits_promptly(gateway, backend):
    be = backend()
    gw = gateway(pools={"app": [be]}, limits={"shutdown_timeout": "30s", "idle_timeout": "60s"})
    c = Conn(gw.port)
    try:
        c.request("GET", "/x")
        assert c.read_response().status == 200
        t0 = time.monotonic()
        gw.signal(signal.SIGTERM)
        try:
            gw.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        assert not gw.running(), "idle keep-alive connection holds up shutdown for > 5 s"
        assert gw.proc.returncode == 0, gw.log()
        assert time.monotonic() - t0 < 5
        assert c.wait_closed(2)
    finally:
        c.close()


def test_sigint_exits_0(gateway, backend):
    be = backend()
    gw = gateway(pools={"app": [be]})
    assert get(gw.port, "/x").status == 200
    gw.signal(signal.SIGINT)
    gw.proc.wait(10)
    assert gw.proc.returncode == 0, gw.log()


def test_workers_2(gateway, backend):
    be = backend()
    gw = gateway(pools={"app": [be]}, workers=2)
    assert wait_until(lambda: re.search(r"listening on 127\.0\.0\.1:%d \(2 workers\)" % gw.port,
                                        gw.log()), 3), gw.log()
    errors = []
    counts = []

    def client(n):
        try:
            with Conn(gw.port, timeout=10) as c:
                for i in range(10):
                    c.request("GET", "/w/%d/%d" % (n, i))
                    r = c.read_response()
                    if r.status != 200 or r.json()["target"] != "/w/%d/%d" % (n, i):
                        errors.append(r)
                    counts.append(1)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:5]
    assert len(counts) == 160
    assert len(be.requests()) == 160


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (debug|info|warn|error): \S")


def test_log_format(gateway, backend):
    be = backend()
    gw = gateway(pools={"app": [be]})
    assert get(gw.port, "/x").status == 200
    gw.stop()
    lines = gw.log().splitlines()
    assert lines, "nothing logged"
    bad = [ln for ln in lines if not LOG_LINE.match(ln)]
    assert not bad, "log lines not in the 'TIMESTAMP level: message' format: %r" % bad[:5]


def test_workers_auto(gateway, backend):
    import os
    be = backend()
    gw = gateway(pools={"app": [be]}, workers="auto")
    n = os.cpu_count()
    assert wait_until(lambda: re.search(r"listening on 127\.0\.0\.1:%d \(%d workers\)"
                                        % (gw.port, n), gw.log()), 3), gw.log()
    assert get(gw.port, "/x").status == 200


def test_listen_list(gateway, backend):
    from conftest import free_port
    be = backend()
    second = free_port()
    gw = gateway(config=("listen: [127.0.0.1:@PORT@, 127.0.0.1:%d]\n"
                         "workers: 2\n"
                         "pools:\n  app:\n    servers: [%s]\n"
                         "routes:\n  - match: { path_prefix: / }\n    pool: app\n")
                 % (second, be.addr))
    for port in (gw.port, second):
        r = get(port, "/on/%d" % port)
        assert r.status == 200 and r.json()["target"] == "/on/%d" % port, r


def test_health_path_answered_by_the_gateway(gateway, backend):
    import socket
    be = backend()
    gw = gateway(config=("listen: 127.0.0.1:@PORT@\nhealth_path: /healthz\n"
                         "pools:\n  app:\n    servers: [%s]\n"
                         "routes:\n  - match: { path_prefix: / }\n    pool: app\n"
                         "    rate_limit: { rate: 1/min, burst: 1 }\n") % be.addr)
    # GET and HEAD on one keep-alive connection: the gateway answers, not
    # the backend, and the route's rate limit does not apply to it
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
              b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
              b"GET /healthz?probe=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    deadline = time.monotonic() + 5
    while data.count(b"HTTP/1.1 200") < 3 and time.monotonic() < deadline:
        data += s.recv(4096)
    s.close()
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 3, data
    assert data.count(b"200 OK\n") == 2, data  # HEAD's answer has no body
    assert not [r for r in be.requests() if r["target"].startswith("/healthz")]
    # other paths go to the backend as before; a HEAD's 429 has no body either
    assert get(gw.port, "/x").status == 200
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    s.sendall(b"HEAD /y HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    deadline = time.monotonic() + 5
    while b"200 OK\n" not in data and time.monotonic() < deadline:
        data += s.recv(4096)
    s.close()
    assert data.startswith(b"HTTP/1.1 429"), data
    assert b"429 Too Many Requests\n" not in data  # no body after the HEAD's head
    assert data.count(b"HTTP/1.1 ") == 2 and data.endswith(b"200 OK\n"), data


def test_health_path_errors(run_scalegate, tmp_path):
    p = tmp_path / "h.yaml"
    p.write_text("listen: 127.0.0.1:1\nhealth_path: healthz\npools:\n  app:\n"
                 "    servers: [127.0.0.1:2]\n")
    r = run_scalegate(["-t", "-c", str(p)])
    assert r.returncode == 1
    assert ('h.yaml:2: health_path: "healthz" is not a path (starting with /, no query, at most '
            '256 bytes)') in r.stderr, r.stderr
