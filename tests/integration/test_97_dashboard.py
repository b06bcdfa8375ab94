"""The live dashboard at the admin listener's "/" (docs/admin-api.md#dashboard):
the page is public and self-contained; in a real headless Chromium, driven
over the DevTools protocol (cdp.py, standard library only) in real time, with
the token in the URL fragment, it polls the admin API and shows live numbers
that track the traffic the test sends and move from one reading to the next;
with a wrong token it shows the token form with a 401 message. Saves a
screenshot to build/test-artifacts/dashboard.png."""
import base64
import http.client
import json
import os
import re
import threading
import time

import pytest

import cdp
from conftest import REPO, free_port, wait_until
from test_70_scale import port_range
from test_96_metrics import gateway_config
from test_90_cache import TOKEN

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "build" / "test-artifacts"
TRAFFIC_MAX_S = 45  # the traffic thread never runs longer
LIVE_IDS = ["rps", "p50", "p95", "p99", "errors", "cache-hit-ratio", "ratelimit-rps",
            "requests-total"]
READING_GAP_S = 4  # between the two readings of the live page (the page polls every 2 s)


# One reading of the live page, taken inside Chromium: texts by id, whether
# the form and the dashboard are hidden, and the server rows.
SNAPSHOT_JS = """(() => {
  const t = (id) => { const e = document.getElementById(id); return e ? e.textContent : null; };
  const text = {};
  for (const id of %s) text[id] = t(id);
  return {
    text: text,
    form_hidden: document.getElementById('token-form').hidden,
    dash_hidden: document.getElementById('dash').hidden,
    rows: Array.from(document.querySelectorAll('tr.server-row')).map((r) => ({
      pool: r.dataset.pool, server: r.dataset.server,
      cells: Array.from(r.cells).map((c) => c.textContent) })),
  };
})()""" % json.dumps(LIVE_IDS + ["updated", "status", "token-msg", "scaling", "history"])


def need_chromium():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail("chromium not found at %s: run scripts/deps.sh test (package chromium)"
                    % CHROMIUM)


def snapshot(page):
    return page.evaluate(SNAPSHOT_JS)


def open_page(browser, url):
    """A fresh tab (its own sessionStorage) loaded with url."""
    page = browser.new_page()
    page.call("Page.enable")
    r = page.call("Page.navigate", {"url": url}, timeout=15)
    assert not r.get("errorText"), r
    page.wait_event("Page.loadEventFired", timeout=15)
    return page


def wait_page(page, pred, timeout, what):
    """Polls snapshots (real time) until pred(snapshot) holds; returns it."""
    deadline = time.monotonic() + timeout
    s = None
    while True:
        try:
            s = snapshot(page)
        except cdp.CDPError as e:  # e.g. between two documents
            s = {"error": str(e)}
        if "error" not in s and pred(s):
            return s
        assert time.monotonic() < deadline, "timed out waiting for %s: %r" % (what, s)
        time.sleep(0.2)


def number(s):
    m = re.match(r"^\s*(-?[0-9.]+)", s or "")
    return float(m.group(1)) if m else None


class Traffic(threading.Thread):
    """Keep-alive requests to the gateway, about `rate`/s, until stop() or
    TRAFFIC_MAX_S; .sent_rate(t0, t1) is the rate it really achieved."""

    def __init__(self, port, rate=300):
        super().__init__(daemon=True)
        self.port, self.rate = port, rate
        self.done = threading.Event()
        self.count = 0
        self.times = []  # monotonic time of each completed request
        self.errors = []

    def run(self):
        paths = ["/api/a", "/api/b", "/web/x", "/limited", "/scaled/y"]
        end = time.monotonic() + TRAFFIC_MAX_S
        c = None
        i = 0
        while not self.done.is_set() and time.monotonic() < end:
            t0 = time.monotonic()
            try:
                if c is None:
                    c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", paths[i % len(paths)])
                r = c.getresponse()
                r.read()
                self.times.append(time.monotonic())
                self.count += 1
            except (OSError, http.client.HTTPException) as e:
                self.errors.append(repr(e))
                if c:
                    c.close()
                c = None
                if len(self.errors) > 50:
                    return
            i += 1
            pause = 1.0 / self.rate - (time.monotonic() - t0)
            if pause > 0:
                time.sleep(pause)
        if c:
            c.close()

    def sent_rate(self, t0, t1):
        times = list(self.times)
        t0 = max(t0, times[0]) if times else t0
        return sum(1 for t in times if t0 <= t <= t1) / max(t1 - t0, 0.1)

    def stop(self):
        self.done.set()
        self.join(10)


def get(port, path, token=None, method="GET"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, path, headers={"Authorization": "Bearer " + token} if token else {})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, r.getheader("Content-Type"), body


def check_reading(s, b):
    t = s["text"]
    assert s["form_hidden"] and not s["dash_hidden"], t["token-msg"]
    assert t["status"].strip() == "", t["status"]
    assert re.search(r"\d", t["updated"]), t["updated"]
    assert number(t["rps"]) and number(t["rps"]) > 0, t["rps"]
    assert number(t["p95"]) is not None, t["p95"]
    assert number(t["p50"]) <= number(t["p95"]) <= number(t["p99"]), t
    assert number(t["ratelimit-rps"]) is not None, t["ratelimit-rps"]
    assert number(t["errors"]) == 0, t["errors"]
    assert t["cache-hit-ratio"].endswith("%"), t["cache-hit-ratio"]
    rows = [r for r in s["rows"] if r["pool"] == "app" and r["server"] == b.addr]
    assert rows, s["rows"]
    assert "up" in rows[0]["cells"], rows[0]
    assert any(r["pool"] == "scaled" for r in s["rows"]), s["rows"]
    assert "scaled" in t["scaling"], t["scaling"]
    assert "instance_ready" in t["history"] or "config" in t["history"], t["history"]


def test_dashboard(gateway, backend, tmp_path):
    need_chromium()
    b = backend()
    ap = free_port()
    lo, hi = port_range(4)
    cfg = gateway_config(ap, b, lo, hi, api_ttl="1s", limit="{ rate: 10/s, burst: 5 }")
    g = gateway(config=cfg, env={"SG_TEST_TOKEN": TOKEN})

    # The page: public, HTML, self-contained; other paths are still 404/401.
    status, ctype, page = get(ap, "/")
    assert status == 200 and ctype == "text/html; charset=utf-8", (status, ctype)
    text = page.decode()
    assert "<canvas" in text and 'id="rps"' not in text and "id='rps'" in text
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", text), "external resource in page"
    assert "innerHTML" not in text
    assert get(ap, "/", method="HEAD")[0] == 200
    assert get(ap, "/", method="DELETE")[0] == 401  # only GET and HEAD are public
    assert get(ap, "/", token=TOKEN, method="POST")[0] == 405
    assert get(ap, "/nope")[0] == 401
    assert get(ap, "/nope", token=TOKEN)[0] == 404
    assert get(ap, "/metrics")[0] == 401
    # wait for the scaled pool's first instance, so the page has an autoscaler row
    assert wait_until(lambda: get(g.port, "/scaled/x")[0] == 200, 20)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    if shot.exists():
        shot.unlink()
    base = "http://127.0.0.1:%d/" % ap
    with cdp.Browser(CHROMIUM, tmp_path / "chromium-profile",
                     ["--window-size=1280,900", "--hide-scrollbars"],
                     log_path=tmp_path / "chromium.log") as browser:
        traffic = Traffic(g.port)
        traffic.start()
        try:
            assert wait_until(lambda: traffic.count > 50, 10), traffic.errors[:5]
            p = open_page(browser, base + "#token=" + TOKEN)
            # the first rates need two polls (2 s apart)
            s1 = wait_page(p, lambda s: number(s["text"]["rps"]) is not None
                           and number(s["text"]["p95"]) is not None, 15, "live numbers")
            t1 = time.monotonic()
            time.sleep(READING_GAP_S)
            s2 = snapshot(p)
            t2 = time.monotonic()
            data = p.call("Page.captureScreenshot", {"format": "png"}, timeout=15)["data"]
            shot.write_bytes(base64.b64decode(data))
        finally:
            traffic.stop()
        assert traffic.count > 100 and not traffic.errors, (traffic.count, traffic.errors[:5])

        for s, t in ((s1, t1), (s2, t2)):
            check_reading(s, b)
            # The page's rate covers its last 2 s poll interval, which ended
            # at most 2 s before the reading: compare with what was sent in
            # the 4 s before it.
            sent = traffic.sent_rate(t - 4, t)
            shown = number(s["text"]["rps"])
            print("reading: page rps %s (sent %.1f/s), p50/p95/p99 %s/%s/%s ms, updated %s"
                  % (shown, sent, s["text"]["p50"], s["text"]["p95"], s["text"]["p99"],
                     s["text"]["updated"]))
            assert 0.3 * sent <= shown <= 3 * sent, (shown, sent)
        assert any(s1["text"][i] != s2["text"][i] for i in LIVE_IDS), \
            {i: (s1["text"][i], s2["text"][i]) for i in LIVE_IDS}
        assert number(s2["text"]["requests-total"]) > number(s1["text"]["requests-total"])
        assert s2["text"]["updated"] != s1["text"]["updated"], s1["text"]["updated"]
        assert shot.exists() and shot.stat().st_size > 10 * 1024, shot

        # A wrong token: the form again, with the message.
        p = open_page(browser, base + "#token=wrong")
        s = wait_page(p, lambda s: not s["form_hidden"] and "401" in s["text"]["token-msg"], 10,
                      "the token form with a 401 message")
        assert s["dash_hidden"], s
        # No token at all (a new tab, so nothing in sessionStorage): the form, no message.
        p = open_page(browser, base)
        s = wait_page(p, lambda s: not s["form_hidden"], 10, "the token form")
        time.sleep(0.5)
        s = snapshot(p)
        assert not s["form_hidden"] and s["dash_hidden"], s
        assert s["text"]["token-msg"].strip() == "", s["text"]["token-msg"]
        assert s["text"]["updated"] == "never", s["text"]["updated"]
