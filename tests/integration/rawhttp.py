"""Raw-socket HTTP/1.1 client for the integration tests.

Sends exactly the bytes it is given and parses responses strictly enough to
notice framing mistakes: status line, headers, then a body framed by
Content-Length, chunked encoding or connection close (none for HEAD, 1xx,
204 and 304). Responses can be read one after another on one connection, so
pipelining is just send() once and read_response() N times.
"""
import json
import socket
import time


class ConnClosed(Exception):
    """The peer closed (or reset) the connection before a full response."""


class Response:
    def __init__(self, version, status, reason, headers, raw_head):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value), in order
        self.raw_head = raw_head
        self.body = b""
        self.chunked = False
        self.chunk_sizes = []
        self.trailers = []
        self.until_close = False

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def headers_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def has_header(self, name):
        return bool(self.headers_all(name))

    def connection_tokens(self):
        out = set()
        for v in self.headers_all("connection"):
            out |= {t.strip().lower() for t in v.split(",") if t.strip()}
        return out

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<Response %s %d %r headers=%r body[:200]=%r>" % (
            self.version, self.status, self.reason, self.headers, self.body[:200])


class Conn:
    def __init__(self, port, host="127.0.0.1", timeout=10.0, rcvbuf=None, connect=True):
        self.port = port
        self.host = host
        self.timeout = timeout
        self.buf = bytearray()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        if connect:
            self.sock.connect((host, port))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # -- sending --------------------------------------------------------
    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def send_lenient(self, data):
        """send() that ignores the peer closing early (it may answer and
        close before reading everything: the response is what matters)."""
        try:
            self.send(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def request(self, method="GET", target="/", headers=None, body=None,
                version="HTTP/1.1", host="localhost"):
        """Sends one request. headers: list of (name, value); Host is added
        first unless host is None; Content-Length is added for a body
        unless headers already frame it."""
        hdrs = []
        if host is not None:
            hdrs.append(("Host", host))
        hdrs += list(headers or [])
        if isinstance(body, str):
            body = body.encode("latin-1")
        names = {k.lower() for k, _ in hdrs}
        if body is not None and "content-length" not in names and \
                "transfer-encoding" not in names:
            hdrs.append(("Content-Length", str(len(body))))
        out = "%s %s %s\r\n" % (method, target, version)
        out += "".join("%s: %s\r\n" % (k, v) for k, v in hdrs)
        out += "\r\n"
        self.send(out.encode("latin-1") + (body or b""))

    # -- receiving ------------------------------------------------------
    def _deadline(self, timeout):
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out waiting for response bytes")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(262144)
        except ConnectionResetError:
            raise ConnClosed("connection reset (have %d buffered bytes: %r)"
                             % (len(self.buf), bytes(self.buf[:200])))
        if not data:
            raise ConnClosed("connection closed (have %d buffered bytes: %r)"
                             % (len(self.buf), bytes(self.buf[:200])))
        self.buf += data

    def _until(self, sep, deadline, limit=1 << 20):
        start = 0
        while True:
            i = self.buf.find(sep, start)
            if i >= 0:
                out = bytes(self.buf[: i + len(sep)])
                del self.buf[: i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise AssertionError("no %r within %d bytes" % (sep, limit))
            start = max(0, len(self.buf) - len(sep) + 1)
            self._fill(deadline)

    def _exact(self, n, deadline):
        while len(self.buf) < n:
            self._fill(deadline)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_exact(self, n, timeout=None):
        return self._exact(n, self._deadline(timeout))

    def read_head(self, timeout=None):
        deadline = self._deadline(timeout)
        head = self._until(b"\r\n\r\n", deadline)
        lines = head[:-4].split(b"\r\n")
        sl = lines[0].decode("latin-1")
        parts = sl.split(" ", 2)
        assert len(parts) >= 2 and parts[0].startswith("HTTP/"), "bad status line %r" % sl
        version = parts[0]
        status = int(parts[1])
        reason = parts[2] if len(parts) > 2 else ""
        headers = []
        for ln in lines[1:]:
            t = ln.decode("latin-1")
            assert ":" in t, "bad header line %r in %r" % (t, head)
            k, _, v = t.partition(":")
            assert k == k.strip() and k, "bad header name in %r" % t
            headers.append((k, v.strip(" \t")))
        return Response(version, status, reason, headers, head)

    def read_response(self, method="GET", timeout=None, interim=False, sink=None):
        """Reads one response. 1xx responses are skipped unless interim=True
        (then the first response, interim or not, is returned). sink, if
        given, is called with each body piece instead of storing the body."""
        deadline = self._deadline(timeout)
        while True:
            resp = self.read_head(timeout=max(0.001, deadline - time.monotonic()))
            if 100 <= resp.status < 200 and resp.status != 101:
                if interim:
                    return resp
                continue
            break
        if method == "HEAD" or resp.status in (101, 204, 304) or resp.status < 200:
            return resp
        store = []

        def put(b):
            if sink:
                sink(b)
            else:
                store.append(b)

        te = resp.header("transfer-encoding")
        cl = resp.headers_all("content-length")
        if te is not None:
            assert te.lower().replace(" ", "").split(",")[-1] == "chunked", resp
            resp.chunked = True
            while True:
                line = self._until(b"\r\n", deadline).decode("latin-1")
                size = int(line.split(";")[0].strip(), 16)
                if size == 0:
                    break
                resp.chunk_sizes.append(size)
                put(self._exact(size, deadline))
                crlf = self._exact(2, deadline)
                assert crlf == b"\r\n", "bad chunk terminator %r" % crlf
            while True:
                line = self._until(b"\r\n", deadline)
                if line == b"\r\n":
                    break
                resp.trailers.append(line[:-2].decode("latin-1"))
        elif cl:
            assert len(set(cl)) == 1, "conflicting Content-Length %r" % cl
            left = int(cl[0])
            while left > 0:
                if not self.buf:
                    self._fill(deadline)
                n = min(left, len(self.buf))
                put(bytes(self.buf[:n]))
                del self.buf[:n]
                left -= n
        else:
            resp.until_close = True
            while True:
                if self.buf:
                    put(bytes(self.buf))
                    self.buf.clear()
                try:
                    self._fill(deadline)
                except ConnClosed:
                    break
        if not sink:
            resp.body = b"".join(store)
        return resp

    def responses(self, n, methods=None, timeout=None):
        methods = methods or ["GET"] * n
        return [self.read_response(m, timeout=timeout) for m in methods]

    def wait_closed(self, timeout):
        """True if the peer closes (EOF or reset) within timeout; any bytes
        received meanwhile are kept in self.buf. False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not data:
                return True
            self.buf += data

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def get(port, target="/", method="GET", headers=None, body=None, host="localhost",
        timeout=10.0):
    """One request on a fresh connection; returns the Response."""
    with Conn(port, timeout=timeout) as c:
        c.request(method, target, headers=headers, body=body, host=host)
        return c.read_response(method)
