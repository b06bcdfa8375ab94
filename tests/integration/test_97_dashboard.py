"""The live dashboard at the admin listener's "/" (docs/admin-api.md#dashboard):
the page is public and self-contained; in a real headless Chromium, with the
token in the URL fragment, it polls the admin API and shows live numbers that
move under traffic; with a wrong token it shows the token form. Saves a
screenshot to build/test-artifacts/dashboard.png."""
import http.client
import html.parser
import os
import re
import shutil
import subprocess
import threading
import time

import pytest

from conftest import REPO, free_port, wait_until
from test_70_scale import port_range
from test_96_metrics import gateway_config
from test_90_cache import TOKEN

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "build" / "test-artifacts"
TRAFFIC_MAX_S = 25  # the traffic thread never runs longer
LIVE_IDS = ["rps", "p50", "p95", "p99", "errors", "cache-hit-ratio", "ratelimit-rps",
            "requests-total"]


class Dom(html.parser.HTMLParser):
    """Text by element id, attributes by id, and the server rows."""

    def __init__(self, text):
        super().__init__()
        self.text, self.attrs, self.rows = {}, {}, []
        self.stack = []  # [(tag, id or None)]
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("meta", "input", "br", "link", "img"):
            if a.get("id"):
                self.attrs[a["id"]] = a
            return
        if a.get("id"):
            self.attrs[a["id"]] = a
            self.text[a["id"]] = ""
        if tag == "tr" and a.get("class") == "server-row":
            self.rows.append({"pool": a.get("data-pool"), "server": a.get("data-server"),
                              "cells": []})
            self.stack.append((tag, "@row"))
            return
        self.stack.append((tag, a.get("id")))

    def handle_endtag(self, tag):
        while self.stack:
            t, _ = self.stack.pop()
            if t == tag:
                break

    def handle_data(self, data):
        for t, i in self.stack:
            if i and i != "@row":
                self.text[i] += data
        if self.stack and self.stack[-1][0] == "td" and any(i == "@row" for _, i in self.stack):
            self.rows[-1]["cells"].append(data)


def need_chromium():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail("chromium not found at %s: run scripts/deps.sh test (package chromium)"
                    % CHROMIUM)


def chromium(tmp_path, url, extra, budget_ms, timeout=90):
    """Runs headless Chromium on url; returns its stdout (the DOM with --dump-dom).
    The virtual time budget lets the page's 2 s polls run (a few per budget):
    virtual time jumps ahead while nothing is pending, so the polls are only
    some 100 ms apart in real time and the rates the page shows here are far
    below the real ones (the test only asks for > 0). --timeout would dump
    right after the load event, with a single poll."""
    prof = tmp_path / ("chromium-profile-%d" % time.monotonic_ns())
    args = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions",
            "--user-data-dir=%s" % prof, "--virtual-time-budget=%d" % budget_ms] + extra + [url]
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(prof, ignore_errors=True)
    assert r.returncode == 0, "chromium failed (%d): %s" % (r.returncode, r.stderr[-3000:])
    return r.stdout


def dump(tmp_path, url, budget_ms=7000):
    out = chromium(tmp_path, url, ["--dump-dom"], budget_ms)
    assert "<html" in out, "no DOM from chromium: %r" % out[:500]
    return Dom(out)


def number(s):
    m = re.match(r"^\s*(-?[0-9.]+)", s or "")
    return float(m.group(1)) if m else None


class Traffic(threading.Thread):
    """Keep-alive requests to the gateway, about `rate`/s, until stop() or
    TRAFFIC_MAX_S."""

    def __init__(self, port, rate=300):
        super().__init__(daemon=True)
        self.port, self.rate = port, rate
        self.done = threading.Event()
        self.count = 0
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
    url = "http://127.0.0.1:%d/#token=%s" % (ap, TOKEN)
    traffic = Traffic(g.port)
    traffic.start()
    try:
        assert wait_until(lambda: traffic.count > 50, 10), traffic.errors[:5]
        d1 = dump(tmp_path, url)
        time.sleep(2)
        d2 = dump(tmp_path, url)
        shot = ARTIFACTS / "dashboard.png"
        if shot.exists():
            shot.unlink()
        chromium(tmp_path, url, ["--screenshot=%s" % shot, "--window-size=1280,900",
                                 "--hide-scrollbars"], 7000)
    finally:
        traffic.stop()
    assert traffic.count > 100 and not traffic.errors, (traffic.count, traffic.errors[:5])

    for d in (d1, d2):
        assert d.attrs["token-form"].get("hidden") is not None, d.text.get("token-msg")
        assert d.text["status"].strip() == "", d.text["status"]
        assert re.search(r"\d", d.text["updated"]), d.text["updated"]
        assert number(d.text["rps"]) and number(d.text["rps"]) > 0, d.text["rps"]
        assert number(d.text["p95"]) is not None, d.text["p95"]
        assert number(d.text["p50"]) <= number(d.text["p95"]) <= number(d.text["p99"])
        assert number(d.text["ratelimit-rps"]) is not None
        assert number(d.text["errors"]) == 0
        assert d.text["cache-hit-ratio"].endswith("%"), d.text["cache-hit-ratio"]
        rows = [r for r in d.rows if r["pool"] == "app" and r["server"] == b.addr]
        assert rows, d.rows
        assert "up" in rows[0]["cells"], rows[0]
        assert any(r["pool"] == "scaled" for r in d.rows), d.rows
        assert "scaled" in d.text["scaling"], d.text["scaling"]
        assert "instance_ready" in d.text["history"] or "config" in d.text["history"], \
            d.text["history"]
    assert any(d1.text[i] != d2.text[i] for i in LIVE_IDS), \
        {i: (d1.text[i], d2.text[i]) for i in LIVE_IDS}
    assert number(d2.text["requests-total"]) > number(d1.text["requests-total"])
    assert shot.exists() and shot.stat().st_size > 10 * 1024, shot

    # A wrong token: the form again, with the message.
    d = dump(tmp_path, "http://127.0.0.1:%d/#token=wrong" % ap, budget_ms=3000)
    assert d.attrs["token-form"].get("hidden") is None
    assert "401" in d.text["token-msg"], d.text["token-msg"]
    assert d.attrs["dash"].get("hidden") is not None
    # No token at all: the form, no message.
    d = dump(tmp_path, "http://127.0.0.1:%d/" % ap, budget_ms=1000)
    assert d.attrs["token-form"].get("hidden") is None
    assert d.text["token-msg"].strip() == ""
