"""Every metric the alert rules and the dashboard use is exported by the real sidecar.

Starts the sidecar binary (`run`) with a small config on loopback: gateway and backend point at a
closed port, so the links are down and nothing is delivered, which is all /metrics needs. Scrapes
/metrics and compares every `wa_sidecar_*` reference in alerts.yaml and dashboard.json with it:
the metric name must be exported, and each label value a selector names with `=` or `=~"a|b"`
(state="down", outcome="credentials", ...) must be one the sidecar exports for that metric (it
creates every series up front, so a real value is always there).

Names listed in pending-metrics.txt (being added by work not merged yet) are reported as PENDING
instead of failing; a listed name that the binary does export, or that nothing uses, fails, so
the list empties itself as the work lands. Any other missing name or value fails.

Also checks the `healthcheck` subcommand (the container image's HEALTHCHECK): exit 0 while the
sidecar runs, non-zero once it has stopped.

Usage: check_metrics.py BINARY DIR      (DIR = deploy/prometheus)
"""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import yaml

# Labels Prometheus adds to every target (or that the dashboard's variables select on); they are
# not the sidecar's to export.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "le"}
REFERENCE = re.compile(r"\b(wa_sidecar_[A-Za-z0-9_]+)\b\s*(\{[^}]*\})?")
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
PLAIN_ALTERNATION = re.compile(r"^[A-Za-z0-9_]+(\|[A-Za-z0-9_]+)*$")


def free_port():
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_exposition(text):
    """{sample name: {label: {values}}} from the Prometheus text format."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s+\S+", line)
        if not m:
            raise ValueError(f"unparseable /metrics line: {line!r}")
        labels = samples.setdefault(m.group(1), {})
        for name, _, value in MATCHER.findall(m.group(2) or ""):
            labels.setdefault(name, set()).add(value)
    return samples


def references(text):
    """(metric, {label: [values]}, source text) for every wa_sidecar_* reference in `text`."""
    found = []
    for m in REFERENCE.finditer(text):
        wanted = {}
        for label, op, value in MATCHER.findall(m.group(2) or ""):
            if label in TARGET_LABELS or op in ("!=", "!~") or "$" in value or "%" in value:
                continue
            if op == "=":
                wanted.setdefault(label, []).append(value)
            elif PLAIN_ALTERNATION.match(value):
                wanted.setdefault(label, []).extend(value.split("|"))
        found.append((m.group(1), wanted))
    return found


def used_in_rules(path):
    out = []
    for group in yaml.safe_load(path.read_text())["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            texts = [rule["expr"], *rule.get("annotations", {}).values()]
            for text in texts:
                out += [(metric, labels, f"{path.name}: {name}") for metric, labels in references(text)]
    return out


def used_in_dashboard(path):
    out = []
    dashboard = json.loads(path.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out += [(m, l, f"{path.name}: panel {panel['title']!r}") for m, l in references(target["expr"])]
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        out += [(m, l, f"{path.name}: variable {var['name']}") for m, l in references(text)]
    return out


def missing(exported, metric, labels):
    """What of this reference the scrape lacks: [] when it is all exported."""
    if metric not in exported:
        return [metric]
    gaps = []
    for label, values in labels.items():
        have = exported[metric].get(label, set())
        gaps += [f'{metric}{{{label}="{v}"}}' for v in values if v not in have]
    return gaps


def scrape(binary):
    """Runs the sidecar, returns (the /metrics text, admin URL, process)."""
    tmp = tempfile.mkdtemp(prefix="wa-metrics-check-")
    closed = free_port()
    config = pathlib.Path(tmp, "sidecar.toml")
    config.write_text(
        f"""
[gateway]
url = "ws://127.0.0.1:{closed}/ws/{{tenant}}"
[backend]
url = "http://127.0.0.1:{closed}"
[tenants]
ids = ["metrics-check-1", "metrics-check-2"]
[state]
dir = "{tmp}/state"
[admin]
listen = "127.0.0.1:0"
[log]
format = "json"
"""
    )
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "INTERNAL_SHARED_SECRET": "metrics-check-dummy",
           "RUST_LOG": "info"}
    proc = subprocess.Popen([binary, "run", "--config", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    found = {}
    log = []

    def read():
        for line in proc.stderr:
            log.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            fields = event.get("fields", {})
            if fields.get("message") == "admin API listening" and "admin" in fields:
                found["admin"] = fields["admin"]

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 30
    while "admin" not in found and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if "admin" not in found:
        proc.kill()
        raise SystemExit("the sidecar did not report its admin address:\n" + "".join(log[-20:]))
    admin = f"http://{found['admin']}"
    with urllib.request.urlopen(f"{admin}/metrics", timeout=10) as response:
        return response.read().decode(), admin, proc


def main(binary, directory):
    directory = pathlib.Path(directory)
    failed = []
    passed = 0

    text, admin, proc = scrape(binary)
    try:
        exported = parse_exposition(text)
        # The healthcheck subcommand, against the running process.
        result = subprocess.run([binary, "healthcheck", "--admin", admin], capture_output=True, text=True, timeout=15)
        if result.returncode == 0:
            passed += 1
        else:
            failed.append(f"`healthcheck --admin {admin}` exited {result.returncode} while the sidecar runs: {result.stderr.strip()}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            failed.append("the sidecar did not stop within 20 s of SIGTERM")
    result = subprocess.run([binary, "healthcheck", "--admin", admin], capture_output=True, text=True, timeout=15)
    if result.returncode != 0:
        passed += 1
    else:
        failed.append("`healthcheck` exited 0 after the sidecar had stopped")
    print(f"scraped {admin}/metrics: {len(exported)} sample names; healthcheck checked up and down")

    # The checker itself: a made-up name and a made-up label value must be reported.
    probe = missing(exported, "wa_sidecar_no_such_metric", {}) + missing(exported, "wa_sidecar_links", {"state": ["sideways"]})
    if probe == ["wa_sidecar_no_such_metric", 'wa_sidecar_links{state="sideways"}']:
        passed += 1
    else:
        failed.append(f"self-test: made-up references were not all reported missing: {probe}")

    pending_file = directory / "pending-metrics.txt"
    pending = {
        line.split("#", 1)[0].strip()
        for line in pending_file.read_text().splitlines()
        if line.split("#", 1)[0].strip()
    } if pending_file.exists() else set()

    uses = used_in_rules(directory / "alerts.yaml") + used_in_dashboard(directory / "dashboard.json")
    if not uses:
        failed.append("no wa_sidecar_* reference found in the rules and the dashboard")
    gaps = {}
    for metric, labels, where in uses:
        for gap in missing(exported, metric, labels):
            gaps.setdefault(gap, set()).add(where)
        passed += 1
    for gap, wheres in sorted(gaps.items()):
        if gap in pending:
            print(f"PENDING: {gap} is not exported yet (listed in pending-metrics.txt); used by {', '.join(sorted(wheres))}")
        else:
            failed.append(f"{gap} is not exported by the sidecar; used by {', '.join(sorted(wheres))}")
    for name in sorted(pending - set(gaps)):
        if any(name == m or name.startswith(m + "{") for m, _, _ in uses):
            failed.append(f"{name} is exported now: remove it from pending-metrics.txt")
        else:
            failed.append(f"{name} is listed in pending-metrics.txt but nothing uses it: remove it")

    # Exported but shown nowhere: not a failure (a new metric may not need a panel), but said.
    used_names = {m for m, _, _ in uses}
    for name in sorted(exported):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in used_names and base + "_bucket" not in used_names and name.startswith("wa_sidecar_"):
            print(f"note: {name} is exported but no rule or panel uses it")

    for f in failed:
        print(f"FAIL: {f}", file=sys.stderr)
    print(f"metric names: {passed} passed, {len(failed)} failed, {len(set(gaps) & pending)} pending")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
