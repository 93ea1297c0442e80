"""The README's "ten lines in your app", run exactly as written: the two marked code blocks are
read out of README.md and executed, then the app is driven as the sidecar and two users would."""

from __future__ import annotations

import re

import pytest

from conftest import EN, HE, KIT_DIR

README = KIT_DIR / "README.md"


def readme_block(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(rf"<!-- readme-test: {re.escape(name)} -->\n```python\n(.*?)```", text, re.S)
    assert m, f"README.md has no python block marked readme-test: {name}"
    return m.group(1)


def test_the_ten_lines_are_about_ten_lines():
    lines = [line for line in readme_block("ten-lines").splitlines() if line.strip()]
    assert len(lines) <= 12, lines


@pytest.fixture
def readme_app(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'app.db'}")
    monkeypatch.setenv("INTERNAL_SHARED_SECRET", "readme-secret")
    monkeypatch.setenv("FLASK_SECRET_KEY", "readme-flask-key")
    ns: dict = {"__name__": "readme_app"}
    exec(compile(readme_block("existing-app"), "README.md:existing-app", "exec"), ns)
    app, db, Business = ns["app"], ns["db"], ns["Business"]
    with app.app_context():  # the app's own tables exist already, as in any running app
        db.create_all()
        db.session.add_all([
            Business(id=1, whatsapp_session="salon-he", owner_id=11, locale="he"),
            Business(id=2, whatsapp_session="barber-en", owner_id=22, locale="en"),
        ])
        db.session.commit()
    exec(compile(readme_block("ten-lines"), "README.md:ten-lines", "exec"), ns)
    yield ns
    with app.app_context():
        db.engine.dispose()


def test_the_readme_snippet_runs_as_written(readme_app):
    app, db, CRMReminder = readme_app["app"], readme_app["db"], readme_app["CRMReminder"]
    hook = "/api/internal/whatsapp/status-webhook"
    auth = {"X-INTERNAL-SECRET": "readme-secret"}

    def post(body, key):
        return app.test_client().post(hook, json=body, headers={**auth, "Idempotency-Key": key})

    assert post({"tenant_id": "salon-he", "status": "disconnected", "reason": "logged out"}, "k1").status_code == 200
    assert post({"tenant_id": "barber-en", "status": "disconnected", "reason": "logged out"}, "k2").status_code == 200
    assert post({"tenant_id": "nobody", "status": "disconnected", "reason": None}, "k3").status_code == 200
    assert app.test_client().post(hook, json={"tenant_id": "salon-he", "status": "disconnected"}).status_code == 401

    with app.app_context():
        rows = {r.tenant_id: r for r in db.session.scalars(db.select(CRMReminder))}
        assert set(rows) == {1, 2}
        salon = rows[1]
        assert (salon.title, salon.note, salon.priority, salon.type, salon.created_by, salon.lead_id,
                salon.is_completed) == (HE["title"], HE["note"], "high", "system_whatsapp_disconnect", 11, None, False)
        assert salon.due_date is not None
        assert (rows[2].title, rows[2].created_by) == (EN["title"], 22)

    assert app.test_client().get("/api/notifications").status_code == 401
    he = app.test_client()
    with he.session_transaction() as s:  # what the app's own login view does
        s["business_id"] = 1
    r = he.get("/api/notifications?business_id=2")
    raw = r.get_data()
    assert r.status_code == 200 and HE["title"].encode() in raw and b"\\u" not in raw
    [n] = r.get_json()["notifications"]
    assert (n["lang"], n["note"], n["created_at"][-1]) == ("he", HE["note"], "Z")
    en = app.test_client()
    with en.session_transaction() as s:
        s["business_id"] = 2
    assert [x["title"] for x in en.get("/api/notifications").get_json()["notifications"]] == [EN["title"]]

    assert post({"tenant_id": "salon-he", "status": "connected", "reason": None}, "k4").status_code == 200
    assert he.get("/api/notifications").get_json() == {"notifications": [], "unread_count": 0}
    assert en.get("/api/notifications").get_json()["unread_count"] == 1
