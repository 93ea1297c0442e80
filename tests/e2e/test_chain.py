"""The whole chain with real processes on 127.0.0.1: the Baileys kit's simulated gateway (node)
-> the sidecar binary -> the Flask kit's backend (SQLite), driven through the gateway's control
endpoint and checked in the backend's database, the sidecar's admin API, and the bell as each
business reads it after logging in (the Flask demo's login).

Run: ``.venv/bin/python -m pytest -q tests/e2e`` (``WA_SIDECAR_BIN`` picks the binary).

Graces are short so a run takes seconds: a transient drop must last 3 s to be reported, an Up
1 s. Flap damping halves the penalty every 3 s (thresholds as by default: 3000 to suppress, 750
to recover), so four quick drops (about 4000) are flapping and the tenant recovers about 7 s
later.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from conftest import REPO, http_raw, wait_for

DEBOUNCE = """
[debounce]
disconnect_grace = "3s"
connect_grace = "1s"
flap_half_life = "3s"
flap_suppress = 3000
flap_reuse = 750
flap_max_suppress = "60s"
"""
DISCONNECT_GRACE = 3.0
REMINDER_TYPE = "system_whatsapp_disconnect"
RESTART_REQUIRED = "Stream Errored (restart required)"
# The bell's texts, from the catalogue both kits read.
CATALOGUE = json.loads(Path(REPO, "contrib", "i18n", "bell-messages.json").read_text(encoding="utf-8"))
HE, EN = CATALOGUE["he"], CATALOGUE["en"]


def wait_connected(chain, tenant: str):
    """The first stable state of a tenant seen for the first time reaches the backend."""
    wait_for(
        f"{tenant} reported connected",
        lambda: (chain.backend.status(tenant) or {}).get("status") == "connected",
    )


def test_real_drops_make_one_reminder_each_and_a_healed_drop_none(chain):
    c = chain(["business_1", "business_2"], DEBOUNCE)
    for tenant in c.tenants:
        wait_connected(c, tenant)
    assert c.backend.call_count() == 2
    assert c.backend.reminders("business_1") == []

    # A 515 (restart required) drop, re-opened within the grace: nothing reaches the backend.
    c.gateway.control("business_1", "close", code=515, message=RESTART_REQUIRED)
    view = wait_for(
        "the sidecar to see the 515 drop and hold it pending",
        lambda: (v := c.sidecar.tenant("business_1"))["pending"] and v,
    )
    assert view["pending"]["status"] == "disconnected"
    assert view["last_observation"] == f"down (transient): {RESTART_REQUIRED} (code 515)"
    c.gateway.control("business_1", "open")
    view = wait_for(
        "the re-open to cancel the pending disconnect",
        lambda: (v := c.sidecar.tenant("business_1"))["last_observation"] == "up" and v,
    )
    assert view["pending"] is None, view
    assert view["stable"] == "connected"
    assert c.sidecar.metric("wa_sidecar_flaps_suppressed_total") >= 1

    # A logout is terminal: one high-priority reminder, at once (well before the grace).
    asked = time.monotonic()
    c.gateway.control("business_1", "logout")
    reminders = wait_for("the logout's reminder", lambda: c.backend.reminders("business_1"))
    assert time.monotonic() - asked < DISCONNECT_GRACE
    [reminder] = reminders
    assert reminder["type"] == REMINDER_TYPE
    assert reminder["priority"] == "high"
    assert reminder["status"] == "open"
    # Had the healed 515 drop been reported, its reminder would be the open one, with its reason.
    assert reminder["reason"] == "logged out (code 401): Connection Failure"
    assert (reminder["title"], reminder["note"], reminder["lang"]) == (HE["title"], HE["note"], "he")
    assert c.backend.status("business_1")["status"] == "disconnected"

    # The business reads its bell after logging in: the Hebrew texts arrive intact, as UTF-8.
    bell = c.backend.login("business_1")
    status, raw, body = bell.read()
    assert status == 200 and body["unread_count"] == 1
    assert HE["title"].encode("utf-8") in raw and HE["note"].encode("utf-8") in raw
    assert b"\\u" not in raw
    [note] = body["notifications"]
    assert note == {"id": reminder["id"], "type": REMINDER_TYPE, "priority": "high", "title": HE["title"],
                    "note": HE["note"], "created_at": note["created_at"], "lang": "he"}
    # The bystander business sees nothing of it; nobody logged in sees nothing at all.
    assert c.backend.login("business_2").notifications() == []
    anonymous = http_raw("GET", f"{c.backend.url}/api/notifications")
    assert anonymous[0] == 401 and HE["title"].encode() not in anonymous[1]

    # The tenant links again: the reminder is completed, no new one is made.
    c.gateway.control("business_1", "reconnect")
    wait_for(
        "the reminder to be completed",
        lambda: c.backend.reminders("business_1")[0]["status"] == "completed",
    )
    assert len(c.backend.reminders("business_1")) == 1
    assert c.backend.status("business_1")["status"] == "connected"
    assert bell.notifications() == []
    # The bystander was never touched; four calls in all: two first states, one drop, one recovery.
    assert c.backend.reminders("business_2") == []
    assert c.backend.status("business_2")["status"] == "connected"
    assert c.backend.call_count() == 4
    # The backend has committed; the sidecar settles once it has read the answer.
    view = wait_for("the sidecar to settle", lambda: (v := c.sidecar.tenant("business_1"))["owed"] is None and v)
    assert view["reported"]["status"] == "connected", view


def test_four_quick_drops_are_flapping_one_reminder_completed_after_decay(chain):
    c = chain(["business_1"], DEBOUNCE)
    wait_connected(c, "business_1")

    # Each drop heals at once, so none lasts the grace; together they are flapping.
    for _ in range(4):
        c.gateway.control("business_1", "close", code=515, message=RESTART_REQUIRED)
        c.gateway.control("business_1", "open")
    [reminder] = wait_for("the flapping reminder", lambda: c.backend.reminders("business_1"))
    reason = reminder["reason"]
    assert reason.startswith("flapping: 4 disconnects in "), reason
    assert reason.endswith(f"; last: {RESTART_REQUIRED} (code 515)"), reason
    assert reminder["type"] == REMINDER_TYPE and reminder["priority"] == "high"
    view = c.sidecar.tenant("business_1")
    assert view["flapping"] is True and view["stable"] == "disconnected", view

    # The session stays open: once the penalty has decayed, connected is reported once.
    wait_for(
        "the flapping reminder to be completed after the penalty decays",
        lambda: c.backend.reminders("business_1")[0]["status"] == "completed",
        timeout=30,
    )
    assert len(c.backend.reminders("business_1")) == 1
    assert c.backend.call_count() == 3
    view = wait_for("the sidecar to settle", lambda: (v := c.sidecar.tenant("business_1"))["owed"] is None and v)
    assert view["flapping"] is False and view["reported"]["status"] == "connected", view


def owed_delivery(c, tenant: str) -> dict:
    """Waits until the sidecar owes ``tenant`` a delivery it has tried and failed at least once."""
    return wait_for(
        f"an owed, failed delivery for {tenant}",
        lambda: (v := c.sidecar.tenant(tenant))["owed"] and v["last_error"] and v["delivery_attempts"] >= 1 and v,
    )


def test_a_transition_owed_while_the_backend_is_down_lands_after_it_restarts(chain, sidecar_bin):
    c = chain(["business_1"], DEBOUNCE)
    wait_connected(c, "business_1")
    c.backend.proc.kill9()

    c.gateway.control("business_1", "logout")
    view = owed_delivery(c, "business_1")
    assert view["owed"]["status"] == "disconnected"
    assert view["owed"]["reason"] == "logged out (code 401): Connection Failure"
    key = view["owed"]["idempotency_key"]
    assert any(t["tenant"] == "business_1" and t["owed"] for t in c.sidecar.tenants())

    # The operator's view of the same thing.
    out = subprocess.run(
        [str(sidecar_bin), "status", "--admin", c.sidecar.admin],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["TENANT", "STATE", "SINCE", "LINK", "OWED", "REASON"], out.stdout
    [row] = [line for line in lines if line.startswith("business_1 ")]
    assert row.split()[1] == "disconnected", row
    assert "disconnected (" in row and "tries" in row, row
    assert "logged out (code 401)" in row, row
    assert lines[-1] == "1 tenants: 0 connected, 1 disconnected, 0 unknown; 1 deliveries owed", out.stdout

    # Same port, same database: the owed transition lands, once, with the key it was given.
    c.backend.start()
    [reminder] = wait_for("the owed reminder", lambda: c.backend.reminders("business_1"), timeout=45)
    assert reminder["idempotency_key"] == key
    assert reminder["reason"] == "logged out (code 401): Connection Failure"
    wait_for("the sidecar to settle the delivery", lambda: c.sidecar.tenant("business_1")["owed"] is None)
    assert c.sidecar.tenant("business_1")["reported"]["status"] == "disconnected"
    assert c.backend.call_count() == 2


def test_an_owed_transition_survives_a_kill_9_of_the_sidecar(chain):
    c = chain(["business_1"], DEBOUNCE)
    wait_connected(c, "business_1")
    c.backend.proc.kill9()
    c.gateway.control("business_1", "logout")
    key = owed_delivery(c, "business_1")["owed"]["idempotency_key"]

    c.sidecar.proc.kill9()
    c.backend.start()
    c.sidecar.start()
    # The restarted sidecar resumes the owed delivery with its key; the unchanged first state
    # (connected, acknowledged before the kill) is not sent again.
    [reminder] = wait_for("the owed reminder after the restart", lambda: c.backend.reminders("business_1"), timeout=45)
    assert reminder["idempotency_key"] == key
    wait_for("the restarted sidecar to settle the delivery", lambda: c.sidecar.tenant("business_1")["owed"] is None)
    assert c.backend.call_count() == 2
    assert c.backend.status("business_1")["status"] == "disconnected"


def test_each_business_reads_its_own_bell_in_its_own_language(chain):
    """Two businesses, one Hebrew and one English, both logged out by WhatsApp: each login shows
    that business's own reminder in its own language and nothing of the other's."""
    c = chain(["business_1", "business_2"], DEBOUNCE, seed=["business_1:11:he", "business_2:22:en"])
    for tenant in c.tenants:
        wait_connected(c, tenant)
    c.gateway.control("business_1", "logout")
    c.gateway.control("business_2", "logout")
    [r1] = wait_for("business_1's reminder", lambda: c.backend.reminders("business_1"))
    [r2] = wait_for("business_2's reminder", lambda: c.backend.reminders("business_2"))
    assert (r1["created_by"], r1["lang"], r1["lead_id"]) == (11, "he", None)
    assert (r2["created_by"], r2["lang"], r2["lead_id"]) == (22, "en", None)

    he, en = c.backend.login("business_1"), c.backend.login("business_2")
    [n1], [n2] = he.notifications(), en.notifications()
    assert (n1["id"], n1["title"], n1["note"], n1["lang"]) == (r1["id"], HE["title"], HE["note"], "he")
    assert (n2["id"], n2["title"], n2["note"], n2["lang"]) == (r2["id"], EN["title"], EN["note"], "en")
    # What the browser gets carries no reason, key, owner or business id.
    for n in (n1, n2):
        assert set(n) == {"id", "type", "priority", "title", "note", "created_at", "lang"}

    # One business reconnects: only its bell empties.
    c.gateway.control("business_2", "reconnect")
    wait_for("business_2's reminder to be completed",
             lambda: c.backend.reminders("business_2")[0]["status"] == "completed")
    assert en.notifications() == []
    assert [n["id"] for n in he.notifications()] == [r1["id"]]
