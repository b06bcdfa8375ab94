"""HTTP/1.1 handling through the gateway: parser rejections (each with its
status and nothing reaching the backend), keep-alive, pipelining, bodies,
HEAD, 100-continue, HTTP/1.0, added and hop-by-hop headers, routing."""
import hashlib
import re
import time

import pytest

import backend as B
from rawhttp import Conn, get

LIMITS = {"max_request_line": "1k", "max_header_bytes": "4k", "max_body_bytes": "1k"}


@pytest.fixture
def gw_be(gateway, backend):
    be = backend("app")
    gw = gateway(pools={"app": [be]}, limits=LIMITS)
    return gw, be


def assert_gateway_error(r, status):
    assert r.status == status, r
    assert r.version == "HTTP/1.1", r
    assert (r.header("content-type") or "").startswith("text/plain"), r
    assert r.header("content-length") is not None, r
    assert re.match(rb"%d [A-Za-z]" % status, r.body), r
    assert r.body.endswith(b"\n"), r


def assert_nothing_reached(be):
    time.sleep(0.3)  # a forwarded head would be logged by now
    assert be.heads() == [], "request reached the backend: %r" % be.heads()


def X(s):
    return s.encode("latin-1")


REJECTIONS = [
    ("cl-and-te", 400,
     X("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
       "0\r\n\r\n")),
    ("te-and-cl", 400,
     X("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
       "0\r\n\r\n")),
    ("two-content-length", 400,
     X("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")),
    ("content-length-list", 400,
     X("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!")),
    ("bad-content-length", 400,
     X("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12a\r\n\r\nhello")),
    ("negative-content-length", 400,
     X("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")),
    ("plus-content-length", 400,
     X("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello")),
    ("te-gzip-alone", 400,
     X("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nhello")),
    ("te-unknown-coding", 501,
     X("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: foo, chunked\r\n\r\n0\r\n\r\n")),
    ("bad-chunk-size", 400,
     X("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n"
       "0\r\n\r\n")),
    ("chunk-size-overflow", 400,
     X("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
       "10000000000000000005\r\nhello\r\n0\r\n\r\n")),
    ("chunk-data-longer-than-size", 400,
     X("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
       "3\r\nhello\r\n0\r\n\r\n")),
    ("chunk-extension-overlong", 400,
     X("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=" + "x" * 5000
       + "\r\nhello\r\n0\r\n\r\n")),
    ("obs-fold", 400,
     X("GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n  b\r\n\r\n")),
    ("bare-cr-in-header", 400,
     X("GET / HTTP/1.1\r\nHost: x\r\nX-Bad: a\rb\r\n\r\n")),
    ("nul-in-header", 400,
     X("GET / HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n")),
    ("header-without-colon", 400,
     X("GET / HTTP/1.1\r\nHost: x\r\nX-No-Colon\r\n\r\n")),
    ("space-before-colon", 400,
     X("GET / HTTP/1.1\r\nHost: x\r\nX-Bad : a\r\n\r\n")),
    ("double-space-request-line", 400,
     X("GET  / HTTP/1.1\r\nHost: x\r\n\r\n")),
    ("target-not-origin-form", 400,
     X("GET foo HTTP/1.1\r\nHost: x\r\n\r\n")),
    ("empty-content-length", 400,
     X("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n")),
    ("invalid-method-char", 400,
     X("GE(T / HTTP/1.1\r\nHost: x\r\n\r\n")),
    ("no-host-http11", 400,
     X("GET / HTTP/1.1\r\nUser-Agent: t\r\n\r\n")),
    ("two-hosts", 400,
     X("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")),
    ("http-2-request-line", 505,
     X("GET / HTTP/2.0\r\nHost: x\r\n\r\n")),
    ("request-line-too-long", 414,
     X("GET /" + "a" * 2000 + " HTTP/1.1\r\nHost: x\r\n\r\n")),
    ("header-section-too-big", 431,
     X("GET / HTTP/1.1\r\nHost: x\r\n"
       + "".join("X-Pad-%d: %s\r\n" % (i, "p" * 300) for i in range(20)) + "\r\n")),
    ("body-over-limit", 413,
     X("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n" + "b" * 2000)),
]


@pytest.mark.parametrize("raw,status", [(r[2], r[1]) for r in REJECTIONS],
                         ids=[r[0] for r in REJECTIONS])
def test_rejected(gw_be, raw, status):
    gw, be = gw_be
    with Conn(gw.port, timeout=5) as c:
        c.send_lenient(raw)
        r = c.read_response()
        assert_gateway_error(r, status)
        if 400 <= status < 500:
            assert "close" in r.connection_tokens(), r
            assert c.wait_closed(5), "connection still open after %d" % status
    assert_nothing_reached(be)


def test_rejection_after_good_request_on_same_connection(gw_be):
    """A bad request after a good one on a keep-alive connection: the good one
    is answered, the bad one gets 400, the backend saw only the good one."""
    gw, be = gw_be
    with Conn(gw.port, timeout=5) as c:
        c.request("GET", "/good")
        r = c.read_response()
        assert r.status == 200, r
        c.send_lenient(b"GET /bad HTTP/1.1\r\nHost: x\r\nX-Bad : a\r\n\r\n")
        assert_gateway_error(c.read_response(), 400)
    time.sleep(0.3)
    assert [h["target"] for h in be.heads()] == ["/good"]


def test_chunked_body_over_limit(gw_be):
    gw, be = gw_be
    chunks = b"".join(b"200\r\n" + b"c" * 0x200 + b"\r\n" for _ in range(4)) + b"0\r\n\r\n"
    with Conn(gw.port, timeout=5) as c:
        c.send_lenient(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                       + chunks)
        assert_gateway_error(c.read_response(), 413)


def test_requests_just_inside_limits_pass(gw_be):
    """Requests just inside max_request_line/max_header_bytes/max_body_bytes pass."""
    gw, be = gw_be
    with Conn(gw.port, timeout=5) as c:
        target = "/" + "a" * (1024 - len("GET  HTTP/1.1") - 1 - 16)
        c.request("GET", target)
        r = c.read_response()
        assert r.status == 200, r
        c.request("POST", "/body", body=b"z" * 1024)
        r = c.read_response()
        assert r.status == 200, r
        assert r.json()["body_len"] == 1024


# --------------------------------------------------------------------------
# keep-alive and pipelining


def test_client_keepalive(gw_be):
    gw, be = gw_be
    with Conn(gw.port) as c:
        for path in ("/one", "/two", "/three"):
            c.request("GET", path)
            r = c.read_response()
            assert r.status == 200, r
            assert r.json()["target"] == path
            assert "close" not in r.connection_tokens(), r
    assert len(be.requests()) == 3


def test_upstream_connection_reused(gw_be):
    gw, be = gw_be
    with Conn(gw.port) as c:
        ids = []
        for i in range(5):
            c.request("GET", "/reuse/%d" % i)
            r = c.read_response()
            assert r.status == 200, r
            ids.append(r.json()["conn"])
    assert len(set(ids)) == 1, "backend connection ids %r: no reuse" % ids
    assert len(be.accepts()) == 1, be.accepts()


def test_upstream_connection_reused_across_clients(gateway, backend):
    """With one worker, sequential client connections share the idle upstream
    connection."""
    be = backend()
    gw = gateway(pools={"app": [be]}, workers=1)
    ids = []
    for i in range(4):
        r = get(gw.port, "/c/%d" % i)
        assert r.status == 200, r
        ids.append(r.json()["conn"])
    assert len(set(ids)) == 1, ids


def test_upstream_not_reused_after_backend_close(gw_be):
    """The backend says Connection: close: the next request uses a new
    upstream connection and still succeeds."""
    gw, be = gw_be
    with Conn(gw.port) as c:
        c.request("GET", "/close")
        r1 = c.read_response()
        assert r1.status == 200, r1
        time.sleep(0.2)
        c.request("GET", "/after")
        r2 = c.read_response()
        assert r2.status == 200, r2
        assert r2.json()["conn"] != r1.json()["conn"]


def test_pipelining(gw_be):
    gw, be = gw_be
    reqs = (b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /p2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /chunked?n=3 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /p4 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /p5 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n"
            b"GET /p6 HTTP/1.1\r\nHost: x\r\n\r\n")
    with Conn(gw.port) as c:
        c.send(reqs)
        rs = c.responses(6, ["GET", "POST", "GET", "HEAD", "POST", "GET"])
    assert [r.status for r in rs] == [200] * 6, rs
    assert rs[0].json()["target"] == "/p1"
    assert rs[1].json()["target"] == "/p2" and rs[1].json()["body"] == "hello"
    assert rs[2].body == b"".join(B.chunked_body_parts(3))
    assert rs[3].body == b"" and rs[3].header("x-seq") is not None
    assert rs[4].json()["target"] == "/p5" and rs[4].json()["body"] == "abc"
    assert rs[5].json()["target"] == "/p6"


def test_pipelining_slow_first(gw_be):
    """The first pipelined request is slow at the backend: the fast one
    behind it is still answered second."""
    gw, be = gw_be
    with Conn(gw.port) as c:
        c.send(b"GET /delay?ms=500 HTTP/1.1\r\nHost: x\r\n\r\n"
               b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        r1, r2 = c.responses(2)
    assert r1.json()["target"] == "/delay?ms=500"
    assert r2.json()["target"] == "/fast"


def test_pipelining_many_small(gw_be):
    gw, be = gw_be
    n = 50
    with Conn(gw.port) as c:
        c.send(b"".join(b"GET /n/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(n)))
        rs = c.responses(n)
    assert [r.json()["target"] for r in rs] == ["/n/%d" % i for i in range(n)]


# --------------------------------------------------------------------------
# bodies


def test_chunked_request_body_forwarded(gw_be):
    gw, be = gw_be
    pieces = [b"a" * 1, b"b" * 15, b"c" * 16, b"d" * 255, b"e" * 300, b"f" * 400]
    body = b"".join(pieces)
    wire = b"".join(b"%x;name=val\r\n" % len(p) + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"
    with Conn(gw.port) as c:
        c.send(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        c.send(wire[:100])
        time.sleep(0.1)
        c.send(wire[100:])
        r = c.read_response()
    assert r.status == 200, r
    seen = r.json()
    assert seen["body_len"] == len(body)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_request_with_trailers_then_pipelined(gw_be):
    """Upper-case coding name, upper-case hex, leading zeros, trailer fields:
    the body arrives intact and the request pipelined behind it is parsed
    from the right byte."""
    gw, be = gw_be
    with Conn(gw.port) as c:
        c.send(b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: CHUNKED\r\n\r\n"
               b"000A\r\n0123456789\r\nb\r\nabcdefghijk\r\n"
               b"0\r\nX-Trailer: v\r\nX-Other: w\r\n\r\n"
               b"GET /behind HTTP/1.1\r\nHost: x\r\n\r\n")
        r1, r2 = c.responses(2, ["POST", "GET"])
    assert r1.status == 200, r1
    assert r1.json()["body"] == "0123456789abcdefghijk"
    assert r2.status == 200 and r2.json()["target"] == "/behind", r2


def test_content_length_body_forwarded(gateway, backend):
    be = backend()
    gw = gateway(pools={"app": [be]})  # default max_body_bytes (10MB)
    body = bytes(range(256)) * 4096  # 1 MiB
    with Conn(gw.port, timeout=20) as c:
        c.request("PUT", "/put", body=body)
        r = c.read_response()
    assert r.status == 200, r
    assert r.json()["body_len"] == len(body)
    assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_response_forwarded(gw_be):
    gw, be = gw_be
    with Conn(gw.port) as c:
        c.request("GET", "/chunked?n=40&size=1000")
        r = c.read_response()
        assert r.status == 200, r
        assert r.body == b"".join(B.chunked_body_parts(40, 1000))
        # connection still usable
        c.request("GET", "/next")
        assert c.read_response().json()["target"] == "/next"


def test_chunked_response_with_trailers(gw_be):
    gw, be = gw_be
    with Conn(gw.port) as c:
        c.request("GET", "/chunked?n=5&trailer=1")
        r = c.read_response()
        assert r.status == 200, r
        assert r.body == b"".join(B.chunked_body_parts(5))
        c.request("GET", "/next")
        assert c.read_response().json()["target"] == "/next"


def test_big_response_header(gw_be):
    gw, be = gw_be
    with Conn(gw.port) as c:
        c.request("GET", "/bighead?kb=10")
        r = c.read_response()
        assert r.status == 200, r
        assert r.header("x-big") == "h" * 10240


def test_head(gw_be):
    gw, be = gw_be
    with Conn(gw.port) as c:
        c.request("HEAD", "/h")
        r = c.read_response("HEAD")
        assert r.status == 200, r
        assert r.body == b""
        assert int(r.header("content-length")) > 0, r
        c.request("HEAD", "/chunked?n=3")
        r = c.read_response("HEAD")
        assert r.status == 200, r
        c.request("GET", "/after-head")
        r = c.read_response()
        assert r.status == 200, r
        assert r.json()["target"] == "/after-head"
        assert c.wait_closed(0.3) is False and not c.buf, "extra bytes after HEAD: %r" % c.buf
    assert [h["method"] for h in be.heads()] == ["HEAD", "HEAD", "GET"]


@pytest.mark.parametrize("code", [204, 304])
def test_no_body_statuses(gw_be, code):
    gw, be = gw_be
    with Conn(gw.port) as c:
        c.request("GET", "/status/%d" % code)
        r = c.read_response()
        assert r.status == code, r
        assert r.body == b""
        c.request("GET", "/after")
        r = c.read_response()
        assert r.status == 200 and r.json()["target"] == "/after", r


def test_expect_100_continue(gw_be):
    gw, be = gw_be
    with Conn(gw.port) as c:
        c.send(b"POST /expect HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
               b"Content-Length: 10\r\n\r\n")
        interim = c.read_response(interim=True, timeout=5)
        assert interim.status == 100, interim
        assert interim.raw_head.startswith(b"HTTP/1.1 100 Continue\r\n"), interim.raw_head
        c.send(b"0123456789")
        r = c.read_response()
        assert r.status == 200, r
        seen = r.json()
    assert seen["body"] == "0123456789"
    assert not [v for k, v in seen["headers"] if k.lower() == "expect"], seen["headers"]


def test_expect_100_continue_body_sent_at_once(gw_be):
    """A client that does not wait for 100 Continue (sends the body with
    the head) still gets its body through."""
    gw, be = gw_be
    with Conn(gw.port) as c:
        c.send(b"POST /eager HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
               b"Content-Length: 5\r\n\r\nhello"
               b"GET /behind HTTP/1.1\r\nHost: x\r\n\r\n")
        r1 = c.read_response()
        r2 = c.read_response()
    assert r1.status == 200 and r1.json()["body"] == "hello", r1
    assert r2.status == 200 and r2.json()["target"] == "/behind", r2


def test_expect_100_continue_ignored_for_http10(gw_be):
    """RFC 9110 10.1.1: a 100-continue expectation in an HTTP/1.0 request is
    ignored (no 100 Continue to an HTTP/1.0 client)."""
    gw, be = gw_be
    with Conn(gw.port) as c:
        c.send(b"POST /ten HTTP/1.0\r\nHost: x\r\nExpect: 100-continue\r\n"
               b"Content-Length: 5\r\n\r\nhello")
        r = c.read_response(interim=True)
    assert r.status == 200, r
    assert r.json()["body"] == "hello"


def test_expect_100_continue_over_limit_is_413(gw_be):
    """Body announced over max_body_bytes: 413 instead of 100 Continue."""
    gw, be = gw_be
    with Conn(gw.port) as c:
        c.send(b"POST /expect HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
               b"Content-Length: 5000\r\n\r\n")
        r = c.read_response(interim=True, timeout=5)
        if r.status == 100:  # allowed, if wasteful: then the body, then 413
            c.send_lenient(b"e" * 5000)
            r = c.read_response(timeout=5)
        assert_gateway_error(r, 413)
    assert_nothing_reached(be)


# --------------------------------------------------------------------------
# HTTP/1.0


def test_http10_closes(gw_be):
    gw, be = gw_be
    with Conn(gw.port) as c:
        c.send(b"GET /ten HTTP/1.0\r\nHost: x\r\n\r\n")
        r = c.read_response()
        assert r.status == 200, r
        assert r.json()["target"] == "/ten"
        assert c.wait_closed(5), "HTTP/1.0 connection without keep-alive left open"


def test_http10_keepalive(gw_be):
    gw, be = gw_be
    with Conn(gw.port) as c:
        for path in ("/k1", "/k2"):
            c.send(b"GET %s HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n" % X(path))
            r = c.read_response()
            assert r.status == 200, r
            assert r.json()["target"] == path
            assert r.header("content-length") is not None, r
            assert "keep-alive" in r.connection_tokens(), r
        c.send(b"GET /k3 HTTP/1.0\r\nHost: x\r\n\r\n")
        assert c.read_response().json()["target"] == "/k3"
        assert c.wait_closed(5)


def test_http10_chunked_response_decoded(gw_be):
    gw, be = gw_be
    with Conn(gw.port) as c:
        c.send(b"GET /chunked?n=10&size=100 HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        r = c.read_response()
        assert r.status == 200, r
        assert not r.chunked, "chunked response sent to an HTTP/1.0 client: %r" % r
        assert r.body == b"".join(B.chunked_body_parts(10, 100))
        assert c.wait_closed(5)


def test_http10_request_without_host(gw_be):
    gw, be = gw_be
    with Conn(gw.port) as c:
        c.send(b"GET /nohost HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200, r


# --------------------------------------------------------------------------
# headers


def hdrs(seen, name):
    return [v for k, v in seen["headers"] if k.lower() == name.lower()]


def test_forwarding_headers_added(gw_be):
    gw, be = gw_be
    with Conn(gw.port) as c:
        c.request("GET", "/h1")
        r1 = c.read_response()
        c.request("GET", "/h2", headers=[("X-Forwarded-For", "10.1.2.3"),
                                         ("X-Request-ID", "my-request-42")])
        r2 = c.read_response()
    assert r1.status == 200 and r2.status == 200
    assert r1.header("via") == "1.1 scalegate", r1
    s1, s2 = r1.json(), r2.json()
    assert hdrs(s1, "via") == ["1.1 scalegate"], s1["headers"]
    assert hdrs(s1, "x-forwarded-for") == ["127.0.0.1"], s1["headers"]
    assert hdrs(s1, "x-forwarded-proto") == ["http"], s1["headers"]
    rid = hdrs(s1, "x-request-id")
    assert len(rid) == 1 and re.fullmatch(r"[0-9a-fA-F]{32}", rid[0]), s1["headers"]
    assert hdrs(s2, "x-forwarded-for") == ["10.1.2.3, 127.0.0.1"], s2["headers"]
    assert hdrs(s2, "x-request-id") == ["my-request-42"], s2["headers"]
    assert hdrs(s1, "host") == ["localhost"], s1["headers"]


def test_header_values_with_tab_and_obs_text_forwarded(gw_be):
    gw, be = gw_be
    with Conn(gw.port) as c:
        c.send(b"GET /v HTTP/1.1\r\nHost: x\r\nX-Tab: a\tb\r\nX-Obs: caf\xe9 \xff\r\n"
               b"X-Empty:\r\nX-Spaces:   padded   \r\n\r\n")
        r = c.read_response()
    assert r.status == 200, r
    seen = r.json()
    assert hdrs(seen, "x-tab") == ["a\tb"], seen["headers"]
    assert hdrs(seen, "x-obs") == ["caf\xe9 \xff"], seen["headers"]
    assert hdrs(seen, "x-empty") == [""], seen["headers"]
    assert hdrs(seen, "x-spaces") == ["padded"], seen["headers"]


def test_target_forwarded_unchanged(gw_be):
    gw, be = gw_be
    target = "/a%2Fb/./c/../d;p=1?x=%20y&z=%E2%82%AC&empty=&q=a/b?c"
    with Conn(gw.port) as c:
        c.request("GET", target)
        r = c.read_response()
    assert r.status == 200, r
    assert r.json()["target"] == target


def test_request_ids_differ(gw_be):
    gw, be = gw_be
    ids = set()
    with Conn(gw.port) as c:
        for i in range(5):
            c.request("GET", "/id")
            ids.add(hdrs(c.read_response().json(), "x-request-id")[0])
    assert len(ids) == 5, ids


@pytest.mark.parametrize("conn_value", ["keep-alive, Foo", "close, foo"])
def test_hop_by_hop_request_headers_removed(gw_be, conn_value):
    gw, be = gw_be
    with Conn(gw.port) as c:
        c.request("GET", "/hop", headers=[
            ("Connection", conn_value), ("Foo", "bar"), ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"), ("Trailer", "X-T"), ("Proxy-Connection", "keep-alive"),
            ("Upgrade", "h2c"), ("X-Kept", "yes")])
        r = c.read_response()
        assert r.status == 200, r
        seen = r.json()
        if "close" in conn_value:
            assert c.wait_closed(5), "client asked Connection: close"
    names = {k.lower() for k, v in seen["headers"]}
    for gone in ("foo", "keep-alive", "te", "trailer", "proxy-connection", "upgrade"):
        assert gone not in names, "%s forwarded: %r" % (gone, seen["headers"])
    for v in hdrs(seen, "connection"):
        assert "foo" not in v.lower(), seen["headers"]
    assert hdrs(seen, "x-kept") == ["yes"]


def test_hop_by_hop_response_headers_removed(gw_be):
    gw, be = gw_be
    with Conn(gw.port) as c:
        c.request("GET", "/hop")
        r = c.read_response()
    assert r.status == 200, r
    for gone in ("x-secret", "keep-alive", "proxy-connection"):
        assert not r.has_header(gone), r
    assert "x-secret" not in r.connection_tokens(), r
    assert r.header("x-visible") == "yes", r
    assert r.headers_all("via") == ["1.1 scalegate"], r


# --------------------------------------------------------------------------
# routing


def test_absolute_form_target(gateway, backend):
    a = backend("abs")
    other = backend("other")
    gw = gateway(pools={"a": [a], "o": [other]},
                 routes=[{"match": {"host": "abs.example"}, "pool": "a"},
                         {"match": {"path_prefix": "/"}, "pool": "o"}])
    with Conn(gw.port) as c:
        c.send(b"GET http://abs.example/some/path?q=1 HTTP/1.1\r\nHost: other.example\r\n\r\n")
        r = c.read_response()
    assert r.status == 200, r
    seen = r.json()
    assert seen["backend"] == "abs", seen
    assert seen["target"] == "/some/path?q=1", seen
    assert hdrs(seen, "host") == ["abs.example"], seen["headers"]
    assert other.heads() == []


def test_absolute_form_target_with_port(gateway, backend):
    a = backend("abs")
    other = backend("other")
    gw = gateway(pools={"a": [a], "o": [other]},
                 routes=[{"match": {"host": "abs.example"}, "pool": "a"},
                         {"match": {"path_prefix": "/"}, "pool": "o"}])
    with Conn(gw.port) as c:
        c.send(b"GET http://abs.example:8080 HTTP/1.1\r\nHost: abs.example:8080\r\n\r\n")
        r = c.read_response()
    assert r.status == 200, r
    seen = r.json()
    assert seen["backend"] == "abs", seen
    assert seen["target"] == "/", seen
    assert hdrs(seen, "host") == ["abs.example:8080"], seen["headers"]


def test_route_by_host_path_and_method(gateway, backend):
    api = backend("api")
    post = backend("post")
    rest = backend("rest")
    gw = gateway(pools={"api": [api], "post": [post], "rest": [rest]},
                 routes=[{"match": {"host": "api.example", "path_prefix": "/v1"}, "pool": "api"},
                         {"match": {"methods": ["POST"]}, "pool": "post"},
                         {"match": {"path_prefix": "/"}, "pool": "rest"}])
    cases = [("GET", "/v1/x", "API.example:8080", "api"),
             ("GET", "/v2/x", "api.example", "rest"),
             ("POST", "/v1/x", "api.example", "api"),
             ("POST", "/other", "api.example", "post"),
             ("GET", "/v1/x", "www.example", "rest")]
    for method, path, host, want in cases:
        r = get(gw.port, path, method=method, host=host,
                body=b"" if method == "POST" else None)
        assert r.status == 200, (method, path, host, r)
        assert r.json()["backend"] == want, (method, path, host, r.json()["backend"])


def test_no_route_404(gateway, backend):
    be = backend()
    gw = gateway(pools={"app": [be]}, routes=[{"match": {"path_prefix": "/api"}, "pool": "app"}])
    with Conn(gw.port) as c:
        c.request("GET", "/other")
        r = c.read_response()
        assert_gateway_error(r, 404)
        # 404 is not a parse error: the connection may stay open; if it does it works.
        if "close" not in r.connection_tokens():
            c.request("GET", "/api/x")
            assert c.read_response().status == 200
    assert all(h["target"].startswith("/api") for h in be.heads()), be.heads()
    r = get(gw.port, "/api/ok")
    assert r.status == 200 and r.json()["target"] == "/api/ok"
