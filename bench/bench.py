#!/usr/bin/python3
"""scalegate's side-by-side benchmark (`make bench`); docs/benchmarks.md explains the method.

Contenders, all on free 127.0.0.1 ports, configs generated from bench/*.tmpl into a temp dir:
  direct     wrk straight to the demo backend: the ceiling
  nginx      Debian's nginx, one worker, upstream keep-alive
  haproxy    Debian's HAProxy, one thread, http-reuse always
  scalegate  workers: 1
  varnish    Debian's Varnish, one thread pool (the cache-hit part only)

Part 1, throughput: wrk (small and 16 KiB responses x 64 and 1,000 connections); every round
runs every contender once per scenario, the order rotated each round; medians over rounds.
Part 2, idle memory: fresh instance of each proxy, 10,000 keep-alive client connections that
have each made one request; (RSS after - RSS before) / connections.
Part 3, failover: each proxy over three fresh demo backends (bench/*-failover.*.tmpl), 10 s of
wrk -c64 GET load, SIGKILL to one backend 5 s in; errors and maximum latency, every run shown.
Part 4, elasticity (scalegate only: the others have no autoscaling): a fresh gateway whose pool
has a scale section and no servers (bench/scalegate-elasticity.yaml.tmpl), wrk -c2 for 8 s, then
a 10x step (wrk -c18 more) for 25 s; the admin API polled every 0.25 s gives the seconds until
the pool has the instances the step needs, until its p95 is back under target, and the peak.
Part 5, rate limiting (scalegate only): gateways over the part 1 backends (bench/scalegate-
ratelimit.yaml.tmpl) with (a) no rule, (b) a rule keyed on X-Device-ID that rejects nothing,
(c) the same with rate_limit_headers: false, (d) the rule of (b) shared through a redis-server
started here; the small, 64-connection load with each request carrying one of 100,000
X-Device-ID values (bench/wrk-device-ids.lua, in every case). Rounds of 2 s runs, each run of
b, c, d between two runs of (a); the cost is 1 - median of req/s / the (a) runs around it, also
from the cycles of the proxy's CPU per request (perf, optional). Then the table's memory per
key: fresh gateways with limits.rate_limit_keys = N, RSS before and after filling N keys,
against sg_rl_table_bytes_max(N).
Part 6, cache hits: each proxy with its response cache over the part 1 backends (bench/*-cache.*
.tmpl: scalegate's route cache, HAProxy's cache section, nginx proxy_cache, and Varnish, which
runs in this part only: varnishd -F, -s malloc,64m), every response kept 5 minutes; the cache
filled and a hit checked by its marker header (X-Cache: HIT, Age, X-Cache-Status: HIT,
X-Varnish with two ids) before the rounds and after; then part 1's scenarios, rounds and
medians, direct to the backend as a reference, ratios to HAProxy's cache; the backend's write
calls (/proc/PID/io) during each run count the requests that got past the cache.
Part 7, metrics (scalegate only): a gateway with 50 routes over 10 pools of 10 servers (one
live: the small backend; nine dead loopback addresses, marked down by the first health check)
and an admin listener (bench/scalegate-metrics.yaml.tmpl); 2 s of wrk over every route, then
(1) 200 sequential GET /metrics on one keep-alive connection, timed from the request sent to
the body read (median, p99, max, size, sample lines; the body checked for the 50 routes and
100 server series), and (2) the small, 64-connection load on /r0/ without (a) and with (b) a
scraper thread every 100 ms, alternating over 3 rounds: medians and b / a.

Python 3 standard library only. Run as:
  /usr/bin/python3 bench/bench.py --scalegate build/release/scalegate \
      --backend build/release/demo-backend [--only haproxy,scalegate] [--duration 6]
      [--only-failover | --only-elasticity | --only-ratelimit | --only-cache | --only-metrics]
"""

import argparse
import calendar
import http.client
import json
import math
import os
import re
import resource
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ALL = ["direct", "nginx", "haproxy", "scalegate"]
PROXIES = ["nginx", "haproxy", "scalegate"]
NGINX = "/usr/sbin/nginx"
HAPROXY = "/usr/sbin/haproxy"
# (name, path, body bytes): the path selects the backend in every proxy's routes.
SIZES = {"small": ("/", None), "16k": ("/16k", 16384)}
SIZE_LABEL = {"small": "small", "16k": "16 KiB"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes and /proc


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pin(cpus):
    return ["taskset", "-c", cpus] if cpus else []


def proc_cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds; None once it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def proc_rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_children(pid):
    out = []
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def tree(pid):
    """pid and all its descendants."""
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += proc_children(p)
    return seen


def foreign_load(procs, seconds=0.5):
    """Cores used over `seconds` by processes other than procs (and softirq)."""
    cpu0 = [p.cpu() for p in procs]
    busy0, _ = machine_busy()
    time.sleep(seconds)
    busy1, _ = machine_busy()
    ours = sum(p.cpu() for p in procs) - sum(cpu0)
    return max(0.0, ((busy1 - busy0) / CLK_TCK - ours) / seconds)


class Quiet:
    """Before each run, waits (within a budget) for other work on the machine to stop."""

    def __init__(self, per_run, total, limit):
        self.per_run, self.left, self.limit = per_run, total, limit

    def wait(self, procs):
        t0 = time.time()
        while True:
            load = foreign_load(procs)
            waited = time.time() - t0
            if load <= self.limit:
                break
            if waited >= self.per_run or waited >= self.left:
                log("other processes use %.2f cores; measuring anyway" % load)
                break
            time.sleep(1.0)
        self.left -= time.time() - t0


def machine_busy():
    """(user+nice+system) and softirq jiffies over all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return v[0] + v[1] + v[2], v[6]


class Proc:
    """A child we started; stop() ends it (SIGTERM, then SIGKILL) and only it."""

    def __init__(self, name, argv, tmpdir, cpus=None, env=None):
        self.name = name
        self.errpath = os.path.join(tmpdir, name + ".stderr")
        self.outpath = os.path.join(tmpdir, name + ".stdout")
        self.err = open(self.errpath, "w")
        self.out = open(self.outpath, "w")
        self.p = subprocess.Popen(pin(cpus) + argv, stdout=self.out, stderr=self.err,
                                  stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        self.pid = self.p.pid

    def alive(self):
        return self.p.poll() is None

    def stderr_tail(self, n=6):
        try:
            with open(self.errpath) as f:
                lines = [x.rstrip() for x in f if x.strip()]
            return " | ".join(lines[-n:])
        except OSError:
            return ""

    def stdout_text(self):
        try:
            with open(self.outpath) as f:
                return f.read()
        except OSError:
            return ""

    def cpu(self):
        return sum(proc_cpu_seconds(p) or 0.0 for p in tree(self.pid))

    def rss_kib(self):
        return sum(proc_rss_kib(p) for p in tree(self.pid))

    def stop(self):
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.err.close()
        self.out.close()


def http_get(port, path="/", timeout=1.0, extra=b""):
    """One GET on a fresh connection (extra: more header lines, each ending in CRLF); returns
    the status code and the whole response (or raises)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra +
                  b"Connection: close\r\n\r\n")
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    if not m:
        raise OSError("no HTTP response")
    return int(m.group(1)), data


def wait_ready(proc, port, path="/", timeout=10.0):
    """Waits until GET path answers 200; returns None or a reason for the failure."""
    deadline = time.time() + timeout
    last = "no answer"
    while time.time() < deadline:
        if not proc.alive():
            return "exited with status %s: %s" % (proc.p.returncode, proc.stderr_tail())
        try:
            code, _ = http_get(port, path)
            if code == 200:
                return None
            last = "answered %d" % code
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    return "not ready after %.0fs (%s): %s" % (timeout, last, proc.stderr_tail())


# ---------------------------------------------------------------- contenders


def render(tmpl, dest, **kv):
    with open(os.path.join(HERE, tmpl)) as f:
        text = string.Template(f.read()).substitute(**kv)
    with open(dest, "w") as f:
        f.write(text)
    return dest


NGINX_FWD = """        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Request-ID $request_id;"""
HAPROXY_FWD = """    option forwardfor
    http-request set-header X-Forwarded-Proto http
    unique-id-format %[rand,hex]%[rand,hex]%[rand,hex]%[rand,hex]
    unique-id-header X-Request-ID"""


def launch_proxy(name, args, tmpdir, tag, variant, kv, env=None):
    """Renders bench/NAME[VARIANT].*.tmpl with kv and starts that proxy on kv["port"] (env:
    its environment, None for ours). Returns (Proc, path of its error log) or (None, reason)."""
    if name == "nginx":
        errlog = os.path.join(tmpdir, "nginx-error.log" if not variant else
                              "nginx-error-%s.log" % tag)
        conf = render("nginx%s.conf.tmpl" % variant, os.path.join(tmpdir, "nginx-%s.conf" % tag),
                      nginx_fwd=NGINX_FWD if args.forward_headers else "", errlog=errlog,
                      tag=tag, **kv)
        for d in ("nginx-body", "nginx-proxy", "nginx-fastcgi", "nginx-uwsgi", "nginx-scgi"):
            os.makedirs(os.path.join(tmpdir, d), exist_ok=True)
        argv = [args.nginx, "-p", tmpdir, "-e", errlog, "-c", conf]
    elif name == "haproxy":
        conf = render("haproxy%s.cfg.tmpl" % variant,
                      os.path.join(tmpdir, "haproxy-%s.cfg" % tag),
                      haproxy_fwd=HAPROXY_FWD if args.forward_headers else "", **kv)
        argv = [args.haproxy, "-db", "-f", conf]
        errlog = None
    elif name == "scalegate":
        if not args.scalegate or not os.access(args.scalegate, os.X_OK):
            return None, "binary not found: %s" % args.scalegate
        conf = render("scalegate%s.yaml.tmpl" % variant,
                      os.path.join(tmpdir, "scalegate-%s.yaml" % tag), **kv)
        argv = [args.scalegate, "-c", conf]
        errlog = None
    elif name == "varnish":
        vcl = render("varnish%s.vcl.tmpl" % variant, os.path.join(tmpdir, "varnish-%s.vcl" % tag),
                     **kv)
        # -F: in the foreground (the manager; it forks the cache process and stops it on
        # SIGTERM); -j none: no privilege separation (as root, varnishd would switch to its own
        # users, which cannot read the VCL in the 0700 temp dir); -T none: no management port.
        argv = [args.varnishd, "-F", "-j", "none", "-T", "none",
                "-n", os.path.join(tmpdir, "varnish-%s" % tag),
                "-a", "127.0.0.1:%d" % kv["port"], "-f", vcl, "-s", VARNISH_STORAGE]
        for p in args.varnish_params.split(","):
            if p.strip():
                argv += ["-p", p.strip()]
        errlog = None
    else:
        return None, "unknown contender"
    if not os.access(argv[0], os.X_OK):
        return None, "binary not found: %s" % argv[0]
    proc = Proc("%s-%s" % (name, tag), argv, tmpdir, args.proxy_cpus, env)
    return proc, errlog or proc.errpath


def proxy_kv(args, tmpdir, **extra):
    return dict(port=free_port(), dir=tmpdir, max_conns=args.max_conns, nofile=args.nofile,
                nginx_conns=args.nofile - 100, up_keepalive=args.upstream_keepalive, **extra)


def start_contender(name, args, backends, tmpdir, tag):
    """Starts one contender. Returns (Proc or None, port, error or None)."""
    if name == "direct":
        return None, None, None
    kv = proxy_kv(args, tmpdir, small_port=backends["small"][1], big_port=backends["16k"][1])
    port = kv["port"]
    proc, err = launch_proxy(name, args, tmpdir, tag, "", kv)
    if proc is None:
        return None, None, err
    err = wait_ready(proc, port, "/") or wait_ready(proc, port, "/16k")
    if err:
        proc.stop()
        return None, None, err
    return proc, port, None


def start_backend(args, tmpdir, procname, name, extra=()):
    """One demo backend on a port of its choosing. Returns (Proc, port); raises RuntimeError."""
    argv = [args.backend, "--port", "0", "--name", name] + list(extra)
    proc = Proc(procname, argv, tmpdir, args.backend_cpus)
    deadline = time.time() + 5
    while time.time() < deadline and proc.alive():
        m = re.search(r"listening on [\d.]+:(\d+)", proc.stdout_text())
        if m:
            return proc, int(m.group(1))
        time.sleep(0.05)
    proc.stop()
    raise RuntimeError("demo backend %s did not start: %s" % (args.backend, proc.stderr_tail()))


def start_backends(args, tmpdir):
    """The two demo backends (default body; --size 16384). Returns {size: (Proc, port)}."""
    out = {}
    for size, (_, nbytes) in SIZES.items():
        try:
            out[size] = start_backend(args, tmpdir, "backend-" + size, "bench-" + size,
                                      ["--size", str(nbytes)] if nbytes else [])
        except RuntimeError as e:
            for p, _ in out.values():
                p.stop()
            sys.exit("bench: %s" % e)
    return out


# ---------------------------------------------------------------- wrk

UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}
T = r"([\d.]+)(us|ms|s|m|h)"


def parse_latency(text, pct):
    m = re.search(r"^\s*%s%%\s+%s\s*$" % (pct, T), text, re.M)
    return float(m.group(1)) * UNIT[m.group(2)] if m else None


def parse_wrk(out, returncode):
    """wrk's report -> rps, p50/p99/max (ms), requests, bytes/request, errors: socket errors
    (connect, read, write, timeout) plus responses with status >= 400, as wrk counts them."""
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if returncode != 0 or not m:
        raise RuntimeError("wrk failed: " + " | ".join(out.strip().splitlines()[-3:]))
    res = {"rps": float(m.group(1)), "p50": parse_latency(out, 50),
           "p99": parse_latency(out, 99)}
    # "Latency   avg   stdev   max   +/- stdev" (the Thread Stats line)
    m = re.search(r"^\s*Latency\s+%s\s+%s\s+%s" % (T, T, T), out, re.M)
    res["max"] = float(m.group(5)) * UNIT[m.group(6)] if m else None
    m = re.search(r"(\d+) requests in [\d.]+\w+, ([\d.]+)(B|KB|MB|GB) read", out)
    total = int(m.group(1)) if m else 0
    if m and total:
        mult = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[m.group(3)]
        res["bytes_per_req"] = float(m.group(2)) * mult / total
    parts = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": 0}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    detail = []
    if m:
        for k, v in zip(("connect", "read", "write", "timeout"), m.groups()):
            parts[k] = int(v)
        detail.append(m.group(0))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        parts["status"] = int(m.group(1))
        detail.append(m.group(0))
    if detail:
        res["error_detail"] = "; ".join(detail)
    res["errors"] = sum(parts.values())
    res["error_parts"] = parts
    res["requests"] = total
    return res


def run_wrk(args, port, path, conns, duration, procs, script=None, script_args=()):
    """One wrk run (script: a wrk Lua script, given script_args after "--"). Returns a dict of
    rps, p50/p99 (ms), errors, bytes/request, CPU figures."""
    cmd = pin(args.wrk_cpus) + ["wrk", "-t%d" % args.wrk_threads, "-c%d" % conns,
                                "-d%ds" % duration, "--latency"] + (
        ["-s", script] if script else []) + ["http://127.0.0.1:%d%s" % (port, path)] + (
        ["--"] + [str(a) for a in script_args] if script else [])
    cpu0 = [p.cpu() for p in procs]
    busy0, sirq0 = machine_busy()
    ch0 = os.times()
    t0 = time.time()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=duration + 60)
    wall = time.time() - t0
    ch1 = os.times()
    busy1, sirq1 = machine_busy()
    cpu1 = [p.cpu() for p in procs]
    res = parse_wrk(r.stdout, r.returncode)
    total = res["requests"]
    ours = sum(b - a for a, b in zip(cpu0, cpu1) if a is not None and b is not None)
    wrk_cpu = (ch1.children_user - ch0.children_user) + (ch1.children_system -
                                                          ch0.children_system)
    res["wrk_cpu"] = wrk_cpu / wall
    if procs and total:
        # procs[0] is the contender under test (the backend for direct)
        res["cpu_us_per_req"] = 1e6 * (cpu1[0] - cpu0[0]) / total
    # CPU used by processes that are not ours (other work on the machine), in cores.
    res["foreign"] = max(0.0, ((busy1 - busy0) / CLK_TCK - ours - wrk_cpu) / wall)
    res["softirq"] = (sirq1 - sirq0) / CLK_TCK / wall
    return res


# ---------------------------------------------------------------- idle memory


def open_idle(port, n, batch, timeout=30.0):
    """Opens n connections, sends one GET on each and reads the whole response, in batches.
    Returns the open sockets (the caller closes them); raises on failure."""
    req = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench-idle\r\n\r\n"
    socks = []
    sel = selectors.DefaultSelector()
    try:
        for start in range(0, n, batch):
            pending = {}
            for _ in range(min(batch, n - start)):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                socks.append(s)
                s.connect_ex(("127.0.0.1", port))
                pending[s] = [False, b""]
                sel.register(s, selectors.EVENT_WRITE)
            deadline = time.time() + timeout
            while pending:
                if time.time() > deadline:
                    raise RuntimeError("%d of %d connections got no response within %.0fs "
                                       "(opened so far: %d)" % (len(pending), n, timeout,
                                                                len(socks) - len(pending)))
                for key, _ in sel.select(1.0):
                    s = key.fileobj
                    st = pending[s]
                    if not st[0]:
                        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            raise RuntimeError("connect: " + os.strerror(err))
                        s.send(req)
                        st[0] = True
                        sel.modify(s, selectors.EVENT_READ)
                        continue
                    data = s.recv(65536)
                    if not data:
                        raise RuntimeError("connection closed by the proxy before a response")
                    st[1] += data
                    if response_complete(st[1]):
                        sel.unregister(s)
                        del pending[s]
    except BaseException:
        sel.close()
        for s in socks:
            s.close()
        raise
    sel.close()
    return socks


def response_complete(buf):
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return False
    head = buf[:end].decode("latin-1")
    if not head.startswith("HTTP/1.1 200"):
        raise RuntimeError("unexpected response: " + head.splitlines()[0])
    m = re.search(r"^content-length:\s*(\d+)\s*$", head, re.M | re.I)
    if not m:
        raise RuntimeError("response without Content-Length")
    return len(buf) - end - 4 >= int(m.group(1))


def memory_test(args, name, backends, tmpdir, tag):
    proc, port, err = start_contender(name, args, backends, tmpdir, tag)
    if err:
        return {"error": "failed to start: " + err}
    try:
        # Warm-up: a few requests on short-lived connections, so lazily made pools exist.
        for _ in range(20):
            http_get(port, "/")
        time.sleep(1.0)
        before = proc.rss_kib()
        t0 = time.time()
        socks = open_idle(port, args.idle_conns, args.idle_batch)
        took = time.time() - t0
        time.sleep(2.0)
        if not proc.alive():
            raise RuntimeError("exited: " + proc.stderr_tail())
        after = proc.rss_kib()
        # Still open? A proxy that dropped idle clients would look cheap.
        sample = socks[:: max(1, len(socks) // 200)]
        dropped = 0
        for s in sample:
            try:
                if s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                    dropped += 1
            except BlockingIOError:
                pass
            except OSError:
                dropped += 1
        for s in socks:
            s.close()
        res = {"before_kib": before, "after_kib": after, "conns": len(socks),
               "per_conn_kib": (after - before) / len(socks), "open_seconds": took}
        if dropped:
            res["error"] = "%d of %d sampled idle connections were closed by the proxy" % (
                dropped, len(sample))
        return res
    except (RuntimeError, OSError) as e:
        return {"error": str(e)}
    finally:
        proc.stop()


# ---------------------------------------------------------------- failover

# Proxy log lines worth counting after the kill: (label, regex). The first of the "down"
# labels to appear gives the "marked down" column: how long after the kill the proxy took
# the dead server out (by a health check, or passively after failed attempts).
FAILOVER_EVENTS = {
    "nginx": [("down", r"upstream server temporarily disabled"),
              ("connect failed", r"connect\(\) failed"),
              ("upstream closed/reset", r"prematurely closed|recv\(\) failed|"
                                        r"writev?\(\) failed|send\(\) failed"),
              ("no live upstreams", r"no live upstreams")],
    "haproxy": [("down", r"Server \S+ is DOWN"),
                ("up", r"Server \S+ is UP")],
    "scalegate": [("down", r"is DOWN"),
                  ("ejected", r"ejected for"),
                  ("retries", r"retrying on"),
                  ("connect failed", r"upstream \S+: connect:"),
                  ("up", r"is UP")],
}
DOWN_LABELS = ("down", "ejected")


ISO_MS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{3})Z ")


def line_time(line):
    """The time of a log line stamped like scalegate's (UTC, milliseconds), else None."""
    m = ISO_MS.match(line)
    if not m:
        return None
    return calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) + \
        int(m.group(2)) / 1000.0


class LogWatch:
    """Follows a log file from a given moment; counts FAILOVER_EVENTS lines and notes when
    each kind first appeared (seconds after `since`): from the line's own time stamp where it
    has one with milliseconds (scalegate), else when poll() first saw it (poll often)."""

    def __init__(self, path, name, since):
        self.path, self.since = path, since
        self.events = [(lbl, re.compile(rx)) for lbl, rx in FAILOVER_EVENTS.get(name, [])]
        self.count, self.first, self.samples = {}, {}, {}
        self.partial = ""
        try:
            self.pos = os.path.getsize(path)
        except OSError:
            self.pos = 0

    def poll(self):
        try:
            with open(self.path, errors="replace") as f:
                f.seek(self.pos)
                data = f.read()
                self.pos = f.tell()
        except OSError:
            return
        now = time.time() - self.since
        lines = (self.partial + data).split("\n")
        self.partial = lines.pop()
        for line in lines:
            for lbl, rx in self.events:
                if rx.search(line):
                    self.count[lbl] = self.count.get(lbl, 0) + 1
                    t = line_time(line)
                    self.first.setdefault(lbl, now if t is None else max(0.0, t - self.since))
                    self.samples.setdefault(lbl, line.strip()[:300])
                    break

    def result(self):
        self.poll()
        down = [self.first[lbl] for lbl in DOWN_LABELS if lbl in self.first]
        return {"counts": self.count, "first": self.first, "samples": self.samples,
                "down_after": min(down) if down else None}


def failover_run(args, name, tmpdir, tag, quiet, kill=True):
    """Three fresh demo backends, the proxy over them, wrk for --failover-duration seconds;
    --failover-kill-at seconds after wrk started, SIGKILL to the second backend. Returns a
    dict of wrk's figures (max and p99 in ms, errors) and what the proxy logged. Everything
    started here is stopped (and reaped) before it returns."""
    held = {"proc": None, "backends": []}
    try:
        res = failover_body(args, name, tmpdir, tag, quiet, kill, held)
    except (RuntimeError, subprocess.SubprocessError, OSError) as e:
        res = {"error": str(e)}
    finally:
        proc = held["proc"]
        was_alive = proc is not None and proc.alive()
        if proc is not None:
            proc.stop()
        for b, _ in held["backends"]:
            b.stop()
    if was_alive and proc.p.returncode not in (0, -signal.SIGTERM, 128 + signal.SIGTERM,
                                                143):
        # a proxy that crashes on a graceful stop is worth knowing about
        rc = proc.p.returncode
        how = ("killed by %s" % signal.Signals(-rc).name) if rc < 0 else "exit status %d" % rc
        res["stop_problem"] = "on SIGTERM after the run: %s: %s" % (how, proc.stderr_tail(2))
    return res


def failover_body(args, name, tmpdir, tag, quiet, kill, held):
    """failover_run's work; what it starts goes into held for failover_run to stop."""
    backends = held["backends"]
    for i in range(3):
        backends.append(start_backend(args, tmpdir, "%s-%s-b%d" % (name, tag, i + 1),
                                      "b%d" % (i + 1)))
    kv = proxy_kv(args, tmpdir, port1=backends[0][1], port2=backends[1][1],
                  port3=backends[2][1])
    port = kv["port"]
    proc, logpath = launch_proxy(name, args, tmpdir, tag, "-failover", kv)
    if proc is None:
        return {"error": "failed to start: " + logpath}
    held["proc"] = proc
    err = wait_ready(proc, port, "/")
    if err:
        return {"error": "failed to start: " + err}
    # Every backend must serve through the proxy before the kill means anything.
    seen, deadline = set(), time.time() + 5
    while len(seen) < 3 and time.time() < deadline:
        try:
            code, data = http_get(port, "/")
            m = re.search(rb"^x-backend:\s*(\S+)", data, re.M | re.I)
            if code == 200 and m:
                seen.add(m.group(1).decode())
        except OSError:
            time.sleep(0.05)
    if len(seen) < 3:
        return {"error": "not all three backends answer through the proxy (saw %s)" %
                ",".join(sorted(seen))}
    everyone = [proc] + [b for b, _ in backends]
    quiet.wait(everyone)
    url = "http://127.0.0.1:%d/" % port
    wrk = pin(args.wrk_cpus) + ["wrk", "-t%d" % args.wrk_threads,
                                "-c%d" % args.failover_conns]
    if args.warmup:
        subprocess.run(wrk + ["-d%ds" % args.warmup, url], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=args.warmup + 60)
    victim = backends[1][0]
    survivors = [proc, backends[0][0], backends[2][0]] + ([] if kill else [victim])
    cpu0 = [p.cpu() for p in survivors]
    victim_cpu0 = victim.cpu()
    busy0, _ = machine_busy()
    ch0 = os.times()
    t0 = time.time()
    w = subprocess.Popen(wrk + ["-d%ds" % args.failover_duration, "--latency", url],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    res = {}
    try:
        time.sleep(max(0.0, t0 + args.failover_kill_at - time.time()))
        watch = LogWatch(logpath, name, time.time())
        if kill:
            if not victim.alive():
                raise RuntimeError("backend b2 died before the kill: " +
                                   victim.stderr_tail())
            t_kill = time.time()
            victim.p.kill()                 # SIGKILL, to this pid only
            victim.p.wait()                 # reaped here, not left a zombie
            res["killed_at"] = t_kill - t0
            res["victim_status"] = victim.p.returncode
        deadline = t0 + args.failover_duration + 60
        while w.poll() is None and time.time() < deadline:
            watch.poll()
            # every 10 ms for the first 2 s after the kill: "marked down" to +-10 ms
            time.sleep(0.01 if time.time() < watch.since + 2 else 0.1)
        out, _ = w.communicate(timeout=max(1.0, deadline - time.time()))
    except BaseException:
        if w.poll() is None:
            w.kill()
            w.wait()
        raise
    wall = time.time() - t0
    ch1 = os.times()
    busy1, _ = machine_busy()
    cpu1 = [p.cpu() for p in survivors]
    res.update(parse_wrk(out, w.returncode))
    res["log"] = watch.result()
    # Our CPU: the survivors' deltas, plus our reaped children (wrk, and the victim's
    # whole life once it is reaped) less what the victim had used before the run.
    ch = (ch1.children_user - ch0.children_user) + (ch1.children_system -
                                                     ch0.children_system)
    ours = sum(b - a for a, b in zip(cpu0, cpu1)) + ch - (victim_cpu0 if kill else 0)
    res["foreign"] = max(0.0, ((busy1 - busy0) / CLK_TCK - ours) / wall)
    if not proc.alive():
        res["error"] = "proxy exited during the run: " + proc.stderr_tail()
    return res


def failover_ok(r):
    return "error" not in r and r["errors"] == 0 and r["max"] is not None and \
        r["max"] < FAILOVER_MAX_MS


FAILOVER_MAX_MS = 50.0


# ---------------------------------------------------------------- elasticity

TOKEN_ENV = "SCALEGATE_ADMIN_TOKEN"


def free_port_range(n):
    """n consecutive free loopback ports, as (first, last): the tests' helper
    (tests/integration/ports.py), drawn from below the ephemeral range."""
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "integration"))
    try:
        from ports import port_range
    finally:
        sys.path.pop(0)
    return port_range(n)


def admin_get(port, token, path, timeout=2.0):
    """GET on scalegate's admin API with the bearer token; returns the parsed JSON (raises)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers={"Authorization": "Bearer " + token})
        r = c.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError("admin API %s: %d %s" % (path, r.status, body[:200]))
        return json.loads(body)
    finally:
        c.close()


def iso_seconds(s):
    """"2026-11-22T13:19:00.123Z" (the admin API's times) -> seconds since the epoch."""
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$", s or "")
    if not m:
        return None
    return calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) + \
        float("0." + (m.group(2) or "0"))


def elasticity_needed(args):
    """The instance count the step load needs, computed: an instance serves one request at a
    time in delay ms, so with k requests queued on it each takes about k x delay; the largest k
    that stays under the p95 target is ceil(target / delay) - 1, and the step's connections
    need ceil(connections / k) instances. None if even one queued request misses the target."""
    k = math.ceil(args.elasticity_target_ms / args.elasticity_delay_ms) - 1
    if k < 1:
        return None, 0
    return math.ceil(args.elasticity_conns[1] / k), k


def elasticity_run(args, tmpdir, tag, quiet):
    """One fresh gateway with an autoscaled pool (bench/scalegate-elasticity.yaml.tmpl), wrk
    at the base load until the pool is steady, then the step to 10x; the admin API polled
    every --elasticity-poll s from the step. Returns a dict of the times (seconds after the
    step), counts and wrk's failures. The gateway, its instances and both wrk processes are
    gone (and reaped) when it returns, also after an error."""
    held = {"proc": None, "wrk": [], "pids": set(), "ports": (0, -1)}
    res = {}
    try:
        res = elasticity_body(args, tmpdir, tag, quiet, held)
    except (RuntimeError, subprocess.SubprocessError, OSError, ValueError, KeyError) as e:
        res = {"error": str(e)}
    finally:
        problems = elasticity_stop(args, held)
        if problems:
            res["stop_problem"] = "; ".join(problems)
    return res


def elasticity_stop(args, held):
    """Ends what an elasticity run started: both wrk, then the gateway (SIGTERM; it kills its
    instances as it exits), then checks that no instance outlived it and ends any that did.
    Returns the problems seen (a list of strings)."""
    problems = []
    for w in held["wrk"]:
        if w.poll() is None:
            w.kill()
        w.wait()
    proc = held["proc"]
    if proc is None:
        return problems
    held["pids"].update(tree(proc.pid)[1:])
    was_alive = proc.alive()
    proc.stop()
    rc = proc.p.returncode
    if was_alive and rc not in (0, -signal.SIGTERM, 143):
        how = ("killed by %s" % signal.Signals(-rc).name) if rc < 0 else "exit status %d" % rc
        problems.append("on SIGTERM after the run: %s: %s" % (how, proc.stderr_tail(2)))
    deadline = time.time() + 3
    while True:
        left = [p for p in held["pids"] if is_instance(p, args.backend, held["ports"])]
        if not left or time.time() > deadline:
            break
        time.sleep(0.05)
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    if left:
        problems.append("%d instance(s) outlived the gateway (killed: %s)" % (
            len(left), ",".join(map(str, sorted(left)))))
    return problems


def is_instance(pid, backend, ports):
    """True while pid is a live (not zombie) demo backend on a port of ports (first, last):
    one of the run's instances, not some other process that got its pid since."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except (OSError, IndexError):
        return False
    if not argv or os.path.basename(argv[0]) != os.path.basename(backend):
        return False
    port = argv[argv.index("--port") + 1] if "--port" in argv[:-1] else ""
    return port.isdigit() and ports[0] <= int(port) <= ports[1]


def elasticity_body(args, tmpdir, tag, quiet, held):
    """elasticity_run's work; what it starts goes into held for elasticity_run to stop."""
    base_conns, step_conns = args.elasticity_conns
    lo, hi = free_port_range(2 * args.elasticity_max)
    held["ports"] = (lo, hi)
    token = os.urandom(16).hex()
    kv = proxy_kv(args, tmpdir, admin_port=free_port(), token_env=TOKEN_ENV,
                  backend=shlex.quote(os.path.abspath(args.backend)),
                  delay=args.elasticity_delay_ms, ports="%d-%d" % (lo, hi), min=1,
                  max=args.elasticity_max, target="%g" % args.elasticity_target_ms,
                  window=ELASTICITY_WINDOW_S)
    port, aport = kv["port"], kv["admin_port"]
    proc, logpath = launch_proxy("scalegate", args, tmpdir, tag, "-elasticity", kv,
                                 env=dict(os.environ, **{TOKEN_ENV: token}))
    if proc is None:
        return {"error": "failed to start: " + logpath}
    held["proc"] = proc

    def poll():
        st = admin_get(aport, token, "/api/v1/scaling/status?pool=app")["pools"][0]
        m = admin_get(aport, token, "/api/v1/scaling/metrics?pool=app")["pools"][0]
        held["pids"].update(i["pid"] for i in st["instances"] if i.get("pid"))
        return st, m

    err = wait_ready(proc, port, "/", timeout=20.0)
    if err:
        return {"error": "failed to start: " + err}
    deadline = time.time() + 15
    while True:
        st, _ = poll()
        if st["ready"] == 1 and st["starting"] == 0:
            break
        if time.time() > deadline:
            return {"error": "the pool is not at 1 ready instance 15 s after start: %s" % st}
        time.sleep(0.2)
    quiet.wait([proc])

    url = "http://127.0.0.1:%d/" % port
    wrk = pin(args.wrk_cpus) + ["wrk", "-t%d" % args.wrk_threads, "--latency"]
    span = args.elasticity_base + args.elasticity_step
    cpu0 = proc.cpu()
    busy0, _ = machine_busy()
    ch0 = os.times()
    t0 = time.time()
    held["wrk"].append(subprocess.Popen(wrk + ["-c%d" % base_conns, "-d%ds" % span, url],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True))
    # The base phase: the pool should stay at one instance, its p95 under the target.
    base = []
    while time.time() < t0 + args.elasticity_base:
        time.sleep(min(0.5, max(0.0, t0 + args.elasticity_base - time.time())))
        st, m = poll()
        base.append((st["instances_total"], st["ready"], m["p95_ms"], time.time()))
    t_step = time.time()
    res = {"base_instances": base[-1][0], "base_ready": base[-1][1], "base_p95": base[-1][2],
           "base_polled": base[-1][3] - t_step, "base_max_instances": max(b[0] for b in base)}
    held["wrk"].append(subprocess.Popen(
        wrk + ["-c%d" % (step_conns - base_conns), "-d%ds" % args.elasticity_step, url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    samples = []  # (t after the step, instances_total, ready, starting, desired, p95)
    while held["wrk"][1].poll() is None and time.time() < t_step + args.elasticity_step + 60:
        st, m = poll()
        samples.append((time.time() - t_step, st["instances_total"], st["ready"],
                        st["starting"], st["desired"], m["p95_ms"]))
        time.sleep(args.elasticity_poll)
    outs = []
    for w in held["wrk"]:
        out, _ = w.communicate(timeout=span + 60)
        outs.append(parse_wrk(out, w.returncode))
    wall = time.time() - t0
    ch1 = os.times()
    busy1, _ = machine_busy()
    cpu1 = proc.cpu()
    hist = admin_get(aport, token, "/api/v1/scaling/history?pool=app&limit=256")["events"]
    if not proc.alive():
        raise RuntimeError("gateway exited during the run: " + proc.stderr_tail())
    ours = (cpu1 - cpu0) + (ch1.children_user - ch0.children_user) + (
        ch1.children_system - ch0.children_system)
    res["foreign"] = max(0.0, ((busy1 - busy0) / CLK_TCK - ours) / wall)
    res.update(elasticity_figures(args, samples, outs, hist, t_step, res))
    return res


def elasticity_figures(args, samples, outs, hist, t_step, base):
    """The scenario's numbers from the polled samples, wrk's reports and the scaling history.
    base: the last poll before the step (ready count, and when, in s relative to the step)."""
    target = args.elasticity_target_ms
    needed, per = elasticity_needed(args)
    res = {"needed": needed, "per_instance": per, "samples": samples}
    res["decided_poll"] = next((t for t, _, _, _, d, _ in samples if d >= needed), None)
    res["reached_poll"] = next((t for t, _, r, _, _, _ in samples if r >= needed), None)
    res["peak"] = max((n for _, n, _, _, _, _ in samples), default=None)
    res["peak_ready"] = max((r for _, _, r, _, _, _ in samples), default=None)
    p95s = [(t, p) for t, _, _, _, _, p in samples if p is not None]
    res["p95_peak"] = max((p for _, p in p95s), default=None)
    # p95 back under the target: the first sample after it went over from which every
    # sample stays under for --elasticity-hold seconds.
    over = next((t for t, p in p95s if p > target), None)
    res["p95_under"] = None
    if over is not None:
        for i, (t, p) in enumerate(p95s):
            if t <= over or p >= target:
                continue
            later = p95s[i:]
            if later[-1][0] - t < args.elasticity_hold:
                break
            if all(q < target for u, q in later if u - t <= args.elasticity_hold):
                res["p95_under"] = t
                break
    res["p95_never_over"] = over is None
    # The count held over the last 5 s of the step: what the pool settled at.
    tail = [n for t, n, _, _, _, _ in samples if t >= samples[-1][0] - 5] if samples else []
    res["settled"] = (min(tail), max(tail)) if tail else None
    res["failed"] = sum(o["errors"] for o in outs)
    res["error_parts"] = {k: sum(o["error_parts"][k] for o in outs)
                          for k in outs[0]["error_parts"]}
    res["requests"] = sum(o["requests"] for o in outs)
    res["rps"] = sum(o["rps"] for o in outs)
    res["step_p99"] = outs[1]["p99"]
    res["max"] = max(o["max"] or 0 for o in outs)
    res["events"] = []
    for e in hist:
        when = iso_seconds(e.get("time"))
        if when is None or when < t_step - 0.5 or e.get("event") not in (
                "scale_up", "scale_down", "instance_ready", "start_failed", "start_timeout",
                "instance_crashed", "instance_down"):
            continue
        res["events"].append((when - t_step, e["event"], e.get("from"), e.get("to"),
                              e.get("detail", "")))
    res["events"].sort()
    # decided and reached to the millisecond from the history's time stamps: the scale-up
    # that asked for enough instances, and the instance_ready that made enough of them,
    # counting from the ready instances of the last poll before the step. An instance that
    # went down, crashed or was drained makes that count unsure: then the polls (every
    # --elasticity-poll s) decide.
    evs = [e for e in res["events"] if e[0] > base["base_polled"]]
    res["decided"] = next((t for t, kind, _, to, _ in evs if kind == "scale_up" and
                           to is not None and to >= needed), None)
    res["reached"] = None
    if all(kind in ("scale_up", "instance_ready") for _, kind, *_ in evs):
        ready = base["base_ready"]
        for t, kind, *_ in evs:
            ready += kind == "instance_ready"
            if ready >= needed:
                res["reached"] = max(t, 0.0)
                break
    res["timed_by"] = "history"
    if res["decided"] is None or res["reached"] is None:
        res["decided"], res["reached"] = res["decided_poll"], res["reached_poll"]
        res["timed_by"] = "polls"
    return res


def elasticity_ok(r):
    return "error" not in r and r["failed"] == 0 and all(
        r[k] is not None and r[k] < ELASTICITY_MAX_S for k in ("reached", "p95_under"))


ELASTICITY_MAX_S = 10.0
ELASTICITY_WINDOW_S = 2  # the scaler's metrics window (scale.window); decisions every 1 s


# ---------------------------------------------------------------- rate limiting

RL_SCRIPT = os.path.join(HERE, "wrk-device-ids.lua")
RL_HEADER = "X-Device-ID"
RL_WARM_HEADER = "X-Warmup-ID"  # same length: the memory fill's warm-up, which no rule sees
# The rule under test. 1/h: T = 1 h, so every bucket stays active (TAT ahead of now; in
# Redis, the key is not expired) for the whole part, although each id comes back only every
# few seconds to a minute; burst 1,000,000: far above the requests any one id gets (a few),
# so nothing is ever rejected and every request goes to the backend, as in case (a).
RL_RULE = '{ name: %s, rate: 1/h, burst: 1000000, key: "header:' + RL_HEADER + '" }'
# case -> (label, rule names, RateLimit fields on admitted responses, shared through Redis)
RL_CASES = {"a": ("(a) off: no rule, the same header sent", [], True, False),
            "b": ("(b) local, RateLimit fields on (the default)", ["device"], True, False),
            "c": ("(c) local, rate_limit_headers: false", ["device"], False, False),
            "d": ("(d) shared (Redis), RateLimit fields on", ["device"], True, True)}
RL_COST_MAX = 5.0  # % of (a)'s req/s that local rate limiting may cost: issue 5's target
RL_LOCAL_LOG = re.compile(r"deciding locally")  # the shared gateway fell back to local
RL_BYTES_MAX_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include "ratelimit/gcra.h"
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        printf("%zu\n", sg_rl_table_bytes_max((size_t)strtoull(argv[i], NULL, 10)));
    return 0;
}
"""


def rl_rules_yaml(names, headers):
    """The "/" route's rate_limit lines for the template (empty: no rule)."""
    if not names:
        return ""
    out = ["    rate_limit_headers: false"] if not headers else []
    out.append("    rate_limit:")
    out += ["      - " + RL_RULE % n for n in names]
    return "\n".join(out)


def start_rl_gateway(args, backends, tmpdir, tag, names, headers, keys, redis_port=None):
    """A scalegate over the throughput backends with the rules `names` on "/", a table of
    `keys` keys and, with redis_port, a redis section (bench/scalegate-ratelimit.yaml.tmpl).
    Returns (Proc, port) or raises RuntimeError."""
    kv = proxy_kv(args, tmpdir, small_port=backends["small"][1], big_port=backends["16k"][1],
                  rl_keys=keys, rate_limit=rl_rules_yaml(names, headers),
                  redis="redis: { url: 127.0.0.1:%d, prefix: \"bench:\" }" % redis_port
                  if redis_port else "")
    proc, err = launch_proxy("scalegate", args, tmpdir, tag, "-ratelimit", kv)
    if proc is None:
        raise RuntimeError("failed to start: " + err)
    err = wait_ready(proc, kv["port"], "/") or wait_ready(proc, kv["port"], "/16k")
    if err:
        proc.stop()
        raise RuntimeError("failed to start: " + err)
    return proc, kv["port"]


def rl_probe(port, names, headers):
    """Checks that GET / with the header is admitted (200) and carries the RateLimit fields
    exactly when it should. Returns None or what is wrong."""
    code, data = http_get(port, "/", extra=("%s: probe\r\n" % RL_HEADER).encode())
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    has = bool(re.search(r"^RateLimit-Policy:", head, re.M | re.I)) and bool(
        re.search(r"^RateLimit:", head, re.M | re.I))
    if code != 200:
        return "GET / with %s answered %d" % (RL_HEADER, code)
    if has != bool(names and headers):
        return "GET / with %s: RateLimit fields %s, expected %s" % (
            RL_HEADER, "present" if has else "absent",
            "present" if names and headers else "absent")
    return None


def rl_bytes_max(args, tmpdir, ns):
    """sg_rl_table_bytes_max(n) for each n, from gcra.c itself: a tiny program compiled
    against the library the gateway was linked from. Returns ({n: bytes}, None) or
    ({}, reason)."""
    lib = os.path.join(os.path.dirname(os.path.abspath(args.scalegate)), "libscalegate.a")
    src, exe = os.path.join(tmpdir, "rl-bytes-max.c"), os.path.join(tmpdir, "rl-bytes-max")
    with open(src, "w") as f:
        f.write(RL_BYTES_MAX_C)
    try:
        cc = subprocess.run([os.environ.get("CC", "cc"), "-I", os.path.join(
            os.path.dirname(HERE), "src"), "-o", exe, src, lib, "-lpthread"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
        if cc.returncode != 0:
            return {}, "cannot build the sg_rl_table_bytes_max helper: " + " | ".join(
                cc.stdout.strip().splitlines()[-2:])
        r = subprocess.run([exe] + [str(n) for n in ns], stdout=subprocess.PIPE, text=True,
                           timeout=10)
        return dict(zip(ns, (int(x) for x in r.stdout.split()))), None
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        return {}, "sg_rl_table_bytes_max helper: %s" % e


def perf_setup(args):
    """What perf can count here: {"instr": the event that counts a process's instructions
    ("instructions", else "instructions:u" where the kernel's are not allowed) or None,
    "cycles": True if it can count every cycle of the proxy's CPUs (perf stat -a -C: needs
    pinning and the right to watch a whole CPU)}."""
    out = {"instr": None, "cycles": False}
    if args.no_perf or not shutil.which(args.perf):
        return out

    def works(argv):
        try:
            r = subprocess.run([args.perf, "stat", "-x,"] + argv + ["--", "true"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               timeout=10)
        except (OSError, subprocess.SubprocessError):
            return False
        return r.returncode == 0 and bool(re.search(r"^\d+,", r.stderr, re.M))
    out["instr"] = next((ev for ev in ("instructions", "instructions:u")
                         if works(["-e", ev])), None)
    out["cycles"] = bool(args.proxy_cpus) and works(["-a", "-C", args.proxy_cpus, "-e",
                                                     "cycles"])
    return out


def perf_count(popen):
    """Stops a `perf stat -x,` started by rl_wrk and returns its first count (or None)."""
    popen.send_signal(signal.SIGINT)
    _, err = popen.communicate(timeout=10)
    m = re.search(r"^(\d+),", err, re.M)
    return int(m.group(1)) if m else None


def rl_wrk(args, proc, port, watched, perf, seconds, sargs, redis=None):
    """run_wrk on the gateway proc with the ids script; meanwhile, as perf allows (perf_setup),
    counts the gateway's instructions (all its threads) and every cycle of the proxy's CPUs
    (whoever runs there: gateway, backend, Redis, the kernel's network work), and Redis' CPU
    time. Adds instr_per_req, cycles_per_req and redis_us_per_req to wrk's figures."""
    counters = {}
    perf = perf or {}
    try:
        if perf.get("instr"):
            counters["instr_per_req"] = subprocess.Popen(
                [args.perf, "stat", "-x,", "-e", perf["instr"], "-p", str(proc.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if perf.get("cycles"):
            counters["cycles_per_req"] = subprocess.Popen(
                [args.perf, "stat", "-x,", "-a", "-C", args.proxy_cpus, "-e", "cycles"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if counters:
            time.sleep(0.1)  # perf attached before the first request
        rcpu = redis.cpu() if redis else None
        r = run_wrk(args, port, "/", args.rl_conns, seconds, watched, RL_SCRIPT, sargs)
    finally:
        counts = {k: perf_count(p) for k, p in counters.items()}
    if r["requests"]:
        for k, v in counts.items():
            if v is not None:
                r[k] = v / r["requests"]
        if redis:
            r["redis_us_per_req"] = 1e6 * (redis.cpu() - rcpu) / r["requests"]
    return r


def start_redis(args, tmpdir):
    """A throw-away redis-server on a free port, on the proxy's CPU, no persistence. Returns
    (Proc, port); raises RuntimeError."""
    port = free_port()
    proc = Proc("redis", [args.redis_server, "--port", str(port), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "no"], tmpdir, args.proxy_cpus)
    deadline = time.time() + 5
    while time.time() < deadline and proc.alive():
        try:
            if redis_cmd(port, "PING") == "PONG":
                return proc, port
        except OSError:
            pass
        time.sleep(0.05)
    proc.stop()
    raise RuntimeError("redis-server did not start: " + proc.stderr_tail())


def redis_cmd(port, *words):
    """One Redis command on a fresh connection; returns a simple or bulk reply as a string,
    an integer reply as an int (raises OSError)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as s:
        s.sendall(("*%d\r\n" % len(words) + "".join(
            "$%d\r\n%s\r\n" % (len(w), w) for w in words)).encode())
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
            if data[:1] in (b"+", b"-", b":") and data.endswith(b"\r\n"):
                break
            if data[:1] == b"$":
                n = int(data[1:data.index(b"\r\n")])
                if len(data) >= data.index(b"\r\n") + 2 + n + 2:
                    break
    text = data.decode("latin-1")
    if text[:1] == "+":
        return text[1:].strip()
    if text[:1] == ":":
        return int(text[1:])
    if text[:1] == "$":
        return text.split("\r\n", 1)[1][:-2]
    raise OSError("redis: " + text.strip())


def redis_memory(port):
    """(used_memory bytes, keys) of the Redis on port."""
    info = redis_cmd(port, "INFO", "memory")
    m = re.search(r"^used_memory:(\d+)", info, re.M)
    return (int(m.group(1)) if m else None), redis_cmd(port, "DBSIZE")


def ratelimit_run(args, backends, tmpdir, quiet):
    """The rate-limiting part: throughput of the cases (RL_CASES) in paired rounds, then the
    table's memory per key from fresh gateways. Returns a dict for the report; every process
    started here is stopped before it returns."""
    res = {"cases": {}, "rss": {}, "prime": {}, "memory": [], "notes": [],
           "perf": perf_setup(args), "redis_memory": None}
    cases = [c for c in RL_CASES if (c != "c" or args.rl_case_c) and (c != "d" or
                                                                     args.rl_shared)]
    procs, redis, rport = {}, None, None
    try:
        if "d" in cases:
            if not shutil.which(args.redis_server):
                res["cases"]["d"] = [{"error": "%s not found" % args.redis_server}]
            else:
                try:
                    redis, rport = start_redis(args, tmpdir)
                except (RuntimeError, OSError) as e:
                    res["cases"]["d"] = [{"error": str(e)}]
        for case in cases:
            _, names, headers, shared = RL_CASES[case]
            if case in res["cases"]:
                continue
            try:
                procs[case] = start_rl_gateway(args, backends, tmpdir, "rl" + case, names,
                                               headers, args.rl_table_keys,
                                               rport if shared else None)
                err = rl_probe(procs[case][1], names, headers)
                if err:
                    raise RuntimeError(err)
            except (RuntimeError, OSError) as e:
                res["cases"][case] = [{"error": str(e)}]
                log("rate limiting %s: %s" % (case, e))
        live = [c for c in procs if c not in res["cases"]]
        bproc = backends["small"][0]
        sargs = (args.rl_ids, RL_HEADER)
        for case in live:
            res["rss"][case] = [procs[case][0].rss_kib()]
        # where each gateway's next run starts in the cycle of ids: every run goes on where
        # the last stopped, so every id comes back at the same pace
        start = dict.fromkeys(live, 0)
        if redis and "d" in live:
            res["redis_memory"] = [redis_memory(rport)]
        # Priming: each gateway with a rule sees every id once before the rounds, so that the
        # rounds measure buckets that exist (lookups, not inserts); every gateway opens its
        # upstream connections. A wrk process starts the cycle from the first id, so one run
        # must cover them all: 1.3 x as long as the ids take at the rate of a 1 s run.
        for case in live:
            proc, port = procs[case]
            watched = [proc, bproc] + ([redis] if case == "d" else [])
            quiet.wait(watched)
            try:
                r = run_wrk(args, port, "/", args.rl_conns, 1, watched, RL_SCRIPT, sargs)
                secs = 1 if case == "a" else min(args.rl_prime_max, max(2, math.ceil(
                    1.3 * args.rl_ids / max(r["rps"], 1.0)) + 1))
                r = run_wrk(args, port, "/", args.rl_conns, secs, watched, RL_SCRIPT, sargs)
                r["seconds"] = secs
                start[case] = r["requests"] % args.rl_ids
                res["prime"][case] = r
                if case != "a" and r["requests"] < args.rl_ids:
                    res["notes"].append("priming %s sent %d requests, fewer than the %d ids" %
                                        (case, r["requests"], args.rl_ids))
            except (RuntimeError, subprocess.SubprocessError, OSError) as e:
                res["prime"][case] = {"error": str(e)}
                res["notes"].append("priming %s: %s" % (case, e))
        # The rounds: every case once per round (order rotated), each run between two runs of
        # (a) -- a b a c a d a c a d a b a ... -- so that each is compared with (a) just
        # before and just after it, which cancels a drift of the machine's speed.
        others = [c for c in live if c != "a"]
        seq = []
        for rnd in range(args.rl_repeats if live else 0):
            k = rnd % len(others) if others else 0
            for case in (others[k:] + others[:k]) or ["a"]:
                seq += ([(rnd, "a")] if "a" in live and others else []) + [(rnd, case)]
        if "a" in live and others:
            seq.append((args.rl_repeats - 1, "a"))
        done = []
        for rnd, case in seq:
            proc, port = procs[case]
            watched = [proc, bproc] + ([redis] if case == "d" else [])
            if not proc.alive():
                r = {"error": "process died: " + proc.stderr_tail()}
                res["cases"].setdefault(case, []).append(r)
                done.append((case, r))
                continue
            quiet.wait(watched)
            try:
                # no warm-up: priming opened the upstream connections and made the buckets
                r = rl_wrk(args, proc, port, watched, res["perf"], args.rl_duration,
                           sargs + (start[case],), redis if case == "d" else None)
                start[case] = (start[case] + r["requests"]) % args.rl_ids
            except (RuntimeError, subprocess.SubprocessError, OSError) as e:
                r = {"error": str(e)}
            res["cases"].setdefault(case, []).append(r)
            done.append((case, r))
            log("rate limiting round %d/%d %s %s" % (
                rnd + 1, args.rl_repeats, case, r.get("error") or
                "%8.0f req/s  p50 %s  p99 %s  %s us/req%s%s%s%s%s" % (
                    r["rps"], fmt_ms(r["p50"]), fmt_ms(r["p99"]),
                    "%.1f" % r["cpu_us_per_req"] if "cpu_us_per_req" in r else "-",
                    " (+ redis %.1f)" % r["redis_us_per_req"]
                    if "redis_us_per_req" in r else "",
                    "  %.0f cycles/req" % r["cycles_per_req"] if "cycles_per_req" in r
                    else "",
                    "  %.0f instr/req" % r["instr_per_req"] if "instr_per_req" in r else "",
                    "  errors %s" % fmt_errors(r) if r["errors"] else "",
                    "  (other load %.2f cores)" % r["foreign"]
                    if r["foreign"] > args.foreign_limit else "")))
        rl_brackets(done)
        for case in live:
            res["rss"][case].append(procs[case][0].rss_kib())
        if redis and "d" in live:
            res["redis_memory"].append(redis_memory(rport))
        if "d" in procs:
            with open(procs["d"][0].errpath, errors="replace") as f:
                fell = [x.strip() for x in f if RL_LOCAL_LOG.search(x)]
            if fell:
                res["notes"].append("the shared gateway (d) decided locally at times (%d log "
                                    "lines, first: %s)" % (len(fell), fell[0][:200]))
    finally:
        for proc, _ in procs.values():
            proc.stop()
        if redis:
            redis.stop()
    sizes = sorted(set(args.rl_mem_keys + [args.rl_table_keys]))
    res["bytes_max"], why = rl_bytes_max(args, tmpdir, sizes)
    if why:
        res["notes"].append(why)
    for n in args.rl_mem_keys:
        m = rl_memory_run(args, backends, tmpdir, quiet, n)
        res["memory"].append(m)
        log("rate limiting memory, %d keys: %s" % (n, m.get("error") or
                                                  "%.1f bytes per key" % m["per_key"]))
    return res


def rl_brackets(done):
    """For every run of a case other than (a) in done (the (case, result) list in the order
    they ran), the mean of the nearest good (a) run before it and the one after it, as
    ref_rps, ref_cycles_per_req and ref_instr_per_req."""
    good = [i for i, (c, r) in enumerate(done) if c == "a" and "error" not in r]
    for i, (case, r) in enumerate(done):
        if case == "a" or "error" in r:
            continue
        refs = [done[j][1] for j in ([max((j for j in good if j < i), default=None)] +
                                     [min((j for j in good if j > i), default=None)])
                if j is not None]
        for key in ("rps", "cycles_per_req", "instr_per_req"):
            vals = [x[key] for x in refs if x.get(key)]
            if vals:
                r["ref_" + key] = sum(vals) / len(vals)


def rl_memory_run(args, backends, tmpdir, quiet, n):
    """A fresh gateway with limits.rate_limit_keys: n and --rl-mem-rules rules on "/" (same
    key, different names: each request makes one key per rule), filled with n keys by wrk
    cycling through n / rules ids. The gateway's RSS before the fill, after a warm-up with the
    same requests under another header name (no rule applies; connections and buffers exist),
    and after the fill."""
    rules = args.rl_mem_rules
    ids = -(-n // rules)
    names = ["dev%d" % (i + 1) for i in range(rules)]
    res = {"table_keys": n, "rules": rules, "ids": ids, "keys": ids * rules}
    proc = None
    try:
        proc, port = start_rl_gateway(args, backends, tmpdir, "rlmem%d" % n, names, False, n)
        err = rl_probe(port, names, False)
        if err:
            raise RuntimeError(err)
        bproc = backends["small"][0]
        quiet.wait([proc, bproc])
        warm = run_wrk(args, port, "/", args.rl_conns, max(1, args.warmup), [proc, bproc],
                       RL_SCRIPT, (ids, RL_WARM_HEADER))
        time.sleep(1.0)
        res["before_kib"] = proc.rss_kib()
        # every request updates `rules` keys, so it is slower than the warm-up's: give wrk
        # twice the time the ids would take at the warm-up's rate
        seconds = min(60, max(2, math.ceil(2.0 * ids / max(warm["rps"], 1.0)) + 1))
        fill = run_wrk(args, port, "/", args.rl_conns, seconds, [proc, bproc], RL_SCRIPT,
                       (ids, RL_HEADER))
        time.sleep(1.0)
        if not proc.alive():
            raise RuntimeError("exited: " + proc.stderr_tail())
        res["after_kib"] = proc.rss_kib()
        res["fill_rps"], res["fill_requests"], res["fill_seconds"] = (
            fill["rps"], fill["requests"], seconds)
        res["per_key"] = (res["after_kib"] - res["before_kib"]) * 1024.0 / res["keys"]
        if fill["requests"] < ids:
            res["error"] = "the fill sent %d requests, fewer than the %d ids" % (
                fill["requests"], ids)
        elif fill["errors"]:
            res["error"] = "the fill had errors: %s" % fmt_errors(fill)
    except (RuntimeError, subprocess.SubprocessError, OSError) as e:
        res["error"] = str(e)
    finally:
        if proc is not None:
            proc.stop()
    return res


# ---------------------------------------------------------------- cache hits

CACHE_ALL = ["direct", "nginx", "haproxy", "varnish", "scalegate"]
VARNISHD = "/usr/sbin/varnishd"
VARNISH_STORAGE = "malloc,64m"
# varnishd -p for this 2-core machine, where the proxy under test gets one CPU: one thread
# pool (default 2); a connection with a request in progress holds a worker thread, so 1,000
# busy connections need about 1,000 threads: up to 2,000 (default 5,000), at least 100 kept
# (the default) and grown during the warm-up. docs/benchmarks.md says what else was tried.
VARNISH_PARAMS = ["thread_pools=1", "thread_pool_min=100", "thread_pool_max=2000"]
# How each proxy marks a response served from its cache: (header, regex its value matches).
CACHE_HIT = {
    "scalegate": ("X-Cache", r"^HIT\b"),
    "haproxy": ("Age", r"^\d+$"),            # only responses from its cache have Age
    "nginx": ("X-Cache-Status", r"^HIT$"),    # add_header ... $upstream_cache_status
    "varnish": ("X-Varnish", r"^\d+ \d+$"),   # a hit: this request's id and the object's
}
CACHE_TARGET = 1.1     # scalegate's req/s over HAProxy's cache: the target of issue 6
CACHE_MISS_MAX = 0.01  # a run counts as served from the cache if under 1 % reached the backend


def proc_syscw(pid):
    """The write system calls a process has made (/proc/PID/io), None if unreadable. The demo
    backend writes each response with one write (or writev): its count of responses."""
    try:
        with open("/proc/%d/io" % pid) as f:
            for line in f:
                if line.startswith("syscw:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def proc_start(pid):
    """A process's start time (clock ticks after boot), None if it is gone or a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else fields[19]
    except (OSError, IndexError):
        return None


def stop_tree(proc):
    """proc.stop(), then SIGKILL to any of its descendants (as they were just before, and only
    while /proc says they are the same processes) still there 3 s later: varnishd's cache
    process, should the manager die without stopping it. Returns the pids it had to kill."""
    kids = [(p, proc_start(p)) for p in tree(proc.pid)[1:]]
    proc.stop()
    deadline = time.time() + 3
    while True:
        left = [p for p, st in kids if st is not None and proc_start(p) == st]
        if not left or time.time() > deadline:
            break
        time.sleep(0.05)
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    return left


def cache_probe(name, port, path):
    """GET path twice on fresh connections; the second answer must be a 200 with the proxy's
    hit marker (CACHE_HIT). Returns ("Header: value" of the second, None) or (None, why)."""
    for _ in range(2):
        code, data = http_get(port, path, timeout=3.0)
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    hdr, rx = CACHE_HIT[name]
    m = re.search(r"^%s:[ \t]*(.*?)[ \t]*\r?$" % re.escape(hdr), head, re.M | re.I)
    if code != 200:
        return None, "second GET %s answered %d" % (path, code)
    if not m or not re.search(rx, m.group(1)):
        return None, "second GET %s is not a hit: %s" % (
            path, "%s: %s" % (hdr, m.group(1)) if m else "no %s header" % hdr)
    return "%s: %s" % (hdr, m.group(1)), None


def start_cache_contender(name, args, backends, tmpdir, tag, paths):
    """One contender of the cache part over the throughput backends (bench/NAME-cache.*.tmpl),
    its cache filled and checked on every path of paths. Returns (Proc or None, port,
    {path: hit marker}, error or None)."""
    if name == "direct":
        return None, None, {}, None
    kv = proxy_kv(args, tmpdir, small_port=backends["small"][1], big_port=backends["16k"][1])
    port = kv["port"]
    proc, err = launch_proxy(name, args, tmpdir, tag, "-cache", kv)
    if proc is None:
        return None, None, {}, err
    marks = {}
    try:
        for path in paths:
            err = wait_ready(proc, port, path, timeout=15.0)
            if err:
                break
            marks[path], err = cache_probe(name, port, path)
            if err:
                err = "not serving from its cache: " + err
                break
    except OSError as e:
        err = "probe: %s" % e
    if err:
        stop_tree(proc)
        return None, None, {}, err
    return proc, port, marks, None


def cache_run(args, backends, tmpdir, quiet, scenarios):
    """The cache-hit part: every contender of args.cache_only started once over the two
    backends, its cache filled; then, as in the throughput part, rounds in which each runs
    every scenario once (order rotated), wrk to the same cacheable paths. The backend's write
    calls during each run count the requests that got past the cache. The hit markers are
    checked again after the rounds. Returns a dict for the report; everything started here is
    stopped before it returns."""
    paths = [SIZES[s][0] for s in sorted({s for s, _ in scenarios})]
    res = {"scenarios": scenarios, "results": {}, "failures": {}, "marks": {}, "after": {},
           "notes": []}
    contenders = {}
    try:
        for c in args.cache_only:
            proc, port, marks, err = start_cache_contender(c, args, backends, tmpdir, "cache",
                                                           paths)
            if err:
                res["failures"][c] = "failed to start: " + err
                log("cache %s %s" % (c, res["failures"][c]))
            else:
                contenders[c] = (proc, port)
                res["marks"][c] = marks
        live = [c for c in args.cache_only if c in contenders]
        for rnd in range(args.repeats if any(c != "direct" for c in live) else 0):
            order = live[rnd % len(live):] + live[:rnd % len(live)]
            for sc in scenarios:
                size, nconn = sc
                for c in order:
                    proc, port = contenders[c]
                    bproc, bport = backends[size]
                    if proc is not None and not proc.alive():
                        res["results"].setdefault((c, sc), []).append(
                            {"error": "process died: " + proc.stderr_tail()})
                        continue
                    target = bport if c == "direct" else port
                    path = SIZES[size][0]
                    watched = ([proc] if proc else []) + [bproc]
                    quiet.wait(([proc] if proc else []) + [p for p, _ in backends.values()])
                    try:
                        if args.warmup:
                            run_wrk(args, target, path, nconn, args.warmup, watched)
                        w0 = proc_syscw(bproc.pid)
                        r = run_wrk(args, target, path, nconn, args.duration, watched)
                        w1 = proc_syscw(bproc.pid)
                        if w0 is not None and w1 is not None:
                            r["backend_writes"] = w1 - w0
                        want = SIZES[size][1] or 1
                        if r.get("bytes_per_req", want) < want:
                            r["error"] = "responses too short (%.0f bytes each)" % (
                                r["bytes_per_req"])
                        elif c != "direct" and r.get("backend_writes") is not None and \
                                r["backend_writes"] > CACHE_MISS_MAX * max(r["requests"], 1):
                            r["error"] = "not served from the cache: %d of %d requests " \
                                         "reached the backend" % (r["backend_writes"],
                                                                  r["requests"])
                    except (RuntimeError, subprocess.SubprocessError, OSError) as e:
                        r = {"error": str(e)}
                    res["results"].setdefault((c, sc), []).append(r)
                    log("cache round %d/%d %-7s %4d conns %-9s %s" % (
                        rnd + 1, args.repeats, size, nconn, c,
                        r.get("error") or "%8.0f req/s  p50 %s  p99 %s  %s us/req  backend "
                        "writes %s%s" % (
                            r["rps"], fmt_ms(r["p50"]), fmt_ms(r["p99"]),
                            "%.1f" % r["cpu_us_per_req"] if "cpu_us_per_req" in r else "-",
                            r.get("backend_writes", "?"),
                            "  (other load %.2f cores)" % r["foreign"]
                            if r["foreign"] > args.foreign_limit else "")))
        for c in live:
            proc, port = contenders[c]
            if proc is None:
                continue
            res["after"][c] = {}
            for path in paths:
                try:
                    mark, err = cache_probe(c, port, path)
                except OSError as e:
                    mark, err = None, str(e)
                res["after"][c][path] = mark
                if err:
                    res["notes"].append("%s after the rounds: %s" % (c, err))
    finally:
        for c, (proc, _) in contenders.items():
            if proc is not None:
                alive = proc.alive()
                killed = stop_tree(proc)
                if killed:
                    res["notes"].append("%s: %d process(es) outlived it and got SIGKILL" % (
                        c, len(killed)))
                rc = proc.p.returncode
                if alive and rc not in (0, -signal.SIGTERM, 143):
                    how = ("killed by %s" % signal.Signals(-rc).name) if rc < 0 else \
                        "exit status %d" % rc
                    res["notes"].append("%s on SIGTERM after the rounds: %s: %s" % (
                        c, how, proc.stderr_tail(2)))
    return res


# ---------------------------------------------------------------- metrics

METRICS_ROUTES = 50      # routes /r0/ .. /r49/, named r0 .. r49
METRICS_POOLS = 10       # pools p0 .. p9 ...
METRICS_PER_POOL = 10    # ... of 10 servers each: the small backend and 9 dead addresses
METRICS_TARGET_MS = 10.0  # a scrape of that config under 10 ms (p99): the issue's target
METRICS_FILL_S = 2       # seconds of wrk over every route before the scrapes
METRICS_FILL_LUA = """-- written by bench/bench.py: GET /r0/ .. /r%d/ in turn
local i = 0
request = function()
  local p = "/r" .. (i %% %d) .. "/"
  i = i + 1
  return wrk.format("GET", p)
end
"""
METRICS_REQ_RX = re.compile(
    r'^scalegate_http_requests_total\{route="([^"]*)",pool="([^"]*)",code="(\dxx)"\} (\d+)$', re.M)
METRICS_UP_RX = re.compile(r'^scalegate_backend_up\{pool="([^"]*)",server="([^"]*)"\} (\d+)$',
                           re.M)


def metrics_dead_addr(pool, j):
    """The j-th dead server of a pool: a loopback address nobody listens on (127.0.9.0/24,
    port 9; the connect is refused at once)."""
    return "127.0.9.%d:9" % (pool * METRICS_PER_POOL + j)


def metrics_yaml(small_port, keepalive):
    """The pools and routes of bench/scalegate-metrics.yaml.tmpl."""
    pools, routes = [], []
    for p in range(METRICS_POOLS):
        servers = ["127.0.0.1:%d" % small_port] + [metrics_dead_addr(p, j)
                                                    for j in range(1, METRICS_PER_POOL)]
        pools += ["  p%d:" % p,
                  "    servers: [%s]" % ", ".join(servers),
                  "    health: { interval: 1h, timeout: 1s, fall: 1, rise: 1 }",
                  "    keepalive: %d" % keepalive,
                  "    keepalive_timeout: 300s"]
    for n in range(METRICS_ROUTES):
        routes += ["  - name: r%d" % n,
                   "    match: { path_prefix: /r%d/ }" % n,
                   "    pool: p%d" % (n % METRICS_POOLS)]
    return "\n".join(pools), "\n".join(routes)


def scrape(conn, token):
    """GET /metrics on a keep-alive http.client connection. Returns (seconds from the
    request being sent to the whole body read, body, whether a new connection was opened);
    raises on a status other than 200."""
    fresh = conn.sock is None
    t0 = time.perf_counter()
    conn.request("GET", "/metrics", headers={"Authorization": "Bearer " + token})
    r = conn.getresponse()
    body = r.read()
    dt = time.perf_counter() - t0
    if r.status != 200:
        raise RuntimeError("GET /metrics answered %d: %r" % (r.status, body[:200]))
    return dt, body, fresh


def metrics_inspect(body):
    """What a scrape holds: its size, sample lines, route names with requests, the (pool,
    server) series of scalegate_backend_up and how many are up."""
    text = body.decode("utf-8", "replace")
    lines = text.splitlines()
    per_route = {}
    for route, _, _, v in METRICS_REQ_RX.findall(text):
        per_route[route] = per_route.get(route, 0) + int(v)
    up = {(p, s): int(v) for p, s, v in METRICS_UP_RX.findall(text)}
    return {"bytes": len(body),
            "samples": sum(1 for x in lines if x and not x.startswith("#")),
            "families": sum(1 for x in lines if x.startswith("# TYPE ")),
            "routes": sorted(r for r in per_route if re.fullmatch(r"r\d+", r)),
            "routes_counted": sum(1 for r, v in per_route.items()
                                  if re.fullmatch(r"r\d+", r) and v > 0),
            "servers": len(up), "addresses": len({s for _, s in up}),
            "servers_up": sum(1 for v in up.values() if v)}


def metrics_expect(info):
    """None if a scrape shows the whole config, or what is missing."""
    want = ["r%d" % n for n in range(METRICS_ROUTES)]
    missing = [r for r in want if r not in info["routes"]]
    if missing:
        return "no requests_total series for route(s) %s" % ",".join(missing[:5])
    nserv = METRICS_POOLS * METRICS_PER_POOL
    if info["servers"] != nserv:
        return "%d server_up series, %d expected" % (info["servers"], nserv)
    if info["servers_up"] != METRICS_POOLS:
        return "%d servers up, %d expected (one per pool)" % (info["servers_up"],
                                                                 METRICS_POOLS)
    return None


class Scraper(threading.Thread):
    """Scrapes /metrics every `interval` seconds on one keep-alive connection until stop();
    keeps each scrape's time (a scrape that runs late delays the next, never a burst)."""

    def __init__(self, port, token, interval):
        super().__init__(daemon=True)
        self.port, self.token, self.interval = port, token, interval
        self.done = threading.Event()
        self.times, self.errors, self.reconnects = [], [], 0

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5.0)
        first = True
        nxt = time.monotonic()
        while not self.done.is_set():
            try:
                dt, _, fresh = scrape(conn, self.token)
                self.times.append(dt)
                self.reconnects += fresh and not first
                first = False
            except (OSError, http.client.HTTPException, RuntimeError) as e:
                self.errors.append(str(e))
                conn.close()
            nxt = max(nxt + self.interval, time.monotonic())
            self.done.wait(max(0.0, nxt - time.monotonic()))
        conn.close()

    def stop(self):
        self.done.set()
        self.join(10)


def pct_rank(xs, pct):
    """Nearest-rank percentile of xs (a list), None if empty."""
    if not xs:
        return None
    s = sorted(xs)
    return s[max(0, math.ceil(pct / 100.0 * len(s)) - 1)]


def start_metrics_gateway(args, backends, tmpdir, tag):
    """A scalegate with bench/scalegate-metrics.yaml.tmpl, its dead servers already marked
    down. Returns (Proc, port, admin port, token); raises RuntimeError (the gateway stopped)."""
    token = os.urandom(16).hex()
    pools, routes = metrics_yaml(backends["small"][1], args.upstream_keepalive)
    kv = proxy_kv(args, tmpdir, admin_port=free_port(), token_env=TOKEN_ENV, pools=pools,
                  routes=routes, npools=METRICS_POOLS, per_pool=METRICS_PER_POOL,
                  nservers=METRICS_POOLS * METRICS_PER_POOL, nroutes=METRICS_ROUTES)
    proc, err = launch_proxy("scalegate", args, tmpdir, tag, "-metrics", kv,
                             env=dict(os.environ, **{TOKEN_ENV: token}))
    if proc is None:
        raise RuntimeError("failed to start: " + err)
    port, aport = kv["port"], kv["admin_port"]
    deadline, last = time.time() + 10, "no answer"
    while True:
        if not proc.alive():
            last = "exited with status %s: %s" % (proc.p.returncode, proc.stderr_tail())
            break
        try:
            conn = http.client.HTTPConnection("127.0.0.1", aport, timeout=2.0)
            try:
                _, body, _ = scrape(conn, token)
            finally:
                conn.close()
            info = metrics_inspect(body)
            if info["servers"] == METRICS_POOLS * METRICS_PER_POOL and \
                    info["servers_up"] == METRICS_POOLS:
                last = None
                break
            last = "%d of %d servers up" % (info["servers_up"], info["servers"])
        except (OSError, http.client.HTTPException, RuntimeError) as e:
            last = str(e)
        if time.time() > deadline:
            last = "not ready after 10s (%s): %s" % (last, proc.stderr_tail())
            break
        time.sleep(0.1)
    err = last or wait_ready(proc, port, "/r0/")
    if err:
        proc.stop()
        raise RuntimeError("failed to start: " + err)
    return proc, port, aport, token


def metrics_run(args, backends, tmpdir, quiet):
    """The metrics part: one gateway (50 routes, 100 servers), every route given traffic,
    then (1) --metrics-scrapes sequential scrapes on one keep-alive connection, timed, and
    (2) rounds of the small, 64-connection load on /r0/ without (a) and with (b) a scraper
    thread every --metrics-interval-ms, the order alternating. Returns a dict for the report;
    the gateway and the scraper are stopped before it returns."""
    res = {"scrape": {}, "load": {"a": [], "b": []}, "notes": []}
    proc, scraper = None, None
    bproc = backends["small"][0]
    try:
        proc, port, aport, token = start_metrics_gateway(args, backends, tmpdir, "metrics")
        watched = [proc, bproc]
        lua = os.path.join(tmpdir, "wrk-metrics-routes.lua")
        with open(lua, "w") as f:
            f.write(METRICS_FILL_LUA % (METRICS_ROUTES - 1, METRICS_ROUTES))
        fill = run_wrk(args, port, "/", 64, METRICS_FILL_S, watched, script=lua)
        res["fill"] = {k: fill.get(k) for k in ("requests", "rps", "errors")}
        log("metrics: %d requests over the %d routes in %d s (%d errors)" % (
            fill["requests"], METRICS_ROUTES, METRICS_FILL_S, fill["errors"]))

        # (1) scrape time
        conn = http.client.HTTPConnection("127.0.0.1", aport, timeout=5.0)
        try:
            _, body, _ = scrape(conn, token)  # one before the timed ones, not counted
            info = metrics_inspect(body)
            bad = metrics_expect(info)
            if not bad and info["routes_counted"] < METRICS_ROUTES:
                bad = "only %d of %d routes have requests counted" % (
                    info["routes_counted"], METRICS_ROUTES)
            if bad:
                raise RuntimeError("the scrape is not the expected one: " + bad)
            quiet.wait(watched)
            times, sizes, reconnects = [], set(), 0
            cpu0 = proc.cpu()
            for _ in range(args.metrics_scrapes):
                dt, body, fresh = scrape(conn, token)
                times.append(dt)
                sizes.add(len(body))
                reconnects += fresh
            cpu1 = proc.cpu()
        finally:
            conn.close()
        info = metrics_inspect(body)  # the last one
        ms = [1000.0 * t for t in times]
        res["scrape"] = dict(info, n=len(ms), times_ms=ms, median_ms=statistics.median(ms),
                             p99_ms=pct_rank(ms, 99), max_ms=max(ms), min_bytes=min(sizes),
                             max_bytes=max(sizes), reconnects=reconnects,
                             cpu_ms=1000.0 * (cpu1 - cpu0) / len(ms))
        bad = metrics_expect(info)
        if bad:
            res["scrape"]["error"] = "the last scrape is not the expected one: " + bad
        s = res["scrape"]
        log("metrics: %d scrapes of %d bytes, %d samples: median %.2f ms, p99 %.2f ms, max "
            "%.2f ms; gateway CPU %.2f ms per scrape%s" % (
                s["n"], s["bytes"], s["samples"], s["median_ms"], s["p99_ms"], s["max_ms"],
                s["cpu_ms"], ", %d reconnects" % reconnects if reconnects else ""))

        # (2) the request path with and without a scraper
        for rnd in range(args.metrics_repeats):
            for case in ("a", "b") if rnd % 2 == 0 else ("b", "a"):
                if not proc.alive():
                    res["load"][case].append({"error": "process died: " + proc.stderr_tail()})
                    continue
                quiet.wait(watched)
                try:
                    if case == "b":
                        scraper = Scraper(aport, token, args.metrics_interval_ms / 1000.0)
                        scraper.start()
                    if args.warmup:
                        run_wrk(args, port, "/r0/", 64, args.warmup, watched)
                    k0 = len(scraper.times) if scraper else 0
                    e0 = len(scraper.errors) if scraper else 0
                    me0 = os.times()
                    r = run_wrk(args, port, "/r0/", 64, args.duration, watched)
                    me1 = os.times()
                    # run_wrk counts the harness's own CPU (the scraper thread) as other load
                    r["foreign"] = max(0.0, r["foreign"] - ((me1.user - me0.user) + (
                        me1.system - me0.system)) / args.duration)
                    if r.get("bytes_per_req", 1) < 1:
                        r["error"] = "responses too short (%.0f bytes each)" % (
                            r["bytes_per_req"])
                    if scraper:
                        ts = [1000.0 * t for t in scraper.times[k0:]]
                        r["scrapes"] = len(ts)
                        r["scrape_errors"] = len(scraper.errors) - e0
                        r["scrape_median_ms"] = statistics.median(ts) if ts else None
                        r["scrape_max_ms"] = max(ts) if ts else None
                        if scraper.errors:
                            r["scrape_error_detail"] = scraper.errors[-1]
                except (RuntimeError, subprocess.SubprocessError, OSError) as e:
                    r = {"error": str(e)}
                finally:
                    if scraper:
                        scraper.stop()
                        scraper = None
                res["load"][case].append(r)
                log("metrics round %d/%d (%s) %s%s" % (
                    rnd + 1, args.metrics_repeats, case,
                    r.get("error") or "%8.0f req/s  p50 %s  p99 %s  %s us/req" % (
                        r["rps"], fmt_ms(r["p50"]), fmt_ms(r["p99"]),
                        "%.1f" % r["cpu_us_per_req"] if "cpu_us_per_req" in r else "-"),
                    "" if "scrapes" not in r else "  %d scrapes (median %s, max %s)%s" % (
                        r["scrapes"], fmt_ms(r["scrape_median_ms"]),
                        fmt_ms(r["scrape_max_ms"]),
                        ", %d failed" % r["scrape_errors"] if r["scrape_errors"] else "")))
    except (RuntimeError, subprocess.SubprocessError, OSError,
            http.client.HTTPException) as e:
        res["error"] = str(e)
        log("metrics: %s" % e)
    finally:
        if scraper:
            scraper.stop()
        if proc is not None:
            alive = proc.alive()
            proc.stop()
            rc = proc.p.returncode
            if alive and rc not in (0, -signal.SIGTERM, 143):
                res["notes"].append("scalegate on SIGTERM after the part: exit status %s: %s"
                                    % (rc, proc.stderr_tail(2)))
    return res


# ---------------------------------------------------------------- report


def fmt_ms(v):
    if v is None:
        return "-"
    return "%.2f ms" % v if v < 10 else "%.1f ms" % v


def fmt_ratio(a, b):
    return "%.2f" % (a / b) if a and b else "-"


def fmt_r(v):
    return "%.2f" % v if v else "-"


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(runs):
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return None
    rps = [r["rps"] for r in ok]
    med = statistics.median(rps)
    return {"rps": med, "p50": median([r["p50"] for r in ok]),
            "p99": median([r["p99"] for r in ok]),
            "spread": (max(rps) - min(rps)) / med if med else 0.0,
            "cpu_us": median([r.get("cpu_us_per_req") for r in ok]),
            "foreign": max(r["foreign"] for r in ok),
            "errors": sum(r["errors"] for r in ok), "n": len(ok),
            "error_detail": [r["error_detail"] for r in ok if r.get("error_detail")]}


def paired_ratio(runs, ref_runs):
    """Median over rounds of rps / the reference's rps in the same round. Contenders of one
    round run back to back, so a slow spell of the machine cancels out of the ratio."""
    if not ref_runs:
        return None
    ratios = [a["rps"] / b["rps"] for a, b in zip(runs, ref_runs)
              if "error" not in a and "error" not in b and b["rps"]]
    return statistics.median(ratios) if ratios else None


def fmt_errors(r):
    if not r["errors"]:
        return "0"
    names = {"status": "non-2xx"}
    return "%d (%s)" % (r["errors"], ", ".join("%s %d" % (names.get(k, k), v)
                                              for k, v in r["error_parts"].items() if v))


def fmt_after(v):
    return "+%.2f s" % v if v is not None else "-"


def report_failover(args, failover, notes):
    lines = []
    add = lines.append
    add("")
    add("## Failover (kill -9 of one of three backends %g s into %d s of GET load, wrk -t%d "
        "-c%d; %d runs each)" % (args.failover_kill_at, args.failover_duration,
                                 args.wrk_threads, args.failover_conns, args.failover_repeats))
    add("")
    add("| contender | run | req/s | errors | p99 | max | marked down | target |")
    add("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    lognotes = []
    flagged = False
    for c, runs in failover.items():
        ok = []
        for kind, rs in (("", runs["runs"]), ("no kill ", runs.get("control", []))):
            for i, r in enumerate(rs):
                label = "%s%d" % (kind, i + 1)
                if "error" in r and "rps" not in r:
                    add("| %s | %s | failed | | | | | |" % (c, label))
                    notes.append("%s, failover run %s: %s" % (c, label, r["error"]))
                    continue
                if "error" in r:
                    notes.append("%s, failover run %s: %s" % (c, label, r["error"]))
                if "stop_problem" in r:
                    notes.append("%s, failover run %s: %s" % (c, label, r["stop_problem"]))
                if not kind:
                    ok.append(r)
                mark = ""
                if r.get("foreign", 0) > args.foreign_limit:
                    mark, flagged = " *", True
                target = "-" if kind else ("met" if failover_ok(r) else "**missed**")
                add("| %s | %s | %.0f%s | %s | %s | %s | %s | %s |" % (
                    c, label, r["rps"], mark, fmt_errors(r), fmt_ms(r["p99"]),
                    fmt_ms(r["max"]), fmt_after(r["log"]["down_after"]) if kind == "" else "-",
                    target))
                lg = r["log"]
                if lg["counts"]:
                    lognotes.append("%s run %s: %s" % (c, label, "; ".join(
                        "%s x%d (first %s)" % (lbl, n, fmt_after(lg["first"][lbl]))
                        for lbl, n in lg["counts"].items())))
        if ok:
            add("| %s | median | %.0f | %s | %s | %s | %s | %d of %d runs |" % (
                c, median([r["rps"] for r in ok]), "%g" % median([r["errors"] for r in ok]),
                fmt_ms(median([r["p99"] for r in ok])), fmt_ms(median([r["max"] for r in ok])),
                fmt_after(median([r["log"]["down_after"] for r in ok])),
                sum(1 for r in ok if failover_ok(r)), len(runs["runs"])))
    add("")
    add("Target: 0 errors and max < %.0f ms, in every run. errors: wrk's socket errors "
        "(connect, read, write; timeout = a response slower than wrk's 2 s) plus responses with a "
        "status >= 400. p99, max: wrk's latencies over the whole run, which count only "
        "requests that got a response. marked down: from the kill to the proxy's first log "
        "line taking the server out (a failed health check or an ejection; nginx: \"upstream "
        "server temporarily disabled\"); median: of the runs that logged one." %
        FAILOVER_MAX_MS)
    if flagged:
        add("* other processes used more than %.0f%% of a core during the run: a stall may "
            "be theirs." % (100 * args.foreign_limit))
    if lognotes:
        add("")
        add("Proxy log lines after the kill:")
        for n in lognotes:
            add("- " + n)
    return lines


def fmt_t(v):
    return "+%.1f s" % v if v is not None else "-"


def report_elasticity(args, elasticity, notes):
    lines = []
    add = lines.append
    base_conns, step_conns = args.elasticity_conns
    needed, per = elasticity_needed(args)
    add("")
    add("## Elasticity (a %gx step, wrk -c%d -> -c%d after %d s, held %d s; autoscaled pool of "
        "demo-backend --serial --delay %d, p95 target %g ms; %d run%s)" % (
            step_conns / base_conns, base_conns, step_conns, args.elasticity_base,
            args.elasticity_step, args.elasticity_delay_ms, args.elasticity_target_ms,
            args.elasticity_repeats, "" if args.elasticity_repeats == 1 else "s"))
    add("")
    add("| contender | run | needed | decided | reached | p95 under target | peak | settled | "
        "p95 before / peak | failed | target |")
    add("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    runs = elasticity.get("scalegate", [])
    ok, flagged, timeline = [], False, []
    for i, r in enumerate(runs):
        label = "%d" % (i + 1)
        if "stop_problem" in r:
            notes.append("scalegate, elasticity run %s: %s" % (label, r["stop_problem"]))
        if "error" in r and "needed" not in r:
            add("| scalegate | %s | failed | | | | | | | | |" % label)
            notes.append("scalegate, elasticity run %s: %s" % (label, r["error"]))
            continue
        ok.append(r)
        mark = ""
        if r.get("foreign", 0) > args.foreign_limit:
            mark, flagged = " *", True
        if r.get("base_max_instances", 1) != 1:
            notes.append("scalegate, elasticity run %s: the pool grew to %d instances before "
                         "the step (base load p95 %s)" % (label, r["base_max_instances"],
                                                          fmt_ms(r["base_p95"])))
        if r["p95_never_over"]:
            notes.append("scalegate, elasticity run %s: the pool's p95 never went over the "
                         "target after the step" % label)
        add("| scalegate | %s%s | %d | %s | %s | %s | %s | %s | %s / %s | %s | %s |" % (
            label, mark, r["needed"], fmt_t(r["decided"]), fmt_t(r["reached"]),
            fmt_t(r["p95_under"]), "-" if r["peak"] is None else r["peak"],
            "-" if not r["settled"] else "%d" % r["settled"][0]
            if r["settled"][0] == r["settled"][1] else "%d-%d" % tuple(r["settled"]),
            fmt_ms(r["base_p95"]), fmt_ms(r["p95_peak"]),
            fmt_errors({"errors": r["failed"], "error_parts": r["error_parts"]}),
            "met" if elasticity_ok(r) else "**missed**"))
        ups = ["%s %s->%s" % (fmt_t(t), a, b) for t, kind, a, b, _ in r["events"]
               if kind == "scale_up"]
        ready = [t for t, kind, _, _, _ in r["events"] if kind == "instance_ready"]
        other = ["%s %s" % (fmt_t(t), kind) for t, kind, _, _, _ in r["events"]
                 if kind not in ("scale_up", "instance_ready")]
        timeline.append("run %s: scale-ups %s; instances ready %s%s; wrk: %d requests, "
                        "step p99 %s, max %s%s" % (
                            label, ", ".join(ups) or "none",
                            ", ".join("%+.1f" % t for t in ready) or "none",
                            "; " + ", ".join(other) if other else "", r["requests"],
                            fmt_ms(r["step_p99"]), fmt_ms(r["max"]),
                            "" if r["timed_by"] == "history" else
                            " (decided and reached from the %g s polls)" % args.elasticity_poll))
    if len(ok) > 1:
        add("| scalegate | median | %d | %s | %s | %s | %g | | %s / %s | %g | %d of %d runs |" % (
            needed, fmt_t(median([r["decided"] for r in ok])),
            fmt_t(median([r["reached"] for r in ok])),
            fmt_t(median([r["p95_under"] for r in ok])), median([r["peak"] for r in ok]) or 0,
            fmt_ms(median([r["base_p95"] for r in ok])),
            fmt_ms(median([r["p95_peak"] for r in ok])), median([r["failed"] for r in ok]),
            sum(1 for r in ok if elasticity_ok(r)), len(runs)))
    for c in ("nginx", "haproxy"):
        if c in args.only:
            add("| %s | - | n/a | n/a | n/a | n/a | | | | | no autoscaling: a fixed list of "
                "servers |" % c)
    add("| Kubernetes HPA | (not measured) | | | | | | | | | >= 15 s per decision period + pod "
        "start-up |")
    add("")
    add("Target: reached and p95 under target within %.0f s of the step, 0 failed requests. "
        "needed: computed, not observed: an instance serves one request at a time in %d ms, so "
        "k requests queued on it take about k x %d ms; k = %d keeps them under %g ms, and %d "
        "connections need ceil(%d / %d) = %s instances. decided: from the step until the "
        "scaler asked for needed instances (its scale_up event); reached: until that many were "
        "ready (started and past their first health check: instance_ready events), both from "
        "the time stamps of GET /api/v1/scaling/history; p95 under target: until the pool's "
        "p95 (GET /api/v1/scaling/metrics: over the scaler's %s window, computed once per "
        "period), polled every %g s, was under the target and stayed under for %g s. "
        "peak: the most instances (ready + starting) seen; settled: over the last 5 s of the "
        "step. failed: wrk's socket errors plus responses with a status >= 400, both phases. "
        "nginx and HAProxy balance over the servers they are given; a Kubernetes HPA with its "
        "default behaviour decides every 15 s and adds at most +100 %% or +4 pods per decision, "
        "so 1 -> %s takes several periods plus each pod's start-up." % (
            ELASTICITY_MAX_S, args.elasticity_delay_ms, args.elasticity_delay_ms, per,
            args.elasticity_target_ms, step_conns, step_conns, per, needed,
            "%d s" % ELASTICITY_WINDOW_S,
            args.elasticity_poll, args.elasticity_hold, needed))
    if flagged:
        add("* other processes used more than %.0f%% of a core during the run." % (
            100 * args.foreign_limit))
    if timeline:
        add("")
        add("Scaling after the step (seconds after it):")
        for t in timeline:
            add("- " + t)
    return lines


def fmt_bytes(b):
    if b is None:
        return "-"
    return "%.1f MiB" % (b / 1048576.0) if b >= 1048576 else "%.1f KiB" % (b / 1024.0)


def bracket_ratio(runs, key, inverse=False):
    """Median over runs of run[key] / its (a) bracket's (rl_brackets; the bracket's / the
    run's with inverse); None without such pairs."""
    ratios = [(r["ref_" + key] / r[key]) if inverse else (r[key] / r["ref_" + key])
              for r in runs if "error" not in r and r.get(key) and r.get("ref_" + key)]
    return statistics.median(ratios) if ratios else None


def report_ratelimit(args, rl, notes):
    lines = []
    add = lines.append
    add("")
    add("## Rate limiting (scalegate, small responses, %d conns, wrk -t%d with "
        "bench/wrk-device-ids.lua: %d distinct %s values; medians of %d rounds, every "
        "run %d s, each between two runs of (a))" % (
            args.rl_conns, args.wrk_threads, args.rl_ids, RL_HEADER, args.rl_repeats,
            args.rl_duration))
    add("")
    add("| case | req/s | p99 | x (a) | cost | cycles/req, proxy CPU (cost) | gateway instr/req "
        "(x (a)) | CPU us/req | spread | target |")
    add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    flagged = False
    for case, (label, _, _, shared) in RL_CASES.items():
        runs = rl["cases"].get(case)
        if runs is None:
            if shared:
                add("| %s | not measured (--no-rl-shared) | | | | | | | | |" % label)
            elif case == "c":
                add("| %s | not measured (--no-rl-case-c) | | | | | | | | |" % label)
            continue
        s = summarize(runs)
        if s is None:
            add("| %s | failed | | | | | | | | |" % label)
            notes.append("rate limiting %s: %s" % (case, next(
                (r["error"] for r in runs if "error" in r), "no run")))
            continue
        for r in runs:
            if "error" in r:
                notes.append("rate limiting %s, a round: %s" % (case, r["error"]))
        mark = ""
        if s["errors"]:
            mark += " (%d errors)" % s["errors"]
            notes.append("rate limiting %s: %s (summed over the rounds)" % (
                case, "; ".join(s["error_detail"])))
        if s["foreign"] > args.foreign_limit:
            mark, flagged = mark + " *", True
        ratio = bracket_ratio(runs, "rps") if case != "a" else None
        cost = None if ratio is None else 100.0 * (1.0 - ratio)
        if case == "a":
            target = ""
        elif shared:
            target = "reported (no target)"
        else:
            target = "-" if cost is None else "cost <= %g %%: %s" % (
                RL_COST_MAX, "met" if cost <= RL_COST_MAX and not s["errors"] else
                "**not met**")
        ok = [r for r in runs if "error" not in r]
        instr = median([r.get("instr_per_req") for r in ok])
        cycles = median([r.get("cycles_per_req") for r in ok])
        redis_us = median([r.get("redis_us_per_req") for r in ok])
        # req/s goes as 1 / cycles per request on the bottleneck CPU: x (a) by cycles is
        # cycles(a) / cycles(case), paired by round like req/s
        cyc_x = bracket_ratio(runs, "cycles_per_req", inverse=True) if case != "a" else 1.0
        instr_x = bracket_ratio(runs, "instr_per_req") if case != "a" else 1.0
        add("| %s | %.0f%s | %s | %s | %s | %s | %s | %s%s | %.0f%% | %s |" % (
            label, s["rps"], mark, fmt_ms(s["p99"]),
            "1.00" if case == "a" else fmt_r(ratio),
            "-" if cost is None else "%.1f %%" % cost,
            "-" if cycles is None else "%.0f" % cycles if case == "a" else "%.0f (%s)" % (
                cycles, "-" if cyc_x is None else "%.1f %%" % (100.0 * (1.0 - cyc_x))),
            "-" if instr is None else "%.0f (%s)" % (instr, fmt_r(instr_x)),
            "%.1f" % s["cpu_us"] if s["cpu_us"] else "-",
            " + %.1f Redis" % redis_us if redis_us is not None else "",
            100 * s["spread"], target))
    add("")
    add("Every case sends the same requests (GET / with %s cycling through %d values, request k "
        "with value k mod %d), so only the gateway's work differs. The rule: `%s` (nothing is "
        "rejected; every bucket stays active for the whole part). x (a): median over the "
        "rounds of req/s divided by the mean req/s of the (a) runs just before and after; "
        "cost = 1 - x (a); the "
        "target (issue 5) is for local mode. req/s, p99, CPU us/req (the gateway's CPU "
        "time per request; for (d) plus Redis'): medians over the rounds. cycles/req: every "
        "CPU cycle spent on the proxy's CPU (%s: gateway, backend, Redis, the kernel's network "
        "work) per request; req/s goes as its inverse when that CPU is the bottleneck, as "
        "here, so cost = 1 - median over the rounds of cycles(a) / cycles(case), (a) again "
        "the mean of the runs around: the same "
        "cost as the req/s column's, without the time the virtual machine lost to others. "
        "gateway instr/req: the gateway's instructions per request (%s, all its threads), "
        "which the machine's speed does not change at all. Before the rounds each gateway "
        "got the same load until every id had been sent once (%s); no warm-up before each "
        "run.%s" % (
            RL_HEADER, args.rl_ids, args.rl_ids, RL_RULE % "device",
            "perf stat -a -C %s -e cycles" % args.proxy_cpus if rl["perf"].get("cycles") else
            "not measured: no perf, no pinning or no right to watch a whole CPU",
            "perf stat -e %s" % rl["perf"]["instr"] if rl["perf"].get("instr") else
            "not measured: no perf",
            ", ".join("%s %d s" % (c, p["seconds"]) for c, p in rl.get("prime", {}).items()
                      if "seconds" in p) or "-",
            " (d): a redis-server started for the part, on the gateway's CPU, answering "
            "every request's script (EVAL once per connection, then EVALSHA)." if "d" in rl["cases"] else ""))
    if flagged:
        add("* other processes used more than %.0f%% of a core during at least one round." % (
            100 * args.foreign_limit))
    bmax = rl.get("bytes_max", {})
    add("")
    add("### Rate-limit table memory")
    add("")
    add("| limits.rate_limit_keys | keys | how filled | RSS before | RSS after | growth | "
        "per key | bound (sg_rl_table_bytes_max) | bound per key | x bound |")
    add("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for m in rl["memory"]:
        n = m["table_keys"]
        b = bmax.get(n)
        if "per_key" not in m:
            add("| %d | %d | failed | | | | | %s | %s | |" % (
                n, m["keys"], fmt_bytes(b), "%.1f B" % (b / n) if b else "-"))
            notes.append("rate limiting memory, %d keys: %s" % (n, m.get("error")))
            continue
        if "error" in m:
            notes.append("rate limiting memory, %d keys: %s" % (n, m["error"]))
        growth = (m["after_kib"] - m["before_kib"]) * 1024
        add("| %d | %d | %d rules x %d ids | %.1f MiB | %.1f MiB | %s | %.1f B%s | %s | %s | "
            "%s |" % (n, m["keys"], m["rules"], m["ids"], m["before_kib"] / 1024.0,
                      m["after_kib"] / 1024.0, fmt_bytes(growth), m["per_key"],
                      " (!)" if "error" in m else "", fmt_bytes(b),
                      "%.1f B" % (b / n) if b else "-", fmt_ratio(growth, b)))
    rss = rl.get("rss", {})
    if len(rss.get("b", [])) == 2 and len(rss.get("a", [])) == 2:
        n = args.rl_table_keys
        b = bmax.get(n)
        growth = ((rss["b"][1] - rss["b"][0]) - (rss["a"][1] - rss["a"][0])) * 1024
        add("| %d | %d | case (b), after its rounds | %.1f MiB | %.1f MiB | %s | %.1f B | %s | "
            "%s | %s |" % (n, args.rl_ids, rss["b"][0] / 1024.0, rss["b"][1] / 1024.0,
                           fmt_bytes(growth), growth / args.rl_ids, fmt_bytes(b),
                           "%.1f B" % (b / n) if b else "-", fmt_ratio(growth, b)))
    rm = rl.get("redis_memory")
    if rm and len(rm) == 2 and rm[0][0] is not None and rm[1][0] is not None:
        keys = rm[1][1] - rm[0][1]
        growth = rm[1][0] - rm[0][0]
        add("| (Redis) | %d | case (d), after its rounds | %s | %s | %s | %s | | | |" % (
            keys, fmt_bytes(rm[0][0]), fmt_bytes(rm[1][0]), fmt_bytes(growth),
            "%.1f B" % (growth / keys) if keys > 0 else "-"))
    add("")
    add("Memory is resident memory (VmRSS) of the gateway, a fresh one per row: before is "
        "after a warm-up with the same connections and requests under another header name "
        "(%s, which no rule looks at), after is 1 s after the fill; growth / keys = per key. "
        "The fill: %d rules on the route that differ only in name, each keyed on %s, so a "
        "request makes one key per rule; wrk cycles through keys / %d ids, every request "
        "admitted. The case (b) row is that gateway (default table size) after all its "
        "rounds, its growth less (a)'s over the same rounds. bound: "
        "sg_rl_table_bytes_max(limits.rate_limit_keys) from src/ratelimit/gcra.h, computed "
        "by gcra.c itself; a shard's slots are allocated and zeroed whole on the shard's "
        "first key, so a table holds its bound as soon as keys have reached all %d shards, "
        "however few keys it holds. The Redis row: Redis' used_memory (INFO memory) and "
        "DBSIZE before priming (d) and after its rounds." % (
            RL_WARM_HEADER, args.rl_mem_rules, RL_HEADER, args.rl_mem_rules, 256))
    for n in rl.get("notes", []):
        notes.append("rate limiting: " + n)
    return lines


def report_cache(args, cache, notes):
    lines = []
    add = lines.append
    scenarios = cache["scenarios"]
    results, failures = cache["results"], cache["failures"]
    add("")
    add("## Cache hits (medians of %d rounds, %d s each, wrk -t%d; one cacheable URL per size, "
        "served from each proxy's cache)" % (args.repeats, args.duration, args.wrk_threads))
    add("")
    add("| scenario | contender | req/s | p50 | p99 | x ceiling | x HAProxy cache | CPU us/req | "
        "to backend | spread | target |")
    add("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    flagged = False
    for sc in scenarios:
        label = "%s, %d conns" % (SIZE_LABEL[sc[0]], sc[1])
        ceil_runs = results.get(("direct", sc))
        hap_runs = results.get(("haproxy", sc))
        for c in args.cache_only:
            runs = results.get((c, sc), [])
            s = summarize(runs)
            if s is None:
                why = failures.get(c) or next((r["error"] for r in runs if "error" in r),
                                              "not run")
                add("| %s | %s | failed | | | | | | | | |" % (label, c))
                notes.append("cache, %s, %s: %s" % (c, label, why))
                continue
            for r in runs:
                if "error" in r:
                    notes.append("cache, %s, %s, a round: %s" % (c, label, r["error"]))
            mark = ""
            if s["errors"]:
                mark += " (%d errors)" % s["errors"]
                notes.append("cache, %s, %s: %s (summed over the rounds)" % (
                    c, label, "; ".join(s["error_detail"])))
            if s["foreign"] > args.foreign_limit:
                mark, flagged = mark + " *", True
            ok = [r for r in runs if "error" not in r]
            writes = [r["backend_writes"] for r in ok if r.get("backend_writes") is not None]
            reqs = sum(r["requests"] for r in ok if r.get("backend_writes") is not None)
            if not writes:
                to_backend = "?"
            elif c == "direct":
                to_backend = "all (%.2f writes/req)" % (sum(writes) / max(reqs, 1))
            else:
                to_backend = "%d (%.3f %%)" % (sum(writes), 100.0 * sum(writes) / max(reqs, 1))
            x_hap = paired_ratio(runs, hap_runs)
            target = ""
            if c == "scalegate":
                target = "-" if x_hap is None else ">= %.1fx HAProxy: %s" % (
                    CACHE_TARGET, "met" if x_hap >= CACHE_TARGET and not s["errors"] else
                    "**not met**")
            add("| %s | %s | %.0f%s | %s | %s | %s | %s | %s | %s | %.0f%% | %s |" % (
                label, c, s["rps"], mark, fmt_ms(s["p50"]), fmt_ms(s["p99"]),
                fmt_r(paired_ratio(runs, ceil_runs)), fmt_r(x_hap),
                "%.1f" % s["cpu_us"] if s["cpu_us"] else "-", to_backend, 100 * s["spread"],
                target))
    add("")
    add("req/s, p50, p99, CPU us/req (the proxy's CPU time per request, all its processes and "
        "threads; the backend's for direct): medians over the rounds. x ceiling, x HAProxy "
        "cache: median over the rounds of req/s divided by direct's (HAProxy's cache's) in "
        "the same round; direct (wrk to the demo backend, which answers from one response "
        "formatted at start-up) is a reference here more than a bound: hits never reach the "
        "backend, so a cache has the core to itself and can outrun it. to backend: write "
        "calls of the demo backend (one per response) "
        "during the measured runs, summed over the rounds, and as a share of the requests "
        "(a run with more than %.0f %% is thrown out as not served from the cache). Each "
        "contender's cache is filled before the rounds; every object is kept 5 minutes." % (
            100 * CACHE_MISS_MAX))
    marks = []
    for c in args.cache_only:
        if c == "direct" or c not in cache["marks"]:
            continue
        before = cache["marks"][c]
        after = cache["after"].get(c, {})
        marks.append("%s: %s" % (c, "; ".join(
            "%s `%s` / `%s`" % (path, before.get(path), after.get(path) or "-")
            for path in sorted(before))))
    if marks:
        add("")
        add("Hit markers (the second of two GETs before the rounds / one after them): " +
            "; ".join(marks) + ".")
    if flagged:
        add("* other processes used more than %.0f%% of a core during at least one round." % (
            100 * args.foreign_limit))
    for n in cache.get("notes", []):
        notes.append("cache: " + n)
    return lines


def report_metrics(args, m, notes):
    lines = []
    add = lines.append
    add("")
    add("## Metrics (scalegate: GET /metrics with %d routes and %d servers, %d pools)" % (
        METRICS_ROUTES, METRICS_POOLS * METRICS_PER_POOL, METRICS_POOLS))
    add("")
    if "error" in m:
        add("failed: %s" % m["error"])
        notes.append("metrics: " + m["error"])
    s = m.get("scrape") or {}
    if "median_ms" in s:
        add("### Scrape time (%d sequential scrapes on one keep-alive connection)" % s["n"])
        add("")
        add("| scrapes | median | p99 | max | response | sample lines | routes / servers (up) | "
            "gateway CPU per scrape | target |")
        add("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        met = s["p99_ms"] < METRICS_TARGET_MS and "error" not in s
        size = "%d bytes" % s["bytes"] if s["min_bytes"] == s["max_bytes"] else \
            "%d-%d bytes" % (s["min_bytes"], s["max_bytes"])
        add("| %d | %s | %s | %s | %s (%s) | %d | %d / %d (%d) | %s | p99 < %g ms: %s |" % (
            s["n"], fmt_ms(s["median_ms"]), fmt_ms(s["p99_ms"]), fmt_ms(s["max_ms"]), size,
            fmt_bytes(s["bytes"]), s["samples"], len(s["routes"]), s["servers"],
            s["servers_up"], fmt_ms(s["cpu_ms"]), METRICS_TARGET_MS,
            "met" if met else "**not met**"))
        add("")
        add("Time: from the request being sent to the last byte of the body read (Python's "
            "http.client, the harness unpinned), after one scrape not counted; p99: nearest "
            "rank. response: of the last scrape, %d metric families; sample lines: lines "
            "that are not comments. routes / servers: route names with a "
            "scalegate_http_requests_total series (all %d with requests counted, from %d s of wrk "
            "over every route first) / (pool, server) series of scalegate_backend_up (%d "
            "distinct addresses: the small demo backend is the live server of every pool; "
            "the others are dead loopback addresses, marked down by the first health check). "
            "gateway CPU per scrape: the gateway's CPU time (user + system) over the scrapes "
            "/ their number%s." % (
                s["families"], s["routes_counted"], METRICS_FILL_S, s["addresses"],
                "; %d scrapes opened a new connection" % s["reconnects"]
                if s["reconnects"] else ""))
        if "error" in s:
            notes.append("metrics, scrape: " + s["error"])
    load = m.get("load") or {}
    a_runs, b_runs = load.get("a", []), load.get("b", [])
    if a_runs or b_runs:
        add("")
        add("### The request path with metrics on (small, 64 conns, wrk -t%d to /r0/; "
            "medians of %d rounds, %d s each)" % (args.wrk_threads, args.metrics_repeats,
                                                  args.duration))
        add("")
        add("| case | req/s | p50 | p99 | CPU us/req | spread | scrapes during the runs |")
        add("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
        sums = {}
        for case, runs, label in (
                ("a", a_runs, "(a) no scraper"),
                ("b", b_runs, "(b) scraping every %g ms" % args.metrics_interval_ms)):
            sm = sums[case] = summarize(runs)
            for r in runs:
                if "error" in r:
                    notes.append("metrics, %s, a round: %s" % (label, r["error"]))
            if sm is None:
                add("| %s | failed | | | | | |" % label)
                continue
            mark = ""
            if sm["errors"]:
                mark += " (%d errors)" % sm["errors"]
                notes.append("metrics, %s: %s (summed over the rounds)" % (
                    label, "; ".join(sm["error_detail"])))
            if sm["foreign"] > args.foreign_limit:
                mark += " *"
            scr = ""
            ok = [r for r in runs if "error" not in r]
            if case == "b":
                n = sum(r.get("scrapes", 0) for r in ok)
                fails = sum(r.get("scrape_errors", 0) for r in ok)
                scr = "%d (%.1f/s), median %s, max %s%s" % (
                    n, n / max(1, len(ok) * args.duration),
                    fmt_ms(median([r.get("scrape_median_ms") for r in ok])),
                    fmt_ms(max([r["scrape_max_ms"] for r in ok
                                if r.get("scrape_max_ms") is not None], default=None)),
                    ", %d failed" % fails if fails else "")
                for r in ok:
                    if r.get("scrape_error_detail"):
                        notes.append("metrics, scraper: " + r["scrape_error_detail"])
            add("| %s | %.0f%s | %s | %s | %s | %.0f%% | %s |" % (
                label, sm["rps"], mark, fmt_ms(sm["p50"]), fmt_ms(sm["p99"]),
                "%.1f" % sm["cpu_us"] if sm["cpu_us"] else "-", 100 * sm["spread"], scr))
        # b / a within a round (runs of one round are back to back)
        pairs = [(a, b) for a, b in zip(a_runs, b_runs) if "error" not in a and
                 "error" not in b]
        ratios = [b["rps"] / a["rps"] for a, b in pairs if a["rps"]]
        cpu_ratios = [b["cpu_us_per_req"] / a["cpu_us_per_req"] for a, b in pairs
                      if a.get("cpu_us_per_req") and b.get("cpu_us_per_req")]
        if ratios:
            rmed = statistics.median(ratios)
            rspread = (max(ratios) - min(ratios)) / rmed if rmed else 0.0
            noise = max(sums["a"]["spread"], sums["b"]["spread"]) if sums.get("a") and \
                sums.get("b") else 0.0
            within = abs(rmed - 1.0) <= max(noise, rspread)
            disturbed = any(sm and sm["foreign"] > args.foreign_limit for sm in sums.values())
            add("| b / a | %.2f | %s | %s | %s | %.0f%% | ≈ 1.00: %s%s |" % (
                rmed,
                fmt_r(median([b["p50"] / a["p50"] for a, b in pairs if a["p50"] and b["p50"]])),
                fmt_r(median([b["p99"] / a["p99"] for a, b in pairs if a["p99"] and b["p99"]])),
                fmt_r(median(cpu_ratios)), 100 * rspread,
                "within noise" if within else "**outside the noise**",
                " (other load in some rounds: *)" if disturbed else ""))
            add("")
            add("req/s, p50, p99, CPU us/req (the gateway's CPU time per request; in (b) it "
                "includes the scrapes): medians over the rounds; spread: (max - min) / median "
                "req/s. b / a: median over the rounds of (b) divided by (a) of the same round "
                "(per round: %s; the order of (a) and (b) alternates from round to round); "
                "its spread is that of the per-round ratios. \"within noise\": |b / a - 1| is "
                "no larger than the spread of (a), (b) or the ratios. Scrapes: one keep-alive "
                "connection from a thread of the harness, every %g ms (Prometheus scrapes "
                "every 15 s by default), from before the warm-up to the end of the run; "
                "counted, with their times, over the measured runs." % (
                    ", ".join("%.3f" % x for x in ratios), args.metrics_interval_ms))
        if any("*" in x for x in lines if x.startswith("| (")):
            add("* other processes used more than %.0f%% of a core during at least one round."
                % (100 * args.foreign_limit))
    for n in m.get("notes", []):
        notes.append("metrics: " + n)
    return lines


def report(args, scenarios, results, failures, memory, meta, failover=None,
           elasticity=None, ratelimit=None, cache=None, metrics=None):
    lines = []
    add = lines.append
    if args.no_throughput:
        scenarios = []
    add("## Throughput (medians of %d rounds, %d s each, wrk -t%d)" % (
        args.repeats, args.duration, args.wrk_threads))
    add("")
    add("| scenario | contender | req/s | p50 | p99 | x ceiling | x HAProxy | "
        "CPU us/req | spread |")
    add("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    notes = []
    for sc in scenarios:
        label = "%s, %d conns" % (SIZE_LABEL[sc[0]], sc[1])
        sums = {c: summarize(results.get((c, sc), [])) for c in args.only}
        ceil_runs = results.get(("direct", sc))
        hap_runs = results.get(("haproxy", sc))
        for c in args.only:
            s = sums[c]
            if s is None:
                why = failures.get(c) or next((r["error"] for r in results.get((c, sc), [])
                                               if "error" in r), "not run")
                add("| %s | %s | failed | | | | | | |" % (label, c))
                notes.append("%s, %s: %s" % (c, label, why))
                continue
            mark = ""
            if s["errors"]:
                mark += " (%d errors)" % s["errors"]
                notes.append("%s, %s: %s (summed over the rounds)" % (
                    c, label, "; ".join(s["error_detail"])))
            if s["foreign"] > args.foreign_limit:
                mark += " *"
            add("| %s | %s | %.0f%s | %s | %s | %s | %s | %s | %.0f%% |" % (
                label, c, s["rps"], mark, fmt_ms(s["p50"]), fmt_ms(s["p99"]),
                fmt_r(paired_ratio(results[(c, sc)], ceil_runs)),
                fmt_r(paired_ratio(results[(c, sc)], hap_runs)),
                "%.1f" % s["cpu_us"] if s["cpu_us"] else "-", 100 * s["spread"]))
    add("")
    add("req/s, p50, p99: medians over the rounds. x ceiling, x HAProxy: median over the rounds "
        "of req/s divided by direct's (HAProxy's) req/s in the same round. CPU us/req: CPU time "
        "of the contender's process (the backend's for direct) per request. spread: (max - min) "
        "/ median req/s over the rounds.")
    if not scenarios:
        lines[:] = []
    elif any("*" in m for m in lines if m.startswith("|")):
        add("* other processes used more than %.0f%% of a core during at least one round: "
            "numbers less trustworthy." % (100 * args.foreign_limit))
    if memory:
        add("")
        add("## Idle keep-alive connections (%d clients, one request each)" % args.idle_conns)
        add("")
        add("| contender | RSS before | RSS after | per connection | x nginx |")
        add("| --- | ---: | ---: | ---: | ---: |")
        ng = memory.get("nginx", {}).get("per_conn_kib")
        for c, m in memory.items():
            if "per_conn_kib" not in m:
                add("| %s | failed | | | |" % c)
                notes.append("%s, idle memory: %s" % (c, m.get("error")))
                continue
            flag = " (!)" if "error" in m else ""
            if flag:
                notes.append("%s, idle memory: %s" % (c, m["error"]))
            add("| %s | %.1f MiB | %.1f MiB | %.2f KiB%s | %s |" % (
                c, m["before_kib"] / 1024, m["after_kib"] / 1024, m["per_conn_kib"], flag,
                fmt_ratio(m["per_conn_kib"], ng)))
    if failover:
        lines += report_failover(args, failover, notes)
    if elasticity:
        lines += report_elasticity(args, elasticity, notes)
    if ratelimit:
        lines += report_ratelimit(args, ratelimit, notes)
    if cache:
        lines += report_cache(args, cache, notes)
    if metrics:
        lines += report_metrics(args, metrics, notes)
    if notes:
        add("")
        add("Problems:")
        for n in notes:
            add("- " + n)
    add("")
    add("Run: %s" % meta)
    while lines and not lines[0]:
        lines.pop(0)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


def version_of(argv):
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=5)
        return r.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(want, soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, target), max(want, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        log("RLIMIT_NOFILE is %d (hard limit %d; %d wanted): enough for %d idle clients, "
            "not more" % (soft, hard, want, soft // 2 - 100))
    return soft


def default_cpus():
    n = len(os.sched_getaffinity(0))
    cpus = sorted(os.sched_getaffinity(0))
    if n < 2:
        return None, None
    return str(cpus[0]), str(cpus[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scalegate", default="build/release/scalegate")
    ap.add_argument("--backend", default="build/release/demo-backend")
    ap.add_argument("--nginx", default=NGINX)
    ap.add_argument("--haproxy", default=HAPROXY)
    ap.add_argument("--varnishd", default=VARNISHD)
    ap.add_argument("--varnish-params", default=",".join(VARNISH_PARAMS),
                    help="varnishd -p settings, comma-separated (default: %(default)s)")
    ap.add_argument("--only", default=",".join(ALL + ["varnish"]),
                    help="contenders, comma-separated (default: %(default)s; varnish runs in "
                         "the cache part only)")
    ap.add_argument("--duration", type=int, default=6, help="seconds per wrk run")
    ap.add_argument("--warmup", type=int, default=1, help="seconds of wrk before each run")
    ap.add_argument("--repeats", type=int, default=3, help="rounds; medians are reported")
    ap.add_argument("--connections", default="64,1000")
    ap.add_argument("--sizes", default="small,16k")
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--pin", default="auto",
                    help="WRK:PROXY[:BACKEND] CPU lists for taskset; auto = first CPU for wrk, "
                         "second for the proxy and the backends; none = no pinning")
    ap.add_argument("--idle-conns", type=int, default=10000)
    ap.add_argument("--idle-batch", type=int, default=100,
                    help="connections opened and answered at a time in the memory test")
    ap.add_argument("--no-memory", action="store_true", help="skip the idle-memory test")
    ap.add_argument("--no-throughput", action="store_true", help="only the idle-memory test")
    ap.add_argument("--no-failover", action="store_true", help="skip the failover scenario")
    ap.add_argument("--only-failover", action="store_true",
                    help="only the failover scenario (no throughput, no memory test)")
    ap.add_argument("--failover-repeats", type=int, default=2,
                    help="failover runs per proxy; each is reported, and the medians")
    ap.add_argument("--failover-duration", type=int, default=10,
                    help="seconds of wrk in a failover run")
    ap.add_argument("--failover-kill-at", type=float, default=5.0,
                    help="seconds after wrk starts when one backend gets SIGKILL")
    ap.add_argument("--failover-conns", type=int, default=64,
                    help="wrk connections in a failover run")
    ap.add_argument("--failover-control", action="store_true",
                    help="also run each failover run once without the kill, for comparison")
    ap.add_argument("--no-elasticity", action="store_true",
                    help="skip the elasticity scenario")
    ap.add_argument("--only-elasticity", action="store_true",
                    help="only the elasticity scenario (autoscaling under a 10x load step)")
    ap.add_argument("--elasticity-repeats", type=int, default=2,
                    help="elasticity runs, each with a fresh gateway; each is reported")
    ap.add_argument("--elasticity-conns", default="2,20",
                    help="wrk connections before and after the step (default: %(default)s)")
    ap.add_argument("--elasticity-base", type=int, default=8,
                    help="seconds of base load before the step")
    ap.add_argument("--elasticity-step", type=int, default=25,
                    help="seconds of load after the step")
    ap.add_argument("--elasticity-target-ms", type=float, default=50,
                    help="the pool's p95 target (targets.p95_ms)")
    ap.add_argument("--elasticity-delay-ms", type=int, default=20,
                    help="each instance's time per request (demo-backend --serial --delay)")
    ap.add_argument("--elasticity-max", type=int, default=12, help="the pool's scale.max")
    ap.add_argument("--elasticity-hold", type=float, default=2.0,
                    help="seconds p95 must stay under the target to count as back under it")
    ap.add_argument("--elasticity-poll", type=float, default=0.25,
                    help="seconds between polls of the admin API")
    ap.add_argument("--no-ratelimit", action="store_true",
                    help="skip the rate-limiting part")
    ap.add_argument("--only-ratelimit", action="store_true",
                    help="only the rate-limiting part (scalegate with and without a rule)")
    ap.add_argument("--rl-repeats", type=int, default=4,
                    help="rate-limiting rounds (each runs every case once, each between two "
                         "runs of case a); medians reported")
    ap.add_argument("--rl-duration", type=int, default=2,
                    help="seconds per measured rate-limiting run")
    ap.add_argument("--rl-prime-max", type=int, default=30,
                    help="at most this many seconds of load on each rate-limiting gateway "
                         "before the rounds (as long as every id takes)")
    ap.add_argument("--rl-conns", type=int, default=64,
                    help="wrk connections in the rate-limiting part")
    ap.add_argument("--rl-ids", type=int, default=100000,
                    help="distinct X-Device-ID values (keys) in the rate-limiting rounds")
    ap.add_argument("--rl-table-keys", type=int, default=1000000,
                    help="limits.rate_limit_keys of the rate-limiting rounds' gateways")
    ap.add_argument("--rl-case-c", action=argparse.BooleanOptionalAction,
                    default=True, help="also run case (c), rate_limit_headers: false")
    ap.add_argument("--rl-shared", action=argparse.BooleanOptionalAction, default=True,
                    help="also run case (d), shared mode, with a redis-server of its own")
    ap.add_argument("--redis-server", default="redis-server",
                    help="the redis-server binary for case (d)")
    ap.add_argument("--perf", default="perf",
                    help="perf, to count the gateway's instructions per request")
    ap.add_argument("--no-perf", action="store_true",
                    help="do not count instructions with perf")
    ap.add_argument("--rl-mem-keys", default="100000,1000000",
                    help="table sizes (= keys filled) of the memory-per-key rows, comma-"
                         "separated; empty for none")
    ap.add_argument("--rl-mem-rules", type=int, default=10,
                    help="rules per route in the memory fill (keys per request)")
    ap.add_argument("--no-cache", action="store_true", help="skip the cache-hit part")
    ap.add_argument("--only-cache", action="store_true",
                    help="only the cache-hit part (every contender serving one URL from its "
                         "cache; varnish too)")
    ap.add_argument("--no-metrics", action="store_true", help="skip the metrics part")
    ap.add_argument("--only-metrics", action="store_true",
                    help="only the metrics part (scrape time; the request path while scraped)")
    ap.add_argument("--metrics-scrapes", type=int, default=200,
                    help="timed sequential scrapes of GET /metrics")
    ap.add_argument("--metrics-repeats", type=int, default=3,
                    help="rounds of the runs without (a) and with (b) a scraper")
    ap.add_argument("--metrics-interval-ms", type=float, default=100,
                    help="the scraper's interval in (b)")
    ap.add_argument("--upstream-keepalive", type=int, default=1024,
                    help="idle upstream connections nginx and scalegate may keep per server")
    ap.add_argument("--forward-headers", action="store_true",
                    help="make nginx and HAProxy add X-Forwarded-For/-Proto and X-Request-ID "
                         "as scalegate does (default: they add nothing)")
    ap.add_argument("--foreign-limit", type=float, default=0.10,
                    help="flag rounds where other processes used more than this many cores")
    ap.add_argument("--quiet-wait", type=float, default=20,
                    help="seconds to wait before a run for other load to stop (0: never)")
    ap.add_argument("--nice", type=int, default=-20,
                    help="niceness for wrk, proxies and backends, so that other work on a "
                         "shared machine disturbs less (0: leave it)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir of configs and logs")
    ap.add_argument("--out", default="build/bench/results.md")
    args = ap.parse_args()
    if sum((args.only_failover, args.only_elasticity, args.only_ratelimit,
            args.only_cache, args.only_metrics)) > 1:
        ap.error("--only-failover, --only-elasticity, --only-ratelimit, --only-cache and "
                 "--only-metrics exclude each other")
    if args.only_failover:
        if args.no_failover:
            ap.error("--only-failover and --no-failover exclude each other")
        args.no_throughput = args.no_memory = args.no_elasticity = args.no_ratelimit = True
        args.no_cache = args.no_metrics = True
    if args.only_elasticity:
        if args.no_elasticity:
            ap.error("--only-elasticity and --no-elasticity exclude each other")
        args.no_throughput = args.no_memory = args.no_failover = args.no_ratelimit = True
        args.no_cache = args.no_metrics = True
    if args.only_ratelimit:
        if args.no_ratelimit:
            ap.error("--only-ratelimit and --no-ratelimit exclude each other")
        args.no_throughput = args.no_memory = args.no_failover = args.no_elasticity = True
        args.no_cache = args.no_metrics = True
    if args.only_cache:
        if args.no_cache:
            ap.error("--only-cache and --no-cache exclude each other")
        args.no_throughput = args.no_memory = args.no_failover = args.no_elasticity = True
        args.no_ratelimit = args.no_metrics = True
    if args.only_metrics:
        if args.no_metrics:
            ap.error("--only-metrics and --no-metrics exclude each other")
        args.no_throughput = args.no_memory = args.no_failover = args.no_elasticity = True
        args.no_ratelimit = args.no_cache = True
    if args.metrics_scrapes < 1 or args.metrics_repeats < 1 or args.metrics_interval_ms <= 0:
        ap.error("--metrics-scrapes, --metrics-repeats and --metrics-interval-ms must be "
                 "positive")
    try:
        args.rl_mem_keys = [int(x) for x in args.rl_mem_keys.split(",") if x.strip()]
    except ValueError:
        ap.error("--rl-mem-keys: table sizes, comma-separated")
    if any(not 1024 <= n <= 100000000 for n in args.rl_mem_keys + [args.rl_table_keys]):
        ap.error("--rl-mem-keys, --rl-table-keys: from 1024 to 100000000 (limits."
                 "rate_limit_keys)")
    if args.rl_ids < 1 or args.rl_mem_rules < 1 or args.rl_repeats < 1:
        ap.error("--rl-ids, --rl-mem-rules and --rl-repeats must be at least 1")
    try:
        args.elasticity_conns = [int(x) for x in args.elasticity_conns.split(",")]
    except ValueError:
        args.elasticity_conns = []
    if len(args.elasticity_conns) != 2 or not 0 < args.elasticity_conns[0] < \
            args.elasticity_conns[1]:
        ap.error("--elasticity-conns: BEFORE,AFTER with 0 < BEFORE < AFTER")
    needed, _ = elasticity_needed(args)
    if needed is None:
        ap.error("--elasticity-target-ms must be above --elasticity-delay-ms (a request "
                 "takes that long on an idle instance)")
    if needed > args.elasticity_max:
        ap.error("--elasticity-*: the step needs %d instances at a p95 under %g ms, more than "
                 "--elasticity-max %d" % (needed, args.elasticity_target_ms, args.elasticity_max))
    if not 0 < args.failover_kill_at < args.failover_duration:
        ap.error("--failover-kill-at must fall within --failover-duration")

    args.only = [c.strip() for c in args.only.split(",") if c.strip()]
    bad = [c for c in args.only if c not in CACHE_ALL]
    if bad:
        ap.error("unknown contender(s) %s; known: %s" % (",".join(bad), ",".join(CACHE_ALL)))
    # varnish is a contender of the cache part only: every other part runs args.only
    args.cache_only = [c for c in CACHE_ALL if c in args.only]
    args.only = [c for c in ALL if c in args.only]
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if any(s not in SIZES for s in sizes):
        ap.error("--sizes: small and/or 16k")
    conns = [int(c) for c in args.connections.split(",") if c.strip()]
    scenarios = [(s, c) for s in sizes for c in conns]
    if args.pin == "auto":
        args.wrk_cpus, args.proxy_cpus = default_cpus()
        args.backend_cpus = args.proxy_cpus
    elif args.pin == "none":
        args.wrk_cpus = args.proxy_cpus = args.backend_cpus = None
    else:
        parts = [x or None for x in args.pin.split(":")]
        if len(parts) == 2:
            parts.append(parts[1])
        if len(parts) != 3:
            ap.error("--pin: WRK:PROXY[:BACKEND] CPU lists, auto or none")
        args.wrk_cpus, args.proxy_cpus, args.backend_cpus = parts
    if not os.access(args.backend, os.X_OK):
        sys.exit("bench: demo backend not found: %s (make all)" % args.backend)

    if args.nice:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # children inherit it
        except OSError as e:
            log("cannot renice to %d (%s): other work on the machine will disturb more" % (
                args.nice, e.strerror))
    nofile = raise_nofile(30000)
    args.nofile = nofile
    args.max_conns = min(max(args.idle_conns + 1000, 2000), nofile - 200)
    if args.idle_conns > nofile - 300:
        args.idle_conns = nofile - 300
        log("idle-memory test lowered to %d connections (file descriptor limit)" %
            args.idle_conns)

    fo_contenders = [] if args.no_failover else [c for c in args.only if c in PROXIES]
    fo_runs = len(fo_contenders) * args.failover_repeats * (2 if args.failover_control else 1)
    el_runs = 0 if args.no_elasticity or "scalegate" not in args.only else \
        args.elasticity_repeats
    rl_on = not args.no_ratelimit and "scalegate" in args.only
    rl_cases = 2 + args.rl_case_c + args.rl_shared
    rl_runs = (2 * (rl_cases - 1) * args.rl_repeats + 1) if rl_on else 0
    cache_on = not args.no_cache and any(c != "direct" for c in args.cache_only)
    cache_runs = len(scenarios) * len(args.cache_only) * args.repeats if cache_on else 0
    metrics_on = not args.no_metrics and "scalegate" in args.only
    metrics_runs = 2 * args.metrics_repeats if metrics_on else 0
    runs = 0 if args.no_throughput else len(scenarios) * len(args.only) * args.repeats
    est = runs * (args.duration + args.warmup + 1) + fo_runs * (
        args.failover_duration + args.warmup + 3) + el_runs * (
        args.elasticity_base + args.elasticity_step + 4) + (rl_runs * (
            args.rl_duration + 1) + rl_cases * 8 +
        12 * len(args.rl_mem_keys) if rl_on else 0) + cache_runs * (
        args.duration + args.warmup + 1) + (metrics_runs * (args.duration + args.warmup + 1) +
                                            METRICS_FILL_S + 5 if metrics_on else 0)
    log("%d throughput runs (%d contenders x %d scenarios x %d rounds)%s%s%s%s%s%s, about %d "
        "min; %s" % (runs, len(args.only), len(scenarios), args.repeats,
                     "" if args.no_memory else ", the memory test",
                     ", %d failover runs" % fo_runs if fo_runs else "",
                     ", %d elasticity runs" % el_runs if el_runs else "",
                     ", %d rate-limiting runs and %d memory fills" % (
                         rl_runs, len(args.rl_mem_keys)) if rl_on else "",
                     ", %d cache-hit runs" % cache_runs if cache_runs else "",
                     ", %d scrapes and %d metrics runs" % (args.metrics_scrapes, metrics_runs)
                     if metrics_on else "",
                     (est + 59) // 60 + (0 if args.no_memory else 1), placement(args)))

    # SIGTERM (or SIGINT, even where it came ignored) ends the harness through its finally
    # blocks, which stop every process it started: they run in sessions of their own and
    # would otherwise outlive it.
    signal.signal(signal.SIGTERM, stop_signal)
    signal.signal(signal.SIGINT, stop_signal)
    quiet = Quiet(args.quiet_wait, 3 * args.quiet_wait + 60, args.foreign_limit)
    tmpdir = tempfile.mkdtemp(prefix="scalegate-bench-")
    backends = start_backends(args, tmpdir) if not (args.no_throughput and args.no_memory and
                                                    not rl_on and not cache_on and
                                                    not metrics_on) else {}
    contenders, failures = {}, {}
    results, memory, failover, elasticity, ratelimit, cache = {}, {}, {}, {}, {}, {}
    metrics = {}
    try:
        if not args.no_throughput:
            for c in args.only:
                proc, port, err = start_contender(c, args, backends, tmpdir, "tp")
                if err:
                    failures[c] = "failed to start: " + err
                    log("%s %s" % (c, failures[c]))
                else:
                    contenders[c] = (proc, port)
            live = [c for c in args.only if c in contenders]
            for rnd in range(args.repeats):
                order = live[rnd % len(live):] + live[:rnd % len(live)] if live else []
                for sc in scenarios:
                    size, nconn = sc
                    for c in order:
                        proc, port = contenders[c]
                        bproc, bport = backends[size]
                        if proc is not None and not proc.alive():
                            results.setdefault((c, sc), []).append(
                                {"error": "process died: " + proc.stderr_tail()})
                            continue
                        target = bport if c == "direct" else port
                        path = SIZES[size][0]
                        watched = ([proc] if proc else []) + [bproc]
                        quiet.wait(([proc] if proc else []) + [p for p, _ in backends.values()])
                        try:
                            if args.warmup:
                                run_wrk(args, target, path, nconn, args.warmup, watched)
                            r = run_wrk(args, target, path, nconn, args.duration, watched)
                            want = SIZES[size][1] or 1
                            if r.get("bytes_per_req", want) < want:
                                r["error"] = "responses too short (%.0f bytes each)" % (
                                    r["bytes_per_req"])
                        except (RuntimeError, subprocess.SubprocessError, OSError) as e:
                            r = {"error": str(e)}
                        results.setdefault((c, sc), []).append(r)
                        log("round %d/%d %-7s %4d conns %-9s %s" % (
                            rnd + 1, args.repeats, size, nconn, c,
                            r.get("error") or "%8.0f req/s  p50 %s  p99 %s  %s us/req%s" % (
                                r["rps"], fmt_ms(r["p50"]), fmt_ms(r["p99"]),
                                "%.1f" % r["cpu_us_per_req"] if "cpu_us_per_req" in r
                                else "-", "  (other load %.2f cores)" % r["foreign"]
                                if r["foreign"] > args.foreign_limit else "")))
            for c, (proc, _) in contenders.items():
                if proc:
                    proc.stop()
            contenders = {}
        if not args.no_memory:
            for c in [c for c in args.only if c in PROXIES]:
                log("idle memory: %s, %d connections" % (c, args.idle_conns))
                memory[c] = memory_test(args, c, backends, tmpdir, "mem")
                log("idle memory: %s: %s" % (c, memory[c].get("error") or
                                               "%.2f KiB per connection" %
                                               memory[c]["per_conn_kib"]))
        for rnd in range(args.failover_repeats if fo_contenders else 0):
            k = rnd % len(fo_contenders)
            for c in fo_contenders[k:] + fo_contenders[:k]:
                for kill in (True, False) if args.failover_control else (True,):
                    r = failover_run(args, c, tmpdir, "fo%d%s" % (rnd + 1, "" if kill else "c"),
                                     quiet, kill)
                    failover.setdefault(c, {"runs": [], "control": []})[
                        "runs" if kill else "control"].append(r)
                    log("failover %d/%d %-9s %s%s" % (
                        rnd + 1, args.failover_repeats, c, "" if kill else "(no kill) ",
                        r["error"] if "rps" not in r else
                        "%8.0f req/s  errors %s  p99 %s  max %s  marked down %s%s%s" % (
                            r["rps"], fmt_errors(r), fmt_ms(r["p99"]), fmt_ms(r["max"]),
                            fmt_after(r["log"]["down_after"]),
                            "  (other load %.2f cores)" % r["foreign"]
                            if r["foreign"] > args.foreign_limit else "",
                            "  " + r["error"] if "error" in r else "")))
                    if "stop_problem" in r:
                        log("failover %s: %s" % (c, r["stop_problem"]))
        for rnd in range(el_runs):
            r = elasticity_run(args, tmpdir, "el%d" % (rnd + 1), quiet)
            elasticity.setdefault("scalegate", []).append(r)
            log("elasticity %d/%d scalegate %s%s" % (
                rnd + 1, el_runs, r["error"] if "needed" not in r else
                "needed %d: decided %s, reached %s, p95 under %g ms %s, peak %s, failed %d%s" % (
                    r["needed"], fmt_t(r["decided"]), fmt_t(r["reached"]),
                    args.elasticity_target_ms, fmt_t(r["p95_under"]), r["peak"], r["failed"],
                    "  (other load %.2f cores)" % r["foreign"]
                    if r["foreign"] > args.foreign_limit else ""),
                "  " + r["stop_problem"] if "stop_problem" in r else ""))
        if rl_on:
            log("rate limiting: cases %s, %d rounds of %d s, %d ids; then memory fills of %s "
                "keys" % ("a,b" + ",c" * args.rl_case_c + ",d" * args.rl_shared,
                          args.rl_repeats, args.rl_duration, args.rl_ids,
                          ", ".join(str(n) for n in args.rl_mem_keys) or "no"))
            ratelimit = ratelimit_run(args, backends, tmpdir, quiet)
        if cache_on:
            log("cache hits: %s, %d rounds" % (", ".join(args.cache_only), args.repeats))
            cache = cache_run(args, backends, tmpdir, quiet, scenarios)
        if metrics_on:
            log("metrics: %d routes, %d servers; %d scrapes, then %d rounds without and with a "
                "scraper every %g ms" % (METRICS_ROUTES, METRICS_POOLS * METRICS_PER_POOL,
                                         args.metrics_scrapes, args.metrics_repeats,
                                         args.metrics_interval_ms))
            metrics = metrics_run(args, backends, tmpdir, quiet)
    finally:
        for c, (proc, _) in contenders.items():
            if proc:
                proc.stop()
        for proc, _ in backends.values():
            proc.stop()

    meta = "%s; %d CPUs (%s); %s; %s; %s; %s%s" % (
        time.strftime("%Y-%m-%d %H:%M"), os.cpu_count(), cpu_model(), placement(args),
        version_of([args.nginx, "-v"]),
        version_of([args.haproxy, "-v"]), version_of(["wrk", "-v"]),
        "; " + version_of([args.varnishd, "-V"]) if cache_on else "")
    text = report(args, scenarios, results, failures, memory, meta, failover, elasticity,
                  ratelimit, cache, metrics)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    raw = {"args": {k: v for k, v in vars(args).items()},
           "results": {"%s %s %d" % (c, s, n): v for (c, (s, n)), v in results.items()},
           "failures": failures, "memory": memory, "failover": failover,
           "elasticity": elasticity, "ratelimit": ratelimit,
           "cache": {k: ({"%s %s %d" % (c, s, n): v for (c, (s, n)), v in v.items()}
                         if k == "results" else v) for k, v in cache.items()},
           "metrics": metrics}
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(raw, f, indent=1)
    troubles = failures or any("error" in r for rs in results.values() for r in rs) or any(
        "error" in m for m in memory.values()) or any(
        "error" in r or "stop_problem" in r
        for f in failover.values() for rs in f.values() for r in rs) or any(
        "error" in r or "stop_problem" in r for rs in elasticity.values() for r in rs) or any(
        "error" in r for rs in ratelimit.get("cases", {}).values() for r in rs) or any(
        "error" in m for m in ratelimit.get("memory", [])) or bool(cache.get("failures")) or any(
        "error" in r for rs in cache.get("results", {}).values() for r in rs) or bool(
        cache.get("notes")) or "error" in metrics or "error" in metrics.get("scrape", {}) or any(
        "error" in r for rs in metrics.get("load", {}).values() for r in rs) or bool(
        metrics.get("notes"))
    if troubles or args.keep:
        log("wrote %s (and .json); configs and logs kept in %s" % (args.out, tmpdir))
    else:
        shutil.rmtree(tmpdir, ignore_errors=True)
        log("wrote %s (and .json)" % args.out)


def stop_signal(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the clean-up runs uninterrupted
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt("stopped by %s" % signal.Signals(signum).name)


def placement(args):
    return "wrk on CPU %s, proxy on CPU %s, backends on CPU %s" % (
        args.wrk_cpus or "any", args.proxy_cpus or "any", args.backend_cpus or "any")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as e:
        sys.exit("bench: %s; every process it started is stopped" % (e or "interrupted"))
