#!/usr/bin/env python3
"""Test backend for the scalegate integration tests.

A threaded raw-socket HTTP/1.1 server (not http.server: the tests need to
control every byte). It binds 127.0.0.1 (port from --port, 0 = any), prints
"PORT <n>" on stdout once listening, and appends one JSON line per event to
--log:

  {"event": "accept", "conn": N}
  {"event": "closed", "conn": N, "how": "peer"|"backend"|"idle-close"|"error"}
  {"event": "head", "conn": N, "seq": K, "method": ..., "target": ...,
   "version": ..., "headers": [[name, value], ...], "raw": "<head as latin-1>"}
  {"event": "request", ... same fields ..., "body_len": L, "body_sha256": H,
   "body": "<latin-1, only if L <= 65536>", "chunked": bool, "trailers": [...]}

"head" is written as soon as a request head is parsed (before its body), so
a request that reaches the backend only partially is still seen.

Behaviour, selected by the request path (query string after "?"):
  default        200, JSON echo of what was received (the "request" record
                 plus backend name); X-Conn-Id / X-Seq / X-Backend headers
  /chunked?n=N&size=S  chunked response of chunked_body_parts(N, S)
                 (&trailer=1: with trailer fields X-Checksum and X-Other)
  /big?mb=N      Content-Length N MiB of big_block(i) blocks, streamed with
                 sendall as fast as the socket takes them
  /silent        reads the request and never answers (until the peer closes)
  /delay?ms=N    sleeps N ms, then echoes
  /status/NNN    responds with that status (no body for 1xx/204/304;
                 304 carries Content-Length: 1234 nevertheless)
  /bighead?kb=N  echoes with an extra response header X-Big of N KiB
  /close         echoes with "Connection: close" and closes
  /garbage       answers a line that is not HTTP, then closes
  /truncated     promises Content-Length: 1000, sends 10 bytes, closes
  /early-hints   sends "103 Early Hints" first, then echoes
  /drip?n=N&ms=M chunked response, one chunk "drip <i>\\n" every M ms
  /eof-body?n=N  response without Content-Length/chunked: eof_body(N), then close
  /stall         promises Content-Length: 100000, sends 1000 bytes, then stalls
  /hop           echoes, adding hop-by-hop response headers
  /sized?n=N     200 with a body of exactly N bytes (the target repeated)
  ?h=Name:Value  (any echo path, repeatable) adds that response header
  HEAD           same headers as GET (Content-Length), no body
  Expect: 100-continue  -> "100 Continue" sent before the body is read
  Upgrade: websocket    -> 101 + Sec-WebSocket-Accept, then frame echo
                 (?greet=1: first sends a text frame "hello from backend")
Keep-alive and pipelining are supported (requests on a connection are
handled in order). --idle-close-ms N: close a keep-alive connection after N
ms without a new request (like a backend with a short keep-alive timeout).
Whole-backend modes (for the pool tests): --status N answers every echo
(default path, /delay, ...) with status N instead of 200 (X-Backend still
set); --blackhole accepts, reads and logs every request and never answers
(like /silent for every path). --port N binds that port (SO_REUSEADDR, so
a killed backend can be restarted on its port).
"""
import argparse
import base64
import hashlib
import json
import os
import socket
import threading
import time
import urllib.parse

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MIB = 1024 * 1024
_BASE_BLOCK = bytes(range(256)) * (MIB // 256)


def big_block(i):
    """The i-th MiB of a /big response: a fixed pattern stamped with i."""
    b = bytearray(_BASE_BLOCK)
    b[0:8] = i.to_bytes(8, "big")
    b[-8:] = i.to_bytes(8, "big")
    return bytes(b)


def big_sha256(mb):
    h = hashlib.sha256()
    for i in range(mb):
        h.update(big_block(i))
    return h.hexdigest()


def eof_body(n):
    """The body of /eof-body?n=N."""
    return b"".join(bytes((i // 10000 + j) % 256 for j in range(min(10000, n - i)))
                    for i in range(0, n, 10000))


def chunked_body_parts(n, size=0):
    """The chunks of a /chunked response (n chunks, each non-empty)."""
    parts = []
    for i in range(n):
        p = ("chunk-%d;" % i).encode()
        if size:
            p = (p * (size // len(p) + 1))[:size]
        parts.append(p)
    return parts


def ws_accept(key):
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def ws_frame(opcode, payload, mask=None):
    """Encodes one final frame; mask is 4 bytes or None."""
    hdr = bytearray([0x80 | opcode])
    mbit = 0x80 if mask is not None else 0
    n = len(payload)
    if n < 126:
        hdr.append(mbit | n)
    elif n < 65536:
        hdr.append(mbit | 126)
        hdr += n.to_bytes(2, "big")
    else:
        hdr.append(mbit | 127)
        hdr += n.to_bytes(8, "big")
    if mask is not None:
        hdr += mask
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes(hdr) + payload


class Closed(Exception):
    pass


class Reader:
    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    def fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise Closed()
        self.buf += data

    def until(self, sep, limit=4 * MIB):
        start = 0
        while True:
            i = self.buf.find(sep, start)
            if i >= 0:
                out = bytes(self.buf[: i + len(sep)])
                del self.buf[: i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise Closed()
            start = max(0, len(self.buf) - len(sep) + 1)
            self.fill()

    def exact(self, n):
        while len(self.buf) < n:
            self.fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


class Backend:
    def __init__(self, name, log_path, delay_ms, idle_close_ms=0, status=0, blackhole=False):
        self.name = name
        self.log_path = log_path
        self.delay_ms = delay_ms
        self.idle_close_ms = idle_close_ms
        self.status = status
        self.blackhole = blackhole
        self.lock = threading.Lock()
        self.next_conn = 0

    def log(self, rec):
        line = json.dumps(rec) + "\n"
        with self.lock:
            with open(self.log_path, "a") as f:
                f.write(line)
                f.flush()

    def serve(self, lsock):
        while True:
            s, _ = lsock.accept()
            with self.lock:
                self.next_conn += 1
                cid = self.next_conn
            self.log({"event": "accept", "conn": cid})
            t = threading.Thread(target=self.conn_main, args=(s, cid), daemon=True)
            t.start()

    def conn_main(self, s, cid):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        r = Reader(s)
        seq = 0
        how = "backend"
        try:
            while True:
                seq += 1
                if seq > 1 and self.idle_close_ms and not r.buf:
                    s.settimeout(self.idle_close_ms / 1000.0)
                    try:
                        r.fill()
                    except socket.timeout:
                        how = "idle-close"
                        break
                    finally:
                        s.settimeout(None)
                if not self.one_request(s, r, cid, seq):
                    break
        except Closed:
            how = "peer"
        except (ConnectionError, OSError):
            how = "error"
        finally:
            self.log({"event": "closed", "conn": cid, "how": how})
            try:
                s.close()
            except OSError:
                pass

    def one_request(self, s, r, cid, seq):
        # Tolerate empty lines before a request (RFC 9112 2.2).
        while True:
            while r.buf[:2] == b"\r\n":
                del r.buf[:2]
            if len(r.buf) >= 2 or (r.buf and r.buf != b"\r"):
                break
            r.fill()
        head = r.until(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        reqline = lines[0].decode("latin-1")
        parts = reqline.split(" ")
        if len(parts) != 3:
            s.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return False
        method, target, version = parts
        headers = []
        for ln in lines[1:]:
            t = ln.decode("latin-1")
            k, _, v = t.partition(":")
            headers.append([k, v.strip(" \t")])
        rec = {
            "conn": cid,
            "seq": seq,
            "method": method,
            "target": target,
            "version": version,
            "headers": headers,
            "raw": head.decode("latin-1"),
            "backend": self.name,
        }
        self.log(dict(rec, event="head"))

        def hget(name):
            for k, v in headers:
                if k.lower() == name:
                    return v
            return None

        def hall(name):
            return [v for k, v in headers if k.lower() == name]

        conn_tokens = set()
        for v in hall("connection"):
            conn_tokens |= {t.strip().lower() for t in v.split(",") if t.strip()}
        if version == "HTTP/1.1":
            keep = "close" not in conn_tokens
        else:
            keep = "keep-alive" in conn_tokens

        path, _, query = target.partition("?")
        q = dict(urllib.parse.parse_qsl(query))

        upgrade = (hget("upgrade") or "").lower()
        if upgrade == "websocket" and hget("sec-websocket-key"):
            self.log(dict(rec, event="request", body_len=0,
                          body_sha256=hashlib.sha256(b"").hexdigest(), body="",
                          chunked=False, trailers=[]))
            self.websocket(s, r, hget("sec-websocket-key"), q.get("greet") == "1")
            return False

        if (hget("expect") or "").lower() == "100-continue":
            s.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

        # Request body.
        te = hget("transfer-encoding")
        chunked = False
        trailers = []
        h = hashlib.sha256()
        body_len = 0
        small = bytearray()
        if te is not None and te.lower().replace(" ", "").split(",")[-1] == "chunked":
            chunked = True
            while True:
                line = r.until(b"\r\n").decode("latin-1")
                size = int(line.split(";")[0].strip(), 16)
                if size == 0:
                    break
                data = r.exact(size)
                r.exact(2)
                h.update(data)
                body_len += size
                if len(small) <= 65536:
                    small += data
            while True:
                line = r.until(b"\r\n")
                if line == b"\r\n":
                    break
                trailers.append(line[:-2].decode("latin-1"))
        elif hget("content-length") is not None:
            left = int(hget("content-length"))
            while left > 0:
                if not r.buf:
                    r.fill()
                n = min(left, len(r.buf))
                data = bytes(r.buf[:n])
                del r.buf[:n]
                h.update(data)
                body_len += n
                if len(small) <= 65536:
                    small += data
                left -= n
        rec.update(
            event="request",
            body_len=body_len,
            body_sha256=h.hexdigest(),
            body=bytes(small).decode("latin-1") if body_len <= 65536 else None,
            chunked=chunked,
            trailers=trailers,
        )
        self.log(rec)

        if self.delay_ms:
            time.sleep(self.delay_ms / 1000.0)

        is_head = method == "HEAD"
        extra = []
        status = "200 OK"
        ctype = "application/json"

        if path == "/silent" or self.blackhole:
            # Never answer; wait for the peer to go away (bounded).
            s.settimeout(120)
            try:
                while s.recv(65536):
                    pass
            except OSError:
                pass
            return False
        if path == "/delay":
            time.sleep(int(q.get("ms", "1000")) / 1000.0)

        if path == "/chunked":
            parts = chunked_body_parts(int(q.get("n", "5")), int(q.get("size", "0")))
            hdr = ("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                   "Transfer-Encoding: chunked\r\nX-Conn-Id: %d\r\nX-Backend: %s\r\n\r\n"
                   % (cid, self.name)).encode()
            if is_head:
                s.sendall(hdr)
                return keep
            s.sendall(hdr)
            for p in parts:
                s.sendall(b"%x\r\n" % len(p) + p + b"\r\n")
            if q.get("trailer") == "1":
                s.sendall(b"0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n")
            else:
                s.sendall(b"0\r\n\r\n")
            return keep

        if path == "/big":
            mb = int(q.get("mb", "1"))
            hdr = ("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                   "Content-Length: %d\r\nX-Conn-Id: %d\r\nX-Backend: %s\r\n\r\n"
                   % (mb * MIB, cid, self.name)).encode()
            s.sendall(hdr)
            if not is_head:
                for i in range(mb):
                    s.sendall(big_block(i))
            return keep

        if path.startswith("/status/"):
            code = int(path[len("/status/"):])
            hdr = "HTTP/1.1 %d Status %d\r\nX-Conn-Id: %d\r\nX-Backend: %s\r\n" % (
                code, code, cid, self.name)
            if code in (204, 304) or code < 200:
                if code == 304:
                    # Content-Length of the representation, but no body (RFC 9110 8.6)
                    hdr += 'ETag: "abc"\r\nContent-Length: 1234\r\n'
                s.sendall((hdr + "\r\n").encode())
            else:
                body = b"status %d\n" % code
                hdr += "Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body)
                s.sendall(hdr.encode() + (b"" if is_head else body))
            return keep

        if path == "/garbage":
            s.sendall(b"THIS IS NOT HTTP\r\n\r\n")
            return False
        if path == "/truncated":
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
            time.sleep(0.2)
            return False
        if path == "/early-hints":
            s.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            time.sleep(0.05)
        if path == "/drip":
            n = int(q.get("n", "5"))
            ms = int(q.get("ms", "500"))
            s.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(n):
                time.sleep(ms / 1000.0)
                p = b"drip %d\n" % i
                s.sendall(b"%x\r\n" % len(p) + p + b"\r\n")
            s.sendall(b"0\r\n\r\n")
            return keep
        if path == "/eof-body":
            n = int(q.get("n", "100000"))
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                      b"Connection: close\r\n\r\n")
            for i in range(0, n, 10000):
                s.sendall(bytes((i // 10000 + j) % 256 for j in range(min(10000, n - i))))
            return False
        if path == "/stall":
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"s" * 1000)
            s.settimeout(60)
            try:
                while s.recv(65536):
                    pass
            except OSError:
                pass
            return False
        # h=Name:Value (repeatable): extra response header fields, for the
        # cache tests (Cache-Control, Vary, Set-Cookie, ETag, ...).
        extra += [v for k, v in urllib.parse.parse_qsl(query) if k == "h"]
        if path == "/sized":
            n = int(q.get("n", "1000"))
            fill = (target.encode() * (n // max(1, len(target)) + 1))[:n]
            hdr = "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Backend: %s\r\n" % (n, self.name)
            for e in extra:
                hdr += e + "\r\n"
            s.sendall(hdr.encode() + b"\r\n" + (b"" if is_head else fill))
            return keep
        if path == "/bighead":
            extra.append("X-Big: " + "h" * (int(q.get("kb", "8")) * 1024))
        if path == "/close":
            keep = False
            extra.append("Connection: close")
        if path == "/hop":
            extra += ["Connection: X-Secret, Keep-Alive", "X-Secret: 1",
                      "Keep-Alive: timeout=5", "Proxy-Connection: keep-alive",
                      "X-Visible: yes"]

        if self.status:
            status = "%d Status %d" % (self.status, self.status)
        echo = {k: rec[k] for k in ("backend", "conn", "seq", "method", "target", "version",
                                    "headers", "body_len", "body_sha256", "body",
                                    "chunked", "trailers")}
        body = json.dumps(echo).encode()
        hdr = ("HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
               "X-Conn-Id: %d\r\nX-Seq: %d\r\nX-Backend: %s\r\n" % (
                   status, ctype, len(body), cid, seq, self.name))
        for e in extra:
            hdr += e + "\r\n"
        hdr += "\r\n"
        s.sendall(hdr.encode() + (b"" if is_head else body))
        return keep

    def websocket(self, s, r, key, greet):
        s.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n"
                   % ws_accept(key)).encode())
        if greet:
            s.sendall(ws_frame(1, b"hello from backend"))
        while True:
            b0, b1 = r.exact(2)
            opcode = b0 & 0x0F
            masked = b1 & 0x80
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(r.exact(2), "big")
            elif n == 127:
                n = int.from_bytes(r.exact(8), "big")
            mask = r.exact(4) if masked else None
            payload = r.exact(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 8:
                s.sendall(ws_frame(8, payload))
                return
            if opcode == 9:
                s.sendall(ws_frame(10, payload))
                continue
            s.sendall(ws_frame(opcode, payload))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--name", default="b")
    ap.add_argument("--log", default=os.devnull)
    ap.add_argument("--delay-ms", type=int, default=0)
    ap.add_argument("--idle-close-ms", type=int, default=0)
    ap.add_argument("--status", type=int, default=0)
    ap.add_argument("--blackhole", action="store_true")
    a = ap.parse_args()
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", a.port))
    lsock.listen(256)
    print("PORT %d" % lsock.getsockname()[1], flush=True)
    Backend(a.name, a.log, a.delay_ms, a.idle_close_ms, a.status, a.blackhole).serve(lsock)


if __name__ == "__main__":
    main()
