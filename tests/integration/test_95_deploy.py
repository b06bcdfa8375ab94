"""Deployment files (deploy/): Prometheus rules and config, the Grafana
dashboard, the systemd unit, Kubernetes manifests, docker-compose and the
Dockerfile.

- promtool (/usr/bin/promtool, Debian package prometheus: scripts/deps.sh
  test) checks alerts.yml, runs its unit tests (alerts_test.yml) and checks
  prometheus.yml; a missing promtool fails, it does not skip.
- Every scalegate_* name in the rules and the dashboard is a metric of
  docs/metrics.md (a histogram only with _bucket/_sum/_count), the
  dashboard's expressions are valid PromQL and cover the metrics it is meant
  to show.
- The gateway configs (the Kubernetes ConfigMap, deploy/compose/scalegate.yaml)
  pass the real `scalegate -t`, and the ConfigMap's pool (listed through a
  headless Service's DNS name) is run for real against a local backend.
- The Kubernetes, compose and Grafana provisioning YAML parse and agree with
  each other (ports, token, mounts, grace periods).
- The systemd unit passes `systemd-analyze verify` (when present) and has
  the keys a graceful, hardened service needs.
"""
import json
import os
import pathlib
import re
import shutil
import subprocess
import urllib.error
import urllib.request

import pytest

import rawhttp
from conftest import REPO, free_port, sanitizer_env, scalegate_bin, wait_until

try:
    import yaml
except ImportError:  # python3-yaml is not in scripts/deps.sh's sets
    yaml = None

DEPLOY = REPO / "deploy"
PROM = DEPLOY / "prometheus"
ALERTS = PROM / "alerts.yml"
ALERTS_TEST = PROM / "alerts_test.yml"
PROM_CONFIG = PROM / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "scalegate.json"
UNIT = DEPLOY / "systemd" / "scalegate.service"
K8S = DEPLOY / "kubernetes" / "scalegate.yaml"
COMPOSE = DEPLOY / "docker-compose.yml"
COMPOSE_CONFIG = DEPLOY / "compose" / "scalegate.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
METRICS_DOC = REPO / "docs" / "metrics.md"
PROMTOOL = "/usr/bin/promtool"
TOKEN = "deploy-test-token"
NAME_RE = re.compile(r"\bscalegate_[a-z0-9_]+")
HIST_SUFFIXES = ("_bucket", "_sum", "_count")


def promtool():
    if not os.access(PROMTOOL, os.X_OK):
        pytest.fail("%s is missing: run `scripts/deps.sh test` (it installs the Debian "
                    "package prometheus, which provides promtool)" % PROMTOOL)
    return PROMTOOL


def run(args, cwd=None, env=None, timeout=60):
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def need_yaml():
    """The parsed form is checked only with python3-yaml; callers fall back
    to checks on the text without it."""
    return yaml is not None


def load_yaml_docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def duration_s(v):
    """'45s', '1m', '10m30s', '2h', 30 -> seconds."""
    if isinstance(v, (int, float)):
        return float(v)
    total, pos = 0.0, 0
    for m in re.finditer(r"(\d+)(ms|s|m|h|d)", str(v)):
        assert m.start() == pos, "bad duration %r" % v
        pos = m.end()
        total += int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    assert pos == len(str(v)) and pos > 0, "bad duration %r" % v
    return total


# --------------------------------------------------------------------------
# metric names


def documented_metrics():
    """{name: type} from the tables of docs/metrics.md."""
    out = {}
    for line in METRICS_DOC.read_text().splitlines():
        if not line.startswith("| `scalegate_"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        for name in re.findall(r"`(scalegate_[a-z0-9_]+)`", cells[0]):
            out[name] = cells[1]
    assert len(out) >= 30, "docs/metrics.md: only %d metrics found" % len(out)
    assert out.get("scalegate_http_request_duration_seconds") == "histogram"
    return out


def undocumented(names, doc):
    bad = []
    for n in sorted(set(names)):
        if n in doc and doc[n] != "histogram":
            continue
        if any(n.endswith(s) and doc.get(n[:-len(s)]) == "histogram" for s in HIST_SUFFIXES):
            continue
        bad.append(n)
    return bad


def used_series(names):
    """Names with histogram suffixes stripped."""
    out = set()
    for n in names:
        for s in HIST_SUFFIXES:
            if n.endswith(s):
                n = n[:-len(s)]
                break
        out.add(n)
    return out


def test_documented_metrics_parse():
    doc = documented_metrics()
    # the two names of one row
    assert "scalegate_pool_min_instances" in doc and "scalegate_pool_max_instances" in doc
    # the checker itself: a histogram base name, an unknown name, a suffix on a counter
    assert undocumented(["scalegate_http_request_duration_seconds",
                         "scalegate_http_requests_totals",
                         "scalegate_http_requests_total_count",
                         "scalegate_http_request_duration_seconds_bucket",
                         "scalegate_backend_up"], doc) == [
        "scalegate_http_request_duration_seconds", "scalegate_http_requests_total_count",
        "scalegate_http_requests_totals"]


# --------------------------------------------------------------------------
# Prometheus


REQUIRED_ALERTS = {
    # name: (for at least, for at most, a fragment the expression must hold)
    "ScalegateDown": (60, 300, 'up{job="scalegate"} == 0'),
    "ScalegateServerDown": (60, 60, "scalegate_backend_up == 0"),
    "ScalegateHighErrorRate": (0, 600, 'code="5xx"'),
    "ScalegateHighLatencyP95": (0, 900, "histogram_quantile(0.95"),
    "ScalegatePoolAtMaxInstances": (600, 600, "scalegate_pool_max_instances"),
    "ScalegateRedisDown": (60, 60, "scalegate_redis_up == 0"),
}


def test_promtool_check_rules():
    r = run([promtool(), "check", "rules", str(ALERTS)])
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "SUCCESS: %d rules found" % len(REQUIRED_ALERTS) in out, out


def test_promtool_alert_unit_tests():
    """alerts_test.yml feeds series and says which alerts fire when: each
    alert fires on its condition after its `for`, and not on near misses."""
    r = run([promtool(), "test", "rules", str(ALERTS_TEST)], cwd=str(PROM))
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "SUCCESS" in out, out
    tested = set(re.findall(r"alertname:\s*(\w+)", ALERTS_TEST.read_text()))
    assert tested == set(REQUIRED_ALERTS), tested


def test_alert_rules_shape():
    text = ALERTS.read_text()
    if not need_yaml():
        blocks = re.split(r"\n\s*- alert: ", text)[1:]
        names = [b.split()[0] for b in blocks]
        assert sorted(names) == sorted(REQUIRED_ALERTS)
        for b in blocks:
            for key in ("expr:", "for:", "severity:", "summary:", "description:"):
                assert key in b, "%s: no %s" % (b.split()[0], key)
        return
    doc = yaml.safe_load(text)
    rules = [r for g in doc["groups"] for r in g["rules"]]
    by_name = {r["alert"]: r for r in rules}
    assert sorted(by_name) == sorted(REQUIRED_ALERTS)
    for name, (lo, hi, frag) in REQUIRED_ALERTS.items():
        r = by_name[name]
        assert frag in re.sub(r"\s+", " ", r["expr"]), (name, r["expr"])
        f = duration_s(r["for"])
        assert lo <= f <= hi, (name, r["for"])
        assert r["labels"]["severity"] in ("critical", "warning"), name
        assert r["annotations"]["summary"].strip() and r["annotations"]["description"].strip()
    assert "> 0.05" in by_name["ScalegateHighErrorRate"]["expr"]
    assert "[5m]" in by_name["ScalegateHighErrorRate"]["expr"]
    p95 = by_name["ScalegateHighLatencyP95"]["expr"]
    assert "scalegate_http_request_duration_seconds_bucket[5m]" in p95 and "route" in p95 and "> 1" in p95
    atmax = by_name["ScalegatePoolAtMaxInstances"]["expr"]
    assert 'scalegate_pool_instances{state="ready"}' in atmax and ">=" in atmax


def test_promtool_check_config(tmp_path):
    """prometheus.yml with its rule file: a copy in a temp dir, the token
    file pointed at a dummy (promtool stats it)."""
    text = PROM_CONFIG.read_text()
    m = re.search(r"^\s*credentials_file:\s*(\S+)\s*$", text, re.M)
    assert m, "prometheus.yml: no authorization credentials_file"
    assert re.search(r"^\s*type:\s*Bearer\s*$", text, re.M)
    assert re.search(r"^\s*-\s*job_name:\s*scalegate\s*$", text, re.M)
    assert re.search(r"^\s*metrics_path:\s*/metrics\s*$", text, re.M)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    (tmp_path / "prometheus.yml").write_text(text.replace(m.group(1), str(token)))
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    r = run([promtool(), "check", "config", "prometheus.yml"], cwd=str(tmp_path))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "1 rule files found" in out and "SUCCESS: %d rules found" % len(REQUIRED_ALERTS) in out, out


def test_alert_metric_names_documented():
    """Expressions and test series name real series (a histogram with its
    suffix); comments and annotations may name a histogram by its base name."""
    doc = documented_metrics()
    text = ALERTS.read_text()
    exprs = re.findall(r"^\s*expr:(.*?)^\s*for:", text, re.M | re.S)
    assert len(exprs) == len(REQUIRED_ALERTS), exprs
    strict = NAME_RE.findall(" ".join(exprs))
    strict += NAME_RE.findall(" ".join(re.findall(r"^\s*- series:(.*)$", ALERTS_TEST.read_text(),
                                                   re.M)))
    assert strict
    assert undocumented(strict, doc) == [], "metrics not in docs/metrics.md"
    for f in (ALERTS, ALERTS_TEST):
        names = used_series(NAME_RE.findall(f.read_text()))
        assert sorted(n for n in names if n not in doc) == [], f.name


# --------------------------------------------------------------------------
# Grafana


def dashboard():
    return json.loads(DASHBOARD.read_text())


def all_panels(d):
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # a collapsed row holds its panels
    return out


def dashboard_exprs(d):
    """[(panel title, refId, expr)] of every target."""
    return [(p.get("title"), t.get("refId"), t["expr"])
            for p in all_panels(d) for t in p.get("targets", []) if "expr" in t]


DASHBOARD_MUST_USE = {
    "scalegate_http_requests_total", "scalegate_http_request_duration_seconds",
    "scalegate_backend_up", "scalegate_backend_active_connections", "scalegate_backend_requests_total",
    "scalegate_backend_response_duration_seconds", "scalegate_client_connections",
    "scalegate_upstream_connections", "scalegate_cache_requests_total",
    "scalegate_ratelimit_rejected_total", "scalegate_shed_total", "scalegate_pool_instances",
    "scalegate_pool_desired_instances", "scalegate_pool_min_instances",
    "scalegate_pool_max_instances", "scalegate_scaling_events_total",
    "scalegate_process_cpu_seconds_total", "scalegate_process_resident_memory_bytes",
    "scalegate_process_open_fds", "scalegate_redis_up",
}


def test_grafana_dashboard_structure():
    d = dashboard()
    assert d["schemaVersion"] >= 36
    variables = {v["name"]: v for v in d["templating"]["list"]}
    ds_vars = [n for n, v in variables.items() if v["type"] == "datasource"]
    inputs = [i["name"] for i in d.get("__inputs", []) if i.get("type") == "datasource"]
    assert ds_vars or inputs, "no datasource variable or input"
    ds_refs = {"${%s}" % n for n in ds_vars + inputs} | {"$%s" % n for n in ds_vars + inputs}
    assert "pool" in variables and "route" in variables
    for n in ("pool", "route"):
        assert variables[n]["datasource"]["uid"] in ds_refs
    ids = [p["id"] for p in all_panels(d)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    data_panels = [p for p in all_panels(d) if p["type"] != "row"]
    assert len(data_panels) >= 20
    for p in data_panels:
        title = p.get("title")
        assert p.get("datasource", {}).get("uid") in ds_refs, "panel %r: no datasource" % title
        assert p.get("targets"), "panel %r: no target" % title
        for t in p["targets"]:
            assert t.get("expr", "").strip(), "panel %r: empty expression" % title
            assert t.get("datasource", p["datasource"])["uid"] in ds_refs, title
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, title
    exprs = " ".join(e for _, _, e in dashboard_exprs(d))
    assert 'pool=~"$pool"' in exprs and 'route=~"$route"' in exprs
    for q in (0.5, 0.95, 0.99):
        assert ("histogram_quantile(%s, sum by (le) (rate(scalegate_http_request_duration_seconds_bucket"
                % q) in exprs, q
    assert 'code="5xx"' in exprs


def test_grafana_metric_names_documented():
    d = dashboard()
    doc = documented_metrics()
    texts = [e for _, _, e in dashboard_exprs(d)]
    for v in d["templating"]["list"]:
        q = v.get("query")
        texts.append(q.get("query", "") if isinstance(q, dict) else str(q or ""))
        texts.append(str(v.get("definition", "")))
    names = NAME_RE.findall(" ".join(texts))
    assert undocumented(names, doc) == [], "dashboard uses metrics not in docs/metrics.md"
    missing = DASHBOARD_MUST_USE - used_series(names)
    assert not missing, "dashboard does not show %s" % sorted(missing)


def test_grafana_expressions_are_promql(tmp_path):
    """Every panel expression, with Grafana's variables filled in, loads as
    a Prometheus recording rule (promtool parses it)."""
    rules = []
    for i, (title, ref, expr) in enumerate(dashboard_exprs(dashboard())):
        e = (expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
             .replace("$__range", "1h"))
        e = re.sub(r"\$\{?(instance|pool|route)\}?", ".*", e)
        assert "$" not in e, "unknown variable in %r: %s" % (title, expr)
        rules.append("      - record: dashboard:expr_%d\n        expr: %s\n" % (i, json.dumps(e)))
    f = tmp_path / "dashboard_rules.yml"
    f.write_text("groups:\n  - name: dashboard\n    rules:\n" + "".join(rules))
    r = run([promtool(), "check", "rules", str(f)])
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "SUCCESS: %d rules found" % len(rules) in out, out


def test_grafana_provisioning_files():
    files = sorted((DEPLOY / "grafana" / "provisioning").rglob("*.yml"))
    assert len(files) == 2, files
    if not need_yaml():
        for f in files:
            assert "apiVersion: 1" in f.read_text(), f
        return
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["type"] == "prometheus"
    dp = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/scalegate.yml").read_text())
    path = dp["providers"][0]["options"]["path"]
    compose = yaml.safe_load(COMPOSE.read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert any(m.startswith("./grafana/scalegate.json:%s/" % path) for m in mounts), mounts


# --------------------------------------------------------------------------
# gateway configs: the real binary


def check_config(text, tmp_path, name, env):
    f = tmp_path / name
    f.write_text(text)
    e = sanitizer_env()
    e.pop("SCALEGATE_ADMIN_TOKEN", None)
    e.update(env)
    return run([scalegate_bin(), "-t", "-c", str(f)], env=e, timeout=30)


def configmap_config():
    """The ConfigMap's scalegate.yaml, cut out of the manifest's text (and
    compared with the YAML parser's reading when there is one)."""
    lines = K8S.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip() == "scalegate.yaml: |")
    indent = len(lines[start]) - len(lines[start].lstrip()) + 2
    body = []
    for ln in lines[start + 1:]:
        if ln.strip() and len(ln) - len(ln.lstrip()) < indent:
            break
        body.append(ln[indent:])
    text = "\n".join(body).rstrip("\n") + "\n"
    if need_yaml():
        cm = next(d for d in load_yaml_docs(K8S) if d["kind"] == "ConfigMap")
        assert cm["data"]["scalegate.yaml"] == text
    return text


def test_k8s_config_passes_scalegate_t(tmp_path):
    text = configmap_config()
    m = re.search(r"token_env:\s*(\w+)", text)
    assert m, "the ConfigMap's config has no admin.token_env"
    r = check_config(text, tmp_path, "k8s.yaml", {m.group(1): TOKEN})
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().endswith("k8s.yaml: ok") or "k8s.yaml: ok" in r.stdout + r.stderr
    # without the token the same config is refused (the check is real)
    r = check_config(text, tmp_path, "k8s.yaml", {})
    assert r.returncode == 1 and m.group(1) in r.stderr, r.stderr


def test_k8s_config_with_redis_note_passes_scalegate_t(tmp_path):
    """The commented redis: section of the ConfigMap, uncommented, is valid."""
    text = configmap_config()
    lines = text.splitlines()
    i = next(i for i, ln in enumerate(lines) if re.match(r"^# redis:\s*$", ln))
    j = i + 1
    while j < len(lines) and re.match(r"^#   \S", lines[j]):
        j += 1
    assert j > i + 1, "the redis note has no keys"
    lines[i:j] = [ln[2:] for ln in lines[i:j]]
    redis_text = "\n".join(lines) + "\n"
    assert re.search(r"^redis:\n  url: redis://", redis_text, re.M)
    r = check_config(redis_text, tmp_path, "k8s-redis.yaml", {"SCALEGATE_ADMIN_TOKEN": TOKEN})
    assert r.returncode == 0, r.stderr


def test_compose_config_passes_scalegate_t(tmp_path):
    text = COMPOSE_CONFIG.read_text()
    m = re.search(r"^\s*token_file:\s*(\S+)\s*$", text, re.M)
    assert m, "compose/scalegate.yaml: no admin.token_file"
    # in the container the token file is deploy/compose/admin.token, mounted there
    local = text.replace(m.group(1), str(DEPLOY / "compose" / "admin.token"))
    r = check_config(local, tmp_path, "compose.yaml", {})
    assert r.returncode == 0, r.stderr
    # a broken copy is refused: the check is real
    r = check_config(local.replace("rate: 20/s", "rate: 20/fortnight"), tmp_path,
                     "compose-bad.yaml", {})
    assert r.returncode == 1 and "rate" in r.stderr, r.stderr


def admin_get(port, path, token=None):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path))
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None, ""


def test_k8s_pool_lists_pods_by_dns_name(gateway, backend):
    """The ConfigMap's config run for real, with the headless Service's DNS
    name replaced by localhost and the app's port by a test backend's: the
    list command finds the backend, it passes its health check and gets the
    traffic; the catalog route caches; the probes' /health answers."""
    text = configmap_config()
    b = backend()
    admin = free_port()
    host = re.search(r"getent ahostsv4 (\S+)", text)
    assert host and host.group(1).startswith("app-pods."), "the pool is not listed by DNS"
    text = (text.replace(host.group(1), "localhost").replace('":8000"', '":%d"' % b.port)
            .replace("listen: 0.0.0.0:8080", "listen: 127.0.0.1:@PORT@")
            .replace("listen: 0.0.0.0:8081", "listen: 127.0.0.1:%d" % admin)
            .replace("interval: 2s", "interval: 200ms"))
    assert "@PORT@" in text and "127.0.0.1:%d" % admin in text and str(b.port) in text
    g = gateway(config=text, env={"SCALEGATE_ADMIN_TOKEN": TOKEN})
    assert admin_get(admin, "/health")[0] == 200

    def served():
        r = rawhttp.get(g.port, "/catalog/item?x=1")
        return r if r.status == 200 else None
    r = wait_until(served, 15, 0.2)
    assert r, "the listed backend never got traffic; log:\n" + g.log()[-3000:]
    assert r.header("X-Cache") == "MISS"
    r2 = rawhttp.get(g.port, "/catalog/item?x=1")
    assert r2.status == 200 and r2.header("X-Cache") == "HIT"
    assert len([q for q in b.requests() if q["target"] == "/catalog/item?x=1"]) == 1
    st, body = admin_get(admin, "/api/v1/scaling/status", TOKEN)
    assert st == 200, body
    pool = json.loads(body)["pools"][0]
    assert pool["driver"] == "command" and pool["enabled"] is False
    assert [i["address"] for i in pool["instances"]] == [b.addr]


# --------------------------------------------------------------------------
# Kubernetes and compose manifests


def test_k8s_manifests():
    if not need_yaml():
        text = K8S.read_text()
        for kind in ("ConfigMap", "Secret", "Deployment", "Service"):
            assert re.search(r"^kind: %s$" % kind, text, re.M), kind
        assert "\t" not in text
        assert re.search(r"^  replicas: 2$", text, re.M)
        assert "path: /health" in text and "runAsNonRoot: true" in text
        return
    docs = load_yaml_docs(K8S)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("Service") >= 2 and {"ConfigMap", "Secret", "Deployment"} <= set(kinds)
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    config = yaml.safe_load(configmap_config())
    listen_port = int(config["listen"].rsplit(":", 1)[1])
    admin_port = int(config["admin"]["listen"].rsplit(":", 1)[1])
    shutdown = duration_s(config.get("limits", {}).get("shutdown_timeout", "30s"))

    dep = next(d for d in docs if d["kind"] == "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    c = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["admin"] == admin_port and ports["http"] == listen_port
    for probe in ("livenessProbe", "readinessProbe"):
        h = c[probe]["httpGet"]
        assert h["path"] == "/health" and ports.get(h["port"], h["port"]) == admin_port, probe
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["resources"]["requests"] and c["resources"]["limits"]
    # graceful stop: preStop + shutdown_timeout fit in the grace period
    pre = c["lifecycle"]["preStop"]["exec"]["command"]
    pre_s = float(pre[-1]) if pre[0] == "sleep" else 0
    assert pod["terminationGracePeriodSeconds"] > pre_s + shutdown, (pre, shutdown)
    # the config is mounted where the args read it, from the ConfigMap
    cfg_arg = c["args"][c["args"].index("-c") + 1]
    mount = next(m for m in c["volumeMounts"] if cfg_arg.startswith(m["mountPath"] + "/"))
    vol = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    cm = by[("ConfigMap", vol["configMap"]["name"])]
    assert pathlib.PurePosixPath(cfg_arg).name in cm["data"]
    # the token: the env var the config names, from the Secret
    env = {e["name"]: e for e in c["env"]}
    ref = env[config["admin"]["token_env"]]["valueFrom"]["secretKeyRef"]
    assert ref["key"] in by[("Secret", ref["name"])]["stringData"]
    # Services: 80 -> the listener; the admin one ClusterIP with scrape annotations
    svcs = [d for d in docs if d["kind"] == "Service"]
    sel = spec["template"]["metadata"]["labels"]
    gw = [s for s in svcs if s["spec"].get("selector") == sel]
    main = next(s for s in gw if any(p["port"] == 80 for p in s["spec"]["ports"]))
    p80 = next(p for p in main["spec"]["ports"] if p["port"] == 80)
    assert ports.get(p80["targetPort"], p80["targetPort"]) == listen_port
    adm = next(s for s in gw if s is not main)
    assert adm["spec"].get("type", "ClusterIP") == "ClusterIP"
    pa = adm["spec"]["ports"][0]
    assert ports.get(pa["targetPort"], pa["targetPort"]) == admin_port
    ann = adm["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == str(admin_port)
    assert ann["prometheus.io/path"] == "/metrics"
    # the pool's DNS name is a headless Service of this file
    host = re.search(r"getent ahostsv4 (\S+)", config["pools"]["app"]["scale"]["list"]).group(1)
    headless = by[("Service", host.split(".")[0])]
    assert headless["spec"]["clusterIP"] == "None"


def test_compose_file():
    text = COMPOSE.read_text()
    if not need_yaml():
        for s in ("scalegate:", "app1:", "app2:", "redis:", "prometheus:", "grafana:"):
            assert re.search(r"^  %s" % s, text, re.M), s
        assert "dockerfile: deploy/Dockerfile" in text and "demo-backend" in text
        return
    c = yaml.safe_load(text)
    s = c["services"]
    assert {"scalegate", "app1", "app2", "redis", "prometheus", "grafana"} <= set(s)
    assert s["scalegate"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / s["scalegate"]["build"]["context"] / "deploy" / "Dockerfile").is_file()
    # every bind-mounted file exists
    for name, svc in s.items():
        for v in svc.get("volumes", []):
            src = v.split(":", 1)[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), "%s: %s" % (name, src)
    # the pool's servers are the backends' fixed addresses and ports
    cfg = yaml.safe_load(COMPOSE_CONFIG.read_text())
    servers = sorted(cfg["pools"]["app"]["servers"])
    backends = []
    for name in ("app1", "app2"):
        svc = s[name]
        assert "demo-backend" in " ".join(svc["entrypoint"] + svc.get("command", []))
        port = svc["command"][svc["command"].index("--port") + 1]
        backends.append("%s:%s" % (svc["networks"]["scalegate"]["ipv4_address"], port))
    assert servers == sorted(backends)
    # one token file for the gateway (token_file) and Prometheus (credentials_file)
    gw_mounts = dict(v.split(":")[:2] for v in s["scalegate"]["volumes"])
    pr_mounts = dict(v.split(":")[:2] for v in s["prometheus"]["volumes"])
    token_src = {src for src, dst in gw_mounts.items() if dst == cfg["admin"]["token_file"]}
    cred = re.search(r"^\s*credentials_file:\s*(\S+)\s*$", PROM_CONFIG.read_text(), re.M).group(1)
    assert token_src and token_src == {src for src, dst in pr_mounts.items() if dst == cred}
    assert gw_mounts["./compose/scalegate.yaml"] == "/etc/scalegate/scalegate.yaml"
    assert pr_mounts["./prometheus/alerts.yml"] == "/etc/prometheus/alerts.yml"
    # Prometheus scrapes the gateway's admin port by its service name
    admin_port = cfg["admin"]["listen"].rsplit(":", 1)[1]
    assert re.search(r'targets:\s*\["scalegate:%s"\]' % admin_port, PROM_CONFIG.read_text())
    assert redis_host(cfg) == "redis"
    # docker's SIGKILL comes after the gateway's graceful stop
    assert duration_s(s["scalegate"]["stop_grace_period"]) > duration_s(
        cfg["limits"]["shutdown_timeout"])


def redis_host(cfg):
    return re.match(r"(?:redis://)?([^:/]+)", cfg["redis"]["url"]).group(1)


def test_dockerfile():
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms and all(f.startswith("debian:12") for f in froms), froms
    deps = (REPO / "scripts" / "deps.sh").read_text()
    base = re.search(r'^pkgs="([^"]+)"', deps, re.M).group(1).split()
    installs = " ".join(re.findall(r"apt-get install(?:[^\n]*\\\n)*[^\n]*", text))
    for p in base:
        if p.endswith("-dev") or p in ("gcc", "make", "pkg-config"):
            assert re.search(r"(^|\s)%s(\s|$)" % re.escape(p), installs), p
    assert re.search(r"^RUN make\b", text, re.M)
    assert "build/release/scalegate" in text and "build/release/demo-backend" in text
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0"), user
    # the COPYs of the build stage hold what the Makefile compiles
    for need in ("Makefile", "src", "examples"):
        assert re.search(r"^COPY %s\b" % need, text, re.M), need


# --------------------------------------------------------------------------
# systemd


def unit_entries():
    """[(section, key, value)] of the unit, in order (keys may repeat)."""
    out, section = [], None
    for ln in UNIT.read_text().splitlines():
        s = ln.strip()
        if not s or s[0] in "#;":
            continue
        if s.startswith("[") and s.endswith("]"):
            section = s[1:-1]
            continue
        assert "=" in s and section, "not KEY=VALUE: %r" % ln
        k, v = s.split("=", 1)
        out.append((section, k.strip(), v.strip()))
    return out


def test_systemd_unit_keys():
    e = unit_entries()
    svc = {}
    for sec, k, v in e:
        if sec == "Service":
            svc.setdefault(k, []).append(v)
    assert {sec for sec, _, _ in e} == {"Unit", "Service", "Install"}
    assert svc["ExecStart"] == ["/usr/local/bin/scalegate -c /etc/scalegate/scalegate.yaml"]
    assert "/bin/kill -HUP $MAINPID" in svc["ExecReload"]
    if "DynamicUser" not in svc:
        assert svc["User"] == ["scalegate"] and svc["Group"] == ["scalegate"]
    else:
        assert svc["DynamicUser"] == ["yes"] and "StateDirectory" in svc
    assert svc["Restart"] == ["on-failure"] and duration_s(svc["RestartSec"][0]) > 0
    assert svc["KillSignal"] == ["SIGTERM"]
    # above shutdown_timeout (30s default) + an instance's stop_grace (10s default)
    assert duration_s(svc["TimeoutStopSec"][0]) > 40
    assert svc.get("KillMode") == ["mixed"]
    assert svc["EnvironmentFile"] == ["-/etc/scalegate/env"]
    assert svc["LimitNOFILE"] == ["65536"]
    assert svc["NoNewPrivileges"] == ["yes"] and svc["ProtectSystem"] == ["full"]
    assert svc["ProtectHome"][0] in ("yes", "true", "read-only") and svc["PrivateTmp"] == ["yes"]


def test_systemd_analyze_verify(tmp_path):
    sa = shutil.which("systemd-analyze")
    if sa is None:
        # no systemd here: test_systemd_unit_keys has checked the keys
        assert unit_entries()
        return
    # as written: the only complaints allowed are about the binary not
    # being installed at /usr/local/bin/scalegate
    r = run([sa, "verify", str(UNIT)], cwd=str(tmp_path))
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    other = [ln for ln in lines if "/usr/local/bin/scalegate" not in ln
             or "not executable" not in ln]
    assert not other, "\n".join(lines)
    # with an existing binary in its place it verifies clean
    unit = tmp_path / "scalegate.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/scalegate", scalegate_bin()))
    r = run([sa, "verify", str(unit)], cwd=str(tmp_path))
    out = r.stdout + r.stderr
    assert r.returncode == 0 and not re.search(r"Unknown|ignoring|[Ff]ailed|[Ii]nvalid", out), out
