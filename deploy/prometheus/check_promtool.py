"""promtool's checks of deploy/prometheus, and the ones promtool cannot do by itself.

1. `promtool check rules alerts.yaml`.
2. `promtool test rules alerts.test.yaml`: every alert against its input series.
3. Each alert in turn made unable to fire (its expression replaced by one that returns nothing):
   the unit tests must then fail, so every alert has at least one test expecting it to fire.
4. `promtool check config prometheus.yml`. Debian's promtool is built without Kubernetes service
   discovery, so the `kubernetes_sd_configs` of a copy are swapped for a static target first; the
   rest (relabelling, rule_files) is checked as written.
5. dashboard.json: unique panel ids, every panel has queries, panels inside the 24-column grid
   and not overlapping, one datasource variable used everywhere, and every query valid PromQL
   (`promtool check rules` on a copy of the queries as recording rules, Grafana's variables
   replaced by sample values).

Usage: check_promtool.py DIR PROMTOOL
"""

import copy
import json
import pathlib
import subprocess
import sys
import tempfile

import yaml

PASSED = []
FAILED = []


def check(ok, what, detail=""):
    (PASSED if ok else FAILED).append(what)
    if not ok:
        print(f"FAIL: {what}\n{detail}".rstrip(), file=sys.stderr)
    else:
        print(f"ok: {what}")


def run(cmd, cwd=None):
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    return result.returncode, result.stdout + result.stderr


def main(directory, promtool):
    directory = pathlib.Path(directory).resolve()
    rules_path = directory / "alerts.yaml"
    tests_path = directory / "alerts.test.yaml"

    code, out = run([promtool, "check", "rules", str(rules_path)])
    check(code == 0, "promtool check rules alerts.yaml", out)
    code, out = run([promtool, "test", "rules", str(tests_path)])
    check(code == 0, "promtool test rules alerts.test.yaml", out)

    rules = yaml.safe_load(rules_path.read_text())
    tests = yaml.safe_load(tests_path.read_text())
    tested = {t["alertname"] for group in tests["tests"] for t in group.get("alert_rule_test", []) if t.get("exp_alerts")}
    alerts = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
    check(set(alerts) <= tested, "every alert has a test case expecting it to fire",
          f"untested: {sorted(set(alerts) - tested)}")
    with tempfile.TemporaryDirectory() as tmp:
        for alert in alerts:
            mutated = copy.deepcopy(rules)
            for group in mutated["groups"]:
                for rule in group["rules"]:
                    if rule.get("alert") == alert:
                        rule["expr"] = "vector(1) == 2"
            pathlib.Path(tmp, "alerts.yaml").write_text(yaml.safe_dump(mutated, sort_keys=False))
            pathlib.Path(tmp, "alerts.test.yaml").write_text(tests_path.read_text())
            code, out = run([promtool, "test", "rules", "alerts.test.yaml"], cwd=tmp)
            check(code != 0, f"the tests fail when {alert} cannot fire", out)

        config = yaml.safe_load((directory / "prometheus.yml").read_text())
        swapped = 0
        for job in config["scrape_configs"]:
            if job.pop("kubernetes_sd_configs", None) is not None:
                job["static_configs"] = [{"targets": ["127.0.0.1:9464"]}]
                swapped += 1
        check([j["job_name"] for j in config["scrape_configs"]] == ["wa-status-sidecar"],
              'prometheus.yml scrapes the job "wa-status-sidecar" the rules select on')
        pathlib.Path(tmp, "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        pathlib.Path(tmp, "alerts.yaml").write_text(rules_path.read_text())
        code, out = run([promtool, "check", "config", "prometheus.yml"], cwd=tmp)
        check(code == 0, f"promtool check config prometheus.yml ({swapped} kubernetes_sd job(s) checked with a static target)", out)

        dashboard = json.loads((directory / "dashboard.json").read_text())
        panels = dashboard["panels"]
        ids = [p["id"] for p in panels]
        check(len(ids) == len(set(ids)), "dashboard: panel ids are unique")
        check(all(p.get("targets") for p in panels), "dashboard: every panel has a query")
        cells = {}
        overlap = []
        for p in panels:
            g = p["gridPos"]
            if g["x"] < 0 or g["x"] + g["w"] > 24:
                overlap.append(f"{p['title']} leaves the 24-column grid")
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    if (x, y) in cells:
                        overlap.append(f"{p['title']} overlaps {cells[(x, y)]}")
                    cells[(x, y)] = p["title"]
        check(not overlap, "dashboard: panels fit the grid without overlapping", "\n".join(sorted(set(overlap))))
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        uids = {p["datasource"]["uid"] for p in panels} | {t["datasource"]["uid"] for p in panels for t in p["targets"]}
        check(variables.get("datasource", {}).get("type") == "datasource" and uids == {"${datasource}"},
              "dashboard: every panel and query uses the $datasource variable")
        samples = {"$__rate_interval": "5m", "$job": "wa-status-sidecar", "$instance": ".*"}
        recording = []
        unknown = []
        for p in panels:
            for t in p["targets"]:
                expr = t["expr"]
                for var, value in samples.items():
                    expr = expr.replace(var, value)
                if "$" in expr:
                    unknown.append(f"{p['title']!r}: {expr}")
                recording.append({"record": f"dashboard:panel_{p['id']}_{t['refId']}", "expr": expr})
        check(not unknown, "dashboard: queries use only the $job, $instance and $__rate_interval variables", "\n".join(unknown))
        pathlib.Path(tmp, "dashboard-queries.yaml").write_text(
            yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recording}]}, sort_keys=False))
        code, out = run([promtool, "check", "rules", "dashboard-queries.yaml"], cwd=tmp)
        check(code == 0, f"dashboard: all {len(recording)} queries are valid PromQL", out)

    print(f"prometheus rules and dashboard: {len(PASSED)} passed, {len(FAILED)} failed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
