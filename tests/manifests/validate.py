"""Render every kustomize overlay of manifests/ and check what comes out.

Run through scripts/validate-manifests. Each check prints PASS, FAIL or
NOT RUN; the exit status is 1 if any check failed.
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import referencing
import yaml

import daemonset_checks
import image_checks
from promql_names import Scrape, metric_names, missing_names

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
KUBERNETES_VERSIONS = ["1.30", "1.31", "1.32", "1.33", "1.34"]
# Every overlay as shipped.
OVERLAYS = ["default", "selected-nodes", "chaosctl-certs", "namespaced-controller"]
TLS_FILES = ["ca", "agent", "agent-key", "client", "client-key", "controller", "controller-key"]
# Kinds kubernetes-validate has no schema for, checked against our own schemas.
CRD_SCHEMAS = {
    ("cert-manager.io/v1", "Issuer"): "issuer.cert-manager.io.json",
    ("cert-manager.io/v1", "Certificate"): "certificate.cert-manager.io.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor.monitoring.coreos.com.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.monitoring.coreos.com.json",
}
NO_SCHEMA = re.compile(r"Couldn't find schema for kind (\S+) with api version (\S+) ")
# Grafana variables replaced by values promtool accepts, for the syntax check only.
GRAFANA_SUBSTITUTES = [("$__rate_interval", "5m"), ("$__interval", "1m"), ("$__range", "1h"), ("$node", ".*")]


class Report:
    def __init__(self):
        self.results = []

    def add(self, name, ok, detail=""):
        status = "PASS" if ok else "FAIL"
        self.results.append((status, name, detail))
        print(f"{status:8} {name}" + (f": {detail}" if detail else ""), flush=True)

    def not_run(self, name, why):
        self.results.append(("NOT RUN", name, why))
        print(f"NOT RUN  {name}: {why}", flush=True)

    def failed(self):
        return [r for r in self.results if r[0] == "FAIL"]


def run(command, **kwargs):
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


def prepare_tree(work, chaosctl, report):
    """Copy manifests/ into `work` and give the chaosctl-certs overlay its files."""
    tree = work / "manifests"
    shutil.copytree(REPO / "manifests", tree)
    tls = tree / "overlays" / "chaosctl-certs" / "tls"
    for leftover in tls.glob("*.pem"):
        leftover.unlink()
    if chaosctl:
        try:
            result = run([chaosctl, "certs", "--out", str(tls)])
            made = all((tls / f"{name}.pem").is_file() for name in TLS_FILES)
            report.add("chaosctl certs writes the five PEM files", result.returncode == 0 and made,
                       result.stderr.strip()[-300:] if result.returncode else "")
        except OSError as error:
            report.add("chaosctl certs writes the five PEM files", False, str(error))
    if not all((tls / f"{name}.pem").is_file() for name in TLS_FILES):
        # Kustomize only reads these files into Secrets; their content does not
        # matter for rendering or schema validation.
        for name in TLS_FILES:
            (tls / f"{name}.pem").write_text(f"placeholder for {name}.pem\n")
        print("note: chaosctl-certs rendered with placeholder PEM files, not certificates from chaosctl")
    return tree


def render(tree, overlay, out_dir, report):
    result = run(["kubectl", "kustomize", str(tree / "overlays" / overlay)])
    report.add(f"{overlay}: kubectl kustomize renders", result.returncode == 0, result.stderr.strip()[-500:])
    if result.returncode != 0:
        return None, []
    path = out_dir / f"{overlay}.yaml"
    path.write_text(result.stdout)
    return path, [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def kubernetes_validate(overlay, path, report):
    """kubernetes-validate --strict for every version; a kind without a schema must be one of ours."""
    for version in KUBERNETES_VERSIONS:
        result = run(["kubernetes-validate", "--strict", "--quiet", "-k", f"{version}.0", str(path)])
        output = result.stdout + result.stderr
        problems = [line for line in output.splitlines() if line.startswith(("ERROR", "FATAL"))]
        unschemed = set(NO_SCHEMA.findall(output))
        uncovered = [f"{api}/{kind}" for kind, api in unschemed if (api, kind) not in CRD_SCHEMAS]
        detail = "; ".join(problems[:5] + [f"no schema anywhere for {u}" for u in uncovered])
        if result.returncode != 0 and not problems:
            detail = detail or output.strip()[-300:]
        covered = sorted(f"{kind}" for kind, api in unschemed if (api, kind) in CRD_SCHEMAS)
        note = f" (CRD kinds left to our schemas: {', '.join(covered)})" if covered and not detail else ""
        report.add(f"{overlay}: kubernetes-validate --strict -k {version}.0{note}",
                   result.returncode == 0 and not problems and not uncovered, detail)


def crd_validator(api_version, kind):
    schemas = HERE / "crd-schemas"
    common = json.loads((schemas / "_common.json").read_text())
    schema = json.loads((schemas / CRD_SCHEMAS[(api_version, kind)]).read_text())
    registry = referencing.Registry().with_resource(
        common["$id"], referencing.Resource.from_contents(common, referencing.jsonschema.DRAFT202012))
    return jsonschema.Draft202012Validator(
        schema, registry=registry, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def validate_crd_objects(overlay, docs, report):
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        if not any(key[0].startswith(group) for group in ("cert-manager.io/", "monitoring.coreos.com/")):
            continue
        name = f"{overlay}: {key[1]}/{doc.get('metadata', {}).get('name')} against tests/manifests/crd-schemas"
        if key not in CRD_SCHEMAS:
            report.add(name, False, f"no schema for {key[0]} {key[1]}")
            continue
        errors = sorted(crd_validator(*key).iter_errors(doc), key=lambda e: list(e.path))
        report.add(name, not errors,
                   "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:5]))


def dashboard_expressions(docs, report, overlay):
    """Parse every dashboard ConfigMap; return its PromQL expressions."""
    expressions = []
    maps = [d for d in docs if d.get("kind") == "ConfigMap"
            and d.get("metadata", {}).get("labels", {}).get("grafana_dashboard") == "1"]
    report.add(f"{overlay}: a ConfigMap labelled grafana_dashboard=\"1\" exists", bool(maps))
    for config_map in maps:
        for key, text in config_map.get("data", {}).items():
            try:
                dashboard = json.loads(text)
            except json.JSONDecodeError as error:
                report.add(f"{overlay}: dashboard {key} is JSON", False, str(error))
                continue
            found = []
            panels = dashboard.get("panels", [])
            for panel in panels:
                for target in panel.get("targets", []):
                    if "expr" in target:
                        found.append((f"panel '{panel.get('title')}'", target["expr"]))
            for variable in dashboard.get("templating", {}).get("list", []):
                if variable.get("type") == "query":
                    query = variable.get("query")
                    found.append((f"variable ${variable.get('name')}",
                                  query.get("query") if isinstance(query, dict) else query))
            untargeted = [p.get("title") for p in panels if p.get("type") != "row" and not p.get("targets")]
            ok = bool(dashboard.get("uid")) and bool(dashboard.get("title")) and bool(panels) and not untargeted
            report.add(f"{overlay}: dashboard {key} parses ({len(panels)} panels, {len(found)} queries)", ok,
                       f"panels without queries: {untargeted}" if untargeted else "")
            expressions.extend(found)
    return expressions


def rule_expressions(docs):
    rules = [d for d in docs if d.get("kind") == "PrometheusRule"]
    groups = [group for rule in rules for group in rule.get("spec", {}).get("groups", [])]
    expressions = [(f"alert {r.get('alert') or r.get('record')}", str(r["expr"]))
                   for g in groups for r in g.get("rules", [])]
    return groups, expressions


def promtool_check(overlay, groups, dashboard_exprs, work, report):
    if not shutil.which("promtool"):
        report.add(f"{overlay}: promtool available", False, "install Debian's prometheus package")
        return
    rules_file = work / f"{overlay}-rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": groups}))
    result = run(["promtool", "check", "rules", str(rules_file)])
    alerts = sum(1 for g in groups for r in g.get("rules", []) if "alert" in r)
    report.add(f"{overlay}: promtool check rules ({len(groups)} groups, {alerts} alerts)",
               result.returncode == 0 and alerts > 0,
               "" if result.returncode == 0 else (result.stdout + result.stderr).strip()[-500:])
    # The dashboard's PromQL gets the same parser: each query as a recording rule.
    queries = []
    for index, (_, expr) in enumerate(e for e in dashboard_exprs if not e[1].lstrip().startswith("label_values")):
        for variable, value in GRAFANA_SUBSTITUTES:
            expr = expr.replace(variable, value)
        queries.append({"record": f"chaos_test:dashboard_query_{index}", "expr": expr})
    query_file = work / f"{overlay}-dashboard-queries.yaml"
    query_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": queries}]}))
    result = run(["promtool", "check", "rules", str(query_file)])
    report.add(f"{overlay}: promtool parses the dashboard's {len(queries)} queries",
               result.returncode == 0 and bool(queries),
               "" if result.returncode == 0 else (result.stdout + result.stderr).strip()[-500:])


# Families the test controller's scrape cannot hold: prometheus-client exports a
# family only once it has a series. Each is named here with why and where else
# its name is checked.
SCRAPE_EXEMPT = {
    "chaosctl_time_to_recover_seconds":
        "set only by a run whose steady state broke and recovered; the name is asserted by "
        "controller_metrics::tests::families_are_named_as_documented",
}


def check_names_against_scrape(expressions, scrape_path, report):
    name = "every metric in the alerts and dashboard exists in the scrape"
    if scrape_path is None:
        report.not_run(name, "no --scrape FILE given")
        return
    scrape = Scrape(Path(scrape_path).read_text())
    used = {}
    for where, expr in expressions:
        try:
            names = metric_names(expr)
        except ValueError as error:
            report.add(name, False, f"{where}: {error}")
            return
        for metric in names:
            used.setdefault(metric, []).append(where)
    missing = missing_names(set(used) - set(SCRAPE_EXEMPT), scrape)
    detail = "; ".join(f"{m} (used by {', '.join(sorted(set(used[m])))})" for m in missing)
    exempt = sorted(set(used) & set(SCRAPE_EXEMPT))
    label = f"{name} ({len(used)} names in {scrape_path}" + (f"; exempt: {', '.join(exempt)}" if exempt else "") + ")"
    report.add(label, bool(used) and not missing, detail)


def check_image(image_bin, report):
    problems = image_checks.dockerfile_problems((REPO / "Dockerfile").read_text())
    report.add("Dockerfile: build stage runs scripts/build-image-binaries; runtime is distroless/static "
               "with only our two binaries and labels", not problems, "; ".join(problems))
    name = "the image binaries are static (no interpreter, no shared libraries)"
    if image_bin is None:
        report.not_run(name, "no --image-bin DIR given")
        return
    problems = []
    for binary in image_checks.IMAGE_BINARIES:
        problems += image_checks.static_binary_problems(Path(image_bin) / binary)
    report.add(name, not problems, "; ".join(problems))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scrape", help="a /metrics scrape of a real chaos-agent to check metric names against")
    parser.add_argument("--chaosctl", help="chaosctl binary: make real certificates for the chaosctl-certs overlay")
    parser.add_argument("--image-bin", help="directory of the binaries scripts/build-image-binaries made: check they are static")
    parser.add_argument("--keep", action="store_true", help="keep the rendered files and print where")
    args = parser.parse_args()

    report = Report()
    check_image(args.image_bin, report)
    work = Path(tempfile.mkdtemp(prefix="chaos-test-manifests-"))
    try:
        tree = prepare_tree(work, args.chaosctl, report)
        all_expressions = []
        for overlay in OVERLAYS:
            path, docs = render(tree, overlay, work, report)
            if path is None:
                continue
            kubernetes_validate(overlay, path, report)
            validate_crd_objects(overlay, docs, report)
            daemonset_checks.check_overlay(overlay, docs, report)
            dashboard = dashboard_expressions(docs, report, overlay)
            groups, rules = rule_expressions(docs)
            report.add(f"{overlay}: has a PrometheusRule", bool(groups))
            promtool_check(overlay, groups, dashboard, work, report)
            all_expressions.extend(dashboard + rules)
        unique = sorted(set(all_expressions))
        check_names_against_scrape(unique, args.scrape, report)
    finally:
        if args.keep:
            print(f"rendered files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    counts = {status: sum(1 for r in report.results if r[0] == status) for status in ("PASS", "FAIL", "NOT RUN")}
    print(f"\nsummary: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['NOT RUN']} not run "
          f"(Kubernetes {', '.join(KUBERNETES_VERSIONS)}; overlays {', '.join(OVERLAYS)})")
    for status, name, detail in report.failed():
        print(f"  FAIL {name}: {detail}")
    for status, name, detail in report.results:
        if status == "NOT RUN":
            print(f"  NOT RUN {name}: {detail}")
    return 1 if report.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
