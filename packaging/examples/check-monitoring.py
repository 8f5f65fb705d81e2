#!/usr/bin/env python3
"""Checks the monitoring examples against the agent's source (run by validate.sh, so by `make test`).

1. Every metric the source records (metrics::set/inc/add/observe) is declared in src/metrics.rs
   DEFS (an undeclared one is never rendered, and debug builds panic on it).
2. grafana-dashboard.json: valid JSON; unique panel ids; every query names only declared metrics
   (a histogram's _bucket/_sum/_count, a counter or gauge by its own name) and labels those
   metrics carry; every query parses as PromQL (promtool check rules on a temporary file of
   recording rules, Grafana's $variables replaced).
3. prometheus-alerts.yml: names only declared metrics (and Prometheus's own `up`);
   `promtool check rules`; `promtool test rules prometheus-alerts.test.yml`.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
DASHBOARD = os.path.join(HERE, "grafana-dashboard.json")
RULES = os.path.join(HERE, "prometheus-alerts.yml")
RULE_TESTS = os.path.join(HERE, "prometheus-alerts.test.yml")
# Labels Prometheus adds to every scraped series, and a histogram's bucket bound.
SCRAPE_LABELS = {"instance", "job"}
# Grafana's variables, replaced by something PromQL accepts.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__range": "6h", "$__interval": "1m", "$instance": ".*"}

errors = []


def fail(msg):
    errors.append(msg)


def declared_metrics():
    """name -> (type, labels) from src/metrics.rs DEFS."""
    src = open(os.path.join(ROOT, "src", "metrics.rs")).read()
    defs = {}
    for name, kind, help_text in re.findall(
        r'\(\s*"(gateway_agent_\w+)",\s*Type::(\w+),\s*"((?:[^"\\]|\\.)*)"', src
    ):
        labels = set()
        m = re.search(r"labels: ([\w ,]+?)(?: \(|\.|$)", help_text)
        if m:
            labels = {l.strip() for l in m.group(1).split(",") if l.strip()}
        defs[name] = (kind, labels)
    if not defs:
        sys.exit("check-monitoring: no metric declarations found in src/metrics.rs (DEFS changed shape?)")
    return defs


def recorded_metrics():
    """name -> first place the source records it."""
    found = {}
    for dirpath, _, files in os.walk(os.path.join(ROOT, "src")):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            text = open(path).read()
            for m in re.finditer(r'metrics::(?:set|inc|add|observe)\(\s*"(\w+)"', text):
                line = text.count("\n", 0, m.start()) + 1
                found.setdefault(m.group(1), f"{os.path.relpath(path, ROOT)}:{line}")
    return found


def series_names(defs):
    """Every series name the agent exposes -> (metric, labels a series of it carries)."""
    names = {}
    for name, (kind, labels) in defs.items():
        if kind == "Histogram":
            names[name + "_bucket"] = (name, labels | {"le"})
            names[name + "_sum"] = (name, labels)
            names[name + "_count"] = (name, labels)
        else:
            names[name] = (name, labels)
    return names


def check_expr(where, expr, names, extra=()):
    """Metric names and grouping labels of one PromQL expression."""
    used = set(re.findall(r"\bgateway_agent_\w+", expr))
    used |= {n for n in extra if re.search(rf"\b{n}\b", expr)}
    if not used:
        fail(f"{where}: `{expr}` names no gateway_agent metric")
    labels = set(SCRAPE_LABELS)
    for n in sorted(used):
        if n in extra:
            continue
        if n not in names:
            hint = ""
            base = re.sub(r"_(bucket|sum|count)$", "", n)
            if base in names or n + "_bucket" in names:
                hint = " (a histogram is queried as _bucket, _sum or _count; a counter or gauge by its name)"
            fail(f"{where}: `{n}` is not a metric the agent exposes{hint}")
            continue
        labels |= names[n][1]
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        for label in (l.strip() for l in group.split(",")):
            if label and label not in labels:
                fail(f"{where}: label `{label}` is not carried by {sorted(used)} (labels: {sorted(labels)})")
    for label in re.findall(r"[{,]\s*(\w+)\s*(?:=~|!~|!=|=)", expr):
        if label not in labels:
            fail(f"{where}: selector label `{label}` is not carried by {sorted(used)}")
    return labels


def grafana_exprs(dash):
    """(where, expr, legend) of every query in the dashboard."""
    out = []
    for p in dash.get("panels", []):
        for t in p.get("targets", []):
            if "expr" in t:
                out.append((f"panel {p.get('id')} '{p.get('title')}' {t.get('refId')}", t["expr"], t.get("legendFormat", "")))
        for sub in p.get("panels", []):
            for t in sub.get("targets", []):
                out.append((f"panel {sub.get('id')} '{sub.get('title')}'", t["expr"], t.get("legendFormat", "")))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", q or "")
            if not m:
                fail(f"variable {v.get('name')}: query `{q}` is not label_values(metric, label)")
            else:
                out.append((f"variable {v.get('name')}", m.group(1), ""))
    return out


# needs-command: promtool
def promtool():
    tool = shutil.which("promtool")
    if not tool:
        sys.exit("check-monitoring: promtool is not installed; run scripts/setup.sh (it installs "
                 "promtool from Debian's prometheus package)")
    return tool


def run(argv, cwd):
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    out = (r.stdout + r.stderr).strip()
    return r.returncode, out


def main():
    defs = declared_metrics()
    names = series_names(defs)
    for name, where in sorted(recorded_metrics().items()):
        if name not in defs:
            fail(f"{where}: records `{name}`, which src/metrics.rs DEFS does not declare")

    # The dashboard.
    try:
        dash = json.load(open(DASHBOARD))
    except ValueError as e:
        sys.exit(f"check-monitoring: {DASHBOARD} is not JSON: {e}")
    ids = [p.get("id") for p in dash.get("panels", [])]
    if len(ids) != len(set(ids)):
        fail(f"{DASHBOARD}: panel ids repeat: {ids}")
    if not dash.get("uid") or not dash.get("title"):
        fail(f"{DASHBOARD}: needs a uid and a title")
    exprs = grafana_exprs(dash)
    recording = []
    for i, (where, expr, legend) in enumerate(exprs):
        labels = check_expr(where, expr, names)
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
            if label not in labels:
                fail(f"{where}: legend names `{label}`, which the query's series do not carry")
        concrete = expr
        for var, value in GRAFANA_VARS.items():
            concrete = concrete.replace(var, value)
        if "$" in concrete:
            fail(f"{where}: `{expr}` uses a Grafana variable this check does not know")
        recording.append({"record": f"dashboard:query_{i}", "expr": concrete})
    used = {n for _, e, _ in exprs for n in re.findall(r"\bgateway_agent_\w+", e)}
    shown = {names[n][0] for n in used if n in names}
    unshown = sorted(set(defs) - shown)
    if unshown:
        fail(f"{DASHBOARD}: no panel shows {', '.join(unshown)}")

    tool = promtool()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "dashboard-queries.yml")
        # JSON is YAML: promtool reads this as a rule file.
        with open(path, "w") as f:
            json.dump({"groups": [{"name": "dashboard", "rules": recording}]}, f)
        rc, out = run([tool, "check", "rules", path], tmp)
        if rc != 0:
            fail(f"{DASHBOARD}: a query is not valid PromQL (query_N is the Nth query):\n{out}")

    # The alert rules.
    text = open(RULES).read()
    for m in re.finditer(r"^\s*expr:\s*(>-\n(?:\s{10,}.*\n?)+|.*)$", text, re.M):
        expr = m.group(1)
        line = text.count("\n", 0, m.start()) + 1
        check_expr(f"{os.path.basename(RULES)}:{line}", expr.replace(">-", ""), names, extra=("up",))
    for argv, what in (([tool, "check", "rules", RULES], "promtool check rules"),
                       ([tool, "test", "rules", RULE_TESTS], "promtool test rules")):
        rc, out = run(argv, HERE)
        if rc != 0:
            fail(f"{what} failed:\n{out}")

    if errors:
        for e in errors:
            print(f"check-monitoring: {e}", file=sys.stderr)
        sys.exit(1)
    version = run([tool, "--version"], HERE)[1].splitlines()[0]
    print(f"monitoring examples: {len(exprs)} dashboard queries and the alert rules name only the "
          f"agent's {len(defs)} metrics; every metric on the dashboard; {version}: rules valid, rule tests pass")


if __name__ == "__main__":
    main()
