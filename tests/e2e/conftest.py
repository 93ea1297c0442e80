"""Process fixtures for the end-to-end chain test: the Baileys kit's simulated gateway (node), the
Flask kit's demo backend (python, SQLite) and the sidecar binary, each a real process on 127.0.0.1.

Every process is started through the ``procs`` fixture, which kills it at teardown whatever the
test did. Every wait is a polling loop with a deadline (:func:`wait_for`); nothing sleeps to
synchronise. When a test fails, the tail of each process's log is printed.

The sidecar binary is ``$WA_SIDECAR_BIN`` when set, else ``<target>/debug/wa-status-sidecar``,
built with ``cargo build`` when missing (``scripts/test`` runs ``cargo test`` first, which builds
it fresh). The backend is ``contrib/flask/app.py --demo`` under this interpreter (``$WA_E2E_PYTHON``
overrides), which needs the Flask kit installed as a package: run the suite with the project's venv
after ``.venv/bin/pip install ./contrib/flask``. The gateway needs ``contrib/baileys/node_modules``;
it runs with a token (``--token``), which the sidecar reads from ``GATEWAY_TOKEN``
(``gateway.token_env``). The bell is read the way a browser reads it: through the demo login's
session cookie.
"""

from __future__ import annotations

from http.cookiejar import CookieJar
import importlib.util
import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GATEWAY_SCRIPT = REPO / "contrib" / "baileys" / "sim-gateway.mjs"
BACKEND_SCRIPT = REPO / "contrib" / "flask" / "app.py"
# Made up per run; it goes to the backend and the sidecar through their environment only.
SECRET = "e2e-" + os.urandom(8).hex()
# The gateway's token: on the gateway's command line, to the sidecar through GATEWAY_TOKEN.
GATEWAY_TOKEN = "gw-" + os.urandom(8).hex()

# Deadlines, generous for a loaded 2-core machine; a passing run waits far less.
START_DEADLINE = 30.0
WAIT_DEADLINE = 20.0
STOP_DEADLINE = 5.0


def wait_for(what: str, probe, timeout: float = WAIT_DEADLINE, interval: float = 0.05):
    """Polls ``probe()`` until it returns something truthy and returns that; fails naming
    ``what`` (and the last value seen) when ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {last!r}")
        time.sleep(interval)


def free_port() -> int:
    """A port that was free a moment ago (bound and closed), for listeners that cannot take 0."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_raw(method: str, url: str, body=None, timeout: float = 5.0, headers=None, opener=None,
             data: bytes = None):
    """One HTTP request; returns (status, body bytes). Connection errors raise."""
    if data is None and body is not None:
        data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None and "Content-type" not in req.headers:
        req.add_header("Content-Type", "application/json")
    try:
        with (opener or urllib.request.build_opener()).open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def http(method: str, url: str, body=None, timeout: float = 5.0, headers=None, opener=None):
    """One HTTP request; returns (status, parsed JSON or text). Connection errors raise."""
    status, raw = http_raw(method, url, body, timeout, headers, opener)
    text = raw.decode("utf-8", "replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


class Proc:
    """One child process; stdout and stderr go to ``<dir>/<name>.log``."""

    def __init__(self, name: str, argv: list, env: dict, log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
        )

    def read_port(self) -> int:
        """Waits for the ``listening on <port>`` line both kits print once ready, then keeps
        copying stdout to the log so the pipe never fills."""
        deadline = time.monotonic() + START_DEADLINE
        buf = b""
        out = self.popen.stdout
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.name} did not print its port within {START_DEADLINE}s\n{self.tail()}")
            ready, _, _ = select.select([out], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(out.fileno(), 4096)
                if not chunk:
                    raise AssertionError(f"{self.name} exited with {self.popen.wait()} before listening\n{self.tail()}")
                buf += chunk
        line, _, rest = buf.partition(b"\n")
        self._log.write(buf)
        self._log.flush()
        text = line.decode().strip()
        assert text.startswith("listening on "), f"{self.name} printed {text!r}"
        threading.Thread(target=self._drain, daemon=True).start()
        return int(text.rsplit(" ", 1)[1])

    def _drain(self):
        try:
            for chunk in iter(lambda: os.read(self.popen.stdout.fileno(), 4096), b""):
                self._log.write(chunk)
                self._log.flush()
        except (OSError, ValueError):
            pass

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self):
        """SIGKILL and reap: the process gets no chance to clean up."""
        if self.alive():
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=STOP_DEADLINE)

    def stop(self):
        """SIGTERM, then SIGKILL if it has not exited within the deadline."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.kill9()
        if self.popen.stdout:
            self.popen.stdout.close()
        self._log.close()

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return f"--- {self.name} (last {len(text)} lines of {self.log_path})\n" + "\n".join(text)


class Procs:
    """Every process a test started, so teardown stops them all."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.all: list = []

    def spawn(self, name: str, argv: list, env: dict) -> Proc:
        # A restarted process gets its own log file.
        taken = {p.name for p in self.all}
        unique, n = name, 1
        while unique in taken:
            n += 1
            unique = f"{name}-{n}"
        proc = Proc(unique, argv, env, self.log_dir)
        self.all.append(proc)
        return proc

    def stop_all(self):
        for proc in reversed(self.all):
            proc.stop()


def base_env() -> dict:
    env = dict(os.environ)
    env.pop("INTERNAL_SHARED_SECRET", None)
    env.pop("BACKEND_INTERNAL_URL", None)
    return env


class Gateway:
    """The Baileys kit's simulated gateway: ``node sim-gateway.mjs --port 0 --token T <tenants>``."""

    def __init__(self, procs: Procs, tenants: list, initial: str = "open"):
        assert (GATEWAY_SCRIPT.parent / "node_modules" / "baileys").is_dir(), (
            "the Baileys kit's dependencies are missing: run `cd contrib/baileys && npm ci` first"
        )
        argv = ["node", str(GATEWAY_SCRIPT), "--port", "0", "--host", "127.0.0.1", "--token", GATEWAY_TOKEN,
                "--initial", initial, "--verbose", *tenants]
        self.proc = procs.spawn("gateway", argv, base_env())
        self.port = self.proc.read_port()
        self.base = f"http://127.0.0.1:{self.port}"

    def control(self, tenant: str, action: str, **fields) -> dict:
        status, body = http("POST", f"{self.base}/control/{tenant}", {"action": action, **fields},
                            headers={"Authorization": f"Bearer {GATEWAY_TOKEN}"})
        assert status == 200, f"control {tenant} {action}: {status} {body}"
        return body


class Bell:
    """One browser's view of the bell: a cookie jar logged in through the demo login."""

    def __init__(self, backend: "Backend", tenant: str):
        self.url = backend.url
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        status, body = http("POST", f"{self.url}/demo/login", {"tenant_id": tenant}, opener=self.opener)
        assert status == 200, f"demo login as {tenant}: {status} {body}"

    def read(self):
        """``GET /api/notifications``: (status, raw body bytes, parsed body)."""
        status, raw = http_raw("GET", f"{self.url}/api/notifications", opener=self.opener)
        return status, raw, json.loads(raw.decode("utf-8"))

    def notifications(self) -> list:
        status, _, body = self.read()
        assert status == 200, (status, body)
        assert body["unread_count"] == len(body["notifications"])
        return body["notifications"]


class Backend:
    """The Flask kit's demo backend: ``app.py --demo --db <sqlite> --port <port> --seed <items>``.

    Seed items are ``tenant[:owner_id[:locale]]``; the gateway's tenant id is the business id."""

    def __init__(self, procs: Procs, db: Path, seed: list, env: dict = None):
        self.procs = procs
        self.db = db
        self.seed = ",".join(seed)
        self.env = dict(env or {})
        self.port = 0
        self.proc = None
        self.start()

    def start(self):
        """Starts (or restarts, on the same port and database) the backend."""
        python = os.environ.get("WA_E2E_PYTHON", sys.executable)
        if python == sys.executable:
            assert importlib.util.find_spec("wa_status_backend"), (
                "the Flask kit is not installed: `.venv/bin/pip install ./contrib/flask`, then run"
                " .venv/bin/python -m pytest tests/e2e"
            )
        argv = [python, str(BACKEND_SCRIPT), "--demo", "--db", str(self.db), "--port", str(self.port),
                "--seed", self.seed]
        env = base_env()
        env["INTERNAL_SHARED_SECRET"] = SECRET
        env.update(self.env)
        self.proc = self.procs.spawn("backend", argv, env)
        port = self.proc.read_port()
        assert self.port in (0, port)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def login(self, tenant: str) -> Bell:
        return Bell(self, tenant)

    def _query(self, sql: str, args=()) -> list:
        # Read the backend's own database directly: it works while the backend is down too.
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(sql, args)]
        finally:
            conn.close()

    def reminders(self, tenant: str) -> list:
        """The tenant's reminder rows (the original CRMReminder shape) with what the kit keeps
        beside them (language, reason, idempotency key), oldest first."""
        return self._query(
            "SELECT r.id, r.tenant_id, r.lead_id, r.title, r.note, r.priority, r.type, r.created_by,"
            " CASE WHEN r.is_completed THEN 'completed' ELSE 'open' END AS status,"
            " i.lang, i.reason, i.idempotency_key"
            " FROM wa_status_reminders r LEFT JOIN wa_status_reminder_info i ON i.reminder_id = CAST(r.id AS TEXT)"
            " WHERE r.tenant_id = ? ORDER BY r.id",
            (tenant,),
        )

    def status(self, tenant: str):
        """The last status the backend recorded for ``tenant`` (None before any call)."""
        rows = self._query(
            "SELECT status, reason FROM wa_status_tenant_status WHERE tenant_id = ? AND status IS NOT NULL",
            (tenant,),
        )
        return rows[0] if rows else None

    def call_count(self) -> int:
        """Webhook calls the backend processed: each transition carries a new Idempotency-Key."""
        return self._query("SELECT COUNT(*) AS n FROM wa_status_idempotency")[0]["n"]


class Sidecar:
    """The sidecar binary: ``wa-status-sidecar run --config <toml>``."""

    def __init__(self, procs: Procs, binary: Path, config: Path, admin_port: int):
        self.procs = procs
        self.binary = binary
        self.config = config
        self.admin = f"http://127.0.0.1:{admin_port}"
        self.proc = None
        self.start()

    def start(self):
        env = base_env()
        env["INTERNAL_SHARED_SECRET"] = SECRET
        env["GATEWAY_TOKEN"] = GATEWAY_TOKEN
        env.setdefault("RUST_LOG", "info,wa_status_sidecar=debug")
        self.proc = self.procs.spawn("sidecar", [str(self.binary), "run", "--config", str(self.config)], env)

        def live():
            assert self.proc.alive(), f"the sidecar exited with {self.proc.popen.returncode}\n{self.proc.tail()}"
            try:
                return http("GET", f"{self.admin}/livez", timeout=1)[0] == 200
            except OSError:
                return False

        wait_for("the sidecar's /livez", live, timeout=START_DEADLINE)

    def tenant(self, tenant: str) -> dict:
        status, body = http("GET", f"{self.admin}/tenants/{tenant}")
        assert status == 200, f"/tenants/{tenant}: {status} {body}"
        return body

    def tenants(self) -> list:
        status, body = http("GET", f"{self.admin}/tenants")
        assert status == 200, f"/tenants: {status} {body}"
        return body

    def metric(self, name: str) -> float:
        """The value of one unlabelled sample from /metrics (0 when absent)."""
        status, text = http("GET", f"{self.admin}/metrics")
        assert status == 200
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0


def sidecar_binary() -> Path:
    explicit = os.environ.get("WA_SIDECAR_BIN")
    if explicit:
        path = Path(explicit).resolve()
        assert path.is_file() and os.access(path, os.X_OK), f"WA_SIDECAR_BIN={explicit} is not an executable file"
        return path
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if not target.is_absolute():
        target = REPO / target
    path = target / "debug" / "wa-status-sidecar"
    if not path.is_file():
        subprocess.run(["cargo", "build", "--locked", "--bin", "wa-status-sidecar"], cwd=REPO, check=True)
    assert path.is_file(), f"cargo build did not produce {path}"
    return path


@pytest.fixture(scope="session")
def sidecar_bin() -> Path:
    return sidecar_binary()


@pytest.fixture
def procs(tmp_path, request):
    procs = Procs(tmp_path)
    yield procs
    procs.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for proc in procs.all:
            print(proc.tail(), file=sys.stderr)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


@pytest.fixture
def chain(procs, tmp_path, sidecar_bin):
    """A factory: ``chain(tenants, debounce, seed=None)`` starts gateway, backend and sidecar for
    those tenants; ``seed`` (default: the tenants) gives the backend's owners and locales."""

    class Chain:
        def __init__(self, tenants: list, debounce: str, seed: list = None):
            self.tenants = tenants
            self.gateway = Gateway(procs, tenants)
            self.backend = Backend(procs, tmp_path / "backend.sqlite", seed or tenants)
            self.state_dir = tmp_path / "state"
            self.config = tmp_path / "sidecar.toml"
            ids = ", ".join(json.dumps(t) for t in tenants)
            admin_port = free_port()
            self.config.write_text(
                f"""
[gateway]
mode = "per-tenant"
url = "ws://127.0.0.1:{self.gateway.port}/ws/{{tenant}}"
state_url = "http://127.0.0.1:{self.gateway.port}/sessions/{{tenant}}/status"
token_env = "GATEWAY_TOKEN"

[backend]
url = "{self.backend.url}"

{debounce}

[tenants]
ids = [{ids}]

[state]
dir = "{self.state_dir}"

[admin]
listen = "127.0.0.1:{admin_port}"
"""
            )
            self.sidecar = Sidecar(procs, sidecar_bin, self.config, admin_port)

    return Chain
