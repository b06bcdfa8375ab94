"""A minimal Chrome DevTools Protocol driver, standard library only.

- Browser(chromium, profile_dir, args): starts headless Chromium with
  --remote-debugging-port=0 in its own process group, reads the port it
  picked from <profile_dir>/DevToolsActivePort; .new_page() opens a tab
  (PUT /json/new) and returns a Page; .close() kills the whole process
  group (SIGTERM, then SIGKILL) and removes the profile. Use it with `with`.
- Page: a CDP session over a WebSocket to one tab. .call(method, params,
  timeout) sends {"id", "method", "params"} and returns the matching
  result (events that arrive meanwhile are kept, .wait_event() takes them);
  .evaluate(js) runs Runtime.evaluate with returnByValue and returns the
  value.
- WebSocket: just enough of an RFC 6455 client for that: the upgrade
  handshake (checks Sec-WebSocket-Accept), masked client text frames,
  server frames of any length (7-bit, 16-bit and 64-bit lengths),
  fragmented messages, pings answered with pongs, close -> ConnectionError.

Every blocking step has a deadline; a timeout raises TimeoutError.
"""
import base64
import collections
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import urllib.parse

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class CDPError(Exception):
    """An error answer from the browser: {"error": {"code", "message"}}."""


class WebSocket:
    def __init__(self, url, timeout=10):
        u = urllib.parse.urlsplit(url)
        assert u.scheme == "ws", url
        self.sock = socket.create_connection((u.hostname, u.port or 80), timeout=timeout)
        self.buf = b""
        key = base64.b64encode(os.urandom(16)).decode()
        req = ("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
               % (u.path or "/", u.netloc, key))
        self.sock.sendall(req.encode())
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            self._fill(deadline)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if lines[0].split()[1:2] != ["101"]:
            raise ConnectionError("websocket upgrade refused: %s" % lines[0])
        hdrs = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        want = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        if hdrs.get("sec-websocket-accept") != want:
            raise ConnectionError("bad Sec-WebSocket-Accept: %r" % hdrs.get("sec-websocket-accept"))

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("websocket: no data in time")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("websocket: no data in time") from None
        if not data:
            raise ConnectionError("websocket: connection closed")
        self.buf += data

    def _read(self, n, deadline):
        while len(self.buf) < n:
            self._fill(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send_frame(self, opcode, payload):
        n = len(payload)
        head = bytes([0x80 | opcode])  # FIN + opcode
        if n < 126:
            head += bytes([0x80 | n])  # the mask bit: clients always mask
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.settimeout(10)
        self.sock.sendall(head + mask + body)

    def send_text(self, text):
        self._send_frame(0x1, text.encode())

    def recv_text(self, deadline):
        """The next whole text message (fragments joined)."""
        parts = []
        while True:
            b0, b1 = self._read(2, deadline)
            fin, opcode, n = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2, deadline))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8, deadline))[0]
            mask = self._read(4, deadline) if b1 & 0x80 else None
            payload = self._read(n, deadline)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x9:  # ping
                self._send_frame(0xA, payload)
                continue
            if opcode == 0xA:  # pong
                continue
            if opcode == 0x8:
                raise ConnectionError("websocket closed by the browser: %r" % payload[:125])
            parts.append(payload)  # 0x1 text, 0x2 binary or 0x0 continuation
            if fin:
                return b"".join(parts).decode()

    def close(self):
        try:
            self._send_frame(0x8, struct.pack("!H", 1000))
        except OSError:
            pass
        self.sock.close()


class Page:
    def __init__(self, ws_url, target_id=None):
        self.ws = WebSocket(ws_url)
        self.target_id = target_id
        self.next_id = 0
        self.events = collections.deque(maxlen=1000)

    def call(self, method, params=None, timeout=10):
        self.next_id += 1
        mid = self.next_id
        self.ws.send_text(json.dumps({"id": mid, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv_text(deadline))
            if msg.get("id") == mid:
                if "error" in msg:
                    raise CDPError("%s: %s" % (method, msg["error"]))
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, method, timeout=10):
        """The params of the first kept or next `method` event."""
        deadline = time.monotonic() + timeout
        while True:
            for ev in list(self.events):
                if ev["method"] == method:
                    self.events.remove(ev)
                    return ev.get("params", {})
            msg = json.loads(self.ws.recv_text(deadline))
            if "method" in msg:
                self.events.append(msg)

    def evaluate(self, expression, timeout=10):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                           "awaitPromise": True}, timeout)
        if "exceptionDetails" in r:
            raise CDPError("evaluate: %s" % r["exceptionDetails"])
        return r["result"].get("value")

    def close(self):
        self.ws.close()


class Browser:
    def __init__(self, chromium, profile_dir, args=(), log_path=None, timeout=30):
        self.profile = str(profile_dir)
        self.log = open(log_path or os.devnull, "wb")
        cmd = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
               "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions",
               "--remote-debugging-port=0", "--user-data-dir=%s" % self.profile]
        self.proc = subprocess.Popen(cmd + list(args) + ["about:blank"], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log, start_new_session=True)
        self.pages = []
        try:
            self.port = self._port(timeout)
        except BaseException:
            self.close()
            raise

    def _port(self, timeout):
        f = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("chromium exited with %s" % self.proc.returncode)
            try:
                first = open(f).read().split("\n")[0].strip()
                if first.isdigit():
                    return int(first)
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError("chromium wrote no %s in %ss" % (f, timeout))

    def http(self, method, path, timeout=10):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request(method, path)
            r = c.getresponse()
            body = r.read()
        finally:
            c.close()
        if r.status != 200:
            raise CDPError("%s %s: HTTP %d %r" % (method, path, r.status, body[:200]))
        return json.loads(body) if body.strip()[:1] in (b"{", b"[") else body

    def new_page(self, url="about:blank"):
        t = self.http("PUT", "/json/new?" + urllib.parse.quote(url, safe=":/?#=&"))
        p = Page(t["webSocketDebuggerUrl"], t.get("id"))
        self.pages.append(p)
        return p

    def close(self):
        for p in self.pages:
            try:
                p.close()
            except OSError:
                pass
        if self.proc.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(5)
                    break
                except subprocess.TimeoutExpired:
                    pass
        try:  # helpers (zygote, renderers) left behind in the group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
