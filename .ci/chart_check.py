"""Helpers of .ci/chart-check (run with the CI venv's python: needs PyYAML).

  split RENDERED OUT_DIR            write OUT_DIR/{crds,rest,servicemonitors}.yaml
  pick RENDERED KIND[,KIND...]      print the documents of those kinds
  pick-name RENDERED NAME           print the documents of that name
  crd-refusal KUBECTL_OUTPUT        check that kubectl refused a CRD only for x-kubernetes-validations
  sa RENDERED SUFFIX                the ServiceAccount of the Deployment named *SUFFIX
  args RENDERED SUFFIX              its container's args, one per line
  env RENDERED SUFFIX NAME          the value of its container's env NAME
  invariants RENDERED               check what the chart promises (hardening, labels, mounts)
  calls LOG                         the controller's API calls (kube_client JSON logs): table,
                                    403 check, and the (resource, name, verb) triples used
  can-i FILE                        `kubectl auth can-i --list` output -> one line per
                                    (resource, resource name, verb), sorted
  unused GRANTED_FILE USED_FILE     granted triples no call used, minus the documented ones
  monitoring RENDERED VALUES        the PrometheusRule carries files/prometheus-rules.yaml (plus
                                    prometheusRule.alertLabels) and the dashboard ConfigMap
                                    carries files/grafana-dashboard.json, with the sidecar label
"""

import json
import re
import sys
import urllib.parse

import yaml


def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def split(rendered, out):
    groups = {"crds": [], "rest": [], "servicemonitors": []}
    for d in docs(rendered):
        # PrometheusRule: also a monitoring.coreos.com object (no schema in kubernetes-validate, CRD
        # not installed on the test API server), checked with the ServiceMonitors.
        key = {"CustomResourceDefinition": "crds", "ServiceMonitor": "servicemonitors",
               "PrometheusRule": "servicemonitors"}.get(d["kind"], "rest")
        groups[key].append(d)
    for key, items in groups.items():
        with open(f"{out}/{key}.yaml", "w") as f:
            yaml.safe_dump_all(items, f, sort_keys=False)
        print(f"{key}: {len(items)} object(s): " + ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in items))


def pick(rendered, kinds):
    wanted = set(kinds.split(","))
    yaml.safe_dump_all([d for d in docs(rendered) if d["kind"] in wanted], sys.stdout, sort_keys=False)


def pick_name(rendered, name):
    yaml.safe_dump_all([d for d in docs(rendered) if d["metadata"]["name"] == name], sys.stdout, sort_keys=False)


def crd_refusal(path):
    """kubectl's refusal of a CRD on a server older than 1.25: only x-kubernetes-validations."""
    text = open(path).read()
    errors = re.findall(r"ValidationError\(([^)]*)\): ([^,\]]*)", text)
    other = [e for e in errors if e[1] != 'unknown field "x-kubernetes-validations" in io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps']
    if not errors or other:
        print(text)
        print("FAIL refused for something else than x-kubernetes-validations")
        sys.exit(1)
    print(f"refused by this server's OpenAPI only for x-kubernetes-validations ({len(errors)} places: CEL rules, "
          "known from Kubernetes 1.25), so applied with --validate=false")


def deployment(rendered, suffix):
    for d in docs(rendered):
        if d["kind"] == "Deployment" and d["metadata"]["name"].endswith(suffix):
            return d
    return None


def container(rendered, suffix):
    return deployment(rendered, suffix)["spec"]["template"]["spec"]["containers"][0]


def sa(rendered, suffix):
    print(deployment(rendered, suffix)["spec"]["template"]["spec"]["serviceAccountName"])


def args(rendered, suffix):
    d = deployment(rendered, suffix)
    if d is not None:
        print("\n".join(d["spec"]["template"]["spec"]["containers"][0]["args"]))


def env(rendered, suffix, name):
    for e in container(rendered, suffix).get("env", []):
        if e["name"] == name:
            print(e.get("value", ""))


def flag(args, name, default=None):
    for a in args:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return default


def invariants(rendered):
    """What the chart promises, checked on the rendered objects (not on the templates)."""
    problems = []
    objs = docs(rendered)
    for d in objs:
        if d["kind"] == "CustomResourceDefinition":
            if d["metadata"].get("annotations", {}).get("helm.sh/resource-policy") != "keep":
                problems.append(f"CRD {d['metadata']['name']}: no helm.sh/resource-policy: keep")
        if d["kind"] != "Deployment":
            continue
        name = d["metadata"]["name"]
        pod = d["spec"]["template"]["spec"]
        psc = pod.get("securityContext", {})
        if not psc.get("runAsNonRoot"):
            problems.append(f"{name}: pod securityContext.runAsNonRoot is not true")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: pod seccompProfile is not RuntimeDefault")
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{name}/{c['name']}: allowPrivilegeEscalation is not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{name}/{c['name']}: readOnlyRootFilesystem is not true")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{name}/{c['name']}: capabilities do not drop ALL")
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                if c.get(probe, {}).get("httpGet", {}).get("path") != path:
                    problems.append(f"{name}/{c['name']}: {probe} is not GET {path}")
            if not c.get("resources"):
                problems.append(f"{name}/{c['name']}: no resources")
    ctl = deployment(rendered, "-controller")
    gw = deployment(rendered, "-gateway")
    if ctl is None:
        problems.append("no controller Deployment")
    elif gw is not None:
        args = ctl["spec"]["template"]["spec"]["containers"][0]["args"]
        selector = flag(args, "gateway-selector", "app.kubernetes.io/component=gateway,app.kubernetes.io/name=tollgate")
        port_name = flag(args, "metrics-port-name", "metrics")
        labels = gw["spec"]["template"]["metadata"]["labels"]
        for term in selector.split(","):
            k, v = term.split("=", 1)
            if labels.get(k) != v:
                problems.append(f"gateway pod labels do not match the controller's --gateway-selector term {term}")
        c = gw["spec"]["template"]["spec"]["containers"][0]
        if port_name not in [p.get("name") for p in c.get("ports", [])]:
            problems.append(f"gateway container has no port named {port_name} (the controller scrapes it)")
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        creds = mounts.get("/var/run/tollgate/credentials")
        vols = {v["name"]: v for v in gw["spec"]["template"]["spec"].get("volumes", [])}
        token = gw["spec"]["template"]["spec"].get("automountServiceAccountToken")
        ns = gw["metadata"]["namespace"]
        if any(a.startswith("--from-configmap=") for a in c["args"]):
            # configSource=api: watches the ConfigMap, writes the keys into a memory emptyDir.
            if f"--from-configmap={ns}/tollgate-gateway" not in c["args"]:
                problems.append(f"gateway: --from-configmap is not {ns}/tollgate-gateway")
            if not creds or vols.get(creds["name"], {}).get("emptyDir", {}).get("medium") != "Memory":
                problems.append("gateway (api): credentials dir is not a memory emptyDir")
            if token is not True:
                problems.append("gateway (api): no ServiceAccount token to read the API with")
        else:
            if not creds or not creds.get("readOnly"):
                problems.append("gateway: credentials not mounted read-only at /var/run/tollgate/credentials")
            if creds and vols.get(creds["name"], {}).get("secret", {}).get("secretName") != "tollgate-credentials":
                problems.append("gateway: the credentials volume is not Secret tollgate-credentials")
            sources = [v.get("configMap", {}) for v in vols.values()] + [
                s.get("configMap", {}) for v in vols.values() for s in v.get("projected", {}).get("sources", [])
            ]
            if not [c for c in sources if c.get("name") == "tollgate-gateway"]:
                problems.append("gateway: ConfigMap tollgate-gateway is not mounted")
            if token is not False:
                problems.append("gateway: a ServiceAccount token is mounted (it needs none)")
    for p in problems:
        print(f"FAIL {p}")
    if problems:
        sys.exit(1)
    print(f"ok: {sum(1 for d in objs if d['kind'] == 'Deployment')} Deployment(s) hardened with probes and resources; "
          "CRDs kept on uninstall; gateway labels, metrics port and mounts match the controller")


PATH_RE = re.compile(r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)(?:/namespaces/(?P<ns>[^/]+))?/(?P<res>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?$")


def request_verb(method, query, name, status):
    if method == "GET":
        if name:
            return ["get"]
        return ["watch"] if query.get("watch") == ["true"] else ["list"]
    if method == "PATCH":
        # A server-side apply that creates (201) is also authorized as create.
        return ["patch", "create"] if status == 201 else ["patch"]
    return {"POST": ["create"], "PUT": ["update"], "DELETE": ["delete"]}.get(method, [method.lower()])


def calls(log):
    seen = {}
    order = []
    with open(log) as f:
        for line in f:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            span = ev.get("span") or {}
            url = span.get("http.url")
            if not url or ev.get("target", "").split("::")[0] != "kube_client":
                continue
            key = (span.get("http.method"), url)
            if key not in seen:
                seen[key] = None
                order.append(key)
            if span.get("http.status_code") is not None:
                seen[key] = span["http.status_code"]
    used = set()
    rows = {}
    denied = []
    for method, url in order:
        status = seen[(method, url)]
        u = urllib.parse.urlsplit(url)
        m = PATH_RE.match(u.path)
        if not m:
            print(f"FAIL cannot read the path of {method} {u.path}")
            sys.exit(1)
        query = urllib.parse.parse_qs(u.query)
        group = m["group"] or ""
        name = m["name"] or ""
        if not name:
            for sel in query.get("fieldSelector", []):
                if sel.startswith("metadata.name="):
                    name = sel.split("=", 1)[1]
        verbs = request_verb(method, query, m["name"], status)
        # As can-i --list names them: plural.group/subresource.
        resource = (f"{m['res']}.{group}" if group else m["res"]) + (f"/{m['sub']}" if m["sub"] else "")
        for v in verbs:
            used.add((resource, name, v))
        # A watch stays open: no status until it ends (the controller's watch errors are in its log).
        shown = "open" if status is None else str(status)
        row = (method, re.sub(r"resourceVersion=\d+", "resourceVersion=N", u.path + ("?" + u.query.lstrip("&") if u.query.strip("&") else "")), shown)
        rows[row] = rows.get(row, 0) + 1
        if status in (401, 403):
            denied.append(f"{method} {u.path} -> {status}")
    print("calls it made (method, path, HTTP status, count):")
    for (method, path, shown), n in sorted(rows.items(), key=lambda r: (r[0][1], r[0][0])):
        print(f"  {method:6} {shown:5} x{n:<3} {path}")
    with open(log + ".used", "w") as f:
        for t in sorted(used):
            f.write(" ".join(x or "*" for x in t) + "\n")
    if denied:
        for d in denied:
            print(f"FAIL denied: {d}")
        sys.exit(1)
    print(f"ok: {sum(rows.values())} calls, none denied")


CANI_RE = re.compile(r"^(?P<res>\S*)\s+\[(?P<urls>[^\]]*)\]\s+\[(?P<names>[^\]]*)\]\s+\[(?P<verbs>[^\]]*)\]\s*$")


def can_i(path):
    out = set()
    with open(path) as f:
        for line in f:
            if line.startswith("Resources") or not line.strip():
                continue
            m = CANI_RE.match(line.rstrip("\n"))
            if not m:
                print(f"FAIL cannot read can-i line: {line!r}", file=sys.stderr)
                sys.exit(1)
            what = m["res"] or "url:" + m["urls"]
            names = m["names"].split() or ["*"]
            for n in names:
                for v in m["verbs"].split():
                    out.add(f"{what} {n} {v}")
    print("\n".join(sorted(out)))


# Granted, and used by the code, but not called in this run (say why).
NOT_EXERCISED = {}
# The same, for names starting with a prefix: (resource, name prefix, verb) -> why.
NOT_EXERCISED_NAMES = {
    ("configmaps", "tollgate-gateway-shard-", "patch"): "shards are written only for a config over 1 MB "
    "compressed (tests/e2e_scale.rs and src/config/shard.rs cover them)",
    ("configmaps", "tollgate-gateway-shard-", "get"): "the gateway reads shards, and the controller reads "
    "them back to repair them, only for a split config (tests/e2e_scale.rs, tests/controller_reconcile.rs)",
}


def unused(granted_path, used_path):
    used = set()
    with open(used_path) as f:
        for line in f:
            res, name, verb = line.split()
            used.add((res, name, verb))
    missing = []
    with open(granted_path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#") or line.startswith("["):
                continue
            res, name, verb = line.split()
            # A grant without names covers calls on any name.
            hit = any(r == res and v == verb and (name == "*" or n == name) for r, n, v in used)
            exempt = any(r == res and name.startswith(prefix) and v == verb for r, prefix, v in NOT_EXERCISED_NAMES)
            if not hit and (res, verb) not in NOT_EXERCISED and not exempt:
                missing.append(line)
    for m in sorted(set(missing)):
        print(f"FAIL granted but never used by the controller in this run: {m}")
    if missing:
        sys.exit(1)
    print("ok: every granted (resource, name, verb) was used by one of its calls")


def monitoring(rendered, values_file=""):
    """The alerts and the dashboard of the rendered chart are the repository's files."""
    import os
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    chart = os.path.join(root, "charts", "tollgate")
    values = yaml.safe_load(open(os.path.join(chart, "values.yaml")))
    if values_file:
        for k, v in (yaml.safe_load(open(values_file)) or {}).items():
            if isinstance(v, dict) and isinstance(values.get(k), dict):
                values[k] = {**values[k], **v}
            else:
                values[k] = v
    objs = docs(rendered)
    problems = []
    rules = [d for d in objs if d["kind"] == "PrometheusRule"]
    if values["prometheusRule"]["enabled"]:
        want = yaml.safe_load(open(os.path.join(chart, "files", "prometheus-rules.yaml")))
        for g in want["groups"]:
            for r in g["rules"]:
                r["labels"] = {**values["prometheusRule"].get("alertLabels", {}), **r.get("labels", {})}
        if len(rules) != 1:
            problems.append(f"{len(rules)} PrometheusRules rendered, expected 1")
        elif rules[0]["spec"] != want:
            problems.append("the PrometheusRule's spec is not files/prometheus-rules.yaml (with alertLabels)")
    elif rules:
        problems.append("a PrometheusRule was rendered with prometheusRule.enabled false")
    cms = [d for d in objs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    if values["grafanaDashboard"]["enabled"]:
        want = json.load(open(os.path.join(chart, "files", "grafana-dashboard.json")))
        if len(cms) != 1:
            problems.append(f"{len(cms)} dashboard ConfigMaps rendered, expected 1")
        else:
            cm = cms[0]
            if json.loads(cm["data"]["tollgate.json"]) != want:
                problems.append("the dashboard ConfigMap does not carry files/grafana-dashboard.json")
            for k, v in values["grafanaDashboard"]["labels"].items():
                if cm["metadata"]["labels"].get(k) != v:
                    problems.append(f"the dashboard ConfigMap lacks the sidecar label {k}: {v!r}")
    elif cms:
        problems.append("a dashboard ConfigMap was rendered with grafanaDashboard.enabled false")
    for p in problems:
        print(f"FAIL {p}")
    if problems:
        sys.exit(1)
    print(f"ok: PrometheusRule {'rendered from files/prometheus-rules.yaml' if rules else 'off'}, "
          f"dashboard {'rendered from files/grafana-dashboard.json' if cms else 'off'}")


if __name__ == "__main__":
    cmd, argv = sys.argv[1], sys.argv[2:]
    {
        "split": split,
        "pick": pick,
        "pick-name": pick_name,
        "crd-refusal": crd_refusal,
        "sa": sa,
        "args": args,
        "env": env,
        "invariants": invariants,
        "calls": calls,
        "can-i": can_i,
        "unused": unused,
        "monitoring": monitoring,
    }[cmd](*argv)
