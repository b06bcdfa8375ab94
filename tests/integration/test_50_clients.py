"""Real clients through the gateway: curl (keep-alive reuse, chunked upload,
a large download) and wrk (a short bounded load: every response 2xx)."""
import hashlib
import json
import re
import shutil
import subprocess

import pytest


def curl(*args, timeout=30):
    return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True,
                          timeout=timeout)


pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")


def test_curl_reuses_one_connection(gateway, backend):
    be = backend()
    gw = gateway(pools={"app": [be]})
    url = "http://127.0.0.1:%d" % gw.port
    r = curl("-v", url + "/one", url + "/two", url + "/three")
    assert r.returncode == 0, r.stderr
    # curl says so when it reuses the connection, and the gateway saw one
    assert r.stderr.count("Re-using existing connection") == 2, r.stderr
    assert len(re.findall(r"^< HTTP/1.1 200", r.stderr, re.M)) == 3, r.stderr
    assert len(re.findall(r"^< Via: 1.1 scalegate", r.stderr, re.M)) == 3, r.stderr
    targets = [h["target"] for h in be.heads()]
    assert targets == ["/one", "/two", "/three"], targets


def test_curl_chunked_upload(gateway, backend, tmp_path):
    be = backend()
    gw = gateway(pools={"app": [be]}, limits={"max_body_bytes": "8MB"})
    data = bytes(range(256)) * 12000  # about 3 MB
    f = tmp_path / "upload.bin"
    f.write_bytes(data)
    r = curl("-H", "Transfer-Encoding: chunked", "--data-binary", "@%s" % f,
             "http://127.0.0.1:%d/upload" % gw.port)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen["body_len"] == len(data)
    assert seen["body_sha256"] == hashlib.sha256(data).hexdigest()


def test_curl_large_download(gateway, backend):
    be = backend()
    gw = gateway(pools={"app": [be]})
    r = subprocess.run(["curl", "-sS", "http://127.0.0.1:%d/big?mb=20" % gw.port],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) == 20 * 1024 * 1024


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
def test_wrk_short_load_all_ok(gateway, backend):
    be1, be2 = backend(), backend()
    gw = gateway(pools={"app": [be1, be2]})
    r = subprocess.run(["wrk", "-t1", "-c16", "-d2s", "http://127.0.0.1:%d/load" % gw.port],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    m = re.search(r"(\d+) requests in", r.stdout)
    assert m and int(m.group(1)) > 100, r.stdout
    assert "Non-2xx" not in r.stdout and "Socket errors" not in r.stdout, r.stdout
    # both backends took part
    assert be1.heads() and be2.heads()
