"""Checks compose.yaml without a container engine (none runs here), in two parts.

Wiring (always): the services and their shared network namespace, ports published on loopback
only, the pinned command lines (INTERFACES.md: the sim gateway's and the Flask demo's flags),
the ports, tenants, token and secret agreeing between the services and the sidecar's
deploy/compose/sidecar.toml, that file passing the real `wa-status-sidecar check`, the image
names and Dockerfiles. (The compose-spec JSON schema is checked by scripts/check-compose.)

Smoke run (--smoke): every service's command, environment and healthcheck exactly as written in
compose.yaml, run as real processes in a private network namespace (what
`network_mode: service:gateway` gives the containers), started in depends_on order with their
healthchecks awaited. Container paths are mapped to the repository: /app is the repository
root (each image copies its files to the same relative path), `python` is .venv's,
/usr/local/bin/wa-status-sidecar is the built binary, the named volumes are temp dirs. Then a
business logs in, its session is logged out through the gateway's control API, the bell page's
/api/notifications shows the Hebrew reminder, and a reconnect takes it away.

Usage: check_compose.py REPO BINARY [--smoke]
"""

import http.cookiejar
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from urllib.parse import urlparse

import yaml

PASSED = []
FAILED = []


def check(ok, what, detail=""):
    (PASSED if ok else FAILED).append(what)
    print(f"{'ok' if ok else 'FAIL'}: {what}" + (f"\n{detail}" if detail and not ok else ""),
          file=sys.stdout if ok else sys.stderr, flush=True)
    return ok


def interpolate(value):
    """compose's ${VAR:-default} with this process's environment."""
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), value)


def env_of(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: interpolate(str(v)) for k, v in env.items()}


def flag(command, name, default=None):
    return command[command.index(name) + 1] if name in command else default


def load(repo):
    compose = yaml.safe_load((repo / "compose.yaml").read_text())
    return compose, compose["services"]


def wiring(repo, binary):
    compose, services = load(repo)
    check(set(services) == {"gateway", "backend", "sidecar", "bell"}, "four services: gateway, backend, sidecar, bell")
    gateway, backend, sidecar, bell = (services[n] for n in ("gateway", "backend", "sidecar", "bell"))
    check("network_mode" not in gateway, "the gateway owns the network namespace")
    check(all(services[n].get("network_mode") == "service:gateway" for n in ("backend", "sidecar", "bell")),
          "backend, sidecar and bell join the gateway's network namespace")
    published = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            host_ip, host_port, container_port = str(port).split(":")
            published[int(container_port)] = (host_ip, int(host_port))
    check(all(s.get("ports") is None for n, s in services.items() if n != "gateway"), "only the namespace owner publishes ports")
    check(published and all(ip == "127.0.0.1" for ip, _ in published.values()), "every port is published on the host's loopback only")
    for name, service in services.items():
        dockerfile = repo / service["build"]["context"] / service["build"]["dockerfile"]
        check(dockerfile.is_file(), f"{name}: its Dockerfile {service['build']['dockerfile']} exists")
        check("healthcheck" in service or name == "sidecar", f"{name}: has a healthcheck (the sidecar's is its image's)")

    # The gateway: the sim, pinned CLI, token from the environment (not in the command line).
    gw_cmd = gateway["command"]
    check(gw_cmd[:2] == ["node", "contrib/baileys/sim-gateway.mjs"], "gateway runs contrib/baileys/sim-gateway.mjs")
    check("--token" not in gw_cmd and "--insecure-no-token" not in gw_cmd and env_of(gateway).get("GATEWAY_TOKEN"),
          "gateway: a token, from GATEWAY_TOKEN (not on the command line)")
    gw_port = int(flag(gw_cmd, "--port"))
    gw_tenants = [a for i, a in enumerate(gw_cmd[2:], 2) if not a.startswith("--") and not gw_cmd[i - 1].startswith("--")]

    # The backend: the Flask demo, loopback only.
    be_cmd = backend["command"]
    check(be_cmd[:2] == ["python", "contrib/flask/app.py"] and "--demo" in be_cmd, "backend runs contrib/flask/app.py --demo")
    check(flag(be_cmd, "--host", "127.0.0.1") == "127.0.0.1", "backend binds loopback (--demo refuses anything else)")
    be_port = int(flag(be_cmd, "--port"))
    seeded = [item.split(":")[0] for item in flag(be_cmd, "--seed", "").split(",") if item]
    check(env_of(backend).get("INTERNAL_SHARED_SECRET"), "backend: INTERNAL_SHARED_SECRET set")

    # The bell page: serves the built demo, /api (and /demo) to the backend on loopback.
    bell_cmd = bell["command"]
    check(bell_cmd[:2] == ["node", "tests/browser/serve.mjs"], "bell runs tests/browser/serve.mjs")
    api = urlparse(flag(bell_cmd, "--api"))
    check(api.hostname == "127.0.0.1" and api.port == be_port, f"bell proxies to the backend's port {be_port} on loopback")
    check(int(flag(bell_cmd, "--port")) in published, "the bell page's port is published")

    # The sidecar: the repository's image, its config mounted, the same secrets.
    check(sidecar["build"]["dockerfile"] == "Dockerfile", "sidecar is built from the repository's Dockerfile")
    with open(repo / "Cargo.toml", "rb") as f:
        version = tomllib.load(f)["package"]["version"]
    check(sidecar.get("image") == f"wa-status-sidecar:{version}", f"sidecar image is wa-status-sidecar:{version}")
    mounts = {m.split(":")[1]: m.split(":")[0] for m in sidecar.get("volumes", [])}
    sc_args = sidecar["command"]
    config_path = flag(sc_args, "--config")
    check(sc_args[0] == "run" and config_path in mounts, "sidecar runs `run --config` on a mounted file")
    toml_path = repo / mounts.get(config_path, "missing")
    config = tomllib.loads(toml_path.read_text())
    url = urlparse(config["gateway"]["url"].replace("{tenant}", "t"))
    check(url.hostname == "127.0.0.1" and url.port == gw_port, f"sidecar reaches the gateway on 127.0.0.1:{gw_port}")
    backend_url = urlparse(config["backend"]["url"])
    check(backend_url.hostname == "127.0.0.1" and backend_url.port == be_port, f"sidecar calls the backend on 127.0.0.1:{be_port}")
    sc_env = env_of(sidecar)
    token_env = config["gateway"].get("token_env")
    check(token_env and sc_env.get(token_env) == env_of(gateway)["GATEWAY_TOKEN"], "sidecar sends the gateway's token")
    check(sc_env.get("INTERNAL_SHARED_SECRET") == env_of(backend)["INTERNAL_SHARED_SECRET"], "sidecar and backend share the secret")
    check(sorted(config["tenants"]["ids"]) == sorted(gw_tenants) == sorted(seeded),
          "the same tenants in the sim, the sidecar and the backend's seed", f"{gw_tenants} / {config['tenants']['ids']} / {seeded}")
    check(config["state"]["dir"] in mounts and mounts[config["state"]["dir"]] in (compose.get("volumes") or {}),
          "state.dir is a named volume")
    admin_port = int(config["admin"]["listen"].rsplit(":", 1)[1])
    check(admin_port in published, f"the admin API's port {admin_port} is published")
    result = subprocess.run([binary, "check", "--config", str(toml_path)], capture_output=True, text=True, timeout=30,
                            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **sc_env})
    out = result.stdout + result.stderr
    lines = out.splitlines()
    warnings = []
    if "warnings:" in lines:
        for line in lines[lines.index("warnings:") + 1:]:
            if not line.strip().startswith("- "):
                break
            warnings.append(line.strip()[2:])
    check(result.returncode == 0, "`wa-status-sidecar check` accepts deploy/compose/sidecar.toml", out)
    check(len(warnings) == 1 and "not a loopback address" in warnings[0],
          "check warns about the intended non-loopback admin.listen and nothing else", out)
    return compose


# ---- the smoke run ------------------------------------------------------------------------------

class Service:
    def __init__(self, name, argv, env, log):
        self.name, self.argv, self.log = name, argv, log
        self.proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def tail(self, lines=25):
        self.log.flush()
        return f"--- {self.name}: {' '.join(self.argv)}\n" + "".join(open(self.log.name, errors="replace").readlines()[-lines:])


def call(method, url, body=None, headers=None, opener=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"content-type": "application/json", **(headers or {})})
    try:
        with (opener or urllib.request.build_opener()).open(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def eventually(what, probe, timeout=30.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except (OSError, ValueError) as e:
            last = e
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def smoke(repo, binary):
    compose, services = load(repo)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="wa-compose-"))
    volumes = {name: tmp / "volumes" / name for name in compose.get("volumes") or {}}
    for path in volumes.values():
        path.mkdir(parents=True)
    python = str(repo / ".venv/bin/python")
    dockerfile = (repo / "Dockerfile").read_text().replace("\\\n", " ")
    image_health = json.loads(re.search(r"^HEALTHCHECK .*?CMD (\[.*\])\s*$", dockerfile, re.M).group(1))
    image_entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.M).group(1))

    mounts = []  # (container path, path here), from every service's volumes
    for service in services.values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            mounts.append((target, volumes[source] if source in volumes else repo / source))

    def host_path(path):
        """A container path, on this machine."""
        for target, base in mounts:
            if path == target or path.startswith(target + "/"):
                return str(base) + path[len(target):]
        return path

    def host_argv(argv):
        out = []
        for arg in argv:
            if arg == "python":
                arg = python
            elif arg == image_entry[0]:
                arg = str(binary)
            elif arg.startswith("/"):
                arg = host_path(arg)
            out.append(arg)
        return out

    # The sidecar's config names container paths too (state.dir): a copy with them mapped.
    sidecar = services["sidecar"]
    for mount in sidecar.get("volumes", []):
        source, target = mount.split(":")[:2]
        if target.endswith(".toml"):
            text = (repo / source).read_text()
            state_dir = tomllib.loads(text)["state"]["dir"]
            mapped = text.replace(f'"{state_dir}"', f'"{host_path(state_dir)}"')
            check(mapped != text, "smoke: the sidecar config's state.dir is mapped to the volume's temp dir")
            copy = tmp / "sidecar.toml"
            copy.write_text(mapped)
            host_config = str(copy)

    base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp), "LANG": "C.UTF-8"}
    running = {}
    order = []
    pending = dict(services)
    while pending:  # depends_on order
        ready = [n for n, s in pending.items() if all(d in running for d in (s.get("depends_on") or {}))]
        assert ready, f"depends_on has a cycle among {sorted(pending)}"
        for name in sorted(ready):
            service = pending.pop(name)
            for dep, cond in (service.get("depends_on") or {}).items():
                if cond.get("condition") == "service_healthy":
                    wait_healthy(dep, running[dep], services[dep], host_argv, image_health)
            argv = list(service["command"])
            if name == "sidecar":
                argv = [str(binary)] + [host_config if a == flag(argv, "--config") else a for a in argv]
            else:
                argv = host_argv(argv)
            env = {**base_env, **env_of(service)}
            running[name] = Service(name, argv, env, open(tmp / f"{name}.log", "w+"))
            order.append(name)
    try:
        for name in order:
            wait_healthy(name, running[name], services[name], host_argv, image_health)
        scenario(compose, services, running)
    except AssertionError as e:
        check(False, f"smoke: {e}", "\n".join(s.tail() for s in running.values()))
    finally:
        for name in reversed(order):
            proc = running[name].proc
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        code = running["sidecar"].proc.returncode if "sidecar" in running else None
        check(code == 0, f"smoke: the sidecar exits 0 on SIGTERM (exit {code})", running["sidecar"].tail() if "sidecar" in running else "")
        shutil.rmtree(tmp, ignore_errors=True)


HEALTHY = {}


def wait_healthy(name, service_proc, service, host_argv, image_health):
    if HEALTHY.get(name):
        return
    test = (service.get("healthcheck") or {}).get("test") or ["CMD"] + image_health
    assert test[0] == "CMD", f"{name}: healthcheck must be exec form (CMD), not {test[0]}"
    argv = host_argv(test[1:])
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env_of(service)}

    def probe():
        if service_proc.proc.poll() is not None:
            raise AssertionError(f"{name} exited with {service_proc.proc.returncode}")
        return subprocess.run(argv, env=env, capture_output=True, timeout=10).returncode == 0

    start = time.monotonic()
    eventually(f"{name}'s healthcheck ({' '.join(argv)[:80]})", probe, timeout=60)
    HEALTHY[name] = True
    check(True, f"smoke: {name} healthy ({time.monotonic() - start:.1f} s)")


def scenario(compose, services, running):
    # Inside the namespace the services are on their container ports, as they are to each other.
    gw_port = int(flag(services["gateway"]["command"], "--port"))
    be_port = int(flag(services["backend"]["command"], "--port"))
    bell = f"http://127.0.0.1:{int(flag(services['bell']['command'], '--port'))}"
    token = env_of(services["gateway"])["GATEWAY_TOKEN"]
    tenant = "business_1"
    catalogue = json.loads((REPO / "contrib/i18n/bell-messages.json").read_text())

    status, page = call("GET", f"{bell}/")
    check(status == 200 and 'id="root"' in page, "smoke: the bell page serves the built demo")
    assets = re.findall(r'(?:src|href)="(/assets/[^"]+)"', page)
    check(assets and all(call("GET", bell + a)[0] == 200 for a in assets), f"smoke: its {len(assets)} assets load")

    jar = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    status, _ = call("POST", f"http://127.0.0.1:{be_port}/demo/login", {"tenant_id": tenant}, opener=jar)
    check(status == 200, f"smoke: demo login as {tenant}")

    def notifications():
        status, body = call("GET", f"{bell}/api/notifications", opener=jar)
        assert status == 200, f"/api/notifications through the bell page answered {status}: {body[:200]}"
        return json.loads(body)

    sidecar_config = tomllib.loads((REPO / "deploy/compose/sidecar.toml").read_text())
    admin = "http://127.0.0.1:" + sidecar_config["admin"]["listen"].rsplit(":", 1)[1]

    def reported():
        status, body = call("GET", f"{admin}/tenants/{tenant}")
        return status == 200 and ((json.loads(body).get("reported") or {}).get("status"))

    eventually(f"the sidecar to report {tenant} connected", lambda: reported() == "connected")
    check(notifications()["unread_count"] == 0, "smoke: no reminder while the session is up")

    control = f"http://127.0.0.1:{gw_port}/control/{tenant}"
    auth = {"authorization": f"Bearer {token}"}
    check(call("POST", control, {"action": "logout"}, auth)[0] == 200, "smoke: logout through the gateway's control API")
    start = time.monotonic()
    item = eventually("the reminder on the bell page", lambda: next(
        (n for n in notifications()["notifications"] if n["type"] == "system_whatsapp_disconnect"), None), timeout=15)
    check(item["lang"] == "he" and item["title"] == catalogue["he"]["title"],
          f"smoke: the Hebrew reminder is on the bell page after {time.monotonic() - start:.1f} s", json.dumps(item, ensure_ascii=False))
    status, metrics = call("GET", f"{admin}/metrics")
    check(status == 200 and 'wa_sidecar_transitions_total{status="disconnected"} 1' in metrics,
          "smoke: the sidecar's /metrics counts the transition")

    check(call("POST", control, {"action": "reconnect"}, auth)[0] == 200, "smoke: reconnect through the gateway's control API")
    start = time.monotonic()
    eventually("the reminder to go away", lambda: notifications()["unread_count"] == 0, timeout=20)
    check(True, f"smoke: the reminder is completed after the reconnect ({time.monotonic() - start:.1f} s)")


REPO = None


def main(argv):
    global REPO
    REPO = pathlib.Path(argv[0]).resolve()
    binary = pathlib.Path(argv[1]).resolve()
    wiring(REPO, str(binary))
    if "--smoke" in argv:
        smoke(REPO, binary)
    print(f"compose: {len(PASSED)} passed, {len(FAILED)} failed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
