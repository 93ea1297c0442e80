"""The demo backend (contrib/flask/app.py) as a real process: the ``--demo`` switch, loopback
only, the demo login, and the webhook with and without signing secrets."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import select
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import EN, HE, KIT_DIR, signed_headers, whsec
from wa_status_backend import WEBHOOK_PATH

APP_PY = KIT_DIR / "app.py"
SECRET = "demo-" + os.urandom(6).hex()


def run(args, env_extra=None, timeout=30):
    env = {k: v for k, v in os.environ.items() if k not in ("INTERNAL_SHARED_SECRET", "WEBHOOK_SIGNING_SECRET")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, str(APP_PY), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_without_demo_it_refuses_to_start_naming_the_flag(tmp_path):
    r = run(["--db", str(tmp_path / "x.db"), "--port", "0"], {"INTERNAL_SHARED_SECRET": SECRET})
    assert r.returncode == 2
    assert "--demo" in r.stderr and "init_app" in r.stderr
    assert r.stdout == "" and not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.invalid"])
def test_demo_refuses_a_non_loopback_host(tmp_path, host):
    r = run(["--demo", "--host", host, "--db", str(tmp_path / "x.db"), "--port", "0"],
            {"INTERNAL_SHARED_SECRET": SECRET})
    assert r.returncode == 2
    assert "loopback" in r.stderr and host in r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize("args, env, message", [
    ([], {}, "INTERNAL_SHARED_SECRET"),
    (["--seed", "business_1:owner"], {"INTERNAL_SHARED_SECRET": SECRET}, "owner id must be a number"),
    (["--seed", "business_1:1:fr"], {"INTERNAL_SHARED_SECRET": SECRET}, "locale 'fr'"),
    (["--seed", "business_1:1:he:x"], {"INTERNAL_SHARED_SECRET": SECRET}, "tenant[:owner_id[:locale]]"),
    ([], {"INTERNAL_SHARED_SECRET": SECRET, "WEBHOOK_SIGNING_SECRET": "my-signing-password"}, "whsec_"),
])
def test_bad_settings_exit_2_naming_the_fix(tmp_path, args, env, message):
    r = run(["--demo", "--db", str(tmp_path / "x.db"), "--port", "0", *args], env)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert "my-signing-password" not in r.stderr


class Demo:
    def __init__(self, tmp_path, seed, env_extra=None):
        env = {k: v for k, v in os.environ.items() if k != "WEBHOOK_SIGNING_SECRET"}
        env["INTERNAL_SHARED_SECRET"] = SECRET
        env.update(env_extra or {})
        # stderr to a file: the request log can never fill a pipe nobody reads
        self.log = open(tmp_path / f"demo-{os.urandom(3).hex()}.log", "w+b")
        self.proc = subprocess.Popen(
            [sys.executable, str(APP_PY), "--demo", "--db", str(tmp_path / "demo.db"), "--port", "0",
             "--host", "localhost", "--seed", seed],
            stdout=subprocess.PIPE, stderr=self.log, env=env,
        )
        deadline = time.monotonic() + 30
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            assert left > 0 and self.proc.poll() is None, self.log_text()
            if select.select([self.proc.stdout], [], [], min(left, 0.5))[0]:
                line += os.read(self.proc.stdout.fileno(), 1) or b"\n"
        assert line.startswith(b"listening on "), (line, self.log_text())
        self.base = f"http://127.0.0.1:{int(line.split()[-1])}"

    def log_text(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-4000:]

    def opener(self):
        return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def call(self, path, body=None, headers=None, opener=None, raw=None, method=None):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.base + path, data=data, method=method or ("GET" if data is None else "POST"),
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with (opener or urllib.request.build_opener()).open(req, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stop(self):
        self.proc.terminate()
        try:
            assert self.proc.wait(timeout=10) == 0
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.stdout.close()
            self.log.close()


@pytest.fixture
def demo(tmp_path):
    started = []

    def start(seed="business_1,business_2:42:en", env_extra=None):
        d = Demo(tmp_path, seed, env_extra)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def webhook(d, body, key, headers=None):
    return d.call(WEBHOOK_PATH, body, {"X-INTERNAL-SECRET": SECRET, "Idempotency-Key": key, **(headers or {})})


def test_the_demo_login_scopes_the_bell_to_one_business(demo):
    d = demo()
    assert d.call("/healthz") == (200, b'{"ok": true}')
    assert webhook(d, {"tenant_id": "business_1", "status": "disconnected", "reason": "logged out"}, "k1")[0] == 200
    assert webhook(d, {"tenant_id": "business_2", "status": "disconnected", "reason": "logged out"}, "k2")[0] == 200
    assert webhook(d, {"tenant_id": "business_2", "status": "connected", "reason": None}, "k1")[0] == 409

    status, body = d.call("/api/notifications")
    assert status == 401 and json.loads(body) == {"ok": False, "error": "unauthorized"}

    he = d.opener()
    assert d.call("/demo/login", {"tenant_id": "business_1"}, opener=he) == (200, b'{"ok": true, "tenant_id": "business_1"}')
    status, raw = d.call("/api/notifications?tenant_id=business_2", opener=he)
    assert status == 200
    assert HE["title"].encode() in raw and HE["note"].encode() in raw and b"\\u" not in raw
    [n] = json.loads(raw)["notifications"]
    assert set(n) == {"id", "type", "priority", "title", "note", "created_at", "lang"} and n["lang"] == "he"

    en = d.opener()
    assert d.call("/demo/login", {"tenant_id": "business_2"}, opener=en)[0] == 200
    [n2] = json.loads(d.call("/api/notifications", opener=en)[1])["notifications"]
    assert (n2["title"], n2["note"], n2["lang"]) == (EN["title"], EN["note"], "en")

    assert d.call("/demo/login", {"tenant_id": "business_3"})[0] == 404
    assert d.call("/demo/login", raw=b"tenant_id=business_1", headers={"Content-Type": "application/x-www-form-urlencoded"})[0] == 400
    assert d.call("/demo/login", {"tenant_id": ["business_1"]})[0] == 400

    assert d.call("/demo/logout", {}, opener=he)[0] == 200
    assert d.call("/api/notifications", opener=he)[0] == 401

    state = json.loads(d.call("/demo/state")[1])
    assert [(b["tenant_id"], b["owner_id"], b["locale"]) for b in state["businesses"]] == [
        ("business_1", 1, "he"), ("business_2", 42, "en")]
    assert {s["tenant_id"]: s["status"] for s in state["statuses"]} == {"business_1": "disconnected",
                                                                         "business_2": "disconnected"}
    assert [(r["tenant_id"], r["lang"], r["created_by"], r["reason"]) for r in state["reminders"]] == [
        ("business_1", "he", 1, "logged out"), ("business_2", "en", 42, "logged out")]
    assert state["idempotency_keys"] == 2


def test_a_restart_logs_everyone_out(demo):
    d = demo()
    o = d.opener()
    assert d.call("/demo/login", {"tenant_id": "business_1"}, opener=o)[0] == 200
    assert d.call("/api/notifications", opener=o)[0] == 200
    d.stop()
    d2 = demo()
    d.base = d2.base
    assert d.call("/api/notifications", opener=o)[0] == 401  # the old cookie's key died with the process


def test_signed_webhooks_when_a_signing_secret_is_set(demo):
    old, new = whsec(os.urandom(32)), whsec(os.urandom(32))
    d = demo(env_extra={"WEBHOOK_SIGNING_SECRET": f"{new}\n{old}"})
    body = json.dumps({"tenant_id": "business_1", "status": "disconnected", "reason": "logged out"}).encode()
    assert d.call(WEBHOOK_PATH, raw=body, headers={"X-INTERNAL-SECRET": SECRET, "Idempotency-Key": "e1"})[0] == 401
    signed = signed_headers([old], body, msg_id="e1")
    assert d.call(WEBHOOK_PATH, raw=body, headers={"X-INTERNAL-SECRET": SECRET, "Idempotency-Key": "e1", **signed})[0] == 200
    stale = signed_headers([new], body, msg_id="e2", timestamp=int(time.time()) - 600)
    status, answer = d.call(WEBHOOK_PATH, raw=body, headers={"X-INTERNAL-SECRET": SECRET, **stale})
    assert status == 401 and b"tolerance" in answer


def test_hostile_bodies_over_the_wire_are_400_and_the_server_stays_up(demo):
    """What the test client cannot show: a chunked body with no Content-Length, larger than the
    limit, and a nesting bomb, through a real server socket."""
    import http.client
    from urllib.parse import urlsplit

    d = demo()
    host, port = urlsplit(d.base).hostname, urlsplit(d.base).port

    def chunked(body: bytes, size: int = 8192):
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.putrequest("POST", WEBHOOK_PATH)
            for name, value in (("X-INTERNAL-SECRET", SECRET), ("Content-Type", "application/json"),
                                ("Transfer-Encoding", "chunked")):
                conn.putheader(name, value)
            conn.endheaders()
            for i in range(0, len(body), size):
                piece = body[i:i + size]
                conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            conn.send(b"0\r\n\r\n")
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    status, answer = chunked(b"[" * (1024 * 1024))
    assert status == 400 and "too large" in answer["message"]
    status, answer = chunked(b"[" * 60000)
    assert status == 400 and "nests deeper" in answer["message"]
    ok = json.dumps({"tenant_id": "business_1", "status": "disconnected", "reason": "x"}).encode()
    assert chunked(ok, size=7) == (200, {"ok": True})  # split into tiny chunks: read whole
    assert webhook(d, {"tenant_id": "business_1", "status": "connected", "reason": None}, "z")[0] == 200
    assert d.call("/healthz")[0] == 200


# ------------------------------------------------------------------ DNS rebinding

# Names a web page can make a browser send to 127.0.0.1 (DNS rebinding), and malformed ones.
NOT_LOOPBACK = ["evil.example:{port}", "evil.example", "localhost.evil.example:{port}", "127.0.0.1.nip.io:{port}",
                "localhost:80@evil.example", "localhost:", "::1", "[::1]evil.example", "[localhost]:{port}",
                "0.0.0.0:{port}", "192.0.2.10:{port}", ""]
LOOPBACK = ["localhost:{port}", "LocalHost:{port}", "localhost.:{port}", "localhost", "127.0.0.1:{port}",
            "127.0.0.1", "127.3.2.1:{port}", "[::1]:{port}", "[::1]"]


def call_with_host(d, method, path, host, body=None, headers=None):
    """One request to the demo's socket with ``host`` as the Host header, whatever it says."""
    import http.client
    from urllib.parse import urlsplit

    conn = http.client.HTTPConnection("127.0.0.1", urlsplit(d.base).port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        data = b"" if body is None else json.dumps(body).encode()
        for name, value in {"Content-Type": "application/json", "Content-Length": str(len(data)),
                            **(headers or {})}.items():
            conn.putheader(name, value)
        conn.endheaders(data)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Set-Cookie"), resp.read()
    finally:
        conn.close()


def test_the_demo_answers_only_requests_addressed_to_a_loopback_name(demo):
    """DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 reaches the
    demo's socket, but its requests say Host: evil.example. None of them is answered: no state
    read, no login, no webhook applied."""
    d = demo()
    port = int(d.base.rsplit(":", 1)[1])
    down = {"tenant_id": "business_1", "status": "disconnected", "reason": "logged out"}
    for template in NOT_LOOPBACK:
        host = template.format(port=port)
        for method, path, body, headers in [
            ("GET", "/demo/state", None, None),
            ("POST", "/demo/login", {"tenant_id": "business_2"}, None),
            ("GET", "/api/notifications", None, None),
            ("GET", "/healthz", None, None),
            ("GET", "/no-such-page", None, None),
            ("POST", WEBHOOK_PATH, down, {"X-INTERNAL-SECRET": SECRET, "Idempotency-Key": "k-" + host}),
        ]:
            status, cookie, raw = call_with_host(d, method, path, host, body, headers)
            assert status == 403, (host, path, status, raw)
            answer = json.loads(raw)
            assert answer["error"] == "untrusted_host" and "127.0.0.1" in answer["message"], answer
            assert cookie is None and b"business_" not in raw
    assert "refused a request for Host '' from 127.0.0.1" in d.log_text()  # the last one, logged

    state = json.loads(d.call("/demo/state")[1])  # through 127.0.0.1: nothing happened
    assert state["statuses"] == [] and state["reminders"] == [] and state["idempotency_keys"] == 0

    for template in LOOPBACK:
        host = template.format(port=port)
        assert call_with_host(d, "GET", "/healthz", host)[0] == 200, host
    status, cookie, _ = call_with_host(d, "POST", "/demo/login", f"[::1]:{port}", {"tenant_id": "business_1"})
    assert status == 200 and cookie and cookie.startswith("wa_demo_session=")
    assert call_with_host(d, "POST", WEBHOOK_PATH, f"localhost:{port}", down,
                          {"X-INTERNAL-SECRET": SECRET, "Idempotency-Key": "k-ok"})[0] == 200


def test_the_bind_hosts_own_name_is_a_trusted_host(tmp_path):
    """``--host`` may be a loopback name of the machine's own (ip6-localhost, an /etc/hosts alias):
    that name is answered too, and still nothing else."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("wa_status_demo_app", APP_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # SQLAlchemy resolves the models' annotations through it
    try:
        spec.loader.exec_module(module)
        app = module.create_app(str(tmp_path / "d.db"), SECRET, bind_host="My-Loopback-Alias")
        assert app.test_client().get("/healthz", base_url="http://my-loopback-alias:8000").status_code == 200
        assert app.test_client().get("/healthz", base_url="http://localhost:8000").status_code == 200
        r = app.test_client().get("/healthz", base_url="http://my-loopback-alias.evil.example:8000")
        assert r.status_code == 403 and r.get_json()["error"] == "untrusted_host"
    finally:
        del sys.modules[spec.name]


def _demo_constant(name: str) -> int:
    """A module-level ``NAME = <int>`` of app.py, read without importing it (its models would be
    declared twice)."""
    match = re.search(rf"^{name} = ([0-9]+)$", APP_PY.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, f"app.py defines no {name}"
    return int(match.group(1))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts the demo's threads in /proc")
def test_silent_connections_cannot_pile_up_threads(demo):
    """Whoever reaches the port may open connections and send nothing. Werkzeug's threaded server
    alone keeps a thread per connection for as long as the client likes; the demo serves at most
    MAX_CONNECTIONS at once (one more: 503, closed at once) and closes a connection silent for
    IDLE_TIMEOUT_S, so the slots come back."""
    cap, idle = _demo_constant("MAX_CONNECTIONS"), _demo_constant("IDLE_TIMEOUT_S")
    d = demo()
    port = int(d.base.rsplit(":", 1)[1])
    threads = lambda: len(os.listdir(f"/proc/{d.proc.pid}/task"))  # noqa: E731
    extra = 36
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(cap + extra)]
    received = {s: b"" for s in socks}
    ended = set()

    def poll():
        for s in socks:
            if s in ended:
                continue
            s.setblocking(False)
            try:
                while chunk := s.recv(4096):
                    received[s] += chunk
                ended.add(s)
            except BlockingIOError:
                pass
            except OSError:
                ended.add(s)

    try:
        deadline = time.monotonic() + 10
        while len(ended) < extra and time.monotonic() < deadline:
            time.sleep(0.05)
            poll()
        refused = [s for s in ended if received[s].startswith(b"HTTP/1.1 503 ")]
        assert len(refused) == extra, f"{len(refused)} of {cap + extra} connections refused with a 503 (cap {cap})"
        assert threads() <= cap + 2, f"{threads()} threads for {cap + extra} silent connections (cap {cap})"
        # The demo still answers once a slot is free: the silent ones are closed after IDLE_TIMEOUT_S.
        deadline = time.monotonic() + idle + 20  # generous: a loaded machine may be late
        while len(ended) < len(socks) and time.monotonic() < deadline:
            time.sleep(0.2)
            poll()
        assert len(ended) == len(socks), f"{len(socks) - len(ended)} silent connections still open after {idle + 20}s"
        assert d.call("/healthz") == (200, b'{"ok": true}')
    finally:
        for s in socks:
            s.close()
