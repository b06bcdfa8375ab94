"""Fixtures for the scalegate integration tests.

- free_port(): a free loopback port.
- backend(name=..., delay_ms=...): starts tests/integration/backend.py (a
  Python HTTP/1.1 server we control) on its own port; returns a
  BackendProc with .port, .addr and .requests()/.heads()/.accepts() reading
  the JSON-lines log of what reached it. Also port=N (restart on a known
  port), status=N (answer everything with N), blackhole=True (never
  answer); .pid and .kill() (SIGKILL) for failover tests.
- gateway(pools=..., routes=..., limits=..., workers=2): writes a YAML
  config into tmp_path, starts $SCALEGATE_BIN -c it (stderr captured to a
  file), waits until the port accepts. On teardown: SIGTERM, wait (kill
  after 10 s) and fail the test if the exit status is not 0 or the log
  shows a sanitizer report.
- run_scalegate(args): runs the binary to completion (for -t, -v ...).
"""
import os
import pathlib
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import ports  # noqa: E402
import rawhttp  # noqa: E402

REPO = HERE.parent.parent
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error",
                     "ThreadSanitizer", "MemorySanitizer")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def scalegate_bin():
    b = os.environ.get("SCALEGATE_BIN") or str(REPO / "build" / "asan" / "scalegate")
    if not os.access(b, os.X_OK):
        pytest.fail("scalegate binary %s not found or not executable "
                    "(set SCALEGATE_BIN or run make build/asan/scalegate)" % b)
    return b


def sanitizer_env(extra=None):
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    if extra:
        for k, v in extra.items():
            if k in ("ASAN_OPTIONS", "UBSAN_OPTIONS") and env.get(k):
                env[k] = env[k] + ":" + v
            else:
                env[k] = v
    return env


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def port_range(n):
    """n consecutive free loopback ports, as (first, last): ports.port_range."""
    try:
        return ports.port_range(n)
    except RuntimeError as e:
        pytest.fail(str(e))


def wait_until(pred, timeout, interval=0.05):
    """Polls pred() until it returns a true value or timeout passes;
    returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


def tail(text, n=60):
    lines = text.splitlines()
    return "\n".join(lines[-n:])


# --------------------------------------------------------------------------
# Backends


class BackendProc:
    def __init__(self, tmp_path, name, delay_ms=0, idle_close_ms=0, port=0, status=0,
                 blackhole=False):
        self.name = name
        self.log_path = tmp_path / ("backend-%s.jsonl" % name)
        self.err_path = tmp_path / ("backend-%s.err" % name)
        self.log_path.write_text("")
        self.err = open(self.err_path, "w")
        args = [sys.executable, str(HERE / "backend.py"), "--name", name,
                "--log", str(self.log_path), "--delay-ms", str(delay_ms),
                "--idle-close-ms", str(idle_close_ms)]
        if port:
            args += ["--port", str(port)]
        if status:
            args += ["--status", str(status)]
        if blackhole:
            args.append("--blackhole")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.err)
        r, _, _ = select.select([self.proc.stdout], [], [], 10)
        line = self.proc.stdout.readline().decode() if r else ""
        if not line.startswith("PORT "):
            self.stop()
            pytest.fail("backend %s did not start: %r %s" % (name, line, self.err_path.read_text()))
        self.port = int(line.split()[1])
        self.addr = "127.0.0.1:%d" % self.port

    def records(self, event=None):
        import json
        out = []
        for ln in self.log_path.read_text().splitlines():
            if not ln.strip():
                continue
            try:
                rec = json.loads(ln)
            except ValueError:
                continue  # line being written
            if event is None or rec.get("event") == event:
                out.append(rec)
        return out

    def requests(self):
        return self.records("request")

    def heads(self):
        return self.records("head")

    def accepts(self):
        return self.records("accept")

    def closes(self):
        return self.records("closed")

    @property
    def pid(self):
        return self.proc.pid

    def kill(self):
        """SIGKILL (a crash: the kernel closes its sockets), then reap."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self.err.close()


@pytest.fixture
def backend(tmp_path):
    started = []

    def make(name=None, delay_ms=0, idle_close_ms=0, port=0, status=0, blackhole=False):
        name = name or "b%d" % (len(started) + 1)
        b = BackendProc(tmp_path, name, delay_ms, idle_close_ms, port, status, blackhole)
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


# --------------------------------------------------------------------------
# Gateway


def _server_addr(s):
    if isinstance(s, BackendProc):
        return s.addr
    if isinstance(s, int):
        return "127.0.0.1:%d" % s
    return str(s)


def _flow(v):
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join("%s: %s" % (k, _flow(x)) for k, x in v.items()) + " }"
    return _scalar(v)


def _scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, BackendProc):
        return v.addr
    return str(v)


def _server_item(s):
    """A server list entry: an address, or a map ({"address": BackendProc or
    port or "host:port", "weight": 3, ...})."""
    if isinstance(s, dict):
        return dict(s, address=_server_addr(s["address"]))
    return _server_addr(s)


def _yaml_lines(key, v, indent):
    """key: v as YAML lines at indent spaces. dict -> a block map (nested),
    list of scalars -> a flow list, list with maps -> a block list of flow
    maps; servers/backup entries are server items."""
    pad = " " * indent
    if key in ("servers", "backup"):
        items = v if isinstance(v, (list, tuple)) else [v]
        items = [_server_item(x) for x in items]
        v = items
    if isinstance(v, dict):
        out = ["%s%s:" % (pad, key)]
        for k, x in v.items():
            out += _yaml_lines(k, x, indent + 2)
        return out
    if isinstance(v, (list, tuple)) and any(isinstance(x, dict) for x in v):
        return ["%s%s:" % (pad, key)] + ["%s  - %s" % (pad, _flow(x)) for x in v]
    return ["%s%s: %s" % (pad, key, _flow(v))]


def render_config(port, pools, routes=None, limits=None, workers=2):
    """YAML text in the style of the spec. pools: {name: servers or
    {"servers": [...], option: value}} where a server is a BackendProc,
    a port number, "host:port" or a map {"address": one of those, "weight":
    N, ...}; an option's value may be a scalar, a list or a nested dict
    (health: {...}, outlier: {...}, backup: [...]). routes: [{"match": {...},
    "pool": name, other_key: value}]; default: everything ("path_prefix: /")
    to the first pool."""
    out = ["listen: 127.0.0.1:%d" % port, "workers: %s" % workers]
    if limits:
        out.append("limits:")
        for k, v in limits.items():
            out.append("  %s: %s" % (k, v))
    out.append("pools:")
    for name, p in pools.items():
        if not isinstance(p, dict):
            p = {"servers": p}
        servers = p["servers"]
        if not isinstance(servers, (list, tuple)):
            servers = [servers]
        out.append("  %s:" % name)
        out += _yaml_lines("servers", list(servers), 4)
        for k, v in p.items():
            if k != "servers":
                out += _yaml_lines(k, v, 4)
    if routes is None:
        routes = [{"match": {"path_prefix": "/"}, "pool": next(iter(pools))}]
    out.append("routes:")
    for r in routes:
        m = r.get("match") or {}
        out.append("  - match: { %s }" % ", ".join("%s: %s" % (k, _flow(v)) for k, v in m.items()))
        out.append("    pool: %s" % r["pool"])
        for k, v in r.items():
            if k not in ("match", "pool"):
                out += _yaml_lines(k, v, 4)
    return "\n".join(out) + "\n"


class Gateway:
    def __init__(self, binpath, tmp_path, idx, env=None):
        self.bin = binpath
        self.config_path = tmp_path / ("gateway%d.yaml" % idx)
        self.log_path = tmp_path / ("gateway%d.log" % idx)
        self.env = sanitizer_env(env)
        self.proc = None
        self.port = None
        self.killed = False
        self.expect_killed = False  # a test killed it on purpose (SIGKILL)
        self.rc = None

    def write_config(self, text):
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    def start(self, text, port):
        self.port = port
        self.write_config(text)
        self.logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen([self.bin, "-c", str(self.config_path)],
                                     stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                self.rc = self.proc.returncode
                pytest.fail("scalegate exited during start-up with %s; config:\n%s\nlog:\n%s"
                            % (self.proc.returncode, text, tail(self.log())))
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                pass
            if time.monotonic() >= deadline:
                pytest.fail("scalegate did not accept on 127.0.0.1:%d within %ss; config:\n%s\n"
                            "log:\n%s" % (port, START_TIMEOUT, text, tail(self.log())))
            time.sleep(0.05)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def log(self):
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def running(self):
        return self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def reload(self, text):
        self.write_config(text)
        self.signal(signal.SIGHUP)

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM, wait up to timeout, then SIGKILL. Returns the exit
        status (negative: killed by that signal)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.proc.kill()
                self.proc.wait()
        self.rc = self.proc.returncode
        return self.rc

    def rss_kb(self):
        """VmRSS of the process (all its threads) plus any child processes."""
        total = 0
        pids = [self.pid]
        seen = set()
        while pids:
            p = pids.pop()
            if p in seen:
                continue
            seen.add(p)
            try:
                with open("/proc/%d/status" % p) as f:
                    for ln in f:
                        if ln.startswith("VmRSS:"):
                            total += int(ln.split()[1])
                for t in os.listdir("/proc/%d/task" % p):
                    with open("/proc/%d/task/%s/children" % (p, t)) as f:
                        pids += [int(x) for x in f.read().split()]
            except (FileNotFoundError, ProcessLookupError):
                pass
        return total

    def problems(self):
        out = []
        if self.killed:
            out.append("did not exit within %ss of SIGTERM (killed)" % STOP_TIMEOUT)
        elif self.rc != 0 and not self.expect_killed:
            out.append("exit status %s (expected 0)" % self.rc)
        text = self.log()
        for m in SANITIZER_MARKERS:
            if m in text:
                out.append("log contains %r" % m)
        return out


@pytest.fixture
def gateway(tmp_path):
    binpath = scalegate_bin()
    started = []

    def make(pools=None, routes=None, limits=None, workers=2, env=None, config=None,
             port=None):
        """config: full YAML text, "@PORT@" replaced by the listen port;
        otherwise built from pools/routes/limits/workers."""
        port = port or free_port()
        if config is not None:
            text = config.replace("@PORT@", str(port))
        else:
            text = render_config(port, pools, routes, limits, workers)
        g = Gateway(binpath, tmp_path, len(started) + 1, env)
        g.render = lambda **kw: render_config(port, **kw)
        started.append(g)
        g.start(text, port)
        return g

    yield make
    errors = []
    for g in started:
        if g.proc is None:
            continue
        g.stop()
        g.logf.close()
        p = g.problems()
        if p:
            errors.append("gateway %s: %s\n--- log (tail) ---\n%s"
                          % (g.config_path.name, "; ".join(p), tail(g.log(), 80)))
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)


@pytest.fixture
def run_scalegate():
    binpath = scalegate_bin()

    def run(args, timeout=20):
        return subprocess.run([binpath] + list(args), capture_output=True, text=True,
                              timeout=timeout, env=sanitizer_env(), stdin=subprocess.DEVNULL)
    return run


@pytest.fixture
def conns(gateway):
    """Factory for rawhttp.Conn objects closed at the end of the test."""
    made = []

    def make(port, **kw):
        c = rawhttp.Conn(port, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
