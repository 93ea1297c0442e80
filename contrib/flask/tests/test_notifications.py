"""The bell's list (SPEC section 7): a business sees only its own notifications, only the fields
the bell shows, in UTF-8; no login is 401, and nothing in a request can pick another business."""

from __future__ import annotations

import base64
import json
import os
import zlib
from datetime import datetime

import pytest
from flask import Flask, jsonify, request, session
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import DateTime, Integer, String, Text, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, scoped_session, sessionmaker

from conftest import EN, HE, SECRET, down, up
from wa_status_backend import NOTIFICATIONS_PATH, WEBHOOK_PATH, ReminderMapping, create_tables, init_app

FIELDS = {"id", "type", "priority", "title", "note", "created_at", "lang"}


@pytest.fixture
def both_down(kit):
    """Both businesses have an open reminder: b1's in Hebrew, b2's in English."""
    assert kit.post(down("business_1", reason="logged out (code 401): secret-ish detail"), key="k-b1").status_code == 200
    assert kit.post(down("business_2"), key="k-b2").status_code == 200
    return kit


def b1_visible(resp) -> bool:
    """Whether anything of business b1's reminder is in a response, in any encoding."""
    raw = resp.get_data()
    return any(marker in raw for marker in (
        HE["title"].encode(), HE["note"].encode(), HE["title"].encode("unicode_escape"),
        b"secret-ish", b"k-b1", b"business_1",
    ))


# ------------------------------------------------------------------ who may read


def test_no_login_is_401_json(both_down):
    r = both_down.client().get(NOTIFICATIONS_PATH)
    assert r.status_code == 401
    assert r.get_json() == {"ok": False, "error": "unauthorized"}
    assert not b1_visible(r)


@pytest.mark.parametrize("query", [
    "owner_id=101", "owner_id=102", "business_id=b1", "tenant_id=b1", "tenant_id=business_1",
    "tenant=b1", "business=b1", "id=b1", "all=1", "demo=1", "owner_id=101&owner_id=102",
])
def test_no_login_stays_401_whatever_the_query(both_down, query):
    r = both_down.client().get(f"{NOTIFICATIONS_PATH}?{query}")
    assert r.status_code == 401 and not b1_visible(r)


def test_a_business_sees_its_own_notifications_only(both_down):
    r = both_down.client("b2").get(NOTIFICATIONS_PATH)
    assert r.status_code == 200
    body = r.get_json()
    assert body["unread_count"] == 1
    [n] = body["notifications"]
    assert (n["title"], n["note"], n["lang"]) == (EN["title"], EN["note"], "en")
    assert not b1_visible(r)
    mine = both_down.client("b1").get(NOTIFICATIONS_PATH).get_json()
    assert [x["title"] for x in mine["notifications"]] == [HE["title"]]


@pytest.mark.parametrize("query", [
    "owner_id=101", "business_id=b1", "tenant_id=b1", "tenant_id=business_1", "tenant=b1", "business=b1",
    "business_id=b1&business_id=b2", "business_id[]=b1", "session=b1", "login=b1", "as=b1", "user=101",
])
def test_no_parameter_picks_another_business(both_down, query):
    r = both_down.client("b2").get(f"{NOTIFICATIONS_PATH}?{query}")
    assert r.status_code == 200 and not b1_visible(r)
    assert r.get_json()["unread_count"] == 1


@pytest.mark.parametrize("headers", [
    {"X-Tenant-Id": "b1"}, {"X-Business-Id": "b1"}, {"X-Owner-Id": "101"}, {"X-User": "101"},
    {"X-Forwarded-User": "b1"}, {"Authorization": "Bearer b1"}, {"X-INTERNAL-SECRET": SECRET},
    {"X-Forwarded-For": "127.0.0.1", "X-Real-Ip": "127.0.0.1"}, {"Cookie": "business_id=b1"},
])
def test_no_header_picks_another_business(both_down, headers):
    r = both_down.client("b2").get(NOTIFICATIONS_PATH, headers=headers)
    assert r.status_code == 200 and not b1_visible(r)
    anon = both_down.client().get(NOTIFICATIONS_PATH, headers=headers)
    assert anon.status_code == 401 and not b1_visible(anon)


@pytest.mark.parametrize("path", [
    NOTIFICATIONS_PATH + "/b1", NOTIFICATIONS_PATH + "/business_1", NOTIFICATIONS_PATH + "/",
    NOTIFICATIONS_PATH + ";b1", NOTIFICATIONS_PATH + "/..", "/api/notifications/../notifications/b1",
    "/api/Notifications", "/api/notifications%2Fb1", "/api/b1/notifications",
])
def test_no_path_picks_another_business(both_down, path):
    for client in (both_down.client("b2"), both_down.client()):
        r = client.get(path)
        assert not b1_visible(r), (path, r.status_code)
        assert r.status_code in (200, 401, 404), (path, r.status_code)


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_other_methods_are_refused(both_down, method):
    r = getattr(both_down.client("b2"), method)(NOTIFICATIONS_PATH, json={"business_id": "b1"})
    assert r.status_code == 405 and not b1_visible(r)


def _session_cookie(client):
    cookie = client.get_cookie("session")
    assert cookie is not None
    return cookie.value


def _forge(app, payload: dict, secret_key: bytes) -> str:
    """A Flask session cookie for ``payload`` signed with ``secret_key``."""
    s = URLSafeTimedSerializer(secret_key, salt="cookie-session", signer_kwargs={"key_derivation": "hmac", "digest_method": __import__("hashlib").sha1})
    return s.dumps(payload)


def test_cookie_tampering_never_logs_in_as_another_business(both_down):
    kit = both_down
    c = kit.client("b2")
    genuine = _session_cookie(c)
    payload_b64, _, rest = genuine.partition(".")

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    swapped = b64(json.dumps({"business_id": "b1"}, separators=(",", ":")).encode())
    forged = [
        swapped + "." + rest,  # b1's payload under b2's signature
        "." + b64(zlib.compress(b'{"business_id":"b1"}')) + "." + rest,
        genuine[:-2] + ("AA" if not genuine.endswith("AA") else "BB"),  # a broken signature
        swapped,  # no signature at all
        _forge(kit.app, {"business_id": "b1"}, os.urandom(16)),  # signed with a guessed key
        "",
    ]
    for value in forged:
        attacker = kit.app.test_client()
        attacker.set_cookie("session", value)
        r = attacker.get(NOTIFICATIONS_PATH)
        assert r.status_code == 401, value
        assert not b1_visible(r)
    # The forging helper is right: with the app's real key it does log in (so the refusals above
    # are the signature's doing, not a malformed cookie).
    ok = kit.app.test_client()
    ok.set_cookie("session", _forge(kit.app, {"business_id": "b2"}, kit.app.config["SECRET_KEY"]))
    assert ok.get(NOTIFICATIONS_PATH).status_code == 200


@pytest.mark.parametrize("returned", [None, "", False, True, b"b1", ["b1"], {"id": "b1"}, 1.5])
def test_a_login_callable_returning_no_usable_business_is_401(make_kit, returned):
    kit = make_kit(current_business=lambda: returned)
    kit.post(down("business_1"))
    r = kit.client().get(NOTIFICATIONS_PATH)
    assert r.status_code == 401 and not b1_visible(r)


@pytest.mark.parametrize("exc", [LookupError, PermissionError, RuntimeError, KeyError])
def test_a_login_callable_that_raises_is_401(make_kit, exc):
    def current_business():
        raise exc("no login")

    kit = make_kit(current_business=current_business)
    kit.post(down("business_1"))
    r = kit.client().get(NOTIFICATIONS_PATH)
    assert r.status_code == 401 and not b1_visible(r)


def test_a_werkzeug_abort_in_the_login_callable_is_401(make_kit):
    from werkzeug.exceptions import Forbidden

    def current_business():
        raise Forbidden()

    kit = make_kit(current_business=current_business)
    assert kit.client().get(NOTIFICATIONS_PATH).status_code == 401


def test_logging_out_ends_access(both_down):
    c = both_down.client("b1")
    assert c.get(NOTIFICATIONS_PATH).status_code == 200
    with c.session_transaction() as s:
        s.clear()
    assert c.get(NOTIFICATIONS_PATH).status_code == 401


# ------------------------------------------------------------------ what is sent


def test_only_the_bells_fields_are_sent(both_down):
    r = both_down.client("b1").get(NOTIFICATIONS_PATH)
    body = r.get_json()
    assert set(body) == {"notifications", "unread_count"}
    [n] = body["notifications"]
    assert set(n) == FIELDS
    assert n["type"] == "system_whatsapp_disconnect" and n["priority"] == "high"
    assert isinstance(n["id"], int)
    datetime.fromisoformat(n["created_at"].replace("Z", "+00:00"))
    assert n["created_at"].endswith("Z")
    raw = r.get_data()
    for secretish in (b"reason", b"secret-ish", b"k-b1", b"idempotency", b"owner", b"101", b"b1\"", b"business"):
        assert secretish not in raw, secretish


def test_texts_are_utf8_on_the_wire_never_u_escaped(both_down):
    r = both_down.client("b1").get(NOTIFICATIONS_PATH)
    raw = r.get_data()
    assert HE["title"].encode("utf-8") in raw
    assert HE["note"].encode("utf-8") in raw
    assert b"\\u05" not in raw and b"\\u" not in raw
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    assert json.loads(raw.decode("utf-8"))["notifications"][0]["title"] == "חיבור הווטסאפ נותק"


def test_per_login_data_is_not_cacheable(both_down):
    r = both_down.client("b1").get(NOTIFICATIONS_PATH)
    assert r.headers["Cache-Control"] == "no-store"
    assert "Cookie" in r.headers["Vary"]


def test_completed_reminders_leave_the_list(both_down):
    c = both_down.client("b1")
    assert c.get(NOTIFICATIONS_PATH).get_json()["unread_count"] == 1
    both_down.post(up("business_1"))
    assert c.get(NOTIFICATIONS_PATH).get_json() == {"notifications": [], "unread_count": 0}
    assert both_down.client("b2").get(NOTIFICATIONS_PATH).get_json()["unread_count"] == 1


def test_notifications_path_none_leaves_the_route_out(make_kit):
    kit = make_kit(notifications_path=None)
    assert kit.client("b1").get(NOTIFICATIONS_PATH).status_code == 404


# ------------------------------------------------------------------ an app's own CRMReminder


class AppBase(DeclarativeBase):
    pass


class CRMReminder(AppBase):
    """An existing app's table: integer business ids, completion as a status string, and
    reminders of its own types next to ours."""

    __tablename__ = "crm_reminders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(Integer, index=True)
    lead_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    title: Mapped[str] = mapped_column(String(255))
    body: Mapped[str] = mapped_column(Text)
    due_date: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    priority: Mapped[str] = mapped_column(String(16))
    type: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[int | None] = mapped_column(Integer, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="open")


def test_mapping_onto_an_existing_crm_reminder_table(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    AppBase.metadata.create_all(engine)
    create_tables(engine, with_reminders=False)
    db = scoped_session(sessionmaker(engine))
    businesses = {"wa-7": (7, 70), "wa-8": (8, 80)}
    app = Flask("crm_app")
    app.config["SECRET_KEY"] = os.urandom(16)
    app.teardown_appcontext(lambda exc: db.remove())

    @app.post("/login")
    def login():
        session["business"] = request.get_json()["business"]
        return jsonify(ok=True)

    init_app(app, session=db, secret=SECRET,
             find_business=lambda t: businesses.get(t),
             current_business=lambda: session.get("business"),
             reminders=ReminderMapping(CRMReminder, note="body", completed="state",
                                       open_value="open", completed_value="done"),
             locale="en", texts={"en": {"title": "WhatsApp is disconnected"}})
    with app.app_context():
        db.add(CRMReminder(tenant_id=7, title="Call the lead back", body="mine", priority="low",
                           type="call_back", state="open"))
        db.commit()

    def post(body):
        return app.test_client().post(WEBHOOK_PATH, json=body, headers={"X-INTERNAL-SECRET": SECRET})

    assert post({"tenant_id": "wa-7", "status": "disconnected", "reason": "logged out"}).status_code == 200
    with app.app_context():
        row = db.scalars(select(CRMReminder).where(CRMReminder.type == "system_whatsapp_disconnect")).one()
        assert (row.tenant_id, row.lead_id, row.priority, row.created_by, row.state) == (7, None, "high", 70, "open")
        assert row.title == "WhatsApp is disconnected"  # the app's override
        assert row.body == EN["note"]  # the catalogue's text for what was not overridden
        assert row.due_date is not None

    c = app.test_client()
    c.post("/login", json={"business": "7"})  # a string id from a form is coerced to the column's int
    body = c.get(NOTIFICATIONS_PATH).get_json()
    assert [(n["title"], n["lang"]) for n in body["notifications"]] == [("WhatsApp is disconnected", "en")]
    c8 = app.test_client()
    c8.post("/login", json={"business": 8})
    assert c8.get(NOTIFICATIONS_PATH).get_json()["unread_count"] == 0
    cx = app.test_client()
    cx.post("/login", json={"business": "7 OR 1=1"})  # not an int: refused, not matched
    assert cx.get(NOTIFICATIONS_PATH).status_code == 401

    assert post({"tenant_id": "wa-7", "status": "connected", "reason": None}).status_code == 200
    with app.app_context():
        states = {r.type: r.state for r in db.scalars(select(CRMReminder))}
    # ours is done; the app's own reminder of another type is untouched
    assert states == {"system_whatsapp_disconnect": "done", "call_back": "open"}
    assert c.get(NOTIFICATIONS_PATH).get_json()["unread_count"] == 0
    db.remove()
    engine.dispose()


def test_a_mapping_naming_a_missing_column_fails_at_once():
    with pytest.raises(ValueError, match="note='message'"):
        ReminderMapping(CRMReminder, note="message", completed="state")
    with pytest.raises(ValueError, match="completed='is_completed'"):
        ReminderMapping(CRMReminder, note="body")
