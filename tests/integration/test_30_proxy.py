"""Proxying: backend failures (502/504), streaming a big response to a slow
reader with bounded memory, WebSocket tunnelling, round robin."""
import base64
import hashlib
import os
import socket
import threading
import time

import backend as B
from conftest import free_port, wait_until
from rawhttp import Conn, ConnClosed, get


def assert_gateway_error(r, status):
    assert r.status == status, r
    assert (r.header("content-type") or "").startswith("text/plain"), r
    assert r.body.startswith(b"%d " % status), r


def test_backend_down_502(gateway):
    dead = free_port()  # nothing listens there
    gw = gateway(pools={"app": {"servers": [dead], "connect_timeout": "2s"}})
    t0 = time.monotonic()
    with Conn(gw.port, timeout=10) as c:
        c.request("GET", "/x")
        r = c.read_response()
    assert_gateway_error(r, 502)
    assert time.monotonic() - t0 < 5
    # the gateway is still fine afterwards
    assert get(gw.port, "/again").status == 502


def test_bad_backend_response_502(gateway, backend):
    be = backend()
    gw = gateway(pools={"app": [be]})
    r = get(gw.port, "/garbage")
    assert_gateway_error(r, 502)
    r = get(gw.port, "/fine")
    assert r.status == 200 and r.json()["target"] == "/fine", r


def test_silent_backend_504(gateway, backend):
    be = backend()
    gw = gateway(pools={"app": {"servers": [be], "response_timeout": "1s"}})
    t0 = time.monotonic()
    with Conn(gw.port, timeout=10) as c:
        c.request("GET", "/silent")
        r = c.read_response()
    took = time.monotonic() - t0
    assert_gateway_error(r, 504)
    assert 0.5 <= took < 8, "504 after %.2fs with response_timeout 1s" % took
    assert [h["target"] for h in be.heads()] == ["/silent"]
    r = get(gw.port, "/after")
    assert r.status == 200, r


def test_truncated_backend_response_closes_client(gateway, backend):
    """Headers already sent, then the backend dies: the client connection
    must be closed (not left waiting, not reused)."""
    be = backend()
    gw = gateway(pools={"app": [be]})
    with Conn(gw.port, timeout=10) as c:
        c.request("GET", "/truncated")
        try:
            r = c.read_response()
        except ConnClosed:
            pass
        else:
            raise AssertionError("complete response from a truncated backend reply: %r" % r)
    assert get(gw.port, "/after").status == 200


def test_big_response_streamed_to_slow_reader(gateway, backend):
    """100 MiB through the gateway to a reader with a small receive buffer
    that first reads slowly: the gateway must apply backpressure, not buffer
    the response, so its RSS stays far below the response size.

    ASan's quarantine (256 MiB by default) keeps freed memory resident, which
    would make a gateway that mallocs/frees a buffer per read look like it
    buffers everything; the quarantine is capped at 8 MiB for this test.
    A gateway that reads ahead without limit holds ~100 MiB after the slow
    phase (the backend writes as fast as it can); the bound is 16 MiB."""
    mb = 100
    limit_kb = 16 * 1024  # measured: < 0.1 MiB of growth with fixed-size buffers
    expected = B.big_sha256(mb)
    be = backend()
    gw = gateway(pools={"app": [be]}, env={"ASAN_OPTIONS": "quarantine_size_mb=8"})
    for i in range(3):
        assert get(gw.port, "/warm/%d" % i).status == 200
    base = gw.rss_kb()

    samples = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append(gw.rss_kb())
            time.sleep(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    h = hashlib.sha256()
    got = 0
    try:
        c = Conn(gw.port, rcvbuf=16384, timeout=60)
        c.request("GET", "/big?mb=%d" % mb)
        r = c.read_head(timeout=10)
        assert r.status == 200, r
        total = int(r.header("content-length"))
        assert total == mb * B.MIB, r
        if c.buf:
            h.update(bytes(c.buf))
            got += len(c.buf)
            c.buf.clear()
        sock = c.sock
        sock.settimeout(30)
        # slow phase: ~400 KB/s for 3 s
        t_end = time.monotonic() + 3.0
        while time.monotonic() < t_end and got < total:
            d = sock.recv(min(8192, total - got))
            assert d, "connection closed after %d bytes" % got
            h.update(d)
            got += len(d)
            time.sleep(0.02)
        slow_got = got
        rss_after_slow = gw.rss_kb()
        # fast phase
        buf = bytearray(1 << 20)
        mv = memoryview(buf)
        deadline = time.monotonic() + 60
        while got < total:
            assert time.monotonic() < deadline, "only %d of %d bytes in time" % (got, total)
            n = sock.recv_into(mv, min(len(buf), total - got))
            assert n, "connection closed after %d of %d bytes" % (got, total)
            h.update(mv[:n])
            got += n
        c.close()
    finally:
        stop.set()
        th.join()
    peak = max(samples + [rss_after_slow])
    assert slow_got < total // 2, "slow phase read %d bytes: not slow" % slow_got
    assert got == total
    assert h.hexdigest() == expected, "body corrupted"
    assert peak - base < limit_kb, (
        "gateway RSS grew by %d KiB (base %d KiB, peak %d KiB, %d samples) while streaming "
        "%d MiB to a slow reader" % (peak - base, base, peak, len(samples), mb))


def ws_read_frame(c, timeout=5):
    b0, b1 = c.read_exact(2, timeout)
    assert not (b1 & 0x80), "server frame is masked"
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(c.read_exact(2, timeout), "big")
    elif n == 127:
        n = int.from_bytes(c.read_exact(8, timeout), "big")
    return b0 & 0x0F, bool(b0 & 0x80), c.read_exact(n, timeout)


def test_websocket_tunnel(gateway, backend):
    assert B.ws_accept("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    be = backend()
    gw = gateway(pools={"app": [be]})
    key = base64.b64encode(os.urandom(16)).decode()
    with Conn(gw.port, timeout=10) as c:
        c.send(("GET /ws?greet=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n" % key).encode())
        r = c.read_response()
        assert r.status == 101, r
        assert r.header("sec-websocket-accept") == B.ws_accept(key), r
        assert (r.header("upgrade") or "").lower() == "websocket", r
        assert "upgrade" in r.connection_tokens(), r
        # backend -> client without the client asking
        assert ws_read_frame(c) == (1, True, b"hello from backend")
        # client -> backend -> client
        c.send(B.ws_frame(1, b"hello through the tunnel", mask=b"\x01\x02\x03\x04"))
        assert ws_read_frame(c) == (1, True, b"hello through the tunnel")
        big = os.urandom(70000)
        c.send(B.ws_frame(2, big, mask=b"\xaa\xbb\xcc\xdd"))
        assert ws_read_frame(c, timeout=10) == (2, True, big)
        # two frames in one write
        c.send(B.ws_frame(1, b"one", mask=b"abcd") + B.ws_frame(1, b"two", mask=b"efgh"))
        assert ws_read_frame(c)[2] == b"one"
        assert ws_read_frame(c)[2] == b"two"
        c.send(B.ws_frame(8, b"\x03\xe8", mask=b"wxyz"))
        assert ws_read_frame(c) == (8, True, b"\x03\xe8")
        assert c.wait_closed(5), "tunnel not closed after the backend closed"
    head = be.heads()[0]
    names = {k.lower(): v for k, v in head["headers"]}
    assert names.get("upgrade", "").lower() == "websocket", head["headers"]
    assert "upgrade" in names.get("connection", "").lower(), head["headers"]
    assert names.get("sec-websocket-key") == key, head["headers"]


def test_websocket_client_close_closes_upstream(gateway, backend):
    be = backend()
    gw = gateway(pools={"app": [be]})
    key = base64.b64encode(os.urandom(16)).decode()
    c = Conn(gw.port, timeout=10)
    c.send(("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % key).encode())
    assert c.read_response().status == 101
    c.send(B.ws_frame(1, b"ping?", mask=b"abcd"))
    assert ws_read_frame(c)[2] == b"ping?"
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    # the gateway still serves normal requests afterwards
    r = get(gw.port, "/after-ws")
    assert r.status == 200, r


def test_upgrade_refused_by_backend(gateway, backend):
    """Upgrade asked but the backend answers 200 (no 101): plain HTTP goes
    on, the connection is usable for the next request."""
    be = backend()
    gw = gateway(pools={"app": [be]})
    with Conn(gw.port) as c:
        c.send(b"GET /no-ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.json()["target"] == "/no-ws", r
        c.request("GET", "/next")
        r = c.read_response()
        assert r.status == 200 and r.json()["target"] == "/next", r


def test_many_concurrent_connections(gateway, backend):
    be = backend()
    gw = gateway(pools={"app": [be]})
    n = 200
    conns = []
    try:
        for i in range(n):
            conns.append(Conn(gw.port, timeout=20))
        for i, c in enumerate(conns):
            c.request("GET", "/many/%d" % i)
        for i, c in enumerate(conns):
            r = c.read_response()
            assert r.status == 200 and r.json()["target"] == "/many/%d" % i, r
    finally:
        for c in conns:
            c.close()


def test_round_robin(gateway, backend):
    a = backend("A")
    b = backend("B")
    gw = gateway(pools={"app": [a, b]})
    with Conn(gw.port) as c:
        seq = []
        for i in range(6):
            c.request("GET", "/rr/%d" % i)
            r = c.read_response()
            assert r.status == 200, r
            seq.append(r.json()["backend"])
    assert sorted(seq) == ["A"] * 3 + ["B"] * 3, seq
    assert all(x != y for x, y in zip(seq, seq[1:])), "not alternating: %r" % seq
    assert len(a.requests()) == 3 and len(b.requests()) == 3


def test_close_delimited_backend_response(gateway, backend):
    """A backend response framed by connection close reaches the client
    complete (re-framed or close-delimited)."""
    be = backend()
    gw = gateway(pools={"app": [be]})
    with Conn(gw.port, timeout=10) as c:
        c.request("GET", "/eof-body?n=300000")
        r = c.read_response()
        assert r.status == 200, r
        assert r.body == B.eof_body(300000)
        if r.until_close:
            return
        # framed by the gateway: the connection must still work
        c.request("GET", "/after")
        assert c.read_response().json()["target"] == "/after"


def test_backend_stalls_mid_response(gateway, backend):
    """Response headers already sent, then the backend stalls: after
    response_timeout the client connection is closed (the body is short)."""
    be = backend()
    gw = gateway(pools={"app": {"servers": [be], "response_timeout": "1s"}})
    with Conn(gw.port, timeout=10) as c:
        c.request("GET", "/stall")
        t0 = time.monotonic()
        try:
            r = c.read_response()
        except ConnClosed:
            r = None
        except socket.timeout:
            raise AssertionError("client still waiting %.1fs after the backend stalled"
                                 % (time.monotonic() - t0))
        assert r is None, "complete response from a stalled backend: %r" % r
        assert time.monotonic() - t0 < 8
    assert get(gw.port, "/after").status == 200


def test_client_gone_mid_stream(gateway, backend):
    """The client closes in the middle of a big response: the gateway stays
    healthy (and ASan-clean, checked at teardown)."""
    be = backend()
    gw = gateway(pools={"app": [be]})
    for _ in range(3):
        c = Conn(gw.port, rcvbuf=65536, timeout=10)
        c.request("GET", "/big?mb=50")
        r = c.read_head()
        assert r.status == 200, r
        c.read_exact(1 << 20) if len(c.buf) < (1 << 20) else None
        c.close()
    r = get(gw.port, "/after")
    assert r.status == 200, r


def test_client_gone_while_backend_slow(gateway, backend):
    be = backend()
    gw = gateway(pools={"app": [be]})
    for i in range(3):
        c = Conn(gw.port)
        c.request("GET", "/delay?ms=700&i=%d" % i)
        time.sleep(0.2)
        c.close()
    time.sleep(1.0)
    with Conn(gw.port) as c:
        for i in range(3):
            c.request("GET", "/after/%d" % i)
            r = c.read_response()
            assert r.status == 200 and r.json()["target"] == "/after/%d" % i, r


def test_slow_requests_do_not_block_others(gateway, backend):
    """Four requests each held 1.5 s by the backend, then a fast one: the
    fast one is answered at once and the slow ones concurrently."""
    be = backend()
    gw = gateway(pools={"app": [be]}, workers=1)
    slow = [Conn(gw.port, timeout=10) for _ in range(4)]
    try:
        t0 = time.monotonic()
        for i, c in enumerate(slow):
            c.request("GET", "/delay?ms=1500&i=%d" % i)
        r = get(gw.port, "/fast")
        fast_took = time.monotonic() - t0
        assert r.status == 200, r
        for c in slow:
            assert c.read_response().status == 200
        all_took = time.monotonic() - t0
    finally:
        for c in slow:
            c.close()
    assert fast_took < 1.2, "fast request waited %.2fs behind slow ones" % fast_took
    assert all_took < 4.5, "4 x 1.5 s requests took %.2fs: not concurrent" % all_took


def test_backend_informational_response(gateway, backend):
    """A 103 from the backend before the final response: the client gets the
    final 200 (with or without the 103) and the connection stays usable."""
    be = backend()
    gw = gateway(pools={"app": [be]})
    with Conn(gw.port) as c:
        c.request("GET", "/early-hints")
        r = c.read_response()
        assert r.status == 200, r
        assert r.json()["target"] == "/early-hints"
        c.request("GET", "/after")
        r = c.read_response()
        assert r.status == 200 and r.json()["target"] == "/after", r


def test_steady_slow_response_not_cut(gateway, backend):
    """response_timeout is about silence, not total time: a response that
    takes 3 s but sends a chunk every 0.5 s arrives complete."""
    be = backend()
    gw = gateway(pools={"app": {"servers": [be], "response_timeout": "1s"}})
    with Conn(gw.port, timeout=15) as c:
        c.request("GET", "/drip?n=6&ms=500")
        r = c.read_response()
    assert r.status == 200, r
    assert r.body == b"".join(b"drip %d\n" % i for i in range(6))


def test_upstream_idle_closed_after_keepalive_timeout(gateway, backend):
    be = backend()
    gw = gateway(pools={"app": {"servers": [be], "keepalive_timeout": "1s"}}, workers=1)
    r1 = get(gw.port, "/one")
    assert r1.status == 200
    first = r1.json()["conn"]

    def closed_by_gateway():
        return [x for x in be.closes() if x["conn"] == first and x["how"] == "peer"]
    assert wait_until(closed_by_gateway, 5), \
        "idle upstream connection not closed after keepalive_timeout 1s: %r" % be.closes()
    r2 = get(gw.port, "/two")
    assert r2.status == 200 and r2.json()["conn"] != first


def test_upstream_keepalive_zero_keeps_nothing(gateway, backend):
    be = backend()
    gw = gateway(pools={"app": {"servers": [be], "keepalive": 0}}, workers=1)
    with Conn(gw.port) as c:
        ids = []
        for i in range(3):
            c.request("GET", "/k/%d" % i)
            ids.append(c.read_response().json()["conn"])
    assert len(set(ids)) == 3, "upstream reused with keepalive: 0: %r" % ids


def test_backend_closes_idle_upstream_connection(gateway, backend):
    """The backend drops keep-alive connections after 300 ms idle: later
    requests must not fail on the dead pooled connection."""
    be = backend(idle_close_ms=300)
    gw = gateway(pools={"app": [be]}, workers=1)
    with Conn(gw.port) as c:
        for i in range(3):
            c.request("GET", "/idle/%d" % i)
            r = c.read_response()
            assert r.status == 200, "request %d after the backend closed: %r" % (i, r)
            time.sleep(0.8)
    assert len([x for x in be.closes() if x["how"] == "idle-close"]) >= 2, be.closes()


def test_backend_closes_idle_then_post(gateway, backend):
    """Same with a request that has a body (not idempotent): it must still
    not be lost to a connection the backend already closed."""
    be = backend(idle_close_ms=300)
    gw = gateway(pools={"app": [be]}, workers=1)
    with Conn(gw.port) as c:
        for i in range(3):
            c.request("POST", "/post/%d" % i, body=b"payload-%d" % i)
            r = c.read_response()
            assert r.status == 200, "POST %d after the backend closed: %r" % (i, r)
            assert r.json()["body"] == "payload-%d" % i
            time.sleep(0.8)


def test_upstream_idle_pool_size_limited(gateway, backend):
    """keepalive: 1 -> after three concurrent requests on three upstream
    connections, only one idle connection is kept; the gateway closes the
    other two."""
    be = backend()
    gw = gateway(pools={"app": {"servers": [be], "keepalive": 1}}, workers=1)
    conns = [Conn(gw.port, timeout=10) for _ in range(3)]
    try:
        for i, c in enumerate(conns):
            c.request("GET", "/delay?ms=500&i=%d" % i)
        ids = {c.read_response().json()["conn"] for c in conns}
    finally:
        for c in conns:
            c.close()
    assert len(ids) == 3, ids
    closed = wait_until(lambda: len([x for x in be.closes() if x["how"] == "peer"]) >= 2, 5)
    assert closed, "gateway kept more than keepalive=1 idle connections: %r" % be.closes()
    time.sleep(0.3)
    assert len([x for x in be.closes() if x["how"] == "peer"]) == 2, be.closes()
    r = get(gw.port, "/reuse")
    assert r.json()["conn"] in ids
