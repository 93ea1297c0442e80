"""Standard Webhooks signatures against the Flask kit's demo backend as a real process.

Most signatures here are computed in the test with the standard library alone (hmac, hashlib,
base64), exactly as SPEC section 2 describes them:
``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, keyed with the bytes a
``whsec_<base64>`` secret decodes to. The backend holds two secrets (a rotation in progress).
The last test has the sidecar binary sign its own calls and the kit verify them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time

import pytest

from conftest import SECRET, Backend, Gateway, Sidecar, free_port, http, http_raw, wait_for

HOOK = "/api/internal/whatsapp/status-webhook"
OLD_KEY, NEW_KEY, STRANGER_KEY = os.urandom(32), os.urandom(24), os.urandom(32)


def whsec(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode("ascii")


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode("ascii") + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


@pytest.fixture
def backend(procs, tmp_path):
    # Whitespace-separated, one per line as a secret file would hold them.
    env = {"WEBHOOK_SIGNING_SECRET": f"{whsec(NEW_KEY)}\n{whsec(OLD_KEY)}\n"}
    return Backend(procs, tmp_path / "signed.sqlite", ["business_1:1:he", "business_2:2:en", "business_3:3:he"], env)


def send(backend, payload: dict, msg_id: str, keys=(), timestamp=None, body: bytes = None, extra=None):
    """POSTs ``payload`` signed with ``keys`` (none: unsigned); returns (status, answer)."""
    raw = json.dumps(payload, separators=(",", ":")).encode()
    ts = int(time.time()) if timestamp is None else timestamp
    headers = {"Content-Type": "application/json", "X-INTERNAL-SECRET": SECRET, "Idempotency-Key": msg_id}
    if keys:
        headers.update({
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": " ".join(signature(k, msg_id, ts, raw) for k in keys),
        })
    headers.update(extra or {})
    status, answer = http_raw("POST", backend.url + HOOK, headers=headers, data=body if body is not None else raw)
    return status, json.loads(answer)


def down(tenant):
    return {"tenant_id": tenant, "status": "disconnected", "reason": "logged out (code 401): Connection Failure"}


def test_rotation_both_secrets_sign_and_a_stranger_does_not(backend):
    assert send(backend, down("business_1"), "evt-old", [OLD_KEY]) == (200, {"ok": True})
    assert send(backend, down("business_2"), "evt-new", [NEW_KEY]) == (200, {"ok": True})
    # A sender mid-rotation signs with both (and with one we do not know): any match will do.
    assert send(backend, down("business_3"), "evt-both", [STRANGER_KEY, NEW_KEY, OLD_KEY])[0] == 200
    status, answer = send(backend, {"tenant_id": "business_1", "status": "connected", "reason": None},
                          "evt-stranger", [STRANGER_KEY])
    assert status == 401 and "no webhook-signature matches" in answer["message"]

    assert [r["lang"] for t in ("business_1", "business_2", "business_3") for r in backend.reminders(t)] == [
        "he", "en", "he"]
    assert backend.reminders("business_1")[0]["status"] == "open"  # the stranger's "connected" changed nothing
    assert backend.call_count() == 3
    [n] = backend.login("business_2").notifications()
    assert n["lang"] == "en"


# The exact 300 s boundary is tested with a fixed clock in contrib/flask/tests; here the
# margin absorbs the second that int(time.time()) and the request take.
@pytest.mark.parametrize("age, word", [(310, "old"), (3600, "old"), (-310, "ahead")])
def test_an_expired_or_future_timestamp_is_refused(backend, age, word):
    status, answer = send(backend, down("business_1"), "evt-stale", [NEW_KEY], timestamp=int(time.time()) - age)
    assert status == 401 and word in answer["message"] and "tolerance" in answer["message"]
    assert backend.reminders("business_1") == [] and backend.call_count() == 0
    assert backend.login("business_1").notifications() == []


def test_a_timestamp_within_the_tolerance_is_accepted(backend):
    assert send(backend, down("business_1"), "evt-late", [OLD_KEY], timestamp=int(time.time()) - 240)[0] == 200


def test_unsigned_tampered_or_mislabelled_calls_are_refused(backend):
    status, answer = send(backend, down("business_1"), "evt-1")
    assert status == 401 and "unsigned" in answer["message"]
    # Signed over one body, another body sent.
    tampered = json.dumps(down("business_2"), separators=(",", ":")).encode()
    assert send(backend, down("business_1"), "evt-2", [NEW_KEY], body=tampered)[0] == 401
    # The shared secret still has to be right.
    assert send(backend, down("business_1"), "evt-3", [NEW_KEY], extra={"X-INTERNAL-SECRET": "nope"})[0] == 401
    # A signed id and a different Idempotency-Key: refused, so a replay cannot pose as new.
    assert send(backend, down("business_1"), "evt-4", [NEW_KEY], extra={"Idempotency-Key": "evt-other"})[0] == 400
    assert backend.call_count() == 0 and backend.reminders("business_1") == []


def test_a_retry_with_a_fresh_timestamp_replays_and_a_reused_id_conflicts(backend):
    assert send(backend, down("business_1"), "evt-9", [OLD_KEY], timestamp=int(time.time()) - 100)[0] == 200
    # The sender retries the same event later (new attempt timestamp, same id and body).
    assert send(backend, down("business_1"), "evt-9", [NEW_KEY]) == (200, {"ok": True})
    # The same id with another payload, even correctly signed, is a conflict.
    status, answer = send(backend, {"tenant_id": "business_1", "status": "connected", "reason": None},
                          "evt-9", [NEW_KEY])
    assert status == 409 and answer["error"] == "idempotency_key_reused"
    assert backend.call_count() == 1
    assert [r["status"] for r in backend.reminders("business_1")] == ["open"]


def test_the_sidecar_signs_its_calls_and_the_flask_kit_verifies_them(procs, tmp_path, sidecar_bin):
    """The real binary signs with `backend.signing_secret_file` (two secrets: a rotation in
    progress); the Flask kit, knowing only the newer one, verifies and records the calls. A sidecar
    signing with a secret the backend does not know is refused: 401, and the sidecar says so."""
    gateway = Gateway(procs, ["business_1"])
    backend = Backend(procs, tmp_path / "sig.sqlite", ["business_1"], {"WEBHOOK_SIGNING_SECRET": whsec(NEW_KEY)})

    def sidecar(keys, name):
        secrets = tmp_path / f"{name}.secrets"
        secrets.write_text("".join(whsec(k) + "\n" for k in keys))
        secrets.chmod(0o600)
        port = free_port()
        config = tmp_path / f"{name}.toml"
        config.write_text(f"""
[gateway]
url = "ws://127.0.0.1:{gateway.port}/ws/{{tenant}}"
token_env = "GATEWAY_TOKEN"
[backend]
url = "{backend.url}"
signing_secret_file = "{secrets}"
[debounce]
connect_grace = "300ms"
disconnect_grace = "2s"
[tenants]
ids = ["business_1"]
[state]
dir = "{tmp_path / 'state'}"
[admin]
listen = "127.0.0.1:{port}"
""")
        return Sidecar(procs, sidecar_bin, config, port)

    rotating = sidecar([OLD_KEY, NEW_KEY], "rotating")
    wait_for("the signed first state", lambda: (backend.status("business_1") or {}).get("status") == "connected")
    gateway.control("business_1", "logout")
    [reminder] = wait_for("the signed logout's reminder", lambda: backend.reminders("business_1"))
    assert reminder["reason"] == "logged out (code 401): Connection Failure"
    assert backend.call_count() == 2
    rotating.proc.stop()

    # The same sidecar state, now signing with a secret the backend never had.
    stranger = sidecar([STRANGER_KEY], "stranger")
    gateway.control("business_1", "reconnect")
    view = wait_for("the refused call", lambda: (v := stranger.tenant("business_1"))["last_error"] and v)
    assert view["owed"]["status"] == "connected"
    status, ready = http("GET", f"{stranger.admin}/readyz")
    assert status == 503 and "401" in json.dumps(ready), ready
    assert backend.call_count() == 2 and backend.status("business_1")["status"] == "disconnected"
    assert backend.reminders("business_1")[0]["status"] == "open"
