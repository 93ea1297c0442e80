"""Fixtures for the Flask kit's tests. The kit under test is the *installed* package
(``pip install ./contrib/flask[test]``); nothing here touches ``sys.path``.

``kit`` builds a small app the way a real one uses the kit: SQLAlchemy on a SQLite file, the
app's own login (a session cookie set by ``POST /login``), two businesses whose gateway tenant
ids differ from their business ids.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from pathlib import Path

import pytest
from flask import Flask, jsonify, request, session
from sqlalchemy import create_engine, select
from sqlalchemy.orm import scoped_session, sessionmaker

from wa_status_backend import (
    WEBHOOK_PATH,
    IdempotencyKey,
    Reminder,
    ReminderInfo,
    TenantStatus,
    create_tables,
    init_app,
    sqlite_begin_immediate,
)

SECRET = "test-secret"
KIT_DIR = Path(__file__).resolve().parents[1]
REPO = KIT_DIR.parents[1]
CATALOGUE_SOURCE = REPO / "contrib" / "i18n" / "bell-messages.json"
HE = json.loads(CATALOGUE_SOURCE.read_text(encoding="utf-8"))["he"]
EN = json.loads(CATALOGUE_SOURCE.read_text(encoding="utf-8"))["en"]

# gateway tenant id -> (business id, owner id, locale)
BUSINESSES = {
    "business_1": ("b1", 101, "he"),
    "business_2": ("b2", 102, "en"),
}


class Kit:
    """An app using the kit, its database, and helpers to call and inspect it."""

    def __init__(self, home: Path, **options):
        self.home = home
        self.engine = sqlite_begin_immediate(create_engine(f"sqlite:///{home / 'kit.db'}",
                                                           connect_args={"timeout": 30}))
        create_tables(self.engine)
        self.db = scoped_session(sessionmaker(self.engine))
        self.businesses = dict(BUSINESSES)
        app = Flask("kit_under_test")
        app.config["SECRET_KEY"] = os.urandom(16)
        app.teardown_appcontext(lambda exc: self.db.remove())

        def find_business(tenant_id):
            b = self.businesses.get(tenant_id)
            return (b[0], b[1]) if b else None

        def business_locale(business_id):
            return {b[0]: b[2] for b in self.businesses.values()}.get(business_id)

        @app.post("/login")
        def login():  # the app's own login, as any Flask app has one
            session["business_id"] = request.get_json()["business_id"]
            return jsonify(ok=True)

        options.setdefault("secret", SECRET)
        options.setdefault("locale", business_locale)
        options.setdefault("current_business", lambda: session.get("business_id"))
        self.state = init_app(app, session=self.db, find_business=find_business, **options)
        self.app = app

    def client(self, business_id=None):
        c = self.app.test_client()
        if business_id is not None:
            assert c.post("/login", json={"business_id": business_id}).status_code == 200
        return c

    def post(self, body=None, *, client=None, secret=SECRET, key=None, changed_at=None, raw=None, headers=None):
        h = {"Content-Type": "application/json"}
        if secret is not None:
            h["X-INTERNAL-SECRET"] = secret
        if key is not None:
            h["Idempotency-Key"] = key
        if changed_at is not None:
            h["X-Status-Changed-At"] = changed_at
        h.update(headers or {})
        data = raw if raw is not None else json.dumps(body)
        return (client or self.app.test_client()).post(WEBHOOK_PATH, data=data, headers=h)

    def reminders(self, business_id=None) -> list:
        """Every reminder (open and completed), oldest first, with the kit's info joined."""
        s = self.db()
        try:
            q = select(Reminder).order_by(Reminder.id)
            if business_id is not None:
                q = q.where(Reminder.tenant_id == business_id)
            out = []
            for r in s.scalars(q):
                info = s.get(ReminderInfo, str(r.id))
                out.append(dict(
                    id=r.id, tenant_id=r.tenant_id, lead_id=r.lead_id, title=r.title, note=r.note,
                    due_date=r.due_date, priority=r.priority, type=r.type, created_by=r.created_by,
                    is_completed=r.is_completed, completed_at=r.completed_at, created_at=r.created_at,
                    lang=info.lang if info else None, reason=info.reason if info else None,
                    idempotency_key=info.idempotency_key if info else None,
                    status_changed_at=info.status_changed_at if info else None,
                ))
            return out
        finally:
            self.db.remove()

    def open_reminders(self, business_id=None) -> list:
        return [r for r in self.reminders(business_id) if not r["is_completed"]]

    def statuses(self) -> dict:
        s = self.db()
        try:
            return {t.tenant_id: t for t in s.scalars(select(TenantStatus)) if t.status is not None}
        finally:
            self.db.remove()

    def key_count(self) -> int:
        s = self.db()
        try:
            return len(s.scalars(select(IdempotencyKey)).all())
        finally:
            self.db.remove()


@pytest.fixture
def make_kit(tmp_path):
    made = []

    def make(home=None, **options) -> Kit:
        if home is None:
            home = tmp_path / f"kit{len(made)}"
            home.mkdir()
        kit = Kit(home, **options)
        made.append(kit)
        return kit

    yield make
    for kit in made:
        kit.db.remove()
        kit.engine.dispose()


@pytest.fixture
def kit(make_kit) -> Kit:
    return make_kit()


def down(tenant="business_1", reason="Stream Errored (conflict) (code 440)"):
    return {"tenant_id": tenant, "status": "disconnected", "reason": reason}


def up(tenant="business_1"):
    return {"tenant_id": tenant, "status": "connected", "reason": None}


def whsec(raw: bytes) -> str:
    return "whsec_" + base64.b64encode(raw).decode()


def signed_headers(secrets, body: bytes, msg_id="msg_1", timestamp=None) -> dict:
    """Standard Webhooks headers for ``body``, one ``v1`` signature per ``whsec_`` secret,
    computed here with the standard library (not with the kit under test)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    sigs = []
    for secret in secrets:
        key = base64.b64decode(secret[len("whsec_"):])
        mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
        sigs.append("v1," + base64.b64encode(mac).decode())
    return {"webhook-id": msg_id, "webhook-timestamp": ts, "webhook-signature": " ".join(sigs)}
