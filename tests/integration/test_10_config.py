"""Configuration checking: `scalegate -t -c FILE` and start-up with a bad file.

Spec: -t exits 0 with "FILE: ok" on stderr, or 1 with each error as
"FILE:LINE: key.path: message".
"""
import re
import textwrap

import pytest

GOOD = textwrap.dedent("""\
    listen: 127.0.0.1:18080
    workers: 2
    limits:
      max_connections: 100
      header_timeout: 10s
      idle_timeout: 250ms
      body_timeout: 1m
      shutdown_timeout: 1h
      max_request_line: 8k
      max_header_bytes: 16KB
      max_body_bytes: 100MB
    pools:
      app:
        servers: [127.0.0.1:9001, 127.0.0.1:9002]
        connect_timeout: 5
        response_timeout: 60s
        keepalive: 64
        keepalive_timeout: 60s
      other:
        servers: [127.0.0.1:9003]
    routes:
      - match: { host: example.com, path_prefix: /api, methods: [GET, POST] }
        pool: app
      - match: { path_prefix: / }
        pool: other
    """)


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def error_lines(stderr, path, line, key_re):
    pat = re.compile(re.escape(str(path)) + r":%d: (%s): \S" % (line, key_re))
    return [ln for ln in stderr.splitlines() if pat.search(ln)]


def replace_line(text, old, new):
    """Replaces the line that equals old (after stripping) and returns the
    new text and the 1-based line number."""
    lines = text.splitlines()
    for i, ln in enumerate(lines):
        if ln.strip() == old:
            indent = ln[: len(ln) - len(ln.lstrip())]
            lines[i] = indent + new
            return "\n".join(lines) + "\n", i + 1
    raise AssertionError("line %r not in config" % old)


def test_check_good_config(tmp_path, run_scalegate):
    p = write(tmp_path, "good.yaml", GOOD)
    r = run_scalegate(["-t", "-c", str(p)])
    assert r.returncode == 0, r.stderr
    assert re.search(re.escape(str(p)) + r": ok", r.stderr), r.stderr


def test_check_minimal_config(tmp_path, run_scalegate):
    p = write(tmp_path, "min.yaml", textwrap.dedent("""\
        listen: 127.0.0.1:18081
        pools:
          app:
            servers: [127.0.0.1:9001]
        routes:
          - match: { path_prefix: / }
            pool: app
        """))
    r = run_scalegate(["-t", "-c", str(p)])
    assert r.returncode == 0, r.stderr


BAD_CASES = [
    # id, line to replace (stripped), replacement, key path regex
    ("unknown-top-level-key", "workers: 2", "wrokers: 2", r"wrokers"),
    ("unknown-nested-key", "idle_timeout: 250ms", "idle_timout: 250ms",
     r"limits\.idle_timout"),
    ("bad-duration", "header_timeout: 10s", "header_timeout: 10parsecs",
     r"limits\.header_timeout"),
    ("negative-duration", "body_timeout: 1m", "body_timeout: -5s", r"limits\.body_timeout"),
    ("bad-size", "max_body_bytes: 100MB", "max_body_bytes: 12XB", r"limits\.max_body_bytes"),
    ("header-bytes-over-64k", "max_header_bytes: 16KB", "max_header_bytes: 100k",
     r"limits\.max_header_bytes"),
    ("bad-server-address", "servers: [127.0.0.1:9003]", "servers: [127.0.0.1:notaport]",
     r"pools\.other\.servers(\[0\]|\.0)?"),
    ("server-port-out-of-range", "servers: [127.0.0.1:9003]", "servers: [127.0.0.1:70000]",
     r"pools\.other\.servers(\[0\]|\.0)?"),
    ("bad-listen-address", "listen: 127.0.0.1:18080", "listen: 127.0.0.1:http-ish",
     r"listen(\[0\]|\.0)?"),
    ("bad-workers", "workers: 2", "workers: many", r"workers"),
    ("route-to-missing-pool", "pool: other", "pool: nosuchpool",
     r"routes(\[1\]|\.1)\.pool"),
]


def test_bad_config_cases_are_distinct():
    # Guards the table above: every case changes a line that exists.
    for _id, old, new, _key in BAD_CASES:
        replace_line(GOOD, old, new)



@pytest.mark.parametrize("case", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_check_bad_config(tmp_path, run_scalegate, case):
    _id, old, new, key_re = case
    text, line = replace_line(GOOD, old, new)
    p = write(tmp_path, "bad.yaml", text)
    r = run_scalegate(["-t", "-c", str(p)])
    assert r.returncode == 1, "exit %s, stderr:\n%s" % (r.returncode, r.stderr)
    found = error_lines(r.stderr, p, line, key_re)
    assert found, "expected '%s:%d: <%s>: message' in stderr:\n%s\nconfig:\n%s" % (
        p, line, key_re, r.stderr, text)


def test_check_reports_every_error(tmp_path, run_scalegate):
    text, l1 = replace_line(GOOD, "header_timeout: 10s", "header_timeout: soon")
    text, l2 = replace_line(text, "pool: app", "pool: missing")
    p = write(tmp_path, "two.yaml", text)
    r = run_scalegate(["-t", "-c", str(p)])
    assert r.returncode == 1, r.stderr
    assert error_lines(r.stderr, p, l1, r"limits\.header_timeout"), r.stderr
    assert error_lines(r.stderr, p, l2, r"routes(\[0\]|\.0)\.pool"), r.stderr


def test_check_missing_file(tmp_path, run_scalegate):
    p = tmp_path / "does-not-exist.yaml"
    r = run_scalegate(["-t", "-c", str(p)])
    assert r.returncode == 1, r.stderr
    assert "does-not-exist.yaml" in r.stderr, r.stderr


def test_check_yaml_syntax_error(tmp_path, run_scalegate):
    p = write(tmp_path, "syntax.yaml", "listen: 127.0.0.1:18080\npools: [unclosed\n")
    r = run_scalegate(["-t", "-c", str(p)])
    assert r.returncode == 1, r.stderr
    assert re.search(re.escape(str(p)) + r":\d+:", r.stderr), r.stderr


def test_check_missing_required_sections(tmp_path, run_scalegate):
    p = write(tmp_path, "empty.yaml", "workers: 1\n")
    r = run_scalegate(["-t", "-c", str(p)])
    assert r.returncode == 1, r.stderr
    assert str(p) in r.stderr, r.stderr


def test_start_with_bad_config_exits_1(tmp_path, run_scalegate):
    text, _ = replace_line(GOOD, "header_timeout: 10s", "header_timeout: 10parsecs")
    p = write(tmp_path, "bad.yaml", text)
    r = run_scalegate(["-c", str(p)], timeout=10)
    assert r.returncode == 1, r.stderr
    assert "limits.header_timeout" in r.stderr, r.stderr


def test_version_and_usage(run_scalegate):
    r = run_scalegate(["-v"])
    assert r.returncode == 0, r.stderr
    assert (r.stdout + r.stderr).strip()
    r = run_scalegate(["-h"])
    assert r.returncode == 0, r.stderr
    assert "-c" in r.stdout + r.stderr
