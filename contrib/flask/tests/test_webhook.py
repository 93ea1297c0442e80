import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest
from flask import Flask

from wa_status_backend import (
    REMINDER_MESSAGE,
    REMINDER_TITLE,
    REMINDER_TYPE,
    WEBHOOK_PATH,
    SqliteStore,
    create_blueprint,
)

SECRET = "test-secret"
HERE = os.path.dirname(os.path.abspath(__file__))
APP_PY = os.path.join(os.path.dirname(HERE), "app.py")


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "wa.db")
    s.add_business("business_1", 101, "Salon One")
    s.add_business("business_2", 102, "Barber Two")
    return s


@pytest.fixture
def app(store):
    app = Flask(__name__)
    app.register_blueprint(create_blueprint(store=store, secret=SECRET))
    return app


@pytest.fixture
def client(app):
    return app.test_client()


def post(client, body, *, secret=SECRET, key=None, changed_at=None, raw=None):
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-INTERNAL-SECRET"] = secret
    if key is not None:
        headers["Idempotency-Key"] = key
    if changed_at is not None:
        headers["X-Status-Changed-At"] = changed_at
    data = raw if raw is not None else json.dumps(body)
    return client.post(WEBHOOK_PATH, data=data, headers=headers)


def down(tenant="business_1", reason="Stream Errored (conflict) (code 440)", **kw):
    return {"tenant_id": tenant, "status": "disconnected", "reason": reason}


def up(tenant="business_1"):
    return {"tenant_id": tenant, "status": "connected", "reason": None}


# ------------------------------------------------------------------ auth


@pytest.mark.parametrize("secret", [None, "", "wrong", SECRET + "x", SECRET[:-1]])
def test_wrong_or_missing_secret_is_401(client, store, secret):
    r = post(client, down(), secret=secret)
    assert r.status_code == 401
    assert r.get_json() == {"ok": False, "error": "unauthorized"}
    assert store.reminders() == []


def test_non_ascii_secret_compared_as_utf8_bytes(store):
    secret = "s\u00e9cr\u00eat-\u2713"
    app = Flask(__name__)
    app.register_blueprint(create_blueprint(store=store, secret=secret))
    c = app.test_client()
    wire = secret.encode("utf-8").decode("latin-1")  # what WSGI makes of the UTF-8 bytes
    assert post(c, down(), secret=wire).status_code == 200
    assert post(c, down(), secret="s\u00e9cr\u00eat-?").status_code == 401


def test_secret_from_app_config_and_empty_secret_refuses(store):
    app = Flask(__name__)
    app.register_blueprint(create_blueprint(store=store))  # no secret: app.config
    c = app.test_client()
    assert post(c, down(), secret="").status_code == 401  # nothing configured: refuse all
    app.config["INTERNAL_SHARED_SECRET"] = SECRET
    assert post(c, down()).status_code == 200


# ------------------------------------------------------------------ payload


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "not json",
        "{",
        "[]",
        '"business_1"',
        "null",
        "{}",
        '{"status": "disconnected", "reason": null}',
        '{"tenant_id": "", "status": "disconnected", "reason": null}',
        '{"tenant_id": "   ", "status": "disconnected", "reason": null}',
        '{"tenant_id": 1, "status": "disconnected", "reason": null}',
        '{"tenant_id": null, "status": "connected", "reason": null}',
        '{"tenant_id": "' + "x" * 256 + '", "status": "connected", "reason": null}',
        '{"tenant_id": "business_1", "reason": null}',
        '{"tenant_id": "business_1", "status": "up", "reason": null}',
        '{"tenant_id": "business_1", "status": "CONNECTED", "reason": null}',
        '{"tenant_id": "business_1", "status": true, "reason": null}',
        '{"tenant_id": "business_1", "status": ["connected"], "reason": null}',
        '{"tenant_id": "business_1", "status": "disconnected", "reason": 440}',
        '{"tenant_id": "business_1", "status": "disconnected", "reason": {"code": 440}}',
        '{"tenant_id": "business_1", "status": "disconnected", "reason": false}',
    ],
    ids=lambda raw: raw[:48] or "<empty>",
)
def test_bad_payload_is_400(client, store, raw):
    r = post(client, None, raw=raw)
    assert r.status_code == 400, r.get_data(as_text=True)
    body = r.get_json()
    assert body["ok"] is False and body["error"] == "invalid_payload" and body["message"]
    assert store.reminders() == []


def test_bad_payload_with_wrong_secret_is_401_first(client):
    assert post(client, None, raw="nope", secret="wrong").status_code == 401


def test_oversized_body_and_bad_idempotency_key_are_400(client, store):
    big = json.dumps({"tenant_id": "business_1", "status": "disconnected", "reason": "x" * 70000})
    assert post(client, None, raw=big).status_code == 400
    assert post(client, down(), key="k" * 256).status_code == 400
    assert post(client, down(), key="bad\x01key").status_code == 400
    assert store.reminders() == []


def test_reason_may_be_missing_or_null(client, store):
    assert post(client, {"tenant_id": "business_1", "status": "disconnected"}).status_code == 200
    assert store.reminders()[0]["details"]["reason"] is None


# ------------------------------------------------------------------ behaviour


def test_unknown_tenant_is_200_and_logged(client, store, caplog):
    caplog.set_level("WARNING", logger="wa_status_backend")
    r = post(client, down(tenant="business_404"))
    assert r.status_code == 200 and r.get_json() == {"ok": True}
    assert store.reminders() == []
    assert any("unknown tenant" in m and "business_404" in m for m in caplog.messages)


def test_disconnected_creates_one_reminder(client, store):
    r = post(client, down(), changed_at="2025-01-31T10:00:00+01:00")
    assert r.status_code == 200 and r.get_json() == {"ok": True}
    [rem] = store.reminders()
    assert rem["type"] == REMINDER_TYPE == "system_whatsapp_disconnect"
    assert rem["priority"] == "high"
    assert rem["title"] == REMINDER_TITLE
    assert rem["message"] == REMINDER_MESSAGE == "WhatsApp connection lost - reconnect in the WhatsApp settings"
    assert rem["owner_id"] == 101
    assert rem["business_id"] == store.find_business("business_1")["id"]
    assert rem["status"] == "open" and rem["completed_at"] is None and rem["created_at"]
    assert rem["details"]["status_changed_at"] == "2025-01-31T09:00:00Z"

    # a second disconnected (new key, new reason) does not create another
    r = post(client, down(reason="logged out (code 401): Connection Failure"), key="k-2")
    assert r.status_code == 200
    assert len(store.reminders()) == 1
    # ... and other businesses are independent
    assert post(client, down(tenant="business_2")).status_code == 200
    assert len(store.reminders()) == 2


def test_reason_and_status_are_stored(client, store):
    reason = "flapping: 4 disconnects in 6m; last: Connection Closed (code 428)"
    post(client, down(reason=reason), changed_at="2025-01-31T09:00:00.5Z", key="k-1")
    [rem] = store.reminders()
    assert rem["details"]["reason"] == reason
    assert rem["details"]["tenant_id"] == "business_1"
    assert rem["details"]["idempotency_key"] == "k-1"
    [st] = store.statuses()
    assert (st["tenant_id"], st["status"], st["reason"]) == ("business_1", "disconnected", reason)
    assert st["changed_at"] == "2025-01-31T09:00:00.500000Z"


def test_bad_status_changed_at_is_ignored(client, store):
    assert post(client, down(), changed_at="yesterday").status_code == 200
    assert store.reminders()[0]["details"]["status_changed_at"] is None
    assert store.statuses()[0]["changed_at"] is None


def test_connected_completes_open_reminder(client, store):
    post(client, down())
    assert post(client, up()).status_code == 200
    [rem] = store.reminders()
    assert rem["status"] == "completed" and rem["completed_at"]
    assert store.list_open_reminders() == []
    # connected with nothing open is a no-op; the next drop opens a fresh reminder
    assert post(client, up()).status_code == 200
    post(client, down())
    assert [r["status"] for r in store.reminders()] == ["completed", "open"]


def test_connected_only_touches_its_own_business(client, store):
    post(client, down(tenant="business_1"))
    post(client, down(tenant="business_2"))
    post(client, up(tenant="business_2"))
    assert {r["business_id"]: r["status"] for r in store.reminders()} == {
        store.find_business("business_1")["id"]: "open",
        store.find_business("business_2")["id"]: "completed",
    }


def test_idempotency_key_replay(client, store):
    r1 = post(client, down(), key="evt-1")
    assert r1.status_code == 200 and "Idempotent-Replayed" not in r1.headers
    post(client, up(), key="evt-2")
    assert store.reminders()[0]["status"] == "completed"

    # the retry of evt-1 arrives late: stored response, no new reminder
    r = post(client, down(), key="evt-1")
    assert r.status_code == 200 and r.get_json() == {"ok": True}
    assert r.headers["Idempotent-Replayed"] == "true"
    assert [x["status"] for x in store.reminders()] == ["completed"]
    assert store.statuses()[0]["status"] == "connected"
    assert store.idempotency_key_count() == 2

    # a replay needs the secret too
    assert post(client, down(), key="evt-1", secret="wrong").status_code == 401


def test_idempotency_keys_survive_a_restart(tmp_path):
    path = tmp_path / "wa.db"
    s1 = SqliteStore(path)
    s1.add_business("business_1", 7)
    a1 = Flask("a1")
    a1.register_blueprint(create_blueprint(store=s1, secret=SECRET))
    post(a1.test_client(), down(), key="evt-9")
    post(a1.test_client(), up(), key="evt-10")

    s2 = SqliteStore(path)
    a2 = Flask("a2")
    a2.register_blueprint(create_blueprint(store=s2, secret=SECRET))
    r = post(a2.test_client(), down(), key="evt-9")
    assert r.headers.get("Idempotent-Replayed") == "true"
    assert len(s2.list_open_reminders()) == 0


def test_concurrent_disconnects_create_one_reminder(store, app):
    barrier = threading.Barrier(8)
    codes = []

    def worker(i):
        c = app.test_client()
        barrier.wait()
        codes.append(post(c, down(), key=f"race-{i}").status_code)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * 8
    assert len(store.reminders()) == 1


def test_memory_store(tmp_path):
    s = SqliteStore(":memory:")
    s.add_business("business_1", 1)
    a = Flask("mem")
    a.register_blueprint(create_blueprint(store=s, secret=lambda: SECRET))
    assert post(a.test_client(), down()).status_code == 200
    assert len(s.list_open_reminders()) == 1


# ------------------------------------------------------------------ notifications


def test_notifications_shape(client, store):
    assert client.get("/api/notifications").get_json() == {"notifications": [], "unread_count": 0}
    post(client, down(tenant="business_1"))
    post(client, down(tenant="business_2"))
    body = client.get("/api/notifications").get_json()
    assert body["unread_count"] == 2 and len(body["notifications"]) == 2
    n = body["notifications"][0]  # newest first
    assert n["business_id"] == store.find_business("business_2")["id"]
    assert {k: n[k] for k in ("type", "title", "message", "priority")} == {
        "type": "system_whatsapp_disconnect",
        "title": "WhatsApp connection lost",
        "message": "WhatsApp connection lost - reconnect in the WhatsApp settings",
        "priority": "high",
    }
    assert isinstance(n["id"], int) and n["created_at"].endswith("Z")

    mine = client.get("/api/notifications?owner_id=101").get_json()
    assert mine["unread_count"] == 1
    assert mine["notifications"][0]["business_id"] == store.find_business("business_1")["id"]

    post(client, up(tenant="business_1"))
    assert client.get("/api/notifications").get_json()["unread_count"] == 1


def test_notifications_with_current_owner_hook(store):
    owner = {"id": None}
    app = Flask(__name__)
    app.register_blueprint(create_blueprint(store=store, secret=SECRET, current_owner=lambda: owner["id"]))
    c = app.test_client()
    post(c, down(tenant="business_1"))
    post(c, down(tenant="business_2"))
    assert c.get("/api/notifications").status_code == 401
    owner["id"] = 102
    body = c.get("/api/notifications?owner_id=101").get_json()  # query param ignored
    assert body["unread_count"] == 1
    assert body["notifications"][0]["business_id"] == store.find_business("business_2")["id"]


# ------------------------------------------------------------------ real process


def test_app_py_subprocess_on_port_0(tmp_path):
    env = dict(os.environ, INTERNAL_SHARED_SECRET="e2e-secret")
    proc = subprocess.Popen(
        [sys.executable, APP_PY, "--db", str(tmp_path / "e2e.db"), "--port", "0",
         "--seed", "business_1,business_2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on "), (line, proc.stderr.read() if proc.poll() is not None else "")
        port = int(line.split()[-1])
        assert port > 0
        base = f"http://127.0.0.1:{port}"

        def call(path, body=None, headers=None):
            req = urllib.request.Request(
                base + path,
                data=None if body is None else json.dumps(body).encode(),
                headers={"Content-Type": "application/json", **(headers or {})},
                method="GET" if body is None else "POST",
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        assert call("/healthz") == (200, {"ok": True})
        auth = {"X-INTERNAL-SECRET": "e2e-secret", "Idempotency-Key": "e2e-1",
                "X-Status-Changed-At": "2025-01-31T09:00:00Z",
                "User-Agent": "wa-status-sidecar/0.1.0"}
        assert call(WEBHOOK_PATH, down(tenant="business_2"), {**auth, "X-INTERNAL-SECRET": "no"}) == (
            401, {"ok": False, "error": "unauthorized"})
        assert call(WEBHOOK_PATH, {"tenant_id": "business_2"}, auth)[0] == 400
        assert call(WEBHOOK_PATH, down(tenant="business_2"), auth) == (200, {"ok": True})
        assert call(WEBHOOK_PATH, down(tenant="business_2"), auth) == (200, {"ok": True})  # replay
        status, notes = call("/api/notifications?owner_id=2")  # 2nd seeded tenant -> owner 2
        assert status == 200 and notes["unread_count"] == 1
        assert notes["notifications"][0]["type"] == "system_whatsapp_disconnect"
        status, state = call("/demo/state")
        assert [b["tenant_id"] for b in state["businesses"]] == ["business_1", "business_2"]
        assert state["idempotency_keys"] == 1 and len(state["reminders"]) == 1
        assert call(WEBHOOK_PATH, up(tenant="business_2"), {**auth, "Idempotency-Key": "e2e-2"}) == (
            200, {"ok": True})
        assert call("/api/notifications")[1]["unread_count"] == 0
    finally:
        proc.terminate()
        try:
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
            proc.stderr.close()


def test_app_py_refuses_to_start_without_secret(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "INTERNAL_SHARED_SECRET"}
    r = subprocess.run([sys.executable, APP_PY, "--db", str(tmp_path / "x.db"), "--port", "0"],
                       env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "INTERNAL_SHARED_SECRET" in r.stderr
